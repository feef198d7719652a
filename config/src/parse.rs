//! From YAML text to a [`TapioConfig`], with every error pointing at a key path and a line.
//!
//! Two passes over the text:
//! 1. a scan of the parser's events that reports syntax errors, checks the document's shape and
//!    records where each key path (`correlation.engine.tick`) is written, so that errors found
//!    later, by validation, can name a line;
//! 2. serde deserialization through `serde_path_to_error`, which names the key path of a type
//!    error or an unknown key, while serde-saphyr gives its position.

use std::collections::HashMap;

use serde::Deserialize;
use serde_path_to_error::{Path, Segment, Track};
use serde_saphyr::Error as YamlError;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

use crate::error::{ConfigError, ConfigErrorKind};
use crate::model::TapioConfig;

/// A 1-based (line, column) position in the text.
pub(crate) type Position = (usize, usize);

/// Where each key path is written in the text.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    positions: HashMap<String, Position>,
}

impl KeyIndex {
    /// Position of the key `key_path`; if it is not in the text, that of its nearest enclosing
    /// key that is; `None` when no part of the path is written.
    pub(crate) fn position(&self, key_path: &str) -> Option<Position> {
        let mut path = key_path;
        loop {
            if path.is_empty() {
                return None;
            }
            if let Some(position) = self.positions.get(path) {
                return Some(*position);
            }
            path = parent_path(path);
        }
    }
}

/// `a.b[3].c` -> `a.b[3]` -> `a.b` -> `a` -> ``.
fn parent_path(path: &str) -> &str {
    let cut = match (path.rfind('.'), path.rfind('[')) {
        (Some(dot), Some(bracket)) => dot.max(bracket),
        (Some(dot), None) => dot,
        (None, Some(bracket)) => bracket,
        (None, None) => 0,
    };
    &path[..cut]
}

/// What the scan learned about the document.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// Where each key is written.
    pub(crate) keys: KeyIndex,
    /// Whether the document has content: `false` for empty text, only comments, or a bare null.
    pub(crate) has_content: bool,
}

/// One open collection during the scan.
enum Frame {
    Mapping {
        /// Key path of this mapping; `None` inside a non-scalar key, where paths mean nothing.
        path: Option<String>,
        /// `true` when the next node is a key, `false` when it is that key's value.
        expecting_key: bool,
        /// The key whose value comes next, when it was a plain string.
        key: Option<String>,
    },
    Sequence {
        path: Option<String>,
        index: usize,
    },
}

/// Pass 1: syntax, document shape, and positions of keys.
pub(crate) fn scan(text: &str) -> Result<Scanned, ConfigError> {
    let mut keys = KeyIndex::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents = 0usize;
    let mut has_content = false;
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|error| {
            let marker = error.marker();
            ConfigError::new(
                ConfigErrorKind::Syntax,
                "",
                format!("invalid yaml: {}", error.kind()),
            )
            .with_position(Some((marker.line().max(1), marker.col() + 1)))
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(syntax(
                        "expected a single yaml document, found a second one",
                        &span,
                    ));
                }
            }
            Event::Scalar(value, style, _anchor, tag) => {
                if stack.is_empty() {
                    // The whole document is one scalar: only a null is acceptable (= defaults).
                    let is_null = style == ScalarStyle::Plain
                        && tag.is_none()
                        && matches!(value.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                    if !is_null {
                        return Err(not_a_mapping("a single value", &span));
                    }
                } else {
                    on_scalar(&mut stack, &mut keys, value.as_ref(), &span);
                }
            }
            Event::Alias(_) => {
                if stack.is_empty() {
                    return Err(not_a_mapping("an alias", &span));
                }
                node_done(&mut stack);
            }
            Event::MappingStart(..) => {
                has_content = true;
                let path = child_path(&stack);
                stack.push(Frame::Mapping {
                    path,
                    expecting_key: true,
                    key: None,
                });
            }
            Event::SequenceStart(..) => {
                if stack.is_empty() {
                    return Err(not_a_mapping("a sequence", &span));
                }
                let path = child_path(&stack);
                stack.push(Frame::Sequence { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                node_done(&mut stack);
            }
            _ => {}
        }
    }
    Ok(Scanned { keys, has_content })
}

fn syntax(message: &str, span: &Span) -> ConfigError {
    ConfigError::new(ConfigErrorKind::Syntax, "", message).with_position(Some(span_start(span)))
}

