//! A harness that runs **one** rule (or, with [`RuleHarness::from_tables`], a rule with the
//! earlier rules it builds on) over a scripted stream of observations, with nothing else
//! around it: no [`crate::Engine`], no [`crate::Router`], no output channel. Closed batches are
//! collected in memory, so a test may span any number of ticks. A rule that builds on another
//! rule's correlations runs after it ([`RuleHarness::after`]), as in [`crate::rules::TABLE`].
//!
//! The rule sees exactly what it sees in the engine: observations are taken in by the same code
//! as a worker's ([`crate::TickClock`] ticks; a fact or state update that arrives behind the
//! watermark, the minimum heartbeat minus the lateness, is clamped to the input tick and counted
//! late; facts the rule does not [`Rule::reads`] are kept out), and the stream ends as it does
//! when the router sends its end marker: every tick up to the latest event time in the stream is
//! reported, nothing later. Heartbeats are optional: without them event time does not advance
//! until the end, as in the engine, and nothing is late.
//!
//! With more than one worker ([`RuleHarness::workers`]), facts and state updates are dealt out
//! among the workers and every worker sees every heartbeat, as the router does; the output is
//! the same for any number of workers.
//!
//! ```
//! use tapio_config::CorrelationConfig;
//! use tapio_dataflow::harness::RuleHarness;
//! use tapio_dataflow::rules::ownership;
//! use tapio_model::{
//!     FactId, Heartbeat, Observation, OwnerRef, StateObject, StateRecord, StateUpdate,
//!     WorkloadObject,
//! };
//!
//! const T0: u64 = 1_767_225_600_000_000_000;
//! const SECOND: u64 = 1_000_000_000;
//! // Pod p is owned by ReplicaSet r; `diff` -1 retracts the link.
//! let link = |time_ns, diff| {
//!     Observation::State(StateUpdate {
//!         time_ns,
//!         diff,
//!         record: StateRecord {
//!             evidence: FactId::new("kubernetes", "n", 1),
//!             since_ns: T0,
//!             object: StateObject::Workload(WorkloadObject {
//!                 entity: "pod/a/p".parse().unwrap(),
//!                 uid: "uid-p".into(),
//!                 owner: Some(OwnerRef {
//!                     entity: "replicaset/a/r".parse().unwrap(),
//!                     uid: "uid-r".into(),
//!                 }),
//!                 node: None,
//!             }),
//!         },
//!     })
//! };
//! let beat = |upto_ns| {
//!     Observation::Heartbeat(Heartbeat {
//!         source: "kubernetes".into(),
//!         node: "n".into(),
//!         upto_ns,
//!     })
//! };
//! let harness = RuleHarness::from_table(ownership::from_config, &CorrelationConfig::default())
//!     .expect("ownership is enabled by default");
//! let run = harness
//!     .run(vec![link(T0, 1), beat(T0 + SECOND), link(T0 + 3 * SECOND, -1), beat(T0 + 4 * SECOND)])
//!     .unwrap();
//! // One closed batch when the link appears, one when it goes away.
//! let shape: Vec<(u64, i64)> = run.changes().map(|(time, diff, _)| (time - T0, diff)).collect();
//! assert_eq!(shape, vec![(0, 1), (3 * SECOND, -1)]);
//! // What the rule holds at the end of the first tick: the pod's chain, up to its owner.
//! let held = run.held_at(T0 / 1_000_000);
//! let (correlation, count) = held.iter().next().unwrap();
//! assert_eq!((correlation.root_cause.to_string(), *count), ("replicaset/a/r".into(), 1));
//! // The link's retraction arrived on time: nothing was clamped.
//! assert_eq!(run.report.late, 0);
//! assert_eq!(run.entered[2], Some((T0 + 3 * SECOND) / 1_000_000));
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::input::Input;
use tapio_config::{CorrelationConfig, TapioConfig};
use tapio_model::{ClosedBatch, Correlation, Fact, Observation, StateRecord, TimeNs};
use timely::worker::Worker;

