//! What sources observe: facts, state updates and heartbeats.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::entity::EntityId;
use crate::time::{MAX_PLAUSIBLE_NS, MIN_PLAUSIBLE_NS, TimeNs};

/// The stable identity of one observation: which source, on which node, and its sequence number
/// there. Evidence in a correlation points back at observations by this id.
///
/// String form: `<source>/<node>/<seq>`, e.g. `kernel/node-1/42`.
///
/// The sequence number comes first so that ordering ids (which the dataflow does constantly)
/// rarely has to compare the strings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FactId {
    /// Sequence number, unique per (source, node).
    pub seq: u64,
    /// Source kind that produced the observation (`kernel`, `kubernetes`, ...). Shared, not
    /// copied, when an id is cloned into evidence.
    pub source: Arc<str>,
    /// Node the source ran on (`cluster` for cluster-wide sources).
    pub node: Arc<str>,
}

impl FactId {
    /// Builds an id.
    pub fn new(source: impl Into<Arc<str>>, node: impl Into<Arc<str>>, seq: u64) -> FactId {
        FactId {
            source: source.into(),
            node: node.into(),
            seq,
        }
    }
}

impl fmt::Display for FactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.source, self.node, self.seq)
    }
}

impl FromStr for FactId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.rsplitn(2, '/');
        let seq = parts.next().unwrap_or_default();
        let head = parts
            .next()
            .ok_or_else(|| format!("invalid fact id `{text}`: expected `<source>/<node>/<seq>`"))?;
        let (source, node) = head
            .split_once('/')
            .filter(|(s, n)| !s.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| format!("invalid fact id `{text}`: expected `<source>/<node>/<seq>`"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("invalid fact id `{text}`: sequence is not a number"))?;
        Ok(FactId::new(source, node, seq))
    }
}

impl Serialize for FactId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FactId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An insert-only observation: something happened at a point in time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fact {
    /// Stable id; the node in it is the node the fact happened on.
    pub id: FactId,
    /// Event time, ns since the Unix epoch.
    pub time_ns: TimeNs,
    /// What happened.
    pub payload: FactPayload,
}

/// The kinds of facts. Serialized externally tagged: `{"oom_kill": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactPayload {
    /// A process called execve.
    ProcessExec(ProcessExec),
    /// A process exited.
    ProcessExit(ProcessExit),
    /// The kernel OOM killer chose a victim.
    OomKill(OomKill),
    /// A container stopped (reported by the container runtime or the kubelet).
    ContainerExit(ContainerExit),
    /// A Kubernetes core/v1 Event.
    KubeEvent(KubeEvent),
    /// A process created a new process.
    ProcessFork(ProcessFork),
    /// An outgoing TCP connection attempt ended: established, refused, timed out, ...
    TcpConnect(TcpConnect),
    /// An incoming TCP connection was established.
    TcpAccept(TcpAccept),
    /// A TCP connection closed.
    TcpClose(TcpClose),
    /// A TCP connection retransmitted segments.
    TcpRetransmit(TcpRetransmit),
    /// Opening a file failed because it was missing or not allowed.
    FileOpenFailed(FileOpenFailed),
    /// A file was unlinked or renamed.
    FileChanged(FileChanged),
    /// A container's readiness changed (reported by the kubelet): a readiness probe started or
    /// stopped failing.
    ContainerReady(ContainerReady),
    /// A container's use of a resource crossed the configured share of its limit, upwards or
    /// back down (reported by the kubelet's `/stats/summary`).
    ResourceUsage(ResourceUsage),
    /// A DNS lookup ended: answered, failed with an error code, or timed out.
    DnsQuery(DnsQuery),
    /// A systemd unit on the node started, stopped, restarted or failed (from systemd's own
    /// journal messages).
    UnitChange(UnitChange),
    /// A pod sandbox or container of the node's container runtime was created, started,
    /// exited or deleted (reported by the runtime itself, over CRI and its event API).
    RuntimeChange(RuntimeChange),
    /// A key of the Kubernetes keyspace in etcd was created, updated or deleted (from an etcd
    /// watch; the value is not decoded).
    EtcdKeyChange(EtcdKeyChange),
    /// One probe of an etcd endpoint: whether it answered, how long a linearizable read took,
    /// its leader, term and database size.
    EtcdStatus(EtcdStatus),
    /// An etcd endpoint reported a different leader than at its previous probe.
    EtcdLeaderChange(EtcdLeaderChange),
    /// An etcd cluster's history was compacted up to a revision.
    EtcdCompaction(EtcdCompaction),
    /// A CNI operation (ADD, DEL or CHECK) on a pod's network ended, with its result or error
    /// (reported by Tapio's CNI plugin).
    CniOperation(CniOperation),
}

impl FactPayload {
    /// The snake_case name of the payload kind, as it appears in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            FactPayload::ProcessExec(_) => "process_exec",
            FactPayload::ProcessExit(_) => "process_exit",
            FactPayload::OomKill(_) => "oom_kill",
            FactPayload::ContainerExit(_) => "container_exit",
            FactPayload::KubeEvent(_) => "kube_event",
            FactPayload::ProcessFork(_) => "process_fork",
            FactPayload::TcpConnect(_) => "tcp_connect",
            FactPayload::TcpAccept(_) => "tcp_accept",
            FactPayload::TcpClose(_) => "tcp_close",
            FactPayload::TcpRetransmit(_) => "tcp_retransmit",
            FactPayload::FileOpenFailed(_) => "file_open_failed",
            FactPayload::FileChanged(_) => "file_changed",
            FactPayload::ContainerReady(_) => "container_ready",
            FactPayload::ResourceUsage(_) => "resource_usage",
            FactPayload::DnsQuery(_) => "dns_query",
            FactPayload::UnitChange(_) => "unit_change",
            FactPayload::RuntimeChange(_) => "runtime_change",
            FactPayload::EtcdKeyChange(_) => "etcd_key_change",
            FactPayload::EtcdStatus(_) => "etcd_status",
            FactPayload::EtcdLeaderChange(_) => "etcd_leader_change",
            FactPayload::EtcdCompaction(_) => "etcd_compaction",
            FactPayload::CniOperation(_) => "cni_operation",
        }
    }
}

