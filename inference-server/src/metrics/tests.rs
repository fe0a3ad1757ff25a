use super::*;

#[test]
fn exposition_has_prefixed_names_units_and_bounded_labels() {
    let m = Metrics::new("resnet");
    m.http
        .observe("/api/v1/recognize", "POST", 200, Duration::from_millis(3));
    m.inference.batch(4, Duration::from_millis(20));
    m.inference.loaded("abc", "cpu", 1.5);
    let text = m.encode();
    assert!(text.contains("sightline_http_requests_total{route=\"/api/v1/recognize\",method=\"POST\",status_class=\"2xx\"} 1"), "{text}");
    assert!(
        text.contains("sightline_inference_batch_size_bucket{le=\"4.0\",model=\"resnet\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sightline_model_info{model=\"resnet\",sha256=\"abc\",device=\"cpu\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sightline_model_load_duration_seconds{model=\"resnet\"} 1.5"),
        "{text}"
    );
    let measured = vec![
        crate::batch_tuning::Measured {
            rows: 1,
            images_per_second: 200.0,
        },
        crate::batch_tuning::Measured {
            rows: 2,
            images_per_second: 150.5,
        },
    ];
    m.inference
        .batch_tuned(&crate::batch_tuning::Tuning::auto(8, measured));
    let text = m.encode();
    for line in [
        "sightline_inference_max_batch_size{model=\"resnet\"} 1",
        "sightline_inference_batch_throughput{model=\"resnet\",rows=\"1\"} 200.0",
        "sightline_inference_batch_throughput{model=\"resnet\",rows=\"2\"} 150.5",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

/// The operator parses exactly these lines from a front door's `/metrics`.
#[test]
fn front_door_series_are_the_ones_the_operator_reads() {
    let m = Metrics::new("");
    m.front_door.weights("lite0", 20.0, 10.0);
    m.front_door.request("lite0", "candidate", true);
    m.front_door.mirrored("lite0", "agree");
    m.front_door.mirrored("lite0", "agree");
    let text = m.encode();
    for line in [
        "sightline_frontdoor_mirrored_total{model=\"lite0\",outcome=\"agree\"} 2",
        "sightline_frontdoor_mirrored_total{model=\"lite0\",outcome=\"disagree\"} 0",
        "sightline_frontdoor_requests_total{model=\"lite0\",revision=\"candidate\",outcome=\"ok\"} 1",
        "sightline_frontdoor_requests_total{model=\"lite0\",revision=\"stable\",outcome=\"error\"} 0",
        "sightline_frontdoor_candidate_weight{model=\"lite0\"} 20.0",
        "sightline_frontdoor_mirror_percent{model=\"lite0\"} 10.0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    m.front_door.weights("other", 0.0, 0.0);
    let text = m.encode();
    assert!(!text.contains("sightline_frontdoor_candidate_weight{model=\"lite0\"}"));
}
