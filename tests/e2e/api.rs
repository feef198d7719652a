//! The HTTP API and `/metrics` of the running binary: `tapio replay --serve` on the shipped
//! recording answers incidents, correlations and the four questions as `tapio query` does,
//! refuses bad requests with clear JSON errors and keeps running; a bearer token from the
//! environment guards `/v1/`; a live `tapio run` streams its changes as server-sent events;
//! a real Prometheus scrapes `/metrics` and answers PromQL about it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{kspan_recording, scratch, tapio};

const POD: &str = "pod/default/px-7df978b9bf-jm22q";
const PROCESS: &str = "process/kind-control-plane/2315/1621357851120000000";

/// A running `tapio`, stopped (SIGTERM, then killed) when dropped.
pub(crate) struct Running {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET: the status and the body.
pub(crate) fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn json(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = get(port, path, token);
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|error| panic!("{path} answered no JSON ({error}): {body}"));
    (status, value)
}

/// Starts `tapio` with `args` serving on a free port and waits until `/healthz` answers.
pub(crate) fn start(args: &[&str], envs: &[(&str, &str)]) -> Running {
    let port = tapio_tests::free_port();
    let mut command = tapio();
    command
        .env("TAPIO_API_ADDRESS", format!("127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    let running = Running {
        child: command.spawn().expect("start tapio"),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the API never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

/// Waits until `ready` holds of the `/readyz` answer.
pub(crate) fn wait_for(port: u16, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = json(port, "/readyz", None);
        if ready(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {body:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn replayed(envs: &[(&str, &str)]) -> Running {
    let recording = kspan_recording();
    let running = start(
        &["replay", recording.to_str().expect("UTF-8"), "--serve"],
        envs,
    );
    wait_for(running.port, "finished the replay", |body| {
        body["dataflow"] == "finished"
    });
    running
}

/// `tapio run` for `duration` on the kernel-span recording played at `speed` times its
/// original pace (the OOM kill comes about 4 s in at 1.0), serving the API.
pub(crate) fn live(name: &str, speed: f64, duration: &str) -> Running {
    let dir = scratch(name);
    let config = dir.join("tapio.yaml");
    std::fs::write(
        &config,
        format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    \
             path: {}\n    speed: {speed:?}\n",
            kspan_recording().display()
        ),
    )
    .expect("write config");
    start(
        &[
            "run",
            "--config",
            config.to_str().expect("UTF-8"),
            "--for",
            duration,
        ],
        &[],
    )
}

#[test]
fn a_replayed_recording_answers_over_http_and_bad_requests_get_json_errors() {
    let api = replayed(&[]);
    let port = api.port;

    let (status, health) = json(port, "/healthz", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = json(port, "/readyz", None);
    assert_eq!(status, 200, "{ready:#}");
    assert_eq!(ready["sources"][0]["kind"], "recording");
    assert_eq!(ready["sources"][0]["status"], "finished");

    // The one incident: the OOM kill. Ownership is context, not an incident.
    let (status, incidents) = json(port, "/v1/incidents", None);
    assert_eq!(status, 200);
    assert_eq!(incidents["total"], 1, "{incidents:#}");
    let incident = &incidents["incidents"][0];
    assert_eq!(incident["correlation"]["kind"], "oom_restart");
    assert_eq!(incident["correlation"]["root_cause"], PROCESS);
    assert!(
        incident["explanation"]
            .as_str()
            .expect("explanation")
            .contains("OOM killer")
    );
    let (_, ownership) = json(port, "/v1/incidents?family=ownership&limit=3", None);
    assert!(ownership["total"].as_u64().expect("total") >= 5);
    assert_eq!(ownership["incidents"].as_array().map(Vec::len), Some(3));
    let (_, in_namespace) = json(
        port,
        "/v1/incidents?namespace=default&family=ownership",
        None,
    );
    assert_eq!(in_namespace["total"], ownership["total"]);
    let (_, by_entity) = json(port, &format!("/v1/incidents?entity={POD}"), None);
    assert_eq!(by_entity["total"], 1);
    let (_, before) = json(port, "/v1/incidents?to=2021-05-19T09:00:00Z", None);
    assert_eq!(before["total"], 0);

    // Grouped by root cause, as the web page lists them; paged; counted per kind.
    let (status, groups) = json(port, "/v1/root-causes", None);
    assert_eq!(status, 200, "{groups:#}");
    assert_eq!(groups["total"], 1);
    assert_eq!(groups["root_causes"][0]["root_cause"], PROCESS);
    assert_eq!(groups["root_causes"][0]["count"], 1);
    assert_eq!(
        groups["root_causes"][0]["kinds"],
        serde_json::json!(["oom_restart"])
    );
    assert_eq!(
        groups["root_causes"][0]["incidents"][0]["id"],
        incident["id"]
    );
    let (_, first) = json(port, "/v1/incidents?family=ownership&limit=2", None);
    let (_, second) = json(
        port,
        "/v1/incidents?family=ownership&limit=2&offset=2",
        None,
    );
    assert_eq!(second["total"], first["total"]);
    assert_eq!(second["incidents"].as_array().map(Vec::len), Some(2));
    assert_ne!(second["incidents"][0]["id"], first["incidents"][0]["id"]);
    assert_ne!(second["incidents"][0]["id"], first["incidents"][1]["id"]);
    let (_, with_context) = json(port, "/v1/incidents?context=true&limit=1", None);
    let (_, summary) = json(port, "/v1/summary", None);
    assert_eq!(with_context["total"], summary["current"]);
    assert_eq!(
        summary["current"].as_u64(),
        ownership["total"].as_u64().map(|n| n + 1),
        "{summary:#}"
    );

    // The facts kept about the process, newest first, paged back in time.
    let (status, facts) = json(port, &format!("/v1/entities/{PROCESS}/facts"), None);
    assert_eq!(status, 200, "{facts:#}");
    let kinds: Vec<&str> = facts["facts"]
        .as_array()
        .expect("facts")
        .iter()
        .map(|fact| fact["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["process_exit", "oom_kill", "process_exec"]);
    assert_eq!(facts["total"], 3);
    assert!(
        facts["facts"][1]["what"]
            .as_str()
            .expect("what")
            .contains("OOM-killed"),
        "{facts:#}"
    );
    let oom_time = facts["facts"][1]["time"].as_u64().expect("time");
    let (_, earlier) = json(
        port,
        &format!("/v1/entities/{PROCESS}/facts?before={oom_time}&limit=1"),
        None,
    );
    assert_eq!(earlier["total"], 1);
    assert_eq!(earlier["facts"][0]["kind"], "process_exec");

    // The web page and its assets, from the binary.
    let (status, page) = get(port, "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.js"), "{page}");
    for asset in ["/assets/app.js", "/assets/style.css", "/assets/icon.svg"] {
        assert_eq!(get(port, asset, None).0, 200, "{asset}");
    }

    // The correlation by id, with the evidence of every hop.
    let id = incident["id"].as_str().expect("id");
    let (status, one) = json(port, &format!("/v1/correlations/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(one["current"], true);
    assert_eq!(one["evidence"].as_array().map(Vec::len), Some(6));
    assert_eq!(one["evidence"][0]["fact_id"], "kernel/kind-control-plane/2");

    // The four questions, as `tapio query --recording` answers them.
    for (path, args) in [
        (format!("/v1/entities/{POD}/why"), vec!["why", POD]),
        (
            format!("/v1/entities/{PROCESS}/blast-radius"),
            vec!["blast-radius", PROCESS],
        ),
        (
            format!("/v1/entities/{POD}/timeline"),
            vec!["timeline", POD],
        ),
        (
            format!("/v1/entities/{PROCESS}/path?to=deployment/default/px"),
            vec!["path", PROCESS, "deployment/default/px"],
        ),
    ] {
        let (status, answer) = json(port, &path, None);
        assert_eq!(status, 200, "{path}: {answer:#}");
        let output = tapio()
            .arg("query")
            .arg("--recording")
            .arg(kspan_recording())
            .args(&args)
            .arg("--json")
            .output()
            .expect("run tapio query");
        assert!(output.status.success(), "{args:?}");
        let expected: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("JSON answer");
        assert_eq!(answer, expected, "{path}");
    }

    // Bad requests: a clear JSON error each, and the process keeps answering.
    for (path, status, says) in [
        (
            "/v1/entities/pod/default/nope/why",
            404,
            "is not in the graph",
        ),
        ("/v1/entities/nonsense/why", 400, "is not an entity id"),
        ("/v1/entities/pod/default/x/how", 404, "no question `how`"),
        ("/v1/correlations/not-an-id", 400, "is not a correlation id"),
        (
            "/v1/correlations/00000000000000000000000000000000",
            404,
            "no correlation",
        ),
        (
            "/v1/incidents?from=2021-05-20T00:00:00Z&to=2021-05-19T00:00:00Z",
            400,
            "the time range is empty",
        ),
        (
            "/v1/incidents?from=yesterday",
            400,
            "must be an RFC 3339 time",
        ),
        (
            "/v1/incidents?limit=100000000",
            400,
            "`limit` must be at most 1000",
        ),
        ("/v1/incidents?limit=-1", 400, "bad query string"),
        ("/v1/incidents?colour=red", 400, "unknown field"),
        ("/v1/incidents?state=maybe", 400, "`state` must be"),
        (
            &format!("/v1/entities/{POD}/path"),
            400,
            "the path question needs `to`",
        ),
        ("/v2/incidents", 404, "no such endpoint"),
        (
            &format!("/v1/entities/{POD}/facts?since=2021-05-19T00:00:00Z"),
            400,
            "`since` does not apply to the facts question",
        ),
        ("/v1/root-causes?per_group=0", 400, "`per_group` must be"),
        (
            "/v1/incidents?per_group=2",
            400,
            "applies to /v1/root-causes only",
        ),
        ("/v1/root-causes?offset=x", 400, "bad query string"),
    ] {
        let (code, body) = json(port, path, None);
        assert_eq!(code, status, "{path}: {body:#}");
        assert_eq!(body["error"]["status"], status);
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.contains(says), "{path}: {message}");
    }
    let (status, _) = json(port, "/healthz", None);
    assert_eq!(status, 200, "still running after the bad requests");
}

#[test]
fn a_token_from_the_environment_guards_the_api_but_not_health() {
    let api = replayed(&[("TAPIO_API_TOKEN", "s3cret-token")]);
    let port = api.port;
    let (status, body) = json(port, "/v1/incidents", None);
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("needs a bearer token")
    );
    let (status, body) = json(port, "/v1/incidents", Some("wrong"));
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "the bearer token is wrong");
    let (status, body) = json(port, "/v1/incidents", Some("s3cret-token"));
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1);
    assert_eq!(get(port, "/healthz", None).0, 200);
    assert_eq!(get(port, "/metrics", None).0, 200);
}

#[test]
fn a_live_run_streams_its_changes_as_server_sent_events() {
    let run = live("api-live", 1.0, "60s");
    let mut stream = TcpStream::connect(("127.0.0.1", run.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET /v1/changes HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    let mut lines = BufReader::new(stream).lines();
    let mut changes = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        if let Some(data) = line.strip_prefix("data: ") {
            let change: tapio_model::CorrelationChange =
                serde_json::from_str(data).expect("a change as the JSON lines output writes it");
            let oom = change.correlation.kind.as_str() == "oom_restart";
            changes.push(change);
            if oom {
                break;
            }
        }
    }
    assert!(
        changes
            .iter()
            .any(|change| change.diff == 1 && change.correlation.kind.as_str() == "oom_restart"),
        "the OOM incident streamed live; got {} changes",
        changes.len()
    );
    let (status, ready) = json(run.port, "/readyz", None);
    assert_eq!(status, 200, "{ready:#}");
}

#[test]
fn prometheus_scrapes_the_metrics_and_answers_promql() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "Debian's prometheus package is needed (.ci/install installs it)"
    );
    let api = replayed(&[]);
    let dir = scratch("api-prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tapio\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            api.port
        ),
    )
    .expect("write prometheus.yml");
    let web = tapio_tests::free_port();
    let server = std::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _server = Running {
        child: server,
        port: web,
    };
    let ask = |promql: &str| -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        TcpStream::connect(("127.0.0.1", web)).ok()?;
        let (status, body) = json(web, &format!("/api/v1/query?query={encoded}"), None);
        if status != 200 {
            return None;
        }
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|value| value.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let current = loop {
        if let Some(value) = ask("tapio_correlations_current{kind=\"oom_restart\"}") {
            break value;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped Tapio");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(current, 1.0);
    assert_eq!(
        ask("tapio_source_observations_total{source=\"recording\"}"),
        Some(108.0)
    );
    assert_eq!(ask("tapio_correlation_changes_total"), Some(11.0));
    assert_eq!(ask("tapio_dataflow_facts_total"), Some(26.0));
    assert_eq!(ask("up{job=\"tapio\"}"), Some(1.0));
    // The recording is from May 2021: its sources lag by years.
    let lag = ask("tapio_source_lag_seconds{source=\"kernel\"}").expect("the kernel's lag");
    assert!(lag > 3.0 * 365.0 * 86_400.0, "lag {lag} s");
    assert!(
        ask("tapio_source_lag_seconds{source=\"kubernetes\"}").is_some(),
        "a lag per source"
    );
}
