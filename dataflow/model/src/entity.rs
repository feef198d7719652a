//! Typed entity ids and their one string form.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Anything Tapio can say something about.
///
/// Each variant has exactly one string form, used everywhere (JSON, graph keys, CLI):
///
/// | variant | string form |
/// | --- | --- |
/// | `Node` | `node/<name>` |
/// | `Pod` | `pod/<namespace>/<name>` |
/// | `Container` | `container/<container id>` |
/// | `Process` | `process/<node>/<pid>/<start time ns>` |
/// | `Service` | `service/<namespace>/<name>` |
/// | `Deployment` | `deployment/<namespace>/<name>` |
/// | `ReplicaSet` | `replicaset/<namespace>/<name>` |
/// | `StatefulSet` | `statefulset/<namespace>/<name>` |
/// | `DaemonSet` | `daemonset/<namespace>/<name>` |
/// | `Job` | `job/<namespace>/<name>` |
/// | `Unit` | `unit/<node>/<unit name>` |
/// | `Dns` | `dns/<query name>` |
/// | `Endpoint` | `endpoint/<ip>:<port>` |
///
/// A process is identified by its start time as well as its pid, because pids are reused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityId {
    /// A Kubernetes node (a machine).
    Node {
        /// Node name.
        name: Arc<str>,
    },
    /// A pod.
    Pod {
        /// Namespace.
        namespace: Arc<str>,
        /// Pod name.
        name: Arc<str>,
    },
    /// A container, by runtime container id (without the `containerd://` scheme).
    Container {
        /// Runtime container id.
        id: Arc<str>,
    },
    /// A process on a node.
    ///
    /// The numbers come first so that ordering two processes (which the dataflow does
    /// constantly) rarely has to compare node names.
    Process {
        /// Process start time, ns since the Unix epoch.
        start_ns: u64,
        /// Thread-group id.
        pid: u32,
        /// Node the process runs on.
        node: Arc<str>,
    },
    /// A Kubernetes Service.
    Service {
        /// Namespace.
        namespace: Arc<str>,
        /// Service name.
        name: Arc<str>,
    },
    /// A Deployment.
    Deployment {
        /// Namespace.
        namespace: Arc<str>,
        /// Deployment name.
        name: Arc<str>,
    },
    /// A ReplicaSet.
    ReplicaSet {
        /// Namespace.
        namespace: Arc<str>,
        /// ReplicaSet name.
        name: Arc<str>,
    },
    /// A StatefulSet.
    StatefulSet {
        /// Namespace.
        namespace: Arc<str>,
        /// StatefulSet name.
        name: Arc<str>,
    },
    /// A DaemonSet.
    DaemonSet {
        /// Namespace.
        namespace: Arc<str>,
        /// DaemonSet name.
        name: Arc<str>,
    },
    /// A Job.
    Job {
        /// Namespace.
        namespace: Arc<str>,
        /// Job name.
        name: Arc<str>,
    },
    /// A systemd unit on a node.
    Unit {
        /// Node the unit runs on.
        node: Arc<str>,
        /// Unit name, e.g. `kubelet.service`.
        name: Arc<str>,
    },
    /// A DNS name that was queried.
    Dns {
        /// The queried name.
        name: Arc<str>,
    },
    /// A network endpoint.
    Endpoint {
        /// `<ip>:<port>`; IPv6 addresses in brackets.
        address: Arc<str>,
    },
}

/// A string that is not a valid [`EntityId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entity id `{input}`: {reason}")]
pub struct EntityIdError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl EntityId {
    /// The kind prefix of the string form (`pod`, `process`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            EntityId::Node { .. } => "node",
            EntityId::Pod { .. } => "pod",
            EntityId::Container { .. } => "container",
            EntityId::Process { .. } => "process",
            EntityId::Service { .. } => "service",
            EntityId::Deployment { .. } => "deployment",
            EntityId::ReplicaSet { .. } => "replicaset",
            EntityId::StatefulSet { .. } => "statefulset",
            EntityId::DaemonSet { .. } => "daemonset",
            EntityId::Job { .. } => "job",
            EntityId::Unit { .. } => "unit",
            EntityId::Dns { .. } => "dns",
            EntityId::Endpoint { .. } => "endpoint",
        }
    }

    /// Builds the id of a namespaced Kubernetes object from its `kind` as the API spells it
    /// (`Deployment`, `ReplicaSet`, `Pod`, ...). Returns `None` for kinds Tapio does not model.
    pub fn namespaced(kind: &str, namespace: &str, name: &str) -> Option<EntityId> {
        let (namespace, name): (Arc<str>, Arc<str>) = (namespace.into(), name.into());
        Some(match kind {
            "Pod" => EntityId::Pod { namespace, name },
            "Service" => EntityId::Service { namespace, name },
            "Deployment" => EntityId::Deployment { namespace, name },
            "ReplicaSet" => EntityId::ReplicaSet { namespace, name },
            "StatefulSet" => EntityId::StatefulSet { namespace, name },
            "DaemonSet" => EntityId::DaemonSet { namespace, name },
            "Job" => EntityId::Job { namespace, name },
            _ => return None,
        })
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        match self {
            EntityId::Node { name } | EntityId::Dns { name } => write!(f, "{kind}/{name}"),
            EntityId::Container { id } => write!(f, "{kind}/{id}"),
            EntityId::Endpoint { address } => write!(f, "{kind}/{address}"),
            EntityId::Process {
                node,
                pid,
                start_ns,
            } => write!(f, "{kind}/{node}/{pid}/{start_ns}"),
            EntityId::Unit { node, name } => write!(f, "{kind}/{node}/{name}"),
            EntityId::Pod { namespace, name }
            | EntityId::Service { namespace, name }
            | EntityId::Deployment { namespace, name }
            | EntityId::ReplicaSet { namespace, name }
            | EntityId::StatefulSet { namespace, name }
            | EntityId::DaemonSet { namespace, name }
            | EntityId::Job { namespace, name } => write!(f, "{kind}/{namespace}/{name}"),
        }
    }
}

