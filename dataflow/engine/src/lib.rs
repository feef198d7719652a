//! Tapio's correlation dataflow (layer L2; depends on `tapio-model` and `tapio-config`).
//!
//! Observations go in; correlations with their evidence come out, as one consolidated ± batch
//! per closed tick. The graph runs on timely dataflow and differential dataflow, so every rule is
//! incremental: a correlation appears as soon as its evidence is complete and is retracted when
//! that evidence is retracted or expires.
//!
//! Time: logical time is event time in milliseconds, rounded up to a tick. Inputs advance to the
//! minimum heartbeat over all sources minus a lateness bound; a fact that arrives behind that is
//! clamped to the current input time and counted as late. A source that stops heartbeating is
//! retired after an idle timeout measured in event time, and rejoins when it speaks again (see
//! [`Watermark`]). Because heartbeats travel in the stream, replaying a recording computes
//! exactly the watermarks of the live run, and the output is the same for any number of workers
//! or processes.
//!
//! Rules (one module each under [`rules`], listed in [`rules::TABLE`]): [`rules::ownership`],
//! [`rules::oom_sequence`], [`rules::memory_exhaustion`], [`rules::node_pressure`], [`rules::service_graph`] and [`rules::blast_radius`]. They are built from the reusable incremental operators in
//! [`operators`]. To test a rule on its own, run it over a scripted stream with
//! [`harness::RuleHarness`].
//!
//! ```
//! use tapio_dataflow::{ClusterLayout, Engine, EngineSettings, Ingest};
//! use tapio_model::{Heartbeat, Observation};
//!
//! let (batches_tx, mut batches) = tokio::sync::mpsc::channel(16);
//! let (engine, inputs) = Engine::start(
//!     EngineSettings::default(),
//!     ClusterLayout::single(1),
//!     batches_tx,
//! )
//! .unwrap();
//! let beat = Observation::Heartbeat(Heartbeat {
//!     source: "example".into(),
//!     node: "n".into(),
//!     upto_ns: 1_700_000_000_000_000_000,
//! });
//! assert!(inputs[0].blocking_send(Ingest::Batch(vec![beat])));
//! drop(inputs);
//! let report = engine.join().unwrap();
//! assert_eq!(report.heartbeats, 1);
//! assert!(batches.try_recv().is_err()); // no facts, no correlations
//! ```

mod clock;
mod counters;
pub mod harness;
pub mod operators;
mod output;
mod progress;
mod router;
pub mod rules;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tapio_config::{CorrelationConfig, TapioConfig};
use tapio_model::ClosedBatch;
use tokio::sync::mpsc;

pub use clock::{Membership, SourceChange, Tick, TickClock, Watermark};
pub use counters::{CountersSnapshot, EngineCounters};
pub use progress::TakenIn;
pub use router::{ClusterLayout, Ingest, Router, Tap, WorkerInput};
pub use rules::{Rule, RuleInputs};

/// What the dataflow computes and how time advances.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSettings {
    /// Tick length, ms.
    pub tick_ms: u64,
    /// Bounded out-of-orderness, ns.
    pub lateness_ns: u64,
    /// A (source, node) whose heartbeats fall this far (ns of event time) behind another's is
    /// retired from the watermark until it speaks again (the exact rule: [`Watermark`]);
    /// `None` never retires one.
    pub source_idle_timeout_ns: Option<u64>,
    /// Capacity of each worker's input channel, in batches.
    pub input_buffer: usize,
    /// Most ticks of event time the input may run ahead of the output.
    pub max_inflight_ticks: u64,
    /// The validated `correlation` section: which rules run, and their settings.
    pub correlation: CorrelationConfig,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings::from_config(&TapioConfig::default())
    }
}

impl EngineSettings {
    /// The settings a configuration asks for.
    pub fn from_config(config: &TapioConfig) -> EngineSettings {
        let engine = &config.correlation.engine;
        let ms =
            |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let ns =
            |duration: std::time::Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        EngineSettings {
            tick_ms: ms(engine.tick).max(1),
            lateness_ns: ns(engine.lateness),
            source_idle_timeout_ns: Some(ns(engine.source_idle_timeout)).filter(|idle| *idle > 0),
            input_buffer: (engine.event_buffer_size / 1024).max(4),
            max_inflight_ticks: 50,
            correlation: config.correlation.clone(),
        }
    }
}

/// What one worker saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Facts taken in.
    pub facts: u64,
    /// Facts no enabled rule reads, counted in `facts` but kept out of the dataflow.
    pub facts_unread: u64,
    /// State updates taken in.
    pub state_updates: u64,
    /// Heartbeats seen.
    pub heartbeats: u64,
    /// Facts and state updates that arrived behind the watermark and were clamped to it.
    pub late: u64,
    /// Times a silent (source, node) was retired from the watermark.
    pub sources_retired: u64,
    /// Times a retired (source, node) rejoined the watermark.
    pub sources_rejoined: u64,
    /// The last tick reported.
    pub last_tick: Tick,
}

/// What the whole process saw, summed over its workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineReport {
    /// Facts taken in.
    pub facts: u64,
    /// Facts no enabled rule reads, counted in `facts` but kept out of the dataflow.
    pub facts_unread: u64,
    /// State updates taken in.
    pub state_updates: u64,
    /// Heartbeats seen (each worker sees every heartbeat; this is per worker).
    pub heartbeats: u64,
    /// Observations clamped because they were late.
    pub late: u64,
    /// Times a silent (source, node) was retired from the watermark (every worker decides the
    /// same; this is per worker).
    pub sources_retired: u64,
    /// Times a retired (source, node) rejoined the watermark (per worker, like
    /// `sources_retired`).
    pub sources_rejoined: u64,
    /// Correlation changes handed to the sinks.
    pub changes_emitted: u64,
    /// The last tick reported.
    pub last_tick: Tick,
}

