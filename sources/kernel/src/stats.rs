//! Health of the kernel collector: what it read, what the kernel lost, what the programs cost.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tapio_sources::{Counter, Counters};

/// Live counters, shared between the running source and whoever reports on it (the binary
/// logs [`KernelStats::snapshot`] periodically and at exit).
#[derive(Debug, Default)]
pub struct KernelStats {
    /// The probes are attached and records are being read.
    pub ready: AtomicBool,
    /// Records decoded, by kind (index = record kind: 1 exec, 2 fork, 3 exit, 4 oom, 5 tcp,
    /// 6 file).
    pub records: [AtomicU64; 8],
    /// Records that could not be decoded (short or unknown), counted and skipped.
    pub decode_errors: AtomicU64,
    /// Records the kernel could not write because the ring buffer was full, by kind.
    pub dropped: [AtomicU64; 8],
    /// File events folded in the kernel into an earlier identical one.
    pub file_aggregated: AtomicU64,
    /// Retransmits folded in the kernel into an earlier retransmit event.
    pub retransmit_aggregated: AtomicU64,
    /// Facts sent to the dataflow.
    pub facts: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Last event time promised by a heartbeat (ns since the Unix epoch).
    pub watermark_ns: AtomicU64,
    /// Records per second over the last refresh interval.
    pub records_per_sec: AtomicU64,
    /// Entries in the pid → container cache.
    pub pid_cache: AtomicU64,
    /// `/proc/<pid>/cgroup` reads.
    pub proc_reads: AtomicU64,
    /// Per-program kernel cost, refreshed about once a second.
    pub programs: Mutex<Vec<ProgramCost>>,
    /// Hooks attached, and hooks disabled with the reason.
    pub hooks: Mutex<(Vec<String>, Vec<String>)>,
}

/// Kernel-side cost of one eBPF program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramCost {
    /// Program name.
    pub name: String,
    /// Times it ran.
    pub run_count: u64,
    /// Total time it ran.
    pub run_time: Duration,
}

/// A point-in-time copy of [`KernelStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStatsSnapshot {
    /// See [`KernelStats::ready`].
    pub ready: bool,
    /// Records decoded, by kind.
    pub records: [u64; 8],
    /// Undecodable records.
    pub decode_errors: u64,
    /// Ring-buffer drops, by kind.
    pub dropped: [u64; 8],
    /// File events folded in the kernel.
    pub file_aggregated: u64,
    /// Retransmits folded in the kernel.
    pub retransmit_aggregated: u64,
    /// Facts sent.
    pub facts: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Last heartbeat's event time.
    pub watermark_ns: u64,
    /// Records per second, recently.
    pub records_per_sec: u64,
    /// pid cache size.
    pub pid_cache: u64,
    /// `/proc/<pid>/cgroup` reads.
    pub proc_reads: u64,
    /// Per-program kernel cost.
    pub programs: Vec<ProgramCost>,
    /// Hooks attached.
    pub attached: Vec<String>,
    /// Hooks disabled, with reasons.
    pub disabled: Vec<String>,
}

fn load(values: &[AtomicU64; 8]) -> [u64; 8] {
    std::array::from_fn(|i| values[i].load(Ordering::Relaxed))
}

impl KernelStats {
    /// Reads everything.
    pub fn snapshot(&self) -> KernelStatsSnapshot {
        let programs = self.programs.lock().map(|p| p.clone()).unwrap_or_default();
        let (attached, disabled) = self.hooks.lock().map(|h| h.clone()).unwrap_or_default();
        KernelStatsSnapshot {
            ready: self.ready.load(Ordering::Relaxed),
            records: load(&self.records),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            dropped: load(&self.dropped),
            file_aggregated: self.file_aggregated.load(Ordering::Relaxed),
            retransmit_aggregated: self.retransmit_aggregated.load(Ordering::Relaxed),
            facts: self.facts.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            watermark_ns: self.watermark_ns.load(Ordering::Relaxed),
            records_per_sec: self.records_per_sec.load(Ordering::Relaxed),
            pid_cache: self.pid_cache.load(Ordering::Relaxed),
            proc_reads: self.proc_reads.load(Ordering::Relaxed),
            programs,
            attached,
            disabled,
        }
    }
}