impl FromStr for EntityId {
    type Err = EntityIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| EntityIdError {
            input: input.to_string(),
            reason,
        };
        let (kind, rest) = input
            .split_once('/')
            .ok_or_else(|| error("expected `<kind>/...`"))?;
        if rest.is_empty() {
            return Err(error("empty name"));
        }
        let single = |rest: &str| -> Result<Arc<str>, EntityIdError> {
            if rest.contains('/') {
                Err(error("this kind takes one name after the kind"))
            } else {
                Ok(rest.into())
            }
        };
        let pair = |rest: &str| -> Result<(Arc<str>, Arc<str>), EntityIdError> {
            match rest.split_once('/') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/') => {
                    Ok((a.into(), b.into()))
                }
                _ => Err(error("this kind takes `<namespace or node>/<name>`")),
            }
        };
        Ok(match kind {
            "node" => EntityId::Node {
                name: single(rest)?,
            },
            "container" => EntityId::Container { id: single(rest)? },
            "dns" => EntityId::Dns {
                name: single(rest)?,
            },
            "endpoint" => EntityId::Endpoint {
                address: single(rest)?,
            },
            "process" => {
                let mut parts = rest.split('/');
                let (Some(node), Some(pid), Some(start), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(error("a process is `process/<node>/<pid>/<start_ns>`"));
                };
                if node.is_empty() {
                    return Err(error("empty node name"));
                }
                EntityId::Process {
                    node: node.into(),
                    pid: pid.parse().map_err(|_| error("pid is not a number"))?,
                    start_ns: start
                        .parse()
                        .map_err(|_| error("start time is not a number"))?,
                }
            }
            "unit" => {
                let (node, name) = pair(rest)?;
                EntityId::Unit { node, name }
            }
            "pod" | "service" | "deployment" | "replicaset" | "statefulset" | "daemonset"
            | "job" => {
                let (namespace, name) = pair(rest)?;
                match kind {
                    "pod" => EntityId::Pod { namespace, name },
                    "service" => EntityId::Service { namespace, name },
                    "deployment" => EntityId::Deployment { namespace, name },
                    "replicaset" => EntityId::ReplicaSet { namespace, name },
                    "statefulset" => EntityId::StatefulSet { namespace, name },
                    "daemonset" => EntityId::DaemonSet { namespace, name },
                    _ => EntityId::Job { namespace, name },
                }
            }
            _ => return Err(error("unknown kind")),
        })
    }
}

impl Serialize for EntityId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntityId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for text in [
            "node/kind-control-plane",
            "pod/default/px-5d567cc74c-ss4lb",
            "container/3f1e0c",
            "process/node-1/4242/1621417378640117041",
            "service/default/px",
            "deployment/default/px",
            "replicaset/default/px-5d567cc74c",
            "statefulset/db/pg",
            "daemonset/kube-system/kube-proxy",
            "job/batch/backup",
            "unit/node-1/kubelet.service",
            "dns/px.default.svc.cluster.local",
            "endpoint/10.244.0.5:9898",
            "endpoint/[fd00::1]:53",
        ] {
            let id: EntityId = text.parse().expect(text);
            assert_eq!(id.to_string(), text);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<EntityId>(&json).unwrap(), id);
        }
    }

    #[test]
    fn malformed_ids_are_rejected_with_a_reason() {
        for text in [
            "",
            "pod",
            "pod/",
            "pod/default",
            "pod/default/",
            "pod//x",
            "pod/a/b/c",
            "process/n/notapid/1",
            "process/n/1",
            "process//1/1",
            "container/a/b",
            "widget/x",
        ] {
            let err = text.parse::<EntityId>().unwrap_err();
            assert_eq!(err.input, text);
        }
    }
}
