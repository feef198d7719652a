//! Reads observations from NATS JetStream (layer L2; depends on `tapio-sources`, `tapio-model`
//! and `tapio-config` only).
//!
//! Two readers of the stream the node agents publish to (`tapio-sinks-nats` documents the
//! subjects and the wire format: one or more observations' JSON lines per message, joined by
//! `\n`):
//!
//! - [`DurableReader`], the input of `tapio run --mode correlation`: a durable pull consumer
//!   with `AckPolicy::All`. It acknowledges a message only once the dataflow has taken it in
//!   (the caller reports that position through a `watch` channel). On start it first re-reads
//!   the stream up to the consumer's acknowledged floor, so that a restarted job rebuilds the
//!   state the previous one held, then continues with the durable consumer from there: a
//!   restart loses nothing.
//! - [`NatsReplaySource`], the input of `tapio replay nats://HOST:PORT/STREAM`: an ordered
//!   consumer over the messages stored when the replay starts, a [`tapio_sources::Source`].
//!
//! Every line of a message is decoded on its own. A line that is not an observation (bad JSON,
//! an impossible time) is counted in [`SourceStats::errors`], logged with its stream sequence,
//! subject and line index, and skipped; the message's other observations are still delivered.
//!
//! ```
//! use tapio_sources_nats::NatsEndpoint;
//! let endpoint = NatsEndpoint::parse_replay_url("nats://127.0.0.1:4222/TAPIO?from_seq=10").unwrap();
//! assert_eq!(endpoint.stream, "TAPIO");
//! assert_eq!(endpoint.from_seq, Some(10));
//! ```

mod durable;
mod replay;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tapio_model::{InvalidObservation, Observation, TimeNs};
use tapio_sources::SourceStats;

pub use durable::{Delivery, DurableReader};
pub use replay::NatsReplaySource;

/// Where to read: a server, a stream, and optionally where in it to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsEndpoint {
    /// Server URL, `nats://host:port`.
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// Subject filter, `<prefix>.>`.
    pub filter_subject: String,
    /// Start at this stream sequence (`DeliverPolicy::ByStartSequence`).
    pub from_seq: Option<u64>,
    /// Start at the first message stored at or after this time, ns since the epoch
    /// (`DeliverPolicy::ByStartTime`; the time the server stored it, not its event time).
    pub since_ns: Option<TimeNs>,
}

/// A `nats://` replay address that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NATS replay address `{address}`: {problem}")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// What is wrong with it.
    pub problem: String,
}

impl NatsEndpoint {
    /// Parses `nats://HOST:PORT/STREAM[?from_seq=N|since=RFC3339]`. The subject filter is
    /// left empty (every subject of the stream).
    ///
    /// # Errors
    /// A missing host or stream, a bad stream name, or an unknown or malformed parameter.
    pub fn parse_replay_url(address: &str) -> Result<NatsEndpoint, AddressError> {
        let fail = |problem: &str| AddressError {
            address: address.to_owned(),
            problem: problem.to_owned(),
        };
        let rest = address
            .strip_prefix("nats://")
            .ok_or_else(|| fail("it must start with nats://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, stream) = rest
            .split_once('/')
            .ok_or_else(|| fail("it must name a stream: nats://HOST:PORT/STREAM"))?;
        if host.is_empty() {
            return Err(fail("it must name a host"));
        }
        if stream.is_empty()
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(fail(
                "the stream name must be non-empty and only A-Z, a-z, 0-9, _ and -",
            ));
        }
        let mut endpoint = NatsEndpoint {
            url: format!("nats://{host}"),
            stream: stream.to_owned(),
            filter_subject: String::new(),
            from_seq: None,
            since_ns: None,
        };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("from_seq", value)) => {
                    endpoint.from_seq = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|seq| *seq > 0)
                            .ok_or_else(|| fail("from_seq must be a stream sequence >= 1"))?,
                    );
                }
                Some(("since", value)) => {
                    let time = time::OffsetDateTime::parse(
                        value,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|_| fail("since must be an RFC 3339 time"))?;
                    endpoint.since_ns = Some(
                        u64::try_from(time.unix_timestamp_nanos())
                            .map_err(|_| fail("since must be after 1970"))?,
                    );
                }
                _ => return Err(fail("the only parameters are from_seq=N and since=TIME")),
            }
        }
        if endpoint.from_seq.is_some() && endpoint.since_ns.is_some() {
            return Err(fail("give from_seq or since, not both"));
        }
        Ok(endpoint)
    }
}

