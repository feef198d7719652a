//! The DNS failure rule against a recomputation from scratch at every tick, through the rule
//! harness: random lookups (failed, answered, NXDOMAIN) from containers, from processes linked
//! to containers and from unknown processes, to a Service's cluster IP, to its endpoint and to
//! an unrelated server; failed and established connects; the server pod's container exits and
//! readiness changes; the Service's endpoint turning not ready and back; facts out of order
//! within the lateness bound and a few beyond it; pods' container lists changing underneath.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, ConnectOutcome, ContainerExit, ContainerReady, Correlation, CorrelationKind,
    Detail, DnsOutcome, DnsQuery, EntityId, Fact, FactId, FactPayload, Hop, Observation, Observed,
    PodContainer, ProcessContainer, ProcessRef, Relation, ServiceEndpoint, ServiceObject,
    StateObject, StateRecord, StateUpdate, TcpConnect, TimeNs,
};

use super::from_config;
use crate::clock::{Tick, TickClock};
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};

/// W.
const WINDOW: TimeNs = 3_000 * MS;
/// How long before the first lookup a server failure counts.
const CAUSE_BEFORE: TimeNs = 2_000 * MS;
/// How long a burst stays current, ms (= ticks).
const KEEP_FOR_MS: Tick = 8_000;
/// N.
const MIN_FAILURES: usize = 3;
const LATENESS: TimeNs = 2_000 * MS;
/// How long a process stays linked to its container after it exits, ms.
const GRACE_MS: Tick = 1_000;

fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.ownership.process_exit_grace = Duration::from_millis(GRACE_MS);
    config.dns_failure.min_failures = MIN_FAILURES as u32;
    config.dns_failure.window = Duration::from_nanos(WINDOW);
    config.dns_failure.cause_before = Duration::from_nanos(CAUSE_BEFORE);
    config.dns_failure.keep_for = Duration::from_millis(KEEP_FOR_MS);
    config
}

fn fact(node: &str, seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("agent", node, seq),
        time_ns,
        payload,
    })
}

fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

