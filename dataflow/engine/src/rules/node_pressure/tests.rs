//! The node pressure rule against a recomputation from scratch at every tick, through the rule
//! harness; and the look-alikes it must not blame on a node's pressure.

use std::collections::BTreeMap;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, ConditionStatus, Confidence, Correlation, CorrelationKind, Detail, EntityId, EventType,
    Fact, FactPayload, Heartbeat, Hop, KubeEvent, NodeCondition, Observation, Observed, Relation,
    StateObject, StateRecord, TimeNs, WorkloadObject,
};

use super::{from_config, resource_named, resources_of};
use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::oom_sequence::tests::{entity, fact, state};
use crate::rules::ownership::tests::state_at;

/// Δ.
const WITHIN: TimeNs = 3_000 * MS;
/// How long an episode stays current after the condition turned `True`, ms (= ticks).
const KEEP_FOR_MS: Tick = 8_000;
const LATENESS: TimeNs = 2_000 * MS;

fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.node_pressure.within = Duration::from_nanos(WITHIN);
    config.node_pressure.keep_for = Duration::from_millis(KEEP_FOR_MS);
    config
}

fn harness() -> RuleHarness {
    RuleHarness::from_table(from_config, &config()).expect("enabled")
}

fn condition(node: &str, condition: &str, status: ConditionStatus) -> StateObject {
    StateObject::NodeCondition(NodeCondition {
        node: entity(node),
        condition: condition.into(),
        status,
        reason: format!("Kubelet{condition}"),
    })
}

fn placement(pod: &str, node: Option<&str>) -> StateObject {
    StateObject::Workload(WorkloadObject {
        entity: entity(pod),
        uid: format!("uid-{pod}"),
        owner: None,
        node: node.map(entity),
    })
}

fn event(seq: u64, time_ns: TimeNs, involved: &str, reason: &str, message: &str) -> Observation {
    fact(
        "kubernetes",
        "cluster",
        seq,
        time_ns,
        FactPayload::KubeEvent(KubeEvent {
            involved: entity(involved),
            reason: reason.into(),
            message: message.into(),
            component: "kubelet".into(),
            event_type: EventType::Warning,
            count: 1,
            first_ns: time_ns,
            last_ns: time_ns,
        }),
    )
}

fn low_on(resource: &str) -> String {
    format!(
        "The node was low on resource: {resource}. Threshold quantity: 100Mi, available: 92Mi. "
    )
}

