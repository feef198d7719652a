//! Declared sequences (`correlation.sequences`): steps A → B → C ... on shared entities within a
//! bound, written in the configuration so that a user adds one without writing Rust. The
//! built-in sequences are the default value of the list, in the same form.
//!
//! A step selects observations of one kind ([`StepKind`]) that meet simple conditions
//! ([`StepWhere`]), and names the entity ([`EntityKind`]) that links it to the step before
//! (`on`). Each kind is about a fixed set of entities ([`StepKind::entities`]); a link must
//! name an entity both steps are about.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{self, humantime_str};
use crate::error::ConfigError;
use crate::validate::{DAY, HOUR, duration_in, invalid};

/// The largest [`SequenceConfig::slack`].
const MINUTE: Duration = Duration::from_secs(60);

/// Most steps a sequence may have.
pub const MAX_STEPS: usize = 8;

/// One declared sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceConfig {
    /// The sequence's name, unique in the list: lower-case letters, digits, `_` and `-`. It is
    /// the name correlations of this sequence carry. Required.
    pub name: String,
    /// Whether the sequence is matched. Default: `true`.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Every step must fall within this of the first, and no step before the one it follows,
    /// `1ms..=1h`. Written as a humantime string. Required.
    #[serde(with = "humantime_str")]
    pub within: Duration,
    /// How long a match stays current after its first step, at least [`Self::within`] and at
    /// most `24h`. Written as a humantime string. Default: `10m`.
    #[serde(with = "humantime_str", default = "keep_for_by_default")]
    pub keep_for: Duration,
    /// How far before the step it follows a step may be and still match, `0s..=1m`: sources
    /// record times at different precisions (Kubernetes records readiness changes to the
    /// second, the kernel to the nanosecond), so a step that really came after the one before
    /// may carry an earlier time by up to the coarser precision. Written as a humantime
    /// string. Default: `0s`.
    #[serde(
        with = "humantime_str",
        default,
        skip_serializing_if = "Duration::is_zero"
    )]
    pub slack: Duration,
    /// The steps, in order: 2 to [`MAX_STEPS`]. Required.
    pub steps: Vec<StepConfig>,
}

fn enabled_by_default() -> bool {
    true
}

fn keep_for_by_default() -> Duration {
    // Long enough for a person or an alert to look at a match, short enough not to go stale.
    Duration::from_secs(10 * 60)
}

/// One step of a declared sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Which observations the step selects. Required.
    pub kind: StepKind,
    /// The entity this step shares with the step before; required on every step but the
    /// first, which has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<EntityKind>,
    /// Conditions the observation must meet; only the fields its kind has
    /// ([`StepKind::conditions`]). Default: none.
    #[serde(rename = "where", default, skip_serializing_if = "StepWhere::is_empty")]
    pub conditions: StepWhere,
}

