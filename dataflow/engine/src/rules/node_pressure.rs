//! **Node pressure.** When a node runs low on memory, disk or process ids, its kubelet sets the
//! node's `MemoryPressure`, `DiskPressure` or `PIDPressure` condition to `True` and evicts pods
//! to reclaim it, each with an `Evicted` Event on the pod ("The node was low on resource:
//! memory. …"). This rule finds that cascade: a pressure condition turning `True` on a node,
//! then the evictions of pods scheduled on that node (the pod's `spec.nodeName`, from its
//! workload record) within Δ of it. One correlation per pressure episode, rooted at the node,
//! with a hop per evicted pod (its earliest eviction Event), so it names every pod it ended;
//! it grows as more pods are evicted. An eviction whose message names a resource the condition
//! is not about (memory under `DiskPressure`) is not blamed on it; one that names none is, with
//! less confidence. An eviction on another node is never blamed on this node's pressure. The
//! episode stays current for `keep_for` after the condition turned `True`, whether or not it has
//! cleared since, so the incident outlives the relief the evictions bring. A pod's node is the
//! one its object names in the state: an evicted pod whose object is deleted before the episode
//! expires drops out of it.

use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, NodePressureConfig};
use tapio_model::{
    Basis, ConditionStatus, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact,
    FactPayload, Relation, StateObject, StateRecord,
};
use timely::dataflow::operators::vec::Map;

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::window::retain;

/// The reason the kubelet's eviction manager gives the Event on an evicted pod.
pub const EVICTED: &str = "Evicted";

/// The node pressure rule, with its configuration.
pub struct NodePressure {
    /// Δ: evictions must follow the condition within this, ns.
    within_ns: u64,
    /// How long an episode and its evictions stay current after the condition, ms.
    keep_for_ms: u64,
}

/// The rule when `correlation.node_pressure.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let NodePressureConfig {
        enabled,
        within,
        keep_for,
    } = &config.node_pressure;
    enabled.then(|| {
        Box::new(NodePressure {
            within_ns: u64::try_from(within.as_nanos()).unwrap_or(u64::MAX),
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        }) as Box<dyn Rule>
    })
}

/// The resources the kubelet names in eviction messages under a pressure condition, or `None`
/// for a condition that is not a pressure condition.
pub fn resources_of(condition: &str) -> Option<&'static [&'static str]> {
    match condition {
        "MemoryPressure" => Some(&["memory"]),
        "DiskPressure" => Some(&["ephemeral-storage", "inodes"]),
        "PIDPressure" => Some(&["pids"]),
        _ => None,
    }
}

/// The resource an eviction message says the node was low on: `memory` in "The node was low on
/// resource: memory. Threshold quantity: …".
pub fn resource_named(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("low on resource: ")?;
    let name = rest
        .split(|c: char| c == '.' || c == ',' || c.is_whitespace())
        .next()?;
    (!name.is_empty()).then_some(name)
}

/// An eviction as the rule needs it. Ordered by its evidence first, so the least is the
/// earliest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Eviction {
    evidence: Evidence,
    pod: EntityId,
    /// The resource its message names, if it names one.
    resource: Option<Arc<str>>,
}

/// A pressure condition that turned `True`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Episode {
    evidence: Evidence,
    condition: Arc<str>,
}

impl Episode {
    /// Whether `eviction` may be blamed on this episode: within Δ after it, and about its
    /// resource or about none named.
    fn explains(&self, eviction: &Eviction, within_ns: u64) -> bool {
        let (from, at) = (self.evidence.time, eviction.evidence.time);
        let resources = resources_of(&self.condition).unwrap_or_default();
        at >= from
            && at - from <= within_ns
            && eviction
                .resource
                .as_deref()
                .is_none_or(|named| resources.contains(&named))
    }
}

/// A pressure condition record turning `True`: the node and the episode.
fn episode(record: &StateRecord) -> Option<(EntityId, Episode)> {
    let StateObject::NodeCondition(condition) = &record.object else {
        return None;
    };
    resources_of(&condition.condition)?;
    if condition.status != ConditionStatus::True {
        return None;
    }
    Some((
        condition.node.clone(),
        Episode {
            evidence: Evidence::of_state(record)?,
            condition: condition.condition.as_str().into(),
        },
    ))
}

