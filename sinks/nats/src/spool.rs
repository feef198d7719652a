//! The agent's spool: a bounded, append-only file of wire-format lines kept while NATS is
//! unreachable, read back in order when it returns.
//!
//! Lines are appended at the end and read from a read offset; a line counts as delivered only
//! when the server acknowledged it ([`Spool::commit`]). When publishing fails, reading restarts
//! at the last committed line ([`Spool::rewind`]), and re-published lines are dropped by the
//! server's de-duplication. When every line is delivered the file is truncated. The file
//! survives a restart of the agent: a non-empty spool is drained first.

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

    /// Appends one line. Returns `false` (and writes nothing) when it would not fit.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<bool, SpoolError> {
        let size = payload.len() as u64 + 1;
        if self.len + size > self.max_bytes {
            return Ok(false);
        }
        let mut line = Vec::with_capacity(payload.len() + 1);
        line.extend_from_slice(payload);
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| self.fail(e))?;
        self.len += size;
        Ok(true)
    }

    /// The next unread line and the offset just after it, or `None` when everything is read.
    pub(crate) fn next(&mut self) -> Result<Option<(Vec<u8>, u64)>, SpoolError> {
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
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(Some((line, self.read)))
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

    #[test]
    fn appends_reads_rewinds_and_bounds() {
        let path = std::env::temp_dir().join(format!("tapio-spool-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut spool = Spool::open(&path, 12).unwrap();
        assert!(spool.append(b"abc").unwrap());
        let (first, end) = spool.next().unwrap().unwrap();
        assert_eq!((first.as_slice(), end), (&b"abc"[..], 4));
        // Appends between reads do not disturb the reader.
        assert!(spool.append(b"defg").unwrap());
        assert!(!spool.append(b"too long").unwrap());
        spool.commit(end);
        assert_eq!(spool.next().unwrap().unwrap().0, b"defg");
        assert!(spool.exhausted());
        spool.rewind().unwrap();
        assert_eq!(spool.next().unwrap().unwrap().0, b"defg");
        drop(spool);
        let mut reopened = Spool::open(&path, 12).unwrap();
        assert_eq!(reopened.len(), 9);
        assert_eq!(reopened.next().unwrap().unwrap().0, b"abc");
        reopened.clear().unwrap();
        assert!(reopened.next().unwrap().is_none());
        assert!(reopened.append(b"xyz").unwrap());
        assert_eq!(reopened.next().unwrap().unwrap().0, b"xyz");
        std::fs::remove_file(path).unwrap();
    }
}
