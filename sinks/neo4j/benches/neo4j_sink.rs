//! Neo4j sink throughput and commit delay against a real Neo4j 5.26 (the test harness).
//!
//! For each batch size (correlations per closed tick) it measures, in the same run and against
//! the same server:
//!
//! - **sink**: relationships written per second by [`Neo4jSink`] (every tick one transaction
//!   of `UNWIND` statements that also move the cursor), fed as fast as it takes batches;
//! - **raw**: relationships written per second by a bare `UNWIND $rows AS r MERGE (a:Raw {id:
//!   r.a}) MERGE (b:Raw {id: r.b}) MERGE (a)-[:R]->(b)` loop, one transaction per tick with
//!   exactly as many rows as the sink wrote relationships in that tick, on a label with the
//!   same uniqueness constraint. It runs twice: with all of a tick's rows in one statement, and
//!   with them split into statements whose messages fit neo4rs's 8 KiB write buffer (larger
//!   ones wait about 40 ms on the server's delayed acknowledgement; see the sink's `wire`
//!   module). The ratio is the sink's rate over the faster of the two;
//! - **delay**: from handing a closed tick to the sink to its transaction committing, with ticks
//!   closing every 100 ms (the default tick) and a quarter of the earlier correlations
//!   retracted every fourth tick; p50 and p99.
//!
//! For each batch size every loop first runs [`WARM_ROUNDS`] times untimed on the same workload
//! (the server's JIT needs well over a thousand ticks to settle on the sink's statement: its
//! CPU per 10-correlation tick falls from about 45 ms to 6 ms over the first 1,500 ticks, the
//! bare loop's from 16 ms to 5 ms), then [`TIMED_ROUNDS`] times; the loops take turns in every
//! round, and each figure is the best of the timed rounds.
//! Besides relationships per second, each loop's relationships per CPU-second (the server's
//! and the writing process's, from `/proc`) are printed for the sink and for the faster raw
//! loop: on a shared machine that ratio depends much less on what else runs. The load average
//! is printed before and after.
//!
//! Run: `.ci/install` (builds the Neo4j launcher), then
//! `cargo bench -p tapio-sinks-neo4j --bench neo4j_sink` (optionally `-- SIZE...`, default
//! `10 100 500`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use neo4rs::{BoltType, Graph, query};
use tapio_model::{ClosedBatch, Correlation, CorrelationKind, FactId, Hop};
use tapio_sinks::Sink;
use tapio_sinks_neo4j::harness::{self, Neo4jServer};
use tapio_sinks_neo4j::model::Delta;
use tapio_sinks_neo4j::wire::{MESSAGE_BUDGET, encoded_len};
use tapio_sinks_neo4j::{Neo4jSettings, Neo4jSink};
use tokio::sync::mpsc;
use tokio::time::Instant;

const T0: u64 = 1_700_000_000_000_000_000;
const TOTAL_CORRELATIONS: usize = 6_000;
const PACED_TICKS: usize = 100;
/// Untimed rounds per batch size, to warm the server up on the workload.
const WARM_ROUNDS: usize = 3;
/// Timed rounds per batch size, after the untimed ones.
const TIMED_ROUNDS: usize = 3;

fn hop(entity: String, source: &str, seq: u64, what: &str) -> Hop {
    Hop {
        entity: entity.parse().expect("entity id"),
        fact_id: FactId::new(source, "bench-node", seq),
        time: T0 + seq * 1_000,
        what: what.into(),
    }
}

/// Correlation `n`: container `n` of pod `n`, of one of 20 ReplicaSets of 10 Deployments
/// (shared entities and facts), as an ownership chain, and every third one also as an OOM
/// restart of one of its processes.
fn correlations(n: usize) -> Vec<Correlation> {
    let n = n as u64;
    let (rs, deployment) = (n % 20, n % 10);
    let owners = vec![
        hop(
            format!("container/c{n}"),
            "cri",
            1_000_000 + n,
            "container of pod",
        ),
        hop(
            format!("pod/bench/p{n}"),
            "kubernetes",
            2_000_000 + n,
            "pod of replicaset",
        ),
        hop(
            format!("replicaset/bench/r{rs}"),
            "kubernetes",
            3_000_000 + rs,
            "rs of deployment",
        ),
        hop(
            format!("deployment/bench/d{deployment}"),
            "kubernetes",
            3_000_000 + rs,
            "top-level owner",
        ),
    ];
    let mut out = vec![Correlation {
        kind: CorrelationKind::Ownership,
        root_cause: owners[3].entity.clone(),
        chain: owners.clone(),
        explanation: format!("container/c{n} is owned by its pod, rs and deployment"),
        confidence: 100,
    }];
    if n.is_multiple_of(3) {
        let process = format!("process/bench-node/{n}/{}", T0 + n);
        let mut chain = vec![
            hop(process.clone(), "kernel", 4_000_000 + n, "OOM-killed"),
            hop(
                process.clone(),
                "kernel",
                5_000_000 + n,
                "exited on signal 9",
            ),
            hop(
                format!("container/c{n}"),
                "cri",
                6_000_000 + n,
                "exited 137",
            ),
        ];
        chain.extend(owners);
        out.push(Correlation {
            kind: CorrelationKind::OomRestart,
            root_cause: chain[0].entity.clone(),
            chain,
            explanation: format!("{process} was OOM-killed"),
            confidence: 95,
        });
    }
    out
}

