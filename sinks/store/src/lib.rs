//! The embedded in-memory store (layer L2): a sink that keeps the current correlations, a
//! bounded history of retracted ones, and the correlation graph that the questions walk
//! (`tapio-queries` answers why, blast-radius, timeline and path from it as it does from Neo4j).
//!
//! Every closed tick is applied as the Neo4j sink applies it: the batch's net change per
//! correlation ([`tapio_model::correlation_id`] names it) against what is current, additions
//! before removals, so that the shared elements — entities, facts, what a fact observed at an
//! entity, the entity-to-entity steps of chains — are reference counted exactly as in the graph
//! the Neo4j sink writes, and the questions find the same answers in both.
//!
//! | kept | indexed by | while |
//! | --- | --- | --- |
//! | current correlations ([`Stored`], with the tick they became current) | id; kind, family, every entity they mention (newest first) | current |
//! | retracted correlations (with the tick they were retracted) | id; kind, family, entity (newest first) | within `store.history_count` and `store.history_max_age` of the newest tick |
//! | entities, facts (event time), `ABOUT` (what a fact observed at an entity) and steps (`OWNED_BY`, `CAUSED`, …) | entity | a current correlation cites them |
//!
//! Readers take a consistent snapshot with [`Store::read`] (a read lock held for the length of
//! one question); every applied tick is also published to [`Store::subscribe`]rs. Next to the
//! correlations, a bounded history of every fact taken in, per entity ([`Store::record_fact`],
//! [`Store::facts_about`]), lets an entity's timeline show what no rule used.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use tapio_model::{ClosedBatch, Correlation, Fact, Observed, Relation, TimeNs, correlation_id};
use tapio_sinks::{BoxFuture, Sink, SinkError, SinkReport};
use tokio::sync::{broadcast, mpsc};

mod facts;

use facts::FactHistory;
pub use facts::KeptFact;

/// How much history the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// At most this many retracted correlations; 0 keeps none.
    pub history_count: usize,
    /// Retracted correlations older than this (event time, before the newest tick) are dropped.
    pub history_max_age: Duration,
    /// At most this many facts kept per entity; 0 keeps none.
    pub facts_per_entity: usize,
    /// At most this many facts kept in all (the oldest go first); 0 keeps none.
    pub facts_max: usize,
}

impl StoreSettings {
    /// The `store` section of the configuration.
    pub fn from_config(config: &tapio_config::StoreConfig) -> StoreSettings {
        StoreSettings {
            history_count: config.history_count,
            history_max_age: config.history_max_age,
            facts_per_entity: config.facts_per_entity,
            facts_max: config.facts_max,
        }
    }
}

/// A correlation the store holds, current or retracted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// [`correlation_id`].
    pub id: Arc<str>,
    /// The correlation.
    pub correlation: Arc<Correlation>,
    /// End of the tick in which it became current, ns.
    pub since: TimeNs,
    /// End of the tick in which it stopped being current, ns; `None` while current.
    pub until: Option<TimeNs>,
}

/// The end of a step between two entities, seen from the other end: `(relation, entity,
/// fact id)`, the relation being the step's type (the relation of the hop it leads to) and the
/// fact its evidence.
pub type LinkEnd = (Relation, Arc<str>, Arc<str>);

/// The facts cited at an entity, each with what it observed there and how many hops cite it.
type FactsAt = BTreeMap<Arc<str>, (Observed, u32)>;

/// A step of a chain: (from, relation, to, fact).
type Step = (Arc<str>, Relation, Arc<str>, Arc<str>);

/// Finds a kept correlation by id and the time its index holds it under.
type Lookup<'a> = &'a dyn Fn(&Arc<str>, TimeNs) -> Option<Arc<Stored>>;

/// Correlations ordered newest first, then by id.
type Ordered = BTreeSet<(Reverse<TimeNs>, Arc<str>)>;

/// A key's correlations, newest first.
#[derive(Debug, Default)]
struct Index {
    all: Ordered,
    by_kind: HashMap<&'static str, Ordered>,
    by_family: HashMap<&'static str, Ordered>,
    by_entity: HashMap<Arc<str>, Ordered>,
}

