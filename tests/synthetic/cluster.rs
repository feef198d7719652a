//! The Poisson-rate synthetic cluster, generated tick by tick.
//!
//! The cluster has `nodes` nodes and `deployments` Deployments spread over a few namespaces.
//! Every Deployment owns a current ReplicaSet, which owns pods, which own one to three
//! containers. Everything Kubernetes knows is emitted as [`StateUpdate`](tapio_model::StateUpdate)s from the
//! `kubernetes/cluster` source; everything the kernel sees is emitted as facts from `kernel/<node>`
//! and container stops from `kubelet/<node>`; the node agent (`kernel/<node>`) also publishes
//! each process's place in its container as a `ProcessContainer` state record, inserted at the
//! exec and retracted verbatim at the exit. Each of those (source, node) pairs sends a
//! heartbeat at the end of every tick.
//!
//! Over event time the cluster lives:
//! - short-lived processes exec in running containers (Poisson, `exec_per_s` cluster-wide) and
//!   exit after an exponentially distributed lifetime;
//! - OOM kills (`oom_per_s`) hit a container's main process: `OomKill`, then its `ProcessExit`
//!   on signal 9 within 50 ms, then the container's `ContainerExit` (137, `OOMKilled`) within
//!   400 ms; ten seconds later the container restarts with a new id (the old `PodContainer`
//!   record is retracted verbatim, the new one inserted) and a new main process;
//! - pods are deleted (`pod_deletes_per_s`): their processes and containers stop, their records
//!   are retracted verbatim 1.5 s later, and the ReplicaSet creates a replacement on a random
//!   node;
//! - rollouts (`rollouts_per_s`) give a Deployment a new ReplicaSet and replace its pods one by
//!   one, after which the old ReplicaSet is retracted;
//! - with `services` (off by default, on in [`ClusterSpec::with_incidents`]; the `services`
//!   module): Services with endpoints that follow readiness, TCP connects between pods,
//!   memory usage crossings, crashes, and the seeded incidents of [`IncidentKind`] at known
//!   times ([`ClusterStats::incidents`]). Without it the stream is what it always was.
//!
//! The random source is [`Rng`] (xorshift64*), so the same [`ClusterSpec`] always produces the
//! same stream, whether it is generated at once or in chunks.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::Ipv4Addr;

use tapio_model::{
    ContainerExit, EntityId, Fact, FactId, FactPayload, Observation, OomKill, OwnerRef,
    PodContainer, StateObject, StateRecord, TimeNs, WorkloadObject,
};

use super::{
    NS_PER_MS, NS_PER_S, START_NS, exec_payload, exit_payload, heartbeat, kube_record, membership,
    update,
};
use crate::random::Rng;

mod services;

/// The shape and the rates of the synthetic cluster. Rates are per second of event time.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSpec {
    /// Seed of the random generator.
    pub seed: u64,
    /// Nodes (each runs a `kernel` and a `kubelet` source).
    pub nodes: usize,
    /// Namespaces the Deployments are spread over.
    pub namespaces: usize,
    /// Deployments.
    pub deployments: usize,
    /// Replicas per Deployment are uniform in `1..=max_replicas`.
    pub max_replicas: usize,
    /// Short-lived process execs per second, cluster-wide.
    pub exec_per_s: f64,
    /// Mean lifetime of a short-lived process, ms (capped at 60 s).
    pub process_life_ms: f64,
    /// OOM kills per second, cluster-wide.
    pub oom_per_s: f64,
    /// Pod deletions (each followed by a replacement) per second, cluster-wide.
    pub pod_deletes_per_s: f64,
    /// Rollouts (a new ReplicaSet replacing every pod of a Deployment) per second.
    pub rollouts_per_s: f64,
    /// Tick length, ms: every source sends a heartbeat at the end of every tick.
    pub tick_ms: u64,
    /// Event time of the first observation, ns since the Unix epoch.
    pub start_ns: TimeNs,
    /// Give every Deployment a Service with a cluster IP, every pod an IP and an endpoint
    /// (`ServiceEndpoint`, ready while all its containers are), and every container readiness
    /// facts from its kubelet. Connects, usage crossings, restarts and incidents need it.
    pub services: bool,
    /// TCP connects per second, cluster-wide, from a container to a Service its Deployment
    /// depends on (Deployment `d` depends on `d + 1` and `d + 7`): mostly established (with the
    /// server's accept), some refused or timed out, refused while no endpoint is ready.
    pub connects_per_s: f64,
    /// Memory use crossing its limit share (kubelet `resource_usage`, above and later back
    /// below) per second, cluster-wide.
    pub usage_crossings_per_s: f64,
    /// Container crashes (exit 134, `Error`, restart after 10 s) per second, cluster-wide.
    pub restarts_per_s: f64,
    /// Seed the two incidents every this many seconds of event time (0: none): memory pressure
    /// at 10 s into each period, a node-wide container restart at 40 s (see [`IncidentKind`]).
    pub incident_period_s: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            seed: 42,
            nodes: 20,
            namespaces: 10,
            deployments: 100,
            max_replicas: 8,
            exec_per_s: 1_500.0,
            process_life_ms: 1_000.0,
            oom_per_s: 0.5,
            pod_deletes_per_s: 0.5,
            rollouts_per_s: 1.0 / 60.0,
            tick_ms: 100,
            start_ns: START_NS,
            services: false,
            connects_per_s: 0.0,
            usage_crossings_per_s: 0.0,
            restarts_per_s: 0.0,
            incident_period_s: 0,
        }
    }
}

