//! `correlators`: the full rule set on the seeded synthetic cluster stream with Services,
//! connects, usage crossings, crashes and the seeded incidents
//! (`tapio_tests::synthetic::ClusterSpec::with_incidents`), and the OOM sequence rule side by
//! side with Esper 9 and a hand-written differential dataflow program on the same stream.
//!
//! Run (bench profile, i.e. release):
//!
//! ```text
//! cargo bench -p tapio-benches --bench correlators
//! cargo bench -p tapio-benches --bench correlators -- --obs 2000000 --phases seq-tapio,seq-dd,seq-esper
//! ```
//!
//! Phases, each in a child process (the binary re-executes itself with `--case`) so that each
//! peak RSS (`VmHWM`) is its own:
//!
//! - `full-w1`, `full-w2`: every rule `tapio_dataflow::rules::enabled` returns for the default
//!   configuration, 1 and 2 workers, on `--obs` observations generated into memory before the
//!   clock starts and fed as fast as the engine takes them (Router + Engine, as the `spine`
//!   benchmark does; the closed batches go to a task that counts them).
//! - `full-w2-paced`: the same at `--paced-rate` observations per second of wall time
//!   (`--paced-obs` of them), flushing the router whenever the feeder waits; p50/p99 are from
//!   a tick's close (the heartbeat that moves the watermark past it is handed to the router) to
//!   its batch reaching the sink.
//! - `full-w2-short`, `full-w2-long`: `--memory-obs` observations and `--long-factor` times
//!   more, generated in chunks of a tenth of the short run so that the stream's own footprint is
//!   the same; VmRSS at every tenth. State grows until the longest window is full (the OOM
//!   sequence's `keep_for`, 10 minutes of event time by default; the default long run spans
//!   about 20), and should stay flat after that.
//! - `seq-tapio`: the engine with only the OOM sequence rule on (every other section's
//!   `enabled` set to false), 1 worker, on the `--obs` stream.
//! - `seq-dd`: a hand-written differential dataflow program (timely, 1 worker) for the same
//!   sequence: kills joined with signal-9 exits on the process, filtered to Δ and reduced to the
//!   earliest, joined with container exits on the container id, filtered and reduced again. No
//!   Tapio engine, no expiry, no ownership: the ceiling.
//! - `seq-esper`: Esper 9.0.0 (`benches/esper`, a Maven project; built on first use with
//!   `mvn`) running `every kill=OomKill -> (exit=ProcessExit(…) -> stop=ContainerExit(…)) where
//!   timer:within(30 sec)` on every fact of the same stream, written to a file before and read
//!   into memory by the Java program; its time is the processing loop only, after one untimed
//!   warm-up pass on a separate runtime. Event time drives Esper's clock (external timer,
//!   advanced at each heartbeat).
//!
//! The three sequence phases must find the same matches: each writes the kills it matched (node,
//! pid, start) to a file, and the table says whether the sets are equal.
//!
//! Flags (defaults in brackets): `--obs` [1000000]; `--paced-obs` [150000]; `--paced-rate`
//! [10000]; `--memory-obs` [1000000]; `--long-factor` [10]; `--seed` [42]; `--phases` [all of
//! the above]; `--time-cap-s` [300] stops feeding a flood phase after that long; `--rounds` [3]
//! runs of each sequence phase, interleaved round by round (the table gives medians, and the
//! ratios are taken within a round); `--rules` [the default configuration's] the rule sections
//! (`ownership,oom_sequence,…`) the `full-*` phases enable, to see what each rule costs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use differential_dataflow::input::Input;
use tapio_benches::proc_status::{cpu_seconds, mib, peak_rss_bytes, rss_bytes};
use tapio_config::CorrelationConfig;
use tapio_dataflow::{ClusterLayout, Engine, EngineSettings, Router, TickClock, Watermark};
use tapio_model::{
    ClosedBatch, CorrelationKind, EntityId, FactPayload, Observation, StateObject, TimeNs,
};
use tapio_tests::synthetic::{Cluster, ClusterSpec, ClusterStats};
use tokio::sync::mpsc;

/// The allocator the `tapio` binary uses, so the engine is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALL_PHASES: &str =
    "full-w1,full-w2,full-w2-paced,full-w2-short,full-w2-long,seq-tapio,seq-dd,seq-esper";

#[derive(Clone, Debug)]
struct Options {
    obs: usize,
    paced_obs: usize,
    paced_rate: f64,
    memory_obs: usize,
    long_factor: usize,
    seed: u64,
    phases: Vec<String>,
    time_cap_s: f64,
    rounds: usize,
    /// Rule sections the `full-*` phases enable (`None`: the default configuration's).
    rules: Option<Vec<String>>,
    case: Option<String>,
    dir: Option<PathBuf>,
    forward: Vec<String>,
}

