//! Soak: node agent → NATS JetStream → correlation job → Neo4j, on the synthetic 20-node cluster
//! at its rated rate (event time at wall-clock pace), for as long as asked.
//!
//! Run with `cargo bench -p tapio-benches --bench soak -- --minutes 60` (needs `nats-server` and
//! the Neo4j test server, see `.ci/install`; uses the `tapio` binary of the same profile,
//! `target/release/tapio` for `cargo bench`). Arguments after `--`: `--minutes M` of stream
//! (default 10), `--sample-seconds S` between samples (default 30), `--no-neo4j` to leave the
//! graph out, `--tapio PATH` for another binary, and `--flood F` to send F times the rated
//! rate (F ticks of event time per 100 ms of wall time) for `--flood-seconds` (60) from
//! `--flood-at` seconds (120).
//!
//! The benchmark generates the stream of [`ClusterSpec::default`] (20 nodes, 100 Deployments,
//! 1,500 execs per second, OOM kills, pod deletions, rollouts; about 6,400 observations per
//! second of event time) tick by tick, one 100 ms tick every 100 ms of wall time, and writes it
//! as a recording into a FIFO that the agent's recording collector reads (at speed 0: as it
//! arrives). The agent publishes to a `nats-server` it starts; the correlation job reads the
//! stream through its durable consumer and writes its output to a file and to Neo4j.
//!
//! Every `--sample-seconds` it prints, for the agent, the job and `nats-server`, the resident
//! memory, open file descriptors and threads (`/proc/<pid>`), and at the end the first and last
//! samples after the first minute with their change, and the accounting of every observation:
//! generated = read by the agent's collector = published (acknowledged as stored, not as
//! duplicates) + dropped + left in the spool = stored in the stream = taken in by the job
//! (received by its NATS source) + the job's counted errors and drops. Last, it replays the
//! stream (`tapio replay nats://…`) and checks that the job's live output equals the replay's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tapio_model::Observation;
use tapio_model::recording::RecordingWriter;
use tapio_sinks_neo4j::harness::{self, Neo4jServer};
use tapio_tests::nats::NatsServer;
use tapio_tests::synthetic::{Cluster, ClusterSpec};

struct Args {
    minutes: f64,
    flood_factor: u64,
    flood_seconds: u64,
    flood_at_seconds: u64,
    sample_seconds: u64,
    neo4j: bool,
    tapio: PathBuf,
}

fn args() -> Result<Args> {
    let mut args = Args {
        minutes: 10.0,
        flood_factor: 0,
        flood_seconds: 60,
        flood_at_seconds: 120,
        sample_seconds: 30,
        neo4j: true,
        tapio: tapio_tests::tapio_binary(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--minutes" => args.minutes = it.next().context("--minutes N")?.parse()?,
            "--sample-seconds" => {
                args.sample_seconds = it.next().context("--sample-seconds N")?.parse()?;
            }
            "--no-neo4j" => args.neo4j = false,
            "--flood" => args.flood_factor = it.next().context("--flood FACTOR")?.parse()?,
            "--flood-seconds" => {
                args.flood_seconds = it.next().context("--flood-seconds N")?.parse()?;
            }
            "--flood-at" => {
                args.flood_at_seconds = it.next().context("--flood-at SECONDS")?.parse()?;
            }
            "--tapio" => args.tapio = it.next().context("--tapio PATH")?.into(),
            // What `cargo bench` passes.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if !args.tapio.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release) or pass --tapio PATH",
            args.tapio.display()
        );
    }
    Ok(args)
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Resident memory (MiB), open file descriptors and threads of process `pid`.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rss_mib: f64,
    fds: usize,
    threads: usize,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    Sample {
        rss_mib: field("VmRSS") as f64 / 1024.0,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
        threads: usize::try_from(field("Threads")).unwrap_or(0),
    }
}

/// The `name=N` count in the last line of `log` that contains `line` (and `also`).
fn count(log: &str, line: &str, also: &str, name: &str) -> Result<u64> {
    let found = log
        .lines()
        .rev()
        .find(|l| l.contains(line) && l.contains(also))
        .with_context(|| format!("no `{line}` line with `{also}` in the log"))?;
    found
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no {name}= in `{found}`"))
}

fn write_config(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn spawn(tapio: &Path, args: &[&str], config: &Path, log: &Path) -> Result<Running> {
    Ok(Running(
        Command::new(tapio)
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("start {}", tapio.display()))?,
    ))
}

/// The stream's last sequence and the job's acknowledged floor.
async fn stream_progress(url: &str) -> Result<(u64, u64)> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("TAPIO").await?;
    let last = stream.info().await?.state.last_sequence;
    let floor = stream
        .consumer_info("tapio-correlation")
        .await
        .map_or(0, |info| info.ack_floor.stream_sequence);
    Ok((last, floor))
}

