//! The OpenAPI document at `/api/openapi.json` names every route the routers declare (read
//! from the source, so a new route without documentation fails here), nothing more, and is
//! served with the docs page by every role, open even when API keys are required.

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use support::{body_json, send};

fn documented_routes() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value =
        serde_json::from_str(sightline_server::http::openapi::DOCUMENT).expect("json");
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.insert((method.clone(), path.clone()));
        }
    }
    routes
}

#[test]
fn the_document_covers_every_route_and_only_those() {
    let declared = support::declared_routes();
    assert!(declared.len() > 20, "found only {declared:?}");
    let documented = documented_routes();
    let missing: Vec<_> = declared.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "routes without documentation: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented routes that do not exist: {extra:?}"
    );
}

#[tokio::test]
async fn every_role_serves_the_document_and_the_docs_page_even_with_keys() {
    for role in ["recognize", "upload", "store", "all"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let app =
            support::unloaded_app(role, dir.path(), &["--api-keys", "openapi-secret-1"]).await;
        let (status, response) = send(
            &app,
            Request::get("/api/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{role}");
        let doc = body_json(response).await;
        assert_eq!(doc["info"]["title"], "Sightline");
        let (status, _) = send(
            &app,
            Request::get("/api/docs")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{role}");
        let (status, _) = send(
            &app,
            Request::get("/").body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{role}");
    }
}
