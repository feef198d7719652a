//! The OOM sequence rule against a recomputation from scratch at every tick, through the rule
//! harness: random kills, exits, container exits and the runtime's restarts (some at exactly Δ,
//! some just past it, some tied in time), facts arriving out of order within the lateness bound and a few beyond it,
//! and the containers' ownership changing underneath.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, ContainerExit, Correlation, CorrelationKind, Detail, EntityId, Fact, FactId,
    FactPayload, Hop, Observation, Observed, OomKill, OwnerRef, PodContainer, ProcessExit,
    Relation, RuntimeChange, RuntimeObject, RuntimeState, StateObject, StateRecord, StateUpdate,
    TimeNs, WorkloadObject,
};

use super::from_config;
use crate::clock::{Tick, TickClock};
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::ownership::tests::{CONTAINER_GRACE, naive_chains, state_at};

/// Δ.
pub(crate) const WITHIN: TimeNs = 3_000 * MS;
/// How long a match stays current after the kill, ms (= ticks).
pub(crate) const KEEP_FOR_MS: Tick = 8_000;
pub(crate) const LATENESS: TimeNs = 2_000 * MS;

pub(crate) fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.oom_sequence.within = Duration::from_nanos(WITHIN);
    config.oom_sequence.keep_for = Duration::from_millis(KEEP_FOR_MS);
    config.ownership.container_exit_grace = Duration::from_millis(CONTAINER_GRACE);
    config
}

pub(crate) fn fact(
    source: &str,
    node: &str,
    seq: u64,
    time_ns: TimeNs,
    payload: FactPayload,
) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new(source, node, seq),
        time_ns,
        payload,
    })
}

pub(crate) fn state(seq: u64, time_ns: TimeNs, diff: i8, object: StateObject) -> Observation {
    Observation::State(StateUpdate {
        time_ns,
        diff,
        record: StateRecord {
            evidence: FactId::new("kubernetes", "n1", seq),
            since_ns: time_ns,
            object,
        },
    })
}

pub(crate) fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

/// A random stream for one seed, in event time order: episodes of a kill, maybe its process's
/// exits (SIGKILL or not, within Δ or not), maybe a container exit; noise facts; containers
/// joining and leaving pods whose owners come and go; heartbeats every 500 ms. Times are on a
/// 500 ms grid, so steps fall exactly on Δ and tie with one another.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let nodes = ["n1", "n2"];
    let containers = ["c0", "c1", "c2"];
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let grid = |steps: u64| steps * 500 * MS;
    let container = |rng: &mut Rng| -> Arc<str> { containers[rng.below(3) as usize].into() };
    for _ in 0..14 {
        let kill_at = T0 + grid(rng.below(60));
        let node = nodes[rng.below(2) as usize];
        let (pid, start_ns) = (7 + rng.below(2) as u32, T0 + rng.below(2));
        let kill_container = (rng.below(4) > 0).then(|| container(rng));
        out.push(fact(
            "kernel",
            node,
            next(),
            kill_at,
            FactPayload::OomKill(OomKill {
                pid,
                start_ns,
                comm: "java".into(),
                container_id: kill_container.clone(),
                pod_uid: None,
                memcg: "/kubepods/x".into(),
                rss_pages: rng.below(1000),
            }),
        ));
        for _ in 0..rng.below(3) {
            // The exit: on the victim's node, or (rarely) another node's process of that pid.
            let exit_node = if rng.below(6) == 0 {
                nodes[rng.below(2) as usize]
            } else {
                node
            };
            out.push(fact(
                "kernel",
                exit_node,
                next(),
                kill_at + grid(rng.below(8)),
                FactPayload::ProcessExit(ProcessExit {
                    pid,
                    start_ns,
                    comm: "java".into(),
                    exit_code: 0,
                    signal: if rng.below(5) == 0 { 15 } else { 9 },
                    container_id: (rng.below(2) == 0).then(|| container(rng)),
                }),
            ));
        }
        if rng.below(5) > 0 {
            let id = match (&kill_container, rng.below(4)) {
                (Some(id), 1..) => Arc::clone(id),
                _ => container(rng),
            };
            let oom = rng.below(3) > 0;
            let stop_at = kill_at + grid(rng.below(8));
            let pod = (rng.below(2) == 0).then(|| entity("pod/ns/p9"));
            out.push(fact(
                // The container runtime or the kubelet: both report container exits.
                ["kubelet", "cri"][rng.below(2) as usize],
                nodes[rng.below(2) as usize],
                next(),
                stop_at,
                FactPayload::ContainerExit(ContainerExit {
                    container_id: id,
                    container_name: "app".into(),
                    pod: pod.clone(),
                    exit_code: if oom { 137 } else { 1 },
                    reason: if oom { "OOMKilled" } else { "Error" }.into(),
                    restart_count: rng.below(3) as u32,
                }),
            ));
            // The runtime starting the replacement: of the same pod and name or not, within Δ
            // of the exit or not, sometimes twice.
            for _ in 0..rng.below(3) {
                let restart_pod = match (&pod, rng.below(5)) {
                    (Some(pod), 1..) => pod.clone(),
                    _ => entity("pod/ns/p8"),
                };
                let seq = next();
                out.push(fact(
                    "cri",
                    nodes[rng.below(2) as usize],
                    seq,
                    stop_at + grid(rng.below(8)),
                    FactPayload::RuntimeChange(RuntimeChange {
                        object: RuntimeObject::Container,
                        id: format!("r{seq}").into(),
                        state: if rng.below(6) == 0 {
                            RuntimeState::Created
                        } else {
                            RuntimeState::Started
                        },
                        pod: Some(restart_pod),
                        pod_uid: "uid".into(),
                        container_name: if rng.below(6) == 0 { "sidecar" } else { "app" }.into(),
                        sandbox_id: "s1".into(),
                        image: "busybox".into(),
                        exit_code: 0,
                        reason: String::new(),
                    }),
                ));
            }
        }
    }
    // Ownership underneath: containers in pods, pods owned by a ReplicaSet owned by a
    // Deployment, links appearing and going away.
    let pods = ["pod/ns/p0", "pod/ns/p1"];
    for (index, id) in containers.iter().enumerate() {
        let from = T0 + grid(rng.below(40));
        let object = StateObject::PodContainer(PodContainer {
            pod: entity(pods[index % 2]),
            pod_uid: "uid".into(),
            container_name: "app".into(),
            container_id: (*id).into(),
        });
        let seq = next();
        out.push(state(seq, from, 1, object.clone()));
        if rng.below(2) == 0 {
            let mut retract = state(seq, from + grid(1 + rng.below(30)), -1, object);
            if let Observation::State(update) = &mut retract {
                update.record.since_ns = from;
            }
            out.push(retract);
        }
    }
    for (child, owner) in [
        ("pod/ns/p0", "replicaset/ns/r"),
        ("pod/ns/p1", "replicaset/ns/r"),
        ("replicaset/ns/r", "deployment/ns/d"),
    ] {
        let from = T0 + grid(rng.below(40));
        let object = StateObject::Workload(WorkloadObject {
            entity: entity(child),
            uid: "uid".into(),
            owner: Some(OwnerRef {
                entity: entity(owner),
                uid: "uid".into(),
            }),
            node: None,
        });
        let seq = next();
        out.push(state(seq, from, 1, object.clone()));
        if rng.below(3) == 0 {
            let mut retract = state(seq, from + grid(1 + rng.below(30)), -1, object);
            if let Observation::State(update) = &mut retract {
                update.record.since_ns = from;
            }
            out.push(retract);
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    out.extend(heartbeats(
        T0,
        end + KEEP_FOR_MS * MS + 2 * LATENESS,
        500 * MS,
    ));
    out.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    out
}

/// A step as the naive recomputation sees it.
struct Step<'a> {
    fact: &'a Fact,
}

