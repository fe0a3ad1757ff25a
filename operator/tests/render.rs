//! The operator's pure side: CRDs are current and structural, every rendered object of
//! every sample validates against the official Kubernetes schemas (kubernetes-validate,
//! Kubernetes 1.33) and the HTTPRoute against the Gateway API CRD schema, every pod meets
//! the Pod Security "restricted" profile, and the builders put what the spec asks where it
//! belongs (and nothing GPU-specific on a CPU model).

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::CustomResourceExt;
use serde_json::Value;
use sightline_operator::build::pod::Platform;
use sightline_operator::crd::{
    Autoscaling, BatchTuning, Gateway, ImageModel, RecognitionJob, RecognitionJobSpec,
    RecognitionPipeline, Runtime, Storage,
};
use sightline_operator::render::{self, Inputs};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn samples() -> Inputs {
    let dir = root().join("manifests/samples");
    let mut text = String::new();
    // The custom resources among the samples (the rest is the namespace, the Secrets and
    // the kustomization).
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("imagemodel")
                    || n.starts_with("recognitionpipeline")
                    || n.starts_with("recognitionjob")
            })
        })
        .collect();
    files.sort();
    for f in files {
        text.push_str(&std::fs::read_to_string(&f).expect("sample"));
        text.push_str("\n---\n");
    }
    render::parse(&text).expect("samples parse")
}

fn rendered() -> Vec<Value> {
    render::children(&samples(), &Platform::default()).expect("render")
}

/// The samples with the GPU sample pinned to `device: gpu` and read from a PVC (what a
/// GPU node pool with a ReadWriteMany model store would use).
fn rendered_with_gpu_on_a_claim() -> Vec<Value> {
    let mut inputs = samples();
    for m in &mut inputs.models {
        if m.metadata.name.as_deref() == Some(GPU_MODEL) {
            m.spec.runtime.device = sightline_operator::crd::Device::Gpu;
            m.spec.runtime.node_selector =
                [("nvidia.com/gpu.present".to_string(), "true".to_string())].into();
            m.spec.source.model.uri = "pvc://model-store/lite0/model.onnx".into();
            m.spec.source.labels.uri = "pvc://model-store/lite0/labels.txt".into();
        }
    }
    render::children(&inputs, &Platform::default()).expect("render")
}

const GPU_MODEL: &str = "efficientnet-lite0-gpu";
const GPU_DEPLOYMENT: &str = "efficientnet-lite0-gpu-recognize";

/// A tool from the venv, or None (a failure under CI, a loud skip elsewhere).
fn tool(name: &str) -> Option<PathBuf> {
    let path = root().join(".venv/bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let message = format!("{} is missing: run `make deps`", path.display());
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("\n*** SKIPPED (not in CI): {message} ***\n");
    None
}

#[test]
fn checked_in_crds_are_current() {
    for (name, yaml) in sightline_operator::crdgen::crds().expect("crds") {
        let path = root().join("crds").join(name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{} is stale: run `cargo run -p sightline-operator -- crd --out-dir crds`",
            path.display()
        );
    }
}

/// Structural schema: every node says its type (or is an int-or-string / preserved node),
/// and there are no top-level anyOf/oneOf without types.
fn assert_structural(schema: &Value, path: &str) {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(typed, "{path}: no type in {schema}");
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}{{}}"));
    }
}

#[test]
fn crds_are_structural_with_status_printer_columns_and_short_names() {
    for (crd, short, state) in [
        (ImageModel::crd(), "imodel", "Ready"),
        (RecognitionPipeline::crd(), "rpipe", "Ready"),
        (RecognitionJob::crd(), "rjob", "Complete"),
    ] {
        let v = serde_json::to_value(&crd).expect("json");
        assert_eq!(v["spec"]["group"], "sightline.io");
        assert_eq!(v["spec"]["scope"], "Namespaced");
        assert_eq!(v["spec"]["names"]["shortNames"][0], short);
        assert_eq!(v["spec"]["names"]["categories"][0], "sightline");
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        assert!(
            columns.contains(&state) && columns.contains(&"Age"),
            "{columns:?}"
        );
        assert_structural(&version["schema"]["openAPIV3Schema"], "root");
        let text = v.to_string();
        assert!(
            text.contains("x-kubernetes-validations"),
            "CEL rules are in the schema"
        );
    }
}

