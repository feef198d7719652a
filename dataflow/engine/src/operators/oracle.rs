//! Test support: run an operator over scripted updates, or a rule over a scripted stream (with
//! [`crate::harness`]), and compare what it holds at every time with a computation from scratch.

use std::collections::BTreeMap;
use std::sync::mpsc;

use differential_dataflow::input::Input;
use differential_dataflow::{ExchangeData, VecCollection};
use tapio_model::{Correlation, Fact, Heartbeat, Observation, TimeNs};

use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};

/// A small deterministic random generator (xorshift64*), so failures reproduce.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// Updates `(data, time, diff)`.
pub(crate) type Updates<D> = Vec<(D, Tick, isize)>;

/// What `updates` hold at `time`: every datum with its accumulated count, zeros left out.
pub(crate) fn at<D: Ord + Clone>(updates: &[(D, Tick, isize)], time: Tick) -> BTreeMap<D, isize> {
    let mut held = BTreeMap::new();
    for (data, at, diff) in updates {
        if *at <= time {
            *held.entry(data.clone()).or_insert(0) += diff;
        }
    }
    held.retain(|_, count| *count != 0);
    held
}

/// Runs `build` over two inputs fed with `left` and `right` in time order, to the end of time,
/// and returns every output update.
pub(crate) fn run2<L, R, O, F>(left: Updates<L>, right: Updates<R>, build: F) -> Updates<O>
where
    L: ExchangeData + Sync,
    R: ExchangeData + Sync,
    O: ExchangeData,
    F: for<'scope> Fn(
            VecCollection<'scope, Tick, L, isize>,
            VecCollection<'scope, Tick, R, isize>,
        ) -> VecCollection<'scope, Tick, O, isize>
        + Send
        + Sync
        + 'static,
{
    timely::execute_directly(move |worker| {
        let (out_tx, out_rx) = mpsc::channel();
        let (mut left_in, mut right_in, probe) = worker.dataflow::<Tick, _, _>(|scope| {
            let (left_in, left_data) = scope.new_collection::<L, isize>();
            let (right_in, right_data) = scope.new_collection::<R, isize>();
            let (probe, out) = build(left_data, right_data).probe();
            out.inspect(move |(data, time, diff)| {
                let _ = out_tx.send((data.clone(), *time, *diff));
            });
            (left_in, right_in, probe)
        });
        let mut times: Vec<Tick> = left
            .iter()
            .map(|u| u.1)
            .chain(right.iter().map(|u| u.1))
            .collect();
        times.sort_unstable();
        times.dedup();
        for time in times {
            left_in.advance_to(time);
            right_in.advance_to(time);
            for (data, _, diff) in left.iter().filter(|u| u.1 == time) {
                left_in.update(data.clone(), *diff);
            }
            for (data, _, diff) in right.iter().filter(|u| u.1 == time) {
                right_in.update(data.clone(), *diff);
            }
        }
        drop(left_in);
        drop(right_in);
        while !probe.done() {
            worker.step();
        }
        out_rx.try_iter().collect()
    })
}

/// [`run2`] with one input.
pub(crate) fn run1<D, O, F>(input: Updates<D>, build: F) -> Updates<O>
where
    D: ExchangeData + Sync,
    O: ExchangeData,
    F: for<'scope> Fn(
            VecCollection<'scope, Tick, D, isize>,
        ) -> VecCollection<'scope, Tick, O, isize>
        + Send
        + Sync
        + 'static,
{
    run2(input, Vec::<((), Tick, isize)>::new(), move |data, _| {
        build(data)
    })
}

/// Every time at which something changes in `updates` or `more`.
pub(crate) fn times<A, B>(updates: &[(A, Tick, isize)], more: &[(B, Tick, isize)]) -> Vec<Tick> {
    let mut times: Vec<Tick> = updates
        .iter()
        .map(|u| u.1)
        .chain(more.iter().map(|u| u.1))
        .collect();
    times.sort_unstable();
    times.dedup();
    times
}

// === Streams for rules ===

/// 2026-01-01T00:00:00Z, where scripted streams start.
pub(crate) const T0: TimeNs = 1_767_225_600_000_000_000;

/// One millisecond, ns.
pub(crate) const MS: TimeNs = 1_000_000;

/// Heartbeats of one source every `every` ns, from `from` up to `to`.
pub(crate) fn heartbeats(from: TimeNs, to: TimeNs, every: TimeNs) -> Vec<Observation> {
    (0..)
        .map(|i| from + i * every)
        .take_while(|upto_ns| *upto_ns <= to)
        .map(|upto_ns| {
            Observation::Heartbeat(Heartbeat {
                source: "oracle".into(),
                node: "n".into(),
                upto_ns,
            })
        })
        .collect()
}

