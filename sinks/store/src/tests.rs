use std::time::Duration;

use tapio_model::{
    Basis, ClosedBatch, Confidence, Correlation, CorrelationKind, Detail, FactId, Hop, Observed,
    Relation,
};

use super::*;

const SECOND: u64 = 1_000_000_000;

fn hop(entity: &str, relation: Relation, seq: u64) -> Hop {
    Hop {
        entity: entity.parse().expect("entity id"),
        relation,
        fact_id: FactId::new("kubernetes", "cluster", seq),
        time: seq * SECOND,
        observed: Observed::OwnerReference,
    }
}

/// An ownership chain `pod/<ns>/<pod>` → `replicaset/<ns>/<rs>` with facts `seq`, `seq + 1`.
fn ownership(namespace: &str, pod: &str, rs: &str, seq: u64) -> Correlation {
    Correlation::new(
        CorrelationKind::Ownership,
        format!("replicaset/{namespace}/{rs}").parse().expect("id"),
        vec![
            hop(&format!("pod/{namespace}/{pod}"), Relation::Start, seq),
            hop(
                &format!("replicaset/{namespace}/{rs}"),
                Relation::OwnedBy,
                seq + 1,
            ),
        ],
        Detail::Ownership { depth: 1 },
        Confidence {
            percent: 100,
            basis: vec![Basis::RecordedLinks],
        },
    )
}

fn batch(time: u64, changes: Vec<(Correlation, i64)>) -> ClosedBatch {
    ClosedBatch {
        time: time * SECOND,
        changes,
    }
}

fn store(history_count: usize, history_max_age: Duration) -> Store {
    Store::new(StoreSettings {
        history_count,
        history_max_age,
        facts_per_entity: 3,
        facts_max: 5,
    })
}

#[test]
fn current_correlations_are_indexed_and_their_graph_is_reference_counted() {
    let store = store(10, Duration::from_secs(3600));
    let a = ownership("default", "a", "web", 1);
    let b = ownership("other", "b", "web", 3);
    store.apply(batch(10, vec![(a.clone(), 1), (b.clone(), 1)]));
    {
        let state = store.read();
        assert_eq!(state.current_len(), 2);
        assert!(state.has_entity("pod/default/a") && state.has_entity("replicaset/other/web"));
        let by_entity = Filter {
            entity: Some("pod/default/a".into()),
            ..Filter::default()
        };
        let (found, total) = state.list(&by_entity, false, 10);
        assert_eq!(total, 1);
        assert_eq!(*found[0].correlation, a);
        assert_eq!(&*found[0].id, correlation_id(&a).as_str());
        assert_eq!(found[0].since, 10 * SECOND);
        let by_namespace = Filter {
            namespace: Some("other".into()),
            ..Filter::default()
        };
        assert_eq!(state.list(&by_namespace, false, 10).1, 1);
        let ends: Vec<_> = state.links_from("pod/default/a").cloned().collect();
        assert_eq!(
            ends,
            vec![(
                Relation::OwnedBy,
                Arc::from("replicaset/default/web"),
                Arc::from("kubernetes/cluster/2")
            )]
        );
        assert_eq!(state.fact_time("kubernetes/cluster/2"), Some(2 * SECOND));
        assert_eq!(
            state.current_by_kind().get(&("ownership", "ownership")),
            Some(&2)
        );
    }
    store.apply(batch(11, vec![(a.clone(), -1)]));
    let state = store.read();
    assert_eq!(state.current_len(), 1);
    assert!(
        !state.has_entity("pod/default/a"),
        "no current correlation mentions it"
    );
    assert_eq!(state.links_from("pod/default/a").count(), 0);
    assert_eq!(state.fact_time("kubernetes/cluster/2"), None);
    let retracted = state.get(&correlation_id(&a)).expect("kept in the history");
    assert_eq!(retracted.until, Some(11 * SECOND));
    let (history, _) = state.list(&Filter::default(), true, 10);
    assert_eq!(history.len(), 1);
}