#[test]
fn cel_rules_reject_what_cannot_be_honoured() {
    use serde_json::json;
    assert!(Autoscaling::validate_cel(&json!({"minReplicas": 1, "maxReplicas": 3}), None).is_ok());
    assert!(Autoscaling::validate_cel(&json!({"minReplicas": 4, "maxReplicas": 3}), None).is_err());
    assert!(Runtime::validate_cel(&json!({"replicas": 2}), None).is_ok());
    assert!(
        Runtime::validate_cel(
            &json!({"replicas": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}),
            None
        )
        .is_err()
    );
    assert!(Storage::validate_cel(&json!({"database": "sqlite"}), None).is_ok());
    assert!(
        Storage::validate_cel(&json!({"database": "sqlite", "replicas": 2}), None).is_err(),
        "SQLite on one volume cannot run two writers"
    );
    assert!(
        Storage::validate_cel(&json!({"database": "postgres"}), None).is_err(),
        "postgres needs its URL"
    );
    assert!(
        Storage::validate_cel(
            &json!({"database": "postgres", "urlSecret": {"name": "db", "key": "url"}}),
            None
        )
        .is_ok()
    );
    assert!(
        Gateway::validate_cel(
            &json!({"parentRefs": [{"name": "gw"}], "ingress": {}}),
            None
        )
        .is_err()
    );
    assert!(Gateway::validate_cel(&json!({"parentRefs": [{"name": "gw"}]}), None).is_ok());
    let job = json!({"modelRef": {"name": "m"}, "input": {"pvc": {"claimName": "in"}},
        "output": {"pvc": {"claimName": "out"}}, "shards": 4});
    assert!(RecognitionJobSpec::validate_cel(&job, None).is_ok());
    let mut evaluation = job.clone();
    evaluation["labels"] = json!({"csv": "truth.csv"});
    assert!(
        RecognitionJobSpec::validate_cel(&evaluation, None).is_ok(),
        "each shard evaluates its own images of the CSV"
    );
    let mut from_bucket = evaluation.clone();
    from_bucket["input"] = json!({"s3": {"uri": "s3://photos"}});
    assert!(
        RecognitionJobSpec::validate_cel(&from_bucket, None).is_err(),
        "the CSV is read from the input claim"
    );
    let mut both = job.clone();
    both["input"]["s3"] = json!({"uri": "s3://photos"});
    assert!(
        RecognitionJobSpec::validate_cel(&both, None).is_err(),
        "one input"
    );
    let mut wide = job.clone();
    wide["parallelism"] = json!(5);
    assert!(RecognitionJobSpec::validate_cel(&wide, None).is_err());
}

/// The checked-in CRD files.
fn crd_files() -> Vec<PathBuf> {
    [
        "imagemodels.sightline.io.yaml",
        "recognitionpipelines.sightline.io.yaml",
        "recognitionjobs.sightline.io.yaml",
    ]
    .iter()
    .map(|f| root().join("crds").join(f))
    .collect()
}

/// `kubernetes-validate --strict` for Kubernetes 1.33 over `yaml` and `extra` files; what
/// it said (it must succeed), or `None` without the tool (a loud skip outside CI).
fn validate_1_33(yaml: &str, extra: &[PathBuf]) -> Option<String> {
    let validate = tool("kubernetes-validate")?;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).expect("write");
    let output = Command::new(validate)
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .args(extra)
        .output()
        .expect("run kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    Some(said)
}

#[test]
fn every_rendered_object_is_valid_for_kubernetes_1_33() {
    let objects = rendered();
    let core: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] != "HTTPRoute" && o["kind"] != "ServiceMonitor")
        .cloned()
        .collect();
    let Some(text) = validate_1_33(&render::to_yaml(&core).expect("yaml"), &crd_files()) else {
        return;
    };
    let crds = crd_files();
    let passed = text.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        core.len() + crds.len(),
        "every object validated:\n{text}"
    );
}

