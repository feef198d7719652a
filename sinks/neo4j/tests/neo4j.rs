//! The Neo4j sink against a real Neo4j 5.26 (the test harness, started once for this test
//! binary): random apply/retract sequences, a sink killed mid-batch, refused credentials, an
//! unreachable server, Neo4j going away and coming back, and a graph an earlier version wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use neo4rs::{Graph, query};
use tapio_model::{
    Basis, ClosedBatch, Confidence, Correlation, CorrelationKind, Detail, EntityId, FactId, Hop,
    Observed, Relation,
};
use tapio_sinks::Sink;
use tapio_sinks_neo4j::harness::{self, Neo4jServer};
use tapio_sinks_neo4j::model::{
    SCHEMA_VERSION, correlation_id, links, observed_json, relationship_type,
};
use tapio_sinks_neo4j::{Neo4jSettings, Neo4jSink, Neo4jWriter, SchemaOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

// === Shared server ===

fn server() -> &'static Neo4jServer {
    static SERVER: OnceLock<Neo4jServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/neo4j-harness");
        Neo4jServer::start(&dir, Duration::from_secs(180)).expect("the Neo4j test server starts")
    })
}

/// One test at a time uses the database (Neo4j community has one user database).
static DATABASE: Mutex<()> = Mutex::const_new(());

fn settings(writer: &str) -> Neo4jSettings {
    let mut settings = Neo4jSettings::new(server().uri(), harness::USERNAME, harness::PASSWORD);
    settings.writer = writer.into();
    settings.retry_initial = Duration::from_millis(50);
    settings.retry_max = Duration::from_millis(500);
    settings
}

async fn graph() -> Graph {
    Graph::new(server().uri(), harness::USERNAME, harness::PASSWORD)
        .await
        .expect("connect")
}

async fn clear(graph: &Graph) {
    graph
        .run(query("MATCH (n) DETACH DELETE n"))
        .await
        .expect("clear the database");
}

/// Writes `batches` through a fresh sink and returns when all are committed.
async fn write(writer: &str, batches: Vec<ClosedBatch>) {
    let mut sink = Box::new(Neo4jSink::new(settings(writer)));
    sink.healthcheck().await.expect("health check");
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    for batch in batches {
        tx.send(batch).await.expect("sink running");
    }
    drop(tx);
    task.await.expect("sink task").expect("sink run");
}

/// Every node and relationship except cursors and the graph's version, as sorted text; `since`
/// (the tick a correlation was written in) is left out because it depends on the history.
async fn dump(graph: &Graph) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rows = graph
        .execute(query(
            "MATCH (n) WHERE NOT n:TapioCursor AND NOT n:TapioGraph
             RETURN labels(n) AS labels, properties(n) AS props",
        ))
        .await
        .expect("dump nodes");
    while let Some(row) = rows.next().await.expect("row") {
        let labels: Vec<String> = row.get("labels").expect("labels");
        let mut props: BTreeMap<String, serde_json::Value> = row.get("props").expect("props");
        props.remove("since");
        lines.push(format!("{labels:?} {props:?}"));
    }
    let mut rows = graph
        .execute(query(
            "MATCH (a)-[r]->(b)
             RETURN coalesce(a.id, '') AS a, type(r) AS type, properties(r) AS props,
                    coalesce(b.id, '') AS b",
        ))
        .await
        .expect("dump relationships");
    while let Some(row) = rows.next().await.expect("row") {
        let a: String = row.get("a").expect("a");
        let b: String = row.get("b").expect("b");
        let kind: String = row.get("type").expect("type");
        let props: BTreeMap<String, serde_json::Value> = row.get("props").expect("props");
        lines.push(format!("({a})-[{kind} {props:?}]->({b})"));
    }
    lines.sort();
    lines
}

/// A hop as the graph keeps it on `HOP`: entity, fact id and relation.
type HopLine = (String, String, String);

/// The graph's correlations, each with its chain read back from its HOP relationships.
async fn correlations_in(graph: &Graph) -> BTreeMap<String, Vec<HopLine>> {
    let mut rows = graph
        .execute(query(
            "MATCH (c:Correlation)-[h:HOP]->(e:Entity)
             WITH c, h, e ORDER BY h.index
             RETURN c.id AS id, collect([e.id, h.fact_id, h.relation]) AS chain",
        ))
        .await
        .expect("read correlations");
    let mut found = BTreeMap::new();
    while let Some(row) = rows.next().await.expect("row") {
        let id: String = row.get("id").expect("id");
        let chain: Vec<Vec<String>> = row.get("chain").expect("chain");
        found.insert(
            id,
            chain
                .into_iter()
                .map(|hop| (hop[0].clone(), hop[1].clone(), hop[2].clone()))
                .collect(),
        );
    }
    found
}

/// The graph's correlation nodes as the correlations their `data` holds, by id, each checked
/// against the node's own `kind`, `family` and `confidence`.
async fn data_in(graph: &Graph) -> BTreeMap<String, Correlation> {
    let mut rows = graph
        .execute(query(
            "MATCH (c:Correlation)
             RETURN c.id AS id, c.kind AS kind, c.family AS family,
                    c.confidence AS confidence, c.data AS data",
        ))
        .await
        .expect("read correlation data");
    let mut found = BTreeMap::new();
    while let Some(row) = rows.next().await.expect("row") {
        let id: String = row.get("id").expect("id");
        let data: String = row.get("data").expect("data");
        let correlation: Correlation = serde_json::from_str(&data).expect("typed JSON");
        assert_eq!(
            row.get::<String>("kind").expect("kind"),
            correlation.kind.as_str()
        );
        assert_eq!(
            row.get::<String>("family").expect("family"),
            correlation.family.as_str()
        );
        assert_eq!(
            row.get::<i64>("confidence").expect("confidence"),
            i64::from(correlation.confidence.percent)
        );
        found.insert(id, correlation);
    }
    found
}

