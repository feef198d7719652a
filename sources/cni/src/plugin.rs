//! The `tapio-cni` plugin: what the container runtime runs for each CNI operation.
//!
//! Two modes, chosen by its network configuration:
//!
//! - **wrap** (the configuration has a `plugins` list): `tapio-cni` is the one plugin of the
//!   runtime's configuration list and runs the listed plugins itself, as the runtime would
//!   have run them: ADD and CHECK in order, DEL in reverse order, each with the list's `name`
//!   and `cniVersion`, ADD passing each plugin's result to the next as `prevResult`, CHECK and
//!   DEL passing the runtime's `prevResult`, each plugin's declared `capabilities` taken from
//!   the runtime's `runtimeConfig`; the first failure ends the operation. Its output and exit
//!   status are the chain's, byte for byte. It reports every operation, failed or not, with
//!   its duration and, on failure, the failing plugin and its error.
//! - **chained** (no `plugins` list): `tapio-cni` is the last plugin of the runtime's list.
//!   It reports the `prevResult` it is given and writes it back unchanged. A chained plugin
//!   runs only when every plugin before it succeeded, so this mode sees no failures and no
//!   durations.
//!
//! Reporting never changes the outcome: the report is one datagram sent to the agent's
//! socket with a short timeout (`report_timeout_ms`, 100 ms by default); when the agent is
//! down, slow or gone, the datagram is dropped and a line goes to standard error.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::report::{REPORT_VERSION, Report, ReportedError};

/// Where reports go when the configuration names no `socket`.
pub const DEFAULT_SOCKET: &str = "/run/tapio/cni.sock";

/// How long a report may wait for room in the agent's socket when the configuration gives no
/// `report_timeout_ms`.
pub const DEFAULT_REPORT_TIMEOUT: Duration = Duration::from_millis(100);

