//! The watch contract as retractions, without I/O.
//!
//! A [`StateTracker`] keeps, for every object of one watch stream, the records it last
//! inserted, so that:
//!
//! - **apply** retracts only the records that changed and inserts their replacements (an
//!   object whose records did not change emits nothing, so status churn does not reach the
//!   dataflow);
//! - **delete** retracts the object's records;
//! - a **re-list** (`Init` … `InitApply` … `InitDone`, after a watch error, a 410 Gone or an
//!   API server restart) retracts the objects that were not re-listed, and re-listed objects
//!   that did not change emit nothing: a re-list neither loses nor duplicates anything.
//!
//! An [`EventTracker`] does the same for core/v1 Events, which are facts: an Event becomes a
//! fact when it is first seen and again whenever its count or last time changes, never when it
//! is merely re-listed.

use std::collections::{HashMap, HashSet};

use tapio_model::{FactId, KubeEvent, StateObject, StateRecord, StateUpdate, TimeNs};

/// Current records of the objects of one watch stream.
#[derive(Debug, Default)]
pub struct StateTracker {
    objects: HashMap<Box<str>, Vec<StateRecord>>,
    relisted: Option<HashSet<Box<str>>>,
}

impl StateTracker {
    /// An empty tracker.
    pub fn new() -> StateTracker {
        StateTracker::default()
    }

    /// Objects currently tracked.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is tracked.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Records currently inserted, over all objects.
    pub fn records(&self) -> impl Iterator<Item = &StateRecord> {
        self.objects.values().flatten()
    }

    /// The object `key` now stands for `objects`: retracts what it no longer stands for,
    /// inserts what is new (each under a fresh id from `next_id`), and keeps the rest.
    pub fn apply(
        &mut self,
        key: &str,
        objects: Vec<StateObject>,
        now: TimeNs,
        next_id: &mut impl FnMut() -> FactId,
        out: &mut Vec<StateUpdate>,
    ) {
        if let Some(relisted) = self.relisted.as_mut() {
            relisted.insert(key.into());
        }
        let old = self.objects.remove(key).unwrap_or_default();
        for record in &old {
            if !objects.contains(&record.object) {
                out.push(StateUpdate {
                    time_ns: now,
                    diff: -1,
                    record: record.clone(),
                });
            }
        }
        let mut current = Vec::with_capacity(objects.len());
        for object in objects {
            if current
                .iter()
                .any(|record: &StateRecord| record.object == object)
            {
                continue;
            }
            match old.iter().find(|record| record.object == object) {
                Some(kept) => current.push(kept.clone()),
                None => {
                    let record = StateRecord {
                        evidence: next_id(),
                        since_ns: now,
                        object,
                    };
                    out.push(StateUpdate {
                        time_ns: now,
                        diff: 1,
                        record: record.clone(),
                    });
                    current.push(record);
                }
            }
        }
        if !current.is_empty() {
            current.shrink_to_fit();
            self.objects.insert(key.into(), current);
        }
    }

    /// The object `key` is gone: retracts its records.
    pub fn delete(&mut self, key: &str, now: TimeNs, out: &mut Vec<StateUpdate>) {
        if let Some(relisted) = self.relisted.as_mut() {
            relisted.remove(key);
        }
        for record in self.objects.remove(key).into_iter().flatten() {
            out.push(StateUpdate {
                time_ns: now,
                diff: -1,
                record,
            });
        }
    }

    /// A re-list begins.
    pub fn init(&mut self) {
        self.relisted = Some(HashSet::new());
    }

    /// The re-list is complete: retracts every object it did not list.
    pub fn init_done(&mut self, now: TimeNs, out: &mut Vec<StateUpdate>) {
        let Some(relisted) = self.relisted.take() else {
            return;
        };
        let gone: Vec<Box<str>> = self
            .objects
            .keys()
            .filter(|key| !relisted.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.delete(&key, now, out);
        }
    }
}

