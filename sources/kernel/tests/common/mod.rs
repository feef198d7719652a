//! Shared harness for the kernel tests: run the real source on the real kernel in the
//! background and collect what it sends.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_model::{Fact, FactPayload, Observation, ProcessExit};
use tapio_sources::{Source, SourceContext, SourceError};
use tapio_sources_kernel::{KernelSource, KernelStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A source running in the background.
pub struct Running {
    pub stats: Arc<KernelStats>,
    pub source_stats: Arc<tapio_sources::SourceStats>,
    shutdown: CancellationToken,
    seen: Arc<Mutex<Vec<Observation>>>,
    task: JoinHandle<Result<(), SourceError>>,
    collector: JoinHandle<()>,
}

/// Starts the kernel source and waits until its probes are attached.
pub async fn start(config: KernelCollectorConfig) -> Running {
    let source = KernelSource::new(&config).expect("valid config");
    let stats = source.stats();
    let (cx, mut rx) = SourceContext::for_test("kernel", "test-node", 65_536);
    let shutdown = cx.shutdown.clone();
    let source_stats = Arc::clone(&cx.stats);
    let task = tokio::spawn(Box::new(source).run(cx));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let collector = tokio::spawn(async move {
        while let Some(observation) = rx.recv().await {
            sink.lock().unwrap().push(observation);
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !stats.ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            !task.is_finished(),
            "the source stopped before it was ready: {:?}",
            task.await
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "source not ready after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        stats,
        source_stats,
        shutdown,
        seen,
        task,
        collector,
    }
}

impl Running {
    /// Every fact seen so far.
    pub fn facts(&self) -> Vec<Fact> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|o| match o {
                Observation::Fact(fact) => Some(fact.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every observation seen so far.
    pub fn observations(&self) -> Vec<Observation> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until a fact's payload satisfies `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&FactPayload) -> bool,
    ) -> Option<Fact> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(fact) = self.facts().into_iter().find(|f| pred(&f.payload)) {
                return Some(fact);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to 5 s for the exit fact of process `pid` and returns it.
    pub async fn wait_for_exit(&self, pid: u32) -> ProcessExit {
        let fact = self
            .wait_for(
                Duration::from_secs(5),
                |p| matches!(p, FactPayload::ProcessExit(e) if e.pid == pid),
            )
            .await
            .unwrap_or_else(|| panic!("no exit fact for pid {pid} within 5 s"));
        let FactPayload::ProcessExit(exit) = fact.payload else {
            unreachable!("the predicate matched an exit")
        };
        exit
    }

    /// Stops the source and returns its result.
    pub async fn stop(self) -> Result<(), SourceError> {
        self.shutdown.cancel();
        let result = self.task.await.expect("source task did not panic");
        self.collector.await.expect("collector did not panic");
        result
    }
}
