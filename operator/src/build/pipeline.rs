//! Children of a `RecognitionPipeline`: the upload and store Deployments and Services,
//! their volumes, the ConfigMap that wires them to each other and to the model, the route
//! (Gateway API `HTTPRoute`, or an `Ingress`) and the NetworkPolicies.

use std::collections::BTreeMap;

use gateway_api::apis::standard::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesFilters, HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewrite,
    HttpRouteRulesFiltersUrlRewritePath, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType, HttpRouteSpec,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    SecretEnvSource, SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::inputs::with_inputs;
pub use super::inputs::{inputs_digest, rolling_secrets, secret_names};
use super::meta::{object_meta, selector_labels};
use super::pod::beside_own_pods;
use super::pod::{PORT, PORT_NAME, Platform, default_resources, pod_template, server_container};
use crate::crd::{DatabaseKind, RecognitionPipeline};

pub const UPLOAD: &str = "upload";
pub const STORE: &str = "store";
pub const ROUTE: &str = "route";
pub const CONFIG: &str = "config";
const DATA_DIR: &str = "/data";
const KEYS_DIR: &str = "/etc/sightline/keys";
const TRAFFIC_DIR: &str = "/etc/sightline/traffic";

pub fn upload_name(p: &RecognitionPipeline) -> String {
    format!("{}-upload", p.name_any())
}

pub fn store_name(p: &RecognitionPipeline) -> String {
    format!("{}-store", p.name_any())
}

pub fn config_name(p: &RecognitionPipeline) -> String {
    format!("{}-config", p.name_any())
}

pub fn images_claim(p: &RecognitionPipeline) -> String {
    format!("{}-images", p.name_any())
}

pub fn results_claim(p: &RecognitionPipeline) -> String {
    format!("{}-results", p.name_any())
}

fn namespace(p: &RecognitionPipeline) -> String {
    p.namespace().unwrap_or_else(|| "default".into())
}

/// In-cluster URL of a service of this pipeline.
fn service_url(p: &RecognitionPipeline, name: &str) -> String {
    format!("http://{name}.{}.svc:{PORT}", namespace(p))
}

/// Where users reach the pipeline: the first hostname through the route, else the upload
/// Service inside the cluster.
pub fn public_url(p: &RecognitionPipeline) -> String {
    let g = &p.spec.gateway;
    let prefix = g.path_prefix.clone().unwrap_or_else(|| "/".into());
    let prefix = prefix.trim_end_matches('/');
    match g.hostnames.first() {
        Some(host) if !g.parent_refs.is_empty() || g.ingress.is_some() => {
            let scheme = if g.ingress.as_ref().is_some_and(|i| i.tls_secret.is_some()) {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}{prefix}")
        }
        _ => service_url(p, &upload_name(p)),
    }
}

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
            format!("{TRAFFIC_DIR}/{}", super::canary::TRAFFIC_FILE),
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

fn config_env(p: &RecognitionPipeline) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_name(p),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

