//! Fetching an image by URL for recognition — only from places the operator allowed.
//!
//! A recognize role must not become a proxy into the cluster network (server-side request
//! forgery). A URL is fetched only when it lies under one of the allowed prefixes: the
//! upload service it was given (`--upload-url`) and an explicit `--fetch-allowlist`. The
//! check is on the parsed URL (scheme, host, port, normalised path), user info is refused,
//! redirects are not followed, and the body is read with a size limit and a timeout. A host
//! name is then checked by the addresses it resolves to, once, and the connection goes to
//! exactly those ([`crate::pinned_dns`]: no DNS rebinding).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use url::Url;

use crate::pinned_dns::{Guard, Lookup, Refused, Resolver, SystemLookup};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0:?} is not a valid absolute URL")]
    InvalidUrl(String),
    /// The allowed places are the operator's configuration (internal hosts, buckets): the
    /// refusal does not list them.
    #[error(
        "the URL is outside the image store: this service fetches only the images of its \
         image store and of the places its operator allowed"
    )]
    NotAllowed,
    #[error("the image store answered {status} for this URL")]
    Status { status: u16 },
    #[error("the image is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the image store could not be reached: {0}")]
    Unreachable(String),
    #[error("the URL is refused: {0}")]
    Address(Refused),
}

/// The allowed prefixes plus an HTTP client that follows no redirects.
#[derive(Clone)]
pub struct ImageSource {
    allowed: Vec<Url>,
    client: reqwest::Client,
    max_bytes: usize,
    guard: Arc<Guard>,
}

impl ImageSource {
    pub fn new(
        allowed: &[String],
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, SourceError> {
        Self::with_lookup(allowed, max_bytes, timeout, Arc::new(SystemLookup))
    }

    /// [`ImageSource::new`] resolving host names with `lookup`.
    pub fn with_lookup(
        allowed: &[String],
        max_bytes: usize,
        timeout: Duration,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, SourceError> {
        let allowed = allowed
            .iter()
            .map(|prefix| {
                let mut url =
                    Url::parse(prefix).map_err(|_| SourceError::InvalidUrl(prefix.clone()))?;
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        let names = allowed.iter().filter_map(|u| match u.host() {
            Some(url::Host::Domain(name)) => Some(name.to_string()),
            _ => None,
        });
        let guard = Arc::new(Guard::new(names, lookup));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(guard.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| SourceError::Unreachable(e.to_string()))?;
        Ok(ImageSource {
            allowed,
            client,
            max_bytes,
            guard,
        })
    }

    /// Resolves the allowed host names now, so each one's network is fixed before the
    /// first fetch (see [`crate::pinned_dns`]).
    pub async fn learn(&self) {
        self.guard.learn().await;
    }

    /// The parsed URL when it is under an allowed prefix.
    pub fn check(&self, text: &str) -> Result<Url, SourceError> {
        let url = Url::parse(text).map_err(|_| SourceError::InvalidUrl(text.to_string()))?;
        let ok = matches!(url.scheme(), "http" | "https")
            && url.username().is_empty()
            && url.password().is_none()
            && self.allowed.iter().any(|prefix| is_under(&url, prefix));
        if ok {
            Ok(url)
        } else {
            Err(SourceError::NotAllowed)
        }
    }

    /// Downloads the image at an allowed URL, at most `max_bytes`.
    pub async fn fetch(&self, text: &str) -> Result<bytes::Bytes, SourceError> {
        let url = self.check(text)?;
        let response = self.client.get(url).send().await.map_err(|e| {
            match crate::pinned_dns::refused_in(&e) {
                Some(refused) => SourceError::Address(refused),
                None => SourceError::Unreachable(e.without_url().to_string()),
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(SourceError::Status {
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(SourceError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| SourceError::Unreachable(e.without_url().to_string()))?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(SourceError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.into())
    }
}

/// Same scheme, host and port, and the (already normalised) path starts with the prefix's.
fn is_under(url: &Url, prefix: &Url) -> bool {
    url.scheme() == prefix.scheme()
        && url.host_str() == prefix.host_str()
        && url.port_or_known_default() == prefix.port_or_known_default()
        && url.path().starts_with(prefix.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ImageSource {
        ImageSource::new(
            &["http://upload:8080/api/v1/images".into()],
            1024,
            Duration::from_secs(1),
        )
        .expect("valid prefixes")
    }

    #[test]
    fn only_urls_under_the_store_are_allowed() {
        let s = source();
        assert!(s.check("http://upload:8080/api/v1/images/abc").is_ok());
        for bad in [
            "http://upload:8080/api/v1/imagesX/abc",
            "http://upload:8080/api/v1/images/../../admin",
            "http://upload:8080/api/v1/images/%2e%2e/%2e%2e/admin",
            "http://upload:9090/api/v1/images/abc",
            "https://upload:8080/api/v1/images/abc",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8080/api/v1/images/abc",
            "http://user:pw@upload:8080/api/v1/images/abc",
            "file:///etc/passwd",
            "gopher://upload:8080/api/v1/images/abc",
            "/api/v1/images/abc",
            "not a url",
        ] {
            assert!(s.check(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn with_no_prefixes_nothing_is_fetched() {
        let s = ImageSource::new(&[], 10, Duration::from_secs(1)).expect("ok");
        assert!(matches!(
            s.check("http://x/y"),
            Err(SourceError::NotAllowed)
        ));
    }
}
