//! The HTTP API (axum): read-only JSON about the correlations in the in-memory store, a live
//! stream of changes as server-sent events, health and readiness, and Prometheus `/metrics`.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /` | the web page (incidents, causal graphs, entity timelines), its assets embedded in the binary |
//! | `GET /v1/incidents` | current correlations that are incidents (every family but ownership, unless asked), newest first; `family`, `kind`, `entity`, `namespace`, `from`, `to`, `context`, `offset`, `limit`, `state=current\|retracted` |
//! | `GET /v1/root-causes` | the same, grouped by root cause, the group with the newest correlation first; same filters, `offset`, `limit`, `per_group` |
//! | `GET /v1/summary` | how many correlations are current per family and kind, and how many retracted ones are kept |
//! | `GET /v1/correlations/{id}` | one correlation, current or retracted, with the evidence of every hop |
//! | `GET /v1/entities/{entity id}/why`, `…/blast-radius`, `…/timeline?since=T`, `…/path?to=ENTITY` | the four questions, as `tapio query --json` answers them |
//! | `GET /v1/entities/{entity id}/facts?before=T&limit=N` | the facts kept about the entity, newest first |
//! | `GET /v1/changes` | server-sent events, one `change` per correlation change, as the JSON lines output writes it |
//! | `GET /healthz` | the process answers |
//! | `GET /readyz` | 200 when every source, the dataflow and every sink work, else 503 and why |
//! | `GET /metrics` | Prometheus text format |
//!
//! Every error is JSON, `{"error": {"status": 400, "message": "…"}}`, with a status that fits.
//! With a token configured (an environment variable or a file, never the YAML), every path
//! under `/v1/` needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use tapio_config::ApiConfig;
use tapio_model::{CorrelationChange, EntityId, TimeNs};
use tapio_queries::{Cause, QueryError, memory};
use tapio_sinks_store::{Filter, Store, Stored};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::health::{Phase, health};

/// Items a list returns when the request names no `limit`.
const DEFAULT_LIMIT: usize = 100;

/// The bearer token of `config`: from the environment variable, else the file; `None` when
/// neither holds one.
///
/// # Errors
/// When the file is named but cannot be read or holds only white space.
pub(crate) fn token(config: &ApiConfig) -> Result<Option<String>> {
    if let Ok(token) = std::env::var(&config.token_env) {
        let token = token.trim();
        if !token.is_empty() {
            return Ok(Some(token.to_owned()));
        }
    }
    if config.token_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config.token_file).with_context(|| {
        format!(
            "cannot read the API token file {} (api.token_file)",
            config.token_file
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!(
            "the API token file {} (api.token_file) is empty",
            config.token_file
        );
    }
    Ok(Some(token.to_owned()))
}

#[derive(Clone)]
struct Api {
    store: Store,
    token: Option<Arc<str>>,
    max_limit: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A running API server.
pub(crate) struct Server {
    /// Where it listens.
    pub(crate) address: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting requests and waits for open ones (server-sent event streams end).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Binds `address` (the configured one unless overridden) and serves the API over `store`.
///
/// # Errors
/// When the address cannot be bound or the token cannot be read.
pub(crate) async fn serve(config: &ApiConfig, address: &str, store: Store) -> Result<Server> {
    let token = token(config)?;
    let api = Api {
        store,
        token: token.map(Arc::from),
        max_limit: config.max_limit,
        metrics: crate::metrics::metrics(),
    };
    listen(address, router(api)).await
}

/// Binds `address` and serves only `/healthz`, `/readyz` and `/metrics`: for the node agent,
/// which correlates nothing.
///
/// # Errors
/// When the address cannot be bound.
pub(crate) async fn serve_metrics(address: &str) -> Result<Server> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_only))
        .fallback(not_found);
    listen(address, router).await
}

async fn listen(address: &str, router: Router) -> Result<Server> {
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("the API address `{address}` is not an IP address and a port"))?;
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("the API cannot listen on {address} (api.address)"))?;
    let address = listener
        .local_addr()
        .context("the API socket has no address")?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "The API server failed.");
        }
    });
    tracing::info!(address = %format!("http://{address}"), "API listening.");
    Ok(Server {
        address,
        stop,
        task,
    })
}

fn router(api: Api) -> Router {
    let v1 = Router::new()
        .route("/v1/incidents", get(incidents))
        .route("/v1/root-causes", get(root_causes))
        .route("/v1/summary", get(summary))
        .route("/v1/correlations/{id}", get(correlation))
        .route("/v1/entities/{*question}", get(entity_question))
        .route("/v1/changes", get(changes))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::web::routes())
        .fallback(not_found)
        .with_state(api)
}

