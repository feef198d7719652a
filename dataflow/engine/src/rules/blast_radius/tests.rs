//! The blast radius rule against a recomputation from scratch at every tick, through the rule
//! harness with the rules it reads running before it (the OOM sequence and the service graph):
//! random service graphs, OOM kills of containers in pods behind Services, endpoints going
//! not ready, failed connects to what failed and to unrelated addresses, facts out of order
//! within the lateness bound and a few beyond it. Then one incident end to end, with a
//! bystander whose failed connects go elsewhere.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    ConnectOutcome, ContainerExit, Correlation, CorrelationKind, Detail, EntityId, Fact, FactId,
    FactPayload, Impact, Observation, Observed, OomKill, ProcessExit, Relation, ServiceObject,
    StateObject, TimeNs,
};

use super::{Failure, Reached, correlation, from_config};
use crate::clock::{Tick, TickClock};
use crate::harness::{RuleHarness, RuleRun};
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::oom_sequence::tests::{KEEP_FOR_MS, WITHIN, naive_oom};
use crate::rules::ownership::tests::CONTAINER_GRACE;
use crate::rules::service_graph::tests::{
    self as graph, LATENESS, connect, endpoint, entity, held_with_delay, in_pod, naive_connections,
    naive_graph, state,
};
use crate::rules::{Evidence, Rule, oom_sequence, service_graph};

const MAX_DEPTH: u32 = 3;
/// How long a failed connect counts, ms.
const IMPACT_MS: Tick = 5_000;

fn config() -> CorrelationConfig {
    let mut config = graph::config();
    config.oom_sequence.within = Duration::from_nanos(WITHIN);
    config.oom_sequence.keep_for = Duration::from_millis(KEEP_FOR_MS);
    // As the OOM recomputation it reuses assumes.
    config.ownership.container_exit_grace = Duration::from_millis(CONTAINER_GRACE);
    config.blast_radius.max_depth = MAX_DEPTH;
    config.blast_radius.impact_window = Duration::from_millis(IMPACT_MS);
    config
}

fn harness(config: &CorrelationConfig) -> (RuleHarness, Vec<Box<dyn Rule>>) {
    let upstream = || {
        vec![
            oom_sequence::from_config(config).expect("enabled"),
            service_graph::from_config(config).expect("enabled"),
        ]
    };
    let harness = RuleHarness::from_table(from_config, config)
        .expect("enabled")
        .after(upstream());
    let mut readers = upstream();
    readers.push(from_config(config).expect("enabled"));
    (harness, readers)
}

fn fact(seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", "n1", seq),
        time_ns,
        payload,
    })
}

/// An OOM kill of `pid` in `container`, its exit `exit_after` later and the container's exit
/// `stop_after` after the kill.
fn oom(seq: u64, at: TimeNs, pid: u32, container: &str, stop_after: TimeNs) -> Vec<Observation> {
    vec![
        fact(
            seq,
            at,
            FactPayload::OomKill(OomKill {
                pid,
                start_ns: T0,
                comm: "server".into(),
                container_id: Some(container.into()),
                pod_uid: None,
                memcg: "/kubepods/x".into(),
                rss_pages: 100,
            }),
        ),
        fact(
            seq + 1,
            at + 100 * MS,
            FactPayload::ProcessExit(ProcessExit {
                pid,
                start_ns: T0,
                comm: "server".into(),
                exit_code: 0,
                signal: 9,
                container_id: Some(container.into()),
            }),
        ),
        fact(
            seq + 2,
            at + stop_after,
            FactPayload::ContainerExit(ContainerExit {
                container_id: container.into(),
                container_name: "app".into(),
                pod: None,
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            }),
        ),
    ]
}

/// The service graph's random stream, with OOM kills of its containers added.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let mut stream = graph::stream(rng);
    for episode in 0..4 {
        let at = T0 + rng.below(60) * 500 * MS;
        let container = ["c0", "c1", "c2"][rng.below(3) as usize];
        stream.extend(oom(
            10_000 + 10 * episode,
            at,
            100 + episode as u32,
            container,
            rng.below(4) * 500 * MS,
        ));
    }
    // Endpoints that are ready, then not ready while still listed, sometimes ready again: the
    // failures an endpoint starts (the random records above rarely do that on one address).
    for episode in 0..3u64 {
        let service = ["service/ns/s1", "service/ns/s2"][rng.below(2) as usize];
        let pod = ["pod/ns/a", "pod/ns/b", "pod/ns/c", "pod/ns/d"][rng.below(4) as usize];
        let address = format!("10.0.0.{}:80", 1 + rng.below(3));
        let ready = endpoint(service, &address, Some(pod), true);
        let not_ready = endpoint(service, &address, Some(pod), false);
        let seq = 20_000 + 10 * episode;
        let up = T0 + rng.below(30) * 500 * MS;
        let down = up + (1 + rng.below(10)) * 500 * MS;
        stream.push(state(seq, up, up, 1, ready.clone()));
        stream.push(state(seq, down, up, -1, ready.clone()));
        stream.push(state(seq + 1, down, down, 1, not_ready.clone()));
        if rng.below(2) == 0 {
            let again = down + (1 + rng.below(10)) * 500 * MS;
            stream.push(state(seq + 1, again, down, -1, not_ready));
            stream.push(state(seq + 2, again, again, 1, ready));
        }
    }
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    stream
}

