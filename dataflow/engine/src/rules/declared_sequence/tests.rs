//! Declared sequences against a recomputation from scratch at every tick, through the rule
//! harness (random kills, exits, readiness changes, Events and endpoint records, some retracted,
//! arriving out of order within the lateness and a few beyond it, ownership changing
//! underneath), and named cases: the built-in OOM sequence followed to the Service, the probe
//! failure before a restart, and their look-alikes that must not match.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::{
    CorrelationConfig, EntityKind, SequenceConfig, StepConfig, StepKind, StepWhere,
    builtin_sequences,
};
use tapio_model::{
    Basis, Confidence, ContainerExit, ContainerReady, Correlation, CorrelationKind, Detail,
    EntityId, EventType, Fact, FactId, FactPayload, Hop, KubeEvent, Observation, OomKill, OwnerRef,
    PodContainer, ProcessExit, Relation, ServiceEndpoint, StateObject, StateRecord, StateUpdate,
    TimeNs, WorkloadObject,
};

use super::{Selected, from_config, placed, select_fact, select_state, unplaced_container};
use crate::clock::{Tick, TickClock};
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::Evidence;
use crate::rules::ownership::tests::{CONTAINER_GRACE, naive_chains, state_at};

const LATENESS: TimeNs = 2_000 * MS;
const SECOND: TimeNs = 1_000 * MS;

fn step(kind: StepKind, on: Option<EntityKind>, conditions: StepWhere) -> StepConfig {
    StepConfig {
        kind,
        on,
        conditions,
    }
}

/// The sequences of the oracle: the built-in OOM chain and probe sequence with short bounds,
/// and one that crosses from a container to its pod's Events.
fn sequences() -> Vec<SequenceConfig> {
    let mut builtin = builtin_sequences();
    builtin[0].within = Duration::from_secs(3);
    builtin[0].keep_for = Duration::from_secs(8);
    builtin[1].within = Duration::from_secs(2);
    builtin[1].keep_for = Duration::from_secs(6);
    builtin.push(SequenceConfig {
        name: "oom_exit_then_warning".into(),
        enabled: true,
        within: Duration::from_secs(2),
        keep_for: Duration::from_secs(5),
        slack: Duration::ZERO,
        steps: vec![
            step(
                StepKind::ContainerExit,
                None,
                StepWhere {
                    reason: Some("OOMKilled".into()),
                    ..StepWhere::default()
                },
            ),
            step(
                StepKind::KubeEvent,
                Some(EntityKind::Pod),
                StepWhere {
                    event_type: Some("Warning".into()),
                    ..StepWhere::default()
                },
            ),
        ],
    });
    builtin
}

fn config(sequences: Vec<SequenceConfig>) -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.sequences = sequences;
    config.ownership.container_exit_grace = Duration::from_millis(CONTAINER_GRACE);
    config
}

fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

fn fact(source: &str, seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new(source, "n1", seq),
        time_ns,
        payload,
    })
}

