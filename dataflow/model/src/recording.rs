//! The recording file format: what `tapio record` writes and `tapio replay` reads.
//!
//! A recording is UTF-8 text, one JSON object per line:
//!
//! 1. a header, `{"tapio_recording":1}` (the format version);
//! 2. then one [`Observation`] per line, in the order the sources produced them:
//!    `{"kind":"fact",...}`, `{"kind":"state",...}` or `{"kind":"heartbeat",...}`.
//!
//! Blank lines and lines starting with `#` are ignored, so a recording can carry comments.
//! Reading never stops at a bad line: [`RecordingReader`] yields an error that names the line
//! and byte offset, and goes on with the next line.
//!
//! ```
//! use tapio_model::recording::{RecordingReader, RecordingWriter};
//! use tapio_model::{Heartbeat, Observation};
//!
//! let mut bytes = Vec::new();
//! let mut writer = RecordingWriter::new(&mut bytes).unwrap();
//! let beat = Observation::Heartbeat(Heartbeat {
//!     source: "kernel".into(),
//!     node: "node-1".into(),
//!     upto_ns: 1_700_000_000_000_000_000,
//! });
//! writer.write(&beat).unwrap();
//! drop(writer);
//! let read: Vec<_> = RecordingReader::new(bytes.as_slice()).collect();
//! assert_eq!(read.len(), 1);
//! assert_eq!(read[0].as_ref().unwrap().1, beat);
//! ```

use std::io::{self, BufRead, Write};

use crate::observation::Observation;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Where in a recording a line starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line's first byte.
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} (byte {})", self.line, self.offset)
    }
}

/// A line of a recording that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file could not be read.
    #[error("cannot read the recording at {position}")]
    Io {
        /// Where reading failed.
        position: Position,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The first line is not a Tapio recording header.
    #[error("{position}: not a Tapio recording (expected the header `{{\"tapio_recording\":1}}`)")]
    MissingHeader {
        /// The first non-blank line.
        position: Position,
    },
    /// A header with a version this build does not understand.
    #[error(
        "{position}: recording format version {version} is not supported (this build reads version 1)"
    )]
    UnsupportedVersion {
        /// The header line.
        position: Position,
        /// The version found.
        version: u64,
    },
    /// The line is not valid UTF-8.
    #[error("{position}: the line is not valid UTF-8")]
    NotUtf8 {
        /// The bad line.
        position: Position,
    },
    /// The line is not an observation (bad JSON, truncated line, unknown kind or field).
    #[error("{position}: {message}")]
    Malformed {
        /// The bad line.
        position: Position,
        /// What the JSON decoder said.
        message: String,
    },
    /// The line is an observation that cannot be true.
    #[error("{position}: {source}")]
    Invalid {
        /// The bad line.
        position: Position,
        /// Why.
        #[source]
        source: crate::observation::InvalidObservation,
    },
}

impl RecordingError {
    /// Whether reading can go on after this error (everything but an unreadable file or a
    /// missing or unsupported header).
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            RecordingError::NotUtf8 { .. }
                | RecordingError::Malformed { .. }
                | RecordingError::Invalid { .. }
        )
    }
}

/// Writes a recording: the header, then one observation per line.
pub struct RecordingWriter<W: Write> {
    out: W,
    line: Vec<u8>,
}

impl<W: Write> RecordingWriter<W> {
    /// Starts a recording by writing its header.
    ///
    /// # Errors
    /// When the header cannot be written.
    pub fn new(mut out: W) -> io::Result<Self> {
        writeln!(out, "{{\"tapio_recording\":{FORMAT_VERSION}}}")?;
        Ok(RecordingWriter {
            out,
            line: Vec::with_capacity(512),
        })
    }

    /// Appends one observation.
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn write(&mut self, observation: &Observation) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, observation).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    /// Flushes the underlying writer.
    ///
    /// # Errors
    /// When flushing fails.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads a recording line by line, yielding each observation with its position, or an error
/// naming the bad line. After a recoverable error it continues with the next line; after an
/// unrecoverable one (see [`RecordingError::is_recoverable`]) it stops.
pub struct RecordingReader<R: BufRead> {
    input: R,
    buffer: Vec<u8>,
    line: u64,
    offset: u64,
    header_seen: bool,
    finished: bool,
}

impl<R: BufRead> RecordingReader<R> {
    /// Reads from `input`, which starts with the header.
    pub fn new(input: R) -> Self {
        RecordingReader {
            input,
            buffer: Vec::with_capacity(1024),
            line: 0,
            offset: 0,
            header_seen: false,
            finished: false,
        }
    }