impl Step<'_> {
    fn hop(&self, entity: &EntityId, relation: Relation, observed: Observed) -> Hop {
        Hop {
            entity: entity.clone(),
            relation,
            fact_id: self.fact.id.clone(),
            time: self.fact.time_ns,
            observed,
        }
    }
}

/// From scratch, at `tick`: the facts that entered by then and are within `keep_for` of their
/// own tick; for each OOM kill among them, the earliest SIGKILL exit of the same process (node,
/// pid, start) within Δ after it, then the earliest exit of its container (the kill's, else
/// the exit's) within Δ of the kill, ties broken by fact id; the chain kill → exit → container
/// exit, then the container's owners if it has a chain, else its pod as the exit names it.
pub(crate) fn naive_oom(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let visible: Vec<&Fact> = arrived
        .iter()
        .zip(entered)
        .filter_map(|(observation, at)| match (observation, at) {
            (Observation::Fact(fact), Some(at)) => Some((fact, *at)),
            _ => None,
        })
        .filter(|(fact, at)| *at <= tick && tick < clock.tick_of(fact.time_ns) + KEEP_FOR_MS)
        .map(|(fact, _)| fact)
        .collect();
    let chains = naive_chains(&state_at(arrived, entered, tick, CONTAINER_GRACE), 8);
    let within =
        |from: &Fact, to: &Fact| to.time_ns >= from.time_ns && to.time_ns - from.time_ns <= WITHIN;
    let mut expected = BTreeMap::new();
    for kill_fact in &visible {
        let FactPayload::OomKill(kill) = &kill_fact.payload else {
            continue;
        };
        let exit = visible
            .iter()
            .filter(|fact| {
                matches!(&fact.payload, FactPayload::ProcessExit(exit)
                    if exit.signal == 9 && exit.pid == kill.pid && exit.start_ns == kill.start_ns
                        && fact.id.node == kill_fact.id.node)
                    && within(kill_fact, fact)
            })
            .min_by_key(|fact| (fact.time_ns, fact.id.clone()));
        let Some(exit_fact) = exit else { continue };
        let FactPayload::ProcessExit(exit) = &exit_fact.payload else {
            continue;
        };
        let Some(container_id) = kill.container_id.clone().or(exit.container_id.clone()) else {
            continue;
        };
        let stop = visible
            .iter()
            .filter(|fact| {
                matches!(&fact.payload, FactPayload::ContainerExit(stop)
                    if stop.container_id == container_id)
                    && within(kill_fact, fact)
            })
            .min_by_key(|fact| (fact.time_ns, fact.id.clone()));
        let Some(stop_fact) = stop else { continue };
        let FactPayload::ContainerExit(stop) = &stop_fact.payload else {
            continue;
        };
        let process = EntityId::Process {
            node: Arc::clone(&kill_fact.id.node),
            pid: kill.pid,
            start_ns: kill.start_ns,
        };
        let container = EntityId::Container { id: container_id };
        let stop_step = Step { fact: stop_fact };
        let mut chain = vec![
            Step { fact: kill_fact }.hop(
                &process,
                Relation::Start,
                Observed::OomKill {
                    comm: kill.comm.as_str().into(),
                    pid: kill.pid,
                    memcg: kill.memcg.as_str().into(),
                    rss_pages: kill.rss_pages,
                },
            ),
            Step { fact: exit_fact }.hop(
                &process,
                Relation::FollowedBy,
                Observed::ProcessExit {
                    comm: exit.comm.as_str().into(),
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                },
            ),
        ];
        let observed = Observed::ContainerExit {
            container_name: stop.container_name.as_str().into(),
            exit_code: stop.exit_code,
            reason: stop.reason.as_str().into(),
            restart_count: stop.restart_count,
        };
        chain.push(stop_step.hop(&container, Relation::Caused, observed.clone()));
        // The earliest start of a container of the same pod and name within Δ of the exit.
        let restart = stop.pod.as_ref().and_then(|pod| {
            visible
                .iter()
                .filter(|fact| {
                    matches!(&fact.payload, FactPayload::RuntimeChange(change)
                        if change.object == RuntimeObject::Container
                            && change.state == RuntimeState::Started
                            && change.pod.as_ref() == Some(pod)
                            && change.container_name == stop.container_name)
                        && within(stop_fact, fact)
                })
                .min_by_key(|fact| (fact.time_ns, fact.id.clone()))
        });
        if let Some(restart_fact) = restart {
            let FactPayload::RuntimeChange(change) = &restart_fact.payload else {
                continue;
            };
            chain.push(Step { fact: restart_fact }.hop(
                &EntityId::Container {
                    id: change.id.clone(),
                },
                Relation::FollowedBy,
                Observed::of_fact(&restart_fact.payload),
            ));
        }
        match (chains.get(&container), &stop.pod) {
            (Some(owners), _) => chain.extend(owners[1..].iter().cloned()),
            (None, Some(pod)) => chain.push(stop_step.hop(pod, Relation::OwnedBy, observed)),
            (None, None) => {}
        }
        let oom = stop.reason == "OOMKilled" || stop.exit_code == 137;
        let correlation = Correlation::new(
            CorrelationKind::OomRestart,
            process,
            chain,
            Detail::Sequence {
                steps: if restart.is_some() { 4 } else { 3 },
                span_ns: restart.map_or(stop_fact.time_ns, |fact| fact.time_ns) - kill_fact.time_ns,
                within_ns: WITHIN,
            },
            Confidence {
                percent: if oom { 95 } else { 75 },
                basis: vec![
                    Basis::EveryStepObserved,
                    if oom {
                        Basis::ContainerEndSaysOom
                    } else {
                        Basis::ContainerEndSaysOther
                    },
                ],
            },
        );
        *expected.entry(correlation).or_insert(0) += 1;
    }
    expected
}

