//! The graph model: how a correlation becomes nodes and relationships, and how a batch of
//! ± changes becomes what the graph must gain and lose.
//!
//! Pure functions, no I/O: [`Counts::change`] turns the correlations a transaction adds and
//! removes into rows for the `UNWIND` statements in [`crate::cypher`].
//!
//! | graph element | key and properties | present while |
//! | --- | --- | --- |
//! | `(:Correlation)` | `id` ([`correlation_id`]); `kind`, `family`, `confidence` (percent), `since` (tick), `data` (the correlation's typed JSON) | the correlation is current |
//! | `(:Correlation)-[:HOP]->(:Entity)` | the correlation and `index` (the hop's position); `fact_id`, `relation` (the hop's [`Relation`], snake_case) | its correlation is |
//! | `(:Correlation)-[:ROOT_CAUSE]->(:Entity)` | the correlation | its correlation is |
//! | `(:Entity)` | `id` (the entity id string) | a current correlation mentions it (a hop or its root cause) |
//! | `(:Fact)` | `id` (the fact id); `time` | a hop of a current correlation cites it |
//! | `(:Fact)-[:ABOUT]->(:Entity)` | fact and entity; `observed` (the hop's [`tapio_model::Observed`] as JSON) | a hop of a current correlation cites the fact at that entity |
//! | `(:Entity)-[:OWNED_BY\|CAUSED\|FOLLOWED_BY\|DEPENDS_ON\|AFFECTS]->(:Entity)` | both entities, type and `fact_id` | a current correlation's chain makes this step ([`Chain::steps`]) |
//! | `(:TapioGraph {key: 'graph'})` | `version` (one more per transaction), `schema` ([`SCHEMA_VERSION`]) | always |
//! | `(:TapioCursor)` | `writer`; `tick` | the writer has committed a tick |
//!
//! An entity-to-entity relationship's type is the [`Relation`] of the hop it leads to, in upper
//! snake case ([`relationship_type`]): `(prev)-[TYPE {fact_id}]->(cur)` for consecutive hops at
//! different entities, with the later hop's fact as evidence. Nothing in the graph is rendered
//! text: questions render sentences from `data` and `observed` with [`tapio_model::render`], so
//! they read exactly as the in-process output does, and rewording a sentence changes no id.
//!
//! The shared elements (entities, facts, ABOUT and the entity-to-entity steps) are reference
//! counted, but the counts live in the writer's memory ([`Counts`]), not in the graph: every
//! count is a function of the set of current correlations, and the graph keeps of each
//! correlation what recomputing them takes (its `ROOT_CAUSE` and its `HOP`s with their
//! `fact_id` and `relation`; see [`Chain`]). So a tick writes a shared element only when its
//! count goes from zero (it is created) or to zero (it is deleted); a ReplicaSet's fact that a
//! thousand chains cite is written once, not once per tick that adds or removes one of them.

use std::collections::{BTreeMap, HashMap};

use tapio_model::{Correlation, Relation};

/// The shape of the graph this version writes, stored as `schema` on the graph's
/// `(:TapioGraph {key: 'graph'})` node. A graph without it, or with a smaller one, was written by
/// an earlier version of Tapio and is cleared at start (see `Neo4jWriter::ensure_schema`).
///
/// 2: relationship types from each hop's relation, typed JSON instead of text (`data` on the
/// correlation, `observed` on `ABOUT`), `relation` on `HOP`.
pub const SCHEMA_VERSION: i64 = 2;

/// The relationship type of a step that leads to a hop with `relation`: the relation's name in
/// upper snake case, e.g. `OWNED_BY`.
///
/// ```
/// use tapio_model::Relation;
/// use tapio_sinks_neo4j::model::relationship_type;
///
/// assert_eq!(relationship_type(Relation::FollowedBy), "FOLLOWED_BY");
/// ```
pub fn relationship_type(relation: Relation) -> String {
    relation.as_str().to_ascii_uppercase()
}

