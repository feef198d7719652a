//! Tapio's kernel collector (layer L2; depends on `tapio-sources`, `tapio-model`,
//! `tapio-ebpf` and `tapio-ebpf-common`).
//!
//! [`KernelSource`] attaches Tapio's eBPF programs and turns their ring-buffer records into
//! facts: process exec (with the first arguments), fork and exit (exit code, signal); OOM kills
//! (victim, memory cgroup, pod and container); TCP connects with their outcome (established,
//! refused, timed out), accepts, closes and retransmits; failed opens (ENOENT, EACCES),
//! unlinks and renames under configured path prefixes; container exits, seen when a
//! container's cgroup loses its last process. Every process is named by
//! `(node, pid, start_ns)`, with `start_ns` the kernel's task start time on the wall clock, the
//! same in every fact about that process. Containers and pods come from cgroup paths
//! ([`cgroup`]). A process that runs in a container is also reported as state: a
//! `process_container` record inserted at its exec and retracted at its exit, so the dataflow's
//! ownership graph holds only live processes. A heartbeat goes out at least every 100 ms so the
//! dataflow's watermark moves.
//!
//! Building the source does no I/O; [`tapio_sources::Source::run`] checks the machine, loads
//! the programs and reads. Health is in [`KernelStats`] ([`KernelSource::stats`]), which is
//! also the source's own counters in its [`tapio_sources::Health`].
//!
//! # Minimum kernel version
//! 5.8 with BTF. Needs root (or CAP_BPF + CAP_PERFMON).
//!
//! ```
//! use tapio_config::KernelCollectorConfig;
//! use tapio_sources_kernel::KernelSource;
//! let source = KernelSource::new(&KernelCollectorConfig::default()).unwrap();
//! let stats = source.stats();
//! assert!(!stats.snapshot().ready);
//! ```

mod identity;

/// Container identity from cgroup paths (shared with the DNS collector, in `tapio-sources`).
pub use tapio_sources::cgroup;
mod stats;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::{KernelCollectorConfig, TapioConfig};
use tapio_ebpf::ring::{AsyncRing, Wake};
use tapio_ebpf::{KernelProbes, LoadError, ProbeOptions, clock};
use tapio_ebpf_common::{self as common, Record, c_bytes, c_str};
use tapio_model::{
    ConnectOutcome, ContainerExit, EntityId, Fact, FactPayload, FileChanged, FileOp,
    FileOpenFailed, Observation, OomKill, ProcessContainer, ProcessExec, ProcessExit, ProcessFork,
    ProcessRef, StateObject, StateRecord, StateUpdate, TcpAccept, TcpClose, TcpConnect,
    TcpRetransmit, TimeNs,
};
use tapio_sources::{BoxFuture, Counters, Source, SourceContext, SourceError, Status};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::identity::Identity;
pub use crate::stats::{KernelStats, KernelStatsSnapshot, ProgramCost};

/// The source kind.
pub const KIND: &str = "kernel";

/// The kernel collector of the validated `config` (`collectors.kernel`); does no I/O.
///
/// # Errors
/// [`SourceError::Build`] when the eBPF programs cannot take the file path prefixes.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    let source =
        KernelSource::new(&config.collectors.kernel).map_err(|error| SourceError::Build {
            kind: KIND,
            source: Box::new(error),
        })?;
    Ok(Box::new(source))
}

/// A configuration value the eBPF programs cannot take, although it passed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A path prefix is unusable.
    #[error("`collectors.kernel.file_path_prefixes` is invalid")]
    Prefixes(#[source] common::PrefixError),
}

/// The kernel collector.
#[derive(Debug)]
pub struct KernelSource {
    config: KernelCollectorConfig,
    probe_config: common::Config,
    stats: Arc<KernelStats>,
}

impl KernelSource {
    /// The collector `config` (`collectors.kernel`, validated by `tapio-config`) asks for.
    /// Does no I/O.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key the eBPF programs cannot take.
    pub fn new(config: &KernelCollectorConfig) -> Result<KernelSource, ConfigError> {
        let config = config.clone();
        let probe_config = common::Config::new(
            duration_ns(config.file_aggregation_window),
            duration_ns(config.retransmit_aggregation_window),
            &config.file_path_prefixes,
        )
        .map_err(ConfigError::Prefixes)?
        // Without a read interval the reader relies on being woken for new records.
        .waking_the_reader(config.batch_delay.is_zero());
        Ok(KernelSource {
            config,
            probe_config,
            stats: Arc::new(KernelStats::default()),
        })
    }

