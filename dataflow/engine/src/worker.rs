//! One timely worker: reads its input channel, advances event time, runs the rules.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input, InputSession};
use tapio_model::{ClosedBatch, Correlation, Fact, Observation, StateRecord, TimeNs};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::clock::{Membership, SourceChange, Tick, TickClock, Watermark};
use crate::output::{Horizon, emit_closed_ticks};
use crate::progress::TakenIn;
use crate::router::{Ingest, WorkerReceiver};
use crate::rules::{self, Rule, RuleInputs};
use crate::{EngineSettings, WorkerReport};

/// Longest an idle worker sleeps before it looks at its input channel and its peers' messages
/// again. The router wakes it when it sends, but not every message from another worker does,
/// so this stays short: at 50 ms the two-worker spine benchmark lost a quarter of its
/// throughput.
const IDLE_PARK: Duration = Duration::from_millis(1);

/// Observations taken from the channel before the worker steps the dataflow again.
const INGEST_BUDGET: usize = 16 * 1024;

/// Builds the correlation graph over the fact and state collections: every enabled rule, over
/// inputs they share.
pub(crate) fn correlate<'scope, 'rule>(
    facts: VecCollection<'scope, Tick, Fact, isize>,
    state: VecCollection<'scope, Tick, StateRecord, isize>,
    rules: impl IntoIterator<Item = &'rule dyn Rule>,
    settings: &EngineSettings,
) -> VecCollection<'scope, Tick, Correlation, isize> {
    let scope = facts.scope();
    let inputs = RuleInputs::new(
        facts,
        state,
        TickClock::new(settings.tick_ms),
        &settings.correlation,
    );
    let outputs: Vec<_> = rules
        .into_iter()
        .map(|rule| {
            let built = rule.build(&inputs);
            inputs.add_built(built.clone());
            built
        })
        .collect();
    let (_, empty) = scope.new_collection::<Correlation, isize>();
    empty.concatenate(outputs)
}

pub(crate) fn drive(
    worker: &mut Worker,
    input: WorkerReceiver,
    settings: &EngineSettings,
    out: mpsc::Sender<ClosedBatch>,
    horizon: Arc<Horizon>,
    emitted: Arc<AtomicU64>,
    (local, taken_in, counters): (usize, TakenIn, &crate::EngineCounters),
) -> WorkerReport {
    // From now on the router wakes this thread when it sends.
    let _ = input.thread.set(std::thread::current());
    let mut input = input.channel;
    let clock = TickClock::new(settings.tick_ms);
    let rules = rules::enabled(&settings.correlation);
    let (mut facts_in, mut state_in, probe) = worker.dataflow::<Tick, _, _>(|scope| {
        let (facts_in, facts) = scope.new_collection::<Fact, isize>();
        let (state_in, state) = scope.new_collection::<StateRecord, isize>();
        let (probe, correlations) =
            correlate(facts, state, rules.iter().map(AsRef::as_ref), settings).probe();
        emit_closed_ticks(correlations, out, horizon.clone(), emitted);
        (facts_in, state_in, probe)
    });

    let mut intake = Intake::new(settings);
    let max_lag = clock.tick_ms().saturating_mul(settings.max_inflight_ticks);
    let end = loop {
        let mut taken = 0;
        let mut end = None;
        let mut mark = None;
        while taken < INGEST_BUDGET {
            match input.try_recv() {
                Ok(Ingest::Batch(batch)) => {
                    taken += batch.len();
                    for observation in batch {
                        intake.take(
                            observation,
                            |fact| rules.iter().any(|rule| rule.reads(fact)),
                            (&mut facts_in, &mut state_in),
                            local == 0,
                        );
                    }
                }
                Ok(Ingest::Mark(position)) => mark = Some(position),
                Ok(Ingest::End { last_ns }) => {
                    end = Some(intake.end_at(last_ns));
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    end = Some(intake.end_at_latest_promise());
                    break;
                }
            }
        }
        let target = intake.input_tick();
        if target > *facts_in.time() {
            facts_in.advance_to(target);
            state_in.advance_to(target);
        }
        facts_in.flush();
        state_in.flush();
        if let Some(position) = mark {
            // Everything before the mark is now in the flushed input sessions.
            taken_in.record(local, position);
        }
        counters.publish(local, &intake.report, intake.input_tick());
        if let Some(end) = end {
            break end;
        }
        // Keep at most `max_inflight_ticks` of event time in flight, so memory stays flat when
        // the input runs far ahead (a replay).
        // While waiting, park rather than spin: the work that moves the probe may belong to
        // another worker on the same core, and messages from it wake this one.
        let behind = facts_in.time().saturating_sub(max_lag);
        while probe.less_than(&behind) {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        // With nothing new to read, sleep until the router sends or `IDLE_PARK` passes.
        let park = if taken == 0 {
            Some(IDLE_PARK)
        } else {
            Some(Duration::ZERO)
        };
        worker.step_or_park(park);
    };

    // Report everything up to `end`, then let the dataflow wind down.
    horizon.set(end);
    let inputs = (&mut facts_in, &mut state_in);
    wind_down(
        worker,
        inputs,
        &probe,
        end + clock.tick_ms(),
        Some(Duration::ZERO),
    );
    let mut report = intake.into_report();
    report.last_tick = end;
    report
}

/// Closes the inputs at `close` and steps the worker (parking up to `park` between steps)
/// until the output has passed it: every tick before `close` is then reported.
pub(crate) fn wind_down(
    worker: &mut Worker,
    (facts_in, state_in): (
        &mut InputSession<Tick, Fact, isize>,
        &mut InputSession<Tick, StateRecord, isize>,
    ),
    probe: &ProbeHandle<Tick>,
    close: Tick,
    park: Option<Duration>,
) {
    if close > *facts_in.time() {
        facts_in.advance_to(close);
        state_in.advance_to(close);
    }
    facts_in.flush();
    state_in.flush();
    while probe.less_than(&close) {
        worker.step_or_park(park);
    }
}

/// Counts a retirement or rejoin; logs it when `log` (one worker per process logs, since every
/// worker decides the same).
fn count_and_log(report: &mut WorkerReport, change: &SourceChange, log: bool) {
    match change.membership {
        Membership::Retired => {
            report.sources_retired += 1;
            if log {
                tracing::warn!(
                    source = %change.source,
                    node = %change.node,
                    last_heard_ns = change.last_heard_ns,
                    others_at_ns = change.at_ns,
                    "Retired a silent source: event time no longer waits for it."
                );
            }
        }
        Membership::Rejoined => {
            report.sources_rejoined += 1;
            if log {
                tracing::info!(
                    source = %change.source,
                    node = %change.node,
                    at_ns = change.at_ns,
                    silent_since_ns = change.last_heard_ns,
                    "A retired source speaks again and holds event time again."
                );
            }
        }
    }
}

/// The input sessions of one worker's dataflow: facts and state.
pub(crate) type Sessions<'a> = (
    &'a mut InputSession<Tick, Fact, isize>,
    &'a mut InputSession<Tick, StateRecord, isize>,
);

