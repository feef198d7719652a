//! Which container a process runs in: bounded caches in front of the cgroup parser.
//!
//! Process records from the kernel carry the names of the process's memory cgroup (leaf,
//! parent, grandparent), which are authoritative when present. Records without them (TCP and
//! file events) are resolved through a pid cache filled at exec and fork and emptied at exit;
//! on a miss, through the cgroup v2 id (a scan of the unified hierarchy maps ids to paths),
//! then `/proc/<pid>/cgroup`. Every cache is bounded; the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::{ContainerRef, parse_path, parse_proc_cgroup};

/// A map that forgets its oldest entries beyond `capacity`.
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    capacity: usize,
    generation: u64,
}

impl<K: Eq + Hash + Clone, V> Bounded<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            generation: 0,
        }
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.generation += 1;
        self.map.insert(key.clone(), (value, self.generation));
        self.order.push_back((key, self.generation));
        while self.map.len() > self.capacity {
            let Some((old, generation)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(_, g)| *g == generation) {
                self.map.remove(&old);
            }
        }
        // Entries removed explicitly leave stale slots behind: compact now and then.
        if self.order.len() > self.capacity * 2 {
            let map = &self.map;
            self.order
                .retain(|(key, generation)| map.get(key).is_some_and(|(_, g)| g == generation));
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(value, _)| value)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(value, _)| value)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A resolved identity: `None` means "known not to be in a container".
pub(crate) type Resolved = Option<Arc<ContainerRef>>;

/// The caches.
#[derive(Debug)]
pub(crate) struct Identity {
    /// pid → (start_ns as the kernel reports it, container).
    pids: Bounded<u32, (u64, Resolved)>,
    /// cgroup v2 id → container.
    cgroup_ids: Bounded<u64, Resolved>,
    unified_root: Option<PathBuf>,
    last_scan: Option<Instant>,
    proc_root: PathBuf,
    /// `/proc/<pid>/cgroup` reads done (a cost worth watching).
    pub(crate) proc_reads: u64,
}

const RESCAN_EVERY: Duration = Duration::from_secs(2);
const SCAN_LIMIT: usize = 65_536;

impl Identity {
    pub(crate) fn new(capacity: usize) -> Identity {
        Identity {
            pids: Bounded::new(capacity),
            cgroup_ids: Bounded::new(capacity / 4 + 1),
            unified_root: None,
            last_scan: None,
            proc_root: PathBuf::from("/proc"),
            proc_reads: 0,
        }
    }

    /// Finds the cgroup2 mount; call once from the running source.
    pub(crate) fn discover(&mut self) {
        let mountinfo = std::fs::read_to_string(self.proc_root.join("self/mountinfo"));
        self.unified_root = mountinfo.ok().and_then(|text| {
            text.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                right
                    .starts_with("cgroup2 ")
                    .then(|| left.split(' ').nth(4).map(PathBuf::from))
                    .flatten()
            })
        });
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
        // 0: unknown; 1: the root of the unified hierarchy, where hybrid hosts keep everyone.
        if cgroup_id <= 1 {
            return None;
        }
        if let Some(resolved) = self.cgroup_ids.get(&cgroup_id) {
            return resolved.clone();
        }
        let due = self.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
        if !due {
            return None;
        }
        self.last_scan = Some(Instant::now());
        let root = self.unified_root.clone()?;
        let mut found = None;
        let mut stack = vec![root.clone()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                seen += 1;
                if seen > SCAN_LIMIT {
                    break;
                }
                let path = entry.path();
                if let Some(relative) = relative(&root, &path) {
                    let resolved = parse_path(&relative).map(Arc::new);
                    if resolved.is_some() {
                        self.cgroup_ids.insert(meta.ino(), resolved.clone());
                    }
                    if meta.ino() == cgroup_id {
                        found = Some(resolved.clone());
                    }
                }
                stack.push(path);
            }
        }
        found.flatten()
    }

    fn by_proc(&mut self, pid: u32) -> Resolved {
        self.proc_reads += 1;
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text = std::fs::read_to_string(path).ok()?;
        parse_proc_cgroup(&text).map(Arc::new)
    }
}

fn relative(root: &Path, path: &Path) -> Option<String> {
    path.strip_prefix(root)
        .ok()
        .and_then(|p| p.to_str())
        .map(|p| format!("/{p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_forgets_the_oldest() {
        let mut map = Bounded::new(3);
        for i in 0..10u32 {
            map.insert(i, i * 10);
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&9), Some(&90));
        assert_eq!(map.get(&6), None);
        map.remove(&9);
        for i in 0..1000u32 {
            map.insert(i % 5, i);
            map.remove(&(i % 7));
        }
        assert!(map.len() <= 3);
        assert!(map.order.len() <= 6 + 1);
    }

    #[test]
    fn forks_inherit_and_exits_forget() {
        let mut identity = Identity::new(16);
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
        let mut identity = Identity::new(16);
        identity.discover();
        let me = std::process::id();
        // Whatever this test runs in, resolving must not fail and must be cached.
        let first = identity.resolve(me, Some(1), 0);
        let reads = identity.proc_reads;
        assert_eq!(identity.resolve(me, Some(1), 0), first);
        assert_eq!(identity.proc_reads, reads);
    }
}