fn claim(
    p: &RecognitionPipeline,
    name: String,
    volume: Option<&crate::crd::Volume>,
    default_size: &str,
) -> PersistentVolumeClaim {
    let component = if name.ends_with("-images") {
        UPLOAD
    } else {
        STORE
    };
    let mut metadata = object_meta(p, &name, component);
    if p.spec.storage.retain_on_delete {
        // No owner reference, so garbage collection never takes the user's data; the
        // annotation says whose it is, so a pipeline of the same name uses it again.
        metadata.owner_references = None;
        metadata.annotations = Some(BTreeMap::from([(
            OWNER_ANNOTATION.to_string(),
            owner_key(p),
        )]));
    }
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: volume.and_then(|v| v.storage_class_name.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(
                        volume
                            .and_then(|v| v.size.clone())
                            .unwrap_or_else(|| default_size.into()),
                    ),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// On an object that outlives its owner (a retained claim): `Kind/name` of the owner.
pub const OWNER_ANNOTATION: &str = "sightline.io/owner";

/// The [`OWNER_ANNOTATION`] value for `p`.
pub fn owner_key(p: &RecognitionPipeline) -> String {
    format!("RecognitionPipeline/{}", p.name_any())
}

/// The names of the claims that outlive `p` when it is deleted.
pub fn retained_claims(p: &RecognitionPipeline) -> Vec<String> {
    if !p.spec.storage.retain_on_delete {
        return Vec::new();
    }
    claims(p)
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

/// The PVCs: images (unless S3) and the SQLite database (unless PostgreSQL/MySQL).
pub fn claims(p: &RecognitionPipeline) -> Vec<PersistentVolumeClaim> {
    let mut out = Vec::new();
    if p.spec.upload.s3.is_none() {
        out.push(claim(
            p,
            images_claim(p),
            p.spec.upload.volume.as_ref(),
            "10Gi",
        ));
    }
    if p.spec.storage.database == DatabaseKind::Sqlite {
        out.push(claim(
            p,
            results_claim(p),
            p.spec.storage.volume.as_ref(),
            "1Gi",
        ));
    }
    out
}

fn data_volume(name: &str, claim: Option<String>) -> (Volume, VolumeMount) {
    let volume = match claim {
        Some(claim_name) => Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        None => Volume {
            name: name.into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
    };
    (
        volume,
        VolumeMount {
            name: name.into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        },
    )
}

fn deployment(
    p: &RecognitionPipeline,
    name: String,
    component: &str,
    replicas: i32,
    mut template: k8s_openapi::api::core::v1::PodTemplateSpec,
    single_writer: bool,
) -> Deployment {
    super::pod::with_overrides(
        &mut template,
        p.spec.pod_overrides.as_ref(),
        &selector_labels(&p.name_any(), component),
    );
    let selector = selector_labels(&p.name_any(), component);
    if single_writer && let Some(pod) = template.spec.as_mut() {
        pod.affinity = Some(beside_own_pods(&selector));
    }
    Deployment {
        metadata: object_meta(p, &name, component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            // Surge, never go below the wanted count: a config change or a new image is
            // not an outage, even with one replica. A ReadWriteOnce volume is attached to
            // one node but mounted by every pod on it, so the surge pod is placed beside
            // the serving one ([`beside_own_pods`]) and both share it while they overlap
            // (SQLite in WAL mode with a busy timeout takes two processes on one node).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            progress_deadline_seconds: Some(super::pod::ROLE_PROGRESS_DEADLINE),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The upload Deployment.
pub fn upload_deployment(
    p: &RecognitionPipeline,
    model: &crate::crd::ImageModel,
    platform: &Platform,
) -> Deployment {
    let spec = &p.spec.upload;
    let local = spec.s3.is_none();
    let (volume, mount) = data_volume("data", local.then(|| images_claim(p)));
    let mut volumes = vec![volume];
    let mut mounts = vec![mount];
    let mut env_from = config_env(p);
    if let Some(s3) = &spec.s3 {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s3.credentials_secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        });
    }
    let mut args = vec![
        "upload".to_string(),
        "--listen".into(),
        format!("0.0.0.0:{PORT}"),
    ];
    add_keys(p, &mut args, &mut volumes, &mut mounts);
    // The model's traffic split (a canary's weights and mirroring), re-read by the front
    // door when it changes; optional, so a model without one is all stable.
    volumes.push(Volume {
        name: "traffic".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: super::canary::traffic_name(model),
            optional: Some(true),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: "traffic".into(),
        mount_path: TRAFFIC_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let container = server_container(
        platform,
        "server",
        args,
        spec.resources
            .clone()
            .unwrap_or_else(|| default_resources("100m", "128Mi")),
        Some(env_from),
        mounts,
    );
    let template = pod_template(
        platform,
        selector_labels(&p.name_any(), UPLOAD),
        vec![],
        vec![container],
        volumes,
    );
    deployment(
        p,
        upload_name(p),
        UPLOAD,
        spec.replicas.unwrap_or(1),
        template,
        local,
    )
}

/// The API keys: the Secret mounted as a whole volume (never `subPath`, which the kubelet
/// does not update) and named by `--api-keys-file`, so a rotation reaches the running
/// server (the kubelet refreshes the file within its sync period, and the server re-reads
/// it) and restarts nothing; the Secret is not in the inputs digest ([`rolling_secrets`]).
fn add_keys(
    p: &RecognitionPipeline,
    args: &mut Vec<String>,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    if let Some(keys) = &p.spec.gateway.api_keys_secret {
        args.extend([
            "--api-keys-file".to_string(),
            format!("{KEYS_DIR}/{}", keys.key),
        ]);
        volumes.push(Volume {
            name: "api-keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(keys.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "api-keys".into(),
            mount_path: KEYS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
}

/// The store Deployment.
pub fn store_deployment(p: &RecognitionPipeline, platform: &Platform) -> Deployment {
    let spec = &p.spec.storage;
    let sqlite = spec.database == DatabaseKind::Sqlite;
    let (volume, mount) = data_volume("data", sqlite.then(|| results_claim(p)));
    let mut volumes = vec![volume];
    let mut mounts = vec![mount];
    let mut args = vec![
        "store".to_string(),
        "--listen".into(),
        format!("0.0.0.0:{PORT}"),
    ];
    add_keys(p, &mut args, &mut volumes, &mut mounts);
    let mut container = server_container(
        platform,
        "server",
        args,
        spec.resources
            .clone()
            .unwrap_or_else(|| default_resources("100m", "128Mi")),
        Some(config_env(p)),
        mounts,
    );
    if let Some(url) = &spec.url_secret {
        container.env = Some(vec![EnvVar {
            name: "SIGHTLINE_DATABASE_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: url.name.clone(),
                    key: url.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]);
    }
    let template = pod_template(
        platform,
        selector_labels(&p.name_any(), STORE),
        vec![],
        vec![container],
        volumes,
    );
    deployment(
        p,
        store_name(p),
        STORE,
        spec.replicas.unwrap_or(1),
        template,
        sqlite,
    )
}

fn service(p: &RecognitionPipeline, name: String, component: &str) -> Service {
    Service {
        metadata: object_meta(p, &name, component),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&p.name_any(), component)),
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

pub fn upload_service(p: &RecognitionPipeline) -> Service {
    service(p, upload_name(p), UPLOAD)
}

pub fn store_service(p: &RecognitionPipeline) -> Service {
    service(p, store_name(p), STORE)
}

/// The pipeline's path prefix without its trailing slash (`""` for the root).
pub fn prefix(p: &RecognitionPipeline) -> String {
    let prefix = p.spec.gateway.path_prefix.clone().unwrap_or_default();
    prefix.trim_end_matches('/').to_string()
}

/// The Gateway API route, when the spec names parent Gateways: one rule sending every path
/// under the prefix to the upload Service — the pipeline's front door, which checks keys
/// and limits and calls recognize and store inside the cluster — with the prefix replaced
/// by `/`, so the server sees the paths it declares.
pub fn http_route(p: &RecognitionPipeline) -> Option<HttpRoute> {
    let g = &p.spec.gateway;
    if g.parent_refs.is_empty() {
        return None;
    }
    let prefix = prefix(p);
    let rewrite = (!prefix.is_empty()).then(|| HttpRouteRulesFilters {
        r#type: HttpRouteRulesFiltersType::UrlRewrite,
        url_rewrite: Some(HttpRouteRulesFiltersUrlRewrite {
            hostname: None,
            path: Some(HttpRouteRulesFiltersUrlRewritePath {
                r#type: HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch,
                replace_prefix_match: Some("/".into()),
                replace_full_path: None,
            }),
        }),
        cors: None,
        extension_ref: None,
        request_header_modifier: None,
        request_mirror: None,
        request_redirect: None,
        response_header_modifier: None,
    });
    let rule = HttpRouteRules {
        matches: Some(vec![HttpRouteRulesMatches {
            path: Some(HttpRouteRulesMatchesPath {
                r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                value: Some(if prefix.is_empty() {
                    "/".into()
                } else {
                    prefix
                }),
            }),
            ..HttpRouteRulesMatches::default()
        }]),
        filters: rewrite.map(|f| vec![f]),
        backend_refs: Some(vec![HttpRouteRulesBackendRefs {
            name: upload_name(p),
            port: Some(PORT),
            ..HttpRouteRulesBackendRefs::default()
        }]),
        ..HttpRouteRules::default()
    };
    let mut route = HttpRoute::new(
        &p.name_any(),
        HttpRouteSpec {
            parent_refs: Some(
                g.parent_refs
                    .iter()
                    .map(|r| HttpRouteParentRefs {
                        name: r.name.clone(),
                        namespace: r.namespace.clone(),
                        section_name: r.section_name.clone(),
                        ..HttpRouteParentRefs::default()
                    })
                    .collect(),
            ),
            hostnames: (!g.hostnames.is_empty()).then(|| g.hostnames.clone()),
            rules: Some(vec![rule]),
        },
    );
    route.metadata = object_meta(p, &p.name_any(), ROUTE);
    Some(route)
}

/// The Ingress, when the spec asks for one instead of an HTTPRoute: every path to the
/// upload Service (the front door). An Ingress has no portable path rewrite, so
/// validation refuses a `pathPrefix` other than `/` with one.
pub fn ingress(p: &RecognitionPipeline) -> Option<Ingress> {
    let g = &p.spec.gateway;
    let spec = g.ingress.as_ref()?;
    let paths = vec![HTTPIngressPath {
        path: Some("/".into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: upload_name(p),
                port: Some(ServiceBackendPort {
                    number: Some(PORT),
                    name: None,
                }),
            }),
            resource: None,
        },
    }];
    let hosts: Vec<Option<String>> = if g.hostnames.is_empty() {
        vec![None]
    } else {
        g.hostnames.iter().cloned().map(Some).collect()
    };
    Some(Ingress {
        metadata: object_meta(p, &p.name_any(), ROUTE),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(
                hosts
                    .into_iter()
                    .map(|host| IngressRule {
                        host,
                        http: Some(HTTPIngressRuleValue {
                            paths: paths.clone(),
                        }),
                    })
                    .collect(),
            ),
            tls: spec.tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(g.hostnames.clone()),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

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
    let config = config_map(p, &super::model::endpoint(model));
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
