//! The start of the DNS collector (layer L2; depends on `tapio-model`): DNS lookups as Tapio
//! sees them on the wire.
//!
//! - [`message::decode`] reads one DNS message with `hickory-proto`: header, questions,
//!   answers (A, AAAA, CNAME, with TTLs), the response code with its EDNS extension; malformed
//!   input is a typed error of a counted class (truncated, compression loop, bad label, bad
//!   record), never a panic.
//! - [`capture`] finds the DNS message in a captured frame (Ethernet, loopback, raw IP or
//!   Linux cooked; IPv4 or IPv6; UDP, or TCP with its length prefix) and reads classic pcap
//!   files.
//! - [`Pairer`] pairs each query with its response by message id and the two addresses and
//!   transport, and reports a query with no response within the timeout as timed out;
//!   [`Lookup::to_fact`] turns a pair into the `dns_query` fact the correlation rules read.

pub mod capture;
pub mod live;
pub mod message;
pub mod search;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tapio_model::{DnsOutcome, DnsQuery, DnsRecord, DnsRecordData, FactPayload, ProcessRef};

use capture::Transport;
use message::{Message, RecordData};

/// A query and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// When the query was sent, ns since the Unix epoch.
    pub sent_ns: u64,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The server's address and port.
    pub server: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The query.
    pub query: Message,
    /// The response and when it came, or `None`: timed out.
    pub response: Option<(u64, Message)>,
}

impl Lookup {
    /// When the lookup ended: the response's time, or the query's plus `timeout_ns`.
    pub fn ended_ns(&self, timeout_ns: u64) -> u64 {
        self.response
            .as_ref()
            .map_or(self.sent_ns.saturating_add(timeout_ns), |(at, _)| *at)
    }

    /// The `dns_query` fact of this lookup, made by `process` in `container_id` when known.
    /// The name is the first question's, lower-cased (resolvers randomise its case).
    pub fn to_fact(
        &self,
        timeout_ns: u64,
        process: Option<ProcessRef>,
        container_id: Option<Arc<str>>,
    ) -> FactPayload {
        let question = self.query.questions.first();
        let (outcome, rcode, answers, records) = match &self.response {
            Some((_, response)) => (
                DnsOutcome::of_rcode(response.rcode),
                Some(response.rcode),
                response
                    .answers
                    .iter()
                    .filter_map(|record| match record.data {
                        RecordData::A(ip) => Some(IpAddr::V4(ip)),
                        RecordData::Aaaa(ip) => Some(IpAddr::V6(ip)),
                        _ => None,
                    })
                    .collect(),
                response
                    .answers
                    .iter()
                    .filter_map(|record| {
                        let data = match &record.data {
                            RecordData::A(ip) => DnsRecordData::Address(IpAddr::V4(*ip)),
                            RecordData::Aaaa(ip) => DnsRecordData::Address(IpAddr::V6(*ip)),
                            RecordData::Cname(target) => {
                                DnsRecordData::Cname(target.to_ascii_lowercase())
                            }
                            RecordData::Other => return None,
                        };
                        Some(DnsRecord {
                            name: record.name.to_ascii_lowercase(),
                            ttl: record.ttl,
                            data,
                        })
                    })
                    .collect(),
            ),
            None => (DnsOutcome::TimedOut, None, Vec::new(), Vec::new()),
        };
        FactPayload::DnsQuery(DnsQuery {
            process,
            container_id,
            client: self.client,
            server: self.server,
            name: question.map_or_else(String::new, |q| q.name.to_ascii_lowercase()),
            qtype: question.map_or(0, |q| q.qtype),
            outcome,
            rcode,
            answers,
            latency_ns: self.ended_ns(timeout_ns).saturating_sub(self.sent_ns),
            records,
            search_expansions: 0,
        })
    }
}

/// What pairs a response with its query: id, client, server, transport.
pub type Key = (u16, SocketAddr, SocketAddr, Transport);

/// Pairs queries with responses, in capture order.
#[derive(Debug)]
pub struct Pairer {
    timeout_ns: u64,
    pending: BTreeMap<Key, (u64, Message)>,
    /// The pending queries by the time they were sent, oldest first: expiry looks only at
    /// the front.
    by_time: BTreeSet<(u64, Key)>,
    /// Responses that matched no pending query (late after a timeout, or never asked here).
    pub unmatched_responses: u64,
    /// Queries sent again with the same key before an answer (the first is kept).
    pub repeated_queries: u64,
}

