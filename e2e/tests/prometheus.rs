//! Observability, proven with the real tools: the three roles (upload, recognize, store) as
//! three processes and the operator (its Kubernetes API unreachable) on loopback, scraped
//! every second by a real Prometheus (Debian's `prometheus` package) that also loads the
//! alert rules. Traffic goes through the pipeline — good images, bad images, unknown ids,
//! missing and wrong API keys — and users' feedback on its answers (so the store role's
//! live quality gauges have figures), and then, through Prometheus's HTTP API:
//!
//! - every expression of every dashboard panel returns data (with the dashboard's own
//!   variables resolved through their `label_values` queries),
//! - every metric a dashboard or rule names is one a process exports,
//! - every alert and recording rule parses, loads and evaluates without error;
//!
//! and, with `promtool`: each process's `/metrics` passes `promtool check metrics`, the
//! PrometheusRule's groups pass `promtool check rules`. The request id sent with a pipeline
//! call comes back in `x-request-id` and is in the JSON request lines of all three services.
//!
//! The tests that need no tool check the dashboards' Grafana model, the alerts' runbooks and
//! that `kubectl kustomize manifests/monitoring` builds offline.
//!
//! Needs `target/debug/sightline-server` and `target/debug/sightline-operator` (`make test`
//! builds both), `make deps models`, and `prometheus`/`promtool` (`make deps` installs them as
//! root). Under CI (`CI` set) anything missing is a failure; elsewhere a loud skip.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sightline_e2e::process::{ScratchDir, ServerProcess, free_ports, require_server_binary};
use sightline_e2e::{models, ort_lib, repo_root, require};

const NAMESPACE: &str = "sightline-e2e";
const API_KEY: &str = "e2e-observability-key";
const REQUEST_ID: &str = "e2e-observability-0001";
/// The batch shard's job and its photos (one more, broken, is a recorded failure).
const BATCH_JOB: &str = "rjob-e2e";
const BATCH_IMAGES: u8 = 20;
/// What `$__rate_interval` becomes: 60 one-second scrapes.
const RATE_INTERVAL: &str = "1m";

fn monitoring_dir() -> PathBuf {
    repo_root().join("manifests/monitoring")
}

/// Loud skip locally, failure under CI.
fn missing(message: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{message} (required under CI)");
    }
    eprintln!("\n*** SKIPPED (not in CI): {message} ***\n");
}

/// `name` on `PATH`, or `None` after [`missing`].
fn require_tool(name: &str, hint: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(&format!("`{name}` is not installed: {hint}"));
    }
    found
}

const PROMETHEUS_HINT: &str =
    "`make deps` installs Debian's prometheus package as root (sudo apt-get install prometheus)";

/// A child process killed when dropped.
struct Spawned {
    child: Child,
    log: PathBuf,
}

