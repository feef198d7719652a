//! Each `collectors.<name>` section checks its own values, naming every key under the path it
//! is given (`collectors.kernel`), so that a collector reads its validated section directly and
//! keeps no second copy of its bounds.

use std::time::Duration;

use crate::error::ConfigError;
use crate::model::{
    CniCollectorConfig, CollectorsConfig, CriCollectorConfig, DnsCollectorConfig,
    EtcdCollectorConfig, KernelCollectorConfig, KubeletCollectorConfig, KubernetesCollectorConfig,
    RecordingCollectorConfig, SystemdCollectorConfig,
};
use crate::validate::{HOUR, check_url, count_in, duration_in, invalid};

/// Joins a section's path and one of its keys: `collectors.kernel` + `batch_delay`.
fn key(section: &str, name: &str) -> String {
    format!("{section}.{name}")
}

impl CollectorsConfig {
    /// Checks every collector section under `path` (`collectors`), in document order, and
    /// returns the first failure.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path, e.g. `collectors.kernel.batch_delay`.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.kernel.validate(&key(path, "kernel"))?;
        self.recording.validate(&key(path, "recording"))?;
        self.kubernetes.validate(&key(path, "kubernetes"))?;
        self.kubelet.validate(&key(path, "kubelet"))?;
        self.systemd.validate(&key(path, "systemd"))?;
        self.dns.validate(&key(path, "dns"))?;
        self.cri.validate(&key(path, "cri"))?;
        self.etcd.validate(&key(path, "etcd"))?;
        self.cni.validate(&key(path, "cni"))
    }
}

impl CriCollectorConfig {
    /// Checks this section, found at `path` (`collectors.cri`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: an empty socket path or namespace, or a retry
    /// interval out of range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.socket.trim().is_empty() {
            return Err(invalid(&key(path, "socket"), "must not be empty"));
        }
        if self.namespace.trim().is_empty() {
            return Err(invalid(&key(path, "namespace"), "must not be empty"));
        }
        duration_in(
            &key(path, "retry_interval"),
            self.retry_interval,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )
    }
}

impl EtcdCollectorConfig {
    /// Checks this section, found at `path` (`collectors.etcd`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: an empty or oversized endpoint list, an endpoint
    /// that is not an `http://` or `https://` URL (`endpoints[1]`), a prefix not starting with
    /// `/`, a client certificate without its key (or the reverse), a duration out of range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() || self.endpoints.len() > 16 {
            return Err(invalid(
                &key(path, "endpoints"),
                format!("must hold 1 to 16 entries, got {}", self.endpoints.len()),
            ));
        }
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            if let Err(problem) = check_url(endpoint, &["http", "https"]) {
                return Err(invalid(&format!("{path}.endpoints[{index}]"), problem));
            }
        }
        let https = |url: &String| url.to_ascii_lowercase().starts_with("https://");
        if let Some(index) = self
            .endpoints
            .iter()
            .position(|url| https(url) != https(&self.endpoints[0]))
        {
            return Err(invalid(
                &format!("{path}.endpoints[{index}]"),
                "must use the same scheme as endpoints[0] (all http:// or all https://)",
            ));
        }
        if https(&self.endpoints[0]) && self.ca_file.trim().is_empty() {
            return Err(invalid(
                &key(path, "ca_file"),
                "is required for https:// endpoints",
            ));
        }
        if !self.prefix.starts_with('/') {
            return Err(invalid(&key(path, "prefix"), "must start with `/`"));
        }
        let (cert, private) = (self.cert_file.trim(), self.key_file.trim());
        if cert.is_empty() != private.is_empty() {
            let (missing, given) = if cert.is_empty() {
                ("cert_file", "key_file")
            } else {
                ("key_file", "cert_file")
            };
            return Err(invalid(
                &key(path, missing),
                format!("must be set when {path}.{given} is"),
            ));
        }
        duration_in(
            &key(path, "probe_interval"),
            self.probe_interval,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        duration_in(
            &key(path, "timeout"),
            self.timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )
    }
}

