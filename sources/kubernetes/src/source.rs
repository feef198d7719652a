//! The live source: one kube-rs watcher per kind and namespace, merged into one loop that
//! turns their events into state updates and facts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource};
use tapio_config::{KubernetesCollectorConfig, TapioConfig};
use tapio_model::{Fact, FactId, FactPayload, Heartbeat, Observation, StateObject, TimeNs};
use tapio_sources::{
    BoxFuture, Closed, Counter, Counters, Source, SourceContext, SourceError, first_sequence,
    now_ns,
};

use crate::convert::{ConvertError, WatchedKind, kube_event};
use crate::tracker::{EventTracker, StateTracker};

/// The node name in this source's fact ids and heartbeats: the API server is cluster-wide.
pub const CLUSTER_NODE: &str = "cluster";

/// Counters beyond [`tapio_sources::SourceStats`]: how often watches failed and re-listed.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watch or list requests that failed (the watcher retries them with backoff).
    pub watch_errors: AtomicU64,
    /// Completed (re-)lists over all streams.
    pub relists: AtomicU64,
}

impl Counters for WatchStats {
    fn read(&self, into: &mut Vec<Counter>) {
        into.extend([
            Counter::new("watch_errors", self.watch_errors.load(Ordering::Relaxed)),
            Counter::new("relists", self.relists.load(Ordering::Relaxed)),
        ]);
    }
}

/// The Kubernetes source of the validated `config` (`collectors.kubernetes`), with a heartbeat
/// every engine tick; does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(KubernetesSource::new(
        &config.collectors.kubernetes,
        config.correlation.engine.tick,
    )))
}

/// Watches the API server.
#[derive(Debug)]
pub struct KubernetesSource {
    config: KubernetesCollectorConfig,
    heartbeat: Duration,
    stats: Arc<WatchStats>,
}

impl KubernetesSource {
    /// A source watching what the validated `config` (`collectors.kubernetes`) asks for,
    /// sending a heartbeat every `heartbeat` (the engine's tick, the longest it may stay
    /// silent); does no I/O.
    pub fn new(config: &KubernetesCollectorConfig, heartbeat: Duration) -> KubernetesSource {
        KubernetesSource {
            config: config.clone(),
            heartbeat,
            stats: Arc::default(),
        }
    }

    /// The source's watch counters, shared with the running source.
    pub fn watch_stats(&self) -> Arc<WatchStats> {
        Arc::clone(&self.stats)
    }
}

/// One change from one watch stream, converted.
enum Change {
    Init,
    Apply {
        key: String,
        records: Result<Vec<StateObject>, ConvertError>,
        listing: bool,
    },
    Delete {
        key: String,
    },
    Event {
        key: String,
        event: Result<tapio_model::KubeEvent, ConvertError>,
        received: TimeNs,
    },
    EventDelete {
        key: String,
    },
    InitDone,
    Failed {
        error: String,
        malformed: bool,
    },
}

struct Item {
    stream: usize,
    kind: &'static str,
    change: Change,
}

/// The key of an object in its stream: its uid, or namespace/name when it has none.
fn key_of<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    match &meta.uid {
        Some(uid) if !uid.is_empty() => uid.clone(),
        _ => format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    }
}

fn failed(error: &watcher::Error) -> Change {
    let malformed = matches!(
        error,
        watcher::Error::WatchFailed(kube::Error::SerdeError(_))
            | watcher::Error::InitialListFailed(kube::Error::SerdeError(_))
    );
    Change::Failed {
        error: error.to_string(),
        malformed,
    }
}

fn state_stream<K: WatchedKind>(
    api: Api<K>,
    config: watcher::Config,
    stream: usize,
) -> BoxStream<'static, Item> {
    watcher(api, config)
        .default_backoff()
        .map(move |event| {
            let change = match event {
                Ok(watcher::Event::Init) => Change::Init,
                Ok(watcher::Event::InitApply(object)) => Change::Apply {
                    key: key_of(&object),
                    records: object.records(),
                    listing: true,
                },
                Ok(watcher::Event::Apply(object)) => Change::Apply {
                    key: key_of(&object),
                    records: object.records(),
                    listing: false,
                },
                Ok(watcher::Event::Delete(object)) => Change::Delete {
                    key: key_of(&object),
                },
                Ok(watcher::Event::InitDone) => Change::InitDone,
                Err(error) => failed(&error),
            };
            Item {
                stream,
                kind: K::KIND,
                change,
            }
        })
        .boxed()
}

