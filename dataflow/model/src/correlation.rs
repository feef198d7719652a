//! What the dataflow concludes: correlations with evidence chains.
//!
//! A correlation is typed data only: its family and kind, its root cause, its chain of hops
//! (each an entity, how it relates to the hop before, and the observation behind it), a typed
//! detail and a confidence with its basis. Nothing in it is prose: the sentences people read
//! are rendered from it where they are shown ([`crate::render`]), so rewording a message never
//! changes a correlation's identity, its graph id or its place in a diff.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entity::EntityId;
use crate::observation::{
    CniCommand, ConditionStatus, ConnectOutcome, DnsOutcome, EtcdOperation, EventType, FactId,
    FactPayload, FileOp, Resource, RuntimeObject, RuntimeState, UnitExit, UnitState,
};
use crate::time::TimeNs;

/// The five families of correlation rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Facts that cluster in time: bursts, loops, co-occurrence.
    Temporal,
    /// Steps that follow one another on shared entities within a bound.
    Sequence,
    /// Who owns what: process → container → pod → controller.
    Ownership,
    /// Who depends on whom: the service graph and what a failure reaches along it.
    Dependency,
    /// Exhaustion of a resource and its spread.
    Performance,
}

impl Family {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Temporal => "temporal",
            Family::Sequence => "sequence",
            Family::Ownership => "ownership",
            Family::Dependency => "dependency",
            Family::Performance => "performance",
        }
    }
}

/// Which rule produced a correlation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationKind {
    /// An entity's chain of owners, e.g. container → pod → ReplicaSet → Deployment.
    Ownership,
    /// A kernel OOM kill that ended a process and, with it, its container.
    OomRestart,
    /// A sequence declared in the configuration (`correlation.sequences`) matched.
    DeclaredSequence,
    /// A Deployment's new ReplicaSet whose pods fail while the previous ReplicaSet's were ready.
    BadRollout,
    /// One entity of the service graph depends on another: a pod connected to a Service or a
    /// pod behind it, or a Service routes to a pod.
    ServiceDependency,
    /// A failed entity's dependent, reached along the service graph.
    BlastRadius,
    /// A burst of failed DNS lookups from a pod, the connection errors that followed, and the
    /// DNS server's failure behind them when it was observed.
    DnsFailure,
    /// A pod's container that keeps ending: each exit within a bound of the one before, at
    /// least a threshold number of times.
    RestartLoop,
    /// Many facts of one kind about one subject in quick succession: failed connects to one
    /// endpoint, Warning Events of one reason on one object.
    Burst,
    /// Containers of several pods on one node ending together: a node-wide cause such as a
    /// container runtime or kubelet restart.
    CoOccurrence,
    /// A container's memory use crossed its limit share, then the OOM killer ended it.
    MemoryExhaustion,
    /// A node came under pressure (memory, disk, PIDs) and the kubelet evicted pods from it.
    NodePressureEviction,
    /// A configuration file on a node changed, then containers of several pods on that node
    /// ended together.
    ConfigChangeRestart,
    /// etcd was slow, unavailable or changed leader, then Kubernetes reported a write that
    /// failed or stalled (a Warning Event of a configured reason).
    EtcdSlowdown,
    /// A pod's network setup (its sandbox's CNI ADD) failed and has not succeeded since: the
    /// pod is left without network.
    PodNetworkFailure,
}

