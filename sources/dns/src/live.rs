//! The live DNS collector: the eBPF capture (`tapio_ebpf::dns`) read into `dns_query` facts.
//!
//! The capture is two `cgroup_skb` programs (egress and ingress) attached to the root of the
//! cgroup v2 hierarchy. That hook was chosen over the alternatives this kernel offers because
//! it sees every socket's packets whatever network namespace the socket lives in (a pod's
//! traffic included, which a socket filter or a capture on the host's interfaces would miss
//! for pod-to-pod and loopback traffic inside a pod), it hands over whole packets with their
//! DNS payload (the `sock:*` tracepoints carry lengths only, and the `syscalls:*` ones would
//! need every send and receive call's buffers read and matched to sockets), and it names the
//! socket's cgroup, which names the container. Queries are recorded as a local socket sends
//! them, in the sending task's context (its pid, start time and comm are the querying
//! process); responses as a local socket receives them.
//!
//! [`Tracker`] does the userspace part and needs no kernel: it decodes each message (a
//! malformed one is counted by class and skipped), pairs responses with queries (a query with
//! no response within the timeout becomes a timed-out lookup), and groups the names of one
//! search-path lookup ([`crate::search`]). [`DnsSource`] runs it on the ring buffer, resolves
//! each lookup's cgroup to its container, and sends the facts with heartbeats that never
//! pass a lookup still in progress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tapio_config::{DnsCollectorConfig, TapioConfig};
use tapio_ebpf::clock;
use tapio_ebpf::dns::{DnsProbeOptions, DnsProbes};
use tapio_ebpf::ring::{AsyncRing, Wake};
use tapio_ebpf_common::dns::DnsEvent;
use tapio_model::{DnsOutcome, Fact, FactPayload, Observation, ProcessRef};
use tapio_sources::containers::{Bounded, CgroupResolver, Resolved, container_of_process};
use tapio_sources::{BoxFuture, Counter, Counters, Source, SourceContext, SourceError, Status};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::capture::Transport;
use crate::message::{Malformed, decode};
use crate::search::{GroupKey, SearchGroups};
use crate::{Key, Lookup, Pairer};

/// The source kind.
pub const KIND: &str = "dns";

/// The DNS collector of the validated `config` (`collectors.dns`); does no I/O.
///
/// # Errors
/// Never fails today; the signature is the collector table's.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(DnsSource::new(&config.collectors.dns)))
}

/// The process that sent a query, as the capture saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id; 0 when unknown.
    pub pid: u32,
    /// Start time of the process, `CLOCK_MONOTONIC` ns.
    pub start_mono_ns: u64,
    /// Command name.
    pub comm: String,
    /// cgroup v2 id of the socket.
    pub cgroup_id: u64,
}

/// A lookup that ended, with its process and the names of its search sequence folded into it.
#[derive(Clone, Debug)]
pub struct Ended {
    /// The query and its response (or none).
    pub lookup: Lookup,
    /// Who asked, when the query was captured live.
    pub owner: Option<Owner>,
    /// Names of the same search-path lookup folded into this one.
    pub search_expansions: u16,
}

/// Counts of what the tracker saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerCounts {
    /// Queries decoded.
    pub queries: u64,
    /// Responses decoded.
    pub responses: u64,
    /// Messages that did not decode, by [`Malformed`] class (in [`Malformed::ALL`] order).
    pub malformed: [u64; 4],
    /// Lookups reported as timed out.
    pub timeouts: u64,
}

/// Decodes, pairs and groups captured DNS messages; needs no kernel.
#[derive(Debug)]
pub struct Tracker {
    pairer: Pairer,
    owners: HashMap<Key, Owner>,
    search: SearchGroups<(Lookup, Option<Owner>)>,
    ready: Vec<((Lookup, Option<Owner>), u16)>,
    /// What it saw.
    pub counts: TrackerCounts,
}