fn usage() -> String {
    format!(
        "usage: correlators [--obs N] [--paced-obs N] [--paced-rate OBS_PER_S] [--memory-obs N] \
         [--long-factor F] [--seed S] [--phases LIST] [--time-cap-s S] [--rounds N] [--rules SECTIONS]\nphases: \
         {ALL_PHASES}"
    )
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            obs: 1_000_000,
            paced_obs: 150_000,
            paced_rate: 10_000.0,
            memory_obs: 1_000_000,
            long_factor: 10,
            seed: 42,
            phases: ALL_PHASES.split(',').map(str::to_string).collect(),
            time_cap_s: 300.0,
            rounds: 3,
            rules: None,
            case: None,
            dir: None,
            forward: Vec::new(),
        };
        let mut args = args;
        while let Some(flag) = args.next() {
            // `cargo bench` passes `--bench` to every bench target.
            if flag == "--bench" {
                continue;
            }
            if flag == "--help" || flag == "-h" {
                println!("{}", usage());
                std::process::exit(0);
            }
            let value = args
                .next()
                .with_context(|| format!("`{flag}` needs a value\n{}", usage()))?;
            let bad = || format!("invalid value `{value}` for `{flag}`");
            match flag.as_str() {
                "--obs" => options.obs = value.parse().with_context(bad)?,
                "--paced-obs" => options.paced_obs = value.parse().with_context(bad)?,
                "--paced-rate" => options.paced_rate = value.parse().with_context(bad)?,
                "--memory-obs" => options.memory_obs = value.parse().with_context(bad)?,
                "--long-factor" => options.long_factor = value.parse().with_context(bad)?,
                "--seed" => options.seed = value.parse().with_context(bad)?,
                "--time-cap-s" => options.time_cap_s = value.parse().with_context(bad)?,
                "--rules" => options.rules = Some(value.split(',').map(str::to_string).collect()),
                "--rounds" => {
                    options.rounds = value.parse().with_context(bad)?;
                    continue;
                }
                "--phases" => {
                    options.phases = value.split(',').map(str::to_string).collect();
                    continue;
                }
                "--case" => {
                    options.case = Some(value);
                    continue;
                }
                "--dir" => {
                    options.dir = Some(PathBuf::from(value));
                    continue;
                }
                _ => bail!("unknown flag `{flag}`\n{}", usage()),
            }
            options.forward.push(flag);
            options.forward.push(value);
        }
        if options.obs < 10 || options.memory_obs < 10 || options.long_factor == 0 {
            bail!("--obs and --memory-obs must be at least 10, --long-factor positive");
        }
        if options.paced_rate <= 0.0 || options.rounds == 0 {
            bail!("--paced-rate and --rounds must be positive");
        }
        for phase in &options.phases {
            if !ALL_PHASES.split(',').any(|known| known == phase) {
                bail!("unknown phase `{phase}`\n{}", usage());
            }
        }
        Ok(options)
    }

    fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            seed: self.seed,
            ..ClusterSpec::with_incidents()
        }
    }
}

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    match options.case.clone() {
        Some(case) => {
            let dir = options.dir.clone().context("--case needs --dir")?;
            run_case(&options, &case, &dir)
        }
        None => run_all(&options),
    }
}

// ---------------------------------------------------------------------------------------------
// The stream.

/// The first `len` observations (whole ticks) of the benchmark's stream, with the generator.
fn generate(spec: &ClusterSpec, len: usize) -> (Vec<Observation>, Cluster) {
    let mut cluster = Cluster::new(spec.clone());
    let mut out = Vec::with_capacity(len + 8_192);
    cluster.fill(&mut out, len);
    (out, cluster)
}

/// The kill a match starts from, as every side names it: `node pid start_ns`.
fn kill_key(node: &str, pid: u32, start_ns: TimeNs) -> String {
    format!("{node} {pid} {start_ns}")
}

