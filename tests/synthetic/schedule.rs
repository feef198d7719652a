//! The fixed-schedule synthetic cluster stream: Deployments with ReplicaSets, pods and containers
//! that churn (rollouts replace pods; OOM-killed containers restart under a new id), processes
//! that exec and exit, and OOM kills followed by the process exit and the container exit.
//! Heartbeats from every source close each 100 ms of event time. The random source is
//! [`XorShift64`], so the same shape and seed always give the same stream.

use tapio_model::{
    ContainerExit, EntityId, Fact, FactId, FactPayload, Observation, OomKill, OwnerRef,
    PodContainer, StateObject, StateRecord, TimeNs, WorkloadObject,
};

use super::{
    NS_PER_MS as MS, NS_PER_S, START_NS, exec_payload, exit_payload, heartbeat, kube_record,
    membership, update,
};
use crate::random::XorShift64;

/// How big the stream is.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Nodes (each has a kernel and a cri source).
    pub nodes: usize,
    /// Deployments.
    pub deployments: usize,
    /// Pods per ReplicaSet.
    pub pods: usize,
    /// Seconds of event time.
    pub seconds: u64,
    /// Short-lived processes started per second, cluster-wide.
    pub execs_per_second: usize,
    /// One OOM kill every this many seconds (0: none).
    pub oom_every_seconds: u64,
    /// One rollout every this many seconds (0: none).
    pub rollout_every_seconds: u64,
    /// Seed.
    pub seed: u64,
}

impl Shape {
    /// About 12 thousand observations: small enough for tests.
    pub fn small() -> Shape {
        Shape {
            nodes: 3,
            deployments: 6,
            pods: 3,
            seconds: 24,
            execs_per_second: 100,
            oom_every_seconds: 3,
            rollout_every_seconds: 7,
            seed: 42,
        }
    }
}

struct Proc {
    pid: u32,
    start: TimeNs,
    membership: StateRecord,
}

struct Pod {
    entity: EntityId,
    uid: String,
    node: usize,
    workload: StateRecord,
    container: StateRecord,
    main: Proc,
    restarts: u32,
}

struct Generator {
    shape: Shape,
    rng: XorShift64,
    out: Vec<(TimeNs, u8, Observation)>,
    k8s_seq: u64,
    node_seq: Vec<u64>,
    next_pid: u32,
    next_id: u64,
}

