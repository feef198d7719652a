//! Loading, round-tripping and validating `tapio.yaml`, and the errors users see.

use std::time::Duration;

use tapio_config::{ConfigError, ConfigErrorKind, TapioConfig};

/// The file shipped next to the crate, which must equal the built-in defaults.
const SHIPPED: &str = include_str!("../tapio.yaml");

fn parse(text: &str) -> Result<TapioConfig, ConfigError> {
    TapioConfig::from_yaml_str(text, "tapio.yaml")
}

fn parse_ok(text: &str) -> TapioConfig {
    match parse(text) {
        Ok(config) => config,
        Err(error) => panic!("expected {text:?} to parse, got: {error}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected {text:?} to fail, got {config:?}"),
        Err(error) => error,
    }
}

/// The shipped file with its one line equal to `from` (after trimming) replaced by `to`, and the
/// 1-based number of that line.
fn shipped_with(from: &str, to: &str) -> (String, usize) {
    let lines: Vec<&str> = SHIPPED.lines().collect();
    // `anchor / line`: the first `line` after the line `anchor`, for a line that more than one
    // section has.
    let (after, from) = match from.split_once(" / ") {
        Some((anchor, line)) => {
            let anchor_at = lines
                .iter()
                .position(|line| line.trim() == anchor)
                .unwrap_or_else(|| panic!("`{anchor}` is on no line of tapio.yaml"));
            (anchor_at, line)
        }
        None => (0, from),
    };
    let matching: Vec<usize> = (after..lines.len())
        .filter(|&index| lines[index].trim() == from)
        .collect();
    let index = if after == 0 {
        assert_eq!(
            matching.len(),
            1,
            "`{from}` must be on exactly one line of tapio.yaml"
        );
        matching[0]
    } else {
        *matching
            .first()
            .unwrap_or_else(|| panic!("`{from}` is on no line of tapio.yaml after its anchor"))
    };
    let indent = &lines[index][..lines[index].len() - lines[index].trim_start().len()];
    let mut out = String::new();
    for (at, line) in lines.iter().enumerate() {
        if at == index {
            out.push_str(indent);
            out.push_str(to);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    (out, index + 1)
}

/// The 1-based line numbers of the lines of `text` that equal `line` after trimming.
fn lines_of(text: &str, line: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, candidate)| candidate.trim() == line)
        .map(|(index, _)| index + 1)
        .collect()
}

#[test]
fn shipped_file_is_exactly_the_defaults() {
    assert_eq!(parse_ok(SHIPPED), TapioConfig::default());
}

#[test]
fn defaults_are_valid_and_round_trip() {
    let defaults = TapioConfig::default();
    assert!(defaults.validate().is_ok());
    assert_eq!(parse_ok(&defaults.to_yaml()), defaults);
}