fn state(
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

fn kill(seq: u64, at: TimeNs, pid: u32, container: Option<&str>) -> Observation {
    fact(
        "kernel",
        seq,
        at,
        FactPayload::OomKill(OomKill {
            pid,
            start_ns: T0,
            comm: "java".into(),
            container_id: container.map(Into::into),
            pod_uid: None,
            memcg: "/kubepods/x".into(),
            rss_pages: 100,
        }),
    )
}

fn exit(seq: u64, at: TimeNs, pid: u32, signal: u32, container: Option<&str>) -> Observation {
    fact(
        "kernel",
        seq,
        at,
        FactPayload::ProcessExit(ProcessExit {
            pid,
            start_ns: T0,
            comm: "java".into(),
            exit_code: 0,
            signal,
            container_id: container.map(Into::into),
        }),
    )
}

fn container_exit(seq: u64, at: TimeNs, id: &str, pod: Option<&str>, oom: bool) -> Observation {
    fact(
        "kubelet",
        seq,
        at,
        FactPayload::ContainerExit(ContainerExit {
            container_id: id.into(),
            container_name: "app".into(),
            pod: pod.map(entity),
            exit_code: if oom { 137 } else { 1 },
            reason: if oom { "OOMKilled" } else { "Error" }.into(),
            restart_count: 1,
        }),
    )
}

fn ready(seq: u64, at: TimeNs, pod: &str, id: &str, ready: bool) -> Observation {
    fact(
        "kubelet",
        seq,
        at,
        FactPayload::ContainerReady(ContainerReady {
            pod: entity(pod),
            container_name: "app".into(),
            container_id: id.into(),
            ready,
            restart_count: 1,
        }),
    )
}

fn event(seq: u64, at: TimeNs, involved: &str, reason: &str, warning: bool) -> Observation {
    fact(
        "kubernetes",
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

fn endpoint(pod: Option<&str>, address: &str, ready: bool) -> StateObject {
    StateObject::ServiceEndpoint(ServiceEndpoint {
        service: entity("service/ns/s0"),
        endpoint: entity(&format!("endpoint/{address}")),
        pod: pod.map(entity),
        ready,
    })
}

fn owned(seq: u64, at: TimeNs, child: &str, owner: &str) -> Observation {
    state(
        seq,
        at,
        at,
        1,
        StateObject::Workload(WorkloadObject {
            entity: entity(child),
            uid: "uid".into(),
            owner: Some(OwnerRef {
                entity: entity(owner),
                uid: "uid".into(),
            }),
            node: None,
        }),
    )
}

fn in_pod(seq: u64, at: TimeNs, id: &str, pod: &str) -> Observation {
    state(
        seq,
        at,
        at,
        1,
        StateObject::PodContainer(PodContainer {
            pod: entity(pod),
            pod_uid: "uid".into(),
            container_name: "app".into(),
            container_id: id.into(),
        }),
    )
}

/// A random stream for one seed, in event time order, on a 500 ms grid so that steps fall on
/// the bound and tie: kills with their exits and container exits, readiness changes, Events
/// and endpoint records (a third retracted later), containers in pods owned by a ReplicaSet
/// and a Deployment that come and go; heartbeats every 500 ms.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let containers = ["c0", "c1", "c2"];
    let pods = ["pod/ns/p0", "pod/ns/p1"];
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let grid = |steps: u64| steps * 500 * MS;
    for _ in 0..14 {
        let at = T0 + grid(rng.below(60));
        let pid = 7 + rng.below(2) as u32;
        let container = containers[rng.below(3) as usize];
        let pod = pods[rng.below(2) as usize];
        let known = |rng: &mut Rng| (rng.below(4) > 0).then_some(container);
        out.push(kill(next(), at, pid, known(rng)));
        for _ in 0..rng.below(3) {
            let signal = if rng.below(5) == 0 { 15 } else { 9 };
            out.push(exit(
                next(),
                at + grid(rng.below(6)),
                pid,
                signal,
                known(rng),
            ));
        }
        if rng.below(5) > 0 {
            let pod = (rng.below(5) > 0).then_some(pod);
            let oom = rng.below(3) > 0;
            out.push(container_exit(
                next(),
                at + grid(rng.below(6)),
                container,
                pod,
                oom,
            ));
        }
        for _ in 0..rng.below(3) {
            let id = containers[rng.below(3) as usize];
            let is_ready = rng.below(3) == 0;
            out.push(ready(next(), at + grid(rng.below(8)), pod, id, is_ready));
        }
        for _ in 0..rng.below(3) {
            let reason = ["Unhealthy", "BackOff"][rng.below(2) as usize];
            let warning = rng.below(3) > 0;
            let involved = if rng.below(6) == 0 {
                "deployment/ns/d"
            } else {
                pod
            };
            out.push(event(
                next(),
                at - grid(rng.below(3)),
                involved,
                reason,
                warning,
            ));
        }
        if rng.below(3) > 0 {
            let from = at + grid(rng.below(8));
            let address = ["10.0.0.1:80", "10.0.0.2:80"][rng.below(2) as usize];
            let object = endpoint(
                (rng.below(5) > 0).then_some(pod),
                address,
                rng.below(4) == 0,
            );
            let seq = next();
            out.push(state(seq, from, from, 1, object.clone()));
            if rng.below(3) == 0 {
                out.push(state(seq, from + grid(5 + rng.below(10)), from, -1, object));
            }
        }
    }
    for (index, id) in containers.iter().enumerate() {
        let from = T0 + grid(rng.below(40));
        let seq = next();
        out.push(in_pod(seq, from, id, pods[index % 2]));
        if rng.below(2) == 0 {
            let Observation::State(mut retract) = in_pod(seq, from, id, pods[index % 2]) else {
                unreachable!("in_pod is a state update")
            };
            retract.diff = -1;
            retract.time_ns = from + grid(5 + rng.below(30));
            out.push(Observation::State(retract));
        }
    }
    for (child, owner) in [
        ("pod/ns/p0", "replicaset/ns/r"),
        ("pod/ns/p1", "replicaset/ns/r"),
        ("replicaset/ns/r", "deployment/ns/d"),
    ] {
        let from = T0 + grid(rng.below(40));
        let seq = next();
        out.push(owned(seq, from, child, owner));
        if rng.below(3) == 0 {
            let Observation::State(mut retract) = owned(seq, from, child, owner) else {
                unreachable!("owned is a state update")
            };
            retract.diff = -1;
            retract.time_ns = from + grid(5 + rng.below(30));
            out.push(Observation::State(retract));
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    out.extend(heartbeats(T0, end + 10 * SECOND + 2 * LATENESS, 500 * MS));
    out.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    out
}

/// From scratch, at `tick`: for every enabled sequence, the observations each step selects
/// among the facts that entered by then and the state held then, each within `keep_for` of its
/// own tick; for each first step, the earliest next step (then the smallest) on the linking
/// entity, at or after the step before and within the bound of the first, and so on; the chain
/// one hop per step (`start`, then `followed_by` on the same entity, `caused` on another), then
/// the last container or pod (a `depends_on` hop when the last step's entity is not it) and
/// its owners when it has any.
fn naive(
    sequences: &[SequenceConfig],
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let held = state_at(arrived, entered, tick, CONTAINER_GRACE);
    let chains = naive_chains(&held, 8);
    let mut expected = BTreeMap::new();
    for sequence in sequences.iter().filter(|sequence| sequence.enabled) {
        let keep = u64::try_from(sequence.keep_for.as_millis()).expect("ms");
        let within = u64::try_from(sequence.within.as_nanos()).expect("ns");
        let slack = u64::try_from(sequence.slack.as_nanos()).expect("ns");
        let visible = |time: TimeNs| tick < clock.tick_of(time) + keep;
        let candidates: Vec<Vec<Selected>> = sequence
            .steps
            .iter()
            .map(|step| {
                let facts = arrived
                    .iter()
                    .zip(entered)
                    .filter_map(|(observation, at)| match (observation, at) {
                        (Observation::Fact(fact), Some(at)) if *at <= tick => Some(fact),
                        _ => None,
                    })
                    .filter_map(|fact| select_fact(step, fact));
                let records = held.iter().filter_map(|record| select_state(step, record));
                facts
                    .chain(records)
                    .filter(|selected| visible(selected.evidence.time))
                    .map(|selected| match unplaced_container(&selected) {
                        Some(container) => match chains.get(&container) {
                            Some(owners) => placed(selected, owners),
                            None => selected,
                        },
                        None => selected,
                    })
                    .collect()
            })
            .collect();
        let about = |selected: &Selected, on: EntityKind| {
            selected
                .about
                .iter()
                .find(|entity| entity.kind() == on.as_str())
                .cloned()
        };
        for first in &candidates[0] {
            let mut matched = vec![first.clone()];
            for (index, step) in sequence.steps.iter().enumerate().skip(1) {
                let on = step.on.expect("validated");
                let last = &matched[matched.len() - 1];
                let Some(key) = about(last, on) else { break };
                let next = candidates[index]
                    .iter()
                    .filter(|candidate| {
                        let at = candidate.evidence.time;
                        about(candidate, on).as_ref() == Some(&key)
                            && at + slack >= last.evidence.time
                            && at <= first.evidence.time + within
                    })
                    .min();
                match next {
                    Some(next) => matched.push(next.clone()),
                    None => break,
                }
            }
            if matched.len() < sequence.steps.len() {
                continue;
            }
            let mut chain: Vec<Hop> = Vec::new();
            for step in &matched {
                let relation = match chain.last() {
                    None => Relation::Start,
                    Some(previous) if previous.entity == step.about[0] => Relation::FollowedBy,
                    Some(_) => Relation::Caused,
                };
                chain.push(step.evidence.hop(&step.about[0], relation));
            }
            let last = &matched[matched.len() - 1];
            let anchor = last
                .about
                .iter()
                .find(|entity| entity.kind() == "container" || entity.kind() == "pod");
            if let Some(anchor) = anchor
                && let Some(owners) = chains.get(anchor)
            {
                if *anchor != last.about[0] {
                    chain.push(last.evidence.hop(anchor, Relation::DependsOn));
                }
                chain.extend(owners[1..].iter().cloned());
            } else if let Some(anchor) = anchor
                && *anchor != last.about[0]
            {
                chain.push(last.evidence.hop(anchor, Relation::DependsOn));
            }
            let correlation = Correlation::new(
                CorrelationKind::DeclaredSequence,
                first.about[0].clone(),
                chain,
                Detail::DeclaredSequence {
                    name: sequence.name.as_str().into(),
                    steps: sequence
                        .steps
                        .iter()
                        .map(|step| step.kind.as_str().into())
                        .collect(),
                    span_ns: last.evidence.time.saturating_sub(first.evidence.time),
                    within_ns: within,
                },
                Confidence {
                    percent: 80,
                    basis: vec![Basis::EveryStepObserved, Basis::DeclaredSteps],
                },
            );
            *expected.entry(correlation).or_insert(0) += 1;
        }
    }
    expected
}

/// At every closed tick, the rule holds exactly the matches a recomputation from scratch finds
/// over the facts and state visible then: facts arrive out of order within the lateness, one in
/// ten beyond it.
#[test]
fn declared_sequences_equal_a_recomputation_from_scratch_at_every_tick() {
    let sequences = sequences();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    let (mut owned, mut retracted, mut late, mut through_endpoints) = (0, 0, 0, 0);
    // Matches with a step before the one it follows, within the slack.
    let mut slacked = 0;
    for seed in 1..=12 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let config = config(sequences.clone());
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
            |tick| naive(&sequences, &arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        retracted += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0
                && let Detail::DeclaredSequence { name, .. } = &correlation.detail
            {
                *by_name.entry(name.to_string()).or_insert(0) += 1;
                owned += usize::from(
                    correlation
                        .chain
                        .iter()
                        .any(|hop| hop.entity.kind() == "deployment"),
                );
                through_endpoints += usize::from(
                    correlation
                        .chain
                        .iter()
                        .any(|hop| hop.relation == Relation::DependsOn),
                );
                slacked += usize::from(
                    correlation
                        .chain
                        .windows(2)
                        .any(|pair| pair[1].time < pair[0].time),
                );
            }
        }
    }
    // Every sequence matched, some with owners, some through an endpoint's pod; matches went
    // away; facts came late.
    assert!(
        by_name.len() == 3
            && by_name.values().all(|count| *count > 3)
            && owned > 5
            && through_endpoints > 3
            && retracted > 20
            && late > 10
            && slacked > 0,
        "{by_name:?} {owned} {through_endpoints} {retracted} {late} {slacked}"
    );
}

/// The output does not depend on the arrival order within the lateness, nor on the number of
/// workers.
#[test]
fn declared_sequences_do_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=44 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let harness = RuleHarness::from_table(from_config, &config(sequences())).expect("on");
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 4, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
    }
}

/// The observations of one OOM kill followed to the Service, each step `offset` after the kill,
/// with the pod's owners.
fn oom_incident(offsets: [TimeNs; 4], endpoint_ready: bool) -> Vec<Observation> {
    let at = T0 + 10 * SECOND;
    let mut out = vec![
        owned(1, T0, "pod/ns/web-1", "replicaset/ns/web-7f"),
        owned(2, T0, "replicaset/ns/web-7f", "deployment/ns/web"),
        in_pod(3, T0, "c-old", "pod/ns/web-1"),
        state(
            4,
            T0,
            T0,
            1,
            endpoint(Some("pod/ns/web-1"), "10.0.0.1:80", true),
        ),
        kill(5, at, 7, Some("c-old")),
        exit(6, at + offsets[0], 7, 9, Some("c-old")),
        container_exit(7, at + offsets[1], "c-old", Some("pod/ns/web-1"), true),
        // The readiness change names the pod's new container.
        ready(8, at + offsets[2], "pod/ns/web-1", "c-new", false),
    ];
    // The endpoint record changes: the ready one is retracted, the not-ready one inserted.
    out.push(state(
        4,
        at + offsets[3],
        T0,
        -1,
        endpoint(Some("pod/ns/web-1"), "10.0.0.1:80", true),
    ));
    out.push(state(
        9,
        at + offsets[3],
        at + offsets[3],
        1,
        endpoint(Some("pod/ns/web-1"), "10.0.0.1:80", endpoint_ready),
    ));
    out.extend(heartbeats(T0, at + 20 * SECOND, 500 * MS));
    out.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    out
}

fn held(config: &CorrelationConfig, stream: Vec<Observation>) -> Vec<Correlation> {
    let harness = RuleHarness::from_table(from_config, config).expect("enabled");
    let run = harness.run(stream).expect("run");
    run.held_at(run.report.last_tick).into_keys().collect()
}

fn builtin_only(name: &str) -> CorrelationConfig {
    let mut sequences = builtin_sequences();
    sequences.retain(|sequence| sequence.name == name);
    config(sequences)
}

#[test]
fn the_oom_sequence_is_followed_to_the_services_endpoint_and_the_pods_owners() {
    let config = builtin_only("oom_to_endpoint_not_ready");
    let offsets = [4 * MS, 40 * MS, 3 * SECOND, 4 * SECOND];
    let held = held(&config, oom_incident(offsets, false));
    assert_eq!(held.len(), 1, "{held:#?}");
    let correlation = &held[0];
    let path: Vec<(String, Relation)> = correlation
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation))
        .collect();
    let process = format!("process/n1/7/{T0}");
    assert_eq!(
        path,
        [
            (process.clone(), Relation::Start),
            (process.clone(), Relation::FollowedBy),
            ("container/c-old".to_string(), Relation::Caused),
            ("container/c-new".to_string(), Relation::Caused),
            ("service/ns/s0".to_string(), Relation::Caused),
            ("pod/ns/web-1".to_string(), Relation::DependsOn),
            ("replicaset/ns/web-7f".to_string(), Relation::OwnedBy),
            ("deployment/ns/web".to_string(), Relation::OwnedBy),
        ]
    );
    assert_eq!(correlation.root_cause.to_string(), process);
    assert_eq!(correlation.kind, CorrelationKind::DeclaredSequence);
    assert_eq!(
        correlation.detail,
        Detail::DeclaredSequence {
            name: "oom_to_endpoint_not_ready".into(),
            steps: [
                "oom_kill",
                "process_exit",
                "container_exit",
                "container_ready",
                "endpoint_ready"
            ]
            .map(Arc::from)
            .to_vec(),
            span_ns: 4 * SECOND,
            within_ns: 120 * SECOND,
        }
    );
    let explained = tapio_model::render::explain(correlation);
    assert!(
        explained.starts_with("sequence oom_to_endpoint_not_ready from process/n1/7/"),
        "{explained}"
    );
}

