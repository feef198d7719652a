//! Neo4j sink throughput and commit delay against a real Neo4j 5.26 (the test harness).
//!
//! For each batch size (correlations per closed tick) it measures, in the same run and against
//! the same server, four loops that each write the same ticks, one transaction per tick:
//!
//! - **sink**: relationships written per second by [`Neo4jSink`] (every tick one transaction
//!   of `UNWIND` statements that also move the cursor), fed as fast as it takes batches;
//! - **bare**: a bare `UNWIND $rows AS r MERGE (a:Raw {id: r.a}) MERGE (b:Raw {id: r.b}) MERGE
//!   (a)-[:R]->(b)` loop with exactly as many rows per tick as the sink creates relationships
//!   in that tick, on a label with the same uniqueness constraint. The sink keeps its reference
//!   counts in memory and writes a shared `ABOUT` or entity-to-entity step only in the tick that
//!   creates it, so that is what both sides count (earlier versions rewrote a shared element's
//!   `support` in every tick that cited it, and counted each rewrite on both sides). It runs
//!   twice: with all of a tick's rows in one statement, and with them split into statements
//!   whose messages fit neo4rs's 8 KiB write buffer, as the sink does (larger ones wait about 40 ms on the
//!   server's delayed acknowledgement; see the sink's `wire` module). The bare ratio is the
//!   sink's rate over the faster of the two. The bare loop writes less than the sink: no
//!   properties, and two nodes per relationship rather than the sink's correlation, fact and
//!   entity nodes;
//! - **same graph**: plain `UNWIND … MERGE`/`CREATE` blocks that write the very nodes,
//!   relationships and properties the sink writes, split like the sink's statements, without
//!   the sink's bookkeeping (version check, retraction blocks, string table, cursor). Its
//!   ratio is the cost of that bookkeeping alone;
//! - **delay**: from handing a closed tick to the sink to its transaction committing, with ticks
//!   closing every 100 ms (the default tick) and a quarter of the earlier correlations
//!   retracted every fourth tick; p50 and p99.
//!
//! For each batch size the loops run in [`WARM_ROUNDS`] untimed rounds on the same workload (the
//! server's JIT needs over a thousand ticks to settle on a statement), then [`TIMED_ROUNDS`]
//! timed ones; in every round each loop runs once, a different loop first each round. Ratios
//! are taken within a round and reported as the median over the timed rounds with their range;
//! rates are medians. Next to the bare ratio, the ratio of relationships per CPU-second (CPU
//! time of the server and of the writing process, from `/proc`) is printed: on a shared machine
//! it depends much less on what else runs. The load average is printed before and after each
//! size; with `NEO4J_BENCH_ROUNDS=1` every timed round's rates are printed too.
//!
//! Run: `.ci/install` (builds the Neo4j launcher), then
//! `cargo bench -p tapio-sinks-neo4j --bench neo4j_sink` (optionally `-- SIZE...`, default
//! `10 100 500`).

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use neo4rs::{BoltType, Graph, query};
use tapio_model::{
    Basis, ClosedBatch, Confidence, Correlation, CorrelationKind, Detail, FactId, Hop, Observed,
    Relation,
};
use tapio_sinks::Sink;
use tapio_sinks_neo4j::harness::{self, Neo4jServer};
use tapio_sinks_neo4j::model::{Counts, Delta, relationship_type};
use tapio_sinks_neo4j::wire::{MESSAGE_BUDGET, encoded_len};
use tapio_sinks_neo4j::{Neo4jSettings, Neo4jSink};
use tokio::sync::mpsc;
use tokio::time::Instant;

const T0: u64 = 1_700_000_000_000_000_000;
const TOTAL_CORRELATIONS: usize = 4_000;
const PACED_TICKS: usize = 100;
/// Untimed rounds per batch size, to warm the server up on the workload.
const WARM_ROUNDS: usize = 2;
/// Timed rounds per batch size, after the untimed ones.
const TIMED_ROUNDS: usize = 9;

