//! `tapio replay nats://…`: an ordered consumer over what the stream holds when the replay
//! starts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tapio_model::{Observation, TimeNs};
use tapio_sources::{BoxFuture, Source, SourceContext, SourceError};

use crate::{NatsEndpoint, connect, decode_or_count};

/// Replays a range of a JetStream stream as a source: every message from the start position
/// (the first message, `from_seq`, or the first stored at or after `since`) up to the last
/// message stored when the replay starts, in stream order, as fast as the dataflow takes them.
/// Facts outside `[start, end)` of event time are skipped; state and heartbeats always pass, as
/// in a file replay.
#[derive(Clone, Debug)]
pub struct NatsReplaySource {
    endpoint: NatsEndpoint,
    start_ns: Option<TimeNs>,
    end_ns: Option<TimeNs>,
}

impl NatsReplaySource {
    /// Replays `endpoint`.
    pub fn new(endpoint: NatsEndpoint) -> NatsReplaySource {
        NatsReplaySource {
            endpoint,
            start_ns: None,
            end_ns: None,
        }
    }

    /// Keeps only facts with event time in `[start, end)`.
    #[must_use]
    pub fn between(mut self, start_ns: Option<TimeNs>, end_ns: Option<TimeNs>) -> NatsReplaySource {
        self.start_ns = start_ns;
        self.end_ns = end_ns;
        self
    }

    fn wanted(&self, observation: &Observation) -> bool {
        observation.kept_between(self.start_ns, self.end_ns)
    }

    fn deliver_policy(&self, next: Option<u64>) -> Result<consumer::DeliverPolicy, SourceError> {
        if let Some(start_sequence) = next.or(self.endpoint.from_seq) {
            return Ok(consumer::DeliverPolicy::ByStartSequence { start_sequence });
        }
        if let Some(since) = self.endpoint.since_ns {
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since))
                .map_err(|error| input_error(&self.endpoint, "the start time", error))?;
            return Ok(consumer::DeliverPolicy::ByStartTime { start_time });
        }
        Ok(consumer::DeliverPolicy::All)
    }
}

fn input_error(
    endpoint: &NatsEndpoint,
    what: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> SourceError {
    SourceError::Input {
        kind: "nats",
        what: format!("{what} of stream `{}` at {}", endpoint.stream, endpoint.url),
        source: Box::new(error),
    }
}

impl Source for NatsReplaySource {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move { self.replay(&cx).await })
    }
}

/// Attempts to re-create the ordered consumer after an error before giving up.
const MAX_ATTEMPTS: u32 = 10;

impl NatsReplaySource {
    async fn replay(&self, cx: &SourceContext) -> Result<(), SourceError> {
        let endpoint = &self.endpoint;
        let client = connect(endpoint, false)
            .await
            .map_err(|error| input_error(endpoint, "the server", error))?;
        let js = jetstream::new(client);
        let mut stream = js
            .get_stream(&endpoint.stream)
            .await
            .map_err(|error| input_error(endpoint, "the stream", error))?;
        let last = stream
            .info()
            .await
            .map_err(|error| input_error(endpoint, "the stream's state", error))?
            .state
            .last_sequence;
        tracing::info!(stream = %endpoint.stream, last_sequence = last, "Replaying the stream.");
        let mut next: Option<u64> = None;
        let mut failures = 0;
        while next.is_none_or(|next| next <= last) && last > 0 {
            let config = consumer::pull::OrderedConfig {
                deliver_policy: self.deliver_policy(next)?,
                filter_subject: endpoint.filter_subject.clone(),
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            };
            let messages = match stream.create_consumer(config).await {
                Ok(mut consumer) => match consumer.info().await {
                    // Nothing at or after the start position: the range is empty.
                    Ok(info) if info.num_pending == 0 => {
                        return Ok(());
                    }
                    _ => consumer.messages().await.map_err(async_nats::Error::from),
                },
                Err(error) => Err(async_nats::Error::from(error)),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(SourceError::Input {
                            kind: "nats",
                            what: format!("stream `{}` at {}", endpoint.stream, endpoint.url),
                            source: error,
                        });
                    }
                    tracing::warn!(error = %error, "Cannot read the stream; retrying.");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    continue;
                }
            };
            loop {
                let item = tokio::select! {
                    item = messages.next() => item,
                    () = cx.shutdown.cancelled() => return Ok(()),
                };
                let message = match item {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "The replay consumer failed; resuming.");
                        failures += 1;
                        break;
                    }
                    None => break,
                };
                let Ok(info) = message.info() else {
                    continue;
                };
                let sequence = info.stream_sequence;
                next = Some(sequence + 1);
                for observation in
                    decode_or_count(&message.payload, sequence, &message.subject, &cx.stats)
                {
                    if !self.wanted(&observation) {
                        continue;
                    }
                    if cx.out.send(observation).await.is_err() {
                        return Ok(());
                    }
                    cx.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                if sequence >= last {
                    return Ok(());
                }
            }
            if failures >= MAX_ATTEMPTS {
                return Err(SourceError::Input {
                    kind: "nats",
                    what: format!("stream `{}` at {}", endpoint.stream, endpoint.url),
                    source: "the consumer kept failing".into(),
                });
            }
        }
        Ok(())
    }
}
