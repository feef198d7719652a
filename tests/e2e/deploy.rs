//! The Helm chart (`charts/tapio`) and the container image, with real parts: Helm built from
//! the `helm.sh/helm/v4` Go module (`.ci/install` puts it in `target/helm/helm`), the `tapio`
//! binary's own `config check` on every rendered configuration, and the tests' real control
//! plane and kubelet (`tests/control_plane.rs`).
//!
//! - [`chart_lints_renders_valid_configurations_and_refuses_nonsense`]: `helm lint`, `helm
//!   template` in both modes, what the manifests promise (no Secret written, least privilege,
//!   read-only host paths), and values that make no sense failing with a message naming them.
//! - [`chart_installs_on_a_real_cluster`]: every rendered manifest accepted by the API server
//!   (server-side apply, dry run, both modes); the chart's RBAC checked with
//!   SubjectAccessReviews; then the split install for real: the image built offline
//!   (`tests/image/build_image.py`) and imported into the kubelet's containerd, the agent's pod
//!   running it on the node and publishing to NATS JetStream, and an OOM kill in another pod on
//!   that node in the correlation job's API.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tapio_tests::control_plane::{BUSYBOX_IMAGE, ControlPlane};
use tapio_tests::deploy::{self, apply, chart, helm};
use tapio_tests::nats::NatsServer;

use crate::kubernetes::{client, wait_ready};
use crate::support::{scratch, tapio};

type Result<T> = anyhow::Result<T>;

/// The namespace the chart is installed in.
const NAMESPACE: &str = "tapio";
/// The image the tests build and import.
const IMAGE: &str = "localhost/tapio/tapio:e2e";

/// `helm template <release> charts/tapio --namespace tapio` with `--set` pairs: the rendered
/// documents, or Helm's error output.
fn render(release: &str, set: &[(&str, &str)]) -> std::result::Result<Vec<Value>, String> {
    deploy::render(release, NAMESPACE, set)
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|document| document["kind"] == kind)
        .collect()
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// Runs `tapio config check` on every rendered ConfigMap's `tapio.yaml`; returns the checked
/// configurations by ConfigMap name.
fn check_configurations(documents: &[Value], dir: &Path) -> Vec<(String, Value)> {
    of_kind(documents, "ConfigMap")
        .into_iter()
        .map(|map| {
            let name = map["metadata"]["name"].as_str().expect("a name").to_owned();
            let text = map["data"]["tapio.yaml"].as_str().expect("tapio.yaml");
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, text).expect("write the configuration");
            let output = tapio()
                .args(["config", "check"])
                .arg(&path)
                .output()
                .expect("run tapio config check");
            assert!(
                output.status.success(),
                "tapio config check refused {name}:\n{text}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let value: Value = serde_saphyr::from_str(text).expect("YAML");
            (name, value)
        })
        .collect()
}

