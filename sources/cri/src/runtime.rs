//! The connection to containerd: one gRPC channel over its unix socket, with the CRI v1
//! `RuntimeService` client (listings and statuses) and containerd's `Events` client
//! (`Subscribe`) on it. Both clients are generated from the published protos (the `k8s-cri`
//! and `containerd-client` crates).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::events::{ContainerCreate, ContainerDelete, TaskExit};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxState, PodSandboxStatusRequest,
};
use prost::Message;
use tapio_model::{RuntimeObject, TimeNs};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::track::{CONTAINER_NAME, Phase, RESTART_COUNT, Seen, Tracker};

/// Largest gRPC message taken in: a node's listing of every container.
const MAX_MESSAGE: usize = 64 << 20;

/// Why talking to the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket could not be connected to.
    #[error("cannot connect to the container runtime at {socket}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("the container runtime at {socket} failed `{call}`")]
    Call {
        /// The socket.
        socket: PathBuf,
        /// The call, e.g. `RuntimeService/ListContainers`.
        call: &'static str,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// The event stream ended.
    #[error("the container runtime at {socket} closed its event stream")]
    EventsEnded {
        /// The socket.
        socket: PathBuf,
    },
}

/// The topic of the marker event the collector publishes to learn that its subscription is
/// live.
pub const MARKER: &str = "/tapio/cri/subscribed";

/// Events read ahead of the collector.
const EVENT_BUFFER: usize = 4096;

/// A live subscription to containerd's events, read by a task of its own (stopped on drop).
pub struct Subscription {
    socket: PathBuf,
    events: mpsc::Receiver<Result<Envelope, RuntimeError>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The next event.
    ///
    /// # Errors
    /// [`RuntimeError::EventsEnded`] or [`RuntimeError::Call`] when the stream broke.
    pub async fn next(&mut self) -> Result<Envelope, RuntimeError> {
        match self.events.recv().await {
            Some(item) => item,
            None => Err(RuntimeError::EventsEnded {
                socket: self.socket.clone(),
            }),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An open connection to containerd.
pub struct Runtime {
    socket: PathBuf,
    cri: RuntimeServiceClient<Channel>,
    events: EventsClient<Channel>,
}

/// What one event of containerd's asks the collector to look at again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Touched {
    /// The sandbox or container id.
    pub id: Arc<str>,
    /// The phase the event implies, which the runtime's CRI view may reach a moment later.
    pub expect: Expect,
    /// For a task exit: its exit status and time (ns since the epoch).
    pub exit: Option<(i32, TimeNs)>,
}

/// What an event implies about the CRI view of its object, once CRI has caught up with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Known (created).
    Exists,
    /// Running or further.
    Started,
    /// Exited or gone.
    Exited,
    /// Gone.
    Gone,
    /// Nothing in particular (an OOM event: the exit follows as its own event).
    Nothing,
}

impl Expect {
    /// Whether `phase` (`None`: gone) meets the expectation.
    pub fn met_by(self, phase: Option<Phase>) -> bool {
        match self {
            Expect::Exists => phase.is_some(),
            Expect::Started => phase.is_some_and(|phase| phase >= Phase::Running),
            Expect::Exited => phase.is_none_or(|phase| phase == Phase::Exited),
            Expect::Gone => phase.is_none(),
            Expect::Nothing => true,
        }
    }
}

/// A gRPC channel to the unix socket at `socket` (containerd serves CRI and its own API on
/// it).
///
/// # Errors
/// [`RuntimeError::Connect`] when nothing listens there.
pub async fn channel(socket: &Path) -> Result<Channel, RuntimeError> {
    let path = socket.to_path_buf();
    // The URI is a placeholder that tonic requires; the connector dials the socket.
    Endpoint::from_static("http://containerd.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| RuntimeError::Connect {
            socket: socket.to_path_buf(),
            source,
        })
}

impl Runtime {
    /// Connects to the socket at `socket`.
    ///
    /// # Errors
    /// [`RuntimeError::Connect`] when nothing listens there.
    pub async fn connect(socket: &Path) -> Result<Runtime, RuntimeError> {
        let channel = channel(socket).await?;
        Ok(Runtime {
            socket: socket.to_path_buf(),
            cri: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
            events: EventsClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
        })
    }

    fn failed(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> RuntimeError + '_ {
        move |source| RuntimeError::Call {
            socket: self.socket.clone(),
            call,
            source,
        }
    }

