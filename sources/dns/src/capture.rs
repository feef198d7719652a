//! DNS messages out of captured frames: the classic libpcap file format (what `tcpdump -w`
//! writes), and the link, IP and UDP/TCP headers around a DNS message.
//!
//! A pcap file is a 24-byte header (magic number, which also tells the byte order and whether
//! timestamps are in micro- or nanoseconds, and the link type), then records of a 16-byte
//! header (seconds, fraction, captured length, original length) and the captured bytes.
//! Ethernet, BSD loopback (`NULL`), raw IP and Linux cooked captures are understood; IPv4 and
//! IPv6; UDP, and TCP with DNS's 2-byte length prefix (one message per segment: a message split
//! across segments is reported as truncated).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A link type this module reads.
const LINK_NULL: u32 = 0;
const LINK_ETHERNET: u32 = 1;
const LINK_RAW: u32 = 101;
const LINK_LINUX_SLL: u32 = 113;

/// Why a capture file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    /// Not a classic pcap file.
    #[error("not a pcap file: magic number 0x{magic:08x}")]
    BadMagic {
        /// The first four bytes.
        magic: u32,
    },
    /// The file ends inside a header or a record.
    #[error("pcap file of {len} bytes ends inside the {what} at offset {offset}")]
    Truncated {
        /// `file header`, `record header` or `packet data`.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// The file's length.
        len: usize,
    },
    /// A link type this module does not read.
    #[error("unsupported link type {link_type}")]
    LinkType {
        /// The link type.
        link_type: u32,
    },
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Capture time, ns since the Unix epoch.
    pub time_ns: u64,
    /// The bytes captured (at most the snap length).
    pub data: &'a [u8],
    /// The frame's length on the wire.
    pub original_len: u32,
}

/// A classic pcap file's frames.
#[derive(Clone, Debug)]
pub struct Pcap<'a> {
    /// The link type of every frame.
    pub link_type: u32,
    frames: Vec<Frame<'a>>,
}

impl<'a> Pcap<'a> {
    /// Reads a whole pcap file held in memory.
    ///
    /// # Errors
    /// A [`PcapError`] for a file that is not pcap, is cut short, or has a link type this
    /// module does not read.
    pub fn parse(bytes: &'a [u8]) -> Result<Pcap<'a>, PcapError> {
        let len = bytes.len();
        let header = bytes.get(..24).ok_or(PcapError::Truncated {
            what: "file header",
            offset: 0,
            len,
        })?;
        let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let (little, nanos) = match magic {
            0xa1b2_c3d4 => (true, false),
            0xa1b2_3c4d => (true, true),
            0xd4c3_b2a1 => (false, false),
            0x4d3c_b2a1 => (false, true),
            _ => return Err(PcapError::BadMagic { magic }),
        };
        let word = |at: &[u8]| {
            let four = [at[0], at[1], at[2], at[3]];
            if little {
                u32::from_le_bytes(four)
            } else {
                u32::from_be_bytes(four)
            }
        };
        let link_type = word(&header[20..24]) & 0x0fff_ffff;
        if ![LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_LINUX_SLL].contains(&link_type) {
            return Err(PcapError::LinkType { link_type });
        }
        let mut frames = Vec::new();
        let mut at = 24;
        while at < len {
            let record = bytes.get(at..at + 16).ok_or(PcapError::Truncated {
                what: "record header",
                offset: at,
                len,
            })?;
            let (seconds, fraction) = (
                u64::from(word(&record[0..4])),
                u64::from(word(&record[4..8])),
            );
            let captured = word(&record[8..12]) as usize;
            let original_len = word(&record[12..16]);
            let data = bytes
                .get(at + 16..at + 16 + captured)
                .ok_or(PcapError::Truncated {
                    what: "packet data",
                    offset: at + 16,
                    len,
                })?;
            let fraction_ns = if nanos { fraction } else { fraction * 1_000 };
            frames.push(Frame {
                time_ns: seconds * 1_000_000_000 + fraction_ns,
                data,
                original_len,
            });
            at += 16 + captured;
        }
        Ok(Pcap { link_type, frames })
    }

    /// The frames, in file order.
    pub fn frames(&self) -> &[Frame<'a>] {
        &self.frames
    }
}

/// The transport a DNS message travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// UDP: one message per datagram.
    Udp,
    /// TCP: messages with a 2-byte length prefix.
    Tcp,
}

