//! The NATS JetStream transport against a real `nats-server`: node agent → JetStream →
//! correlation job, and replays of the stream, give exactly the correlations of replaying the
//! recording directly, with and without faults (NATS restarted mid-run, the correlation job
//! killed and restarted, NATS down when the agent starts, a malformed message on the subject),
//! and a lost connection stores no fact behind a heartbeat beyond the lateness bound.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tapio_model::{Fact, FactId, FactPayload, Heartbeat, Observation, ProcessExit};
use tapio_sinks_nats::{Publisher, PublisherReport};
use tapio_sources::{Positions, SourceContext, Status};
use tapio_tests::nats::NatsServer;
use tapio_tests::synthetic::START_NS;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::support::{kspan_recording, replay_to, scratch, succeed, tapio, write_recording};

const CONSUMER: &str = "tapio-correlation";

/// The synthetic stream (about 20 thousand observations over 40 s of event time) as a
/// recording in `dir`, and its number of observations.
fn synthetic(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("synthetic.jsonl");
    let observations = tapio_tests::synthetic::stream(&tapio_tests::synthetic::Shape::small());
    write_recording(&path, &observations);
    (path, observations.len() as u64)
}

/// What `tapio replay FILE` writes: the fault-free correlations.
fn reference(recording: &Path, extra: &[&str], dir: &Path) -> String {
    let out = dir.join("reference.jsonl");
    replay_to(recording, &out, extra);
    std::fs::read_to_string(out).expect("read the reference output")
}

fn write_config(dir: &Path, name: &str, url: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "node_name: agent-1\n{extra}integrations:\n  nats:\n    url: {url}\n    spool_path: {}\n",
            dir.join(format!("{name}.spool")).display()
        ),
    )
    .expect("write config");
    path
}

fn agent_config(dir: &Path, url: &str, recording: &Path, speed: f64) -> PathBuf {
    write_config(
        dir,
        "agent.yaml",
        url,
        &format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\n    speed: {speed}\n",
            recording.display()
        ),
    )
}

fn spawn(args: &[&str], config: &Path, stderr: &Path) -> Running {
    Running(
        tapio()
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).expect("create stderr file"))
            .spawn()
            .expect("start tapio"),
    )
}

/// A `tapio` process, killed if the test ends or fails before it exits: a job left behind
/// would keep reconnecting to a server that is gone.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts a correlation job, waits until it has acknowledged the whole stream, stops it, and
/// returns its output and the path of its log.
fn correlate_whole_stream(dir: &Path, url: &str, name: &str) -> (String, PathBuf) {
    let config = write_config(dir, "correlation.yaml", url, "");
    let (job, out) = spawn_correlation(dir, &config, name);
    let stderr = dir.join(format!("{name}.stderr"));
    wait_acknowledged(url, &stderr);
    (stop_correlation(job, &out, &stderr), stderr)
}

fn spawn_correlation(dir: &Path, config: &Path, name: &str) -> (Running, PathBuf) {
    let out = dir.join(format!("{name}.jsonl"));
    let child = spawn(
        &[
            "run",
            "--mode",
            "correlation",
            "--output",
            out.to_str().expect("utf-8"),
        ],
        config,
        &dir.join(format!("{name}.stderr")),
    );
    (child, out)
}

