//! The table of collectors: which configuration section turns each on, and its constructor.
//!
//! Adding a collector is its crate (with a `from_config` that builds it from the validated
//! configuration, without I/O), its `collectors.<name>` section in `tapio-config`, and one line
//! here.

use anyhow::{Context, Result, bail};
use tapio_config::TapioConfig;
use tapio_sources::{Source, SourceError};

/// One collector of the table.
struct Collector {
    /// Its name: the `collectors.<name>` section and the source kind.
    name: &'static str,
    /// Whether the configuration turns it on.
    enabled: fn(&TapioConfig) -> bool,
    /// Builds it from the validated configuration, without I/O.
    build: fn(&TapioConfig) -> Result<Box<dyn Source>, SourceError>,
}

/// Every collector, in the order they start.
const COLLECTORS: [Collector; 9] = [
    Collector {
        name: "kernel",
        enabled: |config| config.collectors.kernel.enabled,
        build: tapio_sources_kernel::from_config,
    },
    Collector {
        name: "recording",
        enabled: |config| config.collectors.recording.enabled,
        build: tapio_sources_recording::from_config,
    },
    Collector {
        name: "kubernetes",
        enabled: |config| config.collectors.kubernetes.enabled,
        build: tapio_sources_kubernetes::from_config,
    },
    Collector {
        name: "kubelet",
        enabled: |config| config.collectors.kubelet.enabled,
        build: tapio_sources_kubelet::from_config,
    },
    Collector {
        name: "systemd",
        enabled: |config| config.collectors.systemd.enabled,
        build: tapio_sources_journal::from_config,
    },
    Collector {
        name: "dns",
        enabled: |config| config.collectors.dns.enabled,
        build: tapio_sources_dns::live::from_config,
    },
    Collector {
        name: "cri",
        enabled: |config| config.collectors.cri.enabled,
        build: tapio_sources_cri::from_config,
    },
    Collector {
        name: "etcd",
        enabled: |config| config.collectors.etcd.enabled,
        build: tapio_sources_etcd::from_config,
    },
    Collector {
        name: "cni",
        enabled: |config| config.collectors.cni.enabled,
        build: tapio_sources_cni::from_config,
    },
];

/// The collectors the configuration enables, built.
pub(crate) fn enabled_sources(config: &TapioConfig) -> Result<Vec<Box<dyn Source>>> {
    let sources = COLLECTORS
        .iter()
        .filter(|collector| (collector.enabled)(config))
        .map(|collector| {
            (collector.build)(config)
                .with_context(|| format!("cannot build the `{}` collector", collector.name))
        })
        .collect::<Result<Vec<_>>>()?;
    if sources.is_empty() {
        bail!(
            "no collectors are enabled; enable one in the configuration, e.g. \
             `collectors.recording.enabled: true` with `collectors.recording.path`, \
             or replay a recording with `tapio replay FILE`"
        );
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_collector_builds_from_the_defaults_under_its_own_kind() {
        let config = TapioConfig::default();
        for collector in &COLLECTORS {
            let source = (collector.build)(&config).expect("the defaults build");
            assert_eq!(source.kind(), collector.name);
        }
    }

    #[test]
    fn only_enabled_collectors_are_built() {
        let mut config = TapioConfig::default();
        config.collectors.kernel.enabled = false;
        config.collectors.kubelet.enabled = true;
        let kinds: Vec<_> = enabled_sources(&config)
            .expect("one is enabled")
            .iter()
            .map(|source| source.kind())
            .collect();
        assert_eq!(kinds, ["kubelet"]);
        config.collectors.kubelet.enabled = false;
        assert!(enabled_sources(&config).is_err());
    }
}
