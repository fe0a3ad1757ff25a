//! Standard conditions: the list keyed by `type`, built by small named constructors over
//! constant reasons. The transition time moves only when a condition's status flips, so
//! an unchanged world yields an unchanged status (and no write). Time comes from a
//! [`Clock`], fixed in tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types.
pub mod types {
    /// The current spec's revision serves all the traffic.
    pub const READY: &str = "Ready";
    /// A rollout is moving (True), done (True, reason `RolledOut`) or stuck (False, with
    /// the cause as reason) — the Deployment's own `Progressing` semantics.
    pub const PROGRESSING: &str = "Progressing";
    /// Model: at least one pod (of any revision) serves traffic.
    pub const AVAILABLE: &str = "Available";
    /// Model: the newest revision's pods loaded, validated and warmed the model, as their
    /// own `/readyz` says (`status.served` holds what they report).
    pub const MODEL_VALIDATED: &str = "ModelValidated";
    /// Model: the pods fetched and verified the model (their init containers finished).
    pub const MODEL_FETCHED: &str = "ModelFetched";
    /// Pipeline: the referenced `ImageModel` exists and some revision of it serves (its
    /// `Available`), whether or not a rollout of it is under way.
    pub const MODEL_AVAILABLE: &str = "ModelAvailable";
    pub const UPLOAD_READY: &str = "UploadReady";
    pub const STORE_READY: &str = "StoreReady";
    /// Pipeline: every parent Gateway accepted the HTTPRoute (or the Ingress exists).
    pub const ROUTE_ACCEPTED: &str = "RouteAccepted";
    /// Model: the start-up evaluation of `spec.evaluation` finished (its figures are in
    /// `status.evaluation`).
    pub const EVALUATED: &str = "Evaluated";
    /// Model: the answers of the serving pods moved away from their baseline beyond
    /// `spec.monitoring.maxDrift` (True), stay within it (False), or cannot be told
    /// (Unknown). The model still serves either way: it never changes `Ready`.
    pub const DRIFTING: &str = "Drifting";
    /// kstatus' "abnormal-true" pair (sigs.k8s.io/cli-utils/pkg/kstatus, read by Flux,
    /// kpt and `kubectl`-side waiters, which otherwise call any observed resource
    /// `Current`): the spec is still being realised ([`kstatus`]).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the spec cannot be realised without a change (a failed rollout, a
    /// rollback, an invalid spec, a refused apply).
    pub const STALLED: &str = "Stalled";
}

