use super::*;
use sightline_quality::Pair;

fn pair(predicted: &str, truth: &str, count: u64) -> Pair {
    Pair {
        predicted: predicted.into(),
        truth: truth.into(),
        count,
    }
}

fn digest(model: &str, sha: &str, pairs: Vec<Pair>) -> ModelQuality {
    ModelQuality {
        model: model.into(),
        model_sha256: sha.into(),
        quality: Quality::from_pairs(pairs),
    }
}

fn registered() -> (Registry, QualityGauges) {
    let mut registry = Registry::default();
    let gauges = QualityGauges::register(registry.sub_registry_with_prefix("sightline"));
    (registry, gauges)
}

fn text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

#[test]
fn the_top_classes_then_other_pooling_the_rest_by_the_same_formulas() {
    // a: 4 answers involve it, b: 3, c: 2 (c predicted as b once), d: 1, other: 1.
    let q = Quality::from_pairs(vec![
        pair("a", "a", 4),
        pair("b", "b", 2),
        pair("b", "c", 1),
        pair("c", "c", 1),
        pair("d", "d", 1),
        pair("other", "other", 1),
    ]);
    let shown = bounded_classes(&q, 2);
    let names: Vec<&str> = shown.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(names, ["a", "b", "other"]);
    assert_eq!(shown[1].prf, Prf::from_counts(2, 1, 0));
    // Pooled: c (tp 1, fn 1), d (tp 1), the real "other" (tp 1).
    let pooled = &shown[2];
    assert_eq!(pooled.prf, Prf::from_counts(3, 0, 1));
    assert_eq!(pooled.support, 4);
    // Everything fits: no `other` series, unless a class is truly named so.
    let all = bounded_classes(&q, 10);
    assert_eq!(all.len(), 5, "a b c d, and the real other pooled alone");
    assert_eq!(all.last().map(|c| c.class.as_str()), Some(OTHER));
    let few = Quality::from_pairs(vec![pair("x", "y", 1)]);
    assert_eq!(bounded_classes(&few, 10).len(), 2);
    assert_eq!(bounded_classes(&few, 0)[0].class, OTHER);
}

#[test]
fn series_follow_the_reads_and_dropped_label_sets_go() {
    let (registry, gauges) = registered();
    gauges.start(&[Window::Hour]);
    let text0 = text(&registry);
    assert!(
        text0.contains("sightline_quality_refresh_failures_total{window=\"1h\"} 0"),
        "{text0}"
    );
    assert!(
        !text0.contains("sightline_quality_accuracy{"),
        "no series before a read"
    );
    let first = vec![
        digest(
            "m",
            "d1",
            vec![pair("a", "a", 3), pair("b", "a", 1), pair("c", "c", 1)],
        ),
        digest("m", "d2", vec![pair("a", "a", 1)]),
    ];
    gauges.show(Window::Hour, &first, 1_700_000_000_500, 1);
    let t = text(&registry);
    for line in [
        "sightline_quality_accuracy{model=\"m\",sha256=\"d1\",window=\"1h\"} 0.8",
        "sightline_quality_samples{model=\"m\",sha256=\"d1\",window=\"1h\"} 5",
        "sightline_quality_samples{model=\"m\",sha256=\"d2\",window=\"1h\"} 1",
        "sightline_quality_class_recall{model=\"m\",sha256=\"d1\",window=\"1h\",class=\"a\"} 0.75",
        "sightline_quality_class_support{model=\"m\",sha256=\"d1\",window=\"1h\",class=\"other\"} 1",
        "sightline_quality_class_precision{model=\"m\",sha256=\"d1\",window=\"1h\",class=\"other\"} 0.5",
        "sightline_quality_read_timestamp_seconds{window=\"1h\"} 1700000000.5",
    ] {
        assert!(t.contains(line), "no {line:?} in\n{t}");
    }
    // d2 has no answers left in the window; d1's classes change.
    let second = vec![digest("m", "d1", vec![pair("c", "c", 2)])];
    gauges.failed(Window::Hour);
    gauges.show(Window::Hour, &second, 1_700_000_030_000, 1);
    let t = text(&registry);
    assert!(
        !t.contains("sha256=\"d2\""),
        "a digest that left is removed:\n{t}"
    );
    assert!(!t.contains("class=\"a\""), "{t}");
    assert!(!t.contains(",class=\"other\"}"), "{t}");
    assert!(
        t.contains(
            "sightline_quality_class_f1{model=\"m\",sha256=\"d1\",window=\"1h\",class=\"c\"} 1.0"
        ),
        "{t}"
    );
    assert!(
        t.contains("sightline_quality_refresh_failures_total{window=\"1h\"} 1"),
        "{t}"
    );
    // Another window is its own.
    gauges.show(Window::Day, &first, 1_700_000_030_000, 1);
    gauges.expire(Window::Hour);
    let t = text(&registry);
    assert!(!t.contains("window=\"1h\",class"), "{t}");
    assert!(
        !t.contains("sightline_quality_read_timestamp_seconds{window=\"1h\"}"),
        "{t}"
    );
    assert!(
        t.contains("sightline_quality_samples{model=\"m\",sha256=\"d2\",window=\"24h\"} 1"),
        "{t}"
    );
}

#[test]
fn digests_are_bounded_keeping_those_with_most_answers() {
    let (registry, gauges) = registered();
    let many: Vec<ModelQuality> = (0..MAX_DIGESTS + 5)
        .map(|i| digest("m", &format!("d{i:02}"), vec![pair("a", "a", i as u64 + 1)]))
        .collect();
    gauges.show(Window::Week, &many, 0, 10);
    let t = text(&registry);
    let shown = t
        .lines()
        .filter(|l| l.starts_with("sightline_quality_samples{"))
        .count();
    assert_eq!(shown, MAX_DIGESTS);
    assert!(
        !t.contains("sha256=\"d00\""),
        "the fewest answers are left out"
    );
    assert!(t.contains(&format!("sha256=\"d{:02}\"", MAX_DIGESTS + 4)));
}
