//! How the model and labels files reach a recognize pod: fetched by init containers (with
//! the source's credentials), mounted read-only from a PVC, or from a model image.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, ImageVolumeSource,
    PersistentVolumeClaimVolumeSource, SecretEnvSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::build::pod::{Platform, container_security, default_resources};
use crate::crd::{FileSource, ImageModel};

/// Attempts each fetch init container makes, and the seconds one attempt may take: ten
/// minutes for the model (gigabytes at tens of MB/s), one for the labels file.
pub const FETCH_ATTEMPTS: u32 = 2;
pub const MODEL_ATTEMPT_SECONDS: u32 = 600;
pub const LABELS_ATTEMPT_SECONDS: u32 = 60;

pub(super) const MODEL_DIR: &str = "/models";

/// Where a source file ends up in the pod, and how it gets there.
pub(super) enum Placement {
    /// Fetched by an init container into the `models` emptyDir.
    Fetched { path: String },
    /// Read from a PVC mounted read-only.
    Mounted { claim: String, path: String },
    /// Read from a model image mounted as an image volume at [`IMAGE_DIR`].
    Image { reference: String, path: String },
}

/// Where a model image (`oci://`) is mounted.
pub(super) const IMAGE_DIR: &str = "/model-image";

pub(super) fn placement(source: &FileSource, fetched_name: &str) -> Placement {
    if let Some(reference) = source.uri.strip_prefix("oci://") {
        // The image's files (docs/install.md): /model.onnx, /model.labels.txt.
        let file = if fetched_name.starts_with("labels") {
            "model.labels.txt"
        } else {
            "model.onnx"
        };
        return Placement::Image {
            reference: reference.to_string(),
            path: format!("{IMAGE_DIR}/{file}"),
        };
    }
    match source
        .uri
        .strip_prefix("pvc://")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((claim, path)) => Placement::Mounted {
            claim: claim.to_string(),
            path: format!("/sources/{claim}/{path}"),
        },
        None => Placement::Fetched {
            path: format!("{MODEL_DIR}/{fetched_name}"),
        },
    }
}

pub(super) fn fetch_container(
    platform: &Platform,
    name: &str,
    source: &FileSource,
    out: &str,
    credentials: Option<&str>,
) -> Container {
    let mut args = vec![
        "fetch".to_string(),
        "--uri".into(),
        source.uri.clone(),
        "--out".into(),
        out.to_string(),
    ];
    if let Some(sha) = &source.sha256 {
        args.extend(["--sha256".to_string(), sha.clone()]);
    }
    // Bounded, so the Deployment's progress deadline covers it ([`PROGRESS_DEADLINE`]).
    args.extend([
        "--attempts".to_string(),
        FETCH_ATTEMPTS.to_string(),
        "--timeout-secs".into(),
        if name == "fetch-labels" {
            LABELS_ATTEMPT_SECONDS
        } else {
            MODEL_ATTEMPT_SECONDS
        }
        .to_string(),
    ]);
    Container {
        name: name.into(),
        image: Some(platform.server.clone()),
        image_pull_policy: platform.pull_policy.clone(),
        args: Some(args),
        env_from: credentials.map(credentials_env),
        resources: Some(default_resources("50m", "64Mi")),
        security_context: Some(container_security(platform)),
        // Its error (wrong digest, 404, …) becomes the termination message, which the
        // operator copies into the ModelFetched condition.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "models".into(),
            mount_path: MODEL_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

pub fn credentials_env(secret: &str) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret.into(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

/// How a pod gets a model's file and labels: the paths the server reads them at, and the
/// init containers, volumes and mounts that put them there. The recognize Deployment and
/// a RecognitionJob's shards get them the same way.
pub struct ModelFiles {
    /// Fetch init containers (for `https://` and `s3://` sources).
    pub init: Vec<Container>,
    pub model_path: String,
    pub labels_path: String,
    /// Claims mounted read-only at `/sources/<claim>` (more may be added before
    /// [`ModelFiles::volumes`]).
    pub claims: Vec<String>,
    /// A model image mounted as an image volume.
    image: Option<String>,
    /// Files fetched into the `models` emptyDir.
    fetched: bool,
}

/// Where `model`'s files come from, for its pods.
pub fn model_files(model: &ImageModel, platform: &Platform) -> ModelFiles {
    let source = &model.spec.source;
    let credentials = source.credentials_secret.as_deref();
    let mut files = ModelFiles {
        init: Vec::new(),
        model_path: String::new(),
        labels_path: String::new(),
        claims: Vec::new(),
        image: None,
        fetched: false,
    };
    for (file, name, init_name) in [
        (&source.model, "model.onnx", "fetch-model"),
        (&source.labels, "labels.txt", "fetch-labels"),
    ] {
        let path = match placement(file, name) {
            Placement::Fetched { path } => {
                files.fetched = true;
                files.init.push(fetch_container(
                    platform,
                    init_name,
                    file,
                    &path,
                    credentials,
                ));
                path
            }
            Placement::Mounted { claim, path } => {
                if !files.claims.contains(&claim) {
                    files.claims.push(claim);
                }
                path
            }
            Placement::Image { reference, path } => {
                files.image = Some(reference);
                path
            }
        };
        if init_name == "fetch-model" {
            files.model_path = path;
        } else {
            files.labels_path = path;
        }
    }
    files
}

impl ModelFiles {
    /// The volumes and the server container's mounts for these files.
    pub fn volumes(&self, model: &ImageModel) -> (Vec<Volume>, Vec<VolumeMount>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        let read_only = |name: &str, path: String| VolumeMount {
            name: name.into(),
            mount_path: path,
            read_only: Some(true),
            ..VolumeMount::default()
        };
        if let Some(reference) = &self.image {
            volumes.push(Volume {
                name: "model-image".into(),
                image: Some(ImageVolumeSource {
                    reference: Some(reference.clone()),
                    pull_policy: Some("IfNotPresent".into()),
                }),
                ..Volume::default()
            });
            mounts.push(read_only("model-image", IMAGE_DIR.into()));
        }
        if self.fetched {
            let room = model
                .spec
                .source
                .max_size
                .clone()
                .unwrap_or_else(|| "4Gi".into());
            volumes.push(Volume {
                name: "models".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(room)),
                    medium: None,
                }),
                ..Volume::default()
            });
            mounts.push(read_only("models", MODEL_DIR.into()));
        }
        for (i, claim) in self.claims.iter().enumerate() {
            let volume = format!("source-{i}");
            volumes.push(Volume {
                name: volume.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
            mounts.push(read_only(&volume, format!("/sources/{claim}")));
        }
        (volumes, mounts)
    }
}