/// A random stream for one seed, in event time order: pods placed on two nodes (some not yet
/// scheduled, some deleted again); pressure conditions (and `Ready`, and `False` statuses)
/// turning up on the nodes and clearing; `Evicted` Events on pods naming memory, disk, PIDs or
/// nothing, before, inside, at and beyond Δ of a condition; other Events; heartbeats every
/// 500 ms. Times are on a 500 ms grid, so steps tie and fall on Δ.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let nodes = ["node/n1", "node/n2"];
    let pods = [
        "pod/ns/p0",
        "pod/ns/p1",
        "pod/ns/p2",
        "pod/ns/p3",
        "pod/ns/p4",
        "pod/ns/p5",
    ];
    let conditions = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];
    let resources = ["memory", "ephemeral-storage", "pids", "inodes"];
    let grid = |steps: u64| steps * 500 * MS;
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for pod in pods {
        let from = T0 + grid(rng.below(10));
        let node = (rng.below(6) > 0).then(|| nodes[rng.below(2) as usize]);
        let object = placement(pod, node);
        let id = next();
        out.push(state(id, from, 1, object.clone()));
        if rng.below(4) == 0 {
            let mut retract = state(id, from + grid(10 + rng.below(60)), -1, object);
            if let Observation::State(update) = &mut retract {
                update.record.since_ns = from;
            }
            out.push(retract);
        }
    }
    for _ in 0..10 {
        let at = T0 + grid(5 + rng.below(60));
        let node = nodes[rng.below(2) as usize];
        let name = conditions[rng.below(4) as usize];
        let status = if rng.below(5) == 0 {
            ConditionStatus::False
        } else {
            ConditionStatus::True
        };
        let object = condition(node, name, status);
        let id = next();
        out.push(state(id, at, 1, object.clone()));
        if rng.below(2) == 0 {
            let mut retract = state(id, at + grid(1 + rng.below(12)), -1, object);
            if let Observation::State(update) = &mut retract {
                update.record.since_ns = at;
            }
            out.push(retract);
        }
        for _ in 0..rng.below(7) {
            let pod = pods[rng.below(6) as usize];
            // Mostly after the condition (Δ is 6 steps), sometimes just before it.
            let when = if rng.below(6) == 0 {
                at - grid(1 + rng.below(2))
            } else {
                at + grid(rng.below(9))
            };
            let message = if rng.below(5) == 0 {
                "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi."
                    .to_string()
            } else if rng.below(3) > 0 {
                // The condition's own resource (for `Ready`, none matches).
                low_on(resources_of(name).map_or("memory", |named| named[0]))
            } else {
                low_on(resources[rng.below(4) as usize])
            };
            let reason = if rng.below(8) == 0 {
                "Killing"
            } else {
                super::EVICTED
            };
            out.push(event(next(), when, pod, reason, &message));
        }
        if rng.below(3) == 0 {
            out.push(event(
                next(),
                at,
                node,
                "EvictionThresholdMet",
                "Attempting to reclaim memory",
            ));
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

/// From scratch, at `tick`: every pressure condition record inserted `True` (entered by
/// `tick`, and `tick` before its own tick + keep_for); for each, the `Evicted` Events visible
/// then (entered, within keep_for of their own tick) on pods that the state at `tick` places on
/// its node, at or after it within Δ, whose message names one of the condition's resources or
/// none; each pod once, by its earliest (time, then fact id). A correlation for each condition
/// with at least one.
fn naive(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let live = |at: &Option<Tick>, time_ns: TimeNs| {
        at.is_some_and(|at| at <= tick)
            && clock.tick_of(time_ns) <= tick
            && tick < clock.tick_of(time_ns) + KEEP_FOR_MS
    };
    let mut episodes: Vec<(&StateRecord, &NodeCondition)> = Vec::new();
    for (observation, at) in arrived.iter().zip(entered) {
        if let Observation::State(update) = observation
            && update.diff > 0
            && live(at, update.record.since_ns)
            && let StateObject::NodeCondition(condition) = &update.record.object
            && condition.status == ConditionStatus::True
            && resources_of(&condition.condition).is_some()
            && !episodes.iter().any(|(record, _)| **record == update.record)
        {
            episodes.push((&update.record, condition));
        }
    }
    let evictions: Vec<(&Fact, &KubeEvent)> = arrived
        .iter()
        .zip(entered)
        .filter_map(|(observation, at)| match observation {
            Observation::Fact(fact) if live(at, fact.time_ns) => match &fact.payload {
                FactPayload::KubeEvent(event)
                    if event.reason == super::EVICTED
                        && matches!(event.involved, EntityId::Pod { .. }) =>
                {
                    Some((fact, event))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    let placed: Vec<(EntityId, EntityId)> = state_at(arrived, entered, tick, 0)
        .into_iter()
        .filter_map(|record| match record.object {
            StateObject::Workload(WorkloadObject {
                entity,
                node: Some(node),
                ..
            }) => Some((entity, node)),
            _ => None,
        })
        .collect();
    let mut expected = BTreeMap::new();
    for (record, condition) in episodes {
        let resources = resources_of(&condition.condition).unwrap_or_default();
        let mut matching: Vec<(&Fact, &KubeEvent)> = evictions
            .iter()
            .filter(|(fact, event)| {
                placed.contains(&(event.involved.clone(), condition.node.clone()))
                    && fact.time_ns >= record.since_ns
                    && fact.time_ns - record.since_ns <= WITHIN
                    && resource_named(&event.message).is_none_or(|name| resources.contains(&name))
            })
            .copied()
            .collect();
        matching.sort_by_key(|(fact, _)| (fact.time_ns, fact.id.clone()));
        let mut chain = vec![Hop {
            entity: condition.node.clone(),
            relation: Relation::Start,
            fact_id: record.evidence.clone(),
            time: record.since_ns,
            observed: Observed::NodeCondition {
                condition: condition.condition.as_str().into(),
                status: condition.status,
                reason: condition.reason.as_str().into(),
            },
        }];
        let mut all_named = true;
        for (fact, event) in matching {
            if chain.iter().any(|hop| hop.entity == event.involved) {
                continue;
            }
            all_named &= resource_named(&event.message).is_some();
            chain.push(Hop {
                entity: event.involved.clone(),
                relation: Relation::Caused,
                fact_id: fact.id.clone(),
                time: fact.time_ns,
                observed: Observed::KubeEvent {
                    reason: event.reason.as_str().into(),
                    event_type: event.event_type,
                    count: event.count,
                },
            });
        }
        if chain.len() == 1 {
            continue;
        }
        let correlation = Correlation::new(
            CorrelationKind::NodePressureEviction,
            condition.node.clone(),
            chain.clone(),
            Detail::NodePressure {
                condition: condition.condition.as_str().into(),
                evicted_pods: (chain.len() - 1) as u32,
                within_ns: WITHIN,
            },
            Confidence {
                percent: if all_named { 90 } else { 70 },
                basis: vec![
                    Basis::EveryStepObserved,
                    if all_named {
                        Basis::EvictionNamesTheResource
                    } else {
                        Basis::EvictionNamesNoResource
                    },
                ],
            },
        );
        *expected.entry(correlation).or_insert(0) += 1;
    }
    expected
}

/// At every closed tick, the rule holds exactly the episodes a recomputation from scratch finds:
/// facts arrive out of order within the lateness bound and one in ten beyond it, conditions
/// clear, pods are deleted, episodes expire.
#[test]
fn node_pressure_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut appeared, mut retracted, mut late, mut grown, mut unsure) = (0, 0, 0, 0, 0);
    for seed in 1..=16 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = harness();
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
            |tick| naive(&arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        appeared += seen.appeared;
        retracted += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0 {
                grown += usize::from(correlation.chain.len() > 2);
                unsure += usize::from(correlation.confidence.percent == 70);
            }
        }
    }
    // Episodes that appeared, grew to several pods, were unsure, expired; late facts.
    assert!(
        appeared > 30 && grown > 10 && unsure > 5 && retracted > 30 && late > 5,
        "{appeared} {grown} {unsure} {retracted} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn node_pressure_does_not_depend_on_arrival_order_or_workers() {
    for seed in 51..=54 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let in_order = harness().run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 2, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness(), shuffled, &in_order, seed);
    }
}

/// Pods p0 and p1 on n1, p2 on n2; `MemoryPressure` on n1 at `T0 + 1 s`, cleared at
/// `T0 + 2 s`; then `events`.
fn scenario(events: Vec<Observation>) -> RuleRun {
    let pressure = condition("node/n1", "MemoryPressure", ConditionStatus::True);
    let mut cleared = state(10, T0 + 2_000 * MS, -1, pressure.clone());
    if let Observation::State(update) = &mut cleared {
        update.record.since_ns = T0 + 1_000 * MS;
    }
    let mut stream = vec![
        state(1, T0, 1, placement("pod/ns/p0", Some("node/n1"))),
        state(2, T0, 1, placement("pod/ns/p1", Some("node/n1"))),
        state(3, T0, 1, placement("pod/ns/p2", Some("node/n2"))),
        state(10, T0 + 1_000 * MS, 1, pressure),
        cleared,
    ];
    stream.extend(events);
    stream.sort_by_key(Observation::time_ns);
    stream.push(Observation::Heartbeat(Heartbeat {
        source: "oracle".into(),
        node: "n".into(),
        upto_ns: T0 + 30_000 * MS,
    }));
    harness().run(stream).expect("run")
}

/// What the rule held at `ms` after T0.
fn held(run: &RuleRun, ms: u64) -> Vec<Correlation> {
    run.held_at(T0 / MS + ms).into_keys().collect()
}

#[test]
fn pressure_then_evictions_on_that_node_name_the_evicted_pods() {
    let run = scenario(vec![
        event(
            20,
            T0 + 1_500 * MS,
            "pod/ns/p0",
            "Evicted",
            &low_on("memory"),
        ),
        event(
            21,
            T0 + 2_500 * MS,
            "pod/ns/p1",
            "Evicted",
            &low_on("memory"),
        ),
        // The same pod's Event again: counted once.
        event(
            22,
            T0 + 3_000 * MS,
            "pod/ns/p0",
            "Evicted",
            &low_on("memory"),
        ),
    ]);
    let found = held(&run, 3_000);
    assert_eq!(found.len(), 1, "{found:#?}");
    let episode = &found[0];
    assert_eq!(episode.root_cause.to_string(), "node/n1");
    assert_eq!(
        episode.detail,
        Detail::NodePressure {
            condition: "MemoryPressure".into(),
            evicted_pods: 2,
            within_ns: WITHIN,
        }
    );
    let hops: Vec<(String, Relation)> = episode
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation))
        .collect();
    assert_eq!(
        hops,
        vec![
            ("node/n1".into(), Relation::Start),
            ("pod/ns/p0".into(), Relation::Caused),
            ("pod/ns/p1".into(), Relation::Caused),
        ]
    );
    assert_eq!(episode.confidence.percent, 90);
    // The condition cleared at 2 s; the episode stays until 1 s + keep_for, then goes.
    assert_eq!(held(&run, 1_000 + KEEP_FOR_MS - 100).len(), 1);
    assert!(held(&run, 1_000 + KEEP_FOR_MS).is_empty());
}

