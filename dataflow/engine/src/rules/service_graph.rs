//! **Service graph.** A pod that opens TCP connections to another pod, or to a Service, depends
//! on it. This rule builds that graph from the kernel's connects (any outcome: a refused
//! connect still says whom the client needs) and accepts. The connecting side is the
//! connect's container, or the container its process runs in, and that container's pod. The
//! other side is found by its address, through the Kubernetes records *as they were when the
//! connection was made*: an `ip:port` an EndpointSlice lists is the pod behind it (or its
//! Service when the slice names no pod), another port on such a pod's IP is that pod, so is
//! any port on an IP the CNI ADD of a pod assigned it (until the DEL of its sandbox), and a
//! Service's cluster IP is the Service. Addresses are reused, so each mapping counts from the
//! time its record appeared, and a connection takes the newest mapping that already held when
//! it was made; a record that goes away keeps resolving for a grace period (so that
//! connections still in the window keep the mapping they were made under), and a connection
//! made after that finds nothing. An accept names the server side by its container and the
//! client by its IP. A Service also depends on every pod its EndpointSlices list, with the
//! endpoint's readiness as evidence. Connections are taken per flow (the same local side, the
//! same address, the same direction) and per slot of event time (`resolve_every`, 30 s): the
//! slot's earliest connection stands for the others, resolved as the records were when it was
//! made, and the slot is current until `W` after its latest connection. So a busy flow costs
//! about what a quiet one does, and an address that changes hands is followed from the next
//! slot. A traffic edge lasts while one of its slots is current; its evidence is the earliest
//! connection of the newest `W`-long period with traffic, so while traffic goes on the edge
//! changes once per `W` however busy it is.

use std::cmp::Reverse;
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, ServiceGraphConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactId, FactPayload,
    Relation, Resolution, StateObject, StateRecord, TimeNs,
};
use timely::dataflow::operators::vec::Map;

use super::{Evidence, Rule, RuleInputs};
use crate::clock::{Tick, TickClock};
use crate::operators::runs::{Fold, runs};
use crate::operators::window::retain;

/// The service graph rule, with its configuration.
pub struct ServiceGraph {
    /// W, ms (= ticks of 1 ms; converted by the clock).
    window_ms: u64,
    /// How long a mapping outlives its record, ms.
    grace_ms: u64,
    /// How often a flow's connections are resolved anew, ms.
    resolve_every_ms: u64,
}

/// The rule when `correlation.service_graph.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let ServiceGraphConfig {
        enabled,
        window,
        mapping_grace,
        resolve_every,
    } = &config.service_graph;
    enabled.then(|| {
        Box::new(ServiceGraph {
            window_ms: millis(*window),
            grace_ms: millis(*mapping_grace),
            resolve_every_ms: millis(*resolve_every),
        }) as Box<dyn Rule>
    })
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How the local side of a connection is known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Local {
    /// The fact names the container.
    Container(EntityId),
    /// Only the process is known: its container comes from the process links.
    Process(EntityId),
}

/// A connection the kernel saw, as the rule needs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Traffic {
    /// The connect or accept.
    pub(crate) evidence: Evidence,
    /// `true`: a connect (the local side depends on the remote); `false`: an accept (the
    /// remote side depends on the local).
    outbound: bool,
    /// The remote address, `ip:port`, as the Kubernetes records write it.
    remote: Arc<str>,
    /// The remote IP alone.
    remote_ip: Arc<str>,
    local: Local,
}

impl Traffic {
    /// The flow the connection belongs to: its local side, the address it names (the whole
    /// `ip:port` of a connect; only the IP of an accept, whose remote port is the client's
    /// ephemeral one) and its direction.
    fn flow(&self) -> Flow {
        let address = if self.outbound {
            &self.remote
        } else {
            &self.remote_ip
        };
        (self.local.clone(), Arc::clone(address), self.outbound)
    }
}

/// Connections from one local side to one address in one direction.
type Flow = (Local, Arc<str>, bool);

