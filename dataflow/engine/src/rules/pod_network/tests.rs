//! The pod network rule against a recomputation from scratch at every tick, through the rule
//! harness: random ADDs of three pods (failed or not, on several sandboxes, some at the same
//! time), DELs and ADDs without a pod that it must ignore, facts arriving out of order within
//! the lateness bound and a few beyond it. Then one pod's story told by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, CniAddress, CniCommand, CniError, CniOperation, Confidence, Correlation,
    CorrelationKind, Detail, EntityId, Fact, FactId, FactPayload, Observation, Observed, Relation,
    TimeNs,
};

use super::from_config;
use crate::clock::{Tick, TickClock};
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};

/// How long an ADD is remembered, ms (= ticks).
const KEEP_FOR_MS: Tick = 8_000;
const LATENESS: TimeNs = 2_000 * MS;

fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.pod_network.keep_for = Duration::from_millis(KEEP_FOR_MS);
    config
}

fn operation(
    seq: u64,
    time_ns: TimeNs,
    command: CniCommand,
    pod: Option<&str>,
    sandbox: &str,
    failed: bool,
) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("cni", "n1", seq),
        time_ns,
        payload: FactPayload::CniOperation(CniOperation {
            command,
            network: "podnet".into(),
            container_id: sandbox.into(),
            pod: pod.map(|pod| pod.parse().expect("entity")),
            pod_uid: None,
            netns: format!("/var/run/netns/{sandbox}"),
            ifname: "eth0".into(),
            interfaces: Vec::new(),
            ips: if failed {
                Vec::new()
            } else {
                vec![CniAddress {
                    address: format!("10.0.0.{}/24", seq % 250),
                    gateway: None,
                    interface: Some("eth0".into()),
                }]
            },
            error: failed.then(|| CniError {
                plugin: "bridge".into(),
                code: 999,
                message: "no IP addresses available in range set".into(),
                details: String::new(),
            }),
            duration_ns: 20 * MS,
        }),
    })
}

/// A random stream for one seed, in event time order, with heartbeats every 500 ms. Times are
/// on a 500 ms grid, so ADDs tie and fall exactly on the end of `keep_for`.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let pods = ["pod/ns/a", "pod/ns/b", "pod/ns/c"];
    let sandboxes = ["s1", "s2", "s3", "s4"];
    let mut out = Vec::new();
    for seq in 1..=40 {
        let at = T0 + rng.below(60) * 500 * MS;
        let command = match rng.below(8) {
            0 => CniCommand::Del,
            1 => CniCommand::Check,
            _ => CniCommand::Add,
        };
        let pod = (rng.below(10) > 0).then(|| pods[rng.below(3) as usize]);
        let sandbox = sandboxes[rng.below(4) as usize];
        out.push(operation(seq, at, command, pod, sandbox, rng.below(5) < 3));
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

/// From scratch, at `tick`: the ADDs of named pods that entered by then and are within
/// `keep_for` of their own tick; per pod, in (time, fact id) order, the failed ones after the
/// last successful one; the latest of them explains the pod.
fn naive(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let mut by_pod: BTreeMap<EntityId, Vec<&Fact>> = BTreeMap::new();
    for (observation, at) in arrived.iter().zip(entered) {
        let (Observation::Fact(fact), Some(at)) = (observation, at) else {
            continue;
        };
        let FactPayload::CniOperation(op) = &fact.payload else {
            continue;
        };
        if *at > tick || tick >= clock.tick_of(fact.time_ns) + KEEP_FOR_MS {
            continue;
        }
        if let (CniCommand::Add, Some(pod)) = (op.command, &op.pod) {
            by_pod.entry(pod.clone()).or_default().push(fact);
        }
    }
    let mut expected = BTreeMap::new();
    for (pod, mut facts) in by_pod {
        facts.sort_by_key(|fact| (fact.time_ns, fact.id.clone()));
        let failed_of = |fact: &Fact| -> Option<CniOperation> {
            match &fact.payload {
                FactPayload::CniOperation(op) if op.error.is_some() => Some(op.clone()),
                _ => None,
            }
        };
        let trailing: Vec<&&Fact> = facts
            .iter()
            .rev()
            .take_while(|fact| failed_of(fact).is_some())
            .collect();
        let Some(latest) = trailing.first() else {
            continue;
        };
        let op = failed_of(latest).expect("failed");
        let sandbox = EntityId::Container {
            id: op.container_id.clone(),
        };
        let observed = Observed::of_fact(&latest.payload);
        let hop = |entity: &EntityId, relation| tapio_model::Hop {
            entity: entity.clone(),
            relation,
            fact_id: latest.id.clone(),
            time: latest.time_ns,
            observed: observed.clone(),
        };
        let correlation = Correlation::new(
            CorrelationKind::PodNetworkFailure,
            sandbox.clone(),
            vec![hop(&sandbox, Relation::Start), hop(&pod, Relation::Caused)],
            Detail::PodNetwork {
                failed_adds: trailing.len() as u32,
                plugin: "bridge".into(),
                network: "podnet".into(),
            },
            Confidence {
                percent: 90,
                basis: vec![Basis::NetworkSetupFailed],
            },
        );
        *expected.entry(correlation).or_insert(0) += 1;
    }
    expected
}

#[test]
fn pod_network_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut appeared, mut retracted, mut repeated, mut late) = (0, 0, 0, 0);
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
            |tick| naive(&arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        appeared += seen.appeared;
        retracted += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0
                && let Detail::PodNetwork { failed_adds, .. } = correlation.detail
            {
                repeated += usize::from(failed_adds > 1);
            }
        }
    }
    // Failures explained, retracted (by a success or by age), counted over several ADDs; late
    // facts.
    assert!(
        appeared > 30 && retracted > 30 && repeated > 10 && late > 5,
        "{appeared} {retracted} {repeated} {late}"
    );
}

