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

use crate::correlation::{
    BurstKind, Correlation, CorrelationKind, Detail, EtcdTrouble, Hop, Observed, Relation,
};
use crate::entity::EntityId;
use crate::observation::{DnsOutcome, EtcdOperation, RuntimeObject, RuntimeState, dns_type_name};

/// One sentence that says what a correlation concludes.
pub fn explain(correlation: &Correlation) -> String {
    match correlation.kind {
        CorrelationKind::Ownership => explain_ownership(correlation),
        CorrelationKind::OomRestart => explain_oom_restart(correlation),
        CorrelationKind::DeclaredSequence => explain_declared_sequence(correlation),
        CorrelationKind::BadRollout => explain_bad_rollout(correlation),
        CorrelationKind::ServiceDependency => explain_service_dependency(correlation),
        CorrelationKind::BlastRadius => explain_blast_radius(correlation),
        CorrelationKind::DnsFailure => explain_dns_failure(correlation),
        CorrelationKind::RestartLoop => explain_restart_loop(correlation),
        CorrelationKind::Burst => explain_burst(correlation),
        CorrelationKind::CoOccurrence => explain_co_occurrence(correlation),
        CorrelationKind::MemoryExhaustion => explain_memory_exhaustion(correlation),
        CorrelationKind::NodePressureEviction => explain_node_pressure(correlation),
        CorrelationKind::ConfigChangeRestart => explain_config_change(correlation),
        CorrelationKind::EtcdSlowdown => explain_etcd_slowdown(correlation),
        CorrelationKind::PodNetworkFailure => explain_pod_network(correlation),
    }
}

fn explain_pod_network(correlation: &Correlation) -> String {
    let Detail::PodNetwork {
        failed_adds,
        plugin,
        network,
    } = &correlation.detail
    else {
        return format!("network setup failed ({})", correlation.root_cause);
    };
    let pod = correlation
        .chain
        .last()
        .map_or_else(|| "a pod".to_string(), |hop| hop.entity.to_string());
    let times = if *failed_adds == 1 {
        "once".to_string()
    } else {
        format!("{failed_adds} times")
    };
    let mut out = format!(
        "{pod} has no network: the CNI ADD of its sandbox {} on network {network} failed {times} and has not succeeded since",
        correlation.root_cause
    );
    if !plugin.is_empty() {
        let _ = write!(out, " (plugin {plugin})");
    }
    if let Some(Observed::CniOperation {
        error: Some((_, message)),
        ..
    }) = correlation.chain.first().map(|hop| &hop.observed)
    {
        let _ = write!(out, ": {message}");
    }
    out
}

fn explain_declared_sequence(correlation: &Correlation) -> String {
    let Detail::DeclaredSequence {
        name,
        steps,
        span_ns,
        within_ns,
    } = &correlation.detail
    else {
        return format!("a declared sequence starting at {}", correlation.root_cause);
    };
    let mut out = format!("sequence {name} from {}: ", correlation.root_cause);
    let matched = correlation.chain.iter().take(steps.len());
    for (index, (step, hop)) in steps.iter().zip(matched).enumerate() {
        if index > 0 {
            out.push_str(" → ");
        }
        let _ = write!(out, "{step} at {}", hop.entity);
    }
    let _ = write!(
        out,
        ", {} ms from first to last step (bound {} ms)",
        span_ns / 1_000_000,
        within_ns / 1_000_000
    );
    let owners: Vec<String> = correlation
        .chain
        .iter()
        .skip(steps.len())
        .map(|hop| hop.entity.to_string())
        .collect();
    if !owners.is_empty() {
        let _ = write!(out, "; then {}", owners.join(" → "));
    }
    out
}

fn explain_dns_failure(correlation: &Correlation) -> String {
    let chain = &correlation.chain;
    let lookup = chain
        .iter()
        .find(|hop| matches!(hop.observed, Observed::DnsQuery { .. }));
    let Detail::DnsFailure {
        server,
        failed_lookups,
        connect_errors,
        window_ns,
    } = &correlation.detail
    else {
        return format!("DNS lookups failed ({})", correlation.root_cause);
    };
    let pod = lookup.map_or_else(|| "a pod".to_string(), |hop| hop.entity.to_string());
    let mut out = format!(
        "{pod} had {failed_lookups} failed DNS lookups via {server} within {} s",
        window_ns / 1_000_000_000
    );
    if *connect_errors > 0 {
        let _ = write!(
            out,
            " and {connect_errors} failed connect{}",
            if *connect_errors == 1 { "" } else { "s" }
        );
    }
    match chain.first() {
        Some(cause) if !matches!(cause.observed, Observed::DnsQuery { .. }) => {
            let _ = write!(
                out,
                "; the DNS server {} failed first: {}",
                cause.entity,
                describe_hop(cause, None)
            );
        }
        _ => out.push_str("; nothing was observed about the DNS server itself"),
    }
    out
}

