//! The NATS JetStream transport modes: node agent (`run --mode collectors`), correlation job
//! (`run --mode correlation`) and backtest source (`replay nats://…`). Kept apart from
//! `pipeline.rs`, which wires the single-process modes.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tapio_config::{NatsConfig, TapioConfig};
use tapio_dataflow::{ClusterLayout, Router, TakenIn};
use tapio_model::{Observation, TimeNs};
use tapio_sinks_jsonl::Target;
use tapio_sinks_nats::{Publisher, StreamSettings, ensure_stream, wire};
use tapio_sources::{Delivery, Positions, Source, SourceContext};
use tapio_sources_nats::{NatsEndpoint, NatsReplaySource};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{
    Serve, finish_dataflow, node_name, report_progress, run_collectors, serve_api, start,
    start_dataflow, stop_on_signal_or_timer, wait_for_sources,
};

fn nats_config(config: &TapioConfig, mode: &str) -> Result<NatsConfig> {
    let nats = &config.integrations.nats;
    if nats.url.is_empty() {
        bail!(
            "{mode} needs NATS JetStream: set integrations.nats.url (e.g. nats://127.0.0.1:4222) \
             in the configuration"
        );
    }
    Ok(nats.clone())
}

/// Node agent: runs `sources` and publishes what they observe to JetStream.
pub(crate) async fn collect(
    config: &TapioConfig,
    collectors: Vec<Box<dyn Source>>,
    run_for: Option<Duration>,
) -> Result<()> {
    let nats = nats_config(config, "--mode collectors")?;
    let shutdown = CancellationToken::new();
    stop_on_signal_or_timer(&shutdown, run_for);
    let publisher = Publisher::connect(&nats).await?;
    crate::health::health().set_publisher(publisher.gauges());
    // The agent correlates nothing: it serves health and metrics only.
    let server = if config.api.enabled {
        Some(crate::api::serve_metrics(&config.api.address).await?)
    } else {
        None
    };
    let (observations_tx, observations_rx) =
        mpsc::channel(config.correlation.engine.event_buffer_size);
    // A publisher that stops for good (a stream it cannot use, a spool it cannot write) stops
    // the collectors too: the agent exits with its error rather than collecting into nothing.
    let publishing = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = publisher.run(observations_rx, shutdown.clone()).await;
            if result.is_err() {
                shutdown.cancel();
            }
            result
        }
    });
    tracing::info!(url = %nats.url, stream = %nats.stream, subjects = %wire::stream_subject(&nats.subject_prefix), "Publishing to NATS JetStream.");
    let (sources_result, progress) =
        run_collectors(collectors, &node_name(config), observations_tx, &shutdown).await;
    let report = publishing.await.context("the NATS publisher crashed")??;
    shutdown.cancel();
    progress.abort();
    if let Some(server) = server {
        server.stop().await;
    }
    tracing::info!(
        published = report.published,
        messages = report.messages,
        duplicates = report.duplicates,
        spooled = report.spooled,
        dropped = report.dropped,
        errors = report.errors,
        left_in_spool = report.left_in_spool,
        "Publishing finished."
    );
    sources_result
}

