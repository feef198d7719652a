//! The typed configuration tree and its defaults.
//!
//! Every key is optional: a missing key takes its default, and so does a section written with no
//! value at all (`collectors:` followed only by comments). Scalar keys written with no value are
//! rejected rather than silently defaulted.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::duration::humantime_str;
use crate::secret::{NatsAuth, Secret};
use crate::sequences::{SequenceConfig, builtin_sequences};

/// The whole Tapio configuration, as read from `tapio.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TapioConfig {
    /// Name of this node in entity ids. Empty means the machine's hostname, which the binary
    /// resolves (this crate does no I/O beyond reading the file). Default: empty.
    pub node_name: String,
    /// Event sources. Default: every collector disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub collectors: CollectorsConfig,
    /// The correlation dataflow and its rules. Default: one worker, 100ms ticks, every rule on.
    #[serde(deserialize_with = "null_as_default")]
    pub correlation: CorrelationConfig,
    /// Optional external systems that receive results. Default: all disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub integrations: IntegrationsConfig,
    /// The embedded in-memory store of correlations. Default: an hour of history, at most
    /// 10000 retracted correlations.
    #[serde(deserialize_with = "null_as_default")]
    pub store: StoreConfig,
    /// The HTTP API and `/metrics` of `tapio run` and `tapio replay`. Default: on, on
    /// `127.0.0.1:7600`.
    #[serde(deserialize_with = "null_as_default")]
    pub api: ApiConfig,
}

#[expect(
    clippy::derivable_impls,
    reason = "hand-written so that every default is stated and explained in one place"
)]
impl Default for TapioConfig {
    fn default() -> Self {
        TapioConfig {
            // Empty: the binary falls back to the hostname, which is right for one process per node.
            node_name: String::new(),
            collectors: CollectorsConfig::default(),
            correlation: CorrelationConfig::default(),
            integrations: IntegrationsConfig::default(),
            store: StoreConfig::default(),
            api: ApiConfig::default(),
        }
    }
}

/// The embedded in-memory store: the current correlations (all of them, always) and a bounded
/// history of the ones that stopped being current.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Most retracted correlations kept, `0..=10000000`; `0` keeps none. Default: `10000`.
    pub history_count: usize,
    /// Retracted correlations are dropped once they are older than this (event time, before
    /// the newest tick), at most `720h`. Written as a humantime string. Default: `1h`.
    #[serde(with = "humantime_str")]
    pub history_max_age: Duration,
    /// Most facts kept per entity for its timeline (its newest), `0..=100000`; `0` keeps none.
    /// Default: `200`.
    pub facts_per_entity: usize,
    /// Most facts kept for timelines in all (the newest in event time), `0..=10000000`; `0`
    /// keeps none. Default: `100000`.
    pub facts_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            // Enough to look back over an incident that has just ended.
            history_count: 10_000,
            // An incident is usually looked into within the hour.
            history_max_age: Duration::from_secs(60 * 60),
            // A restart loop's hour of events and exits fits.
            facts_per_entity: 200,
            // About 30 MiB of facts.
            facts_max: 100_000,
        }
    }
}

/// The HTTP API (read-only JSON, server-sent events of changes, health) and the Prometheus
/// `/metrics`, served by every process that correlates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Whether to serve it. Default: `true`.
    pub enabled: bool,
    /// `host:port` to listen on, an IP address and a port (`0` picks a free one). Default:
    /// `127.0.0.1:7600` (this machine only).
    pub address: String,
    /// Environment variable holding the bearer token that every request but `/healthz`,
    /// `/readyz` and `/metrics` must carry; unset or empty: no token. Only `A-Z 0-9 _`.
    /// Default: `TAPIO_API_TOKEN`.
    pub token_env: String,
    /// File holding the bearer token (surrounding white space ignored); used when the
    /// variable is unset. Empty: none. Default: empty.
    pub token_file: String,
    /// Most items one request may ask for (`limit`), `1..=100000`. Default: `1000`.
    pub max_limit: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            // The embedded default: answers with no external service.
            enabled: true,
            // Loopback only: exposing it is a decision for whoever deploys Tapio.
            address: "127.0.0.1:7600".to_owned(),
            // A secret never sits in the YAML itself.
            token_env: "TAPIO_API_TOKEN".to_owned(),
            token_file: String::new(),
            // Enough for a page of incidents; a larger answer is a bulk export.
            max_limit: 1000,
        }
    }
}

/// Event sources feeding the correlation engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorsConfig {
    /// The node's kernel through eBPF: processes, OOM kills, TCP, files, container exits.
    /// Default: enabled (needs root, or CAP_BPF + CAP_PERFMON, and BTF).
    #[serde(deserialize_with = "null_as_default")]
    pub kernel: KernelCollectorConfig,
    /// Replays a Tapio recording file as a live source. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub recording: RecordingCollectorConfig,
    /// Watches the Kubernetes API server. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub kubernetes: KubernetesCollectorConfig,
    /// Polls this node's kubelet. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub kubelet: KubeletCollectorConfig,
    /// Follows the node's systemd journal: unit lifecycle and kernel OOM kills. Default:
    /// disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub systemd: SystemdCollectorConfig,
    /// DNS lookups of every process on the node through eBPF. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub dns: DnsCollectorConfig,
    /// The container runtime (containerd) through its CRI and event APIs. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub cri: CriCollectorConfig,
    /// Watches a self-managed cluster's etcd: the Kubernetes keyspace, endpoint health,
    /// leader changes, compactions. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub etcd: EtcdCollectorConfig,
    /// Every CNI ADD, DEL and CHECK on the node, reported by Tapio's CNI plugin
    /// (`tapio-cni`) over a unix socket. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub cni: CniCollectorConfig,
}

#[expect(
    clippy::derivable_impls,
    reason = "hand-written so that every default is stated and explained in one place"
)]
impl Default for CollectorsConfig {
    fn default() -> Self {
        CollectorsConfig {
            kernel: KernelCollectorConfig::default(),
            recording: RecordingCollectorConfig::default(),
            kubernetes: KubernetesCollectorConfig::default(),
            kubelet: KubeletCollectorConfig::default(),
            systemd: SystemdCollectorConfig::default(),
            dns: DnsCollectorConfig::default(),
            cri: CriCollectorConfig::default(),
            etcd: EtcdCollectorConfig::default(),
            cni: CniCollectorConfig::default(),
        }
    }
}

