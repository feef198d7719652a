//! The DNS failures incident, recorded from a real run: a real DNS server (Debian's `dnsmasq`)
//! on a loopback address, a real client (`dig`) resolving names through it, the server stopped
//! and started again, and the traffic captured on `lo` by `tcpdump`. The capture is decoded and
//! paired by `tapio-sources-dns` into `dns_query` facts; the client's TCP connects are real
//! attempts from this process (to a listener while the names resolve, to nothing once the
//! server is gone). What a cluster would add around them is written at the real times: the
//! Service and endpoint the server stands behind, its pod's container exit, readiness and
//! restart, and the client pod's container (see `tests/recordings/README.md`).
//!
//! Needs root (port 53, capturing on `lo`) and the `dnsmasq-base`, `tcpdump` and
//! `bind9-dnsutils` packages (`.ci/install`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use tapio_model::{
    ConnectOutcome, ContainerExit, ContainerReady, EntityId, Fact, FactId, FactPayload, Heartbeat,
    Observation, PodContainer, ServiceEndpoint, ServiceObject, StateObject, StateRecord,
    StateUpdate, TcpConnect,
};
use tapio_sources_dns::capture::{Pcap, segment};
use tapio_sources_dns::{Lookup, Pairer, message};

/// The DNS server's address: the cluster DNS Service's cluster IP in the recording.
pub const SERVER_IP: &str = "127.0.10.53";
/// The address the names resolve to: the client's backend.
pub const BACKEND: &str = "127.0.20.7:8080";
/// The name the client resolves.
pub const NAME: &str = "api.shop.svc.cluster.local";
/// A name the server says does not exist.
pub const MISSING: &str = "nosuch.shop.svc.cluster.local";
/// The node everything runs on.
pub const NODE: &str = "node-1";
/// The client pod and its container.
pub const CLIENT_POD: &str = "pod/shop/web-0";
/// The client container's id.
pub const CLIENT_CONTAINER: &str = "web0c0ffee";
/// The DNS server's pod.
pub const DNS_POD: &str = "pod/kube-system/coredns-0";
/// The DNS Service.
pub const DNS_SERVICE: &str = "service/kube-system/kube-dns";
/// The server container's ids before and after its restart.
pub const DNS_CONTAINERS: [&str; 2] = ["dns0dead", "dns1beef"];
/// How long the pairer waits for a response, ns.
pub const TIMEOUT_NS: u64 = 2_000_000_000;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn entity(text: &str) -> Result<EntityId> {
    text.parse().with_context(|| format!("entity `{text}`"))
}

/// A child process, killed and waited for when dropped.
struct Running(Child);

