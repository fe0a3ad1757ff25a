//! The int8 EfficientNet-Lite0 (`models/quantize_int8.py`) and its gate: is it honest?
//!
//! The gate (issue: top-1 agreement with fp32 ≥ 99 % over at least 500 distinct views of
//! every bundled photo, and `eval` on the labelled photos unchanged; the int8 model is not
//! the default unless it passes) has two halves:
//!
//! * `models/int8_gate.py` (run by `make models`) measures the views in ONNX Runtime and
//!   writes `efficientnet-lite0-int8.gate.json`, with its own `passed`;
//! * `sightline-server eval` on the labelled photos, int8 against the fp32 baseline, which
//!   these tests run (the server's own decoding and resize, not the Python reference).
//!
//! The int8 model *passed its gate* when the report is about the files built now, its
//! `passed` follows from its own figures, and the server's eval names every labelled photo
//! alike with both models. These tests do not require that verdict to be a pass (it
//! depends on the CPU's int8 kernels; CI stays green either way); they require that nothing
//! claims more than it earned:
//!
//! * the report is about these exact files and covers ≥ 500 views and every photo;
//! * its `passed` is what its figures give (a hand-flipped `passed` fails);
//! * the server's eval runs both models on every labelled photo, and its list of changed
//!   photos is the one its predictions give;
//! * unless the gate passed, the int8 model is nobody's default: not the server's `--model`,
//!   not `manifests/samples`; and its example manifest says it is opt-in and does not claim
//!   a pass it did not get.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_json::Value;
use sightline_e2e::process::{ScratchDir, require_server_binary};
use sightline_e2e::{models, ort_lib, repo_root, require, run_eval};
use sightline_server::cli::Cli;
use sightline_server::engine::sha256_file;

/// The bar; a report made against a lower one is not a pass.
const MIN_VIEWS: u64 = 500;
const MIN_AGREEMENT: f64 = 0.99;

fn fp32() -> PathBuf {
    models().join("efficientnet-lite0.onnx")
}

fn int8() -> PathBuf {
    models().join("efficientnet-lite0-int8.onnx")
}

fn gate_report() -> PathBuf {
    models().join("efficientnet-lite0-int8.gate.json")
}

fn example_manifest() -> PathBuf {
    repo_root().join("manifests/examples/imagemodel-int8.yaml")
}

/// The report and, for messages, its markdown table (the JSON when there is none).
fn load_report() -> (Value, String) {
    let text = std::fs::read_to_string(gate_report()).expect("gate report");
    let report: Value = serde_json::from_str(&text).expect("gate report is JSON");
    let table =
        std::fs::read_to_string(models().join("efficientnet-lite0-int8.gate.md")).unwrap_or(text);
    (report, table)
}

/// Every bundled photo (`photos/*.png|jpg`), by file name.
fn bundled_photos() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models().join("photos"))
        .expect("photos folder")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            !n.starts_with('.')
                && (lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg"))
        })
        .collect();
    names.sort();
    names
}

/// The labelled photos: `expected.json` and `expected-top5.json`, photo → accepted classes.
fn labelled_photos() -> BTreeMap<String, u64> {
    let photos = models().join("photos");
    let mut out = BTreeMap::new();
    for file in ["expected.json", "expected-top5.json"] {
        let text = std::fs::read_to_string(photos.join(file)).expect("expected file");
        let map: serde_json::Map<String, Value> = serde_json::from_str(&text).expect("object");
        for (photo, classes) in map {
            let first = classes
                .get("top1")
                .unwrap_or(&classes)
                .get(0)
                .and_then(Value::as_u64)
                .expect("a class index");
            out.insert(photo, first);
        }
    }
    out
}

/// Whether the report is about the files that are there now (fp32 and int8 SHA-256s).
fn report_is_current(report: &Value) -> Result<(), String> {
    let int8_sha = sha256_file(&int8()).expect("hash int8");
    let fp32_sha = sha256_file(&fp32()).expect("hash fp32");
    if report["model_sha256"].as_str() != Some(int8_sha.as_str()) {
        return Err(format!(
            "the gate report is about another int8 model ({} vs the built {int8_sha}): rerun \
             `make models` (or models/int8_gate.py)",
            report["model_sha256"]
        ));
    }
    if report["reference_sha256"].as_str() != Some(fp32_sha.as_str()) {
        return Err(format!(
            "the gate report was made against another fp32 model ({} vs the built \
             {fp32_sha}): rerun `make models`",
            report["reference_sha256"]
        ));
    }
    Ok(())
}

