//! `api`: the answers behind the HTTP API from the embedded in-memory store, with 100k current
//! correlations while 1k changes per second arrive, the store's memory, and the same four
//! questions from a real Neo4j 5.26 (the test harness) holding the same graph, in the same run.
//!
//! Run (bench profile, i.e. release; `.ci/install` builds the Neo4j launcher):
//!
//! ```text
//! cargo bench -p tapio-benches --bench api
//! cargo bench -p tapio-benches --bench api -- --correlations 100000 --rate 1000 --seconds 10
//! ```
//!
//! Options: `--correlations N` current correlations (default 100000), `--rate R` changes per
//! second during the measurement (default 1000), `--seconds S` of measurement (default 10),
//! `--asked K` entities the questions are asked about, in turn (default 200), `--no-neo4j`.
//!
//! The workload: correlation `i` belongs to pod `i` of one of 2000 ReplicaSets of 500
//! Deployments. Two in three are OOM restarts (process `i` killed, its exit, container `i`'s
//! end, then pod, ReplicaSet and Deployment: six hops) and one in three ownership chains
//! (container, pod, ReplicaSet, Deployment), as the dataflow writes them. A writer thread
//! closes a tick every 100 ms with `rate / 10` changes: half new correlations, half
//! retractions of the oldest current ones, so the current set stays at `N` and the history
//! (`store.history_count`, default 10000) fills.
//!
//! It measures, while the writer runs, on another thread, each request's whole work as the
//! API handler does it: taking the store's read lock, the query, rendering the explanations
//! and encoding the JSON answer (not the HTTP framing, a few tens of µs on loopback):
//!
//! - **incidents**: `/v1/incidents` (incidents only, newest first, 100 items, `total` counted
//!   over all of them);
//! - **root causes**: `/v1/root-causes` (the web page's list: 50 groups, 3 each);
//! - **why**, **blast-radius**, **timeline**, **path**: the four questions
//!   (`tapio_queries::memory`) about pod, process, pod and process → Deployment of the asked
//!   correlations.
//!
//! Memory: resident memory after filling the store and after the measurement (history full),
//! minus before, per 100k correlations.
//!
//! Neo4j: the same initial correlations are written with the Neo4j sink's writer
//! ([`Neo4jWriter`], ticks of 1000) into the harness's server, then the same four questions
//! about the same entities are asked through `tapio_queries` (Bolt, Cypher from
//! `tapio_queries::catalog`), with no writes running (in Neo4j's favour); the ratio is Neo4j's
//! latency over the store's, per percentile.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tapio_benches::proc_status::{mib, rss_bytes};
use tapio_model::{
    Basis, ClosedBatch, Confidence, Correlation, CorrelationKind, Detail, EntityId, FactId, Hop,
    Observed, Relation, correlation_id,
};
use tapio_sinks_neo4j::harness::{self, Neo4jServer};
use tapio_sinks_neo4j::{Neo4jSettings, Neo4jWriter};
use tapio_sinks_store::{Filter, Store, StoreSettings, Stored};

/// Start of the workload's event time.
const T0: u64 = 1_700_000_000_000_000_000;
/// One tick.
const TICK: Duration = Duration::from_millis(100);

struct Options {
    correlations: usize,
    rate: usize,
    seconds: u64,
    asked: usize,
    neo4j: bool,
}

