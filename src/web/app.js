// Tapio's web page: plain JavaScript over the read-only /v1/ API, no framework and no build
// step. Three views, chosen by the URL fragment:
//   #/                    incidents grouped by root cause (paged and filtered by the server)
//   #/incident/ID         one correlation, its causal chain drawn as a graph
//   #/entity/ENTITY       the timeline of one entity: its facts and the correlations about it
// Live updates come from /v1/changes (server-sent events, read with fetch so that a bearer
// token can be sent); each view refreshes what it shows when a change concerns it.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PAGE = 50;
const view = document.getElementById("view");
const liveBadge = document.getElementById("live");

// === Helpers ===

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// Times are nanoseconds since the Unix epoch; JSON numbers keep them to about 0.25 µs.
function formatTime(ns) {
  if (ns === undefined || ns === null) return "";
  const date = new Date(ns / 1e6);
  return date.toISOString().replace("T", " ").replace("Z", " UTC");
}

function relative(ns, base) {
  const seconds = (ns - base) / 1e9;
  const sign = seconds < 0 ? "−" : "+";
  const abs = Math.abs(seconds);
  if (abs < 60) return `${sign}${abs.toFixed(3)} s`;
  if (abs < 3600) return `${sign}${Math.floor(abs / 60)} min ${(abs % 60).toFixed(1)} s`;
  return `${sign}${(abs / 3600).toFixed(2)} h`;
}

