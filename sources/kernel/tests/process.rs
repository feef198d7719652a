//! Process facts from the real kernel: exec with arguments, exit codes and signals, forks,
//! one start time per process, and heartbeats.

mod common;

use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_model::{FactPayload, Observation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_args_and_exit_code() {
    let running = common::start(KernelCollectorConfig::default()).await;
    let child = tokio::process::Command::new("/bin/sh")
        .args(["-c", "exit 42", "tapio-arg-zero", "second arg"])
        .spawn()
        .expect("spawn sh");
    let pid = child.id().expect("pid");
    let status = child.wait_with_output().await.expect("wait").status;
    assert_eq!(status.code(), Some(42));

    let exec = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::ProcessExec(e) if e.pid == pid),
        )
        .await
        .expect("exec fact");
    let exit = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::ProcessExit(e) if e.pid == pid),
        )
        .await
        .expect("exit fact");
    let (FactPayload::ProcessExec(exec_payload), FactPayload::ProcessExit(exit_payload)) =
        (&exec.payload, &exit.payload)
    else {
        unreachable!()
    };
    assert_eq!(exec_payload.filename, "/bin/sh");
    assert_eq!(
        exec_payload.args,
        ["/bin/sh", "-c", "exit 42", "tapio-arg-zero", "second arg"]
    );
    assert_eq!(exec_payload.ppid, std::process::id());
    assert_eq!(exec_payload.uid, 0);
    assert_eq!(exit_payload.exit_code, 42);
    assert_eq!(exit_payload.signal, 0);
    assert_eq!(
        exec_payload.start_ns, exit_payload.start_ns,
        "same process identity"
    );
    let now = tapio_sources::now_ns();
    assert!(exec.time_ns <= exit.time_ns);
    assert!(
        now.abs_diff(exit.time_ns) < 10_000_000_000,
        "wall-clock event time"
    );
    assert!(exec_payload.start_ns <= exec.time_ns);
    assert!(exec.time_ns - exec_payload.start_ns < 5_000_000_000);

    // A fork of the same process was seen too, with the same start time.
    let fork = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::ProcessFork(f) if f.pid == pid),
        )
        .await
        .expect("fork fact");
    let FactPayload::ProcessFork(fork) = fork.payload else {
        unreachable!()
    };
    assert_eq!(fork.start_ns, exec_payload.start_ns);
    assert_eq!(fork.ppid, std::process::id());
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_by_a_signal() {
    let running = common::start(KernelCollectorConfig::default()).await;
    let child = tokio::process::Command::new("/bin/sh")
        .args(["-c", "kill -TERM $$; sleep 5"])
        .spawn()
        .expect("spawn sh");
    let pid = child.id().expect("pid");
    child.wait_with_output().await.expect("wait");
    let exit = running.wait_for_exit(pid).await;
    assert_eq!(exit.signal, 15);
    assert_eq!(exit.exit_code, 0);
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_every_100ms_and_monotone() {
    let running = common::start(KernelCollectorConfig::default()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let beats: Vec<u64> = running
        .observations()
        .iter()
        .filter_map(|o| match o {
            Observation::Heartbeat(h) => Some(h.upto_ns),
            _ => None,
        })
        .collect();
    assert!(beats.len() >= 10, "{} heartbeats in 1.5 s", beats.len());
    assert!(
        beats.windows(2).all(|w| w[0] <= w[1]),
        "heartbeats never go back"
    );
    let last = *beats.last().unwrap();
    assert!(
        tapio_sources::now_ns() - last < 1_000_000_000,
        "heartbeat near now"
    );
    // Every fact sent before a heartbeat is older than that heartbeat's promise... for facts
    // sent after it, their time must not be below a promise already made.
    let mut promised = 0;
    for observation in running.observations() {
        match observation {
            Observation::Heartbeat(h) => promised = h.upto_ns,
            Observation::Fact(f) => assert!(
                f.time_ns + 2_000_000_000 >= promised,
                "fact {} far behind heartbeat {promised}",
                f.time_ns
            ),
            Observation::State(_) => {}
        }
    }
    running.stop().await.expect("clean stop");
}