/// Whether `object` validates against the OpenAPI v3 `schema` (Python's jsonschema):
/// `None` without the tool (a loud skip outside CI), else what jsonschema said.
fn json_schema_says(object: &Value, schema: &Value) -> Option<Result<(), String>> {
    let python = tool("python")?;
    let script = "import json,sys,jsonschema\nd=json.load(sys.stdin)\njsonschema.validate(d['object'], d['schema'])\nprint('valid')";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            serde_json::json!({"object": object, "schema": schema})
                .to_string()
                .as_bytes(),
        )
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    Some(if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    })
}

#[test]
fn the_http_route_validates_against_the_gateway_api_crd_schema() {
    let route = rendered()
        .into_iter()
        .find(|o| o["kind"] == "HTTPRoute")
        .expect("the pipeline sample has an HTTPRoute");
    let crd = serde_json::to_value(gateway_api::apis::standard::httproutes::HttpRoute::crd())
        .expect("crd");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    if let Some(said) = json_schema_says(&route, schema) {
        said.expect("the HTTPRoute is valid");
    }
}

/// `spec.monitoring`, the live canary checks and `status.quality` are in the ImageModel
/// schema, typed and bounded: an object the operator writes validates, a wrong one does
/// not.
#[test]
fn monitoring_and_quality_are_in_the_image_model_schema() {
    use serde_json::json;
    let crd = serde_json::to_value(ImageModel::crd()).expect("crd");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let props = &schema["properties"];
    let monitoring = &props["spec"]["properties"]["monitoring"]["properties"];
    assert_eq!(monitoring["maxDrift"]["type"], "number");
    assert_eq!(monitoring["qualityWindow"]["type"], "string");
    assert_eq!(monitoring["minFeedbackSamples"]["minimum"], 1.0);
    let analysis = &props["spec"]["properties"]["rollout"]["properties"]["analysis"]["properties"];
    assert_eq!(analysis["minLiveAccuracy"]["type"], "number");
    assert_eq!(analysis["maxLiveAccuracyDrop"]["type"], "number");
    let quality = &props["status"]["properties"]["quality"]["properties"];
    for (field, type_) in [
        ("window", "string"),
        ("digest", "string"),
        ("accuracy", "number"),
        ("samples", "integer"),
        ("accuracyReadAt", "string"),
        ("accuracyNote", "string"),
        ("drift", "object"),
        ("driftSamples", "integer"),
        ("driftReadAt", "string"),
    ] {
        assert_eq!(quality[field]["type"], type_, "status.quality.{field}");
    }
    assert_eq!(quality["drift"]["properties"]["class"]["type"], "number");
    assert_eq!(
        quality["drift"]["properties"]["confidence"]["type"],
        "number"
    );

    // The CEL rules the API server runs on these fields.
    let rule = |field: &Value| field["x-kubernetes-validations"][0]["rule"].clone();
    assert_eq!(rule(&monitoring["maxDrift"]), "self > 0.0 && self < 1.0");
    assert_eq!(
        rule(&monitoring["qualityWindow"]),
        "self in ['1h', '24h', '7d']"
    );
    assert_eq!(
        rule(&analysis["minLiveAccuracy"]),
        "self >= 0.0 && self <= 1.0"
    );
    assert_eq!(
        rule(&analysis["maxLiveAccuracyDrop"]),
        "self >= 0.0 && self <= 1.0"
    );
    let ok = json!({"maxDrift": 0.2, "qualityWindow": "7d", "minFeedbackSamples": 50});

    // An ImageModel as a user writes it and as the operator leaves it.
    let mut model = serde_json::to_value(samples().models[0].clone()).expect("json");
    model["spec"]["monitoring"] = ok;
    model["spec"]["rollout"] = json!({"strategy": "Canary",
        "analysis": {"minLiveAccuracy": 0.9, "maxLiveAccuracyDrop": 0.02}});
    model["status"] = json!({"conditions": [{"type": "Drifting", "status": "Unknown",
            "reason": "DriftUnknown", "message": "no pod serves the model",
            "lastTransitionTime": "2027-01-15T08:00:00Z"}],
        "quality": {"window": "24h", "digest": "ab", "accuracy": 0.9, "samples": 400,
            "accuracyReadAt": "2027-01-15T08:00:00Z", "drift": {"class": 0.1},
            "driftSamples": 640, "driftReadAt": "2027-01-15T08:00:00Z"}});
    let Some(said) = json_schema_says(&model, schema) else {
        return;
    };
    said.expect("a model with monitoring and quality is valid");
    let mut wrong = model.clone();
    wrong["status"]["quality"]["samples"] = json!("many");
    assert!(json_schema_says(&wrong, schema).is_some_and(|s| s.is_err()));
    let mut wrong = model;
    wrong["spec"]["monitoring"]["minFeedbackSamples"] = json!(0);
    assert!(json_schema_says(&wrong, schema).is_some_and(|s| s.is_err()));
}

