//! The container runtime collector (layer L2; depends on `tapio-sources`, `tapio-model` and
//! `tapio-config`): reads containerd over its unix socket and reports what happens to the
//! node's pod sandboxes and containers:
//!
//! - a sandbox or container created, started, and deleted, and a sandbox exited →
//!   `runtime_change`, with the pod (from the Kubernetes labels the kubelet sets: namespace,
//!   name, uid), the container's name and image;
//! - a container exited, with its exit code and the runtime's reason (`OOMKilled`, `Error`,
//!   `Completed`) → `container_exit`, the fact the kubelet collector reports too, so rules see
//!   a container's end the same way whichever reported it.
//!
//! State comes from the CRI v1 `RuntimeService` (`ListPodSandbox`, `ListContainers`,
//! `ContainerStatus`, `PodSandboxStatus`); changes come from containerd's own event service
//! (`Events/Subscribe`: `/tasks/start`, `/tasks/exit`, `/tasks/oom`, `/containers/create`,
//! `/containers/delete`), because containerd 1.6 does not implement CRI's
//! `GetContainerEvents`. An event only says which object to look at again: its CRI status is
//! what is reported, once CRI reflects the event (it updates its view a moment after
//! containerd's event).
//!
//! At start the collector lists everything as a baseline and reports nothing of it. When
//! containerd goes away (a restart, a broken socket), it connects again every
//! `collectors.cri.retry_interval`, subscribes, lists again, and reports only the differences:
//! what was created, started, exited or deleted while it was away, each with the runtime's own
//! time for it. Nothing is reported twice.

mod runtime;
pub mod track;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tapio_config::{CriCollectorConfig, TapioConfig};
use tapio_model::{Fact, Observation, RuntimeObject};
use tapio_sources::{BoxFuture, Source, SourceContext, SourceError, Status, now_ns};
use tokio::time::Instant;

pub use crate::runtime::{Expect, RuntimeError, channel};
use crate::runtime::{Runtime, touched};
use crate::track::{Found, Phase, Seen, Tracker};

/// The source kind.
const KIND: &str = "cri";

/// How long after an event the collector keeps looking for CRI to reflect it.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Time between two looks at an object whose CRI status has not caught up with its event.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// How long the collector waits for its subscription to containerd's events to go live.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// How often progress is promised to the dataflow while nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The runtime source of the validated `config` (`collectors.cri`); does no I/O.
///
/// # Errors
/// None today; the signature is the one every source crate exports.
pub fn from_config(config: &TapioConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(Box::new(CriSource::new(&config.collectors.cri)))
}

/// Reads containerd.
#[derive(Debug)]
pub struct CriSource {
    config: CriCollectorConfig,
}

impl CriSource {
    /// A source reading as the validated `config` (`collectors.cri`) says; does no I/O.
    pub fn new(config: &CriCollectorConfig) -> CriSource {
        CriSource {
            config: config.clone(),
        }
    }
}

/// An object to look at again, and until when.
struct Pending {
    expect: Expect,
    exit: Option<(i32, u64)>,
    due: Instant,
    until: Instant,
}

/// Why a session with the runtime ended.
enum End {
    /// Tapio is shutting down, or the dataflow stopped taking observations.
    Stop,
    /// The runtime went away; connect again.
    Lost(RuntimeError),
}

impl Source for CriSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<(), SourceError>> {
        Box::pin(async move {
            let config = self.config;
            let socket = PathBuf::from(config.socket.trim());
            let mut tracker = Tracker::new();
            let mut baseline = true;
            loop {
                let end = session(&cx, &config, &socket, &mut tracker, &mut baseline).await;
                let error = match end {
                    End::Stop => break,
                    End::Lost(error) => error,
                };
                cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                let message = error_chain(&error);
                tracing::warn!(socket = %socket.display(), error = %message, retry_in = ?config.retry_interval, "Lost the container runtime; connecting again.");
                cx.health.set(Status::Starting, Some(message));
                tokio::select! {
                    () = cx.shutdown.cancelled() => break,
                    () = tokio::time::sleep(config.retry_interval) => {}
                }
            }
            Ok(())
        })
    }
}

