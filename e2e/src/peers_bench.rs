//! `sightline-bench --peers` (`make bench-peers`): Sightline against four Python model
//! servers — KServe's ModelServer, BentoML, LitServe and NVIDIA PyTriton — serving the same
//! model with the same preprocessing and the same ONNX Runtime thread count.
//!
//! One server at a time runs as a process of its own (Sightline: the release
//! `sightline-server recognize` beside this binary, result cache off; a peer:
//! `bench/peers/<peer>_server.py` from `.venv-peers`), on a free loopback port. The bench
//! waits until it answers the photo, then for each photo (a small one and a 12-MP one) and
//! each concurrency `c`: a warm-up, then `c` clients in a closed loop (each sends its next
//! request when the last one answered; reqwest, this process) for `requests` requests. Every
//! answer's top-1 class must equal Sightline's on that photo. Per cell: requests a second
//! (requests ÷ wall time), p50 and p99 latency as the client sees it, and the server's CPU
//! time per request: utime + stime of the server's whole process tree (from /proc) after the
//! cell minus before, ÷ requests. The table ends each cell with Sightline ÷ the best peer.
//!
//! Each server gets the JPEG its own natural way: Sightline the raw body; KServe V1 JSON with
//! the image as base64; BentoML a multipart file upload to a batchable API; LitServe JSON
//! with base64; PyTriton the Open Inference Protocol with the bytes in Triton's binary-data
//! extension (as Triton's own client sends them). The base64 and multipart bodies are made
//! once per photo, so the clients pay no encoding per request.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::mirror_bench::cpu_model;
use crate::proc_stat::{clock_ticks_per_second, process_tree_ticks};
use crate::process::free_port;
use crate::{models, repo_root};

/// A server the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Sightline,
    KServe,
    BentoMl,
    LitServe,
    PyTriton,
}

impl Server {
    /// The four Python servers, in the order they run.
    pub const PEERS: [Server; 4] = [
        Server::KServe,
        Server::BentoMl,
        Server::LitServe,
        Server::PyTriton,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Server::Sightline => "sightline",
            Server::KServe => "kserve",
            Server::BentoMl => "bentoml",
            Server::LitServe => "litserve",
            Server::PyTriton => "pytriton",
        }
    }

    /// A name as `--peers-list` spells it.
    pub fn parse(name: &str) -> anyhow::Result<Server> {
        Self::PEERS
            .into_iter()
            .find(|s| s.name() == name.trim().to_ascii_lowercase())
            .with_context(|| {
                format!("unknown peer {name:?} (kserve, bentoml, litserve or pytriton)")
            })
    }

    /// Where the server takes a photo.
    fn path(self) -> &'static str {
        match self {
            Server::Sightline => "/api/v1/recognize?top_k=5",
            Server::KServe => "/v1/models/efficientnet-lite0:predict",
            Server::BentoMl => "/classify",
            Server::LitServe => "/predict",
            Server::PyTriton => "/v2/models/efficientnet-lite0/infer",
        }
    }

    /// The request for `jpeg`, in this server's own format.
    fn request(self, jpeg: &[u8]) -> Request {
        let json = |value: serde_json::Value| Request {
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: Bytes::from(value.to_string()),
        };
        match self {
            Server::Sightline => Request {
                content_type: "image/jpeg".into(),
                headers: Vec::new(),
                body: Bytes::copy_from_slice(jpeg),
            },
            Server::KServe => json(serde_json::json!({
                "instances": [{"image_bytes": {"b64": base64(jpeg)}}]
            })),
            Server::LitServe => json(serde_json::json!({ "image": base64(jpeg) })),
            Server::BentoMl => {
                let boundary = "sightline-bench-peers-boundary";
                let mut body = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; \
                     filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
                )
                .into_bytes();
                body.extend_from_slice(jpeg);
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                Request {
                    content_type: format!("multipart/form-data; boundary={boundary}"),
                    headers: Vec::new(),
                    body: body.into(),
                }
            }
            Server::PyTriton => {
                let header = serde_json::json!({
                    "inputs": [{
                        "name": "image", "shape": [1, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": jpeg.len() + 4}
                    }],
                    "outputs": [
                        {"name": "labels", "parameters": {"binary_data": false}},
                        {"name": "probabilities", "parameters": {"binary_data": false}}
                    ]
                })
                .to_string();
                let mut body = header.clone().into_bytes();
                body.extend_from_slice(&(jpeg.len() as u32).to_le_bytes());
                body.extend_from_slice(jpeg);
                Request {
                    content_type: "application/octet-stream".into(),
                    headers: vec![(
                        "inference-header-content-length".into(),
                        header.len().to_string(),
                    )],
                    body: body.into(),
                }
            }
        }
    }

    /// The top-1 label in one of this server's answers.
    pub fn top1(self, answer: &[u8]) -> anyhow::Result<String> {
        let v: serde_json::Value = serde_json::from_slice(answer).with_context(|| {
            format!(
                "{} answered no JSON: {}",
                self.name(),
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            )
        })?;
        let label = match self {
            Server::Sightline | Server::LitServe => &v["predictions"][0]["label"],
            Server::KServe => &v["predictions"][0][0]["label"],
            Server::BentoMl => &v[0][0]["label"],
            Server::PyTriton => v["outputs"]
                .as_array()
                .and_then(|outputs| outputs.iter().find(|o| o["name"] == "labels"))
                .map_or(&serde_json::Value::Null, |o| &o["data"][0]),
        };
        label.as_str().map(str::to_string).with_context(|| {
            format!(
                "no top-1 label in {}'s answer: {}",
                self.name(),
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            )
        })
    }
}

