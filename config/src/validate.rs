//! Pure value checks: ranges, required fields and URL shapes. No I/O, no lookups.

use std::time::Duration;

use crate::duration;
use crate::error::{ConfigError, ConfigErrorKind};
use crate::model::TapioConfig;

/// URI schemes a Neo4j driver accepts.
const NEO4J_SCHEMES: [&str; 6] = [
    "bolt",
    "bolt+s",
    "bolt+ssc",
    "neo4j",
    "neo4j+s",
    "neo4j+ssc",
];
/// URL schemes a NATS client accepts.
const NATS_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// Runs every check in document order and returns the first failure, without location.
pub(crate) fn validate(config: &TapioConfig) -> Result<(), ConfigError> {
    config.collectors.validate("collectors")?;

    config.correlation.validate("correlation")?;

    let neo4j = &config.integrations.neo4j;
    if has_user_info(&neo4j.uri) {
        return Err(invalid(
            "integrations.neo4j.uri",
            "must not hold a password (`user:password@`): give the user in \
             integrations.neo4j.username and the password in TAPIO_NEO4J_PASSWORD or \
             integrations.neo4j.password_file"
                .to_owned(),
        ));
    }
    if !neo4j.uri.is_empty() {
        check_url(&neo4j.uri, &NEO4J_SCHEMES).map_err(|problem| {
            invalid(
                "integrations.neo4j.uri",
                format!("{problem}, got `{}`", neo4j.uri),
            )
        })?;
    }

    let nats = &config.integrations.nats;
    if has_user_info(&nats.url) {
        // The URL is printed in logs and errors; what it holds before `@` would be too.
        return Err(invalid(
            "integrations.nats.url",
            "must not hold a password (`user:password@`): give them in TAPIO_NATS_USER and \
             TAPIO_NATS_PASSWORD, or integrations.nats.user and password_file"
                .to_owned(),
        ));
    }
    if !nats.url.is_empty() {
        check_url(&nats.url, &NATS_SCHEMES).map_err(|problem| {
            invalid(
                "integrations.nats.url",
                format!("{problem}, got `{}`", nats.url),
            )
        })?;
    }
    check_stream_name(&nats.stream)?;
    check_subject_prefix(&nats.subject_prefix)?;
    if !["limits", "interest"].contains(&nats.retention.as_str()) {
        return Err(invalid(
            "integrations.nats.retention",
            format!("must be `limits` or `interest`, got `{}`", nats.retention),
        ));
    }
    duration_in(
        "integrations.nats.duplicate_window",
        nats.duplicate_window,
        Duration::from_secs(1),
        Duration::from_secs(24 * 60 * 60),
    )?;
    if !nats.max_age.is_zero() && nats.duplicate_window > nats.max_age {
        return Err(invalid(
            "integrations.nats.duplicate_window",
            format!(
                "must not exceed integrations.nats.max_age ({}), got {}",
                duration::format(nats.max_age),
                duration::format(nats.duplicate_window)
            ),
        ));
    }
    if i64::try_from(nats.max_bytes).is_err() {
        return Err(invalid(
            "integrations.nats.max_bytes",
            format!("must be at most {}, got {}", i64::MAX, nats.max_bytes),
        ));
    }
    check_name("integrations.nats.consumer", &nats.consumer)?;
    count_in(
        "integrations.nats.max_pending_publishes",
        nats.max_pending_publishes,
        1,
        1_000_000,
    )?;
    duration_in(
        "integrations.nats.publish_timeout",
        nats.publish_timeout,
        Duration::from_millis(10),
        Duration::from_secs(60),
    )?;
    duration_in(
        "integrations.nats.max_unacknowledged_span",
        nats.max_unacknowledged_span,
        Duration::ZERO,
        HOUR,
    )?;
    // The agent and the correlation job may read different files; where one file uses NATS
    // and holds both, a span that reaches the lateness lets a reconnect make facts late, so it
    // is refused.
    let lateness = config.correlation.engine.lateness;
    if !nats.url.is_empty() && nats.max_unacknowledged_span >= lateness {
        return Err(invalid(
            "integrations.nats.max_unacknowledged_span",
            format!(
                "must be below correlation.engine.lateness ({}), got {}: a lost connection can \
                 reorder what is unacknowledged by up to this span",
                humantime::format_duration(lateness),
                humantime::format_duration(nats.max_unacknowledged_span)
            ),
        ));
    }
    if nats.spool_path.trim().is_empty() {
        return Err(invalid("integrations.nats.spool_path", "must not be empty"));
    }
    if nats.spool_max_bytes < 1024 {
        return Err(invalid(
            "integrations.nats.spool_max_bytes",
            format!("must be at least 1024, got {}", nats.spool_max_bytes),
        ));
    }

    let store = &config.store;
    count_in("store.history_count", store.history_count, 0, 10_000_000)?;
    duration_in(
        "store.history_max_age",
        store.history_max_age,
        Duration::ZERO,
        720 * HOUR,
    )?;
    count_in("store.facts_per_entity", store.facts_per_entity, 0, 100_000)?;
    count_in("store.facts_max", store.facts_max, 0, 10_000_000)?;

    let api = &config.api;
    if api.address.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "api.address",
            format!(
                "must be an IP address and a port, e.g. 127.0.0.1:7600 or [::1]:7600, got `{}`",
                api.address
            ),
        ));
    }
    if api.token_env.is_empty()
        || !api
            .token_env
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(invalid(
            "api.token_env",
            format!(
                "must be an environment variable name of A-Z, 0-9 and _, got `{}`",
                api.token_env
            ),
        ));
    }
    count_in("api.max_limit", api.max_limit, 1, 100_000)?;
    Ok(())
}

