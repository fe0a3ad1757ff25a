//! The traffic file on disk as a pod sees it: kept the way the kubelet keeps a mounted
//! ConfigMap key, projected into it after the kubelet's delay, with the in-cluster Service
//! URLs it names routed to loopback processes (SIMULATIONS of the kubelet, cluster DNS and
//! kube-proxy).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

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