#[test]
fn a_batch_that_adds_what_is_current_or_removes_what_is_not_changes_nothing() {
    let store = store(10, Duration::from_secs(3600));
    let a = ownership("default", "a", "web", 1);
    store.apply(batch(1, vec![(a.clone(), 1)]));
    store.apply(batch(2, vec![(a.clone(), 1)]));
    store.apply(batch(3, vec![(ownership("default", "z", "web", 9), -1)]));
    let state = store.read();
    assert_eq!(state.current_len(), 1);
    assert_eq!(
        state.get(&correlation_id(&a)).expect("current").since,
        SECOND
    );
    assert_eq!(state.history_len(), 0);
}

#[test]
fn history_keeps_at_most_the_count_and_nothing_older_than_the_age() {
    let store = store(3, Duration::from_secs(100));
    let all: Vec<Correlation> = (0..5)
        .map(|i| ownership("default", &format!("p{i}"), "web", 10 * i + 1))
        .collect();
    store.apply(batch(1, all.iter().map(|c| (c.clone(), 1)).collect()));
    for (i, correlation) in all.iter().enumerate() {
        store.apply(batch(2 + i as u64, vec![(correlation.clone(), -1)]));
    }
    {
        let state = store.read();
        assert_eq!(state.history_len(), 3, "the count bounds the history");
        let (kept, _) = state.list(&Filter::default(), true, 10);
        let untils: Vec<_> = kept.iter().map(|s| s.until.expect("retracted")).collect();
        assert_eq!(
            untils,
            vec![6 * SECOND, 5 * SECOND, 4 * SECOND],
            "newest first"
        );
        assert!(state.get(&correlation_id(&all[0])).is_none());
    }
    // Retracted at 4, 5 and 6 s: a tick at 105 s keeps what is at most 100 s older.
    store.apply(batch(105, vec![]));
    assert_eq!(store.read().history_len(), 2);
    store.apply(batch(106, vec![]));
    assert_eq!(store.read().history_len(), 1);
    store.apply(batch(200, vec![]));
    assert_eq!(store.read().history_len(), 0);
}

#[test]
fn listing_filters_by_time_range_and_limits() {
    let store = store(0, Duration::ZERO);
    for i in 0..10u64 {
        store.apply(batch(
            100 + i,
            vec![(ownership("default", &format!("p{i}"), "web", 10 * i + 1), 1)],
        ));
    }
    let state = store.read();
    let range = Filter {
        from: Some(102 * SECOND),
        to: Some(105 * SECOND),
        ..Filter::default()
    };
    let (found, total) = state.list(&range, false, 2);
    assert_eq!(total, 3);
    let since: Vec<_> = found.iter().map(|s| s.since / SECOND).collect();
    assert_eq!(since, vec![104, 103]);
    let kind = Filter {
        kind: Some("oom_restart".into()),
        ..Filter::default()
    };
    assert_eq!(state.list(&kind, false, 10).1, 0);
}

/// Writes down what a store sink tells its observer.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl StoreObserver for Recorder {
    fn arrived(&mut self, tick_end: TimeNs) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("arrived {tick_end}"));
    }

    fn applied(&mut self, _took: Duration) {
        self.0.lock().expect("lock").push("applied".to_owned());
    }
}

#[tokio::test]
async fn the_sink_applies_every_batch_and_publishes_it() {
    let store = store(10, Duration::from_secs(60));
    let mut changes = store.subscribe();
    let (tx, rx) = mpsc::channel(4);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Box::new(store.sink().observed_by(Recorder(Arc::clone(&seen))));
    let running = tokio::spawn(sink.run(rx));
    tx.send(batch(1, vec![(ownership("default", "a", "web", 1), 1)]))
        .await
        .expect("send");
    tx.send(batch(2, vec![(ownership("default", "b", "web", 2), 1)]))
        .await
        .expect("send");
    drop(tx);
    let report = running.await.expect("join").expect("run");
    assert_eq!(report.batches, 2);
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![
            format!("arrived {SECOND}"),
            "applied".to_owned(),
            format!("arrived {}", 2 * SECOND),
            "applied".to_owned(),
        ],
        "the observer hears of each batch before and after it is applied"
    );
    assert_eq!(changes.recv().await.expect("published").time, SECOND);
    assert_eq!(store.read().current_len(), 2);
}

