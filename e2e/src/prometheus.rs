//! A real Prometheus (Debian's `prometheus` package) for tests: it scrapes loopback
//! targets every second, evaluates a rules file every second, and answers queries and
//! alert states through its HTTP API. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Where `name` is on `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// What to say when Prometheus is missing.
pub const HINT: &str =
    "`make deps` installs Debian's prometheus package as root (sudo apt-get install prometheus)";

/// One running Prometheus.
pub struct Prometheus {
    base: String,
    child: Child,
    log: PathBuf,
    client: reqwest::Client,
}

/// A scrape job: its name and the `host:port` it scrapes.
pub struct Target<'a> {
    pub job: &'a str,
    pub address: String,
}

impl Prometheus {
    /// Starts `binary` on `port` with its data and log under `dir`, scraping `targets` and
    /// evaluating `rules` (a plain Prometheus rules file), and waits until it is ready.
    pub fn start(
        binary: &Path,
        dir: &Path,
        port: u16,
        targets: &[Target<'_>],
        rules: &Path,
    ) -> anyhow::Result<Prometheus> {
        let jobs: String = targets
            .iter()
            .map(|t| {
                format!(
                    "  - job_name: {}\n    static_configs:\n      - targets: ['{}']\n",
                    t.job, t.address
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\nscrape_configs:\n{jobs}",
            rules.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("write {}", config_path.display()))?;
        let log = dir.join("prometheus.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("clone the log file")?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut prometheus = Prometheus {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("HTTP client")?,
        };
        prometheus.wait_ready(Duration::from_secs(30))?;
        Ok(prometheus)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/-/ready", self.base);
        loop {
            if let Some(status) = self.child.try_wait().context("wait for prometheus")? {
                bail!("prometheus exited with {status}:\n{}", self.log());
            }
            if let Ok((200, _)) = crate::plain_http::get(&url) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The result vector of an instant query.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .with_context(|| format!("query {expr}"))?
            .json()
            .await
            .context("Prometheus answers JSON")?;
        if v["status"] != "success" {
            bail!("{expr}: {}: {}", v["errorType"], v["error"]);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// `(labels, value)` of each series `expr` returns.
    pub async fn values(&self, expr: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        Ok(self
            .query(expr)
            .await?
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect())
    }

    /// The alerts Prometheus holds now (pending or firing), as its `/api/v1/alerts` lists them.
    pub async fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .client
            .get(format!("{}/api/v1/alerts", self.base))
            .send()
            .await
            .context("GET /api/v1/alerts")?
            .json()
            .await
            .context("Prometheus answers JSON")?;
        Ok(v["data"]["alerts"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
