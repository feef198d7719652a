//! **Ownership closure.** Every process belongs to a container, every container to a pod, every
//! pod to the controller that created it (a ReplicaSet, a StatefulSet, a Job, ...), and that
//! controller may itself be owned (a ReplicaSet by its Deployment). This rule follows those
//! links transitively, so that for any Kubernetes object or container Tapio knows the whole
//! chain up to the top-most owner, with the observation behind every link: the Kubernetes
//! object that named its controlling owner, the pod status that listed the container. Objects
//! and containers form a small graph that is closed transitively. Processes, many and
//! short-lived and never owners, get no ownership correlation of their own: their link to
//! their container is shared with every other rule, which puts a process into the output only
//! inside a chain that names it. A link holds while the state behind it holds; when a process
//! exits, its link is kept for a grace period so that late events about it still find their
//! owners, and when a pod stops listing a container (it restarted), the container's link is
//! kept for a grace period too, so the evidence of its last run keeps naming its pod. When a
//! link goes away, every chain through it is retracted. Chains are cut at a maximum depth, so
//! an ownership cycle in bad data cannot run away.

use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, Hop, Observed,
    Relation, StateObject, StateRecord,
};
use timely::dataflow::operators::vec::{Map, Partition};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::closure;

/// "`child` is owned by `parent`", with the evidence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The owner.
    pub parent: EntityId,
    /// Why we believe it.
    pub evidence: Evidence,
}

/// Chains keyed by the entity they start at: `(entity, [hop(entity), hop(owner), ...])`. The
/// first hop carries the evidence of the entity's own link; every later hop is `owned_by`,
/// with the evidence that the hop before is owned by it.
pub type Chains<'scope> = VecCollection<'scope, Tick, (EntityId, Vec<Hop>), isize>;

/// Direct ownership links, split by what the closure needs to follow.
#[derive(Clone)]
pub struct Links<'scope> {
    /// Kubernetes objects to their owners, containers to their pods: a small graph that
    /// changes slowly, closed transitively.
    pub objects: VecCollection<'scope, Tick, (EntityId, Link), isize>,
    /// Processes to their containers: many and short-lived, and never owners themselves, so
    /// they stay out of the closure.
    pub processes: VecCollection<'scope, Tick, (EntityId, Link), isize>,
}

/// The ownership rule, with its configuration.
pub struct Ownership;

/// The rule when `correlation.ownership.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    config
        .ownership
        .enabled
        .then(|| Box::new(Ownership) as Box<dyn Rule>)
}

impl Rule for Ownership {
    fn name(&self) -> &'static str {
        "ownership closure"
    }

    fn section(&self) -> &'static str {
        "correlation.ownership"
    }

    fn reads(&self, _fact: &Fact) -> bool {
        false
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        correlations(inputs.ownership_chains())
    }
}

/// Direct ownership links from state. A process link's retraction (its exit) takes effect
/// `process_exit_grace` later, a container link's (the pod no longer lists it)
/// `container_exit_grace` later.
///
/// One pass over the state splits it in two without copying a record: most state updates are
/// processes, and a second reader of the whole state would get a copy of every one.
pub fn links<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    process_exit_grace: Duration,
    container_exit_grace: Duration,
) -> Links<'scope> {
    const OBJECT: u64 = 0;
    const PROCESS: u64 = 1;
    let grace = u64::try_from(process_exit_grace.as_millis()).unwrap_or(u64::MAX);
    let container_grace = u64::try_from(container_exit_grace.as_millis()).unwrap_or(u64::MAX);
    let mut parts = state
        .inner
        .flat_map(move |(record, tick, diff)| {
            let StateRecord {
                evidence,
                since_ns,
                object,
            } = record;
            let link = |parent, observed| Link {
                parent,
                evidence: Evidence {
                    time: since_ns,
                    fact_id: evidence,
                    observed,
                },
            };
            match object {
                StateObject::Workload(object) => {
                    let owner = object.owner?;
                    let linked = (object.entity, link(owner.entity, Observed::OwnerReference));
                    Some((OBJECT, (linked, tick, diff)))
                }
                StateObject::PodContainer(container) => {
                    let observed = Observed::PodContainer {
                        container_name: container.container_name.into(),
                    };
                    let child = EntityId::Container {
                        id: container.container_id,
                    };
                    let delay = if diff < 0 { container_grace } else { 0 };
                    let linked = (child, link(container.pod, observed));
                    Some((OBJECT, (linked, tick.saturating_add(delay), diff)))
                }
                StateObject::ProcessContainer(member) => {
                    let observed = Observed::ProcessInContainer {
                        filename: member.filename.into(),
                    };
                    let parent = EntityId::Container {
                        id: member.container_id,
                    };
                    let delay = if diff < 0 { grace } else { 0 };
                    let linked = (member.process, link(parent, observed));
                    Some((PROCESS, (linked, tick.saturating_add(delay), diff)))
                }
                // Services, their endpoints, node conditions and pod addresses are not ownership
                // links.
                StateObject::Service(_)
                | StateObject::ServiceEndpoint(_)
                | StateObject::NodeCondition(_)
                | StateObject::PodAddress(_) => None,
            }
        })
        .partition(2, |routed| routed)
        .into_iter();
    let (Some(objects), Some(processes)) = (parts.next(), parts.next()) else {
        unreachable!("partition into 2 gives 2 streams")
    };
    Links {
        objects: objects.as_collection(),
        processes: processes.as_collection(),
    }
}

/// Every entity's chain of owners, from the entity itself up to its top-most owner.
pub fn chains<'scope>(
    links: VecCollection<'scope, Tick, (EntityId, Link), isize>,
    max_depth: u32,
) -> Chains<'scope> {
    let links = links.map(|(child, link)| (child, (link.parent, link.evidence)));
    closure::chains(links, max_depth).flat_map(|(entity, owners)| {
        let (_, first) = owners.first()?;
        let mut hops = Vec::with_capacity(owners.len() + 1);
        hops.push(first.hop(&entity, Relation::Start));
        for (owner, evidence) in &owners {
            hops.push(evidence.hop(owner, Relation::OwnedBy));
        }
        Some((entity, hops))
    })
}

/// One `ownership` correlation per Kubernetes object or container that has an owner.
pub fn correlations<'scope>(
    chains: Chains<'scope>,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    chains.map(|(entity, hops)| {
        let root = hops
            .last()
            .map_or_else(|| entity.clone(), |hop| hop.entity.clone());
        let depth = u32::try_from(hops.len().saturating_sub(1)).unwrap_or(u32::MAX);
        Correlation::new(
            CorrelationKind::Ownership,
            root,
            hops,
            Detail::Ownership { depth },
            Confidence {
                percent: 100,
                basis: vec![Basis::RecordedLinks],
            },
        )
    })
}

#[cfg(test)]
pub(crate) mod tests;