#[test]
fn defaults_have_the_documented_values() {
    let config = TapioConfig::default();
    assert_eq!(config.node_name, "");
    assert!(!config.collectors.recording.enabled);
    assert_eq!(config.collectors.recording.path, "");
    assert_eq!(config.collectors.recording.speed, 0.0);
    let engine = &config.correlation.engine;
    assert_eq!(engine.worker_count, 1);
    assert_eq!(engine.event_buffer_size, 10_000);
    assert_eq!(engine.output_buffer_size, 64);
    assert_eq!(engine.tick, Duration::from_millis(100));
    assert_eq!(engine.lateness, Duration::from_secs(2));
    assert_eq!(engine.source_idle_timeout, Duration::from_secs(30));
    let ownership = &config.correlation.ownership;
    assert!(ownership.enabled);
    assert_eq!(ownership.max_depth, 8);
    assert_eq!(ownership.process_exit_grace, Duration::from_secs(30));
    let oom = &config.correlation.oom_sequence;
    assert!(oom.enabled);
    assert_eq!(oom.within, Duration::from_secs(30));
    assert_eq!(oom.keep_for, Duration::from_secs(600));
    let graph = &config.correlation.service_graph;
    assert!(graph.enabled);
    assert_eq!(graph.window, Duration::from_secs(300));
    assert_eq!(graph.mapping_grace, Duration::from_secs(300));
    let blast = &config.correlation.blast_radius;
    assert!(blast.enabled);
    assert_eq!(blast.max_depth, 4);
    assert_eq!(blast.impact_window, Duration::from_secs(300));
    let dns = &config.correlation.dns_failure;
    assert!(dns.enabled && !dns.count_nxdomain);
    assert_eq!(dns.min_failures, 3);
    assert_eq!(dns.window, Duration::from_secs(30));
    assert_eq!(dns.cause_before, Duration::from_secs(60));
    assert_eq!(dns.keep_for, Duration::from_secs(1200));
    let exhaustion = &config.correlation.memory_exhaustion;
    assert!(exhaustion.enabled);
    assert_eq!(exhaustion.within, Duration::from_secs(600));
    let pressure = &config.correlation.node_pressure;
    assert!(pressure.enabled);
    assert_eq!(pressure.within, Duration::from_secs(300));
    assert_eq!(pressure.keep_for, Duration::from_secs(900));
    assert_eq!(config.integrations.neo4j.uri, "");
    assert_eq!(config.integrations.neo4j.username, "neo4j");
    assert!(config.integrations.neo4j.password.is_empty());
    assert_eq!(config.integrations.nats.url, "");
    let nats = &config.integrations.nats;
    assert_eq!(nats.stream, "TAPIO");
    assert_eq!(nats.subject_prefix, "tapio.observations");
    assert_eq!(nats.retention, "limits");
    assert_eq!(nats.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(nats.max_bytes, 10 << 30);
    assert_eq!(nats.duplicate_window, Duration::from_secs(120));
    assert_eq!(nats.consumer, "tapio-correlation");
    assert_eq!(nats.max_pending_publishes, 1024);
    assert_eq!(nats.publish_timeout, Duration::from_secs(2));
    assert_eq!(nats.max_unacknowledged_span, Duration::from_millis(500));
    assert_eq!(nats.spool_path, "/var/lib/tapio/nats-spool.jsonl");
    assert_eq!(nats.spool_max_bytes, 1 << 30);
}

#[test]
fn to_yaml_writes_every_key_and_durations_as_humantime() {
    let text = TapioConfig::default().to_yaml();
    for key in [
        "node_name:",
        "collectors:",
        "recording:",
        "enabled:",
        "path:",
        "speed:",
        "correlation:",
        "engine:",
        "worker_count:",
        "event_buffer_size:",
        "output_buffer_size:",
        "tick: 100ms",
        "lateness: 2s",
        "source_idle_timeout: 30s",
        "ownership:",
        "max_depth:",
        "process_exit_grace: 30s",
        "oom_sequence:",
        "within: 30s",
        "keep_for: 10m",
        "dns_failure:",
        "min_failures: 3",
        "window: 30s",
        "cause_before: 1m",
        "count_nxdomain: false",
        "keep_for: 20m",
        "integrations:",
        "neo4j:",
        "uri:",
        "username:",
        "password:",
        "nats:",
        "url:",
        "stream:",
        "subject_prefix: tapio.observations",
        "retention: limits",
        "max_age: 168h",
        "max_bytes:",
        "duplicate_window: 2m",
        "consumer:",
        "max_pending_publishes:",
        "publish_timeout: 2s",
        "max_unacknowledged_span: 500ms",
        "spool_path:",
        "spool_max_bytes:",
    ] {
        assert!(text.contains(key), "`{key}` missing from:\n{text}");
    }
}

#[test]
fn non_default_values_round_trip() {
    let mut config = TapioConfig {
        node_name: "yes".to_owned(),
        ..TapioConfig::default()
    };
    config.collectors.recording.enabled = true;
    config.collectors.recording.path = "/var/lib/tapio/rec: 1 # not a comment".to_owned();
    config.collectors.recording.speed = 2.5;
    config.correlation.engine.worker_count = 256;
    config.correlation.engine.event_buffer_size = 10_000_000;
    config.correlation.engine.output_buffer_size = 1;
    config.correlation.engine.tick = Duration::from_micros(1_500);
    config.correlation.engine.lateness = Duration::from_secs(3600);
    config.correlation.engine.source_idle_timeout = Duration::from_secs(24 * 3600);
    config.correlation.ownership.enabled = false;
    config.correlation.ownership.max_depth = 64;
    config.correlation.ownership.process_exit_grace = Duration::from_secs(3600);
    config.correlation.oom_sequence.within = Duration::from_nanos(1_000_001);
    config.correlation.oom_sequence.keep_for = Duration::from_secs(90);
    config.integrations.neo4j.uri = "neo4j+s://db.example.com:7687".to_owned();
    config.integrations.neo4j.username = "~".to_owned();
    config.integrations.neo4j.password =
        tapio_config::Secret::new("p@ss: \"word\"\n\t'second line'");
    config.integrations.nats.url = "nats://[::1]:4222".to_owned();
    config.integrations.nats.stream = "123".to_owned();
    assert!(config.validate().is_ok());
    let text = config.to_yaml();
    assert_eq!(parse_ok(&text), config, "{text}");
}

#[test]
fn empty_and_comment_only_files_are_the_defaults() {
    for text in [
        "",
        "\n\n",
        "   \n",
        "# nothing here\n",
        "# a\n   # b\n\n",
        "---\n",
        "---\n# only a comment\n...\n",
        "~\n",
        "null",
        "{}\n",
    ] {
        assert_eq!(parse_ok(text), TapioConfig::default(), "{text:?}");
    }
}

#[test]
fn sections_without_values_are_their_defaults() {
    let text = "collectors:\n  # recording:\n  #   enabled: true\ncorrelation:\n  engine:\n  ownership: ~\nintegrations:\n";
    assert_eq!(parse_ok(text), TapioConfig::default());
}

#[test]
fn partial_files_keep_other_defaults() {
    let config = parse_ok("correlation:\n  engine:\n    worker_count: 4\n    tick: 250ms\n");
    let mut expected = TapioConfig::default();
    expected.correlation.engine.worker_count = 4;
    expected.correlation.engine.tick = Duration::from_millis(250);
    assert_eq!(config, expected);
}

#[test]
fn flow_style_is_accepted() {
    let config = parse_ok("correlation: {engine: {worker_count: 2, lateness: 0s}}\n");
    assert_eq!(config.correlation.engine.worker_count, 2);
    assert_eq!(config.correlation.engine.lateness, Duration::ZERO);
}

#[test]
fn unknown_keys_name_their_full_path_line_and_the_valid_keys() {
    let error = parse_err("node_name: a\nnode-name: b\n");
    assert_eq!(error.kind, ConfigErrorKind::UnknownKey);
    assert_eq!(error.key_path, "node-name");
    assert_eq!((error.line, error.column), (Some(2), Some(1)));
    assert!(
        error.message.contains("unknown key")
            && error
                .message
                .contains("node_name, collectors, correlation, integrations"),
        "{error}"
    );

    let error = parse_err("correlation:\n  engines:\n    worker_count: 2\n");
    assert_eq!(error.kind, ConfigErrorKind::UnknownKey);
    assert_eq!(error.key_path, "correlation.engines");
    assert_eq!((error.line, error.column), (Some(2), Some(3)));
    assert!(
        error
            .message
            .contains("engine, ownership, oom_sequence, restart_loop"),
        "{error}"
    );

    let (text, line) = shipped_with("worker_count: 1", "workers: 4");
    let error = parse_err(&text);
    assert_eq!(error.kind, ConfigErrorKind::UnknownKey);
    assert_eq!(error.key_path, "correlation.engine.workers");
    assert_eq!((error.line, error.column), (Some(line), Some(5)));
    assert_eq!(
        error.to_string(),
        format!(
            "tapio.yaml:{line}:5: correlation.engine.workers: unknown key; valid keys here: \
             worker_count, event_buffer_size, output_buffer_size, tick, lateness, \
             source_idle_timeout"
        )
    );

    // Depth 3 in flow style, under a key name (`enabled`) that exists in several sections.
    let error = parse_err("correlation:\n  ownership: {enabled: true, enable: false}\n");
    assert_eq!(error.key_path, "correlation.ownership.enable");
    assert_eq!(error.line, Some(2));
    assert!(
        error
            .message
            .contains("enabled, max_depth, process_exit_grace"),
        "{error}"
    );
}

#[test]
fn wrong_types_name_the_key_path_and_line() {
    let cases = [
        (
            "worker_count: 1",
            "worker_count: \"many\"",
            "correlation.engine.worker_count",
        ),
        (
            "worker_count: 1",
            "worker_count: -1",
            "correlation.engine.worker_count",
        ),
        (
            "event_buffer_size: 10000",
            "event_buffer_size: 1.5",
            "correlation.engine.event_buffer_size",
        ),
        ("tick: 100ms", "tick: 5", "correlation.engine.tick"),
        (
            "lateness: 2s",
            "lateness: soon",
            "correlation.engine.lateness",
        ),
        (
            "process_exit_grace: 30s",
            "process_exit_grace: [30s]",
            "correlation.ownership.process_exit_grace",
        ),
        (
            "max_depth: 8",
            "max_depth: 99999999999",
            "correlation.ownership.max_depth",
        ),
        ("speed: 0", "speed: fast", "collectors.recording.speed"),
        (
            "insecure_skip_tls_verify: false",
            "insecure_skip_tls_verify: maybe",
            "collectors.kubelet.insecure_skip_tls_verify",
        ),
        ("node_name: \"\"", "node_name: {first: a}", "node_name"),
        ("stream: TAPIO", "stream:", "integrations.nats.stream"),
        (
            "username: neo4j",
            "username: [a, b]",
            "integrations.neo4j.username",
        ),
    ];
    for (from, to, key_path) in cases {
        let (text, line) = shipped_with(from, to);
        let error = parse_err(&text);
        assert_eq!(error.kind, ConfigErrorKind::InvalidType, "{to}: {error}");
        assert_eq!(error.key_path, key_path, "{to}: {error}");
        assert_eq!(error.line, Some(line), "{to}: {error}");
        assert!(error.column.is_some(), "{to}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("tapio.yaml:{line}:")),
            "{error}"
        );
    }
}

#[test]
fn wrong_types_under_same_named_keys_find_the_right_one() {
    let enabled_true = lines_of(SHIPPED, "enabled: true");
    // Kernel, ownership and oom_sequence come first; later rule sections have their own.
    assert!(enabled_true.len() >= 3, "{enabled_true:?}");
    let mut lines: Vec<String> = SHIPPED.lines().map(str::to_owned).collect();
    // The first `enabled: true` after the `oom_sequence:` section starts.
    let section = lines_of(SHIPPED, "oom_sequence:")[0];
    let oom_line = *enabled_true
        .iter()
        .find(|line| **line > section)
        .expect("oom_sequence has an enabled key");
    lines[oom_line - 1] = lines[oom_line - 1].replace("true", "yes");
    let error = parse_err(&lines.join("\n"));
    assert_eq!(error.key_path, "correlation.oom_sequence.enabled");
    assert_eq!(error.line, Some(oom_line));
    assert_eq!(error.message, "expected true or false, got `yes`");
}

#[test]
fn kernel_collector_values_are_checked_with_their_key_path() {
    for (text, key_path) in [
        (
            "collectors:\n  kernel:\n    ring_buffer_bytes: 100000\n",
            "collectors.kernel.ring_buffer_bytes",
        ),
        (
            "collectors:\n  kernel:\n    heartbeat_interval: 1s\n",
            "collectors.kernel.heartbeat_interval",
        ),
        (
            "collectors:\n  kernel:\n    file_path_prefixes: [\"\"]\n",
            "collectors.kernel.file_path_prefixes",
        ),
        (
            "collectors:\n  kernel:\n    process_cache_capacity: 0\n",
            "collectors.kernel.process_cache_capacity",
        ),
    ] {
        let error = parse_err(text);
        assert_eq!(error.key_path, key_path, "{error}");
        assert_eq!(error.line, Some(3), "{error}");
    }
    let config = TapioConfig::from_yaml_str(
        "collectors:\n  kernel:\n    enabled: false\n    file_path_prefixes: []\n",
        "tapio.yaml",
    )
    .expect("valid");
    assert!(!config.collectors.kernel.enabled);
    assert!(config.collectors.kernel.file_path_prefixes.is_empty());
}

#[test]
fn an_unacknowledged_span_not_below_the_lateness_is_refused_where_nats_is_used() {
    let nats =
        "integrations:\n  nats:\n    url: nats://127.0.0.1:4222\n    max_unacknowledged_span: 2s\n";
    let error = parse_err(nats);
    assert_eq!(
        error.key_path, "integrations.nats.max_unacknowledged_span",
        "{error}"
    );
    assert_eq!(error.line, Some(4), "{error}");
    assert!(
        error
            .message
            .contains("below correlation.engine.lateness (2s)"),
        "{error}"
    );
    // A lateness above the span is accepted, and so is any span where NATS is not used.
    parse_ok(&format!(
        "{nats}correlation:\n  engine:\n    lateness: 3s\n"
    ));
    parse_ok("integrations:\n  nats:\n    max_unacknowledged_span: 2s\n");
}

#[test]
fn the_source_idle_timeout_is_zero_or_above_the_lateness() {
    let ok = parse_ok("correlation:\n  engine:\n    source_idle_timeout: 0s\n");
    assert_eq!(ok.correlation.engine.source_idle_timeout, Duration::ZERO);
    let ok = parse_ok("correlation:\n  engine:\n    lateness: 0s\n    source_idle_timeout: 1ms\n");
    assert_eq!(
        ok.correlation.engine.source_idle_timeout,
        Duration::from_millis(1)
    );
    let error =
        parse_err("correlation:\n  engine:\n    lateness: 5s\n    source_idle_timeout: 5s\n");
    assert_eq!(error.key_path, "correlation.engine.source_idle_timeout");
    assert_eq!(error.line, Some(4));
    assert!(
        error.message.contains(
            "must be 0s (never retire) or above correlation.engine.lateness (5s), got 5s"
        ),
        "{error}"
    );
}

#[test]
fn duration_without_unit_says_what_to_write() {
    let error = parse_err("correlation:\n  engine:\n    tick: 5\n");
    assert_eq!(error.key_path, "correlation.engine.tick");
    assert_eq!((error.line, error.column), (Some(3), Some(11)));
    assert!(error.message.contains("invalid duration `5`"), "{error}");
    assert!(error.message.contains("100ms"), "{error}");
}

/// (line of tapio.yaml to change, its replacement, key path of the error, line of the error:
/// `None` = the changed line).
const RULES: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "label_selector: \"\"",
        "label_selector: \"=web\"",
        "collectors.kubernetes.label_selector",
        None,
    ),
    (
        "namespaces: []",
        "namespaces: [default, Bad_Name]",
        "collectors.kubernetes.namespaces[1]",
        None,
    ),
    (
        "usage_threshold_percent: 90",
        "usage_threshold_percent: 0",
        "collectors.kubelet.usage_threshold_percent",
        None,
    ),
    (
        "poll_interval: 10s",
        "poll_interval: 100ms",
        "collectors.kubelet.poll_interval",
        None,
    ),
    (
        "speed: 0",
        "speed: -0.5",
        "collectors.recording.speed",
        None,
    ),
    (
        "speed: 0",
        "speed: .nan",
        "collectors.recording.speed",
        None,
    ),
    (
        "speed: 0",
        "speed: .inf",
        "collectors.recording.speed",
        None,
    ),
    (
        "worker_count: 1",
        "worker_count: 0",
        "correlation.engine.worker_count",
        None,
    ),
    (
        "worker_count: 1",
        "worker_count: 257",
        "correlation.engine.worker_count",
        None,
    ),
    (
        "event_buffer_size: 10000",
        "event_buffer_size: 0",
        "correlation.engine.event_buffer_size",
        None,
    ),
    (
        "event_buffer_size: 10000",
        "event_buffer_size: 10000001",
        "correlation.engine.event_buffer_size",
        None,
    ),
    (
        "output_buffer_size: 64",
        "output_buffer_size: 0",
        "correlation.engine.output_buffer_size",
        None,
    ),
    (
        "output_buffer_size: 64",
        "output_buffer_size: 100001",
        "correlation.engine.output_buffer_size",
        None,
    ),
    ("tick: 100ms", "tick: 0s", "correlation.engine.tick", None),
    (
        "tick: 100ms",
        "tick: 999us",
        "correlation.engine.tick",
        None,
    ),
    ("tick: 100ms", "tick: 61s", "correlation.engine.tick", None),
    (
        "lateness: 2s",
        "lateness: 1h 1ns",
        "correlation.engine.lateness",
        None,
    ),
    (
        "source_idle_timeout: 30s",
        "source_idle_timeout: 2s",
        "correlation.engine.source_idle_timeout",
        None,
    ),
    (
        "source_idle_timeout: 30s",
        "source_idle_timeout: 24h 1ns",
        "correlation.engine.source_idle_timeout",
        None,
    ),
    (
        "lateness: 2s",
        "lateness: 30s",
        "correlation.engine.source_idle_timeout",
        Some("source_idle_timeout: 30s"),
    ),
    (
        "max_depth: 8",
        "max_depth: 0",
        "correlation.ownership.max_depth",
        None,
    ),
    (
        "max_depth: 8",
        "max_depth: 65",
        "correlation.ownership.max_depth",
        None,
    ),
    (
        "process_exit_grace: 30s",
        "process_exit_grace: 2h",
        "correlation.ownership.process_exit_grace",
        None,
    ),
    (
        "within: 30s",
        "within: 0s",
        "correlation.oom_sequence.within",
        None,
    ),
    (
        "within: 30s",
        "within: 61m",
        "correlation.oom_sequence.within",
        None,
    ),
    (
        "oom_sequence: / keep_for: 10m",
        "keep_for: 29s",
        "correlation.oom_sequence.keep_for",
        None,
    ),
    (
        "within: 15m",
        "within: 0s",
        "correlation.bad_rollout.within",
        None,
    ),
    (
        "keep_for: 1h",
        "keep_for: 25h",
        "correlation.bad_rollout.keep_for",
        None,
    ),
    (
        "min_failures: 3",
        "min_failures: 1",
        "correlation.dns_failure.min_failures",
        None,
    ),
    (
        "window: 30s",
        "window: 999ms",
        "correlation.dns_failure.window",
        None,
    ),
    (
        "cause_before: 1m",
        "cause_before: 2h",
        "correlation.dns_failure.cause_before",
        None,
    ),
    (
        "- name: oom_to_endpoint_not_ready / keep_for: 15m",
        "keep_for: 1m",
        "correlation.sequences[0].keep_for",
        None,
    ),
    (
        "window: 5m",
        "window: 999ms",
        "correlation.service_graph.window",
        None,
    ),
    (
        "mapping_grace: 5m",
        "mapping_grace: 2h",
        "correlation.service_graph.mapping_grace",
        None,
    ),
    (
        "max_depth: 4",
        "max_depth: 17",
        "correlation.blast_radius.max_depth",
        None,
    ),
    (
        "impact_window: 5m",
        "impact_window: 0s",
        "correlation.blast_radius.impact_window",
        None,
    ),
    (
        "keep_for: 20m",
        "keep_for: 29s",
        "correlation.dns_failure.keep_for",
        None,
    ),
    (
        "count: 3",
        "count: 1",
        "correlation.restart_loop.count",
        None,
    ),
    (
        "restart_loop: / within: 10m",
        "within: 500ms",
        "correlation.restart_loop.within",
        None,
    ),
    (
        "keep_for: 5m",
        "keep_for: 4m",
        "correlation.burst.keep_for",
        None,
    ),
    ("pods: 3", "pods: 1", "correlation.co_occurrence.pods", None),
    (
        "within: 10s",
        "within: 11m",
        "correlation.co_occurrence.within",
        None,
    ),
    (
        "config_change: / paths: [\"/etc/**\"]",
        "paths: [\"/etc/**\", \"etc/**\"]",
        "correlation.config_change.paths[1]",
        None,
    ),
    (
        "config_change: / paths: [\"/etc/**\"]",
        "paths: [\"/etc/a**\"]",
        "correlation.config_change.paths[0]",
        None,
    ),
    (
        "config_change: / paths: [\"/etc/**\"]",
        "paths: []",
        "correlation.config_change.paths",
        None,
    ),
    (
        "config_change: / within: 10m",
        "within: 2h",
        "correlation.config_change.within",
        None,
    ),
    (
        "slack: 1s",
        "slack: 61s",
        "correlation.sequences[0].slack",
        None,
    ),
    (
        "memory_exhaustion: / within: 10m",
        "within: 2h",
        "correlation.memory_exhaustion.within",
        None,
    ),
    (
        "node_pressure: / within: 5m",
        "within: 0s",
        "correlation.node_pressure.within",
        None,
    ),
    (
        "node_pressure: / keep_for: 15m",
        "keep_for: 4m",
        "correlation.node_pressure.keep_for",
        None,
    ),
    (
        "node_pressure: / keep_for: 15m",
        "keep_for: 25h",
        "correlation.node_pressure.keep_for",
        None,
    ),
    (
        "uri: \"\"",
        "uri: http://db:7687",
        "integrations.neo4j.uri",
        None,
    ),
    ("uri: \"\"", "uri: bolt://", "integrations.neo4j.uri", None),
    (
        "uri: \"\"",
        "uri: localhost:7687",
        "integrations.neo4j.uri",
        None,
    ),
    (
        "uri: \"\"",
        "uri: bolt://db:port",
        "integrations.neo4j.uri",
        None,
    ),
    (
        "url: \"\"",
        "url: https://nats:4222",
        "integrations.nats.url",
        None,
    ),
    (
        "url: \"\"",
        "url: nats://:4222",
        "integrations.nats.url",
        None,
    ),
    (
        "stream: TAPIO",
        "stream: \"\"",
        "integrations.nats.stream",
        None,
    ),
    (
        "stream: TAPIO",
        "stream: tapio.events",
        "integrations.nats.stream",
        None,
    ),
    (
        "stream: TAPIO",
        "stream: \"a b\"",
        "integrations.nats.stream",
        None,
    ),
    (
        "subject_prefix: tapio.observations",
        "subject_prefix: tapio..observations",
        "integrations.nats.subject_prefix",
        None,
    ),
    (
        "subject_prefix: tapio.observations",
        "subject_prefix: tapio.*",
        "integrations.nats.subject_prefix",
        None,
    ),
    (
        "retention: limits",
        "retention: workqueue",
        "integrations.nats.retention",
        None,
    ),
    (
        "duplicate_window: 2m",
        "duplicate_window: 0s",
        "integrations.nats.duplicate_window",
        None,
    ),
    (
        "max_age: 168h",
        "max_age: 1m",
        "integrations.nats.duplicate_window",
        Some("duplicate_window: 2m"),
    ),
    (
        "max_bytes: 10737418240",
        "max_bytes: 18446744073709551615",
        "integrations.nats.max_bytes",
        None,
    ),
    (
        "consumer: tapio-correlation",
        "consumer: tapio.correlation",
        "integrations.nats.consumer",
        None,
    ),
    (
        "max_pending_publishes: 1024",
        "max_pending_publishes: 0",
        "integrations.nats.max_pending_publishes",
        None,
    ),
    (
        "publish_timeout: 2s",
        "publish_timeout: 5m",
        "integrations.nats.publish_timeout",
        None,
    ),
    (
        "max_unacknowledged_span: 500ms",
        "max_unacknowledged_span: 2h",
        "integrations.nats.max_unacknowledged_span",
        None,
    ),
    (
        "spool_path: /var/lib/tapio/nats-spool.jsonl",
        "spool_path: \"\"",
        "integrations.nats.spool_path",
        None,
    ),
    (
        "spool_max_bytes: 1073741824",
        "spool_max_bytes: 10",
        "integrations.nats.spool_max_bytes",
        None,
    ),
];