#[test]
fn look_alikes_of_the_oom_sequence_do_not_match() {
    let config = builtin_only("oom_to_endpoint_not_ready");
    // The endpoint stayed ready.
    let ok = [4 * MS, 40 * MS, 3 * SECOND, 4 * SECOND];
    assert!(held(&config, oom_incident(ok, true)).is_empty());
    // The container exit came long after the kill: past the bound of 2 minutes.
    let mut late = oom_incident(ok, false);
    for observation in &mut late {
        if let Observation::Fact(fact) = observation
            && matches!(fact.payload, FactPayload::ContainerExit(_))
        {
            fact.time_ns += 3 * 60 * SECOND;
        }
    }
    late.extend(heartbeats(T0, T0 + 4 * 60 * SECOND, 500 * MS));
    late.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    assert!(held(&config, late).is_empty());
    // The pod stopped being ready before its container exited: out of order.
    let before = [4 * MS, 3 * SECOND, 40 * MS, 4 * SECOND];
    assert!(held(&config, oom_incident(before, false)).is_empty());
}

/// The pod's readiness change carries the time Kubernetes recorded, to the second: it may be
/// up to a second before the kernel's time of the container exit it followed. The built-in
/// sequence's slack of one second takes it; a second and more before is out of order.
#[test]
fn a_readiness_change_recorded_to_the_second_follows_the_exit_within_the_slack() {
    let config = builtin_only("oom_to_endpoint_not_ready");
    let recorded = [4 * MS, 900 * MS, 200 * MS, 1_500 * MS];
    let held_now = held(&config, oom_incident(recorded, false));
    assert_eq!(held_now.len(), 1, "{held_now:#?}");
    let times: Vec<TimeNs> = held_now[0].chain[..5].iter().map(|hop| hop.time).collect();
    assert!(times[3] < times[2], "{times:?}");
    let too_early = [4 * MS, 1_300 * MS, 200 * MS, 1_500 * MS];
    assert!(held(&config, oom_incident(too_early, false)).is_empty());
    let mut strict = builtin_only("oom_to_endpoint_not_ready");
    strict.sequences[0].slack = Duration::ZERO;
    assert!(held(&strict, oom_incident(recorded, false)).is_empty());
}

