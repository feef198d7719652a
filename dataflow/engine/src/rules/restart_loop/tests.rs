//! The restart loop rule against a recomputation from scratch at every tick, through the rule
//! harness with the OOM sequence rule before it (as in the table): random series of exits of a
//! few pods' containers, gaps below, at and above the bound, some exits OOM kills; facts out of
//! order within the lateness bound and a few beyond it. Then the rule's named cases: what is a
//! loop, what is not, how often it changes, and its cause.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, ContainerExit, Correlation, CorrelationKind, Detail, EntityId, ExitTally,
    Fact, FactId, FactPayload, Observation, Observed, OomKill, ProcessExit, Relation, TimeNs,
};

use super::from_config;
use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, heartbeats,
    same_for_any_order_and_two_workers,
};
use crate::operators::runs::level;
use crate::rules::{Evidence, oom_sequence};

const COUNT: u64 = 3;
const WITHIN: TimeNs = 5_000 * MS;
const KEEP_FOR: TimeNs = 8_000 * MS;
const LATENESS: TimeNs = 2_000 * MS;

fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.oom_sequence.within = Duration::from_secs(3);
    config.oom_sequence.keep_for = Duration::from_secs(6);
    config.restart_loop.count = COUNT as u32;
    config.restart_loop.within = Duration::from_nanos(WITHIN);
    config.restart_loop.keep_for = Duration::from_nanos(KEEP_FOR);
    config
}

/// The restart loop rule after the OOM sequence rule.
fn harness(config: &CorrelationConfig) -> RuleHarness {
    RuleHarness::from_table(from_config, config)
        .expect("enabled")
        .after(vec![oom_sequence::from_config(config).expect("enabled")])
        .with_upstream_output()
}

fn fact(node: &str, seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kubelet", node, seq),
        time_ns,
        payload,
    })
}

fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

/// A container exit as the kubelet reports it.
fn exit(seq: u64, time_ns: TimeNs, pod: &str, name: &str, id: &str, oom: bool) -> Observation {
    fact(
        "n1",
        seq,
        time_ns,
        FactPayload::ContainerExit(ContainerExit {
            container_id: id.into(),
            container_name: name.into(),
            pod: (!pod.is_empty()).then(|| entity(pod)),
            exit_code: if oom { 137 } else { 1 },
            reason: if oom { "OOMKilled" } else { "Error" }.into(),
            restart_count: seq as u32,
        }),
    )
}

