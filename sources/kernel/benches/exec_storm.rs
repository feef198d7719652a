//! Exec storm: what watching processes costs the workload.
//!
//! A child process runs 20 000 fork+exec of `/bin/true`, one after the other, and reports how
//! long that took, (1) with no agent, (2) with Tapio's kernel source running in this process
//! (every hook attached: exec, fork, exit, OOM, TCP, files), and (3) with a bpftrace
//! one-liner on the same `sched_process_exec` tracepoint printing the same exec fields
//! (pid, ppid, uid, comm, filename, first argument). For each it prints the storm duration,
//! the slowdown against no agent, the events seen and dropped, the consumer's userspace CPU
//! per event (on-CPU time of all its threads, from `/proc/<pid>/task/*/schedstat`) and, for
//! Tapio, the kernel-side run time of its programs per exec (the three process hooks, and all
//! hooks, which also pay for every `openat` on the machine). Each configuration runs
//! `TAPIO_BENCH_ROUNDS` times (default 3) in rotating order and the medians are compared, so
//! drifting foreign load on a shared machine hits all of them alike.
//!
//! Run (as root): `cargo bench -p tapio-sources-kernel --bench exec_storm`
//! (`TAPIO_BENCH_EXECS=N` changes the storm size, `TAPIO_BENCH_ROUNDS=N` the rounds).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_kernel::{KernelSource, KernelSourceConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--storm") {
        let n: usize = args
            .get(at + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        storm_child(n);
        return;
    }
    let execs: usize = std::env::var("TAPIO_BENCH_EXECS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("TAPIO_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
        .max(1);
    eprintln!("exec storm: {execs} fork+exec of /bin/true per run, {rounds} rounds");
    let load_before = loadavg();

    // Rounds rotate the order, so slow drift in foreign load hits every configuration alike.
    let mut base = Vec::new();
    let mut tapio = Vec::new();
    let mut bpftrace = Vec::new();
    for round in 0..rounds {
        for step in 0..3 {
            match (round + step) % 3 {
                0 => {
                    let run = storm(execs);
                    eprintln!(
                        "round {round}: no agent {:.2} s (CPU {:.2} s)",
                        run.wall.as_secs_f64(),
                        run.cpu.as_secs_f64()
                    );
                    base.push(run);
                }
                1 => {
                    let run = with_tapio(execs);
                    eprintln!(
                        "round {round}: tapio {:.2} s (CPU {:.2} s)",
                        run.storm.wall.as_secs_f64(),
                        run.storm.cpu.as_secs_f64()
                    );
                    tapio.push(run);
                }
                _ => {
                    let run = with_bpftrace(execs);
                    eprintln!(
                        "round {round}: bpftrace {:.2} s (CPU {:.2} s)",
                        run.storm.wall.as_secs_f64(),
                        run.storm.cpu.as_secs_f64()
                    );
                    bpftrace.push(run);
                }
            }
        }
    }
    let base_wall: Vec<Duration> = base.iter().map(|s| s.wall).collect();
    let base_cpu: Vec<Duration> = base.iter().map(|s| s.cpu).collect();
    let (base_median, base_cpu_median) = (median(base_wall.clone()), median(base_cpu.clone()));

    println!();
    println!(
        "load average before/after: {load_before} / {}; medians of {rounds} rounds",
        loadavg()
    );
    println!(
        "| run ({execs} execs) | storm wall (median) | wall slowdown | storm CPU (median) | CPU slowdown | exec events seen | records handled | dropped | consumer CPU / record | consumer CPU / exec | BPF time / exec (process hooks) | BPF time / exec (all hooks) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| no agent (wall {}) | {:.2} s | 1.00× | {:.2} s | 1.00× | – | – | – | – | – | – | – |",
        seconds(&base_wall),
        base_median.as_secs_f64(),
        base_cpu_median.as_secs_f64()
    );
    for (name, runs) in [
        ("tapio kernel source", &tapio),
        ("bpftrace one-liner", &bpftrace),
    ] {
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
            "| {name} (wall {}) | {:.2} s | {:.2}× | {:.2} s | {:.2}× | {} | {} | {} | {} | {} | {} | {} |",
            seconds(&storms),
            storm.as_secs_f64(),
            storm.as_secs_f64() / base_median.as_secs_f64(),
            storm_cpu.as_secs_f64(),
            storm_cpu.as_secs_f64() / base_cpu_median.as_secs_f64(),
            per_round(seen),
            per_round(records),
            per_round(dropped),
            micros(cpu.checked_div(records)),
            micros(cpu.checked_div(seen)),
            micros(mean(runs.iter().filter_map(|r| r.bpf_process_ns_per_exec))),
            micros(mean(runs.iter().filter_map(|r| r.bpf_all_ns_per_exec))),
        );
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
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
    ns.map_or("–".into(), |ns| format!("{:.1} µs", ns as f64 / 1000.0))
}

