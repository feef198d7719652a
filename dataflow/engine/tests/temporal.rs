//! The temporal rules in the engine with every rule of the default configuration: a node-wide
//! restart, a pod's container in a restart loop on the same node and a client's refused
//! connects, each read as what it is, alike on one worker and two.

use tapio_dataflow::{ClusterLayout, Engine, EngineSettings};
use tapio_model::{
    ClosedBatch, ConnectOutcome, ContainerExit, CorrelationKind, Detail, Fact, FactId, FactPayload,
    Heartbeat, Observation, ProcessRef, TcpConnect, TimeNs,
};

#[expect(
    dead_code,
    reason = "shared with the other engine tests, which use all of it"
)]
mod common;

use common::{SECOND, T0, timeline};

fn run(observations: Vec<Observation>, workers: usize) -> Vec<ClosedBatch> {
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel(1024);
    let (engine, inputs) = Engine::start(
        EngineSettings::default(),
        ClusterLayout::single(workers),
        batches_tx,
    )
    .expect("engine starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut router = tapio_dataflow::Router::new(ClusterLayout::single(workers), inputs);
        for observation in observations {
            assert!(router.route(observation).await);
        }
        router.finish().await;
    });
    engine.join().expect("engine finishes");
    let mut out = Vec::new();
    while let Ok(batch) = batches.try_recv() {
        out.push(batch);
    }
    out
}

/// A container exit of `pod`, reported by the kubelet on node n1.
fn exit(seq: u64, time_ns: TimeNs, pod: &str) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kubelet", "n1", seq),
        time_ns,
        payload: FactPayload::ContainerExit(ContainerExit {
            container_id: format!("c{seq}").into(),
            container_name: "app".into(),
            pod: Some(pod.parse().expect("pod")),
            exit_code: 1,
            reason: "Error".into(),
            restart_count: 1,
        }),
    })
}

fn refused(seq: u64, time_ns: TimeNs) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", "n2", seq),
        time_ns,
        payload: FactPayload::TcpConnect(TcpConnect {
            process: Some(ProcessRef {
                pid: 40,
                start_ns: T0,
                comm: "client".into(),
            }),
            local: "10.1.0.2:41000".parse().expect("address"),
            remote: "10.0.0.9:80".parse().expect("address"),
            outcome: ConnectOutcome::Refused,
            error: 111,
            latency_ns: 1_000,
            container_id: None,
        }),
    })
}

fn scenario() -> Vec<Observation> {
    let mut observations = Vec::new();
    // The kubelet restarts at 10 s: four pods' containers end within a second.
    for (n, pod) in ["pod/a/p0", "pod/a/p1", "pod/b/p2", "pod/c/p3"]
        .iter()
        .enumerate()
    {
        let n = n as u64;
        observations.push(exit(n + 1, T0 + 10 * SECOND + n * SECOND / 4, pod));
    }
    // web-0 loops on the same node, from 15 s after the restart: three exits 10 s apart (one
    // pod: no node problem).
    for n in 0..3 {
        observations.push(exit(10 + n, T0 + (25 + 10 * n) * SECOND, "pod/a/web-0"));
    }
    // A client's connects to 10.0.0.9:80 are refused five times.
    for n in 0..5 {
        observations.push(refused(20 + n, T0 + 15 * SECOND + n * SECOND / 2));
    }
    let end = T0 + 60 * SECOND;
    for node in ["n1", "n2"] {
        for beat in 0..=120 {
            observations.push(Observation::Heartbeat(Heartbeat {
                source: if node == "n1" { "kubelet" } else { "kernel" }.into(),
                node: node.into(),
                upto_ns: T0 + beat * SECOND / 2,
            }));
        }
    }
    assert!(observations.iter().all(|o| o.time_ns() <= end));
    timeline(observations)
}

/// Every correlation that appeared: (kind, root, detail's count).
fn appeared(batches: &[ClosedBatch]) -> Vec<(CorrelationKind, String, u64)> {
    let mut out: Vec<_> = batches
        .iter()
        .flat_map(|batch| batch.changes.iter())
        .filter(|(_, diff)| *diff > 0)
        .filter_map(|(correlation, _)| {
            let count = match correlation.detail {
                Detail::RestartLoop { count, .. } | Detail::Burst { count, .. } => count,
                Detail::CoOccurrence { pods, .. } => pods,
                _ => return None,
            };
            Some((correlation.kind, correlation.root_cause.to_string(), count))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_node_restart_a_restart_loop_and_refused_connects_each_read_as_what_they_are() {
    let one = run(scenario(), 1);
    assert_eq!(
        appeared(&one),
        vec![
            (CorrelationKind::RestartLoop, "pod/a/web-0".into(), 3),
            (CorrelationKind::Burst, "endpoint/10.0.0.9:80".into(), 5),
            (CorrelationKind::CoOccurrence, "node/n1".into(), 3),
        ]
    );
    let two = run(scenario(), 2);
    assert_eq!(two, one, "two workers");
}
