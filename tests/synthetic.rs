//! Seeded, deterministic synthetic Kubernetes clusters that emit Tapio observations: the one
//! generator the tests and the benchmarks share.
//!
//! Both stream shapes model the same cluster: Deployments own ReplicaSets, which own pods, which
//! own containers, all emitted as [`StateUpdate`]s from the `kubernetes/cluster` source;
//! processes exec and exit in the containers (kernel facts from `kernel/<node>`, plus the node
//! agent's `ProcessContainer` membership record, inserted at the exec and retracted verbatim at
//! the exit); OOM kills are followed by the process's exit on signal 9 and the container's exit
//! (137, `OOMKilled`), after which it restarts under a new id; rollouts replace a Deployment's
//! pods under a new ReplicaSet. Every (source, node) sends heartbeats that close each tick.
//!
//! - [`Cluster`] with a [`ClusterSpec`]: events arrive at Poisson rates and the stream is
//!   generated tick by tick, in chunks of any size (the benchmarks' stream; also pod deletions,
//!   several containers per pod, side processes with realistic command lines, container exits
//!   from `kubelet/<node>`); [`ClusterSpec::with_incidents`] adds Services and endpoints,
//!   readiness, TCP connects between pods, memory usage crossings, crashes, and the seeded
//!   incidents of [`IncidentKind`] (the correlator benchmark's stream).
//! - [`stream`] with a [`Shape`]: a fixed schedule (so many execs per second, an OOM kill and a
//!   rollout every so many seconds), a few thousand observations generated at once, container
//!   exits from `cri/<node>` (the end-to-end tests' stream).
//!
//! The same spec or shape always gives the same stream; both start at [`START_NS`].

mod cluster;
mod schedule;

pub use cluster::{Cluster, ClusterSpec, ClusterStats, Incident, IncidentKind};
pub use schedule::{Shape, stream};

use tapio_model::{
    EntityId, FactId, FactPayload, Heartbeat, Observation, ProcessContainer, ProcessExec,
    ProcessExit, StateObject, StateRecord, StateUpdate, TimeNs,
};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// 2026-01-01T00:00:00Z, ns since the Unix epoch: where the synthetic streams start.
pub const START_NS: TimeNs = 1_767_225_600 * NS_PER_S;

/// The next record of the Kubernetes API collector (`kubernetes/cluster`), numbered by `seq`.
fn kube_record(seq: &mut u64, time: TimeNs, object: StateObject) -> StateRecord {
    *seq += 1;
    StateRecord {
        evidence: FactId::new("kubernetes", "cluster", *seq),
        since_ns: time,
        object,
    }
}

/// The insertion (`diff` 1) or retraction (`diff` -1) of `record` at `time`.
fn update(time: TimeNs, diff: i8, record: StateRecord) -> Observation {
    Observation::State(StateUpdate {
        time_ns: time,
        diff,
        record,
    })
}

/// A process's exec, as the kernel collector reports it.
fn exec_payload(
    pid: u32,
    start_ns: TimeNs,
    (comm, filename, args): (String, String, Vec<String>),
    container_id: &str,
) -> FactPayload {
    FactPayload::ProcessExec(ProcessExec {
        pid,
        ppid: 1,
        uid: 0,
        start_ns,
        comm,
        filename,
        args,
        container_id: Some(container_id.into()),
    })
}

/// The node agent's record of a process's place in its container, with evidence `seq` of
/// `kernel/<node>`.
fn membership(
    node: &str,
    seq: u64,
    time: TimeNs,
    (pid, start_ns): (u32, TimeNs),
    container_id: &str,
    filename: String,
) -> StateRecord {
    StateRecord {
        evidence: FactId::new("kernel", node.to_string(), seq),
        since_ns: time,
        object: StateObject::ProcessContainer(ProcessContainer {
            process: EntityId::Process {
                node: node.into(),
                pid,
                start_ns,
            },
            container_id: container_id.into(),
            filename,
        }),
    }
}

/// A process's exit (code 0, or killed by `signal`), as the kernel collector reports it.
fn exit_payload(
    (pid, start_ns): (u32, TimeNs),
    comm: String,
    signal: u32,
    container_id: &str,
) -> FactPayload {
    FactPayload::ProcessExit(ProcessExit {
        pid,
        start_ns,
        comm,
        exit_code: 0,
        signal,
        container_id: Some(container_id.into()),
    })
}

/// `source` on `node` promises everything before `upto_ns`.
fn heartbeat(source: &str, node: &str, upto_ns: TimeNs) -> Observation {
    Observation::Heartbeat(Heartbeat {
        source: source.into(),
        node: node.into(),
        upto_ns,
    })
}