#[test]
fn pod_network_does_not_depend_on_arrival_order_or_workers() {
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

/// Pod a's ADD fails at 1 s and 3 s (two failures, the latest explains it), succeeds at 5 s
/// (retracted), fails again at 7 s (one failure), and nothing more: the failure at 7 s is
/// forgotten `keep_for` later.
#[test]
fn a_successful_add_retracts_the_failure_and_an_old_one_is_forgotten() {
    let second = |s: u64| T0 + s * 1_000 * MS;
    let mut stream = vec![
        operation(1, second(1), CniCommand::Add, Some("pod/ns/a"), "s1", true),
        operation(2, second(3), CniCommand::Add, Some("pod/ns/a"), "s2", true),
        operation(3, second(5), CniCommand::Add, Some("pod/ns/a"), "s3", false),
        operation(4, second(7), CniCommand::Add, Some("pod/ns/a"), "s4", true),
    ];
    stream.extend(heartbeats(T0, second(30), 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
    let clock = harness.clock();
    let run = harness.run(stream).expect("run");
    let held = |at: TimeNs| -> Vec<(String, u32)> {
        run.held_at(clock.tick_of(at))
            .keys()
            .map(|c| match c.detail {
                Detail::PodNetwork { failed_adds, .. } => (c.root_cause.to_string(), failed_adds),
                _ => panic!("{c:?}"),
            })
            .collect()
    };
    assert_eq!(held(second(2)), [("container/s1".to_string(), 1)]);
    assert_eq!(held(second(4)), [("container/s2".to_string(), 2)]);
    assert_eq!(held(second(6)), []);
    assert_eq!(held(second(8)), [("container/s4".to_string(), 1)]);
    assert_eq!(held(second(7) + KEEP_FOR_MS * MS + 500 * MS), []);
    let (_, _, first) = run.changes().next().expect("a change");
    assert_eq!(
        tapio_model::render::explain(first),
        "pod/ns/a has no network: the CNI ADD of its sandbox container/s1 on network podnet \
         failed once and has not succeeded since (plugin bridge): no IP addresses available in \
         range set"
    );
}
