//! Runs: items on one key folded, in time order, into runs that each stay current until a
//! time the run itself sets, holding a compact summary instead of the items.
//!
//! A rule says how ([`Fold`]): which item starts a run, which items continue the newest run on
//! their key, how an item changes a run, and until when a run is current. At every tick the
//! runs current at the tick before are carried over, the items that entered at this tick are
//! folded into them in their own order (the newest run takes an item it admits, otherwise the
//! item starts a new run), and runs whose time is up are dropped. Items are taken when they
//! are inserted (facts are insert-only); a retraction of an item is ignored.
//!
//! The state is the runs themselves, held per key by one operator: a loop that goes on for days
//! holds its summary, not its days of items. A run's current time is only ever extended by the
//! items it takes, and it is retracted when that time is up, so every key's state is bounded by
//! the runs still current.
//!
//! [`level`] and [`Count`] are the shared part of the counting rules (restart loops, bursts): a
//! run of items each within a bound of the one before, reported when its count reaches a
//! threshold and then again only at 10, 20, 50, 100, ..., so that a long run changes its
//! correlation a logarithmic number of times, not once per item.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::marker::PhantomData;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};

use super::ticked::{InTickOrder, in_tick_order};
use crate::clock::{Tick, TickClock};

/// How a rule folds items into runs.
pub trait Fold: Clone + 'static {
    /// What is folded. Items that enter at the same tick are folded in this type's order, so
    /// it should order by event time first.
    type Item: ExchangeData + Hash;
    /// What a run holds.
    type Run: ExchangeData + Hash;

    /// A run that `item` starts.
    fn start(&self, item: &Self::Item) -> Self::Run;

    /// Whether `item` continues `run`, the newest run on its key.
    fn admits(&self, run: &Self::Run, item: &Self::Item) -> bool;

    /// Folds `item` into `run`.
    fn add(&self, run: &mut Self::Run, item: &Self::Item);

    /// The event time of the run's latest item: of several runs on a key, the one with the
    /// greatest is the newest.
    fn latest(&self, run: &Self::Run) -> u64;

    /// The tick at which the run stops being current.
    fn expires(&self, run: &Self::Run) -> Tick;
}

/// The current runs of every key: `(key, run)`, each from the tick it took its present value
/// until [`Fold::expires`] or until an item changes it. `step` is the tick length: items enter
/// at multiples of it, and [`Fold::expires`] must return multiples of it.
///
/// One timely operator holds each key's runs. It takes a tick once every worker has passed it
/// and handles the keys with items entering at that tick or a run ending at it, so an item
/// costs one fold and emits only when a run's value changes, and a run's end is emitted at that
/// end, when it comes, rather than as a future retraction that every extension has to undo.
pub fn runs<'scope, K, F>(
    items: VecCollection<'scope, Tick, (K, F::Item), isize>,
    fold: F,
    step: Tick,
) -> VecCollection<'scope, Tick, (K, F::Run), isize>
where
    K: ExchangeData + Hash,
    F: Fold,
{
    let held = HeldRuns {
        fold,
        step: step.max(1),
        runs: HashMap::new(),
        ending: BTreeMap::new(),
    };
    in_tick_order(items, |(key, _)| key.hashed(), "Runs", held)
}

/// The state behind [`runs`] on one worker.
struct HeldRuns<K, F: Fold> {
    fold: F,
    step: Tick,
    /// Each key's current runs.
    runs: HashMap<K, Vec<F::Run>>,
    /// Keys with a run ending at a tick (an entry may be stale: the run was extended since).
    ending: BTreeMap<Tick, Vec<K>>,
}

impl<K: ExchangeData + Hash, F: Fold> InTickOrder for HeldRuns<K, F> {
    type In = (K, F::Item);
    type Out = (K, F::Run);

    fn wakes_at(&self) -> Option<Tick> {
        self.ending.keys().next().copied()
    }

