//! The rules retract what they concluded when their inputs retract or expire, and bad graphs
//! cannot make them run away. Each test drives the engine in-process with a scripted stream, or
//! one rule alone through the rule harness, which sees what the engine sees.

use tapio_config::CorrelationConfig;
use tapio_dataflow::harness::{RuleHarness, RuleRun};
use tapio_dataflow::rules::{MakeRule, oom_sequence, ownership};
use tapio_dataflow::{ClusterLayout, Engine, EngineSettings};
use tapio_model::render::explain;
use tapio_model::{
    ClosedBatch, Correlation, CorrelationKind, EntityId, Fact, FactId, FactPayload, Family,
    Heartbeat, Observation, Observed, OwnerRef, PodContainer, ProcessContainer, ProcessExit,
    Relation, StateObject, StateRecord, StateUpdate, TimeNs, WorkloadObject,
};

mod common;

use common::{SECOND, T0, timeline};

fn run(observations: Vec<Observation>, workers: usize) -> Vec<ClosedBatch> {
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel(1024);
    let (engine, inputs) = Engine::start(
        EngineSettings::default(),
        ClusterLayout::single(workers),
        batches_tx,
    )
    .expect("engine starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut router = tapio_dataflow::Router::new(ClusterLayout::single(workers), inputs);
        for observation in observations {
            assert!(router.route(observation).await);
        }
        router.finish().await;
    });
    engine.join().expect("engine finishes");
    let mut out = Vec::new();
    while let Ok(batch) = batches.try_recv() {
        out.push(batch);
    }
    out
}

/// Runs the rule `make` makes from the default configuration, alone, over `observations`.
fn run_rule(make: MakeRule, observations: Vec<Observation>) -> RuleRun {
    RuleHarness::from_table(make, &CorrelationConfig::default())
        .expect("enabled by default")
        .run(observations)
        .expect("the rule runs")
}

fn beats(from: TimeNs, to: TimeNs) -> Vec<Observation> {
    (0..)
        .map(|i| from + i * SECOND / 2)
        .take_while(|t| *t <= to)
        .map(|upto_ns| {
            Observation::Heartbeat(Heartbeat {
                source: "test".into(),
                node: "n".into(),
                upto_ns,
            })
        })
        .collect()
}

fn state(seq: u64, time_ns: TimeNs, diff: i8, object: StateObject) -> Observation {
    Observation::State(StateUpdate {
        time_ns,
        diff,
        record: StateRecord {
            evidence: FactId::new("test", "n", seq),
            since_ns: T0,
            object,
        },
    })
}

fn workload(entity: &str, owner: Option<&str>) -> StateObject {
    StateObject::Workload(WorkloadObject {
        entity: entity.parse().expect("entity"),
        uid: format!("uid-{entity}"),
        owner: owner.map(|owner| OwnerRef {
            entity: owner.parse().expect("owner"),
            uid: format!("uid-{owner}"),
        }),
        node: None,
    })
}

fn fact(seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("test", "n", seq),
        time_ns,
        payload,
    })
}

/// Sorts observations by time, heartbeats last among equals.
fn changes(batches: &[ClosedBatch], kind: CorrelationKind) -> Vec<(TimeNs, i64, Correlation)> {
    batches
        .iter()
        .flat_map(|batch| {
            batch
                .changes
                .iter()
                .filter(|(c, _)| c.kind == kind)
                .map(|(c, d)| (batch.time, *d, c.clone()))
        })
        .collect()
}

#[test]
fn ownership_chains_retract_with_the_link_they_go_through() {
    let mut stream = vec![
        state(1, T0, 1, workload("deployment/a/web", None)),
        state(
            2,
            T0,
            1,
            workload("replicaset/a/web-1", Some("deployment/a/web")),
        ),
        state(
            3,
            T0,
            1,
            workload("pod/a/web-1-x", Some("replicaset/a/web-1")),
        ),
        // The ReplicaSet loses its owner 5 s later (orphaned by a cascading delete).
        state(
            2,
            T0 + 5 * SECOND,
            -1,
            workload("replicaset/a/web-1", Some("deployment/a/web")),
        ),
    ];
    stream.extend(beats(T0, T0 + 10 * SECOND));
    for workers in [1, 3] {
        let out = changes(
            &run(timeline(stream.clone()), workers),
            CorrelationKind::Ownership,
        );
        let pod_chains: Vec<_> = out
            .iter()
            .filter(|(_, _, c)| c.chain[0].entity.to_string() == "pod/a/web-1-x")
            .map(|(t, d, c)| (*t - T0, *d, c.chain.len()))
            .collect();
        // pod → rs → deployment, then at +5 s: retracted and replaced by pod → rs.
        assert_eq!(
            pod_chains,
            vec![(0, 1, 3), (5 * SECOND, -1, 3), (5 * SECOND, 1, 2)],
            "{workers} workers"
        );
        assert!(out.iter().any(|(t, d, c)| *t == T0 + 5 * SECOND
            && *d == -1
            && c.chain[0].entity.to_string() == "replicaset/a/web-1"));
    }
}

