//! `tapio backtest`: the shipped recording replayed under two configurations, and what the
//! change adds, removes or alters.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use tapio_tests::nats::NatsServer;

use crate::support::{kspan_recording, scratch, succeed, tapio};

/// The OOM-killed process of the shipped recording.
const VICTIM: &str = "process/kind-control-plane/2315/1621357851120000000";

/// A sequence a user tries: the OOM kill, then its container's exit within `within`.
fn kill_then_stop(within: &str, enabled: bool) -> String {
    format!(
        "correlation:\n  sequences:\n    - name: kill_then_container_stop\n      enabled: {enabled}\n      within: {within}\n      steps:\n        - kind: oom_kill\n        - kind: container_exit\n          on: container\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn backtest(baseline: Option<&Path>, against: &Path) -> Output {
    backtest_of(kspan_recording().as_os_str(), baseline, against)
}

fn backtest_of(source: &OsStr, baseline: Option<&Path>, against: &Path) -> Output {
    let mut command = tapio();
    command.arg("backtest").arg(source);
    if let Some(baseline) = baseline {
        command.arg("--config").arg(baseline);
    }
    command.arg("--against").arg(against);
    command.output().expect("run tapio")
}

fn report(baseline: Option<&Path>, against: &Path) -> String {
    let output = backtest(baseline, against);
    assert!(
        output.status.success(),
        "backtest failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The counts of the summary line: added, removed, altered, unchanged.
fn counts(report: &str) -> [usize; 4] {
    let summary = report.lines().next().expect("a summary line");
    let numbers: Vec<usize> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .take(4)
        .map(|part| part.parse().expect("a count"))
        .collect();
    numbers.try_into().expect("four counts")
}

#[test]
fn identical_configurations_change_nothing() {
    let dir = scratch("backtest-same");
    let same = write(
        &dir,
        "same.yaml",
        "correlation:\n  engine:\n    tick: 100ms\n",
    );
    for baseline in [None, Some(same.as_path())] {
        let report = report(baseline, &same);
        let [added, removed, altered, unchanged] = counts(&report);
        assert_eq!((added, removed, altered), (0, 0, 0), "{report}");
        // Ownership chains of the four pods, their containers and ReplicaSets, and the OOM.
        assert!(unchanged > 5, "{report}");
        assert_eq!(report.lines().count(), 1, "{report}");
    }
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn tightening_the_oom_bound_removes_the_oom_match() {
    let dir = scratch("backtest-tighter");
    // The container exit came 41 ms after the kill.
    let tighter = write(
        &dir,
        "tighter.yaml",
        "correlation:\n  oom_sequence:\n    within: 10ms\n",
    );
    let report = report(None, &tighter);
    assert_eq!(counts(&report)[..3], [0, 1, 0], "{report}");
    assert!(report.contains("\n  removed oom_restart: 1\n"), "{report}");
    assert!(
        report.contains(&format!(
            "- removed oom_restart at {VICTIM} (first evidence kernel/kind-control-plane/2)"
        )),
        "{report}"
    );
    assert!(
        report.contains("was killed by the kernel OOM killer"),
        "{report}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_new_sequence_adds_its_matches_and_disabling_it_removes_them() {
    let dir = scratch("backtest-sequence");
    let with = write(&dir, "with.yaml", &kill_then_stop("1s", true));
    let without = write(&dir, "without.yaml", &kill_then_stop("1s", false));
    let added = report(None, &with);
    // The killed helper process of the other pod had no container exit: one match only.
    assert_eq!(counts(&added)[..3], [1, 0, 0], "{added}");
    assert!(
        added.contains(&format!(
            "+ added declared_sequence kill_then_container_stop at {VICTIM}"
        )),
        "{added}"
    );
    assert!(
        added.contains("sequence kill_then_container_stop from"),
        "{added}"
    );
    let removed = report(Some(&with), &without);
    assert_eq!(counts(&removed)[..3], [0, 1, 0], "{removed}");
    assert!(
        removed.contains("- removed declared_sequence kill_then_container_stop"),
        "{removed}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_changed_bound_alters_the_same_match() {
    let dir = scratch("backtest-altered");
    let narrow = write(&dir, "narrow.yaml", &kill_then_stop("1s", true));
    let wide = write(&dir, "wide.yaml", &kill_then_stop("2s", true));
    let report = report(Some(&narrow), &wide);
    assert_eq!(counts(&report)[..3], [0, 0, 1], "{report}");
    assert!(
        report.contains("~ altered declared_sequence kill_then_container_stop"),
        "{report}"
    );
    assert!(
        report.contains("(bound 1000 ms)") && report.contains("(bound 2000 ms)"),
        "{report}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_bad_configuration_names_its_file_and_key() {
    let dir = scratch("backtest-bad");
    let bad = write(
        &dir,
        "bad.yaml",
        &kill_then_stop("1s", true).replace("on: container", "on: podd"),
    );
    let output = backtest(None, &bad);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:9:15: correlation.sequences[0].steps[1].on: unknown entity `podd`",
            bad.display()
        )),
        "{stderr}"
    );
    let good = write(&dir, "good.yaml", "");
    let output = backtest(Some(&bad), &good);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:9:"), "{stderr}");
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn backtest_help_says_what_it_compares() {
    let output = succeed(tapio().args(["backtest", "--help"]));
    let help = String::from_utf8_lossy(&output.stdout);
    for words in [
        "adds, removes or alters",
        "--against",
        "identified by",
        "nats://",
    ] {
        assert!(help.contains(words), "`{words}` missing from:\n{help}");
    }
}

#[test]
fn a_jetstream_stream_backtests_like_the_recording_it_holds() {
    let nats = NatsServer::start("backtest");
    let dir = scratch("backtest-nats");
    let agent = write(
        &dir,
        "agent.yaml",
        &format!(
            "node_name: agent-1\ncollectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\nintegrations:\n  nats:\n    url: {}\n    spool_path: {}\n",
            kspan_recording().display(),
            nats.url(),
            dir.join("agent.spool").display()
        ),
    );
    succeed(
        tapio()
            .args(["run", "--mode", "collectors", "--config"])
            .arg(&agent),
    );
    let tighter = write(
        &dir,
        "tighter.yaml",
        "correlation:\n  oom_sequence:\n    within: 10ms\n",
    );
    let from_file = report(None, &tighter);
    let stream = format!("{}/TAPIO", nats.url());
    let output = backtest_of(OsStr::new(&stream), None, &tighter);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_stream = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(from_stream, from_file);
    assert_eq!(counts(&from_stream)[..3], [0, 1, 0], "{from_stream}");
    std::fs::remove_dir_all(dir).expect("clean");
}