impl CorrelationKind {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationKind::Ownership => "ownership",
            CorrelationKind::OomRestart => "oom_restart",
            CorrelationKind::DeclaredSequence => "declared_sequence",
            CorrelationKind::BadRollout => "bad_rollout",
            CorrelationKind::ServiceDependency => "service_dependency",
            CorrelationKind::BlastRadius => "blast_radius",
            CorrelationKind::DnsFailure => "dns_failure",
            CorrelationKind::RestartLoop => "restart_loop",
            CorrelationKind::Burst => "burst",
            CorrelationKind::CoOccurrence => "co_occurrence",
            CorrelationKind::MemoryExhaustion => "memory_exhaustion",
            CorrelationKind::NodePressureEviction => "node_pressure_eviction",
            CorrelationKind::ConfigChangeRestart => "config_change_restart",
            CorrelationKind::EtcdSlowdown => "etcd_slowdown",
            CorrelationKind::PodNetworkFailure => "pod_network_failure",
        }
    }

    /// The family the kind belongs to.
    pub fn family(self) -> Family {
        match self {
            CorrelationKind::Ownership => Family::Ownership,
            CorrelationKind::OomRestart => Family::Sequence,
            CorrelationKind::DeclaredSequence => Family::Sequence,
            CorrelationKind::BadRollout => Family::Sequence,
            CorrelationKind::ConfigChangeRestart => Family::Sequence,
            CorrelationKind::EtcdSlowdown => Family::Sequence,
            CorrelationKind::PodNetworkFailure => Family::Sequence,
            CorrelationKind::ServiceDependency | CorrelationKind::BlastRadius => Family::Dependency,
            CorrelationKind::DnsFailure => Family::Dependency,
            CorrelationKind::RestartLoop
            | CorrelationKind::Burst
            | CorrelationKind::CoOccurrence => Family::Temporal,
            CorrelationKind::MemoryExhaustion | CorrelationKind::NodePressureEviction => {
                Family::Performance
            }
        }
    }
}

/// How a hop relates to the hop before it in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The first hop: the chain starts here.
    Start,
    /// The previous hop's entity is owned by this hop's entity.
    OwnedBy,
    /// The previous hop's entity caused what this hop observes.
    Caused,
    /// This hop's observation followed the previous one on the same entity.
    FollowedBy,
    /// The previous hop's entity depends on this hop's entity.
    DependsOn,
    /// This hop's entity depends on the previous hop's entity, and a failure of that one
    /// reached it: [`Relation::DependsOn`] read in the causal direction.
    Affects,
}

impl Relation {
    /// Every relation that joins two hops (all but [`Relation::Start`]).
    pub const LINKS: [Relation; 5] = [
        Relation::OwnedBy,
        Relation::Caused,
        Relation::FollowedBy,
        Relation::DependsOn,
        Relation::Affects,
    ];

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Start => "start",
            Relation::OwnedBy => "owned_by",
            Relation::Caused => "caused",
            Relation::FollowedBy => "followed_by",
            Relation::DependsOn => "depends_on",
            Relation::Affects => "affects",
        }
    }
}

