//! The outputs of `tapio run`/`tapio replay`: the JSON-lines or terminal sink, the in-memory
//! store (always: the API and its metrics read it), and the Neo4j sink when
//! `integrations.neo4j.uri` is set. Every sink is health-checked before the dataflow starts;
//! `tapio_sinks::fan_out` copies each closed tick to all of them. Each sink's state and queue
//! are registered with the process's health.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use tapio_config::TapioConfig;
use tapio_model::ClosedBatch;
use tapio_sinks::BoxFuture;
use tapio_sinks::{Sink, SinkError, SinkReport};
use tapio_sinks_jsonl::{JsonlSink, Target};
use tapio_sinks_neo4j::{Neo4jSettings, Neo4jSink};
use tapio_sinks_store::{Store, StoreObserver};

use crate::health::health;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The running sinks.
pub(crate) struct Outputs {
    sinks: Vec<(&'static str, JoinHandle<Result<SinkReport, SinkError>>)>,
    fan_out: Option<JoinHandle<()>>,
}

/// Builds and health-checks the configured sinks, starts them, and returns the sender the
/// dataflow writes closed ticks to.
pub(crate) async fn start(
    config: &TapioConfig,
    target: Target,
    store: Store,
) -> Result<(mpsc::Sender<ClosedBatch>, Outputs)> {
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(JsonlSink::new(target)),
        Box::new(store.sink().observed_by(StoreMetrics)),
    ];
    let neo4j = &config.integrations.neo4j;
    if !neo4j.uri.is_empty() {
        sinks.push(Box::new(TimedNeo4j {
            sink: Neo4jSink::new(Neo4jSettings::from_config(neo4j)),
        }));
    }
    for sink in &mut sinks {
        sink.healthcheck().await?;
    }
    let capacity = config.correlation.engine.output_buffer_size;
    let (input, input_rx) = mpsc::channel(capacity);
    let mut running = Vec::new();
    let mut senders = Vec::new();
    for sink in sinks {
        let (tx, rx) = mpsc::channel(capacity);
        let name = sink.name();
        health().add_queue(name, tx.downgrade());
        health().add_sink(name);
        senders.push(tx);
        let task = tokio::spawn(async move {
            let result = sink.run(rx).await;
            let error = result.as_ref().err().map(|error| crate::error_chain(error));
            health().end_sink(name, error);
            result
        });
        running.push((name, task));
    }
    let fan_out = tokio::spawn(tapio_sinks::fan_out(input_rx, senders));
    Ok((
        input,
        Outputs {
            sinks: running,
            fan_out: Some(fan_out),
        },
    ))
}

impl Outputs {
    /// Waits until every sink has written everything; returns the first sink's report.
    /// (The JSON lines sink is the first; the store reports the same ticks.)
    ///
    /// # Errors
    /// The first sink failure (each failure is also logged).
    pub(crate) async fn finish(self) -> Result<SinkReport> {
        if let Some(fan_out) = self.fan_out {
            fan_out.await.context("the output fan-out task failed")?;
        }
        let mut first_report = None;
        let mut first_error = None;
        for (name, task) in self.sinks {
            let outcome = task
                .await
                .map_err(|join| anyhow!("the `{name}` output crashed: {join}"))
                .and_then(|result| result.map_err(anyhow::Error::from));
            match outcome {
                Ok(report) => {
                    tracing::info!(
                        sink = name,
                        batches = report.batches,
                        changes = report.changes,
                        "Output finished."
                    );
                    first_report.get_or_insert(report);
                }
                Err(error) => {
                    tracing::error!(sink = name, error = format!("{error:#}"), "Output failed.");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(first_report.unwrap_or_default()),
        }
    }
}

/// The store sink's metrics: how long after its tick closed each batch arrives, and how long
/// applying it takes.
struct StoreMetrics;

impl StoreObserver for StoreMetrics {
    fn arrived(&mut self, tick_end: u64) {
        crate::metrics::metrics().observe_tick_at_sink("store", tick_end);
    }

    fn applied(&mut self, took: std::time::Duration) {
        crate::metrics::metrics().observe_commit("store", took);
    }
}

/// The Neo4j sink, timed: how long after its tick closed each batch arrives, and how long from
/// handing it to the sink to its commit (the sink's progress says when a batch is done).
struct TimedNeo4j {
    sink: Neo4jSink,
}

impl Sink for TimedNeo4j {
    fn name(&self) -> &'static str {
        self.sink.name()
    }

    fn healthcheck(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.sink.healthcheck()
    }

    fn run(
        self: Box<Self>,
        mut batches: mpsc::Receiver<ClosedBatch>,
    ) -> BoxFuture<'static, Result<SinkReport, SinkError>> {
        let mut progress = self.sink.progress();
        Box::pin(async move {
            let metrics = crate::metrics::metrics();
            // When each batch not yet done was handed to the sink, oldest first.
            let handed: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
            // Up to as many batches as the sink folds into one transaction when it is behind:
            // it coalesces what waits here (the time a batch waits in front of it is the
            // queue's, which the queue depth and the lag show).
            let (tx, rx) = mpsc::channel(tapio_sinks_neo4j::MAX_COALESCED);
            let inner = Box::new(self.sink).run(rx);
            let forward = {
                let handed = Arc::clone(&handed);
                let metrics = Arc::clone(&metrics);
                async move {
                    while let Some(batch) = batches.recv().await {
                        metrics.observe_tick_at_sink("neo4j", batch.time);
                        handed
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push_back(Instant::now());
                        if tx.send(batch).await.is_err() {
                            break;
                        }
                    }
                }
            };
            let watch = async move {
                let mut done = 0u64;
                let (mut transactions, mut coalesced) = (0u64, 0u64);
                // Ends when the sink, which holds the sender, ends.
                while progress.changed().await.is_ok() {
                    let now = *progress.borrow_and_update();
                    let mut handed = handed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    while done < now.batches + now.skipped {
                        if let Some(at) = handed.pop_front() {
                            metrics.observe_commit("neo4j", at.elapsed());
                        }
                        done += 1;
                    }
                    metrics.observe_sink_progress(
                        "neo4j",
                        now.transactions - transactions,
                        now.coalesced - coalesced,
                        handed.len(),
                    );
                    (transactions, coalesced) = (now.transactions, now.coalesced);
                }
            };
            let (result, (), ()) = tokio::join!(inner, forward, watch);
            result
        })
    }
}
