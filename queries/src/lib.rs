//! The question catalog: named questions about the correlation graph, answered with Cypher on
//! the Neo4j graph that the Neo4j sink keeps (layer L3; may depend on `tapio-dataflow`,
//! `tapio-model` and `tapio-config`; it talks Bolt through `neo4rs` itself, so it needs no sink).
//!
//! | question | function | Cypher |
//! | --- | --- | --- |
//! | why did ENTITY fail | [`why`] | [`catalog::WHY`] |
//! | what does ENTITY take down | [`blast_radius`] | [`catalog::BLAST_RADIUS`] |
//! | what happened to ENTITY | [`timeline`] | [`catalog::TIMELINE`] |
//! | how are A and B connected | [`path`] | [`catalog::PATH`] |
//!
//! Every answer is a serializable value ([`Answer`]) that prints as a table for people
//! ([`Answer::to_table`]) or as JSON for machines. The graph holds typed data only; the text in
//! an answer (`explanation`, `what`) is rendered from it with `tapio_model::render`, so it reads
//! exactly as the in-process output does, and the typed observation travels along (`observed`).
//!
//! ```no_run
//! # async fn example() -> Result<(), tapio_queries::QueryError> {
//! let mut config = tapio_config::Neo4jConfig::default();
//! config.uri = "bolt://127.0.0.1:7687".into();
//! config.password = tapio_config::Secret::new("secret");
//! let graph = tapio_queries::connect(&config).await?;
//! let pod = "pod/default/px-7df978b9bf-jm22q".parse().expect("an entity id");
//! let answer = tapio_queries::why(&graph, &pod).await?;
//! print!("{}", answer.to_table());
//! # Ok(())
//! # }
//! ```

pub mod catalog;
pub mod memory;
mod table;

use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, Query, query};
use serde::{Deserialize, Serialize};
use tapio_model::render::{describe_chain, describe_hop, explain};
use tapio_model::{Correlation, EntityId, FactId, Hop, Observed, Relation, TimeNs};

/// The Bolt connection every question takes (a `neo4rs` connection pool).
pub use neo4rs::Graph as Connection;

/// Why a question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `integrations.neo4j.uri` is empty.
    #[error(
        "no Neo4j configured: set integrations.neo4j.uri (and username, password) in the \
         configuration file given with --config"
    )]
    NotConfigured,
    /// Neo4j refused the user name or password.
    #[error("Neo4j at {uri} refused the user name or password (user `{username}`): {message}")]
    Unauthorized {
        /// Bolt URI.
        uri: String,
        /// The refused user.
        username: String,
        /// The server's message.
        message: String,
    },
    /// Neo4j could not be reached or did not answer in time.
    #[error("cannot reach Neo4j at {uri}: {reason}")]
    Unreachable {
        /// Bolt URI.
        uri: String,
        /// What happened.
        reason: String,
    },
    /// The entity is not in the graph: no current correlation mentions it.
    #[error("{entity} is not in the graph: no current correlation mentions it")]
    UnknownEntity {
        /// The entity id.
        entity: String,
    },
    /// The query failed or returned something unexpected.
    #[error("the `{question}` query failed: {reason}")]
    Failed {
        /// Which question.
        question: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Connects to the Neo4j in `config` and checks the credentials, within 10 seconds.
///
/// # Errors
/// [`QueryError::NotConfigured`], [`QueryError::Unauthorized`] or [`QueryError::Unreachable`].
pub async fn connect(config: &tapio_config::Neo4jConfig) -> Result<Graph, QueryError> {
    if config.uri.is_empty() {
        return Err(QueryError::NotConfigured);
    }
    let unreachable = |reason: String| QueryError::Unreachable {
        uri: config.uri.clone(),
        reason,
    };
    let attempt = async {
        let mut neo4j = ConfigBuilder::default()
            .uri(config.uri.as_str())
            .user(config.username.as_str())
            .password(config.password.expose())
            .max_connections(2);
        if !config.ca_file.is_empty() {
            neo4j = neo4j.with_client_certificate(&config.ca_file);
        }
        let neo4j = neo4j
            .build()
            .map_err(|error| unreachable(error.to_string()))?;
        let graph = Graph::connect(neo4j)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let mut txn = graph.start_txn().await.map_err(|error| match error {
            neo4rs::Error::AuthenticationError(message) => QueryError::Unauthorized {
                uri: config.uri.clone(),
                username: config.username.clone(),
                message,
            },
            other => unreachable(other.to_string()),
        })?;
        txn.run(query("RETURN 1"))
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        txn.commit()
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        Ok(graph)
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(result) => result,
        Err(_) => Err(unreachable("no answer within 10 s".into())),
    }
}

// === Answers ===

/// One hop of an evidence chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceHop {
    /// Entity id.
    pub entity: String,
    /// How it relates to the hop before (`start` for the first).
    pub relation: Relation,
    /// The observation behind the hop.
    pub fact_id: String,
    /// Its event time, ns since the Unix epoch.
    pub time: TimeNs,
    /// What it observed, as typed data.
    pub observed: Observed,
    /// What it says, rendered ([`tapio_model::render::describe_hop`]).
    pub what: String,
}

