//! The per-pipeline `ServiceMonitor` (Prometheus Operator, `monitoring.coreos.com/v1`):
//! scrapes `/metrics` of the pipeline's upload and store Services and of its model's
//! recognize Service. Applied only when the cluster serves that API.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{LABEL_INSTANCE, LABEL_NAME, NAME, object_meta};
use super::pod::PORT_NAME;
use crate::crd::RecognitionPipeline;

pub const COMPONENT: &str = "monitoring";

/// The part of the Prometheus Operator's `ServiceMonitor` the operator writes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// The Services to scrape.
    pub selector: LabelSelector,
    /// How to scrape them.
    pub endpoints: Vec<ScrapeEndpoint>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeEndpoint {
    /// Service port name.
    pub port: String,
    pub path: String,
    pub interval: String,
}

/// The `ServiceMonitor` of `p`, whose model is the `ImageModel` named `model_name`.
pub fn service_monitor(p: &RecognitionPipeline, model_name: &str) -> ServiceMonitor {
    let mut instances = vec![p.name_any(), model_name.to_string()];
    instances.sort();
    instances.dedup();
    let mut monitor = ServiceMonitor::new(
        &p.name_any(),
        ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some([(LABEL_NAME.to_string(), NAME.to_string())].into()),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: LABEL_INSTANCE.to_string(),
                    operator: "In".to_string(),
                    values: Some(instances),
                }]),
            },
            endpoints: vec![ScrapeEndpoint {
                port: PORT_NAME.to_string(),
                path: "/metrics".to_string(),
                interval: "30s".to_string(),
            }],
        },
    );
    monitor.metadata = object_meta(p, &p.name_any(), COMPONENT);
    monitor
}