/// An OOM kill of process `pid` in container `id`, and that process's exit.
fn kill(seq: u64, time_ns: TimeNs, pid: u32, id: &str) -> [Observation; 2] {
    let kernel = |seq, time_ns, payload| {
        Observation::Fact(Fact {
            id: FactId::new("kernel", "n1", seq),
            time_ns,
            payload,
        })
    };
    [
        kernel(
            seq,
            time_ns,
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
        kernel(
            seq + 1,
            time_ns + 100 * MS,
            FactPayload::ProcessExit(ProcessExit {
                pid,
                start_ns: T0,
                comm: "java".into(),
                exit_code: 0,
                signal: 9,
                container_id: Some(id.into()),
            }),
        ),
    ]
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

/// A random stream: series of exits of a few pods' containers with gaps on a 500 ms grid
/// (mostly within the bound, some exactly at it, some beyond), each exit a new container id,
/// a third of them OOM kills with their kill and process exit; exits that name no pod; and
/// heartbeats.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let pods = ["pod/ns/p0", "pod/ns/p1"];
    let names = ["app", "side"];
    let mut out = Vec::new();
    let mut seq = 0;
    let grid = |steps: u64| steps * 500 * MS;
    for _ in 0..5 {
        let (pod, name) = (pods[rng.below(2) as usize], names[rng.below(2) as usize]);
        let mut at = T0 + grid(4 + rng.below(60));
        for _ in 0..2 + rng.below(12) {
            seq += 10;
            let id = format!("c{seq}");
            let oom = rng.below(3) == 0;
            if oom {
                out.extend(kill(seq + 1, at - grid(2), seq as u32, &id));
            }
            let named_pod = if rng.below(12) == 0 { "" } else { pod };
            out.push(exit(seq, at, named_pod, name, &id, oom));
            at += match rng.below(10) {
                0 => WITHIN + grid(1 + rng.below(3)),
                1 => WITHIN,
                _ => grid(1 + rng.below(8)),
            };
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    sorted(out, end + KEEP_FOR + 2 * LATENESS)
}

/// From scratch: the exits of every (pod, container) folded tick by tick in entry order, as
/// the rule defines loops, with the OOM sequences `run` holds at each tick as the known causes.
struct Naive<'a> {
    exits: Vec<(Tick, &'a Fact)>,
    clock: TickClock,
    next: usize,
    runs: BTreeMap<(EntityId, String), Vec<Vec<&'a Fact>>>,
}

fn exit_of(fact: &Fact) -> &ContainerExit {
    match &fact.payload {
        FactPayload::ContainerExit(exit) => exit,
        _ => unreachable!("only exits are folded"),
    }
}

impl<'a> Naive<'a> {
    fn new(arrived: &'a [Observation], entered: &[Option<Tick>], clock: TickClock) -> Self {
        let mut exits: Vec<(Tick, &Fact)> = arrived
            .iter()
            .zip(entered)
            .filter_map(|(observation, at)| match (observation, at) {
                (Observation::Fact(fact), Some(at)) => match &fact.payload {
                    FactPayload::ContainerExit(exit)
                        if exit.pod.is_some() && !exit.container_name.is_empty() =>
                    {
                        Some((*at, fact))
                    }
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
            runs: BTreeMap::new(),
        }
    }

    fn expires(&self, run: &[&Fact]) -> Tick {
        let latest = run.iter().map(|fact| fact.time_ns).max().unwrap_or(0);
        self.clock.tick_of(latest + KEEP_FOR)
    }

    /// The loops at `tick`, with `causes` the OOM sequences held then.
    fn at(&mut self, tick: Tick, causes: &[Correlation]) -> BTreeMap<Correlation, i64> {
        while let Some((at, fact)) = self.exits.get(self.next).copied() {
            if at > tick {
                break;
            }
            self.next += 1;
            // Runs current at the tick before are carried into this one.
            let keep: Vec<bool> = self
                .runs
                .values()
                .flatten()
                .map(|run| self.expires(run) >= at)
                .collect();
            let mut keep = keep.into_iter();
            for runs in self.runs.values_mut() {
                runs.retain(|_| keep.next().unwrap_or(false));
            }
            let exit = exit_of(fact);
            let key = (exit.pod.clone().unwrap(), exit.container_name.clone());
            let runs = self.runs.entry(key).or_default();
            let newest = runs
                .iter_mut()
                .max_by_key(|run| run.iter().map(|fact| fact.time_ns).max());
            match newest {
                Some(run)
                    if fact.time_ns
                        <= run.iter().map(|fact| fact.time_ns).max().unwrap() + WITHIN =>
                {
                    run.push(fact)
                }
                _ => runs.push(vec![fact]),
            }
        }
        let mut out = BTreeMap::new();
        for ((pod, name), runs) in &self.runs {
            for run in runs.iter().filter(|run| self.expires(run) > tick) {
                if let Some(found) = expected(pod, name, run, causes) {
                    *out.entry(found).or_insert(0) += 1;
                }
            }
        }
        out
    }
}

/// The correlation of one run of exits, in fold order, from scratch.
fn expected(
    pod: &EntityId,
    name: &str,
    run: &[&Fact],
    causes: &[Correlation],
) -> Option<Correlation> {
    let reached = level(run.len() as u64, COUNT)? as usize;
    let counted = &run[..reached];
    let mut recorded: Vec<&Fact> = run[..COUNT as usize].to_vec();
    if reached > COUNT as usize {
        recorded.push(run[reached - 1]);
    }
    let times = counted.iter().map(|fact| fact.time_ns);
    let span_ns = times.clone().max().unwrap() - times.min().unwrap();
    let mut tally: BTreeMap<(i32, Arc<str>), u64> = BTreeMap::new();
    for fact in counted {
        let exit = exit_of(fact);
        *tally
            .entry((exit.exit_code, exit.reason.as_str().into()))
            .or_insert(0) += 1;
    }
    let cause = recorded.iter().enumerate().find_map(|(index, fact)| {
        let id = &exit_of(fact).container_id;
        causes
            .iter()
            .filter(|cause| {
                cause.chain.iter().any(|hop| {
                    hop.entity == EntityId::Container { id: id.clone() }
                        && matches!(hop.observed, Observed::ContainerExit { .. })
                })
            })
            .min()
            .map(|cause| (index, cause))
    });
    let hop = |fact: &Fact, relation| Evidence::of(fact).hop(pod, relation);
    let (root, chain, basis) = match cause {
        None => (
            pod.clone(),
            recorded
                .iter()
                .enumerate()
                .map(|(index, fact)| {
                    let relation = if index == 0 {
                        Relation::Start
                    } else {
                        Relation::FollowedBy
                    };
                    hop(fact, relation)
                })
                .collect(),
            vec![Basis::RecurredWithinBound],
        ),
        Some((index, cause)) => {
            let mut chain = cause.chain[..2].to_vec();
            chain.push(hop(recorded[index], Relation::Caused));
            chain.extend(
                recorded[index + 1..]
                    .iter()
                    .map(|fact| hop(fact, Relation::FollowedBy)),
            );
            let basis = vec![Basis::RecurredWithinBound, Basis::ExitsWereOomKills];
            (cause.root_cause.clone(), chain, basis)
        }
    };
    Some(Correlation::new(
        CorrelationKind::RestartLoop,
        root,
        chain,
        Detail::RestartLoop {
            container_name: name.into(),
            count: reached as u64,
            span_ns,
            period_ns: span_ns / (reached as u64 - 1),
            within_ns: WITHIN,
            exits: tally
                .into_iter()
                .map(|((exit_code, reason), count)| ExitTally {
                    exit_code,
                    reason,
                    count,
                })
                .collect(),
        },
        Confidence {
            percent: if cause.is_some() { 95 } else { 90 },
            basis,
        },
    ))
}

/// The OOM sequences a run holds, tick by tick.
struct Causes<'a> {
    changes: Vec<(TimeNs, i64, &'a Correlation)>,
    next: usize,
    held: BTreeMap<Correlation, i64>,
}

impl<'a> Causes<'a> {
    fn new(run: &'a RuleRun) -> Self {
        let changes = run
            .changes()
            .filter(|(_, _, correlation)| correlation.kind == CorrelationKind::OomRestart)
            .collect();
        Causes {
            changes,
            next: 0,
            held: BTreeMap::new(),
        }
    }

    /// Those held at the end of `tick`; ticks must come in order.
    fn at(&mut self, tick: Tick) -> Vec<Correlation> {
        while let Some((time, diff, correlation)) = self.changes.get(self.next) {
            if *time > TickClock::to_ns(tick) {
                break;
            }
            *self.held.entry((*correlation).clone()).or_insert(0) += diff;
            self.next += 1;
        }
        self.held.retain(|_, count| *count != 0);
        self.held.keys().cloned().collect()
    }
}

/// At every closed tick, the rule holds exactly the loops a fold from scratch finds over the
/// exits that entered by then, each joined to the OOM sequence held then that ended one of its
/// recorded exits.
#[test]
fn restart_loops_equal_a_recomputation_from_scratch_at_every_tick() {
    let (mut loops, mut caused, mut raised, mut retracted, mut late) = (0, 0, 0, 0, 0);
    for seed in 1..=10 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = harness(&config());
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        late += run.report.late;
        let mut naive = Naive::new(&arrived, &run.entered, clock);
        let mut causes = Causes::new(&run);
        let seen = assert_every_tick(
            &run,
            clock,
            |tick| {
                let causes = causes.at(tick);
                let mut want = naive.at(tick, &causes);
                want.extend(causes.into_iter().map(|cause| (cause, 1)));
                want
            },
            &format!("seed {seed}"),
        );
        retracted += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0 && correlation.kind == CorrelationKind::RestartLoop {
                loops += 1;
                caused += usize::from(correlation.confidence.percent == 95);
                if let Detail::RestartLoop { count, .. } = correlation.detail {
                    raised += usize::from(count > COUNT);
                }
            }
        }
    }
    // Loops, loops with their cause, loops past their first level, retractions, late facts.
    assert!(
        loops > 12 && caused > 3 && raised > 3 && retracted > 12 && late > 3,
        "{loops} {caused} {raised} {retracted} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn restart_loops_do_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=45 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let harness = harness(&config());
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(
            in_order
                .changes()
                .any(|(_, _, c)| c.kind == CorrelationKind::RestartLoop),
            "seed {seed}"
        );
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
    }
}

/// The restart loop changes of a run: (seconds after T0, diff, count).
fn loop_changes(run: &RuleRun) -> Vec<(u64, i64, u64)> {
    run.changes()
        .filter_map(|(time, diff, correlation)| match correlation.detail {
            Detail::RestartLoop { count, .. } => Some(((time - T0) / (1_000 * MS), diff, count)),
            _ => None,
        })
        .collect()
}

/// Exits of pod p0's container `app` at the given seconds after T0, none an OOM kill.
fn exits_at(seconds: &[u64]) -> Vec<Observation> {
    let exits: Vec<Observation> = seconds
        .iter()
        .enumerate()
        .map(|(index, at)| {
            let seq = index as u64 + 1;
            exit(
                seq,
                T0 + at * 1_000 * MS,
                "pod/ns/p0",
                "app",
                &format!("c{seq}"),
                false,
            )
        })
        .collect();
    let end = T0 + seconds.iter().max().unwrap() * 1_000 * MS;
    sorted(exits, end + KEEP_FOR + LATENESS)
}

#[test]
fn a_single_restart_is_not_a_loop() {
    let run = harness(&config()).run(exits_at(&[1])).expect("run");
    assert_eq!(loop_changes(&run), vec![]);
    assert_eq!(run.report.facts, 1, "the exit was read");
}

#[test]
fn restarts_further_apart_than_the_bound_are_not_a_loop() {
    // Four exits 6 s apart with a 5 s bound; then two within it, still fewer than three.
    let run = harness(&config())
        .run(exits_at(&[1, 7, 13, 19, 30, 33]))
        .expect("run");
    assert_eq!(loop_changes(&run), vec![]);
}

#[test]
fn two_containers_of_one_pod_do_not_make_one_loop() {
    let mut stream = exits_at(&[1, 3]);
    stream.push(exit(9, T0 + 2_000 * MS, "pod/ns/p0", "side", "s1", false));
    stream.push(exit(10, T0 + 4_000 * MS, "pod/ns/p1", "app", "s2", false));
    stream.sort_by_key(Observation::time_ns);
    let run = harness(&config()).run(stream).expect("run");
    assert_eq!(loop_changes(&run), vec![]);
}

/// Twelve exits 2 s apart: the loop appears at the third, is replaced at the fifth and the
/// tenth only, and is retracted `keep_for` after the last exit.
#[test]
fn a_loop_changes_only_when_its_count_reaches_a_level() {
    let seconds: Vec<u64> = (0..12).map(|n| 1 + 2 * n).collect();
    let run = harness(&config()).run(exits_at(&seconds)).expect("run");
    assert_eq!(
        loop_changes(&run),
        vec![
            (5, 1, 3),
            (9, -1, 3),
            (9, 1, 5),
            (19, -1, 5),
            (19, 1, 10),
            (31, -1, 10)
        ]
    );
    let found = run
        .changes()
        .map(|(_, _, correlation)| correlation)
        .find(|correlation| matches!(correlation.detail, Detail::RestartLoop { count: 10, .. }))
        .expect("level 10");
    // The first three exits and the tenth, on the pod; two seconds between restarts.
    let seqs: Vec<u64> = found.chain.iter().map(|hop| hop.fact_id.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 10]);
    assert_eq!(found.root_cause, entity("pod/ns/p0"));
    assert!(matches!(
        &found.detail,
        Detail::RestartLoop { period_ns, span_ns, exits, .. }
            if *period_ns == 2_000 * MS && *span_ns == 18_000 * MS
                && exits == &vec![ExitTally { exit_code: 1, reason: "Error".into(), count: 10 }]
    ));
    let text = tapio_model::render::explain(found);
    assert_eq!(
        text,
        "container app of pod/ns/p0 ended 10 times in 18 s (about every 2 s): 10× code 1 (Error)"
    );
}

/// A loop whose exits were OOM kills that the OOM sequence rule matched starts at the kill.
#[test]
fn an_oom_killed_exit_gives_the_loop_its_cause() {
    let mut stream = Vec::new();
    for (index, at) in [2u64, 4, 6].into_iter().enumerate() {
        let seq = index as u64 * 10 + 1;
        let id = format!("c{seq}");
        stream.extend(kill(
            seq + 1,
            T0 + at * 1_000 * MS - 500 * MS,
            40 + seq as u32,
            &id,
        ));
        stream.push(exit(
            seq,
            T0 + at * 1_000 * MS,
            "pod/ns/p0",
            "app",
            &id,
            true,
        ));
    }
    let stream = sorted(stream, T0 + 6_000 * MS + KEEP_FOR + LATENESS);
    let run = harness(&config()).run(stream.clone()).expect("run");
    let found: Vec<&Correlation> = run
        .changes()
        .filter(|(_, diff, c)| *diff > 0 && c.kind == CorrelationKind::RestartLoop)
        .map(|(_, _, c)| c)
        .collect();
    let first = found.first().expect("a loop");
    assert_eq!(
        first.root_cause,
        entity("process/n1/41/1767225600000000000")
    );
    let relations: Vec<Relation> = first.chain.iter().map(|hop| hop.relation).collect();
    assert_eq!(
        relations,
        vec![
            Relation::Start,
            Relation::FollowedBy,
            Relation::Caused,
            Relation::FollowedBy,
            Relation::FollowedBy
        ]
    );
    assert!(matches!(first.chain[0].observed, Observed::OomKill { .. }));
    assert!(first.confidence.basis.contains(&Basis::ExitsWereOomKills));
    assert!(
        tapio_model::render::explain(first).ends_with(
            "3× code 137 (OOMKilled); the kernel OOM killer ended process/n1/41/1767225600000000000"
        ),
        "{}",
        tapio_model::render::explain(first)
    );
    // Without the OOM sequence rule the same loop has no cause: it starts at the first exit.
    let alone = RuleHarness::from_table(from_config, &config()).expect("enabled");
    let run = alone.run(stream).expect("run");
    let (_, _, plain) = run.changes().next().expect("a loop");
    assert_eq!(plain.root_cause, entity("pod/ns/p0"));
    assert_eq!(plain.chain[0].relation, Relation::Start);
    assert!(matches!(
        plain.chain[0].observed,
        Observed::ContainerExit { .. }
    ));
    assert_eq!(plain.confidence.basis, vec![Basis::RecurredWithinBound]);
}
