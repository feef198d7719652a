//! Journal read benchmark: entries read per second and CPU per entry of the journal collector
//! over one journal file, against `journalctl --file … -o json` over the same file as the
//! baseline, side by side as ratios.
//!
//! The file is written by `systemd-journal-remote` from export input: 200 000 entries, half
//! systemd's (PID 1) catalogued unit messages (starts, restart stops, process exits and
//! failures of 200 services) and half kernel messages (an OOM record of six lines in every
//! 500, the rest other kernel lines), so every entry is one the collector's matches select and
//! both readers read every entry. The collector runs as in Tapio (its reader thread, parsing,
//! facts, deliveries), timed from its start until its first heartbeat, which it sends once it
//! has read everything; CPU is this process's (the reader, the async side and the consumer of
//! the facts). `journalctl`'s CPU comes from the shell's `times`, its peak RSS from its
//! `/proc/<pid>/status`. Run with `cargo bench -p tapio-benches --bench journal_read`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapio_config::SystemdCollectorConfig;
use tapio_model::Observation;
use tapio_sources::{Source, SourceContext};
use tapio_sources_journal::JournalSource;
use tapio_sources_journal::units::{
    UNIT_FAILURE_RESULT, UNIT_PROCESS_EXIT, UNIT_STARTED, UNIT_STOPPED,
};

const ENTRIES: u64 = 200_000;

fn field(out: &mut impl Write, name: &str, value: &str) {
    writeln!(out, "{name}={value}").expect("write");
}

/// Writes the export input to `path`, streaming.
fn export(path: &Path) {
    let file = std::fs::File::create(path).expect("export file");
    let mut out = std::io::BufWriter::new(file);
    let oom = [
        "stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "CPU: 1 PID: 4242 Comm: stress Not tainted 6.1.0 #1",
        "memory: usage 32768kB, limit 32768kB, failcnt 219",
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/kubepods/burstable/podfbdfe8e3-1c87-4ff2-907c-b2ec8e25d012,task_memcg=/kubepods/burstable/podfbdfe8e3-1c87-4ff2-907c-b2ec8e25d012/ef807430361e6e82b45db92e2e9b6fbec98f419b12c591e655c1a725565e73a8,task=stress,pid=4242,uid=0",
        "Memory cgroup out of memory: Killed process 4242 (stress) total-vm:221368kB, anon-rss:32512kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:100kB oom_score_adj:0",
        "oom_reaper: reaped process 4242 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
    ];
    for i in 0..ENTRIES {
        let realtime = 1_700_000_000_000_000 + i * 10;
        field(&mut out, "__REALTIME_TIMESTAMP", &realtime.to_string());
        field(&mut out, "__MONOTONIC_TIMESTAMP", &(i * 10 + 1).to_string());
        field(&mut out, "_BOOT_ID", "0123456789abcdef0123456789abcdef");
        field(&mut out, "_MACHINE_ID", "fedcba9876543210fedcba9876543210");
        field(&mut out, "_HOSTNAME", "node-1");
        if i % 2 == 0 {
            let unit = format!("svc-{}.service", (i / 2) % 200);
            field(&mut out, "_PID", "1");
            field(&mut out, "_COMM", "systemd");
            field(&mut out, "_TRANSPORT", "journal");
            field(&mut out, "SYSLOG_IDENTIFIER", "systemd");
            field(&mut out, "UNIT", &unit);
            match (i / 2) % 4 {
                0 => {
                    field(&mut out, "MESSAGE_ID", UNIT_PROCESS_EXIT);
                    field(&mut out, "EXIT_CODE", "exited");
                    field(&mut out, "EXIT_STATUS", "1");
                    field(
                        &mut out,
                        "MESSAGE",
                        &format!("{unit}: Main process exited, code=exited, status=1/FAILURE"),
                    );
                }
                1 => {
                    field(&mut out, "MESSAGE_ID", UNIT_FAILURE_RESULT);
                    field(&mut out, "UNIT_RESULT", "exit-code");
                    field(
                        &mut out,
                        "MESSAGE",
                        &format!("{unit}: Failed with result 'exit-code'."),
                    );
                }
                2 => {
                    field(&mut out, "MESSAGE_ID", UNIT_STOPPED);
                    field(&mut out, "JOB_TYPE", "restart");
                    field(&mut out, "JOB_RESULT", "done");
                    field(&mut out, "MESSAGE", &format!("Stopped {unit}."));
                }
                _ => {
                    field(&mut out, "MESSAGE_ID", UNIT_STARTED);
                    field(&mut out, "JOB_TYPE", "start");
                    field(&mut out, "JOB_RESULT", "done");
                    field(&mut out, "MESSAGE", &format!("Started {unit}."));
                }
            }
        } else {
            field(&mut out, "_TRANSPORT", "kernel");
            field(&mut out, "SYSLOG_IDENTIFIER", "kernel");
            let k = (i / 2) % 500;
            let line = match oom.get(k as usize) {
                Some(line) => (*line).to_string(),
                None => format!("eth0: renamed from veth{i:x}"),
            };
            field(&mut out, "MESSAGE", &line);
        }
        writeln!(out).expect("write");
    }
    out.flush().expect("flush");
}

