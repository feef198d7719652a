//! Watch ingestion benchmark of the kubernetes collector (harness = false).
//!
//! Run: `cargo bench -p tapio-sources-kubernetes --bench watch_ingest` (add `-- 50000` for
//! another pod count; the default is 10 000).
//!
//! Pods are copies of a real Pod recorded by kspan (`tests/fixtures/k8s/kspan/`, with its
//! managedFields, spec and status), each with its own name, uid and container id, decoded from
//! JSON exactly as a watch event body is. Each phase feeds watch events through the source's
//! own path (decode → convert → tracker → bounded channel of the engine's default capacity,
//! 10 000, drained by another thread as the dataflow's router would) and reports:
//!
//! - **initial list**: `Init`, one `InitApply` per pod, `InitDone`;
//! - **churn**: one `Apply` per pod, half of them status-only changes (no record changes, so
//!   nothing is sent), half a container restart (new container id: retract + insert);
//! - **re-list**: `Init`, `InitApply` for 90% of the pods (5% of them changed), `InitDone`;
//!   convergence = time until the last retraction for the 10% not re-listed is sent;
//! - **memory**: live heap held by the tracker per 1 000 pods, measured with a counting
//!   allocator after the initial list (the decoded Pods themselves are dropped after
//!   conversion, as in the source).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tapio_model::{FactId, Observation};
use tapio_sources_kubernetes::{StateTracker, WatchedKind};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY-free wrapper: delegates to the system allocator and counts live bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The first running Pod of the kspan fixture, as JSON.
fn template() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/k8s/kspan/deployment-2-pods.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    for document in text.split("\n---\n") {
        let body = document
            .trim_start_matches("---\n")
            .split_once('\n')
            .map_or("", |(_, body)| body);
        let value: serde_json::Value = match serde_saphyr::from_str(body) {
            Ok(value) => value,
            Err(_) => continue,
        };
        if value["kind"] == "Pod"
            && value["status"]["containerStatuses"][0]["containerID"].is_string()
        {
            return value;
        }
    }
    panic!("no Pod in {}", path.display())
}

/// Watch event bodies: pod `i` with container generation `generation`.
fn body(template: &serde_json::Value, i: usize, generation: usize) -> Vec<u8> {
    let mut pod = template.clone();
    pod["metadata"]["name"] = format!("px-7df978b9bf-{i:05}").into();
    pod["metadata"]["uid"] = format!("00000000-0000-4000-8000-{i:012}").into();
    pod["status"]["containerStatuses"][0]["containerID"] =
        format!("containerd://{i:032}{generation:032}").into();
    pod["status"]["containerStatuses"][0]["restartCount"] = generation.into();
    serde_json::to_vec(&pod).expect("serialize")
}

struct Sink {
    tx: tokio::sync::mpsc::Sender<Observation>,
    drain: std::thread::JoinHandle<u64>,
}

fn sink() -> Sink {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Observation>(10_000);
    let drain = std::thread::spawn(move || {
        let mut count = 0u64;
        while let Some(observation) = rx.blocking_recv() {
            std::hint::black_box(&observation);
            count += 1;
        }
        count
    });
    Sink { tx, drain }
}

struct Run {
    tracker: StateTracker,
    seq: u64,
    sent: u64,
    updates: Vec<tapio_model::StateUpdate>,
}

impl Run {
    fn apply(&mut self, sink: &Sink, body: &[u8]) {
        let pod: Pod = serde_json::from_slice(body).expect("a pod");
        let key = pod.metadata.uid.clone().expect("uid");
        let records = pod.records().expect("records");
        drop(pod);
        let seq = &mut self.seq;
        self.tracker.apply(
            &key,
            records,
            1_800_000_000_000_000_000,
            &mut || {
                *seq += 1;
                FactId::new("kubernetes", "cluster", *seq)
            },
            &mut self.updates,
        );
        self.flush(sink);
    }

    fn flush(&mut self, sink: &Sink) {
        for update in self.updates.drain(..) {
            sink.tx
                .blocking_send(Observation::State(update))
                .expect("drain alive");
            self.sent += 1;
        }
    }
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    let pods: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let template = template();
    let initial: Vec<Vec<u8>> = (0..pods).map(|i| body(&template, i, 0)).collect();
    let churn: Vec<Vec<u8>> = (0..pods)
        .map(|i| body(&template, i, if i % 2 == 0 { 0 } else { 1 }))
        .collect();
    let relist: Vec<Vec<u8>> = (0..pods)
        .filter(|i| i % 10 != 0)
        .map(|i| {
            body(
                &template,
                i,
                if i % 20 == 1 {
                    2
                } else {
                    1 - (i % 2 == 0) as usize
                },
            )
        })
        .collect();
    let event_bytes = initial.iter().map(Vec::len).sum::<usize>() / pods;

    let sink = sink();
    let mut run = Run {
        tracker: StateTracker::new(),
        seq: 0,
        sent: 0,
        updates: Vec::new(),
    };
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    run.tracker.init();
    for body in &initial {
        run.apply(&sink, body);
    }
    run.tracker
        .init_done(1_800_000_000_000_000_000, &mut run.updates);
    run.flush(&sink);
    let list_time = started.elapsed();
    let list_sent = run.sent;
    let held = LIVE.load(Ordering::Relaxed) - before;

    let started = Instant::now();
    for body in &churn {
        run.apply(&sink, body);
    }
    let churn_time = started.elapsed();
    let churn_sent = run.sent - list_sent;

    let started = Instant::now();
    run.tracker.init();
    for body in &relist {
        run.apply(&sink, body);
    }
    run.tracker
        .init_done(1_800_000_000_000_000_001, &mut run.updates);
    run.flush(&sink);
    let relist_time = started.elapsed();
    let relist_sent = run.sent - list_sent - churn_sent;
    let tracked = run.tracker.len();
    drop(run.tracker);
    drop(sink.tx);
    let drained = sink.drain.join().expect("drain");
    assert_eq!(drained, list_sent + churn_sent + relist_sent);
    assert_eq!(tracked, pods - pods.div_ceil(10));

    println!("watch ingestion, {pods} pods (kspan Pod, {event_bytes} B of JSON per watch event)");
    println!();
    println!("| phase | watch events | updates sent | time | watch events/s | updates/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (phase, events, sent, time) in [
        ("initial list", pods, list_sent, list_time),
        (
            "churn (50% status-only)",
            churn.len(),
            churn_sent,
            churn_time,
        ),
        (
            "re-list (10% gone, 5% changed)",
            relist.len(),
            relist_sent,
            relist_time,
        ),
    ] {
        println!(
            "| {phase} | {events} | {sent} | {:.0} ms | {:.0} | {:.0} |",
            time.as_secs_f64() * 1e3,
            rate(events, time),
            rate(sent as usize, time)
        );
    }
    println!();
    println!(
        "source-side state after the initial list: {:.2} MiB for {pods} pods = {:.3} MiB per 1k pods",
        held as f64 / (1024.0 * 1024.0),
        held as f64 / (1024.0 * 1024.0) / (pods as f64 / 1000.0)
    );
    println!(
        "re-list convergence: {:.0} ms from Init to the last retraction sent",
        relist_time.as_secs_f64() * 1e3
    );
}
