//! **Declared sequences.** A sequence is a list of steps A → B → C ... declared in the
//! configuration (`correlation.sequences`), so a user adds one without writing Rust; the
//! built-in ones ship in the same form. Each step selects observations of one kind that meet
//! simple conditions (a container exit with a reason, an Event with reason `Unhealthy`, a
//! container or Service endpoint that stopped being ready), and names the entity it shares
//! with the step before (`on: process`, `container`, `pod`, `service`, ...). A match is one
//! observation per step, each on the entity it shares with the one before, none before the
//! step it follows (by more than the sequence's `slack`, for times recorded at a coarser
//! precision than the step before's) and all within the bound Δ (`within`) of the first; of
//! several candidates for a step, the earliest is kept. A match stays current for `keep_for` after its first
//! step, and goes away earlier if an observation in it is retracted (an endpoint becoming
//! ready again), when the next candidate takes its place.
//!
//! The chain has one hop per step, in order, each at the entity its observation is about
//! (the process of an OOM kill, the container of a container exit, the Service of an endpoint
//! readiness change). A hop on the same entity as the hop before *followed* it
//! (`followed_by`); a hop that crosses to another entity was *caused* by the one before
//! (`caused`). After the steps come the owners of the last container or pod when they are
//! known: of the last step's own entity when that is a container or pod, otherwise of the pod
//! behind the last step's endpoint, which the Service `depends_on`.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, EntityKind, SequenceConfig, StepConfig, StepKind};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactPayload, Hop,
    Relation, StateObject, StateRecord, UnitState,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::sequence::earliest_in;
use crate::operators::window::retain;

/// How sure a declared match is: every step was observed as declared, but the declaration,
/// not Tapio, says the steps belong together.
const CONFIDENCE: u8 = 80;

/// The rule: every enabled declared sequence.
pub struct DeclaredSequences {
    sequences: Vec<Arc<Declared>>,
}

/// One enabled sequence, as the rule runs it.
#[derive(Debug)]
struct Declared {
    name: Arc<str>,
    steps: Vec<StepConfig>,
    /// The entity each step after the first shares with the step before.
    links: Vec<EntityKind>,
    kinds: Vec<Arc<str>>,
    within_ns: u64,
    /// How far a step may come before the step it follows, ns.
    slack_ns: u64,
    keep_for_ms: u64,
}

