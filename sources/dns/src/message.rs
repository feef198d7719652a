//! DNS messages (RFC 1035 §4, with the EDNS(0) extended response code of RFC 6891), decoded by
//! `hickory-proto` and reduced to what Tapio reads: the header flags, the questions, the answer
//! records (A and AAAA with their addresses, CNAME with its target, every record with its TTL)
//! and the response code.
//!
//! `hickory-proto` is the protocol layer of the Hickory DNS resolver and server, maintained and
//! used in production by them. Its decoder requires every compression pointer to point before
//! the name that uses it, so a pointer loop cannot be followed forever, and it checks label
//! lengths, name lengths and record data lengths; anything that does not fit the format is a
//! [`DecodeError`] of a [`Malformed`] class, which the live source counts per class. Decoding
//! never panics, whatever the input.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message as WireMessage, MessageType};
use hickory_proto::rr::{Name, RData};
use hickory_proto::serialize::binary::DecodeError as WireError;

/// A decoded DNS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The id that pairs a response with its query.
    pub id: u16,
    /// `true` for a response, `false` for a query.
    pub response: bool,
    /// The operation (0 = a standard query).
    pub opcode: u8,
    /// The answer is authoritative.
    pub authoritative: bool,
    /// The message was cut to fit the transport (the client should retry over TCP).
    pub truncated: bool,
    /// The client asked for recursion.
    pub recursion_desired: bool,
    /// The server offers recursion.
    pub recursion_available: bool,
    /// The response code: the header's 4 bits, extended by the OPT record's 8 when there is
    /// one (16 = BADVERS, 23 = BADCOOKIE).
    pub rcode: u16,
    /// The questions (a query has one in practice).
    pub questions: Vec<Question>,
    /// The answer section's records.
    pub answers: Vec<Record>,
    /// Records in the authority section.
    pub authority_count: u16,
    /// Records in the additional section (the OPT record included).
    pub additional_count: u16,
}

/// One question: a name and a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The name as on the wire, labels joined by `.`, without the trailing dot (the root is
    /// the empty string). Bytes other than printable ASCII are written `\DDD`, and a `.` or
    /// `\` inside a label is escaped with a backslash.
    pub name: String,
    /// The query type (1 = A, 28 = AAAA, ...).
    pub qtype: u16,
    /// The class (1 = IN).
    pub qclass: u16,
}

/// One resource record of the answer section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The owner name, written as [`Question::name`] is.
    pub name: String,
    /// The record type.
    pub rtype: u16,
    /// Time to live, seconds.
    pub ttl: u32,
    /// What it says.
    pub data: RecordData,
}

/// The data of an answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    /// An IPv4 address (A).
    A(Ipv4Addr),
    /// An IPv6 address (AAAA).
    Aaaa(Ipv6Addr),
    /// The canonical name the owner is an alias of (CNAME).
    Cname(String),
    /// Another type, its data not kept (see [`Record::rtype`]).
    Other,
}

/// The kind of damage that made a message undecodable; the live source counts each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Malformed {
    /// The message ends inside a field: a truncated capture or datagram.
    Truncated,
    /// A compression pointer to itself or to later in the message (which could loop).
    CompressionLoop,
    /// A label length byte with the reserved top bits, a label over 63 bytes, or a name over
    /// 255 bytes.
    BadLabel,
    /// Record data that does not fit its type or its stated length, or anything else.
    BadRecord,
}

impl Malformed {
    /// Every class, in counter order.
    pub const ALL: [Malformed; 4] = [
        Malformed::Truncated,
        Malformed::CompressionLoop,
        Malformed::BadLabel,
        Malformed::BadRecord,
    ];

    /// The snake_case name used in counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::CompressionLoop => "compression_loop",
            Malformed::BadLabel => "bad_label",
            Malformed::BadRecord => "bad_record",
        }
    }
}

/// Why a message could not be decoded: its class and the decoder's own words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed DNS message ({}): {reason}", class.as_str())]
pub struct DecodeError {
    /// What kind of damage.
    pub class: Malformed,
    /// What the decoder said.
    pub reason: String,
}

