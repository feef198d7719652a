//! The graph model: how a correlation becomes nodes and relationships, and how a batch of
//! ± changes becomes what the graph must gain and lose.
//!
//! Pure functions, no I/O: [`Counts::change`] turns the correlations a transaction adds and
//! removes into rows for the `UNWIND` statements in [`crate::cypher`].
//!
//! | graph element | key | present while |
//! | --- | --- | --- |
//! | `(:Correlation)` | `id` ([`correlation_id`]) | the correlation is current |
//! | `(:Correlation)-[:HOP]->(:Entity)` | the correlation and the hop index | its correlation is |
//! | `(:Correlation)-[:ROOT_CAUSE]->(:Entity)` | the correlation | its correlation is |
//! | `(:Entity)` | `id` (the entity id string) | a current correlation mentions it (a hop or its root cause) |
//! | `(:Fact)` | `id` (the fact id) | a hop of a current correlation cites it |
//! | `(:Fact)-[:ABOUT]->(:Entity)` | fact and entity | a hop of a current correlation cites the fact at that entity |
//! | `(:Entity)-[:OWNED_BY\|CAUSED]->(:Entity)` | both entities, type and `fact_id` | a current correlation's chain makes this step |
//!
//! The shared elements (entities, facts, ABOUT, OWNED_BY, CAUSED) are reference counted, but
//! the counts live in the writer's memory ([`Counts`]), not in the graph: every count is a
//! function of the set of current correlations, and the graph keeps of each correlation what
//! recomputing them takes (its `kind`, its `ROOT_CAUSE` and its `HOP`s with their `fact_id`;
//! see [`Chain`]). So a tick writes a shared element only when its count goes from zero (it is
//! created) or to zero (it is deleted); a ReplicaSet's fact that a thousand chains cite is
//! written once, not once per tick that adds or removes one of them.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use tapio_model::{Correlation, CorrelationKind};

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

/// What the reference counts need of a correlation, and all the graph keeps of it besides its
/// text: its kind, its root cause, and its chain as (entity id, fact id) pairs in order. The
/// writer rebuilds its [`Counts`] from these, read back from the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The rule that produced it.
    pub kind: CorrelationKind,
    /// Its root cause's entity id.
    pub root_cause: String,
    /// Its hops: entity id and fact id.
    pub hops: Vec<(String, String)>,
}

impl Chain {
    /// The chain of `correlation`.
    pub fn of(correlation: &Correlation) -> Chain {
        Chain {
            kind: correlation.kind,
            root_cause: correlation.root_cause.to_string(),
            hops: correlation
                .chain
                .iter()
                .map(|hop| (hop.entity.to_string(), hop.fact_id.to_string()))
                .collect(),
        }
    }

    /// The entity-to-entity steps of the chain.
    ///
    /// - `ownership`: each hop's entity is owned by the next hop's entity; the evidence is the
    ///   hop at the owned entity (the link it names).
    /// - `oom_restart`: the first change of entity (the process to its container) is causal,
    ///   with the container's stop as evidence; every later change is ownership, as above.
    ///
    /// Consecutive hops at the same entity (an OOM kill and the exit of the same process) make
    /// no relationship: both facts hang off that entity through `ABOUT`.
    pub fn links(&self) -> Vec<Link> {
        self.steps().into_iter().map(|(_, link)| link).collect()
    }

    /// [`Chain::links`], each with the index of the hop it starts at (it ends at the next).
    pub fn steps(&self) -> Vec<(usize, Link)> {
        let mut steps = Vec::new();
        let mut caused_seen = false;
        for (index, pair) in self.hops.windows(2).enumerate() {
            let [from, to] = pair else { continue };
            if from.0 == to.0 {
                continue;
            }
            let (kind, evidence) = match self.kind {
                CorrelationKind::Ownership => (LinkType::OwnedBy, from),
                CorrelationKind::OomRestart if !caused_seen => {
                    caused_seen = true;
                    (LinkType::Caused, to)
                }
                CorrelationKind::OomRestart => (LinkType::OwnedBy, from),
            };
            steps.push((
                index,
                Link {
                    from: from.0.clone(),
                    kind,
                    to: to.0.clone(),
                    fact_id: evidence.1.clone(),
                },
            ));
        }
        steps
    }

    /// The chain's links, each distinct step once: one correlation supports a step at most
    /// once.
    fn links_deduplicated(&self) -> Vec<Link> {
        let mut links = self.links();
        links.sort();
        links.dedup();
        links
    }
}

/// The entity-to-entity steps of a correlation's chain (see [`Chain::links`]).
pub fn links(correlation: &Correlation) -> Vec<Link> {
    Chain::of(correlation).links()
}