/// An error with its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One connection: subscribe, list, then follow events until the runtime goes away.
async fn session(
    cx: &SourceContext,
    config: &CriCollectorConfig,
    socket: &std::path::Path,
    tracker: &mut Tracker,
    baseline: &mut bool,
) -> End {
    let mut runtime = match Runtime::connect(socket).await {
        Ok(runtime) => runtime,
        Err(error) => return End::Lost(error),
    };
    // Subscribe before listing, so that nothing between the listing and the first event is
    // missed; an event about something the listing already showed reports nothing.
    let mut events = match runtime.subscribe(&config.namespace, SUBSCRIBE_WAIT).await {
        Ok(events) => events,
        Err(error) => return End::Lost(error),
    };
    let (looks, listed) = match runtime.list(tracker).await {
        Ok(listed) => listed,
        Err(error) => return End::Lost(error),
    };
    let now = now_ns();
    let mut found = Vec::new();
    for look in looks {
        tracker.observe(look, now, *baseline, &mut found);
    }
    tracker.retain_listed(&listed, now, &mut found);
    if *baseline {
        tracing::info!(socket = %socket.display(), known = tracker.len(), "Listed the container runtime's sandboxes and containers.");
    } else {
        tracing::info!(socket = %socket.display(), changes = found.len(), "Reconnected to the container runtime; reported what changed meanwhile.");
    }
    *baseline = false;
    if send(cx, &mut found).await.is_err() || cx.heartbeat(now).await.is_err() {
        return End::Stop;
    }
    cx.health.set_running();
    let mut pending: HashMap<Arc<str>, Pending> = HashMap::new();
    let mut next_beat = Instant::now() + HEARTBEAT;
    loop {
        let due = pending
            .values()
            .map(|pending| pending.due)
            .min()
            .unwrap_or(next_beat)
            .min(next_beat);
        tokio::select! {
            () = cx.shutdown.cancelled() => return End::Stop,
            event = events.next() => {
                let envelope = match event {
                    Ok(envelope) => envelope,
                    Err(error) => return End::Lost(error),
                };
                cx.stats.received.fetch_add(1, Ordering::Relaxed);
                match touched(&envelope) {
                    Ok(Some(touched)) => {
                        let now = Instant::now();
                        let entry = pending.entry(touched.id).or_insert(Pending {
                            expect: touched.expect,
                            exit: None,
                            due: now,
                            until: now + CATCH_UP,
                        });
                        entry.expect = touched.expect;
                        entry.exit = touched.exit.or(entry.exit);
                        entry.due = now;
                        entry.until = now + CATCH_UP;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %envelope.topic, error = %error, "Cannot decode a containerd event; skipping it.");
                    }
                }
            }
            () = tokio::time::sleep_until(due) => {
                let now = Instant::now();
                let mut ready: Vec<Arc<str>> = pending
                    .iter()
                    .filter(|(_, pending)| pending.due <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                ready.sort();
                let mut found = Vec::new();
                for id in ready {
                    let Some(entry) = pending.get_mut(&id) else { continue };
                    let look = match look_at(&mut runtime, tracker, &id).await {
                        Ok(look) => look,
                        Err(error) => return End::Lost(error),
                    };
                    let phase = match look {
                        Some(mut look) => {
                            if let (RuntimeObject::Sandbox, Phase::Exited, Some((code, at))) =
                                (look.object, look.phase, entry.exit)
                            {
                                look.exit_code = code;
                                look.finished_ns = at;
                            }
                            let phase = look.phase;
                            tracker.observe(look, now_ns(), false, &mut found);
                            Some(tracker.get(&id).map_or(phase, |known| known.phase))
                        }
                        None => {
                            tracker.gone(&id, now_ns(), &mut found);
                            None
                        }
                    };
                    if entry.expect.met_by(phase) || now >= entry.until {
                        pending.remove(&id);
                    } else {
                        entry.due = now + LOOK_AGAIN;
                    }
                }
                if send(cx, &mut found).await.is_err() {
                    return End::Stop;
                }
                if now >= next_beat {
                    // Promise progress only while no look is outstanding: what it finds may
                    // carry an earlier time.
                    if pending.is_empty() && cx.heartbeat(now_ns()).await.is_err() {
                        return End::Stop;
                    }
                    next_beat = now + HEARTBEAT;
                }
            }
        }
    }
}

/// The current CRI view of `id`: as a sandbox when it is known as one, as a container
/// otherwise, and as a sandbox when CRI knows no container of that id.
async fn look_at(
    runtime: &mut Runtime,
    tracker: &Tracker,
    id: &str,
) -> Result<Option<Seen>, RuntimeError> {
    if tracker
        .get(id)
        .is_some_and(|known| known.object == RuntimeObject::Sandbox)
    {
        return runtime.sandbox_status(id).await;
    }
    if let Some(mut look) = runtime.container_status(id).await? {
        look.sandbox_id = match tracker.get(id) {
            Some(known) => known.sandbox_id.clone(),
            None => runtime.sandbox_of(id).await?,
        };
        return Ok(Some(look));
    }
    runtime.sandbox_status(id).await
}

/// Sends the facts found, in time order.
async fn send(cx: &SourceContext, found: &mut Vec<Found>) -> Result<(), tapio_sources::Closed> {
    if found.is_empty() {
        return Ok(());
    }
    found.sort_by_key(|(time, _)| *time);
    let mut batch: Vec<Observation> = found
        .drain(..)
        .map(|(time_ns, payload)| {
            Observation::Fact(Fact {
                id: cx.next_fact_id(),
                time_ns,
                payload,
            })
        })
        .collect();
    cx.send_batch(&mut batch).await
}
