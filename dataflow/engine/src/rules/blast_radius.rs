//! **Blast radius.** When something fails, everything that depends on it, directly or through
//! others, may fail with it. An entity fails when a correlation of another rule says so (its
//! chain names the entity: an OOM-killed process's container and pod) or when a Service
//! endpoint it serves stops being ready (one that was ready and is still listed; a new pod that
//! is not ready yet has not failed). From the failed entity the rule follows the service
//! graph backwards, from what is depended on to its dependents, up to a maximum depth, and
//! makes one correlation per dependent. Of several failures that name one entity, the one that
//! began first stands for it. A correlation holds the failure's hops first (up to the failed
//! entity), then each dependent on the way with the evidence of its dependency edge (a Service
//! routing to a pod carries the endpoint's readiness, so a not-ready endpoint shows on that
//! hop), ending at the dependent. A dependent whose own connects to the entity before it on the
//! path failed (refused, timed out, or another error) after the failure began is *observed*
//! impact, with the earliest such connect as a last hop; the others are *potential* impact.
//! The result follows its inputs: it goes when the failure's correlation or the
//! endpoint's unreadiness goes, or when an edge on the path expires.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tapio_config::{BlastRadiusConfig, CorrelationConfig};
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, Fact, FactId, FactPayload,
    Hop, Impact, Relation, StateObject, StateRecord, TimeNs,
};

use super::{Evidence, Rule, RuleInputs, service_graph};
use crate::clock::Tick;
use crate::operators::lapse::lapses;
use crate::operators::reachability::{Path, reach_paths};

/// The kinds of correlation that say an entity failed: every entity in their chains is a
/// failure's starting point.
pub const FAILURE_KINDS: &[CorrelationKind] = &[
    CorrelationKind::OomRestart,
    CorrelationKind::RestartLoop,
    CorrelationKind::CoOccurrence,
    CorrelationKind::DeclaredSequence,
    CorrelationKind::BadRollout,
    CorrelationKind::MemoryExhaustion,
    CorrelationKind::NodePressureEviction,
    CorrelationKind::ConfigChangeRestart,
];

/// The blast radius rule, with its configuration.
pub struct BlastRadius {
    max_depth: u32,
    impact_window_ms: u64,
    mapping_grace_ms: u64,
}

/// The rule when `correlation.blast_radius.enabled`.
pub fn from_config(config: &CorrelationConfig) -> Option<Box<dyn Rule>> {
    let BlastRadiusConfig {
        enabled,
        max_depth,
        impact_window,
    } = &config.blast_radius;
    let millis =
        |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    enabled.then(|| {
        Box::new(BlastRadius {
            max_depth: *max_depth,
            impact_window_ms: millis(*impact_window),
            mapping_grace_ms: millis(config.service_graph.mapping_grace),
        }) as Box<dyn Rule>
    })
}

/// Where a failure starts, as the reachability carries it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Failure {
    /// Which failure: the correlation's kind, root and first fact, or (no kind) the endpoint
    /// record that stopped being ready.
    id: (Option<CorrelationKind>, EntityId, FactId),
    /// When it began: the first hop's time.
    began: TimeNs,
    /// Its hops up to and including the failed entity.
    hops: Arc<[Hop]>,
}

/// One dependent of one failure, before its impact is known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Reached {
    failed: EntityId,
    failure: Failure,
    path: Path<EntityId, Evidence>,
}

impl Reached {
    /// The dependent and the entity it depends on along the path.
    fn last_edge(&self) -> (EntityId, EntityId) {
        let dependent = self.path.last().map_or(&self.failed, |(node, _)| node);
        let before = match self.path.len() {
            0 | 1 => &self.failed,
            len => &self.path[len - 2].0,
        };
        (dependent.clone(), before.clone())
    }
}