/// Ticks of `size` new correlations each, `TOTAL_CORRELATIONS` in all.
fn add_only_ticks(size: usize) -> Vec<ClosedBatch> {
    let all: Vec<Correlation> = (0..)
        .flat_map(correlations)
        .take(TOTAL_CORRELATIONS)
        .collect();
    all.chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut changes: Vec<(Correlation, i64)> =
                chunk.iter().map(|c| (c.clone(), 1)).collect();
            changes.sort();
            ClosedBatch {
                time: T0 + (i as u64 + 1) * 100_000_000,
                changes,
            }
        })
        .collect()
}

/// The rows a raw loop writes for the same ticks: one (a, b) pair per relationship the sink
/// writes in that tick ([`Delta::relationship_writes`]): HOP and ROOT_CAUSE per correlation,
/// one per ABOUT and per link whose support changes.
fn raw_rows(ticks: &[ClosedBatch]) -> Vec<Vec<(String, String)>> {
    ticks
        .iter()
        .map(|tick| {
            let added = tick.changes.iter().map(|(c, _)| c.clone()).collect();
            let delta = Delta::build(added, Vec::new());
            let mut rows = Vec::with_capacity(delta.relationship_writes());
            for new in &delta.added {
                rows.push((new.id.clone(), new.correlation.root_cause.to_string()));
                for hop in &new.correlation.chain {
                    rows.push((new.id.clone(), hop.entity.to_string()));
                }
            }
            for about in &delta.about {
                rows.push((about.item.fact_id.clone(), about.item.entity.clone()));
            }
            for link in &delta.links {
                rows.push((link.item.from.clone(), link.item.to.clone()));
            }
            rows
        })
        .collect()
}

async fn clear(graph: &Graph) {
    loop {
        let mut rows = graph
            .execute(query(
                "MATCH (n) WITH n LIMIT 20000 DETACH DELETE n RETURN count(*) AS deleted",
            ))
            .await
            .expect("clear");
        let deleted: i64 = rows
            .next()
            .await
            .expect("row")
            .and_then(|row| row.get("deleted").ok())
            .unwrap_or(0);
        if deleted == 0 {
            return;
        }
    }
}

fn settings(uri: &str, writer: &str) -> Neo4jSettings {
    let mut settings = Neo4jSettings::new(uri, harness::USERNAME, harness::PASSWORD);
    settings.writer = writer.into();
    settings
}

/// What one timed loop did.
#[derive(Clone, Copy, Debug)]
struct Measured {
    /// Relationships written.
    written: u64,
    /// Wall-clock seconds.
    seconds: f64,
    /// CPU seconds used meanwhile by the server and by this process (the writer).
    cpu: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.written as f64 / self.seconds
    }

    fn per_cpu(&self) -> f64 {
        self.written as f64 / self.cpu
    }
}

/// CPU time used so far by the server and this process, in seconds, from `/proc/PID/stat`
/// (user and system time of all threads, in clock ticks of 1/100 s, Linux's `USER_HZ`).
struct CpuClock {
    server: u32,
}

impl CpuClock {
    fn seconds(&self) -> f64 {
        let used = |path: String| -> f64 {
            let stat = std::fs::read_to_string(&path).unwrap_or_default();
            // Fields after the command name (which may hold spaces) end with `)`.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)
        };
        (used(format!("/proc/{}/stat", self.server)) + used("/proc/self/stat".into())) / 100.0
    }

    async fn measure<F: std::future::Future<Output = u64>>(&self, run: F) -> Measured {
        let (started, cpu) = (Instant::now(), self.seconds());
        let written = run.await;
        Measured {
            written,
            seconds: started.elapsed().as_secs_f64(),
            cpu: self.seconds() - cpu,
        }
    }
}

