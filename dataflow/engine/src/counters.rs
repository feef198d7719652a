//! What the workers have taken in so far, readable while the dataflow runs: each worker
//! publishes its [`WorkerReport`] counts and its input tick after every round of intake, and
//! [`EngineCounters::snapshot`] sums them (metrics read it; the final report still comes from
//! [`crate::Engine::join`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tapio_model::TimeNs;

use crate::{TickClock, WorkerReport};

#[derive(Debug, Default)]
struct Slot {
    facts: AtomicU64,
    facts_unread: AtomicU64,
    state_updates: AtomicU64,
    heartbeats: AtomicU64,
    late: AtomicU64,
    input_tick: AtomicU64,
}

/// The live counts of this process's workers.
#[derive(Clone, Debug)]
pub struct EngineCounters {
    slots: Arc<[Slot]>,
}

/// [`EngineCounters`] summed over the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Facts taken in.
    pub facts: u64,
    /// Facts no enabled rule reads.
    pub facts_unread: u64,
    /// State updates taken in.
    pub state_updates: u64,
    /// Heartbeats the first worker saw (every worker sees every heartbeat).
    pub heartbeats: u64,
    /// Facts and state updates clamped because they were late.
    pub late: u64,
    /// The watermark: the lowest input tick of the workers, as ns since the Unix epoch; `None`
    /// before any worker has advanced.
    pub watermark: Option<TimeNs>,
}

impl EngineCounters {
    pub(crate) fn new(workers: usize) -> EngineCounters {
        EngineCounters {
            slots: (0..workers.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// Worker `local` has taken in what `report` counts and advanced its input to `tick`.
    pub(crate) fn publish(&self, local: usize, report: &WorkerReport, tick: u64) {
        let Some(slot) = self.slots.get(local) else {
            return;
        };
        slot.facts.store(report.facts, Ordering::Relaxed);
        slot.facts_unread
            .store(report.facts_unread, Ordering::Relaxed);
        slot.state_updates
            .store(report.state_updates, Ordering::Relaxed);
        slot.heartbeats.store(report.heartbeats, Ordering::Relaxed);
        slot.late.store(report.late, Ordering::Relaxed);
        slot.input_tick.store(tick, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> CountersSnapshot {
        let mut total = CountersSnapshot::default();
        let mut lowest: Option<u64> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            total.facts += slot.facts.load(Ordering::Relaxed);
            total.facts_unread += slot.facts_unread.load(Ordering::Relaxed);
            total.state_updates += slot.state_updates.load(Ordering::Relaxed);
            total.late += slot.late.load(Ordering::Relaxed);
            if index == 0 {
                total.heartbeats = slot.heartbeats.load(Ordering::Relaxed);
            }
            let tick = slot.input_tick.load(Ordering::Relaxed);
            if tick > 0 {
                lowest = Some(lowest.map_or(tick, |low| low.min(tick)));
            }
        }
        total.watermark = lowest.map(TickClock::to_ns);
        total
    }
}