impl Fact {
    /// The entity the fact is about: the process for kernel process, network and file facts
    /// (the one that acted), the container for container exits and readiness, the pod for
    /// resource use, the involved object for Kubernetes Events, the queried name for DNS
    /// lookups (a burst of failures for one name is about the name, whichever processes asked;
    /// the querying process and container stay in the fact). Rules that count facts per
    /// subject key on it, so two kinds of facts about one entity meet under one key.
    pub fn subject(&self) -> EntityId {
        let process = |pid: u32, start_ns: TimeNs| EntityId::Process {
            start_ns,
            pid,
            node: self.id.node.clone(),
        };
        let acting =
            |process_ref: &Option<ProcessRef>, fallback: &std::net::SocketAddr| match process_ref {
                Some(by) => process(by.pid, by.start_ns),
                None => EntityId::Endpoint {
                    address: fallback.to_string().into(),
                },
            };
        match &self.payload {
            FactPayload::ProcessExec(exec) => process(exec.pid, exec.start_ns),
            FactPayload::ProcessExit(exit) => process(exit.pid, exit.start_ns),
            FactPayload::OomKill(kill) => process(kill.pid, kill.start_ns),
            FactPayload::ProcessFork(fork) => process(fork.pid, fork.start_ns),
            FactPayload::ContainerExit(exit) => EntityId::Container {
                id: exit.container_id.clone(),
            },
            FactPayload::ContainerReady(ready) => EntityId::Container {
                id: ready.container_id.clone(),
            },
            FactPayload::KubeEvent(event) => event.involved.clone(),
            FactPayload::ResourceUsage(usage) => usage.pod.clone(),
            FactPayload::TcpConnect(connect) => acting(&connect.process, &connect.local),
            FactPayload::TcpAccept(accept) => acting(&accept.process, &accept.local),
            FactPayload::TcpClose(close) => acting(&close.process, &close.local),
            FactPayload::TcpRetransmit(retransmit) => {
                acting(&retransmit.process, &retransmit.local)
            }
            FactPayload::FileOpenFailed(failed) => {
                process(failed.process.pid, failed.process.start_ns)
            }
            FactPayload::FileChanged(changed) => {
                process(changed.process.pid, changed.process.start_ns)
            }
            FactPayload::DnsQuery(query) => EntityId::Dns {
                name: query.name.as_str().into(),
            },
            FactPayload::UnitChange(change) => EntityId::Unit {
                node: self.id.node.clone(),
                name: change.unit.as_str().into(),
            },
            FactPayload::RuntimeChange(change) => EntityId::Container {
                id: change.id.clone(),
            },
            FactPayload::EtcdKeyChange(EtcdKeyChange { endpoint, .. })
            | FactPayload::EtcdStatus(EtcdStatus { endpoint, .. })
            | FactPayload::EtcdLeaderChange(EtcdLeaderChange { endpoint, .. })
            | FactPayload::EtcdCompaction(EtcdCompaction { endpoint, .. }) => EntityId::Endpoint {
                address: endpoint.as_str().into(),
            },
            FactPayload::CniOperation(operation) => {
                operation
                    .pod
                    .clone()
                    .unwrap_or_else(|| EntityId::Container {
                        id: operation.container_id.clone(),
                    })
            }
        }
    }
}

/// The type of a Kubernetes Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something may be wrong.
    Warning,
}

impl EventType {
    /// The type as Kubernetes spells it (and JSON writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }

    /// The type as Kubernetes spells it; `None` for anything else.
    pub fn parse(value: &str) -> Option<EventType> {
        match value {
            "Normal" => Some(EventType::Normal),
            "Warning" => Some(EventType::Warning),
            _ => None,
        }
    }
}

/// A resource a container's use is measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Bytes of working set.
    Memory,
    /// Nanocores.
    Cpu,
}

impl Resource {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Cpu => "cpu",
        }
    }
}

/// The status of a node condition, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// The node controller cannot tell (the kubelet stopped reporting).
    Unknown,
}

impl ConditionStatus {
    /// The status as Kubernetes spells it (and JSON writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// The status as Kubernetes spells it; anything else is `Unknown`.
    pub fn parse(value: &str) -> ConditionStatus {
        match value {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }
}

/// `execve` of a process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessExec {
    /// Thread-group id.
    pub pid: u32,
    /// Parent's thread-group id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Process start time (fork time), ns since the Unix epoch; with `pid` it names the process.
    pub start_ns: TimeNs,
    /// Command name after exec (kernel `comm`, at most 15 bytes).
    pub comm: String,
    /// Executed file.
    pub filename: String,
    /// The first arguments, bounded by the collector.
    pub args: Vec<String>,
    /// Container the process runs in, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// Exit of a process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessExit {
    /// Thread-group id.
    pub pid: u32,
    /// Process start time, ns since the Unix epoch.
    pub start_ns: TimeNs,
    /// Command name.
    pub comm: String,
    /// Exit code when it exited normally, 0 otherwise.
    pub exit_code: i32,
    /// Terminating signal, 0 when it exited normally.
    pub signal: u32,
    /// Container the process ran in, when it ran in one.
    pub container_id: Option<Arc<str>>,
}