// === Random correlations over a small world, so that chains share entities and facts ===

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hop(entity: &str, relation: Relation, fact: u64, source: &str) -> Hop {
    let observed = match source {
        "kernel" if relation == Relation::Start => Observed::OomKill {
            comm: "worker".into(),
            pid: 7,
            memcg: "/kubepods/pod1".into(),
            rss_pages: fact,
        },
        "kernel" => Observed::ProcessExit {
            comm: "worker".into(),
            exit_code: 0,
            signal: 9,
        },
        "cri" => Observed::ContainerExit {
            container_name: "app".into(),
            exit_code: 137,
            reason: "OOMKilled".into(),
            restart_count: 1,
        },
        _ => Observed::OwnerReference,
    };
    Hop {
        entity: entity.parse().expect("entity id"),
        relation,
        fact_id: FactId::new(source, "n1", fact),
        time: 1_700_000_000_000_000_000 + fact * 1_000_000,
        observed,
    }
}

/// Container `c`'s ownership chain from hop `from` on (0: the container, 1: its pod): pod
/// `c % 4`, of ReplicaSet `c % 4 % 2`, of Deployment 0. Each hop carries the evidence of the
/// link that leads to it, and the first the evidence of the link that leaves it, as the
/// dataflow's chains do; the link facts are fixed per object, like Kubernetes state records.
fn ownership_hops(container: u64, from: usize) -> Vec<Hop> {
    let pod = container % 4;
    let rs = pod % 2;
    let entities = [
        format!("container/c{container}"),
        format!("pod/default/p{pod}"),
        format!("replicaset/default/r{rs}"),
        "deployment/default/d0".to_string(),
    ];
    // The fact of the link from entity k to entity k + 1.
    let facts = [100 + container, 200 + pod, 300 + rs];
    let mut hops = vec![hop(
        &entities[from],
        Relation::Start,
        facts[from],
        "kubernetes",
    )];
    for k in from + 1..entities.len() {
        hops.push(hop(
            &entities[k],
            Relation::OwnedBy,
            facts[k - 1],
            "kubernetes",
        ));
    }
    hops
}

/// The ownership correlation of `chain`.
fn ownership(chain: Vec<Hop>) -> Correlation {
    let depth = chain.len() as u32 - 1;
    Correlation::new(
        CorrelationKind::Ownership,
        chain.last().expect("non-empty").entity.clone(),
        chain,
        Detail::Ownership { depth },
        Confidence {
            percent: 100,
            basis: vec![Basis::RecordedLinks],
        },
    )
}

fn random_correlation(rng: &mut Rng) -> Correlation {
    let container = rng.below(6);
    if rng.below(2) == 0 {
        let start = rng.below(3) as usize;
        ownership(ownership_hops(container, start))
    } else {
        let pid = rng.below(3);
        let process = format!("process/n1/{pid}/{container}");
        let kill = 1000 + rng.below(4);
        let mut chain = vec![
            hop(&process, Relation::Start, kill, "kernel"),
            hop(&process, Relation::FollowedBy, kill + 10, "kernel"),
            hop(
                &format!("container/c{container}"),
                Relation::Caused,
                kill + 20,
                "cri",
            ),
        ];
        chain.extend(ownership_hops(container, 0).into_iter().skip(1));
        Correlation::new(
            CorrelationKind::OomRestart,
            process.parse::<EntityId>().expect("entity id"),
            chain,
            Detail::Sequence {
                steps: 3,
                span_ns: 20_000_000,
                within_ns: 60_000_000_000,
            },
            Confidence {
                percent: 95,
                basis: vec![Basis::EveryStepObserved, Basis::ContainerEndSaysOom],
            },
        )
    }
}

/// Random ticks of additions and retractions, each consolidated like the dataflow's output;
/// returns the batches and the set current after the last one.
fn random_history(seed: u64, ticks: u64) -> (Vec<ClosedBatch>, BTreeSet<Correlation>) {
    let mut rng = Rng(seed);
    let mut current: BTreeSet<Correlation> = BTreeSet::new();
    let mut batches = Vec::new();
    for tick in 1..=ticks {
        let mut changes: BTreeMap<Correlation, i64> = BTreeMap::new();
        for _ in 0..rng.below(6) {
            let correlation = random_correlation(&mut rng);
            if !current.contains(&correlation) && !changes.contains_key(&correlation) {
                changes.insert(correlation, 1);
            }
        }
        let present: Vec<Correlation> = current.iter().cloned().collect();
        for correlation in present {
            if rng.below(4) == 0 {
                changes.insert(correlation, -1);
            }
        }
        for (correlation, diff) in &changes {
            if *diff > 0 {
                current.insert(correlation.clone());
            } else {
                current.remove(correlation);
            }
        }
        if !changes.is_empty() {
            batches.push(ClosedBatch {
                time: 1_700_000_000_000_000_000 + tick * 100_000_000,
                changes: changes.into_iter().collect(),
            });
        }
    }
    (batches, current)
}

