//! The container runtime collector under churn: a private containerd 1.6 (Debian's, with runc),
//! one pod sandbox, and containers created, started, stopped and removed through CRI in a loop,
//! one after another, as fast as containerd takes them. The collector runs alone on a tokio
//! runtime of one thread (its gRPC connection included), so that thread's CPU time
//! (`getrusage(RUSAGE_THREAD)`) is the collector's cost. Every container must be reported
//! created, started, exited and deleted: a missing report is an event lost.
//!
//! Needs root and containerd, runc, busybox-static (`.ci/install`).
//!
//! `cargo bench -p tapio-benches --bench cri_churn`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
};
use nix::sys::resource::{UsageWho, getrusage};
use tapio_config::CriCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext, Status};
use tapio_sources_cri::CriSource;
use tapio_tests::containerd::Containerd;
use tapio_tests::control_plane::BUSYBOX_IMAGE;

/// Containers cycled.
const CONTAINERS: u64 = 60;
/// Facts each container yields: created, started, exit, deleted.
const FACTS_PER_CONTAINER: u64 = 4;

fn labels(name: Option<&str>) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), "churn-0".to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            "bench".to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), "uid-churn".to_string()),
    ]);
    if let Some(name) = name {
        labels.insert("io.kubernetes.container.name".into(), name.into());
    }
    labels
}

fn node_network() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..NamespaceOption::default()
    })
}

fn sandbox_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "churn-0".into(),
            uid: "uid-churn".into(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        labels: labels(None),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: node_network(),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// What the collector's thread measured.
struct Measured {
    facts: u64,
    user: Duration,
    system: Duration,
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tapio-cri-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let containerd = Containerd::start(&dir)?;
    let socket = containerd.socket();

    // The collector, alone on its thread.
    let config = CriCollectorConfig {
        enabled: true,
        socket: socket.display().to_string(),
        ..CriCollectorConfig::default()
    };
    let (cx, mut rx) = SourceContext::for_test("cri", "bench", 65_536);
    let health = Arc::clone(&cx.health);
    let shutdown = cx.shutdown.clone();
    let facts = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&facts);
    let collector = std::thread::Builder::new()
        .name("cri-collector".into())
        .spawn(move || -> Result<Measured> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let before = getrusage(UsageWho::RUSAGE_THREAD)?;
            let into = Arc::clone(&counted);
            runtime.block_on(async move {
                let source = tokio::spawn(Box::new(CriSource::new(&config)).run(cx));
                while let Some(observation) = rx.recv().await {
                    if let Observation::Fact(fact) = observation
                        && matches!(
                            fact.payload,
                            FactPayload::RuntimeChange(_) | FactPayload::ContainerExit(_)
                        )
                    {
                        into.fetch_add(1, Ordering::Relaxed);
                    }
                }
                source.await.map_err(|error| anyhow!("{error}"))??;
                Ok::<_, anyhow::Error>(())
            })?;
            let after = getrusage(UsageWho::RUSAGE_THREAD)?;
            let time = |value: nix::sys::time::TimeVal| {
                Duration::new(value.tv_sec() as u64, value.tv_usec() as u32 * 1000)
            };
            Ok(Measured {
                facts: counted.load(Ordering::Relaxed),
                user: time(after.user_time()).saturating_sub(time(before.user_time())),
                system: time(after.system_time()).saturating_sub(time(before.system_time())),
            })
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while health.status() != Status::Running {
        anyhow::ensure!(Instant::now() < deadline, "the collector did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The load, on a runtime of its own.
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (elapsed, expected) = load.block_on(async {
        let mut cri = RuntimeServiceClient::new(tapio_sources_cri::channel(&socket).await?);
        let sandbox = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|status| anyhow!("RunPodSandbox: {}", status.message()))?
            .into_inner()
            .pod_sandbox_id;
        let started = Instant::now();
        for index in 0..CONTAINERS {
            let name = format!("churn-{index}");
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..ImageSpec::default()
                }),
                command: vec!["/bin/sleep".into(), "3600".into()],
                labels: labels(Some(&name)),
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        namespace_options: node_network(),
                        ..LinuxContainerSecurityContext::default()
                    }),
                    ..LinuxContainerConfig::default()
                }),
                ..ContainerConfig::default()
            };
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config()),
                })
                .await
                .map_err(|status| anyhow!("CreateContainer: {}", status.message()))?
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|status| anyhow!("StartContainer: {}", status.message()))?;
            cri.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .map_err(|status| anyhow!("StopContainer: {}", status.message()))?;
            cri.remove_container(RemoveContainerRequest { container_id: id })
                .await
                .map_err(|status| anyhow!("RemoveContainer: {}", status.message()))?;
        }
        // The sandbox's own creation and start.
        let expected = CONTAINERS * FACTS_PER_CONTAINER + 2;
        let deadline = Instant::now() + Duration::from_secs(30);
        while facts.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, anyhow::Error>((started.elapsed(), expected))
    })?;
    shutdown.cancel();
    let measured = collector
        .join()
        .map_err(|_| anyhow!("the collector thread panicked"))?
        .context("the collector")?;
    drop(containerd);

    let seconds = elapsed.as_secs_f64();
    let cpu = (measured.user + measured.system).as_secs_f64();
    let lost = expected.saturating_sub(measured.facts);
    println!(
        "CRI collector under container churn ({CONTAINERS} containers created, started, stopped and removed through CRI)"
    );
    println!("| measurement | value |");
    println!("| --- | --- |");
    println!("| facts reported | {} of {expected} |", measured.facts);
    println!("| events lost | {lost} |");
    println!("| wall time | {seconds:.2} s |");
    println!("| containers/s | {:.1} |", CONTAINERS as f64 / seconds);
    println!("| facts/s | {:.1} |", measured.facts as f64 / seconds);
    println!(
        "| collector user CPU | {:.1} ms ({:.0} µs per fact) |",
        measured.user.as_secs_f64() * 1e3,
        measured.user.as_secs_f64() * 1e6 / measured.facts.max(1) as f64
    );
    println!(
        "| collector system CPU | {:.1} ms |",
        measured.system.as_secs_f64() * 1e3
    );
    println!(
        "| collector share of one core (user + system) | {:.2} % |",
        cpu / seconds * 100.0
    );
    anyhow::ensure!(lost == 0, "{lost} events lost");
    Ok(())
}
