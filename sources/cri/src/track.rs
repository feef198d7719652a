//! What the collector knows of the runtime's sandboxes and containers, and the facts that a
//! newer look at one of them (a listing, a status) implies: only the differences.
//!
//! A sandbox or container moves forward through [`Phase`]s — created, running, exited — and
//! then disappears. Each look at it is compared with the phase known before: every phase it
//! passed since is reported once, with the time the runtime gives for it (created, started,
//! finished), and its disappearance is reported as a deletion. Looking twice at the same state
//! reports nothing, so a re-list after a reconnect reports only what changed while the
//! collector was away.

use std::collections::HashMap;
use std::sync::Arc;

use tapio_model::{
    ContainerExit, EntityId, FactPayload, RuntimeChange, RuntimeObject, RuntimeState, TimeNs,
};

/// The label the kubelet puts the pod's name in, on sandboxes and containers.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// The label holding the pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The label holding the pod's uid.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// The label holding the container's name in the pod spec.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// The annotation holding the container's restart count when the kubelet created it.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

/// How far a sandbox or container has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Running (a sandbox: ready).
    Running,
    /// Its process ended (a sandbox: not ready).
    Exited,
}

/// One look at a sandbox or container, as the runtime reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Sandbox or container.
    pub object: RuntimeObject,
    /// The runtime's id.
    pub id: Arc<str>,
    /// Its phase.
    pub phase: Phase,
    /// The sandbox it runs in (a sandbox: itself).
    pub sandbox_id: Arc<str>,
    /// The pod, from the Kubernetes labels.
    pub pod: Option<EntityId>,
    /// The pod's uid, from the labels; empty when not labelled.
    pub pod_uid: String,
    /// Container name in the pod spec (from the CRI metadata); empty for a sandbox.
    pub container_name: String,
    /// The image the container was created with; empty for a sandbox.
    pub image: String,
    /// The kubelet's restart count of the container (0 when not annotated).
    pub restart_count: u32,
    /// When it was created, ns since the epoch (0: unknown).
    pub created_ns: TimeNs,
    /// When it started, ns since the epoch (0: unknown or not started).
    pub started_ns: TimeNs,
    /// When it exited, ns since the epoch (0: unknown or still running).
    pub finished_ns: TimeNs,
    /// Exit code once exited.
    pub exit_code: i32,
    /// The runtime's reason once exited (`OOMKilled`, `Error`, `Completed`).
    pub reason: String,
    /// Whether the exit details (times, code, reason) are filled in: a listing carries the
    /// phase but not them.
    pub detailed: bool,
}

impl Seen {
    /// The pod and its uid from Kubernetes labels.
    pub fn pod_of(labels: &HashMap<String, String>) -> (Option<EntityId>, String) {
        let pod = match (labels.get(POD_NAMESPACE), labels.get(POD_NAME)) {
            (Some(namespace), Some(name)) if !namespace.is_empty() && !name.is_empty() => {
                Some(EntityId::Pod {
                    namespace: namespace.as_str().into(),
                    name: name.as_str().into(),
                })
            }
            _ => None,
        };
        (pod, labels.get(POD_UID).cloned().unwrap_or_default())
    }
}

/// A fact to send: its event time and payload.
pub type Found = (TimeNs, FactPayload);

/// The sandboxes and containers known, by id.
#[derive(Debug, Default)]
pub struct Tracker {
    known: HashMap<Arc<str>, Seen>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// What is known of `id`.
    pub fn get(&self, id: &str) -> Option<&Seen> {
        self.known.get(id)
    }

    /// How many sandboxes and containers are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Whether a look at `id` in `phase` (from a listing) needs its details fetched before
    /// [`Tracker::observe`]: it exited or started since it was last seen, and the listing does
    /// not carry the times, exit code and reason.
    pub fn needs_detail(&self, id: &str, phase: Phase) -> bool {
        match self.known.get(id) {
            Some(known) => known.phase < phase,
            None => phase > Phase::Created,
        }
    }

    /// Takes in a look at one sandbox or container; appends the facts of every phase it passed
    /// since it was last seen to `out` (none when `quiet`: the first listing, a baseline).
    pub fn observe(&mut self, seen: Seen, now_ns: TimeNs, quiet: bool, out: &mut Vec<Found>) {
        let before = self.known.get(&seen.id).map(|known| known.phase);
        if before.is_some_and(|before| before >= seen.phase) {
            // Nothing new; a later look never moves a phase back (a restart is a new container).
            return;
        }
        if !quiet {
            let at = |ns: TimeNs| if ns > 0 { ns } else { now_ns };
            if before.is_none() {
                out.push((at(seen.created_ns), change(&seen, RuntimeState::Created)));
            }
            if before < Some(Phase::Running) && seen.phase >= Phase::Running {
                let started = if seen.started_ns > 0 {
                    seen.started_ns
                } else {
                    seen.created_ns
                };
                out.push((at(started), change(&seen, RuntimeState::Started)));
            }
            if seen.phase == Phase::Exited {
                let time = at(seen.finished_ns);
                match seen.object {
                    RuntimeObject::Container => out.push((
                        time,
                        FactPayload::ContainerExit(ContainerExit {
                            container_id: seen.id.clone(),
                            container_name: seen.container_name.clone(),
                            pod: seen.pod.clone(),
                            exit_code: seen.exit_code,
                            reason: seen.reason.clone(),
                            restart_count: seen.restart_count,
                        }),
                    )),
                    RuntimeObject::Sandbox => {
                        out.push((time, change(&seen, RuntimeState::Exited)));
                    }
                }
            }
        }
        self.known.insert(seen.id.clone(), seen);
    }

