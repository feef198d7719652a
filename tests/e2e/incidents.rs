//! The incidents Tapio was designed around, run live: a real control plane, a real kubelet on
//! a private containerd (`tests/control_plane.rs`), busybox pods with host networking, and
//! `tapio record` with the kernel, kubernetes and kubelet collectors on (and the DNS one for
//! the DNS outage).
//!
//! - **Memory pressure**: a server Deployment behind a Service whose memory climbs above its
//!   limit share, holds there, then past the limit, so the kernel OOM-kills it on every run and
//!   the kubelet restarts it into a restart loop; its readiness and its endpoint go false and a
//!   client pod connecting to the endpoint's address every 200 ms is refused.
//! - **Service restart cascade**: a configuration file under a watched path is replaced by an
//!   atomic rename, then every container on the node but the client's is killed through
//!   containerd at once (a node-wide container restart); the backend takes a few seconds to
//!   listen again and the client's connects to it are refused meanwhile. The client is spared
//!   because it stands for a dependent on another node: this cluster has one node.
//! - **DNS outage**: a DNS server (the host's `dnsmasq`, run chrooted into the host's root in
//!   a pod behind a Service) answers a client pod's lookups (the host's `dig`, chrooted the
//!   same way) every 300 ms; its container is killed through containerd and comes back only
//!   after [`DNS_DOWN_SECS`]. Meanwhile the client's lookups go unanswered and it connects to
//!   a stale address it falls back on, which refuses. The replay must explain it as the
//!   server pod's failure → the client's failed lookups → its failed connects.
//!
//! Each live test asserts that the observations of every link of its incident are in the
//! recording, and replays it through `tapio replay`, which must explain the incident whole:
//! memory pressure as usage above the limit share → the OOM kill → the exits → the server pod →
//! the client's refused connects, plus the server's restart loop of OOM kills and the declared
//! sequence from the kill to the Service's endpoint; the cascade as the configuration change
//! (the rename, its directory declared as configuration for the replay) → the node-wide
//! restart → the backend → the client's refused connects.
//! With `UPDATE_RECORDINGS=1` it also writes the recording, reduced to the scenario's
//! namespace, its containers and processes, the watched path and its node (see [`reduce`]), to
//! `tests/recordings/`; [`shipped_incident_recordings_replay`] checks those shipped files in
//! every run without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tapio_model::CorrelationChange;
use tapio_model::recording::{RecordingReader, RecordingWriter};
use tapio_model::{
    Basis, BurstKind, ConnectOutcome, CorrelationKind, Detail, DnsOutcome, EntityId, FactPayload,
    FileOp, Impact, Observation, Observed, Relation, StateObject,
};
use tapio_tests::control_plane::{BUSYBOX_IMAGE, ControlPlane, Kubelet};

use crate::kubernetes::{apply_rbac, client, wait_ready};
use crate::support::{current, replay, scratch, tapio};

type Result<T> = anyhow::Result<T>;

/// The server's memory limit in the memory-pressure scenario.
const SERVER_LIMIT: u64 = 32 << 20;
/// The kubelet collector's usage threshold in the scenarios, percent of the limit.
const USAGE_THRESHOLD: u8 = 50;
/// The kubelet's crash-loop back-off: every restart waits this long.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);
/// The Deployments of the restart cascade; the first is the one behind a Service.
const CASCADE_DEPLOYMENTS: [&str; 4] = ["backend", "cache", "worker", "metrics"];
/// The memory-pressure recording shipped with the tests.
const MEMORY_PRESSURE: &str = "memory-pressure.jsonl";
/// The service-restart-cascade recording shipped with the tests.
const RESTART_CASCADE: &str = "service-restart-cascade.jsonl";
/// The DNS outage recording shipped with the tests.
const DNS_OUTAGE: &str = "dns-outage.jsonl";
/// The name the DNS outage's client looks up.
const DNS_NAME: &str = "api.shop.test";
/// How long the DNS server of the outage takes to come back after it is killed, s.
const DNS_DOWN_SECS: u64 = 6;

/// A control plane with its controllers and one kubelet node, the Tapio RBAC applied.
struct Cluster {
    // Field order is drop order: the kubelet (and its containers) before the control plane.
    kubelet: Kubelet,
    plane: ControlPlane,
    admin: Client,
    node: String,
}

impl Cluster {
    async fn start(name: &str, node: &str) -> Result<Cluster> {
        let plane = ControlPlane::start(name, true)?;
        let admin = client(&plane, "admin").await?;
        wait_ready(&admin).await?;
        apply_rbac(&admin).await?;
        let kubelet = tokio::task::block_in_place(|| {
            plane.start_kubelet_with_backoff(node, Some(RESTART_BACKOFF))
        })?;
        let nodes: Api<Node> = Api::all(admin.clone());
        let deadline = Instant::now() + Duration::from_secs(120);
        while nodes.get_opt(node).await?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the kubelet never registered; see {}",
                kubelet.dir().display()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(Cluster {
            kubelet,
            plane,
            admin,
            node: node.to_string(),
        })
    }