use crate::clock::{Tick, TickClock};
use crate::rules::{MakeRule, Rule, RuleInputs};
use crate::worker::{Intake, wind_down};
use crate::{EngineError, EngineSettings, WorkerReport};

/// Longest a worker parks while it waits for its peers: a spinning worker could keep a peer on
/// the same core from running.
const PARK: Option<Duration> = Some(Duration::from_millis(1));

/// Runs one rule over scripted observations (see the [module documentation](self)).
#[derive(Clone)]
pub struct RuleHarness {
    rule: Arc<dyn Rule>,
    upstream: Arc<Vec<Box<dyn Rule>>>,
    upstream_output: bool,
    settings: Arc<EngineSettings>,
    workers: usize,
}

/// What one run of a rule produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRun {
    /// The rule's output, one batch per closed tick that changed anything, in tick order; as
    /// the engine hands them to its sinks (consolidated, sorted, no zero diffs).
    pub batches: Vec<ClosedBatch>,
    /// For each observation, in the order given: the tick it entered the dataflow at (its own
    /// tick, or later if it arrived late), or `None` for a heartbeat and for a fact no rule of
    /// the harness reads.
    pub entered: Vec<Option<Tick>>,
    /// What was taken in, summed over the workers as [`crate::Engine::join`] sums them;
    /// `last_tick` is the last tick reported.
    pub report: WorkerReport,
}

impl RuleHarness {
    /// A harness for `rule`, with the engine settings (tick, lateness, idle timeout) and rule
    /// settings of `config`, on one worker.
    pub fn new(rule: Box<dyn Rule>, config: &CorrelationConfig) -> RuleHarness {
        let settings = EngineSettings::from_config(&TapioConfig {
            correlation: config.clone(),
            ..TapioConfig::default()
        });
        RuleHarness {
            rule: Arc::from(rule),
            upstream: Arc::new(Vec::new()),
            upstream_output: false,
            settings: Arc::new(settings),
            workers: 1,
        }
    }

    /// Runs `upstream` before the rule, in the order given, as earlier entries of
    /// [`crate::rules::TABLE`] run: the rule reads their correlations
    /// ([`crate::rules::RuleInputs::correlations_of`]), and their facts are taken in too; only
    /// the rule's own output is collected.
    #[must_use]
    pub fn after(mut self, upstream: Vec<Box<dyn Rule>>) -> RuleHarness {
        self.upstream = Arc::new(upstream);
        self
    }

    /// Collects the output of the rules given to [`RuleHarness::after`] too, for a test that
    /// checks the rule against what they concluded at every tick.
    #[must_use]
    pub fn with_upstream_output(mut self) -> RuleHarness {
        self.upstream_output = true;
        self
    }

    /// A harness for the last rule of `makes`, built after the others in the order given (as
    /// [`crate::rules::TABLE`] orders them), so that a rule that builds on another's
    /// correlations ([`crate::rules::RuleInputs::correlations_of`]) runs with it; the output is
    /// all of theirs. `None` when `config` disables any of them.
    pub fn from_tables(makes: &[MakeRule], config: &CorrelationConfig) -> Option<RuleHarness> {
        let (last, earlier) = makes.split_last()?;
        let upstream = earlier
            .iter()
            .map(|make| make(config))
            .collect::<Option<Vec<_>>>()?;
        Some(
            RuleHarness::from_table(*last, config)?
                .after(upstream)
                .with_upstream_output(),
        )
    }

    /// A harness for the rule `make` makes from `config` (an entry of [`crate::rules::TABLE`]),
    /// or `None` when `config` disables it.
    pub fn from_table(make: MakeRule, config: &CorrelationConfig) -> Option<RuleHarness> {
        make(config).map(|rule| RuleHarness::new(rule, config))
    }

    /// Runs on `workers` timely worker threads (at least 1) instead of one.
    #[must_use]
    pub fn workers(mut self, workers: usize) -> RuleHarness {
        self.workers = workers.max(1);
        self
    }

