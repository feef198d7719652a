//! `spine`: throughput, tick latency and memory of the whole correlation spine (Router + Engine
//! with both rules on, default engine settings) on a seeded synthetic cluster stream.
//!
//! What it isolates: the dataflow and its input path, nothing else. The stream is generated into
//! memory before the clock starts (see `tapio_tests::synthetic::Cluster`: nodes, Deployments →
//! ReplicaSets → pods → containers as state, pod churn and rollouts with verbatim retractions,
//! processes exec'ing and exiting (facts, plus their `ProcessContainer` membership as state), OOM
//! kill → exit (signal 9) → container exit (137, `OOMKilled`) sequences, a heartbeat per
//! (source, node) per 100 ms tick; about 6,400 observations per second of event time from
//! 2026-01-01). The timed part is `Router::route` of every observation, `Router::finish` and
//! `Engine::join`. No sources, no JSON, no sinks: the closed batches go to a tokio task that
//! only records when they arrive and counts what they hold.
//!
//! Run (release):
//!
//! ```text
//! cargo run --release -p tapio-benches --bin spine
//! cargo run --release -p tapio-benches --bin spine -- --obs 3000000 --paced-obs 1000000 --paced-rate 50000
//! cargo run --release -p tapio-benches --bin spine -- --cases w1 --oom off
//! ```
//!
//! The defaults make a quick run; the engine takes in millions of observations per second, so
//! use the sizes of the second line (or larger) for figures worth comparing. `w2-long` stops at
//! `--time-cap-s`. `benches/spine-compare.sh` runs this benchmark against an earlier commit.
//!
//! Every case runs in a child process (the binary re-executes itself with `--case <name>`), so
//! that each peak RSS (`VmHWM`) is clean. Cases:
//!
//! - `wN`: N workers, the whole base stream (`--obs`) in memory, fed as fast as possible
//!   ("flood"). Its latency includes queueing behind the flood.
//! - `wN-paced`: N workers, `--paced-obs` observations fed at `--paced-rate` observations per
//!   second of wall time, flushing the router whenever the feeder waits (as `Router::run` does
//!   when its input is idle). As long as the rate is below what the engine sustains, its
//!   latency measures the dataflow, not queueing.
//! - `wN-short` / `wN-long`: the base stream and a stream `--long-factor` times longer (same
//!   rates, longer event-time span), both generated in chunks of a tenth of the base stream, so
//!   the stream's own footprint is the same and the peak RSS compares the engine's state. VmRSS
//!   is sampled at every tenth of the stream. Their time excludes the generation of the chunks
//!   but the engine keeps working while a chunk is generated, so their throughput is
//!   approximate (marked `*`).
//!
//! Latency: tick `t` closes at the wall-clock instant the router is handed the heartbeat that
//! moves the watermark (minimum heartbeat − lateness, floored to a tick) past `t`; the delay is
//! from then until the tick's `ClosedBatch` (whose `time` is the tick's end) reaches the sink
//! task. Ticks closed only by the end of the stream are not counted.
//!
//! Besides seconds, every case reports the CPU time (user + system) of its process, which is less
//! sensitive to other load on the machine, and checks the output: every generated OOM sequence
//! must come out as an `oom_restart` correlation with the container's full ownership chain.
//!
//! Flags (defaults in brackets): `--obs` [200000] base stream size; `--long-factor` [10];
//! `--paced-obs` [60000]; `--paced-rate` [2000]; `--cases` [w1,w2,w2-paced,w2-short,w2-long];
//! `--seed` [42]; `--nodes` [20]; `--deployments` [100]; `--exec-rate` [1500] short-lived execs
//! per event second; `--oom-rate` [0.5] OOM kills per event second; `--pod-delete-rate` [0.5];
//! `--rollout-rate` [0.0167]; `--ownership on|off` and `--oom on|off` [on] switch the rules;
//! `--keep-for-s` [engine default] overrides `oom_sequence.keep_for`, `--exit-grace-ms`
//! [engine default] `ownership.process_exit_grace`, `--tick-ms` [engine default] the tick
//! (heartbeats follow it); `--rss-cap-mib` [8192] and `--time-cap-s` [180] stop feeding a case
//! whose RSS or feeding time exceeds them (the case is then reported as stopped, with what it
//! did until then).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tapio_benches::proc_status::{mib, peak_rss_bytes, rss_bytes};
use tapio_dataflow::{
    ClusterLayout, Engine, EngineReport, EngineSettings, Router, TickClock, Watermark,
};
use tapio_model::{ClosedBatch, CorrelationKind, EntityId, Fact, FactPayload, Observation, TimeNs};
use tapio_tests::synthetic::{Cluster, ClusterSpec, ClusterStats};
use tokio::sync::mpsc;

