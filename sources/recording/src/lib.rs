//! Replays a Tapio recording file as a source (layer L2).
//!
//! Reads the file written by `tapio record` (format: [`tapio_model::recording`]) and sends its
//! observations in file order, either as fast as the dataflow takes them (`speed` 0, the
//! backtesting case) or paced by their event times (`speed` 1.0 is the original pace). Bad lines
//! are counted as errors, logged with their line and byte offset, and skipped; a missing file or
//! a file that is not a recording stops the source with an error naming the file.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::TapioConfig;
use tapio_model::recording::RecordingReader;
use tapio_model::{Observation, TimeNs};
use tapio_sources::{BoxFuture, Source, SourceContext, SourceError};

/// The recording source of the validated `config` (`collectors.recording`); does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    let recording = &config.collectors.recording;
    Ok(Box::new(RecordingSource::new(
        &recording.path,
        recording.speed,
    )))
}

/// Replays a recording.
#[derive(Clone, Debug)]
pub struct RecordingSource {
    path: PathBuf,
    speed: f64,
    start_ns: Option<TimeNs>,
    end_ns: Option<TimeNs>,
}

impl RecordingSource {
    /// A source replaying `path`; `speed` 0 means as fast as possible.
    pub fn new(path: impl Into<PathBuf>, speed: f64) -> RecordingSource {
        RecordingSource {
            path: path.into(),
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                0.0
            },
            start_ns: None,
            end_ns: None,
        }
    }

    /// Replays only facts with event time in `[start, end)`. State updates are always replayed
    /// (state accumulates from the beginning), and so are heartbeats.
    #[must_use]
    pub fn between(mut self, start_ns: Option<TimeNs>, end_ns: Option<TimeNs>) -> RecordingSource {
        self.start_ns = start_ns;
        self.end_ns = end_ns;
        self
    }

    fn wanted(&self, observation: &Observation) -> bool {
        observation.kept_between(self.start_ns, self.end_ns)
    }
}

impl Source for RecordingSource {
    fn kind(&self) -> &'static str {
        "recording"
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || replay(&self, &cx, &handle))
                .await
                .map_err(|join| SourceError::Input {
                    kind: "recording",
                    what: "the replay thread".into(),
                    source: Box::new(join),
                })?
        })
    }
}

fn replay(
    source: &RecordingSource,
    cx: &SourceContext,
    runtime: &tokio::runtime::Handle,
) -> Result<(), SourceError> {
    let path = source.path.display().to_string();
    let file = File::open(&source.path).map_err(|error| SourceError::Input {
        kind: "recording",
        what: path.clone(),
        source: Box::new(error),
    })?;
    cx.health.set_running();
    let mut first_event: Option<(TimeNs, std::time::Instant)> = None;
    for item in RecordingReader::new(BufReader::with_capacity(1 << 20, file)) {
        if cx.shutdown.is_cancelled() {
            break;
        }
        let observation = match item {
            Ok((_, observation)) => observation,
            Err(error) if error.is_recoverable() => {
                cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %path, error = %error, "Skipped a bad line of the recording.");
                continue;
            }
            Err(error) => {
                return Err(SourceError::Input {
                    kind: "recording",
                    what: path,
                    source: Box::new(error),
                });
            }
        };
        cx.stats.received.fetch_add(1, Ordering::Relaxed);
        if !source.wanted(&observation) {
            continue;
        }
        if source.speed > 0.0 {
            pace(source.speed, &mut first_event, &observation, cx, runtime);
        }
        if cx.out.blocking_send(observation).is_err() {
            break;
        }
        cx.stats.sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Sleeps until `observation` is due at `speed` times its original pace.
fn pace(
    speed: f64,
    first_event: &mut Option<(TimeNs, std::time::Instant)>,
    observation: &Observation,
    cx: &SourceContext,
    runtime: &tokio::runtime::Handle,
) {
    let time = observation.time_ns();
    let (origin, started) = *first_event.get_or_insert((time, std::time::Instant::now()));
    let due = Duration::from_nanos((time.saturating_sub(origin) as f64 / speed) as u64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        runtime.block_on(async {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cx.shutdown.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("tapio-rec-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    const BEAT: &str =
        r#"{"kind":"heartbeat","source":"kernel","node":"n1","upto_ns":1700000000000000000}"#;

    #[tokio::test]
    async fn replays_good_lines_and_counts_bad_ones() {
        let path = write(
            "mixed",
            &format!(
                "{{\"tapio_recording\":1}}\n{BEAT}\nnot json\n{BEAT}\n{{\"kind\":\"heartbeat\""
            ),
        );
        let source = Box::new(RecordingSource::new(&path, 0.0));
        let (seen, stats) = tapio_sources::run_for_test(source, "n1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(stats.errors, 2);
        assert_eq!(stats.received, 2);
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn missing_file_is_an_error_naming_it() {
        let source = Box::new(RecordingSource::new("/nonexistent/rec.jsonl", 0.0));
        let error = tapio_sources::run_for_test(source, "n1", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/rec.jsonl"));
    }

    #[tokio::test]
    async fn not_a_recording_is_an_error() {
        let path = write("plain", "hello\n");
        let source = Box::new(RecordingSource::new(&path, 0.0));
        let error = tapio_sources::run_for_test(source, "n1", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            std::error::Error::source(&error)
                .unwrap()
                .to_string()
                .contains("not a Tapio recording")
        );
        std::fs::remove_file(path).unwrap();
    }
}
