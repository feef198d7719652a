//! Each `correlation.<name>` section checks its own values, naming every key under the path it
//! is given (`correlation.oom_sequence`), so that the engine and each rule read their validated
//! section directly and keep no second copy of its bounds.

use std::time::Duration;

use crate::duration;
use crate::error::ConfigError;
use crate::model::{
    BadRolloutConfig, BlastRadiusConfig, BurstConfig, BurstThreshold, CoOccurrenceConfig,
    ConfigChangeConfig, CorrelationConfig, DnsFailureConfig, EngineConfig, EtcdSlowdownConfig,
    MemoryExhaustionConfig, NodePressureConfig, OomSequenceConfig, OwnershipConfig,
    PodNetworkConfig, RestartLoopConfig, ServiceGraphConfig,
};
use crate::sequences;
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
        self.restart_loop.validate(&key(path, "restart_loop"))?;
        self.burst.validate(&key(path, "burst"))?;
        self.co_occurrence.validate(&key(path, "co_occurrence"))?;
        self.memory_exhaustion
            .validate(&key(path, "memory_exhaustion"))?;
        self.node_pressure.validate(&key(path, "node_pressure"))?;
        sequences::validate(&self.sequences, &key(path, "sequences"))?;
        self.config_change.validate(&key(path, "config_change"))?;
        self.bad_rollout.validate(&key(path, "bad_rollout"))?;
        self.service_graph.validate(&key(path, "service_graph"))?;
        self.blast_radius.validate(&key(path, "blast_radius"))?;
        // The blast radius walks the service graph's edges: without them it finds nothing.
        if self.blast_radius.enabled && !self.service_graph.enabled {
            return Err(invalid(
                &key(&key(path, "blast_radius"), "enabled"),
                format!(
                    "needs {} (the edges it follows), which is false",
                    key(&key(path, "service_graph"), "enabled")
                ),
            ));
        }
        self.dns_failure.validate(&key(path, "dns_failure"))?;
        self.etcd_slowdown.validate(&key(path, "etcd_slowdown"))?;
        self.pod_network.validate(&key(path, "pod_network"))
    }
}

impl EtcdSlowdownConfig {
    /// Checks this section, found at `path` (`correlation.etcd_slowdown`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first problem: no reasons or too many, an
    /// empty reason (`reasons[1]`), a duration out of range, `keep_for` below `within`.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let reasons = key(path, "reasons");
        if self.reasons.is_empty() || self.reasons.len() > 64 {
            return Err(invalid(
                &reasons,
                format!("must hold 1 to 64 reasons, got {}", self.reasons.len()),
            ));
        }
        if let Some(index) = self.reasons.iter().position(|r| r.trim().is_empty()) {
            return Err(invalid(&format!("{reasons}[{index}]"), "must not be empty"));
        }
        duration_in(
            &key(path, "slow_read"),
            self.slow_read,
            Duration::from_millis(1),
            Duration::from_secs(60),
        )?;
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_secs(1),
            HOUR,
        )?;
        duration_in(&key(path, "keep_for"), self.keep_for, self.within, DAY)
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
        )?;
        duration_in(
            &key(path, "container_exit_grace"),
            self.container_exit_grace,
            Duration::ZERO,
            DAY,
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

/// Checks that `keep_for` (at `path`.keep_for) is at least `within` (at `within_path`) and at
/// most `max`.
fn keep_for_in(
    path: &str,
    keep_for: Duration,
    within_path: &str,
    within: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if keep_for < within {
        return Err(invalid(
            &key(path, "keep_for"),
            format!(
                "must be at least {within_path} ({}), got {}",
                duration::format(within),
                duration::format(keep_for)
            ),
        ));
    }
    duration_in(&key(path, "keep_for"), keep_for, within, max)
}

impl RestartLoopConfig {
    /// Checks this section, found at `path` (`correlation.restart_loop`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(&key(path, "count"), self.count as usize, 2, 1000)?;
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_secs(1),
            DAY,
        )?;
        keep_for_in(
            path,
            self.keep_for,
            &key(path, "within"),
            self.within,
            7 * DAY,
        )
    }
}

