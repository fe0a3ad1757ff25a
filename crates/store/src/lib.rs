//! The `store` role's data layer: recognition results in SQLite (the embedded default, WAL
//! on the data dir), PostgreSQL or MySQL/MariaDB through one `sqlx::AnyPool`.
//!
//! One table, `sightline_results`. Each record has an idempotency key — the SHA-256 of the
//! image (its id, or its URL for the seed's records), the model name and the model digest —
//! under a UNIQUE constraint, so saving the same (image, model) twice keeps one record even
//! when two saves race: the database decides, never a read-then-write.
//!
//! Each record also says where it came from ([`Provenance`]): `server` for what this
//! system's own recognition produced (the one-call pipeline), `client` for what a caller
//! submitted (`POST /api/v1/results`, the seed's save). The two never share a key: a
//! server record's key adds its provenance and its number of predictions (the pipeline's
//! `top_k`), so a submitted record can never stand in for the pipeline's answer, and
//! `top_k=5` after `top_k=1` is its own record. Records stored before provenance existed
//! count as `client` (nothing says otherwise); the pipeline recomputes those once.
//!
//! Record ids sort by creation time (12 hex digits of milliseconds, then 20 random hex
//! digits), so listing is `ORDER BY id DESC` and a cursor is the last id seen: stable, and
//! no offset scans.
//!
//! Users' feedback on the pipeline's answers (the true label) lives beside the results, and
//! the live quality is counted from it by the database ([`feedback`], [`live`]), exported
//! as bounded Prometheus gauges ([`quality_gauges`]) and kept for a set time ([`retention`]).
//!
//! May use: `sightline-api` (the prediction format), `sightline-quality` (the seed's
//! formulas, one implementation with the offline evaluation) and `sightline-telemetry`;
//! never the model or HTTP. The store role's routes are the server's (`sightline_server::store::http`).

mod error;
pub mod evaluations;
pub mod feedback;
mod ids;
pub mod live;
pub mod metrics;
pub mod quality_gauges;
mod records;
pub mod retention;
mod schema;

pub use error::{Dialect, StoreError, redact};
use ids::new_id;
pub use ids::{is_record_id, now_ms, parse_time, random_hex, rfc3339};
pub use records::{ListQuery, ModelRef, NewResult, Page, Provenance, ResultRecord};

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use tracing::Instrument;

use crate::metrics::StoreMetrics;

/// The table the records live in (not the seed's `results`, so an old seed database can sit
/// beside it).
pub const TABLE: &str = "sightline_results";
/// Most records one page may hold.
pub const MAX_PAGE: i64 = 1000;
pub const DEFAULT_PAGE: i64 = 50;

/// The results database.
#[derive(Clone)]
pub struct ResultStore {
    pool: AnyPool,
    dialect: Dialect,
    metrics: StoreMetrics,
}

const COLUMNS: &str = "id, image_id, image_url, model, model_sha256, top_label, predictions, \
     latency_ms, created_ms, provenance, job, preprocess_sha256";

