//! The kubernetes collector against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler built from the `k8s.io/kubernetes` Go module, see
//! `tests/control_plane.rs`).
//!
//! A real Deployment is rolled out: the controller manager creates its ReplicaSet and Pods, the
//! scheduler binds them to a registered Node, and the test drives the pods' status through the
//! API the way a kubelet would (running, ready, with container ids). The source watches as the
//! `tapio` user, which only the shipped RBAC (`sources/kubernetes/rbac.yaml`) authorizes. After
//! every step the records the source has inserted and not retracted must equal, exactly, what
//! its converter makes of a fresh list of the cluster: nothing lost, nothing duplicated, nothing
//! stale. What it sent is then replayed through the `tapio` binary, which must produce the
//! ownership chains and retract them as the rollout is scaled down and deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tapio_model::recording::RecordingWriter;
use tapio_model::{CorrelationKind, FactPayload, Observation, StateObject, StateRecord};
use tapio_sources::{Source, SourceContext, SourceStats};
use tapio_sources_kubernetes::{KubernetesSource, WatchStats, WatchedKind};
use tapio_tests::control_plane::ControlPlane;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{current, replay, scratch};

type Result<T> = anyhow::Result<T>;

pub(crate) async fn client(plane: &ControlPlane, user: &str) -> Result<Client> {
    tapio_tests::deploy::client(plane, user).await
}

/// Waits until the API server answers lists (it listens before it is ready).
pub(crate) async fn wait_ready(admin: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let nodes: Api<Node> = Api::all(admin.clone());
        let services: Api<Service> = Api::namespaced(admin.clone(), "default");
        let ready = nodes.list(&ListParams::default()).await.is_ok()
            && services
                .get_opt("kubernetes")
                .await
                .is_ok_and(|service| service.is_some());
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the API server never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies the shipped RBAC, then binds its ClusterRole to the test's `tapio` token user too.
pub(crate) async fn apply_rbac(admin: &Client) -> Result<()> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let text =
        std::fs::read_to_string(tapio_tests::repo_root().join("sources/kubernetes/rbac.yaml"))?;
    let create = PostParams::default();
    for document in text.split("\n---\n") {
        let value: serde_json::Value = serde_saphyr::from_str(document)?;
        match value["kind"].as_str() {
            Some("Namespace") => {
                Api::<Namespace>::all(admin.clone())
                    .create(&create, &serde_json::from_value(value)?)
                    .await?;
            }
            Some("ServiceAccount") => {
                Api::<ServiceAccount>::namespaced(admin.clone(), "tapio")
                    .create(&create, &serde_json::from_value(value)?)
                    .await?;
            }
            Some("ClusterRole") => {
                Api::<ClusterRole>::all(admin.clone())
                    .create(&create, &serde_json::from_value(value)?)
                    .await?;
            }
            Some("ClusterRoleBinding") => {
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .create(&create, &serde_json::from_value(value)?)
                    .await?;
            }
            other => anyhow::bail!("unexpected kind {other:?} in rbac.yaml"),
        }
    }
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "tapio-collectors-test-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tapio-collectors"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tapio"}]
    });
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(&create, &serde_json::from_value(binding)?)
        .await?;
    Ok(())
}

