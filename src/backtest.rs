//! `tapio backtest`: replays one input under two configurations and prints which correlations
//! the change adds, removes or alters.
//!
//! A correlation's identity is what names the incident regardless of how a rule words or
//! refines it: its kind, the declared sequence's name for declared sequences, its root cause,
//! and its first hop (entity and observation). Each run keeps, per identity, the last version
//! that became current; an identity found only under the second configuration is *added*,
//! only under the first *removed*, under both with different data (another chain, detail or
//! confidence) *altered*.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Result;
use tapio_config::TapioConfig;
use tapio_dataflow::ClusterLayout;
use tapio_model::render::explain;
use tapio_model::{ClosedBatch, Correlation, CorrelationKind, Detail, EntityId, FactId};

use crate::pipeline;

/// What names an incident across two runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Identity {
    kind: CorrelationKind,
    /// The declared sequence's name; empty for every other kind.
    name: String,
    root_cause: EntityId,
    first_entity: Option<EntityId>,
    first_fact: Option<FactId>,
}

impl Identity {
    pub(crate) fn of(correlation: &Correlation) -> Identity {
        let name = match &correlation.detail {
            Detail::DeclaredSequence { name, .. } => name.to_string(),
            _ => String::new(),
        };
        let first = correlation.chain.first();
        Identity {
            kind: correlation.kind,
            name,
            root_cause: correlation.root_cause.clone(),
            first_entity: first.map(|hop| hop.entity.clone()),
            first_fact: first.map(|hop| hop.fact_id.clone()),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind.as_str())?;
        if !self.name.is_empty() {
            write!(f, " {}", self.name)?;
        }
        write!(f, " at {}", self.root_cause)?;
        if let Some(fact) = &self.first_fact {
            write!(f, " (first evidence {fact})")?;
        }
        Ok(())
    }
}

/// Per identity, the last version of the correlation that became current in a run.
pub(crate) fn incidents(batches: &[ClosedBatch]) -> BTreeMap<Identity, Correlation> {
    let mut last = BTreeMap::new();
    for batch in batches {
        for (correlation, diff) in &batch.changes {
            if *diff > 0 {
                last.insert(Identity::of(correlation), correlation.clone());
            }
        }
    }
    last
}

/// What changed between two runs.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub(crate) added: Vec<(Identity, Correlation)>,
    pub(crate) removed: Vec<(Identity, Correlation)>,
    pub(crate) altered: Vec<(Identity, Correlation, Correlation)>,
    pub(crate) unchanged: usize,
}

/// Compares the incidents of the run under the first configuration with the second's.
pub(crate) fn compare(
    before: BTreeMap<Identity, Correlation>,
    mut after: BTreeMap<Identity, Correlation>,
) -> Comparison {
    let mut comparison = Comparison::default();
    for (identity, old) in before {
        match after.remove(&identity) {
            None => comparison.removed.push((identity, old)),
            Some(new) if new == old => comparison.unchanged += 1,
            Some(new) => comparison.altered.push((identity, old, new)),
        }
    }
    comparison.added = after.into_iter().collect();
    comparison
}

impl Comparison {
    /// The report printed on standard output: a summary line with counts per change, then one
    /// entry per change with its correlation explained.
    pub(crate) fn render(&self, first: &str, second: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "added {}, removed {}, altered {}, unchanged {} (from {first} to {second})",
            self.added.len(),
            self.removed.len(),
            self.altered.len(),
            self.unchanged
        );
        let mut per_kind: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (change, identity) in self
            .added
            .iter()
            .map(|(identity, _)| ("added", identity))
            .chain(
                self.removed
                    .iter()
                    .map(|(identity, _)| ("removed", identity)),
            )
            .chain(
                self.altered
                    .iter()
                    .map(|(identity, _, _)| ("altered", identity)),
            )
        {
            *per_kind
                .entry((change, identity.kind.as_str()))
                .or_insert(0) += 1;
        }
        for ((change, kind), count) in &per_kind {
            let _ = writeln!(out, "  {change} {kind}: {count}");
        }
        for (identity, correlation) in &self.added {
            let _ = writeln!(out, "+ added {identity}\n    {}", explain(correlation));
        }
        for (identity, correlation) in &self.removed {
            let _ = writeln!(out, "- removed {identity}\n    {}", explain(correlation));
        }
        for (identity, old, new) in &self.altered {
            let _ = writeln!(
                out,
                "~ altered {identity}\n    was: {}\n    now: {}",
                explain(old),
                explain(new)
            );
        }
        out
    }
}

