//! Loads and attaches the DNS capture (`ebpf/programs/dns.bpf.c`): two `cgroup_skb` programs
//! (egress and ingress) on a cgroup v2 directory, normally the root of the hierarchy, so that
//! every socket below it is seen whatever its network namespace.
//!
//! ```no_run
//! use tapio_ebpf::dns::{DnsProbeOptions, DnsProbes};
//! let options = DnsProbeOptions { ports: vec![53], ..DnsProbeOptions::default() };
//! let mut probes = DnsProbes::load(&options).expect("root on a BTF kernel with cgroup v2");
//! let ring = probes.take_ring().expect("first take");
//! # drop(ring);
//! ```

use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Btf, Ebpf, EbpfLoader, include_bytes_aligned};
use tapio_ebpf_common::dns as common;
use tracing::info;

use crate::{LoadError, check_requirements, error_chain};

/// The object compiled from `ebpf/programs/dns.bpf.c` by the build script.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns.bpf.o"));

/// What to capture and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsProbeOptions {
    /// Size of the ring buffer, bytes (a power of two, at least a page).
    pub ring_buffer_bytes: u32,
    /// The DNS server ports: queries to them and responses from them are captured.
    pub ports: Vec<u16>,
    /// The cgroup v2 directory to attach to; empty: the cgroup2 mount found in
    /// `/proc/self/mountinfo` (its root sees every socket on the node).
    pub cgroup: PathBuf,
}

impl Default for DnsProbeOptions {
    fn default() -> DnsProbeOptions {
        DnsProbeOptions {
            ring_buffer_bytes: 8 << 20,
            ports: vec![53],
            cgroup: PathBuf::new(),
        }
    }
}

/// Why the DNS capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsLoadError {
    /// Privileges, BTF, the object or a map (as for the kernel probes).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup2 file system is mounted (none in /proc/self/mountinfo); the DNS capture \
         attaches to the cgroup v2 root"
    )]
    NoCgroup2,
    /// The cgroup directory cannot be opened.
    #[error("cannot open the cgroup directory {path}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be loaded or attached.
    #[error("cannot attach `{program}` to {path}: {reason}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The cgroup.
        path: PathBuf,
        /// The error chain.
        reason: String,
    },
}

/// The DNS programs, attached; detached when dropped.
pub struct DnsProbes {
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    cgroup: PathBuf,
}

impl std::fmt::Debug for DnsProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProbes")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

/// The counters the programs keep, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Messages recorded.
    pub messages: u64,
    /// Messages lost because the ring buffer was full.
    pub dropped: u64,
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("tapio_dns_egress", CgroupSkbAttachType::Egress),
    ("tapio_dns_ingress", CgroupSkbAttachType::Ingress),
];

impl DnsProbes {
    /// Checks requirements, loads the programs, writes the ports and attaches both programs.
    ///
    /// # Errors
    /// [`DnsLoadError`] naming what is missing.
    pub fn load(options: &DnsProbeOptions) -> Result<DnsProbes, DnsLoadError> {
        check_requirements()?;
        let cgroup = if options.cgroup.as_os_str().is_empty() {
            cgroup2_mount().ok_or(DnsLoadError::NoCgroup2)?
        } else {
            options.cgroup.clone()
        };
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("DNS_EVENTS", options.ring_buffer_bytes)
            .load(OBJECT)
            .map_err(LoadError::Object)?;
        {
            let map = ebpf.map_mut("DNS_PORTS").ok_or(LoadError::Map {
                name: "DNS_PORTS",
                source: None,
            })?;
            let mut ports: BpfHashMap<_, u16, u8> =
                BpfHashMap::try_from(map).map_err(|err| LoadError::Map {
                    name: "DNS_PORTS",
                    source: Some(err),
                })?;
            for port in &options.ports {
                ports.insert(port, 1, 0).map_err(|err| LoadError::Map {
                    name: "DNS_PORTS",
                    source: Some(err),
                })?;
            }
        }
        let directory = std::fs::File::open(&cgroup).map_err(|source| DnsLoadError::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
        for (name, attach_type) in PROGRAMS {
            let failed = |reason: String| DnsLoadError::Attach {
                program: name,
                path: cgroup.clone(),
                reason,
            };
            let program: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or_else(|| failed("not in the object".into()))?
                .try_into()
                .map_err(|err| failed(error_chain(&err)))?;
            program.load().map_err(|err| failed(error_chain(&err)))?;
            // Through a BPF link (kernel 5.7+), which takes no attach flags and lets other
            // programs on the same cgroup keep running.
            program
                .attach(&directory, attach_type, CgroupAttachMode::Single)
                .map_err(|err| failed(error_chain(&err)))?;
        }
        let ring_map = ebpf.take_map("DNS_EVENTS").ok_or(LoadError::Map {
            name: "DNS_EVENTS",
            source: None,
        })?;
        let ring = RingBuf::try_from(ring_map).map_err(|err| LoadError::Map {
            name: "DNS_EVENTS",
            source: Some(err),
        })?;
        info!(cgroup = %cgroup.display(), ports = ?options.ports, "DNS capture attached.");
        Ok(DnsProbes {
            ebpf,
            ring: Some(ring),
            cgroup,
        })
    }

    /// Takes the ring buffer to read records from (once; `None` afterwards).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// The cgroup directory the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Reads the per-CPU counters, summed.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn counters(&self) -> Result<DnsCounters, aya::maps::MapError> {
        let map = self
            .ebpf
            .map("DNS_COUNTERS")
            .ok_or(aya::maps::MapError::InvalidName {
                name: "DNS_COUNTERS".into(),
            })?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let sum = |index: u32| -> Result<u64, aya::maps::MapError> {
            Ok(counters.get(&index, 0)?.iter().copied().sum())
        };
        Ok(DnsCounters {
            messages: sum(common::CTR_MESSAGES)?,
            dropped: sum(common::CTR_DROPPED)?,
        })
    }

    /// Total run time of both programs in the kernel, ns, and their run count (with BPF
    /// statistics enabled; zero otherwise).
    pub fn run_time(&self) -> (u64, u64) {
        let mut total = (0u64, 0u64);
        for (name, _) in PROGRAMS {
            if let Some(info) = self.ebpf.program(name).and_then(|p| p.info().ok()) {
                total.0 += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                total.1 += info.run_count();
            }
        }
        total
    }
}
