//! The kubelet collector (layer L2; depends on `tapio-sources`, `tapio-model` and
//! `tapio-config`): polls this node's kubelet API over TLS with a bearer token.
//!
//! Every `poll_interval` it reads `/pods` (the kubelet's own view of its pods' status) and
//! `/stats/summary` (per-container use), compares them with the previous poll, and sends only
//! what changed, as facts:
//!
//! - a container's previous instance terminated (restart count and last termination's exit
//!   code and reason, e.g. 137 `OOMKilled`) → `container_exit`;
//! - a container's readiness flipped (its readiness probe started or stopped failing) →
//!   `container_ready`;
//! - a container's memory working set or CPU use reached `usage_threshold_percent` of its
//!   limit, or fell back below → `resource_usage`.
//!
//! The first poll is the baseline and reports nothing: what it shows happened before the
//! source started. Node conditions (Memory/Disk/PIDPressure) come from the Node objects the
//! `kubernetes` collector watches (`node_condition` state), not from here: the kubelet API has
//! no endpoint for them. A poll that fails is logged and retried at the next interval; an
//! answer that does not parse is counted in `errors`. A heartbeat goes out after every poll and
//! every engine tick.

pub mod parse;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::{KubeletCollectorConfig, TapioConfig};
use tapio_model::{Fact, FactPayload, ResourceUsage};
use tapio_sources::{BoxFuture, Source, SourceContext, SourceError, now_ns};

use crate::parse::{ContainerKey, PodsSnapshot};

/// The kubelet source of the validated `config` (`collectors.kubelet`), with a heartbeat every
/// engine tick; does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(KubeletSource::new(
        &config.collectors.kubelet,
        config.correlation.engine.tick,
    )))
}

/// Polls the kubelet.
#[derive(Debug)]
pub struct KubeletSource {
    config: KubeletCollectorConfig,
    heartbeat: Duration,
}

impl KubeletSource {
    /// A source polling as the validated `config` (`collectors.kubelet`) says, sending a
    /// heartbeat at least every `heartbeat` (the engine's tick); does no I/O.
    pub fn new(config: &KubeletCollectorConfig, heartbeat: Duration) -> KubeletSource {
        KubeletSource {
            config: config.clone(),
            heartbeat,
        }
    }
}

/// A kube-rs client aimed at the kubelet: TLS with the given CA (or none), the token file
/// re-read as it rotates.
async fn client(settings: &KubeletCollectorConfig) -> Result<kube::Client, SourceError> {
    use kube::config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    };
    let file = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "kubelet".into(),
            cluster: Some(Cluster {
                server: Some(settings.url.clone()),
                // Empty: the system roots.
                certificate_authority: Some(settings.ca_path.clone())
                    .filter(|path| !path.is_empty()),
                insecure_skip_tls_verify: Some(settings.insecure_skip_tls_verify),
                ..Cluster::default()
            }),
            other: BTreeMap::new(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "tapio".into(),
            auth_info: Some(AuthInfo {
                token_file: Some(settings.token_path.clone()),
                ..AuthInfo::default()
            }),
            other: BTreeMap::new(),
        }],
        contexts: vec![NamedContext {
            name: "kubelet".into(),
            context: Some(Context {
                cluster: "kubelet".into(),
                user: Some("tapio".into()),
                ..Context::default()
            }),
            other: BTreeMap::new(),
        }],
        current_context: Some("kubelet".into()),
        ..Kubeconfig::default()
    };
    let input = |source: Box<dyn std::error::Error + Send + Sync>| SourceError::Input {
        kind: "kubelet",
        what: format!("the kubelet at {}", settings.url),
        source,
    };
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|error| input(Box::new(error)))?;
    kube::Client::try_from(config).map_err(|error| input(Box::new(error)))
}

async fn get(client: &kube::Client, path: &str) -> Result<Vec<u8>, kube::Error> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await.map(String::into_bytes)
}

/// The state carried from one poll to the next.
#[derive(Default)]
struct Polls {
    pods: Option<PodsSnapshot>,
    pressure: BTreeMap<(ContainerKey, tapio_model::Resource), ResourceUsage>,
}