/// Dot-separated subject tokens of ASCII letters, digits, `_` and `-`.
fn check_subject_prefix(prefix: &str) -> Result<(), ConfigError> {
    const KEY: &str = "integrations.nats.subject_prefix";
    if prefix.split('.').any(str::is_empty) {
        return Err(invalid(
            KEY,
            format!("must be dot-separated non-empty tokens, got `{prefix}`"),
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(
            KEY,
            format!("may contain only A-Z, a-z, 0-9, _, - and ., got {bad:?} in `{prefix}`"),
        ));
    }
    Ok(())
}

pub(crate) const HOUR: Duration = Duration::from_secs(60 * 60);
pub(crate) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) fn invalid(key_path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(ConfigErrorKind::InvalidValue, key_path, message)
}

pub(crate) fn count_in(
    key_path: &str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key_path,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

pub(crate) fn duration_in(
    key_path: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key_path,
            format!(
                "must be between {} and {}, got {}",
                duration::format(min),
                duration::format(max),
                duration::format(value)
            ),
        ))
    }
}

/// Checks `scheme://host[:port][/...]` with a scheme from `schemes` (case-insensitive) and a
/// non-empty host. Returns what is wrong, as a message fragment.
/// Whether the authority of `url` has a password (`user:password@`).
fn has_user_info(url: &str) -> bool {
    url.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        authority
            .rsplit_once('@')
            .is_some_and(|(user_info, _)| user_info.contains(':'))
    })
}

pub(crate) fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let expected = || format!("scheme must be one of {}", schemes.join(", "));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "must look like scheme://host[:port]; {}",
            expected()
        ));
    };
    if !schemes
        .iter()
        .any(|known| known.eq_ignore_ascii_case(scheme))
    {
        return Err(expected());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = match authority.rsplit_once('@') {
        Some((_user_info, host_port)) => host_port,
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // An IPv6 literal: [::1]:4222
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("has an unclosed [ in its host".to_owned());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("has unexpected text after its [host]".to_owned()),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has whitespace in its host".to_owned());
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!(
            "has an invalid port `{port}`, expected a number from 0 to 65535"
        ));
    }
    Ok(())
}

/// JetStream stream names: non-empty, ASCII letters, digits, `_` and `-` only.
fn check_stream_name(stream: &str) -> Result<(), ConfigError> {
    check_name("integrations.nats.stream", stream)
}

/// JetStream names (streams, consumers): non-empty, ASCII letters, digits, `_` and `-` only.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(invalid(
            key,
            format!("may contain only A-Z, a-z, 0-9, _ and -, got {bad:?} in `{name}`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let nats = &NATS_SCHEMES;
        assert!(check_url("nats://127.0.0.1:4222", nats).is_ok());
        assert!(check_url("NATS://host", nats).is_ok());
        assert!(check_url("tls://user:pw@host:4443/path", nats).is_ok());
        assert!(check_url("wss://[::1]:443", nats).is_ok());
        assert!(check_url("ws://[::1]", nats).is_ok());
        assert!(check_url("http://host", nats).is_err());
        assert!(check_url("nats://", nats).is_err());
        assert!(check_url("nats://:4222", nats).is_err());
        assert!(check_url("nats://host:99999", nats).is_err());
        assert!(check_url("nats://host:", nats).is_err());
        assert!(check_url("nats://[::1", nats).is_err());
        assert!(check_url("nats://[::1]x", nats).is_err());
        assert!(check_url("host:4222", nats).is_err());
        assert!(check_url("nats://a b", nats).is_err());
        let neo4j = &NEO4J_SCHEMES;
        assert!(check_url("bolt+ssc://db.example:7687", neo4j).is_ok());
        assert!(check_url("neo4j+s://db", neo4j).is_ok());
        assert!(check_url("nats://db", neo4j).is_err());
    }

    #[test]
    fn stream_names() {
        assert!(check_stream_name("TAPIO_events-1").is_ok());
        assert!(check_stream_name("").is_err());
        assert!(check_stream_name("a.b").is_err());
        assert!(check_stream_name("a b").is_err());
        assert!(check_stream_name("*").is_err());
    }
}
