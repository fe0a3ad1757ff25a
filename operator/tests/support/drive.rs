//! Running the real reconcilers on what the in-memory API holds now.

use std::sync::Arc;

use kube::Api;
use kube::api::PostParams;
use sightline_operator::controller::{Context, model, pipeline, recognition_job};
use sightline_operator::crd::{ImageModel, RecognitionJob, RecognitionPipeline};

use super::sim::{Deadline, Pods, roll};
use super::{Cluster, NS};

/// One reconcile of ImageModel `name` as it is stored now; the error in words.
pub async fn reconcile_model(
    cluster: &Cluster,
    ctx: &Arc<Context>,
    name: &str,
) -> Result<(), String> {
    let m = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .get(name)
        .await
        .expect("model");
    model::reconcile(Arc::new(m), ctx.clone())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The sample pipeline (API keys on, its Secrets created first) reconciled once, and its
/// front door (`photos-upload`) serving.
pub async fn sample_pipeline_serving(cluster: &Cluster, ctx: &Arc<Context>) {
    super::sample_secrets(cluster).await;
    let p = Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &super::sample_pipeline())
        .await
        .expect("pipeline");
    pipeline::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pipeline");
    roll(cluster, "photos-upload", Pods::Serving, Deadline::Within).await;
}

/// One reconcile of RecognitionJob `name` as it is stored now; the error in words.
pub async fn reconcile_job(
    cluster: &Cluster,
    ctx: &Arc<Context>,
    name: &str,
) -> Result<(), String> {
    let j = Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .get(name)
        .await
        .expect("recognition job");
    recognition_job::reconcile(Arc::new(j), ctx.clone())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
