//! The bad rollout rule against a recomputation from scratch at every tick, through the rule
//! harness (ReplicaSets of two Deployments appearing and going away, pods moving between them,
//! endpoints becoming ready and not, failures of every kind and look-alikes, arriving out of
//! order within the lateness and a few beyond it), and named cases: a rollout whose new pods
//! crash-loop, one whose new pods become ready, and an old pod's failure.

use std::collections::BTreeMap;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    ContainerExit, ContainerReady, Correlation, CorrelationKind, Detail, EntityId, EventType, Fact,
    FactId, FactPayload, KubeEvent, Observation, OwnerRef, Relation, ServiceEndpoint, StateObject,
    StateRecord, StateUpdate, TimeNs, WorkloadObject,
};

use super::{Revision, correlation, failure, from_config, pod_of, ready_pod, revision, verdict};
use crate::clock::{Tick, TickClock};
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::ownership::tests::state_at;

const LATENESS: TimeNs = 2_000 * MS;
const SECOND: TimeNs = 1_000 * MS;
/// How long after a new ReplicaSet its pods' failures count, in the oracle.
const WITHIN: TimeNs = 15 * SECOND;
/// How long a failure counts, ms (= ticks), in the oracle.
const KEEP_FOR_MS: Tick = 10_000;

fn config(within: TimeNs, keep_for_ms: u64) -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.bad_rollout.within = Duration::from_nanos(within);
    config.bad_rollout.keep_for = Duration::from_millis(keep_for_ms);
    config
}

fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

fn fact(seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kubelet", "n1", seq),
        time_ns,
        payload,
    })
}

fn update(
    seq: u64,
    time_ns: TimeNs,
    since_ns: TimeNs,
    diff: i8,
    object: StateObject,
) -> Observation {
    Observation::State(StateUpdate {
        time_ns,
        diff,
        record: StateRecord {
            evidence: FactId::new("kubernetes", "cluster", seq),
            since_ns,
            object,
        },
    })
}

fn owned_by(child: &str, owner: &str) -> StateObject {
    StateObject::Workload(WorkloadObject {
        entity: entity(child),
        uid: "uid".into(),
        owner: Some(OwnerRef {
            entity: entity(owner),
            uid: "uid".into(),
        }),
        node: None,
    })
}

fn endpoint(pod: &str, address: &str, ready: bool) -> StateObject {
    StateObject::ServiceEndpoint(ServiceEndpoint {
        service: entity("service/ns/web"),
        endpoint: entity(&format!("endpoint/{address}")),
        pod: Some(entity(pod)),
        ready,
    })
}

fn container_exit(seq: u64, at: TimeNs, pod: Option<&str>) -> Observation {
    fact(
        seq,
        at,
        FactPayload::ContainerExit(ContainerExit {
            container_id: format!("c{seq}").into(),
            container_name: "app".into(),
            pod: pod.map(entity),
            exit_code: 1,
            reason: "Error".into(),
            restart_count: 1,
        }),
    )
}

fn ready(seq: u64, at: TimeNs, pod: &str, is_ready: bool) -> Observation {
    fact(
        seq,
        at,
        FactPayload::ContainerReady(ContainerReady {
            pod: entity(pod),
            container_name: "app".into(),
            container_id: "c".into(),
            ready: is_ready,
            restart_count: 0,
        }),
    )
}

fn event(seq: u64, at: TimeNs, involved: &str, reason: &str, warning: bool) -> Observation {
    fact(
        seq,
        at,
        FactPayload::KubeEvent(KubeEvent {
            involved: entity(involved),
            reason: reason.into(),
            message: String::new(),
            component: "kubelet".into(),
            event_type: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            count: 1,
            first_ns: at,
            last_ns: at,
        }),
    )
}

fn sorted(mut stream: Vec<Observation>) -> Vec<Observation> {
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    stream
}

