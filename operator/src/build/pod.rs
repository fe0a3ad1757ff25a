//! Hardened pods: every pod the operator makes meets the Pod Security "restricted" profile
//! (non-root, read-only root filesystem, no privilege escalation, all capabilities dropped,
//! seccomp `RuntimeDefault`) and is probed on `/readyz` and `/healthz`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The port every role listens on.
pub const PORT: i32 = 8080;
pub const PORT_NAME: &str = "http";
/// The unprivileged user of the images (distroless `nonroot`).
pub const USER: i64 = 65532;

/// Container images and pull policy, from the operator's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// The `sightline-server` image (all roles, and the model fetch init container).
    pub server: String,
    pub pull_policy: Option<String>,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            server: "ghcr.io/sightline/sightline-server:0.1.0".into(),
            pull_policy: None,
        }
    }
}

pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(USER),
        run_as_group: Some(USER),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(USER),
        run_as_group: Some(USER),
        fs_group: Some(USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// A startup probe on `/readyz` every 5 s, allowing `failures` × 5 s to become ready.
pub fn readiness_startup_probe(failures: i32) -> Probe {
    http_probe("/readyz", 5, failures)
}

/// Default requests when the spec gives none: enough to schedule, no limits imposed.
pub fn default_resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// A `sightline-server` container running `args`, hardened and probed.
pub fn server_container(
    images: &Images,
    name: &str,
    args: Vec<String>,
    resources: ResourceRequirements,
    env_from: Option<Vec<EnvFromSource>>,
    mut mounts: Vec<VolumeMount>,
) -> Container {
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    });
    Container {
        name: name.into(),
        image: Some(images.server.clone()),
        image_pull_policy: images.pull_policy.clone(),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env_from,
        resources: Some(resources),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        // Liveness waits until the server is ready (the database answers, the model is
        // loaded); a role that is never ready within the window is restarted.
        startup_probe: Some(readiness_startup_probe(60)),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// A pod template around `containers`, with the hardened pod context and a `/tmp`.
pub fn pod_template(
    labels: BTreeMap<String, String>,
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    mut volumes: Vec<Volume>,
) -> PodTemplateSpec {
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            security_context: Some(pod_security()),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers,
            volumes: Some(volumes),
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
    }
}
