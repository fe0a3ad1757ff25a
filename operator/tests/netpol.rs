//! The NetworkPolicies admit exactly what must pass: a connectivity matrix over the
//! objects `render` builds for two pipelines sharing a model in mid-canary, computed by an
//! explicit NetworkPolicy evaluator (support/netpol.rs, which follows the Kubernetes
//! docs), compared with the flows Sightline needs — every one allowed, every other one
//! denied.

mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use sightline_operator::build::pod::{ApiServerSource, Platform};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use sightline_operator::render::{self, Inputs};
use support::netpol::{Endpoint, Labels, Port, matrix, tcp};
use support::{sample_job, sample_model, sample_pipeline};

const NS: &str = "sightline-demo";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The model in mid-canary (as `kubectl get -o yaml` shows it) and two pipelines using it.
fn inputs() -> Inputs {
    let mut model: ImageModel = sample_model();
    model.spec.rollout = serde_json::from_value(json!({"strategy": "Canary", "mirrorPercent": 10}))
        .expect("rollout");
    model.status = serde_json::from_value(json!({"rollout": {"phase": "Progressing",
        "revision": "3f9a1c77e2b0", "step": 0, "candidateWeight": 10, "mirrorPercent": 10}}))
    .expect("status");
    let photos = sample_pipeline();
    let mut other: RecognitionPipeline = sample_pipeline();
    other.metadata.name = Some("other".into());
    // Two RecognitionJobs: one writes into `photos`'s store, one only to its claim.
    let mut into_photos = sample_job();
    into_photos.metadata.name = Some("into-photos".into());
    into_photos.spec.output.pipeline =
        Some(serde_json::from_value(json!({"name": "photos"})).expect("pipeline"));
    Inputs {
        models: vec![model],
        pipelines: vec![photos, other],
        jobs: vec![into_photos, sample_job()],
    }
}

/// The cluster as the operator is told about it: Prometheus in `monitoring`, the API
/// server on the control-plane nodes (172.18.0.0/24) and, for managed control planes,
/// Konnectivity agents in kube-system.
fn platform() -> Platform {
    Platform {
        api_server_sources: vec![
            ApiServerSource::Cidr("172.18.0.0/24".into()),
            "kube-system/k8s-app=konnectivity-agent"
                .parse()
                .expect("source"),
        ],
        ..Platform::default()
    }
}

/// A pod of each rendered Deployment, with its template's labels and ports.
fn pods_of(objects: &[Value]) -> Vec<Endpoint> {
    pods_of_kind(objects, "Deployment")
}

/// A pod of each rendered object of `kind` (Deployment, Job).
fn pods_of_kind(objects: &[Value], kind: &str) -> Vec<Endpoint> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|d| {
            let template = &d["spec"]["template"];
            let labels: Labels =
                serde_json::from_value(template["metadata"]["labels"].clone()).expect("labels");
            let ports = template["spec"]["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .map(|p| Port {
                    name: p["name"].as_str().map(String::from),
                    number: p["containerPort"].as_i64().expect("port") as i32,
                    protocol: if p["protocol"] == "UDP" { "UDP" } else { "TCP" },
                })
                .collect();
            Endpoint::pod(
                d["metadata"]["name"].as_str().expect("name"),
                NS,
                labels,
                ports,
            )
        })
        .collect()
}

