//! What the rules share: the facts they read, the state, the ownership chains and the clock,
//! each built once per dataflow however many rules read it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use serde::{Deserialize, Serialize};
use tapio_config::CorrelationConfig;
use tapio_model::{
    Correlation, CorrelationKind, EntityId, Fact, FactId, Hop, Observed, Relation, StateObject,
    StateRecord, TimeNs,
};

use super::ownership::{self, Chains, Links};
use crate::clock::{Tick, TickClock};

/// A piece of evidence: the observation behind a hop, and what it says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Evidence {
    /// Event time of the observation, ns.
    pub time: TimeNs,
    /// The observation.
    pub fact_id: FactId,
    /// What it says.
    pub observed: Observed,
}

impl Evidence {
    /// The evidence a fact gives: its time, its id and what it says.
    pub fn of(fact: &Fact) -> Evidence {
        Evidence {
            time: fact.time_ns,
            fact_id: fact.id.clone(),
            observed: Observed::of_fact(&fact.payload),
        }
    }

    /// The evidence a state record gives, for the records that describe a condition rather
    /// than a link: an endpoint's readiness, a node condition. Its time is when the record
    /// took its current value.
    pub fn of_state(record: &StateRecord) -> Option<Evidence> {
        let observed = match &record.object {
            StateObject::ServiceEndpoint(endpoint) => Observed::EndpointReady {
                address: match &endpoint.endpoint {
                    EntityId::Endpoint { address } => address.clone(),
                    other => other.to_string().into(),
                },
                ready: endpoint.ready,
            },
            StateObject::NodeCondition(condition) => Observed::NodeCondition {
                condition: condition.condition.as_str().into(),
                status: condition.status,
                reason: condition.reason.as_str().into(),
            },
            _ => return None,
        };
        Some(Evidence {
            time: record.since_ns,
            fact_id: record.evidence.clone(),
            observed,
        })
    }

    /// A hop at `entity`, related to the hop before by `relation`, backed by this evidence.
    pub fn hop(&self, entity: &EntityId, relation: Relation) -> Hop {
        Hop {
            entity: entity.clone(),
            relation,
            fact_id: self.fact_id.clone(),
            time: self.time,
            observed: self.observed.clone(),
        }
    }
}

/// Facts arranged by the entity they are about ([`Fact::subject`]).
pub type FactsBySubject<'scope> =
    Arranged<'scope, TraceAgent<ValSpine<EntityId, Fact, Tick, isize>>>;

/// Ownership chains arranged by the entity they start at.
pub type ArrangedChains<'scope> =
    Arranged<'scope, TraceAgent<ValSpine<EntityId, Vec<Hop>, Tick, isize>>>;

/// The inputs every rule builds from. Derived collections (facts of one kind, the ownership
/// chains) are built the first time a rule asks and shared with every later one.
pub struct RuleInputs<'scope> {
    facts: VecCollection<'scope, Tick, Fact, isize>,
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    clock: TickClock,
    config: CorrelationConfig,
    by_kind: RefCell<BTreeMap<&'static str, VecCollection<'scope, Tick, Fact, isize>>>,
    ownership: RefCell<Option<(Links<'scope>, Chains<'scope>)>>,
    chains_by_entity: RefCell<Option<ArrangedChains<'scope>>>,
    by_subject: RefCell<Option<FactsBySubject<'scope>>>,
    built: RefCell<Vec<VecCollection<'scope, Tick, Correlation, isize>>>,
}

impl<'scope> RuleInputs<'scope> {
    /// Inputs over the facts the enabled rules read and the state.
    pub fn new(
        facts: VecCollection<'scope, Tick, Fact, isize>,
        state: VecCollection<'scope, Tick, StateRecord, isize>,
        clock: TickClock,
        config: &CorrelationConfig,
    ) -> RuleInputs<'scope> {
        RuleInputs {
            facts,
            state,
            clock,
            config: config.clone(),
            by_kind: RefCell::new(BTreeMap::new()),
            ownership: RefCell::new(None),
            chains_by_entity: RefCell::new(None),
            by_subject: RefCell::new(None),
            built: RefCell::new(Vec::new()),
        }
    }

    /// Records what a rule built, so that rules later in the table can build on it
    /// ([`RuleInputs::correlations_of`]).
    pub fn add_built(&self, correlations: VecCollection<'scope, Tick, Correlation, isize>) {
        self.built.borrow_mut().push(correlations);
    }

    /// The correlations of `kinds` that rules earlier in [`super::TABLE`] built: how a rule
    /// extends another's conclusion (a failure's dependents, a loop's cause) instead of
    /// re-deriving it. Empty when those rules are disabled or come later in the table.
    pub fn correlations_of(
        &self,
        kinds: &'static [CorrelationKind],
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let built = self.built.borrow().clone();
        differential_dataflow::collection::concatenate(self.facts.scope(), built)
            .filter(move |correlation| kinds.contains(&correlation.kind))
    }

    /// Every fact some enabled rule reads.
    pub fn facts(&self) -> VecCollection<'scope, Tick, Fact, isize> {
        self.facts.clone()
    }

    /// The facts of one payload kind ([`tapio_model::FactPayload::kind`]), filtered once.
    pub fn facts_of(&self, kind: &'static str) -> VecCollection<'scope, Tick, Fact, isize> {
        self.by_kind
            .borrow_mut()
            .entry(kind)
            .or_insert_with(|| {
                self.facts
                    .clone()
                    .filter(move |fact| fact.payload.kind() == kind)
            })
            .clone()
    }

    /// Every fact some enabled rule reads, arranged by its subject once and shared by every
    /// rule that joins on it.
    pub fn facts_by_subject(&self) -> FactsBySubject<'scope> {
        self.by_subject
            .borrow_mut()
            .get_or_insert_with(|| {
                self.facts
                    .clone()
                    .map(|fact| (fact.subject(), fact))
                    .arrange_by_key()
            })
            .clone()
    }

    /// The state: Kubernetes objects, pod containers, processes in containers, ...
    pub fn state(&self) -> VecCollection<'scope, Tick, StateRecord, isize> {
        self.state.clone()
    }

    /// Logical time.
    pub fn clock(&self) -> TickClock {
        self.clock
    }

    /// The correlation configuration, every rule's section included.
    pub fn config(&self) -> &CorrelationConfig {
        &self.config
    }

    /// Every Kubernetes object's and container's chain of owners
    /// (see [`ownership::chains`]).
    pub fn ownership_chains(&self) -> Chains<'scope> {
        self.ownership_parts().1
    }

    /// [`RuleInputs::ownership_chains`] arranged by the entity each starts at, once, for every
    /// rule that joins on them.
    pub fn ownership_chains_by_entity(&self) -> ArrangedChains<'scope> {
        self.chains_by_entity
            .borrow_mut()
            .get_or_insert_with(|| self.ownership_chains().arrange_by_key())
            .clone()
    }

    /// Which container each process runs in: `(process, link to the container)`, a process's
    /// link held for the configured grace after it exits.
    pub fn process_links(&self) -> VecCollection<'scope, Tick, (EntityId, ownership::Link), isize> {
        self.ownership_parts().0.processes
    }

    fn ownership_parts(&self) -> (Links<'scope>, Chains<'scope>) {
        self.ownership
            .borrow_mut()
            .get_or_insert_with(|| {
                let settings = &self.config.ownership;
                let links = ownership::links(
                    self.state.clone(),
                    settings.process_exit_grace,
                    settings.container_exit_grace,
                );
                let chains = ownership::chains(links.objects.clone(), settings.max_depth);
                (links, chains)
            })
            .clone()
    }
}