/// This process's CPU seconds (user + system).
fn cpu_self() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn peak_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmHWM:").map(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .unwrap_or(0)
                })
            })
        })
        .unwrap_or(0)
}

struct Run {
    seconds: f64,
    cpu: f64,
    peak_kib: u64,
}

fn collector(dir: &Path) -> (Run, u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = SystemdCollectorConfig {
            enabled: true,
            unit_filter: vec!["*.service".into()],
            directories: vec![dir.display().to_string()],
            cursor_file: String::new(),
            read_existing: true,
            oom: true,
            poll_interval: Duration::from_millis(10),
        };
        let source = Box::new(JournalSource::new(&config));
        let (cx, mut rx) = SourceContext::for_test("systemd", "node-1", 8192);
        let shutdown = cx.shutdown.clone();
        let stats = std::sync::Arc::clone(&cx.stats);
        let cpu = cpu_self();
        let started = Instant::now();
        let task = tokio::spawn(source.run(cx));
        let mut facts = 0u64;
        while let Some(observation) = rx.recv().await {
            match observation {
                Observation::Fact(_) => facts += 1,
                Observation::Heartbeat(_) => break,
                Observation::State(_) => {}
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_self() - cpu;
        shutdown.cancel();
        while rx.recv().await.is_some() {}
        task.await.expect("join").expect("the source ran");
        assert_eq!(stats.snapshot().received, ENTRIES, "every entry read");
        (
            Run {
                seconds,
                cpu,
                peak_kib: peak_rss_kib("self"),
            },
            facts,
        )
    })
}

fn journalctl(file: &Path) -> Run {
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "journalctl --file '{}' -o json > /dev/null & pid=$!; echo $pid; wait $pid; times",
            file.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut stdout, &mut byte).expect("read") == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let pid = String::from_utf8(first).expect("pid");
    let mut peak = 0;
    while child.try_wait().expect("wait").is_none() {
        peak = peak.max(peak_rss_kib(&pid));
        std::thread::sleep(Duration::from_millis(2));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("times");
    // `times`: the shell's user and system time, then its children's.
    let children = rest.lines().nth(1).expect("children's times");
    let cpu: f64 = children
        .split_whitespace()
        .map(|time| {
            let (minutes, seconds) = time
                .trim_end_matches('s')
                .split_once('m')
                .expect("NmS.SSSs");
            minutes.parse::<f64>().unwrap() * 60.0 + seconds.parse::<f64>().unwrap()
        })
        .sum();
    Run {
        seconds,
        cpu,
        peak_kib: peak,
    }
}

fn main() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tapio-journal-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let input = dir.join("bench.export");
    export(&input);
    let file = dir.join("system.journal");
    let status = Command::new("/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", file.display()))
        .arg("--split-mode=none")
        .arg(&input)
        .stderr(Stdio::null())
        .status()
        .expect("systemd-journal-remote");
    assert!(status.success());
    std::fs::remove_file(&input).expect("remove the input");

    // Both read the file once first, so that both find it in the page cache.
    let _ = journalctl(&file);
    let (ours, facts) = collector(&dir);
    let theirs = journalctl(&file);
    let n = ENTRIES as f64;
    let rate = |run: &Run| n / run.seconds;
    let per_entry_us = |run: &Run| run.cpu / n * 1e6;
    println!(
        "| measurement ({ENTRIES} entries, one file) | journal collector | journalctl -o json | ratio (collector / journalctl) |"
    );
    println!("| --- | --- | --- | --- |");
    println!(
        "| entries read per second | {:.0} | {:.0} | {:.2} |",
        rate(&ours),
        rate(&theirs),
        rate(&ours) / rate(&theirs)
    );
    println!(
        "| CPU per entry | {:.2} µs | {:.2} µs | {:.2} |",
        per_entry_us(&ours),
        per_entry_us(&theirs),
        per_entry_us(&ours) / per_entry_us(&theirs)
    );
    println!(
        "| peak RSS | {:.1} MiB | {:.1} MiB | {:.2} |",
        ours.peak_kib as f64 / 1024.0,
        theirs.peak_kib as f64 / 1024.0,
        ours.peak_kib as f64 / theirs.peak_kib.max(1) as f64
    );
    println!("| facts made | {facts} | n/a | |");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
