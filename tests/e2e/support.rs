//! Running the binary and reading its output.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tapio_model::recording::RecordingWriter;
use tapio_model::{CorrelationChange, Observation};

/// The `tapio` binary under test. Its API listens on a free port, so that the tests that run
/// it at once do not contend for the default one.
pub fn tapio() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tapio"));
    command.env("TAPIO_LOG", "info");
    command.env("TAPIO_API_ADDRESS", "127.0.0.1:0");
    command
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The shipped kspan recording.
pub fn kspan_recording() -> PathBuf {
    tapio_tests::recordings().join("kspan-rollout-oom.jsonl")
}

/// Writes `observations` as a recording file at `path`.
pub fn write_recording(path: &Path, observations: &[Observation]) {
    let mut writer =
        RecordingWriter::new(std::fs::File::create(path).expect("create")).expect("header");
    for observation in observations {
        writer.write(observation).expect("write");
    }
    writer.flush().expect("flush");
}

/// Runs a command, asserts it succeeded, returns its output.
pub fn succeed(command: &mut Command) -> Output {
    let output = command.output().expect("run tapio");
    assert!(
        output.status.success(),
        "tapio failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `tapio replay <input> --output <out>` with `extra` arguments (the input a recording
/// file or a NATS address), asserts it succeeded, returns its output.
pub fn replay_to(input: impl AsRef<OsStr>, out: &Path, extra: &[&str]) -> Output {
    succeed(
        tapio()
            .arg("replay")
            .arg(input)
            .arg("--output")
            .arg(out)
            .args(extra),
    )
}

/// Replays `recording` with `extra` arguments and returns the JSON-lines output.
pub fn replay(recording: &Path, extra: &[&str], name: &str) -> (Vec<CorrelationChange>, String) {
    let dir = scratch(name);
    let out = dir.join("out.jsonl");
    let output = replay_to(recording, &out, extra);
    let changes = read_changes(&out);
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
    (
        changes,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Parses a JSON-lines output file.
pub fn read_changes(path: &Path) -> Vec<CorrelationChange> {
    std::fs::read_to_string(path)
        .expect("read output")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a correlation change per line"))
        .collect()
}

/// The correlations current at the end: apply every change.
pub fn current(changes: &[CorrelationChange]) -> Vec<tapio_model::Correlation> {
    let mut counts: std::collections::BTreeMap<String, (i64, tapio_model::Correlation)> =
        std::collections::BTreeMap::new();
    for change in changes {
        let key = serde_json::to_string(&change.correlation).expect("serialize");
        counts
            .entry(key)
            .or_insert((0, change.correlation.clone()))
            .0 += change.diff;
    }
    counts
        .into_values()
        .filter(|(count, _)| {
            assert!(
                *count == 0 || *count == 1,
                "a correlation counted {count} times"
            );
            *count == 1
        })
        .map(|(_, correlation)| correlation)
        .collect()
}
