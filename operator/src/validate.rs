//! Checks the CRD schema cannot express. A spec that fails here is reported in the status
//! (`Ready=False`, reason `InvalidSpec`) and waits for a change; nothing is applied for it.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{Analysis, ImageModel, MonitoringSpec, QUALITY_WINDOWS, RecognitionPipeline};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

fn check_uri(field: &'static str, uri: &str) -> Result<(), Invalid> {
    if let Some(reference) = uri.strip_prefix("oci://") {
        return match reference.split_once("@sha256:") {
            Some((repository, digest))
                if repository.contains('/')
                    && digest.len() == 64
                    && digest.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                Ok(())
            }
            _ => Err(invalid(
                field,
                "oci:// needs an image pinned by digest: oci://registry/repository@sha256:<64 hex>",
            )),
        };
    }
    if let Some(rest) = uri.strip_prefix("pvc://") {
        match rest.split_once('/') {
            Some((claim, path)) if !claim.is_empty() && !path.is_empty() => Ok(()),
            _ => Err(invalid(
                field,
                "pvc:// needs a claim and a path: pvc://claim/path",
            )),
        }
    } else if let Some(rest) = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("s3://"))
    {
        match rest.split_once('/') {
            Some((host, path)) if !host.is_empty() && !path.is_empty() => Ok(()),
            _ => Err(invalid(field, format!("{uri:?} names no file"))),
        }
    } else {
        Err(invalid(
            field,
            "uri must start with https://, s3:// or pvc://",
        ))
    }
}

/// An `ImageModel` the operator can serve as written.
pub fn model(m: &ImageModel) -> Result<(), Invalid> {
    let source = &m.spec.source;
    check_uri("spec.source.uri", &source.model.uri)?;
    check_uri("spec.source.labels.uri", &source.labels.uri)?;
    let oci = |uri: &str| uri.starts_with("oci://");
    if oci(&source.model.uri) != oci(&source.labels.uri)
        || (oci(&source.model.uri) && source.model.uri != source.labels.uri)
    {
        return Err(invalid(
            "spec.source.labels.uri",
            "a model image carries its labels: give the same oci:// reference for both",
        ));
    }
    if let Some(evaluation) = &m.spec.evaluation {
        check_uri("spec.evaluation.dataset.uri", &evaluation.dataset.uri)?;
        if evaluation.dataset.uri.starts_with("oci://") {
            return Err(invalid(
                "spec.evaluation.dataset.uri",
                "a labelled set comes from https://, s3:// or pvc://",
            ));
        }
    }
    if let Some(resource) = &m.spec.runtime.gpu_resource
        && !resource.contains('/')
    {
        return Err(invalid(
            "spec.runtime.gpuResource",
            "an extended resource name such as nvidia.com/gpu",
        ));
    }
    if let Some(update) = &m.spec.runtime.rolling_update {
        let zero = |v: &Option<IntOrString>| match v {
            Some(IntOrString::Int(n)) => *n == 0,
            Some(IntOrString::String(p)) => p.trim_end_matches('%').trim() == "0",
            None => false,
        };
        if zero(&update.max_surge) && zero(&update.max_unavailable) {
            return Err(invalid(
                "spec.runtime.rollingUpdate",
                "maxSurge and maxUnavailable cannot both be 0 (no pod could be replaced)",
            ));
        }
    }
    if let Some(auto) = &m.spec.runtime.autoscaling
        && auto.min_replicas > auto.max_replicas
    {
        return Err(invalid(
            "spec.runtime.autoscaling",
            "minReplicas must not exceed maxReplicas",
        ));
    }
    if let Some(monitoring) = &m.spec.monitoring {
        self::monitoring(monitoring)?;
    }
    if let Some(rollout) = &m.spec.rollout {
        live_checks(&rollout.analysis)?;
    }
    Ok(())
}

/// `spec.monitoring`: a threshold a drift can cross, a window the store counts, a sample.
fn monitoring(spec: &MonitoringSpec) -> Result<(), Invalid> {
    if let Some(max) = spec.max_drift
        && !(max > 0.0 && max < 1.0)
    {
        return Err(invalid(
            "spec.monitoring.maxDrift",
            format!(
                "{max} is not above 0 and below 1: the drift is a Jensen-Shannon divergence \
                 (base 2) from 0 (answers distributed as the baseline's) to 1 (nothing in \
                 common), so at 0 every model drifts and at 1 none ever does"
            ),
        ));
    }
    if let Some(window) = &spec.quality_window
        && !QUALITY_WINDOWS.contains(&window.as_str())
    {
        return Err(invalid(
            "spec.monitoring.qualityWindow",
            format!("{window:?} is not a window the store counts: 1h, 24h or 7d"),
        ));
    }
    if spec.min_feedback_samples == Some(0) {
        return Err(invalid(
            "spec.monitoring.minFeedbackSamples",
            "at least 1: a live check cannot judge on no feedback",
        ));
    }
    Ok(())
}

