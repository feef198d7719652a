//! Shared helpers for Tapio's cross-crate tests.