impl BurstThreshold {
    /// Checks one kind's threshold, found at `path` (`correlation.burst.connect_failures`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(&key(path, "count"), self.count as usize, 2, 1_000_000)?;
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_millis(1),
            HOUR,
        )
    }
}

impl BurstConfig {
    /// Checks this section, found at `path` (`correlation.burst`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let kinds = [
            ("connect_failures", &self.connect_failures),
            ("warning_events", &self.warning_events),
        ];
        for (name, threshold) in kinds {
            threshold.validate(&key(path, name))?;
        }
        for (name, threshold) in kinds {
            let within_path = key(&key(path, name), "within");
            keep_for_in(path, self.keep_for, &within_path, threshold.within, DAY)?;
        }
        Ok(())
    }
}

impl CoOccurrenceConfig {
    /// Checks this section, found at `path` (`correlation.co_occurrence`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(&key(path, "pods"), self.pods as usize, 2, 1000)?;
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_millis(1),
            Duration::from_secs(10 * 60),
        )?;
        keep_for_in(path, self.keep_for, &key(path, "within"), self.within, DAY)
    }
}

impl ConfigChangeConfig {
    /// Checks this section, found at `path` (`correlation.config_change`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first problem, e.g.
    /// `correlation.config_change.paths[1]`.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let paths = key(path, "paths");
        if self.paths.is_empty() {
            return Err(invalid(
                &paths,
                "needs at least one glob; set enabled: false to turn the rule off",
            ));
        }
        for (index, glob) in self.paths.iter().enumerate() {
            crate::glob::check(glob)
                .map_err(|message| invalid(&format!("{paths}[{index}]"), message))?;
        }
        duration_in(
            &key(path, "within"),
            self.within,
            Duration::from_millis(1),
            HOUR,
        )
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

impl BadRolloutConfig {
    /// Checks this section, found at `path` (`correlation.bad_rollout`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let second = Duration::from_secs(1);
        duration_in(&key(path, "within"), self.within, second, DAY)?;
        duration_in(&key(path, "keep_for"), self.keep_for, second, DAY)
    }
}

impl ServiceGraphConfig {
    /// Checks this section, found at `path` (`correlation.service_graph`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        duration_in(
            &key(path, "window"),
            self.window,
            Duration::from_secs(1),
            HOUR,
        )?;
        duration_in(
            &key(path, "mapping_grace"),
            self.mapping_grace,
            Duration::ZERO,
            HOUR,
        )?;
        duration_in(
            &key(path, "resolve_every"),
            self.resolve_every,
            Duration::from_millis(100),
            self.window,
        )
    }
}

impl BlastRadiusConfig {
    /// Checks this section, found at `path` (`correlation.blast_radius`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(&key(path, "max_depth"), self.max_depth as usize, 1, 16)?;
        duration_in(
            &key(path, "impact_window"),
            self.impact_window,
            Duration::from_secs(1),
            HOUR,
        )
    }
}

impl PodNetworkConfig {
    /// Checks this section, found at `path` (`correlation.pod_network`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `keep_for` when it is out of range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        duration_in(
            &key(path, "keep_for"),
            self.keep_for,
            Duration::from_secs(1),
            24 * HOUR,
        )
    }
}

impl DnsFailureConfig {
    /// Checks this section, found at `path` (`correlation.dns_failure`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        count_in(
            &key(path, "min_failures"),
            self.min_failures as usize,
            2,
            10_000,
        )?;
        duration_in(
            &key(path, "window"),
            self.window,
            Duration::from_secs(1),
            HOUR,
        )?;
        duration_in(
            &key(path, "cause_before"),
            self.cause_before,
            Duration::ZERO,
            HOUR,
        )?;
        if self.keep_for < self.window {
            return Err(invalid(
                &key(path, "keep_for"),
                format!(
                    "must be at least {} ({}), got {}",
                    key(path, "window"),
                    duration::format(self.window),
                    duration::format(self.keep_for)
                ),
            ));
        }
        Ok(())
    }
}
