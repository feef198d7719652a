//! A bounded history of the facts the dataflow took in, per entity (the fact's subject): what
//! an entity's timeline shows besides the correlations about it. Facts a current correlation
//! cites are in the correlation graph already; this history also holds the facts no rule
//! used, so that a timeline shows what happened to an entity before and around an incident.
//!
//! Bounded twice: at most `facts_per_entity` facts per entity (its oldest go first) and at
//! most `facts_max` in all (the oldest in event time go first).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tapio_model::{Fact, Observed, TimeNs};

/// One fact as an entity's timeline shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptFact {
    /// Fact id.
    pub id: Arc<str>,
    /// Event time, ns since the Unix epoch.
    pub time: TimeNs,
    /// The fact's kind (`oom_kill`, …).
    pub kind: &'static str,
    /// What it observed, as typed data.
    pub observed: Observed,
}

/// A fact's place in time order: event time, then id.
type Key = (TimeNs, Arc<str>);

/// The facts per entity, bounded.
#[derive(Debug, Default)]
pub(crate) struct FactHistory {
    per_entity: HashMap<Arc<str>, BTreeMap<Key, KeptFact>>,
    /// Every kept fact in time order, with its entity: the global eviction order.
    all: BTreeMap<Key, Arc<str>>,
    /// Facts taken in since the start, kept or not.
    seen: u64,
}

impl FactHistory {
    /// Keeps `fact` under its subject, then evicts beyond the bounds.
    pub(crate) fn record(&mut self, fact: &Fact, per_entity: usize, max: usize) {
        self.seen += 1;
        if per_entity == 0 || max == 0 {
            return;
        }
        let entity = fact.subject().to_string();
        let entity: Arc<str> = match self.per_entity.get_key_value(entity.as_str()) {
            Some((interned, _)) => Arc::clone(interned),
            None => entity.into(),
        };
        let id: Arc<str> = fact.id.to_string().into();
        let key = (fact.time_ns, Arc::clone(&id));
        let facts = self.per_entity.entry(Arc::clone(&entity)).or_default();
        if facts.contains_key(&key) {
            return;
        }
        facts.insert(
            key.clone(),
            KeptFact {
                id,
                time: fact.time_ns,
                kind: fact.payload.kind(),
                observed: Observed::of_fact(&fact.payload),
            },
        );
        self.all.insert(key, Arc::clone(&entity));
        while facts.len() > per_entity {
            let Some((oldest, _)) = facts.pop_first() else {
                break;
            };
            self.all.remove(&oldest);
        }
        while self.all.len() > max {
            let Some((oldest, owner)) = self.all.pop_first() else {
                break;
            };
            if let Some(facts) = self.per_entity.get_mut(&owner) {
                facts.remove(&oldest);
                if facts.is_empty() {
                    self.per_entity.remove(&owner);
                }
            }
        }
    }

    /// The entity's kept facts before `before` (exclusive; all without it), newest first, at
    /// most `limit`; and how many it has before `before` in all.
    pub(crate) fn about(
        &self,
        entity: &str,
        before: Option<TimeNs>,
        limit: usize,
    ) -> (Vec<KeptFact>, usize) {
        let Some(facts) = self.per_entity.get(entity) else {
            return (Vec::new(), 0);
        };
        let upper = before.unwrap_or(TimeNs::MAX);
        let earlier = facts.range(..(upper, Arc::<str>::from("")));
        let total = if before.is_none() {
            facts.len()
        } else {
            earlier.clone().count()
        };
        let found = earlier.rev().take(limit).map(|(_, fact)| fact.clone());
        (found.collect(), total)
    }

    /// Facts kept.
    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    /// Facts taken in since the start.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }
}
