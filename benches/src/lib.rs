//! Benchmarks of the Tapio correlation engine (layer L4).
//!
//! [`proc_status`] reads the process's memory counters. The binaries under `src/bin/` and the
//! `correlators` bench target drive the engine with it and with the synthetic cluster stream of
//! `tapio_tests::synthetic`, which the end-to-end tests share.

pub mod proc_status;
