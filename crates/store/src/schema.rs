//! The results database's schema, one idempotent step at a time by version, recorded in
//! `sightline_schema`: safe to run by several replicas starting at once.

use std::time::Duration;

use sqlx::Row;

use super::{Dialect, ResultStore, StoreError, TABLE};
use crate::feedback::{FEEDBACK, HISTORY};

/// One migration step.
enum Step {
    /// A statement that is idempotent itself (`IF NOT EXISTS`).
    Sql(&'static str),
    /// `ALTER TABLE sightline_results ADD COLUMN`, skipped when the column exists (SQLite
    /// and MySQL have no `ADD COLUMN IF NOT EXISTS`; a replica may have added it meanwhile).
    AddColumn {
        column: &'static str,
        definition: &'static str,
    },
    /// An index on one of the tables, skipped when it exists (MySQL has no
    /// `CREATE INDEX IF NOT EXISTS`; the others run exactly that).
    AddIndex {
        table: &'static str,
        name: &'static str,
        columns: &'static str,
    },
}

impl Dialect {
    /// The schema, one idempotent step at a time, by version.
    fn steps(self) -> Vec<(i64, Step)> {
        let mut steps: Vec<(i64, Step)> = self
            .tables()
            .into_iter()
            .map(|(v, sql)| (v, Step::Sql(sql)))
            .collect();
        steps.push((
            10,
            self.add_column(
                "provenance",
                "TEXT NOT NULL DEFAULT 'client'",
                "VARCHAR(16) NOT NULL DEFAULT 'client'",
            ),
        ));
        steps.push((11, Step::Sql(super::evaluations::table(self))));
        steps.extend(
            feedback_tables(self)
                .into_iter()
                .map(|(v, sql)| (v, Step::Sql(sql))),
        );
        // Retention deletes, and the gauges read every model, by answer time alone.
        steps.push((
            16,
            Step::AddIndex {
                table: FEEDBACK,
                name: "sightline_feedback_created",
                columns: "created_ms",
            },
        ));
        steps.push((
            17,
            Step::AddIndex {
                table: HISTORY,
                name: "sightline_feedback_history_created",
                columns: "created_ms",
            },
        ));
        steps.push((20, self.add_column("job", "TEXT NULL", "VARCHAR(253) NULL")));
        // A job's results, listed by `?job=`.
        steps.push((
            21,
            Step::AddIndex {
                table: TABLE,
                name: "sightline_results_job",
                columns: "job",
            },
        ));
        // The preprocessing an answer was made with; '' for the records before it.
        steps.push((
            22,
            self.add_column(
                "preprocess_sha256",
                "TEXT NOT NULL DEFAULT ''",
                "VARCHAR(64) NOT NULL DEFAULT ''",
            ),
        ));
        steps
    }

    /// A column added to the results table: its definition on SQLite, and on PostgreSQL
    /// and MySQL.
    fn add_column(self, column: &'static str, sqlite: &'static str, others: &'static str) -> Step {
        let definition = match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres | Dialect::MySql => others,
        };
        Step::AddColumn { column, definition }
    }

    /// The tables and indexes, by version.
    fn tables(self) -> Vec<(i64, &'static str)> {
        match self {
            Dialect::Sqlite => vec![
                (
                    1,
                    "CREATE TABLE IF NOT EXISTS sightline_results (
                        id TEXT PRIMARY KEY NOT NULL,
                        idem_key TEXT NOT NULL UNIQUE,
                        image_id TEXT,
                        image_url TEXT NOT NULL,
                        model TEXT NOT NULL,
                        model_sha256 TEXT NOT NULL,
                        top_label TEXT,
                        predictions TEXT NOT NULL,
                        latency_ms REAL,
                        created_ms BIGINT NOT NULL)",
                ),
                (
                    2,
                    "CREATE INDEX IF NOT EXISTS sightline_results_image ON sightline_results (image_id)",
                ),
                (
                    3,
                    "CREATE INDEX IF NOT EXISTS sightline_results_label ON sightline_results (top_label)",
                ),
            ],
            Dialect::Postgres => vec![
                (
                    1,
                    "CREATE TABLE IF NOT EXISTS sightline_results (
                        id VARCHAR(32) PRIMARY KEY,
                        idem_key VARCHAR(64) NOT NULL UNIQUE,
                        image_id VARCHAR(64),
                        image_url TEXT NOT NULL,
                        model VARCHAR(255) NOT NULL,
                        model_sha256 VARCHAR(64) NOT NULL,
                        top_label VARCHAR(255),
                        predictions TEXT NOT NULL,
                        latency_ms DOUBLE PRECISION,
                        created_ms BIGINT NOT NULL)",
                ),
                (
                    2,
                    "CREATE INDEX IF NOT EXISTS sightline_results_image ON sightline_results (image_id)",
                ),
                (
                    3,
                    "CREATE INDEX IF NOT EXISTS sightline_results_label ON sightline_results (top_label)",
                ),
            ],
            Dialect::MySql => vec![(
                1,
                "CREATE TABLE IF NOT EXISTS sightline_results (
                    id VARCHAR(32) NOT NULL PRIMARY KEY,
                    idem_key VARCHAR(64) NOT NULL,
                    image_id VARCHAR(64) NULL,
                    image_url VARCHAR(4096) NOT NULL,
                    model VARCHAR(255) NOT NULL,
                    model_sha256 VARCHAR(64) NOT NULL,
                    top_label VARCHAR(255) NULL,
                    predictions MEDIUMTEXT NOT NULL,
                    latency_ms DOUBLE NULL,
                    created_ms BIGINT NOT NULL,
                    UNIQUE KEY sightline_results_idem (idem_key),
                    KEY sightline_results_image (image_id),
                    KEY sightline_results_label (top_label)
                ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            )],
        }
    }
}