    /// Folds the items that entered at `tick` into their keys' runs and drops the runs whose
    /// time is up.
    fn take(
        &mut self,
        tick: Tick,
        updates: Vec<((K, F::Item), isize)>,
    ) -> Vec<((K, F::Run), isize)> {
        // Items are taken when they are inserted (a retraction is ignored), and items that
        // enter at one tick are folded in their own order, each once.
        let mut entering: Vec<(K, F::Item)> = updates
            .into_iter()
            .filter(|(_, diff)| *diff > 0)
            .map(|(item, _)| item)
            .collect();
        entering.sort();
        entering.dedup();
        let mut keys: Vec<K> = entering.iter().map(|(key, _)| key.clone()).collect();
        keys.extend(self.ending.remove(&tick).unwrap_or_default());
        keys.sort();
        keys.dedup();

        let mut changes = Vec::new();
        let mut items = entering.into_iter().peekable();
        for key in keys {
            let mut runs = self.runs.remove(&key).unwrap_or_default();
            let before = runs.clone();
            while let Some((_, item)) = items.next_if(|(next, _)| *next == key) {
                let fold = &self.fold;
                let newest = runs
                    .iter_mut()
                    .max_by(|a, b| (fold.latest(a), &**a).cmp(&(fold.latest(b), &**b)));
                match newest {
                    Some(run) if fold.admits(run, &item) => fold.add(run, &item),
                    _ => runs.push(fold.start(&item)),
                }
            }
            runs.retain(|run| self.fold.expires(run) > tick);
            for run in &runs {
                let end = self.fold.expires(run);
                debug_assert_eq!(end % self.step, 0, "a run ends at a tick");
                // The key is already waiting for an end a run had before this tick.
                let waiting = before.iter().any(|old| self.fold.expires(old) == end);
                if !waiting {
                    self.ending.entry(end).or_default().push(key.clone());
                }
            }
            for run in before.iter().filter(|run| !runs.contains(run)) {
                changes.push(((key.clone(), run.clone()), -1));
            }
            for run in runs.iter().filter(|run| !before.contains(run)) {
                changes.push(((key.clone(), run.clone()), 1));
            }
            if !runs.is_empty() {
                self.runs.insert(key, runs);
            }
        }
        changes
    }
}

/// The level `count` has reached: `threshold` itself, then 10, 20, 50, 100, 200, 500, ...
/// (each above `threshold`); `None` below `threshold`.
///
/// ```
/// use tapio_dataflow::operators::runs::level;
///
/// let levels: Vec<_> = [2, 3, 4, 5, 9, 10, 19, 20, 49, 50, 120].map(|n| level(n, 3)).into();
/// assert_eq!(
///     levels,
///     [None, Some(3), Some(3), Some(5), Some(5), Some(10), Some(10), Some(20), Some(20),
///      Some(50), Some(100)]
/// );
/// ```
pub fn level(count: u64, threshold: u64) -> Option<u64> {
    if count < threshold {
        return None;
    }
    let mut reached = threshold;
    let mut decade: u64 = 1;
    'steps: loop {
        for step in [1, 2, 5] {
            let Some(at) = decade.checked_mul(step) else {
                break 'steps;
            };
            if at > count {
                break 'steps;
            }
            reached = reached.max(at);
        }
        let Some(next) = decade.checked_mul(10) else {
            break;
        };
        decade = next;
    }
    Some(reached)
}

/// An item a counting run counts: its event time, and what it says (the tally counts items by
/// it: an exit's code and reason, a connect's outcome).
pub trait Counted: ExchangeData + Hash {
    /// What the tally counts by.
    type Class: ExchangeData + Hash;

    /// Event time, ns.
    fn time(&self) -> u64;

    /// What the item says.
    fn class(&self) -> Self::Class;
}

/// A counting run: items on one key, each within a bound of the one before it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Count<X: Counted> {
    /// The first items, in the order they were folded, up to the threshold.
    pub first: Vec<X>,
    /// Items so far.
    pub count: u64,
    /// Earliest and latest event time among them, ns.
    pub earliest_ns: u64,
    /// Latest event time among them, ns.
    pub latest_ns: u64,
    /// How many of them said what, by class.
    pub tally: BTreeMap<X::Class, u64>,
    /// The run as it was when its count last reached a [`level`]; `None` below the threshold.
    pub level: Option<Level<X>>,
}

/// A counting run as it was when its count reached a level: the only part a correlation may
/// read, so that the correlation changes only when the next level is reached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Level<X: Counted> {
    /// The level: items counted.
    pub count: u64,
    /// The item that brought the count to it.
    pub item: X,
    /// Time from the earliest to the latest of those items, ns.
    pub span_ns: u64,
    /// How many of those items said what, by class.
    pub tally: BTreeMap<X::Class, u64>,
}