    /// A Tapio configuration with the kernel, kubernetes (watching `namespace`) and kubelet
    /// collectors on, the kernel watching `watched` for file events, and `more` collector
    /// sections (YAML indented under `collectors:`).
    fn tapio_config(
        &self,
        dir: &Path,
        namespace: &str,
        watched: &[&str],
        more: &str,
    ) -> Result<PathBuf> {
        let pki = self.plane.dir().join("pki");
        let watched: Vec<String> = watched.iter().map(|path| format!("\"{path}\"")).collect();
        let text = format!(
            "node_name: {node}\ncollectors:\n  kernel:\n    enabled: true\n    file_path_prefixes: [{watched}]\n  kubernetes:\n    enabled: true\n    kubeconfig: {kubeconfig}\n    namespaces: [{namespace}]\n  kubelet:\n    enabled: true\n    url: https://127.0.0.1:{port}\n    token_path: {token}\n    ca_path: {ca}\n    poll_interval: 1s\n    usage_threshold_percent: {USAGE_THRESHOLD}\n{more}",
            node = self.node,
            watched = watched.join(", "),
            kubeconfig = self.plane.kubeconfig("tapio").display(),
            port = self.kubelet.port,
            token = pki.join("tapio.token").display(),
            ca = pki.join("ca.crt").display(),
        );
        let path = dir.join("tapio.yaml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    async fn create_namespace(&self, name: &str) -> Result<()> {
        let namespace: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(self.admin.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        Ok(())
    }

    /// A one-replica Deployment `name` (label `app: name`) of one busybox container running
    /// `script` on this node with host networking; with `port`, a TCP readiness probe on it;
    /// with `host_root`, the volumes of [`host_root_volume`].
    async fn deploy(
        &self,
        namespace: &str,
        name: &str,
        script: &str,
        port: Option<u16>,
        memory_limit: Option<&str>,
        host_root: bool,
    ) -> Result<()> {
        let mut container = json!({
            "name": name, "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script],
        });
        let mut volumes = json!([]);
        if host_root {
            (container["volumeMounts"], volumes) = host_root_volume();
        }
        if let Some(port) = port {
            container["ports"] = json!([{"containerPort": port}]);
            container["readinessProbe"] = json!({
                "tcpSocket": {"port": port},
                "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1,
                "timeoutSeconds": 1,
            });
        }
        if let Some(limit) = memory_limit {
            container["resources"] = json!({"limits": {"memory": limit}});
        }
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"nodeName": self.node, "hostNetwork": true,
                        "terminationGracePeriodSeconds": 0,
                        "containers": [container], "volumes": volumes},
                },
            },
        }))?;
        Api::<Deployment>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &deployment)
            .await?;
        Ok(())
    }

    /// A Service `name` selecting `app: name` on `port`.
    async fn expose(&self, namespace: &str, name: &str, port: u16) -> Result<()> {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name},
                "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}]},
        }))?;
        Api::<Service>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &service)
            .await?;
        Ok(())
    }

    /// A pod that opens a TCP connection to `address` (`ip:port`) every 200 ms (and closes it
    /// at once). It waits with the shell's `read -t` on a pipe nobody writes to, so that each
    /// round starts one process (`nc`), not two.
    async fn client_pod(&self, namespace: &str, address: &str) -> Result<()> {
        let (ip, port) = address
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("`{address}` is not ip:port"))?;
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {"nodeName": self.node, "hostNetwork": true,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "client", "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", format!(
                        "sleep 2147483647 | while true; do nc -w 1 {ip} {port} </dev/null 2>/dev/null; read -t 0.2 line; done"
                    )]}]},
        }))?;
        Api::<Pod>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await?;
        Ok(())
    }

    /// A pod `client` that looks `DNS_NAME` up with the host's `dig` (chrooted into the host's
    /// root) at the DNS server `server` (`ip:port`) every 300 ms and connects to the answer's
    /// address on `port`; when the lookup fails it falls back on an address it remembers,
    /// `127.0.0.1:stale_port`, where nothing listens any more.
    async fn dns_client_pod(
        &self,
        namespace: &str,
        server: &str,
        port: u16,
        stale_port: u16,
    ) -> Result<()> {
        let (ip, dns_port) = server
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("`{server}` is not ip:port"))?;
        let (mounts, volumes) = host_root_volume();
        let script = format!(
            "sleep 2147483647 | while true; do \
             a=$(chroot /host /usr/bin/dig +short +tries=1 +time=1 -p {dns_port} @{ip} {DNS_NAME} A | head -n 1); \
             case \"$a\" in [0-9]*) nc -w 1 \"$a\" {port} ;; *) nc -w 1 127.0.0.1 {stale_port} ;; esac \
             </dev/null 2>/dev/null; read -t 0.3 line; done"
        );
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {"nodeName": self.node, "hostNetwork": true,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "client", "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never", "volumeMounts": mounts,
                    "command": ["/bin/sh", "-c", script]}],
                "volumes": volumes},
        }))?;
        Api::<Pod>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await?;
        Ok(())
    }

    /// Waits until the Service `name` has a ready endpoint and returns its `ip:port`.
    async fn ready_endpoint(&self, namespace: &str, name: &str) -> Result<String> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.admin.clone(), namespace);
        let selector = format!("kubernetes.io/service-name={name}");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let listed = match slices.list(&ListParams::default().labels(&selector)).await {
                Ok(listed) => listed.items,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("listing the EndpointSlices failed, retrying: {error}");
                    Vec::new()
                }
                Err(error) => return Err(error.into()),
            };
            for slice in listed {
                let port = slice
                    .ports
                    .as_ref()
                    .and_then(|ports| ports.first())
                    .and_then(|port| port.port);
                for endpoint in slice.endpoints.iter().flatten() {
                    let ready = endpoint
                        .conditions
                        .as_ref()
                        .and_then(|conditions| conditions.ready)
                        .unwrap_or(false);
                    if let (true, Some(port), Some(address)) =
                        (ready, port, endpoint.addresses.first())
                    {
                        return Ok(format!("{address}:{port}"));
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Service {namespace}/{name} never had a ready endpoint; see {}",
                self.kubelet.dir().display()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn pods(&self, namespace: &str) -> Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(self.admin.clone(), namespace)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// Waits until `check` holds for the namespace's pods.
    async fn wait_pods(
        &self,
        namespace: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&[Pod]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            // A loaded machine's API server can fail a request now and then: retry until the
            // deadline.
            let pods = match self.pods(namespace).await {
                Ok(pods) => pods,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("listing the pods of {namespace} failed, retrying: {error:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if check(&pods) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what} did not happen within {within:?}; pods: {}; see {}",
                serde_json::to_string(&pods.iter().map(|pod| &pod.status).collect::<Vec<_>>())?,
                self.kubelet.dir().display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Kills (SIGKILL) the task of every container in `ids` through the node's containerd.
    fn kill_containers(&self, ids: &[String]) -> Result<()> {
        let socket = self.kubelet.dir().join("containerd/containerd.sock");
        for id in ids {
            let output = std::process::Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args([
                    "--namespace",
                    "k8s.io",
                    "tasks",
                    "kill",
                    "--signal",
                    "SIGKILL",
                ])
                .arg(id)
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "ctr tasks kill {id}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// A container's `volumeMounts` and a pod's `volumes` that mount the host's root filesystem,
/// read-only, at `/host`, and an empty directory that outlives the container's restarts at
/// `/state`.
fn host_root_volume() -> (serde_json::Value, serde_json::Value) {
    (
        json!([{"name": "host", "mountPath": "/host", "readOnly": true},
            {"name": "state", "mountPath": "/state"}]),
        json!([{"name": "host", "hostPath": {"path": "/", "type": "Directory"}},
            {"name": "state", "emptyDir": {}}]),
    )
}

/// The restart count and the last termination reason of `pod`'s container `name`.
fn container_status(pod: &Pod, name: &str) -> Option<(i32, Option<String>, Option<String>)> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|status| status.name == name)?;
    let last = status
        .last_state
        .as_ref()
        .and_then(|state| state.terminated.as_ref())
        .and_then(|terminated| terminated.reason.clone());
    let id = status
        .container_id
        .as_ref()
        .map(|id| id.rsplit("://").next().unwrap_or(id).to_string());
    Some((status.restart_count, last, id))
}

fn pod_named(pods: &[Pod], prefix: &str) -> Option<Pod> {
    pods.iter()
        .find(|pod| {
            pod.metadata
                .name
                .as_deref()
                .is_some_and(|name| name.starts_with(prefix))
        })
        .cloned()
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// A running `tapio record`.
struct Recorder {
    child: Child,
    log: Option<std::thread::JoinHandle<String>>,
    path: PathBuf,
}

impl Drop for Recorder {
    /// A test that fails before [`Recorder::stop`] must not leave the recorder running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Recorder {
    /// Starts `tapio record --config <config>` into `path` and waits until the kernel source
    /// runs (and the DNS source, with `dns`).
    fn start(config: &Path, path: &Path, dns: bool) -> Result<Recorder> {
        let mut child = tapio()
            .arg("record")
            .arg("--config")
            .arg(config)
            .arg("--output")
            .arg(path)
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut log = String::new();
            let mut waiting = vec!["Kernel source started"];
            if dns {
                waiting.push("DNS source started");
            }
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::io::Result::ok)
            {
                let before = waiting.len();
                waiting.retain(|started| !line.contains(started));
                if waiting.is_empty() && before > 0 {
                    let _ = started_tx.send(());
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        if started_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the kernel (or DNS) source did not start within 30 s:\n{}",
                log.join().unwrap_or_default()
            );
        }
        Ok(Recorder {
            child,
            log: Some(log),
            path: path.to_path_buf(),
        })
    }

    /// Stops the recorder with SIGTERM and returns what it recorded.
    fn stop(mut self) -> Result<Vec<Observation>> {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM the recorder: {status}");
        let status = self.child.wait()?;
        let log = self
            .log
            .take()
            .and_then(|log| log.join().ok())
            .unwrap_or_default();
        anyhow::ensure!(status.success(), "tapio record failed: {status}\n{log}");
        for source in ["kernel", "kubernetes", "kubelet", "dns"] {
            anyhow::ensure!(
                !log.lines()
                    .any(|line| line.contains("ERROR")
                        && line.contains(&format!("source=\"{source}\""))),
                "the {source} source reported an error:\n{log}"
            );
        }
        read_recording(&self.path)
    }
}

/// Reads a recording file, every line of which must parse.
fn read_recording(path: &Path) -> Result<Vec<Observation>> {
    let file = std::fs::File::open(path)?;
    RecordingReader::new(BufReader::new(file))
        .map(|read| {
            read.map(|(_, observation)| observation)
                .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
        })
        .collect()
}

/// Writes `observations` as a recording at `path`.
fn write_recording(path: &Path, observations: &[Observation]) -> Result<()> {
    let mut writer = RecordingWriter::new(std::io::BufWriter::new(std::fs::File::create(path)?))?;
    for observation in observations {
        writer.write(observation)?;
    }
    writer.flush()?;
    Ok(())
}

/// The namespace of a namespaced entity.
fn namespace_of(entity: &EntityId) -> Option<&str> {
    match entity {
        EntityId::Pod { namespace, .. }
        | EntityId::Service { namespace, .. }
        | EntityId::Deployment { namespace, .. }
        | EntityId::ReplicaSet { namespace, .. }
        | EntityId::StatefulSet { namespace, .. }
        | EntityId::DaemonSet { namespace, .. }
        | EntityId::Job { namespace, .. } => Some(namespace),
        _ => None,
    }
}

fn in_namespace(entity: &EntityId, namespace: &str) -> bool {
    namespace_of(entity) == Some(namespace)
}

/// The runtime ids of the containers of `namespace`'s pods, from the kubernetes and kubelet
/// collectors' observations.
fn containers_of(observations: &[Observation], namespace: &str) -> BTreeSet<Arc<str>> {
    let mut ids = BTreeSet::new();
    for observation in observations {
        match observation {
            Observation::State(update) => {
                if let StateObject::PodContainer(container) = &update.record.object
                    && in_namespace(&container.pod, namespace)
                {
                    ids.insert(container.container_id.clone());
                }
            }
            Observation::Fact(fact) => match &fact.payload {
                FactPayload::ContainerExit(exit)
                    if exit
                        .pod
                        .as_ref()
                        .is_some_and(|pod| in_namespace(pod, namespace)) =>
                {
                    ids.insert(exit.container_id.clone());
                }
                FactPayload::ContainerReady(ready)
                    if in_namespace(&ready.pod, namespace) && !ready.container_id.is_empty() =>
                {
                    ids.insert(ready.container_id.clone());
                }
                _ => {}
            },
            Observation::Heartbeat(_) => {}
        }
    }
    ids
}

/// The container a kernel fact happened in.
fn fact_container(payload: &FactPayload) -> Option<&Arc<str>> {
    match payload {
        FactPayload::ProcessExec(fact) => fact.container_id.as_ref(),
        FactPayload::ProcessExit(fact) => fact.container_id.as_ref(),
        FactPayload::OomKill(fact) => fact.container_id.as_ref(),
        FactPayload::ProcessFork(fact) => fact.container_id.as_ref(),
        FactPayload::TcpConnect(fact) => fact.container_id.as_ref(),
        FactPayload::TcpAccept(fact) => fact.container_id.as_ref(),
        FactPayload::TcpClose(fact) => fact.container_id.as_ref(),
        FactPayload::TcpRetransmit(fact) => fact.container_id.as_ref(),
        FactPayload::FileOpenFailed(fact) => fact.container_id.as_ref(),
        FactPayload::FileChanged(fact) => fact.container_id.as_ref(),
        FactPayload::DnsQuery(fact) => fact.container_id.as_ref(),
        FactPayload::ContainerExit(fact) => Some(&fact.container_id),
        FactPayload::ContainerReady(fact) => Some(&fact.container_id),
        FactPayload::RuntimeChange(fact) => Some(&fact.id),
        FactPayload::KubeEvent(_)
        | FactPayload::ResourceUsage(_)
        | FactPayload::UnitChange(_)
        | FactPayload::EtcdKeyChange(_)
        | FactPayload::EtcdStatus(_)
        | FactPayload::EtcdLeaderChange(_)
        | FactPayload::EtcdCompaction(_)
        | FactPayload::CniOperation(_) => None,
    }
}

/// The part of a live recording that belongs to a scenario: the Kubernetes state and Events of
/// `namespace`, the conditions of `node`, the kubelet's facts about the namespace's pods, the
/// kernel's facts and process records in their containers, file events under `watched`, and
/// every source's heartbeats thinned to one a second (plus each source's last one). What the
/// machine's other processes did is left out, and dropping heartbeats only delays, never
/// breaks, a promise of progress.
fn reduce(
    observations: &[Observation],
    namespace: &str,
    node: &str,
    watched: &[&str],
) -> Vec<Observation> {
    let containers = containers_of(observations, namespace);
    let mut last_heartbeat: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (index, observation) in observations.iter().enumerate() {
        if let Observation::Heartbeat(heartbeat) = observation {
            last_heartbeat.insert((heartbeat.source.clone(), heartbeat.node.clone()), index);
        }
    }
    let mut kept_heartbeat: BTreeMap<(String, String), u64> = BTreeMap::new();
    let under = |path: &str| watched.iter().any(|prefix| path.starts_with(prefix));
    observations
        .iter()
        .enumerate()
        .filter(|(index, observation)| match observation {
            Observation::Heartbeat(heartbeat) => {
                let key = (heartbeat.source.clone(), heartbeat.node.clone());
                let due = kept_heartbeat
                    .get(&key)
                    .is_none_or(|kept| heartbeat.upto_ns >= kept + 1_000_000_000);
                if due || last_heartbeat.get(&key) == Some(index) {
                    kept_heartbeat.insert(key, heartbeat.upto_ns);
                    true
                } else {
                    false
                }
            }
            Observation::State(update) => match &update.record.object {
                StateObject::Workload(workload) => match &workload.entity {
                    EntityId::Node { name } => &**name == node,
                    entity => in_namespace(entity, namespace),
                },
                StateObject::PodContainer(container) => in_namespace(&container.pod, namespace),
                StateObject::ProcessContainer(process) => {
                    containers.contains(&process.container_id)
                }
                StateObject::Service(service) => in_namespace(&service.entity, namespace),
                StateObject::ServiceEndpoint(endpoint) => {
                    in_namespace(&endpoint.service, namespace)
                }
                StateObject::NodeCondition(condition) => {
                    matches!(&condition.node, EntityId::Node { name } if &**name == node)
                }
                StateObject::PodAddress(address) => in_namespace(&address.pod, namespace),
            },
            Observation::Fact(fact) => match &fact.payload {
                FactPayload::KubeEvent(event) => in_namespace(&event.involved, namespace),
                FactPayload::ResourceUsage(usage) => in_namespace(&usage.pod, namespace),
                FactPayload::FileChanged(changed) => {
                    under(&changed.path) || changed.new_path.as_deref().is_some_and(under)
                }
                FactPayload::FileOpenFailed(failed) => under(&failed.path),
                payload => fact_container(payload).is_some_and(|id| containers.contains(id)),
            },
        })
        .map(|(_, observation)| observation.clone())
        .collect()
}

/// The facts of `observations`, in order.
fn facts(observations: &[Observation]) -> impl Iterator<Item = &tapio_model::Fact> {
    observations
        .iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => Some(fact),
            _ => None,
        })
}

/// The ids of the containers `pod_prefix`'s pods of `namespace` ran as `name`.
fn containers_named(
    observations: &[Observation],
    namespace: &str,
    pod_prefix: &str,
    name: &str,
) -> BTreeSet<Arc<str>> {
    let of_pod = |pod: &EntityId| {
        matches!(pod, EntityId::Pod { namespace: ns, name: pod }
            if &**ns == namespace && pod.starts_with(pod_prefix))
    };
    let mut ids = BTreeSet::new();
    for observation in observations {
        match observation {
            Observation::State(update) => {
                if let StateObject::PodContainer(container) = &update.record.object
                    && of_pod(&container.pod)
                    && container.container_name == name
                {
                    ids.insert(container.container_id.clone());
                }
            }
            Observation::Fact(fact) => {
                if let FactPayload::ContainerExit(exit) = &fact.payload
                    && exit.pod.as_ref().is_some_and(of_pod)
                    && exit.container_name == name
                {
                    ids.insert(exit.container_id.clone());
                }
            }
            Observation::Heartbeat(_) => {}
        }
    }
    ids
}

/// The Service `namespace/name`'s endpoint address (`ip:port`), from the recorded slices.
fn endpoint_of(observations: &[Observation], namespace: &str, name: &str) -> Option<String> {
    observations.iter().find_map(|observation| match observation {
        Observation::State(update) => match &update.record.object {
            StateObject::ServiceEndpoint(endpoint)
                if matches!(&endpoint.service, EntityId::Service { namespace: ns, name: service }
                    if &**ns == namespace && &**service == name) =>
            {
                match &endpoint.endpoint {
                    EntityId::Endpoint { address } => Some(address.to_string()),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    })
}

/// Refused connects from `client`'s containers to `address`, with their times.
fn refused_connects(
    observations: &[Observation],
    clients: &BTreeSet<Arc<str>>,
    address: &str,
) -> Vec<u64> {
    facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::TcpConnect(connect)
                if connect.outcome == ConnectOutcome::Refused
                    && connect.remote.to_string() == address
                    && connect
                        .container_id
                        .as_ref()
                        .is_some_and(|id| clients.contains(id)) =>
            {
                Some(fact.time_ns)
            }
            _ => None,
        })
        .collect()
}

/// Asserts the observations of every link of the memory-pressure incident in `observations`:
/// the server's memory use above the limit share, the kernel's OOM kills in its containers,
/// three or more OOMKilled container exits, its readiness going false, its Service endpoint not
/// ready, and the client's connects to that endpoint refused. Returns the server's container
/// ids.
fn assert_memory_pressure(observations: &[Observation], namespace: &str) -> BTreeSet<Arc<str>> {
    let servers = containers_named(observations, namespace, "server-", "server");
    let clients = containers_named(observations, namespace, "client", "client");
    assert!(
        !servers.is_empty() && !clients.is_empty(),
        "{servers:?} {clients:?}"
    );

    let above: Vec<_> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::ResourceUsage(usage)
                if in_namespace(&usage.pod, namespace)
                    && usage.container_name == "server"
                    && usage.above =>
            {
                Some(usage)
            }
            _ => None,
        })
        .collect();
    assert!(!above.is_empty(), "no memory use above the limit share");
    for usage in &above {
        assert_eq!(usage.resource.as_str(), "memory");
        assert_eq!(usage.limit, SERVER_LIMIT);
        assert!(
            usage.used * 100 >= usage.limit * u64::from(USAGE_THRESHOLD),
            "{usage:?}"
        );
    }

    let kills: Vec<_> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::OomKill(kill)
                if kill
                    .container_id
                    .as_ref()
                    .is_some_and(|id| servers.contains(id)) =>
            {
                Some(kill)
            }
            _ => None,
        })
        .collect();
    let killed: BTreeSet<_> = kills
        .iter()
        .filter_map(|kill| kill.container_id.clone())
        .collect();
    assert!(
        killed.len() >= 3,
        "OOM kills in {} server containers: {kills:#?}",
        killed.len()
    );

    // The kubelet's exits: OOMKilled, 137, one per container. (Their restart counts are the
    // pod status's when the kubelet collector saw the exit, which can lag a restart behind.)
    let exits: Vec<_> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::ContainerExit(exit)
                if &*fact.id.source == "kubelet" && servers.contains(&exit.container_id) =>
            {
                Some(exit)
            }
            _ => None,
        })
        .collect();
    let oom_exits: BTreeSet<_> = exits
        .iter()
        .filter(|exit| exit.reason == "OOMKilled" && exit.exit_code == 137)
        .map(|exit| exit.container_id.clone())
        .collect();
    assert!(oom_exits.len() >= 3, "{exits:#?}");
    // The kernel's container exits agree: the cgroup emptied after the OOM kill.
    let kernel_oom_exits = facts(observations)
        .filter(|fact| {
            matches!(&fact.payload, FactPayload::ContainerExit(exit)
                if &*fact.id.source == "kernel" && servers.contains(&exit.container_id)
                    && exit.reason == "OOMKilled")
        })
        .count();
    assert!(
        kernel_oom_exits >= 3,
        "{kernel_oom_exits} kernel OOMKilled exits"
    );

    let not_ready = facts(observations).any(|fact| {
        matches!(&fact.payload, FactPayload::ContainerReady(ready)
            if in_namespace(&ready.pod, namespace) && ready.container_name == "server" && !ready.ready)
    });
    assert!(not_ready, "the server's readiness never went false");

    let address = endpoint_of(observations, namespace, "server").expect("the server's endpoint");
    let endpoint_not_ready = observations.iter().any(|observation| {
        matches!(observation, Observation::State(update) if update.diff == 1
            && matches!(&update.record.object, StateObject::ServiceEndpoint(endpoint)
                if in_namespace(&endpoint.service, namespace)
                    && endpoint.endpoint.to_string() == format!("endpoint/{address}")
                    && !endpoint.ready))
    });
    assert!(
        endpoint_not_ready,
        "the endpoint {address} never went not ready"
    );

    let refused = refused_connects(observations, &clients, &address);
    assert!(
        refused.len() >= 3,
        "{} refused connects from the client to {address}",
        refused.len()
    );
    servers
}

