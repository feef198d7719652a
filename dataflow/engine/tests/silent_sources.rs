//! A node that stops heartbeating is retired from the watermark after the idle timeout, so the
//! output keeps advancing; when it speaks again it rejoins and holds the watermark again. The
//! decisions and the output are the same for any worker count and any arrival order within the
//! lateness bound. Each test drives the engine in-process with a scripted stream.

use std::time::Duration;

use tapio_dataflow::{ClusterLayout, Engine, EngineReport, EngineSettings, Router};
use tapio_model::{ClosedBatch, CorrelationKind, Heartbeat, Observation, TimeNs};

mod common;

use common::{SECOND, T0, timeline};

const HALF: TimeNs = SECOND / 2;

/// What a run produced: the batches closed while the stream was still open, those closed when
/// it ended, and the report.
struct Run {
    while_open: Vec<ClosedBatch>,
    at_end: Vec<ClosedBatch>,
    report: EngineReport,
}

impl Run {
    fn all(&self) -> Vec<ClosedBatch> {
        self.while_open
            .iter()
            .chain(&self.at_end)
            .cloned()
            .collect()
    }
}

/// Routes `stream` to `workers` workers and keeps the stream open until a batch with an OOM
/// sequence has closed or `wait` has passed; then ends the stream.
fn run(stream: &[Observation], workers: usize, settings: EngineSettings, wait: Duration) -> Run {
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel(1024);
    let (engine, inputs) =
        Engine::start(settings, ClusterLayout::single(workers), batches_tx).expect("engine starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let while_open = runtime.block_on(async {
        let mut router = Router::new(ClusterLayout::single(workers), inputs);
        for observation in stream {
            assert!(router.route(observation.clone()).await);
        }
        assert!(router.flush().await);
        // The stream is still open: only the watermark can close ticks now.
        let mut while_open = Vec::new();
        let _ = tokio::time::timeout(wait, async {
            while let Some(batch) = batches.recv().await {
                let done = has_oom(&batch);
                while_open.push(batch);
                if done {
                    break;
                }
            }
        })
        .await;
        router.finish().await;
        while_open
    });
    let report = engine.join().expect("engine finishes");
    let mut at_end = Vec::new();
    while let Ok(batch) = batches.try_recv() {
        at_end.push(batch);
    }
    Run {
        while_open,
        at_end,
        report,
    }
}

fn has_oom(batch: &ClosedBatch) -> bool {
    batch
        .changes
        .iter()
        .any(|(c, d)| c.kind == CorrelationKind::OomRestart && *d > 0)
}

/// Times (relative to `T0`) of the ticks in which an OOM sequence appeared.
fn oom_times(batches: &[ClosedBatch]) -> Vec<TimeNs> {
    batches
        .iter()
        .filter(|batch| has_oom(batch))
        .map(|batch| batch.time - T0)
        .collect()
}

fn beat(node: &str, at: TimeNs) -> Observation {
    Observation::Heartbeat(Heartbeat {
        source: "kernel".into(),
        node: node.into(),
        upto_ns: T0 + at,
    })
}

/// An OOM kill, the SIGKILL exit and the container exit, on `node`, from `at` (relative to
/// `T0`) to 20 ms later.
fn oom(node: &str, seq: u64, at: TimeNs) -> Vec<Observation> {
    let container = format!("{node}-c{seq}");
    common::oom_sequence("kernel", node, seq, T0 + at, &container)
}

/// Heartbeats of `node` every 500 ms over `[from, to]` (relative to `T0`).
fn beats(node: &str, from: TimeNs, to: TimeNs) -> Vec<Observation> {
    (from..=to)
        .step_by(HALF as usize)
        .map(|at| beat(node, at))
        .collect()
}

/// Node `n2` heartbeats for 5 s and is never heard again; `n1` goes on for a minute and sees
/// an OOM sequence at 45 s.
fn a_node_dies() -> Vec<Observation> {
    let mut stream = beats("n1", 0, 60 * SECOND);
    stream.extend(beats("n2", 0, 5 * SECOND));
    stream.extend(oom("n1", 1, 45 * SECOND));
    timeline(stream)
}

#[test]
fn a_node_that_disappears_does_not_freeze_the_output() {
    let stream = a_node_dies();
    let run_ = run(
        &stream,
        2,
        EngineSettings::default(),
        Duration::from_secs(60),
    );
    // The sequence at 45 s closed while the stream was still open: n2 was retired (30 s after
    // its last heartbeat, decided once n1's promise was final) and n1 alone moved event time.
    assert_eq!(
        oom_times(&run_.while_open),
        [45 * SECOND + 100_000_000],
        "the OOM sequence must close before the stream ends"
    );
    assert_eq!(run_.report.sources_retired, 1);
    assert_eq!(run_.report.sources_rejoined, 0);
    assert_eq!(run_.report.late, 0);

    // Without retirement n2 holds event time at 3 s: the sequence closes only when the stream
    // ends.
    let settings = EngineSettings {
        source_idle_timeout_ns: None,
        ..EngineSettings::default()
    };
    let frozen = run(&stream, 2, settings, Duration::from_secs(1));
    assert!(oom_times(&frozen.while_open).is_empty());
    assert_eq!(oom_times(&frozen.at_end), [45 * SECOND + 100_000_000]);
    assert_eq!(frozen.report.sources_retired, 0);
    // Either way the same output in the end.
    assert_eq!(frozen.all(), run_.all());
}

