//! The agent's spool: a bounded, append-only file of whole messages kept while NATS is
//! unreachable, read back in order and unchanged when it returns.
//!
//! Format, line oriented: every message is a header line
//! `#timed <n> <earliest ns> <latest ns> <subject> <id>` followed by its `n` payload lines (the
//! observations' JSON). The id is stored, not recomputed, so a re-publish carries the id of the
//! first attempt; the event time range is stored so that draining the spool does not decode
//! every observation again to learn it (the publisher bounds the time span of what is
//! unacknowledged).
//!
//! Spools written by earlier versions drain as they are: their messages of several
//! observations have the header `#batch <n> <subject> <id>` (no time range), and their
//! one-observation messages are the observation's JSON alone, as one line (the subject and id
//! are derived from the observation).
//!
//! Messages are appended at the end and read from a read offset; a message counts as delivered
//! only when the server acknowledged it ([`Spool::commit`]). When publishing fails, reading
//! restarts at the last committed message ([`Spool::rewind`]), and re-published messages are
//! dropped by the server's de-duplication. When every message is delivered the file is
//! truncated. The file survives a restart of the agent: a non-empty spool is drained first.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tapio_model::TimeNs;

use crate::wire::Batch;

/// The spool file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the spool file {path}")]
pub struct SpoolError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: io::Error,
}

/// The header that starts a spooled message.
const TIMED_HEADER: &[u8] = b"#timed ";
/// The header that started a spooled message of several observations in earlier versions.
const BATCH_HEADER: &[u8] = b"#batch ";

/// One message read back from the spool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spooled {
    /// A one-observation message of an earlier version: the observation's JSON.
    Single(Vec<u8>),
    /// A message with its subject and id as first spooled.
    Batch {
        /// Subject.
        subject: String,
        /// `Nats-Msg-Id`.
        id: String,
        /// Payload: `count` lines joined by `\n`.
        payload: Vec<u8>,
        /// Observations in it.
        count: u64,
        /// The earliest and latest event time of its observations (`None` in a message of an
        /// earlier version, which did not store them).
        times: Option<(TimeNs, TimeNs)>,
    },
    /// A message cut short (the agent stopped while appending it), or a header that cannot be
    /// read: skipped.
    Torn {
        /// What is wrong.
        problem: String,
    },
}

/// A bounded spool file.
pub(crate) struct Spool {
    path: PathBuf,
    file: File,
    reader: BufReader<File>,
    max_bytes: u64,
    len: u64,
    read: u64,
    committed: u64,
}

impl Spool {
    /// Opens (or creates) the spool at `path`; what it already holds is drained first.
    pub(crate) fn open(path: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let fail = |source| SpoolError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(fail)?;
        let len = file.metadata().map_err(fail)?.len();
        // A handle of its own: a cloned one would share the file offset that appends move.
        let reader = BufReader::new(File::open(path).map_err(fail)?);
        Ok(Spool {
            path: path.to_path_buf(),
            file,
            reader,
            max_bytes,
            len,
            read: 0,
            committed: 0,
        })
    }