// === Errors ===

/// An error answer: `{"error": {"status": …, "message": …}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "status": self.status.as_u16(), "message": self.message }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tapio\""),
            );
        }
        response
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad(format!("bad query string: {}", rejection.body_text()))
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> ApiError {
        let status = match error {
            QueryError::UnknownEntity { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {} (see /v1/incidents, /v1/correlations/ID, \
             /v1/entities/ENTITY/why, /v1/changes, /healthz, /readyz, /metrics, and the web \
             page at /)",
            request.method(),
            request.uri().path()
        ),
    )
}

// === Authorization ===

/// Compares without stopping at the first difference, so that timing tells nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(token) = &api.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this API needs a bearer token: send `Authorization: Bearer <token>`",
        )
        .into_response(),
        Some(value) => match value.strip_prefix("Bearer ") {
            Some(offered) if same(offered.trim().as_bytes(), token.as_bytes()) => {
                next.run(request).await
            }
            Some(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is wrong").into_response()
            }
            None => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be `Bearer <token>`",
            )
            .into_response(),
        },
    }
}

// === Parameters ===

/// A time parameter: RFC 3339 or nanoseconds since the Unix epoch.
fn time(name: &str, text: &str) -> Result<TimeNs, ApiError> {
    if let Ok(ns) = text.parse::<u64>() {
        return Ok(ns);
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|_| {
        ApiError::bad(format!(
            "`{name}` must be an RFC 3339 time (2021-05-19T09:43:00Z) or nanoseconds since \
             the Unix epoch, got `{text}`"
        ))
    })?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ApiError::bad(format!("`{name}` is before 1970: `{text}`")))?;
    u64::try_from(since.as_nanos())
        .map_err(|_| ApiError::bad(format!("`{name}` is too far in the future: `{text}`")))
}

fn entity(text: &str) -> Result<EntityId, ApiError> {
    text.parse::<EntityId>().map_err(|error| {
        ApiError::bad(format!(
            "`{text}` is not an entity id (e.g. pod/<namespace>/<name>): {error}"
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentParams {
    family: Option<String>,
    kind: Option<String>,
    entity: Option<String>,
    namespace: Option<String>,
    from: Option<String>,
    to: Option<String>,
    context: Option<bool>,
    offset: Option<usize>,
    limit: Option<usize>,
    state: Option<String>,
    per_group: Option<usize>,
}

fn limit(api: &Api, asked: Option<usize>) -> Result<usize, ApiError> {
    match asked {
        None => Ok(DEFAULT_LIMIT.min(api.max_limit)),
        Some(0) => Err(ApiError::bad("`limit` must be at least 1")),
        Some(limit) if limit > api.max_limit => Err(ApiError::bad(format!(
            "`limit` must be at most {} (api.max_limit), got {limit}",
            api.max_limit
        ))),
        Some(limit) => Ok(limit),
    }
}

// === Answers ===

/// A correlation as the API returns it: the JSON lines output's `correlation`, with its id,
/// when it became current (and stopped being), and its explanation.
#[derive(Serialize)]
struct Item {
    id: String,
    since: TimeNs,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<TimeNs>,
    explanation: String,
    correlation: tapio_model::Correlation,
}

fn item(stored: &Stored) -> Item {
    Item {
        id: stored.id.to_string(),
        since: stored.since,
        until: stored.until,
        explanation: tapio_model::render::explain(&stored.correlation),
        correlation: (*stored.correlation).clone(),
    }
}

/// A list request, checked: the filter, current or retracted, and the page.
struct Listing {
    filter: Filter,
    retracted: bool,
    offset: usize,
    limit: usize,
}

fn listing(api: &Api, params: IncidentParams) -> Result<Listing, ApiError> {
    let limit = limit(api, params.limit)?;
    let offset = params.offset.unwrap_or(0);
    let retracted = match params.state.as_deref() {
        None | Some("current") => false,
        Some("retracted") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "`state` must be `current` or `retracted`, got `{other}`"
            )));
        }
    };
    let from = params
        .from
        .as_deref()
        .map(|t| time("from", t))
        .transpose()?;
    let to = params.to.as_deref().map(|t| time("to", t)).transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::bad(format!(
            "the time range is empty: `from` ({from}) must be before `to` ({to})"
        )));
    }
    if let Some(text) = &params.entity {
        entity(text)?;
    }
    // Ownership is context, not an incident: listed only when asked for by name or with
    // `context=true`.
    let incidents_only =
        params.family.is_none() && params.kind.is_none() && params.context != Some(true);
    Ok(Listing {
        filter: Filter {
            family: params.family,
            kind: params.kind,
            entity: params.entity,
            namespace: params.namespace,
            from,
            to,
            incidents_only,
        },
        retracted,
        offset,
        limit,
    })
}

