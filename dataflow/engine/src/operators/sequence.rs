//! Sequence join: for every step A, the earliest step B on the same key that follows it within
//! a bound, or (looking back) the latest B that preceded it within a bound.
//!
//! Both sides carry their event time. A pair matches when `a ≤ b ≤ a + within`; of all the Bs
//! that match one A, the earliest (then the smallest) is kept, so a burst of Bs does not make a
//! cross product. The match is incremental: when the kept B is retracted, the next one takes
//! its place. Chain two joins for A → B → C. [`latest_before`] is the mirror image, for "the
//! last report before the event": `a − within ≤ b ≤ a`, the latest (then the largest) kept.
//!
//! ```
//! use differential_dataflow::input::Input;
//! use tapio_dataflow::operators::sequence::earliest_within;
//!
//! let matches = timely::execute_directly(|worker| {
//!     let (mut a, mut b, probe, out) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (a_in, a) = scope.new_collection::<(u32, (u64, char)), isize>();
//!         let (b_in, b) = scope.new_collection::<(u32, (u64, char)), isize>();
//!         let (out_tx, out_rx) = std::sync::mpsc::channel();
//!         let matched = earliest_within(a, b, 10, |(time, _)| *time, |(time, _)| *time);
//!         let (probe, matched) = matched.probe();
//!         matched.inspect(move |(data, _, diff)| out_tx.send((data.clone(), *diff)).unwrap());
//!         (a_in, b_in, probe, out_rx)
//!     });
//!     a.insert((1, (100, 'a')));
//!     b.insert((1, (104, 'x')));
//!     b.insert((1, (102, 'y')));
//!     b.insert((1, (200, 'z')));
//!     a.advance_to(1);
//!     b.advance_to(1);
//!     a.flush();
//!     b.flush();
//!     while probe.less_than(a.time()) {
//!         worker.step();
//!     }
//!     out.try_iter().collect::<Vec<_>>()
//! });
//! assert_eq!(matches, vec![((1, ((100, 'a'), (102, 'y'))), 1)]);
//! ```

use differential_dataflow::ExchangeData;
use differential_dataflow::VecCollection;

use crate::clock::Tick;

/// For every `(key, a)`, the earliest `(key, b)` with `time(a) ≤ time(b) ≤ time(a) + within`:
/// `(key, (a, b))`. Times are in whatever unit `a_time` and `b_time` return (Tapio uses event
/// nanoseconds); ties are broken by `B`'s order.
pub fn earliest_within<'scope, K, A, B>(
    a: VecCollection<'scope, Tick, (K, A), isize>,
    b: VecCollection<'scope, Tick, (K, B), isize>,
    within: u64,
    a_time: impl Fn(&A) -> u64 + Clone + 'static,
    b_time: impl Fn(&B) -> u64 + Clone + 'static,
) -> VecCollection<'scope, Tick, (K, (A, B)), isize>
where
    K: ExchangeData + std::hash::Hash,
    A: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
{
    earliest_in(
        a,
        b,
        move |a: &A| {
            let start = a_time(a);
            (start, start.saturating_add(within))
        },
        b_time,
    )
}

/// For every `(key, a)`, the earliest `(key, b)` whose time falls in `a`'s window
/// `[from, to]` (both ends included, as `window(a)` gives them): `(key, (a, b))`; ties are
/// broken by `B`'s order. The generalisation of [`earliest_within`] that a chain of steps
/// needs: a step must come after the step before it and within a bound of the first.
pub fn earliest_in<'scope, K, A, B>(
    a: VecCollection<'scope, Tick, (K, A), isize>,
    b: VecCollection<'scope, Tick, (K, B), isize>,
    window: impl Fn(&A) -> (u64, u64) + 'static,
    b_time: impl Fn(&B) -> u64 + Clone + 'static,
) -> VecCollection<'scope, Tick, (K, (A, B)), isize>
where
    K: ExchangeData + std::hash::Hash,
    A: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
{
    pick_in(a, b, window, b_time, Pick::Earliest)
}

/// For every `(key, a)`, the latest `(key, b)` with `time(a) − within ≤ time(b) ≤ time(a)`:
/// `(key, (a, b))`; ties are broken by `B`'s order (the largest wins). "The last report
/// before the event, if recent enough."
pub fn latest_before<'scope, K, A, B>(
    a: VecCollection<'scope, Tick, (K, A), isize>,
    b: VecCollection<'scope, Tick, (K, B), isize>,
    within: u64,
    a_time: impl Fn(&A) -> u64 + 'static,
    b_time: impl Fn(&B) -> u64 + Clone + 'static,
) -> VecCollection<'scope, Tick, (K, (A, B)), isize>
where
    K: ExchangeData + std::hash::Hash,
    A: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
{
    pick_in(
        a,
        b,
        move |a: &A| {
            let end = a_time(a);
            (end.saturating_sub(within), end)
        },
        b_time,
        Pick::Latest,
    )
}

/// Which B of those inside an A's window is kept.
#[derive(Clone, Copy)]
enum Pick {
    /// The earliest by time, then the smallest.
    Earliest,
    /// The latest by time, then the largest.
    Latest,
}

