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
    let mut command = Command::new(binary);
    command
        .arg("batch")
        .arg("--model")
        .arg(models().join("test-classifier.onnx"))
        .arg("--ort-lib")
        .arg(ort_lib())
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .env("RUST_BACKTRACE", "0");
    command
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
