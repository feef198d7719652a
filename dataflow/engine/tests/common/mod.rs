//! Streams the engine's integration tests share.

use tapio_model::{
    ContainerExit, Fact, FactId, FactPayload, Observation, OomKill, ProcessExit, TimeNs,
};

/// 2026-01-01T00:00:00Z, where every test stream starts.
pub const T0: TimeNs = 1_767_225_600_000_000_000;
/// One second of event time.
pub const SECOND: TimeNs = 1_000_000_000;

/// An OOM kill of pid 7 (started at `T0`) in `container`, its SIGKILL exit 2 ms later and the
/// container's exit (137, `OOMKilled`) 20 ms after the kill, numbered `seq`, `seq + 1` and
/// `seq + 2` by `source` on `node`.
pub fn oom_sequence(
    source: &str,
    node: &str,
    seq: u64,
    at: TimeNs,
    container: &str,
) -> Vec<Observation> {
    let fact = |seq, time_ns, payload| {
        Observation::Fact(Fact {
            id: FactId::new(source, node, seq),
            time_ns,
            payload,
        })
    };
    vec![
        fact(
            seq,
            at,
            FactPayload::OomKill(OomKill {
                pid: 7,
                start_ns: T0,
                comm: "java".into(),
                container_id: Some(container.into()),
                pod_uid: None,
                memcg: String::new(),
                rss_pages: 1,
            }),
        ),
        fact(
            seq + 1,
            at + 2_000_000,
            FactPayload::ProcessExit(ProcessExit {
                pid: 7,
                start_ns: T0,
                comm: "java".into(),
                exit_code: 0,
                signal: 9,
                container_id: Some(container.into()),
            }),
        ),
        fact(
            seq + 2,
            at + 20_000_000,
            FactPayload::ContainerExit(ContainerExit {
                container_id: container.into(),
                container_name: "app".into(),
                pod: None,
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            }),
        ),
    ]
}

/// Sorts by event time, heartbeats last among equals (the order sources publish in).
pub fn timeline(mut observations: Vec<Observation>) -> Vec<Observation> {
    observations.sort_by_key(|o| (o.time_ns(), matches!(o, Observation::Heartbeat(_))));
    observations
}
