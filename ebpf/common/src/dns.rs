//! The DNS capture's ring-buffer record (`struct tapio_dns_event` in
//! `ebpf/programs/dns_events.h`), read field by field from the record's bytes.
//!
//! ```
//! use tapio_ebpf_common::dns::{DnsEvent, RECORD_LEN};
//! assert!(DnsEvent::parse(&[0; 10]).is_err());
//! assert!(DnsEvent::parse(&vec![0; RECORD_LEN]).is_err()); // family 0
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of a DNS message copied into a record (`TAPIO_DNS_MAX`).
pub const DNS_MAX: usize = 1024;
/// Size of one record (`sizeof(struct tapio_dns_event)`).
pub const RECORD_LEN: usize = 1120;
/// Offset of the message bytes in a record.
const DATA_AT: usize = 96;
/// Index of the messages-recorded counter in `DNS_COUNTERS`.
pub const CTR_MESSAGES: u32 = 0;
/// Index of the messages-lost counter (ring buffer full) in `DNS_COUNTERS`.
pub const CTR_DROPPED: u32 = 1;
/// `flags` bit: the message is longer than what was copied.
pub const FLAG_CUT: u8 = 1;

/// Which way a message went, seen from the local socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a local socket (a query).
    Egress,
    /// Received by a local socket (a response).
    Ingress,
}

/// One captured DNS message with its addresses and its socket's process and cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent<'a> {
    /// `CLOCK_MONOTONIC` time of capture, ns.
    pub ts_ns: u64,
    /// cgroup v2 id of the socket's cgroup.
    pub cgroup_id: u64,
    /// The sending thread group (the process) for queries; 0 for responses.
    pub tgid: u32,
    /// The sending process's start time (`CLOCK_MONOTONIC`, ns) for queries; 0 for responses.
    pub start_ns: u64,
    /// The sending task's comm for queries (NUL padded).
    pub comm: [u8; 16],
    /// Source address and port.
    pub source: SocketAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
    /// `true` for TCP, `false` for UDP.
    pub tcp: bool,
    /// Egress (query) or ingress (response).
    pub direction: Direction,
    /// The message's length on the wire.
    pub msg_len: u16,
    /// Whether `message` holds less than `msg_len` bytes.
    pub cut: bool,
    /// The DNS message (without TCP's length prefix), as far as it was copied.
    pub message: &'a [u8],
}

/// Why a record could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsRecordError {
    /// Shorter than a record.
    #[error("DNS record of {len} bytes, expected {RECORD_LEN}")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// A field out of its range.
    #[error("DNS record with bad {field} {value}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

impl<'a> DnsEvent<'a> {
    /// Reads a record from the bytes of one ring-buffer entry.
    ///
    /// # Errors
    /// [`DnsRecordError`] for a short record or a field out of range. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<DnsEvent<'a>, DnsRecordError> {
        if bytes.len() < RECORD_LEN {
            return Err(DnsRecordError::TooShort { len: bytes.len() });
        }
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(word)
        };
        let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        let bad = |field, value: u8| DnsRecordError::Field {
            field,
            value: u32::from(value),
        };
        let (family, protocol, direction, flags) = (bytes[88], bytes[89], bytes[90], bytes[91]);
        let address = |at: usize| -> Result<IpAddr, DnsRecordError> {
            let raw = &bytes[at..at + 16];
            match family {
                4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
                6 => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(raw);
                    Ok(IpAddr::V6(Ipv6Addr::from(octets)))
                }
                other => Err(bad("family", other)),
            }
        };
        let tcp = match protocol {
            6 => true,
            17 => false,
            other => return Err(bad("protocol", other)),
        };
        let direction = match direction {
            0 => Direction::Egress,
            1 => Direction::Ingress,
            other => return Err(bad("direction", other)),
        };
        let cap_len = usize::from(u16_at(86));
        if cap_len > DNS_MAX {
            return Err(DnsRecordError::Field {
                field: "cap_len",
                value: u32::from(u16_at(86)),
            });
        }
        let mut comm = [0u8; 16];
        comm.copy_from_slice(&bytes[32..48]);
        Ok(DnsEvent {
            ts_ns: u64_at(0),
            cgroup_id: u64_at(8),
            tgid: (u64_at(16) >> 32) as u32,
            start_ns: u64_at(24),
            comm,
            source: SocketAddr::new(address(48)?, u16_at(80)),
            destination: SocketAddr::new(address(64)?, u16_at(82)),
            tcp,
            direction,
            msg_len: u16_at(84),
            cut: flags & FLAG_CUT != 0,
            message: &bytes[DATA_AT..DATA_AT + cap_len],
        })
    }

    /// The comm as text (up to its NUL).
    pub fn comm(&self) -> String {
        crate::c_str(&self.comm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets the C header pins, read from it.
    #[test]
    fn offsets_match_the_c_header() {
        let header = include_str!("../../programs/dns_events.h");
        let number = |needle: &str| -> usize {
            let line = header
                .lines()
                .find(|line| line.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in dns_events.h"));
            let after = line.split("==").nth(1).expect("an == in the assert");
            after
                .trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
                .expect("a number")
        };
        assert_eq!(number("sizeof(struct tapio_dns_event)"), RECORD_LEN);
        assert_eq!(number("tapio_dns_event, data)"), DATA_AT);
        assert_eq!(number("tapio_dns_event, saddr)"), 48);
        assert_eq!(number("tapio_dns_event, sport)"), 80);
        assert_eq!(number("tapio_dns_event, family)"), 88);
        assert!(header.contains(&format!("#define TAPIO_DNS_MAX {DNS_MAX}")));
    }

    #[test]
    fn a_record_reads_back() {
        let mut bytes = vec![0u8; RECORD_LEN];
        bytes[0..8].copy_from_slice(&7u64.to_ne_bytes());
        bytes[16..24].copy_from_slice(&((42u64 << 32) | 43).to_ne_bytes());
        bytes[24..32].copy_from_slice(&9u64.to_ne_bytes());
        bytes[32..35].copy_from_slice(b"dig");
        bytes[48..52].copy_from_slice(&[127, 0, 0, 1]);
        bytes[64..68].copy_from_slice(&[127, 0, 0, 53]);
        bytes[80..82].copy_from_slice(&40000u16.to_ne_bytes());
        bytes[82..84].copy_from_slice(&53u16.to_ne_bytes());
        bytes[84..86].copy_from_slice(&30u16.to_ne_bytes());
        bytes[86..88].copy_from_slice(&20u16.to_ne_bytes());
        bytes[88] = 4;
        bytes[89] = 17;
        bytes[91] = FLAG_CUT;
        let event = DnsEvent::parse(&bytes).unwrap();
        assert_eq!((event.tgid, event.start_ns), (42, 9));
        assert_eq!(event.comm(), "dig");
        assert_eq!(event.source.to_string(), "127.0.0.1:40000");
        assert_eq!(event.destination.to_string(), "127.0.0.53:53");
        assert!(event.cut && !event.tcp);
        assert_eq!(event.message.len(), 20);
        bytes[86..88].copy_from_slice(&2000u16.to_ne_bytes());
        assert!(DnsEvent::parse(&bytes).is_err());
    }
}
