//! The container images as a container runtime runs them (`make test-images`, which builds
//! them first with `make images` and a model image with `make model-image`).
//!
//! Each OCI archive in `target/images/` is unpacked by Debian's `umoci` into a runtime bundle
//! whose `config.json` umoci derives from the image's own config (entrypoint, cmd, env, user,
//! working directory), and run under `runc` (`SIGHTLINE_OCI_RUNTIME` picks another, e.g.
//! `crun`) the way the operator's pods run it: read-only root filesystem, `/tmp` a writable
//! directory of the host (an emptyDir), every capability dropped, no new privileges, and a
//! network namespace of its own that has nothing but loopback, which the test enters with
//! `nsenter` to talk to the server. The archives are also imported into a private
//! `containerd` (what kind and k3s run), and rebuilt to show that the digests repeat.
//!
//! These tests are `#[ignore]`d in `cargo test --workspace` (they need the archives):
//! `make test-images` runs them with `--include-ignored`. A tool or archive they need is a
//! failure under CI and a loud skip elsewhere. The GPU image is tested when
//! `SIGHTLINE_IMAGES` names it (`make test-images IMAGES_TEST="sightline-server
//! sightline-operator sightline-server-gpu"`), or without that variable when its archive
//! exists; CI does not build it.
//!
//! `registry_overlay_renames_every_image` needs only kubectl and runs in `make test`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sightline_e2e::process::{ScratchDir, free_port};
use sightline_e2e::{models, repo_root, skip};

const NONROOT: u64 = 65532;
const ORT_LIB: &str = "/opt/onnxruntime/lib/libonnxruntime.so";
const SOURCE: &str = "https://github.com/sightline/sightline";
/// The goal for the CPU server image, compressed (Triton's images are 10–15 GB).
const SERVER_IMAGE_BUDGET_BYTES: u64 = 150_000_000;

fn images_dir() -> PathBuf {
    match std::env::var_os("SIGHTLINE_IMAGES_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target/images"),
    }
}

fn archive(name: &str) -> PathBuf {
    images_dir().join(format!("{name}.oci.tar"))
}

fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "{missing:?} not installed: `make images-test-tools` installs them (Debian packages)"
    ));
    false
}

fn have_root() -> bool {
    if euid() == 0 {
        return true;
    }
    skip("running containers needs root (runc, network namespaces)");
    false
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn have_archives(names: &[&str]) -> bool {
    let missing: Vec<PathBuf> = names
        .iter()
        .map(|n| archive(n))
        .filter(|p| !p.exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "missing {missing:?}: `make test-images` builds them (or `make images`, `make model-image MODEL=test-classifier`)"
    ));
    false
}

/// Whether the GPU image is tested: `SIGHTLINE_IMAGES` (set by `make test-images` to
/// `IMAGES_TEST`) lists it; without the variable, when its archive exists.
fn gpu_tested() -> bool {
    match std::env::var("SIGHTLINE_IMAGES") {
        Ok(list) => list.split_whitespace().any(|i| i == "sightline-server-gpu"),
        Err(_) => archive("sightline-server-gpu").exists(),
    }
}

fn runtime() -> String {
    std::env::var("SIGHTLINE_OCI_RUNTIME").unwrap_or_else(|_| "runc".into())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("utf-8 output")
}

fn sha256(path: &Path) -> String {
    let out = stdout(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().expect("digest").to_string()
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("unsupported architecture {other}"),
    }
}

// ------------------------------------------------------------------------------------------
// An OCI archive, extracted

struct Layout {
    _dir: ScratchDir,
    root: PathBuf,
    /// The descriptor index.json names the image by.
    top: Value,
}

impl Layout {
    fn open(archive: &Path) -> Layout {
        let dir = ScratchDir::new("oci").expect("scratch");
        let root = dir.path().join("layout");
        std::fs::create_dir_all(&root).expect("mkdir");
        run(Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&root));
        let index = read_json(&root.join("index.json"));
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 1, "one image per archive: {index}");
        Layout {
            _dir: dir,
            root,
            top: manifests[0].clone(),
        }
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::read(self.root.join("blobs/sha256").join(hex)).expect("blob")
    }

    fn json(&self, desc: &Value) -> Value {
        serde_json::from_slice(&self.blob(desc["digest"].as_str().expect("digest")))
            .expect("json blob")
    }

    fn name(&self) -> String {
        self.top["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("ref.name")
            .to_string()
    }

    /// The image manifest for `arch` (the top descriptor itself, or its entry in an index).
    fn manifest_desc(&self, arch: &str) -> Value {
        if self.top["mediaType"] == "application/vnd.oci.image.index.v1+json" {
            let index = self.json(&self.top);
            index["manifests"]
                .as_array()
                .expect("manifests")
                .iter()
                .find(|m| m["platform"]["architecture"] == arch)
                .unwrap_or_else(|| panic!("no {arch} manifest in {index}"))
                .clone()
        } else {
            self.top.clone()
        }
    }

    fn manifest(&self, arch: &str) -> Value {
        self.json(&self.manifest_desc(arch))
    }

    fn config(&self, arch: &str) -> Value {
        self.json(&self.manifest(arch)["config"])
    }

    /// Compressed bytes a registry stores and a node pulls: config and layers.
    fn pull_size(&self, arch: &str) -> u64 {
        let m = self.manifest(arch);
        m["config"]["size"].as_u64().expect("size")
            + m["layers"]
                .as_array()
                .expect("layers")
                .iter()
                .map(|l| l["size"].as_u64().expect("size"))
                .sum::<u64>()
    }

    /// `umoci unpack` of the `arch` image into a runtime bundle (rootfs + config.json made by
    /// umoci from the image config).
    fn unpack(&self, arch: &str) -> Bundle {
        let desc = self.manifest_desc(arch);
        // umoci wants a tag pointing at a manifest: a scratch index.json beside the blobs.
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": desc["digest"], "size": desc["size"],
            "annotations": {"org.opencontainers.image.ref.name": "test"},
        }]});
        let dir = ScratchDir::new("bundle").expect("scratch");
        let layout = dir.path().join("layout");
        // Hard links: the GPU image's blobs are 1.6 GB.
        run(Command::new("cp").arg("-al").arg(&self.root).arg(&layout));
        std::fs::remove_file(layout.join("index.json")).expect("unlink index.json");
        std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
        let bundle = dir.path().join("bundle");
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:test", layout.display()))
            .arg(&bundle));
        let _ = std::fs::remove_dir_all(&layout);
        let spec = read_json(&bundle.join("config.json"));
        Bundle {
            rootfs: bundle.join("rootfs"),
            spec,
            image_config: self.config(arch),
            dir,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Running a bundle like a pod

/// A network namespace with only loopback, held by a `sleep` (a pod's pause container).
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .spawn()
            .expect("unshare --net");
        let ns = Netns { holder };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until unshare has exec'd sleep, /proc/PID/ns/net is still the host's.
        while std::fs::read_link(ns.path()).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            assert!(Instant::now() < deadline, "unshare --net did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        run(ns.enter("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// A host command run inside the namespace.
    fn enter(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path())).arg(program);
        cmd
    }

    /// GET or POST on loopback inside the namespace: (status, body).
    fn http(&self, url: &str, post_file: Option<&Path>) -> (u16, String) {
        let mut cmd = self.enter("curl");
        cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]);
        if let Some(file) = post_file {
            cmd.arg("--data-binary")
                .arg(format!("@{}", file.display()))
                .args(["-H", "content-type: application/octet-stream"]);
        }
        let out = cmd.arg(url).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Bundle {
    rootfs: PathBuf,
    /// umoci's runtime config for the image.
    spec: Value,
    image_config: Value,
    dir: ScratchDir,
}