/// The kernel collector (eBPF).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelCollectorConfig {
    /// Whether the kernel is watched. Default: `true`.
    pub enabled: bool,
    /// Ring buffer between the eBPF programs and Tapio, in bytes: a power of two from 65536
    /// to 1073741824. Default: `8388608` (8 MiB).
    pub ring_buffer_bytes: u32,
    /// How often the collector promises progress to the dataflow, more than 0 and at most
    /// `100ms`. Default: `100ms`.
    #[serde(with = "humantime_str")]
    pub heartbeat_interval: Duration,
    /// The ring buffer is read at every heartbeat, and this often while records keep coming;
    /// the eBPF programs do not wake the reader for a record (only when the ring passes a
    /// quarter full). `0s` has them wake the reader for every batch of records instead; at most
    /// `100ms`. Default: `100ms`.
    #[serde(with = "humantime_str")]
    pub batch_delay: Duration,
    /// Fork events. Default: `true`.
    pub forks: bool,
    /// OOM kill events. Default: `true`.
    pub oom: bool,
    /// TCP connects, accepts, closes and retransmits. Default: `true`.
    pub network: bool,
    /// Container exits, seen when a container's cgroup loses its last process. Default: `true`.
    pub containers: bool,
    /// Failed opens (ENOENT, EACCES), unlinks and renames under these path prefixes; at most 8,
    /// each 1 to 64 bytes; empty turns file events off. Default: empty. Useful prefixes are
    /// `/etc/`, `/var/run/secrets/` and `/run/secrets/`; with any prefix every system call on
    /// the node pays for the syscall tracepoints (about 60 ns each, measured).
    pub file_path_prefixes: Vec<String>,
    /// Identical file events within this window become one fact with a count, at most `1h`.
    /// Default: `1s`.
    #[serde(with = "humantime_str")]
    pub file_aggregation_window: Duration,
    /// At most one retransmit fact per connection per window, at most `1h`. Default: `1s`.
    #[serde(with = "humantime_str")]
    pub retransmit_aggregation_window: Duration,
    /// Processes remembered for container lookups, 1..=10000000. Default: `65536`.
    pub process_cache_capacity: usize,
}

impl Default for KernelCollectorConfig {
    fn default() -> Self {
        KernelCollectorConfig {
            // On: the kernel is where most root causes start.
            enabled: true,
            // 8 MiB absorbs bursts of tens of thousands of events between reads.
            ring_buffer_bytes: 8 << 20,
            // The dataflow's tick: the watermark can follow within one tick.
            heartbeat_interval: Duration::from_millis(100),
            // One read per heartbeat. Measured (exec storm bench): a wakeup costs the reader
            // 50-140 us of CPU on a VM, so at 2 000 records/s reading every 5 ms spent about
            // 5 us per record on wakeups alone. A record read at a heartbeat is covered by that
            // heartbeat, so facts are not closed later than with a wakeup per record.
            batch_delay: Duration::from_millis(100),
            forks: true,
            oom: true,
            network: true,
            containers: true,
            // Off: file events need syscall tracepoints, and attaching any of them sends every
            // system call on the node through the kernel's tracepoint path (about 60 ns more per
            // call measured here, 1-2 % of an exec storm), while no correlation rule uses file
            // facts yet. Opt in with the configuration and secrets paths.
            file_path_prefixes: Vec::new(),
            // A hot retry loop becomes one fact a second.
            file_aggregation_window: Duration::from_secs(1),
            retransmit_aggregation_window: Duration::from_secs(1),
            // Enough for every process of a busy node.
            process_cache_capacity: 65_536,
        }
    }
}

/// Replays a recording file as if its events were happening now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingCollectorConfig {
    /// Whether the recording is replayed. Default: `false`.
    pub enabled: bool,
    /// Path of the recording file; must be non-empty when [`Self::enabled`]. Default: empty.
    pub path: String,
    /// Replay speed as a factor of the original pace: `0` = as fast as possible, `1.0` = original
    /// pace, `2.0` = twice as fast. Must be finite and `>= 0`. Default: `0`.
    pub speed: f64,
}

impl Default for RecordingCollectorConfig {
    fn default() -> Self {
        RecordingCollectorConfig {
            // Off: a recording is an explicit choice (tests, demos, incident replays).
            enabled: false,
            // No sensible default file; required once enabled.
            path: String::new(),
            // As fast as possible: replays are mostly used for tests and offline analysis.
            speed: 0.0,
        }
    }
}

/// Watches Pods, ReplicaSets, Deployments, StatefulSets, DaemonSets, Jobs, Services,
/// EndpointSlices, Nodes and core/v1 Events on the Kubernetes API server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesCollectorConfig {
    /// Whether the API server is watched. Default: `false`.
    pub enabled: bool,
    /// Path of a kubeconfig file. Empty: the in-cluster service account when running in a pod,
    /// else `$KUBECONFIG` or `~/.kube/config` (kube-rs `Config::infer`). Default: empty.
    pub kubeconfig: String,
    /// Namespaces to watch; empty means every namespace. Nodes are cluster-scoped and always
    /// watched. Each must be a DNS-1123 label. Default: empty.
    pub namespaces: Vec<String>,
    /// Label selector (`app=web,tier!=db`) applied to the namespaced objects (not to Events or
    /// Nodes). Empty selects everything. Default: empty.
    pub label_selector: String,
}

#[expect(
    clippy::derivable_impls,
    reason = "hand-written so that every default is stated and explained in one place"
)]
impl Default for KubernetesCollectorConfig {
    fn default() -> Self {
        KubernetesCollectorConfig {
            // Off: needs API access and RBAC (sources/kubernetes/rbac.yaml).
            enabled: false,
            // Empty: the usual kube-rs inference, right both in a pod and on a workstation.
            kubeconfig: String::new(),
            // Everything: ownership chains need every namespace's controllers.
            namespaces: Vec::new(),
            // Everything.
            label_selector: String::new(),
        }
    }
}

/// Captures DNS queries and responses of every socket on the node (any network namespace) with
/// `cgroup_skb` programs on the cgroup v2 root, and pairs them into `dns_query` facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsCollectorConfig {
    /// Whether DNS is captured. Default: `false`.
    pub enabled: bool,
    /// DNS server ports: queries to them and responses from them, over UDP and TCP, are
    /// captured; 1 to 64 distinct ports, none 0. Default: `[53]`.
    pub ports: Vec<u16>,
    /// A query with no response within this is reported as timed out, `100ms..=1m`.
    /// Default: `5s`.
    #[serde(with = "humantime_str")]
    pub timeout: Duration,
    /// An NXDOMAIN answer is held this long for the next name of the same search-path lookup
    /// (the same process, query type and first label), `0s..=1m`; `0s` reports every name on
    /// its own. Default: `1s`.
    #[serde(with = "humantime_str")]
    pub search_window: Duration,
    /// Ring buffer between the eBPF programs and Tapio, in bytes: a power of two from 65536
    /// to 1073741824. Default: `8388608` (8 MiB).
    pub ring_buffer_bytes: u32,
}