/// The stream as it arrives when each fact or state update is delayed by `delay` ns after its
/// event time (heartbeats are sent at their promise): sorted by arrival, heartbeats after
/// whatever arrives with them, otherwise in stream order.
pub(crate) fn arrival_order(
    stream: &[Observation],
    mut delay: impl FnMut(&Observation) -> u64,
) -> Vec<Observation> {
    let mut arrivals: Vec<(TimeNs, bool, usize)> = stream
        .iter()
        .enumerate()
        .map(|(index, observation)| match observation {
            Observation::Heartbeat(beat) => (beat.upto_ns, true, index),
            other => (other.time_ns() + delay(other), false, index),
        })
        .collect();
    arrivals.sort_unstable();
    arrivals
        .into_iter()
        .map(|(_, _, index)| stream[index].clone())
        .collect()
}

/// The stream as it arrives when every observation is delayed by less than `lateness` ns,
/// except one fact in ten, which comes between one and five times `lateness` late: the arrival
/// the rules' oracle tests use, late facts included.
pub(crate) fn arrival_with_late_facts(
    stream: &[Observation],
    rng: &mut Rng,
    lateness: u64,
) -> Vec<Observation> {
    arrival_order(stream, |observation| match observation {
        Observation::Fact(_) if rng.below(10) == 0 => lateness + rng.below(4 * lateness),
        _ => rng.below(lateness),
    })
}

/// Asserts that `harness` gives the same batches as `in_order` on `shuffled` (the stream in
/// another arrival order within the lateness bound), on one worker and on two; returns the
/// one-worker run on `shuffled`.
pub(crate) fn same_for_any_order_and_two_workers(
    harness: &RuleHarness,
    shuffled: Vec<Observation>,
    in_order: &RuleRun,
    seed: u64,
) -> RuleRun {
    let reordered = harness.run(shuffled.clone()).expect("run");
    assert_eq!(reordered.batches, in_order.batches, "seed {seed}");
    let two = harness.clone().workers(2).run(shuffled).expect("run");
    assert_eq!(two.batches, in_order.batches, "seed {seed}, 2 workers");
    reordered
}

/// From scratch, for a stream with one heartbeat source: the tick each observation enters at.
/// A fact or state update enters at its own tick, or at the input tick if that is later (the
/// latest promise minus the lateness, floored to a tick); `None` for heartbeats and for facts
/// that `reads` rejects.
pub(crate) fn entry_ticks(
    arrived: &[Observation],
    clock: TickClock,
    lateness_ns: u64,
    reads: impl Fn(&Fact) -> bool,
) -> Vec<Option<Tick>> {
    let mut input: Tick = 0;
    arrived
        .iter()
        .map(|observation| match observation {
            Observation::Heartbeat(beat) => {
                input = input.max(clock.floor(beat.upto_ns.saturating_sub(lateness_ns)));
                None
            }
            Observation::Fact(fact) if !reads(fact) => None,
            other => Some(clock.tick_of(other.time_ns()).max(input)),
        })
        .collect()
}

/// What a check at every tick saw, so that a test can show it was not vacuous.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Ticks at which the rule held something.
    pub(crate) ticks_holding: usize,
    /// Correlations that appeared.
    pub(crate) appeared: usize,
    /// Correlations that were retracted.
    pub(crate) retracted: usize,
}

/// At every closed tick of `run`, from the tick before anything entered to the last, the sum of
/// the changes up to that tick equals `expected(tick)`.
pub(crate) fn assert_every_tick(
    run: &RuleRun,
    clock: TickClock,
    mut expected: impl FnMut(Tick) -> BTreeMap<Correlation, i64>,
    context: &str,
) -> Seen {
    let mut seen = Seen::default();
    let Some(first) = run.entered.iter().flatten().min() else {
        assert!(run.batches.is_empty(), "{context}: output without input");
        return seen;
    };
    let mut held: BTreeMap<Correlation, i64> = BTreeMap::new();
    let mut batches = run.batches.iter().peekable();
    let mut tick = first.saturating_sub(clock.tick_ms());
    while tick <= run.report.last_tick {
        while let Some(batch) = batches.next_if(|batch| batch.time <= TickClock::to_ns(tick)) {
            for (correlation, diff) in &batch.changes {
                if *diff > 0 {
                    seen.appeared += 1;
                } else {
                    seen.retracted += 1;
                }
                *held.entry(correlation.clone()).or_insert(0) += diff;
            }
            held.retain(|_, count| *count != 0);
        }
        let want = expected(tick);
        if held != want {
            let extra: Vec<_> = held
                .iter()
                .filter(|(c, n)| want.get(*c) != Some(n))
                .collect();
            let missing: Vec<_> = want
                .iter()
                .filter(|(c, n)| held.get(*c) != Some(n))
                .collect();
            panic!("{context}, tick {tick}:\nunexpected {extra:#?}\nmissing {missing:#?}");
        }
        seen.ticks_holding += usize::from(!held.is_empty());
        tick += clock.tick_ms();
    }
    assert!(
        batches.next().is_none(),
        "{context}: batches after the last tick"
    );
    seen
}