#[test]
fn the_policies_admit_exactly_the_flows_a_canary_needs() {
    let objects = render::children(&inputs(), &platform()).expect("render");
    let policies: Vec<NetworkPolicy> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .map(|o| serde_json::from_value(o.clone()).expect("policy"))
        .collect();
    let ours = pods_of(&objects);
    let names: Vec<String> = ours.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        [
            "efficientnet-lite0-recognize",
            "efficientnet-lite0-recognize-canary",
            "photos-store",
            "photos-upload",
            "other-store",
            "other-upload",
        ],
        "the stable and candidate revisions and both pipelines run"
    );
    let dns = vec![
        Port {
            name: None,
            number: 53,
            protocol: "UDP",
        },
        tcp(53),
    ];
    let mut endpoints = ours.clone();
    // The RecognitionJobs' shards: no policy of ours selects them (their egress is the
    // cluster's default); only what they may reach of ours is checked.
    let shards = pods_of_kind(&objects, "Job");
    assert_eq!(
        shards.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["into-photos", "archive-2024"]
    );
    endpoints.extend(shards);
    endpoints.extend([
        Endpoint::pod(
            "gateway",
            "gateway-system",
            labels(&[("app", "gateway")]),
            vec![tcp(8080)],
        ),
        Endpoint::pod(
            "prometheus",
            "monitoring",
            labels(&[("app.kubernetes.io/name", "prometheus")]),
            vec![tcp(9090)],
        ),
        Endpoint::pod(
            "konnectivity",
            "kube-system",
            labels(&[("k8s-app", "konnectivity-agent")]),
            vec![tcp(8132)],
        ),
        Endpoint::pod(
            "kube-dns",
            "kube-system",
            labels(&[("k8s-app", "kube-dns")]),
            dns,
        ),
        Endpoint::pod(
            "intruder",
            "other",
            labels(&[("app", "intruder")]),
            vec![tcp(8080)],
        ),
        // Same namespace, not Sightline's.
        Endpoint::pod(
            "neighbour",
            NS,
            labels(&[("app", "neighbour")]),
            vec![tcp(8080)],
        ),
        Endpoint::address("apiserver", "172.18.0.2", vec![tcp(443)]),
        Endpoint::address("elsewhere", "10.99.0.5", vec![tcp(443)]),
        Endpoint::address("internet", "203.0.113.10", vec![tcp(443), tcp(5432)]),
    ]);
    let our_names: Vec<&str> = names.iter().map(String::as_str).collect();
    let open = matrix(&policies, &endpoints, &our_names);

    let (stable, candidate) = (
        "efficientnet-lite0-recognize",
        "efficientnet-lite0-recognize-canary",
    );
    let mut needed = BTreeSet::new();
    let mut allow = |from: &str, to: &str, port: &str| {
        needed.insert(format!("{from} -> {to}:{port}"));
    };
    // The front doors are public (the gateway's data plane, wherever it runs, and
    // anything else: they check the keys themselves).
    for door in ["photos-upload", "other-upload"] {
        for from in [
            "gateway",
            "prometheus",
            "konnectivity",
            "kube-dns",
            "intruder",
            "neighbour",
            "apiserver",
            "elsewhere",
            "internet",
            "into-photos",
            "archive-2024",
        ] {
            allow(from, door, "8080/TCP");
        }
    }
    // Both revisions of the model: every front door of the namespace (split and mirror
    // reach the candidate), the scraper, and the API server's proxy (the operator reads
    // /readyz, the evaluation and a canary's /metrics through it).
    for revision in [stable, candidate] {
        for from in [
            "photos-upload",
            "other-upload",
            "prometheus",
            "apiserver",
            "konnectivity",
        ] {
            allow(from, revision, "8080/TCP");
        }
        // The fetch init container and the evaluation set: HTTPS anywhere.
        for to in ["apiserver", "elsewhere", "internet"] {
            allow(revision, to, "443/TCP");
        }
    }
    // Each store: its own pipeline's front door and the scraper; PostgreSQL anywhere.
    for (store, door) in [
        ("photos-store", "photos-upload"),
        ("other-store", "other-upload"),
    ] {
        allow(door, store, "8080/TCP");
        allow("prometheus", store, "8080/TCP");
        allow(store, "internet", "5432/TCP");
    }
    // A RecognitionJob that writes into a pipeline reaches that pipeline's store, and
    // no other (the job writing only to its claim reaches none).
    allow("into-photos", "photos-store", "8080/TCP");
    // Everyone of ours resolves names.
    for name in &names {
        allow(name, "kube-dns", "53/UDP");
        allow(name, "kube-dns", "53/TCP");
    }

    let missing: Vec<&String> = needed.difference(&open).collect();
    let extra: Vec<&String> = open.difference(&needed).collect();
    assert!(
        missing.is_empty(),
        "needed flows the policies deny: {missing:#?}"
    );
    assert!(
        extra.is_empty(),
        "flows the policies allow that nothing needs: {extra:#?}"
    );
}

