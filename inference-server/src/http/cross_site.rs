//! Requests a browser sends on behalf of another site's page are refused when they would
//! change something.
//!
//! Any web page can make a browser POST a form (`multipart/form-data`, `text/plain`,
//! `application/x-www-form-urlencoded`) to `http://127.0.0.1:8080` — a "simple" request,
//! sent without asking the server first (CORS only hides the answer). A server with no API
//! keys (the default on a laptop) would store the image, run an evaluation or save a
//! result for that page. Browsers say where a request comes from: `Sec-Fetch-Site`
//! (`cross-site`, `same-site`, `same-origin`, `none`) and `Origin`. A request with another
//! method than `GET`, `HEAD` or `OPTIONS` is refused (403) when `Sec-Fetch-Site` says
//! another site, or when its `Origin` is neither this server's (the `Host` it was sent to)
//! nor `--public-url`'s, or is `null` (a sandboxed or local page). Clients that are not
//! browsers (curl, the SDKs, other services) send neither header and pass; so does the web
//! page this server serves. With API keys configured nothing changes for callers: a
//! browser never adds a key to a request another site makes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The origin `--public-url` names (`scheme://host[:port]`), if any.
#[derive(Debug, Clone, Default)]
pub struct PublicOrigin(pub Option<Arc<str>>);

impl PublicOrigin {
    pub fn from_url(url: Option<&str>) -> PublicOrigin {
        let origin = url
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| o != "null");
        PublicOrigin(origin.map(Arc::from))
    }
}

/// Whether a browser sent this request for a page of another site.
pub fn is_cross_site(method: &Method, headers: &HeaderMap, public: &PublicOrigin) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(site) = text("sec-fetch-site")
        && (site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Some(origin) = origin.to_str().ok().map(str::trim) else {
        return true;
    };
    if public.0.as_deref() == Some(origin) {
        return false;
    }
    // The origin's host and port against the Host the browser sent the request to.
    let authority = url::Url::parse(origin).ok().and_then(|u| {
        let host = u.host_str()?.to_ascii_lowercase();
        Some(match u.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        })
    });
    let host = text(header::HOST.as_str()).map(str::to_ascii_lowercase);
    match (authority, host) {
        (Some(authority), Some(host)) => authority != host,
        _ => true,
    }
}

/// The middleware: a 403 for [`is_cross_site`] requests.
pub async fn refuse(State(public): State<PublicOrigin>, request: Request, next: Next) -> Response {
    if is_cross_site(request.method(), request.headers(), &public) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": "a request from another site's page is refused: this server takes \
                          changes only from its own page and from clients that are not browsers"
            })),
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn other_sites_are_refused_this_one_and_non_browsers_pass() {
        let none = PublicOrigin::default();
        let post = Method::POST;
        let host = ("host", "127.0.0.1:8080");
        for refused in [
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![
                host,
                ("sec-fetch-site", "same-site"),
                ("origin", "http://127.0.0.1:9"),
            ],
            vec![("origin", "http://127.0.0.1:8080")],
            vec![host, ("origin", "http://127.0.0.1")],
        ] {
            assert!(
                is_cross_site(&post, &headers(&refused), &none),
                "{refused:?}"
            );
        }
        for passed in [
            vec![host],
            vec![
                host,
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![host, ("sec-fetch-site", "none")],
            vec![
                ("host", "LOCALHOST:8080"),
                ("origin", "http://localhost:8080"),
            ],
        ] {
            assert!(
                !is_cross_site(&post, &headers(&passed), &none),
                "{passed:?}"
            );
        }
        let evil = headers(&[host, ("origin", "https://evil.example")]);
        assert!(
            !is_cross_site(&Method::GET, &evil, &none),
            "reading stays open"
        );
        let public = PublicOrigin::from_url(Some("https://sightline.example.com/team/"));
        let behind_gateway = headers(&[
            ("host", "upload.ns.svc:8080"),
            ("origin", "https://sightline.example.com"),
        ]);
        assert!(!is_cross_site(&post, &behind_gateway, &public));
        assert!(is_cross_site(&post, &behind_gateway, &none));
    }
}
