//! The records: what is saved, what is stored, how a listing is asked for and answered.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sightline_api::Prediction;

/// Who produced a result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    /// Submitted by a caller (`POST /api/v1/results`, the seed's save): anyone's word.
    #[default]
    Client,
    /// Produced by this system's recognition (the one-call pipeline).
    Server,
}

impl Provenance {
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Client => "client",
            Provenance::Server => "server",
        }
    }
}

/// The model a result came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    #[serde(default)]
    pub sha256: String,
    /// SHA-256 of the preprocessing settings the answer was made with
    /// (`sightline_model::model_config::Preprocess::digest`); empty when unknown (a
    /// caller's record, or one stored before the digest was kept).
    #[serde(default)]
    pub preprocess_sha256: String,
}

/// A result to save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewResult {
    /// The image's content id (its SHA-256) when it came through the upload service.
    #[serde(default)]
    pub image_id: Option<String>,
    pub image_url: String,
    pub model: ModelRef,
    pub predictions: Vec<Prediction>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// The RecognitionJob (or `sightline-server batch --job`) that produced it; only the
    /// server's own results carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Never read from a request body: what a route of the store role is for says it
    /// (a caller's save is `client`; the pipeline's save, `server`).
    #[serde(skip)]
    pub provenance: Provenance,
}

impl NewResult {
    /// The idempotency key: one record per (image, model name, model digest) for a
    /// client's results (as before provenance existed); a server's adds its provenance, its
    /// number of predictions and its preprocessing digest, so the two never meet, each
    /// `top_k` has its record, and an answer made with other preprocessing is never
    /// returned for this one's. (A server record without the digest, from a recognize
    /// service of an older release, keeps the key it had.)
    pub fn idempotency_key(&self) -> String {
        let image = self.image_id.as_deref().unwrap_or(&self.image_url);
        let mut hasher = Sha256::new();
        for part in [image, &self.model.name, &self.model.sha256] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        if self.provenance == Provenance::Server {
            hasher.update(b"server\0");
            hasher.update((self.predictions.len() as u64).to_le_bytes());
            if !self.model.preprocess_sha256.is_empty() {
                hasher.update(b"preprocess\0");
                hasher.update(self.model.preprocess_sha256.as_bytes());
            }
        }
        hex::encode(hasher.finalize())
    }
}

/// A stored result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub id: String,
    pub image_id: Option<String>,
    pub image_url: String,
    pub model: ModelRef,
    pub top_label: Option<String>,
    pub predictions: Vec<Prediction>,
    pub latency_ms: Option<f64>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_at_ms: i64,
    /// Who produced it (records of an older server may omit it: `client`).
    #[serde(default)]
    pub provenance: Provenance,
    /// The batch job that produced it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Filters and paging for a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub limit: i64,
    /// Records strictly older than this id (the `next_cursor` of the previous page).
    pub cursor: Option<String>,
    pub label: Option<String>,
    pub model: Option<String>,
    pub image_id: Option<String>,
    /// Only records of this provenance.
    pub provenance: Option<Provenance>,
    /// Only records of this batch job.
    pub job: Option<String>,
    /// Inclusive lower bound on creation time, milliseconds since the epoch.
    pub since_ms: Option<i64>,
    /// Exclusive upper bound on creation time, milliseconds since the epoch.
    pub until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<ResultRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
