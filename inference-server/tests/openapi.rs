//! The OpenAPI document at `/api/openapi.json` names every route the routers declare (read
//! from the source, so a new route without documentation fails here), nothing more, and is
//! served with the docs page by every role, open even when API keys are required.

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use support::{body_json, send};

/// `(METHOD, path)` of every `.route("path", get(..).post(..))` in the crate's source.
fn declared_routes() -> BTreeSet<(String, String)> {
    let src = support::repo_root().join("inference-server/src");
    let mut files = vec![src];
    let mut routes = BTreeSet::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                files.push(entry.expect("entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join("");
        for chunk in flat.split(".route(\"").skip(1) {
            let Some((route, rest)) = chunk.split_once('"') else {
                continue;
            };
            // The handlers up to the closing parenthesis of `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let handlers = &rest[..end];
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!(",{method}("))
                    || handlers.contains(&format!(".{method}("))
                {
                    routes.insert((method.to_string(), route.to_string()));
                }
            }
        }
    }
    routes
}

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
    let declared = declared_routes();
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
        let data = dir.path().display().to_string();
        let argv: Vec<std::ffi::OsString> = [
            "sightline-server",
            role,
            "--data-dir",
            &data,
            "--api-keys",
            "secret",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let args = sightline_server::cli::parse(argv)
            .expect("flags")
            .command
            .into_serve_args()
            .expect("a serving subcommand");
        let state = sightline_server::server::role_state(&args, "m", None)
            .await
            .expect("state");
        let app = sightline_server::http::app(state);
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
