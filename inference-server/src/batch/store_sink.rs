//! `--store-url URL`: a batch run's results kept in a pipeline's results database too (the
//! store role), named by the run's `--job`, so that they appear in `/api/v1/results?job=…`;
//! and an image the store already has a result for, for this model digest and this
//! preprocessing, is not recognized again (a record without a preprocessing digest, from
//! an older release, is not taken for this run's: its image is recognized again).
//!
//! Asks `GET /api/v1/images/{sha256}/results?provenance=server&model=…`; saves through
//! `POST /internal/v1/results` (the route the pipeline saves its own results through:
//! provenance `server`, idempotent per image, model and digest). With `--store-api-key`
//! both carry `X-API-Key`. Each call is tried three times (a second apart) before the run
//! stops.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sightline_api::Prediction;
use sightline_batch::journal::Line;
use sightline_batch::run::Sink;

/// Attempts per call.
const TRIES: u32 = 3;

/// The store role at `base`.
pub struct StoreSink {
    base: String,
    job: String,
    model: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl StoreSink {
    pub fn new(
        base: &str,
        job: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Result<StoreSink, reqwest::Error> {
        Ok(StoreSink {
            base: base.trim_end_matches('/').to_string(),
            job: job.to_string(),
            model: model.to_string(),
            // As a Secret's value usually arrives (a file's content): ends in a newline.
            api_key: api_key
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    fn with_key(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    /// Sends the request `make` builds, up to [`TRIES`] times while the failure may pass
    /// (no answer, 429, 5xx); the answer's status and JSON body.
    async fn call(
        &self,
        what: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Value), String> {
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match self.with_key(make()).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if status == 429 || status >= 500 {
                        last = format!("{what}: {status} {body}");
                        continue;
                    }
                    return Ok((status, body));
                }
                Err(e) => last = format!("{what}: {e}"),
            }
        }
        Err(last)
    }
}

impl Sink for StoreSink {
    fn known<'a>(
        &'a self,
        sha256: &'a str,
        line: &'a Line,
    ) -> BoxFuture<'a, Result<Option<Vec<Prediction>>, String>> {
        Box::pin(async move {
            let url = format!("{}/api/v1/images/{sha256}/results", self.base);
            let what = format!("GET {url}");
            let (status, body) = self
                .call(&what, || {
                    self.http.get(&url).query(&[
                        ("provenance", "server"),
                        ("model", self.model.as_str()),
                        ("limit", "50"),
                    ])
                })
                .await?;
            if status != 200 {
                return Err(format!("{what}: {status} {body}"));
            }
            let stored = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["model"]["sha256"] == line.model_sha256.as_str()
                        && r["model"]["preprocess_sha256"] == line.preprocess_sha256.as_str()
                })
                .map(|r| serde_json::from_value(r["predictions"].clone()))
                .transpose()
                .map_err(|e| format!("{what}: a result without predictions: {e}"))?;
            Ok(stored)
        })
    }

    fn save<'a>(&'a self, image_url: String, line: &'a Line) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let url = format!("{}/internal/v1/results", self.base);
            let what = format!("POST {url}");
            let body = json!({
                "image_id": line.sha256,
                "image_url": image_url,
                "model": {
                    "name": line.model,
                    "sha256": line.model_sha256,
                    "preprocess_sha256": line.preprocess_sha256,
                },
                "predictions": line.predictions,
                "job": self.job,
            });
            let (status, answer) = self
                .call(&what, || self.http.post(&url).json(&body))
                .await?;
            match status {
                200 | 201 => Ok(()),
                _ => Err(format!("{what}: {status} {answer}")),
            }
        })
    }
}
