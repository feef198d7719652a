//! Seeds: the real fixtures shipped with the tests, cut into parser-sized inputs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tapio_tests::random::Rng;
use tapio_tests::{fixtures, recordings, repo_root};

/// The recordings' lines (header lines excluded), file by file.
pub fn recording_files() -> Vec<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(recordings())
        .expect("tests/recordings")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            std::fs::read_to_string(file)
                .expect("a recording")
                .lines()
                .filter(|line| !line.contains("tapio_recording"))
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Windows of consecutive lines of each recording, each under the recording header.
pub fn recording_windows() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    let mut seeds = Vec::new();
    for lines in recording_files() {
        for _ in 0..24 {
            let start = rng.below(lines.len() as u64) as usize;
            let end = (start + 1 + rng.below(12) as usize).min(lines.len());
            let mut text = String::from("{\"tapio_recording\":1}\n");
            for line in &lines[start..end] {
                text.push_str(line);
                text.push('\n');
            }
            seeds.push(text.into_bytes());
        }
    }
    seeds
}

/// Single observation lines of every kind in the recordings, and batches of a few of them.
pub fn observation_lines() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut rng = Rng::new(11);
    let mut singles = Vec::new();
    let mut batches = Vec::new();
    for lines in recording_files() {
        // Every shape of line of the recording (its punctuation: which keys nest how), and a
        // spread of the rest.
        let mut seen = std::collections::BTreeSet::new();
        for line in &lines {
            let shape: String = line
                .chars()
                .filter(|c| matches!(c, '{' | '}' | '[' | ']' | ':' | ','))
                .collect();
            if seen.insert(shape) || rng.below(200) == 0 {
                singles.push(line.as_bytes().to_vec());
            }
        }
        for _ in 0..8 {
            let start = rng.below(lines.len() as u64) as usize;
            let end = (start + 2 + rng.below(4) as usize).min(lines.len());
            batches.push(lines[start..end].join("\n").into_bytes());
        }
    }
    (singles, batches)
}

/// The two sonobuoy result tarballs, extracted once into the test build's scratch directory.
pub fn sonobuoy() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        ["results-0.9.tar.gz", "results-0.10.tar.gz"]
            .iter()
            .map(|tarball| {
                let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-seeds");
                let dir = root.join(tarball);
                if !dir.join("resources").is_dir() {
                    // Extract beside and rename, so that concurrent runs never see half a tree.
                    let partial = root.join(format!("{tarball}.{}", std::process::id()));
                    std::fs::create_dir_all(&partial).expect("create a seed directory");
                    let status = Command::new("tar")
                        .arg("xzf")
                        .arg(fixtures().join("k8s/sonobuoy").join(tarball))
                        .arg("-C")
                        .arg(&partial)
                        .status()
                        .expect("run tar");
                    assert!(status.success(), "extract {tarball}");
                    if std::fs::rename(&partial, &dir).is_err() {
                        // Another run extracted it first.
                        std::fs::remove_dir_all(&partial).ok();
                    }
                }
                dir
            })
            .collect()
    })
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every object of the listed kinds in the sonobuoy resources and the kspan rollout, one JSON
/// document each.
pub fn kubernetes_objects() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for dir in sonobuoy() {
        for namespace in ["kube-system", "default", "heptio-sonobuoy"] {
            for list in [
                "Pods",
                "Deployments",
                "ReplicaSets",
                "DaemonSets",
                "Services",
                "Endpoints",
                "Events",
            ] {
                let path = dir.join(format!("resources/ns/{namespace}/{list}.json"));
                if let Some(value) = read_json(&path) {
                    push_items(&value, &mut seeds);
                }
            }
        }
        if let Some(value) = read_json(&dir.join("resources/cluster/Nodes.json")) {
            push_items(&value, &mut seeds);
        }
    }
    let kspan = std::fs::read_to_string(fixtures().join("k8s/kspan/deployment-2-pods.yaml"))
        .expect("the kspan fixture");
    for document in kspan.split("\n---") {
        if let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(document)
            && value.is_object()
        {
            seeds.push(serde_json::to_vec(&value).expect("JSON"));
        }
    }
    // Events are many and alike; every fourth keeps the seeds varied and the run short.
    let mut rng = Rng::new(3);
    seeds.retain(|seed| {
        !seed.windows(18).any(|w| w == b"\"involvedObject\":{") || rng.below(4) == 0
    });
    seeds
}

/// The objects of a list: sonobuoy writes a bare array, the API a `List` with `items`.
fn push_items(value: &serde_json::Value, seeds: &mut Vec<Vec<u8>>) {
    if let Some(items) = value
        .as_array()
        .or_else(|| value.get("items").and_then(|items| items.as_array()))
    {
        for item in items {
            seeds.push(serde_json::to_vec(item).expect("JSON"));
        }
    }
}