/// A random stream for one seed, on a 500 ms grid: three ReplicaSets of Deployment `d` and
/// one of `e` appearing (some going away), four pods owned by random ReplicaSets (some moving),
/// endpoints of the pods ready or not (some changing), and failures and look-alikes of them.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let grid = |steps: u64| steps * 500 * MS;
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let insert =
        |out: &mut Vec<Observation>, seq: u64, from: TimeNs, object: StateObject, rng: &mut Rng| {
            out.push(update(seq, from, from, 1, object.clone()));
            if rng.below(4) == 0 {
                out.push(update(
                    seq,
                    from + grid(5 + rng.below(20)),
                    from,
                    -1,
                    object,
                ));
            }
        };
    for (replicaset, deployment) in [
        ("replicaset/ns/d-1", "deployment/ns/d"),
        ("replicaset/ns/d-2", "deployment/ns/d"),
        ("replicaset/ns/d-3", "deployment/ns/d"),
        ("replicaset/ns/e-1", "deployment/ns/e"),
    ] {
        let from = T0 + grid(rng.below(40));
        insert(
            &mut out,
            next(),
            from,
            owned_by(replicaset, deployment),
            rng,
        );
    }
    let replicasets = [
        "replicaset/ns/d-1",
        "replicaset/ns/d-2",
        "replicaset/ns/d-3",
        "replicaset/ns/e-1",
    ];
    let pods = ["pod/ns/p0", "pod/ns/p1", "pod/ns/p2", "pod/ns/p3"];
    for pod in pods {
        for _ in 0..1 + rng.below(2) {
            let from = T0 + grid(rng.below(40));
            let owner = replicasets[rng.below(4) as usize];
            insert(&mut out, next(), from, owned_by(pod, owner), rng);
        }
        let from = T0 + grid(rng.below(40));
        let address = format!("10.0.0.{}:80", rng.below(4));
        insert(
            &mut out,
            next(),
            from,
            endpoint(pod, &address, rng.below(3) > 0),
            rng,
        );
    }
    for _ in 0..40 {
        let at = T0 + grid(rng.below(60));
        let pod = pods[rng.below(4) as usize];
        let observation = match rng.below(7) {
            0 => container_exit(next(), at, Some(pod)),
            1 => container_exit(next(), at, None),
            2 => ready(next(), at, pod, false),
            3 => ready(next(), at, pod, true),
            4 => event(next(), at, pod, "Unhealthy", rng.below(4) > 0),
            5 => event(
                next(),
                at,
                pod,
                ["BackOff", "Pulled"][rng.below(2) as usize],
                true,
            ),
            _ => event(next(), at, "replicaset/ns/d-2", "BackOff", true),
        };
        out.push(observation);
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    out.extend(heartbeats(T0, end + 10 * SECOND + 2 * LATENESS, 500 * MS));
    sorted(out)
}

/// From scratch, at `tick`: over the state held and the failures entered by then and within
/// `keep_for` of their own tick, for every pair of ReplicaSets of one Deployment where the
/// later appeared after the earlier and the earlier has a pod whose endpoint is ready, the
/// failures of the later one's pods within the bound after it appeared; per later ReplicaSet,
/// the latest such earlier one, the first failure and the count of failed pods.
fn naive(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let held = state_at(arrived, entered, tick, 0);
    let revisions: Vec<(EntityId, Revision)> = held.iter().filter_map(revision).collect();
    let pods: Vec<(EntityId, EntityId)> = held.iter().filter_map(pod_of).collect();
    let ready_pods: Vec<EntityId> = held.iter().filter_map(ready_pod).collect();
    let failures: Vec<_> = arrived
        .iter()
        .zip(entered)
        .filter_map(|(observation, at)| match (observation, at) {
            (Observation::Fact(fact), Some(at)) if *at <= tick => Some(fact),
            _ => None,
        })
        .filter(|fact| tick < clock.tick_of(fact.time_ns) + KEEP_FOR_MS)
        .filter_map(failure)
        .collect();
    let has_ready_pod = |replicaset: &EntityId| {
        pods.iter()
            .any(|(pod, owner)| owner == replicaset && ready_pods.contains(pod))
    };
    let mut by_new: BTreeMap<(EntityId, Revision), Vec<(Revision, EntityId, _)>> = BTreeMap::new();
    for (deployment, later) in &revisions {
        for (other, earlier) in &revisions {
            if other != deployment
                || earlier.since >= later.since
                || !has_ready_pod(&earlier.replicaset)
            {
                continue;
            }
            for (pod, evidence) in &failures {
                let in_new = pods
                    .iter()
                    .filter(|(p, owner)| p == pod && *owner == later.replicaset)
                    .count();
                let in_window =
                    later.since <= evidence.time && evidence.time - later.since <= WITHIN;
                for _ in 0..in_new {
                    if in_window {
                        by_new
                            .entry((deployment.clone(), later.clone()))
                            .or_default()
                            .push((earlier.clone(), pod.clone(), evidence.clone()));
                    }
                }
            }
        }
    }
    let mut expected = BTreeMap::new();
    for ((deployment, later), candidates) in by_new {
        let refs: Vec<_> = candidates.iter().map(|(r, p, e)| (r, p, e)).collect();
        let verdict = verdict(&refs).expect("candidates");
        *expected
            .entry(correlation(&deployment, &later, &verdict))
            .or_insert(0) += 1;
    }
    expected
}

