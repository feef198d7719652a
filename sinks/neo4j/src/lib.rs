//! Writes the set of current correlations to Neo4j as a graph, one transaction per closed tick
//! (layer L2; depends on `tapio-sinks`, `tapio-model` and `tapio-config` only).
//!
//! Each [`ClosedBatch`] becomes one transaction of `UNWIND` statements ([`cypher`]): the
//! correlations that became current are created with their chain, those that stopped being
//! current are deleted, and the entities, facts and relationships they share are reference
//! counted, so an element goes only when nothing supports it any more ([`model`]). The same
//! transaction moves this writer's cursor (`(:TapioCursor {writer, tick})`) to the batch's tick;
//! a batch at or below the cursor is skipped, so a restart that replays batches writes no
//! duplicates and leaves no gaps. The writer reads its cursor, the graph's version and the
//! correlations in the graph once, at start and again after any failed transaction, and
//! otherwise keeps them in memory, with the reference counts rebuilt from the correlations: a
//! tick reads nothing, and writes a shared element only when it appears or goes. Writers sharing
//! a graph take turns on its version node and re-read after another's commit ([`Neo4jWriter`]).
//!
//! The graph's shape is versioned ([`model::SCHEMA_VERSION`] on the graph node): at start, a
//! graph an earlier version of Tapio wrote is cleared, with a warning that says how to refill it,
//! rather than mixed with this version's ([`Neo4jWriter::ensure_schema`]).
//!
//! When Neo4j is slow or down, the sink retries the batch with exponential backoff and logs its
//! status; batches wait in the bounded channel in front of it, which slows the dataflow down.
//! When ticks are queued behind the one it takes, the sink folds up to [`MAX_COALESCED`] of them
//! into one transaction ([`coalesce`]: the net change of the set of current correlations over
//! those ticks, at the last one), so a sink that fell behind catches up in fewer, larger
//! transactions; it logs that it is behind and counts the coalesced ticks in [`Progress`].
//! Nothing is dropped silently: if a batch cannot be written within
//! [`Neo4jSettings::give_up_after`], or fails for a reason retrying cannot fix, the sink stops
//! with an error naming the tick.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tapio_sinks::Sink;
//! use tapio_sinks_neo4j::{Neo4jSettings, Neo4jSink};
//!
//! let mut sink = Box::new(Neo4jSink::new(Neo4jSettings::new(
//!     "bolt://127.0.0.1:7687",
//!     "neo4j",
//!     "secret",
//! )));
//! sink.healthcheck().await?; // one clear error for a wrong password or an unreachable URI
//! let (batches, receiver) = tokio::sync::mpsc::channel(64);
//! let task = tokio::spawn(sink.run(receiver));
//! drop(batches); // the dataflow sends closed ticks here; closing the channel flushes and stops
//! task.await??;
//! # Ok(())
//! # }
//! ```

pub mod cypher;
mod error;
#[cfg(feature = "test-harness")]
pub mod harness;
pub mod model;
pub mod wire;
mod writer;

use std::collections::HashMap;

use tapio_model::{ClosedBatch, TimeNs, format_time};
use tapio_sinks::{BoxFuture, Sink, SinkError, SinkReport};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use error::Neo4jError;
pub use writer::{Applied, Neo4jSettings, Neo4jWriter, SchemaOutcome};

/// Where the sink is: the last tick committed and what it wrote so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The cursor: the last tick committed (or found committed at start), if any.
    pub cursor: Option<TimeNs>,
    /// Batches committed by this run.
    pub batches: u64,
    /// Batches skipped because they were at or below the cursor.
    pub skipped: u64,
    /// Relationships written by this run (see [`model::Delta::relationship_writes`]).
    pub relationships: u64,
    /// Transactions committed by this run: fewer than `batches` when queued ticks were
    /// coalesced.
    pub transactions: u64,
    /// Ticks folded into the transaction of an earlier queued tick (`batches` minus the
    /// batches that opened a transaction).
    pub coalesced: u64,
}

