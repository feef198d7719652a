//! Wiring: sources → router → dataflow → sinks, and sources → recording file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tapio_config::TapioConfig;
use tapio_dataflow::{ClusterLayout, Engine, EngineSettings, Router, WorkerInput};
use tapio_model::Observation;
use tapio_model::recording::RecordingWriter;
use tapio_sinks_jsonl::Target;
use tapio_sources::{Source, SourceContext, SourceStats};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::outputs;

/// A collector's own health line, logged with the progress and at the end.
pub(crate) type Health = Box<dyn Fn() -> String + Send + Sync>;

/// Collectors to run, with the health reporters of those that have one.
pub(crate) struct Collectors {
    /// The sources, built without I/O.
    pub(crate) sources: Vec<Box<dyn Source>>,
    /// Health lines logged with the progress and at exit.
    pub(crate) health: Vec<Health>,
}

/// The collectors the configuration enables.
pub(crate) fn enabled_sources(config: &TapioConfig) -> Result<Collectors> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let mut health: Vec<Health> = Vec::new();
    let kernel = &config.collectors.kernel;
    if kernel.enabled {
        let source = tapio_sources_kernel::KernelSource::new(
            tapio_sources_kernel::KernelSourceConfig::from(kernel),
        )?;
        let stats = source.stats();
        health.push(Box::new(move || stats.snapshot().to_string()));
        sources.push(Box::new(source));
    }
    let recording = &config.collectors.recording;
    if recording.enabled {
        sources.push(Box::new(tapio_sources_recording::RecordingSource::new(
            &recording.path,
            recording.speed,
        )));
    }
    let tick = config.correlation.engine.tick;
    if config.collectors.kubernetes.enabled {
        sources.push(Box::new(tapio_sources_kubernetes::KubernetesSource::new(
            tapio_sources_kubernetes::KubernetesSettings::from_config(
                &config.collectors.kubernetes,
                tick,
            ),
        )));
    }
    if config.collectors.kubelet.enabled {
        sources.push(Box::new(tapio_sources_kubelet::KubeletSource::new(
            tapio_sources_kubelet::KubeletSettings::from_config(&config.collectors.kubelet, tick),
        )));
    }
    if sources.is_empty() {
        bail!(
            "no collectors are enabled; enable one in the configuration, e.g. \
             `collectors.recording.enabled: true` with `collectors.recording.path`, \
             or replay a recording with `tapio replay FILE`"
        );
    }
    Ok(Collectors { sources, health })
}

/// This node's name: the configured one, or the host name.
pub(crate) fn node_name(config: &TapioConfig) -> String {
    if !config.node_name.is_empty() {
        return config.node_name.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Cancels `shutdown` on SIGINT, SIGTERM, or after `run_for`.
pub(crate) fn stop_on_signal_or_timer(shutdown: &CancellationToken, run_for: Option<Duration>) {
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let timer = async {
            match run_for {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Interrupted; flushing and stopping."),
            () = terminated => tracing::info!("Terminated; flushing and stopping."),
            () = timer => tracing::info!("Run time is up; flushing and stopping."),
            () = token.cancelled() => return,
        }
        token.cancel();
    });
}

pub(crate) struct RunningSource {
    pub(crate) kind: &'static str,
    pub(crate) stats: Arc<SourceStats>,
    pub(crate) task: JoinHandle<Result<(), tapio_sources::SourceError>>,
}

/// Runs the collectors on `out` until every one has ended, logging progress and each
/// collector's health every few seconds and its health once more at the end. Returns how the
/// sources ended and the progress task, which the caller stops once it has drained `out`.
pub(crate) async fn run_collectors(
    Collectors { sources, health }: Collectors,
    node: &str,
    out: mpsc::Sender<Observation>,
    shutdown: &CancellationToken,
) -> (Result<()>, JoinHandle<()>) {
    let running = start_sources(sources, node, out, shutdown);
    let health = Arc::new(health);
    let progress = report_progress(&running, Arc::clone(&health), shutdown);
    let result = wait_for_sources(running).await;
    for report in health.iter() {
        tracing::info!(health = %report(), "Collector health at exit.");
    }
    (result, progress)
}

/// Starts every source on `out`; the caller keeps no sender, so the channel closes when the
/// last source ends.
fn start_sources(
    sources: Vec<Box<dyn Source>>,
    node: &str,
    out: mpsc::Sender<Observation>,
    shutdown: &CancellationToken,
) -> Vec<RunningSource> {
    sources
        .into_iter()
        .map(|source| {
            let kind = source.kind();
            let cx = SourceContext::new(kind, node, out.clone(), shutdown.child_token());
            let stats = Arc::clone(&cx.stats);
            tracing::info!(source = kind, node, "Source started.");
            RunningSource {
                kind,
                stats,
                task: tokio::spawn(source.run(cx)),
            }
        })
        .collect()
}

/// Logs progress every few seconds while sources run, with each collector's health.
pub(crate) fn report_progress(
    sources: &[RunningSource],
    health: Arc<Vec<Health>>,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let watched: Vec<(&'static str, Arc<SourceStats>)> = sources
        .iter()
        .map(|source| (source.kind, Arc::clone(&source.stats)))
        .collect();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        let mut last = 0u64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = token.cancelled() => return,
            }
            for (kind, stats) in &watched {
                let now = stats.snapshot();
                tracing::info!(
                    source = kind,
                    sent = now.sent,
                    per_second = (now.sent - last) / 5,
                    errors = now.errors,
                    dropped = now.dropped,
                    "Progress."
                );
                last = now.sent;
            }
            for report in health.iter() {
                tracing::info!(health = %report(), "Collector health.");
            }
        }
    })
}

