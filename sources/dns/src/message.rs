//! The DNS message format (RFC 1035 §4, with the EDNS(0) extended response code of RFC 6891):
//! a 12-byte header, then the question, answer, authority and additional sections. Names are
//! sequences of labels, each a length byte and that many bytes, ended by a zero byte or by a
//! compression pointer (two bytes, top bits `11`) to an earlier name in the message.
//!
//! [`decode`] reads a whole message and returns every question, the answer records (A and AAAA
//! with their addresses, CNAME with its target, other types with their type only) and the
//! response code; anything that does not fit the format is a [`DecodeError`] naming the
//! section and byte offset where it went wrong. Compression pointers must point backwards, to
//! before the name that uses them, so a pointer loop cannot be followed forever.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest name on the wire (RFC 1035 §2.3.4), in bytes.
const MAX_NAME: usize = 255;
/// The OPT pseudo-record that carries EDNS(0).
const TYPE_OPT: u16 = 41;

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
    /// Another type, its data not decoded: its length in bytes.
    Other(u16),
}

/// The part of a message where decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The 12-byte header.
    Header,
    /// The question section.
    Question,
    /// The answer section.
    Answer,
    /// The authority section.
    Authority,
    /// The additional section.
    Additional,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Question => "question section",
            Section::Answer => "answer section",
            Section::Authority => "authority section",
            Section::Additional => "additional section",
        })
    }
}

/// Why a message could not be decoded, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended inside a field: a truncated capture or datagram.
    #[error(
        "message of {len} bytes ends inside the {section} (needed {needed} bytes at offset {offset})"
    )]
    Truncated {
        /// Where.
        section: Section,
        /// Offset of the field that did not fit.
        offset: usize,
        /// Bytes the field needed.
        needed: usize,
        /// The message's length.
        len: usize,
    },
    /// A label length byte with the reserved top bits `01` or `10`.
    #[error("bad label type 0x{byte:02x} at offset {offset} in the {section}")]
    BadLabelType {
        /// Where.
        section: Section,
        /// Offset of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A compression pointer to itself or to later in the message (which could loop).
    #[error("compression pointer at offset {offset} in the {section} points forward to {target}")]
    PointerForward {
        /// Where.
        section: Section,
        /// Offset of the pointer.
        offset: usize,
        /// Where it points.
        target: usize,
    },
    /// A name longer than 255 bytes.
    #[error("name at offset {offset} in the {section} is longer than 255 bytes")]
    NameTooLong {
        /// Where.
        section: Section,
        /// Offset the name starts at.
        offset: usize,
    },
    /// An A or AAAA record whose data is not 4 or 16 bytes.
    #[error("record of type {rtype} at offset {offset} in the {section} has {len} bytes of data")]
    BadRecordLength {
        /// Where.
        section: Section,
        /// Offset of the record's data.
        offset: usize,
        /// Its type.
        rtype: u16,
        /// Its data length.
        len: u16,
    },
}

/// Decodes one DNS message (for DNS over TCP, without the 2-byte length prefix).
///
/// # Errors
/// A [`DecodeError`] naming what was wrong and where. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut reader = Reader {
        bytes,
        at: 0,
        section: Section::Header,
    };
    let id = reader.u16()?;
    let flags = reader.u16()?;
    let counts = [reader.u16()?, reader.u16()?, reader.u16()?, reader.u16()?];
    let mut message = Message {
        id,
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        authoritative: flags & 0x0400 != 0,
        truncated: flags & 0x0200 != 0,
        recursion_desired: flags & 0x0100 != 0,
        recursion_available: flags & 0x0080 != 0,
        rcode: flags & 0xf,
        questions: Vec::new(),
        answers: Vec::new(),
        authority_count: counts[2],
        additional_count: counts[3],
    };
    reader.section = Section::Question;
    for _ in 0..counts[0] {
        let name = reader.name()?;
        let qtype = reader.u16()?;
        let qclass = reader.u16()?;
        message.questions.push(Question {
            name,
            qtype,
            qclass,
        });
    }
    for (section, count) in [
        (Section::Answer, counts[1]),
        (Section::Authority, counts[2]),
        (Section::Additional, counts[3]),
    ] {
        reader.section = section;
        for _ in 0..count {
            let name = reader.name()?;
            let rtype = reader.u16()?;
            let _class = reader.u16()?;
            let ttl = reader.u32()?;
            let len = reader.u16()?;
            let data_at = reader.at;
            let data = reader.take(usize::from(len))?;
            if rtype == TYPE_OPT && section == Section::Additional {
                // The OPT record's TTL carries the upper 8 bits of the response code.
                message.rcode |= ((ttl >> 24) as u16) << 4;
                continue;
            }
            if section != Section::Answer {
                continue;
            }
            let bad = || DecodeError::BadRecordLength {
                section,
                offset: data_at,
                rtype,
                len,
            };
            let data = match rtype {
                1 => RecordData::A(Ipv4Addr::from(
                    <[u8; 4]>::try_from(data).map_err(|_| bad())?,
                )),
                28 => RecordData::Aaaa(Ipv6Addr::from(
                    <[u8; 16]>::try_from(data).map_err(|_| bad())?,
                )),
                5 => {
                    let mut inner = Reader {
                        bytes,
                        at: data_at,
                        section,
                    };
                    RecordData::Cname(inner.name()?)
                }
                _ => RecordData::Other(len),
            };
            message.answers.push(Record {
                name,
                rtype,
                ttl,
                data,
            });
        }
    }
    Ok(message)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    section: Section,
}

