//! The co-occurrence rule against a recomputation from scratch at every tick, through the rule
//! harness: random container exits of a few pods on two nodes, some in bunches (a node-wide
//! restart), some alone, some naming no pod; facts out of order within the lateness bound and a
//! few beyond it. Then the named cases: what reads as a node problem and what does not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, ContainerExit, Correlation, CorrelationKind, Detail, EntityId, Fact, FactId,
    FactPayload, Observation, Relation, TimeNs,
};

use super::from_config;
use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, heartbeats,
    same_for_any_order_and_two_workers,
};
use crate::operators::runs::level;
use crate::rules::Evidence;

pub(crate) const PODS: u64 = 3;
pub(crate) const WITHIN: TimeNs = 2_000 * MS;
pub(crate) const KEEP_FOR: TimeNs = 5_000 * MS;
pub(crate) const LATENESS: TimeNs = 2_000 * MS;
pub(crate) const SECOND: TimeNs = 1_000 * MS;

pub(crate) fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.co_occurrence.pods = PODS as u32;
    config.co_occurrence.within = Duration::from_nanos(WITHIN);
    config.co_occurrence.keep_for = Duration::from_nanos(KEEP_FOR);
    config
}

fn harness() -> RuleHarness {
    RuleHarness::from_table(from_config, &config()).expect("enabled")
}

/// A container exit of `pod` reported by the kubelet on `node`.
pub(crate) fn exit(seq: u64, node: &str, time_ns: TimeNs, pod: &str) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kubelet", node, seq),
        time_ns,
        payload: FactPayload::ContainerExit(ContainerExit {
            container_id: format!("c{seq}").into(),
            container_name: "app".into(),
            pod: (!pod.is_empty()).then(|| pod.parse().expect("pod")),
            exit_code: 137,
            reason: "Error".into(),
            restart_count: 1,
        }),
    })
}

pub(crate) fn sorted(mut stream: Vec<Observation>, until: TimeNs) -> Vec<Observation> {
    stream.extend(heartbeats(T0, until, 500 * MS));
    stream.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    stream
}