/// The OOM killer chose this process as its victim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OomKill {
    /// Victim's thread-group id.
    pub pid: u32,
    /// Victim's start time, ns since the Unix epoch.
    pub start_ns: TimeNs,
    /// Victim's command name.
    pub comm: String,
    /// Container of the victim, when it ran in one.
    pub container_id: Option<Arc<str>>,
    /// Pod uid of the victim, when known from its cgroup.
    pub pod_uid: Option<String>,
    /// The memory cgroup that ran out of memory (path), empty for a global OOM.
    pub memcg: String,
    /// Victim's resident memory when killed, in pages.
    pub rss_pages: u64,
}

/// A container stopped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerExit {
    /// Runtime container id.
    pub container_id: Arc<str>,
    /// Container name in the pod spec.
    pub container_name: String,
    /// Pod the container belongs to, when known.
    pub pod: Option<EntityId>,
    /// Exit code (137 after SIGKILL).
    pub exit_code: i32,
    /// Runtime's reason, e.g. `OOMKilled`, `Error`, `Completed`.
    pub reason: String,
    /// The pod's restart count for this container after the exit.
    pub restart_count: u32,
}

/// A Kubernetes core/v1 Event, with its repeat count and first/last times kept as evidence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KubeEvent {
    /// The object the event is about.
    pub involved: EntityId,
    /// Short machine-readable reason (`ScalingReplicaSet`, `Killing`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Reporting component (`source.component`, or `reportingComponent` when that is empty).
    pub component: String,
    /// `Normal` or `Warning`.
    pub event_type: EventType,
    /// How many times it was seen.
    pub count: u32,
    /// First time seen, ns since the Unix epoch.
    pub first_ns: TimeNs,
    /// Last time seen, ns since the Unix epoch.
    pub last_ns: TimeNs,
}

/// A container of a pod became ready or stopped being ready.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerReady {
    /// The pod.
    pub pod: EntityId,
    /// Container name in the pod spec.
    pub container_name: String,
    /// Runtime container id (without the scheme), empty while the container has none.
    pub container_id: Arc<str>,
    /// Whether it is ready now.
    pub ready: bool,
    /// The pod's restart count for this container.
    pub restart_count: u32,
}

/// A container's use of a resource crossed a share of its limit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// The pod.
    pub pod: EntityId,
    /// Container name in the pod spec.
    pub container_name: String,
    /// Which resource.
    pub resource: Resource,
    /// Current use, in the resource's unit.
    pub used: u64,
    /// The container's limit, in the same unit.
    pub limit: u64,
    /// The share of the limit, percent, that the collector reports crossings of (its
    /// configured threshold when it observed this).
    pub threshold_percent: u8,
    /// `true` when the use rose to or above the threshold, `false` when it fell back below.
    pub above: bool,
}

/// How a DNS lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DnsOutcome {
    /// The server answered with `NOERROR` (with or without records).
    #[serde(rename = "answered")]
    Answered,
    /// The server said the name does not exist (`NXDOMAIN`, rcode 3).
    #[serde(rename = "nxdomain")]
    NxDomain,
    /// The server failed to resolve the name (`SERVFAIL`, rcode 2).
    #[serde(rename = "servfail")]
    ServFail,
    /// The server refused the query (`REFUSED`, rcode 5).
    #[serde(rename = "refused")]
    Refused,
    /// The server answered with another error code (see `rcode`).
    #[serde(rename = "error")]
    Error,
    /// No response came within the collector's timeout.
    #[serde(rename = "timed_out")]
    TimedOut,
}

impl DnsOutcome {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsOutcome::Answered => "answered",
            DnsOutcome::NxDomain => "nxdomain",
            DnsOutcome::ServFail => "servfail",
            DnsOutcome::Refused => "refused",
            DnsOutcome::Error => "error",
            DnsOutcome::TimedOut => "timed_out",
        }
    }

    /// The outcome a response code means (the 12-bit code, EDNS extension included).
    pub fn of_rcode(rcode: u16) -> DnsOutcome {
        match rcode {
            0 => DnsOutcome::Answered,
            2 => DnsOutcome::ServFail,
            3 => DnsOutcome::NxDomain,
            5 => DnsOutcome::Refused,
            _ => DnsOutcome::Error,
        }
    }

    /// Whether the server failed the lookup: `SERVFAIL`, `REFUSED`, another error code or no
    /// answer at all. `NXDOMAIN` is not counted: it is the server working, and every lookup
    /// through a pod's search path gets it for the expansions that do not exist.
    pub fn is_server_failure(self) -> bool {
        matches!(
            self,
            DnsOutcome::ServFail | DnsOutcome::Refused | DnsOutcome::Error | DnsOutcome::TimedOut
        )
    }
}

/// The name of a DNS query type as zone files write it (`A`, `AAAA`, ...), `None` for types
/// without a common name here.
pub fn dns_type_name(qtype: u16) -> Option<&'static str> {
    Some(match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        41 => "OPT",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return None,
    })
}

/// One DNS lookup: a query and its response (or the lack of one), as a collector that sees
/// the DNS messages on the wire and the socket's process and cgroup reports it. The fact's time
/// is when the lookup ended: the response, or the query plus the collector's timeout.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DnsQuery {
    /// The querying process, when known.
    pub process: Option<ProcessRef>,
    /// Container of the querying process, when it runs in one.
    pub container_id: Option<Arc<str>>,
    /// The client's address and port (the query's source).
    pub client: std::net::SocketAddr,
    /// The server's address and port (the query's destination).
    pub server: std::net::SocketAddr,
    /// The queried name, lower case, without the trailing dot (`kubernetes.default.svc`).
    pub name: String,
    /// The query type (1 = A, 28 = AAAA, ...; [`dns_type_name`]).
    pub qtype: u16,
    /// How the lookup ended.
    pub outcome: DnsOutcome,
    /// The response code (EDNS extended bits included); `None` when no response came.
    pub rcode: Option<u16>,
    /// The addresses in the answer's A and AAAA records, in answer order.
    pub answers: Vec<std::net::IpAddr>,
    /// Time from the query to the response (or to the timeout), ns.
    pub latency_ns: u64,
    /// The answer's address and CNAME records with their owners and TTLs, in answer order
    /// (left out of JSON when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<DnsRecord>,
    /// Names of the same lookup tried before this one through the resolver's search path
    /// (`api.default.svc.cluster.local`, ... before `api`) that got NXDOMAIN and are reported
    /// only here, folded into this lookup (left out of JSON when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub search_expansions: u16,
}

