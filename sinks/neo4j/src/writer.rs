//! The transactional writer: one closed tick in, one Neo4j transaction out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, Query, Txn, query};
use sha2::{Digest, Sha256};
use tapio_config::Secret;
use tapio_model::{ClosedBatch, Correlation, Relation, TimeNs};
use tokio::time::Instant;

use crate::cypher;
use crate::error::Neo4jError;
use crate::model::{
    Chain, ChainHop, Counts, Delta, Link, NewCorrelation, SCHEMA_VERSION, correlation_id,
};
use crate::wire::{self, Cell};

/// How to reach Neo4j and who is writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neo4jSettings {
    /// Bolt URI, e.g. `bolt://127.0.0.1:7687`.
    pub uri: String,
    /// User name.
    pub username: String,
    /// Password (never printed: its `Debug` is redacted).
    pub password: Secret,
    /// PEM certificate authority for the `bolt+s` and `neo4j+s` schemes when the system roots
    /// do not hold the server's; empty for the system roots.
    pub ca_file: String,
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
    /// The most queued ticks folded into one transaction when the sink is behind (1: one
    /// transaction per tick). Default: [`crate::MAX_COALESCED`].
    pub max_coalesced: usize,
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
            password: Secret::new(password),
            ca_file: String::new(),
            writer: "tapio".into(),
            connect_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            give_up_after: Duration::from_secs(600),
            max_coalesced: crate::MAX_COALESCED,
        }
    }

    /// Settings from the configuration's `integrations.neo4j` section.
    pub fn from_config(config: &tapio_config::Neo4jConfig) -> Neo4jSettings {
        let mut settings =
            Neo4jSettings::new(&config.uri, &config.username, config.password.expose());
        settings.ca_file.clone_from(&config.ca_file);
        settings
    }
}

/// What [`Neo4jWriter::ensure_schema`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// The graph has this version's shape already.
    Current,
    /// The graph held nothing of Tapio's; its schema version was set.
    Created,
    /// An earlier version of Tapio wrote the graph: what it wrote was deleted and the schema
    /// version set, so the graph is rebuilt from what this version writes.
    Rebuilt {
        /// The schema the graph had (`None`: the first version, which stored none).
        found: Option<i64>,
        /// Correlations it held.
        correlations: u64,
        /// Nodes deleted (correlations, facts, entities and cursors).
        deleted: u64,
    },
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
    /// Relationships created or deleted (see [`Delta::relationship_writes`]).
    pub relationships: usize,
    /// Changes that disagreed with the graph (adding a correlation already there, removing one
    /// that is not) and were left out.
    pub inconsistent: usize,
    /// Time spent reading this writer's state (the cursor, the graph's version and the
    /// correlations present) before the transaction: only for the first batch and after a
    /// failed one, zero otherwise.
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
/// The writer reads its state (its cursor, the graph's version, which correlations are in the
/// graph and from them the reference counts of the shared elements, see [`Counts`]) once,
/// before its first batch, and then keeps it in memory, updated with every transaction it
/// commits. Any failed transaction (including a commit whose outcome is unknown because the
/// connection broke) drops that knowledge, and the next attempt reads the state again: if the
/// commit did go through, the cursor has moved and the batch is skipped.
///
/// Several writers (with different cursors) may share a graph. Every transaction adds one to
/// the graph's version under the version node's write lock ([`cypher::APPLY`]); a writer whose
/// transaction finds the version moved since it last read or wrote the graph knows its counts
/// may be stale, rolls back and fails with [`Neo4jError::GraphChanged`], which is retried the
/// same way: it reads the state again, counts included. So writers take turns, and none ever
/// deletes an element that another's correlations still support.
pub struct Neo4jWriter {
    graph: Graph,
    settings: Neo4jSettings,
    state: Option<State>,
    /// The highest graph version this writer has read or committed: versions only grow, so a
    /// graph found at a lower one was emptied or restored from an older backup.
    high_water: i64,
}

