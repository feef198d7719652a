//! End-to-end tests: the `tapio` binary against recordings, across worker and process counts,
//! with bad input; the layering rule of the workspace.

mod bad_input;
mod cli;
mod determinism;
mod layering;
mod nats;
mod recording;
mod support;
