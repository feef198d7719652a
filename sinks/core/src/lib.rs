//! The contract every Tapio destination implements (layer L1; depends on `tapio-model` and
//! `tapio-config` only).
//!
//! The dataflow hands over one [`ClosedBatch`] per closed tick: every correlation that became
//! current (+1) or stopped being current (-1) in that tick. A [`Sink`] checks its destination
//! once at start ([`Sink::healthcheck`]), then writes batches in order until the channel closes,
//! and flushes before it returns, so that nothing accepted is lost on shutdown.

use std::future::Future;
use std::pin::Pin;

use tapio_model::ClosedBatch;
use tokio::sync::mpsc;

/// A boxed, sendable future, so that [`Sink`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A destination for correlation changes.
pub trait Sink: Send + 'static {
    /// Short name for logs (`"stdout"`, `"jsonl"`, `"neo4j"`).
    fn name(&self) -> &'static str;

    /// Checks once, before any batch, that the destination is usable.
    ///
    /// # Errors
    /// When it is not (unwritable file, unreachable server, bad credentials).
    fn healthcheck(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Writes every batch from `batches` in order until the channel closes, then flushes.
    ///
    /// # Errors
    /// When writing fails for good.
    fn run(
        self: Box<Self>,
        batches: mpsc::Receiver<ClosedBatch>,
    ) -> BoxFuture<'static, Result<SinkReport, SinkError>>;
}

/// What a sink wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Batches written.
    pub batches: u64,
    /// Correlation changes written.
    pub changes: u64,
}

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination cannot be opened or written.
    #[error("sink `{sink}` cannot write to {target}")]
    Write {
        /// Sink name.
        sink: &'static str,
        /// The file, server or stream.
        target: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Copies every batch from `input` to every output, in order; closes the outputs when the input
/// closes. Slow outputs slow the input down (bounded channels), nothing is dropped.
pub async fn fan_out(
    mut input: mpsc::Receiver<ClosedBatch>,
    outputs: Vec<mpsc::Sender<ClosedBatch>>,
) {
    while let Some(batch) = input.recv().await {
        let Some((last, rest)) = outputs.split_last() else {
            continue;
        };
        for output in rest {
            // A sink that stopped has already reported its error.
            let _ = output.send(batch.clone()).await;
        }
        let _ = last.send(batch).await;
    }
}