#[test]
fn without_api_server_sources_the_proxy_is_refused() {
    // The default: nothing is admitted for the API server, and the operator says so
    // where it reads the pods (ModelValidated's message, docs/install.md).
    let objects = render::children(&inputs(), &Platform::default()).expect("render");
    let policies: Vec<NetworkPolicy> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .map(|o| serde_json::from_value(o.clone()).expect("policy"))
        .collect();
    let model = pods_of(&objects)
        .into_iter()
        .find(|e| e.name == "efficientnet-lite0-recognize")
        .expect("model pod");
    let apiserver = Endpoint::address("apiserver", "172.18.0.2", vec![]);
    assert!(!support::netpol::allowed(
        &policies,
        &apiserver,
        &model,
        &tcp(8080)
    ));
}

#[test]
fn api_server_sources_are_cidrs_or_konnectivity_pods() {
    assert_eq!(
        "10.0.0.0/16".parse::<ApiServerSource>(),
        Ok(ApiServerSource::Cidr("10.0.0.0/16".into()))
    );
    assert!("fd00::/8".parse::<ApiServerSource>().is_ok());
    assert_eq!(
        "kube-system/app=konnectivity-agent".parse::<ApiServerSource>(),
        Ok(ApiServerSource::Pods {
            namespace: "kube-system".into(),
            labels: labels(&[("app", "konnectivity-agent")]),
        })
    );
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "example.com/16",
        "/a=b",
        "kube-system",
    ] {
        assert!(bad.parse::<ApiServerSource>().is_err(), "{bad}");
    }
}

#[test]
fn the_evaluator_follows_the_documented_examples() {
    // kubernetes.io/docs/concepts/services-networking/network-policies, "Behavior of to
    // and from selectors": one peer with both selectors is an AND, two peers an OR.
    let policy = |from: Value| -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "db"},
            "spec": {"podSelector": {"matchLabels": {"role": "db"}},
                "ingress": [{"from": from}]}}))
        .expect("policy")
    };
    let db = Endpoint::pod("db", "db", labels(&[("role", "db")]), vec![tcp(5432)]);
    let client_in_prod = Endpoint::pod("a", "prod", labels(&[("role", "client")]), vec![]);
    let other_in_prod = Endpoint::pod("b", "prod", labels(&[("role", "x")]), vec![]);
    let prod = json!({"matchLabels": {"kubernetes.io/metadata.name": "prod"}});
    let client = json!({"matchLabels": {"role": "client"}});
    let and = [policy(
        json!([{"namespaceSelector": prod, "podSelector": client}]),
    )];
    let or = [policy(
        json!([{"namespaceSelector": prod}, {"podSelector": client}]),
    )];
    let allowed = support::netpol::allowed;
    assert!(allowed(&and, &client_in_prod, &db, &tcp(5432)));
    assert!(!allowed(&and, &other_in_prod, &db, &tcp(5432)));
    assert!(allowed(&or, &other_in_prod, &db, &tcp(5432)));
    // A pod no policy selects is not isolated; a policy with no ingress rules isolates.
    let deny: [NetworkPolicy; 1] = [serde_json::from_value(json!({"metadata":
        {"name": "deny", "namespace": "db"}, "spec": {"podSelector": {}}}))
    .expect("deny")];
    assert!(allowed(&[], &other_in_prod, &db, &tcp(5432)));
    assert!(!allowed(&deny, &client_in_prod, &db, &tcp(5432)));
    // policyTypes left out: Egress only when there are egress rules.
    assert!(allowed(&deny, &db, &client_in_prod, &tcp(80)));
}
