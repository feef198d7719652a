//! Loads and attaches Tapio's eBPF programs with aya 0.14 (layer L1; depends on
//! `tapio-ebpf-common` only).
//!
//! The programs are C CO-RE sources under `ebpf/programs/`, compiled by this crate's build
//! script with clang and embedded here. [`KernelProbes::load`] checks what the machine offers
//! (privileges, BTF, tracefs), loads the programs, writes the `CONFIG` map and attaches every
//! selected hook. A hook that cannot attach (a tracepoint this kernel lacks) is disabled with a
//! warning and the others keep running; only the process hooks are mandatory.
//!
//! # Minimum kernel version
//! 5.8 with BTF (`CONFIG_DEBUG_INFO_BTF=y`): ring buffers and tp_btf. The file hooks (syscall
//! tracepoints) need 5.15 (`bpf_task_pt_regs`) and tracefs, which is mounted at
//! `/sys/kernel/tracing` when it is missing; on an older kernel they are disabled with a warning.
//!
//! ```no_run
//! use tapio_ebpf::{Hooks, KernelProbes, ProbeOptions};
//! let options = ProbeOptions { ring_buffer_bytes: 1 << 22, hooks: Hooks::all(), ..ProbeOptions::default() };
//! let mut probes = KernelProbes::load(&options).expect("root on a BTF kernel");
//! let ring = probes.take_ring().expect("first take");
//! # drop(ring);
//! ```

pub mod clock;
pub mod dns;
pub mod ring;

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, include_bytes_aligned};
use tapio_ebpf_common as common;
use tracing::{debug, info, warn};

/// The object compiled from `ebpf/programs/tapio.bpf.c` by the build script.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tapio.bpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A group of programs that is attached, or disabled, together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `sched_process_exec` (tp_btf). Mandatory.
    Exec,
    /// `sched_process_fork` (tp_btf).
    Fork,
    /// `sched_process_exit` (tp_btf). Mandatory.
    Exit,
    /// `oom:mark_victim` (tp_btf).
    Oom,
    /// `sock:inet_sock_set_state` (tp_btf): connects, accepts, closes.
    TcpState,
    /// `tcp:tcp_receive_reset` (tp_btf): marks refused and reset connections.
    TcpReset,
    /// `tcp:tcp_retransmit_skb` (tp_btf).
    TcpRetransmit,
    /// `syscalls:sys_exit_openat` (tracepoint, needs tracefs).
    FileOpen,
    /// `syscalls:sys_exit_unlink{,at}`.
    FileUnlink,
    /// `syscalls:sys_exit_rename{,at,at2}`.
    FileRename,
    /// `cgroup:cgroup_notify_populated` (tp_btf): a cgroup, such as a container's, emptied.
    CgroupEmpty,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 11] = [
        Hook::Exec,
        Hook::Fork,
        Hook::Exit,
        Hook::Oom,
        Hook::TcpState,
        Hook::TcpReset,
        Hook::TcpRetransmit,
        Hook::FileOpen,
        Hook::FileUnlink,
        Hook::FileRename,
        Hook::CgroupEmpty,
    ];

    /// `(program, attach point)` pairs; for tp_btf the point is the tracepoint name, for
    /// classic tracepoints `category/name`.
    fn programs(self) -> Points {
        match self {
            Hook::Exec => &[("tapio_exec", "sched_process_exec")],
            Hook::Fork => &[("tapio_fork", "sched_process_fork")],
            Hook::Exit => &[("tapio_exit", "sched_process_exit")],
            Hook::Oom => &[("tapio_oom", "mark_victim")],
            Hook::CgroupEmpty => &[("tapio_cgroup_empty", "cgroup_notify_populated")],
            Hook::TcpState => &[("tapio_sock_state", "inet_sock_set_state")],
            Hook::TcpReset => &[("tapio_tcp_reset", "tcp_receive_reset")],
            Hook::TcpRetransmit => &[("tapio_tcp_retransmit", "tcp_retransmit_skb")],
            Hook::FileOpen => &[("tapio_openat_exit", "syscalls/sys_exit_openat")],
            Hook::FileUnlink => &[
                ("tapio_unlink_exit", "syscalls/sys_exit_unlink"),
                ("tapio_unlinkat_exit", "syscalls/sys_exit_unlinkat"),
            ],
            Hook::FileRename => &[
                ("tapio_rename_exit", "syscalls/sys_exit_rename"),
                ("tapio_renameat_exit", "syscalls/sys_exit_renameat"),
                ("tapio_renameat2_exit", "syscalls/sys_exit_renameat2"),
            ],
        }
    }

    fn mandatory(self) -> bool {
        matches!(self, Hook::Exec | Hook::Exit)
    }

    fn needs_tracefs(self) -> bool {
        matches!(self, Hook::FileOpen | Hook::FileUnlink | Hook::FileRename)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Hook::Exec => "exec",
            Hook::Fork => "fork",
            Hook::Exit => "exit",
            Hook::Oom => "oom",
            Hook::TcpState => "tcp_state",
            Hook::TcpReset => "tcp_reset",
            Hook::TcpRetransmit => "tcp_retransmit",
            Hook::FileOpen => "file_open",
            Hook::FileUnlink => "file_unlink",
            Hook::FileRename => "file_rename",
            Hook::CgroupEmpty => "cgroup_empty",
        };
        f.write_str(name)
    }
}

