//! The DNS failures incident end to end: recorded from a real DNS server, client and capture
//! (`tapio_tests::dns_incident`), replayed through `tapio replay`, and explained as one chain
//! from the DNS server's failure through the client pod's failed lookups to its failed
//! connects. `UPDATE_RECORDINGS=1 cargo test --test e2e dns` rewrites the shipped recording
//! `tests/recordings/dns-failures.jsonl` from a new run.

use tapio_model::recording::RecordingWriter;
use tapio_model::{
    Basis, Correlation, CorrelationKind, Detail, DnsOutcome, Family, Observed, Relation,
};
use tapio_tests::dns_incident::{self, CLIENT_POD, DNS_POD, NAME, SERVER_IP};

use crate::support::{current, replay, scratch};

/// The shipped recording.
fn shipped() -> std::path::PathBuf {
    tapio_tests::recordings().join("dns-failures.jsonl")
}

/// The one DNS failure a replay of `recording` ends with, checked hop by hop.
fn assert_whole_chain(recording: &std::path::Path, name: &str) -> Correlation {
    let (changes, _) = replay(recording, &[], name);
    let found: Vec<Correlation> = current(&changes)
        .into_iter()
        .filter(|correlation| correlation.kind == CorrelationKind::DnsFailure)
        .collect();
    assert_eq!(found.len(), 1, "{found:#?}");
    let correlation = found.into_iter().next().expect("one");
    assert_eq!(correlation.family, Family::Dependency);
    assert_eq!(correlation.root_cause.to_string(), DNS_POD);
    let chain = &correlation.chain;
    // The server's container exit starts it ...
    assert_eq!(chain[0].relation, Relation::Start);
    assert_eq!(chain[0].entity.to_string(), DNS_POD);
    assert!(
        matches!(&chain[0].observed, Observed::ContainerExit { container_name, .. } if &**container_name == "dnsmasq"),
        "{:?}",
        chain[0]
    );
    // ... it caused three unanswered lookups of the name from the client pod ...
    for (hop, relation) in
        chain[1..4]
            .iter()
            .zip([Relation::Caused, Relation::FollowedBy, Relation::FollowedBy])
    {
        assert_eq!(hop.relation, relation);
        assert_eq!(hop.entity.to_string(), CLIENT_POD);
        assert!(
            matches!(&hop.observed, Observed::DnsQuery { name, outcome: DnsOutcome::TimedOut, server, .. }
                if &**name == NAME && &**server == format!("{SERVER_IP}:53").as_str()),
            "{hop:?}"
        );
        assert!(hop.time >= chain[0].time);
    }
    // ... which caused the client's refused connects to its backend.
    assert_eq!(chain[4].relation, Relation::Caused);
    assert_eq!(chain[4].entity.to_string(), CLIENT_POD);
    assert!(
        matches!(&chain[4].observed, Observed::TcpConnect { outcome, .. } if outcome.is_failure()),
        "{:?}",
        chain[4]
    );
    assert!(chain[4].time >= chain[1].time);
    let Detail::DnsFailure {
        failed_lookups,
        connect_errors,
        ..
    } = correlation.detail
    else {
        panic!("{:?}", correlation.detail)
    };
    assert!(failed_lookups >= 4, "{failed_lookups}");
    assert_eq!(connect_errors, 2);
    assert_eq!(correlation.confidence.percent, 95);
    assert!(
        correlation
            .confidence
            .basis
            .contains(&Basis::DnsServerFailureObserved)
    );
    correlation
}

/// A real run: dnsmasq answers, is stopped (its lookups go unanswered, the client's connects
/// are refused) and started again; the capture decodes into lookups of every outcome, and the
/// recording made from it replays to the whole chain.
#[test]
fn a_real_dns_outage_is_recorded_and_explained() {
    let observations = dns_incident::record().expect("record the incident");
    let outcomes: Vec<DnsOutcome> = observations
        .iter()
        .filter_map(|observation| match observation {
            tapio_model::Observation::Fact(fact) => match &fact.payload {
                tapio_model::FactPayload::DnsQuery(query) => Some(query.outcome),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let count = |wanted| {
        outcomes
            .iter()
            .filter(|outcome| **outcome == wanted)
            .count()
    };
    // The readiness checks and the client's healthy and recovered lookups; the missing name;
    // the outage.
    assert!(count(DnsOutcome::Answered) >= 6, "{outcomes:?}");
    assert_eq!(count(DnsOutcome::NxDomain), 1, "{outcomes:?}");
    assert!(count(DnsOutcome::TimedOut) >= 4, "{outcomes:?}");
    let mut bytes = Vec::new();
    let mut writer = RecordingWriter::new(&mut bytes).expect("header");
    for observation in &observations {
        writer.write(observation).expect("write");
    }
    drop(writer);
    let dir = scratch("dns-live");
    let path = dir.join("dns-failures.jsonl");
    std::fs::write(&path, &bytes).expect("write the recording");
    assert_whole_chain(&path, "dns-live-replay");
    if std::env::var_os("UPDATE_RECORDINGS").is_some() {
        std::fs::write(shipped(), &bytes).expect("write the shipped recording");
    }
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

/// The shipped recording replays to the same chain.
#[test]
fn the_shipped_dns_recording_replays_to_the_whole_chain() {
    assert_whole_chain(&shipped(), "dns-shipped");
}
