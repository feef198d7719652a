//! The CNI collector (layer L2; depends on `tapio-sources`, `tapio-model` and `tapio-config`):
//! every CNI ADD, DEL and CHECK on the node, with its result (interfaces, addresses), its
//! error and its duration.
//!
//! CNI has no event interface: the container runtime runs plugin binaries and keeps their
//! answers. So Tapio ships one, `tapio-cni` ([`plugin`]), which the node's CNI configuration
//! runs either around the configured plugins (wrap mode: it runs them itself and sees
//! failures and durations) or as the last plugin of the list (chained mode: successes only).
//! For each operation it sends one datagram ([`report::Report`]) to the agent's unix socket
//! (`collectors.cni.socket`) with a short timeout, and answers the runtime exactly as the
//! plugins did, whether or not the agent is there.
//!
//! This source binds that socket and turns each report into a `cni_operation` fact, its event
//! time the end of the operation. A successful ADD with a pod in `CNI_ARGS` also inserts one
//! `pod_address` state record per assigned address, which the successful DEL of the same
//! sandbox retracts: the time-valid IP → pod mapping the service graph resolves connections
//! with. A datagram that is not a report is logged with what is wrong, counted in `errors`,
//! and skipped.
//!
//! The addresses are held in memory: after an agent restart, addresses assigned before it are
//! known again only from the pods' next ADD (the Kubernetes source's EndpointSlices still map
//! the pods behind Services).

pub mod plugin;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::{CniCollectorConfig, TapioConfig};
use tapio_model::{
    CniCommand, Fact, FactPayload, MAX_PLAUSIBLE_NS, MIN_PLAUSIBLE_NS, Observation, PodAddress,
    StateObject, StateRecord, StateUpdate,
};
use tapio_sources::{BoxFuture, Source, SourceContext, SourceError, now_ns};
use tokio::net::UnixDatagram;

use crate::report::Report;

/// The source kind.
const KIND: &str = "cni";

/// The largest report read; a larger datagram is cut off, so it is rejected.
const MAX_REPORT_BYTES: usize = 256 * 1024;

/// How often a heartbeat goes out.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// How far behind the clock a heartbeat promises: a report whose operation ended just before
/// the heartbeat may still be on its way through the socket.
const HEARTBEAT_LAG_NS: u64 = 1_000_000_000;

/// The CNI source of the validated `config` (`collectors.cni`); does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(CniSource::new(&config.collectors.cni)))
}

/// Receives the plugin's reports.
#[derive(Debug)]
pub struct CniSource {
    socket: PathBuf,
}

impl CniSource {
    /// A source listening as the validated `config` (`collectors.cni`) says; does no I/O.
    pub fn new(config: &CniCollectorConfig) -> CniSource {
        CniSource {
            socket: PathBuf::from(&config.socket),
        }
    }
}

/// Binds `path`, replacing a socket a previous run left there (but nothing else).
fn bind(path: &Path) -> Result<UnixDatagram, SourceError> {
    let input = |what: String, source: std::io::Error| SourceError::Input {
        kind: KIND,
        what,
        source: Box::new(source),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| input(format!("the socket directory {}", parent.display()), error))?;
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !metadata.file_type().is_socket() {
            return Err(SourceError::Unsupported {
                kind: KIND,
                requirement: format!(
                    "{} exists and is not a socket; remove it or set collectors.cni.socket to \
                     another path",
                    path.display()
                ),
            });
        }
        std::fs::remove_file(path)
            .map_err(|error| input(format!("the stale socket {}", path.display()), error))?;
    }
    UnixDatagram::bind(path).map_err(|error| input(format!("the socket {}", path.display()), error))
}