/// Conditions on a step's observation: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepWhere {
    /// The reason, exactly: a container exit's (`OOMKilled`, `Error`) or an Event's
    /// (`Unhealthy`, `BackOff`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exit code of a process or container exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended a process (9: SIGKILL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    /// Whether a container or endpoint became ready (`true`) or stopped being ready (`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// An Event's type: `Normal` or `Warning`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The systemd unit of a unit restart, exactly (`containerd.service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl StepWhere {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        self.set().is_empty()
    }

    /// The names of the conditions that are set, in declaration order.
    pub fn set(&self) -> Vec<&'static str> {
        let StepWhere {
            reason,
            exit_code,
            signal,
            ready,
            event_type,
            unit,
        } = self;
        [
            ("reason", reason.is_some()),
            ("exit_code", exit_code.is_some()),
            ("signal", signal.is_some()),
            ("ready", ready.is_some()),
            ("event_type", event_type.is_some()),
            ("unit", unit.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Declares a string-named enum with its names, parsing and (de)serialization that names every
/// valid value when a name is unknown.
macro_rules! named {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name written in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value named `text`, or an error naming every valid one.
            pub fn parse(text: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| {
                        format!(
                            concat!("unknown ", $what, " `{}`; expected one of {}"),
                            text,
                            names($name::ALL.iter().map(|value| value.as_str()))
                        )
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

named!(
    /// The kinds of observation a step can select.
    StepKind, "observation kind", {
        /// The kernel OOM killer chose a process. About: process, container.
        OomKill = "oom_kill",
        /// A process exited. About: process, container.
        ProcessExit = "process_exit",
        /// A container stopped. About: container, pod (when the exit names none, as the
        /// kernel's do not, the pod whose status lists the container).
        ContainerExit = "container_exit",
        /// A container's readiness changed. About: container, pod.
        ContainerReady = "container_ready",
        /// A Kubernetes Event. About: its involved object.
        KubeEvent = "kube_event",
        /// A Service endpoint's readiness (a state record; its time is when it took its
        /// value). About: service, pod, endpoint.
        EndpointReady = "endpoint_ready",
        /// A systemd unit restarted: a restart job stopped it to start it again (`systemctl
        /// restart`, or `Restart=` after its process ended). About: unit, node.
        UnitRestart = "unit_restart",
    }
);

named!(
    /// The kinds of entity that link one step to the next.
    EntityKind, "entity", {
        /// A process on a node.
        Process = "process",
        /// A container.
        Container = "container",
        /// A pod.
        Pod = "pod",
        /// A Service.
        Service = "service",
        /// A Service endpoint, `ip:port`.
        Endpoint = "endpoint",
        /// A node.
        Node = "node",
        /// A Deployment.
        Deployment = "deployment",
        /// A ReplicaSet.
        ReplicaSet = "replicaset",
        /// A StatefulSet.
        StatefulSet = "statefulset",
        /// A DaemonSet.
        DaemonSet = "daemonset",
        /// A Job.
        Job = "job",
        /// A systemd unit on a node.
        Unit = "unit",
    }
);

impl StepKind {
    /// The entities an observation of this kind is about; the first is the one its hop names.
    /// A Kubernetes Event is about its involved object, whichever kind that is.
    pub fn entities(self) -> &'static [EntityKind] {
        use EntityKind::*;
        match self {
            StepKind::OomKill | StepKind::ProcessExit => &[Process, Container],
            // A container exit is also about the node that reported it, so that a step on the
            // node (a unit restart) can lead to it.
            StepKind::ContainerExit => &[Container, Pod, Node],
            StepKind::ContainerReady => &[Container, Pod],
            StepKind::KubeEvent => &[
                Pod,
                Node,
                Service,
                Deployment,
                ReplicaSet,
                StatefulSet,
                DaemonSet,
                Job,
            ],
            StepKind::EndpointReady => &[Service, Pod, Endpoint],
            StepKind::UnitRestart => &[Unit, Node],
        }
    }

    /// The conditions ([`StepWhere`] fields) an observation of this kind can be selected by.
    pub fn conditions(self) -> &'static [&'static str] {
        match self {
            StepKind::OomKill => &[],
            StepKind::ProcessExit => &["exit_code", "signal"],
            StepKind::ContainerExit => &["reason", "exit_code"],
            StepKind::ContainerReady | StepKind::EndpointReady => &["ready"],
            StepKind::KubeEvent => &["reason", "event_type"],
            StepKind::UnitRestart => &["unit"],
        }
    }
}

fn names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// The built-in sequences: the default value of `correlation.sequences`.
pub fn builtin_sequences() -> Vec<SequenceConfig> {
    let step = |kind, on, conditions| StepConfig {
        kind,
        on,
        conditions,
    };
    let not_ready = || StepWhere {
        ready: Some(false),
        ..StepWhere::default()
    };
    vec![
        // An OOM kill followed through to the Service: the process dies, its container stops,
        // the pod stops being ready and the Service loses the pod's endpoint. The readiness
        // steps come from the kubelet's polls and the EndpointSlice controller, seconds to tens
        // of seconds after the kill: a bound of 2m covers a poll interval and a probe period.
        // The pod's readiness change carries the time Kubernetes recorded, to the second: up
        // to a second before the kernel's nanosecond time of the container exit it followed.
        SequenceConfig {
            name: "oom_to_endpoint_not_ready".into(),
            enabled: true,
            within: Duration::from_secs(2 * 60),
            keep_for: Duration::from_secs(15 * 60),
            slack: Duration::from_secs(1),
            steps: vec![
                step(StepKind::OomKill, None, StepWhere::default()),
                step(
                    StepKind::ProcessExit,
                    Some(EntityKind::Process),
                    StepWhere {
                        signal: Some(9),
                        ..StepWhere::default()
                    },
                ),
                step(
                    StepKind::ContainerExit,
                    Some(EntityKind::Container),
                    StepWhere::default(),
                ),
                step(StepKind::ContainerReady, Some(EntityKind::Pod), not_ready()),
                step(StepKind::EndpointReady, Some(EntityKind::Pod), not_ready()),
            ],
        },
        // A failing probe (the kubelet's `Unhealthy` Event on the pod) and then the pod's
        // container restarting: a liveness probe fails `failureThreshold` times, 10s apart by
        // default, before the kubelet kills the container, so 5m leaves room for slow probes.
        SequenceConfig {
            name: "probe_failure_restart".into(),
            enabled: true,
            within: Duration::from_secs(5 * 60),
            keep_for: Duration::from_secs(30 * 60),
            slack: Duration::ZERO,
            steps: vec![
                step(
                    StepKind::KubeEvent,
                    None,
                    StepWhere {
                        reason: Some("Unhealthy".into()),
                        ..StepWhere::default()
                    },
                ),
                step(
                    StepKind::ContainerExit,
                    Some(EntityKind::Pod),
                    StepWhere::default(),
                ),
            ],
        },
    ]
}

/// Checks every sequence of the list found at `path` (`correlation.sequences`).
///
/// # Errors
/// A [`ConfigError`] naming the key path of the first problem, e.g.
/// `correlation.sequences[2].steps[1].on`.
pub(crate) fn validate(sequences: &[SequenceConfig], path: &str) -> Result<(), ConfigError> {
    for (index, sequence) in sequences.iter().enumerate() {
        let at = format!("{path}[{index}]");
        sequence.validate(&at)?;
        if let Some(first) = sequences[..index]
            .iter()
            .position(|other| other.name == sequence.name)
        {
            return Err(invalid(
                &format!("{at}.name"),
                format!(
                    "`{}` is already the name of {path}[{first}]; names must be unique",
                    sequence.name
                ),
            ));
        }
    }
    Ok(())
}

impl SequenceConfig {
    /// Checks this sequence, found at `path` (`correlation.sequences[0]`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first problem.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let key = |name: &str| format!("{path}.{name}");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(invalid(
                &key("name"),
                format!(
                    "must be non-empty lower-case letters, digits, _ and -, got `{}`",
                    self.name
                ),
            ));
        }
        duration_in(&key("within"), self.within, Duration::from_millis(1), HOUR)?;
        if self.keep_for < self.within {
            return Err(invalid(
                &key("keep_for"),
                format!(
                    "must be at least {} ({}), got {}",
                    key("within"),
                    duration::format(self.within),
                    duration::format(self.keep_for)
                ),
            ));
        }
        duration_in(&key("keep_for"), self.keep_for, Duration::ZERO, DAY)?;
        duration_in(&key("slack"), self.slack, Duration::ZERO, MINUTE)?;
        if !(2..=MAX_STEPS).contains(&self.steps.len()) {
            return Err(invalid(
                &key("steps"),
                format!(
                    "a sequence has 2 to {MAX_STEPS} steps, got {}",
                    self.steps.len()
                ),
            ));
        }
        for (index, step) in self.steps.iter().enumerate() {
            let at = format!("{path}.steps[{index}]");
            step.validate(&at, index.checked_sub(1).map(|before| &self.steps[before]))?;
        }
        Ok(())
    }
}

