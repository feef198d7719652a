//! **Ownership closure.** Every process belongs to a container, every container to a pod, every
//! pod to the controller that created it (a ReplicaSet, a StatefulSet, a Job, ...), and that
//! controller may itself be owned (a ReplicaSet by its Deployment). This rule follows those
//! links transitively, so that for any entity Tapio knows the whole chain up to the top-most
//! owner, with the observation behind every link: the Kubernetes object that named its
//! controlling owner, the pod status that listed the container, the node agent's record of the
//! process inside the container. Objects and containers form a small graph that is closed
//! transitively; processes, many and short-lived and never owners, are then joined onto their
//! container's chain. A link holds while the state behind it holds; when a process
//! exits, its link is kept for a grace period so that late events about it still find their
//! owners. When a link goes away, every chain through it is retracted. Chains are cut at a
//! maximum depth, so an ownership cycle in bad data cannot run away.

use std::fmt::Write;

use differential_dataflow::operators::Iterate;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use tapio_model::{Correlation, CorrelationKind, EntityId, Hop, StateObject, StateRecord};
use timely::dataflow::operators::vec::{Map, Partition};

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

/// Direct ownership links, split by what the closure needs to follow.
pub struct Links<'scope> {
    /// Kubernetes objects to their owners, containers to their pods: a small graph that
    /// changes slowly, closed transitively.
    pub objects: VecCollection<'scope, Tick, (EntityId, Link), isize>,
    /// Processes to their containers: many and short-lived, and never owners themselves, so
    /// they join onto the containers' chains instead of entering the closure.
    pub processes: VecCollection<'scope, Tick, (EntityId, Link), isize>,
}

/// Direct ownership links from state. A process link's retraction (its exit) takes effect
/// `process_exit_grace_ms` later.
///
/// One pass over the state splits it in two without copying a record: most state updates are
/// processes, and a second reader of the whole state would get a copy of every one.
pub fn links<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    settings: &OwnershipSettings,
) -> Links<'scope> {
    const OBJECT: u64 = 0;
    const PROCESS: u64 = 1;
    let grace = settings.process_exit_grace_ms;
    let mut parts = state
        .inner
        .flat_map(move |(record, tick, diff)| {
            let StateRecord {
                evidence,
                since_ns,
                object,
            } = record;
            let link = |parent, what: String| Link {
                parent,
                evidence: Evidence {
                    time: since_ns,
                    fact_id: evidence,
                    what: what.into(),
                },
            };
            match object {
                StateObject::Workload(object) => {
                    let owner = object.owner?;
                    let what = format!("owned by {}", owner.entity);
                    Some((
                        OBJECT,
                        ((object.entity, link(owner.entity, what)), tick, diff),
                    ))
                }
                StateObject::PodContainer(container) => {
                    let what = format!(
                        "container {} of {}",
                        container.container_name, container.pod
                    );
                    let child = EntityId::Container {
                        id: container.container_id.into(),
                    };
                    Some((OBJECT, ((child, link(container.pod, what)), tick, diff)))
                }
                StateObject::ProcessContainer(member) => {
                    let what = format!("runs {} in the container", member.filename);
                    let parent = EntityId::Container {
                        id: member.container_id.into(),
                    };
                    let delay = if diff < 0 { grace } else { 0 };
                    let linked = (member.process, link(parent, what));
                    Some((PROCESS, (linked, tick.saturating_add(delay), diff)))
                }
                // Services, their endpoints and node conditions are not ownership links.
                StateObject::Service(_)
                | StateObject::ServiceEndpoint(_)
                | StateObject::NodeCondition(_) => None,
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

/// What a process inherits from its container: the container's chain, its top-most owner and
/// the chain written out for the explanation. Built once per container chain, not per process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerOwners {
    /// The container's chain, from the container up.
    pub chain: Vec<Hop>,
    /// The top-most owner.
    pub root: EntityId,
    /// `container → pod → ...`, as the explanation writes it.
    pub path: String,
}

impl ContainerOwners {
    fn new(chain: Vec<Hop>) -> Option<ContainerOwners> {
        let root = chain.last()?.entity.clone();
        let mut path = String::with_capacity(48 * chain.len());
        write_path(&mut path, &chain);
        Some(ContainerOwners { chain, root, path })
    }
}

/// One `ownership` correlation per process: the process's link to its container, then the
/// container's chain (or just the container, when nothing is known about its owners).
///
/// Processes are by far the most numerous records here, so each process change costs one
/// join against a small index: for every container some process runs in, what it passes on
/// to its processes ([`ContainerOwners`]), or a marker that it has no chain. Containers
/// without a chain are found among the containers (few), not among the processes (many), so
/// no per-process record is built only to be cancelled.
pub fn process_correlations<'scope>(
    processes: VecCollection<'scope, Tick, (EntityId, Link), isize>,
    chains: Chains<'scope>,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    // The container is the key; the value keeps only what the key does not already say.
    let by_container = processes.map(|(process, link)| (link.parent, (process, link.evidence)));
    let container_chains =
        chains.filter(|(entity, _)| matches!(entity, EntityId::Container { .. }));
    let running = by_container
        .clone()
        .map(|(container, _)| container)
        .distinct()
        .map(|container| (container, ()));
    let unowned = running.antijoin(container_chains.clone().map(|(container, _)| container));
    let owners = container_chains
        .flat_map(|(container, hops)| Some((container, Some(ContainerOwners::new(hops)?))))
        .concat(unowned.map(|(container, ())| (container, None)));
    by_container.arrange_by_key().join_core(
        owners.arrange_by_key(),
        |container, (process, evidence), owners: &Option<ContainerOwners>| {
            let mut explanation = String::with_capacity(128);
            let _ = write!(explanation, "{process} is owned by: ");
            let (root, chain) = match owners {
                Some(owners) => {
                    explanation.push_str(&owners.path);
                    let mut chain = Vec::with_capacity(owners.chain.len() + 1);
                    chain.push(evidence.hop(process));
                    chain.extend(owners.chain.iter().cloned());
                    (owners.root.clone(), chain)
                }
                None => {
                    let _ = write!(explanation, "{container}");
                    let mut top = evidence.hop(container);
                    top.what = format!("top-level owner, named by {}", evidence.fact_id).into();
                    (container.clone(), vec![evidence.hop(process), top])
                }
            };
            Some(Correlation {
                kind: CorrelationKind::Ownership,
                root_cause: root,
                explanation,
                chain,
                confidence: 100,
            })
        },
    )
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
            top.what = format!("top-level owner, named by {}", link.evidence.fact_id).into();
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
        let mut explanation = String::with_capacity(48 * hops.len());
        let _ = write!(explanation, "{entity} is owned by: ");
        write_path(&mut explanation, hops.get(1..).unwrap_or_default());
        Correlation {
            kind: CorrelationKind::Ownership,
            root_cause: root,
            explanation,
            chain: hops,
            confidence: 100,
        }
    })
}

/// Writes the entities of `hops` as `a → b → c`.
fn write_path(out: &mut String, hops: &[Hop]) {
    for (index, hop) in hops.iter().enumerate() {
        if index > 0 {
            out.push_str(" → ");
        }
        let _ = write!(out, "{}", hop.entity);
    }
}
