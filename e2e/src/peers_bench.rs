//! `sightline-bench --peers` (`make bench-peers`): Sightline against four Python model
//! servers — KServe's ModelServer, BentoML, LitServe and NVIDIA PyTriton — serving the same
//! model with the same preprocessing; the peers with the same ONNX Runtime thread count,
//! Sightline with what its warm-up trial chose (as a user who sets nothing gets).
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

mod measure;
mod process;
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::mirror_bench::cpu_model;
use crate::repo_root;
use measure::measure;

pub use measure::{Cell, cpu_ms_per_request};
pub use server::{Server, base64};

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
         Model {}; ONNX Runtime intra-op threads {} in every peer (Sightline: its warm-up \
         trial's choice of instances, threads and spinning); max batch {} (peers \
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