/// Which hook groups to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// Fork events (exec and exit are always on).
    pub fork: bool,
    /// OOM kills.
    pub oom: bool,
    /// TCP connects, accepts, closes and retransmits.
    pub network: bool,
    /// Failed opens, unlinks and renames under the configured prefixes.
    pub files: bool,
    /// Containers ending (their cgroup losing its last process).
    pub containers: bool,
}

impl Hooks {
    /// Everything.
    pub fn all() -> Hooks {
        Hooks {
            fork: true,
            oom: true,
            network: true,
            files: true,
            containers: true,
        }
    }

    fn wants(self, hook: Hook) -> bool {
        match hook {
            Hook::Exec | Hook::Exit => true,
            Hook::Fork => self.fork,
            Hook::Oom => self.oom,
            Hook::TcpState | Hook::TcpReset | Hook::TcpRetransmit => self.network,
            Hook::FileOpen | Hook::FileUnlink | Hook::FileRename => self.files,
            Hook::CgroupEmpty => self.containers,
        }
    }
}

/// How to load the probes.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Size of the ring buffer in bytes: a power of two and a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Hook groups to attach.
    pub hooks: Hooks,
    /// Value of the `CONFIG` map (aggregation windows, file path prefixes).
    pub config: common::Config,
}

impl Default for ProbeOptions {
    fn default() -> ProbeOptions {
        ProbeOptions {
            ring_buffer_bytes: 8 << 20,
            hooks: Hooks::all(),
            config: common::Config::new(1_000_000_000, 1_000_000_000, &[])
                .expect("no prefixes is valid"),
        }
    }
}

/// Why the probes cannot run on this machine at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The process lacks the capabilities to load eBPF programs.
    #[error(
        "loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); \
         run tapio as root or add those capabilities (securityContext.capabilities.add)"
    )]
    Privileges,
    /// The kernel exposes no BTF.
    #[error(
        "the kernel has no BTF at {BTF_PATH}; the kernel collector needs Linux 5.8+ built with \
         CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    /// BTF exists but could not be parsed.
    #[error("cannot read the kernel BTF at {BTF_PATH}")]
    Btf(#[source] aya::BtfError),
    /// The object could not be loaded (map creation, relocation).
    #[error("cannot load the eBPF object (is the kernel 5.8+ with ring buffer support?)")]
    Object(#[source] aya::EbpfError),
    /// A map the programs need is missing or has the wrong type.
    #[error("eBPF map `{name}` is missing or unusable")]
    Map {
        /// Map name.
        name: &'static str,
        /// The underlying error, if any.
        #[source]
        source: Option<aya::maps::MapError>,
    },
    /// A mandatory hook could not be attached.
    #[error(
        "mandatory hook `{hook}` ({point}) cannot be attached; the kernel needs this tracepoint"
    )]
    Mandatory {
        /// The hook.
        hook: Hook,
        /// Its attach point.
        point: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// A hook that was disabled, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisabledHook {
    /// The hook.
    pub hook: Hook,
    /// Why it is off.
    pub reason: String,
}

