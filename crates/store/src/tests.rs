use super::*;
use sightline_api::Prediction;

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
            preprocess_sha256: String::new(),
        },
        predictions: vec![],
        latency_ms: None,
        job: None,
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
    // A server's answer made with other preprocessing is another record; a client's
    // record is keyed as before, whatever it says of preprocessing.
    let mut preprocessed = server.clone();
    preprocessed.model.preprocess_sha256 = "p".into();
    assert_ne!(server.idempotency_key(), preprocessed.idempotency_key());
    let mut other = preprocessed.clone();
    other.model.preprocess_sha256 = "q".into();
    assert_ne!(preprocessed.idempotency_key(), other.idempotency_key());
    let mut client = base.clone();
    client.model.preprocess_sha256 = "p".into();
    assert_eq!(base.idempotency_key(), client.idempotency_key());
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
