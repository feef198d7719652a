//! Without the privileges to load eBPF, the DNS source fails with one clear `Unsupported` error
//! that names the missing capabilities and the remedy, like the kernel source. Checked by
//! re-running this test as `nobody` with every capability dropped.

use std::time::Duration;

use tapio_config::DnsCollectorConfig;
use tapio_sources::{SourceError, run_for_test};
use tapio_sources_dns::live::DnsSource;

const CHILD: &str = "TAPIO_DNS_TEST_UNPRIVILEGED_CHILD";

#[tokio::test]
async fn unprivileged_is_unsupported_naming_the_capabilities() {
    if std::env::var_os(CHILD).is_some() {
        // The unprivileged side: run the source and report its error.
        let source = DnsSource::new(&DnsCollectorConfig::default());
        let result = run_for_test(Box::new(source), "node", Duration::from_secs(5)).await;
        match result {
            Err(SourceError::Unsupported { kind, requirement }) => {
                assert_eq!(kind, "dns");
                println!("UNSUPPORTED: {requirement}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        return;
    }
    // A copy in the temp dir: `nobody` may not be allowed into the checkout (e.g. under /root).
    let exe = std::env::temp_dir().join(format!("tapio-dns-errors-test-{}", std::process::id()));
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
            "unprivileged_is_unsupported_naming_the_capabilities",
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
    assert!(
        line.contains("CAP_BPF") && line.contains("CAP_PERFMON") && line.contains("root"),
        "{line}"
    );
}
