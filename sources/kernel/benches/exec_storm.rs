//! Exec storm: what watching processes costs the workload, and a paced event rate: whether the
//! kernel collector keeps up without drops.
//!
//! **Storm.** A child process runs 20 000 fork+exec of `/bin/true`, one after the other, and
//! reports how long that took, (1) with no agent, (2) with Tapio's kernel source running in this
//! process (default configuration: exec, fork, exit, OOM, TCP and container hooks; file events
//! are off by default), (3) the same with file events for the configuration and secrets paths
//! (`/etc/`, `/var/run/secrets/`, `/run/secrets/`: syscall tracepoints), and
//! (4) with a bpftrace one-liner on the same `sched_process_exec` tracepoint printing the same
//! exec fields (pid, ppid, uid, comm, filename, first argument). For each it prints the storm
//! duration, the slowdown against no agent, the events seen and dropped, the consumer's
//! userspace CPU per record (on-CPU time of all its threads, from `/proc/<pid>/task/*/schedstat`,
//! over the storm and until its last record is through) and, for Tapio, the kernel-side run time
//! of its programs per exec (the three process hooks, and all hooks, which with file events also
//! run for every `openat` on the machine, the storm's and everyone else's; for bpftrace, its one
//! program). Each configuration runs
//! `TAPIO_BENCH_ROUNDS` times (default 5) in rotating order; a slowdown is the median over
//! rounds of the ratio to the no-agent run of the same round, so foreign load drifting on a
//! shared machine hits all configurations alike.
//!
//! **Rate.** A child process makes `TAPIO_BENCH_RATE` (default 50 000) failed opens per second
//! for `TAPIO_BENCH_RATE_SECS` (default 5) seconds, each of a different missing path under
//! `/etc/` (file events on for `/etc/`), so every one is a ring-buffer record and a fact: no
//! two are folded. Opens are the cheapest way to make that many kernel events on two cores;
//! fork+exec tops out near 1 500 per second here. It reports the rate reached, the records read,
//! the records the kernel dropped because the ring buffer was full (the collector's health
//! counters) and Tapio's userspace CPU per record.
//!
//! Run (as root): `cargo bench -p tapio-sources-kernel --bench exec_storm`
//! (`TAPIO_BENCH_EXECS=N` changes the storm size, `TAPIO_BENCH_ROUNDS=N` the rounds,
//! `TAPIO_BENCH_CASES=none,tapio,tapio-files,bpftrace,rate` picks the cases).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tapio_config::KernelCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_kernel::{KernelSource, KernelStatsSnapshot};

/// The configuration and secrets paths, for the storm with file events.
const FILE_PATHS: &[&str] = &["/etc/", "/var/run/secrets/", "/run/secrets/"];

/// The default configuration with file events for `prefixes`.
fn with_file_events(prefixes: &[&str]) -> KernelCollectorConfig {
    KernelCollectorConfig {
        file_path_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        ..KernelCollectorConfig::default()
    }
}

