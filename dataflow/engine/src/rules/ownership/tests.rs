//! The ownership rule against a walk from scratch over the links held at every tick, through
//! the rule harness, with links gained, changed and lost (cycles included) and state arriving
//! out of order within the lateness bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tapio_config::CorrelationConfig;
use tapio_model::{
    Basis, Confidence, Correlation, CorrelationKind, Detail, EntityId, FactId, Hop, Observation,
    Observed, OwnerRef, PodContainer, ProcessContainer, Relation, StateObject, StateRecord,
    StateUpdate, TimeNs, WorkloadObject,
};

use super::from_config;
use crate::clock::Tick;
use crate::harness::RuleHarness;
use crate::operators::oracle::{
    MS, Rng, T0, arrival_order, assert_every_tick, entry_ticks, heartbeats,
};

/// The state records held at `tick`: those whose updates that entered by then sum to a positive
/// count, a pod's container record's removal counting `container_grace` ticks after it entered.
pub(crate) fn state_at(
    arrived: &[Observation],
    entered: &[Option<Tick>],
    tick: Tick,
    container_grace: Tick,
) -> Vec<StateRecord> {
    let mut counts: BTreeMap<&StateRecord, i64> = BTreeMap::new();
    for (observation, at) in arrived.iter().zip(entered) {
        if let (Observation::State(update), Some(at)) = (observation, at)
            && at.saturating_add(
                if update.diff < 0 && matches!(update.record.object, StateObject::PodContainer(_)) {
                    container_grace
                } else {
                    0
                },
            ) <= tick
        {
            *counts.entry(&update.record).or_insert(0) += i64::from(update.diff);
        }
    }
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(record, _)| record.clone())
        .collect()
}

/// A link as the naive walk sees it, ordered as the rule orders links: owner, then the
/// evidence's time, observation and content.
type NaiveLink = (EntityId, TimeNs, FactId, Observed);

/// From scratch: every object's and container's chain of owners over `records`. From each child,
/// the chain follows the smallest link out of each entity it reaches, up to `max_depth`. The first hop
/// is the child, `start`, with its first link's evidence; each next hop is an owner,
/// `owned_by`, with the evidence of the link into it.
pub(crate) fn naive_chains(
    records: &[StateRecord],
    max_depth: u32,
) -> BTreeMap<EntityId, Vec<Hop>> {
    let mut links: Vec<(EntityId, NaiveLink)> = Vec::new();
    for record in records {
        let link = |parent: &EntityId, observed| {
            (
                parent.clone(),
                record.since_ns,
                record.evidence.clone(),
                observed,
            )
        };
        match &record.object {
            StateObject::Workload(object) => {
                if let Some(owner) = &object.owner {
                    links.push((
                        object.entity.clone(),
                        link(&owner.entity, Observed::OwnerReference),
                    ));
                }
            }
            StateObject::PodContainer(container) => {
                let child = EntityId::Container {
                    id: Arc::clone(&container.container_id),
                };
                let observed = Observed::PodContainer {
                    container_name: container.container_name.as_str().into(),
                };
                links.push((child, link(&container.pod, observed)));
            }
            _ => {}
        }
    }
    let children: BTreeSet<EntityId> = links.iter().map(|(child, _)| child.clone()).collect();
    let mut chains = BTreeMap::new();
    for child in children {
        let mut chain: Vec<NaiveLink> = Vec::new();
        let mut holder = child.clone();
        while chain.len() < max_depth as usize {
            let Some(smallest) = links
                .iter()
                .filter(|(c, _)| *c == holder)
                .map(|(_, link)| link)
                .min()
            else {
                break;
            };
            holder = smallest.0.clone();
            chain.push(smallest.clone());
        }
        let (_, time, fact_id, observed) = chain[0].clone();
        let mut hops = vec![Hop {
            entity: child.clone(),
            relation: Relation::Start,
            fact_id,
            time,
            observed,
        }];
        for (owner, time, fact_id, observed) in chain {
            hops.push(Hop {
                entity: owner,
                relation: Relation::OwnedBy,
                fact_id,
                time,
                observed,
            });
        }
        chains.insert(child, hops);
    }
    chains
}

/// From scratch: the ownership correlations over `records`, each once.
fn naive_ownership(records: &[StateRecord], max_depth: u32) -> BTreeMap<Correlation, i64> {
    naive_chains(records, max_depth)
        .into_values()
        .map(|hops| {
            let root = hops.last().map(|hop| hop.entity.clone()).expect("a hop");
            let depth = hops.len() as u32 - 1;
            let correlation = Correlation::new(
                CorrelationKind::Ownership,
                root,
                hops,
                Detail::Ownership { depth },
                Confidence {
                    percent: 100,
                    basis: vec![Basis::RecordedLinks],
                },
            );
            (correlation, 1)
        })
        .collect()
}

fn entity(text: &str) -> EntityId {
    text.parse().expect("entity")
}