/// What the observation behind a hop says, as typed data. The text people read is rendered
/// from it ([`crate::render::describe_hop`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// The kernel OOM killer chose the process.
    OomKill {
        /// Command name.
        comm: Arc<str>,
        /// Thread-group id.
        pid: u32,
        /// Memory cgroup path the kill was charged to (empty: the root).
        memcg: Arc<str>,
        /// Resident pages at the kill.
        rss_pages: u64,
    },
    /// The process exited.
    ProcessExit {
        /// Command name.
        comm: Arc<str>,
        /// Exit code (0 when it ended on a signal).
        exit_code: i32,
        /// Terminating signal, 0 if none.
        signal: u32,
    },
    /// The container exited.
    ContainerExit {
        /// Container name in the pod spec.
        container_name: Arc<str>,
        /// Exit code.
        exit_code: i32,
        /// Reason the runtime gave, e.g. `OOMKilled`.
        reason: Arc<str>,
        /// Restarts so far.
        restart_count: u32,
    },
    /// A Kubernetes object names its controlling owner.
    OwnerReference,
    /// The pod's status lists the container.
    PodContainer {
        /// Container name in the pod spec.
        container_name: Arc<str>,
    },
    /// The node agent saw the process run in the container.
    ProcessInContainer {
        /// The executable.
        filename: Arc<str>,
    },
    /// The process called execve.
    ProcessExec {
        /// Command name after the exec.
        comm: Arc<str>,
        /// The executed file.
        filename: Arc<str>,
    },
    /// The process created a child process.
    ProcessFork {
        /// Command name.
        comm: Arc<str>,
    },
    /// A Kubernetes Event about the entity.
    KubeEvent {
        /// Machine-readable reason, e.g. `BackOff`, `Unhealthy`, `Evicted`.
        reason: Arc<str>,
        /// `Normal` or `Warning`.
        event_type: EventType,
        /// How many times Kubernetes saw it.
        count: u32,
    },
    /// An outgoing TCP connection attempt ended.
    TcpConnect {
        /// The address connected to, `ip:port`.
        remote: Arc<str>,
        /// How it ended.
        outcome: ConnectOutcome,
        /// Time from the attempt to its outcome, ns.
        latency_ns: u64,
    },
    /// An incoming TCP connection was established.
    TcpAccept {
        /// The peer, `ip:port`.
        remote: Arc<str>,
    },
    /// A TCP connection closed.
    TcpClose {
        /// The peer, `ip:port`.
        remote: Arc<str>,
        /// Whether it ended with a reset.
        reset: bool,
        /// Segments retransmitted over its life.
        retransmits: u32,
    },
    /// A TCP connection retransmitted segments.
    TcpRetransmit {
        /// The peer, `ip:port`.
        remote: Arc<str>,
        /// Retransmissions counted.
        count: u32,
    },
    /// Opening a file failed.
    FileOpenFailed {
        /// The path.
        path: Arc<str>,
        /// The error number (2: missing, 13: not allowed).
        errno: i32,
    },
    /// A file was unlinked or renamed.
    FileChanged {
        /// The path.
        path: Arc<str>,
        /// Unlink or rename.
        op: FileOp,
    },
    /// A container's readiness changed.
    ContainerReady {
        /// Container name in the pod spec.
        container_name: Arc<str>,
        /// Whether it is ready now.
        ready: bool,
        /// The pod's restart count for the container.
        restart_count: u32,
    },
    /// A container's use of a resource crossed the configured share of its limit.
    ResourceUsage {
        /// Container name in the pod spec.
        container_name: Arc<str>,
        /// Which resource.
        resource: Resource,
        /// Use, in the resource's unit (bytes, nanocores).
        used: u64,
        /// The container's limit, same unit.
        limit: u64,
        /// `true`: rose to or above the share; `false`: fell back below it.
        above: bool,
    },
    /// A DNS lookup ended.
    DnsQuery {
        /// The queried name.
        name: Arc<str>,
        /// The query type (1 = A, 28 = AAAA, ...).
        qtype: u16,
        /// The server asked, `ip:port`.
        server: Arc<str>,
        /// How it ended.
        outcome: DnsOutcome,
        /// Time from the query to the response or the timeout, ns.
        latency_ns: u64,
    },
    /// A systemd unit changed state.
    UnitChange {
        /// What happened to it.
        state: UnitState,
        /// systemd's result (empty when it gave none).
        result: Arc<str>,
        /// How its process ended just before, when systemd logged it.
        exit: Option<UnitExit>,
    },
    /// A sandbox or container of the container runtime changed.
    RuntimeChange {
        /// Sandbox or container.
        object: RuntimeObject,
        /// What happened.
        state: RuntimeState,
        /// Container name in the pod spec (empty for a sandbox).
        container_name: Arc<str>,
        /// Exit code for `exited`, 0 otherwise.
        exit_code: i32,
        /// The runtime's reason for `exited` (`OOMKilled`, ...), empty otherwise.
        reason: Arc<str>,
    },
    /// A CNI operation on a pod's network ended.
    CniOperation {
        /// Which operation.
        command: CniCommand,
        /// The network configuration's name.
        network: Arc<str>,
        /// The addresses it assigned (ADD), without prefix lengths.
        ips: Vec<Arc<str>>,
        /// The failing plugin's `type` and message, when it failed.
        error: Option<(Arc<str>, Arc<str>)>,
        /// How long it took, ns.
        duration_ns: u64,
    },
    /// One of a Service's endpoints became ready or stopped being ready (EndpointSlice).
    EndpointReady {
        /// The endpoint, `ip:port`.
        address: Arc<str>,
        /// Whether it is ready now.
        ready: bool,
    },
    /// A node condition holds a status (`MemoryPressure` `True`, ...).
    NodeCondition {
        /// The condition type, e.g. `MemoryPressure`.
        condition: Arc<str>,
        /// Its status.
        status: ConditionStatus,
        /// The reason Kubernetes gave.
        reason: Arc<str>,
    },
    /// A key of the Kubernetes keyspace in etcd changed.
    EtcdKeyChange {
        /// The resource, e.g. `pods`.
        resource: Arc<str>,
        /// The namespace (empty: cluster-scoped).
        namespace: Arc<str>,
        /// The object's name.
        name: Arc<str>,
        /// What happened.
        operation: EtcdOperation,
        /// The etcd revision.
        revision: i64,
    },
    /// A probe of an etcd endpoint.
    EtcdStatus {
        /// Whether it answered.
        healthy: bool,
        /// Time a linearizable read took, ns.
        latency_ns: u64,
        /// Its leader (0: none).
        leader: u64,
    },
    /// An etcd endpoint reported a new leader.
    EtcdLeaderChange {
        /// The previous leader (0: none).
        previous: u64,
        /// The leader now (0: none).
        leader: u64,
        /// The raft term now.
        raft_term: u64,
    },
    /// An etcd cluster's history was compacted.
    EtcdCompaction {
        /// Revisions before this one are gone.
        revision: i64,
    },
}

