//! **DNS failure.** When a pod's DNS lookups start failing (the server answers `SERVFAIL` or
//! `REFUSED`, or does not answer at all), what the pod does next fails too: it cannot find the
//! services it talks to, or it falls back on addresses that no longer answer. This rule finds a
//! burst of failed lookups from one pod to one DNS server: at least N within a window W of the
//! first (defaults 3 within 30 s), the pod found from the querying container (or from the
//! querying process's container) and the pod's container list. It adds the pod's failed TCP
//! connects in the same window, and, when it was observed, the DNS server's own failure: the
//! server is the Service whose cluster IP, or whose endpoint address, the lookups went to, and
//! its failure is one of its endpoints not being ready, or a container exit or readiness loss
//! of one of its pods, from shortly before the first failed lookup (`cause_before`) to the end
//! of the window; of several, the earliest. The chain reads in causal order: the server's
//! failure (when known), then the failed lookups, then the connect errors. A burst starts at a
//! failed lookup with no failed lookup of the same pod and server in the window before it, so
//! a failure stream that never pauses for a whole window is one burst; it stays current for
//! `keep_for` after its first lookup, then it is retracted.

use std::net::SocketAddr;
use std::sync::Arc;

use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, DnsFailureConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, DnsOutcome, EntityId, Fact,
    FactPayload, Hop, ProcessRef, Relation, StateObject, TimeNs,
};

use super::ownership::Link;
use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::window::retain;

/// The DNS failure rule, with its configuration.
pub struct DnsFailure {
    /// N: failed lookups that make a burst.
    min_failures: usize,
    /// W: the window the lookups fall within, ns.
    window_ns: u64,
    /// How long before the first failed lookup a server failure still counts, ns.
    cause_before_ns: u64,
    /// Whether NXDOMAIN counts as a failure.
    count_nxdomain: bool,
    /// How long a burst stays current after its first lookup, ms (= ticks).
    keep_for_ms: u64,
}

/// The rule when `correlation.dns_failure.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let DnsFailureConfig {
        enabled,
        min_failures,
        window,
        cause_before,
        count_nxdomain,
        keep_for,
    } = &config.dns_failure;
    let nanos = |duration: &std::time::Duration| u64::try_from(duration.as_nanos());
    enabled.then(|| {
        Box::new(DnsFailure {
            min_failures: usize::try_from(*min_failures).unwrap_or(usize::MAX),
            window_ns: nanos(window).unwrap_or(u64::MAX),
            cause_before_ns: nanos(cause_before).unwrap_or(u64::MAX),
            count_nxdomain: *count_nxdomain,
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        }) as Box<dyn Rule>
    })
}

/// Whether a lookup with `outcome` failed, as the rule counts failures.
pub fn is_failed(outcome: DnsOutcome, count_nxdomain: bool) -> bool {
    outcome.is_server_failure() || (count_nxdomain && outcome == DnsOutcome::NxDomain)
}

/// Who did something: the container when the fact names it, otherwise the process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Actor {
    Container(Arc<str>),
    Process(EntityId),
}

impl Actor {
    fn of(
        fact: &Fact,
        container: Option<&Arc<str>>,
        process: Option<&ProcessRef>,
    ) -> Option<Actor> {
        match (container, process) {
            (Some(id), _) => Some(Actor::Container(Arc::clone(id))),
            (None, Some(by)) => Some(Actor::Process(EntityId::Process {
                start_ns: by.start_ns,
                pid: by.pid,
                node: Arc::clone(&fact.id.node),
            })),
            (None, None) => None,
        }
    }
}

/// A failed lookup.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Lookup {
    evidence: Evidence,
    server: SocketAddr,
}

/// Which retention a lookup came through: the burst's own (`keep_for`), or the longer one
/// (`keep_for` + W) that only tells whether a lookup had another failure shortly before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Held {
    Current,
    Remembered,
}

/// A burst: the pod, the server, its first failed lookups and how many failed in the window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Burst {
    pod: EntityId,
    server: SocketAddr,
    /// The first N failed lookups, in time order.
    lookups: Vec<Evidence>,
    /// Failed lookups in `[first, first + W]`.
    failed: u32,
}

impl Burst {
    fn start(&self) -> TimeNs {
        self.lookups.first().map_or(0, |lookup| lookup.time)
    }
}