/// Every path of at most `max` steps from `from`.
fn all_paths(
    edges: &[(EntityId, (EntityId, Evidence))],
    from: &EntityId,
    max: usize,
    path: &mut Vec<(EntityId, Evidence)>,
    out: &mut Vec<Vec<(EntityId, Evidence)>>,
) {
    if path.len() == max {
        return;
    }
    let at = path.last().map_or(from, |(node, _)| node).clone();
    for (edge_from, step) in edges {
        if *edge_from == at {
            path.push(step.clone());
            out.push(path.clone());
            all_paths(edges, from, max, path, out);
            path.pop();
        }
    }
}

/// The Service endpoints as the records listed them at a tick, (service, address, pod) →
/// ready, each tick's listing worked out once for a run (it depends on the run, not on the
/// tick being checked).
#[derive(Default)]
struct Listings(RefCell<BTreeMap<Tick, Rc<Listing>>>);

type Listing = BTreeSet<(EntityId, EntityId, Option<EntityId>, bool)>;

impl Listings {
    fn at(&self, arrived: &[Observation], entered: &[Option<Tick>], at: Tick) -> Rc<Listing> {
        if let Some(listing) = self.0.borrow().get(&at) {
            return Rc::clone(listing);
        }
        let listing: Rc<Listing> = Rc::new(
            held_with_delay(arrived, entered, at, |_| 0)
                .into_iter()
                .filter_map(|record| match record.object {
                    StateObject::ServiceEndpoint(endpoint) => Some((
                        endpoint.service,
                        endpoint.endpoint,
                        endpoint.pod,
                        endpoint.ready,
                    )),
                    _ => None,
                })
                .collect(),
        );
        self.0.borrow_mut().insert(at, Rc::clone(&listing));
        listing
    }
}

