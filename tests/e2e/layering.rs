//! The layering rule (the layer table in `docs/architecture.md`): lower layers never import
//! higher ones, and siblings in a layer never import each other. Reads `cargo metadata` and
//! fails on any internal dependency edge the table below does not allow.

use std::collections::BTreeSet;
use std::process::Command;

/// The internal crates a crate may depend on, or `None` for a crate this table does not know
/// (which fails the test: add new crates here deliberately).
fn allowed(name: &str) -> Option<&'static [&'static str]> {
    const L0: &[&str] = &[];
    Some(match name {
        // L0: vocabulary and configuration.
        "tapio-config" | "tapio-model" | "tapio-ebpf-common" => L0,
        // L1: contracts and the eBPF loader.
        "tapio-sources" | "tapio-sinks" => &["tapio-model", "tapio-config"],
        "tapio-ebpf" => &["tapio-ebpf-common", "tapio-config"],
        // L2: collectors, destinations, the engine.
        "tapio-sources-kernel" | "tapio-sources-dns" => &[
            "tapio-sources",
            "tapio-model",
            "tapio-config",
            "tapio-ebpf",
            "tapio-ebpf-common",
        ],
        "tapio-dataflow" => &["tapio-model", "tapio-config"],
        source if source.starts_with("tapio-sources-") => {
            &["tapio-sources", "tapio-model", "tapio-config"]
        }
        sink if sink.starts_with("tapio-sinks-") => &["tapio-sinks", "tapio-model", "tapio-config"],
        // L3: the question catalog, answered from Neo4j or from the in-memory store (a sink).
        "tapio-queries" => &[
            "tapio-dataflow",
            "tapio-model",
            "tapio-config",
            "tapio-sinks-store",
        ],
        // L4: the binary, tests and benchmarks may use everything.
        "tapio" | "tapio-tests" | "tapio-benches" => return Some(&["*"]),
        _ => return None,
    })
}

#[test]
fn internal_dependencies_follow_the_layer_table() {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(tapio_tests::repo_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let internal: BTreeSet<&str> = packages
        .iter()
        .filter_map(|package| package["name"].as_str())
        .collect();
    assert!(internal.contains("tapio-model") && internal.contains("tapio-dataflow"));
    let mut violations = Vec::new();
    for package in packages {
        let name = package["name"].as_str().expect("package name");
        let Some(allowed) = allowed(name) else {
            violations.push(format!("`{name}` is not in the layer table"));
            continue;
        };
        for dependency in package["dependencies"].as_array().expect("dependencies") {
            let target = dependency["name"].as_str().expect("dependency name");
            // A crate may name itself as a dev-dependency to turn on its own test-only feature
            // (the Neo4j sink's `test-harness`): that is no edge between crates.
            if !internal.contains(target) || allowed.contains(&"*") || target == name {
                continue;
            }
            if !allowed.contains(&target) {
                violations.push(format!("`{name}` must not depend on `{target}`"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_table_rejects_upward_and_sibling_edges() {
    assert!(!allowed("tapio-model").unwrap().contains(&"tapio-dataflow"));
    assert!(
        !allowed("tapio-dataflow")
            .unwrap()
            .contains(&"tapio-sources")
    );
    assert!(
        !allowed("tapio-sources-recording")
            .unwrap()
            .contains(&"tapio-sinks")
    );
    assert!(
        !allowed("tapio-sinks-jsonl")
            .unwrap()
            .contains(&"tapio-sinks-neo4j")
    );
    assert!(allowed("tapio-unknown").is_none());
}