/// One slot of a flow's connections: the earliest, which stands for them all, and the time of
/// the latest, which keeps the slot current for `W` after it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Slot {
    index: u64,
    earliest: Traffic,
    latest_ns: TimeNs,
}

/// How a flow's connections fold into slots: a connection joins the flow's newest slot when it
/// falls in the same `resolve_every`-long stretch of event time, and a slot is current until
/// `W` after its latest connection. A flow's state is its slots, not its connections, so a
/// busy flow costs the rule little more than a quiet one.
#[derive(Clone)]
struct Slots {
    slot_ns: u64,
    window_ms: u64,
    clock: TickClock,
}

impl Fold for Slots {
    type Item = Traffic;
    type Run = Slot;

    fn start(&self, item: &Traffic) -> Slot {
        Slot {
            index: item.evidence.time / self.slot_ns,
            earliest: item.clone(),
            latest_ns: item.evidence.time,
        }
    }

    fn admits(&self, slot: &Slot, item: &Traffic) -> bool {
        item.evidence.time / self.slot_ns == slot.index
    }

    fn add(&self, slot: &mut Slot, item: &Traffic) {
        if *item < slot.earliest {
            slot.earliest = item.clone();
        }
        slot.latest_ns = slot.latest_ns.max(item.evidence.time);
    }

    fn latest(&self, slot: &Slot) -> u64 {
        slot.latest_ns
    }

    fn expires(&self, slot: &Slot) -> Tick {
        self.clock
            .tick_of(slot.latest_ns)
            .saturating_add(self.window_ms)
    }
}

/// One mapping from an address to an entity, valid from `since`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Mapping {
    /// 0 for an exact `ip:port`, 1 for an IP: an exact mapping wins.
    tier: u8,
    since: TimeNs,
    target: EntityId,
    via: Resolution,
    record: FactId,
}

/// A resolved connection: who depends on whom, with the evidence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Resolved {
    /// The connect or accept.
    pub(crate) evidence: Evidence,
    /// How the remote address was resolved.
    pub(crate) via: Resolution,
    /// The record that resolved it.
    pub(crate) record: FactId,
}

/// The IP of an `ip:port` address, IPv6 without its brackets.
fn ip_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Rule for ServiceGraph {
    fn name(&self) -> &'static str {
        "service graph"
    }

    fn section(&self) -> &'static str {
        "correlation.service_graph"
    }

    /// TCP connects (any outcome) and accepts.
    fn reads(&self, fact: &Fact) -> bool {
        matches!(
            fact.payload,
            FactPayload::TcpConnect(_) | FactPayload::TcpAccept(_)
        )
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let window_ns = self.window_ms.saturating_mul(1_000_000).max(1);
        let clock = inputs.clock();
        let connections = inputs
            .facts_of("tcp_connect")
            .concat(inputs.facts_of("tcp_accept"))
            .flat_map(|fact| traffic_of(&fact))
            .map(|traffic| (traffic.flow(), traffic));
        let slots = Slots {
            slot_ns: self.resolve_every_ms.saturating_mul(1_000_000).max(1),
            window_ms: self.window_ms,
            clock,
        };
        let earliest = runs(connections, slots, clock.tick_ms()).map(|(_, slot)| slot.earliest);
        let edges = resolve(inputs, earliest, self.grace_ms);
        let traffic_edges = edges
            .map(move |(pair, resolved)| {
                let bucket = resolved.evidence.time / window_ns;
                (pair, (Reverse(bucket), resolved))
            })
            .reduce(|_, candidates, output| {
                // Sorted: the newest period first, then the earliest connection in it.
                if let Some(((_, resolved), _)) = candidates.iter().find(|(_, count)| *count > 0) {
                    output.push(((*resolved).clone(), 1isize));
                }
            })
            .map(move |((client, server), resolved)| {
                traffic_correlation(&client, &server, &resolved, window_ns)
            });
        traffic_edges.concat(service_routes(inputs.state(), window_ns))
    }
}