/// Counters the programs keep in the per-CPU `COUNTERS` map, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records lost because the ring buffer was full, by record kind (index = `EV_*`).
    pub dropped_by_kind: [u64; 8],
    /// File events folded into an earlier identical one.
    pub file_aggregated: u64,
    /// Retransmits folded into an earlier retransmit event.
    pub retransmit_aggregated: u64,
}

impl KernelCounters {
    /// All records lost.
    pub fn dropped(&self) -> u64 {
        self.dropped_by_kind.iter().sum()
    }
}

/// Run count and run time of one program (needs BPF statistics, which [`KernelProbes::load`]
/// turns on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// Program name.
    pub name: &'static str,
    /// Times it ran.
    pub run_count: u64,
    /// Total time it ran.
    pub run_time: Duration,
}

/// The loaded, attached programs. Dropping it detaches and unloads everything.
pub struct KernelProbes {
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    attached: Vec<Hook>,
    disabled: Vec<DisabledHook>,
    /// Holds BPF run-time statistics on while it lives (BPF_ENABLE_STATS).
    _stats: Option<OwnedFd>,
}

impl fmt::Debug for KernelProbes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelProbes")
            .field("attached", &self.attached)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// Checks privileges and BTF: the requirements without which nothing can load.
///
/// # Errors
/// [`LoadError::Privileges`] or [`LoadError::NoBtf`].
pub fn check_requirements() -> Result<(), LoadError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(LoadError::Privileges);
    }
    if !Path::new(BTF_PATH).exists() {
        return Err(LoadError::NoBtf);
    }
    Ok(())
}

/// Mounts tracefs at `/sys/kernel/tracing` unless its events are already visible there.
///
/// # Errors
/// A description of why tracefs is unavailable.
pub fn ensure_tracefs() -> Result<(), String> {
    let events = Path::new(TRACEFS).join("events");
    if events.join("syscalls").exists() {
        return Ok(());
    }
    // mount(2) directly: container images need not ship a `mount` binary.
    let mounted = nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    match mounted {
        Ok(()) if events.exists() => {
            info!(path = TRACEFS, "Mounted tracefs.");
            Ok(())
        }
        Ok(()) => Err(format!(
            "tracefs mounted at {TRACEFS} but has no events directory"
        )),
        Err(errno) => Err(format!(
            "cannot mount tracefs at {TRACEFS} ({errno}); mount it on the host \
             (`mount -t tracefs nodev {TRACEFS}`) or run with CAP_SYS_ADMIN"
        )),
    }
}

/// Turns on BPF run-time statistics: through `BPF_ENABLE_STATS` (off again when the returned
/// fd closes), else through the `kernel.bpf_stats_enabled` sysctl (stays on).
fn enable_bpf_stats() -> Option<OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(err) => {
            debug!(error = %err, "BPF_ENABLE_STATS failed, trying the sysctl.");
            if let Err(err) = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1") {
                warn!(error = %err, "Cannot enable BPF statistics; program run times will read 0.");
            }
            None
        }
    }
}

impl KernelProbes {
    /// Checks requirements, loads the programs and attaches the selected hooks.
    ///
    /// # Errors
    /// [`LoadError`] when the machine cannot run the probes at all. A single optional hook
    /// that cannot attach is not an error: it is listed in [`KernelProbes::disabled`].
    pub fn load(options: &ProbeOptions) -> Result<KernelProbes, LoadError> {
        KernelProbes::load_with(options, Hook::programs)
    }

