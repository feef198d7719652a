//! The systemd journal collector (layer L2; depends on `tapio-sources`, `tapio-model` and
//! `tapio-config`): follows the node's journal through libsystemd's sd-journal and reports
//!
//! - units starting, stopping, restarting and failing (with systemd's result and the exit of
//!   the unit's process), from systemd's own catalogued messages, for the units
//!   `collectors.systemd.unit_filter` matches → `unit_change` ([`units`]);
//! - the kernel's OOM kills, parsed from its messages (`_TRANSPORT=kernel`) → `oom_kill`
//!   ([`oom`]).
//!
//! It reads every journal file in the configured directories (journald's persistent and
//! volatile stores by default), merged in time order by libsystemd. Each file is first opened
//! alone: one that libsystemd cannot read (a corrupt header, a truncated or foreign file) is
//! reported by name, counted in `errors` and left out, and the others are read. The
//! directories are looked at again whenever the journal is idle, so files that journald
//! rotates in are picked up and files rotated away or vacuumed are dropped.
//!
//! The position is the journal's cursor. Entries go to the dataflow in batches, each a
//! [`tapio_sources::Delivery`]; once the dataflow has taken a batch in, its last cursor (and
//! the parsers' state after it: an OOM record half read, a unit exit waiting for its failure)
//! is written to `collectors.systemd.cursor_file`. A restart resumes after that entry: nothing
//! taken in is read again, nothing after it is skipped.

pub mod oom;
mod reader;
pub mod units;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tapio_config::{SystemdCollectorConfig, TapioConfig};
use tapio_model::{Fact, Heartbeat, Observation};
use tapio_sources::{BoxFuture, Delivery, Positions, Source, SourceContext, SourceError, now_ns};
use tokio::sync::mpsc;

use crate::oom::OomParser;
use crate::reader::{Read, Reader, Settings, Stop};
use crate::units::{UnitExits, UnitFilter};

/// The parsers' state between entries, kept with the cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The OOM record being read.
    pub oom: OomParser,
    /// Unit exits waiting for the failure that follows them.
    pub units: UnitExits,
}

/// What the cursor file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The cursor of the last entry the dataflow took in.
    pub cursor: String,
    /// The parsers' state after it.
    pub state: State,
}

/// Why the cursor file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CursorFileError {
    /// It could not be read or written.
    #[error("cannot {action} the journal cursor file {path}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not hold a saved position.
    #[error("the journal cursor file {path} does not hold a saved position")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the saved position in `path`; `None` when there is no file yet.
///
/// # Errors
/// The file exists but cannot be read or does not parse.
pub fn load_cursor(path: &Path) -> Result<Option<Saved>, CursorFileError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CursorFileError::Io {
                action: "read",
                path: path.into(),
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| CursorFileError::Format {
            path: path.into(),
            source,
        })
}

/// Writes `saved` to `path` whole: to a file beside it, then renamed over it.
///
/// # Errors
/// The file or its directory cannot be written.
pub fn save_cursor(path: &Path, saved: &Saved) -> Result<(), CursorFileError> {
    let io = |source| CursorFileError::Io {
        action: "write",
        path: path.into(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let staged = path.with_extension("new");
    let text = serde_json::to_vec(saved).map_err(|source| CursorFileError::Format {
        path: path.into(),
        source,
    })?;
    std::fs::write(&staged, text).map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)
}

/// The journal source of the validated `config` (`collectors.systemd`); does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(JournalSource::new(&config.collectors.systemd)))
}

/// Follows the journal.
#[derive(Debug)]
pub struct JournalSource {
    config: SystemdCollectorConfig,
}

impl JournalSource {
    /// A source reading as the validated `config` (`collectors.systemd`) says; does no I/O.
    pub fn new(config: &SystemdCollectorConfig) -> JournalSource {
        JournalSource {
            config: config.clone(),
        }
    }
}

/// Shortest time between two writes of the cursor file.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// Batches handed over and not yet taken in: position, cursor, state.
type Pending = VecDeque<(u64, Option<Arc<str>>, State)>;

