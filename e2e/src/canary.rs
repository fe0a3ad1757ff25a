//! A canary on loopback, as the operator runs one: a stable recognize process, candidate
//! recognize processes, and the front door (the upload role) reading a traffic file that
//! is updated the way the kubelet updates a mounted ConfigMap (a new directory, then a
//! symlink swapped by a rename). Plus the load the canary tests and the benchmark send
//! through the front door, and readers for the counters they check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::process::{ScratchDir, ServerProcess, free_port, require_server_binary};
use crate::{models, ort_lib, require};

/// The model name the traffic file gives (the metrics' `model` label).
pub const MODEL: &str = "efficientnet-lite0";

/// Flags of a recognize process serving `file` (in models/build) with one ONNX Runtime
/// thread, plus `extra`.
pub fn model_flags(file: &str, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        "--model".to_string(),
        models().join(file).display().to_string(),
        "--ort-lib".into(),
        ort_lib().display().to_string(),
        "--intra-threads".into(),
        "1".into(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

/// The pretrained EfficientNet-Lite0.
pub fn lite0() -> Vec<String> {
    model_flags("efficientnet-lite0.onnx", &[])
}

/// ResNet-50 with random weights (its own preprocessing, from its sidecar), answering with
/// the ImageNet label names Lite0 uses, so top-1 labels compare.
pub fn random_resnet() -> Vec<String> {
    let labels = models().join("efficientnet-lite0.labels.txt");
    model_flags(
        "resnet50-random.onnx",
        &["--labels", &labels.display().to_string()],
    )
}

/// What the canary needs on disk.
pub fn canary_files() -> Vec<PathBuf> {
    vec![
        ort_lib(),
        models().join("efficientnet-lite0.onnx"),
        models().join("efficientnet-lite0.labels.txt"),
        models().join("resnet50-random.onnx"),
        models().join("photos"),
    ]
}

/// A traffic file as the kubelet keeps a ConfigMap's key: `traffic.json` →
/// `..data/traffic.json`, `..data` → `..<version>`; a write makes a new version directory
/// and swaps `..data` with a rename, so a reader sees the old file or the new one, whole.
pub struct TrafficDir {
    root: PathBuf,
    version: u32,
}

impl TrafficDir {
    pub fn new(root: PathBuf) -> anyhow::Result<TrafficDir> {
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        Ok(TrafficDir { root, version: 0 })
    }

    /// The path the front door reads.
    pub fn path(&self) -> PathBuf {
        self.root.join("traffic.json")
    }

    pub fn write(&mut self, value: &Value) -> anyhow::Result<()> {
        self.write_bytes(value.to_string().as_bytes())
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let old = format!("..v{}", self.version);
        self.version += 1;
        let new = format!("..v{}", self.version);
        let dir = self.root.join(&new);
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("traffic.json"), bytes).context("write the traffic file")?;
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&new, &tmp).context("link ..data_tmp")?;
        std::fs::rename(&tmp, self.root.join("..data")).context("swap ..data")?;
        if self.version == 1 {
            std::os::unix::fs::symlink("..data/traffic.json", self.path())
                .context("link traffic.json")?;
        } else {
            let _ = std::fs::remove_dir_all(self.root.join(old));
        }
        Ok(())
    }
}

