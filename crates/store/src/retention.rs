//! How long users' feedback is kept: [`ResultStore::purge_feedback`] deletes the answers
//! (current ones and the history) given before a time, a bounded batch per statement, so a
//! large purge never holds a long lock or one huge transaction, and writers get in between
//! batches. Each dialect bounds a `DELETE` its own way: MySQL with `DELETE … LIMIT`,
//! PostgreSQL by `ctid` and SQLite by `rowid` from a limited `SELECT`.
//!
//! The results themselves, and the images, are not touched: they are kept as before
//! (the feedback tables hold nothing about an image beyond its SHA-256, which its result
//! and the image store already hold).

use super::{Dialect, ResultStore, StoreError};
use crate::feedback::{FEEDBACK, HISTORY, query_error};

/// Rows one retention `DELETE` removes at most.
pub const PURGE_BATCH: u32 = 1000;

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Current answers.
    pub current: u64,
    /// Answers of the history (replaced ones and the current ones' copies).
    pub history: u64,
}

impl ResultStore {
    /// Deletes every answer given before `before_ms`, from the current answers and the
    /// history, at most `batch` rows per statement (at least 1), until none is left.
    pub async fn purge_feedback(&self, before_ms: i64, batch: u32) -> Result<Purged, StoreError> {
        self.timed("feedback_purge", async {
            Ok(Purged {
                current: self.purge_table(FEEDBACK, before_ms, batch).await?,
                history: self.purge_table(HISTORY, before_ms, batch).await?,
            })
        })
        .await
    }

    async fn purge_table(
        &self,
        table: &str,
        before_ms: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let sql = match self.dialect {
            Dialect::MySql => {
                format!("DELETE FROM {table} WHERE created_ms < ? LIMIT {batch}")
            }
            Dialect::Postgres => format!(
                "DELETE FROM {table} WHERE ctid IN \
                 (SELECT ctid FROM {table} WHERE created_ms < $1 LIMIT {batch})"
            ),
            Dialect::Sqlite => format!(
                "DELETE FROM {table} WHERE rowid IN \
                 (SELECT rowid FROM {table} WHERE created_ms < ? LIMIT {batch})"
            ),
        };
        let mut deleted = 0u64;
        loop {
            let done = sqlx::query(&sql)
                .bind(before_ms)
                .execute(&self.pool)
                .await
                .map_err(query_error("feedback purge"))?
                .rows_affected();
            deleted += done;
            if done < u64::from(batch) {
                return Ok(deleted);
            }
            // Let the writers waiting on the table in between batches.
            tokio::task::yield_now().await;
        }
    }
}
