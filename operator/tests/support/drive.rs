//! Running the real reconcilers on what the in-memory API holds now.

use std::sync::Arc;

use kube::Api;
use sightline_operator::controller::{Context, model, recognition_job};
use sightline_operator::crd::{ImageModel, RecognitionJob};

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