impl Index {
    fn change(&mut self, stored: &Stored, time: TimeNs, entities: &[Arc<str>], insert: bool) {
        let key = (Reverse(time), Arc::clone(&stored.id));
        let kind = stored.correlation.kind.as_str();
        let family = stored.correlation.family.as_str();
        fn edit<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, Ordered>,
            at: K,
            key: &(Reverse<TimeNs>, Arc<str>),
            insert: bool,
        ) {
            if insert {
                map.entry(at).or_default().insert(key.clone());
            } else if let Some(set) = map.get_mut(&at) {
                set.remove(key);
                if set.is_empty() {
                    map.remove(&at);
                }
            }
        }
        edit(&mut self.by_kind, kind, &key, insert);
        edit(&mut self.by_family, family, &key, insert);
        for entity in entities {
            edit(&mut self.by_entity, Arc::clone(entity), &key, insert);
        }
        if insert {
            self.all.insert(key);
        } else {
            self.all.remove(&key);
        }
    }
}

/// Which correlations to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this family.
    pub family: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only correlations that mention this entity (a hop or the root cause).
    pub entity: Option<String>,
    /// Only correlations whose root cause is in this namespace.
    pub namespace: Option<String>,
    /// Only correlations that became current at or after this time, ns.
    pub from: Option<TimeNs>,
    /// Only correlations that became current before this time, ns.
    pub to: Option<TimeNs>,
    /// Only incidents: every family but ownership, which is context.
    pub incidents_only: bool,
}

/// The correlations that share a root cause, as the incidents view groups them.
#[derive(Clone, Debug)]
pub struct Group {
    /// The root cause's entity id.
    pub root_cause: String,
    /// How many correlations passed the filter with this root cause.
    pub count: usize,
    /// Their kinds, sorted.
    pub kinds: BTreeSet<&'static str>,
    /// Their families, sorted.
    pub families: BTreeSet<&'static str>,
    /// The newest of them (at most the number asked for), newest first.
    pub newest: Vec<Arc<Stored>>,
}

/// The store's content: read it through [`Store::read`].
#[derive(Debug, Default)]
pub struct State {
    current: HashMap<Arc<str>, Arc<Stored>>,
    current_index: Index,
    history: BTreeMap<(TimeNs, Arc<str>), Arc<Stored>>,
    history_latest: HashMap<Arc<str>, TimeNs>,
    history_index: Index,
    strings: HashMap<Arc<str>, ()>,
    entities: HashMap<Arc<str>, u32>,
    facts: HashMap<Arc<str>, (TimeNs, u32)>,
    about: HashMap<Arc<str>, FactsAt>,
    out_links: HashMap<Arc<str>, BTreeMap<LinkEnd, u32>>,
    in_links: HashMap<Arc<str>, BTreeMap<LinkEnd, u32>>,
    tick: Option<TimeNs>,
    ticks: u64,
    changes: u64,
}

/// What one correlation contributes to the graph, its strings interned.
struct Parts {
    entities: Vec<Arc<str>>,
    root: Arc<str>,
    hops: Vec<(Arc<str>, Arc<str>, TimeNs, Observed)>,
    links: Vec<Step>,
}

impl State {
    fn intern(&mut self, text: String) -> Arc<str> {
        if let Some((interned, ())) = self.strings.get_key_value(text.as_str()) {
            return Arc::clone(interned);
        }
        let interned: Arc<str> = text.into();
        self.strings.insert(Arc::clone(&interned), ());
        interned
    }

    /// Drops interned strings nothing else holds any more, once they are the majority.
    fn trim_strings(&mut self) {
        let unused = self
            .strings
            .keys()
            .filter(|text| Arc::strong_count(text) == 1)
            .count();
        if unused > 1024 && unused * 2 > self.strings.len() {
            self.strings.retain(|text, ()| Arc::strong_count(text) > 1);
        }
    }

    fn parts(&mut self, correlation: &Correlation) -> Parts {
        let mut entities = Vec::with_capacity(correlation.chain.len() + 1);
        let mut hops = Vec::with_capacity(correlation.chain.len());
        for hop in &correlation.chain {
            let entity = self.intern(hop.entity.to_string());
            let fact = self.intern(hop.fact_id.to_string());
            entities.push(Arc::clone(&entity));
            hops.push((entity, fact, hop.time, hop.observed.clone()));
        }
        let root = self.intern(correlation.root_cause.to_string());
        entities.push(Arc::clone(&root));
        // The steps of the chain, as the Neo4j sink draws them: consecutive hops at different
        // entities, the later hop's relation and fact; each distinct step counted once.
        let mut links: Vec<Step> = hops
            .windows(2)
            .zip(correlation.chain.windows(2))
            .filter_map(|(pair, typed)| {
                let [(previous, ..), (entity, fact, ..)] = pair else {
                    return None;
                };
                let relation = typed[1].relation;
                (relation != Relation::Start && previous != entity).then(|| {
                    (
                        Arc::clone(previous),
                        relation,
                        Arc::clone(entity),
                        Arc::clone(fact),
                    )
                })
            })
            .collect();
        links.sort();
        links.dedup();
        entities.sort();
        entities.dedup();
        Parts {
            entities,
            root,
            hops,
            links,
        }
    }