/// The graph a fresh writer makes from `current` in one batch.
async fn reference_dump(graph: &Graph, current: &BTreeSet<Correlation>) -> Vec<String> {
    clear(graph).await;
    write(
        "reference",
        vec![ClosedBatch {
            time: 1,
            changes: current.iter().map(|c| (c.clone(), 1)).collect(),
        }],
    )
    .await;
    dump(graph).await
}

/// The graph's shared elements as text: entities, facts (with time), ABOUT (with what was
/// observed) and entity-to-entity steps of every type.
async fn shared_elements_in(graph: &Graph) -> BTreeSet<String> {
    let types: Vec<String> = Relation::LINKS.into_iter().map(relationship_type).collect();
    let mut found = BTreeSet::new();
    let mut rows = graph
        .execute(query(&format!(
            "MATCH (e:Entity) RETURN 'entity ' + e.id AS line
             UNION ALL MATCH (f:Fact) RETURN 'fact ' + f.id + ' ' + toString(f.time) AS line
             UNION ALL MATCH (f:Fact)-[a:ABOUT]->(e:Entity)
               RETURN 'about ' + f.id + ' ' + e.id + ' ' + a.observed AS line
             UNION ALL MATCH (a:Entity)-[l:{}]->(b:Entity)
               RETURN 'step ' + a.id + ' ' + type(l) + ' ' + b.id + ' ' + l.fact_id AS line",
            types.join("|")
        )))
        .await
        .expect("read shared elements");
    while let Some(row) = rows.next().await.expect("row") {
        let line: String = row.get("line").expect("line");
        assert!(found.insert(line.clone()), "twice in the graph: {line}");
    }
    found
}

/// What the graph must hold of the shared elements for `current`, from the model alone.
fn expected_shared_elements(current: &BTreeSet<Correlation>) -> BTreeSet<String> {
    let mut expected = BTreeSet::new();
    for c in current {
        expected.insert(format!("entity {}", c.root_cause));
        for hop in &c.chain {
            expected.insert(format!("entity {}", hop.entity));
            expected.insert(format!("fact {} {}", hop.fact_id, hop.time));
            expected.insert(format!(
                "about {} {} {}",
                hop.fact_id,
                hop.entity,
                observed_json(&hop.observed)
            ));
        }
        for link in links(c) {
            expected.insert(format!(
                "step {} {} {} {}",
                link.from,
                relationship_type(link.kind),
                link.to,
                link.fact_id
            ));
        }
    }
    expected
}

