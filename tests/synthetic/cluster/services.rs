//! The network side of the synthetic cluster ([`ClusterSpec::services`]): Services and their
//! endpoints, readiness, TCP connects between pods, memory usage crossings, crashes, and the
//! seeded incidents ([`IncidentKind`]).
//!
//! Every Deployment `d` has a Service `svc-ddd` with a cluster IP `10.96.<d / 250>.<d % 250 + 1>`
//! (port 80, routed to port 8080 of its pods) and depends on the Services of Deployments
//! `d + 1` and `d + 7` (modulo their number): its containers connect to those. A pod gets an
//! IP in its node's `10.244.<node>.0/24` when it is created (freed, and later reused, when it is
//! gone) and an endpoint record `<ip>:8080` in its Service, not ready until every container's
//! readiness probe passes (0.8–2 s after it starts) and not ready again from the moment one ends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tapio_model::{
    ConnectOutcome, ContainerReady, EntityId, Fact, FactId, FactPayload, Observation, ProcessRef,
    Resource, ResourceUsage, ServiceEndpoint, ServiceObject, StateObject, TcpAccept, TcpConnect,
    TimeNs,
};

use super::{Cluster, Event, Incident, IncidentKind, NS_PER_MS, NS_PER_S, rate_mean, uid};

/// The port Services listen on.
const SERVICE_PORT: u16 = 80;
/// The port pods serve on.
const POD_PORT: u16 = 8080;
/// ECONNREFUSED.
const ECONNREFUSED: i32 = 111;
/// ETIMEDOUT.
const ETIMEDOUT: i32 = 110;
/// The memory limit of every container, bytes.
const MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

impl Cluster {
    /// The Service of Deployment `index`, listed with it.
    pub(super) fn create_service(&mut self, time: TimeNs, index: usize) {
        let d = &self.deployments[index];
        let entity = EntityId::Service {
            namespace: d.namespace.clone().into(),
            name: d.name.clone().into(),
        };
        let ip = Ipv4Addr::new(10, 96, (index / 250) as u8, (index % 250 + 1) as u8);
        let object = StateObject::Service(ServiceObject {
            entity: entity.clone(),
            uid: uid(&mut self.rng),
            cluster_ips: vec![ip.to_string()],
        });
        let record = self.kube_record(time, object);
        self.insert(time, record);
        self.deployments[index].service = Some((entity, ip));
    }

    /// Gives a new pod an IP on its node and lists it, not ready, in its Service.
    pub(super) fn assign_ip(&mut self, time: TimeNs, pod: u64) {
        let node = self.pods[&pod].node;
        let subnet = u8::try_from(node % 250).unwrap_or(0);
        let mut ip = None;
        for _ in 0..254 {
            let host = self.next_host[node];
            self.next_host[node] = if host >= 254 { 2 } else { host + 1 };
            let candidate = Ipv4Addr::new(10, 244, subnet, self.next_host[node]);
            if !self.ips_in_use.contains(&candidate) {
                ip = Some(candidate);
                break;
            }
        }
        let Some(ip) = ip else {
            return;
        };
        self.ips_in_use.insert(ip);
        if let Some(p) = self.pods.get_mut(&pod) {
            p.ip = Some(ip);
        }
        self.sync_endpoint(time, pod);
    }

    /// Makes the pod's endpoint record say whether every container is ready (retracting the
    /// old record verbatim), or lists it when it is not listed yet.
    pub(super) fn sync_endpoint(&mut self, time: TimeNs, pod: u64) {
        let Some(p) = self.pods.get(&pod) else {
            return;
        };
        let (Some(ip), Some((service, _))) = (p.ip, &self.deployments[p.deployment].service) else {
            return;
        };
        if p.terminating {
            return;
        }
        let ready = p.containers.iter().all(|c| c.running && c.ready);
        let current = match &p.endpoint {
            Some(record) => match &record.object {
                StateObject::ServiceEndpoint(endpoint) => Some(endpoint.ready),
                _ => None,
            },
            None => None,
        };
        if current == Some(ready) {
            return;
        }
        let object = StateObject::ServiceEndpoint(ServiceEndpoint {
            service: service.clone(),
            endpoint: EntityId::Endpoint {
                address: SocketAddr::new(IpAddr::V4(ip), POD_PORT).to_string().into(),
            },
            pod: Some(p.entity.clone()),
            ready,
        });
        let record = self.kube_record(time, object);
        let old = self
            .pods
            .get_mut(&pod)
            .and_then(|p| p.endpoint.replace(record.clone()));
        if let Some(old) = old {
            self.retract(time, old);
        }
        self.insert(time, record);
    }

