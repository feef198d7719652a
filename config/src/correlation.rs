//! Each `correlation.<name>` section checks its own values, naming every key under the path it
//! is given (`correlation.oom_sequence`), so that the engine and each rule read their validated
//! section directly and keep no second copy of its bounds.

use std::time::Duration;

use crate::duration;
use crate::error::ConfigError;
use crate::model::{
    CorrelationConfig, EngineConfig, MemoryExhaustionConfig, NodePressureConfig, OomSequenceConfig,
    OwnershipConfig,
};
use crate::validate::{DAY, HOUR, count_in, duration_in, invalid};

/// Joins a section's path and one of its keys: `correlation.engine` + `tick`.
fn key(section: &str, name: &str) -> String {
    format!("{section}.{name}")
}

impl CorrelationConfig {
    /// Checks the engine and every rule section under `path` (`correlation`), in document
    /// order, and returns the first failure.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path, e.g. `correlation.oom_sequence.keep_for`.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.engine.validate(&key(path, "engine"))?;
        self.ownership.validate(&key(path, "ownership"))?;
        self.oom_sequence.validate(&key(path, "oom_sequence"))?;
        self.memory_exhaustion
            .validate(&key(path, "memory_exhaustion"))?;
        self.node_pressure.validate(&key(path, "node_pressure"))
    }
}

impl EngineConfig {
    /// Checks this section, found at `path` (`correlation.engine`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(&key(path, "worker_count"), self.worker_count, 1, 256)?;
        count_in(
            &key(path, "event_buffer_size"),
            self.event_buffer_size,
            1,
            10_000_000,
        )?;
        count_in(
            &key(path, "output_buffer_size"),
            self.output_buffer_size,
            1,
            100_000,
        )?;
        duration_in(
            &key(path, "tick"),
            self.tick,
            Duration::from_millis(1),
            Duration::from_secs(60),
        )?;
        duration_in(&key(path, "lateness"), self.lateness, Duration::ZERO, HOUR)?;
        // Within the lateness a source is merely behind, not silent: retiring it there would
        // only make it flap between retired and rejoined.
        let idle = self.source_idle_timeout;
        if !idle.is_zero() && idle <= self.lateness {
            return Err(invalid(
                &key(path, "source_idle_timeout"),
                format!(
                    "must be 0s (never retire) or above {} ({}), got {}",
                    key(path, "lateness"),
                    duration::format(self.lateness),
                    duration::format(idle)
                ),
            ));
        }
        duration_in(&key(path, "source_idle_timeout"), idle, Duration::ZERO, DAY)
    }
}

impl OwnershipConfig {
    /// Checks this section, found at `path` (`correlation.ownership`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(&key(path, "max_depth"), self.max_depth as usize, 1, 64)?;
        duration_in(
            &key(path, "process_exit_grace"),
            self.process_exit_grace,
            Duration::ZERO,
            HOUR,
        )
    }
}

impl OomSequenceConfig {
    /// Checks this section, found at `path` (`correlation.oom_sequence`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_millis(1),
            HOUR,
        )?;
        if self.keep_for < self.within {
            return Err(invalid(
                &key(path, "keep_for"),
                format!(
                    "must be at least {} ({}), got {}",
                    key(path, "within"),
                    duration::format(self.within),
                    duration::format(self.keep_for)
                ),
            ));
        }
        Ok(())
    }
}

impl MemoryExhaustionConfig {
    /// Checks this section, found at `path` (`correlation.memory_exhaustion`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_millis(1),
            HOUR,
        )
    }
}

impl NodePressureConfig {
    /// Checks this section, found at `path` (`correlation.node_pressure`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_millis(1),
            HOUR,
        )?;
        if self.keep_for < self.within {
            return Err(invalid(
                &key(path, "keep_for"),
                format!(
                    "must be at least {} ({}), got {}",
                    key(path, "within"),
                    duration::format(self.within),
                    duration::format(self.keep_for)
                ),
            ));
        }
        duration_in(&key(path, "keep_for"), self.keep_for, Duration::ZERO, DAY)
    }
}
