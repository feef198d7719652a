//! Pure decoding of the kubelet's `/pods` and `/stats/summary` answers, and the change
//! detection that turns two consecutive polls into facts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use tapio_model::{
    ContainerExit, ContainerReady, EntityId, FactPayload, Resource, ResourceUsage, TimeNs,
};

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON of the expected shape.
    #[error("not a {what}: {source}")]
    Json {
        /// What was expected.
        what: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// What one poll knows about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// Runtime container id of the current instance (bare), empty before it started.
    pub container_id: String,
    /// Restarts so far.
    pub restart_count: u32,
    /// Whether it passes its readiness probe.
    pub ready: bool,
    /// When Kubernetes recorded the pod's containers' readiness last changing to what this
    /// container's is now, ns since the Unix epoch: the `lastTransitionTime` of the pod's
    /// `ContainersReady` condition (or, without one, its `Ready` condition) when that
    /// condition's status agrees with this container's readiness. Kubernetes records it to the
    /// second, so it is a whole second at or up to a second before the transition.
    pub ready_since: Option<TimeNs>,
    /// The previous instance's termination: (container id, exit code, reason, finished at).
    pub last_terminated: Option<(String, i32, String, String)>,
    /// Memory limit in bytes, when set.
    pub memory_limit: Option<u64>,
    /// CPU limit in nanocores, when set.
    pub cpu_limit: Option<u64>,
}

/// Key of a container: pod uid (or namespace/name) and container name.
pub type ContainerKey = (String, String);

/// The pods of one `/pods` answer: per container, its pod and state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodsSnapshot {
    /// Containers by key, with their pod.
    pub containers: BTreeMap<ContainerKey, (EntityId, ContainerState)>,
    /// Pods that could not be read (no name), counted as errors by the source.
    pub skipped: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PodListShape {
    // Required, but `null` for a kubelet with no pods.
    List { items: serde_json::Value },
    Bare(Vec<serde_json::Value>),
}

fn bare(id: &str) -> String {
    id.split_once("://").map_or(id, |(_, id)| id).to_string()
}

/// A Kubernetes quantity (`170Mi`, `1.5Gi`, `500m`, `2`, `1e3`) scaled by `unit` (1 for bytes,
/// 1e9 for cores → nanocores); `None` when it is not a quantity.
pub fn quantity(text: &str, unit: f64) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Pi" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value = number * factor * unit;
    (value.is_finite() && value >= 0.0).then(|| value.round() as u64)
}

/// Reads a `/pods` answer (a PodList, or a bare array of pods). A pod that does not decode is
/// counted in [`PodsSnapshot::skipped`] and left out.
///
/// # Errors
/// When the answer is not a list of pods at all.
pub fn pods(body: &[u8]) -> Result<PodsSnapshot, ParseError> {
    let list: PodListShape = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "pod list",
        source,
    })?;
    // A kubelet with no pods answers `"items": null`.
    let items = match list {
        PodListShape::List {
            items: serde_json::Value::Array(items),
        }
        | PodListShape::Bare(items) => items,
        PodListShape::List {
            items: serde_json::Value::Null,
        } => Vec::new(),
        PodListShape::List { items } => {
            return Err(ParseError::Json {
                what: "pod list",
                source: serde::de::Error::custom(format!("`items` is not a list: {items}")),
            });
        }
    };
    let mut snapshot = PodsSnapshot::default();
    for item in items {
        let Ok(pod) = serde_json::from_value::<Pod>(item) else {
            snapshot.skipped += 1;
            continue;
        };
        let meta = &pod.metadata;
        let Some(name) = meta.name.clone().filter(|name| !name.is_empty()) else {
            snapshot.skipped += 1;
            continue;
        };
        let namespace = meta
            .namespace
            .clone()
            .filter(|namespace| !namespace.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = meta
            .uid
            .clone()
            .unwrap_or_else(|| format!("{namespace}/{name}"));
        let entity = EntityId::Pod {
            namespace: namespace.into(),
            name: name.into(),
        };
        let limits: BTreeMap<&str, (Option<u64>, Option<u64>)> = pod
            .spec
            .iter()
            .flat_map(|spec| &spec.containers)
            .map(|container| {
                let limits = container
                    .resources
                    .as_ref()
                    .and_then(|resources| resources.limits.as_ref());
                let get = |resource: &str, unit: f64| {
                    limits
                        .and_then(|limits| limits.get(resource))
                        .and_then(|value| quantity(&value.0, unit))
                };
                (
                    container.name.as_str(),
                    (get("memory", 1.0), get("cpu", 1e9)),
                )
            })
            .collect();
        let conditions = pod
            .status
            .iter()
            .flat_map(|status| status.conditions.iter().flatten());
        // (status, since) of ContainersReady, else of Ready.
        let readiness = conditions
            .clone()
            .find(|condition| condition.type_ == "ContainersReady")
            .or_else(|| {
                conditions
                    .clone()
                    .find(|condition| condition.type_ == "Ready")
            })
            .and_then(|condition| {
                let since = condition.last_transition_time.as_ref()?;
                let ns = u64::try_from(since.0.as_nanosecond()).ok()?;
                Some((condition.status == "True", ns))
            });
        for status in pod
            .status
            .iter()
            .flat_map(|status| status.container_statuses.iter().flatten())
        {
            let last_terminated = status
                .last_state
                .as_ref()
                .and_then(|state| state.terminated.as_ref())
                .map(|terminated| {
                    (
                        terminated
                            .container_id
                            .as_deref()
                            .map(bare)
                            .unwrap_or_default(),
                        terminated.exit_code,
                        terminated.reason.clone().unwrap_or_default(),
                        terminated
                            .finished_at
                            .as_ref()
                            .map(|at| at.0.to_string())
                            .unwrap_or_default(),
                    )
                });
            let (memory_limit, cpu_limit) = limits
                .get(status.name.as_str())
                .copied()
                .unwrap_or_default();
            snapshot.containers.insert(
                (key.clone(), status.name.clone()),
                (
                    entity.clone(),
                    ContainerState {
                        container_id: status.container_id.as_deref().map(bare).unwrap_or_default(),
                        restart_count: u32::try_from(status.restart_count).unwrap_or(0),
                        ready: status.ready,
                        ready_since: readiness
                            .filter(|(ready, _)| *ready == status.ready)
                            .map(|(_, since)| since),
                        last_terminated,
                        memory_limit,
                        cpu_limit,
                    },
                ),
            );
        }
    }
    Ok(snapshot)
}

