//! Logical time: event time rounded up to ticks, and watermarks from heartbeats.

use std::collections::BTreeMap;

use tapio_model::{Heartbeat, TimeNs};

/// Logical time inside the dataflow: milliseconds since the Unix epoch, always a multiple of
/// the tick.
pub type Tick = u64;

const NS_PER_MS: u64 = 1_000_000;

/// Converts between event time and ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickClock {
    tick_ms: u64,
}

impl TickClock {
    /// A clock with ticks of `tick_ms` milliseconds (at least 1).
    pub fn new(tick_ms: u64) -> TickClock {
        TickClock {
            tick_ms: tick_ms.max(1),
        }
    }

    /// Tick length in milliseconds.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// The tick an event at `time_ns` belongs to: its time rounded **up** to a tick boundary,
    /// so a tick `t` holds the events in `(t - tick, t]`.
    pub fn tick_of(&self, time_ns: TimeNs) -> Tick {
        let ms = time_ns.div_ceil(NS_PER_MS);
        ms.div_ceil(self.tick_ms).saturating_mul(self.tick_ms)
    }

    /// The largest tick boundary at or below `time_ns`.
    pub fn floor(&self, time_ns: TimeNs) -> Tick {
        (time_ns / NS_PER_MS) / self.tick_ms * self.tick_ms
    }

    /// A duration in nanoseconds as a whole number of milliseconds, rounded up.
    pub fn ms(duration_ns: u64) -> u64 {
        duration_ns.div_ceil(NS_PER_MS)
    }

    /// A tick as event time (ns).
    pub fn to_ns(tick: Tick) -> TimeNs {
        tick.saturating_mul(NS_PER_MS)
    }
}

/// Tracks every source's heartbeat and derives how far the dataflow's input may advance.
///
/// The watermark is the minimum of the latest heartbeat of every (source, node) seen so far;
/// the input time is that minus the lateness bound, floored to a tick. It never moves back.
#[derive(Debug)]
pub struct Watermark {
    clock: TickClock,
    lateness_ns: u64,
    sources: BTreeMap<(String, String), TimeNs>,
    input_tick: Tick,
}

impl Watermark {
    /// A watermark with nothing seen yet.
    pub fn new(clock: TickClock, lateness_ns: u64) -> Watermark {
        Watermark {
            clock,
            lateness_ns,
            sources: BTreeMap::new(),
            input_tick: 0,
        }
    }

    /// Records a heartbeat; returns the (possibly advanced) input tick.
    pub fn observe(&mut self, heartbeat: &Heartbeat) -> Tick {
        let key = (heartbeat.source.clone(), heartbeat.node.clone());
        let entry = self.sources.entry(key).or_insert(0);
        *entry = (*entry).max(heartbeat.upto_ns);
        let min = self.sources.values().copied().min().unwrap_or(0);
        let candidate = self.clock.floor(min.saturating_sub(self.lateness_ns));
        self.input_tick = self.input_tick.max(candidate);
        self.input_tick
    }

    /// The tick the inputs may advance to: nothing earlier can still arrive on time.
    pub fn input_tick(&self) -> Tick {
        self.input_tick
    }

    /// The latest time any source has promised, as a tick (0 before any heartbeat).
    pub fn latest_promise(&self) -> Tick {
        self.sources
            .values()
            .copied()
            .max()
            .map_or(0, |latest| self.clock.tick_of(latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(source: &str, upto_ns: TimeNs) -> Heartbeat {
        Heartbeat {
            source: source.into(),
            node: "n".into(),
            upto_ns,
        }
    }

    #[test]
    fn ticks_round_up() {
        let clock = TickClock::new(100);
        assert_eq!(clock.tick_of(0), 0);
        assert_eq!(clock.tick_of(1), 100);
        assert_eq!(clock.tick_of(100_000_000), 100);
        assert_eq!(clock.tick_of(100_000_001), 200);
        assert_eq!(clock.floor(199_999_999), 100);
    }

    #[test]
    fn watermark_is_min_of_sources_minus_lateness_and_never_moves_back() {
        let mut mark = Watermark::new(TickClock::new(100), 2_000_000_000);
        assert_eq!(mark.observe(&beat("a", 10_000_000_000)), 8_000);
        assert_eq!(mark.observe(&beat("b", 12_000_000_000)), 8_000);
        assert_eq!(mark.observe(&beat("a", 13_050_000_000)), 10_000);
        // A new, older source cannot move the input time back.
        assert_eq!(mark.observe(&beat("c", 1_000_000_000)), 10_000);
        assert_eq!(mark.latest_promise(), 13_100);
    }
}
