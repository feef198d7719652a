//! The node agent's footprint: the agent pod's CPU and memory on a real node, at idle and under
//! an exec storm, beside the same binary run directly on the host in the same run.
//!
//! Run with `cargo build --release --bin tapio && cargo bench -p tapio-benches --bench
//! footprint` as root (needs what the deploy end-to-end test needs: the control plane binary
//! and Helm that `.ci/install` builds, `containerd`, `ctr`, `nats-server`). Optional arguments
//! after `--`: `--warmup S` seconds after both agents publish (default 15), `--idle S` and
//! `--storm S` seconds measured (default 30 each), `--rate R` execs per second in the storm
//! (default 200).
//!
//! On the tests' control plane, kubelet and containerd (`tapio_tests::control_plane`) it builds
//! the image offline from `target/release/tapio`, imports it, and installs the chart's agent
//! (split mode: its ServiceAccount, ClusterRole, ConfigMap and DaemonSet, rendered by Helm with
//! the chart's default resources, publishing to a local NATS server). Beside it, the same binary
//! runs on the host with the same configuration file (the pod's service account paths and state
//! directory pointed at host files, a token of the agent's ServiceAccount) and the same
//! environment, under another node name so that the two streams stay apart. Both run at once,
//! so both see the same load and the same noise from the rest of the machine.
//!
//! Phases, after the warm-up: **idle** (nothing but the cluster's own activity), then **exec
//! storm** (`/bin/true` spawned at a fixed rate, paced, from this process; both agents' kernel
//! collectors see every exec). For each phase and each process it prints the CPU used (from
//! `/proc/<pid>/stat`, as % of one core over the phase) and the resident set (`VmRSS`, the
//! largest of one sample a second), the pod-to-host ratios, and the pod's container cgroup as
//! the kubelet enforces it (cgroup v1: `cpuacct.usage`, and `memory.usage_in_bytes` at its
//! largest, which adds page cache and the kernel memory charged to the pod, eBPF maps
//! included).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::TryStreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use tapio_benches::proc_status::{cpu_seconds, mib};
use tapio_tests::control_plane::ControlPlane;
use tapio_tests::deploy;
use tapio_tests::nats::NatsServer;

const NAMESPACE: &str = "tapio";
const NODE: &str = "node-footprint";
const HOST_NODE: &str = "node-footprint-host";
const IMAGE: &str = "localhost/tapio/tapio:footprint";

struct Options {
    warmup: u64,
    idle: u64,
    storm: u64,
    rate: u64,
}

fn options() -> Result<Options> {
    let mut options = Options {
        warmup: 15,
        idle: 30,
        storm: 30,
        rate: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--warmup" => &mut options.warmup,
            "--idle" => &mut options.idle,
            "--storm" => &mut options.storm,
            "--rate" => &mut options.rate,
            // `cargo bench` passes `--bench`.
            "--bench" => continue,
            other => bail!("unknown argument {other}"),
        };
        let value = args.next().ok_or_else(|| anyhow!("{arg} needs a value"))?;
        *slot = value
            .parse()
            .with_context(|| format!("{arg} {value}: not a whole number"))?;
    }
    ensure!(
        options.idle > 0 && options.storm > 0 && options.rate > 0,
        "--idle, --storm and --rate must be above 0"
    );
    Ok(options)
}

/// A `kB` field of `/proc/<pid>/status`, bytes; 0 when gone.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The cgroup v1 directory of `pid` for `controller` (`memory`, `cpuacct`).
fn cgroup_dir(pid: u32, controller: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if controllers.split(',').any(|name| name == controller) {
            let path = path.trim_start_matches('/');
            for mount in [controller.to_string(), controllers.to_string()] {
                let dir = Path::new("/sys/fs/cgroup").join(mount).join(path);
                if dir.exists() {
                    return Ok(dir);
                }
            }
        }
    }
    bail!("no cgroup v1 {controller} directory of process {pid}")
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// The process of container `id`: the one whose cgroup names the container and whose command
/// is `tapio`.
fn container_pid(id: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            (comm.trim() == "tapio" && cgroup.contains(id)).then_some(pid)
        })
}

