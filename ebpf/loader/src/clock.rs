//! Kernel monotonic time to wall-clock time.
//!
//! eBPF programs stamp records with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) and tasks carry
//! `start_time` on the same clock. Tapio's event time is wall-clock ns since the Unix epoch,
//! so the reader adds the offset CLOCK_REALTIME − CLOCK_MONOTONIC. The offset moves when the
//! wall clock is stepped or slewed, so event times use a periodically refreshed offset, while
//! process start times use the offset taken once at start, so that every record about one
//! process names it with the same `start_ns`.

use nix::time::{ClockId, clock_gettime};

/// Reads CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    read(ClockId::CLOCK_MONOTONIC)
}

/// Reads CLOCK_REALTIME in ns since the Unix epoch.
pub fn realtime_ns() -> u64 {
    read(ClockId::CLOCK_REALTIME)
}

fn read(clock: ClockId) -> u64 {
    clock_gettime(clock).map_or(0, |ts| {
        (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64)
    })
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns: the best of a few samples (the one whose two
/// realtime reads were closest, so the monotonic read sits tightly between them).
pub fn realtime_offset_ns() -> u64 {
    let mut best = (u64::MAX, 0u64);
    for _ in 0..5 {
        let before = realtime_ns();
        let mono = monotonic_ns();
        let after = realtime_ns();
        let gap = after.saturating_sub(before);
        if gap < best.0 {
            best = (gap, (before + gap / 2).saturating_sub(mono));
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_turns_monotonic_into_now() {
        let offset = realtime_offset_ns();
        let converted = monotonic_ns() + offset;
        let now = realtime_ns();
        assert!(now.abs_diff(converted) < 50_000_000, "{now} vs {converted}");
    }
}