/// The report's verdict recomputed from its own figures, with the reasons it fails.
fn verdict_from_figures(report: &Value) -> (bool, Vec<String>) {
    let mut reasons = Vec::new();
    let total = &report["total"];
    let views = total["views"].as_u64().unwrap_or(0);
    if views < MIN_VIEWS {
        reasons.push(format!("{views} views < {MIN_VIEWS}"));
    }
    let per = report["views_per_photo"].as_u64().unwrap_or(0);
    let per_photo = report["per_photo"].as_object();
    for photo in bundled_photos() {
        let n = per_photo
            .and_then(|p| p.get(&photo))
            .and_then(|r| r["views"].as_u64())
            .unwrap_or(0);
        if n == 0 || n < per {
            reasons.push(format!("{photo}: {n} views < {per}"));
        }
    }
    match total["top1_agreement"].as_f64() {
        Some(a) if a >= MIN_AGREEMENT => {}
        Some(a) => reasons.push(format!("top-1 agreement {a:.4} < {MIN_AGREEMENT}")),
        None => reasons.push("no top-1 agreement".into()),
    }
    match report["labelled"].as_array() {
        Some(rows) if !rows.is_empty() => {
            for row in rows {
                if row["fp32_top1"].as_u64().is_none() || row["fp32_top1"] != row["int8_top1"] {
                    reasons.push(format!("{}: labelled photo's top-1 changed", row["photo"]));
                }
            }
        }
        _ => reasons.push("no labelled photos".into()),
    }
    (reasons.is_empty(), reasons)
}

/// What `sightline-server eval --model int8 --baseline fp32` said about the labelled photos.
struct Eval {
    /// Photo file name → (fp32 top-1 label, int8 top-1 label).
    top1: BTreeMap<String, (String, String)>,
    /// Photo file names the eval report lists as changed.
    changed: BTreeSet<String>,
    stdout: String,
}

impl Eval {
    fn unchanged(&self) -> bool {
        self.changed.is_empty() && self.top1.values().all(|(a, b)| a == b)
    }
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// path → top-1 label, from an eval report's `predictions`.
fn top1s(report: &Value) -> BTreeMap<String, String> {
    report["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| {
            (
                file_name(p["path"].as_str().expect("path")),
                p["top1"].as_str().expect("top1").to_string(),
            )
        })
        .collect()
}

/// Runs the server's eval on every labelled photo (`None`: a local skip, announced).
fn server_eval() -> Option<Eval> {
    if !require(&[
        ort_lib(),
        fp32(),
        int8(),
        models().join("efficientnet-lite0-int8.json"),
        models().join("efficientnet-lite0-int8.labels.txt"),
        models().join("photos/expected.json"),
        models().join("photos/expected-top5.json"),
    ]) {
        return None;
    }
    let binary = require_server_binary()?;
    let dir = ScratchDir::new("eval-int8").expect("scratch dir");
    let labelled = labelled_photos();
    let mut csv = String::from("path,label\n");
    for (photo, class) in &labelled {
        csv.push_str(&format!(
            "{},{class}\n",
            models().join("photos").join(photo).display()
        ));
    }
    let set = dir.path().join("photos.csv");
    std::fs::write(&set, &csv).expect("write csv");
    let json = dir.path().join("report.json");
    let out = run_eval(&binary, &int8(), &set, &json, &fp32()).expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    let baseline = &report["baseline"];
    let images = labelled.len() as u64;
    assert_eq!(report["images"], images, "{stdout}");
    assert_eq!(
        report["evaluated"], images,
        "int8 failed on a photo\n{stdout}"
    );
    assert_eq!(
        baseline["evaluated"], images,
        "fp32 failed on a photo\n{stdout}"
    );

    let int8_top1 = top1s(&report);
    let fp32_top1 = top1s(baseline);
    let names: BTreeSet<&String> = labelled.keys().collect();
    assert_eq!(int8_top1.keys().collect::<BTreeSet<_>>(), names, "{stdout}");
    assert_eq!(fp32_top1.keys().collect::<BTreeSet<_>>(), names, "{stdout}");
    let changed: BTreeSet<String> = report["changed"]
        .as_array()
        .expect("`changed` with --baseline")
        .iter()
        .map(|c| file_name(c["path"].as_str().expect("changed path")))
        .collect();
    let top1: BTreeMap<String, (String, String)> = fp32_top1
        .into_iter()
        .map(|(photo, a)| {
            let b = int8_top1[&photo].clone();
            (photo, (a, b))
        })
        .collect();
    Some(Eval {
        top1,
        changed,
        stdout,
    })
}