#[test]
fn bad_rollout_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut several, mut retracted, mut late, mut matched) = (0, 0, 0, 0);
    for seed in 1..=16 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let config = config(WITHIN, KEEP_FOR_MS);
        let harness = RuleHarness::from_table(from_config, &config).expect("enabled");
        let rule = from_config(&config).expect("enabled");
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        assert_eq!(
            run.entered,
            entry_ticks(&arrived, clock, LATENESS, |fact| rule.reads(fact)),
            "seed {seed}"
        );
        late += run.report.late;
        let seen = assert_every_tick(
            &run,
            clock,
            |tick| naive(&arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        retracted += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0 {
                matched += 1;
                several += usize::from(correlation.confidence.percent == 90);
            }
        }
    }
    assert!(
        matched > 20 && several > 5 && retracted > 20 && late > 5,
        "{matched} {several} {retracted} {late}"
    );
}

#[test]
fn bad_rollout_does_not_depend_on_arrival_order_or_workers() {
    for seed in 51..=54 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let harness =
            RuleHarness::from_table(from_config, &config(WITHIN, KEEP_FOR_MS)).expect("on");
        let in_order = harness.run(stream.clone()).expect("run");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
    }
}

/// Deployment `web` at revision `web-1` with a ready pod, rolled out to `web-2` with two pods
/// one minute later; then `then` happens.
fn rollout(then: Vec<Observation>) -> Vec<Correlation> {
    let rolled = T0 + 60 * SECOND;
    let mut stream = vec![
        update(
            1,
            T0,
            T0,
            1,
            owned_by("replicaset/ns/web-1", "deployment/ns/web"),
        ),
        update(
            2,
            T0,
            T0,
            1,
            owned_by("pod/ns/web-1-a", "replicaset/ns/web-1"),
        ),
        update(
            3,
            T0,
            T0,
            1,
            endpoint("pod/ns/web-1-a", "10.0.0.1:80", true),
        ),
        update(
            4,
            rolled,
            rolled,
            1,
            owned_by("replicaset/ns/web-2", "deployment/ns/web"),
        ),
        update(
            5,
            rolled,
            rolled,
            1,
            owned_by("pod/ns/web-2-a", "replicaset/ns/web-2"),
        ),
        update(
            6,
            rolled,
            rolled,
            1,
            owned_by("pod/ns/web-2-b", "replicaset/ns/web-2"),
        ),
    ];
    stream.extend(then);
    stream.extend(heartbeats(T0, rolled + 120 * SECOND, 500 * MS));
    let harness =
        RuleHarness::from_table(from_config, &config(15 * 60 * SECOND, 3_600_000)).expect("on");
    let run = harness.run(sorted(stream)).expect("run");
    run.held_at(run.report.last_tick).into_keys().collect()
}

#[test]
fn new_pods_crash_looping_while_the_old_one_is_ready_is_a_bad_rollout() {
    let rolled = T0 + 60 * SECOND;
    let held = rollout(vec![
        container_exit(10, rolled + 20 * SECOND, Some("pod/ns/web-2-a")),
        event(11, rolled + 25 * SECOND, "pod/ns/web-2-b", "BackOff", true),
        container_exit(12, rolled + 40 * SECOND, Some("pod/ns/web-2-a")),
    ]);
    assert_eq!(held.len(), 1, "{held:#?}");
    let correlation = &held[0];
    assert_eq!(correlation.kind, CorrelationKind::BadRollout);
    assert_eq!(correlation.root_cause, entity("replicaset/ns/web-2"));
    let path: Vec<(String, Relation)> = correlation
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation))
        .collect();
    assert_eq!(
        path,
        [
            ("replicaset/ns/web-2".to_string(), Relation::Start),
            ("pod/ns/web-2-a".to_string(), Relation::Caused),
        ]
    );
    assert_eq!(
        correlation.chain[1].fact_id,
        FactId::new("kubelet", "n1", 10)
    );
    assert_eq!(
        correlation.detail,
        Detail::BadRollout {
            deployment: entity("deployment/ns/web"),
            previous: entity("replicaset/ns/web-1"),
            failed_pods: 2,
            after_ns: 20 * SECOND,
        }
    );
    assert_eq!(correlation.confidence.percent, 90);
    let explained = tapio_model::render::explain(correlation);
    assert!(
        explained.starts_with(
            "the rollout of deployment/ns/web to replicaset/ns/web-2 went bad: 2 new pods failed"
        ),
        "{explained}"
    );
}

