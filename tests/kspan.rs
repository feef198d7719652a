//! Converts the kspan rollout fixture into Tapio observations.
//!
//! The fixture is a multi-document YAML file; each document is preceded by a comment
//! `# {"time":"<receive time>","style":"event"|"initial","kind":"..."}` and holds one Kubernetes
//! object. `initial` objects (Deployment, ReplicaSets, Pods) become state: each object with its
//! controlling owner, and each container listed in a pod's status. `event` documents (core/v1
//! Events) become `kube_event` facts. Times are the fixture's receive times.
//!
//! On top of that real rollout, [`oom_scenario`] adds what a node agent would have seen when the
//! old pod `px-7df978b9bf-jm22q`'s container ran out of memory: the already-running process as
//! the agent's start-up scan reports it (an exec fact at scan time carrying the process's real
//! start time, the container's recorded start), the OOM kill, the process exit and the container exit, plus a
//! second OOM kill of a helper process in pod `px-7df978b9bf-bfdrj` whose container keeps running
//! (which must not produce an OOM-restart correlation). Heartbeats for every source close the
//! stream.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::Value;
use tapio_model::{
    ContainerExit, EntityId, Fact, FactId, FactPayload, Heartbeat, Observation, OomKill,
    ProcessContainer, ProcessExec, ProcessExit, StateObject, StateRecord, StateUpdate, TimeNs,
};
use tapio_sources_kubernetes::{StateTracker, WatchedKind, kube_event};

/// Node of the kind cluster the rollout was recorded on.
pub const NODE: &str = "kind-control-plane";
/// The container that is OOM-killed.
pub const OOM_CONTAINER: &str = "4f0072b3f51e88b2da583f0fc039968865ae60c60a81452a37828f6238a2e359";
/// The container whose helper process is OOM-killed but which keeps running.
pub const SURVIVING_CONTAINER: &str =
    "cf553c322fd2165e0bd0ab36bc970c7c5786aeafbd8e2c28807d9d93aff1ed54";

fn time(text: &str) -> Result<TimeNs> {
    let at = humantime::parse_rfc3339_weak(text).with_context(|| format!("bad time `{text}`"))?;
    Ok(at.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as TimeNs)
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |value, key| value.get(key))?
        .as_str()
}

struct Ids {
    seq: u64,
}

impl Ids {
    fn next(&mut self) -> FactId {
        self.seq += 1;
        FactId::new("kubernetes", "cluster", self.seq)
    }
}

/// An `initial` object through the Kubernetes source's own conversion and watch tracker, as
/// the live source would have inserted it when it first saw the object.
fn object_state(object: &Value, received: TimeNs, ids: &mut Ids) -> Result<Vec<Observation>> {
    fn records<K: WatchedKind>(object: &Value) -> Result<Vec<StateObject>> {
        let object: K =
            serde_json::from_value(object.clone()).with_context(|| format!("not a {}", K::KIND))?;
        Ok(object.records()?)
    }
    let kind = text(object, &["kind"]).context("object without kind")?;
    let uid = text(object, &["metadata", "uid"]).context("object without uid")?;
    let objects = match kind {
        "Pod" => records::<Pod>(object)?,
        "ReplicaSet" => records::<ReplicaSet>(object)?,
        "Deployment" => records::<Deployment>(object)?,
        other => bail!("unexpected kind `{other}`"),
    };
    let mut tracker = StateTracker::new();
    let mut updates = Vec::new();
    tracker.apply(uid, objects, received, &mut || ids.next(), &mut updates);
    Ok(updates.into_iter().map(Observation::State).collect())
}

/// An `event` document through the Kubernetes source's own Event conversion.
fn event_fact(event: &Value, received: TimeNs, ids: &mut Ids) -> Result<Observation> {
    let event: Event = serde_json::from_value(event.clone()).context("not an Event")?;
    let payload = kube_event(&event, received)?;
    Ok(Observation::Fact(Fact {
        id: ids.next(),
        time_ns: received,
        payload: FactPayload::KubeEvent(payload),
    }))
}

