//! The contract every Tapio collector implements (layer L1; depends on `tapio-model` and
//! `tapio-config` only).
//!
//! A collector is a [`Source`]: it is built from validated configuration without doing any I/O,
//! then [`Source::run`] reads the real thing (the kernel, the API server, a file, ...) and sends
//! [`Observation`]s through the bounded [`SourceContext::out`] channel until the shutdown token
//! is cancelled or its input ends. Sending waits when the channel is full: that is the
//! back-pressure from the dataflow.
//!
//! Bad input never stops a source: it counts it in [`SourceStats`], logs where it came from,
//! and goes on.
//!
//! Each source crate exports `from_config`, which builds the source from the validated
//! configuration; the binary keeps one table of them. While a source runs it reports its
//! [`Health`] through [`SourceContext::health`]: a [`Status`] (starting, running, finished,
//! failed) and named counters. A source that reads a resumable input (a stream sequence, a
//! journal cursor) sends what it read at each position as a [`Delivery`] through
//! [`SourceContext::take_positions`], and learns there how far the dataflow has taken its
//! input in, which is how far it may acknowledge.
//!
//! ```
//! use tapio_sources::SourceContext;
//! let (cx, mut rx) = SourceContext::for_test("example", "node-1", 16);
//! let first = cx.next_fact_id();
//! assert!(first.to_string().starts_with("example/node-1/"));
//! assert_eq!(cx.next_fact_id().seq, first.seq + 1);
//! drop(rx.try_recv());
//! ```

pub mod cgroup;
pub mod containers;
mod health;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tapio_model::{FactId, Heartbeat, Observation, TimeNs};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::containers::CgroupResolver;

pub use health::{
    Counter, Counters, DROPPED, ERRORS, Health, RECEIVED, SENT, SourceHealth, Status,
};

/// A boxed, sendable future, so that [`Source`] stays object safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A collector.
pub trait Source: Send + 'static {
    /// Stable snake_case kind (`"kernel"`, `"recording"`), equal to the crate's directory name.
    fn kind(&self) -> &'static str;

    /// Runs until `cx.shutdown` is cancelled or the input ends.
    ///
    /// # Errors
    /// Only unrecoverable errors (the input cannot be opened at all); everything recoverable is
    /// retried or counted inside. A source sets [`SourceHealth::set_running`] on
    /// [`SourceContext::health`] once its input is open; one that fails before that could not
    /// start.
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>>;
}

/// Why a source stopped for good, or could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot be built from its configuration section. Not retryable.
    #[error("source `{kind}` cannot be built from its configuration")]
    Build {
        /// Source kind.
        kind: &'static str,
        /// What is wrong with the configuration.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source's input could not be opened or read at all. Not retryable.
    #[error("source `{kind}` cannot read {what}")]
    Input {
        /// Source kind.
        kind: &'static str,
        /// What it tried to read, e.g. a file path.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source needs something this machine does not have (a capability, a kernel feature).
    #[error("source `{kind}` cannot run here: {requirement}")]
    Unsupported {
        /// Source kind.
        kind: &'static str,
        /// What is missing and how to provide it.
        requirement: String,
    },
}

/// Counters every source keeps: what it received, sent on, rejected and dropped.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Records read from the input.
    pub received: AtomicU64,
    /// Observations sent to the dataflow.
    pub sent: AtomicU64,
    /// Records rejected as malformed or impossible.
    pub errors: AtomicU64,
    /// Records lost (for example when a kernel buffer overflowed).
    pub dropped: AtomicU64,
}

/// A point-in-time copy of [`SourceStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStatsSnapshot {
    /// Records read from the input.
    pub received: u64,
    /// Observations sent to the dataflow.
    pub sent: u64,
    /// Records rejected as malformed or impossible.
    pub errors: u64,
    /// Records lost.
    pub dropped: u64,
}

impl SourceStats {
    /// Reads all counters.
    pub fn snapshot(&self) -> SourceStatsSnapshot {
        SourceStatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Most observations [`SourceContext::send_batch`] claims room for at once: large enough to
/// make the claim cheap per observation, small enough not to wait for a nearly empty channel
/// when a little room would do.
pub const SEND_CHUNK: usize = 128;

/// The output channel closed: the dataflow is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the dataflow stopped accepting observations")]
pub struct Closed;

/// The first sequence number of a source run: the wall-clock time the run started, in ns since
/// the Unix epoch.
///
/// Fact ids must stay unique when a node agent restarts: NATS drops a message whose id it has
/// seen within the stream's duplicate window, and a fact's message id is its fact id, so ids
/// that started again at 1 would make the restarted agent's first facts vanish as duplicates.
/// A source makes far fewer than one fact per nanosecond, so a later run starts above every
/// number an earlier run used (unless the clock was set back by more than the time between the
/// two starts).
pub fn first_sequence() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX / 2)
        })
        .max(1)
}

