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

#[cfg(test)]
mod tests {
    use super::retain;
    use crate::operators::oracle::{Rng, at, run1, times};

    /// Incrementally, a record is held exactly while `max(arrival, event) ≤ t < event + width`,
    /// also when it arrives late, is retracted, or arrives already expired.
    #[test]
    fn holds_each_record_exactly_during_its_window() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let width = 1 + rng.below(8);
            let mut input = Vec::new();
            for id in 0..40u64 {
                let event = rng.below(30);
                let arrival = event + rng.below(4) * rng.below(2) * width;
                input.push(((id, event), arrival, 1isize));
                if rng.below(4) == 0 {
                    input.push(((id, event), arrival + 1 + rng.below(5), -1));
                }
            }
            let output = run1(input.clone(), move |records| {
                retain(records, width, |(_, event)| *event)
            });
            for time in times(&input, &output) {
                let mut expected = at(&input, time);
                expected.retain(|(id, event), _| {
                    let arrival = input
                        .iter()
                        .find(|u| u.0 == (*id, *event))
                        .map_or(0, |u| u.1);
                    arrival.max(*event) <= time && time < event + width
                });
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }
}
