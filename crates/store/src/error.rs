//! What can go wrong with the results database, and which SQL dialect a URL speaks.

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
