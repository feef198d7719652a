//! The blocking side: finds the journal files, opens them through libsystemd, keeps the read
//! position and turns entries into fact payloads. Runs on its own thread (an sd-journal handle
//! belongs to the thread that uses it) and hands batches to the async side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use systemd::journal::{Journal, OpenFilesOptions};
use tapio_model::FactPayload;
use tokio::sync::mpsc;

use crate::units::{MESSAGE_IDS, UnitFilter, UnitMessage};
use crate::{Saved, State};

/// Entries read before a batch is handed over.
const BATCH: usize = 1024;

/// What the reader was told to do.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) directories: Vec<PathBuf>,
    pub(crate) filter: UnitFilter,
    pub(crate) oom: bool,
    pub(crate) poll_interval: Duration,
    pub(crate) read_existing: bool,
}

/// One batch of what was read.
#[derive(Debug)]
pub(crate) struct Read {
    /// Facts, with their time in ns since the epoch, in journal order.
    pub(crate) facts: Vec<(u64, FactPayload)>,
    /// The cursor of the last entry read, `None` when no entry was read.
    pub(crate) cursor: Option<Arc<str>>,
    /// The parser's state after the last entry.
    pub(crate) state: State,
    /// Whether the reader has read everything there is for now.
    pub(crate) caught_up: bool,
    /// Entries read.
    pub(crate) entries: u64,
    /// Journal files or entries that could not be read, reported and skipped.
    pub(crate) errors: u64,
}

/// The journal files of the configured directories, and those that were refused.
struct Files {
    directories: Vec<PathBuf>,
    /// The files open in the journal.
    good: BTreeSet<PathBuf>,
    /// Files that could not be read, with the size and time they had then: tried again only
    /// when they change.
    refused: BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
}

fn stamp(path: &Path) -> (u64, Option<SystemTime>) {
    std::fs::metadata(path).map_or((0, None), |meta| (meta.len(), meta.modified().ok()))
}

/// Every `*.journal` and `*.journal~` file in `directory` and one level below it.
fn journal_files(directory: &Path, depth: u8, found: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            journal_files(&path, depth - 1, found);
        } else if kind.is_file() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".journal") || name.ends_with(".journal~") {
                found.insert(path);
            }
        }
    }
}

/// Opens `path` alone and steps onto its first entry: a file whose header or first entry
/// libsystemd cannot read is refused here, so that it does not take the others down with it.
fn check(path: &Path) -> Result<(), systemd::Error> {
    let mut journal = OpenFilesOptions::default().open_files([path.to_string_lossy().as_ref()])?;
    journal.next()?;
    Ok(())
}

impl Files {
    /// Looks at the directories again; returns the errors it reported and whether the set of
    /// good files changed.
    fn refresh(&mut self, all: bool) -> (u64, bool) {
        let mut found = BTreeSet::new();
        for directory in &self.directories {
            journal_files(directory, 1, &mut found);
        }
        let mut errors = 0;
        let mut good = BTreeSet::new();
        for path in &found {
            if !all && self.good.contains(path) {
                good.insert(path.clone());
                continue;
            }
            if let Some(refused) = self.refused.get(path)
                && *refused == stamp(path)
            {
                continue;
            }
            match check(path) {
                Ok(()) => {
                    if self.refused.remove(path).is_some() {
                        tracing::info!(file = %path.display(), "The journal file can be read now.");
                    }
                    good.insert(path.clone());
                }
                Err(error) => {
                    errors += 1;
                    tracing::error!(file = %path.display(), %error, "Skipping a journal file that cannot be read (corrupt, truncated or of an unknown format).");
                    self.refused.insert(path.clone(), stamp(path));
                }
            }
        }
        self.refused.retain(|path, _| found.contains(path));
        for gone in self.good.difference(&good) {
            if !self.refused.contains_key(gone) {
                tracing::info!(file = %gone.display(), "A journal file went away (rotated or vacuumed); reading on from the others.");
            }
        }
        let changed = good != self.good;
        self.good = good;
        (errors, changed)
    }

    fn open(&self) -> Result<Journal, systemd::Error> {
        let names: Vec<String> = self
            .good
            .iter()
            .map(|path| path.to_string_lossy().into_owned())
            .collect();
        let mut journal =
            OpenFilesOptions::default().open_files(names.iter().map(String::as_str))?;
        // Unit messages of systemd itself (PID 1), or kernel messages.
        for id in MESSAGE_IDS {
            journal.match_add("MESSAGE_ID", id)?;
        }
        journal.match_add("_PID", "1")?;
        journal.match_or()?;
        journal.match_add("_TRANSPORT", "kernel")?;
        Ok(journal)
    }
}

fn text(journal: &mut Journal, field: &str) -> Result<Option<String>, systemd::Error> {
    Ok(journal.get_data(field)?.and_then(|data| {
        data.value()
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }))
}

/// The reader.
pub(crate) struct Reader {
    settings: Settings,
    files: Files,
    journal: Option<Journal>,
    state: State,
    /// The cursor of the last entry read (or resumed from).
    cursor: Option<Arc<str>>,
    /// Whether the journal is on an entry that has not been read yet (after resuming at a
    /// cursor whose entry is gone).
    unread_current: bool,
}

impl Reader {
    pub(crate) fn new(settings: Settings, saved: Option<Saved>) -> Reader {
        let (cursor, state) = match saved {
            Some(saved) => (Some(Arc::from(saved.cursor.as_str())), saved.state),
            None => (None, State::default()),
        };
        Reader {
            files: Files {
                directories: settings.directories.clone(),
                good: BTreeSet::new(),
                refused: BTreeMap::new(),
            },
            settings,
            journal: None,
            state,
            cursor,
            unread_current: false,
        }
    }