impl Default for DnsCollectorConfig {
    fn default() -> Self {
        DnsCollectorConfig {
            // Off: it attaches to the packet path of every socket on the node, a choice to make
            // explicitly.
            enabled: false,
            // The DNS port; add the ports of DNS servers that listen elsewhere.
            ports: vec![53],
            // glibc's resolver waits 5 s for an answer before it retries (`options timeout`).
            timeout: Duration::from_secs(5),
            // The names of one search-path lookup follow each other within milliseconds.
            search_window: Duration::from_secs(1),
            // 8 MiB holds about 7 000 messages between reads.
            ring_buffer_bytes: 8 << 20,
        }
    }
}

/// Polls the node's kubelet API for pod status and resource usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletCollectorConfig {
    /// Whether the kubelet is polled. Default: `false`.
    pub enabled: bool,
    /// Base URL of the kubelet API, `https://host:port`. Default: `https://127.0.0.1:10250`.
    pub url: String,
    /// File holding the bearer token sent to the kubelet. Default: the pod's service-account
    /// token, `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub token_path: String,
    /// PEM file of the CA that signed the kubelet's serving certificate. Empty: the system
    /// roots. Default: the service-account CA, `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`.
    pub ca_path: String,
    /// Accept any serving certificate (kubelets often serve a self-signed one). Default: `false`.
    pub insecure_skip_tls_verify: bool,
    /// How often `/pods` and `/stats/summary` are read, `1s..=10m`. Default: `10s`.
    #[serde(with = "humantime_str")]
    pub poll_interval: Duration,
    /// Share of a container's limit, in percent, at or above which its use is reported,
    /// `1..=100`. Default: `90`.
    pub usage_threshold_percent: u8,
}

impl Default for KubeletCollectorConfig {
    fn default() -> Self {
        KubeletCollectorConfig {
            // Off: needs a kubelet and a token with `nodes/proxy` and `nodes/stats` access.
            enabled: false,
            // The kubelet's default secure port on the same node (the agent runs host-networked).
            url: "https://127.0.0.1:10250".into(),
            // Where Kubernetes mounts the pod's service-account token.
            token_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            // The cluster CA mounted with that token.
            ca_path: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            // Verify: skipping is an explicit, visible choice.
            insecure_skip_tls_verify: false,
            // The kubelet's own housekeeping runs every 10s; polling faster reads the same numbers.
            poll_interval: Duration::from_secs(10),
            // 90%: close enough to the limit that an OOM kill or throttling is likely next.
            usage_threshold_percent: 90,
        }
    }
}

/// Follows the systemd journal of the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemdCollectorConfig {
    /// Whether the journal is followed. Default: `false`.
    pub enabled: bool,
    /// Units whose lifecycle is reported, as globs (`*` any run of characters, `?` one), e.g.
    /// `kubelet.service`, `*.service`; 1 to 64 non-empty patterns. Default: `["*.service"]`.
    pub unit_filter: Vec<String>,
    /// Directories holding the journal files read: every `*.journal` and `*.journal~` file in
    /// them and in their subdirectories one level down (journald's `<machine-id>/`); 1 to 16
    /// non-empty paths. A directory that does not exist is skipped. Default:
    /// `["/var/log/journal", "/run/log/journal"]` (journald's persistent and volatile stores).
    pub directories: Vec<String>,
    /// File where the position in the journal (its cursor) is kept, so that a restart resumes
    /// after the last entry the dataflow took in. Empty: not kept, every start begins afresh.
    /// Default: `/var/lib/tapio/journal.cursor`.
    pub cursor_file: String,
    /// Without a kept position: read the entries already in the journal (`true`) or only
    /// those written from now on (`false`). Default: `false`.
    pub read_existing: bool,
    /// Kernel messages (`_TRANSPORT=kernel`) are parsed for OOM kills. Default: `true`.
    pub oom: bool,
    /// How often the journal is checked for new entries and new files when it has nothing
    /// new, `10ms..=10s`. Default: `250ms`.
    #[serde(with = "humantime_str")]
    pub poll_interval: Duration,
}