impl DecodeError {
    fn of(error: &WireError) -> DecodeError {
        let class = match error {
            WireError::InsufficientBytes => Malformed::Truncated,
            WireError::PointerNotPriorToLabel { .. } | WireError::LabelOverlapsWithOther { .. } => {
                Malformed::CompressionLoop
            }
            WireError::UnrecognizedLabelCode(_)
            | WireError::LabelBytesTooLong(_)
            | WireError::DomainNameTooLong(_) => Malformed::BadLabel,
            _ => Malformed::BadRecord,
        };
        DecodeError {
            class,
            reason: error.to_string(),
        }
    }
}

/// Bytes of a message header.
const HEADER_LEN: usize = 12;
/// Fewest bytes a question takes: the root name (one byte), type and class.
const MIN_QUESTION_LEN: usize = 5;
/// Fewest bytes a resource record takes: the root name, type, class, TTL and data length.
const MIN_RECORD_LEN: usize = 11;

/// Decodes one DNS message (for DNS over TCP, without the 2-byte length prefix).
///
/// # Errors
/// A [`DecodeError`] naming the class of damage and what the decoder found. Never panics,
/// whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let count = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    if let Some(after_header) = bytes.len().checked_sub(HEADER_LEN) {
        // The decoder reserves room for as many entries as the header claims: a 12-byte message
        // claiming 65535 answers would take megabytes. A header claiming more entries than the
        // bytes after it can hold is malformed whatever follows; it is decoded with its claims
        // cut to what fits, so that damage before the end of the bytes (a bad label, a
        // compression loop) is still named as such, and is otherwise a truncated message.
        let questions = usize::from(count(4));
        let records = usize::from(count(6)) + usize::from(count(8)) + usize::from(count(10));
        if questions * MIN_QUESTION_LEN + records * MIN_RECORD_LEN > after_header {
            let mut cut = bytes.to_vec();
            let mut room = after_header;
            for (at, least) in [
                (4, MIN_QUESTION_LEN),
                (6, MIN_RECORD_LEN),
                (8, MIN_RECORD_LEN),
                (10, MIN_RECORD_LEN),
            ] {
                let fits = usize::from(count(at)).min(room / least);
                room -= fits * least;
                let fits = u16::try_from(fits).unwrap_or(u16::MAX);
                cut[at..at + 2].copy_from_slice(&fits.to_be_bytes());
            }
            return Err(match WireMessage::from_vec(&cut) {
                Err(error) => DecodeError::of(&error),
                Ok(_) => DecodeError {
                    class: Malformed::Truncated,
                    reason: format!(
                        "the header claims {questions} questions and {records} records, more \
                         than the {after_header} bytes after it can hold"
                    ),
                },
            });
        }
    }
    let wire = WireMessage::from_vec(bytes).map_err(|error| DecodeError::of(&error))?;
    // The decoder keeps the OPT record apart from the additional records; the counts are the
    // header's, as they were on the wire.
    let metadata = &wire.metadata;
    Ok(Message {
        id: metadata.id,
        response: metadata.message_type == MessageType::Response,
        opcode: u8::from(metadata.op_code),
        authoritative: metadata.authoritative,
        truncated: metadata.truncation,
        recursion_desired: metadata.recursion_desired,
        recursion_available: metadata.recursion_available,
        rcode: u16::from(metadata.response_code),
        questions: wire
            .queries
            .iter()
            .map(|query| Question {
                name: name_text(query.name()),
                qtype: u16::from(query.query_type()),
                qclass: u16::from(query.query_class()),
            })
            .collect(),
        answers: wire
            .answers
            .iter()
            .map(|record| Record {
                name: name_text(&record.name),
                rtype: u16::from(record.record_type()),
                ttl: record.ttl,
                data: match &record.data {
                    RData::A(a) => RecordData::A(a.0),
                    RData::AAAA(aaaa) => RecordData::Aaaa(aaaa.0),
                    RData::CNAME(cname) => RecordData::Cname(name_text(&cname.0)),
                    _ => RecordData::Other,
                },
            })
            .collect(),
        authority_count: count(8),
        additional_count: count(10),
    })
}

