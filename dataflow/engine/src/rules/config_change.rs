//! **Configuration change.** Someone changes a service's configuration on a node (a file under
//! `/etc` replaced by an atomic rename, or removed), and then restarts the container runtime or
//! the kubelet, or the change makes them crash: the containers of many pods on that node end
//! together. The co-occurrence rule finds the node-wide restart; this rule finds the change
//! that preceded it. A change is a kernel `file_changed` fact whose path, or a rename's new
//! path, matches one of the configured globs (`paths`, default `/etc/**`), made by a process
//! outside any container: a change inside a container is about that container's own files, not
//! the node's. A co-occurrence on a node is linked to the latest such change on the same node
//! at or before its first exit and at most `within` before it (default 10 minutes). The root is
//! the process that changed the file; the chain goes from the change to the node (`caused`)
//! and on through the co-occurrence's exits, one per pod. The order is the only evidence that
//! the change caused the restart, so the confidence is below the co-occurrence's own. The
//! correlation is current as long as the co-occurrence it extends, and goes with it.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{ConfigChangeConfig, CorrelationConfig, glob_matches};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactPayload, Hop,
    Relation, TimeNs,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::sequence::latest_before;
use crate::operators::window::retain;

/// How much less sure a linked change is than the co-occurrence it extends, percent.
const INFERENCE_COST: u8 = 10;

/// The configuration change rule, with its configuration.
pub struct ConfigChange {
    /// Which paths are configuration.
    paths: Arc<[String]>,
    /// The restart must follow the change within this, ns.
    within_ns: u64,
    /// How long a change stays visible after its tick, ms: `within`, then as long as a
    /// co-occurrence it may explain stays current (its bound and `keep_for`), and one tick
    /// for rounding.
    retain_ms: u64,
}

/// The rule when `correlation.config_change.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let ConfigChangeConfig {
        enabled,
        paths,
        within,
    } = &config.config_change;
    let ms =
        |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    enabled.then(|| {
        Box::new(ConfigChange {
            paths: paths.clone().into(),
            within_ns: u64::try_from(within.as_nanos()).unwrap_or(u64::MAX),
            retain_ms: ms(*within)
                .saturating_add(ms(config.co_occurrence.within))
                .saturating_add(ms(config.co_occurrence.keep_for))
                .saturating_add(ms(config.engine.tick)),
        }) as Box<dyn Rule>
    })
}

/// A configuration file change on a node. Ordered by its evidence first, so the greatest is
/// the latest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Change {
    /// The `file_changed` fact.
    pub(crate) evidence: Evidence,
    /// The process that made it.
    pub(crate) process: EntityId,
    /// The configuration path: the one that matched.
    pub(crate) path: Arc<str>,
}

/// The change `fact` is, when it is a change of a configuration file (a path in `paths`) by a
/// process outside any container: with its node.
pub(crate) fn change(paths: &[String], fact: &Fact) -> Option<(Arc<str>, Change)> {
    let FactPayload::FileChanged(changed) = &fact.payload else {
        return None;
    };
    if changed
        .container_id
        .as_ref()
        .is_some_and(|id| !id.is_empty())
    {
        return None;
    }
    let path = changed
        .new_path
        .iter()
        .chain(std::iter::once(&changed.path))
        .find(|path| paths.iter().any(|glob| glob_matches(glob, path)))?;
    Some((
        Arc::clone(&fact.id.node),
        Change {
            evidence: Evidence::of(fact),
            process: fact.subject(),
            path: path.as_str().into(),
        },
    ))
}

/// The node a co-occurrence is rooted at, by name.
fn node_of(restart: &Correlation) -> Option<Arc<str>> {
    match &restart.root_cause {
        EntityId::Node { name } => Some(Arc::clone(name)),
        _ => None,
    }
}

/// When a co-occurrence began: its first exit, the evidence of its first hop.
fn began(restart: &Correlation) -> TimeNs {
    restart.chain.first().map_or(0, |hop| hop.time)
}

impl Rule for ConfigChange {
    fn name(&self) -> &'static str {
        "configuration change"
    }

    fn section(&self) -> &'static str {
        "correlation.config_change"
    }

    /// Changes of configuration files outside containers (the restarts come from the
    /// co-occurrence rule's correlations).
    fn reads(&self, fact: &Fact) -> bool {
        change(&self.paths, fact).is_some()
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within = self.within_ns;
        let paths = Arc::clone(&self.paths);
        let changes = inputs
            .facts_of("file_changed")
            .flat_map(move |fact| change(&paths, &fact));
        let changes = retain(
            changes,
            self.retain_ms,
            move |(_, change): &(Arc<str>, Change)| clock.tick_of(change.evidence.time),
        );
        let restarts = inputs
            .correlations_of(&[CorrelationKind::CoOccurrence])
            .flat_map(|restart| Some((node_of(&restart)?, restart)));

        // For each node-wide restart, the latest change on its node at or before its first
        // exit, within the bound.
        latest_before(restarts, changes, within, began, |change: &Change| {
            change.evidence.time
        })
        .map(move |(_, (restart, change))| correlation(&restart, &change, within))
    }
}

/// The change, then the co-occurrence's chain: the node the change caused to restart, and
/// each pod's exit.
pub(crate) fn correlation(restart: &Correlation, change: &Change, within_ns: u64) -> Correlation {
    let mut chain: Vec<Hop> = Vec::with_capacity(restart.chain.len() + 1);
    chain.push(change.evidence.hop(&change.process, Relation::Start));
    chain.extend(restart.chain.iter().cloned());
    chain[1].relation = Relation::Caused;
    let pods = match restart.detail {
        Detail::CoOccurrence { pods, .. } => pods,
        _ => 0,
    };
    let mut basis = restart.confidence.basis.clone();
    basis.push(Basis::ConfigChangedBefore);
    Correlation::new(
        CorrelationKind::ConfigChangeRestart,
        change.process.clone(),
        chain,
        Detail::ConfigChange {
            path: Arc::clone(&change.path),
            pods,
            gap_ns: began(restart).saturating_sub(change.evidence.time),
            within_ns,
        },
        Confidence {
            percent: restart.confidence.percent.saturating_sub(INFERENCE_COST),
            basis,
        },
    )
}

#[cfg(test)]
mod tests;