impl Source for JournalSource {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn run(self: Box<Self>, mut cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let config = self.config;
            let cursor_file = (!config.cursor_file.trim().is_empty())
                .then(|| PathBuf::from(config.cursor_file.trim()));
            let saved = match &cursor_file {
                Some(path) => load_cursor(path).unwrap_or_else(|error| {
                    cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %error, "Ignoring the journal cursor file; starting afresh.");
                    None
                }),
                None => None,
            };
            match &saved {
                Some(saved) => {
                    tracing::info!(cursor = %saved.cursor, "Resuming the journal after the saved cursor.")
                }
                None => tracing::info!(
                    read_existing = config.read_existing,
                    "Following the journal from the start of its files or from now."
                ),
            }
            let settings = Settings {
                directories: config.directories.iter().map(PathBuf::from).collect(),
                filter: UnitFilter::new(&config.unit_filter),
                oom: config.oom,
                poll_interval: config.poll_interval,
                read_existing: config.read_existing,
            };
            let (reads_tx, mut reads) = mpsc::channel::<Read>(4);
            let stop = Stop::default();
            let reader = {
                let stop = stop.clone();
                let saved = saved.clone();
                // The sd-journal handle stays on the thread that opens it.
                std::thread::Builder::new()
                    .name("tapio-journal".into())
                    .spawn(move || Reader::new(settings, saved).run(&reads_tx, &stop))
                    .map_err(|source| SourceError::Input {
                        kind: "systemd",
                        what: "a thread for the journal reader".into(),
                        source: Box::new(source),
                    })?
            };
            cx.health.set_running();
            let Positions { out, mut taken_in } = cx.take_positions();
            let mut out = Some(out);
            let mut pending: Pending = VecDeque::new();
            let mut position = 0u64;
            let mut last_cursor: Option<Arc<str>> =
                saved.as_ref().map(|saved| Arc::from(saved.cursor.as_str()));
            let mut saved_cursor = last_cursor.clone();
            let mut last_save = Instant::now();
            let save = |pending: &mut Pending, taken: u64, saved_cursor: &mut Option<Arc<str>>| {
                let mut newest = None;
                while pending.front().is_some_and(|(at, _, _)| *at <= taken) {
                    newest = pending.pop_front();
                }
                let (Some(path), Some((_, Some(cursor), state))) = (&cursor_file, newest) else {
                    return;
                };
                if saved_cursor.as_ref() == Some(&cursor) {
                    return;
                }
                let saved = Saved {
                    cursor: cursor.to_string(),
                    state,
                };
                match save_cursor(path, &saved) {
                    Ok(()) => *saved_cursor = Some(cursor),
                    Err(error) => {
                        tracing::error!(error = %error, "Cannot save the journal position; a restart would read again what came after the last saved one.")
                    }
                }
            };
            loop {
                tokio::select! {
                    () = cx.shutdown.cancelled() => break,
                    read = reads.recv() => {
                        let Some(read) = read else { break };
                        cx.stats.received.fetch_add(read.entries, Ordering::Relaxed);
                        cx.stats.errors.fetch_add(read.errors, Ordering::Relaxed);
                        let mut observations: Vec<Observation> = read
                            .facts
                            .into_iter()
                            .map(|(time_ns, payload)| Observation::Fact(Fact { id: cx.next_fact_id(), time_ns, payload }))
                            .collect();
                        let sent = observations.len() as u64;
                        if read.caught_up {
                            observations.push(Observation::Heartbeat(Heartbeat {
                                source: "systemd".into(),
                                node: cx.node.to_string(),
                                upto_ns: now_ns(),
                            }));
                        }
                        if read.cursor.is_some() {
                            last_cursor.clone_from(&read.cursor);
                        }
                        position += 1;
                        pending.push_back((position, last_cursor.clone(), read.state));
                        let Some(sender) = out.as_ref() else { break };
                        if sender.send(Delivery { position, observations, stored_ns: 0 }).await.is_err() {
                            break;
                        }
                        cx.stats.sent.fetch_add(sent, Ordering::Relaxed);
                    }
                    changed = taken_in.changed() => {
                        if changed.is_err() { break; }
                        if last_save.elapsed() >= SAVE_EVERY {
                            let taken = *taken_in.borrow_and_update();
                            save(&mut pending, taken, &mut saved_cursor);
                            last_save = Instant::now();
                        }
                    }
                }
            }
            stop.raise();
            drop(reads);
            drop(out.take());
            // Wait (a little) for the dataflow to take in what was handed over, then save.
            let deadline = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(deadline);
            while *taken_in.borrow_and_update() < position {
                tokio::select! {
                    changed = taken_in.changed() => if changed.is_err() { break },
                    () = &mut deadline => break,
                }
            }
            let taken = *taken_in.borrow();
            save(&mut pending, taken, &mut saved_cursor);
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
            Ok(())
        })
    }
}
