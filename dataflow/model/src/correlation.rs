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
    ConditionStatus, ConnectOutcome, EventType, FactId, FactPayload, FileOp, Resource,
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
    /// A container's memory use crossed its limit share, then the OOM killer ended it.
    MemoryExhaustion,
    /// A node came under pressure (memory, disk, PIDs) and the kubelet evicted pods from it.
    NodePressureEviction,
}

impl CorrelationKind {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationKind::Ownership => "ownership",
            CorrelationKind::OomRestart => "oom_restart",
            CorrelationKind::MemoryExhaustion => "memory_exhaustion",
            CorrelationKind::NodePressureEviction => "node_pressure_eviction",
        }
    }

    /// The family the kind belongs to.
    pub fn family(self) -> Family {
        match self {
            CorrelationKind::Ownership => Family::Ownership,
            CorrelationKind::OomRestart => Family::Sequence,
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
}

impl Relation {
    /// Every relation that joins two hops (all but [`Relation::Start`]).
    pub const LINKS: [Relation; 4] = [
        Relation::OwnedBy,
        Relation::Caused,
        Relation::FollowedBy,
        Relation::DependsOn,
    ];

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Start => "start",
            Relation::OwnedBy => "owned_by",
            Relation::Caused => "caused",
            Relation::FollowedBy => "followed_by",
            Relation::DependsOn => "depends_on",
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
    /// The container's use was at or above its limit share when the kill came (no report of it
    /// falling back in between): raises.
    UsageAboveThresholdAtKill,
    /// The eviction Event names the resource the condition is about (memory for
    /// `MemoryPressure`, ...): raises.
    EvictionNamesTheResource,
    /// Some eviction Event names no resource: lowers.
    EvictionNamesNoResource,
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
