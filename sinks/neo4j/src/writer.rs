//! The transactional writer: one closed tick in, one Neo4j transaction out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, Query, Txn, query};
use sha2::{Digest, Sha256};
use tapio_model::{ClosedBatch, Correlation, TimeNs};
use tokio::time::Instant;

use crate::cypher;
use crate::error::Neo4jError;
use crate::model::{Delta, LinkType, correlation_id};
use crate::wire::{self, Cell};

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
    /// Time spent reading this writer's state (the cursor and which correlations are present)
    /// before the transaction: only for the first batch and after a failed one, zero otherwise.
    pub read_time: Duration,
    /// Statements the transaction ran (see `wire`: a large tick is split to fit the driver's
    /// write buffer).
    pub statements: usize,
    /// Time spent in the write statements.
    pub write_time: Duration,
    /// Time spent committing.
    pub commit_time: Duration,
}

/// Writes closed ticks into Neo4j, one transaction each, keeping a cursor per writer.
///
/// The writer reads its state (its cursor and which correlations are in the graph) once, before
/// its first batch, and then keeps it in memory, updated with every transaction it commits.
/// Any failed transaction (including a commit whose outcome is unknown because the connection
/// broke) drops that knowledge, and the next attempt reads the state again: if the commit did
/// go through, the cursor has moved and the batch is skipped. Should someone else (another
/// writer) add or remove correlations meanwhile, the transaction notices before any support
/// count is wrong ([`cypher::CHECK_REMOVED`], the uniqueness constraint on correlation ids)
/// and fails with [`Neo4jError::GraphChanged`], which is retried the same way.
pub struct Neo4jWriter {
    graph: Graph,
    settings: Neo4jSettings,
    state: Option<State>,
}

