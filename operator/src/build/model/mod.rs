//! Children of an `ImageModel`: the recognize Deployment (model fetched and verified by an
//! init container, or mounted from a PVC), its Service, an HPA when autoscaling is set and
//! a PodDisruptionBudget when more than one replica may serve (those two, the rolling
//! update and a canary's sizing in [`super::sizing`]; where it runs in [`super::device`]).

mod deployment;
mod fetch;
pub(super) mod identity;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{object_meta, selector_labels};
use super::pod::{PORT, PORT_NAME, Platform};
use crate::crd::ImageModel;

pub use super::device::{decided_device, device_without_nodes, resolve_device};
pub use super::sizing::{
    QUEUE_METRIC, candidate_replicas, hpa, hpa_with_floor, pdb, rolling_update,
};
pub use deployment::{PROGRESS_DEADLINE, deployment, model_flags, server_image, server_resources};
pub use fetch::{
    FETCH_ATTEMPTS, LABELS_ATTEMPT_SECONDS, MODEL_ATTEMPT_SECONDS, ModelFiles, credentials_env,
    model_files,
};
pub use identity::{
    COMPONENT, INPUTS_ANNOTATION, ModelInputs, child_labels, endpoint, name, secret_names,
};

/// The recognize Service.
pub fn service(model: &ImageModel) -> Service {
    Service {
        metadata: object_meta(model, &name(model), COMPONENT),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&model.name_any(), COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Everything an `ImageModel` owns, in apply order.
#[derive(Debug, Clone)]
pub struct ModelChildren {
    pub service: Service,
    pub deployment: Deployment,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
    pub network_policy: k8s_openapi::api::networking::v1::NetworkPolicy,
    /// Applied when the cluster serves the Prometheus Operator's API.
    pub monitor: super::monitoring::ServiceMonitor,
}

/// The children of `model`; `inputs` as found by the reconciler.
pub fn children(model: &ImageModel, platform: &Platform, inputs: &ModelInputs) -> ModelChildren {
    ModelChildren {
        service: service(model),
        deployment: super::canary::with_revision(deployment(model, platform, inputs)),
        hpa: hpa(model, inputs),
        pdb: pdb(model),
        network_policy: super::network::model_policy(model, platform),
        monitor: super::monitoring::model_monitor(model, platform),
    }
}
