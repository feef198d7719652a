//! The live DNS collector against real parts: the eBPF capture attached to the cgroup v2 root,
//! a real `dnsmasq` serving a zone on loopback and another one inside a network namespace,
//! and real clients: `dig`, and Python calling glibc's `getaddrinfo`. Checks A, AAAA and CNAME
//! answers with their TTLs, NXDOMAIN, a timeout (a port nobody answers on), an answer over
//! TCP, a lookup through a search path folded into one, and a query from a process in
//! another network namespace attributed to its process and its container's cgroup; then
//! SERVFAIL (a real `unbound` upstream that fails), REFUSED, and a truncated UDP answer that
//! `dig` retries over TCP, each answer paired with its own query.
//!
//! Needs root, BTF, a cgroup2 mount, `dnsmasq`, `dig`, `python3` and `ip` (and `unbound` for
//! the failure test); on a machine without them the test says what is missing and passes
//! without running.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::DnsCollectorConfig;
use tapio_model::{DnsOutcome, DnsQuery, DnsRecordData, FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_dns::live::DnsSource;

const PORT: u16 = 15353;
const SILENT_PORT: u16 = 15354;
const NETNS: &str = "tapio-dnslive";
const CONTAINER: &str = "d1a5e0c0ffee0000d1a5e0c0ffee0000d1a5e0c0ffee0000d1a5e0c0ffee0000";

fn missing() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .is_some_and(|uids| uids.split_whitespace().next() == Some("0"));
    if !root {
        return Some("root".into());
    }
    for tool in ["dnsmasq", "dig", "python3", "ip"] {
        if !command_exists(tool) {
            return Some(tool.into());
        }
    }
    tapio_ebpf::dns::cgroup2_mount()
        .is_none()
        .then(|| "a cgroup2 mount".into())
}

/// Stops what it holds when dropped: processes by pid, the namespace, the cgroup.
struct Cleanup {
    children: Vec<Child>,
    cgroup: Option<PathBuf>,
    netns: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.netns {
            let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
        }
        if let Some(cgroup) = &self.cgroup {
            let _ = std::fs::remove_dir(cgroup);
            // The pod and the slices above it, when empty.
            let mut dir = cgroup.parent();
            for _ in 0..3 {
                let Some(d) = dir else { break };
                let _ = std::fs::remove_dir(d);
                dir = d.parent();
            }
        }
    }
}

/// A real dnsmasq on 127.0.0.1:`port` (inside `netns` when given) with no upstream and no
/// hosts file of its own, serving what `records` (more dnsmasq arguments) say; its pid file
/// is `scratch/<port>.pid`.
fn dnsmasq(netns: Option<&str>, port: u16, scratch: &std::path::Path, records: &[&str]) -> Child {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dnsmasq"]);
            c
        }
        None => Command::new("dnsmasq"),
    };
    command
        .args([
            "--keep-in-foreground",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            &format!(
                "--pid-file={}",
                scratch.join(format!("{port}.pid")).display()
            ),
            "--log-facility=-",
        ])
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq")
}

/// The zone both servers of the capture test serve.
const TEST_ZONE: &[&str] = &[
    "--local=/test.local/",
    "--host-record=api.test.local,10.96.0.5,fd00::5,120",
    "--cname=www.test.local,api.test.local,60",
    "--host-record=svc.default.svc.test.local,10.96.0.9",
];

fn wait_for_answer(netns: Option<&str>, server: &str, port: u16) {
    for _ in 0..100 {
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "dig"]);
                command
            }
            None => Command::new("dig"),
        };
        let out = command
            .args([
                &format!("@{server}"),
                "-p",
                &port.to_string(),
                "+short",
                "+tries=1",
                "+time=1",
                "api.test.local",
            ])
            .output()
            .expect("dig");
        if String::from_utf8_lossy(&out.stdout).contains("10.96.0.5") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("dnsmasq on {server}:{port} never answered");
}

