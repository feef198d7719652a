//! `tapio`: the composition root. Parses the command line, loads the configuration, and wires
//! sources → dataflow → sinks. Everything else lives in the library crates.

mod api;
mod backtest;
mod health;
mod metrics;
mod outputs;
mod pipeline;
mod query;
mod sources;
mod transport;
mod web;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tapio_config::TapioConfig;
use tapio_dataflow::ClusterLayout;
use tapio_sinks_jsonl::Target;

/// The dataflow allocates and frees many small records per observation; mimalloc keeps that
/// cheaper and less fragmented than the system allocator (measured by the `spine` benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tapio explains why things break in Kubernetes.
///
/// It correlates what the kernel, the container runtime and the control plane report into
/// chains of evidence (an OOM kill → the process exit → the container restart → its pod and
/// Deployment) and keeps them up to date incrementally.
#[derive(Parser, Debug)]
#[command(name = "tapio", version, about, long_about)]
struct Cli {
    /// YAML configuration file; see config/tapio.yaml for every key and its default.
    /// `tapio --config F` alone runs like `tapio run --config F`.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log filter for standard error, e.g. `warn`, `info`, `tapio_dataflow=debug`.
    #[arg(long, global = true, default_value = "info", env = "TAPIO_LOG")]
    log: String,

    /// Serve the HTTP API on this `host:port` instead of api.address (port 0 picks a free
    /// one, which the log names).
    #[arg(long, global = true, value_name = "ADDRESS", env = "TAPIO_API_ADDRESS")]
    api_address: Option<String>,

