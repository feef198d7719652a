//! The binary with a real Neo4j 5.26 (the test harness, started once for this test binary):
//! `tapio replay` writes the kspan recording into Neo4j, the graph holds exactly the
//! correlations current at the end of the JSON-lines output, a second replay writes nothing
//! twice, `tapio query` answers every question about the OOM restart in it, and bad
//! credentials, an unreachable server and bad questions each give one clear error. A recorded
//! dependency incident (an OOM kill in a pod behind a Service that two clients use) answers
//! `blast-radius`, `path` and `why` along the service graph.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use neo4rs::{Graph, query};
use tapio_model::{
    ConnectOutcome, ContainerExit, Fact, FactId, FactPayload, Heartbeat, Observation, OomKill,
    OwnerRef, PodContainer, ProcessExit, ServiceEndpoint, ServiceObject, StateObject, StateRecord,
    StateUpdate, TcpConnect, TimeNs, WorkloadObject,
};
use tapio_sinks_neo4j::harness::{self, Neo4jServer};
use tapio_sinks_neo4j::model::correlation_id;

use crate::support::{
    current, kspan_recording, read_changes, scratch, succeed, tapio, write_recording,
};

const POD: &str = "pod/default/px-7df978b9bf-jm22q";
const PROCESS: &str = "process/kind-control-plane/2315/1621357851120000000";
const CONTAINER: &str =
    "container/4f0072b3f51e88b2da583f0fc039968865ae60c60a81452a37828f6238a2e359";

fn server() -> &'static Neo4jServer {
    static SERVER: OnceLock<Neo4jServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tapio_tests::repo_root().join("tests/neo4j-harness");
        Neo4jServer::start(&dir, Duration::from_secs(180)).expect("the Neo4j test server starts")
    })
}

/// Tests that write the database take turns.
fn database() -> MutexGuard<'static, ()> {
    static DATABASE: Mutex<()> = Mutex::new(());
    DATABASE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn graph(runtime: &tokio::runtime::Runtime) -> Graph {
    runtime
        .block_on(Graph::new(
            server().uri(),
            harness::USERNAME,
            harness::PASSWORD,
        ))
        .expect("connect")
}

fn config(dir: &Path, uri: &str, password: &str) -> PathBuf {
    let path = dir.join("tapio.yaml");
    std::fs::write(
        &path,
        format!(
            "integrations:\n  neo4j:\n    uri: {uri}\n    username: neo4j\n    password: {password}\n"
        ),
    )
    .expect("write config");
    path
}

fn query_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let output = succeed(
        tapio()
            .arg("--config")
            .arg(config)
            .arg("query")
            .args(args)
            .arg("--json"),
    );
    serde_json::from_slice(&output.stdout).expect("the answer is JSON")
}

fn query_table(config: &Path, args: &[&str]) -> String {
    let output = succeed(tapio().arg("--config").arg(config).arg("query").args(args));
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn strings(value: &serde_json::Value, key: &str) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item[key].as_str().expect("a string").to_owned())
        .collect()
}

fn the_one_error(output: &Output) -> String {
    assert!(!output.status.success(), "the command should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{stderr}");
    errors[0].to_owned()
}

