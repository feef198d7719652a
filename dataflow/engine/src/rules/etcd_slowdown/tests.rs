//! The etcd slowdown rule against a recomputation from scratch at every tick: random probes of
//! two etcd endpoints (fast, slow, not answering), leader changes, and Kubernetes Events
//! (Warning of a configured reason, Warning of another, Normal) about a few objects; facts out of
//! order within the lateness bound and a few beyond it. Then the named cases and look-alikes.

use std::collections::BTreeMap;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Correlation, CorrelationKind, Detail, EtcdLeaderChange, EtcdStatus, EtcdTrouble,
    EventType, Fact, FactId, FactPayload, KubeEvent, Observation, Relation, TimeNs,
};

use super::{Failure, Trouble, correlation, failure, trouble};
use crate::clock::Tick;
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, heartbeats,
    same_for_any_order_and_two_workers,
};
use crate::rules::etcd_slowdown;

const WITHIN: TimeNs = 3_000 * MS;
const KEEP_FOR: TimeNs = 5_000 * MS;
const LATENESS: TimeNs = 2_000 * MS;
const SLOW: TimeNs = 100 * MS;
const SECOND: TimeNs = 1_000 * MS;
const REASONS: [&str; 2] = ["FailedCreate", "FailedDelete"];

fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.etcd_slowdown.within = Duration::from_nanos(WITHIN);
    config.etcd_slowdown.keep_for = Duration::from_nanos(KEEP_FOR);
    config.etcd_slowdown.slow_read = Duration::from_nanos(SLOW);
    config.etcd_slowdown.reasons = REASONS.iter().map(|r| r.to_string()).collect();
    config
}

fn harness() -> RuleHarness {
    RuleHarness::from_table(etcd_slowdown::from_config, &config()).expect("enabled")
}

fn reasons() -> Vec<String> {
    REASONS.iter().map(|r| r.to_string()).collect()
}

/// A probe of `endpoint` at `at`: answered in `latency` ns, or not at all.
fn status(seq: u64, endpoint: &str, at: TimeNs, latency: u64, healthy: bool) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("etcd", "cp-1", seq),
        time_ns: at,
        payload: FactPayload::EtcdStatus(EtcdStatus {
            endpoint: endpoint.into(),
            healthy,
            latency_ns: latency,
            leader: if healthy { 0xa1 } else { 0 },
            raft_term: 3,
            db_size: 4096,
            db_size_in_use: 2048,
            error: if healthy {
                String::new()
            } else {
                "a read took longer than 5s".into()
            },
        }),
    })
}

fn leader_change(seq: u64, endpoint: &str, at: TimeNs) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("etcd", "cp-1", seq),
        time_ns: at,
        payload: FactPayload::EtcdLeaderChange(EtcdLeaderChange {
            endpoint: endpoint.into(),
            previous: 0xa1,
            leader: 0xb2,
            raft_term: 4,
        }),
    })
}

fn event(seq: u64, at: TimeNs, object: &str, reason: &str, warning: bool) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kubernetes", "cluster", seq),
        time_ns: at,
        payload: FactPayload::KubeEvent(KubeEvent {
            involved: object.parse().expect("an entity"),
            reason: reason.into(),
            message: "etcdserver: request timed out".into(),
            component: "replicaset-controller".into(),
            event_type: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            count: 1,
            first_ns: at,
            last_ns: at,
        }),
    })
}

fn sorted(mut stream: Vec<Observation>, until: TimeNs) -> Vec<Observation> {
    stream.extend(heartbeats(T0, until, 500 * MS));
    stream.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    stream
}