/// A name's labels joined by `.`: printable ASCII as it is (`.` and `\` escaped), other bytes
/// as `\DDD`; the root is the empty string.
fn name_text(name: &Name) -> String {
    let mut out = String::new();
    for label in name.iter() {
        if !out.is_empty() {
            out.push('.');
        }
        for &byte in label {
            match byte {
                b'.' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(byte));
                }
                0x21..=0x7e => out.push(char::from(byte)),
                _ => {
                    out.push('\\');
                    out.push(char::from(b'0' + byte / 100));
                    out.push(char::from(b'0' + byte / 10 % 10));
                    out.push(char::from(b'0' + byte % 10));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzzer: a bare header claiming 65535 answers made the decoder reserve
    /// megabytes for them. It is refused as truncated, before any allocation.
    #[test]
    fn a_header_claiming_more_entries_than_bytes_is_truncated() {
        let mut message = vec![0x12, 0x34, 0x81, 0x80, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
        let error = decode(&message).unwrap_err();
        assert_eq!(error.class, Malformed::Truncated);
        assert!(error.reason.contains("65535 records"), "{error}");
        // One question that fits (root name, type, class) is no claim beyond the bytes.
        message[6] = 0;
        message[7] = 0;
        message[5] = 1;
        message.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(decode(&message).is_ok());
    }

    /// A response built by hand: one question, a CNAME answer pointing into the question's
    /// name, then an A record whose owner is a pointer to the CNAME's target.
    fn response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        // 12: www.example.com
        m.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        // CNAME: owner -> 12, target "web" + pointer to 16 (example.com)
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6]);
        let target = m.len();
        m.extend_from_slice(b"\x03web\xc0\x10");
        // A: owner -> the CNAME's target
        m.extend_from_slice(&[
            0xc0,
            target as u8,
            0,
            1,
            0,
            1,
            0,
            0,
            0,
            30,
            0,
            4,
            10,
            0,
            0,
            7,
        ]);
        m
    }

    #[test]
    fn names_follow_compression_pointers() {
        let message = decode(&response()).unwrap();
        assert_eq!(message.id, 0x1234);
        assert!(message.response && message.recursion_available && !message.authoritative);
        assert_eq!(message.questions[0].name, "www.example.com");
        assert_eq!(
            message.answers[0].data,
            RecordData::Cname("web.example.com".into())
        );
        assert_eq!(message.answers[0].ttl, 60);
        assert_eq!(message.answers[1].name, "web.example.com");
        assert_eq!(
            message.answers[1].data,
            RecordData::A(Ipv4Addr::new(10, 0, 0, 7))
        );
        assert_eq!(message.answers[1].ttl, 30);
    }

    #[test]
    fn bad_pointers_labels_and_lengths_are_classed() {
        // A pointer to itself.
        let mut looping = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(
            decode(&looping).unwrap_err().class,
            Malformed::CompressionLoop
        );
        looping[12] = 0x80;
        assert_eq!(decode(&looping).unwrap_err().class, Malformed::BadLabel);
        let mut short_a = response();
        let at = short_a.len() - 5;
        short_a[at] = 3;
        short_a.pop();
        assert!(decode(&short_a).is_err());
        assert_eq!(decode(&[0, 1, 2]).unwrap_err().class, Malformed::Truncated);
        let mut long = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(decode(&long).unwrap_err().class, Malformed::BadLabel);
        let error = decode(&response()[..40]).unwrap_err();
        assert_eq!(error.class, Malformed::Truncated);
        assert!(
            error
                .to_string()
                .starts_with("malformed DNS message (truncated)"),
            "{error}"
        );
    }

    /// Every truncation and every single-byte change of a valid message decodes or fails with
    /// an error; none panics.
    #[test]
    fn every_truncation_and_byte_flip_is_an_error_or_a_message() {
        let whole = response();
        for len in 0..whole.len() {
            assert!(decode(&whole[..len]).is_err(), "{len} bytes");
        }
        for at in 0..whole.len() {
            for value in 0..=255u8 {
                let mut changed = whole.clone();
                changed[at] = value;
                let _ = decode(&changed);
            }
        }
    }
}
