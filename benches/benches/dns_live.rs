//! The live DNS collector under resolver load, against a real `dnsmasq` on loopback.
//!
//! Run with `cargo bench -p tapio-benches --bench dns_live` as root (needs `dnsmasq`, BTF and a
//! cgroup2 mount). Optional arguments after `--`: `--queries N` per closed-loop run (default
//! 50000), `--concurrency C` clients (default 8), `--rounds K` (default 5), `--rate R`
//! queries/s for the paced run (default 20000) and `--seconds S` of it (default 3).
//!
//! It measures, in one run:
//!
//! 1. **resolver slowdown**: `C` clients, each sending a query and waiting for its answer
//!    (dnsperf's closed loop), `N` queries per run. Runs without the collector and with it
//!    alternate, `K` with it between `K + 1` without (the collector is attached before and
//!    detached after each run with it); each run with it is compared with the mean of the
//!    runs without on either side of it, and the table gives the median of the `K` ratios
//!    (and their range), so that a machine whose speed drifts during the run (other builds on
//!    its cores) moves both sides of each ratio alike;
//! 2. **collector CPU per query**: the CPU time of the collector's thread (it runs the source
//!    on a tokio runtime of its own, reading the ring buffer, decoding, pairing and making
//!    facts, plus a consumer that counts the facts) over the queries of each run with it; the
//!    median of the `K` runs;
//! 3. **no loss at a rate**: `R` queries/s for `S` seconds, paced; every query must come out as
//!    a lookup and the kernel must count no message lost to a full ring.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tapio_config::DnsCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_dns::live::{DnsSource, DnsStats};

const PORT: u16 = 15363;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A DNS query for `api.bench.local`, type A, with `id`.
fn query(id: u16) -> Vec<u8> {
    let mut m = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    m.extend_from_slice(b"\x03api\x05bench\x05local\x00\x00\x01\x00\x01");
    m
}