/// A correlation to create, with everything its node and chain need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCorrelation {
    /// [`correlation_id`].
    pub id: String,
    /// The correlation.
    pub correlation: Correlation,
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

/// How many current correlations support each shared element of the graph: the hops that cite
/// each fact, and each fact at each entity (`ABOUT`); the mentions of each entity (hops and
/// root causes); the chains that make each entity-to-entity step. An element is in the graph
/// exactly when its count is above zero.
///
/// The counts are a function of the set of current correlations: [`Counts::add`] on every
/// [`Chain`] of that set gives the same counts as the changes that led to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    facts: HashMap<String, u32>,
    about: HashMap<(String, String), u32>,
    entities: HashMap<String, u32>,
    links: HashMap<Link, u32>,
}

/// Net changes of one transaction, per element, before they meet the counts.
#[derive(Default)]
struct Net {
    facts: BTreeMap<String, (u64, i64)>,
    about: BTreeMap<(String, String), (String, i64)>,
    entities: BTreeMap<String, i64>,
    links: BTreeMap<Link, i64>,
}

impl Net {
    fn count(&mut self, correlation: &Correlation, sign: i64) {
        // Entity and fact ids are formatted once, for the links and the counts.
        let chain = Chain::of(correlation);
        for link in chain.links_deduplicated() {
            *self.links.entry(link).or_insert(0) += sign;
        }
        *self.entities.entry(chain.root_cause).or_insert(0) += sign;
        for (hop, (entity, fact)) in correlation.chain.iter().zip(chain.hops) {
            self.facts.entry(fact.clone()).or_insert((hop.time, 0)).1 += sign;
            self.about
                .entry((fact, entity.clone()))
                .or_insert_with(|| (hop.what.to_string(), 0))
                .1 += sign;
            *self.entities.entry(entity).or_insert(0) += sign;
        }
    }
}

/// Where an element's count went.
enum Moved {
    /// From zero: the element is created.
    Created,
    /// To zero: the element is deleted.
    Gone,
    /// Neither: nothing to write.
    Kept,
}

/// Adds `delta` to `key`'s count in `counts` (dropping it at zero) and says where it went. A
/// count never goes below zero: the writer removes only correlations it knows are current.
fn shift<K: Eq + std::hash::Hash>(counts: &mut HashMap<K, u32>, key: K, delta: i64) -> Moved {
    let old = counts.get(&key).copied().unwrap_or(0);
    let new = (i64::from(old) + delta).clamp(0, i64::from(u32::MAX));
    let new = u32::try_from(new).unwrap_or(u32::MAX);
    if new == 0 {
        counts.remove(&key);
    } else {
        counts.insert(key, new);
    }
    match (old, new) {
        (0, 0) => Moved::Kept,
        (0, _) => Moved::Created,
        (_, 0) => Moved::Gone,
        _ => Moved::Kept,
    }
}

impl Counts {
    /// Counts one more current correlation, as read back from the graph.
    pub fn add(&mut self, chain: &Chain) {
        for (entity, fact) in &chain.hops {
            *self.facts.entry(fact.clone()).or_insert(0) += 1;
            *self
                .about
                .entry((fact.clone(), entity.clone()))
                .or_insert(0) += 1;
            *self.entities.entry(entity.clone()).or_insert(0) += 1;
        }
        *self.entities.entry(chain.root_cause.clone()).or_insert(0) += 1;
        for link in chain.links_deduplicated() {
            *self.links.entry(link).or_insert(0) += 1;
        }
    }

    /// Applies adding `added` and removing `removed` (correlations that are, respectively are
    /// not, current yet) to the counts, and returns what the graph must gain and lose: the
    /// shared elements whose count leaves or reaches zero, and the correlations themselves.
    /// Each correlation counts once per hop for facts and ABOUT, once per mention for entities
    /// and once per distinct step for links.
    pub fn change(&mut self, added: Vec<Correlation>, removed: Vec<Correlation>) -> Delta {
        let identified = |correlations: Vec<Correlation>| {
            correlations
                .into_iter()
                .map(|correlation| NewCorrelation {
                    id: correlation_id(&correlation),
                    correlation,
                })
                .collect()
        };
        self.change_identified(identified(added), identified(removed))
    }