    /// The tick clock the rule runs on.
    pub fn clock(&self) -> TickClock {
        TickClock::new(self.settings.tick_ms)
    }

    /// Runs the rule over `observations`, taken in the order given, and collects its closed
    /// batches up to the latest event time among them.
    ///
    /// With one worker the dataflow runs on the calling thread, and a panic in the rule
    /// propagates.
    ///
    /// # Errors
    /// With more than one worker: timely cannot start its threads, or a worker panicked.
    pub fn run(
        &self,
        observations: impl IntoIterator<Item = Observation>,
    ) -> Result<RuleRun, EngineError> {
        let observations: Arc<Vec<Observation>> = Arc::new(observations.into_iter().collect());
        let keep = self.upstream_output;
        let parts = if self.workers == 1 {
            let (rule, settings) = (Arc::clone(&self.rule), Arc::clone(&self.settings));
            let upstream = Arc::clone(&self.upstream);
            let observations = Arc::clone(&observations);
            vec![timely::execute_directly(move |worker| {
                drive(
                    worker,
                    (rule.as_ref(), &upstream, keep),
                    &settings,
                    &observations,
                )
            })]
        } else {
            let (rule, settings) = (Arc::clone(&self.rule), Arc::clone(&self.settings));
            let upstream = Arc::clone(&self.upstream);
            let shared = Arc::clone(&observations);
            let guards = timely::execute(timely::Config::process(self.workers), move |worker| {
                drive(worker, (rule.as_ref(), &upstream, keep), &settings, &shared)
            })
            .map_err(|reason| EngineError::Start { reason })?;
            guards
                .join()
                .into_iter()
                .map(|part| part.map_err(|reason| EngineError::Worker { reason }))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(RuleRun::from_parts(parts, observations.len()))
    }
}

impl std::fmt::Debug for RuleHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleHarness")
            .field("rule", &self.rule.name())
            .field(
                "after",
                &self
                    .upstream
                    .iter()
                    .map(|rule| rule.name())
                    .collect::<Vec<_>>(),
            )
            .field("settings", &self.settings)
            .field("workers", &self.workers)
            .finish()
    }
}

impl RuleRun {
    /// Every change, in order: `(end of its tick in ns, diff, correlation)`.
    pub fn changes(&self) -> impl Iterator<Item = (TimeNs, i64, &Correlation)> + '_ {
        self.batches.iter().flat_map(|batch| {
            batch
                .changes
                .iter()
                .map(|(correlation, diff)| (batch.time, *diff, correlation))
        })
    }

    /// The correlations current at the end of `tick` (every change up to it, summed; zeros
    /// left out). Each count is 1 for a rule that behaves.
    pub fn held_at(&self, tick: Tick) -> BTreeMap<Correlation, i64> {
        let mut held = BTreeMap::new();
        for (time, diff, correlation) in self.changes() {
            if time <= TickClock::to_ns(tick) {
                *held.entry(correlation.clone()).or_insert(0) += diff;
            }
        }
        held.retain(|_, count| *count != 0);
        held
    }

    /// Consolidates the workers' outputs into closed batches up to the last reported tick.
    fn from_parts(parts: Vec<Part>, observations: usize) -> RuleRun {
        let mut report = WorkerReport::default();
        let mut entered = vec![None; observations];
        let mut by_tick: BTreeMap<Tick, Vec<(Correlation, i64)>> = BTreeMap::new();
        for part in parts {
            report.facts += part.report.facts;
            report.facts_unread += part.report.facts_unread;
            report.state_updates += part.report.state_updates;
            report.late += part.report.late;
            // Every worker sees every heartbeat and decides the same about sources.
            report.heartbeats = report.heartbeats.max(part.report.heartbeats);
            report.sources_retired = report.sources_retired.max(part.report.sources_retired);
            report.sources_rejoined = report.sources_rejoined.max(part.report.sources_rejoined);
            report.last_tick = report.last_tick.max(part.report.last_tick);
            for (index, tick) in part.entered {
                entered[index] = Some(tick);
            }
            for (correlation, tick, diff) in part.output {
                by_tick
                    .entry(tick)
                    .or_default()
                    .push((correlation, diff as i64));
            }
        }
        let batches = by_tick
            .into_iter()
            .take_while(|(tick, _)| *tick <= report.last_tick)
            .filter_map(|(tick, mut changes)| {
                consolidate(&mut changes);
                (!changes.is_empty()).then(|| ClosedBatch {
                    time: TickClock::to_ns(tick),
                    changes,
                })
            })
            .collect();
        RuleRun {
            batches,
            entered,
            report,
        }
    }
}