fn is_zero(count: &u16) -> bool {
    *count == 0
}

/// One address or CNAME record of a DNS answer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DnsRecord {
    /// The owner name, lower case, without the trailing dot.
    pub name: String,
    /// Time to live, seconds.
    pub ttl: u32,
    /// What the record says.
    pub data: DnsRecordData,
}

/// The data of a [`DnsRecord`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsRecordData {
    /// An A or AAAA record's address.
    Address(std::net::IpAddr),
    /// A CNAME record's target, lower case, without the trailing dot.
    Cname(String),
}

/// What happened to a systemd unit, as systemd's own journal message (its `MESSAGE_ID`) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// A start job finished: the unit is up (`Started …`).
    Started,
    /// A stop job finished: the unit is down (`Stopped …`).
    Stopped,
    /// A restart job stopped the unit to start it again: `systemctl restart`, or systemd's own
    /// `Restart=` after the main process ended (`Stopped …` of a job of type `restart`).
    Restarted,
    /// The unit failed (`Failed with result '…'`), with systemd's result for it.
    Failed,
    /// A start job did not succeed (`Failed to start …`, `Dependency failed for …`).
    StartFailed,
}

impl UnitState {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Started => "started",
            UnitState::Stopped => "stopped",
            UnitState::Restarted => "restarted",
            UnitState::Failed => "failed",
            UnitState::StartFailed => "start_failed",
        }
    }
}

/// How a unit's process ended, as systemd logged it (`EXIT_CODE`, `EXIT_STATUS`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnitExit {
    /// `exited` (it called exit), `killed` (a signal ended it) or `dumped` (a signal ended it
    /// with a core dump).
    pub code: String,
    /// The exit status when it exited, the signal number otherwise.
    pub status: i32,
}

/// A systemd unit changed state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnitChange {
    /// The unit, e.g. `kubelet.service`.
    pub unit: String,
    /// What happened to it.
    pub state: UnitState,
    /// systemd's result: of the unit for `failed` (`exit-code`, `signal`, `timeout`,
    /// `oom-kill`, `core-dump`, `watchdog`, ...), of the job otherwise (`done`, `failed`,
    /// `timeout`, `dependency`, ...); empty when the message had none.
    pub result: String,
    /// How the unit's process ended just before it failed, when systemd logged it.
    pub exit: Option<UnitExit>,
}

/// Which kind of object of the container runtime changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeObject {
    /// A pod sandbox: the pod's shared namespaces, held by its pause process.
    Sandbox,
    /// A container of a pod.
    Container,
}

impl RuntimeObject {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeObject::Sandbox => "sandbox",
            RuntimeObject::Container => "container",
        }
    }
}

/// The CNI command of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CniCommand {
    /// Attach the pod's sandbox to the network.
    Add,
    /// Detach it.
    Del,
    /// Check that the attachment is still as ADD left it.
    Check,
}

impl CniCommand {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "add",
            CniCommand::Del => "del",
            CniCommand::Check => "check",
        }
    }

    /// The command as CNI spells it in `CNI_COMMAND` (`ADD`, `DEL`, `CHECK`); `None` for the
    /// others (`VERSION`, `GC`, `STATUS` are not about one pod).
    pub fn parse(value: &str) -> Option<CniCommand> {
        match value {
            "ADD" => Some(CniCommand::Add),
            "DEL" => Some(CniCommand::Del),
            "CHECK" => Some(CniCommand::Check),
            _ => None,
        }
    }
}

/// What happened to an etcd key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdOperation {
    /// The key was written for the first time (its version is 1).
    Create,
    /// An existing key was written again.
    Update,
    /// The key was deleted.
    Delete,
}

impl EtcdOperation {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EtcdOperation::Create => "create",
            EtcdOperation::Update => "update",
            EtcdOperation::Delete => "delete",
        }
    }
}

/// What happened to a sandbox or container of the container runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeState {
    /// It was created (not yet running).
    Created,
    /// Its process started.
    Started,
    /// Its process ended, with an exit code and the runtime's reason.
    Exited,
    /// The runtime removed it.
    Deleted,
}

impl RuntimeState {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeState::Created => "created",
            RuntimeState::Started => "started",
            RuntimeState::Exited => "exited",
            RuntimeState::Deleted => "deleted",
        }
    }
}

/// A pod sandbox or container of the container runtime changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuntimeChange {
    /// Sandbox or container.
    pub object: RuntimeObject,
    /// The runtime's id of it (a sandbox id is also the id of its pause container).
    pub id: Arc<str>,
    /// What happened.
    pub state: RuntimeState,
    /// The pod (from the Kubernetes labels the kubelet sets), when labelled.
    pub pod: Option<EntityId>,
    /// The pod's uid, empty when not labelled.
    pub pod_uid: String,
    /// Container name in the pod spec; empty for a sandbox.
    pub container_name: String,
    /// The sandbox a container runs in; for a sandbox, its own id.
    pub sandbox_id: Arc<str>,
    /// The image, as the container was created with it; empty for a sandbox.
    pub image: String,
    /// Exit code for `exited` (137 after SIGKILL), 0 otherwise.
    pub exit_code: i32,
    /// The runtime's reason for `exited` (`OOMKilled`, `Error`, `Completed`), empty otherwise.
    pub reason: String,
}

