//! The burst rule against a recomputation from scratch at every tick, through the rule
//! harness: random connects (failed and not) to a few endpoints and Events (Warning and
//! Normal) of a few reasons on a few objects, in series whose gaps fall below, at and beyond
//! each kind's bound; facts out of order within the lateness bound and a few beyond it. Then
//! the named cases: what is a burst and what is not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, BurstKind, Confidence, ConnectOutcome, Correlation, CorrelationKind, Detail, EntityId,
    EventType, Fact, FactId, FactPayload, KubeEvent, Observation, ProcessRef, Relation, Tally,
    TcpConnect, TimeNs,
};

use super::{KINDS, from_config};
use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, heartbeats,
    same_for_any_order_and_two_workers,
};
use crate::operators::runs::level;
use crate::rules::Evidence;

const KEEP_FOR: TimeNs = 6_000 * MS;
const LATENESS: TimeNs = 2_000 * MS;
/// Connect failures: 4 within 2 s.
const CONNECTS: (u64, TimeNs) = (4, 2_000 * MS);
/// Warning Events: 3 within 4 s.
const EVENTS: (u64, TimeNs) = (3, 4_000 * MS);

fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.burst.keep_for = Duration::from_nanos(KEEP_FOR);
    config.burst.connect_failures.count = CONNECTS.0 as u32;
    config.burst.connect_failures.within = Duration::from_nanos(CONNECTS.1);
    config.burst.warning_events.count = EVENTS.0 as u32;
    config.burst.warning_events.within = Duration::from_nanos(EVENTS.1);
    config
}

fn harness() -> RuleHarness {
    RuleHarness::from_table(from_config, &config()).expect("enabled")
}

fn connect(
    seq: u64,
    node: &str,
    time_ns: TimeNs,
    remote: &str,
    outcome: ConnectOutcome,
) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", node, seq),
        time_ns,
        payload: FactPayload::TcpConnect(TcpConnect {
            process: Some(ProcessRef {
                pid: 100 + (seq % 3) as u32,
                start_ns: T0,
                comm: "client".into(),
            }),
            local: "10.1.0.9:40000".parse().expect("address"),
            remote: remote.parse().expect("address"),
            outcome,
            error: if outcome.is_failure() { 111 } else { 0 },
            latency_ns: 1_000,
            container_id: None,
        }),
    })
}