#[test]
fn an_ownership_cycle_terminates_with_bounded_chains() {
    let mut stream = vec![
        state(1, T0, 1, workload("replicaset/a/x", Some("deployment/a/y"))),
        state(2, T0, 1, workload("deployment/a/y", Some("replicaset/a/x"))),
    ];
    stream.extend(beats(T0, T0 + 3 * SECOND));
    let out = changes(&run(timeline(stream), 2), CorrelationKind::Ownership);
    assert_eq!(out.len(), 2, "{out:#?}");
    for (_, diff, correlation) in out {
        assert_eq!(diff, 1);
        // Depth 8 (the default) plus the entity itself.
        assert_eq!(correlation.chain.len(), 9);
    }
}

fn oom_sequence(seq: u64, at: TimeNs, container: &str) -> Vec<Observation> {
    common::oom_sequence("test", "n", seq, at, container)
}

#[test]
fn an_oom_sequence_expires_after_keep_for() {
    // keep_for is 10 minutes by default: the match appears in the container exit's tick and
    // goes away 10 minutes after the kill's tick.
    let mut stream = oom_sequence(1, T0 + SECOND, "c1");
    stream.extend(beats(T0, T0 + 11 * 60 * SECOND));
    let run = run_rule(oom_sequence::from_config, timeline(stream));
    let shape: Vec<_> = run.changes().map(|(t, d, _)| (t - T0, d)).collect();
    assert_eq!(shape, vec![(1_100_000_000, 1), (601 * SECOND, -1)]);
}

#[test]
fn a_container_exit_after_the_window_is_not_a_match() {
    let mut stream = oom_sequence(1, T0 + SECOND, "c1");
    // Move the container exit 31 s after the kill: outside Δ = 30 s.
    if let Observation::Fact(fact) = &mut stream[2] {
        fact.time_ns = T0 + 32 * SECOND;
    }
    stream.extend(beats(T0, T0 + 40 * SECOND));
    let run = run_rule(oom_sequence::from_config, timeline(stream));
    assert!(run.batches.is_empty(), "{:#?}", run.batches);
    // The kill, the exit and the container exit were all taken in, on time.
    assert_eq!((run.report.facts, run.report.late), (3, 0));
}

/// Process 7 on node `n`, started at `T0`.
fn app_pid_7() -> EntityId {
    EntityId::Process {
        node: "n".into(),
        pid: 7,
        start_ns: T0,
    }
}

/// `process` runs `/bin/app` in container `c1`.
fn app_process(process: EntityId) -> StateObject {
    StateObject::ProcessContainer(ProcessContainer {
        process,
        container_id: "c1".into(),
        filename: "/bin/app".into(),
    })
}

/// Container `c1` is the `app` container of `pod/a/p`.
fn app_container() -> StateObject {
    StateObject::PodContainer(PodContainer {
        pod: "pod/a/p".parse().expect("pod"),
        pod_uid: "uid-p".into(),
        container_name: "app".into(),
        container_id: "c1".into(),
    })
}

#[test]
fn processes_get_no_ownership_correlation_of_their_own() {
    let member = app_process(app_pid_7());
    let mut stream = vec![
        state(1, T0, 1, app_container()),
        state(2, T0, 1, member.clone()),
        state(2, T0 + 2 * SECOND, -1, member),
    ];
    stream.extend(beats(T0, T0 + 40 * SECOND));
    let out = changes(&run(timeline(stream), 2), CorrelationKind::Ownership);
    // Only the container's chain: container → pod.
    let shapes: Vec<_> = out
        .iter()
        .map(|(t, d, c)| {
            let entities: Vec<String> = c.chain.iter().map(|h| h.entity.to_string()).collect();
            (*t - T0, *d, entities)
        })
        .collect();
    assert_eq!(
        shapes,
        vec![(
            0,
            1,
            vec!["container/c1".to_string(), "pod/a/p".to_string()]
        )]
    );
}