#[test]
fn kspan_replay_fills_neo4j_and_every_question_is_answered() {
    let _db = database();
    let runtime = runtime();
    let graph = graph(&runtime);
    runtime
        .block_on(graph.run(query("MATCH (n) DETACH DELETE n")))
        .expect("clear");
    let dir = scratch("neo4j-kspan");
    let config = config(&dir, server().uri(), harness::PASSWORD);
    let out = dir.join("out.jsonl");
    succeed(
        tapio()
            .arg("--config")
            .arg(&config)
            .arg("replay")
            .arg(kspan_recording())
            .arg("--output")
            .arg(&out),
    );

    // The graph holds exactly the correlations current at the end of the JSON-lines output.
    let expected: BTreeSet<String> = current(&read_changes(&out))
        .iter()
        .map(correlation_id)
        .collect();
    let in_graph = || -> BTreeSet<String> {
        runtime.block_on(async {
            let mut rows = graph
                .execute(query("MATCH (c:Correlation) RETURN c.id AS id"))
                .await
                .expect("read correlations");
            let mut ids = BTreeSet::new();
            while let Some(row) = rows.next().await.expect("row") {
                ids.insert(row.get::<String>("id").expect("id"));
            }
            ids
        })
    };
    assert!(expected.len() >= 5, "the recording concludes something");
    assert_eq!(in_graph(), expected);

    // A second replay is at or below the cursor: skipped, nothing doubled.
    let again = succeed(
        tapio()
            .arg("--config")
            .arg(&config)
            .arg("replay")
            .arg(kspan_recording())
            .arg("--output")
            .arg(dir.join("again.jsonl")),
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("skipped"), "{stderr}");
    assert_eq!(in_graph(), expected);

    // why: the OOM chain, process → container → pod → ReplicaSet → Deployment.
    let why = query_json(&config, &["why", POD]);
    assert_eq!(why["question"], "why");
    let causes = why["causes"].as_array().expect("causes");
    assert_eq!(causes.len(), 1, "{why:#}");
    assert_eq!(causes[0]["kind"], "oom_restart");
    assert_eq!(causes[0]["root_cause"], PROCESS);
    assert_eq!(causes[0]["confidence"], 95);
    assert_eq!(
        strings(&causes[0]["chain"], "entity"),
        [
            PROCESS,
            PROCESS,
            CONTAINER,
            POD,
            "replicaset/default/px-7df978b9bf",
            "deployment/default/px",
        ]
    );
    assert_eq!(
        strings(&causes[0]["chain"], "fact_id")[..3],
        [
            "kernel/kind-control-plane/2",
            "kernel/kind-control-plane/3",
            "cri/kind-control-plane/1"
        ]
    );
    let table = query_table(&config, &["why", POD]);
    assert!(
        table.starts_with(&format!(
            "oom_restart {PROCESS} (95%), current since 2021-05-19T09:43:"
        )),
        "{table}"
    );
    assert!(table.contains("OOM-killed"), "{table}");

    // blast-radius: the container it stopped, then the owners of that container.
    let blast = query_json(&config, &["blast-radius", PROCESS]);
    let impacts = &blast["impacts"];
    assert_eq!(
        strings(impacts, "entity"),
        [
            CONTAINER,
            POD,
            "replicaset/default/px-7df978b9bf",
            "deployment/default/px"
        ]
    );
    assert_eq!(
        strings(impacts, "how"),
        [
            "caused",
            "owner of affected",
            "owner of affected",
            "owner of affected"
        ]
    );
    assert_eq!(impacts[0]["evidence"][0], "cri/kind-control-plane/1");
    // The kind is the first part of the entity id (the graph does not store it separately).
    assert_eq!(
        strings(impacts, "kind"),
        ["container", "pod", "replicaset", "deployment"]
    );
    let deployment = query_json(&config, &["blast-radius", "deployment/default/px"]);
    let inside = strings(&deployment["impacts"], "entity");
    assert!(inside.contains(&POD.to_string()) && inside.contains(&CONTAINER.to_string()));

    // timeline: every fact about the pod, what runs in it and the process that stopped its
    // container, oldest first; --since cuts.
    let timeline = query_json(&config, &["timeline", POD]);
    let facts = strings(&timeline["events"], "fact_id");
    assert!(
        facts.starts_with(&[
            "kernel/kind-control-plane/2".to_string(),
            "kernel/kind-control-plane/3".to_string(),
            "cri/kind-control-plane/1".to_string(),
        ]),
        "{facts:?}"
    );
    let times: Vec<u64> = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["time"].as_u64().expect("time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    let later = query_json(
        &config,
        &["timeline", POD, "--since", "2021-05-19T09:43:02.502Z"],
    );
    let later = strings(&later["events"], "fact_id");
    assert_eq!(later.len(), facts.len() - 1, "{later:?}");
    assert_eq!(later[0], "kernel/kind-control-plane/3");

    // path: caused, then owned by, up to the Deployment.
    let path = query_json(&config, &["path", PROCESS, "deployment/default/px"]);
    assert_eq!(
        strings(&path["steps"], "relation"),
        ["CAUSED", "OWNED_BY", "OWNED_BY", "OWNED_BY"]
    );
    assert_eq!(path["nodes"][0], PROCESS);
    // What each step's evidence says is rendered from the typed observation on the fact's
    // ABOUT to the step's end.
    assert_eq!(
        strings(&path["steps"], "what"),
        [
            "container podinfo exited with code 137 (OOMKilled), restart count 1",
            format!("runs container podinfo ({CONTAINER})").as_str(),
            format!("owner of {POD}").as_str(),
            "owner of replicaset/default/px-7df978b9bf",
        ]
    );
    // Evidence times come from the facts: the same in why, path and timeline.
    let container_stop = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["fact_id"] == "cri/kind-control-plane/1")
        .map(|e| e["time"].clone())
        .expect("the container's stop is on the pod's timeline");
    assert!(container_stop.as_u64().is_some_and(|t| t > 0));
    assert_eq!(path["steps"][0]["time"], container_stop);
    assert_eq!(causes[0]["chain"][2]["time"], container_stop);
    let table = query_table(&config, &["path", "deployment/default/px", PROCESS]);
    assert!(
        table.contains("CAUSED") && table.contains("cri/kind-control-plane/1"),
        "{table}"
    );

    // Questions Tapio cannot answer say why, once.
    let unknown = tapio()
        .arg("--config")
        .arg(&config)
        .args(["query", "why", "pod/default/nope"])
        .output()
        .expect("run");
    let error = the_one_error(&unknown);
    assert!(
        error.contains("pod/default/nope is not in the graph"),
        "{error}"
    );
    let malformed = tapio()
        .arg("--config")
        .arg(&config)
        .args(["query", "why", "pod/only-namespace"])
        .output()
        .expect("run");
    let error = the_one_error(&malformed);
    assert!(error.contains("is not an entity id"), "{error}");
    std::fs::remove_dir_all(dir).expect("clean");
}