    /// A container stopped being ready at `time`: the kubelet's readiness fact and the endpoint.
    pub(super) fn not_ready(&mut self, time: TimeNs, pod: u64, container: usize) {
        let Some(p) = self.pods.get_mut(&pod) else {
            return;
        };
        let c = &mut p.containers[container];
        if !c.ready {
            return;
        }
        c.ready = false;
        self.readiness(time, pod, container, false);
        self.sync_endpoint(time, pod);
    }

    /// The kubelet's `ContainerReady` fact.
    fn readiness(&mut self, time: TimeNs, pod: u64, container: usize, ready: bool) {
        let p = &self.pods[&pod];
        let c = &p.containers[container];
        let payload = FactPayload::ContainerReady(ContainerReady {
            pod: p.entity.clone(),
            container_name: c.name.to_string(),
            container_id: c.id.as_str().into(),
            ready,
            restart_count: c.restarts,
        });
        let node = p.node;
        let fact = self.kubelet_fact(node, time, payload);
        self.emit_at(time, fact);
    }

    fn kubelet_fact(&mut self, node: usize, time: TimeNs, payload: FactPayload) -> Observation {
        self.kubelet_seq[node] += 1;
        Observation::Fact(Fact {
            id: FactId::new(
                "kubelet",
                self.node_names[node].clone(),
                self.kubelet_seq[node],
            ),
            time_ns: time,
            payload,
        })
    }

    /// Schedules the network events that fall into the tick ending at `end`.
    pub(super) fn spontaneous_network(&mut self, end: TimeNs) {
        let spec = self.spec.clone();
        if !spec.services {
            return;
        }
        while self.next_connect <= end {
            self.schedule(self.next_connect, Event::Connect);
            self.next_connect += self.rng.exp_ns(rate_mean(spec.connects_per_s)).max(1);
        }
        while self.next_usage <= end {
            self.schedule(self.next_usage, Event::UsageCrossing);
            self.next_usage += self
                .rng
                .exp_ns(rate_mean(spec.usage_crossings_per_s))
                .max(1);
        }
        while self.next_crash <= end {
            self.schedule(self.next_crash, Event::Crash);
            self.next_crash += self.rng.exp_ns(rate_mean(spec.restarts_per_s)).max(1);
        }
        while self.next_incident <= end {
            let period = spec.incident_period_s * NS_PER_S;
            self.schedule(self.next_incident + 10 * NS_PER_S, Event::MemoryIncident);
            self.schedule(
                self.next_incident + 40 * NS_PER_S,
                Event::NodeRestartIncident,
            );
            self.next_incident += period;
        }
    }

    /// Handles the events of this module.
    pub(super) fn handle_network(&mut self, time: TimeNs, event: Event) {
        match event {
            Event::Connect => self.random_connect(time),
            Event::UsageCrossing => {
                if let Some((pod, container)) = self.random_container() {
                    self.usage(time, pod, container, true);
                    let below = time + self.rng.between(5_000, 60_000) * NS_PER_MS;
                    self.schedule(below, Event::UsageBelow { pod, container });
                }
            }
            Event::UsageBelow { pod, container } => self.usage(time, pod, container, false),
            Event::Crash => {
                if let Some((pod, container)) = self.random_container() {
                    self.crash(time, pod, container, (6, 134), 10 * NS_PER_S);
                }
            }
            Event::ContainerReady {
                pod,
                container,
                incarnation,
            } => {
                let Some(p) = self.pods.get_mut(&pod) else {
                    return;
                };
                let c = &mut p.containers[container];
                if p.terminating || !c.running || c.incarnation != incarnation || c.ready {
                    return;
                }
                c.ready = true;
                self.readiness(time, pod, container, true);
                self.sync_endpoint(time, pod);
            }
            Event::MemoryIncident => self.memory_incident(time),
            Event::MemoryRound { pod, client, round } => {
                if !self.running(pod, 0) {
                    return;
                }
                self.usage(time, pod, 0, true);
                let kill = time + 1_500 * NS_PER_MS;
                self.schedule(kill, Event::MemoryKill { pod, client });
                if round < 2 {
                    let next = Event::MemoryRound {
                        pod,
                        client,
                        round: round + 1,
                    };
                    self.schedule(time + 20 * NS_PER_S, next);
                }
            }
            Event::MemoryKill { pod, client } => {
                let Some(stop) = self.oom_kill(time, pod, 0) else {
                    return;
                };
                // Use falls with the process; the kubelet sees it after the restart.
                self.schedule(
                    time + 11 * NS_PER_S,
                    Event::UsageBelow { pod, container: 0 },
                );
                // The client keeps trying while the endpoint is not ready.
                for attempt in 0..4 {
                    let at = stop + (600 + attempt * 300) * NS_PER_MS;
                    self.connect_to_pod(at, client, pod, ConnectOutcome::Refused);
                }
            }
            Event::NodeRestartIncident => self.node_restart(time),
            _ => {}
        }
    }

