//! How the reconcilers read a pod's own HTTP API (`/readyz`, `/metrics`, the start-up
//! evaluation): one small trait, so that the same controller code reads pods through the
//! API server's `pods/proxy` in a cluster ([`ApiServerProxy`]) and real processes on
//! loopback in the end-to-end canary test.

use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use kube::Client;

use crate::build::pod::PORT;

/// How long one pod may take to answer through the proxy.
const POD_ANSWER: Duration = Duration::from_secs(5);

/// What a read asks beyond `GET {path}`.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Presented as `X-API-Key`: the API server's proxy passes it on to the pod (it takes
    /// `Authorization` for itself), and a Sightline server accepts either.
    pub key: Option<&'a str>,
    /// The most bytes of the answer read: a longer answer is an error, never cut short.
    pub limit: usize,
}

/// `GET {path}` on a pod's server port: the HTTP status and body the pod (or whatever
/// stands between, such as the API server) answered; `Err` when no answer came at all.
pub trait PodHttp: Send + Sync {
    fn get<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(u16, String), String>>;

    /// `GET {path}` as `ask` says. This default presents no key (a reader that cannot is
    /// refused one, never silently reads without it) and checks the limit on what
    /// [`PodHttp::get`] answered.
    fn get_as<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        path: &'a str,
        ask: Ask<'a>,
    ) -> BoxFuture<'a, Result<(u16, String), String>> {
        Box::pin(async move {
            if ask.key.is_some() {
                return Err("this pod reader cannot present an API key".into());
            }
            let (code, body) = self.get(ns, pod, path).await?;
            within(body.into_bytes(), ask.limit, pod, path).map(|body| (code, body))
        })
    }
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
        Box::pin(pod_get(&self.0, ns, pod, path))
    }

    fn get_as<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        path: &'a str,
        ask: Ask<'a>,
    ) -> BoxFuture<'a, Result<(u16, String), String>> {
        Box::pin(async move {
            let (code, body) = exchange(&self.0, ns, pod, path, ask.key, ask.limit).await?;
            Ok((code, String::from_utf8_lossy(&body).into_owned()))
        })
    }
}

/// An answer of at most `limit` bytes, as text.
fn within(body: Vec<u8>, limit: usize, pod: &str, path: &str) -> Result<String, String> {
    if body.len() > limit {
        return Err(format!(
            "pod {pod} answered {path} with more than {limit} bytes"
        ));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `GET {path}` on `pod`'s server port through `pods/proxy`: the HTTP status and body the
/// pod (or the API server, when it cannot reach the pod) answered; `Err` when no answer
/// came back at all.
pub async fn pod_get(
    client: &Client,
    ns: &str,
    pod: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let (code, body) = exchange(client, ns, pod, path, None, usize::MAX).await?;
    // A readiness or evaluation answer is small; never hold more than 64 KiB of it.
    let body = &body[..body.len().min(64 * 1024)];
    Ok((code, String::from_utf8_lossy(body).into_owned()))
}

/// `GET {path}` on `pod`'s server port through `pods/proxy`, presenting `key` as
/// `X-API-Key`: the status and the whole body, read no further than `limit` bytes; `Err`
/// when no answer came back in time or it is longer.
async fn exchange(
    client: &Client,
    ns: &str,
    pod: &str,
    path: &str,
    key: Option<&str>,
    limit: usize,
) -> Result<(u16, Vec<u8>), String> {
    let uri = format!("/api/v1/namespaces/{ns}/pods/{pod}:{PORT}/proxy{path}");
    let mut request = http::Request::get(&uri);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let request = request
        .body(kube::client::Body::empty())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let response = client.send(request).await.map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("pod {pod} answered {path} with more than {limit} bytes")
                } else {
                    e.to_string()
                }
            })?
            .to_bytes();
        Ok((code, body.to_vec()))
    };
    match tokio::time::timeout(POD_ANSWER, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "pod {pod} did not answer {path} within {POD_ANSWER:?}"
        )),
    }
}
