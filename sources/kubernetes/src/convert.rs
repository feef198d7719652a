//! Pure conversion of Kubernetes API objects into Tapio's owned model types.
//!
//! No API object crosses into the dataflow: every watched object becomes zero or more
//! [`StateObject`]s, every core/v1 Event a [`KubeEvent`]. What a record holds is deliberately
//! small (identity, controlling owner, container ids, condition statuses), so that the status
//! churn of a live cluster (heartbeat times, resource versions, managed fields) does not change
//! the records and so does not churn the dataflow.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tapio_model::{
    ConditionStatus, EntityId, EventType, KubeEvent, NodeCondition, OwnerRef, PodContainer,
    ServiceEndpoint, ServiceObject, StateObject, TimeNs, WorkloadObject,
};

/// Why an object could not be converted. Each is counted and the object skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A field every object of this kind must have is missing or empty.
    #[error("{kind} without {field}")]
    Missing {
        /// Object kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// An Event about a kind of object Tapio has no entity for.
    #[error("Event about an object of unexpected kind `{kind}`")]
    UnexpectedKind {
        /// The involved object's kind.
        kind: String,
    },
    /// An Event whose type is neither `Normal` nor `Warning`.
    #[error("Event of unknown type `{event_type}` (Kubernetes knows Normal and Warning)")]
    UnknownEventType {
        /// The type it had.
        event_type: String,
    },
    /// A timestamp outside what `TimeNs` can hold (before 1970).
    #[error("{kind} with an impossible time in {field}")]
    BadTime {
        /// Object kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// A Kubernetes kind the source watches as state.
pub trait WatchedKind:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The kind's name, as in `kind:`.
    const KIND: &'static str;

    /// The model records this object stands for, in a stable order.
    ///
    /// # Errors
    /// When the object lacks what its records need (name, uid).
    fn records(&self) -> Result<Vec<StateObject>, ConvertError>;
}

fn required<'a>(
    value: Option<&'a String>,
    kind: &'static str,
    field: &'static str,
) -> Result<&'a str, ConvertError> {
    value
        .map(String::as_str)
        .filter(|value| !value.is_empty())
        .ok_or(ConvertError::Missing { kind, field })
}

/// Namespace, name and uid of a namespaced object; a missing namespace is `default`.
fn identity<'a>(
    meta: &'a ObjectMeta,
    kind: &'static str,
) -> Result<(&'a str, &'a str, &'a str), ConvertError> {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or("default");
    let name = required(meta.name.as_ref(), kind, "metadata.name")?;
    let uid = required(meta.uid.as_ref(), kind, "metadata.uid")?;
    Ok((namespace, name, uid))
}

/// The controlling owner (`controller: true`), when it is of a kind Tapio has an entity for.
/// Owners of other kinds (custom resources, a Node for static pods) are not links Tapio can
/// follow, so the object is kept without one.
fn controller(owners: Option<&Vec<OwnerReference>>, namespace: &str) -> Option<OwnerRef> {
    let owner = owners?
        .iter()
        .find(|owner| owner.controller == Some(true))?;
    Some(OwnerRef {
        entity: EntityId::namespaced(&owner.kind, namespace, &owner.name)?,
        uid: owner.uid.clone(),
    })
}

fn workload(meta: &ObjectMeta, kind: &'static str) -> Result<WorkloadObject, ConvertError> {
    let (namespace, name, uid) = identity(meta, kind)?;
    Ok(WorkloadObject {
        entity: EntityId::namespaced(kind, namespace, name).ok_or(ConvertError::Missing {
            kind,
            field: "an entity form",
        })?,
        uid: uid.to_string(),
        owner: controller(meta.owner_references.as_ref(), namespace),
        node: None,
    })
}

/// Strips the runtime scheme (`containerd://`) from a container id.
pub fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, id)| id)
}

macro_rules! plain_workload {
    ($($ty:ty => $kind:literal),* $(,)?) => {$(
        impl WatchedKind for $ty {
            const KIND: &'static str = $kind;

            fn records(&self) -> Result<Vec<StateObject>, ConvertError> {
                Ok(vec![StateObject::Workload(workload(&self.metadata, Self::KIND)?)])
            }
        }
    )*};
}

plain_workload!(
    Deployment => "Deployment",
    ReplicaSet => "ReplicaSet",
    StatefulSet => "StatefulSet",
    DaemonSet => "DaemonSet",
    Job => "Job",
);

impl WatchedKind for Pod {
    const KIND: &'static str = "Pod";

    /// The pod with its controlling owner and the node it is scheduled on, then one record per
    /// container (regular, then init) that has a runtime id in the status.
    fn records(&self) -> Result<Vec<StateObject>, ConvertError> {
        let mut object = workload(&self.metadata, Self::KIND)?;
        object.node = self
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .filter(|name| !name.is_empty())
            .map(|name| EntityId::Node { name: name.into() });
        let mut out = Vec::with_capacity(2);
        let statuses = self.status.as_ref();
        let containers = statuses
            .and_then(|status| status.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .chain(
                statuses
                    .and_then(|status| status.init_container_statuses.as_ref())
                    .into_iter()
                    .flatten(),
            );
        for container in containers {
            let Some(id) = container
                .container_id
                .as_deref()
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            out.push(StateObject::PodContainer(PodContainer {
                pod: object.entity.clone(),
                pod_uid: object.uid.clone(),
                container_name: container.name.clone(),
                container_id: bare_container_id(id).into(),
            }));
        }
        out.insert(0, StateObject::Workload(object));
        Ok(out)
    }
}

impl WatchedKind for Service {
    const KIND: &'static str = "Service";