impl Spawned {
    fn start(command: &mut Command, log: PathBuf) -> Spawned {
        let file = std::fs::File::create(&log).expect("create log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Spawned { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET url` answers 200.
    fn wait_for(&mut self, url: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "exited with {status} before {url} answered:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = sightline_e2e::plain_http::get(url) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not answer 200 within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn png(rgb: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

// ---------------------------------------------------------------------------------------
// The manifests as data

fn dashboards() -> Vec<(String, Value)> {
    let dir = monitoring_dir().join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                json,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, rows' nested panels included, rows themselves excluded.
fn data_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(dashboard, panel title, expression)` for every target of every panel.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for panel in data_panels(&d) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default().to_string();
                out.push((
                    file.clone(),
                    panel["title"].as_str().unwrap_or_default().to_string(),
                    expr,
                ));
            }
        }
    }
    out
}

fn prometheus_rule() -> serde_yaml::Value {
    let path = monitoring_dir().join("prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("read the PrometheusRule");
    serde_yaml::from_str(&text).expect("the PrometheusRule is YAML")
}

/// The PrometheusRule's `spec` (its `groups`) as a plain Prometheus rules file.
fn plain_rules_file() -> String {
    serde_yaml::to_string(&prometheus_rule()["spec"]).expect("YAML")
}

/// `(name, expr, rule)`: alerts by their `alert`, recording rules by their `record`.
fn rules() -> Vec<(String, String, serde_yaml::Value)> {
    let rule = prometheus_rule();
    let mut out = Vec::new();
    for group in rule["spec"]["groups"].as_sequence().into_iter().flatten() {
        for r in group["rules"].as_sequence().into_iter().flatten() {
            let name = r["alert"]
                .as_str()
                .or_else(|| r["record"].as_str())
                .unwrap_or_default()
                .to_string();
            let expr = r["expr"].as_str().unwrap_or_default().to_string();
            out.push((name, expr, r.clone()));
        }
    }
    out
}

/// Names in a PromQL expression that are metrics of ours (or `up`): identifiers starting
/// with `sightline_`/`process_` (label names never do), recording rules (`a:b:c`) excluded.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
            current.clear();
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if !current.contains(':')
                && (current.starts_with("sightline_")
                    || current.starts_with("process_")
                    || current == "up")
            {
                names.insert(current.clone());
            }
            current.clear();
        }
    }
    names
}

// ---------------------------------------------------------------------------------------
// Tests without external tools

#[test]
fn dashboards_are_importable_grafana_models() {
    let all = dashboards();
    let titles: BTreeSet<&str> = all
        .iter()
        .filter_map(|(_, d)| d["title"].as_str())
        .collect();
    for want in ["Overview", "Inference", "Pipeline", "Operator"] {
        assert!(
            titles.contains(format!("Sightline / {want}").as_str()),
            "no {want} dashboard in {titles:?}"
        );
    }
    let mut uids = BTreeSet::new();
    for (file, d) in &all {
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40 && uids.insert(uid.to_string()),
            "{file}: uid {uid:?} missing, too long or not unique"
        );
        assert!(d["title"].is_string(), "{file}: no title");
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let var = |name: &str| vars.iter().find(|v| v["name"] == name);
        let ds = var("datasource").unwrap_or_else(|| panic!("{file}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{file}");
        assert_eq!(ds["query"], "prometheus", "{file}");
        assert!(var("namespace").is_some(), "{file}: no namespace variable");
        if !file.starts_with("operator") && !file.starts_with("pipeline") {
            assert!(var("model").is_some(), "{file}: no model variable");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{file}: variable {v}"
            );
        }
        let panels = data_panels(d);
        assert!(panels.len() >= 4, "{file}: only {} panels", panels.len());
        let mut ids = BTreeSet::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                p["id"].as_u64().is_some_and(|id| ids.insert(id)),
                "{file}/{title}: id"
            );
            assert!(
                p["gridPos"]["w"].as_u64().is_some(),
                "{file}/{title}: gridPos"
            );
            assert_eq!(p["datasource"]["type"], "prometheus", "{file}/{title}");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}/{title}");
            let unit = p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(!unit.is_empty(), "{file}/{title}: no unit");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}/{title}: no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{file}/{title}");
                assert!(t["refId"].is_string(), "{file}/{title}: refId");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!metric_names(expr).is_empty(), "{file}/{title}: {expr}");
            }
        }
    }
    // The brief's panels, by what they show.
    let exprs: Vec<String> = dashboard_queries().into_iter().map(|q| q.2).collect();
    for needle in [
        "sightline_http_requests_total",
        "sightline_http_request_duration_seconds_bucket",
        "sightline_model_ready",
        "sightline_inference_batch_size_bucket",
        "sightline_inference_queue_depth",
        "sightline_inference_duration_seconds_bucket",
        "sightline_model_info",
        "sightline_uploads_rejected_total",
        "sightline_results_saved_total",
        "sightline_downstream_calls_total",
        "sightline_circuit_breaker_open",
        "sightline_db_errors_total",
        "sightline_operator_reconciles_total",
        "sightline_operator_reconcile_errors_total",
        "sightline_operator_reconcile_duration_seconds_bucket",
        "sightline_operator_managed_objects",
        "sightline_quality_accuracy",
        "sightline_quality_samples",
        "sightline_quality_class_f1",
        "sightline_quality_read_timestamp_seconds",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no dashboard panel queries {needle}"
        );
    }
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let runbooks =
        std::fs::read_to_string(repo_root().join("docs/runbooks.md")).expect("docs/runbooks.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let alerts: Vec<_> = rules()
        .into_iter()
        .filter(|(_, _, r)| r["alert"].is_string())
        .collect();
    let names: BTreeSet<&str> = alerts.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "SightlineHighErrorRatio",
        "SightlineLatencySLOBurnFast",
        "SightlineLatencySLOBurnSlow",
        "SightlineModelNotReady",
        "SightlineQueueSaturated",
        "SightlineDatabaseErrors",
        "SightlineReconcileFailures",
        "SightlineCanaryRolledBack",
        "SightlineOperatorDown",
    ] {
        assert!(names.contains(want), "no alert {want}");
    }
    for (name, _, rule) in &alerts {
        let a = &rule["annotations"];
        for key in ["summary", "description"] {
            assert!(
                a[key].as_str().is_some_and(|s| s.len() > 10),
                "{name}: no {key}"
            );
        }
        let url = a["runbook_url"].as_str().unwrap_or_default();
        let (page, fragment) = url.split_once('#').unwrap_or((url, ""));
        assert!(
            page.ends_with("docs/runbooks.md"),
            "{name}: runbook_url {url}"
        );
        assert_eq!(fragment, name.to_lowercase(), "{name}: anchor");
        assert!(
            anchors.contains(fragment),
            "{name}: no `## {name}` in docs/runbooks.md"
        );
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
    }
    // The multi-window burn-rate alerts look at a long and a short window.
    for (name, expr, _) in &alerts {
        if name.contains("SLOBurn") {
            assert!(
                expr.split_whitespace().any(|w| w == "and"),
                "{name} is not multi-window: {expr}"
            );
        }
    }
}

#[test]
fn kustomize_builds_the_monitoring_stack_offline() {
    let Some(kubectl) = require_tool("kubectl", "install kubectl") else {
        return;
    };
    let output = Command::new(kubectl)
        .args(["kustomize"])
        .arg(monitoring_dir())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut dashboards_seen = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("YAML");
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        *kinds.entry(kind.clone()).or_default() += 1;
        assert_eq!(v["metadata"]["labels"]["release"], "kube-prometheus-stack");
        if kind == "ConfigMap" {
            assert_eq!(v["metadata"]["labels"]["grafana_dashboard"], "1");
            let data = v["data"].as_mapping().expect("data");
            for (file, json) in data {
                let file = file.as_str().unwrap_or_default();
                let on_disk =
                    std::fs::read_to_string(monitoring_dir().join("dashboards").join(file))
                        .expect("dashboard file");
                assert_eq!(json.as_str(), Some(on_disk.as_str()), "{file} differs");
                dashboards_seen.insert(file.to_string());
            }
        }
    }
    let files: BTreeSet<String> = dashboards().into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        dashboards_seen, files,
        "every dashboard becomes a ConfigMap"
    );
    for kind in ["PrometheusRule", "PodMonitor", "ServiceMonitor"] {
        assert!(kinds.contains_key(kind), "no {kind} in {kinds:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The real Prometheus

struct Prom {
    base: String,
    client: reqwest::Client,
}

impl Prom {
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response.json().await.expect("Prometheus answers JSON")
    }

    /// `Ok(result vector)` or `Err(Prometheus's error)`.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.get("/api/v1/query", &[("query", expr)]).await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn scalar(&self, expr: &str) -> f64 {
        self.query(expr)
            .await
            .ok()
            .and_then(|r| r.first().cloned())
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
            .unwrap_or(f64::NAN)
    }

    /// Values of `label` over the series `selector` selects.
    async fn label_values(&self, selector: &str, label: &str) -> BTreeSet<String> {
        let v = self.get("/api/v1/series", &[("match[]", selector)]).await;
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label].as_str().map(str::to_string))
            .collect()
    }
}