/// The dataflow could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// timely could not build its workers (for example a cluster peer was unreachable).
    #[error("cannot start the dataflow workers: {reason}")]
    Start {
        /// timely's explanation.
        reason: String,
    },
    /// A worker panicked.
    #[error("a dataflow worker failed: {reason}")]
    Worker {
        /// The panic message.
        reason: String,
    },
    /// The cluster layout is inconsistent.
    #[error("invalid cluster layout: {reason}")]
    Layout {
        /// What is wrong.
        reason: String,
    },
}

/// A running dataflow. Dropping every input sender (or sending [`Ingest::End`]) ends it.
pub struct Engine {
    guards: timely::communication::initialize::WorkerGuards<WorkerReport>,
    emitted: Arc<AtomicU64>,
    taken_in: TakenIn,
    counters: EngineCounters,
}

impl Engine {
    /// Starts this process's workers. Returns the engine and one input channel per local worker;
    /// closed batches go to `output` (only process 0 emits them).
    ///
    /// # Errors
    /// An inconsistent layout, or timely failing to start (for example when cluster peers
    /// cannot connect).
    pub fn start(
        settings: EngineSettings,
        layout: ClusterLayout,
        output: mpsc::Sender<ClosedBatch>,
    ) -> Result<(Engine, Vec<WorkerInput>), EngineError> {
        let communication = timely_communication(&layout)?;
        let mut senders = Vec::with_capacity(layout.workers);
        let mut receivers = Vec::with_capacity(layout.workers);
        for _ in 0..layout.workers {
            let (tx, rx) = WorkerInput::pair(settings.input_buffer);
            senders.push(tx);
            receivers.push(Mutex::new(Some(rx)));
        }
        let receivers = Arc::new(receivers);
        let horizon = output::Horizon::unbounded();
        let emitted = Arc::new(AtomicU64::new(0));
        let settings = Arc::new(settings);
        let first_local = layout.process * layout.workers;
        let config = timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        };
        let worker_emitted = Arc::clone(&emitted);
        let taken_in = TakenIn::new(layout.workers);
        let worker_taken_in = taken_in.clone();
        let counters = EngineCounters::new(layout.workers);
        let worker_counters = counters.clone();
        let guards = timely::execute(config, move |worker| {
            let local = worker.index() - first_local;
            let receiver = receivers[local]
                .lock()
                .ok()
                .and_then(|mut slot| slot.take());
            let Some(receiver) = receiver else {
                return WorkerReport::default();
            };
            worker::drive(
                worker,
                receiver,
                &settings,
                output.clone(),
                Arc::clone(&horizon),
                Arc::clone(&worker_emitted),
                (local, worker_taken_in.clone(), &worker_counters),
            )
        })
        .map_err(|reason| EngineError::Start { reason })?;
        Ok((
            Engine {
                guards,
                emitted,
                taken_in,
                counters,
            },
            senders,
        ))
    }

    /// What this process's workers have taken in so far, live.
    pub fn counters(&self) -> EngineCounters {
        self.counters.clone()
    }

    /// How far this process's workers have taken in their input (see [`TakenIn`]).
    pub fn taken_in(&self) -> TakenIn {
        self.taken_in.clone()
    }

    /// Waits for every local worker to finish and sums their reports.
    ///
    /// # Errors
    /// When a worker panicked.
    pub fn join(self) -> Result<EngineReport, EngineError> {
        let mut total = EngineReport::default();
        for result in self.guards.join() {
            let report = result.map_err(|reason| EngineError::Worker { reason })?;
            total.facts += report.facts;
            total.facts_unread += report.facts_unread;
            total.state_updates += report.state_updates;
            total.heartbeats = total.heartbeats.max(report.heartbeats);
            total.late += report.late;
            total.sources_retired = total.sources_retired.max(report.sources_retired);
            total.sources_rejoined = total.sources_rejoined.max(report.sources_rejoined);
            total.last_tick = total.last_tick.max(report.last_tick);
        }
        total.changes_emitted = self.emitted.load(Ordering::Relaxed);
        Ok(total)
    }
}

fn timely_communication(
    layout: &ClusterLayout,
) -> Result<timely::CommunicationConfig, EngineError> {
    if layout.workers == 0 {
        return Err(EngineError::Layout {
            reason: "at least one worker is needed".into(),
        });
    }
    if layout.process >= layout.processes {
        return Err(EngineError::Layout {
            reason: format!(
                "process index {} is not below the process count {}",
                layout.process, layout.processes
            ),
        });
    }
    Ok(if layout.processes > 1 {
        if layout.addresses.len() < layout.processes {
            return Err(EngineError::Layout {
                reason: format!(
                    "{} processes need {} addresses in the hostfile, found {}",
                    layout.processes,
                    layout.processes,
                    layout.addresses.len()
                ),
            });
        }
        timely::CommunicationConfig::Cluster {
            threads: layout.workers,
            process: layout.process,
            addresses: layout.addresses[..layout.processes].to_vec(),
            report: false,
            zerocopy: false,
        }
    } else if layout.workers > 1 {
        timely::CommunicationConfig::Process(layout.workers)
    } else {
        timely::CommunicationConfig::Thread
    })
}
