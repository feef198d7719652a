//! etcd watch benchmark: the etcd collector's key-change events per second and userspace CPU
//! per event under a load of etcd puts at 5 000 per second, its share of one core at that load
//! and the events it lost; `etcdctl watch --prefix` (etcd's own client) watching the same puts
//! as the baseline, side by side as ratios.
//!
//! etcd (Debian's `etcd-server`) runs on loopback with its data on tmpfs, so the load is not
//! bound by the disk. The loader (in this process, on its own runtime) puts 512-byte values
//! under `/registry/configmaps/bench/` at a fixed pace, 5 000 a second for 10 s, with at most 64
//! puts in flight. The collector runs as in Tapio (watch, facts, deliveries, the revision file,
//! probes every second) on a runtime of its own thread, whose CPU is read from
//! `/proc/thread-self/stat` (user and system, separately) before and after; `etcdctl`'s from
//! `/proc/<pid>/stat`. Both count the events they report: a lost event is a put neither saw.
//! Run with `cargo bench -p tapio-benches --bench etcd_watch`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tapio_config::EtcdCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_etcd::EtcdSource;
use tapio_sources_etcd::harness::Etcd;

const RATE: u64 = 5_000;
const SECONDS: u64 = 10;
const PUTS: u64 = RATE * SECONDS;
const VALUE_BYTES: usize = 512;
const IN_FLIGHT: usize = 64;
const PREFIX: &str = "/registry/configmaps/bench/";

/// Clock ticks per second of `/proc` times.
const HZ: f64 = 100.0;

/// (user, system) CPU seconds of a `/proc/.../stat` line.
fn cpu_of_stat(stat: &str) -> (f64, f64) {
    // The fields after the command (in parentheses, which may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the command.
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / HZ, ticks(12) / HZ)
}

fn thread_cpu() -> (f64, f64) {
    cpu_of_stat(&std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat"))
}

fn process_cpu(pid: u32) -> (f64, f64) {
    cpu_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the collector did: events, user and system CPU seconds of its thread.
struct Collected {
    events: u64,
    user: f64,
    system: f64,
}

/// Runs the collector on a thread of its own until `stop`, counting its key changes.
fn run_collector(
    config: EtcdCollectorConfig,
    started: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> std::thread::JoinHandle<Collected> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (user0, system0) = thread_cpu();
        let events = runtime.block_on(async move {
            let (cx, mut rx) = SourceContext::for_test("etcd", "bench", 10_000);
            let shutdown = cx.shutdown.clone();
            let task = tokio::spawn(Box::new(EtcdSource::new(&config)).run(cx));
            let mut events = 0u64;
            let watching = async {
                while let Some(observation) = rx.recv().await {
                    if let Observation::Fact(fact) = observation {
                        match fact.payload {
                            FactPayload::EtcdKeyChange(_) => events += 1,
                            FactPayload::EtcdStatus(_) => started.store(1, Ordering::Relaxed),
                            _ => {}
                        }
                    }
                }
            };
            tokio::select! {
                () = watching => {}
                () = stop.cancelled() => shutdown.cancel(),
            }
            while let Ok(Some(observation)) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                if let Observation::Fact(fact) = observation
                    && matches!(fact.payload, FactPayload::EtcdKeyChange(_))
                {
                    events += 1;
                }
            }
            let _ = task.await;
            events
        });
        let (user1, system1) = thread_cpu();
        Collected {
            events,
            user: user1 - user0,
            system: system1 - system0,
        }
    })
}