/// Registers a Ready node with room for pods, as a kubelet would.
async fn register_node(admin: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(admin.clone());
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    nodes
        .create(&PostParams::default(), &serde_json::from_value(node)?)
        .await?;
    let status = json!({"status": {
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet"},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // The TaintNodesByCondition admission taints a new node not-ready until a kubelet reports
    // in; the status above is that report, so lift the taint as the node controller would.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": null}})),
        )
        .await?;
    Ok(())
}

/// Marks every bound pod that has no container status yet as running and ready, with a
/// container id derived from its uid: what the kubelet reports once the runtime started it.
/// Confirms the deletion of pods being deleted, as the kubelet does once they stopped.
async fn drive_pods(admin: &Client, namespace: &str) -> Result<usize> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let mut driven = 0;
    for pod in pods.list(&ListParams::default()).await? {
        let bound = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_ref())
            .is_some();
        let started = pod
            .status
            .as_ref()
            .and_then(|status| status.container_statuses.as_ref())
            .is_some_and(|statuses| !statuses.is_empty());
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            // A kubelet stops the containers, then confirms the deletion with grace 0.
            let confirm = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..kube::api::DeleteParams::default()
            };
            if let Err(error) = pods.delete(&name, &confirm).await
                && !matches!(&error, kube::Error::Api(status) if status.code == 404)
            {
                return Err(error.into());
            }
            continue;
        }
        if !bound || started {
            continue;
        }
        let uid = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_default()
            .replace('-', "");
        let now = "2026-01-01T00:00:00Z";
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1", "podIP": "10.244.0.7",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}],
            "containerStatuses": [{
                "name": "app", "image": "registry.local/app:1", "imageID": "",
                "containerID": format!("containerd://{uid}{uid}"),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}}}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        driven += 1;
    }
    Ok(driven)
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}}}
    }))?)
}

/// What the converter makes of a fresh list of every watched kind: the records the source's
/// inserted-and-not-retracted set must equal.
async fn expected(admin: &Client) -> Result<BTreeSet<StateObject>> {
    async fn all<K>(admin: &Client, out: &mut BTreeSet<StateObject>) -> Result<()>
    where
        K: WatchedKind + kube::Resource<DynamicType = ()>,
    {
        for object in Api::<K>::all(admin.clone())
            .list(&ListParams::default())
            .await?
        {
            out.extend(object.records()?);
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    all::<Pod>(admin, &mut out).await?;
    all::<ReplicaSet>(admin, &mut out).await?;
    all::<Deployment>(admin, &mut out).await?;
    all::<StatefulSet>(admin, &mut out).await?;
    all::<DaemonSet>(admin, &mut out).await?;
    all::<Job>(admin, &mut out).await?;
    all::<Service>(admin, &mut out).await?;
    all::<EndpointSlice>(admin, &mut out).await?;
    all::<Node>(admin, &mut out).await?;
    Ok(out)
}

/// The running source and everything it sent so far.
struct Watching {
    rx: mpsc::Receiver<Observation>,
    seen: Vec<Observation>,
    records: BTreeMap<StateRecord, i64>,
    stats: Arc<SourceStats>,
    watch: Arc<WatchStats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::result::Result<(), tapio_sources::SourceError>>,
}

impl Watching {
    fn start(plane: &ControlPlane) -> Watching {
        Watching::start_with_kubeconfig(&plane.kubeconfig("tapio"))
    }

    fn start_with_kubeconfig(kubeconfig: &std::path::Path) -> Watching {
        let config = tapio_config::KubernetesCollectorConfig {
            enabled: true,
            kubeconfig: kubeconfig.display().to_string(),
            ..tapio_config::KubernetesCollectorConfig::default()
        };
        let source = KubernetesSource::new(&config, Duration::from_millis(100));
        let watch = source.watch_stats();
        let (cx, rx) = SourceContext::for_test("kubernetes", "cluster", 100_000);
        let stats = Arc::clone(&cx.stats);
        let shutdown = cx.shutdown.clone();
        let task = tokio::spawn(Box::new(source).run(cx));
        Watching {
            rx,
            seen: Vec::new(),
            records: BTreeMap::new(),
            stats,
            watch,
            shutdown,
            task,
        }
    }

    fn take(&mut self, observation: Observation) {
        if let Observation::State(update) = &observation {
            *self.records.entry(update.record.clone()).or_default() += i64::from(update.diff);
        }
        self.seen.push(observation);
    }

    /// The objects currently inserted; panics on a record inserted twice, retracted more often
    /// than inserted, or two live records for the same object (a duplicate).
    fn live(&self) -> BTreeSet<StateObject> {
        let mut live = BTreeSet::new();
        for (record, count) in &self.records {
            assert!(
                *count == 0 || *count == 1,
                "record counted {count} times: {record:?}"
            );
            if *count == 1 {
                assert!(
                    live.insert(record.object.clone()),
                    "two live records for {:?}",
                    record.object
                );
            }
        }
        live
    }

    /// Receives until the live set equals a fresh list of the cluster (re-checked while
    /// `drive` keeps pods moving), or fails after `within`.
    async fn converge(
        &mut self,
        admin: &Client,
        namespace: &str,
        within: Duration,
    ) -> Result<BTreeSet<StateObject>> {
        let deadline = Instant::now() + within;
        loop {
            drive_pods(admin, namespace).await?;
            let pause = tokio::time::sleep(Duration::from_millis(300));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    item = self.rx.recv() => match item {
                        Some(observation) => self.take(observation),
                        None => anyhow::bail!("the source stopped"),
                    },
                }
            }
            let want = expected(admin).await?;
            let live = self.live();
            if live == want {
                return Ok(live);
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = want.difference(&live).collect();
                let stale: Vec<_> = live.difference(&want).collect();
                anyhow::bail!(
                    "no convergence within {within:?}: missing {missing:#?}, stale {stale:#?}"
                );
            }
        }
    }

    async fn stop(self) -> Vec<Observation> {
        self.shutdown.cancel();
        let mut seen = self.seen;
        let mut rx = self.rx;
        while let Ok(Some(observation)) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
        {
            seen.push(observation);
        }
        self.task
            .await
            .expect("join")
            .expect("the source ends cleanly");
        seen
    }
}

