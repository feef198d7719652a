//! The service graph rule against a recomputation from scratch at every tick, through the rule
//! harness: random connects and accepts (some naming only their process), EndpointSlice and
//! Service records appearing and going away with addresses reused between pods, containers
//! moving between pods, facts arriving out of order within the lateness bound and a few beyond
//! it. Then the look-alikes that must not make an edge: a reused IP and a connect after the
//! mapping's grace, and an edge outliving its window.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, ConnectOutcome, Correlation, CorrelationKind, Detail, EntityId, Fact,
    FactId, FactPayload, Observation, PodAddress, PodContainer, ProcessContainer, ProcessRef,
    Relation, Resolution, ServiceEndpoint, ServiceObject, StateObject, StateRecord, StateUpdate,
    TcpAccept, TcpConnect, TimeNs,
};

use super::from_config;
use crate::clock::{Tick, TickClock};
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, entry_ticks,
    heartbeats, same_for_any_order_and_two_workers,
};
use crate::rules::Evidence;

/// W, ms.
pub(crate) const WINDOW_MS: Tick = 6_000;
/// The mappings' grace, ms.
pub(crate) const GRACE_MS: Tick = 3_000;
/// How often a flow is resolved anew, ms.
pub(crate) const RESOLVE_EVERY_MS: Tick = 2_000;
/// The processes' exit grace, ms.
pub(crate) const EXIT_GRACE_MS: Tick = 2_000;
pub(crate) const LATENESS: TimeNs = 2_000 * MS;

pub(crate) fn config() -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_nanos(LATENESS);
    config.ownership.process_exit_grace = Duration::from_millis(EXIT_GRACE_MS);
    config.service_graph.window = Duration::from_millis(WINDOW_MS);
    config.service_graph.mapping_grace = Duration::from_millis(GRACE_MS);
    config.service_graph.resolve_every = Duration::from_millis(RESOLVE_EVERY_MS);
    config
}

pub(crate) fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

pub(crate) fn state(
    seq: u64,
    time_ns: TimeNs,
    since_ns: TimeNs,
    diff: i8,
    object: StateObject,
) -> Observation {
    Observation::State(StateUpdate {
        time_ns,
        diff,
        record: StateRecord {
            evidence: FactId::new("kubernetes", "cluster", seq),
            since_ns,
            object,
        },
    })
}

pub(crate) fn endpoint(
    service: &str,
    address: &str,
    pod: Option<&str>,
    ready: bool,
) -> StateObject {
    StateObject::ServiceEndpoint(ServiceEndpoint {
        service: entity(service),
        endpoint: EntityId::Endpoint {
            address: address.into(),
        },
        pod: pod.map(entity),
        ready,
    })
}

pub(crate) fn in_pod(container: &str, pod: &str) -> StateObject {
    StateObject::PodContainer(PodContainer {
        pod: entity(pod),
        pod_uid: "uid".into(),
        container_name: "app".into(),
        container_id: container.into(),
    })
}

pub(crate) fn connect(
    seq: u64,
    time_ns: TimeNs,
    container: Option<&str>,
    process: Option<u32>,
    remote: &str,
    outcome: ConnectOutcome,
) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", "n1", seq),
        time_ns,
        payload: FactPayload::TcpConnect(TcpConnect {
            process: process.map(|pid| ProcessRef {
                pid,
                start_ns: T0,
                comm: "client".into(),
            }),
            local: "10.1.0.9:40000".parse().expect("address"),
            remote: remote.parse().expect("address"),
            outcome,
            error: if outcome.is_failure() { 111 } else { 0 },
            latency_ns: MS,
            container_id: container.map(Into::into),
        }),
    })
}

fn accept(seq: u64, time_ns: TimeNs, container: &str, remote: &str) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", "n1", seq),
        time_ns,
        payload: FactPayload::TcpAccept(TcpAccept {
            process: None,
            local: "10.0.0.1:80".parse().expect("address"),
            remote: remote.parse().expect("address"),
            container_id: Some(container.into()),
        }),
    })
}