    /// Subscribes to containerd's events of `namespace`, and returns once the subscription
    /// is live: containerd answers a subscription only with its first event, so the collector
    /// publishes a marker event of its own (topic [`MARKER`]) and waits for it to come back.
    /// Everything containerd does after this returns reaches the subscription.
    ///
    /// # Errors
    /// [`RuntimeError::Call`] when containerd refuses, [`RuntimeError::EventsEnded`] when the
    /// marker does not come back within `wait`.
    pub async fn subscribe(
        &mut self,
        namespace: &str,
        wait: Duration,
    ) -> Result<Subscription, RuntimeError> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let mut client = self.events.clone();
        let socket = self.socket.clone();
        let request = SubscribeRequest {
            filters: vec![format!("namespace=={namespace}")],
        };
        let failed = move |source| RuntimeError::Call {
            socket: socket.clone(),
            call: "Events/Subscribe",
            source,
        };
        let reader = tokio::spawn(async move {
            let mut stream = match client.subscribe(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = sender.send(Err(failed(status))).await;
                    return;
                }
            };
            loop {
                let item = match stream.message().await {
                    Ok(Some(envelope)) => Ok(envelope),
                    Ok(None) => Err(None),
                    Err(status) => Err(Some(failed(status))),
                };
                match item {
                    Ok(envelope) => {
                        if sender.send(Ok(envelope)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        if let Some(error) = error {
                            let _ = sender.send(Err(error)).await;
                        }
                        return;
                    }
                }
            }
        });
        let mut subscription = Subscription {
            socket: self.socket.clone(),
            events,
            reader,
        };
        let mut request = tonic::Request::new(PublishRequest {
            topic: MARKER.into(),
            event: Some(prost_types::Any {
                type_url: "tapio.cri.Subscribed".into(),
                value: Vec::new(),
            }),
        });
        if let Ok(value) = namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let published = self.events.publish(request).await;
        published.map_err(self.failed("Events/Publish"))?;
        loop {
            let envelope = tokio::time::timeout_at(deadline, subscription.next())
                .await
                .map_err(|_| RuntimeError::EventsEnded {
                    socket: self.socket.clone(),
                })??;
            if envelope.topic == MARKER {
                return Ok(subscription);
            }
        }
    }

    /// Lists every sandbox and container through CRI, fetching the status of those that
    /// started or exited since `tracker` last saw them; returns the looks and the listed ids.
    ///
    /// # Errors
    /// [`RuntimeError::Call`] when a call fails.
    pub async fn list(
        &mut self,
        tracker: &Tracker,
    ) -> Result<(Vec<Seen>, HashSet<Arc<str>>), RuntimeError> {
        let sandboxes = self
            .cri
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await;
        let sandboxes = sandboxes
            .map_err(self.failed("RuntimeService/ListPodSandbox"))?
            .into_inner()
            .items;
        let containers = self
            .cri
            .list_containers(ListContainersRequest { filter: None })
            .await;
        let containers = containers
            .map_err(self.failed("RuntimeService/ListContainers"))?
            .into_inner()
            .containers;
        let mut seen = Vec::with_capacity(sandboxes.len() + containers.len());
        let mut listed = HashSet::with_capacity(seen.capacity());
        for sandbox in sandboxes {
            let look = sandbox_seen(
                &sandbox.id,
                sandbox.state,
                sandbox.created_at,
                &sandbox.labels,
            );
            listed.insert(look.id.clone());
            seen.push(look);
        }
        for container in containers {
            let phase = container_phase(container.state);
            let id: Arc<str> = container.id.as_str().into();
            listed.insert(id.clone());
            if tracker.needs_detail(&id, phase) {
                // Started or exited since last seen: the listing lacks the times and the exit.
                match self.container_status(&id).await? {
                    Some(mut look) => {
                        look.sandbox_id = container.pod_sandbox_id.as_str().into();
                        seen.push(look);
                    }
                    None => {
                        listed.remove(&id);
                    }
                }
                continue;
            }
            let (pod, pod_uid) = Seen::pod_of(&container.labels);
            seen.push(Seen {
                object: RuntimeObject::Container,
                id,
                phase,
                sandbox_id: container.pod_sandbox_id.as_str().into(),
                pod,
                pod_uid,
                container_name: container_name(container.metadata.as_ref(), &container.labels),
                image: image_of(container.image.as_ref(), &container.image_ref),
                restart_count: restart_count(&container.annotations),
                created_ns: time_ns(container.created_at),
                started_ns: 0,
                finished_ns: 0,
                exit_code: 0,
                reason: String::new(),
                detailed: false,
            });
        }
        Ok((seen, listed))
    }

    /// The CRI status of container `id`; `None` when CRI does not know it.
    ///
    /// # Errors
    /// [`RuntimeError::Call`] when the call fails otherwise.
    pub async fn container_status(&mut self, id: &str) -> Result<Option<Seen>, RuntimeError> {
        let response = self
            .cri
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await;
        let status = match response {
            Ok(response) => response.into_inner().status,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(self.failed("RuntimeService/ContainerStatus")(status)),
        };
        let Some(status) = status else {
            return Ok(None);
        };
        let (pod, pod_uid) = Seen::pod_of(&status.labels);
        Ok(Some(Seen {
            object: RuntimeObject::Container,
            id: id.into(),
            phase: container_phase(status.state),
            // Not in a container's status: the caller fills it in (see `sandbox_of`).
            sandbox_id: "".into(),
            pod,
            pod_uid,
            container_name: container_name(status.metadata.as_ref(), &status.labels),
            image: image_of(status.image.as_ref(), &status.image_ref),
            restart_count: restart_count(&status.annotations),
            created_ns: time_ns(status.created_at),
            started_ns: time_ns(status.started_at),
            finished_ns: time_ns(status.finished_at),
            exit_code: status.exit_code,
            reason: status.reason,
            detailed: true,
        }))
    }

    /// The sandbox container `id` runs in (its status does not say), from a listing of that
    /// one container; empty when CRI does not list it.
    ///
    /// # Errors
    /// [`RuntimeError::Call`] when the call fails.
    pub async fn sandbox_of(&mut self, id: &str) -> Result<Arc<str>, RuntimeError> {
        let listed = self
            .cri
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: id.to_string(),
                    ..ContainerFilter::default()
                }),
            })
            .await;
        let listed = listed.map_err(self.failed("RuntimeService/ListContainers"))?;
        Ok(listed
            .into_inner()
            .containers
            .into_iter()
            .find(|container| container.id == id)
            .map_or_else(|| "".into(), |container| container.pod_sandbox_id.into()))
    }

    /// The CRI status of sandbox `id`; `None` when CRI does not know it.
    ///
    /// # Errors
    /// [`RuntimeError::Call`] when the call fails otherwise.
    pub async fn sandbox_status(&mut self, id: &str) -> Result<Option<Seen>, RuntimeError> {
        let response = self
            .cri
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await;
        match response {
            Ok(response) => Ok(response.into_inner().status.map(|status| {
                sandbox_seen(&status.id, status.state, status.created_at, &status.labels)
            })),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.failed("RuntimeService/PodSandboxStatus")(status)),
        }
    }
}

