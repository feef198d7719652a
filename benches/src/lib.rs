//! Benchmarks of the Tapio correlation engine (layer L4).
//!
//! [`cluster`] generates a seeded synthetic Kubernetes cluster stream; [`proc_status`] reads the
//! process's memory counters. The binaries under `src/bin/` drive the engine with them.

pub mod cluster;
pub mod proc_status;