impl DnsCollectorConfig {
    /// Checks this section, found at `path` (`collectors.dns`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: no ports, too many, port 0 or a repeated port,
    /// a duration or ring size out of range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let ports = key(path, "ports");
        count_in(&ports, self.ports.len(), 1, 64)?;
        for (at, port) in self.ports.iter().enumerate() {
            if *port == 0 {
                return Err(invalid(&format!("{ports}[{at}]"), "port 0 is not a port"));
            }
            if self.ports[..at].contains(port) {
                return Err(invalid(
                    &format!("{ports}[{at}]"),
                    format!("port {port} is listed twice"),
                ));
            }
        }
        duration_in(
            &key(path, "timeout"),
            self.timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        duration_in(
            &key(path, "search_window"),
            self.search_window,
            Duration::ZERO,
            Duration::from_secs(60),
        )?;
        let ring = self.ring_buffer_bytes;
        if !ring.is_power_of_two() || !(65_536..=1 << 30).contains(&ring) {
            return Err(invalid(
                &key(path, "ring_buffer_bytes"),
                format!("must be a power of two between 65536 and 1073741824, got {ring}"),
            ));
        }
        Ok(())
    }
}

impl KernelCollectorConfig {
    /// Checks this section, found at `path` (`collectors.kernel`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first value out of its range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let ring = self.ring_buffer_bytes;
        if !ring.is_power_of_two() || !(65_536..=1 << 30).contains(&ring) {
            return Err(invalid(
                &key(path, "ring_buffer_bytes"),
                format!("must be a power of two between 65536 and 1073741824, got {ring}"),
            ));
        }
        duration_in(
            &key(path, "heartbeat_interval"),
            self.heartbeat_interval,
            Duration::from_nanos(1),
            Duration::from_millis(100),
        )?;
        duration_in(
            &key(path, "batch_delay"),
            self.batch_delay,
            Duration::ZERO,
            Duration::from_millis(100),
        )?;
        let prefixes = key(path, "file_path_prefixes");
        if self.file_path_prefixes.len() > 8 {
            return Err(invalid(
                &prefixes,
                format!("at most 8 prefixes, got {}", self.file_path_prefixes.len()),
            ));
        }
        if let Some(prefix) = self
            .file_path_prefixes
            .iter()
            .find(|prefix| prefix.is_empty() || prefix.len() > 64)
        {
            return Err(invalid(
                &prefixes,
                format!("each prefix must be 1 to 64 bytes, got `{prefix}`"),
            ));
        }
        duration_in(
            &key(path, "file_aggregation_window"),
            self.file_aggregation_window,
            Duration::ZERO,
            HOUR,
        )?;
        duration_in(
            &key(path, "retransmit_aggregation_window"),
            self.retransmit_aggregation_window,
            Duration::ZERO,
            HOUR,
        )?;
        count_in(
            &key(path, "process_cache_capacity"),
            self.process_cache_capacity,
            1,
            10_000_000,
        )
    }
}

impl RecordingCollectorConfig {
    /// Checks this section, found at `path` (`collectors.recording`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: no `path` while enabled, or a `speed` that is
    /// negative or not finite.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.enabled && self.path.trim().is_empty() {
            return Err(invalid(
                &key(path, "path"),
                format!("is required when {path}.enabled is true"),
            ));
        }
        if !self.speed.is_finite() || self.speed < 0.0 {
            return Err(invalid(
                &key(path, "speed"),
                format!("must be a finite number >= 0, got {}", self.speed),
            ));
        }
        Ok(())
    }
}

impl KubernetesCollectorConfig {
    /// Checks this section, found at `path` (`collectors.kubernetes`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: a namespace that is not a DNS-1123 label
    /// (`namespaces[1]`), or a malformed label selector.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        for (index, namespace) in self.namespaces.iter().enumerate() {
            if !is_dns_label(namespace) {
                return Err(invalid(
                    &format!("{path}.namespaces[{index}]"),
                    format!(
                        "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63), got `{namespace}`"
                    ),
                ));
            }
        }
        if let Some(problem) = selector_problem(&self.label_selector) {
            return Err(invalid(&key(path, "label_selector"), problem));
        }
        Ok(())
    }
}