impl Observed {
    /// What a fact of any kind says, as hop evidence.
    pub fn of_fact(payload: &FactPayload) -> Observed {
        let text = |value: &str| -> Arc<str> { value.into() };
        let address = |value: &std::net::SocketAddr| -> Arc<str> { value.to_string().into() };
        match payload {
            FactPayload::ProcessExec(exec) => Observed::ProcessExec {
                comm: text(&exec.comm),
                filename: text(&exec.filename),
            },
            FactPayload::ProcessExit(exit) => Observed::ProcessExit {
                comm: text(&exit.comm),
                exit_code: exit.exit_code,
                signal: exit.signal,
            },
            FactPayload::OomKill(kill) => Observed::OomKill {
                comm: text(&kill.comm),
                pid: kill.pid,
                memcg: text(&kill.memcg),
                rss_pages: kill.rss_pages,
            },
            FactPayload::ContainerExit(exit) => Observed::ContainerExit {
                container_name: text(&exit.container_name),
                exit_code: exit.exit_code,
                reason: text(&exit.reason),
                restart_count: exit.restart_count,
            },
            FactPayload::KubeEvent(event) => Observed::KubeEvent {
                reason: text(&event.reason),
                event_type: event.event_type,
                count: event.count,
            },
            FactPayload::ProcessFork(fork) => Observed::ProcessFork {
                comm: text(&fork.comm),
            },
            FactPayload::TcpConnect(connect) => Observed::TcpConnect {
                remote: address(&connect.remote),
                outcome: connect.outcome,
                latency_ns: connect.latency_ns,
            },
            FactPayload::TcpAccept(accept) => Observed::TcpAccept {
                remote: address(&accept.remote),
            },
            FactPayload::TcpClose(close) => Observed::TcpClose {
                remote: address(&close.remote),
                reset: close.reset,
                retransmits: close.retransmits,
            },
            FactPayload::TcpRetransmit(retransmit) => Observed::TcpRetransmit {
                remote: address(&retransmit.remote),
                count: retransmit.count,
            },
            FactPayload::FileOpenFailed(failed) => Observed::FileOpenFailed {
                path: text(&failed.path),
                errno: failed.errno,
            },
            FactPayload::FileChanged(changed) => Observed::FileChanged {
                path: text(&changed.path),
                op: changed.op,
            },
            FactPayload::ContainerReady(ready) => Observed::ContainerReady {
                container_name: text(&ready.container_name),
                ready: ready.ready,
                restart_count: ready.restart_count,
            },
            FactPayload::ResourceUsage(usage) => Observed::ResourceUsage {
                container_name: text(&usage.container_name),
                resource: usage.resource,
                used: usage.used,
                limit: usage.limit,
                above: usage.above,
            },
            FactPayload::DnsQuery(query) => Observed::DnsQuery {
                name: text(&query.name),
                qtype: query.qtype,
                server: address(&query.server),
                outcome: query.outcome,
                latency_ns: query.latency_ns,
            },
            FactPayload::UnitChange(change) => Observed::UnitChange {
                state: change.state,
                result: text(&change.result),
                exit: change.exit.clone(),
            },
            FactPayload::RuntimeChange(change) => Observed::RuntimeChange {
                object: change.object,
                state: change.state,
                container_name: text(&change.container_name),
                exit_code: change.exit_code,
                reason: text(&change.reason),
            },
            FactPayload::EtcdKeyChange(change) => Observed::EtcdKeyChange {
                resource: text(&change.resource),
                namespace: text(&change.namespace),
                name: text(&change.name),
                operation: change.operation,
                revision: change.revision,
            },
            FactPayload::EtcdStatus(status) => Observed::EtcdStatus {
                healthy: status.healthy,
                latency_ns: status.latency_ns,
                leader: status.leader,
            },
            FactPayload::EtcdLeaderChange(change) => Observed::EtcdLeaderChange {
                previous: change.previous,
                leader: change.leader,
                raft_term: change.raft_term,
            },
            FactPayload::EtcdCompaction(compaction) => Observed::EtcdCompaction {
                revision: compaction.revision,
            },
            FactPayload::CniOperation(operation) => Observed::CniOperation {
                command: operation.command,
                network: text(&operation.network),
                ips: operation
                    .ips
                    .iter()
                    .map(|ip| text(ip.address.split('/').next().unwrap_or_default()))
                    .collect(),
                error: operation
                    .error
                    .as_ref()
                    .map(|error| (text(&error.plugin), text(&error.message))),
                duration_ns: operation.duration_ns,
            },
        }
    }
}

