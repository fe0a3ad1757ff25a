//! A canary without a mesh, as real processes on loopback: a stable recognize process
//! (EfficientNet-Lite0), candidate recognize processes and the front door (the upload
//! role) reading a traffic file updated the way the kubelet updates a mounted ConfigMap.
//!
//! - the split lands on the weight, by the front door's own counters and by the two
//!   recognize processes' request counters;
//! - mirroring agrees with an identical candidate and not with a random-weights ResNet-50
//!   (answering with the same ImageNet label names), and never answers or delays a caller;
//! - no request fails while the weights move, or when the candidate is killed mid-load.
//!
//! Bounded for `make test` on two cores: a few thousand small images in all, one test at
//! a time (each starts its own processes). The latency cost of mirroring is a benchmark
//! figure, not a test: `sightline-bench --mirror` (BENCHMARKS.md).
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sightline_e2e::canary::{
    Call, Canary, MODEL, Shot, drive, failures, lite0, photo_tiles, random_resnet,
    recognitions_served, scrape, sum, upload_all,
};
use sightline_e2e::split::{client, unique_png};

/// The processes of one test at a time: they share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails with the first few failed calls and the logs.
fn all_answered(shots: &[Shot], canary: &Canary, what: &str) {
    if let Some(failed) = failures(shots) {
        panic!("{what}: {failed}\n{}", canary.logs());
    }
}

