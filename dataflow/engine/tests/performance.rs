//! The performance rules in the engine with every rule of the default configuration: a memory
//! leak ending in an OOM kill, and a node under memory pressure evicting a pod, each as the
//! whole chain from the first cause to the pod, the same on one worker and on two.

use tapio_dataflow::{ClusterLayout, Engine, EngineSettings, Router};
use tapio_model::render::explain;
use tapio_model::{
    ClosedBatch, ConditionStatus, Correlation, CorrelationKind, Detail, EventType, Fact, FactId,
    FactPayload, Family, Heartbeat, KubeEvent, NodeCondition, Observation, OwnerRef, PodContainer,
    Relation, Resource, ResourceUsage, StateObject, StateRecord, StateUpdate, TimeNs,
    WorkloadObject,
};

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
        let mut router = Router::new(ClusterLayout::single(workers), inputs);
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

fn state(seq: u64, object: StateObject) -> Observation {
    Observation::State(StateUpdate {
        time_ns: T0,
        diff: 1,
        record: StateRecord {
            evidence: FactId::new("kubernetes", "cluster", seq),
            since_ns: T0,
            object,
        },
    })
}

fn fact(source: &str, seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new(source, "worker-1", seq),
        time_ns,
        payload,
    })
}

/// Pod `default/web-1` of ReplicaSet `default/web`, on node `worker-1`, running container
/// `app` as `c1`; heartbeats to `T0 + 60 s`.
fn cluster() -> Vec<Observation> {
    let mut out = vec![
        state(
            1,
            StateObject::Workload(WorkloadObject {
                entity: "pod/default/web-1".parse().expect("entity"),
                uid: "uid-web-1".into(),
                owner: Some(OwnerRef {
                    entity: "replicaset/default/web".parse().expect("entity"),
                    uid: "uid-web".into(),
                }),
                node: Some("node/worker-1".parse().expect("entity")),
            }),
        ),
        state(
            2,
            StateObject::PodContainer(PodContainer {
                pod: "pod/default/web-1".parse().expect("entity"),
                pod_uid: "uid-web-1".into(),
                container_name: "app".into(),
                container_id: "c1".into(),
            }),
        ),
    ];
    out.extend((0..=120).map(|i| {
        Observation::Heartbeat(Heartbeat {
            source: "test".into(),
            node: "n".into(),
            upto_ns: T0 + i * SECOND / 2,
        })
    }));
    out
}

/// The correlations of `kind` that became current, identical for one and two workers.
fn found(stream: Vec<Observation>, kind: CorrelationKind) -> Vec<Correlation> {
    let of_kind = |batches: Vec<ClosedBatch>| -> Vec<Correlation> {
        batches
            .iter()
            .flat_map(|batch| batch.changes.iter())
            .filter(|(correlation, diff)| *diff > 0 && correlation.kind == kind)
            .map(|(correlation, _)| correlation.clone())
            .collect()
    };
    let one = of_kind(run(stream.clone(), 1));
    assert_eq!(of_kind(run(stream, 2)), one, "{kind:?}, 2 workers");
    one
}

#[test]
fn a_memory_leak_ends_in_an_oom_kill_of_that_container_with_its_owners() {
    let mut stream = cluster();
    stream.push(fact(
        "kubelet",
        1,
        T0 + 10 * SECOND,
        FactPayload::ResourceUsage(ResourceUsage {
            pod: "pod/default/web-1".parse().expect("entity"),
            container_name: "app".into(),
            resource: Resource::Memory,
            used: 30 << 20,
            limit: 32 << 20,
            threshold_percent: 90,
            above: true,
        }),
    ));
    stream.extend(common::oom_sequence(
        "kernel",
        "worker-1",
        10,
        T0 + 25 * SECOND,
        "c1",
    ));
    let found = found(timeline(stream), CorrelationKind::MemoryExhaustion);
    assert_eq!(found.len(), 1, "{found:#?}");
    let exhaustion = &found[0];
    assert_eq!(exhaustion.family, Family::Performance);
    assert_eq!(exhaustion.root_cause.to_string(), "container/c1");
    let path: Vec<String> = exhaustion
        .chain
        .iter()
        .map(|hop| format!("{} {}", hop.relation.as_str(), hop.entity))
        .collect();
    assert_eq!(
        path,
        [
            "start container/c1",
            "caused process/worker-1/7/1767225600000000000",
            "followed_by process/worker-1/7/1767225600000000000",
            "caused container/c1",
            "owned_by pod/default/web-1",
            "owned_by replicaset/default/web",
        ]
    );
    assert!(
        matches!(exhaustion.detail, Detail::Exhaustion { used, limit, threshold_percent: 90, span_ns, .. }
            if used == 30 << 20 && limit == 32 << 20 && span_ns == 15 * SECOND),
        "{:?}",
        exhaustion.detail
    );
    assert_eq!(
        explain(exhaustion),
        "container app of pod/default/web-1 (container/c1) used 31457280 of its memory limit 33554432 (at or above 90%); the kernel OOM killer ended it 15 s later"
    );
}

#[test]
fn memory_pressure_on_a_node_then_an_eviction_of_its_pod() {
    let mut stream = cluster();
    stream.push(Observation::State(StateUpdate {
        time_ns: T0 + 5 * SECOND,
        diff: 1,
        record: StateRecord {
            evidence: FactId::new("kubernetes", "cluster", 3),
            since_ns: T0 + 5 * SECOND,
            object: StateObject::NodeCondition(NodeCondition {
                node: "node/worker-1".parse().expect("entity"),
                condition: "MemoryPressure".into(),
                status: ConditionStatus::True,
                reason: "KubeletHasInsufficientMemory".into(),
            }),
        },
    }));
    stream.push(fact(
        "kubernetes",
        4,
        T0 + 8 * SECOND,
        FactPayload::KubeEvent(KubeEvent {
            involved: "pod/default/web-1".parse().expect("entity"),
            reason: "Evicted".into(),
            message: "The node was low on resource: memory. Threshold quantity: 100Mi, available: 92Mi. Container app was using 900Mi, request is 0, has larger consumption of memory.".into(),
            component: "kubelet".into(),
            event_type: EventType::Warning,
            count: 1,
            first_ns: T0 + 8 * SECOND,
            last_ns: T0 + 8 * SECOND,
        }),
    ));
    let found = found(timeline(stream), CorrelationKind::NodePressureEviction);
    assert_eq!(found.len(), 1, "{found:#?}");
    let pressure = &found[0];
    assert_eq!(pressure.family, Family::Performance);
    assert_eq!(pressure.root_cause.to_string(), "node/worker-1");
    assert_eq!(pressure.chain[1].entity.to_string(), "pod/default/web-1");
    assert_eq!(pressure.chain[1].relation, Relation::Caused);
    assert_eq!(pressure.confidence.percent, 90);
    assert_eq!(
        explain(pressure),
        "node/worker-1 came under MemoryPressure and the kubelet evicted 1 pod: pod/default/web-1"
    );
}