/// JetStream messages on `subject` in the agent's stream.
async fn messages_on(url: &str, subject: &str) -> u64 {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    let Ok(stream) = js.get_stream("TAPIO").await else {
        return 0;
    };
    match stream.info_with_subjects(subject).await {
        Ok(mut subjects) => {
            let mut total = 0;
            while let Ok(Some((_, count))) = subjects.try_next().await {
                total += count as u64;
            }
            total
        }
        Err(_) => 0,
    }
}

async fn wait_publishing(url: &str, node: &str, what: &str, log: &Path) -> Result<()> {
    let subject = format!("tapio.observations.kernel.{node}");
    let deadline = Instant::now() + Duration::from_secs(180);
    while messages_on(url, &subject).await == 0 {
        ensure!(
            Instant::now() < deadline,
            "{what} published nothing on {subject}; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// What one process used over one phase.
#[derive(Default, Clone, Copy)]
struct Usage {
    /// CPU, % of one core.
    cpu: f64,
    /// Largest `VmRSS` sampled, bytes.
    rss: u64,
}

/// The pod's container cgroup over one phase.
#[derive(Default, Clone, Copy)]
struct CgroupUsage {
    cpu: f64,
    memory: u64,
}

struct Measured {
    pod: Usage,
    host: Usage,
    cgroup: CgroupUsage,
}

/// Samples both processes and the pod's cgroup once a second for `seconds`.
async fn measure(pod: u32, host: u32, cgroup: (&Path, &Path), seconds: u64) -> Measured {
    let (cpuacct, memory) = cgroup;
    let start = Instant::now();
    let pod_cpu = cpu_seconds(&pod.to_string());
    let host_cpu = cpu_seconds(&host.to_string());
    let cgroup_cpu = read_u64(&cpuacct.join("cpuacct.usage"));
    let mut measured = Measured {
        pod: Usage::default(),
        host: Usage::default(),
        cgroup: CgroupUsage::default(),
    };
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        measured.pod.rss = measured.pod.rss.max(status_bytes(pod, "VmRSS"));
        measured.host.rss = measured.host.rss.max(status_bytes(host, "VmRSS"));
        measured.cgroup.memory = measured
            .cgroup
            .memory
            .max(read_u64(&memory.join("memory.usage_in_bytes")));
    }
    let wall = start.elapsed().as_secs_f64();
    measured.pod.cpu = (cpu_seconds(&pod.to_string()) - pod_cpu) / wall * 100.0;
    measured.host.cpu = (cpu_seconds(&host.to_string()) - host_cpu) / wall * 100.0;
    measured.cgroup.cpu =
        (read_u64(&cpuacct.join("cpuacct.usage")) - cgroup_cpu) as f64 / 1e9 / wall * 100.0;
    measured
}

/// Spawns `/bin/true` at `rate` per second until stopped; counts the execs.
fn exec_storm(
    rate: u64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Command::new("/bin/true").status().is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                // Behind: do not burst to catch up, keep the rate.
                next = now;
            }
        }
    })
}

/// Kills the host run when dropped.
struct HostRun(Child);