impl Rule for BlastRadius {
    fn name(&self) -> &'static str {
        "blast radius"
    }

    fn section(&self) -> &'static str {
        "correlation.blast_radius"
    }

    /// Failed connects: a dependent's impact.
    fn reads(&self, fact: &Fact) -> bool {
        failed_connect(fact)
    }

    fn build<'scope>(
        &self,
        inputs: &RuleInputs<'scope>,
    ) -> VecCollection<'scope, Tick, Correlation, isize> {
        // Edges from what is depended on to its dependent, with the dependency's evidence.
        let edges = inputs
            .correlations_of(&[CorrelationKind::ServiceDependency])
            .flat_map(|correlation| {
                let [dependent, dependency] = correlation.chain.as_slice() else {
                    return None;
                };
                let evidence = Evidence {
                    time: dependency.time,
                    fact_id: dependency.fact_id.clone(),
                    observed: dependency.observed.clone(),
                };
                Some((
                    dependency.entity.clone(),
                    (dependent.entity.clone(), evidence),
                ))
            });

        // Failures another rule concluded: every entity its chain names.
        let concluded = inputs
            .correlations_of(FAILURE_KINDS)
            .flat_map(|correlation| {
                let began = correlation.chain.first().map_or(0, |hop| hop.time);
                let first = correlation.chain.first().map(|hop| hop.fact_id.clone())?;
                let id = (
                    Some(correlation.kind),
                    correlation.root_cause.clone(),
                    first,
                );
                let mut seen: Vec<&EntityId> = Vec::new();
                let mut out = Vec::new();
                for (index, hop) in correlation.chain.iter().enumerate() {
                    if seen.contains(&&hop.entity) {
                        continue;
                    }
                    seen.push(&hop.entity);
                    let failure = Failure {
                        id: id.clone(),
                        began,
                        hops: correlation.chain[..=index].into(),
                    };
                    out.push((hop.entity.clone(), failure));
                }
                Some(out)
            })
            .flat_map(|seeds| seeds);
        // Endpoints that stopped being ready (were ready before, with no break in their
        // listing: a new pod that is not ready yet has not failed): their pod (or Service, when
        // no pod is named) failed, unless a concluded failure already names it.
        let endpoints = inputs.state().flat_map(|record| match &record.object {
            StateObject::ServiceEndpoint(endpoint) => {
                let key = (
                    endpoint.service.clone(),
                    endpoint.endpoint.clone(),
                    endpoint.pod.clone(),
                );
                Some((key, record))
            }
            _ => None,
        });
        let not_ready = lapses(endpoints, endpoint_ready)
            .flat_map(|(_, record)| match &record.object {
                StateObject::ServiceEndpoint(endpoint) => {
                    let failed = endpoint.pod.clone().unwrap_or(endpoint.service.clone());
                    let evidence = Evidence::of_state(&record)?;
                    let failure = Failure {
                        id: (None, failed.clone(), evidence.fact_id.clone()),
                        began: evidence.time,
                        hops: vec![evidence.hop(&failed, Relation::Start)].into(),
                    };
                    Some((failed, failure))
                }
                _ => None,
            })
            .antijoin(concluded.clone().map(|(entity, _)| entity).distinct());
        // Of several failures naming one entity, the one that began first (then by kind, root
        // and first fact) stands for it: one OOM kill named by three rules reaches each
        // dependent once.
        let seeds = concluded
            .concat(not_ready)
            .map(|(failed, failure)| (failed, ((failure.began, failure.id.clone()), failure)))
            .reduce(|_, failures, output| {
                if let Some(((_, failure), _)) = failures.iter().find(|(_, count)| *count > 0) {
                    output.push(((*failure).clone(), 1isize));
                }
            });

        // Each failed entity's dependents, searched once however many failures name it; then
        // per failure and dependent, the shortest path from the entity of the failure nearest
        // its start.
        let routes = reach_paths(
            edges,
            seeds.clone().map(|(failed, _)| failed),
            self.max_depth,
        )
        .map(|(dependent, (failed, path))| (failed, (dependent, path)));
        let reached = routes
            .join_map(seeds, |failed, (dependent, path), failure| {
                let order = (path.len(), failure.hops.len());
                (
                    (failure.id.clone(), dependent.clone()),
                    (
                        order,
                        Reached {
                            failed: failed.clone(),
                            failure: failure.clone(),
                            path: path.clone(),
                        },
                    ),
                )
            })
            .reduce(|_, candidates, output| {
                if let Some(((_, reached), _)) = candidates.iter().find(|(_, count)| *count > 0) {
                    output.push(((*reached).clone(), 1isize));
                }
            })
            .map(|(_, reached)| reached);

        // Observed impact: the dependent's failed connects to the entity before it, after the
        // failure began; the earliest is the evidence.
        let failed = service_graph::held_traffic(
            inputs,
            inputs.facts_of("tcp_connect").filter(failed_connect),
            self.impact_window_ms,
        );
        let failed_connects = service_graph::resolve(inputs, failed, self.mapping_grace_ms)
            .map(|(pair, resolved)| (pair, resolved.evidence));
        let keyed = reached.map(|reached| (reached.last_edge(), reached));
        let observed = keyed
            .clone()
            .join_map(failed_connects, |_, reached, evidence| {
                (reached.clone(), evidence.clone())
            })
            .filter(|(reached, evidence)| evidence.time >= reached.failure.began)
            .reduce(|_, connects, output| {
                if let Some((evidence, _)) = connects.iter().find(|(_, count)| *count > 0) {
                    output.push(((*evidence).clone(), 1isize));
                }
            });
        let potential = keyed
            .map(|(_, reached)| reached)
            .concat(observed.clone().map(|(reached, _)| reached).negate())
            .map(|reached| correlation(&reached, None));
        observed
            .map(|(reached, evidence)| correlation(&reached, Some(&evidence)))
            .concat(potential)
    }
}

/// Whether a record is a ready Service endpoint.
fn endpoint_ready(record: &StateRecord) -> bool {
    matches!(&record.object, StateObject::ServiceEndpoint(endpoint) if endpoint.ready)
}

/// A connect the rule reads: one that failed.
fn failed_connect(fact: &Fact) -> bool {
    matches!(&fact.payload, FactPayload::TcpConnect(connect) if connect.outcome.is_failure())
}

/// The correlation for one dependent: the failure's hops, each dependent on the path with its
/// edge's evidence, and for observed impact the dependent's earliest failed connect.
fn correlation(reached: &Reached, failed_connect: Option<&Evidence>) -> Correlation {
    let Reached {
        failed,
        failure,
        path,
    } = reached;
    let mut chain: Vec<Hop> = failure.hops.to_vec();
    for (node, evidence) in path {
        chain.push(evidence.hop(node, Relation::Affects));
    }
    let (dependent, _) = reached.last_edge();
    let (impact, percent, basis) = match failed_connect {
        Some(evidence) => {
            chain.push(evidence.hop(&dependent, Relation::FollowedBy));
            (
                Impact::Observed,
                90,
                vec![Basis::DependencyPath, Basis::DependentConnectsFailed],
            )
        }
        None => (
            Impact::Potential,
            50,
            vec![Basis::DependencyPath, Basis::NoFailedConnects],
        ),
    };
    let root = failure.id.1.clone();
    Correlation::new(
        CorrelationKind::BlastRadius,
        root,
        chain,
        Detail::BlastRadius {
            failure: failure.id.0,
            failed: failed.clone(),
            depth: u32::try_from(path.len()).unwrap_or(u32::MAX),
            impact,
        },
        Confidence { percent, basis },
    )
}

#[cfg(test)]
mod tests;