/// `concurrency` clients in a closed loop; returns the wall time for `total` queries.
fn closed_loop(total: u64, concurrency: u64) -> Result<Duration> {
    let server: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|client| {
            std::thread::spawn(move || -> Result<()> {
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                socket.connect(server)?;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buffer = [0u8; 512];
                let mine = total / concurrency + u64::from(client < total % concurrency);
                for n in 0..mine {
                    socket.send(&query(n as u16))?;
                    socket.recv(&mut buffer).context("an answer from dnsmasq")?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok(start.elapsed())
}

/// `rate` queries/s for `seconds`, paced from 4 clients that read answers as they come.
fn paced(rate: u64, seconds: u64) -> Result<u64> {
    let server: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let clients = 4;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64> {
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                socket.connect(server)?;
                socket.set_nonblocking(true)?;
                let per_client = rate / clients;
                let total = per_client * seconds;
                let start = Instant::now();
                let mut buffer = [0u8; 512];
                for n in 0..total {
                    let due = start + Duration::from_nanos(n * 1_000_000_000 / per_client);
                    while Instant::now() < due {
                        let _ = socket.recv(&mut buffer);
                        std::hint::spin_loop();
                    }
                    socket.send(&query(n as u16))?;
                }
                let drain_until = Instant::now() + Duration::from_millis(200);
                while Instant::now() < drain_until {
                    let _ = socket.recv(&mut buffer);
                }
                Ok(total)
            })
        })
        .collect();
    let mut sent = 0;
    for handle in handles {
        sent += handle
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok(sent)
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |ts| {
        (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// The collector on a thread of its own: its stats, the lookups it reported so far, a stop
/// switch and the thread (which returns its CPU time).
struct Collector {
    stats: Arc<DnsStats>,
    lookups: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

fn start_collector() -> Result<Collector> {
    let config = DnsCollectorConfig {
        enabled: true,
        ports: vec![PORT],
        timeout: Duration::from_secs(2),
        ..DnsCollectorConfig::default()
    };
    let source = DnsSource::new(&config);
    let stats = source.stats();
    let lookups = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, stopping) = (Arc::clone(&lookups), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("dns-collector".into())
        .spawn(move || -> Result<u64> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let (cx, mut rx) = SourceContext::for_test("dns", "bench", 65_536);
                let shutdown = cx.shutdown.clone();
                let task = tokio::spawn(Box::new(source).run(cx));
                let consumer = tokio::spawn(async move {
                    while let Some(observation) = rx.recv().await {
                        if let Observation::Fact(fact) = observation
                            && matches!(fact.payload, FactPayload::DnsQuery(_))
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
    for _ in 0..400 {
        if stats.ready.load(Ordering::Relaxed) {
            break;
        }
        if thread.is_finished() {
            bail!("the collector stopped: {:?}", thread.join());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if !stats.ready.load(Ordering::Relaxed) {
        bail!("the DNS capture did not attach within 10 s");
    }
    Ok(Collector {
        stats,
        lookups,
        stop,
        thread,
    })
}

/// Waits until the collector reported `expected` lookups (or 5 s passed).
fn settle(collector: &Collector, expected: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(5);
    while collector.lookups.load(Ordering::Relaxed) < expected && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    collector.lookups.load(Ordering::Relaxed)
}

fn dnsmasq() -> Result<Child> {
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            &format!("--port={PORT}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local=/bench.local/",
            "--host-record=api.bench.local,10.96.0.5",
            "--pid-file=",
            "--log-facility=-",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start dnsmasq (apt-get install dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(300));
    closed_loop(10, 1).context("dnsmasq answers")?;
    Ok(child)
}

fn main() -> Result<()> {
    let total = arg("--queries", 50_000);
    let concurrency = arg("--concurrency", 8).max(1);
    let rounds = arg("--rounds", 5).max(1);
    let rate = arg("--rate", 20_000);
    let seconds = arg("--seconds", 3);
    let mut server = dnsmasq()?;
    let outcome = run(total, concurrency, rounds, rate, seconds);
    let _ = server.kill();
    let _ = server.wait();
    outcome
}

/// Stops `collector` and returns the CPU time of its thread, ns.
fn stop(collector: Collector) -> Result<u64> {
    collector.stop.store(true, Ordering::Relaxed);
    collector
        .thread
        .join()
        .map_err(|_| anyhow::anyhow!("the collector panicked"))?
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn run(total: u64, concurrency: u64, rounds: u64, rate: u64, seconds: u64) -> Result<()> {
    closed_loop(total / 5, concurrency)?; // warm-up
    let mut without = vec![closed_loop(total, concurrency)?.as_secs_f64()];
    let mut with = Vec::new();
    let mut cpu_per_query_us = Vec::new();
    let mut reported = Vec::new();
    for _ in 0..rounds {
        let collector = start_collector()?;
        with.push(closed_loop(total, concurrency)?.as_secs_f64());
        reported.push(settle(&collector, total));
        let cpu_ns = stop(collector)?;
        cpu_per_query_us.push(cpu_ns as f64 / 1_000.0 / total as f64);
        without.push(closed_loop(total, concurrency)?.as_secs_f64());
    }
    let mut slowdowns: Vec<f64> = with
        .iter()
        .enumerate()
        .map(|(i, with)| with / ((without[i] + without[i + 1]) / 2.0) - 1.0)
        .collect();
    let slowdown = median(&mut slowdowns);
    let cpu = median(&mut cpu_per_query_us);
    let all_reported = reported.iter().all(|count| *count == total);

    let collector = start_collector()?;
    let sent = paced(rate, seconds)?;
    let paced_reported = settle(&collector, sent);
    let dropped = collector.stats.dropped.load(Ordering::Relaxed);
    stop(collector)?;

    let rate_of = |seconds: &mut Vec<f64>| total as f64 / median(seconds);
    let range = |values: &[f64], scale: f64| {
        format!(
            "{:.1} … {:.1}",
            values.first().copied().unwrap_or(0.0) * scale,
            values.last().copied().unwrap_or(0.0) * scale
        )
    };
    println!();
    println!("| measure | value | target |");
    println!("| --- | --- | --- |");
    println!(
        "| resolver: {total} queries, {concurrency} clients, without collector (median of {}) | {:.0} q/s | |",
        without.len(),
        rate_of(&mut without.clone())
    );
    println!(
        "| resolver: same, with collector (median of {rounds}) | {:.0} q/s | |",
        rate_of(&mut with.clone())
    );
    println!(
        "| resolver slowdown (with / mean of the runs without around it − 1), median of {rounds} | {:+.1} % (runs {} %) | ≤ 5 % |",
        slowdown * 100.0,
        range(&slowdowns, 100.0)
    );
    println!(
        "| collector thread CPU per query, median of {rounds} | {cpu:.2} µs (runs {} µs) | ≤ 2 µs |",
        range(&cpu_per_query_us, 1.0)
    );
    println!(
        "| lookups reported in every closed-loop run | {} | all |",
        if all_reported {
            format!("{total} of {total}")
        } else {
            format!("{reported:?} of {total}")
        }
    );
    println!(
        "| paced {rate} q/s for {seconds} s: lookups reported | {paced_reported} of {sent} | all |"
    );
    println!("| messages lost in the kernel (ring full) | {dropped} | 0 |");
    Ok(())
}