impl Drop for HostRun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ratio(pod: f64, host: f64) -> String {
    if host > 0.0 {
        format!("{:.2}", pod / host)
    } else {
        "-".into()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() -> Result<()> {
    let options = options()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(options))
}

async fn run(options: Options) -> Result<()> {
    let binary = tapio_tests::tapio_binary();
    ensure!(
        binary.exists(),
        "{} is missing: cargo build --release --bin tapio",
        binary.display()
    );
    let dir = std::env::temp_dir().join(format!("tapio-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let plane = ControlPlane::start_with_service_accounts("footprint")?;
    let admin = deploy::client(&plane, "admin").await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "the API server never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))?;
    // The namespace controller may not be up yet: retry until the API server takes it.
    loop {
        match Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &namespace)
            .await
        {
            Ok(_) => break,
            Err(error) => {
                ensure!(Instant::now() < deadline, "create namespace: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let kubelet = tokio::task::block_in_place(|| plane.start_kubelet(NODE))?;
    let nodes: Api<Node> = Api::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    while nodes.get_opt(NODE).await?.is_none() {
        ensure!(Instant::now() < deadline, "the kubelet never registered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let nats = NatsServer::start("footprint");
    let tar = dir.join("tapio-image.tar");
    deploy::build_image(&binary, &tar, IMAGE)?;
    kubelet.import_image(&tar)?;

    // The deploy test's values for this cluster (no CNI: the agent shares the node's network).
    let nats_url = nats.url();
    let kubelet_url = format!("https://127.0.0.1:{}", kubelet.port);
    let state = dir.join("state");
    let state_text = state.display().to_string();
    let kubernetes_port = plane.port.to_string();
    let (repository, tag) = IMAGE.rsplit_once(':').expect("a tag");
    let set: Vec<(&str, &str)> = vec![
        ("image.repository", repository),
        ("image.tag", tag),
        ("image.pullPolicy", "Never"),
        ("nats.url", &nats_url),
        ("collectors.kubelet.url", &kubelet_url),
        ("collectors.kubelet.insecure_skip_tls_verify", "false"),
        ("agent.stateHostPath", &state_text),
        ("agent.apiHost", "127.0.0.1"),
        ("agent.extraEnv[0].name", "KUBERNETES_SERVICE_HOST"),
        ("agent.extraEnv[0].value", "127.0.0.1"),
        ("agent.extraEnv[1].name", "KUBERNETES_SERVICE_PORT"),
        ("agent.extraEnv[1].value", &kubernetes_port),
    ];
    let documents = deploy::render("tapio", NAMESPACE, &set).map_err(anyhow::Error::msg)?;
    let agent: Vec<Value> = documents
        .into_iter()
        .filter(|document| document["metadata"]["labels"]["app.kubernetes.io/component"] == "agent")
        .collect();
    let daemonset = agent
        .iter()
        .find(|document| document["kind"] == "DaemonSet")
        .ok_or_else(|| anyhow!("the chart rendered no agent DaemonSet"))?
        .clone();
    let config = agent
        .iter()
        .find(|document| document["kind"] == "ConfigMap")
        .and_then(|map| map["data"]["tapio.yaml"].as_str())
        .ok_or_else(|| anyhow!("the chart rendered no agent configuration"))?
        .to_owned();
    deploy::apply(&admin, &agent, false).await?;
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let resources = container["resources"].clone();

    // The pod's agent process.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(180);
    let pod_pid = loop {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
            .await?;
        let id = list.items.iter().find_map(|pod| {
            let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
            status.state.as_ref()?.running.as_ref()?;
            Some(
                status
                    .container_id
                    .clone()?
                    .rsplit("://")
                    .next()?
                    .to_owned(),
            )
        });
        if let Some(pid) = id.as_deref().and_then(container_pid) {
            break pid;
        }
        ensure!(
            Instant::now() < deadline,
            "no running agent pod on {NODE}; see {}",
            kubelet.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpuacct = cgroup_dir(pod_pid, "cpuacct")?;
    let memory = cgroup_dir(pod_pid, "memory")?;
    wait_publishing(&nats_url, NODE, "the agent pod", kubelet.dir()).await?;

    // The same binary on the host: the same configuration, with the pod's service account
    // files and state directory replaced by host ones.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NAMESPACE);
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    }))?;
    let token = accounts
        .create_token_request("tapio-agent", &PostParams::default(), &request)
        .await?
        .status
        .and_then(|status| status.token)
        .ok_or_else(|| anyhow!("no token for tapio-agent"))?;
    let host_state = dir.join("host-state");
    std::fs::create_dir_all(&host_state)?;
    std::fs::write(dir.join("token"), token)?;
    let host_config = config
        .replace(
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            &dir.join("token").display().to_string(),
        )
        .replace(
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            &plane.dir().join("pki/ca.crt").display().to_string(),
        )
        .replace("/var/lib/tapio/", &format!("{}/", host_state.display()));
    let config_path = dir.join("host.yaml");
    std::fs::write(&config_path, &host_config)?;
    let args: Vec<&str> = container["args"]
        .as_array()
        .ok_or_else(|| anyhow!("the agent container has no args"))?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut command = Command::new(&binary);
    for arg in args {
        if arg == "/etc/tapio/tapio.yaml" {
            command.arg(&config_path);
        } else {
            command.arg(arg);
        }
    }
    // The container's literal environment; the node name is another one.
    for var in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
            command.env(name, value);
        }
    }
    let log_path = dir.join("host.log");
    let log = std::fs::File::create(&log_path)?;
    // The pod's API listens on the node's address; the host run takes any free port.
    command
        .env("TAPIO_NODE_NAME", HOST_NODE)
        .env("TAPIO_API_ADDRESS", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let host = HostRun(command.spawn().context("start the host run")?);
    let host_pid = host.0.id();
    wait_publishing(&nats_url, HOST_NODE, "the host run", &log_path).await?;

    tokio::time::sleep(Duration::from_secs(options.warmup)).await;
    let idle = measure(pod_pid, host_pid, (&cpuacct, &memory), options.idle).await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let storm_thread = exec_storm(options.rate, stop.clone(), count.clone());
    // Let both agents reach the storm's steady state before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = count.load(Ordering::Relaxed);
    let started = Instant::now();
    let storm = measure(pod_pid, host_pid, (&cpuacct, &memory), options.storm).await;
    let achieved =
        (count.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    storm_thread
        .join()
        .map_err(|_| anyhow!("the exec storm thread panicked"))?;
    let peak = read_u64(&memory.join("memory.max_usage_in_bytes"));
    ensure!(
        std::fs::metadata(format!("/proc/{pod_pid}")).is_ok(),
        "the agent pod's process exited during the run"
    );

    println!(
        "Node agent footprint (tapio run --mode collectors: kernel and kubelet collectors, NATS), \
         {}s idle, {}s exec storm at {} execs/s requested, {achieved:.0} achieved",
        options.idle, options.storm, options.rate
    );
    println!("pod resources from the chart: {resources}");
    println!();
    println!(
        "| phase      | pod CPU % core | host CPU % core | CPU pod/host | pod RSS MiB | host RSS MiB | RSS pod/host | pod cgroup CPU % | pod cgroup memory MiB |"
    );
    println!(
        "|------------|---------------:|----------------:|-------------:|------------:|-------------:|-------------:|-----------------:|----------------------:|"
    );
    for (phase, measured) in [("idle", &idle), ("exec storm", &storm)] {
        println!(
            "| {phase:<10} | {:>14.2} | {:>15.2} | {:>12} | {:>11.1} | {:>12.1} | {:>12} | {:>16.2} | {:>21.1} |",
            measured.pod.cpu,
            measured.host.cpu,
            ratio(measured.pod.cpu, measured.host.cpu),
            mib(measured.pod.rss),
            mib(measured.host.rss),
            ratio(measured.pod.rss as f64, measured.host.rss as f64),
            measured.cgroup.cpu,
            mib(measured.cgroup.memory),
        );
    }
    println!();
    println!(
        "pod cgroup memory peak over the whole run (memory.max_usage_in_bytes): {:.1} MiB",
        mib(peak)
    );
    let within = |pod: f64, host: f64| host > 0.0 && (pod / host - 1.0).abs() <= 0.10;
    println!(
        "targets: idle CPU <= 1% of a core: {}; RSS <= 128 MiB: {}; pod within 10% of host (CPU idle, CPU storm, RSS): {}, {}, {}",
        verdict(idle.pod.cpu <= 1.0),
        verdict(idle.pod.rss.max(storm.pod.rss) <= 128 << 20),
        verdict(within(idle.pod.cpu, idle.host.cpu)),
        verdict(within(storm.pod.cpu, storm.host.cpu)),
        verdict(within(storm.pod.rss as f64, storm.host.rss as f64)),
    );

    drop(host);
    drop(kubelet);
    drop(nats);
    drop(plane);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