async fn incidents(
    State(api): State<Api>,
    params: Result<Query<IncidentParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    if params.per_group.is_some() {
        return Err(ApiError::bad("`per_group` applies to /v1/root-causes only"));
    }
    let listing = listing(&api, params)?;
    let started = std::time::Instant::now();
    let state = api.store.read();
    let (found, total) = state.list_page(
        &listing.filter,
        listing.retracted,
        listing.offset,
        listing.limit,
    );
    drop(state);
    let items: Vec<Item> = found.iter().map(|stored| item(stored)).collect();
    api.metrics.observe_request("incidents", started.elapsed());
    Ok(axum::Json(serde_json::json!({ "total": total, "incidents": items })).into_response())
}

/// Correlations a group returns when the request names no `per_group`.
const DEFAULT_PER_GROUP: usize = 3;

async fn root_causes(
    State(api): State<Api>,
    params: Result<Query<IncidentParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let per_group = match params.per_group {
        None => DEFAULT_PER_GROUP,
        Some(0) => return Err(ApiError::bad("`per_group` must be at least 1")),
        Some(asked) => limit(&api, Some(asked)).map_err(|_| {
            ApiError::bad(format!(
                "`per_group` must be at most {} (api.max_limit), got {asked}",
                api.max_limit
            ))
        })?,
    };
    let listing = listing(&api, params)?;
    let started = std::time::Instant::now();
    let state = api.store.read();
    let (groups, total) = state.groups(
        &listing.filter,
        listing.retracted,
        listing.offset,
        listing.limit,
        per_group,
    );
    drop(state);
    let groups: Vec<serde_json::Value> = groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "root_cause": group.root_cause,
                "count": group.count,
                "kinds": group.kinds,
                "families": group.families,
                "since": group.newest.first().map(|stored| stored.since),
                "incidents": group.newest.iter().map(|stored| item(stored)).collect::<Vec<_>>(),
            })
        })
        .collect();
    api.metrics
        .observe_request("root_causes", started.elapsed());
    Ok(axum::Json(serde_json::json!({ "total": total, "root_causes": groups })).into_response())
}

async fn summary(State(api): State<Api>) -> Response {
    let state = api.store.read();
    let kinds: Vec<serde_json::Value> = state
        .current_by_kind()
        .into_iter()
        .map(|((family, kind), count)| {
            serde_json::json!({ "family": family, "kind": kind, "current": count })
        })
        .collect();
    let body = serde_json::json!({
        "current": state.current_len(),
        "retracted": state.history_len(),
        "tick": state.tick(),
        "kinds": kinds,
    });
    drop(state);
    axum::Json(body).into_response()
}