/// The kernel reports a container's exit without its pod: the pod whose status lists the
/// container is what the next step, on the pod, follows.
#[test]
fn a_container_exit_without_its_pod_reaches_the_pod_through_its_container_list() {
    let config = builtin_only("oom_to_endpoint_not_ready");
    let offsets = [4 * MS, 40 * MS, 3 * SECOND, 4 * SECOND];
    let unnamed = |mut stream: Vec<Observation>| {
        for observation in &mut stream {
            if let Observation::Fact(fact) = observation
                && let FactPayload::ContainerExit(exit) = &mut fact.payload
            {
                exit.pod = None;
            }
        }
        stream
    };
    let found = held(&config, unnamed(oom_incident(offsets, false)));
    assert_eq!(found.len(), 1, "{found:#?}");
    // Without the pod's container list, nothing says which pod the container was in.
    let unlisted: Vec<Observation> = unnamed(oom_incident(offsets, false))
        .into_iter()
        .filter(|observation| {
            !matches!(observation, Observation::State(update)
                if matches!(update.record.object, StateObject::PodContainer(_)))
        })
        .collect();
    assert!(held(&config, unlisted).is_empty());
}

#[test]
fn an_endpoint_ready_again_retracts_the_match() {
    let config = builtin_only("oom_to_endpoint_not_ready");
    let at = T0 + 10 * SECOND;
    let mut stream = oom_incident([4 * MS, 40 * MS, 3 * SECOND, 4 * SECOND], false);
    stream.push(state(
        9,
        at + 9 * SECOND,
        at + 4 * SECOND,
        -1,
        endpoint(Some("pod/ns/web-1"), "10.0.0.1:80", false),
    ));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let harness = RuleHarness::from_table(from_config, &config).expect("enabled");
    let run = harness.run(stream).expect("run");
    let diffs: Vec<(TimeNs, i64)> = run
        .changes()
        .map(|(time, diff, _)| (time - at, diff))
        .collect();
    assert_eq!(diffs, [(4 * SECOND, 1), (9 * SECOND, -1)]);
}