fn write_keys(dir: &Path, case: &str, keys: &BTreeSet<String>) -> Result<()> {
    let path = dir.join(format!("{case}.keys"));
    let mut file = BufWriter::new(std::fs::File::create(&path)?);
    for key in keys {
        writeln!(file, "{key}")?;
    }
    file.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One case, in a child process: prints `RESULT key=value ...` (and `SAMPLE` lines) on stdout.

fn run_case(options: &Options, case: &str, dir: &Path) -> Result<()> {
    match case {
        "full-w1" => tapio_case(options, case, dir, Tapio::flood(1, full_settings(options)?)),
        "full-w2" => tapio_case(options, case, dir, Tapio::flood(2, full_settings(options)?)),
        "full-w2-paced" => {
            let mut run = Tapio::flood(2, full_settings(options)?);
            run.pace = Some(options.paced_rate);
            run.total = Some(options.paced_obs);
            tapio_case(options, case, dir, run)
        }
        "full-w2-short" | "full-w2-long" => {
            let mut run = Tapio::flood(2, full_settings(options)?);
            let factor = if case == "full-w2-long" {
                options.long_factor
            } else {
                1
            };
            run.total = Some(options.memory_obs * factor);
            run.chunk = Some((options.memory_obs / 10).max(1));
            tapio_case(options, case, dir, run)
        }
        "seq-tapio" => tapio_case(
            options,
            case,
            dir,
            Tapio::flood(1, settings_with_only(&["oom_sequence".to_string()])?),
        ),
        "seq-dd" => handwritten_case(options, case, dir),
        "seq-esper" => esper_case(options, case, dir),
        _ => bail!("unknown case `{case}`"),
    }
}

/// The settings of the `full-*` phases: every rule the default configuration enables, or only
/// the `--rules` sections.
fn full_settings(options: &Options) -> Result<EngineSettings> {
    match &options.rules {
        Some(sections) => settings_with_only(sections),
        None => Ok(EngineSettings::default()),
    }
}

/// The default settings with every rule section but `sections` disabled.
fn settings_with_only(wanted_sections: &[String]) -> Result<EngineSettings> {
    let mut settings = EngineSettings::default();
    let mut value = serde_json::to_value(&settings.correlation)?;
    if let Some(sections) = value.as_object_mut() {
        for (name, section) in sections.iter_mut() {
            if let Some(enabled) = section.get_mut("enabled")
                && enabled.is_boolean()
            {
                *enabled = serde_json::Value::Bool(wanted_sections.contains(name));
            }
        }
    }
    for wanted in wanted_sections {
        if value.get(wanted).is_none() {
            bail!("--rules: no rule section `{wanted}` in the configuration");
        }
    }
    settings.correlation = serde_json::from_value::<CorrelationConfig>(value)
        .context("cannot turn the other rules off through the configuration's JSON form")?;
    Ok(settings)
}

fn rule_names(settings: &EngineSettings) -> String {
    tapio_dataflow::rules::enabled(&settings.correlation)
        .iter()
        .map(|rule| rule.name().replace(' ', "_"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How one Tapio case runs.
struct Tapio {
    workers: usize,
    settings: EngineSettings,
    pace: Option<f64>,
    /// Observations to feed (default `--obs`).
    total: Option<usize>,
    /// Generate in chunks of this many (default: all at once, before the clock starts).
    chunk: Option<usize>,
}

impl Tapio {
    fn flood(workers: usize, settings: EngineSettings) -> Tapio {
        Tapio {
            workers,
            settings,
            pace: None,
            total: None,
            chunk: None,
        }
    }
}

/// What the sink task saw.
#[derive(Debug, Default)]
struct SinkStats {
    arrivals: Vec<(u64, Instant)>,
    batches: u64,
    changes: u64,
    added: BTreeMap<&'static str, u64>,
    oom_kills: BTreeSet<String>,
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
            *stats.added.entry(correlation.kind.as_str()).or_default() += 1;
            if correlation.kind == CorrelationKind::OomRestart
                && let EntityId::Process {
                    node,
                    pid,
                    start_ns,
                } = &correlation.root_cause
            {
                stats.oom_kills.insert(kill_key(node, *pid, *start_ns));
            }
        }
    }
    stats
}

/// p50, p99 and max of the delays from each tick's close to its batch at the sink, ms.
fn latency(closes: &[(u64, Instant)], arrivals: &[(u64, Instant)]) -> (usize, f64, f64, f64) {
    let closed: HashMap<u64, Instant> = closes.iter().copied().collect();
    let mut delays: Vec<f64> = arrivals
        .iter()
        .filter_map(|(tick, arrived)| {
            let close = closed.get(tick)?;
            Some(arrived.saturating_duration_since(*close).as_secs_f64() * 1e3)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if delays.is_empty() {
            f64::NAN
        } else {
            let rank = ((q * delays.len() as f64).ceil() as usize).clamp(1, delays.len());
            delays[rank - 1]
        }
    };
    (
        delays.len(),
        pick(0.5),
        pick(0.99),
        delays.last().copied().unwrap_or(f64::NAN),
    )
}

fn tapio_case(options: &Options, case: &str, dir: &Path, run: Tapio) -> Result<()> {
    let total = run.total.unwrap_or(options.obs);
    let chunk = run.chunk.unwrap_or(total);
    let spec = ClusterSpec {
        tick_ms: run.settings.tick_ms,
        ..options.spec()
    };
    let base_rss = rss_bytes();
    let mut cluster = Cluster::new(spec.clone());
    let mut first = Vec::with_capacity(chunk + 8_192);
    cluster.fill(&mut first, chunk.min(total));
    let stream_rss = rss_bytes().saturating_sub(base_rss);
    let mut generated = first.len();
    eprintln!(
        "    [{case}] rules: {}; {} workers; {} observations generated ({:.0} MiB)",
        rule_names(&run.settings),
        run.workers,
        first.len(),
        mib(stream_rss)
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (batches_tx, batches_rx) = mpsc::channel(64);
    let sink = runtime.spawn(sink(batches_rx));
    let layout = ClusterLayout::single(run.workers);
    let (engine, inputs) = Engine::start(run.settings.clone(), layout.clone(), batches_tx)?;
    let mut router = Router::new(layout, inputs);
    let clock = TickClock::new(run.settings.tick_ms);
    let mut watermark = Watermark::new(clock, run.settings.lateness_ns);
    let mut closed_upto = clock.floor(spec.start_ns);
    let mut closes: Vec<(u64, Instant)> = Vec::new();
    let mut samples: Vec<(u64, f64, f64)> = Vec::new();
    let mut fed = 0u64;
    let mut busy = Duration::ZERO;
    let mut oom_fed = 0u64;
    let mut truncated = false;
    let time_cap = Duration::from_secs_f64(options.time_cap_s.max(0.0));
    let tenth = (total as u64 / 10).max(1);
    let started = Instant::now();
    let cpu_before = cpu_seconds("self");
    runtime.block_on(async {
        let mut chunk_obs = first;
        'feed: loop {
            let begin = Instant::now();
            for observation in chunk_obs {
                if let Some(rate) = run.pace {
                    let due = started + Duration::from_secs_f64(fed as f64 / rate);
                    if Instant::now() < due {
                        if !router.flush().await {
                            break 'feed;
                        }
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                match &observation {
                    Observation::Heartbeat(beat) => {
                        let input = watermark.observe(beat);
                        if input > closed_upto {
                            let now = Instant::now();
                            let mut tick = closed_upto;
                            while tick < input {
                                closes.push((tick, now));
                                tick += clock.tick_ms();
                            }
                            closed_upto = input;
                        }
                    }
                    Observation::Fact(fact) => {
                        if let FactPayload::ContainerExit(exit) = &fact.payload
                            && exit.reason == "OOMKilled"
                        {
                            oom_fed += 1;
                        }
                    }
                    Observation::State(_) => {}
                }
                let time_ns = observation.time_ns();
                if !router.route(observation).await {
                    eprintln!("the engine stopped accepting input");
                    break 'feed;
                }
                fed += 1;
                if fed.is_multiple_of(tenth) {
                    let event_s = time_ns.saturating_sub(spec.start_ns) as f64 / 1e9;
                    samples.push((fed, event_s, mib(rss_bytes())));
                }
                if run.pace.is_none()
                    && fed.is_multiple_of(8_192)
                    && busy + begin.elapsed() > time_cap
                {
                    truncated = true;
                    break;
                }
            }
            busy += begin.elapsed();
            if truncated || generated >= total {
                break;
            }
            let mut next = Vec::with_capacity(chunk + 8_192);
            cluster.fill(&mut next, chunk.min(total - generated));
            generated += next.len();
            chunk_obs = next;
        }
    });
    let ending = Instant::now();
    runtime.block_on(router.finish());
    let report = engine.join()?;
    let tail = ending.elapsed();
    let cpu = cpu_seconds("self") - cpu_before;
    let secs = match run.pace {
        Some(_) => started.elapsed(),
        None => busy + tail,
    }
    .as_secs_f64();
    let sink = runtime.block_on(sink)?;
    let peak = peak_rss_bytes();
    let (ticks, p50, p99, max) = latency(&closes, &sink.arrivals);
    if case == "seq-tapio" {
        write_keys(dir, case, &sink.oom_kills)?;
    }
    let stats = cluster.stats();
    let added: Vec<String> = sink
        .added
        .iter()
        .map(|(kind, count)| format!("{kind}:{count}"))
        .collect();
    eprintln!(
        "    [{case}] engine: {report:?}; sink: {} batches, {} changes; generated {}",
        sink.batches,
        sink.changes,
        describe(stats)
    );
    println!(
        "RESULT case={case} workers={} obs={fed} event_s={:.0} secs={:.3} obs_per_s={:.0} \
         cpu_s={:.2} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1} lat_ticks={ticks} \
         peak_rss_mib={:.1} stream_rss_mib={:.1} changes={} added={} oom_fed={oom_fed} \
         oom_matched={} truncated={truncated} rules={}",
        run.workers,
        cluster.event_time().saturating_sub(spec.start_ns) as f64 / 1e9,
        secs,
        fed as f64 / secs,
        cpu,
        mib(peak),
        mib(stream_rss),
        sink.changes,
        if added.is_empty() {
            "-".to_string()
        } else {
            added.join(",")
        },
        sink.oom_kills.len(),
        rule_names(&run.settings),
    );
    for (index, (at, event_s, rss)) in samples.iter().enumerate() {
        println!(
            "SAMPLE case={case} n={} fed={at} event_s={event_s:.0} rss_mib={rss:.1}",
            index + 1
        );
    }
    Ok(())
}

fn describe(stats: &ClusterStats) -> String {
    format!(
        "{} observations ({} facts: {} connects, {} failed, {} OOM sequences, {} crashes; {} \
         incidents)",
        stats.observations,
        stats.facts,
        stats.connects,
        stats.failed_connects,
        stats.oom_sequences,
        stats.crashes,
        stats.incidents.len()
    )
}

// ---------------------------------------------------------------------------------------------
// The hand-written differential dataflow program.

/// A process as the kernel names it: (node, pid, start).
type ProcessKey = (Arc<str>, u32, u64);

fn handwritten_case(options: &Options, case: &str, dir: &Path) -> Result<()> {
    let (stream, _) = generate(&options.spec(), options.obs);
    let within_ns =
        u64::try_from(CorrelationConfig::default().oom_sequence.within.as_nanos()).unwrap_or(0);
    let tick_ns = EngineSettings::default().tick_ms.max(1) * 1_000_000;
    let observations = stream.len() as u64;
    eprintln!("    [{case}] {observations} observations generated; Δ {within_ns} ns");
    let (secs, cpu, keys) = timely::execute_directly(move |worker| {
        let matched = std::rc::Rc::new(std::cell::RefCell::new(BTreeSet::new()));
        let sink = matched.clone();
        let (mut kills, mut exits, mut stops, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (kills_in, kills) = scope.new_collection::<(ProcessKey, (u64, Arc<str>)), isize>();
            let (exits_in, exits) = scope.new_collection::<(ProcessKey, u64), isize>();
            let (stops_in, stops) = scope.new_collection::<(Arc<str>, u64), isize>();
            // Kill → the same process's earliest signal-9 exit within Δ.
            let exited = kills
                .join(exits)
                .filter(move |(_, ((killed, _), exited))| {
                    *exited >= *killed && *exited - *killed <= within_ns
                })
                .map(|(process, ((killed, container), exited))| {
                    ((process, killed, container), exited)
                })
                .reduce(|_, exits, output| {
                    if let Some((earliest, _)) = exits.iter().find(|(_, count)| *count > 0) {
                        output.push((**earliest, 1isize));
                    }
                })
                .map(|((process, killed, container), _)| (container, (process, killed)));
            // → that container's earliest exit within Δ of the kill.
            let matched = exited
                .join(stops)
                .filter(move |(_, ((_, killed), stopped))| {
                    *stopped >= *killed && *stopped - *killed <= within_ns
                })
                .map(|(container, ((process, killed), stopped))| {
                    ((process, killed, container), stopped)
                })
                .reduce(|_, stops, output| {
                    if let Some((earliest, _)) = stops.iter().find(|(_, count)| *count > 0) {
                        output.push((**earliest, 1isize));
                    }
                });
            let (probe, matched) = matched.probe();
            matched.inspect(move |(((process, _, _), _), _, diff)| {
                if *diff > 0 {
                    sink.borrow_mut()
                        .insert(kill_key(&process.0, process.1, process.2));
                }
            });
            (kills_in, exits_in, stops_in, probe)
        });
        let started = Instant::now();
        let cpu_before = cpu_seconds("self");
        let mut current = 0u64;
        for observation in stream {
            match observation {
                Observation::Fact(fact) => {
                    let node = fact.id.node.clone();
                    match fact.payload {
                        FactPayload::OomKill(kill) => {
                            if let Some(container) = kill.container_id {
                                kills.insert((
                                    (node, kill.pid, kill.start_ns),
                                    (fact.time_ns, container),
                                ));
                            }
                        }
                        FactPayload::ProcessExit(exit) if exit.signal == 9 => {
                            exits.insert(((node, exit.pid, exit.start_ns), fact.time_ns));
                        }
                        FactPayload::ContainerExit(stop) => {
                            stops.insert((stop.container_id, fact.time_ns));
                        }
                        _ => {}
                    }
                }
                Observation::Heartbeat(beat) => {
                    let tick = beat.upto_ns / tick_ns;
                    if tick > current {
                        current = tick;
                        kills.advance_to(tick);
                        exits.advance_to(tick);
                        stops.advance_to(tick);
                        kills.flush();
                        exits.flush();
                        stops.flush();
                        worker.step_while(|| probe.less_than(&tick));
                    }
                }
                Observation::State(_) => {}
            }
        }
        drop((kills, exits, stops));
        worker.step_while(|| !probe.done());
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self") - cpu_before;
        let keys = matched.borrow().clone();
        (secs, cpu, keys)
    });
    write_keys(dir, case, &keys)?;
    println!(
        "RESULT case={case} workers=1 obs={observations} secs={secs:.3} obs_per_s={:.0} \
         cpu_s={cpu:.2} peak_rss_mib={:.1} oom_matched={}",
        observations as f64 / secs,
        mib(peak_rss_bytes()),
        keys.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Esper.

/// The Maven project of the Esper program, and its build output.
fn esper_project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("esper")
}

/// The Java class path of the built Esper program, building it with Maven when it is missing.
fn esper_classpath() -> Result<String> {
    let project = esper_project();
    let target = project.join("target");
    let classpath = target.join("classpath.txt");
    if !classpath.exists() {
        eprintln!(
            "    building the Esper program: mvn -B -q -f {}/pom.xml package (needs Java 17 and \
             Maven; the first build downloads Esper 9.0.0 from Maven Central)",
            project.display()
        );
        let status = Command::new("mvn")
            .args(["-B", "-q", "-f"])
            .arg(project.join("pom.xml"))
            .arg("package")
            .status()
            .context("cannot run `mvn` (install Maven and Java 17, or run .ci/install)")?;
        if !status.success() {
            bail!(
                "`mvn package` of {} failed ({status}); see its output above",
                project.display()
            );
        }
    }
    let dependencies = std::fs::read_to_string(&classpath)
        .with_context(|| format!("cannot read {}", classpath.display()))?;
    Ok(format!(
        "{}:{}",
        target.join("classes").display(),
        dependencies.trim()
    ))
}

/// Writes the stream as the Esper program reads it: one line per observation, times in ms.
fn write_esper_stream(stream: &[Observation], path: &Path) -> Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for observation in stream {
        match observation {
            Observation::Heartbeat(beat) => writeln!(out, "H {}", beat.upto_ns / 1_000_000)?,
            Observation::State(update) => {
                let kind = match &update.record.object {
                    StateObject::Workload(_) => "workload",
                    StateObject::PodContainer(_) => "pod_container",
                    StateObject::ProcessContainer(_) => "process_container",
                    StateObject::Service(_) => "service",
                    StateObject::ServiceEndpoint(_) => "service_endpoint",
                    StateObject::NodeCondition(_) => "node_condition",
                    StateObject::PodAddress(_) => "pod_address",
                };
                writeln!(out, "S {} {kind}", update.time_ns / 1_000_000)?;
            }
            Observation::Fact(fact) => {
                let ms = fact.time_ns / 1_000_000;
                let node = &fact.id.node;
                match &fact.payload {
                    FactPayload::OomKill(kill) => writeln!(
                        out,
                        "K {ms} {node} {} {} {}",
                        kill.pid,
                        kill.start_ns,
                        kill.container_id.as_deref().unwrap_or("-")
                    )?,
                    FactPayload::ProcessExit(exit) => writeln!(
                        out,
                        "X {ms} {node} {} {} {} {}",
                        exit.pid,
                        exit.start_ns,
                        exit.signal,
                        exit.container_id.as_deref().unwrap_or("-")
                    )?,
                    FactPayload::ContainerExit(stop) => writeln!(
                        out,
                        "C {ms} {} {} {}",
                        stop.container_id, stop.exit_code, stop.reason
                    )?,
                    other => writeln!(out, "F {ms} {node} {}", other.kind())?,
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn esper_case(options: &Options, case: &str, dir: &Path) -> Result<()> {
    let classpath = esper_classpath()?;
    let (stream, _) = generate(&options.spec(), options.obs);
    let events = dir.join("stream.txt");
    write_esper_stream(&stream, &events)?;
    let observations = stream.len();
    drop(stream);
    let keys = dir.join(format!("{case}.keys"));
    eprintln!(
        "    [{case}] {observations} observations written to {}; running Esper",
        events.display()
    );
    let output = Command::new("java")
        .arg("-cp")
        .arg(&classpath)
        .arg("tapio.bench.OomSequence")
        .arg(&events)
        .arg(&keys)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `java` (install Java 17)")?;
    if !output.status.success() {
        bail!("the Esper program failed: {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let result = text
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .context("the Esper program printed no RESULT line")?;
    println!("RESULT case={case} workers=1 {result}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Every phase, each in a child process, then the tables.

type Fields = BTreeMap<String, String>;

fn fields(line: &str) -> Fields {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn number(fields: Option<&Fields>, key: &str) -> f64 {
    fields
        .and_then(|fields| fields.get(key))
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

/// One run of a phase, in a child process: its RESULT fields and SAMPLE lines, or why not.
fn run_phase(
    exe: &Path,
    dir: &Path,
    options: &Options,
    phase: &str,
    label: &str,
) -> Result<std::result::Result<(Fields, Vec<Fields>), String>> {
    eprintln!(
        "==> phase {label}: {phase} (load average {})",
        load_average()
    );
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("--case")
        .arg(phase)
        .arg("--dir")
        .arg(dir)
        .args(&options.forward)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start phase {phase}"))?;
    let stdout = child.stdout.take().context("no stdout from the child")?;
    let mut result = None;
    let mut samples = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("RESULT ") {
            result = Some(fields(rest));
        } else if let Some(rest) = line.strip_prefix("SAMPLE ") {
            samples.push(fields(rest));
        }
        eprintln!("    {line}");
    }
    let status = child.wait()?;
    eprintln!(
        "<== phase {phase} done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(match result {
        Some(result) if status.success() => Ok((result, samples)),
        _ => Err(format!("failed: {status}")),
    })
}

/// What every phase gave: its runs (one, or one per round for the sequence phases).
#[derive(Default)]
struct Outcomes {
    runs: BTreeMap<String, Vec<Fields>>,
    failures: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<Fields>>,
    /// Per round: Tapio's obs/s over Esper's and over the hand-written program's.
    esper_ratios: Vec<f64>,
    dd_ratios: Vec<f64>,
    /// Per phase: whether its matches equalled Tapio's in every round.
    same: BTreeMap<String, bool>,
}

fn run_all(options: &Options) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this binary to re-execute it")?;
    let dir = std::env::temp_dir().join(format!("tapio-bench-correlators-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let load_before = load_average();
    let mut outcomes = Outcomes::default();
    let (sequence, full): (Vec<&String>, Vec<&String>) = options
        .phases
        .iter()
        .partition(|phase| phase.starts_with("seq-"));
    let total = full.len() + sequence.len() * options.rounds;
    let mut done = 0;
    for phase in full {
        done += 1;
        match run_phase(&exe, &dir, options, phase, &format!("{done}/{total}"))? {
            Ok((result, samples)) => {
                outcomes.runs.entry(phase.clone()).or_default().push(result);
                outcomes.samples.insert(phase.clone(), samples);
            }
            Err(why) => {
                outcomes.failures.insert(phase.clone(), why);
            }
        }
    }
    for round in 1..=options.rounds {
        let mut rates = BTreeMap::new();
        for phase in &sequence {
            done += 1;
            let label = format!("{done}/{total}, round {round}/{}", options.rounds);
            let _ = std::fs::remove_file(dir.join(format!("{phase}.keys")));
            match run_phase(&exe, &dir, options, phase, &label)? {
                Ok((result, _)) => {
                    rates.insert(phase.to_string(), number(Some(&result), "obs_per_s"));
                    outcomes
                        .runs
                        .entry(phase.to_string())
                        .or_default()
                        .push(result);
                }
                Err(why) => {
                    outcomes.failures.insert(phase.to_string(), why);
                }
            }
        }
        let tapio_keys = std::fs::read_to_string(dir.join("seq-tapio.keys")).ok();
        for phase in ["seq-esper", "seq-dd"] {
            let keys = std::fs::read_to_string(dir.join(format!("{phase}.keys"))).ok();
            if let (Some(keys), Some(tapio)) = (keys, &tapio_keys) {
                let same = outcomes.same.entry(phase.to_string()).or_insert(true);
                *same &= keys == *tapio;
            }
        }
        if let Some(tapio) = rates.get("seq-tapio") {
            if let Some(esper) = rates.get("seq-esper") {
                outcomes.esper_ratios.push(tapio / esper);
            }
            if let Some(dd) = rates.get("seq-dd") {
                outcomes.dd_ratios.push(tapio / dd);
            }
        }
    }
    let load_after = load_average();
    print_tables(options, &outcomes);
    // The stream file and the match lists are only needed until the tables are printed.
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        eprintln!("cannot remove {}: {error}", dir.display());
    }
    println!();
    println!("load average (1, 5, 15 min): {load_before} before, {load_after} after");
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// `median (min–max)` with `digits` decimals; just the value for one.
fn spread(values: &[f64], digits: usize) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() <= 1 {
        return format!("{:.digits$}", median(&finite));
    }
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.digits$} ({min:.digits$}–{max:.digits$})",
        median(&finite)
    )
}

fn print_tables(options: &Options, outcomes: &Outcomes) {
    let runs = |phase: &str| outcomes.runs.get(phase).map_or(&[][..], Vec::as_slice);
    let values = |phase: &str, key: &str| -> Vec<f64> {
        runs(phase).iter().map(|r| number(Some(r), key)).collect()
    };
    let first = |phase: &str| runs(phase).first();
    println!();
    println!(
        "correlators: seed {}, ClusterSpec::with_incidents; flood {} observations, paced {} at \
         {}/s, memory {} and ×{}; sequence phases {} round(s)",
        options.seed,
        options.obs,
        options.paced_obs,
        options.paced_rate,
        options.memory_obs,
        options.long_factor,
        options.rounds
    );
    if let Some(rules) = ["full-w1", "full-w2", "full-w2-paced"]
        .iter()
        .find_map(|phase| first(phase).and_then(|r| r.get("rules")))
    {
        println!("full rule set: {rules}");
    }
    println!();
    println!(
        "| phase | workers | observations | event s | seconds | obs/s | CPU s | p50 ms | p99 ms | peak RSS MiB | correlations added |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in &options.phases {
        let Some(r) = first(phase) else {
            println!(
                "| {phase} | {} |  |  |  |  |  |  |  |  |  |",
                outcomes
                    .failures
                    .get(phase)
                    .map_or("not run", String::as_str)
            );
            continue;
        };
        let field = |key: &str| r.get(key).map_or("", String::as_str);
        let truncated = if field("truncated") == "true" {
            " (time cap)"
        } else {
            ""
        };
        let cpu = median(&values(phase, "cpu_s"));
        println!(
            "| {phase}{truncated} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            field("workers"),
            field("obs"),
            field("event_s"),
            spread(&values(phase, "secs"), 2),
            spread(&values(phase, "obs_per_s"), 0),
            if cpu.is_finite() {
                format!("{cpu:.1}")
            } else {
                "–".to_string()
            },
            field("p50_ms"),
            field("p99_ms"),
            field("peak_rss_mib"),
            field("added"),
        );
    }

    println!();
    println!("OOM sequence on the same stream (medians over the rounds, min–max in brackets):");
    println!();
    println!(
        "| implementation | obs/s | events sent | matches | same matches as Tapio | Tapio / this |"
    );
    println!("|---|---|---|---|---|---|");
    for (phase, name, ratios) in [
        (
            "seq-tapio",
            "Tapio, OOM sequence rule only (1 worker)",
            None,
        ),
        (
            "seq-esper",
            "Esper 9.0.0 EPL pattern (1 thread)",
            Some(&outcomes.esper_ratios),
        ),
        (
            "seq-dd",
            "hand-written differential dataflow (1 worker)",
            Some(&outcomes.dd_ratios),
        ),
    ] {
        if !options.phases.iter().any(|p| p == phase) {
            continue;
        }
        let Some(r) = first(phase) else {
            println!(
                "| {name} | {} |  |  |  |  |",
                outcomes
                    .failures
                    .get(phase)
                    .map_or("not run", String::as_str)
            );
            continue;
        };
        let same = match (phase, outcomes.same.get(phase)) {
            ("seq-tapio", _) => "–",
            (_, Some(true)) => "yes",
            (_, Some(false)) => "**no**",
            (_, None) => "?",
        };
        println!(
            "| {name} | {} | {} | {} | {same} | {} |",
            spread(&values(phase, "obs_per_s"), 0),
            r.get("events").map_or("–", String::as_str),
            r.get("oom_matched").map_or("?", String::as_str),
            ratios.map_or("1.00".to_string(), |ratios| spread(ratios, 2)),
        );
    }

    println!();
    println!("Targets:");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let rate = |phase: &str| median(&values(phase, "obs_per_s"));
    let field = |phase: &str, key: &str| median(&values(phase, key));
    let w2 = rate("full-w2");
    if w2.is_finite() {
        println!(
            "- full rule set at 2 workers: {w2:.0} obs/s (target ≥ 400,000: {})",
            verdict(w2 >= 400_000.0)
        );
    }
    let p99 = field("full-w2-paced", "p99_ms");
    if p99.is_finite() {
        println!(
            "- paced p99 tick close → sink: {p99:.1} ms at {}/s (target ≤ 20 ms: {})",
            options.paced_rate,
            verdict(p99 <= 20.0)
        );
    }
    let (short, long) = (
        field("full-w2-short", "peak_rss_mib"),
        field("full-w2-long", "peak_rss_mib"),
    );
    if short.is_finite() && long.is_finite() {
        println!(
            "- peak RSS of the {}× longer run / the short one: {:.2} ({long:.0} vs {short:.0} MiB; \
             see the tenths below: state grows until the longest window is full)",
            options.long_factor,
            long / short
        );
    }
    let esper = median(&outcomes.esper_ratios);
    if esper.is_finite() {
        println!(
            "- Tapio / Esper on the OOM sequence: {esper:.2} (target ≥ 1.0: {}; goal 2.0: {})",
            verdict(esper >= 1.0),
            verdict(esper >= 2.0)
        );
    }
    let dd = median(&outcomes.dd_ratios);
    if dd.is_finite() {
        println!(
            "- Tapio / hand-written on the OOM sequence: {dd:.2} (target ≥ 0.5: {})",
            verdict(dd >= 0.5)
        );
    }
    for (phase, list) in &outcomes.samples {
        if !(phase.ends_with("-long") || phase.ends_with("-short")) {
            continue;
        }
        let text: Vec<String> = list
            .iter()
            .map(|s| {
                format!(
                    "{:.0} s: {:.0}",
                    number(Some(s), "event_s"),
                    number(Some(s), "rss_mib")
                )
            })
            .collect();
        println!(
            "- VmRSS MiB of {phase} at each tenth (event time: MiB): {}",
            text.join(", ")
        );
    }
}