/// `minLiveAccuracy` and `maxLiveAccuracyDrop` are shares of answers.
fn live_checks(analysis: &Analysis) -> Result<(), Invalid> {
    for (field, value) in [
        (
            "spec.rollout.analysis.minLiveAccuracy",
            analysis.min_live_accuracy,
        ),
        (
            "spec.rollout.analysis.maxLiveAccuracyDrop",
            analysis.max_live_accuracy_drop,
        ),
    ] {
        if let Some(v) = value
            && !(0.0..=1.0).contains(&v)
        {
            return Err(invalid(
                field,
                format!("{v} is not a share of answers (from 0 to 1)"),
            ));
        }
    }
    Ok(())
}

/// A `RecognitionPipeline` the operator can run as written.
pub fn pipeline(p: &RecognitionPipeline) -> Result<(), Invalid> {
    let spec = &p.spec;
    let prefix = spec.gateway.path_prefix.as_deref().unwrap_or("/");
    if spec.gateway.ingress.is_some() && !prefix.trim_end_matches('/').is_empty() {
        return Err(invalid(
            "spec.gateway.pathPrefix",
            format!(
                "an Ingress cannot strip the prefix {prefix:?} portably (the server's routes \
                 are fixed): use a Gateway (spec.gateway.parentRefs, which rewrites it) or \
                 pathPrefix \"/\" with the Ingress"
            ),
        ));
    }
    if spec.upload.s3.is_none() && spec.upload.replicas.unwrap_or(1) > 1 {
        return Err(invalid(
            "spec.upload.replicas",
            "more than one upload replica needs spec.upload.s3 (the image volume is ReadWriteOnce)",
        ));
    }
    if spec.gateway.ingress.is_some() && !spec.gateway.parent_refs.is_empty() {
        return Err(invalid(
            "spec.gateway",
            "use either parentRefs (HTTPRoute) or ingress, not both",
        ));
    }
    if let Some(prefix) = &spec.gateway.path_prefix
        && !prefix.starts_with('/')
    {
        return Err(invalid("spec.gateway.pathPrefix", "must start with /"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_need_a_file() {
        assert!(check_uri("f", "https://h/m.onnx").is_ok());
        assert!(check_uri("f", "s3://bucket/key").is_ok());
        assert!(check_uri("f", "pvc://claim/dir/m.onnx").is_ok());
        assert!(check_uri("f", "pvc://claim").is_err());
        assert!(check_uri("f", "https://host").is_err());
        assert!(check_uri("f", "http://h/m.onnx").is_err());
    }

    #[test]
    fn monitoring_and_live_checks_say_what_is_wrong() {
        let ok = MonitoringSpec {
            max_drift: Some(0.3),
            quality_window: Some("7d".into()),
            min_feedback_samples: Some(1),
        };
        assert_eq!(monitoring(&ok), Ok(()));
        assert_eq!(monitoring(&MonitoringSpec::default()), Ok(()));
        for max in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            let bad = MonitoringSpec {
                max_drift: Some(max),
                ..ok.clone()
            };
            let e = monitoring(&bad).expect_err("a drift no model can cross");
            assert_eq!(e.field, "spec.monitoring.maxDrift");
            assert!(e.message.contains("above 0 and below 1"), "{e}");
        }
        let e = monitoring(&MonitoringSpec {
            quality_window: Some("1d".into()),
            ..ok.clone()
        })
        .expect_err("1d");
        assert_eq!(
            e.to_string(),
            "spec.monitoring.qualityWindow: \"1d\" is not a window the store counts: 1h, 24h or 7d"
        );
        let e = monitoring(&MonitoringSpec {
            min_feedback_samples: Some(0),
            ..ok
        })
        .expect_err("no sample");
        assert_eq!(e.field, "spec.monitoring.minFeedbackSamples");

        assert_eq!(live_checks(&Analysis::default()), Ok(()));
        let a = Analysis {
            min_live_accuracy: Some(0.9),
            max_live_accuracy_drop: Some(0.0),
            ..Analysis::default()
        };
        assert_eq!(live_checks(&a), Ok(()));
        let e = live_checks(&Analysis {
            max_live_accuracy_drop: Some(2.0),
            ..a
        })
        .expect_err("a drop of 2");
        assert_eq!(e.field, "spec.rollout.analysis.maxLiveAccuracyDrop");
    }
}