fn main() {
    let dir = PathBuf::from("/dev/shm").join(format!("tapio-etcd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let scratch = Scratch(dir.clone());
    let etcd = Etcd::start_with(
        &scratch.0,
        &["--quota-backend-bytes=4294967296".to_string()],
    );
    let url = etcd.url();
    let revision_file = dir.join("etcd.revision");
    let config = EtcdCollectorConfig {
        enabled: true,
        endpoints: vec![url.clone()],
        ca_file: String::new(),
        cert_file: String::new(),
        key_file: String::new(),
        revision_file: revision_file.display().to_string(),
        probe_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        ..EtcdCollectorConfig::default()
    };

    // The baseline: etcd's own watcher, printing each event (key and value lines after an
    // operation line) into a pipe that a thread of this process counts.
    let mut etcdctl = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &url, "watch", "--prefix", PREFIX])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl (Debian's etcd-client)");
    let etcdctl_pid = etcdctl.id();
    let etcdctl_out = etcdctl.stdout.take().expect("stdout");
    let etcdctl_events = Arc::new(AtomicU64::new(0));
    let counter = {
        let events = Arc::clone(&etcdctl_events);
        std::thread::spawn(move || {
            for line in BufReader::new(etcdctl_out).lines() {
                let Ok(line) = line else { break };
                if line == "PUT" || line == "DELETE" {
                    events.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let started = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let collector = run_collector(config, Arc::clone(&started), stop.clone());
    let loader = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("loader runtime");
    let (elapsed, etcdctl_cpu, etcd_cpu) = loader.block_on(async {
        let client = etcd_client::Client::connect([url.as_str()], None)
            .await
            .expect("connect");
        // The collector keeps its first revision once it watches; then the load starts.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(revision_file.exists() && started.load(Ordering::Relaxed) == 1) {
            assert!(Instant::now() < deadline, "the collector did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let etcdctl_before = process_cpu(etcdctl_pid);
        let etcd_before = etcd.pid().map(process_cpu).unwrap_or_default();
        let value = vec![b'x'; VALUE_BYTES];
        let start = Instant::now();
        let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut tasks = Vec::with_capacity(PUTS as usize);
        for i in 0..PUTS {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / RATE);
            tokio::time::sleep_until(due.into()).await;
            let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
            let mut client = client.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .put(format!("{PREFIX}cm-{}", i % 1000), value, None)
                    .await
                    .expect("put");
                drop(permit);
            }));
        }
        for task in tasks {
            task.await.expect("put task");
        }
        let elapsed = start.elapsed();
        // Let both watchers drain.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let etcdctl_after = process_cpu(etcdctl_pid);
        let etcd_after = etcd.pid().map(process_cpu).unwrap_or_default();
        (
            elapsed,
            (
                etcdctl_after.0 - etcdctl_before.0,
                etcdctl_after.1 - etcdctl_before.1,
            ),
            (etcd_after.0 - etcd_before.0, etcd_after.1 - etcd_before.1),
        )
    });
    stop.cancel();
    let collected = collector.join().expect("collector thread");
    let _ = etcdctl.kill();
    let _ = etcdctl.wait();
    let _ = counter.join();
    drop(etcd);

    let seconds = elapsed.as_secs_f64();
    let baseline_events = etcdctl_events.load(Ordering::Relaxed);
    let per_event_us = |cpu: f64, events: u64| cpu * 1e6 / events.max(1) as f64;
    // The collector's CPU includes its start and its probes before the load (a few ms); the
    // share of one core is over the load's duration.
    let rows = [
        (
            "events per second",
            format!("{:.0}", collected.events as f64 / seconds),
            format!("{:.0}", baseline_events as f64 / seconds),
            format!(
                "{:.2}",
                collected.events as f64 / baseline_events.max(1) as f64
            ),
        ),
        (
            "user CPU per event",
            format!("{:.2} µs", per_event_us(collected.user, collected.events)),
            format!("{:.2} µs", per_event_us(etcdctl_cpu.0, baseline_events)),
            format!("{:.2}", collected.user / etcdctl_cpu.0.max(1e-9)),
        ),
        (
            "user + system CPU per event",
            format!(
                "{:.2} µs",
                per_event_us(collected.user + collected.system, collected.events)
            ),
            format!(
                "{:.2} µs",
                per_event_us(etcdctl_cpu.0 + etcdctl_cpu.1, baseline_events)
            ),
            format!(
                "{:.2}",
                (collected.user + collected.system) / (etcdctl_cpu.0 + etcdctl_cpu.1).max(1e-9)
            ),
        ),
        (
            "share of one core (user + system)",
            format!(
                "{:.2}%",
                (collected.user + collected.system) * 100.0 / seconds
            ),
            format!("{:.2}%", (etcdctl_cpu.0 + etcdctl_cpu.1) * 100.0 / seconds),
            String::new(),
        ),
        (
            "events lost",
            PUTS.saturating_sub(collected.events).to_string(),
            PUTS.saturating_sub(baseline_events).to_string(),
            String::new(),
        ),
    ];
    println!(
        "etcd watch: {PUTS} puts of {VALUE_BYTES} bytes in {seconds:.2} s ({:.0}/s); etcd itself used {:.2} s of CPU",
        PUTS as f64 / seconds,
        etcd_cpu.0 + etcd_cpu.1
    );
    println!();
    println!("| measurement | etcd collector | etcdctl watch | ratio (collector / etcdctl) |");
    println!("| --- | --- | --- | --- |");
    for (name, ours, theirs, ratio) in rows {
        println!("| {name} | {ours} | {theirs} | {ratio} |");
    }
    let share = (collected.user + collected.system) * 100.0 / seconds;
    println!();
    println!(
        "Target: at most 2% of one core and no event lost: {}",
        if share <= 2.0 && collected.events >= PUTS {
            "met"
        } else {
            "NOT met"
        }
    );
}