impl StepConfig {
    /// Checks this step, found at `path`, against the step before it (`None` for the first).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first problem.
    pub fn validate(&self, path: &str, before: Option<&StepConfig>) -> Result<(), ConfigError> {
        let on_path = format!("{path}.on");
        match (before, self.on) {
            (None, Some(_)) => {
                return Err(invalid(
                    &on_path,
                    "the first step follows no other step; remove `on`",
                ));
            }
            (Some(before), None) => {
                return Err(invalid(
                    &on_path,
                    format!(
                        "missing: say which entity links this step to the one before; {} and {} \
                         share {}",
                        before.kind,
                        self.kind,
                        shared(before.kind, self.kind)
                    ),
                ));
            }
            (Some(before), Some(on)) => {
                for kind in [before.kind, self.kind] {
                    if !kind.entities().contains(&on) {
                        return Err(invalid(
                            &on_path,
                            format!(
                                "{kind} is not about a {on}; it is about {}",
                                names(kind.entities().iter().map(|entity| entity.as_str()))
                            ),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        let allowed = self.kind.conditions();
        for name in self.conditions.set() {
            if !allowed.contains(&name) {
                let has = if allowed.is_empty() {
                    "it takes no conditions".to_owned()
                } else {
                    format!("its conditions are {}", names(allowed.iter().copied()))
                };
                return Err(invalid(
                    &format!("{path}.where.{name}"),
                    format!("{} has no `{name}`; {has}", self.kind),
                ));
            }
        }
        if let Some(event_type) = &self.conditions.event_type
            && !["Normal", "Warning"].contains(&event_type.as_str())
        {
            return Err(invalid(
                &format!("{path}.where.event_type"),
                format!("must be `Normal` or `Warning`, got `{event_type}`"),
            ));
        }
        Ok(())
    }
}

/// The entities two kinds are both about, for messages.
fn shared(a: StepKind, b: StepKind) -> String {
    let both: Vec<&str> = a
        .entities()
        .iter()
        .filter(|entity| b.entities().contains(entity))
        .map(|entity| entity.as_str())
        .collect();
    if both.is_empty() {
        "no entity".to_owned()
    } else {
        both.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_sequences_are_valid() {
        assert!(validate(&builtin_sequences(), "correlation.sequences").is_ok());
    }

    #[test]
    fn names_parse_and_unknown_names_list_the_valid_ones() {
        for kind in StepKind::ALL {
            assert_eq!(StepKind::parse(kind.as_str()), Ok(*kind));
        }
        let error = EntityKind::parse("podd").unwrap_err();
        assert_eq!(
            error,
            "unknown entity `podd`; expected one of process, container, pod, service, endpoint, \
             node, deployment, replicaset, statefulset, daemonset, job, unit"
        );
    }

    #[test]
    fn a_link_must_be_an_entity_both_steps_are_about() {
        let mut sequences = builtin_sequences();
        sequences[0].steps[2].on = Some(EntityKind::Pod);
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[0].steps[2].on");
        assert_eq!(
            error.message,
            "process_exit is not about a pod; it is about process, container"
        );
        sequences[0].steps[2].on = None;
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(
            error.message,
            "missing: say which entity links this step to the one before; process_exit and \
             container_exit share container"
        );
        sequences[0].steps[2].on = Some(EntityKind::Container);
        sequences[0].steps[0].on = Some(EntityKind::Process);
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[0].steps[0].on");
    }

    #[test]
    fn conditions_must_belong_to_the_kind() {
        let mut sequences = builtin_sequences();
        sequences[1].steps[1].conditions.ready = Some(true);
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(
            error.key_path,
            "correlation.sequences[1].steps[1].where.ready"
        );
        assert_eq!(
            error.message,
            "container_exit has no `ready`; its conditions are reason, exit_code"
        );
        let mut sequences = builtin_sequences();
        sequences[1].steps[0].conditions.event_type = Some("Bad".into());
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(
            error.key_path,
            "correlation.sequences[1].steps[0].where.event_type"
        );
    }

    #[test]
    fn names_are_unique_and_plain() {
        let mut sequences = builtin_sequences();
        sequences[1].name = sequences[0].name.clone();
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[1].name");
        sequences[1].name = "Has Space".into();
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[1].name");
    }

    #[test]
    fn step_counts_and_bounds_are_checked() {
        let mut sequences = builtin_sequences();
        sequences[1].steps.truncate(1);
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[1].steps");
        let mut sequences = builtin_sequences();
        sequences[0].keep_for = Duration::from_secs(1);
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[0].keep_for");
        let mut slack = builtin_sequences();
        slack[1].slack = Duration::from_secs(61);
        let error = validate(&slack, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[1].slack");
        sequences[0].within = Duration::ZERO;
        let error = validate(&sequences, "correlation.sequences").unwrap_err();
        assert_eq!(error.key_path, "correlation.sequences[0].within");
    }
}