    fn count(&mut self, parts: &Parts, up: bool) {
        fn shift<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K, up: bool) {
            if up {
                *map.entry(key).or_insert(0) += 1;
            } else if let Some(count) = map.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&key);
                }
            }
        }
        for (entity, fact, time, observed) in &parts.hops {
            if up {
                self.facts.entry(Arc::clone(fact)).or_insert((*time, 0)).1 += 1;
                self.about
                    .entry(Arc::clone(entity))
                    .or_default()
                    .entry(Arc::clone(fact))
                    .or_insert_with(|| (observed.clone(), 0))
                    .1 += 1;
            } else {
                if let Some((_, count)) = self.facts.get_mut(fact) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.facts.remove(fact);
                    }
                }
                if let Some(facts) = self.about.get_mut(entity) {
                    if let Some((_, count)) = facts.get_mut(fact) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            facts.remove(fact);
                        }
                    }
                    if facts.is_empty() {
                        self.about.remove(entity);
                    }
                }
            }
            shift(&mut self.entities, Arc::clone(entity), up);
        }
        shift(&mut self.entities, Arc::clone(&parts.root), up);
        for (from, relation, to, fact) in &parts.links {
            let out = (*relation, Arc::clone(to), Arc::clone(fact));
            let into = (*relation, Arc::clone(from), Arc::clone(fact));
            for (map, at, end) in [
                (&mut self.out_links, from, out),
                (&mut self.in_links, to, into),
            ] {
                let ends = map.entry(Arc::clone(at)).or_default();
                if up {
                    *ends.entry(end).or_insert(0) += 1;
                } else {
                    if let Some(count) = ends.get_mut(&end) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            ends.remove(&end);
                        }
                    }
                    if ends.is_empty() {
                        map.remove(at);
                    }
                }
            }
        }
    }

    fn apply(&mut self, batch: &ClosedBatch, settings: &StoreSettings) {
        let mut net: BTreeMap<String, (&Correlation, i64)> = BTreeMap::new();
        for (correlation, diff) in &batch.changes {
            net.entry(correlation_id(correlation))
                .or_insert((correlation, 0))
                .1 += diff;
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (id, (correlation, diff)) in net {
            match (diff.signum(), self.current.contains_key(id.as_str())) {
                (1, false) => added.push((id, correlation)),
                (-1, true) => removed.push(id),
                // Zero, or a change the store already reflects.
                _ => {}
            }
        }
        self.changes += (added.len() + removed.len()) as u64;
        for (id, correlation) in added {
            let id = self.intern(id);
            let parts = self.parts(correlation);
            self.count(&parts, true);
            let stored = Stored {
                id: Arc::clone(&id),
                correlation: Arc::new(correlation.clone()),
                since: batch.time,
                until: None,
            };
            self.current_index
                .change(&stored, batch.time, &parts.entities, true);
            self.current.insert(id, Arc::new(stored));
        }
        for id in removed {
            let Some(stored) = self.current.remove(id.as_str()) else {
                continue;
            };
            let parts = self.parts(&stored.correlation);
            self.count(&parts, false);
            self.current_index
                .change(&stored, stored.since, &parts.entities, false);
            if settings.history_count > 0 {
                let retracted = Stored {
                    until: Some(batch.time),
                    ..Stored::clone(&stored)
                };
                self.history_index
                    .change(&retracted, batch.time, &parts.entities, true);
                self.history_latest
                    .insert(Arc::clone(&retracted.id), batch.time);
                self.history
                    .insert((batch.time, Arc::clone(&retracted.id)), Arc::new(retracted));
            }
        }
        self.tick = Some(self.tick.map_or(batch.time, |tick| tick.max(batch.time)));
        self.ticks += 1;
        self.evict(settings);
        self.trim_strings();
    }

    /// Drops the oldest retracted correlations beyond the count or the age.
    fn evict(&mut self, settings: &StoreSettings) {
        let newest = self.tick.unwrap_or(0);
        let max_age = u64::try_from(settings.history_max_age.as_nanos()).unwrap_or(u64::MAX);
        let oldest_kept = newest.saturating_sub(max_age);
        while let Some(entry) = self.history.first_entry() {
            let until = entry.key().0;
            let len = self.history.len();
            if len <= settings.history_count && until >= oldest_kept {
                break;
            }
            let stored = self.history.pop_first().map(|(_, stored)| stored);
            let Some(stored) = stored else { break };
            let parts = self.parts(&stored.correlation);
            self.history_index
                .change(&stored, until, &parts.entities, false);
            if self.history_latest.get(&stored.id) == Some(&until) {
                self.history_latest.remove(&stored.id);
            }
        }
    }

    // === Reading ===

    /// End of the newest tick applied, ns.
    pub fn tick(&self) -> Option<TimeNs> {
        self.tick
    }

    /// Ticks applied.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Correlation changes applied (additions and removals).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// How many correlations are current.
    pub fn current_len(&self) -> usize {
        self.current.len()
    }

    /// How many retracted correlations are kept.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Current correlations per (family, kind).
    pub fn current_by_kind(&self) -> BTreeMap<(&'static str, &'static str), usize> {
        let mut counts = BTreeMap::new();
        for (kind, set) in &self.current_index.by_kind {
            let family = set
                .iter()
                .next()
                .and_then(|(_, id)| self.current.get(id))
                .map_or("", |stored| stored.correlation.family.as_str());
            counts.insert((family, *kind), set.len());
        }
        counts
    }

    /// A correlation by id: the current one, else the latest retracted one kept.
    pub fn get(&self, id: &str) -> Option<&Arc<Stored>> {
        self.current.get(id).or_else(|| {
            let until = *self.history_latest.get(id)?;
            self.history.get(&(until, Arc::from(id)))
        })
    }

    /// Current correlations (`retracted` false) or kept retracted ones (`retracted` true) that
    /// pass `filter`, newest first (by the tick they became current, respectively were
    /// retracted), then by id; at most `limit`. Also returns how many passed in all.
    pub fn list(
        &self,
        filter: &Filter,
        retracted: bool,
        limit: usize,
    ) -> (Vec<Arc<Stored>>, usize) {
        self.list_page(filter, retracted, 0, limit)
    }

    /// As [`State::list`], skipping the first `offset` that pass.
    pub fn list_page(
        &self,
        filter: &Filter,
        retracted: bool,
        offset: usize,
        limit: usize,
    ) -> (Vec<Arc<Stored>>, usize) {
        let mut found = Vec::new();
        let total = self.scan(filter, retracted, |index, stored| {
            if index >= offset && found.len() < limit {
                found.push(Arc::clone(stored));
            }
        });
        (found, total)
    }

    /// The correlations that pass `filter` grouped by root cause, the group with the newest
    /// correlation first; groups `offset..offset + limit`, each with its `per_group` newest
    /// correlations. Also returns how many groups there are in all.
    pub fn groups(
        &self,
        filter: &Filter,
        retracted: bool,
        offset: usize,
        limit: usize,
        per_group: usize,
    ) -> (Vec<Group>, usize) {
        let mut groups: Vec<Group> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        self.scan(filter, retracted, |_, stored| {
            let correlation = &stored.correlation;
            let root = correlation.root_cause.to_string();
            let place = match at.get(&root) {
                Some(place) => *place,
                None => {
                    at.insert(root.clone(), groups.len());
                    groups.push(Group {
                        root_cause: root,
                        count: 0,
                        kinds: BTreeSet::new(),
                        families: BTreeSet::new(),
                        newest: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[place];
            group.count += 1;
            group.kinds.insert(correlation.kind.as_str());
            group.families.insert(correlation.family.as_str());
            if group.newest.len() < per_group {
                group.newest.push(Arc::clone(stored));
            }
        });
        let total = groups.len();
        (groups.into_iter().skip(offset).take(limit).collect(), total)
    }

    /// Calls `each` with every correlation that passes `filter`, newest first, and its place
    /// among them; returns how many passed.
    fn scan(
        &self,
        filter: &Filter,
        retracted: bool,
        mut each: impl FnMut(usize, &Arc<Stored>),
    ) -> usize {
        let (index, stored_of): (&Index, Lookup<'_>) = if retracted {
            (&self.history_index, &|id, time| {
                self.history.get(&(time, Arc::clone(id))).cloned()
            })
        } else {
            (&self.current_index, &|id, _| self.current.get(id).cloned())
        };
        if filter.to == Some(0) {
            return 0;
        }
        let empty = Ordered::new();
        // Start from the narrowest index the filter names.
        let mut candidates: Vec<&Ordered> = Vec::new();
        if let Some(entity) = &filter.entity {
            candidates.push(index.by_entity.get(entity.as_str()).unwrap_or(&empty));
        }
        if let Some(kind) = &filter.kind {
            candidates.push(index.by_kind.get(kind.as_str()).unwrap_or(&empty));
        }
        if let Some(family) = &filter.family {
            candidates.push(index.by_family.get(family.as_str()).unwrap_or(&empty));
        }
        let base = candidates
            .into_iter()
            .min_by_key(|set| set.len())
            .unwrap_or(&index.all);
        // Newest first: the key's time is reversed. `to` is exclusive, `from` inclusive.
        let lower = (
            Reverse(filter.to.map_or(TimeNs::MAX, |to| to.saturating_sub(1))),
            Arc::<str>::from(""),
        );
        let mut total = 0usize;
        for (Reverse(time), id) in base.range(lower..) {
            if filter.from.is_some_and(|from| *time < from) {
                break;
            }
            let Some(stored) = stored_of(id, *time) else {
                continue;
            };
            if !matches(&stored, filter) {
                continue;
            }
            each(total, &stored);
            total += 1;
        }
        total
    }

    /// Whether a current correlation mentions the entity (a hop or its root cause).
    pub fn has_entity(&self, entity: &str) -> bool {
        self.entities.contains_key(entity)
    }

    /// Current correlations with a hop or the root cause at the entity, newest first.
    pub fn mentioning(&self, entity: &str) -> impl Iterator<Item = &Arc<Stored>> + '_ {
        self.current_index
            .by_entity
            .get(entity)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.current.get(id))
    }

    /// The event time of a fact a current correlation cites.
    pub fn fact_time(&self, fact: &str) -> Option<TimeNs> {
        self.facts.get(fact).map(|(time, _)| *time)
    }

    /// The facts current correlations cite at the entity, with what each observed there (as
    /// first cited), by fact id.
    pub fn about(&self, entity: &str) -> impl Iterator<Item = (&Arc<str>, &Observed)> + '_ {
        self.about
            .get(entity)
            .into_iter()
            .flatten()
            .map(|(fact, (observed, _))| (fact, observed))
    }

    /// What a fact observed at an entity, if a current correlation cites it there.
    pub fn observed(&self, fact: &str, entity: &str) -> Option<&Observed> {
        self.about
            .get(entity)
            .and_then(|facts| facts.get(fact))
            .map(|(observed, _)| observed)
    }

    /// Steps that start at the entity, by relation, end and fact.
    pub fn links_from(&self, entity: &str) -> impl Iterator<Item = &LinkEnd> + '_ {
        self.out_links
            .get(entity)
            .into_iter()
            .flatten()
            .map(|(end, _)| end)
    }

    /// Steps that end at the entity, by relation, start and fact.
    pub fn links_to(&self, entity: &str) -> impl Iterator<Item = &LinkEnd> + '_ {
        self.in_links
            .get(entity)
            .into_iter()
            .flatten()
            .map(|(end, _)| end)
    }
}