impl Running {
    /// Sends `signal` (`TERM`, `KILL`, ...) and waits for the child to end.
    fn stop(&mut self, signal: &str) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .context("run kill")?;
        ensure!(status.success(), "kill {} failed", self.0.id());
        self.0.wait().context("wait for the child")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn dnsmasq() -> Result<Running> {
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--port=53",
        ])
        .arg(format!("--listen-address={SERVER_IP}"))
        .arg("--local=/cluster.local/")
        .arg(format!(
            "--address=/{NAME}/{}",
            BACKEND.split(':').next().unwrap_or_default()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start dnsmasq (Debian package dnsmasq-base)")?;
    Ok(Running(child))
}

/// One lookup with `dig`: one try, one second.
fn dig(name: &str) -> Result<String> {
    let output = Command::new("dig")
        .arg(format!("@{SERVER_IP}"))
        .args(["-p", "53", "+tries=1", "+time=1", name, "A"])
        .output()
        .context("run dig (Debian package bind9-dnsutils)")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits until the server answers: first long enough for it to bind its socket (a lookup before
/// that would go unanswered and read as a failure), then lookup by lookup.
fn until_answering() -> Result<()> {
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..50 {
        if dig(NAME)?.contains("status: NOERROR") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("dnsmasq did not answer on {SERVER_IP}:53 within 5 s")
}

/// A TCP connect to the backend, as the client would make it: its time and outcome.
fn connect() -> (u64, SocketAddr, ConnectOutcome, i32, u64) {
    let backend: SocketAddr = BACKEND
        .parse()
        .unwrap_or_else(|_| unreachable!("a literal"));
    let start = now_ns();
    let result = TcpStream::connect_timeout(&backend, Duration::from_secs(1));
    let end = now_ns();
    match result {
        Ok(stream) => {
            let local = stream
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
            (end, local, ConnectOutcome::Established, 0, end - start)
        }
        Err(error) => {
            let outcome = match error.kind() {
                std::io::ErrorKind::ConnectionRefused => ConnectOutcome::Refused,
                std::io::ErrorKind::TimedOut => ConnectOutcome::TimedOut,
                _ => ConnectOutcome::Failed,
            };
            let local = SocketAddr::from(([127, 0, 0, 1], 0));
            (
                end,
                local,
                outcome,
                error.raw_os_error().unwrap_or(0),
                end - start,
            )
        }
    }
}

/// What happened in the run, at the times it happened.
struct Timeline {
    /// The real connects: time, local address, outcome, errno, latency.
    connects: Vec<(u64, SocketAddr, ConnectOutcome, i32, u64)>,
    /// When the server was stopped, and its exit code as a container runtime reports it.
    stopped: (u64, i32),
    /// When it was started again, and when it answered again.
    restarted: (u64, u64),
    /// When the run began and ended.
    span: (u64, u64),
}

/// Runs the incident with the capture on, and returns the capture's bytes and the timeline.
fn run(dir: &Path) -> Result<(Vec<u8>, Timeline)> {
    let pcap_path = dir.join("dns.pcap");
    let begin = now_ns();
    let mut tcpdump = Running(
        Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-Z", "root", "-w"])
            .arg(&pcap_path)
            .arg(format!("udp port 53 and host {SERVER_IP}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start tcpdump (Debian package tcpdump)")?,
    );
    let stderr = tcpdump.0.stderr.take().context("tcpdump's stderr")?;
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .context("read tcpdump's first line")?;
    ensure!(line.contains("listening on"), "tcpdump: {line}");

    let mut server = dnsmasq()?;
    until_answering()?;
    let backend = TcpListener::bind(BACKEND).context("listen as the backend")?;
    let mut connects = Vec::new();
    // Healthy: the name resolves, the backend answers; a missing name is NXDOMAIN.
    for _ in 0..3 {
        dig(NAME)?;
        connects.push(connect());
        std::thread::sleep(Duration::from_millis(300));
    }
    dig(MISSING)?;
    // The server crashes (SIGKILL); the backend's address goes with it (the client's cached
    // address no longer answers).
    let stopped_at = now_ns();
    let status = server.stop("KILL")?;
    drop(backend);
    let exit_code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });
    // Lookups go unanswered; then the client falls back on its cached address.
    for _ in 0..4 {
        dig(NAME)?;
    }
    // Past the first unanswered lookup's timeout, so the connects follow the failures.
    std::thread::sleep(Duration::from_millis(2_500));
    for _ in 0..2 {
        connects.push(connect());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The server comes back.
    let restarted_at = now_ns();
    let mut server = dnsmasq()?;
    until_answering()?;
    let answering_at = now_ns();
    for _ in 0..2 {
        dig(NAME)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.stop("TERM")?;
    // Let tcpdump take the last packets off the ring before it stops (SIGINT: it flushes and
    // closes the file).
    std::thread::sleep(Duration::from_millis(500));
    tcpdump.stop("INT")?;
    let end = now_ns();
    let bytes = std::fs::read(&pcap_path).context("read the capture")?;
    Ok((
        bytes,
        Timeline {
            connects,
            stopped: (stopped_at, exit_code),
            restarted: (restarted_at, answering_at),
            span: (begin, end),
        },
    ))
}

/// Decodes a capture into lookups, in the order they ended.
///
/// # Errors
/// When the capture is not a pcap file or a DNS message in it does not decode.
pub fn lookups(capture: &[u8]) -> Result<Vec<Lookup>> {
    let pcap = Pcap::parse(capture)?;
    let mut pairer = Pairer::new(TIMEOUT_NS);
    let mut out = Vec::new();
    let mut last = 0;
    for frame in pcap.frames() {
        let Some(found) = segment(pcap.link_type, frame.data, &[53]) else {
            continue;
        };
        let decoded = message::decode(found.message)?;
        last = frame.time_ns;
        out.extend(pairer.observe(
            frame.time_ns,
            found.source,
            found.destination,
            found.transport,
            decoded,
        ));
    }
    out.extend(pairer.expire(last.saturating_add(TIMEOUT_NS + 1)));
    out.sort_by_key(|lookup| lookup.ended_ns(TIMEOUT_NS));
    Ok(out)
}

/// Runs the incident for real and returns the recording's observations, in time order, with
/// heartbeats from every source every 500 ms until 3 s after the last observation.
///
/// # Errors
/// When a program is missing or fails, or the capture does not decode.
pub fn record() -> Result<Vec<Observation>> {
    let dir = std::env::temp_dir().join(format!("tapio-dns-incident-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (capture, timeline) = result?;
    observations(&lookups(&capture)?, &timeline)
}

fn observations(lookups: &[Lookup], timeline: &Timeline) -> Result<Vec<Observation>> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut id = |source: &str, node: &str| {
        seq += 1;
        FactId::new(source, node, seq)
    };
    let (begin, end) = timeline.span;
    let client_pod = entity(CLIENT_POD)?;
    let dns_pod = entity(DNS_POD)?;
    let service = entity(DNS_SERVICE)?;
    let endpoint = entity(&format!("endpoint/{SERVER_IP}:53"))?;
    let state =
        |out: &mut Vec<Observation>, evidence: FactId, at: u64, since: u64, diff: i8, object| {
            out.push(Observation::State(StateUpdate {
                time_ns: at,
                diff,
                record: StateRecord {
                    evidence,
                    since_ns: since,
                    object,
                },
            }));
        };
    let pod_container = |pod: &EntityId, name: &str, id: &str| {
        StateObject::PodContainer(PodContainer {
            pod: pod.clone(),
            pod_uid: format!("{}-uid", pod.to_string().replace('/', "-")),
            container_name: name.into(),
            container_id: id.into(),
        })
    };
    let endpoint_state = |ready| {
        StateObject::ServiceEndpoint(ServiceEndpoint {
            service: service.clone(),
            endpoint: endpoint.clone(),
            pod: Some(dns_pod.clone()),
            ready,
        })
    };
    // The cluster as it stood when the run began.
    for object in [
        pod_container(&client_pod, "web", CLIENT_CONTAINER),
        pod_container(&dns_pod, "dnsmasq", DNS_CONTAINERS[0]),
        StateObject::Service(ServiceObject {
            entity: service.clone(),
            uid: "kube-dns-uid".into(),
            cluster_ips: vec![SERVER_IP.into()],
        }),
    ] {
        state(
            &mut out,
            id("kubernetes", "cluster"),
            begin,
            begin,
            1,
            object,
        );
    }
    let ready_id = id("kubernetes", "cluster");
    state(
        &mut out,
        ready_id.clone(),
        begin,
        begin,
        1,
        endpoint_state(true),
    );
    // The server's container exits; the kubelet reports it not ready, the EndpointSlice
    // follows 200 ms later.
    let (stopped, exit_code) = timeline.stopped;
    out.push(Observation::Fact(Fact {
        id: id("kubelet", NODE),
        time_ns: stopped,
        payload: FactPayload::ContainerExit(ContainerExit {
            container_id: DNS_CONTAINERS[0].into(),
            container_name: "dnsmasq".into(),
            pod: Some(dns_pod.clone()),
            exit_code,
            reason: "Error".into(),
            restart_count: 1,
        }),
    }));
    out.push(Observation::Fact(Fact {
        id: id("kubelet", NODE),
        time_ns: stopped,
        payload: FactPayload::ContainerReady(ContainerReady {
            pod: dns_pod.clone(),
            container_name: "dnsmasq".into(),
            container_id: DNS_CONTAINERS[0].into(),
            ready: false,
            restart_count: 1,
        }),
    }));
    let not_ready_at = stopped + 200_000_000;
    state(
        &mut out,
        ready_id,
        not_ready_at,
        begin,
        -1,
        endpoint_state(true),
    );
    let not_ready_id = id("kubernetes", "cluster");
    state(
        &mut out,
        not_ready_id.clone(),
        not_ready_at,
        not_ready_at,
        1,
        endpoint_state(false),
    );
    // The restarted container, ready once it answers.
    let (restarted, answering) = timeline.restarted;
    state(
        &mut out,
        id("kubernetes", "cluster"),
        restarted,
        restarted,
        1,
        pod_container(&dns_pod, "dnsmasq", DNS_CONTAINERS[1]),
    );
    out.push(Observation::Fact(Fact {
        id: id("kubelet", NODE),
        time_ns: answering,
        payload: FactPayload::ContainerReady(ContainerReady {
            pod: dns_pod.clone(),
            container_name: "dnsmasq".into(),
            container_id: DNS_CONTAINERS[1].into(),
            ready: true,
            restart_count: 1,
        }),
    }));
    state(
        &mut out,
        not_ready_id,
        answering,
        not_ready_at,
        -1,
        endpoint_state(false),
    );
    state(
        &mut out,
        id("kubernetes", "cluster"),
        answering,
        answering,
        1,
        endpoint_state(true),
    );
    // The client's lookups (captured) and connects (made).
    for lookup in lookups {
        out.push(Observation::Fact(Fact {
            id: id("dns", NODE),
            time_ns: lookup.ended_ns(TIMEOUT_NS),
            payload: lookup.to_fact(TIMEOUT_NS, None, Some(CLIENT_CONTAINER.into())),
        }));
    }
    let backend: SocketAddr = BACKEND.parse()?;
    for (at, local, outcome, error, latency_ns) in &timeline.connects {
        out.push(Observation::Fact(Fact {
            id: id("kernel", NODE),
            time_ns: *at,
            payload: FactPayload::TcpConnect(TcpConnect {
                process: None,
                local: *local,
                remote: backend,
                outcome: *outcome,
                error: *error,
                latency_ns: *latency_ns,
                container_id: Some(CLIENT_CONTAINER.into()),
            }),
        }));
    }
    let last = out.iter().map(Observation::time_ns).max().unwrap_or(end) + 3_000_000_000;
    let mut beat = begin.div_ceil(500_000_000) * 500_000_000;
    while beat <= last {
        for (source, node) in [
            ("kubernetes", "cluster"),
            ("kubelet", NODE),
            ("dns", NODE),
            ("kernel", NODE),
        ] {
            out.push(Observation::Heartbeat(Heartbeat {
                source: source.into(),
                node: node.into(),
                upto_ns: beat,
            }));
        }
        beat += 500_000_000;
    }
    out.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    Ok(out)
}
