//! The sentences people read, rendered from a correlation's typed data where it is shown.
//!
//! Nothing rendered here is stored in a correlation, so rewording a sentence changes no
//! correlation's identity.
//!
//! ```
//! use tapio_model::render::explain;
//! use tapio_model::{Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, FactId, Hop,
//!     Observed, Relation};
//!
//! let pod: EntityId = "pod/default/web-1".parse().unwrap();
//! let rs: EntityId = "replicaset/default/web".parse().unwrap();
//! let evidence = FactId::new("kubernetes", "cluster", 1);
//! let hop = |entity: &EntityId, relation| Hop {
//!     entity: entity.clone(),
//!     relation,
//!     fact_id: evidence.clone(),
//!     time: 1_700_000_000_000_000_000,
//!     observed: Observed::OwnerReference,
//! };
//! let correlation = Correlation::new(
//!     CorrelationKind::Ownership,
//!     rs.clone(),
//!     vec![hop(&pod, Relation::Start), hop(&rs, Relation::OwnedBy)],
//!     Detail::Ownership { depth: 1 },
//!     Confidence { percent: 100, basis: vec![Basis::RecordedLinks] },
//! );
//! assert_eq!(explain(&correlation), "pod/default/web-1 is owned by: replicaset/default/web");
//! ```

use std::fmt::Write;

use crate::correlation::{Correlation, CorrelationKind, Detail, Hop, Observed, Relation};
use crate::entity::EntityId;

/// One sentence that says what a correlation concludes.
pub fn explain(correlation: &Correlation) -> String {
    match correlation.kind {
        CorrelationKind::Ownership => explain_ownership(correlation),
        CorrelationKind::OomRestart => explain_oom_restart(correlation),
        CorrelationKind::MemoryExhaustion => explain_memory_exhaustion(correlation),
        CorrelationKind::NodePressureEviction => explain_node_pressure(correlation),
    }
}

fn explain_ownership(correlation: &Correlation) -> String {
    let mut out = String::with_capacity(48 * correlation.chain.len());
    let Some((first, owners)) = correlation.chain.split_first() else {
        return format!("{} has no recorded owners", correlation.root_cause);
    };
    let _ = write!(out, "{} is owned by: ", first.entity);
    write_path(&mut out, owners);
    out
}

fn explain_oom_restart(correlation: &Correlation) -> String {
    let chain = &correlation.chain;
    let find = |wanted: fn(&Observed) -> bool| chain.iter().find(|hop| wanted(&hop.observed));
    let kill = find(|observed| matches!(observed, Observed::OomKill { .. }));
    let exit = find(|observed| matches!(observed, Observed::ProcessExit { .. }));
    let stop = find(|observed| matches!(observed, Observed::ContainerExit { .. }));
    let (Some(kill), Some(exit), Some(stop)) = (kill, exit, stop) else {
        return format!(
            "{} was killed by the kernel OOM killer",
            correlation.root_cause
        );
    };
    let owners: Vec<String> = chain
        .iter()
        .filter(|hop| hop.relation == Relation::OwnedBy)
        .map(|hop| hop.entity.to_string())
        .collect();
    let owners = if owners.is_empty() {
        String::new()
    } else {
        format!(", in {}", owners.join(" of "))
    };
    format!(
        "{} was killed by the kernel OOM killer; it exited {} ms later and {}{owners} stopped {} ms after the kill",
        correlation.root_cause,
        exit.time.saturating_sub(kill.time) / 1_000_000,
        stop.entity,
        stop.time.saturating_sub(kill.time) / 1_000_000,
    )
}

fn explain_memory_exhaustion(correlation: &Correlation) -> String {
    let Detail::Exhaustion {
        resource,
        used,
        limit,
        threshold_percent,
        span_ns,
        ..
    } = &correlation.detail
    else {
        return format!("{} ran out of memory", correlation.root_cause);
    };
    let pod = correlation
        .chain
        .iter()
        .find(|hop| matches!(hop.entity, EntityId::Pod { .. }))
        .map(|hop| format!(" of {}", hop.entity))
        .unwrap_or_default();
    let name = correlation
        .chain
        .iter()
        .find_map(|hop| match &hop.observed {
            Observed::ResourceUsage { container_name, .. } => Some(container_name.clone()),
            _ => None,
        });
    format!(
        "container {}{pod} ({}) used {used} of its {} limit {limit} (at or above {threshold_percent}%); the kernel OOM killer ended it {} s later",
        name.as_deref().unwrap_or("?"),
        correlation.root_cause,
        resource.as_str(),
        span_ns / 1_000_000_000,
    )
}

