//! Unit lifecycle read from real journal files: the Sonobuoy nodes' journals (a real kubeadm
//! cluster, systemd 229) and systemd 252's messages for a crash and restart, a manual restart
//! and a failed start.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{Entry, config, payloads, run, scratch, write_journal};
use serde_json::Value;
use tapio_model::{FactPayload, UnitChange, UnitExit, UnitState};
use tapio_sources_journal::units::{
    UNIT_FAILED, UNIT_FAILURE_RESULT, UNIT_PROCESS_EXIT, UNIT_STARTED, UNIT_STOPPED,
};

fn change(unit: &str, state: UnitState, result: &str, exit: Option<(&str, i32)>) -> FactPayload {
    FactPayload::UnitChange(UnitChange {
        unit: unit.into(),
        state,
        result: result.into(),
        exit: exit.map(|(code, status)| UnitExit {
            code: code.into(),
            status,
        }),
    })
}

/// The messages systemd 252 logs, with the fields it logs them with.
#[tokio::test]
async fn systemd_messages_become_unit_changes() {
    let dir = scratch("units");
    let t = |n: u64| 1_700_000_000_000_000 + n * 1000;
    let job = |entry: Entry, job_type: &str, result: Option<&str>| {
        let entry = entry.with("JOB_TYPE", job_type).with("JOB_ID", "42");
        match result {
            Some(result) => entry.with("JOB_RESULT", result),
            None => entry,
        }
    };
    let entries = vec![
        // kubelet starts, crashes with status 1, is restarted by Restart=always.
        job(
            Entry::systemd(
                t(1),
                UNIT_STARTED,
                "kubelet.service",
                "Started kubelet: The Kubernetes Node Agent.",
            ),
            "start",
            Some("done"),
        ),
        Entry::systemd(
            t(2),
            UNIT_PROCESS_EXIT,
            "kubelet.service",
            "kubelet.service: Main process exited, code=exited, status=1/FAILURE",
        )
        .with("EXIT_CODE", "exited")
        .with("EXIT_STATUS", "1"),
        Entry::systemd(
            t(3),
            UNIT_FAILURE_RESULT,
            "kubelet.service",
            "kubelet.service: Failed with result 'exit-code'.",
        )
        .with("UNIT_RESULT", "exit-code"),
        Entry::systemd(
            t(4),
            "5eb03494b6584870a536b337290809b3",
            "kubelet.service",
            "kubelet.service: Scheduled restart job, restart counter is at 1.",
        )
        .with("N_RESTARTS", "1"),
        job(
            Entry::systemd(
                t(5),
                UNIT_STOPPED,
                "kubelet.service",
                "Stopped kubelet: The Kubernetes Node Agent.",
            ),
            "restart",
            Some("done"),
        ),
        job(
            Entry::systemd(
                t(6),
                UNIT_STARTED,
                "kubelet.service",
                "Started kubelet: The Kubernetes Node Agent.",
            ),
            "start",
            Some("done"),
        ),
        // containerd restarted by hand.
        job(
            Entry::systemd(
                t(7),
                "de5b426a63be47a7b6ac3eaac82e2f6f",
                "containerd.service",
                "Stopping containerd container runtime...",
            ),
            "stop",
            None,
        ),
        job(
            Entry::systemd(
                t(8),
                UNIT_STOPPED,
                "containerd.service",
                "Stopped containerd container runtime.",
            ),
            "restart",
            Some("done"),
        ),
        job(
            Entry::systemd(
                t(9),
                UNIT_STARTED,
                "containerd.service",
                "Started containerd container runtime.",
            ),
            "start",
            Some("done"),
        ),
        // A service killed by SIGKILL while starting: its start job fails.
        Entry::systemd(
            t(10),
            UNIT_PROCESS_EXIT,
            "db.service",
            "db.service: Main process exited, code=killed, status=9/KILL",
        )
        .with("EXIT_CODE", "killed")
        .with("EXIT_STATUS", "9"),
        Entry::systemd(
            t(11),
            UNIT_FAILURE_RESULT,
            "db.service",
            "db.service: Failed with result 'signal'.",
        )
        .with("UNIT_RESULT", "signal"),
        job(
            Entry::systemd(
                t(12),
                UNIT_FAILED,
                "db.service",
                "Failed to start db.service.",
            ),
            "start",
            Some("failed"),
        ),
        // Stopped on purpose.
        job(
            Entry::systemd(t(13), UNIT_STOPPED, "db.service", "Stopped db.service."),
            "stop",
            Some("done"),
        ),
        // Not a service: filtered out.
        job(
            Entry::systemd(
                t(14),
                UNIT_STARTED,
                "session-3.scope",
                "Started Session 3 of User root.",
            ),
            "start",
            Some("done"),
        ),
        // The same id from a process that is not systemd: not systemd's word.
        Entry::systemd(t(15), UNIT_STARTED, "kubelet.service", "Started kubelet")
            .with("_PID", "4242"),
        // A kernel line that is no OOM kill.
        Entry::kernel(t(16), "eth0: link up"),
    ];
    // The impostor keeps only its own _PID.
    let mut entries = entries;
    entries[14]
        .0
        .retain(|(name, value)| !(name == "_PID" && value == b"1"));
    write_journal(&dir.join("system.journal"), &entries);
    let (facts, stats) = run(&config(&dir, None), Duration::from_millis(800)).await;
    assert_eq!(
        payloads(&facts),
        vec![
            change("kubelet.service", UnitState::Started, "done", None),
            change(
                "kubelet.service",
                UnitState::Failed,
                "exit-code",
                Some(("exited", 1))
            ),
            change("kubelet.service", UnitState::Restarted, "done", None),
            change("kubelet.service", UnitState::Started, "done", None),
            change("containerd.service", UnitState::Restarted, "done", None),
            change("containerd.service", UnitState::Started, "done", None),
            change(
                "db.service",
                UnitState::Failed,
                "signal",
                Some(("killed", 9))
            ),
            change("db.service", UnitState::StartFailed, "failed", None),
            change("db.service", UnitState::Stopped, "done", None),
        ]
    );
    assert_eq!(facts[0].time_ns, t(1) * 1000);
    assert_eq!(
        facts[1].subject().to_string(),
        "unit/node-1/kubelet.service"
    );
    // The entries read are systemd's (PID 1) catalogued ones and the kernel's: not the
    // Stopping and Scheduled-restart messages, nor the impostor.
    assert_eq!(stats.received, 13);
    assert_eq!(stats.errors, 0);
    std::fs::remove_dir_all(dir).expect("clean up");
}

