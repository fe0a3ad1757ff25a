//! `ServiceMonitor`s (Prometheus Operator, `monitoring.coreos.com/v1`), one per managed
//! workload: a pipeline's scrapes its upload and store Services, a model's its recognize
//! Service. Labelled with the operator's `--service-monitor-label`s (default
//! `release=kube-prometheus-stack`, what that chart's Prometheus selects). Applied only
//! when the cluster serves the API; `render` always shows them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, NAME, object_meta};
use super::pod::{PORT_NAME, Platform};
use crate::crd::{ImageModel, RecognitionPipeline};

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

/// A `ServiceMonitor` named `name` of `owner`, scraping the Services of `components`,
/// labelled so the cluster's Prometheus selects it ([`Platform::monitor_labels`]).
fn monitor<K: kube::Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    platform: &Platform,
    components: &[&str],
) -> ServiceMonitor {
    let mut monitor = ServiceMonitor::new(
        name,
        ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(
                    [
                        (LABEL_NAME.to_string(), NAME.to_string()),
                        (LABEL_INSTANCE.to_string(), owner.name_any()),
                    ]
                    .into(),
                ),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: LABEL_COMPONENT.to_string(),
                    operator: "In".to_string(),
                    values: Some(components.iter().map(|c| c.to_string()).collect()),
                }]),
            },
            endpoints: vec![ScrapeEndpoint {
                port: PORT_NAME.to_string(),
                path: "/metrics".to_string(),
                interval: "30s".to_string(),
            }],
        },
    );
    monitor.metadata = object_meta(owner, name, COMPONENT);
    if let Some(labels) = monitor.metadata.labels.as_mut() {
        for (k, v) in &platform.monitor_labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    monitor
}

/// The name of a pipeline's `ServiceMonitor`. Every child is named `<owner>-<suffix>`,
/// and no suffix of one kind of owner ends another's (`-pipeline`, `-recognize`, …), so a
/// model and a pipeline of the same name — or any two owners — never share a child's
/// name (operator/tests/fit.rs checks every child of adversarially named owners).
pub fn pipeline_monitor_name(p: &RecognitionPipeline) -> String {
    format!("{}-pipeline", p.name_any())
}

/// The `ServiceMonitor` of a pipeline: its upload and store Services.
pub fn pipeline_monitor(p: &RecognitionPipeline, platform: &Platform) -> ServiceMonitor {
    monitor(
        p,
        &pipeline_monitor_name(p),
        platform,
        &[
            super::pipeline::identity::UPLOAD,
            super::pipeline::identity::STORE,
        ],
    )
}

/// The `ServiceMonitor` of a model: its recognize Service and a canary candidate's (once,
/// however many pipelines share the model), named as the model's other children.
pub fn model_monitor(m: &ImageModel, platform: &Platform) -> ServiceMonitor {
    monitor(
        m,
        &super::model::identity::name(m),
        platform,
        &[super::model::identity::COMPONENT, super::canary::COMPONENT],
    )
}
