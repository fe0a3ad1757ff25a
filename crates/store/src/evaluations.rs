//! Evaluation jobs in the results database, so that every front door answers for every
//! evaluation (`GET /api/v1/evaluations/{id}`), whichever front door started it and
//! whichever recognize replica runs it.
//!
//! One table, `sightline_evaluations`: a job's id, its last view (the JSON the recognize
//! role shows, the report at the end) and when it was written. The front door relaying a
//! job writes its view about every two seconds while it runs; a view still `running` that
//! has not been written for [`STALE_AFTER_MS`] belongs to a job whose front door or
//! recognize replica went away, and is shown `failed`.

use sqlx::Row;

use super::{Dialect, ResultStore, StoreError, now_ms};

/// A running job not written for this long has stopped.
pub const STALE_AFTER_MS: i64 = 30_000;

/// The table, created with the results' schema (version 11).
pub fn table(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "CREATE TABLE IF NOT EXISTS sightline_evaluations (
                id TEXT PRIMARY KEY NOT NULL,
                job_view TEXT NOT NULL,
                updated_ms BIGINT NOT NULL)"
        }
        Dialect::Postgres => {
            "CREATE TABLE IF NOT EXISTS sightline_evaluations (
                id VARCHAR(64) PRIMARY KEY,
                job_view TEXT NOT NULL,
                updated_ms BIGINT NOT NULL)"
        }
        Dialect::MySql => {
            "CREATE TABLE IF NOT EXISTS sightline_evaluations (
                id VARCHAR(64) NOT NULL PRIMARY KEY,
                job_view MEDIUMTEXT NOT NULL,
                updated_ms BIGINT NOT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        }
    }
}

impl ResultStore {
    /// Writes job `id`'s view (a JSON object), replacing the one before.
    pub async fn put_evaluation(&self, id: &str, view: &str) -> Result<(), StoreError> {
        self.timed("evaluation_put", async {
            let sql = match self.dialect {
                Dialect::MySql => {
                    "INSERT INTO sightline_evaluations (id, job_view, updated_ms) VALUES (?, ?, ?) \
                     ON DUPLICATE KEY UPDATE job_view = VALUES(job_view), updated_ms = VALUES(updated_ms)"
                }
                Dialect::Postgres => {
                    "INSERT INTO sightline_evaluations (id, job_view, updated_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET job_view = excluded.job_view, updated_ms = excluded.updated_ms"
                }
                Dialect::Sqlite => {
                    "INSERT INTO sightline_evaluations (id, job_view, updated_ms) VALUES (?, ?, ?) \
                     ON CONFLICT (id) DO UPDATE SET job_view = excluded.job_view, updated_ms = excluded.updated_ms"
                }
            };
            sqlx::query(sql)
                .bind(id.to_string())
                .bind(view.to_string())
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|source| StoreError::Query {
                    what: "evaluation_put",
                    source,
                })
        })
        .await
    }

    /// Job `id`'s last view, as written, with how long ago (ms); `None` when unknown.
    pub async fn get_evaluation(&self, id: &str) -> Result<Option<(String, i64)>, StoreError> {
        self.timed("evaluation_get", async {
            let sql = format!(
                "SELECT id, job_view, updated_ms FROM sightline_evaluations WHERE id = {}",
                self.dialect.ph(1)
            );
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::Query {
                    what: "evaluation_get",
                    source,
                })?;
            let Some(row) = row else {
                return Ok(None);
            };
            let view = super::text_column(&row, "job_view", id)?;
            let updated: i64 = row.try_get("updated_ms").map_err(|e| StoreError::Query {
                what: "decode row",
                source: e,
            })?;
            Ok(Some((view, now_ms().saturating_sub(updated))))
        })
        .await
    }
}

/// An evaluation id as the store takes it: 1 to 64 letters, digits, `-` or `_`.
pub fn is_evaluation_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The view to show for one written `age_ms` ago: a `running` one gone stale is `failed`.
pub fn shown(mut view: serde_json::Value, age_ms: i64) -> serde_json::Value {
    if view["status"] == "running" && age_ms > STALE_AFTER_MS {
        view["status"] = "failed".into();
        view["error"] = format!(
            "the evaluation stopped reporting {} s ago: the front door or the recognize \
             replica running it went away; start it again",
            age_ms / 1000
        )
        .into();
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_view_gone_stale_is_failed() {
        let running = serde_json::json!({"id": "a", "status": "running"});
        assert_eq!(shown(running.clone(), 1_000)["status"], "running");
        let stale = shown(running, STALE_AFTER_MS + 1);
        assert_eq!(stale["status"], "failed");
        assert!(
            stale["error"]
                .as_str()
                .is_some_and(|e| e.contains("went away"))
        );
        let done = serde_json::json!({"status": "succeeded"});
        assert_eq!(shown(done, STALE_AFTER_MS * 10)["status"], "succeeded");
    }
}