    fn running(&self, pod: u64, container: usize) -> bool {
        self.pods.get(&pod).is_some_and(|p| {
            !p.terminating && p.containers.get(container).is_some_and(|c| c.running)
        })
    }

    /// The kubelet's report that a container's memory use crossed 90 % of its limit.
    fn usage(&mut self, time: TimeNs, pod: u64, container: usize, above: bool) {
        let Some(p) = self.pods.get(&pod) else {
            return;
        };
        let used = if above {
            MEMORY_LIMIT / 100 * self.rng.between(91, 99)
        } else {
            MEMORY_LIMIT / 100 * self.rng.between(30, 80)
        };
        let payload = FactPayload::ResourceUsage(ResourceUsage {
            pod: p.entity.clone(),
            container_name: p.containers[container].name.to_string(),
            resource: Resource::Memory,
            used,
            limit: MEMORY_LIMIT,
            // The kubelet collector's default share.
            threshold_percent: 90,
            above,
        });
        let node = p.node;
        let fact = self.kubelet_fact(node, time, payload);
        self.emit_at(time, fact);
    }

    /// A container ends on its own (`signal` to its processes, `exit_code`, `Error`), is not
    /// ready, and restarts after `backoff`.
    fn crash(
        &mut self,
        time: TimeNs,
        pod: u64,
        container: usize,
        (signal, exit_code): (u32, i32),
        backoff: TimeNs,
    ) {
        if !self.running(pod, container) {
            return;
        }
        self.stats.crashes += 1;
        self.kill_processes(time, pod, container, signal);
        let stop = time + self.rng.between(50, 300) * NS_PER_MS;
        self.container_exit(stop, pod, container, (exit_code, "Error"));
        self.not_ready(stop, pod, container);
        let incarnation = {
            let c = &mut self.pods.get_mut(&pod).expect("pod exists").containers[container];
            c.incarnation += 1;
            c.incarnation
        };
        self.schedule(
            stop + backoff,
            Event::ContainerStart {
                pod,
                container,
                incarnation,
            },
        );
    }

    /// The main process of a running container: (node, pid, start, comm, container id).
    fn main_process(&self, pod: u64) -> Option<(usize, ProcessRef, String)> {
        let p = self.pods.get(&pod)?;
        if p.terminating {
            return None;
        }
        p.containers.iter().find_map(|c| {
            let process = self.processes.get(&c.main?)?;
            Some((
                process.node,
                ProcessRef {
                    pid: process.pid,
                    start_ns: process.start_ns,
                    comm: process.comm.clone(),
                },
                process.container_id.clone(),
            ))
        })
    }

