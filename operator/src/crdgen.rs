//! `sightline-operator crd`: the CustomResourceDefinitions as YAML (checked in under
//! `crds/`; a test fails when they are stale).

use kube::CustomResourceExt;

use crate::crd::{ImageModel, RecognitionJob, RecognitionPipeline};

/// `(file name, YAML)` for each CRD.
pub fn crds() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    Ok(vec![
        (
            "imagemodels.sightline.io.yaml",
            serde_yaml::to_string(&ImageModel::crd())?,
        ),
        (
            "recognitionpipelines.sightline.io.yaml",
            serde_yaml::to_string(&RecognitionPipeline::crd())?,
        ),
        (
            "recognitionjobs.sightline.io.yaml",
            serde_yaml::to_string(&RecognitionJob::crd())?,
        ),
    ])
}

/// All CRDs as one multi-document stream.
pub fn all_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crds()?
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect())
}