/// What the writer knows the graph holds.
struct State {
    /// The last tick committed.
    cursor: Option<TimeNs>,
    /// The graph's version when the writer last read or wrote it (0 if it had none).
    version: i64,
    /// The correlations in the graph, by [`key`].
    present: HashSet<u128>,
    /// The reference counts of the shared elements.
    counts: Counts,
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
            high_water: 0,
        })
    }

    /// The driver handle, e.g. to run queries against the same database.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Creates the constraints and drops the indexes earlier versions created (idempotent; see
    /// [`cypher::SCHEMA`]), then makes sure the graph has this version's shape
    /// ([`SCHEMA_VERSION`]).
    ///
    /// A graph written by an earlier version of Tapio (one with correlations or cursors and no
    /// or an older `schema` on its graph node) is never mixed with this version's: everything
    /// its sink wrote (correlations, facts, entities and their relationships, and the cursors)
    /// is deleted, with a warning that says so and how to fill it again. An empty graph just
    /// gets the schema. Any writer that kept counts of the graph reads it again (the version
    /// moves), and this writer reads its state again before its next batch.
    ///
    /// # Errors
    /// When a schema statement fails, or [`Neo4jError::NewerSchema`] when a later version of
    /// Tapio wrote the graph.
    pub async fn ensure_schema(&mut self) -> Result<SchemaOutcome, Neo4jError> {
        for statement in cypher::SCHEMA {
            let mut txn = self.begin().await?;
            run(&mut txn, "schema", query(statement)).await?;
            commit(txn).await?;
        }
        let (found, correlations, cursors) = self.read_schema().await?;
        if found == Some(SCHEMA_VERSION) {
            return Ok(SchemaOutcome::Current);
        }
        if let Some(found) = found.filter(|found| *found > SCHEMA_VERSION) {
            return Err(Neo4jError::NewerSchema {
                uri: self.settings.uri.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let outcome = if correlations == 0 && cursors == 0 {
            SchemaOutcome::Created
        } else {
            let mut deleted = 0u64;
            loop {
                let mut txn = self.begin().await?;
                let count = read_integer(
                    &mut txn,
                    query(cypher::CLEAR_EARLIER),
                    "deleted",
                    "clear earlier graph",
                    "the count of deleted nodes",
                )
                .await?
                .unwrap_or(0);
                commit(txn).await?;
                if count <= 0 {
                    break;
                }
                deleted += count as u64;
            }
            SchemaOutcome::Rebuilt {
                found,
                correlations,
                deleted,
            }
        };
        let mut txn = self.begin().await?;
        run(
            &mut txn,
            "set schema",
            query(cypher::SET_SCHEMA).param("schema", SCHEMA_VERSION),
        )
        .await?;
        commit(txn).await?;
        self.state = None;
        match outcome {
            SchemaOutcome::Rebuilt {
                found,
                correlations,
                deleted,
            } => tracing::warn!(
                uri = %self.settings.uri,
                found_schema = found.unwrap_or(1),
                schema = SCHEMA_VERSION,
                correlations,
                deleted_nodes = deleted,
                "The Neo4j graph was written by an earlier version of Tapio and was cleared: its \
                 correlations, facts, entities and cursors were deleted, and the graph is rebuilt \
                 from what this run writes. To refill it with what happened before, replay the \
                 stream (`tapio replay nats://HOST:PORT/STREAM`) or a recording."
            ),
            _ => tracing::info!(
                uri = %self.settings.uri,
                schema = SCHEMA_VERSION,
                "The Neo4j graph was empty; its schema version is set."
            ),
        }
        Ok(outcome)
    }

    /// Replaces what the graph holds of Tapio's with `current` at tick `time`: deletes every
    /// correlation, fact, entity and cursor, sets the schema (which moves the graph's version),
    /// and writes `current` in one transaction with the cursor at `time`. For a graph found
    /// emptied or restored from an older backup ([`Neo4jError::GraphRewound`]) under a running
    /// sink, which knows the current correlations.
    ///
    /// # Errors
    /// When a statement fails; the next attempt starts over.
    pub async fn rewrite(
        &mut self,
        current: &[Correlation],
        time: TimeNs,
    ) -> Result<Applied, Neo4jError> {
        self.state = None;
        loop {
            let mut txn = self.begin().await?;
            let count = read_integer(
                &mut txn,
                query(cypher::CLEAR_EARLIER),
                "deleted",
                "clear a rewound graph",
                "the count of deleted nodes",
            )
            .await?
            .unwrap_or(0);
            commit(txn).await?;
            if count <= 0 {
                break;
            }
        }
        let mut txn = self.begin().await?;
        run(
            &mut txn,
            "set schema",
            query(cypher::SET_SCHEMA).param("schema", SCHEMA_VERSION),
        )
        .await?;
        commit(txn).await?;
        // The graph's version starts again from what the restored graph had.
        self.high_water = 0;
        let batch = ClosedBatch {
            time,
            changes: current.iter().map(|c| (c.clone(), 1)).collect(),
        };
        self.apply(&batch).await
    }

    /// [`cypher::READ_SCHEMA`]: the graph's schema, correlations and cursors.
    async fn read_schema(&self) -> Result<(Option<i64>, u64, u64), Neo4jError> {
        let mut txn = self.begin().await?;
        let mut rows = txn
            .execute(query(cypher::READ_SCHEMA))
            .await
            .map_err(|error| Neo4jError::query("read schema", error))?;
        let mut found = (None, 0, 0);
        while let Some(row) = rows
            .next(txn.handle())
            .await
            .map_err(|error| Neo4jError::query("read schema", error))?
        {
            let count = |column: &str| {
                row.get::<i64>(column)
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(|error| Neo4jError::BadValue {
                        what: format!("the count of {column} is not an integer: {error}"),
                    })
            };
            let schema =
                row.get::<Option<i64>>("schema")
                    .map_err(|error| Neo4jError::BadValue {
                        what: format!("the graph's schema is not an integer: {error}"),
                    })?;
            found = (schema, count("correlations")?, count("cursors")?);
        }
        commit(txn).await?;
        Ok(found)
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
        self.apply_coalesced(batch, &HashMap::new()).await
    }

    /// Applies several queued ticks folded into `batch` (see [`crate::coalesce`]) in one
    /// transaction: as [`Neo4jWriter::apply`], with each added correlation's `since` the tick
    /// `since` gives for it (the tick it was added in) rather than the batch's.
    ///
    /// # Errors
    /// As [`Neo4jWriter::apply`].
    pub async fn apply_coalesced(
        &mut self,
        batch: &ClosedBatch,
        since: &HashMap<Correlation, TimeNs>,
    ) -> Result<Applied, Neo4jError> {
        let result = self.try_apply(batch, since).await;
        if result.is_err() {
            // The transaction failed, perhaps after its commit went through: read the state
            // again before the next attempt rather than guess.
            self.state = None;
        }
        result
    }

    async fn try_apply(
        &mut self,
        batch: &ClosedBatch,
        since: &HashMap<Correlation, TimeNs>,
    ) -> Result<Applied, Neo4jError> {
        let time = i64::try_from(batch.time).map_err(|_| Neo4jError::BadValue {
            what: format!("tick time {} does not fit a Neo4j integer", batch.time),
        })?;
        let started = Instant::now();
        let loaded = self.state.is_none();
        let high_water = self.high_water;
        let state = self.state().await?;
        if state.version < high_water {
            return Err(Neo4jError::GraphRewound {
                found: state.version,
                expected: high_water,
            });
        }
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
        let mut net: BTreeMap<u128, (String, &Correlation, i64)> = BTreeMap::new();
        for (correlation, diff) in &batch.changes {
            let id = correlation_id(correlation);
            net.entry(key(&id)).or_insert((id, correlation, 0)).2 += diff;
        }
        let Some(state) = self.state.as_mut() else {
            return Err(Neo4jError::GraphChanged {
                what: "the writer's state was not read".into(),
            });
        };
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut inconsistent = 0;
        for (key, (id, correlation, diff)) in net {
            let identified = || NewCorrelation {
                id,
                correlation: correlation.clone(),
            };
            match (diff.signum(), state.present.contains(&key)) {
                (0, _) => {}
                (1, false) => {
                    added.push(identified());
                    state.present.insert(key);
                }
                (-1, true) => {
                    removed.push(identified());
                    state.present.remove(&key);
                }
                _ => inconsistent += 1,
            }
        }
        // The state now describes the graph after this batch; should the transaction fail,
        // `apply` drops it and the next attempt reads it again.
        let delta = state.counts.change_identified(added, removed);
        let version = state.version;
        let since: HashMap<&str, i64> = delta
            .added
            .iter()
            .filter_map(|new| {
                let tick = i64::try_from(*since.get(&new.correlation)?).ok()?;
                Some((new.id.as_str(), tick))
            })
            .collect();
        let statements = statements(&delta, &self.settings.writer, time, &since)?;
        let count = statements.len();
        let started = Instant::now();
        let mut txn = self.begin().await?;
        for (index, statement) in statements.into_iter().enumerate() {
            // Only the first statement moves the version, and only the last the cursor.
            let query = statement
                .query(&cypher::APPLY)
                .param("bump", i64::from(index == 0))
                .param("last", index + 1 == count);
            let found = match apply_statement(&mut txn, query).await {
                // Creating what the graph already holds: another writer (or a restore) wrote
                // it since this writer read the graph. Read it again and retry.
                Err(Neo4jError::Query { source, .. })
                    if source.to_string().contains("ConstraintValidationFailed") =>
                {
                    return Err(Neo4jError::GraphChanged {
                        what: format!(
                            "an element this writer creates already exists (another writer \
                             wrote it): {source}"
                        ),
                    });
                }
                found => found?,
            };
            if index == 0 && found != Some(version + 1) {
                // Dropping the transaction rolls it back (the pool resets the connection).
                return Err(Neo4jError::GraphChanged {
                    what: format!(
                        "the graph's version is {} where this writer left it at {version}: \
                         another writer changed it",
                        found.map_or_else(|| "missing".to_string(), |v| (v - 1).to_string())
                    ),
                });
            }
        }
        let write_time = started.elapsed();
        let started = Instant::now();
        commit(txn).await?;
        let commit_time = started.elapsed();
        if let Some(state) = self.state.as_mut() {
            state.cursor = Some(batch.time);
            state.version = version + 1;
        }
        self.high_water = self.high_water.max(version + 1);
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
                if state.version >= self.high_water {
                    self.high_water = state.version;
                }
                let (entities, facts, about, links) = state.counts.len();
                tracing::debug!(
                    cursor = ?state.cursor,
                    version = state.version,
                    correlations = state.present.len(),
                    entities,
                    facts,
                    about,
                    links,
                    "Read the Neo4j writer state."
                );
                state
            }
        };
        Ok(self.state.insert(state))
    }

    /// Reads the state in one transaction, between two reads of the graph's version; equal
    /// versions mean that no transaction committed meanwhile, so the correlations read are the
    /// graph at that version. Tried a few times, then reported as [`Neo4jError::GraphChanged`]
    /// (retried by the sink like any failed transaction).
    async fn read_state(&self) -> Result<State, Neo4jError> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let mut txn = self.begin().await?;
            let before = read_version(&mut txn).await?;
            let cursor = read_integer(
                &mut txn,
                query(cypher::READ_CURSOR).param("writer", self.settings.writer.as_str()),
                "tick",
                "read cursor",
                "the stored cursor",
            )
            .await?
            .and_then(|tick| u64::try_from(tick).ok());
            let mut present = HashSet::new();
            let mut counts = Counts::default();
            let mut rows = txn
                .execute(query(cypher::READ_CORRELATIONS))
                .await
                .map_err(|error| Neo4jError::query("read correlations", error))?;
            while let Some(row) = rows
                .next(txn.handle())
                .await
                .map_err(|error| Neo4jError::query("read correlations", error))?
            {
                let (id, chain) = chain_of(&row)?;
                present.insert(key(&id));
                counts.add(&chain);
            }
            let after = read_version(&mut txn).await?;
            commit(txn).await?;
            if before == after {
                return Ok(State {
                    cursor,
                    version: before.unwrap_or(0),
                    present,
                    counts,
                });
            }
        }
        Err(Neo4jError::GraphChanged {
            what: format!(
                "other writers changed the graph during each of {ATTEMPTS} reads of its state"
            ),
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
}

/// The tick's rows in the order [`cypher::APPLY`]'s blocks take them, split into statements
/// that each fit the driver's write buffer (see [`wire`]).
/// `since` holds the tick each added correlation became current in when it is not `time` (a
/// coalesced batch).
fn statements(
    delta: &Delta,
    writer: &str,
    time: i64,
    since: &HashMap<&str, i64>,
) -> Result<Vec<wire::Statement>, Neo4jError> {
    // A fact that goes takes its ABOUT relationships with it.
    let facts_gone: HashSet<&str> = delta.facts_gone.iter().map(String::as_str).collect();
    let about_gone = delta
        .about_gone
        .iter()
        .filter(|(fact, _)| !facts_gone.contains(fact.as_str()))
        .map(|(fact, entity)| Cell::List(vec![fact.as_str().into(), entity.as_str().into()]))
        .collect();
    // Each new ABOUT and step is created by the first new correlation that has it; every one
    // has one, because only added correlations raise a count from zero.
    let mut about: HashMap<(String, String), &str> = delta
        .about
        .iter()
        .map(|a| ((a.fact_id.clone(), a.entity.clone()), a.observed.as_str()))
        .collect();
    let mut steps: HashSet<&Link> = delta.links.iter().collect();
    let correlations = delta
        .added
        .iter()
        .map(|new| {
            let since = since.get(new.id.as_str()).copied().unwrap_or(time);
            correlation_row(new, since, &mut about, &mut steps)
        })
        .collect::<Result<Vec<Cell<'_>>, Neo4jError>>()?;
    if !about.is_empty() || !steps.is_empty() {
        return Err(Neo4jError::BadValue {
            what: format!(
                "{} ABOUT relationships and {} steps to create belong to no new correlation",
                about.len(),
                steps.len()
            ),
        });
    }
    let mut blocks = Vec::with_capacity(cypher::APPLY_BLOCKS);
    blocks.push(ids(&delta.removed));
    for relation in Relation::LINKS {
        blocks.push(links(&delta.links_gone, relation));
    }
    blocks.push(about_gone);
    blocks.push(ids(&delta.facts_gone));
    blocks.push(ids(&delta.entities_gone));
    blocks.push(correlations);
    let blocks: [Vec<Cell<'_>>; cypher::APPLY_BLOCKS] =
        blocks
            .try_into()
            .map_err(|blocks: Vec<_>| Neo4jError::BadValue {
                what: format!(
                    "{} blocks of rows for a statement of {}",
                    blocks.len(),
                    cypher::APPLY_BLOCKS
                ),
            })?;
    // `bump` and `last` are set per statement when the statements are sent; they are here for
    // their size.
    let fixed = [
        ("writer", writer.into()),
        ("time", time.into()),
        ("bump", 0i64.into()),
        ("last", false.into()),
    ];
    Ok(wire::split(&cypher::APPLY, &fixed, blocks))
}

/// Rows of ids.
fn ids(ids: &[String]) -> Vec<Cell<'_>> {
    ids.iter().map(|id| id.as_str().into()).collect()
}

/// Rows of the entity-to-entity steps of one type: `[from, to, fact_id]`.
fn links(links: &[Link], kind: Relation) -> Vec<Cell<'_>> {
    links
        .iter()
        .filter(|link| link.kind == kind)
        .map(|link| {
            Cell::List(vec![
                link.from.as_str().into(),
                link.to.as_str().into(),
                link.fact_id.as_str().into(),
            ])
        })
        .collect()
}

