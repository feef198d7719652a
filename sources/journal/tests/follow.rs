//! Following the journal: a restart resumes exactly after the last entry taken in (also in
//! the middle of an OOM record), files rotated in while running are read, and a corrupt file is
//! reported and skipped while the others are read.

mod common;

use std::time::Duration;

use common::{Entry, config, run, scratch, write_journal};
use tapio_model::{Fact, FactPayload};
use tapio_sources_journal::units::{UNIT_STARTED, UNIT_STOPPED};

const T0: u64 = 1_700_000_000_000_000;

/// `count` starts and stops of `svc-<i>.service`, from `first`, a millisecond apart.
fn units(first: u64, count: u64) -> Vec<Entry> {
    (first..first + count)
        .map(|i| {
            let id = if i % 2 == 0 {
                UNIT_STARTED
            } else {
                UNIT_STOPPED
            };
            Entry::systemd(T0 + i * 1000, id, &format!("svc-{i}.service"), "unit")
                .with("JOB_RESULT", "done")
        })
        .collect()
}

fn unit_names(facts: &[Fact]) -> Vec<String> {
    facts
        .iter()
        .filter_map(|fact| match &fact.payload {
            FactPayload::UnitChange(change) => Some(change.unit.clone()),
            _ => None,
        })
        .collect()
}

fn expected_names(first: u64, count: u64) -> Vec<String> {
    (first..first + count)
        .map(|i| format!("svc-{i}.service"))
        .collect()
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_entry_taken_in() {
    let dir = scratch("resume");
    let journals = dir.join("journal");
    std::fs::create_dir_all(&journals).unwrap();
    let cursor = dir.join("state/journal.cursor");
    // First file: 2500 unit entries (more than two batches), then the start of an OOM record.
    let mut first = units(0, 2500);
    first.push(Entry::kernel(
        T0 + 2500 * 1000,
        "stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
    ));
    first.push(Entry::kernel(
        T0 + 2501 * 1000,
        "Task in /kubepods/pod1 killed as a result of limit of /kubepods/pod1",
    ));
    write_journal(&journals.join("system@0001.journal"), &first);
    let settings = config(&journals, Some(&cursor));
    let (facts, stats) = run(&settings, Duration::from_millis(1000)).await;
    assert_eq!(unit_names(&facts), expected_names(0, 2500));
    assert_eq!(facts.len(), 2500, "the OOM record is not complete yet");
    assert_eq!(stats.received, 2502);
    let saved = tapio_sources_journal::load_cursor(&cursor)
        .expect("readable")
        .expect("a cursor was saved");
    assert!(
        !saved.state.oom.is_idle(),
        "the open OOM record is kept with the cursor"
    );

    // Nothing new: a restart reads nothing again.
    let (facts, stats) = run(&settings, Duration::from_millis(500)).await;
    assert!(facts.is_empty(), "repeated: {facts:?}");
    assert_eq!(stats.received, 0);

    // A second file (journald rotated): the OOM record completes in it, then more units.
    let mut second = vec![Entry::kernel(
        T0 + 2502 * 1000,
        "Killed process 4242 (stress) total-vm:100kB, anon-rss:40kB, file-rss:0kB, shmem-rss:0kB",
    )];
    second.extend(units(2503, 700));
    write_journal(&journals.join("system.journal"), &second);
    let (facts, stats) = run(&settings, Duration::from_millis(1000)).await;
    let FactPayload::OomKill(kill) = &facts[0].payload else {
        panic!("the OOM kill first: {:?}", facts[0]);
    };
    assert_eq!(
        (kill.pid, kill.comm.as_str(), kill.memcg.as_str()),
        (4242, "stress", "/kubepods/pod1")
    );
    assert_eq!(kill.rss_pages, 10);
    assert_eq!(unit_names(&facts[1..]), expected_names(2503, 700));
    assert_eq!(stats.received, 701);

    // Without the cursor file, everything would come again.
    let (facts, _) = run(&config(&journals, None), Duration::from_millis(1000)).await;
    assert_eq!(facts.len(), 2500 + 1 + 700);
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[tokio::test]
async fn files_rotated_in_while_running_are_read() {
    let dir = scratch("rotate");
    write_journal(&dir.join("system@0001.journal"), &units(0, 10));
    let settings = config(&dir, None);
    let writer = {
        let dir = dir.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            tokio::task::spawn_blocking(move || {
                write_journal(&dir.join("system.journal"), &units(10, 10));
            })
            .await
            .unwrap();
        })
    };
    let (facts, _) = run(&settings, Duration::from_millis(1500)).await;
    writer.await.unwrap();
    assert_eq!(unit_names(&facts), expected_names(0, 20));
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[tokio::test]
async fn a_corrupt_file_is_reported_and_skipped() {
    let dir = scratch("corrupt");
    write_journal(&dir.join("system@0001.journal"), &units(0, 50));
    write_journal(&dir.join("system.journal"), &units(100, 50));
    // A journal file whose header was overwritten, as a crash or a bad disk leaves one.
    let bad = dir.join("system@0002.journal~");
    let mut bytes = std::fs::read(dir.join("system.journal")).unwrap();
    bytes[..64].fill(0);
    std::fs::write(&bad, bytes).unwrap();
    // Not a journal at all.
    std::fs::write(dir.join("notes.journal"), b"hello\n").unwrap();
    let (facts, stats) = run(&config(&dir, None), Duration::from_millis(800)).await;
    let mut wanted = expected_names(0, 50);
    wanted.extend(expected_names(100, 50));
    assert_eq!(unit_names(&facts), wanted);
    assert_eq!(stats.errors, 2, "each bad file is reported once");
    std::fs::remove_dir_all(dir).expect("clean up");
}
