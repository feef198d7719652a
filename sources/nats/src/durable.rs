//! `tapio run --mode correlation`: a durable consumer that acknowledges only what the dataflow
//! has taken in, and rebuilds the dataflow's state after a restart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, message::Acker};
use futures_util::StreamExt;
use tapio_config::NatsConfig;
use tapio_sources::{
    BoxFuture, Delivery, Positions, Source, SourceContext, SourceError, SourceHealth, SourceStats,
    Status,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{NatsEndpoint, connect, decode_or_count, stream_subject};

/// Reads the stream through a durable consumer (see the crate documentation).
///
/// Acknowledgement: the caller sends, through the `taken_in` channel of [`DurableReader::run`],
/// the highest position whose observations (and every earlier one) the dataflow has taken in;
/// the reader acknowledges that message, which with `AckPolicy::All` acknowledges everything
/// before it as well.
///
/// Restart: the consumer's acknowledged floor `F` says what earlier runs took in. The reader
/// first re-delivers positions `1..=F` from the stream (an ordered consumer), so that the new
/// dataflow holds the same state, then re-creates the durable consumer to start at `F + 1`
/// (deleting the old one, so that messages the old run received but never acknowledged come
/// again at once and in order, not after the acknowledgement timeout). The same happens after
/// a lost connection, from the last position the dataflow has taken in (positions already sent
/// are skipped when they come again, and acknowledged once taken in, so that the new consumer
/// has a floor even when nothing new arrives).
#[derive(Clone, Debug)]
pub struct DurableReader {
    endpoint: NatsEndpoint,
    durable: String,
}

/// Most messages delivered but not acknowledged.
const MAX_ACK_PENDING: i64 = 200_000;
/// Shortest time between two acknowledgements.
const ACK_EVERY: Duration = Duration::from_millis(20);
/// Messages asked for per pull request.
const PULL_BATCH: usize = 2000;
/// How long the server waits for an acknowledgement before re-delivering.
const ACK_WAIT: Duration = Duration::from_secs(60);

impl DurableReader {
    /// A reader of `endpoint` through the durable consumer `durable`.
    pub fn new(endpoint: NatsEndpoint, durable: impl Into<String>) -> DurableReader {
        DurableReader {
            endpoint,
            durable: durable.into(),
        }
    }

    fn error(&self, what: &str, source: async_nats::Error) -> SourceError {
        SourceError::Input {
            kind: "nats",
            what: format!(
                "{what} (stream `{}` at {})",
                self.endpoint.stream, self.endpoint.url
            ),
            source,
        }
    }

    /// Reads until `shutdown` is cancelled, sending every message to `out` in stream order.
    /// On shutdown it stops reading, drops `out`, waits (up to 10 s) until `taken_in` reaches
    /// the last position sent, acknowledges, and returns.
    ///
    /// # Errors
    /// Only when the client cannot be set up; a lost server is waited for.
    pub async fn run(
        self,
        out: mpsc::Sender<Delivery>,
        taken_in: watch::Receiver<u64>,
        shutdown: CancellationToken,
        stats: Arc<SourceStats>,
    ) -> Result<(), SourceError> {
        self.read(out, taken_in, shutdown, stats, None).await
    }

    async fn read(
        self,
        out: mpsc::Sender<Delivery>,
        mut taken_in: watch::Receiver<u64>,
        shutdown: CancellationToken,
        stats: Arc<SourceStats>,
        health: Option<Arc<SourceHealth>>,
    ) -> Result<(), SourceError> {
        let client = connect(&self.endpoint, true)
            .await
            .map_err(|error| self.error("the server", error.into()))?;
        let js = jetstream::new(client.clone());
        let mut out = Some(out);
        // The next position to send; everything before it has been sent.
        let mut next: Option<u64> = None;
        let mut unacked: VecDeque<(u64, Acker)> = VecDeque::new();
        let mut backoff = Duration::from_millis(50);
        'attempts: while !shutdown.is_cancelled() {
            if client.connection_state() != State::Connected {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            let sender = out.as_ref().expect("present until shutdown");
            let taken = *taken_in.borrow();
            let stream = match self
                .prepare(&js, &mut next, taken, sender, &stats, &shutdown)
                .await
            {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot set up the durable consumer; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if let Some(health) = &health {
                health.set_running();
            }
            // Acknowledgements of the previous consumer are void: it was deleted.
            unacked.clear();
            let mut messages = stream;
            let mut check = tokio::time::interval(Duration::from_millis(250));
            let mut last_ack = tokio::time::Instant::now();
            let mut lost_connection = false;
            loop {
                tokio::select! {
                    item = messages.next() => {
                        let message = match item {
                            Some(Ok(message)) => message,
                            Some(Err(error)) => {
                                tracing::warn!(error = %error, "The durable consumer failed; re-creating it.");
                                continue 'attempts;
                            }
                            None => continue 'attempts,
                        };
                        let Ok(info) = message.info() else {
                            continue;
                        };
                        let position = info.stream_sequence;
                        let stored_ns = stored_ns(&info);
                        let (message, acker) = message.split();
                        if next.is_some_and(|next| position < next) {
                            // Already sent before the consumer was re-created: not sent again,
                            // but acknowledged once taken in, so that the new consumer's
                            // acknowledged floor catches up with the dataflow.
                            unacked.push_back((position, acker));
                            continue;
                        }
                        let observations = decode_or_count(&message.payload, position, &message.subject, &stats);
                        let sent = observations.len() as u64;
                        if sender.send(Delivery { position, observations, stored_ns }).await.is_err() {
                            break 'attempts;
                        }
                        stats.sent.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                        next = Some(position + 1);
                        unacked.push_back((position, acker));
                        backoff = Duration::from_millis(50);
                    }
                    changed = taken_in.changed() => {
                        if changed.is_err() {
                            break 'attempts;
                        }
                        // One acknowledgement covers everything before it: send at most one
                        // every ACK_EVERY; the periodic check sends the rest.
                        if last_ack.elapsed() >= ACK_EVERY {
                            let position = *taken_in.borrow_and_update();
                            acknowledge(&mut unacked, position).await;
                            last_ack = tokio::time::Instant::now();
                        }
                    }
                    _ = check.tick() => {
                        let position = *taken_in.borrow_and_update();
                        acknowledge(&mut unacked, position).await;
                        last_ack = tokio::time::Instant::now();
                        match client.connection_state() {
                            State::Connected if lost_connection => {
                                tracing::info!("Reconnected to NATS; re-creating the durable consumer.");
                                continue 'attempts;
                            }
                            State::Connected => {}
                            _ => {
                                lost_connection = true;
                                if let Some(health) = &health {
                                    health.set(
                                        Status::Running,
                                        Some("the connection to NATS is lost; reconnecting".into()),
                                    );
                                }
                            }
                        }
                    }
                    () = shutdown.cancelled() => break 'attempts,
                }
            }
        }
        // Stop sending; wait for the dataflow to take in what was sent, then acknowledge it.
        drop(out.take());
        let Some(last) = next.map(|next| next - 1) else {
            return Ok(());
        };
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        while *taken_in.borrow_and_update() < last {
            tokio::select! {
                changed = taken_in.changed() => if changed.is_err() { break },
                () = &mut deadline => break,
            }
        }
        let position = *taken_in.borrow();
        acknowledge(&mut unacked, position).await;
        if client.connection_state() == State::Connected {
            // Send the last acknowledgement out before the client is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
        Ok(())
    }

    /// On the first attempt, re-delivers what earlier runs acknowledged; then (re-)creates the
    /// durable consumer at the first position not yet sent and returns its message stream.
    async fn prepare(
        &self,
        js: &jetstream::Context,
        next: &mut Option<u64>,
        taken: u64,
        out: &mpsc::Sender<Delivery>,
        stats: &Arc<SourceStats>,
        shutdown: &CancellationToken,
    ) -> Result<consumer::pull::Stream, async_nats::Error> {
        let stream = js.get_stream(&self.endpoint.stream).await?;
        let start_sequence = if let Some(next) = *next {
            // Start at the last position the dataflow has taken in: the new consumer's
            // acknowledged floor never runs ahead of the dataflow, and it has a message to
            // acknowledge even when nothing new arrives (a consumer that never acknowledges
            // reports a floor of 0). Positions already routed are skipped when they come again
            // and acknowledged once taken in.
            next.min(taken.max(1))
        } else {
            let floor = match stream.consumer_info(&self.durable).await {
                Ok(info) => info.ack_floor.stream_sequence,
                Err(error)
                    if matches!(
                        error.kind(),
                        jetstream::context::ConsumerInfoErrorKind::NotFound
                    ) =>
                {
                    0
                }
                Err(error) => return Err(error.into()),
            };
            if floor > 0 {
                tracing::info!(consumer = %self.durable, acknowledged = floor, "Rebuilding the dataflow's state from the stream up to the consumer's acknowledged floor.");
                rebuild(
                    &stream,
                    &self.endpoint.filter_subject,
                    floor,
                    out,
                    stats,
                    shutdown,
                )
                .await?;
            }
            *next = Some(floor + 1);
            floor + 1
        };
        match stream.delete_consumer(&self.durable).await {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::stream::ConsumerErrorKind::JetStream(ref js_error)
                        if js_error.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) => {}
            Err(error) => return Err(error.into()),
        }
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(self.durable.clone()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
                ack_policy: consumer::AckPolicy::All,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                filter_subject: self.endpoint.filter_subject.clone(),
                description: Some("Tapio correlation job".into()),
                ..Default::default()
            })
            .await?;
        tracing::info!(consumer = %self.durable, start_sequence, "Reading the stream.");
        // Larger pulls than the client's default (200) keep up with busy clusters; a 5 s idle
        // heartbeat notices a dead server sooner than the default 15 s.
        Ok(consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?)
    }
}

/// The correlation job's input, the durable consumer of `nats` (`integrations.nats`, validated)
/// as a [`Source`] of kind `nats`: process `process` of `processes` reads through its own
/// consumer, `<consumer>-<process>` when there is more than one. Does no I/O.
///
/// It acknowledges through the contract: it sends each message as a [`Delivery`] at its stream
/// sequence and acknowledges what [`Positions::taken_in`] says the dataflow has taken in.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn consumer_from_config(
    nats: &NatsConfig,
    process: usize,
    processes: usize,
) -> Result<Box<dyn Source>, SourceError> {
    let durable = if processes > 1 {
        format!("{}-{process}", nats.consumer)
    } else {
        nats.consumer.clone()
    };
    let endpoint = NatsEndpoint {
        url: nats.url.clone(),
        stream: nats.stream.clone(),
        filter_subject: stream_subject(&nats.subject_prefix),
        from_seq: None,
        since_ns: None,
        security: nats.security(),
    };
    Ok(Box::new(NatsConsumerSource {
        reader: DurableReader::new(endpoint, durable),
    }))
}

