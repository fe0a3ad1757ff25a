//! The pipeline's ConfigMap: the `SIGHTLINE_*` settings that wire the upload and store
//! roles to each other and to the model, and how the pods read it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapEnvSource, EnvFromSource};

use super::identity::{
    CONFIG, DATA_DIR, TRAFFIC_DIR, config_name, public_url, service_url, store_name,
};
use crate::build::meta::object_meta;
use crate::crd::RecognitionPipeline;

/// Settings shared by the upload and store roles, as `SIGHTLINE_*` variables.
pub fn config_map(p: &RecognitionPipeline, model_endpoint: &str) -> ConfigMap {
    let spec = &p.spec;
    let mut data = BTreeMap::from([
        (
            "SIGHTLINE_RECOGNIZE_URL".to_string(),
            model_endpoint.to_string(),
        ),
        (
            "SIGHTLINE_STORE_URL".to_string(),
            service_url(p, &store_name(p)),
        ),
        ("SIGHTLINE_PUBLIC_URL".to_string(), public_url(p)),
        ("SIGHTLINE_DATA_DIR".to_string(), DATA_DIR.to_string()),
        ("SIGHTLINE_LOG_FORMAT".to_string(), "json".to_string()),
        (
            "SIGHTLINE_TRAFFIC_FILE".to_string(),
            format!("{TRAFFIC_DIR}/{}", crate::build::canary::TRAFFIC_FILE),
        ),
        (
            "SIGHTLINE_MAX_UPLOAD_BYTES".to_string(),
            spec.upload
                .max_bytes
                .unwrap_or(20 * 1024 * 1024)
                .to_string(),
        ),
    ]);
    if let Some(s3) = &spec.upload.s3 {
        let prefix = s3.prefix.clone().unwrap_or_default();
        data.insert(
            "SIGHTLINE_IMAGE_STORE".into(),
            format!("s3://{}/{}", s3.bucket, prefix.trim_start_matches('/')),
        );
        if let Some(endpoint) = &s3.endpoint {
            data.insert("SIGHTLINE_S3_ENDPOINT".into(), endpoint.clone());
        }
        data.insert(
            "SIGHTLINE_S3_REGION".into(),
            s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
        );
    }
    if let Some(limit) = &spec.gateway.rate_limit {
        // The limit is the pipeline's: each upload replica (the front door) enforces its
        // share. Approximate — a load balancer that favours one replica lets a key reach
        // less than the whole limit — and exact when traffic spreads evenly.
        let replicas = spec.upload.replicas.unwrap_or(1).max(1).unsigned_abs();
        let share = |n: u32| n.div_ceil(replicas).max(1);
        data.insert(
            "SIGHTLINE_RATE_LIMIT_RPS".into(),
            share(limit.requests_per_second).to_string(),
        );
        data.insert(
            "SIGHTLINE_RATE_LIMIT_BURST".into(),
            share(limit.burst.unwrap_or(limit.requests_per_second)).to_string(),
        );
    }
    ConfigMap {
        metadata: object_meta(p, &config_name(p), CONFIG),
        data: Some(data),
        ..ConfigMap::default()
    }
}

pub(super) fn config_env(p: &RecognitionPipeline) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_name(p),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}