/// A step between two different entities of a chain, with the observation behind it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    /// Start entity id: the earlier hop's entity.
    pub from: String,
    /// How the later hop relates to the earlier one: the relationship's type
    /// ([`relationship_type`]).
    pub kind: Relation,
    /// End entity id: the later hop's entity.
    pub to: String,
    /// The observation that supports the step: the later hop's fact (its event time is on its
    /// `Fact` node, what it says on its `ABOUT` relationship to `to`).
    pub fact_id: String,
}

/// The stable id of a correlation in the graph ([`tapio_model::correlation_id`]): the first 128
/// bits of the SHA-256 of its JSON form, in hex.
pub use tapio_model::correlation_id;

/// One hop of a [`Chain`]: its entity, its fact and how it relates to the hop before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHop {
    /// Entity id.
    pub entity: String,
    /// Fact id.
    pub fact_id: String,
    /// How the hop relates to the one before ([`Relation::Start`] for the first).
    pub relation: Relation,
}

/// What the reference counts need of a correlation: its root cause and its chain as (entity,
/// fact, relation) in order. The writer rebuilds its [`Counts`] from these, read back from the
/// graph (`ROOT_CAUSE` and the `HOP`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its root cause's entity id.
    pub root_cause: String,
    /// Its hops.
    pub hops: Vec<ChainHop>,
}

impl Chain {
    /// The chain of `correlation`.
    pub fn of(correlation: &Correlation) -> Chain {
        Chain {
            root_cause: correlation.root_cause.to_string(),
            hops: correlation
                .chain
                .iter()
                .map(|hop| ChainHop {
                    entity: hop.entity.to_string(),
                    fact_id: hop.fact_id.to_string(),
                    relation: hop.relation,
                })
                .collect(),
        }
    }

    /// The entity-to-entity steps of the chain: for each hop after the first whose relation is
    /// not [`Relation::Start`] and whose entity differs from the previous hop's,
    /// `(previous)-[relation]->(hop)` with the hop's fact as evidence.
    ///
    /// Consecutive hops at the same entity (an OOM kill and the exit of the same process) make
    /// no relationship: both facts hang off that entity through `ABOUT`. The rule that made the
    /// correlation plays no part: the hops say how they relate.
    pub fn links(&self) -> Vec<Link> {
        self.steps().into_iter().map(|(_, link)| link).collect()
    }

    /// [`Chain::links`], each with the index of the hop it starts at (it ends at the next).
    pub fn steps(&self) -> Vec<(usize, Link)> {
        self.hops
            .windows(2)
            .enumerate()
            .filter_map(|(index, pair)| {
                let [previous, hop] = pair else { return None };
                if hop.relation == Relation::Start || previous.entity == hop.entity {
                    return None;
                }
                Some((
                    index,
                    Link {
                        from: previous.entity.clone(),
                        kind: hop.relation,
                        to: hop.entity.clone(),
                        fact_id: hop.fact_id.clone(),
                    },
                ))
            })
            .collect()
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
    /// What the fact says about the entity: the citing hop's [`tapio_model::Observed`] as JSON
    /// (the first hop to cite the fact at the entity, when several do).
    pub observed: String,
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
        for (hop, counted) in correlation.chain.iter().zip(chain.hops) {
            let ChainHop {
                entity, fact_id, ..
            } = counted;
            self.facts.entry(fact_id.clone()).or_insert((hop.time, 0)).1 += sign;
            self.about
                .entry((fact_id, entity.clone()))
                .or_insert_with(|| (observed_json(&hop.observed), 0))
                .1 += sign;
            *self.entities.entry(entity).or_insert(0) += sign;
        }
    }
}

