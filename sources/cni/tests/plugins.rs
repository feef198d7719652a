//! `tapio-cni` with the real Debian CNI plugins (bridge, host-local, loopback), adding and
//! deleting pods in `ip netns` namespaces, with the agent's source receiving the reports.
//! Needs root (namespaces, links) and containernetworking-plugins.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{Agent, Call, Fixture, PLUGINS, invoke, single, tapio_cni, with_prev, wrapped};
use serde_json::{Value, json};
use tapio_model::{CniCommand, EntityId, Observation, StateObject};

/// A result with what differs from one run to the next blanked: MAC addresses (random per
/// veth) and namespace paths.
fn normalized(result: &Value) -> Value {
    let mut result = result.clone();
    if let Some(interfaces) = result["interfaces"].as_array_mut() {
        for interface in interfaces {
            if interface.get("mac").is_some() {
                interface["mac"] = json!("mac");
            }
            if interface.get("sandbox").is_some() {
                interface["sandbox"] = json!("netns");
            }
            if interface["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("veth"))
            {
                interface["name"] = json!("veth");
            }
        }
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_checked_and_deleted_is_reported_with_its_addresses() {
    let mut fixture = Fixture::new();
    let mut agent = Agent::start(&fixture.socket()).await;
    let netns = fixture.netns();
    let call = Call {
        container: "sandbox-web",
        netns: &netns,
        ifname: "eth0",
        pod: ("shop", "web-0"),
    };
    let lo = Call {
        ifname: "lo",
        ..call.clone()
    };
    let loopback = wrapped("lo", &[json!({"type": "loopback"})], &fixture.socket());
    let podnet = wrapped(
        "podnet",
        &[fixture.bridge_conf(231, 10, 20, "ipam")],
        &fixture.socket(),
    );

    let up = invoke(&tapio_cni(), "ADD", &lo, &loopback);
    assert_eq!(up.status, 0, "{}", String::from_utf8_lossy(&up.stdout));
    let added = invoke(&tapio_cni(), "ADD", &call, &podnet);
    assert_eq!(
        added.status,
        0,
        "{}",
        String::from_utf8_lossy(&added.stdout)
    );
    let result = added.json();
    let address = result["ips"][0]["address"].as_str().expect("an address");
    assert!(address.starts_with("10.231.0."), "{result}");
    assert_eq!(
        Fixture::addresses(&netns, "eth0"),
        [address.to_string()],
        "the address the result gives is the one the pod's interface holds"
    );
    let checked = invoke(&tapio_cni(), "CHECK", &call, &with_prev(&podnet, &result));
    assert_eq!(
        checked.status,
        0,
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let deleted = invoke(&tapio_cni(), "DEL", &call, &with_prev(&podnet, &result));
    assert_eq!(
        deleted.status,
        0,
        "{}",
        String::from_utf8_lossy(&deleted.stdout)
    );
    assert!(
        Fixture::addresses(&netns, "eth0").is_empty(),
        "DEL removed eth0"
    );

    let operations = agent.operations(4).await;
    let summary: Vec<(CniCommand, &str, bool)> = operations
        .iter()
        .map(|op| (op.command, op.network.as_str(), op.error.is_none()))
        .collect();
    assert_eq!(
        summary,
        [
            (CniCommand::Add, "lo", true),
            (CniCommand::Add, "podnet", true),
            (CniCommand::Check, "podnet", true),
            (CniCommand::Del, "podnet", true),
        ]
    );
    let add = &operations[1];
    let pod: EntityId = "pod/shop/web-0".parse().expect("entity");
    assert_eq!(add.pod.as_ref(), Some(&pod));
    assert_eq!(add.pod_uid.as_deref(), Some("uid-web-0"));
    assert_eq!(&*add.container_id, "sandbox-web");
    assert_eq!(add.netns, netns);
    assert_eq!(add.ips.len(), 1);
    assert_eq!(add.ips[0].address, address);
    assert_eq!(add.ips[0].interface.as_deref(), Some("eth0"));
    assert!(
        add.interfaces
            .iter()
            .any(|interface| interface.name == fixture.bridge),
        "{add:?}"
    );
    assert!(add.duration_ns > 0, "wrap mode times the operation");
    assert_eq!(operations[0].ips[0].address, "127.0.0.1/8");

    // The ADD mapped the pod's address, the DEL unmapped it.
    let ip = address.split('/').next().expect("ip");
    let mapped: Vec<(i8, &str)> = agent
        .seen
        .iter()
        .filter_map(|observation| match observation {
            Observation::State(update) => match &update.record.object {
                StateObject::PodAddress(held) if held.ip == ip => {
                    assert_eq!(held.pod, pod);
                    Some((update.diff, held.interface.as_str()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(mapped, [(1, "eth0"), (-1, "eth0")]);
    assert_eq!(agent.stats.snapshot().errors, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_add_answers_as_the_plugin_did_and_is_reported_with_its_error() {
    let mut fixture = Fixture::new();
    let mut agent = Agent::start(&fixture.socket()).await;
    // One address to hand out: the second pod finds the range exhausted.
    let bridge = fixture.bridge_conf(232, 10, 10, "ipam");
    let podnet = wrapped("podnet", std::slice::from_ref(&bridge), &fixture.socket());
    let first_ns = fixture.netns();
    let first = Call {
        container: "sandbox-a",
        netns: &first_ns,
        ifname: "eth0",
        pod: ("shop", "a"),
    };
    assert_eq!(invoke(&tapio_cni(), "ADD", &first, &podnet).status, 0);
    let second_ns = fixture.netns();
    let second = Call {
        container: "sandbox-b",
        netns: &second_ns,
        ifname: "eth0",
        pod: ("shop", "b"),
    };
    let through_tapio = invoke(&tapio_cni(), "ADD", &second, &podnet);
    let third_ns = fixture.netns();
    let third = Call {
        container: "sandbox-c",
        netns: &third_ns,
        ifname: "eth0",
        pod: ("shop", "c"),
    };
    let bridge_alone = invoke(
        &std::path::Path::new(PLUGINS).join("bridge"),
        "ADD",
        &third,
        &single("podnet", &bridge),
    );
    assert_ne!(through_tapio.status, 0);
    assert_eq!(through_tapio.status, bridge_alone.status);
    assert_eq!(
        String::from_utf8_lossy(&through_tapio.stdout),
        String::from_utf8_lossy(&bridge_alone.stdout),
        "the failure is the plugin's, byte for byte"
    );

    // A configuration the bridge plugin rejects.
    let mut bad = fixture.bridge_conf(233, 10, 20, "bad");
    bad["ipam"]["ranges"][0][0]["subnet"] = json!("10.233.0.0/99");
    let bad_through_tapio = invoke(
        &tapio_cni(),
        "ADD",
        &third,
        &wrapped("badnet", std::slice::from_ref(&bad), &fixture.socket()),
    );
    let bad_alone = invoke(
        &std::path::Path::new(PLUGINS).join("bridge"),
        "ADD",
        &third,
        &single("badnet", &bad),
    );
    assert_ne!(bad_through_tapio.status, 0);
    assert_eq!(bad_through_tapio.status, bad_alone.status);
    assert_eq!(bad_through_tapio.stdout, bad_alone.stdout);

    let operations = agent.operations(3).await;
    assert_eq!(operations.len(), 3, "{operations:?}");
    let exhausted = &operations[1];
    assert_eq!(exhausted.command, CniCommand::Add);
    assert_eq!(exhausted.pod, Some("pod/shop/b".parse().expect("entity")));
    let error = exhausted.error.as_ref().expect("the ADD failed");
    assert_eq!(error.plugin, "bridge");
    assert_eq!(error.code, 999);
    assert!(
        error.message.contains("no IP addresses available"),
        "{error:?}"
    );
    assert!(exhausted.ips.is_empty());
    let rejected = operations[2].error.as_ref().expect("the bad ADD failed");
    assert_eq!(operations[2].network, "badnet");
    assert_eq!(rejected.plugin, "bridge");
    assert!(!rejected.message.is_empty());
    // Only the one successful ADD mapped an address.
    let inserted = agent
        .seen
        .iter()
        .filter(|observation| {
            matches!(observation, Observation::State(update)
                if update.diff == 1 && matches!(update.record.object, StateObject::PodAddress(_)))
        })
        .count();
    assert_eq!(inserted, 1);
    agent.stop().await;
}

#[test]
fn with_the_agent_down_an_add_answers_exactly_as_without_the_plugin() {
    let mut fixture = Fixture::new();
    let socket = fixture.socket();
    assert!(!socket.exists(), "nobody listens");
    let netns = fixture.netns();
    let call = Call {
        container: "sandbox-down",
        netns: &netns,
        ifname: "eth0",
        pod: ("shop", "down"),
    };
    // loopback's result depends only on the namespace: byte for byte the same.
    let lo = Call {
        ifname: "lo",
        ..call.clone()
    };
    let loopback = json!({"type": "loopback"});
    let alone = invoke(
        &std::path::Path::new(PLUGINS).join("loopback"),
        "ADD",
        &lo,
        &single("lo", &loopback),
    );
    let through_tapio = invoke(
        &tapio_cni(),
        "ADD",
        &lo,
        &wrapped("lo", std::slice::from_ref(&loopback), &socket),
    );
    assert_eq!(alone.status, 0);
    assert_eq!(through_tapio.status, 0);
    assert_eq!(through_tapio.stdout, alone.stdout);

    // bridge + host-local, each from an empty lease store of the same one-address range: the
    // same result but for the random MACs and the names of the namespace and veth.
    let alone = invoke(
        &std::path::Path::new(PLUGINS).join("bridge"),
        "ADD",
        &call,
        &single("podnet", &fixture.bridge_conf(234, 10, 10, "alone")),
    );
    let other_ns = fixture.netns();
    let other = Call {
        netns: &other_ns,
        container: "sandbox-down-2",
        ..call.clone()
    };
    let through_tapio = invoke(
        &tapio_cni(),
        "ADD",
        &other,
        &wrapped(
            "podnet",
            &[fixture.bridge_conf(234, 10, 10, "wrapped")],
            &socket,
        ),
    );
    assert_eq!(
        alone.status,
        0,
        "{}",
        String::from_utf8_lossy(&alone.stdout)
    );
    assert_eq!(through_tapio.status, 0);
    assert_eq!(normalized(&through_tapio.json()), normalized(&alone.json()));
    assert_eq!(
        Fixture::addresses(&other_ns, "eth0"),
        ["10.234.0.10/24".to_string()]
    );
    assert!(
        through_tapio.took < Duration::from_secs(2),
        "a missing agent costs no wait: {:?}",
        through_tapio.took
    );
}

#[test]
fn an_agent_that_does_not_read_delays_an_add_by_at_most_the_report_timeout() {
    let mut fixture = Fixture::new();
    let socket = fixture.socket();
    // Bound, never read: its queue fills and the plugin's sends time out.
    let _stuck = UnixDatagram::bind(&socket).expect("bind");
    let netns = fixture.netns();
    let lo = Call {
        container: "sandbox-stuck",
        netns: &netns,
        ifname: "lo",
        pod: ("shop", "stuck"),
    };
    let loopback = json!({"type": "loopback"});
    let reference = invoke(
        &std::path::Path::new(PLUGINS).join("loopback"),
        "ADD",
        &lo,
        &single("lo", &loopback),
    );
    let conf = wrapped("lo", std::slice::from_ref(&loopback), &socket);
    // More ADDs than the socket queues (net.unix.max_dgram_qlen, 10 by default).
    for _ in 0..16 {
        let answer = invoke(&tapio_cni(), "ADD", &lo, &conf);
        assert_eq!(answer.status, 0);
        assert_eq!(answer.stdout, reference.stdout);
        // 50 ms of report timeout, and the plugins' own run time.
        assert!(answer.took < Duration::from_secs(2), "{:?}", answer.took);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_last_plugin_of_a_list_it_passes_the_previous_result_through_unchanged() {
    let mut fixture = Fixture::new();
    let mut agent = Agent::start(&fixture.socket()).await;
    let netns = fixture.netns();
    let call = Call {
        container: "sandbox-chained",
        netns: &netns,
        ifname: "eth0",
        pod: ("shop", "chained"),
    };
    // The runtime runs bridge, then tapio-cni with bridge's result as prevResult.
    let bridge = invoke(
        &std::path::Path::new(PLUGINS).join("bridge"),
        "ADD",
        &call,
        &single("podnet", &fixture.bridge_conf(235, 10, 20, "ipam")),
    );
    assert_eq!(bridge.status, 0);
    let prev: Value = bridge.json();
    let chained = json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "type": "tapio-cni",
        "socket": fixture.socket(),
    });
    let conf = format!(
        "{},\"prevResult\":{}}}",
        serde_json::to_string(&chained)
            .expect("json")
            .trim_end_matches('}'),
        String::from_utf8_lossy(&bridge.stdout)
    );
    let answer = invoke(&tapio_cni(), "ADD", &call, conf.as_bytes());
    assert_eq!(answer.status, 0);
    assert_eq!(
        answer.stdout, bridge.stdout,
        "the previous result, byte for byte"
    );
    let deleted = invoke(
        &tapio_cni(),
        "DEL",
        &call,
        &with_prev(conf.as_bytes(), &prev),
    );
    assert_eq!(deleted.status, 0);
    assert!(deleted.stdout.is_empty());

    let operations = agent.operations(2).await;
    assert_eq!(operations.len(), 2);
    assert_eq!(operations[0].command, CniCommand::Add);
    assert_eq!(
        operations[0].ips[0].address,
        prev["ips"][0]["address"].as_str().expect("address")
    );
    assert_eq!(operations[0].duration_ns, 0, "chained mode does not time");
    assert_eq!(operations[1].command, CniCommand::Del);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_counted_and_skipped() {
    let fixture = Fixture::new();
    let mut agent = Agent::start(&fixture.socket()).await;
    let sender = UnixDatagram::unbound().expect("socket");
    for bad in [
        &b"not json"[..],
        br#"{"version":9,"command":"ADD"}"#,
        br#"{"version":1,"command":"VERSION","network":"n","container_id":"c","netns":"","ifname":"","args":"","ended_ns":1700000000000000000,"duration_ns":0,"result":null,"error":null}"#,
        br#"{"version":1,"command":"ADD","network":"n","container_id":"c","netns":"","ifname":"","args":"","ended_ns":5,"duration_ns":0,"result":null,"error":null}"#,
    ] {
        sender.send_to(bad, fixture.socket()).expect("send");
    }
    sender
        .send_to(
            br#"{"version":1,"command":"DEL","network":"n","container_id":"c","netns":"","ifname":"eth0","args":"","ended_ns":1700000000000000000,"duration_ns":3,"result":null,"error":null}"#,
            fixture.socket(),
        )
        .expect("send");
    let operations = agent.operations(1).await;
    assert_eq!(operations.len(), 1);
    assert_eq!(operations[0].command, CniCommand::Del);
    let stats = agent.stats.snapshot();
    assert_eq!(stats.received, 5);
    assert_eq!(stats.errors, 4);
    agent.stop().await;
}
