//! File facts from the real kernel: failed opens folded in a hot loop, EACCES for an
//! unprivileged reader, renames and unlinks, all limited to a configured prefix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_model::{FactPayload, FileOp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_opens_renames_and_unlinks_under_a_prefix() {
    let dir = std::env::temp_dir().join(format!("tapio-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let prefix = format!("{}/", dir.display());
    let config = KernelCollectorConfig {
        file_path_prefixes: vec![prefix.clone()],
        file_aggregation_window: Duration::from_secs(1),
        ..KernelCollectorConfig::default()
    };
    let running = common::start(config).await;
    let before = running.stats.snapshot();
    let me = std::process::id();

    // A hot loop of identical failures is folded in the kernel.
    let missing = dir.join("missing.conf");
    for _ in 0..1000 {
        assert!(std::fs::File::open(&missing).is_err());
    }
    // Outside the prefix: nothing.
    assert!(std::fs::File::open("/nonexistent-tapio-test/x").is_err());

    // EACCES needs a reader without CAP_DAC_OVERRIDE.
    let secret = dir.join("secret");
    std::fs::write(&secret, "s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let denied = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&secret)
        .output()
        .await
        .expect("setpriv from util-linux");
    assert!(!denied.status.success());

    let old = dir.join("old.txt");
    let new = dir.join("new.txt");
    std::fs::write(&old, "x").unwrap();
    std::fs::rename(&old, &new).unwrap();
    std::fs::remove_file(&new).unwrap();

    let missing_text = missing.display().to_string();
    let fact = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::FileOpenFailed(f) if f.path == missing_text),
        )
        .await
        .expect("failed open fact");
    let FactPayload::FileOpenFailed(open) = fact.payload else {
        unreachable!()
    };
    assert_eq!(open.errno, 2, "ENOENT");
    assert_eq!(open.process.pid, me);

    let secret_text = secret.display().to_string();
    let fact = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::FileOpenFailed(f) if f.path == secret_text),
        )
        .await
        .expect("EACCES fact");
    let FactPayload::FileOpenFailed(denied) = fact.payload else {
        unreachable!()
    };
    assert_eq!(denied.errno, 13, "EACCES");
    assert_eq!(denied.process.comm, "cat");

    let new_text = new.display().to_string();
    let old_text = old.display().to_string();
    let fact = running
        .wait_for(Duration::from_secs(5), |p| {
            matches!(p, FactPayload::FileChanged(f) if f.op == FileOp::Rename && f.path == old_text)
        })
        .await
        .expect("rename fact");
    let FactPayload::FileChanged(rename) = fact.payload else {
        unreachable!()
    };
    assert_eq!(rename.new_path.as_deref(), Some(new_text.as_str()));
    assert!(
        running
            .wait_for(Duration::from_secs(5), |p| {
                matches!(p, FactPayload::FileChanged(f) if f.op == FileOp::Unlink && f.path == new_text)
            })
            .await
            .is_some(),
        "unlink fact"
    );

    // Folding: the 1000 failures became a few facts; each folded one is counted.
    let facts = running.facts();
    let opens: Vec<u32> = facts
        .iter()
        .filter_map(|f| match &f.payload {
            FactPayload::FileOpenFailed(o) if o.path == missing_text => Some(o.count),
            _ => None,
        })
        .collect();
    assert!(!opens.is_empty() && opens.len() <= 3, "{opens:?}");
    assert!(facts.iter().all(|f| match &f.payload {
        FactPayload::FileOpenFailed(o) => o.path.starts_with(&prefix),
        FactPayload::FileChanged(c) => c.path.starts_with(&prefix),
        _ => true,
    }));
    let stop_stats = running.stats.clone();
    running.stop().await.expect("clean stop");
    let folded = stop_stats.snapshot().file_aggregated - before.file_aggregated;
    assert_eq!(
        opens.len() as u64 + folded,
        1000,
        "emitted + folded = attempts ({opens:?}, folded {folded})"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
