//! Kernel OOM-kill messages, one kernel log line at a time.
//!
//! The kernel writes an OOM kill as several lines. A record starts at a line saying
//! `<comm> invoked oom-killer:`. Inside a record, the one-line summary newer kernels print
//! (`oom-kill:constraint=…,oom_memcg=…,task_memcg=…,task=…,pid=…,uid=…`) completes it at once;
//! otherwise `Task in <task memcg> killed as a result of limit of <oom memcg>` names the two
//! memory cgroups (older kernels, cgroup v1) and the next `Killed process <pid> (<comm>)` line
//! completes it. Lines outside a record say nothing; without a start line there is no record.
//! These are the rules cAdvisor's OOM parser (which the kubelet uses) follows, so that Tapio
//! reports exactly the kills the kubelet does.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tapio_model::OomKill;

/// One OOM kill as the kernel logged it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomRecord {
    /// The killed process.
    pub pid: u32,
    /// Its command name (may hold spaces, brackets and quotes).
    pub comm: String,
    /// The killed task's memory cgroup; `/` when the kernel named none (a global OOM).
    pub task_memcg: String,
    /// The memory cgroup whose limit was hit; `/` when the kernel named none.
    pub oom_memcg: String,
    /// The summary's `constraint=` (`CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, ...); empty for the
    /// older multi-line form, which has none.
    pub constraint: String,
    /// Resident memory of the victim in kB (`anon-rss` + `file-rss` + `shmem-rss` of the
    /// `Killed process` line), 0 when the record was completed by the one-line summary.
    pub rss_kb: u64,
    /// When the line that completed the record was logged, ns since the Unix epoch.
    pub time_ns: u64,
}

/// The parser's state between lines: the record being read, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomParser {
    open: Option<Open>,
}

/// A record that started and is not complete yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Open {
    task_memcg: String,
    oom_memcg: String,
}

impl OomParser {
    /// Whether a record is open (a restart must remember it).
    pub fn is_idle(&self) -> bool {
        self.open.is_none()
    }

    /// Reads one kernel line logged at `time_ns`; returns the record it completes, if any.
    pub fn line(&mut self, line: &str, time_ns: u64) -> Option<OomRecord> {
        if line.contains("invoked oom-killer:") {
            self.open = Some(Open {
                task_memcg: "/".into(),
                oom_memcg: "/".into(),
            });
            return None;
        }
        let open = self.open.as_mut()?;
        if let Some(summary) = summary(line) {
            self.open = None;
            return Some(OomRecord { time_ns, ..summary });
        }
        if let Some((task, limit)) = task_in(line) {
            open.task_memcg = task.into();
            open.oom_memcg = limit.into();
            return None;
        }
        let (pid, comm, rss_kb) = killed_process(line)?;
        let open = self.open.take()?;
        Some(OomRecord {
            pid,
            comm,
            task_memcg: open.task_memcg,
            oom_memcg: open.oom_memcg,
            constraint: String::new(),
            rss_kb,
            time_ns,
        })
    }
}

/// `Task in <X> killed as a result of limit of <Y>`: the two cgroup paths.
pub fn task_in(line: &str) -> Option<(&str, &str)> {
    let start = line.find("Task in ")? + "Task in ".len();
    let rest = &line[start..];
    let (task, limit) = rest.split_once(" killed as a result of limit of ")?;
    Some((task, limit.trim_end()))
}

/// `Killed process <pid> (<comm>) total-vm:…, anon-rss:…kB, file-rss:…kB, shmem-rss:…kB`: the
/// pid, the command name (up to the last `)` of the line) and the resident kB.
pub fn killed_process(line: &str) -> Option<(u32, String, u64)> {
    let start = line.find("Killed process ")? + "Killed process ".len();
    let rest = &line[start..];
    let (pid, rest) = rest.split_once(' ')?;
    let pid = pid.parse().ok()?;
    let rest = rest.strip_prefix('(')?;
    let close = rest.rfind(')')?;
    if close == 0 {
        return None;
    }
    let comm = rest[..close].to_string();
    let tail = &rest[close..];
    let rss_kb = ["anon-rss:", "file-rss:", "shmem-rss:"]
        .iter()
        .filter_map(|key| {
            let at = tail.find(key)? + key.len();
            let digits: &str = &tail[at..];
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            digits[..end].parse::<u64>().ok()
        })
        .sum();
    Some((pid, comm, rss_kb))
}

