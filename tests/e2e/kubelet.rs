//! The kubelet collector against a real kubelet (built from `k8s.io/kubernetes` with the control
//! plane, `tests/control_plane.rs`), which registers its node with the API server, runs on a
//! private containerd, and authenticates and authorizes every request through the API server:
//! the collector's token is the `tapio` user's, which only `sources/kubernetes/rbac.yaml` grants
//! `nodes/proxy` (`/pods`) and `nodes/stats` (`/stats/summary`).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tapio_config::KubeletCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources_kubelet::KubeletSource;
use tapio_tests::control_plane::{BUSYBOX_IMAGE, ControlPlane};

use crate::kubernetes::{apply_rbac, client, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_a_real_kubelet_over_tls_with_an_rbac_token() -> anyhow::Result<()> {
    let plane = ControlPlane::start("kubelet", false)?;
    let admin = client(&plane, "admin").await?;
    wait_ready(&admin).await?;
    apply_rbac(&admin).await?;
    let kubelet = tokio::task::block_in_place(|| plane.start_kubelet("node-kl"))?;
    let nodes: Api<Node> = Api::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    while nodes.get_opt("node-kl").await?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the kubelet never registered; see {}",
            kubelet.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let pki = plane.dir().join("pki");
    let source = kubelet_source(&settings(kubelet.port, &pki, 90));
    let (seen, stats) =
        tapio_sources::run_for_test(Box::new(source), "node-kl", Duration::from_secs(6)).await?;
    // Every poll read both endpoints and both parsed: TLS verified against the cluster CA, the
    // token authenticated by TokenReview, RBAC allowed nodes/proxy and nodes/stats.
    assert!(
        stats.received >= 6,
        "{stats:?}; see {}",
        kubelet.dir().display()
    );
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(
        stats.received % 2,
        0,
        "{stats:?}: a /stats/summary read failed"
    );
    let heartbeats = seen
        .iter()
        .filter(|observation| matches!(observation, Observation::Heartbeat(h) if h.source == "kubelet" && h.node == "node-kl"))
        .count();
    assert!(heartbeats >= 10, "{heartbeats} heartbeats in 6 s");

    // A pod whose container exits with code 3 after a second, on the kubelet's node (host
    // network: the node has no CNI). The kubelet restarts it; the collector reports the exit.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crasher"},
        "spec": {"nodeName": "node-kl", "hostNetwork": true, "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "sleep 1; exit 3"]}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    // A pod with a container that, after 8 s, fills 24 MiB of tmpfs charged to its 32 MiB
    // limit (75%, above the 70% threshold below), and a container the kernel OOM-kills
    // (64 MiB into a 16 MiB limit).
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hog"},
        "spec": {"nodeName": "node-kl", "hostNetwork": true, "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "grow", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "resources": {"limits": {"memory": "32Mi"}},
                    "command": ["/bin/sh", "-c", "sleep 8; head -c 24m /dev/zero > /dev/shm/fill; sleep 1000"]},
                {"name": "oom", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "resources": {"limits": {"memory": "16Mi"}},
                    "command": ["/bin/sh", "-c", "sleep 2; head -c 64m /dev/zero | tail"]}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let source = kubelet_source(&settings(kubelet.port, &pki, 70));
    let (seen, stats) =
        tapio_sources::run_for_test(Box::new(source), "node-kl", Duration::from_secs(40)).await?;
    // The growth crossed 70% of the limit once, read from /stats/summary against the pod spec.
    let usage: Vec<_> = seen
        .iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => match &fact.payload {
                FactPayload::ResourceUsage(usage) => Some(usage.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let grow: Vec<_> = usage
        .iter()
        .filter(|usage| usage.container_name == "grow")
        .collect();
    assert_eq!(
        grow.len(),
        1,
        "{usage:#?}\n/stats/summary now: {}",
        summary_now(kubelet.port, &pki)
    );
    assert_eq!(grow[0].pod.to_string(), "pod/default/hog");
    assert_eq!(
        (
            grow[0].resource.as_str(),
            grow[0].limit,
            grow[0].threshold_percent,
            grow[0].above
        ),
        ("memory", 32 << 20, 70, true)
    );
    assert!(grow[0].used >= 24 << 20, "{:?}", grow[0]);
    let exits: Vec<_> = seen
        .iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => match &fact.payload {
                FactPayload::ContainerExit(exit) => Some(exit.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(
        !exits.is_empty(),
        "no container exit reported ({stats:?}); see {}",
        kubelet.dir().display()
    );
    // The kernel's OOM kill, as the kubelet reports it: 137, OOMKilled.
    let oom = exits
        .iter()
        .find(|exit| exit.container_name == "oom")
        .unwrap_or_else(|| panic!("no OOM kill reported: {exits:#?}"));
    assert_eq!(
        oom.pod.as_ref().map(ToString::to_string).as_deref(),
        Some("pod/default/hog")
    );
    assert_eq!((oom.exit_code, oom.reason.as_str()), (137, "OOMKilled"));
    let exits: Vec<_> = exits
        .into_iter()
        .filter(|exit| {
            exit.pod
                .as_ref()
                .is_some_and(|pod| pod.to_string() == "pod/default/crasher")
        })
        .collect();
    anyhow::ensure!(!exits.is_empty(), "no exit of the crasher");
    let exit = &exits[0];
    assert_eq!(
        exit.pod.as_ref().map(ToString::to_string).as_deref(),
        Some("pod/default/crasher")
    );
    assert_eq!(exit.container_name, "app");
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.reason, "Error");
    assert!(
        exit.restart_count >= 1 && exit.container_id.len() == 64,
        "{exit:?}"
    );
    // Each termination is reported once.
    let mut ids: Vec<&str> = exits.iter().map(|exit| &*exit.container_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), exits.len(), "{exits:#?}");

    // Without the RBAC grant the kubelet refuses the same token: the manifest is what matters.
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin.clone());
    bindings
        .delete("tapio-collectors-test-user", &Default::default())
        .await?;
    let source = kubelet_source(&settings(kubelet.port, &pki, 90));
    // The kubelet caches authorization decisions for 1 s (its configuration); wait it out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, stats) =
        tapio_sources::run_for_test(Box::new(source), "node-kl", Duration::from_secs(4)).await?;
    assert_eq!(
        stats.received, 0,
        "the kubelet served a token RBAC no longer allows: {stats:?}"
    );
    drop(kubelet);
    Ok(())
}

/// The kubelet's `/stats/summary` pod section read with curl, for a failure message.
fn summary_now(port: u16, pki: &std::path::Path) -> String {
    let token = std::fs::read_to_string(pki.join("tapio.token")).unwrap_or_default();
    let output = std::process::Command::new("curl")
        .args(["-sk", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!(
            "https://127.0.0.1:{port}/stats/summary?only_cpu_and_memory=true"
        ))
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(error) => format!("curl failed: {error}"),
    }
}

/// The collector's settings for the test kubelet: verified TLS, the `tapio` user's token, a
/// poll a second.
fn settings(
    port: u16,
    pki: &std::path::Path,
    usage_threshold_percent: u8,
) -> KubeletCollectorConfig {
    KubeletCollectorConfig {
        enabled: true,
        url: format!("https://127.0.0.1:{port}"),
        token_path: pki.join("tapio.token").display().to_string(),
        ca_path: pki.join("ca.crt").display().to_string(),
        insecure_skip_tls_verify: false,
        poll_interval: Duration::from_secs(1),
        usage_threshold_percent,
    }
}

/// A kubelet source for the test kubelet, with a heartbeat every 100 ms.
fn kubelet_source(settings: &KubeletCollectorConfig) -> KubeletSource {
    KubeletSource::new(settings, Duration::from_millis(100))
}
