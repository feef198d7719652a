//! **Bad rollout.** Rolling out a Deployment creates a new ReplicaSet (a new revision) whose
//! pods replace the previous revision's. The rollout is bad when the new pods fail — a
//! container exits (a crash loop), a container stops being ready, or the kubelet reports a
//! failing probe or a restart back-off (`Unhealthy`, `BackOff` Warning Events) — while a pod
//! of the previous revision is ready (its Service endpoint says so). This rule finds that: a
//! ReplicaSet of a Deployment that appeared after another ReplicaSet of the same Deployment,
//! a failure of one of its pods within `within` after it appeared, and a ready pod of the
//! earlier ReplicaSet. The root is the new revision, the ReplicaSet; the chain goes from it to
//! the first of its pods that failed, with that failure as evidence, and the detail names the
//! Deployment, the previous revision (the latest earlier one with a ready pod) and how many new
//! pods failed. A failure counts for `keep_for` after it happened; the correlation holds while
//! the previous revision still has a ready pod and goes away when it has none (rolled back, or
//! rolled out after all). A rollout whose new pods become ready correlates nothing, and the
//! failure of a pod of the previous revision never blames the new one.
//!
//! Tapio knows when it first saw a ReplicaSet, not when Kubernetes created it: ReplicaSets
//! listed together when Tapio starts count as appearing in the order they were listed.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{BadRolloutConfig, CorrelationConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, EventType, Fact,
    FactPayload, Observed, Relation, StateObject, StateRecord, TimeNs,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::window::retain;

/// The bad rollout rule, with its configuration.
pub struct BadRollout {
    /// How long after the new ReplicaSet appears its pods' failures count, ns.
    within_ns: u64,
    /// How long a failure counts after it happened, ms (= ticks).
    keep_for_ms: u64,
}

/// The rule when `correlation.bad_rollout.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let BadRolloutConfig {
        enabled,
        within,
        keep_for,
    } = &config.bad_rollout;
    enabled.then(|| {
        Box::new(BadRollout {
            within_ns: u64::try_from(within.as_nanos()).unwrap_or(u64::MAX),
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        }) as Box<dyn Rule>
    })
}

/// A revision: a ReplicaSet of a Deployment, when it appeared and the record that says so.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Revision {
    /// When Tapio first saw it, ns.
    pub(crate) since: TimeNs,
    /// The ReplicaSet.
    pub(crate) replicaset: EntityId,
    /// The record that names its Deployment.
    pub(crate) evidence: Evidence,
}

/// The `(owner, child, record)` of a Workload record with an owner.
fn owned(record: &StateRecord) -> Option<(EntityId, EntityId, &StateRecord)> {
    match &record.object {
        StateObject::Workload(workload) => workload
            .owner
            .as_ref()
            .map(|owner| (owner.entity.clone(), workload.entity.clone(), record)),
        _ => None,
    }
}

/// A ReplicaSet record owned by a Deployment, as `(deployment, revision)`.
pub(crate) fn revision(record: &StateRecord) -> Option<(EntityId, Revision)> {
    let (owner, child, record) = owned(record)?;
    (owner.kind() == "deployment" && child.kind() == "replicaset").then(|| {
        (
            owner,
            Revision {
                since: record.since_ns,
                replicaset: child,
                evidence: Evidence {
                    time: record.since_ns,
                    fact_id: record.evidence.clone(),
                    observed: Observed::OwnerReference,
                },
            },
        )
    })
}

/// A pod record owned by a ReplicaSet, as `(pod, replicaset)`.
pub(crate) fn pod_of(record: &StateRecord) -> Option<(EntityId, EntityId)> {
    let (owner, child, _) = owned(record)?;
    (owner.kind() == "replicaset" && child.kind() == "pod").then_some((child, owner))
}

/// A pod whose Service endpoint is ready.
pub(crate) fn ready_pod(record: &StateRecord) -> Option<EntityId> {
    match &record.object {
        StateObject::ServiceEndpoint(endpoint) if endpoint.ready => endpoint.pod.clone(),
        _ => None,
    }
}

/// A failure of a pod: a container exit, a container that stopped being ready, a failing
/// probe or a restart back-off (Warning Events `Unhealthy`, `BackOff`).
pub(crate) fn failure(fact: &Fact) -> Option<(EntityId, Evidence)> {
    let pod = match &fact.payload {
        FactPayload::ContainerExit(exit) => exit.pod.clone()?,
        FactPayload::ContainerReady(ready) if !ready.ready => ready.pod.clone(),
        FactPayload::KubeEvent(event)
            if event.event_type == EventType::Warning
                && matches!(event.reason.as_str(), "Unhealthy" | "BackOff")
                && event.involved.kind() == "pod" =>
        {
            event.involved.clone()
        }
        _ => return None,
    };
    Some((pod, Evidence::of(fact)))
}

