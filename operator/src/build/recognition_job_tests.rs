use serde_json::{Value, json};

use super::*;

fn model() -> ImageModel {
    serde_json::from_value(json!({
        "apiVersion": "sightline.io/v1alpha1", "kind": "ImageModel",
        "metadata": {"name": "lite0", "namespace": "demo", "uid": "m-uid"},
        "spec": {"source": {
            "uri": "https://models.example.com/lite0.onnx", "sha256": "a".repeat(64),
            "labels": {"uri": "pvc://models/lite0/labels.txt"}},
            "preprocess": {"size": 256},
            "runtime": {"threads": 2}}
    }))
    .expect("model")
}

fn rjob(extra: Value) -> RecognitionJob {
    let mut spec = json!({"modelRef": {"name": "lite0"},
        "input": {"pvc": {"claimName": "photos", "path": "archive/2024"}},
        "output": {"pvc": {"claimName": "results", "path": "lite0"}},
        "shards": 8, "parallelism": 3});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "sightline.io/v1alpha1", "kind": "RecognitionJob",
        "metadata": {"name": "tag-2024", "namespace": "demo", "uid": "j-uid"},
        "spec": spec}))
    .expect("rjob")
}

fn built(extra: Value) -> Value {
    serde_json::to_value(job(&rjob(extra), &model(), &Platform::default())).expect("json")
}

fn args(job: &Value) -> Vec<String> {
    job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string").to_string())
        .collect()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

#[test]
fn an_indexed_job_with_one_completion_per_shard() {
    let j = built(json!({}));
    let spec = &j["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 8);
    assert_eq!(spec["parallelism"], 3);
    assert_eq!(spec["backoffLimitPerIndex"], DEFAULT_BACKOFF_PER_INDEX);
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(
        j["metadata"]["ownerReferences"][0]["kind"],
        "RecognitionJob"
    );
    assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], "j-uid");
    assert_eq!(
        j["metadata"]["labels"]["app.kubernetes.io/component"],
        COMPONENT
    );
    assert!(j["metadata"]["annotations"][TEMPLATE_ANNOTATION].is_string());
}

#[test]
fn the_failure_policy_fails_the_index_on_exit_2_ignores_disruptions_and_counts_oom() {
    let j = built(json!({"backoffLimitPerIndex": 5}));
    assert_eq!(j["spec"]["backoffLimitPerIndex"], 5);
    let rules = &j["spec"]["podFailurePolicy"]["rules"];
    assert_eq!(rules[0]["action"], "FailIndex");
    assert_eq!(rules[0]["onExitCodes"]["values"], json!([2]));
    assert_eq!(rules[0]["onExitCodes"]["containerName"], CONTAINER);
    assert_eq!(rules[1]["action"], "Ignore");
    assert_eq!(rules[1]["onPodConditions"][0]["type"], "DisruptionTarget");
    assert_eq!(rules[2]["action"], "Count");
    assert_eq!(rules[2]["onExitCodes"]["values"], json!([137]));
}

#[test]
fn each_shard_runs_batch_resumably_with_the_models_own_flags() {
    let j = built(json!({}));
    let a = args(&j);
    assert_eq!(a[0], "batch");
    assert_eq!(flag(&a, "--shards").as_deref(), Some("8"));
    assert!(a.contains(&"--resume".to_string()));
    assert_eq!(flag(&a, "--summary").as_deref(), Some(TERMINATION_LOG));
    assert_eq!(
        flag(&a, "--metrics-listen").as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(flag(&a, "--job").as_deref(), Some("tag-2024"));
    assert_eq!(
        flag(&a, "--input").as_deref(),
        Some("/data/photos/archive/2024")
    );
    assert_eq!(
        flag(&a, "--out").as_deref(),
        Some("/data/results/lite0/shard-$(JOB_COMPLETION_INDEX).jsonl")
    );
    // The model exactly as its recognize pods load it.
    assert_eq!(flag(&a, "--model").as_deref(), Some("/models/model.onnx"));
    assert_eq!(
        flag(&a, "--labels").as_deref(),
        Some("/sources/models/lite0/labels.txt")
    );
    assert_eq!(flag(&a, "--model-sha256"), Some("a".repeat(64)));
    assert_eq!(flag(&a, "--input-size").as_deref(), Some("256"));
    assert_eq!(flag(&a, "--intra-threads").as_deref(), Some("2"));
    assert!(flag(&a, "--truth").is_none());
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "fetch-model");
    let c = &pod["containers"][0];
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["terminationMessagePath"], TERMINATION_LOG);
    assert!(c["readinessProbe"].is_null() && c["livenessProbe"].is_null());
    assert!(c["startupProbe"].is_null());
}