/// A key of the Kubernetes keyspace in etcd changed. The key
/// `/registry/<resource>/<namespace>/<name>` is split into its parts; the value is not decoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EtcdKeyChange {
    /// The etcd cluster, named by the first endpoint the source is configured with
    /// (`host:port`).
    pub endpoint: String,
    /// The resource: the key's first segment after the prefix (`pods`, `configmaps`), with
    /// its API group when the key has one (`apiregistration.k8s.io/apiservices`) and any
    /// further segments before the namespace (`services/specs`).
    pub resource: String,
    /// The namespace; empty for a cluster-scoped object.
    pub namespace: String,
    /// The object's name: the key's last segment.
    pub name: String,
    /// What happened.
    pub operation: EtcdOperation,
    /// The etcd revision of the change.
    pub revision: i64,
    /// Bytes of the value written (0 for a delete).
    pub value_size: u64,
}

/// One probe of an etcd endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EtcdStatus {
    /// The endpoint probed, `host:port`.
    pub endpoint: String,
    /// Whether it answered both the read and the status request.
    pub healthy: bool,
    /// Time a linearizable read of one key took, ns (the time until the probe gave up when
    /// it did not answer).
    pub latency_ns: u64,
    /// The member id of the leader it reports; 0 when unknown or when it has none.
    pub leader: u64,
    /// Its raft term.
    pub raft_term: u64,
    /// Bytes of its database file.
    pub db_size: u64,
    /// Bytes of its database in use (the rest is free space that a defragmentation returns).
    pub db_size_in_use: u64,
    /// Why it is not healthy; empty when it is.
    pub error: String,
}

/// An etcd endpoint reported a new leader.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EtcdLeaderChange {
    /// The endpoint that reported it, `host:port`.
    pub endpoint: String,
    /// The leader at the previous probe (0: none).
    pub previous: u64,
    /// The leader now (0: none).
    pub leader: u64,
    /// The raft term now.
    pub raft_term: u64,
}

/// An etcd cluster's history was compacted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EtcdCompaction {
    /// The endpoint that reported it, `host:port`.
    pub endpoint: String,
    /// Revisions before this one are gone.
    pub revision: i64,
}

/// An interface a CNI result lists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CniInterface {
    /// Its name (`eth0`, `veth1234abcd`, `cni0`).
    pub name: String,
    /// Its MAC address, empty when the result gives none.
    pub mac: String,
    /// The network namespace it lives in; empty for an interface on the host.
    pub sandbox: String,
}

/// An address a CNI result assigned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CniAddress {
    /// The address with its prefix length, `10.22.0.5/16`.
    pub address: String,
    /// The gateway, when the result gives one.
    pub gateway: Option<String>,
    /// The name of the interface it is on, when the result says.
    pub interface: Option<String>,
}

/// Why a CNI operation failed: the error a plugin returned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CniError {
    /// The plugin that failed (its `type`), empty when unknown.
    pub plugin: String,
    /// CNI error code (1–99 are the specification's, 100+ the plugin's; 0 when it gave none).
    pub code: u32,
    /// The plugin's message.
    pub message: String,
    /// The plugin's details, empty when none.
    pub details: String,
}

/// A CNI operation on a pod's network ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CniOperation {
    /// Which operation.
    pub command: CniCommand,
    /// The network configuration's `name`.
    pub network: String,
    /// The container id the runtime gave (`CNI_CONTAINERID`: the pod sandbox's id).
    pub container_id: Arc<str>,
    /// The pod, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`), when the runtime gave it.
    pub pod: Option<EntityId>,
    /// The pod's uid (`K8S_POD_UID`), when the runtime gave it.
    pub pod_uid: Option<String>,
    /// The network namespace path (`CNI_NETNS`), empty when none was given (a DEL may have
    /// none).
    pub netns: String,
    /// The interface name inside the namespace (`CNI_IFNAME`).
    pub ifname: String,
    /// The interfaces of the result (ADD and CHECK; empty on failure and for DEL).
    pub interfaces: Vec<CniInterface>,
    /// The addresses of the result.
    pub ips: Vec<CniAddress>,
    /// The error, when the operation failed.
    pub error: Option<CniError>,
    /// How long the operation took, ns.
    pub duration_ns: u64,
}

/// An address a pod's network interface holds, from the result of the CNI ADD that assigned
/// it: inserted by the ADD, retracted by the DEL of the same sandbox.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodAddress {
    /// The pod.
    pub pod: EntityId,
    /// The IP address, without its prefix length.
    pub ip: String,
    /// The pod sandbox's container id.
    pub container_id: Arc<str>,
    /// The interface inside the pod, when the result says.
    pub interface: String,
}

/// A retractable change to the state of the world: `diff` +1 inserts `record`, -1 retracts it.
///
/// A Kubernetes watch maps one to one: apply = retract the old record + insert the new one;
/// delete = retract; re-list = retract everything that was not re-listed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateUpdate {
    /// Time the change was observed, ns since the Unix epoch.
    pub time_ns: TimeNs,
    /// +1 or -1.
    pub diff: i8,
    /// The record inserted or retracted; a retraction carries the inserted record verbatim.
    pub record: StateRecord,
}

/// One piece of current state, with the observation that established it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateRecord {
    /// Id of the observation that inserted this record (evidence for what it implies).
    pub evidence: FactId,
    /// When that observation was made, ns since the Unix epoch.
    pub since_ns: TimeNs,
    /// The state itself.
    pub object: StateObject,
}

