//! The transactional writer: one closed tick in, one Neo4j transaction out.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use neo4rs::{BoltType, ConfigBuilder, Graph, Query, Txn, query};
use tapio_model::{ClosedBatch, Correlation, TimeNs};
use tokio::time::Instant;

use crate::cypher;
use crate::error::Neo4jError;
use crate::model::{Delta, LinkType, correlation_id};
use crate::wire;

/// How to reach Neo4j and who is writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neo4jSettings {
    /// Bolt URI, e.g. `bolt://127.0.0.1:7687`.
    pub uri: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// The cursor's key: one cursor per writer. Two Tapio deployments writing into one
    /// database need different names. Default: `tapio`.
    pub writer: String,
    /// How long the health check and each connection attempt wait for an answer. Default: 10 s.
    pub connect_timeout: Duration,
    /// First wait before retrying a failed transaction; it doubles up to `retry_max`.
    /// Default: 200 ms.
    pub retry_initial: Duration,
    /// Longest wait between retries. Default: 10 s.
    pub retry_max: Duration,
    /// How long one batch is retried before the sink gives up and reports an error (the
    /// batch and everything after it are then not written). Default: 10 minutes.
    pub give_up_after: Duration,
}

impl Neo4jSettings {
    /// Settings for `uri` with the defaults above.
    pub fn new(
        uri: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Neo4jSettings {
        Neo4jSettings {
            uri: uri.into(),
            username: username.into(),
            password: password.into(),
            writer: "tapio".into(),
            connect_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            give_up_after: Duration::from_secs(600),
        }
    }

    /// Settings from the configuration's `integrations.neo4j` section.
    pub fn from_config(config: &tapio_config::Neo4jConfig) -> Neo4jSettings {
        Neo4jSettings::new(&config.uri, &config.username, &config.password)
    }
}

/// What applying one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The batch was at or below the cursor and was skipped.
    pub skipped: bool,
    /// Correlations created.
    pub added: usize,
    /// Correlations deleted.
    pub removed: usize,
    /// Relationships created, deleted or re-counted (see [`Delta::relationship_writes`]).
    pub relationships: usize,
    /// Changes that disagreed with the graph (adding a correlation already there, removing one
    /// that is not) and were left out.
    pub inconsistent: usize,
    /// Time spent reading the cursor and which correlations are present.
    pub read_time: Duration,
    /// Time spent in the write statement.
    pub write_time: Duration,
    /// Time spent committing.
    pub commit_time: Duration,
}

/// Writes closed ticks into Neo4j, one transaction each, keeping a cursor per writer.
pub struct Neo4jWriter {
    graph: Graph,
    settings: Neo4jSettings,
}

impl Neo4jWriter {
    /// Connects and checks that Neo4j answers and accepts the credentials.
    ///
    /// # Errors
    /// [`Neo4jError::Unauthorized`], [`Neo4jError::Unreachable`] or [`Neo4jError::Timeout`]
    /// with the URI, or another [`Neo4jError`].
    pub async fn connect(settings: &Neo4jSettings) -> Result<Neo4jWriter, Neo4jError> {
        let graph = connect(settings).await?;
        Ok(Neo4jWriter {
            graph,
            settings: settings.clone(),
        })
    }

    /// The driver handle, e.g. to run queries against the same database.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Creates the constraints and indexes (idempotent).
    ///
    /// # Errors
    /// When a schema statement fails.
    pub async fn ensure_schema(&self) -> Result<(), Neo4jError> {
        for statement in cypher::SCHEMA {
            let mut txn = self.begin().await?;
            run(&mut txn, "schema", query(statement)).await?;
            commit(txn).await?;
        }
        Ok(())
    }

    /// The last tick this writer applied, if any.
    ///
    /// # Errors
    /// When Neo4j cannot be read.
    pub async fn cursor(&self) -> Result<Option<TimeNs>, Neo4jError> {
        let mut txn = self.begin().await?;
        let (tick, _) = self.read_state(&mut txn, Vec::new()).await?;
        commit(txn).await?;
        Ok(tick)
    }