impl ResultStore {
    /// The default: SQLite at `<data_dir>/sightline.db` (created when missing).
    pub fn default_url(data_dir: &Path) -> Result<String, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        Ok(format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("sightline.db").display()
        ))
    }

    /// Connects (a few tries, so a database that starts beside us is waited for) and runs
    /// the migrations.
    pub async fn connect(url: &str) -> Result<ResultStore, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let options = AnyConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
            backend: dialect.name(),
            source,
        })?;
        let max = if dialect == Dialect::Sqlite { 4 } else { 10 };
        // One plain connection first: its error says what is wrong (refused, auth, no such
        // database), where a pool would only report a timeout.
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            match <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options).await {
                Ok(conn) => {
                    let _ = sqlx::Connection::close(conn).await;
                    break;
                }
                Err(source) if attempt >= 3 => {
                    return Err(StoreError::Connect {
                        backend: dialect.name(),
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "results database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                }
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                backend: dialect.name(),
                source,
            })?;
        let store = ResultStore {
            pool,
            dialect,
            metrics: StoreMetrics::unregistered(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Records query latency and errors into `metrics` (a server's registry).
    pub fn with_metrics(mut self, metrics: StoreMetrics) -> ResultStore {
        self.metrics = metrics;
        self
    }

    /// Runs one operation in a span, timing it and counting its failure.
    pub(crate) async fn timed<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = work
            .instrument(tracing::debug_span!(
                "store",
                operation,
                backend = self.dialect.name()
            ))
            .await;
        let error = result.as_ref().err().map(StoreError::reason);
        self.metrics.observe(operation, started.elapsed(), error);
        result
    }

    /// True when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.ping_query()).await
    }

    async fn ping_query(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Query {
                what: "ping",
                source,
            })
    }

    /// Saves `new` unless a record with its idempotency key exists. Returns the record and
    /// whether it was created now.
    pub async fn save(&self, new: &NewResult) -> Result<(ResultRecord, bool), StoreError> {
        self.timed("insert", self.save_query(new)).await
    }

    async fn save_query(&self, new: &NewResult) -> Result<(ResultRecord, bool), StoreError> {
        let key = new.idempotency_key();
        let now = now_ms();
        let id = new_id(now);
        let predictions =
            serde_json::to_string(&new.predictions).map_err(|e| StoreError::Corrupt {
                id: id.clone(),
                detail: e.to_string(),
            })?;
        let top_label = new.predictions.first().map(|p| p.label.clone());
        let d = self.dialect;
        let values = (1..=13).map(|n| d.ph(n)).collect::<Vec<_>>().join(", ");
        let columns = "id, idem_key, image_id, image_url, model, model_sha256, top_label, \
                       predictions, latency_ms, created_ms, provenance, job, preprocess_sha256";
        let sql = match d {
            Dialect::MySql => format!(
                "INSERT INTO {TABLE} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE idem_key = idem_key"
            ),
            Dialect::Sqlite | Dialect::Postgres => format!(
                "INSERT INTO {TABLE} ({columns}) VALUES ({values}) ON CONFLICT (idem_key) DO NOTHING"
            ),
        };
        sqlx::query(&sql)
            .bind(id.clone())
            .bind(key.clone())
            .bind(new.image_id.clone())
            .bind(new.image_url.clone())
            .bind(new.model.name.clone())
            .bind(new.model.sha256.clone())
            .bind(top_label)
            .bind(predictions)
            // Always a number (negative = unknown): a NULL here would make PostgreSQL prepare
            // the parameter with the wrong type for the next, non-NULL, call through `Any`.
            .bind(
                new.latency_ms
                    .filter(|l| l.is_finite() && *l >= 0.0)
                    .unwrap_or(-1.0),
            )
            .bind(now)
            .bind(new.provenance.as_str())
            .bind(new.job.clone())
            .bind(new.model.preprocess_sha256.clone())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                what: "insert",
                source,
            })?;
        let sql = format!("SELECT {COLUMNS} FROM {TABLE} WHERE idem_key = {}", d.ph(1));
        let row = sqlx::query(&sql)
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                what: "read back",
                source,
            })?;
        let record = record(&row)?;
        // Ours when it carries the id made here (affected-row counts differ by driver).
        let created = record.id == id;
        Ok((record, created))
    }

    pub async fn get(&self, id: &str) -> Result<Option<ResultRecord>, StoreError> {
        self.timed("get", self.get_query(id)).await
    }

    async fn get_query(&self, id: &str) -> Result<Option<ResultRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {TABLE} WHERE id = {}",
            self.dialect.ph(1)
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                what: "get",
                source,
            })?;
        row.as_ref().map(record).transpose()
    }

    /// One page, newest first.
    pub async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        self.timed("list", self.list_query(q)).await
    }

    async fn list_query(&self, q: &ListQuery) -> Result<Page, StoreError> {
        enum Bind {
            Text(String),
            Int(i64),
        }
        let d = self.dialect;
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        let mut add = |clause: &str, bind: Bind| {
            binds.push(bind);
            clauses.push(format!("{clause} {}", d.ph(binds.len())));
        };
        if let Some(cursor) = &q.cursor {
            add("id <", Bind::Text(cursor.clone()));
        }
        if let Some(label) = &q.label {
            add("top_label =", Bind::Text(label.clone()));
        }
        if let Some(model) = &q.model {
            add("model =", Bind::Text(model.clone()));
        }
        if let Some(image) = &q.image_id {
            add("image_id =", Bind::Text(image.clone()));
        }
        if let Some(provenance) = q.provenance {
            add("provenance =", Bind::Text(provenance.as_str().to_string()));
        }
        if let Some(job) = &q.job {
            add("job =", Bind::Text(job.clone()));
        }
        if let Some(since) = q.since_ms {
            add("created_ms >=", Bind::Int(since));
        }
        if let Some(until) = q.until_ms {
            add("created_ms <", Bind::Int(until));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let limit = q.limit.clamp(1, MAX_PAGE);
        // One more than asked, to know whether there is a next page.
        let sql = format!(
            "SELECT {COLUMNS} FROM {TABLE}{filter} ORDER BY id DESC LIMIT {}",
            limit + 1
        );
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(s) => query.bind(s),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                what: "list",
                source,
            })?;
        let mut items = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Closes the pool (tests; the process otherwise closes it on exit).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn record(row: &AnyRow) -> Result<ResultRecord, StoreError> {
    let get_err = |e: sqlx::Error| StoreError::Query {
        what: "decode row",
        source: e,
    };
    let id: String = row.try_get("id").map_err(get_err)?;
    let predictions = text_column(row, "predictions", &id)?;
    let predictions = serde_json::from_str(&predictions).map_err(|e| StoreError::Corrupt {
        id: id.clone(),
        detail: e.to_string(),
    })?;
    let created_ms: i64 = row.try_get("created_ms").map_err(get_err)?;
    let provenance = match text_column(row, "provenance", &id)?.as_str() {
        "server" => Provenance::Server,
        _ => Provenance::Client,
    };
    Ok(ResultRecord {
        image_id: row.try_get("image_id").map_err(get_err)?,
        image_url: row.try_get("image_url").map_err(get_err)?,
        model: ModelRef {
            name: row.try_get("model").map_err(get_err)?,
            sha256: row.try_get("model_sha256").map_err(get_err)?,
            preprocess_sha256: text_column(row, "preprocess_sha256", &id)?,
        },
        top_label: row.try_get("top_label").map_err(get_err)?,
        predictions,
        latency_ms: row
            .try_get::<Option<f64>, _>("latency_ms")
            .map_err(get_err)?
            .filter(|l| *l >= 0.0),
        created_at: rfc3339(created_ms),
        created_at_ms: created_ms,
        provenance,
        job: optional_text_column(row, "job", &id)?,
        id,
    })
}

/// A nullable text column, read as [`text_column`] reads one.
fn optional_text_column(
    row: &AnyRow,
    column: &str,
    id: &str,
) -> Result<Option<String>, StoreError> {
    if let Ok(text) = row.try_get::<Option<String>, _>(column) {
        return Ok(text);
    }
    let raw: Option<Vec<u8>> = row.try_get(column).map_err(|e| StoreError::Query {
        what: "decode row",
        source: e,
    })?;
    raw.map(|raw| {
        String::from_utf8(raw).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            detail: e.to_string(),
        })
    })
    .transpose()
}

/// A text column (MySQL hands TEXT and VARCHAR columns to `Any` as BLOBs at times).
pub(crate) fn text_column(row: &AnyRow, column: &str, id: &str) -> Result<String, StoreError> {
    match row.try_get::<String, _>(column) {
        Ok(text) => Ok(text),
        Err(_) => {
            let raw: Vec<u8> = row.try_get(column).map_err(|e| StoreError::Query {
                what: "decode row",
                source: e,
            })?;
            String::from_utf8(raw).map_err(|e| StoreError::Corrupt {
                id: id.to_string(),
                detail: e.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