impl Rule for NodePressure {
    fn name(&self) -> &'static str {
        "node pressure"
    }

    fn section(&self) -> &'static str {
        "correlation.node_pressure"
    }

    /// `Evicted` Events on pods (the conditions and the pods' nodes come from the state).
    fn reads(&self, fact: &Fact) -> bool {
        matches!(&fact.payload, FactPayload::KubeEvent(event)
            if event.reason == EVICTED && matches!(event.involved, EntityId::Pod { .. }))
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within = self.within_ns;
        // Every pressure condition that turned `True`, kept for `keep_for` from then: its
        // insertions only, so that the condition clearing does not retract the episode.
        let turned_true = inputs
            .state()
            .inner
            .flat_map(|(record, time, diff)| (diff > 0).then_some((record, time, diff)))
            .as_collection()
            .flat_map(|record| episode(&record));
        let episodes = retain(
            turned_true,
            self.keep_for_ms,
            move |(_, episode): &(EntityId, Episode)| clock.tick_of(episode.evidence.time),
        )
        .distinct();
        let evicted = inputs
            .facts_of("kube_event")
            .flat_map(|fact| match &fact.payload {
                FactPayload::KubeEvent(event) if event.reason == EVICTED => {
                    let pod = event.involved.clone();
                    matches!(pod, EntityId::Pod { .. }).then(|| {
                        let resource = resource_named(&event.message).map(Arc::from);
                        (
                            pod.clone(),
                            Eviction {
                                evidence: Evidence::of(&fact),
                                pod,
                                resource,
                            },
                        )
                    })
                }
                _ => None,
            });
        // Evictions only, then windowed: other rules' Events never enter the window.
        let evictions = retain(
            evicted,
            self.keep_for_ms,
            move |(_, eviction): &(EntityId, Eviction)| clock.tick_of(eviction.evidence.time),
        );
        // Where each pod is scheduled, as the state says when the eviction is joined: an
        // evicted pod whose object has since been deleted drops out of the episode.
        let placements = inputs.state().flat_map(|record| match record.object {
            StateObject::Workload(workload) => match (workload.entity, workload.node) {
                (pod @ EntityId::Pod { .. }, Some(node)) => Some((pod, node)),
                _ => None,
            },
            _ => None,
        });
        let evictions_by_node = evictions
            .join(placements)
            .map(|(_, (eviction, node))| (node, eviction));

        episodes
            .join(evictions_by_node)
            .filter(move |(_, (episode, eviction))| episode.explains(eviction, within))
            .map(|(node, (episode, eviction))| ((node, episode), eviction))
            .reduce(|_, evictions, output| {
                // Each pod once, by its earliest eviction; in the order they were evicted.
                let mut earliest: Vec<&Eviction> = Vec::new();
                for (eviction, count) in evictions {
                    if *count > 0 && !earliest.iter().any(|kept| kept.pod == eviction.pod) {
                        earliest.push(eviction);
                    }
                }
                let kept: Vec<Eviction> = earliest.into_iter().cloned().collect();
                output.push((kept, 1isize));
            })
            .map(move |((node, episode), evictions)| {
                correlation(&node, &episode, &evictions, within)
            })
    }
}

fn correlation(
    node: &EntityId,
    episode: &Episode,
    evictions: &[Eviction],
    within_ns: u64,
) -> Correlation {
    let mut chain = vec![episode.evidence.hop(node, Relation::Start)];
    chain.extend(
        evictions
            .iter()
            .map(|eviction| eviction.evidence.hop(&eviction.pod, Relation::Caused)),
    );
    let all_named = evictions.iter().all(|eviction| eviction.resource.is_some());
    Correlation::new(
        CorrelationKind::NodePressureEviction,
        node.clone(),
        chain,
        Detail::NodePressure {
            condition: Arc::clone(&episode.condition),
            evicted_pods: u32::try_from(evictions.len()).unwrap_or(u32::MAX),
            within_ns,
        },
        Confidence {
            percent: if all_named { 90 } else { 70 },
            basis: vec![
                Basis::EveryStepObserved,
                if all_named {
                    Basis::EvictionNamesTheResource
                } else {
                    Basis::EvictionNamesNoResource
                },
            ],
        },
    )
}

#[cfg(test)]
mod tests;