/// What was last reported of each Event, so that re-lists do not repeat facts.
#[derive(Debug, Default)]
pub struct EventTracker {
    seen: HashMap<Box<str>, (u32, TimeNs)>,
    relisted: Option<HashSet<Box<str>>>,
}

impl EventTracker {
    /// An empty tracker.
    pub fn new() -> EventTracker {
        EventTracker::default()
    }

    /// Events remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no Event is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `event` (by its uid `key`) is news: first seen, or repeated since.
    pub fn apply(&mut self, key: &str, event: &KubeEvent) -> bool {
        if let Some(relisted) = self.relisted.as_mut() {
            relisted.insert(key.into());
        }
        let now = (event.count, event.last_ns);
        match self.seen.get_mut(key) {
            Some(last) if *last == now => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.seen.insert(key.into(), now);
                true
            }
        }
    }

    /// The Event expired or was deleted.
    pub fn delete(&mut self, key: &str) {
        self.seen.remove(key);
    }

    /// A re-list begins.
    pub fn init(&mut self) {
        self.relisted = Some(HashSet::new());
    }

    /// The re-list is complete: forgets the Events it did not list.
    pub fn init_done(&mut self) {
        if let Some(relisted) = self.relisted.take() {
            self.seen.retain(|key, _| relisted.contains(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use tapio_model::{EntityId, OwnerRef, WorkloadObject};

    use super::*;

    fn pod(owner: Option<&str>) -> StateObject {
        StateObject::Workload(WorkloadObject {
            entity: EntityId::Pod {
                namespace: "ns".into(),
                name: "p".into(),
            },
            uid: "u".into(),
            owner: owner.map(|name| OwnerRef {
                entity: EntityId::ReplicaSet {
                    namespace: "ns".into(),
                    name: name.into(),
                },
                uid: name.into(),
            }),
            node: None,
        })
    }

    fn ids() -> impl FnMut() -> FactId {
        let mut seq = 0;
        move || {
            seq += 1;
            FactId::new("kubernetes", "cluster", seq)
        }
    }

    #[test]
    fn unchanged_applies_and_relists_emit_nothing() {
        let (mut tracker, mut next, mut out) = (StateTracker::new(), ids(), Vec::new());
        tracker.apply("u", vec![pod(Some("a"))], 10, &mut next, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        tracker.apply("u", vec![pod(Some("a"))], 20, &mut next, &mut out);
        tracker.init();
        tracker.apply("u", vec![pod(Some("a"))], 30, &mut next, &mut out);
        tracker.init_done(30, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn changes_retract_old_then_insert_new_and_relists_retract_the_missing() {
        let (mut tracker, mut next, mut out) = (StateTracker::new(), ids(), Vec::new());
        tracker.apply("u", vec![pod(Some("a"))], 10, &mut next, &mut out);
        tracker.apply("u", vec![pod(Some("b"))], 20, &mut next, &mut out);
        assert_eq!(
            out.iter().map(|update| update.diff).collect::<Vec<_>>(),
            [1, -1, 1]
        );
        assert_eq!(out[1].record, out[0].record, "a retraction is verbatim");
        out.clear();
        tracker.init();
        tracker.init_done(30, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].diff, -1);
        assert!(tracker.is_empty());
    }

    #[test]
    fn events_are_news_once_per_count() {
        let mut tracker = EventTracker::new();
        let mut event = KubeEvent {
            involved: EntityId::Node { name: "n".into() },
            reason: "r".into(),
            message: "m".into(),
            component: "c".into(),
            event_type: tapio_model::EventType::Normal,
            count: 1,
            first_ns: 1,
            last_ns: 1,
        };
        assert!(tracker.apply("e", &event));
        assert!(!tracker.apply("e", &event));
        event.count = 2;
        event.last_ns = 2;
        assert!(tracker.apply("e", &event));
        tracker.init();
        assert!(!tracker.apply("e", &event));
        tracker.init_done();
        assert_eq!(tracker.len(), 1);
        tracker.init();
        tracker.init_done();
        assert!(tracker.is_empty());
    }
}