fn event_stream(api: Api<Event>, stream: usize) -> BoxStream<'static, Item> {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| match event {
            watcher::Event::Init => Change::Init,
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let received = now_ns();
                Change::Event {
                    key: key_of(&object),
                    event: kube_event(&object, received),
                    received,
                }
            }
            watcher::Event::Delete(object) => Change::EventDelete {
                key: key_of(&object),
            },
            watcher::Event::InitDone => Change::InitDone,
        })
        .map(move |change| Item {
            stream,
            kind: "Event",
            change: change.unwrap_or_else(|error| failed(&error)),
        })
        .boxed()
}

enum Tracker {
    State(StateTracker),
    Events(EventTracker),
}

/// The merged streams and their trackers: everything the loop needs, built from a client.
struct Watches {
    streams: SelectAll<BoxStream<'static, Item>>,
    trackers: Vec<Tracker>,
}

impl Watches {
    fn new(client: &Client, config: &KubernetesCollectorConfig) -> Watches {
        let mut watches = Watches {
            streams: SelectAll::new(),
            trackers: Vec::new(),
        };
        let mut watch_config = watcher::Config::default();
        if let Some(selector) = label_selector(config) {
            watch_config = watch_config.labels(selector);
        }
        let scopes: Vec<Option<&str>> = if config.namespaces.is_empty() {
            vec![None]
        } else {
            config
                .namespaces
                .iter()
                .map(|ns| Some(ns.as_str()))
                .collect()
        };
        for scope in scopes {
            watches.add::<Pod>(client, scope, &watch_config);
            watches.add::<ReplicaSet>(client, scope, &watch_config);
            watches.add::<Deployment>(client, scope, &watch_config);
            watches.add::<StatefulSet>(client, scope, &watch_config);
            watches.add::<DaemonSet>(client, scope, &watch_config);
            watches.add::<Job>(client, scope, &watch_config);
            watches.add::<Service>(client, scope, &watch_config);
            watches.add::<EndpointSlice>(client, scope, &watch_config);
            let events: Api<Event> = match scope {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let index = watches.trackers.len();
            watches.trackers.push(Tracker::Events(EventTracker::new()));
            watches.streams.push(event_stream(events, index));
        }
        let index = watches.trackers.len();
        watches.trackers.push(Tracker::State(StateTracker::new()));
        watches.streams.push(state_stream(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            index,
        ));
        watches
    }

    fn add<K>(&mut self, client: &Client, scope: Option<&str>, config: &watcher::Config)
    where
        K: WatchedKind + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let api = match scope {
            Some(namespace) => Api::<K>::namespaced(client.clone(), namespace),
            None => Api::<K>::all(client.clone()),
        };
        let index = self.trackers.len();
        self.trackers.push(Tracker::State(StateTracker::new()));
        self.streams.push(state_stream(api, config.clone(), index));
    }
}

/// Turns converted changes into observations; owns the trackers and the id sequence.
struct Loop<'a> {
    cx: &'a SourceContext,
    stats: &'a WatchStats,
    seq: u64,
    updates: Vec<tapio_model::StateUpdate>,
}