fn not_a_mapping(found: &str, span: &Span) -> ConfigError {
    syntax(
        &format!("the top level must be a mapping of keys, found {found}"),
        span,
    )
}

fn span_start(span: &Span) -> Position {
    (span.start.line().max(1), span.start.col() + 1)
}

/// Path of the node that starts now, from the innermost open collection.
fn child_path(stack: &[Frame]) -> Option<String> {
    match stack.last() {
        None => Some(String::new()),
        Some(Frame::Mapping {
            path,
            expecting_key,
            key,
        }) => {
            if *expecting_key {
                None
            } else {
                match (path, key) {
                    (Some(path), Some(key)) => Some(join(path, key)),
                    _ => None,
                }
            }
        }
        Some(Frame::Sequence { path, index }) => {
            path.as_ref().map(|path| format!("{path}[{index}]"))
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn on_scalar(stack: &mut [Frame], keys: &mut KeyIndex, value: &str, span: &Span) {
    if let Some(Frame::Mapping {
        path,
        expecting_key,
        key,
    }) = stack.last_mut()
        && *expecting_key
    {
        if let Some(path) = path {
            // The first occurrence wins; a duplicate is reported by deserialization.
            keys.positions
                .entry(join(path, value))
                .or_insert_with(|| span_start(span));
        }
        *key = Some(value.to_owned());
        *expecting_key = false;
        return;
    }
    node_done(stack);
}

/// A complete node was read inside the innermost open collection.
fn node_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Mapping {
            expecting_key, key, ..
        }) => {
            if *expecting_key {
                // A non-scalar key (`? [a, b]: value`): its value follows, under no usable path.
                *key = None;
                *expecting_key = false;
            } else {
                *key = None;
                *expecting_key = true;
            }
        }
        Some(Frame::Sequence { index, .. }) => *index += 1,
        None => {}
    }
}

/// Pass 2: serde deserialization, errors mapped to key paths and positions.
pub(crate) fn deserialize(text: &str, keys: &KeyIndex) -> Result<TapioConfig, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    // YAML 1.2 booleans only: `enabled: yes` or `enabled: maybe` is a mistake worth reporting.
    options.strict_booleans = true;
    // Messages carry their own position; no rendered source snippet is needed.
    options.with_snippet = false;
    let mut track = Track::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |yaml| {
        TapioConfig::deserialize(serde_path_to_error::Deserializer::new(yaml, &mut track))
    });
    result.map_err(|error| from_yaml_error(&error, &track.path(), text, keys))
}

/// Turns a serde-saphyr error into a [`ConfigError`] naming the key path.
fn from_yaml_error(error: &YamlError, path: &Path, text: &str, keys: &KeyIndex) -> ConfigError {
    let mut error = error.without_snippet();
    let mut location = error.location();
    if let YamlError::AliasError {
        error: inner,
        locations,
        ..
    } = error
    {
        // Reported where the alias is used, described by what went wrong at the anchor.
        location = locations.primary_location().or(location);
        error = inner.without_snippet();
    }
    let offending = location.and_then(|location| {
        let span = location.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let found = text.get(start..start.checked_add(len)?)?;
        Some(shorten(found))
    });
    let got = |expected: &str| match &offending {
        Some(found) if !found.is_empty() => format!("expected {expected}, got `{found}`"),
        _ => format!("expected {expected}"),
    };

    let mut key_path = dotted(path);
    let (kind, message) = match error {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            if !(key_path == *field || key_path.ends_with(&format!(".{field}"))) {
                key_path = join(&key_path, field);
            }
            let message = if expected.is_empty() {
                "unknown key; this section has no keys".to_owned()
            } else {
                format!("unknown key; valid keys here: {}", expected.join(", "))
            };
            (ConfigErrorKind::UnknownKey, message)
        }
        YamlError::DuplicateMappingKey { key, .. } => {
            if let Some(key) = key {
                key_path = join(&key_path, key);
            }
            (ConfigErrorKind::DuplicateKey, "duplicate key".to_owned())
        }
        YamlError::InvalidScalar { ty, .. } => {
            (ConfigErrorKind::InvalidType, got(describe_type(ty)))
        }
        YamlError::InvalidBooleanStrict { .. } => {
            (ConfigErrorKind::InvalidType, got("true or false"))
        }
        YamlError::NullIntoString { .. } => (
            ConfigErrorKind::InvalidType,
            "expected a value, found none; remove the key to use its default".to_owned(),
        ),
        YamlError::Unexpected { expected, .. } => {
            let expected = match *expected {
                "mapping start" => "a mapping of keys",
                "string scalar" => "a single value",
                other => other,
            };
            let message = match offending.as_deref().and_then(|found| found.chars().next()) {
                Some('[' | '-') => format!("expected {expected}, got a list"),
                Some('{') => format!("expected {expected}, got a mapping"),
                _ => got(expected),
            };
            (ConfigErrorKind::InvalidType, message)
        }
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | YamlError::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            ConfigErrorKind::InvalidType,
            format!("expected {expected}, got {unexpected}"),
        ),
        YamlError::Message { msg, .. } => (ConfigErrorKind::InvalidType, msg.clone()),
        YamlError::MultipleDocuments { .. } => (
            ConfigErrorKind::Syntax,
            "expected a single yaml document, found a second one".to_owned(),
        ),
        other => {
            let kind = if key_path.is_empty() {
                ConfigErrorKind::Syntax
            } else {
                ConfigErrorKind::InvalidType
            };
            (kind, plain_message(other))
        }
    };
    let position = location
        .filter(|location| location.line() > 0)
        .map(|location| {
            (
                to_usize(location.line()),
                to_usize(location.column()).max(1),
            )
        })
        .or_else(|| keys.position(&key_path));
    ConfigError::new(kind, key_path, message).with_position(position)
}