/// What changed between two polls of `/pods`, as fact payloads, each with the time Kubernetes
/// recorded for it when it did:
///
/// - a container whose previous instance's termination is new (another container id or finish
///   time) → [`ContainerExit`] with its exit code, reason and restart count; no time;
/// - a container whose readiness flipped → [`ContainerReady`], with
///   [`ContainerState::ready_since`] when it is known.
///
/// Containers seen for the first time report nothing: their history predates the source.
pub fn pod_changes(
    previous: &PodsSnapshot,
    current: &PodsSnapshot,
) -> Vec<(Option<TimeNs>, FactPayload)> {
    let mut out = Vec::new();
    for (key, (pod, now)) in &current.containers {
        let Some((_, before)) = previous.containers.get(key) else {
            continue;
        };
        if now.last_terminated != before.last_terminated
            && let Some((container_id, exit_code, reason, _)) = &now.last_terminated
        {
            out.push((
                None,
                FactPayload::ContainerExit(ContainerExit {
                    container_id: container_id.as_str().into(),
                    container_name: key.1.clone(),
                    pod: Some(pod.clone()),
                    exit_code: *exit_code,
                    reason: reason.clone(),
                    restart_count: now.restart_count,
                }),
            ));
        }
        if now.ready != before.ready {
            out.push((
                now.ready_since,
                FactPayload::ContainerReady(ContainerReady {
                    pod: pod.clone(),
                    container_name: key.1.clone(),
                    container_id: now.container_id.as_str().into(),
                    ready: now.ready,
                    restart_count: now.restart_count,
                }),
            ));
        }
    }
    out
}

/// One container's use from `/stats/summary`: memory working set (bytes) and CPU (nanocores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `memory.workingSetBytes`.
    pub memory: Option<u64>,
    /// `cpu.usageNanoCores`.
    pub cpu: Option<u64>,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    pods: Vec<PodStats>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStats {
    pod_ref: PodRef,
    #[serde(default)]
    containers: Vec<ContainerStats>,
}

#[derive(Deserialize)]
struct PodRef {
    name: String,
    namespace: String,
    #[serde(default)]
    uid: String,
}

