//! Which container a process runs in: bounded caches in front of the cgroup parser.
//!
//! Process records from the kernel carry the names of the process's memory cgroup (leaf,
//! parent, grandparent), which are authoritative when present. Records without them (TCP and
//! file events) are resolved through a pid cache filled at exec and fork and emptied at exit;
//! on a miss, through the cgroup v2 id (the resolver shared with the other collectors,
//! [`tapio_sources::containers::CgroupResolver`]),
//! then `/proc/<pid>/cgroup`. Every cache is bounded; the oldest entries go first.

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use tapio_sources::containers::{Bounded, Resolved};
use tapio_sources::containers::{CgroupResolver, container_of_process};

/// The caches.
#[derive(Debug)]
pub(crate) struct Identity {
    /// pid → (start_ns as the kernel reports it, container).
    pids: Bounded<u32, (u64, Resolved)>,
    /// cgroup v2 id → container, shared with the other collectors of this process.
    cgroups: Arc<CgroupResolver>,
    proc_root: PathBuf,
    /// `/proc/<pid>/cgroup` reads done (a cost worth watching).
    pub(crate) proc_reads: u64,
}

impl Identity {
    pub(crate) fn new(capacity: usize, cgroups: Arc<CgroupResolver>) -> Identity {
        Identity {
            pids: Bounded::new(capacity),
            cgroups,
            proc_root: PathBuf::from("/proc"),
            proc_reads: 0,
        }
    }

    pub(crate) fn pid_cache_len(&self) -> usize {
        self.pids.len()
    }

    /// Records what a process record's own cgroup names said, and returns it.
    pub(crate) fn learn(&mut self, pid: u32, start_ns: u64, resolved: Resolved) -> Resolved {
        self.pids.insert(pid, (start_ns, resolved.clone()));
        resolved
    }

    /// A new process inherits its parent's container.
    pub(crate) fn fork(&mut self, parent: u32, child: u32, child_start_ns: u64) -> Resolved {
        let inherited = self.pids.get(&parent).map(|(_, resolved)| resolved.clone());
        match inherited {
            Some(resolved) => {
                self.pids.insert(child, (child_start_ns, resolved.clone()));
                resolved
            }
            None => None,
        }
    }

    /// Forgets an exited process.
    pub(crate) fn exit(&mut self, pid: u32) {
        self.pids.remove(&pid);
    }

    /// The container of `pid` (with `start_ns` when known): cache, then cgroup id, then /proc.
    pub(crate) fn resolve(&mut self, pid: u32, start_ns: Option<u64>, cgroup_id: u64) -> Resolved {
        if pid == 0 {
            return None;
        }
        if let Some((cached_start, resolved)) = self.pids.get(&pid)
            && start_ns.is_none_or(|start| start == *cached_start)
        {
            return resolved.clone();
        }
        let resolved = self.by_cgroup_id(cgroup_id).or_else(|| self.by_proc(pid));
        if let Some(start) = start_ns {
            self.pids.insert(pid, (start, resolved.clone()));
        }
        resolved
    }

    fn by_cgroup_id(&mut self, cgroup_id: u64) -> Resolved {
        self.cgroups.container_of(cgroup_id)
    }

    fn by_proc(&mut self, pid: u32) -> Resolved {
        self.proc_reads += 1;
        container_of_process(&self.proc_root, pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::ContainerRef;

    #[test]
    fn forks_inherit_and_exits_forget() {
        let mut identity = Identity::new(16, Arc::new(CgroupResolver::new()));
        let container = ContainerRef {
            container_id: "a".repeat(64).into(),
            pod_uid: None,
        };
        identity.learn(10, 100, Some(Arc::new(container.clone())));
        assert_eq!(identity.fork(10, 11, 200).as_deref(), Some(&container));
        assert_eq!(
            identity.resolve(11, Some(200), 0).as_deref(),
            Some(&container)
        );
        identity.exit(11);
        assert_eq!(identity.pid_cache_len(), 1);
        // An unknown parent gives nothing and caches nothing.
        assert_eq!(identity.fork(99, 12, 300), None);
        assert_eq!(identity.pid_cache_len(), 1);
    }

    #[test]
    fn resolves_this_process_through_proc() {
        let mut identity = Identity::new(16, Arc::new(CgroupResolver::new()));
        let me = std::process::id();
        // Whatever this test runs in, resolving must not fail and must be cached.
        let first = identity.resolve(me, Some(1), 0);
        let reads = identity.proc_reads;
        assert_eq!(identity.resolve(me, Some(1), 0), first);
        assert_eq!(identity.proc_reads, reads);
    }
}