/// Mostly image bytes, some multipart forms and seed recognitions by URL.
fn mix(images: &[Vec<u8>], urls: &[String]) -> Arc<Vec<Call>> {
    let mut calls = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let image = Bytes::from(image.clone());
        calls.push(match i % 10 {
            0 if !urls.is_empty() => Call::Seed(urls[i % urls.len()].clone()),
            5 => Call::Multipart(image),
            _ => Call::Bytes(image),
        });
    }
    Arc::new(calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_lands_on_the_weight_by_both_counts() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut canary) = Canary::start(&lite0(), &[lite0()]) else {
        return;
    };
    let client = client();
    let images: Vec<Vec<u8>> = (0..200).map(unique_png).collect();
    let urls = upload_all(&client, &canary.front.url(""), &images[..20])
        .await
        .expect("upload");
    canary.set(&client, 0, 20.0, 0.0).await.expect("set");
    let served = |text: String| recognitions_served(&text);
    let stable_before = served(
        scrape(&client, &canary.stable.url(""))
            .await
            .expect("scrape"),
    );
    let candidate_before = served(
        scrape(&client, &canary.candidates[0].url(""))
            .await
            .expect("scrape"),
    );

    const N: usize = 2000;
    let started = Instant::now();
    let shots = drive(
        &client,
        &canary.front.url(""),
        mix(&images, &urls),
        N,
        8,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    let elapsed = started.elapsed();
    all_answered(&shots, &canary, "the split");

    let front = scrape(&client, &canary.front.url(""))
        .await
        .expect("scrape");
    let counted = |revision: &str| {
        sum(
            &front,
            "sightline_frontdoor_requests_total",
            &[("model", MODEL), ("revision", revision)],
        )
    };
    let (to_candidate, to_stable) = (counted("candidate"), counted("stable"));
    let stable = served(
        scrape(&client, &canary.stable.url(""))
            .await
            .expect("scrape"),
    ) - stable_before;
    let candidate = served(
        scrape(&client, &canary.candidates[0].url(""))
            .await
            .expect("scrape"),
    ) - candidate_before;
    let front_share = 100.0 * to_candidate / (to_candidate + to_stable);
    let served_share = 100.0 * candidate / (candidate + stable);
    eprintln!(
        "split at 20 %: {N} calls at concurrency 8 in {elapsed:.1?}; front door counted \
         {to_candidate} candidate / {to_stable} stable = {front_share:.2} %; the recognize \
         processes served {candidate} / {stable} = {served_share:.2} %"
    );
    assert_eq!(to_candidate + to_stable, N as f64, "{front}");
    assert_eq!(
        candidate + stable,
        N as f64,
        "each call reached one revision once"
    );
    assert!((front_share - 20.0).abs() <= 3.0, "{front_share}");
    assert!((served_share - 20.0).abs() <= 3.0, "{served_share}");
    assert_eq!(
        sum(
            &front,
            "sightline_frontdoor_candidate_weight",
            &[("model", MODEL)]
        ),
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_agrees_with_an_identical_candidate_and_not_with_a_random_one() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut canary) = Canary::start(&lite0(), &[lite0(), random_resnet()]) else {
        return;
    };
    let client = client();
    let tiles = photo_tiles(96, 70).expect("tiles");
    assert!(tiles.len() >= 40, "only {} tiles", tiles.len());
    let urls = upload_all(&client, &canary.front.url(""), &tiles[..10])
        .await
        .expect("upload");
    let calls = mix(&tiles, &urls);

    // Counts of mirrored outcomes after `n` more mirrored requests have finished.
    let outcomes = ["agree", "disagree", "error", "timeout", "dropped"];
    let mirrored = |text: &str, outcome: &str| {
        sum(
            text,
            "sightline_frontdoor_mirrored_total",
            &[("model", MODEL), ("outcome", outcome)],
        )
    };
    let front = canary.front.url("");
    let settled = |before: Vec<f64>, n: f64| {
        let client = client.clone();
        let front = front.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = scrape(&client, &front).await.expect("scrape");
                let now: Vec<f64> = outcomes.iter().map(|o| mirrored(&text, o)).collect();
                let delta: Vec<f64> = now.iter().zip(&before).map(|(a, b)| a - b).collect();
                if delta.iter().sum::<f64>() >= n || Instant::now() > deadline {
                    return (now, delta);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let snapshot = || {
        let client = client.clone();
        let front = front.clone();
        async move {
            let text = scrape(&client, &front).await.expect("scrape");
            outcomes
                .iter()
                .map(|o| mirrored(&text, o))
                .collect::<Vec<f64>>()
        }
    };

    // The identical candidate (the same model file): all of stable's calls mirrored.
    const N: usize = 400;
    canary.set(&client, 0, 0.0, 100.0).await.expect("set");
    let before = snapshot().await;
    let shots = drive(&client, &front, calls.clone(), N, 4, Arc::default()).await;
    all_answered(&shots, &canary, "mirroring to the same model");
    let (_, same) = settled(before, N as f64).await;
    let agreement = same[0] / (same[0] + same[1]);
    eprintln!(
        "identical candidate: {N} calls mirrored: agree {}, disagree {}, error {}, timeout \
         {}, dropped {}: agreement {agreement:.4}",
        same[0], same[1], same[2], same[3], same[4]
    );
    assert!(same[0] + same[1] >= 0.9 * N as f64, "{same:?}");
    assert!(agreement >= 0.99, "{agreement}: {same:?}");

    // The random-weights ResNet-50, a new candidate, live. It needs some 150 ms an image
    // on one core, far more than Lite0: one call at a time, each after the previous
    // mirror finished, so none is dropped or times out (the comparison is the point here;
    // the bounds have their own tests).
    const M: usize = 120;
    canary.set(&client, 1, 0.0, 100.0).await.expect("set");
    let before = snapshot().await;
    let mut shots = Vec::new();
    for i in 0..M {
        let call = Arc::new(vec![calls[i % calls.len()].clone()]);
        shots.extend(drive(&client, &front, call, 1, 1, Arc::default()).await);
        settled(before.clone(), (i + 1) as f64).await;
    }
    all_answered(&shots, &canary, "mirroring to the random model");
    let (_, random) = settled(before, M as f64).await;
    let agreement = random[0] / (random[0] + random[1]);
    eprintln!(
        "random-weights candidate: {M} calls mirrored: agree {}, disagree {}, error {}, \
         timeout {}, dropped {}: agreement {agreement:.4}",
        random[0], random[1], random[2], random[3], random[4]
    );
    assert!(
        random[0] + random[1] >= 0.9 * M as f64,
        "too few compared: {random:?}"
    );
    assert!(agreement <= 0.2, "{agreement}: {random:?}");

    // What the callers got was always stable's answer.
    assert!(
        shots
            .iter()
            .all(|s| s.model.is_none() || s.model.as_deref() == Some(MODEL)),
        "a shadow's answer reached a caller"
    );
    let text = scrape(&client, &front).await.expect("scrape");
    assert_eq!(
        sum(
            &text,
            "sightline_frontdoor_requests_total",
            &[("revision", "candidate")]
        ),
        0.0,
        "mirrors are no candidate traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_the_weights_move_or_when_the_candidate_dies() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut canary) = Canary::start(&lite0(), &[lite0()]) else {
        return;
    };
    let client = client();
    // Every call a new image, so each one runs the model (no result cache hit): the load
    // lasts long enough for several traffic files to apply.
    const N: usize = 1500;
    let images: Vec<Vec<u8>> = (0..N as u64).map(unique_png).collect();
    let urls = upload_all(&client, &canary.front.url(""), &images[..15])
        .await
        .expect("upload");
    canary.set(&client, 0, 10.0, 20.0).await.expect("set");

    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let client = client.clone();
        let front = canary.front.url("");
        let calls = mix(&images, &urls);
        let done = done.clone();
        tokio::spawn(async move { drive(&client, &front, calls, N, 8, done).await })
    };
    // Rewrite the file every 300 ms; kill the candidate half-way, and keep sending it
    // traffic (the operator would take it out; the front door must not need that).
    let weights = [
        (50.0, 20.0),
        (100.0, 0.0),
        (0.0, 100.0),
        (30.0, 50.0),
        (10.0, 20.0),
    ];
    let mut writes = 0;
    let mut killed = false;
    while !load.is_finished() {
        let (weight, mirror) = weights[writes % weights.len()];
        canary.write(0, weight, mirror).expect("write");
        writes += 1;
        if !killed && done.load(Ordering::SeqCst) >= N / 2 {
            canary.candidates[0].kill9();
            killed = true;
            eprintln!(
                "candidate killed after {} calls",
                done.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let shots = load.await.expect("the load ran");
    assert!(killed, "the load ended before the candidate was killed");
    all_answered(&shots, &canary, "weights moving, candidate killed");

    let front = scrape(&client, &canary.front.url(""))
        .await
        .expect("scrape");
    let count = |labels: &[(&str, &str)]| sum(&front, "sightline_frontdoor_requests_total", labels);
    let candidate_ok = count(&[("revision", "candidate"), ("outcome", "ok")]);
    let candidate_errors = count(&[("revision", "candidate"), ("outcome", "error")]);
    let stable_errors = count(&[("revision", "stable"), ("outcome", "error")]);
    let applied = sum(
        &front,
        "sightline_frontdoor_traffic_reloads_total",
        &[("outcome", "applied")],
    );
    eprintln!(
        "{N} calls, {writes} traffic files written ({applied} applied), candidate killed \
         mid-load: candidate ok {candidate_ok}, candidate errors {candidate_errors} (answered \
         by stable), stable errors {stable_errors}"
    );
    assert!(candidate_ok > 0.0, "the candidate took no traffic");
    assert!(candidate_errors > 0.0, "the dead candidate was never tried");
    assert_eq!(stable_errors, 0.0);
    assert!(applied >= 3.0, "the weights did not move: {applied}");
}