    fn records(&self) -> Result<Vec<StateObject>, ConvertError> {
        let (namespace, name, uid) = identity(&self.metadata, Self::KIND)?;
        let spec = self.spec.as_ref();
        let mut cluster_ips: Vec<String> = spec
            .and_then(|spec| spec.cluster_ips.clone())
            .or_else(|| {
                spec.and_then(|spec| spec.cluster_ip.clone())
                    .map(|ip| vec![ip])
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .collect();
        cluster_ips.sort();
        Ok(vec![StateObject::Service(ServiceObject {
            entity: EntityId::Service {
                namespace: namespace.into(),
                name: name.into(),
            },
            uid: uid.into(),
            cluster_ips,
        })])
    }
}

impl WatchedKind for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";

    /// One record per (address, port) of the slice; a slice that no Service owns (no
    /// `kubernetes.io/service-name` label) has none.
    fn records(&self) -> Result<Vec<StateObject>, ConvertError> {
        let (namespace, _, _) = identity(&self.metadata, Self::KIND)?;
        let Some(service) = self
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("kubernetes.io/service-name"))
            .filter(|name| !name.is_empty())
        else {
            return Ok(Vec::new());
        };
        let service = EntityId::Service {
            namespace: namespace.into(),
            name: service.as_str().into(),
        };
        let ports: Vec<i32> = self
            .ports
            .iter()
            .flatten()
            .filter_map(|port| port.port)
            .collect();
        let mut out = Vec::new();
        for endpoint in self.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                .unwrap_or(true);
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|target| target.kind.as_deref() == Some("Pod"))
                .and_then(|target| {
                    Some(EntityId::Pod {
                        namespace: target
                            .namespace
                            .clone()
                            .unwrap_or_else(|| namespace.to_string())
                            .into(),
                        name: target.name.as_deref()?.into(),
                    })
                });
            for address in &endpoint.addresses {
                let host = if address.contains(':') {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                for port in &ports {
                    out.push(StateObject::ServiceEndpoint(ServiceEndpoint {
                        service: service.clone(),
                        endpoint: EntityId::Endpoint {
                            address: format!("{host}:{port}").into(),
                        },
                        pod: pod.clone(),
                        ready,
                    }));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl WatchedKind for Node {
    const KIND: &'static str = "Node";

    /// One record per condition, by type, without its heartbeat and transition times.
    fn records(&self) -> Result<Vec<StateObject>, ConvertError> {
        let name = required(self.metadata.name.as_ref(), Self::KIND, "metadata.name")?;
        let node = EntityId::Node { name: name.into() };
        let mut out: Vec<StateObject> = self
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|condition| {
                StateObject::NodeCondition(NodeCondition {
                    node: node.clone(),
                    condition: condition.type_.clone(),
                    status: ConditionStatus::parse(&condition.status),
                    reason: condition.reason.clone().unwrap_or_default(),
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

fn nanos(at: &k8s_openapi::jiff::Timestamp, field: &'static str) -> Result<TimeNs, ConvertError> {
    TimeNs::try_from(at.as_nanosecond()).map_err(|_| ConvertError::BadTime {
        kind: "Event",
        field,
    })
}

/// The entity an Event is about: a namespaced kind Tapio knows, or a Node.
fn involved(event: &Event) -> Result<EntityId, ConvertError> {
    let object = &event.involved_object;
    let kind = required(object.kind.as_ref(), "Event", "involvedObject.kind")?;
    let name = required(object.name.as_ref(), "Event", "involvedObject.name")?;
    if kind == "Node" {
        return Ok(EntityId::Node { name: name.into() });
    }
    let namespace = object
        .namespace
        .as_deref()
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or("default");
    EntityId::namespaced(kind, namespace, name).ok_or_else(|| ConvertError::UnexpectedKind {
        kind: kind.to_string(),
    })
}

/// A core/v1 Event as a fact payload, with its repeat count and first/last times.
///
/// The component is `source.component`, or `reportingComponent` when that is empty (events
/// written through events.k8s.io have only the latter). The first time is `firstTimestamp`, or
/// `eventTime`, or `received`; the last time is `lastTimestamp`, or `eventTime`, or the first
/// time. A missing or negative count is 1.
///
/// # Errors
/// When the Event does not name its object, or names a kind Tapio has no entity for.
pub fn kube_event(event: &Event, received: TimeNs) -> Result<KubeEvent, ConvertError> {
    let involved = involved(event)?;
    let component = event
        .source
        .as_ref()
        .and_then(|source| source.component.as_deref())
        .filter(|component| !component.is_empty())
        .or(event.reporting_component.as_deref())
        .unwrap_or_default();
    let event_time = event
        .event_time
        .as_ref()
        .map(|at| nanos(&at.0, "eventTime"))
        .transpose()?;
    let first = event
        .first_timestamp
        .as_ref()
        .map(|at| nanos(&at.0, "firstTimestamp"))
        .transpose()?;
    let last = event
        .last_timestamp
        .as_ref()
        .map(|at| nanos(&at.0, "lastTimestamp"))
        .transpose()?;
    let first_ns = first.or(event_time).unwrap_or(received);
    let written = event.type_.as_deref().unwrap_or("Normal");
    let event_type = EventType::parse(written).ok_or_else(|| ConvertError::UnknownEventType {
        event_type: written.to_string(),
    })?;
    Ok(KubeEvent {
        involved,
        reason: event.reason.clone().unwrap_or_default(),
        message: event.message.clone().unwrap_or_default(),
        component: component.to_string(),
        event_type,
        count: event
            .count
            .and_then(|count| u32::try_from(count).ok())
            .unwrap_or(1),
        first_ns,
        last_ns: last.or(event_time).unwrap_or(first_ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn pod_with_owner_and_containers() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r", "controller": true}]},
            "status": {"containerStatuses": [
                {"name": "app", "containerID": "containerd://abc", "image": "i", "imageID": "", "ready": true, "restartCount": 0},
                {"name": "side", "image": "i", "imageID": "", "ready": false, "restartCount": 0}]}
        }));
        let records = pod.records().unwrap();
        assert_eq!(records.len(), 2);
        let StateObject::Workload(workload) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!(workload.entity.to_string(), "pod/shop/web-1");
        assert_eq!(
            workload.owner.as_ref().unwrap().entity.to_string(),
            "replicaset/shop/web"
        );
        assert_eq!(workload.node, None, "not scheduled yet");
        let StateObject::PodContainer(container) = &records[1] else {
            panic!("{records:?}")
        };
        assert_eq!(&*container.container_id, "abc");
    }

    #[test]
    fn a_scheduled_pod_names_its_node() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"},
            "spec": {"nodeName": "worker-2", "containers": [{"name": "app"}]}
        }));
        let records = pod.records().unwrap();
        let [StateObject::Workload(workload)] = &records[..] else {
            panic!("{records:?}")
        };
        assert_eq!(
            workload.node.as_ref().map(ToString::to_string).as_deref(),
            Some("node/worker-2")
        );
    }

    #[test]
    fn objects_without_identity_are_errors() {
        let nameless = pod(serde_json::json!({"metadata": {"uid": "u"}}));
        assert_eq!(
            nameless.records(),
            Err(ConvertError::Missing {
                kind: "Pod",
                field: "metadata.name"
            })
        );
        let uidless = pod(serde_json::json!({"metadata": {"name": "n"}}));
        assert!(uidless.records().is_err());
    }

    #[test]
    fn node_conditions_drop_times() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "uid": "u"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2024-01-01T00:00:00Z"},
                {"type": "MemoryPressure", "status": "False"}]}
        }))
        .unwrap();
        let records = node.records().unwrap();
        assert_eq!(records.len(), 2);
        assert!(
            records
                .iter()
                .all(|record| matches!(record, StateObject::NodeCondition(c) if c.node.to_string() == "node/n1"))
        );
    }

    #[test]
    fn endpoint_slices_name_service_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "shop", "uid": "s",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": false},
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}}],
            "ports": [{"port": 8080}, {"port": 9090}]
        }))
        .unwrap();
        let records = slice.records().unwrap();
        assert_eq!(records.len(), 2);
        let StateObject::ServiceEndpoint(endpoint) = &records[0] else {
            panic!()
        };
        assert_eq!(endpoint.endpoint.to_string(), "endpoint/10.1.0.5:8080");
        assert_eq!(endpoint.service.to_string(), "service/shop/web");
        assert!(!endpoint.ready);
    }

    #[test]
    fn events_keep_counts_and_times_and_reject_unknown_kinds() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "namespace": "shop", "uid": "e1"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "shop"},
            "reason": "BackOff", "message": "Back-off restarting", "type": "Warning",
            "source": {"component": "kubelet"}, "count": 7,
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:05:00Z"
        }))
        .unwrap();
        let fact = kube_event(&event, 1_800_000_000_000_000_000).unwrap();
        assert_eq!(fact.count, 7);
        assert_eq!(fact.first_ns, 1_704_067_200_000_000_000);
        assert_eq!(fact.last_ns, 1_704_067_500_000_000_000);
        assert_eq!(fact.component, "kubelet");
        assert_eq!(fact.event_type, EventType::Warning);
        let mut untyped = event.clone();
        untyped.type_ = Some("Alarming".into());
        assert_eq!(
            kube_event(&untyped, 1),
            Err(ConvertError::UnknownEventType {
                event_type: "Alarming".into()
            })
        );
        let mut odd = event.clone();
        odd.involved_object.kind = Some("ConfigMap".into());
        assert_eq!(
            kube_event(&odd, 1),
            Err(ConvertError::UnexpectedKind {
                kind: "ConfigMap".into()
            })
        );
    }
}