    /// Applies one closed tick in one transaction: skipped when at or below the cursor.
    ///
    /// # Errors
    /// When the transaction fails; nothing of the batch is then written. See
    /// [`Neo4jError::is_retryable`].
    pub async fn apply(&self, batch: &ClosedBatch) -> Result<Applied, Neo4jError> {
        let time = i64::try_from(batch.time).map_err(|_| Neo4jError::BadValue {
            what: format!("tick time {} does not fit a Neo4j integer", batch.time),
        })?;
        let ids: Vec<String> = batch
            .changes
            .iter()
            .map(|(correlation, _)| correlation_id(correlation))
            .collect();
        let mut txn = self.begin().await?;
        let started = Instant::now();
        let (cursor, present) = self.read_state(&mut txn, ids.clone()).await?;
        let read_time = started.elapsed();
        if cursor.is_some_and(|cursor| cursor >= batch.time) {
            rollback(txn).await;
            return Ok(Applied {
                skipped: true,
                ..Applied::default()
            });
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut inconsistent = 0;
        for ((correlation, diff), id) in batch.changes.iter().zip(&ids) {
            let there = present.contains(id);
            match (*diff > 0, there) {
                (true, false) => added.push(correlation.clone()),
                (false, true) => removed.push(correlation.clone()),
                _ => inconsistent += 1,
            }
        }
        let delta = Delta::build(added, removed);
        let started = Instant::now();
        self.write_delta(&mut txn, &delta, time).await?;
        let write_time = started.elapsed();
        let started = Instant::now();
        commit(txn).await?;
        let commit_time = started.elapsed();
        Ok(Applied {
            read_time,
            write_time,
            commit_time,
            skipped: false,
            added: delta.added.len(),
            removed: delta.removed.len(),
            relationships: delta.relationship_writes(),
            inconsistent,
        })
    }

    async fn begin(&self) -> Result<Txn, Neo4jError> {
        let uri = &self.settings.uri;
        match tokio::time::timeout(self.settings.connect_timeout, self.graph.start_txn()).await {
            Ok(Ok(txn)) => Ok(txn),
            Ok(Err(error)) => Err(Neo4jError::classify(uri, &self.settings.username, error)),
            Err(_) => Err(Neo4jError::Timeout {
                uri: uri.clone(),
                after: self.settings.connect_timeout,
            }),
        }
    }

    async fn read_state(
        &self,
        txn: &mut Txn,
        ids: Vec<String>,
    ) -> Result<(Option<TimeNs>, BTreeSet<String>), Neo4jError> {
        // Split like the write (see `wire`): a large tick's ids would not fit one message.
        let lists = vec![wire::Rows {
            name: "ids",
            sentinel: "".into(),
            rows: ids.into_iter().map(BoltType::from).collect(),
        }];
        let fixed = [("writer", self.settings.writer.as_str().into())];
        let mut tick = None;
        let mut present = BTreeSet::new();
        for statement in wire::split(cypher::READ_STATE, &fixed, lists) {
            let mut rows = txn
                .execute(statement.query(cypher::READ_STATE))
                .await
                .map_err(|error| Neo4jError::query("read state", error))?;
            while let Some(row) = rows
                .next(txn.handle())
                .await
                .map_err(|error| Neo4jError::query("read state", error))?
            {
                tick = row
                    .get::<Option<i64>>("tick")
                    .map_err(|error| Neo4jError::BadValue {
                        what: format!("the stored cursor is not an integer: {error}"),
                    })?
                    .and_then(|tick| u64::try_from(tick).ok());
                present.extend(row.get::<Vec<String>>("present").map_err(|error| {
                    Neo4jError::BadValue {
                        what: format!("correlation ids are not strings: {error}"),
                    }
                })?);
            }
        }
        Ok((tick, present))
    }

    async fn write_delta(&self, txn: &mut Txn, delta: &Delta, time: i64) -> Result<(), Neo4jError> {
        // Every list starts with a sentinel row that APPLY skips (see its documentation).
        let entity_row = |id: &str, kind: &str| map([("id", id.into()), ("kind", kind.into())]);
        let entities: Vec<BoltType> = std::iter::once(entity_row("", ""))
            .chain(delta.entities.iter().map(|(id, kind)| entity_row(id, kind)))
            .collect();
        let facts = std::iter::once(Ok(map([
            ("id", "".into()),
            ("time", 0i64.into()),
            ("source", "".into()),
            ("delta", 0i64.into()),
        ])))
        .chain(delta.facts.iter().map(|fact| {
            let source = fact.item.id.split('/').next().unwrap_or_default();
            Ok(map([
                ("id", fact.item.id.as_str().into()),
                ("time", int(fact.item.time)?),
                ("source", source.into()),
                ("delta", fact.delta.into()),
            ]))
        }))
        .collect::<Result<Vec<BoltType>, Neo4jError>>()?;
        let sentinel = map([
            ("id", "".into()),
            ("kind", "".into()),
            ("root_cause", "".into()),
            ("explanation", "".into()),
            ("confidence", 0i64.into()),
            ("hops", Vec::<BoltType>::new().into()),
        ]);
        let correlations = std::iter::once(Ok(sentinel))
            .chain(
                delta
                    .added
                    .iter()
                    .map(|new| correlation_row(&new.id, &new.correlation)),
            )
            .collect::<Result<Vec<BoltType>, Neo4jError>>()?;
        let about_row = |fact: &str, entity: &str, what: &str, delta: i64| {
            map([
                ("fact", fact.into()),
                ("entity", entity.into()),
                ("what", what.into()),
                ("delta", delta.into()),
            ])
        };
        let about: Vec<BoltType> = std::iter::once(about_row("", "", "", 0))
            .chain(delta.about.iter().map(|about| {
                about_row(
                    &about.item.fact_id,
                    &about.item.entity,
                    &about.item.what,
                    about.delta,
                )
            }))
            .collect();
        let links = |kind: LinkType| {
            let sentinel = map([
                ("from", "".into()),
                ("to", "".into()),
                ("fact_id", "".into()),
                ("time", 0i64.into()),
                ("what", "".into()),
                ("delta", 0i64.into()),
            ]);
            std::iter::once(Ok(sentinel))
                .chain(
                    delta
                        .links
                        .iter()
                        .filter(|link| link.item.kind == kind)
                        .map(|link| {
                            Ok(map([
                                ("from", link.item.from.as_str().into()),
                                ("to", link.item.to.as_str().into()),
                                ("fact_id", link.item.fact_id.as_str().into()),
                                ("time", int(link.item.time)?),
                                ("what", link.item.what.as_str().into()),
                                ("delta", link.delta.into()),
                            ]))
                        }),
                )
                .collect::<Result<Vec<BoltType>, Neo4jError>>()
        };
        // Rows in the order APPLY's blocks take them; each statement of the split runs every
        // block on its share, so the whole tick applies in the same order as one statement.
        let lists = vec![
            split_first(entities, "entities"),
            split_first(facts, "facts"),
            split_first(correlations, "correlations"),
            split_first(about, "about"),
            split_first(links(LinkType::OwnedBy)?, "owned_by"),
            split_first(links(LinkType::Caused)?, "caused"),
            split_first(strings(&delta.removed), "removed"),
            split_first(strings(&delta.touched), "touched"),
        ];
        let fixed = [
            ("writer", self.settings.writer.as_str().into()),
            ("time", time.into()),
        ];
        for statement in wire::split(cypher::APPLY, &fixed, lists) {
            run(txn, "apply", statement.query(cypher::APPLY)).await?;
        }
        Ok(())
    }
}

/// Opens a connection pool and checks it with [`cypher::PING`], within the connect timeout.
pub(crate) async fn connect(settings: &Neo4jSettings) -> Result<Graph, Neo4jError> {
    let uri = settings.uri.clone();
    let attempt = async {
        let config = ConfigBuilder::default()
            .uri(settings.uri.as_str())
            .user(settings.username.as_str())
            .password(settings.password.as_str())
            .max_connections(4)
            .fetch_size(1000)
            .build()
            .map_err(|error| Neo4jError::classify(&uri, &settings.username, error))?;
        let graph = Graph::connect(config)
            .await
            .map_err(|error| Neo4jError::classify(&uri, &settings.username, error))?;
        let mut txn = graph
            .start_txn()
            .await
            .map_err(|error| Neo4jError::classify(&uri, &settings.username, error))?;
        txn.run(query(cypher::PING))
            .await
            .map_err(|error| Neo4jError::classify(&uri, &settings.username, error))?;
        txn.commit()
            .await
            .map_err(|error| Neo4jError::classify(&uri, &settings.username, error))?;
        Ok(graph)
    };
    match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Neo4jError::Timeout {
            uri,
            after: settings.connect_timeout,
        }),
    }
}