/// The first container of a workload's pod template.
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_array()
        .map(|env| env.iter().filter_map(|var| var["name"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn chart_lints_renders_valid_configurations_and_refuses_nonsense() {
    let dir = scratch("chart");
    for mode in [
        &["--set", "nats.url=nats://nats.tapio:4222"][..],
        &["--set", "mode=all-in-one"][..],
    ] {
        let output = helm()
            .args(["lint", "--strict"])
            .arg(chart())
            .args(mode)
            .output()
            .expect("run helm lint");
        assert!(
            output.status.success(),
            "helm lint {mode:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Split mode with NATS and Neo4j credentials in Secrets, and a ServiceMonitor.
    let split = render(
        "tapio",
        &[
            ("nats.url", "nats://nats.tapio:4222"),
            ("nats.existingSecret", "tapio-nats"),
            ("neo4j.uri", "bolt://neo4j.tapio:7687"),
            ("neo4j.existingSecret", "tapio-neo4j"),
            ("correlation.workers", "4"),
            ("serviceMonitor.enabled", "true"),
        ],
    )
    .expect("split mode renders");
    let count = |kind: &str| of_kind(&split, kind).len();
    assert_eq!(
        [
            count("DaemonSet"),
            count("Deployment"),
            count("ConfigMap"),
            count("ServiceAccount"),
            count("ClusterRole"),
            count("ClusterRoleBinding"),
            count("Service"),
            count("ServiceMonitor"),
            count("Secret"),
        ],
        [1, 2, 3, 3, 2, 2, 1, 1, 0],
        "{split:#?}"
    );
    let configurations = check_configurations(&split, &dir);
    let configuration = |name: &str| {
        &configurations
            .iter()
            .find(|(map, _)| map == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
            .1
    };
    // No credential is written into any configuration.
    for (name, value) in &configurations {
        assert!(
            value["integrations"]["neo4j"].get("password").is_none(),
            "{name}: {value:#}"
        );
        assert!(
            !value["integrations"]["nats"]["url"]
                .as_str()
                .unwrap_or_default()
                .contains('@'),
            "{name}: {value:#}"
        );
    }
    let agent_config = configuration("tapio-agent");
    assert_eq!(agent_config["collectors"]["kernel"]["enabled"], true);
    assert_eq!(agent_config["collectors"]["kubelet"]["enabled"], true);
    assert!(agent_config["collectors"].get("kubernetes").is_none());
    assert_eq!(
        agent_config["integrations"]["nats"]["url"],
        "nats://nats.tapio:4222"
    );
    let watcher_config = configuration("tapio-kubernetes");
    assert_eq!(watcher_config["collectors"]["kubernetes"]["enabled"], true);
    assert_eq!(watcher_config["collectors"]["kernel"]["enabled"], false);
    let correlation_config = configuration("tapio-correlation");
    assert_eq!(
        correlation_config["correlation"]["engine"]["worker_count"],
        4
    );
    assert_eq!(
        correlation_config["integrations"]["neo4j"]["uri"],
        "bolt://neo4j.tapio:7687"
    );

    // The agent: host PID namespace, not privileged, every capability dropped but BPF and
    // PERFMON, host paths read-only but its state directory.
    let agent = named(&split, "DaemonSet", "tapio-agent");
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let security = &container(agent)["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["capabilities"]["add"], json!(["BPF", "PERFMON"]));
    assert_eq!(security["readOnlyRootFilesystem"], true);
    // The agent's resources are its own (sized by the footprint benchmark), not the
    // all-in-one pods'.
    assert_eq!(
        container(agent)["resources"],
        json!({"requests": {"cpu": "20m", "memory": "96Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    assert_eq!(
        container(agent)["args"],
        json!([
            "run",
            "--mode",
            "collectors",
            "--config",
            "/etc/tapio/tapio.yaml"
        ])
    );
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|volume| volume.get("hostPath").is_some())
        .filter_map(|volume| volume["name"].as_str())
        .collect();
    assert_eq!(host_paths, ["state", "tracefs", "cgroup"]);
    for mount in container(agent)["volumeMounts"].as_array().expect("mounts") {
        if mount["name"] != "state" {
            assert_eq!(mount["readOnly"], true, "{mount}");
        }
    }
    assert!(env_names(container(agent)).contains(&"TAPIO_NATS_PASSWORD"));
    // Every component serves its health on a port of its own: they may share a node's network.
    assert_eq!(
        container(agent)["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert_eq!(container(agent)["ports"][0]["containerPort"], 7601);
    // The correlation job and the watcher: unprivileged, no capabilities; credentials from
    // the Secrets, by reference.
    let correlation = named(&split, "Deployment", "tapio-correlation");
    assert_eq!(
        correlation["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        correlation["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert_eq!(
        container(correlation)["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    assert_eq!(
        container(correlation)["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert_eq!(
        container(correlation)["livenessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    let references: Vec<(&str, &str)> = container(correlation)["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|var| {
            let secret = &var["valueFrom"]["secretKeyRef"];
            Some((var["name"].as_str()?, secret["name"].as_str()?))
        })
        .collect();
    assert_eq!(
        references,
        [
            ("TAPIO_NATS_USER", "tapio-nats"),
            ("TAPIO_NATS_PASSWORD", "tapio-nats"),
            ("TAPIO_NEO4J_PASSWORD", "tapio-neo4j"),
        ]
    );
    let watcher = named(&split, "Deployment", "tapio-kubernetes");
    assert_eq!(
        container(watcher)["livenessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    assert_eq!(container(watcher)["ports"][0]["containerPort"], 7602);
    assert_eq!(container(correlation)["ports"][0]["containerPort"], 7600);
    assert_eq!(
        container(watcher)["args"],
        json!([
            "run",
            "--mode",
            "collectors",
            "--config",
            "/etc/tapio/tapio.yaml"
        ])
    );

    // All-in-one: one DaemonSet running everything, no NATS.
    let solo = render("tapio", &[("mode", "all-in-one")]).expect("all-in-one renders");
    assert_eq!(of_kind(&solo, "DaemonSet").len(), 1);
    assert_eq!(of_kind(&solo, "Deployment").len(), 0);
    let configurations = check_configurations(&solo, &dir);
    assert_eq!(configurations.len(), 1);
    let (_, solo_config) = &configurations[0];
    assert!(solo_config["integrations"].get("nats").is_none());
    assert_eq!(solo_config["collectors"]["kubernetes"]["enabled"], true);
    assert_eq!(solo_config["collectors"]["kernel"]["enabled"], true);
    let daemon = named(&solo, "DaemonSet", "tapio-all-in-one");
    assert_eq!(container(daemon)["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(
        container(daemon)["args"],
        json!([
            "run",
            "--mode",
            "all",
            "--config",
            "/etc/tapio/tapio.yaml",
            "--output",
            "-"
        ])
    );
    assert_eq!(
        container(daemon)["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );

    // Nonsense fails at `helm template`, naming the value.
    let nats = ("nats.url", "nats://nats:4222");
    for (set, expected) in [
        (
            vec![nats, ("correlation.workers", "-1")],
            "/correlation/workers",
        ),
        (
            vec![nats, ("correlation.workers", "0")],
            "/correlation/workers",
        ),
        (vec![nats, ("mode", "sideways")], "/mode"),
        (vec![], "/nats/url"),
        (vec![("nats.url", "nats://user:pw@nats:4222")], "/nats/url"),
        (
            vec![nats, ("neo4j.uri", "bolt://neo4j:7687")],
            "existingSecret",
        ),
        (
            vec![nats, ("agent.capabilities[0]", "SYS_ADMIN")],
            "/agent/capabilities",
        ),
        (vec![nats, ("api.port", "70000")], "/api/port"),
    ] {
        let error = render("tapio", &set).expect_err(&format!("{set:?} must fail"));
        assert!(
            error.contains("values don't meet the specifications of the schema")
                && error.contains(expected),
            "{set:?}: {error}"
        );
    }
    std::fs::remove_dir_all(dir).expect("clean the scratch dir");
}

/// Whether the API server's RBAC allows `verb` on `resource` (`group/resource[/sub]`) to the
/// service account `account` of the chart's namespace.
async fn allowed(admin: &Client, account: &str, verb: &str, resource: &str) -> Result<bool> {
    let (group, rest) = resource.split_once('/').unwrap_or(("", resource));
    let (resource, subresource) = rest.split_once('/').unwrap_or((rest, ""));
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{NAMESPACE}:{account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": subresource, "namespace": "default"},
        }
    }))?;
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// What the kubernetes collector reads, as `group/resource`.
const WATCHED: [&str; 10] = [
    "/pods",
    "/services",
    "/nodes",
    "/events",
    "apps/replicasets",
    "apps/deployments",
    "apps/statefulsets",
    "apps/daemonsets",
    "batch/jobs",
    "discovery.k8s.io/endpointslices",
];

/// Asserts that `account` may do exactly `needed` (verb, resource) and none of the dangerous
/// things.
async fn assert_least_privilege(admin: &Client, account: &str, needed: &[(&str, &str)]) {
    for (verb, resource) in needed {
        assert!(
            allowed(admin, account, verb, resource).await.expect("SAR"),
            "{account} may not {verb} {resource}"
        );
    }
    let mut dangerous: Vec<(&str, &str)> = Vec::new();
    for verb in ["get", "list", "watch"] {
        dangerous.push((verb, "/secrets"));
        dangerous.push((verb, "/configmaps"));
    }
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        for resource in [
            "/pods",
            "/nodes",
            "/secrets",
            "/services",
            "apps/deployments",
            "apps/daemonsets",
            "rbac.authorization.k8s.io/clusterroles",
            "rbac.authorization.k8s.io/clusterrolebindings",
        ] {
            dangerous.push((verb, resource));
        }
    }
    dangerous.push(("create", "/pods/exec"));
    dangerous.push(("create", "/serviceaccounts/token"));
    dangerous.push(("escalate", "rbac.authorization.k8s.io/clusterroles"));
    dangerous.push(("bind", "rbac.authorization.k8s.io/clusterroles"));
    for resource in ["/users", "/groups", "/serviceaccounts"] {
        dangerous.push(("impersonate", resource));
    }
    let kubelet = [("get", "/nodes/proxy"), ("get", "/nodes/stats")];
    if !needed.contains(&kubelet[0]) {
        dangerous.extend(kubelet);
        dangerous.push(("create", "/nodes/proxy"));
    }
    if !needed.contains(&("list", "/pods")) {
        for resource in WATCHED {
            dangerous.push(("list", resource));
            dangerous.push(("watch", resource));
        }
    }
    for (verb, resource) in dangerous {
        assert!(
            !allowed(admin, account, verb, resource).await.expect("SAR"),
            "{account} may {verb} {resource}"
        );
    }
}

fn reads(resources: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    resources
        .iter()
        .flat_map(|resource| ["get", "list", "watch"].map(|verb| (verb, *resource)))
        .collect()
}

/// Pods of the chart's `component`, once one is Running on `node`.
async fn running_pod(admin: &Client, component: &str, node: &str, within: Duration) -> Pod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let deadline = Instant::now() + within;
    let selector = format!("app.kubernetes.io/component={component}");
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list pods");
        if let Some(pod) = list.items.into_iter().find(|pod| {
            pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()) == Some(node)
                && pod
                    .status
                    .as_ref()
                    .and_then(|status| status.phase.as_deref())
                    == Some("Running")
        }) {
            return pod;
        }
        if Instant::now() > deadline {
            let all = pods.list(&ListParams::default()).await.expect("list pods");
            panic!(
                "no running {component} pod on {node} within {within:?}: {:#?}",
                all.items
                    .iter()
                    .map(|pod| (&pod.metadata.name, &pod.status))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// JetStream messages on `subject` in the chart's stream.
async fn messages_on(url: &str, subject: &str) -> usize {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    let Ok(stream) = js.get_stream("TAPIO").await else {
        return 0;
    };
    match stream.info_with_subjects(subject).await {
        Ok(mut subjects) => {
            let mut total = 0;
            while let Ok(Some((_, count))) = subjects.try_next().await {
                total += count;
            }
            total
        }
        Err(_) => 0,
    }
}

/// The body of `GET http://address/path`, through curl.
fn http_get(address: &str, path: &str) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{address}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_on_a_real_cluster() -> Result<()> {
    let node = "node-deploy";
    let plane = ControlPlane::start_with_service_accounts("deploy")?;
    let admin = client(&plane, "admin").await?;
    wait_ready(&admin).await?;
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))?;
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let kubelet = tokio::task::block_in_place(|| plane.start_kubelet(node))?;
    let nodes: Api<Node> = Api::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    while nodes.get_opt(node).await?.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the kubelet never registered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let nats = NatsServer::start("deploy");
    let dir = scratch("deploy");

    // The image, built offline from this test's binary and its libraries.
    let tar = dir.join("tapio-image.tar");
    deploy::build_image(Path::new(env!("CARGO_BIN_EXE_tapio")), &tar, IMAGE)?;
    kubelet.import_image(&tar)?;

    // Values for this cluster: no CNI, so every pod shares the node's network and reaches the
    // API server, the kubelet and NATS on loopback; the image is the imported one.
    let api_port = tapio_tests::free_port().to_string();
    let agent_api_port = tapio_tests::free_port().to_string();
    let watcher_api_port = tapio_tests::free_port().to_string();
    let nats_url = nats.url();
    let kubelet_url = format!("https://127.0.0.1:{}", kubelet.port);
    let state = dir.join("state").display().to_string();
    let kubernetes_port = plane.port.to_string();
    let set: Vec<(&str, &str)> = vec![
        ("image.repository", "localhost/tapio/tapio"),
        ("image.tag", "e2e"),
        ("image.pullPolicy", "Never"),
        ("nats.url", &nats_url),
        ("collectors.kubelet.url", &kubelet_url),
        ("collectors.kubelet.insecure_skip_tls_verify", "false"),
        ("collectors.kubelet.poll_interval", "1s"),
        ("api.port", &api_port),
        ("agent.apiPort", &agent_api_port),
        ("kubernetesWatcher.apiPort", &watcher_api_port),
        ("agent.stateHostPath", &state),
        ("agent.apiHost", "127.0.0.1"),
        ("kubernetesWatcher.hostNetwork", "true"),
        ("correlation.hostNetwork", "true"),
        ("correlation.workers", "1"),
        ("kubernetesWatcher.tolerations[0].operator", "Exists"),
        ("correlation.tolerations[0].operator", "Exists"),
        ("agent.extraEnv[0].name", "KUBERNETES_SERVICE_HOST"),
        ("agent.extraEnv[0].value", "127.0.0.1"),
        ("agent.extraEnv[1].name", "KUBERNETES_SERVICE_PORT"),
        ("agent.extraEnv[1].value", &kubernetes_port),
        (
            "kubernetesWatcher.extraEnv[0].name",
            "KUBERNETES_SERVICE_HOST",
        ),
        ("kubernetesWatcher.extraEnv[0].value", "127.0.0.1"),
        (
            "kubernetesWatcher.extraEnv[1].name",
            "KUBERNETES_SERVICE_PORT",
        ),
        ("kubernetesWatcher.extraEnv[1].value", &kubernetes_port),
    ];
    let split = render("tapio", &set).map_err(anyhow::Error::msg)?;
    let solo = render(
        "solo",
        &[("mode", "all-in-one"), ("serviceMonitor.enabled", "false")],
    )
    .map_err(anyhow::Error::msg)?;
    // Every manifest of both modes is accepted by the API server.
    apply(&admin, &split, true).await?;
    apply(&admin, &solo, true).await?;

    // The split install, for real; and the all-in-one RBAC beside it.
    apply(&admin, &split, false).await?;
    let rbac: Vec<Value> = solo
        .iter()
        .filter(|document| {
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
                .contains(&document["kind"].as_str().unwrap_or_default())
        })
        .cloned()
        .collect();
    apply(&admin, &rbac, false).await?;
    let kubelet_reads = [("get", "/nodes/proxy"), ("get", "/nodes/stats")];
    assert_least_privilege(&admin, "tapio-agent", &kubelet_reads).await;
    assert_least_privilege(&admin, "tapio-kubernetes", &reads(&WATCHED)).await;
    assert_least_privilege(&admin, "tapio-correlation", &[]).await;
    let mut both = reads(&WATCHED);
    both.extend(kubelet_reads);
    assert_least_privilege(&admin, "solo-tapio-all-in-one", &both).await;

    // The agent runs from the imported image on the node and publishes its kernel and kubelet
    // observations to NATS.
    let agent = running_pod(&admin, "agent", node, Duration::from_secs(180)).await;
    let watcher = running_pod(&admin, "kubernetes", node, Duration::from_secs(180)).await;
    let correlation = running_pod(&admin, "correlation", node, Duration::from_secs(180)).await;
    for pod in [&agent, &watcher, &correlation] {
        let image = pod
            .spec
            .as_ref()
            .map(|spec| spec.containers[0].image.clone().unwrap_or_default());
        assert_eq!(image.as_deref(), Some(IMAGE));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for subject in [
        format!("tapio.observations.kernel.{node}"),
        format!("tapio.observations.kubelet.{node}"),
    ] {
        while messages_on(&nats_url, &subject).await == 0 {
            assert!(
                Instant::now() < deadline,
                "nothing published on {subject}; see {}",
                kubelet.dir().display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // An OOM kill in another pod on the node reaches the correlation job's API.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let oom: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hog"},
        "spec": {"nodeName": node, "hostNetwork": true, "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "oom", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "resources": {"limits": {"memory": "16Mi"}},
                "command": ["/bin/sh", "-c", "sleep 2; head -c 64m /dev/zero | tail"]}]}
    }))?;
    pods.create(&PostParams::default(), &oom).await?;
    let address = format!(
        "{}:{api_port}",
        correlation
            .status
            .as_ref()
            .and_then(|status| status.pod_ip.clone())
            .unwrap_or_else(|| "127.0.0.1".into())
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let container_id = loop {
        let pod = pods.get("hog").await?;
        let id = pod
            .status
            .and_then(|status| status.container_statuses)
            .and_then(|statuses| statuses.into_iter().next())
            .and_then(|status| status.state)
            .and_then(|state| state.terminated)
            .filter(|terminated| terminated.reason.as_deref() == Some("OOMKilled"))
            .and_then(|terminated| terminated.container_id);
        if let Some(id) = id {
            let id = id.rsplit("://").next().unwrap_or_default().to_owned();
            assert_eq!(id.len(), 64, "a containerd container id: {id}");
            break id;
        }
        anyhow::ensure!(Instant::now() < deadline, "the hog was never OOM-killed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut incidents = String::new();
    while !incidents.contains("oom_restart") || !incidents.contains(&container_id) {
        anyhow::ensure!(
            Instant::now() < deadline + Duration::from_secs(60),
            "no oom_restart of container {container_id} in the correlation job's API; \
             /v1/incidents: {incidents}\n/readyz: {}",
            http_get(&address, "/readyz")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        incidents = http_get(&address, "/v1/incidents?kind=oom_restart");
    }
    assert!(http_get(&address, "/metrics").contains("tapio_"));
    drop(kubelet);
    drop(nats);
    drop(plane);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