impl ClusterSpec {
    /// The default cluster with Services, 1,000 connects per second, usage crossings, crashes
    /// and an incident of each kind every minute: the stream the correlator benchmark runs on.
    pub fn with_incidents() -> ClusterSpec {
        ClusterSpec {
            services: true,
            connects_per_s: 1_000.0,
            usage_crossings_per_s: 0.5,
            restarts_per_s: 0.2,
            incident_period_s: 60,
            ..ClusterSpec::default()
        }
    }
}

/// The incidents [`ClusterSpec::incident_period_s`] seeds into the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentKind {
    /// A container's memory use crosses its limit share, then it is OOM-killed (kill → exit on
    /// signal 9 → container exit 137 `OOMKilled` → readiness false → endpoint not ready → a
    /// client's refused connects to it); it restarts after 10 s and the same happens 20 and
    /// 40 s after the first round: three exits, a restart loop.
    MemoryPressure,
    /// Every running container on one node ends within 3 s (a runtime or kubelet restart:
    /// processes on SIGTERM, container exit 255 `Error`, readiness false, endpoint not ready),
    /// and pods of the Deployments that depend on each one fail to connect to it (refused or
    /// timed out); the containers restart 5–15 s later.
    NodeRestart,
}

/// One seeded incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incident {
    /// What happened.
    pub kind: IncidentKind,
    /// When it started (the first usage crossing, or the first container end), ns.
    pub time_ns: TimeNs,
    /// The pod whose container ran out of memory, or the node.
    pub subject: EntityId,
}

/// What the generator has produced so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Observations emitted.
    pub observations: u64,
    /// Facts emitted.
    pub facts: u64,
    /// State updates emitted (inserts and retractions).
    pub state_updates: u64,
    /// State retractions emitted.
    pub retractions: u64,
    /// Heartbeats emitted.
    pub heartbeats: u64,
    /// Process execs emitted.
    pub execs: u64,
    /// OOM kills emitted.
    pub oom_kills: u64,
    /// OOM sequences whose container exit was emitted (the whole kill → exit → stop sequence).
    pub oom_sequences: u64,
    /// Pods created after the initial listing.
    pub pods_created: u64,
    /// Pods deleted.
    pub pods_deleted: u64,
    /// Rollouts started.
    pub rollouts: u64,
    /// Ticks generated.
    pub ticks: u64,
    /// TCP connects emitted.
    pub connects: u64,
    /// TCP connects that were refused or timed out.
    pub failed_connects: u64,
    /// TCP accepts emitted.
    pub accepts: u64,
    /// Resource usage crossings emitted (above and below).
    pub usage_crossings: u64,
    /// Container readiness changes emitted.
    pub readiness_changes: u64,
    /// Container ends followed by a restart that were not OOM kills (crashes, node restarts).
    pub crashes: u64,
    /// The incidents seeded, in order.
    pub incidents: Vec<Incident>,
}

/// Commands of the side processes: (comm, filename, args).
const SIDE_COMMANDS: &[(&str, &str, &[&str])] = &[
    ("sh", "/bin/sh", &["sh", "-c", "test -f /tmp/healthy"]),
    (
        "curl",
        "/usr/bin/curl",
        &["curl", "-sf", "http://localhost:8080/healthz"],
    ),
    (
        "grpc_health_pro",
        "/bin/grpc_health_probe",
        &["grpc_health_probe", "-addr=:9000"],
    ),
    ("cat", "/bin/cat", &["cat", "/proc/meminfo"]),
    ("pg_isready", "/usr/bin/pg_isready", &["pg_isready", "-q"]),
    ("nginx", "/usr/sbin/nginx", &["nginx", "-s", "reload"]),
];

const CONTAINER_NAMES: &[&str] = &["app", "sidecar", "metrics"];

#[derive(Debug)]
struct ReplicaSet {
    id: u64,
    record: StateRecord,
    entity: EntityId,
    uid: String,
    hash: String,
}

#[derive(Debug)]
struct Deployment {
    namespace: String,
    name: String,
    uid: String,
    containers: usize,
    replicas: usize,
    replica_sets: Vec<ReplicaSet>,
    current: u64,
    pods: Vec<u64>,
    rolling: bool,
    /// The Service in front of it and its cluster IP, with [`ClusterSpec::services`].
    service: Option<(EntityId, Ipv4Addr)>,
}

#[derive(Debug)]
struct Container {
    name: &'static str,
    id: String,
    record: Option<StateRecord>,
    running: bool,
    incarnation: u32,
    restarts: u32,
    main: Option<u64>,
    processes: Vec<u64>,
    /// Its readiness probe passes (with [`ClusterSpec::services`]).
    ready: bool,
}