fn event(seq: u64, time_ns: TimeNs, object: &str, reason: &str, warning: bool) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kubernetes", "cluster", seq),
        time_ns,
        payload: FactPayload::KubeEvent(KubeEvent {
            involved: object.parse().expect("entity"),
            reason: reason.into(),
            message: String::new(),
            component: "kubelet".into(),
            event_type: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            count: 1,
            first_ns: time_ns,
            last_ns: time_ns,
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

/// A random stream: series of connects to a few endpoints (most failing, some established or
/// aborted) and of Events on a few objects and reasons (most Warnings), gaps on a 250 ms grid.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let remotes = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:443"];
    let outcomes = [
        ConnectOutcome::Refused,
        ConnectOutcome::Refused,
        ConnectOutcome::TimedOut,
        ConnectOutcome::Failed,
        ConnectOutcome::Established,
        ConnectOutcome::Aborted,
    ];
    let objects = ["pod/ns/p0", "deployment/ns/d"];
    let reasons = ["BackOff", "Unhealthy"];
    let grid = |steps: u64| steps * 250 * MS;
    let mut out = Vec::new();
    let mut seq = 0;
    for _ in 0..8 {
        let mut at = T0 + grid(8 + rng.below(200));
        let connects = rng.below(2) == 0;
        let (remote, object, reason) = (
            remotes[rng.below(3) as usize],
            objects[rng.below(2) as usize],
            reasons[rng.below(2) as usize],
        );
        let within = if connects { CONNECTS.1 } else { EVENTS.1 };
        for _ in 0..2 + rng.below(14) {
            seq += 1;
            out.push(if connects {
                let node = if rng.below(2) == 0 { "n1" } else { "n2" };
                connect(seq, node, at, remote, outcomes[rng.below(6) as usize])
            } else {
                event(seq, at, object, reason, rng.below(5) > 0)
            });
            at += match rng.below(10) {
                0 => within + grid(1 + rng.below(3)),
                1 => within,
                _ => grid(rng.below(2 * within / (250 * MS))),
            };
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    sorted(out, end + KEEP_FOR + 2 * LATENESS)
}

/// The threshold of a kind.
fn threshold(kind: BurstKind) -> (u64, TimeNs) {
    match kind {
        BurstKind::ConnectFailures => CONNECTS,
        BurstKind::WarningEvents => EVENTS,
    }
}

type Key = (BurstKind, EntityId, Arc<str>);

/// A run of facts, each with what it said, in fold order.
type Run<'a> = Vec<(Arc<str>, &'a Fact)>;

/// From scratch: the facts that count, folded tick by tick in entry order into runs per kind,
/// subject and qualifier, as the rule defines bursts.
struct Naive<'a> {
    hits: Vec<(Tick, Key, Arc<str>, &'a Fact)>,
    clock: TickClock,
    next: usize,
    runs: BTreeMap<Key, Vec<Run<'a>>>,
}

impl<'a> Naive<'a> {
    fn new(arrived: &'a [Observation], entered: &[Option<Tick>], clock: TickClock) -> Self {
        let mut hits = Vec::new();
        for (observation, at) in arrived.iter().zip(entered) {
            let (Observation::Fact(fact), Some(at)) = (observation, at) else {
                continue;
            };
            // Written out, not through the table: failed connects by remote, Warning Events
            // by object and reason.
            let hit = match &fact.payload {
                FactPayload::TcpConnect(connect)
                    if matches!(
                        connect.outcome,
                        ConnectOutcome::Refused | ConnectOutcome::TimedOut | ConnectOutcome::Failed
                    ) =>
                {
                    let subject = EntityId::Endpoint {
                        address: connect.remote.to_string().into(),
                    };
                    let key = (BurstKind::ConnectFailures, subject, Arc::from(""));
                    (key, Arc::from(connect.outcome.as_str()))
                }
                FactPayload::KubeEvent(event) if event.event_type == EventType::Warning => {
                    let reason: Arc<str> = event.reason.as_str().into();
                    let key = (
                        BurstKind::WarningEvents,
                        event.involved.clone(),
                        reason.clone(),
                    );
                    (key, reason)
                }
                _ => continue,
            };
            hits.push((*at, hit.0, hit.1, fact));
        }
        hits.sort_by(|a, b| (a.0, a.3.time_ns, &a.3.id).cmp(&(b.0, b.3.time_ns, &b.3.id)));
        Naive {
            hits,
            clock,
            next: 0,
            runs: BTreeMap::new(),
        }
    }

    fn expires(&self, run: &[(Arc<str>, &Fact)]) -> Tick {
        let latest = run.iter().map(|(_, fact)| fact.time_ns).max().unwrap_or(0);
        self.clock.tick_of(latest + KEEP_FOR)
    }

    fn at(&mut self, tick: Tick) -> BTreeMap<Correlation, i64> {
        while let Some((at, key, said, fact)) = self.hits.get(self.next).cloned() {
            if at > tick {
                break;
            }
            self.next += 1;
            let clock = self.clock;
            let carried = |run: &Vec<(Arc<str>, &Fact)>| {
                let latest = run.iter().map(|(_, fact)| fact.time_ns).max().unwrap_or(0);
                clock.tick_of(latest + KEEP_FOR) >= at
            };
            for runs in self.runs.values_mut() {
                runs.retain(carried);
            }
            let within = threshold(key.0).1;
            let runs = self.runs.entry(key).or_default();
            let latest = |run: &Vec<(Arc<str>, &Fact)>| run.iter().map(|(_, f)| f.time_ns).max();
            match runs.iter_mut().max_by_key(|run| latest(run)) {
                Some(run) if fact.time_ns <= latest(run).unwrap() + within => {
                    run.push((said, fact))
                }
                _ => runs.push(vec![(said, fact)]),
            }
        }
        let mut out = BTreeMap::new();
        for (key, runs) in &self.runs {
            for run in runs.iter().filter(|run| self.expires(run) > tick) {
                if let Some(found) = expected(key, run) {
                    *out.entry(found).or_insert(0) += 1;
                }
            }
        }
        out
    }
}

/// The correlation of one run, in fold order, from scratch.
fn expected((kind, subject, _): &Key, run: &[(Arc<str>, &Fact)]) -> Option<Correlation> {
    let (count, within_ns) = threshold(*kind);
    let reached = level(run.len() as u64, count)? as usize;
    let counted = &run[..reached];
    let mut recorded: Vec<&Fact> = run[..count as usize].iter().map(|(_, f)| *f).collect();
    if reached > count as usize {
        recorded.push(run[reached - 1].1);
    }
    let times = counted.iter().map(|(_, fact)| fact.time_ns);
    let mut tally: BTreeMap<Arc<str>, u64> = BTreeMap::new();
    for (said, _) in counted {
        *tally.entry(said.clone()).or_insert(0) += 1;
    }
    let chain = recorded
        .iter()
        .enumerate()
        .map(|(index, fact)| {
            let relation = if index == 0 {
                Relation::Start
            } else {
                Relation::FollowedBy
            };
            Evidence::of(fact).hop(subject, relation)
        })
        .collect();
    Some(Correlation::new(
        CorrelationKind::Burst,
        subject.clone(),
        chain,
        Detail::Burst {
            kind: *kind,
            count: reached as u64,
            span_ns: times.clone().max().unwrap() - times.min().unwrap(),
            within_ns,
            tally: tally
                .into_iter()
                .map(|(said, count)| Tally { said, count })
                .collect(),
        },
        Confidence {
            percent: 90,
            basis: vec![Basis::RecurredWithinBound],
        },
    ))
}

/// At every closed tick, the rule holds exactly the bursts a fold from scratch finds over the
/// facts that entered by then.
#[test]
fn bursts_equal_a_recomputation_from_scratch_at_every_tick() {
    let (mut connects, mut events, mut raised, mut retracted, mut late) = (0, 0, 0, 0, 0);
    for seed in 1..=10 {
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
            if let (true, Detail::Burst { kind, count, .. }) = (diff > 0, &correlation.detail) {
                connects += usize::from(*kind == BurstKind::ConnectFailures);
                events += usize::from(*kind == BurstKind::WarningEvents);
                raised += usize::from(*count > threshold(*kind).0);
            }
        }
    }
    assert!(
        connects > 5 && events > 5 && raised > 3 && retracted > 10 && late > 3,
        "{connects} {events} {raised} {retracted} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn bursts_do_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=45 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let in_order = harness().run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 0, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness(), shuffled, &in_order, seed);
    }
}

fn bursts(run: &RuleRun) -> Vec<(u64, i64, String, u64)> {
    run.changes()
        .filter_map(|(time, diff, correlation)| match correlation.detail {
            Detail::Burst { count, .. } => Some((
                (time - T0) / (100 * MS),
                diff,
                correlation.root_cause.to_string(),
                count,
            )),
            _ => None,
        })
        .collect()
}

const SECOND: TimeNs = 1_000 * MS;

#[test]
fn refused_connects_to_one_endpoint_make_a_burst_rooted_at_it() {
    // Four refused connects 500 ms apart from two clients on two nodes; one established
    // connect in between does not count.
    let mut facts: Vec<Observation> = (0..4)
        .map(|n| {
            let node = if n % 2 == 0 { "n1" } else { "n2" };
            connect(
                n + 1,
                node,
                T0 + SECOND + n * 500 * MS,
                "10.0.0.1:80",
                ConnectOutcome::Refused,
            )
        })
        .collect();
    facts.push(connect(
        9,
        "n1",
        T0 + 1_200 * MS,
        "10.0.0.1:80",
        ConnectOutcome::Established,
    ));
    let run = harness().run(sorted(facts, T0 + 10 * SECOND)).expect("run");
    // Appears with the fourth (at 2.5 s), retracted 6 s after it.
    assert_eq!(
        bursts(&run),
        vec![
            (25, 1, "endpoint/10.0.0.1:80".into(), 4),
            (85, -1, "endpoint/10.0.0.1:80".into(), 4)
        ]
    );
    let (_, _, found) = run.changes().next().expect("a burst");
    assert_eq!(found.chain.len(), 4);
    assert_eq!(found.family, tapio_model::Family::Temporal);
    assert_eq!(
        tapio_model::render::explain(found),
        "4 failed connects to endpoint/10.0.0.1:80 in 1 s (4 refused)"
    );
}

#[test]
fn connect_failures_to_different_endpoints_do_not_make_a_burst() {
    let remotes = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:8080", "10.0.0.3:80"];
    let facts = remotes
        .iter()
        .enumerate()
        .map(|(n, remote)| {
            let at = T0 + SECOND + n as u64 * 100 * MS;
            connect(n as u64 + 1, "n1", at, remote, ConnectOutcome::Refused)
        })
        .collect();
    let run = harness().run(sorted(facts, T0 + 10 * SECOND)).expect("run");
    assert_eq!(bursts(&run), vec![]);
    assert_eq!(run.report.facts, 4, "every failure was read");
}

#[test]
fn warning_events_burst_per_object_and_reason_only() {
    // Three BackOff Warnings on p0 make a burst; two Unhealthy on p0, three BackOff on p1
    // that are Normal, and a BackOff on another object do not add to it.
    let mut facts = Vec::new();
    for n in 0..3 {
        facts.push(event(
            n + 1,
            T0 + SECOND + n * SECOND,
            "pod/ns/p0",
            "BackOff",
            true,
        ));
        facts.push(event(
            n + 10,
            T0 + SECOND + n * SECOND,
            "pod/ns/p1",
            "BackOff",
            false,
        ));
    }
    facts.push(event(20, T0 + 2 * SECOND, "pod/ns/p0", "Unhealthy", true));
    facts.push(event(21, T0 + 3 * SECOND, "pod/ns/p0", "Unhealthy", true));
    facts.push(event(
        22,
        T0 + 3 * SECOND,
        "deployment/ns/d",
        "BackOff",
        true,
    ));
    let run = harness().run(sorted(facts, T0 + 12 * SECOND)).expect("run");
    assert_eq!(
        bursts(&run),
        vec![
            (30, 1, "pod/ns/p0".into(), 3),
            (90, -1, "pod/ns/p0".into(), 3)
        ]
    );
    let (_, _, found) = run.changes().next().expect("a burst");
    assert!(
        matches!(&found.detail, Detail::Burst { kind: BurstKind::WarningEvents, tally, .. }
        if tally == &vec![Tally { said: "BackOff".into(), count: 3 }])
    );
}

#[test]
fn every_burst_kind_reads_the_facts_it_names() {
    for spec in KINDS {
        let rule = from_config(&config()).expect("enabled");
        let fact = match spec.kind {
            BurstKind::ConnectFailures => {
                connect(1, "n", T0, "10.0.0.1:80", ConnectOutcome::TimedOut)
            }
            BurstKind::WarningEvents => event(1, T0, "pod/ns/p", "BackOff", true),
        };
        let Observation::Fact(fact) = fact else {
            unreachable!("a fact")
        };
        assert_eq!(fact.payload.kind(), spec.fact);
        assert!(rule.reads(&fact) && (spec.about)(&fact).is_some());
    }
}
