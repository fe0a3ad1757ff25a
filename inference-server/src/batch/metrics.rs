//! `--metrics-listen ADDR`: a batch run's progress for Prometheus (and the operator, which
//! reads a running shard's `/metrics`): `sightline_batch_images_total{job, outcome}`
//! (`recognized`, `skipped`, `failed`) and `sightline_batch_shard_images{job}`, beside the
//! `process_*` families.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    job: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

/// The batch families of one run.
#[derive(Clone)]
pub struct BatchMetrics {
    job: String,
    registry: Arc<Registry>,
    images: Family<OutcomeLabels, Counter>,
    shard_images: Family<JobLabels, Gauge>,
}

impl BatchMetrics {
    pub fn new(job: &str) -> BatchMetrics {
        let mut root = Registry::default();
        sightline_telemetry::exposition::register_process_metrics(&mut root);
        let registry = root.sub_registry_with_prefix("sightline");
        let images = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "batch_images",
            "Images of this batch shard by outcome: recognized now, skipped (already in the \
             output when the run started), failed (recorded as errors)",
            images.clone(),
        );
        let shard_images = Family::<JobLabels, Gauge>::default();
        registry.register(
            "batch_shard_images",
            "Images in this batch shard",
            shard_images.clone(),
        );
        let metrics = BatchMetrics {
            job: job.to_string(),
            registry: Arc::new(root),
            images,
            shard_images,
        };
        for outcome in ["recognized", "skipped", "failed"] {
            metrics.add(outcome, 0);
        }
        metrics
    }

    pub fn shard_images(&self, n: u64) {
        let labels = JobLabels {
            job: self.job.clone(),
        };
        self.shard_images
            .get_or_create(&labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn add(&self, outcome: &str, n: u64) {
        let labels = OutcomeLabels {
            job: self.job.clone(),
            outcome: outcome.to_string(),
        };
        self.images.get_or_create(&labels).inc_by(n);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `GET /metrics` on `addr` until the process ends.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} for metrics: {e}"),
            )
        })?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the batch metrics listener stopped");
            }
        });
        Ok(())
    }
}

async fn metrics(State(metrics): State<BatchMetrics>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = crate::exposition::negotiate(accept, metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body)
}
