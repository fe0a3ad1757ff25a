//! The OpenAPI 3 document of the whole HTTP API at `/api/openapi.json`, and a reference
//! page generated from it at `/api/docs`. Both are embedded in the binary and served by
//! every role (each role serves its part of the API; `all` serves all of it).
//!
//! The document is `openapi.json` beside this file; `tests/openapi.rs` checks that it names
//! every route the routers declare, and the e2e suite validates it with
//! openapi-spec-validator and fuzzes a live server with schemathesis.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Stateless: served the same by every role.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/api/openapi.json", get(document))
        .route("/api/docs", get(docs))
}

async fn document() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DOCUMENT,
    )
        .into_response()
}

async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert!(doc["paths"]["/api/v1/recognize"]["post"].is_object());
    }

    #[test]
    fn readiness_documents_the_served_model_and_the_reasons() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        let schemas = &doc["components"]["schemas"];
        let model = &schemas["Ready"]["properties"]["model"]["properties"];
        for field in ["name", "sha256", "device", "classes", "load_seconds"] {
            assert!(model[field].is_object(), "Ready.model.{field}");
        }
        assert_eq!(model["input_shape"]["type"], "array");
        assert_eq!(model["input_shape"]["items"]["type"], "integer");
        let reasons = schemas["NotReady"]["properties"]["reason"]["description"]
            .as_str()
            .expect("the reasons are listed");
        assert!(reasons.contains("LabelsMismatch") && reasons.contains("ModelInvalid"));
    }
}