/// Whether `stored` passes the parts of `filter` its index did not settle.
fn matches(stored: &Stored, filter: &Filter) -> bool {
    let correlation = &stored.correlation;
    if filter.incidents_only && correlation.family == tapio_model::Family::Ownership {
        return false;
    }
    if filter
        .kind
        .as_deref()
        .is_some_and(|kind| kind != correlation.kind.as_str())
        || filter
            .family
            .as_deref()
            .is_some_and(|family| family != correlation.family.as_str())
    {
        return false;
    }
    if let Some(entity) = filter.entity.as_deref() {
        let root = correlation.root_cause.to_string();
        if root != entity
            && !correlation
                .chain
                .iter()
                .any(|hop| hop.entity.to_string() == entity)
        {
            return false;
        }
    }
    if let Some(namespace) = filter.namespace.as_deref()
        && namespace_of(&correlation.root_cause) != Some(namespace)
    {
        return false;
    }
    true
}

/// The namespace of a namespaced entity.
pub fn namespace_of(entity: &tapio_model::EntityId) -> Option<&str> {
    use tapio_model::EntityId;
    match entity {
        EntityId::Pod { namespace, .. }
        | EntityId::Service { namespace, .. }
        | EntityId::Deployment { namespace, .. }
        | EntityId::ReplicaSet { namespace, .. }
        | EntityId::StatefulSet { namespace, .. }
        | EntityId::DaemonSet { namespace, .. }
        | EntityId::Job { namespace, .. } => Some(namespace),
        _ => None,
    }
}