fn explain_node_pressure(correlation: &Correlation) -> String {
    let Detail::NodePressure {
        condition,
        evicted_pods,
        ..
    } = &correlation.detail
    else {
        return format!("{} was under pressure", correlation.root_cause);
    };
    let pods: Vec<String> = correlation
        .chain
        .iter()
        .skip(1)
        .map(|hop| hop.entity.to_string())
        .collect();
    format!(
        "{} came under {condition} and the kubelet evicted {evicted_pods} pod{}: {}",
        correlation.root_cause,
        if *evicted_pods == 1 { "" } else { "s" },
        pods.join(", ")
    )
}

/// What a hop's observation says, in a few words; `previous` is the hop before it, if any.
pub fn describe_hop(hop: &Hop, previous: Option<&Hop>) -> String {
    match &hop.observed {
        Observed::OomKill {
            comm,
            pid,
            memcg,
            rss_pages,
        } => format!(
            "{comm} (pid {pid}) OOM-killed in memory cgroup {} at {rss_pages} pages resident",
            if memcg.is_empty() { "/" } else { memcg }
        ),
        Observed::ProcessExit {
            comm,
            exit_code,
            signal,
        } => {
            if *signal != 0 {
                format!("{comm} exited on signal {signal}")
            } else {
                format!("{comm} exited with code {exit_code}")
            }
        }
        Observed::ContainerExit {
            container_name,
            exit_code,
            reason,
            restart_count,
        } => format!(
            "container {container_name} exited with code {exit_code} ({reason}), restart count {restart_count}"
        ),
        Observed::OwnerReference => match previous {
            Some(previous) => format!("owner of {}", previous.entity),
            None => "named its owner in an owner reference".to_string(),
        },
        Observed::PodContainer { container_name } => match previous {
            Some(previous) => format!("runs container {container_name} ({})", previous.entity),
            None => format!("container {container_name} of a pod"),
        },
        Observed::ProcessInContainer { filename } => match previous {
            Some(previous) => format!("runs {filename} as {}", previous.entity),
            None => format!("runs {filename} in a container"),
        },
        Observed::ProcessExec { comm, filename } => format!("{comm} executed {filename}"),
        Observed::ProcessFork { comm } => format!("{comm} started a child process"),
        Observed::KubeEvent {
            reason,
            event_type,
            count,
        } => format!(
            "{} Event {reason}, seen {count} time{}",
            event_type.as_str(),
            if *count == 1 { "" } else { "s" }
        ),
        Observed::TcpConnect {
            remote,
            outcome,
            latency_ns,
        } => format!(
            "connect to {remote} {} after {} ms",
            outcome.as_str().replace('_', " "),
            latency_ns / 1_000_000
        ),
        Observed::TcpAccept { remote } => format!("accepted a connection from {remote}"),
        Observed::TcpClose {
            remote,
            reset,
            retransmits,
        } => format!(
            "connection with {remote} closed{}, {retransmits} retransmits",
            if *reset { " by a reset" } else { "" }
        ),
        Observed::TcpRetransmit { remote, count } => {
            format!("{count} retransmits to {remote}")
        }
        Observed::FileOpenFailed { path, errno } => {
            format!("opening {path} failed with errno {errno}")
        }
        Observed::FileChanged { path, op } => format!("{path}: {}", op.as_str()),
        Observed::ContainerReady {
            container_name,
            ready,
            restart_count,
        } => format!(
            "container {container_name} {}, restart count {restart_count}",
            if *ready { "ready" } else { "not ready" }
        ),
        Observed::ResourceUsage {
            container_name,
            resource,
            used,
            limit,
            above,
        } => format!(
            "container {container_name} {} {used} of its {} limit {limit}",
            if *above { "uses" } else { "fell back to" },
            resource.as_str()
        ),
        Observed::EndpointReady { address, ready } => format!(
            "endpoint {address} {}",
            if *ready { "ready" } else { "not ready" }
        ),
        Observed::NodeCondition {
            condition,
            status,
            reason,
        } => format!("{condition} is {} ({reason})", status.as_str()),
    }
}

