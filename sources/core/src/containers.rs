//! Which container a cgroup v2 id names: one bounded cache for every collector of a process.
//!
//! eBPF programs name a task's or a socket's cgroup by its cgroup v2 id, which is the inode
//! number of the cgroup's directory in the unified hierarchy. [`CgroupResolver`] maps ids to
//! containers by walking that hierarchy and parsing each directory's path
//! ([`crate::cgroup::parse_path`]), at most once every two seconds, and remembers what it
//! found (containers and non-containers alike) in a [`Bounded`] cache. The kernel and DNS
//! collectors of one Tapio process share one resolver through [`crate::SourceContext`], so a
//! walk done for one serves the other.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cgroup::{ContainerRef, parse_path, parse_proc_cgroup};

/// What a cgroup id or a process resolves to: `None` means "not in a container" (or unknown).
pub type Resolved = Option<Arc<ContainerRef>>;

/// A map that forgets its oldest entries beyond a capacity.
///
/// ```
/// use tapio_sources::containers::Bounded;
/// let mut map = Bounded::new(2);
/// map.insert(1, "a");
/// map.insert(2, "b");
/// map.insert(3, "c");
/// assert_eq!(map.get(&1), None);
/// assert_eq!(map.get(&3), Some(&"c"));
/// ```
#[derive(Debug)]
pub struct Bounded<K, V> {
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    capacity: usize,
    generation: u64,
}

impl<K: Eq + Hash + Clone, V> Bounded<K, V> {
    /// An empty map that holds at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            generation: 0,
        }
    }

    /// Inserts or replaces `key`; the oldest entries go when the map is over capacity.
    pub fn insert(&mut self, key: K, value: V) {
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

    /// The value of `key`, if it is still held.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(value, _)| value)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(value, _)| value)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.order.len()
    }
}

/// The unified (cgroup v2) hierarchy's mount point, from `/proc/self/mountinfo`.
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

/// The container of process `pid`, from `<proc_root>/<pid>/cgroup`; `None` when the process
/// is gone or runs in no container.
pub fn container_of_process(proc_root: &Path, pid: u32) -> Resolved {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    parse_proc_cgroup(&text).map(Arc::new)
}

/// How often the hierarchy may be walked, at most.
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// Directories one walk visits, at most; also the cache's capacity.
const SCAN_LIMIT: usize = 65_536;

/// Maps cgroup v2 ids to containers; safe to share between collectors (`Arc<CgroupResolver>`).
#[derive(Debug)]
pub struct CgroupResolver {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    ids: Bounded<u64, Resolved>,
    /// The hierarchy's root: found on first use unless given.
    root: Option<Option<PathBuf>>,
    last_scan: Option<Instant>,
    scans: u64,
}

impl Default for CgroupResolver {
    fn default() -> Self {
        CgroupResolver::new()
    }
}

impl CgroupResolver {
    /// A resolver of the machine's unified hierarchy (found in `/proc/self/mountinfo` on first
    /// use). Does no I/O.
    pub fn new() -> CgroupResolver {
        CgroupResolver::build(None)
    }

    /// A resolver of the hierarchy mounted at `root` (`None`: there is none).
    pub fn at(root: Option<PathBuf>) -> CgroupResolver {
        CgroupResolver::build(Some(root))
    }

    fn build(root: Option<Option<PathBuf>>) -> CgroupResolver {
        CgroupResolver {
            inner: Mutex::new(Inner {
                ids: Bounded::new(SCAN_LIMIT),
                root,
                last_scan: None,
                scans: 0,
            }),
        }
    }

    /// The container whose cgroup has v2 id `cgroup_id`. An id not seen yet walks the
    /// hierarchy, unless a walk happened in the last two seconds (then it resolves to `None`
    /// until the next walk). Ids 0 (unknown) and 1 (the root, where hybrid hosts keep every
    /// process) are no container.
    pub fn container_of(&self, cgroup_id: u64) -> Resolved {
        if cgroup_id <= 1 {
            return None;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        if let Some(resolved) = inner.ids.get(&cgroup_id) {
            return resolved.clone();
        }
        if inner
            .last_scan
            .is_some_and(|at| at.elapsed() < RESCAN_EVERY)
        {
            return None;
        }
        inner.scan();
        inner.ids.get(&cgroup_id).cloned().flatten()
    }

    /// Walks of the hierarchy done so far.
    pub fn scans(&self) -> u64 {
        self.inner.lock().map_or(0, |inner| inner.scans)
    }
}

impl Inner {
    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.scans += 1;
        let root = self.root.get_or_insert_with(cgroup2_mount).clone();
        let Some(root) = root else {
            return;
        };
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
                    return;
                }
                let path = entry.path();
                if let Some(relative) = path.strip_prefix(&root).ok().and_then(|p| p.to_str()) {
                    let resolved = parse_path(&format!("/{relative}")).map(Arc::new);
                    self.ids.insert(meta.ino(), resolved);
                }
                stack.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "c26ae78c0a7d1c0a1f56d0b04e5b0a8a2c2d3b4e5f60718293a4b5c6d7e8f901";
    const UID: &str = "1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e";

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").ino()
    }

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
        assert!(map.slots() <= 6 + 1);
    }

    #[test]
    fn ids_resolve_through_one_walk_shared_by_every_holder() {
        let root = std::env::temp_dir().join(format!("tapio-cgroups-{}", std::process::id()));
        let pod = root.join(format!("kubepods/burstable/pod{UID}"));
        let container = pod.join(ID);
        std::fs::create_dir_all(&container).expect("mkdir");
        let host = root.join("system.slice/containerd.service");
        std::fs::create_dir_all(&host).expect("mkdir");

        let resolver = Arc::new(CgroupResolver::at(Some(root.clone())));
        let other = Arc::clone(&resolver);
        let found = std::thread::spawn(move || other.container_of(inode(&container)))
            .join()
            .expect("thread")
            .expect("the container's directory resolves");
        assert_eq!(&*found.container_id, ID);
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(resolver.scans(), 1);
        // Known ids, containers or not, need no second walk; neither does an unknown one
        // within two seconds of the last.
        assert_eq!(resolver.container_of(inode(&pod)), None);
        assert_eq!(resolver.container_of(inode(&host)), None);
        assert_eq!(resolver.container_of(u64::MAX), None);
        assert_eq!(resolver.container_of(1), None);
        assert_eq!(resolver.scans(), 1);
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn no_hierarchy_resolves_nothing() {
        let resolver = CgroupResolver::at(None);
        assert_eq!(resolver.container_of(42), None);
        assert_eq!(resolver.scans(), 1);
    }

    #[test]
    fn this_process_resolves_through_proc() {
        // Whatever this test runs in, reading it must work and agree with itself.
        let root = Path::new("/proc");
        let me = std::process::id();
        assert_eq!(
            container_of_process(root, me),
            container_of_process(root, me)
        );
        assert_eq!(container_of_process(root, u32::MAX), None);
    }
}
