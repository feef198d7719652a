//! The correlation rules, one module each. Every module opens with the rule in plain words.

pub mod oom_sequence;
pub mod ownership;
pub mod window;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tapio_model::{EntityId, FactId, Hop, TimeNs};

/// A piece of evidence: the observation behind a hop, and what it says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Evidence {
    /// Event time of the observation, ns.
    pub time: TimeNs,
    /// The observation.
    pub fact_id: FactId,
    /// What it says, in a few words.
    pub what: Arc<str>,
}

impl Evidence {
    /// A hop at `entity` backed by this evidence.
    pub fn hop(&self, entity: &EntityId) -> Hop {
        Hop {
            entity: entity.clone(),
            fact_id: self.fact_id.clone(),
            time: self.time,
            what: self.what.clone(),
        }
    }
}