#[test]
fn gate_report_is_about_the_built_files_and_covers_every_photo() {
    if !require(&[fp32(), int8(), gate_report()]) {
        return;
    }
    let (report, table) = load_report();
    if let Err(stale) = report_is_current(&report) {
        panic!("{stale}");
    }
    assert_eq!(report["min_views"], MIN_VIEWS, "the report's bar\n{table}");
    assert_eq!(
        report["min_top1_agreement"].as_f64(),
        Some(MIN_AGREEMENT),
        "the report's bar\n{table}"
    );

    let total = &report["total"];
    let views = total["views"].as_u64().expect("total.views");
    assert!(views >= MIN_VIEWS, "{views} views < {MIN_VIEWS}\n{table}");

    let photos = bundled_photos();
    assert!(!photos.is_empty(), "no bundled photos");
    let listed: Vec<String> = report["photos"]
        .as_array()
        .expect("photos")
        .iter()
        .map(|p| p.as_str().expect("photo name").to_string())
        .collect();
    assert_eq!(
        listed, photos,
        "the report's photos are not the bundled ones"
    );
    let per_photo = report["per_photo"].as_object().expect("per_photo");
    assert_eq!(per_photo.len(), photos.len(), "{table}");
    let per = report["views_per_photo"].as_u64().expect("views_per_photo");
    let (mut counted, mut agreed) = (0, 0);
    for photo in &photos {
        let r = per_photo
            .get(photo)
            .unwrap_or_else(|| panic!("{photo} is not covered by the gate\n{table}"));
        let n = r["views"].as_u64().expect("views");
        assert!(n >= per && n > 0, "{photo}: {n} views < {per}\n{table}");
        let agree = r["top1_agree"].as_u64().expect("top1_agree");
        assert!(agree <= n, "{photo}: {agree} of {n}");
        let agreement = r["top1_agreement"].as_f64().expect("top1_agreement");
        assert!(
            (agreement - agree as f64 / n as f64).abs() < 1e-9,
            "{photo}: agreement {agreement} is not {agree}/{n}"
        );
        for key in ["top5_overlap_mean", "top5_overlap_min"] {
            let v = r[key].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&v), "{photo}: {key} {v}\n{table}");
        }
        counted += n;
        agreed += agree;
    }
    assert_eq!(counted, views, "views of photos that are not bundled?");
    assert_eq!(total["top1_agree"].as_u64(), Some(agreed), "{table}");
    let agreement = total["top1_agreement"].as_f64().expect("top-1 agreement");
    assert!(
        (agreement - agreed as f64 / views as f64).abs() < 1e-9,
        "total agreement {agreement} is not {agreed}/{views}"
    );
    for key in ["top5_overlap_mean", "top5_overlap_min"] {
        let v = total[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{key} {v}\n{table}");
    }

    // The labelled photos as uploaded, both models (reference preprocessing).
    let rows = report["labelled"].as_array().expect("labelled");
    let in_report: BTreeSet<String> = rows
        .iter()
        .map(|r| r["photo"].as_str().expect("photo").to_string())
        .collect();
    let labelled: BTreeSet<String> = labelled_photos().into_keys().collect();
    assert_eq!(in_report, labelled, "labelled photos in the report");
    for row in rows {
        let (a, b) = (row["fp32_top1"].as_u64(), row["int8_top1"].as_u64());
        assert!(a.is_some() && b.is_some(), "{row}");
        assert_eq!(row["same"].as_bool(), Some(a == b), "{row}");
    }
    eprintln!("{table}");
}

#[test]
fn gate_report_verdict_follows_from_its_own_figures() {
    if !require(&[gate_report()]) {
        return;
    }
    let (report, table) = load_report();
    let (passed, reasons) = verdict_from_figures(&report);
    let claimed = report["passed"].as_bool().expect("`passed` is a boolean");
    assert_eq!(
        claimed, passed,
        "the report says passed={claimed}, its figures say {passed} ({reasons:?})\n{table}"
    );
    let listed = report["reasons"].as_array().expect("reasons");
    assert_eq!(
        listed.is_empty(),
        passed,
        "a pass lists no reasons, a failure lists some: {listed:?}"
    );
    eprintln!(
        "int8 gate report: {} {reasons:?}",
        if passed { "passed" } else { "failed" }
    );
}

