//! Temporal filters: how facts enter and leave the dataflow's state.
//!
//! A fact that happened at event tick `e` is visible from the time it arrived (`t`, which is `e`
//! unless it arrived late) until `e + width`. Each update `(fact, t, +1)` becomes
//! `(fact, max(t, e), +1)` and `(fact, e + width, -1)`, so every windowed input retracts itself
//! and the state it feeds stays bounded. A fact that is already expired on arrival is dropped.

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::vec::Map;

use crate::clock::Tick;

/// Keeps each record visible during `[max(arrival, event_tick), event_tick + width)`.
pub fn retain<'scope, D>(
    records: VecCollection<'scope, Tick, D, isize>,
    width: Tick,
    event_tick: impl Fn(&D) -> Tick + 'static,
) -> VecCollection<'scope, Tick, D, isize>
where
    D: Clone + 'static,
{
    records
        .inner
        .flat_map(move |(record, arrival, diff)| {
            let event = event_tick(&record);
            let start = arrival.max(event);
            let end = event.saturating_add(width);
            let live = if start < end { 2 } else { 0 };
            [(record.clone(), start, diff), (record, end, -diff)]
                .into_iter()
                .take(live)
        })
        .as_collection()
}