/// The kubelet's `/pods` answers: the sonobuoy pod lists, whole and cut to their first items.
pub fn pod_lists() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for dir in sonobuoy() {
        for namespace in ["kube-system", "heptio-sonobuoy"] {
            let path = dir.join(format!("resources/ns/{namespace}/Pods.json"));
            let Some(items) = read_json(&path) else {
                continue;
            };
            // The kubelet answers a PodList.
            let mut value =
                serde_json::json!({"kind": "PodList", "apiVersion": "v1", "items": items});
            seeds.push(serde_json::to_vec(&value).expect("JSON"));
            if let Some(items) = value.get_mut("items").and_then(|i| i.as_array_mut()) {
                items.truncate(2);
            }
            seeds.push(serde_json::to_vec(&value).expect("JSON"));
        }
    }
    seeds
}

/// `/stats/summary` answers in the kubelet's shape for the sonobuoy pods (the fixtures hold no
/// summary; the pods, containers and uids are real, the numbers are made up).
pub fn summaries() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(5);
    pod_lists()
        .iter()
        .map(|list| {
            let list: serde_json::Value = serde_json::from_slice(list).expect("JSON");
            let pods: Vec<serde_json::Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|pod| {
                    let containers: Vec<serde_json::Value> = pod["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            serde_json::json!({
                                "name": c["name"],
                                "cpu": {"usageNanoCores": rng.below(4_000_000_000)},
                                "memory": {"usageBytes": rng.below(1 << 32),
                                           "workingSetBytes": rng.below(1 << 32),
                                           "rssBytes": rng.below(1 << 30)},
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "podRef": {"name": pod["metadata"]["name"],
                                   "namespace": pod["metadata"]["namespace"],
                                   "uid": pod["metadata"]["uid"]},
                        "containers": containers,
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "node": {"nodeName": "n1", "memory": {"workingSetBytes": 5}},
                "pods": pods,
            }))
            .expect("JSON")
        })
        .collect()
}

/// Journal entries of the sonobuoy nodes (systemd's JSON export): the kernel's lines and the
/// unit messages, as single-entry JSON documents.
pub fn journal_entries() -> Vec<serde_json::Value> {
    let mut entries = Vec::new();
    let mut rng = Rng::new(13);
    for dir in sonobuoy() {
        let results = dir.join("plugins/systemd_logs/results");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&results)
            .expect("systemd logs")
            .filter_map(|entry| Some(entry.ok()?.path()))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a systemd log");
            for line in text.lines() {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let unit = entry.get("MESSAGE_ID").is_some() && entry.get("UNIT").is_some();
                let kernel = entry["_TRANSPORT"] == "kernel";
                if (unit && rng.below(8) == 0) || (kernel && rng.below(4) == 0) {
                    entries.push(entry);
                }
            }
        }
    }
    entries
}

/// The kernel OOM-kill logs of `tests/fixtures/oom`, whole (one line per kernel message).
pub fn oom_logs() -> Vec<Vec<u8>> {
    let dir = fixtures().join("oom");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/oom")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read(file).expect("an OOM log"))
        .collect()
}

/// The DNS captures of `tests/fixtures/dns`.
pub fn pcaps() -> Vec<Vec<u8>> {
    let dir = fixtures().join("dns");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/dns")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "pcap"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read(file).expect("a capture"))
        .collect()
}

/// The DNS messages in the captures (UDP payloads; TCP ones without their length prefix).
pub fn dns_messages() -> Vec<Vec<u8>> {
    use tapio_sources_dns::capture::{Pcap, segment};
    let captures = pcaps();
    let mut messages = Vec::new();
    for capture in &captures {
        let Ok(pcap) = Pcap::parse(capture) else {
            continue;
        };
        for frame in pcap.frames() {
            if let Some(segment) = segment(pcap.link_type, frame.data, &[53, 8053]) {
                messages.push(segment.message.to_vec());
            }
        }
    }
    messages
}

/// The configuration: `config/tapio.yaml` and every YAML example in the configuration docs.
pub fn configs() -> Vec<Vec<u8>> {
    let root = repo_root();
    let mut seeds = vec![std::fs::read(root.join("config/tapio.yaml")).expect("tapio.yaml")];
    let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap_or_default();
    for block in docs.split("```yaml").skip(1) {
        if let Some((yaml, _)) = block.split_once("```") {
            seeds.push(yaml.as_bytes().to_vec());
        }
    }
    seeds
}