/// Reasons (CamelCase, stable: they are also metric label values).
pub mod reasons {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    /// A rollout is under way (pods starting, old ones draining).
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The current revision is fully rolled out.
    pub const ROLLED_OUT: &str = "RolledOut";
    /// The new revision cannot serve while an older one still does.
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// An object with a child's name exists and is not ours.
    pub const CONFLICTING_OBJECT: &str = "ConflictingObject";
    /// A Secret the spec references does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const VALIDATED: &str = "Validated";
    /// The pods passed the kubelet's `/readyz` probe, but their answer could not be read
    /// through the API server.
    pub const READINESS_PROBE_PASSED: &str = "ReadinessProbePassed";
    pub const WAITING_FOR_PODS: &str = "WaitingForPods";
    pub const MODEL_LOADING: &str = "ModelLoading";
    /// A canary rollout is under way: the candidate takes part of the traffic.
    pub const CANARY: &str = "Canary";
    /// A canary failed a check; traffic went back to the stable revision.
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const FETCHED: &str = "Fetched";
    pub const FETCHING: &str = "Fetching";
    pub const FETCH_FAILED: &str = "FetchFailed";
    pub const MODEL_NOT_FOUND: &str = "ModelNotFound";
    /// RecognitionJob: `output.pipeline` names no RecognitionPipeline.
    pub const PIPELINE_NOT_FOUND: &str = "PipelineNotFound";
    /// RecognitionJob: the output pipeline checks API keys and the job gives none.
    pub const STORE_KEY_MISSING: &str = "StoreKeyMissing";
    /// Pipeline: no revision of the model serves.
    pub const MODEL_UNAVAILABLE: &str = "ModelUnavailable";
    pub const MODEL_AVAILABLE: &str = "ModelAvailable";
    /// The newest revision's pods serve another model file than `spec.source.sha256`.
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    /// kstatus: the spec is realised (`Reconciling=False`).
    pub const RECONCILED: &str = "Reconciled";
    /// kstatus: nothing needs a person (`Stalled=False`).
    pub const NOT_STALLED: &str = "NotStalled";
    pub const ACCEPTED: &str = "Accepted";
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    pub const PENDING: &str = "Pending";
    pub const GATEWAY_API_MISSING: &str = "GatewayAPIMissing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// This operator replica lost the leader Lease mid-reconcile (nothing more written).
    pub const LEASE_LOST: &str = "LeaseLost";
    pub const READY: &str = "Ready";
    pub const NOT_READY: &str = "NotReady";
    pub const EVALUATED: &str = "Evaluated";
    pub const EVALUATION_PENDING: &str = "EvaluationPending";
    pub const EVALUATION_FAILED: &str = "EvaluationFailed";
    /// `Drifting=True`: a drift signal is above `maxDrift`.
    pub const DRIFT_ABOVE_THRESHOLD: &str = "DriftAboveThreshold";
    /// `Drifting=False`: the drift is known and within `maxDrift`.
    pub const DRIFT_WITHIN_THRESHOLD: &str = "DriftWithinThreshold";
    /// `Drifting=Unknown`: no pod reports a drift (baseline incomplete, too few answers,
    /// no pod answered).
    pub const DRIFT_UNKNOWN: &str = "DriftUnknown";
}

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that always says the same time (tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// A condition before it is placed in a list (which decides its transition time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    /// Neither true nor false: what it is about cannot be told now (`status` is false, so
    /// nothing reads it as true).
    pub unknown: bool,
    /// CamelCase: ours, Kubernetes' (`ImagePullBackOff`) or the server's (`DigestMismatch`).
    pub reason: String,
    pub message: String,
}

/// Longest condition message kept (the API allows 32 KiB; a person reads far less).
const MESSAGE_LIMIT: usize = 2048;

/// A reason as the API accepts it (`[A-Za-z][A-Za-z0-9_,:]*`, at most 1024 characters);
/// anything else becomes `Unknown`.
fn valid_reason(reason: String) -> String {
    let ok = reason.len() <= 1024
        && reason
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && reason
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':'));
    if ok { reason } else { "Unknown".into() }
}

fn bounded(message: String) -> String {
    if message.len() <= MESSAGE_LIMIT {
        return message;
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

impl Cond {
    pub fn yes(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: true,
            unknown: false,
            reason: valid_reason(reason.into()),
            message: bounded(message.into()),
        }
    }

    pub fn no(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: false,
            unknown: false,
            reason: valid_reason(reason.into()),
            message: bounded(message.into()),
        }
    }

    /// Status `Unknown`.
    pub fn unknown(
        type_: &'static str,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Cond {
            unknown: true,
            ..Cond::no(type_, reason, message)
        }
    }

    fn status_str(&self) -> &'static str {
        match (self.unknown, self.status) {
            (true, _) => "Unknown",
            (false, true) => "True",
            (false, false) => "False",
        }
    }
}

