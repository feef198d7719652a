//! Creates Tapio's JetStream stream, or checks that an existing one matches the configuration.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tapio_config::NatsConfig;

use crate::wire;

/// The stream settings the configuration asks for (`integrations.nats.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// The one subject filter it captures, `<prefix>.>`.
    pub subject: String,
    /// `limits` or `interest`.
    pub retention: stream::RetentionPolicy,
    /// Oldest message kept; zero keeps messages forever.
    pub max_age: Duration,
    /// Most bytes kept; `-1` for no limit (JetStream's encoding).
    pub max_bytes: i64,
    /// How long message ids are remembered for de-duplication.
    pub duplicate_window: Duration,
}

impl StreamSettings {
    /// The settings of a validated configuration.
    pub fn from_config(config: &NatsConfig) -> StreamSettings {
        StreamSettings {
            name: config.stream.clone(),
            subject: wire::stream_subject(&config.subject_prefix),
            retention: if config.retention == "interest" {
                stream::RetentionPolicy::Interest
            } else {
                stream::RetentionPolicy::Limits
            },
            max_age: config.max_age,
            max_bytes: match i64::try_from(config.max_bytes) {
                Ok(0) | Err(_) => -1,
                Ok(bytes) => bytes,
            },
            duplicate_window: config.duplicate_window,
        }
    }

    fn to_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![self.subject.clone()],
            retention: self.retention,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            description: Some("Tapio observations and heartbeats".into()),
            ..Default::default()
        }
    }

    /// What differs between these settings and an existing stream's configuration, one
    /// sentence per difference naming the configuration key.
    pub fn differences(&self, existing: &stream::Config) -> Vec<String> {
        let mut differences = Vec::new();
        if !existing.subjects.contains(&self.subject) {
            differences.push(format!(
                "its subjects are {:?} but integrations.nats.subject_prefix needs `{}`",
                existing.subjects, self.subject
            ));
        }
        if existing.retention != self.retention {
            differences.push(format!(
                "its retention is {:?} but integrations.nats.retention asks for {:?}",
                existing.retention, self.retention
            ));
        }
        if existing.max_age != self.max_age {
            differences.push(format!(
                "its max_age is {:?} but integrations.nats.max_age asks for {:?}",
                existing.max_age, self.max_age
            ));
        }
        let normalize = |bytes: i64| if bytes <= 0 { -1 } else { bytes };
        if normalize(existing.max_bytes) != self.max_bytes {
            differences.push(format!(
                "its max_bytes is {} but integrations.nats.max_bytes asks for {}",
                existing.max_bytes, self.max_bytes
            ));
        }
        if existing.duplicate_window != self.duplicate_window {
            differences.push(format!(
                "its duplicate_window is {:?} but integrations.nats.duplicate_window asks for {:?}",
                existing.duplicate_window, self.duplicate_window
            ));
        }
        differences
    }
}

/// The stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server could not be asked (unreachable, JetStream disabled). Retryable.
    #[error("cannot look up or create the JetStream stream `{stream}`")]
    Request {
        /// Stream name.
        stream: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// JetStream has not enough storage left for the stream's `max_bytes`. Not retryable:
    /// lower `integrations.nats.max_bytes` or give the server more storage.
    #[error(
        "JetStream has not enough storage for the stream `{stream}`: integrations.nats.max_bytes \
         asks it to reserve {max_bytes} bytes and the server answered `{answer}`; lower \
         integrations.nats.max_bytes or raise the server's JetStream storage limit \
         (max_file_store)"
    )]
    InsufficientStorage {
        /// Stream name.
        stream: String,
        /// The configured `max_bytes` (`-1` for no limit).
        max_bytes: i64,
        /// The server's error.
        answer: String,
    },
    /// A stream of that name exists with other settings. Not retryable: change the
    /// configuration or the stream.
    #[error(
        "the JetStream stream `{stream}` exists with settings Tapio was not configured for: {}; \
         change integrations.nats.* to match it, or delete the stream so that Tapio creates it",
        differences.join("; ")
    )]
    Mismatch {
        /// Stream name.
        stream: String,
        /// One sentence per difference.
        differences: Vec<String>,
    },
}

impl StreamError {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StreamError::Request { .. })
    }
}

/// Creates the stream when it is missing; checks it when it exists.
///
/// # Errors
/// [`StreamError::Mismatch`] when the existing stream differs from `settings`;
/// [`StreamError::Request`] when the server cannot be asked.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Stream, StreamError> {
    let request = |source: async_nats::Error| StreamError::Request {
        stream: settings.name.clone(),
        source,
    };
    match js.get_stream(&settings.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| request(e.into()))?;
            let differences = settings.differences(&info.config);
            if differences.is_empty() {
                Ok(existing)
            } else {
                Err(StreamError::Mismatch {
                    stream: settings.name.clone(),
                    differences,
                })
            }
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_error)
                    if js_error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let created = js
                .create_stream(settings.to_stream_config())
                .await
                .map_err(|error| match error.kind() {
                    jetstream::context::CreateStreamErrorKind::JetStream(ref js_error)
                        if is_storage_shortage(js_error.error_code()) =>
                    {
                        StreamError::InsufficientStorage {
                            stream: settings.name.clone(),
                            max_bytes: settings.max_bytes,
                            answer: js_error.to_string(),
                        }
                    }
                    _ => request(error.into()),
                })?;
            tracing::info!(stream = %settings.name, subject = %settings.subject, "Created the JetStream stream.");
            Ok(created)
        }
        Err(error) => Err(request(error.into())),
    }
}

/// Whether a JetStream error code says the server lacks the storage (or other resources) a new
/// stream asks it to reserve.
fn is_storage_shortage(code: jetstream::ErrorCode) -> bool {
    code == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
        || code == jetstream::ErrorCode::INSUFFICIENT_RESOURCES
        || code == jetstream::ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
}