impl Loop<'_> {
    fn next_id(seq: &mut u64) -> FactId {
        *seq += 1;
        FactId::new("kubernetes", CLUSTER_NODE, *seq)
    }

    async fn heartbeat(&self) -> Result<(), Closed> {
        self.cx
            .out
            .send(Observation::Heartbeat(Heartbeat {
                source: "kubernetes".into(),
                node: CLUSTER_NODE.into(),
                upto_ns: now_ns(),
            }))
            .await
            .map_err(|_| Closed)
    }

    async fn handle(&mut self, tracker: &mut Tracker, item: Item) -> Result<(), Closed> {
        let Item { kind, change, .. } = item;
        let now = now_ns();
        match (tracker, change) {
            (_, Change::Failed { error, malformed }) => {
                self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                if malformed {
                    self.cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(kind, malformed, %error, "Watch failed; retrying with backoff.");
            }
            (Tracker::State(tracker), Change::Init) => tracker.init(),
            (Tracker::Events(tracker), Change::Init) => tracker.init(),
            (Tracker::State(tracker), Change::InitDone) => {
                self.stats.relists.fetch_add(1, Ordering::Relaxed);
                tracker.init_done(now, &mut self.updates);
                tracing::debug!(kind, objects = tracker.len(), "Listed.");
            }
            (Tracker::Events(tracker), Change::InitDone) => {
                self.stats.relists.fetch_add(1, Ordering::Relaxed);
                tracker.init_done();
            }
            (
                Tracker::State(tracker),
                Change::Apply {
                    key,
                    records,
                    listing,
                },
            ) => {
                self.cx.stats.received.fetch_add(1, Ordering::Relaxed);
                match records {
                    Ok(records) => {
                        let seq = &mut self.seq;
                        tracker.apply(
                            &key,
                            records,
                            now,
                            &mut || Self::next_id(seq),
                            &mut self.updates,
                        );
                    }
                    Err(error) => {
                        self.cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(kind, key, listing, %error, "Skipped an object that cannot be converted.");
                        // Whatever it stood for before is no longer known to hold.
                        tracker.delete(&key, now, &mut self.updates);
                    }
                }
            }
            (Tracker::State(tracker), Change::Delete { key }) => {
                self.cx.stats.received.fetch_add(1, Ordering::Relaxed);
                tracker.delete(&key, now, &mut self.updates);
            }
            (
                Tracker::Events(tracker),
                Change::Event {
                    key,
                    event,
                    received,
                },
            ) => {
                self.cx.stats.received.fetch_add(1, Ordering::Relaxed);
                match event {
                    Ok(event) => {
                        if tracker.apply(&key, &event) {
                            let id = Self::next_id(&mut self.seq);
                            self.cx
                                .send(Observation::Fact(Fact {
                                    id,
                                    time_ns: received,
                                    payload: FactPayload::KubeEvent(event),
                                }))
                                .await?;
                        }
                    }
                    Err(error) => {
                        self.cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(key, %error, "Skipped an Event Tapio cannot place.");
                    }
                }
            }
            (Tracker::Events(tracker), Change::EventDelete { key }) => tracker.delete(&key),
            (tracker, change) => {
                let state = matches!(tracker, Tracker::State(_));
                let what = match change {
                    Change::Event { .. } | Change::EventDelete { .. } => "an Event",
                    _ => "an object",
                };
                tracing::error!(
                    kind,
                    state,
                    what,
                    "Dropped a change routed to the wrong tracker."
                );
                self.cx.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        for update in self.updates.drain(..) {
            self.cx.send(Observation::State(update)).await?;
        }
        Ok(())
    }
}

/// The kubeconfig file to read; `None` infers (in-cluster, `$KUBECONFIG`, `~/.kube/config`).
fn kubeconfig(config: &KubernetesCollectorConfig) -> Option<&Path> {
    Some(Path::new(&config.kubeconfig)).filter(|path| !path.as_os_str().is_empty())
}

/// The label selector of namespaced objects other than Events; `None` selects everything.
fn label_selector(config: &KubernetesCollectorConfig) -> Option<&str> {
    Some(config.label_selector.as_str()).filter(|selector| !selector.trim().is_empty())
}

async fn client(config: &KubernetesCollectorConfig) -> Result<Client, SourceError> {
    let input =
        |what: String, source: Box<dyn std::error::Error + Send + Sync>| SourceError::Input {
            kind: "kubernetes",
            what,
            source,
        };
    let config = match kubeconfig(config) {
        Some(path) => {
            let what = format!("the kubeconfig {}", path.display());
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|error| input(what.clone(), Box::new(error)))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|error| input(what, Box::new(error)))?
        }
        None => kube::Config::infer().await.map_err(|error| {
            input(
                "the in-cluster or default kubeconfig".into(),
                Box::new(error),
            )
        })?,
    };
    let url = config.cluster_url.to_string();
    Client::try_from(config)
        .map_err(|error| input(format!("the API server {url}"), Box::new(error)))
}

impl Source for KubernetesSource {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            cx.health
                .add_counters(Arc::clone(&self.stats) as Arc<dyn Counters>);
            let client = client(&self.config).await?;
            let Watches {
                mut streams,
                mut trackers,
            } = Watches::new(&client, &self.config);
            tracing::info!(
                streams = trackers.len(),
                namespaces = ?self.config.namespaces,
                selector = ?label_selector(&self.config),
                "Watching the API server."
            );
            cx.health.set_running();
            let mut every = tokio::time::interval(self.heartbeat.max(Duration::from_millis(1)));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut work = Loop {
                cx: &cx,
                stats: &self.stats,
                // `next_id` adds one before use, so the first id is `first_sequence()`.
                seq: first_sequence() - 1,
                updates: Vec::new(),
            };
            loop {
                let step = tokio::select! {
                    () = cx.shutdown.cancelled() => break,
                    _ = every.tick() => work.heartbeat().await,
                    item = streams.next() => match item {
                        Some(item) => {
                            let index = item.stream;
                            match trackers.get_mut(index) {
                                Some(tracker) => work.handle(tracker, item).await,
                                None => Ok(()),
                            }
                        }
                        None => break,
                    },
                };
                if step.is_err() {
                    tracing::info!("The dataflow stopped; the Kubernetes source stops.");
                    break;
                }
            }
            Ok(())
        })
    }
}