/// Everything a running source needs.
pub struct SourceContext {
    /// Source kind, used in fact ids and logs.
    pub kind: &'static str,
    /// This node's name, shared by every id the source makes.
    pub node: Arc<str>,
    /// Where observations go. Bounded: `send` waits when the dataflow is behind.
    pub out: mpsc::Sender<Observation>,
    /// Cancelled when Tapio shuts down.
    pub shutdown: CancellationToken,
    /// This source's counters.
    pub stats: Arc<SourceStats>,
    /// This source's status and counters, as reported (holds [`SourceContext::stats`]).
    pub health: Arc<SourceHealth>,
    /// Which container a cgroup v2 id names, shared by the sources of one process.
    pub containers: Arc<CgroupResolver>,
    positions: Option<Positions>,
    next_seq: AtomicU64,
}

/// What a source read at one position of a resumable input: a stream sequence, a journal
/// cursor, an etcd revision.
#[derive(Debug)]
pub struct Delivery {
    /// The position, increasing from one delivery to the next.
    pub position: u64,
    /// The observations read there, in order (empty when none decoded: the position still has
    /// to be taken in and acknowledged).
    pub observations: Vec<Observation>,
    /// When the input stored what was read there, ns since the epoch by the input's clock (0
    /// when unknown): with the observation's event time and the time it was taken in, this
    /// splits a transport's latency into publishing and delivery.
    pub stored_ns: u64,
}

/// The acknowledging side of a [`SourceContext`], for sources that resume from a position.
///
/// The source sends each [`Delivery`] to `out`, in position order. `taken_in` holds the
/// highest position whose observations (and every earlier position's) the dataflow has taken
/// in: what the source may acknowledge to its input, so that a restart resumes after it and
/// loses nothing.
#[derive(Debug)]
pub struct Positions {
    /// Where deliveries go.
    pub out: mpsc::Sender<Delivery>,
    /// How far the dataflow has taken the deliveries in.
    pub taken_in: watch::Receiver<u64>,
}

impl SourceContext {
    /// A context for a source of kind `kind` on node `node`.
    pub fn new(
        kind: &'static str,
        node: impl Into<Arc<str>>,
        out: mpsc::Sender<Observation>,
        shutdown: CancellationToken,
    ) -> SourceContext {
        let stats = Arc::new(SourceStats::default());
        SourceContext {
            kind,
            node: node.into(),
            out,
            shutdown,
            health: Arc::new(SourceHealth::new(kind, Arc::clone(&stats))),
            stats,
            containers: Arc::new(CgroupResolver::new()),
            positions: None,
            next_seq: AtomicU64::new(first_sequence()),
        }
    }

    /// This context, with a pipeline that tracks positions: deliveries go to `positions.out`
    /// and the dataflow's progress comes back through `positions.taken_in`.
    #[must_use]
    pub fn with_positions(mut self, positions: Positions) -> SourceContext {
        self.positions = Some(positions);
        self
    }

    /// This context, resolving cgroup ids through `containers`: the resolver (and its cache)
    /// every source of the process shares.
    #[must_use]
    pub fn with_containers(mut self, containers: Arc<CgroupResolver>) -> SourceContext {
        self.containers = containers;
        self
    }

