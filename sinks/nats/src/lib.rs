//! Publishes a node agent's observations and heartbeats to NATS JetStream (layer L2; may depend
//! on `tapio-sinks`, `tapio-model` and `tapio-config`; uses only the last two, since it carries
//! observations rather than the correlation batches of the `tapio_sinks::Sink` contract).
//!
//! `tapio run --mode collectors` hands every observation its collectors produce to a
//! [`Publisher`]. The publisher takes what is already queued in its channel (it never waits
//! for more: latency first), groups consecutive observations with the same subject
//! `<subject_prefix>.<source>.<node>` into messages of at most
//! [`wire::MAX_BATCH_OBSERVATIONS`] observations and [`wire::MAX_BATCH_BYTES`] bytes, and
//! publishes each with a `Nats-Msg-Id` fixed when the message is formed, for server-side
//! de-duplication ([`wire`] documents the format). It keeps at most `max_pending_publishes`
//! observations unacknowledged, spanning at most `max_unacknowledged_span` of event time (see
//! [`Publisher::run`] for why this bounds what a lost connection can reorder). When NATS is
//! unreachable (the client reports the connection lost, or a publish is not acknowledged
//! within `publish_timeout`) messages go whole, in order, to a bounded spool file;
//! when NATS is back the spool is drained in order, each message unchanged, before anything new
//! is published, and the client reconnects with a capped exponential backoff. Nothing is lost
//! and nothing is stored twice: unacknowledged publishes are re-sent from the spool with their
//! first id and the server drops the duplicates. A full spool drops messages, counts their
//! observations and says so in an error log. [`stream::ensure_stream`] creates or checks the
//! stream.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tapio_sinks_nats::Publisher;
//! let mut config = tapio_config::NatsConfig::default();
//! config.url = "nats://127.0.0.1:4222".into();
//! let (tx, rx) = tokio::sync::mpsc::channel(1024);
//! let publisher = Publisher::connect(&config).await?;
//! let task = tokio::spawn(publisher.run(rx, tokio_util::sync::CancellationToken::new()));
//! drop(tx); // sources done: the publisher flushes and returns
//! let report = task.await??;
//! assert_eq!(report.dropped, 0);
//! # Ok(()) }
//! ```

mod auth;
mod json;
mod spool;
pub mod stream;
pub mod wire;

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::{HeaderMap, connection::State};
use bytes::Bytes;
use futures_util::FutureExt;
use tapio_config::NatsConfig;
use tapio_model::{Observation, TimeNs};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use auth::{CredentialsError, with_credentials};
pub use spool::SpoolError;
pub use stream::{StreamError, StreamSettings, ensure_stream};
pub use wire::Batch;

/// Why the publisher stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// The client could not be set up (bad URL or options). Not retryable.
    #[error("cannot set up the NATS client for `{url}`")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The credentials cannot be used. Not retryable.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The spool file cannot be opened or written. Not retryable.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The stream exists with other settings. Not retryable.
    #[error(transparent)]
    Stream(StreamError),
}

/// What a publisher did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherReport {
    /// Observations the server stored (acknowledged, not duplicates).
    pub published: u64,
    /// Messages the server stored: `published` observations in fewer messages when batched.
    pub messages: u64,
    /// Observations in re-published messages the server had already stored.
    pub duplicates: u64,
    /// Observations written to the spool.
    pub spooled: u64,
    /// Observations dropped because the spool was full.
    pub dropped: u64,
    /// Spooled messages that could not be read back (torn by a crash while being written),
    /// skipped.
    pub errors: u64,
    /// Bytes left in the spool at exit (published at the next start).
    pub left_in_spool: u64,
}

/// What a running publisher holds now, for metrics: updated at every turn of its loop.
#[derive(Debug, Default)]
pub struct PublisherGauges {
    /// Bytes in the spool (written while NATS was unreachable, not yet published).
    pub spool_bytes: AtomicU64,
    /// Observations handed to the server and not yet acknowledged.
    pub unacknowledged: AtomicU64,
}