/// The most closed ticks the sink folds into one transaction when it has fallen behind.
pub const MAX_COALESCED: usize = 64;

/// Folds `next` (a later tick) into `merged`: the changes of both, with the diffs of the same
/// correlation summed and those that cancel left out, at the later tick. Writing the result is
/// writing both ticks in turn: each transaction writes the net change of the set of current
/// correlations.
pub fn coalesce(merged: &mut ClosedBatch, next: ClosedBatch) {
    let mut changes: std::collections::BTreeMap<tapio_model::Correlation, i64> =
        std::mem::take(&mut merged.changes).into_iter().collect();
    for (correlation, diff) in next.changes {
        *changes.entry(correlation).or_insert(0) += diff;
    }
    merged.changes = changes.into_iter().filter(|(_, diff)| *diff != 0).collect();
    merged.time = merged.time.max(next.time);
}

/// The Neo4j sink.
pub struct Neo4jSink {
    settings: Neo4jSettings,
    writer: Option<Neo4jWriter>,
    progress: watch::Sender<Progress>,
}

impl Neo4jSink {
    /// A sink for `settings`. Nothing is opened until [`Sink::healthcheck`].
    pub fn new(settings: Neo4jSettings) -> Neo4jSink {
        Neo4jSink {
            settings,
            writer: None,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Follows the sink's progress, e.g. to measure the delay from a tick closing to its commit.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn failed(&self, error: Neo4jError) -> SinkError {
        SinkError::Write {
            sink: "neo4j",
            target: self.settings.uri.clone(),
            source: Box::new(error),
        }
    }
}

impl Sink for Neo4jSink {
    fn name(&self) -> &'static str {
        "neo4j"
    }

    fn healthcheck(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut writer = Neo4jWriter::connect(&self.settings)
                .await
                .map_err(|error| self.failed(error))?;
            writer
                .ensure_schema()
                .await
                .map_err(|error| self.failed(error))?;
            let cursor = writer.cursor().await.map_err(|error| self.failed(error))?;
            tracing::info!(
                uri = %self.settings.uri,
                writer = %self.settings.writer,
                cursor = %cursor.map_or_else(|| "none".to_string(), format_time),
                "Neo4j is reachable; schema ready."
            );
            self.progress
                .send_modify(|progress| progress.cursor = cursor);
            self.writer = Some(writer);
            Ok(())
        })
    }

    fn run(
        self: Box<Self>,
        batches: mpsc::Receiver<ClosedBatch>,
    ) -> BoxFuture<'static, Result<SinkReport, SinkError>> {
        Box::pin(async move {
            let mut this = *self;
            let Some(mut writer) = this.writer.take() else {
                return Err(SinkError::Write {
                    sink: "neo4j",
                    target: this.settings.uri.clone(),
                    source: "the health check did not run or failed".into(),
                });
            };
            write_all(&mut writer, &this.settings, &this.progress, batches)
                .await
                .map_err(|error| this.failed(error))
        })
    }
}

