//! Wiring: sources → router → dataflow → sinks, and sources → recording file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tapio_config::TapioConfig;
use tapio_dataflow::{ClusterLayout, Engine, EngineReport, EngineSettings, Router, WorkerInput};
use tapio_model::recording::RecordingWriter;
use tapio_model::{ClosedBatch, Observation};
use tapio_sinks_jsonl::Target;
use tapio_sources::containers::CgroupResolver;
use tapio_sources::{
    DROPPED, ERRORS, RECEIVED, SENT, Source, SourceContext, SourceError, SourceHealth, Status,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tapio_sinks_store::{Store, StoreSettings};

use crate::api;
use crate::health::{Phase, health};
use crate::outputs;

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

/// A source started by [`start`]: its kind, its live health, and its task, which ends with
/// whether the source ever ran (reached [`Status::Running`]) and how it ended.
pub(crate) struct RunningSource {
    pub(crate) kind: &'static str,
    pub(crate) health: Arc<SourceHealth>,
    pub(crate) task: JoinHandle<(bool, Result<(), SourceError>)>,
}

/// Runs the collectors on `out` until every one has ended, logging each one's progress and
/// health every few seconds. Returns how the sources ended and the progress task, which the
/// caller stops once it has drained `out`.
pub(crate) async fn run_collectors(
    sources: Vec<Box<dyn Source>>,
    node: &str,
    out: mpsc::Sender<Observation>,
    shutdown: &CancellationToken,
) -> (Result<()>, JoinHandle<()>) {
    // One cgroup → container cache for every collector (the kernel and DNS ones both
    // resolve cgroup ids): a walk of the hierarchy done for one serves the other.
    let containers = Arc::new(CgroupResolver::new());
    let running: Vec<RunningSource> = sources
        .into_iter()
        .map(|source| {
            let cx = SourceContext::new(source.kind(), node, out.clone(), shutdown.child_token())
                .with_containers(Arc::clone(&containers));
            start(source, cx)
        })
        .collect();
    // The channel closes when the last source ends: the caller keeps no sender.
    drop(out);
    let progress = report_progress(&running, shutdown);
    let result = wait_for_sources(running).await;
    (result, progress)
}

/// Starts `source` on `cx`. A failure is logged as soon as it happens, once, with its causes,
/// and marks the source [`Status::Failed`] with that message.
pub(crate) fn start(source: Box<dyn Source>, cx: SourceContext) -> RunningSource {
    let kind = source.kind();
    let health = Arc::clone(&cx.health);
    crate::health::health().add_source(Arc::clone(&health));
    let watched = Arc::clone(&health);
    tracing::info!(source = kind, node = %cx.node, "Source starting.");
    let task = tokio::spawn(async move {
        let result = source.run(cx).await;
        let ran = watched.status() != Status::Starting;
        match &result {
            Ok(()) => watched.set(Status::Finished, None),
            Err(error) => {
                let message = crate::error_chain(error);
                if ran {
                    tracing::error!(source = kind, error = %message, "Source failed.");
                } else {
                    tracing::error!(source = kind, error = %message, "Source could not start.");
                }
                watched.set(Status::Failed, Some(message));
            }
        }
        (ran, result)
    });
    RunningSource { kind, health, task }
}

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Logs the progress and health of every source still starting or running, every few seconds.
pub(crate) fn report_progress(
    sources: &[RunningSource],
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let watched: Vec<Arc<SourceHealth>> = sources
        .iter()
        .map(|source| Arc::clone(&source.health))
        .collect();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        every.tick().await;
        let mut rates: Vec<Rate> = watched.iter().map(|_| Rate::new(Instant::now())).collect();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = token.cancelled() => return,
            }
            for (health, rate) in watched.iter().zip(&mut rates) {
                let now = health.snapshot();
                if matches!(now.status, Status::Finished | Status::Failed) {
                    // How it ended was logged when it happened.
                    continue;
                }
                let sent = now.counter(SENT).unwrap_or(0);
                let per_second = rate.update(sent, Instant::now());
                tracing::info!(
                    source = now.kind,
                    status = %now.status,
                    reason = now.message.as_deref(),
                    sent,
                    per_second,
                    received = now.counter(RECEIVED).unwrap_or(0),
                    errors = now.counter(ERRORS).unwrap_or(0),
                    dropped = now.counter(DROPPED).unwrap_or(0),
                    counters = ?now.own_counters(),
                    "Progress."
                );
            }
        }
    })
}

/// One source's rate of sending, between two progress reports.
#[derive(Clone, Copy, Debug)]
struct Rate {
    sent: u64,
    at: Instant,
}

impl Rate {
    fn new(at: Instant) -> Rate {
        Rate { sent: 0, at }
    }

    /// Observations sent per second since the last update, rounded down; `sent` is the
    /// source's total.
    fn update(&mut self, sent: u64, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.at).as_secs_f64();
        let delta = sent.saturating_sub(self.sent);
        self.sent = sent;
        self.at = at;
        if elapsed <= 0.0 {
            return 0;
        }
        (delta as f64 / elapsed) as u64
    }
}