/// The kinds of state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateObject {
    /// A Kubernetes object that can own or be owned (Deployment, ReplicaSet, Pod, ...).
    Workload(WorkloadObject),
    /// A container of a pod, from the pod's status.
    PodContainer(PodContainer),
    /// A process running in a container, from the node agent's process table: inserted when
    /// the agent first sees the process, retracted when it exits.
    ProcessContainer(ProcessContainer),
    /// A Kubernetes Service and the cluster IPs it answers on.
    Service(ServiceObject),
    /// One address and port a Service routes to, from its EndpointSlices.
    ServiceEndpoint(ServiceEndpoint),
    /// One condition of a node (`Ready`, `MemoryPressure`, ...), without its heartbeat times so
    /// that the kubelet's status updates do not churn it.
    NodeCondition(NodeCondition),
    /// An IP address of a pod, from the CNI ADD that assigned it.
    PodAddress(PodAddress),
}

/// A Kubernetes object in the ownership graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadObject {
    /// The object.
    pub entity: EntityId,
    /// Its `metadata.uid`.
    pub uid: String,
    /// Its controlling owner (the `ownerReference` with `controller: true`), if any.
    pub owner: Option<OwnerRef>,
    /// For a pod: the node it is scheduled on (`spec.nodeName`), once it is. `None` for every
    /// other kind. Left out of JSON while unknown, so records written before it existed read
    /// and write back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<EntityId>,
}

/// A controlling owner reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OwnerRef {
    /// The owner.
    pub entity: EntityId,
    /// The owner's uid.
    pub uid: String,
}

/// A container that belongs to a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodContainer {
    /// The pod.
    pub pod: EntityId,
    /// The pod's uid.
    pub pod_uid: String,
    /// Container name in the pod spec.
    pub container_name: String,
    /// Runtime container id (without the `containerd://` scheme).
    pub container_id: Arc<str>,
}

/// A process that runs inside a container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessContainer {
    /// The process (`process/<node>/<pid>/<start_ns>`).
    pub process: EntityId,
    /// Runtime container id.
    pub container_id: Arc<str>,
    /// The executable the process runs.
    pub filename: String,
}

/// A Kubernetes Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceObject {
    /// The service.
    pub entity: EntityId,
    /// Its `metadata.uid`.
    pub uid: String,
    /// `spec.clusterIPs` (empty for a headless service).
    pub cluster_ips: Vec<String>,
}

/// An address and port that a Service routes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The service (the slice's `kubernetes.io/service-name` label).
    pub service: EntityId,
    /// The endpoint (`endpoint/<ip>:<port>`).
    pub endpoint: EntityId,
    /// The pod behind it, when the slice names one.
    pub pod: Option<EntityId>,
    /// Whether the endpoint is ready to serve.
    pub ready: bool,
}

/// A node condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeCondition {
    /// The node.
    pub node: EntityId,
    /// Condition type: `Ready`, `MemoryPressure`, `DiskPressure`, `PIDPressure`, ...
    pub condition: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable reason of the last transition.
    pub reason: String,
}

/// "Source `source` on node `node` has published everything with event time < `upto_ns`."
///
/// Heartbeats travel in the stream, so a replay computes exactly the watermarks the live run
/// computed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Source kind.
    pub source: String,
    /// Node the source runs on.
    pub node: String,
    /// Everything before this event time has been published.
    pub upto_ns: TimeNs,
}

/// One item of a source's output stream.
///
/// In JSON (recordings, the NATS wire format) it is tagged by `kind`:
/// `{"kind":"fact",...}`, `{"kind":"state",...}` or `{"kind":"heartbeat",...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    /// Something happened.
    Fact(Fact),
    /// Some state changed.
    State(StateUpdate),
    /// A source's progress promise.
    Heartbeat(Heartbeat),
}

/// An observation that is well-formed JSON but cannot be true.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObservation {
    /// Event time before 2000 or after 2200: a broken clock or an unconverted monotonic time.
    #[error("impossible event time {time_ns} ns (must lie between 2000-01-01 and 2200-01-01)")]
    ImpossibleTime {
        /// The rejected time.
        time_ns: TimeNs,
    },
    /// A state diff other than +1 or -1.
    #[error("state diff must be +1 or -1, got {diff}")]
    BadDiff {
        /// The rejected diff.
        diff: i8,
    },
    /// An empty source, node or id component.
    #[error("empty `{field}`")]
    Empty {
        /// Which field.
        field: &'static str,
    },
}

impl Observation {
    /// Event time of the observation (for a heartbeat, its `upto_ns`).
    pub fn time_ns(&self) -> TimeNs {
        match self {
            Observation::Fact(fact) => fact.time_ns,
            Observation::State(update) => update.time_ns,
            Observation::Heartbeat(heartbeat) => heartbeat.upto_ns,
        }
    }

    /// Whether a replay limited to facts in `[start_ns, end_ns)` keeps this observation. State
    /// updates and heartbeats are always kept: state accumulates from the beginning, and
    /// heartbeats drive the watermark.
    pub fn kept_between(&self, start_ns: Option<TimeNs>, end_ns: Option<TimeNs>) -> bool {
        let Observation::Fact(fact) = self else {
            return true;
        };
        start_ns.is_none_or(|start| fact.time_ns >= start)
            && end_ns.is_none_or(|end| fact.time_ns < end)
    }

    /// Checks what JSON decoding cannot: plausible times, ±1 diffs, non-empty names.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), InvalidObservation> {
        let plausible = |time_ns: TimeNs| {
            if (MIN_PLAUSIBLE_NS..=MAX_PLAUSIBLE_NS).contains(&time_ns) {
                Ok(())
            } else {
                Err(InvalidObservation::ImpossibleTime { time_ns })
            }
        };
        let named = |id: &FactId| {
            if id.source.is_empty() {
                Err(InvalidObservation::Empty { field: "source" })
            } else if id.node.is_empty() {
                Err(InvalidObservation::Empty { field: "node" })
            } else {
                Ok(())
            }
        };
        match self {
            Observation::Fact(fact) => {
                named(&fact.id)?;
                plausible(fact.time_ns)
            }
            Observation::State(update) => {
                named(&update.record.evidence)?;
                if update.diff != 1 && update.diff != -1 {
                    return Err(InvalidObservation::BadDiff { diff: update.diff });
                }
                plausible(update.time_ns)
            }
            Observation::Heartbeat(heartbeat) => {
                if heartbeat.source.is_empty() {
                    return Err(InvalidObservation::Empty { field: "source" });
                }
                if heartbeat.node.is_empty() {
                    return Err(InvalidObservation::Empty { field: "node" });
                }
                plausible(heartbeat.upto_ns)
            }
        }
    }
}

