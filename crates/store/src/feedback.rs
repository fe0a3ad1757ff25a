//! Users' feedback on the pipeline's answers, and the live quality counted from it.
//!
//! `sightline_feedback` holds each caller's current answer about a result — the true label,
//! whether the model's top-1 was it, and the result's image (its SHA-256), model and model
//! digest, so quality can be counted per digest without reading the predictions. One row
//! per (result, caller) under its primary key: a later answer replaces the earlier one, in
//! one statement the database decides (`ON CONFLICT … DO UPDATE` / `ON DUPLICATE KEY
//! UPDATE`), and every answer is also appended to `sightline_feedback_history`, in the same
//! transaction, so nothing a caller said is lost. No foreign key to the results: the
//! result is checked when the answer arrives, and the tables stay portable. (Both tables
//! are the schema's versions 12 to 15, `schema.rs`.)
//!
//! Only what this system's model answered is scored: a result a client submitted
//! (`client` provenance) takes no feedback, and the quality query joins the results again
//! to count `server` ones only. A caller may say `correct` (the true label is the model's
//! top-1) or give the label; "wrong" without the label cannot be scored and is refused
//! ([`TrueAnswer::from_parts`]).
//!
//! The live quality counted from these answers is [`crate::live`]'s, and how long they are
//! kept [`crate::retention`]'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sightline_quality::Quality;
use sqlx::Row;

use super::{
    Dialect, ModelRef, Provenance, ResultRecord, ResultStore, StoreError, now_ms, rfc3339,
};
use crate::ids::new_id;
use crate::text_column;

/// The current answers, one per (result, caller).
pub const FEEDBACK: &str = "sightline_feedback";
/// Every answer ever given, appended.
pub const HISTORY: &str = "sightline_feedback_history";
/// Most answers of a result's history read at once (the newest).
pub const MAX_HISTORY: usize = 1000;
/// Longest true label or caller name, in bytes (the results' `top_label` column's size).
pub const MAX_TEXT_BYTES: usize = 255;

/// What a caller says about a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrueAnswer {
    /// The true label, and whether the caller also said the answer was right.
    Label {
        label: String,
        claimed: Option<bool>,
    },
    /// `{"correct": true}`: the true label is the model's top-1.
    Correct,
}

impl TrueAnswer {
    /// From a request's `label` and `correct`. A label must be [`check_text`]-clean;
    /// `correct: false` without a label says the answer was wrong but not what is right,
    /// which no figure can count (precision and recall need the true class): refused, as
    /// is saying nothing.
    pub fn from_parts(label: Option<String>, correct: Option<bool>) -> Result<TrueAnswer, String> {
        match (label, correct) {
            (Some(label), claimed) => {
                check_text("label", &label)?;
                Ok(TrueAnswer::Label { label, claimed })
            }
            (None, Some(true)) => Ok(TrueAnswer::Correct),
            (None, Some(false)) => Err(
                "'correct': false needs the true 'label' too: a wrong answer can only be \
                 scored against what the image really shows"
                    .into(),
            ),
            (None, None) => Err(
                "give the true 'label' (or {\"correct\": true} when the answer was right)".into(),
            ),
        }
    }
}

/// A label or caller name the store keeps: not blank, at most [`MAX_TEXT_BYTES`] bytes, no
/// control characters (NUL included, which PostgreSQL's text cannot hold).
pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("'{what}' must not be empty"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "'{what}' must be at most {MAX_TEXT_BYTES} bytes, got {}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("'{what}' must not contain control characters"));
    }
    Ok(())
}

/// Why feedback was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("no result with id {0:?}")]
    NoResult(String),
    #[error(
        "result {0} was submitted by a client, not answered by this system's model: only the \
         model's own answers (the pipeline's results) take feedback"
    )]
    NotOurs(String),
    #[error("result {0} holds no prediction to score")]
    NoPrediction(String),
    #[error(
        "the feedback says correct: {claimed}, but the label {label:?} is {actual} the \
         model's answer {predicted:?}"
    )]
    Contradicts {
        claimed: bool,
        label: String,
        predicted: String,
        actual: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One caller's current answer about one result, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub result_id: String,
    pub caller: String,
    /// The true label.
    pub label: String,
    /// Whether the model's top-1 was the true label.
    pub correct: bool,
    /// The model's top-1.
    pub predicted: String,
    /// The image's SHA-256.
    pub image_id: Option<String>,
    pub model: ModelRef,
    /// RFC 3339, UTC: when this answer was given.
    pub created_at: String,
    pub created_at_ms: i64,
    /// True when it replaced an earlier answer of the same caller (kept in the history).
    pub replaced: bool,
}

