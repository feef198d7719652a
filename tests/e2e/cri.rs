//! The container runtime collector against a real containerd (Debian's 1.6 with runc), driven through CRI as the
//! kubelet drives it: a pod sandbox, a container OOM-killed under its memory limit, one exiting
//! non-zero, one running throughout, one exiting while containerd is down; containerd killed
//! and started again mid-run. Every change is reported exactly once. Needs root (`.ci/install`
//! installs containerd and runc).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use tapio_config::CriCollectorConfig;
use tapio_model::{FactPayload, Observation, RuntimeObject, RuntimeState};
use tapio_sources::{Source, SourceContext, SourceHealth, Status};
use tapio_sources_cri::CriSource;
use tapio_tests::containerd::Containerd;
use tapio_tests::control_plane::BUSYBOX_IMAGE;
use tonic::transport::Channel;

/// A directory of its own for one test.
fn test_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tapio-cri-{name}-{}", std::process::id()))
}

/// The collector running on `socket`, what it sent so far, and its health.
struct Running {
    seen: Arc<Mutex<Vec<Observation>>>,
    health: Arc<SourceHealth>,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tapio_sources::SourceError>>,
}

fn start_collector(socket: &Path) -> Running {
    let config = CriCollectorConfig {
        enabled: true,
        socket: socket.display().to_string(),
        retry_interval: Duration::from_millis(200),
        ..CriCollectorConfig::default()
    };
    let (cx, mut rx) = SourceContext::for_test("cri", "node-1", 4096);
    let health = Arc::clone(&cx.health);
    let shutdown = cx.shutdown.clone();
    let task = tokio::spawn(Box::new(CriSource::new(&config)).run(cx));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(observation) = rx.recv().await {
            into.lock().expect("lock").push(observation);
        }
    });
    Running {
        seen,
        health,
        shutdown,
        task,
    }
}