/// Replaces Grafana variables (`$name`, `${name}`) in `text`, longest names first.
fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = text.to_string();
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &values[name])
            .replace(&format!("${name}"), &values[name]);
    }
    out
}

/// The sample names the `# TYPE` lines of an exposition declare (either text format).
fn declared_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' '))
        else {
            continue;
        };
        let base = name.strip_suffix("_total").unwrap_or(name);
        match kind.trim() {
            "counter" => {
                names.insert(format!("{base}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

async fn get_metrics_text(client: &reqwest::Client, url: &str) -> (String, String) {
    let response = client.get(url).send().await.expect("GET /metrics");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, response.text().await.expect("body"))
}

fn promtool_check_metrics(promtool: &Path, name: &str, text: &str) -> Option<String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    (!out.status.success()).then(|| {
        format!(
            "promtool check metrics on {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_process_and_every_dashboard_query_has_data() {
    let started = Instant::now();
    let Some(server) = require_server_binary() else {
        return;
    };
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let Some(operator) = sightline_e2e::process::operator_binary() else {
        missing(
            "no sightline-operator next to sightline-server: run `cargo build -p sightline-operator` (`make test` does)",
        );
        return;
    };
    let (Some(prometheus), Some(promtool)) = (
        require_tool("prometheus", PROMETHEUS_HINT),
        require_tool("promtool", PROMETHEUS_HINT),
    ) else {
        return;
    };
    let dir = ScratchDir::new("prometheus").expect("scratch dir");
    let ports = free_ports(7).expect("ports");
    let (store_port, recognize_port, upload_port, operator_port, prom_port, closed_port) =
        (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]);
    let batch_port = ports[6];

    // The three roles, JSON logs, API keys on every one (the upload role forwards the key).
    let common = |extra: Vec<String>| {
        let mut args = extra;
        args.extend(
            ["--log-format", "json", "--api-keys", API_KEY]
                .into_iter()
                .map(String::from),
        );
        args
    };
    let store = ServerProcess::start_on(
        &server,
        "store",
        store_port,
        &common(vec![
            "--data-dir".into(),
            dir.path().join("store").display().to_string(),
            // The live quality gauges read every second, so the Quality row has data.
            "--quality-refresh-secs".into(),
            "1".into(),
        ]),
        dir.path(),
    )
    .expect("store starts");
    let recognize = ServerProcess::start_on(
        &server,
        "recognize",
        recognize_port,
        &common(vec![
            "--model".into(),
            models().join("test-classifier.onnx").display().to_string(),
            "--ort-lib".into(),
            ort_lib().display().to_string(),
            "--intra-threads".into(),
            "1".into(),
            "--max-delay-ms".into(),
            "5".into(),
            // A small drift baseline, so that the drift panels have figures.
            "--drift-baseline-answers".into(),
            "5".into(),
            "--drift-min-samples".into(),
            "5".into(),
        ]),
        dir.path(),
    )
    .expect("recognize starts");
    // A canary in progress, as the operator's traffic ConfigMap would say: half the
    // recognitions to a "candidate" (the same recognize process here) and every stable one
    // mirrored to it, so the rollout panels have data.
    let traffic = dir.path().join("traffic.json");
    std::fs::write(
        &traffic,
        serde_json::json!({
            "model": "test-classifier",
            "stable": format!("http://127.0.0.1:{recognize_port}"),
            "candidate": format!("http://127.0.0.1:{recognize_port}"),
            "candidateWeight": 50, "mirrorPercent": 100, "revision": "e2e"})
        .to_string(),
    )
    .expect("write traffic.json");
    let upload = ServerProcess::start_on(
        &server,
        "upload",
        upload_port,
        &common(vec![
            "--data-dir".into(),
            dir.path().join("upload").display().to_string(),
            "--recognize-url".into(),
            format!("http://127.0.0.1:{recognize_port}"),
            "--store-url".into(),
            format!("http://127.0.0.1:{store_port}"),
            "--traffic-file".into(),
            traffic.display().to_string(),
        ]),
        dir.path(),
    )
    .expect("upload starts");

    // The operator, its API server unreachable: it keeps retrying and still serves /metrics.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: unreachable\n  cluster:\n    \
             server: https://127.0.0.1:{closed_port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: nobody\n  user:\n    token: not-a-token\ncontexts:\n- name: \
             unreachable\n  context:\n    cluster: unreachable\n    user: nobody\n\
             current-context: unreachable\n"
        ),
    )
    .expect("write kubeconfig");
    let mut operator_process = Spawned::start(
        Command::new(&operator)
            .args(["run", "--metrics-listen"])
            .arg(format!("127.0.0.1:{operator_port}"))
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST"),
        dir.path().join("operator.log"),
    );
    operator_process.wait_for(
        &format!("http://127.0.0.1:{operator_port}/metrics"),
        Duration::from_secs(30),
    );

    // A batch shard, as a RecognitionJob's pod runs it, serving its figures until the end.
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir photos");
    for i in 0..BATCH_IMAGES {
        std::fs::write(
            photos.join(format!("{i:02}.png")),
            png([i * 10, 200 - i * 5, 90], 16, 16),
        )
        .expect("write a photo");
    }
    std::fs::write(photos.join("broken.png"), b"not a photo").expect("write");
    let mut batch_process = Spawned::start(
        sightline_e2e::process::batch_command(&server, &photos, &dir.path().join("batch.jsonl"))
            .args([
                "--job",
                BATCH_JOB,
                "--no-progress",
                "--metrics-linger-seconds",
                "600",
            ])
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{batch_port}")),
        dir.path().join("batch.log"),
    );
    batch_process.wait_for(
        &format!("http://127.0.0.1:{batch_port}/metrics"),
        Duration::from_secs(30),
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut failures: Vec<String> = Vec::new();
    // Names the processes declare (`# TYPE`), with the samples those families have.
    let mut declared: BTreeSet<String> = BTreeSet::new();

    // promtool: each process's exposition (the classic text format curl gets) and the rules.
    let targets = [
        ("upload", upload_port),
        ("recognize", recognize_port),
        ("store", store_port),
        ("operator", operator_port),
    ];
    for (name, port) in targets {
        let (content_type, text) =
            get_metrics_text(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
        if name != "operator" {
            assert!(
                content_type.starts_with("text/plain; version=0.0.4"),
                "{name}: {content_type}"
            );
            for family in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
            ] {
                if !text.contains(family) {
                    failures.push(format!("{name} does not export {family}"));
                }
            }
            if !text.contains(&format!("sightline_server_info{{role=\"{name}\"")) {
                failures.push(format!("{name}: no sightline_server_info with its role"));
            }
        }
        declared.extend(declared_names(&text));
        failures.extend(promtool_check_metrics(&promtool, name, &text));
    }
    let (_, batch_text) =
        get_metrics_text(&client, &format!("http://127.0.0.1:{batch_port}/metrics")).await;
    declared.extend(declared_names(&batch_text));
    failures.extend(promtool_check_metrics(&promtool, "batch", &batch_text));
    let rules_path = dir.path().join("rules.yml");
    std::fs::write(&rules_path, plain_rules_file()).expect("write rules");
    let checked = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
        .expect("run promtool check rules");
    assert!(
        checked.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Prometheus: every process every second, the rules evaluated every second.
    let job = |name: &str, port: u16| {
        format!(
            "  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n        \
             labels: {{namespace: {NAMESPACE}}}\n"
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: ['{}']\nscrape_configs:\n{}{}{}{}{}    honor_labels: true\n",
        rules_path.display(),
        job("sightline-upload", upload_port),
        job("sightline-recognize", recognize_port),
        job("sightline-store", store_port),
        job("sightline-operator", operator_port),
        // The batch shard's own `job` label names its job (as podmonitor-batch.yaml keeps it).
        job("sightline-batch", batch_port),
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let mut prometheus_process = Spawned::start(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--log.level=warn"),
        dir.path().join("prometheus.log"),
    );
    prometheus_process.wait_for(
        &format!("http://127.0.0.1:{prom_port}/-/ready"),
        Duration::from_secs(30),
    );
    let prom = Prom {
        base: format!("http://127.0.0.1:{prom_port}"),
        client: client.clone(),
    };

    // Traffic, spread over a few seconds so rates see it: good images through the pipeline
    // (some concurrent, so batches form; one twice), and failures of every kind.
    let up = |path: &str| format!("http://127.0.0.1:{upload_port}{path}");
    let rec = |path: &str| format!("http://127.0.0.1:{recognize_port}{path}");
    let sto = |path: &str| format!("http://127.0.0.1:{store_port}{path}");
    let key = format!("Bearer {API_KEY}");
    let mut expect = |what: &str, status: u16, got: reqwest::StatusCode| {
        if got.as_u16() != status {
            failures.push(format!("{what}: expected {status}, got {got}"));
        }
    };
    let traced = client
        .post(up("/api/v1/pipeline"))
        .header("authorization", &key)
        .header("x-request-id", REQUEST_ID)
        .body(png([200, 30, 30], 64, 48))
        .send()
        .await
        .expect("pipeline call");
    expect("traced pipeline call", 201, traced.status());
    assert_eq!(
        traced
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(REQUEST_ID),
        "the request id comes back"
    );
    let mut saved = 1usize;
    for round in 0..4u8 {
        let calls = (0..6u8).map(|i| {
            let body = png([round * 40, i * 40, 128], 32 + u32::from(i), 32);
            client
                .post(up("/api/v1/pipeline"))
                .header("authorization", &key)
                .body(body)
                .send()
        });
        for r in futures::future::join_all(calls).await {
            let status = r.expect("pipeline call").status();
            expect("pipeline call", 201, status);
            saved += 1;
        }
        let again = client
            .post(up("/api/v1/pipeline"))
            .header("authorization", &key)
            .body(png([200, 30, 30], 64, 48))
            .send()
            .await
            .expect("repeat");
        expect("same image again", 200, again.status());
        let bad = [
            (
                up("/api/v1/pipeline"),
                b"this is not an image".to_vec(),
                415,
            ),
            (
                up("/api/v1/images"),
                png([9, 9, 9], 40, 40)[..60].to_vec(),
                400,
            ),
            (up("/api/v1/pipeline"), Vec::new(), 400),
            (rec("/api/v1/recognize"), b"plain text".to_vec(), 415),
        ];
        for (url, body, status) in bad {
            let r = client
                .post(&url)
                .header("authorization", &key)
                .body(body)
                .send()
                .await;
            expect(
                &format!("bad image to {url}"),
                status,
                r.expect("call").status(),
            );
        }
        let unknown = "0".repeat(64);
        for (url, status) in [
            (up(&format!("/api/v1/images/{unknown}")), 404),
            (up("/no/such/route"), 404),
            (sto("/api/v1/results/nope"), 404),
            (sto("/api/v1/results?limit=5"), 200),
        ] {
            let r = client.get(&url).header("authorization", &key).send().await;
            expect(&url, status, r.expect("call").status());
        }
        let no_key = client
            .post(up("/api/v1/pipeline"))
            .body(png([1, 2, 3], 8, 8))
            .send()
            .await;
        expect("no API key", 401, no_key.expect("call").status());
        let wrong_key = client
            .post(rec("/api/v1/recognize"))
            .header("authorization", "Bearer wrong")
            .body(png([1, 2, 3], 8, 8))
            .send()
            .await;
        expect("wrong API key", 401, wrong_key.expect("call").status());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // Users' feedback on the pipeline's answers, through the front door: the first right,
    // the others wrong ("it is a teapot").
    let listed: Value = client
        .get(up("/api/v1/results?limit=8"))
        .header("authorization", &key)
        .send()
        .await
        .expect("list results")
        .json()
        .await
        .expect("a page");
    let mut answered = 0usize;
    for (n, item) in listed["items"].as_array().into_iter().flatten().enumerate() {
        let id = item["id"].as_str().unwrap_or_default();
        let body = if n == 0 {
            serde_json::json!({"correct": true})
        } else {
            serde_json::json!({"label": "teapot"})
        };
        let r = client
            .post(up(&format!("/api/v1/results/{id}/feedback")))
            .header("authorization", &key)
            .json(&body)
            .send()
            .await;
        expect("feedback", 201, r.expect("feedback call").status());
        answered += 1;
    }
    let r = client
        .post(up(&format!("/api/v1/results/{}/feedback", "0".repeat(32))))
        .header("authorization", &key)
        .json(&serde_json::json!({"label": "teapot"}))
        .send()
        .await;
    expect(
        "feedback on an unknown result",
        404,
        r.expect("call").status(),
    );

    // Wait until Prometheus has scraped the end of the traffic and the feedback (and a few
    // scrapes more).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = prom
            .scalar("sum(sightline_results_saved_total{job=\"sightline-store\"})")
            .await;
        let operator_up = prom.scalar("up{job=\"sightline-operator\"}").await;
        let scored = prom
            .scalar("sum(sightline_quality_samples{job=\"sightline-store\", window=\"1h\"})")
            .await;
        let drift = prom
            .scalar("count(sightline_model_drift{job=\"sightline-recognize\"})")
            .await;
        let batched = prom
            .scalar(&format!(
                "sum(sightline_batch_images_total{{job=\"{BATCH_JOB}\"}})"
            ))
            .await;
        if stored >= saved as f64
            && operator_up == 1.0
            && scored >= answered as f64
            && drift == 2.0
            && batched > f64::from(BATCH_IMAGES)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see the traffic: {stored} results saved (want {saved}), \
             {scored} answers scored (want {answered}), operator up = {operator_up}, \
             {drift} drift signals (want 2), {batched} batch images (want {})\n{}",
            BATCH_IMAGES + 1,
            prometheus_process.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every metric a dashboard or rule names is exported by some process: declared in an
    // exposition (a family may have no series yet) or scraped.
    let mut exported: BTreeSet<String> =
        prom.get("/api/v1/label/__name__/values", &[]).await["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    exported.extend(declared);
    let queries = dashboard_queries();
    let all_rules = rules();
    for (source, expr) in queries
        .iter()
        .map(|(f, t, e)| (format!("{f} / {t}"), e))
        .chain(all_rules.iter().map(|(n, e, _)| (format!("rule {n}"), e)))
    {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                failures.push(format!("{source}: no process exports {name}"));
            }
        }
    }

    // Every dashboard query returns data, with its dashboard's variables resolved the way
    // Grafana resolves them (label_values over the series that exist).
    for (file, dashboard) in dashboards() {
        let mut values =
            BTreeMap::from([("__rate_interval".to_string(), RATE_INTERVAL.to_string())]);
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if var["type"] != "query" {
                continue;
            }
            let name = var["name"].as_str().unwrap_or_default().to_string();
            let query = var["definition"].as_str().unwrap_or_default();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{file}: variable {name}: {query}"));
            let (selector, label) = inner
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            let selector = substitute(selector.trim(), &values);
            let found = prom.label_values(&selector, label.trim()).await;
            if found.is_empty() {
                failures.push(format!("{file}: variable {name} ({query}) has no values"));
            }
            let joined = found.into_iter().collect::<Vec<_>>().join("|");
            values.insert(name, joined);
        }
        for panel in data_panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = substitute(target["expr"].as_str().unwrap_or_default(), &values);
                match prom.query(&expr).await {
                    Ok(result) if result.is_empty() => {
                        failures.push(format!("{file} / {title}: no data for {expr}"))
                    }
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{file} / {title}: {e} in {expr}")),
                }
            }
        }
    }

    // Every rule parses and evaluates; Prometheus loaded them all and evaluates them cleanly.
    for (name, expr, _) in &all_rules {
        if let Err(e) = prom.query(expr).await {
            failures.push(format!("rule {name}: {e}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = prom.get("/api/v1/rules", &[]).await;
        let states: Vec<(String, String, String)> = loaded["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["health"].as_str().unwrap_or_default().to_string(),
                    r["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let pending = states.iter().filter(|s| s.1 == "unknown").count();
        if states.len() == all_rules.len() && pending == 0 {
            for (name, health, error) in states.iter().filter(|s| s.1 != "ok") {
                failures.push(format!("rule {name} is {health} in Prometheus: {error}"));
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus loaded {} of {} rules, {pending} not evaluated yet",
            states.len(),
            all_rules.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The request id: one JSON request line carrying it in each of the three services.
    for process in [&upload, &recognize, &store] {
        let log = std::fs::read_to_string(dir.path().join(format!("{}.log", process.role)))
            .unwrap_or_default();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v["fields"]["message"] == "request" && v["fields"]["request_id"] == REQUEST_ID
            });
        if !found {
            failures.push(format!(
                "{}: no JSON request line with request_id {REQUEST_ID}:\n{}",
                process.role,
                process.log_tail()
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}\n--- operator log ---\n{}",
        failures.len(),
        failures.join("\n"),
        operator_process
            .log()
            .chars()
            .take(3000)
            .collect::<String>()
    );
    eprintln!("observability end to end: {:?}", started.elapsed());
}