#[test]
fn every_validation_rule_names_its_key_path_and_line() {
    for &(from, to, key_path, error_at) in RULES {
        let (text, changed_line) = shipped_with(from, to);
        let line = match error_at {
            None => changed_line,
            Some(at) => lines_of(&text, at)[0],
        };
        let error = parse_err(&text);
        assert_eq!(error.kind, ConfigErrorKind::InvalidValue, "{to}: {error}");
        assert_eq!(error.key_path, key_path, "{to}: {error}");
        assert_eq!(error.line, Some(line), "{to}: {error}");
        assert_eq!(error.origin, "tapio.yaml");
        assert!(
            error
                .to_string()
                .starts_with(&format!("tapio.yaml:{line}:")),
            "{to}: {error}"
        );
    }
}

#[test]
fn validation_messages_state_the_bound_and_the_value() {
    let (text, line) = shipped_with("worker_count: 1", "worker_count: 0");
    assert_eq!(
        parse_err(&text).to_string(),
        format!(
            "tapio.yaml:{line}:5: correlation.engine.worker_count: must be between 1 and 256, got 0"
        )
    );
    let (text, _) = shipped_with("tick: 100ms", "tick: 2m");
    assert_eq!(
        parse_err(&text).message,
        "must be between 1ms and 1m, got 2m"
    );
    let (text, _) = shipped_with("oom_sequence: / keep_for: 10m", "keep_for: 29s");
    assert_eq!(
        parse_err(&text).message,
        "must be at least correlation.oom_sequence.within (30s), got 29s"
    );
}

