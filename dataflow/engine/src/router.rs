//! Splits one process's observation stream among its dataflow workers.
//!
//! Facts and state updates go to one worker each, chosen by a stable hash of their id, so every
//! process of a cluster that reads the same stream agrees on who handles what; a process only
//! forwards what belongs to its own workers. Heartbeats go to every local worker, so every
//! worker computes the same watermark and none stalls the others.

use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use tapio_model::{Observation, TimeNs, stable_hash};
use tokio::sync::mpsc;

/// Where this process sits in the timely cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterLayout {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// `host:port` of every process, in process order (empty for one process).
    pub addresses: Vec<String>,
}

impl ClusterLayout {
    /// One process with `workers` threads.
    pub fn single(workers: usize) -> ClusterLayout {
        ClusterLayout {
            workers: workers.max(1),
            processes: 1,
            process: 0,
            addresses: Vec::new(),
        }
    }

    /// Total workers in the cluster.
    pub fn peers(&self) -> usize {
        self.workers * self.processes
    }
}

/// What a worker's input channel carries.
#[derive(Debug)]
pub enum Ingest {
    /// Observations, in stream order.
    Batch(Vec<Observation>),
    /// Everything before this in the channel is up to input position `0` (see [`crate::TakenIn`]).
    Mark(u64),
    /// The stream ended; `last_ns` is the latest event time in it. Everything up to that time is
    /// reported, nothing later.
    End {
        /// Latest event time seen in the whole stream.
        last_ns: TimeNs,
    },
}

/// The input side of one local worker: its bounded channel, and the worker's thread, which is
/// woken after every send so that an idle worker does not first sleep out its park timeout.
#[derive(Clone, Debug)]
pub struct WorkerInput {
    channel: mpsc::Sender<Ingest>,
    thread: Arc<OnceLock<Thread>>,
}

/// The worker's end of a [`WorkerInput`].
pub(crate) struct WorkerReceiver {
    pub(crate) channel: mpsc::Receiver<Ingest>,
    pub(crate) thread: Arc<OnceLock<Thread>>,
}

impl WorkerInput {
    /// A channel of `capacity` between the router and one worker.
    pub(crate) fn pair(capacity: usize) -> (WorkerInput, WorkerReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let thread = Arc::new(OnceLock::new());
        (
            WorkerInput {
                channel: tx,
                thread: Arc::clone(&thread),
            },
            WorkerReceiver {
                channel: rx,
                thread,
            },
        )
    }

    /// Sends `ingest`, waiting while the worker is behind, then wakes the worker. Returns
    /// `false` once the worker no longer accepts input.
    pub async fn send(&self, ingest: Ingest) -> bool {
        if self.channel.send(ingest).await.is_err() {
            return false;
        }
        self.wake();
        true
    }

    /// [`WorkerInput::send`] for callers outside an async runtime: blocks the thread while
    /// the worker is behind. Must not be called from within an async runtime.
    pub fn blocking_send(&self, ingest: Ingest) -> bool {
        if self.channel.blocking_send(ingest).is_err() {
            return false;
        }
        self.wake();
        true
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// Observations per batch handed to a worker. Larger batches mean fewer channel hand-overs and
/// wake-ups per observation (1,024 → 4,096 took the spine benchmark's two-worker median from
/// about 480k to 540k observations/s); a batch is also sent whenever the input goes idle, so
/// a slow stream does not wait for one to fill.
const BATCH: usize = 4096;

/// Something that sees every observation a [`Router`] routes, before it is routed.
pub type Tap = Box<dyn FnMut(&Observation) + Send>;

/// Routes a process's observations to its local workers' channels.
pub struct Router {
    layout: ClusterLayout,
    outputs: Vec<WorkerInput>,
    pending: Vec<Vec<Observation>>,
    last_ns: TimeNs,
    tap: Option<Tap>,
}

impl Router {
    /// A router feeding `outputs`, one channel per local worker (in local worker order).
    pub fn new(layout: ClusterLayout, outputs: Vec<WorkerInput>) -> Router {
        let pending = outputs.iter().map(|_| Vec::with_capacity(BATCH)).collect();
        Router {
            layout,
            outputs,
            pending,
            last_ns: 0,
            tap: None,
        }
    }

    /// Shows every observation to `tap` before routing it (every observation of the stream,
    /// also those another process's workers own), e.g. to keep a history of facts per entity.
    pub fn with_tap(mut self, tap: Tap) -> Router {
        self.tap = Some(tap);
        self
    }

    fn owner(&self, observation: &Observation) -> Option<usize> {
        let id = match observation {
            Observation::Fact(fact) => &fact.id,
            Observation::State(update) => &update.record.evidence,
            Observation::Heartbeat(_) => return None,
        };
        let hash = stable_hash(id.source.as_bytes())
            ^ stable_hash(id.node.as_bytes()).rotate_left(17)
            ^ id.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Some((hash % self.layout.peers() as u64) as usize)
    }

    /// Routes one observation; sends full batches, waiting when a worker is behind.
    ///
    /// Returns `false` once the dataflow has stopped accepting input.
    pub async fn route(&mut self, observation: Observation) -> bool {
        if let Some(tap) = &mut self.tap {
            tap(&observation);
        }
        self.last_ns = self.last_ns.max(observation.time_ns());
        let first_local = self.layout.process * self.layout.workers;
        match self.owner(&observation) {
            None => {
                for local in 0..self.pending.len() {
                    self.pending[local].push(observation.clone());
                    if !self.send_full(local).await {
                        return false;
                    }
                }
            }
            Some(worker) => {
                let Some(local) = worker.checked_sub(first_local) else {
                    return true;
                };
                if local >= self.pending.len() {
                    return true;
                }
                self.pending[local].push(observation);
                return self.send_full(local).await;
            }
        }
        true
    }

    async fn send_full(&mut self, local: usize) -> bool {
        if self.pending[local].len() < BATCH {
            return true;
        }
        self.send(local).await
    }

    async fn send(&mut self, local: usize) -> bool {
        let batch = std::mem::replace(&mut self.pending[local], Vec::with_capacity(BATCH));
        self.outputs[local].send(Ingest::Batch(batch)).await
    }

    /// Sends whatever is buffered (call when the input is momentarily idle).
    pub async fn flush(&mut self) -> bool {
        for local in 0..self.pending.len() {
            if !self.pending[local].is_empty() && !self.send(local).await {
                return false;
            }
        }
        true
    }

    /// Flushes, then tells every local worker that the input is complete up to `position`;
    /// [`crate::TakenIn::position`] reaches it once every worker has taken that input in.
    ///
    /// Returns `false` once the dataflow has stopped accepting input.
    pub async fn mark(&mut self, position: u64) -> bool {
        if !self.flush().await {
            return false;
        }
        for output in &self.outputs {
            if !output.send(Ingest::Mark(position)).await {
                return false;
            }
        }
        true
    }

    /// Flushes and tells every worker the stream has ended.
    pub async fn finish(mut self) {
        self.flush().await;
        for output in &self.outputs {
            // A worker that already stopped needs no end marker.
            let _ = output
                .send(Ingest::End {
                    last_ns: self.last_ns,
                })
                .await;
        }
    }

    /// Routes everything from `input` until it closes, flushing whenever it is idle, then
    /// ends the stream.
    pub async fn run(mut self, mut input: mpsc::Receiver<Observation>) {
        loop {
            let observation = match input.try_recv() {
                Ok(observation) => observation,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !self.flush().await {
                        return;
                    }
                    match input.recv().await {
                        Some(observation) => observation,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            if !self.route(observation).await {
                return;
            }
        }
        self.finish().await;
    }
}