/// From scratch, at `tick`: the failures (the OOM correlations' entities, and the endpoints not
/// ready, after being ready with no break in their listing, whose entity no OOM correlation
/// names), each dependent's smallest shortest path from the failure's entity nearest its
/// start, and its impact from the failed connects held then.
fn naive_blast(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
    listings: &Listings,
) -> BTreeMap<Correlation, i64> {
    let edges: Vec<(EntityId, (EntityId, Evidence))> = naive_graph(arrived, entered, clock, tick)
        .into_keys()
        .map(|correlation| {
            let (dependent, dependency) = (&correlation.chain[0], &correlation.chain[1]);
            let evidence = Evidence {
                time: dependency.time,
                fact_id: dependency.fact_id.clone(),
                observed: dependency.observed.clone(),
            };
            (
                dependency.entity.clone(),
                (dependent.entity.clone(), evidence),
            )
        })
        .collect();
    let mut seeds: Vec<(EntityId, Failure)> = Vec::new();
    let mut named = BTreeSet::new();
    for failure in naive_oom(arrived, entered, clock, tick).into_keys() {
        let id = (
            Some(failure.kind),
            failure.root_cause.clone(),
            failure.chain[0].fact_id.clone(),
        );
        for (index, hop) in failure.chain.iter().enumerate() {
            if !named.insert((id.clone(), hop.entity.clone())) {
                continue;
            }
            seeds.push((
                hop.entity.clone(),
                Failure {
                    id: id.clone(),
                    began: failure.chain[0].time,
                    hops: failure.chain[..=index].into(),
                },
            ));
        }
    }
    let failing: BTreeSet<EntityId> = seeds.iter().map(|(entity, _)| entity.clone()).collect();
    let listed_at = |at: Tick| listings.at(arrived, entered, at);
    // The ticks at which the records changed up to `tick`.
    let changes: BTreeSet<Tick> = entered
        .iter()
        .flatten()
        .copied()
        .filter(|at| *at <= tick)
        .collect();
    // Whether an endpoint is or was ready and stayed listed since.
    let was_ready = |key: &(EntityId, EntityId, Option<EntityId>)| {
        for at in changes.iter().rev() {
            let listed = listed_at(*at);
            let same =
                |ready| listed.contains(&(key.0.clone(), key.1.clone(), key.2.clone(), ready));
            if same(true) {
                return true;
            }
            if !same(false) {
                return false;
            }
        }
        false
    };
    for record in held_with_delay(arrived, entered, tick, |_| 0) {
        let StateObject::ServiceEndpoint(endpoint) = &record.object else {
            continue;
        };
        let failed = endpoint.pod.clone().unwrap_or(endpoint.service.clone());
        if endpoint.ready || failing.contains(&failed) {
            continue;
        }
        let key = (
            endpoint.service.clone(),
            endpoint.endpoint.clone(),
            endpoint.pod.clone(),
        );
        if !was_ready(&key) {
            continue;
        }
        let evidence = Evidence::of_state(&record).expect("evidence");
        seeds.push((
            failed.clone(),
            Failure {
                id: (None, failed.clone(), evidence.fact_id.clone()),
                began: evidence.time,
                hops: vec![evidence.hop(&failed, Relation::Start)].into(),
            },
        ));
    }
    // Per failure and dependent, the best of every seed's best path.
    let mut best: BTreeMap<_, ((usize, usize), Reached)> = BTreeMap::new();
    for (seed, failure) in seeds.into_iter().collect::<BTreeSet<_>>() {
        let mut paths = Vec::new();
        all_paths(
            &edges,
            &seed,
            MAX_DEPTH as usize,
            &mut Vec::new(),
            &mut paths,
        );
        let mut shortest: BTreeMap<EntityId, Vec<(EntityId, Evidence)>> = BTreeMap::new();
        for path in paths {
            let end = path.last().expect("a step").0.clone();
            if end == seed {
                continue;
            }
            let entry = shortest.entry(end).or_insert_with(|| path.clone());
            if (path.len(), &path) < (entry.len(), &*entry) {
                *entry = path;
            }
        }
        for (dependent, path) in shortest {
            let candidate = (
                (path.len(), failure.hops.len()),
                Reached {
                    failed: seed.clone(),
                    failure: failure.clone(),
                    path,
                },
            );
            let entry = best
                .entry((failure.id.clone(), dependent))
                .or_insert_with(|| candidate.clone());
            if candidate < *entry {
                *entry = candidate;
            }
        }
    }
    let failed_connects = naive_connections(
        arrived,
        entered,
        clock,
        tick,
        IMPACT_MS,
        |fact| matches!(&fact.payload, FactPayload::TcpConnect(c) if c.outcome.is_failure()),
    );
    best.into_values()
        .map(|(_, reached)| {
            let edge = reached.last_edge();
            let impact = failed_connects
                .iter()
                .filter(|((client, server), (evidence, _, _))| {
                    (client.clone(), server.clone()) == edge
                        && evidence.time >= reached.failure.began
                })
                .map(|(_, (evidence, _, _))| evidence.clone())
                .min();
            (correlation(&reached, impact.as_ref()), 1)
        })
        .collect()
}

/// At every closed tick, the rule holds exactly the dependents a recomputation from scratch
/// finds over the failures, edges and failed connects visible then.
#[test]
fn the_blast_radius_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut observed, mut potential, mut from_oom, mut from_endpoints, mut deep) = (0, 0, 0, 0, 0);
    let (mut expired, mut late) = (0, 0);
    for seed in 1..=16 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let (harness, readers) = harness(&config());
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        let listings = Listings::default();
        assert_eq!(
            run.entered,
            entry_ticks(&arrived, clock, LATENESS, |fact| {
                readers.iter().any(|rule| rule.reads(fact))
            }),
            "seed {seed}"
        );
        late += run.report.late;
        let seen = assert_every_tick(
            &run,
            clock,
            |tick| naive_blast(&arrived, &run.entered, clock, tick, &listings),
            &format!("seed {seed}"),
        );
        expired += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            let Detail::BlastRadius {
                failure,
                depth,
                impact,
                ..
            } = &correlation.detail
            else {
                panic!("only blast radius: {correlation:?}");
            };
            if diff > 0 {
                observed += usize::from(*impact == Impact::Observed);
                potential += usize::from(*impact == Impact::Potential);
                from_oom += usize::from(failure.is_some());
                from_endpoints += usize::from(failure.is_none());
                deep += usize::from(*depth > 1);
            }
        }
    }
    assert!(
        observed > 3
            && potential > 20
            && from_oom > 5
            && from_endpoints > 20
            && deep > 10
            && expired > 20
            && late > 5,
        "{observed} {potential} {from_oom} {from_endpoints} {deep} {expired} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn the_blast_radius_does_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=43 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let (harness, _) = harness(&config());
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 2, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
    }
}

