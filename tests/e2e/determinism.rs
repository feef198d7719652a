//! Same recording ⇒ same correlations: for 1, 2 and 4 workers, for 2 processes on loopback, and
//! for any arrival order within the lateness bound.

use std::path::Path;

use tapio_model::Observation;
use tapio_model::recording::RecordingReader;
use tapio_tests::free_port;
use tapio_tests::random::XorShift64;

use crate::support::{kspan_recording, read_changes, replay, scratch, tapio, write_recording};

fn read(path: &Path) -> Vec<Observation> {
    let bytes = std::fs::read(path).expect("read recording");
    RecordingReader::new(bytes.as_slice())
        .map(|item| item.expect("valid recording").1)
        .collect()
}

/// The recordings every determinism test replays. The synthetic one is written once, by the
/// first test that asks, while the others wait: tests run at once, and one rewriting the file
/// under another's replay would feed it a truncated recording.
fn recordings() -> Vec<(String, std::path::PathBuf)> {
    static SYNTHETIC: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let synthetic = SYNTHETIC.get_or_init(|| {
        let synthetic = scratch("synthetic-recording").join("synthetic.jsonl");
        write_recording(
            &synthetic,
            &tapio_tests::synthetic::stream(&tapio_tests::synthetic::Shape::small()),
        );
        synthetic
    });
    vec![
        ("kspan".into(), kspan_recording()),
        ("synthetic".into(), synthetic.clone()),
    ]
}

#[test]
fn worker_count_does_not_change_the_output() {
    for (name, recording) in recordings() {
        let (one, _) = replay(&recording, &["--workers", "1"], &format!("{name}-w1"));
        assert!(
            one.len() > 10,
            "{name}: too little output to compare: {}",
            one.len()
        );
        for workers in ["2", "4"] {
            let (many, _) = replay(
                &recording,
                &["--workers", workers],
                &format!("{name}-w{workers}"),
            );
            assert!(one == many, "{name}: {workers} workers differ from 1");
        }
    }
}

#[test]
fn two_processes_on_loopback_match_one() {
    for (name, recording) in recordings() {
        let (single, _) = replay(&recording, &[], &format!("{name}-single"));
        let dir = scratch(&format!("{name}-cluster"));
        // The ports are free when picked but not reserved: another test may take one before the
        // cluster binds it. Only that failure is retried, with new ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match run_cluster_of_two(&recording, &dir) {
                Ok(()) => break,
                Err(stderr) if stderr.contains("in use") && attempts < 3 => continue,
                Err(stderr) => panic!("{name}: a cluster process failed:\n{stderr}"),
            }
        }
        let cluster = read_changes(&dir.join("out-0.jsonl"));
        assert!(cluster == single, "{name}: 2 processes differ from 1");
        assert!(read_changes(&dir.join("out-1.jsonl")).is_empty());
        std::fs::remove_dir_all(dir).expect("clean");
    }
}