impl Tracker {
    /// A tracker that times a query out after `timeout_ns` and holds an NXDOMAIN for
    /// `search_window_ns` waiting for the next name of its search sequence.
    pub fn new(timeout_ns: u64, search_window_ns: u64) -> Tracker {
        Tracker {
            pairer: Pairer::new(timeout_ns),
            owners: HashMap::new(),
            search: SearchGroups::new(search_window_ns),
            ready: Vec::new(),
            counts: TrackerCounts::default(),
        }
    }

    /// Takes one message captured at `time_ns` from `source` to `destination`; a query may
    /// carry its sending process. Lookups that ended are pushed onto `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn message(
        &mut self,
        time_ns: u64,
        source: SocketAddr,
        destination: SocketAddr,
        transport: Transport,
        bytes: &[u8],
        owner: Option<Owner>,
        out: &mut Vec<Ended>,
    ) {
        let message = match decode(bytes) {
            Ok(message) => message,
            Err(error) => {
                let class = Malformed::ALL
                    .iter()
                    .position(|class| *class == error.class)
                    .unwrap_or(3);
                self.counts.malformed[class] += 1;
                debug!(%source, %destination, error = %error, "Skipped a malformed DNS message.");
                return;
            }
        };
        if message.response {
            self.counts.responses += 1;
        } else {
            self.counts.queries += 1;
            if let Some(owner) = owner {
                self.owners
                    .insert((message.id, source, destination, transport), owner);
            }
        }
        let ended = self
            .pairer
            .observe(time_ns, source, destination, transport, message);
        self.finish(ended, out);
    }

    /// Reports the queries that timed out by `now_ns` and the held NXDOMAINs whose search
    /// window passed, onto `out`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Ended>) {
        let ended = self.pairer.expire(now_ns);
        self.finish(ended, out);
        self.search.expire(now_ns, &mut self.ready);
        self.drain(out);
    }

    /// The earliest time a lookup not reported yet can carry: nothing before it is pending.
    pub fn horizon(&self) -> Option<u64> {
        match (self.pairer.oldest_pending(), self.search.earliest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queries waiting for a response.
    pub fn pending(&self) -> usize {
        self.pairer.pending()
    }

    /// Names folded into a later lookup of their search sequence.
    pub fn folded(&self) -> u64 {
        self.search.folded
    }

    /// Responses that matched no query.
    pub fn unmatched_responses(&self) -> u64 {
        self.pairer.unmatched_responses
    }

    fn finish(&mut self, ended: Vec<Lookup>, out: &mut Vec<Ended>) {
        let timeout = self.pairer.timeout_ns();
        for lookup in ended {
            let key = (
                lookup.query.id,
                lookup.client,
                lookup.server,
                lookup.transport,
            );
            let owner = self.owners.remove(&key);
            let (nxdomain, ended_ns) = match &lookup.response {
                Some((at, response)) => (
                    DnsOutcome::of_rcode(response.rcode) == DnsOutcome::NxDomain,
                    *at,
                ),
                None => {
                    self.counts.timeouts += 1;
                    (false, lookup.sent_ns.saturating_add(timeout))
                }
            };
            // With nothing held, an answered lookup has nothing to fold into it and is
            // reported as it is: no key to build (the common case, and a saving per lookup).
            if !nxdomain && self.search.is_empty() {
                self.ready.push(((lookup, owner), 0));
                continue;
            }
            let name = lookup
                .query
                .questions
                .first()
                .map_or("", |question| question.name.as_str());
            let group = GroupKey::new(
                owner.as_ref().map_or(0, |owner| owner.pid),
                lookup.client.ip(),
                owner.as_ref().map_or(0, |owner| owner.cgroup_id),
                lookup.query.questions.first().map_or(0, |q| q.qtype),
                name,
            );
            self.search
                .ended(group, (lookup, owner), nxdomain, ended_ns, &mut self.ready);
        }
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<Ended>) {
        out.extend(
            self.ready
                .drain(..)
                .map(|((lookup, owner), search_expansions)| Ended {
                    lookup,
                    owner,
                    search_expansions,
                }),
        );
    }

    /// The timeout, ns.
    pub fn timeout_ns(&self) -> u64 {
        self.pairer.timeout_ns()
    }
}

/// The collector's health counters, shared with whoever holds [`DnsSource::stats`].
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Whether the capture is attached and being read.
    pub ready: AtomicBool,
    /// Ring-buffer records read.
    pub messages: AtomicU64,
    /// Lookups reported.
    pub lookups: AtomicU64,
    /// Lookups reported as timed out.
    pub timeouts: AtomicU64,
    /// Names folded into a later lookup of their search sequence.
    pub search_expansions: AtomicU64,
    /// Malformed messages, by [`Malformed`] class.
    pub malformed: [AtomicU64; 4],
    /// Records that were not a DNS capture record.
    pub bad_records: AtomicU64,
    /// Responses that matched no query.
    pub unmatched_responses: AtomicU64,
    /// Messages lost in the kernel because the ring buffer was full.
    pub dropped: AtomicU64,
    /// Lookups whose container was resolved.
    pub attributed: AtomicU64,
}

