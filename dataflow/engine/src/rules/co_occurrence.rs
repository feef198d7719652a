//! **Co-occurrence.** When the container runtime or the kubelet on a node restarts, the
//! containers of many pods on that node end at about the same time. This rule finds that: the
//! exits of containers on one node (the node the kubelet reporting them runs on) that fall
//! within `within` after the first of them, from at least `pods` distinct pods (default 3
//! within 10 seconds). The root is the node, not each pod: the chain starts at the node and
//! goes to the first pod's container exit (`caused`) and on to each further pod's
//! (`followed_by`, each exit followed the previous one on the same node), one exit per pod;
//! pods whose exits carry the same time as the last one counted are all named.
//! Fewer pods than the threshold say nothing about the node: their restarts are their own
//! (the restart loop rule reads them). The correlation is replaced only when the number of
//! pods reaches the next of 5, 10, 20, 50, ..., and is retracted `keep_for` after the latest
//! exit; an exit later than `within` after the first starts a new group.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tapio_config::{CoOccurrenceConfig, CorrelationConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactPayload, Relation,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::{Tick, TickClock};
use crate::operators::runs::{Fold, level, runs};

/// The co-occurrence rule, with its configuration.
pub struct CoOccurrence {
    /// Distinct pods that make a co-occurrence.
    pods: u64,
    /// Every exit must fall within this after the first, ns.
    within_ns: u64,
    /// How long it stays current after its latest exit, ns.
    keep_for_ns: u64,
}

/// The rule when `correlation.co_occurrence.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let CoOccurrenceConfig {
        enabled,
        pods,
        within,
        keep_for,
    } = &config.co_occurrence;
    let ns =
        |duration: &std::time::Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    enabled.then(|| {
        Box::new(CoOccurrence {
            pods: u64::from(*pods),
            within_ns: ns(within),
            keep_for_ns: ns(keep_for),
        }) as Box<dyn Rule>
    })
}

/// A container exit of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Ended {
    evidence: Evidence,
    pod: EntityId,
}

/// Exits on one node within the bound after the first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Together {
    /// The first exit of each distinct pod, in the order they were folded.
    pods: Vec<Ended>,
    earliest_ns: u64,
    latest_ns: u64,
}

/// Folds a node's exits into groups.
#[derive(Clone, Debug)]
struct Grouping {
    within_ns: u64,
    keep_for_ns: u64,
    clock: TickClock,
}

impl Fold for Grouping {
    type Item = Ended;
    type Run = Together;

    fn start(&self, item: &Ended) -> Together {
        Together {
            pods: vec![item.clone()],
            earliest_ns: item.evidence.time,
            latest_ns: item.evidence.time,
        }
    }

    fn admits(&self, run: &Together, item: &Ended) -> bool {
        item.evidence.time <= run.earliest_ns.saturating_add(self.within_ns)
    }

    fn add(&self, run: &mut Together, item: &Ended) {
        run.earliest_ns = run.earliest_ns.min(item.evidence.time);
        run.latest_ns = run.latest_ns.max(item.evidence.time);
        if !run.pods.iter().any(|ended| ended.pod == item.pod) {
            run.pods.push(item.clone());
        }
    }

    fn latest(&self, run: &Together) -> u64 {
        run.latest_ns
    }

    fn expires(&self, run: &Together) -> Tick {
        self.clock
            .tick_of(run.latest_ns.saturating_add(self.keep_for_ns))
    }
}

impl Rule for CoOccurrence {
    fn name(&self) -> &'static str {
        "co-occurrence"
    }

    fn section(&self) -> &'static str {
        "correlation.co_occurrence"
    }

    /// Container exits that name their pod.
    fn reads(&self, fact: &Fact) -> bool {
        matches!(&fact.payload, FactPayload::ContainerExit(exit) if exit.pod.is_some())
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let (threshold, within_ns) = (self.pods, self.within_ns);
        let exits = inputs
            .facts_of("container_exit")
            .flat_map(|fact| match &fact.payload {
                FactPayload::ContainerExit(exit) => {
                    let pod = exit.pod.clone()?;
                    let ended = Ended {
                        evidence: Evidence::of(&fact),
                        pod,
                    };
                    Some((Arc::clone(&fact.id.node), ended))
                }
                _ => None,
            });
        let grouping = Grouping {
            within_ns,
            keep_for_ns: self.keep_for_ns,
            clock,
        };
        runs(exits, grouping, clock.tick_ms())
            .flat_map(move |(node, group)| correlation(&node, &group, threshold, within_ns))
    }
}

/// The correlation of a group once it holds `threshold` pods: the node, then the first exit of
/// each pod up to the level the group has reached (and of any pod that ended at the same
/// instant as the last of those).
fn correlation(
    node: &Arc<str>,
    group: &Together,
    threshold: u64,
    within_ns: u64,
) -> Option<Correlation> {
    let reached = level(group.pods.len() as u64, threshold)?;
    let cut = usize::try_from(reached).ok()?;
    // Pods that ended at the same instant as the last one counted are counted with it: which
    // of several simultaneous exits came "first" is only the order they were reported in.
    let last_ns = group.pods[cut - 1].evidence.time;
    let tied = group.pods[cut..]
        .iter()
        .take_while(|ended| ended.evidence.time == last_ns)
        .count();
    let counted = &group.pods[..cut + tied];
    let node = EntityId::Node {
        name: Arc::clone(node),
    };
    let mut chain = vec![counted[0].evidence.hop(&node, Relation::Start)];
    for (index, ended) in counted.iter().enumerate() {
        let relation = if index == 0 {
            Relation::Caused
        } else {
            Relation::FollowedBy
        };
        chain.push(ended.evidence.hop(&ended.pod, relation));
    }
    let times = counted.iter().map(|ended| ended.evidence.time);
    let span_ns = times.clone().max().unwrap_or(0) - times.min().unwrap_or(0);
    Some(Correlation::new(
        CorrelationKind::CoOccurrence,
        node,
        chain,
        Detail::CoOccurrence {
            pods: counted.len() as u64,
            span_ns,
            within_ns,
        },
        Confidence {
            // An inference: the more pods ended together, the less likely by chance.
            percent: u8::try_from((60 + 5 * reached).min(90)).unwrap_or(90),
            basis: vec![Basis::PodsEndedTogether],
        },
    ))
}

#[cfg(test)]
pub(crate) mod tests;
