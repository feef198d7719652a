//! The wire format: which subject an observation goes to, how observations are grouped into
//! messages, a message's id, and its bytes.
//!
//! - **Subject**: `<subject_prefix>.<source>.<node>`, where source and node are the
//!   observation's own (a fact's id, a state update's evidence id, a heartbeat's fields). Every
//!   character outside `A-Z a-z 0-9 _ -` becomes `_`, so a node named `ip-10-0-0-1.ec2` publishes
//!   to `tapio.observations.kernel.ip-10-0-0-1_ec2`. The subject only routes and filters; the
//!   payload carries the exact names.
//! - **Payload**: one or more observations with the same subject, consecutive in the agent's
//!   order, each as one JSON object exactly as a recording line (`{"kind":"fact",...}`,
//!   `{"kind":"state",...}` or `{"kind":"heartbeat",...}`), joined by `\n`, UTF-8, no trailing
//!   newline. At most [`MAX_BATCH_OBSERVATIONS`] observations and [`MAX_BATCH_BYTES`] bytes (a
//!   single larger observation travels alone). A one-observation message is exactly the format
//!   of the earlier one-observation-per-message version, so streams written by it still decode.
//! - **`Nats-Msg-Id`** of one observation: `<fact id>` for a fact (`kernel/node-1/42`),
//!   `<evidence id>/<+1|-1>/<time ns>` for a state update, and
//!   `heartbeat/<source>/<node>/<upto ns>` for a heartbeat ([`message_id`]). A message of
//!   `n > 1` observations has the id of its first observation followed by `+<n>`
//!   (`kernel/node-1/42+256`, [`Batch::id`]): unique, since every observation is in exactly one
//!   message, and fixed when the message is formed, before the first attempt; the spool keeps
//!   it with the message. The server drops a re-published message with an id it has seen within
//!   the stream's duplicate window, so a retry after a lost acknowledgement or a spool drain
//!   stores nothing twice.

use bytes::Bytes;
use tapio_model::{Observation, TimeNs};

/// Most observations in one message.
pub const MAX_BATCH_OBSERVATIONS: usize = 256;

/// Most payload bytes in one message (a single larger observation travels alone): a quarter of
/// the server's default `max_payload` of 1 MiB.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The subject `observation` is published to under `prefix`.
///
/// ```
/// use tapio_model::{Heartbeat, Observation};
/// let beat = Observation::Heartbeat(Heartbeat {
///     source: "kernel".into(),
///     node: "ip-10-0-0-1.ec2".into(),
///     upto_ns: 1_700_000_000_000_000_000,
/// });
/// assert_eq!(
///     tapio_sinks_nats::wire::subject("tapio.observations", &beat),
///     "tapio.observations.kernel.ip-10-0-0-1_ec2"
/// );
/// ```
pub fn subject(prefix: &str, observation: &Observation) -> String {
    let (source, node) = source_and_node(observation);
    format!("{prefix}.{}.{}", token(source), token(node))
}

/// Whether `observation` is published to `subject` under `prefix`: [`subject`] without building
/// the string, for the check of every observation that joins a message.
fn has_subject(prefix: &str, observation: &Observation, subject: &str) -> bool {
    let (source, node) = source_and_node(observation);
    let Some(tokens) = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    let mut expected = tokens.chars();
    token_matches(source, &mut expected)
        && expected.next() == Some('.')
        && token_matches(node, &mut expected)
        && expected.next().is_none()
}

/// The source and node an observation is published under.
fn source_and_node(observation: &Observation) -> (&str, &str) {
    match observation {
        Observation::Fact(fact) => (&fact.id.source, &fact.id.node),
        Observation::State(update) => {
            (&update.record.evidence.source, &update.record.evidence.node)
        }
        Observation::Heartbeat(beat) => (&beat.source, &beat.node),
    }
}

/// The subjects a stream under `prefix` captures.
pub fn stream_subject(prefix: &str) -> String {
    format!("{prefix}.>")
}

fn token(name: &str) -> String {
    let token: String = name.chars().map(token_char).collect();
    if token.is_empty() { "_".into() } else { token }
}

/// The character `c` of a name stands for in its subject token.
fn token_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
        c
    } else {
        '_'
    }
}

/// Whether `expected` continues with [`token`]`(name)`; consumes it.
fn token_matches(name: &str, expected: &mut std::str::Chars<'_>) -> bool {
    if name.is_empty() {
        return expected.next() == Some('_');
    }
    name.chars().all(|c| expected.next() == Some(token_char(c)))
}