/// A DNS message's bytes with the addresses around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Source address and port.
    pub source: SocketAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The DNS message (for TCP, after the length prefix), as far as it was captured.
    pub message: &'a [u8],
    /// Whether the capture or the segment holds less than the message's full length.
    pub cut: bool,
}

/// The DNS message in a captured frame of `link_type`, when the frame is UDP or TCP with a
/// payload and one of its ports is in `ports`. `None` for anything else (other protocols, TCP
/// without payload, fragments after the first, frames too short for their headers).
pub fn segment<'a>(link_type: u32, frame: &'a [u8], ports: &[u16]) -> Option<Segment<'a>> {
    let (ethertype, ip) = match link_type {
        LINK_NULL => {
            let family = u32::from_le_bytes(frame.get(..4)?.try_into().ok()?);
            let family = if family > 0xffff {
                family.swap_bytes()
            } else {
                family
            };
            // AF_INET is 2 everywhere; AF_INET6 is 24, 28 or 30 depending on the BSD.
            let ethertype = match family {
                2 => 0x0800,
                24 | 28 | 30 => 0x86dd,
                _ => return None,
            };
            (ethertype, frame.get(4..)?)
        }
        LINK_ETHERNET => {
            let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            let mut at = 14;
            // One 802.1Q tag.
            if ethertype == 0x8100 {
                ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
                at = 18;
            }
            (ethertype, frame.get(at..)?)
        }
        LINK_RAW => (
            match frame.first()? >> 4 {
                4 => 0x0800,
                6 => 0x86dd,
                _ => return None,
            },
            frame,
        ),
        LINK_LINUX_SLL => (
            u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]),
            frame.get(16..)?,
        ),
        _ => return None,
    };
    let (source, destination, protocol, payload) = match ethertype {
        0x0800 => {
            let header_len = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
            if fragment != 0 || header_len < 20 {
                return None;
            }
            let source = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?));
            let dest = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?));
            let end = total.min(ip.len()).max(header_len);
            (
                source,
                dest,
                *ip.get(9)?,
                (ip.get(header_len..end)?, total > ip.len()),
            )
        }
        0x86dd => {
            let total = 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let source = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?));
            let dest = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?));
            let end = total.min(ip.len()).max(40);
            (
                source,
                dest,
                *ip.get(6)?,
                (ip.get(40..end)?, total > ip.len()),
            )
        }
        _ => return None,
    };
    let (transport_bytes, ip_cut) = payload;
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([
            *transport_bytes.get(at)?,
            *transport_bytes.get(at + 1)?,
        ]))
    };
    let (source_port, dest_port) = (port(0)?, port(2)?);
    if !ports.contains(&source_port) && !ports.contains(&dest_port) {
        return None;
    }
    let source = SocketAddr::new(source, source_port);
    let destination = SocketAddr::new(destination, dest_port);
    match protocol {
        17 => {
            // The UDP length says how long the datagram is; the capture may hold less.
            let udp_len = usize::from(port(4)?).max(8);
            let end = udp_len.min(transport_bytes.len());
            let message = transport_bytes.get(8..end.max(8))?;
            Some(Segment {
                source,
                destination,
                transport: Transport::Udp,
                message,
                cut: ip_cut || udp_len > transport_bytes.len(),
            })
        }
        6 => {
            let header_len = usize::from(transport_bytes.get(12)? >> 4) * 4;
            let data = transport_bytes.get(header_len.max(20)..)?;
            if data.is_empty() {
                return None;
            }
            let length = usize::from(u16::from_be_bytes([*data.first()?, *data.get(1)?]));
            let body = data.get(2..)?;
            let message = body.get(..length.min(body.len()))?;
            Some(Segment {
                source,
                destination,
                transport: Transport::Tcp,
                message,
                cut: ip_cut || length > body.len(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_or_short_file_is_named() {
        assert_eq!(
            Pcap::parse(&[0u8; 24]).unwrap_err(),
            PcapError::BadMagic { magic: 0 }
        );
        let mut header = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        header.extend_from_slice(&[0; 12]);
        header.extend_from_slice(&1u32.to_le_bytes());
        assert!(Pcap::parse(&header).unwrap().frames().is_empty());
        header.extend_from_slice(&[0; 16]);
        header[24 + 8] = 10;
        assert_eq!(
            Pcap::parse(&header).unwrap_err().to_string(),
            "pcap file of 40 bytes ends inside the packet data at offset 40"
        );
        header[20] = 200;
        assert_eq!(
            Pcap::parse(&header).unwrap_err(),
            PcapError::LinkType { link_type: 200 }
        );
    }
}