fn pod_specs(objects: &[Value]) -> Vec<(String, Value)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "Job")
        .map(|o| {
            (
                o["metadata"]["name"].as_str().expect("name").to_string(),
                o["spec"]["template"]["spec"].clone(),
            )
        })
        .collect()
}

#[test]
fn every_pod_meets_the_restricted_pod_security_profile() {
    let pods = pod_specs(&rendered());
    assert_eq!(
        pods.len(),
        6,
        "four Deployments and the two RecognitionJobs' Jobs"
    );
    for (name, pod) in pods {
        assert_restricted(&name, &pod);
    }
}

/// The Pod Security "restricted" profile's checks on one pod spec.
fn assert_restricted(name: &str, pod: &Value) {
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    assert!(
        pod["hostNetwork"].is_null() && pod["hostPID"].is_null() && pod["hostIPC"].is_null(),
        "{name}"
    );
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        assert!(volume["hostPath"].is_null(), "{name}: hostPath volume");
    }
    let containers = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        assert!(sc["capabilities"]["add"].is_null(), "{name}");
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{name}"
        );
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert!(
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|p| p["hostPort"].is_null()),
            "{name}"
        );
    }
}

#[test]
fn every_child_is_owned_and_labelled() {
    for o in rendered() {
        let meta = &o["metadata"];
        let what = format!("{} {}", o["kind"], meta["name"]);
        assert_eq!(meta["namespace"], "sightline-demo", "{what}");
        if o["kind"] == "PersistentVolumeClaim" {
            // Retained by default: no owner, so garbage collection never takes the data.
            assert!(meta["ownerReferences"].is_null(), "{what}");
            assert_eq!(
                meta["annotations"]["sightline.io/owner"], "RecognitionPipeline/photos",
                "{what}"
            );
            continue;
        }
        let owner = &meta["ownerReferences"][0];
        assert_eq!(owner["controller"], true, "{what}");
        assert!(
            ["ImageModel", "RecognitionPipeline", "RecognitionJob"]
                .contains(&owner["kind"].as_str().unwrap_or_default()),
            "{what}"
        );
        assert_eq!(owner["apiVersion"], "sightline.io/v1alpha1", "{what}");
        for label in ["name", "instance", "component", "part-of", "managed-by"] {
            assert!(
                meta["labels"][format!("app.kubernetes.io/{label}")].is_string(),
                "{what}: label {label}"
            );
        }
    }
}

fn deployment<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

fn args(d: &Value) -> Vec<String> {
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect()
}

