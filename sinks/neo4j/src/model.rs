//! The graph model: how a correlation becomes nodes and relationships, and how a batch of
//! ± changes becomes one net delta with reference counts.
//!
//! Pure functions, no I/O: [`Delta::build`] turns the correlations a transaction adds and
//! removes into rows for the `UNWIND` statements in [`crate::cypher`].
//!
//! | graph element | key | supported by |
//! | --- | --- | --- |
//! | `(:Correlation)` | `id` ([`correlation_id`]) | itself: present while the correlation is current |
//! | `(:Correlation)-[:HOP]->(:Entity)` | the correlation and the hop index | its correlation |
//! | `(:Correlation)-[:ROOT_CAUSE]->(:Entity)` | the correlation | its correlation |
//! | `(:Entity)` | `id` (the entity id string) | any relationship: deleted when it has none left |
//! | `(:Fact)` | `id` (the fact id) | `support`: the hops that cite it |
//! | `(:Fact)-[:ABOUT]->(:Entity)` | fact and entity | `support`: the hops that cite the fact at that entity |
//! | `(:Entity)-[:OWNED_BY\|CAUSED]->(:Entity)` | both entities, type and `fact_id` | `support`: the correlations whose chain makes this step |

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tapio_model::{Correlation, CorrelationKind, Hop};

/// A relationship type between two entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkType {
    /// `(child)-[:OWNED_BY]->(owner)`: a process in a container, a container in a pod, a pod of a
    /// ReplicaSet, a ReplicaSet of a Deployment.
    OwnedBy,
    /// `(cause)-[:CAUSED]->(effect)`: e.g. an OOM-killed process stopped its container.
    Caused,
}

impl LinkType {
    /// Every type, in the order the writer sends them.
    pub const ALL: [LinkType; 2] = [LinkType::OwnedBy, LinkType::Caused];

    /// The relationship type as Cypher spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkType::OwnedBy => "OWNED_BY",
            LinkType::Caused => "CAUSED",
        }
    }
}

/// A step between two different entities of a chain, with the observation behind it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    /// Start entity id.
    pub from: String,
    /// Relationship type.
    pub kind: LinkType,
    /// End entity id.
    pub to: String,
    /// The observation that supports the step (its event time is on its `Fact` node, what it
    /// says on its `ABOUT` relationship to the evidence hop's entity: `from` for `OWNED_BY`,
    /// `to` for `CAUSED`).
    pub fact_id: String,
}

/// The stable id of a correlation in the graph: the first 128 bits of the SHA-256 of its JSON
/// form, in hex. Equal correlations get equal ids in every process and every run.
pub fn correlation_id(correlation: &Correlation) -> String {
    let json =
        serde_json::to_vec(correlation).unwrap_or_else(|_| format!("{correlation:?}").into());
    let digest = Sha256::digest(&json);
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The entity-to-entity steps of a correlation's chain.
///
/// - `ownership`: each hop's entity is owned by the next hop's entity; the evidence is the hop
///   at the owned entity (the link it names).
/// - `oom_restart`: the first change of entity (the process to its container) is causal, with
///   the container's stop as evidence; every later change is ownership, as above.
///
/// Consecutive hops at the same entity (an OOM kill and the exit of the same process) make no
/// relationship: both facts hang off that entity through `ABOUT`.
pub fn links(correlation: &Correlation) -> Vec<Link> {
    let mut links = Vec::new();
    let mut caused_seen = false;
    for pair in correlation.chain.windows(2) {
        let [from, to] = pair else { continue };
        if from.entity == to.entity {
            continue;
        }
        let (kind, evidence): (LinkType, &Hop) = match correlation.kind {
            CorrelationKind::Ownership => (LinkType::OwnedBy, from),
            CorrelationKind::OomRestart if !caused_seen => {
                caused_seen = true;
                (LinkType::Caused, to)
            }
            CorrelationKind::OomRestart => (LinkType::OwnedBy, from),
        };
        links.push(Link {
            from: from.entity.to_string(),
            kind,
            to: to.entity.to_string(),
            fact_id: evidence.fact_id.to_string(),
        });
    }
    links
}

/// A correlation to create, with everything its node and chain need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCorrelation {
    /// [`correlation_id`].
    pub id: String,
    /// The correlation.
    pub correlation: Correlation,
}

