use serde_json::json;

use super::*;

fn pod(name: &str, index: i32, phase: &str, state: serde_json::Value, created: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "creationTimestamp": created,
            "annotations": {INDEX_ANNOTATION: index.to_string()}},
        "status": {"phase": phase, "containerStatuses": [{"name": CONTAINER, "ready": false,
            "restartCount": 0, "image": "x", "imageID": "", "state": state}]}
    }))
    .expect("pod")
}

fn terminated(code: i32, message: &str) -> serde_json::Value {
    json!({"terminated": {"exitCode": code, "message": message}})
}

fn summary_text(total: u64, recognized: u64, skipped: u64, failed: u64) -> String {
    json!({"shard": 0, "shards": 2, "total": total, "recognized": recognized,
        "skipped": skipped, "failed": failed,
        "errors": [{"image": "bad.png", "error": "not an image"}], "seconds": 2.0,
        "images_per_second": 50.0, "model_sha256": "ab", "complete": true})
    .to_string()
}

#[test]
fn a_finished_shard_is_read_from_its_termination_message() {
    let p = pod(
        "j-0-a",
        0,
        "Succeeded",
        terminated(0, &summary_text(100, 60, 39, 1)),
        "2027-01-01T00:00:00Z",
    );
    let s = summary(&p).expect("summary");
    assert_eq!(
        (s.total, s.recognized, s.skipped, s.failed),
        (100, 60, 39, 1)
    );
    assert!(s.complete);
    assert_eq!(s.errors[0].image, "bad.png");
    // A message that is not a summary (a crash before the summary) is none.
    let crashed = pod(
        "j-0-b",
        0,
        "Failed",
        terminated(1, "panic"),
        "2027-01-01T00:00:00Z",
    );
    assert!(summary(&crashed).is_none());
}

#[test]
fn a_running_shard_is_read_from_its_metrics() {
    let text = "# TYPE sightline_batch_images_total counter\n\
        sightline_batch_images_total{job=\"j\",outcome=\"recognized\"} 30\n\
        sightline_batch_images_total{job=\"j\",outcome=\"skipped\"} 10\n\
        sightline_batch_images_total{job=\"j\",outcome=\"failed\"} 2\n\
        sightline_batch_images_total{job=\"other\",outcome=\"recognized\"} 999\n\
        sightline_batch_shard_images{job=\"j\"} 100\n";
    let c = from_metrics(text, "j", Some(4.0));
    assert_eq!(
        (c.total, c.recognized, c.skipped, c.failed),
        (Some(100), 30, 10, 2)
    );
    assert_eq!(c.rate, Some(8.0));
    assert_eq!(c.done(), 42);
}

#[test]
fn the_succeeded_pod_speaks_for_its_index_over_older_failed_attempts() {
    let failed = pod(
        "j-1-a",
        1,
        "Failed",
        terminated(137, ""),
        "2027-01-01T00:00:00Z",
    );
    let done = pod(
        "j-1-b",
        1,
        "Succeeded",
        terminated(0, &summary_text(50, 20, 30, 0)),
        "2027-01-01T00:01:00Z",
    );
    let running = pod(
        "j-0-c",
        0,
        "Running",
        json!({"running": {"startedAt": "2027-01-01T00:00:00Z"}}),
        "2027-01-01T00:00:00Z",
    );
    let pods = vec![done.clone(), failed, running];
    let by = deciding_pods(&pods);
    assert_eq!(by[&1].name_any(), "j-1-b");
    assert_eq!(by[&0].name_any(), "j-0-c");
    assert!(started_at(by[&0]).is_some());
}