impl Source for CniSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let socket = bind(&self.socket)?;
            tracing::info!(socket = %self.socket.display(), "Receiving the reports of tapio-cni.");
            cx.health.set_running();
            let mut buffer = vec![0u8; MAX_REPORT_BYTES + 1];
            let mut addresses = Addresses::default();
            let mut batch = Vec::new();
            let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let result = loop {
                tokio::select! {
                    () = cx.shutdown.cancelled() => break Ok(()),
                    received = socket.recv(&mut buffer) => match received {
                        Ok(length) => read(&cx, &buffer[..length], length > MAX_REPORT_BYTES, &mut addresses, &mut batch),
                        Err(error) => tracing::warn!(error = %error, "Cannot read the CNI report socket."),
                    },
                    _ = heartbeat.tick() => {
                        let upto = now_ns().saturating_sub(HEARTBEAT_LAG_NS);
                        // What is already queued ended before `upto`: read it first.
                        while let Ok(length) = socket.try_recv(&mut buffer) {
                            read(&cx, &buffer[..length], length > MAX_REPORT_BYTES, &mut addresses, &mut batch);
                        }
                        if cx.send_batch(&mut batch).await.is_err() || cx.heartbeat(upto).await.is_err() {
                            break Ok(());
                        }
                        continue;
                    }
                }
                if cx.send_batch(&mut batch).await.is_err() {
                    break Ok(());
                }
            };
            drop(socket);
            let _ = std::fs::remove_file(&self.socket);
            result
        })
    }
}

/// Reads one datagram into `batch`; a bad one is counted and logged.
fn read(
    cx: &SourceContext,
    bytes: &[u8],
    cut_off: bool,
    addresses: &mut Addresses,
    batch: &mut Vec<Observation>,
) {
    cx.stats.received.fetch_add(1, Ordering::Relaxed);
    let decoded = if cut_off {
        Err(format!(
            "a datagram of more than {MAX_REPORT_BYTES} bytes is not a report"
        ))
    } else {
        Report::decode(bytes).map_err(|error| error.to_string())
    };
    let report = decoded.and_then(|report| {
        if (MIN_PLAUSIBLE_NS..=MAX_PLAUSIBLE_NS).contains(&report.ended_ns) {
            Ok(report)
        } else {
            Err(format!(
                "impossible end time {} ns in the report of container {}",
                report.ended_ns, report.container_id
            ))
        }
    });
    match report {
        Ok(report) => {
            let fact = Fact {
                id: cx.next_fact_id(),
                time_ns: report.ended_ns,
                payload: FactPayload::CniOperation(report.operation()),
            };
            addresses.observe(&fact, batch);
        }
        Err(error) => {
            cx.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                bytes = bytes.len(),
                "Skipping a datagram on the CNI report socket."
            );
        }
    }
}

/// The pods' addresses from the ADDs not yet undone by a DEL, by sandbox.
#[derive(Debug, Default)]
pub struct Addresses {
    by_sandbox: HashMap<Arc<str>, Vec<StateRecord>>,
}

impl Addresses {
    /// Appends `fact` to `out`, with the state updates it implies: a successful ADD replaces
    /// its sandbox's addresses, a successful DEL retracts them.
    pub fn observe(&mut self, fact: &Fact, out: &mut Vec<Observation>) {
        let FactPayload::CniOperation(operation) = &fact.payload else {
            out.push(Observation::Fact(fact.clone()));
            return;
        };
        let mut updates = Vec::new();
        if operation.error.is_none() {
            let replaced = match operation.command {
                CniCommand::Add | CniCommand::Del => {
                    self.by_sandbox.remove(&operation.container_id)
                }
                CniCommand::Check => None,
            };
            for record in replaced.into_iter().flatten() {
                updates.push((-1, record));
            }
            if let (CniCommand::Add, Some(pod)) = (operation.command, &operation.pod) {
                let records: Vec<StateRecord> = operation
                    .ips
                    .iter()
                    .map(|ip| StateRecord {
                        evidence: fact.id.clone(),
                        since_ns: fact.time_ns,
                        object: StateObject::PodAddress(PodAddress {
                            pod: pod.clone(),
                            ip: ip.address.split('/').next().unwrap_or_default().to_string(),
                            container_id: operation.container_id.clone(),
                            interface: ip.interface.clone().unwrap_or_default(),
                        }),
                    })
                    .collect();
                for record in &records {
                    updates.push((1, record.clone()));
                }
                if !records.is_empty() {
                    self.by_sandbox
                        .insert(operation.container_id.clone(), records);
                }
            }
        }
        out.push(Observation::Fact(fact.clone()));
        out.extend(updates.into_iter().map(|(diff, record)| {
            Observation::State(StateUpdate {
                time_ns: fact.time_ns,
                diff,
                record,
            })
        }));
    }