#[test]
fn new_pods_that_become_ready_are_a_good_rollout() {
    let rolled = T0 + 60 * SECOND;
    let held = rollout(vec![
        ready(10, rolled + 5 * SECOND, "pod/ns/web-2-a", true),
        ready(11, rolled + 6 * SECOND, "pod/ns/web-2-b", true),
        update(
            12,
            rolled + 6 * SECOND,
            rolled + 6 * SECOND,
            1,
            endpoint("pod/ns/web-2-a", "10.0.0.2:80", true),
        ),
        // A Normal Event and another reason are no failures either.
        event(
            13,
            rolled + 7 * SECOND,
            "pod/ns/web-2-b",
            "Unhealthy",
            false,
        ),
        event(14, rolled + 7 * SECOND, "pod/ns/web-2-b", "Pulled", true),
    ]);
    assert!(held.is_empty(), "{held:#?}");
}

#[test]
fn an_old_pods_failure_does_not_blame_the_new_revision() {
    let rolled = T0 + 60 * SECOND;
    let held = rollout(vec![
        container_exit(10, rolled + 20 * SECOND, Some("pod/ns/web-1-a")),
        ready(11, rolled + 21 * SECOND, "pod/ns/web-1-a", false),
    ]);
    assert!(held.is_empty(), "{held:#?}");
}

#[test]
fn new_pods_failing_with_no_ready_old_pod_or_long_after_are_not_blamed() {
    let rolled = T0 + 60 * SECOND;
    // The old pod's endpoint is not ready when the new pods fail.
    let held = rollout(vec![
        update(
            3,
            rolled,
            T0,
            -1,
            endpoint("pod/ns/web-1-a", "10.0.0.1:80", true),
        ),
        container_exit(10, rolled + 20 * SECOND, Some("pod/ns/web-2-a")),
    ]);
    assert!(held.is_empty(), "{held:#?}");
    // A failure before the new revision appeared is not the rollout's.
    let held = rollout(vec![container_exit(
        10,
        rolled - SECOND,
        Some("pod/ns/web-2-a"),
    )]);
    assert!(held.is_empty(), "{held:#?}");
}

#[test]
fn the_old_revision_scaled_away_retracts_the_verdict() {
    let rolled = T0 + 60 * SECOND;
    let stream = sorted(
        [
            vec![
                update(
                    1,
                    T0,
                    T0,
                    1,
                    owned_by("replicaset/ns/web-1", "deployment/ns/web"),
                ),
                update(
                    2,
                    T0,
                    T0,
                    1,
                    owned_by("pod/ns/web-1-a", "replicaset/ns/web-1"),
                ),
                update(
                    3,
                    T0,
                    T0,
                    1,
                    endpoint("pod/ns/web-1-a", "10.0.0.1:80", true),
                ),
                update(
                    4,
                    rolled,
                    rolled,
                    1,
                    owned_by("replicaset/ns/web-2", "deployment/ns/web"),
                ),
                update(
                    5,
                    rolled,
                    rolled,
                    1,
                    owned_by("pod/ns/web-2-a", "replicaset/ns/web-2"),
                ),
                container_exit(10, rolled + 20 * SECOND, Some("pod/ns/web-2-a")),
                // The old pod goes away.
                update(
                    2,
                    rolled + 50 * SECOND,
                    T0,
                    -1,
                    owned_by("pod/ns/web-1-a", "replicaset/ns/web-1"),
                ),
            ],
            heartbeats(T0, rolled + 60 * SECOND, 500 * MS),
        ]
        .concat(),
    );
    let harness =
        RuleHarness::from_table(from_config, &config(15 * 60 * SECOND, 3_600_000)).expect("on");
    let run = harness.run(stream).expect("run");
    let diffs: Vec<(TimeNs, i64)> = run
        .changes()
        .map(|(time, diff, _)| (time - rolled, diff))
        .collect();
    assert_eq!(diffs, [(20 * SECOND, 1), (50 * SECOND, -1)]);
}
