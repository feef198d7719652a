//! Collectors through the binary: progress per source, and a collector that cannot start.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{kspan_recording, scratch, tapio};

/// Runs `command` to its end, killing it after `limit`; the output and how long it took.
fn run_within(command: &mut Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tapio");
    while child.try_wait().expect("poll tapio").is_none() {
        if started.elapsed() > limit {
            child.kill().expect("kill tapio");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("wait for tapio");
    (output, started.elapsed())
}

/// `tapio` with an environment in which kube-rs finds no kubeconfig: no in-cluster service
/// account, no `$KUBECONFIG` file, no `~/.kube/config`.
fn tapio_without_kubeconfig(dir: &Path) -> Command {
    let mut command = tapio();
    command
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env("HOME", dir);
    command
}

/// Lines of `log` that are a progress report of `source`.
fn progress_of<'a>(log: &'a str, source: &str) -> Vec<&'a str> {
    let field = format!("source=\"{source}\"");
    log.lines()
        .filter(|line| line.contains("Progress.") && line.contains(&field))
        .collect()
}

/// The value of the integer field `name` in one log line.
fn field(line: &str, name: &str) -> u64 {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {line}"))
}

#[test]
fn two_sources_each_report_their_own_progress() {
    let dir = scratch("two-sources-progress");
    let token = dir.join("token");
    std::fs::write(&token, "not-a-real-token\n").expect("write token");
    let config = dir.join("tapio.yaml");
    // The recording at its own pace (11 s) sends for longer than the run, which leaves time
    // for a progress report (every 5 s) on a loaded machine; the kubelet at a port where nothing
    // listens sends nothing. One shared counter made the second rate wrap (or panic).
    std::fs::write(
        &config,
        format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\n    speed: 1.0\n  kubelet:\n    enabled: true\n    url: https://127.0.0.1:1\n    token_path: {}\n    ca_path: ''\n    insecure_skip_tls_verify: true\n",
            kspan_recording().display(),
            token.display()
        ),
    )
    .expect("write config");
    let (output, _) = run_within(
        tapio()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--for", "8s", "--output"])
            .arg(dir.join("out.jsonl")),
        Duration::from_secs(30),
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let recording = progress_of(&log, "recording");
    let kubelet = progress_of(&log, "kubelet");
    assert!(
        !recording.is_empty(),
        "no progress of the recording:\n{log}"
    );
    assert!(!kubelet.is_empty(), "no progress of the kubelet:\n{log}");
    for line in &recording {
        assert!(field(line, "sent") > 0, "{line}");
        // The recording holds a few hundred observations a second at its own pace.
        assert!(field(line, "per_second") < 100_000, "{line}");
        assert!(line.contains("status=running"), "{line}");
    }
    for line in &kubelet {
        assert_eq!(field(line, "sent"), 0, "{line}");
        assert_eq!(field(line, "per_second"), 0, "{line}");
        assert!(line.contains("status=running"), "{line}");
    }
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_source_that_cannot_start_says_so_at_once_and_the_others_run_on() {
    let dir = scratch("cannot-start-others-run");
    let config = dir.join("tapio.yaml");
    std::fs::write(
        &config,
        format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\n    speed: 1.0\n  kubernetes:\n    enabled: true\n",
            kspan_recording().display()
        ),
    )
    .expect("write config");
    let (output, _) = run_within(
        tapio_without_kubeconfig(&dir)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--for", "8s", "--output"])
            .arg(dir.join("out.jsonl")),
        Duration::from_secs(30),
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the recording ran:\n{log}");
    let failures: Vec<(usize, &str)> = log
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains("Source could not start."))
        .collect();
    assert_eq!(failures.len(), 1, "{log}");
    let (at, failure) = failures[0];
    assert!(failure.contains("source=\"kubernetes\""), "{failure}");
    assert!(failure.contains("kubeconfig"), "{failure}");
    let stopped = log
        .lines()
        .position(|line| line.contains("Run time is up"))
        .expect("the run time ends the run");
    assert!(
        at < stopped,
        "the failure is logged when it happens:\n{log}"
    );
    assert_said_once(failure);
    // Once: the progress reports of the run (one every 5 s) do not repeat it.
    assert!(
        log.lines()
            .any(|line| line.contains("Progress.") && line.contains("source=\"recording\"")),
        "{log}"
    );
    let cause = "cannot read the in-cluster or default kubeconfig";
    assert_eq!(log.matches(cause).count(), 1, "{log}");
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn run_fails_at_once_when_no_source_can_start() {
    let dir = scratch("no-source-starts");
    let config = dir.join("tapio.yaml");
    std::fs::write(
        &config,
        "collectors:\n  kernel:\n    enabled: false\n  kubernetes:\n    enabled: true\n",
    )
    .expect("write config");
    // No --for: without the fix a user saw nothing until stopping Tapio.
    let (output, took) = run_within(
        tapio_without_kubeconfig(&dir)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--output")
            .arg(dir.join("out.jsonl")),
        Duration::from_secs(30),
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(took < Duration::from_secs(20), "tapio kept running:\n{log}");
    assert_eq!(output.status.code(), Some(1), "{log}");
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Source could not start."))
        .collect();
    assert_eq!(failures.len(), 1, "{log}");
    assert_said_once(failures[0]);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: no enabled source could start (kubernetes)"),
        "{log}"
    );
    // The cause is in the log once, not again in the final error.
    assert!(!last.contains("kubeconfig"), "{last}");
    std::fs::remove_dir_all(dir).expect("clean");
}

/// Asserts that no part of the `: `-separated error in `line` comes twice.
fn assert_said_once(line: &str) {
    let error = line
        .split_once("error=")
        .map(|(_, error)| error)
        .unwrap_or_else(|| panic!("no error in {line}"));
    let parts: Vec<&str> = error
        .split(": ")
        .map(str::trim)
        .filter(|part| part.len() > 12)
        .collect();
    for (index, part) in parts.iter().enumerate() {
        assert!(
            !parts[index + 1..]
                .iter()
                .any(|later| later.contains(part) || part.contains(later)),
            "`{part}` is said twice in {line}"
        );
    }
}