impl KubeletCollectorConfig {
    /// Checks this section, found at `path` (`collectors.kubelet`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: a bad URL or no token file while enabled, or a
    /// poll interval or threshold out of range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.enabled {
            if let Err(problem) = check_url(&self.url, &["https", "http"]) {
                return Err(invalid(&key(path, "url"), problem));
            }
            if self.token_path.trim().is_empty() {
                return Err(invalid(
                    &key(path, "token_path"),
                    format!("is required when {path}.enabled is true"),
                ));
            }
        }
        duration_in(
            &key(path, "poll_interval"),
            self.poll_interval,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        count_in(
            &key(path, "usage_threshold_percent"),
            usize::from(self.usage_threshold_percent),
            1,
            100,
        )
    }
}

impl SystemdCollectorConfig {
    /// Checks this section, found at `path` (`collectors.systemd`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path: an empty or oversized list, an empty pattern or
    /// directory (`unit_filter[2]`), or a poll interval out of range.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        for (name, list, most) in [
            ("unit_filter", &self.unit_filter, 64),
            ("directories", &self.directories, 16),
        ] {
            if list.is_empty() || list.len() > most {
                return Err(invalid(
                    &key(path, name),
                    format!("must hold 1 to {most} entries, got {}", list.len()),
                ));
            }
            if let Some(index) = list.iter().position(|entry| entry.trim().is_empty()) {
                return Err(invalid(
                    &format!("{path}.{name}[{index}]"),
                    "must not be empty",
                ));
            }
        }
        duration_in(
            &key(path, "poll_interval"),
            self.poll_interval,
            Duration::from_millis(10),
            Duration::from_secs(10),
        )
    }
}

