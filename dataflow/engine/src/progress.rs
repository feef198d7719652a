//! How far the dataflow has taken in its input, for inputs that must acknowledge what they read.
//!
//! A reader that has to acknowledge its input (a durable JetStream consumer) numbers its
//! positions with an increasing `u64` (for JetStream, the stream sequence). After routing the
//! observations up to a position it calls [`Router::mark`](crate::Router::mark), which sends an
//! [`Ingest::Mark`](crate::Ingest::Mark) behind them to every local worker. A worker records the
//! mark once everything before it in its channel is in its input sessions and flushed, that is,
//! part of the dataflow's input at a definite logical time. [`TakenIn::position`] is the lowest
//! mark over the process's workers: every observation up to it has been taken in by the worker
//! that owns it, and every heartbeat up to it by every worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The positions taken in by each local worker of one process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TakenIn {
    marks: Arc<[AtomicU64]>,
}

impl TakenIn {
    pub(crate) fn new(workers: usize) -> TakenIn {
        TakenIn {
            marks: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records that local worker `local` has taken in everything up to `position`.
    pub(crate) fn record(&self, local: usize, position: u64) {
        if let Some(mark) = self.marks.get(local) {
            mark.fetch_max(position, Ordering::Release);
        }
    }

    /// The highest position every local worker has taken in (0 before the first mark).
    ///
    /// ```
    /// use tapio_dataflow::{ClusterLayout, Engine, EngineSettings, Router};
    ///
    /// let (batches, _out) = tokio::sync::mpsc::channel(4);
    /// let (engine, inputs) =
    ///     Engine::start(EngineSettings::default(), ClusterLayout::single(2), batches).unwrap();
    /// let taken_in = engine.taken_in();
    /// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// runtime.block_on(async {
    ///     let mut router = Router::new(ClusterLayout::single(2), inputs);
    ///     assert!(router.mark(7).await);
    ///     while taken_in.position() < 7 {
    ///         tokio::task::yield_now().await;
    ///     }
    ///     router.finish().await;
    /// });
    /// engine.join().unwrap();
    /// ```
    pub fn position(&self) -> u64 {
        self.marks
            .iter()
            .map(|mark| mark.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}
