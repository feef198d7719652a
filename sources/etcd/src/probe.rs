//! The endpoint probes: every `probe_interval`, each endpoint in turn is asked for one key
//! with a linearizable read (which goes through the leader, so its time is the cluster's read
//! latency as the API server sees it) and for its status (leader, raft term, database size).
//! A leader other than the one the endpoint reported at its previous answered probe is a
//! leader change. Once per round the cluster's compacted revision is read (a watch from
//! revision 1 of a key nobody writes is refused with it when history has been compacted); a
//! rise is a compaction.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, WatchOptions};
use tapio_config::EtcdCollectorConfig;
use tapio_model::{EtcdCompaction, EtcdLeaderChange, EtcdStatus, Fact, FactPayload, Observation};
use tapio_sources::{SourceContext, now_ns};

use crate::{endpoint_address, pause};

/// The key the read probe asks for (as `etcdctl endpoint health` does); it need not exist.
const HEALTH_KEY: &[u8] = b"health";
/// The key the compaction probe watches; nothing writes it.
const COMPACTION_PROBE_KEY: &[u8] = b"\0tapio-compaction-probe";
/// How long the compaction probe waits for etcd to refuse its watch: etcd checks unsynced
/// watchers every 100 ms.
const COMPACTION_WAIT: Duration = Duration::from_millis(500);

/// One endpoint's probe state.
struct Endpoint {
    url: String,
    address: String,
    client: Option<Client>,
    leader: Option<u64>,
}

/// Probes every endpoint every `probe_interval` until shutdown.
pub async fn run(cx: &SourceContext, config: &EtcdCollectorConfig) {
    let mut endpoints: Vec<Endpoint> = config
        .endpoints
        .iter()
        .map(|url| Endpoint {
            url: url.clone(),
            address: endpoint_address(url),
            client: None,
            leader: None,
        })
        .collect();
    let mut compacted: Option<i64> = None;
    let mut failing: HashMap<String, bool> = HashMap::new();
    loop {
        let mut facts = Vec::new();
        let mut answered: Option<Client> = None;
        for endpoint in &mut endpoints {
            let status = probe(endpoint, config).await;
            let was_failing = failing.insert(endpoint.address.clone(), !status.healthy);
            if status.healthy {
                if was_failing == Some(true) {
                    tracing::info!(endpoint = %endpoint.url, "etcd endpoint answers again.");
                }
                if answered.is_none() {
                    answered = endpoint.client.clone();
                }
                if let Some(previous) = endpoint.leader
                    && previous != status.leader
                {
                    tracing::warn!(endpoint = %endpoint.url, previous = %format!("{previous:x}"), leader = %format!("{:x}", status.leader), term = status.raft_term, "etcd leader changed.");
                    facts.push(FactPayload::EtcdLeaderChange(EtcdLeaderChange {
                        endpoint: endpoint.address.clone(),
                        previous,
                        leader: status.leader,
                        raft_term: status.raft_term,
                    }));
                }
                endpoint.leader = Some(status.leader);
            } else {
                cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                if was_failing != Some(true) {
                    tracing::warn!(endpoint = %endpoint.url, error = %status.error, "etcd endpoint does not answer; probing on.");
                }
            }
            facts.push(FactPayload::EtcdStatus(status));
        }
        if let Some(client) = answered {
            match compacted_revision(client, config.timeout).await {
                Ok(revision) => {
                    if let Some(previous) = compacted
                        && revision > previous
                    {
                        tracing::info!(revision, previous, "etcd compacted its history.");
                        facts.push(FactPayload::EtcdCompaction(EtcdCompaction {
                            endpoint: endpoints
                                .iter()
                                .find(|endpoint| failing.get(&endpoint.address) == Some(&false))
                                .map_or_else(String::new, |endpoint| endpoint.address.clone()),
                            revision,
                        }));
                    }
                    compacted = Some(compacted.unwrap_or(0).max(revision));
                }
                Err(error) => {
                    cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %error, "Cannot read etcd's compacted revision.");
                }
            }
        }
        cx.stats
            .received
            .fetch_add(facts.len() as u64, Ordering::Relaxed);
        let time_ns = now_ns();
        let mut batch: Vec<Observation> = facts
            .into_iter()
            .map(|payload| {
                Observation::Fact(Fact {
                    id: cx.next_fact_id(),
                    time_ns,
                    payload,
                })
            })
            .collect();
        if cx.send_batch(&mut batch).await.is_err() || cx.heartbeat(now_ns()).await.is_err() {
            return;
        }
        if !pause(&cx.shutdown, config.probe_interval).await {
            return;
        }
    }
}