#[derive(Debug)]
struct Pod {
    deployment: usize,
    replica_set: u64,
    entity: EntityId,
    uid: String,
    node: usize,
    record: StateRecord,
    containers: Vec<Container>,
    terminating: bool,
    /// Its IP, with [`ClusterSpec::services`].
    ip: Option<Ipv4Addr>,
    /// Its endpoint record in its Service, while it is listed.
    endpoint: Option<StateRecord>,
}

#[derive(Debug)]
struct Process {
    node: usize,
    pid: u32,
    start_ns: TimeNs,
    comm: String,
    container_id: String,
    pod: u64,
    container: usize,
    membership: StateRecord,
}

#[derive(Debug)]
enum Event {
    Emit(Box<Observation>),
    SideExec,
    Oom,
    DeleteRandomPod,
    Rollout,
    ProcessExit(u64),
    ContainerStart {
        pod: u64,
        container: usize,
        incarnation: u32,
    },
    CreatePod {
        deployment: usize,
        replica_set: u64,
    },
    RemovePod(u64),
    RolloutStep(usize),
    RetireReplicaSets(usize),
    Connect,
    UsageCrossing,
    Crash,
    ContainerReady {
        pod: u64,
        container: usize,
        incarnation: u32,
    },
    UsageBelow {
        pod: u64,
        container: usize,
    },
    MemoryIncident,
    MemoryRound {
        pod: u64,
        client: u64,
        round: u32,
    },
    MemoryKill {
        pod: u64,
        client: u64,
    },
    NodeRestartIncident,
}

#[derive(Debug)]
struct Scheduled {
    time: TimeNs,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.order) == (other.time, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.order).cmp(&(other.time, other.order))
    }
}

/// The synthetic cluster: call [`Cluster::fill`] to generate its stream tick by tick.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    rng: Rng,
    tick_end: TimeNs,
    node_names: Vec<String>,
    kernel_seq: Vec<u64>,
    kubelet_seq: Vec<u64>,
    kube_seq: u64,
    next_pid: Vec<u32>,
    deployments: Vec<Deployment>,
    pods: HashMap<u64, Pod>,
    live_pods: Vec<u64>,
    processes: HashMap<u64, Process>,
    next_id: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    next_exec: TimeNs,
    next_oom: TimeNs,
    next_delete: TimeNs,
    next_rollout: TimeNs,
    next_connect: TimeNs,
    next_usage: TimeNs,
    next_crash: TimeNs,
    next_incident: TimeNs,
    /// Per node, the last host number handed out in its pod subnet (`10.244.<node>.0/24`).
    next_host: Vec<u8>,
    ips_in_use: HashSet<Ipv4Addr>,
    stats: ClusterStats,
}

impl Cluster {
    /// A cluster as `spec` describes it; its initial objects are listed in the first tick.
    pub fn new(spec: ClusterSpec) -> Cluster {
        let mut rng = Rng::new(spec.seed);
        let start = spec.start_ns;
        let nodes = spec.nodes.max(1);
        let mut cluster = Cluster {
            node_names: (0..nodes).map(|n| format!("node-{n:03}")).collect(),
            kernel_seq: vec![0; nodes],
            kubelet_seq: vec![0; nodes],
            kube_seq: 0,
            next_pid: (0..nodes)
                .map(|_| 1_000 + rng.below(10_000) as u32)
                .collect(),
            deployments: Vec::new(),
            pods: HashMap::new(),
            live_pods: Vec::new(),
            processes: HashMap::new(),
            next_id: 1,
            queue: BinaryHeap::new(),
            order: 0,
            next_exec: start + rng.exp_ns(rate_mean(spec.exec_per_s)),
            next_oom: start + NS_PER_S + rng.exp_ns(rate_mean(spec.oom_per_s)),
            next_delete: start + NS_PER_S + rng.exp_ns(rate_mean(spec.pod_deletes_per_s)),
            next_rollout: start + NS_PER_S + rng.exp_ns(rate_mean(spec.rollouts_per_s)),
            next_connect: first_arrival(&mut rng, start, spec.connects_per_s),
            next_usage: first_arrival(&mut rng, start, spec.usage_crossings_per_s),
            next_crash: first_arrival(&mut rng, start, spec.restarts_per_s),
            next_incident: if spec.services && spec.incident_period_s > 0 {
                start
            } else {
                TimeNs::MAX
            },
            next_host: vec![1; nodes],
            ips_in_use: HashSet::new(),
            tick_end: start,
            rng,
            stats: ClusterStats::default(),
            spec,
        };
        cluster.initial_listing();
        cluster
    }

    /// What has been generated so far.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Event time up to which the stream is complete (the end of the last generated tick).
    pub fn event_time(&self) -> TimeNs {
        self.tick_end
    }

    /// Generates whole ticks into `out` until it holds at least `len` observations.
    pub fn fill(&mut self, out: &mut Vec<Observation>, len: usize) {
        while out.len() < len {
            self.tick(out);
        }
    }

