//! `tapio query …`: the question catalog (`tapio-queries`) on the command line, answered from
//! Neo4j when `integrations.neo4j` is configured, else from the in-memory store: the one a
//! recording given with `--recording` is replayed into.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tapio_config::TapioConfig;
use tapio_model::EntityId;
use tapio_sinks_store::{Store, StoreSettings};

/// `tapio query` arguments.
#[derive(Args, Debug)]
pub(crate) struct QueryArgs {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Replay this recording into the in-memory store and answer from it, with no service
    /// running (Neo4j, if configured, is then not asked).
    #[arg(long, global = true, value_name = "FILE")]
    recording: Option<PathBuf>,
    #[command(subcommand)]
    question: Question,
}

#[derive(Subcommand, Debug)]
enum Question {
    /// Root-cause chains through ENTITY, with the evidence of every hop.
    Why {
        /// Entity id, e.g. pod/default/web-1 (see the README's entity ids).
        entity: String,
    },
    /// What ENTITY takes down with it: what it caused, what runs inside it, the owners of what
    /// it affected, what its failure reached along the service graph, and what depends on it.
    BlastRadius {
        /// Entity id.
        entity: String,
    },
    /// Every fact about ENTITY and what it owns, oldest first.
    Timeline {
        /// Entity id.
        entity: String,
        /// Only facts at or after this time: RFC 3339 (2021-05-19T09:43:00Z) or a duration
        /// back from now (10m, 2h).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// The shortest chain of ownership, causal and dependency relationships between two
    /// entities.
    Path {
        /// First entity id.
        from: String,
        /// Second entity id.
        to: String,
    },
}

fn entity(text: &str) -> Result<EntityId> {
    text.parse::<EntityId>()
        .with_context(|| format!("`{text}` is not an entity id (e.g. pod/<namespace>/<name>)"))
}

fn since(text: &str) -> Result<u64> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let since = time
            .duration_since(std::time::UNIX_EPOCH)
            .with_context(|| format!("`{text}` is before 1970"))?;
        return u64::try_from(since.as_nanos()).context("--since is too far in the future");
    }
    let Ok(back) = humantime::parse_duration(text) else {
        bail!("--since `{text}` is neither an RFC 3339 time nor a duration such as 10m");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(u64::try_from(now.saturating_sub(back).as_nanos()).unwrap_or(u64::MAX))
}

/// Answers one question from the Neo4j in `config`, or from the store a recording is replayed
/// into, and prints it.
pub(crate) async fn run(config: &TapioConfig, args: QueryArgs) -> Result<()> {
    // Parse the arguments before connecting, so a typo fails fast.
    enum Parsed {
        Why(EntityId),
        BlastRadius(EntityId),
        Timeline(EntityId, Option<u64>),
        Path(EntityId, EntityId),
    }
    let parsed = match &args.question {
        Question::Why { entity: e } => Parsed::Why(entity(e)?),
        Question::BlastRadius { entity: e } => Parsed::BlastRadius(entity(e)?),
        Question::Timeline {
            entity: e,
            since: s,
        } => Parsed::Timeline(entity(e)?, s.as_deref().map(since).transpose()?),
        Question::Path { from, to } => Parsed::Path(entity(from)?, entity(to)?),
    };
    let answer = if let Some(recording) = &args.recording {
        let store = replayed(config, recording).await?;
        let state = store.read();
        use tapio_queries::memory;
        match parsed {
            Parsed::Why(e) => memory::why(&state, &e)?,
            Parsed::BlastRadius(e) => memory::blast_radius(&state, &e)?,
            Parsed::Timeline(e, s) => memory::timeline(&state, &e, s)?,
            Parsed::Path(a, b) => memory::path(&state, &a, &b)?,
        }
    } else {
        let graph = tapio_queries::connect(&config.integrations.neo4j).await?;
        match parsed {
            Parsed::Why(e) => tapio_queries::why(&graph, &e).await?,
            Parsed::BlastRadius(e) => tapio_queries::blast_radius(&graph, &e).await?,
            Parsed::Timeline(e, s) => tapio_queries::timeline(&graph, &e, s).await?,
            Parsed::Path(a, b) => tapio_queries::path(&graph, &a, &b).await?,
        }
    };
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&answer).context("cannot encode the answer")?;
        json.push('\n');
        json
    } else {
        answer.to_table()
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the answer to standard output")
}

/// The store after replaying `recording` through the dataflow of `config`.
async fn replayed(config: &TapioConfig, recording: &std::path::Path) -> Result<Store> {
    if !recording.is_file() {
        bail!(
            "the recording {} is not a readable file",
            recording.display()
        );
    }
    let source = tapio_sources_recording::RecordingSource::new(recording, 0.0);
    let layout = tapio_dataflow::ClusterLayout::single(config.correlation.engine.worker_count);
    let batches =
        crate::pipeline::correlate_in_memory(config, vec![Box::new(source)], layout).await?;
    let store = Store::new(StoreSettings::from_config(&config.store));
    for batch in batches {
        store.apply(batch);
    }
    Ok(store)
}
