//! **Burst.** Many facts of one kind about one subject in quick succession: refused, timed-out
//! or failed TCP connects to one remote endpoint (the endpoint is what is suffering, whoever
//! connects), or Warning Kubernetes Events of one reason about one object. A burst is a run of
//! such facts each at most `within` after the one before; once it holds `count` facts (per
//! kind, default 5 within 1 minute for connects and 5 within 5 minutes for Events) it is
//! reported with its count, its span and what the facts said (the connects' outcomes, the
//! Events' reason). Like a restart loop, its correlation is replaced only when the count
//! reaches the next of 10, 20, 50, 100, ..., and it is retracted `keep_for` after its latest
//! fact. The root is the subject; the chain is the first `count` facts and the one that brought
//! the burst to its count, each on the subject.
//!
//! The kinds are a table ([`KINDS`]): a new kind of burst is one entry saying which facts it
//! reads, what it keys them by and where its threshold is configured.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{BurstConfig, BurstThreshold, CorrelationConfig};
use tapio_model::{
    Basis, BurstKind, Confidence, Correlation, CorrelationKind, Detail, EntityId, EventType, Fact,
    FactPayload, Relation, Tally,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::runs::{Count, CountFold, Counted, runs};

/// What one fact counts towards: the subject the burst is about, what narrows the key beyond
/// it (an Event's reason; empty when nothing does), and what the fact says.
pub struct About {
    /// The entity the burst is about.
    pub subject: EntityId,
    /// Narrows the key beyond the subject.
    pub qualifier: Arc<str>,
    /// What the fact says, as the burst's tally counts it.
    pub said: Arc<str>,
}

/// One kind of burst.
pub struct BurstSpec {
    /// The kind, as correlations name it.
    pub kind: BurstKind,
    /// The payload kind of the facts it counts ([`tapio_model::FactPayload::kind`]).
    pub fact: &'static str,
    /// Its threshold in the configuration.
    pub threshold: fn(&BurstConfig) -> &BurstThreshold,
    /// What a fact counts towards, or `None` when the fact does not count.
    pub about: fn(&Fact) -> Option<About>,
}

/// Every kind of burst.
pub const KINDS: &[BurstSpec] = &[
    BurstSpec {
        kind: BurstKind::ConnectFailures,
        fact: "tcp_connect",
        threshold: connect_failures,
        about: connect_failure,
    },
    BurstSpec {
        kind: BurstKind::WarningEvents,
        fact: "kube_event",
        threshold: warning_events,
        about: warning_event,
    },
];

fn connect_failures(config: &BurstConfig) -> &BurstThreshold {
    &config.connect_failures
}

fn warning_events(config: &BurstConfig) -> &BurstThreshold {
    &config.warning_events
}

/// A failed connect counts towards its remote endpoint, by outcome.
fn connect_failure(fact: &Fact) -> Option<About> {
    match &fact.payload {
        FactPayload::TcpConnect(connect) if connect.outcome.is_failure() => Some(About {
            subject: EntityId::Endpoint {
                address: connect.remote.to_string().into(),
            },
            qualifier: "".into(),
            said: connect.outcome.as_str().into(),
        }),
        _ => None,
    }
}

/// A Warning Event counts towards its object and reason.
fn warning_event(fact: &Fact) -> Option<About> {
    match &fact.payload {
        FactPayload::KubeEvent(event) if event.event_type == EventType::Warning => {
            let reason: Arc<str> = event.reason.as_str().into();
            Some(About {
                subject: event.involved.clone(),
                qualifier: Arc::clone(&reason),
                said: reason,
            })
        }
        _ => None,
    }
}

/// The burst rule, with its configuration.
pub struct Burst {
    /// Each kind with its threshold: (kind, count, within ns).
    kinds: Vec<(&'static BurstSpec, u64, u64)>,
    /// How long a burst stays current after its latest fact, ns.
    keep_for_ns: u64,
}

fn ns(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The rule when `correlation.burst.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let section = &config.burst;
    section.enabled.then(|| {
        let kinds = KINDS
            .iter()
            .map(|spec| {
                let threshold = (spec.threshold)(section);
                (spec, u64::from(threshold.count), ns(threshold.within))
            })
            .collect();
        Box::new(Burst {
            kinds,
            keep_for_ns: ns(section.keep_for),
        }) as Box<dyn Rule>
    })
}

/// One fact of a burst.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Hit {
    evidence: Evidence,
    said: Arc<str>,
}

impl Counted for Hit {
    type Class = Arc<str>;

    fn time(&self) -> u64 {
        self.evidence.time
    }

    fn class(&self) -> Arc<str> {
        Arc::clone(&self.said)
    }
}

/// What a burst is about: its kind, subject and qualifier.
type Key = (BurstKind, EntityId, Arc<str>);

impl Rule for Burst {
    fn name(&self) -> &'static str {
        "burst"
    }

    fn section(&self) -> &'static str {
        "correlation.burst"
    }

    /// The facts some kind of burst counts.
    fn reads(&self, fact: &Fact) -> bool {
        let kind = fact.payload.kind();
        KINDS
            .iter()
            .any(|spec| spec.fact == kind && (spec.about)(fact).is_some())
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let mut built = Vec::new();
        for (spec, count, within_ns) in self.kinds.iter().copied() {
            let (kind, about) = (spec.kind, spec.about);
            let hits = inputs.facts_of(spec.fact).flat_map(move |fact| {
                let About {
                    subject,
                    qualifier,
                    said,
                } = about(&fact)?;
                let hit = Hit {
                    evidence: Evidence::of(&fact),
                    said,
                };
                Some(((kind, subject, qualifier), hit))
            });
            let fold = CountFold::new(count, within_ns, self.keep_for_ns, clock);
            built.push(
                runs(hits, fold, clock.tick_ms())
                    .flat_map(move |(key, run)| correlation(key, run, within_ns)),
            );
        }
        differential_dataflow::collection::concatenate(inputs.facts().scope(), built)
    }
}

/// The correlation of a burst that has reached a level.
fn correlation((kind, subject, _): Key, run: Count<Hit>, within_ns: u64) -> Option<Correlation> {
    let level = run.level?;
    let mut recorded = run.first;
    if level.count > recorded.len() as u64 {
        recorded.push(level.item);
    }
    let chain = recorded
        .iter()
        .enumerate()
        .map(|(index, hit)| {
            let relation = if index == 0 {
                Relation::Start
            } else {
                Relation::FollowedBy
            };
            hit.evidence.hop(&subject, relation)
        })
        .collect();
    Some(Correlation::new(
        CorrelationKind::Burst,
        subject,
        chain,
        Detail::Burst {
            kind,
            count: level.count,
            span_ns: level.span_ns,
            within_ns,
            tally: level
                .tally
                .into_iter()
                .map(|(said, count)| Tally { said, count })
                .collect(),
        },
        Confidence {
            percent: 90,
            basis: vec![Basis::RecurredWithinBound],
        },
    ))
}

#[cfg(test)]
mod tests;
