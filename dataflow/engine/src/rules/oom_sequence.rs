//! **OOM sequence.** When the kernel's OOM killer picks a process, that process dies, and if it
//! was the main process of a container the container exits too (exit code 137, reason
//! `OOMKilled`), and Kubernetes restarts it. This rule finds that sequence: an OOM kill of a
//! process, then that same process's exit, then its container's exit, all within a time bound
//! Δ of the kill, joined on the process identity and then on the container id; of several
//! candidates for a step, the earliest is kept. When the container's owners are known, the
//! chain continues up through its pod and the pod's owners, so the correlation reads from the
//! kernel to the control plane. When the container runtime reports the restart — a new
//! container of the same pod and container name started within Δ of the exit — it joins the
//! chain after the exit, so one chain holds the kernel's kill, the runtime's `OOMKilled` exit
//! and the restart. A match stays current for a while after the kill (`keep_for`) and is then
//! retracted.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, OomSequenceConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactPayload, Hop,
    Relation, RuntimeObject, RuntimeState, TimeNs,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::sequence::earliest_within;
use crate::operators::window::retain;

/// The signal the OOM killer ends its victims with.
const SIGKILL: u32 = 9;

/// The OOM sequence rule, with its configuration.
pub struct OomSequence {
    /// Δ: the exit and the container exit must follow the kill within this, ns.
    within_ns: u64,
    /// How long a match stays current after the kill, ms.
    keep_for_ms: u64,
}

/// The rule when `correlation.oom_sequence.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let OomSequenceConfig {
        enabled,
        within,
        keep_for,
    } = &config.oom_sequence;
    enabled.then(|| {
        Box::new(OomSequence {
            within_ns: u64::try_from(within.as_nanos()).unwrap_or(u64::MAX),
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        }) as Box<dyn Rule>
    })
}

/// The kill, as the rule needs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Kill {
    evidence: Evidence,
    container_id: Option<Arc<str>>,
}

/// The victim's exit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Exit {
    evidence: Evidence,
    container_id: Option<Arc<str>>,
}

/// The container's exit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct ContainerStop {
    evidence: Evidence,
    oom_reason: bool,
    pod: Option<EntityId>,
    container_name: Arc<str>,
}

/// The runtime starting a new container of the same pod and container name: the restart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Restart {
    evidence: Evidence,
    container: EntityId,
}

/// A complete kernel-level match: kill, exit, container stop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Sequence {
    process: EntityId,
    kill: Kill,
    exit: Exit,
    container: EntityId,
    stop: ContainerStop,
    restart: Option<Restart>,
}

fn process_of(fact: &Fact, pid: u32, start_ns: TimeNs) -> EntityId {
    EntityId::Process {
        node: fact.id.node.clone(),
        pid,
        start_ns,
    }
}

