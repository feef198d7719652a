//! **OOM sequence.** When the kernel's OOM killer picks a process, that process dies, and if it
//! was the main process of a container the container exits too (exit code 137, reason
//! `OOMKilled`), and Kubernetes restarts it. This rule finds that sequence: an OOM kill of a
//! process, then that same process's exit, then its container's exit, all within a time bound
//! Δ of the kill, joined on the process identity and then on the container id. When the
//! container is known to the ownership rule, the chain continues up through its pod and the
//! pod's owners, so the correlation reads from the kernel to the control plane. A match stays
//! current for a while after the kill (`keep_for`) and is then retracted.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_model::{Correlation, CorrelationKind, EntityId, Fact, FactPayload, Hop, TimeNs};

use super::Evidence;
use super::ownership::Chains;
use super::window::retain;
use crate::clock::{Tick, TickClock};

/// The signal the OOM killer ends its victims with.
const SIGKILL: u32 = 9;

/// Settings of the OOM sequence rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomSequenceSettings {
    /// Δ: the exit and the container exit must follow the kill within this, ns.
    pub within_ns: u64,
    /// How long a match stays current after the kill, ms.
    pub keep_for_ms: u64,
}

/// The kill, as the rule needs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Kill {
    time: TimeNs,
    evidence: Evidence,
    container_id: Option<String>,
}

/// The victim's exit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Exit {
    time: TimeNs,
    evidence: Evidence,
    container_id: Option<String>,
}

/// The container's exit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct ContainerStop {
    time: TimeNs,
    evidence: Evidence,
    oom_reason: bool,
    pod: Option<EntityId>,
}

/// A complete kernel-level match: kill, exit, container stop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Sequence {
    process: EntityId,
    kill: Kill,
    exit: Exit,
    container: EntityId,
    stop: ContainerStop,
}

fn process_of(fact: &Fact, pid: u32, start_ns: TimeNs) -> EntityId {
    EntityId::Process {
        node: fact.id.node.clone(),
        pid,
        start_ns,
    }
}

/// Whether a fact can be part of a sequence: kills, container exits, and the exits of processes
/// that were killed (the OOM killer sends SIGKILL).
pub(crate) fn reads(fact: &Fact) -> bool {
    match &fact.payload {
        FactPayload::OomKill(_) | FactPayload::ContainerExit(_) => true,
        FactPayload::ProcessExit(exit) => exit.signal == SIGKILL,
        _ => false,
    }
}

