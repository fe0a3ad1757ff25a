//! Hardened pods: every pod the operator makes meets the Pod Security "restricted" profile
//! (non-root, read-only root filesystem, no privilege escalation, all capabilities dropped,
//! seccomp `RuntimeDefault`) and is probed on `/readyz` and `/healthz`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, PodAffinity, PodAffinityTerm,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{PodOverrides, SecretKeyRef};

/// The port every role listens on.
pub const PORT: i32 = 8080;
pub const PORT_NAME: &str = "http";
/// The unprivileged user of the images (distroless `nonroot`).
pub const USER: i64 = 65532;

/// What the operator's flags say about the cluster it builds for: images, where the
/// metrics scraper runs, and how pods may be secured there.
#[derive(Debug, Clone, PartialEq)]
pub struct Platform {
    /// The `sightline-server` image (all roles, and the model fetch init container).
    pub server: String,
    /// The GPU server image (ONNX Runtime with the CUDA execution provider), for models
    /// that run on a GPU.
    pub gpu_server: String,
    pub pull_policy: Option<String>,
    /// The namespace of the Prometheus that scrapes the pods (admitted to port 8080 by the
    /// NetworkPolicies); `None` admits no scraper.
    pub scrape_namespace: Option<String>,
    /// Labels on every ServiceMonitor, so the cluster's Prometheus selects it
    /// (kube-prometheus-stack selects `release: <its release name>`).
    pub monitor_labels: BTreeMap<String, String>,
    /// Pods run as user and group 65532. Off for platforms that assign the user
    /// themselves (OpenShift's restricted-v2 refuses a fixed `runAsUser`).
    pub fixed_user: bool,
    /// Where the API server's `pods/proxy` connections to the pods come from (the
    /// operator reads `/readyz`, the evaluation and `/metrics` that way): admitted to
    /// port 8080 of the model pods by their NetworkPolicy (docs/install.md says how to
    /// find them on kind, kubeadm, EKS, GKE and AKS).
    pub api_server_sources: Vec<ApiServerSource>,
}

/// One place the API server's proxied connections come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiServerSource {
    /// An address range (`ipBlock`): the control-plane nodes, or the subnets a managed
    /// control plane reaches the nodes from.
    Cidr(String),
    /// Pods (`namespaceSelector` + `podSelector`): the Konnectivity agents through which
    /// some managed control planes reach the pods.
    Pods {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
}

impl std::str::FromStr for ApiServerSource {
    type Err = String;

    /// `10.0.0.0/16` (IPv4 or IPv6 CIDR) or `namespace/key=value[,key=value…]`.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some((namespace, selector)) = text.split_once('/')
            && selector.contains('=')
        {
            let mut labels = BTreeMap::new();
            for pair in selector.split(['+', ';']) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair:?} in {text:?} is not key=value"))?;
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            if namespace.trim().is_empty() {
                return Err(format!("{text:?} names no namespace"));
            }
            return Ok(ApiServerSource::Pods {
                namespace: namespace.trim().to_string(),
                labels,
            });
        }
        let (address, bits) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is neither a CIDR nor namespace/key=value"))?;
        let address: std::net::IpAddr = address
            .parse()
            .map_err(|e| format!("{text:?}: not an IP address ({e})"))?;
        let most = if address.is_ipv4() { 32 } else { 128 };
        match bits.parse::<u8>() {
            Ok(n) if n <= most => Ok(ApiServerSource::Cidr(text.to_string())),
            _ => Err(format!("{text:?}: the prefix length must be 0 to {most}")),
        }
    }
}

pub const DEFAULT_SERVER_IMAGE: &str = "ghcr.io/sightline/sightline-server:0.1.0";
pub const DEFAULT_GPU_SERVER_IMAGE: &str = "ghcr.io/sightline/sightline-server-gpu:0.1.0";

impl Default for Platform {
    fn default() -> Self {
        Platform {
            server: DEFAULT_SERVER_IMAGE.into(),
            gpu_server: DEFAULT_GPU_SERVER_IMAGE.into(),
            pull_policy: None,
            scrape_namespace: Some("monitoring".into()),
            monitor_labels: BTreeMap::from([(
                "release".to_string(),
                "kube-prometheus-stack".to_string(),
            )]),
            fixed_user: true,
            api_server_sources: Vec::new(),
        }
    }
}