/// Folds [`Counted`] items into [`Count`] runs: an item continues the newest run when it is at
/// most `within_ns` after that run's latest item (or earlier: a late item); a run is current
/// until `keep_for_ns` after its latest item.
#[derive(Debug)]
pub struct CountFold<X> {
    threshold: u64,
    within_ns: u64,
    keep_for_ns: u64,
    clock: TickClock,
    items: PhantomData<fn(X)>,
}

impl<X> Clone for CountFold<X> {
    fn clone(&self) -> Self {
        CountFold {
            items: PhantomData,
            ..*self
        }
    }
}

impl<X> CountFold<X> {
    /// A fold that reports a run once it holds `threshold` items.
    pub fn new(threshold: u64, within_ns: u64, keep_for_ns: u64, clock: TickClock) -> Self {
        CountFold {
            threshold: threshold.max(1),
            within_ns,
            keep_for_ns,
            clock,
            items: PhantomData,
        }
    }
}

impl<X: Counted> Fold for CountFold<X> {
    type Item = X;
    type Run = Count<X>;

    fn start(&self, item: &X) -> Count<X> {
        let mut run = Count {
            first: Vec::new(),
            count: 0,
            earliest_ns: item.time(),
            latest_ns: item.time(),
            tally: BTreeMap::new(),
            level: None,
        };
        self.add(&mut run, item);
        run
    }

    fn admits(&self, run: &Count<X>, item: &X) -> bool {
        item.time() <= run.latest_ns.saturating_add(self.within_ns)
    }

    fn add(&self, run: &mut Count<X>, item: &X) {
        run.count += 1;
        run.earliest_ns = run.earliest_ns.min(item.time());
        run.latest_ns = run.latest_ns.max(item.time());
        *run.tally.entry(item.class()).or_insert(0) += 1;
        if run.first.len() < self.threshold as usize {
            run.first.push(item.clone());
        }
        if level(run.count, self.threshold) == Some(run.count) {
            run.level = Some(Level {
                count: run.count,
                item: item.clone(),
                span_ns: run.latest_ns - run.earliest_ns,
                tally: run.tally.clone(),
            });
        }
    }

    fn latest(&self, run: &Count<X>) -> u64 {
        run.latest_ns
    }