/// A process that did something, named as Tapio names processes: `(node, pid, start_ns)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Thread-group id.
    pub pid: u32,
    /// Process start time, ns since the Unix epoch.
    pub start_ns: TimeNs,
    /// Command name.
    pub comm: String,
}

/// `fork`/`clone` of a new process (threads are not reported).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessFork {
    /// The new process's thread-group id.
    pub pid: u32,
    /// The new process's start time, ns since the Unix epoch.
    pub start_ns: TimeNs,
    /// Parent's thread-group id.
    pub ppid: u32,
    /// Parent's start time, ns since the Unix epoch.
    pub parent_start_ns: TimeNs,
    /// Command name (inherited from the parent).
    pub comm: String,
    /// Container the process runs in, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// How an outgoing TCP connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectOutcome {
    /// The handshake completed.
    Established,
    /// The peer answered with a reset (nothing listening, or rejected).
    Refused,
    /// No answer before the SYN retries ran out.
    TimedOut,
    /// Another error, e.g. host unreachable (see `error`).
    Failed,
    /// The owner gave up (closed the socket) before an answer.
    Aborted,
}

impl ConnectOutcome {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectOutcome::Established => "established",
            ConnectOutcome::Refused => "refused",
            ConnectOutcome::TimedOut => "timed_out",
            ConnectOutcome::Failed => "failed",
            ConnectOutcome::Aborted => "aborted",
        }
    }

    /// Whether the attempt failed: refused, timed out or another error (not an abort by the
    /// caller).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            ConnectOutcome::Refused | ConnectOutcome::TimedOut | ConnectOutcome::Failed
        )
    }
}

/// An outgoing TCP connection attempt and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TcpConnect {
    /// The connecting process, when known.
    pub process: Option<ProcessRef>,
    /// Local address and port.
    pub local: std::net::SocketAddr,
    /// Remote address and port.
    pub remote: std::net::SocketAddr,
    /// How it ended.
    pub outcome: ConnectOutcome,
    /// The socket error (errno) for a failed attempt, 0 otherwise.
    pub error: i32,
    /// Time from `connect` to the outcome, ns.
    pub latency_ns: u64,
    /// Container of the connecting process, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// An incoming TCP connection was established.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TcpAccept {
    /// The process listening on the local port, when known.
    pub process: Option<ProcessRef>,
    /// Local address and port.
    pub local: std::net::SocketAddr,
    /// Remote address and port.
    pub remote: std::net::SocketAddr,
    /// Container of the listening process, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// A TCP connection closed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TcpClose {
    /// The owning process, when known.
    pub process: Option<ProcessRef>,
    /// Local address and port.
    pub local: std::net::SocketAddr,
    /// Remote address and port.
    pub remote: std::net::SocketAddr,
    /// Lifetime of the connection, ns (0 when it began before the collector started).
    pub duration_ns: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Segments retransmitted over the connection's life (as far as seen).
    pub retransmits: u32,
    /// A reset was received.
    pub reset: bool,
    /// The socket error (errno) at close, 0 when none.
    pub error: i32,
    /// Container of the owning process, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// A TCP connection retransmitted segments. Retransmits are folded: one fact stands for
/// `count` retransmits of the same connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TcpRetransmit {
    /// The owning process, when known.
    pub process: Option<ProcessRef>,
    /// Local address and port.
    pub local: std::net::SocketAddr,
    /// Remote address and port.
    pub remote: std::net::SocketAddr,
    /// Retransmits this fact stands for.
    pub count: u32,
    /// Container of the owning process, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// Opening a file failed with ENOENT or EACCES. Identical failures are folded: one fact
/// stands for `count` of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileOpenFailed {
    /// The process that tried.
    pub process: ProcessRef,
    /// The path as the process passed it (may be relative).
    pub path: String,
    /// The errno (2 = ENOENT, 13 = EACCES).
    pub errno: i32,
    /// Failures this fact stands for.
    pub count: u32,
    /// Container of the process, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

/// What happened to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    /// It was unlinked.
    Unlink,
    /// It was renamed (see `new_path`).
    Rename,
}

impl FileOp {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Unlink => "unlink",
            FileOp::Rename => "rename",
        }
    }
}