impl Default for SystemdCollectorConfig {
    fn default() -> Self {
        SystemdCollectorConfig {
            // Off: needs read access to the node's journal (root or the systemd-journal group).
            enabled: false,
            // Services: the units that run daemons (kubelet, containerd, ...).
            unit_filter: vec!["*.service".into()],
            // journald's persistent store, then its volatile one.
            directories: vec!["/var/log/journal".into(), "/run/log/journal".into()],
            // Beside Tapio's other state on the node.
            cursor_file: "/var/lib/tapio/journal.cursor".into(),
            // Only new entries: a first start does not report the node's whole history.
            read_existing: false,
            oom: true,
            // A unit restart reaches the dataflow well within a tick of the default lateness.
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Watches the etcd of a self-managed cluster (managed control planes do not expose theirs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdCollectorConfig {
    /// Whether etcd is watched. Default: `false`.
    pub enabled: bool,
    /// The client URLs of the etcd members, all `http://` or all `https://`; 1 to 16. Each is
    /// probed on its own; the keyspace is watched through any of them. Default:
    /// `["https://127.0.0.1:2379"]` (a kubeadm control-plane node).
    pub endpoints: Vec<String>,
    /// The key prefix of the Kubernetes keyspace watched (the API server's
    /// `--etcd-prefix`, with a trailing `/`); must start with `/`. Default: `/registry/`.
    pub prefix: String,
    /// Report each key change of the keyspace as an `etcd_key_change` fact. Default: `true`.
    pub watch_keys: bool,
    /// PEM file of the CA that signs the members' certificates; required for `https://`
    /// endpoints. Default: `/etc/kubernetes/pki/etcd/ca.crt` (kubeadm).
    pub ca_file: String,
    /// PEM file of the client certificate presented to etcd; empty: none. Needs `key_file`.
    /// Default: `/etc/kubernetes/pki/apiserver-etcd-client.crt` (kubeadm).
    pub cert_file: String,
    /// PEM file of that certificate's private key; empty: none. Needs `cert_file`. Default:
    /// `/etc/kubernetes/pki/apiserver-etcd-client.key` (kubeadm).
    pub key_file: String,
    /// File where the last revision the dataflow took in is kept, so that a restart resumes
    /// after it. Empty: not kept, every start watches from the current revision. Default:
    /// `/var/lib/tapio/etcd.revision`.
    pub revision_file: String,
    /// How often each endpoint is probed (health, read latency, leader, database size,
    /// compaction), `1s..=10m`. Default: `10s`.
    #[serde(with = "humantime_str")]
    pub probe_interval: Duration,
    /// How long connecting and each request may take, `100ms..=1m`; a probe that takes longer
    /// reports the endpoint unhealthy. Default: `5s`.
    #[serde(with = "humantime_str")]
    pub timeout: Duration,
}

impl Default for EtcdCollectorConfig {
    fn default() -> Self {
        EtcdCollectorConfig {
            // Off: only self-managed clusters expose etcd, and it needs a client certificate.
            enabled: false,
            endpoints: vec!["https://127.0.0.1:2379".into()],
            // The API server's default --etcd-prefix.
            prefix: "/registry/".into(),
            watch_keys: true,
            // kubeadm's paths: the etcd CA and the API server's own etcd client certificate.
            ca_file: "/etc/kubernetes/pki/etcd/ca.crt".into(),
            cert_file: "/etc/kubernetes/pki/apiserver-etcd-client.crt".into(),
            key_file: "/etc/kubernetes/pki/apiserver-etcd-client.key".into(),
            // Beside Tapio's other state on the node.
            revision_file: "/var/lib/tapio/etcd.revision".into(),
            // A latency spike or leader change is seen within one default lateness window or
            // so, at one read and one status request per endpoint per probe.
            probe_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The correlation engine and the rules it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationConfig {
    /// The timely/differential dataflow engine. Default: see [`EngineConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub engine: EngineConfig,
    /// Follows ownerReferences and process trees to attribute events to their owners.
    /// Default: enabled, see [`OwnershipConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub ownership: OwnershipConfig,
    /// Detects the OOM kill -> process exit -> container exit sequence.
    /// Default: enabled, see [`OomSequenceConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub oom_sequence: OomSequenceConfig,
    /// Finds a pod's container that keeps ending. Default: enabled, see
    /// [`RestartLoopConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub restart_loop: RestartLoopConfig,
    /// Finds many facts of one kind about one subject in quick succession. Default: enabled,
    /// see [`BurstConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub burst: BurstConfig,
    /// Finds containers of several pods on one node ending together. Default: enabled, see
    /// [`CoOccurrenceConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub co_occurrence: CoOccurrenceConfig,
    /// Detects memory use crossing its limit share followed by an OOM kill of that container.
    /// Default: enabled, see [`MemoryExhaustionConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub memory_exhaustion: MemoryExhaustionConfig,
    /// Detects node pressure conditions followed by evictions from that node.
    /// Default: enabled, see [`NodePressureConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub node_pressure: NodePressureConfig,
    /// Declared sequences: steps on shared entities within a bound, each with its name.
    /// Written, the list replaces the built-in one (copy the built-ins to keep them).
    /// Default: the built-in sequences, see [`builtin_sequences`].
    #[serde(deserialize_with = "null_as_default_sequences")]
    pub sequences: Vec<SequenceConfig>,
    /// Links a configuration file change on a node to the node-wide container restart that
    /// followed it. Default: enabled, see [`ConfigChangeConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub config_change: ConfigChangeConfig,
    /// Detects a rollout whose new pods fail while the old ones were ready.
    /// Default: enabled, see [`BadRolloutConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub bad_rollout: BadRolloutConfig,
    /// Builds the service graph from TCP connects and accepts.
    /// Default: enabled, see [`ServiceGraphConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub service_graph: ServiceGraphConfig,
    /// Finds what a failure reaches along the service graph.
    /// Default: enabled, see [`BlastRadiusConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub blast_radius: BlastRadiusConfig,
    /// Detects a burst of failed DNS lookups from a pod, its connection errors and the DNS
    /// server's failure behind them. Default: enabled, see [`DnsFailureConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub dns_failure: DnsFailureConfig,
    /// Links etcd trouble (a slow or failed read, a leader change) to the Kubernetes Warning
    /// Events of failed writes that followed it. Default: enabled, see
    /// [`EtcdSlowdownConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub etcd_slowdown: EtcdSlowdownConfig,
    /// Finds pods whose network setup (CNI ADD) failed and has not succeeded since. Default:
    /// enabled, see [`PodNetworkConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub pod_network: PodNetworkConfig,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            engine: EngineConfig::default(),
            ownership: OwnershipConfig::default(),
            oom_sequence: OomSequenceConfig::default(),
            restart_loop: RestartLoopConfig::default(),
            burst: BurstConfig::default(),
            co_occurrence: CoOccurrenceConfig::default(),
            memory_exhaustion: MemoryExhaustionConfig::default(),
            node_pressure: NodePressureConfig::default(),
            sequences: builtin_sequences(),
            config_change: ConfigChangeConfig::default(),
            bad_rollout: BadRolloutConfig::default(),
            service_graph: ServiceGraphConfig::default(),
            blast_radius: BlastRadiusConfig::default(),
            dns_failure: DnsFailureConfig::default(),
            etcd_slowdown: EtcdSlowdownConfig::default(),
            pod_network: PodNetworkConfig::default(),
        }
    }
}

/// Sizing and timing of the dataflow engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Timely worker threads per process, `1..=256`. Default: `1`.
    pub worker_count: usize,
    /// Capacity, in events, of the bounded channel between sources and the dataflow,
    /// `1..=10_000_000`. Default: `10_000`.
    pub event_buffer_size: usize,
    /// Closed-tick batches buffered toward sinks, `1..=100_000`. Default: `64`.
    pub output_buffer_size: usize,
    /// Logical time granularity: events are grouped into ticks of this length, `1ms..=60s`.
    /// Written as a humantime string. Default: `100ms`.
    #[serde(with = "humantime_str")]
    pub tick: Duration,
    /// Bounded out-of-orderness: how long after a tick ends events for it are still accepted,
    /// `0s..=1h`. Written as a humantime string. Default: `2s`.
    #[serde(with = "humantime_str")]
    pub lateness: Duration,
    /// How long, in event time, a (source, node) may stay silent before the watermark stops
    /// waiting for it: once another source's heartbeat promises more than this beyond its last
    /// one, it is retired (logged and counted) until it heartbeats again. `0s` never retires a
    /// source, so one silent agent holds event time back for good; otherwise
    /// above `lateness`, at most `24h`. Written as a humantime string. Default: `30s`.
    #[serde(with = "humantime_str")]
    pub source_idle_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // One worker: a node agent should stay light; raise it on busy nodes.
            worker_count: 1,
            // Absorbs bursts (pod storms) of a few seconds without unbounded memory.
            event_buffer_size: 10_000,
            // A few seconds of ticks at 100ms: a slow sink does not stall the dataflow at once.
            output_buffer_size: 64,
            // Fine enough to order kernel events of one incident, coarse enough to batch well.
            tick: Duration::from_millis(100),
            // Covers typical clock skew and delivery delay between node-local sources.
            lateness: Duration::from_secs(2),
            // Far above every source's heartbeat interval and the lateness, so only an agent
            // that is gone (or cut off) is retired, and event time resumes within a minute.
            source_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The ownership graph: which workload owns a pod, container or process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnershipConfig {
    /// Whether ownership is tracked. Default: `true`.
    pub enabled: bool,
    /// Longest owner chain followed, `1..=64`; guards against ownerReference cycles. Default: `8`.
    pub max_depth: u32,
    /// How long a process stays in the ownership graph after it exits, at most `1h`. Written as
    /// a humantime string. Default: `30s`.
    #[serde(with = "humantime_str")]
    pub process_exit_grace: Duration,
    /// How long a container stays linked to its pod after the pod stops listing it (the
    /// container restarted or the pod went away), at most `24h`, so that the evidence of its
    /// last run keeps its owners. Written as a humantime string. Default: `10m`.
    #[serde(with = "humantime_str")]
    pub container_exit_grace: Duration,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        OwnershipConfig {
            // Almost every explanation needs to know who owns what.
            enabled: true,
            // Real chains are short (Pod -> ReplicaSet -> Deployment -> ...); 8 leaves room for CRDs.
            max_depth: 8,
            // Lets late events about a just-exited process still find its owner.
            process_exit_grace: Duration::from_secs(30),
            // As long as the OOM sequence keeps a match current by default, so a container's
            // OOM kill still names its pod and Deployment after the container restarts.
            container_exit_grace: Duration::from_secs(600),
        }
    }
}

/// The OOM sequence rule: OOM kill, then process exit, then container exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OomSequenceConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// Window within which OOM kill, process exit and container exit must all fall,
    /// `1ms..=1h`. Written as a humantime string. Default: `30s`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a detected sequence stays current before it is retracted, at least
    /// [`Self::within`]. Written as a humantime string. Default: `10m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for OomSequenceConfig {
    fn default() -> Self {
        OomSequenceConfig {
            // The headline rule: on unless asked otherwise.
            enabled: true,
            // The kernel, runtime and kubelet report an OOM within seconds of each other.
            within: Duration::from_secs(30),
            // Long enough for a person or alert to look at it, short enough to not go stale.
            keep_for: Duration::from_secs(10 * 60),
        }
    }
}

/// The restart loop rule: a pod's container that ends again and again, each exit within
/// [`Self::within`] of the one before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartLoopConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// Exits that make a loop, `2..=1000`. Default: `3`.
    pub count: u32,
    /// Each exit must follow the one before within this, `1s..=24h`. Written as a humantime
    /// string. Default: `10m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a loop stays current after its latest exit, at least [`Self::within`], at
    /// most `7d`. Written as a humantime string. Default: `15m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for RestartLoopConfig {
    fn default() -> Self {
        RestartLoopConfig {
            // A loop is the commonest sign that a workload is broken.
            enabled: true,
            // Kubernetes restarts a container that ends; the third end in a row is no accident.
            count: 3,
            // Crash-loop back-off grows to 5 minutes between restarts: 10 minutes keeps a
            // backed-off loop one loop.
            within: Duration::from_secs(10 * 60),
            // A little beyond `within`: the loop stays visible until it has clearly stopped.
            keep_for: Duration::from_secs(15 * 60),
        }
    }
}

/// When facts of one kind make a burst: how many, each within how long of the one before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BurstThreshold {
    /// Facts that make a burst, `2..=1000000`. Default: `5`.
    pub count: u32,
    /// Each fact must follow the one before within this, `1ms..=1h`. Written as a humantime
    /// string. Default: `1m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
}

impl Default for BurstThreshold {
    fn default() -> Self {
        BurstThreshold {
            // One failure is noise; five in a row are a pattern.
            count: 5,
            // Clients retry within seconds; a minute's gap ends a burst.
            within: Duration::from_secs(60),
        }
    }
}

/// The burst rule: many facts of one kind about one subject, each within a bound of the one
/// before, per kind of burst.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BurstConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// How long a burst stays current after its latest fact, at least every kind's `within`,
    /// at most `24h`. Written as a humantime string. Default: `5m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
    /// Refused, timed-out or failed TCP connects to one remote endpoint. Default: `5` within
    /// `1m`.
    #[serde(deserialize_with = "null_as_default")]
    pub connect_failures: BurstThreshold,
    /// Warning Kubernetes Events of one reason about one object. Default: `5` within `5m`.
    #[serde(deserialize_with = "null_as_default")]
    pub warning_events: BurstThreshold,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            // Failed connects and repeated warnings are what people look for first.
            enabled: true,
            // Long enough to look at, short enough to not outlive the problem by much.
            keep_for: Duration::from_secs(5 * 60),
            connect_failures: BurstThreshold::default(),
            warning_events: BurstThreshold {
                count: 5,
                // Kubernetes emits and aggregates Events more slowly than clients retry.
                within: Duration::from_secs(5 * 60),
            },
        }
    }
}