impl Counters for DnsStats {
    fn read(&self, into: &mut Vec<Counter>) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        into.extend([
            Counter::new("dns_messages", load(&self.messages)),
            Counter::new("dns_lookups", load(&self.lookups)),
            Counter::new("dns_timeouts", load(&self.timeouts)),
            Counter::new("dns_search_expansions", load(&self.search_expansions)),
            Counter::new("dns_malformed_truncated", load(&self.malformed[0])),
            Counter::new("dns_malformed_compression_loop", load(&self.malformed[1])),
            Counter::new("dns_malformed_bad_label", load(&self.malformed[2])),
            Counter::new("dns_malformed_bad_record", load(&self.malformed[3])),
            Counter::new("dns_bad_records", load(&self.bad_records)),
            Counter::new("dns_unmatched_responses", load(&self.unmatched_responses)),
            Counter::new("dns_dropped", load(&self.dropped)),
            Counter::new("dns_attributed", load(&self.attributed)),
        ]);
    }
}

/// The live DNS collector.
#[derive(Debug)]
pub struct DnsSource {
    config: DnsCollectorConfig,
    stats: Arc<DnsStats>,
}

impl DnsSource {
    /// The collector `config` (`collectors.dns`, validated by `tapio-config`) asks for. Does
    /// no I/O.
    pub fn new(config: &DnsCollectorConfig) -> DnsSource {
        DnsSource {
            config: config.clone(),
            stats: Arc::new(DnsStats::default()),
        }
    }

    /// The live health counters.
    pub fn stats(&self) -> Arc<DnsStats> {
        Arc::clone(&self.stats)
    }
}

impl Source for DnsSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move { self.run_inner(cx).await })
    }
}