impl Polls {
    /// Facts from one poll's answers.
    fn facts(
        &mut self,
        pods: PodsSnapshot,
        usage: Option<&BTreeMap<ContainerKey, parse::Usage>>,
        threshold: u8,
    ) -> Vec<FactPayload> {
        let mut out = Vec::new();
        let baseline = self.pods.is_none();
        if let Some(previous) = &self.pods {
            out.extend(parse::pod_changes(previous, &pods));
        }
        if let Some(usage) = usage {
            let now = parse::pressure(&pods, usage, threshold);
            if !baseline {
                for (key, above) in &now {
                    if !self.pressure.contains_key(key) {
                        out.push(FactPayload::ResourceUsage(above.clone()));
                    }
                }
                for (key, was) in &self.pressure {
                    if now.contains_key(key) {
                        continue;
                    }
                    let used = usage.get(&key.0).and_then(|usage| match key.1 {
                        tapio_model::Resource::Memory => usage.memory,
                        tapio_model::Resource::Cpu => usage.cpu,
                    });
                    if let Some(used) = used {
                        out.push(FactPayload::ResourceUsage(ResourceUsage {
                            used,
                            above: false,
                            ..was.clone()
                        }));
                    }
                }
            }
            self.pressure = now;
        }
        self.pods = Some(pods);
        out
    }
}

impl Source for KubeletSource {
    fn kind(&self) -> &'static str {
        "kubelet"
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let settings = self.config;
            let client = client(&settings).await?;
            tracing::info!(url = %settings.url, interval = ?settings.poll_interval, "Polling the kubelet.");
            cx.health.set_running();
            let mut polls = Polls::default();
            let mut poll = tokio::time::interval(settings.poll_interval);
            let mut beat = tokio::time::interval(self.heartbeat.max(Duration::from_millis(1)));
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cx.shutdown.cancelled() => break,
                    _ = beat.tick() => {
                        if cx.heartbeat(now_ns()).await.is_err() { break; }
                    }
                    _ = poll.tick() => {
                        let observed = now_ns();
                        let pods = match get(&client, "/pods").await {
                            Ok(body) => body,
                            Err(error) => {
                                tracing::warn!(url = %settings.url, %error, "Reading /pods failed; retrying at the next poll.");
                                continue;
                            }
                        };
                        cx.stats.received.fetch_add(1, Ordering::Relaxed);
                        let pods = match parse::pods(&pods) {
                            Ok(pods) => pods,
                            Err(error) => {
                                cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(url = %settings.url, %error, "Skipped a /pods answer that does not parse.");
                                continue;
                            }
                        };
                        cx.stats.errors.fetch_add(pods.skipped as u64, Ordering::Relaxed);
                        let usage = match get(&client, "/stats/summary").await {
                            Ok(body) => {
                                cx.stats.received.fetch_add(1, Ordering::Relaxed);
                                parse::summary(&body).map_err(|error| {
                                    cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(url = %settings.url, %error, "Skipped a /stats/summary answer that does not parse.");
                                }).ok()
                            }
                            Err(error) => {
                                tracing::warn!(url = %settings.url, %error, "Reading /stats/summary failed; usage is checked at the next poll.");
                                None
                            }
                        };
                        let facts = polls.facts(pods, usage.as_ref(), settings.usage_threshold_percent);
                        let mut closed = false;
                        for payload in facts {
                            let fact = Fact { id: cx.next_fact_id(), time_ns: observed, payload };
                            if cx.send(tapio_model::Observation::Fact(fact)).await.is_err() {
                                closed = true;
                                break;
                            }
                        }
                        if closed || cx.heartbeat(now_ns()).await.is_err() { break; }
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_crossings_are_reported_once_each_way() {
        let pods = parse::pods(
            br#"{"items": [{"metadata": {"name": "p", "namespace": "n", "uid": "u"},
                "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "100"}}}]},
                "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}}]}"#,
        )
        .unwrap();
        let usage = |bytes: u64| {
            BTreeMap::from([(
                ("u".to_string(), "c".to_string()),
                parse::Usage {
                    memory: Some(bytes),
                    cpu: None,
                },
            )])
        };
        let mut polls = Polls::default();
        assert!(
            polls.facts(pods.clone(), Some(&usage(95)), 90).is_empty(),
            "baseline"
        );
        assert!(polls.facts(pods.clone(), Some(&usage(96)), 90).is_empty());
        assert!(polls.facts(pods.clone(), Some(&usage(50)), 90).len() == 1);
        let up = polls.facts(pods.clone(), Some(&usage(91)), 90);
        assert!(
            matches!(&up[..], [FactPayload::ResourceUsage(u)] if u.above && u.used == 91 && u.limit == 100 && u.threshold_percent == 90)
        );
        assert!(polls.facts(pods, Some(&usage(99)), 90).is_empty());
    }
}