#[test]
fn eval_runs_int8_and_fp32_on_every_labelled_photo() {
    let Some(eval) = server_eval() else {
        return;
    };
    let differs: BTreeSet<String> = eval
        .top1
        .iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(photo, _)| photo.clone())
        .collect();
    assert_eq!(
        eval.changed, differs,
        "eval's `changed` is not what its predictions give\n{}",
        eval.stdout
    );
    // What the gate report saw with the reference preprocessing, for comparison: the
    // server's decoding and resize differ slightly, which can tip a photo fp32 is split on.
    if gate_report().exists() {
        let (report, _) = load_report();
        let reference: BTreeSet<String> = report["labelled"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["same"] == false)
            .filter_map(|r| r["photo"].as_str().map(str::to_string))
            .collect();
        if reference != differs {
            eprintln!(
                "note: the gate report (reference preprocessing) saw {reference:?} change, \
                 the server's eval {differs:?}; a pass needs both unchanged"
            );
        }
    }
    eprintln!(
        "eval on the labelled photos, fp32 → int8: {}\n{}",
        if eval.unchanged() {
            "unchanged"
        } else {
            "CHANGED"
        },
        eval.top1
            .iter()
            .map(|(p, (a, b))| format!("  {p}: {a} → {b}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Whether the int8 model passed its whole gate here; prints why not.
fn gate_passed() -> bool {
    if !gate_report().exists() || !int8().exists() || !fp32().exists() {
        eprintln!("int8 gate: no report or model, so not passed");
        return false;
    }
    let (report, _) = load_report();
    if let Err(stale) = report_is_current(&report) {
        eprintln!("int8 gate: not passed: {stale}");
        return false;
    }
    let (passed, reasons) = verdict_from_figures(&report);
    if !passed || report["passed"] != true {
        eprintln!("int8 gate: failed: {reasons:?}");
        return false;
    }
    match server_eval() {
        Some(eval) if eval.unchanged() => true,
        Some(eval) => {
            eprintln!(
                "int8 gate: failed: eval changes the top-1 of {:?}",
                eval.changed
            );
            false
        }
        None => {
            eprintln!("int8 gate: eval did not run, so not passed");
            false
        }
    }
}

/// `# ... gate: FAILED on <CPU>` / `gate: PASSED on <CPU>` in the manifest's comments.
fn claimed_verdicts(comments: &str) -> (bool, bool) {
    let claims = |word: &str| {
        comments
            .match_indices(&format!("gate: {word} on "))
            .any(|(i, m)| {
                comments[i + m.len()..]
                    .split(['\n', '(', ';', ','])
                    .next()
                    .is_some_and(|cpu| cpu.trim().len() >= 3)
            })
    };
    (claims("PASSED"), claims("FAILED"))
}

#[test]
fn int8_is_not_the_default_unless_it_passed_its_gate() {
    // The example manifest, whatever the verdict: opt-in, and which verdict on which CPU.
    let manifest = std::fs::read_to_string(example_manifest()).expect("int8 example manifest");
    let comments: String = manifest
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('#'))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        comments.to_ascii_lowercase().contains("opt-in"),
        "{}: its comments must say the int8 model is opt-in",
        example_manifest().display()
    );
    let (claims_pass, claims_fail) = claimed_verdicts(&comments);
    assert!(
        claims_pass != claims_fail,
        "{}: its comments must say `gate: PASSED on <CPU>` or `gate: FAILED on <CPU>` \
         (exactly one)",
        example_manifest().display()
    );

    let passed = gate_passed();
    eprintln!(
        "int8 gate here: {}",
        if passed { "PASSED" } else { "FAILED" }
    );
    if passed {
        // A pass here allows int8 as a default; a manifest that reports a failure on
        // another CPU is still honest.
        return;
    }
    assert!(
        !claims_pass,
        "{}: claims the int8 gate passed, but it did not here",
        example_manifest().display()
    );

    // The server's default model, for every subcommand that takes one.
    let cli = Cli::command();
    let mut checked = 0;
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments().filter(|a| a.get_id() == "model") {
            for default in arg.get_default_values() {
                let default = default.to_string_lossy();
                assert!(
                    !default.to_ascii_lowercase().contains("int8"),
                    "`sightline-server {}` defaults to --model {default}, which failed its \
                     gate",
                    sub.get_name()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "found no default --model to check");

    // The samples `kubectl apply -k manifests/samples` installs.
    let samples = repo_root().join("manifests/samples");
    let mut files = 0;
    for entry in std::fs::read_dir(&samples).expect("manifests/samples") {
        let path = entry.expect("entry").path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("sample");
        assert!(
            !text.to_ascii_lowercase().contains("int8"),
            "{} refers to the int8 model, which failed its gate",
            path.display()
        );
        files += 1;
    }
    assert!(files > 0, "no sample manifests in {}", samples.display());
}
