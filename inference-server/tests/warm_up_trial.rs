//! The warm-up trial (`--tune-budget-seconds`): every candidate layout — instances,
//! intra-op threads, spinning — and batch size runs under load with the real sessions of
//! the test classifier, the best by the pure rule (`layout_tuning::choose`) is what serves,
//! and `/readyz` and the metrics show the choice and the table it came from. A fixed flag
//! pins its part; a budget of 0 turns the trial off.

mod support;

use axum::http::StatusCode;
use image::ImageFormat;
use serde_json::Value;
use sightline_server::cli::ServeArgs;
use sightline_server::decode_trial::{self, DecodeAt, DecodeTrial};
use sightline_server::layout_tuning::{self, Fixed, Layout, Trial};
use sightline_server::lone_trial::{self, LoneTrial};
use support::*;

const MODEL: &str = "test-classifier.onnx";

/// The serving flags without the suite's `--intra-threads 1`: the trial chooses.
fn flags(extra: &[&str]) -> ServeArgs {
    let mut argv = vec![
        "sightline-server".to_string(),
        "recognize".into(),
        "--model".into(),
        models().join(MODEL).display().to_string(),
        "--ort-lib".into(),
        ort_lib().display().to_string(),
        "--cache-bytes".into(),
        "0".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    sightline_server::cli::parse(argv.into_iter().map(Into::into).collect())
        .expect("valid flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand")
}

/// Two one-thread instances fixed, a one-second trial, and `extra`.
fn two_one_thread_instances(extra: &[&str]) -> ServeArgs {
    let mut all = vec![
        "--tune-budget-seconds",
        "1",
        "--instances",
        "2",
        "--intra-threads",
        "1",
    ];
    all.extend_from_slice(extra);
    flags(&all)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn trials(layout: &Value) -> Vec<Trial> {
    layout["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| Trial {
            layout: Layout {
                instances: t["instances"].as_u64().expect("instances") as usize,
                threads: t["threads"].as_u64().expect("threads") as usize,
                spinning: t["spinning"].as_bool().expect("spinning"),
            },
            rows: t["rows"].as_u64().expect("rows") as usize,
            images_per_second: t["images_per_second"].as_f64().expect("figure"),
        })
        .collect()
}

/// The lone session's spinning is its own trial's choice from the figures `/readyz`
/// shows (both spinning and sleeping threads timed: spinning not pinned), and the metrics
/// say the same.
fn assert_lone_trial(layout: &Value, metrics: &str) {
    let lone_trials: Vec<LoneTrial> = layout["lone_trials"]
        .as_array()
        .unwrap_or_else(|| panic!("the lone trial's figures: {layout}"))
        .iter()
        .map(|t| LoneTrial {
            spinning: t["spinning"].as_bool().expect("spinning"),
            p50_ms: t["p50_ms"].as_f64().expect("p50_ms"),
        })
        .collect();
    assert_eq!(
        lone_trials.iter().map(|t| t.spinning).collect::<Vec<_>>(),
        [false, true],
        "{layout}"
    );
    assert!(lone_trials.iter().all(|t| t.p50_ms > 0.0), "{layout}");
    let chosen = lone_trial::choose(&lone_trials).expect("a lone choice");
    assert_eq!(layout["lone_spinning"].as_bool(), Some(chosen.spinning));
    let series = format!(
        "sightline_inference_lone_spinning{{model=\"test-classifier\"}} {}",
        u8::from(chosen.spinning)
    );
    assert!(metrics.contains(&series), "{series}");
}

/// Where images are decoded: the decode trial's choice from the figures `/readyz` shows
/// when the served layout tries it (one-thread instances, one per core), else the pool;
/// the layout series says the same.
fn assert_decode_trial(layout: &Value, metrics: &str) -> DecodeAt {
    let served = Layout {
        instances: layout["instances"].as_u64().expect("instances") as usize,
        threads: layout["threads"].as_u64().expect("threads") as usize,
        spinning: layout["spinning"].as_bool().expect("spinning"),
    };
    let figures: Vec<DecodeTrial> = layout["decode_trials"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| DecodeTrial {
            decode: t["decode"]
                .as_str()
                .expect("decode")
                .parse()
                .expect("pool or worker"),
            images_per_second: t["images_per_second"].as_f64().expect("figure"),
        })
        .collect();
    let expected = if decode_trial::worth_trying(served, cores()) {
        assert_eq!(
            figures.iter().map(|t| t.decode).collect::<Vec<_>>(),
            [DecodeAt::Pool, DecodeAt::Worker],
            "{layout}"
        );
        assert!(
            figures.iter().all(|t| t.images_per_second > 0.0),
            "{layout}"
        );
        decode_trial::choose(&figures).expect("a decode choice")
    } else {
        assert!(figures.is_empty(), "{layout}");
        DecodeAt::Pool
    };
    assert_eq!(
        layout["decode"].as_str(),
        Some(expected.as_str()),
        "{layout}"
    );
    let series = format!(
        "sightline_inference_layout{{model=\"test-classifier\",instances=\"{}\",threads=\"{}\",spinning=\"{}\",decode=\"{}\"}} 1",
        served.instances,
        served.threads,
        served.spinning,
        expected.as_str()
    );
    assert!(metrics.contains(&series), "{series} in {metrics}");
    expected
}

async fn answers_by_colour(app: &axum::Router) {
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let app = app.clone();
            let (rgb, label) = [([240, 10, 10], "red"), ([10, 240, 10], "green")][i % 2];
            tokio::spawn(async move {
                let png = solid(40, 30, rgb, ImageFormat::Png);
                let (status, response) =
                    send(&app, post("/api/v1/recognize", "image/png", png)).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body_json(response).await["predictions"][0]["label"], label);
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trial_tries_every_layout_under_load_and_serves_the_best() {
    if !test_classifier_ready() {
        return;
    }
    let (app, state) = loaded_app(&flags(&["--tune-budget-seconds", "2"])).await;
    let (status, response) = send(&app, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    let body = body_json(response).await;
    let layout = &body["model"]["layout"];
    assert_eq!(layout["mode"], "auto", "{layout}");
    let tried = trials(layout);
    // Every candidate layout on this machine, at every batch size `auto` tries.
    let mut expected: Vec<(Layout, usize)> = layout_tuning::layouts(cores(), Fixed::default())
        .into_iter()
        .flat_map(|l| [1, 2, 4, 8].map(|rows| (l, rows)))
        .collect();
    let mut got: Vec<(Layout, usize)> = tried.iter().map(|t| (t.layout, t.rows)).collect();
    let key = |x: &(Layout, usize)| (x.0.instances, x.0.threads, x.0.spinning, x.1);
    expected.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(got, expected, "{layout}");
    assert!(tried.iter().all(|t| t.images_per_second > 0.0), "{layout}");
    assert!(
        layout["rounds"].as_u64().is_some_and(|r| r >= 1),
        "{layout}"
    );
    assert_eq!(layout["budget_seconds"], 2.0);
    // What serves is the rule's choice from the table /readyz shows.
    let chosen = layout_tuning::choose(&tried).expect("a choice");
    assert_eq!(
        layout["instances"].as_u64(),
        Some(chosen.layout.instances as u64)
    );
    assert_eq!(
        layout["threads"].as_u64(),
        Some(chosen.layout.threads as u64)
    );
    assert_eq!(layout["spinning"].as_bool(), Some(chosen.layout.spinning));
    assert_eq!(
        body["model"]["instances"].as_u64(),
        Some(chosen.layout.instances as u64)
    );
    assert_eq!(
        body["model"]["batching"]["max_batch_size"].as_u64(),
        Some(chosen.rows as u64),
        "{body}"
    );
    let lone = layout_tuning::wants_lone(chosen.layout, cores());
    assert_eq!(
        layout["lone_threads"].as_u64(),
        lone.then_some(cores() as u64)
    );
    if lone {
        assert_lone_trial(layout, &state.metrics.encode());
    } else {
        assert_eq!(layout["lone_spinning"], Value::Null);
    }
    let model = state.model.ready().expect("model ready");
    assert_eq!(model.batch_config().max_batch_size, chosen.rows);

    // The metrics say the same, and where images are decoded is the decode trial's.
    let metrics = state.metrics.encode();
    assert_decode_trial(layout, &metrics);
    let trial_lines = metrics
        .lines()
        .filter(|l| l.starts_with("sightline_inference_trial_throughput{"))
        .count();
    assert_eq!(trial_lines, tried.len(), "{metrics}");
    assert!(
        metrics.contains("sightline_inference_trial_duration_seconds{model=\"test-classifier\"} "),
        "{metrics}"
    );
    answers_by_colour(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_flags_pin_their_part_and_a_zero_budget_turns_the_trial_off() {
    if !test_classifier_ready() {
        return;
    }
    // Instances and threads fixed: only spinning (none to try on one thread) and the
    // batch size are left; one layout, four sizes.
    let (app, state) = loaded_app(&two_one_thread_instances(&[])).await;
    let body = body_json(send(&app, get("/readyz")).await.1).await;
    let layout = &body["model"]["layout"];
    let tried = trials(layout);
    assert_eq!(tried.len(), 4, "{layout}");
    assert!(
        tried.iter().all(|t| t.layout
            == Layout {
                instances: 2,
                threads: 1,
                spinning: false
            }),
        "{layout}"
    );
    assert_eq!(body["model"]["instances"], 2);
    // Two one-thread instances on more cores: a lone session beside them, its spinning
    // timed (the trial had no session that wide: both are loaded for it).
    if cores() > 1 {
        assert_eq!(layout["lone_threads"].as_u64(), Some(cores() as u64));
        assert_lone_trial(layout, &state.metrics.encode());
    }
    // Two one-thread instances: on two cores, the decode trial times both placements.
    assert_decode_trial(layout, &state.metrics.encode());
    answers_by_colour(&app).await;

    // Where images are decoded, pinned: kept, with nothing to time.
    let (app, state) = loaded_app(&two_one_thread_instances(&["--decode-at", "worker"])).await;
    let body = body_json(send(&app, get("/readyz")).await.1).await;
    let layout = &body["model"]["layout"];
    assert_eq!(layout["decode"], "worker", "{layout}");
    assert_eq!(layout.get("decode_trials"), None, "{layout}");
    assert_eq!(
        state.model.ready().expect("ready").layout.decode,
        DecodeAt::Worker
    );
    answers_by_colour(&app).await;

    // Spinning pinned: the lone session keeps it, with nothing to time.
    let (app, _) = loaded_app(&two_one_thread_instances(&["--intra-op-spinning", "false"])).await;
    let body = body_json(send(&app, get("/readyz")).await.1).await;
    let layout = &body["model"]["layout"];
    if cores() > 1 {
        assert_eq!(layout["lone_spinning"], false, "{layout}");
        assert_eq!(layout.get("lone_trials"), None, "{layout}");
    }

    // Everything fixed: nothing to try.
    let (app, _) = loaded_app(&flags(&[
        "--tune-budget-seconds",
        "5",
        "--instances",
        "1",
        "--intra-threads",
        "1",
        "--intra-op-spinning",
        "false",
        "--max-batch-size",
        "4",
    ]))
    .await;
    let body = body_json(send(&app, get("/readyz")).await.1).await;
    let layout = &body["model"]["layout"];
    assert_eq!(layout["mode"], "fixed", "{layout}");
    assert_eq!(layout["trials"], serde_json::json!([]));
    assert_eq!(body["model"]["batching"]["max_batch_size"], 4);

    // No budget: one session with a thread per core, threads asleep, no lone session.
    let (app, _) = loaded_app(&flags(&["--tune-budget-seconds", "0"])).await;
    let body = body_json(send(&app, get("/readyz")).await.1).await;
    let layout = &body["model"]["layout"];
    assert_eq!(layout["mode"], "fixed", "{layout}");
    assert_eq!(layout["instances"], 1);
    assert_eq!(layout["threads"].as_u64(), Some(cores() as u64));
    assert_eq!(layout["spinning"], false);
    assert_eq!(layout["lone_threads"], Value::Null);
    answers_by_colour(&app).await;
}

#[test]
fn a_budget_that_is_no_number_of_seconds_is_refused() {
    for bad in ["-1", "nan", "601", "inf", "ten", ""] {
        let argv = [
            "sightline-server",
            "recognize",
            "--model",
            "m.onnx",
            "--tune-budget-seconds",
            bad,
        ];
        assert!(
            sightline_server::cli::parse(argv.iter().map(Into::into).collect()).is_err(),
            "{bad:?} was accepted"
        );
    }
}