/// A random stream: bunches of exits of a few of six pods on one of two nodes, on a 250 ms
/// grid, spread over up to twice the bound; the same pod more than once; exits naming no pod.
pub(crate) fn stream(rng: &mut Rng) -> Vec<Observation> {
    let pods = [
        "pod/a/p0", "pod/a/p1", "pod/b/p2", "pod/b/p3", "pod/c/p4", "pod/c/p5",
    ];
    let grid = |steps: u64| steps * 250 * MS;
    let mut out = Vec::new();
    let mut seq = 0;
    for _ in 0..8 {
        let node = if rng.below(2) == 0 { "n1" } else { "n2" };
        let start = T0 + grid(8 + rng.below(160));
        for _ in 0..1 + rng.below(8) {
            seq += 1;
            let at = start + grid(rng.below(2 * WITHIN / (250 * MS) + 1));
            let pod = if rng.below(10) == 0 {
                ""
            } else {
                pods[rng.below(6) as usize]
            };
            out.push(exit(seq, node, at, pod));
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    sorted(out, end + KEEP_FOR + 2 * LATENESS)
}

/// From scratch: each node's exits folded tick by tick in entry order into groups within the
/// bound after a group's first exit, as the rule defines them.
pub(crate) struct Naive<'a> {
    exits: Vec<(Tick, &'a Fact)>,
    clock: TickClock,
    next: usize,
    groups: BTreeMap<Arc<str>, Vec<Vec<&'a Fact>>>,
}

fn pod_of(fact: &Fact) -> EntityId {
    match &fact.payload {
        FactPayload::ContainerExit(exit) => exit.pod.clone().expect("only exits with a pod"),
        _ => unreachable!("only exits are folded"),
    }
}

impl<'a> Naive<'a> {
    pub(crate) fn new(
        arrived: &'a [Observation],
        entered: &[Option<Tick>],
        clock: TickClock,
    ) -> Self {
        let mut exits: Vec<(Tick, &Fact)> = arrived
            .iter()
            .zip(entered)
            .filter_map(|(observation, at)| match (observation, at) {
                (Observation::Fact(fact), Some(at)) => match &fact.payload {
                    FactPayload::ContainerExit(exit) if exit.pod.is_some() => Some((*at, fact)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        exits.sort_by_key(|(at, fact)| (*at, fact.time_ns, fact.id.clone()));
        Naive {
            exits,
            clock,
            next: 0,
            groups: BTreeMap::new(),
        }
    }

    pub(crate) fn at(&mut self, tick: Tick) -> BTreeMap<Correlation, i64> {
        let clock = self.clock;
        let expires = move |group: &Vec<&Fact>| {
            let latest = group.iter().map(|fact| fact.time_ns).max().unwrap_or(0);
            clock.tick_of(latest + KEEP_FOR)
        };
        while let Some((at, fact)) = self.exits.get(self.next).copied() {
            if at > tick {
                break;
            }
            self.next += 1;
            for groups in self.groups.values_mut() {
                groups.retain(|group| expires(group) >= at);
            }
            let groups = self.groups.entry(Arc::clone(&fact.id.node)).or_default();
            let latest = |group: &Vec<&Fact>| group.iter().map(|fact| fact.time_ns).max();
            let earliest = |group: &Vec<&Fact>| group.iter().map(|fact| fact.time_ns).min();
            match groups.iter_mut().max_by_key(|group| latest(group)) {
                Some(group) if fact.time_ns <= earliest(group).unwrap() + WITHIN => {
                    group.push(fact)
                }
                _ => groups.push(vec![fact]),
            }
        }
        let mut out = BTreeMap::new();
        for (node, groups) in &self.groups {
            for group in groups.iter().filter(|group| expires(group) > tick) {
                if let Some(found) = expected(node, group) {
                    *out.entry(found).or_insert(0) += 1;
                }
            }
        }
        out
    }
}

/// The correlation of one group, in fold order, from scratch.
fn expected(node: &Arc<str>, group: &[&Fact]) -> Option<Correlation> {
    let mut firsts: Vec<&Fact> = Vec::new();
    for fact in group {
        if !firsts.iter().any(|seen| pod_of(seen) == pod_of(fact)) {
            firsts.push(fact);
        }
    }
    let reached = level(firsts.len() as u64, PODS)?;
    let last_ns = firsts[reached as usize - 1].time_ns;
    let tied = firsts[reached as usize..]
        .iter()
        .take_while(|fact| fact.time_ns == last_ns)
        .count();
    let counted = &firsts[..reached as usize + tied];
    let node = EntityId::Node { name: node.clone() };
    let mut chain = vec![Evidence::of(counted[0]).hop(&node, Relation::Start)];
    for (index, fact) in counted.iter().enumerate() {
        let relation = if index == 0 {
            Relation::Caused
        } else {
            Relation::FollowedBy
        };
        chain.push(Evidence::of(fact).hop(&pod_of(fact), relation));
    }
    let times = counted.iter().map(|fact| fact.time_ns);
    Some(Correlation::new(
        CorrelationKind::CoOccurrence,
        node,
        chain,
        Detail::CoOccurrence {
            pods: counted.len() as u64,
            span_ns: times.clone().max().unwrap() - times.min().unwrap(),
            within_ns: WITHIN,
        },
        Confidence {
            percent: (60 + 5 * reached).min(90) as u8,
            basis: vec![Basis::PodsEndedTogether],
        },
    ))
}

/// At every closed tick, the rule holds exactly the groups a fold from scratch finds over the
/// exits that entered by then.
#[test]
fn co_occurrences_equal_a_recomputation_from_scratch_at_every_tick() {
    let (mut found, mut raised, mut retracted, mut late) = (0, 0, 0, 0);
    for seed in 1..=12 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = harness();
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        late += run.report.late;
        let mut naive = Naive::new(&arrived, &run.entered, clock);
        let seen = assert_every_tick(&run, clock, |tick| naive.at(tick), &format!("seed {seed}"));
        retracted += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if let (true, Detail::CoOccurrence { pods, .. }) = (diff > 0, &correlation.detail) {
                found += 1;
                raised += usize::from(*pods > PODS);
            }
        }
    }
    assert!(
        found > 10 && raised > 3 && retracted > 10 && late > 3,
        "{found} {raised} {retracted} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn co_occurrences_do_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=45 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let in_order = harness().run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 0, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness(), shuffled, &in_order, seed);
    }
}

fn groups(run: &RuleRun) -> Vec<(u64, i64, String, u64)> {
    run.changes()
        .filter_map(|(time, diff, correlation)| match correlation.detail {
            Detail::CoOccurrence { pods, .. } => Some((
                (time - T0) / (100 * MS),
                diff,
                correlation.root_cause.to_string(),
                pods,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn containers_of_three_pods_ending_together_root_at_their_node() {
    let facts = vec![
        exit(1, "n1", T0 + SECOND, "pod/a/p0"),
        exit(2, "n1", T0 + 1_200 * MS, "pod/a/p0"),
        exit(3, "n1", T0 + 1_500 * MS, "pod/b/p1"),
        exit(4, "n1", T0 + 2_500 * MS, "pod/c/p2"),
    ];
    let run = harness().run(sorted(facts, T0 + 10 * SECOND)).expect("run");
    assert_eq!(
        groups(&run),
        vec![(25, 1, "node/n1".into(), 3), (75, -1, "node/n1".into(), 3)]
    );
    let (_, _, found) = run.changes().next().expect("a co-occurrence");
    let hops: Vec<(String, Relation, u64)> = found
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation, hop.fact_id.seq))
        .collect();
    assert_eq!(
        hops,
        vec![
            ("node/n1".into(), Relation::Start, 1),
            ("pod/a/p0".into(), Relation::Caused, 1),
            ("pod/b/p1".into(), Relation::FollowedBy, 3),
            ("pod/c/p2".into(), Relation::FollowedBy, 4),
        ]
    );
    assert_eq!(
        tapio_model::render::explain(found),
        "containers of 3 pods on node/n1 ended within 1 s: pod/a/p0 → pod/b/p1 → pod/c/p2; \
         a node-wide cause such as a container runtime or kubelet restart"
    );
}

#[test]
fn fewer_pods_than_the_threshold_are_no_node_problem() {
    // Two pods, one of them ending three times: their own restarts.
    let facts = vec![
        exit(1, "n1", T0 + SECOND, "pod/a/p0"),
        exit(2, "n1", T0 + 1_200 * MS, "pod/a/p0"),
        exit(3, "n1", T0 + 1_500 * MS, "pod/b/p1"),
        exit(4, "n1", T0 + 1_700 * MS, "pod/a/p0"),
    ];
    let run = harness().run(sorted(facts, T0 + 10 * SECOND)).expect("run");
    assert_eq!(groups(&run), vec![]);
}

#[test]
fn an_exit_on_another_node_does_not_count() {
    let facts = vec![
        exit(1, "n1", T0 + SECOND, "pod/a/p0"),
        exit(2, "n1", T0 + 1_500 * MS, "pod/b/p1"),
        exit(3, "n2", T0 + 1_600 * MS, "pod/c/p2"),
    ];
    let run = harness().run(sorted(facts, T0 + 10 * SECOND)).expect("run");
    assert_eq!(groups(&run), vec![]);
}

#[test]
fn exits_further_apart_than_the_bound_after_the_first_do_not_count() {
    // The third pod ends 2.5 s after the first: past the 2 s bound, it starts a new group.
    let facts = vec![
        exit(1, "n1", T0 + SECOND, "pod/a/p0"),
        exit(2, "n1", T0 + 2_900 * MS, "pod/b/p1"),
        exit(3, "n1", T0 + 3_500 * MS, "pod/c/p2"),
    ];
    let run = harness().run(sorted(facts, T0 + 10 * SECOND)).expect("run");
    assert_eq!(groups(&run), vec![]);
}