/// The co-occurrence rule: containers of several pods on one node ending together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoOccurrenceConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// Distinct pods whose containers must end, `2..=1000`. Default: `3`.
    pub pods: u32,
    /// Every exit must fall within this after the first, `1ms..=10m`. Written as a humantime
    /// string. Default: `10s`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a co-occurrence stays current after its latest exit, at least
    /// [`Self::within`], at most `24h`. Written as a humantime string. Default: `15m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for CoOccurrenceConfig {
    fn default() -> Self {
        CoOccurrenceConfig {
            // A node-wide restart explains many pods at once.
            enabled: true,
            // Two pods ending together happens by chance on a busy node; three rarely does.
            pods: 3,
            // A runtime or kubelet restart ends its containers within seconds.
            within: Duration::from_secs(10),
            // As long as a restart loop stays: the two are read together.
            keep_for: Duration::from_secs(15 * 60),
        }
    }
}

/// The configuration change rule: a configuration file on a node changes, then containers of
/// several pods on that node end together (a co-occurrence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigChangeConfig {
    /// Whether the rule runs. It builds on the co-occurrence rule's findings, so it finds
    /// nothing while that rule is disabled. Default: `true`.
    pub enabled: bool,
    /// Which files are configuration: absolute path globs (`*` and `?` within a segment, `**`
    /// for any number of segments) matched against the changed path, or the new path of a
    /// rename. Only files the kernel collector watches are reported at all
    /// (`collectors.kernel.file_path_prefixes`). At least one. Default: `["/etc/**"]`.
    pub paths: Vec<String>,
    /// How long before the restart's first exit the change may come, `1ms..=1h`. Written as a
    /// humantime string. Default: `10m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
}