/// Sink throughput: all ticks queued as fast as the sink takes them; returns the relationships
/// written.
async fn sink_run(uri: &str, ticks: &[ClosedBatch], clock: &CpuClock) -> Measured {
    let mut sink = Box::new(Neo4jSink::new(settings(uri, "bench-throughput")));
    sink.healthcheck().await.expect("health check");
    let progress = sink.progress();
    clock
        .measure(async {
            let (tx, rx) = mpsc::channel(64);
            let task = tokio::spawn(sink.run(rx));
            for tick in ticks {
                tx.send(tick.clone()).await.expect("sink running");
            }
            drop(tx);
            task.await.expect("sink task").expect("sink run");
            progress.borrow().relationships
        })
        .await
}

/// The raw loop's statement.
const RAW: &str =
    "UNWIND $rows AS r MERGE (a:Raw {id: r.a}) MERGE (b:Raw {id: r.b}) MERGE (a)-[:R]->(b)";

/// How the raw loop sends a tick's rows, always in one transaction per tick.
#[derive(Clone, Copy)]
enum RawStatements {
    /// One statement with all the rows.
    One,
    /// As many statements as keep each message under neo4rs's 8 KiB write buffer, like the
    /// sink, so that no statement waits on the server's delayed acknowledgement.
    Split,
}

/// A tick's raw rows as the parameter lists of its statements.
fn raw_statements(tick: &[(String, String)], how: RawStatements) -> Vec<Vec<BoltType>> {
    let rows: Vec<BoltType> = tick
        .iter()
        .map(|(a, b)| {
            let row: HashMap<&str, BoltType> = [("a", a.as_str().into()), ("b", b.as_str().into())]
                .into_iter()
                .collect();
            row.into()
        })
        .collect();
    match how {
        RawStatements::One => vec![rows],
        RawStatements::Split => {
            // RUN: structure header, text, parameters map {rows: [..]} with the largest
            // list header.
            let envelope = 2 + encoded_len(&BoltType::from(RAW)) + 1 + 5 + 5;
            let mut statements = vec![Vec::new()];
            let mut size = envelope;
            for row in rows {
                let len = encoded_len(&row);
                if size + len > MESSAGE_BUDGET {
                    statements.push(Vec::new());
                    size = envelope;
                }
                size += len;
                statements.last_mut().expect("a statement").push(row);
            }
            statements
        }
    }
}

/// The raw `UNWIND … MERGE` loop, one transaction per tick.
async fn raw_run(
    graph: &Graph,
    rows: &[Vec<(String, String)>],
    how: RawStatements,
    clock: &CpuClock,
) -> Measured {
    graph
        .run(query(
            "CREATE CONSTRAINT bench_raw_id IF NOT EXISTS FOR (n:Raw) REQUIRE n.id IS UNIQUE",
        ))
        .await
        .expect("raw constraint");
    clock
        .measure(async {
            for tick in rows {
                let mut txn = graph.start_txn().await.expect("begin");
                for params in raw_statements(tick, how) {
                    txn.run(query(RAW).param("rows", params))
                        .await
                        .expect("raw merge");
                }
                txn.commit().await.expect("commit");
            }
            rows.iter().map(|tick| tick.len() as u64).sum()
        })
        .await
}

/// `ticks` ticks of `size` new correlations each, and every fourth tick also retracting a
/// quarter of the correlations still current.
fn churn_ticks(size: usize, ticks: usize) -> Vec<ClosedBatch> {
    let mut live: Vec<Correlation> = Vec::new();
    let mut next = 0usize;
    (0..ticks)
        .map(|tick| {
            let mut changes: Vec<(Correlation, i64)> = Vec::new();
            let mut added = 0;
            while added < size {
                for correlation in correlations(100_000 + next) {
                    changes.push((correlation.clone(), 1));
                    live.push(correlation);
                    added += 1;
                }
                next += 1;
            }
            if tick % 4 == 3 {
                let retract = live.len() / 4;
                for correlation in live.drain(..retract) {
                    changes.push((correlation, -1));
                }
            }
            changes.sort();
            ClosedBatch {
                time: T0 + 10_000_000_000 + tick as u64 * 100_000_000,
                changes,
            }
        })
        .collect()
}

