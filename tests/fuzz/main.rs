//! Every parser of outside input under the mutation fuzzer of [`engine`], seeded with the real
//! fixtures of [`seeds`]: recording lines, the NATS message payloads, ring-buffer records,
//! the kubelet's JSON, Kubernetes objects, the configuration YAML, DNS messages and captures,
//! and journal entries. Each target asserts that the parser returns (an error or a value)
//! without panicking, hanging or allocating out of proportion, and checks what should hold of
//! what it accepts (a decoded observation re-encodes to itself; a valid configuration
//! round-trips through its YAML).
//!
//! A plain `cargo test -p tapio-tests --test fuzz` runs a few hundred inputs per target; a long
//! run is `TAPIO_FUZZ_SECONDS=600 TAPIO_FUZZ_SEED=$RANDOM cargo test --release -p tapio-tests
//! --test fuzz -- --nocapture` (docs/reliability.md).

mod engine;
mod seeds;

use std::io::Cursor;

use engine::{Shape, fuzz};
use tapio_model::recording::RecordingReader;

#[test]
fn recording_lines() {
    let _one = engine::exclusive();
    let figures = fuzz(
        "recording",
        seeds::recording_windows(),
        Shape::Bytes,
        |input| {
            let lines = input.split(|b| *b == b'\n').count();
            let mut items = 0;
            let mut good = 0;
            for item in RecordingReader::new(Cursor::new(input)) {
                items += 1;
                assert!(items <= lines, "more items than lines");
                if let Ok((_, observation)) = item {
                    good += 1;
                    drop(observation.validate());
                }
            }
            good > 0
        },
    );
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn nats_payloads() {
    let _one = engine::exclusive();
    let (singles, batches) = seeds::observation_lines();
    let seeds = singles.into_iter().chain(batches).collect();
    let figures = fuzz("nats", seeds, Shape::Json, |input| {
        let mut good = false;
        // A message holds one observation per line, as the correlation job reads them.
        for line in input.split(|b| *b == b'\n') {
            if let Ok(observation) = tapio_sources_nats::decode(line) {
                good = true;
                let again = serde_json::to_vec(&observation).expect("an observation encodes");
                let decoded = tapio_sources_nats::decode(&again)
                    .expect("a decoded observation re-encodes to one that decodes");
                assert_eq!(decoded, observation, "decoding is not stable");
            }
        }
        good
    });
    assert!(figures.accepted > 0, "{figures:?}");
}

/// Ring-buffer records start on 8-byte boundaries: `input` copied to such an address of
/// `buffer`.
fn aligned<'a>(buffer: &'a mut Vec<u8>, input: &[u8]) -> &'a [u8] {
    buffer.clear();
    buffer.resize(input.len() + 8, 0);
    let at = buffer.as_ptr().align_offset(8);
    buffer[at..at + input.len()].copy_from_slice(input);
    &buffer[at..at + input.len()]
}

