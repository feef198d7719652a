//! **Memory exhaustion.** A container that keeps using more memory reaches its limit, and the
//! kernel's OOM killer ends it; Kubernetes then restarts it. The kubelet collector reports when
//! a container's memory use crosses a share of its limit (`resource_usage`, `above: true`), and
//! the OOM sequence rule finds the kill, the exit and the container's exit. This rule joins the
//! two on the pod and the container's name (container ids change on every restart, names do
//! not): an OOM restart of a container whose latest memory report before the kill, within Δ,
//! says it was at or above the threshold, is that container exhausting its memory. A report
//! that its use fell back below the threshold in between breaks the link; a kill in another
//! container of the same pod does not match. The chain starts at the crossing, on the killed
//! container, and goes on with the OOM restart's hops (kill, exit, container exit, its pod and
//! owners), so it names the failing pod and container. The correlation is current as long as
//! the OOM restart it extends.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, MemoryExhaustionConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactPayload, Hop,
    Observed, Relation, Resource, TimeNs,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::sequence::latest_before;
use crate::operators::window::retain;

/// The memory exhaustion rule, with its configuration.
pub struct MemoryExhaustion {
    /// Δ: the kill must follow the crossing within this, ns.
    within_ns: u64,
    /// How long a usage report stays visible after its tick, ms: Δ, then as long as the OOM
    /// restart it may explain stays current, and one tick for rounding.
    retain_ms: u64,
}

/// The rule when `correlation.memory_exhaustion.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let MemoryExhaustionConfig { enabled, within } = &config.memory_exhaustion;
    let ms =
        |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    enabled.then(|| {
        Box::new(MemoryExhaustion {
            within_ns: u64::try_from(within.as_nanos()).unwrap_or(u64::MAX),
            retain_ms: ms(*within)
                .saturating_add(ms(config.oom_sequence.keep_for))
                .saturating_add(ms(config.engine.tick)),
        }) as Box<dyn Rule>
    })
}

/// A container's memory report: the crossing (or the fall back below) and what it measured.
/// Ordered by its evidence first, so the greatest is the latest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Usage {
    evidence: Evidence,
    used: u64,
    limit: u64,
    threshold_percent: u8,
    above: bool,
}

/// What a memory report and an OOM restart are joined on: the pod and the container's name.
type Key = (EntityId, Arc<str>);

impl Rule for MemoryExhaustion {
    fn name(&self) -> &'static str {
        "memory exhaustion"
    }

    fn section(&self) -> &'static str {
        "correlation.memory_exhaustion"
    }

    /// Memory reports, both crossings and falls back (the kills come from the OOM sequence
    /// rule's correlations).
    fn reads(&self, fact: &Fact) -> bool {
        matches!(&fact.payload, FactPayload::ResourceUsage(usage) if usage.resource == Resource::Memory)
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within = self.within_ns;
        let memory = inputs
            .facts_of("resource_usage")
            .flat_map(|fact| match &fact.payload {
                FactPayload::ResourceUsage(usage) if usage.resource == Resource::Memory => {
                    let key: Key = (usage.pod.clone(), usage.container_name.as_str().into());
                    Some((
                        key,
                        Usage {
                            evidence: Evidence::of(&fact),
                            used: usage.used,
                            limit: usage.limit,
                            threshold_percent: usage.threshold_percent,
                            above: usage.above,
                        },
                    ))
                }
                _ => None,
            });
        // Memory reports only, then windowed: other rules' reports never enter the window.
        let reports = retain(memory, self.retain_ms, move |(_, usage): &(Key, Usage)| {
            clock.tick_of(usage.evidence.time)
        });
        let restarts = inputs
            .correlations_of(&[CorrelationKind::OomRestart])
            .flat_map(|restart| Some((restart_key(&restart)?, restart)));

        // For each OOM restart, the latest memory report of its container at or before the
        // kill within Δ; a match when that report says the use was above the threshold.
        latest_before(restarts, reports, within, kill_time, |usage: &Usage| {
            usage.evidence.time
        })
        .filter(|(_, (_, usage))| usage.above)
        .flat_map(move |(_, (restart, usage))| correlation(&restart, &usage, within))
    }
}

/// The pod and container name an OOM restart is about: the name from its container-exit hop
/// or, when the exit did not name it (the kernel reports exits without names), from the pod's
/// record of the container; the pod from the first pod hop among its owners. `None` when it
/// names no pod or no container name.
fn restart_key(restart: &Correlation) -> Option<Key> {
    let named = |hop: &Hop| match &hop.observed {
        Observed::ContainerExit { container_name, .. }
        | Observed::PodContainer { container_name } => {
            (!container_name.is_empty()).then(|| Arc::clone(container_name))
        }
        _ => None,
    };
    let name = restart.chain.iter().find_map(named)?;
    let pod = restart
        .chain
        .iter()
        .find(|hop| matches!(hop.entity, EntityId::Pod { .. }))?;
    Some((pod.entity.clone(), name))
}

/// When the OOM killer acted, from the restart's kill hop.
fn kill_time(restart: &Correlation) -> TimeNs {
    restart
        .chain
        .iter()
        .find(|hop| matches!(hop.observed, Observed::OomKill { .. }))
        .map_or(0, |hop| hop.time)
}

fn correlation(restart: &Correlation, usage: &Usage, within_ns: u64) -> Option<Correlation> {
    let container = restart
        .chain
        .iter()
        .find(|hop| matches!(hop.observed, Observed::ContainerExit { .. }))?
        .entity
        .clone();
    let mut chain: Vec<Hop> = Vec::with_capacity(restart.chain.len() + 1);
    chain.push(usage.evidence.hop(&container, Relation::Start));
    chain.extend(restart.chain.iter().cloned());
    // The crossing caused the kill, which started the OOM restart's chain.
    chain[1].relation = Relation::Caused;
    let mut basis = restart.confidence.basis.clone();
    basis.push(Basis::UsageAboveThresholdAtKill);
    Some(Correlation::new(
        CorrelationKind::MemoryExhaustion,
        container,
        chain,
        Detail::Exhaustion {
            resource: Resource::Memory,
            used: usage.used,
            limit: usage.limit,
            threshold_percent: usage.threshold_percent,
            span_ns: kill_time(restart).saturating_sub(usage.evidence.time),
            within_ns,
        },
        Confidence {
            percent: restart.confidence.percent,
            basis,
        },
    ))
}

#[cfg(test)]
mod tests;