/// A counted change to a shared element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted<T> {
    /// The element.
    pub item: T,
    /// Net change of its support; never zero.
    pub delta: i64,
}

/// A fact as a node: id and event time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FactNode {
    /// Fact id.
    pub id: String,
    /// Event time, ns.
    pub time: u64,
}

/// `(:Fact)-[:ABOUT]->(:Entity)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct About {
    /// Fact id.
    pub fact_id: String,
    /// Entity id.
    pub entity: String,
    /// What the fact says about the entity.
    pub what: String,
}

/// Everything one transaction changes, net: the rows of its `UNWIND` statements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Facts whose support changes.
    pub facts: Vec<Counted<FactNode>>,
    /// ABOUT relationships whose support changes.
    pub about: Vec<Counted<About>>,
    /// Entity relationships whose support changes.
    pub links: Vec<Counted<Link>>,
    /// Correlations to create.
    pub added: Vec<NewCorrelation>,
    /// Ids of correlations to delete (with their HOP and ROOT_CAUSE relationships).
    pub removed: Vec<String>,
    /// Entities that may have lost their last relationship: deleted if so.
    pub touched: Vec<String>,
}

impl Delta {
    /// The net delta of adding `added` and removing `removed`: each correlation counts once per
    /// hop for facts and ABOUT, once per step for links; elements whose support does not change
    /// are left out.
    pub fn build(added: Vec<Correlation>, removed: Vec<Correlation>) -> Delta {
        let mut facts: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        let mut about: BTreeMap<(String, String), (String, i64)> = BTreeMap::new();
        let mut links: BTreeMap<Link, i64> = BTreeMap::new();
        let mut touched: BTreeMap<String, ()> = BTreeMap::new();
        let mut count = |correlation: &Correlation, sign: i64| {
            for hop in &correlation.chain {
                let entity = hop.entity.to_string();
                let fact = hop.fact_id.to_string();
                facts.entry(fact.clone()).or_insert((hop.time, 0)).1 += sign;
                about
                    .entry((fact, entity.clone()))
                    .or_insert_with(|| (hop.what.to_string(), 0))
                    .1 += sign;
                if sign < 0 {
                    touched.insert(entity, ());
                }
            }
            if sign < 0 {
                touched.insert(correlation.root_cause.to_string(), ());
            }
            for link in links_deduplicated(correlation) {
                *links.entry(link).or_insert(0) += sign;
            }
        };
        for correlation in &added {
            count(correlation, 1);
        }
        for correlation in &removed {
            count(correlation, -1);
        }
        Delta {
            facts: facts
                .into_iter()
                .filter(|(_, (_, delta))| *delta != 0)
                .map(|(id, (time, delta))| Counted {
                    item: FactNode { id, time },
                    delta,
                })
                .collect(),
            about: about
                .into_iter()
                .filter(|(_, (_, delta))| *delta != 0)
                .map(|((fact_id, entity), (what, delta))| Counted {
                    item: About {
                        fact_id,
                        entity,
                        what,
                    },
                    delta,
                })
                .collect(),
            links: links
                .into_iter()
                .filter(|(_, delta)| *delta != 0)
                .map(|(item, delta)| Counted { item, delta })
                .collect(),
            removed: removed.iter().map(correlation_id).collect(),
            added: added
                .into_iter()
                .map(|correlation| NewCorrelation {
                    id: correlation_id(&correlation),
                    correlation,
                })
                .collect(),
            touched: touched.into_keys().collect(),
        }
    }

    /// Relationships this delta creates or deletes outright or by support, counted once each:
    /// HOP and ROOT_CAUSE of every added and removed correlation, and every ABOUT and link whose
    /// support changes. Used for throughput figures.
    pub fn relationship_writes(&self) -> usize {
        let added: usize = self
            .added
            .iter()
            .map(|c| c.correlation.chain.len() + 1)
            .sum();
        added + self.about.len() + self.links.len()
    }
}

