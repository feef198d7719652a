//! Writes correlation changes as JSON lines (to a file or standard output) or as one
//! human-readable line per change (layer L2).
//!
//! JSON lines: one object per change, `{"diff":1|-1,"time":<ns>,"correlation":{...}}`, in tick
//! order and sorted within a tick. Every batch is flushed as soon as it is written, so a reader
//! following the file sees whole ticks, and nothing is lost on shutdown.

use std::path::PathBuf;

use tapio_model::render::explain;
use tapio_model::{ClosedBatch, CorrelationChange, format_time};
use tapio_sinks::{BoxFuture, Sink, SinkError, SinkReport};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Where and how to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// JSON lines to this file (created or truncated).
    File(PathBuf),
    /// JSON lines to standard output.
    StdoutJson,
    /// One human-readable line per change on standard output.
    StdoutHuman,
}

/// The JSON lines / human-readable sink.
pub struct JsonlSink {
    target: Target,
    file: Option<tokio::fs::File>,
}

impl JsonlSink {
    /// A sink writing to `target`. Nothing is opened until [`Sink::healthcheck`].
    pub fn new(target: Target) -> JsonlSink {
        JsonlSink { target, file: None }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::File(path) => path.display().to_string(),
            Target::StdoutJson | Target::StdoutHuman => "standard output".into(),
        }
    }
}

/// Formats one change for humans:
/// `2021-05-19T09:43:07.000Z + oom_restart process/n/1/2 (95%): explanation`, the explanation
/// rendered from the correlation's typed data ([`explain`]).
pub fn human_line(change: &CorrelationChange) -> String {
    let sign = if change.diff > 0 { '+' } else { '-' };
    let correlation = &change.correlation;
    format!(
        "{} {sign} {:<11} {} ({}%): {}",
        format_time(change.time),
        correlation.kind.as_str(),
        correlation.root_cause,
        correlation.confidence.percent,
        explain(correlation)
    )
}

async fn write_all<W: AsyncWrite + Unpin>(
    mut out: BufWriter<W>,
    mut batches: mpsc::Receiver<ClosedBatch>,
    human: bool,
    target: String,
) -> Result<SinkReport, SinkError> {
    let failed = |error: std::io::Error| SinkError::Write {
        sink: "jsonl",
        target: target.clone(),
        source: Box::new(error),
    };
    let mut report = SinkReport::default();
    let mut line = Vec::with_capacity(1024);
    while let Some(batch) = batches.recv().await {
        for change in batch.to_changes() {
            line.clear();
            if human {
                line.extend_from_slice(human_line(&change).as_bytes());
            } else {
                serde_json::to_writer(&mut line, &change)
                    .map_err(|error| failed(std::io::Error::other(error)))?;
            }
            line.push(b'\n');
            out.write_all(&line).await.map_err(failed)?;
            report.changes += 1;
        }
        out.flush().await.map_err(failed)?;
        report.batches += 1;
    }
    out.flush().await.map_err(failed)?;
    Ok(report)
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        match self.target {
            Target::StdoutHuman => "stdout",
            _ => "jsonl",
        }
    }

    fn healthcheck(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if let Target::File(path) = &self.target {
                let file =
                    tokio::fs::File::create(path)
                        .await
                        .map_err(|error| SinkError::Write {
                            sink: "jsonl",
                            target: path.display().to_string(),
                            source: Box::new(error),
                        })?;
                self.file = Some(file);
            }
            Ok(())
        })
    }

    fn run(
        self: Box<Self>,
        batches: mpsc::Receiver<ClosedBatch>,
    ) -> BoxFuture<'static, Result<SinkReport, SinkError>> {
        let target = self.describe();
        Box::pin(async move {
            match (self.target, self.file) {
                (Target::File(_), Some(file)) => {
                    write_all(BufWriter::new(file), batches, false, target).await
                }
                (Target::File(path), None) => Err(SinkError::Write {
                    sink: "jsonl",
                    target,
                    source: format!("{} was not opened by the health check", path.display()).into(),
                }),
                (Target::StdoutJson, _) => {
                    write_all(BufWriter::new(tokio::io::stdout()), batches, false, target).await
                }
                (Target::StdoutHuman, _) => {
                    write_all(BufWriter::new(tokio::io::stdout()), batches, true, target).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapio_model::{
        Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, FactId, Hop, Observed,
        Relation,
    };

    fn batch() -> ClosedBatch {
        let hop = |entity: &str, relation| Hop {
            entity: entity.parse().unwrap(),
            relation,
            fact_id: FactId::new("kubernetes", "cluster", 7),
            time: 1_621_417_386_000_000_000,
            observed: Observed::OwnerReference,
        };
        ClosedBatch {
            time: 1_621_417_387_000_000_000,
            changes: vec![(
                Correlation::new(
                    CorrelationKind::Ownership,
                    EntityId::Deployment {
                        namespace: "default".into(),
                        name: "px".into(),
                    },
                    vec![
                        hop("pod/default/p", Relation::Start),
                        hop("deployment/default/px", Relation::OwnedBy),
                    ],
                    Detail::Ownership { depth: 1 },
                    Confidence {
                        percent: 100,
                        basis: vec![Basis::RecordedLinks],
                    },
                ),
                -1,
            )],
        }
    }

    #[tokio::test]
    async fn writes_one_json_object_per_change_and_flushes() {
        let dir = std::env::temp_dir().join(format!("tapio-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let mut sink = Box::new(JsonlSink::new(Target::File(path.clone())));
        sink.healthcheck().await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(batch()).await.unwrap();
        drop(tx);
        let report = sink.run(rx).await.unwrap();
        assert_eq!(
            report,
            SinkReport {
                batches: 1,
                changes: 1
            }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"diff":-1,"time":1621417387000000000,"correlation":{"family":"ownership","kind":"ownership","root_cause":"deployment/default/px""#));
        assert_eq!(text.lines().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn unwritable_file_fails_the_health_check_naming_the_path() {
        let mut sink = JsonlSink::new(Target::File("/nonexistent-dir/x.jsonl".into()));
        let error = sink.healthcheck().await.unwrap_err();
        assert!(error.to_string().contains("/nonexistent-dir/x.jsonl"));
    }

    #[test]
    fn human_line_reads_well() {
        let change = batch().to_changes().next().unwrap();
        assert_eq!(
            human_line(&change),
            "2021-05-19T09:43:07.000Z - ownership   deployment/default/px (100%): pod/default/p is owned by: deployment/default/px"
        );
    }
}