/// Asserts the observations of every link of the service-restart cascade in `observations`:
/// the configuration file's rename under `watched`, then three or more containers of different
/// pods on the node ending within five seconds, then the client's connects to the backend's
/// endpoint refused. Returns the time of the exits' burst.
fn assert_restart_cascade(observations: &[Observation], namespace: &str, watched: &str) -> u64 {
    let change = facts(observations)
        .find(|fact| {
            matches!(&fact.payload, FactPayload::FileChanged(changed)
                if changed.op == FileOp::Rename
                    && changed.new_path.as_deref().is_some_and(|path| path.starts_with(watched)
                        && path.ends_with("backend.yaml")))
        })
        .unwrap_or_else(|| panic!("no rename of backend.yaml under {watched}"));

    // The kubelet's exits of pods of the namespace, after the change.
    let exits: Vec<(u64, &tapio_model::ContainerExit)> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::ContainerExit(exit)
                if &*fact.id.source == "kubelet"
                    && fact.time_ns > change.time_ns
                    && exit
                        .pod
                        .as_ref()
                        .is_some_and(|pod| in_namespace(pod, namespace)) =>
            {
                Some((fact.time_ns, exit))
            }
            _ => None,
        })
        .collect();
    let by_pod: Vec<(u64, EntityId)> = exits
        .iter()
        .filter_map(|(time, exit)| Some((*time, exit.pod.clone()?)))
        .collect();
    let reported = burst(&by_pod, FEW_SECONDS, 3)
        .unwrap_or_else(|| panic!("no three pods' containers ended within 5 s: {exits:#?}"));
    assert!(
        reported - change.time_ns < 60_000_000_000,
        "the change came more than a minute before the exits"
    );
    // The kernel saw the same containers end, within seconds of each other, after the change:
    // its times are the exits' own (the kubelet's are those of the poll that saw them).
    let killed: BTreeSet<_> = exits
        .iter()
        .map(|(_, exit)| exit.container_id.clone())
        .collect();
    let kernel_exits: Vec<(u64, Arc<str>)> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::ContainerExit(exit)
                if &*fact.id.source == "kernel"
                    && fact.time_ns > change.time_ns
                    && killed.contains(&exit.container_id) =>
            {
                Some((fact.time_ns, exit.container_id.clone()))
            }
            _ => None,
        })
        .collect();
    let burst = burst(&kernel_exits, FEW_SECONDS, 3).unwrap_or_else(|| {
        panic!("the kernel saw no three of {killed:?} end within 5 s: {kernel_exits:?}")
    });

    let clients = containers_named(observations, namespace, "client", "client");
    let address = endpoint_of(observations, namespace, "backend").expect("the backend's endpoint");
    let refused = refused_connects(observations, &clients, &address);
    let after: Vec<_> = refused
        .iter()
        .filter(|time| **time >= burst.saturating_sub(2_000_000_000))
        .collect();
    assert!(
        after.len() >= 3,
        "{} refused connects from the client to {address} after the restart ({} in all)",
        after.len(),
        refused.len()
    );
    burst
}