/// Connects to NATS and creates or checks the stream, waiting while the server is unreachable.
async fn setup_stream(nats: &NatsConfig, shutdown: &CancellationToken) -> Result<()> {
    let options =
        tapio_sinks_nats::with_credentials(async_nats::ConnectOptions::new(), &nats.security())
            .await?;
    let client = options
        .name("tapio-setup")
        .retry_on_initial_connect()
        .connect(nats.url.as_str())
        .await
        .with_context(|| format!("cannot set up a NATS client for {}", nats.url))?;
    let js = async_nats::jetstream::new(client);
    let settings = StreamSettings::from_config(nats);
    let mut delay = Duration::from_millis(50);
    loop {
        match ensure_stream(&js, &settings).await {
            Ok(_) => return Ok(()),
            Err(error) if error.is_retryable() => {
                tracing::warn!(url = %nats.url, error = %error, "NATS is not ready; retrying.");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => bail!("stopped before NATS at {} was reachable", nats.url),
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Correlation job: the stream through a durable consumer → dataflow → outputs.
pub(crate) async fn correlate(
    config: &TapioConfig,
    layout: ClusterLayout,
    target: Target,
    run_for: Option<Duration>,
) -> Result<()> {
    let nats = nats_config(config, "--mode correlation")?;
    let shutdown = CancellationToken::new();
    stop_on_signal_or_timer(&shutdown, run_for);
    setup_stream(&nats, &shutdown).await?;
    let engine_config = &config.correlation.engine;

    let (engine, inputs, outputs) = start_dataflow(config, &layout, target).await?;
    let server = serve_api(config, Serve::WhileRunning).await?;

    // Process I of a cluster reads every message through its own durable consumer.
    let consumer =
        tapio_sources_nats::consumer_from_config(&nats, layout.process, layout.processes)?;
    // The source acknowledges what the engine has taken in: its deliveries are routed and
    // marked at their positions, and the engine's progress goes back to it.
    let (deliveries_tx, deliveries_rx) = mpsc::channel(engine_config.event_buffer_size);
    let (observations_tx, observations_rx) = mpsc::channel(engine_config.event_buffer_size);
    let (taken_in_tx, taken_in_rx) = watch::channel(0u64);
    let router = tokio::spawn(route_deliveries(
        crate::pipeline::facts_into_store(Router::new(layout.clone(), inputs)),
        deliveries_rx,
        observations_rx,
    ));
    let forwarder = tokio::spawn(forward_taken_in(engine.taken_in(), taken_in_tx));
    let cx = SourceContext::new(
        consumer.kind(),
        node_name(config),
        observations_tx,
        shutdown.child_token(),
    )
    .with_positions(Positions {
        out: deliveries_tx,
        taken_in: taken_in_rx,
    });
    tracing::info!(
        workers = layout.workers,
        processes = layout.processes,
        process = layout.process,
        stream = %nats.stream,
        "Correlating the NATS stream."
    );
    let running = vec![start(consumer, cx)];
    let progress = report_progress(&running, &shutdown);
    let sources_result = wait_for_sources(running).await;
    router.await.context("the input router failed")?;
    finish_dataflow(engine, outputs).await?;
    if let Some(server) = server {
        server.stop().await;
    }
    forwarder.abort();
    shutdown.cancel();
    progress.abort();
    sources_result
}

/// Observations routed between two marks at most; a mark also flushes every worker's batch.
const MARK_EVERY: u32 = 4096;

/// Routes deliveries to the workers and marks their positions, so that the engine can say
/// what it has taken in; also routes what the source sends without a position (heartbeats).
/// Ends the stream when the source stops.
async fn route_deliveries(
    mut router: Router,
    mut deliveries: mpsc::Receiver<Delivery>,
    mut unpositioned: mpsc::Receiver<Observation>,
) {
    let mut unmarked: Option<u64> = None;
    let mut since_mark = 0u32;
    let mut unpositioned_open = true;
    loop {
        let delivery = match deliveries.try_recv() {
            Ok(delivery) => delivery,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Idle: hand everything over and mark it.
                if let Some(position) = unmarked.take() {
                    since_mark = 0;
                    if !router.mark(position).await {
                        return;
                    }
                }
                tokio::select! {
                    delivery = deliveries.recv() => match delivery {
                        Some(delivery) => delivery,
                        None => break,
                    },
                    observation = unpositioned.recv(), if unpositioned_open => {
                        match observation {
                            // Rare (the NATS consumer sends everything at a position):
                            // handed over at once rather than held until the next mark.
                            Some(observation) => {
                                if !router.route(observation).await || !router.flush().await {
                                    return;
                                }
                            }
                            None => unpositioned_open = false,
                        }
                        continue;
                    }
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let routed = delivery.observations.len() as u32;
        for observation in delivery.observations {
            if !router.route(observation).await {
                return;
            }
        }
        unmarked = Some(delivery.position);
        since_mark += routed.max(1);
        if since_mark >= MARK_EVERY {
            since_mark = 0;
            if let Some(position) = unmarked.take()
                && !router.mark(position).await
            {
                return;
            }
        }
    }
    if let Some(position) = unmarked {
        router.mark(position).await;
    }
    router.finish().await;
}

/// Publishes the engine's taken-in position to the source until the source is gone.
async fn forward_taken_in(taken_in: TakenIn, to_reader: watch::Sender<u64>) {
    let mut every = tokio::time::interval(Duration::from_millis(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = to_reader.closed() => return,
        }
        let position = taken_in.position();
        to_reader.send_if_modified(|current| {
            let advanced = position > *current;
            if advanced {
                *current = position;
            }
            advanced
        });
    }
}

/// The source of `tapio replay nats://HOST:PORT/STREAM[?from_seq=N|since=TIME]`.
pub(crate) fn replay_source(
    address: &str,
    start: Option<TimeNs>,
    end: Option<TimeNs>,
    security: tapio_config::NatsSecurity,
) -> Result<Box<dyn Source>> {
    let mut endpoint = NatsEndpoint::parse_replay_url(address)?;
    endpoint.security = security;
    Ok(Box::new(
        NatsReplaySource::new(endpoint).between(start, end),
    ))
}
