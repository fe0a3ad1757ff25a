//! Helpers shared by the end-to-end tests and the benchmark: repository paths, a
//! `sightline-server` listening on a real loopback port, and the Python venv's tools.

pub mod batch_bench;
pub mod canary;
pub mod cpu_bench;
pub mod load;
pub mod mirror_bench;
pub mod netfault;
pub mod peers_bench;
pub mod proc_stat;
pub mod process;
pub mod prometheus;
pub mod raw_bound;
pub mod split;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sightline_server::cli::ServeArgs;
use sightline_server::server::Server;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn models() -> PathBuf {
    repo_root().join("models/build")
}

pub fn ort_lib() -> PathBuf {
    repo_root().join(".ort/libonnxruntime.so")
}

pub fn venv_python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// True when every path exists. Otherwise: under CI a failure, locally a loud skip.
pub fn require(paths: &[PathBuf]) -> bool {
    let missing: Vec<&PathBuf> = paths.iter().filter(|p| !p.exists()).collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "missing {missing:?}: run `make deps models` from the repository root"
    ));
    false
}

/// `sightline-server eval` of `model` on the labelled CSV `dataset`, writing the JSON report
/// to `json`, against `baseline`; its output (stdout has the summary).
pub fn run_eval(
    binary: &Path,
    model: &Path,
    dataset: &Path,
    json: &Path,
    baseline: &Path,
) -> std::io::Result<std::process::Output> {
    std::process::Command::new(binary)
        .arg("eval")
        .arg("--model")
        .arg(model)
        .arg("--ort-lib")
        .arg(ort_lib())
        .arg("--dataset")
        .arg(dataset)
        .arg("--json")
        .arg(json)
        .arg("--baseline")
        .arg(baseline)
        .env("RUST_BACKTRACE", "0")
        .output()
}

/// The batch size and the layout the server at `base` (`http://host:port`) serves with and
/// how they were decided, from its `/readyz`, as one line for a benchmark's notes.
pub fn batching_note(model: &str, base: &str) -> anyhow::Result<String> {
    let (status, body) = plain_http::get(&format!("{base}/readyz"))?;
    anyhow::ensure!(status == 200, "{base}/readyz answered {status}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body)?;
    let b = &body["model"]["batching"];
    let measured: Vec<String> = b["measured"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let ips = m["images_per_second"].as_f64().unwrap_or(f64::NAN);
            format!("{}: {ips:.1}", m["rows"])
        })
        .collect();
    let l = &body["model"]["layout"];
    Ok(format!(
        "{model}: server batch size {} ({}; images/s per batch size at warm-up: {}); \
         {} instance(s) × {} intra-op thread(s), spinning {}, lone session threads {}, \
         spinning {} (lone trial, p50 ms: {}); images decoded on the {} (decode trial, \
         images/s: {}) (layout {}; trial {} round(s) over {} candidates in {:.1} s)",
        b["max_batch_size"],
        b["mode"].as_str().unwrap_or("?"),
        if measured.is_empty() {
            "not measured".into()
        } else {
            measured.join(", ")
        },
        l["instances"],
        l["threads"],
        l["spinning"],
        l["lone_threads"],
        l["lone_spinning"],
        l["lone_trials"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!(
                "spinning {}: {:.2}",
                t["spinning"],
                t["p50_ms"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        l["decode"].as_str().unwrap_or("?"),
        l["decode_trials"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!(
                "{}: {:.1}",
                t["decode"].as_str().unwrap_or("?"),
                t["images_per_second"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        l["mode"].as_str().unwrap_or("?"),
        l["rounds"],
        l["trials"].as_array().map_or(0, Vec::len),
        l["seconds"].as_f64().unwrap_or(0.0),
    ))
}

/// `recognize` flags for the test classifier with a small drift baseline (60 answers), a
/// short live window and 30 answers for a figure, so that tests see drift within seconds.
pub fn drift_test_flags(window_seconds: u64) -> Vec<String> {
    [
        "--model",
        &models().join("test-classifier.onnx").display().to_string(),
        "--ort-lib",
        &ort_lib().display().to_string(),
        "--intra-threads",
        "1",
        "--drift-baseline-answers",
        "60",
        "--drift-window-seconds",
        &window_seconds.to_string(),
        "--drift-min-samples",
        "30",
    ]
    .map(String::from)
    .to_vec()
}

/// Something a test needs is not there: under CI a failure, locally a loud skip.
pub fn skip(message: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{message} (required under CI)");
    }
    eprintln!("\n*** SKIPPED (not in CI): {message} ***\n");
}

/// Serving flags: `recognize` on an ephemeral loopback port with `model` from models/build.
pub fn serve_args(model: &str, extra: &[&str]) -> anyhow::Result<ServeArgs> {
    let mut argv: Vec<std::ffi::OsString> = vec![
        "sightline-server".into(),
        "recognize".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--model".into(),
        models().join(model).into(),
        "--ort-lib".into(),
        ort_lib().into(),
    ];
    argv.extend(extra.iter().map(Into::into));
    sightline_server::cli::parse(argv)?
        .command
        .into_serve_args()
        .ok_or_else(|| anyhow::anyhow!("not a serving subcommand"))
}

/// A server running on its own runtime thread; stopped when dropped.
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Binds, starts serving on a dedicated multi-threaded runtime with `workers` threads,
    /// and waits until `/readyz` says ready (or fails after `timeout`).
    pub fn start(
        args: ServeArgs,
        workers: usize,
        timeout: Duration,
    ) -> anyhow::Result<RunningServer> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match Server::bind(&args).await {
                    Ok(server) => {
                        let addr = server
                            .local_addr()
                            .ok_or_else(|| anyhow::anyhow!("no local address"));
                        let _ = addr_tx.send(addr);
                        let _ = server
                            .serve(async move {
                                let _ = stopped.await;
                            })
                            .await;
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.into()));
                    }
                }
            });
        });
        let addr = addr_rx.recv()??;
        let server = RunningServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        };
        server.wait_ready(timeout)?;
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = plain_http::get(&self.url("/readyz"))?;
            if status == 200 {
                return Ok(());
            }
            if body.contains("\"reason\"") && !body.contains("ModelLoading") {
                anyhow::bail!("the server will not become ready: {body}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("not ready after {timeout:?}: {body}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A minimal blocking GET over std (no runtime needed), for readiness polling.
pub mod plain_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// `(status, body)` of `GET url` (plain `http://host:port/path` only).
    pub fn get(url: &str) -> anyhow::Result<(u16, String)> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("http:// URLs only"))?;
        let (host, path) = match rest.split_once('/') {
            Some((host, path)) => (host, format!("/{path}")),
            None => (rest, "/".to_string()),
        };
        let mut stream = TcpStream::connect(host)?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}
