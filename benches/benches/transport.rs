//! The NATS JetStream transport on loopback: node agent → JetStream → correlation job.
//!
//! Run with `cargo bench -p tapio-benches --bench transport` (needs `nats-server`, see
//! `.ci/install`; `TAPIO_NATS_SERVER` picks another binary). Optional arguments after `--`:
//! `--messages N` for the throughput runs (default 200000) and `--rounds N` of them (default 5),
//! `--rate R` and `--seconds S` for the latency runs (default 50000 observations/s for 5 s) and
//! `--latency-rounds N` of Tapio's (default 3).
//!
//! On two cores shared by the publisher, its producer, the client's tasks and `nats-server`, one
//! throughput run (well under a second) measures the scheduler as much as the code, so each
//! round runs the three publishing loops back to back in an order that rotates, each into a
//! fresh stream, and the ratios are the median over the rounds with their range.
//!
//! It measures, against one `nats-server` started for the run:
//!
//! 1. **bare**: a plain async-nats loop publishing the same payloads (same sizes, subjects and
//!    `Nats-Msg-Id` headers) to a stream, with the same bound on unacknowledged publishes: one
//!    observation per message, then [`wire::MAX_BATCH_OBSERVATIONS`] per message (the messages
//!    Tapio's publisher forms when its input channel is always full, as in this run: the
//!    like-for-like comparison);
//! 2. **tapio**: the agent's [`Publisher`] publishing the same observations from its input
//!    channel, until every one is acknowledged (batching what is queued); they are handed to
//!    the channel as the kernel collector hands over what it read from its ring buffer
//!    ([`SourceContext::send_batch`]: room claimed for a chunk at a time);
//! 3. **bare latency**: the floor of the machine and server: bare async-nats publishing the
//!    same payloads at the latency run's rate while a bare pull consumer (same pull batch, no
//!    acknowledgements) reads them in the same process; the time from the publish call to the
//!    consumer's receipt; then the same sending what is due at each wake-up of the paced loop
//!    (at most [`BARE_BATCH`]) as one message in Tapio's wire format, which the consumer
//!    decodes: the floor for a batching publisher;
//! 4. **latency**: the agent publishing at a fixed rate while the correlation job's path reads
//!    the stream (durable consumer → router → dataflow worker): the time from handing an
//!    observation to the publisher to the moment the worker that owns it has taken it in
//!    ([`tapio_dataflow::TakenIn`], sampled every 250 µs, forwarded to the reader for
//!    acknowledgement every 2 ms like the correlation job does), p50/p99/max, split into
//!    stages: to stored by the server (the message's JetStream timestamp), to routed, to taken
//!    in. The first second of each latency run warms up and is not counted.
//!
//! For the throughput runs (median over the rounds) and every latency run it also prints the
//! CPU time of this process and of the server per observation; the throughput runs' CPU ratio
//! depends much less on what else the machine runs than their rate ratio. Like the `tapio`
//! binary, the benchmark runs on mimalloc.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use futures_util::StreamExt;
use tapio_benches::proc_status::cpu_seconds;
use tapio_config::NatsConfig;
use tapio_dataflow::{ClusterLayout, Engine, EngineSettings, Router};
use tapio_model::{Fact, FactId, FactPayload, Heartbeat, Observation, ProcessExec};
use tapio_sinks_nats::{Publisher, wire};
use tapio_sources::{SourceContext, SourceStats};
use tapio_sources_nats::{Delivery, DurableReader, NatsEndpoint};
use tapio_tests::nats::NatsServer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The `tapio` binary runs on mimalloc; the agent and the correlation job measured here must too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// A process exec fact of a realistic size (about 300 bytes of JSON).
fn exec(seq: u64, time_ns: u64) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", "bench-node-1", seq),
        time_ns,
        payload: FactPayload::ProcessExec(ProcessExec {
            pid: 1000 + (seq % 30_000) as u32,
            ppid: 1,
            uid: 0,
            start_ns: time_ns,
            comm: "nginx".into(),
            filename: "/usr/sbin/nginx".into(),
            args: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            container_id: Some(
                "4f0072b3c9a1d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3".into(),
            ),
        }),
    })
}

fn heartbeat(upto_ns: u64) -> Observation {
    Observation::Heartbeat(Heartbeat {
        source: "kernel".into(),
        node: "bench-node-1".into(),
        upto_ns,
    })
}

