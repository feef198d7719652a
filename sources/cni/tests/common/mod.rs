//! What the CNI tests share: network namespaces, bridges and directories that clean up after
//! themselves, the real plugins run as a container runtime runs them, and the agent's source
//! receiving reports.

#![allow(dead_code, reason = "each test file uses a part")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tapio_config::CniCollectorConfig;
use tapio_model::{CniOperation, FactPayload, Observation};
use tapio_sources::{Source, SourceContext, SourceStats};
use tapio_sources_cni::CniSource;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where Debian's containernetworking-plugins puts the plugins.
pub const PLUGINS: &str = "/usr/lib/cni";

/// The plugin under test.
pub fn tapio_cni() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapio-cni"))
}

/// `CNI_PATH`: the Debian plugins, then `tapio-cni`'s directory.
pub fn cni_path() -> String {
    let own = tapio_cni();
    format!(
        "{PLUGINS}:{}",
        own.parent().expect("the binary's directory").display()
    )
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
}

/// Network namespaces, a bridge name and a directory for one test, removed on drop (also when
/// the test fails).
pub struct Fixture {
    /// Unique among the tests of this process.
    pub tag: String,
    /// Scratch directory.
    pub dir: PathBuf,
    /// The bridge the bridge plugin creates.
    pub bridge: String,
    namespaces: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    /// A fresh fixture.
    pub fn new() -> Fixture {
        assert!(
            Path::new(PLUGINS).join("bridge").is_file(),
            "the CNI plugins are missing: install containernetworking-plugins (.ci/install)"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        let tag = format!("{pid}-{n}");
        let dir = std::env::temp_dir().join(format!("tapio-cni-test-{tag}"));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Fixture {
            bridge: format!("tc{pid}b{n}"),
            tag,
            dir,
            namespaces: Vec::new(),
        }
    }

    /// A new network namespace; returns its path.
    pub fn netns(&mut self) -> String {
        let name = format!("tcni-{}-{}", self.tag, self.namespaces.len());
        let out = run("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.namespaces.push(name.clone());
        format!("/var/run/netns/{name}")
    }

    /// The IPv4 addresses of `ifname` in the namespace at `path`, with prefix lengths.
    pub fn addresses(path: &str, ifname: &str) -> Vec<String> {
        let name = path.rsplit('/').next().expect("name");
        let out = run(
            "ip",
            &["-n", name, "-j", "-4", "addr", "show", "dev", ifname],
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        parsed
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|info| {
                format!(
                    "{}/{}",
                    info["local"].as_str().unwrap_or(""),
                    info["prefixlen"]
                )
            })
            .collect()
    }

    /// The bridge plugin's configuration with host-local handing out `start..=end` of
    /// `10.<octet>.0.0/24`, its leases kept in this fixture's directory under `store`.
    pub fn bridge_conf(&self, octet: u8, start: u8, end: u8, store: &str) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": format!("10.{octet}.0.0/24"),
                    "rangeStart": format!("10.{octet}.0.{start}"),
                    "rangeEnd": format!("10.{octet}.0.{end}"),
                }]],
                "dataDir": self.dir.join(store),
            },
        })
    }

    /// The socket path of this fixture's agent.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("cni.sock")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for name in &self.namespaces {
            let _ = run("ip", &["netns", "del", name]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A network configuration: `plugin` with the network's `name` and `cniVersion` (what a
/// runtime writes for one plugin of a list).
pub fn single(network: &str, plugin: &Value) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf["name"] = json!(network);
    conf["cniVersion"] = json!("1.0.0");
    serde_json::to_vec(&conf).expect("json")
}

/// `tapio-cni` in wrap mode around `plugins`, reporting to `socket`.
pub fn wrapped(network: &str, plugins: &[Value], socket: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "tapio-cni",
        "socket": socket,
        "report_timeout_ms": 50,
        "plugins": plugins,
    }))
    .expect("json")
}

/// What one plugin invocation answered.
#[derive(Debug)]
pub struct Answer {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its exit status.
    pub status: i32,
    /// How long it took.
    pub took: Duration,
}

impl Answer {
    /// The output as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }
}

/// The identity of one pod's network attachment.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    /// `CNI_CONTAINERID`.
    pub container: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The pod in `CNI_ARGS`: namespace and name.
    pub pod: (&'a str, &'a str),
}

/// Runs `binary` as a runtime runs a CNI plugin: `command` and the call in the environment,
/// `conf` on standard input.
pub fn invoke(binary: &Path, command: &str, call: &Call<'_>, conf: &[u8]) -> Answer {
    use std::io::Write;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{}",
                call.pod.0, call.pod.1, call.container, call.pod.1
            ),
        )
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf)
        .expect("write the configuration");
    let output = child.wait_with_output().expect("wait");
    Answer {
        stdout: output.stdout,
        status: output.status.code().unwrap_or(-1),
        took: started.elapsed(),
    }
}

/// The previous result inserted into a network configuration, as a runtime does for CHECK,
/// DEL and the next plugin of a chain.
pub fn with_prev(conf: &[u8], prev: &Value) -> Vec<u8> {
    let mut conf: Value = serde_json::from_slice(conf).expect("json");
    conf["prevResult"] = prev.clone();
    serde_json::to_vec(&conf).expect("json")
}

/// The agent's CNI source, running until dropped.
pub struct Agent {
    rx: mpsc::Receiver<Observation>,
    /// Everything received so far.
    pub seen: Vec<Observation>,
    /// The source's counters.
    pub stats: Arc<SourceStats>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Starts the source on `socket` and waits until it listens.
    pub async fn start(socket: &Path) -> Agent {
        let source = CniSource::new(&CniCollectorConfig {
            enabled: true,
            socket: socket.display().to_string(),
        });
        let (cx, rx) = SourceContext::for_test("cni", "n1", 4096);
        let stats = Arc::clone(&cx.stats);
        let shutdown = cx.shutdown.clone();
        let task = tokio::spawn(async move {
            Box::new(source).run(cx).await.expect("the source runs");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the agent never bound its socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Agent {
            rx,
            seen: Vec::new(),
            stats,
            shutdown,
            task: Some(task),
        }
    }

    /// The `cni_operation` facts received so far, after waiting until `count` have come (at
    /// most 10 s).
    pub async fn operations(&mut self, count: usize) -> Vec<CniOperation> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let operations: Vec<CniOperation> = self
                .seen
                .iter()
                .filter_map(|observation| match observation {
                    Observation::Fact(fact) => match &fact.payload {
                        FactPayload::CniOperation(operation) => Some(operation.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            if operations.len() >= count || Instant::now() >= deadline {
                // The state updates a fact implies come right after it.
                while let Ok(Some(observation)) =
                    tokio::time::timeout(Duration::from_millis(200), self.rx.recv()).await
                {
                    self.seen.push(observation);
                }
                return operations;
            }
            match tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await {
                Ok(Some(observation)) => self.seen.push(observation),
                Ok(None) => return operations,
                Err(_) => {}
            }
        }
    }

    /// Stops the source and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
