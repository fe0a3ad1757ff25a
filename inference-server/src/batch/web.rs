//! `--input https://…/list.txt`: a listing file on a web server, one image URL per line
//! (absolute, or relative to the listing's own URL; blank lines and `#` comments skipped),
//! each image fetched with a GET. The names results carry are the lines as written.

use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use sightline_batch::listing::Item;
use sightline_batch::run::Reader;

/// Largest listing accepted (about 80,000 lines of 200 bytes).
pub const MAX_LISTING_BYTES: u64 = 16 * 1024 * 1024;

/// Why a listing cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum WebListError {
    #[error("cannot fetch the listing {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("the listing {url}, line {line}: {text:?} is not a URL")]
    BadLine {
        url: String,
        line: usize,
        text: String,
    },
}

/// The images a listing names.
pub struct WebList {
    url: reqwest::Url,
    http: reqwest::Client,
}

impl WebList {
    pub fn new(url: &str) -> Result<WebList, WebListError> {
        let fetch = |message: String| WebListError::Fetch {
            url: url.to_string(),
            message,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| fetch(e.to_string()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| fetch(e.to_string()))?;
        Ok(WebList { url: parsed, http })
    }

    /// The listing's images, sorted by name.
    pub async fn list(&self) -> Result<Vec<Item>, WebListError> {
        let url = self.url.to_string();
        let body = get_bounded(&self.http, self.url.clone(), MAX_LISTING_BYTES)
            .await
            .map_err(|message| WebListError::Fetch {
                url: url.clone(),
                message,
            })?;
        let text = String::from_utf8_lossy(&body);
        let mut items = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let image = self
                .url
                .join(line)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| WebListError::BadLine {
                    url: url.clone(),
                    line: i + 1,
                    text: line.chars().take(200).collect(),
                })?;
            items.push(Item {
                name: line.to_string(),
                path: image.as_str().into(),
            });
        }
        items.sort();
        items.dedup_by(|a, b| a.name == b.name);
        Ok(items)
    }
}

/// The body of `GET url`, refused past `max` bytes (by its length header or as it comes).
async fn get_bounded(
    http: &reqwest::Client,
    url: reqwest::Url,
    max: u64,
) -> Result<Vec<u8>, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if response.content_length().is_some_and(|n| n > max) {
        return Err(format!("larger than {max} bytes"));
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if (body.len() + chunk.len()) as u64 > max {
            return Err(format!("larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Reader for WebList {
    fn read<'a>(&'a self, item: &'a Item, max: u64) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let url =
                reqwest::Url::parse(&item.path.to_string_lossy()).map_err(|e| e.to_string())?;
            get_bounded(&self.http, url, max).await
        })
    }

    fn url(&self, item: &Item) -> String {
        item.path.to_string_lossy().into_owned()
    }
}