/// Every connect or accept in `facts`, held for `window_ms` after it was made.
pub(crate) fn held_traffic<'scope>(
    inputs: &RuleInputs<'scope>,
    facts: VecCollection<'scope, Tick, Fact, isize>,
    window_ms: u64,
) -> VecCollection<'scope, Tick, Traffic, isize> {
    let clock = inputs.clock();
    retain(facts, window_ms, move |fact: &Fact| {
        clock.tick_of(fact.time_ns)
    })
    .flat_map(|fact| traffic_of(&fact))
}

/// Every connection in `traffic` with both sides resolved: `((client, server), resolved)`.
/// The local side is the fact's container or its process's container, then that container's
/// pod; the remote side is the newest mapping of its address whose record appeared at or
/// before the connection and is still held, or went away less than `grace_ms` ago.
/// Connections to themselves are left out.
pub(crate) fn resolve<'scope>(
    inputs: &RuleInputs<'scope>,
    traffic: VecCollection<'scope, Tick, Traffic, isize>,
    grace_ms: u64,
) -> VecCollection<'scope, Tick, ((EntityId, EntityId), Resolved), isize> {
    // The remote side, as the records were when the connection was made.
    let by_address = traffic.flat_map(|traffic| {
        let exact = traffic
            .outbound
            .then(|| (Arc::clone(&traffic.remote), traffic.clone()));
        let ip = (Arc::clone(&traffic.remote_ip), traffic);
        exact.into_iter().chain(Some(ip))
    });
    let remote = by_address
        .join_map(mappings(inputs.state(), grace_ms), |_, traffic, mapping| {
            (traffic.clone(), mapping.clone())
        })
        .filter(|(traffic, mapping)| mapping.since <= traffic.evidence.time)
        .map(|(traffic, mapping)| {
            let key = (mapping.tier, Reverse(mapping.since));
            (traffic, (key, mapping))
        })
        .reduce(|_, candidates, output| {
            // Sorted: the exact mapping first, then the newest, then by target.
            if let Some(((_, mapping), _)) = candidates.iter().find(|(_, count)| *count > 0) {
                output.push(((*mapping).clone(), 1isize));
            }
        });

    // The local side: the container, then its pod when the pod's status lists it.
    let named = remote
        .clone()
        .flat_map(|(traffic, mapping)| match &traffic.local {
            Local::Container(container) => Some((container.clone(), (traffic, mapping))),
            Local::Process(_) => None,
        });
    let by_process = remote
        .flat_map(|(traffic, mapping)| match &traffic.local {
            Local::Process(process) => Some((process.clone(), (traffic, mapping))),
            Local::Container(_) => None,
        })
        .join_map(inputs.process_links(), |_, found, link| {
            (link.parent.clone(), found.clone())
        });
    let by_container = named.concat(by_process);
    let pods = pods_of_containers(inputs.state());
    let in_pods = by_container
        .clone()
        .join_map(pods.clone(), |_, found, pod| (pod.clone(), found.clone()));
    let bare = by_container.antijoin(pods.map(|(container, _)| container).distinct());
    in_pods
        .concat(bare)
        .flat_map(|(local, (traffic, mapping))| {
            let (client, server) = if traffic.outbound {
                (local, mapping.target)
            } else {
                (mapping.target, local)
            };
            (client != server).then(|| {
                let resolved = Resolved {
                    evidence: traffic.evidence,
                    via: mapping.via,
                    record: mapping.record,
                };
                ((client, server), resolved)
            })
        })
}

/// The connection a connect or accept fact stands for.
fn traffic_of(fact: &Fact) -> Option<Traffic> {
    let (outbound, remote, process, container) = match &fact.payload {
        FactPayload::TcpConnect(connect) => (
            true,
            connect.remote,
            &connect.process,
            &connect.container_id,
        ),
        FactPayload::TcpAccept(accept) => {
            (false, accept.remote, &accept.process, &accept.container_id)
        }
        _ => return None,
    };
    let local = match (container, process) {
        (Some(id), _) => Local::Container(EntityId::Container { id: Arc::clone(id) }),
        (None, Some(process)) => Local::Process(EntityId::Process {
            start_ns: process.start_ns,
            pid: process.pid,
            node: Arc::clone(&fact.id.node),
        }),
        (None, None) => return None,
    };
    Some(Traffic {
        evidence: Evidence::of(fact),
        outbound,
        remote: remote.to_string().into(),
        remote_ip: remote.ip().to_string().into(),
        local,
    })
}