    /// [`KernelProbes::load`] with the attach points of each hook given by `points`, so a
    /// test can ask for a tracepoint the kernel does not have.
    fn load_with(
        options: &ProbeOptions,
        points: fn(Hook) -> Points,
    ) -> Result<KernelProbes, LoadError> {
        check_requirements()?;
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        let stats = enable_bpf_stats();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("EVENTS", options.ring_buffer_bytes)
            .load(OBJECT)
            .map_err(LoadError::Object)?;

        {
            let map = ebpf.map_mut("CONFIG").ok_or(LoadError::Map {
                name: "CONFIG",
                source: None,
            })?;
            let mut config: Array<_, common::Config> =
                Array::try_from(map).map_err(|err| LoadError::Map {
                    name: "CONFIG",
                    source: Some(err),
                })?;
            config
                .set(0, options.config, 0)
                .map_err(|err| LoadError::Map {
                    name: "CONFIG",
                    source: Some(err),
                })?;
        }

        let tracefs = if Hook::ALL
            .iter()
            .any(|hook| hook.needs_tracefs() && options.hooks.wants(*hook))
        {
            ensure_tracefs()
        } else {
            Ok(())
        };

        let mut attached = Vec::new();
        let mut disabled = Vec::new();
        for hook in Hook::ALL {
            if !options.hooks.wants(hook) {
                continue;
            }
            if hook.needs_tracefs()
                && let Err(reason) = &tracefs
            {
                warn!(%hook, reason = %reason, "Hook disabled: tracefs is not available.");
                disabled.push(DisabledHook {
                    hook,
                    reason: reason.clone(),
                });
                continue;
            }
            let result = attach(&mut ebpf, &btf, points(hook));
            if result.is_err() {
                // Half a hook is worse than none (unlink without unlinkat would report some
                // unlinks and silently miss others): unload what did attach.
                unload(&mut ebpf, points(hook));
            }
            match result {
                Ok(()) => attached.push(hook),
                Err((point, err)) if hook.mandatory() => {
                    return Err(LoadError::Mandatory {
                        hook,
                        point,
                        source: err,
                    });
                }
                Err((point, err)) => {
                    let reason = format!("{point}: {}", error_chain(&err));
                    warn!(%hook, reason = %reason, "Hook disabled: it cannot be attached.");
                    disabled.push(DisabledHook { hook, reason });
                }
            }
        }

        let ring_map = ebpf.take_map("EVENTS").ok_or(LoadError::Map {
            name: "EVENTS",
            source: None,
        })?;
        let ring = RingBuf::try_from(ring_map).map_err(|err| LoadError::Map {
            name: "EVENTS",
            source: Some(err),
        })?;
        info!(
            attached = ?attached,
            disabled = disabled.len(),
            ring_buffer_bytes = options.ring_buffer_bytes,
            "Kernel probes attached."
        );
        Ok(KernelProbes {
            ebpf,
            ring: Some(ring),
            attached,
            disabled,
            _stats: stats,
        })
    }

    /// Takes the ring buffer to read records from (once; `None` afterwards). It implements
    /// `AsRawFd`, so it can be polled with epoll or tokio's `AsyncFd`.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Hooks that are attached.
    pub fn attached(&self) -> &[Hook] {
        &self.attached
    }

    /// Hooks that were wanted but could not be attached.
    pub fn disabled(&self) -> &[DisabledHook] {
        &self.disabled
    }

