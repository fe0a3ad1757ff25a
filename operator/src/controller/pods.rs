//! How the reconcilers read a pod's own HTTP API (`/readyz`, `/metrics`, the start-up
//! evaluation): one small trait, so that the same controller code reads pods through the
//! API server's `pods/proxy` in a cluster ([`ApiServerProxy`]) and real processes on
//! loopback in the end-to-end canary test.

use futures::future::BoxFuture;
use kube::Client;

/// `GET {path}` on a pod's server port: the HTTP status and body the pod (or whatever
/// stands between, such as the API server) answered; `Err` when no answer came at all.
pub trait PodHttp: Send + Sync {
    fn get<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(u16, String), String>>;
}

/// Through the API server's `pods/proxy` subresource (what the operator's RBAC allows).
pub struct ApiServerProxy(pub Client);

impl PodHttp for ApiServerProxy {
    fn get<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(u16, String), String>> {
        Box::pin(super::observe::pod_get(&self.0, ns, pod, path))
    }
}
