//! The keyspace watch: every change under the prefix, delivered at its revision, resumed
//! after the kept revision, re-listed when etcd compacted past it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tapio_config::EtcdCollectorConfig;
use tapio_model::{EtcdKeyChange, EtcdOperation, Fact, FactPayload, Heartbeat, Observation};
use tapio_sources::{Delivery, Positions, SourceContext, now_ns};
use tokio::sync::mpsc;

use crate::keys::{prefix_end, split_key};
use crate::{endpoint_address, load_revision, pause, save_revision};

/// Longest wait between two attempts to reach etcd.
const MOST_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest time between two writes of the revision file.
const SAVE_EVERY: Duration = Duration::from_millis(100);
/// Shortest time between two heartbeats inside deliveries.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Keys read per request of a re-list.
const PAGE: i64 = 1000;

/// Why a watch ended before shutdown.
enum Ended {
    /// Shutdown, or the dataflow stopped taking deliveries.
    Stop,
    /// etcd compacted its history past the revision the watch needed.
    Compacted(i64),
    /// etcd could not be reached or the stream broke.
    Failed(String),
}

/// Where the watch delivers and saves.
struct Deliverer<'a> {
    cx: &'a SourceContext,
    out: mpsc::Sender<Delivery>,
    endpoint: String,
    prefix: String,
    /// The revision of the last delivery (0: none yet).
    delivered: i64,
    last_heartbeat: Instant,
}

impl Deliverer<'_> {
    fn fact(&self, kv: &KeyValue, operation: EtcdOperation, revision: i64) -> Option<Observation> {
        let Some(parts) = split_key(&self.prefix, kv.key()) else {
            self.cx.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                key = %String::from_utf8_lossy(kv.key()),
                "An etcd key under the prefix does not name an object; skipped."
            );
            return None;
        };
        let value_size = match operation {
            EtcdOperation::Delete => 0,
            _ => kv.value().len() as u64,
        };
        Some(Observation::Fact(Fact {
            id: self.cx.next_fact_id(),
            time_ns: now_ns(),
            payload: FactPayload::EtcdKeyChange(EtcdKeyChange {
                endpoint: self.endpoint.clone(),
                resource: parts.resource,
                namespace: parts.namespace,
                name: parts.name,
                operation,
                revision,
                value_size,
            }),
        }))
    }

    /// Hands `observations` over at `revision`; `false` when the dataflow stopped.
    async fn deliver(&mut self, revision: i64, mut observations: Vec<Observation>) -> bool {
        if revision <= self.delivered {
            return true;
        }
        let facts = observations.len() as u64;
        if self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            self.last_heartbeat = Instant::now();
            observations.push(Observation::Heartbeat(Heartbeat {
                source: "etcd".into(),
                node: self.cx.node.to_string(),
                upto_ns: now_ns(),
            }));
        }
        let delivery = Delivery {
            position: u64::try_from(revision).unwrap_or(0),
            observations,
            stored_ns: 0,
        };
        if self.out.send(delivery).await.is_err() {
            return false;
        }
        self.delivered = revision;
        self.cx.stats.sent.fetch_add(facts, Ordering::Relaxed);
        true
    }
}

/// Watches the keyspace until shutdown, reconnecting with a growing pause when etcd cannot be
/// reached.
pub async fn run(cx: &SourceContext, config: &EtcdCollectorConfig, positions: Positions) {
    let Positions { out, mut taken_in } = positions;
    let revision_file = (!config.revision_file.trim().is_empty())
        .then(|| PathBuf::from(config.revision_file.trim()));
    let kept = match &revision_file {
        Some(path) => load_revision(path).unwrap_or_else(|error| {
            cx.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %error, "Ignoring the etcd revision file; watching from now.");
            None
        }),
        None => None,
    };
    match kept {
        Some(revision) => {
            tracing::info!(revision, "Resuming the etcd watch after the kept revision.")
        }
        None => tracing::info!("Watching etcd from its current revision."),
    }
    let mut deliverer = Deliverer {
        cx,
        out,
        endpoint: endpoint_address(&config.endpoints[0]),
        prefix: config.prefix.clone(),
        delivered: kept.unwrap_or(0),
        last_heartbeat: Instant::now(),
    };
    // Saves the revision the dataflow has taken in, at most every SAVE_EVERY.
    let saver = async {
        let Some(path) = &revision_file else {
            cx.shutdown.cancelled().await;
            return;
        };
        let mut saved = kept.unwrap_or(0);
        let save = |taken: u64, saved: &mut i64| {
            let taken = i64::try_from(taken).unwrap_or(i64::MAX);
            if taken <= *saved {
                return;
            }
            match save_revision(path, taken) {
                Ok(()) => *saved = taken,
                Err(error) => {
                    tracing::error!(error = %error, "Cannot keep the etcd revision; a restart would report again what came after the last kept one.")
                }
            }
        };
        loop {
            tokio::select! {
                () = cx.shutdown.cancelled() => break,
                changed = taken_in.changed() => {
                    if changed.is_err() { break; }
                    let taken = *taken_in.borrow_and_update();
                    save(taken, &mut saved);
                    tokio::time::sleep(SAVE_EVERY).await;
                }
            }
        }
        // Wait (a little) for the dataflow to take in what was handed over, then save.
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            let taken = *taken_in.borrow_and_update();
            save(taken, &mut saved);
            tokio::select! {
                changed = taken_in.changed() => if changed.is_err() { break },
                () = &mut deadline => break,
            }
        }
        let taken = *taken_in.borrow();
        save(taken, &mut saved);
    };
    let watcher = async {
        let mut backoff = Duration::from_millis(250);
        let mut compacted_at: Option<i64> = None;
        loop {
            if cx.shutdown.is_cancelled() {
                break;
            }
            let ended = match crate::connect(&config.endpoints, config).await {
                Ok(client) => {
                    let relisted = match compacted_at.take() {
                        Some(compacted) => relist(&mut deliverer, client.clone(), compacted).await,
                        None => Ok(()),
                    };
                    match relisted {
                        Ok(()) => watch(&mut deliverer, client, &mut backoff).await,
                        Err(error) => Ended::Failed(error),
                    }
                }
                Err(error) => Ended::Failed(error.to_string()),
            };
            match ended {
                Ended::Stop => break,
                Ended::Compacted(revision) => {
                    tracing::warn!(
                        compacted = revision,
                        kept = deliverer.delivered,
                        "etcd compacted its history past the revision the watch resumes from; re-listing the keys changed since (deletions in between are not seen)."
                    );
                    compacted_at = Some(revision);
                }
                Ended::Failed(error) => {
                    cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        endpoints = ?config.endpoints,
                        error = %error,
                        retry_in = ?backoff,
                        "Cannot watch etcd; retrying."
                    );
                    if !pause(&cx.shutdown, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MOST_BACKOFF);
                }
            }
        }
        // Closing the deliveries lets the saver see the last one taken in.
        drop(deliverer);
    };
    tokio::join!(saver, watcher);
}

