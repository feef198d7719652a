//! Lapses: a key's values that replaced, while the key stayed listed, a value in good standing.
//!
//! A Service endpoint that is not ready means little on its own: every new pod starts that way.
//! It means a failure when the same endpoint was ready before and has not gone away since.
//! [`lapses`] keeps, for each key, the values that `good` rejects, from the first tick at which
//! the key holds or has held a value `good` accepts with no gap in its listing since, until the
//! key has no value at all, which forgets its history. The state per key is its current values
//! and one flag.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{ExchangeData, VecCollection};

use super::ticked::{InTickOrder, in_tick_order};
use crate::clock::Tick;

/// `(key, value)` for every current value `good` rejects whose key, in its current unbroken
/// listing, holds or has held a value `good` accepts.
pub fn lapses<'scope, K, V>(
    values: VecCollection<'scope, Tick, (K, V), isize>,
    good: fn(&V) -> bool,
) -> VecCollection<'scope, Tick, (K, V), isize>
where
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    let state = Listings {
        good,
        keys: HashMap::new(),
    };
    in_tick_order(values, |(key, _)| key.hashed(), "Lapses", state)
}

/// The state behind [`lapses`] on one worker.
struct Listings<K, V> {
    good: fn(&V) -> bool,
    /// Each listed key: its current values with their counts, and whether it has held a good
    /// value since it was listed.
    keys: HashMap<K, (BTreeMap<V, isize>, bool)>,
}

impl<K, V> Listings<K, V> {
    /// What a key shows: its values `good` rejects, once it has held a good one.
    fn shown(&self, values: &BTreeMap<V, isize>, lapsed: bool) -> Vec<(V, isize)>
    where
        V: Clone,
    {
        if !lapsed {
            return Vec::new();
        }
        values
            .iter()
            .filter(|(value, _)| !(self.good)(value))
            .map(|(value, count)| (value.clone(), *count))
            .collect()
    }
}

impl<K: ExchangeData + Hash, V: ExchangeData> InTickOrder for Listings<K, V> {
    type In = (K, V);
    type Out = (K, V);

    fn wakes_at(&self) -> Option<Tick> {
        None
    }

    fn take(&mut self, _tick: Tick, mut updates: Vec<((K, V), isize)>) -> Vec<((K, V), isize)> {
        updates.sort();
        let mut changes = Vec::new();
        let mut updates = updates.into_iter().peekable();
        while let Some(((key, _), _)) = updates.peek() {
            let key = key.clone();
            let (mut values, was_good) = self.keys.remove(&key).unwrap_or_default();
            let before = self.shown(&values, was_good);
            while let Some(((_, value), diff)) = updates.next_if(|((next, _), _)| *next == key) {
                let count = values.entry(value.clone()).or_insert(0);
                *count += diff;
                if *count == 0 {
                    values.remove(&value);
                }
            }
            // A good value held before (the latch) or from now latches the key, until it goes.
            let has_good = values.keys().any(|value| (self.good)(value));
            let lapsed = (was_good || has_good) && !values.is_empty();
            let after = self.shown(&values, lapsed);
            for (value, count) in &before {
                changes.push(((key.clone(), value.clone()), -count));
            }
            for (value, count) in after {
                changes.push(((key.clone(), value), count));
            }
            if !values.is_empty() {
                self.keys.insert(key, (values, lapsed));
            }
        }
        differential_dataflow::consolidation::consolidate(&mut changes);
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::lapses;
    use crate::operators::oracle::{Rng, at, run1, times};

    /// Incrementally, a bad value shows exactly while its key, listed without a break since
    /// some tick at which it held a good value: over random listings with values replaced, keys
    /// going away and coming back, and several updates per tick.
    #[test]
    fn shows_bad_values_only_after_a_good_one_in_the_same_listing() {
        for seed in 1..=30 {
            let mut rng = Rng::new(seed);
            let mut input = Vec::new();
            for key in 0..6u64 {
                // A key's history: at each step it loses a value, gains one, or has one
                // replaced (values are good when even); it may hold several at once, or none.
                let mut held: Vec<u64> = Vec::new();
                let mut time = rng.below(3);
                for _ in 0..12 {
                    let action = rng.below(4);
                    if action == 0 && !held.is_empty() {
                        let old = held.remove(rng.below(held.len() as u64) as usize);
                        input.push(((key, old), time, -1isize));
                    } else {
                        let new = rng.below(6);
                        if !held.contains(&new) {
                            if action >= 2 && !held.is_empty() {
                                let old = held.remove(rng.below(held.len() as u64) as usize);
                                input.push(((key, old), time, -1isize));
                            }
                            held.push(new);
                            input.push(((key, new), time, 1));
                        }
                    }
                    time += rng.below(3);
                }
            }
            let output = run1(input.clone(), |values| {
                lapses(values, |value| value % 2 == 0)
            });
            for time in times(&input, &output) {
                let mut expected = at(&input, time);
                expected.retain(|(key, value), _| {
                    if value % 2 == 0 {
                        return false;
                    }
                    // Walk back from `time`: the listing is unbroken back to a tick with a
                    // good value.
                    (0..=time).rev().any(|earlier| {
                        let listed =
                            (earlier..=time).all(|t| at(&input, t).keys().any(|(k, _)| k == key));
                        let good = at(&input, earlier)
                            .keys()
                            .any(|(k, v)| k == key && v % 2 == 0);
                        listed && good
                    })
                });
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }
}