/// "Within a few seconds", in ns.
const FEW_SECONDS: u64 = 5_000_000_000;

/// The time of the first event of `events` (time, key) after which `count` distinct keys occur
/// within `window` ns.
fn burst<K: Ord>(events: &[(u64, K)], window: u64, count: usize) -> Option<u64> {
    events.iter().map(|(time, _)| *time).find(|start| {
        events
            .iter()
            .filter(|(time, _)| *time >= *start && *time - *start <= window)
            .map(|(_, key)| key)
            .collect::<BTreeSet<_>>()
            .len()
            >= count
    })
}

/// Replays `recording` through `tapio replay` with `extra` arguments, asserting no source or
/// rule logged an error, and returns every change it made.
fn replay_clean(recording: &Path, extra: &[&str], name: &str) -> Vec<CorrelationChange> {
    let (changes, log) = replay(recording, extra, name);
    assert!(
        !log.lines().any(|line| line.contains("ERROR")),
        "the replay of {} logged errors:\n{log}",
        recording.display()
    );
    changes
}

/// Every correlation that became current at some point of `changes`.
fn ever(changes: &[CorrelationChange]) -> Vec<&tapio_model::Correlation> {
    changes
        .iter()
        .filter(|change| change.diff > 0)
        .map(|change| &change.correlation)
        .collect()
}

