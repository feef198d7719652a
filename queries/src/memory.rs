//! The four questions answered from the embedded in-memory store (`tapio-sinks-store`) instead
//! of Neo4j, with the same answers: the store keeps the same graph the Neo4j sink writes
//! (entities, facts, what each fact observed at each entity, the steps of every current chain),
//! and each function here walks it as its Cypher statement in [`crate::catalog`] does.
//!
//! Where Cypher leaves a choice open (two shortest paths of equal length), the store takes the
//! first in the order of relation, entity id and fact id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tapio_model::{EntityId, Family, Relation, TimeNs};
use tapio_sinks_store::{State, Stored};

use crate::{Answer, Cause, Event, Impact, QueryError, Step, cause_of, evidence_of};

/// Longest run of one relationship type that blast radius and timeline follow, as in the
/// Cypher statements (`*1..8`).
const MAX_RUN: usize = 8;
/// Longest path `path` looks for (`*..16`).
const MAX_PATH: usize = 16;

fn ensure_exists(state: &State, entity: &str) -> Result<(), QueryError> {
    if state.has_entity(entity) {
        Ok(())
    } else {
        Err(QueryError::UnknownEntity {
            entity: entity.to_owned(),
        })
    }
}

/// A stored correlation with the evidence of every hop, its sentences rendered.
pub fn cause(stored: &Stored) -> Cause {
    cause_of(
        stored.id.to_string(),
        (*stored.correlation).clone(),
        stored.since,
    )
}

/// Root-cause chains through `entity`, as [`crate::why`].
///
/// # Errors
/// [`QueryError::UnknownEntity`] when no current correlation mentions it.
pub fn why(state: &State, entity: &EntityId) -> Result<Answer, QueryError> {
    let id = entity.to_string();
    ensure_exists(state, &id)?;
    let mut found: Vec<_> = state
        .mentioning(&id)
        .filter(|stored| {
            let correlation = &stored.correlation;
            correlation.family != Family::Ownership
                && correlation.kind.as_str() != "service_dependency"
                && correlation.chain.iter().any(|hop| hop.entity == *entity)
        })
        .collect();
    found.sort_by(|a, b| {
        b.correlation
            .confidence
            .percent
            .cmp(&a.correlation.confidence.percent)
            .then(b.since.cmp(&a.since))
            .then(a.id.cmp(&b.id))
    });
    let causes: Vec<Cause> = found.into_iter().map(|stored| cause(stored)).collect();
    Ok(Answer::Why { entity: id, causes })
}

/// Which way a run of steps goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// From the entity along the steps that start at it.
    Out,
    /// Against the steps that end at it.
    In,
}

/// A run of steps in a pattern: which way, which relations, how many steps.
struct Run {
    way: Way,
    relations: &'static [Relation],
    min: usize,
}

/// The ways to be hit, as in [`crate::catalog::BLAST_RADIUS`].
const HITS: [(&str, &[Run]); 6] = [
    (
        "caused",
        &[Run {
            way: Way::Out,
            relations: &[Relation::Caused],
            min: 1,
        }],
    ),
    (
        "inside",
        &[Run {
            way: Way::In,
            relations: &[Relation::OwnedBy],
            min: 1,
        }],
    ),
    (
        "inside affected",
        &[
            Run {
                way: Way::Out,
                relations: &[Relation::Caused],
                min: 1,
            },
            Run {
                way: Way::In,
                relations: &[Relation::OwnedBy],
                min: 1,
            },
        ],
    ),
    (
        "owner of affected",
        &[
            Run {
                way: Way::Out,
                relations: &[Relation::Caused],
                min: 1,
            },
            Run {
                way: Way::Out,
                relations: &[Relation::OwnedBy],
                min: 1,
            },
        ],
    ),
    (
        "affected",
        &[
            Run {
                way: Way::Out,
                relations: &[Relation::Caused, Relation::OwnedBy],
                min: 0,
            },
            Run {
                way: Way::Out,
                relations: &[Relation::Affects],
                min: 1,
            },
        ],
    ),
    (
        "dependent",
        &[
            Run {
                way: Way::In,
                relations: &[Relation::OwnedBy],
                min: 0,
            },
            Run {
                way: Way::In,
                relations: &[Relation::DependsOn],
                min: 1,
            },
        ],
    ),
];

/// A place in a pattern walk: the entity, the run and how many steps of it are behind.
type At = (Arc<str>, usize, usize);