/// Counters of the store sink, for metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Ticks applied.
    pub batches: AtomicU64,
    /// Time spent applying them, ns.
    pub apply_ns: AtomicU64,
}

/// The store: cheap to clone, shared by the sink that fills it and the readers.
#[derive(Clone, Debug)]
pub struct Store {
    state: Arc<RwLock<State>>,
    settings: StoreSettings,
    changes: broadcast::Sender<Arc<ClosedBatch>>,
    stats: Arc<StoreStats>,
    facts: Arc<Mutex<FactHistory>>,
}

impl Store {
    /// An empty store.
    pub fn new(settings: StoreSettings) -> Store {
        let (changes, _) = broadcast::channel(1024);
        Store {
            state: Arc::new(RwLock::new(State::default())),
            settings,
            changes,
            stats: Arc::new(StoreStats::default()),
            facts: Arc::new(Mutex::new(FactHistory::default())),
        }
    }

    /// Keeps `fact` in its subject's fact history (bounded by `store.facts_per_entity` and
    /// `store.facts_max`). Facts come from the dataflow's input, as it takes them in.
    pub fn record_fact(&self, fact: &Fact) {
        self.facts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(
                fact,
                self.settings.facts_per_entity,
                self.settings.facts_max,
            );
    }

    /// The kept facts about `entity` (its subject's id) before `before` (exclusive), newest
    /// first, at most `limit`; and how many are kept before `before` in all.
    pub fn facts_about(
        &self,
        entity: &str,
        before: Option<TimeNs>,
        limit: usize,
    ) -> (Vec<KeptFact>, usize) {
        self.facts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .about(entity, before, limit)
    }