/// Asserts that replaying `recording` (with `extra` arguments) with two workers changes exactly
/// what one worker changes: the same correlations inserted and retracted at the same ticks.
fn assert_replay_deterministic(recording: &Path, extra: &[&str], name: &str) {
    let sorted = |workers: &[&str], suffix: &str| {
        let args: Vec<&str> = extra.iter().chain(workers).copied().collect();
        let (changes, _) = replay(recording, &args, &format!("{name}-{suffix}"));
        let mut lines: Vec<String> = changes
            .iter()
            .map(|change| serde_json::to_string(change).expect("serialize"))
            .collect();
        lines.sort();
        lines
    };
    let one = sorted(&["--workers", "1"], "one");
    assert!(
        !one.is_empty(),
        "{} replays to nothing",
        recording.display()
    );
    assert_eq!(
        one,
        sorted(&["--workers", "2"], "two"),
        "{}",
        recording.display()
    );
}

/// Asserts that `now` holds, for each Deployment of `names` in `namespace`, the ownership chain
/// of a pod of it (pod → ReplicaSet → Deployment).
fn assert_deployments_own_pods(now: &[tapio_model::Correlation], namespace: &str, names: &[&str]) {
    for name in names {
        let deployment = EntityId::Deployment {
            namespace: namespace.into(),
            name: (*name).into(),
        };
        assert!(
            now.iter().any(|correlation| {
                correlation.kind == CorrelationKind::Ownership
                    && correlation.root_cause == deployment
                    && correlation.chain[0].entity.kind() == "pod"
                    && correlation.chain.len() == 3
            }),
            "no pod owned by {deployment}: {now:#?}"
        );
    }
}

