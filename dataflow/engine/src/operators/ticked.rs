//! Ticks in order: a keyed state machine driven one closed tick at a time.
//!
//! Some folds are cheap to state as "for each tick, in order, change the state of the keys it
//! touches" and costly to state with joins and reduces, because every change would have to be
//! undone at a later time. [`in_tick_order`] runs such a state machine ([`InTickOrder`]) as one
//! timely operator: updates are routed by key, held until every worker has passed their tick,
//! and handed over tick by tick, earliest first, together with the ticks the state asks to be
//! woken at (a run's end). What it returns is emitted at that tick. The result is the same
//! however the input was batched, spread over workers or delayed, because a tick is taken only
//! once it is complete.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::clock::Tick;

/// A state machine fed one complete tick at a time.
pub(crate) trait InTickOrder: 'static {
    /// What it reads.
    type In: ExchangeData;
    /// What it emits.
    type Out: ExchangeData;

    /// The earliest tick at which the state has work of its own, with no input (a run that
    /// ends then), if any.
    fn wakes_at(&self) -> Option<Tick>;

    /// Handles `tick`: the updates that arrived at it (possibly none) and anything of its own
    /// due then. Returns the changes to the output at `tick`.
    fn take(&mut self, tick: Tick, updates: Vec<(Self::In, isize)>) -> Vec<(Self::Out, isize)>;
}

/// Runs `state` over `input`, routing each update to a worker by `route` (every update of one
/// key must route alike), and returns its output.
pub(crate) fn in_tick_order<'scope, S: InTickOrder>(
    input: VecCollection<'scope, Tick, S::In, isize>,
    route: impl Fn(&S::In) -> u64 + 'static,
    name: &str,
    mut state: S,
) -> VecCollection<'scope, Tick, S::Out, isize> {
    let by_key = Exchange::new(move |(data, _, _): &(S::In, Tick, isize)| route(data));
    input
        .inner
        .unary_frontier(by_key, name, move |_, _| {
            let mut pending: BTreeMap<Tick, Vec<(S::In, isize)>> = BTreeMap::new();
            // At or before every tick still to handle: the earliest of `pending` and of the
            // state's own.
            let mut held: Option<Capability<Tick>> = None;
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    if let Some(capability) = capability.retain_least(0)
                        && held
                            .as_ref()
                            .is_none_or(|held| capability.time() < held.time())
                    {
                        held = Some(capability);
                    }
                    for (update, tick, diff) in data.drain(..) {
                        pending.entry(tick).or_default().push((update, diff));
                    }
                });
                while let Some(next) = earliest(pending.keys().next().copied(), state.wakes_at()) {
                    if frontier.less_equal(&next) {
                        break;
                    }
                    let Some(capability) = held.as_ref() else {
                        break;
                    };
                    let updates = pending.remove(&next).unwrap_or_default();
                    let changes = state.take(next, updates);
                    if !changes.is_empty() {
                        let at = capability.delayed(&next);
                        output.session(&at).give_iterator(
                            changes.into_iter().map(|(out, diff)| (out, next, diff)),
                        );
                    }
                }
                match earliest(pending.keys().next().copied(), state.wakes_at()) {
                    Some(tick) => {
                        if let Some(capability) = held.as_mut()
                            && *capability.time() < tick
                        {
                            capability.downgrade(&tick);
                        }
                    }
                    None => held = None,
                }
            }
        })
        .as_collection()
}

/// The earlier of two ticks that may be missing.
fn earliest(a: Option<Tick>, b: Option<Tick>) -> Option<Tick> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