    /// Generates one tick: its events in event-time order, then one heartbeat per source.
    pub fn tick(&mut self, out: &mut Vec<Observation>) {
        let end = self.tick_end + self.spec.tick_ms.max(1) * NS_PER_MS;
        self.spontaneous(end);
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.time > end {
                break;
            }
            let Some(Reverse(Scheduled { time, event, .. })) = self.queue.pop() else {
                break;
            };
            self.handle(time, event, out);
        }
        for node in 0..self.node_names.len() {
            for source in ["kernel", "kubelet"] {
                let beat = heartbeat(source, &self.node_names[node], end);
                self.push(out, beat);
            }
        }
        self.push(out, heartbeat("kubernetes", "cluster", end));
        self.tick_end = end;
        self.stats.ticks += 1;
    }

    fn push(&mut self, out: &mut Vec<Observation>, observation: Observation) {
        let stats = &mut self.stats;
        stats.observations += 1;
        match &observation {
            Observation::Fact(fact) => {
                stats.facts += 1;
                match &fact.payload {
                    FactPayload::ProcessExec(_) => stats.execs += 1,
                    FactPayload::OomKill(_) => stats.oom_kills += 1,
                    FactPayload::ContainerExit(exit) if exit.reason == "OOMKilled" => {
                        stats.oom_sequences += 1;
                    }
                    FactPayload::TcpConnect(connect) => {
                        stats.connects += 1;
                        if connect.outcome.is_failure() {
                            stats.failed_connects += 1;
                        }
                    }
                    FactPayload::TcpAccept(_) => stats.accepts += 1,
                    FactPayload::ResourceUsage(_) => stats.usage_crossings += 1,
                    FactPayload::ContainerReady(_) => stats.readiness_changes += 1,
                    _ => {}
                }
            }
            Observation::State(update) => {
                stats.state_updates += 1;
                if update.diff < 0 {
                    stats.retractions += 1;
                }
            }
            Observation::Heartbeat(_) => stats.heartbeats += 1,
        }
        out.push(observation);
    }

    fn schedule(&mut self, time: TimeNs, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled {
            time,
            order: self.order,
            event,
        }));
    }

    fn emit_at(&mut self, time: TimeNs, observation: Observation) {
        self.schedule(time, Event::Emit(Box::new(observation)));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Schedules the Poisson arrivals that fall into the tick ending at `end`.
    fn spontaneous(&mut self, end: TimeNs) {
        let spec = self.spec.clone();
        while self.next_exec <= end {
            self.schedule(self.next_exec, Event::SideExec);
            self.next_exec += self.rng.exp_ns(rate_mean(spec.exec_per_s)).max(1);
        }
        while self.next_oom <= end {
            self.schedule(self.next_oom, Event::Oom);
            self.next_oom += self.rng.exp_ns(rate_mean(spec.oom_per_s)).max(1);
        }
        while self.next_delete <= end {
            self.schedule(self.next_delete, Event::DeleteRandomPod);
            self.next_delete += self.rng.exp_ns(rate_mean(spec.pod_deletes_per_s)).max(1);
        }
        while self.next_rollout <= end {
            self.schedule(self.next_rollout, Event::Rollout);
            self.next_rollout += self.rng.exp_ns(rate_mean(spec.rollouts_per_s)).max(1);
        }
        self.spontaneous_network(end);
    }

    fn handle(&mut self, time: TimeNs, event: Event, out: &mut Vec<Observation>) {
        match event {
            Event::Emit(observation) => self.push(out, *observation),
            Event::SideExec => self.side_exec(time),
            Event::Oom => self.oom(time),
            Event::DeleteRandomPod => {
                if let Some(pod) = self.random_pod() {
                    self.delete_pod(time, pod, true);
                }
            }
            Event::Rollout => self.rollout(time),
            Event::ProcessExit(process) => {
                if let Some(process) = self.end_process(process) {
                    self.exit(time, process, 0);
                }
            }
            Event::ContainerStart {
                pod,
                container,
                incarnation,
            } => self.start_container(time, pod, container, incarnation),
            Event::CreatePod {
                deployment,
                replica_set,
            } => {
                self.stats.pods_created += 1;
                self.create_pod(time, deployment, replica_set);
            }
            Event::RemovePod(pod) => self.remove_pod(time, pod),
            Event::RolloutStep(deployment) => self.rollout_step(time, deployment),
            Event::RetireReplicaSets(deployment) => self.retire_replica_sets(time, deployment),
            other => self.handle_network(time, other),
        }
    }

    fn kube_record(&mut self, time: TimeNs, object: StateObject) -> StateRecord {
        kube_record(&mut self.kube_seq, time, object)
    }

    fn insert(&mut self, time: TimeNs, record: StateRecord) {
        self.emit_at(time, update(time, 1, record));
    }

    fn retract(&mut self, time: TimeNs, record: StateRecord) {
        self.emit_at(time, update(time, -1, record));
    }

    fn kernel_fact(&mut self, node: usize, time: TimeNs, payload: FactPayload) -> Observation {
        self.kernel_seq[node] += 1;
        Observation::Fact(Fact {
            id: FactId::new(
                "kernel",
                self.node_names[node].clone(),
                self.kernel_seq[node],
            ),
            time_ns: time,
            payload,
        })
    }

    fn initial_listing(&mut self) {
        let time = self.spec.start_ns + 1_000;
        let namespaces = self.spec.namespaces.max(1);
        for index in 0..self.spec.deployments {
            let namespace = format!("team-{:02}", index % namespaces);
            let name = format!("svc-{index:03}");
            let entity = EntityId::Deployment {
                namespace: namespace.clone().into(),
                name: name.clone().into(),
            };
            let uid = uid(&mut self.rng);
            let object = StateObject::Workload(WorkloadObject {
                entity,
                uid: uid.clone(),
                owner: None,
                node: None,
            });
            let record = self.kube_record(time, object);
            self.insert(time, record);
            let containers = match self.rng.below(10) {
                0..=5 => 1,
                6..=8 => 2,
                _ => 3,
            };
            let replicas = self.rng.between(1, self.spec.max_replicas.max(1) as u64) as usize;
            self.deployments.push(Deployment {
                namespace,
                name,
                uid,
                containers,
                replicas,
                replica_sets: Vec::new(),
                current: 0,
                pods: Vec::new(),
                rolling: false,
                service: None,
            });
            if self.spec.services {
                self.create_service(time, index);
            }
            let replica_set = self.new_replica_set(time, index);
            for _ in 0..replicas {
                self.create_pod(time, index, replica_set);
            }
        }
    }

    fn new_replica_set(&mut self, time: TimeNs, deployment: usize) -> u64 {
        let id = self.id();
        let hash = self.rng.name_suffix(10);
        let uid = uid(&mut self.rng);
        let d = &self.deployments[deployment];
        let entity = EntityId::ReplicaSet {
            namespace: d.namespace.clone().into(),
            name: format!("{}-{hash}", d.name).into(),
        };
        let object = StateObject::Workload(WorkloadObject {
            entity: entity.clone(),
            uid: uid.clone(),
            owner: Some(OwnerRef {
                entity: EntityId::Deployment {
                    namespace: d.namespace.clone().into(),
                    name: d.name.clone().into(),
                },
                uid: d.uid.clone(),
            }),
            node: None,
        });
        let record = self.kube_record(time, object);
        self.insert(time, record.clone());
        let d = &mut self.deployments[deployment];
        d.replica_sets.push(ReplicaSet {
            id,
            record,
            entity,
            uid,
            hash,
        });
        d.current = id;
        id
    }

    fn create_pod(&mut self, time: TimeNs, deployment: usize, replica_set: u64) {
        let suffix = self.rng.name_suffix(5);
        let pod_uid = uid(&mut self.rng);
        let node = self.rng.below(self.node_names.len() as u64) as usize;
        let d = &self.deployments[deployment];
        let Some(rs) = d.replica_sets.iter().find(|rs| rs.id == replica_set) else {
            return;
        };
        let entity = EntityId::Pod {
            namespace: d.namespace.clone().into(),
            name: format!("{}-{}-{suffix}", d.name, rs.hash).into(),
        };
        let object = StateObject::Workload(WorkloadObject {
            entity: entity.clone(),
            uid: pod_uid.clone(),
            owner: Some(OwnerRef {
                entity: rs.entity.clone(),
                uid: rs.uid.clone(),
            }),
            node: None,
        });
        let containers = d.containers;
        let record = self.kube_record(time, object);
        self.insert(time, record.clone());
        let id = self.id();
        let pod = Pod {
            deployment,
            replica_set,
            entity,
            uid: pod_uid,
            node,
            record,
            containers: (0..containers)
                .map(|index| Container {
                    name: CONTAINER_NAMES[index % CONTAINER_NAMES.len()],
                    id: String::new(),
                    record: None,
                    running: false,
                    incarnation: 0,
                    restarts: 0,
                    main: None,
                    processes: Vec::new(),
                    ready: false,
                })
                .collect(),
            terminating: false,
            ip: None,
            endpoint: None,
        };
        self.pods.insert(id, pod);
        self.live_pods.push(id);
        self.deployments[deployment].pods.push(id);
        if self.spec.services {
            self.assign_ip(time, id);
        }
        for container in 0..containers {
            let start = time + self.rng.between(500, 2_000) * NS_PER_MS;
            self.schedule(
                start,
                Event::ContainerStart {
                    pod: id,
                    container,
                    incarnation: 0,
                },
            );
        }
    }

    /// Starts (or restarts) a container: a new runtime id, its status record, its main process.
    fn start_container(&mut self, time: TimeNs, pod: u64, container: usize, incarnation: u32) {
        let new_id = self.rng.hex(64);
        let Some(p) = self.pods.get_mut(&pod) else {
            return;
        };
        if p.terminating {
            return;
        }
        let c = &mut p.containers[container];
        if c.incarnation != incarnation || c.running {
            return;
        }
        let old = c.record.take();
        c.id = new_id.clone();
        c.running = true;
        let object = StateObject::PodContainer(PodContainer {
            pod: p.entity.clone(),
            pod_uid: p.uid.clone(),
            container_name: c.name.to_string(),
            container_id: new_id.as_str().into(),
        });
        let node = p.node;
        let comm = self.deployments[p.deployment].name.clone();
        if let Some(old) = old {
            self.retract(time, old);
        }
        let record = self.kube_record(time, object);
        self.insert(time, record.clone());
        if let Some(p) = self.pods.get_mut(&pod) {
            p.containers[container].record = Some(record);
        }
        let exec_time = time + self.rng.between(1, 20) * NS_PER_MS;
        let main = self.exec(
            exec_time,
            pod,
            container,
            node,
            (comm, "/usr/local/bin/server".into(), vec!["server".into()]),
        );
        if let Some(p) = self.pods.get_mut(&pod) {
            p.containers[container].main = Some(main);
        }
        if self.spec.services {
            let at = time + self.rng.between(800, 2_000) * NS_PER_MS;
            self.schedule(
                at,
                Event::ContainerReady {
                    pod,
                    container,
                    incarnation,
                },
            );
        }
    }

    /// Emits the exec of a new process in a running container; returns the process's id.
    fn exec(
        &mut self,
        time: TimeNs,
        pod: u64,
        container: usize,
        node: usize,
        (comm, filename, args): (String, String, Vec<String>),
    ) -> u64 {
        let pid = self.next_pid[node];
        self.next_pid[node] = if pid >= 4_194_000 { 300 } else { pid + 1 };
        let start_ns = time.saturating_sub(self.rng.between(10_000, 200_000));
        let container_id = self
            .pods
            .get(&pod)
            .map(|p| p.containers[container].id.clone())
            .unwrap_or_default();
        let payload = exec_payload(
            pid,
            start_ns,
            (comm.clone(), filename.clone(), args),
            &container_id,
        );
        let fact = self.kernel_fact(node, time, payload);
        self.emit_at(time, fact);
        self.kernel_seq[node] += 1;
        let membership = membership(
            &self.node_names[node],
            self.kernel_seq[node],
            time,
            (pid, start_ns),
            &container_id,
            filename,
        );
        self.insert(time, membership.clone());
        let id = self.id();
        self.processes.insert(
            id,
            Process {
                node,
                pid,
                start_ns,
                comm,
                container_id,
                pod,
                container,
                membership,
            },
        );
        if let Some(p) = self.pods.get_mut(&pod) {
            p.containers[container].processes.push(id);
        }
        id
    }

    fn random_pod(&mut self) -> Option<u64> {
        if self.live_pods.is_empty() {
            return None;
        }
        let index = self.rng.below(self.live_pods.len() as u64) as usize;
        Some(self.live_pods[index])
    }

    /// A random running container: (pod, container index).
    fn random_container(&mut self) -> Option<(u64, usize)> {
        for _ in 0..8 {
            let pod = self.random_pod()?;
            let p = &self.pods[&pod];
            let container = self.rng.below(p.containers.len() as u64) as usize;
            if !p.terminating && p.containers[container].running {
                return Some((pod, container));
            }
        }
        None
    }

    fn side_exec(&mut self, time: TimeNs) {
        let Some((pod, container)) = self.random_container() else {
            return;
        };
        let node = self.pods[&pod].node;
        let (comm, filename, args) =
            SIDE_COMMANDS[self.rng.below(SIDE_COMMANDS.len() as u64) as usize];
        let process = self.exec(
            time,
            pod,
            container,
            node,
            (
                comm.into(),
                filename.into(),
                args.iter().map(|arg| (*arg).to_string()).collect(),
            ),
        );
        let life = self
            .rng
            .exp_ns(self.spec.process_life_ms * NS_PER_MS as f64)
            .clamp(NS_PER_MS, 60 * NS_PER_S);
        self.schedule(time + life, Event::ProcessExit(process));
    }

    /// Forgets a process; returns it if it was still running.
    fn end_process(&mut self, id: u64) -> Option<Process> {
        let process = self.processes.remove(&id)?;
        if let Some(p) = self.pods.get_mut(&process.pod) {
            p.containers[process.container]
                .processes
                .retain(|other| *other != id);
        }
        Some(process)
    }

    /// Emits a process's exit (on `signal`, or code 0) and the retraction of its membership.
    fn exit(&mut self, time: TimeNs, process: Process, signal: u32) {
        let payload = exit_payload(
            (process.pid, process.start_ns),
            process.comm.clone(),
            signal,
            &process.container_id,
        );
        let exit = self.kernel_fact(process.node, time, payload);
        self.emit_at(time, exit);
        self.retract(time, process.membership);
    }

    /// Stops every process of a container on `signal`, within 50 ms of `time`.
    fn kill_processes(&mut self, time: TimeNs, pod: u64, container: usize, signal: u32) {
        let Some(p) = self.pods.get_mut(&pod) else {
            return;
        };
        let c = &mut p.containers[container];
        c.running = false;
        c.main = None;
        let processes = std::mem::take(&mut c.processes);
        for id in processes {
            if let Some(process) = self.processes.remove(&id) {
                let at = time + self.rng.between(1, 50) * NS_PER_MS;
                self.exit(at, process, signal);
            }
        }
    }

    fn container_exit(
        &mut self,
        time: TimeNs,
        pod: u64,
        container: usize,
        (exit_code, reason): (i32, &str),
    ) {
        let Some(p) = self.pods.get_mut(&pod) else {
            return;
        };
        let node = p.node;
        let pod_entity = p.entity.clone();
        let c = &mut p.containers[container];
        // Every end but a deletion's is followed by a restart.
        if reason != "Completed" {
            c.restarts += 1;
        }
        let payload = FactPayload::ContainerExit(ContainerExit {
            container_id: c.id.as_str().into(),
            container_name: c.name.to_string(),
            pod: Some(pod_entity),
            exit_code,
            reason: reason.to_string(),
            restart_count: c.restarts,
        });
        self.kubelet_seq[node] += 1;
        let fact = Observation::Fact(Fact {
            id: FactId::new(
                "kubelet",
                self.node_names[node].clone(),
                self.kubelet_seq[node],
            ),
            time_ns: time,
            payload,
        });
        self.emit_at(time, fact);
    }

    fn oom(&mut self, time: TimeNs) {
        let Some((pod, container)) = self.random_container() else {
            return;
        };
        self.oom_kill(time, pod, container);
    }

    /// The OOM killer ends the main process of a running container: kill, exit on signal 9,
    /// the container's exit (137, `OOMKilled`), not ready, restart 10 s later. Returns the
    /// container's exit time, or `None` when it had no main process.
    fn oom_kill(&mut self, time: TimeNs, pod: u64, container: usize) -> Option<TimeNs> {
        let main = self.pods.get(&pod)?.containers[container].main?;
        let victim = self.end_process(main)?;
        let p = &self.pods[&pod];
        let memcg = format!("/kubepods/burstable/pod{}/{}", p.uid, victim.container_id);
        let pod_uid = p.uid.clone();
        let rss_pages = self.rng.between(50_000, 500_000);
        let kill = self.kernel_fact(
            victim.node,
            time,
            FactPayload::OomKill(OomKill {
                pid: victim.pid,
                start_ns: victim.start_ns,
                comm: victim.comm.clone(),
                container_id: Some(victim.container_id.as_str().into()),
                pod_uid: Some(pod_uid),
                memcg,
                rss_pages,
            }),
        );
        self.emit_at(time, kill);
        let at = time + self.rng.between(1, 50) * NS_PER_MS;
        self.exit(at, victim, 9);
        self.kill_processes(time, pod, container, 9);
        let stop = time + self.rng.between(100, 400) * NS_PER_MS;
        self.container_exit(stop, pod, container, (137, "OOMKilled"));
        if self.spec.services {
            self.not_ready(stop, pod, container);
        }
        let incarnation = {
            let c = &mut self.pods.get_mut(&pod).expect("pod exists").containers[container];
            c.incarnation += 1;
            c.incarnation
        };
        // CrashLoopBackOff's first delay.
        self.schedule(
            time + 10 * NS_PER_S,
            Event::ContainerStart {
                pod,
                container,
                incarnation,
            },
        );
        Some(stop)
    }

    /// Deletes a pod: its containers stop, its records are retracted 1.5 s later; with
    /// `replace`, its ReplicaSet's controller creates a replacement.
    fn delete_pod(&mut self, time: TimeNs, pod: u64, replace: bool) {
        let Some(p) = self.pods.get_mut(&pod) else {
            return;
        };
        if p.terminating {
            return;
        }
        p.terminating = true;
        let endpoint = p.endpoint.take();
        let deployment = p.deployment;
        let containers = p.containers.len();
        // The EndpointSlice drops a terminating pod at once.
        if let Some(endpoint) = endpoint {
            self.retract(time, endpoint);
        }
        self.live_pods.retain(|other| *other != pod);
        self.stats.pods_deleted += 1;
        for container in 0..containers {
            let running = self.pods[&pod].containers[container].running;
            if running {
                let at = time + self.rng.between(10, 500) * NS_PER_MS;
                self.kill_processes(at, pod, container, 15);
                let stop = at + self.rng.between(50, 500) * NS_PER_MS;
                self.container_exit(stop, pod, container, (0, "Completed"));
            }
        }
        self.schedule(time + 1_500 * NS_PER_MS, Event::RemovePod(pod));
        if replace {
            let replica_set = self.deployments[deployment].current;
            let at = time + self.rng.between(5, 1_000) * NS_PER_MS;
            self.schedule(
                at,
                Event::CreatePod {
                    deployment,
                    replica_set,
                },
            );
        }
    }

    fn remove_pod(&mut self, time: TimeNs, pod: u64) {
        let Some(mut p) = self.pods.remove(&pod) else {
            return;
        };
        for container in &mut p.containers {
            for id in std::mem::take(&mut container.processes) {
                if let Some(process) = self.processes.remove(&id) {
                    self.retract(time, process.membership);
                }
            }
            if let Some(record) = container.record.take() {
                self.retract(time, record);
            }
        }
        if let Some(endpoint) = p.endpoint.take() {
            self.retract(time, endpoint);
        }
        if let Some(ip) = p.ip {
            self.ips_in_use.remove(&ip);
        }
        self.retract(time, p.record);
        self.deployments[p.deployment]
            .pods
            .retain(|other| *other != pod);
    }

    fn rollout(&mut self, time: TimeNs) {
        if self.deployments.is_empty() {
            return;
        }
        let deployment = self.rng.below(self.deployments.len() as u64) as usize;
        if self.deployments[deployment].rolling {
            return;
        }
        self.stats.rollouts += 1;
        self.new_replica_set(time, deployment);
        self.deployments[deployment].rolling = true;
        self.schedule(time + NS_PER_S, Event::RolloutStep(deployment));
    }

    fn rollout_step(&mut self, time: TimeNs, deployment: usize) {
        let d = &self.deployments[deployment];
        let current = d.current;
        let old = d.pods.iter().copied().find(|pod| {
            self.pods
                .get(pod)
                .is_some_and(|p| p.replica_set != current && !p.terminating)
        });
        match old {
            Some(pod) => {
                self.stats.pods_created += 1;
                self.create_pod(time, deployment, current);
                self.delete_pod(time + 200 * NS_PER_MS, pod, false);
                let next = time + self.rng.between(1_000, 3_000) * NS_PER_MS;
                self.schedule(next, Event::RolloutStep(deployment));
            }
            None => {
                // Top up to the desired replica count (deletions may have raced the rollout).
                let replicas = d.replicas;
                let live = d
                    .pods
                    .iter()
                    .filter(|pod| self.pods.get(pod).is_some_and(|p| !p.terminating))
                    .count();
                for _ in live..replicas {
                    self.stats.pods_created += 1;
                    self.create_pod(time, deployment, current);
                }
                self.schedule(time + 5 * NS_PER_S, Event::RetireReplicaSets(deployment));
            }
        }
    }

    fn retire_replica_sets(&mut self, time: TimeNs, deployment: usize) {
        let d = &mut self.deployments[deployment];
        let current = d.current;
        let in_use: Vec<u64> = d
            .pods
            .iter()
            .filter_map(|pod| self.pods.get(pod).map(|p| p.replica_set))
            .collect();
        let (keep, retire): (Vec<ReplicaSet>, Vec<ReplicaSet>) =
            std::mem::take(&mut d.replica_sets)
                .into_iter()
                .partition(|rs| rs.id == current || in_use.contains(&rs.id));
        d.replica_sets = keep;
        d.rolling = false;
        for rs in retire {
            self.retract(time, rs.record);
        }
    }
}