    /// Name of this node in entity ids, instead of node_name (in a pod: the downward API's
    /// spec.nodeName).
    #[arg(long, global = true, value_name = "NAME", env = "TAPIO_NODE_NAME")]
    node_name: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the enabled collectors, the correlation dataflow and the outputs until stopped.
    Run(RunArgs),
    /// Run a recording through the dataflow, as fast as possible, to backtest.
    Replay(ReplayArgs),
    /// Replay one recording or JetStream range under two configurations and print which
    /// correlations the second adds, removes or alters.
    ///
    /// The baseline is the `--config` file (the built-in defaults without one); the change is
    /// the `--against` file. Both runs read the same input, as `tapio replay` does, and write
    /// nowhere (not to Neo4j either). A correlation is identified by its kind, the declared
    /// sequence's name for declared sequences, its root cause and its first hop (entity and
    /// evidence); per identity the last version that became current counts. The output is a
    /// summary line `added A, removed R, altered L, unchanged U`, the counts per kind, then
    /// each change with its correlation explained (`+ added`, `- removed`, `~ altered` with
    /// the version before and after). The exit code is 0 whatever changed.
    ///
    /// Example: tapio backtest tests/recordings/kspan-rollout-oom.jsonl --config now.yaml
    /// --against tighter.yaml
    Backtest(BacktestArgs),
    /// Record what the enabled collectors observe into a file that `tapio replay` reads.
    Record(RecordArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask a question about the correlations: from Neo4j when integrations.neo4j is in
    /// --config, from the in-memory store of a replayed recording with --recording.
    Query(query::QueryArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration (every key).
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
enum Mode {
    /// Collectors, dataflow and outputs in one process.
    #[default]
    All,
    /// Node agent: collectors only, publishing to NATS JetStream.
    Collectors,
    /// Cluster job: NATS JetStream in, dataflow and outputs.
    Correlation,
}

#[derive(Args, Debug, Default)]
struct ClusterArgs {
    /// Dataflow worker threads in this process [default: correlation.engine.worker_count].
    #[arg(long, short = 'w', value_name = "N")]
    workers: Option<usize>,
    /// Number of cooperating processes (timely cluster mode).
    #[arg(long, default_value_t = 1, value_name = "N")]
    processes: usize,
    /// This process's index, 0-based.
    #[arg(long, default_value_t = 0, value_name = "I")]
    process: usize,
    /// File with one `host:port` per process, in process order (needed with --processes > 1).
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
}

#[derive(Args, Debug, Default)]
struct OutputArgs {
    /// Write JSON lines to FILE (or to standard output with `-`). Without it, one
    /// human-readable line per change goes to standard output.
    #[arg(long, short = 'o', value_name = "PATH|-")]
    output: Option<String>,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// What this process runs.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Stop cleanly after this long (e.g. `30s`, `5m`); otherwise run until SIGINT/SIGTERM.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    run_for: Option<Duration>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// What to replay: a recording file written by `tapio record`, or a JetStream stream,
    /// `nats://HOST:PORT/STREAM` (optionally `?from_seq=N` or `?since=RFC3339` to start at a
    /// stream sequence or store time).
    source: String,
    /// Replay only facts at or after this time (RFC 3339, e.g. 2021-05-19T09:43:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    start: Option<u64>,
    /// Replay only facts before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    end: Option<u64>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Serve the HTTP API (api.address) during the replay and after it, until SIGINT or
    /// SIGTERM: to look at a recorded incident through the API.
    #[arg(long)]
    serve: bool,
}

#[derive(Args, Debug)]
struct BacktestArgs {
    /// What to replay: a recording file written by `tapio record`, or a JetStream stream,
    /// `nats://HOST:PORT/STREAM` (optionally `?from_seq=N` or `?since=RFC3339`), as for
    /// `tapio replay`.
    source: String,
    /// The configuration to compare with the `--config` one: the change being tried.
    #[arg(long, value_name = "FILE")]
    against: PathBuf,
    /// Replay only facts at or after this time (RFC 3339, e.g. 2021-05-19T09:43:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    start: Option<u64>,
    /// Replay only facts before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    end: Option<u64>,
    /// Dataflow worker threads for both runs [default: correlation.engine.worker_count of
    /// `--config`].
    #[arg(long, short = 'w', value_name = "N")]
    workers: Option<usize>,
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// The recording file to write.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// Stop after this long; otherwise record until SIGINT/SIGTERM.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    record_for: Option<Duration>,
}

fn parse_time(text: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|error| format!("`{text}` is not an RFC 3339 time: {error}"))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?;
    u64::try_from(since.as_nanos()).map_err(|_| format!("`{text}` is too far in the future"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, joined by `: `, each said once: a cause whose text the message
/// so far already holds is left out (many libraries repeat their cause in their own message).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let part = next.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = next.source();
    }
    text
}

fn real_main(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    if let Command::Config(ConfigCommand::Check { file }) = &command {
        let mut config = TapioConfig::load(file)?;
        if !config.integrations.neo4j.password.is_empty() {
            // The effective configuration is for reading, not for leaking the secret.
            config.integrations.neo4j.password = tapio_config::Secret::new("<redacted>");
        }
        print!("{}", config.to_yaml());
        eprintln!("{}: valid", file.display());
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => TapioConfig::load(path)?,
        None => TapioConfig::default(),
    };
    if let Some(address) = cli.api_address {
        if address.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "--api-address (or TAPIO_API_ADDRESS) must be an IP address and a port, e.g. \
                 127.0.0.1:7600, got `{address}`"
            );
        }
        config.api.address = address;
    }
    if let Some(name) = cli.node_name.filter(|name| !name.is_empty()) {
        config.node_name = name;
    }
    secrets_from_environment(&mut config, |name| std::env::var(name).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match command {
        Command::Run(args) => match args.mode {
            Mode::All => {
                let layout = layout(&args.cluster, &config)?;
                let sources = sources::enabled_sources(&config)?;
                runtime.block_on(pipeline::correlate(
                    &config,
                    sources,
                    layout,
                    target(&args.output),
                    args.run_for,
                    pipeline::Serve::WhileRunning,
                ))
            }
            Mode::Collectors => {
                let sources = sources::enabled_sources(&config)?;
                runtime.block_on(transport::collect(&config, sources, args.run_for))
            }
            Mode::Correlation => {
                let layout = layout(&args.cluster, &config)?;
                runtime.block_on(transport::correlate(
                    &config,
                    layout,
                    target(&args.output),
                    args.run_for,
                ))
            }
        },
        Command::Replay(args) => {
            let layout = layout(&args.cluster, &config)?;
            let source = replay_input(&args.source, args.start, args.end, &config)?;
            let serve = if args.serve {
                pipeline::Serve::UntilStopped
            } else {
                pipeline::Serve::No
            };
            runtime.block_on(pipeline::correlate(
                &config,
                vec![source],
                layout,
                target(&args.output),
                None,
                serve,
            ))
        }
        Command::Backtest(args) => {
            let against = TapioConfig::load(&args.against)?;
            let cluster = ClusterArgs {
                workers: args.workers,
                ..ClusterArgs::default()
            };
            let layout = layout(&cluster, &config)?;
            let first = backtest::Side {
                origin: cli.config.as_ref().map_or_else(
                    || "the defaults".to_owned(),
                    |path| path.display().to_string(),
                ),
                config: &config,
            };
            let second = backtest::Side {
                origin: args.against.display().to_string(),
                config: &against,
            };
            runtime.block_on(backtest::run(first, second, layout, || {
                replay_input(&args.source, args.start, args.end, &config)
            }))
        }
        Command::Record(args) => {
            let sources = sources::enabled_sources(&config)?;
            runtime.block_on(pipeline::record(
                &config,
                sources,
                &args.output,
                args.record_for,
            ))
        }
        Command::Query(args) => runtime.block_on(query::run(&config, args)),
        Command::Config(_) => Ok(()),
    }
}

/// Takes credentials from the environment and from files, so that they can come from
/// Kubernetes Secrets and never be written into the configuration file: the Neo4j password
/// (`TAPIO_NEO4J_PASSWORD` or `integrations.neo4j.password_file`) and the NATS credentials
/// (`TAPIO_NATS_USER` with `TAPIO_NATS_PASSWORD`, `TAPIO_NATS_TOKEN`, `TAPIO_NATS_NKEY_SEED`,
/// or the `integrations.nats` files). Unset or empty variables change nothing.
fn secrets_from_environment(
    config: &mut TapioConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    config.integrations.neo4j.resolve_password(&var)?;
    config.integrations.nats.resolve_auth(&var)?;
    Ok(())
}

/// The input of `tapio replay` and `tapio backtest`: a JetStream range for a `nats://`
/// address, else a recording file, limited to facts in `[start, end)`.
fn replay_input(
    source: &str,
    start: Option<u64>,
    end: Option<u64>,
    config: &TapioConfig,
) -> Result<Box<dyn tapio_sources::Source>> {
    if source.starts_with("nats://") {
        transport::replay_source(source, start, end, config.integrations.nats.security())
    } else {
        Ok(Box::new(
            tapio_sources_recording::RecordingSource::new(source, 0.0).between(start, end),
        ))
    }
}

fn target(output: &OutputArgs) -> Target {
    match output.output.as_deref() {
        None => Target::StdoutHuman,
        Some("-") => Target::StdoutJson,
        Some(path) => Target::File(path.into()),
    }
}

fn layout(cluster: &ClusterArgs, config: &TapioConfig) -> Result<ClusterLayout> {
    let workers = cluster
        .workers
        .unwrap_or(config.correlation.engine.worker_count);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    if cluster.processes <= 1 {
        return Ok(ClusterLayout::single(workers));
    }
    if cluster.process >= cluster.processes {
        bail!(
            "--process {} is out of range for --processes {}",
            cluster.process,
            cluster.processes
        );
    }
    let hostfile = cluster
        .hostfile
        .as_ref()
        .context("--processes > 1 needs --hostfile with one host:port per process")?;
    let text = std::fs::read_to_string(hostfile)
        .with_context(|| format!("cannot read the hostfile {}", hostfile.display()))?;
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect();
    if addresses.len() < cluster.processes {
        bail!(
            "the hostfile {} lists {} addresses but --processes is {}",
            hostfile.display(),
            addresses.len(),
            cluster.processes
        );
    }
    Ok(ClusterLayout {
        workers,
        processes: cluster.processes,
        process: cluster.process,
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Repeating(std::io::Error);

    impl std::fmt::Display for Repeating {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read the kubeconfig: {}", self.0)
        }
    }

    impl std::error::Error for Repeating {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_is_said_once_even_when_its_error_repeats_it() {
        let error = anyhow::Error::new(Repeating(std::io::Error::other("no such file")))
            .context("source `kubernetes` cannot start");
        assert_eq!(
            error_chain(error.as_ref()),
            "source `kubernetes` cannot start: cannot read the kubeconfig: no such file"
        );
    }
    fn environment(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn secrets_come_from_the_environment_into_the_configuration() {
        let mut config = TapioConfig::default();
        config.integrations.nats.url = "nats://nats.tapio:4222".into();
        secrets_from_environment(
            &mut config,
            environment(&[
                ("TAPIO_NEO4J_PASSWORD", "s3cret"),
                ("TAPIO_NATS_USER", "agent"),
                ("TAPIO_NATS_PASSWORD", "p4ss@word"),
            ]),
        )
        .expect("valid credentials");
        assert_eq!(config.integrations.neo4j.password.expose(), "s3cret");
        assert_eq!(
            config.integrations.nats.auth,
            tapio_config::NatsAuth::UserPassword {
                user: "agent".into(),
                password: tapio_config::Secret::new("p4ss@word"),
            }
        );
        // The URL carries no credentials, so printing it leaks none.
        assert_eq!(config.integrations.nats.url, "nats://nats.tapio:4222");
        let unchanged = TapioConfig::default();
        let mut config = TapioConfig::default();
        secrets_from_environment(&mut config, environment(&[("TAPIO_NEO4J_PASSWORD", "")]))
            .expect("empty variables change nothing");
        assert_eq!(config, unchanged);
    }

    #[test]
    fn incomplete_nats_credentials_are_refused() {
        let mut config = TapioConfig::default();
        config.integrations.nats.url = "nats://nats:4222".into();
        let error = secrets_from_environment(
            &mut config.clone(),
            environment(&[("TAPIO_NATS_USER", "agent")]),
        )
        .expect_err("a user without a password");
        assert!(error.to_string().contains("TAPIO_NATS_PASSWORD"), "{error}");
    }
}