/// OOM sequences as correlations, enriched with the container's ownership chain when known.
pub fn correlations<'scope>(
    facts: VecCollection<'scope, Tick, Fact, isize>,
    chains: Option<Chains<'scope>>,
    clock: TickClock,
    settings: &OomSequenceSettings,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    // Only what a sequence is made of is kept for `keep_for`: kills, container exits, and the
    // exits of processes that were killed (the OOM killer sends SIGKILL). Everything else is
    // dropped before it costs state.
    let relevant = facts.filter(reads);
    let kept = retain(relevant, settings.keep_for_ms, move |fact| {
        clock.tick_of(fact.time_ns)
    });
    let within = settings.within_ns;

    let kills = kept.clone().flat_map(|fact| match &fact.payload {
        FactPayload::OomKill(kill) => Some((
            process_of(&fact, kill.pid, kill.start_ns),
            Kill {
                time: fact.time_ns,
                evidence: Evidence {
                    time: fact.time_ns,
                    what: format!(
                        "{} (pid {}) OOM-killed in memory cgroup {} at {} pages resident",
                        kill.comm,
                        kill.pid,
                        if kill.memcg.is_empty() {
                            "/"
                        } else {
                            &kill.memcg
                        },
                        kill.rss_pages
                    )
                    .into(),
                    fact_id: fact.id.clone(),
                },
                container_id: kill.container_id.clone(),
            },
        )),
        _ => None,
    });
    let exits = kept.clone().flat_map(|fact| match &fact.payload {
        FactPayload::ProcessExit(exit) => Some((
            process_of(&fact, exit.pid, exit.start_ns),
            Exit {
                time: fact.time_ns,
                evidence: Evidence {
                    time: fact.time_ns,
                    what: if exit.signal != 0 {
                        format!("{} exited on signal {}", exit.comm, exit.signal)
                    } else {
                        format!("{} exited with code {}", exit.comm, exit.exit_code)
                    }
                    .into(),
                    fact_id: fact.id.clone(),
                },
                container_id: exit.container_id.clone(),
            },
        )),
        _ => None,
    });
    let stops = kept.flat_map(|fact| match &fact.payload {
        FactPayload::ContainerExit(stop) => Some((
            stop.container_id.clone(),
            ContainerStop {
                time: fact.time_ns,
                evidence: Evidence {
                    time: fact.time_ns,
                    what: format!(
                        "container {} exited with code {} ({}), restart count {}",
                        stop.container_name, stop.exit_code, stop.reason, stop.restart_count
                    )
                    .into(),
                    fact_id: fact.id.clone(),
                },
                oom_reason: stop.reason == "OOMKilled" || stop.exit_code == 137,
                pod: stop.pod.clone(),
            },
        )),
        _ => None,
    });

    // Kill → the same process's first exit within Δ.
    let killed_and_exited = kills
        .join(exits)
        .filter(move |(_, (kill, exit))| exit.time >= kill.time && exit.time - kill.time <= within)
        .map(|(process, (kill, exit))| ((process, kill), exit))
        .reduce(|_, exits, output| output.push((exits[0].0.clone(), 1isize)))
        .flat_map(|((process, kill), exit)| {
            let container = kill.container_id.clone().or(exit.container_id.clone())?;
            Some((container, (process, kill, exit)))
        });

    // → that container's first exit within Δ of the kill.
    let sequences = killed_and_exited
        .join(stops)
        .filter(move |(_, ((_, kill, _), stop))| {
            stop.time >= kill.time && stop.time - kill.time <= within
        })
        .map(|(container, ((process, kill, exit), stop))| {
            ((container, process, kill), (stop, exit))
        })
        .reduce(|_, stops, output| output.push((stops[0].0.clone(), 1isize)))
        .map(|((container, process, kill), (stop, exit))| {
            let container = EntityId::Container {
                id: container.into(),
            };
            let sequence = Sequence {
                process,
                container: container.clone(),
                kill,
                exit,
                stop,
            };
            (container, sequence)
        });

    match chains {
        Some(chains) => {
            let owned = sequences
                .clone()
                .join_map(chains.clone(), |_, sequence, chain| {
                    correlation(sequence, Some(chain))
                });
            let unowned = sequences
                .antijoin(chains.map(|(entity, _)| entity).distinct())
                .map(|(_, sequence)| correlation(&sequence, None));
            owned.concat(unowned)
        }
        None => sequences.map(|(_, sequence)| correlation(&sequence, None)),
    }
}

fn correlation(sequence: &Sequence, ownership: Option<&Vec<Hop>>) -> Correlation {
    let Sequence {
        process,
        kill,
        exit,
        container,
        stop,
    } = sequence;
    let mut chain = vec![
        kill.evidence.hop(process),
        exit.evidence.hop(process),
        stop.evidence.hop(container),
    ];
    let mut owners = String::new();
    match ownership {
        Some(hops) => {
            chain.extend(hops.iter().cloned());
            let names: Vec<String> = hops[1..].iter().map(|hop| hop.entity.to_string()).collect();
            owners = format!(", in {}", names.join(" of "));
        }
        None => {
            if let Some(pod) = &stop.pod {
                chain.push(stop.evidence.hop(pod));
                owners = format!(", in {pod}");
            }
        }
    }
    Correlation {
        kind: CorrelationKind::OomRestart,
        root_cause: process.clone(),
        explanation: format!(
            "{process} was killed by the kernel OOM killer; it exited {} ms later and {container}{owners} stopped {} ms after the kill",
            (exit.time - kill.time) / 1_000_000,
            (stop.time - kill.time) / 1_000_000,
        ),
        chain,
        confidence: if stop.oom_reason { 95 } else { 75 },
    }
}