/// The one-line summary `oom-kill:constraint=…,nodemask=…,cpuset=…,mems_allowed=…,
/// oom_memcg=…,task_memcg=…,task=…,pid=…,uid=…` as a record (its time left 0).
pub fn summary(line: &str) -> Option<OomRecord> {
    const KEYS: [&str; 9] = [
        "constraint=",
        ",nodemask=",
        ",cpuset=",
        ",mems_allowed=",
        ",oom_memcg=",
        ",task_memcg=",
        ",task=",
        ",pid=",
        ",uid=",
    ];
    let start = line.find("oom-kill:")? + "oom-kill:".len();
    let text = &line[start..];
    let mut values = [""; 9];
    let mut at = 0;
    let mut starts = [0usize; 9];
    for (index, key) in KEYS.iter().enumerate() {
        let found = at + text[at..].find(key)?;
        starts[index] = found + key.len();
        at = starts[index];
    }
    for index in 0..KEYS.len() {
        let end = if index + 1 < KEYS.len() {
            starts[index + 1] - KEYS[index + 1].len()
        } else {
            text.len()
        };
        values[index] = &text[starts[index]..end];
    }
    Some(OomRecord {
        pid: values[7].trim().parse().ok()?,
        comm: values[6].to_string(),
        task_memcg: values[5].to_string(),
        oom_memcg: values[4].to_string(),
        constraint: values[0].to_string(),
        rss_kb: 0,
        time_ns: 0,
    })
}

impl OomRecord {
    /// The record as an `oom_kill` fact. The journal does not say when the victim started,
    /// so `start_ns` is 0; the container and pod come from the task's memory cgroup path.
    pub fn to_fact(&self) -> OomKill {
        let (container_id, pod_uid) = container_of(&self.task_memcg);
        OomKill {
            pid: self.pid,
            start_ns: 0,
            comm: self.comm.clone(),
            container_id,
            pod_uid,
            memcg: if self.oom_memcg == "/" {
                String::new()
            } else {
                self.oom_memcg.clone()
            },
            rss_pages: self.rss_kb / 4,
        }
    }
}

/// The container id (64 hex digits) and pod uid a cgroup path names: the cgroupfs layout
/// (`/kubepods/<qos>/pod<uid>/<id>`), the systemd one
/// (`…/kubepods-<qos>-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`, also
/// `crio-`, `docker-`) and plain Docker (`/docker/<id>`).
pub fn container_of(path: &str) -> (Option<Arc<str>>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for component in path.split('/').filter(|part| !part.is_empty()) {
        let name = component
            .strip_suffix(".scope")
            .unwrap_or(component)
            .rsplit([':', '-'])
            .next()
            .unwrap_or_default();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            container = Some(Arc::from(name));
        }
        let slice = component.strip_suffix(".slice").unwrap_or(component);
        if let Some(at) = slice.rfind("pod") {
            let uid = slice[at + 3..].replace('_', "-");
            if uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                pod = Some(uid);
            }
        }
    }
    (container, pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_name_container_and_pod() {
        let id = "ef807430361e6e82b45db92e2e9b6fbec98f419b12c591e655c1a725565e73a8";
        let (container, pod) = container_of(&format!(
            "/kubepods/burstable/podfbdfe8e3-1c87-4ff2-907c-b2ec8e25d012/{id}"
        ));
        assert_eq!(container.as_deref(), Some(id));
        assert_eq!(pod.as_deref(), Some("fbdfe8e3-1c87-4ff2-907c-b2ec8e25d012"));
        let (container, pod) = container_of(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f6a_7b8c_9d0e_1f2a3b4c5d6e.slice/cri-containerd-{id}.scope"
        ));
        assert_eq!(container.as_deref(), Some(id));
        assert_eq!(pod.as_deref(), Some("1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e"));
        assert_eq!(container_of("/mem2"), (None, None));
    }

    #[test]
    fn a_killed_process_line_alone_is_no_record() {
        let mut parser = OomParser::default();
        assert_eq!(
            parser.line("Killed process 1 (x) total-vm:1kB, anon-rss:1kB", 1),
            None
        );
    }
}