#[test]
fn a_containers_chain_grows_once_its_pods_owners_are_known() {
    // The container is listed first; its pod's owners appear 2 s later.
    let mut stream = vec![
        state(4, T0, 1, app_container()),
        state(
            2,
            T0 + 2 * SECOND,
            1,
            workload("pod/a/p", Some("replicaset/a/web-1")),
        ),
        state(3, T0 + 2 * SECOND, 1, workload("replicaset/a/web-1", None)),
    ];
    stream.extend(beats(T0, T0 + 5 * SECOND));
    for workers in [1, 2] {
        let out = changes(
            &run(timeline(stream.clone()), workers),
            CorrelationKind::Ownership,
        );
        let of_container: Vec<_> = out
            .iter()
            .filter(|(_, _, c)| c.chain[0].entity.to_string() == "container/c1")
            .map(|(t, d, c)| {
                let entities: Vec<String> = c.chain.iter().map(|h| h.entity.to_string()).collect();
                (*t - T0, *d, c.root_cause.to_string(), entities, explain(c))
            })
            .collect();
        let short = (
            "pod/a/p".to_string(),
            vec!["container/c1".to_string(), "pod/a/p".to_string()],
            "container/c1 is owned by: pod/a/p".to_string(),
        );
        let long = (
            "replicaset/a/web-1".to_string(),
            vec![
                "container/c1".to_string(),
                "pod/a/p".to_string(),
                "replicaset/a/web-1".to_string(),
            ],
            "container/c1 is owned by: pod/a/p → replicaset/a/web-1".to_string(),
        );
        let expected = vec![
            (0, 1, short.0.clone(), short.1.clone(), short.2.clone()),
            (2 * SECOND, -1, short.0, short.1, short.2),
            (2 * SECOND, 1, long.0, long.1, long.2),
        ];
        let mut got = of_container;
        got.sort_by_key(|(t, d, ..)| (*t, *d));
        assert_eq!(got, expected, "{workers} workers");
        // Each hop after the first says how it relates to the one before, with its evidence.
        let (_, _, last) = out.last().expect("a correlation");
        let relations: Vec<Relation> = last.chain.iter().map(|hop| hop.relation).collect();
        assert_eq!(
            relations,
            vec![Relation::Start, Relation::OwnedBy, Relation::OwnedBy]
        );
        assert_eq!(
            last.chain[1].observed,
            Observed::PodContainer {
                container_name: "app".into()
            }
        );
        assert_eq!(last.chain[2].observed, Observed::OwnerReference);
        assert_eq!(last.family, Family::Ownership);
    }
}

