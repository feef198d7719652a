//! The configuration change rule, run with the co-occurrence rule it builds on, against a
//! recomputation from scratch at every tick: the co-occurrence test's random container exits on
//! two nodes, plus file changes shortly before some of them, on the same node or the other,
//! under a configuration path or not, by a host process or inside a container; facts out of
//! order within the lateness bound and a few beyond it. Then the named cases and look-alikes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, CorrelationKind, Detail, Fact, FactId, FactPayload, FileChanged, FileOp, Observation,
    ProcessRef, Relation, TimeNs,
};

use super::{Change, change, correlation};
use crate::clock::Tick;
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, arrival_with_late_facts, assert_every_tick, heartbeats,
    same_for_any_order_and_two_workers,
};
use crate::rules::co_occurrence::tests::{
    KEEP_FOR, LATENESS, Naive, SECOND, WITHIN as CO_WITHIN, config as co_config, exit, sorted,
    stream as exits,
};
use crate::rules::{MakeRule, co_occurrence, config_change};

/// The bound of this rule.
const WITHIN: TimeNs = 3_000 * MS;
const RULES: &[MakeRule] = &[co_occurrence::from_config, config_change::from_config];
const PATHS: [&str; 2] = ["/etc/**", "/srv/*/conf"];

fn config() -> CorrelationConfig {
    let mut config = co_config();
    config.config_change.within = Duration::from_nanos(WITHIN);
    config.config_change.paths = PATHS.iter().map(|glob| glob.to_string()).collect();
    config
}

fn harness() -> RuleHarness {
    RuleHarness::from_tables(RULES, &config()).expect("both enabled")
}

/// A file change on `node` at `at` by process `pid`: a rename onto `path`, or (with
/// `unlink`) its removal; in container `container` when given.
fn file_change(
    seq: u64,
    node: &str,
    at: TimeNs,
    path: &str,
    unlink: bool,
    container: Option<&str>,
) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", node, seq),
        time_ns: at,
        payload: FactPayload::FileChanged(FileChanged {
            process: ProcessRef {
                pid: 400 + u32::try_from(seq % 7).expect("small"),
                start_ns: T0,
                comm: "deploy".into(),
            },
            op: if unlink {
                FileOp::Unlink
            } else {
                FileOp::Rename
            },
            path: if unlink {
                path.to_string()
            } else {
                format!("{path}.new")
            },
            new_path: (!unlink).then(|| path.to_string()),
            count: 1,
            container_id: container.map(Arc::from),
        }),
    })
}

/// The co-occurrence test's random exits, plus a file change up to 4 s before some of them:
/// on the exit's node or the other, under a configuration path or not, on the host or (one in
/// five) in a container.
fn stream(rng: &mut Rng) -> Vec<Observation> {
    let mut out = exits(rng);
    let times: Vec<(TimeNs, Arc<str>)> = out
        .iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) => Some((fact.time_ns, Arc::clone(&fact.id.node))),
            _ => None,
        })
        .collect();
    let paths = [
        "/etc/app.yaml",
        "/etc/x/y.conf",
        "/srv/a/conf",
        "/tmp/app.yaml",
        "app.yaml",
    ];
    for seq in 0..12 {
        let (at, node) = &times[rng.below(times.len() as u64) as usize];
        let node = match rng.below(4) {
            0 if &**node == "n1" => "n2",
            0 => "n1",
            _ => node,
        };
        let at = at.saturating_sub(rng.below(16) * 250 * MS).max(T0);
        let path = paths[rng.below(paths.len() as u64) as usize];
        let container = (rng.below(5) == 0).then_some("c-app");
        out.push(file_change(
            1000 + seq,
            node,
            at,
            path,
            rng.below(3) == 0,
            container,
        ));
    }
    out.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    out
}

