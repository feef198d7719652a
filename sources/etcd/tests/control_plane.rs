//! The etcd source on the test control plane's own etcd: a ConfigMap created, changed and
//! deleted through the real API server shows up as changes of
//! `/registry/configmaps/<namespace>/<name>`, in order.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Running, Scratch, config, key_changes};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tapio_tests::control_plane::ControlPlane;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_writes_through_the_api_server_are_seen_in_etcd() -> Result<()> {
    let plane = ControlPlane::start("etcd-source", false)?;
    let admin = tapio_tests::deploy::client(&plane, "admin").await?;
    let scratch = Scratch::new("control-plane");
    let source = Running::start(&config(&[plane.etcd_url()], &scratch.0));

    let configmaps: Api<ConfigMap> = Api::namespaced(admin, "default");
    let name = "tapio-etcd-probe";
    let created: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
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
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "changed"}})),
        )
        .await
        .context("patch the ConfigMap")?;
    configmaps
        .delete(name, &DeleteParams::default())
        .await
        .context("delete the ConfigMap")?;

    let ours = |facts: &[tapio_model::Fact]| {
        key_changes(facts)
            .into_iter()
            .filter(|(resource, namespace, object, _, _)| {
                resource == "configmaps" && namespace == "default" && object == name
            })
            .collect::<Vec<_>>()
    };
    let seen = source
        .wait_until(Duration::from_secs(30), |facts| ours(facts).len() >= 3)
        .await;
    let facts = source.stop().await;
    let changes = ours(&facts);
    ensure!(
        seen,
        "the ConfigMap's three writes were not all seen: {changes:?}"
    );
    let operations: Vec<&str> = changes.iter().map(|change| change.3).collect();
    assert_eq!(operations, ["create", "update", "delete"]);
    assert!(
        changes.windows(2).all(|pair| pair[0].4 < pair[1].4),
        "revisions increase: {changes:?}"
    );
    Ok(())
}