/// One side of a backtest: a configuration and where it came from.
pub(crate) struct Side<'a> {
    /// The configuration file's path, or `the defaults`.
    pub(crate) origin: String,
    /// The configuration.
    pub(crate) config: &'a TapioConfig,
}

/// Replays the input `make_source` opens once under each configuration (in turn, the same
/// input each time) and prints what the second changes.
pub(crate) async fn run(
    first: Side<'_>,
    second: Side<'_>,
    layout: ClusterLayout,
    mut make_source: impl FnMut() -> Result<Box<dyn tapio_sources::Source>>,
) -> Result<()> {
    let mut runs = Vec::new();
    for side in [&first, &second] {
        // A backtest only reads: results go nowhere but into the comparison.
        let mut config = side.config.clone();
        config.integrations.neo4j.uri.clear();
        tracing::info!(config = %side.origin, "Replaying.");
        let batches =
            pipeline::correlate_in_memory(&config, vec![make_source()?], layout.clone()).await?;
        runs.push(incidents(&batches));
    }
    let second_run = runs.pop().unwrap_or_default();
    let first_run = runs.pop().unwrap_or_default();
    let comparison = compare(first_run, second_run);
    print!("{}", comparison.render(&first.origin, &second.origin));
    Ok(())
}

#[cfg(test)]
mod tests {
    use tapio_model::{Basis, Confidence, Hop, Observed, Relation};

    use super::*;

    fn correlation(kind: CorrelationKind, root: &str, seq: u64, percent: u8) -> Correlation {
        let hop = Hop {
            entity: root.parse().expect("entity"),
            relation: Relation::Start,
            fact_id: FactId::new("kernel", "n", seq),
            time: 1,
            observed: Observed::OwnerReference,
        };
        Correlation::new(
            kind,
            root.parse().expect("entity"),
            vec![hop],
            Detail::Ownership { depth: 0 },
            Confidence {
                percent,
                basis: vec![Basis::RecordedLinks],
            },
        )
    }

    fn batch(changes: Vec<(Correlation, i64)>) -> ClosedBatch {
        ClosedBatch { time: 1, changes }
    }

    #[test]
    fn identities_split_into_added_removed_altered_and_unchanged() {
        let kept = correlation(CorrelationKind::Ownership, "pod/a/p", 1, 100);
        let gone = correlation(CorrelationKind::OomRestart, "pod/a/q", 2, 95);
        let before_version = correlation(CorrelationKind::OomRestart, "pod/a/r", 3, 75);
        let after_version = correlation(CorrelationKind::OomRestart, "pod/a/r", 3, 95);
        let new = correlation(CorrelationKind::OomRestart, "pod/a/s", 4, 95);
        // A version that was retracted and replaced counts by its last version.
        let first = incidents(&[
            batch(vec![(kept.clone(), 1), (gone.clone(), 1)]),
            batch(vec![(after_version.clone(), 1)]),
            batch(vec![
                (after_version.clone(), -1),
                (before_version.clone(), 1),
            ]),
        ]);
        let second = incidents(&[batch(vec![
            (kept.clone(), 1),
            (after_version.clone(), 1),
            (new.clone(), 1),
        ])]);
        let comparison = compare(first, second);
        assert_eq!(comparison.unchanged, 1);
        assert_eq!(comparison.removed.len(), 1);
        assert_eq!(comparison.removed[0].1, gone);
        assert_eq!(comparison.added.len(), 1);
        assert_eq!(comparison.added[0].1, new);
        assert_eq!(comparison.altered.len(), 1);
        assert_eq!(comparison.altered[0].1, before_version);
        assert_eq!(comparison.altered[0].2, after_version);
        let text = comparison.render("a.yaml", "b.yaml");
        assert!(
            text.starts_with("added 1, removed 1, altered 1, unchanged 1 (from a.yaml to b.yaml)"),
            "{text}"
        );
        assert!(text.contains("\n  removed oom_restart: 1\n"), "{text}");
        assert!(
            text.contains("- removed oom_restart at pod/a/q (first evidence kernel/n/2)"),
            "{text}"
        );
    }

    #[test]
    fn the_same_runs_compare_equal() {
        let runs = [batch(vec![(
            correlation(CorrelationKind::Ownership, "pod/a/p", 1, 100),
            1,
        )])];
        let comparison = compare(incidents(&runs), incidents(&runs));
        assert_eq!(
            (
                comparison.added.len(),
                comparison.removed.len(),
                comparison.altered.len(),
                comparison.unchanged
            ),
            (0, 0, 0, 1)
        );
    }
}