fn address(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// The cluster DNS Service's cluster IP, its one endpoint, and a server nothing knows.
const CLUSTER_IP: &str = "10.96.0.10:53";
const ENDPOINT: &str = "10.0.0.53:53";
const STRANGER: &str = "10.0.0.99:53";
const DNS_POD: &str = "pod/kube-system/dns-0";
const SERVICE: &str = "service/kube-system/dns";

/// Who queries or connects: a container, a process (linked to container `c2` on node `n1`), or
/// a process nothing links.
fn actor(rng: &mut Rng) -> (Option<Arc<str>>, Option<ProcessRef>) {
    let process = |pid| ProcessRef {
        pid,
        start_ns: T0,
        comm: "app".into(),
    };
    match rng.below(5) {
        0 => (Some("c0".into()), None),
        1 => (Some("c1".into()), None),
        2 => (None, Some(process(7))),
        3 => (None, Some(process(8))),
        _ => (Some("c0".into()), Some(process(9))),
    }
}

/// A random stream for one seed, in event time order, on a 500 ms grid so that steps fall
/// exactly on W and on the cause bound.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let grid = |steps: u64| steps * 500 * MS;
    let state = |seq: u64, time_ns: TimeNs, since_ns: TimeNs, diff: i8, object| {
        Observation::State(StateUpdate {
            time_ns,
            diff,
            record: StateRecord {
                evidence: FactId::new("kubernetes", "cluster", seq),
                since_ns,
                object,
            },
        })
    };
    // Episodes of lookups from one actor to one server, dense enough to make bursts.
    for _ in 0..10 {
        let from = T0 + grid(rng.below(50));
        let (container_id, process) = actor(rng);
        let server = [CLUSTER_IP, ENDPOINT, STRANGER][rng.below(3) as usize];
        for _ in 0..1 + rng.below(5) {
            let outcome = match rng.below(8) {
                0 => DnsOutcome::Answered,
                1 => DnsOutcome::NxDomain,
                2 => DnsOutcome::Refused,
                3 | 4 => DnsOutcome::ServFail,
                _ => DnsOutcome::TimedOut,
            };
            out.push(fact(
                "n1",
                next(),
                from + grid(rng.below(8)),
                FactPayload::DnsQuery(DnsQuery {
                    process: process.clone(),
                    container_id: container_id.clone(),
                    client: address("10.0.1.5:40000"),
                    server: address(server),
                    name: ["api.default.svc", "db.default.svc"][rng.below(2) as usize].into(),
                    qtype: 1,
                    outcome,
                    rcode: (outcome != DnsOutcome::TimedOut).then_some(2),
                    answers: Vec::new(),
                    latency_ns: 5_000 * MS,
                    records: Vec::new(),
                    search_expansions: 0,
                }),
            ));
        }
        for _ in 0..rng.below(3) {
            let (container_id, process) = if rng.below(3) == 0 {
                actor(rng)
            } else {
                (container_id.clone(), process.clone())
            };
            let outcome = [
                ConnectOutcome::Refused,
                ConnectOutcome::TimedOut,
                ConnectOutcome::Established,
            ][rng.below(3) as usize];
            out.push(fact(
                "n1",
                next(),
                from + grid(rng.below(10)),
                FactPayload::TcpConnect(TcpConnect {
                    process,
                    local: address("10.0.1.5:41000"),
                    remote: address("10.0.2.7:8080"),
                    outcome,
                    error: 111,
                    latency_ns: MS,
                    container_id,
                }),
            ));
        }
    }
    // The DNS server's pod failing: its container exiting (the exit naming its pod or not) and
    // losing readiness, and its endpoint not ready for a while.
    for _ in 0..4 {
        let at = T0 + grid(rng.below(55));
        let payload = match rng.below(3) {
            0 => FactPayload::ContainerReady(ContainerReady {
                pod: entity(DNS_POD),
                container_name: "dnsmasq".into(),
                container_id: "cd".into(),
                ready: rng.below(3) > 0,
                restart_count: 1,
            }),
            named => FactPayload::ContainerExit(ContainerExit {
                container_id: "cd".into(),
                container_name: "dnsmasq".into(),
                pod: (named == 1).then(|| entity(DNS_POD)),
                exit_code: 1,
                reason: "Error".into(),
                restart_count: 1,
            }),
        };
        out.push(fact("n2", next(), at, payload));
    }
    let service = StateObject::Service(ServiceObject {
        entity: entity(SERVICE),
        uid: "u".into(),
        cluster_ips: vec!["10.96.0.10".into()],
    });
    let endpoint = |ready| {
        StateObject::ServiceEndpoint(ServiceEndpoint {
            service: entity(SERVICE),
            endpoint: entity(&format!("endpoint/{ENDPOINT}")),
            pod: Some(entity(DNS_POD)),
            ready,
        })
    };
    let seq_service = next();
    out.push(state(seq_service, T0, T0, 1, service.clone()));
    if rng.below(4) == 0 {
        let gone = T0 + grid(10 + rng.below(40));
        out.push(state(seq_service, gone, T0, -1, service));
    }
    // The endpoint: ready, then not ready from `down` to `up`, then ready again.
    let down = T0 + grid(rng.below(40));
    let up = down + grid(1 + rng.below(20));
    let (ready_seq, down_seq, again_seq) = (next(), next(), next());
    out.push(state(ready_seq, T0, T0, 1, endpoint(true)));
    out.push(state(ready_seq, down, T0, -1, endpoint(true)));
    out.push(state(down_seq, down, down, 1, endpoint(false)));
    out.push(state(down_seq, up, down, -1, endpoint(false)));
    out.push(state(again_seq, up, up, 1, endpoint(true)));
    // Containers in pods, the DNS pod's container, processes in containers; some go away.
    for (pod, id) in [
        ("pod/default/a", "c0"),
        ("pod/default/b", "c1"),
        ("pod/default/b", "c2"),
        (DNS_POD, "cd"),
    ] {
        let from = T0 + grid(rng.below(20));
        let object = StateObject::PodContainer(PodContainer {
            pod: entity(pod),
            pod_uid: "u".into(),
            container_name: "app".into(),
            container_id: id.into(),
        });
        let seq = next();
        out.push(state(seq, from, from, 1, object.clone()));
        if rng.below(4) == 0 {
            out.push(state(seq, from + grid(1 + rng.below(40)), from, -1, object));
        }
    }
    for pid in [7, 8] {
        let from = T0 + grid(rng.below(20));
        let object = StateObject::ProcessContainer(ProcessContainer {
            process: EntityId::Process {
                start_ns: T0,
                pid,
                node: "n1".into(),
            },
            container_id: if pid == 7 { "c2" } else { "c1" }.into(),
            filename: "/app".into(),
        });
        let seq = next();
        out.push(state(seq, from, from, 1, object.clone()));
        if rng.below(2) == 0 {
            out.push(state(seq, from + grid(1 + rng.below(30)), from, -1, object));
        }
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    out.extend(heartbeats(
        T0,
        end + (KEEP_FOR_MS + 2 * WINDOW / MS) * MS + 2 * LATENESS,
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

/// What is true at one tick, from scratch.
struct World<'a> {
    /// Facts that entered by the tick, with their entry tick.
    facts: Vec<(&'a Fact, Tick)>,
    /// State records current at the tick (a process link's retraction counted from its entry
    /// plus the grace).
    state: Vec<StateRecord>,
    tick: Tick,
    clock: TickClock,
}

impl World<'_> {
    fn held(&self, width: Tick) -> impl Iterator<Item = &Fact> + '_ {
        self.facts
            .iter()
            .filter(move |(fact, _)| self.tick < self.clock.tick_of(fact.time_ns) + width)
            .map(|(fact, _)| *fact)
    }

    /// The pods a fact's actor belongs to: its container's pods, else its process's
    /// containers' pods.
    fn pods_of(
        &self,
        fact: &Fact,
        container: Option<&Arc<str>>,
        process: Option<&ProcessRef>,
    ) -> BTreeSet<EntityId> {
        let mut containers: Vec<Arc<str>> = Vec::new();
        match (container, process) {
            (Some(id), _) => containers.push(Arc::clone(id)),
            (None, Some(by)) => {
                let me = EntityId::Process {
                    start_ns: by.start_ns,
                    pid: by.pid,
                    node: Arc::clone(&fact.id.node),
                };
                for record in &self.state {
                    if let StateObject::ProcessContainer(link) = &record.object
                        && link.process == me
                    {
                        containers.push(Arc::clone(&link.container_id));
                    }
                }
            }
            (None, None) => {}
        }
        self.pods_of_containers(&containers)
    }

    fn pods_of_containers(&self, containers: &[Arc<str>]) -> BTreeSet<EntityId> {
        self.state
            .iter()
            .filter_map(|record| match &record.object {
                StateObject::PodContainer(member) if containers.contains(&member.container_id) => {
                    Some(member.pod.clone())
                }
                _ => None,
            })
            .collect()
    }
}

fn world<'a>(
    arrived: &'a [Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> World<'a> {
    let mut counts: BTreeMap<&StateRecord, i64> = BTreeMap::new();
    let mut facts = Vec::new();
    for (observation, at) in arrived.iter().zip(entered) {
        match (observation, at) {
            (Observation::Fact(fact), Some(at)) if *at <= tick => facts.push((fact, *at)),
            (Observation::State(update), Some(at)) => {
                let delay = match (&update.record.object, update.diff) {
                    (StateObject::ProcessContainer(_), diff) if diff < 0 => GRACE_MS,
                    _ => 0,
                };
                if at + delay <= tick {
                    *counts.entry(&update.record).or_insert(0) += i64::from(update.diff);
                }
            }
            _ => {}
        }
    }
    let state = counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(record, _)| record.clone())
        .collect();
    World {
        facts,
        state,
        tick,
        clock,
    }
}

fn hop(fact: &Fact, entity: &EntityId, relation: Relation) -> Hop {
    Hop {
        entity: entity.clone(),
        relation,
        fact_id: fact.id.clone(),
        time: fact.time_ns,
        observed: Observed::of_fact(&fact.payload),
    }
}

/// From scratch, at `tick`: per pod and server, the failed lookups held for `keep_for` (and,
/// to tell whether one had a predecessor, those held `keep_for` + W); a lookup with no
/// predecessor within W starts a burst of the lookups up to W after it, when there are N; the
/// pod's failed connects in that window; the earliest server failure (endpoint not ready,
/// the server pod's exit or readiness loss) from `cause_before` before the start to the end
/// of the window.
fn naive(world: &World<'_>) -> BTreeMap<Correlation, i64> {
    /// A failed lookup: its time, its id, and whether it is held for `keep_for` (else only
    /// for `keep_for` + W).
    type NaiveLookup = (TimeNs, FactId, bool);
    let window_ms = WINDOW / MS;
    let mut failures: BTreeMap<(EntityId, SocketAddr), BTreeSet<NaiveLookup>> = BTreeMap::new();
    let mut facts_by_id: BTreeMap<FactId, &Fact> = BTreeMap::new();
    for (width, current) in [(KEEP_FOR_MS, true), (KEEP_FOR_MS + window_ms, false)] {
        for fact in world.held(width) {
            let FactPayload::DnsQuery(query) = &fact.payload else {
                continue;
            };
            if !query.outcome.is_server_failure() {
                continue;
            }
            facts_by_id.insert(fact.id.clone(), fact);
            for pod in world.pods_of(fact, query.container_id.as_ref(), query.process.as_ref()) {
                failures.entry((pod, query.server)).or_default().insert((
                    fact.time_ns,
                    fact.id.clone(),
                    current,
                ));
            }
        }
    }
    let mut expected = BTreeMap::new();
    for ((pod, server), lookups) in &failures {
        let current: Vec<&NaiveLookup> = lookups.iter().filter(|l| l.2).collect();
        for (at, first) in current.iter().enumerate() {
            let preceded = lookups.iter().any(|other| {
                !other.2 && (other.0, &other.1) < (first.0, &first.1) && other.0 + WINDOW >= first.0
            });
            if preceded {
                continue;
            }
            let members: Vec<&Fact> = current[at..]
                .iter()
                .filter(|member| member.0 <= first.0 + WINDOW)
                .map(|member| facts_by_id[&member.1])
                .collect();
            if members.len() < MIN_FAILURES {
                continue;
            }
            let start = first.0;
            let connects: BTreeSet<(TimeNs, FactId)> = world
                .held(KEEP_FOR_MS)
                .filter(|fact| match &fact.payload {
                    FactPayload::TcpConnect(connect) => {
                        connect.outcome.is_failure()
                            && fact.time_ns >= start
                            && fact.time_ns <= start + WINDOW
                            && world
                                .pods_of(
                                    fact,
                                    connect.container_id.as_ref(),
                                    connect.process.as_ref(),
                                )
                                .contains(pod)
                    }
                    _ => false,
                })
                .map(|fact| (fact.time_ns, fact.id.clone()))
                .collect();
            let mut connect_facts: Vec<&Fact> = world
                .held(KEEP_FOR_MS)
                .filter(|fact| connects.contains(&(fact.time_ns, fact.id.clone())))
                .collect();
            connect_facts.sort_by_key(|fact| (fact.time_ns, fact.id.clone()));
            let cause = naive_cause(world, server, start);
            expected.insert(
                build(pod, server, &members, members.len(), connect_facts, cause),
                1,
            );
        }
    }
    expected
}

/// The earliest failure of the Service the server belongs to, with its entity.
fn naive_cause(world: &World<'_>, server: &SocketAddr, start: TimeNs) -> Option<(Hop, EntityId)> {
    let services: BTreeSet<EntityId> = world
        .state
        .iter()
        .filter_map(|record| match &record.object {
            StateObject::Service(service)
                if service.cluster_ips.contains(&server.ip().to_string()) =>
            {
                Some(service.entity.clone())
            }
            StateObject::ServiceEndpoint(endpoint)
                if endpoint.endpoint.to_string() == format!("endpoint/{server}") =>
            {
                Some(endpoint.service.clone())
            }
            _ => None,
        })
        .collect();
    let in_range = |at: TimeNs| at + CAUSE_BEFORE >= start && at <= start + WINDOW;
    let mut candidates: Vec<(TimeNs, Hop, EntityId)> = Vec::new();
    let mut pods = BTreeSet::new();
    for record in &world.state {
        if let StateObject::ServiceEndpoint(endpoint) = &record.object
            && services.contains(&endpoint.service)
        {
            if let Some(pod) = &endpoint.pod {
                pods.insert(pod.clone());
            }
            if !endpoint.ready && in_range(record.since_ns) {
                let entity = endpoint.pod.clone().unwrap_or(endpoint.endpoint.clone());
                let hop = Hop {
                    entity: entity.clone(),
                    relation: Relation::Start,
                    fact_id: record.evidence.clone(),
                    time: record.since_ns,
                    observed: Observed::EndpointReady {
                        address: ENDPOINT.into(),
                        ready: false,
                    },
                };
                candidates.push((record.since_ns, hop, entity));
            }
        }
    }
    for fact in world.held(KEEP_FOR_MS + CAUSE_BEFORE / MS) {
        let failed_pods: BTreeSet<EntityId> = match &fact.payload {
            FactPayload::ContainerExit(exit) => match &exit.pod {
                Some(pod) => BTreeSet::from([pod.clone()]),
                None => world.pods_of_containers(&[Arc::clone(&exit.container_id)]),
            },
            FactPayload::ContainerReady(ready) if !ready.ready => {
                BTreeSet::from([ready.pod.clone()])
            }
            _ => BTreeSet::new(),
        };
        for pod in failed_pods.intersection(&pods) {
            if in_range(fact.time_ns) {
                candidates.push((fact.time_ns, hop(fact, pod, Relation::Start), pod.clone()));
            }
        }
    }
    // Earliest by time, then by what the observation says (as the rule orders causes).
    candidates
        .into_iter()
        .min_by(|a, b| {
            let key = |c: &(TimeNs, Hop, EntityId)| {
                (c.0, c.1.fact_id.clone(), c.1.observed.clone(), c.2.clone())
            };
            key(a).cmp(&key(b))
        })
        .map(|(_, hop, entity)| (hop, entity))
}

fn build(
    pod: &EntityId,
    server: &SocketAddr,
    members: &[&Fact],
    failed: usize,
    connects: Vec<&Fact>,
    cause: Option<(Hop, EntityId)>,
) -> Correlation {
    let mut chain = Vec::new();
    let root = match &cause {
        Some((hop, entity)) => {
            chain.push(hop.clone());
            entity.clone()
        }
        None => EntityId::Endpoint {
            address: server.to_string().into(),
        },
    };
    for (index, member) in members.iter().take(MIN_FAILURES).enumerate() {
        let relation = match (index, cause.is_some()) {
            (0, true) => Relation::Caused,
            (0, false) => Relation::Start,
            _ => Relation::FollowedBy,
        };
        chain.push(hop(member, pod, relation));
    }
    for (index, connect) in connects.iter().take(MIN_FAILURES).enumerate() {
        let relation = if index == 0 {
            Relation::Caused
        } else {
            Relation::FollowedBy
        };
        chain.push(hop(connect, pod, relation));
    }
    let mut basis = vec![
        Basis::DnsFailureBurst,
        if cause.is_some() {
            Basis::DnsServerFailureObserved
        } else {
            Basis::DnsServerCauseUnknown
        },
    ];
    if !connects.is_empty() {
        basis.push(Basis::ConnectErrorsFollowed);
    }
    let percent = match (cause.is_some(), connects.is_empty()) {
        (true, false) => 95,
        (true, true) => 85,
        (false, false) => 70,
        (false, true) => 60,
    };
    Correlation::new(
        CorrelationKind::DnsFailure,
        root,
        chain,
        Detail::DnsFailure {
            server: server.to_string().into(),
            failed_lookups: failed as u32,
            connect_errors: connects.len() as u32,
            window_ns: WINDOW,
        },
        Confidence { percent, basis },
    )
}

/// At every closed tick, the rule holds exactly the bursts a recomputation from scratch finds
/// over the facts and state visible then: facts arrive out of order within the lateness bound,
/// and one in ten beyond it (clamped to the input tick, or dropped once expired).
#[test]
fn dns_failure_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut caused, mut unknown, mut with_connects, mut expired, mut late) = (0, 0, 0, 0, 0);
    let mut through_process = 0;
    for seed in 1..=24 {
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
            |tick| naive(&world(&arrived, &run.entered, clock, tick)),
            &format!("seed {seed}"),
        );
        expired += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if diff > 0 {
                let cause = correlation.confidence.basis[1] == Basis::DnsServerFailureObserved;
                caused += usize::from(cause);
                unknown += usize::from(!cause);
                with_connects += usize::from(correlation.confidence.basis.len() == 3);
                through_process += usize::from(
                    correlation
                        .chain
                        .iter()
                        .any(|hop| hop.entity.to_string() == "pod/default/b"),
                );
            }
        }
    }
    assert!(
        caused > 5 && unknown > 5 && with_connects > 5 && expired > 10 && late > 5,
        "{caused} {unknown} {with_connects} {expired} {late}"
    );
    assert!(through_process > 3, "{through_process}");
}

