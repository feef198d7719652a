//! The kernel collector end to end: `tapio run` as root on this machine's kernel, and a real
//! OOM kill in a kubelet-like pod cgroup, must come out as an OOM-restart correlation whose
//! evidence is all the kernel's: the kill, the process's exit, and the container's end (its
//! cgroup losing its last process).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tapio_model::{CorrelationKind, Observed};
use tapio_tests::random::XorShift64;

use crate::support::{current, read_changes, scratch, tapio};

/// Cgroup directories created for the test, removed (only them) when dropped.
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn tapio_run_reports_a_real_oom_kill_as_an_oom_restart() {
    let seed = u64::from(std::process::id()) << 20 | 0x5eed;
    let id = XorShift64::new(seed).hex(32);
    let pod_uid = format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    );
    let container_id = XorShift64::new(seed ^ 0xc0ffee).hex(64);
    let relative = format!("kubepods/burstable/pod{pod_uid}/{container_id}");
    let mut created = Vec::new();
    let mut leaves = Vec::new();
    for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"] {
        let mut dir = PathBuf::from(root);
        for part in relative.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).expect("create a cgroup (the test runs as root)");
                created.push(dir.clone());
            }
        }
        leaves.push(dir);
    }
    let cgroups = Cgroups(created);
    std::fs::write(leaves[0].join("memory.limit_in_bytes"), "32M").expect("memory limit");

    let dir = scratch("kernel-oom");
    let config = dir.join("tapio.yaml");
    std::fs::write(&config, "node_name: oom-node\n").expect("config");
    let out = dir.join("out.jsonl");
    let mut child = tapio()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--for", "12s", "--output"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tapio run");
    let stderr = child.stderr.take().expect("stderr");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Kernel source started") {
                let _ = started_tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the kernel source starts within 10 s");

    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let script = format!(
        "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec {python} -c \"x = b'x' * (200 * 1024 * 1024)\"",
        leaves[0].display(),
        leaves[1].display()
    );
    let started = Instant::now();
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .expect("run the allocator");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "OOM-killed: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(8));

    let status = child.wait().expect("tapio exits after --for");
    let log = log.join().expect("log reader");
    assert!(status.success(), "{log}");
    drop(cgroups);

    let now = current(&read_changes(&out));
    let oom = now
        .iter()
        .find(|c| {
            c.kind == CorrelationKind::OomRestart
                && c.chain
                    .iter()
                    .any(|h| h.entity.to_string() == format!("container/{container_id}"))
        })
        .unwrap_or_else(|| {
            panic!("no OOM restart for the container in the output:\n{now:#?}\n{log}")
        });
    let hops: Vec<String> = oom.chain.iter().map(|h| h.entity.to_string()).collect();
    assert!(hops[0].starts_with("process/oom-node/"), "{hops:?}");
    assert_eq!(hops[0], hops[1], "the kill and the exit are of one process");
    assert_eq!(hops[2], format!("container/{container_id}"));
    assert!(
        oom.chain.iter().all(|h| &*h.fact_id.source == "kernel"),
        "{:#?}",
        oom.chain
    );
    assert!(
        matches!(&oom.chain[2].observed, Observed::ContainerExit { reason, .. } if &**reason == "OOMKilled"),
        "{:?}",
        oom.chain[2].observed
    );
    assert_eq!(oom.confidence.percent, 95);
    // The kernel collector's own counters are its health, logged with how it ended.
    assert!(
        log.lines().any(|line| line.contains("Source finished.")
            && line.contains("source=\"kernel\"")
            && line.contains("records=")
            && line.contains("ring_dropped=")),
        "{log}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}
