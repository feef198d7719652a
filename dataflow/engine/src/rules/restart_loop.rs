//! **Restart loop.** A pod's container that keeps ending is in a restart loop: Kubernetes
//! restarts it and it ends again. The rule counts the exits of one container of one pod — keyed
//! by the pod and the container's name, because every restart gets a new container id — and a
//! loop is a run of exits each at most `within` after the one before; once it holds `count`
//! exits (default 3 within 10 minutes) it is reported with its count, the estimated time
//! between restarts and how the exits ended (exit codes and reasons). As the loop goes on its
//! correlation is replaced only when the count reaches 5, 10, 20, 50, 100, ..., not on every
//! restart, and what it says depends only on the exits up to that count. A loop stays current
//! until `keep_for` after its latest exit, then it is retracted; an exit later than `within`
//! after the latest starts a new loop. Only exits that name their pod and container are
//! counted (the kubelet's): the kernel reports the same exits without them.
//!
//! When the OOM sequence rule has matched a kernel OOM kill to one of the exits the loop's
//! correlation records (same container id), the cause is known: the chain then starts at that
//! kill and its process's exit, and continues with that container's exit (`caused`) and the
//! loop's later recorded exits; the root is the killed process. Otherwise the chain is the
//! loop's first `count` exits and the exit that brought it to its count, each on the pod
//! (`start`, then `followed_by`), and the root is the pod. The cause is joined for as long as
//! the OOM sequence rule holds its correlation.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{CorrelationConfig, RestartLoopConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, ExitTally, Fact,
    FactPayload, Hop, Observed, Relation,
};

use super::{Evidence, Rule, RuleInputs};
use crate::clock::Tick;
use crate::operators::runs::{Count, CountFold, Counted, runs};

/// The restart loop rule, with its configuration.
pub struct RestartLoop {
    /// Exits that make a loop.
    count: u64,
    /// Each exit must follow the one before within this, ns.
    within_ns: u64,
    /// How long a loop stays current after its latest exit, ns.
    keep_for_ns: u64,
}

/// The rule when `correlation.restart_loop.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let RestartLoopConfig {
        enabled,
        count,
        within,
        keep_for,
    } = &config.restart_loop;
    let ns =
        |duration: &std::time::Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    enabled.then(|| {
        Box::new(RestartLoop {
            count: u64::from(*count),
            within_ns: ns(within),
            keep_for_ns: ns(keep_for),
        }) as Box<dyn Rule>
    })
}

/// One exit of the container, as the loop counts it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Exit {
    evidence: Evidence,
    container_id: Arc<str>,
    exit_code: i32,
    reason: Arc<str>,
}

impl Counted for Exit {
    type Class = (i32, Arc<str>);

    fn time(&self) -> u64 {
        self.evidence.time
    }

    fn class(&self) -> (i32, Arc<str>) {
        (self.exit_code, Arc::clone(&self.reason))
    }
}

/// A loop at the level it last reached: everything its correlation says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Loop {
    pod: EntityId,
    container_name: Arc<str>,
    /// The first `count` exits, then the exit that brought the loop to its level if that is a
    /// later one.
    recorded: Vec<Exit>,
    level: u64,
    span_ns: u64,
    exits: Vec<ExitTally>,
}

impl Loop {
    /// The loop a run is, once it has reached a level.
    fn of((pod, container_name): (EntityId, Arc<str>), run: Count<Exit>) -> Option<Loop> {
        let level = run.level?;
        let mut recorded = run.first;
        if level.count > recorded.len() as u64 {
            recorded.push(level.item);
        }
        Some(Loop {
            pod,
            container_name,
            recorded,
            level: level.count,
            span_ns: level.span_ns,
            exits: level
                .tally
                .into_iter()
                .map(|((exit_code, reason), count)| ExitTally {
                    exit_code,
                    reason,
                    count,
                })
                .collect(),
        })
    }
}

/// The container exit an OOM sequence correlation ends a container with: its container id.
fn oom_container(correlation: &Correlation) -> Option<Arc<str>> {
    correlation
        .chain
        .iter()
        .find_map(|hop| match (&hop.entity, &hop.observed) {
            (EntityId::Container { id }, Observed::ContainerExit { .. }) => Some(Arc::clone(id)),
            _ => None,
        })
}