/// Probes of two endpoints every second (mostly fast, some slow, some unanswered), a few
/// leader changes, and Events on a 250 ms grid over 20 s: Warning of a configured reason,
/// Warning of another, Normal of a configured one.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for second in 0..20 {
        for endpoint in ["10.0.0.1:2379", "10.0.0.2:2379"] {
            let at = T0 + second * SECOND + rng.below(4) * 250 * MS;
            let (latency, healthy) = match rng.below(6) {
                0 => (SLOW + rng.below(5) * 100 * MS, true),
                1 => (5 * SECOND, false),
                _ => (rng.below(SLOW / MS) * MS, true),
            };
            out.push(status(next(), endpoint, at, latency, healthy));
        }
        if rng.below(8) == 0 {
            out.push(leader_change(next(), "10.0.0.1:2379", T0 + second * SECOND));
        }
    }
    let objects = [
        "replicaset/default/web-1",
        "job/batch/nightly",
        "pod/default/p",
    ];
    for _ in 0..14 {
        let at = T0 + rng.below(80) * 250 * MS;
        let object = objects[rng.below(3) as usize];
        let (reason, warning) = match rng.below(5) {
            0 => ("BackOff", true),
            1 => ("FailedCreate", false),
            2 => ("FailedDelete", true),
            _ => ("FailedCreate", true),
        };
        out.push(event(1000 + next(), at, object, reason, warning));
    }
    sorted(out, T0 + 30 * SECOND)
}

fn trouble_ms(tick_ms: u64) -> u64 {
    (WITHIN + KEEP_FOR) / MS + tick_ms
}

/// From scratch, at `tick`: for each failure that entered by then and is retained, the latest
/// retained trouble that entered by then, at or before it and within the bound.
fn naive(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let clock = harness().clock();
    let facts = || {
        arrived
            .iter()
            .zip(entered)
            .filter_map(move |(observation, at)| match (observation, at) {
                (Observation::Fact(fact), Some(at)) if *at <= tick => Some(fact),
                _ => None,
            })
    };
    let troubles: Vec<Trouble> = facts()
        .filter_map(|fact| trouble(SLOW, fact))
        .filter(|t| tick < clock.tick_of(t.evidence.time) + trouble_ms(clock.tick_ms()))
        .collect();
    let failures: Vec<Failure> = facts()
        .filter_map(|fact| failure(&reasons(), fact))
        .filter(|f| tick < clock.tick_of(f.evidence.time) + KEEP_FOR / MS)
        .collect();
    let mut out = BTreeMap::new();
    for failure in &failures {
        let at = failure.evidence.time;
        let latest = troubles
            .iter()
            .filter(|t| t.evidence.time <= at && at - t.evidence.time <= WITHIN)
            .max();
        if let Some(trouble) = latest {
            *out.entry(correlation(failure, trouble, WITHIN))
                .or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn etcd_slowdowns_equal_a_recomputation_from_scratch_at_every_tick() {
    let (mut found, mut retracted, mut late) = (0, 0, 0);
    for seed in 1..=12 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = harness();
        let run = harness.run(arrived.clone()).expect("run");
        late += run.report.late;
        let seen = assert_every_tick(
            &run,
            harness.clock(),
            |tick| naive(&arrived, &run.entered, tick),
            &format!("seed {seed}"),
        );
        retracted += seen.retracted;
        found += seen.appeared;
    }
    assert!(
        found > 10 && retracted > 5 && late > 3,
        "{found} {retracted} {late}"
    );
}

#[test]
fn etcd_slowdowns_do_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=45 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let in_order = harness().run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 0, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness(), shuffled, &in_order, seed);
    }
}

/// What the rule holds at 4 s of a stream of `facts`.
fn held(facts: Vec<Observation>) -> Vec<Correlation> {
    let run = harness().run(sorted(facts, T0 + 8 * SECOND)).expect("run");
    run.held_at((T0 + 4 * SECOND) / MS).into_keys().collect()
}