async fn write_all(
    writer: &mut Neo4jWriter,
    settings: &Neo4jSettings,
    progress: &watch::Sender<Progress>,
    mut batches: mpsc::Receiver<ClosedBatch>,
) -> Result<SinkReport, Neo4jError> {
    let mut report = SinkReport::default();
    let mut skipped = 0u64;
    let mut coalescing_transactions = 0u64;
    // The current correlations after every tick given to the sink (written or skipped), and
    // the last such tick: what a graph found emptied or restored from an older backup is
    // re-written with.
    let mut current: std::collections::BTreeSet<tapio_model::Correlation> =
        std::collections::BTreeSet::new();
    let mut last_tick: Option<TimeNs> = None;
    while let Some(mut batch) = batches.recv().await {
        // Behind: fold the ticks already queued (up to `max_coalesced`) into this one
        // transaction. Only ticks after the cursor fold: one at or below it was written before
        // a restart and is skipped on its own.
        let mut ticks = 1u64;
        let mut changes_total = batch.changes.len() as u64;
        // The tick each correlation added in a folded batch became current in.
        let mut since: HashMap<tapio_model::Correlation, TimeNs> = HashMap::new();
        let after_cursor = progress
            .borrow()
            .cursor
            .is_none_or(|cursor| batch.time > cursor);
        if after_cursor {
            while ticks < settings.max_coalesced as u64 {
                let Ok(next) = batches.try_recv() else { break };
                if ticks == 1 {
                    for (correlation, diff) in &batch.changes {
                        if *diff > 0 {
                            since.insert(correlation.clone(), batch.time);
                        }
                    }
                }
                for (correlation, diff) in &next.changes {
                    if *diff > 0 {
                        since.insert(correlation.clone(), next.time);
                    }
                }
                changes_total += next.changes.len() as u64;
                coalesce(&mut batch, next);
                ticks += 1;
            }
        }
        if ticks > 1 {
            coalescing_transactions += 1;
            if coalescing_transactions == 1 || coalescing_transactions.is_multiple_of(100) {
                tracing::warn!(
                    tick = %format_time(batch.time),
                    ticks,
                    changes = changes_total,
                    net_changes = batch.changes.len(),
                    queued = batches.len(),
                    coalescing_transactions,
                    "Neo4j is behind: queued ticks coalesced into one transaction."
                );
            }
        }
        let known = Known {
            current: &current,
            last_tick,
        };
        let applied = apply_with_retry(writer, settings, &batch, &since, &batches, known).await?;
        for (correlation, diff) in &batch.changes {
            if *diff > 0 {
                current.insert(correlation.clone());
            } else {
                current.remove(correlation);
            }
        }
        last_tick = Some(batch.time);
        if applied.skipped {
            skipped += 1;
            if skipped == 1 {
                tracing::info!(
                    tick = %format_time(batch.time),
                    "Batch at or below the Neo4j cursor skipped (written before a restart)."
                );
            }
        } else {
            report.batches += ticks;
            report.changes += changes_total;
        }
        if applied.inconsistent > 0 {
            tracing::warn!(
                tick = %format_time(batch.time),
                changes = applied.inconsistent,
                "Changes disagreed with the graph (already added or already removed) and were left out."
            );
        }
        tracing::debug!(
            tick = %format_time(batch.time),
            added = applied.added,
            removed = applied.removed,
            relationships = applied.relationships,
            statements = applied.statements,
            read_ms = applied.read_time.as_secs_f64() * 1e3,
            write_ms = applied.write_time.as_secs_f64() * 1e3,
            commit_ms = applied.commit_time.as_secs_f64() * 1e3,
            "Batch committed."
        );
        progress.send_modify(|progress| {
            progress.cursor = Some(progress.cursor.map_or(batch.time, |c| c.max(batch.time)));
            if applied.skipped {
                progress.skipped += ticks;
            } else {
                progress.batches += ticks;
                progress.transactions += 1;
                progress.coalesced += ticks - 1;
                progress.relationships += applied.relationships as u64;
            }
        });
    }
    if skipped > 0 {
        tracing::info!(
            skipped,
            "Batches at or below the Neo4j cursor were skipped."
        );
    }
    Ok(report)
}

/// What the sink knows before a batch: the current correlations and the last tick given to it.
struct Known<'a> {
    current: &'a std::collections::BTreeSet<tapio_model::Correlation>,
    last_tick: Option<TimeNs>,
}

