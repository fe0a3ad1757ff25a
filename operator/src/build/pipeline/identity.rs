//! What a pipeline's children are called and where they are reached or mounted: the
//! component names, the child and claim names, the in-cluster and public URLs, the owner
//! annotation. The leaf the other builders (network, monitoring) name a pipeline through.

use kube::ResourceExt;

use crate::build::pod::PORT;
use crate::crd::RecognitionPipeline;

pub const UPLOAD: &str = "upload";
pub const STORE: &str = "store";
pub const ROUTE: &str = "route";
pub const CONFIG: &str = "config";
pub(super) const DATA_DIR: &str = "/data";
pub(super) const KEYS_DIR: &str = "/etc/sightline/keys";
pub(super) const TRAFFIC_DIR: &str = "/etc/sightline/traffic";

pub fn upload_name(p: &RecognitionPipeline) -> String {
    format!("{}-upload", p.name_any())
}

pub fn store_name(p: &RecognitionPipeline) -> String {
    store_service(&p.name_any())
}

/// The store Service of the pipeline named `pipeline`.
fn store_service(pipeline: &str) -> String {
    format!("{pipeline}-store")
}

/// The in-cluster URL of the store of pipeline `pipeline` in namespace `ns`: what a
/// RecognitionJob's shards write to (the pipeline's own pods read it from the ConfigMap).
pub fn store_url(pipeline: &str, ns: &str) -> String {
    format!("http://{}.{ns}.svc:{PORT}", store_service(pipeline))
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

pub(super) fn namespace(p: &RecognitionPipeline) -> String {
    p.namespace().unwrap_or_else(|| "default".into())
}

/// In-cluster URL of a service of this pipeline.
pub(super) fn service_url(p: &RecognitionPipeline, name: &str) -> String {
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

/// On an object that outlives its owner (a retained claim): `Kind/name` of the owner.
pub const OWNER_ANNOTATION: &str = "sightline.io/owner";

/// The [`OWNER_ANNOTATION`] value for `p`.
pub fn owner_key(p: &RecognitionPipeline) -> String {
    format!("RecognitionPipeline/{}", p.name_any())
}