/// One step of an evidence chain: an entity, how it relates to the step before, and the
/// observation that supports that.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hop {
    /// The entity at this step.
    pub entity: EntityId,
    /// How this step relates to the previous one ([`Relation::Start`] for the first).
    pub relation: Relation,
    /// The observation that supports this step.
    pub fact_id: FactId,
    /// Event time of that observation, ns since the Unix epoch.
    pub time: TimeNs,
    /// What the observation says.
    pub observed: Observed,
}

/// Typed facts about a correlation, per family.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// An ownership chain.
    Ownership {
        /// Owners above the entity the chain starts at.
        depth: u32,
    },
    /// A sequence of steps.
    Sequence {
        /// Steps matched.
        steps: u32,
        /// Time from the first step to the last, ns.
        span_ns: u64,
        /// The bound the steps had to fall within, ns.
        within_ns: u64,
    },
    /// A declared sequence (`correlation.sequences`) that matched.
    DeclaredSequence {
        /// The sequence's name.
        name: Arc<str>,
        /// Its steps' observation kinds, in order (`oom_kill`, `process_exit`, ...).
        steps: Vec<Arc<str>>,
        /// Time from the first step to the last, ns.
        span_ns: u64,
        /// The bound every step had to fall within, ns.
        within_ns: u64,
    },
    /// A rollout whose new pods failed.
    BadRollout {
        /// The Deployment rolled out.
        deployment: EntityId,
        /// The ReplicaSet it replaced, whose pods were ready.
        previous: EntityId,
        /// New pods with a failure.
        failed_pods: u32,
        /// Time from the new ReplicaSet's appearance to the first failure, ns.
        after_ns: u64,
    },
    /// An edge of the service graph.
    Dependency {
        /// How the address connected to was resolved to the entity depended on.
        via: Resolution,
        /// The record that resolved it (the EndpointSlice or Service record).
        resolved_by: FactId,
        /// How long the edge lasts without traffic, ns.
        window_ns: u64,
    },
    /// A dependent that a failure reaches.
    BlastRadius {
        /// What failed: the kind of the correlation that says so, or `None` when the failure
        /// is a Service endpoint that stopped being ready.
        failure: Option<CorrelationKind>,
        /// The entity that failed, where the dependency path starts.
        failed: EntityId,
        /// Dependency edges from the failed entity to the dependent.
        depth: u32,
        /// Whether the dependent's own connects show the failure.
        impact: Impact,
    },
    /// A pod's failed network setup.
    PodNetwork {
        /// Failed ADDs of the pod since its last successful one (the chain holds the latest).
        failed_adds: u32,
        /// The plugin that failed the latest, by `type`.
        plugin: Arc<str>,
        /// The network configuration's name.
        network: Arc<str>,
    },
    /// A burst of failed DNS lookups from one pod to one server.
    DnsFailure {
        /// The server the lookups went to, `ip:port`.
        server: Arc<str>,
        /// Failed lookups in the burst's window (the chain holds the first of them).
        failed_lookups: u32,
        /// The pod's failed TCP connects in the same window.
        connect_errors: u32,
        /// The window, ns.
        window_ns: u64,
    },
    /// A restart loop, as it was when its count reached `count`.
    RestartLoop {
        /// The container's name in the pod spec.
        container_name: Arc<str>,
        /// Exits counted: the level the loop last reached (3, 5, 10, 20, 50, ...).
        count: u64,
        /// Time from the earliest to the latest of those exits, ns.
        span_ns: u64,
        /// Estimated time between restarts: the span over one less than the count, ns.
        period_ns: u64,
        /// The bound each exit had to follow the one before within, ns.
        within_ns: u64,
        /// How those exits ended: each exit code and reason with how many ended so, sorted.
        exits: Vec<ExitTally>,
    },
    /// A burst, as it was when its count reached `count`.
    Burst {
        /// What was counted.
        kind: BurstKind,
        /// Facts counted: the level the burst last reached (5, 10, 20, 50, ...).
        count: u64,
        /// Time from the earliest to the latest of those facts, ns.
        span_ns: u64,
        /// The bound each fact had to follow the one before within, ns.
        within_ns: u64,
        /// What those facts said (a connect's outcome, an Event's reason), with how many said
        /// it, sorted.
        tally: Vec<Tally>,
    },
    /// Containers of several pods on one node ending together.
    CoOccurrence {
        /// Distinct pods whose containers ended: the level last reached (3, 5, 10, 20, ...),
        /// and any pods that ended at the same instant as the last of those.
        pods: u64,
        /// Time from the earliest to the latest of those exits, ns.
        span_ns: u64,
        /// The bound every exit had to fall within, after the first, ns.
        within_ns: u64,
    },
    /// A container ran out of a resource.
    Exhaustion {
        /// Which resource.
        resource: Resource,
        /// Use when it crossed the threshold, in the resource's unit.
        used: u64,
        /// The container's limit, same unit.
        limit: u64,
        /// The share of the limit, percent, at which the collector reports a crossing.
        threshold_percent: u8,
        /// Time from the crossing to the kill, ns.
        span_ns: u64,
        /// The bound the kill had to follow the crossing within, ns.
        within_ns: u64,
    },
    /// A configuration file change and the node-wide restart that followed it.
    ConfigChange {
        /// The configuration file: the changed path, or the new path of a rename.
        path: Arc<str>,
        /// Distinct pods whose containers ended together (the co-occurrence's level).
        pods: u64,
        /// Time from the change to the restart's first exit, ns.
        gap_ns: u64,
        /// The bound the restart had to follow the change within, ns.
        within_ns: u64,
    },
    /// etcd trouble and the Kubernetes Warning Event that followed it.
    EtcdSlowdown {
        /// What was wrong with etcd.
        trouble: EtcdTrouble,
        /// The slow or failed read's time, ns (0 for a leader change).
        latency_ns: u64,
        /// The Event's reason, e.g. `FailedCreate`.
        reason: Arc<str>,
        /// Time from the etcd trouble to the Event, ns.
        gap_ns: u64,
        /// The bound the Event had to follow the trouble within, ns.
        within_ns: u64,
    },
    /// A node condition under which the kubelet evicted pods.
    NodePressure {
        /// The condition, e.g. `MemoryPressure`.
        condition: Arc<str>,
        /// How many pods were evicted under it.
        evicted_pods: u32,
        /// The bound the evictions had to follow the condition within, ns.
        within_ns: u64,
    },
}