#[test]
fn an_eviction_on_another_node_is_not_blamed_on_this_nodes_pressure() {
    let run = scenario(vec![event(
        20,
        T0 + 1_500 * MS,
        "pod/ns/p2",
        "Evicted",
        &low_on("memory"),
    )]);
    assert!(run.batches.is_empty(), "{:#?}", run.batches);
}

#[test]
fn evictions_for_another_resource_before_or_beyond_the_bound_are_not_blamed() {
    let run = scenario(vec![
        event(
            20,
            T0 + 1_500 * MS,
            "pod/ns/p0",
            "Evicted",
            &low_on("ephemeral-storage"),
        ),
        event(21, T0 + 500 * MS, "pod/ns/p1", "Evicted", &low_on("memory")),
        event(
            22,
            T0 + 1_000 * MS + WITHIN + MS,
            "pod/ns/p1",
            "Evicted",
            &low_on("memory"),
        ),
        event(
            23,
            T0 + 1_500 * MS,
            "pod/ns/p1",
            "Killing",
            "Stopping container",
        ),
    ]);
    assert!(run.batches.is_empty(), "{:#?}", run.batches);
}

#[test]
fn an_eviction_that_names_no_resource_is_blamed_with_less_confidence() {
    let run = scenario(vec![event(
        20,
        T0 + 1_000 * MS + WITHIN,
        "pod/ns/p1",
        "Evicted",
        "Evicted by the node",
    )]);
    let found = held(&run, 5_000);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].confidence.percent, 70);
}

#[test]
fn eviction_messages_name_their_resource() {
    assert_eq!(resource_named(&low_on("memory")), Some("memory"));
    assert_eq!(
        resource_named("The node was low on resource: ephemeral-storage."),
        Some("ephemeral-storage")
    );
    assert_eq!(
        resource_named("The node was low on resource: pids"),
        Some("pids")
    );
    assert_eq!(resource_named("The node was low on resource: "), None);
    assert_eq!(resource_named("Preempted"), None);
    assert_eq!(resources_of("Ready"), None);
}