/// Commit delay with ticks closing every 100 ms ([`churn_ticks`]).
async fn delays(uri: &str, size: usize) -> (Duration, Duration) {
    let mut sink = Box::new(Neo4jSink::new(settings(uri, "bench-delay")));
    sink.healthcheck().await.expect("health check");
    let mut progress = sink.progress();
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(sink.run(rx));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let observer = tokio::spawn(async move {
        let mut waiting: std::collections::VecDeque<(u64, Instant)> = Default::default();
        let mut delays = Vec::new();
        loop {
            tokio::select! {
                sent = sent_rx.recv() => match sent {
                    Some(sent) => waiting.push_back(sent),
                    None => break,
                },
                changed = progress.changed() => {
                    if changed.is_err() { break; }
                    let cursor = progress.borrow().cursor.unwrap_or(0);
                    while waiting.front().is_some_and(|(time, _)| *time <= cursor) {
                        if let Some((_, at)) = waiting.pop_front() {
                            delays.push(at.elapsed());
                        }
                    }
                }
            }
        }
        // Batches still waiting when the sender closed: wait for their commits.
        while !waiting.is_empty() {
            if progress.changed().await.is_err() {
                break;
            }
            let cursor = progress.borrow().cursor.unwrap_or(0);
            while waiting.front().is_some_and(|(time, _)| *time <= cursor) {
                if let Some((_, at)) = waiting.pop_front() {
                    delays.push(at.elapsed());
                }
            }
        }
        delays
    });
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for batch in churn_ticks(size, PACED_TICKS) {
        every.tick().await;
        sent_tx
            .send((batch.time, Instant::now()))
            .expect("observer running");
        tx.send(batch).await.expect("sink running");
    }
    drop(sent_tx);
    drop(tx);
    task.await.expect("sink task").expect("sink run");
    let mut delays = observer.await.expect("observer");
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(filter) = std::env::var("TAPIO_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .filter(|size| *size > 0)
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 500]
    } else {
        sizes
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/neo4j-harness");
    let server = Neo4jServer::start(&dir, Duration::from_secs(300)).expect("Neo4j starts");
    let graph = Graph::new(server.uri(), harness::USERNAME, harness::PASSWORD)
        .await
        .expect("connect");
    let clock = CpuClock {
        server: server.pid(),
    };
    // Let the server plan the sink's statement and run it with retractions before anything is
    // timed (the delay figures include retractions).
    sink_run(server.uri(), &churn_ticks(50, 40), &clock).await;
    clear(&graph).await;

    println!("load average before: {}", load_average());
    println!(
        "| correlations per tick | ticks | relationships | sink rel/s | raw rel/s, one statement per tick | raw rel/s, statements < 8 KiB | ratio sink / faster raw | sink rel per CPU-s | raw rel per CPU-s | CPU ratio | commit delay p50 | p99 |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for size in sizes {
        let ticks = add_only_ticks(size);
        let rows = raw_rows(&ticks);
        // The first rounds warm the server up (JIT, page cache, plans) on this very workload and
        // are not counted; each figure is then the best of the timed rounds, the loops taking
        // turns, so that load from elsewhere on the machine hurts none of them more than the
        // others.
        let mut rate = [0f64; 3];
        let mut per_cpu = [0f64; 3];
        let mut written = [0u64; 3];
        for round in 0..WARM_ROUNDS + TIMED_ROUNDS {
            let runs = [
                sink_run(server.uri(), &ticks, &clock).await,
                {
                    clear(&graph).await;
                    raw_run(&graph, &rows, RawStatements::One, &clock).await
                },
                {
                    clear(&graph).await;
                    raw_run(&graph, &rows, RawStatements::Split, &clock).await
                },
            ];
            clear(&graph).await;
            for (i, run) in runs.into_iter().enumerate() {
                written[i] = run.written;
                if round >= WARM_ROUNDS {
                    rate[i] = rate[i].max(run.rate());
                    per_cpu[i] = per_cpu[i].max(run.per_cpu());
                }
            }
        }
        assert!(
            written.iter().all(|count| *count == written[0]),
            "every loop writes the same relationships: {written:?}"
        );
        let [sink, one, split] = rate;
        let raw_cpu = if one >= split { per_cpu[1] } else { per_cpu[2] };
        let (p50, p99) = delays(server.uri(), size).await;
        clear(&graph).await;
        println!(
            "| {size} | {} | {} | {sink:.0} | {one:.0} | {split:.0} | {:.2} | {:.0} | {raw_cpu:.0} | {:.2} | {:.1} ms | {:.1} ms |",
            ticks.len(),
            written[0],
            sink / one.max(split),
            per_cpu[0],
            per_cpu[0] / raw_cpu,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    println!("load average after: {}", load_average());
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}