    /// [`Counts::change`] for correlations whose ids ([`correlation_id`]) are known already,
    /// which saves computing them again.
    pub fn change_identified(
        &mut self,
        added: Vec<NewCorrelation>,
        removed: Vec<NewCorrelation>,
    ) -> Delta {
        let mut net = Net::default();
        for new in &added {
            net.count(&new.correlation, 1);
        }
        for old in &removed {
            net.count(&old.correlation, -1);
        }
        let mut delta = Delta::default();
        for (id, (time, change)) in net.facts {
            match shift(&mut self.facts, id.clone(), change) {
                Moved::Created => delta.facts.push(FactNode { id, time }),
                Moved::Gone => delta.facts_gone.push(id),
                Moved::Kept => {}
            }
        }
        for ((fact_id, entity), (what, change)) in net.about {
            match shift(&mut self.about, (fact_id.clone(), entity.clone()), change) {
                Moved::Created => delta.about.push(About {
                    fact_id,
                    entity,
                    what,
                }),
                Moved::Gone => delta.about_gone.push((fact_id, entity)),
                Moved::Kept => {}
            }
        }
        for (id, change) in net.entities {
            match shift(&mut self.entities, id.clone(), change) {
                Moved::Created => delta.entities.push(id),
                Moved::Gone => delta.entities_gone.push(id),
                Moved::Kept => {}
            }
        }
        for (link, change) in net.links {
            match shift(&mut self.links, link.clone(), change) {
                Moved::Created => delta.links.push(link),
                Moved::Gone => delta.links_gone.push(link),
                Moved::Kept => {}
            }
        }
        delta.removed_relationships = removed
            .iter()
            .map(|old| old.correlation.chain.len() + 1)
            .sum();
        delta.removed = removed.into_iter().map(|old| old.id).collect();
        delta.added = added;
        delta
    }

    /// How many entities, facts, ABOUT relationships and entity-to-entity steps are counted.
    pub fn len(&self) -> (usize, usize, usize, usize) {
        (
            self.entities.len(),
            self.facts.len(),
            self.about.len(),
            self.links.len(),
        )
    }
}

/// Everything one transaction changes: the rows of its `UNWIND` statements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Correlations to create, with their HOP and ROOT_CAUSE relationships.
    pub added: Vec<NewCorrelation>,
    /// Ids of correlations to delete (with their HOP and ROOT_CAUSE relationships).
    pub removed: Vec<String>,
    /// HOP and ROOT_CAUSE relationships of the removed correlations.
    pub removed_relationships: usize,
    /// Entities that a current correlation mentions now and none did before.
    pub entities: Vec<String>,
    /// Entities that no current correlation mentions any more.
    pub entities_gone: Vec<String>,
    /// Facts that a hop cites now and none did before.
    pub facts: Vec<FactNode>,
    /// Facts that no hop cites any more (deleted with their ABOUT relationships).
    pub facts_gone: Vec<String>,
    /// ABOUT relationships to create.
    pub about: Vec<About>,
    /// ABOUT relationships no hop supports any more, as (fact id, entity id).
    pub about_gone: Vec<(String, String)>,
    /// Entity-to-entity steps to create.
    pub links: Vec<Link>,
    /// Entity-to-entity steps no chain makes any more.
    pub links_gone: Vec<Link>,
}

impl Delta {
    /// Relationships this delta creates or deletes, counted once each: HOP and ROOT_CAUSE of
    /// every added and removed correlation, and every ABOUT and entity-to-entity step created
    /// or deleted. Used for throughput figures.
    pub fn relationship_writes(&self) -> usize {
        self.relationships_created()
            + self.removed_relationships
            + self.about_gone.len()
            + self.links_gone.len()
    }