/// The best way an entity is hit: length, how, the facts of its steps.
type Hit = (usize, &'static str, Vec<Arc<str>>);

/// Keeps `facts` as the way to `at` when it has none yet or `facts` comes first (by fact ids,
/// as Cypher orders lists); returns whether it did.
fn keep_first(ways: &mut HashMap<At, Vec<Arc<str>>>, at: At, facts: Vec<Arc<str>>) -> bool {
    match ways.get_mut(&at) {
        Some(known) if *known <= facts => false,
        Some(known) => {
            *known = facts;
            true
        }
        None => {
            ways.insert(at, facts);
            true
        }
    }
}

/// The shortest walk from `start` that matches `runs`, to every entity it can end at: the
/// facts of its steps; of several shortest walks, the one whose list of facts comes first, as
/// `ORDER BY length(p), how, [r IN relationships(p) | r.fact_id]` picks in Cypher. Level by
/// level (a level: the walks with that many steps), the zero-length moves from one run to the
/// next closed within a level.
fn shortest(state: &State, start: &Arc<str>, runs: &[Run]) -> BTreeMap<Arc<str>, Vec<Arc<str>>> {
    let mut reached: BTreeMap<Arc<str>, Vec<Arc<str>>> = BTreeMap::new();
    // The first way to every place reached on an earlier level or this one.
    let mut settled: HashSet<At> = HashSet::new();
    let last = runs.len() - 1;
    let mut level: HashMap<At, Vec<Arc<str>>> = HashMap::new();
    level.insert((Arc::clone(start), 0, 0), Vec::new());
    while !level.is_empty() {
        // Moves to the next run cost nothing: close the level under them.
        let mut pending: Vec<At> = level.keys().cloned().collect();
        while let Some(at) = pending.pop() {
            let (entity, run, taken) = at.clone();
            if run < last && taken >= runs[run].min {
                let next = (entity, run + 1, 0);
                if settled.contains(&next) {
                    continue;
                }
                let facts = level[&at].clone();
                if keep_first(&mut level, next.clone(), facts) {
                    pending.push(next);
                }
            }
        }
        // Entities first reached on this level.
        let mut here: BTreeMap<Arc<str>, &Vec<Arc<str>>> = BTreeMap::new();
        for ((entity, run, taken), facts) in &level {
            if *run == last && *taken >= runs[*run].min && !reached.contains_key(entity) {
                let better = here.get(entity).is_none_or(|known| facts < *known);
                if better {
                    here.insert(Arc::clone(entity), facts);
                }
            }
        }
        let found: Vec<(Arc<str>, Vec<Arc<str>>)> = here
            .into_iter()
            .map(|(entity, facts)| (entity, facts.clone()))
            .collect();
        reached.extend(found);
        settled.extend(level.keys().cloned());
        // One more step.
        let mut next_level: HashMap<At, Vec<Arc<str>>> = HashMap::new();
        for ((entity, run, taken), facts) in &level {
            if *taken == MAX_RUN {
                continue;
            }
            let steps: Vec<&tapio_sinks_store::LinkEnd> = match runs[*run].way {
                Way::Out => state.links_from(entity).collect(),
                Way::In => state.links_to(entity).collect(),
            };
            for (relation, other, fact) in steps {
                if !runs[*run].relations.contains(relation) {
                    continue;
                }
                let next = (Arc::clone(other), *run, taken + 1);
                if settled.contains(&next) {
                    continue;
                }
                let mut longer = facts.clone();
                longer.push(Arc::clone(fact));
                keep_first(&mut next_level, next, longer);
            }
        }
        level = next_level;
    }
    reached
}

/// What `entity` takes down with it, as [`crate::blast_radius`].
///
/// # Errors
/// As [`why`].
pub fn blast_radius(state: &State, entity: &EntityId) -> Result<Answer, QueryError> {
    let id = entity.to_string();
    ensure_exists(state, &id)?;
    let start: Arc<str> = Arc::from(id.as_str());
    // Per entity hit: the shortest way, then the first by name, then by its facts (as
    // `ORDER BY length(p), how, [r IN relationships(p) | r.fact_id]`).
    let mut best: BTreeMap<Arc<str>, Hit> = BTreeMap::new();
    for (how, runs) in HITS {
        for (hit, facts) in shortest(state, &start, runs) {
            if hit == start {
                continue;
            }
            let better = best.get(&hit).is_none_or(|(length, known, evidence)| {
                (facts.len(), how, &facts) < (*length, *known, evidence)
            });
            if better {
                best.insert(hit, (facts.len(), how, facts));
            }
        }
    }
    let mut impacts: Vec<Impact> = best
        .into_iter()
        .map(|(hit, (distance, how, facts))| Impact {
            kind: hit.split('/').next().unwrap_or_default().to_owned(),
            entity: hit.to_string(),
            how: how.to_owned(),
            distance: u32::try_from(distance).unwrap_or(u32::MAX),
            evidence: facts.iter().map(ToString::to_string).collect(),
        })
        .collect();
    impacts.sort_by(|a, b| a.distance.cmp(&b.distance).then(a.entity.cmp(&b.entity)));
    Ok(Answer::BlastRadius {
        entity: id,
        impacts,
    })
}

/// Facts about `entity`, what it owns and what caused something to those, from `since` (ns)
/// on, as [`crate::timeline`].
///
/// # Errors
/// As [`why`].
pub fn timeline(
    state: &State,
    entity: &EntityId,
    since: Option<TimeNs>,
) -> Result<Answer, QueryError> {
    let id = entity.to_string();
    ensure_exists(state, &id)?;
    let since = since.unwrap_or(0).min(i64::MAX as u64);
    // What it owns, within eight ownership steps.
    let start: Arc<str> = Arc::from(id.as_str());
    let mut owned: BTreeSet<Arc<str>> = BTreeSet::from([Arc::clone(&start)]);
    let mut frontier = vec![start];
    for _ in 0..MAX_RUN {
        let mut next = Vec::new();
        for entity in &frontier {
            for (relation, owner, _) in state.links_to(entity) {
                if *relation == Relation::OwnedBy && owned.insert(Arc::clone(owner)) {
                    next.push(Arc::clone(owner));
                }
            }
        }
        frontier = next;
    }
    let mut subjects: BTreeSet<Arc<str>> = owned.clone();
    for entity in &owned {
        for (relation, cause, _) in state.links_to(entity) {
            if *relation == Relation::Caused {
                subjects.insert(Arc::clone(cause));
            }
        }
    }
    let mut events = Vec::new();
    for subject in &subjects {
        for (fact, observed) in state.about(subject) {
            let Some(time) = state.fact_time(fact) else {
                continue;
            };
            if time < since {
                continue;
            }
            let previous = state
                .links_to(subject)
                .filter(|(_, _, evidence)| evidence == fact)
                .map(|(_, from, _)| from)
                .min();
            let (observed, what) = evidence_of(
                "timeline",
                subject,
                fact,
                time,
                observed.clone(),
                previous.map(|previous| &**previous),
            )?;
            events.push(Event {
                time,
                entity: subject.to_string(),
                fact_id: fact.to_string(),
                observed,
                what,
            });
        }
    }
    events.sort_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then_with(|| a.fact_id.cmp(&b.fact_id))
            .then_with(|| a.entity.cmp(&b.entity))
    });
    Ok(Answer::Timeline { entity: id, events })
}

