//! A real OOM kill in a kubelet-like cgroup (cgroup v1 memory, plus the same path in the
//! unified hierarchy, as runc does on hybrid hosts), seen with its pod and container.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_model::{EntityId, FactPayload, Observation, StateObject};

/// Creates the cgroup directories and removes them (and only them) again.
struct Cgroups {
    created: Vec<PathBuf>,
}

impl Cgroups {
    fn create(relative: &str) -> (Cgroups, PathBuf, PathBuf) {
        let mut created = Vec::new();
        let mut leaves = Vec::new();
        for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"] {
            let mut dir = PathBuf::from(root);
            for part in relative.split('/') {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir)
                        .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                    created.push(dir.clone());
                }
            }
            leaves.push(dir);
        }
        let unified = leaves.pop().unwrap();
        let memory = leaves.pop().unwrap();
        (Cgroups { created }, memory, unified)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // A cgroup can be removed once its last task is gone; give the kernel a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn pseudo_random_hex(len: usize) -> String {
    let mut x = tapio_sources::now_ns() ^ (u64::from(std::process::id()) << 32) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_in_a_pod_cgroup() {
    let hex = pseudo_random_hex(32);
    let pod_uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let container_id = pseudo_random_hex(64);
    let relative = format!("kubepods/burstable/pod{pod_uid}/{container_id}");
    let (cgroups, memory, unified) = Cgroups::create(&relative);
    std::fs::write(memory.join("memory.limit_in_bytes"), "32M").expect("set the memory limit");

    // The real interpreter, not a version-manager shim script.
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed");
    let python = String::from_utf8(python.stdout).unwrap().trim().to_string();

    let running = common::start(KernelCollectorConfig::default()).await;
    let script = format!(
        "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec {python} -c \"x = b'x' * (200 * 1024 * 1024)\"",
        memory.display(),
        unified.display()
    );
    let child = tokio::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawn the allocator");
    let pid = child.id().expect("pid");
    let status = child.wait_with_output().await.expect("wait").status;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by the OOM killer: {status:?}"
    );

    let oom = running
        .wait_for(
            Duration::from_secs(10),
            |p| matches!(p, FactPayload::OomKill(o) if o.pid == pid),
        )
        .await
        .expect("OOM fact");
    let FactPayload::OomKill(oom) = oom.payload else {
        unreachable!()
    };
    assert_eq!(oom.container_id.as_deref(), Some(container_id.as_str()));
    assert_eq!(oom.pod_uid.as_deref(), Some(pod_uid.as_str()));
    assert_eq!(oom.memcg, format!("/{relative}"));
    assert!(oom.comm.starts_with("python"), "{}", oom.comm);
    // 32 MiB of anonymous memory is 8192 pages; RSS adds the interpreter's mapped files.
    assert!(
        (4000..=16384).contains(&oom.rss_pages),
        "rss {}",
        oom.rss_pages
    );

    let exit = running.wait_for_exit(pid).await;
    assert_eq!(exit.signal, 9);
    assert_eq!(exit.start_ns, oom.start_ns, "one identity for the process");
    assert_eq!(exit.container_id.as_deref(), Some(container_id.as_str()));

    let exec = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::ProcessExec(e) if e.pid == pid && e.filename == python),
        )
        .await
        .expect("exec fact of the interpreter");
    let FactPayload::ProcessExec(exec) = exec.payload else {
        unreachable!()
    };
    assert_eq!(exec.start_ns, oom.start_ns);
    assert_eq!(exec.container_id.as_deref(), Some(container_id.as_str()));

    // The container's cgroup lost its only process: the kernel reports the container's end,
    // blamed on the OOM kill, once (both the v1 memory and the v2 hierarchy empty).
    let ended = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::ContainerExit(c) if *c.container_id == *container_id),
        )
        .await
        .expect("container exit fact");
    let FactPayload::ContainerExit(ended) = ended.payload else {
        unreachable!()
    };
    assert_eq!(ended.reason, "OOMKilled");
    assert_eq!(ended.exit_code, 137);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let container_exits = running
        .facts()
        .into_iter()
        .filter(|f| matches!(&f.payload, FactPayload::ContainerExit(c) if *c.container_id == *container_id))
        .count();
    assert_eq!(container_exits, 1, "one end per container");

    // The process was in the container from its exec to its exit, as retractable state.
    let process = EntityId::Process {
        node: "test-node".into(),
        pid,
        start_ns: oom.start_ns,
    };
    let membership: Vec<i8> = running
        .observations()
        .iter()
        .filter_map(|o| match o {
            Observation::State(update) => match &update.record.object {
                StateObject::ProcessContainer(member) if member.process == process => {
                    assert_eq!(&*member.container_id, container_id.as_str());
                    Some(update.diff)
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(
        membership,
        vec![1, -1],
        "inserted at exec, retracted at exit"
    );
    running.stop().await.expect("clean stop");
    drop(cgroups);
    assert!(
        !PathBuf::from("/sys/fs/cgroup/memory")
            .join(&relative)
            .exists()
    );
}