fn pods_of(live: &BTreeSet<StateObject>, prefix: &str) -> Vec<String> {
    live.iter()
        .filter_map(|object| match object {
            StateObject::Workload(workload) => Some(workload.entity.to_string()),
            _ => None,
        })
        .filter(|entity| entity.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_scale_down_restart_and_delete_against_a_real_control_plane() -> Result<()> {
    let mut plane = ControlPlane::start("rollout", true)?;
    let admin = client(&plane, "admin").await?;
    wait_ready(&admin).await?;
    apply_rbac(&admin).await?;
    register_node(&admin, "node-1").await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");

    let mut watching = Watching::start(&plane);
    let initial = watching
        .converge(&admin, "default", Duration::from_secs(60))
        .await?;
    assert!(
        initial.iter().any(|object| matches!(object, StateObject::NodeCondition(c)
            if c.node.to_string() == "node/node-1" && c.condition == "Ready" && c.status == tapio_model::ConditionStatus::True)),
        "{initial:#?}"
    );
    assert!(
        initial
            .iter()
            .any(|object| matches!(object, StateObject::Service(s)
            if s.entity.to_string() == "service/default/kubernetes")),
        "{initial:#?}"
    );

    // Roll out: Deployment -> ReplicaSet -> 3 Pods, each with a running container.
    deployments
        .create(&PostParams::default(), &deployment("web", 3)?)
        .await?;
    let mut live = watching
        .converge(&admin, "default", Duration::from_secs(120))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pods_of(&live, "pod/default/web-").len() < 3
        || live
            .iter()
            .filter(|object| matches!(object, StateObject::PodContainer(c) if c.pod.to_string().starts_with("pod/default/web-")))
            .count()
            < 3
    {
        anyhow::ensure!(Instant::now() < deadline, "pods never ran: {live:#?}");
        live = watching.converge(&admin, "default", Duration::from_secs(60)).await?;
    }
    let first_pods = pods_of(&live, "pod/default/web-");

    // Status churn that changes no record emits nothing.
    let before = watching
        .seen
        .iter()
        .filter(|o| matches!(o, Observation::State(_)))
        .count();
    let churn = json!({"metadata": {"annotations": {"tapio.test/churn": "1"}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&churn))
        .await?;
    watching
        .converge(&admin, "default", Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watching
        .converge(&admin, "default", Duration::from_secs(30))
        .await?;
    let after = watching
        .seen
        .iter()
        .filter(|o| matches!(o, Observation::State(_)))
        .count();
    assert_eq!(
        before, after,
        "an annotation changed no record, yet state was sent"
    );

    // Scale down: two pods go, and so do their records.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pods_of(&live, "pod/default/web-").len() != 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "scale-down never finished: {live:#?}"
        );
        live = watching
            .converge(&admin, "default", Duration::from_secs(60))
            .await?;
    }

    // Restart the API server mid-watch, and change the cluster as soon as it is back, before
    // the watches resume: nothing may be lost or duplicated, and nothing stale may remain.
    let relists = watching
        .watch
        .relists
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::task::block_in_place(|| plane.restart_apiserver())?;
    wait_ready(&admin).await?;
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while pods_of(&live, "pod/default/web-").len() != 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "scale-up after restart never finished: {live:#?}"
        );
        live = watching
            .converge(&admin, "default", Duration::from_secs(120))
            .await?;
    }
    let watch_errors = watching
        .watch
        .watch_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(watch_errors > 0, "the restart must have broken the watches");
    eprintln!(
        "apiserver restart: {watch_errors} watch errors, {} re-lists after it",
        watching
            .watch
            .relists
            .load(std::sync::atomic::Ordering::Relaxed)
            - relists
    );

    // Delete the Deployment: the garbage collector removes its ReplicaSet and Pods, and every
    // record of the rollout is retracted.
    deployments.delete("web", &Default::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        live = watching
            .converge(&admin, "default", Duration::from_secs(120))
            .await?;
        let left = live.iter().any(|object| match object {
            StateObject::Workload(workload) => workload.entity.to_string().contains("/web"),
            StateObject::PodContainer(container) => container.pod.to_string().contains("/web"),
            _ => false,
        });
        if !left {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "deletion never finished: {live:#?}"
        );
    }
    let stats = watching.stats.snapshot();
    assert_eq!(stats.errors, 0, "{stats:?}");
    let seen = watching.stop().await;

    // Events about the rollout arrived as facts, each once per (count, last time).
    let events: Vec<_> = seen
        .iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => match &fact.payload {
                FactPayload::KubeEvent(event) => Some(event),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(
        events
            .iter()
            .any(|event| event.reason == "ScalingReplicaSet"
                && event.involved.to_string() == "deployment/default/web"),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|event| event.reason == "SuccessfulCreate"
            && event
                .involved
                .to_string()
                .starts_with("replicaset/default/web-")),
        "{events:#?}"
    );
    let mut once = BTreeSet::new();
    for event in &events {
        assert!(
            once.insert((
                event.involved.clone(),
                event.reason.clone(),
                event.message.clone(),
                event.count,
                event.last_ns
            )),
            "an Event was sent twice: {event:?}"
        );
    }

    // Replay what the source sent through the tapio binary: ownership chains for the first
    // pods' containers appeared, and all of them are retracted at the end.
    let dir = scratch("kubernetes-live");
    let path = dir.join("live.jsonl");
    let mut writer = RecordingWriter::new(std::fs::File::create(&path)?)?;
    for observation in &seen {
        writer.write(observation)?;
    }
    writer.flush()?;
    drop(writer);
    let (changes, _) = replay(&path, &[], "kubernetes-live-replay");
    for pod in &first_pods {
        let chain = changes
            .iter()
            .find(|change| {
                change.diff == 1
                    && change.correlation.kind == CorrelationKind::Ownership
                    && change.correlation.chain.len() == 4
                    && change.correlation.chain[1].entity.to_string() == *pod
            })
            .unwrap_or_else(|| {
                panic!("no container -> pod -> replicaset -> deployment chain for {pod}")
            });
        let hops: Vec<String> = chain
            .correlation
            .chain
            .iter()
            .map(|hop| hop.entity.to_string())
            .collect();
        assert!(hops[0].starts_with("container/"), "{hops:?}");
        assert!(hops[2].starts_with("replicaset/default/web-"), "{hops:?}");
        assert_eq!(hops[3], "deployment/default/web");
    }
    let end = current(&changes);
    assert!(
        !end.iter()
            .any(|correlation| correlation.root_cause.to_string() == "deployment/default/web"),
        "chains of the deleted rollout are still current: {end:#?}"
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_objects_are_counted_and_skipped() -> Result<()> {
    let plane = ControlPlane::start("unexpected", false)?;
    let admin = client(&plane, "admin").await?;
    wait_ready(&admin).await?;
    apply_rbac(&admin).await?;
    let mut watching = Watching::start(&plane);
    watching
        .converge(&admin, "default", Duration::from_secs(60))
        .await?;

    // An Event about a kind Tapio has no entity for, then one about a Pod.
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    for (kind, name) in [("ConfigMap", "settings"), ("Pod", "web-1")] {
        let event = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.1"), "namespace": "default"},
            "involvedObject": {"kind": kind, "name": name, "namespace": "default"},
            "reason": "Tested", "message": format!("about a {kind}"), "type": "Normal",
            "source": {"component": "tapio-test"}, "count": 1,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"});
        events
            .create(&PostParams::default(), &serde_json::from_value(event)?)
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let fact = loop {
        anyhow::ensure!(Instant::now() < deadline, "the Pod event never arrived");
        match tokio::time::timeout(Duration::from_secs(1), watching.rx.recv()).await {
            Ok(Some(observation)) => {
                if let Observation::Fact(fact) = &observation
                    && let FactPayload::KubeEvent(event) = &fact.payload
                    && event.reason == "Tested"
                {
                    break event.clone();
                }
                watching.take(observation);
            }
            Ok(None) => anyhow::bail!("the source stopped"),
            Err(_) => {}
        }
    };
    assert_eq!(fact.involved.to_string(), "pod/default/web-1");
    assert_eq!(fact.message, "about a Pod");
    let stats = watching.stats.snapshot();
    assert_eq!(stats.errors, 1, "the ConfigMap event is counted: {stats:?}");
    // The source goes on after it: it still converges on the cluster.
    watching
        .converge(&admin, "default", Duration::from_secs(60))
        .await?;
    watching.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tapio_run_with_the_kubernetes_collector_reports_ownership() -> Result<()> {
    let plane = ControlPlane::start("tapio-run", false)?;
    let admin = client(&plane, "admin").await?;
    wait_ready(&admin).await?;
    apply_rbac(&admin).await?;
    let dir = scratch("kubernetes-run");
    let config = dir.join("tapio.yaml");
    std::fs::write(
        &config,
        format!(
            "node_name: test-node\ncollectors:\n  kernel:\n    enabled: false\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\n    namespaces: [default]\n",
            plane.kubeconfig("tapio").display()
        ),
    )?;
    let out = dir.join("out.jsonl");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tapio"))
        .env("TAPIO_API_ADDRESS", "127.0.0.1:0")
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--for")
        .arg("20s")
        .arg("--output")
        .arg(&out)
        .env("TAPIO_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()?;

    // A ReplicaSet and a Pod it controls, created directly (no controller manager runs here).
    let replicasets: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    let replicaset: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "api-1"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/api:1"}]}}}
    }))?;
    let replicaset = replicasets
        .create(&PostParams::default(), &replicaset)
        .await?;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api-1-x", "labels": {"app": "other"}, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-1",
            "uid": replicaset.metadata.uid, "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "registry.local/api:1"}]}
    }))?;
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await?;

    let output = tokio::time::timeout(Duration::from_secs(120), run.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tapio run failed:\n{stderr}");
    let changes = crate::support::read_changes(&out);
    let chain = current(&changes)
        .into_iter()
        .find(|correlation| {
            correlation.kind == CorrelationKind::Ownership
                && correlation.chain[0].entity.to_string() == "pod/default/api-1-x"
        })
        .unwrap_or_else(|| panic!("no ownership chain for the pod in {changes:#?}\n{stderr}"));
    assert_eq!(chain.root_cause.to_string(), "replicaset/default/api-1");
    assert!(
        chain.chain[0]
            .fact_id
            .to_string()
            .starts_with("kubernetes/cluster/")
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// Whether a watch of pods from `resource_version` is refused as expired (410 Gone).
async fn expired(admin: &Client, resource_version: &str) -> Result<bool> {
    use futures_util::StreamExt;
    let pods: Api<Pod> = Api::all(admin.clone());
    let params = kube::api::WatchParams::default().timeout(5);
    match pods.watch(&params, resource_version).await {
        Err(kube::Error::Api(status)) => Ok(status.code == 410),
        Err(error) => Err(error.into()),
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let kube::api::WatchEvent::Error(status) = event? {
                    return Ok(status.code == 410);
                }
            }
            Ok(false)
        }
    }
}