/// The output does not depend on the arrival order within the lateness bound, nor on the number
/// of workers.
#[test]
fn dns_failure_does_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=46 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 0, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        let reordered = same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
        assert_eq!(reordered.report.late, 0, "seed {seed}");
    }
}

/// A scripted cluster: pods `a` (container `c0`) and `b` (container `c1`), the DNS Service with
/// its endpoint, which turns not ready at 1 s; then `facts` (event time offset in ms, payload).
/// Returns what the rule holds at 7 s, once every fact is in.
fn scripted(facts: &[(u64, FactPayload)]) -> Vec<Correlation> {
    let mut out = Vec::new();
    let state = |seq: u64, at: TimeNs, object| {
        Observation::State(StateUpdate {
            time_ns: at,
            diff: 1,
            record: StateRecord {
                evidence: FactId::new("kubernetes", "cluster", seq),
                since_ns: at,
                object,
            },
        })
    };
    for (seq, (pod, id)) in [("pod/default/a", "c0"), ("pod/default/b", "c1")]
        .into_iter()
        .enumerate()
    {
        out.push(state(
            seq as u64,
            T0,
            StateObject::PodContainer(PodContainer {
                pod: entity(pod),
                pod_uid: "u".into(),
                container_name: "app".into(),
                container_id: id.into(),
            }),
        ));
    }
    out.push(state(
        5,
        T0,
        StateObject::Service(ServiceObject {
            entity: entity(SERVICE),
            uid: "u".into(),
            cluster_ips: vec!["10.96.0.10".into()],
        }),
    ));
    out.push(state(
        6,
        T0 + 1_000 * MS,
        StateObject::ServiceEndpoint(ServiceEndpoint {
            service: entity(SERVICE),
            endpoint: entity(&format!("endpoint/{ENDPOINT}")),
            pod: Some(entity(DNS_POD)),
            ready: false,
        }),
    ));
    for (seq, (offset_ms, payload)) in facts.iter().enumerate() {
        out.push(fact(
            "n1",
            100 + seq as u64,
            T0 + offset_ms * MS,
            payload.clone(),
        ));
    }
    out.extend(heartbeats(T0, T0 + 30_000 * MS, 500 * MS));
    out.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
    let run = harness.run(out).expect("run");
    let at = harness.clock().tick_of(T0 + 7_000 * MS);
    run.held_at(at)
        .into_iter()
        .map(|(correlation, count)| {
            assert_eq!(count, 1);
            correlation
        })
        .collect()
}