/// Publishes observations to JetStream, spooling while NATS is unreachable.
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: StreamSettings,
    prefix: String,
    max_pending: usize,
    timeout: Duration,
    span_ns: TimeNs,
    /// Counts the client's reports of a lost connection.
    disconnections: watch::Receiver<u64>,
    /// Counts the client's reports of a (re-)established connection.
    connections: watch::Receiver<u64>,
    spool_path: PathBuf,
    spool_max_bytes: u64,
    gauges: Arc<PublisherGauges>,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, async_nats::Error>> + Send>>;

/// The acknowledgements still owed for the messages that were unacknowledged when the
/// connection was lost, awaited together; each result comes with the message's observations.
type Resolving =
    Pin<Box<dyn Future<Output = Vec<(u64, Result<PublishAck, async_nats::Error>)>> + Send>>;

struct InFlight {
    ack: AckFuture,
    /// The message, kept to spool it if it is not acknowledged.
    batch: Batch,
    /// For a message read from the spool: the spool offset just after it.
    spool_end: Option<u64>,
}

/// Longest wait between checks of a lost connection.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First wait between checks of a lost connection.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

impl Publisher {
    /// Sets up a client for `config.url`. Returns at once: the connection is established in the
    /// background and re-established with backoff whenever it drops.
    ///
    /// # Errors
    /// When the URL or options are unusable.
    pub async fn connect(config: &NatsConfig) -> Result<Publisher, PublisherError> {
        let (disconnected, disconnections) = watch::channel(0u64);
        let (connected, connections) = watch::channel(0u64);
        let counters = std::sync::Arc::new((disconnected, connected));
        let options =
            with_credentials(async_nats::ConnectOptions::new(), &config.security()).await?;
        let client = options
            .name("tapio-agent")
            .event_callback(move |event| {
                let counters = std::sync::Arc::clone(&counters);
                async move {
                    let (disconnected, connected) = &*counters;
                    match event {
                        async_nats::Event::Disconnected => {
                            disconnected.send_modify(|count| *count += 1);
                        }
                        async_nats::Event::Connected => connected.send_modify(|count| *count += 1),
                        _ => {}
                    }
                }
            })
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let exponent = u32::try_from(attempts.min(8)).unwrap_or(8);
                (MIN_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF)
            })
            .connect(config.url.as_str())
            .await
            .map_err(|source| PublisherError::Connect {
                url: config.url.clone(),
                source,
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Publisher {
            client,
            js,
            settings: StreamSettings::from_config(config),
            prefix: config.subject_prefix.clone(),
            max_pending: config.max_pending_publishes,
            timeout: config.publish_timeout,
            span_ns: u64::try_from(config.max_unacknowledged_span.as_nanos()).unwrap_or(u64::MAX),
            disconnections,
            connections,
            spool_path: PathBuf::from(&config.spool_path),
            spool_max_bytes: config.spool_max_bytes,
            gauges: Arc::new(PublisherGauges::default()),
        })
    }

    /// The publisher's live spool size and unacknowledged observations.
    pub fn gauges(&self) -> Arc<PublisherGauges> {
        Arc::clone(&self.gauges)
    }

    async fn publish(&self, batch: &Batch) -> AckFuture {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", batch.id.as_str());
        // Handing the message to the client can wait while it is disconnected and its buffer is
        // full: bound that wait like the acknowledgement.
        let sent = tokio::time::timeout(
            self.timeout,
            self.js
                .publish_with_headers(batch.subject.clone(), headers, batch.payload.clone()),
        )
        .await;
        match sent {
            Ok(Ok(ack)) => Box::pin(async move { ack.into_future().await.map_err(Into::into) }),
            Ok(Err(error)) => Box::pin(std::future::ready(Err(error.into()))),
            Err(elapsed) => Box::pin(std::future::ready(Err(elapsed.into()))),
        }
    }

    /// A message starting with `first`, filled from `queued` and then with what is already
    /// queued in `input` (never waiting for more) while it has the same subject, fits the caps,
    /// holds at most `room` observations and no time after `latest_ns`; what does not fit stays
    /// in `queued`, in order.
    fn batch(
        &self,
        first: Observation,
        room: u64,
        latest_ns: TimeNs,
        input: &mut mpsc::Receiver<Observation>,
        queued: &mut VecDeque<Observation>,
    ) -> Batch {
        let mut builder = wire::BatchBuilder::new(&self.prefix, &first);
        let waiting = queued.len() + input.len();
        builder.reserve(
            waiting
                .min(usize::try_from(room).unwrap_or(usize::MAX))
                .min(wire::MAX_BATCH_OBSERVATIONS),
        );
        let mut count = 1;
        while count < room {
            if queued.is_empty() {
                // Everything the input holds at once (up to a message): the channel releases
                // the slots, and wakes a sender waiting for one, once per message rather than
                // once per observation.
                let want = usize::try_from(room - count)
                    .unwrap_or(usize::MAX)
                    .min(wire::MAX_BATCH_OBSERVATIONS);
                let mut taken = Vec::with_capacity(want);
                match input.recv_many(&mut taken, want).now_or_never() {
                    Some(n) if n > 0 => queued.extend(taken),
                    _ => break,
                }
            }
            let Some(next) = queued.pop_front() else {
                break;
            };
            if next.time_ns() > latest_ns
                || !builder.accepts(&self.prefix, &next)
                || !builder.push(&next)
            {
                queued.push_front(next);
                break;
            }
            count += 1;
        }
        builder.finish()
    }

    /// A message read back from the spool, as it was first formed.
    fn unspool(&self, spooled: spool::Spooled) -> Result<Batch, String> {
        match spooled {
            // One observation: also every line of a spool left by the one-observation format.
            spool::Spooled::Single(line) => {
                let observation = serde_json::from_slice::<Observation>(&line)
                    .map_err(|error| error.to_string())?;
                Ok(Batch {
                    subject: wire::subject(&self.prefix, &observation),
                    id: wire::message_id(&observation),
                    payload: Bytes::from(line),
                    count: 1,
                    earliest_ns: observation.time_ns(),
                    latest_ns: observation.time_ns(),
                })
            }
            spool::Spooled::Batch {
                subject,
                id,
                payload,
                count,
                times,
            } => Ok(match times {
                Some((earliest_ns, latest_ns)) => Batch {
                    subject,
                    id,
                    payload: Bytes::from(payload),
                    count,
                    earliest_ns,
                    latest_ns,
                },
                // A message spooled by an earlier version, which did not store its time range.
                None => Batch::from_parts(subject, id, Bytes::from(payload), count),
            }),
            spool::Spooled::Torn { problem } => Err(problem),
        }
    }

    /// Publishes everything from `input` until it closes, then waits for the last
    /// acknowledgements and drains the spool. After `shutdown` is cancelled it stops as soon as
    /// NATS is unreachable, leaving what is unpublished in the spool for the next start.
    ///
    /// # Order after a lost connection
    ///
    /// When the connection drops, what the client had written to the old socket is lost, while
    /// what still waits in its command buffer is sent to the new connection; the lost messages
    /// come back later from the spool. So a message `X` can be stored before an earlier message
    /// `Y`. Two rules keep that harmless for the dataflow, whose input waits `lateness` behind
    /// the heartbeats:
    ///
    /// - a message is handed to the client only while the client reports itself connected, and
    ///   the client's report of a lost connection (not only a missed acknowledgement) sends
    ///   everything unacknowledged to the spool at once, so little waits in the client's buffer;
    /// - a message is handed to the client only while its latest time is at most the earliest
    ///   time of the unacknowledged observations plus `max_unacknowledged_span`.
    ///
    /// `Y` is unacknowledged when `X` is handed over: unacknowledged messages leave the window
    /// only by acknowledgement (then `Y` was stored first) or by going to the spool, which is
    /// drained in order before anything new is handed over (so `Y` is handed over again first).
    /// Hence every observation of `X`, heartbeats included, is at most
    /// `max_unacknowledged_span` after every observation of `Y`, and with that span below the
    /// lateness no heartbeat stored before `Y` moves the dataflow's input past a fact of `Y`.
    ///
    /// # Errors
    /// When the spool file cannot be used or the stream does not match the configuration.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<Observation>,
        shutdown: CancellationToken,
    ) -> Result<PublisherReport, PublisherError> {
        let mut spool = spool::Spool::open(&self.spool_path, self.spool_max_bytes)?;
        let mut report = PublisherReport::default();
        if spool.len() > 0 {
            tracing::info!(spool = %self.spool_path.display(), bytes = spool.len(), "Draining the spool left by an earlier run.");
        }
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        // Observations in `inflight`, bounded like the messages.
        let mut unacked: u64 = 0;
        let max_unacked = self.max_pending as u64;
        // Observations taken from the input but not yet in a message, in order (what did not
        // fit the previous message, or was taken with it).
        let mut queued: VecDeque<Observation> = VecDeque::new();
        // A message read from the spool (with the spool offset after it) that waits for the
        // unacknowledged time span to allow it.
        let mut parked: Option<(Batch, u64)> = None;
        // Everything goes through the spool until the stream is known to be usable.
        let mut spooling = true;
        let mut ready = false;
        let mut input_open = true;
        let mut backoff = MIN_BACKOFF;
        let mut next_check = tokio::time::Instant::now();
        let mut stopping = false;
        // Whether the client still reports events (it does while it exists; without them the
        // acknowledgement timeout and the connection state still catch a lost connection).
        let mut disconnection_events = true;
        self.disconnections.mark_unchanged();
        let mut connection_events = true;
        // Set when a publish went unacknowledged or the connection was found lost; the next turn
        // of the loop recovers first.
        let mut lost = false;
        // The acknowledgements of the messages that were unacknowledged when the connection was
        // lost: they are in the spool, but the client may still deliver them (what waits in its
        // buffer goes to the new connection). The spool is drained only once every one of them
        // has resolved, so nothing re-published from the spool overtakes them on the wire.
        let mut resolving: Option<Resolving> = None;
        loop {
            self.gauges
                .spool_bytes
                .store(spool.len(), Ordering::Relaxed);
            self.gauges.unacknowledged.store(unacked, Ordering::Relaxed);
            if lost {
                lost = false;
                let owed =
                    self.lose_connection(&mut inflight, &mut spool, &mut report, spooling)?;
                resolving = match (resolving.take(), owed) {
                    (None, None) => None,
                    (Some(earlier), None) => Some(earlier),
                    (None, Some(owed)) => Some(owed),
                    (Some(earlier), Some(owed)) => Some(Box::pin(async move {
                        let (mut first, second) = futures_util::future::join(earlier, owed).await;
                        first.extend(second);
                        first
                    })),
                };
                unacked = 0;
                parked = None;
                spooling = true;
                ready = false;
                next_check = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // The reconnection check runs here, before anything else the loop does, whenever it
            // is due: as a select branch it raced the input, and a timer due "now" is ready only
            // at the timer's next millisecond, so a full input channel was taken first and all of
            // it went through the spool (as long as the input kept up with the drain, every
            // observation of the run did, at about three times the cost).
            if spooling
                && !ready
                && resolving.is_none()
                && tokio::time::Instant::now() >= next_check
            {
                if self.client.connection_state() == State::Connected {
                    match ensure_stream(&self.js, &self.settings).await {
                        Ok(_) => {
                            ready = true;
                            spool.rewind()?;
                            parked = None;
                            self.disconnections.mark_unchanged();
                            if spool.len() > 0 {
                                tracing::info!(
                                    bytes = spool.len(),
                                    "NATS is reachable; draining the spool."
                                );
                            }
                        }
                        Err(error) if error.is_retryable() => {
                            let cause = std::error::Error::source(&error)
                                .map(ToString::to_string)
                                .unwrap_or_default();
                            tracing::warn!(error = %error, %cause, "Cannot set up the stream yet; retrying.");
                        }
                        Err(error) => return Err(PublisherError::Stream(error)),
                    }
                }
                next_check = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            if spooling && ready {
                while inflight.len() < self.max_pending && unacked < max_unacked {
                    let (batch, end) = match parked.take() {
                        Some(parked) => parked,
                        None => {
                            let Some((spooled, end)) = spool.next()? else {
                                break;
                            };
                            match self.unspool(spooled) {
                                Ok(batch) => (batch, end),
                                Err(error) => {
                                    report.errors += 1;
                                    spool.commit(end);
                                    tracing::warn!(spool = %self.spool_path.display(), error = %error, "Skipped an unreadable spooled message.");
                                    continue;
                                }
                            }
                        }
                    };
                    if batch.latest_ns > self.latest_allowed(&inflight) {
                        parked = Some((batch, end));
                        break;
                    }
                    if self.client.connection_state() != State::Connected {
                        // This message and the unacknowledged ones are read again from the
                        // spool once NATS is back.
                        lost = true;
                        break;
                    }
                    let ack = self.publish(&batch).await;
                    unacked += batch.count;
                    inflight.push_back(InFlight {
                        ack,
                        batch,
                        spool_end: Some(end),
                    });
                }
                if lost {
                    continue;
                }
                if ready && parked.is_none() && spool.exhausted() && inflight.is_empty() {
                    spool.clear()?;
                    spooling = false;
                    tracing::debug!("Spool drained; publishing directly.");
                }
            }
            if !input_open && !spooling && inflight.is_empty() {
                break;
            }
            if stopping && !input_open && !ready {
                break;
            }
            // Publishing directly, the next observation must fit both bounds on what is
            // unacknowledged: the count and the time span.
            let fits = queued
                .front()
                .is_none_or(|next| next.time_ns() <= self.latest_allowed(&inflight));
            // Draining, with everything the spool holds handed to the client: take no input
            // until the last acknowledgements are in and the publisher is back to publishing
            // directly. Taken now, the input would go to the spool behind them, so under a
            // steady input the spool would rarely be both read to its end and fully
            // acknowledged, and every observation would keep going through it (written to the
            // file and read back). The wait is one acknowledgement's round trip; the input
            // channel holds what arrives meanwhile.
            let caught_up = spooling && ready && parked.is_none() && spool.exhausted();
            let accept = input_open
                && if spooling {
                    !caught_up
                } else {
                    inflight.len() < self.max_pending && unacked < max_unacked && fits
                };
            tokio::select! {
                biased;
                result = async { inflight.front_mut().expect("checked non-empty").ack.as_mut().await }, if !inflight.is_empty() => {
                    match result {
                        Ok(ack) => {
                            let done = inflight.pop_front().expect("checked non-empty");
                            unacked -= done.batch.count;
                            if let Some(end) = done.spool_end {
                                spool.commit(end);
                            }
                            if ack.duplicate {
                                report.duplicates += done.batch.count;
                            } else {
                                report.published += done.batch.count;
                                report.messages += 1;
                            }
                            backoff = MIN_BACKOFF;
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, unacknowledged = inflight.len(), "NATS did not acknowledge a publish; spooling until it is back.");
                            lost = true;
                        }
                    }
                }
                // The client lost its connection: what it wrote to the old socket is gone, so
                // stop handing it messages and spool what is unacknowledged now rather than at
                // the acknowledgement timeout.
                changed = self.disconnections.changed(), if disconnection_events && (ready || !spooling) => {
                    if changed.is_err() {
                        disconnection_events = false;
                    } else {
                        tracing::warn!(unacknowledged = inflight.len(), "Lost the connection to NATS; spooling until it is back.");
                        lost = true;
                    }
                }
                // Every acknowledgement owed from before the lost connection has resolved: stored
                // (counted now; the spooled copy is dropped as a duplicate when drained) or not
                // (the spooled copy stores it).
                results = async { resolving.as_mut().expect("checked some").as_mut().await }, if resolving.is_some() => {
                    resolving = None;
                    let mut stored = 0;
                    for (count, result) in results {
                        match result {
                            Ok(ack) if ack.duplicate => report.duplicates += count,
                            Ok(_) => {
                                report.published += count;
                                report.messages += 1;
                                stored += count;
                            }
                            Err(_) => {}
                        }
                    }
                    tracing::debug!(stored, "Every acknowledgement owed from before the lost connection has resolved.");
                    next_check = tokio::time::Instant::now();
                }
                // Wakes the loop for the reconnection check at its top.
                () = tokio::time::sleep_until(next_check), if spooling && !ready && resolving.is_none() => {}
                // The client is connected again: check now rather than when the backoff is
                // over (up to two seconds later).
                changed = self.connections.changed(), if connection_events && spooling && !ready && resolving.is_none() => {
                    if changed.is_err() {
                        connection_events = false;
                    } else {
                        next_check = tokio::time::Instant::now();
                    }
                }
                received = async {
                    match queued.pop_front() {
                        Some(observation) => Some(observation),
                        None => input.recv().await,
                    }
                }, if accept => match received {
                    None => input_open = false,
                    Some(observation) => {
                        if spooling {
                            let batch = self.batch(observation, u64::MAX, TimeNs::MAX, &mut input, &mut queued);
                            spool_one(&mut spool, &batch, &mut report)?;
                        } else if observation.time_ns() > self.latest_allowed(&inflight) {
                            // Taken from the input but beyond the span: it waits for
                            // acknowledgements.
                            queued.push_front(observation);
                        } else if self.client.connection_state() != State::Connected {
                            queued.push_front(observation);
                            tracing::warn!(unacknowledged = inflight.len(), "Not connected to NATS; spooling until it is back.");
                            lost = true;
                        } else {
                            // The message may take only what is left of the bound on
                            // unacknowledged observations (`accept` checked that some is).
                            let room = max_unacked - unacked;
                            let latest = self.latest_allowed(&inflight);
                            let batch = self.batch(observation, room, latest, &mut input, &mut queued);
                            let ack = self.publish(&batch).await;
                            unacked += batch.count;
                            inflight.push_back(InFlight { ack, batch, spool_end: None });
                        }
                    }
                },
                () = shutdown.cancelled(), if !stopping => stopping = true,
            }
        }
        report.left_in_spool = spool.len();
        self.gauges
            .spool_bytes
            .store(report.left_in_spool, Ordering::Relaxed);
        self.gauges.unacknowledged.store(0, Ordering::Relaxed);
        if report.left_in_spool > 0 {
            tracing::warn!(spool = %self.spool_path.display(), bytes = report.left_in_spool, "NATS is unreachable; unpublished observations stay in the spool for the next start.");
        }
        // Nothing is waiting in the client's buffer that matters (every publish kept is either
        // acknowledged or in the spool), but leave the connection tidily when there is one.
        if self.client.connection_state() == State::Connected {
            let _ = tokio::time::timeout(self.timeout, self.client.flush()).await;
        }
        Ok(report)
    }

    /// The latest time a message handed to the client now may hold: the earliest time of the
    /// unacknowledged observations plus the span, or any time when nothing is unacknowledged.
    fn latest_allowed(&self, inflight: &VecDeque<InFlight>) -> TimeNs {
        inflight
            .iter()
            .map(|pending| pending.batch.earliest_ns)
            .min()
            .map_or(TimeNs::MAX, |earliest| {
                earliest.saturating_add(self.span_ns)
            })
    }

    /// NATS is unreachable: what is unacknowledged goes to the spool (or, when it came from
    /// the spool, is read again from the last acknowledged message) and nothing more is handed
    /// to the client until the connection and the stream are back and every acknowledgement
    /// still owed (returned here, awaited together) has resolved.
    fn lose_connection(
        &self,
        inflight: &mut VecDeque<InFlight>,
        spool: &mut spool::Spool,
        report: &mut PublisherReport,
        spooling: bool,
    ) -> Result<Option<Resolving>, SpoolError> {
        if spooling {
            spool.rewind()?;
        } else {
            for pending in inflight.iter() {
                spool_one(spool, &pending.batch, report)?;
            }
        }
        if inflight.is_empty() {
            return Ok(None);
        }
        let owed: Vec<_> = inflight
            .drain(..)
            .map(|pending| {
                let count = pending.batch.count;
                pending.ack.map(move |result| (count, result))
            })
            .collect();
        Ok(Some(Box::pin(futures_util::future::join_all(owed))))
    }
}

fn spool_one(
    spool: &mut spool::Spool,
    batch: &Batch,
    report: &mut PublisherReport,
) -> Result<(), SpoolError> {
    if spool.append(batch)? {
        report.spooled += batch.count;
    } else {
        let before = report.dropped;
        report.dropped += batch.count;
        if before == 0 || before / 10_000 != report.dropped / 10_000 {
            tracing::error!(
                dropped = report.dropped,
                spool_bytes = spool.len(),
                "The spool is full and NATS is unreachable; dropping observations."
            );
        }
    }
    Ok(())
}