/// One answer of the history, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub caller: String,
    pub label: String,
    pub correct: bool,
    pub created_at_ms: i64,
}

/// The live figures of one model digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestQuality {
    pub model_sha256: String,
    #[serde(flatten)]
    pub quality: Quality,
}

pub(crate) fn query_error(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// A transaction that lost a race (deadlock, serialization, SQLite busy): run it again.
fn is_transient(e: &StoreError) -> bool {
    let StoreError::Query {
        source: sqlx::Error::Database(db),
        ..
    } = e
    else {
        return false;
    };
    matches!(
        db.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "517")
    )
}

impl ResultStore {
    /// Records `caller`'s `answer` about result `result_id` (replacing the caller's
    /// earlier answer, which stays in the history). Only the model's own (`server`)
    /// results take feedback.
    pub async fn record_feedback(
        &self,
        result_id: &str,
        caller: &str,
        answer: TrueAnswer,
    ) -> Result<Feedback, FeedbackError> {
        let result = self
            .get(result_id)
            .await?
            .ok_or_else(|| FeedbackError::NoResult(result_id.to_string()))?;
        if result.provenance != Provenance::Server {
            return Err(FeedbackError::NotOurs(result.id));
        }
        self.record_on(result, caller, answer).await
    }

    /// Records the true label a caller declared when saving its own result (the seed's
    /// save): kept like an answer (shown with the result's feedback, deleted by the
    /// retention), never counted in the live quality, which counts the model's own
    /// (`server`) results only — a client's prediction is no measurement of the model.
    pub async fn record_declared_label(
        &self,
        result: ResultRecord,
        caller: &str,
        label: String,
    ) -> Result<Feedback, FeedbackError> {
        let answer = TrueAnswer::Label {
            label,
            claimed: None,
        };
        self.record_on(result, caller, answer).await
    }

    async fn record_on(
        &self,
        result: ResultRecord,
        caller: &str,
        answer: TrueAnswer,
    ) -> Result<Feedback, FeedbackError> {
        let predicted = result
            .top_label
            .clone()
            .ok_or_else(|| FeedbackError::NoPrediction(result.id.clone()))?;
        let (label, claimed) = match answer {
            TrueAnswer::Correct => (predicted.clone(), None),
            TrueAnswer::Label { label, claimed } => (label, claimed),
        };
        let correct = label == predicted;
        if let Some(claimed) = claimed
            && claimed != correct
        {
            return Err(FeedbackError::Contradicts {
                claimed,
                label,
                predicted,
                actual: if correct { "" } else { "not" },
            });
        }
        let mut feedback = Feedback {
            result_id: result.id,
            caller: caller.to_string(),
            label,
            correct,
            predicted,
            image_id: result.image_id,
            model: result.model,
            created_at: String::new(),
            created_at_ms: now_ms(),
            replaced: false,
        };
        feedback.created_at = rfc3339(feedback.created_at_ms);
        feedback.replaced = self
            .timed("feedback_put", self.put_feedback(&feedback))
            .await?;
        Ok(feedback)
    }