impl Default for ConfigChangeConfig {
    fn default() -> Self {
        ConfigChangeConfig {
            // Cheap (few file changes, fewer node-wide restarts) and it names a cause.
            enabled: true,
            // Where a node's services keep their configuration.
            paths: vec!["/etc/**".into()],
            // A changed file is picked up by a restart someone makes minutes later, or by one
            // a crash forces; beyond ten minutes the order says little.
            within: Duration::from_secs(10 * 60),
        }
    }
}

/// The etcd slowdown rule: etcd trouble seen by the etcd collector's probes, then a Kubernetes
/// Warning Event of a failed write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdSlowdownConfig {
    /// Whether the rule runs. It finds nothing without the etcd collector
    /// (`collectors.etcd`) and the Kubernetes collector's Events. Default: `true`.
    pub enabled: bool,
    /// A probe's linearizable read that takes at least this is slow, `1ms..=1m`. Default:
    /// `100ms`.
    #[serde(with = "humantime_str")]
    pub slow_read: Duration,
    /// Reasons of the Warning Events that report a failed write, 1 to 64 non-empty names.
    /// Default: `["FailedCreate", "FailedDelete"]` (a controller could not create or delete
    /// its pods).
    pub reasons: Vec<String>,
    /// How long before the Event the etcd trouble may come, `1s..=1h`. Default: `2m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a link stays current after its Event; at least `within`, at most `24h`.
    /// Default: `10m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for EtcdSlowdownConfig {
    fn default() -> Self {
        EtcdSlowdownConfig {
            // Cheap: a few probe facts per interval and rare Warning Events.
            enabled: true,
            // etcd's own guidance: reads should answer within tens of ms; ten times that is
            // trouble the API server feels.
            slow_read: Duration::from_millis(100),
            // What the ReplicaSet, Job, DaemonSet and StatefulSet controllers report when the
            // API server refuses or times out their writes.
            reasons: vec!["FailedCreate".into(), "FailedDelete".into()],
            // A controller retries with back-off for a minute or two before it reports.
            within: Duration::from_secs(120),
            keep_for: Duration::from_secs(600),
        }
    }
}

/// The memory exhaustion rule: a container's memory use crosses the kubelet collector's share
/// of its limit, then the OOM killer ends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryExhaustionConfig {
    /// Whether the rule runs. It builds on the OOM sequence rule's matches, so it finds
    /// nothing while that rule is disabled. Default: `true`.
    pub enabled: bool,
    /// Δ: the OOM kill must follow the usage crossing within this, `1ms..=1h`. Written as a
    /// humantime string. Default: `10m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
}

impl Default for MemoryExhaustionConfig {
    fn default() -> Self {
        MemoryExhaustionConfig {
            // Cheap (it joins two small collections) and it names the cause of an OOM kill.
            enabled: true,
            // A leak climbs from 90% to the limit over minutes, seen by polls every 10s.
            within: Duration::from_secs(10 * 60),
        }
    }
}

/// The node pressure rule: a node's `MemoryPressure`, `DiskPressure` or `PIDPressure` turns
/// `True`, then the kubelet evicts pods from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodePressureConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// Δ: evictions must follow the condition turning `True` within this, `1ms..=1h`. Written
    /// as a humantime string. Default: `5m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a match stays current after the condition turned `True`, at least
    /// [`Self::within`]. Written as a humantime string. Default: `15m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for NodePressureConfig {
    fn default() -> Self {
        NodePressureConfig {
            // Evictions are rare and always worth explaining.
            enabled: true,
            // Hard thresholds evict at once, soft ones after their grace period (minutes).
            within: Duration::from_secs(5 * 60),
            // The kubelet holds a pressure condition at least 5m after the threshold clears.
            keep_for: Duration::from_secs(15 * 60),
        }
    }
}

/// The bad rollout rule: a Deployment's new ReplicaSet whose pods fail (containers exit, stop
/// being ready, fail their probes) while the previous ReplicaSet's pods were ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BadRolloutConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// How long after the new ReplicaSet appears its pods' failures are blamed on it,
    /// `1s..=24h`. Written as a humantime string. Default: `15m`.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a detected rollout stays current after the failure that showed it, at least
    /// `1s` and at most `24h`. Written as a humantime string. Default: `1h`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for BadRolloutConfig {
    fn default() -> Self {
        BadRolloutConfig {
            enabled: true,
            // A rollout's new pods start, pass or fail their probes and crash-loop within
            // minutes; a failure much later is rarely the rollout's.
            within: Duration::from_secs(15 * 60),
            // A bad rollout is usually rolled back within the hour; until then it stays news.
            keep_for: Duration::from_secs(60 * 60),
        }
    }
}

/// The service graph: who connects to whom, resolved through Services and EndpointSlices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceGraphConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// How long an edge lasts without traffic, `1s..=1h`. Written as a humantime string.
    /// Default: `5m`.
    #[serde(with = "humantime_str")]
    pub window: Duration,
    /// How long an address keeps resolving to a pod or Service after its EndpointSlice or
    /// Service record is gone, at most `1h`. Written as a humantime string. Default: `5m`.
    #[serde(with = "humantime_str")]
    pub mapping_grace: Duration,
    /// How often a flow's connections (one container to one address) are resolved anew:
    /// the first connection of each slot this long is resolved through the records, the
    /// others in the slot count as it does. A reused address is followed within one slot.
    /// `100ms..=window`. Written as a humantime string. Default: `30s`.
    #[serde(with = "humantime_str")]
    pub resolve_every: Duration,
}

impl Default for ServiceGraphConfig {
    fn default() -> Self {
        ServiceGraphConfig {
            // The dependency graph is what blast radius and path questions walk.
            enabled: true,
            // Clients that talk every few minutes (health checks, pollers) keep their edges.
            window: Duration::from_secs(5 * 60),
            // As long as the window: a connect still in the window keeps the mapping it was
            // made under, while a reused address is claimed by its newer record at once.
            mapping_grace: Duration::from_secs(5 * 60),
            // A busy flow costs one resolution per slot, not one per connection, and an
            // address that changes hands is followed within half a minute.
            resolve_every: Duration::from_secs(30),
        }
    }
}

/// The blast radius rule: a failure's transitive dependents along the service graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlastRadiusConfig {
    /// Whether the rule runs; needs `service_graph`. Default: `true`.
    pub enabled: bool,
    /// Most dependency edges followed from a failure, `1..=16`. Default: `4`.
    pub max_depth: u32,
    /// How long a dependent's failed connect counts as impact, `1s..=1h`. Written as a
    /// humantime string. Default: `5m`.
    #[serde(with = "humantime_str")]
    pub impact_window: Duration,
}

impl Default for BlastRadiusConfig {
    fn default() -> Self {
        BlastRadiusConfig {
            // A failure's reach is the question people ask first.
            enabled: true,
            // Client → Service → pod → Service → pod: deeper paths are rarely causal.
            max_depth: 4,
            // As long as the service graph's window.
            impact_window: Duration::from_secs(5 * 60),
        }
    }
}

