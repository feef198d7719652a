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
//! A fact's time is the poll's, except a readiness change's: Kubernetes records when a pod's
//! containers' readiness last changed (the `lastTransitionTime` of its `ContainersReady`
//! condition, or of `Ready` without one), and the fact carries that time when the condition
//! agrees with the container's readiness and the time falls after the previous poll and not
//! after this one; otherwise the poll's time. A poll only sees a change up to a poll interval
//! after it happened, and the endpoints of a pod that stopped being ready change within
//! moments, so the recorded time keeps the readiness change before its consequences.
//! Kubernetes records these times to the second (the time is the start of the second the
//! change happened in), so a later poll may report a change up to a second before the latest
//! poll, and the heartbeats promise only that far.
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
use tapio_model::{Fact, FactPayload, ResourceUsage, TimeNs};
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

/// Kubernetes records condition transition times to the second: a recorded time is a whole
/// second at or up to this long before the transition.
const RECORDED_PRECISION_NS: TimeNs = 1_000_000_000;

/// The state carried from one poll to the next.
#[derive(Default)]
struct Polls {
    pods: Option<PodsSnapshot>,
    /// When the latest poll was made.
    polled_ns: TimeNs,
    pressure: BTreeMap<(ContainerKey, tapio_model::Resource), ResourceUsage>,
}

impl Polls {
    /// Facts from the answers of the poll made at `observed`, with their times: the time
    /// Kubernetes recorded for a readiness change when it is known and falls after the
    /// previous poll (within the second it is recorded to) and not after this one, the poll's
    /// own time otherwise.
    fn facts(
        &mut self,
        pods: PodsSnapshot,
        usage: Option<&BTreeMap<ContainerKey, parse::Usage>>,
        threshold: u8,
        observed: TimeNs,
    ) -> Vec<(TimeNs, FactPayload)> {
        let mut out = Vec::new();
        let baseline = self.pods.is_none();
        if let Some(previous) = &self.pods {
            let after = self.polled_ns;
            out.extend(parse::pod_changes(previous, &pods).into_iter().map(
                |(recorded, payload)| {
                    let time = recorded
                        .filter(|at| at.saturating_add(RECORDED_PRECISION_NS) > after)
                        .filter(|at| *at <= observed)
                        .unwrap_or(observed);
                    (time, payload)
                },
            ));
        }
        if let Some(usage) = usage {
            let now = parse::pressure(&pods, usage, threshold);
            if !baseline {
                for (key, above) in &now {
                    if !self.pressure.contains_key(key) {
                        out.push((observed, FactPayload::ResourceUsage(above.clone())));
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
                        out.push((
                            observed,
                            FactPayload::ResourceUsage(ResourceUsage {
                                used,
                                above: false,
                                ..was.clone()
                            }),
                        ));
                    }
                }
            }
            self.pressure = now;
        }
        self.pods = Some(pods);
        self.polled_ns = observed;
        out
    }