#[test]
fn totals_know_the_size_only_once_every_shard_said_it() {
    let shard = |total, recognized, skipped, rate| Counts {
        total,
        recognized,
        skipped,
        failed: 0,
        rate,
        errors: vec![],
        model_sha256: None,
        evaluation: None,
    };
    let partial = BTreeMap::from([(0, shard(Some(100), 40, 0, Some(10.0)))]);
    let t = totals(2, &partial);
    assert_eq!(t.total, None);
    assert_eq!(t.percent(), None);
    assert_eq!(t.eta_seconds, None);
    let both = BTreeMap::from([
        (0, shard(Some(100), 40, 0, Some(10.0))),
        (1, shard(Some(100), 10, 50, Some(5.0))),
    ]);
    let t = totals(2, &both);
    assert_eq!(t.total, Some(200));
    assert_eq!(t.done(), 100);
    assert_eq!(t.percent().as_deref(), Some("50%"));
    assert_eq!(t.images_per_second, Some(15.0));
    assert_eq!(t.eta_seconds, Some(7));
    assert_eq!(duration_text(3723), "1h2m3s");
    assert_eq!(duration_text(61), "1m1s");
}

#[test]
fn index_lists_are_counted() {
    assert_eq!(count_indexes(Some("0-2,4,7-8")), 6);
    assert_eq!(count_indexes(Some("")), 0);
    assert_eq!(count_indexes(None), 0);
}

#[test]
fn failed_attempts_say_which_shard_and_why() {
    let bad = pod(
        "j-3-a",
        3,
        "Failed",
        terminated(2, "error: the model's digest is 1234, not abcd"),
        "2027-01-01T00:00:00Z",
    );
    let summarised = pod(
        "j-4-a",
        4,
        "Failed",
        terminated(
            2,
            &json!({"total": 0, "complete": false,
                "error": "results.jsonl holds results of model 12, not of this one (ab)"})
            .to_string(),
        ),
        "2027-01-01T00:00:00Z",
    );
    let said = failed_attempts(&[bad, summarised]);
    assert_eq!(said.len(), 2);
    assert!(said[1].ends_with("not of this one (ab)"), "{}", said[1]);
    assert!(
        said[0].starts_with("shard 3 (pod j-3-a, exit code 2): error: the model"),
        "{}",
        said[0]
    );
}

#[test]
fn the_shards_evaluations_add_up_to_the_whole_sets() {
    const T: &str = "2026-12-07T10:00:00Z";
    // As two shards' summaries say them: the images of the CSV split between them.
    let text = |images: u64, evaluated: u64, top1: u64, top5: u64| {
        let mut v: serde_json::Value =
            serde_json::from_str(&summary_text(10, 10, 0, 0)).expect("json");
        v["evaluation"] = json!({"images": images, "evaluated": evaluated, "top1": top1,
            "top5": top5});
        v.to_string()
    };
    let a = summary(&pod(
        "j-0",
        0,
        "Succeeded",
        terminated(0, &text(6, 5, 4, 5)),
        T,
    ))
    .expect("a");
    let b = summary(&pod(
        "j-1",
        1,
        "Succeeded",
        terminated(0, &text(4, 4, 2, 3)),
        T,
    ))
    .expect("b");
    let one = BTreeMap::from([(0, Counts::from(a.clone()))]);
    let e = totals(2, &one).evaluation.expect("one shard's");
    assert_eq!((e.images, e.evaluated, e.shards), (6, 5, 1));
    assert_eq!(e.accuracy, 0.8);
    let both = BTreeMap::from([(0, Counts::from(a)), (1, Counts::from(b))]);
    let e = totals(2, &both).evaluation.expect("both");
    // 6 of the 9 classified first, 8 of 9 in the top five — not the mean of 0.8 and 0.5.
    assert_eq!((e.images, e.evaluated, e.shards), (10, 9, 2));
    assert_eq!(e.accuracy, 6.0 / 9.0);
    assert_eq!(e.top5_accuracy, 8.0 / 9.0);
    // Without labels no shard says one, and there is none.
    let plain = summary(&pod(
        "j-0",
        0,
        "Succeeded",
        terminated(0, &summary_text(1, 1, 0, 0)),
        T,
    ));
    let none = BTreeMap::from([(0, Counts::from(plain.expect("plain")))]);
    assert_eq!(totals(1, &none).evaluation, None);
    assert_eq!(
        evaluation(&[EvalCounts::default()]).map(|e| e.accuracy),
        Some(0.0)
    );
}