impl Rule for RestartLoop {
    fn name(&self) -> &'static str {
        "restart loop"
    }

    fn section(&self) -> &'static str {
        "correlation.restart_loop"
    }

    /// Container exits that name their pod and container.
    fn reads(&self, fact: &Fact) -> bool {
        matches!(&fact.payload, FactPayload::ContainerExit(exit)
            if exit.pod.is_some() && !exit.container_name.is_empty())
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        let clock = inputs.clock();
        let within_ns = self.within_ns;
        let exits = inputs
            .facts_of("container_exit")
            .flat_map(|fact| match &fact.payload {
                FactPayload::ContainerExit(exit) if !exit.container_name.is_empty() => {
                    let pod = exit.pod.clone()?;
                    let key = (pod, Arc::<str>::from(exit.container_name.as_str()));
                    Some((
                        key,
                        Exit {
                            evidence: Evidence::of(&fact),
                            container_id: Arc::clone(&exit.container_id),
                            exit_code: exit.exit_code,
                            reason: exit.reason.as_str().into(),
                        },
                    ))
                }
                _ => None,
            });
        let fold = CountFold::new(self.count, self.within_ns, self.keep_for_ns, clock);
        let loops = runs(exits, fold, clock.tick_ms()).flat_map(|(key, run)| Loop::of(key, run));

        // The cause: an OOM sequence that ended one of the recorded exits' containers; of
        // several, the one of the earliest recorded exit (then the least correlation).
        let causes = inputs
            .correlations_of(&[CorrelationKind::OomRestart])
            .flat_map(|correlation| Some((oom_container(&correlation)?, correlation)));
        let recorded = loops.clone().flat_map(|found| {
            (0..found.recorded.len())
                .map(|index| {
                    let id = Arc::clone(&found.recorded[index].container_id);
                    (id, (found.clone(), index))
                })
                .collect::<Vec<_>>()
        });
        let caused = recorded
            .join_map(causes, |_, (found, index), cause| {
                (found.clone(), (*index, cause.clone()))
            })
            .reduce(|_, causes, output| output.push((causes[0].0.clone(), 1isize)));
        let with_cause = caused.clone().map(move |(found, (index, cause))| {
            correlation(&found, Some((index, &cause)), within_ns)
        });
        let without_cause = loops
            .map(|found| (found, ()))
            .antijoin(caused.map(|(found, _)| found).distinct())
            .map(move |(found, ())| correlation(&found, None, within_ns));
        with_cause.concat(without_cause)
    }
}

/// The correlation of a loop, with the OOM sequence that ended its `index`-th recorded exit
/// when one did.
fn correlation(found: &Loop, cause: Option<(usize, &Correlation)>, within_ns: u64) -> Correlation {
    let exit_hop = |exit: &Exit, relation| exit.evidence.hop(&found.pod, relation);
    let (root, chain, basis) = match cause {
        None => {
            let chain = found
                .recorded
                .iter()
                .enumerate()
                .map(|(index, exit)| {
                    exit_hop(
                        exit,
                        if index == 0 {
                            Relation::Start
                        } else {
                            Relation::FollowedBy
                        },
                    )
                })
                .collect();
            (found.pod.clone(), chain, vec![Basis::RecurredWithinBound])
        }
        Some((index, oom)) => {
            // The kill and its process's exit: the OOM chain's hops before its container's.
            let mut chain: Vec<Hop> = oom
                .chain
                .iter()
                .take_while(|hop| !matches!(hop.observed, Observed::ContainerExit { .. }))
                .cloned()
                .collect();
            for (at, exit) in found.recorded.iter().enumerate().skip(index) {
                chain.push(exit_hop(
                    exit,
                    if at == index {
                        Relation::Caused
                    } else {
                        Relation::FollowedBy
                    },
                ));
            }
            let basis = vec![Basis::RecurredWithinBound, Basis::ExitsWereOomKills];
            (oom.root_cause.clone(), chain, basis)
        }
    };
    let percent = if cause.is_some() { 95 } else { 90 };
    Correlation::new(
        CorrelationKind::RestartLoop,
        root,
        chain,
        Detail::RestartLoop {
            container_name: Arc::clone(&found.container_name),
            count: found.level,
            span_ns: found.span_ns,
            period_ns: found.span_ns / found.level.saturating_sub(1).max(1),
            within_ns,
            exits: found.exits.clone(),
        },
        Confidence { percent, basis },
    )
}

#[cfg(test)]
mod tests;
