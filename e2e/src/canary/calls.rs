//! The load the canary tests and the benchmark send through the front door: uploads of
//! photo tiles, each call's outcome (`Shot`), and latency quantiles.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::models;

/// One recognition call through the front door.
#[derive(Debug, Clone)]
pub enum Call {
    /// `POST /api/v1/recognize` with the image bytes.
    Bytes(Bytes),
    /// `POST /api/v1/recognize` as a multipart form.
    Multipart(Bytes),
    /// The seed's `POST /api/images/recognition` with the URL of an uploaded image.
    Seed(String),
}

/// One call's result.
#[derive(Debug, Clone)]
pub struct Shot {
    /// 0 when no HTTP answer came.
    pub status: u16,
    pub top1: Option<String>,
    /// The model named in the answer (not in the seed's).
    pub model: Option<String>,
    pub latency: Duration,
    pub error: Option<String>,
}

impl Shot {
    pub fn ok(&self) -> bool {
        self.status == 200 && self.top1.is_some()
    }

    /// A line for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            self.error.as_deref().unwrap_or("(no top-1)")
        )
    }
}

/// `None` when every call was answered; otherwise how many failed, with the first few.
pub fn failures(shots: &[Shot]) -> Option<String> {
    let failed: Vec<String> = shots
        .iter()
        .filter(|s| !s.ok())
        .take(5)
        .map(Shot::describe)
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} of {} calls failed, e.g. {failed:#?}",
            shots.iter().filter(|s| !s.ok()).count(),
            shots.len()
        )
    })
}

/// Uploads `images` through the front door; the URLs it answered, for [`Call::Seed`].
pub async fn upload_all(
    client: &reqwest::Client,
    front: &str,
    images: &[Vec<u8>],
) -> anyhow::Result<Vec<String>> {
    let mut urls = Vec::new();
    for image in images {
        let response = client
            .post(format!("{front}/api/v1/images"))
            .header("content-type", "image/png")
            .body(image.clone())
            .send()
            .await
            .context("upload")?;
        anyhow::ensure!(
            response.status().is_success(),
            "upload: {}",
            response.status()
        );
        let body: Value = response.json().await.context("upload answer")?;
        let url = body["url"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no url in {body}"))?;
        urls.push(url.to_string());
    }
    Ok(urls)
}

async fn one(client: &reqwest::Client, front: &str, call: &Call) -> Shot {
    let started = Instant::now();
    let request = match call {
        Call::Bytes(image) => client
            .post(format!("{front}/api/v1/recognize"))
            .header("content-type", "image/png")
            .body(image.clone()),
        Call::Multipart(image) => {
            let part = reqwest::multipart::Part::stream(image.clone()).file_name("image.png");
            client
                .post(format!("{front}/api/v1/recognize"))
                .multipart(reqwest::multipart::Form::new().part("image", part))
        }
        Call::Seed(url) => client
            .post(format!("{front}/api/images/recognition"))
            .json(&json!({ "url": url })),
    };
    let failed = |status: u16, error: String| Shot {
        status,
        top1: None,
        model: None,
        latency: started.elapsed(),
        error: Some(error),
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return failed(0, e.to_string()),
    };
    let status = response.status().as_u16();
    let body: Value = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) })),
        Err(e) => return failed(status, e.to_string()),
    };
    let latency = started.elapsed();
    let first = match call {
        Call::Seed(_) => &body[0],
        _ => &body["predictions"][0],
    };
    Shot {
        status,
        top1: first["label"].as_str().map(str::to_string),
        model: body["model"]["name"].as_str().map(str::to_string),
        latency,
        error: (status != 200).then(|| body.to_string()),
    }
}

/// `n` calls through the front door at `front`, `concurrency` at a time, call `i` being
/// `calls[i % calls.len()]`; `done` counts the answered ones as they come.
pub async fn drive(
    client: &reqwest::Client,
    front: &str,
    calls: Arc<Vec<Call>>,
    n: usize,
    concurrency: usize,
    done: Arc<AtomicUsize>,
) -> Vec<Shot> {
    if calls.is_empty() {
        return Vec::new();
    }
    futures::stream::iter(0..n)
        .map(|i| {
            let calls = calls.clone();
            let done = done.clone();
            async move {
                let shot = one(client, front, &calls[i % calls.len()]).await;
                done.fetch_add(1, Ordering::SeqCst);
                shot
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// Distinct small photos: tiles of the photos in models/build/photos (some mirrored), as
/// PNGs of at most `side` pixels a side; at most `max` of them.
pub fn photo_tiles(side: u32, max: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = models().join("photos");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let photo = image::open(&path).with_context(|| format!("decode {}", path.display()))?;
        let (w, h) = (photo.width(), photo.height());
        let tile = w.min(h) * 2 / 3;
        for (fx, fy) in [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)] {
            let x = (w - tile) * fx / 2;
            let y = (h - tile) * fy / 2;
            let crop = photo.crop_imm(x, y, tile, tile).thumbnail(side, side);
            for flip in [false, true] {
                let img = if flip { crop.fliph() } else { crop.clone() };
                let mut png = std::io::Cursor::new(Vec::new());
                img.write_to(&mut png, image::ImageFormat::Png)
                    .context("encode a tile")?;
                out.push(png.into_inner());
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// The `q` quantile of `latencies` (nearest rank), in milliseconds.
pub fn quantile_ms(latencies: &mut [Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    latencies.sort();
    let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
    latencies[i.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}