fn correlation_row(id: &str, correlation: &Correlation) -> Result<BoltType, Neo4jError> {
    let hops = correlation
        .chain
        .iter()
        .enumerate()
        .map(|(index, hop)| {
            Ok(map([
                ("index", int(index as u64)?),
                ("entity", hop.entity.to_string().into()),
                ("fact_id", hop.fact_id.to_string().into()),
                ("time", int(hop.time)?),
                ("what", hop.what.as_str().into()),
            ]))
        })
        .collect::<Result<Vec<BoltType>, Neo4jError>>()?;
    Ok(map([
        ("id", id.into()),
        ("kind", correlation.kind.as_str().into()),
        ("root_cause", correlation.root_cause.to_string().into()),
        ("explanation", correlation.explanation.as_str().into()),
        ("confidence", i64::from(correlation.confidence).into()),
        ("hops", hops.into()),
    ]))
}

/// The ids with an empty sentinel first, as `BoltType`s.
fn strings(ids: &[String]) -> Vec<BoltType> {
    std::iter::once(String::new())
        .chain(ids.iter().cloned())
        .map(BoltType::from)
        .collect()
}

/// A list whose first element is its sentinel, as the rows of parameter `name`.
fn split_first(mut list: Vec<BoltType>, name: &'static str) -> wire::Rows {
    let rows = list.split_off(1);
    wire::Rows {
        name,
        sentinel: list.pop().unwrap_or_else(|| BoltType::from("")),
        rows,
    }
}

fn map<const N: usize>(entries: [(&str, BoltType); N]) -> BoltType {
    let map: HashMap<&str, BoltType> = entries.into_iter().collect();
    map.into()
}

fn int(value: u64) -> Result<BoltType, Neo4jError> {
    i64::try_from(value)
        .map(BoltType::from)
        .map_err(|_| Neo4jError::BadValue {
            what: format!("{value} does not fit a Neo4j integer"),
        })
}

async fn run(txn: &mut Txn, statement: &'static str, query: Query) -> Result<(), Neo4jError> {
    txn.run(query)
        .await
        .map_err(|error| Neo4jError::query(statement, error))
}

async fn commit(txn: Txn) -> Result<(), Neo4jError> {
    txn.commit()
        .await
        .map_err(|error| Neo4jError::query("commit", error))
}

async fn rollback(txn: Txn) {
    if let Err(error) = txn.rollback().await {
        tracing::debug!(error = %error, "Rollback of a skipped batch failed; the server drops it.");
    }
}