/// What the writer knows the graph holds.
struct State {
    /// The last tick committed.
    cursor: Option<TimeNs>,
    /// The correlations in the graph, by [`key`].
    present: HashSet<u128>,
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
            state: None,
        })
    }

    /// The driver handle, e.g. to run queries against the same database.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Creates the constraints and drops the indexes earlier versions created (idempotent; see
    /// [`cypher::SCHEMA`]).
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

    /// The last tick this writer applied, if any. Reads this writer's state from Neo4j unless
    /// it is already known.
    ///
    /// # Errors
    /// When Neo4j cannot be read.
    pub async fn cursor(&mut self) -> Result<Option<TimeNs>, Neo4jError> {
        Ok(self.state().await?.cursor)
    }

    /// Applies one closed tick in one transaction: skipped when at or below the cursor.
    ///
    /// # Errors
    /// When the transaction fails; nothing of the batch is then written. See
    /// [`Neo4jError::is_retryable`].
    pub async fn apply(&mut self, batch: &ClosedBatch) -> Result<Applied, Neo4jError> {
        let result = self.try_apply(batch).await;
        if result.is_err() {
            // The transaction failed, perhaps after its commit went through: read the state
            // again before the next attempt rather than guess.
            self.state = None;
        }
        result
    }

    async fn try_apply(&mut self, batch: &ClosedBatch) -> Result<Applied, Neo4jError> {
        let time = i64::try_from(batch.time).map_err(|_| Neo4jError::BadValue {
            what: format!("tick time {} does not fit a Neo4j integer", batch.time),
        })?;
        let started = Instant::now();
        let loaded = self.state.is_none();
        let state = self.state().await?;
        let read_time = if loaded {
            started.elapsed()
        } else {
            Duration::ZERO
        };
        if state.cursor.is_some_and(|cursor| cursor >= batch.time) {
            return Ok(Applied {
                skipped: true,
                read_time,
                ..Applied::default()
            });
        }
        // The batch's net change of each correlation (the dataflow's batches are consolidated
        // already, so this only guards against a correlation added and removed in one batch),
        // against what the graph holds.
        let mut net: BTreeMap<u128, (&Correlation, i64)> = BTreeMap::new();
        for (correlation, diff) in &batch.changes {
            net.entry(key(&correlation_id(correlation)))
                .or_insert((correlation, 0))
                .1 += diff;
        }
        let mut after: HashMap<u128, bool> = HashMap::new();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut inconsistent = 0;
        for (key, (correlation, diff)) in net {
            match (diff.signum(), state.present.contains(&key)) {
                (0, _) => continue,
                (1, false) => added.push(correlation.clone()),
                (-1, true) => removed.push(correlation.clone()),
                _ => {
                    inconsistent += 1;
                    continue;
                }
            }
            after.insert(key, diff > 0);
        }
        let delta = Delta::build(added, removed);
        let statements = statements(&delta, &self.settings.writer, time)?;
        let count = statements.len();
        let started = Instant::now();
        let mut txn = self.begin().await?;
        if !delta.removed.is_empty() {
            let ids = delta.removed.iter().map(|id| id.as_str().into()).collect();
            for statement in wire::split(cypher::CHECK_REMOVED, &[], [ids]) {
                if !all_present(&mut txn, statement.query(cypher::CHECK_REMOVED)).await? {
                    // Dropping the transaction rolls it back (the pool resets the connection).
                    return Err(Neo4jError::GraphChanged {
                        what: "a correlation to remove is not in the graph".into(),
                    });
                }
            }
        }
        for (index, statement) in statements.into_iter().enumerate() {
            // Only the last statement moves the cursor.
            let last = index + 1 == count;
            let query = statement.query(cypher::APPLY).param("last", last);
            txn.run(query).await.map_err(|error| match &error {
                neo4rs::Error::Neo4j(failure)
                    if failure.code() == "Neo.ClientError.Schema.ConstraintValidationFailed" =>
                {
                    Neo4jError::GraphChanged {
                        what: format!(
                            "a correlation to add is in the graph already: {}",
                            failure.message()
                        ),
                    }
                }
                _ => Neo4jError::query("apply", error),
            })?;
        }
        let write_time = started.elapsed();
        let started = Instant::now();
        commit(txn).await?;
        let commit_time = started.elapsed();
        // The transaction found the correlations it removed and created those it added, so the
        // graph now holds what the writer knew plus this batch's changes.
        if let Some(state) = self.state.as_mut() {
            state.cursor = Some(batch.time);
            for (key, present) in after {
                if present {
                    state.present.insert(key);
                } else {
                    state.present.remove(&key);
                }
            }
        }
        Ok(Applied {
            read_time,
            statements: count,
            write_time,
            commit_time,
            skipped: false,
            added: delta.added.len(),
            removed: delta.removed.len(),
            relationships: delta.relationship_writes(),
            inconsistent,
        })
    }

    /// This writer's state, read from Neo4j if it is not known.
    async fn state(&mut self) -> Result<&State, Neo4jError> {
        let state = match self.state.take() {
            Some(state) => state,
            None => {
                let state = self.read_state().await?;
                tracing::debug!(
                    cursor = ?state.cursor,
                    correlations = state.present.len(),
                    "Read the Neo4j writer state."
                );
                state
            }
        };
        Ok(self.state.insert(state))
    }

    async fn read_state(&self) -> Result<State, Neo4jError> {
        let mut txn = self.begin().await?;
        let mut cursor = None;
        let mut rows = txn
            .execute(query(cypher::READ_CURSOR).param("writer", self.settings.writer.as_str()))
            .await
            .map_err(|error| Neo4jError::query("read cursor", error))?;
        while let Some(row) = rows
            .next(txn.handle())
            .await
            .map_err(|error| Neo4jError::query("read cursor", error))?
        {
            cursor = row
                .get::<Option<i64>>("tick")
                .map_err(|error| Neo4jError::BadValue {
                    what: format!("the stored cursor is not an integer: {error}"),
                })?
                .and_then(|tick| u64::try_from(tick).ok());
        }
        let mut present = HashSet::new();
        let mut rows = txn
            .execute(query(cypher::READ_CORRELATIONS))
            .await
            .map_err(|error| Neo4jError::query("read correlations", error))?;
        while let Some(row) = rows
            .next(txn.handle())
            .await
            .map_err(|error| Neo4jError::query("read correlations", error))?
        {
            let id = row
                .get::<String>("id")
                .map_err(|error| Neo4jError::BadValue {
                    what: format!("a correlation id is not a string: {error}"),
                })?;
            present.insert(key(&id));
        }
        commit(txn).await?;
        Ok(State { cursor, present })
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
}