#[test]
fn a_slow_read_before_a_failed_create_is_linked() {
    let found = held(vec![
        status(1, "10.0.0.1:2379", T0 + 200 * MS, 2 * SECOND, true),
        leader_change(2, "10.0.0.2:2379", T0 + 500 * MS),
        status(3, "10.0.0.1:2379", T0 + 900 * MS, 1_500 * MS, true),
        event(
            4,
            T0 + 2 * SECOND,
            "replicaset/default/web-1",
            "FailedCreate",
            true,
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:#?}");
    let correlation = &found[0];
    assert_eq!(correlation.kind, CorrelationKind::EtcdSlowdown);
    assert_eq!(correlation.root_cause.to_string(), "endpoint/10.0.0.1:2379");
    let hops: Vec<(String, Relation, u64)> = correlation
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation, hop.fact_id.seq))
        .collect();
    // The latest trouble before the Event: the slow read at 0.9 s.
    assert_eq!(
        hops,
        vec![
            ("endpoint/10.0.0.1:2379".into(), Relation::Start, 3),
            ("replicaset/default/web-1".into(), Relation::FollowedBy, 4),
        ]
    );
    assert_eq!(
        correlation.detail,
        Detail::EtcdSlowdown {
            trouble: EtcdTrouble::Slow,
            latency_ns: 1_500 * MS,
            reason: "FailedCreate".into(),
            gap_ns: 1_100 * MS,
            within_ns: WITHIN,
        }
    );
    assert_eq!(correlation.confidence.percent, 50);
    assert_eq!(correlation.confidence.basis, vec![Basis::EtcdTroubleBefore]);
    assert_eq!(
        tapio_model::render::explain(correlation),
        "etcd at endpoint/10.0.0.1:2379 answered a read in 1500 ms, and 1 s later Kubernetes \
         reported FailedCreate for replicaset/default/web-1; linked by time order only"
    );
}

#[test]
fn a_leader_change_or_an_unanswered_probe_is_trouble_too() {
    let found = held(vec![
        leader_change(1, "10.0.0.2:2379", T0 + 500 * MS),
        event(2, T0 + SECOND, "job/batch/nightly", "FailedDelete", true),
    ]);
    assert_eq!(found.len(), 1);
    assert!(matches!(
        found[0].detail,
        Detail::EtcdSlowdown {
            trouble: EtcdTrouble::LeaderChange,
            ..
        }
    ));
    let found = held(vec![
        status(1, "10.0.0.1:2379", T0 + 500 * MS, 5 * SECOND, false),
        event(2, T0 + SECOND, "job/batch/nightly", "FailedCreate", true),
    ]);
    assert_eq!(found.len(), 1);
    assert!(matches!(
        found[0].detail,
        Detail::EtcdSlowdown {
            trouble: EtcdTrouble::Unavailable,
            ..
        }
    ));
}

#[test]
fn look_alikes_are_not_linked() {
    let fast = status(1, "10.0.0.1:2379", T0 + 500 * MS, 99 * MS, true);
    let slow = status(2, "10.0.0.1:2379", T0 + 500 * MS, 150 * MS, true);
    let failed_create = event(
        3,
        T0 + SECOND,
        "replicaset/default/web-1",
        "FailedCreate",
        true,
    );
    // A fast read; trouble after the Event; trouble beyond the bound; another reason; a
    // Normal Event.
    for facts in [
        vec![fast, failed_create.clone()],
        vec![
            status(2, "10.0.0.1:2379", T0 + 1_500 * MS, 150 * MS, true),
            failed_create.clone(),
        ],
        vec![
            status(2, "10.0.0.1:2379", T0, 150 * MS, true),
            event(
                3,
                T0 + 3_500 * MS,
                "replicaset/default/web-1",
                "FailedCreate",
                true,
            ),
        ],
        vec![
            slow.clone(),
            event(3, T0 + SECOND, "pod/default/p", "BackOff", true),
        ],
        vec![
            slow,
            event(3, T0 + SECOND, "pod/default/p", "FailedCreate", false),
        ],
    ] {
        let run = harness()
            .run(sorted(facts.clone(), T0 + 8 * SECOND))
            .expect("run");
        assert_eq!(run.changes().count(), 0, "{facts:#?}");
    }
}