fn dig(args: &[&str]) -> String {
    let out = Command::new("dig").args(args).output().expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lookups(seen: &[Observation]) -> Vec<DnsQuery> {
    seen.iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => match &fact.payload {
                FactPayload::DnsQuery(query) => Some(query.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_lookups_of_every_outcome_are_captured_paired_and_attributed() {
    if let Some(what) = missing() {
        eprintln!("skipped: the live DNS test needs {what}");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("tapio-dnslive-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut cleanup = Cleanup {
        children: Vec::new(),
        cgroup: None,
        netns: false,
    };

    // A namespace with its own loopback, its own dnsmasq, and a kubelet-like cgroup for the
    // client that runs in it.
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", NETNS])
            .status()
            .expect("ip")
            .success()
    );
    cleanup.netns = true;
    assert!(
        Command::new("ip")
            .args(["-n", NETNS, "link", "set", "lo", "up"])
            .status()
            .expect("ip")
            .success()
    );
    let unified = tapio_ebpf::dns::cgroup2_mount().expect("cgroup2");
    let cgroup = unified.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f6a_7b8c_9d0e_1f2a3b4c5d6e.slice/cri-containerd-{CONTAINER}.scope"
    ));
    std::fs::create_dir_all(&cgroup).expect("create the container's cgroup");
    cleanup.cgroup = Some(cgroup.clone());

    cleanup
        .children
        .push(dnsmasq(None, PORT, &scratch, TEST_ZONE));
    cleanup
        .children
        .push(dnsmasq(Some(NETNS), 53, &scratch, TEST_ZONE));
    wait_for_answer(None, "127.0.0.1", PORT);
    wait_for_answer(Some(NETNS), "127.0.0.1", 53);

    let config = DnsCollectorConfig {
        enabled: true,
        ports: vec![PORT, SILENT_PORT, 53],
        timeout: Duration::from_millis(500),
        search_window: Duration::from_millis(500),
        ..DnsCollectorConfig::default()
    };
    let source = DnsSource::new(&config);
    let stats = source.stats();
    let (cx, mut rx) = SourceContext::for_test("dns", "node-1", 4096);
    let shutdown = cx.shutdown.clone();
    let task = tokio::spawn(Box::new(source).run(cx));
    for _ in 0..200 {
        if stats.ready.load(Ordering::Relaxed) || task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !stats.ready.load(Ordering::Relaxed) {
        panic!("the capture did not attach: {:?}", task.await);
    }

    let at = |port: u16| format!("-p{port}");
    let server = "@127.0.0.1";
    tokio::task::spawn_blocking(move || {
        // A and AAAA, a CNAME, NXDOMAIN, over TCP, and a query nobody answers.
        assert!(dig(&[server, &at(PORT), "+short", "api.test.local"]).contains("10.96.0.5"));
        assert!(dig(&[server, &at(PORT), "+short", "AAAA", "api.test.local"]).contains("fd00::5"));
        assert!(dig(&[server, &at(PORT), "www.test.local"]).contains("CNAME"));
        assert!(dig(&[server, &at(PORT), "nosuch.test.local"]).contains("NXDOMAIN"));
        assert!(
            dig(&[server, &at(PORT), "+tcp", "+short", "api.test.local"]).contains("10.96.0.5")
        );
        dig(&[
            server,
            &at(SILENT_PORT),
            "+tries=1",
            "+time=1",
            "silent.test.local",
        ]);
    })
    .await
    .expect("clients");

    // glibc's getaddrinfo through a search path, from a process in the other namespace and in
    // the container's cgroup: `svc.default` is tried as svc.default.nope.test.local
    // (NXDOMAIN), then svc.default.svc.test.local (answered).
    let resolv = scratch.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\nsearch nope.test.local svc.test.local\noptions ndots:5 attempts:1 timeout:1\n",
    )
    .expect("resolv.conf");
    let script = scratch.join("lookup.py");
    std::fs::write(
        &script,
        "import socket\n\
         print(socket.getaddrinfo('svc.default', 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])\n",
    )
    .expect("lookup.py");
    // The shell joins the cgroup before it enters the namespace (where /sys is the
    // namespace's own and the cgroup mounts are not visible); its children inherit both.
    let inside = format!(
        "mount --bind {resolv} /etc/resolv.conf && dig @127.0.0.1 +short api.test.local && \
         python3 {script}",
        resolv = resolv.display(),
        script = script.display(),
    );
    let client = format!(
        "echo $$ > {procs} && exec ip netns exec {NETNS} sh -c '{inside}'",
        procs = cgroup.join("cgroup.procs").display(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .args(["-c", &client])
            .output()
            .expect("client in the namespace")
    })
    .await
    .expect("client");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("10.96.0.5") && printed.contains("10.96.0.9"),
        "{out:?}"
    );

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    shutdown.cancel();
    let mut seen = Vec::new();
    while let Some(observation) = rx.recv().await {
        seen.push(observation);
    }
    task.await.expect("join").expect("the source ran");
    let all = lookups(&seen);
    let find = |name: &str, qtype: u16, port: u16| -> Vec<&DnsQuery> {
        all.iter()
            .filter(|q| q.name == name && q.qtype == qtype && q.server.port() == port)
            .collect()
    };

    let a = find("api.test.local", 1, PORT);
    // dig over UDP and over TCP (one query each: the TCP one is its own lookup).
    assert_eq!(a.len(), 2, "{all:#?}");
    let first = a[0];
    assert_eq!(first.outcome, DnsOutcome::Answered);
    assert_eq!(first.answers, ["10.96.0.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(first.records[0].ttl, 120);
    let me = first.process.as_ref().expect("the querying process");
    assert!(me.pid > 0 && me.start_ns > 0, "{me:?}");
    let aaaa = find("api.test.local", 28, PORT);
    assert_eq!(aaaa[0].answers, ["fd00::5".parse::<IpAddr>().unwrap()]);
    let cname = find("www.test.local", 1, PORT);
    assert!(
        cname[0].records.iter().any(|r| r.name == "www.test.local"
            && r.ttl == 60
            && r.data == DnsRecordData::Cname("api.test.local".into())),
        "{cname:#?}"
    );
    assert_eq!(cname[0].answers, ["10.96.0.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        find("nosuch.test.local", 1, PORT)[0].outcome,
        DnsOutcome::NxDomain
    );
    let silent = find("silent.test.local", 1, SILENT_PORT);
    assert_eq!(silent.len(), 1, "{all:#?}");
    assert_eq!(
        (silent[0].outcome, silent[0].rcode, silent[0].latency_ns),
        (DnsOutcome::TimedOut, None, 500_000_000)
    );

    // The lookups from the other namespace carry the process and its container.
    let contained: Vec<&DnsQuery> = all
        .iter()
        .filter(|q| q.container_id.as_deref() == Some(CONTAINER))
        .collect();
    assert!(
        contained.iter().any(|q| q.name == "api.test.local"
            && q.outcome == DnsOutcome::Answered
            && q.server.port() == 53
            && q.process.as_ref().is_some_and(|p| p.pid > 0)),
        "{all:#?}"
    );
    // getaddrinfo's search for `svc.default`: one lookup, svc.default.svc.test.local, with
    // the NXDOMAIN of svc.default.nope.test.local folded into it.
    let svc: Vec<&&DnsQuery> = contained
        .iter()
        .filter(|q| q.name.starts_with("svc.default") && q.qtype == 1)
        .collect();
    assert_eq!(svc.len(), 1, "{svc:#?}");
    assert_eq!(svc[0].name, "svc.default.svc.test.local");
    assert_eq!(svc[0].answers, ["10.96.0.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(svc[0].outcome, DnsOutcome::Answered);
    assert_eq!(svc[0].search_expansions, 1);
    assert!(stats.search_expansions.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    drop(cleanup);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The front server of the failure test: dnsmasq, forwarding `broken.test.local` upstream.
const FRONT_PORT: u16 = 15363;
/// Its upstream for `broken.test.local`: unbound, which forwards the zone to a server that
/// refuses it and so answers SERVFAIL.
const UPSTREAM_PORT: u16 = 15364;
/// The server unbound forwards to: dnsmasq with no upstream of its own, which refuses.
const REFUSING_PORT: u16 = 15365;
/// Addresses of `big.test.local`: 40 A records make a 672-byte answer, over the 512 bytes a
/// UDP answer without EDNS may carry.
const BIG: usize = 40;

fn command_exists(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// SERVFAIL and REFUSED answers, and a truncated UDP answer that the client retries over TCP:
/// a real dnsmasq forwards a zone to a real unbound whose own upstream refuses it (unbound
/// answers SERVFAIL, which dnsmasq passes on), refuses a name it has no server for, and
/// serves a name with more addresses than a 512-byte answer holds. `dig` without EDNS gets
/// the truncated answer (TC set, 30 of the 40 addresses) and asks again over TCP. Each query
/// is paired with its own response: the UDP one with the truncated answer, the TCP one with
/// the whole answer, and none is left unmatched or timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_refused_and_tcp_fallback_on_truncation_are_paired() {
    if let Some(what) = missing().or_else(|| (!command_exists("unbound")).then(|| "unbound".into()))
    {
        eprintln!("skipped: the live DNS failure test needs {what}");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("tapio-dnsfail-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut cleanup = Cleanup {
        children: Vec::new(),
        cgroup: None,
        netns: false,
    };
    // dnsmasq reads its hosts file after dropping to `nobody`.
    let hosts = scratch.join("big.hosts");
    let lines: String = (1..=BIG)
        .map(|i| format!("10.0.1.{i} big.test.local\n"))
        .collect();
    std::fs::write(&hosts, lines).expect("hosts file");
    let unbound_conf = scratch.join("unbound.conf");
    std::fs::write(
        &unbound_conf,
        format!(
            "server:\n    interface: 127.0.0.1@{UPSTREAM_PORT}\n    do-daemonize: no\n    \
             username: \"\"\n    chroot: \"\"\n    directory: \"{dir}\"\n    \
             pidfile: \"{dir}/unbound.pid\"\n    use-syslog: no\n    logfile: \"\"\n    \
             access-control: 127.0.0.0/8 allow\n    do-ip6: no\n    \
             do-not-query-localhost: no\n    local-zone: \".\" refuse\n    \
             local-zone: \"broken.test.local.\" transparent\n\
             forward-zone:\n    name: \"broken.test.local.\"\n    \
             forward-addr: 127.0.0.1@{REFUSING_PORT}\n\
             remote-control:\n    control-enable: no\n",
            dir = scratch.display()
        ),
    )
    .expect("unbound.conf");
    let quiet = |command: &mut Command| -> Child {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a DNS server")
    };
    // The server unbound forwards to refuses: it has no upstream of its own.
    cleanup
        .children
        .push(dnsmasq(None, REFUSING_PORT, &scratch, &[]));
    cleanup.children.push(quiet(
        Command::new("unbound").args(["-c", &unbound_conf.to_string_lossy()]),
    ));
    let hosts_file = format!("--addn-hosts={}", hosts.display());
    let upstream = format!("--server=/broken.test.local/127.0.0.1#{UPSTREAM_PORT}");
    cleanup.children.push(dnsmasq(
        None,
        FRONT_PORT,
        &scratch,
        &[
            "--local=/test.local/",
            "--host-record=api.test.local,10.96.0.5",
            &hosts_file,
            &upstream,
        ],
    ));
    wait_for_answer(None, "127.0.0.1", FRONT_PORT);
    let upstream_ready = (0..100).any(|_| {
        let answer = dig(&[
            "@127.0.0.1",
            &format!("-p{UPSTREAM_PORT}"),
            "+tries=1",
            "+time=1",
            "ready.broken.test.local",
        ]);
        let ready = answer.contains("SERVFAIL");
        if !ready {
            std::thread::sleep(Duration::from_millis(50));
        }
        ready
    });
    assert!(upstream_ready, "unbound never answered");

    let config = DnsCollectorConfig {
        enabled: true,
        ports: vec![FRONT_PORT, UPSTREAM_PORT],
        timeout: Duration::from_millis(1_000),
        search_window: Duration::from_millis(200),
        ..DnsCollectorConfig::default()
    };
    let source = DnsSource::new(&config);
    let stats = source.stats();
    let (cx, mut rx) = SourceContext::for_test("dns", "node-1", 4096);
    let shutdown = cx.shutdown.clone();
    let task = tokio::spawn(Box::new(source).run(cx));
    for _ in 0..200 {
        if stats.ready.load(Ordering::Relaxed) || task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !stats.ready.load(Ordering::Relaxed) {
        panic!("the capture did not attach: {:?}", task.await);
    }

    let front = format!("-p{FRONT_PORT}");
    let printed = tokio::task::spawn_blocking(move || {
        let servfail = dig(&["@127.0.0.1", &front, "+tries=1", "x.broken.test.local"]);
        let refused = dig(&["@127.0.0.1", &front, "+tries=1", "outside.example"]);
        // No EDNS: the answer may carry 512 bytes, so it comes truncated and dig asks again
        // over TCP.
        let big = dig(&["@127.0.0.1", &front, "+noedns", "big.test.local"]);
        (servfail, refused, big)
    })
    .await
    .expect("clients");
    assert!(printed.0.contains("status: SERVFAIL"), "{}", printed.0);
    assert!(printed.1.contains("status: REFUSED"), "{}", printed.1);
    assert!(
        printed.2.contains("Truncated, retrying in TCP mode") && printed.2.contains("(TCP)"),
        "{}",
        printed.2
    );

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    shutdown.cancel();
    let mut seen = Vec::new();
    while let Some(observation) = rx.recv().await {
        seen.push(observation);
    }
    task.await.expect("join").expect("the source ran");
    let all = lookups(&seen);
    let find = |name: &str, port: u16| -> Vec<&DnsQuery> {
        all.iter()
            .filter(|q| q.name == name && q.qtype == 1 && q.server.port() == port)
            .collect()
    };

    // dig's lookup through dnsmasq failed with SERVFAIL ...
    let failed = find("x.broken.test.local", FRONT_PORT);
    assert_eq!(failed.len(), 1, "{all:#?}");
    assert_eq!(
        (failed[0].outcome, failed[0].rcode),
        (DnsOutcome::ServFail, Some(2))
    );
    assert!(failed[0].answers.is_empty());
    let dig_process = failed[0].process.as_ref().expect("dig's process");
    // ... because dnsmasq's own lookup upstream did: that one is dnsmasq's.
    let upstream = find("x.broken.test.local", UPSTREAM_PORT);
    assert_eq!(upstream.len(), 1, "{all:#?}");
    assert_eq!(upstream[0].outcome, DnsOutcome::ServFail);
    let forwarder = upstream[0].process.as_ref().expect("dnsmasq's process");
    assert_eq!(forwarder.comm, "dnsmasq");
    assert_ne!(forwarder.pid, dig_process.pid);

    let refused = find("outside.example", FRONT_PORT);
    assert_eq!(refused.len(), 1, "{all:#?}");
    assert_eq!(
        (refused[0].outcome, refused[0].rcode),
        (DnsOutcome::Refused, Some(5))
    );

    // The truncated UDP answer and the whole TCP answer, each paired with its own query from
    // the same process.
    let mut big = find("big.test.local", FRONT_PORT);
    big.sort_by_key(|q| q.answers.len());
    assert_eq!(big.len(), 2, "{all:#?}");
    let (udp, tcp) = (big[0], big[1]);
    for lookup in [udp, tcp] {
        assert_eq!(
            (lookup.outcome, lookup.rcode),
            (DnsOutcome::Answered, Some(0))
        );
        assert!(lookup.latency_ns < 1_000_000_000, "{lookup:?}");
    }
    assert!(
        !udp.answers.is_empty() && udp.answers.len() < BIG,
        "{udp:?}"
    );
    assert_eq!(tcp.answers.len(), BIG, "{tcp:?}");
    let expected: std::collections::BTreeSet<IpAddr> = (1..=BIG)
        .map(|i| format!("10.0.1.{i}").parse().expect("address"))
        .collect();
    assert_eq!(
        tcp.answers
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    assert_ne!(udp.client.port(), tcp.client.port());
    let pid = |lookup: &DnsQuery| lookup.process.as_ref().map(|p| p.pid);
    assert!(pid(udp).is_some_and(|pid| pid > 0), "{udp:?}");
    assert_eq!(pid(udp), pid(tcp));
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 0, "{all:#?}");
    assert_eq!(stats.unmatched_responses.load(Ordering::Relaxed), 0);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    drop(cleanup);
    let _ = std::fs::remove_dir_all(&scratch);
}
