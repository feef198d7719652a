//! **Ownership closure.** Every process belongs to a container, every container to a pod, every
//! pod to the controller that created it (a ReplicaSet, a StatefulSet, a Job, ...), and that
//! controller may itself be owned (a ReplicaSet by its Deployment). This rule follows those
//! links transitively, so that for any entity Tapio knows the whole chain up to the top-most
//! owner, with the observation behind every link: the Kubernetes object that named its
//! controlling owner, the pod status that listed the container, the node agent's record of the
//! process inside the container. A link holds while the state behind it holds; when a process
//! exits, its link is kept for a grace period so that late events about it still find their
//! owners. When a link goes away, every chain through it is retracted. Chains are cut at a
//! maximum depth, so an ownership cycle in bad data cannot run away.

use differential_dataflow::operators::Iterate;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use tapio_model::{Correlation, CorrelationKind, EntityId, Hop, StateObject, StateRecord};
use timely::dataflow::operators::vec::Map;

use super::Evidence;
use crate::clock::Tick;

/// Settings of the ownership rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnershipSettings {
    /// Longest chain followed.
    pub max_depth: u32,
    /// How long a process stays linked to its container after it exits, ms.
    pub process_exit_grace_ms: u64,
}

/// "`child` is owned by `parent`", with the evidence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The owner.
    pub parent: EntityId,
    /// Why we believe it.
    pub evidence: Evidence,
}

/// Chains keyed by the entity they start at: `(entity, [hop(entity), hop(owner), ...])`.
pub type Chains<'scope> = VecCollection<'scope, Tick, (EntityId, Vec<Hop>), isize>;

/// Direct ownership links from state: Kubernetes owners, pod containers, and processes in
/// containers. A process link's retraction (its exit) takes effect `process_exit_grace_ms`
/// later.
pub fn links<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    settings: &OwnershipSettings,
) -> VecCollection<'scope, Tick, (EntityId, Link), isize> {
    let grace = settings.process_exit_grace_ms;
    let graced = state
        .inner
        .map(move |(record, tick, diff)| {
            let delay = match record.object {
                StateObject::ProcessContainer(_) if diff < 0 => grace,
                _ => 0,
            };
            (record, tick.saturating_add(delay), diff)
        })
        .as_collection();
    graced.flat_map(|record| {
        let (child, parent, what) = match record.object {
            StateObject::Workload(object) => {
                let owner = object.owner?;
                let what = format!("owned by {}", owner.entity);
                (object.entity, owner.entity, what)
            }
            StateObject::PodContainer(container) => {
                let what = format!(
                    "container {} of {}",
                    container.container_name, container.pod
                );
                let child = EntityId::Container {
                    id: container.container_id,
                };
                (child, container.pod, what)
            }
            StateObject::ProcessContainer(member) => {
                let what = format!("runs {} in the container", member.filename);
                let parent = EntityId::Container {
                    id: member.container_id,
                };
                (member.process, parent, what)
            }
        };
        Some((
            child,
            Link {
                parent,
                evidence: Evidence {
                    time: record.since_ns,
                    fact_id: record.evidence,
                    what,
                },
            },
        ))
    })
}

/// Every entity's chain of owners, from the entity itself up to its top-most owner.
pub fn chains<'scope>(
    links: VecCollection<'scope, Tick, (EntityId, Link), isize>,
    max_depth: u32,
) -> Chains<'scope> {
    let first = links.clone().map(|(child, link)| (child, (1u32, link)));
    let reach = first.clone().iterate(|scope, reach| {
        let links = links.enter(scope);
        let first = first.enter(scope);
        reach
            .map(|(child, (depth, link))| (link.parent, (child, depth)))
            .join_map(links, |_owner, (child, depth), next| {
                (child.clone(), (depth + 1, next.clone()))
            })
            .filter(move |(_, (depth, _))| *depth <= max_depth)
            .concat(first)
            .distinct()
    });
    reach.reduce(|entity, ancestors, output| {
        // `ancestors` is sorted by (depth, link): take the first link at each depth and stop at
        // the first depth with none (which only bad data can cause).
        let mut hops = Vec::with_capacity(ancestors.len() + 1);
        let mut holder = entity.clone();
        let mut expected = 1;
        let mut last: Option<&Link> = None;
        for ((depth, link), _) in ancestors {
            if *depth < expected {
                continue;
            }
            if *depth > expected {
                break;
            }
            hops.push(link.evidence.hop(&holder));
            holder = link.parent.clone();
            last = Some(link);
            expected += 1;
        }
        if let Some(link) = last {
            let mut top = link.evidence.hop(&holder);
            top.what = format!("top-level owner, named by {}", link.evidence.fact_id);
            hops.push(top);
            output.push((hops, 1isize));
        }
    })
}

/// One `ownership` correlation per entity that has an owner.
pub fn correlations<'scope>(
    chains: Chains<'scope>,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    chains.map(|(entity, hops)| {
        let root = hops
            .last()
            .map_or_else(|| entity.clone(), |hop| hop.entity.clone());
        let path: Vec<String> = hops.iter().map(|hop| hop.entity.to_string()).collect();
        Correlation {
            kind: CorrelationKind::Ownership,
            root_cause: root,
            explanation: format!("{entity} is owned by: {}", path[1..].join(" → ")),
            chain: hops,
            confidence: 100,
        }
    })
}