/// Node `n2` is cut off after 5 s. From 40 s on it catches up, running 10 s behind `n1`: first
/// an OOM sequence it saw at 20 s (kept while it was cut off), then heartbeats from 40 s, and an
/// OOM sequence at 60 s.
fn a_node_is_cut_off_and_comes_back() -> Vec<Observation> {
    let mut on_time = beats("n1", 0, 100 * SECOND);
    on_time.extend(beats("n2", 0, 5 * SECOND));
    // Everything n2 sends after it comes back, keyed by the n1 heartbeat it arrives before.
    let mut behind: Vec<(TimeNs, Observation)> = Vec::new();
    behind.extend(
        oom("n2", 1, 20 * SECOND)
            .into_iter()
            .map(|o| (50 * SECOND, o)),
    );
    behind.extend(
        oom("n2", 10, 60 * SECOND)
            .into_iter()
            .map(|o| (70 * SECOND, o)),
    );
    behind.extend(
        beats("n2", 40 * SECOND, 90 * SECOND)
            .into_iter()
            .map(|o| (o.time_ns() - T0 + 10 * SECOND, o)),
    );
    let mut stream = Vec::new();
    for observation in timeline(on_time) {
        if let Observation::Heartbeat(beat) = &observation
            && beat.node == "n1"
        {
            let at = beat.upto_ns - T0;
            // n2's observations due before this heartbeat, in the order n2 sent them.
            let (due, later): (Vec<_>, Vec<_>) = behind.into_iter().partition(|(t, _)| *t <= at);
            behind = later;
            let mut due: Vec<Observation> = due.into_iter().map(|(_, o)| o).collect();
            due = timeline(due);
            stream.extend(due);
        }
        stream.push(observation);
    }
    assert!(behind.is_empty());
    stream
}

#[test]
fn a_node_that_comes_back_rejoins_and_holds_the_watermark_again() {
    let stream = a_node_is_cut_off_and_comes_back();
    let mut reference = None;
    for workers in [1, 2] {
        let run_ = run(&stream, workers, EngineSettings::default(), Duration::ZERO);
        let report = &run_.report;
        assert_eq!(
            (report.sources_retired, report.sources_rejoined),
            (1, 1),
            "{workers} workers"
        );
        // The sequence from 20 s arrives after n2 was retired and event time moved on: its
        // three facts are late and clamped to the input time then (47.5 s). The sequence from
        // 60 s arrives 10 s behind n1 too, but by then n2 has rejoined and holds the input
        // time: it is on time. (Had n2 stayed retired, it would be late as well; had it never
        // been retired, nothing would be late.)
        assert_eq!(report.late, 3, "{workers} workers");
        let all = run_.all();
        assert_eq!(
            oom_times(&all),
            [47_500_000_000, 60 * SECOND + 100_000_000],
            "{workers} workers"
        );
        match &reference {
            None => reference = Some(all),
            Some(one) => assert!(*one == all, "{workers} workers differ from 1"),
        }
    }
}

/// `n2` dies at 5 s, `n3` is silent from 20 s to 60 s and comes back on time; OOM sequences on
/// n1 at 45 s, on n3 at 70 s.
fn two_nodes_go_silent() -> Vec<Observation> {
    let mut stream = beats("n1", 0, 90 * SECOND);
    stream.extend(beats("n2", 0, 5 * SECOND));
    stream.extend(beats("n3", 0, 20 * SECOND));
    stream.extend(beats("n3", 60 * SECOND, 90 * SECOND));
    stream.extend(oom("n1", 1, 45 * SECOND));
    stream.extend(oom("n3", 1, 70 * SECOND));
    timeline(stream)
}

/// Delays every observation by up to just under the 2 s lateness (in event time) and sorts by
/// arrival; each node's heartbeats stay in order.
fn reorder_within_lateness(stream: &[Observation], seed: u64) -> Vec<Observation> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut last_beat = std::collections::BTreeMap::new();
    let mut arrivals: Vec<(TimeNs, usize)> = Vec::with_capacity(stream.len());
    for (index, observation) in stream.iter().enumerate() {
        let mut arrival = observation.time_ns() + next() % (2 * SECOND - 1);
        if let Observation::Heartbeat(beat) = observation {
            let previous = last_beat.entry(beat.node.clone()).or_insert(0);
            arrival = arrival.max(*previous);
            *previous = arrival;
        }
        arrivals.push((arrival, index));
    }
    arrivals.sort_unstable();
    arrivals
        .into_iter()
        .map(|(_, index)| stream[index].clone())
        .collect()
}

#[test]
fn retirement_is_the_same_for_any_worker_count_and_arrival_order_within_the_lateness() {
    let stream = two_nodes_go_silent();
    let reference = run(&stream, 1, EngineSettings::default(), Duration::ZERO);
    assert_eq!(
        (
            reference.report.sources_retired,
            reference.report.sources_rejoined,
            reference.report.late
        ),
        (2, 1, 0)
    );
    assert_eq!(
        oom_times(&reference.all()),
        [45 * SECOND + 100_000_000, 70 * SECOND + 100_000_000]
    );
    for (seed, workers) in [(0, 2), (7, 1), (7, 2), (1_000_003, 2), (99_991, 3)] {
        let stream = if seed == 0 {
            stream.clone()
        } else {
            let shuffled = reorder_within_lateness(&stream, seed);
            assert_ne!(shuffled, stream);
            shuffled
        };
        let other = run(&stream, workers, EngineSettings::default(), Duration::ZERO);
        let report = &other.report;
        assert_eq!(
            (report.sources_retired, report.sources_rejoined, report.late),
            (2, 1, 0),
            "seed {seed}, {workers} workers"
        );
        assert!(
            other.all() == reference.all(),
            "seed {seed}, {workers} workers: the output differs"
        );
    }
}
