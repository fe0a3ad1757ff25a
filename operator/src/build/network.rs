//! NetworkPolicies: the pods of a pipeline deny everything by default, then get only the
//! flows the pipeline needs — clients (through any gateway) to the upload pods (the front
//! door, which checks keys), upload to the model and the store, the metrics scraper's
//! namespace to the model and the store, DNS, and the database or object store when one is
//! external.
//!
//! What stays open, and why: the upload pods accept port 8080 from anywhere (the gateway's
//! data plane lives in another namespace and varies by implementation); the scraper's
//! namespace reaches port 8080 of the model and store pods (the metrics share the port
//! with the API, and those pods check no keys); egress to the database, the object store
//! and the model source goes to any address on its port (their addresses are outside the
//! cluster's knowledge). The kubelet's probes and the API server's `pods/proxy` (the
//! operator reads `/readyz` and the start-up evaluation that way) come from the nodes,
//! which most network plugins do not subject to NetworkPolicy.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{
    LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, NAME, object_meta, selector_labels,
};
use super::pod::{PORT, Platform};
use crate::crd::{DatabaseKind, ImageModel, RecognitionPipeline};

fn port(number: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}

fn dns() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
        to: None,
    }
}

fn select(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(select(labels)),
        ..NetworkPolicyPeer::default()
    }
}

/// Clients reach port 8080 from anywhere (the gateway's pods live in another namespace).
fn serve() -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        ports: Some(vec![port(PORT, "TCP")]),
        from: None,
    }
}

/// Port 8080 from `peers` only, plus the metrics scraper's namespace when there is one.
fn serve_only(peers: Vec<NetworkPolicyPeer>, platform: &Platform) -> NetworkPolicyIngressRule {
    let mut from = peers;
    if let Some(ns) = &platform.scrape_namespace {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(select(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                ns.clone(),
            )]))),
            ..NetworkPolicyPeer::default()
        });
    }
    NetworkPolicyIngressRule {
        ports: Some(vec![port(PORT, "TCP")]),
        from: Some(from),
    }
}

/// Every Sightline front door (upload pod) in the namespace.
fn front_doors() -> NetworkPolicyPeer {
    pods(BTreeMap::from([
        (LABEL_NAME.to_string(), NAME.to_string()),
        (
            LABEL_COMPONENT.to_string(),
            super::pipeline::UPLOAD.to_string(),
        ),
    ]))
}

fn policy<K: kube::Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    component: &str,
    selector: BTreeMap<String, String>,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(owner, &name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(select(selector)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// Default deny for all of the pipeline's pods, then one policy per component.
pub fn pipeline_policies(
    p: &RecognitionPipeline,
    model_name: &str,
    platform: &Platform,
) -> Vec<NetworkPolicy> {
    let instance = p.name_any();
    let all_pods = BTreeMap::from([
        (LABEL_NAME.to_string(), NAME.to_string()),
        (LABEL_INSTANCE.to_string(), instance.clone()),
    ]);
    let model_pods = selector_labels(model_name, super::model::COMPONENT);
    let store_pods = selector_labels(&instance, super::pipeline::STORE);
    let upload_pods = selector_labels(&instance, super::pipeline::UPLOAD);
    let upload_pods_of_this = upload_pods.clone();

    let mut upload_egress = vec![
        dns(),
        NetworkPolicyEgressRule {
            ports: Some(vec![port(PORT, "TCP")]),
            to: Some(vec![pods(model_pods), pods(store_pods.clone())]),
        },
    ];
    if p.spec.upload.s3.is_some() {
        upload_egress.push(NetworkPolicyEgressRule {
            ports: Some(vec![port(443, "TCP"), port(80, "TCP"), port(9000, "TCP")]),
            to: None,
        });
    }
    let mut store_egress = vec![dns()];
    match p.spec.storage.database {
        DatabaseKind::Postgres => store_egress.push(NetworkPolicyEgressRule {
            ports: Some(vec![port(5432, "TCP")]),
            to: None,
        }),
        DatabaseKind::Mysql => store_egress.push(NetworkPolicyEgressRule {
            ports: Some(vec![port(3306, "TCP")]),
            to: None,
        }),
        DatabaseKind::Sqlite => {}
    }
    vec![
        policy(
            p,
            format!("{instance}-default-deny"),
            super::pipeline::CONFIG,
            all_pods,
            vec![],
            vec![],
        ),
        policy(
            p,
            format!("{instance}-upload"),
            super::pipeline::UPLOAD,
            upload_pods,
            vec![serve()],
            upload_egress,
        ),
        // The store answers only its pipeline's front door (and the scraper).
        policy(
            p,
            format!("{instance}-store"),
            super::pipeline::STORE,
            store_pods,
            vec![serve_only(vec![pods(upload_pods_of_this)], platform)],
            store_egress,
        ),
    ]
}

/// The model's pods: port 8080 only from the namespace's front doors (the upload pods of
/// the pipelines, which check keys) and the metrics scraper; egress to DNS and to
/// HTTPS/S3 for the fetch init containers and the evaluation set.
pub fn model_policy(model: &ImageModel, platform: &Platform) -> NetworkPolicy {
    policy(
        model,
        super::model::name(model),
        super::model::COMPONENT,
        selector_labels(&model.name_any(), super::model::COMPONENT),
        vec![serve_only(vec![front_doors()], platform)],
        vec![
            dns(),
            NetworkPolicyEgressRule {
                ports: Some(vec![port(443, "TCP"), port(80, "TCP"), port(9000, "TCP")]),
                to: None,
            },
        ],
    )
}
