//! The front door's evaluations: started on a recognize replica, kept in the store role's
//! database, so that any front door answers `GET /api/v1/evaluations/{id}` for any of them.
//!
//! Behind a Service, the recognize replica that runs an evaluation is one of several, and
//! a later `GET` may reach another (or another front door) that never heard of it. So the
//! front door asks recognize for the job's progress as a stream (`application/x-ndjson`:
//! one view a line, at least every second, the last one with the report) and writes each
//! view into the store role (`POST /internal/v1/evaluations/{id}`, at most every
//! [`WRITE_EVERY`] and always the last); `GET` reads it back from there, through whichever
//! front door. At most [`MAX_RELAYED`] evaluations are relayed by one front door at once.
//!
//! Every end is accounted for: a line that does not come within [`LINE_IDLE`], a stream
//! that ends before the last view, or a view over [`MAX_LINE_BYTES`] records the job as
//! `failed` (and dropping the stream stops it on recognize); a front door that goes away
//! stops writing, and the store shows the job `failed` once its view is stale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::eval::api::NDJSON;
use crate::http::error::AppError;
use crate::pipeline::Downstream;
use crate::store::http::EVALUATIONS;

/// Evaluations one front door relays at once.
pub const MAX_RELAYED: usize = 8;
/// Longest wait for the next view (recognize sends one every second).
pub const LINE_IDLE: Duration = Duration::from_secs(30);
/// Largest view (a report's confusion matrix grows with the square of the classes).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// How often a running job's view is written to the store.
pub const WRITE_EVERY: Duration = Duration::from_secs(2);

/// The relay's client and its bound. Cheap to share (`Arc`).
pub struct Relay {
    /// No overall timeout: an evaluation streams for as long as it runs ([`LINE_IDLE`]
    /// bounds each wait instead).
    client: reqwest::Client,
    slots: Arc<Semaphore>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            slots: Arc::new(Semaphore::new(MAX_RELAYED)),
        }
    }
}

/// Reads a stream of `\n`-ended lines, each within [`MAX_LINE_BYTES`] and [`LINE_IDLE`].
struct Lines<S> {
    chunks: S,
    buffer: BytesMut,
}

impl<S> Lines<S>
where
    S: futures::Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    /// The next line; `Ok(None)` at the end of the stream.
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(at + 1).freeze();
                return Ok(Some(line.slice(..at)));
            }
            if self.buffer.len() > MAX_LINE_BYTES {
                return Err(format!(
                    "a progress line is larger than {MAX_LINE_BYTES} bytes"
                ));
            }
            match tokio::time::timeout(LINE_IDLE, self.chunks.next()).await {
                Err(_) => return Err(format!("no progress for {LINE_IDLE:?}")),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(format!("the stream broke: {}", e.without_url())),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }
}

fn view_of(line: &[u8]) -> Result<Value, String> {
    let view: Value = serde_json::from_slice(line).map_err(|e| format!("not a job view: {e}"))?;
    let ok = view["id"]
        .as_str()
        .is_some_and(crate::store::evaluations::is_evaluation_id);
    if ok {
        Ok(view)
    } else {
        Err("a job view without a usable id".into())
    }
}

/// `POST /api/v1/evaluations` through the front door: `body` (the zip, with `headers`:
/// its content type, the caller's credentials and request id) goes to the recognize
/// service at `recognize`, and the job's views to `store`. Answers `202` with the first
/// view and its `Location` once the store holds it; recognize's refusal as it is.
pub async fn start(
    relay: &Relay,
    recognize: &Downstream,
    store: Arc<Downstream>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(slot) = relay.slots.clone().try_acquire_owned() else {
        return AppError::Unavailable {
            message: format!("{MAX_RELAYED} evaluations are being relayed; retry later"),
            retry_after: Some(5),
        }
        .into_response();
    };
    let url = format!("{}/api/v1/evaluations", recognize.base());
    let sent = relay
        .client
        .post(url)
        .headers(headers.clone())
        .header(header::ACCEPT, NDJSON)
        .body(body)
        .send();
    let response = match tokio::time::timeout(recognize.policy().timeout * 6, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return unavailable(format!("the recognize service: {}", e.without_url()));
        }
        Err(_) => return unavailable("the recognize service did not answer".into()),
    };
    let status = response.status();
    if status != StatusCode::OK {
        return passed_back(status, response).await;
    }
    let mut lines = Lines {
        chunks: response.bytes_stream(),
        buffer: BytesMut::new(),
    };
    let first = match lines.next().await.and_then(|l| {
        l.ok_or_else(|| "the stream ended at once".to_string())
            .and_then(|l| view_of(&l))
    }) {
        Ok(view) => view,
        Err(why) => {
            return AppError::BadGateway(format!("the recognize service's evaluation: {why}"))
                .into_response();
        }
    };
    let id = first["id"].as_str().unwrap_or_default().to_string();
    if let Err(e) = write(&store, &id, &first, &headers).await {
        // Dropping `lines` here stops the job on recognize.
        return unavailable(format!("the evaluation cannot be recorded: {e}"));
    }
    let location = format!("/api/v1/evaluations/{id}");
    let view = first.clone();
    tokio::spawn(async move {
        let _slot = slot;
        follow(lines, &store, &id, first, &headers).await;
    });
    let mut answer = (StatusCode::ACCEPTED, axum::Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        answer.headers_mut().insert(header::LOCATION, value);
    }
    answer
}