/// A chain's links, each distinct step once: one correlation supports a step at most once.
fn links_deduplicated(correlation: &Correlation) -> Vec<Link> {
    let mut links = links(correlation);
    links.sort();
    links.dedup();
    links
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapio_model::EntityId;

    fn hop(entity: &str, fact: &str, time: u64, what: &str) -> Hop {
        Hop {
            entity: entity.parse().unwrap(),
            fact_id: fact.parse().unwrap(),
            time,
            what: what.into(),
        }
    }

    fn ownership(chain: Vec<Hop>) -> Correlation {
        Correlation {
            kind: CorrelationKind::Ownership,
            root_cause: chain.last().unwrap().entity.clone(),
            chain,
            explanation: "owned".into(),
            confidence: 100,
        }
    }

    fn oom() -> Correlation {
        Correlation {
            kind: CorrelationKind::OomRestart,
            root_cause: "process/n/1/5".parse().unwrap(),
            chain: vec![
                hop("process/n/1/5", "kernel/n/1", 10, "OOM-killed"),
                hop("process/n/1/5", "kernel/n/2", 11, "exited"),
                hop("container/c1", "cri/n/1", 12, "container exited"),
                hop(
                    "container/c1",
                    "kubernetes/cluster/1",
                    1,
                    "container of pod",
                ),
                hop("pod/default/p", "kubernetes/cluster/2", 2, "pod of rs"),
                hop(
                    "replicaset/default/r",
                    "kubernetes/cluster/2",
                    2,
                    "top-level owner",
                ),
            ],
            explanation: "oom".into(),
            confidence: 95,
        }
    }

    #[test]
    fn oom_chains_link_cause_then_owners() {
        let links = links(&oom());
        let steps: Vec<(&str, &str, &str, &str)> = links
            .iter()
            .map(|l| {
                (
                    l.from.as_str(),
                    l.kind.as_str(),
                    l.to.as_str(),
                    l.fact_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                ("process/n/1/5", "CAUSED", "container/c1", "cri/n/1"),
                (
                    "container/c1",
                    "OWNED_BY",
                    "pod/default/p",
                    "kubernetes/cluster/1"
                ),
                (
                    "pod/default/p",
                    "OWNED_BY",
                    "replicaset/default/r",
                    "kubernetes/cluster/2"
                ),
            ]
        );
    }

    #[test]
    fn ownership_chains_link_each_owner_with_the_owned_hop_as_evidence() {
        let correlation = ownership(vec![
            hop("pod/default/p", "kubernetes/cluster/2", 2, "pod of rs"),
            hop(
                "replicaset/default/r",
                "kubernetes/cluster/3",
                3,
                "rs of deployment",
            ),
            hop(
                "deployment/default/d",
                "kubernetes/cluster/3",
                3,
                "top-level owner",
            ),
        ]);
        let links = links(&correlation);
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].fact_id, "kubernetes/cluster/2");
        assert_eq!(links[1].to, "deployment/default/d");
    }

    #[test]
    fn shared_elements_cancel_and_removals_touch_entities() {
        let shared = ownership(vec![
            hop("pod/default/p", "kubernetes/cluster/2", 2, "pod of rs"),
            hop(
                "replicaset/default/r",
                "kubernetes/cluster/2",
                2,
                "top-level owner",
            ),
        ]);
        // Adding the OOM chain and removing the ownership chain in one transaction: the shared
        // step pod → replicaset keeps its support (+1 −1 = 0) and is not in the delta.
        let delta = Delta::build(vec![oom()], vec![shared.clone()]);
        assert!(
            !delta
                .links
                .iter()
                .any(|l| l.item.from == "pod/default/p" && l.item.to == "replicaset/default/r")
        );
        assert_eq!(delta.removed, vec![correlation_id(&shared)]);
        assert!(delta.touched.contains(&"pod/default/p".to_string()));
        assert_eq!(delta.added.len(), 1);
        // The fact cited twice by the OOM chain (at pod and at the replicaset) and twice by the
        // removed chain nets to zero.
        assert!(
            !delta
                .facts
                .iter()
                .any(|f| f.item.id == "kubernetes/cluster/2")
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = oom();
        let mut b = oom();
        b.confidence = 75;
        assert_eq!(correlation_id(&a), correlation_id(&a.clone()));
        assert_ne!(correlation_id(&a), correlation_id(&b));
        assert_eq!(correlation_id(&a).len(), 32);
        let _ = EntityId::Node { name: "n".into() };
    }
}