/// Asserts that `now` holds an OOM sequence for each of `servers`' OOM-killed containers.
fn assert_oom_sequences(now: &[tapio_model::Correlation], servers: &BTreeSet<Arc<str>>) {
    let sequences: BTreeSet<String> = now
        .iter()
        .filter(|correlation| correlation.kind == CorrelationKind::OomRestart)
        .flat_map(|correlation| correlation.chain.iter())
        .filter_map(|hop| match &hop.entity {
            EntityId::Container { id } if servers.contains(id) => Some(id.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        sequences.len() >= 3,
        "OOM sequences for {} server containers: {now:#?}",
        sequences.len()
    );
}

/// What each hop of a chain observed, by kind, in order: `resource_usage`, `oom_kill`, ...
fn observed_kinds(chain: &[tapio_model::Hop]) -> Vec<String> {
    chain
        .iter()
        .map(|hop| match serde_json::to_value(&hop.observed) {
            Ok(serde_json::Value::Object(map)) => map.keys().next().cloned().unwrap_or_default(),
            Ok(serde_json::Value::String(kind)) => kind,
            _ => String::new(),
        })
        .collect()
}

/// Whether `wanted` appears in `kinds` in order (not necessarily next to each other).
fn in_order(kinds: &[String], wanted: &[&str]) -> bool {
    let mut rest = kinds.iter();
    wanted.iter().all(|kind| rest.any(|seen| seen == kind))
}

/// Asserts the memory-pressure incident as Tapio explains it, whole:
/// - a blast radius whose failure is the memory exhaustion of a server container: usage above
///   the limit share → the OOM kill (`caused`) → the process exit → the container exit →
///   the server pod → the client (`affects`) → the client's refused connect, observed impact;
/// - the server's restart loop, joined to its OOM cause: the kill first, then ≥ 3 exits, all
///   OOM kills;
/// - a burst of refused connects at the server's endpoint;
/// - the declared sequence `oom_to_endpoint_not_ready`: the OOM kill → the SIGKILL exit → the
///   container exit → the pod's container not ready → the Service's endpoint for the pod not
///   ready, then the pod and its owners up to the Deployment. A match goes when the endpoint
///   is ready again, as it is at the end, so this one is looked for in every change.
fn assert_memory_pressure_chains(changes: &[CorrelationChange]) {
    let now = current(changes);
    let explained = || {
        now.iter()
            .map(tapio_model::render::explain)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let whole = now.iter().find(|correlation| {
        let Detail::BlastRadius {
            failure: Some(CorrelationKind::MemoryExhaustion),
            impact: Impact::Observed,
            ..
        } = &correlation.detail
        else {
            return false;
        };
        let relations: Vec<Relation> = correlation.chain.iter().map(|hop| hop.relation).collect();
        let last = correlation.chain.last();
        in_order(
            &observed_kinds(&correlation.chain),
            &[
                "resource_usage",
                "oom_kill",
                "process_exit",
                "container_exit",
                "pod_container",
                "tcp_connect",
            ],
        ) && relations.contains(&Relation::Affects)
            && matches!(last.map(|hop| &hop.observed), Some(Observed::TcpConnect { outcome, .. }) if *outcome == ConnectOutcome::Refused)
            && matches!(last.map(|hop| &hop.entity), Some(EntityId::Pod { name, .. }) if name.as_ref() == "client")
    });
    assert!(
        whole.is_some(),
        "no usage → OOM kill → exit → container exit → client refused chain:\n{}",
        explained()
    );
    let looped = now.iter().find(|correlation| {
        matches!(
            &correlation.detail,
            Detail::RestartLoop { count, exits, .. }
                if *count >= 3 && exits.iter().all(|tally| tally.reason.as_ref() == "OOMKilled")
        ) && matches!(
            correlation.chain.first().map(|hop| &hop.observed),
            Some(Observed::OomKill { .. })
        )
    });
    assert!(
        looped.is_some(),
        "no restart loop of OOM kills with its cause:\n{}",
        explained()
    );
    assert!(
        now.iter().any(|correlation| matches!(
            &correlation.detail,
            Detail::Burst { kind: BurstKind::ConnectFailures, count, .. } if *count >= 5
        )),
        "no burst of refused connects:\n{}",
        explained()
    );
    // The declared sequence, whole: the kill through the pod's readiness (the kubelet
    // collector's, at the time Kubernetes recorded it) to the Service's endpoint for the pod,
    // then the server pod's owners.
    let declared = ever(changes).into_iter().find(|correlation| {
        matches!(&correlation.detail, Detail::DeclaredSequence { name, .. } if name.as_ref() == "oom_to_endpoint_not_ready")
            && in_order(
                &observed_kinds(&correlation.chain),
                &[
                    "oom_kill",
                    "process_exit",
                    "container_exit",
                    "container_ready",
                    "endpoint_ready",
                ],
            )
            && correlation.chain.iter().any(|hop| {
                matches!(&hop.entity, EntityId::Pod { name, .. } if name.starts_with("server-"))
                    && hop.relation == Relation::DependsOn
            })
            && correlation.chain.iter().any(|hop| {
                matches!(&hop.entity, EntityId::Deployment { name, .. } if name.as_ref() == "server")
            })
    });
    assert!(
        declared.is_some(),
        "no oom_to_endpoint_not_ready from the kill to the server's endpoint:\n{}",
        explained()
    );
}

/// Asserts the service restart cascade as Tapio explains it, whole, from the configuration
/// change under `watched`:
/// - the node is the root of ≥ 3 pods' containers ending together (`co_occurrence`);
/// - the change of `backend.yaml` is linked to it (`config_change_restart`): rooted at the
///   process that renamed the file, the change → the node (`caused`) → the pods' exits;
/// - a blast radius from that change reaches the client through the backend, with the
///   client's refused connect as observed impact: change → node → backend → client → connect.
fn assert_restart_cascade_chains(now: &[tapio_model::Correlation], watched: &str) {
    let explained = || {
        now.iter()
            .map(tapio_model::render::explain)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        now.iter().any(|correlation| {
            matches!(&correlation.detail, Detail::CoOccurrence { pods, .. } if *pods >= 3)
                && matches!(correlation.root_cause, EntityId::Node { .. })
        }),
        "no node-wide co-occurrence:\n{}",
        explained()
    );
    let starts_at_the_change = |correlation: &tapio_model::Correlation| {
        matches!(correlation.root_cause, EntityId::Process { .. })
            && matches!(
                correlation.chain.first(),
                Some(hop) if hop.entity == correlation.root_cause
                    && hop.relation == Relation::Start
                    && matches!(&hop.observed, Observed::FileChanged { op: FileOp::Rename, .. })
            )
            && matches!(
                correlation.chain.get(1),
                Some(hop) if matches!(hop.entity, EntityId::Node { .. })
                    && hop.relation == Relation::Caused
            )
    };
    let changed = now.iter().find(|correlation| {
        matches!(
            &correlation.detail,
            Detail::ConfigChange { path, pods, .. }
                if path.starts_with(watched) && path.ends_with("/backend.yaml") && *pods >= 3
        ) && starts_at_the_change(correlation)
    });
    let Some(changed) = changed else {
        panic!(
            "no configuration change of backend.yaml → node-wide restart:\n{}",
            explained()
        );
    };
    let reached = now.iter().find(|correlation| {
        let Detail::BlastRadius {
            failure: Some(CorrelationKind::ConfigChangeRestart),
            failed: EntityId::Pod { name, .. },
            impact: Impact::Observed,
            ..
        } = &correlation.detail
        else {
            return false;
        };
        let last = correlation.chain.last();
        name.starts_with("backend-")
            && correlation.root_cause == changed.root_cause
            && starts_at_the_change(correlation)
            && correlation.chain.iter().any(|hop| hop.relation == Relation::Affects)
            && matches!(last.map(|hop| &hop.observed), Some(Observed::TcpConnect { outcome, .. }) if outcome.is_failure())
    });
    assert!(
        reached.is_some(),
        "no configuration change → node restart → backend → client refused chain:\n{}",
        explained()
    );
}

/// A Tapio configuration in `dir` under which `backend.yaml`'s directory `watched` (ending in
/// `/`) holds configuration, for the cascade's replays.
fn cascade_config(dir: &Path, watched: &str) -> Result<PathBuf> {
    let path = dir.join("cascade.yaml");
    std::fs::write(
        &path,
        format!("correlation:\n  config_change:\n    paths: [\"{watched}**\"]\n"),
    )?;
    Ok(path)
}

/// Writes the reduced live recording to `tests/recordings/<name>` when `UPDATE_RECORDINGS` is
/// set, and returns the reduced recording's path (in `dir` otherwise).
fn keep_recording(reduced: &[Observation], dir: &Path, name: &str) -> Result<PathBuf> {
    let written = dir.join(name);
    write_recording(&written, reduced)?;
    if std::env::var_os("UPDATE_RECORDINGS").is_none() {
        return Ok(written);
    }
    // Renamed into place, so that the replay of the shipped files, which may run meanwhile,
    // never reads half a recording.
    let shipped = tapio_tests::recordings().join(name);
    let staged = tapio_tests::recordings().join(format!(".{name}.new"));
    std::fs::copy(&written, &staged)?;
    std::fs::rename(&staged, &shipped)?;
    Ok(shipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_memory_pressure() -> Result<()> {
    let namespace = "shop";
    let cluster = Cluster::start("memory-pressure", "node-mem").await?;
    cluster.create_namespace(namespace).await?;
    let dir = scratch("memory-pressure");
    let config = cluster.tapio_config(&dir, namespace, &[], "")?;
    let recorder = Recorder::start(&config, &dir.join("live.jsonl"), false)?;

    // The server listens at once; two seconds later it reads 20 MiB (62% of its 32 MiB limit)
    // into memory, holds it for 5 s (the kubelet's stats see it within about 2 s), then reads
    // on past the limit: the kernel OOM-kills it.
    let port = tapio_tests::free_port();
    cluster
        .deploy(
            namespace,
            "server",
            &format!(
                "httpd -f -p {port} -h /tmp & sleep 2; {{ head -c 20m /dev/zero; sleep 5; head -c 64m /dev/zero; }} | tail"
            ),
            Some(port),
            Some("32Mi"),
            false,
        )
        .await?;
    cluster.expose(namespace, "server", port).await?;
    let address = cluster.ready_endpoint(namespace, "server").await?;
    cluster.client_pod(namespace, &address).await?;
    // Three OOM kills, the kubelet restarting the container after each.
    cluster
        .wait_pods(
            namespace,
            Duration::from_secs(120),
            "three OOM kills",
            |pods| {
                pod_named(pods, "server-")
                    .and_then(|pod| container_status(&pod, "server"))
                    .is_some_and(|(restarts, last, _)| {
                        restarts >= 3 && last.as_deref() == Some("OOMKilled")
                    })
            },
        )
        .await?;
    // Let the last exit, readiness change and refused connects reach the collectors.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let observations = recorder.stop()?;

    let reduced = reduce(&observations, namespace, &cluster.node, &[]);
    let servers = assert_memory_pressure(&reduced, namespace);
    let path = keep_recording(&reduced, &dir, MEMORY_PRESSURE)?;
    let changes = replay_clean(&path, &[], "memory-pressure-replay");
    assert_oom_sequences(&current(&changes), &servers);
    assert_memory_pressure_chains(&changes);
    drop(cluster);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_service_restart_cascade() -> Result<()> {
    let namespace = "shop";
    let cluster = Cluster::start("restart-cascade", "node-cascade").await?;
    cluster.create_namespace(namespace).await?;
    let dir = scratch("restart-cascade");
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let watched = format!("{}/", etc.display());
    let config = cluster.tapio_config(&dir, namespace, &[&watched], "")?;
    let recorder = Recorder::start(&config, &dir.join("live.jsonl"), false)?;

    // The backend loads its configuration for 4 s before it listens, so after a restart its
    // dependents are refused for as long.
    let port = tapio_tests::free_port();
    cluster
        .deploy(
            namespace,
            "backend",
            &format!("sleep 4; exec httpd -f -p {port} -h /tmp"),
            Some(port),
            None,
            false,
        )
        .await?;
    cluster.expose(namespace, "backend", port).await?;
    for name in &CASCADE_DEPLOYMENTS[1..] {
        cluster
            .deploy(namespace, name, "exec sleep 100000", None, None, false)
            .await?;
    }
    let address = cluster.ready_endpoint(namespace, "backend").await?;
    cluster.client_pod(namespace, &address).await?;
    cluster
        .wait_pods(
            namespace,
            Duration::from_secs(60),
            "five running pods",
            |pods| pods.len() == 5 && pods.iter().all(pod_ready),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The configuration change: a new file renamed over the old one.
    std::fs::write(etc.join("backend.yaml"), "workers: 4\n")?;
    std::fs::write(etc.join("backend.yaml.new"), "workers: 8\n")?;
    std::fs::rename(etc.join("backend.yaml.new"), etc.join("backend.yaml"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The node-wide restart: every container on the node but the client's ends at once.
    let pods = cluster.pods(namespace).await?;
    let mut killed = Vec::new();
    let mut restarts_before = BTreeMap::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name == "client" {
            continue;
        }
        let container = pod.spec.as_ref().expect("spec").containers[0].name.clone();
        let (restarts, _, id) = container_status(pod, &container).expect("a container status");
        killed.push(id.expect("a running container has an id"));
        restarts_before.insert(name, (container, restarts));
    }
    assert_eq!(killed.len(), 4);
    cluster.kill_containers(&killed)?;
    cluster
        .wait_pods(namespace, Duration::from_secs(60), "the restarts", |pods| {
            restarts_before.iter().all(|(name, (container, before))| {
                pods.iter()
                    .find(|pod| pod.metadata.name.as_deref() == Some(name))
                    .and_then(|pod| container_status(pod, container))
                    .is_some_and(|(restarts, _, _)| restarts > *before)
            }) && pods.iter().all(pod_ready)
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let observations = recorder.stop()?;

    let reduced = reduce(&observations, namespace, &cluster.node, &[&watched]);
    assert_restart_cascade(&reduced, namespace, &watched);
    let path = keep_recording(&reduced, &dir, RESTART_CASCADE)?;
    let replay_config = cascade_config(&dir, &watched)?;
    let replay_config = replay_config.to_string_lossy();
    let now = current(&replay_clean(
        &path,
        &["--config", &replay_config],
        "restart-cascade-replay",
    ));
    assert_deployments_own_pods(&now, namespace, &CASCADE_DEPLOYMENTS);
    assert_restart_cascade_chains(&now, &watched);
    drop(cluster);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// The DNS collector's section of the outage's Tapio configuration: the server's port, and a
/// one-second timeout.
fn dns_collector(port: u16) -> String {
    format!("  dns:\n    enabled: true\n    ports: [{port}]\n    timeout: 1s\n")
}

/// The client's lookups of [`DNS_NAME`] in `observations`: (time, outcome, server).
fn client_lookups(
    observations: &[Observation],
    clients: &BTreeSet<Arc<str>>,
) -> Vec<(u64, DnsOutcome, String)> {
    facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::DnsQuery(query)
                if query.name == DNS_NAME
                    && query
                        .container_id
                        .as_ref()
                        .is_some_and(|id| clients.contains(id)) =>
            {
                Some((fact.time_ns, query.outcome, query.server.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// Asserts the observations of every link of the DNS outage in `observations`: the client's
/// lookups to the DNS Service's endpoint answered, then three or more failing (no answer),
/// then answered again; the DNS server container's exit (kubelet); the client's refused
/// connects to the address it falls back on, while its lookups fail.
fn assert_dns_outage(observations: &[Observation], namespace: &str) {
    let servers = containers_named(observations, namespace, "dns-", "dns");
    let clients = containers_named(observations, namespace, "client", "client");
    assert!(
        servers.len() >= 2 && !clients.is_empty(),
        "the server restarted once: {servers:?}, the client ran: {clients:?}"
    );
    let endpoint = endpoint_of(observations, namespace, "dns").expect("the DNS endpoint");
    let lookups = client_lookups(observations, &clients);
    assert!(
        lookups.iter().all(|(_, _, server)| *server == endpoint),
        "{lookups:?}"
    );
    let failed: Vec<u64> = lookups
        .iter()
        .filter(|(_, outcome, _)| outcome.is_server_failure())
        .map(|(time, _, _)| *time)
        .collect();
    assert!(failed.len() >= 3, "{lookups:?}");
    let (first, last) = (failed[0], failed[failed.len() - 1]);
    let answered = |keep: &dyn Fn(u64) -> bool| {
        lookups
            .iter()
            .filter(|(time, outcome, _)| *outcome == DnsOutcome::Answered && keep(*time))
            .count()
    };
    assert!(answered(&|time| time < first) >= 3, "{lookups:?}");
    assert!(answered(&|time| time > last) >= 1, "{lookups:?}");
    let exits: Vec<u64> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::ContainerExit(exit)
                if servers.contains(&exit.container_id) && exit.pod.is_some() =>
            {
                Some(fact.time_ns)
            }
            _ => None,
        })
        .collect();
    assert!(
        exits
            .iter()
            .any(|exit| *exit <= first + FEW_SECONDS && first <= exit + FEW_SECONDS),
        "the server's exit {exits:?} and the first failed lookup {first}"
    );
    let refused: Vec<u64> = facts(observations)
        .filter_map(|fact| match &fact.payload {
            FactPayload::TcpConnect(connect)
                if connect.outcome == ConnectOutcome::Refused
                    && connect
                        .container_id
                        .as_ref()
                        .is_some_and(|id| clients.contains(id)) =>
            {
                Some(fact.time_ns)
            }
            _ => None,
        })
        .collect();
    assert!(
        refused
            .iter()
            .filter(|time| **time >= first && **time <= last + FEW_SECONDS)
            .count()
            >= 2,
        "refused connects {refused:?} while lookups failed from {first} to {last}"
    );
}

/// Asserts the DNS failure a replay of the outage ends with, hop by hop: the DNS server pod's
/// failure (its container's exit or its readiness or endpoint going false) → the client pod's
/// first three failed lookups to the DNS Service's endpoint → the client's failed connects.
fn assert_dns_outage_chain(now: &[tapio_model::Correlation], namespace: &str) {
    let found: Vec<_> = now
        .iter()
        .filter(|correlation| correlation.kind == CorrelationKind::DnsFailure)
        .collect();
    assert_eq!(found.len(), 1, "{found:#?}");
    let correlation = found[0];
    assert!(
        matches!(&correlation.root_cause, EntityId::Pod { namespace: ns, name }
            if &**ns == namespace && name.starts_with("dns-")),
        "{correlation:#?}"
    );
    let chain = &correlation.chain;
    assert_eq!(chain[0].relation, Relation::Start);
    assert_eq!(chain[0].entity, correlation.root_cause);
    assert!(
        matches!(
            &chain[0].observed,
            Observed::ContainerExit { .. }
                | Observed::ContainerReady { .. }
                | Observed::EndpointReady { .. }
        ),
        "{:?}",
        chain[0]
    );
    let client = EntityId::Pod {
        namespace: namespace.into(),
        name: "client".into(),
    };
    for (hop, relation) in
        chain[1..4]
            .iter()
            .zip([Relation::Caused, Relation::FollowedBy, Relation::FollowedBy])
    {
        assert_eq!(hop.relation, relation, "{hop:?}");
        assert_eq!(hop.entity, client);
        assert!(
            matches!(&hop.observed, Observed::DnsQuery { name, outcome, .. }
                if &**name == DNS_NAME && outcome.is_server_failure()),
            "{hop:?}"
        );
    }
    assert_eq!(chain[4].relation, Relation::Caused);
    assert_eq!(chain[4].entity, client);
    assert!(
        matches!(&chain[4].observed, Observed::TcpConnect { outcome, .. } if outcome.is_failure()),
        "{:?}",
        chain[4]
    );
    let Detail::DnsFailure {
        failed_lookups,
        connect_errors,
        ..
    } = &correlation.detail
    else {
        panic!("{:?}", correlation.detail)
    };
    assert!(
        *failed_lookups >= 3 && *connect_errors >= 1,
        "{correlation:#?}"
    );
    assert_eq!(correlation.confidence.percent, 95);
    assert!(
        correlation
            .confidence
            .basis
            .contains(&Basis::DnsServerFailureObserved)
    );
}

/// The DNS outage: a DNS server (the host's `dnsmasq`, chrooted, in a pod behind a Service)
/// answers a client pod's lookups, is killed through containerd and comes back only after
/// [`DNS_DOWN_SECS`] (its restarted container waits); meanwhile the client's lookups go
/// unanswered and it connects to a stale address that refuses. Tapio records with the DNS
/// collector on next to the kernel, kubernetes and kubelet ones, and the replay explains the
/// outage as the server's failure → the client's failed lookups → its failed connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_dns_outage() -> Result<()> {
    let namespace = "shop";
    let cluster = Cluster::start("dns-outage", "node-dns").await?;
    cluster.create_namespace(namespace).await?;
    let dir = scratch("dns-outage");
    let dns_port = tapio_tests::free_port();
    let config = cluster.tapio_config(&dir, namespace, &[], &dns_collector(dns_port))?;
    let recorder = Recorder::start(&config, &dir.join("live.jsonl"), true)?;

    let api_port = tapio_tests::free_port();
    cluster
        .deploy(
            namespace,
            "api",
            &format!("exec httpd -f -p {api_port} -h /tmp"),
            Some(api_port),
            None,
            false,
        )
        .await?;
    // A restarted server container waits before it serves again: the outage's length.
    cluster
        .deploy(
            namespace,
            "dns",
            &format!(
                "if [ -e /state/started ]; then sleep {DNS_DOWN_SECS}; fi; echo > /state/started; \
                 exec chroot /host /usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv \
                 --no-hosts --pid-file= --user=root --port={dns_port} --local=/shop.test/ \
                 --address=/{DNS_NAME}/127.0.0.1"
            ),
            Some(dns_port),
            None,
            true,
        )
        .await?;
    cluster.expose(namespace, "dns", dns_port).await?;
    let server = cluster.ready_endpoint(namespace, "dns").await?;
    let stale_port = tapio_tests::free_port();
    cluster
        .dns_client_pod(namespace, &server, api_port, stale_port)
        .await?;
    cluster
        .wait_pods(
            namespace,
            Duration::from_secs(60),
            "three running pods",
            |pods| pods.len() == 3 && pods.iter().all(pod_ready),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The outage: the DNS server's container is killed.
    let pods = cluster.pods(namespace).await?;
    let dns_pod = pod_named(&pods, "dns-").expect("the DNS pod");
    let (restarts, _, id) = container_status(&dns_pod, "dns").expect("a container status");
    cluster.kill_containers(&[id.expect("a running container has an id")])?;
    cluster
        .wait_pods(
            namespace,
            Duration::from_secs(60),
            "the DNS server's restart",
            |pods| {
                pod_named(pods, "dns-").is_some_and(|pod| {
                    pod_ready(&pod)
                        && container_status(&pod, "dns").is_some_and(|(now, _, _)| now > restarts)
                })
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let observations = recorder.stop()?;

    let reduced = reduce(&observations, namespace, &cluster.node, &[]);
    assert_dns_outage(&reduced, namespace);
    let path = keep_recording(&reduced, &dir, DNS_OUTAGE)?;
    let changes = replay_clean(&path, &[], "dns-outage-replay");
    assert_dns_outage_chain(&current(&changes), namespace);
    drop(cluster);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// The watched path the shipped cascade recording was made with: the config file's directory.
fn recorded_watched_path(observations: &[Observation]) -> String {
    facts(observations)
        .find_map(|fact| match &fact.payload {
            FactPayload::FileChanged(changed) => changed
                .new_path
                .as_deref()
                .and_then(|path| path.rsplit_once('/'))
                .map(|(dir, _)| format!("{dir}/")),
            _ => None,
        })
        .expect("a file change in the recording")
}

#[test]
fn shipped_incident_recordings_replay() -> Result<()> {
    let memory = tapio_tests::recordings().join(MEMORY_PRESSURE);
    let observations = read_recording(&memory)?;
    let servers = assert_memory_pressure(&observations, "shop");
    let changes = replay_clean(&memory, &[], "memory-pressure-shipped");
    assert_oom_sequences(&current(&changes), &servers);
    assert_memory_pressure_chains(&changes);
    assert_replay_deterministic(&memory, &[], "memory-pressure-workers");

    let cascade = tapio_tests::recordings().join(RESTART_CASCADE);
    let observations = read_recording(&cascade)?;
    let watched = recorded_watched_path(&observations);
    assert_restart_cascade(&observations, "shop", &watched);
    let dir = scratch("restart-cascade-config");
    let config = cascade_config(&dir, &watched)?;
    let config = config.to_string_lossy();
    let now = current(&replay_clean(
        &cascade,
        &["--config", &config],
        "restart-cascade-shipped",
    ));
    assert_deployments_own_pods(&now, "shop", &CASCADE_DEPLOYMENTS);
    assert_restart_cascade_chains(&now, &watched);
    let outage = tapio_tests::recordings().join(DNS_OUTAGE);
    assert_dns_outage(&read_recording(&outage)?, "shop");
    assert_dns_outage_chain(
        &current(&replay_clean(&outage, &[], "dns-outage-shipped")),
        "shop",
    );
    assert_replay_deterministic(&outage, &[], "dns-outage-workers");
    assert_replay_deterministic(&cascade, &["--config", &config], "restart-cascade-workers");
    // Under the default configuration paths (`/etc/**`) the test's directory is no
    // configuration: the restart stays rooted at the node.
    let now = current(&replay_clean(&cascade, &[], "restart-cascade-default"));
    assert!(
        !now.iter()
            .any(|correlation| correlation.kind == CorrelationKind::ConfigChangeRestart),
        "a change outside the configuration paths was linked"
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