/// The allocator the `tapio` binary uses, so the engine is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CASES: &str = "w1,w2,w2-paced,w2-short,w2-long";

/// Command-line options.
#[derive(Clone, Debug)]
struct Options {
    obs: usize,
    long_factor: usize,
    paced_obs: usize,
    paced_rate: f64,
    cases: Vec<String>,
    case: Option<String>,
    spec: ClusterSpec,
    keep_for_s: Option<u64>,
    exit_grace_ms: Option<u64>,
    tick_ms: Option<u64>,
    ownership: bool,
    oom: bool,
    rss_cap_mib: u64,
    time_cap_s: f64,
    /// The flags forwarded to the children.
    forward: Vec<String>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            obs: 200_000,
            long_factor: 10,
            paced_obs: 60_000,
            paced_rate: 2_000.0,
            cases: DEFAULT_CASES.split(',').map(str::to_string).collect(),
            case: None,
            spec: ClusterSpec::default(),
            keep_for_s: None,
            exit_grace_ms: None,
            tick_ms: None,
            ownership: true,
            oom: true,
            rss_cap_mib: 8_192,
            time_cap_s: 180.0,
            forward: Vec::new(),
        };
        let mut args = args;
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{}", usage());
                std::process::exit(0);
            }
            let value = args
                .next()
                .with_context(|| format!("`{flag}` needs a value\n{}", usage()))?;
            let bad = || format!("invalid value `{value}` for `{flag}`");
            match flag.as_str() {
                "--case" => options.case = Some(value.clone()),
                "--cases" => {
                    options.cases = value.split(',').map(str::to_string).collect();
                }
                "--obs" => options.obs = value.parse().with_context(bad)?,
                "--long-factor" => options.long_factor = value.parse().with_context(bad)?,
                "--paced-obs" => options.paced_obs = value.parse().with_context(bad)?,
                "--paced-rate" => options.paced_rate = value.parse().with_context(bad)?,
                "--seed" => options.spec.seed = value.parse().with_context(bad)?,
                "--nodes" => options.spec.nodes = value.parse().with_context(bad)?,
                "--deployments" => options.spec.deployments = value.parse().with_context(bad)?,
                "--exec-rate" => options.spec.exec_per_s = value.parse().with_context(bad)?,
                "--oom-rate" => options.spec.oom_per_s = value.parse().with_context(bad)?,
                "--pod-delete-rate" => {
                    options.spec.pod_deletes_per_s = value.parse().with_context(bad)?;
                }
                "--rollout-rate" => {
                    options.spec.rollouts_per_s = value.parse().with_context(bad)?;
                }
                "--keep-for-s" => options.keep_for_s = Some(value.parse().with_context(bad)?),
                "--exit-grace-ms" => {
                    options.exit_grace_ms = Some(value.parse().with_context(bad)?);
                }
                "--tick-ms" => options.tick_ms = Some(value.parse().with_context(bad)?),
                "--ownership" => options.ownership = on_off(&value).with_context(bad)?,
                "--oom" => options.oom = on_off(&value).with_context(bad)?,
                "--rss-cap-mib" => options.rss_cap_mib = value.parse().with_context(bad)?,
                "--time-cap-s" => options.time_cap_s = value.parse().with_context(bad)?,
                _ => bail!("unknown flag `{flag}`\n{}", usage()),
            }
            if flag != "--case" && flag != "--cases" {
                options.forward.push(flag);
                options.forward.push(value);
            }
        }
        if options.obs < 10 || options.long_factor == 0 || options.paced_rate <= 0.0 {
            bail!("--obs must be at least 10, --long-factor and --paced-rate positive");
        }
        Ok(options)
    }

    fn settings(&self) -> EngineSettings {
        let mut settings = EngineSettings::default();
        let rules = &mut settings.correlation;
        if let Some(keep) = self.keep_for_s {
            rules.oom_sequence.keep_for = std::time::Duration::from_secs(keep);
        }
        if let Some(grace) = self.exit_grace_ms {
            rules.ownership.process_exit_grace = std::time::Duration::from_millis(grace);
        }
        rules.ownership.enabled = self.ownership;
        rules.oom_sequence.enabled = self.oom;
        // The spine measures the router and the engine with the two rules its stream exercises;
        // the correlator benchmark runs the whole rule set.
        rules.restart_loop.enabled = false;
        rules.burst.enabled = false;
        rules.co_occurrence.enabled = false;
        rules.sequences.clear();
        rules.bad_rollout.enabled = false;
        rules.memory_exhaustion.enabled = false;
        rules.node_pressure.enabled = false;
        rules.blast_radius.enabled = false;
        rules.service_graph.enabled = false;
        rules.dns_failure.enabled = false;
        if let Some(tick) = self.tick_ms {
            settings.tick_ms = tick.max(1);
        }
        settings
    }
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" | "true" | "1" => Some(true),
        "off" | "false" | "0" => Some(false),
        _ => None,
    }
}

