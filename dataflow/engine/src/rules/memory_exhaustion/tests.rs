//! The memory exhaustion rule, run with the OOM sequence rule it builds on, against a
//! recomputation from scratch at every tick; and the look-alikes it must not match.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, ContainerExit, Correlation, CorrelationKind, Detail, EntityId, Fact,
    FactPayload, Hop, Observation, Observed, OomKill, PodContainer, ProcessExit, Relation,
    Resource, ResourceUsage, StateObject, TimeNs,
};

use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::oom_sequence::tests::{
    KEEP_FOR_MS, LATENESS, config as oom_config, entity, fact, naive_oom, state,
};
use crate::rules::{MakeRule, memory_exhaustion, oom_sequence};

/// Δ of this rule.
const WITHIN: TimeNs = 4_000 * MS;
/// The kubelet collector's threshold in the stream.
const THRESHOLD: u8 = 90;
const RULES: &[MakeRule] = &[oom_sequence::from_config, memory_exhaustion::from_config];

fn config() -> CorrelationConfig {
    let mut config = oom_config();
    config.memory_exhaustion.within = Duration::from_nanos(WITHIN);
    config
}

fn harness() -> RuleHarness {
    RuleHarness::from_tables(RULES, &config()).expect("both enabled")
}

fn usage(
    seq: u64,
    time_ns: TimeNs,
    pod: &str,
    name: &str,
    resource: Resource,
    above: bool,
) -> Observation {
    fact(
        "kubelet",
        "n1",
        seq,
        time_ns,
        FactPayload::ResourceUsage(ResourceUsage {
            pod: entity(pod),
            container_name: name.into(),
            resource,
            used: if above { 950 } else { 500 },
            limit: 1000,
            threshold_percent: THRESHOLD,
            above,
        }),
    )
}

/// An OOM kill of `pid` in container `id` at `at`, its SIGKILL exit and the container's exit
/// (naming `pod` when given) shortly after: what the OOM sequence rule matches.
fn oom_kill(
    seq: u64,
    at: TimeNs,
    pid: u32,
    id: &str,
    name: &str,
    pod: Option<&str>,
) -> Vec<Observation> {
    vec![
        fact(
            "kernel",
            "n1",
            seq,
            at,
            FactPayload::OomKill(OomKill {
                pid,
                start_ns: T0,
                comm: "java".into(),
                container_id: Some(id.into()),
                pod_uid: None,
                memcg: "/kubepods/x".into(),
                rss_pages: 100,
            }),
        ),
        fact(
            "kernel",
            "n1",
            seq + 1,
            at + 100 * MS,
            FactPayload::ProcessExit(ProcessExit {
                pid,
                start_ns: T0,
                comm: "java".into(),
                exit_code: 0,
                signal: 9,
                container_id: Some(id.into()),
            }),
        ),
        fact(
            "kubelet",
            "n1",
            seq + 2,
            at + 600 * MS,
            FactPayload::ContainerExit(ContainerExit {
                container_id: id.into(),
                container_name: name.into(),
                pod: pod.map(entity),
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            }),
        ),
    ]
}