fn main() -> Result<()> {
    let args = args()?;
    let dir = std::env::temp_dir().join(format!("tapio-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let nats = NatsServer::start("soak");
    let neo4j = if args.neo4j {
        let launcher = tapio_tests::repo_root().join("tests/neo4j-harness");
        Some(Neo4jServer::start(&launcher, Duration::from_secs(300))?)
    } else {
        None
    };
    let fifo = dir.join("stream.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    if !made.success() {
        bail!("mkfifo {} failed", fifo.display());
    }
    let spool = dir.join("agent.spool");
    let agent_config = dir.join("agent.yaml");
    write_config(
        &agent_config,
        &format!(
            "node_name: agent-1\ncollectors:\n  kernel:\n    enabled: false\n  recording:\n    \
             enabled: true\n    path: {}\n    speed: 0\napi:\n  enabled: false\n\
             integrations:\n  nats:\n    url: {}\n    spool_path: {}\n",
            fifo.display(),
            nats.url(),
            spool.display()
        ),
    )?;
    let job_config = dir.join("job.yaml");
    let neo4j_section = neo4j.as_ref().map_or(String::new(), |neo4j| {
        format!(
            "  neo4j:\n    uri: {}\n    username: {}\n    password: {}\n",
            neo4j.uri(),
            harness::USERNAME,
            harness::PASSWORD
        )
    });
    write_config(
        &job_config,
        &format!(
            "node_name: job\napi:\n  enabled: false\nintegrations:\n{neo4j_section}  nats:\n    \
             url: {}\n",
            nats.url()
        ),
    )?;
    let out = dir.join("correlations.jsonl");
    let job_log = dir.join("job.log");
    let mut job = spawn(
        &args.tapio,
        &[
            "run",
            "--mode",
            "correlation",
            "--output",
            out.to_str().context("utf-8 path")?,
        ],
        &job_config,
        &job_log,
    )?;
    let agent_log = dir.join("agent.log");
    let mut agent = spawn(
        &args.tapio,
        &["run", "--mode", "collectors"],
        &agent_config,
        &agent_log,
    )?;

    // The generator: one 100 ms tick of the cluster every 100 ms of wall time.
    let ticks = (args.minutes * 600.0) as u64;
    let flood = args.flood_at_seconds..args.flood_at_seconds + args.flood_seconds;
    let flood_factor = args.flood_factor.max(1);
    let generator = {
        let fifo = fifo.clone();
        let flood = flood.clone();
        std::thread::spawn(move || -> Result<(u64, Duration)> {
            let file = std::fs::OpenOptions::new().write(true).open(&fifo)?;
            let mut writer =
                RecordingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file))?;
            let mut cluster = Cluster::new(ClusterSpec::default());
            let mut buffer: Vec<Observation> = Vec::new();
            let mut sent = 0u64;
            let mut behind = Duration::ZERO;
            let started = Instant::now();
            for tick in 0..ticks {
                buffer.clear();
                cluster.tick(&mut buffer);
                // In the flood window, `flood` ticks of event time per tick of wall time.
                if flood.contains(&(tick / 10)) {
                    for _ in 1..flood_factor {
                        cluster.tick(&mut buffer);
                    }
                }
                let due = started + Duration::from_millis(100 * tick);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    behind = behind.max(now - due);
                }
                for observation in &buffer {
                    writer.write(observation)?;
                }
                writer.flush()?;
                sent += buffer.len() as u64;
            }
            Ok((sent, behind))
        })
    };

    let pids = [
        ("agent", agent.0.id()),
        ("job", job.0.id()),
        ("nats-server", nats.pid().context("nats-server runs")?),
    ];
    println!(
        "soak: {} min of the synthetic 20-node cluster at its rated rate, samples every {} s{}",
        args.minutes,
        args.sample_seconds,
        if args.neo4j { ", with Neo4j" } else { "" }
    );
    if flood_factor > 1 {
        println!(
            "flood: {flood_factor}x the rated rate from {} s to {} s",
            flood.start, flood.end
        );
    }
    println!(
        "{:>6}  {:>12}  {:>28}  {:>28}  {:>28}",
        "t (s)",
        "stream seq",
        "agent rss MiB/fds/threads",
        "job rss MiB/fds/threads",
        "nats rss MiB/fds/threads"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut samples: Vec<(f64, [Sample; 3])> = Vec::new();
    let mut next = Duration::ZERO;
    while !generator.is_finished() {
        if started.elapsed() >= next {
            let row = pids.map(|(_, pid)| sample(pid));
            let (last, floor) = runtime
                .block_on(stream_progress(&nats.url()))
                .unwrap_or((0, 0));
            let t = started.elapsed().as_secs_f64();
            let cell = |s: &Sample| format!("{:.1}/{}/{}", s.rss_mib, s.fds, s.threads);
            println!(
                "{t:>6.0}  {:>12}  {:>28}  {:>28}  {:>28}",
                format!("{floor}/{last}"),
                cell(&row[0]),
                cell(&row[1]),
                cell(&row[2])
            );
            std::io::stdout().flush()?;
            samples.push((t, row));
            next += Duration::from_secs(args.sample_seconds);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (generated, behind) = generator
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    // The FIFO is closed: the agent's collector ends, the agent publishes what is left and
    // exits.
    let deadline = Instant::now() + Duration::from_secs(300);
    let agent_status = loop {
        if let Some(status) = agent.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not finish; its log is {}",
                agent_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !agent_status.success() {
        bail!(
            "the agent failed ({agent_status}); its log is {}",
            agent_log.display()
        );
    }
    // The job takes in everything the stream holds.
    let drained = Instant::now();
    loop {
        let (last, floor) = runtime.block_on(stream_progress(&nats.url()))?;
        if last > 0 && floor >= last {
            break;
        }
        if drained.elapsed() > Duration::from_secs(600) {
            bail!(
                "the job acknowledged {floor} of {last} messages; its log is {}",
                job_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let caught_up = drained.elapsed();
    let _ = Command::new("kill")
        .args(["-TERM", &job.0.id().to_string()])
        .status();
    let job_status = job.0.wait()?;
    if !job_status.success() {
        bail!(
            "the job failed ({job_status}); its log is {}",
            job_log.display()
        );
    }
    let stored = runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("TAPIO").await?;
        anyhow::Ok(stream.info().await?.state.messages)
    })?;

    let agent_text = std::fs::read_to_string(&agent_log)?;
    let job_text = std::fs::read_to_string(&job_log)?;
    let read = count(&agent_text, "Source finished.", "recording", "received")?;
    let published = count(&agent_text, "Publishing finished.", "", "published")?;
    let messages = count(&agent_text, "Publishing finished.", "", "messages")?;
    let duplicates = count(&agent_text, "Publishing finished.", "", "duplicates")?;
    let spooled = count(&agent_text, "Publishing finished.", "", "spooled")?;
    let dropped = count(&agent_text, "Publishing finished.", "", "dropped")?;
    let left = count(&agent_text, "Publishing finished.", "", "left_in_spool")?;
    let taken = count(&job_text, "Source finished.", "nats", "received")?;
    let job_errors = count(&job_text, "Source finished.", "nats", "errors")?;
    let job_dropped = count(&job_text, "Source finished.", "nats", "dropped")?;
    let live = std::fs::read_to_string(&out)?;
    let correlations = live.lines().count();
    // The live output against a replay of what the stream holds: equal when the job lost,
    // doubled and reordered nothing beyond what the dataflow tolerates (flood included).
    let replayed_path = dir.join("replayed.jsonl");
    let replay = Command::new(&args.tapio)
        .args(["replay", &format!("{}/TAPIO", nats.url()), "--output"])
        .arg(&replayed_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let exact = replay.success() && std::fs::read_to_string(&replayed_path)? == live;

    println!();
    println!(
        "generator: {generated} observations in {ticks} ticks, at most {behind:?} behind its schedule"
    );
    println!(
        "agent: read {read}, published {published} in {messages} messages (duplicates {duplicates}, spooled {spooled}, dropped {dropped}, left in spool {left} bytes)"
    );
    println!("stream: {stored} messages stored");
    println!(
        "job: took in {taken} observations (errors {job_errors}, dropped {job_dropped}), caught up {caught_up:?} after the agent finished; {correlations} correlation changes written"
    );
    let accounted = generated == read
        && read == published + dropped
        && left == 0
        && stored == messages
        && taken + job_errors + job_dropped == published;
    println!(
        "accounting: generated {generated} = read {read} = published {published} + dropped {dropped}; stored messages {stored} = published messages {messages}; taken in {taken} + errors {job_errors} + dropped {job_dropped} = published: {}",
        if accounted { "holds" } else { "DOES NOT HOLD" }
    );
    println!(
        "output: the live correlations {} a replay of the stream",
        if exact { "equal" } else { "DIFFER FROM" }
    );
    // Flat: the samples after the first minute (state fills its windows first).
    let settled: Vec<&(f64, [Sample; 3])> = samples.iter().filter(|(t, _)| *t >= 60.0).collect();
    if let (Some(first), Some(last)) = (settled.first(), settled.last()) {
        for (index, (name, _)) in pids.iter().enumerate() {
            let (a, b) = (first.1[index], last.1[index]);
            let peak = settled
                .iter()
                .map(|(_, row)| row[index].rss_mib)
                .fold(0.0, f64::max);
            println!(
                "{name}: rss {:.1} → {:.1} MiB (peak {peak:.1}), fds {} → {}, threads {} → {} (t = {:.0} s → {:.0} s)",
                a.rss_mib, b.rss_mib, a.fds, b.fds, a.threads, b.threads, first.0, last.0
            );
        }
    }
    drop(neo4j);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
    if !accounted {
        bail!("an observation is unaccounted for");
    }
    if !exact {
        bail!("the live correlations differ from a replay of the stream");
    }
    Ok(())
}
