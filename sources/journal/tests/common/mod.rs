//! Shared helpers: real journal files written by systemd's own `systemd-journal-remote` from
//! export-format entries, and the source run over them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tapio_config::SystemdCollectorConfig;
use tapio_model::{Fact, FactPayload, Observation};
use tapio_sources::SourceStatsSnapshot;
use tapio_sources_journal::JournalSource;

/// The boot every generated entry belongs to.
pub const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// One journal entry: its fields in order.
#[derive(Clone, Debug, Default)]
pub struct Entry(pub Vec<(String, Vec<u8>)>);

impl Entry {
    /// An entry at `realtime_us` with the fields every journald entry has.
    pub fn at(realtime_us: u64) -> Entry {
        Entry(vec![
            (
                "__REALTIME_TIMESTAMP".into(),
                realtime_us.to_string().into(),
            ),
            (
                "__MONOTONIC_TIMESTAMP".into(),
                (realtime_us - 1_700_000_000_000_000).to_string().into(),
            ),
            ("_BOOT_ID".into(), BOOT_ID.into()),
            (
                "_MACHINE_ID".into(),
                "fedcba9876543210fedcba9876543210".into(),
            ),
            ("_HOSTNAME".into(), "node-1".into()),
        ])
    }

    /// This entry with `name=value` added.
    pub fn with(mut self, name: &str, value: &str) -> Entry {
        self.0.push((name.into(), value.as_bytes().to_vec()));
        self
    }

    /// A kernel message.
    pub fn kernel(realtime_us: u64, line: &str) -> Entry {
        Entry::at(realtime_us)
            .with("_TRANSPORT", "kernel")
            .with("SYSLOG_IDENTIFIER", "kernel")
            .with("PRIORITY", "3")
            .with("MESSAGE", line)
    }

    /// A message of systemd (PID 1) about `unit`, with catalog id `message_id`.
    pub fn systemd(realtime_us: u64, message_id: &str, unit: &str, message: &str) -> Entry {
        Entry::at(realtime_us)
            .with("_TRANSPORT", "journal")
            .with("_PID", "1")
            .with("_COMM", "systemd")
            .with("SYSLOG_IDENTIFIER", "systemd")
            .with("PRIORITY", "6")
            .with("MESSAGE_ID", message_id)
            .with("UNIT", unit)
            .with("MESSAGE", message)
    }
}

/// `entries` in the journal export format: `NAME=value` lines, a value holding a newline as
/// `NAME\n<le64 length><bytes>\n`, an empty line after each entry.
pub fn export(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        for (name, value) in &entry.0 {
            if value.contains(&b'\n') {
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
                out.push(b'\n');
            } else {
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value);
                out.push(b'\n');
            }
        }
        out.push(b'\n');
    }
    out
}

/// Writes `entries` to the journal file `path` with `systemd-journal-remote`.
pub fn write_journal(path: &Path, entries: &[Entry]) {
    let input = path.with_extension("export");
    std::fs::write(&input, export(entries)).expect("write the export input");
    let status = Command::new("/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", path.display()))
        .arg("--split-mode=none")
        .arg(&input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run systemd-journal-remote (Debian package systemd-journal-remote)");
    assert!(status.success(), "systemd-journal-remote failed: {status}");
    std::fs::remove_file(input).expect("remove the export input");
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// The source's settings for a journal in `directory`, reading what is there.
pub fn config(directory: &Path, cursor_file: Option<&Path>) -> SystemdCollectorConfig {
    SystemdCollectorConfig {
        enabled: true,
        unit_filter: vec!["*.service".into()],
        directories: vec![directory.display().to_string()],
        cursor_file: cursor_file
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        read_existing: true,
        oom: true,
        poll_interval: Duration::from_millis(20),
    }
}

/// Runs the source for `limit` and returns its facts' payloads with their times, and its counters.
pub async fn run(
    config: &SystemdCollectorConfig,
    limit: Duration,
) -> (Vec<Fact>, SourceStatsSnapshot) {
    let source = Box::new(JournalSource::new(config));
    let (observations, stats) = tapio_sources::run_for_test(source, "node-1", limit)
        .await
        .expect("the source runs");
    let facts = observations
        .into_iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => Some(fact),
            _ => None,
        })
        .collect();
    (facts, stats)
}

/// Just the payloads.
pub fn payloads(facts: &[Fact]) -> Vec<FactPayload> {
    facts.iter().map(|fact| fact.payload.clone()).collect()
}

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}
