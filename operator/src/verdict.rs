//! From a [`Rollout`] to the conditions a person reads: the component's readiness
//! (`Ready` for a model, `UploadReady`/`StoreReady` for a pipeline) and `Progressing`.
//! Pure. The rule: ready only when the current spec's revision serves all the traffic; a
//! new revision that cannot serve while an older one still does is `RolloutFailed`, naming
//! the cause and that the previous revision still serves.

use crate::rollout::{Phase, Rollout};
use crate::status::{Cond, reasons, types};

/// A cause found outside the Deployment's own state (a pod's `/readyz`, a missing Secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// The Secrets a spec names that do not exist: pods cannot start (or mount them) until
/// they do.
pub fn missing_secrets(missing: &[String]) -> Option<Failure> {
    (!missing.is_empty()).then(|| Failure {
        reason: reasons::SECRET_NOT_FOUND.into(),
        message: format!(
            "the spec references Secret(s) {} that do not exist in this namespace",
            missing.join(", ")
        ),
    })
}

/// The readiness condition and `Progressing` of one rolled-out workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: Cond,
    pub progressing: Cond,
    /// The rollout is stuck (a Warning and a backed-off requeue follow).
    pub failed: bool,
}

fn serving_meanwhile(r: &Rollout) -> String {
    match (r.previous_ready, r.previous_revision) {
        (0, _) => String::new(),
        (n, Some(rev)) => format!("; revision {rev} still serves ({n} pods ready)"),
        (n, None) => format!("; an older revision still serves ({n} pods ready)"),
    }
}