/// A root-cause chain through the asked entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// Correlation id in the graph.
    pub id: String,
    /// Rule (`oom_restart`, …).
    pub kind: String,
    /// Family of rules (`sequence`, …).
    pub family: String,
    /// Where the chain starts.
    pub root_cause: String,
    /// Percent.
    pub confidence: u8,
    /// One sentence, rendered ([`tapio_model::render::explain`]).
    pub explanation: String,
    /// Tick in which it became current, ns.
    pub since: TimeNs,
    /// The chain, hop by hop.
    pub chain: Vec<EvidenceHop>,
}

/// An entity the asked one takes down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// Entity id.
    pub entity: String,
    /// Its kind (`pod`, …).
    pub kind: String,
    /// How it is hit: `caused`, `inside`, `inside affected`, `owner of affected`, `affected`
    /// (a failure reached it along the service graph), `dependent` (it depends on the entity).
    pub how: String,
    /// Relationships between the two.
    pub distance: u32,
    /// The fact ids along the way.
    pub evidence: Vec<String>,
}

/// A fact on a timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Event time, ns since the Unix epoch.
    pub time: TimeNs,
    /// The entity it is about (the asked one or something it owns).
    pub entity: String,
    /// Fact id.
    pub fact_id: String,
    /// What it observed about the entity, as typed data.
    pub observed: Observed,
    /// What it says about the entity, rendered ([`tapio_model::render::describe_hop`]).
    pub what: String,
}

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The relationship type: `OWNED_BY`, `CAUSED`, `FOLLOWED_BY`, `DEPENDS_ON` or `AFFECTS`.
    pub relation: String,
    /// Start of the relationship.
    pub from: String,
    /// End of the relationship.
    pub to: String,
    /// Its evidence.
    pub fact_id: String,
    /// Event time of the evidence, ns.
    pub time: TimeNs,
    /// What the evidence observed at `to`, as typed data.
    pub observed: Observed,
    /// What the evidence says, rendered ([`tapio_model::render::describe_hop`]).
    pub what: String,
}

/// An answer to one question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "question", rename_all = "kebab-case")]
pub enum Answer {
    /// `why ENTITY`.
    Why {
        /// The asked entity.
        entity: String,
        /// Root-cause chains, surest and newest first.
        causes: Vec<Cause>,
    },
    /// `blast-radius ENTITY`.
    BlastRadius {
        /// The asked entity.
        entity: String,
        /// What it takes down, nearest first.
        impacts: Vec<Impact>,
    },
    /// `timeline ENTITY`.
    Timeline {
        /// The asked entity.
        entity: String,
        /// Facts, oldest first.
        events: Vec<Event>,
    },
    /// `path A B`.
    Path {
        /// Start.
        from: String,
        /// End.
        to: String,
        /// Entities along the shortest path (empty when there is none).
        nodes: Vec<String>,
        /// Relationships along it.
        steps: Vec<Step>,
    },
}

impl Answer {
    /// The answer as a table for a terminal.
    pub fn to_table(&self) -> String {
        table::render(self)
    }
}

// === Questions ===

/// Root-cause chains through `entity`.
///
/// # Errors
/// [`QueryError::UnknownEntity`] when no current correlation mentions it, or
/// [`QueryError::Failed`].
pub async fn why(graph: &Graph, entity: &EntityId) -> Result<Answer, QueryError> {
    let id = entity.to_string();
    ensure_exists(graph, &id).await?;
    let rows = fetch(
        graph,
        "why",
        query(catalog::WHY).param("entity", id.as_str()),
    )
    .await?;
    let causes = rows
        .iter()
        .map(|row| {
            cause(
                get(row, "why", "id")?,
                &get::<String>(row, "why", "data")?,
                ns(get(row, "why", "since")?),
            )
        })
        .collect::<Result<Vec<Cause>, QueryError>>()?;
    Ok(Answer::Why { entity: id, causes })
}