/// One probe of `endpoint`: a linearizable read, then its status.
async fn probe(endpoint: &mut Endpoint, config: &EtcdCollectorConfig) -> EtcdStatus {
    let mut status = EtcdStatus {
        endpoint: endpoint.address.clone(),
        healthy: false,
        latency_ns: 0,
        leader: 0,
        raft_term: 0,
        db_size: 0,
        db_size_in_use: 0,
        error: String::new(),
    };
    let client = match &endpoint.client {
        Some(client) => client.clone(),
        None => match crate::connect(std::slice::from_ref(&endpoint.url), config).await {
            Ok(client) => {
                endpoint.client = Some(client.clone());
                client
            }
            Err(error) => {
                status.error = format!("cannot connect: {error}");
                return status;
            }
        },
    };
    let started = Instant::now();
    let read = tokio::time::timeout(config.timeout, {
        let mut client = client.clone();
        async move {
            client
                .get(HEALTH_KEY, Some(GetOptions::new().with_keys_only()))
                .await
        }
    })
    .await;
    status.latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    match read {
        Err(_) => {
            status.error = format!("a read took longer than {:?}", config.timeout);
            return status;
        }
        Ok(Err(error)) => {
            status.error = format!("a read failed: {error}");
            return status;
        }
        Ok(Ok(_)) => {}
    }
    let answer = tokio::time::timeout(config.timeout, {
        let mut client = client.clone();
        async move { client.status().await }
    })
    .await;
    match answer {
        Err(_) => status.error = format!("the status took longer than {:?}", config.timeout),
        Ok(Err(error)) => status.error = format!("the status failed: {error}"),
        Ok(Ok(answer)) => {
            status.healthy = true;
            status.leader = answer.leader();
            status.raft_term = answer.raft_term();
            status.db_size = u64::try_from(answer.db_size()).unwrap_or(0);
            status.db_size_in_use = u64::try_from(answer.raft_used_db_size()).unwrap_or(0);
        }
    }
    status
}

/// The revision up to which etcd has compacted its history (0: never compacted): a watch of a
/// key nobody writes, from revision 1, is refused with it.
async fn compacted_revision(mut client: Client, timeout: Duration) -> Result<i64, String> {
    let options = WatchOptions::new().with_start_revision(1);
    let mut stream =
        tokio::time::timeout(timeout, client.watch(COMPACTION_PROBE_KEY, Some(options)))
            .await
            .map_err(|_| format!("the watch took longer than {timeout:?}"))?
            .map_err(|error| error.to_string())?;
    let deadline = tokio::time::sleep(timeout.max(COMPACTION_WAIT));
    tokio::pin!(deadline);
    let mut created_at: Option<Instant> = None;
    loop {
        let wait = match created_at {
            Some(at) => COMPACTION_WAIT.saturating_sub(at.elapsed()),
            None => timeout,
        };
        let message = tokio::select! {
            () = &mut deadline => return Err(format!("no answer within {timeout:?}")),
            () = tokio::time::sleep(wait) => {
                return if created_at.is_some() { Ok(0) } else { Err(format!("no answer within {timeout:?}")) };
            }
            message = stream.message() => message,
        };
        match message {
            Ok(Some(response)) => {
                if response.compact_revision() > 0 {
                    return Ok(response.compact_revision());
                }
                if response.canceled() {
                    return Err(format!(
                        "etcd cancelled the watch: {}",
                        response.cancel_reason()
                    ));
                }
                if response.created() {
                    created_at = Some(Instant::now());
                }
            }
            Ok(None) => return Err("etcd closed the watch stream".into()),
            Err(error) => return Err(error.to_string()),
        }
    }
}