    /// The live health counters; keep the handle to log them while the source runs.
    pub fn stats(&self) -> Arc<KernelStats> {
        Arc::clone(&self.stats)
    }
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Source for KernelSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move { self.run_inner(cx).await })
    }
}

/// Records read per pass; their observations are sent before the next pass. Small passes let
/// the next pass reuse the memory the consumer freed meanwhile (glibc's per-thread cache holds
/// a few blocks per size): in the exec storm bench 32 cost less CPU per record than 16, 64, 128
/// or 4096.
const BATCH: usize = 32;
/// A heartbeat promises everything older than the last time the ring was seen empty, less
/// this margin for a record still being written by a program that started before.
const HEARTBEAT_SLACK_NS: u64 = 10_000_000;
const REFRESH: Duration = Duration::from_secs(1);

/// What one pass over the ring buffer read, added to the shared counters once per pass rather
/// than once per record.
#[derive(Default)]
struct Tally {
    read: usize,
    undecodable: u64,
    kinds: [u64; 8],
    facts: u64,
}

impl Tally {
    fn add_to(&self, stats: &KernelStats, source: &tapio_sources::SourceStats) {
        let decoded: u64 = self.kinds.iter().sum();
        if decoded > 0 {
            source.received.fetch_add(decoded, Ordering::Relaxed);
            for (counter, &count) in stats.records.iter().zip(&self.kinds) {
                if count > 0 {
                    counter.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
        if self.undecodable > 0 {
            stats
                .decode_errors
                .fetch_add(self.undecodable, Ordering::Relaxed);
            source.errors.fetch_add(self.undecodable, Ordering::Relaxed);
        }
        if self.facts > 0 {
            stats.facts.fetch_add(self.facts, Ordering::Relaxed);
        }
    }
}

fn unsupported(err: &LoadError) -> SourceError {
    let mut requirement = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        requirement.push_str(": ");
        requirement.push_str(&cause.to_string());
        source = cause.source();
    }
    SourceError::Unsupported {
        kind: KIND,
        requirement,
    }
}

impl KernelSource {
    async fn run_inner(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError> {
        cx.health
            .add_counters(Arc::clone(&self.stats) as Arc<dyn Counters>);
        let options = ProbeOptions {
            ring_buffer_bytes: self.config.ring_buffer_bytes,
            hooks: tapio_ebpf::Hooks {
                fork: self.config.forks,
                oom: self.config.oom,
                network: self.config.network,
                files: !self.config.file_path_prefixes.is_empty(),
                containers: self.config.containers,
            },
            config: self.probe_config,
        };
        // Verifying and attaching takes a moment of CPU: keep it off the async threads.
        let loaded = tokio::task::spawn_blocking(move || KernelProbes::load(&options))
            .await
            .map_err(|join| SourceError::Input {
                kind: KIND,
                what: "the eBPF loader task".into(),
                source: Box::new(join),
            })?;
        let mut probes = loaded.map_err(|err| unsupported(&err))?;
        let ring = probes.take_ring().ok_or_else(|| SourceError::Input {
            kind: KIND,
            what: "the EVENTS ring buffer".into(),
            source: "ring buffer already taken".into(),
        })?;
        let mut ring = AsyncRing::new(ring).map_err(|err| SourceError::Input {
            kind: KIND,
            what: "the EVENTS ring buffer fd".into(),
            source: Box::new(err),
        })?;
        let disabled: Vec<String> = probes
            .disabled()
            .iter()
            .map(|d| format!("{}: {}", d.hook, d.reason))
            .collect();
        // What the collector runs without is its status message while it runs.
        let message = (!disabled.is_empty()).then(|| format!("disabled: {}", disabled.join("; ")));
        if let Ok(mut hooks) = self.stats.hooks.lock() {
            hooks.0 = probes.attached().iter().map(ToString::to_string).collect();
            hooks.1 = disabled;
        }

        let mut reader = Reader {
            identity: Identity::new(
                self.config.process_cache_capacity,
                Arc::clone(&cx.containers),
            ),
            names: NameCache::new(),
            containers: Containers::new(self.config.process_cache_capacity),
            start_offset: clock::realtime_offset_ns(),
            offset: 0,
        };
        reader.offset = reader.start_offset;
        self.stats.ready.store(true, Ordering::Relaxed);
        cx.health.set(Status::Running, message);
        info!(node = %cx.node, "Kernel source started.");

        let interval = self.config.heartbeat_interval;
        let mut next_heartbeat = Instant::now() + interval;
        let mut last_refresh = Instant::now();
        let mut next_refresh = last_refresh + REFRESH;
        let mut records_at_refresh = 0u64;
        let mut safe_mono = clock::monotonic_ns();
        let mut last_beat = 0u64;
        let mut out: Vec<Observation> = Vec::with_capacity(BATCH);
        let batch_delay = self.config.batch_delay;

        let outcome = loop {
            // Drain what is there. Each record is turned into observations where it lies in the
            // ring (no copy), and its slot is released before anything awaits.
            let pass_start = clock::monotonic_ns();
            let mut tally = Tally::default();
            let pass = ring.pass(BATCH, |item| {
                let record = match common::decode(item) {
                    Ok(record) => record,
                    Err(err) => {
                        tally.undecodable += 1;
                        debug!(error = %err, len = item.len(), "Skipped an undecodable ring-buffer record.");
                        return;
                    }
                };
                let header = record.header();
                if let Some(count) = tally.kinds.get_mut(header.kind as usize) {
                    *count += 1;
                }
                let time_ns = header.ts_ns.saturating_add(reader.offset);
                let Some(payload) = reader.convert(record, time_ns) else {
                    return;
                };
                let membership = reader.containers.membership(&payload, time_ns, &cx);
                out.push(Observation::Fact(Fact {
                    id: cx.next_fact_id(),
                    time_ns,
                    payload,
                }));
                tally.facts += 1;
                if let Some(update) = membership {
                    out.push(Observation::State(update));
                }
            });
            if pass.drained {
                safe_mono = pass_start;
            }
            tally.read = pass.read;
            let full = tally.read == BATCH;
            let read = tally.read;
            tally.add_to(&self.stats, &cx.stats);
            if cx.send_batch(&mut out).await.is_err() {
                break Ok(());
            }

            // The programs do not wake us for a record (a wakeup costs the writing program
            // several microseconds, and this reader tens of microseconds of CPU on a VM): while
            // records keep coming we read every `batch_delay`, otherwise at every heartbeat, and
            // early when the ring passes a quarter full. A record read at a heartbeat is
            // covered by that heartbeat, so its tick closes no later than if we had been woken
            // for it. Whatever comes due before the next wakeup is done now.
            let now = Instant::now();
            let busy = read > 0 && !batch_delay.is_zero();
            let sleeps_past_heartbeat = !full && busy && now + batch_delay >= next_heartbeat;
            if now >= next_heartbeat || sleeps_past_heartbeat {
                let upto = safe_mono
                    .saturating_add(reader.offset)
                    .saturating_sub(HEARTBEAT_SLACK_NS)
                    .max(last_beat);
                if cx.heartbeat(upto).await.is_err() {
                    break Ok(());
                }
                last_beat = upto;
                self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                self.stats.watermark_ns.store(upto, Ordering::Relaxed);
                next_heartbeat = now + interval;
            }
            if now >= next_refresh {
                reader.offset = clock::realtime_offset_ns();
                let records = self.stats.snapshot().records_total();
                let elapsed = now.duration_since(last_refresh).as_secs_f64().max(1e-3);
                self.stats.records_per_sec.store(
                    ((records - records_at_refresh) as f64 / elapsed) as u64,
                    Ordering::Relaxed,
                );
                records_at_refresh = records;
                self.refresh_kernel_stats(&probes, &reader, &cx);
                last_refresh = now;
                next_refresh = now + REFRESH;
            }
            if full {
                tokio::task::yield_now().await;
                continue;
            }
            let wake_at = if busy {
                (now + batch_delay).min(next_heartbeat)
            } else {
                next_heartbeat
            };
            // Woken when the ring passes a quarter full (or for every batch, with no
            // batch_delay).
            if ring.wait(wake_at, cx.shutdown.cancelled()).await == Wake::Cancelled {
                break Ok(());
            }
        };
        self.refresh_kernel_stats(&probes, &reader, &cx);
        self.stats.ready.store(false, Ordering::Relaxed);
        info!(stats = %self.stats.snapshot(), "Kernel source stopped.");
        drop(ring);
        drop(probes);
        outcome
    }

    fn refresh_kernel_stats(&self, probes: &KernelProbes, reader: &Reader, cx: &SourceContext) {
        match probes.counters() {
            Ok(counters) => {
                let before: u64 = self.stats.snapshot().dropped_total();
                for (slot, value) in self.stats.dropped.iter().zip(counters.dropped_by_kind) {
                    slot.store(value, Ordering::Relaxed);
                }
                let after = counters.dropped();
                if after > before {
                    cx.stats
                        .dropped
                        .fetch_add(after - before, Ordering::Relaxed);
                    warn!(
                        dropped = after - before,
                        total = after,
                        "Kernel ring buffer full, records lost."
                    );
                }
                self.stats
                    .file_aggregated
                    .store(counters.file_aggregated, Ordering::Relaxed);
                self.stats
                    .retransmit_aggregated
                    .store(counters.retransmit_aggregated, Ordering::Relaxed);
            }
            Err(err) => debug!(error = %err, "Cannot read the kernel counters."),
        }
        let programs = probes
            .program_stats()
            .into_iter()
            .map(|p| ProgramCost {
                name: p.name.to_string(),
                run_count: p.run_count,
                run_time: p.run_time,
            })
            .collect();
        if let Ok(mut slot) = self.stats.programs.lock() {
            *slot = programs;
        }
        self.stats
            .pid_cache
            .store(reader.identity.pid_cache_len() as u64, Ordering::Relaxed);
        self.stats
            .proc_reads
            .store(reader.identity.proc_reads, Ordering::Relaxed);
    }
}

/// What the source remembers per container and per process in a container, to report
/// membership as retractable state and to say how a container ended.
struct Containers {
    /// (pid, start_ns) → the membership record inserted for that process.
    members: identity::Bounded<(u32, TimeNs), StateRecord>,
    /// container id → (time of the last OOM kill in it, last process exit status as a shell
    /// would report it: code, or 128 + signal).
    history: identity::Bounded<std::sync::Arc<str>, (Option<TimeNs>, Option<i32>)>,
    /// container id → when its exit was last reported (each v1 hierarchy and v2 report the
    /// same emptying).
    reported: identity::Bounded<std::sync::Arc<str>, TimeNs>,
}

/// An OOM kill this long before a container's end makes the end `OOMKilled`.
const OOM_BLAME_NS: u64 = 30_000_000_000;
/// Reports of one container's end within this window are one end.
const EXIT_DEDUP_NS: u64 = 5_000_000_000;

impl Containers {
    fn new(capacity: usize) -> Containers {
        Containers {
            members: identity::Bounded::new(capacity),
            history: identity::Bounded::new(capacity),
            reported: identity::Bounded::new(capacity),
        }
    }

    /// The state change a fact implies: a process in a container joined (exec) or left (exit).
    fn membership(
        &mut self,
        payload: &FactPayload,
        time_ns: TimeNs,
        cx: &SourceContext,
    ) -> Option<StateUpdate> {
        match payload {
            FactPayload::ProcessExec(exec) => {
                let container_id = exec.container_id.clone()?;
                // A second exec in the same process keeps its place in the container.
                if self.members.get(&(exec.pid, exec.start_ns)).is_some() {
                    return None;
                }
                let record = StateRecord {
                    evidence: cx.next_fact_id(),
                    since_ns: time_ns,
                    object: StateObject::ProcessContainer(ProcessContainer {
                        process: EntityId::Process {
                            node: cx.node.clone(),
                            pid: exec.pid,
                            start_ns: exec.start_ns,
                        },
                        container_id,
                        filename: exec.filename.clone(),
                    }),
                };
                self.members
                    .insert((exec.pid, exec.start_ns), record.clone());
                Some(StateUpdate {
                    time_ns,
                    diff: 1,
                    record,
                })
            }
            FactPayload::ProcessExit(exit) => {
                if let Some(container) = &exit.container_id {
                    let status = if exit.signal != 0 {
                        128 + exit.signal as i32
                    } else {
                        exit.exit_code
                    };
                    let oom = self.history.get(container).and_then(|(oom, _)| *oom);
                    self.history.insert(container.clone(), (oom, Some(status)));
                }
                let record = self.members.remove(&(exit.pid, exit.start_ns))?;
                Some(StateUpdate {
                    time_ns,
                    diff: -1,
                    record,
                })
            }
            FactPayload::OomKill(kill) => {
                let container = kill.container_id.clone()?;
                let last = self.history.get(&container).and_then(|(_, last)| *last);
                self.history.insert(container, (Some(time_ns), last));
                None
            }
            _ => None,
        }
    }

    /// The end of a container whose cgroup emptied, once per container.
    fn ended(&mut self, container: cgroup::ContainerRef, time_ns: TimeNs) -> Option<FactPayload> {
        let id = container.container_id;
        if let Some(last) = self.reported.get(&id)
            && time_ns.saturating_sub(*last) < EXIT_DEDUP_NS
        {
            return None;
        }
        self.reported.insert(id.clone(), time_ns);
        let (oom, status) = self.history.remove(&id).unwrap_or((None, None));
        let oom_killed = oom.is_some_and(|at| time_ns.saturating_sub(at) <= OOM_BLAME_NS);
        let exit_code = status.unwrap_or(if oom_killed { 137 } else { 0 });
        let reason = if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        Some(FactPayload::ContainerExit(ContainerExit {
            container_id: id,
            container_name: String::new(),
            pod: None,
            exit_code,
            reason: reason.into(),
            restart_count: 0,
        }))
    }
}

/// Turns records into fact payloads.
struct Reader {
    identity: Identity,
    names: NameCache,
    containers: Containers,
    /// Offset for process start times: fixed for the run, so start_ns is stable.
    start_offset: u64,
    /// Offset for event times: refreshed every second.
    offset: u64,
}

/// The memory cgroup names of a process record: leaf, parent, grandparent.
type CgroupNames = [[u8; common::CGROUP_NAME_LEN]; common::CGROUP_LEVELS];

fn has_names(names: &CgroupNames) -> bool {
    names.iter().any(|name| name[0] != 0)
}

fn name_str(name: &[u8]) -> &str {
    // A name that is not UTF-8 cannot name a pod or a container: skip it like an empty one.
    std::str::from_utf8(c_bytes(name)).unwrap_or("")
}

/// Containers named by the cgroup names of recent process records. Records mostly come from a
/// few cgroups at a time, so comparing the raw names with a short list saves parsing them (and
/// allocating) for every exec and exit.
struct NameCache {
    entries: Vec<(CgroupNames, identity::Resolved)>,
    /// The entry to replace next once the list is full.
    next: usize,
}

const NAME_CACHE_ENTRIES: usize = 16;

impl NameCache {
    fn new() -> NameCache {
        NameCache {
            entries: Vec::with_capacity(NAME_CACHE_ENTRIES),
            next: 0,
        }
    }

    fn resolve(&mut self, names: &CgroupNames) -> identity::Resolved {
        // The kernel copies each name up to its NUL and leaves whatever was in the ring buffer
        // after it: compare the names, not the leftovers.
        let mut key = [[0; common::CGROUP_NAME_LEN]; common::CGROUP_LEVELS];
        for (slot, name) in key.iter_mut().zip(names) {
            let name = c_bytes(name);
            slot[..name.len()].copy_from_slice(name);
        }
        if let Some((_, resolved)) = self.entries.iter().find(|(known, _)| *known == key) {
            return resolved.clone();
        }
        let resolved = cgroup::parse_names(key.iter().map(|name| name_str(name))).map(Arc::new);
        if self.entries.len() < NAME_CACHE_ENTRIES {
            self.entries.push((key, resolved.clone()));
        } else {
            self.entries[self.next] = (key, resolved.clone());
            self.next = (self.next + 1) % NAME_CACHE_ENTRIES;
        }
        resolved
    }
}

fn container_id(resolved: &identity::Resolved) -> Option<std::sync::Arc<str>> {
    resolved.as_ref().map(|c| c.container_id.clone())
}

fn socket(family: u16, addr: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    };
    SocketAddr::new(ip, port)
}

impl Reader {
    fn start(&self, monotonic: u64) -> TimeNs {
        monotonic.saturating_add(self.start_offset)
    }

    fn convert(&mut self, record: Record<'_>, time_ns: TimeNs) -> Option<FactPayload> {
        Some(match record {
            Record::CgroupEmpty(e) => {
                let container = cgroup::parse_path(&c_str(&e.path))?;
                return self.containers.ended(container, time_ns);
            }
            Record::Exec(e) => {
                let resolved = if has_names(&e.cgroup) {
                    let resolved = self.names.resolve(&e.cgroup);
                    self.identity.learn(e.task.pid, e.task.start_ns, resolved)
                } else {
                    self.identity
                        .resolve(e.task.pid, Some(e.task.start_ns), e.task.cgroup_id)
                };
                let args = e
                    .args
                    .iter()
                    .take((e.args_read as usize).min(common::MAX_ARGS))
                    .map(|arg| c_str(arg))
                    .collect();
                FactPayload::ProcessExec(ProcessExec {
                    pid: e.task.pid,
                    ppid: e.task.ppid,
                    uid: e.task.uid,
                    start_ns: self.start(e.task.start_ns),
                    comm: c_str(&e.task.comm),
                    filename: c_str(&e.filename),
                    args,
                    container_id: container_id(&resolved),
                })
            }
            Record::Fork(e) => {
                let resolved = self
                    .identity
                    .fork(e.parent_pid, e.child_pid, e.child_start_ns);
                FactPayload::ProcessFork(ProcessFork {
                    pid: e.child_pid,
                    start_ns: self.start(e.child_start_ns),
                    ppid: e.parent_pid,
                    parent_start_ns: self.start(e.parent_start_ns),
                    comm: c_str(&e.comm),
                    container_id: container_id(&resolved),
                })
            }
            Record::Exit(e) => {
                let resolved = if has_names(&e.cgroup) {
                    self.names.resolve(&e.cgroup)
                } else {
                    self.identity
                        .resolve(e.task.pid, Some(e.task.start_ns), e.task.cgroup_id)
                };
                self.identity.exit(e.task.pid);
                let code = e.exit_code;
                let signal = (code & 0x7f) as u32;
                FactPayload::ProcessExit(ProcessExit {
                    pid: e.task.pid,
                    start_ns: self.start(e.task.start_ns),
                    comm: c_str(&e.task.comm),
                    exit_code: if signal == 0 { (code >> 8) & 0xff } else { 0 },
                    signal,
                    container_id: container_id(&resolved),
                })
            }
            Record::Oom(e) => {
                let levels = (e.levels as usize).min(common::OOM_CGROUP_LEVELS);
                let names: Vec<String> = e.cgroup[..levels].iter().map(|n| c_str(n)).collect();
                let parsed = cgroup::parse_names(names.iter().map(String::as_str));
                let memcg = cgroup::path_from_names(names.iter().map(String::as_str));
                FactPayload::OomKill(OomKill {
                    pid: e.task.pid,
                    start_ns: self.start(e.task.start_ns),
                    comm: c_str(&e.task.comm),
                    container_id: parsed.as_ref().map(|c| c.container_id.clone()),
                    pod_uid: parsed.and_then(|c| c.pod_uid),
                    memcg,
                    rss_pages: e.rss_pages,
                })
            }
            Record::Tcp(e) => {
                let known = e.flags & common::TCP_OWNER_KNOWN != 0 && e.pid != 0;
                let process = known.then(|| ProcessRef {
                    pid: e.pid,
                    start_ns: self.start(e.start_ns),
                    comm: c_str(&e.comm),
                });
                let resolved = if known {
                    self.identity.resolve(e.pid, Some(e.start_ns), 0)
                } else {
                    None
                };
                let local = socket(e.family, &e.saddr, e.sport);
                let remote = socket(e.family, &e.daddr, e.dport);
                let container_id = container_id(&resolved);
                match e.op {
                    common::TCP_CONNECT => FactPayload::TcpConnect(TcpConnect {
                        process,
                        local,
                        remote,
                        outcome: match e.outcome {
                            common::CONNECT_ESTABLISHED => ConnectOutcome::Established,
                            common::CONNECT_REFUSED => ConnectOutcome::Refused,
                            common::CONNECT_TIMED_OUT => ConnectOutcome::TimedOut,
                            common::CONNECT_ABORTED => ConnectOutcome::Aborted,
                            _ => ConnectOutcome::Failed,
                        },
                        error: e.error,
                        latency_ns: e.duration_ns,
                        container_id,
                    }),
                    common::TCP_ACCEPT => FactPayload::TcpAccept(TcpAccept {
                        process,
                        local,
                        remote,
                        container_id,
                    }),
                    common::TCP_CLOSE => FactPayload::TcpClose(TcpClose {
                        process,
                        local,
                        remote,
                        duration_ns: e.duration_ns,
                        bytes_sent: e.bytes_sent,
                        bytes_received: e.bytes_received,
                        retransmits: e.count,
                        reset: e.flags & common::TCP_RESET_SEEN != 0,
                        error: e.error,
                        container_id,
                    }),
                    common::TCP_RETRANSMIT => FactPayload::TcpRetransmit(TcpRetransmit {
                        process,
                        local,
                        remote,
                        count: e.count,
                        container_id,
                    }),
                    _ => return None,
                }
            }
            Record::File(e) => {
                let resolved =
                    self.identity
                        .resolve(e.task.pid, Some(e.task.start_ns), e.task.cgroup_id);
                let process = ProcessRef {
                    pid: e.task.pid,
                    start_ns: self.start(e.task.start_ns),
                    comm: c_str(&e.task.comm),
                };
                let path = c_str(&e.path);
                let container_id = container_id(&resolved);
                match e.op {
                    common::FILE_OPEN => FactPayload::FileOpenFailed(FileOpenFailed {
                        process,
                        path,
                        errno: -e.ret,
                        count: e.count,
                        container_id,
                    }),
                    common::FILE_UNLINK => FactPayload::FileChanged(FileChanged {
                        process,
                        op: FileOp::Unlink,
                        path,
                        new_path: None,
                        count: e.count,
                        container_id,
                    }),
                    common::FILE_RENAME => FactPayload::FileChanged(FileChanged {
                        process,
                        op: FileOp::Rename,
                        path,
                        new_path: Some(c_str(&e.path2)),
                        count: e.count,
                        container_id,
                    }),
                    _ => return None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let source = KernelSource::new(&KernelCollectorConfig::default()).expect("defaults");
        assert_eq!(source.kind(), "kernel");
    }

    #[test]
    fn prefixes_the_programs_cannot_take_name_their_key() {
        // Validation refuses these first; the collector still names the key if it gets them.
        for prefixes in [vec![String::new()], vec!["/x".to_owned(); 9]] {
            let config = KernelCollectorConfig {
                file_path_prefixes: prefixes,
                ..KernelCollectorConfig::default()
            };
            let err = KernelSource::new(&config).expect_err("unusable prefixes");
            assert!(
                err.to_string()
                    .contains("collectors.kernel.file_path_prefixes"),
                "{err}"
            );
        }
    }

    #[test]
    fn exit_codes_and_signals_split() {
        // Records are plain bytes: build an exit record and convert it.
        let mut reader = Reader {
            identity: Identity::new(
                8,
                Arc::new(tapio_sources::containers::CgroupResolver::new()),
            ),
            names: NameCache::new(),
            containers: Containers::new(8),
            start_offset: 1_000,
            offset: 1_000,
        };
        let mut exit = common::ExitEvent {
            hdr: common::Header {
                ts_ns: 5,
                kind: common::EV_EXIT,
                cpu: 0,
            },
            task: common::Task::default(),
            exit_code: 3 << 8,
            _pad: 0,
            cgroup: [[0; common::CGROUP_NAME_LEN]; common::CGROUP_LEVELS],
        };
        exit.task.pid = 7;
        exit.task.start_ns = 2;
        let Some(FactPayload::ProcessExit(normal)) = reader.convert(Record::Exit(&exit), 5) else {
            panic!("an exit")
        };
        assert_eq!(
            (normal.exit_code, normal.signal, normal.start_ns),
            (3, 0, 1_002)
        );
        exit.exit_code = 9 | 0x80;
        let Some(FactPayload::ProcessExit(killed)) = reader.convert(Record::Exit(&exit), 5) else {
            panic!("an exit")
        };
        assert_eq!((killed.exit_code, killed.signal), (0, 9));
    }

    #[test]
    fn a_container_end_is_reported_once_and_blamed_on_a_recent_oom_kill() {
        let (cx, _rx) = SourceContext::for_test(KIND, "n", 8);
        let mut containers = Containers::new(8);
        let id = "c".repeat(64);
        let container = || cgroup::ContainerRef {
            container_id: "c".repeat(64).into(),
            pod_uid: None,
        };
        let kill = FactPayload::OomKill(OomKill {
            pid: 7,
            start_ns: 1,
            comm: "java".into(),
            container_id: Some(id.as_str().into()),
            pod_uid: None,
            memcg: String::new(),
            rss_pages: 1,
        });
        let exit = FactPayload::ProcessExit(ProcessExit {
            pid: 7,
            start_ns: 1,
            comm: "java".into(),
            exit_code: 0,
            signal: 9,
            container_id: Some(id.as_str().into()),
        });
        assert!(containers.membership(&kill, 1_000, &cx).is_none());
        assert!(containers.membership(&exit, 2_000, &cx).is_none());
        let Some(FactPayload::ContainerExit(end)) = containers.ended(container(), 3_000) else {
            panic!("a container exit")
        };
        assert_eq!((end.exit_code, end.reason.as_str()), (137, "OOMKilled"));
        // The other hierarchies report the same emptying: once is enough.
        assert!(containers.ended(container(), 3_500).is_none());
        // Much later, a container that just completed is not blamed on the old kill.
        let done = FactPayload::ProcessExit(ProcessExit {
            pid: 8,
            start_ns: 2,
            comm: "sh".into(),
            exit_code: 0,
            signal: 0,
            container_id: Some(id.as_str().into()),
        });
        assert!(containers.membership(&done, 100_000_000_000, &cx).is_none());
        let Some(FactPayload::ContainerExit(end)) = containers.ended(container(), 100_000_000_001)
        else {
            panic!("a container exit")
        };
        assert_eq!((end.exit_code, end.reason.as_str()), (0, "Completed"));
    }

    fn cgroup_names(leaf_first: &[&str]) -> CgroupNames {
        let mut names = [[0; common::CGROUP_NAME_LEN]; common::CGROUP_LEVELS];
        for (slot, name) in names.iter_mut().zip(leaf_first) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        names
    }

    #[test]
    fn cgroup_names_resolve_like_the_parser_and_are_remembered() {
        let mut cache = NameCache::new();
        let id = "c".repeat(64);
        let pod = "pod1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e";
        let names = cgroup_names(&[&id, pod, "burstable"]);
        let first = cache.resolve(&names).expect("a container");
        assert_eq!(&*first.container_id, id.as_str());
        assert_eq!(
            first.pod_uid.as_deref(),
            Some("1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e")
        );
        assert!(Arc::ptr_eq(
            &first,
            &cache.resolve(&names).expect("remembered")
        ));
        // Bytes after a name's NUL are leftovers in the ring buffer, not part of the name.
        let mut leftovers = names;
        leftovers[1][pod.len() + 1..pod.len() + 4].copy_from_slice(b"old");
        assert!(Arc::ptr_eq(
            &first,
            &cache.resolve(&leftovers).expect("remembered")
        ));
        assert_eq!(cache.entries.len(), 1);
        assert_eq!(cache.resolve(&cgroup_names(&["user.slice", "/"])), None);
        // More cgroups than the cache holds: the oldest is parsed again, with the same result.
        for i in 0..NAME_CACHE_ENTRIES {
            let other = format!("{i:064}");
            let resolved = cache.resolve(&cgroup_names(&[&other, pod]));
            assert_eq!(resolved.map(|c| c.container_id.to_string()), Some(other));
        }
        assert_eq!(cache.entries.len(), NAME_CACHE_ENTRIES);
        let again = cache.resolve(&names).expect("a container");
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again, first);
    }

    #[test]
    fn a_process_in_a_container_joins_at_exec_and_leaves_at_exit() {
        let (cx, _rx) = SourceContext::for_test(KIND, "n", 8);
        let mut containers = Containers::new(8);
        let exec = FactPayload::ProcessExec(ProcessExec {
            pid: 7,
            ppid: 1,
            uid: 0,
            start_ns: 1,
            comm: "app".into(),
            filename: "/app".into(),
            args: vec![],
            container_id: Some("c1".into()),
        });
        let joined = containers.membership(&exec, 10, &cx).expect("joins");
        assert_eq!(joined.diff, 1);
        // A second exec of the same process keeps its place.
        assert!(containers.membership(&exec, 11, &cx).is_none());
        let exit = FactPayload::ProcessExit(ProcessExit {
            pid: 7,
            start_ns: 1,
            comm: "app".into(),
            exit_code: 0,
            signal: 0,
            container_id: Some("c1".into()),
        });
        let left = containers.membership(&exit, 20, &cx).expect("leaves");
        assert_eq!((left.diff, &left.record), (-1, &joined.record));
    }
}