/// Every hop of a chain with what it says, in order.
pub fn describe_chain(chain: &[Hop]) -> Vec<String> {
    chain
        .iter()
        .enumerate()
        .map(|(index, hop)| describe_hop(hop, index.checked_sub(1).map(|at| &chain[at])))
        .collect()
}

/// Writes the entities of `hops` as `a → b → c`.
fn write_path(out: &mut String, hops: &[Hop]) {
    for (index, hop) in hops.iter().enumerate() {
        if index > 0 {
            out.push_str(" → ");
        }
        let _ = write!(out, "{}", hop.entity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlation::{Basis, Confidence};
    use crate::observation::{ConditionStatus, EventType, FactId, Resource};

    fn hop(entity: &str, relation: Relation, time: u64, observed: Observed) -> Hop {
        Hop {
            entity: entity.parse().expect("entity"),
            relation,
            fact_id: FactId::new("test", "n", time),
            time,
            observed,
        }
    }

    fn confidence() -> Confidence {
        Confidence {
            percent: 90,
            basis: vec![Basis::EveryStepObserved],
        }
    }

    #[test]
    fn memory_exhaustion_says_use_limit_threshold_and_the_kill() {
        let second = 1_000_000_000;
        let chain = vec![
            hop(
                "container/c1",
                Relation::Start,
                0,
                Observed::ResourceUsage {
                    container_name: "app".into(),
                    resource: Resource::Memory,
                    used: 950,
                    limit: 1000,
                    above: true,
                },
            ),
            hop(
                "process/n/7/1",
                Relation::Caused,
                3 * second,
                Observed::OomKill {
                    comm: "java".into(),
                    pid: 7,
                    memcg: "".into(),
                    rss_pages: 1,
                },
            ),
            hop(
                "pod/ns/p0",
                Relation::OwnedBy,
                3 * second,
                Observed::OwnerReference,
            ),
        ];
        let correlation = Correlation::new(
            CorrelationKind::MemoryExhaustion,
            "container/c1".parse().expect("entity"),
            chain,
            Detail::Exhaustion {
                resource: Resource::Memory,
                used: 950,
                limit: 1000,
                threshold_percent: 90,
                span_ns: 3 * second,
                within_ns: 600 * second,
            },
            confidence(),
        );
        assert_eq!(
            explain(&correlation),
            "container app of pod/ns/p0 (container/c1) used 950 of its memory limit 1000 (at or above 90%); the kernel OOM killer ended it 3 s later"
        );
    }

    #[test]
    fn node_pressure_names_the_condition_and_the_evicted_pods() {
        let evicted = |pod: &str| {
            hop(
                pod,
                Relation::Caused,
                2,
                Observed::KubeEvent {
                    reason: "Evicted".into(),
                    event_type: EventType::Warning,
                    count: 1,
                },
            )
        };
        let chain = vec![
            hop(
                "node/n1",
                Relation::Start,
                1,
                Observed::NodeCondition {
                    condition: "MemoryPressure".into(),
                    status: ConditionStatus::True,
                    reason: "KubeletHasInsufficientMemory".into(),
                },
            ),
            evicted("pod/ns/p0"),
            evicted("pod/ns/p1"),
        ];
        let correlation = Correlation::new(
            CorrelationKind::NodePressureEviction,
            "node/n1".parse().expect("entity"),
            chain,
            Detail::NodePressure {
                condition: "MemoryPressure".into(),
                evicted_pods: 2,
                within_ns: 1,
            },
            confidence(),
        );
        assert_eq!(
            explain(&correlation),
            "node/n1 came under MemoryPressure and the kubelet evicted 2 pods: pod/ns/p0, pod/ns/p1"
        );
    }
}