fn ring_seeds() -> Vec<Vec<u8>> {
    use tapio_ebpf_common as common;
    let mut rng = tapio_tests::random::Rng::new(17);
    let sizes = [
        (common::EV_EXEC, size_of::<common::ExecEvent>()),
        (common::EV_FORK, size_of::<common::ForkEvent>()),
        (common::EV_EXIT, size_of::<common::ExitEvent>()),
        (common::EV_OOM, size_of::<common::OomEvent>()),
        (common::EV_TCP, size_of::<common::TcpEvent>()),
        (common::EV_FILE, size_of::<common::FileEvent>()),
        (common::EV_CGROUP_EMPTY, size_of::<common::CgroupEvent>()),
    ];
    let mut seeds = Vec::new();
    for (kind, size) in sizes {
        for _ in 0..4 {
            let mut record = vec![0u8; size];
            record[0..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            record[8..12].copy_from_slice(&kind.to_le_bytes());
            for byte in record[16..].iter_mut().step_by(3) {
                *byte = b"/usr/bin/kubelet\0"[rng.below(17) as usize];
            }
            seeds.push(record);
        }
    }
    // DNS records around the real messages of the captures.
    for message in seeds::dns_messages().into_iter().take(40) {
        let mut record = vec![0u8; common::dns::RECORD_LEN];
        record[0..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
        record[32..40].copy_from_slice(b"coredns\0");
        record[48..52].copy_from_slice(&[10, 0, 0, 7]);
        record[64..68].copy_from_slice(&[10, 96, 0, 10]);
        record[80..82].copy_from_slice(&40000u16.to_ne_bytes());
        record[82..84].copy_from_slice(&53u16.to_ne_bytes());
        let len = message.len().min(common::dns::DNS_MAX);
        record[84..86].copy_from_slice(&(message.len() as u16).to_ne_bytes());
        record[86..88].copy_from_slice(&(len as u16).to_ne_bytes());
        record[88] = 4;
        record[89] = 17;
        record[90] = rng.below(2) as u8;
        record[96..96 + len].copy_from_slice(&message[..len]);
        seeds.push(record);
    }
    seeds
}

#[test]
fn ring_buffer_records() {
    let _one = engine::exclusive();
    let figures = fuzz("ring", ring_seeds(), Shape::Bytes, |input| {
        let mut buffer = Vec::new();
        let bytes = aligned(&mut buffer, input);
        let mut good = false;
        if let Ok(record) = tapio_ebpf_common::decode(bytes) {
            good = true;
            let _ = format!("{record:?} {:?}", record.header());
        }
        if let Ok(event) = tapio_ebpf_common::dns::DnsEvent::parse(bytes) {
            good = true;
            let _ = (event.comm(), format!("{event:?}"));
            drop(tapio_sources_dns::message::decode(event.message));
        }
        good
    });
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn kubelet_answers() {
    let _one = engine::exclusive();
    use tapio_sources_kubelet::parse;
    let lists = seeds::pod_lists();
    let base = parse::pods(&lists[0]).expect("the first pod list parses");
    let seeds = lists.into_iter().chain(seeds::summaries()).collect();
    let figures = fuzz("kubelet", seeds, Shape::Json, |input| {
        let mut good = false;
        let pods = parse::pods(input);
        if let Ok(pods) = &pods {
            good = true;
            drop(parse::pod_changes(&base, pods));
            drop(parse::pod_changes(pods, &base));
        }
        if let Ok(usage) = parse::summary(input) {
            good = true;
            let snapshot = pods.as_ref().unwrap_or(&base);
            for threshold in [0, 80, 100, 255] {
                drop(parse::pressure(snapshot, &usage, threshold));
            }
        }
        good
    });
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn kubernetes_objects() {
    let _one = engine::exclusive();
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use tapio_sources_kubernetes::convert::WatchedKind;

    fn convert<K: WatchedKind>(
        input: &[u8],
        tracker: &mut tapio_sources_kubernetes::StateTracker,
    ) -> bool {
        let Ok(object) = serde_json::from_slice::<K>(input) else {
            return false;
        };
        if let Ok(records) = object.records() {
            let mut id = 0u64;
            let mut out = Vec::new();
            tracker.apply(
                "key",
                records.clone(),
                1,
                &mut || {
                    id += 1;
                    tapio_model::FactId::new("kubernetes", "cluster", id)
                },
                &mut out,
            );
            tracker.apply(
                "key",
                records,
                2,
                &mut || {
                    id += 1;
                    tapio_model::FactId::new("kubernetes", "cluster", id)
                },
                &mut out,
            );
            tracker.delete("key", 3, &mut out);
        }
        true
    }

    let figures = fuzz(
        "kubernetes",
        seeds::kubernetes_objects(),
        Shape::Json,
        |input| {
            let mut tracker = tapio_sources_kubernetes::StateTracker::new();
            let mut good = false;
            good |= convert::<Pod>(input, &mut tracker);
            good |= convert::<Deployment>(input, &mut tracker);
            good |= convert::<ReplicaSet>(input, &mut tracker);
            good |= convert::<StatefulSet>(input, &mut tracker);
            good |= convert::<DaemonSet>(input, &mut tracker);
            good |= convert::<Job>(input, &mut tracker);
            good |= convert::<Service>(input, &mut tracker);
            good |= convert::<EndpointSlice>(input, &mut tracker);
            good |= convert::<Node>(input, &mut tracker);
            if let Ok(event) = serde_json::from_slice::<Event>(input) {
                good = true;
                if let Ok(converted) = tapio_sources_kubernetes::kube_event(&event, 1) {
                    let mut events = tapio_sources_kubernetes::EventTracker::new();
                    assert!(events.apply("uid", &converted), "a first event is news");
                    assert!(!events.apply("uid", &converted), "a repeat is not");
                }
            }
            good
        },
    );
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn configuration_yaml() {
    let _one = engine::exclusive();
    use tapio_config::TapioConfig;
    let figures = fuzz("config", seeds::configs(), Shape::Bytes, |input| {
        let text = String::from_utf8_lossy(input);
        let Ok(config) = TapioConfig::from_yaml_str(&text, "fuzz input") else {
            return false;
        };
        if config.validate().is_ok() {
            let yaml = config.to_yaml();
            let again = TapioConfig::from_yaml_str(&yaml, "fuzz round trip")
                .expect("a valid configuration's YAML reads back");
            assert_eq!(
                again, config,
                "the YAML round trip changed the configuration"
            );
        }
        true
    });
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn dns_messages() {
    let _one = engine::exclusive();
    let figures = fuzz("dns", seeds::dns_messages(), Shape::Bytes, |input| {
        tapio_sources_dns::message::decode(input).is_ok()
    });
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn dns_captures() {
    let _one = engine::exclusive();
    use tapio_sources_dns::capture::{Pcap, segment};
    let figures = fuzz("pcap", seeds::pcaps(), Shape::Bytes, |input| {
        let Ok(pcap) = Pcap::parse(input) else {
            return false;
        };
        for frame in pcap.frames() {
            if let Some(segment) = segment(pcap.link_type, frame.data, &[53, 8053]) {
                drop(tapio_sources_dns::message::decode(segment.message));
            }
        }
        true
    });
    assert!(figures.accepted > 0, "{figures:?}");
}

#[test]
fn journal_kernel_lines() {
    let _one = engine::exclusive();
    use tapio_sources_journal::oom::{OomParser, container_of, killed_process, summary, task_in};
    let kernel: Vec<Vec<u8>> = seeds::journal_entries()
        .iter()
        .filter(|entry| entry["_TRANSPORT"] == "kernel")
        .filter_map(|entry| Some(entry["MESSAGE"].as_str()?.as_bytes().to_vec()))
        .collect::<Vec<_>>()
        .chunks(8)
        .map(|lines| lines.join(&b'\n'))
        .collect();
    let seeds = seeds::oom_logs().into_iter().chain(kernel).collect();
    let figures = fuzz("journal-kernel", seeds, Shape::Bytes, |input| {
        let text = String::from_utf8_lossy(input);
        let mut parser = OomParser::default();
        let mut good = false;
        for (time, line) in text.lines().enumerate() {
            drop((task_in(line), killed_process(line), summary(line)));
            drop(container_of(line));
            if let Some(record) = parser.line(line, time as u64) {
                good = true;
                let fact = record.to_fact();
                let _ = format!("{fact:?}");
            }
        }
        good
    });
    assert!(figures.inputs > 0, "{figures:?}");
}

#[test]
fn journal_unit_messages() {
    let _one = engine::exclusive();
    use tapio_sources_journal::units::{UnitExits, UnitFilter, UnitMessage};
    let seeds: Vec<Vec<u8>> = seeds::journal_entries()
        .iter()
        .filter(|entry| entry.get("UNIT").is_some())
        .map(|entry| serde_json::to_vec(entry).expect("JSON"))
        .collect();
    let filters = [
        UnitFilter::new(&["*".to_string()]),
        UnitFilter::new(&["kubelet.service".to_string(), "*.mount".to_string()]),
        UnitFilter::new(&["k*?e*t*.s?rvice".to_string()]),
    ];
    let figures = fuzz("journal-units", seeds, Shape::Json, |input| {
        let Ok(serde_json::Value::Object(entry)) = serde_json::from_slice(input) else {
            return false;
        };
        let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let message = UnitMessage {
            message_id: field("MESSAGE_ID").unwrap_or_default(),
            unit: field("UNIT").unwrap_or_default(),
            job_type: field("JOB_TYPE"),
            job_result: field("JOB_RESULT").or_else(|| field("RESULT")),
            unit_result: field("UNIT_RESULT"),
            exit_code: field("EXIT_CODE"),
            exit_status: field("EXIT_STATUS"),
        };
        let mut exits = UnitExits::default();
        let mut good = false;
        for filter in &filters {
            for _ in 0..2 {
                good |= exits.message(&message, filter).is_some();
            }
        }
        good
    });
    assert!(figures.inputs > 0, "{figures:?}");
}