/// The loops of each round, by index.
const LOOPS: usize = 4;
/// The sink.
const SINK: usize = 0;
/// The bare loop, a tick's rows in one statement.
const BARE_ONE: usize = 1;
/// The bare loop, a tick's rows in statements under the write buffer.
const BARE_SPLIT: usize = 2;
/// The same-graph loop.
const SAME_GRAPH_LOOP: usize = 3;

fn hop(entity: String, relation: Relation, source: &str, seq: u64, observed: Observed) -> Hop {
    Hop {
        entity: entity.parse().expect("entity id"),
        relation,
        fact_id: FactId::new(source, "bench-node", seq),
        time: T0 + seq * 1_000,
        observed,
    }
}

/// Correlation `n`: container `n` of pod `n`, of one of 20 ReplicaSets of 10 Deployments
/// (shared entities and facts), as an ownership chain, and every third one also as an OOM
/// restart of one of its processes. Each hop carries the evidence of the link that leads to it
/// (the first, of the link that leaves it), as the dataflow's chains do.
fn correlations(n: usize) -> Vec<Correlation> {
    let n = n as u64;
    let (rs, deployment) = (n % 20, n % 10);
    let container = || Observed::PodContainer {
        container_name: "app".into(),
    };
    let owners = vec![
        hop(
            format!("container/c{n}"),
            Relation::Start,
            "kubernetes",
            1_000_000 + n,
            container(),
        ),
        hop(
            format!("pod/bench/p{n}"),
            Relation::OwnedBy,
            "kubernetes",
            1_000_000 + n,
            container(),
        ),
        hop(
            format!("replicaset/bench/r{rs}"),
            Relation::OwnedBy,
            "kubernetes",
            2_000_000 + n,
            Observed::OwnerReference,
        ),
        hop(
            format!("deployment/bench/d{deployment}"),
            Relation::OwnedBy,
            "kubernetes",
            3_000_000 + rs,
            Observed::OwnerReference,
        ),
    ];
    let mut out = vec![Correlation::new(
        CorrelationKind::Ownership,
        owners[3].entity.clone(),
        owners.clone(),
        Detail::Ownership { depth: 3 },
        Confidence {
            percent: 100,
            basis: vec![Basis::RecordedLinks],
        },
    )];
    if n.is_multiple_of(3) {
        let process = format!("process/bench-node/{n}/{}", T0 + n);
        let mut chain = vec![
            hop(
                process.clone(),
                Relation::Start,
                "kernel",
                4_000_000 + n,
                Observed::OomKill {
                    comm: "worker".into(),
                    pid: n as u32,
                    memcg: format!("/kubepods/pod{n}").into(),
                    rss_pages: 65_536,
                },
            ),
            hop(
                process.clone(),
                Relation::FollowedBy,
                "kernel",
                5_000_000 + n,
                Observed::ProcessExit {
                    comm: "worker".into(),
                    exit_code: 0,
                    signal: 9,
                },
            ),
            hop(
                format!("container/c{n}"),
                Relation::Caused,
                "cri",
                6_000_000 + n,
                Observed::ContainerExit {
                    container_name: "app".into(),
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    restart_count: 1,
                },
            ),
        ];
        chain.extend(owners.into_iter().skip(1));
        out.push(Correlation::new(
            CorrelationKind::OomRestart,
            chain[0].entity.clone(),
            chain,
            Detail::Sequence {
                steps: 3,
                span_ns: 2_000_000_000,
                within_ns: 60_000_000_000,
            },
            Confidence {
                percent: 95,
                basis: vec![Basis::EveryStepObserved, Basis::ContainerEndSaysOom],
            },
        ));
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

/// What the sink writes for each of `ticks` (which only add correlations), in order: the
/// writer's reference counts carry over from tick to tick, so a shared fact, ABOUT or step is
/// written by the first tick that needs it only.
fn deltas(ticks: &[ClosedBatch]) -> Vec<Delta> {
    let mut counts = Counts::default();
    ticks
        .iter()
        .map(|tick| {
            let added = tick.changes.iter().map(|(c, _)| c.clone()).collect();
            counts.change(added, Vec::new())
        })
        .collect()
}

/// The rows a raw loop writes for the same ticks: one (a, b) pair per relationship the sink
/// creates in that tick ([`Delta::relationships_created`]): HOP and ROOT_CAUSE per correlation,
/// one per ABOUT and per entity-to-entity step that no earlier tick created.
fn raw_rows(ticks: &[ClosedBatch]) -> Vec<Vec<(String, String)>> {
    deltas(ticks)
        .iter()
        .map(|delta| {
            let mut rows = Vec::with_capacity(delta.relationships_created());
            for new in &delta.added {
                rows.push((new.id.clone(), new.correlation.root_cause.to_string()));
                for hop in &new.correlation.chain {
                    rows.push((new.id.clone(), hop.entity.to_string()));
                }
            }
            for about in &delta.about {
                rows.push((about.fact_id.clone(), about.entity.clone()));
            }
            for link in &delta.links {
                rows.push((link.from.clone(), link.to.clone()));
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
    /// The server's share of `cpu`.
    server_cpu: f64,
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
    /// CPU seconds of the server and of this process.
    fn seconds(&self) -> (f64, f64) {
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
        (
            used(format!("/proc/{}/stat", self.server)) / 100.0,
            used("/proc/self/stat".into()) / 100.0,
        )
    }

    async fn measure<F: std::future::Future<Output = u64>>(&self, run: F) -> Measured {
        let (started, (server, client)) = (Instant::now(), self.seconds());
        let written = run.await;
        let (server_after, client_after) = self.seconds();
        Measured {
            written,
            seconds: started.elapsed().as_secs_f64(),
            server_cpu: server_after - server,
            cpu: server_after - server + client_after - client,
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

/// The same-graph loop's statement: the nodes, relationships and properties the sink writes for
/// a tick that only adds correlations, with plain `UNWIND … MERGE`/`CREATE` blocks and none of
/// the sink's bookkeeping (no version check, no retraction blocks, no string table, no
/// cursor). Rows are lists, as in the sink; the entity-to-entity steps take a block per
/// relationship type, built from [`Relation::LINKS`] like the sink's statement.
static SAME_GRAPH: LazyLock<String> = LazyLock::new(|| {
    let mut text = String::from(
        "\
CALL{UNWIND $facts AS r MERGE(f:Fact{id:r[0]})ON CREATE SET f.time=r[1]}
CALL{UNWIND $correlations AS r
CREATE(c:Correlation{id:r[0],kind:r[1],family:r[2],confidence:r[4],data:r[5],since:$time})
WITH c,r MERGE(x:Entity{id:r[3]})
CREATE(c)-[:ROOT_CAUSE]->(x)
WITH c,r UNWIND range(0,size(r[6])-1) AS i
WITH c,i,r[6][i] AS h MERGE(e:Entity{id:h[0]})
CREATE(c)-[:HOP{index:i,fact_id:h[1],relation:h[2]}]->(e)}
CALL{UNWIND $about AS r MATCH(f:Fact{id:r[0]})MATCH(e:Entity{id:r[1]})
MERGE(f)-[a:ABOUT]->(e)ON CREATE SET a.observed=r[2]}",
    );
    for relation in Relation::LINKS {
        let _ = write!(
            text,
            "\nCALL{{UNWIND ${name} AS r MATCH(a:Entity{{id:r[0]}})MATCH(b:Entity{{id:r[1]}})\n\
             MERGE(a)-[l:{kind}{{fact_id:r[2]}}]->(b)}}",
            name = relation.as_str(),
            kind = relationship_type(relation),
        );
    }
    text
});

/// The parameters of [`SAME_GRAPH`], in the order its blocks take them: facts, correlations,
/// ABOUT, then the steps of each relationship type.
static SAME_GRAPH_BLOCKS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    ["facts", "correlations", "about"]
        .into_iter()
        .chain(Relation::LINKS.into_iter().map(Relation::as_str))
        .collect()
});

/// A tick as [`SAME_GRAPH`] statements: its rows, block after block, split into statements
/// whose messages stay under [`MESSAGE_BUDGET`] like the sink's (each statement carries every
/// block's parameter, most of them empty).
type SameGraphTick = Vec<Vec<Vec<BoltType>>>;

/// The same-graph loop's statements for `ticks`, and the relationships each tick writes.
fn same_graph_statements(ticks: &[ClosedBatch]) -> Vec<(SameGraphTick, u64)> {
    let s = |text: &str| BoltType::from(text);
    let list = |values: Vec<BoltType>| BoltType::from(values);
    let blocks_len = SAME_GRAPH_BLOCKS.len();
    deltas(ticks)
        .iter()
        .map(|delta| {
            let mut blocks: Vec<Vec<BoltType>> = vec![Vec::new(); blocks_len];
            let mut written = 0u64;
            for fact in &delta.facts {
                let time = i64::try_from(fact.time).expect("time fits");
                blocks[0].push(list(vec![s(&fact.id), time.into()]));
            }
            for new in &delta.added {
                let c = &new.correlation;
                let hops = c
                    .chain
                    .iter()
                    .map(|hop| {
                        list(vec![
                            s(&hop.entity.to_string()),
                            s(&hop.fact_id.to_string()),
                            s(hop.relation.as_str()),
                        ])
                    })
                    .collect();
                blocks[1].push(list(vec![
                    s(&new.id),
                    s(c.kind.as_str()),
                    s(c.family.as_str()),
                    s(&c.root_cause.to_string()),
                    i64::from(c.confidence.percent).into(),
                    s(&serde_json::to_string(c).expect("JSON")),
                    list(hops),
                ]));
                written += c.chain.len() as u64 + 1;
            }
            for item in &delta.about {
                blocks[2].push(list(vec![
                    s(&item.fact_id),
                    s(&item.entity),
                    s(&item.observed),
                ]));
                written += 1;
            }
            for item in &delta.links {
                let block = 3 + Relation::LINKS
                    .iter()
                    .position(|relation| *relation == item.kind)
                    .expect("a step's relation is a link");
                blocks[block].push(list(vec![s(&item.from), s(&item.to), s(&item.fact_id)]));
                written += 1;
            }
            // RUN: structure header, text, the parameter map with `$time` and every block's
            // list at its largest header.
            let envelope = 2
                + encoded_len(&s(&SAME_GRAPH))
                + 1
                + encoded_len(&s("time"))
                + 9
                + SAME_GRAPH_BLOCKS
                    .iter()
                    .map(|name| encoded_len(&s(name)) + 5)
                    .sum::<usize>();
            let mut statements: SameGraphTick = vec![vec![Vec::new(); blocks_len]];
            let mut size = envelope;
            for (block, rows) in blocks.into_iter().enumerate() {
                for row in rows {
                    let len = encoded_len(&row);
                    if size + len > MESSAGE_BUDGET && size > envelope {
                        statements.push(vec![Vec::new(); blocks_len]);
                        size = envelope;
                    }
                    size += len;
                    statements.last_mut().expect("a statement")[block].push(row);
                }
            }
            (statements, written)
        })
        .collect()
}

/// The same-graph loop, one transaction per tick.
async fn same_graph_run(
    graph: &Graph,
    ticks: &[(SameGraphTick, u64)],
    clock: &CpuClock,
) -> Measured {
    clock
        .measure(async {
            for (i, (statements, _)) in ticks.iter().enumerate() {
                let mut txn = graph.start_txn().await.expect("begin");
                for blocks in statements {
                    let query = SAME_GRAPH_BLOCKS.iter().zip(blocks).fold(
                        query(&SAME_GRAPH).param("time", i as i64),
                        |query, (name, rows)| query.param(name, rows.clone()),
                    );
                    txn.run(query).await.expect("same-graph write");
                }
                txn.commit().await.expect("commit");
            }
            ticks.iter().map(|(_, written)| written).sum()
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

    println!(
        "| correlations per tick | ticks | relationships | sink rel/s | bare rel/s, one statement | bare rel/s, < 8 KiB | same-graph rel/s | ratio sink / faster bare (min–max) | CPU ratio sink / bare | ratio sink / same graph (min–max) | commit delay p50 | p99 | load average before → after |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for size in sizes {
        let load_before = load_average();
        let ticks = add_only_ticks(size);
        let rows = raw_rows(&ticks);
        let same = same_graph_statements(&ticks);
        // The first rounds warm the server up (JIT, page cache, plans) on this very workload and
        // are not counted. In every round each loop runs once, starting with a different loop
        // each round, so that load from elsewhere on the machine, and whatever a loop leaves
        // behind in the server, weighs on all of them alike. The ratios are taken within each
        // round (sink against the loops of the same round) and reported as the median over the
        // timed rounds, with their range.
        let mut rounds: Vec<[Measured; LOOPS]> = Vec::new();
        for round in 0..WARM_ROUNDS + TIMED_ROUNDS {
            let mut runs: [Option<Measured>; LOOPS] = [None; LOOPS];
            for turn in 0..LOOPS {
                let which = (round + turn) % LOOPS;
                clear(&graph).await;
                runs[which] = Some(match which {
                    SINK => sink_run(server.uri(), &ticks, &clock).await,
                    BARE_ONE => raw_run(&graph, &rows, RawStatements::One, &clock).await,
                    BARE_SPLIT => raw_run(&graph, &rows, RawStatements::Split, &clock).await,
                    _ => same_graph_run(&graph, &same, &clock).await,
                });
            }
            clear(&graph).await;
            let runs = runs.map(|run| run.expect("every loop ran"));
            assert!(
                runs.iter().all(|run| run.written == runs[SINK].written),
                "every loop writes the same number of relationships: {runs:?}"
            );
            if round >= WARM_ROUNDS {
                rounds.push(runs);
            }
        }
        let rate = |which: usize| median(rounds.iter().map(|r| r[which].rate()).collect());
        let bare = |r: &[Measured; LOOPS]| {
            if r[BARE_ONE].rate() >= r[BARE_SPLIT].rate() {
                r[BARE_ONE]
            } else {
                r[BARE_SPLIT]
            }
        };
        let ratio_bare: Vec<f64> = rounds
            .iter()
            .map(|r| r[SINK].rate() / bare(r).rate())
            .collect();
        let cpu_bare: Vec<f64> = rounds
            .iter()
            .map(|r| r[SINK].per_cpu() / bare(r).per_cpu())
            .collect();
        let ratio_same: Vec<f64> = rounds
            .iter()
            .map(|r| r[SINK].rate() / r[SAME_GRAPH_LOOP].rate())
            .collect();
        let (p50, p99) = delays(server.uri(), size).await;
        clear(&graph).await;
        println!(
            "| {size} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {} | {:.1} ms | {:.1} ms | {load_before} → {} |",
            ticks.len(),
            rounds[0][SINK].written,
            rate(SINK),
            rate(BARE_ONE),
            rate(BARE_SPLIT),
            rate(SAME_GRAPH_LOOP),
            spread(&ratio_bare),
            median(cpu_bare),
            spread(&ratio_same),
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            load_average(),
        );
        if std::env::var_os("NEO4J_BENCH_ROUNDS").is_some() {
            for (i, r) in rounds.iter().enumerate() {
                let rates: Vec<String> = r
                    .iter()
                    .map(|m| {
                        format!(
                            "{:.0} rel/s, {:.2} s, server CPU {:.2} s, writer CPU {:.2} s",
                            m.rate(),
                            m.seconds,
                            m.server_cpu,
                            m.cpu - m.server_cpu
                        )
                    })
                    .collect();
                println!(
                    "size {size} round {i}: sink, bare one, bare split, same graph: {rates:?}"
                );
            }
        }
    }
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

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

/// `median (min–max)` of `values`, two decimals.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({min:.2}–{max:.2})", median(values.to_vec()))
}