/// At every closed tick, the rule holds exactly the sequences a recomputation from scratch finds
/// over the facts and state visible then: facts arrive out of order within the lateness bound,
/// and one in ten beyond it (clamped to the input tick, or dropped once expired).
#[test]
fn oom_restart_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut owned, mut pod_only, mut unsure, mut expired, mut late) = (0, 0, 0, 0, 0);
    let mut restarted = 0;
    for seed in 1..=16 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
        let rule = from_config(&config()).expect("enabled");
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
            |tick| naive_oom(&arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        expired += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0 {
                let restart = correlation
                    .chain
                    .iter()
                    .any(|hop| matches!(hop.observed, Observed::RuntimeChange { .. }));
                restarted += usize::from(restart);
                let hops = correlation.chain.len() - usize::from(restart);
                owned += usize::from(hops > 4);
                pod_only += usize::from(hops == 4);
                unsure += usize::from(correlation.confidence.percent == 75);
            }
        }
    }
    // Matches with owners, with only the exit's pod, with a non-OOM container end; retractions;
    // late facts.
    assert!(
        owned > 10 && pod_only > 5 && unsure > 5 && expired > 20 && late > 10 && restarted > 5,
        "{owned} {pod_only} {unsure} {expired} {late} {restarted}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the number
/// of workers.
#[test]
fn oom_restart_does_not_depend_on_arrival_order_or_workers() {
    for seed in 31..=36 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 4, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        assert_ne!(shuffled, stream);
        let reordered = same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
        assert_eq!(reordered.report.late, 0, "seed {seed}");
    }
}