/// How often the ring is read while messages come (the programs wake the reader only when
/// the ring passes a quarter full).
const READ_EVERY: Duration = Duration::from_millis(10);
/// How often a heartbeat goes out.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// Records read per pass before their facts are sent.
const BATCH: usize = 256;
/// Margin for a record still being written when the ring was seen empty.
const HEARTBEAT_SLACK_NS: u64 = 10_000_000;
const REFRESH: Duration = Duration::from_secs(1);

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn input_error(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> SourceError {
    SourceError::Input {
        kind: KIND,
        what: what.into(),
        source: Box::new(source),
    }
}

impl DnsSource {
    async fn run_inner(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError> {
        cx.health
            .add_counters(Arc::clone(&self.stats) as Arc<dyn Counters>);
        let options = DnsProbeOptions {
            ring_buffer_bytes: self.config.ring_buffer_bytes,
            ports: self.config.ports.clone(),
            cgroup: std::path::PathBuf::new(),
        };
        let loaded = tokio::task::spawn_blocking(move || DnsProbes::load(&options))
            .await
            .map_err(|join| input_error("the eBPF loader task", join))?;
        let mut probes = loaded.map_err(|err| {
            let mut requirement = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                requirement.push_str(": ");
                requirement.push_str(&cause.to_string());
                source = cause.source();
            }
            SourceError::Unsupported {
                kind: KIND,
                requirement,
            }
        })?;
        let ring = probes.take_ring().ok_or_else(|| SourceError::Input {
            kind: KIND,
            what: "the DNS_EVENTS ring buffer".into(),
            source: "ring buffer already taken".into(),
        })?;
        let mut ring = AsyncRing::new(ring)
            .map_err(|err| input_error("the DNS_EVENTS ring buffer fd", err))?;

        let start_offset = clock::realtime_offset_ns();
        let mut offset = start_offset;
        let mut tracker = Tracker::new(
            duration_ns(self.config.timeout),
            duration_ns(self.config.search_window),
        );
        let mut containers = Containers::new(Arc::clone(&cx.containers));
        self.stats.ready.store(true, Ordering::Relaxed);
        cx.health.set(Status::Running, None);
        info!(node = %cx.node, ports = ?self.config.ports, "DNS source started.");

        let mut ended: Vec<Ended> = Vec::new();
        let mut out: Vec<Observation> = Vec::with_capacity(BATCH);
        let mut next_heartbeat = Instant::now() + HEARTBEAT_EVERY;
        let mut next_refresh = Instant::now() + REFRESH;
        let mut last_beat = 0u64;
        let mut safe_mono = clock::monotonic_ns();
        let outcome = loop {
            let pass_start = clock::monotonic_ns();
            let mut bad = 0u64;
            let pass = ring.pass(BATCH, |item| {
                let event = match DnsEvent::parse(item) {
                    Ok(event) => event,
                    Err(err) => {
                        bad += 1;
                        debug!(error = %err, "Skipped an unreadable DNS record.");
                        return;
                    }
                };
                let owner = (event.tgid != 0).then(|| Owner {
                    pid: event.tgid,
                    start_mono_ns: event.start_ns,
                    comm: event.comm(),
                    cgroup_id: event.cgroup_id,
                });
                tracker.message(
                    event.ts_ns.saturating_add(offset),
                    event.source,
                    event.destination,
                    if event.tcp {
                        Transport::Tcp
                    } else {
                        Transport::Udp
                    },
                    event.message,
                    owner,
                    &mut ended,
                );
            });
            if pass.drained {
                safe_mono = pass_start;
            }
            let read = pass.read;
            let now_wall = clock::monotonic_ns().saturating_add(offset);
            tracker.tick(now_wall.saturating_sub(HEARTBEAT_SLACK_NS), &mut ended);
            self.to_facts(&cx, &mut ended, &mut containers, start_offset, &mut out);
            self.stats
                .messages
                .fetch_add(read as u64, Ordering::Relaxed);
            if bad > 0 {
                self.stats.bad_records.fetch_add(bad, Ordering::Relaxed);
                cx.stats.errors.fetch_add(bad, Ordering::Relaxed);
            }
            cx.stats.received.fetch_add(read as u64, Ordering::Relaxed);
            if cx.send_batch(&mut out).await.is_err() {
                break Ok(());
            }
            let full = read == BATCH;
            let now = Instant::now();
            if now >= next_heartbeat {
                let mut upto = safe_mono
                    .saturating_add(offset)
                    .saturating_sub(HEARTBEAT_SLACK_NS);
                if let Some(horizon) = tracker.horizon() {
                    upto = upto.min(horizon.saturating_sub(1));
                }
                let upto = upto.max(last_beat);
                if cx.heartbeat(upto).await.is_err() {
                    break Ok(());
                }
                last_beat = upto;
                next_heartbeat = now + HEARTBEAT_EVERY;
            }
            if now >= next_refresh {
                offset = clock::realtime_offset_ns();
                self.refresh(&probes, &tracker, &cx);
                next_refresh = now + REFRESH;
            }
            if full {
                tokio::task::yield_now().await;
                continue;
            }
            let wake_at = (now + READ_EVERY).min(next_heartbeat);
            if ring.wait(wake_at, cx.shutdown.cancelled()).await == Wake::Cancelled {
                break Ok(());
            }
        };
        self.refresh(&probes, &tracker, &cx);
        self.stats.ready.store(false, Ordering::Relaxed);
        info!("DNS source stopped.");
        drop(ring);
        drop(probes);
        outcome
    }

    fn to_facts(
        &self,
        cx: &SourceContext,
        ended: &mut Vec<Ended>,
        containers: &mut Containers,
        start_offset: u64,
        out: &mut Vec<Observation>,
    ) {
        let timeout = duration_ns(self.config.timeout);
        // Counted here and added to the shared counters once per pass.
        let (mut lookups, mut attributed, mut timeouts) = (0u64, 0u64, 0u64);
        for Ended {
            lookup,
            owner,
            search_expansions,
        } in ended.drain(..)
        {
            let container = owner.as_ref().and_then(|owner| {
                containers.resolve(owner.cgroup_id, owner.pid, owner.start_mono_ns)
            });
            attributed += u64::from(container.is_some());
            // The owner is not needed after this: its comm moves into the fact.
            let process = owner.map(|owner| ProcessRef {
                pid: owner.pid,
                start_ns: owner.start_mono_ns.saturating_add(start_offset),
                comm: owner.comm,
            });
            let mut payload = lookup.to_fact(
                timeout,
                process,
                container.map(|c| Arc::clone(&c.container_id)),
            );
            if let FactPayload::DnsQuery(query) = &mut payload {
                query.search_expansions = search_expansions;
                timeouts += u64::from(query.outcome == DnsOutcome::TimedOut);
            }
            lookups += 1;
            out.push(Observation::Fact(Fact {
                id: cx.next_fact_id(),
                time_ns: lookup.ended_ns(timeout),
                payload,
            }));
        }
        if lookups > 0 {
            self.stats.lookups.fetch_add(lookups, Ordering::Relaxed);
            self.stats
                .attributed
                .fetch_add(attributed, Ordering::Relaxed);
            self.stats.timeouts.fetch_add(timeouts, Ordering::Relaxed);
        }
    }

    fn refresh(&self, probes: &DnsProbes, tracker: &Tracker, cx: &SourceContext) {
        for (slot, value) in self.stats.malformed.iter().zip(tracker.counts.malformed) {
            slot.store(value, Ordering::Relaxed);
        }
        self.stats
            .search_expansions
            .store(tracker.folded(), Ordering::Relaxed);
        self.stats
            .unmatched_responses
            .store(tracker.unmatched_responses(), Ordering::Relaxed);
        match probes.counters() {
            Ok(counters) => {
                let before = self.stats.dropped.swap(counters.dropped, Ordering::Relaxed);
                if counters.dropped > before {
                    cx.stats
                        .dropped
                        .fetch_add(counters.dropped - before, Ordering::Relaxed);
                    warn!(
                        dropped = counters.dropped - before,
                        total = counters.dropped,
                        "DNS ring buffer full, messages lost."
                    );
                }
            }
            Err(err) => debug!(error = %err, "Cannot read the DNS counters."),
        }
    }
}

/// Which container a socket's cgroup (or a process) belongs to: cgroup ids through the
/// resolver shared with the other collectors, processes by `/proc/<pid>/cgroup`.
struct Containers {
    cgroups: Arc<CgroupResolver>,
    by_process: Bounded<(u32, u64), Resolved>,
}

const PROCESS_CACHE: usize = 65_536;

impl Containers {
    fn new(cgroups: Arc<CgroupResolver>) -> Containers {
        Containers {
            cgroups,
            by_process: Bounded::new(PROCESS_CACHE),
        }
    }

    fn resolve(&mut self, cgroup_id: u64, pid: u32, start: u64) -> Resolved {
        if let Some(found) = self.cgroups.container_of(cgroup_id) {
            return Some(found);
        }
        if pid == 0 {
            return None;
        }
        if let Some(known) = self.by_process.get(&(pid, start)) {
            return known.clone();
        }
        let resolved = container_of_process(Path::new("/proc"), pid);
        self.by_process.insert((pid, start), resolved.clone());
        resolved
    }
}