    /// Relationships this delta creates: HOP and ROOT_CAUSE of every added correlation, and
    /// every ABOUT and entity-to-entity step created.
    pub fn relationships_created(&self) -> usize {
        let added: usize = self
            .added
            .iter()
            .map(|c| c.correlation.chain.len() + 1)
            .sum();
        added + self.about.len() + self.links.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use tapio_model::{EntityId, Hop};

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
    fn shared_elements_stay_and_only_what_loses_its_last_support_goes() {
        let shared = ownership(vec![
            hop("pod/default/p", "kubernetes/cluster/2", 2, "pod of rs"),
            hop(
                "replicaset/default/r",
                "kubernetes/cluster/2",
                2,
                "top-level owner",
            ),
        ]);
        let mut counts = Counts::default();
        let first = counts.change(vec![shared.clone()], Vec::new());
        assert_eq!(first.entities, ["pod/default/p", "replicaset/default/r"]);
        assert_eq!(first.facts.len(), 1);
        assert_eq!(first.links.len(), 1);
        // Adding the OOM chain and removing the ownership chain in one transaction: the shared
        // step pod → replicaset, its fact and both entities stay, so nothing is written for
        // them.
        let delta = counts.change(vec![oom()], vec![shared.clone()]);
        assert!(
            !delta
                .links
                .iter()
                .chain(&delta.links_gone)
                .any(|l| l.from == "pod/default/p" && l.to == "replicaset/default/r")
        );
        assert_eq!(delta.removed, vec![correlation_id(&shared)]);
        assert!(delta.entities_gone.is_empty());
        assert!(!delta.entities.contains(&"pod/default/p".to_string()));
        assert_eq!(delta.added.len(), 1);
        assert!(!delta.facts.iter().any(|f| f.id == "kubernetes/cluster/2"));
        // The ABOUT of that fact at the ReplicaSet said "top-level owner" in the ownership
        // chain; the OOM chain cites it at the ReplicaSet too, so it stays as it is.
        assert!(delta.about_gone.is_empty());
        // Removing the OOM chain leaves nothing.
        let last = counts.change(Vec::new(), vec![oom()]);
        assert_eq!(last.entities_gone.len(), 4);
        assert_eq!(last.facts_gone.len(), 5);
        assert_eq!(counts, Counts::default());
    }

    /// Every shared element a set of correlations puts in the graph, as text.
    fn elements(current: &BTreeSet<Correlation>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for c in current {
            out.insert(format!("entity {}", c.root_cause));
            for hop in &c.chain {
                out.insert(format!("entity {}", hop.entity));
                out.insert(format!("fact {}", hop.fact_id));
                out.insert(format!("about {} {}", hop.fact_id, hop.entity));
            }
            for link in links(c) {
                out.insert(format!("link {link:?}"));
            }
        }
        out
    }

    /// Oracle: over random add/remove sequences, what each change creates and deletes is the
    /// difference between the elements of the sets before and after, and the counts equal those
    /// rebuilt from scratch from the current set (as a restarted writer rebuilds them).
    #[test]
    fn changes_create_and_delete_exactly_the_difference_of_the_sets() {
        let pool: Vec<Correlation> = (0..12u64)
            .map(|i| {
                let (pod, rs) = (i % 4, i % 2);
                let mut chain = vec![
                    hop(&format!("container/c{i}"), &format!("cri/n/{i}"), i, "c"),
                    hop(
                        &format!("pod/default/p{pod}"),
                        &format!("kubernetes/cluster/{}", 10 + pod),
                        2,
                        "pod",
                    ),
                    hop(
                        &format!("replicaset/default/r{rs}"),
                        &format!("kubernetes/cluster/{}", 20 + rs),
                        3,
                        "rs",
                    ),
                ];
                if i % 3 == 0 {
                    chain.insert(
                        0,
                        hop(
                            &format!("process/n/{i}/1"),
                            &format!("kernel/n/{i}"),
                            1,
                            "oom",
                        ),
                    );
                    Correlation {
                        kind: CorrelationKind::OomRestart,
                        root_cause: chain[0].entity.clone(),
                        chain,
                        explanation: format!("oom {i}"),
                        confidence: 95,
                    }
                } else {
                    ownership(chain)
                }
            })
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut counts = Counts::default();
        let mut current: BTreeSet<Correlation> = BTreeSet::new();
        for _ in 0..300 {
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            for c in &pool {
                match next() % 4 {
                    0 if !current.contains(c) => added.push(c.clone()),
                    1 if current.contains(c) => removed.push(c.clone()),
                    _ => {}
                }
            }
            let before = elements(&current);
            for c in &added {
                current.insert(c.clone());
            }
            for c in &removed {
                current.remove(c);
            }
            let after = elements(&current);
            let delta = counts.change(added, removed);
            let mut created: BTreeSet<String> = BTreeSet::new();
            created.extend(delta.entities.iter().map(|e| format!("entity {e}")));
            created.extend(delta.facts.iter().map(|f| format!("fact {}", f.id)));
            created.extend(
                delta
                    .about
                    .iter()
                    .map(|a| format!("about {} {}", a.fact_id, a.entity)),
            );
            created.extend(delta.links.iter().map(|l| format!("link {l:?}")));
            let mut gone: BTreeSet<String> = BTreeSet::new();
            gone.extend(delta.entities_gone.iter().map(|e| format!("entity {e}")));
            gone.extend(delta.facts_gone.iter().map(|f| format!("fact {f}")));
            gone.extend(
                delta
                    .about_gone
                    .iter()
                    .map(|(f, e)| format!("about {f} {e}")),
            );
            gone.extend(delta.links_gone.iter().map(|l| format!("link {l:?}")));
            assert_eq!(created, after.difference(&before).cloned().collect());
            assert_eq!(gone, before.difference(&after).cloned().collect());
            let mut rebuilt = Counts::default();
            for c in &current {
                rebuilt.add(&Chain::of(c));
            }
            assert_eq!(counts, rebuilt);
        }
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