/// One prepared HTTP request body (made once, cloned cheaply per call).
#[derive(Debug, Clone)]
struct Request {
    content_type: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Milliseconds of CPU per request from two tick counts.
pub fn cpu_ms_per_request(before: u64, after: u64, ticks_per_second: u64, requests: usize) -> f64 {
    if requests == 0 || ticks_per_second == 0 {
        return f64::NAN;
    }
    after.saturating_sub(before) as f64 * 1000.0 / ticks_per_second as f64 / requests as f64
}

/// The CPU's model and which of the SIMD flags that matter to ONNX Runtime it has.
pub fn cpu_flags_line(cpuinfo: &str) -> String {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    ["avx2", "avx512f", "avx512_vnni", "avx_vnni"]
        .iter()
        .map(|f| {
            if flags.contains(f) {
                format!("{f} yes")
            } else {
                format!("{f} no")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One server process in a process group of its own (a peer's workers and tritonserver
/// are its children), stopped with its group.
struct ServerProcess {
    server: Server,
    child: Child,
    log: PathBuf,
    base: String,
}

impl ServerProcess {
    fn start(bench: &PeersBench, server: Server, log_dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let model = models().join(format!("{}.onnx", bench.model));
        let threads = bench.threads.to_string();
        let batch = bench.max_batch_size.to_string();
        let mut command = match server {
            Server::Sightline => {
                let mut c = Command::new(&bench.server_binary);
                c.arg("recognize")
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--model")
                    .arg(&model)
                    .arg("--ort-lib")
                    .arg(&bench.ort_lib)
                    .args(["--intra-threads", &threads])
                    .args(["--max-batch-size", &bench.sightline_batch])
                    .args(["--max-delay-ms", &bench.batch_timeout_ms.to_string()])
                    .args(["--cache-bytes", "0", "--queue-capacity", "256"])
                    .env_remove("SIGHTLINE_CONFIG");
                c
            }
            peer => {
                let mut c = Command::new(&bench.python);
                c.arg(format!("{}_server.py", peer.name()))
                    .arg("--model")
                    .arg(&model)
                    .args(["--port", &port.to_string(), "--threads", &threads])
                    .args(["--max-batch-size", &batch])
                    .args(["--batch-timeout-ms", &bench.batch_timeout_ms.to_string()])
                    .current_dir(repo_root().join("bench/peers"));
                c
            }
        };
        let log = log_dir.join(format!("{}.log", server.name()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", server.name()))?;
        Ok(ServerProcess {
            server,
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// `kill SIGNAL -- TARGET`: the server's pid, or its process group as `-pid`.
    fn signal(&self, signal: &str, target: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", target])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM to the server (it stops its own workers and tritonserver), up to 20 s to
    /// exit, then SIGKILL to whatever is left of its process group.
    fn stop(mut self) {
        let pid = self.pid();
        self.signal("-TERM", &pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal("-KILL", &format!("-{pid}"));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct PeersBench {
    /// The peers, in order (Sightline always runs first: its answers are the reference).
    pub peers: Vec<Server>,
    /// A file stem in models/build.
    pub model: String,
    pub concurrency: Vec<usize>,
    /// Measured requests per cell (after the warm-up).
    pub requests: usize,
    /// ONNX Runtime intra-op threads of every server.
    pub threads: usize,
    /// The peers' largest batch.
    pub max_batch_size: usize,
    /// Sightline's `--max-batch-size` (its default, `auto`: the fastest size measured at
    /// warm-up, up to 8).
    pub sightline_batch: String,
    /// How long a batch may wait to fill (Sightline's --max-delay-ms, the peers' batch
    /// timeouts).
    pub batch_timeout_ms: u64,
    /// The photos: (what the table calls it, the file).
    pub photos: Vec<(String, PathBuf)>,
    pub server_binary: PathBuf,
    pub ort_lib: PathBuf,
    /// The peers' Python (`.venv-peers/bin/python`).
    pub python: PathBuf,
    /// Where each server's log goes.
    pub log_dir: PathBuf,
}

/// One cell's figures.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_ms: f64,
}

fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// One call: the latency, after checking the status and the top-1 label.
async fn call(
    client: &reqwest::Client,
    server: Server,
    url: &str,
    request: &Request,
    expected: Option<&str>,
) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let mut builder = client
        .post(url)
        .header("content-type", &request.content_type)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let latency = t.elapsed();
    anyhow::ensure!(
        status.is_success(),
        "{}: HTTP {status}: {}",
        server.name(),
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let top1 = server.top1(&body)?;
    if let Some(expected) = expected {
        anyhow::ensure!(
            top1 == expected,
            "{} answered top-1 {top1:?}, Sightline {expected:?}",
            server.name()
        );
    }
    Ok((latency, top1))
}

/// `concurrency` clients in a closed loop, `n` calls in all (each client its share, as
/// `make bench` runs them); the latencies and the wall time.
async fn closed_loop(
    client: &reqwest::Client,
    server: Server,
    url: &str,
    request: &Request,
    expected: &str,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let per_client = n.div_ceil(concurrency.max(1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, url, request) = (client.clone(), url.to_string(), request.clone());
            let expected = expected.to_string();
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let (latency, _) =
                        call(&client, server, &url, &request, Some(&expected)).await?;
                    mine.push(latency);
                }
                anyhow::Ok(mine)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

/// Polls with the first photo until the server answers it (or exits, or `timeout` passes).
async fn wait_answering(
    process: &mut ServerProcess,
    client: &reqwest::Client,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = format!("{}{}", process.base, process.server.path());
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status} before it answered; the end of {}:\n{}",
                process.server.name(),
                process.log.display(),
                process.log_tail()
            );
        }
        match call(client, process.server, &url, request, None).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!(
                    "{} did not answer within {timeout:?} ({e}); the end of {}:\n{}",
                    process.server.name(),
                    process.log.display(),
                    process.log_tail()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Every cell of one server: `[photo][concurrency]`.
fn measure(
    bench: &PeersBench,
    runtime: &tokio::runtime::Runtime,
    server: Server,
    expected: &mut [Option<String>],
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Vec<Cell>>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let requests: Vec<Request> = bench
        .photos
        .iter()
        .map(|(_, path)| {
            let jpeg = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            Ok(server.request(&jpeg))
        })
        .collect::<anyhow::Result<_>>()?;
    let first = requests.first().context("no photo")?;
    let mut process = ServerProcess::start(bench, server, &bench.log_dir)?;
    let result = runtime.block_on(async {
        wait_answering(&mut process, &client, first, Duration::from_secs(300)).await?;
        eprintln!("peers: {} answers", server.name());
        if server == Server::Sightline {
            notes.push(crate::batching_note("Sightline", &process.base)?);
        }
        let url = format!("{}{}", process.base, server.path());
        let ticks_per_second = clock_ticks_per_second();
        let mut rows = Vec::new();
        for (k, request) in requests.iter().enumerate() {
            let (_, top1) = call(&client, server, &url, request, None).await?;
            let want = match &expected[k] {
                Some(want) => want.clone(),
                None => {
                    expected[k] = Some(top1.clone());
                    top1.clone()
                }
            };
            anyhow::ensure!(
                top1 == want,
                "{} answered top-1 {top1:?} on {}, Sightline {want:?}",
                server.name(),
                bench.photos[k].0
            );
            let mut row = Vec::new();
            for &c in &bench.concurrency {
                // Warm-up at this concurrency (fills the batcher's paths), not measured.
                closed_loop(&client, server, &url, request, &want, c, (2 * c).max(10)).await?;
                let before = process_tree_ticks(process.pid());
                let (mut latencies, wall) =
                    closed_loop(&client, server, &url, request, &want, c, bench.requests).await?;
                let after = process_tree_ticks(process.pid());
                latencies.sort();
                let n = latencies.len();
                row.push(Cell {
                    rps: n as f64 / wall.as_secs_f64(),
                    p50_ms: percentile_ms(&latencies, 0.50),
                    p99_ms: percentile_ms(&latencies, 0.99),
                    cpu_ms: cpu_ms_per_request(before, after, ticks_per_second, n),
                });
                eprintln!(
                    "peers: {} {} c={c}: {:.1} req/s",
                    server.name(),
                    bench.photos[k].0,
                    row[row.len() - 1].rps
                );
            }
            rows.push(row);
        }
        anyhow::Ok(rows)
    });
    // Close the kept-alive connections first: tritonserver waits for them before it exits.
    drop(client);
    process.stop();
    result
}

/// `a ÷ b` with the peer it was measured against, for the ratio rows.
fn ratio(sightline: f64, best: Option<(f64, Server)>) -> String {
    match best {
        Some((b, peer)) if b > 0.0 && sightline.is_finite() => {
            format!("{:.2} ({})", sightline / b, peer.name())
        }
        _ => "—".into(),
    }
}

/// The best peer figure of a cell: the highest (`higher`) or lowest.
fn best(figures: &[(Server, f64)], higher: bool) -> Option<(f64, Server)> {
    figures
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(s, v)| (v, s))
        .reduce(|a, b| {
            if (higher && b.0 > a.0) || (!higher && b.0 < a.0) {
                b
            } else {
                a
            }
        })
}

/// Runs the comparison; the Markdown table (a failed peer gets a line saying why, and the
/// others still run).
pub fn run(bench: &PeersBench) -> anyhow::Result<String> {
    std::fs::create_dir_all(&bench.log_dir)
        .with_context(|| format!("create {}", bench.log_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "?".into())
    };
    let load_before = load();
    let mut expected = vec![None; bench.photos.len()];
    let mut notes = Vec::new();
    let sightline = measure(
        bench,
        &runtime,
        Server::Sightline,
        &mut expected,
        &mut notes,
    )?;
    let mut peers: Vec<(Server, Vec<Vec<Cell>>)> = Vec::new();
    let mut failed: Vec<(Server, String)> = Vec::new();
    for &peer in &bench.peers {
        match measure(bench, &runtime, peer, &mut expected, &mut notes) {
            Ok(rows) => peers.push((peer, rows)),
            Err(e) => {
                eprintln!("peers: {} failed: {e:#}", peer.name());
                failed.push((peer, format!("{e:#}")));
            }
        }
    }
    let load_after = load();

    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let photos: Vec<String> = bench
        .photos
        .iter()
        .zip(&expected)
        .map(|((name, path), top1)| {
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            let dims = image::image_dimensions(path)
                .map_or_else(|_| "?".into(), |(w, h)| format!("{w}×{h}"));
            format!(
                "{name} = {} ({dims}, {} KB; Sightline's top-1 {:?})",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size / 1000,
                top1.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let mut table = format!(
        "Machine: {} ({cores} cores; {}); 1-minute load average {} before, {} after.\n\
         Model {}; ONNX Runtime intra-op threads {} in every server; max batch {} (peers \
         that batch; Sightline `--max-batch-size {}`), batch wait {} ms; {} requests per cell after a warm-up; photos: {}.\n\
         Server CPU = utime + stime of the server's process tree per request.\n\n\
         | photo | concurrency | server | req/s | p50 ms | p99 ms | server CPU ms/req |\n\
         |---|---:|---|---:|---:|---:|---:|\n",
        cpu_model(),
        cpu_flags_line(&cpuinfo),
        load_before.split(' ').next().unwrap_or("?"),
        load_after.split(' ').next().unwrap_or("?"),
        bench.model,
        bench.threads,
        bench.max_batch_size,
        bench.sightline_batch,
        bench.batch_timeout_ms,
        bench.requests,
        photos.join("; "),
    );
    for (k, (photo, _)) in bench.photos.iter().enumerate() {
        for (j, &c) in bench.concurrency.iter().enumerate() {
            let row = |name: &str, cell: &Cell| {
                format!(
                    "| {photo} | {c} | {name} | {:.1} | {:.2} | {:.2} | {:.2} |\n",
                    cell.rps, cell.p50_ms, cell.p99_ms, cell.cpu_ms
                )
            };
            let s = sightline[k][j];
            table.push_str(&row("**Sightline**", &s));
            for (peer, rows) in &peers {
                table.push_str(&row(peer.name(), &rows[k][j]));
            }
            let of = |f: fn(&Cell) -> f64| -> Vec<(Server, f64)> {
                peers.iter().map(|(p, rows)| (*p, f(&rows[k][j]))).collect()
            };
            table.push_str(&format!(
                "| {photo} | {c} | Sightline ÷ best peer | {} | {} | {} | {} |\n",
                ratio(s.rps, best(&of(|x| x.rps), true)),
                ratio(s.p50_ms, best(&of(|x| x.p50_ms), false)),
                ratio(s.p99_ms, best(&of(|x| x.p99_ms), false)),
                ratio(s.cpu_ms, best(&of(|x| x.cpu_ms), false)),
            ));
        }
    }
    table.push_str(
        "\nRatios: req/s above 1 and latency or CPU below 1 favour Sightline; each against \
         the peer best at that figure in that cell.\n",
    );
    for note in notes {
        table.push_str(&format!("\n{note}\n"));
    }
    for (peer, why) in &failed {
        table.push_str(&format!(
            "\n**{} did not run**: {}\n",
            peer.name(),
            why.lines().take(12).collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(table)
}

impl PeersBench {
    /// The bench as `sightline-bench --peers` runs it: `peers` by name, the photo and a
    /// 12-MP one made from it (in target/bench-peers/), the release `sightline-server`
    /// beside this executable (or `SIGHTLINE_SERVER_BIN`), the peers' `.venv-peers`, a
    /// batch wait of 2 ms (Sightline's default `--max-delay-ms`), logs in
    /// target/bench-peers/logs/.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        peers: &[String],
        model: &str,
        concurrency: &[usize],
        requests: usize,
        threads: usize,
        max_batch_size: usize,
        photo: &Path,
        ort_lib: &Path,
    ) -> anyhow::Result<PeersBench> {
        let root = repo_root();
        let python = root.join(".venv-peers/bin/python");
        anyhow::ensure!(
            python.is_file(),
            "{} is missing: `make bench-peers` makes the peers' venv",
            python.display()
        );
        let server_binary = crate::process::server_binary().context(
            "no sightline-server beside this executable: `cargo build --release -p \
             sightline-server` (`make bench-peers` does), or set SIGHTLINE_SERVER_BIN",
        )?;
        let out = root.join("target/bench-peers");
        let stem = photo
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "photo".into());
        let large = phone_photo(&python, photo, &out.join(format!("{stem}-4032x3024.jpg")))?;
        Ok(PeersBench {
            peers: peers
                .iter()
                .map(|name| Server::parse(name))
                .collect::<anyhow::Result<_>>()?,
            model: model.to_string(),
            concurrency: concurrency.to_vec(),
            requests,
            threads,
            max_batch_size,
            sightline_batch: "auto".into(),
            batch_timeout_ms: 2,
            photos: vec![
                ("small".into(), photo.to_path_buf()),
                ("12 MP".into(), large),
            ],
            server_binary,
            ort_lib: ort_lib.to_path_buf(),
            python,
            log_dir: out.join("logs"),
        })
    }
}

/// A 4032×3024 JPEG (12 MP, a phone photo) made from `photo` by Pillow (bicubic, quality
/// 90) with `python`, at `out`, unless it is there already.
pub fn phone_photo(python: &Path, photo: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    if out.is_file() {
        return Ok(out.to_path_buf());
    }
    const SCRIPT: &str = "import sys\n\
        from PIL import Image\n\
        im = Image.open(sys.argv[1]).convert('RGB')\n\
        im.resize((4032, 3024), Image.BICUBIC).save(sys.argv[2], quality=90)\n";
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let status = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(photo)
        .arg(out)
        .status()
        .with_context(|| format!("run {}", python.display()))?;
    anyhow::ensure!(status.success(), "making the 12-MP photo: {status}");
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn cpu_per_request_is_tick_difference_over_requests() {
        // 150 ticks at 100 a second = 1.5 s over 300 requests = 5 ms each.
        assert!((cpu_ms_per_request(1000, 1150, 100, 300) - 5.0).abs() < 1e-9);
        // A counter that went backwards (a process exited) counts as nothing, not a wrap.
        assert_eq!(cpu_ms_per_request(1000, 900, 100, 10), 0.0);
        assert!(cpu_ms_per_request(0, 100, 100, 0).is_nan());
    }

    #[test]
    fn each_server_s_answer_yields_its_top1() {
        let cases: [(Server, &str); 5] = [
            (
                Server::Sightline,
                r#"{"model":{"name":"m","sha256":"x"},"predictions":[{"label":"tabby","probability":0.5}],"latency_ms":1.0}"#,
            ),
            (
                Server::KServe,
                r#"{"predictions":[[{"label":"tabby","probability":0.5},{"label":"tiger cat","probability":0.2}]]}"#,
            ),
            (
                Server::BentoMl,
                r#"[[{"label":"tabby","probability":0.5}]]"#,
            ),
            (
                Server::LitServe,
                r#"{"predictions":[{"label":"tabby","probability":0.5}]}"#,
            ),
            (
                Server::PyTriton,
                r#"{"model_name":"efficientnet-lite0","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,5],"data":[0.5]},{"name":"labels","datatype":"BYTES","shape":[1,5],"data":["tabby","tiger cat"]}]}"#,
            ),
        ];
        for (server, answer) in cases {
            assert_eq!(
                server.top1(answer.as_bytes()).expect("a top-1 label"),
                "tabby"
            );
        }
        assert!(Server::KServe.top1(br#"{"predictions":[]}"#).is_err());
        assert!(Server::LitServe.top1(b"Internal Server Error").is_err());
    }

    #[test]
    fn triton_binary_request_has_the_header_length_and_the_bytes_after_it() {
        let jpeg = [0xff, 0xd8, 0x01, 0x02, 0xff, 0xd9];
        let request = Server::PyTriton.request(&jpeg);
        let (_, length) = &request.headers[0];
        let length: usize = length.parse().expect("a number");
        let header: serde_json::Value =
            serde_json::from_slice(&request.body[..length]).expect("JSON header");
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 10);
        assert_eq!(&request.body[length..length + 4], &6u32.to_le_bytes());
        assert_eq!(&request.body[length + 4..], &jpeg);
    }

    #[test]
    fn best_peer_is_highest_or_lowest_and_skips_missing_figures() {
        let figures = [
            (Server::KServe, 10.0),
            (Server::LitServe, 30.0),
            (Server::PyTriton, f64::NAN),
        ];
        assert_eq!(best(&figures, true), Some((30.0, Server::LitServe)));
        assert_eq!(best(&figures, false), Some((10.0, Server::KServe)));
        assert_eq!(ratio(60.0, best(&figures, true)), "2.00 (litserve)");
        assert_eq!(ratio(1.0, None), "—");
    }

    #[test]
    fn peer_names_parse_and_unknown_ones_do_not() {
        assert_eq!(Server::parse(" PyTriton").expect("known"), Server::PyTriton);
        assert!(Server::parse("torchserve").is_err());
        assert!(cpu_flags_line("flags\t: fpu avx2 avx512f\n").contains("avx512f yes"));
        assert!(cpu_flags_line("flags\t: fpu avx2 avx512f\n").contains("avx_vnni no"));
    }
}
