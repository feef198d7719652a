//! End-to-end tests: the `tapio` binary against recordings, across worker and process counts,
//! with bad input; with a real Neo4j; the layering rule of the workspace.

mod api;
mod backtest;
mod bad_input;
mod cli;
mod cri;
mod deploy;
mod determinism;
mod dns;
mod etcd;
mod incidents;
mod kernel;
mod kspan_tree;
mod kubelet;
mod kubernetes;
mod layering;
mod nats;
mod neo4j;
mod recording;
mod secrets;
mod sources;
mod support;
mod web;