impl Declared {
    /// The sequence as the rule runs it; `None` for one that validation refuses (a step after
    /// the first without its link).
    fn new(config: &SequenceConfig) -> Option<Declared> {
        let links = config
            .steps
            .iter()
            .skip(1)
            .map(|step| step.on)
            .collect::<Option<Vec<_>>>()?;
        Some(Declared {
            name: config.name.as_str().into(),
            steps: config.steps.clone(),
            links,
            kinds: config
                .steps
                .iter()
                .map(|step| step.kind.as_str().into())
                .collect(),
            within_ns: u64::try_from(config.within.as_nanos()).unwrap_or(u64::MAX),
            slack_ns: u64::try_from(config.slack.as_nanos()).unwrap_or(u64::MAX),
            keep_for_ms: u64::try_from(config.keep_for.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// The rule when at least one sequence in `correlation.sequences` is enabled.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let sequences: Vec<Arc<Declared>> = config
        .sequences
        .iter()
        .filter(|sequence| sequence.enabled && sequence.steps.len() >= 2)
        .filter_map(|sequence| Declared::new(sequence).map(Arc::new))
        .collect();
    (!sequences.is_empty()).then(|| Box::new(DeclaredSequences { sequences }) as Box<dyn Rule>)
}

/// An observation a step selected: its evidence and the entities it is about, the one its
/// hop names first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Selected {
    /// The observation.
    pub(crate) evidence: Evidence,
    /// What it is about; never empty.
    pub(crate) about: Vec<EntityId>,
}

impl Selected {
    /// The entity of kind `on` the observation is about, if any.
    fn entity(&self, on: EntityKind) -> Option<&EntityId> {
        self.about
            .iter()
            .find(|entity| entity.kind() == on.as_str())
    }
}

/// The process a kernel fact names: pids are per node, so the node comes from the fact.
fn process(fact: &Fact, pid: u32, start_ns: u64) -> EntityId {
    EntityId::Process {
        node: fact.id.node.clone(),
        pid,
        start_ns,
    }
}

/// The node a fact was observed on.
fn node(fact: &Fact) -> EntityId {
    EntityId::Node {
        name: Arc::clone(&fact.id.node),
    }
}

fn container(id: &Option<Arc<str>>) -> Option<EntityId> {
    id.as_ref()
        .filter(|id| !id.is_empty())
        .map(|id| EntityId::Container { id: Arc::clone(id) })
}

/// The step's selection of a fact: `None` unless the fact is of the step's kind and meets its
/// conditions.
pub(crate) fn select_fact(step: &StepConfig, fact: &Fact) -> Option<Selected> {
    let when = &step.conditions;
    let about: Vec<EntityId> = match (&fact.payload, step.kind) {
        (FactPayload::OomKill(kill), StepKind::OomKill) => [
            Some(process(fact, kill.pid, kill.start_ns)),
            container(&kill.container_id),
        ]
        .into_iter()
        .flatten()
        .collect(),
        (FactPayload::ProcessExit(exit), StepKind::ProcessExit) => {
            if when.exit_code.is_some_and(|code| code != exit.exit_code)
                || when.signal.is_some_and(|signal| signal != exit.signal)
            {
                return None;
            }
            [
                Some(process(fact, exit.pid, exit.start_ns)),
                container(&exit.container_id),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        (FactPayload::ContainerExit(exit), StepKind::ContainerExit) => {
            if when.exit_code.is_some_and(|code| code != exit.exit_code)
                || when
                    .reason
                    .as_ref()
                    .is_some_and(|reason| *reason != exit.reason)
            {
                return None;
            }
            [
                container(&Some(Arc::clone(&exit.container_id))),
                exit.pod.clone(),
                Some(node(fact)),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        (FactPayload::UnitChange(change), StepKind::UnitRestart) => {
            if change.state != UnitState::Restarted
                || when.unit.as_ref().is_some_and(|unit| *unit != change.unit)
            {
                return None;
            }
            vec![fact.subject(), node(fact)]
        }
        (FactPayload::ContainerReady(ready), StepKind::ContainerReady) => {
            if when.ready.is_some_and(|wanted| wanted != ready.ready) {
                return None;
            }
            [
                container(&Some(Arc::clone(&ready.container_id))),
                Some(ready.pod.clone()),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        (FactPayload::KubeEvent(event), StepKind::KubeEvent) => {
            if when
                .reason
                .as_ref()
                .is_some_and(|reason| *reason != event.reason)
                || when
                    .event_type
                    .as_ref()
                    .is_some_and(|wanted| wanted != event.event_type.as_str())
            {
                return None;
            }
            vec![event.involved.clone()]
        }
        _ => return None,
    };
    (!about.is_empty()).then(|| Selected {
        evidence: Evidence::of(fact),
        about,
    })
}

/// The step's selection of a state record: a Service endpoint's readiness, for
/// `endpoint_ready` steps; its time is when the record took its value.
pub(crate) fn select_state(step: &StepConfig, record: &StateRecord) -> Option<Selected> {
    let StateObject::ServiceEndpoint(endpoint) = &record.object else {
        return None;
    };
    if step.kind != StepKind::EndpointReady
        || step
            .conditions
            .ready
            .is_some_and(|wanted| wanted != endpoint.ready)
    {
        return None;
    }
    let about = [
        Some(endpoint.service.clone()),
        endpoint.pod.clone(),
        Some(endpoint.endpoint.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    Some(Selected {
        evidence: Evidence::of_state(record)?,
        about,
    })
}

/// The fact kind (`FactPayload::kind`) a step reads, `None` for a step on state.
fn fact_kind(kind: StepKind) -> Option<&'static str> {
    match kind {
        StepKind::OomKill => Some("oom_kill"),
        StepKind::ProcessExit => Some("process_exit"),
        StepKind::ContainerExit => Some("container_exit"),
        StepKind::ContainerReady => Some("container_ready"),
        StepKind::KubeEvent => Some("kube_event"),
        StepKind::UnitRestart => Some("unit_change"),
        StepKind::EndpointReady => None,
    }
}

/// The steps matched so far, in order; never empty.
type Partial = Vec<Selected>;

impl Rule for DeclaredSequences {
    fn name(&self) -> &'static str {
        "declared sequences"
    }

    fn section(&self) -> &'static str {
        "correlation.sequences"
    }

    /// The facts some step of an enabled sequence selects.
    fn reads(&self, fact: &Fact) -> bool {
        self.sequences.iter().any(|sequence| {
            sequence
                .steps
                .iter()
                .any(|step| select_fact(step, fact).is_some())
        })
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let built: Vec<_> = self
            .sequences
            .iter()
            .map(|sequence| build_one(inputs, sequence))
            .collect();
        differential_dataflow::collection::concatenate(inputs.facts().scope(), built)
    }
}

/// The observations `step` selects, each held for `keep_for_ms` ticks after its own.
fn selected<'scope>(
    inputs: &RuleInputs<'scope>,
    step: &StepConfig,
    keep_for_ms: u64,
) -> VecCollection<'scope, Tick, Selected, isize> {
    let clock = inputs.clock();
    let step_for_facts = step.clone();
    let step_for_state = step.clone();
    let records = match fact_kind(step.kind) {
        Some(kind) => inputs
            .facts_of(kind)
            .flat_map(move |fact| select_fact(&step_for_facts, &fact)),
        None => inputs
            .state()
            .flat_map(move |record| select_state(&step_for_state, &record)),
    };
    retain(
        with_pods(inputs, records),
        keep_for_ms,
        move |selected: &Selected| clock.tick_of(selected.evidence.time),
    )
}

/// The container an observation is about when it names no pod (the kernel knows containers,
/// not pods).
pub(crate) fn unplaced_container(selected: &Selected) -> Option<EntityId> {
    if selected.entity(EntityKind::Pod).is_some() {
        return None;
    }
    selected.entity(EntityKind::Container).cloned()
}

/// `selected` with the pod of its container added to what it is about, when it names a
/// container but no pod and the container's chain of owners starts with a pod.
pub(crate) fn placed(mut selected: Selected, owners: &[Hop]) -> Selected {
    if let Some(pod) = owners.get(1).filter(|hop| hop.entity.kind() == "pod") {
        selected.about.push(pod.entity.clone());
    }
    selected
}

/// The observations, each about its container's pod too when it names a container but no pod:
/// the pod whose status lists the container (its ownership chain), so that a step on the pod
/// follows a kernel observation of the container.
fn with_pods<'scope>(
    inputs: &RuleInputs<'scope>,
    records: VecCollection<'scope, Tick, Selected, isize>,
) -> VecCollection<'scope, Tick, Selected, isize> {
    let named = records
        .clone()
        .filter(|selected| unplaced_container(selected).is_none());
    let unplaced = records.flat_map(|selected| Some((unplaced_container(&selected)?, selected)));
    let found = unplaced.clone().join_core(
        inputs.ownership_chains_by_entity(),
        |_, selected, owners| Some(placed(selected.clone(), owners)),
    );
    let unknown = unplaced
        .antijoin(
            inputs
                .ownership_chains()
                .map(|(entity, _)| entity)
                .distinct(),
        )
        .map(|(_, selected)| selected);
    named.concat(found).concat(unknown)
}

fn build_one<'scope>(
    inputs: &RuleInputs<'scope>,
    sequence: &Arc<Declared>,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    let (within, slack) = (sequence.within_ns, sequence.slack_ns);
    let mut partial: VecCollection<'scope, Tick, Partial, isize> =
        selected(inputs, &sequence.steps[0], sequence.keep_for_ms).map(|first| vec![first]);
    for (step, &on) in sequence.steps[1..].iter().zip(&sequence.links) {
        let keyed = partial.flat_map(move |steps: Partial| {
            let key = steps.last()?.entity(on)?.clone();
            Some((key, steps))
        });
        let candidates = selected(inputs, step, sequence.keep_for_ms)
            .flat_map(move |next| Some((next.entity(on)?.clone(), next)));
        partial = earliest_in(
            keyed,
            candidates,
            move |steps: &Partial| {
                let first = steps[0].evidence.time;
                let last = steps[steps.len() - 1].evidence.time;
                (last.saturating_sub(slack), first.saturating_add(within))
            },
            |next: &Selected| next.evidence.time,
        )
        .map(|(_, (mut steps, next))| {
            steps.push(next);
            steps
        });
    }

    // The owners of the last container or pod: keyed by it when there is one.
    let (anchored, loose) = {
        let keyed = partial.map(|steps| (anchor(&steps), steps));
        let anchored = keyed
            .clone()
            .flat_map(|(anchor, steps)| Some((anchor?, steps)));
        let loose = keyed.flat_map(|(anchor, steps)| anchor.is_none().then_some(steps));
        (anchored, loose)
    };
    let owned_sequence = Arc::clone(sequence);
    let owned = anchored.clone().join_core(
        inputs.ownership_chains_by_entity(),
        move |anchor, steps, owners| {
            Some(correlation(&owned_sequence, steps, anchor, Some(owners)))
        },
    );
    let unowned_sequence = Arc::clone(sequence);
    let unowned = anchored
        .antijoin(
            inputs
                .ownership_chains()
                .map(|(entity, _)| entity)
                .distinct(),
        )
        .map(move |(anchor, steps)| correlation(&unowned_sequence, &steps, &anchor, None));
    let loose_sequence = Arc::clone(sequence);
    let loose = loose.map(move |steps| correlation_without_owners(&loose_sequence, &steps));
    owned.concat(unowned).concat(loose)
}

/// The container or pod whose owners follow the steps: the last step's own entity when it is
/// one, else the pod (or container) the last step is also about.
pub(crate) fn anchor(steps: &[Selected]) -> Option<EntityId> {
    let last = steps.last()?;
    last.about
        .iter()
        .find(|entity| matches!(entity.kind(), "container" | "pod"))
        .cloned()
}

/// The hops of the steps, in order: the first `start`, then `followed_by` on the same entity
/// as the hop before, `caused` on another.
pub(crate) fn step_hops(steps: &[Selected]) -> Vec<Hop> {
    let mut hops: Vec<Hop> = Vec::with_capacity(steps.len() + 4);
    for step in steps {
        let entity = &step.about[0];
        let relation = match hops.last() {
            None => Relation::Start,
            Some(previous) if previous.entity == *entity => Relation::FollowedBy,
            Some(_) => Relation::Caused,
        };
        hops.push(step.evidence.hop(entity, relation));
    }
    hops
}

fn correlation(
    sequence: &Declared,
    steps: &[Selected],
    anchor: &EntityId,
    owners: Option<&Vec<Hop>>,
) -> Correlation {
    let mut chain = step_hops(steps);
    let last = &steps[steps.len() - 1];
    if last.about[0] != *anchor {
        // The Service's endpoint is served by this pod.
        chain.push(last.evidence.hop(anchor, Relation::DependsOn));
    }
    if let Some(owners) = owners {
        // A chain of owners starts at the anchor itself: its owners follow.
        chain.extend(owners.iter().skip(1).cloned());
    }
    finish(sequence, steps, chain)
}

fn correlation_without_owners(sequence: &Declared, steps: &[Selected]) -> Correlation {
    finish(sequence, steps, step_hops(steps))
}

fn finish(sequence: &Declared, steps: &[Selected], chain: Vec<Hop>) -> Correlation {
    let first = &steps[0];
    let span_ns = steps[steps.len() - 1]
        .evidence
        .time
        .saturating_sub(first.evidence.time);
    Correlation::new(
        CorrelationKind::DeclaredSequence,
        first.about[0].clone(),
        chain,
        Detail::DeclaredSequence {
            name: Arc::clone(&sequence.name),
            steps: sequence.kinds.clone(),
            span_ns,
            within_ns: sequence.within_ns,
        },
        Confidence {
            percent: CONFIDENCE,
            basis: vec![Basis::EveryStepObserved, Basis::DeclaredSteps],
        },
    )
}

#[cfg(test)]
mod tests;