/// `observed` as the JSON stored on `ABOUT` (serde_json cannot fail on it: every field is a
/// string or an integer).
pub fn observed_json(observed: &tapio_model::Observed) -> String {
    serde_json::to_string(observed).unwrap_or_else(|_| format!("{observed:?}"))
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
        for hop in &chain.hops {
            *self.facts.entry(hop.fact_id.clone()).or_insert(0) += 1;
            *self
                .about
                .entry((hop.fact_id.clone(), hop.entity.clone()))
                .or_insert(0) += 1;
            *self.entities.entry(hop.entity.clone()).or_insert(0) += 1;
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
        for ((fact_id, entity), (observed, change)) in net.about {
            match shift(&mut self.about, (fact_id.clone(), entity.clone()), change) {
                Moved::Created => delta.about.push(About {
                    fact_id,
                    entity,
                    observed,
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
    use tapio_model::{Basis, Confidence, CorrelationKind, Detail, Hop, Observed};

    fn hop(entity: &str, relation: Relation, fact: &str, time: u64) -> Hop {
        Hop {
            entity: entity.parse().unwrap(),
            relation,
            fact_id: fact.parse().unwrap(),
            time,
            observed: Observed::OwnerReference,
        }
    }

    fn confidence(percent: u8) -> Confidence {
        Confidence {
            percent,
            basis: vec![Basis::RecordedLinks],
        }
    }

    fn ownership(chain: Vec<Hop>) -> Correlation {
        let depth = chain.len() as u32 - 1;
        Correlation::new(
            CorrelationKind::Ownership,
            chain.last().unwrap().entity.clone(),
            chain,
            Detail::Ownership { depth },
            confidence(100),
        )
    }

    fn sequence(chain: Vec<Hop>) -> Correlation {
        Correlation::new(
            CorrelationKind::OomRestart,
            chain[0].entity.clone(),
            chain,
            Detail::Sequence {
                steps: 3,
                span_ns: 2,
                within_ns: 10,
            },
            confidence(95),
        )
    }

    fn oom() -> Correlation {
        let mut chain = vec![
            hop("process/n/1/5", Relation::Start, "kernel/n/1", 10),
            hop("process/n/1/5", Relation::FollowedBy, "kernel/n/2", 11),
            hop("container/c1", Relation::Caused, "cri/n/1", 12),
            hop(
                "pod/default/p",
                Relation::OwnedBy,
                "kubernetes/cluster/1",
                1,
            ),
            hop(
                "replicaset/default/r",
                Relation::OwnedBy,
                "kubernetes/cluster/2",
                2,
            ),
        ];
        chain[0].observed = Observed::OomKill {
            comm: "x".into(),
            pid: 5,
            memcg: "".into(),
            rss_pages: 3,
        };
        sequence(chain)
    }

    fn steps_of(correlation: &Correlation) -> Vec<(String, String, String, String)> {
        links(correlation)
            .into_iter()
            .map(|l| (l.from, relationship_type(l.kind), l.to, l.fact_id))
            .collect()
    }

    fn step(from: &str, kind: &str, to: &str, fact: &str) -> (String, String, String, String) {
        (from.into(), kind.into(), to.into(), fact.into())
    }

    #[test]
    fn each_step_takes_its_type_and_evidence_from_the_later_hop() {
        assert_eq!(
            steps_of(&oom()),
            vec![
                step("process/n/1/5", "CAUSED", "container/c1", "cri/n/1"),
                step(
                    "container/c1",
                    "OWNED_BY",
                    "pod/default/p",
                    "kubernetes/cluster/1"
                ),
                step(
                    "pod/default/p",
                    "OWNED_BY",
                    "replicaset/default/r",
                    "kubernetes/cluster/2"
                ),
            ]
        );
        // The rule plays no part: the same hops under the ownership rule make the same steps.
        let mut relabelled = oom();
        relabelled.kind = CorrelationKind::Ownership;
        assert_eq!(steps_of(&relabelled), steps_of(&oom()));
    }

    #[test]
    fn every_relation_makes_its_own_type_and_start_or_the_same_entity_makes_none() {
        let chain = vec![
            hop(
                "service/default/a",
                Relation::Start,
                "kubernetes/cluster/1",
                1,
            ),
            hop(
                "service/default/b",
                Relation::DependsOn,
                "kubernetes/cluster/2",
                2,
            ),
            hop(
                "pod/default/p",
                Relation::FollowedBy,
                "kubernetes/cluster/3",
                3,
            ),
            hop("pod/default/p", Relation::Caused, "kubernetes/cluster/4", 4),
            hop("pod/default/q", Relation::Start, "kubernetes/cluster/5", 5),
        ];
        assert_eq!(
            steps_of(&sequence(chain)),
            vec![
                step(
                    "service/default/a",
                    "DEPENDS_ON",
                    "service/default/b",
                    "kubernetes/cluster/2"
                ),
                step(
                    "service/default/b",
                    "FOLLOWED_BY",
                    "pod/default/p",
                    "kubernetes/cluster/3"
                ),
            ]
        );
        let types: BTreeSet<String> = Relation::LINKS.into_iter().map(relationship_type).collect();
        assert_eq!(types.len(), Relation::LINKS.len(), "one type per relation");
        assert!(types.is_superset(&BTreeSet::from(
            ["AFFECTS", "CAUSED", "DEPENDS_ON", "FOLLOWED_BY", "OWNED_BY"].map(String::from)
        )));
    }

    #[test]
    fn ownership_chains_link_each_owner_with_its_own_hop_as_evidence() {
        let correlation = ownership(vec![
            hop("pod/default/p", Relation::Start, "kubernetes/cluster/2", 2),
            hop(
                "replicaset/default/r",
                Relation::OwnedBy,
                "kubernetes/cluster/2",
                2,
            ),
            hop(
                "deployment/default/d",
                Relation::OwnedBy,
                "kubernetes/cluster/3",
                3,
            ),
        ]);
        let links = links(&correlation);
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].fact_id, "kubernetes/cluster/2");
        assert_eq!(links[1].fact_id, "kubernetes/cluster/3");
        assert_eq!(links[1].to, "deployment/default/d");
        assert!(links.iter().all(|l| l.kind == Relation::OwnedBy));
    }

    #[test]
    fn shared_elements_stay_and_only_what_loses_its_last_support_goes() {
        let shared = ownership(vec![
            hop("pod/default/p", Relation::Start, "kubernetes/cluster/2", 2),
            hop(
                "replicaset/default/r",
                Relation::OwnedBy,
                "kubernetes/cluster/2",
                2,
            ),
        ]);
        let mut counts = Counts::default();
        let first = counts.change(vec![shared.clone()], Vec::new());
        assert_eq!(first.entities, ["pod/default/p", "replicaset/default/r"]);
        assert_eq!(first.facts.len(), 1);
        assert_eq!(first.links.len(), 1);
        assert_eq!(
            first.about[0].observed, "\"owner_reference\"",
            "ABOUT carries the typed observation as JSON"
        );
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
        // The OOM chain cites that fact at the ReplicaSet too, so its ABOUT stays as it is;
        // the one at the pod loses its last support.
        assert_eq!(
            delta.about_gone,
            vec![(
                "kubernetes/cluster/2".to_string(),
                "pod/default/p".to_string()
            )]
        );
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
                    hop(
                        &format!("container/c{i}"),
                        Relation::Start,
                        &format!("cri/n/{i}"),
                        i,
                    ),
                    hop(
                        &format!("pod/default/p{pod}"),
                        Relation::OwnedBy,
                        &format!("kubernetes/cluster/{}", 10 + pod),
                        2,
                    ),
                    hop(
                        &format!("replicaset/default/r{rs}"),
                        Relation::OwnedBy,
                        &format!("kubernetes/cluster/{}", 20 + rs),
                        3,
                    ),
                ];
                if i % 3 == 0 {
                    chain[0].relation = Relation::Caused;
                    chain.insert(
                        0,
                        hop(
                            &format!("process/n/{i}/1"),
                            Relation::Start,
                            &format!("kernel/n/{i}"),
                            1,
                        ),
                    );
                    sequence(chain)
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
        b.confidence.percent = 75;
        let mut c = oom();
        c.chain[1].relation = Relation::Caused;
        assert_eq!(correlation_id(&a), correlation_id(&a.clone()));
        assert_ne!(correlation_id(&a), correlation_id(&b));
        assert_ne!(
            correlation_id(&a),
            correlation_id(&c),
            "relations are identity"
        );
        assert_eq!(correlation_id(&a).len(), 32);
    }
}