/// The rollout as observations, in receive order.
///
/// # Errors
/// When the fixture cannot be read or does not have the documented shape.
pub fn rollout(fixture: &str) -> Result<Vec<Observation>> {
    let mut ids = Ids { seq: 0 };
    let mut out = Vec::new();
    for document in fixture.split("\n---\n") {
        let document = document.trim_start_matches("---\n");
        let Some((meta, body)) = document.split_once('\n') else {
            continue;
        };
        let Some(meta) = meta.strip_prefix("# ") else {
            bail!("document without a metadata comment: {meta}");
        };
        let meta: Value = serde_json::from_str(meta)?;
        let received = time(meta["time"].as_str().context("metadata without time")?)?;
        let object: Value = serde_saphyr::from_str(body)
            .map_err(|error| anyhow!("bad YAML in the fixture: {error}"))?;
        match meta["style"].as_str() {
            Some("initial") => out.extend(object_state(&object, received, &mut ids)?),
            Some("event") => out.push(event_fact(&object, received, &mut ids)?),
            other => bail!("unknown document style {other:?}"),
        }
    }
    Ok(out)
}

/// The node agent's record that a process runs in a container; inserted at `since`.
fn membership(
    seq: u64,
    since: TimeNs,
    pid: u32,
    start_ns: TimeNs,
    container: &str,
    filename: &str,
) -> StateRecord {
    StateRecord {
        evidence: FactId::new("kernel", NODE, seq),
        since_ns: since,
        object: StateObject::ProcessContainer(ProcessContainer {
            process: EntityId::Process {
                node: NODE.into(),
                pid,
                start_ns,
            },
            container_id: container.into(),
            filename: filename.into(),
        }),
    }
}

fn membership_change(time_ns: TimeNs, diff: i8, record: &StateRecord) -> Observation {
    Observation::State(StateUpdate {
        time_ns,
        diff,
        record: record.clone(),
    })
}

fn kernel_fact(seq: u64, time_ns: TimeNs, payload: FactPayload) -> Observation {
    Observation::Fact(Fact {
        id: FactId::new("kernel", NODE, seq),
        time_ns,
        payload,
    })
}

