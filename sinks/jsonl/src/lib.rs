//! Writes correlation changes as JSON lines or human-readable lines