struct Mount {
    host: PathBuf,
    container: &'static str,
    read_only: bool,
}

/// The process a container runs.
enum Argv<'a> {
    /// The image's entrypoint with these arguments in place of its cmd (a pod's `args:`).
    Args(&'a [&'a str]),
    /// Another program altogether (a pod's `command:`), with more environment.
    Command(&'a [&'a str], &'a [&'a str]),
}

static CONTAINERS: AtomicUsize = AtomicUsize::new(0);

struct Container {
    id: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Bundle {
    /// The runtime config for one container: the image's entrypoint with `args` in place of
    /// its cmd (as a pod's `args:` does), hardened as the operator's pods are.
    fn config(&self, argv: Argv, mounts: &[Mount], netns: &Netns) -> Value {
        let mut spec = self.spec.clone();
        match argv {
            Argv::Args(args) => {
                let mut argv: Vec<Value> = self.image_config["config"]["Entrypoint"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                argv.extend(args.iter().map(|a| json!(a)));
                spec["process"]["args"] = Value::Array(argv);
            }
            Argv::Command(command, env) => {
                spec["process"]["args"] = json!(command);
                let list = spec["process"]["env"].as_array_mut().expect("env");
                list.extend(env.iter().map(|e| json!(e)));
            }
        }
        spec["process"]["terminal"] = json!(false);
        spec["process"]["noNewPrivileges"] = json!(true);
        spec["process"]["capabilities"] = json!({
            "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []
        });
        spec["root"] = json!({"path": self.rootfs, "readonly": true});
        spec["hostname"] = json!("sightline-test");
        let namespaces = spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        namespaces.retain(|n| n["type"] != "network");
        namespaces.push(json!({"type": "network", "path": netns.path()}));
        let list = spec["mounts"].as_array_mut().expect("mounts");
        for m in mounts {
            list.push(json!({
                "destination": m.container, "type": "bind", "source": m.host,
                "options": if m.read_only { json!(["rbind", "ro", "nosuid", "nodev"]) }
                           else { json!(["rbind", "rw", "nosuid", "nodev"]) },
            }));
        }
        spec
    }

    fn start(&self, args: &[&str], mounts: &[Mount], netns: &Netns) -> Container {
        self.start_argv(Argv::Args(args), mounts, netns)
    }

    fn start_argv(&self, argv: Argv, mounts: &[Mount], netns: &Netns) -> Container {
        let n = CONTAINERS.fetch_add(1, Ordering::SeqCst);
        let id = format!("sightline-test-{}-{n}", std::process::id());
        let dir = self.dir.path().join(&id);
        std::fs::create_dir_all(&dir).expect("bundle dir");
        let config = self.config(argv, mounts, netns);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("config.json");
        let log = dir.join("output.log");
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(runtime())
            .arg("run")
            .arg("--bundle")
            .arg(&dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", runtime()));
        Container {
            id,
            child: Some(child),
            log,
        }
    }

    /// Runs to completion: (exit code, stdout and stderr).
    fn run_once(&self, args: &[&str], mounts: &[Mount], netns: &Netns) -> (i32, String) {
        let mut c = self.start_argv(Argv::Args(args), mounts, netns);
        let code = c.wait(Duration::from_secs(120));
        (code, c.output())
    }

    /// Runs `command` in place of the entrypoint, with `env` added, to completion.
    fn run_command(
        &self,
        command: &[&str],
        env: &[&str],
        mounts: &[Mount],
        netns: &Netns,
    ) -> (i32, String) {
        let mut c = self.start_argv(Argv::Command(command, env), mounts, netns);
        let code = c.wait(Duration::from_secs(120));
        (code, c.output())
    }
}

impl Container {
    fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn wait(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "container {} still running after {timeout:?}:\n{}",
                self.id,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's first process, as the host sees it.
    fn pid(&self) -> u32 {
        let state: Value =
            serde_json::from_str(&stdout(Command::new(runtime()).args(["state", &self.id])))
                .expect("state json");
        state["pid"].as_u64().expect("pid") as u32
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new(runtime())
                .args(["kill", &self.id, "KILL"])
                .output();
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
        let _ = Command::new(runtime())
            .args(["delete", "--force", &self.id])
            .output();
    }
}

fn wait_ready(netns: &Netns, container: &mut Container, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, body) = netns.http(url, None);
        if code == 200 {
            return body;
        }
        if let Some(status) = container
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait"))
        {
            panic!(
                "the container exited ({status}) before {url} answered 200:\n{}",
                container.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within 90 s (last {code} {body}):\n{}",
            container.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn models_mount() -> Mount {
    Mount {
        host: models(),
        container: "/models",
        read_only: true,
    }
}

fn tmp_mount(dir: &ScratchDir) -> Mount {
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    // An emptyDir: writable by the pod's user.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    Mount {
        host: tmp,
        container: "/tmp",
        read_only: false,
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The process runs as 65532 with no capabilities, on a read-only root, in a namespace with
/// nothing but loopback.
fn assert_confined(container: &Container, netns: &Netns) {
    let pid = container.pid();
    assert_eq!(
        status_field(pid, "Uid"),
        "65532 65532 65532 65532",
        "the server's uid"
    );
    assert_eq!(
        status_field(pid, "Gid"),
        "65532 65532 65532 65532",
        "the server's gid"
    );
    assert_eq!(
        status_field(pid, "CapEff"),
        "0000000000000000",
        "no capabilities"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("root mount");
    let options = root.split_whitespace().nth(5).expect("mount options");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "root filesystem not read-only: {root}"
    );
    let links = stdout(netns.enter("ip").args(["-o", "link", "show"]));
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    assert_eq!(names, ["lo"], "network interfaces: {links}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok(),
        std::fs::read_link(netns.path()).ok(),
        "the container is in the test's network namespace"
    );
}

fn env_map(config: &Value) -> BTreeMap<String, String> {
    config["config"]["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .map(|e| {
            let (k, v) = e.as_str().expect("env").split_once('=').expect("K=V");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn git_head() -> String {
    stdout(
        Command::new("git")
            .args(["--no-optional-locks", "rev-parse", "HEAD"])
            .current_dir(repo_root()),
    )
    .trim()
    .to_string()
}

fn crate_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("inference-server/Cargo.toml"))
        .expect("Cargo.toml");
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version")
        .to_string()
}

// ------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs the image archives: make test-images"]
fn archives_are_labelled_reproducible_oci_and_docker_archives() {
    let names = ["sightline-server", "sightline-operator"];
    if !have_archives(&names) || !have_tools(&["skopeo", "tar", "python3", "umoci", "strip"]) {
        return;
    }
    let mut built: Vec<&str> = names.to_vec();
    if gpu_tested() {
        built.push("sightline-server-gpu");
    }
    let version = crate_version();
    for name in &built {
        let path = archive(name);
        let layout = Layout::open(&path);
        let arch = host_arch();
        let config = layout.config(arch);
        assert_eq!(
            layout.name(),
            format!("ghcr.io/sightline/{name}:{version}"),
            "{name}: the name the operator's defaults use"
        );
        assert_eq!(
            layout.top["annotations"]["io.containerd.image.name"],
            json!(layout.name())
        );
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["User"], "65532:65532", "{name}: user");
        let env = env_map(&config);
        assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin:/bin");
        assert_eq!(env["SSL_CERT_FILE"], "/etc/ssl/certs/ca-certificates.crt");
        if name.starts_with("sightline-server") {
            assert_eq!(env["SIGHTLINE_ORT_LIB"], ORT_LIB, "{name}: ORT library");
            assert_eq!(env["LD_LIBRARY_PATH"], "/opt/onnxruntime/lib");
        }
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.source"], SOURCE);
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            json!(git_head())
        );
        assert_eq!(labels["org.opencontainers.image.version"], json!(version));
        let licenses = labels["org.opencontainers.image.licenses"]
            .as_str()
            .expect("licenses");
        assert!(licenses.starts_with("Apache-2.0"), "{licenses}");
        // The same labels as manifest annotations (what registries show).
        let manifest = layout.manifest(arch);
        for key in [
            "source", "revision", "version", "licenses", "title", "created",
        ] {
            let key = format!("org.opencontainers.image.{key}");
            assert_eq!(manifest["annotations"][&key], labels[&key], "{name}: {key}");
        }
        // Fixed timestamps: the commit's.
        let created = config["created"].as_str().expect("created");
        assert_eq!(labels["org.opencontainers.image.created"], json!(created));
        for layer in manifest["layers"].as_array().expect("layers") {
            assert_eq!(
                layer["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let blob = layout
                .root
                .join("blobs/sha256")
                .join(&layer["digest"].as_str().expect("digest")[7..]);
            let listing = stdout(
                Command::new("tar")
                    .args(["--numeric-owner", "--full-time", "-tvzf"])
                    .arg(&blob),
            );
            let mut entries = Vec::new();
            for line in listing.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (owner, date, time, path) = (f[1], f[3], f[4], f[5]);
                assert_eq!(
                    format!("{date}T{time}Z"),
                    created,
                    "{name}: mtime of {path}"
                );
                let expected_owner = if path.starts_with("home/nonroot") {
                    "65532/65532"
                } else {
                    "0/0"
                };
                assert_eq!(owner, expected_owner, "{name}: owner of {path}");
                entries.push(path.to_string());
            }
            let mut sorted = entries.clone();
            sorted.sort();
            assert_eq!(entries, sorted, "{name}: layer entries sorted");
        }
        // Docker's archive format beside the OCI layout: `docker load` reads manifest.json.
        let docker = read_json(&layout.root.join("manifest.json"));
        assert_eq!(docker[0]["RepoTags"], json!([layout.name()]));
        let oci = stdout(Command::new("skopeo").args([
            "inspect",
            "--raw",
            &format!("oci-archive:{}", path.display()),
        ]));
        let inspected = stdout(
            Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", path.display())]),
        );
        let inspected: Value = serde_json::from_str(&inspected).expect("skopeo json");
        let oci: Value = serde_json::from_str(&oci).expect("skopeo raw");
        assert_eq!(
            inspected["Layers"].as_array().map(Vec::len),
            oci["layers"].as_array().map(Vec::len),
            "{name}: docker-archive and oci-archive agree"
        );
        assert_eq!(
            inspected["Labels"], *labels,
            "{name}: docker-archive labels"
        );
        eprintln!(
            "{name}: {} ({:.1} MB compressed)",
            layout.manifest_desc(arch)["digest"],
            layout.pull_size(arch) as f64 / 1e6
        );
        if *name == "sightline-server" {
            assert!(
                layout.pull_size(arch) < SERVER_IMAGE_BUDGET_BYTES,
                "the CPU server image is {} bytes, over the 150 MB goal",
                layout.pull_size(arch)
            );
        }
    }

    // The same inputs give the same bytes: rebuild into a scratch directory and compare.
    for name in &built {
        let binary = repo_root().join("target/release").join(match *name {
            "sightline-operator" => "sightline-operator",
            _ => "sightline-server",
        });
        let newer = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .ok()
            .zip(
                std::fs::metadata(archive(name))
                    .and_then(|m| m.modified())
                    .ok(),
            )
            .is_some_and(|(bin, arc)| bin > arc);
        assert!(
            !newer,
            "{} is newer than {}: `make images` again",
            binary.display(),
            archive(name).display()
        );
    }
    let scratch = ScratchDir::new("rebuild").expect("scratch");
    let start = Instant::now();
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("images/build.py"))
        .args(["build", "--out"])
        .arg(scratch.path())
        .arg("--images")
        .args(&built)
        .current_dir(repo_root());
    run(&mut cmd);
    eprintln!("rebuilt {built:?} in {:.0?}", start.elapsed());
    for name in &built {
        let again = scratch.path().join(format!("{name}.oci.tar"));
        assert_eq!(
            Layout::open(&again).manifest_desc(host_arch())["digest"],
            Layout::open(&archive(name)).manifest_desc(host_arch())["digest"],
            "{name}: a second build gives another digest"
        );
        assert_eq!(
            sha256(&again),
            sha256(&archive(name)),
            "{name}: the archives differ"
        );
    }
}

#[test]
#[ignore = "needs the image archives: make test-images"]
fn server_image_serves_a_model_mounted_from_the_host() {
    if !have_archives(&["sightline-server"])
        || !have_tools(&["umoci", &runtime(), "nsenter", "unshare", "ip", "curl"])
        || !have_root()
        || !sightline_e2e::require(&[models().join("efficientnet-lite0.onnx")])
    {
        return;
    }
    let layout = Layout::open(&archive("sightline-server"));
    let bundle = layout.unpack(host_arch());
    // umoci turned the image config into the process: entrypoint + cmd, env, user.
    assert_eq!(
        bundle.spec["process"]["args"],
        json!(["/usr/local/bin/sightline-server", "--help"])
    );
    assert_eq!(bundle.spec["process"]["user"]["uid"], json!(NONROOT));
    assert_eq!(bundle.spec["process"]["user"]["gid"], json!(NONROOT));
    assert!(bundle.rootfs.join(&ORT_LIB[1..]).exists());

    let scratch = ScratchDir::new("serve").expect("scratch");
    let netns = Netns::new();
    // What the operator runs (operator/src/build/model/deployment.rs), with the library
    // from the image's SIGHTLINE_ORT_LIB.
    let mut server = bundle.start(
        &[
            "recognize",
            "--listen",
            "127.0.0.1:8080",
            "--model",
            "/models/efficientnet-lite0.onnx",
            "--labels",
            "/models/efficientnet-lite0.labels.txt",
            "--model-name",
            "efficientnet-lite0",
            "--log-format",
            "json",
        ],
        &[models_mount(), tmp_mount(&scratch)],
        &netns,
    );
    let ready = wait_ready(&netns, &mut server, "http://127.0.0.1:8080/readyz");
    let ready: Value = serde_json::from_str(&ready).expect("readyz json");
    assert_eq!(ready["model"]["name"], "efficientnet-lite0", "{ready}");
    assert_confined(&server, &netns);

    let (code, body) = netns.http(
        "http://127.0.0.1:8080/api/v1/recognize?top_k=3",
        Some(&models().join("photos/chelsea.jpg")),
    );
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    let top = answer["predictions"][0]["label"].as_str().expect("label");
    assert!(
        top.contains("cat"),
        "chelsea.jpg is a cat, the image says {top:?}"
    );
    let (code, metrics) = netns.http("http://127.0.0.1:8080/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("sightline_model_ready"), "{metrics}");
}

#[test]
#[ignore = "needs the image archives: make test-images"]
fn server_image_fetch_verifies_the_digest() {
    if !have_archives(&["sightline-server"])
        || !have_tools(&["umoci", &runtime(), "nsenter", "unshare", "ip", "python3"])
        || !have_root()
        || !sightline_e2e::require(&[models().join("test-classifier.onnx")])
    {
        return;
    }
    let layout = Layout::open(&archive("sightline-server"));
    let bundle = layout.unpack(host_arch());
    // The CA bundle the image carries (from Debian's ca-certificates) and points at.
    let ca = std::fs::read_to_string(bundle.rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("CA bundle");
    let certs = ca.matches("BEGIN CERTIFICATE").count();
    assert!(certs > 100, "{certs} certificates in the CA bundle");

    let scratch = ScratchDir::new("fetch").expect("scratch");
    let netns = Netns::new();
    let port = free_port().expect("port");
    // A file server inside the pod's network namespace (the "model store" on loopback).
    let mut files = netns
        .enter("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg("--directory")
        .arg(models())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http.server");
    let url = format!("http://127.0.0.1:{port}/test-classifier.onnx");
    let deadline = Instant::now() + Duration::from_secs(20);
    while netns.http(&format!("http://127.0.0.1:{port}/"), None).0 != 200 {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let digest = sha256(&models().join("test-classifier.onnx"));
    let tmp = tmp_mount(&scratch);
    let tmp_host = tmp.host.clone();

    let (code, output) = bundle.run_once(
        &[
            "fetch",
            "--uri",
            &url,
            "--sha256",
            &digest,
            "--out",
            "/tmp/model.onnx",
        ],
        &[tmp],
        &netns,
    );
    assert_eq!(code, 0, "fetch with the right digest:\n{output}");
    let fetched = tmp_host.join("model.onnx");
    assert_eq!(sha256(&fetched), digest);
    assert_eq!(
        std::fs::metadata(&fetched).expect("fetched").uid(),
        NONROOT as u32,
        "written by the image's user"
    );

    let wrong = "0".repeat(64);
    let tmp = Mount {
        host: tmp_host.clone(),
        container: "/tmp",
        read_only: false,
    };
    let (code, output) = bundle.run_once(
        &[
            "fetch",
            "--uri",
            &url,
            "--sha256",
            &wrong,
            "--out",
            "/tmp/refused.onnx",
        ],
        &[tmp],
        &netns,
    );
    assert_ne!(code, 0, "a wrong digest must fail:\n{output}");
    assert!(output.contains("digest mismatch"), "{output}");
    assert!(
        !tmp_host.join("refused.onnx").exists(),
        "a refused file must not be left in place"
    );
    let _ = files.kill();
    let _ = files.wait();
}

#[test]
#[ignore = "needs the image archives: make test-images"]
fn operator_image_prints_its_crds() {
    if !have_archives(&["sightline-operator"])
        || !have_tools(&["umoci", &runtime(), "nsenter", "unshare", "ip"])
        || !have_root()
    {
        return;
    }
    let layout = Layout::open(&archive("sightline-operator"));
    let bundle = layout.unpack(host_arch());
    assert_eq!(
        bundle.spec["process"]["args"],
        json!(["/usr/local/bin/sightline-operator", "run"])
    );
    let netns = Netns::new();
    let (code, output) = bundle.run_once(&["crd"], &[], &netns);
    assert_eq!(code, 0, "{output}");
    let printed: Vec<Value> = serde_yaml::Deserializer::from_str(&output)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect();
    let mut expected = Vec::new();
    for file in [
        "imagemodels.sightline.io.yaml",
        "recognitionpipelines.sightline.io.yaml",
        "recognitionjobs.sightline.io.yaml",
    ] {
        let text = std::fs::read_to_string(repo_root().join("crds").join(file)).expect("crd");
        expected.push(serde_yaml::from_str::<Value>(&text).expect("crd yaml"));
    }
    assert_eq!(
        printed, expected,
        "the image's `sightline-operator crd` differs from crds/"
    );
}

#[test]
#[ignore = "needs the image archives: make test-images"]
fn model_image_serves_when_mounted_as_an_image_volume() {
    if !have_archives(&["sightline-server", "model-test-classifier"])
        || !have_tools(&["umoci", &runtime(), "nsenter", "unshare", "ip", "curl"])
        || !have_root()
        || !sightline_e2e::require(&[models().join("test-classifier.onnx")])
    {
        return;
    }
    let model = Layout::open(&archive("model-test-classifier"));
    // One layer for every platform: a node of either architecture mounts it.
    let index = model.json(&model.top);
    let archs: BTreeSet<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
        .collect();
    assert_eq!(archs, BTreeSet::from(["amd64", "arm64"]));
    assert_eq!(
        model.manifest("amd64")["layers"],
        model.manifest("arm64")["layers"]
    );
    let digest = sha256(&models().join("test-classifier.onnx"));
    let annotations = &index["annotations"];
    assert_eq!(annotations["io.sightline.model.sha256"], json!(digest));
    assert_eq!(annotations["io.sightline.model.file"], "model.onnx");
    assert_eq!(annotations["io.sightline.model.classes"], "3");
    assert_eq!(
        model.config("amd64")["config"]["Labels"],
        model.manifest("amd64")["annotations"]
    );
    let unpacked = model.unpack(host_arch());
    let files: BTreeSet<String> = std::fs::read_dir(&unpacked.rootfs)
        .expect("model rootfs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from([
            "model.json".to_string(),
            "model.labels.txt".to_string(),
            "model.onnx".to_string()
        ])
    );
    assert_eq!(sha256(&unpacked.rootfs.join("model.onnx")), digest);

    // The model image's file system mounted read-only at /models, as an image volume is.
    let server = Layout::open(&archive("sightline-server")).unpack(host_arch());
    let scratch = ScratchDir::new("model-image").expect("scratch");
    let netns = Netns::new();
    let mut c = server.start(
        &[
            "recognize",
            "--listen",
            "127.0.0.1:8080",
            "--model",
            "/models/model.onnx",
            "--model-sha256",
            &digest,
        ],
        &[
            Mount {
                host: unpacked.rootfs.clone(),
                container: "/models",
                read_only: true,
            },
            tmp_mount(&scratch),
        ],
        &netns,
    );
    let ready = wait_ready(&netns, &mut c, "http://127.0.0.1:8080/readyz");
    let ready: Value = serde_json::from_str(&ready).expect("json");
    // The name comes from the sidecar (model.json), found beside model.onnx.
    assert_eq!(ready["model"]["name"], "test-classifier", "{ready}");
    let (code, body) = netns.http(
        "http://127.0.0.1:8080/api/v1/recognize",
        Some(&models().join("photos/coffee.png")),
    );
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    let label = answer["predictions"][0]["label"].as_str().expect("label");
    assert!(["red", "green", "blue"].contains(&label), "{answer}");
}

#[test]
#[ignore = "needs the GPU image archive: make test-images IMAGES_TEST=\"... sightline-server-gpu\""]
fn gpu_image_has_every_cuda_library_but_the_driver() {
    if !gpu_tested() {
        eprintln!(
            "\n*** NOT RUN: the GPU image is not among the images to test (CI builds the CPU \
             images only; `make test-images IMAGES_TEST=\"sightline-server \
             sightline-operator sightline-server-gpu\"` tests it) ***\n"
        );
        return;
    }
    if !have_archives(&["sightline-server-gpu"])
        || !have_tools(&["umoci", &runtime(), "nsenter", "unshare", "ip", "curl"])
        || !have_root()
        || !sightline_e2e::require(&[models().join("test-classifier.onnx")])
    {
        return;
    }
    let layout = Layout::open(&archive("sightline-server-gpu"));
    let config = layout.config("amd64");
    assert_eq!(
        env_map(&config)["NVIDIA_DRIVER_CAPABILITIES"],
        "compute,utility"
    );
    let bundle = layout.unpack("amd64");
    drop(layout);
    let netns = Netns::new();
    // The image's dynamic loader resolves every library of the runtime (including those
    // cuDNN opens later): all are in the image but the driver's, libcuda.so.1, which the
    // NVIDIA container toolkit mounts from the node. (What `ldd` does; the image has none.)
    let lib_dir = bundle.rootfs.join("opt/onnxruntime/lib");
    let mut libs: Vec<String> = std::fs::read_dir(&lib_dir)
        .expect("lib dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    libs.sort();
    assert!(
        libs.iter().any(|l| l.starts_with("libcudnn"))
            && libs.iter().any(|l| l.starts_with("libcublas"))
            && libs.iter().any(|l| l == "libonnxruntime_providers_cuda.so"),
        "{libs:?}"
    );
    let mut unresolved = BTreeSet::new();
    for lib in &libs {
        let path = format!("/opt/onnxruntime/lib/{lib}");
        let (_, listing) = bundle.run_command(
            &["/lib64/ld-linux-x86-64.so.2", &path],
            &["LD_TRACE_LOADED_OBJECTS=1"],
            &[],
            &netns,
        );
        assert!(listing.contains("libc.so.6 =>"), "{lib}: {listing}");
        for line in listing.lines().filter(|l| l.contains("not found")) {
            unresolved.insert(format!("{lib}: {}", line.trim()));
        }
    }
    assert!(
        unresolved
            .iter()
            .all(|l| l.ends_with("libcuda.so.1 => not found")),
        "libraries missing from the GPU image: {unresolved:?}"
    );
    eprintln!(
        "{} libraries resolve in the GPU image; only the driver is left to the node: {unresolved:?}",
        libs.len()
    );

    // On the CPU the GPU image serves as the CPU image does; asked for the GPU on a machine
    // without one, it says so on /readyz instead of serving on the CPU.
    let scratch = ScratchDir::new("gpu").expect("scratch");
    let mut cpu = bundle.start(
        &[
            "recognize",
            "--listen",
            "127.0.0.1:8080",
            "--model",
            "/models/test-classifier.onnx",
        ],
        &[models_mount(), tmp_mount(&scratch)],
        &netns,
    );
    wait_ready(&netns, &mut cpu, "http://127.0.0.1:8080/readyz");
    drop(cpu);
    let gpu = bundle.start(
        &[
            "recognize",
            "--listen",
            "127.0.0.1:8081",
            "--model",
            "/models/test-classifier.onnx",
            "--device",
            "gpu",
        ],
        &[models_mount(), tmp_mount(&scratch)],
        &netns,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (code, body) = netns.http("http://127.0.0.1:8081/readyz", None);
        if code == 503 && body.contains("ExecutionProviderUnavailable") {
            break body;
        }
        assert!(
            code != 200,
            "the GPU image served without a GPU: {body}\n{}",
            gpu.output()
        );
        assert!(
            Instant::now() < deadline,
            "no ExecutionProviderUnavailable within 60 s (last {code} {body}):\n{}",
            gpu.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("GPU image without a GPU: {body}");
    drop(gpu);
}

// ------------------------------------------------------------------------------------------
// The Dockerfiles: the same files, environment and labels as `make images`

/// The instructions of a Dockerfile, continuation lines joined, comments dropped.
fn dockerfile_instructions(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// `a=b c="d e"` → [(a, b), (c, d e)]
fn key_values(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return pairs;
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    target: Option<String>,
    digest: Option<String>,
}

/// Every path under root with its type, mode, owner, size, link target and (for files not in
/// `no_digest`) content digest.
fn tree(root: &Path, no_digest: &BTreeSet<String>) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let kind = if meta.file_type().is_symlink() {
                'l'
            } else if meta.is_dir() {
                stack.push(path.clone());
                'd'
            } else {
                'f'
            };
            let digest = (kind == 'f' && !no_digest.contains(&rel)).then(|| sha256(&path));
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: if kind == 'l' { 0 } else { meta.mode() & 0o7777 },
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: if kind == 'f' { meta.len() } else { 0 },
                    target: (kind == 'l').then(|| {
                        std::fs::read_link(&path)
                            .expect("readlink")
                            .to_string_lossy()
                            .into_owned()
                    }),
                    digest,
                },
            );
        }
    }
    out
}

#[test]
#[ignore = "needs the image archives: make test-images"]
fn dockerfiles_build_what_make_images_builds() {
    if !have_archives(&["sightline-server", "sightline-operator"])
        || !have_tools(&["umoci", "python3", "dpkg-deb"])
        || !have_root()
    {
        return;
    }
    let version = crate_version();
    let mut names = vec!["sightline-server", "sightline-operator"];
    if gpu_tested() {
        names.push("sightline-server-gpu");
    }
    for name in names {
        let dockerfile = repo_root().join(format!("manifests/docker/{name}.Dockerfile"));
        let instructions = dockerfile_instructions(&dockerfile);
        let last_from = instructions
            .iter()
            .rposition(|(i, _)| i == "FROM")
            .expect("FROM");
        assert_eq!(
            instructions[last_from].1, "scratch",
            "{name}: the image starts from nothing"
        );
        let final_stage = &instructions[last_from + 1..];
        let layout = Layout::open(&archive(name));
        let config = layout.config(host_arch());
        let c = &config["config"];
        // Unpacked first and the layout dropped: the GPU image needs the disk space.
        let bundle = layout.unpack(host_arch());
        drop(layout);

        let env: Vec<String> = final_stage
            .iter()
            .filter(|(i, _)| i == "ENV")
            .flat_map(|(_, rest)| key_values(rest))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(json!(env), c["Env"], "{name}: ENV");
        let single = |word: &str| {
            final_stage
                .iter()
                .filter(|(i, _)| i == word)
                .map(|(_, rest)| rest.clone())
                .next_back()
                .unwrap_or_else(|| panic!("{name}: no {word}"))
        };
        assert_eq!(json!(single("USER")), c["User"], "{name}: USER");
        assert_eq!(json!(single("WORKDIR")), c["WorkingDir"], "{name}: WORKDIR");
        let exposed: BTreeSet<String> = single("EXPOSE")
            .split_whitespace()
            .map(|p| format!("{p}/tcp"))
            .collect();
        let image_ports: BTreeSet<String> = c["ExposedPorts"]
            .as_object()
            .expect("ExposedPorts")
            .keys()
            .cloned()
            .collect();
        assert_eq!(exposed, image_ports, "{name}: EXPOSE");
        for word in ["ENTRYPOINT", "CMD"] {
            let parsed: Value = serde_json::from_str(&single(word)).expect("exec form");
            let key = if word == "CMD" { "Cmd" } else { "Entrypoint" };
            assert_eq!(parsed, c[key], "{name}: {word}");
        }
        let args: BTreeMap<String, String> = final_stage
            .iter()
            .filter(|(i, _)| i == "ARG")
            .filter_map(|(_, rest)| rest.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        assert_eq!(args["VERSION"], version, "{name}: ARG VERSION");
        let labels: BTreeMap<String, String> = final_stage
            .iter()
            .filter(|(i, _)| i == "LABEL")
            .flat_map(|(_, rest)| key_values(rest))
            .collect();
        let image_labels = c["Labels"].as_object().expect("Labels");
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            image_labels.keys().collect::<Vec<_>>(),
            "{name}: LABEL keys"
        );
        for (key, value) in &labels {
            if !value.contains("${") {
                assert_eq!(json!(value), image_labels[key], "{name}: LABEL {key}");
            }
        }

        // The files: the rootfs stage's own command, run here, plus the binaries the final
        // stage copies, against the image's layers as umoci unpacks them.
        let run_line = instructions[..last_from]
            .iter()
            .filter(|(i, rest)| i == "RUN" && rest.contains("images/build.py"))
            .map(|(_, rest)| rest.clone())
            .next_back()
            .expect("the rootfs stage runs images/build.py");
        let words: Vec<&str> = run_line.split_whitespace().collect();
        let script = words
            .iter()
            .position(|w| w.ends_with("images/build.py"))
            .expect("build.py");
        let mut argv: Vec<String> = Vec::new();
        let mut rest = words[script + 1..].iter();
        let scratch = ScratchDir::new("dockerfile").expect("scratch");
        let out = scratch.path().join("rootfs");
        while let Some(w) = rest.next() {
            match *w {
                "--cache" => {
                    rest.next();
                }
                "--out" => {
                    let stage_out = rest.next().expect("--out value");
                    argv.push("--out".into());
                    argv.push(out.display().to_string());
                    assert_eq!(*stage_out, "/rootfs");
                }
                "&&" => break,
                w => argv.push(w.into()),
            }
        }
        assert!(
            argv.windows(2).any(|w| w == ["--image", name]),
            "{name}: the rootfs stage builds {argv:?}"
        );
        run(Command::new("python3")
            .arg(repo_root().join("images/build.py"))
            .args(&argv)
            .current_dir(repo_root()));
        let mut binaries = BTreeSet::new();
        for (_, rest) in final_stage.iter().filter(|(i, _)| i == "COPY") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            match parts.as_slice() {
                ["--from=rootfs", "/rootfs/", "/"] => {}
                ["--from=build", src, dst] => {
                    assert_eq!(
                        Path::new(src).file_name(),
                        Path::new(dst).file_name(),
                        "{name}: {rest}"
                    );
                    let rel = dst.trim_start_matches('/').to_string();
                    // The build stage's `strip -o` keeps the binary's mode (0755, root).
                    let meta = std::fs::metadata(
                        repo_root()
                            .join("target/release")
                            .join(Path::new(src).file_name().expect("name")),
                    );
                    let target = out.join(&rel);
                    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&target, b"").expect("placeholder");
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod");
                    assert!(meta.is_ok(), "{name}: no release binary for {src}");
                    binaries.insert(rel);
                }
                other => panic!("{name}: unexpected COPY {other:?}"),
            }
        }
        let mut from_docker = tree(&out, &binaries);
        let mut from_make = tree(&bundle.rootfs, &binaries);
        for bin in &binaries {
            // Built from the same sources; compared by path, type, mode and owner only.
            for t in [&mut from_docker, &mut from_make] {
                t.get_mut(bin).expect("binary").size = 0;
            }
        }
        let only_docker: Vec<_> = from_docker
            .keys()
            .filter(|k| !from_make.contains_key(*k))
            .collect();
        let only_make: Vec<_> = from_make
            .keys()
            .filter(|k| !from_docker.contains_key(*k))
            .collect();
        assert!(
            only_docker.is_empty() && only_make.is_empty(),
            "{name}: only in the Dockerfile's image: {only_docker:?}; only in make images': {only_make:?}"
        );
        for (path, entry) in &from_make {
            assert_eq!(Some(entry), from_docker.get(path), "{name}: {path}");
        }
        eprintln!(
            "{name}: Dockerfile and make images agree on {} paths",
            from_make.len()
        );
    }
}

// ------------------------------------------------------------------------------------------
// Loading into a container runtime's image store

struct Containerd {
    child: Child,
    dir: ScratchDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = ScratchDir::new("containerd").expect("scratch");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c
            .ctr()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "sightline-test"]);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots may still be mounted under the root.
        let root = self.dir.path().join("root");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for line in mounts.lines() {
                if let Some(point) = line.split_whitespace().nth(1)
                    && point.starts_with(&root.display().to_string())
                {
                    let _ = Command::new("umount").arg(point).output();
                }
            }
        }
    }
}

