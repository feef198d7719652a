//! The live DNS collector against real parts: the eBPF capture attached to the cgroup v2 root,
//! a real `dnsmasq` serving a zone on loopback and another one inside a network namespace,
//! and real clients: `dig`, and Python calling glibc's `getaddrinfo`. Checks A, AAAA and CNAME
//! answers with their TTLs, NXDOMAIN, a timeout (a port nobody answers on), an answer over
//! TCP, a lookup through a search path folded into one, and a query from a process in
//! another network namespace attributed to its process and its container's cgroup.
//!
//! Needs root, BTF, a cgroup2 mount, `dnsmasq`, `dig`, `python3` and `ip`; on a machine
//! without them the test says what is missing and passes without running.

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
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
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

fn dnsmasq(netns: Option<&str>, address: &str, port: u16, scratch: &std::path::Path) -> Child {
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
            &format!("--listen-address={address}"),
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local=/test.local/",
            "--host-record=api.test.local,10.96.0.5,fd00::5,120",
            "--cname=www.test.local,api.test.local,60",
            "--host-record=svc.default.svc.test.local,10.96.0.9",
            &format!(
                "--pid-file={}",
                scratch.join(format!("{port}.pid")).display()
            ),
            "--log-facility=-",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq")
}

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
        .push(dnsmasq(None, "127.0.0.1", PORT, &scratch));
    cleanup
        .children
        .push(dnsmasq(Some(NETNS), "127.0.0.1", 53, &scratch));
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