/// A random history of ownership state for `seed`, in event time order, with heartbeats: objects
/// gaining, changing and losing owners (cycles and self-links included), containers moving
/// between pods, processes joining and leaving containers.
pub(crate) fn history(rng: &mut Rng, seq_base: u64) -> Vec<Observation> {
    let workloads: Vec<EntityId> = ["deployment/ns/d0", "deployment/ns/d1", "replicaset/ns/r0"]
        .into_iter()
        .chain([
            "replicaset/ns/r1",
            "replicaset/ns/r2",
            "pod/ns/p0",
            "pod/ns/p1",
        ])
        .chain(["pod/ns/p2", "pod/ns/p3"])
        .map(entity)
        .collect();
    let pods = &workloads[5..];
    let mut held: BTreeMap<u64, StateRecord> = BTreeMap::new();
    let mut stream = Vec::new();
    let mut time = T0;
    for seq in seq_base..seq_base + 70 {
        time += rng.below(8) * 100 * MS;
        // The child: a workload, a container or a process, by its slot.
        let slot = rng.below(15);
        if let Some(record) = held.remove(&slot) {
            stream.push(update(time, -1, record));
        }
        if rng.below(5) == 0 {
            continue;
        }
        let pick =
            |rng: &mut Rng, from: &[EntityId]| from[rng.below(from.len() as u64) as usize].clone();
        let object = match slot {
            0..=8 => StateObject::Workload(WorkloadObject {
                entity: workloads[slot as usize].clone(),
                uid: format!("uid-{slot}"),
                owner: (rng.below(5) > 0).then(|| OwnerRef {
                    entity: pick(rng, &workloads),
                    uid: "uid".into(),
                }),
                node: None,
            }),
            9..=12 => StateObject::PodContainer(PodContainer {
                pod: pick(rng, pods),
                pod_uid: "uid".into(),
                container_name: format!("app{}", rng.below(2)),
                container_id: format!("c{slot}").into(),
            }),
            _ => StateObject::ProcessContainer(ProcessContainer {
                process: EntityId::Process {
                    node: "n".into(),
                    pid: slot as u32,
                    start_ns: T0,
                },
                container_id: format!("c{}", 9 + rng.below(4)).into(),
                filename: "/bin/app".into(),
            }),
        };
        let record = StateRecord {
            evidence: FactId::new("kubernetes", "n", seq),
            since_ns: time,
            object,
        };
        stream.push(update(time, 1, record.clone()));
        held.insert(slot, record);
    }
    stream.extend(heartbeats(T0, time + 3_000 * MS, 500 * MS));
    stream.sort_by_key(|observation| {
        (
            observation.time_ns(),
            matches!(observation, Observation::Heartbeat(_)),
        )
    });
    stream
}

fn update(time_ns: TimeNs, diff: i8, record: StateRecord) -> Observation {
    Observation::State(StateUpdate {
        time_ns,
        diff,
        record,
    })
}

fn config(max_depth: u32) -> CorrelationConfig {
    let mut config = CorrelationConfig::default();
    config.engine.tick = Duration::from_millis(100);
    config.engine.lateness = Duration::from_secs(2);
    config.ownership.max_depth = max_depth;
    config.ownership.container_exit_grace = Duration::from_millis(CONTAINER_GRACE);
    config
}

/// How long a container stays linked to its pod after the pod stops listing it, ms (= ticks).
pub(crate) const CONTAINER_GRACE: Tick = 700;

/// At every closed tick, the rule holds exactly the chains a naive walk of the links held then
/// finds; state arrives out of order within the lateness bound.
#[test]
fn ownership_equals_a_walk_of_the_links_held_at_every_tick() {
    let (mut deep, mut cut, mut retracted, mut holding) = (0, 0, 0, 0);
    for seed in 1..=12 {
        let mut rng = Rng::new(seed);
        let max_depth = 1 + rng.below(4) as u32;
        let stream = history(&mut rng, 1);
        let lateness = 2_000 * MS;
        let arrived = arrival_order(&stream, |_| rng.below(lateness));
        let config = config(max_depth);
        let harness = RuleHarness::from_table(from_config, &config).expect("enabled");
        let clock = harness.clock();
        let run = harness.run(arrived.clone()).expect("run");
        // Within the lateness bound nothing is late: everything enters at its own tick.
        assert_eq!(run.report.late, 0, "seed {seed}");
        assert_eq!(
            run.entered,
            entry_ticks(&arrived, clock, lateness, |_| false)
        );
        let context = format!("seed {seed}, max depth {max_depth}");
        let seen = assert_every_tick(
            &run,
            clock,
            |tick| {
                naive_ownership(
                    &state_at(&arrived, &run.entered, tick, CONTAINER_GRACE),
                    max_depth,
                )
            },
            &context,
        );
        retracted += seen.retracted;
        holding += seen.ticks_holding;
        for (_, _, correlation) in run.changes() {
            assert!(
                !matches!(correlation.chain[0].entity, EntityId::Process { .. }),
                "{context}: a process got a chain of its own"
            );
            deep += usize::from(correlation.chain.len() >= 3);
            cut += usize::from(correlation.chain.len() == max_depth as usize + 1);
        }
    }
    // The histories exercised what the rule does: deep chains, chains cut at the depth bound,
    // retractions, and many ticks with something held.
    assert!(
        deep > 10 && cut > 10 && retracted > 20 && holding > 500,
        "{deep} {cut} {retracted} {holding}"
    );
}

/// The output does not depend on the arrival order within the lateness bound, nor on the number
/// of workers.
#[test]
fn ownership_does_not_depend_on_arrival_order_or_workers() {
    for seed in 21..=26 {
        let mut rng = Rng::new(seed);
        let stream = history(&mut rng, 1);
        let harness = RuleHarness::from_table(from_config, &config(3)).expect("enabled");
        let in_order = harness.run(stream.clone()).expect("run");
        assert!(in_order.batches.len() > 5, "seed {seed}");
        let shuffled = arrival_order(&stream, |_| rng.below(2_000 * MS));
        assert_ne!(shuffled, stream);
        let late_but_in_bound = harness.run(shuffled.clone()).expect("run");
        assert_eq!(late_but_in_bound.batches, in_order.batches, "seed {seed}");
        let two = harness.clone().workers(2).run(shuffled).expect("run");
        assert_eq!(two.batches, in_order.batches, "seed {seed}, 2 workers");
        assert_eq!(two.report.late, 0);
    }
}