    /// How many sandboxes hold addresses.
    pub fn len(&self) -> usize {
        self.by_sandbox.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.by_sandbox.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapio_model::{CniAddress, CniError, CniOperation, EntityId, FactId};

    fn fact(seq: u64, command: CniCommand, sandbox: &str, ips: &[&str], failed: bool) -> Fact {
        Fact {
            id: FactId::new("cni", "n1", seq),
            time_ns: 1_700_000_000_000_000_000 + seq,
            payload: FactPayload::CniOperation(CniOperation {
                command,
                network: "podnet".into(),
                container_id: sandbox.into(),
                pod: Some(EntityId::Pod {
                    namespace: "shop".into(),
                    name: sandbox.into(),
                }),
                pod_uid: None,
                netns: String::new(),
                ifname: "eth0".into(),
                interfaces: Vec::new(),
                ips: ips
                    .iter()
                    .map(|ip| CniAddress {
                        address: (*ip).into(),
                        gateway: None,
                        interface: Some("eth0".into()),
                    })
                    .collect(),
                error: failed.then(|| CniError {
                    plugin: "bridge".into(),
                    code: 11,
                    message: "failed".into(),
                    details: String::new(),
                }),
                duration_ns: 1,
            }),
        }
    }

    fn diffs(out: &[Observation]) -> Vec<(i8, String)> {
        out.iter()
            .filter_map(|observation| match observation {
                Observation::State(update) => match &update.record.object {
                    StateObject::PodAddress(address) => Some((update.diff, address.ip.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_add_maps_its_addresses_until_the_del_of_its_sandbox() {
        let mut addresses = Addresses::default();
        let mut out = Vec::new();
        addresses.observe(
            &fact(
                1,
                CniCommand::Add,
                "a",
                &["10.0.0.2/24", "fd00::2/64"],
                false,
            ),
            &mut out,
        );
        assert_eq!(
            diffs(&out),
            [(1, "10.0.0.2".to_string()), (1, "fd00::2".to_string())]
        );
        out.clear();
        addresses.observe(&fact(2, CniCommand::Check, "a", &[], false), &mut out);
        addresses.observe(&fact(3, CniCommand::Del, "b", &[], false), &mut out);
        addresses.observe(
            &fact(4, CniCommand::Add, "c", &["10.0.0.3/24"], true),
            &mut out,
        );
        assert_eq!(diffs(&out), []);
        assert_eq!(out.len(), 3, "every report is a fact");
        out.clear();
        addresses.observe(&fact(5, CniCommand::Del, "a", &[], true), &mut out);
        assert_eq!(diffs(&out), [], "a failed DEL leaves the addresses");
        addresses.observe(&fact(6, CniCommand::Del, "a", &[], false), &mut out);
        assert_eq!(
            diffs(&out),
            [(-1, "10.0.0.2".to_string()), (-1, "fd00::2".to_string())]
        );
        assert!(addresses.is_empty());
    }

    #[test]
    fn a_repeated_add_replaces_the_addresses_of_its_sandbox() {
        let mut addresses = Addresses::default();
        let mut out = Vec::new();
        addresses.observe(
            &fact(1, CniCommand::Add, "a", &["10.0.0.2/24"], false),
            &mut out,
        );
        out.clear();
        addresses.observe(
            &fact(2, CniCommand::Add, "a", &["10.0.0.9/24"], false),
            &mut out,
        );
        assert_eq!(
            diffs(&out),
            [(-1, "10.0.0.2".to_string()), (1, "10.0.0.9".to_string())]
        );
        assert_eq!(addresses.len(), 1);
    }
}