/// Why a message is not an observation.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON of an observation.
    #[error("not an observation: {0}")]
    Json(#[from] serde_json::Error),
    /// Well-formed but impossible.
    #[error(transparent)]
    Invalid(#[from] InvalidObservation),
}

/// Decodes one message payload: an observation's JSON, checked with
/// [`Observation::validate`].
///
/// # Errors
/// When the payload is not a valid observation.
pub fn decode(payload: &[u8]) -> Result<Observation, DecodeError> {
    let observation: Observation = serde_json::from_slice(payload)?;
    observation.validate()?;
    Ok(observation)
}

/// Decodes every line of a message; counts, logs and skips the malformed ones.
fn decode_or_count(
    payload: &[u8],
    stream_sequence: u64,
    subject: &str,
    stats: &Arc<SourceStats>,
) -> Vec<Observation> {
    let mut observations = Vec::new();
    for (line, bytes) in payload.split(|byte| *byte == b'\n').enumerate() {
        stats.received.fetch_add(1, Ordering::Relaxed);
        match decode(bytes) {
            Ok(observation) => observations.push(observation),
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    stream_sequence,
                    subject,
                    line,
                    bytes = bytes.len(),
                    error = %error,
                    "Skipped a malformed observation."
                );
            }
        }
    }
    observations
}

/// Connects to `url`; with `retry`, keeps trying in the background (and reconnecting) instead
/// of failing when the server is down.
async fn connect(url: &str, retry: bool) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("tapio-correlation")
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let exponent = u32::try_from(attempts.min(6)).unwrap_or(6);
            (std::time::Duration::from_millis(50) * 2u32.pow(exponent))
                .min(std::time::Duration::from_secs(2))
        });
    if retry {
        options = options.retry_on_initial_connect();
    }
    options.connect(url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_addresses_parse_and_reject() {
        let endpoint =
            NatsEndpoint::parse_replay_url("nats://h:4222/S?since=2021-05-19T09:43:00Z").unwrap();
        assert_eq!(endpoint.url, "nats://h:4222");
        assert_eq!(endpoint.since_ns, Some(1_621_417_380_000_000_000));
        for bad in [
            "http://h/S",
            "nats://h",
            "nats:///S",
            "nats://h/S.x",
            "nats://h/S?from_seq=0",
            "nats://h/S?x=1",
            "nats://h/S?from_seq=1&since=2021-05-19T09:43:00Z",
        ] {
            assert!(NatsEndpoint::parse_replay_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding_never_panics_and_validates() {
        for bad in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"{\"kind\":\"heartbeat\"}",
            b"null",
        ] {
            assert!(decode(bad).is_err());
        }
        let impossible = br#"{"kind":"heartbeat","source":"k","node":"n","upto_ns":5}"#;
        assert!(matches!(decode(impossible), Err(DecodeError::Invalid(_))));
        let good = br#"{"kind":"heartbeat","source":"k","node":"n","upto_ns":1700000000000000000}"#;
        assert!(decode(good).is_ok());
    }

    #[test]
    fn a_malformed_line_of_a_batch_is_counted_and_the_rest_delivered() {
        let good = r#"{"kind":"heartbeat","source":"k","node":"n","upto_ns":1700000000000000000}"#;
        let payload = format!("{good}\n{{\"kind\":\"fact\",\n{good}");
        let stats = Arc::new(SourceStats::default());
        let observations = decode_or_count(payload.as_bytes(), 7, "p.k.n", &stats);
        assert_eq!(observations.len(), 2);
        assert_eq!(stats.received.load(Ordering::Relaxed), 3);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
    }
}
