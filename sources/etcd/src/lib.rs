//! The etcd collector (layer L2; depends on `tapio-sources`, `tapio-model` and
//! `tapio-config`): watches the datastore of a self-managed Kubernetes cluster over etcd's v3
//! gRPC API and reports
//!
//! - every change of the Kubernetes keyspace (`collectors.etcd.prefix`, `/registry/`): its
//!   resource, namespace, name, operation, revision and value size; values are not decoded →
//!   `etcd_key_change` ([`watch`]);
//! - per endpoint, every `probe_interval`: whether it answers, how long a linearizable read of
//!   one key takes, its leader, raft term and database size → `etcd_status`; a leader other
//!   than at its previous probe → `etcd_leader_change`; the cluster's compacted revision
//!   rising → `etcd_compaction` ([`probe`]).
//!
//! The position is the etcd revision. Key changes go to the dataflow in deliveries at the
//! revision of their last change; once the dataflow has taken one in, its revision is written
//! to `collectors.etcd.revision_file`, and a restart watches from the revision after it:
//! nothing taken in is reported again, nothing after it is skipped. When etcd has compacted
//! its history past that revision, the changes in between cannot be watched any more: the
//! source says so in its log, lists the keys whose last change is newer than the kept revision
//! (reported as changes at that revision; deletions in the gap are not visible) and watches on
//! from the list's revision.
//!
//! Managed control planes (EKS, GKE, AKS, …) do not expose etcd: the collector is for
//! self-managed clusters and is off by default.

#[cfg(feature = "test-harness")]
pub mod harness;
pub mod keys;
pub mod probe;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tapio_config::{EtcdCollectorConfig, TapioConfig};
use tapio_sources::{BoxFuture, Source, SourceContext, SourceError};
use tokio_util::sync::CancellationToken;

/// The revision file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RevisionFileError {
    /// It could not be read or written.
    #[error("cannot {action} the etcd revision file {path}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not hold a revision.
    #[error("the etcd revision file {path} does not hold a revision: {text:?}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What it holds (its first 64 characters).
        text: String,
    },
}

/// Reads the kept revision in `path`; `None` when there is no file yet.
///
/// # Errors
/// The file exists but cannot be read or does not hold a positive number.
pub fn load_revision(path: &Path) -> Result<Option<i64>, RevisionFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RevisionFileError::Io {
                action: "read",
                path: path.into(),
                source,
            });
        }
    };
    match text.trim().parse::<i64>() {
        Ok(revision) if revision > 0 => Ok(Some(revision)),
        _ => Err(RevisionFileError::Format {
            path: path.into(),
            text: text.chars().take(64).collect(),
        }),
    }
}

/// Writes `revision` to `path` whole: to a file beside it, then renamed over it.
///
/// # Errors
/// The file or its directory cannot be written.
pub fn save_revision(path: &Path, revision: i64) -> Result<(), RevisionFileError> {
    let io = |source| RevisionFileError::Io {
        action: "write",
        path: path.into(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let staged = path.with_extension("new");
    std::fs::write(&staged, format!("{revision}\n")).map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)
}

/// The etcd source of the validated `config` (`collectors.etcd`); does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(EtcdSource::new(&config.collectors.etcd)))
}

/// Watches etcd.
#[derive(Debug)]
pub struct EtcdSource {
    config: EtcdCollectorConfig,
}

impl EtcdSource {
    /// A source reading as the validated `config` (`collectors.etcd`) says; does no I/O.
    pub fn new(config: &EtcdCollectorConfig) -> EtcdSource {
        EtcdSource {
            config: config.clone(),
        }
    }
}

/// `host:port` of an endpoint URL: what facts name an endpoint by.
pub fn endpoint_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Why the TLS material could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the etcd {what} {path}")]
pub struct TlsFileError {
    /// `CA file`, `client certificate` or `client key`.
    what: &'static str,
    /// The file.
    path: String,
    /// Why.
    #[source]
    source: std::io::Error,
}

/// The connection options of `config`: timeouts, keep-alive, and TLS for `https://`
/// endpoints.
///
/// # Errors
/// A CA, certificate or key file cannot be read.
pub fn connect_options(config: &EtcdCollectorConfig) -> Result<ConnectOptions, TlsFileError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.timeout)
        .with_timeout(config.timeout)
        .with_keep_alive(Duration::from_secs(10), config.timeout);
    let https = config
        .endpoints
        .iter()
        .any(|url| url.to_ascii_lowercase().starts_with("https://"));
    if https {
        let read = |what, path: &str| {
            std::fs::read(path.trim()).map_err(|source| TlsFileError {
                what,
                path: path.trim().to_string(),
                source,
            })
        };
        let mut tls = TlsOptions::new();
        if !config.ca_file.trim().is_empty() {
            tls = tls.ca_certificate(Certificate::from_pem(read("CA file", &config.ca_file)?));
        }
        if !config.cert_file.trim().is_empty() {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", &config.cert_file)?,
                read("client key", &config.key_file)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// A client of `endpoints` (connects lazily: errors show on the first request).
///
/// # Errors
/// The TLS material cannot be read, or an endpoint is not a usable URL.
pub async fn connect(
    endpoints: &[String],
    config: &EtcdCollectorConfig,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let options = connect_options(config)?;
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// Waits `delay` or until shutdown; `false` on shutdown.
pub(crate) async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

impl Source for EtcdSource {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn run(self: Box<Self>, mut cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let config = self.config;
            // The TLS files are read once up front: a missing one is a setup error to fix,
            // not something a retry mends.
            connect_options(&config).map_err(|error| SourceError::Input {
                kind: "etcd",
                what: "its TLS files".into(),
                source: Box::new(error),
            })?;
            tracing::info!(
                endpoints = ?config.endpoints,
                prefix = %config.prefix,
                "Watching etcd."
            );
            cx.health.set_running();
            let positions = cx.take_positions();
            let shutdown = cx.shutdown.clone();
            let probes = probe::run(&cx, &config);
            let watching = async {
                if config.watch_keys {
                    watch::run(&cx, &config, positions).await;
                } else {
                    shutdown.cancelled().await;
                }
            };
            tokio::join!(probes, watching);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revision_file_round_trips_and_bad_content_is_named() {
        let dir = std::env::temp_dir().join(format!("tapio-etcd-revision-{}", std::process::id()));
        let path = dir.join("nested").join("etcd.revision");
        assert_eq!(load_revision(&path).expect("no file yet"), None);
        save_revision(&path, 42).expect("save");
        assert_eq!(load_revision(&path).expect("load"), Some(42));
        std::fs::write(&path, "not a revision").expect("write");
        let error = load_revision(&path).expect_err("garbage").to_string();
        assert!(
            error.contains("etcd.revision") && error.contains("not a revision"),
            "{error}"
        );
        std::fs::write(&path, "0").expect("write");
        assert!(load_revision(&path).is_err(), "revisions start at 1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn endpoints_are_named_by_host_and_port() {
        assert_eq!(endpoint_address("https://10.0.0.1:2379"), "10.0.0.1:2379");
        assert_eq!(endpoint_address("http://[::1]:2379/"), "[::1]:2379");
        assert_eq!(endpoint_address("etcd-0:2379"), "etcd-0:2379");
    }

    #[test]
    fn a_missing_tls_file_is_named() {
        let config = EtcdCollectorConfig {
            ca_file: "/nonexistent/ca.crt".into(),
            ..EtcdCollectorConfig::default()
        };
        let error = connect_options(&config)
            .expect_err("no such file")
            .to_string();
        assert!(error.contains("CA file /nonexistent/ca.crt"), "{error}");
    }
}
