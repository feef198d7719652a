//! The vocabulary every part of Tapio speaks (layer L0; depends on nothing internal).
//!
//! Sources turn the outside world into [`Observation`]s: insert-only [`Fact`]s (an exec, an OOM
//! kill, a container exit), retractable [`StateUpdate`]s (a Kubernetes object appearing,
//! changing or disappearing) and [`Heartbeat`]s (a promise that a source has published
//! everything before a point in event time). The dataflow engine turns them into
//! [`Correlation`]s: chains of evidence, hop by hop, from a root cause to what it affected.
//! Every entity is named by an [`EntityId`] with one documented string form, used in JSON, in
//! the graph database and on the command line.
//!
//! Event time is always nanoseconds since the Unix epoch ([`TimeNs`]).
//!
//! ```
//! use tapio_model::EntityId;
//! let pod: EntityId = "pod/default/px-5d567cc74c-ss4lb".parse().unwrap();
//! assert_eq!(pod.to_string(), "pod/default/px-5d567cc74c-ss4lb");
//! ```

mod correlation;
mod entity;
mod observation;
pub mod recording;
pub mod render;
mod time;

pub use correlation::{
    Basis, BurstKind, ClosedBatch, Confidence, Correlation, CorrelationChange, CorrelationKind,
    Detail, EtcdTrouble, ExitTally, Family, Hop, Impact, Observed, Relation, Resolution, Tally,
    correlation_id,
};
pub use entity::{EntityId, EntityIdError};
pub use observation::{
    CniAddress, CniCommand, CniError, CniInterface, CniOperation, ConditionStatus, ConnectOutcome,
    ContainerExit, ContainerReady, DnsOutcome, DnsQuery, DnsRecord, DnsRecordData, EtcdCompaction,
    EtcdKeyChange, EtcdLeaderChange, EtcdOperation, EtcdStatus, EventType, Fact, FactId,
    FactPayload, FileChanged, FileOp, FileOpenFailed, Heartbeat, InvalidObservation, KubeEvent,
    NodeCondition, Observation, OomKill, OwnerRef, PodAddress, PodContainer, ProcessContainer,
    ProcessExec, ProcessExit, ProcessFork, ProcessRef, Resource, ResourceUsage, RuntimeChange,
    RuntimeObject, RuntimeState, ServiceEndpoint, ServiceObject, StateObject, StateRecord,
    StateUpdate, TcpAccept, TcpClose, TcpConnect, TcpRetransmit, UnitChange, UnitExit, UnitState,
    WorkloadObject, dns_type_name,
};
pub use time::{MAX_PLAUSIBLE_NS, MIN_PLAUSIBLE_NS, TimeNs, format_time, stable_hash};