/// The source watches through a TCP proxy. Its connections are cut mid-watch, with changes made
/// while it cannot reconnect; then cut and held long enough that the API server (watching etcd
/// directly, compacting every second) has forgotten the resource versions the watches would
/// resume from, so they end in 410 Gone and re-list. After each fault the source's live records
/// equal a fresh list of the cluster: nothing lost, nothing duplicated, nothing stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_expired_watches_end_with_the_same_state() -> Result<()> {
    let plane = ControlPlane::start_with_apiserver_args(
        "cut-watch",
        &["--watch-cache=false", "--etcd-compaction-interval=1s"],
    )?;
    let admin = client(&plane, "admin").await?;
    wait_ready(&admin).await?;
    apply_rbac(&admin).await?;
    register_node(&admin, "node-1").await?;
    let proxy = tapio_tests::proxy::TcpProxy::start(plane.port)?;
    let dir = scratch("kubernetes-cut");
    let kubeconfig = dir.join("tapio.kubeconfig");
    std::fs::write(
        &kubeconfig,
        std::fs::read_to_string(plane.kubeconfig("tapio"))?.replace(
            &format!("127.0.0.1:{}", plane.port),
            &format!("127.0.0.1:{}", proxy.port),
        ),
    )?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let mut watching = Watching::start_with_kubeconfig(&kubeconfig);
    deployments
        .create(&PostParams::default(), &deployment("web", 3)?)
        .await?;
    let mut live = watching
        .converge(&admin, "default", Duration::from_secs(120))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pods_of(&live, "pod/default/web-").len() < 3 {
        anyhow::ensure!(Instant::now() < deadline, "pods never ran: {live:#?}");
        live = watching
            .converge(&admin, "default", Duration::from_secs(60))
            .await?;
    }
    assert!(
        proxy.open_connections() > 0,
        "the source does not use the proxy"
    );
    let service = |name: &str| -> Result<Service> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))?)
    };

    // 1. Cut mid-watch; the cluster changes while the source cannot reconnect.
    let errors = watching
        .watch
        .watch_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    proxy.hold(true);
    proxy.cut();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await?;
    services
        .create(&PostParams::default(), &service("cut")?)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.hold(false);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        live = watching
            .converge(&admin, "default", Duration::from_secs(120))
            .await?;
        let has_service = live.iter().any(|object| {
            matches!(object, StateObject::Service(s)
            if s.entity.to_string() == "service/default/cut")
        });
        if pods_of(&live, "pod/default/web-").len() == 2 && has_service {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cut changes never arrived: {live:#?}"
        );
    }
    let after_cut = watching
        .watch
        .watch_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after_cut > errors, "the cut must have broken the watches");

    // 2. Cut and hold until the resource versions the watches hold are compacted away.
    let relists = watching
        .watch
        .relists
        .load(std::sync::atomic::Ordering::Relaxed);
    let before: Api<Pod> = Api::all(admin.clone());
    let version = before
        .list_metadata(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    proxy.hold(true);
    proxy.cut();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await?;
    services.delete("cut", &Default::default()).await?;
    services
        .create(&PostParams::default(), &service("expired")?)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !expired(&admin, &version).await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "resource version {version} never expired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.hold(false);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        live = watching
            .converge(&admin, "default", Duration::from_secs(120))
            .await?;
        let services: Vec<String> = live
            .iter()
            .filter_map(|object| match object {
                StateObject::Service(s) => Some(s.entity.to_string()),
                _ => None,
            })
            .collect();
        if pods_of(&live, "pod/default/web-").len() == 1
            && services.contains(&"service/default/expired".to_string())
            && !services.contains(&"service/default/cut".to_string())
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the expired changes never arrived: {live:#?}"
        );
    }
    let relisted = watching
        .watch
        .relists
        .load(std::sync::atomic::Ordering::Relaxed)
        - relists;
    assert!(relisted > 0, "expired watches must re-list");
    eprintln!(
        "cut: {} watch errors; expiry: {relisted} re-lists",
        after_cut - errors
    );
    watching.stop().await;
    drop(proxy);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