    /// The acknowledging side of this context, for a source that resumes from a position.
    /// A source takes it once, at the start of its run.
    ///
    /// When the pipeline does not track positions (recording to a file, publishing), the
    /// observations of each delivery are sent on [`SourceContext::out`] and its position
    /// counts as taken in once they are sent.
    pub fn take_positions(&mut self) -> Positions {
        if let Some(positions) = self.positions.take() {
            return positions;
        }
        let (out, mut deliveries) = mpsc::channel::<Delivery>(self.out.max_capacity().max(1));
        let (taken_tx, taken_in) = watch::channel(0u64);
        let observations = self.out.clone();
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.recv().await {
                for observation in delivery.observations {
                    if observations.send(observation).await.is_err() {
                        return;
                    }
                }
                taken_tx.send_replace(delivery.position);
            }
        });
        Positions { out, taken_in }
    }

    /// A context wired to a fresh channel of `capacity`, for tests.
    pub fn for_test(
        kind: &'static str,
        node: &str,
        capacity: usize,
    ) -> (SourceContext, mpsc::Receiver<Observation>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            SourceContext::new(kind, node, tx, CancellationToken::new()),
            rx,
        )
    }

    /// The next fact id of this source on this node. Sequence numbers start at
    /// [`first_sequence`] and count up by one.
    pub fn next_fact_id(&self) -> FactId {
        FactId::new(
            self.kind,
            self.node.clone(),
            self.next_seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Sends one observation, waiting while the channel is full.
    ///
    /// # Errors
    /// [`Closed`] when the dataflow no longer accepts observations.
    pub async fn send(&self, observation: Observation) -> Result<(), Closed> {
        self.out.send(observation).await.map_err(|_| Closed)?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends every observation in `batch`, in order, leaving it empty; waits while the channel
    /// is full. Costs less per observation than [`SourceContext::send`]: room in the channel is
    /// claimed for up to [`SEND_CHUNK`] observations at once.
    ///
    /// # Errors
    /// [`Closed`] when the dataflow no longer accepts observations; what was not sent yet is
    /// dropped.
    pub async fn send_batch(&self, batch: &mut Vec<Observation>) -> Result<(), Closed> {
        let chunk = SEND_CHUNK.min(self.out.max_capacity()).max(1);
        let mut pending = batch.drain(..);
        while pending.len() > 0 {
            let n = pending.len().min(chunk);
            let permits = self.out.reserve_many(n).await.map_err(|_| Closed)?;
            for (permit, observation) in permits.zip(pending.by_ref()) {
                permit.send(observation);
            }
            self.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends a heartbeat: everything before `upto_ns` has been sent.
    ///
    /// # Errors
    /// [`Closed`] when the dataflow no longer accepts observations.
    pub async fn heartbeat(&self, upto_ns: TimeNs) -> Result<(), Closed> {
        let beat = Observation::Heartbeat(Heartbeat {
            source: self.kind.to_string(),
            node: self.node.to_string(),
            upto_ns,
        });
        self.out.send(beat).await.map_err(|_| Closed)
    }
}

/// Runs `source` with a test context for at most `limit`, and returns everything it sent and
/// its final counters. The harness for source tests.
///
/// # Errors
/// The source's own error.
pub async fn run_for_test(
    source: Box<dyn Source>,
    node: &str,
    limit: Duration,
) -> Result<(Vec<Observation>, SourceStatsSnapshot), SourceError> {
    let (cx, mut rx) = SourceContext::for_test(source.kind(), node, 1024);
    let stats = Arc::clone(&cx.stats);
    let shutdown = cx.shutdown.clone();
    let task = tokio::spawn(source.run(cx));
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(observation) => seen.push(observation),
                None => break,
            },
            () = &mut deadline => {
                shutdown.cancel();
                while let Some(observation) = rx.recv().await {
                    seen.push(observation);
                }
                break;
            }
        }
    }
    match task.await {
        Ok(result) => result.map(|()| (seen, stats.snapshot())),
        Err(join) => Err(SourceError::Input {
            kind: "test",
            what: "the source task".into(),
            source: Box::new(join),
        }),
    }
}

/// Current wall-clock time in ns since the Unix epoch.
pub fn now_ns() -> TimeNs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as TimeNs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(upto_ns: TimeNs) -> Observation {
        Observation::Heartbeat(Heartbeat {
            source: "test".into(),
            node: "n".into(),
            upto_ns,
        })
    }

    #[test]
    fn a_restarted_source_numbers_its_facts_above_the_previous_run() {
        let (first_run, _rx) = SourceContext::for_test("kernel", "n", 1);
        let last_of_first = (0..10_000)
            .map(|_| first_run.next_fact_id().seq)
            .last()
            .expect("ids");
        drop(first_run);
        let (second_run, _rx) = SourceContext::for_test("kernel", "n", 1);
        let first_of_second = second_run.next_fact_id();
        assert!(
            first_of_second.seq > last_of_first,
            "{first_of_second} reuses a number of the previous run (last {last_of_first})"
        );
        assert_eq!(second_run.next_fact_id().seq, first_of_second.seq + 1);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_channel_arrives_whole_and_in_order() {
        let (cx, mut rx) = SourceContext::for_test("test", "n", 3);
        let total = SEND_CHUNK as u64 + 7;
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Observation::Heartbeat(beat)) = rx.recv().await {
                seen.push(beat.upto_ns);
            }
            seen
        });
        let mut batch: Vec<Observation> = (0..total).map(beat).collect();
        cx.send_batch(&mut batch).await.expect("open channel");
        assert!(batch.is_empty());
        assert_eq!(cx.stats.snapshot().sent, total);
        drop(cx);
        let seen = reader.await.expect("reader");
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn without_an_acknowledging_pipeline_a_position_is_taken_in_once_sent() {
        let (mut cx, mut rx) = SourceContext::for_test("test", "n", 4);
        let mut positions = cx.take_positions();
        let delivery = Delivery {
            position: 7,
            observations: vec![beat(1), beat(2)],
            stored_ns: 0,
        };
        positions.out.send(delivery).await.expect("open channel");
        for expected in [1, 2] {
            let Some(Observation::Heartbeat(beat)) = rx.recv().await else {
                panic!("the delivery's observations arrive on `out`");
            };
            assert_eq!(beat.upto_ns, expected);
        }
        let taken = *positions
            .taken_in
            .wait_for(|position| *position == 7)
            .await
            .expect("the forwarder reports the position");
        assert_eq!(taken, 7);
    }

    #[tokio::test]
    async fn a_closed_channel_is_reported() {
        let (cx, rx) = SourceContext::for_test("test", "n", 4);
        drop(rx);
        let mut batch = vec![beat(1), beat(2)];
        assert!(cx.send_batch(&mut batch).await.is_err());
    }
}