/// From scratch, at `tick`: the co-occurrences a fold from scratch holds then, and each with the
/// latest configuration change on its node that entered by then and is still retained, at or
/// before its first exit and within the bound.
fn naive(
    co: &mut Naive<'_>,
    arrived: &[Observation],
    entered: &[Option<Tick>],
    retain_ms: u64,
    tick: Tick,
) -> BTreeMap<tapio_model::Correlation, i64> {
    let clock = harness().clock();
    let paths: Vec<String> = PATHS.iter().map(|glob| glob.to_string()).collect();
    let changes: Vec<(Arc<str>, Change)> = arrived
        .iter()
        .zip(entered)
        .filter_map(|(observation, at)| match (observation, at) {
            (Observation::Fact(fact), Some(at)) if *at <= tick => change(&paths, fact),
            _ => None,
        })
        .filter(|(_, change)| tick < clock.tick_of(change.evidence.time) + retain_ms)
        .collect();
    // The harness collects the co-occurrence rule's output too.
    let restarts = co.at(tick);
    let mut out = restarts.clone();
    for (restart, count) in restarts {
        assert_eq!(count, 1);
        let tapio_model::EntityId::Node { name } = &restart.root_cause else {
            panic!("a co-occurrence roots at its node");
        };
        let first = restart.chain[0].time;
        let latest = changes
            .iter()
            .filter(|(node, change)| {
                node == name
                    && change.evidence.time <= first
                    && first - change.evidence.time <= WITHIN
            })
            .map(|(_, change)| change)
            .max();
        if let Some(change) = latest {
            *out.entry(correlation(&restart, change, WITHIN))
                .or_insert(0) += 1;
        }
    }
    out
}

/// How long the rule keeps a change, ms, as it derives it from the configuration.
fn retain_ms() -> u64 {
    (WITHIN + CO_WITHIN + KEEP_FOR) / MS + 100
}