#[test]
fn input_is_mounted_read_only_and_output_read_write() {
    let j = built(json!({}));
    let pod = &j["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().expect("volumes");
    let claim = |name: &str| {
        volumes
            .iter()
            .find(|v| v["persistentVolumeClaim"]["claimName"] == name)
            .unwrap_or_else(|| panic!("no volume of {name}: {volumes:?}"))
    };
    assert_eq!(claim("results")["persistentVolumeClaim"]["readOnly"], false);
    assert_eq!(claim("photos")["persistentVolumeClaim"]["readOnly"], true);
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts");
    let at = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing at {path}"))
    };
    assert_eq!(at("/data/results")["readOnly"], false);
    assert_eq!(at("/data/photos")["readOnly"], true);
    // One claim for both: mounted once, writable.
    let same = built(json!({"output": {"pvc": {"claimName": "photos", "path": "out"}}}));
    let pod = &same["spec"]["template"]["spec"];
    let data: Vec<&Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|v| v["persistentVolumeClaim"]["claimName"] == "photos")
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["persistentVolumeClaim"]["readOnly"], false);
}

#[test]
fn labels_become_the_truth_csv_beside_the_input_or_the_class_folders() {
    let j = built(json!({"shards": 1, "parallelism": 1, "labels": {"csv": "truth.csv"}}));
    assert_eq!(
        flag(&args(&j), "--truth").as_deref(),
        Some("/data/photos/archive/2024/truth.csv")
    );
    // Class folders: the input folder is the labelled set.
    let j = built(json!({"labels": {"classFolders": true}}));
    assert_eq!(
        flag(&args(&j), "--truth").as_deref(),
        Some("/data/photos/archive/2024")
    );
    for (labels, ok) in [
        (json!({"classFolders": true}), true),
        (json!({"csv": "truth.csv"}), true),
        (json!({}), false),
        (json!({"csv": "truth.csv", "classFolders": true}), false),
        (json!({"classFolders": false}), false),
    ] {
        assert_eq!(
            validate(&rjob(json!({"labels": labels}))).is_ok(),
            ok,
            "{labels}"
        );
        assert_eq!(
            crate::crd::JobLabels::validate_cel(&labels, None).is_ok(),
            ok,
            "CEL: {labels}"
        );
    }
}

#[test]
fn a_gpu_model_runs_its_shards_on_the_gpu_image_with_a_gpu() {
    let mut m = model();
    m.spec.runtime.device = Device::Gpu;
    let j = serde_json::to_value(job(&rjob(json!({})), &m, &Platform::default())).expect("json");
    let c = &j["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], Platform::default().gpu_server);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(flag(&args(&j), "--device").as_deref(), Some("gpu"));
    let cpu = built(json!({}));
    assert!(flag(&args(&cpu), "--device").is_none());
}

#[test]
fn parallelism_never_exceeds_the_shards() {
    let j = built(json!({"shards": 2, "parallelism": 9}));
    assert_eq!(j["spec"]["parallelism"], 2);
}

#[test]
fn a_bucket_input_is_read_by_the_shards_with_its_credentials() {
    let j = built(json!({"input": {"s3": {"uri": "s3://photos/2024",
        "credentialsSecret": "photos-s3", "endpoint": "http://minio.storage:9000",
        "region": "eu-west-1"}}}));
    let a = args(&j);
    assert_eq!(flag(&a, "--input").as_deref(), Some("s3://photos/2024"));
    assert_eq!(
        flag(&a, "--s3-endpoint").as_deref(),
        Some("http://minio.storage:9000")
    );
    assert_eq!(flag(&a, "--s3-region").as_deref(), Some("eu-west-1"));
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "photos-s3"
    );
    // Only the output claim is mounted.
    let claims: Vec<&Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|v| v["persistentVolumeClaim"].is_object())
        .collect();
    assert_eq!(claims.len(), 2, "results and the model's claim: {claims:?}");
    assert!(validate(&rjob(json!({"input": {"s3": {"uri": "s3://"}}}))).is_err());
    assert!(validate(&rjob(json!({"input": {}}))).is_err());
    let labels = json!({"shards": 1, "parallelism": 1, "labels": {"csv": "t.csv"},
        "input": {"s3": {"uri": "s3://photos"}}});
    assert!(validate(&rjob(labels)).is_err());
}

#[test]
fn a_listing_file_is_passed_as_the_input() {
    let j = built(json!({"input": {"https": {"url": "https://photos.example.com/list.txt"}}}));
    assert_eq!(
        flag(&args(&j), "--input").as_deref(),
        Some("https://photos.example.com/list.txt")
    );
    let two = json!({"input": {"https": {"url": "https://a/l.txt"},
        "pvc": {"claimName": "photos"}}});
    assert!(validate(&rjob(two)).is_err());
    assert!(validate(&rjob(json!({"input": {"https": {"url": "ftp://a/l.txt"}}}))).is_err());
}