/// What one worker produced: its output updates, the ticks its observations entered at (by
/// index), and its report.
struct Part {
    output: Vec<(Correlation, Tick, isize)>,
    entered: Vec<(usize, Tick)>,
    report: WorkerReport,
}

/// One worker's run: takes in its share of `observations` (its facts and state updates, every
/// heartbeat) as the engine's worker does, stepping the dataflow whenever the input time
/// advances, then closes every tick up to the end of the stream.
fn drive(
    worker: &mut Worker,
    (rule, upstream, upstream_output): (&dyn Rule, &[Box<dyn Rule>], bool),
    settings: &EngineSettings,
    observations: &[Observation],
) -> Part {
    let (index, peers) = (worker.index(), worker.peers());
    let (out_tx, out_rx) = mpsc::channel();
    let (mut facts_in, mut state_in, probe) = worker.dataflow::<Tick, _, _>(|scope| {
        let (facts_in, facts) = scope.new_collection::<Fact, isize>();
        let (state_in, state) = scope.new_collection::<StateRecord, isize>();
        let inputs = RuleInputs::new(
            facts,
            state,
            TickClock::new(settings.tick_ms),
            &settings.correlation,
        );
        let mut collected = Vec::new();
        for earlier in upstream {
            let built = earlier.build(&inputs);
            inputs.add_built(built.clone());
            if upstream_output {
                collected.push(built);
            }
        }
        collected.push(rule.build(&inputs));
        // Collect before probing, so that once the probe passes a tick its output is collected.
        let (probe, _) = differential_dataflow::collection::concatenate(scope, collected)
            .inspect(move |(correlation, tick, diff)| {
                // The receiver outlives the dataflow's input; a failed send cannot happen.
                let _ = out_tx.send((correlation.clone(), *tick, *diff));
            })
            .probe();
        (facts_in, state_in, probe)
    });
    let mut intake = Intake::new(settings);
    let mut entered = Vec::new();
    let mut last_ns = 0;
    for (position, observation) in observations.iter().enumerate() {
        last_ns = last_ns.max(observation.time_ns());
        let mine = matches!(observation, Observation::Heartbeat(_)) || position % peers == index;
        if !mine {
            continue;
        }
        let reads =
            |fact: &Fact| rule.reads(fact) || upstream.iter().any(|earlier| earlier.reads(fact));
        let sessions = (&mut facts_in, &mut state_in);
        if let Some(tick) = intake.take(observation.clone(), reads, sessions, index == 0) {
            entered.push((position, tick));
        }
        let target = intake.input_tick();
        if target > *facts_in.time() {
            facts_in.advance_to(target);
            state_in.advance_to(target);
            facts_in.flush();
            state_in.flush();
            while probe.less_than(facts_in.time()) {
                worker.step_or_park(PARK);
            }
        }
    }
    // The end of the stream, as the router announces it: report up to its latest event time.
    let end = intake.end_at(last_ns);
    let inputs = (&mut facts_in, &mut state_in);
    wind_down(worker, inputs, &probe, end + settings.tick_ms.max(1), PARK);
    let mut report = intake.into_report();
    report.last_tick = end;
    Part {
        output: out_rx
            .try_iter()
            .filter(|(_, tick, _)| *tick <= end)
            .collect(),
        entered,
        report,
    }
}