#[test]
fn gpu_fields_only_for_gpu_models() {
    let objects = rendered_with_gpu_on_a_claim();
    let cpu = deployment(&objects, "efficientnet-lite0-recognize");
    let gpu = deployment(&objects, GPU_DEPLOYMENT);
    assert!(!args(cpu).contains(&"gpu".to_string()));
    assert!(
        cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            .is_null()
    );
    assert!(cpu["spec"]["template"]["spec"]["tolerations"].is_null());
    let gargs = args(gpu);
    let i = gargs
        .iter()
        .position(|a| a == "--device")
        .expect("--device");
    assert_eq!(gargs[i + 1], "gpu");
    assert_eq!(
        gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(
        gpu["spec"]["template"]["spec"]["tolerations"][0]["key"],
        "nvidia.com/gpu"
    );
    assert_eq!(
        gpu["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.present"],
        "true"
    );
}

/// The value after `--max-batch-size`, if the flag is there.
fn batch_flag(d: &Value) -> Option<String> {
    args(d)
        .windows(2)
        .find(|w| w[0] == "--max-batch-size")
        .map(|w| w[1].clone())
}

#[test]
fn max_batch_size_is_the_tuning_limit_unless_fixed() {
    let objects = rendered_with_gpu_on_a_claim();
    // The samples give maxBatchSize 8 (CPU) and 32 (GPU), tuning left at its default.
    assert_eq!(
        batch_flag(deployment(&objects, "efficientnet-lite0-recognize")).as_deref(),
        Some("auto:8")
    );
    assert_eq!(
        batch_flag(deployment(&objects, GPU_DEPLOYMENT)).as_deref(),
        Some("auto:32")
    );
    let with = |tuning: Option<BatchTuning>, max: Option<u32>| {
        let mut inputs = samples();
        for m in &mut inputs.models {
            m.spec.runtime.batching.tuning = tuning;
            m.spec.runtime.batching.max_batch_size = max;
        }
        let objects = render::children(&inputs, &Platform::default()).expect("render");
        batch_flag(deployment(&objects, "efficientnet-lite0-recognize"))
    };
    assert_eq!(with(None, None), None, "the server's default: auto");
    assert_eq!(
        with(Some(BatchTuning::Auto), Some(16)).as_deref(),
        Some("auto:16")
    );
    assert_eq!(
        with(Some(BatchTuning::Fixed), Some(4)).as_deref(),
        Some("4")
    );
    assert_eq!(with(Some(BatchTuning::Fixed), None).as_deref(), Some("8"));
}

#[test]
fn instances_reach_the_server() {
    let mut inputs = samples();
    for m in &mut inputs.models {
        m.spec.runtime.instances = Some(2);
        m.spec.runtime.threads = Some(1);
    }
    let objects = render::children(&inputs, &Platform::default()).expect("render");
    let a = args(deployment(&objects, "efficientnet-lite0-recognize"));
    assert!(a.windows(2).any(|w| w == ["--instances", "2"]), "{a:?}");
    assert!(a.windows(2).any(|w| w == ["--intra-threads", "1"]), "{a:?}");
}

#[test]
fn replicas_are_left_to_the_hpa_and_models_are_fetched_or_mounted() {
    let objects = rendered_with_gpu_on_a_claim();
    let gpu = deployment(&objects, GPU_DEPLOYMENT);
    assert!(gpu["spec"]["replicas"].is_null(), "the HPA owns replicas");
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "HorizontalPodAutoscaler" && o["spec"]["maxReplicas"] == 4)
    );
    assert!(
        gpu["spec"]["template"]["spec"]["initContainers"].is_null(),
        "PVC models are mounted, not fetched"
    );
    assert_eq!(
        gpu["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "model-store"
    );

    let cpu = deployment(&objects, "efficientnet-lite0-recognize");
    assert_eq!(cpu["spec"]["replicas"], 2);
    let init = cpu["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("fetch init containers");
    let fetch: Vec<&str> = init[0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("s"))
        .collect();
    assert_eq!(fetch[0], "fetch");
    assert!(
        fetch.contains(&"--sha256"),
        "the digest is verified: {fetch:?}"
    );
    let a = args(cpu);
    assert!(a.windows(2).any(|w| w[0] == "--model-sha256"));
    assert!(
        !a.iter().any(|w| w == "--fetch-allowlist"),
        "the model fetches no images by URL: {a:?}"
    );
    assert!(objects.iter().any(|o| o["kind"] == "PodDisruptionBudget"
        && o["metadata"]["name"] == "efficientnet-lite0-recognize"));
    let probes = &cpu["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(probes["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(probes["livenessProbe"]["httpGet"]["path"], "/healthz");
}

#[test]
fn the_pipeline_is_wired_routed_and_fenced() {
    let objects = rendered();
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "photos-config")
        .expect("config map");
    assert_eq!(
        config["data"]["SIGHTLINE_RECOGNIZE_URL"],
        "http://efficientnet-lite0-recognize.sightline-demo.svc:8080"
    );
    assert_eq!(
        config["data"]["SIGHTLINE_STORE_URL"],
        "http://photos-store.sightline-demo.svc:8080"
    );
    let store = deployment(&objects, "photos-store");
    assert!(
        args(store)
            .windows(2)
            .any(|w| w[0] == "--api-keys-file" && w[1] == "/etc/sightline/keys/keys"),
        "{:?}",
        args(store)
    );
    assert_eq!(
        store["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "photos-db"
    );
    assert!(
        objects
            .iter()
            .filter(|o| o["kind"] == "PersistentVolumeClaim")
            .all(|o| o["metadata"]["name"] != "photos-results"),
        "no SQLite volume with postgres"
    );
    let route = objects
        .iter()
        .find(|o| o["kind"] == "HTTPRoute")
        .expect("route");
    let backends: Vec<(&str, &str)> = route["spec"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["matches"][0]["path"]["value"].as_str().expect("path"),
                r["backendRefs"][0]["name"].as_str().expect("backend"),
            )
        })
        .collect();
    assert_eq!(
        backends,
        vec![("/", "photos-upload")],
        "everything enters through the front door"
    );
    let deny = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "photos-default-deny")
        .expect("default deny");
    assert_eq!(deny["spec"]["ingress"], serde_json::json!([]));
    assert_eq!(deny["spec"]["egress"], serde_json::json!([]));
}