/// Lists the keys whose last change is after the last delivered revision, as one delivery at
/// the list's revision.
async fn relist(
    deliverer: &mut Deliverer<'_>,
    mut client: Client,
    compacted: i64,
) -> Result<(), String> {
    let since = deliverer.delivered;
    let prefix = deliverer.prefix.as_bytes().to_vec();
    let end = prefix_end(&prefix);
    let mut from = prefix.clone();
    let mut at = 0i64;
    let mut changed: Vec<KeyValue> = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_min_mod_revision(since + 1);
        if at > 0 {
            options = options.with_revision(at);
        }
        let mut response = client
            .get(from.clone(), Some(options))
            .await
            .map_err(|error| error.to_string())?;
        if at == 0 {
            at = response.header().map_or(0, |header| header.revision());
        }
        let next = response
            .more()
            .then(|| response.kvs().last().map(|last| last.key().to_vec()))
            .flatten();
        changed.extend(response.take_kvs());
        match next {
            Some(mut key) => {
                key.push(0);
                from = key;
            }
            None => break,
        }
    }
    changed.sort_by_key(KeyValue::mod_revision);
    let count = changed.len();
    let observations: Vec<Observation> = changed
        .iter()
        .filter_map(|kv| {
            let operation = if kv.create_revision() > since {
                EtcdOperation::Create
            } else {
                EtcdOperation::Update
            };
            deliverer.fact(kv, operation, kv.mod_revision())
        })
        .collect();
    deliverer
        .cx
        .stats
        .received
        .fetch_add(count as u64, Ordering::Relaxed);
    tracing::warn!(
        compacted,
        since,
        revision = at,
        keys = count,
        "Re-listed the etcd keyspace after a compaction."
    );
    if deliverer.deliver(at.max(since + 1), observations).await {
        Ok(())
    } else {
        Err("the dataflow stopped taking deliveries".into())
    }
}

/// Watches from the revision after the last delivered one until the stream ends.
async fn watch(deliverer: &mut Deliverer<'_>, mut client: Client, backoff: &mut Duration) -> Ended {
    let start = if deliverer.delivered > 0 {
        deliverer.delivered + 1
    } else {
        // A first start: from now, and the current revision is the first position kept.
        let response = match client
            .get(
                deliverer.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        {
            Ok(response) => response,
            Err(error) => return Ended::Failed(error.to_string()),
        };
        let current = response.header().map_or(0, |header| header.revision());
        if !deliverer.deliver(current, Vec::new()).await {
            return Ended::Stop;
        }
        current + 1
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_progress_notify();
    let mut stream = match client
        .watch(deliverer.prefix.as_bytes(), Some(options))
        .await
    {
        Ok(stream) => stream,
        Err(error) => return Ended::Failed(error.to_string()),
    };
    tracing::info!(from = start, "Watching the etcd keyspace.");
    let shutdown = deliverer.cx.shutdown.clone();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ended::Stop,
            message = stream.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Ended::Failed("etcd closed the watch stream".into()),
            Err(error) => return Ended::Failed(error.to_string()),
        };
        *backoff = Duration::from_millis(250);
        if response.compact_revision() > 0 {
            return Ended::Compacted(response.compact_revision());
        }
        if response.canceled() {
            return Ended::Failed(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            ));
        }
        let events = response.events();
        if events.is_empty() {
            // A progress notification: every change up to its revision has been sent.
            if !response.created() {
                let revision = response.header().map_or(0, |header| header.revision());
                if !deliverer.deliver(revision, Vec::new()).await {
                    return Ended::Stop;
                }
            }
            continue;
        }
        deliverer
            .cx
            .stats
            .received
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let mut revision = deliverer.delivered;
        let observations: Vec<Observation> = events
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                revision = revision.max(kv.mod_revision());
                let operation = match event.event_type() {
                    EventType::Delete => EtcdOperation::Delete,
                    EventType::Put if kv.version() == 1 => EtcdOperation::Create,
                    EventType::Put => EtcdOperation::Update,
                };
                deliverer.fact(kv, operation, kv.mod_revision())
            })
            .collect();
        if !deliverer.deliver(revision, observations).await {
            return Ended::Stop;
        }
    }
}