/// A duration for people: `850 ms`, `42 s`, `12 min`, `3 h`.
fn span(ns: u64) -> String {
    let ms = ns / 1_000_000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

fn explain_restart_loop(correlation: &Correlation) -> String {
    let Detail::RestartLoop {
        container_name,
        count,
        span_ns,
        period_ns,
        exits,
        ..
    } = &correlation.detail
    else {
        return format!("{} keeps restarting", correlation.root_cause);
    };
    let pod = correlation
        .chain
        .iter()
        .rev()
        .find(|hop| matches!(hop.entity, crate::EntityId::Pod { .. }))
        .map_or_else(
            || correlation.root_cause.to_string(),
            |hop| hop.entity.to_string(),
        );
    let ended: Vec<String> = exits
        .iter()
        .map(|tally| {
            format!(
                "{}× code {} ({})",
                tally.count, tally.exit_code, tally.reason
            )
        })
        .collect();
    let mut out = format!(
        "container {container_name} of {pod} ended {count} times in {} (about every {}): {}",
        span(*span_ns),
        span(*period_ns),
        ended.join(", ")
    );
    if let Some(kill) = correlation
        .chain
        .iter()
        .find(|hop| matches!(hop.observed, Observed::OomKill { .. }))
    {
        let _ = write!(out, "; the kernel OOM killer ended {}", kill.entity);
    }
    out
}

fn explain_bad_rollout(correlation: &Correlation) -> String {
    let Detail::BadRollout {
        deployment,
        previous,
        failed_pods,
        after_ns,
    } = &correlation.detail
    else {
        return format!("{} is a bad rollout", correlation.root_cause);
    };
    format!(
        "the rollout of {deployment} to {} went bad: {failed_pods} new pod{} failed, the first \
         {} s after the new ReplicaSet appeared, while the pods of {previous} were ready",
        correlation.root_cause,
        if *failed_pods == 1 { "" } else { "s" },
        after_ns / 1_000_000_000,
    )
}

fn explain_service_dependency(correlation: &Correlation) -> String {
    let (Some(first), Some(last)) = (correlation.chain.first(), correlation.chain.last()) else {
        return format!("{} is depended on", correlation.root_cause);
    };
    let via = match &correlation.detail {
        Detail::Dependency { via, .. } => via.as_str().replace('_', " "),
        _ => "traffic".to_owned(),
    };
    format!(
        "{} depends on {} ({}, by {via})",
        first.entity,
        last.entity,
        describe_hop(last, Some(first))
    )
}

fn explain_blast_radius(correlation: &Correlation) -> String {
    let Detail::BlastRadius {
        failure,
        failed,
        depth,
        impact,
    } = &correlation.detail
    else {
        return format!("{} reaches its dependents", correlation.root_cause);
    };
    let Some(dependent) = correlation.chain.last() else {
        return format!("{failed} failed");
    };
    let what = match failure {
        Some(kind) => kind.as_str().replace('_', " "),
        None => "endpoint not ready".to_owned(),
    };
    let mut path: Vec<String> = correlation
        .chain
        .iter()
        .skip_while(|hop| hop.entity != *failed)
        .map(|hop| hop.entity.to_string())
        .collect();
    path.dedup();
    format!(
        "{failed} failed ({what}); {} depends on it {depth} edge{} away ({}), {} impact",
        dependent.entity,
        if *depth == 1 { "" } else { "s" },
        path.join(" → "),
        impact.as_str()
    )
}

fn explain_burst(correlation: &Correlation) -> String {
    let Detail::Burst {
        kind,
        count,
        span_ns,
        tally,
        ..
    } = &correlation.detail
    else {
        return format!("a burst about {}", correlation.root_cause);
    };
    let said: Vec<String> = tally
        .iter()
        .map(|tally| format!("{} {}", tally.count, tally.said.replace('_', " ")))
        .collect();
    let what = match kind {
        BurstKind::ConnectFailures => "failed connects to",
        BurstKind::WarningEvents => "Warning Events about",
    };
    format!(
        "{count} {what} {} in {} ({})",
        correlation.root_cause,
        span(*span_ns),
        said.join(", ")
    )
}

fn explain_co_occurrence(correlation: &Correlation) -> String {
    let Detail::CoOccurrence { pods, span_ns, .. } = &correlation.detail else {
        return format!("containers on {} ended together", correlation.root_cause);
    };
    let mut out = format!(
        "containers of {pods} pods on {} ended within {}: ",
        correlation.root_cause,
        span(*span_ns)
    );
    write_path(&mut out, correlation.chain.get(1..).unwrap_or_default());
    out.push_str("; a node-wide cause such as a container runtime or kubelet restart");
    out
}

fn explain_config_change(correlation: &Correlation) -> String {
    let Detail::ConfigChange {
        path, pods, gap_ns, ..
    } = &correlation.detail
    else {
        return format!("{} changed a configuration file", correlation.root_cause);
    };
    let node = correlation
        .chain
        .get(1)
        .map_or_else(|| "its node".to_string(), |hop| hop.entity.to_string());
    let mut out = format!(
        "{} changed {path}, and {} later containers of {pods} pods on {node} ended together: ",
        correlation.root_cause,
        span(*gap_ns)
    );
    write_path(&mut out, correlation.chain.get(2..).unwrap_or_default());
    out
}

fn explain_etcd_slowdown(correlation: &Correlation) -> String {
    let Detail::EtcdSlowdown {
        trouble,
        latency_ns,
        reason,
        gap_ns,
        ..
    } = &correlation.detail
    else {
        return format!("etcd at {} was in trouble", correlation.root_cause);
    };
    let what = match trouble {
        EtcdTrouble::Slow => format!("answered a read in {} ms", latency_ns / 1_000_000),
        EtcdTrouble::Unavailable => "did not answer".to_string(),
        EtcdTrouble::LeaderChange => "changed leader".to_string(),
    };
    let object = correlation
        .chain
        .get(1)
        .map_or_else(|| "an object".to_string(), |hop| hop.entity.to_string());
    format!(
        "etcd at {} {what}, and {} later Kubernetes reported {reason} for {object}; \
         linked by time order only",
        correlation.root_cause,
        span(*gap_ns)
    )
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
    let restart = chain
        .iter()
        .find(|hop| {
            matches!(
                hop.observed,
                Observed::RuntimeChange {
                    state: RuntimeState::Started,
                    ..
                }
            )
        })
        .map(|hop| {
            format!(
                "; {} started in its place {} ms after the kill",
                hop.entity,
                hop.time.saturating_sub(kill.time) / 1_000_000
            )
        })
        .unwrap_or_default();
    format!(
        "{} was killed by the kernel OOM killer; it exited {} ms later and {}{owners} stopped {} ms after the kill{restart}",
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
        Observed::DnsQuery {
            name,
            qtype,
            server,
            outcome,
            latency_ns,
        } => {
            let qtype = dns_type_name(*qtype).map_or_else(|| format!("TYPE{qtype}"), Into::into);
            let outcome = match outcome {
                DnsOutcome::Answered => "answered".to_string(),
                DnsOutcome::NxDomain => "NXDOMAIN".to_string(),
                DnsOutcome::ServFail => "SERVFAIL".to_string(),
                DnsOutcome::Refused => "REFUSED".to_string(),
                DnsOutcome::Error => "failed with an error code".to_string(),
                DnsOutcome::TimedOut => "timed out".to_string(),
            };
            format!(
                "lookup of {name} ({qtype}) via {server} {outcome} after {} ms",
                latency_ns / 1_000_000
            )
        }
        Observed::UnitChange {
            state,
            result,
            exit,
        } => {
            let mut text = format!("unit {}", state.as_str().replace('_', " "));
            if !result.is_empty() {
                text.push_str(&format!(" with result {result}"));
            }
            match exit {
                Some(exit) if exit.code == "exited" => {
                    text.push_str(&format!(", its process exited with status {}", exit.status));
                }
                Some(exit) => {
                    text.push_str(&format!(
                        ", its process was {} by signal {}",
                        if exit.code == "dumped" {
                            "dumped"
                        } else {
                            "killed"
                        },
                        exit.status
                    ));
                }
                None => {}
            }
            text
        }
        Observed::CniOperation {
            command,
            network,
            ips,
            error,
            duration_ns,
        } => {
            let command = command.as_str().to_uppercase();
            let took = span(*duration_ns);
            match error {
                Some((plugin, message)) => {
                    let plugin = if plugin.is_empty() {
                        String::new()
                    } else {
                        format!(" in plugin {plugin}")
                    };
                    format!(
                        "CNI {command} on network {network} failed{plugin} after {took}: {message}"
                    )
                }
                None if ips.is_empty() => format!("CNI {command} on network {network} took {took}"),
                None => format!(
                    "CNI {command} on network {network} assigned {} in {took}",
                    ips.join(", ")
                ),
            }
        }
        Observed::EndpointReady { address, ready } => format!(
            "endpoint {address} {}",
            if *ready { "ready" } else { "not ready" }
        ),
        Observed::NodeCondition {
            condition,
            status,
            reason,
        } => format!("{condition} is {} ({reason})", status.as_str()),
        Observed::RuntimeChange {
            object,
            state,
            container_name,
            exit_code,
            reason,
        } => {
            let what = match object {
                RuntimeObject::Sandbox => "pod sandbox".to_string(),
                RuntimeObject::Container => format!("container {container_name}"),
            };
            match state {
                RuntimeState::Exited if reason.is_empty() => {
                    format!("runtime: {what} exited with code {exit_code}")
                }
                RuntimeState::Exited => {
                    format!("runtime: {what} exited with code {exit_code} ({reason})")
                }
                _ => format!("runtime: {what} {}", state.as_str()),
            }
        }
        Observed::EtcdKeyChange {
            resource,
            namespace,
            name,
            operation,
            revision,
        } => {
            let object = if namespace.is_empty() {
                format!("{resource}/{name}")
            } else {
                format!("{resource}/{namespace}/{name}")
            };
            let done = match operation {
                EtcdOperation::Create => "created",
                EtcdOperation::Update => "updated",
                EtcdOperation::Delete => "deleted",
            };
            format!("etcd key of {object} {done} at revision {revision}")
        }
        Observed::EtcdStatus {
            healthy,
            latency_ns,
            leader,
        } => {
            if *healthy {
                format!(
                    "etcd answered a read in {} ms, leader {leader:x}",
                    latency_ns / 1_000_000
                )
            } else {
                format!("etcd did not answer within {} ms", latency_ns / 1_000_000)
            }
        }
        Observed::EtcdLeaderChange {
            previous,
            leader,
            raft_term,
        } => format!("etcd leader changed from {previous:x} to {leader:x} (term {raft_term})"),
        Observed::EtcdCompaction { revision } => {
            format!("etcd history compacted up to revision {revision}")
        }
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
    use super::explain;
    use crate::correlation::{
        Basis, Confidence, Correlation, CorrelationKind, Detail, Hop, Impact, Observed, Relation,
        Resolution,
    };
    use crate::observation::{ConnectOutcome, FactId};

    fn hop(entity: &str, relation: Relation, observed: Observed) -> Hop {
        Hop {
            entity: entity.parse().expect("entity"),
            relation,
            fact_id: FactId::new("kernel", "n1", 1),
            time: 1_700_000_000_000_000_000,
            observed,
        }
    }

    fn connect(outcome: ConnectOutcome) -> Observed {
        Observed::TcpConnect {
            remote: "10.96.0.10:80".into(),
            outcome,
            latency_ns: 2_000_000,
        }
    }

    #[test]
    fn dependencies_and_blast_radii_read_as_sentences() {
        let established = connect(ConnectOutcome::Established);
        let edge = Correlation::new(
            CorrelationKind::ServiceDependency,
            "service/shop/api".parse().expect("entity"),
            vec![
                hop("pod/shop/web", Relation::Start, established.clone()),
                hop("service/shop/api", Relation::DependsOn, established.clone()),
            ],
            Detail::Dependency {
                via: Resolution::ClusterIp,
                resolved_by: FactId::new("kubernetes", "cluster", 6),
                window_ns: 300_000_000_000,
            },
            Confidence {
                percent: 95,
                basis: vec![Basis::ObservedTraffic],
            },
        );
        assert_eq!(
            explain(&edge),
            "pod/shop/web depends on service/shop/api \
             (connect to 10.96.0.10:80 established after 2 ms, by cluster ip)"
        );
        let not_ready = Observed::EndpointReady {
            address: "10.244.0.5:8080".into(),
            ready: false,
        };
        let blast = Correlation::new(
            CorrelationKind::BlastRadius,
            "pod/shop/api".parse().expect("entity"),
            vec![
                hop("pod/shop/api", Relation::Start, not_ready.clone()),
                hop("service/shop/api", Relation::Affects, not_ready),
                hop("pod/shop/web", Relation::Affects, established),
                hop(
                    "pod/shop/web",
                    Relation::FollowedBy,
                    connect(ConnectOutcome::Refused),
                ),
            ],
            Detail::BlastRadius {
                failure: None,
                failed: "pod/shop/api".parse().expect("entity"),
                depth: 2,
                impact: Impact::Observed,
            },
            Confidence {
                percent: 90,
                basis: vec![Basis::DependencyPath, Basis::DependentConnectsFailed],
            },
        );
        assert_eq!(
            explain(&blast),
            "pod/shop/api failed (endpoint not ready); pod/shop/web depends on it 2 edges away \
             (pod/shop/api → service/shop/api → pod/shop/web), observed impact"
        );
    }
}

#[cfg(test)]
mod performance_sentences {
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