/// The Sonobuoy results' node journals (JSON from `journalctl -o json` on three nodes of a
/// real kubeadm cluster whose kubelet crash-looped until it was configured), written back into
/// journal files: the source reports each kubelet start and stop systemd logged, in order, and
/// reads exactly the entries `journalctl` selects with the same matches.
#[tokio::test]
async fn the_sonobuoy_node_journals_read_back_exactly() {
    let dir = scratch("sonobuoy");
    let tarball = common::fixtures().join("k8s/sonobuoy/results-0.10.tar.gz");
    let status = Command::new("tar")
        .args(["-xzf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&dir)
        .arg("./plugins/systemd_logs/results")
        .status()
        .expect("tar");
    assert!(status.success());
    let results = dir.join("plugins/systemd_logs/results");
    let journals = dir.join("journal");
    std::fs::create_dir_all(&journals).unwrap();
    let mut wanted: BTreeMap<u64, FactPayload> = BTreeMap::new();
    let mut nodes = 0;
    for node in std::fs::read_dir(&results).unwrap() {
        let node = node.unwrap().path();
        let text = std::fs::read_to_string(&node).unwrap();
        let mut entries = Vec::new();
        for line in text.lines() {
            let json: Value = serde_json::from_str(line).expect("a journal JSON entry");
            let mut entry = Entry::default();
            for (name, value) in json.as_object().unwrap() {
                // Cursors are the reader's; every other field is written back as it was.
                if name == "__CURSOR" {
                    continue;
                }
                if let Some(value) = value.as_str() {
                    entry.0.push((name.clone(), value.as_bytes().to_vec()));
                }
            }
            let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
            let time_us: u64 = field("__REALTIME_TIMESTAMP").parse().unwrap();
            if field("_PID") == "1" && field("UNIT") == "kubelet.service" {
                let result = field("RESULT");
                match field("MESSAGE_ID").as_str() {
                    UNIT_STARTED => {
                        wanted.insert(
                            time_us,
                            change("kubelet.service", UnitState::Started, &result, None),
                        );
                    }
                    UNIT_STOPPED => {
                        wanted.insert(
                            time_us,
                            change("kubelet.service", UnitState::Stopped, &result, None),
                        );
                    }
                    _ => {}
                }
            }
            entries.push(entry);
        }
        let name = node.file_name().unwrap().to_string_lossy().into_owned();
        write_journal(&journals.join(format!("{name}.journal")), &entries);
        nodes += 1;
    }
    assert_eq!(nodes, 3);
    assert!(
        wanted.len() >= 30,
        "the kubelet restarted many times: {}",
        wanted.len()
    );
    let mut settings = config(&journals, None);
    settings.unit_filter = vec!["kubelet.service".into()];
    let (facts, stats) = run(&settings, Duration::from_millis(2000)).await;
    let got: BTreeMap<u64, FactPayload> = facts
        .iter()
        .map(|fact| (fact.time_ns / 1000, fact.payload.clone()))
        .collect();
    assert_eq!(facts.len(), got.len());
    assert_eq!(got, wanted);
    // journalctl with the same matches reads as many entries (one JSON object a line).
    let mut journalctl = Command::new("journalctl");
    journalctl
        .arg("--directory")
        .arg(&journals)
        .arg("-o")
        .arg("json");
    for id in tapio_sources_journal::units::MESSAGE_IDS {
        journalctl.arg(format!("MESSAGE_ID={id}"));
    }
    journalctl.args(["_PID=1", "+", "_TRANSPORT=kernel"]);
    let output = journalctl.output().expect("journalctl");
    let selected = output.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(stats.received, selected);
    assert_eq!(stats.errors, 0);
    std::fs::remove_dir_all(dir).expect("clean up");
}