/// The object an event of containerd's is about, and what it implies; `None` for events the
/// collector does not follow or cannot decode (counted by the caller).
pub fn touched(envelope: &Envelope) -> Result<Option<Touched>, prost::DecodeError> {
    let Some(payload) = envelope.event.as_ref() else {
        return Ok(None);
    };
    let bytes = payload.value.as_slice();
    let task_id = |bytes: &[u8]| -> Result<String, prost::DecodeError> {
        // Every task event (create, start, oom, delete) holds the container id in field 1.
        Ok(containerd_client::events::TaskStart::decode(bytes)?.container_id)
    };
    let (id, expect, exit) = match envelope.topic.as_str() {
        "/tasks/start" => (task_id(bytes)?, Expect::Started, None),
        "/tasks/oom" => (task_id(bytes)?, Expect::Nothing, None),
        "/tasks/exit" => {
            let exit = TaskExit::decode(bytes)?;
            if !exit.id.is_empty() && exit.id != exit.container_id {
                // A process exec'd into the container, not its own.
                return Ok(None);
            }
            let at = exit.exited_at.map_or(0, |at| {
                time_ns(at.seconds * 1_000_000_000 + i64::from(at.nanos))
            });
            let code = i32::try_from(exit.exit_status).unwrap_or(i32::MAX);
            (exit.container_id, Expect::Exited, Some((code, at)))
        }
        "/containers/create" => (ContainerCreate::decode(bytes)?.id, Expect::Exists, None),
        "/containers/delete" => (ContainerDelete::decode(bytes)?.id, Expect::Gone, None),
        _ => return Ok(None),
    };
    if id.is_empty() {
        return Ok(None);
    }
    Ok(Some(Touched {
        id: id.into(),
        expect,
        exit,
    }))
}

fn sandbox_seen(
    id: &str,
    state: i32,
    created_at: i64,
    labels: &std::collections::HashMap<String, String>,
) -> Seen {
    let (pod, pod_uid) = Seen::pod_of(labels);
    let phase = if state == PodSandboxState::SandboxReady as i32 {
        Phase::Running
    } else {
        Phase::Exited
    };
    Seen {
        object: RuntimeObject::Sandbox,
        id: id.into(),
        phase,
        sandbox_id: id.into(),
        pod,
        pod_uid,
        container_name: String::new(),
        image: String::new(),
        restart_count: 0,
        created_ns: time_ns(created_at),
        started_ns: 0,
        finished_ns: 0,
        exit_code: 0,
        reason: String::new(),
        detailed: true,
    }
}

fn container_phase(state: i32) -> Phase {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerRunning) => Phase::Running,
        Ok(ContainerState::ContainerExited) => Phase::Exited,
        // Created, or unknown (the runtime lost track of its process): not started as far as
        // anyone can tell.
        _ => Phase::Created,
    }
}

fn container_name(
    metadata: Option<&k8s_cri::v1::ContainerMetadata>,
    labels: &std::collections::HashMap<String, String>,
) -> String {
    metadata
        .map(|metadata| metadata.name.clone())
        .filter(|name| !name.is_empty())
        .or_else(|| labels.get(CONTAINER_NAME).cloned())
        .unwrap_or_default()
}

fn image_of(image: Option<&k8s_cri::v1::ImageSpec>, image_ref: &str) -> String {
    image
        .map(|image| image.image.clone())
        .filter(|image| !image.is_empty())
        .unwrap_or_else(|| image_ref.to_string())
}

fn restart_count(annotations: &std::collections::HashMap<String, String>) -> u32 {
    annotations
        .get(RESTART_COUNT)
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

/// CRI's times are ns since the epoch; 0 or negative means unknown.
fn time_ns(value: i64) -> TimeNs {
    u64::try_from(value).unwrap_or(0)
}