fn config(url: &str, stream: &str, prefix: &str, dir: &std::path::Path) -> NatsConfig {
    NatsConfig {
        url: url.into(),
        stream: stream.into(),
        subject_prefix: prefix.into(),
        spool_path: dir.join(format!("{stream}.spool")).display().to_string(),
        ..NatsConfig::default()
    }
}

/// One throughput run: observations per second, and CPU seconds per observation of this
/// process and of the server while it ran (the clock's span only: preparing the payloads or
/// the input is not counted).
struct Run {
    rate: f64,
    cpu: (f64, f64),
}

/// CPU seconds used so far by this process and by the server.
fn cpu_now(server_pid: &str) -> (f64, f64) {
    (cpu_seconds("self"), cpu_seconds(server_pid))
}

fn cpu_per_observation(before: (f64, f64), after: (f64, f64), observations: usize) -> (f64, f64) {
    let count = observations.max(1) as f64;
    ((after.0 - before.0) / count, (after.1 - before.1) / count)
}

/// Bare async-nats: the same payloads, subjects and headers, at most `pending` unacknowledged
/// observations, the bound Tapio's publisher keeps. With `batched`,
/// [`wire::MAX_BATCH_OBSERVATIONS`] consecutive observations per message in Tapio's wire format
/// (what Tapio's publisher sends when its input is always full, as here), so at most
/// `pending / MAX_BATCH_OBSERVATIONS` messages wait for their acknowledgement.
/// Returns observations per second.
async fn bare(
    url: &str,
    server_pid: &str,
    observations: &[Observation],
    pending: usize,
    batched: bool,
    round: u64,
) -> Result<Run> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    // A stream of its own each round: the same message ids in one stream would be dropped as
    // duplicates, which costs the server less than storing them.
    let name = format!("{}{round}", if batched { "BARE_BATCHES" } else { "BARE" });
    let prefix = name.to_lowercase();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await?;
    let per_message = if batched {
        wire::MAX_BATCH_OBSERVATIONS
    } else {
        1
    };
    let messages: Vec<(String, String, Bytes)> = observations
        .chunks(per_message)
        .map(|chunk| {
            let mut builder = wire::BatchBuilder::new(&prefix, &chunk[0]);
            for o in &chunk[1..] {
                builder.push(o);
            }
            let batch = builder.finish();
            (batch.subject, batch.id, batch.payload)
        })
        .collect();
    let max_inflight = (pending / per_message).max(1);
    let cpu_before = cpu_now(server_pid);
    let started = Instant::now();
    let mut inflight = VecDeque::with_capacity(max_inflight);
    for (subject, id, payload) in messages {
        if inflight.len() >= max_inflight {
            let ack: PublishAckFuture = inflight.pop_front().context("non-empty")?;
            ack.await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        inflight.push_back(js.publish_with_headers(subject, headers, payload).await?);
    }
    for ack in inflight {
        ack.await?;
    }
    let rate = observations.len() as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu_per_observation(cpu_before, cpu_now(server_pid), observations.len());
    js.delete_stream(&name).await?;
    Ok(Run { rate, cpu })
}