fn usage() -> String {
    let doc = "usage: spine [--obs N] [--long-factor F] [--paced-obs N] [--paced-rate OBS_PER_S] \
        [--cases LIST] [--seed S] [--nodes N] [--deployments N] [--exec-rate PER_S] \
        [--oom-rate PER_S] [--pod-delete-rate PER_S] [--rollout-rate PER_S] \
        [--keep-for-s S] [--exit-grace-ms MS] [--tick-ms MS] [--ownership on|off] [--oom on|off] \
        [--rss-cap-mib MIB] [--time-cap-s S]";
    format!("{doc}\ncases: wN, wN-paced, wN-short, wN-long (N workers); default {DEFAULT_CASES}")
}

/// How a case feeds its stream.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Feed {
    /// As fast as the engine takes it, the whole stream generated up front.
    Flood,
    /// At a fixed rate, observations per second of wall time.
    Paced(f64),
    /// As fast as the engine takes it, generated in chunks between which the clock stops.
    Chunked,
}

/// One configuration, run in its own process.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    workers: usize,
    feed: Feed,
    total: usize,
    chunk: usize,
}

impl Case {
    fn parse(name: &str, options: &Options) -> Result<Case> {
        let (head, kind) = name.split_once('-').unwrap_or((name, ""));
        let workers: usize = head
            .strip_prefix('w')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .with_context(|| format!("unknown case `{name}`\n{}", usage()))?;
        let tenth = (options.obs / 10).max(1);
        let (feed, total, chunk) = match kind {
            "" => (Feed::Flood, options.obs, options.obs),
            "paced" => (
                Feed::Paced(options.paced_rate),
                options.paced_obs,
                options.paced_obs,
            ),
            "short" => (Feed::Chunked, options.obs, tenth),
            "long" => (Feed::Chunked, options.obs * options.long_factor, tenth),
            _ => bail!("unknown case `{name}`\n{}", usage()),
        };
        Ok(Case {
            name: name.to_string(),
            workers,
            feed,
            total,
            chunk,
        })
    }
}

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    match options.case.clone() {
        Some(case) => run_case(&options, &Case::parse(&case, &options)?),
        None => run_all(&options),
    }
}

// ---------------------------------------------------------------------------------------------
// One case, in a child process.

/// A VmRSS sample taken while feeding.
#[derive(Clone, Debug)]
struct Sample {
    fed: u64,
    event_s: f64,
    busy_s: f64,
    rss: u64,
}

/// Feeds observations to the router, recording tick closes and memory samples.
struct Feeder {
    watermark: Watermark,
    tick_ms: u64,
    closed_upto: u64,
    closes: Vec<(u64, Instant)>,
    fed: u64,
    total: u64,
    next_sample: u64,
    next_cap_check: u64,
    samples: Vec<Sample>,
    pace: Option<f64>,
    started: Instant,
    busy: Duration,
    first_ns: TimeNs,
    rss_cap: u64,
    aborted: bool,
    time_cap: Duration,
    truncated: bool,
    /// OOM container exits routed: the OOM sequences the engine was given in full.
    oom_sequences: u64,
}

