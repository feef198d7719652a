//! Prometheus metrics (`prometheus-client`), served on `/metrics`.
//!
//! Most values are read at scrape time from what already counts them: each source's
//! [`tapio_sources::SourceHealth`] counters, the dataflow's live counters
//! ([`tapio_dataflow::EngineCounters`]), the in-memory store's contents and each sink's state;
//! the process's CPU and resident memory from `/proc/self`. Latencies that only exist at the
//! moment they happen are histograms fed where they happen: a closed tick's end to its arrival
//! in the store, the store's apply time, the API's requests.
//!
//! Names follow Prometheus conventions: `tapio_` prefix, units in the name (`_seconds`,
//! `_bytes`), `_total` for counters; labels are bounded sets (source kinds, sink names, rule
//! families and kinds, endpoint names).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tapio_sources::{DROPPED, ERRORS, RECEIVED, SENT, Status};

use crate::health::{Phase, health};

type Labels = Vec<(&'static str, String)>;

/// The process's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    tick_to_sink: Family<Labels, Histogram>,
    sink_commit: Family<Labels, Histogram>,
    sink_transactions: Family<Labels, Counter>,
    sink_coalesced: Family<Labels, Counter>,
    sink_lag: Family<Labels, Gauge>,
    requests: Family<Labels, Histogram>,
}

/// This process's [`Metrics`].
pub(crate) fn metrics() -> Arc<Metrics> {
    static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(|| Arc::new(Metrics::new()));
    Arc::clone(&METRICS)
}

