//! Shared helpers: a real etcd server (Debian's `etcd-server`) on free loopback ports in a
//! directory of its own, and the source run against it with everything it sends collected.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tapio_config::EtcdCollectorConfig;
use tapio_model::{Fact, FactPayload, Observation};
use tapio_sources::{Source, SourceContext, SourceError, SourceStats};
use tapio_sources_etcd::EtcdSource;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use tapio_sources_etcd::harness::{Etcd, free_port};

/// A client of `etcd`.
pub async fn connect_client(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connect to etcd")
}

/// A fresh directory under the system's temporary directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new empty directory named after `name`.
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tapio-etcd-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The source's settings for a test against `endpoints`, keeping its revision in `dir`.
pub fn config(endpoints: &[String], dir: &Path) -> EtcdCollectorConfig {
    EtcdCollectorConfig {
        enabled: true,
        endpoints: endpoints.to_vec(),
        ca_file: String::new(),
        cert_file: String::new(),
        key_file: String::new(),
        revision_file: dir.join("etcd.revision").display().to_string(),
        probe_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        ..EtcdCollectorConfig::default()
    }
}

/// The source running, with every fact it sent so far.
pub struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), SourceError>>,
    collector: JoinHandle<()>,
    pub facts: Arc<Mutex<Vec<Fact>>>,
    pub stats: Arc<SourceStats>,
}

impl Running {
    /// Starts the source of `config`.
    pub fn start(config: &EtcdCollectorConfig) -> Running {
        let (cx, mut rx) = SourceContext::for_test("etcd", "node-1", 1024);
        let shutdown = cx.shutdown.clone();
        let stats = Arc::clone(&cx.stats);
        let facts = Arc::new(Mutex::new(Vec::new()));
        let collector = {
            let facts = Arc::clone(&facts);
            tokio::spawn(async move {
                while let Some(observation) = rx.recv().await {
                    if let Observation::Fact(fact) = observation {
                        facts.lock().expect("facts").push(fact);
                    }
                }
            })
        };
        let task = tokio::spawn(Box::new(EtcdSource::new(config)).run(cx));
        Running {
            shutdown,
            task,
            collector,
            facts,
            stats,
        }
    }

    /// The facts so far whose payload `pick` keeps.
    pub fn picked<T>(&self, pick: impl Fn(&FactPayload) -> Option<T>) -> Vec<T> {
        self.facts
            .lock()
            .expect("facts")
            .iter()
            .filter_map(|fact| pick(&fact.payload))
            .collect()
    }

    /// Waits up to `within` until `done` holds of the facts so far.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[Fact]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.facts.lock().expect("facts")) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the source and returns every fact it sent.
    pub async fn stop(self) -> Vec<Fact> {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the source task")
            .expect("the source ends cleanly");
        self.collector.await.expect("the collector");
        Arc::try_unwrap(self.facts)
            .map(|facts| facts.into_inner().expect("facts"))
            .unwrap_or_else(|facts| facts.lock().expect("facts").clone())
    }
}

/// `(resource, namespace, name, operation, revision)` of every key change in `facts`.
pub fn key_changes(facts: &[Fact]) -> Vec<(String, String, String, &'static str, i64)> {
    facts
        .iter()
        .filter_map(|fact| match &fact.payload {
            FactPayload::EtcdKeyChange(change) => Some((
                change.resource.clone(),
                change.namespace.clone(),
                change.name.clone(),
                change.operation.as_str(),
                change.revision,
            )),
            _ => None,
        })
        .collect()
}

/// The kept revision in `dir`, once the file exists.
pub fn kept_revision(dir: &Path) -> Option<i64> {
    tapio_sources_etcd::load_revision(&dir.join("etcd.revision")).expect("a readable revision file")
}

/// Waits up to `within` until the kept revision in `dir` reaches `at_least`.
pub async fn wait_kept(dir: &Path, at_least: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if kept_revision(dir).is_some_and(|kept| kept >= at_least) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
