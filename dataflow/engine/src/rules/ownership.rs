//! **Ownership closure.** Every process belongs to a container, every container to a pod, every
//! pod to the controller that created it (a ReplicaSet, a StatefulSet, a Job, ...), and that
//! controller may itself be owned (a ReplicaSet by its Deployment). This rule follows those
//! links transitively, so that for any entity Tapio knows the whole chain up to the top-most
//! owner, with the observation behind every link: the Kubernetes object that named its
//! controlling owner, the pod status that listed the container, the exec that started the
//! process inside the container's cgroup. Links from Kubernetes hold while the object holds;
//! a process's link holds from its exec until a grace period after it exits (or, if its exit is
//! never seen, until a maximum age). When a link goes away, every chain through it is retracted.
//! Chains are cut at a maximum depth, so an ownership cycle in bad data cannot run away.

use differential_dataflow::VecCollection;
use differential_dataflow::operators::Iterate;
use serde::{Deserialize, Serialize};
use tapio_model::{
    Correlation, CorrelationKind, EntityId, Fact, FactPayload, Hop, StateObject, StateRecord,
};

use super::Evidence;
use super::window::{retain, shift};
use crate::clock::{Tick, TickClock};

/// Settings of the ownership rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnershipSettings {
    /// Longest chain followed.
    pub max_depth: u32,
    /// How long a process stays linked to its container after it exits, ms.
    pub process_exit_grace_ms: u64,
    /// Longest a process stays linked when its exit is never seen, ms.
    pub process_max_age_ms: u64,
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

/// Direct ownership links from Kubernetes state.
pub fn state_links<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
) -> VecCollection<'scope, Tick, (EntityId, Link), isize> {
    state.flat_map(|record| {
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
                (
                    EntityId::Container {
                        id: container.container_id,
                    },
                    container.pod,
                    what,
                )
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

/// Process → container links from execs, valid until the process has been gone for a while.
pub fn process_links<'scope>(
    facts: VecCollection<'scope, Tick, Fact, isize>,
    clock: TickClock,
    settings: &OwnershipSettings,
) -> VecCollection<'scope, Tick, (EntityId, Link), isize> {
    let execs = facts.clone().flat_map(|fact| match &fact.payload {
        FactPayload::ProcessExec(exec) => {
            let container = exec.container_id.clone()?;
            let process = EntityId::Process {
                node: fact.id.node.clone(),
                pid: exec.pid,
                start_ns: exec.start_ns,
            };
            let what = format!("exec {} in container {}", exec.filename, container);
            Some((
                process,
                Link {
                    parent: EntityId::Container { id: container },
                    evidence: Evidence {
                        time: fact.time_ns,
                        fact_id: fact.id,
                        what,
                    },
                },
            ))
        }
        _ => None,
    });
    let exits = facts.flat_map(|fact| match &fact.payload {
        FactPayload::ProcessExit(exit) => Some((
            EntityId::Process {
                node: fact.id.node.clone(),
                pid: exit.pid,
                start_ns: exit.start_ns,
            },
            fact.time_ns,
        )),
        _ => None,
    });
    let max_age = settings.process_max_age_ms;
    let live = retain(execs, max_age, move |(_, link)| {
        clock.tick_of(link.evidence.time)
    });
    let gone = shift(
        exits,
        settings.process_exit_grace_ms,
        max_age,
        move |(_, time)| clock.tick_of(*time),
    )
    .map(|(process, _)| process)
    .distinct();
    live.antijoin(gone)
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