impl Pairer {
    /// A pairer that gives up on a query after `timeout_ns`.
    pub fn new(timeout_ns: u64) -> Pairer {
        Pairer {
            timeout_ns,
            pending: BTreeMap::new(),
            by_time: BTreeSet::new(),
            unmatched_responses: 0,
            repeated_queries: 0,
        }
    }

    /// The timeout, ns.
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    /// Takes one message seen at `time_ns` from `source` to `destination`. Returns the lookups
    /// that ended: every pending query that timed out by `time_ns`, then this message's
    /// lookup when it is the response to a pending query.
    pub fn observe(
        &mut self,
        time_ns: u64,
        source: SocketAddr,
        destination: SocketAddr,
        transport: Transport,
        message: Message,
    ) -> Vec<Lookup> {
        let mut ended = self.expire(time_ns);
        if message.response {
            let key = (message.id, destination, source, transport);
            match self.pending.remove(&key) {
                Some((sent_ns, query)) => {
                    self.by_time.remove(&(sent_ns, key));
                    ended.push(Lookup {
                        sent_ns,
                        client: destination,
                        server: source,
                        transport,
                        query,
                        response: Some((time_ns, message)),
                    });
                }
                None => self.unmatched_responses += 1,
            }
        } else {
            let key = (message.id, source, destination, transport);
            match self.pending.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => self.repeated_queries += 1,
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((time_ns, message));
                    self.by_time.insert((time_ns, key));
                }
            }
        }
        ended
    }

    /// The pending queries older than the timeout at `now_ns`, as timed-out lookups, oldest
    /// first.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Lookup> {
        let mut out = Vec::new();
        while let Some(&(sent_ns, key)) = self.by_time.first() {
            if now_ns.saturating_sub(sent_ns) <= self.timeout_ns {
                break;
            }
            self.by_time.pop_first();
            if let Some((sent_ns, query)) = self.pending.remove(&key) {
                out.push(Lookup {
                    sent_ns,
                    client: key.1,
                    server: key.2,
                    transport: key.3,
                    query,
                    response: None,
                });
            }
        }
        out
    }

    /// When the oldest pending query was sent, if any is pending.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.by_time.first().map(|(sent_ns, _)| *sent_ns)
    }

    /// Queries waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u16, response: bool, rcode: u16) -> Message {
        Message {
            id,
            response,
            opcode: 0,
            authoritative: false,
            truncated: false,
            recursion_desired: true,
            recursion_available: response,
            rcode,
            questions: vec![message::Question {
                name: "API.Default.svc".into(),
                qtype: 1,
                qclass: 1,
            }],
            answers: Vec::new(),
            authority_count: 0,
            additional_count: 0,
        }
    }

    #[test]
    fn responses_pair_by_id_and_addresses_and_silence_times_out() {
        let client: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let other: SocketAddr = "10.0.0.1:4001".parse().unwrap();
        let server: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let mut pairer = Pairer::new(5_000);
        assert!(
            pairer
                .observe(100, client, server, Transport::Udp, message(7, false, 0))
                .is_empty()
        );
        assert!(
            pairer
                .observe(150, other, server, Transport::Udp, message(7, false, 0))
                .is_empty()
        );
        // Same id, wrong client port: not this query's response.
        assert!(
            pairer
                .observe(
                    200,
                    server,
                    "10.0.0.1:4002".parse().unwrap(),
                    Transport::Udp,
                    message(7, true, 2)
                )
                .is_empty()
        );
        assert_eq!(pairer.unmatched_responses, 1);
        let ended = pairer.observe(300, server, client, Transport::Udp, message(7, true, 2));
        assert_eq!(ended.len(), 1);
        let FactPayload::DnsQuery(fact) = ended[0].to_fact(5_000, None, Some("c".into())) else {
            unreachable!("a dns_query")
        };
        assert_eq!(
            (
                fact.outcome,
                fact.rcode,
                fact.latency_ns,
                fact.name.as_str()
            ),
            (DnsOutcome::ServFail, Some(2), 200, "api.default.svc")
        );
        // The other query hears nothing: it times out once a later message passes its timeout.
        let ended = pairer.observe(5_151, client, server, Transport::Udp, message(8, false, 0));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].client, other);
        let FactPayload::DnsQuery(fact) = ended[0].to_fact(5_000, None, None) else {
            unreachable!("a dns_query")
        };
        assert_eq!(
            (fact.outcome, fact.rcode, fact.latency_ns),
            (DnsOutcome::TimedOut, None, 5_000)
        );
        assert_eq!(pairer.expire(u64::MAX).len(), 1);
    }
}
