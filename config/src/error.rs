//! The single error type of this crate: where in which file, under which key, and what is wrong.

use std::fmt;
use std::sync::Arc;

/// What class of problem a [`ConfigError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The configuration file could not be read (missing, unreadable, not UTF-8).
    Io,
    /// The text is not well-formed YAML, holds more than one document, or its top level is not a
    /// mapping of keys.
    Syntax,
    /// A key that this configuration does not know (often a typo).
    UnknownKey,
    /// The same key appears twice in one mapping.
    DuplicateKey,
    /// A value could not be read as the type its key needs, e.g. `worker_count: many` or a
    /// duration without a unit.
    InvalidType,
    /// A value of the right type is outside what its key allows, e.g. `worker_count: 0`.
    InvalidValue,
}

/// A configuration problem, located as precisely as the input allows.
///
/// Its [`Display`](fmt::Display) form is
/// `ORIGIN:LINE:COLUMN: KEY_PATH: MESSAGE`, for example
/// `tapio.yaml:12:5: correlation.engine.worker_count: must be between 1 and 256, got 0`.
/// Parts that are unknown are left out together with their separator: no column gives
/// `ORIGIN:LINE: ...`, no line gives `ORIGIN: ...`, an empty key path (a whole-document problem)
/// gives `ORIGIN:LINE:COLUMN: MESSAGE`, and an error from [`crate::TapioConfig::validate`] on a
/// value built in code (no origin, no line) is just `KEY_PATH: MESSAGE`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", DisplayParts(self))]
pub struct ConfigError {
    /// Where the configuration came from: the file path for [`crate::TapioConfig::load`], the
    /// `origin` argument for [`crate::TapioConfig::from_yaml_str`], empty for
    /// [`crate::TapioConfig::validate`] on a value built in code.
    pub origin: String,
    /// Dotted path of the offending key, e.g. `correlation.engine.worker_count`; empty when the
    /// problem concerns the whole document (syntax errors, unreadable file).
    pub key_path: String,
    /// 1-based line of the problem in the text, when known. For value errors it is the line of
    /// the key; when that key is absent from the text (its default was used), the line of the
    /// nearest enclosing key that is present.
    pub line: Option<usize>,
    /// 1-based column (in characters) matching [`Self::line`], when known.
    pub column: Option<usize>,
    /// The class of problem.
    pub kind: ConfigErrorKind,
    /// Human-readable description: lowercase, no trailing period, without the location.
    pub message: String,
    /// The underlying I/O error for [`ConfigErrorKind::Io`].
    #[source]
    source: Option<Arc<std::io::Error>>,
}

impl ConfigError {
    /// An error without origin or location; callers add those with the `with_*` methods.
    pub(crate) fn new(
        kind: ConfigErrorKind,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            origin: String::new(),
            key_path: key_path.into(),
            line: None,
            column: None,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error reading the file at `origin`.
    pub(crate) fn io(
        origin: impl Into<String>,
        message: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        let mut error = ConfigError::new(ConfigErrorKind::Io, "", message).with_origin(origin);
        error.source = Some(Arc::new(source));
        error
    }

    /// The same error, naming `origin` as its source.
    pub(crate) fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// The same error, located at a 1-based `(line, column)` when one is given.
    pub(crate) fn with_position(mut self, position: Option<(usize, usize)>) -> Self {
        if let Some((line, column)) = position {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }
}

/// Renders the `ORIGIN:LINE:COLUMN: KEY_PATH: MESSAGE` form, leaving out unknown parts.
struct DisplayParts<'a>(&'a ConfigError);

impl fmt::Display for DisplayParts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = self.0;
        if !error.origin.is_empty() || error.line.is_some() {
            let origin = if error.origin.is_empty() {
                "<config>"
            } else {
                error.origin.as_str()
            };
            f.write_str(origin)?;
            if let Some(line) = error.line {
                write!(f, ":{line}")?;
                if let Some(column) = error.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
        }
        if !error.key_path.is_empty() {
            write!(f, "{}: ", error.key_path)?;
        }
        f.write_str(&error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_leaves_out_unknown_parts() {
        let full = ConfigError::new(
            ConfigErrorKind::InvalidValue,
            "correlation.engine.worker_count",
            "must be between 1 and 256, got 0",
        )
        .with_origin("tapio.yaml")
        .with_position(Some((12, 5)));
        assert_eq!(
            full.to_string(),
            "tapio.yaml:12:5: correlation.engine.worker_count: must be between 1 and 256, got 0"
        );

        let mut no_column = full.clone();
        no_column.column = None;
        assert_eq!(
            no_column.to_string(),
            "tapio.yaml:12: correlation.engine.worker_count: must be between 1 and 256, got 0"
        );

        let mut no_line = no_column.clone();
        no_line.line = None;
        assert_eq!(
            no_line.to_string(),
            "tapio.yaml: correlation.engine.worker_count: must be between 1 and 256, got 0"
        );

        let mut bare = no_line.clone();
        bare.origin.clear();
        assert_eq!(
            bare.to_string(),
            "correlation.engine.worker_count: must be between 1 and 256, got 0"
        );

        let syntax = ConfigError::new(ConfigErrorKind::Syntax, "", "invalid yaml: something")
            .with_origin("a.yaml")
            .with_position(Some((3, 1)));
        assert_eq!(syntax.to_string(), "a.yaml:3:1: invalid yaml: something");
    }

    #[test]
    fn io_error_keeps_its_source_out_of_the_message() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = ConfigError::io("/etc/tapio.yaml", "cannot read file", source);
        assert_eq!(error.to_string(), "/etc/tapio.yaml: cannot read file");
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("no such file"));
    }
}