struct Run {
    storm: Storm,
    seen: u64,
    records: u64,
    dropped: u64,
    cpu_ns: u64,
    bpf_process_ns_per_exec: Option<u64>,
    bpf_all_ns_per_exec: Option<u64>,
}

/// The child side: `n` fork+exec+wait of /bin/true; prints the elapsed ns.
fn storm_child(n: usize) {
    let start = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true")
            .arg("tapio-storm")
            .status()
            .expect("run /bin/true");
        assert!(status.success());
    }
    println!(
        "{} {}",
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

/// One storm: wall time and the CPU time it consumed (with its children).
#[derive(Clone, Copy)]
struct Storm {
    wall: Duration,
    cpu: Duration,
}

/// Runs the storm in a child process and returns its own measurement.
fn storm(n: usize) -> Storm {
    let exe = std::env::current_exe().expect("own path");
    let output = Command::new(exe)
        .args(["--storm", &n.to_string()])
        .output()
        .expect("storm child");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>());
    let (Some(Ok(wall)), Some(Ok(cpu))) = (numbers.next(), numbers.next()) else {
        panic!("storm child prints wall and CPU ns, got {text:?}");
    };
    Storm {
        wall: Duration::from_nanos(wall),
        cpu: Duration::from_nanos(cpu),
    }
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

fn with_tapio(n: usize) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let source = KernelSource::new(KernelSourceConfig::default()).expect("config");
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
                    && let FactPayload::ProcessExec(exec) = fact.payload
                    && exec.filename == "/bin/true"
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Let the first counter refresh happen, so program stats are a baseline.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = stats.snapshot();
        let cpu_before = cpu_ns(std::process::id());
        let storm = tokio::task::spawn_blocking(move || storm(n))
            .await
            .expect("storm");
        // Wait until the storm's records are through.
        let mut last = u64::MAX;
        while seen.load(Ordering::Relaxed) != last {
            last = seen.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let cpu = cpu_ns(std::process::id()) - cpu_before;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let after = stats.snapshot();
        shutdown.cancel();
        task.await.expect("no panic").expect("clean stop");
        consumer.await.expect("no panic");
        let records = after.records_total() - before.records_total();
        let exec_runs = |s: &tapio_sources_kernel::KernelStatsSnapshot| {
            s.programs
                .iter()
                .find(|p| p.name == "tapio_exec")
                .map_or(0, |p| p.run_count)
        };
        let execs = exec_runs(&after) - exec_runs(&before);
        for program in &after.programs {
            let earlier = before.programs.iter().find(|p| p.name == program.name);
            let runs = program.run_count - earlier.map_or(0, |p| p.run_count);
            let time = program.run_time - earlier.map_or(Duration::ZERO, |p| p.run_time);
            if runs > 0 {
                eprintln!(
                    "  {:<24} {:>8} runs {:>8} ns/run",
                    program.name,
                    runs,
                    time.as_nanos() / u128::from(runs)
                );
            }
        }
        eprintln!(
            "  consumer CPU {} ms for {records} records",
            cpu / 1_000_000
        );
        let bpf_ns = (after.program_time() - before.program_time()).as_nanos() as u64;
        let process_time = |s: &tapio_sources_kernel::KernelStatsSnapshot| {
            s.programs
                .iter()
                .filter(|p| ["tapio_exec", "tapio_fork", "tapio_exit"].contains(&p.name.as_str()))
                .map(|p| p.run_time)
                .sum::<Duration>()
        };
        let bpf_process_ns = (process_time(&after) - process_time(&before)).as_nanos() as u64;
        Run {
            storm,
            seen: seen.load(Ordering::Relaxed),
            records,
            dropped: after.dropped_total() - before.dropped_total(),
            cpu_ns: cpu,
            bpf_process_ns_per_exec: bpf_process_ns.checked_div(execs),
            bpf_all_ns_per_exec: bpf_ns.checked_div(execs),
        }
    })
}

fn with_bpftrace(n: usize) -> Run {
    let script = "tracepoint:sched:sched_process_exec { printf(\"%d %d %d %s %s %s\\n\", pid, \
                  curtask->real_parent->tgid, uid, comm, str(args->filename), \
                  str(uptr(curtask->mm->arg_start))); }";
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
    let cpu_before = cpu_ns(pid);
    let storm = storm(n);
    let mut last = u64::MAX;
    while seen.load(Ordering::Relaxed) != last {
        last = seen.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
    }
    let cpu = cpu_ns(pid) - cpu_before;
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
        seen,
        records: seen,
        dropped: lost.load(Ordering::Relaxed),
        cpu_ns: cpu,
        bpf_process_ns_per_exec: None,
        bpf_all_ns_per_exec: None,
    }
}