/// The conditions `wanted`, in that order, keeping each previous transition time when the
/// status did not change.
pub fn merge(
    previous: &[Condition],
    wanted: &[Cond],
    generation: Option<i64>,
    clock: &dyn Clock,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|c| {
            let old = previous.iter().find(|p| p.type_ == c.type_);
            let last_transition_time = match old {
                Some(old) if old.status == c.status_str() => old.last_transition_time.clone(),
                _ => Time(clock.now()),
            };
            Condition {
                type_: c.type_.to_string(),
                status: c.status_str().to_string(),
                reason: c.reason.to_string(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// `Ready` from the components: true when all are true; else false with the first failing
/// component's reason and message.
pub fn ready_from(components: &[Cond]) -> Cond {
    match components.iter().find(|c| !c.status) {
        None => Cond::yes(types::READY, reasons::READY, "all components are ready"),
        Some(c) => Cond::no(
            types::READY,
            c.reason.clone(),
            format!("{}: {}", c.type_, c.message),
        ),
    }
}

/// Reasons of a false `Ready` that no waiting cures: the spec, a refusal or a failed
/// rollout needs a person (Argo CD's `Degraded` in manifests/argocd/health.lua).
pub const STALLED_REASONS: [&str; 10] = [
    reasons::INVALID_SPEC,
    reasons::APPLY_FAILED,
    reasons::CONFLICTING_OBJECT,
    reasons::ROLLOUT_FAILED,
    reasons::ROLLED_BACK,
    reasons::SECRET_NOT_FOUND,
    reasons::MODEL_NOT_FOUND,
    reasons::GATEWAY_API_MISSING,
    reasons::NOT_ACCEPTED,
    "ProgressDeadlineExceeded",
];

/// kstatus' `Reconciling` and `Stalled`, from `Ready` and `Progressing` by the rule the
/// Argo CD health script uses: stalled when `Ready` is false for a reason in
/// [`STALLED_REASONS`] or `Progressing` is false; reconciling when `Ready` is false
/// otherwise (scaled to zero is neither: it is what the spec asks).
pub fn kstatus(conditions: &[Cond]) -> [Cond; 2] {
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let ready = find(types::READY);
    let stuck = find(types::PROGRESSING).filter(|c| !c.status);
    let (stalled, reconciling) = match ready {
        Some(r) if r.status => (None, None),
        Some(r) if r.reason == reasons::SCALED_TO_ZERO => (None, None),
        Some(r) if STALLED_REASONS.contains(&r.reason.as_str()) => (Some(r), None),
        Some(_) if stuck.is_some() => (stuck, None),
        Some(r) => (None, Some(r)),
        None => (None, None),
    };
    let reconciling = match (reconciling, stalled) {
        (Some(r), _) => Cond::yes(types::RECONCILING, r.reason.clone(), r.message.clone()),
        (None, Some(_)) => Cond::no(types::RECONCILING, "Stalled", "stuck: see Stalled"),
        (None, None) => Cond::no(types::RECONCILING, reasons::RECONCILED, "nothing is moving"),
    };
    let stalled = match stalled {
        Some(r) => Cond::yes(types::STALLED, r.reason.clone(), r.message.clone()),
        None => Cond::no(
            types::STALLED,
            reasons::NOT_STALLED,
            "nothing needs a change",
        ),
    };
    [reconciling, stalled]
}

/// Whether `conditions` has `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> FixedClock {
        FixedClock(Timestamp::from_second(seconds).expect("timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = merge(
            &[],
            &[Cond::no(types::READY, reasons::PROGRESSING, "starting")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time.0.as_second(), 100);
        let same = merge(
            &first,
            &[Cond::no(
                types::READY,
                reasons::MODEL_NOT_FOUND,
                "other words",
            )],
            Some(2),
            &at(200),
        );
        assert_eq!(same[0].last_transition_time.0.as_second(), 100);
        assert_eq!(same[0].reason, "ModelNotFound");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Cond::yes(types::READY, reasons::READY, "ok")],
            Some(2),
            &at(300),
        );
        assert_eq!(flipped[0].last_transition_time.0.as_second(), 300);
        assert_eq!(flipped[0].status, "True");
        let unknown = merge(
            &flipped,
            &[Cond::unknown(types::READY, reasons::PENDING, "?")],
            Some(2),
            &at(400),
        );
        assert_eq!(unknown[0].status, "Unknown");
        assert_eq!(unknown[0].last_transition_time.0.as_second(), 400);
        assert!(!Cond::unknown(types::DRIFTING, reasons::DRIFT_UNKNOWN, "").status);
    }

    #[test]
    fn ready_takes_the_first_failing_component() {
        let ready = ready_from(&[
            Cond::yes(types::UPLOAD_READY, reasons::AVAILABLE, "1/1"),
            Cond::no(
                types::MODEL_AVAILABLE,
                reasons::MODEL_NOT_FOUND,
                "no model x",
            ),
            Cond::no(types::STORE_READY, reasons::PROGRESSING, "0/1"),
        ]);
        assert!(!ready.status);
        assert_eq!(ready.reason, reasons::MODEL_NOT_FOUND);
        assert!(ready_from(&[Cond::yes(types::UPLOAD_READY, reasons::AVAILABLE, "")]).status);
    }
}
