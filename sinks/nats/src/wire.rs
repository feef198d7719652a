//! The wire format: which subject an observation goes to, its message id, and its bytes.
//!
//! - **Subject**: `<subject_prefix>.<source>.<node>`, where source and node are the
//!   observation's own (a fact's id, a state update's evidence id, a heartbeat's fields). Every
//!   character outside `A-Z a-z 0-9 _ -` becomes `_`, so a node named `ip-10-0-0-1.ec2` publishes
//!   to `tapio.observations.kernel.ip-10-0-0-1_ec2`. The subject only routes and filters; the
//!   payload carries the exact names.
//! - **Payload**: the observation as one JSON object, exactly a recording line
//!   (`{"kind":"fact",...}`, `{"kind":"state",...}` or `{"kind":"heartbeat",...}`), UTF-8, no
//!   trailing newline.
//! - **`Nats-Msg-Id`**: `<fact id>` for a fact (`kernel/node-1/42`), `<evidence id>/<+1|-1>/<time
//!   ns>` for a state update, and `heartbeat/<source>/<node>/<upto ns>` for a heartbeat. The
//!   server drops a re-published message with an id it has seen within the stream's duplicate
//!   window, so a retry after a lost acknowledgement or a spool drain stores nothing twice.

use bytes::Bytes;
use tapio_model::Observation;

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
    let (source, node): (&str, &str) = match observation {
        Observation::Fact(fact) => (&fact.id.source, &fact.id.node),
        Observation::State(update) => {
            (&update.record.evidence.source, &update.record.evidence.node)
        }
        Observation::Heartbeat(beat) => (&beat.source, &beat.node),
    };
    format!("{prefix}.{}.{}", token(source), token(node))
}

/// The subjects a stream under `prefix` captures.
pub fn stream_subject(prefix: &str) -> String {
    format!("{prefix}.>")
}

fn token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() { "_".into() } else { token }
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

/// The payload of `observation`: its JSON, as in a recording line.
pub fn encode(observation: &Observation) -> Bytes {
    // Serializing these plain data types cannot fail: no maps with non-string keys, no I/O.
    Bytes::from(serde_json::to_vec(observation).unwrap_or_default())
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
    }
}
