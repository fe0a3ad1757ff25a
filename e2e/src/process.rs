//! `sightline-server` roles as separate processes on loopback ports, as they run as three
//! Deployments in a cluster: start, wait for `/readyz`, `kill -9`, restart on the same port.
//!
//! The binary is the one Cargo built next to the test executables (`target/debug/
//! sightline-server`, found from this test's own path, so `CARGO_TARGET_DIR` is honoured),
//! or `SIGHTLINE_SERVER_BIN`. Tests do not build it: `make test` runs
//! `cargo build -p sightline-server` before `cargo test`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The server binary to run, when it exists.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SIGHTLINE_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    built_binary("sightline-server")
}

/// The `sightline-operator` binary Cargo built next to the test executables, when it
/// exists (`make test` builds it).
pub fn operator_binary() -> Option<PathBuf> {
    built_binary("sightline-operator")
}

/// target/<profile>/deps/<test> → target/<profile>/<name> (from a test), or
/// target/<profile>/<bin> → target/<profile>/<name> (from a binary such as the
/// benchmark), when it exists.
fn built_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let dir = exe.parent()?;
    [dir.parent()?.join(&file), dir.join(&file)]
        .into_iter()
        .find(|candidate| candidate.is_file())
}

/// `sightline-server batch` with the test classifier over `input`, results to `out` (more
/// flags may follow).
pub fn batch_command(binary: &Path, input: &Path, out: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("batch")
        .arg("--model")
        .arg(crate::models().join("test-classifier.onnx"))
        .arg("--ort-lib")
        .arg(crate::ort_lib())
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .env("RUST_BACKTRACE", "0");
    command
}

/// The binary, or `None` after a loud notice (a failure under CI).
pub fn require_server_binary() -> Option<PathBuf> {
    match server_binary() {
        Some(path) => {
            warn_if_stale(&path);
            Some(path)
        }
        None => {
            let message = "no sightline-server binary next to the tests: run `cargo build -p \
                           sightline-server` first (`make test` does)";
            if std::env::var_os("CI").is_some() {
                panic!("{message}");
            }
            eprintln!("\n*** SKIPPED (not in CI): {message} ***\n");
            None
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct loopback ports that were free a moment ago (all held until all are found).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Warns when the server binary is older than the library the tests were built against
/// (`cargo test -p sightline-e2e` alone does not rebuild it; `make test` does).
fn warn_if_stale(binary: &Path) {
    let Some(deps) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    else {
        return;
    };
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_lib = std::fs::read_dir(&deps)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libsightline_server-") && name.ends_with(".rlib")
        })
        .filter_map(|e| modified(&e.path()))
        .max();
    if let (Some(lib), Some(bin)) = (newest_lib, modified(binary))
        && lib > bin
    {
        eprintln!(
            "\n*** WARNING: {} is older than the sightline-server library: run `cargo build -p \
             sightline-server` (or `make test`) so the process tests run the current code ***\n",
            binary.display()
        );
    }
}

/// A directory removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("sightline-{tag}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `sightline-server <role>` process.
pub struct ServerProcess {
    pub role: String,
    pub addr: SocketAddr,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `role` with `args` on a free loopback port, logging to `<log_dir>/<role>.log`,
    /// and waits until `/readyz` answers 200.
    pub fn start(
        binary: &Path,
        role: &str,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        Self::start_on(binary, role, free_port()?, args, log_dir)
    }

    /// A `store` role keeping its SQLite database under `dir/store` and asking for the API
    /// key `key` (a batch run's or a RecognitionJob's results store), logging into `dir`.
    pub fn keyed_store(binary: &Path, dir: &Path, key: &str) -> anyhow::Result<ServerProcess> {
        let data = dir.join("store").display().to_string();
        let args = [
            "--data-dir".to_string(),
            data,
            "--api-keys".to_string(),
            key.to_string(),
        ];
        Self::start(binary, "store", &args, dir)
    }

    /// Like [`ServerProcess::start`] on a given port (to know the URLs of services that
    /// call each other before they run).
    pub fn start_on(
        binary: &Path,
        role: &str,
        port: u16,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        Self::start_named(binary, role, role, port, args, log_dir)
    }

    /// Like [`ServerProcess::start_on`], logging to `<log_dir>/<name>.log` (for two
    /// instances of one role).
    pub fn start_named(
        binary: &Path,
        role: &str,
        name: &str,
        port: u16,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let mut process = ServerProcess {
            role: role.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            binary: binary.to_path_buf(),
            args: args.to_vec(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        process.spawn()?;
        Ok(process)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.binary)
            .arg(&self.role)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args)
            .env_remove("SIGHTLINE_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.role,
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = crate::plain_http::get(&self.url("/readyz")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} not ready after {timeout:?}:\n{}",
                    self.role,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of this process's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// SIGKILL: no shutdown, no flushing, like a node dying.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, as Kubernetes sends it: the server drains, then stops.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.role))?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("run kill -TERM")?;
        anyhow::ensure!(status.success(), "kill -TERM {pid}: {status}");
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.role))?;
        loop {
            if let Some(status) = child.try_wait().context("wait for the server")? {
                self.child = None;
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} still running {timeout:?} after it was asked to stop",
                self.role
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same role again with the same flags on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
