//! The Kubernetes collector (layer L2; depends on `tapio-sources`, `tapio-model` and
//! `tapio-config`): watches the API server with kube-rs and turns what it sees into Tapio's
//! model.
//!
//! - Pods, ReplicaSets, Deployments, StatefulSets, DaemonSets and Jobs become `workload`
//!   records (the object and its controlling owner); a pod's containers with a runtime id
//!   become `pod_container` records; Services become `service` records, EndpointSlices
//!   `service_endpoint` records, and Nodes one `node_condition` record per condition.
//! - core/v1 Events become `kube_event` facts, with their repeat count and first/last times.
//!
//! The watch maps onto retractions one to one ([`tracker`]): apply = retract what changed and
//! insert its replacement, delete = retract, re-list = retract what was not re-listed. Records
//! hold only what correlation needs, so status churn emits nothing. Watch errors, 410 Gone and
//! API server restarts are retried by kube-rs's watcher with backoff, and the re-list that
//! follows neither loses nor duplicates anything. An object or Event that cannot be converted is
//! counted in `errors`, logged and skipped. A heartbeat goes out every engine tick.
//!
//! Fact ids are `kubernetes/cluster/<seq>`: the API server is cluster-wide, not a node's.
//! The RBAC the source needs is `sources/kubernetes/rbac.yaml`.

pub mod convert;
mod source;
pub mod tracker;

pub use convert::{ConvertError, WatchedKind, bare_container_id, kube_event};
pub use source::{CLUSTER_NODE, KubernetesSource, WatchStats, from_config};
pub use tracker::{EventTracker, StateTracker};
