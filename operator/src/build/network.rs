//! NetworkPolicies: the pods of a pipeline deny everything by default, then get only the
//! flows the pipeline needs — clients (through any gateway) to the upload pods (the front
//! door, which checks keys), upload to the model and the store, the shards of a
//! RecognitionJob that writes to the pipeline to its store, the metrics scraper's
//! namespace to the model and the store, DNS, and the database or object store when one is
//! external.
//!
//! What stays open, and why: the upload pods accept port 8080 from anywhere (the gateway's
//! data plane lives in another namespace and varies by implementation); the scraper's
//! namespace reaches port 8080 of the model and store pods (the metrics share the port
//! with the API, and those pods check no keys); egress to the database, the object store
//! and the model source goes to any address on its port (their addresses are outside the
//! cluster's knowledge). The front doors reach the model's stable **and** canary pods
//! (`recognize`, `recognize-canary`): a canary's split and mirror go to the candidate.
//! The API server's `pods/proxy` (the operator reads `/readyz`, the start-up evaluation
//! and a canary's `/metrics` that way) is admitted to the model pods from the operator's
//! `--api-server-sources` (CIDRs as `ipBlock`, or Konnectivity agent pods): it comes from
//! wherever the API server runs, which is the pod's own node only on single-node
//! clusters. The kubelet's probes come from the pod's own node, which network plugins
//! admit whatever the policy says. operator/tests/netpol.rs evaluates these policies as a
//! connectivity matrix.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{
    JOB_COMPONENT, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, LABEL_RESULTS_FOR, NAME,
    object_meta, selector_labels,
};
use super::pod::{ApiServerSource, PORT, Platform};
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

/// Pods of namespace `ns` (by its `kubernetes.io/metadata.name` label, which the API
/// server sets on every namespace).
fn namespace(ns: &str) -> LabelSelector {
    select(BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        ns.to_string(),
    )]))
}

/// Port 8080 from `peers` only, plus the metrics scraper's namespace when there is one.
fn serve_only(peers: Vec<NetworkPolicyPeer>, platform: &Platform) -> NetworkPolicyIngressRule {
    let mut from = peers;
    if let Some(ns) = &platform.scrape_namespace {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(namespace(ns)),
            ..NetworkPolicyPeer::default()
        });
    }
    NetworkPolicyIngressRule {
        ports: Some(vec![port(PORT, "TCP")]),
        from: Some(from),
    }
}

/// Where the API server's proxied connections come from ([`Platform::api_server_sources`]).
fn api_server(platform: &Platform) -> Vec<NetworkPolicyPeer> {
    platform
        .api_server_sources
        .iter()
        .map(|source| match source {
            ApiServerSource::Cidr(cidr) => NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.clone(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            },
            ApiServerSource::Pods {
                namespace: ns,
                labels,
            } => NetworkPolicyPeer {
                namespace_selector: Some(namespace(ns)),
                pod_selector: Some(select(labels.clone())),
                ..NetworkPolicyPeer::default()
            },
        })
        .collect()
}

/// The pods of model `model_name` that serve: the stable revision and a canary's
/// candidate.
fn model_pods(model_name: &str) -> NetworkPolicyPeer {
    let mut labels = selector_labels(model_name, super::model::identity::COMPONENT);
    labels.remove(LABEL_COMPONENT);
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_COMPONENT.to_string(),
                operator: "In".into(),
                values: Some(vec![
                    super::model::identity::COMPONENT.to_string(),
                    super::canary::COMPONENT.to_string(),
                ]),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// Every Sightline front door (upload pod) in the namespace.
fn front_doors() -> NetworkPolicyPeer {
    pods(BTreeMap::from([
        (LABEL_NAME.to_string(), NAME.to_string()),
        (
            LABEL_COMPONENT.to_string(),
            super::pipeline::identity::UPLOAD.to_string(),
        ),
    ]))
}

/// The shard pods of every RecognitionJob in the namespace whose results go to pipeline
/// `pipeline`'s store (they present one of its keys, like any client).
fn job_shards_for(pipeline: &str) -> NetworkPolicyPeer {
    pods(BTreeMap::from([
        (LABEL_NAME.to_string(), NAME.to_string()),
        (LABEL_COMPONENT.to_string(), JOB_COMPONENT.to_string()),
        (LABEL_RESULTS_FOR.to_string(), pipeline.to_string()),
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
    let store_pods = selector_labels(&instance, super::pipeline::identity::STORE);
    let upload_pods = selector_labels(&instance, super::pipeline::identity::UPLOAD);
    let upload_pods_of_this = upload_pods.clone();

    let mut upload_egress = vec![
        dns(),
        NetworkPolicyEgressRule {
            ports: Some(vec![port(PORT, "TCP")]),
            to: Some(vec![model_pods(model_name), pods(store_pods.clone())]),
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
            super::pipeline::identity::CONFIG,
            all_pods,
            vec![],
            vec![],
        ),
        policy(
            p,
            format!("{instance}-upload"),
            super::pipeline::identity::UPLOAD,
            upload_pods,
            vec![serve()],
            upload_egress,
        ),
        // The store answers only its pipeline's front door, the shards of the
        // RecognitionJobs that write to it (and the scraper).
        policy(
            p,
            format!("{instance}-store"),
            super::pipeline::identity::STORE,
            store_pods,
            vec![serve_only(
                vec![pods(upload_pods_of_this), job_shards_for(&instance)],
                platform,
            )],
            store_egress,
        ),
    ]
}

/// The model's pods: port 8080 only from the namespace's front doors (the upload pods of
/// the pipelines, which check keys), the metrics scraper and the API server's proxy;
/// egress to DNS and to HTTPS/S3 for the fetch init containers and the evaluation set.
/// A canary's candidate gets the same policy, relabelled.
pub fn model_policy(model: &ImageModel, platform: &Platform) -> NetworkPolicy {
    let mut from = vec![front_doors()];
    from.extend(api_server(platform));
    policy(
        model,
        super::model::identity::name(model),
        super::model::identity::COMPONENT,
        selector_labels(&model.name_any(), super::model::identity::COMPONENT),
        vec![serve_only(from, platform)],
        vec![
            dns(),
            NetworkPolicyEgressRule {
                ports: Some(vec![port(443, "TCP"), port(80, "TCP"), port(9000, "TCP")]),
                to: None,
            },
        ],
    )
}