#[test]
#[ignore = "needs the image archives: make test-images"]
fn archives_load_into_containerd_and_run_there() {
    let names = [
        "sightline-server",
        "sightline-operator",
        "model-test-classifier",
    ];
    if !have_archives(&names) || !have_tools(&["containerd", "ctr"]) || !have_root() {
        return;
    }
    let containerd = Containerd::start();
    let mut loaded = Vec::new();
    for name in names {
        let layout = Layout::open(&archive(name));
        // What `kind load image-archive` runs on each node.
        run(containerd
            .ctr()
            .args(["images", "import", "--all-platforms"])
            .arg(archive(name)));
        loaded.push((layout.name(), layout.top["digest"].clone()));
    }
    let listing = stdout(containerd.ctr().args(["images", "ls"]));
    for (name, digest) in &loaded {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not in containerd's images:\n{listing}"));
        assert!(
            line.contains(digest.as_str().expect("digest")),
            "{name}: {line}"
        );
    }
    // containerd unpacks it into a snapshot and runs it under runc, with the image's user
    // and a read-only root, as kubelet would.
    let operator = &loaded[1].0;
    let out = containerd
        .ctr()
        .args(["run", "--rm", "--read-only", operator])
        .arg(format!("sightline-crd-{}", std::process::id()))
        .args(["/usr/local/bin/sightline-operator", "crd"])
        .output()
        .expect("ctr run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("kind: CustomResourceDefinition"),
        "ctr run: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let server = &loaded[0].0;
    let out = containerd
        .ctr()
        .args(["run", "--rm", "--read-only", server])
        .arg(format!("sightline-id-{}", std::process::id()))
        .args(["/usr/local/bin/sightline-server", "--version"])
        .output()
        .expect("ctr run");
    assert!(
        out.status.success(),
        "ctr run sightline-server --version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "containerd ran {server}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

// ------------------------------------------------------------------------------------------
// No archives needed (these run in `make test`)

#[test]
fn registry_overlay_renames_every_image() {
    if !have_tools(&["kubectl"]) {
        return;
    }
    let render = |dir: &str| {
        stdout(
            Command::new("kubectl")
                .args(["kustomize", &repo_root().join(dir).display().to_string()]),
        )
    };
    let install = render("manifests/install");
    let registry = render("manifests/registry");
    let renamed = [
        "sightline-operator",
        "sightline-server",
        "sightline-server-gpu",
    ];
    for name in renamed {
        let from = format!("ghcr.io/sightline/{name}:0.1.0");
        assert!(
            install.contains(&format!(" {from}\n")),
            "{from} in manifests/install"
        );
        assert!(
            registry.contains(&format!(" registry.example.com/sightline/{name}:0.1.0\n")),
            "{name} renamed by manifests/registry"
        );
        assert!(
            !registry.contains(&from),
            "{from} left in manifests/registry"
        );
    }
    // Nothing else changes.
    let mut expected = install.clone();
    for name in renamed {
        expected = expected.replace(
            &format!(" ghcr.io/sightline/{name}:0.1.0\n"),
            &format!(" registry.example.com/sightline/{name}:0.1.0\n"),
        );
    }
    assert_eq!(expected, registry);
}

#[test]
fn images_carry_the_onnx_runtime_the_tests_use() {
    let requirements =
        std::fs::read_to_string(repo_root().join("requirements.txt")).expect("requirements");
    let pinned = requirements
        .lines()
        .find_map(|l| l.strip_prefix("onnxruntime=="))
        .expect("onnxruntime in requirements.txt");
    let lock = std::fs::read_to_string(repo_root().join("images/wheels.lock")).expect("lock");
    let mut seen = 0;
    for line in lock.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[2] == "onnxruntime" || f[2] == "onnxruntime-gpu" {
            assert_eq!(f[3], pinned, "{line}");
            seen += 1;
        }
    }
    assert!(seen >= 2, "onnxruntime wheels in images/wheels.lock");
    // The path the operator gives every server container
    // (operator/src/build/model/deployment.rs).
    let model_rs =
        std::fs::read_to_string(repo_root().join("operator/src/build/model/deployment.rs"))
            .expect("deployment.rs");
    assert!(
        model_rs.contains(&format!("\"{ORT_LIB}\"")),
        "the operator's ORT_LIB is not {ORT_LIB}"
    );
}