/// The DNS server's failure: where, and what was observed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Cause {
    evidence: Evidence,
    entity: EntityId,
}

/// What joins a burst before its correlation is built.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Part {
    Burst,
    Cause(Cause),
    Connect(Evidence),
}

impl Rule for DnsFailure {
    fn name(&self) -> &'static str {
        "DNS failure"
    }

    fn section(&self) -> &'static str {
        "correlation.dns_failure"
    }

    /// Failed lookups, failed connects, container exits and readiness losses (of DNS server
    /// pods, as far as the rule can tell only once it joins them with the Services).
    fn reads(&self, fact: &Fact) -> bool {
        match &fact.payload {
            FactPayload::DnsQuery(query) => is_failed(query.outcome, self.count_nxdomain),
            FactPayload::TcpConnect(connect) => connect.outcome.is_failure(),
            FactPayload::ContainerExit(_) => true,
            FactPayload::ContainerReady(ready) => !ready.ready,
            _ => false,
        }
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let tick_of = move |fact: &Fact| clock.tick_of(fact.time_ns);
        let window_ns = self.window_ns;
        let cause_before_ns = self.cause_before_ns;
        let min_failures = self.min_failures;
        let count_nxdomain = self.count_nxdomain;
        let keep = self.keep_for_ms;
        let window_ms = window_ns.div_ceil(1_000_000);
        let cause_before_ms = cause_before_ns.div_ceil(1_000_000);

        // Which pod each container belongs to, and which container each process runs in.
        let pods_of_containers = inputs.state().flat_map(|record| match record.object {
            StateObject::PodContainer(container) => Some((container.container_id, container.pod)),
            _ => None,
        });
        let processes = inputs.process_links();

        let lookups = |width| {
            retain(inputs.facts_of("dns_query"), width, tick_of).flat_map(move |fact| {
                match &fact.payload {
                    FactPayload::DnsQuery(query) if is_failed(query.outcome, count_nxdomain) => {
                        let actor =
                            Actor::of(&fact, query.container_id.as_ref(), query.process.as_ref())?;
                        let lookup = Lookup {
                            evidence: Evidence::of(&fact),
                            server: query.server,
                        };
                        Some((actor, lookup))
                    }
                    _ => None,
                }
            })
        };
        let current = lookups(keep).map(|(actor, lookup)| (actor, (lookup, Held::Current)));
        let remembered = lookups(keep.saturating_add(window_ms))
            .map(|(actor, lookup)| (actor, (lookup, Held::Remembered)));
        let bursts = by_pod(
            current.concat(remembered),
            pods_of_containers.clone(),
            processes.clone(),
        )
        .map(|(pod, (lookup, held))| ((pod, lookup.server), (lookup.evidence, held)))
        .reduce(move |(pod, server), lookups, output| {
            let lookups: Vec<(&Evidence, Held)> = lookups
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|((evidence, held), _)| (evidence, *held))
                .collect();
            for burst in bursts_of(pod, *server, &lookups, window_ns, min_failures) {
                output.push((burst, 1isize));
            }
        })
        .map(|(_, burst)| burst);

        // The pod's failed connects in the burst's window.
        let connects = retain(inputs.facts_of("tcp_connect"), keep, tick_of).flat_map(|fact| {
            match &fact.payload {
                FactPayload::TcpConnect(connect) if connect.outcome.is_failure() => {
                    let actor = Actor::of(
                        &fact,
                        connect.container_id.as_ref(),
                        connect.process.as_ref(),
                    )?;
                    Some((actor, Evidence::of(&fact)))
                }
                _ => None,
            }
        });
        let connects = by_pod(connects, pods_of_containers.clone(), processes)
            .join(bursts.clone().map(|burst| (burst.pod.clone(), burst)))
            .filter(move |(_, (connect, burst))| {
                let start = burst.start();
                connect.time >= start && connect.time - start <= window_ns
            })
            .map(|(_, (connect, burst))| (burst, Part::Connect(connect)));

        // The Services the lookups went to: by cluster IP, or by an endpoint's address.
        let state = inputs.state();
        let addresses = state
            .clone()
            .flat_map(|record| match record.object {
                StateObject::Service(service) => service
                    .cluster_ips
                    .into_iter()
                    .map(|ip| (ip, service.entity.clone()))
                    .collect::<Vec<_>>(),
                StateObject::ServiceEndpoint(endpoint) => match endpoint.endpoint {
                    EntityId::Endpoint { address } => vec![(address.to_string(), endpoint.service)],
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            })
            .distinct();
        let served = bursts
            .clone()
            .flat_map(|burst| {
                let (ip, address) = (burst.server.ip().to_string(), burst.server.to_string());
                [(ip, burst.clone()), (address, burst)]
            })
            .join(addresses)
            .map(|(_, (burst, service))| (service, burst))
            .distinct();

        // What went wrong with a Service: an endpoint not ready (while it is not), or one of its
        // pods' containers exiting or losing readiness.
        let not_ready = state.clone().flat_map(|record| {
            let evidence = Evidence::of_state(&record)?;
            match record.object {
                StateObject::ServiceEndpoint(endpoint) if !endpoint.ready => {
                    let entity = endpoint.pod.unwrap_or(endpoint.endpoint);
                    Some((endpoint.service, Cause { evidence, entity }))
                }
                _ => None,
            }
        });
        let service_pods = state
            .flat_map(|record| match record.object {
                StateObject::ServiceEndpoint(endpoint) => {
                    endpoint.pod.map(|pod| (pod, endpoint.service))
                }
                _ => None,
            })
            .distinct();
        let held_causes = |kind| {
            retain(
                inputs.facts_of(kind),
                keep.saturating_add(cause_before_ms),
                tick_of,
            )
        };
        let exits = held_causes("container_exit").flat_map(|fact| match &fact.payload {
            FactPayload::ContainerExit(exit) => Some((
                Arc::clone(&exit.container_id),
                (exit.pod.clone(), Evidence::of(&fact)),
            )),
            _ => None,
        });
        let exits_named = exits
            .clone()
            .flat_map(|(_, (pod, evidence))| pod.map(|pod| (pod, evidence)));
        let exits_found = exits
            .filter(|(_, (pod, _))| pod.is_none())
            .join_map(pods_of_containers, |_, (_, evidence), pod| {
                (pod.clone(), evidence.clone())
            });
        let readiness = held_causes("container_ready").flat_map(|fact| match &fact.payload {
            FactPayload::ContainerReady(ready) if !ready.ready => {
                Some((ready.pod.clone(), Evidence::of(&fact)))
            }
            _ => None,
        });
        let pod_failures = exits_named.concat(exits_found).concat(readiness).join_map(
            service_pods,
            |pod, evidence, service| {
                (
                    service.clone(),
                    Cause {
                        evidence: evidence.clone(),
                        entity: pod.clone(),
                    },
                )
            },
        );
        let causes = served
            .join(not_ready.concat(pod_failures))
            .filter(move |(_, (burst, cause))| {
                let (start, at) = (burst.start(), cause.evidence.time);
                at.saturating_add(cause_before_ns) >= start && at <= start.saturating_add(window_ns)
            })
            .map(|(_, (burst, cause))| (burst, Part::Cause(cause)));

        bursts
            .map(|burst| (burst, Part::Burst))
            .concat(connects)
            .concat(causes)
            .reduce(move |burst, parts, output| {
                let parts: Vec<&Part> = parts
                    .iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|(part, _)| *part)
                    .collect();
                if parts.iter().any(|part| matches!(part, Part::Burst)) {
                    output.push((correlation(burst, &parts, min_failures, window_ns), 1isize));
                }
            })
            .map(|(_, correlation)| correlation)
    }
}