    /// `id` is gone from the runtime: appends its deletion to `out` when it was known.
    pub fn gone(&mut self, id: &str, now_ns: TimeNs, out: &mut Vec<Found>) {
        if let Some(known) = self.known.remove(id) {
            out.push((now_ns, change(&known, RuntimeState::Deleted)));
        }
    }

    /// A full listing was taken: every known id not in `listed` is gone.
    pub fn retain_listed(
        &mut self,
        listed: &std::collections::HashSet<Arc<str>>,
        now_ns: TimeNs,
        out: &mut Vec<Found>,
    ) {
        let mut missing: Vec<Arc<str>> = self
            .known
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        missing.sort();
        for id in missing {
            self.gone(&id, now_ns, out);
        }
    }
}

/// The runtime change of `seen` to `state`.
fn change(seen: &Seen, state: RuntimeState) -> FactPayload {
    let exited = state == RuntimeState::Exited;
    FactPayload::RuntimeChange(RuntimeChange {
        object: seen.object,
        id: seen.id.clone(),
        state,
        pod: seen.pod.clone(),
        pod_uid: seen.pod_uid.clone(),
        container_name: seen.container_name.clone(),
        sandbox_id: seen.sandbox_id.clone(),
        image: seen.image.clone(),
        exit_code: if exited { seen.exit_code } else { 0 },
        reason: if exited {
            seen.reason.clone()
        } else {
            String::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(phase: Phase) -> Seen {
        Seen {
            object: RuntimeObject::Container,
            id: "c1".into(),
            phase,
            sandbox_id: "s1".into(),
            pod: Some(EntityId::Pod {
                namespace: "default".into(),
                name: "web".into(),
            }),
            pod_uid: "uid-1".into(),
            container_name: "app".into(),
            image: "busybox".into(),
            restart_count: 2,
            created_ns: 10,
            started_ns: if phase >= Phase::Running { 20 } else { 0 },
            finished_ns: if phase == Phase::Exited { 30 } else { 0 },
            exit_code: if phase == Phase::Exited { 137 } else { 0 },
            reason: if phase == Phase::Exited {
                "OOMKilled".into()
            } else {
                String::new()
            },
            detailed: true,
        }
    }

    fn kinds(found: &[Found]) -> Vec<(TimeNs, String)> {
        found
            .iter()
            .map(|(time, payload)| match payload {
                FactPayload::RuntimeChange(change) => (*time, change.state.as_str().to_string()),
                FactPayload::ContainerExit(exit) => (*time, format!("exit {}", exit.reason)),
                other => (*time, other.kind().to_string()),
            })
            .collect()
    }

    #[test]
    fn each_phase_is_reported_once_with_the_runtimes_time() {
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        tracker.observe(container(Phase::Created), 99, false, &mut out);
        tracker.observe(container(Phase::Created), 99, false, &mut out);
        tracker.observe(container(Phase::Running), 99, false, &mut out);
        tracker.observe(container(Phase::Exited), 99, false, &mut out);
        tracker.observe(container(Phase::Running), 99, false, &mut out);
        tracker.gone("c1", 99, &mut out);
        tracker.gone("c1", 99, &mut out);
        assert_eq!(
            kinds(&out),
            vec![
                (10, "created".into()),
                (20, "started".into()),
                (30, "exit OOMKilled".into()),
                (99, "deleted".into()),
            ]
        );
    }

    #[test]
    fn a_jump_reports_every_phase_passed_and_a_baseline_reports_none() {
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        tracker.observe(container(Phase::Exited), 99, false, &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        let mut quiet = Tracker::new();
        let mut none = Vec::new();
        quiet.observe(container(Phase::Running), 99, true, &mut none);
        assert!(none.is_empty());
        quiet.observe(container(Phase::Exited), 99, false, &mut none);
        assert_eq!(kinds(&none), vec![(30, "exit OOMKilled".into())]);
    }

    #[test]
    fn what_a_listing_no_longer_holds_is_deleted() {
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        tracker.observe(container(Phase::Running), 99, true, &mut out);
        tracker.retain_listed(&Default::default(), 50, &mut out);
        assert_eq!(kinds(&out), vec![(50, "deleted".into())]);
        assert!(tracker.is_empty());
    }

    #[test]
    fn the_pod_comes_from_the_kubernetes_labels() {
        let labels: HashMap<String, String> =
            [(POD_NAMESPACE, "ns"), (POD_NAME, "p"), (POD_UID, "u")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let (pod, uid) = Seen::pod_of(&labels);
        assert_eq!(pod.expect("pod").to_string(), "pod/ns/p");
        assert_eq!(uid, "u");
        assert_eq!(Seen::pod_of(&HashMap::new()), (None, String::new()));
    }
}