/// The node-level facts of the OOM scenario.
///
/// # Errors
/// Never in practice (the times are constants).
pub fn oom_scenario() -> Result<Vec<Observation>> {
    let podinfo_start = time("2021-05-18T17:10:51.120Z")?;
    let agent_scan = time("2021-05-19T09:42:58.610Z")?;
    let helper_start = time("2021-05-19T09:43:06.900Z")?;
    let kill = time("2021-05-19T09:43:02.500Z")?;
    let pod_uid = "ac780302-1895-43b1-89e0-80f85c8e5457";
    let survivor_pod_uid = "5d7c3aa2-2d0c-4bc5-a6ea-0b6b6c1b0f1e";
    let container = |id: &str| Some(id.to_string());
    let podinfo = membership(
        7,
        agent_scan,
        2315,
        podinfo_start,
        OOM_CONTAINER,
        "/home/app/podinfo",
    );
    let helper = membership(
        8,
        helper_start,
        2460,
        helper_start,
        SURVIVING_CONTAINER,
        "/bin/sh",
    );
    Ok(vec![
        membership_change(agent_scan, 1, &podinfo),
        membership_change(kill + 4_000_000, -1, &podinfo),
        membership_change(helper_start, 1, &helper),
        membership_change(helper_start + 88_000_000, -1, &helper),
        kernel_fact(
            1,
            agent_scan,
            FactPayload::ProcessExec(ProcessExec {
                pid: 2315,
                ppid: 2290,
                uid: 0,
                start_ns: podinfo_start,
                comm: "podinfo".into(),
                filename: "/home/app/podinfo".into(),
                args: vec!["./podinfo".into(), "--port=9898".into()],
                container_id: container(OOM_CONTAINER).map(Into::into),
            }),
        ),
        kernel_fact(
            2,
            kill,
            FactPayload::OomKill(OomKill {
                pid: 2315,
                start_ns: podinfo_start,
                comm: "podinfo".into(),
                container_id: container(OOM_CONTAINER).map(Into::into),
                pod_uid: Some(pod_uid.into()),
                memcg: format!("/kubepods/burstable/pod{pod_uid}/{OOM_CONTAINER}"),
                rss_pages: 32_512,
            }),
        ),
        kernel_fact(
            3,
            kill + 4_000_000,
            FactPayload::ProcessExit(ProcessExit {
                pid: 2315,
                start_ns: podinfo_start,
                comm: "podinfo".into(),
                exit_code: 0,
                signal: 9,
                container_id: container(OOM_CONTAINER).map(Into::into),
            }),
        ),
        Observation::Fact(Fact {
            id: FactId::new("cri", NODE, 1),
            time_ns: kill + 41_000_000,
            payload: FactPayload::ContainerExit(ContainerExit {
                container_id: OOM_CONTAINER.into(),
                container_name: "podinfo".into(),
                pod: Some(EntityId::Pod {
                    namespace: "default".into(),
                    name: "px-7df978b9bf-jm22q".into(),
                }),
                exit_code: 137,
                reason: "OOMKilled".into(),
                restart_count: 1,
            }),
        }),
        kernel_fact(
            4,
            helper_start,
            FactPayload::ProcessExec(ProcessExec {
                pid: 2460,
                ppid: 2388,
                uid: 0,
                start_ns: helper_start,
                comm: "sh".into(),
                filename: "/bin/sh".into(),
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /dev/zero | head -c 2G | tail".into(),
                ],
                container_id: container(SURVIVING_CONTAINER).map(Into::into),
            }),
        ),
        kernel_fact(
            5,
            helper_start + 85_000_000,
            FactPayload::OomKill(OomKill {
                pid: 2460,
                start_ns: helper_start,
                comm: "sh".into(),
                container_id: container(SURVIVING_CONTAINER).map(Into::into),
                pod_uid: Some(survivor_pod_uid.into()),
                memcg: format!("/kubepods/besteffort/pod{survivor_pod_uid}/{SURVIVING_CONTAINER}"),
                rss_pages: 61_440,
            }),
        ),
        kernel_fact(
            6,
            helper_start + 88_000_000,
            FactPayload::ProcessExit(ProcessExit {
                pid: 2460,
                start_ns: helper_start,
                comm: "sh".into(),
                exit_code: 0,
                signal: 9,
                container_id: container(SURVIVING_CONTAINER).map(Into::into),
            }),
        ),
    ])
}

/// The whole recording: rollout plus OOM scenario in time order, with a heartbeat from each
/// source every 500 ms of event time from the first rollout event until 3 s after the last
/// observation.
///
/// # Errors
/// When the fixture cannot be converted.
pub fn recording(fixture: &str) -> Result<Vec<Observation>> {
    let mut observations = rollout(fixture)?;
    let begin = observations
        .iter()
        .map(Observation::time_ns)
        .min()
        .context("empty fixture")?;
    observations.extend(oom_scenario()?);
    let end = observations
        .iter()
        .map(Observation::time_ns)
        .max()
        .context("empty recording")?
        + 3_000_000_000;
    let sources = [("kubernetes", "cluster"), ("kernel", NODE), ("cri", NODE)];
    let mut beat = begin.div_ceil(500_000_000) * 500_000_000;
    while beat <= end {
        for (source, node) in sources {
            observations.push(Observation::Heartbeat(Heartbeat {
                source: source.into(),
                node: node.into(),
                upto_ns: beat,
            }));
        }
        beat += 500_000_000;
    }
    // Heartbeats at a time come after the observations at that time; ties keep their order.
    observations.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    Ok(observations)
}