/// The CNI versions this plugin speaks (it passes results through, so every one).
const SUPPORTED_VERSIONS: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`: where plugins are found.
    pub path: String,
}

impl Environment {
    /// Reads the process's environment.
    pub fn from_process() -> Environment {
        let get = |name: &str| std::env::var(name).unwrap_or_default();
        Environment {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }
}

/// What the plugin answers the runtime, and what it reports.
#[derive(Debug)]
pub struct Outcome {
    /// Written to standard output.
    pub stdout: Vec<u8>,
    /// The exit status.
    pub status: i32,
    /// The report to send, if the operation is about a pod.
    pub report: Option<Report>,
    /// Where to send it.
    pub socket: PathBuf,
    /// How long sending may wait.
    pub timeout: Duration,
}

/// The parts of the configuration the plugin reads besides the plugin list.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "prevResult", borrow, default)]
    prev_result: Option<&'a RawValue>,
}

/// A CNI error as a plugin writes it.
fn error_output(version: &str, code: u32, message: &str) -> Vec<u8> {
    let mut out = serde_json::to_vec(&serde_json::json!({
        "cniVersion": version,
        "code": code,
        "msg": message,
    }))
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// Runs one invocation: `stdin` is the network configuration the runtime wrote.
pub fn run(stdin: &[u8], env: &Environment) -> Outcome {
    let started = Instant::now();
    let config: Option<Map<String, Value>> = serde_json::from_slice(stdin).ok();
    let text = |config: &Option<Map<String, Value>>, key: &str| {
        config
            .as_ref()
            .and_then(|config| config.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let version = text(&config, "cniVersion").unwrap_or_else(|| "1.0.0".into());
    let socket =
        text(&config, "socket").map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let timeout = config
        .as_ref()
        .and_then(|config| config.get("report_timeout_ms"))
        .and_then(Value::as_u64)
        .map_or(DEFAULT_REPORT_TIMEOUT, |ms| {
            Duration::from_millis(ms.clamp(1, 5_000))
        });
    let mut outcome = Outcome {
        stdout: Vec::new(),
        status: 0,
        report: None,
        socket,
        timeout,
    };
    if env.command == "VERSION" {
        outcome.stdout = serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        }))
        .unwrap_or_default();
        return outcome;
    }
    let Some(config) = config else {
        outcome.stdout = error_output(
            &version,
            6,
            "tapio-cni: the network configuration on standard input is not a JSON object",
        );
        outcome.status = 1;
        return outcome;
    };
    if env.command.is_empty() {
        outcome.stdout = error_output(&version, 4, "tapio-cni: CNI_COMMAND is not set");
        outcome.status = 1;
        return outcome;
    }
    let prev_result = serde_json::from_slice::<Raw<'_>>(stdin)
        .ok()
        .and_then(|raw| raw.prev_result);
    let network = config
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (result, error, duration_ns) = match config.get("plugins") {
        Some(plugins) => {
            let (stdout, status, result, error) =
                wrap(&config, plugins, prev_result, env, &version);
            outcome.stdout = stdout;
            outcome.status = status;
            let duration_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            (result, error, duration_ns)
        }
        None => {
            // Chained: only ADD answers, with the previous result unchanged.
            if env.command == "ADD" {
                outcome.stdout = match prev_result {
                    Some(raw) => raw.get().as_bytes().to_vec(),
                    None => serde_json::to_vec(&serde_json::json!({"cniVersion": version}))
                        .unwrap_or_default(),
                };
            }
            let result = prev_result.and_then(|raw| serde_json::from_str(raw.get()).ok());
            (result, None, 0)
        }
    };
    if matches!(env.command.as_str(), "ADD" | "DEL" | "CHECK") {
        outcome.report = Some(Report {
            version: REPORT_VERSION,
            command: env.command.clone(),
            network,
            container_id: env.container_id.clone(),
            netns: env.netns.clone(),
            ifname: env.ifname.clone(),
            args: env.args.clone(),
            ended_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
                }),
            duration_ns,
            result,
            error,
        });
    }
    outcome
}

/// The wrap mode: runs the listed plugins. Returns the output and exit status, the result
/// and the error to report.
fn wrap(
    config: &Map<String, Value>,
    plugins: &Value,
    prev_result: Option<&RawValue>,
    env: &Environment,
    version: &str,
) -> (Vec<u8>, i32, Option<Value>, Option<ReportedError>) {
    let fail = |code: u32, plugin: &str, message: String| {
        let stdout = error_output(version, code, &message);
        let error = ReportedError {
            plugin: plugin.to_string(),
            code,
            message,
            details: String::new(),
        };
        (stdout, 1, None, Some(error))
    };
    let Some(plugins) = plugins.as_array().filter(|list| !list.is_empty()) else {
        return fail(
            7,
            "tapio-cni",
            "tapio-cni: `plugins` must be a non-empty list of plugin configurations".into(),
        );
    };
    let given: Option<Value> = prev_result.and_then(|raw| serde_json::from_str(raw.get()).ok());
    let order: Vec<&Value> = if env.command == "DEL" {
        plugins.iter().rev().collect()
    } else {
        plugins.iter().collect()
    };
    let mut previous = given.clone();
    let mut last_stdout = Vec::new();
    for plugin in order {
        let Some(plugin) = plugin.as_object() else {
            return fail(
                7,
                "tapio-cni",
                "tapio-cni: every entry of `plugins` must be an object".into(),
            );
        };
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(binary) = find_plugin(kind, &env.path) else {
            return fail(
                7,
                kind,
                format!(
                    "tapio-cni: plugin `{kind}` not found in CNI_PATH `{}`",
                    env.path
                ),
            );
        };
        let mut conf = plugin.clone();
        conf.insert("cniVersion".into(), Value::String(version.into()));
        if let Some(name) = config.get("name") {
            conf.insert("name".into(), name.clone());
        }
        conf.remove("prevResult");
        let passed = if env.command == "ADD" {
            previous.as_ref()
        } else {
            given.as_ref()
        };
        if let Some(result) = passed {
            conf.insert("prevResult".into(), result.clone());
        }
        conf.remove("runtimeConfig");
        if let (Some(Value::Object(runtime)), Some(Value::Object(capabilities))) =
            (config.get("runtimeConfig"), plugin.get("capabilities"))
        {
            let wanted: Map<String, Value> = runtime
                .iter()
                .filter(|(key, _)| capabilities.get(*key) == Some(&Value::Bool(true)))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            if !wanted.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(wanted));
            }
        }
        let input = serde_json::to_vec(&conf).unwrap_or_default();
        let (stdout, status) = match execute(&binary, &input) {
            Ok(done) => done,
            Err(error) => {
                return fail(
                    7,
                    kind,
                    format!("tapio-cni: cannot run plugin {}: {error}", binary.display()),
                );
            }
        };
        if status != 0 {
            let error = plugin_error(kind, &stdout);
            return (stdout, status, None, Some(error));
        }
        if env.command == "ADD" {
            match serde_json::from_slice::<Value>(&stdout) {
                Ok(result) => previous = Some(result),
                Err(error) => {
                    return fail(
                        999,
                        kind,
                        format!(
                            "tapio-cni: plugin `{kind}` wrote a result that is not JSON: {error}"
                        ),
                    );
                }
            }
        }
        last_stdout = stdout;
    }
    let result = if env.command == "ADD" {
        previous
    } else {
        given
    };
    (last_stdout, 0, result, None)
}

/// The error a failed plugin wrote: a CNI error object, or its raw output.
fn plugin_error(kind: &str, stdout: &[u8]) -> ReportedError {
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(stdout).ok();
    let field = |key: &str| {
        parsed
            .as_ref()
            .and_then(|error| error.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let message = field("msg");
    ReportedError {
        plugin: kind.to_string(),
        code: parsed
            .as_ref()
            .and_then(|error| error.get("code"))
            .and_then(Value::as_u64)
            .and_then(|code| u32::try_from(code).ok())
            .unwrap_or(0),
        message: if message.is_empty() {
            String::from_utf8_lossy(stdout).trim().to_string()
        } else {
            message
        },
        details: field("details"),
    }
}

/// The executable `kind` names in the `:`-separated `path`; a name with a `/` names none.
fn find_plugin(kind: &str, path: &str) -> Option<PathBuf> {
    if kind.is_empty() || kind.contains('/') {
        return None;
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(kind))
        .find(|candidate| candidate.is_file())
}

/// Runs a plugin with `input` on its standard input and this process's environment; returns
/// its output and exit status (1 when a signal ended it).
fn execute(binary: &Path, input: &[u8]) -> std::io::Result<(Vec<u8>, i32)> {
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    // Written from another thread, so that a plugin writing before it has read everything
    // cannot block both sides.
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(&input);
        }
    });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    Ok((output.stdout, output.status.code().unwrap_or(1)))
}

/// Sends `report` to `socket`, waiting at most `timeout` for room.
///
/// # Errors
/// The socket is missing, nobody listens, it stayed full for `timeout`, or the report is
/// larger than a datagram may be.
pub fn send(report: &Report, socket: &Path, timeout: Duration) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(report)?;
    let sender = UnixDatagram::unbound()?;
    sender.set_write_timeout(Some(timeout))?;
    sender.send_to(&bytes, socket)?;
    Ok(())
}
