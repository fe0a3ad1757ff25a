//! Results produced by the server are kept apart from results a client submits (issue 18,
//! finding 5), on every backend: a database made by the previous version (no provenance
//! column) is migrated in place, its records count as `client`, and the pipeline's save of
//! the same (image, model) is a record of its own; replicas migrating at once both start.

mod pipeline_support;
mod support;

use pipeline_support::{Backend, TestDb};
use sightline_server::postprocess::Prediction;
use sightline_server::store::{ListQuery, ModelRef, NewResult, Provenance, ResultStore};
use sqlx::Connection;

/// The schema of the version before provenance (its table, as that version created it).
fn previous_schema(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => &[
            "CREATE TABLE sightline_schema (version BIGINT NOT NULL PRIMARY KEY)",
            "CREATE TABLE sightline_results (id TEXT PRIMARY KEY NOT NULL, idem_key TEXT NOT NULL UNIQUE, image_id TEXT, image_url TEXT NOT NULL, model TEXT NOT NULL, model_sha256 TEXT NOT NULL, top_label TEXT, predictions TEXT NOT NULL, latency_ms REAL, created_ms BIGINT NOT NULL)",
            "INSERT INTO sightline_schema (version) VALUES (1), (2), (3)",
        ],
        Backend::Postgres => &[
            "CREATE TABLE sightline_schema (version BIGINT NOT NULL PRIMARY KEY)",
            "CREATE TABLE sightline_results (id VARCHAR(32) PRIMARY KEY, idem_key VARCHAR(64) NOT NULL UNIQUE, image_id VARCHAR(64), image_url TEXT NOT NULL, model VARCHAR(255) NOT NULL, model_sha256 VARCHAR(64) NOT NULL, top_label VARCHAR(255), predictions TEXT NOT NULL, latency_ms DOUBLE PRECISION, created_ms BIGINT NOT NULL)",
            "INSERT INTO sightline_schema (version) VALUES (1), (2), (3)",
        ],
        Backend::MySql => &[
            "CREATE TABLE sightline_schema (version BIGINT NOT NULL PRIMARY KEY)",
            "CREATE TABLE sightline_results (id VARCHAR(32) NOT NULL PRIMARY KEY, idem_key VARCHAR(64) NOT NULL, image_id VARCHAR(64) NULL, image_url VARCHAR(4096) NOT NULL, model VARCHAR(255) NOT NULL, model_sha256 VARCHAR(64) NOT NULL, top_label VARCHAR(255) NULL, predictions MEDIUMTEXT NOT NULL, latency_ms DOUBLE NULL, created_ms BIGINT NOT NULL, UNIQUE KEY sightline_results_idem (idem_key)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "INSERT INTO sightline_schema (version) VALUES (1)",
        ],
    }
}

const IMAGE: &str = "b56e5c48f3a7be63c5cc26896ee291932cfab9cc174190a08ed6d97ec86d94f5";

fn result(provenance: Provenance, label: &str) -> NewResult {
    NewResult {
        image_id: Some(IMAGE.into()),
        image_url: format!("http://localhost/api/v1/images/{IMAGE}"),
        model: ModelRef {
            name: "m".into(),
            sha256: "d".repeat(64),
            preprocess_sha256: String::new(),
        },
        predictions: vec![Prediction {
            label: label.into(),
            probability: 0.9,
        }],
        latency_ms: None,
        job: None,
        provenance,
    }
}