    /// Reads the per-CPU counters, summed.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(aya::maps::MapError::InvalidName {
                name: "COUNTERS".into(),
            })?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let sum = |index: u32| -> Result<u64, aya::maps::MapError> {
            Ok(counters.get(&index, 0)?.iter().copied().sum())
        };
        let mut out = KernelCounters::default();
        for (kind, slot) in out.dropped_by_kind.iter_mut().enumerate() {
            *slot = sum(common::CTR_DROP_BASE + kind as u32)?;
        }
        out.file_aggregated = sum(common::CTR_FILE_AGGREGATED)?;
        out.retransmit_aggregated = sum(common::CTR_RETRANSMIT_AGGREGATED)?;
        Ok(out)
    }

    /// Run counts and run times of the attached programs.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut out = Vec::new();
        for hook in &self.attached {
            for (name, _) in hook.programs() {
                let Some(program) = self.ebpf.program(name) else {
                    continue;
                };
                if let Ok(info) = program.info() {
                    out.push(ProgramStats {
                        name,
                        run_count: info.run_count(),
                        run_time: info.run_time(),
                    });
                }
            }
        }
        out
    }
}

/// `(program, attach point)` pairs of one hook.
type Points = &'static [(&'static str, &'static str)];

fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    points: Points,
) -> Result<(), (&'static str, aya::programs::ProgramError)> {
    for (name, point) in points {
        let program = ebpf
            .program_mut(name)
            .ok_or((*point, aya::programs::ProgramError::UnexpectedProgramType))?;
        if let Some((category, tracepoint)) = point.split_once('/') {
            let program: &mut TracePoint = program.try_into().map_err(|err| (*point, err))?;
            program.load().map_err(|err| (*point, err))?;
            program
                .attach(category, tracepoint)
                .map_err(|err| (*point, err))?;
        } else {
            let program: &mut BtfTracePoint = program.try_into().map_err(|err| (*point, err))?;
            program.load(point, btf).map_err(|err| (*point, err))?;
            program.attach().map_err(|err| (*point, err))?;
        }
    }
    Ok(())
}

fn unload(ebpf: &mut Ebpf, points: Points) {
    for (name, point) in points {
        let result = match ebpf.program_mut(name) {
            Some(aya::programs::Program::TracePoint(program)) => program.unload(),
            Some(aya::programs::Program::BtfTracePoint(program)) => program.unload(),
            _ => Ok(()),
        };
        if let Err(err) = result {
            debug!(program = name, point, error = %err, "Unloading a program of a failed hook failed.");
        }
    }
}

/// An error and its sources on one line, for a warning.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! These load real programs into the running kernel: they need root.

    use super::*;

    fn with_missing(hook: Hook) -> Points {
        match hook {
            Hook::TcpReset => &[("tapio_tcp_reset", "no_such_tracepoint_tapio")],
            Hook::FileRename => &[
                ("tapio_rename_exit", "syscalls/sys_exit_rename"),
                ("tapio_renameat_exit", "syscalls/sys_exit_no_such_tapio"),
            ],
            other => other.programs(),
        }
    }

    fn with_missing_exec(hook: Hook) -> Points {
        match hook {
            Hook::Exec => &[("tapio_exec", "no_such_exec_tracepoint_tapio")],
            other => other.programs(),
        }
    }

    fn options() -> ProbeOptions {
        ProbeOptions {
            ring_buffer_bytes: 1 << 16,
            hooks: Hooks::all(),
            config: common::Config::new(1, 1, &["/etc/".into()]).unwrap(),
        }
    }

    #[test]
    fn a_missing_tracepoint_disables_only_its_hook() {
        let probes = KernelProbes::load_with(&options(), with_missing).expect("loads");
        let disabled: Vec<Hook> = probes.disabled().iter().map(|d| d.hook).collect();
        assert_eq!(disabled, [Hook::TcpReset, Hook::FileRename]);
        assert!(
            probes.disabled()[0]
                .reason
                .contains("no_such_tracepoint_tapio")
        );
        assert_eq!(probes.attached().len(), Hook::ALL.len() - 2);
        assert!(probes.attached().contains(&Hook::Exec));
        assert!(probes.counters().is_ok());
        assert!(!probes.program_stats().is_empty());
    }

    #[test]
    fn a_missing_mandatory_hook_is_an_error() {
        let err = KernelProbes::load_with(&options(), with_missing_exec).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Mandatory {
                    hook: Hook::Exec,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("no_such_exec_tracepoint_tapio"));
    }
}