fn expected_chains(current: &BTreeSet<Correlation>) -> BTreeMap<String, Vec<HopLine>> {
    current
        .iter()
        .map(|c| {
            (
                correlation_id(c),
                c.chain
                    .iter()
                    .map(|h| {
                        (
                            h.entity.to_string(),
                            h.fact_id.to_string(),
                            h.relation.as_str().to_string(),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

// === Tests ===

#[tokio::test]
async fn random_apply_retract_sequences_leave_the_current_set() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    for seed in [7u64, 1234, 99_991] {
        clear(&graph).await;
        let (batches, current) = random_history(seed, 40);
        write("random", batches).await;
        assert_eq!(
            correlations_in(&graph).await,
            expected_chains(&current),
            "seed {seed}: correlations and chains"
        );
        assert_eq!(
            data_in(&graph).await,
            current
                .iter()
                .map(|c| (correlation_id(c), c.clone()))
                .collect(),
            "seed {seed}: each correlation node holds its correlation's typed data"
        );
        assert_eq!(
            shared_elements_in(&graph).await,
            expected_shared_elements(&current),
            "seed {seed}: entities, facts, ABOUT and steps, each once"
        );
        let orphans: i64 = graph
            .execute(query(
                "MATCH (e:Entity) WHERE NOT (e)--() RETURN count(e) AS n",
            ))
            .await
            .expect("orphans")
            .next()
            .await
            .expect("row")
            .expect("one row")
            .get("n")
            .expect("n");
        assert_eq!(orphans, 0, "seed {seed}: no entity without support");
        let incremental = dump(&graph).await;
        for needle in ["OWNED_BY", "CAUSED", "ABOUT", "HOP", "ROOT_CAUSE"] {
            assert!(
                incremental.iter().any(|line| line.contains(needle)),
                "seed {seed}: the graph has {needle}: {incremental:#?}"
            );
        }
        assert_eq!(
            incremental,
            reference_dump(&graph, &current).await,
            "seed {seed}: the incremental graph equals a fresh write of the current set"
        );
    }
}

#[tokio::test]
async fn an_entity_shared_by_two_correlations_survives_the_retraction_of_one() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    clear(&graph).await;
    let pod_chain = ownership(ownership_hops(1, 1));
    let container_chain = ownership(ownership_hops(1, 0));
    write(
        "shared",
        vec![
            ClosedBatch {
                time: 10,
                changes: vec![(pod_chain.clone(), 1), (container_chain.clone(), 1)],
            },
            ClosedBatch {
                time: 20,
                changes: vec![(container_chain, -1)],
            },
        ],
    )
    .await;
    let remaining = reference_dump(&graph, &BTreeSet::from([pod_chain])).await;
    let owned_by = remaining.iter().filter(|l| l.contains("OWNED_BY")).count();
    assert_eq!(owned_by, 2, "pod → rs → deployment survive: {remaining:#?}");
    assert!(!remaining.iter().any(|l| l.contains("container/c1")));
}

#[tokio::test]
async fn killed_mid_batch_then_restarted_gives_the_same_graph() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let (batches, current) = random_history(4242, 60);
    let reference = reference_dump(&graph, &current).await;
    // Four queued ticks per transaction: the kills land in the middle of coalesced
    // transactions, and the restart folds what is left the same way.
    let mut settings = settings("restart");
    settings.max_coalesced = 4;
    for kill_after in [1u64, 7, 23] {
        clear(&graph).await;
        let mut sink = Box::new(Neo4jSink::new(settings.clone()));
        sink.healthcheck().await.expect("health check");
        let mut progress = sink.progress();
        let (tx, rx) = mpsc::channel(batches.len());
        for batch in &batches {
            tx.send(batch.clone()).await.expect("queued");
        }
        let task = tokio::spawn(sink.run(rx));
        // The queue is full, so when batch `kill_after` commits the next transaction starts at
        // once: abort the sink then, in the middle of that transaction.
        progress
            .wait_for(|p| p.batches >= kill_after)
            .await
            .expect("progress");
        task.abort();
        assert!(task.await.is_err(), "the sink was killed");
        // Restart: the new sink sees every batch again, as a restarted replay would send them.
        let mut sink = Box::new(Neo4jSink::new(settings.clone()));
        sink.healthcheck()
            .await
            .expect("health check after the restart");
        let progress = sink.progress();
        let (tx, rx) = mpsc::channel(batches.len());
        for batch in &batches {
            tx.send(batch.clone()).await.expect("queued");
        }
        drop(tx);
        sink.run(rx).await.expect("restarted sink");
        let after = *progress.borrow();
        assert!(
            after.skipped >= kill_after && after.batches > 0,
            "the restart skipped what was committed and wrote the rest: {after:?}"
        );
        assert_eq!(after.skipped + after.batches, batches.len() as u64);
        assert_eq!(
            dump(&graph).await,
            reference,
            "killed after {kill_after} commits"
        );
        assert_eq!(correlations_in(&graph).await, expected_chains(&current));
    }
}

#[tokio::test]
async fn batches_at_or_below_the_cursor_are_skipped() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    clear(&graph).await;
    let (batches, _) = random_history(77, 20);
    write("cursor", batches.clone()).await;
    let first = dump(&graph).await;
    let mut sink = Box::new(Neo4jSink::new(settings("cursor")));
    sink.healthcheck().await.expect("health check");
    let progress = sink.progress();
    let (tx, rx) = mpsc::channel(batches.len());
    for batch in &batches {
        tx.send(batch.clone()).await.expect("queued");
    }
    drop(tx);
    sink.run(rx).await.expect("second run");
    let seen = *progress.borrow();
    assert_eq!(seen.skipped, batches.len() as u64);
    assert_eq!(seen.batches, 0);
    assert_eq!(dump(&graph).await, first, "no duplicates");
    let cursor: i64 = graph
        .execute(query(
            "MATCH (w:TapioCursor {writer: 'cursor'}) RETURN w.tick AS tick",
        ))
        .await
        .expect("cursor")
        .next()
        .await
        .expect("row")
        .expect("one row")
        .get("tick")
        .expect("tick");
    assert_eq!(cursor as u64, batches.last().expect("batches").time);
}

#[tokio::test]
async fn a_wrong_password_is_one_clear_error() {
    let mut settings = settings("auth");
    settings.password = tapio_config::Secret::new("not-the-password");
    let mut sink = Neo4jSink::new(settings);
    let error = sink.healthcheck().await.expect_err("refused");
    let text = error_chain(&error);
    assert!(
        text.contains("refused the user name or password") && text.contains(server().uri()),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_uri_is_one_clear_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let uri = format!("bolt://127.0.0.1:{port}");
    let mut sink = Neo4jSink::new(Neo4jSettings::new(&uri, "neo4j", "x"));
    let error = sink.healthcheck().await.expect_err("unreachable");
    let text = error_chain(&error);
    assert!(
        text.contains(&format!("cannot reach Neo4j at {uri}")),
        "{text}"
    );
}

/// A TCP relay in front of the real server. It can be switched off (connections refused and
/// open ones cut) and on again, records the size of every Bolt message clients send, and can
/// lose the answer to a commit: forward the next COMMIT, then cut that connection.
struct Relay {
    uri: String,
    up: tokio::sync::watch::Sender<bool>,
    sizes: MessageSizes,
    lose_commit_answer: Arc<AtomicBool>,
}

async fn relay(target: String) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let address = listener.local_addr().expect("address");
    let (up, up_rx) = tokio::sync::watch::channel(true);
    let sizes = MessageSizes::default();
    let lose_commit_answer = Arc::new(AtomicBool::new(false));
    let (recorded, lose) = (sizes.clone(), Arc::clone(&lose_commit_answer));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if !*up_rx.borrow() {
                drop(client);
                continue;
            }
            let mut down = up_rx.clone();
            let target = target.clone();
            let mut messages = BoltFraming::new(recorded.clone());
            let lose = Arc::clone(&lose);
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
                loop {
                    tokio::select! {
                        n = client.read(&mut a) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let commit = messages.feed(&a[..n]);
                                if upstream.write_all(&a[..n]).await.is_err() { return }
                                if commit && lose.swap(false, Ordering::SeqCst) {
                                    // Let the server commit, then cut the connection before
                                    // its answer reaches the client.
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                    return;
                                }
                            }
                        },
                        n = upstream.read(&mut b) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if client.write_all(&b[..n]).await.is_err() { return },
                        },
                        () = async { let _ = down.wait_for(|up| !*up).await; } => return,
                    }
                }
            });
        }
    });
    Relay {
        uri: format!("bolt://{address}"),
        up,
        sizes,
        lose_commit_answer,
    }
}