fn options() -> Options {
    let mut options = Options {
        correlations: 100_000,
        rate: 1_000,
        seconds: 10,
        asked: 200,
        neo4j: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> u64 {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--correlations" => options.correlations = number("--correlations") as usize,
            "--rate" => options.rate = number("--rate") as usize,
            "--seconds" => options.seconds = number("--seconds"),
            "--asked" => options.asked = number("--asked") as usize,
            "--no-neo4j" => options.neo4j = false,
            // cargo bench passes --bench.
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    options
}

// === The workload ===

fn hop(entity: String, relation: Relation, source: &str, seq: u64, observed: Observed) -> Hop {
    Hop {
        entity: entity.parse().expect("an entity id"),
        relation,
        fact_id: FactId::new(source, "bench-node", seq),
        time: T0 + seq * 1_000_000,
        observed,
    }
}

fn process(i: u64) -> String {
    format!("process/bench-node/{i}/{}", T0 + i)
}

fn pod(i: u64) -> String {
    format!("pod/bench/web-{i}")
}

fn deployment(i: u64) -> String {
    format!("deployment/bench/d{}", i % 500)
}

/// Correlation `i` (see the module comment).
fn correlation(i: u64) -> Correlation {
    let replicaset = format!("replicaset/bench/r{}", i % 2000);
    let owners = |first: Relation| {
        vec![
            hop(
                pod(i),
                first,
                "kubernetes",
                3 * i,
                Observed::PodContainer {
                    container_name: "app".into(),
                },
            ),
            hop(
                replicaset.clone(),
                Relation::OwnedBy,
                "kubernetes",
                3 * i + 1,
                Observed::OwnerReference,
            ),
            hop(
                deployment(i),
                Relation::OwnedBy,
                "kubernetes",
                6_000_000 + i % 2000,
                Observed::OwnerReference,
            ),
        ]
    };
    if i % 3 == 2 {
        let mut chain = vec![hop(
            format!("container/c{i}"),
            Relation::Start,
            "kubernetes",
            3 * i + 2,
            Observed::PodContainer {
                container_name: "app".into(),
            },
        )];
        chain.extend(owners(Relation::OwnedBy));
        return Correlation::new(
            CorrelationKind::Ownership,
            deployment(i).parse().expect("an entity id"),
            chain,
            Detail::Ownership { depth: 3 },
            Confidence {
                percent: 100,
                basis: vec![Basis::RecordedLinks],
            },
        );
    }
    let mut chain = vec![
        hop(
            process(i),
            Relation::Start,
            "kernel",
            10_000_000 + 2 * i,
            Observed::OomKill {
                comm: "web".into(),
                pid: (i % 4_000_000) as u32,
                memcg: format!("/kubepods/pod{i}").into(),
                rss_pages: 65_536,
            },
        ),
        hop(
            process(i),
            Relation::FollowedBy,
            "kernel",
            10_000_000 + 2 * i + 1,
            Observed::ProcessExit {
                comm: "web".into(),
                exit_code: 0,
                signal: 9,
            },
        ),
        hop(
            format!("container/c{i}"),
            Relation::Caused,
            "cri",
            20_000_000 + i,
            Observed::ContainerExit {
                container_name: "app".into(),
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            },
        ),
    ];
    chain.extend(owners(Relation::OwnedBy));
    Correlation::new(
        CorrelationKind::OomRestart,
        chain[0].entity.clone(),
        chain,
        Detail::Sequence {
            steps: 3,
            span_ns: 41_000_000,
            within_ns: 30_000_000_000,
        },
        Confidence {
            percent: 95,
            basis: vec![Basis::EveryStepObserved, Basis::ContainerEndSaysOom],
        },
    )
}

/// The initial correlations as ticks of 1000.
fn initial_ticks(n: usize) -> Vec<ClosedBatch> {
    (0..n as u64)
        .collect::<Vec<_>>()
        .chunks(1000)
        .enumerate()
        .map(|(k, chunk)| ClosedBatch {
            time: T0 + (k as u64 + 1) * 1_000_000_000,
            changes: chunk.iter().map(|&i| (correlation(i), 1)).collect(),
        })
        .collect()
}

// === What the API does per request ===

fn item(stored: &Stored) -> serde_json::Value {
    serde_json::json!({
        "id": stored.id.as_ref(),
        "since": stored.since,
        "until": stored.until,
        "explanation": tapio_model::render::explain(&stored.correlation),
        "correlation": *stored.correlation,
    })
}

fn incidents(store: &Store) -> usize {
    let filter = Filter {
        incidents_only: true,
        ..Filter::default()
    };
    let state = store.read();
    let (found, total) = state.list_page(&filter, false, 0, 100);
    drop(state);
    let items: Vec<_> = found.iter().map(|stored| item(stored)).collect();
    let body = serde_json::json!({ "total": total, "incidents": items });
    serde_json::to_vec(&body).expect("JSON").len()
}

fn root_causes(store: &Store) -> usize {
    let filter = Filter {
        incidents_only: true,
        ..Filter::default()
    };
    let state = store.read();
    let (groups, total) = state.groups(&filter, false, 0, 50, 3);
    drop(state);
    let groups: Vec<_> = groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "root_cause": group.root_cause,
                "count": group.count,
                "kinds": group.kinds,
                "families": group.families,
                "incidents": group.newest.iter().map(|stored| item(stored)).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "total": total, "root_causes": groups }))
        .expect("JSON")
        .len()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    Incidents,
    RootCauses,
    Why,
    BlastRadius,
    Timeline,
    Path,
}

