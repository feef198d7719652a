//! Without the privileges to load eBPF, the source fails with one clear `Unsupported` error
//! that names the requirement and the remedy. Checked by re-running this test as `nobody`
//! with every capability dropped.

use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_sources::{SourceError, run_for_test};
use tapio_sources_kernel::KernelSource;

const CHILD: &str = "TAPIO_KERNEL_TEST_UNPRIVILEGED_CHILD";

#[tokio::test]
async fn unprivileged_is_unsupported_with_a_remedy() {
    if std::env::var_os(CHILD).is_some() {
        // The unprivileged side: run the source and report its error.
        let source = KernelSource::new(&KernelCollectorConfig::default()).unwrap();
        let result = run_for_test(Box::new(source), "node", Duration::from_secs(5)).await;
        match result {
            Err(SourceError::Unsupported { kind, requirement }) => {
                assert_eq!(kind, "kernel");
                println!("UNSUPPORTED: {requirement}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        return;
    }
    // A copy in the temp dir: `nobody` may not be allowed into the checkout (e.g. under /root).
    let exe = std::env::temp_dir().join(format!("tapio-errors-test-{}", std::process::id()));
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "unprivileged_is_unsupported_with_a_remedy",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .await
        .expect("setpriv from util-linux");
    std::fs::remove_file(&exe).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("UNSUPPORTED: "))
        .expect("the child printed the error");
    assert!(line.contains("CAP_BPF") && line.contains("root"), "{line}");
}