/// A random stream for one seed, in event time order: OOM kills in the containers `app` and
/// `side` of two pods, each preceded (or not) by memory reports of its container or of its
/// sibling, inside Δ, at exactly Δ, beyond it or after the kill, some followed by a report
/// of the use falling back; CPU reports; containers joining their pods in the state and
/// leaving; heartbeats every 500 ms. Times are on a 500 ms grid, so steps tie and fall on Δ.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let pods = ["pod/ns/p0", "pod/ns/p1"];
    let names = ["app", "side"];
    let grid = |steps: u64| steps * 500 * MS;
    let mut out = Vec::new();
    for episode in 0..12u32 {
        // The kill, exit and container exit take the episode's first ids, the rest follow.
        let base = u64::from(episode) * 100;
        let mut seq = base + 10;
        let pod = pods[rng.below(2) as usize];
        let name = names[rng.below(2) as usize];
        let id = format!("{}-{name}-{episode}", &pod[7..]);
        let kill_at = T0 + grid(20 + rng.below(60));
        // One in five container exits names no pod; then only the state can.
        let named = (rng.below(5) > 0).then_some(pod);
        out.extend(oom_kill(base, kill_at, 100 + episode, &id, name, named));
        if rng.below(2) == 0 {
            let from = kill_at - grid(rng.below(4));
            let object = StateObject::PodContainer(PodContainer {
                pod: entity(pod),
                pod_uid: "uid".into(),
                container_name: name.into(),
                container_id: id.as_str().into(),
            });
            seq += 1;
            out.push(state(seq, from, 1, object.clone()));
            if rng.below(3) == 0 {
                let mut retract = state(seq, from + grid(1 + rng.below(20)), -1, object);
                if let Observation::State(update) = &mut retract {
                    update.record.since_ns = from;
                }
                out.push(retract);
            }
        }
        for _ in 0..rng.below(3) {
            // Mostly this container's reports, sometimes its sibling's.
            let reported = if rng.below(5) == 0 {
                names[1 - names.iter().position(|n| *n == name).unwrap_or(0)]
            } else {
                name
            };
            // Before the kill by 0..=11 grid steps (Δ is 8), or up to 2 steps after it.
            let at = if rng.below(6) == 0 {
                kill_at + grid(1 + rng.below(2))
            } else {
                kill_at - grid(rng.below(12))
            };
            seq += 1;
            out.push(usage(seq, at, pod, reported, Resource::Memory, true));
            if rng.below(4) == 0 {
                seq += 1;
                let back = at + grid(rng.below(6));
                out.push(usage(seq, back, pod, reported, Resource::Memory, false));
            }
        }
        if rng.below(4) == 0 {
            seq += 1;
            let at = kill_at - grid(rng.below(4));
            out.push(usage(seq, at, pod, name, Resource::Cpu, true));
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    out.extend(heartbeats(
        T0,
        end + KEEP_FOR_MS * MS + WITHIN + 2 * LATENESS,
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

/// From scratch, at `tick`: the OOM restarts a recomputation finds ([`naive_oom`]), and for
/// each that names a pod and a container name, the latest memory report of that container
/// visible at `tick` (entered, and within Δ + keep_for + one tick of its own tick) at or before
/// the kill within Δ (ties: the greater fact id); if it says above, the exhaustion: the report
/// on the killed container, then the restart's chain, its kill caused by the report.
fn naive(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let restarts = naive_oom(arrived, entered, clock, tick);
    let retain = (WITHIN + KEEP_FOR_MS * MS) / MS + clock.tick_ms();
    let reports: Vec<(&Fact, &ResourceUsage)> = arrived
        .iter()
        .zip(entered)
        .filter_map(|(observation, at)| match (observation, at) {
            (Observation::Fact(fact), Some(at)) => match &fact.payload {
                FactPayload::ResourceUsage(usage)
                    if usage.resource == Resource::Memory
                        && *at <= tick
                        && tick < clock.tick_of(fact.time_ns) + retain =>
                {
                    Some((fact, usage))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut expected = restarts.clone();
    for restart in restarts.keys() {
        let Some(stop) = restart
            .chain
            .iter()
            .find(|hop| matches!(hop.observed, Observed::ContainerExit { .. }))
        else {
            continue;
        };
        let Observed::ContainerExit { container_name, .. } = &stop.observed else {
            continue;
        };
        let Some(pod) = restart
            .chain
            .iter()
            .find(|hop| matches!(hop.entity, EntityId::Pod { .. }))
        else {
            continue;
        };
        let kill = restart.chain[0].time;
        let latest = reports
            .iter()
            .filter(|(fact, usage)| {
                usage.pod == pod.entity
                    && usage.container_name == **container_name
                    && fact.time_ns <= kill
                    && kill - fact.time_ns <= WITHIN
            })
            .max_by_key(|(fact, _)| (fact.time_ns, fact.id.clone()));
        let Some((report, usage)) = latest.filter(|(_, usage)| usage.above) else {
            continue;
        };
        let mut chain = vec![Hop {
            entity: stop.entity.clone(),
            relation: Relation::Start,
            fact_id: report.id.clone(),
            time: report.time_ns,
            observed: Observed::ResourceUsage {
                container_name: Arc::clone(container_name),
                resource: Resource::Memory,
                used: usage.used,
                limit: usage.limit,
                above: true,
            },
        }];
        chain.extend(restart.chain.iter().cloned());
        chain[1].relation = Relation::Caused;
        let mut basis = restart.confidence.basis.clone();
        basis.push(Basis::UsageAboveThresholdAtKill);
        let exhaustion = Correlation::new(
            CorrelationKind::MemoryExhaustion,
            stop.entity.clone(),
            chain,
            Detail::Exhaustion {
                resource: Resource::Memory,
                used: usage.used,
                limit: usage.limit,
                threshold_percent: THRESHOLD,
                span_ns: kill - report.time_ns,
                within_ns: WITHIN,
            },
            Confidence {
                percent: restart.confidence.percent,
                basis,
            },
        );
        *expected.entry(exhaustion).or_insert(0) += 1;
    }
    expected
}

fn exhaustions(run: &RuleRun) -> Vec<&Correlation> {
    run.changes()
        .filter(|(_, diff, correlation)| {
            *diff > 0 && correlation.kind == CorrelationKind::MemoryExhaustion
        })
        .map(|(_, _, correlation)| correlation)
        .collect()
}

/// At every closed tick, the two rules hold exactly the OOM restarts and exhaustions a
/// recomputation from scratch finds: facts arrive out of order within the lateness bound and
/// one in ten beyond it, containers join and leave their pods, restarts expire.
#[test]
fn memory_exhaustion_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut matched, mut retracted, mut late, mut unmatched_restarts) = (0, 0, 0, 0);
    for seed in 1..=16 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = harness();
        let rules: Vec<_> = RULES.iter().filter_map(|make| make(&config())).collect();
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        assert_eq!(
            run.entered,
            entry_ticks(&arrived, clock, LATENESS, |fact| rules
                .iter()
                .any(|rule| rule.reads(fact))),
            "seed {seed}"
        );
        late += run.report.late;
        assert_every_tick(
            &run,
            clock,
            |tick| naive(&arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        matched += exhaustions(&run).len();
        retracted += run
            .changes()
            .filter(|(_, diff, c)| *diff < 0 && c.kind == CorrelationKind::MemoryExhaustion)
            .count();
        let restarts = run
            .changes()
            .filter(|(_, diff, c)| *diff > 0 && c.kind == CorrelationKind::OomRestart)
            .count();
        unmatched_restarts += restarts.saturating_sub(exhaustions(&run).len());
    }
    // Exhaustions that appeared and expired, restarts the rule rightly left alone, late facts.
    assert!(
        matched > 30 && retracted > 20 && unmatched_restarts > 30 && late > 10,
        "{matched} {retracted} {unmatched_restarts} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn memory_exhaustion_does_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=44 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let in_order = harness().run(stream.clone()).expect("run");
        assert!(!exhaustions(&in_order).is_empty(), "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness(), shuffled, &in_order, seed);
    }
}

/// A kill at `T0 + 10 s` in container `app` of pod p0, with `reports` before it.
fn scenario(reports: Vec<Observation>) -> RuleRun {
    let mut stream = oom_kill(1, T0 + 10_000 * MS, 7, "c-app", "app", Some("pod/ns/p0"));
    stream.extend(reports);
    stream.sort_by_key(Observation::time_ns);
    stream.extend(heartbeats(T0, T0 + 30_000 * MS, 500 * MS));
    harness().run(stream).expect("run")
}

#[test]
fn a_crossing_then_a_kill_in_that_container_is_exhaustion() {
    let run = scenario(vec![usage(
        20,
        T0 + 7_000 * MS,
        "pod/ns/p0",
        "app",
        Resource::Memory,
        true,
    )]);
    let found = exhaustions(&run);
    assert_eq!(found.len(), 1, "{found:#?}");
    let exhaustion = found[0];
    assert_eq!(exhaustion.root_cause.to_string(), "container/c-app");
    assert_eq!(
        exhaustion.detail,
        Detail::Exhaustion {
            resource: Resource::Memory,
            used: 950,
            limit: 1000,
            threshold_percent: THRESHOLD,
            span_ns: 3_000 * MS,
            within_ns: WITHIN,
        }
    );
    let relations: Vec<(String, Relation)> = exhaustion
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation))
        .collect();
    assert_eq!(
        relations,
        vec![
            ("container/c-app".into(), Relation::Start),
            ("process/n1/7/1767225600000000000".into(), Relation::Caused),
            (
                "process/n1/7/1767225600000000000".into(),
                Relation::FollowedBy
            ),
            ("container/c-app".into(), Relation::Caused),
            ("pod/ns/p0".into(), Relation::OwnedBy),
        ]
    );
}

#[test]
fn usage_above_the_threshold_without_a_kill_is_no_exhaustion() {
    let stream = vec![
        usage(
            1,
            T0 + 1_000 * MS,
            "pod/ns/p0",
            "app",
            Resource::Memory,
            true,
        ),
        Observation::Heartbeat(tapio_model::Heartbeat {
            source: "oracle".into(),
            node: "n".into(),
            upto_ns: T0 + 30_000 * MS,
        }),
    ];
    let run = harness().run(stream).expect("run");
    assert!(run.batches.is_empty(), "{:#?}", run.batches);
}

#[test]
fn a_kill_in_another_container_of_the_same_pod_does_not_match() {
    let run = scenario(vec![usage(
        20,
        T0 + 7_000 * MS,
        "pod/ns/p0",
        "side",
        Resource::Memory,
        true,
    )]);
    assert!(exhaustions(&run).is_empty());
    // The OOM restart itself is there: only the link is missing.
    assert!(
        run.changes()
            .any(|(_, _, c)| c.kind == CorrelationKind::OomRestart)
    );
}

#[test]
fn a_kill_beyond_the_bound_after_the_crossing_does_not_match() {
    let run = scenario(vec![usage(
        20,
        T0 + 10_000 * MS - WITHIN - MS,
        "pod/ns/p0",
        "app",
        Resource::Memory,
        true,
    )]);
    assert!(exhaustions(&run).is_empty());
    let at_the_bound = scenario(vec![usage(
        20,
        T0 + 10_000 * MS - WITHIN,
        "pod/ns/p0",
        "app",
        Resource::Memory,
        true,
    )]);
    assert_eq!(exhaustions(&at_the_bound).len(), 1);
}

#[test]
fn use_that_fell_back_before_the_kill_or_crossed_after_it_does_not_match() {
    let fell_back = scenario(vec![
        usage(
            20,
            T0 + 6_000 * MS,
            "pod/ns/p0",
            "app",
            Resource::Memory,
            true,
        ),
        usage(
            21,
            T0 + 8_000 * MS,
            "pod/ns/p0",
            "app",
            Resource::Memory,
            false,
        ),
    ]);
    assert!(exhaustions(&fell_back).is_empty());
    let after = scenario(vec![usage(
        20,
        T0 + 10_500 * MS,
        "pod/ns/p0",
        "app",
        Resource::Memory,
        true,
    )]);
    assert!(exhaustions(&after).is_empty());
    let cpu = scenario(vec![usage(
        20,
        T0 + 9_000 * MS,
        "pod/ns/p0",
        "app",
        Resource::Cpu,
        true,
    )]);
    assert!(exhaustions(&cpu).is_empty());
}