#[test]
fn bounds_themselves_are_accepted() {
    for (from, to) in [
        ("worker_count: 1", "worker_count: 256"),
        ("event_buffer_size: 10000", "event_buffer_size: 10000000"),
        ("output_buffer_size: 64", "output_buffer_size: 100000"),
        ("tick: 100ms", "tick: 1ms"),
        ("tick: 100ms", "tick: 60s"),
        ("lateness: 2s", "lateness: 0s"),
        ("source_idle_timeout: 30s", "source_idle_timeout: 0s"),
        ("source_idle_timeout: 30s", "source_idle_timeout: 2001ms"),
        ("source_idle_timeout: 30s", "source_idle_timeout: 24h"),
        ("max_depth: 8", "max_depth: 1"),
        ("max_depth: 8", "max_depth: 64"),
        ("process_exit_grace: 30s", "process_exit_grace: 0s"),
        ("process_exit_grace: 30s", "process_exit_grace: 1h"),
        ("within: 30s", "within: 10m"),
        ("oom_sequence: / keep_for: 10m", "keep_for: 30s"),
        ("min_failures: 3", "min_failures: 2"),
        ("window: 30s", "window: 1s"),
        ("cause_before: 1m", "cause_before: 0s"),
        ("keep_for: 20m", "keep_for: 30s"),
        ("speed: 0", "speed: 1.0"),
        ("uri: \"\"", "uri: bolt+ssc://user@db.internal"),
        ("url: \"\"", "url: wss://nats.example:443/ws"),
        ("stream: TAPIO", "stream: tapio_Events-2"),
    ] {
        let (text, _) = shipped_with(from, to);
        parse_ok(&text);
    }
    // The largest lateness needs a larger idle timeout (or none).
    let (text, _) = shipped_with("lateness: 2s", "lateness: 1h");
    for idle in ["1h 1ns", "0s"] {
        parse_ok(&text.replace(
            "source_idle_timeout: 30s",
            &format!("source_idle_timeout: {idle}"),
        ));
    }
}