/// Waits for every source; logs failures. Fails only when every source failed.
pub(crate) async fn wait_for_sources(sources: Vec<RunningSource>) -> Result<()> {
    let total = sources.len();
    let mut failures = Vec::new();
    for source in sources {
        let outcome = source
            .task
            .await
            .map_err(|join| anyhow!("source `{}` crashed: {join}", source.kind))
            .and_then(|result| result.map_err(anyhow::Error::from));
        let stats = source.stats.snapshot();
        match outcome {
            Ok(()) => tracing::info!(
                source = source.kind,
                received = stats.received,
                sent = stats.sent,
                errors = stats.errors,
                dropped = stats.dropped,
                "Source finished."
            ),
            Err(error) => {
                tracing::error!(
                    source = source.kind,
                    error = format!("{error:#}"),
                    "Source failed."
                );
                failures.push(error);
            }
        }
    }
    if failures.len() == total
        && let Some(first) = failures.into_iter().next()
    {
        return Err(first);
    }
    Ok(())
}

/// Starts the outputs, then the dataflow feeding them: the engine, its input channels (one per
/// local worker) and the outputs to finish at the end.
pub(crate) async fn start_dataflow(
    config: &TapioConfig,
    layout: &ClusterLayout,
    target: Target,
) -> Result<(Engine, Vec<WorkerInput>, outputs::Outputs)> {
    let (batches_tx, outputs) = outputs::start(config, target).await?;
    let settings = EngineSettings::from_config(config);
    let engine_layout = layout.clone();
    let (engine, inputs) =
        tokio::task::spawn_blocking(move || Engine::start(settings, engine_layout, batches_tx))
            .await
            .context("the dataflow start-up thread failed")??;
    Ok((engine, inputs, outputs))
}

/// Runs `sources` through the correlation dataflow into `target`.
pub(crate) async fn correlate(
    config: &TapioConfig,
    collectors: Collectors,
    layout: ClusterLayout,
    target: Target,
    run_for: Option<Duration>,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    stop_on_signal_or_timer(&shutdown, run_for);
    let engine_config = &config.correlation.engine;

    let (engine, inputs, outputs) = start_dataflow(config, &layout, target).await?;
    tracing::info!(
        workers = layout.workers,
        processes = layout.processes,
        process = layout.process,
        "Dataflow started."
    );
    let (observations_tx, observations_rx) = mpsc::channel(engine_config.event_buffer_size);
    let router = tokio::spawn(Router::new(layout, inputs).run(observations_rx));

    let (sources_result, progress) =
        run_collectors(collectors, &node_name(config), observations_tx, &shutdown).await;
    router.await.context("the input router failed")?;
    finish_dataflow(engine, outputs).await?;
    shutdown.cancel();
    progress.abort();
    sources_result
}

/// Waits for the dataflow and every output to finish, then logs what went through.
pub(crate) async fn finish_dataflow(engine: Engine, outputs: outputs::Outputs) -> Result<()> {
    let report = tokio::task::spawn_blocking(move || engine.join())
        .await
        .context("the dataflow thread failed")??;
    let written = outputs.finish().await?;
    tracing::info!(
        facts = report.facts,
        facts_unread = report.facts_unread,
        state_updates = report.state_updates,
        late = report.late,
        sources_retired = report.sources_retired,
        sources_rejoined = report.sources_rejoined,
        changes = written.changes,
        ticks_with_changes = written.batches,
        "Dataflow finished."
    );
    Ok(())
}

/// Records what `sources` observe into `path`.
pub(crate) async fn record(
    config: &TapioConfig,
    collectors: Collectors,
    path: &Path,
    record_for: Option<Duration>,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    stop_on_signal_or_timer(&shutdown, record_for);
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the recording {}", path.display()))?;
    let (observations_tx, mut observations_rx) =
        mpsc::channel::<Observation>(config.correlation.engine.event_buffer_size);
    let display = path.display().to_string();
    let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut writer = RecordingWriter::new(std::io::BufWriter::new(file))
            .with_context(|| format!("cannot write to {display}"))?;
        let mut written = 0u64;
        while let Some(observation) = observations_rx.blocking_recv() {
            writer
                .write(&observation)
                .with_context(|| format!("cannot write to {display}"))?;
            written += 1;
        }
        writer
            .flush()
            .with_context(|| format!("cannot write to {display}"))?;
        Ok(written)
    });
    let (sources_result, progress) =
        run_collectors(collectors, &node_name(config), observations_tx, &shutdown).await;
    let written = writer.await.context("the recording writer failed")??;
    shutdown.cancel();
    progress.abort();
    tracing::info!(observations = written, file = %path.display(), "Recording written.");
    sources_result
}