    /// Writes `f` (history, then the current answer), again when the transaction lost a
    /// race; true when an earlier answer was replaced.
    async fn put_feedback(&self, f: &Feedback) -> Result<bool, StoreError> {
        let mut tries = 0u64;
        loop {
            match self.put_feedback_once(f).await {
                Err(e) if tries < 3 && is_transient(&e) => {
                    tries += 1;
                    tracing::debug!(error = %e, "feedback write raced another; again");
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                other => return other,
            }
        }
    }

    async fn put_feedback_once(&self, f: &Feedback) -> Result<bool, StoreError> {
        let d = self.dialect;
        let phs = |n: usize| (1..=n).map(|i| d.ph(i)).collect::<Vec<_>>().join(", ");
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("feedback begin"))?;
        // The write first: SQLite then takes its write lock at once (waiting out a busy
        // writer) instead of failing to upgrade a read lock later.
        let history = format!(
            "INSERT INTO {HISTORY} (id, result_id, caller, true_label, correct, created_ms) \
             VALUES ({})",
            phs(6)
        );
        sqlx::query(&history)
            .bind(new_id(f.created_at_ms))
            .bind(f.result_id.clone())
            .bind(f.caller.clone())
            .bind(f.label.clone())
            .bind(i64::from(f.correct))
            .bind(f.created_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_error("feedback history"))?;
        let earlier = format!(
            "SELECT result_id FROM {FEEDBACK} WHERE result_id = {} AND caller = {}",
            d.ph(1),
            d.ph(2)
        );
        let replaced = sqlx::query(&earlier)
            .bind(f.result_id.clone())
            .bind(f.caller.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error("feedback read"))?
            .is_some();
        let columns =
            "result_id, caller, true_label, correct, image_id, model, model_sha256, created_ms";
        let update = match d {
            Dialect::MySql => "ON DUPLICATE KEY UPDATE true_label = VALUES(true_label), \
                 correct = VALUES(correct), created_ms = VALUES(created_ms)"
                .to_string(),
            Dialect::Sqlite | Dialect::Postgres => "ON CONFLICT (result_id, caller) DO UPDATE \
                 SET true_label = excluded.true_label, correct = excluded.correct, \
                 created_ms = excluded.created_ms"
                .to_string(),
        };
        let upsert = format!(
            "INSERT INTO {FEEDBACK} ({columns}) VALUES ({}) {update}",
            phs(8)
        );
        sqlx::query(&upsert)
            .bind(f.result_id.clone())
            .bind(f.caller.clone())
            .bind(f.label.clone())
            .bind(i64::from(f.correct))
            .bind(f.image_id.clone())
            .bind(f.model.name.clone())
            .bind(f.model.sha256.clone())
            .bind(f.created_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_error("feedback upsert"))?;
        tx.commit().await.map_err(query_error("feedback commit"))?;
        Ok(replaced)
    }

    /// The current answer of each caller about `result_id`, by caller (the first
    /// [`MAX_HISTORY`] callers, and one more to say there are more).
    pub async fn current_feedback(&self, result_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut current = self
            .timed(
                "feedback_history",
                self.answers(FEEDBACK, result_id, "caller"),
            )
            .await?;
        // By the name's bytes, whatever the database's collation.
        current.sort_by(|a, b| a.caller.cmp(&b.caller));
        Ok(current)
    }

    /// The answers given about `result_id`, by any caller, oldest first: every one, or the
    /// newest [`MAX_HISTORY`] (then one more is returned, the oldest, to say so: callers
    /// check `len() > MAX_HISTORY`).
    pub async fn feedback_history(&self, result_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.timed(
            "feedback_history",
            self.answers(HISTORY, result_id, "created_ms DESC, id DESC"),
        )
        .await
        .map(|mut newest_first| {
            newest_first.reverse();
            newest_first
        })
    }

    async fn answers(
        &self,
        table: &str,
        result_id: &str,
        order: &str,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let sql = format!(
            "SELECT caller, true_label, correct, created_ms FROM {table} \
             WHERE result_id = {} ORDER BY {order} LIMIT {}",
            self.dialect.ph(1),
            MAX_HISTORY + 1
        );
        let rows = sqlx::query(&sql)
            .bind(result_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("feedback_history"))?;
        rows.iter()
            .map(|row| {
                Ok(HistoryEntry {
                    caller: text_column(row, "caller", result_id)?,
                    label: text_column(row, "true_label", result_id)?,
                    correct: row
                        .try_get::<i64, _>("correct")
                        .map_err(query_error("decode row"))?
                        != 0,
                    created_at_ms: row
                        .try_get("created_ms")
                        .map_err(query_error("decode row"))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_caller_may_say() {
        let label = |s: &str| Some(s.to_string());
        assert_eq!(
            TrueAnswer::from_parts(label("cat"), None),
            Ok(TrueAnswer::Label {
                label: "cat".into(),
                claimed: None
            })
        );
        assert_eq!(
            TrueAnswer::from_parts(None, Some(true)),
            Ok(TrueAnswer::Correct)
        );
        assert!(TrueAnswer::from_parts(label("dog"), Some(false)).is_ok());
        let no_truth = TrueAnswer::from_parts(None, Some(false)).expect_err("refused");
        assert!(no_truth.contains("'label'"), "{no_truth}");
        assert!(TrueAnswer::from_parts(None, None).is_err());
        for bad in ["", "   ", "a\0b", "tab\there", "line\nbreak"] {
            assert!(TrueAnswer::from_parts(label(bad), None).is_err(), "{bad:?}");
        }
        assert!(TrueAnswer::from_parts(Some("x".repeat(256)), None).is_err());
        assert!(TrueAnswer::from_parts(Some("é".repeat(127)), None).is_ok());
        assert!(TrueAnswer::from_parts(Some("é".repeat(128)), None).is_err());
    }
}