/// Sizes of the Bolt messages clients sent through a relay, framing included.
#[derive(Clone, Default)]
struct MessageSizes(Arc<std::sync::Mutex<Vec<usize>>>);

impl MessageSizes {
    fn all(&self) -> Vec<usize> {
        self.0.lock().expect("sizes").clone()
    }
}

/// Follows the client side of a Bolt connection: the 20-byte handshake, then messages as
/// chunks (a 2-byte length, that many bytes) ended by an empty chunk.
struct BoltFraming {
    handshake: usize,
    header: Vec<u8>,
    chunk_left: usize,
    message: usize,
    /// The first two bytes of the message: structure marker and tag.
    head: Vec<u8>,
    sizes: MessageSizes,
}

impl BoltFraming {
    /// COMMIT: a structure of no fields with tag 0x12.
    const COMMIT: [u8; 2] = [0xB0, 0x12];

    fn new(sizes: MessageSizes) -> BoltFraming {
        BoltFraming {
            handshake: 20,
            header: Vec::new(),
            chunk_left: 0,
            message: 0,
            head: Vec::new(),
            sizes,
        }
    }

    /// Follows `bytes`; true if a COMMIT message ended in them.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut commit = false;
        let skip = self.handshake.min(bytes.len());
        self.handshake -= skip;
        bytes = &bytes[skip..];
        while let Some((&first, rest)) = bytes.split_first() {
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(bytes.len());
                let wanted = 2usize.saturating_sub(self.head.len()).min(n);
                self.head.extend_from_slice(&bytes[..wanted]);
                self.chunk_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.header.push(first);
            bytes = rest;
            if let [high, low] = self.header[..] {
                self.header.clear();
                let len = usize::from(u16::from_be_bytes([high, low]));
                self.message += 2 + len;
                if len == 0 {
                    self.sizes.0.lock().expect("sizes").push(self.message);
                    commit |= self.head == Self::COMMIT;
                    self.message = 0;
                    self.head.clear();
                } else {
                    self.chunk_left = len;
                }
            }
        }
        commit
    }
}

#[tokio::test]
async fn neo4j_going_away_delays_batches_and_loses_none() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let (batches, current) = random_history(555, 30);
    let total = batches.len() as u64;
    let reference = reference_dump(&graph, &current).await;
    clear(&graph).await;
    let target = server().uri().trim_start_matches("bolt://").to_string();
    let relay = relay(target).await;
    let up = relay.up;
    let mut settings = settings("outage");
    settings.uri = relay.uri;
    let mut sink = Box::new(Neo4jSink::new(settings));
    sink.healthcheck()
        .await
        .expect("health check through the relay");
    let mut progress = sink.progress();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    let feeder = tokio::spawn(async move {
        for batch in batches {
            tx.send(batch).await.expect("sink running");
        }
    });
    progress
        .wait_for(|p| p.batches >= 5)
        .await
        .expect("progress");
    up.send(false).expect("relay off");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = progress.borrow().batches;
    up.send(true).expect("relay on");
    feeder.await.expect("every batch accepted");
    task.await.expect("sink task").expect("sink run");
    assert!(during < total, "the outage held batches back");
    assert_eq!(
        dump(&graph).await,
        reference,
        "nothing lost, nothing doubled"
    );
}

/// neo4rs 0.8 sends a message in one write only when it fits its 8 KiB write buffer; a larger
/// one waits about 40 ms on the server's delayed acknowledgement (see the sink's `wire`
/// module). A tick of dozens of long chains is written as several statements that each fit.
#[tokio::test]
async fn every_message_of_a_large_tick_fits_the_driver_write_buffer() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let mut rng = Rng(31337);
    let mut all: BTreeSet<Correlation> = BTreeSet::new();
    for _ in 0..2000 {
        all.insert(random_correlation(&mut rng));
    }
    assert!(all.len() >= 60, "{} distinct correlations", all.len());
    let kept: BTreeSet<Correlation> = all.iter().step_by(3).cloned().collect();
    let reference = reference_dump(&graph, &kept).await;
    clear(&graph).await;
    let target = server().uri().trim_start_matches("bolt://").to_string();
    let relay = relay(target).await;
    let mut settings = settings("large");
    settings.uri = relay.uri;
    let mut sink = Box::new(Neo4jSink::new(settings));
    sink.healthcheck()
        .await
        .expect("health check through the relay");
    let (tx, rx) = mpsc::channel(2);
    tx.send(ClosedBatch {
        time: 10,
        changes: all.iter().map(|c| (c.clone(), 1)).collect(),
    })
    .await
    .expect("queued");
    tx.send(ClosedBatch {
        time: 20,
        changes: all
            .iter()
            .filter(|c| !kept.contains(*c))
            .map(|c| (c.clone(), -1))
            .collect(),
    })
    .await
    .expect("queued");
    drop(tx);
    sink.run(rx).await.expect("sink run");
    assert_eq!(
        dump(&graph).await,
        reference,
        "the split ticks wrote the same graph"
    );
    let sizes = relay.sizes.all();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(largest <= 8192, "a message of {largest} bytes: {sizes:?}");
    let full = sizes.iter().filter(|size| **size > 4096).count();
    assert!(
        full >= 4,
        "the ticks were split into several large statements: {sizes:?}"
    );
}