#[test]
fn a_blank_recording_path_is_missing() {
    let error = parse_err("collectors:\n  recording:\n    enabled: true\n    path: \"  \"\n");
    assert_eq!(error.key_path, "collectors.recording.path");
    assert_eq!((error.line, error.column), (Some(4), Some(5)));
    assert_eq!(
        error.message,
        "is required when collectors.recording.enabled is true"
    );
}

#[test]
fn the_blast_radius_needs_the_service_graph() {
    let error = parse_err("correlation:\n  service_graph:\n    enabled: false\n");
    assert_eq!(error.key_path, "correlation.blast_radius.enabled");
    assert_eq!(
        error.message,
        "needs correlation.service_graph.enabled (the edges it follows), which is false"
    );
    let both_off =
        "correlation:\n  service_graph:\n    enabled: false\n  blast_radius:\n    enabled: false\n";
    assert!(parse(both_off).is_ok());
}

#[test]
fn a_value_error_on_a_defaulted_key_points_at_its_section() {
    // keep_for is not written: the error names it and points at its enclosing section.
    let error = parse_err("correlation:\n  oom_sequence:\n    within: 1h\n");
    assert_eq!(error.key_path, "correlation.oom_sequence.keep_for");
    assert_eq!((error.line, error.column), (Some(2), Some(3)));
    // path is not written either: the closest written key is `recording`.
    let error = parse_err("collectors:\n  recording:\n    enabled: true\n");
    assert_eq!(error.key_path, "collectors.recording.path");
    assert_eq!(error.line, Some(2));
}