    /// How far this source's facts are complete at `now`: a later poll may report a
    /// readiness change at a time Kubernetes recorded up to a second before the latest poll,
    /// so the promise trails that poll (or, before the first, `now`) by a second.
    fn complete_to(&self, now: TimeNs) -> TimeNs {
        let upto = if self.pods.is_some() {
            self.polled_ns.min(now)
        } else {
            now
        };
        upto.saturating_sub(RECORDED_PRECISION_NS)
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
                        if cx.heartbeat(polls.complete_to(now_ns())).await.is_err() { break; }
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
                        let facts = polls.facts(pods, usage.as_ref(), settings.usage_threshold_percent, observed);
                        let mut closed = false;
                        for (time_ns, payload) in facts {
                            let fact = Fact { id: cx.next_fact_id(), time_ns, payload };
                            if cx.send(tapio_model::Observation::Fact(fact)).await.is_err() {
                                closed = true;
                                break;
                            }
                        }
                        if closed || cx.heartbeat(polls.complete_to(now_ns())).await.is_err() { break; }
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
            polls
                .facts(pods.clone(), Some(&usage(95)), 90, 1)
                .is_empty(),
            "baseline"
        );
        assert!(
            polls
                .facts(pods.clone(), Some(&usage(96)), 90, 2)
                .is_empty()
        );
        assert!(polls.facts(pods.clone(), Some(&usage(50)), 90, 3).len() == 1);
        let up = polls.facts(pods.clone(), Some(&usage(91)), 90, 4);
        assert!(
            matches!(&up[..], [(4, FactPayload::ResourceUsage(u))] if u.above && u.used == 91 && u.limit == 100 && u.threshold_percent == 90)
        );
        assert!(polls.facts(pods, Some(&usage(99)), 90, 5).is_empty());
    }

    const SECOND: TimeNs = 1_000_000_000;
    /// 2026-12-07T19:10:46Z, in ns.
    const AT: TimeNs = 1_796_670_646 * SECOND;

    /// A pod whose one container is `ready`, with a `ContainersReady` condition of `status`
    /// that last changed at `AT` + `offset` seconds (none when `offset` is `None`).
    fn pod(ready: bool, status: &str, offset: Option<i64>) -> PodsSnapshot {
        let conditions = offset.map_or(String::new(), |offset| {
            let at = k8s_openapi::jiff::Timestamp::from_second(1_796_670_646 + offset).unwrap();
            format!(
                r#", "conditions": [{{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}},
                {{"type": "ContainersReady", "status": "{status}", "lastTransitionTime": "{at}"}}]"#
            )
        });
        parse::pods(
            format!(
                r#"{{"items": [{{"metadata": {{"name": "p", "namespace": "n", "uid": "u"}},
                "status": {{"containerStatuses": [{{"name": "c", "containerID": "containerd://abc",
                "image": "i", "imageID": "", "ready": {ready}, "restartCount": 0}}]{conditions}}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// The time of the one readiness fact of a poll at `poll` after a poll at `before`.
    fn readiness_time(now: PodsSnapshot, before: TimeNs, poll: TimeNs) -> TimeNs {
        let mut polls = Polls::default();
        assert!(
            polls
                .facts(pod(true, "True", None), None, 90, before)
                .is_empty()
        );
        match &polls.facts(now, None, 90, poll)[..] {
            [(time, FactPayload::ContainerReady(ready))] => {
                assert!(!ready.ready);
                *time
            }
            other => panic!("one readiness change, got {other:?}"),
        }
    }

    #[test]
    fn readiness_changes_carry_the_time_kubernetes_recorded() {
        let (before, poll) = (AT - SECOND / 2, AT + 700_000_000);
        // Recorded in the second after the previous poll began: that time.
        assert_eq!(
            readiness_time(pod(false, "False", Some(0)), before, poll),
            AT
        );
        // The recorded second may start before the previous poll: the change is in it.
        assert_eq!(
            readiness_time(
                pod(false, "False", Some(0)),
                AT + SECOND / 2,
                AT + 2 * SECOND
            ),
            AT
        );
        // A condition that changed before the previous poll, or after this one, or whose
        // status disagrees with the container's, is not this change: the poll's time.
        assert_eq!(
            readiness_time(pod(false, "False", Some(-2)), before, poll),
            poll
        );
        assert_eq!(
            readiness_time(pod(false, "False", Some(3)), before, poll),
            poll
        );
        assert_eq!(
            readiness_time(pod(false, "True", Some(0)), before, poll),
            poll
        );
        // No condition: the poll's time.
        assert_eq!(
            readiness_time(pod(false, "False", None), before, poll),
            poll
        );
    }

    #[test]
    fn heartbeats_trail_the_latest_poll_by_the_recorded_precision() {
        let mut polls = Polls::default();
        assert_eq!(polls.complete_to(AT), AT - SECOND);
        polls.facts(pod(true, "True", None), None, 90, AT);
        assert_eq!(polls.complete_to(AT + 5 * SECOND), AT - SECOND);
        // What a later poll may still report is after the promise.
        let time = readiness_time(pod(false, "False", Some(0)), AT, AT + 3 * SECOND);
        assert!(time > polls.complete_to(AT + 5 * SECOND));
    }
}
