//! The CNI collector under pod churn: pods added and deleted through the real Debian CNI
//! plugins (bridge with host-local), with and without `tapio-cni` wrapping them.
//!
//! Run with `cargo bench -p tapio-benches --bench cni_churn` as root (network namespaces,
//! links; `containernetworking-plugins`). It builds `tapio-cni` (release) first. Optional
//! arguments after `--`: `--pods N` ADD+DEL pairs per run (default 200), `--rounds K`
//! (default 3).
//!
//! Runs without the plugin and with it alternate, `K` with it between `K + 1` without; each
//! run with it is compared with the mean of the runs without on either side of it, and the
//! table gives the median of the `K` ratios, so that a machine whose speed drifts (other
//! builds on its cores) moves both sides alike. Per run with it:
//!
//! - **events/s**: operations (ADD and DEL) reported per second of the run (the plugins'
//!   own speed bounds it);
//! - **CPU per event**: the CPU time of the agent's thread (the source on a runtime of its
//!   own: socket reads, decoding, facts and address records, and a consumer counting them)
//!   over the operations;
//! - **share of one core**: that CPU time over the run's wall time;
//! - **added latency per ADD**: mean ADD time with the plugin over without;
//! - **lost**: operations run minus `cni_operation` facts received, and datagrams rejected.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tapio_config::CniCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext, SourceStats};
use tapio_sources_cni::CniSource;

const PLUGINS: &str = "/usr/lib/cni";
const BRIDGE: &str = "tcnibench0";
const NAMESPACES: usize = 16;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds `tapio-cni` in release and returns its path.
fn build_plugin() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "tapio-sources-cni",
            "--bin",
            "tapio-cni",
        ])
        .status()
        .context("run cargo build for tapio-cni")?;
    if !status.success() {
        bail!("building tapio-cni failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| PathBuf::from("target"), |root| root.join("target"))
        },
        PathBuf::from,
    );
    Ok(target.join("release").join("tapio-cni"))
}