/// Waits for every source and logs how each ended (a failure was logged when it happened).
///
/// # Errors
/// When every source failed, naming them; the causes are in the log already.
pub(crate) async fn wait_for_sources(sources: Vec<RunningSource>) -> Result<()> {
    let total = sources.len();
    let mut failed = Vec::new();
    let mut ran = 0usize;
    for source in sources {
        let (started, outcome) = match source.task.await {
            Ok(ended) => ended,
            Err(join) => {
                tracing::error!(source = source.kind, error = %join, "Source crashed.");
                failed.push(source.kind);
                continue;
            }
        };
        ran += usize::from(started);
        if outcome.is_err() {
            failed.push(source.kind);
            continue;
        }
        let health = source.health.snapshot();
        tracing::info!(
            source = source.kind,
            received = health.counter(RECEIVED).unwrap_or(0),
            sent = health.counter(SENT).unwrap_or(0),
            errors = health.counter(ERRORS).unwrap_or(0),
            dropped = health.counter(DROPPED).unwrap_or(0),
            counters = ?health.own_counters(),
            "Source finished."
        );
    }
    if failed.len() == total {
        let names = failed.join(", ");
        if ran == 0 {
            bail!("no enabled source could start ({names}); the log above says why");
        }
        bail!("every source failed ({names}); the log above says why");
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
    let (batches_tx, outputs) = outputs::start(config, target, new_store(config)).await?;
    let settings = EngineSettings::from_config(config);
    let engine_layout = layout.clone();
    let (engine, inputs) =
        tokio::task::spawn_blocking(move || Engine::start(settings, engine_layout, batches_tx))
            .await
            .context("the dataflow start-up thread failed")??;
    running(&engine);
    Ok((engine, inputs, outputs))
}

/// A new in-memory store, registered as this process's.
fn new_store(config: &TapioConfig) -> Store {
    let store = Store::new(StoreSettings::from_config(&config.store));
    health().set_store(store.clone());
    store
}

/// How far event time must move on before the newest time per source is published again
/// (the lag metric), so that the router does not take a lock per observation.
const NEWEST_STEP_NS: u64 = 50_000_000;

/// `router`, also keeping every fact it routes in this process's store's fact history (the
/// entity timelines) and the newest event time taken in per source (its lag, on `/metrics`).
pub(crate) fn facts_into_store(router: Router) -> Router {
    let store = health().store();
    // The newest time per source published so far.
    let mut published: Vec<(String, u64)> = Vec::new();
    router.with_tap(Box::new(move |observation| {
        let (source, time) = match observation {
            tapio_model::Observation::Fact(fact) => {
                if let Some(store) = &store {
                    store.record_fact(fact);
                }
                (fact.id.source.as_ref(), fact.time_ns)
            }
            tapio_model::Observation::State(update) => {
                (update.record.evidence.source.as_ref(), update.time_ns)
            }
            tapio_model::Observation::Heartbeat(heartbeat) => {
                (heartbeat.source.as_str(), heartbeat.upto_ns)
            }
        };
        let heartbeat = matches!(observation, tapio_model::Observation::Heartbeat(_));
        match published.iter_mut().find(|(known, _)| known == source) {
            Some((_, newest)) if heartbeat || time >= newest.saturating_add(NEWEST_STEP_NS) => {
                *newest = (*newest).max(time);
                health().taken_in(source, time);
            }
            Some(_) => {}
            None => {
                published.push((source.to_owned(), time));
                health().taken_in(source, time);
            }
        }
    }))
}

/// The dataflow has started.
fn running(engine: &Engine) {
    health().set_engine(engine.counters());
    health().set_dataflow(Phase::Running, None);
}

/// The dataflow has ended with `result`.
fn ended<T>(result: &Result<T, tapio_dataflow::EngineError>) {
    match result {
        Ok(_) => health().set_dataflow(Phase::Finished, None),
        Err(error) => health().set_dataflow(Phase::Failed, Some(error.to_string())),
    }
}

/// Whether the API is served, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Serve {
    /// Not at all.
    No,
    /// While the pipeline runs.
    WhileRunning,
    /// While the pipeline runs, and after it has finished until the process is stopped.
    UntilStopped,
}

/// Starts the API over this process's store when `serve` and `api.enabled` say so.
///
/// # Errors
/// When it cannot listen or read its token.
pub(crate) async fn serve_api(config: &TapioConfig, serve: Serve) -> Result<Option<api::Server>> {
    if serve == Serve::No || !config.api.enabled {
        return Ok(None);
    }
    let store = health()
        .store()
        .context("the API needs the in-memory store, which has not started")?;
    Ok(Some(
        api::serve(&config.api, &config.api.address, store).await?,
    ))
}

