//! Children of a `RecognitionPipeline`: the upload and store Deployments and Services,
//! their volumes, the ConfigMap that wires them to each other and to the model, the route
//! (Gateway API `HTTPRoute`, or an `Ingress`) and the NetworkPolicies.

mod config;
pub(super) mod identity;
mod routes;
mod storage;
mod workloads;

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;

use super::inputs::with_inputs;
use super::pod::Platform;
use crate::crd::RecognitionPipeline;

pub use super::inputs::{inputs_digest, rolling_secrets, secret_names};
pub use config::config_map;
pub use identity::{
    CONFIG, OWNER_ANNOTATION, ROUTE, STORE, UPLOAD, config_name, images_claim, owner_key,
    public_url, results_claim, store_name, upload_name,
};
pub use routes::{http_route, ingress, prefix};
pub use storage::{claims, retained_claims};
pub use workloads::{store_deployment, store_service, upload_deployment, upload_service};

/// Everything a `RecognitionPipeline` owns, in apply order.
#[derive(Debug, Clone)]
pub struct PipelineChildren {
    pub config_map: ConfigMap,
    pub claims: Vec<PersistentVolumeClaim>,
    pub store_service: Service,
    pub store_deployment: Deployment,
    pub upload_service: Service,
    pub upload_deployment: Deployment,
    pub http_route: Option<HttpRoute>,
    pub ingress: Option<Ingress>,
    pub network_policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>,
    /// Applied when the cluster serves the Prometheus Operator's API.
    pub monitor: super::monitoring::ServiceMonitor,
}

/// The children of `p`, wired to `model` (the `ImageModel` its `modelRef` names);
/// `secrets_digest` is the digest of the Secrets it references (empty when unknown).
pub fn children(
    p: &RecognitionPipeline,
    model: &crate::crd::ImageModel,
    platform: &Platform,
    secrets_digest: &str,
) -> PipelineChildren {
    let config = config_map(p, &super::model::identity::endpoint(model));
    let digest = inputs_digest(&config, secrets_digest);
    PipelineChildren {
        config_map: config,
        claims: claims(p),
        store_service: store_service(p),
        store_deployment: with_inputs(store_deployment(p, platform), &digest),
        upload_service: upload_service(p),
        upload_deployment: with_inputs(upload_deployment(p, model, platform), &digest),
        http_route: http_route(p),
        ingress: ingress(p),
        network_policies: super::network::pipeline_policies(p, &model.name_any(), platform),
        monitor: super::monitoring::pipeline_monitor(p, platform),
    }
}