    fn next_line(&mut self) -> Option<Result<Position, RecordingError>> {
        loop {
            self.buffer.clear();
            let position = Position {
                line: self.line + 1,
                offset: self.offset,
            };
            match self.input.read_until(b'\n', &mut self.buffer) {
                Ok(0) => return None,
                Ok(n) => {
                    self.line += 1;
                    self.offset += n as u64;
                }
                Err(source) => return Some(Err(RecordingError::Io { position, source })),
            }
            let text = self.buffer.trim_ascii();
            if text.is_empty() || text.starts_with(b"#") {
                continue;
            }
            return Some(Ok(position));
        }
    }

    fn check_header(&self, position: Position) -> Result<(), RecordingError> {
        #[derive(serde::Deserialize)]
        struct Header {
            tapio_recording: u64,
        }
        let header: Header = serde_json::from_slice(self.buffer.trim_ascii())
            .map_err(|_| RecordingError::MissingHeader { position })?;
        if header.tapio_recording != FORMAT_VERSION {
            return Err(RecordingError::UnsupportedVersion {
                position,
                version: header.tapio_recording,
            });
        }
        Ok(())
    }
}

impl<R: BufRead> Iterator for RecordingReader<R> {
    type Item = Result<(Position, Observation), RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let position = match self.next_line()? {
            Ok(position) => position,
            Err(error) => {
                self.finished = true;
                return Some(Err(error));
            }
        };
        if !self.header_seen {
            if let Err(error) = self.check_header(position) {
                self.finished = true;
                return Some(Err(error));
            }
            self.header_seen = true;
            return self.next();
        }
        let text = self.buffer.trim_ascii();
        if std::str::from_utf8(text).is_err() {
            return Some(Err(RecordingError::NotUtf8 { position }));
        }
        let observation: Observation = match serde_json::from_slice(text) {
            Ok(observation) => observation,
            Err(error) => {
                return Some(Err(RecordingError::Malformed {
                    position,
                    message: error.to_string(),
                }));
            }
        };
        if let Err(source) = observation.validate() {
            return Some(Err(RecordingError::Invalid { position, source }));
        }
        Some(Ok((position, observation)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: &str =
        r#"{"kind":"heartbeat","source":"kernel","node":"n1","upto_ns":1700000000000000000}"#;

    fn read(text: &[u8]) -> Vec<Result<(Position, Observation), RecordingError>> {
        RecordingReader::new(text).collect()
    }

    #[test]
    fn bad_lines_are_reported_with_their_position_and_skipped() {
        let mut text = format!(
            "{{\"tapio_recording\":1}}\n{BEAT}\n{{\"kind\":\"teleport\"}}\n\n# note\n{{\"kind\":\"heartbeat\",\"sou\n"
        )
        .into_bytes();
        text.extend_from_slice(b"\xff\xfe\n");
        text.extend_from_slice(
            format!("{}\n{BEAT}\n", BEAT.replace("1700000000000000000", "5")).as_bytes(),
        );
        let items = read(&text);
        assert_eq!(items.len(), 6);
        assert!(items[0].is_ok());
        let line_of = |item: &Result<(Position, Observation), RecordingError>| match item {
            Err(RecordingError::Malformed { position, .. })
            | Err(RecordingError::NotUtf8 { position })
            | Err(RecordingError::Invalid { position, .. }) => position.line,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(line_of(&items[1]), 3);
        assert!(
            items[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("teleport")
        );
        assert_eq!(line_of(&items[2]), 6);
        assert_eq!(line_of(&items[3]), 7);
        assert_eq!(line_of(&items[4]), 8);
        assert!(matches!(&items[4], Err(RecordingError::Invalid { .. })));
        let (position, _) = items[5].as_ref().unwrap();
        assert_eq!(position.line, 9);
    }

    #[test]
    fn header_is_required_and_versioned() {
        let items = read(format!("{BEAT}\n").as_bytes());
        assert!(matches!(
            items.as_slice(),
            [Err(RecordingError::MissingHeader { .. })]
        ));
        let items = read(b"{\"tapio_recording\":2}\n");
        assert!(matches!(
            items.as_slice(),
            [Err(RecordingError::UnsupportedVersion { version: 2, .. })]
        ));
        assert!(read(b"").is_empty());
    }

    #[test]
    fn truncated_last_line_is_an_error_not_a_panic() {
        let text = format!("{{\"tapio_recording\":1}}\n{BEAT}\n{}", &BEAT[..30]);
        let items = read(text.as_bytes());
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Err(RecordingError::Malformed { .. })));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut text = b"{\"tapio_recording\":1}\n".to_vec();
            for _ in 0..(seed % 200) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"{}\":,kindfactstate0123456789\n\xff";
                text.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = read(&text);
        }
    }
}