#[test]
fn a_csv_beside_each_shards_lines_when_asked() {
    let j = built(
        json!({"output": {"pvc": {"claimName": "results", "path": "lite0"},
        "csv": true}}),
    );
    assert_eq!(
        flag(&args(&j), "--csv").as_deref(),
        Some("/data/results/lite0/shard-$(JOB_COMPLETION_INDEX).csv")
    );
    assert!(flag(&args(&built(json!({}))), "--csv").is_none());
}

#[test]
fn into_a_pipelines_store_with_its_key_and_the_label_its_store_admits() {
    let j = built(json!({"output": {"pipeline": {"name": "shop",
        "apiKeySecret": {"name": "shop-batch-key", "key": "key"}}}}));
    let container = &j["spec"]["template"]["spec"]["containers"][0];
    let a = args(&j);
    assert_eq!(
        flag(&a, "--store-url").as_deref(),
        Some("http://shop-store.demo.svc:8080"),
        "the pipeline's store Service"
    );
    assert_eq!(flag(&a, "--job").as_deref(), Some("tag-2024"));
    let env = container["env"].as_array().expect("env");
    let key = env
        .iter()
        .find(|e| e["name"] == STORE_KEY_ENV)
        .expect("the key's variable");
    assert_eq!(
        key["valueFrom"]["secretKeyRef"],
        json!({"name": "shop-batch-key", "key": "key", "optional": false})
    );
    assert!(
        !a.iter().any(|x| x.contains("shop-batch-key")),
        "the key is never an argument"
    );
    let labels = &j["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels[RESULTS_FOR_LABEL], "shop");
    // No output claim: the lines go to a scratch emptyDir, gone with the pod; the store
    // is what a retried shard resumes from.
    assert_eq!(
        flag(&a, "--out").as_deref(),
        Some("/scratch/shard-$(JOB_COMPLETION_INDEX).jsonl")
    );
    let volumes = j["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    let scratch = volumes
        .iter()
        .find(|v| v["name"] == "scratch")
        .expect("scratch volume");
    assert!(scratch["emptyDir"].is_object());
    assert!(
        !volumes
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "results"),
        "no output claim"
    );
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == SCRATCH_DIR));
    assert!(validate(&rjob(json!({"output": {"pipeline": {"name": "shop"}}}))).is_ok());
}

#[test]
fn a_job_with_an_output_claim_keeps_it_beside_the_store_and_has_no_scratch() {
    let j = built(
        json!({"output": {"pvc": {"claimName": "results", "path": "lite0"},
        "pipeline": {"name": "shop"}}}),
    );
    let a = args(&j);
    assert_eq!(
        flag(&a, "--out").as_deref(),
        Some("/data/results/lite0/shard-$(JOB_COMPLETION_INDEX).jsonl")
    );
    assert!(flag(&a, "--store-url").is_some());
    let container = &j["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["env"]
            .as_array()
            .is_none_or(|e| !e.iter().any(|v| v["name"] == STORE_KEY_ENV)),
        "no key asked for, none given"
    );
    let volumes = j["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(!volumes.iter().any(|v| v["name"] == "scratch"));
    // Without a pipeline: no store, no label.
    let plain = built(json!({}));
    assert!(flag(&args(&plain), "--store-url").is_none());
    assert!(plain["spec"]["template"]["metadata"]["labels"][RESULTS_FOR_LABEL].is_null());
}

#[test]
fn an_output_needs_a_claim_or_a_pipeline_and_a_csv_needs_the_claim() {
    let none = validate(&rjob(json!({"output": {}}))).expect_err("nowhere");
    assert_eq!(none.field, "spec.output");
    let csv = validate(&rjob(
        json!({"output": {"csv": true, "pipeline": {"name": "shop"}}}),
    ))
    .expect_err("csv without a claim");
    assert_eq!(csv.field, "spec.output.csv");
}

#[test]
fn the_crds_rules_refuse_an_output_to_nowhere_and_a_csv_without_a_claim() {
    use crate::crd::JobOutput;
    let claim = json!({"claimName": "results"});
    let pipeline = json!({"name": "shop"});
    for ok in [
        json!({"pvc": claim}),
        json!({"pipeline": pipeline}),
        json!({"pvc": claim, "pipeline": pipeline, "csv": true}),
    ] {
        assert!(JobOutput::validate_cel(&ok, None).is_ok(), "{ok}");
    }
    let nowhere = JobOutput::validate_cel(&json!({}), None).expect_err("nowhere");
    assert!(format!("{nowhere:?}").contains("output needs pvc, pipeline or both"));
    let csv = JobOutput::validate_cel(&json!({"pipeline": pipeline, "csv": true}), None)
        .expect_err("csv without a claim");
    assert!(format!("{csv:?}").contains("csv needs pvc"), "{csv:?}");
}