    /// A connect from the main process of `client` to `remote`, with its outcome; the
    /// server's accept too when it is established and `server` is given.
    fn connect(
        &mut self,
        time: TimeNs,
        client: u64,
        remote: SocketAddr,
        outcome: ConnectOutcome,
        server: Option<u64>,
    ) {
        let Some((node, process, container_id)) = self.main_process(client) else {
            return;
        };
        let Some(ip) = self.pods[&client].ip else {
            return;
        };
        let local = SocketAddr::new(IpAddr::V4(ip), 32_768 + self.rng.below(28_000) as u16);
        let (error, latency_ns) = match outcome {
            ConnectOutcome::Established => (0, self.rng.between(100_000, 2_000_000)),
            ConnectOutcome::Refused => (ECONNREFUSED, self.rng.between(50_000, 500_000)),
            _ => (ETIMEDOUT, NS_PER_S),
        };
        let connect = FactPayload::TcpConnect(TcpConnect {
            process: Some(process),
            local,
            remote,
            outcome,
            error,
            latency_ns,
            container_id: Some(container_id.as_str().into()),
        });
        let fact = self.kernel_fact(node, time, connect);
        self.emit_at(time, fact);
        let Some(server) = server.filter(|_| outcome == ConnectOutcome::Established) else {
            return;
        };
        let Some((server_node, server_process, server_container)) = self.main_process(server)
        else {
            return;
        };
        let Some(server_ip) = self.pods[&server].ip else {
            return;
        };
        let accept = FactPayload::TcpAccept(TcpAccept {
            process: Some(server_process),
            local: SocketAddr::new(IpAddr::V4(server_ip), POD_PORT),
            remote: local,
            container_id: Some(server_container.as_str().into()),
        });
        let at = time + latency_ns / 2;
        let fact = self.kernel_fact(server_node, at, accept);
        self.emit_at(at, fact);
    }

    /// A connect from `client` straight to `server`'s endpoint address.
    fn connect_to_pod(&mut self, time: TimeNs, client: u64, server: u64, outcome: ConnectOutcome) {
        let Some(ip) = self.pods.get(&server).and_then(|p| p.ip) else {
            return;
        };
        let remote = SocketAddr::new(IpAddr::V4(ip), POD_PORT);
        self.connect(time, client, remote, outcome, Some(server));
    }

    /// The Deployments `deployment` depends on.
    fn dependencies(&self, deployment: usize) -> [usize; 2] {
        let n = self.deployments.len();
        [(deployment + 1) % n, (deployment + 7) % n]
    }

    /// The Deployments that depend on `deployment`.
    fn dependents(&self, deployment: usize) -> [usize; 2] {
        let n = self.deployments.len();
        [(deployment + n - 1) % n, (deployment + n - 7 % n) % n]
    }

    /// A random pod of `deployment` with a running main process.
    fn running_pod_of(&mut self, deployment: usize) -> Option<u64> {
        let pods: Vec<u64> = self.deployments[deployment]
            .pods
            .iter()
            .copied()
            .filter(|pod| self.main_process(*pod).is_some())
            .collect();
        if pods.is_empty() {
            return None;
        }
        Some(pods[self.rng.below(pods.len() as u64) as usize])
    }

    /// A container connects to a Service its Deployment depends on, through its cluster IP.
    fn random_connect(&mut self, time: TimeNs) {
        let Some((client, _)) = self.random_container() else {
            return;
        };
        let deployment = self.pods[&client].deployment;
        let target = self.dependencies(deployment)[self.rng.below(2) as usize];
        let Some((_, cluster_ip)) = self.deployments[target].service.clone() else {
            return;
        };
        let ready: Vec<u64> = self.deployments[target]
            .pods
            .iter()
            .copied()
            .filter(|pod| {
                self.pods.get(pod).is_some_and(|p| {
                    !p.terminating && p.containers.iter().all(|c| c.running && c.ready)
                })
            })
            .collect();
        let remote = SocketAddr::new(IpAddr::V4(cluster_ip), SERVICE_PORT);
        if ready.is_empty() {
            // No ready endpoint: kube-proxy rejects.
            self.connect(time, client, remote, ConnectOutcome::Refused, None);
            return;
        }
        let server = ready[self.rng.below(ready.len() as u64) as usize];
        let outcome = match self.rng.below(1_000) {
            0..=9 => ConnectOutcome::Refused,
            10..=14 => ConnectOutcome::TimedOut,
            _ => ConnectOutcome::Established,
        };
        self.connect(time, client, remote, outcome, Some(server));
    }