impl Rule for OomSequence {
    fn name(&self) -> &'static str {
        "OOM sequence"
    }

    fn section(&self) -> &'static str {
        "correlation.oom_sequence"
    }

    /// Kills, container exits, the exits of processes that were killed (the OOM killer
    /// sends SIGKILL), and the runtime's starts of containers of a known pod (restarts).
    fn reads(&self, fact: &Fact) -> bool {
        match &fact.payload {
            FactPayload::OomKill(_) | FactPayload::ContainerExit(_) => true,
            FactPayload::ProcessExit(exit) => exit.signal == SIGKILL,
            FactPayload::RuntimeChange(change) => restart_key(change).is_some(),
            _ => false,
        }
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within = self.within_ns;
        let keep = |facts| {
            retain(facts, self.keep_for_ms, move |fact: &Fact| {
                clock.tick_of(fact.time_ns)
            })
        };
        let kills = keep(inputs.facts_of("oom_kill")).flat_map(|fact| match &fact.payload {
            FactPayload::OomKill(kill) => Some((
                process_of(&fact, kill.pid, kill.start_ns),
                Kill {
                    evidence: Evidence::of(&fact),
                    container_id: kill.container_id.clone(),
                },
            )),
            _ => None,
        });
        let exits = keep(inputs.facts_of("process_exit")).flat_map(|fact| match &fact.payload {
            FactPayload::ProcessExit(exit) if exit.signal == SIGKILL => Some((
                process_of(&fact, exit.pid, exit.start_ns),
                Exit {
                    evidence: Evidence::of(&fact),
                    container_id: exit.container_id.clone(),
                },
            )),
            _ => None,
        });
        let stops = keep(inputs.facts_of("container_exit")).flat_map(|fact| match &fact.payload {
            FactPayload::ContainerExit(stop) => Some((
                stop.container_id.clone(),
                ContainerStop {
                    evidence: Evidence::of(&fact),
                    oom_reason: stop.reason == "OOMKilled" || stop.exit_code == 137,
                    pod: stop.pod.clone(),
                    container_name: stop.container_name.as_str().into(),
                },
            )),
            _ => None,
        });

        // Kill → the same process's earliest exit within Δ → that container's earliest exit
        // within Δ of the kill.
        let killed_and_exited = earliest_within(
            kills,
            exits,
            within,
            |kill: &Kill| kill.evidence.time,
            |exit: &Exit| exit.evidence.time,
        )
        .flat_map(|(process, (kill, exit))| {
            let container = kill.container_id.clone().or(exit.container_id.clone())?;
            Some((container, (process, kill, exit)))
        });
        let sequences = earliest_within(
            killed_and_exited,
            stops,
            within,
            |(_, kill, _): &(EntityId, Kill, Exit)| kill.evidence.time,
            |stop: &ContainerStop| stop.evidence.time,
        )
        .map(|(container, ((process, kill, exit), stop))| Sequence {
            process,
            container: EntityId::Container { id: container },
            kill,
            exit,
            stop,
            restart: None,
        });

        // The restart: the earliest start of a container of the same pod and name within Δ of
        // the exit. A sequence with one replaces the same sequence without.
        let restarts =
            keep(inputs.facts_of("runtime_change")).flat_map(|fact| match &fact.payload {
                FactPayload::RuntimeChange(change) => restart_key(change).map(|key| {
                    (
                        key,
                        Restart {
                            evidence: Evidence::of(&fact),
                            container: EntityId::Container {
                                id: change.id.clone(),
                            },
                        },
                    )
                }),
                _ => None,
            });
        let restarted = earliest_within(
            sequences.clone().flat_map(|sequence| {
                let pod = sequence.stop.pod.clone()?;
                Some(((pod, sequence.stop.container_name.clone()), sequence))
            }),
            restarts,
            within,
            |sequence: &Sequence| sequence.stop.evidence.time,
            |restart: &Restart| restart.evidence.time,
        )
        .flat_map(|(_, (sequence, restart))| {
            (restart.container != sequence.container).then_some((sequence, restart))
        });
        let sequences = sequences
            .concat(restarted.clone().map(|(sequence, _)| sequence).negate())
            .concat(restarted.map(|(sequence, restart)| Sequence {
                restart: Some(restart),
                ..sequence
            }))
            .map(|sequence| (sequence.container.clone(), sequence));

        let owned = sequences.clone().join_core(
            inputs.ownership_chains_by_entity(),
            move |_, sequence, chain| Some(correlation(sequence, Some(chain), within)),
        );
        let unowned = sequences
            .antijoin(
                inputs
                    .ownership_chains()
                    .map(|(entity, _)| entity)
                    .distinct(),
            )
            .map(move |(_, sequence)| correlation(&sequence, None, within));
        owned.concat(unowned)
    }
}

fn correlation(sequence: &Sequence, ownership: Option<&Vec<Hop>>, within_ns: u64) -> Correlation {
    let Sequence {
        process,
        kill,
        exit,
        container,
        stop,
        restart,
    } = sequence;
    let mut chain = vec![
        kill.evidence.hop(process, Relation::Start),
        exit.evidence.hop(process, Relation::FollowedBy),
        stop.evidence.hop(container, Relation::Caused),
    ];
    if let Some(restart) = restart {
        chain.push(
            restart
                .evidence
                .hop(&restart.container, Relation::FollowedBy),
        );
    }
    match ownership {
        // The container's chain starts at the container itself: its owners follow.
        Some(hops) => chain.extend(hops.iter().skip(1).cloned()),
        None => {
            if let Some(pod) = &stop.pod {
                chain.push(stop.evidence.hop(pod, Relation::OwnedBy));
            }
        }
    }
    let basis = vec![
        Basis::EveryStepObserved,
        if stop.oom_reason {
            Basis::ContainerEndSaysOom
        } else {
            Basis::ContainerEndSaysOther
        },
    ];
    Correlation::new(
        CorrelationKind::OomRestart,
        process.clone(),
        chain,
        Detail::Sequence {
            steps: if restart.is_some() { 4 } else { 3 },
            span_ns: restart
                .as_ref()
                .map_or(stop.evidence.time, |restart| restart.evidence.time)
                .saturating_sub(kill.evidence.time),
            within_ns,
        },
        Confidence {
            percent: if stop.oom_reason { 95 } else { 75 },
            basis,
        },
    )
}

/// The pod and container name a runtime change restarts: a container of a labelled pod
/// started.
fn restart_key(change: &tapio_model::RuntimeChange) -> Option<(EntityId, Arc<str>)> {
    match (change.object, change.state, &change.pod) {
        (RuntimeObject::Container, RuntimeState::Started, Some(pod))
            if !change.container_name.is_empty() =>
        {
            Some((pod.clone(), change.container_name.as_str().into()))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests;
