//! **Pod network.** A pod's network is set up by the container runtime running the CNI
//! plugins (ADD) for the pod's sandbox; when that fails, the sandbox is torn down and the pod
//! never gets an address: it stays `ContainerCreating`, its sandbox never ready, until an ADD
//! succeeds. This rule reads the CNI collector's operations: per pod, the failed ADDs after
//! its last successful ADD explain the pod being left without network. The correlation
//! starts at the sandbox whose ADD failed (the latest such failure, with the plugin and its
//! error) and leads to the pod; it counts the failed ADDs since the last success. A successful
//! ADD of the pod retracts it at once; otherwise it stays current for `keep_for` after the
//! latest failure (ADDs older than that are forgotten).

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, PodNetworkConfig};
use tapio_model::{
    Basis, CniCommand, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact,
    FactPayload, Relation,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::window::retain;

/// The pod network rule, with its configuration.
pub struct PodNetwork {
    /// How long an ADD is remembered, ms.
    keep_for_ms: u64,
}

/// The rule when `correlation.pod_network.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let PodNetworkConfig { enabled, keep_for } = &config.pod_network;
    enabled.then(|| {
        Box::new(PodNetwork {
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        }) as Box<dyn Rule>
    })
}

/// One ADD of a pod, as the rule needs it; ordered by time, then fact id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Attempt {
    evidence: Evidence,
    failed: bool,
    sandbox: Arc<str>,
    plugin: Arc<str>,
    network: Arc<str>,
}

/// The ADD a fact reports, with its pod; `None` for other operations and unnamed pods.
pub(crate) fn attempt_of(fact: &Fact) -> Option<(EntityId, Attempt)> {
    let FactPayload::CniOperation(operation) = &fact.payload else {
        return None;
    };
    if operation.command != CniCommand::Add {
        return None;
    }
    let pod = operation.pod.clone()?;
    Some((
        pod,
        Attempt {
            evidence: Evidence::of(fact),
            failed: operation.error.is_some(),
            sandbox: operation.container_id.clone(),
            plugin: operation
                .error
                .as_ref()
                .map(|error| error.plugin.as_str())
                .unwrap_or_default()
                .into(),
            network: operation.network.as_str().into(),
        },
    ))
}

/// The correlation for `pod` from its ADDs in time order: the failed ones after the last
/// successful one, if any.
pub(crate) fn explain<'a>(
    pod: &EntityId,
    attempts: impl DoubleEndedIterator<Item = &'a Attempt>,
) -> Option<Correlation> {
    let failed: Vec<&Attempt> = attempts
        .rev()
        .take_while(|attempt| attempt.failed)
        .collect();
    let latest = failed.first()?;
    let sandbox = EntityId::Container {
        id: latest.sandbox.clone(),
    };
    Some(Correlation::new(
        CorrelationKind::PodNetworkFailure,
        sandbox.clone(),
        vec![
            latest.evidence.hop(&sandbox, Relation::Start),
            latest.evidence.hop(pod, Relation::Caused),
        ],
        Detail::PodNetwork {
            failed_adds: u32::try_from(failed.len()).unwrap_or(u32::MAX),
            plugin: latest.plugin.clone(),
            network: latest.network.clone(),
        },
        Confidence {
            percent: 90,
            basis: vec![Basis::NetworkSetupFailed],
        },
    ))
}

impl Rule for PodNetwork {
    fn name(&self) -> &'static str {
        "pod network"
    }

    fn section(&self) -> &'static str {
        "correlation.pod_network"
    }

    /// The ADDs of named pods.
    fn reads(&self, fact: &Fact) -> bool {
        matches!(&fact.payload, FactPayload::CniOperation(operation)
            if operation.command == CniCommand::Add && operation.pod.is_some())
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        retain(
            inputs.facts_of("cni_operation"),
            self.keep_for_ms,
            move |fact: &Fact| clock.tick_of(fact.time_ns),
        )
        .flat_map(|fact| attempt_of(&fact))
        .reduce(|pod, attempts, output| {
            let held = attempts
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(attempt, _)| *attempt);
            if let Some(correlation) = explain(pod, held.collect::<Vec<_>>().into_iter()) {
                output.push((correlation, 1isize));
            }
        })
        .map(|(_, correlation)| correlation)
    }
}

#[cfg(test)]
mod tests;
