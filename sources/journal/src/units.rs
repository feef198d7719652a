//! Unit lifecycle from systemd's own journal messages.
//!
//! systemd (PID 1) logs every job it finishes and every unit failure with a `MESSAGE_ID` of its
//! catalog and the unit's name in `UNIT`; Tapio reads those, never the message text:
//!
//! | `MESSAGE_ID` (systemd's name) | fact |
//! | --- | --- |
//! | `39f53479…` (`UNIT_STARTED`) | `started`, the job result in `JOB_RESULT` |
//! | `9d1aaa27…` (`UNIT_STOPPED`) | `stopped`; `restarted` when the job was a restart (`JOB_TYPE=restart`: `systemctl restart`, or `Restart=` after the main process ended) |
//! | `d9b373ed…` (`UNIT_FAILURE_RESULT`) | `failed`, the unit's result in `UNIT_RESULT`, with the exit of the process before it |
//! | `be02cf68…` (`UNIT_FAILED`) | `start_failed`: a start job that did not succeed, its result in `JOB_RESULT` |
//! | `98e32220…` (`UNIT_PROCESS_EXIT`) | no fact: `EXIT_CODE` and `EXIT_STATUS` are kept for the unit's `failed` that follows |
//!
//! Only units that match the configured globs are reported. systemd older than 240 logged a
//! process exit and a unit failure without these ids; only their `started` and `stopped` (whose
//! ids are older) are read from such journals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tapio_model::{UnitChange, UnitExit, UnitState};

/// systemd's `SD_MESSAGE_UNIT_STARTED`.
pub const UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
/// systemd's `SD_MESSAGE_UNIT_STOPPED`.
pub const UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";
/// systemd's `SD_MESSAGE_UNIT_FAILED` (a start job that failed).
pub const UNIT_FAILED: &str = "be02cf6855d2428ba40df7e9d022f03d";
/// systemd's `SD_MESSAGE_UNIT_FAILURE_RESULT` (a unit that entered the failed state).
pub const UNIT_FAILURE_RESULT: &str = "d9b373ed55a64feb8242e02dbe79a49c";
/// systemd's `SD_MESSAGE_UNIT_PROCESS_EXIT`.
pub const UNIT_PROCESS_EXIT: &str = "98e322203f7a4ed290d09fe03c09fe15";

/// Every message id the source reads.
pub const MESSAGE_IDS: [&str; 5] = [
    UNIT_STARTED,
    UNIT_STOPPED,
    UNIT_FAILED,
    UNIT_FAILURE_RESULT,
    UNIT_PROCESS_EXIT,
];

/// The fields of a systemd message the source reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitMessage {
    /// `MESSAGE_ID`.
    pub message_id: String,
    /// `UNIT`.
    pub unit: String,
    /// `JOB_TYPE` (`start`, `stop`, `restart`, ...).
    pub job_type: Option<String>,
    /// `JOB_RESULT` (`done`, `failed`, ...); systemd before 233 wrote it as `RESULT`.
    pub job_result: Option<String>,
    /// `UNIT_RESULT` (`exit-code`, `signal`, ...).
    pub unit_result: Option<String>,
    /// `EXIT_CODE` (`exited`, `killed`, `dumped`).
    pub exit_code: Option<String>,
    /// `EXIT_STATUS`.
    pub exit_status: Option<String>,
}

/// Unit globs: `*` matches any run of characters, `?` one character.
#[derive(Clone, Debug)]
pub struct UnitFilter {
    patterns: Vec<Vec<char>>,
}

impl UnitFilter {
    /// A filter of `patterns`.
    pub fn new(patterns: &[String]) -> UnitFilter {
        UnitFilter {
            patterns: patterns
                .iter()
                .map(|pattern| pattern.chars().collect())
                .collect(),
        }
    }

    /// Whether `unit` matches one of the patterns.
    pub fn matches(&self, unit: &str) -> bool {
        let unit: Vec<char> = unit.chars().collect();
        self.patterns.iter().any(|pattern| glob(pattern, &unit))
    }
}