/// Namespaces, the bridge and a scratch directory, removed on drop.
struct Network {
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl Network {
    fn new() -> Result<Network> {
        if !Path::new(PLUGINS).join("bridge").is_file() {
            bail!("the CNI plugins are missing: apt-get install containernetworking-plugins");
        }
        let dir = std::env::temp_dir().join(format!("tapio-cni-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut network = Network {
            dir,
            namespaces: Vec::new(),
        };
        for index in 0..NAMESPACES {
            let name = format!("tcnibench-{index}");
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            let out = Command::new("ip").args(["netns", "add", &name]).output()?;
            if !out.status.success() {
                bail!(
                    "ip netns add {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            network.namespaces.push(name);
        }
        Ok(network)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for name in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a plugin as a runtime does; returns its output, failing on a non-zero exit.
fn invoke(
    binary: &Path,
    path: &str,
    command: &str,
    container: &str,
    netns: &str,
    conf: &[u8],
) -> Result<Vec<u8>> {
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container}"),
        )
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(conf)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{command} of {container} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out.stdout)
}

/// What one run measured.
struct Run {
    /// Mean ADD time, ns.
    add_ns: f64,
    /// Wall time, s.
    seconds: f64,
}

/// `pods` ADD+DEL pairs, through `tapio-cni` when `plugin` is given.
fn churn(network: &Network, plugin: Option<(&Path, &Path)>, pods: u64, round: u64) -> Result<Run> {
    let bridge = json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.236.0.0/16"}]],
            "dataDir": network.dir.join("ipam"),
        },
    });
    let (binary, path, conf) = match plugin {
        Some((tapio_cni, socket)) => (
            tapio_cni.to_path_buf(),
            format!(
                "{PLUGINS}:{}",
                tapio_cni.parent().context("directory")?.display()
            ),
            json!({
                "cniVersion": "1.0.0",
                "name": "podnet",
                "type": "tapio-cni",
                "socket": socket,
                "plugins": [bridge],
            }),
        ),
        None => {
            let mut conf = bridge;
            conf["name"] = json!("podnet");
            conf["cniVersion"] = json!("1.0.0");
            (Path::new(PLUGINS).join("bridge"), PLUGINS.to_string(), conf)
        }
    };
    let started = Instant::now();
    let mut adding = Duration::ZERO;
    for pod in 0..pods {
        let container = format!("bench-{round}-{pod}");
        let netns = &network.namespaces[pod as usize % NAMESPACES];
        let add_started = Instant::now();
        let result = invoke(
            &binary,
            &path,
            "ADD",
            &container,
            netns,
            &serde_json::to_vec(&conf)?,
        )?;
        adding += add_started.elapsed();
        let mut del = conf.clone();
        del["prevResult"] = serde_json::from_slice::<Value>(&result)?;
        invoke(
            &binary,
            &path,
            "DEL",
            &container,
            netns,
            &serde_json::to_vec(&del)?,
        )?;
    }
    Ok(Run {
        add_ns: adding.as_nanos() as f64 / pods.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |ts| {
        (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// The agent's source on a thread of its own.
struct Agent {
    facts: Arc<AtomicU64>,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

fn start_agent(socket: &Path) -> Result<Agent> {
    let source = CniSource::new(&CniCollectorConfig {
        enabled: true,
        socket: socket.display().to_string(),
    });
    let (cx, mut rx) = SourceContext::for_test("cni", "bench", 65_536);
    let stats = Arc::clone(&cx.stats);
    let facts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, stopping) = (Arc::clone(&facts), Arc::clone(&stop));
    let thread =
        std::thread::Builder::new()
            .name("cni-agent".into())
            .spawn(move || -> Result<u64> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let shutdown = cx.shutdown.clone();
                    let task = tokio::spawn(Box::new(source).run(cx));
                    let consumer = tokio::spawn(async move {
                        while let Some(observation) = rx.recv().await {
                            if let Observation::Fact(fact) = observation
                                && matches!(fact.payload, FactPayload::CniOperation(_))
                            {
                                counted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                    while !stopping.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    shutdown.cancel();
                    task.await??;
                    consumer.await?;
                    Ok::<_, anyhow::Error>(())
                })?;
                Ok(thread_cpu_ns())
            })?;
    let until = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > until || thread.is_finished() {
            bail!("the agent did not bind {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Agent {
        facts,
        stats,
        stop,
        thread,
    })
}

/// Waits until `expected` facts came (or 5 s passed), stops the agent; returns the facts and
/// the agent thread's CPU time, ns.
fn finish(agent: Agent, expected: u64) -> Result<(u64, u64, u64)> {
    let until = Instant::now() + Duration::from_secs(5);
    while agent.facts.load(Ordering::Relaxed) < expected && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop.store(true, Ordering::Relaxed);
    let cpu = agent
        .thread
        .join()
        .map_err(|_| anyhow::anyhow!("the agent thread panicked"))??;
    Ok((
        agent.facts.load(Ordering::Relaxed),
        agent.stats.errors.load(Ordering::Relaxed),
        cpu,
    ))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let pods = arg("--pods", 200).max(1);
    let rounds = arg("--rounds", 3).max(1);
    let tapio_cni = build_plugin()?;
    let network = Network::new()?;
    let socket = network.dir.join("cni.sock");
    // Warm up: the bridge, the page cache of the binaries.
    churn(&network, None, 10, 0)?;
    let mut without = vec![churn(&network, None, pods, 1)?];
    let (mut ratios, mut rates, mut per_event, mut shares) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut rejected) = (0u64, 0u64);
    for round in 0..rounds {
        let agent = start_agent(&socket)?;
        let with = churn(&network, Some((&tapio_cni, &socket)), pods, 100 + round)?;
        let (facts, errors, cpu_ns) = finish(agent, 2 * pods)?;
        without.push(churn(&network, None, pods, 200 + round)?);
        let reference =
            (without[without.len() - 2].add_ns + without[without.len() - 1].add_ns) / 2.0;
        ratios.push(with.add_ns / reference);
        let events = facts.max(1) as f64;
        rates.push(facts as f64 / with.seconds);
        per_event.push(cpu_ns as f64 / events);
        shares.push(cpu_ns as f64 / 1e9 / with.seconds * 100.0);
        lost += (2 * pods).saturating_sub(facts);
        rejected += errors;
        println!(
            "round {round}: ADD {:.2} ms with, {:.2} ms without; {facts} facts in {:.2} s; agent CPU {:.1} ms",
            with.add_ns / 1e6,
            reference / 1e6,
            with.seconds,
            cpu_ns as f64 / 1e6
        );
    }
    let mean_without = without.iter().map(|run| run.add_ns).sum::<f64>() / without.len() as f64;
    println!();
    println!(
        "| measurement ({pods} pods added and deleted per run, {rounds} runs with tapio-cni) | value |"
    );
    println!("| --- | --- |");
    println!(
        "| events/s (ADD and DEL reported) | {:.0} |",
        median(&mut rates)
    );
    println!(
        "| agent CPU per event | {:.1} µs |",
        median(&mut per_event) / 1e3
    );
    println!(
        "| agent share of one core at that load | {:.3} % |",
        median(&mut shares)
    );
    println!(
        "| ADD without tapio-cni (mean) | {:.2} ms |",
        mean_without / 1e6
    );
    println!(
        "| ADD with tapio-cni / without (median ratio) | {:.3} |",
        median(&mut ratios)
    );
    println!("| lost events | {lost} |");
    println!("| rejected datagrams | {rejected} |");
    if lost > 0 || rejected > 0 {
        bail!("{lost} events lost, {rejected} datagrams rejected");
    }
    Ok(())
}