impl KernelStatsSnapshot {
    /// All records decoded.
    pub fn records_total(&self) -> u64 {
        self.records.iter().sum()
    }

    /// All ring-buffer drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Kernel CPU time of all programs.
    pub fn program_time(&self) -> Duration {
        self.programs.iter().map(|p| p.run_time).sum()
    }
}

const KINDS: [&str; 7] = ["?", "exec", "fork", "exit", "oom", "tcp", "file"];
/// Counter names of records decoded and dropped, by record kind (index as in [`KINDS`]).
const RECORDS_BY_KIND: [&str; 7] = [
    "",
    "records_exec",
    "records_fork",
    "records_exit",
    "records_oom",
    "records_tcp",
    "records_file",
];
const DROPPED_BY_KIND: [&str; 7] = [
    "",
    "dropped_exec",
    "dropped_fork",
    "dropped_exit",
    "dropped_oom",
    "dropped_tcp",
    "dropped_file",
];

/// The kernel collector's own counters in its [`tapio_sources::Health`]: every counter of the
/// [`Display`](fmt::Display) form, by name, and records and drops by record kind.
impl Counters for KernelStats {
    fn read(&self, into: &mut Vec<Counter>) {
        let now = self.snapshot();
        let program_ns = u64::try_from(now.program_time().as_nanos()).unwrap_or(u64::MAX);
        into.extend([
            Counter::new("records", now.records_total()),
            Counter::new("records_per_second", now.records_per_sec),
            Counter::new("facts", now.facts),
            Counter::new("ring_dropped", now.dropped_total()),
            Counter::new("decode_errors", now.decode_errors),
            Counter::new("folded_file", now.file_aggregated),
            Counter::new("folded_retransmit", now.retransmit_aggregated),
            Counter::new("heartbeats", now.heartbeats),
            Counter::new("pid_cache", now.pid_cache),
            Counter::new("proc_reads", now.proc_reads),
            Counter::new("program_ns", program_ns),
        ]);
        for kind in 1..KINDS.len() {
            if now.records[kind] > 0 || now.dropped[kind] > 0 {
                into.push(Counter::new(RECORDS_BY_KIND[kind], now.records[kind]));
                into.push(Counter::new(DROPPED_BY_KIND[kind], now.dropped[kind]));
            }
        }
    }
}

impl fmt::Display for KernelStatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records={} ({}/s) facts={} dropped={} decode_errors={} folded_file={} \
             folded_retransmit={} heartbeats={} pid_cache={} proc_reads={}",
            self.records_total(),
            self.records_per_sec,
            self.facts,
            self.dropped_total(),
            self.decode_errors,
            self.file_aggregated,
            self.retransmit_aggregated,
            self.heartbeats,
            self.pid_cache,
            self.proc_reads
        )?;
        for (kind, name) in KINDS.iter().enumerate().skip(1) {
            if self.records[kind] > 0 || self.dropped[kind] > 0 {
                write!(f, " {name}={}/-{}", self.records[kind], self.dropped[kind])?;
            }
        }
        for program in &self.programs {
            if program.run_count > 0 {
                write!(
                    f,
                    " {}:{}runs/{}ns_avg",
                    program.name,
                    program.run_count,
                    program.run_time.as_nanos() / u128::from(program.run_count)
                )?;
            }
        }
        if !self.disabled.is_empty() {
            write!(f, " disabled=[{}]", self.disabled.join("; "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_counters_name_drops_and_records_by_kind_only_for_kinds_seen() {
        let stats = KernelStats::default();
        stats.records[4].fetch_add(2, Ordering::Relaxed);
        stats.dropped[1].fetch_add(7, Ordering::Relaxed);
        stats.facts.fetch_add(2, Ordering::Relaxed);
        let mut counters = Vec::new();
        stats.read(&mut counters);
        let value = |name: &str| {
            counters
                .iter()
                .find(|counter| counter.name == name)
                .map(|counter| counter.value)
        };
        assert_eq!(value("records"), Some(2));
        assert_eq!(value("ring_dropped"), Some(7));
        assert_eq!(value("facts"), Some(2));
        assert_eq!(value("records_oom"), Some(2));
        assert_eq!(value("dropped_exec"), Some(7));
        assert_eq!(value("records_tcp"), None, "no tcp record was seen");
    }
}
