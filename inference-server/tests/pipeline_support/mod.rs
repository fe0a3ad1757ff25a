//! Set-up for the upload, store and pipeline tests: routers for each role, and a fresh
//! database per test on each backend (SQLite in a temporary directory; PostgreSQL and
//! MariaDB on the machine when reachable — required under CI, a loud skip otherwise).
#![allow(dead_code)]

use std::path::Path;

use axum::Router;
use sightline_server::cli::ServeArgs;
use sightline_server::http::{AppState, app};
use sqlx::Connection;

pub const POSTGRES_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

/// Flags for `role` with `--data-dir data_dir` plus `extra`.
pub fn role_args(role: &str, data_dir: &Path, extra: &[&str]) -> ServeArgs {
    let mut argv: Vec<String> = vec![
        "sightline-server".into(),
        role.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    if role == "all" || role == "recognize" {
        let models = super::support::models();
        argv.extend([
            "--model".into(),
            models.join("test-classifier.onnx").display().to_string(),
            "--ort-lib".into(),
            super::support::ort_lib().display().to_string(),
            "--intra-threads".into(),
            "1".into(),
        ]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let argv = argv.into_iter().map(std::ffi::OsString::from).collect();
    sightline_server::cli::parse(argv)
        .expect("valid flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand")
}

/// The router and state for `args.role`, with the model (if any) loaded.
pub async fn role_app(args: &ServeArgs) -> (Router, AppState) {
    let setup = args
        .role
        .recognizes()
        .then(|| sightline_server::server::model_setup(args).expect("model setup"));
    let name = setup.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    let state = sightline_server::server::role_state(args, &name, None)
        .await
        .expect("state");
    if let Some(setup) = setup {
        sightline_server::serving::load_into(
            state.model.clone(),
            setup,
            state.metrics.inference.clone(),
        )
        .await;
    }
    (app(state.clone()), state)
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A database for one test: its URL (`None` for SQLite in the data dir) and how to drop it.
pub struct TestDb {
    pub url: Option<String>,
    drop: Option<(String, String)>,
}

impl TestDb {
    /// A fresh, empty database on `backend`, or `None` (after a loud notice) when the server
    /// cannot be reached outside CI. Under CI (`CI` set) an unreachable server fails the test.
    pub async fn fresh(backend: Backend) -> Option<TestDb> {
        let admin = match backend {
            Backend::Sqlite => {
                return Some(TestDb {
                    url: None,
                    drop: None,
                });
            }
            Backend::Postgres => POSTGRES_ADMIN,
            Backend::MySql => MYSQL_ADMIN,
        };
        let name = format!(
            "sightline_t_{}",
            &sightline_server::store::random_hex()[..16]
        );
        sqlx::any::install_default_drivers();
        let mut conn = match sqlx::AnyConnection::connect(admin).await {
            Ok(conn) => conn,
            Err(e) => {
                let message = format!("cannot reach {backend:?} at {admin}: {e}");
                if std::env::var_os("CI").is_some() {
                    panic!("{message} (required under CI)");
                }
                eprintln!("\n*** SKIPPED {backend:?} tests (not in CI): {message} ***\n");
                return None;
            }
        };
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        let url = admin
            .rsplit_once('/')
            .map(|(base, _)| format!("{base}/{name}"));
        Some(TestDb {
            url: url.clone(),
            drop: Some((admin.to_string(), name)),
        })
    }

    /// `--database-url URL` when not SQLite.
    pub fn flags(&self) -> Vec<&str> {
        match &self.url {
            Some(url) => vec!["--database-url", url.as_str()],
            None => vec![],
        }
    }

    /// Drops the database (best effort; the pool using it must be closed first).
    pub async fn cleanup(self) {
        if let Some((admin, name)) = self.drop
            && let Ok(mut conn) = sqlx::AnyConnection::connect(&admin).await
        {
            let force = if admin.starts_with("postgres") {
                " WITH (FORCE)"
            } else {
                ""
            };
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}