/// `correlation.engine.tick` from serde_path_to_error's segments (its own Display shows `.` for
/// the root and `?` for keys it could not see).
fn dotted(path: &Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    out
}

fn describe_type(ty: &str) -> &str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number >= 0",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" | "floating point" => "a number",
        "bool" | "boolean" => "true or false",
        other => other,
    }
}

/// The error's own text without the ` at line L, column C` that serde-saphyr appends.
fn plain_message(error: &YamlError) -> String {
    let text = error.to_string();
    let text = match text.rfind(" at line ") {
        Some(cut) if text[cut..].contains(", column ") => text[..cut].to_owned(),
        _ => text,
    };
    let mut text = text.trim_end_matches('.').to_owned();
    if let Some(first) = text.get(..1)
        && first.chars().all(|c| c.is_ascii_uppercase())
    {
        text.replace_range(..1, &first.to_ascii_lowercase());
    }
    text
}

/// At most 40 characters of an offending value, on one line.
fn shorten(found: &str) -> String {
    let line = found.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(40).collect();
    if out.len() < found.len() {
        out.push_str("...");
    }
    out
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(text: &str) -> KeyIndex {
        match scan(text) {
            Ok(scanned) => scanned.keys,
            Err(error) => panic!("scan failed: {error}"),
        }
    }

    #[test]
    fn index_records_nested_keys_with_the_same_name_apart() {
        let text = "a:\n  enabled: true\n  b:\n    enabled: false\nc:\n  - enabled: 1\n    x: 2\n";
        let keys = positions(text);
        assert_eq!(keys.position("a"), Some((1, 1)));
        assert_eq!(keys.position("a.enabled"), Some((2, 3)));
        assert_eq!(keys.position("a.b.enabled"), Some((4, 5)));
        assert_eq!(keys.position("c[0].enabled"), Some((6, 5)));
        assert_eq!(keys.position("c[0].x"), Some((7, 5)));
        // Absent keys fall back to their nearest written ancestor.
        assert_eq!(keys.position("a.b.missing"), Some((3, 3)));
        assert_eq!(keys.position("zzz.y"), None);
    }

    #[test]
    fn index_handles_flow_style_and_complex_keys() {
        let keys = positions("a: {b: 1, c: {d: 2}}\n? [x, y]\n: {e: 3}\nf: 4\n");
        assert_eq!(keys.position("a.b"), Some((1, 5)));
        assert_eq!(keys.position("a.c.d"), Some((1, 15)));
        assert_eq!(keys.position("f"), Some((4, 1)));
        assert_eq!(keys.positions.get("e"), None);
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[3].c"), "a.b[3]");
        assert_eq!(parent_path("a.b[3]"), "a.b");
        assert_eq!(parent_path("a"), "");
    }

    #[test]
    fn offending_values_are_shortened() {
        assert_eq!(shorten("abc"), "abc");
        assert_eq!(shorten("abc\ndef"), "abc...");
        assert_eq!(shorten(&"x".repeat(50)), format!("{}...", "x".repeat(40)));
    }
}