    fn fail(&self, source: io::Error) -> SpoolError {
        SpoolError {
            path: self.path.clone(),
            source,
        }
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends one message, in one write. Returns `false` (and writes nothing) when it would
    /// not fit.
    pub(crate) fn append(&mut self, batch: &Batch) -> Result<bool, SpoolError> {
        let mut record = Vec::with_capacity(batch.payload.len() + 128);
        record.extend_from_slice(TIMED_HEADER);
        record.extend_from_slice(
            format!(
                "{} {} {} {} {}\n",
                batch.count, batch.earliest_ns, batch.latest_ns, batch.subject, batch.id
            )
            .as_bytes(),
        );
        record.extend_from_slice(&batch.payload);
        record.push(b'\n');
        let size = record.len() as u64;
        if self.len + size > self.max_bytes {
            return Ok(false);
        }
        self.file.write_all(&record).map_err(|e| self.fail(e))?;
        self.len += size;
        Ok(true)
    }

    /// The next unread message and the offset just after it, or `None` when everything is read.
    pub(crate) fn next(&mut self) -> Result<Option<(Spooled, u64)>, SpoolError> {
        let Some((line, _)) = self.next_line()? else {
            return Ok(None);
        };
        let (header, timed) = if let Some(header) = line.strip_prefix(TIMED_HEADER) {
            (header, true)
        } else if let Some(header) = line.strip_prefix(BATCH_HEADER) {
            (header, false)
        } else {
            return Ok(Some((Spooled::Single(line), self.read)));
        };
        let header = String::from_utf8_lossy(header).into_owned();
        let mut fields = header.splitn(if timed { 5 } else { 3 }, ' ');
        let count = fields.next().and_then(|count| count.parse::<u64>().ok());
        let times = if timed {
            let mut time = || fields.next().and_then(|time| time.parse::<TimeNs>().ok());
            match (time(), time()) {
                (Some(earliest), Some(latest)) => Some(Some((earliest, latest))),
                _ => None,
            }
        } else {
            Some(None)
        };
        let (Some(count), Some(times), Some(subject), Some(id)) =
            (count, times, fields.next(), fields.next())
        else {
            let problem = format!("unreadable message header `{header}`");
            return Ok(Some((Spooled::Torn { problem }, self.read)));
        };
        let mut payload = Vec::new();
        for index in 0..count {
            let Some((line, complete)) = self.next_line()? else {
                break;
            };
            if index > 0 {
                payload.push(b'\n');
            }
            payload.extend_from_slice(&line);
            if !complete || line.starts_with(b"#") {
                let problem = format!("message `{id}` ends after {index} of {count} lines");
                return Ok(Some((Spooled::Torn { problem }, self.read)));
            }
            if index + 1 == count {
                let batch = Spooled::Batch {
                    subject: subject.to_owned(),
                    id: id.to_owned(),
                    payload,
                    count,
                    times,
                };
                return Ok(Some((batch, self.read)));
            }
        }
        let problem = format!("message `{id}` ends early: fewer than {count} lines");
        Ok(Some((Spooled::Torn { problem }, self.read)))
    }

    /// The next unread line without its newline, and whether it had one (was completely
    /// written).
    fn next_line(&mut self) -> Result<Option<(Vec<u8>, bool)>, SpoolError> {
        if self.read >= self.len {
            return Ok(None);
        }
        let mut line = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut line)
            .map_err(|e| self.fail(e))?;
        if read == 0 {
            // The file is shorter than what was appended: someone truncated it.
            return Err(self.fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the spool ends at byte {} but {} were written",
                    self.read, self.len
                ),
            )));
        }
        self.read += read as u64;
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        Ok(Some((line, complete)))
    }

    /// Whether every line has been read.
    pub(crate) fn exhausted(&self) -> bool {
        self.read >= self.len
    }

    /// The lines up to `offset` are delivered.
    pub(crate) fn commit(&mut self, offset: u64) {
        self.committed = self.committed.max(offset);
    }

    /// Reads again from the first line not delivered.
    pub(crate) fn rewind(&mut self) -> Result<(), SpoolError> {
        self.read = self.committed;
        self.reader
            .seek(SeekFrom::Start(self.committed))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Everything is delivered: empties the file.
    pub(crate) fn clear(&mut self) -> Result<(), SpoolError> {
        self.file.set_len(0).map_err(|e| self.fail(e))?;
        self.reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| self.fail(e))?;
        self.len = 0;
        self.read = 0;
        self.committed = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, payload: &'static [u8], count: u64, times: (u64, u64)) -> Batch {
        Batch {
            subject: "p.k.n".into(),
            id: id.into(),
            payload: bytes::Bytes::from_static(payload),
            count,
            earliest_ns: times.0,
            latest_ns: times.1,
        }
    }

    fn batch(spooled: Option<(Spooled, u64)>) -> (String, Vec<u8>, Option<(u64, u64)>) {
        match spooled {
            Some((
                Spooled::Batch {
                    id, payload, times, ..
                },
                _,
            )) => (id, payload, times),
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn appends_reads_rewinds_and_bounds() {
        let path = std::env::temp_dir().join(format!("tapio-spool-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let record = |id: &str, payload: &str| format!("#timed 1 5 5 p.k.n {id}\n{payload}\n");
        let room = (record("a", "abc").len() + record("d", "defg").len()) as u64;
        let mut spool = Spool::open(&path, room).unwrap();
        assert!(spool.append(&message("a", b"abc", 1, (5, 5))).unwrap());
        let (first, end) = spool.next().unwrap().unwrap();
        assert_eq!(
            first,
            Spooled::Batch {
                subject: "p.k.n".into(),
                id: "a".into(),
                payload: b"abc".to_vec(),
                count: 1,
                times: Some((5, 5)),
            }
        );
        assert_eq!(end, record("a", "abc").len() as u64);
        // Appends between reads do not disturb the reader.
        assert!(spool.append(&message("d", b"defg", 1, (5, 5))).unwrap());
        assert!(!spool.append(&message("x", b"x", 1, (5, 5))).unwrap());
        spool.commit(end);
        assert_eq!(batch(spool.next().unwrap()).1, b"defg");
        assert!(spool.exhausted());
        spool.rewind().unwrap();
        assert_eq!(batch(spool.next().unwrap()).1, b"defg");
        drop(spool);
        let mut reopened = Spool::open(&path, room).unwrap();
        assert_eq!(reopened.len(), room);
        assert_eq!(batch(reopened.next().unwrap()).1, b"abc");
        reopened.clear().unwrap();
        assert!(reopened.next().unwrap().is_none());
        assert!(reopened.append(&message("x", b"xyz", 1, (5, 5))).unwrap());
        assert_eq!(batch(reopened.next().unwrap()).1, b"xyz");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn messages_come_back_whole_with_their_id_and_times_and_torn_ones_are_skipped() {
        let path = std::env::temp_dir().join(format!("tapio-spool-batch-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut spool = Spool::open(&path, 1 << 20).unwrap();
        let three = message("k/n/1 with space+3", b"{1}\n{2}\n{3}", 3, (10, 30));
        assert!(spool.append(&three).unwrap());
        assert!(
            spool
                .append(&message("k/n/4", b"{4}", 1, (40, 40)))
                .unwrap()
        );
        let (first, end) = spool.next().unwrap().unwrap();
        assert_eq!(
            first,
            Spooled::Batch {
                subject: "p.k.n".into(),
                id: "k/n/1 with space+3".into(),
                payload: b"{1}\n{2}\n{3}".to_vec(),
                count: 3,
                times: Some((10, 30)),
            }
        );
        assert_eq!(
            end,
            "#timed 3 10 30 p.k.n k/n/1 with space+3\n{1}\n{2}\n{3}\n".len() as u64
        );
        assert_eq!(
            batch(spool.next().unwrap()),
            ("k/n/4".into(), b"{4}".to_vec(), Some((40, 40)))
        );
        drop(spool);
        // A header that cannot be read is skipped (its lines then come as messages of their
        // own, which do not decode), and so is a message torn by an agent stopped in the middle
        // of writing it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"#timed 2 50 x p.k.n k/n/5+2\n{5}\n#timed 2 50 60 p.k.n k/n/5+2\n{5}\n{6")
            .unwrap();
        let mut reopened = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(batch(reopened.next().unwrap()).2, Some((10, 30)));
        assert_eq!(batch(reopened.next().unwrap()).1, b"{4}");
        let torn = |next: Option<(Spooled, u64)>| matches!(next, Some((Spooled::Torn { .. }, _)));
        assert!(torn(reopened.next().unwrap()));
        assert_eq!(
            reopened.next().unwrap().unwrap().0,
            Spooled::Single(b"{5}".to_vec())
        );
        assert!(torn(reopened.next().unwrap()));
        assert!(reopened.exhausted());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn spools_of_earlier_versions_drain_without_time_ranges() {
        let path = std::env::temp_dir().join(format!("tapio-spool-old-{}", std::process::id()));
        std::fs::write(&path, b"#batch 3 p.k.n k/n/1+3\n{1}\n{2}\n{3}\n{4}\n").unwrap();
        let mut spool = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(
            spool.next().unwrap().unwrap().0,
            Spooled::Batch {
                subject: "p.k.n".into(),
                id: "k/n/1+3".into(),
                payload: b"{1}\n{2}\n{3}".to_vec(),
                count: 3,
                times: None,
            }
        );
        assert_eq!(
            spool.next().unwrap().unwrap().0,
            Spooled::Single(b"{4}".to_vec())
        );
        assert!(spool.exhausted());
        std::fs::remove_file(path).unwrap();
    }
}