/// The feedback tables (`crate::feedback`) and their indexes, by version.
fn feedback_tables(dialect: Dialect) -> Vec<(i64, &'static str)> {
    match dialect {
        Dialect::Sqlite => vec![
            (
                12,
                "CREATE TABLE IF NOT EXISTS sightline_feedback (
                    result_id TEXT NOT NULL,
                    caller TEXT NOT NULL,
                    true_label TEXT NOT NULL,
                    correct BIGINT NOT NULL,
                    image_id TEXT,
                    model TEXT NOT NULL,
                    model_sha256 TEXT NOT NULL,
                    created_ms BIGINT NOT NULL,
                    PRIMARY KEY (result_id, caller))",
            ),
            (
                13,
                "CREATE INDEX IF NOT EXISTS sightline_feedback_model ON sightline_feedback (model, created_ms)",
            ),
            (
                14,
                "CREATE TABLE IF NOT EXISTS sightline_feedback_history (
                    id TEXT PRIMARY KEY NOT NULL,
                    result_id TEXT NOT NULL,
                    caller TEXT NOT NULL,
                    true_label TEXT NOT NULL,
                    correct BIGINT NOT NULL,
                    created_ms BIGINT NOT NULL)",
            ),
            (
                15,
                "CREATE INDEX IF NOT EXISTS sightline_feedback_history_result ON sightline_feedback_history (result_id, caller)",
            ),
        ],
        Dialect::Postgres => vec![
            (
                12,
                "CREATE TABLE IF NOT EXISTS sightline_feedback (
                    result_id VARCHAR(32) NOT NULL,
                    caller VARCHAR(255) NOT NULL,
                    true_label VARCHAR(255) NOT NULL,
                    correct BIGINT NOT NULL,
                    image_id VARCHAR(64),
                    model VARCHAR(255) NOT NULL,
                    model_sha256 VARCHAR(64) NOT NULL,
                    created_ms BIGINT NOT NULL,
                    PRIMARY KEY (result_id, caller))",
            ),
            (
                13,
                "CREATE INDEX IF NOT EXISTS sightline_feedback_model ON sightline_feedback (model, created_ms)",
            ),
            (
                14,
                "CREATE TABLE IF NOT EXISTS sightline_feedback_history (
                    id VARCHAR(32) PRIMARY KEY,
                    result_id VARCHAR(32) NOT NULL,
                    caller VARCHAR(255) NOT NULL,
                    true_label VARCHAR(255) NOT NULL,
                    correct BIGINT NOT NULL,
                    created_ms BIGINT NOT NULL)",
            ),
            (
                15,
                "CREATE INDEX IF NOT EXISTS sightline_feedback_history_result ON sightline_feedback_history (result_id, caller)",
            ),
        ],
        // MySQL has no `CREATE INDEX IF NOT EXISTS`: the keys are part of the tables.
        Dialect::MySql => vec![
            (
                12,
                "CREATE TABLE IF NOT EXISTS sightline_feedback (
                    result_id VARCHAR(32) NOT NULL,
                    caller VARCHAR(255) NOT NULL,
                    true_label VARCHAR(255) NOT NULL,
                    correct BIGINT NOT NULL,
                    image_id VARCHAR(64) NULL,
                    model VARCHAR(255) NOT NULL,
                    model_sha256 VARCHAR(64) NOT NULL,
                    created_ms BIGINT NOT NULL,
                    PRIMARY KEY (result_id, caller),
                    KEY sightline_feedback_model (model, created_ms)
                ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            ),
            (
                14,
                "CREATE TABLE IF NOT EXISTS sightline_feedback_history (
                    id VARCHAR(32) NOT NULL PRIMARY KEY,
                    result_id VARCHAR(32) NOT NULL,
                    caller VARCHAR(255) NOT NULL,
                    true_label VARCHAR(255) NOT NULL,
                    correct BIGINT NOT NULL,
                    created_ms BIGINT NOT NULL,
                    KEY sightline_feedback_history_result (result_id, caller)
                ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            ),
        ],
    }
}