impl Generator {
    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{:016x}{:048x}", self.random(), self.next_id)
    }

    fn push(&mut self, time: TimeNs, observation: Observation) {
        self.out.push((time, 0, observation));
    }

    fn k8s_record(&mut self, time: TimeNs, object: StateObject) -> StateRecord {
        kube_record(&mut self.k8s_seq, time, object)
    }

    fn state(&mut self, time: TimeNs, diff: i8, record: StateRecord) {
        self.push(time, update(time, diff, record));
    }

    fn fact(&mut self, source: &str, node: usize, time: TimeNs, payload: FactPayload) {
        let seq = &mut self.node_seq[node];
        *seq += 1;
        let id = FactId::new(source, format!("node-{node}"), *seq);
        self.push(
            time,
            Observation::Fact(Fact {
                id,
                time_ns: time,
                payload,
            }),
        );
    }

    /// Starts a process in `container`: the exec fact and the agent's membership record.
    fn exec(&mut self, node: usize, time: TimeNs, container: &str) -> Proc {
        self.next_pid += 1;
        let pid = self.next_pid;
        let command = (
            "app".into(),
            "/usr/bin/app".into(),
            vec!["app".into(), format!("--id={pid}")],
        );
        self.fact(
            "kernel",
            node,
            time,
            exec_payload(pid, time, command, container),
        );
        let seq = &mut self.node_seq[node];
        *seq += 1;
        let membership = membership(
            &format!("node-{node}"),
            *seq,
            time,
            (pid, time),
            container,
            "/usr/bin/app".into(),
        );
        self.state(time, 1, membership.clone());
        Proc {
            pid,
            start: time,
            membership,
        }
    }

    /// Ends a process: the exit fact and the retraction of its membership record.
    fn exit(&mut self, node: usize, time: TimeNs, process: Proc, signal: u32, container: &str) {
        self.fact(
            "kernel",
            node,
            time,
            exit_payload(
                (process.pid, process.start),
                "app".into(),
                signal,
                container,
            ),
        );
        self.state(time, -1, process.membership);
    }

    fn container_record(&mut self, time: TimeNs, pod: &EntityId, uid: &str) -> StateRecord {
        let container_id = self.id();
        self.k8s_record(
            time,
            StateObject::PodContainer(PodContainer {
                pod: pod.clone(),
                pod_uid: uid.into(),
                container_name: "app".into(),
                container_id: container_id.into(),
            }),
        )
    }

    fn start_pod(
        &mut self,
        time: TimeNs,
        replicaset: &EntityId,
        rs_uid: &str,
        index: usize,
    ) -> Pod {
        let EntityId::ReplicaSet { namespace, name } = replicaset else {
            unreachable!("pods are created by ReplicaSets");
        };
        let entity = EntityId::Pod {
            namespace: namespace.clone(),
            name: format!("{name}-{index}-{:05x}", self.random() % 0xfffff).into(),
        };
        let uid = self.id();
        let node = (self.random() % self.shape.nodes as u64) as usize;
        let workload = self.k8s_record(
            time,
            StateObject::Workload(WorkloadObject {
                entity: entity.clone(),
                uid: uid.clone(),
                owner: Some(OwnerRef {
                    entity: replicaset.clone(),
                    uid: rs_uid.into(),
                }),
                node: None,
            }),
        );
        self.state(time, 1, workload.clone());
        let container = self.container_record(time + MS, &entity, &uid);
        self.state(time + MS, 1, container.clone());
        let container_id = container_id(&container);
        let main = self.exec(node, time + 2 * MS, &container_id);
        Pod {
            entity,
            uid,
            node,
            workload,
            container,
            main,
            restarts: 0,
        }
    }

    fn replicaset(
        &mut self,
        time: TimeNs,
        deployment: &EntityId,
        uid: &str,
        version: u64,
    ) -> (EntityId, String, StateRecord) {
        let EntityId::Deployment { namespace, name } = deployment else {
            unreachable!("ReplicaSets belong to Deployments");
        };
        let entity = EntityId::ReplicaSet {
            namespace: namespace.clone(),
            name: format!("{name}-v{version}").into(),
        };
        let rs_uid = self.id();
        let record = self.k8s_record(
            time,
            StateObject::Workload(WorkloadObject {
                entity: entity.clone(),
                uid: rs_uid.clone(),
                owner: Some(OwnerRef {
                    entity: deployment.clone(),
                    uid: uid.into(),
                }),
                node: None,
            }),
        );
        self.state(time, 1, record.clone());
        (entity, rs_uid, record)
    }
}

fn container_id(record: &StateRecord) -> String {
    match &record.object {
        StateObject::PodContainer(container) => container.container_id.to_string(),
        _ => unreachable!("a container record"),
    }
}

