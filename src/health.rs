//! What this process runs and how each part is doing: its sources (their live
//! [`SourceHealth`]), the dataflow and the sinks. `/readyz` and `/metrics` read it; the
//! pipeline writes it as parts start and end. One per process ([`health`]), as the process is
//! one pipeline.

use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use serde::Serialize;
use tapio_dataflow::EngineCounters;
use tapio_model::ClosedBatch;
use tapio_sinks_store::Store;
use tapio_sources::{SourceHealth, Status};
use tokio::sync::mpsc::WeakSender;

/// How a part of the pipeline is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Not started yet.
    Starting,
    /// Working.
    Running,
    /// Ended as it should (its input ended).
    Finished,
    /// Stopped on an error.
    Failed,
}

/// One sink's state.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SinkState {
    /// Sink name.
    pub(crate) name: &'static str,
    /// How it is doing.
    pub(crate) status: Phase,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// Ticks it failed to write (0 or 1: a sink that fails stops).
    #[serde(skip)]
    pub(crate) failures: u64,
}

/// The process's parts.
#[derive(Default)]
pub(crate) struct Health {
    sources: Mutex<Vec<Arc<SourceHealth>>>,
    dataflow: Mutex<Option<(Phase, Option<String>)>>,
    sinks: Mutex<Vec<SinkState>>,
    store: Mutex<Option<Store>>,
    engine: Mutex<Option<EngineCounters>>,
    queues: Mutex<Vec<(&'static str, WeakSender<ClosedBatch>)>>,
    newest: Mutex<std::collections::BTreeMap<String, u64>>,
    publisher: Mutex<Option<Arc<tapio_sinks_nats::PublisherGauges>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's [`Health`].
pub(crate) fn health() -> &'static Health {
    static HEALTH: LazyLock<Health> = LazyLock::new(Health::default);
    &HEALTH
}

impl Health {
    /// A source has started.
    pub(crate) fn add_source(&self, source: Arc<SourceHealth>) {
        lock(&self.sources).push(source);
    }

    /// The live health of every source started.
    pub(crate) fn sources(&self) -> Vec<tapio_sources::Health> {
        lock(&self.sources)
            .iter()
            .map(|source| source.snapshot())
            .collect()
    }

    /// The dataflow is now in `phase`.
    pub(crate) fn set_dataflow(&self, phase: Phase, message: Option<String>) {
        *lock(&self.dataflow) = Some((phase, message));
    }

    /// The dataflow's phase, if this process runs one.
    pub(crate) fn dataflow(&self) -> Option<(Phase, Option<String>)> {
        lock(&self.dataflow).clone()
    }

    /// A sink has started.
    pub(crate) fn add_sink(&self, name: &'static str) {
        lock(&self.sinks).push(SinkState {
            name,
            status: Phase::Running,
            message: None,
            failures: 0,
        });
    }

    /// A sink has ended, with `error` if it failed.
    pub(crate) fn end_sink(&self, name: &'static str, error: Option<String>) {
        if let Some(sink) = lock(&self.sinks).iter_mut().find(|sink| sink.name == name) {
            sink.failures += u64::from(error.is_some());
            sink.status = if error.is_some() {
                Phase::Failed
            } else {
                Phase::Finished
            };
            sink.message = error;
        }
    }

    /// Every sink started.
    pub(crate) fn sinks(&self) -> Vec<SinkState> {
        lock(&self.sinks).clone()
    }

    /// The process's in-memory store, once it has one.
    pub(crate) fn set_store(&self, store: Store) {
        *lock(&self.store) = Some(store);
    }

    /// The store, if the process correlates.
    pub(crate) fn store(&self) -> Option<Store> {
        lock(&self.store).clone()
    }

    /// The dataflow's live counters.
    pub(crate) fn set_engine(&self, counters: EngineCounters) {
        *lock(&self.engine) = Some(counters);
    }

    /// The dataflow's live counters, once it runs.
    pub(crate) fn engine(&self) -> Option<EngineCounters> {
        lock(&self.engine).clone()
    }

    /// The queue in front of a sink (held weakly: it closes when the pipeline drops it).
    pub(crate) fn add_queue(&self, name: &'static str, queue: WeakSender<ClosedBatch>) {
        lock(&self.queues).push((name, queue));
    }

    /// Closed ticks waiting in front of each sink.
    pub(crate) fn queue_depths(&self) -> Vec<(&'static str, usize)> {
        lock(&self.queues)
            .iter()
            .filter_map(|(name, queue)| {
                let queue = queue.upgrade()?;
                Some((*name, queue.max_capacity() - queue.capacity()))
            })
            .collect()
    }

    /// The dataflow took in an observation from `source` (the source kind its id or heartbeat
    /// names) with event time `time_ns`.
    pub(crate) fn taken_in(&self, source: &str, time_ns: u64) {
        let mut newest = lock(&self.newest);
        match newest.get_mut(source) {
            Some(known) => *known = (*known).max(time_ns),
            None => {
                newest.insert(source.to_owned(), time_ns);
            }
        }
    }

    /// The newest event time taken in from each source kind, ns.
    pub(crate) fn newest_per_source(&self) -> Vec<(String, u64)> {
        lock(&self.newest)
            .iter()
            .map(|(source, time)| (source.clone(), *time))
            .collect()
    }

    /// The node agent's NATS publisher.
    pub(crate) fn set_publisher(&self, gauges: Arc<tapio_sinks_nats::PublisherGauges>) {
        *lock(&self.publisher) = Some(gauges);
    }

    /// The NATS publisher's live gauges, in the node agent.
    pub(crate) fn publisher(&self) -> Option<Arc<tapio_sinks_nats::PublisherGauges>> {
        lock(&self.publisher).clone()
    }

    /// Whether every part works: no source failed or is still starting, the dataflow runs
    /// (or has finished its input), and no sink failed. Also says what is not ready.
    pub(crate) fn ready(&self) -> (bool, Vec<String>) {
        let mut not_ready = Vec::new();
        for source in self.sources() {
            match source.status {
                Status::Failed => not_ready.push(format!(
                    "source {} failed: {}",
                    source.kind,
                    source.message.unwrap_or_default()
                )),
                Status::Starting => not_ready.push(format!("source {} is starting", source.kind)),
                _ => {}
            }
        }
        match self.dataflow() {
            // The node agent runs no dataflow: it publishes.
            None if self.publisher().is_some() => {}
            None | Some((Phase::Starting, _)) => not_ready.push("the dataflow is starting".into()),
            Some((Phase::Failed, message)) => not_ready.push(format!(
                "the dataflow failed: {}",
                message.unwrap_or_default()
            )),
            _ => {}
        }
        for sink in self.sinks() {
            if sink.status == Phase::Failed {
                not_ready.push(format!(
                    "sink {} failed: {}",
                    sink.name,
                    sink.message.unwrap_or_default()
                ));
            }
        }
        (not_ready.is_empty(), not_ready)
    }
}