#[test]
fn validate_on_a_value_built_in_code_has_no_location() {
    let mut config = TapioConfig::default();
    config.correlation.ownership.max_depth = 0;
    let Err(error) = config.validate() else {
        panic!("max_depth 0 must be rejected")
    };
    assert_eq!(error.kind, ConfigErrorKind::InvalidValue);
    assert_eq!(error.key_path, "correlation.ownership.max_depth");
    assert_eq!(
        (error.origin.as_str(), error.line, error.column),
        ("", None, None)
    );
    assert_eq!(
        error.to_string(),
        "correlation.ownership.max_depth: must be between 1 and 64, got 0"
    );
}

#[test]
fn syntax_errors_have_a_line_and_column() {
    let cases = [
        ("correlation:\n  engine: [\n", 2),
        ("node_name: \"unterminated\n", 1),
        (
            "correlation:\n  engine:\n    tick: 1s\n   lateness: 2s\n",
            4,
        ),
        ("collectors:\n\trecording: {}\n", 2),
        ("node_name: a\n  : b\n", 2),
        ("a: *nowhere\n", 1),
    ];
    for (text, line) in cases {
        let error = parse_err(text);
        assert_eq!(error.kind, ConfigErrorKind::Syntax, "{text:?}: {error}");
        assert_eq!(error.key_path, "", "{text:?}: {error}");
        assert_eq!(error.line, Some(line), "{text:?}: {error}");
        assert!(error.column.is_some(), "{text:?}: {error}");
        assert!(error.message.starts_with("invalid yaml: "), "{error}");
    }
}