/// The tick's rows in the order [`cypher::APPLY`]'s blocks take them, split into statements
/// that each fit the driver's write buffer (see [`wire`]).
fn statements(delta: &Delta, writer: &str, time: i64) -> Result<Vec<wire::Statement>, Neo4jError> {
    let facts = delta
        .facts
        .iter()
        .map(|fact| {
            Ok(Cell::List(vec![
                fact.item.id.as_str().into(),
                int(fact.item.time)?,
                fact.delta.into(),
            ]))
        })
        .collect::<Result<Vec<Cell<'_>>, Neo4jError>>()?;
    let correlations = delta
        .added
        .iter()
        .map(|new| correlation_row(&new.id, &new.correlation))
        .collect::<Result<Vec<Cell<'_>>, Neo4jError>>()?;
    let links = |kind: LinkType| {
        delta
            .links
            .iter()
            .filter(|link| link.item.kind == kind)
            .map(|link| {
                Cell::List(vec![
                    link.item.from.as_str().into(),
                    link.item.to.as_str().into(),
                    link.item.fact_id.as_str().into(),
                    link.delta.into(),
                ])
            })
            .collect::<Vec<Cell<'_>>>()
    };
    let blocks = [
        facts,
        correlations,
        delta
            .about
            .iter()
            .map(|about| {
                Cell::List(vec![
                    about.item.fact_id.as_str().into(),
                    about.item.entity.as_str().into(),
                    about.item.what.as_str().into(),
                    about.delta.into(),
                ])
            })
            .collect(),
        links(LinkType::OwnedBy),
        links(LinkType::Caused),
        delta.removed.iter().map(|id| id.as_str().into()).collect(),
        delta.touched.iter().map(|id| id.as_str().into()).collect(),
    ];
    // `last` is set per statement when the statements are sent; it is here for its size.
    let fixed = [
        ("writer", writer.into()),
        ("time", time.into()),
        ("last", false.into()),
    ];
    Ok(wire::split(cypher::APPLY, &fixed, blocks))
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

fn correlation_row<'a>(id: &'a str, correlation: &'a Correlation) -> Result<Cell<'a>, Neo4jError> {
    let hops = correlation
        .chain
        .iter()
        .map(|hop| {
            Cell::List(vec![
                hop.entity.to_string().into(),
                hop.fact_id.to_string().into(),
            ])
        })
        .collect();
    Ok(Cell::List(vec![
        id.into(),
        correlation.kind.as_str().into(),
        correlation.root_cause.to_string().into(),
        correlation.explanation.as_str().into(),
        i64::from(correlation.confidence).into(),
        Cell::List(hops),
    ]))
}

/// The key of a correlation id ([`correlation_id`]: 32 hex digits) in the writer's state. Ids
/// that are not hex (not written by Tapio) are hashed, so they still never match Tapio's.
fn key(id: &str) -> u128 {
    u128::from_str_radix(id, 16).unwrap_or_else(|_| {
        let digest = Sha256::digest(id.as_bytes());
        digest[..16]
            .iter()
            .fold(0u128, |key, byte| (key << 8) | u128::from(*byte))
    })
}

fn int(value: u64) -> Result<Cell<'static>, Neo4jError> {
    i64::try_from(value)
        .map(Cell::Int)
        .map_err(|_| Neo4jError::BadValue {
            what: format!("{value} does not fit a Neo4j integer"),
        })
}

/// Runs one [`cypher::CHECK_REMOVED`] statement.
async fn all_present(txn: &mut Txn, query: Query) -> Result<bool, Neo4jError> {
    let mut rows = txn
        .execute(query)
        .await
        .map_err(|error| Neo4jError::query("check removed", error))?;
    let mut present = true;
    while let Some(row) = rows
        .next(txn.handle())
        .await
        .map_err(|error| Neo4jError::query("check removed", error))?
    {
        present &= row
            .get::<bool>("present")
            .map_err(|error| Neo4jError::BadValue {
                what: format!("the check of the correlations to remove: {error}"),
            })?;
    }
    Ok(present)
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
