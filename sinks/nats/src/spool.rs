//! The agent's spool: a bounded, append-only file of whole messages kept while NATS is
//! unreachable, read back in order and unchanged when it returns.
//!
//! Format, line oriented:
//!
//! - a message of one observation is its payload as one line, the observation's JSON (which is
//!   also every line of the earlier one-observation-per-message format, so a spool left by an
//!   older agent drains as it is); its subject and id are derived from the observation;
//! - a message of `n > 1` observations is a header line `#batch <n> <subject> <id>` followed by
//!   its `n` payload lines. The id is stored, not recomputed, so a re-publish carries the id of
//!   the first attempt.
//!
//! Messages are appended at the end and read from a read offset; a message counts as delivered
//! only when the server acknowledged it ([`Spool::commit`]). When publishing fails, reading
//! restarts at the last committed message ([`Spool::rewind`]), and re-published messages are
//! dropped by the server's de-duplication. When every message is delivered the file is
//! truncated. The file survives a restart of the agent: a non-empty spool is drained first.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// The header that starts a spooled message of several observations.
const BATCH_HEADER: &[u8] = b"#batch ";

/// One message read back from the spool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spooled {
    /// A one-observation message: the observation's JSON.
    Single(Vec<u8>),
    /// A message of several observations with its subject and id as first spooled.
    Batch {
        /// Subject.
        subject: String,
        /// `Nats-Msg-Id`.
        id: String,
        /// Payload: `count` lines joined by `\n`.
        payload: Vec<u8>,
        /// Observations in it.
        count: u64,
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

    /// Appends one message of `count` observations, in one write. Returns `false` (and writes
    /// nothing) when it would not fit.
    pub(crate) fn append(
        &mut self,
        subject: &str,
        id: &str,
        payload: &[u8],
        count: u64,
    ) -> Result<bool, SpoolError> {
        let mut record = Vec::with_capacity(payload.len() + 64);
        if count > 1 {
            record.extend_from_slice(BATCH_HEADER);
            record.extend_from_slice(format!("{count} {subject} {id}\n").as_bytes());
        }
        record.extend_from_slice(payload);
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
        let Some(header) = line.strip_prefix(BATCH_HEADER) else {
            return Ok(Some((Spooled::Single(line), self.read)));
        };
        let header = String::from_utf8_lossy(header).into_owned();
        let mut fields = header.splitn(3, ' ');
        let (Some(count), Some(subject), Some(id)) = (
            fields.next().and_then(|count| count.parse::<u64>().ok()),
            fields.next(),
            fields.next(),
        ) else {
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
            if !complete || line.starts_with(BATCH_HEADER) {
                let problem = format!("message `{id}` ends after {index} of {count} lines");
                return Ok(Some((Spooled::Torn { problem }, self.read)));
            }
            if index + 1 == count {
                let batch = Spooled::Batch {
                    subject: subject.to_owned(),
                    id: id.to_owned(),
                    payload,
                    count,
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

    fn single(spooled: Option<(Spooled, u64)>) -> Vec<u8> {
        match spooled {
            Some((Spooled::Single(line), _)) => line,
            other => panic!("not a single message: {other:?}"),
        }
    }

    #[test]
    fn appends_reads_rewinds_and_bounds() {
        let path = std::env::temp_dir().join(format!("tapio-spool-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut spool = Spool::open(&path, 12).unwrap();
        assert!(spool.append("s", "i", b"abc", 1).unwrap());
        let (first, end) = spool.next().unwrap().unwrap();
        assert_eq!((first, end), (Spooled::Single(b"abc".to_vec()), 4));
        // Appends between reads do not disturb the reader.
        assert!(spool.append("s", "i", b"defg", 1).unwrap());
        assert!(!spool.append("s", "i", b"too long", 1).unwrap());
        spool.commit(end);
        assert_eq!(single(spool.next().unwrap()), b"defg");
        assert!(spool.exhausted());
        spool.rewind().unwrap();
        assert_eq!(single(spool.next().unwrap()), b"defg");
        drop(spool);
        let mut reopened = Spool::open(&path, 12).unwrap();
        assert_eq!(reopened.len(), 9);
        assert_eq!(single(reopened.next().unwrap()), b"abc");
        reopened.clear().unwrap();
        assert!(reopened.next().unwrap().is_none());
        assert!(reopened.append("s", "i", b"xyz", 1).unwrap());
        assert_eq!(single(reopened.next().unwrap()), b"xyz");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn batches_come_back_whole_with_their_id_and_torn_ones_are_skipped() {
        let path = std::env::temp_dir().join(format!("tapio-spool-batch-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut spool = Spool::open(&path, 1 << 20).unwrap();
        assert!(
            spool
                .append("p.k.n", "k/n/1+3", b"{1}\n{2}\n{3}", 3)
                .unwrap()
        );
        assert!(spool.append("p.k.n", "k/n/4", b"{4}", 1).unwrap());
        let (batch, end) = spool.next().unwrap().unwrap();
        assert_eq!(
            batch,
            Spooled::Batch {
                subject: "p.k.n".into(),
                id: "k/n/1+3".into(),
                payload: b"{1}\n{2}\n{3}".to_vec(),
                count: 3,
            }
        );
        assert_eq!(end, "#batch 3 p.k.n k/n/1+3\n{1}\n{2}\n{3}\n".len() as u64);
        assert_eq!(single(spool.next().unwrap()), b"{4}");
        drop(spool);
        // An agent stopped in the middle of a write: the torn message is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"#batch 2 p.k.n k/n/5+2\n{5}\n{6")
            .unwrap();
        let mut reopened = Spool::open(&path, 1 << 20).unwrap();
        assert!(matches!(
            reopened.next().unwrap(),
            Some((Spooled::Batch { .. }, _))
        ));
        assert_eq!(single(reopened.next().unwrap()), b"{4}");
        assert!(matches!(
            reopened.next().unwrap(),
            Some((Spooled::Torn { .. }, _))
        ));
        assert!(reopened.exhausted());
        std::fs::remove_file(path).unwrap();
    }
}