/// What a burst counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BurstKind {
    /// Refused, timed-out or otherwise failed TCP connects to one remote endpoint.
    ConnectFailures,
    /// Warning Kubernetes Events of one reason about one object.
    WarningEvents,
}

impl BurstKind {
    /// The snake_case name used in JSON and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            BurstKind::ConnectFailures => "connect_failures",
            BurstKind::WarningEvents => "warning_events",
        }
    }
}

/// How many of a restart loop's exits ended with one exit code and reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExitTally {
    /// The exit code.
    pub exit_code: i32,
    /// The reason the runtime gave, e.g. `OOMKilled`, `Error`.
    pub reason: Arc<str>,
    /// Exits that ended so.
    pub count: u64,
}

/// How many of a burst's facts said one thing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tally {
    /// What they said: a connect's outcome (`refused`, `timed_out`, `failed`), an Event's
    /// reason.
    pub said: Arc<str>,
    /// Facts that said it.
    pub count: u64,
}

/// How a service-graph edge was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The address is a Service endpoint (`ip:port` in an EndpointSlice): the pod behind it,
    /// or the Service when the slice names no pod.
    Endpoint,
    /// The address's IP is a pod's (from the EndpointSlices, or from the CNI ADD that
    /// assigned it), on a port no slice lists.
    PodIp,
    /// The address's IP is a Service's cluster IP.
    ClusterIp,
    /// A Service routes to the pod (an EndpointSlice lists it).
    ServiceRoute,
}

