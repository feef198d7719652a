//! The decoder on tcpdump's own DNS test captures (`tests/fixtures/dns/`), against tcpdump's
//! golden decodings of them: every DNS message tcpdump decodes, this crate decodes to the same
//! id, question, response code, record counts and addresses; the malformed ones (compression
//! loops, forward pointers, bad labels, a cut capture) are errors that name what was wrong;
//! and no truncation or byte change of any captured message panics.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tapio_model::dns_type_name;
use tapio_sources_dns::Pairer;
use tapio_sources_dns::capture::{Pcap, Transport, segment};
use tapio_sources_dns::message::{DecodeError, Malformed, Message, RecordData, decode};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/dns")
}

/// tcpdump's records of one golden file: one string per packet (continuation lines joined).
fn golden(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join(name)).expect("golden file");
    let mut records: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && trimmed[digits..].starts_with("  ") {
            records.push(trimmed.to_string());
        } else if let Some(last) = records.last_mut() {
            last.push(' ');
            last.push_str(trimmed);
        }
    }
    records
}

/// Every frame of a capture with its DNS message, decoded, when it has one on `ports`.
fn decoded(pcap: &str, ports: &[u16]) -> Vec<Option<(Transport, Result<Message, DecodeError>)>> {
    let bytes = std::fs::read(fixtures().join(pcap)).expect("capture");
    let capture = Pcap::parse(&bytes).expect("a pcap file");
    capture
        .frames()
        .iter()
        .map(|frame| {
            segment(capture.link_type, frame.data, ports)
                .map(|found| (found.transport, decode(found.message)))
        })
        .collect()
}

/// tcpdump's word for a response code other than 0.
fn rcode_word(rcode: u16) -> &'static str {
    match rcode {
        1 => "FormErr",
        2 => "ServFail",
        3 => "NXDomain",
        4 => "NotImp",
        5 => "Refused",
        16 => "BadVers",
        23 => "BadCookie",
        _ => "?",
    }
}

fn type_word(qtype: u16) -> String {
    match qtype {
        44 => "SSHFP".into(),
        256 => "URI".into(),
        other => dns_type_name(other).map_or_else(|| format!("Type{other}"), Into::into),
    }
}

/// Checks one decoded message against tcpdump's text for the same packet.
fn agrees(message: &Message, text: &str) {
    let (_, dns) = text
        .split_once(": ")
        .map(|(_, rest)| (rest, rest))
        .expect("an address part");
    // TCP lines print the segment first; the DNS text starts at the id.
    let from_id = dns
        .split_once(&format!(" {} ", message.id))
        .map_or(dns, |(_, rest)| rest);
    let id_here =
        dns.starts_with(&format!("{}", message.id)) || dns.contains(&format!(" {}", message.id));
    assert!(id_here, "id {} in {text}", message.id);
    if let Some(question) = message.questions.first() {
        let name = if question.name.is_empty() {
            ".".to_string()
        } else {
            format!("{}.", question.name)
        };
        let asked = format!("{}? {name}", type_word(question.qtype));
        // Responses print their question only at -vv; queries always.
        if !message.response || text.contains(" q: ") {
            assert!(text.contains(&asked), "`{asked}` in {text}");
        }
    }
    if message.response {
        let counts = format!(
            "{}/{}/{}",
            message.answers.len(),
            message.authority_count,
            message.additional_count
        );
        assert!(text.contains(&counts), "`{counts}` in {text}");
        if message.rcode == 0 {
            for word in ["NXDomain", "ServFail", "Refused", "BadVers", "BadCookie"] {
                assert!(!from_id.contains(word), "{word} in {text}");
            }
        } else {
            let word = rcode_word(message.rcode);
            assert!(text.contains(word), "`{word}` in {text}");
        }
        // Addresses in answer order, as `A x` / `AAAA x`.
        let mut rest = text;
        for record in &message.answers {
            let wanted = match record.data {
                RecordData::A(ip) => format!("A {ip}"),
                RecordData::Aaaa(ip) => format!("AAAA {ip}"),
                _ => continue,
            };
            let at = rest
                .find(&wanted)
                .unwrap_or_else(|| panic!("`{wanted}` in order in {text}"));
            rest = &rest[at + wanted.len()..];
        }
    }
}

#[test]
fn every_message_tcpdump_decodes_decodes_the_same() {
    // (capture, golden output, ports, DNS messages in it)
    let cases = [
        ("dns_udp.pcap", "dns_udp.out", &[53][..], 2),
        ("dns_tcp.pcap", "dns_tcp.out", &[53], 2),
        ("dns_udp_8053.pcap", "dns_udp_8053-T.out", &[8053], 2),
        ("dns_tcp_8053.pcap", "dns_tcp_8053-T.out", &[8053], 2),
        ("edns-opts.pcap", "edns-opts.out", &[53], 42),
        ("dnssec.pcap", "dnssec-vv.out", &[53], 6),
        ("dns-badcookie.pcap", "dns-badcookie.out", &[53], 4),
        ("dns-badvers.pcap", "dns-badvers.out", &[53], 4),
        ("dns-uri.pcap", "dns-uri.out", &[53], 4),
    ];
    let mut rcodes = BTreeMap::new();
    for (pcap, out, ports, messages) in cases {
        let golden = golden(out);
        let decoded = decoded(pcap, ports);
        assert_eq!(decoded.len(), golden.len(), "{pcap}: packets");
        let mut count = 0;
        for (found, text) in decoded.iter().zip(&golden) {
            let Some((_, result)) = found else { continue };
            let message = result
                .as_ref()
                .unwrap_or_else(|error| panic!("{pcap}: {error} for {text}"));
            agrees(message, text);
            *rcodes.entry(message.rcode).or_insert(0) += usize::from(message.response);
            count += 1;
        }
        assert_eq!(count, messages, "{pcap}: DNS messages");
    }
    // NOERROR, NXDOMAIN, BADVERS and BADCOOKIE responses were among them.
    for rcode in [0, 3, 16, 23] {
        assert!(rcodes.get(&rcode).is_some_and(|n| *n > 0), "{rcodes:?}");
    }
}