fn lookup(container: &str, name: &str, outcome: DnsOutcome) -> FactPayload {
    FactPayload::DnsQuery(DnsQuery {
        process: None,
        container_id: Some(container.into()),
        client: address("10.0.1.5:40000"),
        server: address(CLUSTER_IP),
        name: name.into(),
        qtype: 1,
        outcome,
        rcode: None,
        answers: Vec::new(),
        latency_ns: 5_000 * MS,
        records: Vec::new(),
        search_expansions: 0,
    })
}

fn refused(container: &str) -> FactPayload {
    FactPayload::TcpConnect(TcpConnect {
        process: None,
        local: address("10.0.1.5:41000"),
        remote: address("10.0.2.7:8080"),
        outcome: ConnectOutcome::Refused,
        error: 111,
        latency_ns: MS,
        container_id: Some(container.into()),
    })
}

/// The whole chain: the endpoint not ready, three failed lookups, the connect error.
#[test]
fn a_burst_reads_from_the_servers_failure_to_the_connect_errors() {
    let found = scripted(&[
        (2_000, lookup("c0", "api", DnsOutcome::TimedOut)),
        (3_000, lookup("c0", "api", DnsOutcome::ServFail)),
        (4_000, lookup("c0", "db", DnsOutcome::ServFail)),
        (4_500, refused("c0")),
        (4_600, refused("c1")),
    ]);
    assert_eq!(found.len(), 1, "{found:#?}");
    let correlation = &found[0];
    assert_eq!(correlation.root_cause, entity(DNS_POD));
    let steps: Vec<(String, Relation)> = correlation
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation))
        .collect();
    let pod = "pod/default/a".to_string();
    assert_eq!(
        steps,
        [
            (DNS_POD.to_string(), Relation::Start),
            (pod.clone(), Relation::Caused),
            (pod.clone(), Relation::FollowedBy),
            (pod.clone(), Relation::FollowedBy),
            (pod, Relation::Caused),
        ]
    );
    assert!(matches!(
        correlation.detail,
        Detail::DnsFailure {
            failed_lookups: 3,
            connect_errors: 1,
            ..
        }
    ));
    assert_eq!(correlation.confidence.percent, 95);
    assert_eq!(
        tapio_model::render::explain(correlation),
        "pod/default/a had 3 failed DNS lookups via 10.96.0.10:53 within 3 s and 1 failed \
         connect; the DNS server pod/kube-system/dns-0 failed first: endpoint 10.0.0.53:53 not \
         ready"
    );
    assert_eq!(
        tapio_model::render::describe_chain(&correlation.chain)[1],
        "lookup of api (A) via 10.96.0.10:53 timed out after 5000 ms"
    );
}