async fn correlation(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if id.len() != 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::bad(format!(
            "`{id}` is not a correlation id: 32 lowercase hexadecimal digits"
        )));
    }
    let state = api.store.read();
    let Some(stored) = state.get(&id).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no correlation {id} is current or in the kept history"),
        ));
    };
    drop(state);
    let evidence: Cause = memory::cause(&stored);
    Ok(axum::Json(serde_json::json!({
        "id": stored.id.to_string(),
        "since": stored.since,
        "until": stored.until,
        "current": stored.until.is_none(),
        "explanation": evidence.explanation,
        "correlation": *stored.correlation,
        "evidence": evidence.chain,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionParams {
    since: Option<String>,
    to: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

async fn entity_question(
    State(api): State<Api>,
    Path(path): Path<String>,
    params: Result<Query<QuestionParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let Some((id, question)) = path.rsplit_once('/') else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "`/v1/entities/{path}` names no question: add /why, /blast-radius, /timeline or \
                 /path"
            ),
        ));
    };
    let subject = entity(id)?;
    let allowed: &[&str] = match question {
        "timeline" => &["since"],
        "path" => &["to"],
        "facts" => &["before", "limit"],
        "why" | "blast-radius" => &[],
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no question `{other}`: ask why, blast-radius, timeline or path (or facts)"
                ),
            ));
        }
    };
    for (name, given) in [
        ("since", params.since.is_some()),
        ("to", params.to.is_some()),
        ("before", params.before.is_some()),
        ("limit", params.limit.is_some()),
    ] {
        if given && !allowed.contains(&name) {
            return Err(ApiError::bad(format!(
                "`{name}` does not apply to the {question} question"
            )));
        }
    }
    if question == "facts" {
        let before = params
            .before
            .as_deref()
            .map(|t| time("before", t))
            .transpose()?;
        let limit = limit(&api, params.limit)?;
        return Ok(facts(&api, &subject, before, limit));
    }
    let since = params
        .since
        .as_deref()
        .map(|t| time("since", t))
        .transpose()?;
    let to = match (question, params.to.as_deref()) {
        ("path", None) => {
            return Err(ApiError::bad(
                "the path question needs `to`, the entity at the other end",
            ));
        }
        ("path", Some(text)) => Some(entity(text)?),
        _ => None,
    };
    let started = std::time::Instant::now();
    let state = api.store.read();
    let answer = match (question, to) {
        ("why", _) => memory::why(&state, &subject),
        ("blast-radius", _) => memory::blast_radius(&state, &subject),
        ("timeline", _) => memory::timeline(&state, &subject, since),
        (_, Some(to)) => memory::path(&state, &subject, &to),
        (_, None) => unreachable_question(),
    }?;
    drop(state);
    api.metrics.observe_request(
        match question {
            "why" => "why",
            "blast-radius" => "blast_radius",
            "timeline" => "timeline",
            _ => "path",
        },
        started.elapsed(),
    );
    Ok(axum::Json(answer).into_response())
}

/// The kept facts about `subject`, newest first, each with its sentence.
fn facts(api: &Api, subject: &EntityId, before: Option<TimeNs>, limit: usize) -> Response {
    let (kept, total) = api.store.facts_about(&subject.to_string(), before, limit);
    let facts: Vec<serde_json::Value> = kept
        .into_iter()
        .map(|fact| {
            let what = fact
                .id
                .parse::<tapio_model::FactId>()
                .map(|fact_id| {
                    let hop = tapio_model::Hop {
                        entity: subject.clone(),
                        relation: tapio_model::Relation::Start,
                        fact_id,
                        time: fact.time,
                        observed: fact.observed.clone(),
                    };
                    tapio_model::render::describe_hop(&hop, None)
                })
                .unwrap_or_default();
            serde_json::json!({
                "fact_id": fact.id.as_ref(),
                "time": fact.time,
                "kind": fact.kind,
                "observed": fact.observed,
                "what": what,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "entity": subject.to_string(),
        "total": total,
        "facts": facts,
    }))
    .into_response()
}

/// `path` without `to` was answered above.
fn unreachable_question() -> Result<tapio_queries::Answer, QueryError> {
    Err(QueryError::Failed {
        question: "path",
        reason: "no `to` entity".into(),
    })
}

async fn changes(State(api): State<Api>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = api.store.subscribe();
    let events = stream::unfold(
        (receiver, std::collections::VecDeque::<Event>::new()),
        |(mut receiver, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (receiver, pending)));
                }
                match receiver.recv().await {
                    Ok(batch) => {
                        for change in batch.to_changes() {
                            let change: CorrelationChange = change;
                            let data = serde_json::to_string(&change).unwrap_or_default();
                            pending.push_back(Event::default().event("change").data(data));
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let data = serde_json::json!({ "missed_ticks": missed }).to_string();
                        pending.push_back(Event::default().event("lagged").data(data));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz() -> Response {
    let health = health();
    let (ready, not_ready) = health.ready();
    let sources: Vec<_> = health
        .sources()
        .into_iter()
        .map(|source| {
            serde_json::json!({
                "kind": source.kind,
                "status": source.status.as_str(),
                "message": source.message,
            })
        })
        .collect();
    let dataflow = health
        .dataflow()
        .map_or(Phase::Starting, |(phase, _)| phase);
    let body = serde_json::json!({
        "ready": ready,
        "not_ready": not_ready,
        "sources": sources,
        "dataflow": dataflow,
        "sinks": health.sinks(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    encode_metrics(&api.metrics)
}

async fn metrics_only() -> Result<Response, ApiError> {
    encode_metrics(&crate::metrics::metrics())
}

fn encode_metrics(metrics: &crate::metrics::Metrics) -> Result<Response, ApiError> {
    let text = metrics.encode().map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {error}"),
        )
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok((headers, text).into_response())
}
