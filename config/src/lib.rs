//! L0: typed configuration, defaults, pure validation; depends on nothing internal.
//!
//! [`TapioConfig`] mirrors `tapio.yaml` key for key. Every key is optional and has a default
//! ([`TapioConfig::default`] equals the shipped `tapio.yaml`). Loading reports every problem as
//! a [`ConfigError`] that names the file, the line and column, and the dotted key path:
//!
//! ```text
//! tapio.yaml:12:5: correlation.engine.worker_count: must be between 1 and 256, got 0
//! ```
//!
//! Durations are written as humantime strings (`100ms`, `2s`, `10m`, `24h`) and held as
//! [`std::time::Duration`].

mod collectors;
mod correlation;
mod duration;
mod error;
mod glob;
mod model;
mod parse;
pub mod secret;
mod sequences;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrorKind};
pub use glob::glob_matches;
pub use model::{
    ApiConfig, BadRolloutConfig, BlastRadiusConfig, BurstConfig, BurstThreshold,
    CniCollectorConfig, CoOccurrenceConfig, CollectorsConfig, ConfigChangeConfig,
    CorrelationConfig, CriCollectorConfig, DnsCollectorConfig, DnsFailureConfig, EngineConfig,
    EtcdCollectorConfig, EtcdSlowdownConfig, IntegrationsConfig, KernelCollectorConfig,
    KubeletCollectorConfig, KubernetesCollectorConfig, MemoryExhaustionConfig, NatsConfig,
    Neo4jConfig, NodePressureConfig, OomSequenceConfig, OwnershipConfig, PodNetworkConfig,
    RecordingCollectorConfig, RestartLoopConfig, ServiceGraphConfig, StoreConfig,
    SystemdCollectorConfig, TapioConfig,
};
pub use secret::{NatsAuth, NatsSecurity, Secret, SecretError};
pub use sequences::{
    EntityKind, MAX_STEPS, SequenceConfig, StepConfig, StepKind, StepWhere, builtin_sequences,
};

impl TapioConfig {
    /// Parses and validates YAML `text`; `origin` (usually the file name) prefixes messages.
    ///
    /// Empty text, or text with only comments, gives [`TapioConfig::default`]. Errors name the
    /// key path and the 1-based line and column: syntax errors, unknown or duplicate keys, values
    /// of the wrong type, and values that fail [`TapioConfig::validate`].
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<TapioConfig, ConfigError> {
        let scanned = parse::scan(text).map_err(|error| error.with_origin(origin))?;
        let config = if scanned.has_content {
            parse::deserialize(text, &scanned.keys).map_err(|error| error.with_origin(origin))?
        } else {
            TapioConfig::default()
        };
        config.validate().map_err(|error| {
            let position = scanned.keys.position(&error.key_path);
            error.with_origin(origin).with_position(position)
        })?;
        Ok(config)
    }

    /// Reads the file at `path` and parses it with [`TapioConfig::from_yaml_str`], using the path
    /// as the origin in messages.
    pub fn load(path: &Path) -> Result<TapioConfig, ConfigError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|source| ConfigError::io(origin.as_str(), "cannot read file", source))?;
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(error) => {
                let valid = &bytes[..error.valid_up_to()];
                let line = 1 + valid.iter().filter(|byte| **byte == b'\n').count();
                let column = 1 + valid
                    .iter()
                    .rev()
                    .take_while(|byte| **byte != b'\n')
                    .count();
                return Err(ConfigError::new(
                    ConfigErrorKind::Io,
                    "",
                    "file is not valid utf-8 text",
                )
                .with_origin(origin)
                .with_position(Some((line, column))));
            }
        };
        TapioConfig::from_yaml_str(text, &origin)
    }

    /// Checks every value against its allowed range or shape (see each field's documentation)
    /// and returns the first failure, in document order.
    ///
    /// This is pure: no I/O, no lookups. The error names the key path; its origin and line are
    /// empty because a value built in code has no text (when called through
    /// [`TapioConfig::from_yaml_str`] they are filled in).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The effective configuration as YAML, every key included; it parses back to an equal
    /// value (for values that pass [`TapioConfig::validate`]).
    ///
    /// The output includes `integrations.neo4j.password` in clear text, as does `Debug`: do not
    /// log either where secrets must not appear.
    pub fn to_yaml(&self) -> String {
        match serde_saphyr::to_string(self) {
            Ok(text) => text,
            // Unreachable for these plain types; a comment keeps the output well-formed YAML.
            Err(error) => format!("# the configuration could not be written as yaml: {error}\n"),
        }
    }
}
