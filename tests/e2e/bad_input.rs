//! Bad input never crashes and never stops the pipeline: malformed, truncated and impossible
//! records are counted, reported with their position, and skipped.

use std::io::Write;

use tapio_model::CorrelationKind;

use crate::support::{current, kspan_recording, read_changes, scratch, tapio};

#[test]
fn bad_lines_are_reported_by_position_and_the_rest_is_correlated() {
    let good = std::fs::read_to_string(kspan_recording()).expect("read recording");
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    // Line numbers below are 1-based positions in the damaged file.
    lines.insert(5, "this is not json".into());
    lines.insert(6, r#"{"kind":"teleport","to":"mars"}"#.into());
    lines.insert(
        7,
        r#"{"kind":"fact","id":"kernel/n/1","time_ns":5,"payload":{"process_exit":{"pid":1,"start_ns":1,"comm":"x","exit_code":0,"signal":9,"container_id":null}}}"#
            .into(),
    );
    lines.insert(8, r#"{"kind":"fact","id":"kernel/n/1","time_ns":1621417378000000000,"payload":{"unknown_payload":{}}}"#.into());
    let dir = scratch("bad-lines");
    let path = dir.join("damaged.jsonl");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(lines.join("\n").as_bytes()).expect("write");
    // A truncated last line, and a line of raw bytes.
    file.write_all(b"\n\xff\xfe\x00garbage\n{\"kind\":\"heartbeat\",\"sour")
        .expect("write");
    drop(file);

    let out = dir.join("out.jsonl");
    let output = tapio()
        .arg("replay")
        .arg(&path)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bad lines must not fail the run:\n{log}"
    );
    for line in [6, 7, 8, 9] {
        assert!(
            log.contains(&format!("line {line} (byte")),
            "line {line} not reported:\n{log}"
        );
    }
    assert!(log.contains("impossible event time 5 ns"), "{log}");
    assert!(log.contains("teleport"), "{log}");
    assert!(log.contains("not valid UTF-8"), "{log}");
    assert!(log.contains("errors=6"), "six bad lines counted:\n{log}");
    // Everything else still correlates.
    let now = current(&read_changes(&out));
    assert!(now.iter().any(|c| c.kind == CorrelationKind::OomRestart));
    assert!(
        now.iter()
            .filter(|c| c.kind == CorrelationKind::Ownership)
            .count()
            >= 8
    );
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_file_that_is_not_a_recording_is_one_clear_error() {
    let dir = scratch("garbage");
    let path = dir.join("garbage.bin");
    let mut rng = tapio_tests::random::XorShift64::new(0x9e37_79b9_7f4a_7c15);
    let bytes: Vec<u8> = (0..10_000).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(&path, bytes).expect("write");
    let output = tapio().arg("replay").arg(&path).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a Tapio recording"), "{stderr}");
    assert!(stderr.contains("garbage.bin"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(dir).expect("clean");
}

#[test]
fn a_missing_file_names_the_file() {
    let output = tapio()
        .args(["replay", "/nonexistent/recording.jsonl"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/recording.jsonl"), "{stderr}");
}

#[test]
fn every_prefix_of_a_recording_replays_without_a_panic() {
    let good = std::fs::read(kspan_recording()).expect("read recording");
    let dir = scratch("prefixes");
    for cut in [
        1usize,
        25,
        400,
        1_000,
        5_000,
        good.len() / 2,
        good.len() - 7,
    ] {
        let path = dir.join(format!("cut-{cut}.jsonl"));
        std::fs::write(&path, &good[..cut.min(good.len())]).expect("write");
        let output = tapio().arg("replay").arg(&path).output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "cut at {cut}: {stderr}");
        // A cut inside the header is "not a recording"; any later cut replays what is whole.
        if cut > 25 {
            assert!(output.status.success(), "cut at {cut}: {stderr}");
        }
    }
    std::fs::remove_dir_all(dir).expect("clean");
}