function ago(ns, now) {
  if (!now) return formatTime(ns);
  const seconds = Math.max(0, (now - ns) / 1e9);
  if (seconds < 1) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function entityHref(entity) {
  return `#/entity/${encodeURIComponent(entity)}`;
}

function incidentHref(id) {
  return `#/incident/${encodeURIComponent(id)}`;
}

// An entity id as a path under /v1/entities/: each segment encoded, the slashes kept.
function entityPath(entity) {
  return entity.split("/").map(encodeURIComponent).join("/");
}

function entityParts(entity) {
  const slash = entity.indexOf("/");
  return slash < 0 ? ["", entity] : [entity.slice(0, slash), entity.slice(slash + 1)];
}

// === The API ===

let token = sessionStorage.getItem("tapio-token") || "";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers });
  let body;
  try {
    body = await response.json();
  } catch (error) {
    throw new ApiError(response.status, `${path} answered no JSON (${response.status})`);
  }
  if (!response.ok) {
    if (response.status === 401) askForToken();
    const message = body && body.error ? body.error.message : `status ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

function askForToken() {
  const dialog = document.getElementById("token");
  dialog.hidden = false;
  document.getElementById("token-input").focus();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token-input").value.trim();
  sessionStorage.setItem("tapio-token", token);
  document.getElementById("token").hidden = true;
  live.restart();
  route();
});

document.getElementById("entity-search").addEventListener("submit", (event) => {
  event.preventDefault();
  const entity = document.getElementById("entity-input").value.trim();
  if (entity) location.hash = entityHref(entity);
});

function showError(error) {
  return el("div", { class: "error", role: "alert" }, error.message || String(error));
}

// === Live updates ===

// Reads /v1/changes with fetch (EventSource cannot send a token) and calls every listener
// with each change; reconnects after a pause when the stream ends.
const live = {
  listeners: new Set(),
  controller: null,
  received: 0,
  start() {
    const controller = new AbortController();
    this.controller = controller;
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = `Bearer ${token}`;
    fetch("/v1/changes", { headers, signal: controller.signal })
      .then(async (response) => {
        if (!response.ok || !response.body) throw new Error(`status ${response.status}`);
        setLive(true);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            this.dispatch(block);
          }
        }
        throw new Error("the stream ended");
      })
      .catch(() => {
        if (controller.signal.aborted) return;
        setLive(false);
        setTimeout(() => {
          if (this.controller === controller) this.start();
        }, 3000);
      });
  },
  restart() {
    if (this.controller) this.controller.abort();
    this.start();
  },
  dispatch(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (data.length === 0) return;
    let payload;
    try {
      payload = JSON.parse(data.join("\n"));
    } catch (error) {
      return;
    }
    this.received += 1;
    liveBadge.dataset.received = String(this.received);
    for (const listener of this.listeners) listener(type, payload);
  },
};

function setLive(on) {
  liveBadge.classList.toggle("on", on);
  liveBadge.classList.toggle("off", !on);
  liveBadge.textContent = on ? "live" : "offline";
}

// Calls `refresh` at most every 500 ms while changes for which `concerns` holds arrive.
function onChanges(concerns, refresh) {
  let timer = null;
  const listener = (type, payload) => {
    if (type !== "lagged" && !concerns(payload)) return;
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      refresh();
    }, 500);
  };
  live.listeners.add(listener);
  return () => {
    live.listeners.delete(listener);
    if (timer) clearTimeout(timer);
  };
}

// === Router ===

let leave = () => {};

function route() {
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  clear(view);
  document.body.dataset.view = "";
  if (path.startsWith("/incident/")) {
    leave = incidentView(decodeURIComponent(path.slice("/incident/".length)));
  } else if (path.startsWith("/entity/")) {
    leave = entityView(decodeURIComponent(path.slice("/entity/".length)));
  } else {
    leave = incidentsView(params);
  }
}

window.addEventListener("hashchange", route);

// === Incidents ===

function incidentsView(params) {
  document.body.dataset.view = "incidents";
  const family = params.get("family") || "";
  const namespace = params.get("namespace") || "";
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const filters = el("div", { class: "filters", id: "filters" });
  const line = el("div", { class: "summary-line", id: "summary-line" });
  const list = el("div", { class: "groups", id: "groups" });
  const pager = el("div", { class: "pager" });
  view.append(el("h1", {}, "What is broken now"), filters, line, list, pager);

  const go = (changes) => {
    const next = new URLSearchParams();
    const merged = { family, namespace, offset: 0, ...changes };
    for (const [key, value] of Object.entries(merged)) {
      if (value) next.set(key, String(value));
    }
    const text = next.toString();
    location.hash = text ? `#/?${text}` : "#/";
  };

  // When each listed correlation was first shown; those that arrive after the first render
  // are marked as new for ten seconds.
  const firstSeen = new Map();
  let rendered = false;
  let stopped = false;
  async function load() {
    const query = new URLSearchParams({ limit: String(PAGE), offset: String(offset), per_group: "3" });
    if (family) query.set("family", family);
    if (namespace) query.set("namespace", namespace);
    let summary;
    let groups;
    try {
      [summary, groups] = await Promise.all([api("/v1/summary"), api(`/v1/root-causes?${query}`)]);
    } catch (error) {
      clear(list);
      list.append(showError(error));
      return;
    }
    if (stopped) return;
    renderFilters(summary);
    renderGroups(summary, groups);
  }

  function renderFilters(summary) {
    clear(filters);
    const families = new Map();
    for (const { family: name, current } of summary.kinds) {
      families.set(name, (families.get(name) || 0) + current);
    }
    const incidents = [...families].filter(([name]) => name !== "ownership");
    const total = incidents.reduce((sum, [, count]) => sum + count, 0);
    filters.append(
      el("button", { class: `chip${family ? "" : " active"}`, "data-family": "", onclick: () => go({ family: "" }) },
        "all incidents", el("span", { class: "count" }, total)),
      ...incidents.map(([name, count]) =>
        el("button", { class: `chip${family === name ? " active" : ""}`, "data-family": name, onclick: () => go({ family: name }) },
          name.replace(/_/g, " "), el("span", { class: "count" }, count))),
    );
    if (families.has("ownership")) {
      filters.append(
        el("button", {
          class: `chip context${family === "ownership" ? " active" : ""}`,
          "data-family": "ownership",
          title: "Ownership is context, not an incident",
          onclick: () => go({ family: "ownership" }),
        }, "ownership (context)", el("span", { class: "count" }, families.get("ownership"))),
      );
    }
    const input = el("input", { type: "text", placeholder: "namespace", value: namespace, "aria-label": "Namespace" });
    input.addEventListener("change", () => go({ namespace: input.value.trim() }));
    filters.append(input);
  }

  function renderGroups(summary, answer) {
    const now = Date.now();
    clear(list);
    clear(line);
    const groups = answer.root_causes;
    const first = answer.total === 0 ? 0 : offset + 1;
    line.append(
      `${answer.total} root cause${answer.total === 1 ? "" : "s"}`,
      answer.total > PAGE ? ` · showing ${first}–${offset + groups.length}` : "",
      summary.tick ? ` · store at ${formatTime(summary.tick)}` : "",
    );
    if (groups.length === 0) {
      list.append(el("div", { class: "empty" }, family || namespace ? "Nothing matches these filters." : "Nothing is broken: no current incident."));
    }
    for (const group of groups) {
      const ids = group.incidents.map((item) => item.id);
      for (const id of ids) {
        if (!firstSeen.has(id)) firstSeen.set(id, rendered ? now : 0);
      }
      const fresh = ids.some((id) => now - firstSeen.get(id) < 10000);
      const mainFamily = group.families[0] || "";
      list.append(
        el("article", { class: `group family-${mainFamily}${fresh ? " fresh" : ""}`, "data-root-cause": group.root_cause },
          el("div", { class: "group-head" },
            el("a", { class: "root mono", href: entityHref(group.root_cause), title: "Timeline of the root cause" }, group.root_cause),
            group.kinds.map((kind) => el("span", { class: "badge kind" }, kind)),
            el("span", { class: "badge" }, `${group.count} correlation${group.count === 1 ? "" : "s"}`),
            el("span", { class: "when", title: formatTime(group.since) }, ago(group.since, summary.tick))),
          group.incidents.map((item) =>
            el("div", { class: "incident-line" },
              el("a", { class: "explanation incident-link", href: incidentHref(item.id), "data-kind": item.correlation.kind }, item.explanation),
              el("span", { class: "muted" }, `${item.correlation.confidence.percent}%`))),
          group.count > group.incidents.length
            ? el("div", { class: "muted" }, `and ${group.count - group.incidents.length} more`)
            : null));
    }
    clear(pager);
    if (answer.total > PAGE) {
      pager.append(
        el("button", { disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - PAGE) }) }, "← newer"),
        el("span", { class: "muted" }, `page ${Math.floor(offset / PAGE) + 1} of ${Math.ceil(answer.total / PAGE)}`),
        el("button", { disabled: offset + PAGE >= answer.total, onclick: () => go({ offset: offset + PAGE }) }, "older →"),
      );
    }
    rendered = true;
    list.dataset.loaded = String(Date.now());
  }

  load();
  const stop = onChanges(() => true, load);
  return () => {
    stopped = true;
    stop();
  };
}

