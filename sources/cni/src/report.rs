//! What the plugin sends the agent, one datagram per CNI operation, and how the agent reads
//! it.
//!
//! A report is one JSON object ([`Report`]). The agent turns it into a `cni_operation` fact
//! ([`Report::operation`]): the pod from `CNI_ARGS`, the interfaces and addresses of the
//! result (CNI 0.3.0 and later: `interfaces` and `ips`; 0.1.0 and 0.2.0: `ip4` and `ip6`),
//! and the error a plugin returned.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tapio_model::{CniAddress, CniCommand, CniError, CniInterface, CniOperation, EntityId};

/// The version of the report format the plugin writes and the agent reads.
pub const REPORT_VERSION: u32 = 1;

/// One CNI operation, as the plugin saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// `CNI_COMMAND`: `ADD`, `DEL` or `CHECK`.
    pub command: String,
    /// The network configuration's `name`.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, as given (`K8S_POD_NAMESPACE=...;K8S_POD_NAME=...`).
    pub args: String,
    /// When the operation ended, ns since the Unix epoch.
    pub ended_ns: u64,
    /// How long it took, ns; 0 when the plugin did not run it (chained mode).
    pub duration_ns: u64,
    /// The result (ADD: the chain's final result; CHECK and DEL: the previous result the
    /// runtime passed, if any). `None` on failure.
    pub result: Option<Value>,
    /// The error a plugin returned.
    pub error: Option<ReportedError>,
}

/// The error a plugin returned, as the CNI specification shapes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedError {
    /// The plugin's `type`.
    pub plugin: String,
    /// Its error code (0 when its output had none).
    pub code: u32,
    /// Its message (`msg`), or what the plugin wrote when it was not a CNI error.
    pub message: String,
    /// Its `details`.
    pub details: String,
}

/// Why a datagram is not a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Not a JSON report.
    #[error("not a tapio-cni report: {0}")]
    Json(#[from] serde_json::Error),
    /// A report of another format version.
    #[error("report format version {0} is not {REPORT_VERSION}; the plugin and the agent differ")]
    Version(u32),
    /// A command that is not about one pod's network.
    #[error("CNI command `{0}` is not ADD, DEL or CHECK")]
    Command(String),
    /// No container id.
    #[error("the report has no container id")]
    NoContainer,
}

/// The pod `CNI_ARGS` names: namespace, name and uid, each when given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    pub uid: Option<String>,
}

impl PodArgs {
    /// Reads `CNI_ARGS`: `;`-separated `KEY=VALUE` pairs; others are ignored.
    pub fn parse(args: &str) -> PodArgs {
        let mut pod = PodArgs::default();
        for pair in args.split(';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value = (!value.is_empty()).then(|| value.to_string());
            match key.trim() {
                "K8S_POD_NAMESPACE" => pod.namespace = value,
                "K8S_POD_NAME" => pod.name = value,
                "K8S_POD_UID" => pod.uid = value,
                _ => {}
            }
        }
        pod
    }

    /// The pod entity, when both namespace and name are known.
    pub fn entity(&self) -> Option<EntityId> {
        Some(EntityId::Pod {
            namespace: self.namespace.as_deref()?.into(),
            name: self.name.as_deref()?.into(),
        })
    }
}

impl Report {
    /// Decodes one datagram.
    ///
    /// # Errors
    /// Not JSON, not a report, another format version, a command not about a pod, or no
    /// container id.
    pub fn decode(bytes: &[u8]) -> Result<Report, ReportError> {
        let report: Report = serde_json::from_slice(bytes)?;
        if report.version != REPORT_VERSION {
            return Err(ReportError::Version(report.version));
        }
        if CniCommand::parse(&report.command).is_none() {
            return Err(ReportError::Command(report.command));
        }
        if report.container_id.is_empty() {
            return Err(ReportError::NoContainer);
        }
        Ok(report)
    }

    /// The fact payload this report stands for.
    pub fn operation(&self) -> CniOperation {
        let pod = PodArgs::parse(&self.args);
        let (interfaces, ips) = match &self.result {
            Some(result) if self.error.is_none() => read_result(result),
            _ => (Vec::new(), Vec::new()),
        };
        CniOperation {
            command: CniCommand::parse(&self.command).unwrap_or(CniCommand::Check),
            network: self.network.clone(),
            container_id: Arc::from(self.container_id.as_str()),
            pod: pod.entity(),
            pod_uid: pod.uid,
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            interfaces,
            ips,
            error: self.error.as_ref().map(|error| CniError {
                plugin: error.plugin.clone(),
                code: error.code,
                message: error.message.clone(),
                details: error.details.clone(),
            }),
            duration_ns: self.duration_ns,
        }
    }
}