/// 2026-01-01T00:00:00Z.
const T0: TimeNs = 1_767_225_600_000_000_000;
const SECOND: TimeNs = 1_000_000_000;

fn entity(text: &str) -> tapio_model::EntityId {
    text.parse().expect("entity")
}

/// The dependency incident: `pod/shop/api` (Deployment `api`) serves Service `api` on
/// 10.244.0.5:8080 behind cluster IP 10.96.0.10; `web` connects through the Service, `batch`
/// to the pod directly. The api container is OOM-killed at 10 s, and web's next connect is
/// refused.
fn dependency_incident() -> Vec<Observation> {
    let mut seq = 0;
    let mut record = |object: StateObject| {
        seq += 1;
        Observation::State(StateUpdate {
            time_ns: T0,
            diff: 1,
            record: StateRecord {
                evidence: FactId::new("kubernetes", "cluster", seq),
                since_ns: T0,
                object,
            },
        })
    };
    let owned = |child: &str, owner: &str| {
        StateObject::Workload(WorkloadObject {
            entity: entity(child),
            uid: format!("uid-{child}"),
            owner: Some(OwnerRef {
                entity: entity(owner),
                uid: format!("uid-{owner}"),
            }),
            node: None,
        })
    };
    let container = |id: &str, pod: &str| {
        StateObject::PodContainer(PodContainer {
            pod: entity(pod),
            pod_uid: format!("uid-{pod}"),
            container_name: "app".into(),
            container_id: id.into(),
        })
    };
    let mut stream = vec![
        record(owned("pod/shop/api-7d9-x2", "replicaset/shop/api-7d9")),
        record(owned("replicaset/shop/api-7d9", "deployment/shop/api")),
        record(container("api1", "pod/shop/api-7d9-x2")),
        record(container("web1", "pod/shop/web")),
        record(container("batch1", "pod/shop/batch")),
        record(StateObject::Service(ServiceObject {
            entity: entity("service/shop/api"),
            uid: "uid-service".into(),
            cluster_ips: vec!["10.96.0.10".into()],
        })),
        record(StateObject::ServiceEndpoint(ServiceEndpoint {
            service: entity("service/shop/api"),
            endpoint: entity("endpoint/10.244.0.5:8080"),
            pod: Some(entity("pod/shop/api-7d9-x2")),
            ready: true,
        })),
    ];
    let fact = |seq: u64, at: TimeNs, payload: FactPayload| {
        Observation::Fact(Fact {
            id: FactId::new("kernel", "n1", seq),
            time_ns: T0 + at,
            payload,
        })
    };
    let connect = |container: &str, remote: &str, outcome: ConnectOutcome| {
        FactPayload::TcpConnect(TcpConnect {
            process: None,
            local: "10.244.0.9:41000".parse().expect("address"),
            remote: remote.parse().expect("address"),
            outcome,
            error: if outcome.is_failure() { 111 } else { 0 },
            latency_ns: 1_000_000,
            container_id: Some(container.into()),
        })
    };
    stream.extend([
        fact(
            1,
            SECOND,
            connect("web1", "10.96.0.10:80", ConnectOutcome::Established),
        ),
        fact(
            2,
            2 * SECOND,
            connect("batch1", "10.244.0.5:8080", ConnectOutcome::Established),
        ),
        fact(
            3,
            10 * SECOND,
            FactPayload::OomKill(OomKill {
                pid: 4242,
                start_ns: T0,
                comm: "api".into(),
                container_id: Some("api1".into()),
                pod_uid: None,
                memcg: "/kubepods/api1".into(),
                rss_pages: 65_536,
            }),
        ),
        fact(
            4,
            10 * SECOND + SECOND / 10,
            FactPayload::ProcessExit(ProcessExit {
                pid: 4242,
                start_ns: T0,
                comm: "api".into(),
                exit_code: 0,
                signal: 9,
                container_id: Some("api1".into()),
            }),
        ),
        fact(
            5,
            10 * SECOND + SECOND / 2,
            FactPayload::ContainerExit(ContainerExit {
                container_id: "api1".into(),
                container_name: "app".into(),
                pod: Some(entity("pod/shop/api-7d9-x2")),
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            }),
        ),
        fact(
            6,
            11 * SECOND,
            connect("web1", "10.96.0.10:80", ConnectOutcome::Refused),
        ),
    ]);
    stream.extend((0..=30).map(|step| {
        Observation::Heartbeat(Heartbeat {
            source: "kernel".into(),
            node: "n1".into(),
            upto_ns: T0 + step * SECOND / 2,
        })
    }));
    stream.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    stream
}