/// The writer keeps its cursor and the correlations present in memory between ticks; when a
/// commit's answer is lost, it cannot know whether the commit went through, so it reads them
/// again before retrying: the batch is then found committed, not written twice.
#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_not_written_twice() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let (batches, current) = random_history(2718, 12);
    let reference = reference_dump(&graph, &current).await;
    clear(&graph).await;
    let target = server().uri().trim_start_matches("bolt://").to_string();
    let relay = relay(target).await;
    let mut settings = settings("lost-answer");
    settings.uri = relay.uri.clone();
    let mut sink = Box::new(Neo4jSink::new(settings));
    sink.healthcheck()
        .await
        .expect("health check through the relay");
    let mut progress = sink.progress();
    let (tx, rx) = mpsc::channel(batches.len());
    let task = tokio::spawn(sink.run(rx));
    let mut batches = batches.into_iter();
    for batch in batches.by_ref().take(3) {
        tx.send(batch).await.expect("sink running");
    }
    progress
        .wait_for(|p| p.batches == 3)
        .await
        .expect("progress");
    relay.lose_commit_answer.store(true, Ordering::SeqCst);
    for batch in batches {
        tx.send(batch).await.expect("sink running");
    }
    drop(tx);
    task.await.expect("sink task").expect("sink run");
    assert!(
        !relay.lose_commit_answer.load(Ordering::SeqCst),
        "a commit's answer was lost"
    );
    // The nine later ticks, queued, went in one coalesced transaction; its retry found it
    // committed and skipped it, all nine ticks.
    let after = *progress.borrow();
    assert_eq!(
        (after.batches, after.skipped),
        (3, 9),
        "the retry found the transaction committed: {after:?}"
    );
    assert_eq!(
        dump(&graph).await,
        reference,
        "nothing lost, nothing doubled"
    );
}

/// A tick at `time` of `changes`.
fn batch(time: u64, changes: &[(&Correlation, i64)]) -> ClosedBatch {
    ClosedBatch {
        time,
        changes: changes
            .iter()
            .map(|(c, diff)| ((*c).clone(), *diff))
            .collect(),
    }
}

/// A sink for `writer` running in the background once it has applied `first`: its input, its
/// task and its progress.
async fn running_after(
    writer: &str,
    first: ClosedBatch,
) -> (
    mpsc::Sender<ClosedBatch>,
    tokio::task::JoinHandle<Result<tapio_sinks::SinkReport, tapio_sinks::SinkError>>,
    tokio::sync::watch::Receiver<tapio_sinks_neo4j::Progress>,
) {
    let mut sink = Box::new(Neo4jSink::new(settings(writer)));
    sink.healthcheck().await.expect("health check");
    let mut progress = sink.progress();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    tx.send(first).await.expect("sink running");
    progress
        .wait_for(|p| p.batches == 1)
        .await
        .expect("progress");
    (tx, task, progress)
}

/// The ownership correlation of container `container`'s chain from hop `from` on (0: the
/// container, 1: its pod).
fn owned(container: u64, from: usize) -> Correlation {
    ownership(ownership_hops(container, from))
}

/// A writer keeps what it knows of the graph in memory. When another writer (another Tapio
/// deployment with its own cursor) removes or adds a correlation behind its back, it notices
/// before any count drifts, reads the graph again and leaves out the changes that disagree.
#[tokio::test]
async fn changes_by_another_writer_are_noticed_not_doubled() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    // x and y share the pod, the ReplicaSet, the Deployment and their facts; z is elsewhere.
    let (x, y, z) = (owned(1, 1), owned(1, 0), owned(2, 0));
    let reference = reference_dump(&graph, &BTreeSet::from([y.clone(), z.clone()])).await;
    clear(&graph).await;
    let (tx, task, progress) = running_after("writer-a", batch(10, &[(&x, 1), (&y, 1)])).await;
    // The other writer starts now, sees x and y, removes x and adds z.
    write("writer-b", vec![batch(10, &[(&x, -1), (&z, 1)])]).await;
    // The first still believes x is there and z is not.
    tx.send(batch(20, &[(&x, -1)])).await.expect("sink running");
    tx.send(batch(30, &[(&z, 1)])).await.expect("sink running");
    drop(tx);
    task.await.expect("sink task").expect("sink run");
    assert_eq!(progress.borrow().batches, 3);
    assert_eq!(
        dump(&graph).await,
        reference,
        "y's shared elements kept their support; z once"
    );
}

/// A writer keeps the reference counts of the shared elements in memory. When another writer
/// adds a correlation that shares elements with its own, its counts are stale; retracting its
/// own correlation must still leave everything the other one needs: its transaction finds the
/// graph's version moved, rolls back, and the retry counts again from the graph.
#[tokio::test]
async fn a_writer_with_stale_counts_leaves_what_another_writer_added() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    // x (the pod's chain) shares every element but the container's with y.
    let (x, y) = (owned(1, 1), owned(1, 0));
    let reference = reference_dump(&graph, &BTreeSet::from([x.clone()])).await;
    clear(&graph).await;
    let (tx, task, progress) = running_after("writer-a", batch(10, &[(&y, 1)])).await;
    write("writer-b", vec![batch(10, &[(&x, 1)])]).await;
    // The first writer's counts say y alone supports the pod, the ReplicaSet and their facts.
    tx.send(batch(20, &[(&y, -1)])).await.expect("sink running");
    drop(tx);
    task.await.expect("sink task").expect("sink run");
    assert_eq!(progress.borrow().batches, 2);
    assert_eq!(
        dump(&graph).await,
        reference,
        "x keeps its pod, ReplicaSet, Deployment, facts and steps"
    );
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Log lines written while a test runs, for asserting what the sink told the operator.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How many nodes have `label`.
async fn count(graph: &Graph, label: &str) -> i64 {
    graph
        .execute(query(&format!("MATCH (n:{label}) RETURN count(n) AS n")))
        .await
        .expect("count")
        .next()
        .await
        .expect("row")
        .expect("one row")
        .get("n")
        .expect("n")
}