/// `(actor, value)` → `(pod, value)`: a container to its pod, a process to its container's pod.
fn by_pod<'scope, T>(
    items: VecCollection<'scope, Tick, (Actor, T), isize>,
    pods: VecCollection<'scope, Tick, (Arc<str>, EntityId), isize>,
    processes: VecCollection<'scope, Tick, (EntityId, Link), isize>,
) -> VecCollection<'scope, Tick, (EntityId, T), isize>
where
    T: ExchangeData + std::hash::Hash,
{
    let direct = items.clone().flat_map(|(actor, item)| match actor {
        Actor::Container(id) => Some((id, item)),
        Actor::Process(_) => None,
    });
    let through_process = items
        .flat_map(|(actor, item)| match actor {
            Actor::Process(process) => Some((process, item)),
            Actor::Container(_) => None,
        })
        .join_map(processes, |_, item, link| match &link.parent {
            EntityId::Container { id } => Some((Arc::clone(id), item.clone())),
            _ => None,
        })
        .flat_map(|found| found);
    direct
        .concat(through_process)
        .join_map(pods, |_, item, pod| (pod.clone(), item.clone()))
}

/// The bursts among one pod's failed lookups to one server (sorted, each with where it is
/// held): a current lookup with no other lookup in the window before it starts one, and the
/// burst is the current lookups from it to the end of its window, when there are at least
/// `min_failures`.
fn bursts_of(
    pod: &EntityId,
    server: SocketAddr,
    lookups: &[(&Evidence, Held)],
    window_ns: u64,
    min_failures: usize,
) -> Vec<Burst> {
    let current: Vec<&Evidence> = lookups
        .iter()
        .filter(|(_, held)| *held == Held::Current)
        .map(|(evidence, _)| *evidence)
        .collect();
    let remembered: Vec<&Evidence> = lookups
        .iter()
        .filter(|(_, held)| *held == Held::Remembered)
        .map(|(evidence, _)| *evidence)
        .collect();
    let mut bursts = Vec::new();
    for (at, first) in current.iter().enumerate() {
        let earliest = first.time.saturating_sub(window_ns);
        let preceded = remembered
            .iter()
            .any(|other| *other < *first && other.time >= earliest);
        if preceded {
            continue;
        }
        let members: Vec<&Evidence> = current[at..]
            .iter()
            .take_while(|member| member.time - first.time <= window_ns)
            .copied()
            .collect();
        if members.len() >= min_failures {
            bursts.push(Burst {
                pod: pod.clone(),
                server,
                lookups: members
                    .iter()
                    .take(min_failures)
                    .map(|member| (*member).clone())
                    .collect(),
                failed: u32::try_from(members.len()).unwrap_or(u32::MAX),
            });
        }
    }
    bursts
}

