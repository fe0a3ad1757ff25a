//! A canary on loopback, as the operator runs one: a stable recognize process, candidate
//! recognize processes, and the front door (the upload role) reading a traffic file that
//! is updated the way the kubelet updates a mounted ConfigMap (a new directory, then a
//! symlink swapped by a rename). Plus the load the canary tests and the benchmark send
//! through the front door, and readers for the counters they check.

mod calls;
mod counters;
mod traffic_file;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::process::{ScratchDir, ServerProcess, free_port, require_server_binary};
use crate::{models, ort_lib, require};

pub use calls::{Call, Shot, drive, failures, photo_tiles, quantile_ms, upload_all};
pub use counters::{recognitions_served, scrape, sum};
pub use traffic_file::{Projection, TrafficDir, route_services};

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

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
