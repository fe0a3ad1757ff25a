//! Where a pipeline keeps its data: the PersistentVolumeClaims it creates (and the ones it
//! retains), and the data volume a role mounts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::identity::{
    DATA_DIR, OWNER_ANNOTATION, STORE, UPLOAD, images_claim, owner_key, results_claim,
};
use crate::build::meta::object_meta;
use crate::crd::{DatabaseKind, RecognitionPipeline};

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

pub(super) fn data_volume(name: &str, claim: Option<String>) -> (Volume, VolumeMount) {
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