/// The verdict on `rollout` for the condition `type_` (true with `ok_reason`); `failure`,
/// when given, overrides a rollout that has not failed by itself.
pub fn verdict(
    type_: &'static str,
    ok_reason: &'static str,
    rollout: &Rollout,
    failure: Option<Failure>,
) -> Verdict {
    let rev = rollout.revision;
    let phase = match (&rollout.phase, failure) {
        (Phase::Failed { .. }, _) | (_, None) => rollout.phase.clone(),
        (_, Some(f)) => Phase::Failed {
            reason: f.reason,
            message: f.message,
        },
    };
    if rollout.wanted == Some(0) {
        return Verdict {
            ready: Cond::no(type_, reasons::SCALED_TO_ZERO, "scaled to zero replicas"),
            progressing: Cond::yes(types::PROGRESSING, reasons::ROLLED_OUT, "scaled to zero"),
            failed: false,
        };
    }
    match phase {
        Phase::Complete => {
            let pods = rollout.current.len();
            Verdict {
                ready: Cond::yes(
                    type_,
                    ok_reason,
                    format!("revision {rev} serves all traffic ({pods} pods ready)"),
                ),
                progressing: Cond::yes(
                    types::PROGRESSING,
                    reasons::ROLLED_OUT,
                    format!("revision {rev} is fully rolled out"),
                ),
                failed: false,
            }
        }
        Phase::Progressing(message) => {
            // A transient cause with nothing older serving is what a person must see:
            // it is the reason, and the message says when it would become a failure.
            let ready = match &rollout.waiting {
                Some(w) if rollout.previous_ready == 0 => Cond::no(
                    type_,
                    w.reason.clone(),
                    format!(
                        "{}; Kubernetes retries, and the rollout fails only if this lasts past \
                         its progress deadline ({} s)",
                        w.message, rollout.deadline_seconds
                    ),
                ),
                _ => Cond::no(
                    type_,
                    reasons::ROLLING_OUT,
                    format!("revision {rev}: {message}{}", serving_meanwhile(rollout)),
                ),
            };
            Verdict {
                ready,
                progressing: Cond::yes(types::PROGRESSING, reasons::ROLLING_OUT, message),
                failed: false,
            }
        }
        Phase::Failed { reason, message } => {
            let ready = if rollout.previous_ready > 0 {
                Cond::no(
                    type_,
                    reasons::ROLLOUT_FAILED,
                    format!(
                        "revision {rev} cannot serve: {reason}: {message}{}",
                        serving_meanwhile(rollout)
                    ),
                )
            } else {
                Cond::no(type_, reason.clone(), message.clone())
            };
            Verdict {
                ready,
                progressing: Cond::no(types::PROGRESSING, reason, message),
                failed: true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(phase: Phase, previous_ready: usize) -> Rollout {
        Rollout {
            phase,
            revision: 2,
            current: vec![],
            previous_ready,
            previous_revision: Some(1),
            wanted: Some(2),
            waiting: None,
            deadline_seconds: 600,
        }
    }

    #[test]
    fn a_failed_revision_names_its_cause_and_what_still_serves() {
        let failed = Phase::Failed {
            reason: "ImagePullBackOff".into(),
            message: "pod x: back-off pulling image".into(),
        };
        let v = verdict(
            types::READY,
            reasons::READY,
            &rollout(failed.clone(), 2),
            None,
        );
        assert_eq!(v.ready.reason, "RolloutFailed");
        assert!(
            v.ready
                .message
                .contains("revision 2 cannot serve: ImagePullBackOff")
        );
        assert!(
            v.ready
                .message
                .contains("revision 1 still serves (2 pods ready)")
        );
        assert_eq!(
            (v.progressing.status, v.progressing.reason.as_str()),
            (false, "ImagePullBackOff")
        );
        assert!(v.failed);
        // Nothing older serves: the cause itself is the reason.
        let v = verdict(types::READY, reasons::READY, &rollout(failed, 0), None);
        assert_eq!(v.ready.reason, "ImagePullBackOff");
    }

    #[test]
    fn only_missing_secrets_are_a_failure() {
        assert_eq!(missing_secrets(&[]), None);
        let missing = missing_secrets(&["db".into(), "keys".into()]).expect("failure");
        assert_eq!(missing.reason, "SecretNotFound");
        assert!(
            missing.message.contains("Secret(s) db, keys"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn waiting_names_its_cause_when_nothing_older_serves() {
        let waiting = crate::rollout::PodFailure {
            reason: "Unschedulable".into(),
            message: "pod p cannot be scheduled".into(),
            lasting: false,
        };
        let mut r = rollout(Phase::Progressing("waiting: Unschedulable".into()), 0);
        r.waiting = Some(waiting);
        let v = verdict(types::READY, reasons::READY, &r, None);
        assert_eq!(v.ready.reason, "Unschedulable");
        assert!(v.ready.message.contains("progress deadline (600 s)"));
        assert!(v.progressing.status && !v.failed);
        r.previous_ready = 1;
        let v = verdict(types::READY, reasons::READY, &r, None);
        assert_eq!(v.ready.reason, "RollingOut");
        assert!(
            v.ready
                .message
                .ends_with("revision 1 still serves (1 pods ready)")
        );
        r.previous_revision = None;
        let v = verdict(types::READY, reasons::READY, &r, None);
        assert!(
            v.ready
                .message
                .ends_with("an older revision still serves (1 pods ready)")
        );
        r.wanted = Some(0);
        let v = verdict(types::READY, reasons::READY, &r, None);
        assert_eq!(v.ready.reason, "ScaledToZero");
    }

    #[test]
    fn a_moving_rollout_is_not_ready_and_a_pod_failure_overrides_it() {
        let moving = rollout(Phase::Progressing("1 of 2 pods updated".into()), 2);
        let v = verdict(types::READY, reasons::READY, &moving, None);
        assert_eq!(
            (v.ready.status, v.ready.reason.as_str()),
            (false, "RollingOut")
        );
        assert!(v.progressing.status && !v.failed);
        let failure = Failure {
            reason: "DigestMismatch".into(),
            message: "expected 00".into(),
        };
        let v = verdict(types::READY, reasons::READY, &moving, Some(failure));
        assert_eq!(v.ready.reason, "RolloutFailed");
        assert!(v.failed);
        let done = verdict(
            types::READY,
            reasons::READY,
            &rollout(Phase::Complete, 0),
            None,
        );
        assert!(done.ready.status && done.progressing.status);
        assert_eq!(done.progressing.reason, "RolledOut");
    }
}
