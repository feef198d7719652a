//! **etcd slowdown.** Every object Kubernetes keeps is written to etcd; when etcd is slow,
//! unavailable or electing a leader, the API server's writes stall or fail, and the
//! controllers that made them report it with Warning Events once their retries give up
//! (`FailedCreate`: a ReplicaSet could not create its pods, so a rollout does not progress).
//! This rule links the two: a Warning Event whose reason is one of `reasons`, and the latest
//! etcd trouble at or before it and at most `within` before it. etcd trouble is what the etcd
//! collector's probes report: an `etcd_status` whose linearizable read took at least
//! `slow_read`, or that did not answer, and an `etcd_leader_change`. etcd is one datastore for
//! the whole cluster, so trouble at any endpoint is linked to an Event about any object. The
//! root is the etcd endpoint; the chain goes from the trouble to the Event's object
//! (`followed_by`). Only the time order links them, so the confidence is 50%. A link is current
//! for `keep_for` after its Event.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, EtcdSlowdownConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, EtcdTrouble, EventType,
    Fact, FactPayload, Relation,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::window::retain;

/// The confidence of a link made by time order alone, percent.
const CONFIDENCE: u8 = 50;

/// The etcd slowdown rule, with its configuration.
pub struct EtcdSlowdown {
    /// A read at least this long is slow, ns.
    slow_read_ns: u64,
    /// The Event reasons that report a failed write.
    reasons: Arc<[String]>,
    /// The Event must follow the trouble within this, ns.
    within_ns: u64,
    /// How long a link stays current after its Event, ms.
    keep_for_ms: u64,
}

/// The rule when `correlation.etcd_slowdown.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let EtcdSlowdownConfig {
        enabled,
        slow_read,
        reasons,
        within,
        keep_for,
    } = &config.etcd_slowdown;
    let ns =
        |duration: &std::time::Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    enabled.then(|| {
        Box::new(EtcdSlowdown {
            slow_read_ns: ns(slow_read),
            reasons: reasons.clone().into(),
            within_ns: ns(within),
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        }) as Box<dyn Rule>
    })
}

/// etcd trouble at one endpoint. Ordered by its evidence first, so the greatest is the latest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Trouble {
    /// The `etcd_status` or `etcd_leader_change` fact.
    pub(crate) evidence: Evidence,
    /// The endpoint.
    pub(crate) endpoint: EntityId,
    /// What was wrong.
    pub(crate) trouble: EtcdTrouble,
    /// The read's time (0 for a leader change), ns.
    pub(crate) latency_ns: u64,
}

/// A Warning Event of a failed write.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Failure {
    /// The `kube_event` fact.
    pub(crate) evidence: Evidence,
    /// The object it is about.
    pub(crate) involved: EntityId,
    /// Its reason.
    pub(crate) reason: Arc<str>,
}

/// The trouble `fact` reports, if any.
pub(crate) fn trouble(slow_read_ns: u64, fact: &Fact) -> Option<Trouble> {
    let (trouble, latency_ns) = match &fact.payload {
        FactPayload::EtcdStatus(status) if !status.healthy => {
            (EtcdTrouble::Unavailable, status.latency_ns)
        }
        FactPayload::EtcdStatus(status) if status.latency_ns >= slow_read_ns => {
            (EtcdTrouble::Slow, status.latency_ns)
        }
        FactPayload::EtcdLeaderChange(_) => (EtcdTrouble::LeaderChange, 0),
        _ => return None,
    };
    Some(Trouble {
        evidence: Evidence::of(fact),
        endpoint: fact.subject(),
        trouble,
        latency_ns,
    })
}

/// The failed write `fact` reports, if it is a Warning Event of one of `reasons`.
pub(crate) fn failure(reasons: &[String], fact: &Fact) -> Option<Failure> {
    let FactPayload::KubeEvent(event) = &fact.payload else {
        return None;
    };
    (event.event_type == EventType::Warning && reasons.contains(&event.reason)).then(|| Failure {
        evidence: Evidence::of(fact),
        involved: event.involved.clone(),
        reason: event.reason.as_str().into(),
    })
}

impl Rule for EtcdSlowdown {
    fn name(&self) -> &'static str {
        "etcd slowdown"
    }

    fn section(&self) -> &'static str {
        "correlation.etcd_slowdown"
    }

    /// Slow or failed etcd probes, leader changes, and Warning Events of the configured
    /// reasons.
    fn reads(&self, fact: &Fact) -> bool {
        trouble(self.slow_read_ns, fact).is_some() || failure(&self.reasons, fact).is_some()
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within = self.within_ns;
        let slow = self.slow_read_ns;
        let reasons = Arc::clone(&self.reasons);
        // Trouble is needed while an Event within the bound after it can still be current.
        let trouble_ms = (within / 1_000_000)
            .saturating_add(self.keep_for_ms)
            .saturating_add(clock.tick_ms());
        let troubles = inputs
            .facts_of("etcd_status")
            .concat(inputs.facts_of("etcd_leader_change"))
            .flat_map(move |fact| trouble(slow, &fact).map(|trouble| ((), trouble)));
        let troubles = retain(troubles, trouble_ms, move |(_, trouble): &((), Trouble)| {
            clock.tick_of(trouble.evidence.time)
        });
        let failures = inputs
            .facts_of("kube_event")
            .flat_map(move |fact| failure(&reasons, &fact).map(|failure| ((), failure)));
        let failures = retain(
            failures,
            self.keep_for_ms,
            move |(_, failure): &((), Failure)| clock.tick_of(failure.evidence.time),
        );

        // For each failure, the latest trouble at or before it, within the bound.
        failures
            .join(troubles)
            .filter(move |(_, (failure, trouble))| {
                let (at, before) = (failure.evidence.time, trouble.evidence.time);
                before <= at && at - before <= within
            })
            .map(|((), (failure, trouble))| (failure, trouble))
            .reduce(|_, troubles, output| {
                let latest = troubles
                    .iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|(trouble, _)| *trouble)
                    .max();
                if let Some(trouble) = latest {
                    output.push((trouble.clone(), 1isize));
                }
            })
            .map(move |(failure, trouble)| correlation(&failure, &trouble, within))
    }
}

/// The trouble at its endpoint, then the object the Event is about.
pub(crate) fn correlation(failure: &Failure, trouble: &Trouble, within_ns: u64) -> Correlation {
    Correlation::new(
        CorrelationKind::EtcdSlowdown,
        trouble.endpoint.clone(),
        vec![
            trouble.evidence.hop(&trouble.endpoint, Relation::Start),
            failure
                .evidence
                .hop(&failure.involved, Relation::FollowedBy),
        ],
        Detail::EtcdSlowdown {
            trouble: trouble.trouble,
            latency_ns: trouble.latency_ns,
            reason: Arc::clone(&failure.reason),
            gap_ns: failure.evidence.time.saturating_sub(trouble.evidence.time),
            within_ns,
        },
        Confidence {
            percent: CONFIDENCE,
            basis: vec![Basis::EtcdTroubleBefore],
        },
    )
}

#[cfg(test)]
mod tests;