/// Glob match with backtracking over the last `*`.
fn glob(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The exits of units' processes waiting for the failure that follows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitExits {
    exits: BTreeMap<String, UnitExit>,
}

impl UnitExits {
    /// Whether no exit is waiting.
    pub fn is_idle(&self) -> bool {
        self.exits.is_empty()
    }

    /// The fact one systemd message makes, if any, for a unit `filter` accepts.
    pub fn message(&mut self, message: &UnitMessage, filter: &UnitFilter) -> Option<UnitChange> {
        if message.unit.is_empty() || !filter.matches(&message.unit) {
            return None;
        }
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let (state, result) = match message.message_id.as_str() {
            UNIT_PROCESS_EXIT => {
                let status = message.exit_status.as_deref().and_then(|s| s.parse().ok());
                match (&message.exit_code, status) {
                    (Some(code), Some(status)) => {
                        self.exits.insert(
                            message.unit.clone(),
                            UnitExit {
                                code: code.clone(),
                                status,
                            },
                        );
                    }
                    _ => {
                        self.exits.remove(&message.unit);
                    }
                }
                return None;
            }
            UNIT_STARTED => {
                self.exits.remove(&message.unit);
                (UnitState::Started, text(&message.job_result))
            }
            UNIT_STOPPED if message.job_type.as_deref() == Some("restart") => {
                (UnitState::Restarted, text(&message.job_result))
            }
            UNIT_STOPPED => (UnitState::Stopped, text(&message.job_result)),
            UNIT_FAILED => (UnitState::StartFailed, text(&message.job_result)),
            UNIT_FAILURE_RESULT => {
                return Some(UnitChange {
                    unit: message.unit.clone(),
                    state: UnitState::Failed,
                    result: text(&message.unit_result),
                    exit: self.exits.remove(&message.unit),
                });
            }
            _ => return None,
        };
        Some(UnitChange {
            unit: message.unit.clone(),
            state,
            result,
            exit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_systemctl_patterns() {
        let filter = UnitFilter::new(&["*.service".into(), "kube?et.socket".into()]);
        assert!(filter.matches("kubelet.service"));
        assert!(filter.matches(".service"));
        assert!(filter.matches("kubelet.socket"));
        assert!(!filter.matches("kubelet.service.d"));
        assert!(!filter.matches("session-1.scope"));
        assert!(UnitFilter::new(&["a*b*c".into()]).matches("aXbYbZc"));
        assert!(!UnitFilter::new(&["a*b*c".into()]).matches("aXbYbZ"));
        assert!(UnitFilter::new(&["*".into()]).matches(""));
    }

    #[test]
    fn a_failure_carries_the_exit_before_it_and_only_once() {
        let filter = UnitFilter::new(&["*.service".into()]);
        let mut exits = UnitExits::default();
        let exit = UnitMessage {
            message_id: UNIT_PROCESS_EXIT.into(),
            unit: "kubelet.service".into(),
            exit_code: Some("killed".into()),
            exit_status: Some("9".into()),
            ..UnitMessage::default()
        };
        assert_eq!(exits.message(&exit, &filter), None);
        assert!(!exits.is_idle());
        let failed = UnitMessage {
            message_id: UNIT_FAILURE_RESULT.into(),
            unit: "kubelet.service".into(),
            unit_result: Some("signal".into()),
            ..UnitMessage::default()
        };
        let change = exits.message(&failed, &filter).expect("a fact");
        assert_eq!(change.state, UnitState::Failed);
        assert_eq!(change.result, "signal");
        assert_eq!(
            change.exit,
            Some(UnitExit {
                code: "killed".into(),
                status: 9
            })
        );
        assert!(exits.is_idle());
        assert_eq!(exits.message(&failed, &filter).and_then(|c| c.exit), None);
        let other = UnitMessage {
            unit: "session-3.scope".into(),
            ..failed
        };
        assert_eq!(exits.message(&other, &filter), None);
    }
}
