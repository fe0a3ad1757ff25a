//! Where `pods/proxy` would lead in a cluster: each pod's own process, over plain HTTP on
//! loopback, for tests that run the operator's reconcilers against real processes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sightline_operator::build::pod::Platform;
use sightline_operator::controller::Context;
use sightline_operator::controller::pods::PodHttp;
use sightline_operator::metrics::Metrics;
use sightline_operator::status::SystemClock;

/// The operator's context on `client` (the in-memory API of operator/tests/support), with
/// every API group installed, reading pods' HTTP through `pods`.
pub fn context(client: kube::Client, pods: Arc<LoopbackPods>) -> Arc<Context> {
    let apis = sightline_operator::controller::ClusterApis {
        gateway_api: true,
        service_monitors: true,
    };
    Arc::new(
        Context::new(
            client,
            Platform::default(),
            apis,
            Arc::new(Metrics::new()),
            Arc::new(SystemClock),
            Some("e2e".into()),
        )
        .with_pods(pods),
    )
}

pub struct LoopbackPods {
    pub client: reqwest::Client,
    /// Pod name → the process's base URL.
    pub pods: Mutex<BTreeMap<String, String>>,
}

impl LoopbackPods {
    pub fn new(client: reqwest::Client) -> LoopbackPods {
        LoopbackPods {
            client,
            pods: Mutex::default(),
        }
    }
}

impl PodHttp for LoopbackPods {
    fn get<'a>(
        &'a self,
        _ns: &'a str,
        pod: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(u16, String), String>> {
        let base = self.pods.lock().expect("pods").get(pod).cloned();
        Box::pin(async move {
            let base = base.ok_or_else(|| format!("pod {pod} runs no process here"))?;
            let answer = self
                .client
                .get(format!("{base}{path}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let code = answer.status().as_u16();
            let body = answer.text().await.map_err(|e| e.to_string())?;
            Ok((code, body))
        })
    }
}