/// The graph's schema version, if set.
async fn schema_in(graph: &Graph) -> Option<i64> {
    graph
        .execute(query(
            "MATCH (g:TapioGraph {key: 'graph'}) RETURN g.schema AS schema",
        ))
        .await
        .expect("schema")
        .next()
        .await
        .expect("row")
        .and_then(|row| row.get::<Option<i64>>("schema").expect("schema"))
}

/// A graph written by the first version of Tapio (relationship types picked by rule, evidence
/// as text on `explanation` and `ABOUT.what`, no schema on the graph node) is not mixed with
/// this version's: the start deletes what that version wrote, cursors included, says so in a
/// warning that tells how to refill it, and the writer then fills the graph from scratch.
#[tokio::test]
async fn a_graph_written_by_an_earlier_version_is_rebuilt_and_the_log_says_so() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    clear(&graph).await;
    graph
        .run(query(
            "CREATE (g:TapioGraph {key: 'graph', version: 41})
             CREATE (w:TapioCursor {writer: 'upgrade', tick: 99})
             CREATE (c:Correlation {id: 'c1', kind: 'ownership', confidence: 100, since: 9,
                                    explanation: 'pod/default/p0 is owned by: replicaset/default/r0'})
             CREATE (pod:Entity {id: 'pod/default/p0'}), (rs:Entity {id: 'replicaset/default/r0'})
             CREATE (f:Fact {id: 'kubernetes/n1/200', time: 5})
             CREATE (c)-[:ROOT_CAUSE]->(rs)
             CREATE (c)-[:HOP {index: 0, fact_id: 'kubernetes/n1/200'}]->(pod)
             CREATE (c)-[:HOP {index: 1, fact_id: 'kubernetes/n1/200'}]->(rs)
             CREATE (f)-[:ABOUT {what: 'pod of replicaset'}]->(pod)
             CREATE (pod)-[:OWNED_BY {fact_id: 'kubernetes/n1/200'}]->(rs)
             CREATE (:Elsewhere {name: 'not written by Tapio'})",
        ))
        .await
        .expect("write an earlier version's graph");

    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let outcome = {
        let _logging = tracing::subscriber::set_default(subscriber);
        let mut writer = Neo4jWriter::connect(&settings("upgrade"))
            .await
            .expect("connect");
        let outcome = writer.ensure_schema().await.expect("schema");
        assert_eq!(writer.cursor().await.expect("cursor"), None, "cursor gone");
        outcome
    };
    assert_eq!(
        outcome,
        SchemaOutcome::Rebuilt {
            found: None,
            correlations: 1,
            deleted: 5,
        }
    );
    let logs = logs.text();
    assert!(
        logs.contains("WARN")
            && logs.contains("written by an earlier version of Tapio and was cleared")
            && logs.contains("tapio replay nats://HOST:PORT/STREAM"),
        "{logs}"
    );
    for label in ["Correlation", "Entity", "Fact", "TapioCursor"] {
        assert_eq!(count(&graph, label).await, 0, "{label} nodes are gone");
    }
    assert_eq!(count(&graph, "Elsewhere").await, 1, "other nodes stay");
    assert_eq!(schema_in(&graph).await, Some(SCHEMA_VERSION));
    let version: i64 = graph
        .execute(query(
            "MATCH (g:TapioGraph {key: 'graph'}) RETURN g.version AS version",
        ))
        .await
        .expect("version")
        .next()
        .await
        .expect("row")
        .expect("one row")
        .get("version")
        .expect("version");
    assert_eq!(
        version, 42,
        "writers that kept counts of the old graph read it again"
    );

    // The writer fills it as a fresh graph, and the next start finds it current.
    let correlation = owned(1, 1);
    write("upgrade", vec![batch(10, &[(&correlation, 1)])]).await;
    assert_eq!(
        correlations_in(&graph).await,
        expected_chains(&BTreeSet::from([correlation]))
    );
    let mut writer = Neo4jWriter::connect(&settings("upgrade"))
        .await
        .expect("connect");
    assert_eq!(
        writer.ensure_schema().await.expect("schema"),
        SchemaOutcome::Current
    );
}

/// An empty graph just gets the schema; a graph a later version wrote is left alone with one
/// clear error.
#[tokio::test]
async fn an_empty_graph_gets_the_schema_and_a_newer_one_is_refused() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    clear(&graph).await;
    let mut writer = Neo4jWriter::connect(&settings("schema"))
        .await
        .expect("connect");
    assert_eq!(
        writer.ensure_schema().await.expect("schema"),
        SchemaOutcome::Created
    );
    assert_eq!(schema_in(&graph).await, Some(SCHEMA_VERSION));
    write("schema", vec![batch(10, &[(&owned(2, 0), 1)])]).await;
    let before = dump(&graph).await;
    graph
        .run(query(
            "MATCH (g:TapioGraph {key: 'graph'}) SET g.schema = g.schema + 1",
        ))
        .await
        .expect("a later version's schema");
    let error = writer.ensure_schema().await.expect_err("refused");
    let text = error_chain(&error);
    assert!(
        text.contains("written by a later version of Tapio")
            && text.contains(&format!("this version writes {SCHEMA_VERSION}")),
        "{text}"
    );
    assert!(!error.is_retryable());
    assert_eq!(dump(&graph).await, before, "nothing deleted");
}

