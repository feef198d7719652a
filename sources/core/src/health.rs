//! What a source reports about itself while it runs: a status and named counters.
//!
//! Every running source has one [`SourceHealth`], shared between the source (through
//! [`crate::SourceContext::health`]) and whoever reports on it. [`SourceHealth::snapshot`]
//! gives a [`Health`]: the status (starting, running, finished, failed) with an optional
//! message, the counters every source keeps ([`crate::SourceStats`]) and the counters that are
//! the source's own (a kernel collector's ring-buffer drops, a watcher's re-lists). The shape
//! is flat on purpose, names and integers, so that the same snapshot can be logged and
//! exported as metrics.
//!
//! ```
//! use std::sync::Arc;
//! use tapio_sources::{Counter, Counters, SourceHealth, SourceStats, Status};
//!
//! struct Relists;
//! impl Counters for Relists {
//!     fn read(&self, into: &mut Vec<Counter>) {
//!         into.push(Counter::new("relists", 3));
//!     }
//! }
//!
//! let health = SourceHealth::new("example", Arc::new(SourceStats::default()));
//! assert_eq!(health.snapshot().status, Status::Starting);
//! health.add_counters(Arc::new(Relists));
//! health.set_running();
//! let now = health.snapshot();
//! assert_eq!(now.status, Status::Running);
//! assert_eq!(now.counter("sent"), Some(0));
//! assert_eq!(now.counter("relists"), Some(3));
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::SourceStats;

/// Where a source is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Built and started, but its input is not open yet (connecting, loading, listing).
    Starting,
    /// Its input is open and it is reading.
    Running,
    /// It ended without an error (its input ended, or Tapio is shutting down).
    Finished,
    /// It stopped with an error; the message says why.
    Failed,
}

impl Status {
    /// The status as a lowercase word, a stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named counter of a [`Health`] snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// snake_case name, stable: a metric name suffix.
    pub name: &'static str,
    /// Its value; counters only grow, except gauges such as a cache size or a rate.
    pub value: u64,
}

impl Counter {
    /// A counter named `name` with `value`.
    pub fn new(name: &'static str, value: u64) -> Counter {
        Counter { name, value }
    }
}

/// Counters a source keeps beyond the common ones, read at every snapshot.
pub trait Counters: Send + Sync {
    /// Appends the current value of every counter to `into`, in a stable order.
    fn read(&self, into: &mut Vec<Counter>);
}

impl Counters for SourceStats {
    fn read(&self, into: &mut Vec<Counter>) {
        let now = self.snapshot();
        into.extend([
            Counter::new(RECEIVED, now.received),
            Counter::new(SENT, now.sent),
            Counter::new(ERRORS, now.errors),
            Counter::new(DROPPED, now.dropped),
        ]);
    }
}

/// Name of the common counter of records read from the input.
pub const RECEIVED: &str = "received";
/// Name of the common counter of observations sent on.
pub const SENT: &str = "sent";
/// Name of the common counter of records rejected as malformed.
pub const ERRORS: &str = "errors";
/// Name of the common counter of records lost.
pub const DROPPED: &str = "dropped";

/// A point-in-time report on one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The source's kind.
    pub kind: &'static str,
    /// Where the source is in its life.
    pub status: Status,
    /// What the source says about its status, if anything: why it failed, what it runs
    /// without.
    pub message: Option<String>,
    /// The common counters (`received`, `sent`, `errors`, `dropped`), then the source's own.
    pub counters: Vec<Counter>,
}

impl Health {
    /// The value of the counter `name`, if the source keeps one.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|counter| counter.name == name)
            .map(|counter| counter.value)
    }

    /// The source's own counters, after the common ones, as `name=value` pairs separated by
    /// spaces.
    pub fn own_counters(&self) -> String {
        let mut text = String::new();
        for counter in self.counters.iter().skip(COMMON) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(counter.name);
            text.push('=');
            text.push_str(&counter.value.to_string());
        }
        text
    }
}

/// How many counters every snapshot starts with: those of [`SourceStats`].
const COMMON: usize = 4;

/// The live health of one source: shared by the running source, which updates it, and the
/// reporter, which reads it.
pub struct SourceHealth {
    kind: &'static str,
    stats: Arc<SourceStats>,
    status: Mutex<(Status, Option<String>)>,
    own: Mutex<Vec<Arc<dyn Counters>>>,
}

impl fmt::Debug for SourceHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceHealth")
            .field("kind", &self.kind)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SourceHealth {
    /// The health of a source of kind `kind` counting into `stats`; its status is
    /// [`Status::Starting`].
    pub fn new(kind: &'static str, stats: Arc<SourceStats>) -> SourceHealth {
        SourceHealth {
            kind,
            stats,
            status: Mutex::new((Status::Starting, None)),
            own: Mutex::new(Vec::new()),
        }
    }

    /// The common counters.
    pub fn stats(&self) -> &Arc<SourceStats> {
        &self.stats
    }

    /// The source's input is open: [`Status::Running`], without a message.
    pub fn set_running(&self) {
        self.set(Status::Running, None);
    }

    /// Sets the status and its message.
    pub fn set(&self, status: Status, message: Option<String>) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = (status, message);
    }

    /// Adds counters of the source's own to every later snapshot.
    pub fn add_counters(&self, counters: Arc<dyn Counters>) {
        self.own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(counters);
    }

    /// The current status alone.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Reads the status and every counter.
    pub fn snapshot(&self) -> Health {
        let (status, message) = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut counters = Vec::with_capacity(COMMON);
        self.stats.read(&mut counters);
        for own in self
            .own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            own.read(&mut counters);
        }
        Health {
            kind: self.kind,
            status,
            message,
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn a_snapshot_has_the_common_counters_first_then_the_sources_own() {
        struct Own;
        impl Counters for Own {
            fn read(&self, into: &mut Vec<Counter>) {
                into.push(Counter::new("relists", 2));
            }
        }
        let stats = Arc::new(SourceStats::default());
        stats.sent.fetch_add(5, Ordering::Relaxed);
        let health = SourceHealth::new("k", Arc::clone(&stats));
        health.add_counters(Arc::new(Own));
        let now = health.snapshot();
        let names: Vec<_> = now.counters.iter().map(|c| c.name).collect();
        assert_eq!(names, [RECEIVED, SENT, ERRORS, DROPPED, "relists"]);
        assert_eq!(now.counter(SENT), Some(5));
        assert_eq!(now.own_counters(), "relists=2");
        health.set(Status::Failed, Some("no kubeconfig".into()));
        let failed = health.snapshot();
        assert_eq!(failed.status, Status::Failed);
        assert_eq!(failed.message.as_deref(), Some("no kubeconfig"));
    }
}