/// The DNS failure rule: failed lookups from one pod, its connection errors, the server's
/// failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsFailureConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// How many failed lookups from one pod to one server make a burst, `2..=10_000`.
    /// Default: `3`.
    pub min_failures: u32,
    /// The window the failed lookups must fall within, counted from the first; the pod's
    /// connection errors in it join the burst. `1s..=1h`. Written as a humantime string.
    /// Default: `30s`.
    #[serde(with = "humantime_str")]
    pub window: Duration,
    /// How long before a burst's first failed lookup a failure of the DNS server (endpoint
    /// not ready, container exit or readiness loss of its pod) still counts as its cause,
    /// at most `1h`. Written as a humantime string. Default: `1m`.
    #[serde(with = "humantime_str")]
    pub cause_before: Duration,
    /// Whether `NXDOMAIN` answers count as failed lookups. Default: `false`.
    pub count_nxdomain: bool,
    /// How long a burst stays current after its first failed lookup, at least
    /// [`Self::window`]. Written as a humantime string. Default: `20m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for DnsFailureConfig {
    fn default() -> Self {
        DnsFailureConfig {
            enabled: true,
            // One failure is a retry away from fine; three in a row from one pod is a pattern.
            min_failures: 3,
            // A resolver retries within seconds (glibc: 5s timeout, 2 attempts per server),
            // so an outage fails several lookups of one pod within half a minute.
            window: Duration::from_secs(30),
            // The server's pod goes not ready or exits seconds before its clients notice.
            cause_before: Duration::from_secs(60),
            // A pod's search path (ndots:5) answers NXDOMAIN for every expansion that does not
            // exist: the server working, not failing.
            count_nxdomain: false,
            // An outage is often looked into after it ended: keep it a while.
            keep_for: Duration::from_secs(20 * 60),
        }
    }
}

/// The pod network rule: a failed CNI ADD explains a pod left without network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodNetworkConfig {
    /// Whether the rule runs. Default: `true`.
    pub enabled: bool,
    /// How long a failed ADD with no successful ADD of its pod after it stays current,
    /// `1s..=24h`. Written as a humantime string. Default: `15m`.
    #[serde(with = "humantime_str")]
    pub keep_for: Duration,
}

impl Default for PodNetworkConfig {
    fn default() -> Self {
        PodNetworkConfig {
            enabled: true,
            // The kubelet retries a failed sandbox with back-off (up to 5 minutes apart): a
            // pod still failing after 15 minutes has been retried a few times, and a pod given
            // up on is looked into well within it.
            keep_for: Duration::from_secs(15 * 60),
        }
    }
}

/// External systems that results are written to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrationsConfig {
    /// The Neo4j graph sink. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub neo4j: Neo4jConfig,
    /// The NATS JetStream sink. Default: disabled.
    #[serde(deserialize_with = "null_as_default")]
    pub nats: NatsConfig,
}