/// A file was unlinked or renamed. Identical changes are folded: one fact stands for `count`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileChanged {
    /// The process that did it.
    pub process: ProcessRef,
    /// What happened.
    pub op: FileOp,
    /// The path as the process passed it (may be relative).
    pub path: String,
    /// The new path of a rename.
    pub new_path: Option<String>,
    /// Changes this fact stands for.
    pub count: u32,
    /// Container of the process, when it runs in one.
    pub container_id: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> Observation {
        Observation::Fact(Fact {
            id: FactId::new("kernel", "node-1", 7),
            time_ns: 1_621_417_386_000_000_000,
            payload: FactPayload::OomKill(OomKill {
                pid: 4242,
                start_ns: 1_621_417_380_000_000_000,
                comm: "podinfo".into(),
                container_id: Some("abc".into()),
                pod_uid: None,
                memcg: "/kubepods/burstable/podx/abc".into(),
                rss_pages: 8128,
            }),
        })
    }

    #[test]
    fn fact_json_shape_is_stable() {
        let json = serde_json::to_string(&oom()).unwrap();
        assert!(json.starts_with(r#"{"kind":"fact","id":"kernel/node-1/7","time_ns":"#));
        assert!(json.contains(r#""payload":{"oom_kill":{"pid":4242"#));
        assert_eq!(serde_json::from_str::<Observation>(&json).unwrap(), oom());
    }

    #[test]
    fn a_fact_is_about_its_subject() {
        let Observation::Fact(kill) = oom() else {
            unreachable!("oom() is a fact")
        };
        assert_eq!(
            kill.subject().to_string(),
            "process/node-1/4242/1621417380000000000"
        );
        let exit = Fact {
            payload: FactPayload::ContainerExit(ContainerExit {
                container_id: "abc".into(),
                container_name: "app".into(),
                pod: None,
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            }),
            ..kill.clone()
        };
        assert_eq!(exit.subject().to_string(), "container/abc");
        let anonymous_connect = Fact {
            payload: FactPayload::TcpConnect(TcpConnect {
                process: None,
                local: "10.0.0.1:40000".parse().unwrap(),
                remote: "10.0.0.2:80".parse().unwrap(),
                outcome: ConnectOutcome::Refused,
                error: 111,
                latency_ns: 1,
                container_id: None,
            }),
            ..kill
        };
        assert_eq!(
            anonymous_connect.subject().to_string(),
            "endpoint/10.0.0.1:40000"
        );
    }

    #[test]
    fn a_dns_lookup_is_about_its_name_and_keeps_its_json_shape() {
        let lookup = Fact {
            id: FactId::new("dns", "node-1", 3),
            time_ns: 1_621_417_386_000_000_000,
            payload: FactPayload::DnsQuery(DnsQuery {
                process: Some(ProcessRef {
                    pid: 42,
                    start_ns: 1_621_417_380_000_000_000,
                    comm: "curl".into(),
                }),
                container_id: Some("abc".into()),
                client: "10.0.0.7:40000".parse().unwrap(),
                server: "10.96.0.10:53".parse().unwrap(),
                name: "api.default.svc".into(),
                qtype: 1,
                outcome: DnsOutcome::of_rcode(2),
                rcode: Some(2),
                answers: vec!["10.0.0.9".parse().unwrap()],
                latency_ns: 1_500_000,
                records: vec![
                    DnsRecord {
                        name: "api.default.svc".into(),
                        ttl: 30,
                        data: DnsRecordData::Cname("api-1.default.svc".into()),
                    },
                    DnsRecord {
                        name: "api-1.default.svc".into(),
                        ttl: 5,
                        data: DnsRecordData::Address("10.0.0.9".parse().unwrap()),
                    },
                ],
                search_expansions: 2,
            }),
        };
        assert_eq!(lookup.subject().to_string(), "dns/api.default.svc");
        let json = serde_json::to_string(&lookup).unwrap();
        assert!(
            json.contains(r#""outcome":"servfail","rcode":2,"answers":["10.0.0.9"]"#),
            "{json}"
        );
        assert!(
            json.contains(r#""records":[{"name":"api.default.svc","ttl":30,"data":{"cname":"api-1.default.svc"}},{"name":"api-1.default.svc","ttl":5,"data":{"address":"10.0.0.9"}}],"search_expansions":2"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Fact>(&json).unwrap(), lookup);
        // Without records or search expansions, neither is written, and both read back empty.
        let FactPayload::DnsQuery(mut plain) = lookup.payload.clone() else {
            unreachable!("a dns_query")
        };
        plain.records.clear();
        plain.search_expansions = 0;
        let plain = FactPayload::DnsQuery(plain);
        let json = serde_json::to_string(&plain).unwrap();
        assert!(json.ends_with(r#""latency_ns":1500000}}"#), "{json}");
        assert_eq!(serde_json::from_str::<FactPayload>(&json).unwrap(), plain);
        assert_eq!(
            [0, 2, 3, 5, 9].map(|rcode| DnsOutcome::of_rcode(rcode).as_str()),
            ["answered", "servfail", "nxdomain", "refused", "error"]
        );
        assert!(!DnsOutcome::NxDomain.is_server_failure());
        assert!(DnsOutcome::TimedOut.is_server_failure());
        assert_eq!(
            serde_json::to_string(&DnsOutcome::TimedOut).unwrap(),
            r#""timed_out""#
        );
    }

    #[test]
    fn known_sets_keep_their_kubernetes_spelling_in_json() {
        assert_eq!(
            serde_json::to_string(&EventType::Warning).unwrap(),
            r#""Warning""#
        );
        assert_eq!(
            serde_json::to_string(&ConditionStatus::True).unwrap(),
            r#""True""#
        );
        assert_eq!(
            serde_json::to_string(&Resource::Memory).unwrap(),
            r#""memory""#
        );
        assert_eq!(EventType::parse("Other"), None);
        assert_eq!(ConditionStatus::parse("maybe"), ConditionStatus::Unknown);
    }

    #[test]
    fn fact_ids_parse_and_reject() {
        let id: FactId = "kubernetes/cluster/12".parse().unwrap();
        assert_eq!(id, FactId::new("kubernetes", "cluster", 12));
        for bad in ["", "a/b", "a/b/c/d", "/b/1", "a//1", "a/b/x"] {
            assert!(bad.parse::<FactId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_rejects_impossible_times_and_diffs() {
        let mut fact = oom();
        assert!(fact.validate().is_ok());
        if let Observation::Fact(f) = &mut fact {
            f.time_ns = 12;
        }
        assert_eq!(
            fact.validate(),
            Err(InvalidObservation::ImpossibleTime { time_ns: 12 })
        );
        let heartbeat = Observation::Heartbeat(Heartbeat {
            source: "kernel".into(),
            node: "".into(),
            upto_ns: 1_621_417_386_000_000_000,
        });
        assert_eq!(
            heartbeat.validate(),
            Err(InvalidObservation::Empty { field: "node" })
        );
    }
}