/// Missing paths opened by the rate case start with this.
const RATE_PREFIX: &str = "/etc/tapio-bench-missing";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |at: usize| args.get(at).and_then(|n| n.parse::<u64>().ok());
    if let Some(at) = args.iter().position(|a| a == "--storm") {
        storm_child(arg(at + 1).unwrap_or(20_000));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--opens") {
        opens_child(arg(at + 1).unwrap_or(50_000), arg(at + 2).unwrap_or(5));
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let execs = env("TAPIO_BENCH_EXECS", 20_000);
    let rounds = env("TAPIO_BENCH_ROUNDS", 5).max(1);
    let cases = std::env::var("TAPIO_BENCH_CASES")
        .unwrap_or_else(|_| "none,tapio,tapio-files,bpftrace,rate".into());
    let wanted = |case: &str| cases.split(',').any(|c| c.trim() == case);
    let load_before = loadavg();

    let mut base = Vec::new();
    let mut tapio = Vec::new();
    let mut tapio_files = Vec::new();
    let mut bpftrace = Vec::new();
    if ["none", "tapio", "tapio-files", "bpftrace"]
        .iter()
        .any(|case| wanted(case))
    {
        eprintln!("exec storm: {execs} fork+exec of /bin/true per run, {rounds} rounds");
        // Rounds rotate the order, so slow drift in foreign load hits every configuration alike.
        for round in 0..rounds {
            for step in 0..4 {
                match (round + step) % 4 {
                    0 if wanted("none") => {
                        let run = storm(execs);
                        eprintln!(
                            "round {round}: no agent {:.2} s (CPU {:.2} s)",
                            run.wall.as_secs_f64(),
                            run.cpu.as_secs_f64()
                        );
                        base.push(run);
                    }
                    1 if wanted("tapio") => {
                        let run =
                            with_tapio(Workload::Storm(execs), KernelCollectorConfig::default());
                        eprintln!(
                            "round {round}: tapio {:.2} s (CPU {:.2} s)",
                            run.storm.wall.as_secs_f64(),
                            run.storm.cpu.as_secs_f64()
                        );
                        tapio.push(run);
                    }
                    3 if wanted("tapio-files") => {
                        let run = with_tapio(Workload::Storm(execs), with_file_events(FILE_PATHS));
                        eprintln!(
                            "round {round}: tapio with file events {:.2} s (CPU {:.2} s)",
                            run.storm.wall.as_secs_f64(),
                            run.storm.cpu.as_secs_f64()
                        );
                        tapio_files.push(run);
                    }
                    2 if wanted("bpftrace") => {
                        let run = with_bpftrace(execs);
                        eprintln!(
                            "round {round}: bpftrace {:.2} s (CPU {:.2} s)",
                            run.storm.wall.as_secs_f64(),
                            run.storm.cpu.as_secs_f64()
                        );
                        bpftrace.push(run);
                    }
                    _ => {}
                }
            }
        }
    }
    let rate = wanted("rate").then(|| {
        let rate = env("TAPIO_BENCH_RATE", 50_000);
        let secs = env("TAPIO_BENCH_RATE_SECS", 5);
        eprintln!("rate: {rate} failed opens per second for {secs} s");
        let config = with_file_events(&["/etc/"]);
        (rate, with_tapio(Workload::Opens { rate, secs }, config))
    });

    println!();
    println!(
        "load average before/after: {load_before} / {}; storm: medians of {rounds} rounds",
        loadavg()
    );
    if !(base.is_empty() && tapio.is_empty() && tapio_files.is_empty() && bpftrace.is_empty()) {
        print_storm_table(execs, &base, &tapio, &tapio_files, &bpftrace);
    }
    if let Some((rate, run)) = rate {
        print_rate_table(rate, &run);
    }
}