/// The interfaces and addresses of a CNI result of any version; what it does not hold (or
/// holds in another shape) is left out.
pub fn read_result(result: &Value) -> (Vec<CniInterface>, Vec<CniAddress>) {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_string);
    let interfaces: Vec<CniInterface> = result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|interface| {
                    Some(CniInterface {
                        name: text(interface.get("name"))?,
                        mac: text(interface.get("mac")).unwrap_or_default(),
                        sandbox: text(interface.get("sandbox")).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ips: Vec<CniAddress> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|ip| {
                    Some(CniAddress {
                        address: text(ip.get("address"))?,
                        gateway: text(ip.get("gateway")),
                        interface: ip
                            .get("interface")
                            .and_then(Value::as_u64)
                            .and_then(|index| interfaces.get(usize::try_from(index).ok()?))
                            .map(|interface| interface.name.clone()),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    // CNI 0.1.0 and 0.2.0 results.
    for family in ["ip4", "ip6"] {
        if let Some(ip) = result.get(family)
            && let Some(address) = text(ip.get("ip"))
        {
            ips.push(CniAddress {
                address,
                gateway: text(ip.get("gateway")),
                interface: None,
            });
        }
    }
    (interfaces, ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(command: &str, result: Option<Value>) -> Report {
        Report {
            version: REPORT_VERSION,
            command: command.into(),
            network: "podnet".into(),
            container_id: "abc".into(),
            netns: "/var/run/netns/abc".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u-1"
                .into(),
            ended_ns: 1_700_000_000_000_000_000,
            duration_ns: 5_000_000,
            result,
            error: None,
        }
    }

    #[test]
    fn a_current_result_gives_interfaces_and_addresses_by_interface() {
        let result = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/abc"}
            ],
            "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 1}]
        });
        let operation = report("ADD", Some(result)).operation();
        assert_eq!(operation.command, CniCommand::Add);
        assert_eq!(
            operation.pod,
            Some("pod/shop/web-0".parse().expect("entity"))
        );
        assert_eq!(operation.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(operation.interfaces.len(), 2);
        assert_eq!(operation.interfaces[1].sandbox, "/var/run/netns/abc");
        assert_eq!(
            operation.ips,
            [CniAddress {
                address: "10.22.0.5/16".into(),
                gateway: Some("10.22.0.1".into()),
                interface: Some("eth0".into()),
            }]
        );
    }

    #[test]
    fn an_old_result_gives_its_addresses() {
        let result = serde_json::json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.9/24"}});
        let operation = report("ADD", Some(result)).operation();
        assert_eq!(operation.ips[0].address, "10.1.0.9/24");
        assert!(operation.interfaces.is_empty());
    }

    #[test]
    fn a_failed_operation_keeps_its_error_and_no_addresses() {
        let mut failed = report("ADD", None);
        failed.error = Some(ReportedError {
            plugin: "host-local".into(),
            code: 999,
            message: "no IP addresses available in range set".into(),
            details: String::new(),
        });
        let operation = failed.operation();
        assert!(operation.ips.is_empty());
        assert_eq!(operation.error.expect("error").plugin, "host-local");
    }

    #[test]
    fn bad_datagrams_say_what_is_wrong() {
        assert!(matches!(
            Report::decode(b"{\"version\":1"),
            Err(ReportError::Json(_))
        ));
        let mut other = report("ADD", None);
        other.version = 7;
        let bytes = serde_json::to_vec(&other).expect("json");
        assert!(matches!(
            Report::decode(&bytes),
            Err(ReportError::Version(7))
        ));
        let bytes = serde_json::to_vec(&report("VERSION", None)).expect("json");
        let error = Report::decode(&bytes).expect_err("not about a pod");
        assert_eq!(
            error.to_string(),
            "CNI command `VERSION` is not ADD, DEL or CHECK"
        );
        let bytes = serde_json::to_vec(&report("DEL", None)).expect("json");
        assert!(Report::decode(&bytes).is_ok());
    }

    #[test]
    fn pod_args_ignore_what_they_do_not_know() {
        let pod = PodArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=a;junk;K8S_POD_NAMESPACE=");
        assert_eq!(pod.name.as_deref(), Some("a"));
        assert_eq!(pod.namespace, None);
        assert_eq!(pod.entity(), None);
    }
}
