use super::*;

const DIGEST: &str = "8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69";
const OLD: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A recognize pod's `/metrics` as `sightline-server` writes it (prometheus-client's text
/// format): the drift families beside others, another digest's series (an older model
/// still counted by the same process) and another model's.
const METRICS: &str = r#"# HELP sightline_model_drift Jensen-Shannon divergence (bits, 0 to 1) of the answers of the live window from the baseline's, by signal (class: top-1 classes; confidence: top-1 probability); absent until the baseline is complete and the window holds --drift-min-samples answers.
# TYPE sightline_model_drift gauge
sightline_model_drift{model="efficientnet-lite0",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",signal="class"} 0.3125
sightline_model_drift{model="efficientnet-lite0",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",signal="confidence"} 0.041
sightline_model_drift{model="efficientnet-lite0",sha256="0000000000000000000000000000000000000000000000000000000000000000",signal="class"} 0.9
sightline_model_drift{model="other",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",signal="class"} 0.8
# HELP sightline_model_drift_samples Answers in the drift baseline (complete at --drift-baseline-answers) and in the live window (--drift-window-seconds).
# TYPE sightline_model_drift_samples gauge
sightline_model_drift_samples{model="efficientnet-lite0",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",window="baseline"} 1000
sightline_model_drift_samples{model="efficientnet-lite0",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",window="live"} 640
sightline_http_requests_total{route="/api/v1/recognize",method="POST",status_class="2xx"} 1640
process_start_time_seconds 1800000000
"#;

/// The same pod before its baseline is complete: samples, no divergence.
const FILLING: &str = r#"# TYPE sightline_model_drift gauge
# TYPE sightline_model_drift_samples gauge
sightline_model_drift_samples{model="efficientnet-lite0",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",window="baseline"} 420
sightline_model_drift_samples{model="efficientnet-lite0",sha256="8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69",window="live"} 420
"#;

fn pod(name: &str, text: &str) -> PodReading {
    PodReading {
        pod: name.into(),
        read: Ok(parse_drift(text, "efficientnet-lite0", DIGEST)),
    }
}

#[test]
fn drift_is_read_for_the_model_and_digest_only() {
    let d = parse_drift(METRICS, "efficientnet-lite0", DIGEST);
    assert_eq!(
        d,
        PodDrift {
            class: Some(0.3125),
            confidence: Some(0.041),
            baseline: Some(1000),
            live: Some(640),
        }
    );
    let old = parse_drift(METRICS, "efficientnet-lite0", OLD);
    assert_eq!(
        (old.class, old.confidence, old.live),
        (Some(0.9), None, None)
    );
    assert_eq!(parse_drift(METRICS, "nobody", DIGEST), PodDrift::default());
    let filling = parse_drift(FILLING, "efficientnet-lite0", DIGEST);
    assert_eq!((filling.class, filling.live), (None, Some(420)));
    // A figure no divergence can be is none (the absent gauge is unknown, never 0).
    let wrong = METRICS
        .replace("} 0.3125", "} NaN")
        .replace("} 0.041", "} 1.5");
    let d = parse_drift(&wrong, "efficientnet-lite0", DIGEST);
    assert_eq!((d.class, d.confidence), (None, None));
    // Exponent notation, as a float formatter may write a small value.
    let tiny = METRICS.replace("} 0.041", "} 4.1e-5");
    assert_eq!(
        parse_drift(&tiny, "efficientnet-lite0", DIGEST).confidence,
        Some(4.1e-5)
    );
}

#[test]
fn pods_combine_to_the_largest_drift_and_the_smallest_sample() {
    let calm = METRICS
        .replace("} 0.3125", "} 0.05")
        .replace("} 0.041", "} 0.09")
        .replace("} 640", "} 900");
    let pods = [
        pod("a", METRICS),
        pod("b", &calm),
        pod("c", FILLING),
        PodReading {
            pod: "d".into(),
            read: Err("HTTP 503".into()),
        },
    ];
    let d = combine(&pods);
    assert_eq!(
        d.figures,
        Some(DriftFigures {
            class: Some(0.3125),
            confidence: Some(0.09),
        })
    );
    assert_eq!((d.samples, d.used), (Some(640), 2));
    assert_eq!(combine(&[pod("c", FILLING)]), Drift::default());
    assert_eq!(combine(&[]), Drift::default());
}

#[test]
fn drifting_is_true_above_the_threshold_false_within_unknown_otherwise() {
    let above = drifting(&[pod("a", METRICS), pod("c", FILLING)], 0.2);
    assert_eq!(
        (above.status, above.unknown, above.reason.as_str()),
        (true, false, "DriftAboveThreshold")
    );
    assert!(
        above
            .message
            .starts_with("class 0.3125 above maxDrift 0.2000"),
        "{}",
        above.message
    );
    assert!(
        above.message.contains("640 live answers") && above.message.contains("1 of 2 serving pods"),
        "{}",
        above.message
    );
    // The same figures under a higher threshold: within it.
    let within = drifting(&[pod("a", METRICS)], 0.4);
    assert_eq!(
        (within.status, within.unknown, within.reason.as_str()),
        (false, false, "DriftWithinThreshold")
    );
    assert!(
        within
            .message
            .contains("class 0.3125, confidence 0.0410 within maxDrift 0.4000"),
        "{}",
        within.message
    );
    // Exactly at the threshold is not above it.
    assert!(!drifting(&[pod("a", METRICS)], 0.3125).status);

    let filling = drifting(&[pod("c", FILLING)], 0.2);
    assert_eq!(
        (filling.unknown, filling.reason.as_str()),
        (true, "DriftUnknown")
    );
    assert!(
        filling.message.contains("c: baseline 420, live window 420"),
        "{}",
        filling.message
    );
    let unread = drifting(
        &[PodReading {
            pod: "a".into(),
            read: Err("HTTP 503: no endpoints".into()),
        }],
        0.2,
    );
    assert!(unread.unknown);
    assert!(
        unread
            .message
            .contains("no serving pod answered /metrics: a (HTTP 503: no endpoints)"),
        "{}",
        unread.message
    );
    let nothing = drifting(&[], 0.2);
    assert!(nothing.unknown && nothing.message.contains("no pod serves"));
    let silent = drifting(&[pod("a", "process_start_time_seconds 1\n")], 0.2);
    assert!(
        silent.unknown && silent.message.contains("without drift tracking"),
        "{}",
        silent.message
    );
    // One signal alone within the threshold tells nothing of the other.
    let half = METRICS.replace("signal=\"confidence\"", "signal=\"other\"");
    let half = drifting(&[pod("a", &half)], 0.4);
    assert!(half.unknown, "{half:?}");
    // One signal alone above it is drift.
    assert!(drifting(&[pod("a", &METRICS.replace("} 0.041", "} 0.5"))], 0.4).status);
}

/// A store's `GET /api/v1/quality` answer, in the format it writes (the store's
/// `DigestQuality`: the digest beside the seed's figures).
fn report(entries: &[(&str, u64, u64)]) -> String {
    let digests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, samples, correct)| {
            serde_json::json!({"model_sha256": digest, "samples": samples,
                "correct": correct, "accuracy": *correct as f64 / *samples as f64,
                "macro": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
                "weighted": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
                "per_class": [], "confusion": []})
        })
        .collect();
    serde_json::json!({"model": "efficientnet-lite0", "window": "24h",
        "since": "2027-01-14T08:00:00.000Z", "until": "2027-01-15T08:00:00.000Z",
        "digests": digests})
    .to_string()
}

#[test]
fn live_accuracy_is_read_for_the_digest() {
    let body = report(&[(OLD, 10, 9), (DIGEST, 400, 360)]);
    let f = parse_quality(&body, DIGEST).expect("a report");
    assert_eq!(
        f,
        Feedback {
            samples: 400,
            correct: 360
        }
    );
    assert_eq!(f.accuracy(), Some(0.9));
    let none = parse_quality(&report(&[(OLD, 10, 9)]), DIGEST).expect("a report");
    assert_eq!((none.samples, none.accuracy()), (0, None));
    let mut two = f;
    two.add(Feedback {
        samples: 100,
        correct: 40,
    });
    assert_eq!(two.accuracy(), Some(0.8));
    let refused =
        r#"{"error":"an API key is required: send Authorization: Bearer <key> or X-API-Key"}"#;
    assert!(
        parse_quality(refused, DIGEST)
            .expect_err("refused")
            .contains("an API key is required")
    );
    assert!(parse_quality("<html>", DIGEST).is_err());
    assert!(parse_quality(r#"{"digests": 3}"#, DIGEST).is_err());
    let impossible = report(&[(DIGEST, 10, 11)]);
    assert!(parse_quality(&impossible, DIGEST).is_err());
}

#[test]
fn the_operator_presents_its_own_key_only() {
    let file =
        "# keys\nalice:alice-secret-1\n\n  sightline-operator : op-secret-42  \nbare-key-000\n";
    assert_eq!(operator_key(file).as_deref(), Some("op-secret-42"));
    assert_eq!(operator_key("alice:alice-secret-1\nbare-key-000\n"), None);
    assert_eq!(operator_key("# sightline-operator:commented-out\n"), None);
}

#[test]
fn a_reading_keeps_its_time_while_it_finds_the_same() {
    let first = QualityStatus {
        window: "24h".into(),
        digest: Some(DIGEST.into()),
        accuracy: Some(0.9),
        samples: Some(400),
        accuracy_read_at: Some("2027-01-15T08:00:00Z".into()),
        accuracy_note: None,
        drift: Some(DriftFigures {
            class: Some(0.1),
            confidence: Some(0.05),
        }),
        drift_samples: Some(640),
        drift_read_at: Some("2027-01-15T08:00:00Z".into()),
    };
    let later = |f: &dyn Fn(&mut QualityStatus)| {
        let mut q = first.clone();
        q.accuracy_read_at = Some("2027-01-15T08:05:00Z".into());
        q.drift_read_at = Some("2027-01-15T08:05:00Z".into());
        f(&mut q);
        q
    };
    assert_eq!(settle(Some(&first), later(&|_| {})), first);
    let moved = settle(Some(&first), later(&|q| q.samples = Some(401)));
    assert_eq!(
        moved.accuracy_read_at.as_deref(),
        Some("2027-01-15T08:05:00Z")
    );
    assert_eq!(moved.drift_read_at, first.drift_read_at);
    let drifted = settle(Some(&first), later(&|q| q.drift_samples = Some(700)));
    assert_eq!(drifted.accuracy_read_at, first.accuracy_read_at);
    assert_eq!(
        drifted.drift_read_at.as_deref(),
        Some("2027-01-15T08:05:00Z")
    );
    let new_model = settle(Some(&first), later(&|q| q.digest = Some(OLD.into())));
    assert_eq!(
        new_model.accuracy_read_at.as_deref(),
        Some("2027-01-15T08:05:00Z")
    );
    assert_eq!(settle(None, first.clone()), first);
}

/// The drift families of a real `sightline-server recognize` (main at 8ccf6e4, the test
/// classifier named `efficientnet-lite0`, a 60-answer baseline of red, green and blue
/// images, then 150 grey ones), lines 206-217 of its `/metrics`, verbatim.
const REAL: &str = r#"# TYPE sightline_cache_bytes gauge
sightline_cache_bytes{model="efficientnet-lite0"} 26320
# HELP sightline_model_drift Jensen-Shannon divergence (bits, 0 to 1) of the answers of the live window from the baseline's, by signal (class: top-1 classes; confidence: top-1 probability); absent until the baseline is complete and the window holds --drift-min-samples answers.
# TYPE sightline_model_drift gauge
sightline_model_drift{model="efficientnet-lite0",sha256="74fbfa4da713cbc89ae34fae5533ca24b47a2a6b838641e3c684e580a82d6bdd",signal="class"} 0.034283848959633909
sightline_model_drift{model="efficientnet-lite0",sha256="74fbfa4da713cbc89ae34fae5533ca24b47a2a6b838641e3c684e580a82d6bdd",signal="confidence"} 0.18254445618152047
# HELP sightline_model_drift_samples Answers in the drift baseline (complete at --drift-baseline-answers) and in the live window (--drift-window-seconds).
# TYPE sightline_model_drift_samples gauge
sightline_model_drift_samples{model="efficientnet-lite0",sha256="74fbfa4da713cbc89ae34fae5533ca24b47a2a6b838641e3c684e580a82d6bdd",window="live"} 368
sightline_model_drift_samples{model="efficientnet-lite0",sha256="74fbfa4da713cbc89ae34fae5533ca24b47a2a6b838641e3c684e580a82d6bdd",window="baseline"} 60
# HELP sightline_images_stored_total Images accepted by the upload role, by outcome (new, existing).
# TYPE sightline_images_stored_total counter
"#;

#[test]
fn a_real_servers_drift_is_read() {
    let digest = "74fbfa4da713cbc89ae34fae5533ca24b47a2a6b838641e3c684e580a82d6bdd";
    let d = parse_drift(REAL, "efficientnet-lite0", digest);
    assert_eq!(
        d,
        PodDrift {
            class: Some(0.034283848959633909),
            confidence: Some(0.18254445618152047),
            baseline: Some(60),
            live: Some(368),
        }
    );
    let pods = [PodReading {
        pod: "p".into(),
        read: Ok(d),
    }];
    let grey = drifting(&pods, 0.1);
    assert_eq!(grey.reason, "DriftAboveThreshold");
    assert!(
        grey.message
            .starts_with("confidence 0.1825 above maxDrift 0.1000"),
        "{}",
        grey.message
    );
    assert_eq!(drifting(&pods, 0.2).reason, "DriftWithinThreshold");
}