/// The correlation of a burst with the connects and causes that joined it.
fn correlation(burst: &Burst, parts: &[&Part], hops: usize, window_ns: u64) -> Correlation {
    let cause = parts
        .iter()
        .filter_map(|part| match part {
            Part::Cause(cause) => Some(cause),
            _ => None,
        })
        .min_by(|a, b| (a.evidence.time, *a).cmp(&(b.evidence.time, *b)));
    let mut connects: Vec<&Evidence> = parts
        .iter()
        .filter_map(|part| match part {
            Part::Connect(connect) => Some(connect),
            _ => None,
        })
        .collect();
    connects.sort();
    let mut chain: Vec<Hop> = Vec::with_capacity(1 + burst.lookups.len() + hops);
    if let Some(cause) = cause {
        chain.push(cause.evidence.hop(&cause.entity, Relation::Start));
    }
    for (index, lookup) in burst.lookups.iter().enumerate() {
        let relation = match (index, cause.is_some()) {
            (0, true) => Relation::Caused,
            (0, false) => Relation::Start,
            _ => Relation::FollowedBy,
        };
        chain.push(lookup.hop(&burst.pod, relation));
    }
    for (index, connect) in connects.iter().take(hops).enumerate() {
        let relation = if index == 0 {
            Relation::Caused
        } else {
            Relation::FollowedBy
        };
        chain.push(connect.hop(&burst.pod, relation));
    }
    let mut basis = vec![Basis::DnsFailureBurst];
    basis.push(if cause.is_some() {
        Basis::DnsServerFailureObserved
    } else {
        Basis::DnsServerCauseUnknown
    });
    if !connects.is_empty() {
        basis.push(Basis::ConnectErrorsFollowed);
    }
    let percent = match (cause.is_some(), connects.is_empty()) {
        (true, false) => 95,
        (true, true) => 85,
        (false, false) => 70,
        (false, true) => 60,
    };
    let server: Arc<str> = burst.server.to_string().into();
    let root_cause = cause.map_or_else(
        || EntityId::Endpoint {
            address: Arc::clone(&server),
        },
        |cause| cause.entity.clone(),
    );
    Correlation::new(
        CorrelationKind::DnsFailure,
        root_cause,
        chain,
        Detail::DnsFailure {
            server,
            failed_lookups: burst.failed,
            connect_errors: u32::try_from(connects.len()).unwrap_or(u32::MAX),
            window_ns,
        },
        Confidence { percent, basis },
    )
}

#[cfg(test)]
mod tests;
