//! The outputs of `tapio run`/`tapio replay`: the JSON-lines or terminal sink, and the Neo4j
//! sink when `integrations.neo4j.uri` is set. Every sink is health-checked before the dataflow
//! starts; with more than one, `tapio_sinks::fan_out` copies each closed tick to all of them.

use anyhow::{Context, Result, anyhow};
use tapio_config::TapioConfig;
use tapio_model::ClosedBatch;
use tapio_sinks::{Sink, SinkError, SinkReport};
use tapio_sinks_jsonl::{JsonlSink, Target};
use tapio_sinks_neo4j::{Neo4jSettings, Neo4jSink};
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
) -> Result<(mpsc::Sender<ClosedBatch>, Outputs)> {
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlSink::new(target))];
    let neo4j = &config.integrations.neo4j;
    if !neo4j.uri.is_empty() {
        sinks.push(Box::new(Neo4jSink::new(Neo4jSettings::from_config(neo4j))));
    }
    for sink in &mut sinks {
        sink.healthcheck().await?;
    }
    let capacity = config.correlation.engine.output_buffer_size;
    let (input, input_rx) = mpsc::channel(capacity);
    let mut running = Vec::new();
    if sinks.len() == 1 {
        let sink = sinks.remove(0);
        running.push((sink.name(), tokio::spawn(sink.run(input_rx))));
        return Ok((
            input,
            Outputs {
                sinks: running,
                fan_out: None,
            },
        ));
    }
    let mut senders = Vec::new();
    for sink in sinks {
        let (tx, rx) = mpsc::channel(capacity);
        senders.push(tx);
        running.push((sink.name(), tokio::spawn(sink.run(rx))));
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