impl<'a> Reader<'a> {
    fn truncated(&self, offset: usize, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            section: self.section,
            offset,
            needed,
            len: self.bytes.len(),
        }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.truncated(self.at, count))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A name at the current offset; the reader moves past it (past the first pointer, if the
    /// name uses one).
    fn name(&mut self) -> Result<String, DecodeError> {
        let start = self.at;
        let mut out = String::new();
        let mut wire_len = 0usize;
        // Where the name continues on the wire: reading follows pointers, the reader does not.
        let mut cursor = self.at;
        // Every pointer must point before this: the start of the name that used it.
        let mut limit = start;
        let mut resume = None;
        loop {
            let byte = *self
                .bytes
                .get(cursor)
                .ok_or_else(|| self.truncated(cursor, 1))?;
            match byte >> 6 {
                0b00 if byte == 0 => {
                    cursor += 1;
                    break;
                }
                0b00 => {
                    let len = usize::from(byte);
                    let label = self
                        .bytes
                        .get(cursor + 1..cursor + 1 + len)
                        .ok_or_else(|| self.truncated(cursor + 1, len))?;
                    wire_len += 1 + len;
                    if wire_len + 1 > MAX_NAME {
                        return Err(DecodeError::NameTooLong {
                            section: self.section,
                            offset: start,
                        });
                    }
                    if !out.is_empty() {
                        out.push('.');
                    }
                    write_label(&mut out, label);
                    cursor += 1 + len;
                }
                0b11 => {
                    let low = *self
                        .bytes
                        .get(cursor + 1)
                        .ok_or_else(|| self.truncated(cursor, 2))?;
                    let target = usize::from(u16::from_be_bytes([byte & 0x3f, low]));
                    if target >= limit {
                        return Err(DecodeError::PointerForward {
                            section: self.section,
                            offset: cursor,
                            target,
                        });
                    }
                    resume.get_or_insert(cursor + 2);
                    limit = target;
                    cursor = target;
                }
                _ => {
                    return Err(DecodeError::BadLabelType {
                        section: self.section,
                        offset: cursor,
                        byte,
                    });
                }
            }
        }
        self.at = resume.unwrap_or(cursor);
        Ok(out)
    }
}

/// Appends a label: printable ASCII as it is (`.` and `\` escaped), other bytes as `\DDD`.
fn write_label(out: &mut String, label: &[u8]) {
    for &byte in label {
        match byte {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x21..=0x7e => out.push(char::from(byte)),
            _ => {
                out.push('\\');
                out.push_str(&format!("{byte:03}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(message.answers[1].name, "web.example.com");
        assert_eq!(
            message.answers[1].data,
            RecordData::A(Ipv4Addr::new(10, 0, 0, 7))
        );
        assert_eq!(message.answers[1].ttl, 30);
    }

    #[test]
    fn bad_pointers_labels_and_lengths_are_named() {
        // A pointer to itself.
        let mut looping = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(
            decode(&looping),
            Err(DecodeError::PointerForward {
                section: Section::Question,
                offset: 12,
                target: 12
            })
        );
        looping[12] = 0x80;
        assert!(matches!(
            decode(&looping),
            Err(DecodeError::BadLabelType { byte: 0x80, .. })
        ));
        let mut short_a = response();
        let at = short_a.len() - 5;
        short_a[at] = 3;
        short_a.pop();
        assert!(matches!(
            decode(&short_a),
            Err(DecodeError::BadRecordLength {
                rtype: 1,
                len: 3,
                ..
            })
        ));
        assert!(matches!(
            decode(&[0, 1, 2]),
            Err(DecodeError::Truncated {
                section: Section::Header,
                ..
            })
        ));
        let mut long = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(
            decode(&long),
            Err(DecodeError::NameTooLong { .. })
        ));
        let error = decode(&response()[..40]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("message of 40 bytes ends inside the answer section"),
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