/// What `entity` takes down with it.
///
/// # Errors
/// As [`why`].
pub async fn blast_radius(graph: &Graph, entity: &EntityId) -> Result<Answer, QueryError> {
    let id = entity.to_string();
    ensure_exists(graph, &id).await?;
    let rows = fetch(
        graph,
        "blast-radius",
        query(catalog::BLAST_RADIUS).param("entity", id.as_str()),
    )
    .await?;
    let impacts = rows
        .iter()
        .map(|row| {
            Ok(Impact {
                entity: get(row, "blast-radius", "entity")?,
                kind: get(row, "blast-radius", "kind")?,
                how: get(row, "blast-radius", "how")?,
                distance: u32::try_from(get::<i64>(row, "blast-radius", "distance")?)
                    .unwrap_or(u32::MAX),
                evidence: get(row, "blast-radius", "evidence")?,
            })
        })
        .collect::<Result<Vec<Impact>, QueryError>>()?;
    Ok(Answer::BlastRadius {
        entity: id,
        impacts,
    })
}

/// Facts about `entity` and everything it owns, from `since` (ns) on.
///
/// # Errors
/// As [`why`].
pub async fn timeline(
    graph: &Graph,
    entity: &EntityId,
    since: Option<TimeNs>,
) -> Result<Answer, QueryError> {
    let id = entity.to_string();
    ensure_exists(graph, &id).await?;
    let since = since
        .map(|since| i64::try_from(since).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let rows = fetch(
        graph,
        "timeline",
        query(catalog::TIMELINE)
            .param("entity", id.as_str())
            .param("since", since),
    )
    .await?;
    let events = rows
        .iter()
        .map(|row| {
            let entity: String = get(row, "timeline", "entity")?;
            let fact_id: String = get(row, "timeline", "fact_id")?;
            let time = ns(get(row, "timeline", "time")?);
            let observed: String = get(row, "timeline", "observed")?;
            let previous: Option<String> = get(row, "timeline", "previous")?;
            let (observed, what) = evidence(
                "timeline",
                &entity,
                &fact_id,
                time,
                &observed,
                previous.as_deref(),
            )?;
            Ok(Event {
                time,
                entity,
                fact_id,
                observed,
                what,
            })
        })
        .collect::<Result<Vec<Event>, QueryError>>()?;
    Ok(Answer::Timeline { entity: id, events })
}

/// The shortest chain of relationships between `from` and `to`.
///
/// # Errors
/// As [`why`], for either entity.
pub async fn path(graph: &Graph, from: &EntityId, to: &EntityId) -> Result<Answer, QueryError> {
    let (from, to) = (from.to_string(), to.to_string());
    ensure_exists(graph, &from).await?;
    ensure_exists(graph, &to).await?;
    if from == to {
        return Ok(Answer::Path {
            nodes: vec![from.clone()],
            from,
            to,
            steps: Vec::new(),
        });
    }
    let rows = fetch(
        graph,
        "path",
        query(&catalog::PATH)
            .param("from", from.as_str())
            .param("to", to.as_str()),
    )
    .await?;
    let (nodes, steps) = match rows.first() {
        Some(row) => {
            let steps: Vec<StepRow> = get(row, "path", "steps")?;
            (
                get(row, "path", "nodes")?,
                steps
                    .into_iter()
                    .map(|step| {
                        let time = ns(step.time);
                        let (observed, what) = evidence(
                            "path",
                            &step.to,
                            &step.fact_id,
                            time,
                            &step.observed,
                            Some(&step.from),
                        )?;
                        Ok(Step {
                            relation: step.relation,
                            from: step.from,
                            to: step.to,
                            fact_id: step.fact_id,
                            time,
                            observed,
                            what,
                        })
                    })
                    .collect::<Result<Vec<Step>, QueryError>>()?,
            )
        }
        None => (Vec::new(), Vec::new()),
    };
    Ok(Answer::Path {
        from,
        to,
        nodes,
        steps,
    })
}

// === Plumbing ===

#[derive(Deserialize)]
struct StepRow {
    relation: String,
    from: String,
    to: String,
    fact_id: String,
    time: i64,
    observed: String,
}

/// A [`catalog::WHY`] row as a [`Cause`]: the correlation is its typed JSON (`data`), and the
/// sentences are rendered from it exactly as the in-process output renders them.
fn cause(id: String, data: &str, since: TimeNs) -> Result<Cause, QueryError> {
    let correlation: Correlation =
        serde_json::from_str(data).map_err(|error| QueryError::Failed {
            question: "why",
            reason: format!("correlation {id} holds data this version cannot read: {error}"),
        })?;
    Ok(cause_of(id, correlation, since))
}

/// A current correlation as a [`Cause`], its sentences rendered.
fn cause_of(id: String, correlation: Correlation, since: TimeNs) -> Cause {
    let what = describe_chain(&correlation.chain);
    Cause {
        kind: correlation.kind.as_str().to_owned(),
        family: correlation.family.as_str().to_owned(),
        root_cause: correlation.root_cause.to_string(),
        confidence: correlation.confidence.percent,
        explanation: explain(&correlation),
        since,
        chain: correlation
            .chain
            .into_iter()
            .zip(what)
            .map(|(hop, what)| EvidenceHop {
                entity: hop.entity.to_string(),
                relation: hop.relation,
                fact_id: hop.fact_id.to_string(),
                time: hop.time,
                observed: hop.observed,
                what,
            })
            .collect(),
        id,
    }
}

/// The typed observation of a fact at `entity` (`observed`, JSON from an `ABOUT`
/// relationship) and its text, rendered as the hop it came from renders in a chain: `previous`
/// is the entity of the hop before, when the graph has a step from it with this evidence.
fn evidence(
    question: &'static str,
    entity: &str,
    fact_id: &str,
    time: TimeNs,
    observed: &str,
    previous: Option<&str>,
) -> Result<(Observed, String), QueryError> {
    let bad = |what: &str, error: &dyn std::fmt::Display| QueryError::Failed {
        question,
        reason: format!("the graph has {what} for {fact_id} at {entity}: {error}"),
    };
    let observed: Observed = serde_json::from_str(observed)
        .map_err(|error| bad("an observation this version cannot read", &error))?;
    evidence_of(question, entity, fact_id, time, observed, previous)
}

/// [`evidence`] for an observation that is typed already.
fn evidence_of(
    question: &'static str,
    entity: &str,
    fact_id: &str,
    time: TimeNs,
    observed: Observed,
    previous: Option<&str>,
) -> Result<(Observed, String), QueryError> {
    let bad = |what: &str, error: &dyn std::fmt::Display| QueryError::Failed {
        question,
        reason: format!("the graph has {what} for {fact_id} at {entity}: {error}"),
    };
    let entity_id = |id: &str| {
        id.parse::<EntityId>()
            .map_err(|error| bad("a bad entity id", &error))
    };
    let hop = Hop {
        entity: entity_id(entity)?,
        relation: Relation::Start,
        fact_id: fact_id
            .parse::<FactId>()
            .map_err(|error| bad("a bad fact id", &error))?,
        time,
        observed,
    };
    // `describe_hop` reads only the entity of the hop before.
    let previous = previous
        .map(|previous| {
            Ok::<Hop, QueryError>(Hop {
                entity: entity_id(previous)?,
                ..hop.clone()
            })
        })
        .transpose()?;
    let what = describe_hop(&hop, previous.as_ref());
    Ok((hop.observed, what))
}

fn ns(value: i64) -> TimeNs {
    u64::try_from(value).unwrap_or(0)
}

async fn ensure_exists(graph: &Graph, entity: &str) -> Result<(), QueryError> {
    let rows = fetch(
        graph,
        "entity",
        query(catalog::ENTITY_EXISTS).param("entity", entity),
    )
    .await?;
    if rows.is_empty() {
        return Err(QueryError::UnknownEntity {
            entity: entity.to_owned(),
        });
    }
    Ok(())
}

/// Runs a read query in its own transaction and collects its rows.
async fn fetch(
    graph: &Graph,
    question: &'static str,
    statement: Query,
) -> Result<Vec<neo4rs::Row>, QueryError> {
    let failed = |error: neo4rs::Error| QueryError::Failed {
        question,
        reason: error.to_string(),
    };
    let mut txn = graph.start_txn().await.map_err(failed)?;
    let mut stream = txn.execute(statement).await.map_err(failed)?;
    let mut rows = Vec::new();
    while let Some(row) = stream.next(txn.handle()).await.map_err(failed)? {
        rows.push(row);
    }
    txn.commit().await.map_err(failed)?;
    Ok(rows)
}

fn get<T: serde::de::DeserializeOwned>(
    row: &neo4rs::Row,
    question: &'static str,
    column: &str,
) -> Result<T, QueryError> {
    row.get::<T>(column).map_err(|error| QueryError::Failed {
        question,
        reason: format!("column `{column}`: {error}"),
    })
}
