//! The command line: configuration checks, `--config` alone, `--for`, and flushing on SIGINT.

use std::time::{Duration, Instant};

use tapio_model::CorrelationKind;

use crate::support::{current, kspan_recording, read_changes, scratch, succeed, tapio};

#[test]
fn config_check_prints_the_effective_configuration() {
    let shipped = tapio_tests::repo_root().join("config/tapio.yaml");
    let output = succeed(tapio().args(["config", "check"]).arg(&shipped));
    let effective = String::from_utf8_lossy(&output.stdout);
    assert!(effective.contains("worker_count: 1"), "{effective}");
    assert!(effective.contains("tick: 100ms"), "{effective}");
}

#[test]
fn config_errors_name_the_key_path_and_line() {
    let dir = scratch("bad-config");
    let path = dir.join("tapio.yaml");
    std::fs::write(&path, "correlation:\n  engine:\n    worker_count: 0\n").expect("write");
    let output = tapio()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("tapio.yaml:3:"), "{stderr}");
    assert!(
        stderr.contains("correlation.engine.worker_count"),
        "{stderr}"
    );
    std::fs::write(&path, "correlation:\n  engine:\n    workers: 2\n").expect("write");
    let output = tapio().arg("--config").arg(&path).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("correlation.engine.workers: unknown key"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

fn config_replaying(dir: &std::path::Path, speed: f64) -> std::path::PathBuf {
    let path = dir.join("tapio.yaml");
    std::fs::write(
        &path,
        format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\n    speed: {speed}\n",
            kspan_recording().display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn config_alone_runs_like_run() {
    let dir = scratch("config-alone");
    let config = config_replaying(&dir, 0.0);
    let out = dir.join("out.jsonl");
    succeed(
        tapio()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .arg("--output")
            .arg(&out),
    );
    let via_run = read_changes(&out);
    let output = succeed(tapio().arg("--config").arg(&config));
    let human = String::from_utf8_lossy(&output.stdout);
    assert_eq!(human.lines().count(), via_run.len(), "{human}");
    assert!(human.contains("+ oom_restart"), "{human}");
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn run_for_stops_cleanly() {
    let dir = scratch("run-for");
    let config = config_replaying(&dir, 1.0);
    let out = dir.join("out.jsonl");
    let started = Instant::now();
    let output = succeed(
        tapio()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--for", "2s", "--output"])
            .arg(&out),
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("Run time is up"), "{log}");
    // Two seconds of the rollout at its own pace: the first ReplicaSet and pod are owned.
    let now = current(&read_changes(&out));
    assert!(
        now.iter().any(|c| c.kind == CorrelationKind::Ownership),
        "{now:#?}"
    );
    assert!(!now.iter().any(|c| c.kind == CorrelationKind::OomRestart));
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn sigint_flushes_everything_seen_before_exiting() {
    let dir = scratch("sigint");
    let config = config_replaying(&dir, 1.0);
    let out = dir.join("out.jsonl");
    let child = tapio()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--output")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The OOM kill is 3.9 s into the recording; its watermark would close 2 s later.
    std::thread::sleep(Duration::from_millis(4_600));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let started = Instant::now();
    let output = child.wait_with_output().expect("wait");
    assert!(started.elapsed() < Duration::from_secs(5), "slow to stop");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("Interrupted"), "{log}");
    let now = current(&read_changes(&out));
    assert!(
        now.iter().any(|c| c.kind == CorrelationKind::OomRestart),
        "the OOM sequence seen before SIGINT must be flushed:\n{log}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}