/// Reads the job's views to the end, writing them to the store as it goes.
async fn follow<S>(
    mut lines: Lines<S>,
    store: &Downstream,
    id: &str,
    mut last: Value,
    headers: &HeaderMap,
) where
    S: futures::Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    let mut written = Instant::now();
    let failure = loop {
        match lines.next().await {
            Ok(Some(line)) => match view_of(&line) {
                Ok(view) if view["id"] == last["id"] => {
                    let ended = view["status"] != "running";
                    last = view;
                    if ended {
                        let _ = write(store, id, &last, headers).await;
                        return;
                    }
                    if written.elapsed() >= WRITE_EVERY {
                        if let Err(e) = write(store, id, &last, headers).await {
                            tracing::warn!(id, error = %e, "cannot record an evaluation's progress");
                        }
                        written = Instant::now();
                    }
                }
                Ok(_) => break "the recognize service switched jobs mid-stream".to_string(),
                Err(why) => break why,
            },
            Ok(None) => break "the recognize replica running it went away".to_string(),
            Err(why) => break why,
        }
    };
    tracing::warn!(id, error = %failure, "a relayed evaluation ended without its report");
    last["status"] = "failed".into();
    last["error"] = format!("the evaluation was lost: {failure}; start it again").into();
    let _ = write(store, id, &last, headers).await;
}

async fn write(
    store: &Downstream,
    id: &str,
    view: &Value,
    headers: &HeaderMap,
) -> Result<(), crate::pipeline::DownstreamError> {
    let body = serde_json::to_vec(view).unwrap_or_default();
    store
        .post::<Value>(
            &format!("{EVALUATIONS}{id}"),
            "application/json",
            body.into(),
            headers,
        )
        .await
        .map(|_| ())
}

fn unavailable(message: String) -> Response {
    AppError::unavailable(message).into_response()
}

/// Recognize's refusal as it is (within 64 KiB).
async fn passed_back(status: StatusCode, response: reqwest::Response) -> Response {
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(10), chunks.next()).await
    {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            body.truncate(64 * 1024);
            break;
        }
    }
    let mut answer = Response::new(Body::from(body));
    *answer.status_mut() = status;
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::RETRY_AFTER, retry_after),
    ] {
        if let Some(value) = value {
            answer.headers_mut().insert(name, value);
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ResultStore;
    use crate::store::http::StoreState;

    /// A store role on loopback (SQLite in `dir`) and a downstream for it.
    async fn store(dir: &std::path::Path) -> Arc<Downstream> {
        let url = format!("sqlite://{}?mode=rwc", dir.join("s.db").display());
        let results = ResultStore::connect(&url).await.expect("a store");
        let metrics = crate::metrics::Metrics::new("").pipeline;
        let app = crate::store::http::router().with_state(StoreState {
            results,
            metrics: metrics.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Arc::new(
            Downstream::new(
                "store",
                &base,
                crate::pipeline::CallPolicy::default(),
                metrics,
            )
            .expect("a downstream"),
        )
    }

    fn lines(
        text: &'static str,
    ) -> Lines<impl futures::Stream<Item = Result<Bytes, reqwest::Error>> + Unpin> {
        // Chunks that split lines anywhere, as a network does.
        let chunks: Vec<Result<Bytes, reqwest::Error>> = text
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Lines {
            chunks: futures::stream::iter(chunks),
            buffer: BytesMut::new(),
        }
    }

    async fn stored(store: &Downstream, id: &str) -> Value {
        let answer = store
            .forward(
                axum::http::Method::GET,
                &format!("{EVALUATIONS}{id}"),
                HeaderMap::new(),
                Bytes::new(),
                1 << 20,
            )
            .await
            .expect("an answer");
        serde_json::from_slice(&answer.body).expect("json")
    }

    #[tokio::test]
    async fn the_last_view_is_recorded_and_a_stream_cut_short_is_a_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let first: Value = serde_json::json!({"id": "aaaa", "status": "running"});
        let finished = lines(
            "{\"id\":\"aaaa\",\"status\":\"running\"}\n{\"id\":\"aaaa\",\"status\":\"succeeded\",\"report\":{\"accuracy\":1.0}}\n",
        );
        follow(finished, &store, "aaaa", first, &HeaderMap::new()).await;
        let view = stored(&store, "aaaa").await;
        assert_eq!(view["status"], "succeeded", "{view}");
        assert_eq!(view["report"]["accuracy"], 1.0);

        let first: Value = serde_json::json!({"id": "bbbb", "status": "running"});
        let cut = lines("{\"id\":\"bbbb\",\"status\":\"running\"}\n{\"id\":\"bb");
        follow(cut, &store, "bbbb", first, &HeaderMap::new()).await;
        let view = stored(&store, "bbbb").await;
        assert_eq!(view["status"], "failed", "{view}");
        assert!(
            view["error"]
                .as_str()
                .is_some_and(|e| e.contains("went away")),
            "{view}"
        );
    }
}