/// Replays `recording` with 2 processes of 2 workers on loopback ports, writing
/// `out-<process>.jsonl` in `dir`. Returns the failed processes' stderr when any fails.
fn run_cluster_of_two(recording: &Path, dir: &Path) -> Result<(), String> {
    let hostfile = dir.join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .expect("hostfile");
    let children: Vec<_> = (0..2)
        .map(|process| {
            tapio()
                .arg("replay")
                .arg(recording)
                .args(["--workers", "2", "--processes", "2", "--process"])
                .arg(process.to_string())
                .arg("--hostfile")
                .arg(&hostfile)
                .arg("--output")
                .arg(dir.join(format!("out-{process}.jsonl")))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn tapio")
        })
        .collect();
    let mut failures = String::new();
    for child in children {
        let output = child.wait_with_output().expect("wait");
        if !output.status.success() {
            failures.push_str(&String::from_utf8_lossy(&output.stderr));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Moves each fact and state update later by up to two heartbeat rounds (1 s, inside the 2 s
/// lateness bound) and shuffles within each stretch between heartbeats.
fn reorder_within_lateness(observations: &[Observation], seed: u64) -> Vec<Observation> {
    let mut rng = XorShift64::new(seed | 1);
    let mut next = move || rng.next_u64();
    // Split into stretches: the observations of one heartbeat round, then that round's beats.
    let mut stretches: Vec<(Vec<Observation>, Vec<Observation>)> = vec![(vec![], vec![])];
    for observation in observations {
        let last = stretches.last_mut().expect("one stretch");
        match observation {
            Observation::Heartbeat(beat) => {
                let same_round = last.1.iter().all(
                    |other| matches!(other, Observation::Heartbeat(o) if o.upto_ns == beat.upto_ns),
                );
                if !same_round {
                    stretches.push((vec![], vec![]));
                }
                stretches
                    .last_mut()
                    .expect("one stretch")
                    .1
                    .push(observation.clone());
            }
            _ => {
                if !last.1.is_empty() {
                    stretches.push((vec![], vec![]));
                }
                stretches
                    .last_mut()
                    .expect("one stretch")
                    .0
                    .push(observation.clone());
            }
        }
    }
    let mut moved: Vec<Vec<Observation>> = vec![vec![]; stretches.len() + 3];
    for (index, (items, _)) in stretches.iter().enumerate() {
        for item in items {
            let delay = (next() % 3) as usize;
            moved[(index + delay).min(stretches.len() - 1)].push(item.clone());
        }
    }
    let mut out = Vec::with_capacity(observations.len());
    for (index, (_, beats)) in stretches.into_iter().enumerate() {
        let mut items = std::mem::take(&mut moved[index]);
        for i in (1..items.len()).rev() {
            items.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        out.extend(items);
        out.extend(beats);
    }
    out
}

#[test]
fn arrival_order_within_the_lateness_bound_does_not_change_the_output() {
    for (name, recording) in recordings() {
        let (reference, _) = replay(&recording, &["--workers", "2"], &format!("{name}-ordered"));
        let observations = read(&recording);
        for seed in [7u64, 1_000_003, 99_991] {
            let shuffled = reorder_within_lateness(&observations, seed);
            assert_ne!(
                shuffled, observations,
                "the permutation must move something"
            );
            assert_eq!(shuffled.len(), observations.len());
            let dir = scratch(&format!("{name}-shuffled-{seed}"));
            let path = dir.join("shuffled.jsonl");
            write_recording(&path, &shuffled);
            let (output, log) = replay(&path, &["--workers", "2"], &format!("{name}-run-{seed}"));
            assert!(
                log.contains("late=0"),
                "{name}: nothing may be late:\n{log}"
            );
            assert!(
                output == reference,
                "{name}: seed {seed} changed the output"
            );
            std::fs::remove_dir_all(dir).expect("clean");
        }
    }
}

#[test]
fn a_fact_beyond_the_lateness_bound_is_clamped_and_counted() {
    let mut observations = read(&kspan_recording());
    // Deliver the container exit 5 s (ten heartbeat rounds) late.
    let position = observations
        .iter()
        .position(|o| matches!(o, Observation::Fact(f) if &*f.id.source == "cri"))
        .expect("the recording has a container exit");
    let exit = observations.remove(position);
    let beats_seen = observations[position..]
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Observation::Heartbeat(_)))
        .nth(30)
        .map(|(index, _)| position + index)
        .expect("enough heartbeats");
    observations.insert(beats_seen, exit);
    let dir = scratch("late");
    let path = dir.join("late.jsonl");
    write_recording(&path, &observations);
    let (changes, log) = replay(&path, &[], "late-run");
    assert!(
        log.contains("late=1"),
        "one late fact must be counted:\n{log}"
    );
    // Clamped, it still completes the sequence, at the tick it was taken in.
    let first = changes
        .iter()
        .find(|c| c.correlation.kind == tapio_model::CorrelationKind::OomRestart)
        .expect("the OOM sequence is still found");
    assert!(first.time > 1_621_417_382_600_000_000);
    std::fs::remove_dir_all(dir).expect("clean");
}

/// Node `n2` is cut off after 5 s while `n1` goes on for 100 s; from 40 s on it catches up,
/// 10 s behind `n1`: an OOM sequence it saw at 20 s, its heartbeats from 40 s, an OOM sequence
/// at 60 s.
fn a_node_cut_off_and_back() -> Vec<Observation> {
    use tapio_model::{
        ContainerExit, Fact, FactId, FactPayload, Heartbeat, OomKill, ProcessExit, TimeNs,
    };
    const T0: TimeNs = tapio_tests::synthetic::START_NS;
    const S: TimeNs = 1_000_000_000;
    let beat = |node: &str, at: TimeNs| {
        Observation::Heartbeat(Heartbeat {
            source: "kernel".into(),
            node: node.into(),
            upto_ns: T0 + at,
        })
    };
    let oom = |seq: u64, at: TimeNs| {
        let container = format!("n2-c{seq}");
        let fact = |seq, time_ns, payload| {
            Observation::Fact(Fact {
                id: FactId::new("kernel", "n2", seq),
                time_ns: T0 + time_ns,
                payload,
            })
        };
        vec![
            fact(
                seq,
                at,
                FactPayload::OomKill(OomKill {
                    pid: 7,
                    start_ns: T0,
                    comm: "java".into(),
                    container_id: Some(container.as_str().into()),
                    pod_uid: None,
                    memcg: String::new(),
                    rss_pages: 1,
                }),
            ),
            fact(
                seq + 1,
                at + 2_000_000,
                FactPayload::ProcessExit(ProcessExit {
                    pid: 7,
                    start_ns: T0,
                    comm: "java".into(),
                    exit_code: 0,
                    signal: 9,
                    container_id: Some(container.as_str().into()),
                }),
            ),
            fact(
                seq + 2,
                at + 20_000_000,
                FactPayload::ContainerExit(ContainerExit {
                    container_id: container.into(),
                    container_name: "app".into(),
                    pod: None,
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    restart_count: 1,
                }),
            ),
        ]
    };
    let mut stream = Vec::new();
    for step in 0..=200 {
        let at = step * S / 2;
        if at == 50 * S {
            stream.extend(oom(1, 20 * S));
        }
        if at == 70 * S {
            stream.extend(oom(10, 60 * S));
        }
        if (50 * S..=100 * S).contains(&at) {
            stream.push(beat("n2", at - 10 * S));
        }
        stream.push(beat("n1", at));
        if at <= 5 * S {
            stream.push(beat("n2", at));
        }
    }
    stream
}

#[test]
fn a_node_cut_off_and_back_is_retired_and_rejoins_alike_live_and_in_replay() {
    let dir = scratch("cut-off");
    let recording = dir.join("cut-off.jsonl");
    write_recording(&recording, &a_node_cut_off_and_back());
    let counts = ["sources_retired=1", "sources_rejoined=1", "late=3"];
    let (one, log) = replay(&recording, &["--workers", "1"], "cut-off-w1");
    for count in counts {
        assert!(log.contains(count), "replay: {count} missing:\n{log}");
    }
    assert!(
        log.contains("Retired a silent source") && log.contains("speaks again"),
        "{log}"
    );
    // Both sequences are found: the one from 20 s clamped to when it arrived.
    let ooms = one
        .iter()
        .filter(|c| c.correlation.kind == tapio_model::CorrelationKind::OomRestart && c.diff > 0)
        .count();
    assert_eq!(ooms, 2, "{one:#?}");
    let (two, log) = replay(&recording, &["--workers", "2"], "cut-off-w2");
    for count in counts {
        assert!(log.contains(count), "2 workers: {count} missing:\n{log}");
    }
    assert!(one == two, "2 workers differ from 1");

    // Live: the recording as a source at 20 times its pace, as the agents would deliver it.
    let config = dir.join("tapio.yaml");
    std::fs::write(
        &config,
        format!(
            "collectors:\n  kernel:\n    enabled: false\n  recording:\n    enabled: true\n    path: {}\n    speed: 20\n",
            recording.display()
        ),
    )
    .expect("write config");
    let out = dir.join("live.jsonl");
    let output = crate::support::succeed(
        tapio()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--workers", "2", "--output"])
            .arg(&out),
    );
    let log = String::from_utf8_lossy(&output.stderr);
    for count in counts {
        assert!(log.contains(count), "live: {count} missing:\n{log}");
    }
    assert!(
        read_changes(&out) == one,
        "the live run differs from the replay"
    );
    std::fs::remove_dir_all(dir).expect("clean");
}