#[test]
fn malformed_captures_are_errors_of_their_class() {
    // The compression-loop attacks carry a UDP length of 8: no message at all, which tcpdump
    // reports as `[length 0 < 12] (invalid)`.
    for zlip in ["dns-zlip-1.pcap", "dns-zlip-2.pcap", "dns-zlip-3.pcap"] {
        let golden = golden(&zlip.replace(".pcap", ".out"));
        assert!(golden[0].contains("[length 0 < 12] (invalid)"));
        let found = decoded(zlip, &[53]);
        let Some((_, Err(error))) = &found[0] else {
            panic!("{zlip}: {found:?}")
        };
        assert_eq!(error.class, Malformed::Truncated, "{zlip}: {error}");
    }
    // A name whose compression pointer points forward (tcpdump: `<BAD PTR>`).
    assert!(golden("dns_fwdptr.out")[0].contains("<BAD PTR>"));
    let found = decoded("dns_fwdptr.pcap", &[53]);
    let Some((_, Err(error))) = &found[0] else {
        panic!("{found:?}")
    };
    assert_eq!(error.class, Malformed::CompressionLoop, "{error}");
    // A fuzzed datagram with bogus labels and counts (tcpdump prints a 64259-question message
    // of garbage): it is an error, not a message.
    let found = decoded("dns-badlabel.pcap", &[53]);
    let Some((_, Err(error))) = &found[0] else {
        panic!("{found:?}")
    };
    assert!(
        matches!(
            error.class,
            Malformed::BadLabel | Malformed::CompressionLoop
        ),
        "{error}"
    );
    // A response captured with a snap length of 98: the query decodes, the response ends
    // inside its answers (tcpdump: `[|domain]`).
    let golden = golden("dns_udp_2.out");
    assert!(golden[1].ends_with("[|domain]"));
    let found = decoded("dns_udp_2.pcap", &[53]);
    let Some((_, Ok(query))) = &found[0] else {
        panic!("{found:?}")
    };
    agrees(query, &golden[0]);
    let Some((_, Err(error))) = &found[1] else {
        panic!("{found:?}")
    };
    assert_eq!(error.class, Malformed::Truncated, "{error}");
}

/// The query and response of `dns_udp.pcap` pair into one lookup with tcpdump's latency
/// (09:19:54.740079 → 09:19:54.870361).
#[test]
fn the_captured_exchange_pairs_into_one_answered_lookup() {
    let bytes = std::fs::read(fixtures().join("dns_udp.pcap")).expect("capture");
    let capture = Pcap::parse(&bytes).expect("a pcap file");
    let mut pairer = Pairer::new(5_000_000_000);
    let mut lookups = Vec::new();
    for frame in capture.frames() {
        let found = segment(capture.link_type, frame.data, &[53]).expect("DNS");
        let message = decode(found.message).expect("a message");
        lookups.extend(pairer.observe(
            frame.time_ns,
            found.source,
            found.destination,
            found.transport,
            message,
        ));
    }
    assert_eq!(lookups.len(), 1);
    let tapio_model::FactPayload::DnsQuery(fact) = lookups[0].to_fact(5_000_000_000, None, None)
    else {
        unreachable!("a dns_query")
    };
    assert_eq!(fact.name, "www.tcpdump.org");
    assert_eq!(fact.latency_ns, 130_282_000);
    assert_eq!(fact.server.to_string(), "209.87.249.18:53");
    assert_eq!(
        fact.answers,
        [
            "192.139.46.66".parse::<std::net::IpAddr>().unwrap(),
            "198.199.88.104".parse().unwrap()
        ]
    );
}

/// Every prefix and every single-byte change of every DNS message in the captures (the large
/// fuzzed ones too) decodes or fails with an error; none panics.
#[test]
fn no_truncation_or_byte_change_of_a_captured_message_panics() {
    let mut checked = 0u64;
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|ext| ext != "pcap") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("capture");
        let capture = Pcap::parse(&bytes).expect("a pcap file");
        for frame in capture.frames() {
            let Some(found) = segment(capture.link_type, frame.data, &[53, 8053]) else {
                continue;
            };
            let whole = found.message;
            // The 63 KB fuzzed datagrams: their first 600 bytes, every way.
            let whole = &whole[..whole.len().min(600)];
            for len in 0..=whole.len() {
                let _ = decode(&whole[..len]);
            }
            for at in 0..whole.len() {
                for value in [0x00, 0x01, 0x3f, 0x40, 0x80, 0xc0, 0xc0 | 0x0c, 0xff] {
                    let mut changed = whole.to_vec();
                    changed[at] = value;
                    let _ = decode(&changed);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}