/// The ownership rule against a from-scratch recomputation: random histories of objects gaining,
/// changing and losing owners (cycles included) must leave exactly the chains a naive walk of
/// the final state finds.
#[test]
fn ownership_matches_a_naive_walk_of_the_final_state() {
    use std::collections::{BTreeMap, BTreeSet};

    let names: Vec<String> = (0..24)
        .map(|i| match i % 3 {
            0 => format!("deployment/ns/d{i}"),
            1 => format!("replicaset/ns/r{i}"),
            _ => format!("pod/ns/p{i}"),
        })
        .collect();
    for seed in [3u64, 17, 2024] {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |below: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % below as u64) as usize
        };
        // entity -> (evidence seq, owner) currently inserted
        let mut current: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
        let mut stream = Vec::new();
        let mut time = T0;
        for seq in 1..=400u64 {
            time += next(300) as u64 * 1_000_000;
            let entity = names[next(names.len())].clone();
            if let Some((old_seq, old_owner)) = current.remove(&entity) {
                let mut retract = state(old_seq, time, -1, workload(&entity, old_owner.as_deref()));
                if let Observation::State(update) = &mut retract {
                    update.record.since_ns = T0 + old_seq;
                }
                stream.push(retract);
            }
            if next(5) > 0 {
                let owner = (next(4) > 0).then(|| names[next(names.len())].clone());
                let mut insert = state(seq, time, 1, workload(&entity, owner.as_deref()));
                if let Observation::State(update) = &mut insert {
                    update.record.since_ns = T0 + seq;
                }
                stream.push(insert);
                current.insert(entity, (seq, owner));
            }
        }
        let end = time + 3 * SECOND;
        stream.extend(beats(T0, end));

        // The naive walk: follow owners up to 8 links.
        let mut expected = BTreeSet::new();
        for entity in current.keys() {
            let mut path = vec![entity.clone()];
            let mut at = entity.clone();
            while path.len() <= 8 {
                match current.get(&at).and_then(|(_, owner)| owner.clone()) {
                    Some(owner) => {
                        path.push(owner.clone());
                        at = owner;
                    }
                    None => break,
                }
            }
            if path.len() > 1 {
                expected.insert(path);
            }
        }

        assert!(expected.len() > 5, "seed {seed}: too few chains to compare");
        assert!(
            expected.iter().any(|path| path.len() >= 3),
            "seed {seed}: no deep chain"
        );
        for workers in [1, 3] {
            let mut counts: BTreeMap<Vec<String>, i64> = BTreeMap::new();
            for (_, diff, correlation) in changes(
                &run(timeline(stream.clone()), workers),
                CorrelationKind::Ownership,
            ) {
                let path = correlation
                    .chain
                    .iter()
                    .map(|h| h.entity.to_string())
                    .collect();
                *counts.entry(path).or_default() += diff;
            }
            let actual: BTreeSet<Vec<String>> = counts
                .into_iter()
                .filter(|(_, count)| {
                    assert!(*count == 0 || *count == 1, "count {count}");
                    *count == 1
                })
                .map(|(path, _)| path)
                .collect();
            assert_eq!(actual, expected, "seed {seed}, {workers} workers");
        }
    }
}

/// The harness is the engine with one rule: on one stream, with a fact and a state update
/// beyond the lateness bound (clamped) and a fact no rule reads, each rule's changes through the
/// engine (1 and 2 workers) are exactly its changes through the harness.
#[test]
fn the_harness_sees_what_the_engine_sees() {
    let mut stream = oom_sequence(1, T0 + SECOND, "c1");
    stream.extend(oom_sequence(4, T0 + 5 * SECOND, "c2"));
    stream.extend([
        state(10, T0, 1, app_container()),
        state(11, T0, 1, workload("pod/a/p", Some("replicaset/a/web-1"))),
        state(12, T0 + 3 * SECOND, -1, app_container()),
        // A process exit no rule reads (not SIGKILL).
        fact(
            13,
            T0 + 2 * SECOND,
            FactPayload::ProcessExit(ProcessExit {
                pid: 8,
                start_ns: T0,
                comm: "sh".into(),
                exit_code: 1,
                signal: 0,
                container_id: None,
            }),
        ),
    ]);
    stream.extend(beats(T0, T0 + 20 * SECOND));
    let mut stream = timeline(stream);
    // The second container exit and the ReplicaSet link arrive 6 s late, beyond the 2 s bound.
    for moved in [
        |o: &Observation| matches!(o, Observation::Fact(f) if f.id.seq == 6),
        |o: &Observation| matches!(o, Observation::State(u) if u.record.evidence.seq == 11),
    ] {
        let from = stream.iter().position(moved).expect("in the stream");
        let observation = stream.remove(from);
        let arrival = observation.time_ns() + 6 * SECOND;
        let to = stream
            .iter()
            .position(|o| o.time_ns() > arrival)
            .unwrap_or(stream.len());
        stream.insert(to, observation);
    }
    for (make, kind) in [
        (
            ownership::from_config as MakeRule,
            CorrelationKind::Ownership,
        ),
        (oom_sequence::from_config, CorrelationKind::OomRestart),
    ] {
        let alone = run_rule(make, stream.clone());
        assert!(alone.report.late >= 1, "{kind:?}: {:?}", alone.report);
        let alone: Vec<_> = alone.changes().map(|(t, d, c)| (t, d, c.clone())).collect();
        assert!(!alone.is_empty(), "{kind:?}");
        for workers in [1, 2] {
            let engine = changes(&run(stream.clone(), workers), kind);
            assert_eq!(engine, alone, "{kind:?}, {workers} workers");
        }
    }
}