/// The `Nats-Msg-Id` of `observation`: stable across re-publishes, unique per observation.
pub fn message_id(observation: &Observation) -> String {
    match observation {
        Observation::Fact(fact) => fact.id.to_string(),
        Observation::State(update) => format!(
            "{}/{:+}/{}",
            update.record.evidence, update.diff, update.time_ns
        ),
        Observation::Heartbeat(beat) => {
            format!("heartbeat/{}/{}/{}", beat.source, beat.node, beat.upto_ns)
        }
    }
}

/// The payload of `observation`: its JSON, as in a recording line (byte for byte what
/// `serde_json` writes for it).
pub fn encode(observation: &Observation) -> Bytes {
    let mut payload = Vec::with_capacity(256);
    write(&mut payload, observation);
    Bytes::from(payload)
}

/// One message: consecutive observations with the same subject, encoded and with its id fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The subject of every observation in it.
    pub subject: String,
    /// The `Nats-Msg-Id`: [`message_id`] of the first observation, followed by `+<count>` when
    /// there are several.
    pub id: String,
    /// The observations' recording lines joined by `\n`.
    pub payload: Bytes,
    /// How many observations it holds.
    pub count: u64,
    /// The earliest event time of its observations ([`Observation::time_ns`]: a heartbeat's
    /// `upto_ns`).
    pub earliest_ns: TimeNs,
    /// The latest event time of its observations.
    pub latest_ns: TimeNs,
}

impl Batch {
    /// The message of a payload read back as it was formed (from the spool), with its time
    /// range taken from the lines that decode. A payload with no decodable line gets the widest
    /// range, `0..=u64::MAX`, so that a publisher bounding the time span of what is
    /// unacknowledged sends it alone.
    pub fn from_parts(subject: String, id: String, payload: Bytes, count: u64) -> Batch {
        let mut earliest_ns = TimeNs::MAX;
        let mut latest_ns = 0;
        for line in lines(&payload) {
            if let Ok(observation) = serde_json::from_slice::<Observation>(line) {
                earliest_ns = earliest_ns.min(observation.time_ns());
                latest_ns = latest_ns.max(observation.time_ns());
            }
        }
        if earliest_ns > latest_ns {
            earliest_ns = 0;
            latest_ns = TimeNs::MAX;
        }
        Batch {
            subject,
            id,
            payload,
            count,
            earliest_ns,
            latest_ns,
        }
    }
}

/// Builds a [`Batch`] one observation at a time.
#[derive(Debug)]
pub struct BatchBuilder {
    subject: String,
    first_id: String,
    payload: Vec<u8>,
    count: u64,
    earliest_ns: TimeNs,
    latest_ns: TimeNs,
}

impl BatchBuilder {
    /// A message starting with `first`, published under `prefix`.
    pub fn new(prefix: &str, first: &Observation) -> BatchBuilder {
        let mut payload = Vec::with_capacity(512);
        write(&mut payload, first);
        BatchBuilder {
            subject: subject(prefix, first),
            first_id: message_id(first),
            payload,
            count: 1,
            earliest_ns: first.time_ns(),
            latest_ns: first.time_ns(),
        }
    }

    /// Makes room for about `more` further observations of the first one's size (within
    /// [`MAX_BATCH_BYTES`]), so that a message of many grows its payload once rather than
    /// doubling it again and again.
    pub fn reserve(&mut self, more: usize) {
        let each = self.payload.len() + 1;
        let wanted = each.saturating_mul(more + 1).min(MAX_BATCH_BYTES);
        self.payload
            .reserve(wanted.saturating_sub(self.payload.len()));
    }

    /// Whether `observation` may join: same subject, and the caps are not reached.
    pub fn accepts(&self, prefix: &str, observation: &Observation) -> bool {
        self.count < MAX_BATCH_OBSERVATIONS as u64
            && self.payload.len() < MAX_BATCH_BYTES
            && has_subject(prefix, observation, &self.subject)
    }

    /// Appends `observation` (the caller checked [`BatchBuilder::accepts`]). Returns `false`,
    /// leaving the message unchanged, when it would make the payload exceed [`MAX_BATCH_BYTES`].
    pub fn push(&mut self, observation: &Observation) -> bool {
        let before = self.payload.len();
        self.payload.push(b'\n');
        write(&mut self.payload, observation);
        if self.payload.len() > MAX_BATCH_BYTES {
            self.payload.truncate(before);
            return false;
        }
        self.count += 1;
        self.earliest_ns = self.earliest_ns.min(observation.time_ns());
        self.latest_ns = self.latest_ns.max(observation.time_ns());
        true
    }