const SECOND: TimeNs = 1_000 * MS;

/// The blast radius correlations held at the end of `at_s` seconds, by dependent.
fn held(run: &RuleRun, clock: TickClock, at_s: u64) -> BTreeMap<String, Correlation> {
    run.held_at(clock.tick_of(T0 + at_s * SECOND))
        .into_keys()
        .map(|c| (c.chain.last().expect("a hop").entity.to_string(), c))
        .collect()
}

/// The server's container is OOM-killed at 10 s. The client reaches it through its Service
/// and its connects are refused from 11 s: observed impact, the chain running from the kill
/// through the server pod and the Service to the client and its refused connect. A second
/// client connects to the server pod directly and a bystander's connects fail to an unrelated
/// pod: both potential. At 12 s the endpoint goes not ready, which the Service's hop then says.
#[test]
fn an_oom_kill_reaches_the_clients_through_the_service() {
    let server = endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/server"), true);
    let not_ready = endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/server"), false);
    let other = endpoint(
        "service/ns/o",
        "10.0.0.9:80",
        Some("pod/ns/elsewhere"),
        true,
    );
    let cluster_ip = StateObject::Service(ServiceObject {
        entity: entity("service/ns/s"),
        uid: "uid".into(),
        cluster_ips: vec!["10.96.0.1".into()],
    });
    let established = ConnectOutcome::Established;
    let mut stream = vec![
        state(1, T0, T0, 1, in_pod("cs", "pod/ns/server")),
        state(2, T0, T0, 1, in_pod("cc", "pod/ns/client")),
        state(3, T0, T0, 1, in_pod("cd", "pod/ns/direct")),
        state(4, T0, T0, 1, in_pod("cb", "pod/ns/bystander")),
        state(5, T0, T0, 1, server.clone()),
        state(6, T0, T0, 1, cluster_ip),
        state(7, T0, T0, 1, other),
        connect(
            20,
            T0 + SECOND,
            Some("cc"),
            None,
            "10.96.0.1:80",
            established,
        ),
        connect(
            21,
            T0 + 2 * SECOND,
            Some("cd"),
            None,
            "10.0.0.5:80",
            established,
        ),
        connect(
            22,
            T0 + 2 * SECOND,
            Some("cb"),
            None,
            "10.96.0.1:80",
            established,
        ),
        connect(
            23,
            T0 + 5 * SECOND,
            Some("cc"),
            None,
            "10.96.0.1:80",
            ConnectOutcome::Refused,
        ),
        connect(
            24,
            T0 + 11 * SECOND,
            Some("cc"),
            None,
            "10.96.0.1:80",
            ConnectOutcome::Refused,
        ),
        connect(
            25,
            T0 + 11 * SECOND,
            Some("cb"),
            None,
            "10.0.0.9:80",
            ConnectOutcome::Refused,
        ),
        state(5, T0 + 12 * SECOND, T0, -1, server),
        state(8, T0 + 12 * SECOND, T0 + 12 * SECOND, 1, not_ready),
    ];
    stream.extend(oom(30, T0 + 10 * SECOND, 4242, "cs", 500 * MS));
    stream.extend(heartbeats(T0, T0 + 16 * SECOND, 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let mut config = config();
    config.service_graph.window = Duration::from_secs(60);
    config.blast_radius.impact_window = Duration::from_secs(60);
    let (harness, _) = harness(&config);
    let clock = harness.clock();
    let run = harness.run(stream).expect("run");

    assert!(held(&run, clock, 9).is_empty(), "nothing failed yet");
    let at_11 = held(&run, clock, 11);
    let dependents: Vec<&str> = at_11.keys().map(String::as_str).collect();
    assert_eq!(
        dependents,
        [
            "pod/ns/bystander",
            "pod/ns/client",
            "pod/ns/direct",
            "service/ns/s"
        ]
    );
    let client = &at_11["pod/ns/client"];
    assert_eq!(
        client.root_cause,
        entity("process/n1/4242/1767225600000000000")
    );
    let path: Vec<(String, Relation)> = client
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation))
        .collect();
    let process = "process/n1/4242/1767225600000000000".to_string();
    assert_eq!(
        path,
        [
            (process.clone(), Relation::Start),
            (process, Relation::FollowedBy),
            ("container/cs".into(), Relation::Caused),
            ("pod/ns/server".into(), Relation::OwnedBy),
            ("service/ns/s".into(), Relation::Affects),
            ("pod/ns/client".into(), Relation::Affects),
            ("pod/ns/client".into(), Relation::FollowedBy),
        ]
    );
    // The edge into the client is its first connect; the last hop its refused connect after the
    // kill, not the one before it.
    assert_eq!(client.chain[5].fact_id, FactId::new("kernel", "n1", 20));
    assert_eq!(client.chain[6].fact_id, FactId::new("kernel", "n1", 24));
    assert!(matches!(
        client.detail,
        Detail::BlastRadius {
            failure: Some(CorrelationKind::OomRestart),
            depth: 2,
            impact: Impact::Observed,
            ..
        }
    ));
    assert_eq!(client.confidence.percent, 90);
    for potential in ["pod/ns/direct", "pod/ns/bystander"] {
        let correlation = &at_11[potential];
        assert!(
            matches!(
                correlation.detail,
                Detail::BlastRadius {
                    impact: Impact::Potential,
                    ..
                }
            ),
            "{correlation:?}"
        );
        assert_eq!(correlation.confidence.percent, 50);
    }
    // The direct client depends on the pod itself: one edge.
    assert!(matches!(
        at_11["pod/ns/direct"].detail,
        Detail::BlastRadius { depth: 1, .. }
    ));

    // The endpoint went not ready at 12 s: the Service's hop says so, and no second failure
    // starts at the server pod, which the OOM kill already names.
    let at_13 = held(&run, clock, 13);
    assert_eq!(at_13.len(), 4);
    assert_eq!(
        at_13["pod/ns/client"].chain[4].observed,
        Observed::EndpointReady {
            address: "10.0.0.5:80".into(),
            ready: false
        }
    );
    assert!(at_13.values().all(|c| matches!(
        c.detail,
        Detail::BlastRadius {
            failure: Some(_),
            ..
        }
    )));
}