impl Resolution {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Endpoint => "endpoint",
            Resolution::PodIp => "pod_ip",
            Resolution::ClusterIp => "cluster_ip",
            Resolution::ServiceRoute => "service_route",
        }
    }
}

/// Whether a failure's dependent is seen to suffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    /// The dependent's connects to what it depends on failed after the failure began.
    Observed,
    /// The dependent depends on the failed entity, and nothing shows it suffering yet.
    Potential,
}

impl Impact {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Impact::Observed => "observed",
            Impact::Potential => "potential",
        }
    }
}

/// Evidence that raised or lowered a correlation's confidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Every link is recorded by the objects themselves (owner references, pod status, the
    /// node agent's process records): certain.
    RecordedLinks,
    /// Every step of the sequence was observed, on the same entities, in order, within the
    /// bound.
    EveryStepObserved,
    /// The container's end says OOM (reason `OOMKilled` or exit code 137): raises.
    ContainerEndSaysOom,
    /// The container ended without an OOM reason or code: lowers.
    ContainerEndSaysOther,
    /// The steps matched a sequence a user declared: as strong as the declaration.
    DeclaredSteps,
    /// The previous revision's pods were ready while the new revision's failed: raises.
    PreviousRevisionReady,
    /// More than one of the new revision's pods failed: raises.
    SeveralNewPodsFailed,
    /// The edge is traffic the kernel saw: a connect or an accept, resolved through the
    /// Service records that held when it was made.
    ObservedTraffic,
    /// A Service's EndpointSlice lists the pod.
    RecordedEndpoint,
    /// Every edge from the failure to the dependent is in the service graph.
    DependencyPath,
    /// The dependent's connects to what it depends on failed after the failure began: raises.
    DependentConnectsFailed,
    /// Nothing shows the dependent suffering yet: lowers.
    NoFailedConnects,
    /// At least the configured number of lookups from one pod to one server failed within
    /// the window.
    DnsFailureBurst,
    /// The DNS server's endpoint stopped being ready, or its pod's container exited or turned
    /// not ready, shortly before or during the burst: raises.
    DnsServerFailureObserved,
    /// Nothing was observed about the DNS server itself: lowers.
    DnsServerCauseUnknown,
    /// The pod's TCP connects failed in the same window: raises.
    ConnectErrorsFollowed,
    /// Each occurrence followed the one before within the bound, at least the threshold
    /// number of times: observed directly.
    RecurredWithinBound,
    /// The OOM sequence rule matched a kernel OOM kill to one of the exits: the cause is
    /// known, raises.
    ExitsWereOomKills,
    /// Containers of at least the threshold number of distinct pods on one node ended within
    /// the bound: a node-wide cause is inferred, not observed.
    PodsEndedTogether,
    /// The runtime's network setup of the pod failed, as the CNI plugins answered it, and no
    /// setup of the pod succeeded after it: observed directly.
    NetworkSetupFailed,
    /// The container's use was at or above its limit share when the kill came (no report of it
    /// falling back in between): raises.
    UsageAboveThresholdAtKill,
    /// The eviction Event names the resource the condition is about (memory for
    /// `MemoryPressure`, ...): raises.
    EvictionNamesTheResource,
    /// Some eviction Event names no resource: lowers.
    EvictionNamesNoResource,
    /// A configuration file on the node changed shortly before: the cause is inferred from
    /// the order, not observed.
    ConfigChangedBefore,
    /// etcd was slow, unavailable or changed leader shortly before: the cause is inferred
    /// from the order, not observed.
    EtcdTroubleBefore,
}

