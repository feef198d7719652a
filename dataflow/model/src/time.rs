//! Event time and small helpers shared by every layer.

/// Event time: nanoseconds since the Unix epoch, wall clock.
///
/// Kernel timestamps (CLOCK_MONOTONIC) are converted to this by the collecting agent.
pub type TimeNs = u64;

/// Earliest event time Tapio accepts: 2000-01-01T00:00:00Z. Anything earlier is a broken clock
/// or a monotonic timestamp that was never converted.
pub const MIN_PLAUSIBLE_NS: TimeNs = 946_684_800_000_000_000;

/// Latest event time Tapio accepts: 2200-01-01T00:00:00Z.
pub const MAX_PLAUSIBLE_NS: TimeNs = 7_258_118_400_000_000_000;

/// Formats an event time as RFC 3339 UTC with millisecond precision, for humans.
///
/// ```
/// assert_eq!(tapio_model::format_time(1_621_417_378_640_117_041), "2021-05-19T09:42:58.640Z");
/// ```
pub fn format_time(time: TimeNs) -> String {
    let secs = time / 1_000_000_000;
    let millis = (time % 1_000_000_000) / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days` algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A stable 64-bit FNV-1a hash, for routing records to workers.
///
/// Unlike `std` hashers and differential's `Hashable`, its value never changes between builds,
/// so it may be persisted (for example as a partition id).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_leap_day() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:00:00.5Z
        assert_eq!(
            format_time(1_709_208_000_500_000_000),
            "2024-02-29T12:00:00.500Z"
        );
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
