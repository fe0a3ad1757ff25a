//! With API keys configured, every route the routers declare (read from the source, the
//! same list the OpenAPI test checks, so a new route is covered the moment it exists) needs
//! a key — except an explicit, reviewed list of open routes. A route added without auth, or
//! a route opened by accident, fails here.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use support::{OPEN_ROUTES as OPEN, send};

const KEY: &str = "route-test-key-0123456789";

/// A concrete URI for a route template.
fn concrete(route: &str) -> String {
    route
        .replace("{id}", &"ab".repeat(32))
        .replace("{name}", "m")
        .replace("{version}", "1")
}

fn request(method: &str, uri: &str, auth: Option<(&str, &str)>) -> Request<Body> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some((name, value)) = auth {
        builder = builder.header(name, value);
    }
    builder.body(Body::from("{}")).expect("request")
}

#[tokio::test]
async fn every_route_but_the_open_ones_needs_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `all` serves every router; the model is not loaded (its routes answer 503, not 401).
    let app = support::unloaded_app("all", dir.path(), &["--api-keys", &format!("ci:{KEY}")]).await;

    let routes = support::declared_routes();
    assert!(routes.len() > 20, "found only {routes:?}");
    let mut open_found = Vec::new();
    for (method, route) in &routes {
        let uri = concrete(route);
        let (anonymous, _) = send(&app, request(method, &uri, None)).await;
        let (with_key, _) = send(
            &app,
            request(
                method,
                &uri,
                Some(("authorization", &format!("Bearer {KEY}"))),
            ),
        )
        .await;
        let (with_header, _) = send(&app, request(method, &uri, Some(("x-api-key", KEY)))).await;
        assert_ne!(
            with_key,
            StatusCode::UNAUTHORIZED,
            "{method} {route} with a key"
        );
        assert_ne!(
            with_header,
            StatusCode::UNAUTHORIZED,
            "{method} {route} with X-API-Key"
        );
        if anonymous == StatusCode::UNAUTHORIZED {
            for (name, value) in [
                ("authorization", "Bearer wrong-key-0123456789".to_string()),
                ("authorization", format!("Basic {KEY}")),
                ("authorization", format!("Bearer {KEY}x")),
                ("x-api-key", KEY[..KEY.len() - 1].to_string()),
                ("x-api-key", String::new()),
            ] {
                let bad = request(method, &uri, Some((name, value.as_str())));
                let (status, _) = send(&app, bad).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {route} {name}: {value}"
                );
            }
        } else {
            open_found.push((method.as_str(), route.as_str()));
        }
    }
    let mut expected: Vec<(&str, &str)> = OPEN.to_vec();
    expected.sort();
    open_found.sort();
    assert_eq!(
        open_found, expected,
        "the routes answering without a key differ from the reviewed open list"
    );
    // The 404 fallback for unknown paths needs a key too (no probing without one).
    let (status, _) = send(&app, request("get", "/api/v1/nothing-here", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
