//! 10 000 rapid execs: every one is either seen or counted as dropped by the kernel; none
//! goes missing silently. Run once with a reader that keeps up, and once with a reader that
//! is blocked (a full output channel) so that the ring buffer overflows.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_model::{FactPayload, Observation};
use tapio_sources::{Source, SourceContext};
use tapio_sources_kernel::KernelSource;

const EXECS: usize = 10_000;
const BLOCKED_EXECS: usize = 3_000;
const EXEC_KIND: usize = 1;
const EXIT_KIND: usize = 3;

/// Runs /bin/true `n` times, one after the other, and returns the pids.
fn storm(n: usize) -> HashSet<u32> {
    let mut pids = HashSet::with_capacity(n);
    for _ in 0..n {
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .expect("spawn /bin/true");
        pids.insert(child.id());
        child.wait().expect("wait /bin/true");
    }
    pids
}

struct Tally {
    seen_exec: usize,
    seen_exit: usize,
}

fn tally(observations: &[Observation], pids: &HashSet<u32>) -> Tally {
    let mut seen_exec = HashSet::new();
    let mut seen_exit = HashSet::new();
    for observation in observations {
        let Observation::Fact(fact) = observation else {
            continue;
        };
        match &fact.payload {
            FactPayload::ProcessExec(e) if pids.contains(&e.pid) && e.filename == "/bin/true" => {
                seen_exec.insert(e.pid);
            }
            FactPayload::ProcessExit(e) if pids.contains(&e.pid) && e.comm == "true" => {
                seen_exit.insert(e.pid);
            }
            _ => {}
        }
    }
    Tally {
        seen_exec: seen_exec.len(),
        seen_exit: seen_exit.len(),
    }
}

async fn run(
    execs: usize,
    ring_buffer_bytes: u32,
    channel: usize,
    blocked: bool,
) -> (Tally, [u64; 8], u64) {
    let config = KernelCollectorConfig {
        ring_buffer_bytes,
        ..KernelCollectorConfig::default()
    };
    let source = KernelSource::new(&config).expect("valid config");
    let stats = source.stats();
    let (cx, mut rx) = SourceContext::for_test("kernel", "test-node", channel);
    let shutdown = cx.shutdown.clone();
    let task = tokio::spawn(Box::new(source).run(cx));
    let mut observations = Vec::new();
    while !stats.ready.load(Ordering::Relaxed) {
        assert!(!task.is_finished(), "source stopped early");
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Keep the channel empty until the storm, so "blocked" starts from the same place.
        while let Ok(observation) = rx.try_recv() {
            observations.push(observation);
        }
    }
    let before = stats.snapshot();

    let storm = tokio::task::spawn_blocking(move || storm(execs));
    let pids = if blocked {
        // Nobody reads: the channel fills, the source waits, the ring buffer overflows.
        storm.await.expect("storm")
    } else {
        let mut storm = storm;
        loop {
            tokio::select! {
                pids = &mut storm => break pids.expect("storm"),
                Some(observation) = rx.recv() => observations.push(observation),
            }
        }
    };
    // Read until everything the kernel kept has come through.
    let mut quiet_since = tokio::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(observation)) => {
                if matches!(observation, Observation::Fact(_)) {
                    quiet_since = tokio::time::Instant::now();
                }
                observations.push(observation);
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    shutdown.cancel();
    while let Some(observation) = rx.recv().await {
        observations.push(observation);
    }
    task.await.expect("no panic").expect("clean stop");
    let after = stats.snapshot();
    let dropped: [u64; 8] = std::array::from_fn(|i| after.dropped[i] - before.dropped[i]);
    assert_eq!(after.decode_errors, 0);
    (
        tally(&observations, &pids),
        dropped,
        after.records[EXEC_KIND] - before.records[EXEC_KIND],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_execs_add_up() {
    // A reader that keeps up. Drops are allowed (the machine is shared), but every exec is
    // either seen or counted as dropped.
    let (tally, dropped, _) = run(EXECS, 8 << 20, 65_536, false).await;
    let missing_exec = EXECS - tally.seen_exec;
    let missing_exit = EXECS - tally.seen_exit;
    println!(
        "reader keeps up: seen exec {} exit {}, dropped exec {} exit {}, missing exec {missing_exec} exit {missing_exit}",
        tally.seen_exec, tally.seen_exit, dropped[EXEC_KIND], dropped[EXIT_KIND]
    );
    assert!(
        missing_exec as u64 <= dropped[EXEC_KIND],
        "execs lost without a drop count"
    );
    assert!(
        missing_exit as u64 <= dropped[EXIT_KIND],
        "exits lost without a drop count"
    );

    // A blocked reader and a small ring buffer: most records are dropped, and counted.
    // 3000 execs are plenty to overflow 64 KiB (about 64 exec records).
    let (tally, dropped, read) = run(BLOCKED_EXECS, 1 << 16, 16, true).await;
    let missing_exec = BLOCKED_EXECS - tally.seen_exec;
    let missing_exit = BLOCKED_EXECS - tally.seen_exit;
    println!(
        "blocked reader: seen exec {} exit {}, dropped exec {} exit {}, missing exec {missing_exec} exit {missing_exit}, exec records read {read}",
        tally.seen_exec, tally.seen_exit, dropped[EXEC_KIND], dropped[EXIT_KIND]
    );
    assert!(
        dropped[EXEC_KIND] > 0,
        "a blocked reader must overflow a 64 KiB ring"
    );
    assert!(
        missing_exec as u64 <= dropped[EXEC_KIND],
        "execs lost without a drop count"
    );
    assert!(
        missing_exit as u64 <= dropped[EXIT_KIND],
        "exits lost without a drop count"
    );
    // Other processes on the machine also exec, so drops can exceed what we miss, but
    // seen + dropped covers the storm.
    assert!(tally.seen_exec as u64 + dropped[EXEC_KIND] >= BLOCKED_EXECS as u64);
}