#[derive(Deserialize)]
struct ContainerStats {
    name: String,
    cpu: Option<CpuStats>,
    memory: Option<MemoryStats>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CpuStats {
    usage_nano_cores: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemoryStats {
    working_set_bytes: Option<u64>,
}

/// Reads a `/stats/summary` answer: use per container, keyed like [`PodsSnapshot`].
///
/// # Errors
/// When the answer is not a summary.
pub fn summary(body: &[u8]) -> Result<BTreeMap<ContainerKey, Usage>, ParseError> {
    let summary: Summary = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "stats summary",
        source,
    })?;
    let mut out = BTreeMap::new();
    for pod in summary.pods {
        let key = if pod.pod_ref.uid.is_empty() {
            format!("{}/{}", pod.pod_ref.namespace, pod.pod_ref.name)
        } else {
            pod.pod_ref.uid
        };
        for container in pod.containers {
            out.insert(
                (key.clone(), container.name),
                Usage {
                    memory: container.memory.and_then(|memory| memory.working_set_bytes),
                    cpu: container.cpu.and_then(|cpu| cpu.usage_nano_cores),
                },
            );
        }
    }
    Ok(out)
}

/// Which containers are at or above `threshold_percent` of a limit, per (key, resource).
pub fn pressure(
    pods: &PodsSnapshot,
    usage: &BTreeMap<ContainerKey, Usage>,
    threshold_percent: u8,
) -> BTreeMap<(ContainerKey, Resource), ResourceUsage> {
    let mut out = BTreeMap::new();
    for (key, (pod, state)) in &pods.containers {
        let Some(used) = usage.get(key) else {
            continue;
        };
        for (resource, used, limit) in [
            (Resource::Memory, used.memory, state.memory_limit),
            (Resource::Cpu, used.cpu, state.cpu_limit),
        ] {
            let (Some(used), Some(limit)) = (used, limit) else {
                continue;
            };
            if limit > 0
                && u128::from(used) * 100 >= u128::from(limit) * u128::from(threshold_percent)
            {
                out.insert(
                    (key.clone(), resource),
                    ResourceUsage {
                        pod: pod.clone(),
                        container_name: key.1.clone(),
                        resource,
                        used,
                        limit,
                        threshold_percent,
                        above: true,
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("170Mi", 1.0), Some(170 * 1024 * 1024));
        assert_eq!(quantity("500m", 1e9), Some(500_000_000));
        assert_eq!(quantity("2", 1e9), Some(2_000_000_000));
        assert_eq!(quantity("1e3", 1.0), Some(1000));
        assert_eq!(quantity("1.5Gi", 1.0), Some(1_610_612_736));
        assert_eq!(quantity("lots", 1.0), None);
        assert_eq!(quantity("-1", 1.0), None);
    }

    /// The shape of `k8s.io/kubelet/pkg/apis/stats/v1alpha1.Summary` (field names from its JSON
    /// tags), with made-up values; the live test reads a real kubelet's summary too.
    #[test]
    fn summary_usage_per_container() {
        let body = br#"{"node": {"nodeName": "n1", "memory": {"workingSetBytes": 5}},
            "pods": [{"podRef": {"name": "p", "namespace": "n", "uid": "u"},
                "containers": [{"name": "c", "cpu": {"usageNanoCores": 7},
                    "memory": {"usageBytes": 11, "workingSetBytes": 9, "rssBytes": 3}},
                    {"name": "stopped"}]}]}"#;
        let usage = summary(body).unwrap();
        assert_eq!(
            usage[&("u".to_string(), "c".to_string())],
            Usage {
                memory: Some(9),
                cpu: Some(7)
            }
        );
        assert_eq!(
            usage[&("u".to_string(), "stopped".to_string())],
            Usage::default()
        );
        assert!(summary(b"7").is_err());
    }

    #[test]
    fn readiness_flips_are_reported() {
        let list = |ready: bool| {
            format!(
                r#"{{"items": [{{"metadata": {{"name": "p", "namespace": "n", "uid": "u"}},
                "status": {{"containerStatuses": [{{"name": "c", "containerID": "containerd://abc",
                "image": "i", "imageID": "", "ready": {ready}, "restartCount": 2}}]}}}}]}}"#
            )
        };
        let ready = pods(list(true).as_bytes()).unwrap();
        let failing = pods(list(false).as_bytes()).unwrap();
        let changes = pod_changes(&ready, &failing);
        assert!(
            matches!(&changes[..], [(None, FactPayload::ContainerReady(c))]
                if !c.ready && &*c.container_id == "abc" && c.restart_count == 2 && c.pod.to_string() == "pod/n/p"),
            "{changes:?}"
        );
        assert!(pod_changes(&failing, &failing).is_empty());
    }

    #[test]
    fn a_bad_list_is_an_error_and_bad_pods_are_counted() {
        assert!(pods(b"{\"kind\": 3}").is_err());
        let empty = br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":null}"#;
        assert_eq!(pods(empty).unwrap(), PodsSnapshot::default());
        let snapshot =
            pods(br#"{"items": [{"metadata": {}}, {"metadata": {"name": 5}}]}"#).unwrap();
        assert_eq!(snapshot.skipped, 2);
    }
}