    /// Opens the good files and puts the read position after the last entry read, or where a
    /// first start begins.
    fn reopen(&mut self) -> Result<(), systemd::Error> {
        self.journal = None;
        self.unread_current = false;
        if self.files.good.is_empty() {
            return Ok(());
        }
        let mut journal = self.files.open()?;
        match &self.cursor {
            Some(cursor) => {
                journal.seek_cursor(cursor.as_ref())?;
                if journal.next()? > 0 && !journal.test_cursor(cursor.as_ref())? {
                    // The entry itself is gone: this is the first one after it.
                    self.unread_current = true;
                }
            }
            None if self.settings.read_existing => journal.seek_head()?,
            None => {
                journal.seek_tail()?;
                if journal.previous()? > 0 {
                    // Everything up to now counts as read.
                    self.cursor = Some(journal.cursor()?.into());
                }
            }
        }
        self.journal = Some(journal);
        Ok(())
    }

    /// One entry's facts, if any.
    fn entry(
        journal: &mut Journal,
        settings: &Settings,
        state: &mut State,
    ) -> Result<Option<(u64, FactPayload)>, systemd::Error> {
        let time_ns = journal.timestamp_usec()?.saturating_mul(1000);
        if let Some(message_id) = text(journal, "MESSAGE_ID")?
            && MESSAGE_IDS.contains(&message_id.as_str())
        {
            let message = UnitMessage {
                message_id,
                unit: text(journal, "UNIT")?.unwrap_or_default(),
                job_type: text(journal, "JOB_TYPE")?,
                job_result: match text(journal, "JOB_RESULT")? {
                    Some(result) => Some(result),
                    None => text(journal, "RESULT")?,
                },
                unit_result: text(journal, "UNIT_RESULT")?,
                exit_code: text(journal, "EXIT_CODE")?,
                exit_status: text(journal, "EXIT_STATUS")?,
            };
            return Ok(state
                .units
                .message(&message, &settings.filter)
                .map(|change| (time_ns, FactPayload::UnitChange(change))));
        }
        if !settings.oom || text(journal, "_TRANSPORT")?.as_deref() != Some("kernel") {
            return Ok(None);
        }
        let Some(line) = text(journal, "MESSAGE")? else {
            return Ok(None);
        };
        Ok(state
            .oom
            .line(&line, time_ns)
            .map(|record| (record.time_ns, FactPayload::OomKill(record.to_fact()))))
    }

    /// Reads up to a batch. An entry whose fields cannot be read is counted and skipped; when
    /// the journal cannot step on, its files are checked again and it is reopened after the
    /// last entry read.
    fn batch(&mut self) -> Read {
        let mut read = Read {
            facts: Vec::new(),
            cursor: None,
            state: State::default(),
            caught_up: false,
            entries: 0,
            errors: 0,
        };
        let mut failed = None;
        if let Some(journal) = self.journal.as_mut() {
            while read.entries < BATCH as u64 {
                if self.unread_current {
                    self.unread_current = false;
                } else {
                    match journal.next() {
                        Ok(0) => {
                            read.caught_up = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            failed = Some(error);
                            break;
                        }
                    }
                }
                read.entries += 1;
                match Self::entry(journal, &self.settings, &mut self.state) {
                    Ok(Some(fact)) => read.facts.push(fact),
                    Ok(None) => {}
                    Err(error) => {
                        read.errors += 1;
                        tracing::warn!(%error, "Skipped a journal entry whose fields cannot be read.");
                    }
                }
            }
            if read.entries > 0 {
                match journal.cursor() {
                    Ok(cursor) => {
                        let cursor: Arc<str> = cursor.into();
                        self.cursor = Some(Arc::clone(&cursor));
                        read.cursor = Some(cursor);
                    }
                    Err(error) => failed = failed.or(Some(error)),
                }
            }
        } else {
            read.caught_up = true;
        }
        if let Some(error) = failed {
            read.errors += 1;
            read.caught_up = true;
            tracing::error!(%error, "Reading the journal failed; checking its files again.");
            let (errors, _) = self.files.refresh(true);
            read.errors += errors;
            if let Err(error) = self.reopen() {
                read.errors += 1;
                tracing::error!(%error, "Cannot reopen the journal; trying again at the next poll.");
            }
        }
        read.state = self.state.clone();
        read
    }

    /// Runs until `stop`, handing batches to `out`.
    pub(crate) fn run(mut self, out: &mpsc::Sender<Read>, stop: &Stop) {
        let mut errors = 0;
        let mut first = true;
        while !stop.stopped() {
            let (found_errors, changed) = self.files.refresh(false);
            errors += found_errors;
            if changed || first {
                first = false;
                if let Err(error) = self.reopen() {
                    errors += 1;
                    tracing::error!(%error, "Cannot open the journal files; trying again at the next poll.");
                }
            }
            loop {
                let mut read = self.batch();
                read.errors += std::mem::take(&mut errors);
                let caught_up = read.caught_up;
                if out.blocking_send(read).is_err() {
                    return;
                }
                if caught_up || stop.stopped() {
                    break;
                }
            }
            match self.journal.as_mut() {
                Some(journal) => {
                    if let Err(error) = journal.wait(Some(self.settings.poll_interval)) {
                        tracing::warn!(%error, "Waiting for the journal failed.");
                        std::thread::sleep(self.settings.poll_interval);
                    }
                }
                None => std::thread::sleep(self.settings.poll_interval),
            }
        }
    }
}

/// A stop flag the async side raises and the reader thread polls.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stop(Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    /// Tells the reader to stop.
    pub(crate) fn raise(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it was told to.
    pub(crate) fn stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