/// At every closed tick, the rule holds exactly what a recomputation from scratch finds over
/// the exits and file changes that entered by then.
#[test]
fn config_changes_equal_a_recomputation_from_scratch_at_every_tick() {
    let (mut found, mut retracted, mut late, mut replaced) = (0, 0, 0, 0);
    for seed in 1..=12 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let arrived = arrival_with_late_facts(&stream, &mut rng, LATENESS);
        let harness = harness();
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        late += run.report.late;
        let mut co = Naive::new(&arrived, &run.entered, clock);
        let seen = assert_every_tick(
            &run,
            clock,
            |tick| naive(&mut co, &arrived, &run.entered, retain_ms(), tick),
            &format!("seed {seed}"),
        );
        retracted += seen.retracted;
        found += run
            .changes()
            .filter(|(_, diff, correlation)| {
                *diff > 0 && correlation.kind == CorrelationKind::ConfigChangeRestart
            })
            .count();
        // A later change took an earlier one's place, or the restart grew.
        replaced += run
            .batches
            .iter()
            .filter(|batch| {
                batch.changes.iter().any(|(_, diff)| *diff > 0)
                    && batch.changes.iter().any(|(_, diff)| *diff < 0)
            })
            .count();
    }
    assert!(
        found > 10 && retracted > 5 && late > 3 && replaced > 0,
        "{found} {retracted} {late} {replaced}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the
/// number of workers.
#[test]
fn config_changes_do_not_depend_on_arrival_order_or_workers() {
    for seed in 41..=45 {
        let mut rng = Rng::new(seed);
        let stream = stream(&mut rng);
        let in_order = harness().run(stream.clone()).expect("run");
        assert!(in_order.changes().count() > 0, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(LATENESS));
        same_for_any_order_and_two_workers(&harness(), shuffled, &in_order, seed);
    }
}

/// Three pods' containers end on n1 from 1.5 s after the first changes, plus `extra`.
fn incident(extra: Vec<Observation>) -> Vec<tapio_model::Correlation> {
    let mut facts = vec![
        exit(1, "n1", T0 + 2 * SECOND, "pod/a/p0"),
        exit(2, "n1", T0 + 2_200 * MS, "pod/b/p1"),
        exit(3, "n1", T0 + 2_500 * MS, "pod/c/p2"),
    ];
    facts.extend(extra);
    let mut stream = sorted(facts, T0 + 6 * SECOND);
    stream.extend(heartbeats(T0 + 6 * SECOND, T0 + 7 * SECOND, 500 * MS));
    let run = harness().run(stream).expect("run");
    run.held_at((T0 + 5 * SECOND) / MS)
        .into_keys()
        .filter(|correlation| correlation.kind == CorrelationKind::ConfigChangeRestart)
        .collect()
}

#[test]
fn a_configuration_change_before_a_node_wide_restart_is_its_root() {
    let found = incident(vec![
        file_change(10, "n1", T0 + 100 * MS, "/etc/app.yaml", false, None),
        file_change(11, "n1", T0 + 500 * MS, "/srv/shop/conf", true, None),
    ]);
    assert_eq!(found.len(), 1, "{found:#?}");
    let correlation = &found[0];
    let hops: Vec<(String, Relation, u64)> = correlation
        .chain
        .iter()
        .map(|hop| (hop.entity.to_string(), hop.relation, hop.fact_id.seq))
        .collect();
    let process = format!("process/n1/{}/{T0}", 400 + 11 % 7);
    // The latest change before the restart: the removal at 0.5 s.
    assert_eq!(
        hops,
        vec![
            (process.clone(), Relation::Start, 11),
            ("node/n1".into(), Relation::Caused, 1),
            ("pod/a/p0".into(), Relation::Caused, 1),
            ("pod/b/p1".into(), Relation::FollowedBy, 2),
            ("pod/c/p2".into(), Relation::FollowedBy, 3),
        ]
    );
    assert_eq!(correlation.root_cause.to_string(), process);
    assert_eq!(
        correlation.detail,
        Detail::ConfigChange {
            path: "/srv/shop/conf".into(),
            pods: 3,
            gap_ns: 1_500 * MS,
            within_ns: WITHIN,
        }
    );
    assert_eq!(
        correlation.confidence.basis,
        vec![Basis::PodsEndedTogether, Basis::ConfigChangedBefore]
    );
    assert_eq!(correlation.confidence.percent, 65);
    assert_eq!(
        tapio_model::render::explain(correlation),
        format!(
            "{process} changed /srv/shop/conf, and 1 s later containers of 3 pods on node/n1 \
             ended together: pod/a/p0 → pod/b/p1 → pod/c/p2"
        )
    );
}

#[test]
fn look_alikes_of_a_configuration_change_are_not_linked() {
    // Not a configuration path; a relative path; on another node; inside a container; after
    // the first exit; more than the bound before it.
    let unlinked = [
        file_change(10, "n1", T0 + SECOND, "/tmp/app.yaml", false, None),
        file_change(11, "n1", T0 + SECOND, "app.yaml", true, None),
        file_change(12, "n2", T0 + SECOND, "/etc/app.yaml", false, None),
        file_change(13, "n1", T0 + SECOND, "/etc/app.yaml", false, Some("c-app")),
        file_change(14, "n1", T0 + 2_100 * MS, "/etc/app.yaml", false, None),
    ];
    for change in unlinked {
        let found = incident(vec![change.clone()]);
        assert!(found.is_empty(), "{change:?} linked: {found:#?}");
    }
    // 3.5 s before the restart's first exit, past the 3 s bound: the stream starts earlier.
    let mut facts = vec![
        file_change(15, "n1", T0, "/etc/app.yaml", false, None),
        exit(1, "n1", T0 + 3_500 * MS, "pod/a/p0"),
        exit(2, "n1", T0 + 3_600 * MS, "pod/b/p1"),
        exit(3, "n1", T0 + 3_700 * MS, "pod/c/p2"),
    ];
    facts.sort_by_key(Observation::time_ns);
    let run = harness().run(sorted(facts, T0 + 8 * SECOND)).expect("run");
    assert!(
        run.changes()
            .all(|(_, _, correlation)| correlation.kind != CorrelationKind::ConfigChangeRestart)
    );
    // A change without a restart after it says nothing.
    let run = harness()
        .run(sorted(
            vec![file_change(16, "n1", T0, "/etc/app.yaml", false, None)],
            T0 + 8 * SECOND,
        ))
        .expect("run");
    assert_eq!(run.changes().count(), 0);
}