/// Look-alikes: failures of one name split between two pods; a single failed lookup; connect
/// errors without failed lookups; NXDOMAIN answers (the search path) and answered lookups.
#[test]
fn look_alikes_do_not_correlate() {
    let split = scripted(&[
        (2_000, lookup("c0", "api", DnsOutcome::ServFail)),
        (2_500, lookup("c1", "api", DnsOutcome::ServFail)),
        (3_000, lookup("c0", "api", DnsOutcome::ServFail)),
        (3_500, refused("c0")),
    ]);
    assert_eq!(split, [], "two pods' failures are not one pod's burst");
    let single = scripted(&[
        (2_000, lookup("c0", "api", DnsOutcome::ServFail)),
        (2_100, refused("c0")),
    ]);
    assert_eq!(single, []);
    let connects_only = scripted(&[
        (2_000, refused("c0")),
        (2_500, refused("c0")),
        (3_000, refused("c0")),
    ]);
    assert_eq!(connects_only, []);
    let working = scripted(&[
        (
            2_000,
            lookup("c0", "api.default.svc.cluster.local", DnsOutcome::NxDomain),
        ),
        (
            2_100,
            lookup("c0", "api.svc.cluster.local", DnsOutcome::NxDomain),
        ),
        (
            2_200,
            lookup("c0", "api.cluster.local", DnsOutcome::NxDomain),
        ),
        (2_300, lookup("c0", "api", DnsOutcome::Answered)),
    ]);
    assert_eq!(working, []);
    let spread = scripted(&[
        (2_000, lookup("c0", "api", DnsOutcome::ServFail)),
        (4_000, lookup("c0", "api", DnsOutcome::ServFail)),
        (5_500, lookup("c0", "api", DnsOutcome::ServFail)),
    ]);
    assert_eq!(spread, [], "three failures, but not within W of the first");
}
