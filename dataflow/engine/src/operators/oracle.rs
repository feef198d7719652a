//! Test support: run an operator over scripted updates and compare what it holds at every time
//! with a computation from scratch.

use std::collections::BTreeMap;
use std::sync::mpsc;

use differential_dataflow::input::Input;
use differential_dataflow::{ExchangeData, VecCollection};

use crate::clock::Tick;

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
