//! `sightline-server batch` as a user runs it: a folder of generated images through the
//! test classifier, killed half-way (SIGKILL, the way a laptop's lid or a node loses it),
//! resumed, and every image in the output exactly once, with its right class; a file that
//! is not an image is a recorded error, not a stop; `--truth` ends with the report.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sightline_e2e::process::{ScratchDir, require_server_binary};
use sightline_e2e::split::unique_png;
use sightline_e2e::{models, ort_lib, require};

const IMAGES: u64 = 3000;
const LABELS: [&str; 3] = ["red", "green", "blue"];

fn batch(binary: &Path, input: &Path, out: &Path) -> Command {
    sightline_e2e::process::batch_command(binary, input, out)
}

/// The images a summary names as errors.
fn summary_errors(summary: &serde_json::Value) -> Vec<String> {
    summary["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["image"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn lines(out: &Path) -> usize {
    std::fs::read(out)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

#[test]
fn a_killed_batch_resumes_and_every_image_is_written_once() {
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    let dir = ScratchDir::new("batch").expect("scratch dir");
    let input = dir.path().join("photos");
    let mut truth = String::from("path,label\n");
    for n in 0..IMAGES {
        let name = format!("{:02}/{n:05}.png", n % 17);
        let path = input.join(&name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, unique_png(n)).expect("write image");
        truth.push_str(&format!("photos/{name},{}\n", LABELS[(n % 3) as usize]));
    }
    std::fs::write(input.join("broken.png"), b"not an image at all").expect("write");
    std::fs::write(input.join("notes.txt"), b"not listed").expect("write");
    let truth_csv = dir.path().join("truth.csv");
    std::fs::write(&truth_csv, truth).expect("write truth");
    let out = dir.path().join("results.jsonl");

    // Killed once some results are on disk.
    let mut first = batch(&binary, &input, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the batch");
    let started = Instant::now();
    while lines(&out) < 300 && started.elapsed() < Duration::from_secs(120) {
        if first.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill().expect("kill");
    let _ = first.wait();
    let at_kill = lines(&out);
    assert!(
        (300..(IMAGES as usize + 1)).contains(&at_kill),
        "the kill should land half-way: {at_kill} lines of {}",
        IMAGES + 1
    );

    // Without --resume an existing output is refused, and left as it was.
    let refused = batch(&binary, &input, &out).output().expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    assert_eq!(lines(&out), at_kill);

    let resumed = batch(&binary, &input, &out)
        .arg("--resume")
        .arg("--truth")
        .arg(&truth_csv)
        .output()
        .expect("resume");
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("already in"), "{stdout}");
    assert!(stdout.contains("accuracy (top-1)"), "{stdout}");

    let text = std::fs::read_to_string(&out).expect("results");
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let image = value["image"].as_str().expect("image").to_string();
        assert!(seen.insert(image.clone(), value).is_none(), "{image} twice");
    }
    assert_eq!(seen.len() as u64, IMAGES + 1, "every image once");
    let broken = &seen["broken.png"];
    assert!(broken["error"].is_string(), "{broken}");
    assert!(broken["predictions"].is_null(), "{broken}");
    for n in 0..IMAGES {
        let line = &seen[&format!("{:02}/{n:05}.png", n % 17)];
        assert_eq!(
            line["predictions"][0]["label"],
            LABELS[(n % 3) as usize],
            "{line}"
        );
        assert_eq!(line["sha256"].as_str().map(str::len), Some(64), "{line}");
    }
    // The report counts every image the truth names, each once, all of them right.
    assert!(
        stdout.contains(&format!("({IMAGES} images, {IMAGES} evaluated, 0 failed")),
        "{stdout}"
    );
    for label in LABELS {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in {stdout}"));
        let figures: Vec<&str> = row.split_whitespace().skip(1).collect();
        assert_eq!(figures[..3], ["1.0000", "1.0000", "1.0000"], "{row}");
    }
}

/// One pod of an Indexed Job as Kubernetes runs it: its index in `$JOB_COMPLETION_INDEX`,
/// `--resume` on an output that does not exist yet (in a folder that does not either),
/// the summary written where the kubelet reads a termination message, progress on
/// `/metrics` while it runs; and the exit status a pod failure policy acts on.
#[test]
fn an_indexed_job_shard_takes_its_index_reports_its_summary_and_exits_by_kind_of_error() {
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    let dir = ScratchDir::new("batch-shard").expect("scratch dir");
    let input = dir.path().join("photos");
    std::fs::create_dir_all(&input).expect("mkdir");
    let images = 600u64;
    for n in 0..images {
        std::fs::write(input.join(format!("{n:04}.png")), unique_png(n)).expect("write");
    }
    for n in 0..3 {
        std::fs::write(input.join(format!("zz-broken-{n}.png")), b"no image").expect("write");
    }
    let listed = images + 3;
    let port = sightline_e2e::process::free_port().expect("port");
    let out = dir.path().join("results/job-a/shard-1.jsonl");
    let summary_path = dir.path().join("termination-log");
    let shard = |command: &mut Command| {
        command
            .arg("--shards")
            .arg("3")
            .arg("--resume")
            .arg("--summary")
            .arg(&summary_path)
            .arg("--job")
            .arg("job-a");
    };
    let mut command = batch(&binary, &input, &out);
    shard(&mut command);
    let mut running = command
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{port}"))
        // Up for a while after the run too, however fast it goes.
        .args(["--metrics-linger-seconds", "3"])
        .env("JOB_COMPLETION_INDEX", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the shard");
    // The listener comes up before the model loads: its figures are there to read while
    // the run lasts.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let started = Instant::now();
    let scraped = loop {
        // The listener comes up first, the shard's size once the listing is read.
        if let Ok((200, body)) = sightline_e2e::plain_http::get(&url)
            && body.contains("sightline_batch_shard_images{")
        {
            break body;
        }
        assert!(
            running.try_wait().expect("wait").is_none(),
            "the shard ended before /metrics answered"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no /metrics");
        std::thread::sleep(Duration::from_millis(5));
    };
    let in_shard = listed.div_ceil(3) - u64::from(listed % 3 == 1);
    assert!(
        scraped.contains(&format!(
            "sightline_batch_shard_images{{job=\"job-a\"}} {in_shard}"
        )),
        "{scraped}"
    );
    assert!(
        scraped.contains("sightline_batch_images_total{job=\"job-a\",outcome=\"recognized\"}"),
        "{scraped}"
    );
    let status = running.wait().expect("wait");
    assert!(status.success(), "{status}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).expect("summary")).expect("JSON");
    assert_eq!(summary["shard"], 1, "{summary}");
    assert_eq!(summary["shards"], 3, "{summary}");
    assert_eq!(summary["total"], in_shard, "{summary}");
    assert_eq!(summary["complete"], true, "{summary}");
    let failed = summary["failed"].as_u64().expect("failed");
    assert_eq!(
        summary["recognized"].as_u64().expect("recognized") + failed,
        in_shard,
        "{summary}"
    );
    assert_eq!(
        summary["errors"].as_array().map(Vec::len),
        Some(failed as usize)
    );
    assert_eq!(lines(&out) as u64, in_shard);

    let first_errors = summary_errors(&summary);
    assert!(failed > 0, "the shard has a broken file: {summary}");

    // Run again (a restarted pod): nothing is recognized again, nothing written twice.
    let mut again = batch(&binary, &input, &out);
    shard(&mut again);
    let again = again
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .expect("run");
    assert!(again.status.success());
    // The first run's bad images are still errors, named as before (a pod killed after
    // them would otherwise take them out of the job's status).
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).expect("summary")).expect("JSON");
    assert_eq!(summary["skipped"], in_shard - failed, "{summary}");
    assert_eq!(summary["failed"], failed, "{summary}");
    assert_eq!(summary_errors(&summary), first_errors, "{summary}");
    assert_eq!(summary["recognized"], 0, "{summary}");
    assert_eq!(lines(&out) as u64, in_shard);

    // No index, or one out of range: status 2, and the summary says why.
    for index in [None, Some("3"), Some("one")] {
        let mut command = batch(&binary, &input, &dir.path().join("other.jsonl"));
        shard(&mut command);
        command.env_remove("JOB_COMPLETION_INDEX");
        if let Some(index) = index {
            command.env("JOB_COMPLETION_INDEX", index);
        }
        let output = command.output().expect("run");
        assert_eq!(output.status.code(), Some(2), "index {index:?}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary_path).expect("summary")).expect("JSON");
        assert!(
            summary["error"]
                .as_str()
                .is_some_and(|e| e.contains("JOB_COMPLETION_INDEX")),
            "{summary}"
        );
        assert_eq!(summary["complete"], false, "{summary}");
    }

    // Another model's output: retrying cannot help, status 2.
    let foreign = dir.path().join("foreign.jsonl");
    std::fs::write(
        &foreign,
        "{\"image\":\"0000.png\",\"model\":\"m\",\"model_sha256\":\"00\"}\n",
    )
    .expect("write");
    let output = batch(&binary, &input, &foreign)
        .arg("--resume")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not of this model"));

    // The same model with other preprocessing: the lines are not its answers, so retrying
    // cannot help either (status 2), and the output is left as it was.
    let before = std::fs::read(&out).expect("output");
    let mut other = batch(&binary, &input, &out);
    shard(&mut other);
    let output = other
        .env("JOB_COMPLETION_INDEX", "1")
        .args(["--resize", "shorter-side-crop"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("with preprocessing"), "{stderr}");
    assert_eq!(std::fs::read(&out).expect("output"), before);
}

/// `--store-url`: the results go to a real store role too (its SQLite database), named by
/// the job; a second job over the same folder with the same model and preprocessing finds
/// every image known and recognizes none, and the store keeps one result per image; a job
/// with other preprocessing recognizes every image again; a store that does not answer
/// stops the run with status 1 (it may answer when the pod is retried).
#[test]
fn results_go_to_the_pipelines_store_and_a_second_job_recognizes_nothing_again() {
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    const KEY: &str = "batch-store-key-0001";
    let dir = ScratchDir::new("batch-store").expect("scratch dir");
    let input = dir.path().join("photos");
    std::fs::create_dir_all(&input).expect("mkdir");
    let images = 40u64;
    for n in 0..images {
        std::fs::write(input.join(format!("{n:03}.png")), unique_png(n)).expect("write");
    }
    let store = sightline_e2e::process::ServerProcess::keyed_store(&binary, dir.path(), KEY)
        .expect("the store starts");
    let run = |job: &str, out: &str, flags: &[&str]| {
        let output = batch(&binary, &input, &dir.path().join(out))
            .args(flags)
            .arg("--store-url")
            .arg(store.url(""))
            .arg("--job")
            .arg(job)
            .arg("--summary")
            .arg(dir.path().join(format!("{job}.json")))
            .env("SIGHTLINE_BATCH_STORE_API_KEY", KEY)
            .output()
            .expect("run");
        let summary: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{job}.json"))).expect("summary"),
        )
        .expect("JSON");
        (output, summary)
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let results = |job: &str| -> serde_json::Value {
        let url = store.url(&format!("/api/v1/results?limit=1000&job={job}"));
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .get(url)
                .header("x-api-key", KEY)
                .send()
                .await
                .expect("GET results");
            assert!(response.status().is_success(), "{}", response.status());
            response.json().await.expect("JSON")
        })
    };

    let (output, summary) = run("archive-a", "a.jsonl", &[]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(summary["recognized"], images, "{summary}");
    let stored = results("archive-a");
    let items = stored["items"].as_array().expect("items");
    assert_eq!(items.len() as u64, images, "{stored}");
    let preprocessing = items[0]["model"]["preprocess_sha256"].clone();
    let model_digest = items[0]["model"]["sha256"].clone();
    assert_eq!(preprocessing.as_str().map(str::len), Some(64), "{stored}");
    for item in items {
        assert_eq!(item["job"], "archive-a", "{item}");
        assert_eq!(item["model"]["preprocess_sha256"], preprocessing, "{item}");
        assert_eq!(item["provenance"], "server", "{item}");
        assert!(
            item["image_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("file://"))
        );
    }

    let (output, summary) = run("archive-b", "b.jsonl", &[]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(summary["recognized"], 0, "{summary}");
    assert_eq!(summary["known"], images, "{summary}");
    assert_eq!(summary["skipped"], images, "{summary}");
    let b = std::fs::read_to_string(dir.path().join("b.jsonl")).expect("b");
    assert_eq!(b.lines().count() as u64, images);
    assert!(
        b.lines()
            .all(|l| l.contains("\"known\":true") && l.contains("predictions"))
    );
    assert_eq!(results("archive-b")["items"], serde_json::json!([]));
    assert_eq!(
        results("archive-a")["items"].as_array().map(Vec::len),
        Some(images as usize),
        "one result per image"
    );

    // The same model resized another way (its centre square, not stretched): other answers, so every image again.
    let (output, summary) = run("archive-p", "p.jsonl", &["--resize", "shorter-side-crop"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(summary["recognized"], images, "{summary}");
    assert_eq!(summary["known"], 0, "{summary}");
    let stored = results("archive-p");
    let items = stored["items"].as_array().expect("items");
    assert_eq!(items.len() as u64, images, "{stored}");
    assert!(
        items.iter().all(|i| i["model"]["sha256"] == model_digest
            && i["model"]["preprocess_sha256"] != preprocessing),
        "{stored}"
    );

    // A store that does not answer: the run stops, status 1, and says why.
    let output = batch(&binary, &input, &dir.path().join("c.jsonl"))
        .arg("--store-url")
        .arg("http://127.0.0.1:9")
        .arg("--job")
        .arg("archive-c")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("results store"));
}

/// `--truth` with shards: each shard evaluates its own images of the CSV (and shard 0 a
/// row naming no image, as failed), and the shards' summary counts add up to the
/// unsharded run's report — the figures the operator sums into a RecognitionJob's
/// `status.evaluation`.
#[test]
fn sharded_evaluations_add_up_to_the_whole_sets_report() {
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    const COUNT: u64 = 90;
    const SHARDS: usize = 3;
    let dir = ScratchDir::new("batch-truth-shards").expect("scratch dir");
    let input = dir.path().join("photos");
    std::fs::create_dir_all(&input).expect("mkdir");
    // Every fifth image labelled with the next colour: those are wrong at top-1.
    let mut truth = String::from("path,label\n");
    for n in 0..COUNT {
        let name = format!("{n:03}.png");
        std::fs::write(input.join(&name), unique_png(n)).expect("write");
        let label = LABELS[((n + u64::from(n % 5 == 0)) % 3) as usize];
        truth.push_str(&format!("{name},{label}\n"));
    }
    truth.push_str("missing.png,red\n");
    std::fs::write(input.join("truth.csv"), truth).expect("write truth");
    let run = |out: &str, shard: Option<usize>| -> serde_json::Value {
        let summary = dir.path().join(format!("{out}.summary.json"));
        let mut command = batch(&binary, &input, &dir.path().join(out));
        command
            .arg("--truth")
            .arg(input.join("truth.csv"))
            .arg("--summary")
            .arg(&summary);
        if let Some(i) = shard {
            command.arg("--shard").arg(format!("{i}/{SHARDS}"));
        }
        let output = command.output().expect("run");
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("accuracy (top-1)"), "{stdout}");
        let text = std::fs::read(&summary).expect("summary");
        serde_json::from_slice::<serde_json::Value>(&text).expect("JSON")["evaluation"].clone()
    };
    let whole = run("all.jsonl", None);
    // 90 images and the missing row; 18 of the 90 labelled wrong.
    assert_eq!(
        whole,
        serde_json::json!({"images": COUNT + 1, "evaluated": COUNT, "top1": COUNT - 18,
            "top5": COUNT}),
        "the unsharded run"
    );
    let parts: Vec<serde_json::Value> = (0..SHARDS)
        .map(|i| run(&format!("{i}.jsonl"), Some(i)))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let expected = (COUNT as usize / SHARDS) as u64 + u64::from(i == 0);
        assert_eq!(
            part["images"], expected,
            "shard {i}: its own images only: {part}"
        );
    }
    for field in ["images", "evaluated", "top1", "top5"] {
        let sum: u64 = parts.iter().map(|p| p[field].as_u64().unwrap_or(0)).sum();
        assert_eq!(
            sum,
            whole[field].as_u64().unwrap_or(0),
            "{field}: {parts:?}"
        );
    }
}