/// Applies one batch, retrying retryable failures with exponential backoff until
/// `give_up_after`. Logs the first failure, then every tenth, and the recovery. A graph found
/// emptied or restored from an older backup is first re-written with the current correlations
/// at the last tick, then the batch is applied on top.
async fn apply_with_retry(
    writer: &mut Neo4jWriter,
    settings: &Neo4jSettings,
    batch: &ClosedBatch,
    since: &HashMap<tapio_model::Correlation, TimeNs>,
    queue: &mpsc::Receiver<ClosedBatch>,
    known: Known<'_>,
) -> Result<Applied, Neo4jError> {
    let started = Instant::now();
    let mut wait = settings.retry_initial;
    let mut failures = 0u32;
    let mut rewind = false;
    loop {
        let attempt = if rewind {
            let tick = known
                .last_tick
                .unwrap_or_else(|| batch.time.saturating_sub(1));
            let current: Vec<_> = known.current.iter().cloned().collect();
            match writer.rewrite(&current, tick).await {
                Ok(_) => {
                    rewind = false;
                    tracing::warn!(
                        correlations = current.len(),
                        tick = %format_time(tick),
                        "Re-wrote the current correlations into the Neo4j graph, which had been emptied or restored from an older backup."
                    );
                    writer.apply_coalesced(batch, since).await
                }
                Err(error) => Err(error),
            }
        } else {
            writer.apply_coalesced(batch, since).await
        };
        match attempt {
            Err(Neo4jError::GraphRewound { found, expected }) => {
                if started.elapsed() >= settings.give_up_after {
                    return Err(Neo4jError::GraphRewound { found, expected });
                }
                tracing::warn!(
                    found,
                    expected,
                    tick = %format_time(batch.time),
                    "The Neo4j graph went back in time under the sink (emptied, or restored from an older backup); re-writing the current correlations."
                );
                rewind = true;
            }
            Ok(applied) => {
                if failures > 0 {
                    tracing::info!(
                        tick = %format_time(batch.time),
                        failures,
                        down_for_ms = started.elapsed().as_millis() as u64,
                        "Neo4j is writable again."
                    );
                    if applied.skipped {
                        tracing::info!(
                            tick = %format_time(batch.time),
                            "The failed attempt had committed the batch; it is not written again."
                        );
                    }
                }
                return Ok(applied);
            }
            Err(error) if error.is_retryable() && started.elapsed() < settings.give_up_after => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        error = %error_chain(&error),
                        tick = %format_time(batch.time),
                        failures,
                        queued = queue.len(),
                        retry_in_ms = wait.as_millis() as u64,
                        "Neo4j write failed; retrying the batch."
                    );
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(settings.retry_max);
            }
            Err(error) => {
                tracing::error!(
                    error = %error_chain(&error),
                    tick = %format_time(batch.time),
                    failures,
                    queued = queue.len(),
                    "Neo4j write failed for good; this batch and the ones after it are not written."
                );
                return Err(error);
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapio_model::{Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId};

    fn correlation(name: &str) -> Correlation {
        Correlation::new(
            CorrelationKind::Ownership,
            format!("pod/default/{name}")
                .parse::<EntityId>()
                .expect("entity"),
            vec![],
            Detail::Ownership { depth: 0 },
            Confidence {
                percent: 100,
                basis: vec![Basis::RecordedLinks],
            },
        )
    }

    #[test]
    fn coalescing_sums_the_diffs_and_leaves_out_what_cancels() {
        let (a, b, c) = (correlation("a"), correlation("b"), correlation("c"));
        let mut merged = ClosedBatch {
            time: 10,
            changes: vec![(a.clone(), 1), (b.clone(), 1)],
        };
        coalesce(
            &mut merged,
            ClosedBatch {
                time: 20,
                changes: vec![(a.clone(), -1), (c.clone(), 1)],
            },
        );
        coalesce(
            &mut merged,
            ClosedBatch {
                time: 30,
                changes: vec![(b.clone(), -1), (a.clone(), 1)],
            },
        );
        let mut expected = vec![(a, 1), (c, 1)];
        expected.sort();
        assert_eq!(
            merged,
            ClosedBatch {
                time: 30,
                changes: expected
            }
        );
    }
}