#[test]
fn documents_that_are_not_one_mapping_are_rejected() {
    for (text, line) in [
        ("- a\n- b\n", 1),
        ("just text\n", 1),
        ("node_name: a\n---\nnode_name: b\n", 2),
        ("---\n---\n", 2),
    ] {
        let error = parse_err(text);
        assert_eq!(error.kind, ConfigErrorKind::Syntax, "{text:?}: {error}");
        assert_eq!(error.line, Some(line), "{text:?}: {error}");
    }
}

#[test]
fn duplicate_keys_are_errors() {
    let error = parse_err("node_name: a\nnode_name: b\n");
    assert_eq!(error.kind, ConfigErrorKind::DuplicateKey);
    assert_eq!(error.key_path, "node_name");
    assert_eq!((error.line, error.column), (Some(2), Some(1)));
    assert_eq!(
        error.to_string(),
        "tapio.yaml:2:1: node_name: duplicate key"
    );

    let error =
        parse_err("correlation:\n  engine:\n    tick: 1s\n    lateness: 1s\n    tick: 2s\n");
    assert_eq!(error.kind, ConfigErrorKind::DuplicateKey);
    assert_eq!(error.key_path, "correlation.engine.tick");
    assert_eq!(error.line, Some(5));

    let error = parse_err("correlation:\n  engine: {}\n  engine: {}\n");
    assert_eq!(error.key_path, "correlation.engine");
    assert_eq!(error.line, Some(3));
}

