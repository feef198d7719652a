//! What the dataflow concludes: correlations with evidence chains.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entity::EntityId;
use crate::observation::FactId;
use crate::time::TimeNs;

/// Which rule produced a correlation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationKind {
    /// An entity's chain of owners, e.g. process → container → pod → ReplicaSet → Deployment.
    Ownership,
    /// A kernel OOM kill that ended a process and, with it, its container.
    OomRestart,
}

impl CorrelationKind {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationKind::Ownership => "ownership",
            CorrelationKind::OomRestart => "oom_restart",
        }
    }
}

/// One step of an evidence chain: an entity, and the observation that puts it in the chain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hop {
    /// The entity at this step.
    pub entity: EntityId,
    /// The observation that supports this step.
    pub fact_id: FactId,
    /// Event time of that observation, ns since the Unix epoch.
    pub time: TimeNs,
    /// What the observation says, in a few words. Shared, not copied, by every chain that
    /// repeats this step.
    pub what: Arc<str>,
}

/// A conclusion with its evidence.
///
/// Correlations are values in a collection: one appears when its evidence is complete and is
/// retracted when its evidence is retracted or expires.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Correlation {
    /// Which rule.
    pub kind: CorrelationKind,
    /// The entity where the chain starts: the cause, or for ownership the top-most owner.
    pub root_cause: EntityId,
    /// The evidence, hop by hop, in causal order.
    pub chain: Vec<Hop>,
    /// One sentence for humans.
    pub explanation: String,
    /// How sure the rule is, in percent (0–100).
    pub confidence: u8,
}

/// One change to the set of current correlations, as the sinks write it.
///
/// JSON: `{"diff":1,"time":1621417387000000000,"correlation":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationChange {
    /// +1: the correlation became current; -1: it stopped being current.
    pub diff: i64,
    /// End of the tick in which the change happened, ns since the Unix epoch.
    pub time: TimeNs,
    /// The correlation.
    pub correlation: Correlation,
}

/// Everything that changed in one closed tick, consolidated and sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedBatch {
    /// End of the tick, ns since the Unix epoch.
    pub time: TimeNs,
    /// The changes: correlations with their net diff (never zero), sorted.
    pub changes: Vec<(Correlation, i64)>,
}

impl ClosedBatch {
    /// The batch as the individual changes the sinks write.
    pub fn to_changes(&self) -> impl Iterator<Item = CorrelationChange> + '_ {
        self.changes
            .iter()
            .map(|(correlation, diff)| CorrelationChange {
                diff: *diff,
                time: self.time,
                correlation: correlation.clone(),
            })
    }
}
