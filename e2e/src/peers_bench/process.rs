//! One server under measurement as a process of its own, in a process group of its own, on
//! a free loopback port; stopped with its group.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::PeersBench;
use super::server::Server;
use crate::process::free_port;
use crate::{models, repo_root};

/// One server process in a process group of its own (a peer's workers and tritonserver
/// are its children), stopped with its group.
pub(super) struct ServerProcess {
    pub(super) server: Server,
    pub(super) child: Child,
    pub(super) log: PathBuf,
    pub(super) base: String,
}

impl ServerProcess {
    pub(super) fn start(
        bench: &PeersBench,
        server: Server,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
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
                    // No --intra-threads: the warm-up trial chooses instances, threads and
                    // spinning, as for a user who sets nothing.
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

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn log_tail(&self) -> String {
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
    pub(super) fn stop(mut self) {
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