async fn migrates_an_old_database_and_keeps_the_two_apart(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let url = db
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display()));
    sqlx::any::install_default_drivers();
    {
        let mut old = sqlx::AnyConnection::connect(&url).await.expect("connect");
        for sql in previous_schema(backend) {
            sqlx::query(sql).execute(&mut old).await.expect(sql);
        }
        // A record the previous version stored: the key it made (image, model, digest).
        let submitted = result(Provenance::Client, "hot dog");
        let insert = match backend {
            Backend::Postgres => {
                "INSERT INTO sightline_results (id, idem_key, image_id, image_url, model, model_sha256, top_label, predictions, latency_ms, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            }
            _ => {
                "INSERT INTO sightline_results (id, idem_key, image_id, image_url, model, model_sha256, top_label, predictions, latency_ms, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            }
        };
        sqlx::query(insert)
            .bind("00000000000100000000000000000000")
            .bind(submitted.idempotency_key())
            .bind(IMAGE)
            .bind(submitted.image_url.clone())
            .bind("m")
            .bind("d".repeat(64))
            .bind("hot dog")
            .bind(r#"[{"label":"hot dog","probability":0.9}]"#)
            .bind(-1.0f64)
            .bind(1000i64)
            .execute(&mut old)
            .await
            .expect("an old record");
        let _ = old.close().await;
    }
    // Two replicas start at once on the old database: both migrate without an error.
    let (a, b) = tokio::join!(ResultStore::connect(&url), ResultStore::connect(&url));
    let (store, other) = (a.expect("replica a"), b.expect("replica b"));
    other.close().await;
    let page = store
        .list(&ListQuery {
            limit: 10,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1, "{backend:?}");
    assert_eq!(page.items[0].provenance, Provenance::Client, "{backend:?}");
    assert_eq!(
        page.items[0].model.preprocess_sha256, "",
        "{backend:?}: unknown"
    );

    // The pipeline's save of the same image and model: its own record, not the old one.
    let (server, created) = store
        .save(&result(Provenance::Server, "Egyptian cat"))
        .await
        .expect("save");
    assert!(created, "{backend:?}");
    assert_eq!(server.provenance, Provenance::Server);
    assert_eq!(server.predictions[0].label, "Egyptian cat");
    // A client's save of it again finds the old record, as before.
    let (again, created) = store
        .save(&result(Provenance::Client, "other"))
        .await
        .expect("save");
    assert!(!created);
    assert_eq!(again.predictions[0].label, "hot dog");
    let servers = store
        .list(&ListQuery {
            limit: 10,
            provenance: Some(Provenance::Server),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(servers.items.len(), 1, "{backend:?}");

    // A batch job's result names the job (the column the migration added), and the job
    // lists its own.
    let mut batch = result(Provenance::Server, "tabby");
    batch.image_id = Some("e".repeat(64));
    batch.job = Some("archive-2026".into());
    let (saved, created) = store.save(&batch).await.expect("save");
    assert!(created, "{backend:?}");
    assert_eq!(saved.job.as_deref(), Some("archive-2026"));
    let of_job = store
        .list(&ListQuery {
            limit: 10,
            job: Some("archive-2026".into()),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(of_job.items.len(), 1, "{backend:?}");
    assert_eq!(of_job.items[0].id, saved.id);
    assert_eq!(
        servers.items[0].job, None,
        "{backend:?}: the pipeline's names none"
    );

    // The same image and model digest with other preprocessing is another answer, a record
    // of its own; the same preprocessing again is the record made before (the column the
    // migration added keeps the digest).
    let with_preprocessing = |digest: &str, label: &str| {
        let mut new = result(Provenance::Server, label);
        new.model.preprocess_sha256 = digest.repeat(64);
        new
    };
    let (first, created) = store
        .save(&with_preprocessing("1", "tabby"))
        .await
        .expect("save");
    assert!(
        created,
        "{backend:?}: the digest-less record is not this one"
    );
    assert_eq!(first.model.preprocess_sha256, "1".repeat(64), "{backend:?}");
    let (again, created) = store
        .save(&with_preprocessing("1", "other"))
        .await
        .expect("save");
    assert!(!created, "{backend:?}");
    assert_eq!(again.id, first.id);
    let (other, created) = store
        .save(&with_preprocessing("2", "tiger cat"))
        .await
        .expect("save");
    assert!(created, "{backend:?}: other preprocessing, another record");
    assert_eq!(other.predictions[0].label, "tiger cat");
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite() {
    migrates_an_old_database_and_keeps_the_two_apart(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres() {
    migrates_an_old_database_and_keeps_the_two_apart(Backend::Postgres).await;
}

#[tokio::test]
async fn mysql() {
    migrates_an_old_database_and_keeps_the_two_apart(Backend::MySql).await;
}