    /// The message.
    pub fn finish(self) -> Batch {
        let id = if self.count == 1 {
            self.first_id
        } else {
            format!("{}+{}", self.first_id, self.count)
        };
        Batch {
            subject: self.subject,
            id,
            payload: Bytes::from(self.payload),
            count: self.count,
            earliest_ns: self.earliest_ns,
            latest_ns: self.latest_ns,
        }
    }
}

fn write(buffer: &mut Vec<u8>, observation: &Observation) {
    crate::json::write_observation(buffer, observation);
}

/// Splits a message payload into its observations' lines.
///
/// ```
/// let lines: Vec<&[u8]> = tapio_sinks_nats::wire::lines(b"{}\n{}").collect();
/// assert_eq!(lines.len(), 2);
/// ```
pub fn lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.split(|byte| *byte == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapio_model::{Fact, FactId, FactPayload, ProcessExit};

    #[test]
    fn facts_use_their_id_and_round_trip() {
        let fact = Observation::Fact(Fact {
            id: FactId::new("kernel", "node.1", 42),
            time_ns: 1_700_000_000_000_000_000,
            payload: FactPayload::ProcessExit(ProcessExit {
                pid: 7,
                start_ns: 1_699_999_999_000_000_000,
                comm: "sh".into(),
                exit_code: 0,
                signal: 9,
                container_id: None,
            }),
        });
        assert_eq!(subject("p", &fact), "p.kernel.node_1");
        assert_eq!(message_id(&fact), "kernel/node.1/42");
        let back: Observation = serde_json::from_slice(&encode(&fact)).unwrap();
        assert_eq!(back, fact);
        assert_eq!(stream_subject("p.q"), "p.q.>");
        assert_eq!(token(""), "_");
        assert_eq!(token("a*b>c d"), "a_b_c_d");

        // One observation: the single-message format, byte for byte.
        let single = BatchBuilder::new("p", &fact).finish();
        assert_eq!(single.payload, encode(&fact));
        assert_eq!(single.id, "kernel/node.1/42");
        assert_eq!(single.count, 1);
    }

    #[test]
    fn the_subject_check_agrees_with_the_subject() {
        let names = [
            "", "_", "a", "ab", "a.b", "a_b", "a-b", "a*b", "ü", "__", "a.",
        ];
        let beat = |source: &str, node: &str| {
            Observation::Heartbeat(tapio_model::Heartbeat {
                source: source.into(),
                node: node.into(),
                upto_ns: 1,
            })
        };
        for prefix in ["p", "p.q"] {
            for (source, node) in names.iter().flat_map(|s| names.iter().map(move |n| (s, n))) {
                let first = beat(source, node);
                let built = subject(prefix, &first);
                for (other_source, other_node) in
                    names.iter().flat_map(|s| names.iter().map(move |n| (s, n)))
                {
                    let other = beat(other_source, other_node);
                    assert_eq!(
                        has_subject(prefix, &other, &built),
                        subject(prefix, &other) == built,
                        "{other_source:?}/{other_node:?} against {built:?}"
                    );
                }
                assert!(!has_subject("p.q.r", &first, &built));
            }
        }
    }

    #[test]
    fn batches_join_lines_and_take_the_first_id_plus_count() {
        let beat = |upto_ns, node: &str| {
            Observation::Heartbeat(tapio_model::Heartbeat {
                source: "kernel".into(),
                node: node.into(),
                upto_ns,
            })
        };
        let mut builder = BatchBuilder::new("p", &beat(1, "a"));
        assert!(builder.accepts("p", &beat(2, "a")));
        assert!(!builder.accepts("p", &beat(2, "b")), "another subject");
        assert!(!builder.accepts("p", &beat(2, "ab")), "a longer node");
        assert!(!builder.accepts("q", &beat(2, "a")), "another prefix");
        assert!(!builder.accepts("p", &beat(2, "")), "an empty node");
        assert!(builder.push(&beat(2, "a")));
        let batch = builder.finish();
        assert_eq!(batch.id, "heartbeat/kernel/a/1+2");
        assert_eq!(batch.count, 2);
        let decoded: Vec<Observation> = lines(&batch.payload)
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        assert_eq!(decoded, vec![beat(1, "a"), beat(2, "a")]);

        let mut full = BatchBuilder::new("p", &beat(0, "a"));
        for upto in 1..MAX_BATCH_OBSERVATIONS as u64 {
            assert!(full.accepts("p", &beat(upto, "a")));
            assert!(full.push(&beat(upto, "a")));
        }
        assert!(!full.accepts("p", &beat(9, "a")), "the count cap");
    }
}