#[test]
fn a_pipeline_without_its_model_is_refused_by_render() {
    let inputs = render::parse(
        &std::fs::read_to_string(root().join("manifests/samples/recognitionpipeline.yaml"))
            .expect("sample"),
    )
    .expect("parse");
    let err = render::children(&inputs, &Platform::default()).expect_err("model missing");
    assert!(err.to_string().contains("efficientnet-lite0"), "{err}");
    assert!(render::parse("metadata: {name: x}\n").is_err(), "no kind");
    assert!(
        render::parse("apiVersion: sightline.io/v1alpha1\nkind: Widget\n").is_err(),
        "an unknown kind of ours"
    );
    let others = render::parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
        .expect("other objects are skipped");
    assert!(others.models.is_empty() && others.pipelines.is_empty());
    assert!(render::parse("kind: ImageModel\nspec: 3\n").is_err());
}

#[test]
fn the_crds_kustomization_builds_offline() {
    let Some(text) = kustomize("crds") else {
        return;
    };
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 3);
}

/// `kubectl kustomize` of a folder, or `None` (a loud skip outside CI) without kubectl.
fn kustomize(dir: &str) -> Option<String> {
    let Ok(output) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(dir))
        .output()
    else {
        assert!(std::env::var_os("CI").is_none(), "kubectl is missing");
        eprintln!("\n*** SKIPPED (not in CI): kubectl is missing ***\n");
        return None;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The objects `kubectl kustomize dir` makes, each validated for Kubernetes 1.33; `None`
/// (a loud skip outside CI) without the tools.
fn install(dir: &str) -> Option<Vec<Value>> {
    let text = kustomize(dir)?;
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("yaml"))
        .collect();
    if let Some(said) = validate_1_33(&text, &[]) {
        assert_eq!(
            said.matches(" passed for resource ").count(),
            objects.len(),
            "every object validated:\n{said}"
        );
    }
    Some(objects)
}

#[test]
fn the_namespaced_install_builds_validates_and_grants_nothing_cluster_wide() {
    let Some(objects) = install("manifests/install-namespaced") else {
        return;
    };
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(!kinds.contains(&"ClusterRole") && !kinds.contains(&"ClusterRoleBinding"));
    let operator = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("operator Deployment");
    let env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "SIGHTLINE_NAMESPACES" && e["value"] == "sightline-demo"),
        "{env:?}"
    );
}

