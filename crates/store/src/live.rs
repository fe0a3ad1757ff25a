//! The live quality counted from users' feedback ([`crate::feedback`]): the database counts
//! the (top-1, true label) pairs with a `GROUP BY`, per model and model digest, over the
//! current answers given since a time about the model's own (`server`) results; the figures
//! are `sightline-quality`'s, the very formulas the offline evaluation uses.
//!
//! [`ResultStore::quality`] answers `GET /api/v1/quality` (one model); [`ResultStore::quality_of_all`]
//! reads every model at once for the store role's Prometheus gauges.

use std::collections::BTreeMap;

use sightline_quality::{Pair, Quality};
use sqlx::Row;

use super::{ResultStore, StoreError, TABLE};
use crate::feedback::{DigestQuality, FEEDBACK, query_error};
use crate::text_column;

/// The live figures of one model digest, with the model's name.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelQuality {
    pub model: String,
    pub model_sha256: String,
    pub quality: Quality,
}

impl ResultStore {
    /// The live figures of `model` per model digest (only `digest` when given), over the
    /// current answers given since `since_ms` about the model's own (`server`) results.
    pub async fn quality(
        &self,
        model: &str,
        digest: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<DigestQuality>, StoreError> {
        let counted = self
            .timed("quality", self.count_pairs(Some(model), digest, since_ms))
            .await?;
        Ok(counted
            .into_iter()
            .map(|((_, model_sha256), pairs)| DigestQuality {
                model_sha256,
                quality: Quality::from_pairs(pairs),
            })
            .collect())
    }

    /// The live figures of every model digest with answers since `since_ms`, by model name
    /// then digest (the store role's gauges: one query per refresh, whatever the models).
    pub async fn quality_of_all(&self, since_ms: i64) -> Result<Vec<ModelQuality>, StoreError> {
        let counted = self
            .timed("quality_all", self.count_pairs(None, None, since_ms))
            .await?;
        Ok(counted
            .into_iter()
            .map(|((model, model_sha256), pairs)| ModelQuality {
                model,
                model_sha256,
                quality: Quality::from_pairs(pairs),
            })
            .collect())
    }

    /// The (top-1, true label) pairs counted by the database, per (model, digest).
    async fn count_pairs(
        &self,
        model: Option<&str>,
        digest: Option<&str>,
        since_ms: i64,
    ) -> Result<BTreeMap<(String, String), Vec<Pair>>, StoreError> {
        let d = self.dialect;
        let mut sql = format!(
            "SELECT f.model AS model, f.model_sha256 AS digest, r.top_label AS predicted, \
             f.true_label AS truth, COUNT(*) AS n \
             FROM {FEEDBACK} f JOIN {TABLE} r ON r.id = f.result_id \
             WHERE f.created_ms >= {} \
             AND r.provenance = 'server' AND r.top_label IS NOT NULL",
            d.ph(1)
        );
        let mut binds = 1;
        if model.is_some() {
            binds += 1;
            sql.push_str(&format!(" AND f.model = {}", d.ph(binds)));
        }
        if digest.is_some() {
            binds += 1;
            sql.push_str(&format!(" AND f.model_sha256 = {}", d.ph(binds)));
        }
        sql.push_str(" GROUP BY f.model, f.model_sha256, r.top_label, f.true_label");
        let mut query = sqlx::query(&sql).bind(since_ms);
        for text in [model, digest].into_iter().flatten() {
            query = query.bind(text.to_string());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("quality"))?;
        let mut counted: BTreeMap<(String, String), Vec<Pair>> = BTreeMap::new();
        for row in &rows {
            let count: i64 = row.try_get("n").map_err(query_error("decode row"))?;
            counted
                .entry((
                    text_column(row, "model", "quality")?,
                    text_column(row, "digest", "quality")?,
                ))
                .or_default()
                .push(Pair {
                    predicted: text_column(row, "predicted", "quality")?,
                    truth: text_column(row, "truth", "quality")?,
                    count: u64::try_from(count).unwrap_or(0),
                });
        }
        Ok(counted)
    }
}