const ASKS: [Ask; 6] = [
    Ask::Incidents,
    Ask::RootCauses,
    Ask::Why,
    Ask::BlastRadius,
    Ask::Timeline,
    Ask::Path,
];
const QUESTIONS: [Ask; 4] = [Ask::Why, Ask::BlastRadius, Ask::Timeline, Ask::Path];

impl Ask {
    fn name(self) -> &'static str {
        match self {
            Ask::Incidents => "incidents (100 of all)",
            Ask::RootCauses => "root causes (50 groups)",
            Ask::Why => "why",
            Ask::BlastRadius => "blast-radius",
            Ask::Timeline => "timeline",
            Ask::Path => "path",
        }
    }
}

/// The entities asked about for correlation `i`: (asked, the other end of `path`).
fn subjects(ask: Ask, i: u64) -> (EntityId, EntityId) {
    let id = |text: String| text.parse::<EntityId>().expect("an entity id");
    match ask {
        Ask::Why | Ask::Timeline => (id(pod(i)), id(deployment(i))),
        _ => (id(process(i)), id(deployment(i))),
    }
}

fn ask_store(store: &Store, ask: Ask, i: u64) -> usize {
    let (subject, other) = subjects(ask, i);
    let state = store.read();
    let answer = match ask {
        Ask::Incidents => {
            drop(state);
            return incidents(store);
        }
        Ask::RootCauses => {
            drop(state);
            return root_causes(store);
        }
        Ask::Why => tapio_queries::memory::why(&state, &subject),
        Ask::BlastRadius => tapio_queries::memory::blast_radius(&state, &subject),
        Ask::Timeline => tapio_queries::memory::timeline(&state, &subject, None),
        Ask::Path => tapio_queries::memory::path(&state, &subject, &other),
    }
    .unwrap_or_else(|error| panic!("{} {subject}: {error}", ask.name()));
    drop(state);
    serde_json::to_vec(&answer).expect("JSON").len()
}

async fn ask_neo4j(graph: &tapio_queries::Connection, ask: Ask, i: u64) -> usize {
    let (subject, other) = subjects(ask, i);
    let answer = match ask {
        Ask::Why => tapio_queries::why(graph, &subject).await,
        Ask::BlastRadius => tapio_queries::blast_radius(graph, &subject).await,
        Ask::Timeline => tapio_queries::timeline(graph, &subject, None).await,
        Ask::Path => tapio_queries::path(graph, &subject, &other).await,
        Ask::Incidents | Ask::RootCauses => unreachable_ask(),
    }
    .unwrap_or_else(|error| panic!("Neo4j {} {subject}: {error}", ask.name()));
    serde_json::to_vec(&answer).expect("JSON").len()
}

fn unreachable_ask() -> ! {
    panic!("the incident lists are not asked of Neo4j")
}

// === Measuring ===

