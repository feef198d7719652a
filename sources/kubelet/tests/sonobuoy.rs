//! The kubelet collector's `/pods` decoding and change detection on real recorded pod lists:
//! the two sonobuoy result tarballs in `tests/fixtures/k8s/sonobuoy/` were taken eight days
//! apart on the same cluster (results-0.10 on 2017-12-13, results-0.9 on 2017-12-21), and in
//! between two calico pods' containers restarted. The pod lists are the API server's view,
//! which has the same shape as the kubelet's own `/pods` answer (a list of core/v1 Pods).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use tapio_model::FactPayload;
use tapio_sources_kubelet::parse;

fn extract(tarball: &str) -> PathBuf {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/k8s/sonobuoy");
    // Tests run in parallel and may extract the same tarball: each extraction gets its own
    // directory, or one test's clean-up removes the other's files.
    static EXTRACTIONS: AtomicUsize = AtomicUsize::new(0);
    let extraction = EXTRACTIONS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "tapio-kubelet-{}-{extraction}-{tarball}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(fixtures.join(tarball))
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("run tar");
    assert!(status.success(), "extract {tarball}");
    dir
}

fn kube_system_pods(tarball: &str) -> parse::PodsSnapshot {
    let dir = extract(tarball);
    let body = std::fs::read(dir.join("resources/ns/kube-system/Pods.json")).unwrap();
    let snapshot = parse::pods(&body).expect("a pod list");
    std::fs::remove_dir_all(dir).unwrap();
    snapshot
}

#[test]
fn restarts_between_two_real_snapshots_become_container_exits() {
    let before = kube_system_pods("results-0.10.tar.gz");
    let after = kube_system_pods("results-0.9.tar.gz");
    assert_eq!(before.skipped, 0);
    assert_eq!(before.containers.len(), 19);
    assert_eq!(after.containers.len(), 19);

    let changes = parse::pod_changes(&before, &after);
    let mut exits: Vec<(String, String, i32, String, u32, String)> = changes
        .iter()
        .map(|(recorded, change)| match change {
            // Kubernetes records no time for a termination that the source uses.
            FactPayload::ContainerExit(exit) if recorded.is_none() => (
                exit.pod.as_ref().unwrap().to_string(),
                exit.container_name.clone(),
                exit.exit_code,
                exit.reason.clone(),
                exit.restart_count,
                exit.container_id.to_string(),
            ),
            other => panic!("only exits changed between the snapshots, got {other:?}"),
        })
        .collect();
    exits.sort();
    let ids: Vec<&str> = exits.iter().map(|exit| &exit.5[..12]).collect();
    let exits: Vec<_> = exits
        .iter()
        .map(|(pod, container, code, reason, restarts, _)| {
            (
                pod.as_str(),
                container.as_str(),
                *code,
                reason.as_str(),
                *restarts,
            )
        })
        .collect();
    assert_eq!(
        exits,
        [
            (
                "pod/kube-system/calico-node-5sgh9",
                "calico-node",
                1,
                "Error",
                3
            ),
            (
                "pod/kube-system/calico-node-5sgh9",
                "install-cni",
                1,
                "Error",
                1
            ),
            ("pod/kube-system/calico-node-fb8vk", "calico-node", 0, "", 3),
            (
                "pod/kube-system/calico-node-fb8vk",
                "install-cni",
                1,
                "Error",
                1
            ),
        ]
    );
    // The runtime scheme is stripped, as everywhere in Tapio.
    assert_eq!(
        ids,
        [
            "c1cd6292a235",
            "a21bb7fd9c6a",
            "72376464cfdf",
            "c1cbedaee7c6"
        ]
    );

    // Nothing changed from a snapshot to itself: polls that see no change send nothing.
    assert!(parse::pod_changes(&after, &after).is_empty());
    // And the first poll is a baseline.
    assert!(parse::pod_changes(&parse::PodsSnapshot::default(), &after).is_empty());
}

#[test]
fn limits_come_from_the_real_pod_specs() {
    let after = kube_system_pods("results-0.9.tar.gz");
    let limited: Vec<_> = after
        .containers
        .values()
        .filter_map(|(pod, state)| state.memory_limit.map(|limit| (pod.to_string(), limit)))
        .collect();
    assert_eq!(
        limited,
        [(
            "pod/kube-system/kube-dns-545bc4bfd4-fdgb8".to_string(),
            170 * 1024 * 1024
        )]
    );
}