impl Running {
    /// Facts sent so far, as (container id, what) pairs.
    fn facts(&self) -> Vec<(String, String, FactPayload)> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|observation| match observation {
                Observation::Fact(fact) => Some(match &fact.payload {
                    FactPayload::RuntimeChange(change) => (
                        change.id.to_string(),
                        format!("{}:{}", change.object.as_str(), change.state.as_str()),
                        fact.payload.clone(),
                    ),
                    FactPayload::ContainerExit(exit) => (
                        exit.container_id.to_string(),
                        "container:exit".to_string(),
                        fact.payload.clone(),
                    ),
                    other => ("?".into(), other.kind().to_string(), fact.payload.clone()),
                }),
                _ => None,
            })
            .collect()
    }

    fn heartbeats(&self) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|observation| matches!(observation, Observation::Heartbeat(_)))
            .count()
    }

    /// Waits until `id` has been reported as `what`.
    async fn wait_for(&self, id: &str, what: &str, limit: Duration) -> Result<FactPayload> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((_, _, payload)) = self
                .facts()
                .into_iter()
                .find(|(fact_id, fact_what, _)| fact_id == id && fact_what == what)
            {
                return Ok(payload);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{id} was not reported as {what} within {limit:?}; reported: {:#?}",
                    self.facts()
                        .iter()
                        .map(|(id, what, _)| format!("{id} {what}"))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const POD_UID: &str = "5f0c6a4e-1b7d-4c3e-9a55-0d1e2f3a4b5c";

fn sandbox_config() -> PodSandboxConfig {
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), "web-0".to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            "shop".to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), POD_UID.to_string()),
    ]);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web-0".into(),
            uid: POD_UID.into(),
            namespace: "shop".into(),
            attempt: 0,
        }),
        labels,
        linux: Some(LinuxPodSandboxConfig {
            // The node's network: no CNI plugin is configured in this test's containerd.
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// Creates and starts container `name` running `sh -c script` in `sandbox`, labelled as the
/// kubelet labels its containers; returns its id.
async fn run_container(
    cri: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    name: &str,
    script: &str,
    memory_limit: i64,
) -> Result<String> {
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), "web-0".to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            "shop".to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), POD_UID.to_string()),
        ("io.kubernetes.container.name".to_string(), name.to_string()),
    ]);
    let annotations = HashMap::from([(
        "io.kubernetes.container.restartCount".to_string(),
        "0".to_string(),
    )]);
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..ImageSpec::default()
        }),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), script.into()],
        labels,
        annotations,
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: memory_limit,
                ..LinuxContainerResources::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxContainerSecurityContext::default()
            }),
        }),
        ..ContainerConfig::default()
    };
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config()),
        })
        .await
        .map_err(|status| anyhow::anyhow!("CreateContainer {name}: {}", status.message()))?
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|status| anyhow::anyhow!("StartContainer {name}: {}", status.message()))?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_lifecycle_oom_and_restart_are_reported_once_each() -> Result<()> {
    let dir = test_dir("lifecycle");
    let _ = std::fs::remove_dir_all(&dir);
    let mut containerd = Containerd::start(&dir)?;
    let socket = containerd.socket();
    let mut collector = start_collector(&socket);
    // The first listing is a baseline: wait for it before anything happens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while collector.heartbeats() == 0 {
        if tokio::time::Instant::now() > deadline {
            bail!("the collector never finished its first listing");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(collector.health.status(), Status::Running);

    let mut cri = RuntimeServiceClient::new(tapio_sources_cri::channel(&socket).await?);
    let sandbox = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("RunPodSandbox: {}", status.message()))?
        .into_inner()
        .pod_sandbox_id;
    let limit = Duration::from_secs(60);
    collector
        .wait_for(&sandbox, "sandbox:started", limit)
        .await?;

    // Allocates without bound under a 32 MiB limit: the kernel's OOM killer ends it.
    let hog = run_container(&mut cri, &sandbox, "hog", "tail /dev/zero", 32 << 20).await?;
    let failing = run_container(&mut cri, &sandbox, "failing", "exit 3", 0).await?;
    let steady = run_container(&mut cri, &sandbox, "steady", "sleep 3600", 0).await?;

    let FactPayload::ContainerExit(oom) = collector.wait_for(&hog, "container:exit", limit).await?
    else {
        unreachable!()
    };
    assert_eq!((oom.exit_code, oom.reason.as_str()), (137, "OOMKilled"));
    assert_eq!(oom.container_name, "hog");
    assert_eq!(
        oom.pod.as_ref().map(ToString::to_string).as_deref(),
        Some("pod/shop/web-0")
    );
    let FactPayload::ContainerExit(failed) = collector
        .wait_for(&failing, "container:exit", limit)
        .await?
    else {
        unreachable!()
    };
    assert_eq!((failed.exit_code, failed.reason.as_str()), (3, "Error"));
    let FactPayload::RuntimeChange(started) = collector
        .wait_for(&steady, "container:started", limit)
        .await?
    else {
        unreachable!()
    };
    assert_eq!(started.image, BUSYBOX_IMAGE);
    assert_eq!(started.pod_uid, POD_UID);
    assert_eq!(&*started.sandbox_id, sandbox.as_str());

    // A container that exits while containerd is down: the re-list after the reconnect finds
    // its exit.
    let late = run_container(&mut cri, &sandbox, "late", "sleep 2; exit 5", 0).await?;
    collector
        .wait_for(&late, "container:started", limit)
        .await?;
    drop(cri);
    containerd.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while collector.health.status() == Status::Running {
        if tokio::time::Instant::now() > deadline {
            bail!("the collector did not notice containerd going away");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    containerd.restart()?;
    let FactPayload::ContainerExit(late_exit) =
        collector.wait_for(&late, "container:exit", limit).await?
    else {
        unreachable!()
    };
    assert_eq!(
        (late_exit.exit_code, late_exit.reason.as_str()),
        (5, "Error")
    );

    // Events flow again on the new connection.
    let mut cri = RuntimeServiceClient::new(tapio_sources_cri::channel(&socket).await?);
    let after = run_container(&mut cri, &sandbox, "after", "exit 0", 0).await?;
    let FactPayload::ContainerExit(done) =
        collector.wait_for(&after, "container:exit", limit).await?
    else {
        unreachable!()
    };
    assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));

    // Tear the pod down: the sandbox exits and everything is deleted.
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .map_err(|status| anyhow::anyhow!("StopPodSandbox: {}", status.message()))?;
    collector.wait_for(&steady, "container:exit", limit).await?;
    collector
        .wait_for(&sandbox, "sandbox:exited", limit)
        .await?;
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .map_err(|status| anyhow::anyhow!("RemovePodSandbox: {}", status.message()))?;
    for id in [&sandbox, &hog, &failing, &steady, &late, &after] {
        let what = if id == &sandbox {
            "sandbox:deleted"
        } else {
            "container:deleted"
        };
        collector.wait_for(id, what, limit).await?;
    }
    // Let anything doubled arrive before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    collector.shutdown.cancel();
    (&mut collector.task).await??;

    let facts = collector.facts();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for (id, what, _) in &facts {
        *counts.entry((id.clone(), what.clone())).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(doubled.is_empty(), "reported more than once: {doubled:?}");
    // Every container: created, started, exited, deleted; the sandbox likewise.
    for id in [&hog, &failing, &steady, &late, &after] {
        for what in [
            "container:created",
            "container:started",
            "container:exit",
            "container:deleted",
        ] {
            assert_eq!(
                counts.get(&(id.to_string(), what.to_string())),
                Some(&1),
                "{id} {what}"
            );
        }
    }
    for what in [
        "sandbox:created",
        "sandbox:started",
        "sandbox:exited",
        "sandbox:deleted",
    ] {
        assert_eq!(
            counts.get(&(sandbox.clone(), what.to_string())),
            Some(&1),
            "sandbox {what}"
        );
    }
    assert!(
        facts.iter().all(|(id, _, _)| id != "?"),
        "only runtime facts"
    );
    let sandbox_change = facts
        .iter()
        .find_map(|(id, what, payload)| match payload {
            FactPayload::RuntimeChange(change) if id == &sandbox && what == "sandbox:created" => {
                Some(change.clone())
            }
            _ => None,
        })
        .expect("sandbox created");
    assert_eq!(sandbox_change.object, RuntimeObject::Sandbox);
    assert_eq!(sandbox_change.state, RuntimeState::Created);
    assert_eq!(
        sandbox_change.pod.map(|pod| pod.to_string()).as_deref(),
        Some("pod/shop/web-0")
    );
    Ok(())
}

/// Runs the collector against `socket` for a while: it must neither stop nor report running,
/// and must keep trying, naming the socket in its status.
async fn keeps_retrying(socket: &Path) -> Result<()> {
    let mut collector = start_collector(socket);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health = collector.health.snapshot();
    assert_eq!(health.status, Status::Starting);
    let message = health.message.unwrap_or_default();
    assert!(
        message.contains(&socket.display().to_string()),
        "the status names the socket: {message}"
    );
    let errors = collector
        .health
        .stats()
        .errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(errors >= 3, "retried every 200ms, {errors} attempts");
    assert!(!collector.task.is_finished(), "the collector gave up");
    collector.shutdown.cancel();
    (&mut collector.task).await??;
    assert!(collector.facts().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_missing_or_foreign_socket_is_named_and_retried() -> Result<()> {
    let dir = test_dir("bad-socket");
    std::fs::create_dir_all(&dir)?;
    keeps_retrying(&dir.join("absent.sock")).await?;
    // Not a socket at all.
    let file = dir.join("file.sock");
    std::fs::write(&file, "not a socket")?;
    keeps_retrying(&file).await?;
    // A socket that answers with something other than gRPC and hangs up.
    let foreign = dir.join("foreign.sock");
    let listener = tokio::net::UnixListener::bind(&foreign)?;
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"220 not a gRPC server\r\n").await;
        }
    });
    keeps_retrying(&foreign).await?;
    server.abort();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