fn print_storm_table(
    execs: u64,
    base: &[Storm],
    tapio: &[Run],
    tapio_files: &[Run],
    bpftrace: &[Run],
) {
    let base_wall: Vec<Duration> = base.iter().map(|s| s.wall).collect();
    let base_cpu = median(base.iter().map(|s| s.cpu).collect());
    let base_median = median(base_wall.clone());
    // Each configuration runs once per round, next to the no-agent run of the same round: the
    // median of those paired ratios cancels the foreign load that drifts between rounds.
    let slowdown = |runs: &[Run], value: fn(&Storm) -> Duration| {
        let mut ratios: Vec<f64> = runs
            .iter()
            .zip(base)
            .map(|(run, base)| value(&run.storm).as_secs_f64() / value(base).as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
            .get(ratios.len() / 2)
            .map_or("–".to_string(), |ratio| format!("{ratio:.2}×"))
    };
    println!(
        "| run ({execs} execs) | storm wall (median) | wall slowdown (median of per-round ratios) | storm CPU (median) | CPU slowdown (median of per-round ratios) | exec events seen | records handled | dropped | userspace CPU / record | BPF time / exec (process hooks) | BPF time / exec (all hooks) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    if !base.is_empty() {
        println!(
            "| no agent (wall {}) | {:.2} s | 1.00× | {:.2} s | 1.00× | – | – | – | – | – | – |",
            seconds(&base_wall),
            base_median.as_secs_f64(),
            base_cpu.as_secs_f64()
        );
    }
    for (name, runs) in [
        ("Tapio kernel source (defaults)", tapio),
        ("Tapio with file events", tapio_files),
        ("bpftrace one-liner", bpftrace),
    ] {
        if runs.is_empty() {
            continue;
        }
        let storms: Vec<Duration> = runs.iter().map(|r| r.storm.wall).collect();
        let storm = median(storms.clone());
        let storm_cpu = median(runs.iter().map(|r| r.storm.cpu).collect());
        let sum = |f: fn(&Run) -> u64| runs.iter().map(f).sum::<u64>();
        let (seen, records, dropped, cpu) = (
            sum(|r| r.seen),
            sum(|r| r.records),
            sum(|r| r.dropped),
            sum(|r| r.cpu_ns),
        );
        let per_round = |total: u64| total / runs.len() as u64;
        println!(
            "| {name} (wall {}) | {:.2} s | {} | {:.2} s | {} | {} | {} | {} | {} | {} | {} |",
            seconds(&storms),
            storm.as_secs_f64(),
            slowdown(runs, |s| s.wall),
            storm_cpu.as_secs_f64(),
            slowdown(runs, |s| s.cpu),
            per_round(seen),
            per_round(records),
            per_round(dropped),
            micros(cpu.checked_div(records)),
            micros(mean(runs.iter().filter_map(|r| r.bpf_process_ns_per_exec))),
            micros(mean(runs.iter().filter_map(|r| r.bpf_all_ns_per_exec))),
        );
    }
    let idle: Vec<u64> = tapio.iter().filter_map(|r| r.idle_cpu_us_per_s).collect();
    if !idle.is_empty() {
        println!(
            "Tapio before each storm (heartbeats and the machine's own events): {} µs of CPU per second",
            idle.iter().sum::<u64>() / idle.len() as u64
        );
    }
}

fn print_rate_table(target: u64, run: &Run) {
    let wall = run.storm.wall.as_secs_f64().max(1e-9);
    println!();
    println!(
        "| target rate | reached | records handled | facts seen | dropped | userspace CPU / record | userspace CPU (share of one core) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {target} /s for {wall:.1} s | {:.0} /s | {} | {} | {} | {} | {:.1} % |",
        run.events as f64 / wall,
        run.records,
        run.seen,
        run.dropped,
        micros(run.cpu_ns.checked_div(run.records)),
        run.cpu_ns as f64 / 1e9 / wall * 100.0,
    );
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn mean(values: impl Iterator<Item = u64>) -> Option<u64> {
    let values: Vec<u64> = values.collect();
    (!values.is_empty()).then(|| values.iter().sum::<u64>() / values.len() as u64)
}

fn seconds(values: &[Duration]) -> String {
    values
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn micros(ns: Option<u64>) -> String {
    ns.map_or("–".into(), |ns| format!("{:.2} µs", ns as f64 / 1000.0))
}

struct Run {
    /// The workload's own measurement (for the rate case: how long the opens took).
    storm: Storm,
    /// Kernel events the workload made (execs, or opens).
    events: u64,
    /// Events the consumer saw as facts.
    seen: u64,
    /// Records the source read (every kind, from the whole machine).
    records: u64,
    /// Records the kernel dropped.
    dropped: u64,
    /// Consumer CPU from the workload's start until its last record was through.
    cpu_ns: u64,
    /// Consumer CPU per second while only heartbeats ran.
    idle_cpu_us_per_s: Option<u64>,
    bpf_process_ns_per_exec: Option<u64>,
    bpf_all_ns_per_exec: Option<u64>,
}

/// The child side of the storm: `n` fork+exec+wait of /bin/true; prints the elapsed ns and
/// the CPU used.
fn storm_child(n: u64) {
    let start = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true")
            .arg("tapio-storm")
            // `cargo bench` puts its target and toolchain directories on LD_LIBRARY_PATH, and
            // the loader would look for libc in each of them: 44 failed opens per exec that a
            // workload started outside cargo does not make.
            .env_remove("LD_LIBRARY_PATH")
            .status()
            .expect("run /bin/true");
        assert!(status.success());
    }
    println!(
        "{} {} {n}",
        start.elapsed().as_nanos(),
        own_and_children_cpu_ns()
    );
}

/// The child side of the rate case: `rate` opens per second of missing paths under /etc/ for
/// `secs` seconds, in slices of a millisecond; prints the elapsed ns, the CPU used and the
/// opens made.
fn opens_child(rate: u64, secs: u64) {
    let total = rate * secs;
    let per_ms = (rate / 1000).max(1);
    let me = std::process::id();
    let start = Instant::now();
    let mut made = 0u64;
    while made < total {
        for _ in 0..per_ms.min(total - made) {
            let path = format!("{RATE_PREFIX}-{me}/{made}");
            assert!(std::fs::File::open(&path).is_err(), "{path} must not exist");
            made += 1;
        }
        let due = Duration::from_nanos(made * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    println!(
        "{} {} {made}",
        start.elapsed().as_nanos(),
        own_and_children_cpu_ns()
    );
}

/// utime + stime of this process and of its waited-for children, from /proc/self/stat
/// (clock ticks of 10 ms). The children's share includes the eBPF programs that ran in their
/// context (exec and exit hooks run in the exec'ing and exiting task).
fn own_and_children_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<u64>() * 10_000_000
}

/// One workload run: wall time, the CPU time it consumed (with its children) and the events
/// it made.
#[derive(Clone, Copy)]
struct Storm {
    wall: Duration,
    cpu: Duration,
    events: u64,
}

/// Runs this program with `args` as a child and returns its own measurement.
fn child(args: &[String]) -> Storm {
    let exe = std::env::current_exe().expect("own path");
    let output = Command::new(exe).args(args).output().expect("child");
    assert!(
        output.status.success(),
        "child {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>());
    let (Some(Ok(wall)), Some(Ok(cpu)), Some(Ok(events))) =
        (numbers.next(), numbers.next(), numbers.next())
    else {
        panic!("child prints wall ns, CPU ns and events, got {text:?}");
    };
    Storm {
        wall: Duration::from_nanos(wall),
        cpu: Duration::from_nanos(cpu),
        events,
    }
}

fn storm(n: u64) -> Storm {
    child(&["--storm".into(), n.to_string()])
}

/// Context switches (voluntary, involuntary) of every thread of `pid`: a voluntary one is a
/// sleep, so they count wakeups.
fn switches(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|text| {
            (
                field(&text, "voluntary_ctxt_switches:"),
                field(&text, "nonvoluntary_ctxt_switches:"),
            )
        })
        .fold((0, 0), |(v, n), (tv, tn)| (v + tv, n + tn))
}

/// On-CPU ns of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[derive(Clone, Copy)]
enum Workload {
    Storm(u64),
    Opens { rate: u64, secs: u64 },
}

impl Workload {
    fn run(self) -> Storm {
        match self {
            Workload::Storm(n) => storm(n),
            Workload::Opens { rate, secs } => {
                child(&["--opens".into(), rate.to_string(), secs.to_string()])
            }
        }
    }

    /// Whether a fact is one of the workload's events.
    fn counts(self, payload: &FactPayload) -> bool {
        match (self, payload) {
            (Workload::Storm(_), FactPayload::ProcessExec(exec)) => exec.filename == "/bin/true",
            (Workload::Opens { .. }, FactPayload::FileOpenFailed(open)) => {
                open.path.starts_with(RATE_PREFIX)
            }
            _ => false,
        }
    }
}

fn with_tapio(workload: Workload, config: KernelCollectorConfig) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let source = KernelSource::new(&config).expect("config");
        let stats = source.stats();
        let (cx, mut rx) = SourceContext::for_test("kernel", "bench", 65_536);
        let shutdown = cx.shutdown.clone();
        let task = tokio::spawn(Box::new(source).run(cx));
        while !stats.ready.load(Ordering::Relaxed) {
            assert!(!task.is_finished(), "source failed: {:?}", task.await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        let consumer = tokio::spawn(async move {
            while let Some(observation) = rx.recv().await {
                if let Observation::Fact(fact) = observation
                    && workload.counts(&fact.payload)
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Let the first counter refresh happen, so program stats are a baseline, then measure
        // what the source costs while only heartbeats (and the machine's own events) flow.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let idle_start = cpu_ns(std::process::id());
        let idle_records = stats.snapshot().records_total();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_cpu_us_per_s = (cpu_ns(std::process::id()) - idle_start) / 2_000;
        let before = stats.snapshot();
        let switches_before = switches(std::process::id());
        eprintln!(
            "  before the workload: {idle_cpu_us_per_s} µs of CPU per second, {} records per second",
            (before.records_total() - idle_records) / 2
        );
        let cpu_before = cpu_ns(std::process::id());
        let storm = tokio::task::spawn_blocking(move || workload.run())
            .await
            .expect("workload");
        // Wait until the workload's records are through.
        let mut last = u64::MAX;
        while seen.load(Ordering::Relaxed) != last {
            last = seen.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let cpu = cpu_ns(std::process::id()) - cpu_before;
        let switches_after = switches(std::process::id());
        eprintln!(
            "  context switches while measured: {} voluntary, {} involuntary",
            switches_after.0 - switches_before.0,
            switches_after.1 - switches_before.1
        );
        // Stopping reads the kernel counters one last time.
        shutdown.cancel();
        task.await.expect("no panic").expect("clean stop");
        consumer.await.expect("no panic");
        let after = stats.snapshot();
        let records = after.records_total() - before.records_total();
        let runs = |s: &KernelStatsSnapshot, name: &str| {
            s.programs
                .iter()
                .find(|p| p.name == name)
                .map_or(0, |p| p.run_count)
        };
        for program in &after.programs {
            let earlier = before.programs.iter().find(|p| p.name == program.name);
            let count = program.run_count - earlier.map_or(0, |p| p.run_count);
            let time = program.run_time - earlier.map_or(Duration::ZERO, |p| p.run_time);
            if count > 0 {
                eprintln!(
                    "  {:<24} {:>8} runs {:>8} ns/run",
                    program.name,
                    count,
                    time.as_nanos() / u128::from(count)
                );
            }
        }
        eprintln!("  CPU {} ms for {records} records", cpu / 1_000_000);
        let execs = runs(&after, "tapio_exec") - runs(&before, "tapio_exec");
        let bpf_ns = (after.program_time() - before.program_time()).as_nanos() as u64;
        let process_time = |s: &KernelStatsSnapshot| {
            s.programs
                .iter()
                .filter(|p| ["tapio_exec", "tapio_fork", "tapio_exit"].contains(&p.name.as_str()))
                .map(|p| p.run_time)
                .sum::<Duration>()
        };
        let bpf_process_ns = (process_time(&after) - process_time(&before)).as_nanos() as u64;
        Run {
            storm,
            events: storm.events,
            seen: seen.load(Ordering::Relaxed),
            records,
            dropped: after.dropped_total() - before.dropped_total(),
            cpu_ns: cpu,
            idle_cpu_us_per_s: Some(idle_cpu_us_per_s),
            bpf_process_ns_per_exec: bpf_process_ns.checked_div(execs),
            bpf_all_ns_per_exec: bpf_ns.checked_div(execs),
        }
    })
}

fn with_bpftrace(n: u64) -> Run {
    let script = "tracepoint:sched:sched_process_exec { printf(\"%d %d %d %s %s %s\\n\", pid, \
                  curtask->real_parent->tgid, uid, comm, str(args->filename), \
                  str(uptr(curtask->mm->arg_start))); }";
    let programs_before = loaded_program_ids();
    let mut child = Command::new("bpftrace")
        .args(["-B", "line", "-e", script])
        // 128, not more: three strings of 200 bytes exceed the 512-byte BPF stack.
        .env("BPFTRACE_STRLEN", "128")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bpftrace is installed (apt-get install bpftrace)");
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let seen = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let attached = Arc::new(AtomicU64::new(0));
    let (s, l, a) = (Arc::clone(&seen), Arc::clone(&lost), Arc::clone(&attached));
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("Attaching") {
                a.store(1, Ordering::Relaxed);
            } else if let Some(rest) = line.strip_prefix("Lost ") {
                let count = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                l.fetch_add(count.unwrap_or(0), Ordering::Relaxed);
            } else if line.contains(" /bin/true ") {
                s.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let l2 = Arc::clone(&lost);
    let a2 = Arc::clone(&attached);
    let errors = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("Attaching") {
                a2.store(1, Ordering::Relaxed);
            } else if let Some(rest) = line.strip_prefix("Lost ") {
                let count = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                l2.fetch_add(count.unwrap_or(0), Ordering::Relaxed);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while attached.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "bpftrace did not attach");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("bpftrace exited before attaching: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // bpftrace needs a moment after "Attaching" before events flow.
    std::thread::sleep(Duration::from_secs(2));
    // Its programs' run time, as Tapio's own is read: BPF statistics are on while `stats` lives.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let bpf_before = program_time(&programs_before);
    let cpu_before = cpu_ns(pid);
    let storm = storm(n);
    let mut last = u64::MAX;
    while seen.load(Ordering::Relaxed) != last {
        last = seen.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
    }
    let cpu = cpu_ns(pid) - cpu_before;
    let bpf_ns = (program_time(&programs_before) - bpf_before).as_nanos() as u64;
    drop(stats);
    let stopped = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    assert!(stopped.is_ok_and(|s| s.success()), "stop bpftrace");
    drop(child.wait());
    drop(reader.join());
    drop(errors.join());
    let seen = seen.load(Ordering::Relaxed);
    Run {
        storm,
        events: storm.events,
        seen,
        records: seen,
        dropped: lost.load(Ordering::Relaxed),
        cpu_ns: cpu,
        idle_cpu_us_per_s: None,
        bpf_process_ns_per_exec: bpf_ns.checked_div(storm.events),
        bpf_all_ns_per_exec: bpf_ns.checked_div(storm.events),
    }
}

fn loaded_program_ids() -> HashSet<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|program| program.id())
        .collect()
}

/// Run time of the BPF programs loaded since `before` was taken (ids not in it).
fn program_time(before: &HashSet<u32>) -> Duration {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|program| !before.contains(&program.id()))
        .map(|program| program.run_time())
        .sum()
}