#[expect(
    clippy::derivable_impls,
    reason = "hand-written so that every default is stated and explained in one place"
)]
impl Default for IntegrationsConfig {
    fn default() -> Self {
        IntegrationsConfig {
            neo4j: Neo4jConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

/// Connection to a Neo4j database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Neo4jConfig {
    /// Bolt URI; empty disables the integration. Otherwise the scheme must be `bolt`, `bolt+s`,
    /// `bolt+ssc`, `neo4j`, `neo4j+s` or `neo4j+ssc`, followed by a host. Default: empty.
    pub uri: String,
    /// User name for authentication. Default: `neo4j`.
    pub username: String,
    /// Password for authentication; prefer `password_file` or the environment variable
    /// `TAPIO_NEO4J_PASSWORD`, which replace it. Never printed. Default: empty.
    pub password: Secret,
    /// File holding the password (surrounding white space ignored); used when
    /// `TAPIO_NEO4J_PASSWORD` is unset or empty. Default: empty (none).
    pub password_file: String,
    /// PEM file of the certificate authority that signed the server's certificate, for the
    /// `bolt+s` and `neo4j+s` schemes when the system roots do not hold it. Default: empty
    /// (the system roots).
    pub ca_file: String,
}

impl Default for Neo4jConfig {
    fn default() -> Self {
        Neo4jConfig {
            // Disabled: Neo4j is an optional integration.
            uri: String::new(),
            // Neo4j's built-in administrative user.
            username: "neo4j".to_owned(),
            // No secret can have a default.
            password: Secret::default(),
            // No secret can have a default.
            password_file: String::new(),
            // A server certificate signed by a public authority needs no file.
            ca_file: String::new(),
        }
    }
}

/// Connection to a NATS server with JetStream: the transport between node agents
/// (`tapio run --mode collectors`) and the correlation job (`--mode correlation`), and the
/// store that `tapio replay nats://…` backtests from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL; empty disables the integration. Otherwise the scheme must be `nats`, `tls`,
    /// `ws` or `wss`, followed by a host, e.g. `nats://127.0.0.1:4222`. Default: empty.
    pub url: String,
    /// JetStream stream name: non-empty, only `A-Z a-z 0-9 _ -`. Default: `TAPIO`.
    pub stream: String,
    /// Subject prefix: observations are published to `<prefix>.<source>.<node>` and the stream
    /// captures `<prefix>.>`. Dot-separated tokens of `A-Z a-z 0-9 _ -`. Default:
    /// `tapio.observations`.
    pub subject_prefix: String,
    /// Stream retention: `limits` (keep until `max_age`/`max_bytes`; needed for backtests and
    /// restarts) or `interest` (drop what every consumer acknowledged). Default: `limits`.
    pub retention: String,
    /// Oldest message the stream keeps; `0s` keeps messages forever. Written as a humantime
    /// string. Default: `168h` (a week).
    #[serde(with = "humantime_str")]
    pub max_age: Duration,
    /// Most bytes the stream keeps (the oldest go first); `0` means no limit. Default:
    /// `10737418240` (10 GiB).
    pub max_bytes: u64,
    /// How long the server remembers message ids to drop re-published duplicates, `1s..=24h`,
    /// at most `max_age` when that is set. Written as a humantime string. Default: `2m`.
    #[serde(with = "humantime_str")]
    pub duplicate_window: Duration,
    /// Durable consumer name of the correlation job; process `I` of a cluster uses
    /// `<consumer>-<I>`. Only `A-Z a-z 0-9 _ -`. Default: `tapio-correlation`.
    pub consumer: String,
    /// Observations (and at most as many messages) a node agent keeps unacknowledged at once,
    /// `1..=1000000`. Default: `1024`.
    pub max_pending_publishes: usize,
    /// How long a node agent waits for the server to acknowledge a publish before it treats
    /// NATS as unreachable and spools, `10ms..=1m`. Written as a humantime string. Default: `2s`.
    #[serde(with = "humantime_str")]
    pub publish_timeout: Duration,
    /// Widest event-time span a node agent keeps unacknowledged, `0s..=1h`: an observation is
    /// handed to the client only while its time (a heartbeat's `upto`) is at most the earliest
    /// unacknowledged observation's time plus this span. A lost connection can reorder only
    /// what is unacknowledged, so keep it below the correlation job's
    /// `correlation.engine.lateness` and a reconnect never makes a fact late. Written as a
    /// humantime string. Default: `500ms` (a quarter of the default lateness).
    #[serde(with = "humantime_str")]
    pub max_unacknowledged_span: Duration,
    /// File where a node agent keeps observations while NATS is unreachable; drained in order
    /// when NATS is back. Must not be empty. Default: `/var/lib/tapio/nats-spool.jsonl`.
    pub spool_path: String,
    /// Largest size of the spool file in bytes, at least `1024`; beyond it observations are
    /// dropped, counted and reported. Default: `1073741824` (1 GiB).
    pub spool_max_bytes: u64,
    /// User to authenticate as, with the password of `TAPIO_NATS_PASSWORD` or `password_file`;
    /// the environment variable `TAPIO_NATS_USER` replaces it. Default: empty (none).
    pub user: String,
    /// File holding the password of `user` (surrounding white space ignored); used when
    /// `TAPIO_NATS_PASSWORD` is unset or empty. Default: empty (none).
    pub password_file: String,
    /// File holding an authorization token; used when `TAPIO_NATS_TOKEN` is unset or empty.
    /// Default: empty (none).
    pub token_file: String,
    /// File holding an NKey seed (`SU…`); used when `TAPIO_NATS_NKEY_SEED` is unset or empty.
    /// Default: empty (none).
    pub nkey_seed_file: String,
    /// A `.creds` file (user JWT and NKey seed) for a server in operator mode. Default: empty
    /// (none).
    pub credentials_file: String,
    /// PEM file of the certificate authority that signed the server's certificate; set, it
    /// requires TLS. Default: empty (the system roots, TLS only with the `tls` scheme or when
    /// the server asks for it).
    pub tls_ca_file: String,
    /// PEM client certificate for servers that verify clients (with `tls_key_file`). Default:
    /// empty (none).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`. Default: empty (none).
    pub tls_key_file: String,
    /// The credentials resolved from the variables and files above by
    /// [`NatsConfig::resolve_auth`]; never read from or written to YAML.
    #[serde(skip)]
    pub auth: NatsAuth,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            // Disabled: NATS is an optional integration.
            url: String::new(),
            // Upper case by JetStream convention, named after the product.
            stream: "TAPIO".to_owned(),
            // Namespaced, so the stream never captures another application's subjects.
            subject_prefix: "tapio.observations".to_owned(),
            // Backtesting and restarts re-read the stream, so it must outlive consumption.
            retention: "limits".to_owned(),
            // A week of history to backtest incidents after a weekend.
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            // Bounds the server's disk use on busy clusters.
            max_bytes: 10 * 1024 * 1024 * 1024,
            // JetStream's own default: covers a reconnect and a re-publish of the spool.
            duplicate_window: Duration::from_secs(2 * 60),
            // One durable cursor per correlation job.
            consumer: "tapio-correlation".to_owned(),
            // Keeps a loopback link busy without buffering much if the server goes away.
            max_pending_publishes: 1024,
            // Far above a healthy ack round trip, short enough to start spooling quickly.
            publish_timeout: Duration::from_secs(2),
            // Well inside the default lateness of 2 s, and wide enough for thousands of
            // messages of a busy node per acknowledgement round trip.
            max_unacknowledged_span: Duration::from_millis(500),
            // The conventional state directory of a system daemon.
            spool_path: "/var/lib/tapio/nats-spool.jsonl".to_owned(),
            // Hours of a busy node's observations, small against a node's disk.
            spool_max_bytes: 1024 * 1024 * 1024,
            // A server without authorization needs none of these; secrets have no default.
            user: String::new(),
            password_file: String::new(),
            token_file: String::new(),
            nkey_seed_file: String::new(),
            credentials_file: String::new(),
            // TLS as the URL's scheme and the server ask, with the system roots.
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            // Resolved at start from the environment and the files.
            auth: NatsAuth::None,
        }
    }
}

/// Reads the sequence list; the key written with no value means the built-in sequences.
fn null_as_default_sequences<'de, D>(deserializer: D) -> Result<Vec<SequenceConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<Vec<SequenceConfig>>::deserialize(deserializer)?.unwrap_or_else(builtin_sequences))
}

/// Reads a section; a section written with no value (`collectors:`) means all its defaults.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads the node's container runtime (containerd) over its unix socket: the CRI
/// `RuntimeService` for sandboxes and containers, containerd's event service for their changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriCollectorConfig {
    /// Whether the runtime is read. Default: `false`.
    pub enabled: bool,
    /// containerd's gRPC socket, which serves both CRI and its own API. Default:
    /// `/run/containerd/containerd.sock`.
    pub socket: String,
    /// The containerd namespace whose events are followed: the one CRI keeps Kubernetes'
    /// containers in. Default: `k8s.io`.
    pub namespace: String,
    /// How long to wait before connecting again after the runtime went away or could not be
    /// reached, `100ms..=1m`. Default: `1s`.
    #[serde(with = "humantime_str")]
    pub retry_interval: Duration,
}

impl Default for CriCollectorConfig {
    fn default() -> Self {
        CriCollectorConfig {
            // Off: needs access to the runtime's socket (root, or the socket mounted in).
            enabled: false,
            // Where containerd listens by default.
            socket: "/run/containerd/containerd.sock".into(),
            // Where containerd's CRI plugin keeps Kubernetes' sandboxes and containers.
            namespace: "k8s.io".into(),
            // A restarted containerd is usually back within a second or two.
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// Receives the reports of Tapio's CNI plugin (`tapio-cni`), one per CNI operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniCollectorConfig {
    /// Whether the reports are received. Default: `false`.
    pub enabled: bool,
    /// The unix datagram socket the agent binds and the plugin sends to; the plugin's
    /// `socket` key must name the same path. An absolute path. Default:
    /// `/run/tapio/cni.sock`.
    pub socket: String,
}

impl Default for CniCollectorConfig {
    fn default() -> Self {
        CniCollectorConfig {
            // Off: the plugin has to be added to the node's CNI configuration first.
            enabled: false,
            // Where the plugin looks when its configuration names no socket; /run is on every
            // node and is cleared at boot, as a socket should be.
            socket: "/run/tapio/cni.sock".into(),
        }
    }
}
