//! A systemd unit restart starts the service-restart cascade: the shipped live recording of the
//! cascade (four pods' containers killed together on `node-cascade`), with the journal
//! collector's `unit_change` fact of `containerd.service` restarting a second before the first
//! exit, read by a declared sequence `unit_restart → container_exit on node`. The chain goes
//! from the unit to the node's first container exit; without the restart there is none, and the
//! node-wide co-occurrence is found either way.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tapio_config::{EntityKind, SequenceConfig, StepConfig, StepKind, StepWhere, TapioConfig};
use tapio_dataflow::{ClusterLayout, Engine, EngineSettings};
use tapio_model::recording::RecordingReader;
use tapio_model::{
    ClosedBatch, Correlation, CorrelationKind, Detail, EntityId, Fact, FactId, FactPayload,
    Observation, Observed, Relation, UnitChange, UnitState,
};

fn cascade() -> Vec<Observation> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/recordings/service-restart-cascade.jsonl");
    let file = std::fs::File::open(&path).expect("the shipped cascade recording");
    RecordingReader::new(BufReader::new(file))
        .map(|item| item.expect("a recording line").1)
        .collect()
}

fn settings() -> EngineSettings {
    let mut config = TapioConfig::default();
    config.correlation.sequences.push(SequenceConfig {
        name: "containerd_restart_stops_containers".into(),
        enabled: true,
        within: Duration::from_secs(30),
        keep_for: Duration::from_secs(600),
        slack: Duration::ZERO,
        steps: vec![
            StepConfig {
                kind: StepKind::UnitRestart,
                on: None,
                conditions: StepWhere {
                    unit: Some("containerd.service".into()),
                    ..StepWhere::default()
                },
            },
            StepConfig {
                kind: StepKind::ContainerExit,
                on: Some(EntityKind::Node),
                conditions: StepWhere::default(),
            },
        ],
    });
    config.validate().expect("the declared sequence is valid");
    EngineSettings::from_config(&config)
}

fn run(observations: Vec<Observation>) -> Vec<Correlation> {
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel(4096);
    let (engine, inputs) =
        Engine::start(settings(), ClusterLayout::single(1), batches_tx).expect("engine starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut closed: Vec<ClosedBatch> = Vec::new();
    runtime.block_on(async {
        let collect = async {
            while let Some(batch) = batches.recv().await {
                closed.push(batch);
            }
        };
        let feed = async {
            let mut router = tapio_dataflow::Router::new(ClusterLayout::single(1), inputs);
            for observation in observations {
                assert!(router.route(observation).await);
            }
            router.finish().await;
        };
        tokio::join!(collect, feed);
    });
    engine.join().expect("engine finishes");
    let mut current: Vec<(Correlation, i64)> = Vec::new();
    for batch in closed {
        for (correlation, diff) in batch.changes {
            match current.iter_mut().find(|(seen, _)| *seen == correlation) {
                Some(entry) => entry.1 += diff,
                None => current.push((correlation, diff)),
            }
        }
    }
    // Everything ever current: the test asks what was concluded, not what is left at the end.
    current
        .into_iter()
        .map(|(correlation, _)| correlation)
        .collect()
}

/// The first container exit the kernel reported on the node, and its time.
fn first_exit(observations: &[Observation]) -> (Fact, u64) {
    observations
        .iter()
        .filter_map(|observation| match observation {
            Observation::Fact(fact) if matches!(fact.payload, FactPayload::ContainerExit(_)) => {
                Some((fact.clone(), fact.time_ns))
            }
            _ => None,
        })
        .min_by_key(|(_, time)| *time)
        .expect("container exits")
}

fn with_restart(mut observations: Vec<Observation>) -> Vec<Observation> {
    let (exit, at) = first_exit(&observations);
    let restart = Observation::Fact(Fact {
        id: FactId::new("systemd", Arc::clone(&exit.id.node), 1),
        time_ns: at - 1_000_000_000,
        payload: FactPayload::UnitChange(UnitChange {
            unit: "containerd.service".into(),
            state: UnitState::Restarted,
            result: "done".into(),
            exit: None,
        }),
    });
    let index = observations
        .iter()
        .position(|observation| observation.time_ns() >= at - 1_000_000_000)
        .expect("a place in time");
    observations.insert(index, restart);
    observations
}

fn restart_chains(correlations: &[Correlation]) -> Vec<&Correlation> {
    correlations
        .iter()
        .filter(|correlation| {
            matches!(&correlation.detail, Detail::DeclaredSequence { name, .. }
                if name.as_ref() == "containerd_restart_stops_containers")
        })
        .collect()
}

#[test]
fn a_unit_restart_leads_to_the_node_wide_container_exits() {
    let observations = cascade();
    let (exit, _) = first_exit(&observations);
    let correlations = run(with_restart(observations));
    let chains = restart_chains(&correlations);
    assert!(!chains.is_empty(), "no unit restart chain");
    let chain = chains[0];
    let unit = EntityId::Unit {
        node: Arc::clone(&exit.id.node),
        name: "containerd.service".into(),
    };
    assert_eq!(chain.root_cause, unit);
    assert_eq!(chain.kind, CorrelationKind::DeclaredSequence);
    assert_eq!(chain.chain[0].entity, unit);
    assert!(matches!(
        &chain.chain[0].observed,
        Observed::UnitChange {
            state: UnitState::Restarted,
            ..
        }
    ));
    assert_eq!(chain.chain[1].entity, exit.subject());
    assert_eq!(chain.chain[1].relation, Relation::Caused);
    assert!(tapio_model::render::explain(chain).contains("containerd.service"));
    assert!(
        correlations
            .iter()
            .any(|correlation| correlation.kind == CorrelationKind::CoOccurrence),
        "the node-wide restart is still found"
    );
}

#[test]
fn without_a_unit_restart_there_is_no_such_chain() {
    let correlations = run(cascade());
    assert!(restart_chains(&correlations).is_empty());
}
