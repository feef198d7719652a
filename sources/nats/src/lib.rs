//! Reads observations from NATS JetStream (layer L2; depends on `tapio-sources`, `tapio-model`
//! and `tapio-config` only).
//!
//! Two readers of the stream the node agents publish to (`tapio-sinks-nats` documents the
//! subjects and the wire format: one or more observations' JSON lines per message, joined by
//! `\n`):
//!
//! - [`DurableReader`], the input of `tapio run --mode correlation` (as a source:
//!   [`consumer_from_config`]): a durable pull consumer with `AckPolicy::All`. It acknowledges
//!   a message only once the dataflow has taken it in (the pipeline reports that position
//!   through [`tapio_sources::Positions::taken_in`]). On start it first re-reads
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

mod auth;
mod durable;
mod replay;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tapio_config::NatsSecurity;
use tapio_model::{InvalidObservation, Observation, TimeNs};
use tapio_sources::SourceStats;

pub use auth::{CredentialsError, with_credentials};
pub use durable::{DurableReader, NatsConsumerSource, consumer_from_config};
pub use replay::NatsReplaySource;
pub use tapio_sources::Delivery;

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
    /// Credentials and TLS files.
    pub security: NatsSecurity,
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
            security: NatsSecurity::default(),
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
    let observation = match decode_tag_first(payload) {
        Some(observation) => observation,
        None => serde_json::from_slice(payload)?,
    };
    observation.validate()?;
    Ok(observation)
}

/// The common case, as Tapio's encoder writes it: the `"kind"` tag first. Deserializing the
/// variant's struct directly skips serde's buffering of every field of an internally tagged
/// enum, which was most of the decoding time. `None` when the line is not in that form or does
/// not decode that way, and the generic path decides (with its own error); also when the rest
/// could hold another `kind` key (the bytes `"kind"`, or a `\u` escape that could spell it),
/// which the generic path rejects as a duplicate tag, so both paths accept exactly the same
/// lines.
fn decode_tag_first(payload: &[u8]) -> Option<Observation> {
    const FACT: &[u8] = b"{\"kind\":\"fact\",";
    const STATE: &[u8] = b"{\"kind\":\"state\",";
    const HEARTBEAT: &[u8] = b"{\"kind\":\"heartbeat\",";
    let (kind, rest) = [FACT, STATE, HEARTBEAT]
        .into_iter()
        .enumerate()
        .find_map(|(kind, prefix)| Some((kind, payload.strip_prefix(prefix)?)))?;
    if rest.windows(2).any(|pair| pair == b"\\u") || rest.windows(6).any(|six| six == b"\"kind\"") {
        return None;
    }
    let mut object = Vec::with_capacity(rest.len() + 1);
    object.push(b'{');
    object.extend_from_slice(rest);
    match kind {
        0 => serde_json::from_slice(&object).ok().map(Observation::Fact),
        1 => serde_json::from_slice(&object).ok().map(Observation::State),
        _ => serde_json::from_slice(&object)
            .ok()
            .map(Observation::Heartbeat),
    }
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

/// The subject filter of the stream the node agents publish to: `<prefix>.>`.
fn stream_subject(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Connects to `url`; with `retry`, keeps trying in the background (and reconnecting) instead
/// of failing when the server is down.
async fn connect(endpoint: &NatsEndpoint, retry: bool) -> Result<async_nats::Client, ConnectError> {
    let mut options = with_credentials(async_nats::ConnectOptions::new(), &endpoint.security)
        .await?
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
    Ok(options.connect(endpoint.url.as_str()).await?)
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The client refused the URL or options.
    #[error(transparent)]
    Client(#[from] async_nats::ConnectError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct path and serde's generic one accept the same lines and decode them alike.
    fn assert_same_decoding(line: &[u8]) {
        let generic = serde_json::from_slice::<Observation>(line).ok();
        let direct = decode_tag_first(line);
        if direct.is_some() {
            assert_eq!(direct, generic, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(
            decode(line).ok(),
            generic.filter(|o| o.validate().is_ok()),
            "{}",
            String::from_utf8_lossy(line)
        );
    }

    #[test]
    fn the_direct_decoding_agrees_with_serde_on_recordings_and_odd_lines() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/recordings");
        let mut direct = 0;
        for entry in std::fs::read_dir(&dir).expect("the recordings directory") {
            let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("a file");
            for line in text.lines().skip(1) {
                assert_same_decoding(line.as_bytes());
                direct += usize::from(decode_tag_first(line.as_bytes()).is_some());
                // Every prefix, which cuts the line anywhere.
                for end in (0..line.len()).step_by(7) {
                    assert_same_decoding(&line.as_bytes()[..end]);
                }
            }
        }
        assert!(direct > 100, "only {direct} lines took the direct path");
        let beat =
            r#"{"kind":"heartbeat","source":"kernel","node":"n","upto_ns":1700000000000000000}"#;
        for odd in [
            beat.to_owned(),
            beat.replace(r#""node""#, r#""kind":"fact","node""#),
            beat.replace(r#""node""#, r#""\u006bind":"fact","node""#),
            beat.replace(r#""node""#, r#""k\u0069nd":"heartbeat","node""#),
            beat.replace(r#""node":"n""#, r#""node":"\u006e""#),
            beat.replace(r#""node":"n""#, r#""node":"n","extra":[1,{"x":null}]"#),
            beat.replace(r#""upto_ns":1700000000000000000"#, r#""upto_ns":1.5"#),
            beat.replace(r#""upto_ns":1700000000000000000"#, r#""upto_ns":-1"#),
            beat.replace(r#""upto_ns":1700000000000000000"#, r#""upto_ns":1"#),
            beat.replace("}", "} x"),
            beat.replace("}", "} \n"),
            r#"{"kind":"heartbeat",}"#.to_owned(),
            r#"{"kind":"heartbeat","source":"a"}"#.to_owned(),
            r#"{"kind":"state","time_ns":1,"diff":1}"#.to_owned(),
            r#"{"kind":"fact","id":"a/b/1"}"#.to_owned(),
        ] {
            assert_same_decoding(odd.as_bytes());
        }
    }

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