/// A sink that has fallen behind (every tick of a long history already queued when it starts)
/// folds the queued ticks into fewer transactions, and the graph is the one writing them one
/// by one gives: the current set after the last tick.
#[tokio::test]
async fn queued_ticks_coalesce_into_fewer_transactions_with_the_same_graph() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let (batches, current) = random_history(4242, 300);
    let ticks = batches.len() as u64;
    // Each current correlation's `since`: the tick it was last added in.
    let mut since: BTreeMap<String, i64> = BTreeMap::new();
    for batch in &batches {
        for (correlation, diff) in &batch.changes {
            if *diff > 0 && current.contains(correlation) {
                since.insert(correlation_id(correlation), batch.time as i64);
            }
        }
    }
    let reference = reference_dump(&graph, &current).await;
    clear(&graph).await;
    let mut sink = Box::new(Neo4jSink::new(settings("coalesce")));
    sink.healthcheck().await.expect("health check");
    let progress = sink.progress();
    let (tx, rx) = mpsc::channel(batches.len());
    for batch in batches {
        tx.send(batch).await.expect("queue");
    }
    drop(tx);
    let report = sink.run(rx).await.expect("sink run");
    let done = *progress.borrow();
    assert_eq!(done.batches, ticks, "every tick is written: {done:?}");
    assert_eq!(report.batches, ticks);
    let most = ticks.div_ceil(tapio_sinks_neo4j::MAX_COALESCED as u64);
    assert_eq!(
        done.transactions, most,
        "{ticks} queued ticks in the fewest transactions: {done:?}"
    );
    assert_eq!(done.coalesced, ticks - done.transactions);
    assert_eq!(
        dump(&graph).await,
        reference,
        "the coalesced writes leave the current set"
    );
    let mut rows = graph
        .execute(query(
            "MATCH (c:Correlation) RETURN c.id AS id, c.since AS since",
        ))
        .await
        .expect("since");
    let mut written = BTreeMap::new();
    while let Some(row) = rows.next().await.expect("row") {
        written.insert(
            row.get::<String>("id").expect("id"),
            row.get::<i64>("since").expect("since"),
        );
    }
    assert_eq!(
        written, since,
        "each correlation is current since the tick it was added in, not the transaction's"
    );
}

/// A graph emptied under a running sink (everything deleted, the version node included) is
/// noticed at the next tick: the sink re-writes the correlations current before it, then
/// applies the tick.
#[tokio::test]
async fn a_graph_emptied_under_a_running_sink_is_re_written() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let (x, y, z) = (owned(1, 1), owned(2, 0), owned(3, 0));
    let reference = reference_dump(&graph, &BTreeSet::from([y.clone(), z.clone()])).await;
    clear(&graph).await;
    let (tx, task, mut progress) = running_after("emptied", batch(10, &[(&x, 1), (&y, 1)])).await;
    clear(&graph).await;
    tx.send(batch(20, &[(&x, -1), (&z, 1)]))
        .await
        .expect("sink running");
    progress
        .wait_for(|p| p.batches == 2)
        .await
        .expect("progress");
    assert_eq!(
        dump(&graph).await,
        reference,
        "the current set, each element once"
    );
    drop(tx);
    task.await.expect("sink task").expect("sink run");
}

/// A graph restored from an older backup under a running sink (its version and cursor back at
/// an earlier tick, a later correlation missing) is noticed at the next tick and re-written:
/// nothing stale stays, nothing is missing, nothing is doubled.
#[tokio::test]
async fn a_graph_restored_from_an_older_state_under_a_running_sink_is_re_written() {
    let _db = DATABASE.lock().await;
    let graph = graph().await;
    let (x, y, z) = (owned(1, 1), owned(2, 0), owned(3, 0));
    let reference =
        reference_dump(&graph, &BTreeSet::from([x.clone(), y.clone(), z.clone()])).await;
    clear(&graph).await;
    let (tx, task, mut progress) = running_after("restored", batch(10, &[(&x, 1)])).await;
    tx.send(batch(20, &[(&y, 1)])).await.expect("sink running");
    progress
        .wait_for(|p| p.batches == 2)
        .await
        .expect("progress");
    // The backup taken after tick 10: y's correlation not there, version and cursor back.
    graph
        .run(
            query(
                "MATCH (c:Correlation {id: $id}) DETACH DELETE c \
                 WITH count(*) AS gone \
                 MATCH (g:TapioGraph {key: 'graph'}) SET g.version = 1 \
                 WITH g MATCH (k:TapioCursor {writer: 'restored'}) SET k.tick = 10",
            )
            .param("id", correlation_id(&y)),
        )
        .await
        .expect("restore the older state");
    tx.send(batch(30, &[(&z, 1)])).await.expect("sink running");
    progress
        .wait_for(|p| p.batches == 3)
        .await
        .expect("progress");
    assert_eq!(
        dump(&graph).await,
        reference,
        "the current set, each element once"
    );
    drop(tx);
    task.await.expect("sink task").expect("sink run");
}