/// Generates the stream for `shape`, in arrival order.
pub fn stream(shape: &Shape) -> Vec<Observation> {
    let mut generator = Generator {
        shape: shape.clone(),
        rng: XorShift64::new(shape.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        out: Vec::new(),
        k8s_seq: 0,
        node_seq: vec![0; shape.nodes],
        next_pid: 1000,
        next_id: 0,
    };
    let g = &mut generator;
    struct Deployment {
        entity: EntityId,
        uid: String,
        version: u64,
        replicaset: (EntityId, String, StateRecord),
        pods: Vec<Pod>,
    }
    let mut deployments = Vec::new();
    for d in 0..shape.deployments {
        let time = START_NS + d as u64 * 10 * MS;
        let entity = EntityId::Deployment {
            namespace: format!("team-{}", d % 3).into(),
            name: format!("svc-{d}").into(),
        };
        let uid = g.id();
        let record = g.k8s_record(
            time,
            StateObject::Workload(WorkloadObject {
                entity: entity.clone(),
                uid: uid.clone(),
                owner: None,
                node: None,
            }),
        );
        g.state(time, 1, record);
        let replicaset = g.replicaset(time + MS, &entity, &uid, 1);
        let pods = (0..shape.pods)
            .map(|i| g.start_pod(time + 2 * MS, &replicaset.0, &replicaset.1, i))
            .collect();
        deployments.push(Deployment {
            entity,
            uid,
            version: 1,
            replicaset,
            pods,
        });
    }
    for second in 1..shape.seconds {
        let base = START_NS + second * NS_PER_S;
        // Short-lived processes in random containers.
        for _ in 0..shape.execs_per_second {
            let d = (g.random() % deployments.len() as u64) as usize;
            let p = (g.random() % deployments[d].pods.len() as u64) as usize;
            let at = base + g.random() % 900 * MS;
            let (node, container) = {
                let pod = &deployments[d].pods[p];
                (pod.node, container_id(&pod.container))
            };
            let process = g.exec(node, at, &container);
            let exit_at = at + (g.random() % 80 + 1) * MS;
            g.exit(node, exit_at, process, 0, &container);
        }
        // An OOM kill: kill → exit → container exit → restart under a new container id.
        if shape.oom_every_seconds > 0 && second % shape.oom_every_seconds == 0 {
            let d = (g.random() % deployments.len() as u64) as usize;
            let p = (g.random() % deployments[d].pods.len() as u64) as usize;
            let at = base + 500 * MS;
            let (node, container, entity, uid, old) = {
                let pod = &deployments[d].pods[p];
                (
                    pod.node,
                    container_id(&pod.container),
                    pod.entity.clone(),
                    pod.uid.clone(),
                    pod.container.clone(),
                )
            };
            let fresh = g.container_record(at + 200 * MS, &entity, &uid);
            let restarted = g.exec(node, at + 210 * MS, &container_id(&fresh));
            let killed = std::mem::replace(&mut deployments[d].pods[p].main, restarted);
            g.fact(
                "kernel",
                node,
                at,
                FactPayload::OomKill(OomKill {
                    pid: killed.pid,
                    start_ns: killed.start,
                    comm: "app".into(),
                    container_id: Some(container.as_str().into()),
                    pod_uid: Some(uid.clone()),
                    memcg: format!("/kubepods/burstable/pod{uid}/{container}"),
                    rss_pages: 65_536,
                }),
            );
            g.exit(node, at + 3 * MS, killed, 9, &container);
            let restarts = deployments[d].pods[p].restarts + 1;
            g.fact(
                "cri",
                node,
                at + 30 * MS,
                FactPayload::ContainerExit(ContainerExit {
                    container_id: container.into(),
                    container_name: "app".into(),
                    pod: Some(entity),
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    restart_count: restarts,
                }),
            );
            g.state(at + 200 * MS, -1, old);
            g.state(at + 200 * MS, 1, fresh.clone());
            let pod = &mut deployments[d].pods[p];
            pod.container = fresh;
            pod.restarts = restarts;
        }
        // A rollout: a new ReplicaSet replaces every pod of one Deployment.
        if shape.rollout_every_seconds > 0 && second % shape.rollout_every_seconds == 0 {
            let d = (g.random() % deployments.len() as u64) as usize;
            let at = base + 700 * MS;
            let version = deployments[d].version + 1;
            let (entity, uid) = (deployments[d].entity.clone(), deployments[d].uid.clone());
            let replicaset = g.replicaset(at, &entity, &uid, version);
            let old_pods = std::mem::take(&mut deployments[d].pods);
            for (i, old) in old_pods.into_iter().enumerate() {
                let new = g.start_pod(
                    at + (i as u64 + 1) * 20 * MS,
                    &replicaset.0,
                    &replicaset.1,
                    i,
                );
                deployments[d].pods.push(new);
                let gone = at + (i as u64 + 1) * 20 * MS + 10 * MS;
                let old_container = container_id(&old.container);
                g.state(gone, -1, old.container);
                g.state(gone, -1, old.workload);
                g.exit(old.node, gone, old.main, 15, &old_container);
            }
            let old_rs = std::mem::replace(&mut deployments[d].replicaset, replicaset);
            g.state(at + 900 * MS, -1, old_rs.2);
            deployments[d].version = version;
        }
    }
    // Heartbeats: every source promises each 100 ms, until 3 s after the end.
    let end = START_NS + shape.seconds * NS_PER_S + 3 * NS_PER_S;
    let mut sources = vec![("kubernetes".to_string(), "cluster".to_string())];
    for node in 0..shape.nodes {
        sources.push(("kernel".into(), format!("node-{node}")));
        sources.push(("cri".into(), format!("node-{node}")));
    }
    let mut beat = START_NS + 100 * MS;
    while beat <= end {
        for (source, node) in &sources {
            generator.out.push((beat, 1, heartbeat(source, node, beat)));
        }
        beat += 100 * MS;
    }
    generator
        .out
        .sort_by_key(|(time, order, _)| (*time, *order));
    generator
        .out
        .into_iter()
        .map(|(_, _, observation)| observation)
        .collect()
}