    /// Facts kept in the fact history, and facts taken in since the start.
    pub fn facts_kept(&self) -> (usize, u64) {
        let facts = self
            .facts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (facts.len(), facts.seen())
    }

    /// Applies one closed tick, then publishes it to subscribers.
    pub fn apply(&self, batch: ClosedBatch) {
        let started = Instant::now();
        {
            let mut state = self
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.apply(&batch, &self.settings);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.apply_ns.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // No subscriber is no error.
        let _ = self.changes.send(Arc::new(batch));
    }

    /// A consistent view of the store, for one question.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every tick applied from now on. A subscriber that falls more than 1024 ticks behind
    /// is told how many it missed (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ClosedBatch>> {
        self.changes.subscribe()
    }

    /// The store's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// A sink that fills this store.
    pub fn sink(&self) -> StoreSink {
        StoreSink {
            store: self.clone(),
            observer: None,
        }
    }
}

/// Told about every batch a [`StoreSink`] applies: when it arrived and how long applying it
/// took (the binary turns these into its sink metrics).
pub trait StoreObserver: Send + 'static {
    /// The batch of the tick ending at `tick_end` (ns since the epoch) arrived and is about to
    /// be applied.
    fn arrived(&mut self, tick_end: TimeNs);
    /// The batch was applied; applying it took `took`.
    fn applied(&mut self, took: Duration);
}

/// The sink that applies every closed tick to a [`Store`].
pub struct StoreSink {
    store: Store,
    observer: Option<Box<dyn StoreObserver>>,
}

impl StoreSink {
    /// The same sink, telling `observer` about every batch it applies.
    #[must_use]
    pub fn observed_by(mut self, observer: impl StoreObserver) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }
}

impl Sink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    fn healthcheck(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    fn run(
        self: Box<Self>,
        mut batches: mpsc::Receiver<ClosedBatch>,
    ) -> BoxFuture<'static, Result<SinkReport, SinkError>> {
        let StoreSink {
            store,
            mut observer,
        } = *self;
        Box::pin(async move {
            let mut report = SinkReport::default();
            while let Some(batch) = batches.recv().await {
                report.batches += 1;
                report.changes += batch.changes.len() as u64;
                if let Some(observer) = observer.as_mut() {
                    observer.arrived(batch.time);
                }
                let started = Instant::now();
                store.apply(batch);
                if let Some(observer) = observer.as_mut() {
                    observer.applied(started.elapsed());
                }
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests;