impl ResultStore {
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let step = |step: &str, source| StoreError::Migrate {
            step: step.to_string(),
            source,
        };
        if self.dialect == Dialect::Sqlite {
            // Persistent in the file: readers never block the writer.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await
                .map_err(|e| step("journal_mode", e))?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS sightline_schema (version BIGINT NOT NULL PRIMARY KEY)",
        )
        .execute(&self.pool)
        .await
        .map_err(|e| step("sightline_schema", e))?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM sightline_schema")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| step("read versions", e))?
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| step("read versions", e))?;
        for (version, migration) in self.dialect.steps() {
            if applied.contains(&version) {
                continue;
            }
            match migration {
                Step::Sql(sql) => {
                    self.idempotent(sql)
                        .await
                        .map_err(|e| step(&format!("v{version}"), e))?;
                }
                Step::AddColumn { column, definition } => {
                    self.add_column(column, definition)
                        .await
                        .map_err(|e| step(&format!("v{version}"), e))?;
                }
                Step::AddIndex {
                    table,
                    name,
                    columns,
                } => {
                    self.add_index(table, name, columns)
                        .await
                        .map_err(|e| step(&format!("v{version}"), e))?;
                }
            }
            let record = match self.dialect {
                Dialect::MySql => "INSERT IGNORE INTO sightline_schema (version) VALUES (?)",
                Dialect::Postgres => {
                    "INSERT INTO sightline_schema (version) VALUES ($1) ON CONFLICT DO NOTHING"
                }
                Dialect::Sqlite => {
                    "INSERT INTO sightline_schema (version) VALUES (?) ON CONFLICT DO NOTHING"
                }
            };
            sqlx::query(record)
                .bind(version)
                .execute(&self.pool)
                .await
                .map_err(|e| step(&format!("record v{version}"), e))?;
        }
        Ok(())
    }

    /// Runs an `IF NOT EXISTS` statement. Two replicas running it at the same moment can
    /// still collide inside the database (PostgreSQL: a unique violation on its catalog);
    /// the loser runs it again, and finds the object there.
    async fn idempotent(&self, sql: &str) -> Result<(), sqlx::Error> {
        let mut tries = 0;
        loop {
            match sqlx::query(sql).execute(&self.pool).await {
                Ok(_) => return Ok(()),
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::debug!(error = %e, "migration step raced another replica; again");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Adds `column` to the results table unless it is there (another replica may be
    /// migrating at the same moment: a failed `ALTER` is fine when the column now exists).
    async fn add_column(&self, column: &str, definition: &str) -> Result<(), sqlx::Error> {
        let probe = format!("SELECT {column} FROM {TABLE} WHERE 1 = 0");
        if sqlx::query(&probe).execute(&self.pool).await.is_ok() {
            return Ok(());
        }
        let alter = format!("ALTER TABLE {TABLE} ADD COLUMN {column} {definition}");
        match sqlx::query(&alter).execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(e) => match sqlx::query(&probe).execute(&self.pool).await {
                Ok(_) => Ok(()),
                Err(_) => Err(e),
            },
        }
    }

    /// Adds index `name` on `table (columns)` unless it is there (a replica migrating at
    /// the same moment may have added it: a failed `ALTER` is fine when it now exists).
    async fn add_index(&self, table: &str, name: &str, columns: &str) -> Result<(), sqlx::Error> {
        if self.dialect != Dialect::MySql {
            let create = format!("CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})");
            return self.idempotent(&create).await;
        }
        let probe = "SELECT COUNT(*) FROM information_schema.statistics \
                     WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?";
        let exists = || async {
            sqlx::query(probe)
                .bind(table.to_string())
                .bind(name.to_string())
                .fetch_one(&self.pool)
                .await
                .and_then(|row| row.try_get::<i64, _>(0))
                .map(|n| n > 0)
        };
        if exists().await? {
            return Ok(());
        }
        let alter = format!("ALTER TABLE {table} ADD INDEX {name} ({columns})");
        match sqlx::query(&alter).execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(e) => match exists().await {
                Ok(true) => Ok(()),
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_creates_the_feedback_tables_in_new_versions() {
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
            let steps = feedback_tables(d);
            assert!(
                steps.iter().all(|(v, _)| *v > 11),
                "after the existing ones"
            );
            for table in [FEEDBACK, HISTORY] {
                let create = format!("CREATE TABLE IF NOT EXISTS {table} ");
                assert!(steps.iter().any(|(_, s)| s.starts_with(&create)), "{d:?}");
            }
            let versions: Vec<i64> = d.steps().into_iter().map(|(v, _)| v).collect();
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        }
    }
}