impl Feeder {
    /// Routes every observation of `chunk`; `false` when feeding must stop.
    async fn feed(&mut self, chunk: Vec<Observation>, router: &mut Router) -> bool {
        let begin = Instant::now();
        for observation in chunk {
            if let Some(rate) = self.pace {
                let due = self.started + Duration::from_secs_f64(self.fed as f64 / rate);
                if Instant::now() < due {
                    // Idle: flush like `Router::run` does, then wait.
                    if !router.flush().await {
                        return false;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            if let Observation::Heartbeat(beat) = &observation {
                let input = self.watermark.observe(beat);
                if input > self.closed_upto {
                    let now = Instant::now();
                    let mut tick = self.closed_upto;
                    while tick < input {
                        self.closes.push((tick, now));
                        tick += self.tick_ms;
                    }
                    self.closed_upto = input;
                }
            }
            if let Observation::Fact(Fact {
                payload: FactPayload::ContainerExit(exit),
                ..
            }) = &observation
                && exit.reason == "OOMKilled"
            {
                self.oom_sequences += 1;
            }
            let time_ns = observation.time_ns();
            if !router.route(observation).await {
                eprintln!("the engine stopped accepting input");
                return false;
            }
            self.fed += 1;
            if self.fed >= self.next_sample {
                self.samples.push(Sample {
                    fed: self.fed,
                    event_s: time_ns.saturating_sub(self.first_ns) as f64 / 1e9,
                    busy_s: (self.busy + begin.elapsed()).as_secs_f64(),
                    rss: rss_bytes(),
                });
                self.next_sample += (self.total / 10).max(1);
            }
            if self.fed >= self.next_cap_check {
                self.next_cap_check += 8_192;
                if self.pace.is_none() && self.busy + begin.elapsed() > self.time_cap {
                    eprintln!(
                        "over the time cap of {:.0} s after {} observations: stopping this case",
                        self.time_cap.as_secs_f64(),
                        self.fed
                    );
                    self.truncated = true;
                    self.busy += begin.elapsed();
                    return false;
                }
                let rss = rss_bytes();
                if rss > self.rss_cap {
                    eprintln!(
                        "RSS {:.0} MiB is over the cap of {:.0} MiB after {} observations: \
                         stopping this case",
                        mib(rss),
                        mib(self.rss_cap),
                        self.fed
                    );
                    self.aborted = true;
                    self.busy += begin.elapsed();
                    return false;
                }
            }
        }
        self.busy += begin.elapsed();
        true
    }
}

/// What the sink task saw.
#[derive(Debug, Default)]
struct SinkStats {
    arrivals: Vec<(u64, Instant)>,
    batches: u64,
    changes: u64,
    ownership_adds: u64,
    oom_adds: u64,
    oom_roots: HashSet<EntityId>,
    oom_owned_roots: HashSet<EntityId>,
}

async fn sink(mut batches: mpsc::Receiver<ClosedBatch>) -> SinkStats {
    let mut stats = SinkStats::default();
    while let Some(batch) = batches.recv().await {
        stats
            .arrivals
            .push((batch.time / 1_000_000, Instant::now()));
        stats.batches += 1;
        stats.changes += batch.changes.len() as u64;
        for (correlation, diff) in &batch.changes {
            if *diff <= 0 {
                continue;
            }
            match correlation.kind {
                CorrelationKind::Ownership => stats.ownership_adds += 1,
                CorrelationKind::OomRestart => {
                    stats.oom_adds += 1;
                    // kill, exit, container stop, then its pod, ReplicaSet and Deployment.
                    if correlation.chain.len() >= 6 {
                        stats.oom_owned_roots.insert(correlation.root_cause.clone());
                    }
                    stats.oom_roots.insert(correlation.root_cause.clone());
                }
                _ => {}
            }
        }
    }
    stats
}

/// Latency percentiles over the ticks that were closed by a heartbeat and reached the sink.
#[derive(Debug, Default)]
struct Latency {
    ticks: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    early: usize,
}

fn latency(closes: &[(u64, Instant)], arrivals: &[(u64, Instant)]) -> Latency {
    let closed: HashMap<u64, Instant> = closes.iter().copied().collect();
    let mut delays = Vec::with_capacity(arrivals.len());
    let mut early = 0;
    for (tick, arrived) in arrivals {
        if let Some(close) = closed.get(tick) {
            if arrived < close {
                early += 1;
            }
            delays.push(arrived.saturating_duration_since(*close).as_secs_f64() * 1e3);
        }
    }
    delays.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if delays.is_empty() {
            f64::NAN
        } else {
            let rank = ((q * delays.len() as f64).ceil() as usize).clamp(1, delays.len());
            delays[rank - 1]
        }
    };
    Latency {
        ticks: delays.len(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: delays.last().copied().unwrap_or(f64::NAN),
        early,
    }
}

fn run_case(options: &Options, case: &Case) -> Result<()> {
    let base_rss = rss_bytes();
    let settings = options.settings();
    let spec = ClusterSpec {
        tick_ms: settings.tick_ms,
        ..options.spec.clone()
    };
    eprintln!(
        "[{}] {} workers, {} observations ({:?}), settings {:?}",
        case.name, case.workers, case.total, case.feed, settings
    );

    let mut cluster = Cluster::new(spec.clone());
    let generating = Instant::now();
    let mut first = Vec::with_capacity(case.chunk + 4_096);
    cluster.fill(&mut first, case.chunk.min(case.total));
    let mut generation = generating.elapsed();
    let stream_rss = rss_bytes().saturating_sub(base_rss);
    let mut generated = first.len();
    eprintln!(
        "[{}] generated {} observations in {:.1} s ({:.0} MiB resident)",
        case.name,
        first.len(),
        generation.as_secs_f64(),
        mib(stream_rss)
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (batches_tx, batches_rx) = mpsc::channel(64);
    let sink = runtime.spawn(sink(batches_rx));
    let layout = ClusterLayout::single(case.workers);
    let (engine, inputs) = Engine::start(settings.clone(), layout.clone(), batches_tx)?;
    let mut router = Router::new(layout, inputs);
    let clock = TickClock::new(settings.tick_ms);
    let mut feeder = Feeder {
        watermark: Watermark::new(clock, settings.lateness_ns),
        tick_ms: clock.tick_ms(),
        closed_upto: clock.floor(spec.start_ns),
        closes: Vec::new(),
        fed: 0,
        total: case.total as u64,
        next_sample: (case.total as u64 / 10).max(1),
        next_cap_check: 8_192,
        samples: Vec::new(),
        pace: match case.feed {
            Feed::Paced(rate) => Some(rate),
            Feed::Flood | Feed::Chunked => None,
        },
        started: Instant::now(),
        busy: Duration::ZERO,
        first_ns: spec.start_ns,
        rss_cap: options.rss_cap_mib.saturating_mul(1024 * 1024),
        aborted: false,
        time_cap: Duration::from_secs_f64(options.time_cap_s.max(0.0)),
        truncated: false,
        oom_sequences: 0,
    };

    let wall = Instant::now();
    let cpu_before = cpu_seconds();
    feeder.started = wall;
    runtime.block_on(async {
        let mut chunk = first;
        while feeder.feed(chunk, &mut router).await && generated < case.total {
            let generating = Instant::now();
            let mut next = Vec::with_capacity(case.chunk + 4_096);
            cluster.fill(&mut next, case.chunk.min(case.total - generated));
            generation += generating.elapsed();
            generated += next.len();
            chunk = next;
        }
    });
    let ending = Instant::now();
    runtime.block_on(router.finish());
    let report = engine.join()?;
    let tail = ending.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let secs = match case.feed {
        Feed::Paced(_) => wall.elapsed(),
        Feed::Flood | Feed::Chunked => feeder.busy + tail,
    }
    .as_secs_f64();
    let sink_stats = runtime.block_on(sink)?;
    let peak = peak_rss_bytes();
    let latency = latency(&feeder.closes, &sink_stats.arrivals);
    let stats = cluster.stats().clone();
    print_case(
        case,
        &CaseOutcome {
            fed: feeder.fed,
            event_s: cluster.event_time().saturating_sub(spec.start_ns) as f64 / 1e9,
            secs,
            generation_s: generation.as_secs_f64(),
            tail_s: tail.as_secs_f64(),
            latency,
            peak,
            stream_rss,
            base_rss,
            aborted: feeder.aborted,
            truncated: feeder.truncated,
            cpu_s: cpu,
            closes: feeder.closes.len(),
            oom_sequences: feeder.oom_sequences,
        },
        &report,
        &sink_stats,
        &stats,
    );
    for (index, sample) in feeder.samples.iter().enumerate() {
        println!(
            "SAMPLE case={} n={} fed={} event_s={:.0} busy_s={:.2} rss_mib={:.1}",
            case.name,
            index + 1,
            sample.fed,
            sample.event_s,
            sample.busy_s,
            mib(sample.rss)
        );
    }
    Ok(())
}

/// The measurements of one case.
struct CaseOutcome {
    fed: u64,
    event_s: f64,
    secs: f64,
    generation_s: f64,
    tail_s: f64,
    latency: Latency,
    peak: u64,
    stream_rss: u64,
    base_rss: u64,
    aborted: bool,
    truncated: bool,
    cpu_s: f64,
    closes: usize,
    oom_sequences: u64,
}

fn print_case(
    case: &Case,
    outcome: &CaseOutcome,
    report: &EngineReport,
    sink: &SinkStats,
    stats: &ClusterStats,
) {
    let feed = match case.feed {
        Feed::Flood => "flood".to_string(),
        Feed::Paced(rate) => format!("paced@{rate:.0}/s"),
        Feed::Chunked => "flood*".to_string(),
    };
    eprintln!(
        "[{}] generated: {stats:?}\n[{}] engine: {report:?}\n[{}] sink: {} batches, {} changes, \
         {} ownership +1, {} oom_restart +1 ({} distinct kills, {} with the full ownership \
         chain); latency over {} of {} closed ticks, {} batches before their close; \
         finish+join {:.2} s",
        case.name,
        case.name,
        case.name,
        sink.batches,
        sink.changes,
        sink.ownership_adds,
        sink.oom_adds,
        sink.oom_roots.len(),
        sink.oom_owned_roots.len(),
        outcome.latency.ticks,
        outcome.closes,
        outcome.latency.early,
        outcome.tail_s,
    );
    println!(
        "RESULT case={} workers={} feed={} obs={} event_s={:.0} secs={:.3} obs_per_s={:.0} \
         p50_ms={:.1} p99_ms={:.1} max_ms={:.1} lat_ticks={} peak_rss_mib={:.1} \
         stream_rss_mib={:.1} base_rss_mib={:.1} gen_s={:.1} aborted={} truncated={} cpu_s={:.1} \
         obs_per_cpu_s={:.0} facts={} state={} late={} changes={} batches={} oom_generated={} \
         oom_matched={} oom_owned={} early={}",
        case.name,
        case.workers,
        feed,
        outcome.fed,
        outcome.event_s,
        outcome.secs,
        outcome.fed as f64 / outcome.secs,
        outcome.latency.p50_ms,
        outcome.latency.p99_ms,
        outcome.latency.max_ms,
        outcome.latency.ticks,
        mib(outcome.peak),
        mib(outcome.stream_rss),
        mib(outcome.base_rss),
        outcome.generation_s,
        outcome.aborted,
        outcome.truncated,
        outcome.cpu_s,
        outcome.fed as f64 / outcome.cpu_s,
        report.facts,
        report.state_updates,
        report.late,
        report.changes_emitted,
        sink.batches,
        outcome.oom_sequences,
        sink.oom_roots.len(),
        sink.oom_owned_roots.len(),
        outcome.latency.early,
    );
}

/// CPU time (user + system) this process has used, seconds (from `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Linux reports these in USER_HZ, which is 100 on every mainstream architecture.
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------------------------------------
// Every case, each in a child process, then the table.

type Fields = BTreeMap<String, String>;

fn fields(line: &str) -> Fields {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn number(fields: &Fields, key: &str) -> f64 {
    fields
        .get(key)
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN)
}

fn run_all(options: &Options) -> Result<()> {
    for case in &options.cases {
        Case::parse(case, options)?;
    }
    let exe = std::env::current_exe().context("cannot find this binary to re-execute it")?;
    let mut results: Vec<Fields> = Vec::new();
    let mut samples: BTreeMap<String, Vec<Fields>> = BTreeMap::new();
    for case in &options.cases {
        eprintln!("==> case {case}");
        let mut child = Command::new(&exe)
            .arg("--case")
            .arg(case)
            .args(&options.forward)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start case {case}"))?;
        let stdout = child.stdout.take().context("no stdout from the child")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("RESULT ") {
                results.push(fields(rest));
            } else if let Some(rest) = line.strip_prefix("SAMPLE ") {
                let sample = fields(rest);
                let name = sample.get("case").cloned().unwrap_or_default();
                samples.entry(name).or_default().push(sample);
            }
            eprintln!("    {line}");
        }
        let status = child.wait()?;
        if !status.success() {
            eprintln!("case {case} failed: {status}");
        }
    }
    print_summary(options, &results, &samples);
    Ok(())
}

fn print_summary(options: &Options, results: &[Fields], samples: &BTreeMap<String, Vec<Fields>>) {
    let spec = &options.spec;
    println!();
    println!(
        "spine: seed {}, {} nodes, {} deployments, {} execs/s, {} OOM kills/s, {} pod deletions/s \
         (event time); base {} observations, long ×{}, paced {} observations at {}/s; \
         settings {:?}",
        spec.seed,
        spec.nodes,
        spec.deployments,
        spec.exec_per_s,
        spec.oom_per_s,
        spec.pod_deletes_per_s,
        options.obs,
        options.long_factor,
        options.paced_obs,
        options.paced_rate,
        options.settings(),
    );
    println!();
    println!(
        "| case | workers | feed | observations | event span s | seconds | obs/s | CPU s | obs/CPU-s | p50 ms | p99 ms | peak RSS MiB | stream MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for result in results {
        let get = |key: &str| result.get(key).map_or("?", String::as_str);
        let stopped = if get("aborted") == "true" {
            " (stopped: RSS cap)"
        } else if get("truncated") == "true" {
            " (stopped: time cap)"
        } else {
            ""
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} |",
            get("case"),
            stopped,
            get("workers"),
            get("feed"),
            get("obs"),
            get("event_s"),
            number(result, "secs"),
            number(result, "obs_per_s"),
            number(result, "cpu_s"),
            number(result, "obs_per_cpu_s"),
            number(result, "p50_ms"),
            number(result, "p99_ms"),
            number(result, "peak_rss_mib"),
            number(result, "stream_rss_mib"),
        );
    }
    println!();
    println!(
        "p50/p99: tick close (watermark-moving heartbeat handed to the router) → ClosedBatch at the \
         sink. `flood` rows queue behind the flood; `paced` rows measure the dataflow. \
         `flood*`: chunked generation, throughput approximate. stream MiB: resident size of \
         the pre-generated stream (or first chunk). CPU s: user+system CPU of the case's process \
         while feeding and joining (less sensitive to other load on the machine than seconds)."
    );
    println!();
    println!(
        "| case | facts | state updates | late | changes | batches | OOM sequences fed | OOM correlations | with ownership chain |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for result in results {
        let get = |key: &str| result.get(key).map_or("?", String::as_str);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            get("case"),
            get("facts"),
            get("state"),
            get("late"),
            get("changes"),
            get("batches"),
            get("oom_generated"),
            get("oom_matched"),
            get("oom_owned"),
        );
    }
    let find = |name: &str| {
        results
            .iter()
            .find(|r| r.get("case").is_some_and(|c| c == name))
    };
    println!();
    if let (Some(w1), Some(w2)) = (find("w1"), find("w2")) {
        println!(
            "throughput w2/w1: {:.2}× ({:.0} vs {:.0} obs/s)",
            number(w2, "obs_per_s") / number(w1, "obs_per_s"),
            number(w2, "obs_per_s"),
            number(w1, "obs_per_s"),
        );
    }
    for result in results {
        let Some(name) = result.get("case") else {
            continue;
        };
        let Some(prefix) = name.strip_suffix("-long") else {
            continue;
        };
        if let Some(short) = find(&format!("{prefix}-short")) {
            println!(
                "peak RSS {name}/{prefix}-short: {:.2}× ({:.0} vs {:.0} MiB; target ≤ 1.10)",
                number(result, "peak_rss_mib") / number(short, "peak_rss_mib"),
                number(result, "peak_rss_mib"),
                number(short, "peak_rss_mib"),
            );
        }
    }
    for (name, list) in samples {
        if !(name.ends_with("-long") || name.ends_with("-short")) {
            continue;
        }
        let text: Vec<String> = list
            .iter()
            .map(|s| {
                format!(
                    "{}@{}s:{:.0}",
                    s.get("n").map_or("?", String::as_str),
                    s.get("event_s").map_or("?", String::as_str),
                    number(s, "rss_mib")
                )
            })
            .collect();
        println!(
            "VmRSS MiB of {name} at each tenth (n@event s:MiB): {}",
            text.join(" ")
        );
    }
}
