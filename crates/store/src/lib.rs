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
//! May use: `sightline-api` (the prediction format) and `sightline-telemetry`; never the
//! model or HTTP. The store role's routes are the server's (`sightline_server::store::http`).

pub mod evaluations;
pub mod metrics;
mod schema;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use tracing::Instrument;

use crate::metrics::StoreMetrics;
use sightline_api::Prediction;

/// The table the records live in (not the seed's `results`, so an old seed database can sit
/// beside it).
pub const TABLE: &str = "sightline_results";
/// Most records one page may hold.
pub const MAX_PAGE: i64 = 1000;
pub const DEFAULT_PAGE: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://, postgres:// or mysql://")]
    UnsupportedUrl(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the results database ({backend}): {source}")]
    Connect {
        backend: &'static str,
        source: sqlx::Error,
    },
    #[error("database migration step {step} failed: {source}")]
    Migrate { step: String, source: sqlx::Error },
    #[error("results database query ({what}) failed: {source}")]
    Query {
        what: &'static str,
        source: sqlx::Error,
    },
    #[error("stored record {id} is corrupt: {detail}")]
    Corrupt { id: String, detail: String },
}

impl StoreError {
    /// True when the database could not be reached (a 503 rather than a 500). A
    /// protocol error counts: a connection cut while the pool opens it fails mid-handshake
    /// (PostgreSQL's "unexpected response from SSLRequest") rather than with an I/O error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Query { source, .. } => matches!(
                source,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }

    /// A bounded label for metrics: `unavailable` (cannot reach the database), `corrupt`
    /// (a stored row does not decode), `query` (anything else).
    pub fn reason(&self) -> &'static str {
        if self.is_unavailable() {
            "unavailable"
        } else if matches!(self, StoreError::Corrupt { .. }) {
            "corrupt"
        } else {
            "query"
        }
    }
}

/// Which SQL dialect the URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Dialect, StoreError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            _ => Err(StoreError::UnsupportedUrl(redact(url))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// The `n`th (1-based) bind placeholder.
    pub(crate) fn ph(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::MySql => "?".to_string(),
        }
    }
}

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

/// A URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The model a result came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    #[serde(default)]
    pub sha256: String,
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
    /// Never read from a request body: what a route of the store role is for says it
    /// (a caller's save is `client`; the pipeline's save, `server`).
    #[serde(skip)]
    pub provenance: Provenance,
}

impl NewResult {
    /// The idempotency key: one record per (image, model name, model digest) for a
    /// client's results (as before provenance existed); a server's adds its provenance and
    /// its number of predictions, so the two never meet and each `top_k` has its record.
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

/// The results database.
#[derive(Clone)]
pub struct ResultStore {
    pool: AnyPool,
    dialect: Dialect,
    metrics: StoreMetrics,
}

const COLUMNS: &str = "id, image_id, image_url, model, model_sha256, top_label, predictions, \
     latency_ms, created_ms, provenance";

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
        let values = (1..=11).map(|n| d.ph(n)).collect::<Vec<_>>().join(", ");
        let columns = "id, idem_key, image_id, image_url, model, model_sha256, top_label, \
                       predictions, latency_ms, created_ms, provenance";
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
        id,
    })
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

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new record id: creation time, then randomness (so ids sort by time).
fn new_id(now_ms: i64) -> String {
    format!("{:012x}{}", now_ms.max(0), &random_hex()[..20])
}

/// 64 hex digits that no other call in any process will repeat.
pub fn random_hex() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(nanos.to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    // Addresses differ between runs (ASLR): a little more entropy for free.
    let local = 0u8;
    hasher.update((&local as *const u8 as usize).to_le_bytes());
    hex::encode(hasher.finalize())
}

/// True for a record id as [`new_id`] makes them.
pub fn is_record_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Milliseconds since the epoch from `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` or a plain
/// integer (already milliseconds).
pub fn parse_time(text: &str) -> Option<i64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60) * 1000) + millis)
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let t = 1_764_000_123_456;
        assert_eq!(parse_time(&rfc3339(t)), Some(t));
        assert_eq!(
            parse_time("2026-11-24T10:00:00+01:00"),
            parse_time("2026-11-24T09:00:00Z")
        );
        assert_eq!(parse_time("12345"), Some(12345));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-24",
            "-5",
            "2026-11-24T10:00:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_sort_by_time_and_keys_by_image_and_model() {
        let a = new_id(1000);
        let b = new_id(1001);
        assert!(a < b && is_record_id(&a) && is_record_id(&b));
        let base = NewResult {
            image_id: Some("ab".into()),
            image_url: "http://x/ab".into(),
            model: ModelRef {
                name: "m".into(),
                sha256: "d".into(),
            },
            predictions: vec![],
            latency_ms: None,
            provenance: Provenance::Client,
        };
        let mut other_url = base.clone();
        other_url.image_url = "http://y/ab".into();
        assert_eq!(base.idempotency_key(), other_url.idempotency_key());
        let mut other_model = base.clone();
        other_model.model.sha256 = "e".into();
        assert_ne!(base.idempotency_key(), other_model.idempotency_key());
        // The server's record is never a client's, and each number of predictions is its own.
        let server = NewResult {
            provenance: Provenance::Server,
            ..base.clone()
        };
        assert_ne!(base.idempotency_key(), server.idempotency_key());
        let mut more = server.clone();
        more.predictions.push(Prediction {
            label: "x".into(),
            probability: 0.5,
        });
        assert_ne!(server.idempotency_key(), more.idempotency_key());
    }

    #[test]
    fn a_connection_cut_mid_handshake_is_unavailable_not_a_bug() {
        let query = |source| StoreError::Query {
            what: "list",
            source,
        };
        let cut = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        assert!(query(cut).is_unavailable());
        assert!(query(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!query(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!query(sqlx::Error::ColumnNotFound("id".into())).is_unavailable());
    }

    #[test]
    fn urls_pick_the_dialect_and_hide_passwords() {
        assert_eq!(
            Dialect::from_url("sqlite://x.db").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::from_url("postgres://u@h/d").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::from_url("mysql://u@h/d").ok(),
            Some(Dialect::MySql)
        );
        assert!(Dialect::from_url("redis://h").is_err());
        assert!(!redact("postgres://u:secret@h/d").contains("secret"));
    }
}
