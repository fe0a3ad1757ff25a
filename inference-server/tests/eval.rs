//! `eval` end to end through the library: a generated labelled set (solid and noisy red,
//! green and blue images, one deliberately mislabelled) scored by the test classifier
//! through the same engine and batcher the server uses, as an ImageFolder tree and as a CSV.

mod support;

use std::path::{Path, PathBuf};

use image::{ImageBuffer, Rgb};
use sightline_server::cli::{Cli, Command, EvalArgs};
use support::{models, ort_lib, test_classifier_ready};

/// A 24×24 PNG around `rgb`, with deterministic noise of ±`noise`.
fn png(path: &Path, rgb: [u8; 3], noise: u8, seed: u32) {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let img = ImageBuffer::from_fn(24, 24, |_, _| {
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let jitter = if noise == 0 {
                0
            } else {
                (state % (2 * noise as u32 + 1)) as i32 - noise as i32
            };
            *v = (rgb[c] as i32 + jitter).clamp(0, 255) as u8;
        }
        Rgb(px)
    });
    img.save(path).expect("write png");
}

/// red/, green/, blue/ with four images each (solid and noisy), plus a green image filed
/// under red/. Returns the directory.
fn generated_set(dir: &Path) -> PathBuf {
    let colours = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 40]),
        ("blue", [20, 40, 230]),
    ];
    let mut seed = 1;
    for (name, rgb) in colours {
        let class = dir.join(name);
        std::fs::create_dir_all(&class).expect("mkdir");
        for (i, noise) in [0u8, 20, 40, 60].into_iter().enumerate() {
            png(&class.join(format!("{name}-{i}.png")), rgb, noise, seed);
            seed += 1;
        }
    }
    png(&dir.join("red/mislabelled.png"), [30, 200, 40], 10, 99);
    dir.to_path_buf()
}

fn eval_args(dataset: &Path, extra: &[&str]) -> EvalArgs {
    let mut argv: Vec<String> = vec![
        "sightline-server".into(),
        "eval".into(),
        "--model".into(),
        models().join("test-classifier.onnx").display().to_string(),
        "--ort-lib".into(),
        ort_lib().display().to_string(),
        "--intra-threads".into(),
        "1".into(),
        "--max-batch-size".into(),
        "4".into(),
        "--dataset".into(),
        dataset.display().to_string(),
        "--no-progress".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cli: Cli = sightline_server::cli::parse(argv.into_iter().map(Into::into).collect())
        .expect("valid flags");
    match cli.command {
        Command::Eval(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_classifier_on_a_generated_image_folder() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let set = generated_set(dir.path());
    let json = dir.path().join("report.json");
    let args = eval_args(&set, &["--json", &json.display().to_string()]);
    let report = sightline_server::eval::run_cli(args)
        .await
        .expect("eval runs");
    assert_eq!(report.images, 13);
    assert_eq!(report.evaluated, 13);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // Everything right but the mislabelled image (a green one filed under red).
    assert!(close(report.accuracy, 12.0 / 13.0), "{}", report.accuracy);
    assert!(
        close(report.top5_accuracy, 1.0),
        "three classes: always in the top 5"
    );
    let red = &report.per_class[0];
    assert_eq!(red.label, "red");
    assert_eq!((red.tp, red.fp, red.fn_, red.support), (4, 0, 1, 5));
    assert!(close(red.precision, 1.0) && close(red.recall, 0.8));
    let green = &report.per_class[1];
    assert_eq!((green.tp, green.fp, green.fn_), (4, 1, 0));
    assert!(close(green.precision, 0.8) && close(green.recall, 1.0));
    let f1_rg = 2.0 * 0.8 / 1.8;
    assert!(close(report.macro_avg.f1, (f1_rg + f1_rg + 1.0) / 3.0));
    assert!(close(report.weighted.recall, report.accuracy));
    assert_eq!(
        report.confusion.matrix,
        vec![vec![4, 1, 0], vec![0, 4, 0], vec![0, 0, 4]]
    );

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    assert!(close(
        written["accuracy"].as_f64().expect("accuracy"),
        12.0 / 13.0
    ));
    assert_eq!(written["top5_accuracy"], 1.0);
    for key in ["macro", "weighted"] {
        for figure in ["precision", "recall", "f1"] {
            assert!(written[key][figure].is_f64(), "{key}.{figure}");
        }
    }
    assert_eq!(written["per_class"].as_array().map(Vec::len), Some(3));
    assert_eq!(written["confusion"]["labels"][0], "red");
    assert_eq!(written["confusion"]["matrix"][0][1], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_set_with_a_broken_image_and_a_baseline() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    generated_set(dir.path());
    std::fs::write(dir.path().join("broken.png"), b"not a png").expect("write");
    let csv = dir.path().join("set.csv");
    std::fs::write(
        &csv,
        "path,label\nred/red-0.png,red\ngreen/green-1.png,green\nblue/blue-2.png,2\nred/mislabelled.png,red\nbroken.png,blue\n",
    )
    .expect("write csv");
    let baseline = models().join("test-classifier.onnx").display().to_string();
    let args = eval_args(&csv, &["--baseline", &baseline]);
    let report = sightline_server::eval::run_eval(&args)
        .await
        .expect("eval runs");
    assert_eq!(report.images, 5);
    assert_eq!(report.evaluated, 4);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].path.ends_with("broken.png"));
    assert!(close(report.accuracy, 0.75));
    let base = report.baseline.as_ref().expect("baseline report");
    assert!(close(base.accuracy, 0.75));
    assert_eq!(report.changed.as_ref().map(Vec::len), Some(0), "same model");
    assert!(report.table().contains("top-1 changed on 0 image(s)"));
}

#[tokio::test]
async fn bad_datasets_are_clear_errors() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("purple")).expect("mkdir");
    let err = sightline_server::eval::run_eval(&eval_args(dir.path(), &[]))
        .await
        .expect_err("unknown class");
    assert!(err.to_string().contains("purple"), "{err}");
    let err = sightline_server::eval::run_eval(&eval_args(&dir.path().join("nope.csv"), &[]))
        .await
        .expect_err("no dataset");
    assert!(err.to_string().contains("no dataset"), "{err}");
}
