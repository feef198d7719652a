//! The etcd collector on the test control plane's own etcd: a ConfigMap created, changed and
//! deleted through the real API server shows up as changes of
//! `/registry/configmaps/<namespace>/<name>`, in order, with increasing revisions.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tapio_config::EtcdCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_etcd::EtcdSource;
use tapio_tests::control_plane::ControlPlane;

use crate::support::scratch;

const NAME: &str = "tapio-etcd-probe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_writes_through_the_api_server_are_seen_in_etcd() -> Result<()> {
    let plane = ControlPlane::start("etcd-source", false)?;
    let admin = tapio_tests::deploy::client(&plane, "admin").await?;
    let dir = scratch("etcd-source");
    let config = EtcdCollectorConfig {
        enabled: true,
        endpoints: vec![plane.etcd_url()],
        ca_file: String::new(),
        cert_file: String::new(),
        key_file: String::new(),
        revision_file: dir.join("etcd.revision").display().to_string(),
        probe_interval: Duration::from_secs(1),
        ..EtcdCollectorConfig::default()
    };
    let (cx, mut rx) = SourceContext::for_test("etcd", "cp-1", 1024);
    let shutdown = cx.shutdown.clone();
    let source = tokio::spawn(Box::new(EtcdSource::new(&config)).run(cx));
    // The watch has started once the first revision is kept.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("etcd.revision").exists() {
        ensure!(Instant::now() < deadline, "the etcd watch did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let configmaps: Api<ConfigMap> = Api::namespaced(admin, "default");
    let created: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME},
        "data": {"k": "v"},
    }))?;
    // The API server listens before it answers; retry the create for a while.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match configmaps.create(&PostParams::default(), &created).await {
            Ok(_) => break,
            Err(error) => {
                ensure!(
                    Instant::now() < deadline,
                    "cannot create the ConfigMap: {error}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    configmaps
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "changed"}})),
        )
        .await
        .context("patch the ConfigMap")?;
    configmaps
        .delete(NAME, &DeleteParams::default())
        .await
        .context("delete the ConfigMap")?;

    let mut changes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while changes.len() < 3 {
        let Ok(Some(observation)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        if let Observation::Fact(fact) = observation
            && let FactPayload::EtcdKeyChange(change) = fact.payload
            && change.resource == "configmaps"
            && change.namespace == "default"
            && change.name == NAME
        {
            changes.push((change.operation.as_str(), change.revision));
        }
    }
    shutdown.cancel();
    source.await?.context("the etcd source")?;
    let _ = std::fs::remove_dir_all(&dir);
    let operations: Vec<&str> = changes.iter().map(|change| change.0).collect();
    assert_eq!(operations, ["create", "update", "delete"], "{changes:?}");
    assert!(
        changes.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "revisions increase: {changes:?}"
    );
    Ok(())
}