#[test]
fn a_probe_failure_then_a_restart_of_the_pods_container_matches() {
    let config = builtin_only("probe_failure_restart");
    let at = T0 + 10 * SECOND;
    let mut stream = vec![
        owned(1, T0, "pod/ns/web-1", "replicaset/ns/web-7f"),
        in_pod(2, T0, "c-old", "pod/ns/web-1"),
        event(3, at, "pod/ns/web-1", "BackOff", true),
        event(4, at + SECOND, "pod/ns/web-1", "Unhealthy", true),
        event(5, at + 2 * SECOND, "pod/ns/web-1", "Unhealthy", true),
        // Another pod's container: not this pod's restart.
        container_exit(6, at + 10 * SECOND, "c-other", Some("pod/ns/web-2"), false),
        container_exit(7, at + 30 * SECOND, "c-old", Some("pod/ns/web-1"), false),
        container_exit(8, at + 40 * SECOND, "c-old", Some("pod/ns/web-1"), false),
    ];
    stream.extend(heartbeats(T0, at + 60 * SECOND, 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let held = held(&config, stream);
    // One match per Unhealthy Event, each with the earliest exit of the pod's container; the
    // BackOff Event starts none.
    assert_eq!(held.len(), 2, "{held:#?}");
    for correlation in &held {
        let path: Vec<(String, Relation)> = correlation
            .chain
            .iter()
            .map(|hop| (hop.entity.to_string(), hop.relation))
            .collect();
        assert_eq!(
            path,
            [
                ("pod/ns/web-1".to_string(), Relation::Start),
                ("container/c-old".to_string(), Relation::Caused),
                ("pod/ns/web-1".to_string(), Relation::OwnedBy),
                ("replicaset/ns/web-7f".to_string(), Relation::OwnedBy),
            ]
        );
        assert_eq!(
            correlation.chain[1].fact_id,
            FactId::new("kubelet", "n1", 7)
        );
    }
}

#[test]
fn a_disabled_sequence_matches_nothing_and_no_sequence_is_no_rule() {
    let mut sequences = builtin_sequences();
    for sequence in &mut sequences {
        sequence.enabled = false;
    }
    assert!(from_config(&config(sequences)).is_none());
    assert!(from_config(&config(Vec::new())).is_none());
}

#[test]
fn steps_select_by_kind_and_condition_and_name_what_they_are_about() {
    let sequences = builtin_sequences();
    let exit_step = &sequences[0].steps[1];
    let Observation::Fact(sigkill) = exit(1, T0, 7, 9, Some("c")) else {
        unreachable!("a fact")
    };
    let selected = select_fact(exit_step, &sigkill).expect("SIGKILL exit selected");
    assert_eq!(
        selected.about,
        [entity(&format!("process/n1/7/{T0}")), entity("container/c")]
    );
    assert_eq!(selected.evidence, Evidence::of(&sigkill));
    let Observation::Fact(sigterm) = exit(2, T0, 7, 15, None) else {
        unreachable!("a fact")
    };
    assert!(select_fact(exit_step, &sigterm).is_none());
    // The wrong kind is never selected.
    assert!(select_fact(&sequences[0].steps[0], &sigkill).is_none());
    let endpoint_step = &sequences[0].steps[4];
    let record = StateRecord {
        evidence: FactId::new("kubernetes", "cluster", 3),
        since_ns: T0,
        object: endpoint(Some("pod/ns/p"), "10.0.0.9:80", false),
    };
    let selected = select_state(endpoint_step, &record).expect("not ready selected");
    assert_eq!(
        selected.about,
        [
            entity("service/ns/s0"),
            entity("pod/ns/p"),
            entity("endpoint/10.0.0.9:80")
        ]
    );
    assert_eq!(selected.evidence.time, T0);
    let ready_record = StateRecord {
        object: endpoint(Some("pod/ns/p"), "10.0.0.9:80", true),
        ..record
    };
    assert!(select_state(endpoint_step, &ready_record).is_none());
}