/// The shortest chain of steps of any relation between `from` and `to`, either way round, as
/// [`crate::path`].
///
/// # Errors
/// As [`why`], for either entity.
pub fn path(state: &State, from: &EntityId, to: &EntityId) -> Result<Answer, QueryError> {
    let (from, to) = (from.to_string(), to.to_string());
    ensure_exists(state, &from)?;
    ensure_exists(state, &to)?;
    if from == to {
        return Ok(Answer::Path {
            nodes: vec![from.clone()],
            from,
            to,
            steps: Vec::new(),
        });
    }
    // Breadth first from `from`; each entity remembers the step it was first reached by:
    // (entity before, relation, start, end, fact).
    type Via = (Arc<str>, Relation, Arc<str>, Arc<str>, Arc<str>);
    let start: Arc<str> = Arc::from(from.as_str());
    let mut via: HashMap<Arc<str>, Via> = HashMap::new();
    let mut seen: HashSet<Arc<str>> = HashSet::from([Arc::clone(&start)]);
    let mut frontier = vec![start];
    let mut found = false;
    'search: for _ in 0..MAX_PATH {
        let mut next = Vec::new();
        for entity in &frontier {
            let outgoing = state.links_from(entity).map(|(relation, other, fact)| {
                (
                    Arc::clone(other),
                    (
                        Arc::clone(entity),
                        *relation,
                        Arc::clone(entity),
                        Arc::clone(other),
                        Arc::clone(fact),
                    ),
                )
            });
            let incoming = state.links_to(entity).map(|(relation, other, fact)| {
                (
                    Arc::clone(other),
                    (
                        Arc::clone(entity),
                        *relation,
                        Arc::clone(other),
                        Arc::clone(entity),
                        Arc::clone(fact),
                    ),
                )
            });
            for (other, step) in outgoing.chain(incoming) {
                if seen.insert(Arc::clone(&other)) {
                    let reached = *other == *to;
                    via.insert(Arc::clone(&other), step);
                    next.push(other);
                    if reached {
                        found = true;
                        break 'search;
                    }
                }
            }
        }
        frontier = next;
    }
    if !found {
        return Ok(Answer::Path {
            from,
            to,
            nodes: Vec::new(),
            steps: Vec::new(),
        });
    }
    let mut nodes = vec![to.clone()];
    let mut steps = Vec::new();
    let mut current: Arc<str> = Arc::from(to.as_str());
    while let Some((before, relation, start, end, fact)) = via.get(&current) {
        let time = state.fact_time(fact).ok_or_else(|| QueryError::Failed {
            question: "path",
            reason: format!("the store has no time for {fact}"),
        })?;
        let observed = state
            .observed(fact, end)
            .ok_or_else(|| QueryError::Failed {
                question: "path",
                reason: format!("the store has no observation of {fact} at {end}"),
            })?
            .clone();
        let (observed, what) = evidence_of("path", end, fact, time, observed, Some(start))?;
        steps.push(Step {
            relation: relation.as_str().to_ascii_uppercase(),
            from: start.to_string(),
            to: end.to_string(),
            fact_id: fact.to_string(),
            time,
            observed,
            what,
        });
        nodes.push(before.to_string());
        current = Arc::clone(before);
    }
    nodes.reverse();
    steps.reverse();
    Ok(Answer::Path {
        from,
        to,
        nodes,
        steps,
    })
}