/// Addresses to the entities behind them, from Services, EndpointSlices and the pods'
/// addresses their CNI ADDs assigned; a record's
/// retraction takes effect `grace_ms` later.
fn mappings<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    grace_ms: u64,
) -> VecCollection<'scope, Tick, (Arc<str>, Mapping), isize> {
    state
        .inner
        .flat_map(move |(record, tick, diff)| {
            let at = if diff < 0 {
                tick.saturating_add(grace_ms)
            } else {
                tick
            };
            let mapping = |tier, target: &EntityId, via| Mapping {
                tier,
                since: record.since_ns,
                target: target.clone(),
                via,
                record: record.evidence.clone(),
            };
            let mut out: Vec<(Arc<str>, Mapping)> = Vec::new();
            match &record.object {
                StateObject::ServiceEndpoint(endpoint) => {
                    if let EntityId::Endpoint { address } = &endpoint.endpoint {
                        let target = endpoint.pod.as_ref().unwrap_or(&endpoint.service);
                        out.push((
                            Arc::clone(address),
                            mapping(0, target, Resolution::Endpoint),
                        ));
                        if let Some(pod) = &endpoint.pod {
                            out.push((ip_of(address).into(), mapping(1, pod, Resolution::PodIp)));
                        }
                    }
                }
                StateObject::PodAddress(address) => {
                    out.push((
                        address.ip.as_str().into(),
                        mapping(1, &address.pod, Resolution::PodIp),
                    ));
                }
                StateObject::Service(service) => {
                    for ip in &service.cluster_ips {
                        let ip: &str = ip.as_str();
                        out.push((
                            ip.into(),
                            mapping(1, &service.entity, Resolution::ClusterIp),
                        ));
                    }
                }
                _ => {}
            }
            out.into_iter().map(move |mapped| (mapped, at, diff))
        })
        .as_collection()
}

/// `(container, pod)` from the pods' status.
fn pods_of_containers<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
) -> VecCollection<'scope, Tick, (EntityId, EntityId), isize> {
    state
        .flat_map(|record| match record.object {
            StateObject::PodContainer(member) => Some((
                EntityId::Container {
                    id: member.container_id,
                },
                member.pod,
            )),
            _ => None,
        })
        .distinct()
}

/// A Service depends on each pod its EndpointSlices list; the evidence is the endpoint record,
/// a not-ready one first (so a failing pod's hop says so), then the earliest.
fn service_routes<'scope>(
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    window_ns: u64,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    state
        .flat_map(|record| match &record.object {
            StateObject::ServiceEndpoint(endpoint) => {
                let pod = endpoint.pod.clone()?;
                let evidence = Evidence::of_state(&record)?;
                Some(((endpoint.service.clone(), pod), (endpoint.ready, evidence)))
            }
            _ => None,
        })
        .reduce(|_, candidates, output| {
            if let Some((chosen, _)) = candidates.iter().find(|(_, count)| *count > 0) {
                output.push(((*chosen).clone(), 1isize));
            }
        })
        .map(move |((service, pod), (_, evidence))| {
            Correlation::new(
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
            )
        })
}

/// The correlation for a traffic edge: the client, then what it depends on, both with the
/// connection's evidence. Its root is what is depended on.
fn traffic_correlation(
    client: &EntityId,
    server: &EntityId,
    resolved: &Resolved,
    window_ns: u64,
) -> Correlation {
    Correlation::new(
        CorrelationKind::ServiceDependency,
        server.clone(),
        vec![
            resolved.evidence.hop(client, Relation::Start),
            resolved.evidence.hop(server, Relation::DependsOn),
        ],
        Detail::Dependency {
            via: resolved.via,
            resolved_by: resolved.record.clone(),
            window_ns,
        },
        Confidence {
            percent: 95,
            basis: vec![Basis::ObservedTraffic],
        },
    )
}

#[cfg(test)]
pub(crate) mod tests;
