//! The kernel OOM-kill log fixtures (`tests/fixtures/oom`, real kernel logs from cAdvisor and
//! node-problem-detector) parse exactly to their expected results, line by line and through
//! real journal files.

mod common;

use std::time::Duration;

use common::{Entry, fixtures, run, scratch, write_journal};
use serde_json::Value;
use tapio_model::FactPayload;
use tapio_sources_journal::oom::{OomParser, OomRecord, killed_process, summary, task_in};

fn expected() -> Value {
    let text =
        std::fs::read_to_string(fixtures().join("oom/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(fixtures().join("oom").join(file))
        .expect("fixture")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The mock timestamp (unix seconds) of 1-based line `number`.
fn time_of(spec: &Value, number: usize) -> u64 {
    for range in spec["mock_kmsg_timestamps"].as_array().expect("timestamps") {
        let (from, to) = range["lines"]
            .as_str()
            .and_then(|lines| lines.split_once('-'))
            .expect("a line range");
        let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
        if (from..=to).contains(&number) {
            return range["unix"].as_u64().expect("unix");
        }
    }
    panic!("no timestamp for line {number}");
}

fn assert_record(record: &OomRecord, expected: &Value) {
    assert_eq!(u64::from(record.pid), expected["pid"].as_u64().unwrap());
    assert_eq!(record.comm, expected["process_name"].as_str().unwrap());
    assert_eq!(
        record.task_memcg,
        expected["container_name"].as_str().unwrap()
    );
    assert_eq!(
        record.oom_memcg,
        expected["victim_container_name"].as_str().unwrap()
    );
    assert_eq!(record.constraint, expected["constraint"].as_str().unwrap());
}

/// The multi-line fixtures whose expected records are stated.
const STREAMS: [&str; 4] = [
    "cadvisor-cgv1-memcg-mem2.log",
    "cadvisor-global-oom.log",
    "cadvisor-cgv1-docker-two-ooms.log",
    "npd-oom_kill.log",
];

fn expected_records(spec: &Value) -> Vec<Value> {
    spec.get("expected_records")
        .or_else(|| spec.get("expected_streaming_records_cadvisor_rules"))
        .and_then(Value::as_array)
        .cloned()
        .expect("expected records")
}

#[test]
fn every_stream_yields_exactly_its_expected_records() {
    let expected = expected();
    for file in STREAMS {
        let spec = &expected["files"][file];
        let mut parser = OomParser::default();
        let mut records = Vec::new();
        for (index, line) in lines(file).iter().enumerate() {
            let time_ns = spec
                .get("mock_kmsg_timestamps")
                .map_or(0, |_| time_of(spec, index + 1) * 1_000_000_000);
            records.extend(parser.line(line, time_ns));
        }
        let wanted = expected_records(spec);
        assert_eq!(records.len(), wanted.len(), "{file}: {records:?}");
        for (record, wanted) in records.iter().zip(&wanted) {
            assert_record(record, wanted);
            assert_eq!(
                record.time_ns,
                wanted["time_of_death_unix"].as_u64().unwrap() * 1_000_000_000,
                "{file}"
            );
        }
    }
}

#[test]
fn single_lines_say_what_their_expectations_say() {
    let expected = expected();
    let files = &expected["files"];

    let line = &lines("cadvisor-cgv2-oomkill-line.log")[0];
    let wanted = &files["cadvisor-cgv2-oomkill-line.log"]["expected_line_result"];
    assert_record(&summary(line).expect("a summary line"), wanted);
    let derived = &files["cadvisor-cgv2-oomkill-line.log"]["derived_not_asserted_by_cadvisor"];
    let kill = summary(line).unwrap().to_fact();
    assert_eq!(kill.pod_uid.as_deref(), derived["pod_uid"].as_str());
    assert_eq!(
        kill.container_id.as_deref(),
        derived["container_id"].as_str()
    );
    // Inside a record, the summary completes it at once.
    let mut parser = OomParser::default();
    assert!(
        parser
            .line(&lines("cadvisor-line-invoked-oom-killer.log")[0], 1)
            .is_none()
    );
    assert!(!parser.is_idle(), "the start line opens a record");
    assert_record(&parser.line(line, 2).expect("completed"), wanted);
    assert!(parser.is_idle());

    let line = &lines("cadvisor-cgv1-task-in-line.log")[0];
    let wanted = &files["cadvisor-cgv1-task-in-line.log"]["expected_line_result"];
    let (task, limit) = task_in(line).expect("a Task in line");
    assert_eq!(task, wanted["container_name"].as_str().unwrap());
    assert_eq!(limit, wanted["victim_container_name"].as_str().unwrap());
    let mut parser = OomParser::default();
    parser.line("x invoked oom-killer: gfp_mask=0x0", 1);
    assert!(
        parser.line(line, 2).is_none(),
        "the legacy line never completes a record"
    );

    let line = &lines("cadvisor-line-invoked-oom-killer.log")[0];
    assert!(killed_process(line).is_none() && task_in(line).is_none() && summary(line).is_none());

    let line = &lines("cadvisor-line-killed-process.log")[0];
    let wanted = &files["cadvisor-line-killed-process.log"]["expected_line_result"];
    let (pid, comm, rss_kb) = killed_process(line).expect("a Killed process line");
    assert_eq!(u64::from(pid), wanted["pid"].as_u64().unwrap());
    assert_eq!(comm, wanted["process_name"].as_str().unwrap());
    assert_eq!(rss_kb, 1_414_008 + 4);

    for (file, spec) in [
        (
            "cadvisor-killed-process-names.log",
            &files["cadvisor-killed-process-names.log"],
        ),
        ("npd-oom_kill.log", &files["npd-oom_kill.log"]),
    ] {
        let lines = lines(file);
        for wanted in spec["expected_per_line"].as_array().unwrap() {
            let line = &lines[wanted["line"].as_u64().unwrap() as usize - 1];
            match killed_process(line) {
                Some((pid, comm, _)) => {
                    assert_ne!(
                        wanted["yields_pid_and_name"],
                        Value::Bool(false),
                        "{file}: {line}"
                    );
                    assert_eq!(u64::from(pid), wanted["pid"].as_u64().unwrap(), "{file}");
                    assert_eq!(comm, wanted["process_name"].as_str().unwrap(), "{file}");
                }
                None => assert_eq!(
                    wanted["yields_pid_and_name"],
                    Value::Bool(false),
                    "{file}: {line}"
                ),
            }
        }
    }
}

/// The streams written as kernel messages into a real journal file come out of the source as
/// exactly the expected OOM kills, at the time of the line that completed each.
#[tokio::test]
async fn the_fixtures_read_from_a_journal_file_are_the_expected_kills() {
    let expected = expected();
    let dir = scratch("oom");
    let mut entries = Vec::new();
    let mut wanted = Vec::new();
    // Each stream a minute after the one before; lines a microsecond apart.
    for (stream, file) in STREAMS.iter().enumerate() {
        let spec = &expected["files"][*file];
        let base = 1_700_000_000_000_000 + stream as u64 * 60_000_000;
        for (index, line) in lines(file).iter().enumerate() {
            entries.push(Entry::kernel(base + index as u64, line));
        }
        for record in expected_records(spec) {
            let line = lines(file)
                .iter()
                .position(|line| {
                    line.contains(&format!("pid={},", record["pid"]))
                        || line.contains(&format!("Killed process {} ", record["pid"]))
                })
                .expect("the completing line");
            wanted.push((record, (base + line as u64) * 1000));
        }
    }
    write_journal(&dir.join("system.journal"), &entries);
    let (facts, stats) = run(&common::config(&dir, None), Duration::from_millis(1500)).await;
    assert_eq!(
        stats.received,
        entries.len() as u64,
        "every kernel entry is read"
    );
    assert_eq!(stats.errors, 0);
    assert_eq!(facts.len(), wanted.len(), "{facts:?}");
    for (fact, (record, time_ns)) in facts.iter().zip(&wanted) {
        let FactPayload::OomKill(kill) = &fact.payload else {
            panic!("not an OOM kill: {fact:?}");
        };
        assert_eq!(fact.time_ns, *time_ns);
        assert_eq!(u64::from(kill.pid), record["pid"].as_u64().unwrap());
        assert_eq!(kill.comm, record["process_name"].as_str().unwrap());
        let victim = record["victim_container_name"].as_str().unwrap();
        assert_eq!(kill.memcg, if victim == "/" { "" } else { victim });
        let task = record["container_name"].as_str().unwrap();
        let docker = task.strip_prefix("/docker/");
        assert_eq!(kill.container_id.as_deref(), docker);
        assert!(
            kill.rss_pages > 0,
            "the Killed process line gives the resident memory"
        );
    }
    std::fs::remove_dir_all(dir).expect("clean up");
}
