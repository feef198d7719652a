//! Shared helpers for Tapio's cross-crate tests and benchmarks (layer L4).
//!
//! [`synthetic`] generates seeded synthetic cluster streams for the end-to-end tests and the
//! benchmarks; [`random`] holds the small seeded random generators; [`nats`] and
//! [`control_plane`] run real servers, and [`deploy`] installs the
//! Helm chart on that control plane; [`free_port`] picks loopback ports for them. [`kspan`]
//! builds the shipped recording `tests/recordings/kspan-rollout-oom.jsonl` from the real
//! Kubernetes rollout recorded by the kspan project (`tests/fixtures/k8s/kspan/`), plus the
//! kernel and container-runtime facts of an OOM kill in one of its pods. [`dns_incident`] records
//! the DNS failures incident from a real DNS server, client and capture
//! (`tests/recordings/dns-failures.jsonl`).

pub mod control_plane;
pub mod deploy;
pub mod dns_incident;
pub mod kspan;
pub mod nats;
pub mod random;
pub mod synthetic;

use std::net::TcpListener;
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

/// A loopback port nothing listens on right now (not reserved: another process may take it
/// before the caller binds it).
///
/// # Errors
/// When no port can be bound on 127.0.0.1.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// [`try_free_port`], panicking when no port can be bound.
pub fn free_port() -> u16 {
    try_free_port().expect("bind a free loopback port")
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