/// SIMULATION of cluster DNS and kube-proxy: the in-cluster Service URLs a traffic file
/// names (`http://<service>.<namespace>.svc:8080`) lead to the loopback process behind
/// each Service (`services`: Service URL → process URL). A Service with no process
/// behind it is an error (in a cluster its connections would be refused).
pub fn route_services(
    text: &str,
    services: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<String> {
    let mut file: Value = serde_json::from_str(text).context("the traffic file")?;
    for field in ["stable", "candidate"] {
        if let Some(url) = file[field].as_str() {
            let process = services
                .get(url)
                .ok_or_else(|| anyhow::anyhow!("no process behind the Service {url}"))?;
            file[field] = Value::String(process.clone());
        }
    }
    Ok(file.to_string())
}

/// SIMULATION of a kubelet projecting a ConfigMap key into a pod's volume: "eventually",
/// here once the ConfigMap has held the new contents for `delay` (the kubelet's sync
/// period plus its cache's TTL in a cluster,
/// <https://kubernetes.io/docs/concepts/configuration/configmap/#mounted-configmaps-are-updated-automatically>),
/// as a new `..data` directory swapped in whole ([`TrafficDir`]).
pub struct Projection {
    delay: Duration,
    /// The contents seen in the ConfigMap, and since when.
    seen: Option<(String, Instant)>,
    projected: Option<String>,
}

impl Projection {
    pub fn new(delay: Duration) -> Projection {
        Projection {
            delay,
            seen: None,
            projected: None,
        }
    }

    /// Takes the ConfigMap's `current` contents; writes them into `dir` (through
    /// [`route_services`]) once they have been there `delay`. Whether it wrote now.
    pub fn sync(
        &mut self,
        current: Option<&str>,
        dir: &mut TrafficDir,
        services: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<bool> {
        let Some(current) = current else {
            return Ok(false);
        };
        match &self.seen {
            Some((text, _)) if text == current => {}
            _ => self.seen = Some((current.to_string(), Instant::now())),
        }
        let due = self.seen.as_ref().is_some_and(|(text, since)| {
            since.elapsed() >= self.delay && self.projected.as_deref() != Some(text)
        });
        if !due {
            return Ok(false);
        }
        dir.write_bytes(route_services(current, services)?.as_bytes())?;
        self.projected = Some(current.to_string());
        Ok(true)
    }
}

/// A stable recognize process, candidates, and a front door reading a traffic file.
pub struct Canary {
    pub stable: ServerProcess,
    pub candidates: Vec<ServerProcess>,
    pub front: ServerProcess,
    pub traffic: TrafficDir,
    /// Distinguishes each write (the front door acts on changes only).
    writes: u32,
    pub dir: ScratchDir,
}

impl Canary {
    /// For tests: `None` after a loud notice when the binary or a model is missing (a
    /// failure under CI); panics when a process does not start.
    pub fn start(stable: &[String], candidates: &[Vec<String>]) -> Option<Canary> {
        let binary = require_server_binary()?;
        if !require(&canary_files()) {
            return None;
        }
        match Canary::launch(&binary, stable, candidates) {
            Ok(canary) => Some(canary),
            Err(e) => panic!("the canary did not start: {e:#}"),
        }
    }

    /// Starts the processes with `binary`: everything to stable until [`Canary::set`].
    pub fn launch(
        binary: &Path,
        stable: &[String],
        candidates: &[Vec<String>],
    ) -> anyhow::Result<Canary> {
        let dir = ScratchDir::new("canary")?;
        let traffic = TrafficDir::new(dir.path().join("traffic"))?;
        let stable = ServerProcess::start_named(
            binary,
            "recognize",
            "stable",
            free_port()?,
            stable,
            dir.path(),
        )
        .context("start the stable revision")?;
        let candidates = candidates
            .iter()
            .enumerate()
            .map(|(i, flags)| {
                ServerProcess::start_named(
                    binary,
                    "recognize",
                    &format!("candidate-{i}"),
                    free_port()?,
                    flags,
                    dir.path(),
                )
                .with_context(|| format!("start candidate {i}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let front_flags = vec![
            "--data-dir".to_string(),
            dir.path().join("front").display().to_string(),
            "--recognize-url".into(),
            stable.url(""),
            "--traffic-file".into(),
            traffic.path().display().to_string(),
            "--downstream-timeout-secs".into(),
            "5".into(),
        ];
        let front =
            ServerProcess::start_on(binary, "upload", free_port()?, &front_flags, dir.path())
                .context("start the front door")?;
        Ok(Canary {
            stable,
            candidates,
            front,
            traffic,
            writes: 0,
            dir,
        })
    }

    /// Writes the traffic file: `weight` percent to candidate `candidate`, `mirror` percent
    /// of the rest mirrored to it.
    pub fn write(&mut self, candidate: usize, weight: f64, mirror: f64) -> anyhow::Result<()> {
        let url = self
            .candidates
            .get(candidate)
            .map(|c| c.url(""))
            .ok_or_else(|| anyhow::anyhow!("no candidate {candidate}"))?;
        self.writes += 1;
        let file = json!({
            "model": MODEL,
            "stable": self.stable.url(""),
            "candidate": url,
            "candidateWeight": weight,
            "mirrorPercent": mirror,
            "revision": format!("rev{}", self.writes),
        });
        self.traffic.write(&file)
    }

    /// [`Canary::write`], then waits until the front door has applied it.
    pub async fn set(
        &mut self,
        client: &reqwest::Client,
        candidate: usize,
        weight: f64,
        mirror: f64,
    ) -> anyhow::Result<()> {
        let applied = |text: &str| {
            sum(
                text,
                "sightline_frontdoor_traffic_reloads_total",
                &[("outcome", "applied")],
            )
        };
        let before = applied(&scrape(client, &self.front.url("")).await?);
        self.write(candidate, weight, mirror)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if applied(&scrape(client, &self.front.url("")).await?) > before {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the front door did not apply the traffic file:\n{}",
                self.front.log_tail()
            );
        }
    }

    /// The end of each log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = format!(
            "--- stable ---\n{}\n--- front door ---\n{}",
            self.stable.log_tail(),
            self.front.log_tail()
        );
        for (i, c) in self.candidates.iter().enumerate() {
            out.push_str(&format!("\n--- candidate {i} ---\n{}", c.log_tail()));
        }
        out
    }
}

/// `GET {base}/metrics`.
pub async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await
        .context("read /metrics")
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Requests a recognize process answered on its recognition routes (whatever the status).
pub fn recognitions_served(text: &str) -> f64 {
    sum(
        text,
        "sightline_http_requests_total",
        &[("route", "/api/v1/recognize")],
    ) + sum(
        text,
        "sightline_http_requests_total",
        &[("route", "/v2/models/{name}/infer")],
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_select_by_labels() {
        let text = "# HELP x\n\
            sightline_frontdoor_requests_total{model=\"m\",revision=\"stable\",outcome=\"ok\"} 80\n\
            sightline_frontdoor_requests_total{model=\"m\",revision=\"candidate\",outcome=\"ok\"} 15\n\
            sightline_frontdoor_requests_total{model=\"m\",revision=\"candidate\",outcome=\"error\"} 5\n\
            sightline_frontdoor_requests_total_other 3\n\
            plain 7\n";
        let name = "sightline_frontdoor_requests_total";
        assert_eq!(sum(text, name, &[]), 100.0);
        assert_eq!(sum(text, name, &[("revision", "candidate")]), 20.0);
        assert_eq!(
            sum(text, name, &[("revision", "candidate"), ("outcome", "ok")]),
            15.0
        );
        assert_eq!(sum(text, "plain", &[]), 7.0);
    }

    #[test]
    fn a_traffic_dir_swaps_whole_files() {
        let scratch = ScratchDir::new("traffic-dir").expect("scratch");
        let mut dir = TrafficDir::new(scratch.path().join("t")).expect("dir");
        dir.write(&json!({"candidateWeight": 1})).expect("write");
        dir.write(&json!({"candidateWeight": 2})).expect("write");
        let text = std::fs::read_to_string(dir.path()).expect("read");
        assert_eq!(text, r#"{"candidateWeight":2}"#);
        assert!(
            std::fs::symlink_metadata(dir.path())
                .expect("meta")
                .is_symlink()
        );
    }

    #[test]
    fn services_lead_to_their_processes() {
        let services = std::collections::BTreeMap::from([
            (
                "http://m-recognize.ns.svc:8080".to_string(),
                "http://127.0.0.1:1".to_string(),
            ),
            (
                "http://m-recognize-canary.ns.svc:8080".to_string(),
                "http://127.0.0.1:2".to_string(),
            ),
        ]);
        let file = r#"{"model":"m","stable":"http://m-recognize.ns.svc:8080",
            "candidate":"http://m-recognize-canary.ns.svc:8080","candidateWeight":10,"generation":3}"#;
        let routed: Value =
            serde_json::from_str(&route_services(file, &services).expect("routes")).expect("json");
        assert_eq!(routed["stable"], "http://127.0.0.1:1");
        assert_eq!(routed["candidate"], "http://127.0.0.1:2");
        assert_eq!(
            routed["generation"], 3,
            "everything else as the operator wrote it"
        );
        let unknown = r#"{"stable":"http://other.ns.svc:8080"}"#;
        assert!(route_services(unknown, &services).is_err());
    }

    #[test]
    fn a_projection_waits_for_its_delay_and_writes_each_change_once() {
        let scratch = ScratchDir::new("projection").expect("scratch");
        let mut dir = TrafficDir::new(scratch.path().join("t")).expect("dir");
        let services = std::collections::BTreeMap::from([(
            "http://s".to_string(),
            "http://127.0.0.1:9".to_string(),
        )]);
        let mut kubelet = Projection::new(Duration::from_millis(50));
        let file = r#"{"stable":"http://s","generation":1}"#;
        assert!(!kubelet.sync(None, &mut dir, &services).expect("sync"));
        assert!(
            !kubelet.sync(Some(file), &mut dir, &services).expect("sync"),
            "too soon"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(kubelet.sync(Some(file), &mut dir, &services).expect("sync"));
        assert!(
            !kubelet.sync(Some(file), &mut dir, &services).expect("sync"),
            "once"
        );
        let text = std::fs::read_to_string(dir.path()).expect("read");
        assert!(text.contains("127.0.0.1:9"), "{text}");
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut l: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&mut l, 0.5), 51.0);
        assert!(quantile_ms(&mut [], 0.5).is_nan());
    }
}