/// Runs `collectors` through the correlation dataflow into `target`.
pub(crate) async fn correlate(
    config: &TapioConfig,
    collectors: Vec<Box<dyn Source>>,
    layout: ClusterLayout,
    target: Target,
    run_for: Option<Duration>,
    serve: Serve,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    stop_on_signal_or_timer(&shutdown, run_for);
    let (batches_tx, outputs) = outputs::start(config, target, new_store(config)).await?;
    let server = serve_api(config, serve).await?;
    let (report, sources_result) =
        run_dataflow(config, collectors, layout, batches_tx, &shutdown).await?;
    let written = outputs.finish().await?;
    log_finished(&report, &written);
    if let Some(server) = server {
        if serve == Serve::UntilStopped && !shutdown.is_cancelled() {
            tracing::info!(
                address = %format!("http://{}", server.address),
                "Finished; the API keeps serving until stopped (SIGINT or SIGTERM)."
            );
            shutdown.cancelled().await;
        }
        server.stop().await;
    }
    shutdown.cancel();
    sources_result
}

/// Runs `collectors` through the correlation dataflow and keeps its closed ticks in memory, in
/// order: what a backtest compares.
pub(crate) async fn correlate_in_memory(
    config: &TapioConfig,
    collectors: Vec<Box<dyn Source>>,
    layout: ClusterLayout,
) -> Result<Vec<ClosedBatch>> {
    let shutdown = CancellationToken::new();
    stop_on_signal_or_timer(&shutdown, None);
    let (batches_tx, mut batches_rx) =
        mpsc::channel::<ClosedBatch>(config.correlation.engine.output_buffer_size);
    let kept = tokio::spawn(async move {
        let mut batches = Vec::new();
        while let Some(batch) = batches_rx.recv().await {
            batches.push(batch);
        }
        batches
    });
    let (report, sources_result) =
        run_dataflow(config, collectors, layout, batches_tx, &shutdown).await?;
    let batches = kept.await.context("the output collector failed")?;
    let changes = batches.iter().map(|batch| batch.changes.len() as u64).sum();
    let written = tapio_sinks::SinkReport {
        batches: batches.len() as u64,
        changes,
    };
    log_finished(&report, &written);
    shutdown.cancel();
    sources_result?;
    Ok(batches)
}

/// Starts the dataflow writing its closed ticks to `batches`, feeds it what `collectors`
/// observe until they end, and waits for it to finish. Returns the dataflow's report and how
/// the sources ended.
async fn run_dataflow(
    config: &TapioConfig,
    collectors: Vec<Box<dyn Source>>,
    layout: ClusterLayout,
    batches: mpsc::Sender<ClosedBatch>,
    shutdown: &CancellationToken,
) -> Result<(EngineReport, Result<()>)> {
    let settings = EngineSettings::from_config(config);
    let engine_layout = layout.clone();
    let (engine, inputs) =
        tokio::task::spawn_blocking(move || Engine::start(settings, engine_layout, batches))
            .await
            .context("the dataflow start-up thread failed")??;
    running(&engine);
    tracing::info!(
        workers = layout.workers,
        processes = layout.processes,
        process = layout.process,
        "Dataflow started."
    );
    let (observations_tx, observations_rx) =
        mpsc::channel(config.correlation.engine.event_buffer_size);
    let router = tokio::spawn(facts_into_store(Router::new(layout, inputs)).run(observations_rx));
    let (sources_result, progress) =
        run_collectors(collectors, &node_name(config), observations_tx, shutdown).await;
    router.await.context("the input router failed")?;
    let report = tokio::task::spawn_blocking(move || engine.join())
        .await
        .context("the dataflow thread failed")?;
    ended(&report);
    let report = report?;
    progress.abort();
    Ok((report, sources_result))
}

/// Waits for the dataflow and every output to finish, then logs what went through.
pub(crate) async fn finish_dataflow(engine: Engine, outputs: outputs::Outputs) -> Result<()> {
    let report = tokio::task::spawn_blocking(move || engine.join())
        .await
        .context("the dataflow thread failed")?;
    ended(&report);
    let report = report?;
    let written = outputs.finish().await?;
    log_finished(&report, &written);
    Ok(())
}

fn log_finished(report: &EngineReport, written: &tapio_sinks::SinkReport) {
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
}

/// Records what `sources` observe into `path`.
pub(crate) async fn record(
    config: &TapioConfig,
    collectors: Vec<Box<dyn Source>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_own_rate() {
        let start = Instant::now();
        let later = start + PROGRESS_EVERY;
        let mut busy = Rate::new(start);
        let mut idle = Rate::new(start);
        assert_eq!(busy.update(5_000, later), 1_000);
        // With one shared counter this was (0 - 5000) / 5, which wraps.
        assert_eq!(idle.update(0, later), 0);
        assert_eq!(busy.update(5_000, later + PROGRESS_EVERY), 0);
        assert_eq!(idle.update(10, later + PROGRESS_EVERY), 2);
    }
}
