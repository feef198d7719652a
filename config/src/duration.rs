//! Durations as humantime strings (`100ms`, `2s`, `10m`, `24h`) in YAML, [`Duration`] in Rust.

use std::fmt;
use std::time::Duration;

use serde::{Deserializer, Serializer};

/// Units used when writing a duration back out, largest first: (nanoseconds per unit, suffix).
const UNITS: [(u128, &str); 6] = [
    (3_600_000_000_000, "h"),
    (60_000_000_000, "m"),
    (1_000_000_000, "s"),
    (1_000_000, "ms"),
    (1_000, "us"),
    (1, "ns"),
];

/// Formats `duration` as a humantime string that [`humantime::parse_duration`] reads back to the
/// same value: the largest unit that divides it exactly (`24h`, `90s`, `1500ms`), `0s` for zero,
/// or, when that count would not fit in a `u64`, a sum of units such as `5h 3ms`.
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (size, suffix) in UNITS {
        if nanos.is_multiple_of(size) {
            let count = nanos / size;
            if u64::try_from(count).is_ok() {
                return format!("{count}{suffix}");
            }
            break;
        }
    }
    let mut rest = nanos;
    let mut parts = Vec::new();
    for (size, suffix) in UNITS {
        let count = rest / size;
        rest %= size;
        if count > 0 {
            parts.push(format!("{count}{suffix}"));
        }
    }
    parts.join(" ")
}

/// Parses a humantime duration, with a message that names the accepted form on failure.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!("invalid duration `{text}` ({error}); write a number with a unit such as 100ms, 2s, 10m or 24h")
    })
}

/// Serde `with` module: a [`Duration`] stored as a humantime string.
pub mod humantime_str {
    use super::*;

    /// Writes the duration as a humantime string (see [`super::format`]).
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*duration))
    }

    /// Reads a humantime string such as `100ms`; a bare number without unit is rejected.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Accepts only strings: YAML scalars reach it as text, so `5` (no unit) fails with a clear message.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, such as 100ms, 2s, 10m or 24h")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(100)), "100ms");
        assert_eq!(format(Duration::from_secs(2)), "2s");
        assert_eq!(format(Duration::from_secs(600)), "10m");
        assert_eq!(format(Duration::from_secs(86_400)), "24h");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(format(Duration::from_nanos(7)), "7ns");
        assert_eq!(format(Duration::from_micros(3)), "3us");
    }

    #[test]
    fn formatted_durations_parse_back() {
        let samples = [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(100),
            Duration::from_secs(86_400),
            Duration::new(5, 3),
            Duration::new(u64::MAX, 999_999_999),
            Duration::new(u64::MAX, 0),
            Duration::new(u64::MAX / 2, 1),
        ];
        for duration in samples {
            let text = format(duration);
            assert_eq!(parse(&text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn bare_numbers_are_rejected_except_zero() {
        assert!(parse("5").is_err());
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("").is_err());
        assert!(parse("fast").is_err());
    }
}