#[test]
fn the_install_kustomization_builds_validates_and_runs_a_restricted_operator() {
    let Some(objects) = install("manifests/install") else {
        return;
    };
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let operator = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("operator Deployment");
    let pod = &operator["spec"]["template"]["spec"];
    assert_restricted("sightline-operator", pod);
    let container = &pod["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["run"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["serviceAccountName"], "sightline-operator");
}

#[test]
fn a_model_in_mid_canary_renders_its_candidate_and_the_traffic_split() {
    let text = std::fs::read_to_string(
        root().join("manifests/examples/imagemodel-canary-mid-rollout.yaml"),
    )
    .expect("example");
    let inputs = render::parse(&text).expect("parse");
    let objects = render::children(&inputs, &Platform::default()).expect("render");
    let candidate = deployment(&objects, "efficientnet-lite0-recognize-canary");
    assert_eq!(
        candidate["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "recognize-canary",
        "the stable Deployment must not select the candidate's pods"
    );
    let stable = deployment(&objects, "efficientnet-lite0-recognize");
    assert_eq!(
        stable["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "recognize"
    );
    assert!(objects.iter().any(|o| o["kind"] == "Service"
        && o["metadata"]["name"] == "efficientnet-lite0-recognize-canary"));
    let traffic = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "efficientnet-lite0-traffic")
        .expect("traffic ConfigMap");
    let split: Value =
        serde_json::from_str(traffic["data"]["traffic.json"].as_str().expect("file"))
            .expect("json");
    assert_eq!(split["candidateWeight"], 10);
    assert_eq!(split["mirrorPercent"], 10);
    assert_eq!(split["revision"], "3f9a1c77e2b0");
}

#[test]
fn the_samples_kustomization_builds_and_validates_with_the_crds() {
    let Some(text) = kustomize("manifests/samples") else {
        return;
    };
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("yaml"))
        .collect();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Namespace").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "Secret").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "ImageModel").count(), 2);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "RecognitionPipeline")
            .count(),
        1
    );
    let crds = crd_files();
    let Some(said) = validate_1_33(&text, &crds) else {
        return;
    };
    // kubernetes-validate knows the built-in kinds; the custom resources are read by the
    // operator's own types (the CRD schema's source) and rendered.
    let core = objects
        .iter()
        .filter(|o| o["apiVersion"] != "sightline.io/v1alpha1")
        .count();
    assert_eq!(
        said.matches(" passed for resource ").count(),
        core + crds.len(),
        "every built-in sample object validated against Kubernetes 1.33:\n{said}"
    );
    let inputs = render::parse(&text).expect("the custom resources parse");
    assert_eq!(
        (
            inputs.models.len(),
            inputs.pipelines.len(),
            inputs.jobs.len()
        ),
        (2, 1, 2)
    );
    render::children(&inputs, &Platform::default()).expect("and render");
}

#[test]
fn a_model_image_is_mounted_as_an_image_volume_pinned_by_digest() {
    let reference = format!(
        "oci://ghcr.io/sightline/sightline-model-lite0@sha256:{}",
        "ab".repeat(32)
    );
    let mut inputs = samples();
    inputs.pipelines.clear();
    inputs.models.truncate(1);
    let m = &mut inputs.models[0];
    m.spec.source.model.uri = reference.clone();
    m.spec.source.labels.uri = reference.clone();
    m.spec.evaluation = None;
    let objects = render::children(&inputs, &Platform::default()).expect("render");
    let d = deployment(&objects, "efficientnet-lite0-recognize");
    let pod = &d["spec"]["template"]["spec"];
    assert!(
        pod["initContainers"].is_null(),
        "nothing to download: {pod:#}"
    );
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "model-image")
        .expect("the image volume");
    assert_eq!(
        volume["image"]["reference"],
        reference.trim_start_matches("oci://")
    );
    let a = args(d);
    let model = a.iter().position(|x| x == "--model").expect("--model");
    assert_eq!(a[model + 1], "/model-image/model.onnx");
    let labels = a.iter().position(|x| x == "--labels").expect("--labels");
    assert_eq!(a[labels + 1], "/model-image/model.labels.txt");
    let core: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] != "ServiceMonitor")
        .cloned()
        .collect();
    if let Some(said) = validate_1_33(&render::to_yaml(&core).expect("yaml"), &[]) {
        assert_eq!(
            said.matches(" passed for resource ").count(),
            core.len(),
            "{said}"
        );
    }

    // A tag is not a digest; the labels come from the same image.
    let tagged = "oci://ghcr.io/sightline/sightline-model-lite0:latest".to_string();
    let mut bad = inputs.clone();
    bad.models[0].spec.source.model.uri = tagged.clone();
    bad.models[0].spec.source.labels.uri = tagged;
    let error = render::children(&bad, &Platform::default()).expect_err("a tag");
    assert!(error.to_string().contains("pinned by digest"), "{error}");
    let mut mixed = inputs.clone();
    mixed.models[0].spec.source.labels.uri = "https://models.example.com/labels.txt".into();
    let error = render::children(&mixed, &Platform::default()).expect_err("mixed");
    assert!(error.to_string().contains("same oci://"), "{error}");
}
