//! `sightline-operator render`: custom resources in (YAML), every child object out, with no
//! cluster — for review and GitOps diffing. The same builders the controller applies.

use serde_json::Value;

use crate::build::canary::TrafficFor;
use crate::build::pod::Platform;
use crate::build::{canary, model, pipeline};
use crate::crd::{ImageModel, RecognitionJob, RecognitionPipeline};
use crate::validate;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index} is not valid YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index} ({kind}) is not a valid {kind}: {source}")]
    Invalid {
        index: usize,
        kind: String,
        source: serde_json::Error,
    },
    #[error(
        "document {index} has kind {kind:?}; expected ImageModel, RecognitionPipeline or RecognitionJob"
    )]
    UnknownKind { index: usize, kind: String },
    #[error("{pipeline:?} refers to ImageModel {model:?}, which is not among the inputs")]
    ModelNotFound { pipeline: String, model: String },
    #[error("{name}: {source}")]
    InvalidSpec {
        name: String,
        source: crate::validate::Invalid,
    },
    #[error("cannot serialise {0}")]
    Serialize(String),
}

/// The custom resources found in a YAML stream.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub models: Vec<ImageModel>,
    pub pipelines: Vec<RecognitionPipeline>,
    pub jobs: Vec<RecognitionJob>,
}

/// Parses every document of `text` (empty documents are skipped).
pub fn parse(text: &str) -> Result<Inputs, RenderError> {
    let mut inputs = Inputs::default();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|source| RenderError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let invalid = |source| RenderError::Invalid {
            index,
            kind: kind.clone(),
            source,
        };
        match kind.as_str() {
            "ImageModel" => inputs
                .models
                .push(serde_json::from_value(value).map_err(invalid)?),
            "RecognitionPipeline" => inputs
                .pipelines
                .push(serde_json::from_value(value).map_err(invalid)?),
            "RecognitionJob" => inputs
                .jobs
                .push(serde_json::from_value(value).map_err(invalid)?),
            // Other objects in the same stream (a kustomization's Namespace, Secrets) are
            // not the operator's to render.
            _ if !kind.is_empty()
                && !value["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("sightline.io/") => {}
            _ => return Err(RenderError::UnknownKind { index, kind }),
        }
    }
    Ok(inputs)
}

fn to_value<T: serde::Serialize>(object: &T) -> Result<Value, RenderError> {
    serde_json::to_value(object).map_err(|e| RenderError::Serialize(e.to_string()))
}

fn same_namespace(a: &Option<String>, b: &Option<String>) -> bool {
    a.as_deref().unwrap_or("default") == b.as_deref().unwrap_or("default")
}

/// Every child object of the inputs, as JSON values (in apply order).
pub fn children(inputs: &Inputs, platform: &Platform) -> Result<Vec<Value>, RenderError> {
    let mut out = Vec::new();
    for m in &inputs.models {
        validate::model(m).map_err(|source| RenderError::InvalidSpec {
            name: kube::ResourceExt::name_any(m),
            source,
        })?;
        let inputs = model::ModelInputs {
            digest: String::new(),
            device: model::resolve_device(m, None),
        };
        let c = model::children(m, platform, &inputs);
        out.push(to_value(&c.service)?);
        out.push(to_value(&c.deployment)?);
        if let Some(hpa) = &c.hpa {
            out.push(to_value(hpa)?);
        }
        if let Some(pdb) = &c.pdb {
            out.push(to_value(pdb)?);
        }
        out.push(to_value(&c.network_policy)?);
        out.push(to_value(&c.monitor)?);
        // A model given in mid-canary (its `status.rollout`, as `kubectl get -o yaml`
        // shows it) renders the candidate's objects and the traffic split too.
        let rollout = m
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .filter(|r| matches!(r.phase.as_str(), "Progressing" | "Paused" | "Promoting"));
        let canary = m
            .spec
            .rollout
            .as_ref()
            .is_some_and(|r| r.strategy == crate::crd::Strategy::Canary);
        let traffic = match rollout.filter(|_| canary) {
            Some(r) => {
                let replicas = c
                    .deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1);
                out.push(to_value(&canary::deployment(&c.deployment, m, replicas))?);
                out.push(to_value(&canary::service(&c.service, m))?);
                out.push(to_value(&canary::network_policy(&c.network_policy, m))?);
                canary::Traffic::split(m, &r.revision, r.candidate_weight, r.mirror_percent)
            }
            None => canary::Traffic::stable_only(m),
        };
        out.push(to_value(&canary::traffic_config(m, &traffic))?);
    }
    for p in &inputs.pipelines {
        let name = kube::ResourceExt::name_any(p);
        validate::pipeline(p).map_err(|source| RenderError::InvalidSpec {
            name: name.clone(),
            source,
        })?;
        let m =
            model_of(inputs, &p.spec.model_ref.name, &p.metadata.namespace).ok_or_else(|| {
                RenderError::ModelNotFound {
                    pipeline: name.clone(),
                    model: p.spec.model_ref.name.clone(),
                }
            })?;
        let c = pipeline::children(p, m, platform, "");
        out.push(to_value(&c.config_map)?);
        for claim in &c.claims {
            out.push(to_value(claim)?);
        }
        out.push(to_value(&c.store_service)?);
        out.push(to_value(&c.store_deployment)?);
        out.push(to_value(&c.upload_service)?);
        out.push(to_value(&c.upload_deployment)?);
        if let Some(route) = &c.http_route {
            out.push(to_value(route)?);
        }
        if let Some(ingress) = &c.ingress {
            out.push(to_value(ingress)?);
        }
        for policy in &c.network_policies {
            out.push(to_value(policy)?);
        }
        out.push(to_value(&c.monitor)?);
    }
    for j in &inputs.jobs {
        let name = kube::ResourceExt::name_any(j);
        crate::build::recognition_job::validate(j).map_err(|source| RenderError::InvalidSpec {
            name: name.clone(),
            source,
        })?;
        let m =
            model_of(inputs, &j.spec.model_ref.name, &j.metadata.namespace).ok_or_else(|| {
                RenderError::ModelNotFound {
                    pipeline: name.clone(),
                    model: j.spec.model_ref.name.clone(),
                }
            })?;
        out.push(to_value(&crate::build::recognition_job::job(
            j, m, platform,
        ))?);
    }
    Ok(out)
}

/// The ImageModel `name` of `namespace` among the inputs.
fn model_of<'a>(
    inputs: &'a Inputs,
    name: &str,
    namespace: &Option<String>,
) -> Option<&'a ImageModel> {
    inputs.models.iter().find(|m| {
        kube::ResourceExt::name_any(*m) == name && same_namespace(&m.metadata.namespace, namespace)
    })
}

/// The children as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(object).map_err(|e| RenderError::Serialize(e.to_string()))?,
        );
    }
    Ok(out)
}