/// Opens a connection pool and checks it with [`cypher::PING`], within the connect timeout.
pub(crate) async fn connect(settings: &Neo4jSettings) -> Result<Graph, Neo4jError> {
    let uri = settings.uri.clone();
    let attempt = async {
        let mut config = ConfigBuilder::default()
            .uri(settings.uri.as_str())
            .user(settings.username.as_str())
            .password(settings.password.expose())
            .max_connections(4)
            .fetch_size(1000);
        if !settings.ca_file.is_empty() {
            config = config.with_client_certificate(&settings.ca_file);
        }
        let config = config
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

/// A new correlation's row (see [`cypher::APPLY`], the last block). Its hops and steps take,
/// and remove, from `about` and `steps` the new ABOUT relationships and steps they are the
/// first to have.
fn correlation_row<'a>(
    new: &'a NewCorrelation,
    since: i64,
    about: &mut HashMap<(String, String), &'a str>,
    steps: &mut HashSet<&Link>,
) -> Result<Cell<'a>, Neo4jError> {
    let correlation = &new.correlation;
    let chain = Chain::of(correlation);
    let mut new_steps = Vec::new();
    for (index, link) in chain.steps() {
        if steps.remove(&link) {
            let kind = Relation::LINKS
                .iter()
                .position(|relation| *relation == link.kind)
                .ok_or_else(|| Neo4jError::BadValue {
                    what: format!("a step of relation {} joins no hops", link.kind.as_str()),
                })?;
            new_steps.push(Cell::List(vec![
                int(index as u64)?,
                int(index as u64 + 1)?,
                Cell::from(link.fact_id),
                int(kind as u64)?,
            ]));
        }
    }
    let mut hops = Vec::with_capacity(correlation.chain.len());
    for (hop, counted) in correlation.chain.iter().zip(chain.hops) {
        let ChainHop {
            entity,
            fact_id,
            relation,
        } = counted;
        let key = (fact_id, entity);
        let observed = about.remove(&key);
        let (fact_id, entity) = key;
        let mut row = vec![
            Cell::from(entity),
            Cell::from(fact_id),
            Cell::from(relation.as_str()),
        ];
        if let Some(observed) = observed {
            row.push(int(hop.time)?);
            row.push(observed.into());
        }
        hops.push(Cell::List(row));
    }
    let data = serde_json::to_string(correlation).map_err(|error| Neo4jError::BadValue {
        what: format!("correlation {} as JSON: {error}", new.id),
    })?;
    Ok(Cell::List(vec![
        new.id.as_str().into(),
        correlation.kind.as_str().into(),
        correlation.family.as_str().into(),
        correlation.root_cause.to_string().into(),
        i64::from(correlation.confidence.percent).into(),
        data.into(),
        Cell::List(hops),
        Cell::List(new_steps),
        since.into(),
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

/// Runs one [`cypher::APPLY`] statement and returns the graph's version it saw.
async fn apply_statement(txn: &mut Txn, query: Query) -> Result<Option<i64>, Neo4jError> {
    let failed = |error: neo4rs::Error| match &error {
        neo4rs::Error::Neo4j(failure)
            if failure.code() == "Neo.ClientError.Schema.ConstraintValidationFailed" =>
        {
            Neo4jError::GraphChanged {
                what: format!(
                    "a node to create is in the graph already: {}",
                    failure.message()
                ),
            }
        }
        _ => Neo4jError::query("apply", error),
    };
    let mut rows = txn.execute(query).await.map_err(failed)?;
    let mut version = None;
    while let Some(row) = rows.next(txn.handle()).await.map_err(failed)? {
        version = row
            .get::<Option<i64>>("version")
            .map_err(|error| Neo4jError::BadValue {
                what: format!("the graph's version is not an integer: {error}"),
            })?;
    }
    Ok(version)
}

/// Runs [`cypher::READ_VERSION`].
async fn read_version(txn: &mut Txn) -> Result<Option<i64>, Neo4jError> {
    read_integer(
        txn,
        query(cypher::READ_VERSION),
        "version",
        "read version",
        "the graph's version",
    )
    .await
}

/// The integer (or null) in `column` of the last row `statement` returns (`None` without
/// rows); `doing` and `what` name the read and the value in errors.
async fn read_integer(
    txn: &mut Txn,
    statement: neo4rs::Query,
    column: &str,
    doing: &'static str,
    what: &str,
) -> Result<Option<i64>, Neo4jError> {
    let mut rows = txn
        .execute(statement)
        .await
        .map_err(|error| Neo4jError::query(doing, error))?;
    let mut value = None;
    while let Some(row) = rows
        .next(txn.handle())
        .await
        .map_err(|error| Neo4jError::query(doing, error))?
    {
        value = row
            .get::<Option<i64>>(column)
            .map_err(|error| Neo4jError::BadValue {
                what: format!("{what} is not an integer: {error}"),
            })?;
    }
    Ok(value)
}

/// A [`cypher::READ_CORRELATIONS`] row: the correlation's id and its [`Chain`].
fn chain_of(row: &neo4rs::Row) -> Result<(String, Chain), Neo4jError> {
    let bad = |what: &str, error: &dyn std::fmt::Display| Neo4jError::BadValue {
        what: format!("a correlation in the graph has {what}: {error}"),
    };
    let id = row
        .get::<String>("id")
        .map_err(|error| bad("an id that is not a string", &error))?;
    let root = row
        .get::<Vec<String>>("root")
        .map_err(|error| bad("a bad ROOT_CAUSE", &error))?;
    let hops = row
        .get::<Vec<Vec<Option<String>>>>("hops")
        .map_err(|error| bad("a bad HOP", &error))?;
    let hops = hops
        .into_iter()
        .map(|hop| match <[Option<String>; 3]>::try_from(hop) {
            Ok([Some(entity), Some(fact_id), Some(relation)]) => {
                // Counting a hop whose relation this writer does not know would get its steps
                // wrong, and deleting a step that correlation still makes would follow: better
                // to stop and say so.
                let relation =
                    serde_json::from_value::<Relation>(serde_json::Value::String(relation.clone()))
                        .map_err(|_| {
                            bad(
                                "a HOP with a relation this writer does not know",
                                &format!("{relation} ({id})"),
                            )
                        })?;
                Ok(ChainHop {
                    entity,
                    fact_id,
                    relation,
                })
            }
            Ok(hop) => Err(bad(
                "a HOP without entity, fact id or relation",
                &format!("{hop:?} ({id})"),
            )),
            Err(hop) => Err(bad("a bad HOP", &format!("{hop:?} ({id})"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chain = Chain {
        // A correlation has one root cause; a graph edited by hand may have none.
        root_cause: root.into_iter().next().unwrap_or_default(),
        hops,
    };
    Ok((id, chain))
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