/// Sorted latencies of one kind of request.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[at.min(sorted.len() - 1)]
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The correlations asked about: OOM restarts (their pods, processes and Deployments are in
/// the graph) spread over the first half of the initial set, which the writer leaves current
/// (it retracts from the other end).
fn asked(options: &Options) -> Vec<u64> {
    let n = options.correlations as u64 / 2;
    let step = (n / options.asked.max(1) as u64).max(1);
    (0..n)
        .step_by(step as usize)
        .map(|i| if i % 3 == 2 { i + 1 } else { i })
        .filter(|i| *i < n)
        .take(options.asked)
        .collect()
}

/// Writes `rate` changes per second into `store` until `stop`: half new correlations, half
/// retractions of the oldest current ones. Returns the changes written.
fn writer(store: Store, options: &Options, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let n = options.correlations as u64;
    let per_tick = (options.rate / 10).max(2);
    thread::spawn(move || {
        // Retract from the end of the initial range backwards (the asked ones are in its
        // first half), then the ones this writer added, oldest first.
        let mut current: VecDeque<u64> = (0..n).collect();
        let mut next = n;
        let mut time = T0 + 10_000_000_000_000;
        let mut written = 0u64;
        let mut deadline = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            deadline += TICK;
            time += 100_000_000;
            let mut changes = Vec::with_capacity(per_tick);
            for _ in 0..per_tick / 2 {
                changes.push((correlation(next), 1));
                current.push_front(next);
                next += 1;
                if let Some(old) = current.pop_back() {
                    changes.push((correlation(old), -1));
                }
            }
            written += changes.len() as u64;
            store.apply(ClosedBatch { time, changes });
            if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        written
    })
}

fn main() {
    let options = options();
    let asked = asked(&options);
    println!(
        "api benchmark: {} current correlations, {} changes/s, {} s, {} entities asked in turn",
        options.correlations,
        options.rate,
        options.seconds,
        asked.len()
    );
    let ticks = initial_ticks(options.correlations);
    let before = rss_bytes();
    let store = Store::new(StoreSettings::from_config(
        &tapio_config::StoreConfig::default(),
    ));
    let filled = Instant::now();
    for tick in ticks.iter().cloned() {
        store.apply(tick);
    }
    let fill_time = filled.elapsed();
    let after_fill = rss_bytes();
    println!(
        "store filled in {:.1} s: {} current",
        fill_time.as_secs_f64(),
        store.read().current_len()
    );

    // The measurement: the writer at `rate`, the requests one after another on this thread.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(store.clone(), &options, Arc::clone(&stop));
    let mut store_latencies: Vec<Latencies> = ASKS.iter().map(|_| Latencies::default()).collect();
    let started = Instant::now();
    let mut round = 0usize;
    while started.elapsed() < Duration::from_secs(options.seconds) {
        for (k, ask) in ASKS.iter().enumerate() {
            let i = asked[round % asked.len()];
            let t = Instant::now();
            let bytes = ask_store(&store, *ask, i);
            store_latencies[k].0.push(t.elapsed());
            assert!(bytes > 0);
        }
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writing.join().expect("the writer");
    let elapsed = started.elapsed().as_secs_f64();
    let (current, history) = {
        let state = store.read();
        (state.current_len(), state.history_len())
    };
    let after_churn = rss_bytes();
    println!(
        "writer: {written} changes in {elapsed:.1} s ({:.0}/s); now {current} current, {history} \
         retracted kept",
        written as f64 / elapsed
    );

    // Neo4j: the same initial graph, the same questions about the same entities.
    let mut neo4j_latencies: Vec<Latencies> =
        QUESTIONS.iter().map(|_| Latencies::default()).collect();
    let mut neo4j_load = None;
    if options.neo4j {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("benches"))
            .join("../tests/neo4j-harness");
        let server = Neo4jServer::start(&dir, Duration::from_secs(300))
            .expect("the Neo4j test server starts (run .ci/install to build its launcher)");
        let settings = Neo4jSettings::new(server.uri(), harness::USERNAME, harness::PASSWORD);
        runtime.block_on(async {
            let mut writer = Neo4jWriter::connect(&settings).await.expect("connect");
            writer.ensure_schema().await.expect("schema");
            let loading = Instant::now();
            for (k, tick) in ticks.iter().enumerate() {
                writer.apply(tick).await.expect("write a tick to Neo4j");
                if (k + 1) % 10 == 0 {
                    println!(
                        "Neo4j: {} of {} ticks written in {:.0} s",
                        k + 1,
                        ticks.len(),
                        loading.elapsed().as_secs_f64()
                    );
                }
            }
            neo4j_load = Some(loading.elapsed());
            let config = tapio_config::Neo4jConfig {
                uri: server.uri().to_owned(),
                username: harness::USERNAME.to_owned(),
                password: tapio_config::Secret::new(harness::PASSWORD),
                ..tapio_config::Neo4jConfig::default()
            };
            let graph = tapio_queries::connect(&config).await.expect("connect");
            // Warm the server's query plans up on the first few entities.
            for &i in asked.iter().take(10) {
                for ask in QUESTIONS {
                    ask_neo4j(&graph, ask, i).await;
                }
            }
            let started = Instant::now();
            let mut round = 0usize;
            while started.elapsed() < Duration::from_secs(options.seconds) {
                for (k, ask) in QUESTIONS.iter().enumerate() {
                    let i = asked[round % asked.len()];
                    let t = Instant::now();
                    ask_neo4j(&graph, *ask, i).await;
                    neo4j_latencies[k].0.push(t.elapsed());
                }
                round += 1;
            }
        });
        drop(server);
    }

    // The table.
    println!();
    println!(
        "| request | store p50 ms | store p99 ms | asked | Neo4j p50 ms | Neo4j p99 ms | asked | Neo4j/store p50 | Neo4j/store p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (k, ask) in ASKS.iter().enumerate() {
        let ours = &store_latencies[k];
        let (p50, p99) = (ours.percentile(0.5), ours.percentile(0.99));
        let theirs = QUESTIONS
            .iter()
            .position(|question| question == ask)
            .map(|q| &neo4j_latencies[q])
            .filter(|latencies| !latencies.0.is_empty());
        match theirs {
            Some(theirs) => {
                let (n50, n99) = (theirs.percentile(0.5), theirs.percentile(0.99));
                println!(
                    "| {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {} | {:.0}× | {:.0}× |",
                    ask.name(),
                    ms(p50),
                    ms(p99),
                    ours.0.len(),
                    ms(n50),
                    ms(n99),
                    theirs.0.len(),
                    n50.as_secs_f64() / p50.as_secs_f64().max(1e-9),
                    n99.as_secs_f64() / p99.as_secs_f64().max(1e-9),
                );
            }
            None => println!(
                "| {} | {:.3} | {:.3} | {} | | | | | |",
                ask.name(),
                ms(p50),
                ms(p99),
                ours.0.len()
            ),
        }
    }
    println!();
    let per_100k = |bytes: u64| mib(bytes) * 100_000.0 / options.correlations as f64;
    println!(
        "| memory | MiB | MiB per 100k current correlations |\n| --- | ---: | ---: |\n\
         | store filled ({} current) | {:.1} | {:.1} |\n\
         | after the measurement ({current} current, {history} retracted kept) | {:.1} | {:.1} |",
        options.correlations,
        mib(after_fill.saturating_sub(before)),
        per_100k(after_fill.saturating_sub(before)),
        mib(after_churn.saturating_sub(before)),
        per_100k(after_churn.saturating_sub(before)),
    );
    if let Some(load) = neo4j_load {
        println!(
            "\nNeo4j: the {} initial correlations written in {:.1} s ({} ticks of 1000); the store \
             took {:.1} s",
            options.correlations,
            load.as_secs_f64(),
            ticks.len(),
            fill_time.as_secs_f64()
        );
    }
    // The same id scheme as the store's: a sanity check that the workload is what it says.
    assert_eq!(correlation_id(&correlation(0)).len(), 32);
}