/// What the rule concludes about one new revision.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Verdict {
    /// The previous revision: the latest earlier one with a ready pod.
    pub(crate) previous: EntityId,
    /// The first failure of a new pod: the pod and the evidence.
    pub(crate) first: (EntityId, Evidence),
    /// New pods with a failure.
    pub(crate) failed_pods: u32,
}

/// The verdict over every `(previous revision, failed new pod, failure)` of one new revision.
pub(crate) fn verdict(candidates: &[(&Revision, &EntityId, &Evidence)]) -> Option<Verdict> {
    let previous = candidates
        .iter()
        .map(|(previous, _, _)| (previous.since, &previous.replicaset))
        .max()?
        .1
        .clone();
    let first = candidates
        .iter()
        .map(|(_, pod, failure)| (*failure, *pod))
        .min()
        .map(|(failure, pod)| (pod.clone(), failure.clone()))?;
    let mut pods: Vec<&EntityId> = candidates.iter().map(|(_, pod, _)| *pod).collect();
    pods.sort();
    pods.dedup();
    Some(Verdict {
        previous,
        first,
        failed_pods: u32::try_from(pods.len()).unwrap_or(u32::MAX),
    })
}

/// The correlation for `verdict` about the revision `new` of `deployment`.
pub(crate) fn correlation(deployment: &EntityId, new: &Revision, verdict: &Verdict) -> Correlation {
    let (pod, failure) = &verdict.first;
    let several = verdict.failed_pods > 1;
    let mut basis = vec![Basis::PreviousRevisionReady];
    if several {
        basis.push(Basis::SeveralNewPodsFailed);
    }
    Correlation::new(
        CorrelationKind::BadRollout,
        new.replicaset.clone(),
        vec![
            new.evidence.hop(&new.replicaset, Relation::Start),
            failure.hop(pod, Relation::Caused),
        ],
        Detail::BadRollout {
            deployment: deployment.clone(),
            previous: verdict.previous.clone(),
            failed_pods: verdict.failed_pods,
            after_ns: failure.time.saturating_sub(new.since),
        },
        Confidence {
            percent: if several { 90 } else { 75 },
            basis,
        },
    )
}

impl Rule for BadRollout {
    fn name(&self) -> &'static str {
        "bad rollout"
    }

    fn section(&self) -> &'static str {
        "correlation.bad_rollout"
    }

    /// Container exits of pods, containers that stopped being ready, and `Unhealthy` and
    /// `BackOff` Warning Events about pods.
    fn reads(&self, fact: &Fact) -> bool {
        failure(fact).is_some()
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within = self.within_ns;
        let state = inputs.state();
        let revisions = state.clone().flat_map(|record| revision(&record));
        let pods = state.clone().flat_map(|record| pod_of(&record));

        // Earlier and later revisions of one Deployment, keyed by the earlier one.
        let pairs = revisions
            .clone()
            .join(revisions)
            .filter(|(_, (earlier, later))| earlier.since < later.since)
            .map(|(deployment, (earlier, later))| {
                (earlier.replicaset.clone(), (deployment, later, earlier))
            });
        // ReplicaSets with a ready pod.
        let ready = state
            .flat_map(|record| ready_pod(&record).map(|pod| (pod, ())))
            .join(pods.clone())
            .map(|(_, ((), replicaset))| replicaset)
            .distinct();
        // Later revisions whose earlier one has a ready pod, keyed by the later ReplicaSet.
        let contrasted = pairs
            .semijoin(ready)
            .map(|(_, (deployment, later, earlier))| {
                (later.replicaset.clone(), (deployment, later, earlier))
            });

        let failures = retain(
            inputs.facts().flat_map(|fact| failure(&fact)),
            self.keep_for_ms,
            move |(_, evidence): &(EntityId, Evidence)| clock.tick_of(evidence.time),
        );
        let new_pod_failures = failures
            .join(pods)
            .map(|(pod, (evidence, replicaset))| (replicaset, (pod, evidence)));

        contrasted
            .join(new_pod_failures)
            .filter(move |(_, ((_, later, _), (_, evidence)))| {
                later.since <= evidence.time && evidence.time - later.since <= within
            })
            .map(|(_, ((deployment, later, earlier), (pod, evidence)))| {
                ((deployment, later), (earlier, pod, evidence))
            })
            .reduce(|_, candidates, output| {
                let held: Vec<(&Revision, &EntityId, &Evidence)> = candidates
                    .iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|((earlier, pod, evidence), _)| (earlier, pod, evidence))
                    .collect();
                if let Some(verdict) = verdict(&held) {
                    output.push((verdict, 1isize));
                }
            })
            .map(|((deployment, later), verdict)| correlation(&deployment, &later, &verdict))
    }
}

#[cfg(test)]
mod tests;
