//! The shipped recording: reproducible from the real kspan rollout, and it replays to the
//! ownership chains and the OOM sequence it contains.

use tapio_model::recording::{RecordingReader, RecordingWriter};
use tapio_model::render::explain;
use tapio_model::{CorrelationKind, EntityId, Family, Relation};

use crate::support::{current, kspan_recording, replay};

#[test]
fn shipped_recording_is_built_from_the_kspan_fixture() {
    let fixture =
        std::fs::read_to_string(tapio_tests::fixtures().join("k8s/kspan/deployment-2-pods.yaml"))
            .expect("read the kspan fixture");
    let observations = tapio_tests::kspan::recording(&fixture).expect("convert the fixture");
    let mut bytes = Vec::new();
    let mut writer = RecordingWriter::new(&mut bytes).expect("header");
    for observation in &observations {
        writer.write(observation).expect("write");
    }
    drop(writer);
    let path = kspan_recording();
    if std::env::var_os("UPDATE_RECORDINGS").is_some() {
        std::fs::write(&path, &bytes).expect("write the recording");
    }
    let shipped = std::fs::read(&path).expect("read the shipped recording");
    assert!(
        shipped == bytes,
        "{} is stale: rerun with UPDATE_RECORDINGS=1",
        path.display()
    );
    // And it reads back without a single bad line.
    let read: Vec<_> = RecordingReader::new(shipped.as_slice()).collect();
    assert_eq!(read.len(), observations.len());
    assert!(read.iter().all(Result::is_ok));
}

fn pod(name: &str) -> EntityId {
    EntityId::Pod {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn replay_yields_ownership_chains_and_the_oom_sequence() {
    let (changes, _) = replay(&kspan_recording(), &[], "kspan");
    let now = current(&changes);
    let deployment = EntityId::Deployment {
        namespace: "default".into(),
        name: "px".into(),
    };

    // Every pod resolves to ReplicaSet -> Deployment default/px.
    for (name, replicaset) in [
        ("px-5d567cc74c-ss4lb", "px-5d567cc74c"),
        ("px-5d567cc74c-pmvzr", "px-5d567cc74c"),
        ("px-7df978b9bf-jm22q", "px-7df978b9bf"),
        ("px-7df978b9bf-bfdrj", "px-7df978b9bf"),
    ] {
        let chain = now
            .iter()
            .find(|c| c.kind == CorrelationKind::Ownership && c.chain[0].entity == pod(name))
            .unwrap_or_else(|| panic!("no ownership chain for {name}"));
        let entities: Vec<String> = chain.chain.iter().map(|h| h.entity.to_string()).collect();
        assert_eq!(
            entities,
            [
                format!("pod/default/{name}"),
                format!("replicaset/default/{replicaset}"),
                "deployment/default/px".to_string()
            ]
        );
        assert_eq!(chain.root_cause, deployment);
    }

    // The OOM-killed process: kernel -> container -> pod -> ReplicaSet -> Deployment.
    let oom: Vec<_> = now
        .iter()
        .filter(|c| c.kind == CorrelationKind::OomRestart)
        .collect();
    assert_eq!(oom.len(), 1, "exactly one OOM restart: {oom:#?}");
    let oom = oom[0];
    let hops: Vec<String> = oom.chain.iter().map(|h| h.entity.to_string()).collect();
    let container = format!("container/{}", tapio_tests::kspan::OOM_CONTAINER);
    assert_eq!(
        hops,
        [
            "process/kind-control-plane/2315/1621357851120000000",
            "process/kind-control-plane/2315/1621357851120000000",
            container.as_str(),
            "pod/default/px-7df978b9bf-jm22q",
            "replicaset/default/px-7df978b9bf",
            "deployment/default/px",
        ]
    );
    let evidence: Vec<String> = oom.chain.iter().map(|h| h.fact_id.to_string()).collect();
    assert_eq!(evidence[0], "kernel/kind-control-plane/2");
    assert_eq!(evidence[1], "kernel/kind-control-plane/3");
    assert_eq!(evidence[2], "cri/kind-control-plane/1");
    let relations: Vec<Relation> = oom.chain.iter().map(|h| h.relation).collect();
    assert_eq!(
        relations,
        [
            Relation::Start,
            Relation::FollowedBy,
            Relation::Caused,
            Relation::OwnedBy,
            Relation::OwnedBy,
            Relation::OwnedBy,
        ]
    );
    assert_eq!(oom.family, Family::Sequence);
    assert_eq!(oom.confidence.percent, 95);
    let explanation = explain(oom);
    assert!(explanation.contains("OOM killer"), "{explanation}");

    // The OOM kill was seen before its pod was listed: the match first appears with the pod
    // named by the container runtime, then is refined when the ownership chain arrives.
    let oom_changes: Vec<_> = changes
        .iter()
        .filter(|c| c.correlation.kind == CorrelationKind::OomRestart)
        .collect();
    assert_eq!(oom_changes.len(), 3, "{oom_changes:#?}");
    assert_eq!(
        (
            oom_changes[0].diff,
            oom_changes[1].diff,
            oom_changes[2].diff
        ),
        (1, -1, 1)
    );
    assert_eq!(oom_changes[0].correlation.chain.len(), 4);
    assert_eq!(oom_changes[0].time, 1_621_417_382_600_000_000);

    // The helper process killed in the surviving container did not restart anything.
    assert!(!now.iter().any(|c| c.kind == CorrelationKind::OomRestart
        && c.chain[0].entity.to_string().contains("/2460/")));
    // Processes get no ownership correlation of their own; their containers do.
    assert!(!now.iter().any(|c| {
        c.kind == CorrelationKind::Ownership && c.chain[0].entity.kind() == "process"
    }));
    assert!(now.iter().any(|c| {
        c.kind == CorrelationKind::Ownership && c.chain[0].entity.to_string() == container
    }));
}
