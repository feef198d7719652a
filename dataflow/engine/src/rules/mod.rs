//! The correlation rules: one module each, each opening with the rule in plain words, and one
//! table ([`TABLE`]) that says which exist.
//!
//! A rule is a [`Rule`]: its name, its configuration section, which facts it reads, and how it
//! builds its correlations from the shared [`RuleInputs`]. Adding a rule is its module, its
//! configuration struct, one line in [`TABLE`], one [`tapio_model::CorrelationKind`], and an
//! oracle test that runs it through [`crate::harness::RuleHarness`] and compares its output at
//! every tick with a recomputation from scratch (as `ownership/tests.rs` and
//! `oom_sequence/tests.rs` do).

pub mod bad_rollout;
pub mod blast_radius;
pub mod burst;
pub mod co_occurrence;
pub mod config_change;
pub mod declared_sequence;
pub mod dns_failure;
pub mod etcd_slowdown;
pub mod inputs;
pub mod memory_exhaustion;
pub mod node_pressure;
pub mod oom_sequence;
pub mod ownership;
pub mod pod_network;
pub mod restart_loop;
pub mod service_graph;

use differential_dataflow::VecCollection;
use tapio_config::CorrelationConfig;
use tapio_model::{Correlation, Fact};

use crate::clock::Tick;
pub use inputs::{Evidence, RuleInputs};

/// A correlation rule.
pub trait Rule: Send + Sync + 'static {
    /// The rule's name, as logs and documents call it.
    fn name(&self) -> &'static str;

    /// Its configuration section, e.g. `correlation.oom_sequence`.
    fn section(&self) -> &'static str;

    /// Whether the rule reads `fact`. Facts no enabled rule reads are counted and kept out of
    /// the dataflow.
    fn reads(&self, fact: &Fact) -> bool;

    /// Builds the rule's correlations from the shared inputs.
    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize>;
}

/// Makes a rule from the configuration, or `None` when it is disabled.
pub type MakeRule = fn(&CorrelationConfig) -> Option<Box<dyn Rule>>;

/// Every rule Tapio has, in the order their output is built.
pub const TABLE: &[MakeRule] = &[
    ownership::from_config,
    oom_sequence::from_config,
    restart_loop::from_config,
    burst::from_config,
    co_occurrence::from_config,
    declared_sequence::from_config,
    config_change::from_config,
    bad_rollout::from_config,
    memory_exhaustion::from_config,
    node_pressure::from_config,
    service_graph::from_config,
    blast_radius::from_config,
    dns_failure::from_config,
    etcd_slowdown::from_config,
    pod_network::from_config,
];

/// The rules `config` enables.
pub fn enabled(config: &CorrelationConfig) -> Vec<Box<dyn Rule>> {
    TABLE.iter().filter_map(|make| make(config)).collect()
}