#[test]
fn a_dependency_incident_answers_blast_radius_path_and_why() {
    let _db = database();
    let runtime = runtime();
    let graph = graph(&runtime);
    runtime
        .block_on(graph.run(query("MATCH (n) DETACH DELETE n")))
        .expect("clear");
    let dir = scratch("neo4j-dependency");
    let recording = dir.join("incident.jsonl");
    write_recording(&recording, &dependency_incident());
    let config = config(&dir, server().uri(), harness::PASSWORD);
    succeed(
        tapio()
            .arg("--config")
            .arg(&config)
            .arg("replay")
            .arg(&recording)
            .arg("--output")
            .arg(dir.join("out.jsonl")),
    );
    let process = "process/n1/4242/1767225600000000000";
    let (api, web, batch) = ("pod/shop/api-7d9-x2", "pod/shop/web", "pod/shop/batch");

    // What the kill reached: the container it stopped and its owners, then along the service
    // graph the Service and both clients.
    let blast = query_json(&config, &["blast-radius", process]);
    let impacts = blast["impacts"].as_array().expect("impacts");
    let how: Vec<(String, String, u64)> = impacts
        .iter()
        .map(|impact| {
            (
                impact["entity"].as_str().expect("entity").to_owned(),
                impact["how"].as_str().expect("how").to_owned(),
                impact["distance"].as_u64().expect("distance"),
            )
        })
        .collect();
    for expected in [
        ("container/api1", "caused", 1),
        (api, "owner of affected", 2),
        ("service/shop/api", "affected", 3),
        (batch, "affected", 3),
        (web, "affected", 4),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned(), expected.2);
        assert!(how.contains(&expected), "{expected:?} in {how:#?}");
    }
    // Each step of the way to the web client carries its evidence: the kill's container exit,
    // the pod's container record, the endpoint record and web's connect.
    let to_web = impacts
        .iter()
        .find(|impact| impact["entity"] == web)
        .expect("web is hit");
    assert_eq!(
        to_web["evidence"],
        serde_json::json!([
            "kernel/n1/5",
            "kubernetes/cluster/3",
            "kubernetes/cluster/7",
            "kernel/n1/1"
        ])
    );

    // What depends on the Deployment, through its pod: the Service and both clients.
    let deployment = query_json(&config, &["blast-radius", "deployment/shop/api"]);
    let dependents: Vec<(String, String)> = deployment["impacts"]
        .as_array()
        .expect("impacts")
        .iter()
        .filter(|impact| impact["how"] == "dependent")
        .map(|impact| {
            (
                impact["entity"].as_str().expect("entity").to_owned(),
                impact["how"].as_str().expect("how").to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = dependents
        .iter()
        .map(|(entity, _)| entity.as_str())
        .collect();
    assert_eq!(
        names,
        ["pod/shop/batch", "service/shop/api", "pod/shop/web"]
    );

    // web and the api pod are two steps apart, through the Service.
    let path = query_json(&config, &["path", web, api]);
    assert_eq!(
        path["nodes"],
        serde_json::json!([web, "service/shop/api", api])
    );
    for relation in strings(&path["steps"], "relation") {
        assert!(
            relation == "DEPENDS_ON" || relation == "AFFECTS",
            "{relation}"
        );
    }

    // Why web suffers: the kill reached it, seen in its refused connect. The service graph's
    // edges through web are not causes.
    let why = query_json(&config, &["why", web]);
    let causes = why["causes"].as_array().expect("causes");
    assert_eq!(causes.len(), 1, "{why:#}");
    assert_eq!(causes[0]["kind"], "blast_radius");
    assert_eq!(causes[0]["root_cause"], process);
    assert_eq!(causes[0]["confidence"], 90);
    assert_eq!(
        strings(&causes[0]["chain"], "relation"),
        [
            "start",
            "followed_by",
            "caused",
            "owned_by",
            "affects",
            "affects",
            "followed_by"
        ]
    );
    assert_eq!(
        causes[0]["chain"][6]["what"],
        "connect to 10.96.0.10:80 refused after 1 ms"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_wrong_password_is_one_clear_error_before_anything_runs() {
    // Neo4j locks a user out for a few seconds after repeated failed logins: keep the other
    // tests' logins away while this one fails on purpose.
    let _db = database();
    let dir = scratch("neo4j-password");
    let config = config(&dir, server().uri(), "not-the-password");
    let output = tapio()
        .arg("--config")
        .arg(&config)
        .arg("replay")
        .arg(kspan_recording())
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .output()
        .expect("run");
    let error = the_one_error(&output);
    assert!(
        error.contains("refused the user name or password") && error.contains(server().uri()),
        "{error}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("Dataflow started"), "{stderr}");
    let query = tapio()
        .arg("--config")
        .arg(&config)
        .args(["query", "why", POD])
        .output()
        .expect("run");
    let error = the_one_error(&query);
    assert!(
        error.contains("refused the user name or password"),
        "{error}"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn an_unreachable_neo4j_is_one_clear_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let uri = format!("bolt://127.0.0.1:{port}");
    let dir = scratch("neo4j-unreachable");
    let config = config(&dir, &uri, "x");
    let output = tapio()
        .arg("--config")
        .arg(&config)
        .arg("replay")
        .arg(kspan_recording())
        .output()
        .expect("run");
    let error = the_one_error(&output);
    assert!(
        error.contains(&format!("cannot reach Neo4j at {uri}")),
        "{error}"
    );
    let output = tapio()
        .args(["query", "timeline", POD])
        .output()
        .expect("run");
    let error = the_one_error(&output);
    assert!(error.contains("no Neo4j configured"), "{error}");
    std::fs::remove_dir_all(dir).expect("clean");
}

/// Every entity of the correlations current at the end of `out` (a JSON-lines output), and the
/// pairs `path` is asked about: each chain's root cause to each of its hops.
fn questions_of(out: &Path) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let mut entities = BTreeSet::new();
    let mut pairs = BTreeSet::new();
    for correlation in current(&read_changes(out)) {
        let root = correlation.root_cause.to_string();
        entities.insert(root.clone());
        for hop in &correlation.chain {
            let entity = hop.entity.to_string();
            entities.insert(entity.clone());
            pairs.insert((root.clone(), entity));
        }
    }
    (entities, pairs)
}

/// The in-memory store answers every question as Neo4j does: each recording is replayed once
/// into Neo4j (by `tapio replay`) and once into the store (by `tapio query --recording`, and in
/// this process from the same JSON-lines output), and why, blast-radius, timeline and path
/// about every entity of every current correlation give equal answers.
#[test]
fn the_store_answers_every_question_as_neo4j_does() {
    use tapio_queries::memory;
    use tapio_sinks_store::{Store, StoreSettings};

    let _db = database();
    let runtime = runtime();
    let graph = graph(&runtime);
    let dir = scratch("neo4j-store");
    let dependency = dir.join("dependency.jsonl");
    write_recording(&dependency, &dependency_incident());
    let recordings_dir = tapio_tests::repo_root().join("tests/recordings");
    let recordings = [
        kspan_recording(),
        dependency,
        recordings_dir.join("memory-pressure.jsonl"),
        recordings_dir.join("service-restart-cascade.jsonl"),
        recordings_dir.join("dns-failures.jsonl"),
    ];
    let config = config(&dir, server().uri(), harness::PASSWORD);
    let bolt = tapio_config::Neo4jConfig {
        uri: server().uri().to_owned(),
        username: harness::USERNAME.to_owned(),
        password: tapio_config::Secret::new(harness::PASSWORD),
        ..tapio_config::Neo4jConfig::default()
    };
    let connection = runtime
        .block_on(tapio_queries::connect(&bolt))
        .expect("connect");
    let mut compared = 0usize;
    let mut identical_paths = 0usize;
    let mut blast_radii = 0usize;
    for (index, recording) in recordings.iter().enumerate() {
        runtime
            .block_on(graph.run(query("MATCH (n) DETACH DELETE n")))
            .expect("clear");
        let out = dir.join(format!("out-{index}.jsonl"));
        succeed(
            tapio()
                .arg("--config")
                .arg(&config)
                .arg("replay")
                .arg(recording)
                .arg("--output")
                .arg(&out),
        );
        // The store, filled tick by tick from the same output.
        let store = Store::new(StoreSettings {
            history_count: 100,
            history_max_age: Duration::from_secs(3600),
            facts_per_entity: 0,
            facts_max: 0,
        });
        let changes = read_changes(&out);
        let mut ticks: Vec<tapio_model::ClosedBatch> = Vec::new();
        for change in changes {
            match ticks.last_mut() {
                Some(tick) if tick.time == change.time => {
                    tick.changes.push((change.correlation, change.diff));
                }
                _ => ticks.push(tapio_model::ClosedBatch {
                    time: change.time,
                    changes: vec![(change.correlation, change.diff)],
                }),
            }
        }
        for tick in ticks {
            store.apply(tick);
        }
        let state = store.read();
        let (entities, pairs) = questions_of(&out);
        assert!(
            !entities.is_empty(),
            "{} concludes something",
            recording.display()
        );
        let json = |answer: Result<tapio_queries::Answer, tapio_queries::QueryError>| {
            serde_json::to_value(answer.expect("answered")).expect("JSON")
        };
        for text in &entities {
            let id = entity(text);
            let asked = |what: &str, neo4j: serde_json::Value, store: serde_json::Value| {
                assert_eq!(
                    store,
                    neo4j,
                    "{what} {text} after {}: the store (left) and Neo4j (right) differ",
                    recording.display()
                );
            };
            asked(
                "why",
                json(runtime.block_on(tapio_queries::why(&connection, &id))),
                json(memory::why(&state, &id)),
            );
            // Of two ways of the same length and kind to an entity (a kubelet exit and the
            // kernel's exit of the same container), both take the one whose evidence comes
            // first, so every hit agrees with its evidence.
            let neo4j = json(runtime.block_on(tapio_queries::blast_radius(&connection, &id)));
            let stored = json(memory::blast_radius(&state, &id));
            for impact in neo4j["impacts"].as_array().expect("impacts") {
                let evidence = impact["evidence"].as_array().map_or(0, Vec::len);
                assert_eq!(
                    Some(evidence as u64),
                    impact["distance"].as_u64(),
                    "one fact per step: {impact}"
                );
            }
            asked("blast-radius", neo4j, stored);
            blast_radii += 1;
            asked(
                "timeline",
                json(runtime.block_on(tapio_queries::timeline(&connection, &id, None))),
                json(memory::timeline(&state, &id, None)),
            );
            compared += 3;
        }
        for (from, to) in &pairs {
            let (a, b) = (entity(from), entity(to));
            let neo4j = json(runtime.block_on(tapio_queries::path(&connection, &a, &b)));
            let stored = json(memory::path(&state, &a, &b));
            // Where several shortest paths exist (or two facts support the same step), either
            // may pick another one, as Cypher's shortestPath leaves the choice open: the length
            // always agrees, and along the same entities each step joins the same two (by
            // whichever relationship joins them: a pod CAUSED a container that is OWNED_BY it).
            assert_eq!(
                stored["nodes"].as_array().map(Vec::len),
                neo4j["nodes"].as_array().map(Vec::len),
                "path {from} {to}: {stored:#} vs {neo4j:#}"
            );
            let shape = |answer: &serde_json::Value| -> Vec<BTreeSet<String>> {
                answer["steps"]
                    .as_array()
                    .expect("steps")
                    .iter()
                    .map(|step| {
                        let text = |key: &str| step[key].as_str().expect("a string").to_owned();
                        BTreeSet::from([text("from"), text("to")])
                    })
                    .collect()
            };
            if stored["nodes"] == neo4j["nodes"] {
                assert_eq!(shape(&stored), shape(&neo4j), "path {from} {to}");
            }
            if stored == neo4j {
                identical_paths += 1;
            }
            compared += 1;
        }
        drop(state);

        // The binary: `tapio query --recording` (no Neo4j asked) prints what `tapio query`
        // prints from Neo4j, as JSON and as a table.
        let no_neo4j = dir.join("no-neo4j.yaml");
        std::fs::write(&no_neo4j, "").expect("write config");
        let first = entities.iter().next().expect("an entity").clone();
        for question in [["why", first.as_str()], ["timeline", first.as_str()]] {
            let from_store = succeed(
                tapio()
                    .arg("--config")
                    .arg(&no_neo4j)
                    .arg("query")
                    .arg("--recording")
                    .arg(recording)
                    .args(question),
            );
            assert_eq!(
                String::from_utf8_lossy(&from_store.stdout),
                query_table(&config, &question),
                "{question:?} after {}",
                recording.display()
            );
        }
    }
    assert!(compared > 50, "only {compared} answers compared");
    assert!(
        identical_paths > 10,
        "only {identical_paths} paths are identical"
    );
    assert!(blast_radii > 10, "only {blast_radii} blast radii compared");
}

/// The Neo4j sink on `/metrics`: a commit latency per tick it wrote, and no failure.
#[test]
fn the_neo4j_sink_reports_its_commits_and_failures_on_metrics() {
    let _db = database();
    let runtime = runtime();
    let graph = graph(&runtime);
    runtime
        .block_on(graph.run(query("MATCH (n) DETACH DELETE n")))
        .expect("clear");
    let dir = scratch("neo4j-metrics");
    let config = config(&dir, server().uri(), harness::PASSWORD);
    let out = dir.join("out.jsonl");
    let recording = kspan_recording();
    let api = crate::api::start(
        &[
            "--config",
            config.to_str().expect("UTF-8"),
            "replay",
            recording.to_str().expect("UTF-8"),
            "--serve",
            "--output",
            out.to_str().expect("UTF-8"),
        ],
        &[],
    );
    crate::api::wait_for(api.port, "written everything to Neo4j", |body| {
        body["sinks"].as_array().is_some_and(|sinks| {
            sinks
                .iter()
                .any(|sink| sink["name"] == "neo4j" && sink["status"] == "finished")
        })
    });
    let (status, text) = crate::api::get(api.port, "/metrics", None);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let ticks = value("tapio_ticks_with_changes_total ");
    assert!(ticks > 0.0);
    assert_eq!(
        value("tapio_sink_commit_seconds_count{sink=\"neo4j\"} "),
        ticks,
        "one commit per tick"
    );
    assert!(value("tapio_sink_commit_seconds_sum{sink=\"neo4j\"} ") > 0.0);
    assert_eq!(
        value("tapio_tick_to_sink_seconds_count{sink=\"neo4j\"} "),
        ticks
    );
    assert_eq!(value("tapio_sink_failures_total{sink=\"neo4j\"} "), 0.0);
    // Every tick is committed alone or folded into a queued one's transaction, and nothing is
    // left waiting.
    let transactions = value("tapio_sink_transactions_total{sink=\"neo4j\"} ");
    assert!(transactions > 0.0 && transactions <= ticks);
    assert_eq!(
        transactions + value("tapio_sink_coalesced_ticks_total{sink=\"neo4j\"} "),
        ticks
    );
    assert_eq!(value("tapio_sink_lag_ticks{sink=\"neo4j\"} "), 0.0);
}