// === One incident ===

function incidentView(id) {
  document.body.dataset.view = "incident";
  view.append(el("p", { class: "muted" }, "Loading…"));
  let stopped = false;
  let shown = null;
  const selection = { hop: null };
  async function load() {
    let answer;
    try {
      answer = await api(`/v1/correlations/${encodeURIComponent(id)}`);
    } catch (error) {
      clear(view);
      view.append(el("h1", {}, "Incident"), showError(error));
      return;
    }
    if (stopped) return;
    shown = answer.correlation;
    renderIncident(answer, selection);
  }
  load();
  // A change to this correlation (it was retracted, say) is shown as it happens; a change is
  // this correlation's when its kind, root cause and first hop's evidence are.
  const same = (change) => {
    const other = change.correlation;
    return Boolean(shown && other && other.kind === shown.kind && other.root_cause === shown.root_cause
      && other.chain.length > 0 && shown.chain.length > 0 && other.chain[0].fact_id === shown.chain[0].fact_id);
  };
  const stop = onChanges(same, load);
  return () => {
    stopped = true;
    stop();
  };
}

function renderIncident(answer, selection) {
  clear(view);
  const correlation = answer.correlation;
  const chain = answer.evidence;
  const rootEntity = correlation.root_cause;
  const atRoot = chain.filter((hop) => hop.entity === rootEntity).map((hop) => hop.time);
  const base = atRoot.length ? Math.min(...atRoot) : Math.min(...chain.map((hop) => hop.time));
  const state = answer.current ? "current" : `retracted ${formatTime(answer.until)}`;
  view.append(
    el("p", {}, el("a", { href: "#/" }, "← incidents")),
    el("section", { class: "incident-head", "data-id": answer.id },
      el("div", {},
        el("span", { class: "badge kind" }, correlation.kind),
        " ",
        el("span", { class: "badge" }, correlation.family),
        " ",
        el("span", { class: "badge" }, `${correlation.confidence.percent}% sure`)),
      el("div", { class: "explanation" }, answer.explanation),
      el("div", { class: "facts-row" },
        el("span", {}, "root cause ", el("a", { class: "mono", href: entityHref(rootEntity) }, rootEntity)),
        el("span", {}, `current since ${formatTime(answer.since)}`),
        el("span", {}, state),
        el("span", { class: "mono" }, answer.id))),
  );
  const evidence = el("aside", { class: "evidence", id: "evidence" },
    el("p", { class: "muted" }, "Click a hop (an arrow or a line in a box) to see its evidence."));
  const graph = el("div", { class: "graph", id: "graph" });
  view.append(el("h2", {}, "Causal chain"), el("div", { class: "graph-wrap" }, graph, evidence));
  const table = el("table", { class: "chain-table", id: "chain-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "time"), el("th", {}, "relation"), el("th", {}, "entity"), el("th", {}, "evidence"))));
  const body = el("tbody");
  table.append(body);
  view.append(table);

  const select = (index) => {
    selection.hop = index;
    for (const node of view.querySelectorAll(".selected")) node.classList.remove("selected");
    for (const node of view.querySelectorAll(`[data-hop="${index}"]`)) node.classList.add("selected");
    const hop = chain[index];
    clear(evidence);
    evidence.dataset.hop = String(index);
    evidence.append(
      el("h2", {}, `Hop ${index + 1} of ${chain.length}`),
      el("p", {}, hop.what),
      el("dl", {},
        el("dt", {}, "relation"), el("dd", {}, hop.relation.replace(/_/g, " ")),
        el("dt", {}, "entity"), el("dd", {}, el("a", { class: "mono", href: entityHref(hop.entity) }, hop.entity)),
        el("dt", {}, "time"), el("dd", {}, `${relative(hop.time, base)} from the root`),
        el("dt", {}, ""), el("dd", { class: "muted" }, formatTime(hop.time)),
        el("dt", {}, "fact"), el("dd", { class: "mono" }, hop.fact_id)),
      el("pre", {}, JSON.stringify(hop.observed, null, 2)));
  };

  chain.forEach((hop, index) => {
    body.append(
      el("tr", { "data-hop": index, onclick: () => select(index) },
        el("td", {}, index + 1),
        el("td", { class: "mono" }, relative(hop.time, base)),
        el("td", {}, hop.relation.replace(/_/g, " ")),
        el("td", {}, el("a", { class: "mono", href: entityHref(hop.entity) }, hop.entity)),
        el("td", {}, hop.what)));
  });
  graph.append(drawChain(chain, rootEntity, base, select));
  if (selection.hop !== null && selection.hop < chain.length) select(selection.hop);
}

// Lays the chain out as a graph: one box per entity (in the order the chain first reaches
// them, left to right, wrapping in a snake so that consecutive entities stay side by side),
// the hops at an entity as lines inside its box, and one arrow per hop that moves to another
// entity, labelled with its relation. Every hop is drawn once, as a line in a box (the start,
// and hops that stay at an entity) or as an arrow; each has a title (hover) and a click.
function drawChain(chain, rootEntity, base, select) {
  const order = [];
  const index = new Map();
  const hopsAt = new Map();
  for (const entity of [chain.length ? chain[0].entity : rootEntity, ...chain.map((hop) => hop.entity), rootEntity]) {
    if (!index.has(entity)) {
      index.set(entity, order.length);
      order.push(entity);
      hopsAt.set(entity, []);
    }
  }
  const edges = [];
  chain.forEach((hop, i) => {
    const previous = i > 0 ? chain[i - 1].entity : null;
    if (previous === null || previous === hop.entity) hopsAt.get(hop.entity).push(i);
    else edges.push({ from: previous, to: hop.entity, hop: i });
  });

  const width = 300;
  const gapX = 190;
  const gapY = 84;
  const pill = 20;
  const columns = Math.max(1, Math.min(order.length, 2));
  const heightOf = (entity) => 52 + hopsAt.get(entity).length * (pill + 4);
  const rows = Math.ceil(order.length / columns);
  const rowHeight = [];
  for (let row = 0; row < rows; row++) {
    const members = order.slice(row * columns, row * columns + columns);
    rowHeight.push(Math.max(...members.map(heightOf)));
  }
  const place = new Map();
  let y = 24;
  for (let row = 0; row < rows; row++) {
    for (let k = 0; k < columns; k++) {
      const at = row * columns + k;
      if (at >= order.length) break;
      const column = row % 2 === 0 ? k : columns - 1 - k;
      const entity = order[at];
      place.set(entity, { x: 24 + column * (width + gapX), y, w: width, h: heightOf(entity) });
    }
    y += rowHeight[row] + gapY;
  }
  const totalWidth = 48 + columns * width + (columns - 1) * gapX;
  const totalHeight = y - gapY + 24;
  const root = svg("svg", { width: totalWidth, height: totalHeight, viewBox: `0 0 ${totalWidth} ${totalHeight}`, role: "img", "aria-label": "Causal chain" });
  root.append(svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#5b7d6c" }))));

  const edgeLayer = svg("g", { class: "edges" });
  const nodeLayer = svg("g", { class: "nodes" });
  root.append(edgeLayer, nodeLayer);

  for (const entity of order) {
    const box = place.get(entity);
    const [kind, name] = entityParts(entity);
    const short = name.length > 32 ? `…${name.slice(-31)}` : name;
    const group = svg("g", { class: `node${entity === rootEntity ? " root" : ""}`, "data-entity": entity, transform: `translate(${box.x},${box.y})` },
      svg("title", {}, entity),
      svg("rect", { width: box.w, height: box.h, rx: 7 }),
      svg("a", { href: entityHref(entity) },
        svg("text", { class: "entity-kind", x: 10, y: 16 }, entity === rootEntity ? `${kind} · root cause` : kind),
        svg("text", { class: "entity-name", x: 10, y: 34 }, short)));
    hopsAt.get(entity).forEach((hopIndex, k) => {
      const hop = chain[hopIndex];
      const text = `#${hopIndex + 1} ${relative(hop.time, base)} ${hop.what}`;
      const shown = text.length > 44 ? `${text.slice(0, 43)}…` : text;
      group.append(svg("g", {
        class: "hop-pill", "data-hop": hopIndex, transform: `translate(8,${44 + k * (pill + 4)})`,
        onclick: () => select(hopIndex),
      },
      svg("title", {}, `#${hopIndex + 1} ${hop.relation} · ${relative(hop.time, base)} · ${hop.what}`),
      svg("rect", { width: box.w - 16, height: pill, rx: 4 }),
      svg("text", { x: 6, y: 14 }, shown)));
    });
    nodeLayer.append(group);
  }

  // Arrows between boxes; two arrows between the same boxes are bent apart.
  const seen = new Map();
  for (const edge of edges) {
    const a = place.get(edge.from);
    const b = place.get(edge.to);
    const key = [edge.from, edge.to].sort().join("\u0000");
    const nth = seen.get(key) || 0;
    seen.set(key, nth + 1);
    const [x1, y1] = border(a, b);
    const [x2, y2] = border(b, a);
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2;
    const dx = x2 - x1;
    const dy = y2 - y1;
    const length = Math.hypot(dx, dy) || 1;
    const bend = nth === 0 ? 0 : (nth % 2 === 1 ? 1 : -1) * Math.ceil(nth / 2) * 36;
    const cx = mx - (dy / length) * bend;
    const cy = my + (dx / length) * bend;
    const hop = chain[edge.hop];
    const label = `#${edge.hop + 1} ${hop.relation.replace(/_/g, " ")} ${relative(hop.time, base)}`;
    const labelWidth = label.length * 6.4 + 12;
    const lx = (mx + cx) / 2;
    const ly = (my + cy) / 2;
    edgeLayer.append(svg("g", { class: "edge", "data-hop": edge.hop, onclick: () => select(edge.hop) },
      svg("title", {}, `#${edge.hop + 1} ${edge.from} ${hop.relation} ${edge.to} · ${relative(hop.time, base)} · ${hop.what}`),
      svg("path", { d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`, "marker-end": "url(#arrow)" }),
      svg("rect", { class: "label-bg", x: lx - labelWidth / 2, y: ly - 10, width: labelWidth, height: 20, rx: 4 }),
      svg("text", { x: lx, y: ly + 4, "text-anchor": "middle" }, label)));
  }
  return root;
}

// Where the line from the centre of box `a` towards the centre of box `b` leaves `a`.
function border(a, b) {
  const ax = a.x + a.w / 2;
  const ay = a.y + a.h / 2;
  const dx = b.x + b.w / 2 - ax;
  const dy = b.y + b.h / 2 - ay;
  if (dx === 0 && dy === 0) return [ax, ay];
  const scale = Math.min(dx === 0 ? Infinity : a.w / 2 / Math.abs(dx), dy === 0 ? Infinity : a.h / 2 / Math.abs(dy));
  return [ax + dx * scale, ay + dy * scale];
}

// === An entity's timeline ===

function entityView(entity) {
  document.body.dataset.view = "entity";
  document.getElementById("entity-input").value = entity;
  let facts = [];
  let factsTotal = 0;
  let stopped = false;
  let previous = null;
  const axis = el("div", { class: "timeline-axis", id: "timeline-axis" });
  const list = el("div", { class: "timeline-list", id: "timeline" });
  const status = el("div", { class: "summary-line" });
  const older = el("button", { id: "older", onclick: () => loadOlder() }, "older facts");
  view.append(
    el("p", {}, el("a", { href: "#/" }, "← incidents")),
    el("h1", {}, "Timeline of ", el("span", { class: "mono", id: "timeline-entity" }, entity)),
    status, axis, list, el("div", { class: "pager" }, older));

  async function loadOlder() {
    const oldest = facts.length ? facts[facts.length - 1].time : undefined;
    if (oldest === undefined) return;
    try {
      const page = await api(`/v1/entities/${entityPath(entity)}/facts?limit=200&before=${oldest}`);
      facts = facts.concat(page.facts);
      await refresh(false);
    } catch (error) {
      list.prepend(showError(error));
    }
  }

  async function refresh(reloadFacts) {
    const quiet = (promise) => promise.catch((error) => (error.status === 404 ? null : Promise.reject(error)));
    const encoded = encodeURIComponent(entity);
    let current;
    let retracted;
    let timeline;
    try {
      const asked = [
        api(`/v1/incidents?entity=${encoded}&context=true&limit=1000`),
        api(`/v1/incidents?entity=${encoded}&context=true&state=retracted&limit=1000`),
        quiet(api(`/v1/entities/${entityPath(entity)}/timeline`)),
      ];
      if (reloadFacts) asked.push(api(`/v1/entities/${entityPath(entity)}/facts?limit=200`));
      const answers = await Promise.all(asked);
      [current, retracted, timeline] = answers;
      if (reloadFacts) {
        facts = answers[3].facts;
        factsTotal = answers[3].total;
      }
    } catch (error) {
      clear(list);
      list.append(showError(error));
      return;
    }
    if (stopped) return;
    const entries = [];
    const factIds = new Set();
    for (const fact of facts) {
      factIds.add(fact.fact_id);
      entries.push({ time: fact.time, type: "fact", label: fact.kind.replace(/_/g, " "), text: fact.what, key: `fact ${fact.fact_id}`, detail: fact.fact_id });
    }
    for (const event of timeline ? timeline.events : []) {
      if (factIds.has(event.fact_id)) continue;
      factIds.add(event.fact_id);
      const about = event.entity === entity ? "" : ` (at ${event.entity})`;
      entries.push({ time: event.time, type: "event", label: "cited fact", text: `${event.what}${about}`, key: `fact ${event.fact_id}`, detail: event.fact_id });
    }
    for (const item of current.incidents) {
      entries.push({ time: item.since, type: "correlation", label: `${item.correlation.kind} began`, text: item.explanation, key: `on ${item.id}`, href: incidentHref(item.id) });
    }
    for (const item of retracted.incidents) {
      entries.push({ time: item.since, type: "retracted", label: `${item.correlation.kind} began`, text: item.explanation, key: `on ${item.id} ${item.since}`, href: incidentHref(item.id) });
      entries.push({ time: item.until, type: "retracted", label: `${item.correlation.kind} ended`, text: item.explanation, key: `off ${item.id} ${item.until}`, href: incidentHref(item.id) });
    }
    entries.sort((a, b) => b.time - a.time || a.key.localeCompare(b.key));
    render(entries, current.total, retracted.total);
  }

  function render(entries, currentTotal, retractedTotal) {
    const before = previous;
    previous = new Set(entries.map((entry) => entry.key));
    clear(status);
    status.append(
      `${facts.length} of ${factsTotal} kept fact${factsTotal === 1 ? "" : "s"}`,
      ` · ${currentTotal} current and ${retractedTotal} ended correlation${retractedTotal === 1 ? "" : "s"}`);
    older.disabled = facts.length >= factsTotal;
    clear(list);
    if (entries.length === 0) {
      list.append(el("div", { class: "empty" }, "Nothing is known about this entity: no kept fact and no correlation mentions it."));
    }
    entries.forEach((entry, position) => {
      const fresh = before !== null && !before.has(entry.key);
      list.append(el("div", { class: `entry ${entry.type}${fresh ? " flash" : ""}`, id: `entry-${position}`, "data-time": entry.time },
        el("span", { class: "mono", title: String(entry.time) }, formatTime(entry.time)),
        el("span", { class: "type" }, entry.label),
        entry.href ? el("a", { href: entry.href }, entry.text) : el("span", { title: entry.detail || "" }, entry.text)));
    });
    drawAxis(entries);
    list.dataset.loaded = String(Date.now());
  }

  // A strip with one mark per entry on a time axis; clicking a mark scrolls the list to it.
  function drawAxis(entries) {
    clear(axis);
    if (entries.length === 0) return;
    const width = Math.max(600, axis.clientWidth || 900);
    const height = 58;
    const times = entries.map((entry) => entry.time);
    const low = Math.min(...times);
    const high = Math.max(...times);
    const span = Math.max(high - low, 1);
    const x = (time) => 12 + ((time - low) / span) * (width - 24);
    const strip = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Time axis" });
    strip.append(svg("line", { x1: 12, y1: 30, x2: width - 12, y2: 30, stroke: "#c8d3cd" }));
    const rowOf = { fact: 0, event: 0, correlation: 1, retracted: 1 };
    entries.forEach((entry, position) => {
      strip.append(svg("rect", {
        class: `hit tick-${entry.type}`, x: x(entry.time) - 2, y: 14 + rowOf[entry.type] * 18, width: 4, height: 14,
        onclick: () => {
          const row = document.getElementById(`entry-${position}`);
          if (row) row.scrollIntoView({ block: "center" });
        },
      }, svg("title", {}, `${formatTime(entry.time)} ${entry.label}: ${entry.text}`)));
    });
    strip.append(
      svg("text", { x: 12, y: 56 }, formatTime(low)),
      svg("text", { x: width - 12, y: 56, "text-anchor": "end" }, `${formatTime(high)} (${relative(high, low)})`));
    axis.append(strip);
  }

  refresh(true);
  const stop = onChanges((change) => JSON.stringify(change.correlation || {}).includes(`"${entity}"`), () => refresh(true));
  return () => {
    stopped = true;
    stop();
  };
}

live.start();
route();
