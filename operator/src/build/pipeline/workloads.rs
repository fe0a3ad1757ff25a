//! The upload and store roles: their Deployments (config, data, API keys, the model's
//! traffic file) and Services.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EnvFromSource, SecretEnvSource, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::config::config_env;
use super::identity::{
    KEYS_DIR, STORE, TRAFFIC_DIR, UPLOAD, images_claim, results_claim, store_name, upload_name,
};
use super::storage::data_volume;
use crate::build::meta::{object_meta, selector_labels};
use crate::build::pod::{
    PORT, PORT_NAME, Platform, beside_own_pods, default_resources, pod_template, secret_env,
    server_container,
};
use crate::crd::{DatabaseKind, RecognitionPipeline};

fn deployment(
    p: &RecognitionPipeline,
    name: String,
    component: &str,
    replicas: i32,
    mut template: k8s_openapi::api::core::v1::PodTemplateSpec,
    single_writer: bool,
) -> Deployment {
    crate::build::pod::with_overrides(
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
            progress_deadline_seconds: Some(crate::build::pod::ROLE_PROGRESS_DEADLINE),
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
            name: crate::build::canary::traffic_name(model),
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
        container.env = Some(vec![secret_env("SIGHTLINE_DATABASE_URL", url)]);
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