impl CniCollectorConfig {
    /// Checks this section, found at `path` (`collectors.cni`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `socket` when it is not an absolute path or is longer than a
    /// unix socket address holds (107 bytes).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let socket = key(path, "socket");
        if !self.socket.starts_with('/') {
            return Err(invalid(
                &socket,
                format!("must be an absolute path, got `{}`", self.socket),
            ));
        }
        if self.socket.len() > 107 {
            return Err(invalid(
                &socket,
                format!(
                    "is {} bytes long; a unix socket path holds at most 107",
                    self.socket.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `name` is a DNS-1123 label, the form of a namespace name.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What is wrong with a label selector, if anything: each comma-separated requirement must
/// have a key (`key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a)`).
fn selector_problem(selector: &str) -> Option<String> {
    if selector.trim().is_empty() {
        return None;
    }
    let mut depth = 0_i32;
    let mut part = String::new();
    let mut parts = Vec::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut part));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Some(format!("unbalanced `)` in `{selector}`"));
        }
        part.push(c);
    }
    if depth != 0 {
        return Some(format!("unbalanced `(` in `{selector}`"));
    }
    parts.push(part);
    for requirement in parts {
        let key = requirement
            .trim()
            .trim_start_matches('!')
            .split(['=', '!', ' '])
            .next()
            .unwrap_or_default();
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid {
            return Some(format!(
                "`{}` is not a label requirement",
                requirement.trim()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cri_section_names_the_bad_key() {
        let cri = CriCollectorConfig {
            socket: " ".into(),
            ..CriCollectorConfig::default()
        };
        let error = cri.validate("collectors.cri").expect_err("empty socket");
        assert_eq!(error.key_path, "collectors.cri.socket");
        let cri = CriCollectorConfig {
            retry_interval: Duration::from_millis(10),
            ..CriCollectorConfig::default()
        };
        let error = cri.validate("collectors.cri").expect_err("short retry");
        assert_eq!(error.key_path, "collectors.cri.retry_interval");
        assert!(
            CriCollectorConfig::default()
                .validate("collectors.cri")
                .is_ok()
        );
    }

    #[test]
    fn the_cni_section_names_a_bad_socket() {
        let cni = CniCollectorConfig {
            socket: "run/tapio/cni.sock".into(),
            ..CniCollectorConfig::default()
        };
        let error = cni.validate("collectors.cni").expect_err("relative");
        assert_eq!(error.key_path, "collectors.cni.socket");
        let cni = CniCollectorConfig {
            socket: format!("/{}", "s".repeat(120)),
            ..CniCollectorConfig::default()
        };
        let error = cni.validate("collectors.cni").expect_err("too long");
        assert_eq!(error.key_path, "collectors.cni.socket");
        assert!(
            CniCollectorConfig::default()
                .validate("collectors.cni")
                .is_ok()
        );
    }

    #[test]
    fn the_systemd_section_names_the_bad_entry() {
        let systemd = SystemdCollectorConfig {
            unit_filter: vec!["*.service".into(), " ".into()],
            ..SystemdCollectorConfig::default()
        };
        let error = systemd
            .validate("collectors.systemd")
            .expect_err("empty pattern");
        assert_eq!(error.key_path, "collectors.systemd.unit_filter[1]");
        let systemd = SystemdCollectorConfig {
            directories: Vec::new(),
            ..SystemdCollectorConfig::default()
        };
        let error = systemd
            .validate("collectors.systemd")
            .expect_err("no directory");
        assert_eq!(error.key_path, "collectors.systemd.directories");
        let systemd = SystemdCollectorConfig {
            poll_interval: Duration::from_millis(5),
            ..SystemdCollectorConfig::default()
        };
        let error = systemd
            .validate("collectors.systemd")
            .expect_err("too fast");
        assert_eq!(error.key_path, "collectors.systemd.poll_interval");
        assert!(SystemdCollectorConfig::default().validate("c").is_ok());
    }

    #[test]
    fn a_section_names_its_keys_under_the_path_it_is_given() {
        let kernel = KernelCollectorConfig {
            batch_delay: Duration::from_millis(101),
            ..KernelCollectorConfig::default()
        };
        let error = kernel.validate("nodes.a.kernel").expect_err("out of range");
        assert_eq!(error.key_path, "nodes.a.kernel.batch_delay");
        let kubelet = KubeletCollectorConfig {
            enabled: true,
            token_path: String::new(),
            ..KubeletCollectorConfig::default()
        };
        let error = kubelet
            .validate("collectors.kubelet")
            .expect_err("no token");
        assert_eq!(error.key_path, "collectors.kubelet.token_path");
        assert!(
            error.message.contains("collectors.kubelet.enabled"),
            "{}",
            error.message
        );
        assert!(CollectorsConfig::default().validate("collectors").is_ok());
    }

    #[test]
    fn etcd_section_names_each_bad_key() {
        let etcd = |change: fn(&mut EtcdCollectorConfig)| {
            let mut config = EtcdCollectorConfig::default();
            change(&mut config);
            config
                .validate("collectors.etcd")
                .map_err(|error| error.to_string())
        };
        assert!(etcd(|_| {}).is_ok());
        let error = etcd(|c| c.endpoints.clear()).expect_err("no endpoints");
        assert!(error.contains("collectors.etcd.endpoints"), "{error}");
        let error = etcd(|c| c.endpoints = vec!["https://a:2379".into(), "b:2379".into()])
            .expect_err("not a URL");
        assert!(error.contains("collectors.etcd.endpoints[1]"), "{error}");
        let error = etcd(|c| c.endpoints = vec!["https://a:2379".into(), "http://b:2379".into()])
            .expect_err("mixed schemes");
        assert!(error.contains("collectors.etcd.endpoints[1]"), "{error}");
        let error = etcd(|c| c.ca_file.clear()).expect_err("https without a CA");
        assert!(error.contains("collectors.etcd.ca_file"), "{error}");
        assert!(
            etcd(|c| {
                c.endpoints = vec!["http://127.0.0.1:2379".into()];
                c.ca_file.clear();
            })
            .is_ok()
        );
        let error = etcd(|c| c.key_file.clear()).expect_err("a certificate without its key");
        assert!(error.contains("collectors.etcd.key_file"), "{error}");
        let error = etcd(|c| c.prefix = "registry/".into()).expect_err("relative prefix");
        assert!(error.contains("collectors.etcd.prefix"), "{error}");
        let error = etcd(|c| c.probe_interval = std::time::Duration::from_millis(10))
            .expect_err("too often");
        assert!(error.contains("collectors.etcd.probe_interval"), "{error}");
    }
}