/// How a worker takes observations in: each fact and state update enters at its own tick, or at
/// the current input tick if it is late (and is counted late); facts no rule reads are counted
/// and kept out; heartbeats move the [`Watermark`]. The rule harness takes observations in
/// through this too, so a rule sees exactly what it sees in the engine.
pub(crate) struct Intake {
    clock: TickClock,
    watermark: Watermark,
    report: WorkerReport,
}

impl Intake {
    /// Nothing taken in yet, with the clock, lateness and idle timeout of `settings`.
    pub(crate) fn new(settings: &EngineSettings) -> Intake {
        let clock = TickClock::new(settings.tick_ms);
        Intake {
            clock,
            watermark: Watermark::new(clock, settings.lateness_ns)
                .with_idle_timeout(settings.source_idle_timeout_ns),
            report: WorkerReport::default(),
        }
    }

    /// Takes one observation into `sessions`; returns the tick it entered at, or `None` for a
    /// heartbeat and for a fact that `reads` rejects. `log`: whether this worker logs
    /// retirements and rejoins.
    pub(crate) fn take(
        &mut self,
        observation: Observation,
        reads: impl Fn(&Fact) -> bool,
        (facts_in, state_in): Sessions<'_>,
        log: bool,
    ) -> Option<Tick> {
        match observation {
            Observation::Fact(fact) => {
                let tick = self.on_time(fact.time_ns);
                self.report.facts += 1;
                if reads(&fact) {
                    facts_in.update_at(fact, tick, 1);
                    Some(tick)
                } else {
                    self.report.facts_unread += 1;
                    None
                }
            }
            Observation::State(update) => {
                let tick = self.on_time(update.time_ns);
                self.report.state_updates += 1;
                state_in.update_at(update.record, tick, isize::from(update.diff));
                Some(tick)
            }
            Observation::Heartbeat(heartbeat) => {
                self.report.heartbeats += 1;
                self.watermark.observe(&heartbeat);
                for change in self.watermark.take_changes() {
                    count_and_log(&mut self.report, &change, log);
                }
                None
            }
        }
    }

    /// The tick the inputs may advance to.
    pub(crate) fn input_tick(&self) -> Tick {
        self.watermark.input_tick()
    }

    /// The last tick to report when the stream ends with `last_ns` as its latest event time.
    pub(crate) fn end_at(&self, last_ns: TimeNs) -> Tick {
        self.clock.tick_of(last_ns).max(self.input_tick())
    }

    /// The last tick to report when the input goes away without an end marker.
    fn end_at_latest_promise(&self) -> Tick {
        self.watermark.latest_promise().max(self.input_tick())
    }

    /// What was taken in (`last_tick` left for the caller).
    pub(crate) fn into_report(self) -> WorkerReport {
        self.report
    }

    /// The tick an observation at `time_ns` enters at: its own, or the current input tick if
    /// it is late.
    fn on_time(&mut self, time_ns: TimeNs) -> Tick {
        let own = self.clock.tick_of(time_ns);
        let now = self.watermark.input_tick();
        if own < now {
            self.report.late += 1;
            now
        } else {
            own
        }
    }
}