/// A [`DurableReader`] as a [`Source`]; see [`consumer_from_config`].
#[derive(Clone, Debug)]
pub struct NatsConsumerSource {
    reader: DurableReader,
}

impl NatsConsumerSource {
    /// The durable consumer's name.
    pub fn consumer(&self) -> &str {
        &self.reader.durable
    }
}

impl Source for NatsConsumerSource {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn run(self: Box<Self>, mut cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let Positions { out, taken_in } = cx.take_positions();
            tracing::info!(
                stream = %self.reader.endpoint.stream,
                consumer = %self.reader.durable,
                "Reading the NATS stream."
            );
            self.reader
                .read(
                    out,
                    taken_in,
                    cx.shutdown.clone(),
                    Arc::clone(&cx.stats),
                    Some(Arc::clone(&cx.health)),
                )
                .await
        })
    }
}

/// Re-delivers stream positions `1..=floor` through an ordered consumer.
async fn rebuild(
    stream: &jetstream::stream::Stream,
    filter_subject: &str,
    floor: u64,
    out: &mpsc::Sender<Delivery>,
    stats: &Arc<SourceStats>,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subject: filter_subject.to_owned(),
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    if consumer.info().await?.num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await?;
    loop {
        let item = tokio::select! {
            item = messages.next() => item,
            () = shutdown.cancelled() => return Ok(()),
        };
        let Some(message) = item else {
            return Ok(());
        };
        let message = message?;
        let info = message.info()?;
        let position = info.stream_sequence;
        let stored_ns = stored_ns(&info);
        if position > floor {
            return Ok(());
        }
        let observations = decode_or_count(&message.payload, position, &message.subject, stats);
        let sent = observations.len() as u64;
        if out
            .send(Delivery {
                position,
                observations,
                stored_ns,
            })
            .await
            .is_err()
        {
            return Ok(());
        }
        stats
            .sent
            .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        if position == floor {
            return Ok(());
        }
    }
}

/// When the server stored a message, ns since the epoch (0 when before 1970 or unknown).
fn stored_ns(info: &jetstream::message::Info<'_>) -> u64 {
    u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0)
}

/// Acknowledges the latest message at or before `position` (and so, with `AckPolicy::All`,
/// every earlier one).
async fn acknowledge(unacked: &mut VecDeque<(u64, Acker)>, position: u64) {
    let mut latest = None;
    while unacked.front().is_some_and(|(seq, _)| *seq <= position) {
        latest = unacked.pop_front();
    }
    if let Some((seq, acker)) = latest
        && let Err(error) = acker.ack().await
    {
        // The next acknowledgement covers this one; a restart re-reads from the floor.
        tracing::debug!(stream_sequence = seq, error = %error, "Acknowledgement failed.");
    }
}
