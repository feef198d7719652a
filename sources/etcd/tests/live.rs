//! The etcd source against a real etcd (Debian's `etcd-server`) on loopback: key changes in
//! order with their revisions, the probes, a compaction, an etcd restart, a source restart that
//! resumes after the kept revision with nothing lost or repeated, a compacted revision
//! re-listed, and a bad endpoint retried until it answers.

mod common;

use std::time::Duration;

use common::{
    Etcd, Running, Scratch, config, connect_client, free_port, kept_revision, key_changes,
    wait_kept,
};
use etcd_client::{Client, GetOptions};
use tapio_model::{EtcdCompaction, EtcdStatus, FactPayload};

const WAIT: Duration = Duration::from_secs(20);

async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    client
        .put(key, value, None)
        .await
        .expect("put")
        .header()
        .expect("a header")
        .revision()
}

async fn delete(client: &mut Client, key: &str) -> i64 {
    client
        .delete(key, None)
        .await
        .expect("delete")
        .header()
        .expect("a header")
        .revision()
}

async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("a header")
        .revision()
}

fn own(
    resource: &str,
    namespace: &str,
    name: &str,
    operation: &'static str,
    revision: i64,
) -> (String, String, String, &'static str, i64) {
    (
        resource.into(),
        namespace.into(),
        name.into(),
        operation,
        revision,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_probes_compaction_restarts_and_resume() {
    let scratch = Scratch::new("changes");
    let mut etcd = Etcd::start(&scratch.0);
    let mut client = connect_client(&etcd).await;
    let before = put(
        &mut client,
        "/registry/configmaps/default/old",
        "before the source",
    )
    .await;
    let config = config(&[etcd.url()], &scratch.0);

    let source = Running::start(&config);
    // A first start keeps the current revision and reports nothing older.
    assert!(
        wait_kept(&scratch.0, before, WAIT).await,
        "the first revision is kept"
    );
    let a1 = put(&mut client, "/registry/configmaps/default/a", "one").await;
    let a2 = put(&mut client, "/registry/configmaps/default/a", "two, longer").await;
    let ns = put(&mut client, "/registry/namespaces/team-b", "ns").await;
    put(&mut client, "/elsewhere/not-kubernetes", "x").await;
    let gone = delete(&mut client, "/registry/configmaps/default/a").await;
    let expected = vec![
        own("configmaps", "default", "a", "create", a1),
        own("configmaps", "default", "a", "update", a2),
        own("namespaces", "", "team-b", "create", ns),
        own("configmaps", "default", "a", "delete", gone),
    ];
    assert!(
        source
            .wait_until(WAIT, |facts| key_changes(facts).len() >= 4)
            .await,
        "four changes arrive"
    );
    let sizes = source.picked(|payload| match payload {
        FactPayload::EtcdKeyChange(change) => Some(change.value_size),
        _ => None,
    });
    assert_eq!(sizes, [3, 11, 2, 0], "value sizes, not values");

    // Probes: healthy, a leader, a database; then a compaction is seen.
    assert!(
        source
            .wait_until(WAIT, |facts| facts.iter().any(|fact| matches!(
                &fact.payload,
                FactPayload::EtcdStatus(EtcdStatus { healthy: true, leader, db_size, .. })
                    if *leader != 0 && *db_size > 0
            )))
            .await,
        "a healthy status with its leader and database size"
    );
    client.compact(ns, None).await.expect("compact");
    assert!(
        source
            .wait_until(WAIT, |facts| facts.iter().any(|fact| matches!(
                &fact.payload,
                FactPayload::EtcdCompaction(EtcdCompaction { revision, .. }) if *revision == ns
            )))
            .await,
        "the compaction at {ns} is reported"
    );

    // etcd restarts: the source reports it unhealthy, reconnects and watches on.
    etcd.stop();
    assert!(
        source
            .wait_until(WAIT, |facts| facts.iter().any(|fact| matches!(
                &fact.payload,
                FactPayload::EtcdStatus(EtcdStatus { healthy: false, error, .. }) if !error.is_empty()
            )))
            .await,
        "an etcd that is down is reported unhealthy"
    );
    etcd.restart();
    let mut client = connect_client(&etcd).await;
    let b = put(&mut client, "/registry/pods/default/b", "pod").await;
    assert!(
        source
            .wait_until(WAIT, |facts| key_changes(facts).len() >= 5)
            .await,
        "a change after etcd's restart arrives"
    );
    let mut expected_first = expected.clone();
    expected_first.push(own("pods", "default", "b", "create", b));
    assert!(
        wait_kept(&scratch.0, b, WAIT).await,
        "the last revision is kept"
    );
    let first_run = source.stop().await;
    assert_eq!(key_changes(&first_run), expected_first);

    // Changes while the source is down arrive after its restart, once each.
    let c = put(&mut client, "/registry/pods/default/c", "c").await;
    let b2 = put(&mut client, "/registry/pods/default/b", "pod again").await;
    let source = Running::start(&config);
    assert!(
        source
            .wait_until(WAIT, |facts| key_changes(facts).len() >= 2)
            .await,
        "the changes made while stopped arrive"
    );
    let d = put(&mut client, "/registry/pods/default/d", "d").await;
    assert!(
        source
            .wait_until(WAIT, |facts| key_changes(facts).len() >= 3)
            .await
    );
    assert!(wait_kept(&scratch.0, d, WAIT).await);
    let second_run = source.stop().await;
    assert_eq!(
        key_changes(&second_run),
        vec![
            own("pods", "default", "c", "create", c),
            own("pods", "default", "b", "update", b2),
            own("pods", "default", "d", "create", d),
        ],
        "nothing lost, nothing repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_is_relisted() {
    let scratch = Scratch::new("relist");
    let etcd = Etcd::start(&scratch.0);
    let mut client = connect_client(&etcd).await;
    put(&mut client, "/registry/secrets/kube-system/unchanged", "u").await;
    put(&mut client, "/registry/secrets/kube-system/changed", "1").await;
    let config = config(&[etcd.url()], &scratch.0);
    let source = Running::start(&config);
    let start = current_revision(&mut client).await;
    assert!(wait_kept(&scratch.0, start, WAIT).await);
    assert!(key_changes(&source.stop().await).is_empty());
    let kept = kept_revision(&scratch.0).expect("kept");

    // While the source is down: a change, a creation, a key created and deleted again; then
    // history is compacted past the kept revision.
    let changed = put(&mut client, "/registry/secrets/kube-system/changed", "22").await;
    let created = put(&mut client, "/registry/services/specs/default/web", "svc").await;
    put(&mut client, "/registry/pods/default/short-lived", "p").await;
    let last = delete(&mut client, "/registry/pods/default/short-lived").await;
    client.compact(last, None).await.expect("compact");
    assert!(kept < last);

    let source = Running::start(&config);
    assert!(
        source
            .wait_until(WAIT, |facts| key_changes(facts).len() >= 2)
            .await,
        "the re-list reports the keys changed since the kept revision"
    );
    let after = put(&mut client, "/registry/pods/default/after", "a").await;
    assert!(
        source
            .wait_until(WAIT, |facts| key_changes(facts).len() >= 3)
            .await,
        "the watch goes on after the re-list"
    );
    assert!(wait_kept(&scratch.0, after, WAIT).await);
    let facts = source.stop().await;
    assert_eq!(
        key_changes(&facts),
        vec![
            own("secrets", "kube-system", "changed", "update", changed),
            own("services/specs", "default", "web", "create", created),
            own("pods", "default", "after", "create", after),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_is_reported_and_retried_until_it_answers() {
    let scratch = Scratch::new("bad");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = config(std::slice::from_ref(&url), &scratch.0);
    let source = Running::start(&config);
    assert!(
        source
            .wait_until(WAIT, |facts| facts
                .iter()
                .filter(|fact| matches!(
                    &fact.payload,
                    FactPayload::EtcdStatus(EtcdStatus { healthy: false, error, endpoint, .. })
                        if !error.is_empty() && *endpoint == format!("127.0.0.1:{port}")
                ))
                .count()
                >= 2)
            .await,
        "the endpoint is probed again and reported unhealthy each time"
    );
    assert!(
        source
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );

    let etcd = Etcd::start_on(&scratch.0, port);
    let mut client = connect_client(&etcd).await;
    assert!(
        source
            .wait_until(WAIT, |facts| facts.iter().any(|fact| matches!(
                &fact.payload,
                FactPayload::EtcdStatus(EtcdStatus { healthy: true, .. })
            )))
            .await,
        "the endpoint is healthy once etcd answers"
    );
    // The watch starts once etcd answers; a change after that arrives.
    assert!(
        wait_kept(&scratch.0, 1, Duration::from_secs(40)).await,
        "the watch started"
    );
    let x = put(&mut client, "/registry/configmaps/default/x", "x").await;
    assert!(
        source
            .wait_until(WAIT, |facts| !key_changes(facts).is_empty())
            .await
    );
    let facts = source.stop().await;
    assert_eq!(
        key_changes(&facts),
        vec![own("configmaps", "default", "x", "create", x)]
    );
}
