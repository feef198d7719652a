//! The output boundary: closed ticks leave the dataflow as one consolidated batch each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use tokio::sync::mpsc;

use tapio_model::{ClosedBatch, Correlation};

use crate::clock::{Tick, TickClock};

/// Shared between the input driver and the output operator of one process: the last tick that
/// is reported. Updates at later ticks (for example retractions scheduled for the future when a
/// replay ends) are not reported.
#[derive(Debug)]
pub(crate) struct Horizon(AtomicU64);

impl Horizon {
    pub(crate) fn unbounded() -> Arc<Horizon> {
        Arc::new(Horizon(AtomicU64::new(u64::MAX)))
    }

    pub(crate) fn set(&self, last_reported: Tick) {
        self.0.store(last_reported, Ordering::SeqCst);
    }

    fn get(&self) -> Tick {
        self.0.load(Ordering::SeqCst)
    }
}

/// Routes every correlation change to worker 0, waits until a tick is closed (the frontier has
/// passed it), then consolidates that tick's changes and hands them, sorted, to `out`.
///
/// `out.blocking_send` back-pressures the dataflow when the sinks are slow; if the receiver is
/// gone the batches are discarded (the process is shutting down).
pub(crate) fn emit_closed_ticks(
    correlations: VecCollection<'_, Tick, Correlation, isize>,
    out: mpsc::Sender<ClosedBatch>,
    horizon: Arc<Horizon>,
    emitted: Arc<AtomicU64>,
) {
    let mut pending: BTreeMap<Tick, Vec<(Correlation, i64)>> = BTreeMap::new();
    // No `consolidate()` before the exchange: it would keep an arranged copy of every current
    // correlation only to cancel changes that the per-tick consolidation below cancels anyway.
    correlations.inner.sink(
        Exchange::new(|_: &(Correlation, Tick, isize)| 0u64),
        "EmitClosedTicks",
        move |(input, frontier)| {
            input.for_each(|_capability, data| {
                for (correlation, tick, diff) in data.drain(..) {
                    pending
                        .entry(tick)
                        .or_default()
                        .push((correlation, diff as i64));
                }
            });
            let last = horizon.get();
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let tick = *entry.key();
                let mut changes = entry.remove();
                if tick > last {
                    continue;
                }
                consolidate(&mut changes);
                if changes.is_empty() {
                    continue;
                }
                emitted.fetch_add(changes.len() as u64, Ordering::Relaxed);
                let batch = ClosedBatch {
                    time: TickClock::to_ns(tick),
                    changes,
                };
                // A closed receiver means the process is shutting down; nothing is waiting.
                if out.blocking_send(batch).is_err() {
                    pending.clear();
                    break;
                }
            }
        },
    );
}