/// What was wrong with etcd, as the etcd collector's probes saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdTrouble {
    /// A linearizable read took at least the configured time.
    Slow,
    /// An endpoint did not answer.
    Unavailable,
    /// An endpoint reported a new leader.
    LeaderChange,
}

impl EtcdTrouble {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EtcdTrouble::Slow => "slow",
            EtcdTrouble::Unavailable => "unavailable",
            EtcdTrouble::LeaderChange => "leader_change",
        }
    }
}

/// How sure a rule is, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Confidence {
    /// Percent, 0–100.
    pub percent: u8,
    /// The evidence that set it.
    pub basis: Vec<Basis>,
}

/// A conclusion with its evidence.
///
/// Correlations are values in a collection: one appears when its evidence is complete and is
/// retracted when its evidence is retracted or expires. Its identity is all of its typed data;
/// it holds no prose.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Correlation {
    /// Which family of rules ([`CorrelationKind::family`] of `kind`).
    pub family: Family,
    /// Which rule.
    pub kind: CorrelationKind,
    /// The entity where the chain starts: the cause, or for ownership the top-most owner.
    pub root_cause: EntityId,
    /// The evidence, hop by hop, in causal order.
    pub chain: Vec<Hop>,
    /// Typed facts about it, per family.
    pub detail: Detail,
    /// How sure the rule is.
    pub confidence: Confidence,
}

impl Correlation {
    /// A correlation of `kind`, its family filled in.
    pub fn new(
        kind: CorrelationKind,
        root_cause: EntityId,
        chain: Vec<Hop>,
        detail: Detail,
        confidence: Confidence,
    ) -> Correlation {
        Correlation {
            family: kind.family(),
            kind,
            root_cause,
            chain,
            detail,
            confidence,
        }
    }
}

/// The stable id of a correlation: the first 128 bits of the SHA-256 of its JSON form, in hex.
/// Equal correlations get equal ids in every process and every run, in every sink (the Neo4j
/// graph and the in-memory store name a correlation alike); the JSON holds no prose, so
/// rewording a rendered sentence never changes an id.
pub fn correlation_id(correlation: &Correlation) -> String {
    use sha2::{Digest, Sha256};
    let json =
        serde_json::to_vec(correlation).unwrap_or_else(|_| format!("{correlation:?}").into());
    let digest = Sha256::digest(&json);
    let mut id = String::with_capacity(32);
    for byte in &digest[..16] {
        use std::fmt::Write;
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// One change to the set of current correlations, as the sinks write it.
///
/// JSON: `{"diff":1,"time":1621417387000000000,"correlation":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationChange {
    /// +1: the correlation became current; -1: it stopped being current.
    pub diff: i64,
    /// End of the tick in which the change happened, ns since the Unix epoch.
    pub time: TimeNs,
    /// The correlation.
    pub correlation: Correlation,
}

/// Everything that changed in one closed tick, consolidated and sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedBatch {
    /// End of the tick, ns since the Unix epoch.
    pub time: TimeNs,
    /// The changes: correlations with their net diff (never zero), sorted.
    pub changes: Vec<(Correlation, i64)>,
}

impl ClosedBatch {
    /// The batch as the individual changes the sinks write.
    pub fn to_changes(&self) -> impl Iterator<Item = CorrelationChange> + '_ {
        self.changes
            .iter()
            .map(|(correlation, diff)| CorrelationChange {
                diff: *diff,
                time: self.time,
                correlation: correlation.clone(),
            })
    }
}