#[test]
fn load_reads_a_file_and_names_its_path() {
    let dir = std::env::temp_dir().join(format!("tapio-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");

    let good = dir.join("good.yaml");
    std::fs::write(&good, "node_name: worker-1\n").expect("write");
    let config = TapioConfig::load(&good).expect("load");
    assert_eq!(config.node_name, "worker-1");

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "node_name: a\n\ncorrelation:\n  engine:\n    worker_count: 0\n",
    )
    .expect("write");
    let error = TapioConfig::load(&bad).expect_err("worker_count 0");
    assert_eq!(error.origin, bad.display().to_string());
    assert_eq!(
        error.to_string(),
        format!(
            "{}:5:5: correlation.engine.worker_count: must be between 1 and 256, got 0",
            bad.display()
        )
    );

    let binary = dir.join("binary.yaml");
    std::fs::write(&binary, b"node_name: a\nnode_name: \xff\xfe\n").expect("write");
    let error = TapioConfig::load(&binary).expect_err("not utf-8");
    assert_eq!(error.kind, ConfigErrorKind::Io);
    assert_eq!((error.line, error.column), (Some(2), Some(12)));

    let missing = dir.join("missing.yaml");
    let error = TapioConfig::load(&missing).expect_err("missing file");
    assert_eq!(error.kind, ConfigErrorKind::Io);
    assert_eq!(
        error.to_string(),
        format!("{}: cannot read file", missing.display())
    );
    assert!(std::error::Error::source(&error).is_some());

    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A tiny deterministic generator, so that the garbage is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_never_panics() {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    // Raw bytes, and bytes drawn from YAML's punctuation, which reach deeper into the parser.
    let alphabet = b" \n\t:-?[]{},#&*!|>'\"%@`~.0123456789abcdefghijklmnopqrstuvwxyz_";
    for round in 0..2_000 {
        let len = (random.next() % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let value = random.next();
                if round % 2 == 0 {
                    value as u8
                } else {
                    alphabet[(value % alphabet.len() as u64) as usize]
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }
    // Mutations of the real file: each error must still render.
    let shipped = SHIPPED.as_bytes();
    for _ in 0..500 {
        let mut bytes = shipped.to_vec();
        for _ in 0..3 {
            let at = (random.next() % bytes.len() as u64) as usize;
            bytes[at] = alphabet[(random.next() % alphabet.len() as u64) as usize];
        }
        if let Err(error) = parse(&String::from_utf8_lossy(&bytes)) {
            assert!(!error.to_string().is_empty());
        }
    }
    for text in [
        "[".repeat(100_000),
        "{".repeat(100_000),
        "- ".repeat(100_000),
        format!("node_name: {}{}", "[".repeat(50_000), "]".repeat(50_000)),
        "a: &a [*a]\n".to_owned(),
        "\u{feff}\u{0}\u{7f}\u{fffd}".to_owned(),
        "correlation:\n  <<: {engine: {worker_count: 0}}\n".to_owned(),
        "? [a, b]\n: c\n".to_owned(),
        "? {a: b}\n: {c: d}\nnode_name: x\n".to_owned(),
        "!!binary aGVsbG8=".to_owned(),
        "node_name: !!binary aGVsbG8=\n".to_owned(),
        "%TAG ! tag:example.com,2000:\n---\nnode_name: !foo x\n".to_owned(),
    ] {
        let _ = parse(&text);
    }
}

/// A user's own sequence, written after the built-ins it keeps.
const ADDED_SEQUENCE: &str = "\
correlation:
  sequences:
    - name: oom_to_endpoint_not_ready
      enabled: false
      within: 2m
      steps:
        - kind: oom_kill
        - kind: container_exit
          on: container
    - name: probe_failure_restart
      within: 5m
      steps:
        - kind: kube_event
          where: {reason: Unhealthy}
        - kind: container_exit
          on: pod
    - name: crash_after_backoff
      within: 1m
      keep_for: 5m
      steps:
        - kind: kube_event
          where: {reason: BackOff, event_type: Warning}
        - kind: container_ready
          on: pod
          where: {ready: false}
";

#[test]
fn a_user_adds_a_sequence_in_yaml() {
    let config = parse_ok(ADDED_SEQUENCE);
    let sequences = &config.correlation.sequences;
    assert_eq!(sequences.len(), 3);
    assert!(!sequences[0].enabled);
    assert!(sequences[1].enabled, "enabled by default");
    assert_eq!(sequences[1].keep_for, Duration::from_secs(600));
    assert_eq!(sequences[2].name, "crash_after_backoff");
    assert_eq!(sequences[2].steps[1].conditions.ready, Some(false));
    assert_eq!(parse_ok(&config.to_yaml()), config);
    // Written with no value, the list is the built-in one; written empty, there is none.
    let builtin = parse_ok("correlation:\n  sequences:\n");
    assert_eq!(
        builtin.correlation.sequences,
        tapio_config::builtin_sequences()
    );
    assert!(
        parse_ok("correlation:\n  sequences: []\n")
            .correlation
            .sequences
            .is_empty()
    );
}

#[test]
fn sequence_errors_name_the_step_and_its_line() {
    let text = ADDED_SEQUENCE.replace(
        "          on: pod\n          where: {ready",
        "          on: podd\n          where: {ready",
    );
    let error = parse_err(&text);
    assert_eq!(error.key_path, "correlation.sequences[2].steps[1].on");
    assert!(
        error
            .message
            .starts_with("unknown entity `podd`; expected one of process, container, pod"),
        "{error}"
    );
    assert_eq!(error.line, lines_of(&text, "on: podd").first().copied());

    let text = ADDED_SEQUENCE.replace("on: container", "on: pod");
    let error = parse_err(&text);
    assert_eq!(error.kind, ConfigErrorKind::InvalidValue);
    assert_eq!(error.key_path, "correlation.sequences[0].steps[1].on");
    assert_eq!(
        error.message,
        "oom_kill is not about a pod; it is about process, container"
    );
    assert_eq!(error.line, lines_of(&text, "on: pod").first().copied());

    let text = ADDED_SEQUENCE.replace("kind: oom_kill", "kind: oom");
    let error = parse_err(&text);
    assert_eq!(error.key_path, "correlation.sequences[0].steps[0].kind");
    assert!(
        error.message.starts_with("unknown observation kind `oom`"),
        "{error}"
    );

    let text = ADDED_SEQUENCE.replace(
        "{reason: BackOff, event_type: Warning}",
        "{reasons: BackOff}",
    );
    let error = parse_err(&text);
    assert_eq!(error.kind, ConfigErrorKind::UnknownKey);
    assert_eq!(
        error.key_path,
        "correlation.sequences[2].steps[0].where.reasons"
    );

    let text = ADDED_SEQUENCE.replace("within: 1m", "within: 1m\n      keep_for: 30s");
    let error = parse_err(&text.replace("      keep_for: 5m\n", ""));
    assert_eq!(error.key_path, "correlation.sequences[2].keep_for");

    let text = ADDED_SEQUENCE.replace("name: crash_after_backoff", "name: probe_failure_restart");
    let error = parse_err(&text);
    assert_eq!(error.key_path, "correlation.sequences[2].name");
    assert!(
        error.message.contains("correlation.sequences[1]"),
        "{error}"
    );
}

#[test]
fn the_documented_example_of_adding_a_sequence_is_valid() {
    let docs = include_str!("../../docs/configuration.md");
    let section = &docs[docs.find("## Declared sequences").expect("the section")..];
    let start = section.find("```yaml\n").expect("a yaml example") + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").expect("its end")];
    let config = parse_ok(example);
    let names: Vec<&str> = config
        .correlation
        .sequences
        .iter()
        .map(|sequence| sequence.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "oom_to_endpoint_not_ready",
            "probe_failure_restart",
            "backoff_then_not_ready"
        ]
    );
    // It keeps the built-ins as they ship.
    assert_eq!(
        config.correlation.sequences[..2],
        tapio_config::builtin_sequences()[..]
    );
}