/// For every `(key, a)`, the one `(key, b)` that `pick` chooses among those whose time falls
/// in `a`'s window (both ends included).
fn pick_in<'scope, K, A, B>(
    a: VecCollection<'scope, Tick, (K, A), isize>,
    b: VecCollection<'scope, Tick, (K, B), isize>,
    window: impl Fn(&A) -> (u64, u64) + 'static,
    b_time: impl Fn(&B) -> u64 + Clone + 'static,
    pick: Pick,
) -> VecCollection<'scope, Tick, (K, (A, B)), isize>
where
    K: ExchangeData + std::hash::Hash,
    A: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
{
    let b_time_for_pick = b_time.clone();
    a.join(b)
        .filter(move |(_, (a, b))| {
            let (from, to) = window(a);
            let at = b_time(b);
            from <= at && at <= to
        })
        .map(|(key, (a, b))| ((key, a), b))
        .reduce(move |_, candidates, output| {
            // Values arrive sorted by `B`'s order: `min_by_key` keeps the first of equal times,
            // `max_by_key` the last.
            let held = candidates.iter().filter(|(_, count)| *count > 0);
            let chosen = match pick {
                Pick::Earliest => held.min_by_key(|(b, _)| b_time_for_pick(b)),
                Pick::Latest => held.max_by_key(|(b, _)| b_time_for_pick(b)),
            };
            if let Some((b, _)) = chosen {
                output.push(((*b).clone(), 1isize));
            }
        })
        .map(|((key, a), b)| (key, (a, b)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{earliest_in, earliest_within, latest_before};
    use crate::operators::oracle::{Rng, at, run2, times};

    /// A keyed step: `(key, (event time, id))`.
    type Record = (u32, (u64, u64));

    /// `count` records `(key, (event time, id))` on three keys, each inserted at a random time
    /// and a third of them retracted later.
    fn updates(rng: &mut Rng, count: u64) -> Vec<(Record, u64, isize)> {
        let mut out = Vec::new();
        for id in 0..count {
            let record = (rng.below(3) as u32, (rng.below(30), id));
            let at = rng.below(20);
            out.push((record, at, 1isize));
            if rng.below(3) == 0 {
                out.push((record, at + 1 + rng.below(10), -1));
            }
        }
        out
    }

    /// At every time, the matches equal a from-scratch search: for each A, the earliest B on its
    /// key within the bound; under inserts and retractions on both sides.
    #[test]
    fn keeps_the_earliest_follower_within_the_bound_at_every_time() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let within = rng.below(10);
            let a = updates(&mut rng, 15);
            let b = updates(&mut rng, 25);
            let output = run2(a.clone(), b.clone(), move |a, b| {
                earliest_within(a, b, within, |(time, _)| *time, |(time, _)| *time)
            });
            for time in times(&a, &b) {
                let (held_a, held_b) = (at(&a, time), at(&b, time));
                let mut expected = BTreeMap::new();
                for (key, first) in held_a.keys() {
                    let earliest = held_b
                        .keys()
                        .filter(|(k, b)| k == key && b.0 >= first.0 && b.0 - first.0 <= within)
                        .map(|(_, b)| *b)
                        .min();
                    if let Some(b) = earliest {
                        expected.insert((*key, (*first, b)), 1isize);
                    }
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }

    /// The mirror image: at every time, for each A the latest B on its key at most `within`
    /// before it (ties: the largest), under inserts and retractions on both sides.
    #[test]
    fn keeps_the_latest_report_within_the_bound_before_at_every_time() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let within = rng.below(10);
            let a = updates(&mut rng, 15);
            let b = updates(&mut rng, 25);
            let output = run2(a.clone(), b.clone(), move |a, b| {
                latest_before(a, b, within, |(time, _)| *time, |(time, _)| *time)
            });
            for time in times(&a, &b) {
                let (held_a, held_b) = (at(&a, time), at(&b, time));
                let mut expected = BTreeMap::new();
                for (key, last) in held_a.keys() {
                    let latest = held_b
                        .keys()
                        .filter(|(k, b)| k == key && b.0 <= last.0 && last.0 - b.0 <= within)
                        .map(|(_, b)| *b)
                        .max();
                    if let Some(b) = latest {
                        expected.insert((*key, (*last, b)), 1isize);
                    }
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }

    /// The windowed form, with a window of its own per A (`[lower, upper]`, possibly empty):
    /// at every time, for each A the earliest B on its key inside A's window.
    #[test]
    fn keeps_the_earliest_follower_inside_each_window_at_every_time() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let updates = |rng: &mut Rng, count: u64, windowed: bool| {
                let mut out = Vec::new();
                for id in 0..count {
                    let at_time = rng.below(30);
                    // The upper end sometimes below the lower one: an empty window.
                    let upper = if windowed { at_time + rng.below(12) } else { 0 };
                    let lower = if windowed { rng.below(30) } else { 0 };
                    let record = (rng.below(3) as u32, (at_time, lower, upper, id));
                    let at = rng.below(20);
                    out.push((record, at, 1isize));
                    if rng.below(3) == 0 {
                        out.push((record, at + 1 + rng.below(10), -1));
                    }
                }
                out
            };
            let a = updates(&mut rng, 15, true);
            let b = updates(&mut rng, 25, false);
            let output = run2(a.clone(), b.clone(), move |a, b| {
                earliest_in(
                    a,
                    b,
                    |(_, lower, upper, _)| (*lower, *upper),
                    |(time, ..)| *time,
                )
            });
            for time in times(&a, &b) {
                let (held_a, held_b) = (at(&a, time), at(&b, time));
                let mut expected = BTreeMap::new();
                for (key, first) in held_a.keys() {
                    let earliest = held_b
                        .keys()
                        .filter(|(k, b)| k == key && first.1 <= b.0 && b.0 <= first.2)
                        .map(|(_, b)| *b)
                        .min();
                    if let Some(b) = earliest {
                        expected.insert((*key, (*first, b)), 1isize);
                    }
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }
}