/// Tapio's publisher: hand every observation over, wait until all are acknowledged. Returns
/// the run and the number of messages.
async fn tapio(
    config: &NatsConfig,
    server_pid: &str,
    observations: Vec<Observation>,
) -> Result<(Run, u64)> {
    let count = observations.len();
    // The stream exists before the clock starts, as the bare loops' streams do.
    let client = async_nats::connect(config.url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    tapio_sinks_nats::ensure_stream(&js, &tapio_sinks_nats::StreamSettings::from_config(config))
        .await?;
    let publisher = Publisher::connect(config).await?;
    // Let the client connect so that the run does not start by spooling.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (tx, rx) = mpsc::channel(10_000);
    // Handed over as the kernel collector hands over what it read from its ring buffer: room
    // in the channel claimed for a chunk of observations at a time.
    let collector = SourceContext::new("kernel", "bench-node-1", tx, CancellationToken::new());
    let mut observations = observations;
    let cpu_before = cpu_now(server_pid);
    let started = Instant::now();
    let task = tokio::spawn(publisher.run(rx, CancellationToken::new()));
    collector
        .send_batch(&mut observations)
        .await
        .map_err(|_| anyhow::anyhow!("the publisher stopped taking input"))?;
    drop(collector);
    let report = task.await??;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_per_observation(cpu_before, cpu_now(server_pid), count);
    // Measured is the direct path: a run that went through the spool measured the spool.
    anyhow::ensure!(report.spooled == 0, "the publisher spooled: {report:?}");
    anyhow::ensure!(report.published as usize == count, "published {report:?}");
    js.delete_stream(&config.stream).await?;
    let rate = count as f64 / elapsed;
    Ok((Run { rate, cpu }, report.messages))
}

/// Positions routed: (position, hand-over time = the observation's event time, routed time).
type Sent = Arc<Mutex<VecDeque<(u64, u64, u64)>>>;

/// Latencies (ns) of one run, each sorted.
#[derive(Default)]
struct Latencies {
    /// Hand-over to the publisher → stored by the server (the agent and JetStream's write).
    stored: Vec<u64>,
    /// Stored → routed to its worker (delivery, the consumer, decoding, the channel).
    delivered: Vec<u64>,
    /// Routed → taken in by its worker (the dataflow's input).
    entered: Vec<u64>,
    /// Hand-over → routed.
    routed: Vec<u64>,
    /// Hand-over → taken in.
    taken_in: Vec<u64>,
}

/// Routes deliveries like the correlation job; returns the latencies (ns) from hand-over to
/// stored by the server and from stored to routed.
async fn route(
    mut router: Router,
    mut input: mpsc::Receiver<Delivery>,
    sent: Sent,
    warm_up_end: Arc<AtomicU64>,
) -> (Vec<u64>, Vec<u64>) {
    let mut stored = Vec::new();
    let mut delivered = Vec::new();
    let mut unmarked = None;
    loop {
        let delivery = match input.try_recv() {
            Ok(delivery) => delivery,
            Err(mpsc::error::TryRecvError::Empty) => {
                if let Some(position) = unmarked.take()
                    && !router.mark(position).await
                {
                    return (stored, delivered);
                }
                match input.recv().await {
                    Some(delivery) => delivery,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        for observation in delivery.observations {
            if let Observation::Fact(fact) = &observation {
                let now = now_ns();
                if fact.time_ns > warm_up_end.load(Ordering::Relaxed) {
                    stored.push(delivery.stored_ns.saturating_sub(fact.time_ns));
                    delivered.push(now.saturating_sub(delivery.stored_ns));
                }
                sent.lock().expect("not poisoned").push_back((
                    delivery.position,
                    fact.time_ns,
                    now,
                ));
            }
            if !router.route(observation).await {
                return (stored, delivered);
            }
        }
        unmarked = Some(delivery.position);
    }
    if let Some(position) = unmarked {
        router.mark(position).await;
    }
    router.finish().await;
    (stored, delivered)
}

/// How often the sampler looks at the taken-in position: the resolution of "taken in".
const SAMPLE_EVERY: Duration = Duration::from_micros(250);
/// How often the taken-in position goes to the reader for acknowledgement, as in the
/// correlation job (`forward_taken_in` in `src/transport.rs`).
const FORWARD_EVERY: u32 = 8;

/// Publishes at `rate` for `seconds` through the agent and reads through the correlation path.
async fn latency(config: &NatsConfig, rate: u64, seconds: u64) -> Result<Latencies> {
    let (batches_tx, mut batches_rx) = mpsc::channel(64);
    tokio::spawn(async move { while batches_rx.recv().await.is_some() {} });
    let (engine, inputs) = tokio::task::spawn_blocking(move || {
        Engine::start(
            EngineSettings::default(),
            ClusterLayout::single(1),
            batches_tx,
        )
    })
    .await??;
    let taken_in = engine.taken_in();
    let sent: Sent = Arc::default();
    let warm_up_end = Arc::new(AtomicU64::new(u64::MAX));
    let (deliveries_tx, deliveries_rx) = mpsc::channel(10_000);
    let router = tokio::spawn(route(
        Router::new(ClusterLayout::single(1), inputs),
        deliveries_rx,
        Arc::clone(&sent),
        Arc::clone(&warm_up_end),
    ));
    let (ack_tx, ack_rx) = watch::channel(0);
    let stop_reading = CancellationToken::new();
    let endpoint = NatsEndpoint {
        url: config.url.clone(),
        stream: config.stream.clone(),
        filter_subject: wire::stream_subject(&config.subject_prefix),
        from_seq: None,
        since_ns: None,
        security: config.security(),
    };
    let reader = tokio::spawn(DurableReader::new(endpoint, "bench").run(
        deliveries_tx,
        ack_rx,
        stop_reading.clone(),
        Arc::new(SourceStats::default()),
    ));

    // Sample: every SAMPLE_EVERY, everything at or below the taken-in position is in the
    // dataflow. The first second of observations warms up and is not counted.
    let total = rate * seconds;
    let sampler = {
        let sent = Arc::clone(&sent);
        let warm_up_end = Arc::clone(&warm_up_end);
        std::thread::spawn(move || {
            let mut taken = Vec::with_capacity(total as usize);
            let mut entered = Vec::with_capacity(total as usize);
            let deadline = Instant::now() + Duration::from_secs(seconds + 30);
            let measured = total.saturating_sub(rate + 1);
            let mut samples = 0u32;
            while (taken.len() as u64) < measured && Instant::now() < deadline {
                let position = taken_in.position();
                let now = now_ns();
                let mut sent = sent.lock().expect("not poisoned");
                while sent.front().is_some_and(|(seq, _, _)| *seq <= position) {
                    let (_, time_ns, routed_ns) = sent.pop_front().expect("non-empty");
                    if time_ns > warm_up_end.load(Ordering::Relaxed) {
                        taken.push(now.saturating_sub(time_ns));
                        entered.push(now.saturating_sub(routed_ns));
                    }
                }
                drop(sent);
                samples = samples.wrapping_add(1);
                if samples.is_multiple_of(FORWARD_EVERY) {
                    ack_tx.send_if_modified(|current| {
                        let advanced = position > *current;
                        *current = position.max(*current);
                        advanced
                    });
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            (taken, entered)
        })
    };

    let publisher = Publisher::connect(config).await?;
    let (tx, rx) = mpsc::channel(10_000);
    let publishing = tokio::spawn(publisher.run(rx, CancellationToken::new()));
    // Let the publisher connect and check the stream, and the reader create its consumer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut last_beat = 0;
    for seq in 1..=total {
        pace(started, interval, seq).await;
        let time = now_ns();
        tx.send(exec(seq, time)).await?;
        if seq == rate {
            warm_up_end.store(time, Ordering::Relaxed);
        }
        if seq % rate == 0 {
            eprintln!("latency: {seq} of {total} handed to the publisher");
        }
        if time / 100_000_000 != last_beat {
            last_beat = time / 100_000_000;
            tx.send(heartbeat(time)).await?;
        }
    }
    drop(tx);
    let report = publishing.await??;
    eprintln!(
        "latency: {} observations in {} messages",
        report.published, report.messages
    );
    eprintln!("latency: {total} observations published and acknowledged");
    let (mut taken_in, mut entered) = tokio::task::spawn_blocking(move || sampler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    eprintln!("latency: {} samples taken", taken_in.len());
    stop_reading.cancel();
    reader.await??;
    let (mut stored, mut delivered) = router.await?;
    eprintln!("latency: reader and router stopped");
    tokio::task::spawn_blocking(move || engine.join()).await??;
    let mut routed: Vec<u64> = stored
        .iter()
        .zip(&delivered)
        .map(|(stored, delivered)| stored + delivered)
        .collect();
    for latencies in [
        &mut stored,
        &mut delivered,
        &mut entered,
        &mut routed,
        &mut taken_in,
    ] {
        latencies.sort_unstable();
    }
    Ok(Latencies {
        stored,
        delivered,
        entered,
        routed,
        taken_in,
    })
}

/// Waits until the `seq`-th message of a paced run is due.
async fn pace(started: Instant, interval: Duration, seq: u64) {
    let due = started + interval * u32::try_from(seq).unwrap_or(u32::MAX);
    let now = Instant::now();
    if due > now {
        tokio::time::sleep(due - now).await;
    }
}

/// Observations per message at most when the bare floor batches.
const BARE_BATCH: u64 = 256;

/// The floor: bare async-nats publishing the same payloads at `rate` (at most `pending`
/// unacknowledged) while a bare pull consumer, with the same pull batch as Tapio's and no
/// acknowledgements, reads them in the same process; returns the sorted latencies (ns) from
/// the publish call to the consumer's receipt, one per observation.
///
/// With `batched`, every wake-up of the paced loop publishes the observations due by then (at
/// most [`BARE_BATCH`]) as one message in Tapio's wire format (lines joined by `\n`), which the
/// consumer decodes: what a publisher that sends everything queued at once costs at the least.
async fn bare_latency(
    url: &str,
    rate: u64,
    seconds: u64,
    pending: usize,
    batched: bool,
) -> Result<Vec<u64>> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let name = if batched {
        "BARE_BATCHED"
    } else {
        "BARE_LATENCY"
    };
    let prefix = name.to_lowercase();
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("bare".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let total = rate * seconds;
    // The publish time of each message, by stream sequence.
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..=total).map(|_| AtomicU64::new(0)).collect());
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(2000)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    let reading = {
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total as usize);
            let mut seen = 0;
            while seen < total {
                let Some(message) = messages.next().await else {
                    break;
                };
                let now = now_ns();
                let message = message.map_err(|error| anyhow::anyhow!(error))?;
                let seq = message
                    .info()
                    .map_err(|error| anyhow::anyhow!(error))?
                    .stream_sequence;
                let mut count = 0;
                for line in wire::lines(&message.payload) {
                    serde_json::from_slice::<Observation>(line)?;
                    count += 1;
                }
                let sent = published
                    .get(seq as usize)
                    .map_or(0, |sent| sent.load(Ordering::Relaxed));
                for _ in 0..count {
                    seen += 1;
                    if seen > rate {
                        latencies.push(now.saturating_sub(sent));
                    }
                }
            }
            anyhow::Ok(latencies)
        })
    };
    let base = now_ns();
    let observations: Vec<Observation> = (1..=total).map(|seq| exec(seq, base + seq)).collect();
    let (acks_tx, mut acks_rx) = mpsc::channel::<PublishAckFuture>(pending);
    let acks = tokio::spawn(async move {
        while let Some(ack) = acks_rx.recv().await {
            ack.await?;
        }
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut next = 1;
    let mut message_seq = 0;
    while next <= total {
        pace(started, interval, next).await;
        let due = (started.elapsed().as_nanos() / interval.as_nanos()) as u64;
        let last = if batched {
            due.clamp(next, next + BARE_BATCH - 1).min(total)
        } else {
            next
        };
        let batch = &observations[(next - 1) as usize..last as usize];
        let mut builder = wire::BatchBuilder::new(&prefix, &batch[0]);
        for o in &batch[1..] {
            builder.push(o);
        }
        let wire::Batch {
            subject,
            id,
            payload,
            ..
        } = builder.finish();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        message_seq += 1;
        published[message_seq].store(now_ns(), Ordering::Relaxed);
        acks_tx
            .send(js.publish_with_headers(subject, headers, payload).await?)
            .await?;
        next = last + 1;
    }
    drop(acks_tx);
    acks.await??;
    let mut latencies = tokio::time::timeout(Duration::from_secs(30), reading).await???;
    latencies.sort_unstable();
    Ok(latencies)
}

/// The throughput loops of a round, by index.
const BARE_ONE: usize = 0;
/// The bare loop sending Tapio's batches.
const BARE_BATCHED: usize = 1;
/// Tapio's publisher.
const TAPIO: usize = 2;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// `median (min–max)`, two decimals.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({min:.2}–{max:.2})", median(values.to_vec()))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index] as f64 / 1e6
}

fn argument(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let messages = argument("--messages", 200_000);
    let rate = argument("--rate", 50_000);
    let seconds = argument("--seconds", 5);
    let rounds = argument("--rounds", 5).max(1);
    let latency_rounds = argument("--latency-rounds", 3).max(1);
    let server = NatsServer::start("bench-transport");
    let server_pid = server.pid().map(|pid| pid.to_string()).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("tapio-bench-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let base = now_ns();
    let observations: Vec<Observation> = (1..=messages)
        .map(|seq| exec(seq, base + seq * 1_000))
        .collect();
    let size: usize = observations.iter().map(|o| wire::encode(o).len()).sum();
    // Encoding alone, single-threaded: Tapio's encoder against serde_json on the same
    // observations (ns per observation, best of three passes each).
    let encode_ns = |encode: &dyn Fn(&Observation) -> usize| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let bytes: usize = observations.iter().map(encode).sum();
                assert_eq!(bytes, size, "both encoders write the same bytes");
                started.elapsed().as_nanos() as f64 / messages as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let tapio_encode_ns = encode_ns(&|o| wire::encode(o).len());
    let serde_encode_ns = encode_ns(&|o| serde_json::to_vec(o).map_or(0, |bytes| bytes.len()));
    let pending = NatsConfig::default().max_pending_publishes;
    runtime.block_on(async {
        // Throughput: every round runs the three publishing loops on the same observations,
        // each into a fresh stream, in an order that rotates from round to round; ratios are
        // taken within a round. One run of each takes well under a second, so one round alone
        // says more about what else the two cores were doing than about the publisher.
        let mut throughput: Vec<[f64; 3]> = Vec::new();
        // CPU seconds per observation of each loop, (this process, the server), per round.
        let mut throughput_cpu: Vec<[(f64, f64); 3]> = Vec::new();
        let mut tapio_messages = 0;
        for round in 0..rounds {
            let mut rates = [0.0; 3];
            let mut used = [(0.0, 0.0); 3];
            for turn in 0..3 {
                let which = (turn + round as usize) % 3;
                let url = server.url();
                let run = match which {
                    BARE_ONE => bare(&url, &server_pid, &observations, pending, false, round).await?,
                    BARE_BATCHED => bare(&url, &server_pid, &observations, pending, true, round).await?,
                    _ => {
                        let stream = format!("TAPIO{round}");
                        let prefix = format!("tapio{round}.observations");
                        let tapio_config = config(&url, &stream, &prefix, &dir);
                        let (run, sent) = tapio(&tapio_config, &server_pid, observations.clone()).await?;
                        tapio_messages = sent;
                        run
                    }
                };
                rates[which] = run.rate;
                used[which] = run.cpu;
            }
            throughput_cpu.push(used);
            eprintln!(
                "throughput round {}/{rounds}: bare {:.0} messages/s, bare batched {:.0} observations/s, tapio {:.0} observations/s",
                round + 1,
                rates[BARE_ONE],
                rates[BARE_BATCHED],
                rates[TAPIO]
            );
            throughput.push(rates);
        }
        let rate_of = |which: usize| median(throughput.iter().map(|r| r[which]).collect());
        let ratio_batched: Vec<f64> = throughput.iter().map(|r| r[TAPIO] / r[BARE_BATCHED]).collect();
        let ratio_one: Vec<f64> = throughput.iter().map(|r| r[TAPIO] / r[BARE_ONE]).collect();
        // CPU seconds of this process and of the server, per observation of a latency run.
        let observed = (rate * seconds) as f64;
        let cpu = || cpu_now(&server_pid);
        let per_observation = |before: (f64, f64), after: (f64, f64)| {
            (
                (after.0 - before.0) / observed * 1e6,
                (after.1 - before.1) / observed * 1e6,
            )
        };
        let before = cpu();
        let floor = bare_latency(&server.url(), rate, seconds, pending, false).await?;
        let floor_cpu = per_observation(before, cpu());
        eprintln!("bare latency: p99 {:.2} ms", percentile(&floor, 0.99));
        let before = cpu();
        let batched_floor = bare_latency(&server.url(), rate, seconds, pending, true).await?;
        let batched_cpu = per_observation(before, cpu());
        eprintln!("bare batched latency: p99 {:.2} ms", percentile(&batched_floor, 0.99));
        // Latency: `latency_rounds` runs, each on a stream of its own; the stage rows are those
        // of the run with the median p99 handed over → taken in.
        let mut runs = Vec::new();
        for round in 0..latency_rounds {
            let latency_config = config(
                &server.url(),
                &format!("LATENCY{round}"),
                &format!("latency{round}"),
                &dir,
            );
            let before = cpu();
            let latencies = latency(&latency_config, rate, seconds).await?;
            let used = per_observation(before, cpu());
            eprintln!(
                "latency round {}/{latency_rounds}: handed over → taken in p99 {:.2} ms",
                round + 1,
                percentile(&latencies.taken_in, 0.99)
            );
            runs.push((latencies, used));
        }
        runs.sort_by(|a, b| {
            percentile(&a.0.taken_in, 0.99).total_cmp(&percentile(&b.0.taken_in, 0.99))
        });
        let p99s: Vec<String> = runs
            .iter()
            .map(|(latencies, _)| format!("{:.2}", percentile(&latencies.taken_in, 0.99)))
            .collect();
        let (latencies, tapio_cpu) = runs.swap_remove(runs.len() / 2);
        println!(
            "payload: {} bytes on average; {messages} observations per throughput run, {rounds} \
             rounds (median, min–max); at most {pending} unacknowledged observations on every \
             publishing side; latencies at {rate}/s for {seconds} s, the first second not \
             counted, {latency_rounds} Tapio runs (stage rows: the run with the median p99); \
             taken in sampled every {} µs",
            size / messages.max(1) as usize,
            SAMPLE_EVERY.as_micros()
        );
        println!();
        println!("| measurement | value |");
        println!("| --- | --- |");
        println!(
            "| bare async-nats publish loop, one observation per message | {:.0} messages/s |",
            rate_of(BARE_ONE)
        );
        println!(
            "| bare async-nats publish loop, {} observations per message | {:.0} observations/s |",
            wire::MAX_BATCH_OBSERVATIONS,
            rate_of(BARE_BATCHED)
        );
        println!(
            "| tapio agent publisher | {:.0} observations/s in {tapio_messages} messages ({:.0} per message) |",
            rate_of(TAPIO),
            messages as f64 / tapio_messages.max(1) as f64
        );
        println!(
            "| ratio tapio / bare batched (like for like: same message sizes, same bound on unacknowledged observations) | {} |",
            spread(&ratio_batched)
        );
        println!(
            "| ratio tapio / bare one per message (the issue's original row) | {} |",
            spread(&ratio_one)
        );
        let cpu_of = |which: usize, side: fn((f64, f64)) -> f64| {
            median(throughput_cpu.iter().map(|used| side(used[which]) * 1e6).collect())
        };
        for (what, which) in [("bare batched", BARE_BATCHED), ("tapio", TAPIO)] {
            println!(
                "| CPU per observation, {what} throughput run (median) | {:.2} µs in the \
                 benchmark process, {:.2} µs in nats-server |",
                cpu_of(which, |used| used.0),
                cpu_of(which, |used| used.1)
            );
        }
        let cpu_ratio: Vec<f64> = throughput_cpu
            .iter()
            .map(|used| {
                let total = |(process, server): (f64, f64)| process + server;
                total(used[BARE_BATCHED]) / total(used[TAPIO])
            })
            .collect();
        println!(
            "| CPU ratio bare batched / tapio (process and server per observation; less sensitive to what else runs) | {} |",
            spread(&cpu_ratio)
        );
        println!(
            "| encoding one observation to JSON, Tapio's encoder / serde_json | {tapio_encode_ns:.0} ns / {serde_encode_ns:.0} ns |"
        );
        println!(
            "| tapio: handed to the publisher → taken in by the dataflow, p99 of each run | {} ms |",
            p99s.join(", ")
        );
        let row = |what: &str, sorted: &[u64]| {
            println!(
                "| {what} | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples) |",
                percentile(sorted, 0.5),
                percentile(sorted, 0.99),
                percentile(sorted, 1.0),
                sorted.len()
            );
        };
        row(
            "bare async-nats: publish → received by a pull consumer",
            &floor,
        );
        row(
            &format!(
                "bare async-nats, what is due sent as one message (≤ {BARE_BATCH}): publish → received and decoded"
            ),
            &batched_floor,
        );
        row(
            "tapio: handed to the publisher → stored by JetStream",
            &latencies.stored,
        );
        row(
            "tapio: stored → routed to its worker (delivery, consumer, decode)",
            &latencies.delivered,
        );
        row(
            "tapio: routed → taken in by the dataflow",
            &latencies.entered,
        );
        row("tapio: handed to the publisher → routed", &latencies.routed);
        row(
            "tapio: handed to the publisher → taken in by the dataflow",
            &latencies.taken_in,
        );
        for (what, (process, server)) in [
            ("bare", floor_cpu),
            ("bare, batched", batched_cpu),
            ("tapio", tapio_cpu),
        ] {
            println!(
                "| CPU per observation, {what} latency run | {process:.1} µs in the benchmark \
                 process (publisher and consumer side), {server:.1} µs in nats-server |"
            );
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