/// With no rule saying anything failed, an endpoint that stops being ready is the failure: its
/// pod, then the Service, then the client that connects through it, as potential impact while
/// the client's connects still succeed; when the endpoint is ready again it is over.
#[test]
fn an_endpoint_that_stops_being_ready_reaches_the_clients() {
    let ready = endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/server"), true);
    let not_ready = endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/server"), false);
    let cluster_ip = StateObject::Service(ServiceObject {
        entity: entity("service/ns/s"),
        uid: "uid".into(),
        cluster_ips: vec!["10.96.0.1".into()],
    });
    let mut stream = vec![
        state(1, T0, T0, 1, in_pod("cc", "pod/ns/client")),
        state(2, T0, T0, 1, ready.clone()),
        state(3, T0, T0, 1, cluster_ip),
        connect(
            10,
            T0 + SECOND,
            Some("cc"),
            None,
            "10.96.0.1:80",
            ConnectOutcome::Established,
        ),
        state(2, T0 + 4 * SECOND, T0, -1, ready.clone()),
        state(4, T0 + 4 * SECOND, T0 + 4 * SECOND, 1, not_ready.clone()),
        state(4, T0 + 8 * SECOND, T0 + 4 * SECOND, -1, not_ready),
        state(5, T0 + 8 * SECOND, T0 + 8 * SECOND, 1, ready),
    ];
    stream.extend(heartbeats(T0, T0 + 10 * SECOND, 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let (harness, _) = harness(&config());
    let clock = harness.clock();
    let run = harness.run(stream).expect("run");
    assert!(held(&run, clock, 3).is_empty());
    let at_5 = held(&run, clock, 5);
    assert_eq!(
        at_5.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pod/ns/client", "service/ns/s"]
    );
    let client = &at_5["pod/ns/client"];
    let not_ready_hop = Observed::EndpointReady {
        address: "10.0.0.5:80".into(),
        ready: false,
    };
    let chain: Vec<(String, Relation, FactId)> = client
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation, hop.fact_id.clone()))
        .collect();
    let record = FactId::new("kubernetes", "cluster", 4);
    assert_eq!(
        chain,
        [
            ("pod/ns/server".into(), Relation::Start, record.clone()),
            ("service/ns/s".into(), Relation::Affects, record),
            (
                "pod/ns/client".into(),
                Relation::Affects,
                FactId::new("kernel", "n1", 10)
            ),
        ]
    );
    assert_eq!(client.chain[0].observed, not_ready_hop);
    assert_eq!(client.chain[1].observed, not_ready_hop);
    assert_eq!(client.root_cause, entity("pod/ns/server"));
    assert!(matches!(
        client.detail,
        Detail::BlastRadius {
            failure: None,
            depth: 2,
            impact: Impact::Potential,
            ..
        }
    ));
    assert!(held(&run, clock, 9).is_empty(), "ready again: over");
}