fn uid(rng: &mut Rng) -> String {
    let hex = rng.hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The first Poisson arrival after `start` at `per_s`, or never when the rate is not positive
/// (drawing nothing, so that a stream without the feature is the stream it always was).
fn first_arrival(rng: &mut Rng, start: TimeNs, per_s: f64) -> TimeNs {
    if per_s > 0.0 {
        start + NS_PER_S + rng.exp_ns(rate_mean(per_s))
    } else {
        TimeNs::MAX
    }
}

fn rate_mean(per_s: f64) -> f64 {
    if per_s > 0.0 {
        NS_PER_S as f64 / per_s
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_in_any_chunking() {
        let mut whole = Cluster::new(ClusterSpec::default());
        let mut all = Vec::new();
        whole.fill(&mut all, 50_000);
        let mut chunked = Cluster::new(ClusterSpec::default());
        let mut parts = Vec::new();
        while parts.len() < all.len() {
            let mut chunk = Vec::new();
            chunked.fill(&mut chunk, 7_000);
            parts.extend(chunk);
        }
        parts.truncate(all.len());
        assert_eq!(all, parts);
    }

    #[test]
    fn same_seed_same_stream_with_incidents() {
        let mut whole = Cluster::new(ClusterSpec::with_incidents());
        let mut all = Vec::new();
        whole.fill(&mut all, 120_000);
        let mut chunked = Cluster::new(ClusterSpec::with_incidents());
        let mut parts = Vec::new();
        while parts.len() < all.len() {
            let want = parts.len() + 9_000;
            chunked.fill(&mut parts, want);
        }
        parts.truncate(all.len());
        assert_eq!(all, parts);
    }

    #[test]
    fn retractions_match_inserts_and_times_do_not_go_back() {
        for spec in [ClusterSpec::default(), ClusterSpec::with_incidents()] {
            churning(spec);
        }
    }

    fn churning(spec: ClusterSpec) {
        let mut cluster = Cluster::new(ClusterSpec {
            pod_deletes_per_s: 5.0,
            rollouts_per_s: 0.5,
            oom_per_s: 5.0,
            ..spec
        });
        let mut out = Vec::new();
        cluster.fill(&mut out, 300_000);
        let mut live = std::collections::HashSet::new();
        let mut last_beat = 0;
        for observation in &out {
            match observation {
                Observation::State(update) if update.diff > 0 => {
                    assert!(live.insert(update.record.clone()));
                }
                Observation::State(update) => assert!(live.remove(&update.record)),
                Observation::Heartbeat(beat) => last_beat = beat.upto_ns,
                Observation::Fact(_) => {}
            }
            assert!(observation.time_ns() >= last_beat);
        }
        let stats = cluster.stats();
        assert!(stats.oom_sequences > 0 && stats.pods_deleted > 0 && stats.rollouts > 0);
    }
}