fn seconds_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let tick_to_sink = Family::<Labels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let sink_commit = Family::<Labels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let requests = Family::<Labels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "tapio_tick_to_sink_seconds",
            "Wall time from the end of a closed tick (its event time) to its arrival at a sink",
            tick_to_sink.clone(),
        );
        registry.register(
            "tapio_sink_commit_seconds",
            "Time a sink took to write one closed tick",
            sink_commit.clone(),
        );
        let sink_transactions = Family::<Labels, Counter>::default();
        let sink_coalesced = Family::<Labels, Counter>::default();
        let sink_lag = Family::<Labels, Gauge>::default();
        registry.register(
            "tapio_sink_transactions",
            "Transactions a sink committed (fewer than its ticks when it coalesced queued ticks)",
            sink_transactions.clone(),
        );
        registry.register(
            "tapio_sink_coalesced_ticks",
            "Closed ticks a sink folded into the transaction of an earlier queued tick",
            sink_coalesced.clone(),
        );
        registry.register(
            "tapio_sink_lag_ticks",
            "Closed ticks handed to a sink and not yet committed (queued or being written)",
            sink_lag.clone(),
        );
        registry.register(
            "tapio_api_request_seconds",
            "Time the API took to answer, per endpoint",
            requests.clone(),
        );
        registry.register_collector(Box::new(Snapshot));
        Metrics {
            registry,
            tick_to_sink,
            sink_commit,
            sink_transactions,
            sink_coalesced,
            sink_lag,
            requests,
        }
    }

    /// A closed tick ending at `tick_end` (ns since the epoch) reached `sink` now.
    pub(crate) fn observe_tick_at_sink(&self, sink: &'static str, tick_end: u64) {
        let now = tapio_sources::now_ns();
        let seconds = now.saturating_sub(tick_end) as f64 / 1e9;
        self.tick_to_sink
            .get_or_create(&vec![("sink", sink.to_owned())])
            .observe(seconds);
    }

    /// `sink` wrote one closed tick in `took`.
    pub(crate) fn observe_commit(&self, sink: &'static str, took: Duration) {
        self.sink_commit
            .get_or_create(&vec![("sink", sink.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// `sink` committed `transactions` more transactions holding `coalesced` more ticks beyond
    /// the first of each, and has `lag` ticks handed to it and not committed.
    pub(crate) fn observe_sink_progress(
        &self,
        sink: &'static str,
        transactions: u64,
        coalesced: u64,
        lag: usize,
    ) {
        let labels = vec![("sink", sink.to_owned())];
        self.sink_transactions
            .get_or_create(&labels)
            .inc_by(transactions);
        self.sink_coalesced.get_or_create(&labels).inc_by(coalesced);
        self.sink_lag
            .get_or_create(&labels)
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// The API answered a request to `endpoint` in `took`.
    pub(crate) fn observe_request(&self, endpoint: &'static str, took: Duration) {
        self.requests
            .get_or_create(&vec![("endpoint", endpoint.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The values read at scrape time.
#[derive(Debug)]
struct Snapshot;

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    // The encoder appends `_total` to a counter's name.
    let name = name.strip_suffix("_total").unwrap_or(name);
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Resident memory (bytes) and CPU time (seconds) of this process, from `/proc/self`.
fn process_usage() -> Option<(u64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // The kernel's USER_HZ is 100 on every Linux architecture Tapio runs on.
    Some((resident_pages * 4096, (utime + stime) as f64 / 100.0))
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let health = health();
        let sources = health.sources();
        let per_source = |name: &str| -> Vec<(Labels, u64)> {
            sources
                .iter()
                .map(|source| {
                    (
                        vec![("source", source.kind.to_owned())],
                        source.counter(name).unwrap_or(0),
                    )
                })
                .collect()
        };
        counter(
            &mut encoder,
            "tapio_source_observations_total",
            "Observations a source handed to the dataflow",
            &per_source(SENT),
        )?;
        counter(
            &mut encoder,
            "tapio_source_received_total",
            "Records a source read from what it watches",
            &per_source(RECEIVED),
        )?;
        counter(
            &mut encoder,
            "tapio_source_errors_total",
            "Records a source could not read or convert",
            &per_source(ERRORS),
        )?;
        counter(
            &mut encoder,
            "tapio_source_dropped_total",
            "Observations a source dropped",
            &per_source(DROPPED),
        )?;
        let up: Vec<(Labels, f64)> = sources
            .iter()
            .map(|source| {
                (
                    vec![("source", source.kind.to_owned())],
                    if source.status == Status::Running {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "tapio_source_up",
            "1 while a source runs",
            &up,
        )?;

        let now_s = tapio_sources::now_ns() as f64 / 1e9;
        let lag: Vec<(Labels, f64)> = health
            .newest_per_source()
            .into_iter()
            .map(|(source, newest)| (vec![("source", source)], now_s - newest as f64 / 1e9))
            .collect();
        gauge(
            &mut encoder,
            "tapio_source_lag_seconds",
            "Wall time minus the newest event time the dataflow took in from a source (facts, state updates and heartbeats, by the source their id names)",
            &lag,
        )?;

        if let Some(engine) = health.engine() {
            let now = engine.snapshot();
            counter(
                &mut encoder,
                "tapio_dataflow_facts_total",
                "Facts the dataflow took in",
                &[(Vec::new(), now.facts)],
            )?;
            counter(
                &mut encoder,
                "tapio_dataflow_facts_unread_total",
                "Facts no enabled rule reads, kept out of the dataflow",
                &[(Vec::new(), now.facts_unread)],
            )?;
            counter(
                &mut encoder,
                "tapio_dataflow_late_total",
                "Facts and state updates that arrived behind the watermark and were clamped to it",
                &[(Vec::new(), now.late)],
            )?;
            counter(
                &mut encoder,
                "tapio_dataflow_heartbeats_total",
                "Heartbeats the dataflow's first worker saw",
                &[(Vec::new(), now.heartbeats)],
            )?;
            if let Some(watermark) = now.watermark {
                let behind = tapio_sources::now_ns() as f64 / 1e9 - watermark as f64 / 1e9;
                gauge(
                    &mut encoder,
                    "tapio_watermark_behind_seconds",
                    "Wall time minus the dataflow's watermark (the event time every source has promised to have passed)",
                    &[(Vec::new(), behind)],
                )?;
            }
        }
        let dataflow_up = health
            .dataflow()
            .is_some_and(|(phase, _)| phase == Phase::Running);
        gauge(
            &mut encoder,
            "tapio_dataflow_up",
            "1 while the dataflow runs",
            &[(Vec::new(), if dataflow_up { 1.0 } else { 0.0 })],
        )?;

        if let Some(store) = health.store() {
            let state = store.read();
            let current: Vec<(Labels, f64)> = state
                .current_by_kind()
                .into_iter()
                .map(|((family, kind), count)| {
                    (
                        vec![("family", family.to_owned()), ("kind", kind.to_owned())],
                        count as f64,
                    )
                })
                .collect();
            gauge(
                &mut encoder,
                "tapio_correlations_current",
                "Correlations current now",
                &current,
            )?;
            gauge(
                &mut encoder,
                "tapio_correlations_retracted_kept",
                "Retracted correlations the store keeps as history",
                &[(Vec::new(), state.history_len() as f64)],
            )?;
            counter(
                &mut encoder,
                "tapio_correlation_changes_total",
                "Correlation changes (additions and retractions) the dataflow emitted",
                &[(Vec::new(), state.changes())],
            )?;
            counter(
                &mut encoder,
                "tapio_ticks_with_changes_total",
                "Closed ticks that changed the set of current correlations",
                &[(Vec::new(), state.ticks())],
            )?;
            if let Some(tick) = state.tick() {
                gauge(
                    &mut encoder,
                    "tapio_last_tick_end_seconds",
                    "End of the newest closed tick with changes, seconds since the Unix epoch",
                    &[(Vec::new(), tick as f64 / 1e9)],
                )?;
            }
        }

        if let Some(publisher) = health.publisher() {
            use std::sync::atomic::Ordering;
            gauge(
                &mut encoder,
                "tapio_nats_spool_bytes",
                "Bytes in the node agent's spool: observations written while NATS was unreachable, not yet published",
                &[(
                    Vec::new(),
                    publisher.spool_bytes.load(Ordering::Relaxed) as f64,
                )],
            )?;
            gauge(
                &mut encoder,
                "tapio_nats_unacknowledged_observations",
                "Observations the node agent handed to NATS that JetStream has not acknowledged yet",
                &[(
                    Vec::new(),
                    publisher.unacknowledged.load(Ordering::Relaxed) as f64,
                )],
            )?;
        }

        let sinks = health.sinks();
        let failures: Vec<(Labels, u64)> = sinks
            .iter()
            .map(|sink| (vec![("sink", sink.name.to_owned())], sink.failures))
            .collect();
        counter(
            &mut encoder,
            "tapio_sink_failures_total",
            "Times a sink failed to write (a sink that fails stops)",
            &failures,
        )?;
        let depth: Vec<(Labels, f64)> = health
            .queue_depths()
            .into_iter()
            .map(|(sink, depth)| (vec![("sink", sink.to_owned())], depth as f64))
            .collect();
        gauge(
            &mut encoder,
            "tapio_sink_queue_depth",
            "Closed ticks waiting for a sink",
            &depth,
        )?;

        if let Some((resident, cpu)) = process_usage() {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                &[(Vec::new(), resident as f64)],
            )?;
            let mut metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(metric.encode_family(&Vec::<(&str, String)>::new())?)?;
        }
        Ok(())
    }
}