fn wait_success(mut child: Running, what: &str, stderr: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "{what} failed: {status}\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{what} did not finish\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}

/// Stops a correlation job with SIGTERM (it flushes) and returns its output.
fn stop_correlation(child: Running, out: &Path, stderr: &Path) -> String {
    signal(&child, "-TERM");
    wait_success(child, "the correlation job", stderr);
    std::fs::read_to_string(out).expect("read the correlation output")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until the stream holds messages and the correlation job acknowledged all of them (the
/// agent has finished: the stream's last sequence is final).
fn wait_acknowledged(url: &str, stderr: &Path) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let last = match js.get_stream("TAPIO").await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map_or(0, |info| info.state.last_sequence),
                Err(_) => 0,
            };
            let floor = match js.get_stream("TAPIO").await {
                Ok(stream) => stream
                    .consumer_info(CONSUMER)
                    .await
                    .map_or(0, |info| info.ack_floor.stream_sequence),
                Err(_) => 0,
            };
            if last > 0 && floor >= last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the correlation job acknowledged {floor} of {last} messages\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Waits until the correlation job has acknowledged at least one message.
fn wait_acknowledged_some(url: &str, stderr: &Path) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stream) = js.get_stream("TAPIO").await
                && let Ok(info) = stream.consumer_info(CONSUMER).await
                && info.ack_floor.stream_sequence > 0
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the correlation job acknowledged nothing\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// The `name=N` count in the line of `stderr` containing `line`.
fn count(stderr: &str, line: &str, name: &str) -> u64 {
    let found = stderr
        .lines()
        .find(|l| l.contains(line))
        .unwrap_or_else(|| panic!("no `{line}` in:\n{stderr}"));
    found
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in `{found}`"))
}

fn replay_stream(url: &str, extra: &[&str], dir: &Path) -> (String, String) {
    let out = dir.join("replayed.jsonl");
    let output = replay_to(format!("{url}/TAPIO"), &out, extra);
    (
        std::fs::read_to_string(out).expect("read the replay output"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn live_correlation_and_stream_replays_equal_the_recording() {
    let nats = NatsServer::start("live");
    let dir = scratch("nats-live");
    let (recording, messages) = synthetic(&dir);
    let expected = reference(&recording, &[], &dir);
    assert!(
        expected.lines().count() > 10,
        "the synthetic stream correlates"
    );
    let agent = agent_config(&dir, &nats.url(), &recording, 0.0);
    let published = succeed(
        tapio()
            .args(["run", "--mode", "collectors", "--config"])
            .arg(&agent),
    );
    let agent_log = String::from_utf8_lossy(&published.stderr);
    assert_eq!(
        count(&agent_log, "Publishing finished.", "published"),
        messages
    );
    assert_eq!(count(&agent_log, "Publishing finished.", "dropped"), 0);

    let (live, _) = correlate_whole_stream(&dir, &nats.url(), "live");
    assert!(
        live == expected,
        "the live correlation run differs from the recording's"
    );

    // Backtest: the whole stream, then a range, give what the recording gives.
    let (replayed, _) = replay_stream(&nats.url(), &[], &dir);
    assert!(
        replayed == live,
        "the stream replay differs from the live run"
    );
    let range = [
        "--start",
        "2026-01-01T00:00:10Z",
        "--end",
        "2026-01-01T00:00:30Z",
    ];
    let (ranged, _) = replay_stream(&nats.url(), &range, &dir);
    assert!(ranged != live, "the range changes the correlations");
    assert!(
        ranged == reference(&recording, &range, &dir),
        "a range of the stream differs from the same range of the recording"
    );
    // Starting at a stream sequence past the end replays nothing.
    let beyond = format!("{}/TAPIO?from_seq={}", nats.url(), messages + 1);
    let output = succeed(tapio().args(["replay", &beyond, "--output", "-"]));
    assert!(output.stdout.is_empty());
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn nats_restarted_in_the_middle_of_a_run_loses_nothing() {
    let mut nats = NatsServer::start("restart");
    let dir = scratch("nats-restart");
    let (recording, _) = synthetic(&dir);
    let expected = reference(&recording, &[], &dir);
    let config = write_config(&dir, "correlation.yaml", &nats.url(), "");
    let (job, out) = spawn_correlation(&dir, &config, "job");
    // 40 s of event time at 10x: about 4 s of publishing.
    let agent = spawn(
        &["run", "--mode", "collectors"],
        &agent_config(&dir, &nats.url(), &recording, 10.0),
        &dir.join("agent.stderr"),
    );
    // Stopped gracefully, then killed (what it had not read from its sockets is lost), each
    // time while the agent publishes.
    std::thread::sleep(Duration::from_millis(1200));
    nats.stop();
    std::thread::sleep(Duration::from_millis(700));
    nats.restart();
    std::thread::sleep(Duration::from_millis(700));
    nats.kill();
    std::thread::sleep(Duration::from_millis(500));
    nats.restart();
    wait_success(agent, "the agent", &dir.join("agent.stderr"));
    let agent_log = std::fs::read_to_string(dir.join("agent.stderr")).expect("agent log");
    assert!(
        count(&agent_log, "Publishing finished.", "spooled") > 0,
        "the agent spooled during the outage:\n{agent_log}"
    );
    assert_eq!(count(&agent_log, "Publishing finished.", "dropped"), 0);
    let stderr = dir.join("job.stderr");
    wait_acknowledged(&nats.url(), &stderr);
    let live = stop_correlation(job, &out, &stderr);
    assert!(live == expected, "a NATS restart changed the correlations");
    assert_stored_once(&nats.url(), &recording);
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_killed_correlation_job_restarts_without_loss() {
    let nats = NatsServer::start("kill");
    let dir = scratch("nats-kill");
    let (recording, _) = synthetic(&dir);
    let expected = reference(&recording, &[], &dir);
    let config = write_config(&dir, "correlation.yaml", &nats.url(), "");
    let (first, _) = spawn_correlation(&dir, &config, "first");
    let agent = spawn(
        &["run", "--mode", "collectors"],
        &agent_config(&dir, &nats.url(), &recording, 10.0),
        &dir.join("agent.stderr"),
    );
    // Kill the first job once it has acknowledged part of the stream.
    wait_acknowledged_some(&nats.url(), &dir.join("first.stderr"));
    signal(&first, "-KILL");
    let mut first = first;
    first.wait().expect("reap the killed job");
    let (second, out) = spawn_correlation(&dir, &config, "second");
    wait_success(agent, "the agent", &dir.join("agent.stderr"));
    let stderr = dir.join("second.stderr");
    wait_acknowledged(&nats.url(), &stderr);
    let restarted = stop_correlation(second, &out, &stderr);
    assert_stored_once(&nats.url(), &recording);
    let log = std::fs::read_to_string(&stderr).expect("log");
    assert!(
        log.contains("Rebuilding the dataflow's state"),
        "the restarted job resumed from an acknowledged floor:\n{log}"
    );
    assert!(
        restarted == expected,
        "the restarted job's correlations differ"
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

/// The observations of a recording file, in order.
fn recorded(recording: &Path) -> Vec<Observation> {
    // The first line is the recording's header.
    std::fs::read_to_string(recording)
        .expect("read the recording")
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str(line).expect("a recorded observation"))
        .collect()
}

/// Asserts that the stream holds every observation of `recording` exactly once (in any order:
/// a lost connection may store a message after later ones).
fn assert_stored_once(url: &str, recording: &Path) {
    let encode = |observations: Vec<Observation>| {
        let mut lines: Vec<String> = observations
            .iter()
            .map(|o| serde_json::to_string(o).expect("encode"))
            .collect();
        lines.sort_unstable();
        lines
    };
    let stored = encode(runtime().block_on(stream_observations(url)));
    let sent = encode(recorded(recording));
    let lost = sent
        .iter()
        .filter(|line| stored.binary_search(line).is_err())
        .count();
    let doubled = stored.windows(2).filter(|pair| pair[0] == pair[1]).count();
    assert!(
        stored == sent,
        "the stream holds {} observations for {} sent: {lost} lost, {doubled} stored twice",
        stored.len(),
        sent.len()
    );
}

/// The observations in the complete messages of a spool file (a header line `#timed <n> …`
/// followed by its `n` lines), in order; a message cut short at the end is left out.
fn spooled_observations(spool: &Path) -> Vec<Observation> {
    let bytes = std::fs::read(spool).expect("read the spool");
    let mut observations = Vec::new();
    let mut lines = bytes.split_inclusive(|b| *b == b'\n').peekable();
    while let Some(header) = lines.next() {
        let header = std::str::from_utf8(header).expect("utf-8 header");
        let count: usize = header
            .strip_prefix("#timed ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a spool header: {header:?}"));
        let body: Vec<&[u8]> = lines.by_ref().take(count).collect();
        if body.len() < count || !body.last().is_some_and(|line| line.ends_with(b"\n")) {
            break;
        }
        for line in body {
            observations.push(serde_json::from_slice(line).expect("a spooled observation"));
        }
    }
    observations
}

#[test]
fn an_agent_killed_mid_spool_and_restarted_loses_and_doubles_nothing() {
    let mut nats = NatsServer::stopped("agent-kill");
    let dir = scratch("nats-agent-kill");
    let (recording, _) = synthetic(&dir);
    let expected = reference(&recording, &[], &dir);
    let observations = recorded(&recording);
    // NATS is down: the agent spools everything, at 10x (about 4 s for the stream), and is
    // killed with SIGKILL part-way.
    let config = agent_config(&dir, &nats.url(), &recording, 10.0);
    let spool = dir.join("agent.yaml.spool");
    let mut agent = spawn(
        &["run", "--mode", "collectors"],
        &config,
        &dir.join("agent-1.stderr"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&spool).map_or(0, |m| m.len()) < 200_000 {
        assert!(
            Instant::now() < deadline,
            "the agent spooled nothing
{}",
            std::fs::read_to_string(dir.join("agent-1.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&agent, "-KILL");
    agent.wait().expect("reap the killed agent");
    // What the killed agent left: a prefix of its input, in order.
    let left = spooled_observations(&spool);
    assert!(
        !left.is_empty() && left.len() < observations.len(),
        "killed mid-spool: {} of {} spooled",
        left.len(),
        observations.len()
    );
    assert!(
        left[..] == observations[..left.len()],
        "the spool holds the agent's input in order"
    );
    // The restarted agent's collector goes on where the spool ends (as a source that resumes
    // from its checkpoint would); the agent drains the spool first.
    let rest = dir.join("rest.jsonl");
    write_recording(&rest, &observations[left.len()..]);
    nats.restart();
    let config = agent_config(&dir, &nats.url(), &rest, 0.0);
    let restarted = spawn(
        &["run", "--mode", "collectors"],
        &config,
        &dir.join("agent-2.stderr"),
    );
    wait_success(
        restarted,
        "the restarted agent",
        &dir.join("agent-2.stderr"),
    );
    let log = std::fs::read_to_string(dir.join("agent-2.stderr")).expect("agent log");
    assert!(
        log.contains("Draining the spool left by an earlier run"),
        "{log}"
    );
    assert_eq!(
        count(&log, "Publishing finished.", "published"),
        observations.len() as u64,
        "{log}"
    );
    assert_eq!(count(&log, "Publishing finished.", "dropped"), 0);
    assert_eq!(count(&log, "Publishing finished.", "left_in_spool"), 0);
    assert_stored_once(&nats.url(), &recording);
    let (live, _) = correlate_whole_stream(&dir, &nats.url(), "job");
    assert!(
        live == expected,
        "the agent's kill changed the correlations"
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_server_without_storage_for_the_stream_is_refused_at_start() {
    // The stream asks to reserve `max_bytes` (10 GiB by default); the server has 1 MB.
    let nats = NatsServer::start_with_storage("no-storage", "1MB");
    let dir = scratch("nats-no-storage");
    let (recording, _) = synthetic(&dir);
    for (args, config) in [
        (
            &["run", "--mode", "collectors"][..],
            agent_config(&dir, &nats.url(), &recording, 1.0),
        ),
        (
            &["run", "--mode", "correlation", "--output", "-"][..],
            write_config(&dir, "correlation.yaml", &nats.url(), ""),
        ),
    ] {
        let stderr = dir.join("refused.stderr");
        let mut child = spawn(args, &config, &stderr);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} kept running without storage for its stream\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&stderr).expect("log");
        assert!(!status.success(), "{args:?} succeeded:\n{log}");
        assert!(
            log.contains("not enough storage for the stream `TAPIO`")
                && log.contains("integrations.nats.max_bytes")
                && log.contains("10737418240"),
            "{args:?}:\n{log}"
        );
    }
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn an_agent_started_while_nats_is_down_spools_then_publishes() {
    let mut nats = NatsServer::stopped("down");
    let dir = scratch("nats-down");
    let (recording, _) = synthetic(&dir);
    let expected = reference(&recording, &[], &dir);
    // 40 s of event time at 20x: about 2 s of publishing, the first second with no NATS.
    let port = tapio_tests::free_port();
    let agent = Running(
        tapio()
            .env("TAPIO_API_ADDRESS", format!("127.0.0.1:{port}"))
            .args(["run", "--mode", "collectors", "--config"])
            .arg(agent_config(&dir, &nats.url(), &recording, 20.0))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.stderr")).expect("create stderr file"))
            .spawn()
            .expect("start tapio"),
    );
    // The agent's /metrics shows the spool growing while NATS is down.
    let started = Instant::now();
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    let mut spooled = None;
    while started.elapsed() < Duration::from_millis(900) && spooled.is_none() {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, text) = crate::api::get(port, "/metrics", None);
            assert_eq!(status, 200);
            assert!(
                gauge(&text, "tapio_nats_unacknowledged_observations ").is_some(),
                "{text}"
            );
            spooled = gauge(&text, "tapio_nats_spool_bytes ").filter(|bytes| *bytes > 0.0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        spooled.is_some(),
        "the agent's /metrics never showed spooled bytes while NATS was down"
    );
    let (status, ready) = crate::api::json(port, "/readyz", None);
    assert_eq!(
        status, 200,
        "the agent runs no dataflow and is ready: {ready:#}"
    );
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed()));
    nats.restart();
    wait_success(agent, "the agent", &dir.join("agent.stderr"));
    let agent_log = std::fs::read_to_string(dir.join("agent.stderr")).expect("agent log");
    assert!(count(&agent_log, "Publishing finished.", "spooled") > 0);
    assert_eq!(count(&agent_log, "Publishing finished.", "dropped"), 0);
    assert_eq!(
        count(&agent_log, "Publishing finished.", "left_in_spool"),
        0
    );
    let (live, _) = correlate_whole_stream(&dir, &nats.url(), "job");
    assert!(live == expected, "spooling changed the correlations");
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_full_spool_drops_counts_and_says_so() {
    let nats = NatsServer::stopped("full");
    let dir = scratch("nats-full");
    let agent = write_config(
        &dir,
        "agent.yaml",
        &nats.url(),
        &format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\n",
            kspan_recording().display()
        ),
    );
    std::fs::write(
        &agent,
        std::fs::read_to_string(&agent).expect("config") + "    spool_max_bytes: 2048\n",
    )
    .expect("config");
    let output = succeed(
        tapio()
            .args(["run", "--mode", "collectors", "--for", "1500ms", "--config"])
            .arg(&agent),
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("The spool is full"), "{log}");
    let dropped = count(&log, "Publishing finished.", "dropped");
    let spooled = count(&log, "Publishing finished.", "spooled");
    assert!(dropped > 0 && spooled > 0, "{log}");
    // Every observation of the recording (all its lines but the header) is spooled or dropped.
    let observations = std::fs::read_to_string(kspan_recording())
        .expect("recording")
        .lines()
        .count() as u64
        - 1;
    assert_eq!(dropped + spooled, observations, "{log}");
    assert!(count(&log, "Publishing finished.", "left_in_spool") <= 2048);
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_malformed_message_is_counted_skipped_and_reported_with_its_sequence() {
    let nats = NatsServer::start("malformed");
    let dir = scratch("nats-malformed");
    let recording = kspan_recording();
    let expected = reference(&recording, &[], &dir);
    // Sequence 1 is garbage on an agent's subject; the agent's 104 observations follow.
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let settings =
            tapio_sinks_nats::StreamSettings::from_config(&tapio_config::NatsConfig::default());
        tapio_sinks_nats::ensure_stream(&js, &settings)
            .await
            .expect("create the stream");
        js.publish(
            "tapio.observations.kernel.agent-1",
            "{\"kind\":\"fact\",".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    });
    succeed(
        tapio()
            .args(["run", "--mode", "collectors", "--config"])
            .arg(agent_config(&dir, &nats.url(), &recording, 0.0)),
    );
    let (live, stderr) = correlate_whole_stream(&dir, &nats.url(), "job");
    assert!(
        live == expected,
        "the malformed message changed the correlations"
    );
    let log = std::fs::read_to_string(&stderr).expect("log");
    let skipped = log
        .lines()
        .find(|line| line.contains("Skipped a malformed observation."))
        .unwrap_or_else(|| panic!("no report of the malformed message:\n{log}"));
    assert!(skipped.contains("stream_sequence=1 "), "{skipped}");
    assert_eq!(count(&log, "Source finished.", "errors"), 1);
    let (replayed, replay_log) = replay_stream(&nats.url(), &[], &dir);
    assert!(replayed == expected);
    assert!(replay_log.contains("stream_sequence=1 "), "{replay_log}");
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_mismatched_stream_is_refused_with_the_differences() {
    let nats = NatsServer::start("mismatch");
    let dir = scratch("nats-mismatch");
    succeed(
        tapio()
            .args(["run", "--mode", "collectors", "--config"])
            .arg(agent_config(&dir, &nats.url(), &kspan_recording(), 0.0)),
    );
    let config = write_config(&dir, "correlation.yaml", &nats.url(), "");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).expect("config") + "    max_age: 1h\n",
    )
    .expect("config");
    let output = tapio()
        .args(["run", "--mode", "correlation", "--for", "10s", "--config"])
        .arg(&config)
        .output()
        .expect("run tapio");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the JetStream stream `TAPIO` exists with settings")
            && stderr.contains("integrations.nats.max_age"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn transport_modes_need_a_nats_url() {
    let output = tapio()
        .args(["run", "--mode", "correlation"])
        .output()
        .expect("run tapio");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("integrations.nats.url"));
}

fn nats_config(url: &str, spool: &Path) -> tapio_config::NatsConfig {
    tapio_config::NatsConfig {
        url: url.into(),
        spool_path: spool.display().to_string(),
        ..tapio_config::NatsConfig::default()
    }
}

fn beat(upto_ns: u64) -> Observation {
    Observation::Heartbeat(Heartbeat {
        source: "kernel".into(),
        node: "agent-1".into(),
        upto_ns,
    })
}

/// Runs a publisher over `observations` (then a closed input) until it returns.
async fn publish(
    config: &tapio_config::NatsConfig,
    observations: &[Observation],
    stop_at_once: bool,
) -> PublisherReport {
    let publisher = Publisher::connect(config).await.expect("client");
    let (tx, rx) = mpsc::channel(observations.len().max(1));
    for observation in observations {
        tx.send(observation.clone()).await.expect("queue");
    }
    drop(tx);
    let shutdown = CancellationToken::new();
    if stop_at_once {
        shutdown.cancel();
    }
    publisher.run(rx, shutdown).await.expect("publisher")
}

async fn stream_messages(url: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("TAPIO").await.expect("stream");
    stream.info().await.expect("info").state.messages
}

#[test]
fn a_batch_with_a_malformed_line_delivers_the_rest_and_reports_the_line() {
    let nats = NatsServer::start("malformed-line");
    let dir = scratch("nats-malformed-line");
    let first = beat(START_NS);
    let last = beat(START_NS + 1_000_000_000);
    let payload = format!(
        "{}\n{{\"kind\":\"fact\",\n{}",
        serde_json::to_string(&first).expect("json"),
        serde_json::to_string(&last).expect("json")
    );
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let settings =
            tapio_sinks_nats::StreamSettings::from_config(&tapio_config::NatsConfig::default());
        tapio_sinks_nats::ensure_stream(&js, &settings)
            .await
            .expect("create the stream");
        js.publish("tapio.observations.kernel.agent-1", payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        // The correlation job's source, through the contract: one delivery with the two good
        // observations at its stream position, acknowledged once taken in.
        let config = tapio_config::NatsConfig {
            url: nats.url(),
            consumer: CONSUMER.into(),
            ..tapio_config::NatsConfig::default()
        };
        let source = tapio_sources_nats::consumer_from_config(&config, 0, 1).expect("source");
        let (out, mut deliveries) = mpsc::channel(16);
        let (taken_in, taken_in_rx) = watch::channel(0);
        let (unpositioned, _unpositioned) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let cx = SourceContext::new("nats", "job", unpositioned, shutdown.clone()).with_positions(
            Positions {
                out,
                taken_in: taken_in_rx,
            },
        );
        let stats = Arc::clone(&cx.stats);
        let health = Arc::clone(&cx.health);
        let reader = tokio::spawn(source.run(cx));
        let delivery = tokio::time::timeout(Duration::from_secs(30), deliveries.recv())
            .await
            .expect("a delivery in time")
            .expect("a delivery");
        assert_eq!(delivery.position, 1);
        assert_eq!(delivery.observations, vec![first, last]);
        assert_eq!(health.status(), Status::Running);
        taken_in.send(1).expect("reader listening");
        shutdown.cancel();
        reader.await.expect("reader task").expect("reader");
        assert_eq!(stats.received.load(Ordering::Relaxed), 3);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 2);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
    });
    // A replay reports the line with its stream sequence and subject.
    let (_, log) = replay_stream(&nats.url(), &[], &dir);
    let skipped = log
        .lines()
        .find(|line| line.contains("Skipped a malformed observation."))
        .unwrap_or_else(|| panic!("no report of the malformed line:\n{log}"));
    for field in [
        "stream_sequence=1 ",
        "subject=\"tapio.observations.kernel.agent-1\" ",
        "line=1 ",
    ] {
        assert!(skipped.contains(field), "{field} in {skipped}");
    }
    assert_eq!(count(&log, "Source finished.", "errors"), 1);
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_spool_left_in_the_one_observation_format_drains() {
    let nats = NatsServer::start("old-spool");
    let dir = scratch("nats-old-spool");
    let recording = kspan_recording();
    let expected = reference(&recording, &[], &dir);
    // The earlier format: every line one observation's JSON, i.e. the recording's lines.
    let text = std::fs::read_to_string(&recording).expect("recording");
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let spool = dir.join("old.spool");
    std::fs::write(&spool, lines.join("\n") + "\n").expect("write the spool");
    let report = runtime().block_on(publish(&nats_config(&nats.url(), &spool), &[], false));
    assert_eq!(report.published, lines.len() as u64, "{report:?}");
    assert_eq!((report.errors, report.left_in_spool), (0, 0), "{report:?}");
    assert_eq!(std::fs::metadata(&spool).expect("spool").len(), 0);
    let (live, _) = correlate_whole_stream(&dir, &nats.url(), "job");
    assert!(
        live == expected,
        "the drained spool changed the correlations"
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_spooled_batch_keeps_its_id_so_a_re_publish_stores_nothing_twice() {
    let mut nats = NatsServer::stopped("republish");
    let dir = scratch("nats-republish");
    let spool = dir.join("agent.spool");
    let config = nats_config(&nats.url(), &spool);
    let beats: Vec<Observation> = (0..1000).map(|i| beat(START_NS + i)).collect();
    // NATS is down: the agent spools whole messages and stops, leaving them for its next start.
    let report = runtime().block_on(publish(&config, &beats, true));
    assert_eq!((report.spooled, report.dropped), (1000, 0), "{report:?}");
    let spooled = std::fs::read(&spool).expect("spool");
    assert_eq!(report.left_in_spool, spooled.len() as u64);
    assert!(
        String::from_utf8_lossy(&spooled).starts_with(
            "#timed 256 1767225600000000000 1767225600000000255 tapio.observations.kernel.agent-1 "
        ),
        "the spool holds whole messages with their ids"
    );
    nats.restart();
    let report = runtime().block_on(publish(&config, &[], false));
    assert_eq!(
        (report.published, report.duplicates),
        (1000, 0),
        "{report:?}"
    );
    assert_eq!(report.messages, 4, "{report:?}");
    // As if the acknowledgements had been lost: the same spool is published again.
    std::fs::write(&spool, &spooled).expect("restore the spool");
    let report = runtime().block_on(publish(&config, &[], false));
    assert_eq!(
        (report.published, report.duplicates),
        (0, 1000),
        "{report:?}"
    );
    assert_eq!(runtime().block_on(stream_messages(&nats.url())), 4);
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

/// A fact of the agent's kernel source with sequence number `seq` at `time_ns`.
fn exit_fact(seq: u64, time_ns: u64) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", "agent-1", seq),
        time_ns,
        payload: FactPayload::ProcessExit(ProcessExit {
            pid: 7,
            start_ns: time_ns - 1_000_000,
            comm: "sh".into(),
            exit_code: 0,
            signal: 0,
            container_id: None,
        }),
    })
}

/// Every observation in the stream, in stream order.
async fn stream_observations(url: &str) -> Vec<Observation> {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("TAPIO").await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut observations = Vec::new();
    if last == 0 {
        return observations;
    }
    // An ordered consumer streams the messages; fetching them one request at a time took
    // seconds for the tens of thousands of small messages a steady input makes.
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(message) = messages.next().await {
        let message = message.expect("message");
        for line in tapio_sinks_nats::wire::lines(&message.payload) {
            observations.push(serde_json::from_slice(line).expect("an observation"));
        }
        if message.info().expect("info").stream_sequence >= last {
            break;
        }
    }
    observations
}

#[test]
fn a_lost_connection_stores_no_fact_behind_a_heartbeat_beyond_the_lateness() {
    // Event time runs 10 ms per step, two observations (a fact, then a heartbeat promising
    // its time) per step, 20 steps per millisecond of wall-clock time: 1024 unacknowledged
    // observations would span 5 s of event time, far beyond the lateness of 2 s.
    const STEPS: u64 = 40_000;
    const STEP_NS: u64 = 10_000_000;
    const LATENESS_NS: u64 = 2_000_000_000;
    let mut nats = NatsServer::start("lost-connection");
    let dir = scratch("nats-lost-connection");
    let config = nats_config(&nats.url(), &dir.join("agent.spool"));
    let publishing = std::thread::spawn(move || {
        runtime().block_on(async {
            let publisher = Publisher::connect(&config).await.expect("client");
            let (tx, rx) = mpsc::channel(1024);
            let run = tokio::spawn(publisher.run(rx, CancellationToken::new()));
            let started = tokio::time::Instant::now();
            for step in 0..STEPS {
                if step % 20 == 0 {
                    tokio::time::sleep_until(started + Duration::from_millis(step / 20)).await;
                }
                let time_ns = START_NS + step * STEP_NS;
                tx.send(exit_fact(step, time_ns)).await.expect("queue");
                tx.send(beat(time_ns)).await.expect("queue");
            }
            drop(tx);
            run.await.expect("publisher task").expect("publisher")
        })
    });
    // While observations stream in, the server stops reading for 5 ms (what the agent writes
    // meanwhile, fewer than `max_pending_publishes` observations, waits in the sockets), then
    // dies: those messages are lost and must be re-published, while an agent that keeps handing
    // messages to the disconnected client has them sent ahead when it reconnects. Without the
    // bound on the unacknowledged span this stored 100-140 facts up to 5.1 s behind.
    std::thread::sleep(Duration::from_millis(700));
    let pid = nats.pid().expect("running").to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stopped.expect("kill -STOP").success());
    std::thread::sleep(Duration::from_millis(5));
    nats.kill();
    std::thread::sleep(Duration::from_millis(300));
    nats.restart();
    let report = publishing.join().expect("publishing thread");
    assert!(report.spooled > 0, "the agent spooled: {report:?}");
    assert_eq!((report.dropped, report.errors), (0, 0), "{report:?}");

    let observations = runtime().block_on(stream_observations(&nats.url()));
    let mut seen = vec![false; STEPS as usize];
    let mut promised = 0;
    let mut late = Vec::new();
    for observation in &observations {
        match observation {
            Observation::Heartbeat(beat) => promised = promised.max(beat.upto_ns),
            Observation::Fact(fact) => {
                let seq = usize::try_from(fact.id.seq).expect("seq");
                assert!(!seen[seq], "fact {seq} stored twice");
                seen[seq] = true;
                if promised > fact.time_ns + LATENESS_NS {
                    late.push((seq, promised - fact.time_ns));
                }
            }
            Observation::State(_) => panic!("no state updates were published"),
        }
    }
    assert!(seen.iter().all(|seen| *seen), "every fact is stored");
    assert!(
        late.is_empty(),
        "{} facts stored behind a heartbeat more than the lateness after them, e.g. (seq, ns \
         behind) {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_publisher_that_finds_nats_up_publishes_a_full_input_without_spooling() {
    let nats = NatsServer::start("direct");
    let dir = scratch("nats-direct");
    let config = nats_config(&nats.url(), &dir.join("agent.spool"));
    // A microsecond apart: well inside the bound on the unacknowledged span.
    let observations: Vec<Observation> = (0..20_000).map(|i| beat(START_NS + i * 1_000)).collect();
    let report = runtime().block_on(async {
        let publisher = Publisher::connect(&config).await.expect("client");
        // The client connects in the background; the agent's input is full from the start.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (tx, rx) = mpsc::channel(observations.len());
        for observation in &observations {
            tx.send(observation.clone()).await.expect("queue");
        }
        drop(tx);
        publisher
            .run(rx, CancellationToken::new())
            .await
            .expect("publisher")
    });
    // The stream check runs before the input is taken, so nothing goes through the spool.
    assert_eq!(report.spooled, 0, "{report:?}");
    assert_eq!(report.published, 20_000, "{report:?}");
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn an_agent_back_from_an_outage_under_a_steady_input_returns_to_publishing_directly() {
    let mut nats = NatsServer::stopped("catch-up");
    let dir = scratch("nats-catch-up");
    let config = nats_config(&nats.url(), &dir.join("agent.spool"));
    // 50,000 observations a second for 4 s, handed over one or two at a time, with no pause in
    // which the publisher could finish a round trip to NATS with nothing new queued: well below
    // what the publisher takes, but never idle.
    let rate = 50_000u64;
    let total = 4 * rate;
    let observations: Vec<Observation> = (0..total).map(|i| beat(START_NS + i * 20_000)).collect();
    let started = std::time::SystemTime::now();
    let report = runtime().block_on(async {
        let publisher = Publisher::connect(&config).await.expect("client");
        let (tx, rx) = mpsc::channel(observations.len());
        let producer = {
            let observations = observations.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut next = 0;
                while next < observations.len() {
                    let due = (started.elapsed().as_nanos() as u64 * rate / 1_000_000_000)
                        .min(total) as usize;
                    for observation in &observations[next..due.max(next)] {
                        tx.blocking_send(observation.clone()).expect("queue");
                    }
                    next = due.max(next);
                    std::thread::yield_now();
                }
            })
        };
        let publishing = tokio::spawn(publisher.run(rx, CancellationToken::new()));
        // NATS is down for the first 300 ms: those observations go to the spool, and the rest
        // keeps arriving while it drains.
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.restart();
        let report = publishing.await.expect("task").expect("publisher");
        producer.join().expect("producer");
        report
    });
    assert_eq!(report.published, total, "{report:?}");
    assert_eq!(report.dropped, 0, "{report:?}");
    // The first message stored is the first spooled one: the moment the agent was connected
    // again, which depends on the client's reconnection backoff (0.4–1.5 s here).
    let back = runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("TAPIO").await.expect("stream");
        let first = stream.get_raw_message(1).await.expect("first message");
        let stored = std::time::SystemTime::from(first.time);
        stored.duration_since(started).unwrap_or_default()
    });
    // Once the spool is drained the rest is published directly, not through the spool: what
    // went through it was handed over before the agent was back or within a second after. An
    // earlier publisher, which decoded every spooled observation again while draining and took
    // input into the spool until the spool happened to be read to its end and acknowledged at
    // the same moment, sent 64–89% of such a run through it.
    let handed_over_by_then = (back + Duration::from_secs(1)).as_secs_f64() * rate as f64;
    assert!(
        (report.spooled as f64) < handed_over_by_then,
        "{} of {total} went through the spool, though the agent was back after {back:?}: \
         {report:?}",
        report.spooled
    );
    // In the agent's order, with nothing stored twice.
    let stored = runtime().block_on(stream_observations(&nats.url()));
    assert!(
        stored == observations,
        "the stream differs from what the agent published"
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}