    /// Memory pressure on the first container of a pod with a client (see
    /// [`IncidentKind::MemoryPressure`]).
    fn memory_incident(&mut self, time: TimeNs) {
        if self.deployments.is_empty() {
            return;
        }
        let start = self.rng.below(self.deployments.len() as u64) as usize;
        for offset in 0..self.deployments.len() {
            let deployment = (start + offset) % self.deployments.len();
            let Some(pod) = self.running_pod_of(deployment) else {
                continue;
            };
            if !self.running(pod, 0) {
                continue;
            }
            let Some(client) = self.running_pod_of(self.dependents(deployment)[0]) else {
                continue;
            };
            self.stats.incidents.push(Incident {
                kind: IncidentKind::MemoryPressure,
                time_ns: time,
                subject: self.pods[&pod].entity.clone(),
            });
            self.handle_network(
                time,
                Event::MemoryRound {
                    pod,
                    client,
                    round: 0,
                },
            );
            return;
        }
    }

    /// Every running container on the busiest node ends within 3 s (see
    /// [`IncidentKind::NodeRestart`]).
    fn node_restart(&mut self, time: TimeNs) {
        let mut busiest: Vec<(usize, Vec<(u64, usize)>)> = (0..self.node_names.len())
            .map(|node| (node, Vec::new()))
            .collect();
        let mut pods: Vec<u64> = self.live_pods.clone();
        pods.sort_unstable();
        for pod in pods {
            let p = &self.pods[&pod];
            if p.terminating {
                continue;
            }
            for (index, c) in p.containers.iter().enumerate() {
                if c.running {
                    busiest[p.node].1.push((pod, index));
                }
            }
        }
        let Some((node, containers)) = busiest
            .into_iter()
            .max_by_key(|(node, containers)| (containers.len(), usize::MAX - node))
        else {
            return;
        };
        if containers.is_empty() {
            return;
        }
        self.stats.incidents.push(Incident {
            kind: IncidentKind::NodeRestart,
            time_ns: time,
            subject: EntityId::Node {
                name: self.node_names[node].as_str().into(),
            },
        });
        let mut ended = Vec::new();
        for (pod, container) in containers {
            let at = time + self.rng.between(0, 3_000) * NS_PER_MS;
            let backoff = self.rng.between(5, 15) * NS_PER_S;
            self.crash(at, pod, container, (15, 255), backoff);
            if !ended.iter().any(|(other, _)| *other == pod) {
                ended.push((pod, at));
            }
        }
        // The pods that depend on each ended pod fail to reach it.
        for (server, at) in ended {
            let deployment = self.pods[&server].deployment;
            for dependent in self.dependents(deployment) {
                let Some(client) = self.running_pod_of(dependent) else {
                    continue;
                };
                if self.pods[&client].node == node {
                    continue;
                }
                for attempt in 0..2 {
                    let outcome = if self.rng.below(3) == 0 {
                        ConnectOutcome::TimedOut
                    } else {
                        ConnectOutcome::Refused
                    };
                    let when = at + (500 + attempt * 400) * NS_PER_MS;
                    self.connect_to_pod(when, client, server, outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tapio_model::{ConnectOutcome, EntityId, FactPayload, Observation, StateObject};

    use super::super::{Cluster, ClusterSpec, IncidentKind, NS_PER_S};

    fn endpoint_of(out: &[Observation], pod: &EntityId) -> String {
        out.iter()
            .find_map(|observation| match observation {
                Observation::State(update) => match &update.record.object {
                    StateObject::ServiceEndpoint(endpoint)
                        if endpoint.pod.as_ref() == Some(pod) =>
                    {
                        Some(endpoint.endpoint.to_string())
                    }
                    _ => None,
                },
                _ => None,
            })
            .expect("the pod has an endpoint")
    }

    /// Each seeded incident is in the stream as a whole chain, at the time the stats give.
    #[test]
    fn incidents_come_as_whole_chains_at_their_times() {
        let spec = ClusterSpec::with_incidents();
        let mut cluster = Cluster::new(spec.clone());
        let mut out = Vec::new();
        while cluster.event_time() < spec.start_ns + 130 * NS_PER_S {
            cluster.tick(&mut out);
        }
        let stats = cluster.stats().clone();
        let facts: Vec<_> = out
            .iter()
            .filter_map(|observation| match observation {
                Observation::Fact(fact) => Some(fact),
                _ => None,
            })
            .collect();
        let memory: Vec<_> = stats
            .incidents
            .iter()
            .filter(|i| i.kind == IncidentKind::MemoryPressure)
            .collect();
        let nodes: Vec<_> = stats
            .incidents
            .iter()
            .filter(|i| i.kind == IncidentKind::NodeRestart)
            .collect();
        assert_eq!((memory.len(), nodes.len()), (3, 2), "{:?}", stats.incidents);
        assert_eq!(memory[0].time_ns, spec.start_ns + 10 * NS_PER_S);
        assert_eq!(nodes[0].time_ns, spec.start_ns + 40 * NS_PER_S);

        for incident in &memory[..2] {
            let pod = &incident.subject;
            let t0 = incident.time_ns;
            assert!(facts.iter().any(|f| f.time_ns == t0
                && matches!(&f.payload, FactPayload::ResourceUsage(u) if &u.pod == pod && u.above)));
            let stops: Vec<_> = facts
                .iter()
                .filter_map(|f| match &f.payload {
                    FactPayload::ContainerExit(stop)
                        if stop.pod.as_ref() == Some(pod) && stop.reason == "OOMKilled" =>
                    {
                        Some((f.time_ns, stop))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(stops.len(), 3, "a restart loop of three OOM exits");
            let address = endpoint_of(&out, pod);
            for (round, (at, stop)) in stops.iter().enumerate() {
                let kill_at = t0 + round as u64 * 20 * NS_PER_S + 1_500 * 1_000_000;
                let kill = facts
                    .iter()
                    .find_map(|f| match &f.payload {
                        FactPayload::OomKill(kill)
                            if kill.container_id.as_deref() == Some(&*stop.container_id) =>
                        {
                            Some((f.time_ns, kill))
                        }
                        _ => None,
                    })
                    .expect("the kill");
                assert_eq!(kill.0, kill_at);
                assert!(facts.iter().any(|f| matches!(&f.payload,
                    FactPayload::ProcessExit(exit) if exit.pid == kill.1.pid
                        && exit.start_ns == kill.1.start_ns && exit.signal == 9
                        && f.time_ns > kill.0 && f.time_ns < *at)));
                assert!(facts.iter().any(|f| f.time_ns == *at
                    && matches!(&f.payload, FactPayload::ContainerReady(ready)
                        if ready.container_id == stop.container_id && !ready.ready)));
                assert!(out.iter().any(|o| matches!(o, Observation::State(update)
                    if update.diff > 0 && update.time_ns == *at
                        && matches!(&update.record.object, StateObject::ServiceEndpoint(e)
                            if e.pod.as_ref() == Some(pod) && !e.ready))));
                let refused = facts
                    .iter()
                    .filter(|f| {
                        f.time_ns > *at
                            && f.time_ns < *at + 2 * NS_PER_S
                            && matches!(&f.payload, FactPayload::TcpConnect(c)
                                if c.outcome == ConnectOutcome::Refused
                                    && format!("endpoint/{}", c.remote) == address)
                    })
                    .count();
                assert_eq!(refused, 4);
            }
        }

        for incident in &nodes {
            let EntityId::Node { name } = &incident.subject else {
                panic!("a node restart is about a node");
            };
            let t = incident.time_ns;
            let ended: HashMap<_, _> = facts
                .iter()
                .filter_map(|f| match &f.payload {
                    FactPayload::ContainerExit(stop)
                        if f.id.node == *name
                            && stop.exit_code == 255
                            && f.time_ns >= t
                            && f.time_ns <= t + 3_500 * 1_000_000 =>
                    {
                        Some((stop.pod.clone().expect("pod"), f.time_ns))
                    }
                    _ => None,
                })
                .collect();
            assert!(ended.len() >= 3, "{ended:?}");
            let addresses: Vec<String> = ended.keys().map(|pod| endpoint_of(&out, pod)).collect();
            let failed = facts
                .iter()
                .filter(|f| {
                    f.time_ns > t
                        && matches!(&f.payload, FactPayload::TcpConnect(c)
                            if c.outcome.is_failure()
                                && addresses.contains(&format!("endpoint/{}", c.remote)))
                })
                .count();
            assert!(failed >= ended.len(), "{failed} failed connects");
        }

        // The background: mostly established connects with their accepts.
        assert!(stats.connects > 100_000 && stats.accepts > 0);
        assert!(stats.failed_connects * 20 < stats.connects, "{stats:?}");
        assert!(stats.usage_crossings > 0 && stats.crashes > 0 && stats.readiness_changes > 0);
    }
}
