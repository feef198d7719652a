//! Shared helpers for Tapio's cross-crate tests and benchmarks (layer L4).
//!
//! [`synthetic`] generates seeded synthetic cluster streams for the end-to-end tests and the
//! benchmarks; [`random`] holds the small seeded random generators; [`nats`] and
//! [`control_plane`] run real servers. [`kspan`]
//! builds the shipped recording `tests/recordings/kspan-rollout-oom.jsonl` from the real
//! Kubernetes rollout recorded by the kspan project (`tests/fixtures/k8s/kspan/`), plus the
//! kernel and container-runtime facts of an OOM kill in one of its pods.

pub mod control_plane;
pub mod kspan;
pub mod nats;
pub mod random;
pub mod synthetic;

use std::path::PathBuf;

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The third-party fixtures shipped with the tests (`tests/fixtures`, provenance and licences
/// in its README).
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The recordings shipped with the tests.
pub fn recordings() -> PathBuf {
    repo_root().join("tests/recordings")
}

/// The `tapio` binary built for this test run.
pub fn tapio_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join("tapio")
}