#[test]
fn pages_and_root_cause_groups_follow_the_newest_first_order() {
    let store = store(10, Duration::from_secs(3600));
    // Two pods of `web` and one of `api`, each a tick apart.
    store.apply(batch(1, vec![(ownership("default", "a", "web", 1), 1)]));
    store.apply(batch(2, vec![(ownership("default", "b", "api", 3), 1)]));
    store.apply(batch(3, vec![(ownership("default", "c", "web", 5), 1)]));
    let state = store.read();
    let (page, total) = state.list_page(&Filter::default(), false, 1, 1);
    assert_eq!(total, 3);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].since, 2 * SECOND);
    let (groups, total) = state.groups(&Filter::default(), false, 0, 10, 1);
    assert_eq!(total, 2);
    assert_eq!(groups[0].root_cause, "replicaset/default/web");
    assert_eq!(groups[0].count, 2);
    assert_eq!(groups[0].newest.len(), 1);
    assert_eq!(groups[0].newest[0].since, 3 * SECOND);
    assert_eq!(groups[1].root_cause, "replicaset/default/api");
    let (second, _) = state.groups(&Filter::default(), false, 1, 10, 1);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].root_cause, "replicaset/default/api");
    let incidents = Filter {
        incidents_only: true,
        ..Filter::default()
    };
    assert_eq!(
        state.list(&incidents, false, 10).1,
        0,
        "ownership is context"
    );
}

fn kube_event(seq: u64, involved: &str) -> tapio_model::Fact {
    tapio_model::Fact {
        id: FactId::new("kubernetes", "cluster", seq),
        time_ns: seq * SECOND,
        payload: tapio_model::FactPayload::KubeEvent(tapio_model::KubeEvent {
            involved: involved.parse().expect("entity id"),
            reason: "BackOff".into(),
            message: String::new(),
            component: "kubelet".into(),
            event_type: tapio_model::EventType::Warning,
            count: 1,
            first_ns: seq * SECOND,
            last_ns: seq * SECOND,
        }),
    }
}

#[test]
fn the_fact_history_is_bounded_per_entity_and_in_all() {
    let store = store(10, Duration::from_secs(3600));
    // Out of order: 4 arrives before 2.
    for seq in [1, 4, 2, 3] {
        store.record_fact(&kube_event(seq, "pod/default/a"));
    }
    // At most 3 per entity: the oldest (1) went.
    let (facts, total) = store.facts_about("pod/default/a", None, 10);
    assert_eq!(total, 3);
    let times: Vec<u64> = facts.iter().map(|fact| fact.time / SECOND).collect();
    assert_eq!(times, [4, 3, 2]);
    assert_eq!(facts[0].kind, "kube_event");
    assert_eq!(facts[0].id.as_ref(), "kubernetes/cluster/4");
    // Before a time, newest first, limited.
    let (earlier, total) = store.facts_about("pod/default/a", Some(4 * SECOND), 1);
    assert_eq!(total, 2);
    assert_eq!(earlier[0].time, 3 * SECOND);
    // The same fact twice is kept once.
    store.record_fact(&kube_event(4, "pod/default/a"));
    assert_eq!(store.facts_about("pod/default/a", None, 10).1, 3);
    // At most 5 in all: the oldest in event time go first, whichever entity holds them.
    for seq in [5, 6, 7] {
        store.record_fact(&kube_event(seq, "pod/default/b"));
    }
    assert_eq!(store.facts_kept(), (5, 8));
    let (a, _) = store.facts_about("pod/default/a", None, 10);
    assert_eq!(
        a.iter().map(|fact| fact.time / SECOND).collect::<Vec<_>>(),
        [4, 3]
    );
    assert_eq!(store.facts_about("pod/default/nobody", None, 10).1, 0);
}