/// The restricted container context; the user and group are fixed unless the platform
/// assigns them.
pub fn container_security(platform: &Platform) -> SecurityContext {
    let user = platform.fixed_user.then_some(USER);
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: user,
        run_as_group: user,
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

pub fn pod_security(platform: &Platform) -> PodSecurityContext {
    let user = platform.fixed_user.then_some(USER);
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: user,
        run_as_group: user,
        fs_group: user,
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

/// Seconds between two startup probes.
pub const PROBE_PERIOD: i32 = 5;
/// Failures the startup probe of a role other than recognize allows (5 minutes).
pub const ROLE_STARTUP_FAILURES: i32 = 60;
/// What a progress deadline allows before a container starts: scheduling, including a
/// node that a cluster autoscaler adds (typically 2–5 minutes, longer for GPU nodes),
/// and the image pull.
pub const SCHEDULE_AND_PULL_SECONDS: i32 = 600;
/// `progressDeadlineSeconds` of the upload and store Deployments: scheduling and pull,
/// then the startup probe.
pub const ROLE_PROGRESS_DEADLINE: i32 =
    SCHEDULE_AND_PULL_SECONDS + ROLE_STARTUP_FAILURES * PROBE_PERIOD;

/// A startup probe on `/readyz` every [`PROBE_PERIOD`] s, allowing `failures` periods to
/// become ready.
pub fn readiness_startup_probe(failures: i32) -> Probe {
    http_probe("/readyz", PROBE_PERIOD, failures)
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

/// The environment variable `name` read from a Secret's key, which must exist (the pod
/// waits in `CreateContainerConfigError` until it does): how a secret value reaches a
/// process without appearing in its arguments.
pub fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A `sightline-server` container running `args`, hardened and probed.
pub fn server_container(
    platform: &Platform,
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
        image: Some(platform.server.clone()),
        image_pull_policy: platform.pull_policy.clone(),
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
        startup_probe: Some(readiness_startup_probe(ROLE_STARTUP_FAILURES)),
        security_context: Some(container_security(platform)),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// A pod template around `containers`, with the hardened pod context and a `/tmp`.
pub fn pod_template(
    platform: &Platform,
    labels: BTreeMap<String, String>,
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    mut volumes: Vec<Volume>,
) -> PodTemplateSpec {
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Gi".into())),
            medium: None,
        }),
        ..Volume::default()
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            security_context: Some(pod_security(platform)),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers,
            volumes: Some(volumes),
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
    }
}

/// Merges the user's `podOverrides` over `template`. The selector labels stay the
/// operator's; without a topology spread of the user's, replicas spread across nodes
/// (best effort: `ScheduleAnyway`).
pub fn with_overrides(
    template: &mut PodTemplateSpec,
    overrides: Option<&PodOverrides>,
    selector: &BTreeMap<String, String>,
) {
    let o = overrides.cloned().unwrap_or_default();
    if let Some(meta) = template.metadata.as_mut() {
        if !o.labels.is_empty() {
            let labels = meta.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &o.labels {
                if !selector.contains_key(k) {
                    labels.insert(k.clone(), v.clone());
                }
            }
        }
        if !o.annotations.is_empty() {
            let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
            annotations.extend(o.annotations.clone());
        }
    }
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    if !o.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(
            o.image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect(),
        );
    }
    pod.service_account_name = o.service_account_name.clone();
    pod.priority_class_name = o.priority_class_name.clone();
    pod.runtime_class_name = o.runtime_class_name.clone();
    let spread = o.topology_spread_constraints.clone().unwrap_or_else(|| {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            }),
            ..TopologySpreadConstraint::default()
        }]
    });
    pod.topology_spread_constraints = (!spread.is_empty()).then_some(spread);
}

/// Required affinity to the node of the component's own pods: a surge pod lands where the
/// ReadWriteOnce volume is attached. With no such pod (the first one, or after its node
/// was drained) the scheduler lets a pod that matches its own affinity term go anywhere
/// (kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node, "Inter-pod affinity
/// and anti-affinity").
pub fn beside_own_pods(selector: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..LabelSelector::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAffinity::default()
        }),
        ..Affinity::default()
    }
}