    fn expires(&self, run: &Count<X>) -> Tick {
        self.clock
            .tick_of(run.latest_ns.saturating_add(self.keep_for_ns))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{Count, CountFold, Counted, level, runs};
    use crate::clock::{Tick, TickClock};
    use crate::operators::oracle::{Rng, at, run1};

    /// A test item: event time (ms), what it says, an id.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    struct Item(u64, u8, u32);

    impl Counted for Item {
        type Class = u8;
        fn time(&self) -> u64 {
            self.0 * 1_000_000
        }
        fn class(&self) -> u8 {
            self.1
        }
    }

    #[test]
    fn levels_are_the_threshold_then_one_two_five() {
        let reached: Vec<Option<u64>> = (0..=120).map(|n| level(n, 5)).collect();
        let changes: Vec<u64> = (1..reached.len())
            .filter(|&n| reached[n] != reached[n - 1])
            .map(|n| n as u64)
            .collect();
        assert_eq!(changes, vec![5, 10, 20, 50, 100]);
        assert_eq!(level(1, 1), Some(1));
        assert_eq!(level(2, 1), Some(2));
        assert_eq!(level(u64::MAX, 2), Some(10_000_000_000_000_000_000));
    }

    /// From scratch, tick by tick: carry the runs current at the tick before, fold the items
    /// entering at this tick in their order into the newest run of their key when it is within
    /// `within` of that run's latest item, else start a run; keep a run until `keep_for` after
    /// its latest item. Counted independently of the operator: a run is the list of its items.
    fn naive(
        input: &[((u8, Item), Tick, isize)],
        step: Tick,
        threshold: u64,
        within_ms: u64,
        keep_for_ms: u64,
        last: Tick,
    ) -> BTreeMap<Tick, BTreeMap<(u8, Vec<Item>), isize>> {
        let mut held: BTreeMap<u8, Vec<Vec<Item>>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        let expires = |run: &Vec<Item>| {
            let latest = run.iter().map(|item| item.0).max().unwrap_or(0);
            (latest + keep_for_ms).div_ceil(step) * step
        };
        let mut tick = 0;
        while tick <= last {
            let mut entering: Vec<&(u8, Item)> = input
                .iter()
                .filter(|(_, at, diff)| *at == tick && *diff > 0)
                .map(|(item, _, _)| item)
                .collect();
            entering.sort();
            entering.dedup();
            for (key, item) in entering {
                let runs = held.entry(*key).or_default();
                let newest = runs
                    .iter_mut()
                    .max_by_key(|run| (run.iter().map(|i| i.0).max(), summary(run, threshold)));
                match newest {
                    Some(run) if item.0 <= run.iter().map(|i| i.0).max().unwrap() + within_ms => {
                        run.push(item.clone())
                    }
                    _ => runs.push(vec![item.clone()]),
                }
            }
            for runs in held.values_mut() {
                runs.retain(|run| expires(run) > tick);
            }
            let mut now = BTreeMap::new();
            for (key, runs) in &held {
                for run in runs {
                    now.insert((*key, run.clone()), 1);
                }
            }
            out.insert(tick, now);
            tick += step;
        }
        out
    }

    /// What a run of items must fold to, computed from the list.
    fn summary(items: &[Item], threshold: u64) -> Count<Item> {
        let mut tally = BTreeMap::new();
        let mut level_at = None;
        for (index, item) in items.iter().enumerate() {
            *tally.entry(item.1).or_insert(0) += 1;
            let count = index as u64 + 1;
            if level(count, threshold) == Some(count) {
                let seen = &items[..=index];
                let times = seen.iter().map(|i| i.0 * 1_000_000);
                level_at = Some(super::Level {
                    count,
                    item: item.clone(),
                    span_ns: times.clone().max().unwrap() - times.min().unwrap(),
                    tally: tally.clone(),
                });
            }
        }
        let times = items.iter().map(|i| i.0 * 1_000_000);
        Count {
            first: items.iter().take(threshold as usize).cloned().collect(),
            count: items.len() as u64,
            earliest_ns: times.clone().min().unwrap(),
            latest_ns: times.max().unwrap(),
            tally,
            level: level_at,
        }
    }

    /// At every tick, the runs equal a fold from scratch of every item that entered so far:
    /// items on a few keys, at random event times, entering at their own tick or later (late),
    /// some entering twice, some retracted (ignored: items are insert-only).
    #[test]
    fn runs_equal_a_fold_from_scratch_at_every_tick() {
        let (mut long, mut ended, mut split) = (0, 0, 0);
        for seed in 1..=30 {
            let mut rng = Rng::new(seed);
            let step: Tick = 10;
            let threshold = 2 + rng.below(3);
            let within_ms = step * (1 + rng.below(6));
            let keep_for_ms = within_ms + step * rng.below(5);
            let fold = CountFold::<Item>::new(
                threshold,
                within_ms * 1_000_000,
                keep_for_ms * 1_000_000,
                TickClock::new(step),
            );
            let mut input = Vec::new();
            for id in 0..40u32 {
                let key = rng.below(3) as u8;
                let event = rng.below(60) * 5;
                let entry = (event.div_ceil(step) + rng.below(2) * rng.below(4)) * step;
                let item = Item(event, rng.below(3) as u8, id);
                input.push(((key, item.clone()), entry, 1isize));
                match rng.below(8) {
                    0 => input.push(((key, item), entry + step * (1 + rng.below(3)), 1)),
                    1 => input.push(((key, item), entry + step * (1 + rng.below(3)), -1)),
                    _ => {}
                }
            }
            let operator_fold = fold.clone();
            let output = run1(input.clone(), move |items| {
                runs(items, operator_fold.clone(), step)
            });
            let last = input.iter().map(|u| u.1).max().unwrap() + keep_for_ms + 3 * step;
            let expected = naive(&input, step, threshold, within_ms, keep_for_ms, last);
            let mut previous = BTreeMap::new();
            for (tick, want) in expected {
                let want: BTreeMap<(u8, Count<Item>), isize> = want
                    .into_iter()
                    .map(|((key, run), n)| ((key, summary(&run, threshold)), n))
                    .collect();
                assert_eq!(at(&output, tick), want, "seed {seed}, tick {tick}");
                long += want.keys().filter(|(_, run)| run.count > 5).count();
                split += usize::from(want.keys().filter(|(key, _)| *key == 0).count() > 1);
                ended += previous.keys().filter(|k| !want.contains_key(*k)).count();
                previous = want;
            }
            assert!(output.iter().all(|(_, time, _)| time % step == 0));
        }
        assert!(
            long > 20 && ended > 30 && split > 5,
            "{long} {ended} {split}"
        );
    }
}