/// A random stream for one seed, in event time order: endpoints of two Services on three pod
/// IPs (pods taking over each other's addresses), the Services' cluster IPs, containers in
/// pods, one process in a container, and connects (to endpoints, to other ports of pod IPs,
/// to cluster IPs, to unknown addresses) and accepts; heartbeats every 500 ms.
pub(crate) fn stream(rng: &mut Rng) -> Vec<Observation> {
    let grid = |steps: u64| steps * 500 * MS;
    let pods = ["pod/ns/a", "pod/ns/b", "pod/ns/c", "pod/ns/d"];
    let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let services = ["service/ns/s1", "service/ns/s2"];
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let record = |rng: &mut Rng, out: &mut Vec<Observation>, seq: u64, object: StateObject| {
        let from = T0 + grid(rng.below(50));
        out.push(state(seq, from, from, 1, object.clone()));
        if rng.below(2) == 0 {
            out.push(state(seq, from + grid(1 + rng.below(20)), from, -1, object));
        }
    };
    for _ in 0..10 {
        let service = services[rng.below(2) as usize];
        let ip = ips[rng.below(3) as usize];
        let port = 80 + rng.below(2);
        let pod = (rng.below(5) > 0).then(|| pods[rng.below(4) as usize]);
        let object = endpoint(service, &format!("{ip}:{port}"), pod, rng.below(4) > 0);
        record(rng, &mut out, next(), object);
    }
    for (index, service) in services.iter().enumerate() {
        let object = StateObject::Service(ServiceObject {
            entity: entity(service),
            uid: "uid".into(),
            cluster_ips: vec![format!("10.96.0.{}", index + 1)],
        });
        record(rng, &mut out, next(), object);
    }
    for container in ["c0", "c1", "c2"] {
        let object = in_pod(container, pods[rng.below(4) as usize]);
        record(rng, &mut out, next(), object);
    }
    let process = StateObject::ProcessContainer(ProcessContainer {
        process: EntityId::Process {
            start_ns: T0,
            pid: 7,
            node: "n1".into(),
        },
        container_id: "c2".into(),
        filename: "/bin/client".into(),
    });
    record(rng, &mut out, next(), process);
    let remotes = [
        "10.0.0.1:80",
        "10.0.0.2:81",
        "10.0.0.3:80",
        "10.0.0.1:9090",
        "10.96.0.1:443",
        "10.96.0.2:443",
        "10.9.9.9:80",
    ];
    let outcomes = [
        ConnectOutcome::Established,
        ConnectOutcome::Refused,
        ConnectOutcome::TimedOut,
    ];
    for _ in 0..40 {
        let at = T0 + grid(rng.below(70)) + rng.below(3) * 100 * MS;
        let seq = next();
        if rng.below(5) == 0 {
            let container = ["c0", "c1"][rng.below(2) as usize];
            let remote = format!("{}:{}", ips[rng.below(3) as usize], 40_000 + rng.below(3));
            out.push(accept(seq, at, container, &remote));
            continue;
        }
        let (container, process) = match rng.below(5) {
            0 => (None, Some(7)),
            1 => (None, None),
            2 => (Some("c9"), None),
            _ => (Some(["c0", "c1"][rng.below(2) as usize]), None),
        };
        let remote = remotes[rng.below(remotes.len() as u64) as usize];
        let outcome = outcomes[rng.below(3) as usize];
        out.push(connect(seq, at, container, process, remote, outcome));
    }
    let end = out.iter().map(Observation::time_ns).max().unwrap_or(T0);
    out.extend(heartbeats(
        T0,
        end + (WINDOW_MS + GRACE_MS) * MS + 2 * LATENESS,
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

/// The state records held at `tick` when a retraction takes effect `delay(record)` ticks after
/// it entered.
pub(crate) fn held_with_delay(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    tick: Tick,
    delay: impl Fn(&StateObject) -> Tick,
) -> Vec<StateRecord> {
    let mut counts: BTreeMap<&StateRecord, i64> = BTreeMap::new();
    for (observation, at) in arrived.iter().zip(entered) {
        if let (Observation::State(update), Some(at)) = (observation, at) {
            let effective = if update.diff < 0 {
                at + delay(&update.record.object)
            } else {
                *at
            };
            if effective <= tick {
                *counts.entry(&update.record).or_insert(0) += i64::from(update.diff);
            }
        }
    }
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(record, _)| record.clone())
        .collect()
}

/// A resolved connection as the naive resolution sees it:
/// `((client, server), (evidence, via, record))`.
pub(crate) type NaiveConnection = ((EntityId, EntityId), (Evidence, Resolution, FactId));

/// A traffic edge's candidate evidence, in the order the rule prefers them.
type NaiveCandidate = (Reverse<u64>, Evidence, Resolution, FactId);

/// A mapping as the naive resolution sees it, in the order it prefers them.
type NaiveMapping = (u8, Reverse<TimeNs>, EntityId, Resolution, FactId);

/// From scratch, at `tick`: every held connection `((client, server), (evidence, via, record))`
/// over the facts visible then (within W of their own tick) and the state held then (mappings
/// for `GRACE_MS` after their retraction, process links for `EXIT_GRACE_MS`).
pub(crate) fn naive_connections(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
    window_ms: Tick,
    keep: impl Fn(&Fact) -> bool,
) -> Vec<NaiveConnection> {
    let records = held_with_delay(arrived, entered, tick, |object| match object {
        StateObject::ServiceEndpoint(_) | StateObject::Service(_) | StateObject::PodAddress(_) => {
            GRACE_MS
        }
        StateObject::ProcessContainer(_) => EXIT_GRACE_MS,
        _ => 0,
    });
    let plain = held_with_delay(arrived, entered, tick, |_| 0);
    let mut mappings: Vec<(String, NaiveMapping)> = Vec::new();
    for record in &records {
        let mapping = |tier, target: &EntityId, via| {
            (
                tier,
                Reverse(record.since_ns),
                target.clone(),
                via,
                record.evidence.clone(),
            )
        };
        match &record.object {
            StateObject::ServiceEndpoint(endpoint) => {
                let EntityId::Endpoint { address } = &endpoint.endpoint else {
                    continue;
                };
                let target = endpoint.pod.as_ref().unwrap_or(&endpoint.service);
                mappings.push((
                    address.to_string(),
                    mapping(0, target, Resolution::Endpoint),
                ));
                if let Some(pod) = &endpoint.pod {
                    let ip = address.rsplit_once(':').expect("ip:port").0.to_string();
                    mappings.push((ip, mapping(1, pod, Resolution::PodIp)));
                }
            }
            StateObject::PodAddress(address) => {
                mappings.push((
                    address.ip.clone(),
                    mapping(1, &address.pod, Resolution::PodIp),
                ));
            }
            StateObject::Service(service) => {
                for ip in &service.cluster_ips {
                    mappings.push((
                        ip.clone(),
                        mapping(1, &service.entity, Resolution::ClusterIp),
                    ));
                }
            }
            _ => {}
        }
    }
    let pods_of = |container: &EntityId| -> BTreeSet<EntityId> {
        plain
            .iter()
            .filter_map(|record| match &record.object {
                StateObject::PodContainer(member)
                    if *container
                        == (EntityId::Container {
                            id: Arc::clone(&member.container_id),
                        }) =>
                {
                    Some(member.pod.clone())
                }
                _ => None,
            })
            .collect()
    };
    let containers_of = |process: &EntityId| -> Vec<EntityId> {
        records
            .iter()
            .filter_map(|record| match &record.object {
                StateObject::ProcessContainer(member) if member.process == *process => {
                    Some(EntityId::Container {
                        id: Arc::clone(&member.container_id),
                    })
                }
                _ => None,
            })
            .collect()
    };
    let mut out = Vec::new();
    for (observation, at) in arrived.iter().zip(entered) {
        let (Observation::Fact(fact), Some(at)) = (observation, at) else {
            continue;
        };
        if *at > tick || tick >= clock.tick_of(fact.time_ns) + window_ms || !keep(fact) {
            continue;
        }
        let (outbound, remote, process, container) = match &fact.payload {
            FactPayload::TcpConnect(c) => (true, c.remote, &c.process, &c.container_id),
            FactPayload::TcpAccept(a) => (false, a.remote, &a.process, &a.container_id),
            _ => continue,
        };
        let remote_text = remote.to_string();
        let ip_text = remote.ip().to_string();
        let Some((_, _, target, via, record)) = mappings
            .iter()
            .filter(|(key, _)| (outbound && *key == remote_text) || *key == ip_text)
            .map(|(_, mapping)| mapping)
            .filter(|mapping| mapping.1.0 <= fact.time_ns)
            .min()
            .cloned()
        else {
            continue;
        };
        let containers = match (container, process) {
            (Some(id), _) => vec![EntityId::Container { id: Arc::clone(id) }],
            (None, Some(process)) => containers_of(&EntityId::Process {
                start_ns: process.start_ns,
                pid: process.pid,
                node: Arc::clone(&fact.id.node),
            }),
            (None, None) => Vec::new(),
        };
        for container in containers {
            let pods = pods_of(&container);
            let locals: Vec<EntityId> = if pods.is_empty() {
                vec![container]
            } else {
                pods.into_iter().collect()
            };
            for local in locals {
                let (client, server) = if outbound {
                    (local, target.clone())
                } else {
                    (target.clone(), local)
                };
                if client != server {
                    let evidence = Evidence::of(fact);
                    out.push(((client, server), (evidence, via, record.clone())));
                }
            }
        }
    }
    out
}

/// From scratch, at `tick`: the connections that stand for the current slots of their flows.
/// Tick by tick in entry order, each connection joins its flow's newest slot when both fall in
/// the same `RESOLVE_EVERY_MS`-long stretch and starts a slot otherwise; a slot is current
/// until `W` after its latest connection, and its earliest connection stands for it.
fn naive_stand_ins(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeSet<FactId> {
    let slot_ns = RESOLVE_EVERY_MS * MS;
    // A flow as the rule keys it: local side, address, direction.
    type Flow = (String, String, bool);
    let mut entering: Vec<(Tick, TimeNs, FactId, Flow)> = Vec::new();
    for (observation, at) in arrived.iter().zip(entered) {
        let (Observation::Fact(fact), Some(at)) = (observation, at) else {
            continue;
        };
        if *at > tick {
            continue;
        }
        let (outbound, remote, process, container) = match &fact.payload {
            FactPayload::TcpConnect(c) => (true, c.remote, &c.process, &c.container_id),
            FactPayload::TcpAccept(a) => (false, a.remote, &a.process, &a.container_id),
            _ => continue,
        };
        let local = match (container, process) {
            (Some(id), _) => format!("container {id}"),
            (None, Some(process)) => {
                format!(
                    "process {} {} {}",
                    fact.id.node, process.pid, process.start_ns
                )
            }
            (None, None) => continue,
        };
        let address = if outbound {
            remote.to_string()
        } else {
            remote.ip().to_string()
        };
        entering.push((
            *at,
            fact.time_ns,
            fact.id.clone(),
            (local, address, outbound),
        ));
    }
    entering.sort();
    entering.dedup();
    // Per flow: (slot, earliest (time, id), latest time).
    type Slot = (u64, (TimeNs, FactId), TimeNs);
    let mut flows: BTreeMap<Flow, Vec<Slot>> = BTreeMap::new();
    let expires = |slot: &Slot| clock.tick_of(slot.2) + WINDOW_MS;
    for (at, time, id, flow) in entering {
        let slots = flows.entry(flow).or_default();
        slots.retain(|slot| expires(slot) >= at);
        let index = time / slot_ns;
        match slots.iter_mut().max_by_key(|slot| slot.2) {
            Some(newest) if newest.0 == index => {
                newest.1 = newest.1.clone().min((time, id));
                newest.2 = newest.2.max(time);
            }
            _ => slots.push((index, (time, id), time)),
        }
    }
    flows
        .into_values()
        .flatten()
        .filter(|slot| expires(slot) > tick)
        .map(|(_, (_, id), _)| id)
        .collect()
}

/// From scratch, at `tick`: the service graph's correlations.
pub(crate) fn naive_graph(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    clock: TickClock,
    tick: Tick,
) -> BTreeMap<Correlation, i64> {
    let window_ns = WINDOW_MS * MS;
    let stand_ins = naive_stand_ins(arrived, entered, clock, tick);
    let mut edges: BTreeMap<(EntityId, EntityId), NaiveCandidate> = BTreeMap::new();
    // A slot's earliest connection stands for it while the slot is current, however long ago
    // it was made.
    for (pair, (evidence, via, record)) in
        naive_connections(arrived, entered, clock, tick, Tick::MAX / 4, |fact| {
            stand_ins.contains(&fact.id)
        })
    {
        let candidate = (Reverse(evidence.time / window_ns), evidence, via, record);
        let best = edges.entry(pair).or_insert_with(|| candidate.clone());
        if candidate < *best {
            *best = candidate;
        }
    }
    let mut expected = BTreeMap::new();
    for ((client, server), (_, evidence, via, record)) in edges {
        let correlation = Correlation::new(
            CorrelationKind::ServiceDependency,
            server.clone(),
            vec![
                evidence.hop(&client, Relation::Start),
                evidence.hop(&server, Relation::DependsOn),
            ],
            Detail::Dependency {
                via,
                resolved_by: record,
                window_ns,
            },
            Confidence {
                percent: 95,
                basis: vec![Basis::ObservedTraffic],
            },
        );
        expected.insert(correlation, 1);
    }
    // Services on the pods their slices list, a not-ready endpoint first.
    let mut routes: BTreeMap<(EntityId, EntityId), (bool, Evidence)> = BTreeMap::new();
    for record in held_with_delay(arrived, entered, tick, |_| 0) {
        let StateObject::ServiceEndpoint(endpoint) = &record.object else {
            continue;
        };
        let Some(pod) = &endpoint.pod else { continue };
        let candidate = (
            endpoint.ready,
            Evidence::of_state(&record).expect("evidence"),
        );
        let best = routes
            .entry((endpoint.service.clone(), pod.clone()))
            .or_insert_with(|| candidate.clone());
        if candidate < *best {
            *best = candidate;
        }
    }
    for ((service, pod), (_, evidence)) in routes {
        let correlation = Correlation::new(
            CorrelationKind::ServiceDependency,
            pod.clone(),
            vec![
                evidence.hop(&service, Relation::Start),
                evidence.hop(&pod, Relation::DependsOn),
            ],
            Detail::Dependency {
                via: Resolution::ServiceRoute,
                resolved_by: evidence.fact_id.clone(),
                window_ns,
            },
            Confidence {
                percent: 100,
                basis: vec![Basis::RecordedEndpoint],
            },
        );
        expected.insert(correlation, 1);
    }
    expected
}

/// At every closed tick, the rule holds exactly the edges a recomputation from scratch finds
/// over the facts and state visible then.
#[test]
fn the_service_graph_equals_a_recomputation_from_scratch_at_every_tick() {
    let (mut via, mut routes, mut expired, mut late) = (BTreeSet::new(), 0, 0, 0);
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
            |tick| naive_graph(&arrived, &run.entered, clock, tick),
            &format!("seed {seed}"),
        );
        expired += seen.retracted;
        for (_, diff, correlation) in run.changes() {
            if let (1, Detail::Dependency { via: how, .. }) = (diff, &correlation.detail) {
                via.insert(*how);
                routes += usize::from(*how == Resolution::ServiceRoute);
            }
        }
    }
    // Every way to resolve an address occurred, edges expired, facts came late.
    assert_eq!(via.len(), 4, "{via:?}");
    assert!(
        routes > 10 && expired > 30 && late > 5,
        "{routes} {expired} {late}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn the_service_graph_does_not_depend_on_arrival_order_or_workers() {
    for seed in 31..=34 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 4, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        let reordered = same_for_any_order_and_two_workers(&harness, shuffled, &in_order, seed);
        assert_eq!(reordered.report.late, 0, "seed {seed}");
    }
}

const SECOND: TimeNs = 1_000 * MS;

/// The traffic edges held at the end of `at_ns`'s tick: `(client, server, evidence time)`.
fn traffic_edges(
    run: &crate::harness::RuleRun,
    clock: TickClock,
    at_ns: TimeNs,
) -> Vec<(String, String, TimeNs)> {
    run.held_at(clock.tick_of(at_ns))
        .keys()
        .filter(|c| {
            !matches!(
                c.detail,
                Detail::Dependency {
                    via: Resolution::ServiceRoute,
                    ..
                }
            )
        })
        .map(|c| {
            (
                c.chain[0].entity.to_string(),
                c.chain[1].entity.to_string(),
                c.chain[1].time,
            )
        })
        .collect()
}

/// Pod a serves 10.0.0.5:80 from 1 s and goes away at 10 s; pod b takes the address at 20 s.
/// A connect at 5 s depends on a; one at 15 s (a gone past its grace, b not there yet) on
/// nothing; one at 25 s on b. The connect at 5 s never becomes b's, before or after b appears.
#[test]
fn a_pod_reusing_an_address_gets_no_edge_from_earlier_connects() {
    let a = endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/a"), true);
    let b = endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/b"), true);
    let mut stream = vec![
        state(
            1,
            T0 + SECOND,
            T0 + SECOND,
            1,
            in_pod("c1", "pod/ns/client"),
        ),
        state(2, T0 + SECOND, T0 + SECOND, 1, a.clone()),
        connect(
            3,
            T0 + 5 * SECOND,
            Some("c1"),
            None,
            "10.0.0.5:80",
            ConnectOutcome::Established,
        ),
        state(2, T0 + 10 * SECOND, T0 + SECOND, -1, a),
        connect(
            4,
            T0 + 15 * SECOND,
            Some("c1"),
            None,
            "10.0.0.5:80",
            ConnectOutcome::Refused,
        ),
        state(5, T0 + 20 * SECOND, T0 + 20 * SECOND, 1, b),
        connect(
            6,
            T0 + 25 * SECOND,
            Some("c1"),
            None,
            "10.0.0.5:80",
            ConnectOutcome::Established,
        ),
    ];
    stream.extend(heartbeats(T0, T0 + 40 * SECOND, 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let mut config = config();
    config.service_graph.window = Duration::from_secs(30);
    config.service_graph.mapping_grace = Duration::from_secs(3);
    let harness = RuleHarness::from_table(from_config, &config).expect("enabled");
    let clock = harness.clock();
    let run = harness.run(stream).expect("run");
    let client = "pod/ns/client".to_string();
    assert_eq!(
        traffic_edges(&run, clock, T0 + 6 * SECOND),
        [(client.clone(), "pod/ns/a".to_string(), T0 + 5 * SECOND)]
    );
    // a's record went at 10 s and its grace ran out at 13 s: the edge from the connect at
    // 5 s went with it, and the connect at 15 s resolved to nothing.
    assert_eq!(traffic_edges(&run, clock, T0 + 16 * SECOND), []);
    assert_eq!(traffic_edges(&run, clock, T0 + 21 * SECOND), []);
    assert_eq!(
        traffic_edges(&run, clock, T0 + 26 * SECOND),
        [(client.clone(), "pod/ns/b".to_string(), T0 + 25 * SECOND)]
    );
    for (_, diff, correlation) in run.changes() {
        if diff > 0 && correlation.chain[1].entity == entity("pod/ns/b") {
            assert!(
                correlation.chain[1].time >= T0 + 20 * SECOND
                    || correlation.chain[0].entity == entity("service/ns/s"),
                "{correlation:?}"
            );
        }
    }
}

/// The same with the addresses the pods' CNI ADDs assigned (no EndpointSlice at all): pod a
/// holds 10.0.0.7 from 1 s until its sandbox's DEL at 10 s, pod b from 20 s. A connect to any
/// port of it at 5 s depends on a, at 15 s on nothing, at 25 s on b.
#[test]
fn an_address_from_a_cni_add_resolves_connects_until_its_del() {
    let held = |pod: &str, sandbox: &str| {
        StateObject::PodAddress(PodAddress {
            pod: entity(pod),
            ip: "10.0.0.7".into(),
            container_id: sandbox.into(),
            interface: "eth0".into(),
        })
    };
    let to = |seq, at| {
        connect(
            seq,
            at,
            Some("c1"),
            None,
            "10.0.0.7:8080",
            ConnectOutcome::Established,
        )
    };
    let mut stream = vec![
        state(
            1,
            T0 + SECOND,
            T0 + SECOND,
            1,
            in_pod("c1", "pod/ns/client"),
        ),
        state(2, T0 + SECOND, T0 + SECOND, 1, held("pod/ns/a", "sa")),
        to(3, T0 + 5 * SECOND),
        state(2, T0 + 10 * SECOND, T0 + SECOND, -1, held("pod/ns/a", "sa")),
        to(4, T0 + 15 * SECOND),
        state(
            5,
            T0 + 20 * SECOND,
            T0 + 20 * SECOND,
            1,
            held("pod/ns/b", "sb"),
        ),
        to(6, T0 + 25 * SECOND),
    ];
    stream.extend(heartbeats(T0, T0 + 40 * SECOND, 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let mut config = config();
    config.service_graph.window = Duration::from_secs(30);
    config.service_graph.mapping_grace = Duration::from_secs(3);
    let harness = RuleHarness::from_table(from_config, &config).expect("enabled");
    let clock = harness.clock();
    let run = harness.run(stream).expect("run");
    let client = "pod/ns/client".to_string();
    assert_eq!(
        traffic_edges(&run, clock, T0 + 6 * SECOND),
        [(client.clone(), "pod/ns/a".to_string(), T0 + 5 * SECOND)]
    );
    assert_eq!(traffic_edges(&run, clock, T0 + 16 * SECOND), []);
    assert_eq!(
        traffic_edges(&run, clock, T0 + 26 * SECOND),
        [(client, "pod/ns/b".to_string(), T0 + 25 * SECOND)]
    );
    let via_pod_ip = run.held_at(clock.tick_of(T0 + 6 * SECOND)).keys().all(|c| {
        matches!(
            c.detail,
            Detail::Dependency {
                via: Resolution::PodIp,
                ..
            }
        )
    });
    assert!(via_pod_ip);
}

/// An edge lasts W after its last connect and then goes; with steady traffic its evidence
/// changes once per W, not on every connect.
#[test]
fn an_edge_expires_after_the_window_without_traffic() {
    let mut stream = vec![
        state(1, T0, T0, 1, in_pod("c1", "pod/ns/client")),
        state(
            2,
            T0,
            T0,
            1,
            endpoint("service/ns/s", "10.0.0.5:80", Some("pod/ns/a"), true),
        ),
    ];
    // A connect every second from 0 s to 20 s, then silence.
    for at in 0..=20 {
        stream.push(connect(
            10 + at,
            T0 + at * SECOND,
            Some("c1"),
            None,
            "10.0.0.5:80",
            ConnectOutcome::Established,
        ));
    }
    stream.extend(heartbeats(T0, T0 + 40 * SECOND, 500 * MS));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    let harness = RuleHarness::from_table(from_config, &config()).expect("enabled");
    let clock = harness.clock();
    let run = harness.run(stream).expect("run");
    let edge = |at_s: u64| traffic_edges(&run, clock, T0 + at_s * SECOND);
    let client = "pod/ns/client".to_string();
    let a = "pod/ns/a".to_string();
    assert_eq!(edge(3), [(client.clone(), a.clone(), T0)]);
    // The newest 6 s period with traffic starts at 18 s.
    assert_eq!(edge(20), [(client.clone(), a.clone(), T0 + 18 * SECOND)]);
    // The last connect was at 20 s: held until 26 s, gone after.
    assert_eq!(
        traffic_edges(&run, clock, T0 + 26 * SECOND - 100 * MS),
        [(client, a, T0 + 20 * SECOND)]
    );
    assert_eq!(edge(26), []);
    // While the traffic goes on, one change per W-long period (0, 6, 12 and 18 s), not one
    // per connect.
    let appeared: Vec<TimeNs> = run
        .changes()
        .filter(|(_, diff, c)| *diff > 0 && c.chain[0].entity == entity("pod/ns/client"))
        .map(|(time, _, _)| time)
        .collect();
    assert_eq!(
        appeared.iter().filter(|t| **t < T0 + 21 * SECOND).count(),
        4,
        "{appeared:?}"
    );
    // After it stops, the evidence moves once: when the slot of 18–19 s runs out (25 s), the
    // connect at 20 s stands for the period until it runs out too.
    assert_eq!(appeared.len(), 5, "{appeared:?}");
    assert_eq!(appeared[4], T0 + 25 * SECOND, "{appeared:?}");
}
