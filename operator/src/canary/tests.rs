//! The checks and the step machine on hand-computed windows.

use super::figures::buckets;
use super::*;

fn thresholds() -> Thresholds {
    Thresholds {
        max_top1_drop: 0.01,
        min_agreement: 0.95,
        max_error_rate: 0.01,
        max_p99_latency_ratio: 1.5,
        min_live_accuracy: None,
        max_live_accuracy_drop: None,
    }
}

fn scope() -> Scope {
    Scope {
        min_requests: 200,
        mirroring: true,
        evaluating: true,
        stable_serves: true,
    }
}

/// `requests` of which `errors` 5xx; `fast` took ≤ 10 ms, the rest between 20 and 100 ms.
fn served(requests: f64, errors: f64, fast: f64) -> Counters {
    Counters {
        requests,
        errors,
        buckets: buckets([
            (0.01, fast),
            (0.02, fast),
            (0.1, requests),
            (f64::MAX, requests),
        ]),
    }
}

fn good() -> Window {
    Window {
        stable: served(1000.0, 0.0, 995.0),
        candidate: served(200.0, 1.0, 199.0),
        mirrored: Mirrored {
            agree: 97.0,
            disagree: 3.0,
        },
        stable_top1: Some(0.80),
        candidate_top1: Some(0.795),
        feedback: None,
    }
}

fn find<'a>(all: &'a [Check], name: &str) -> &'a Check {
    all.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} in {all:#?}"))
}

fn verdict(w: &Window, scope: &Scope, name: &str) -> String {
    find(&checks(&thresholds(), w, scope), name).status.clone()
}

#[test]
fn a_good_window_passes_every_check() {
    let all = checks(&thresholds(), &good(), &scope());
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["errorRate", "p99LatencyRatio", "agreement", "top1Drop"]
    );
    assert!(all.iter().all(|c| c.status == "Passed"), "{all:#?}");
    assert_eq!(find(&all, "errorRate").measured, Some(0.005));
    assert_eq!(find(&all, "agreement").measured, Some(0.97));
    let drop = find(&all, "top1Drop").measured.expect("drop");
    assert!((drop - 0.005).abs() < 1e-12);
    // Both p99s fall in the first bucket: stable's at rank 990 of its 995 fast ones,
    // the candidate's at 198 of its 199: 10 ms × 990/995 and 10 ms × 198/199, equal.
    let ratio = find(&all, "p99LatencyRatio").measured.expect("ratio");
    assert!((ratio - 1.0).abs() < 1e-12, "{ratio}");
    // Without mirroring or evaluation, those checks are not run.
    let bare = Scope {
        mirroring: false,
        evaluating: false,
        ..scope()
    };
    assert_eq!(checks(&thresholds(), &good(), &bare).len(), 2);
}

#[test]
fn a_clearly_bad_candidate_fails_each_check() {
    // Slow: every candidate request in the 100 ms bucket, the stable p99 in 10 ms.
    let slow = Window {
        stable: served(1000.0, 0.0, 1000.0),
        candidate: served(20.0, 0.0, 0.0),
        ..good()
    };
    assert_eq!(verdict(&slow, &scope(), "p99LatencyRatio"), "Failed");
    // Disagreeing: a random-weights model.
    let random = Window {
        mirrored: Mirrored {
            agree: 1.0,
            disagree: 9.0,
        },
        ..good()
    };
    assert_eq!(verdict(&random, &scope(), "agreement"), "Failed");
    // Erroring, and worse on the labelled set.
    let bad = Window {
        candidate: served(30.0, 6.0, 30.0),
        candidate_top1: Some(0.70),
        ..good()
    };
    let failed: Vec<String> = checks(&thresholds(), &bad, &scope())
        .into_iter()
        .filter(Check::failed)
        .map(|c| c.name)
        .collect();
    assert_eq!(failed, ["errorRate", "top1Drop"]);
}

#[test]
fn one_bad_request_fails_nothing() {
    // One 5xx among the first 100 with maxErrorRate 0.01: a candidate at 1 % shows
    // that 63 % of the time.
    let one_error = Window {
        candidate: served(100.0, 1.0, 100.0),
        ..good()
    };
    assert_eq!(verdict(&one_error, &scope(), "errorRate"), "Pending");
    // One cold request (0.1–1 s) among the first 50: it is the "p99" of the sample, but
    // one request above 1.5 × the stable p99 is no evidence against a 1 % tail.
    let one_cold = Window {
        stable: served(1000.0, 0.0, 1000.0),
        candidate: Counters {
            requests: 50.0,
            errors: 0.0,
            buckets: buckets([(0.01, 49.0), (0.1, 49.0), (1.0, 50.0), (f64::MAX, 50.0)]),
        },
        ..good()
    };
    assert_eq!(one_cold.candidate.slower_than(0.015), 1.0);
    let p99 = find(
        &checks(&thresholds(), &one_cold, &scope()),
        "p99LatencyRatio",
    )
    .clone();
    assert_eq!(p99.status, "Pending", "{p99:?}");
    assert!(p99.measured.expect("ratio") > 1.5, "{p99:?}");
    // One disagreement among the first three mirrored: 67 % agreement, no evidence.
    let one_disagreement = Window {
        mirrored: Mirrored {
            agree: 2.0,
            disagree: 1.0,
        },
        ..good()
    };
    let agreement = find(
        &checks(&thresholds(), &one_disagreement, &scope()),
        "agreement",
    )
    .clone();
    assert_eq!(agreement.status, "Pending");
    assert!(
        agreement.note.expect("note").contains("1 of 3"),
        "the note says what was seen"
    );
    // Two errors in the first two requests are evidence (1 in 10 000 at 1 %).
    let two_of_two = Window {
        candidate: served(2.0, 2.0, 2.0),
        ..good()
    };
    assert_eq!(verdict(&two_of_two, &scope(), "errorRate"), "Failed");
}

#[test]
fn a_check_passes_only_with_its_sample() {
    // No errors, but only 150 of the 200 requests a step needs.
    let short = Window {
        candidate: served(150.0, 0.0, 150.0),
        ..good()
    };
    let all = checks(&thresholds(), &short, &scope());
    assert_eq!(find(&all, "errorRate").status, "Pending");
    assert_eq!(
        find(&all, "errorRate").note.as_deref(),
        Some("150 of 200 requests")
    );
    assert_eq!(find(&all, "p99LatencyRatio").status, "Pending");
    // At exactly the minimum: passed.
    let enough = Window {
        candidate: served(200.0, 2.0, 200.0),
        ..good()
    };
    assert_eq!(verdict(&enough, &scope(), "errorRate"), "Passed");
    assert_eq!(verdict(&enough, &scope(), "p99LatencyRatio"), "Passed");
    // Above the threshold but not beyond chance: pending, not passed, not failed.
    let above = Window {
        candidate: served(1000.0, 13.0, 1000.0),
        ..good()
    };
    assert_eq!(verdict(&above, &scope(), "errorRate"), "Pending");
    let above_agreement = Window {
        mirrored: Mirrored {
            agree: 93.0,
            disagree: 7.0,
        },
        ..good()
    };
    assert_eq!(verdict(&above_agreement, &scope(), "agreement"), "Pending");
    // Exactly at the agreement threshold: passed.
    let at = Window {
        mirrored: Mirrored {
            agree: 95.0,
            disagree: 5.0,
        },
        ..good()
    };
    assert_eq!(verdict(&at, &scope(), "agreement"), "Passed");
    // Exactly at the error-rate threshold: passed.
    let at_rate = Window {
        candidate: served(200.0, 2.0, 200.0),
        ..good()
    };
    assert_eq!(verdict(&at_rate, &scope(), "errorRate"), "Passed");
}

#[test]
fn the_stable_p99_needs_a_hundred_recognitions() {
    let few = Window {
        stable: served(99.0, 0.0, 99.0),
        candidate: served(300.0, 0.0, 0.0),
        ..good()
    };
    let p99 = find(&checks(&thresholds(), &few, &scope()), "p99LatencyRatio").clone();
    assert_eq!(p99.status, "Pending", "{p99:?}");
    assert_eq!(
        p99.note.as_deref(),
        Some("99 of 100 stable recognitions for a stable p99")
    );
    let hundred = Window {
        stable: served(100.0, 0.0, 100.0),
        ..few
    };
    assert_eq!(verdict(&hundred, &scope(), "p99LatencyRatio"), "Failed");
    // A stable revision whose every request took no time has no p99 to divide by.
    let instant = Window {
        stable: Counters {
            requests: 500.0,
            errors: 0.0,
            buckets: buckets([(0.0, 500.0), (f64::MAX, 500.0)]),
        },
        ..good()
    };
    let p99 = find(
        &checks(&thresholds(), &instant, &scope()),
        "p99LatencyRatio",
    )
    .clone();
    assert_eq!(
        (p99.status.as_str(), p99.note.as_deref()),
        (
            "Pending",
            Some("the stable p99 is 0 s: there is no ratio to take")
        )
    );
}

#[test]
fn at_a_step_of_100_percent_stable_figures_come_from_earlier() {
    let last = Scope {
        stable_serves: false,
        ..scope()
    };
    // The reference recorded at the previous step stands in for stable; nothing is
    // mirrored at 100 %: agreement is skipped, not pending.
    let all = checks(&thresholds(), &good(), &last);
    assert_eq!(find(&all, "p99LatencyRatio").status, "Passed");
    let agreement = find(&all, "agreement");
    assert_eq!(agreement.status, "Skipped");
    assert!(agreement.settled());
    // Without a reference, the p99 waits (and says why).
    let none = Window {
        stable: Counters::default(),
        mirrored: Mirrored::default(),
        ..good()
    };
    let p99 = find(&checks(&thresholds(), &none, &last), "p99LatencyRatio").clone();
    assert_eq!(p99.status, "Pending");
    assert_eq!(
        p99.note.as_deref(),
        Some("no stable p99 was recorded at an earlier step")
    );
}

#[test]
fn without_a_stable_evaluation_top1_is_skipped_not_pending() {
    let w = Window {
        stable_top1: None,
        ..good()
    };
    let top1 = find(&checks(&thresholds(), &w, &scope()), "top1Drop").clone();
    assert_eq!(top1.status, "Skipped");
    assert!(top1.note.expect("note").contains("status.evaluation"));
    let w = Window {
        candidate_top1: None,
        ..good()
    };
    assert_eq!(verdict(&w, &scope(), "top1Drop"), "Pending");
    // Exactly at the threshold: passed.
    let w = Window {
        stable_top1: Some(0.5),
        candidate_top1: Some(0.25),
        ..good()
    };
    let t = Thresholds {
        max_top1_drop: 0.25,
        ..thresholds()
    };
    assert_eq!(find(&checks(&t, &w, &scope()), "top1Drop").status, "Passed");
}

#[test]
fn no_data_is_pending() {
    let all = checks(&thresholds(), &Window::default(), &scope());
    let traffic: Vec<&Check> = all.iter().filter(|c| c.name != "top1Drop").collect();
    assert_eq!(traffic.len(), 3);
    assert!(
        traffic
            .iter()
            .all(|c| c.status == "Pending" && c.measured.is_none() && !c.settled()),
        "{all:#?}"
    );
    // Stable served, the candidate nothing yet.
    let w = Window {
        candidate: Counters::default(),
        ..good()
    };
    let p99 = find(&checks(&thresholds(), &w, &scope()), "p99LatencyRatio").clone();
    assert_eq!(
        (p99.status.as_str(), p99.note.as_deref()),
        ("Pending", Some("no candidate requests yet"))
    );
}

#[test]
fn describe_names_the_bound() {
    let all = checks(&thresholds(), &good(), &scope());
    assert_eq!(
        find(&all, "errorRate").describe(),
        "errorRate 0.0050 (at most 0.0100)"
    );
    assert_eq!(
        find(&all, "agreement").describe(),
        "agreement 0.9700 (at least 0.9500)"
    );
    let pending = Check::new("errorRate", verdicts::PENDING, None, 0.01);
    assert_eq!(pending.describe(), "errorRate no data (at most 0.0100)");
}

fn plan() -> Plan {
    Plan {
        steps: vec![10, 50, 100],
        step_seconds: 300,
        min_requests: 200,
        deadline_seconds: 900,
    }
}

fn at(step: usize, elapsed: u64) -> Position {
    Position {
        step,
        elapsed,
        entered: elapsed,
        paused: false,
    }
}

fn passed() -> Vec<Check> {
    vec![Check::new("errorRate", verdicts::PASSED, Some(0.0), 0.01)]
}

#[test]
fn the_step_machine_holds_advances_and_promotes() {
    let hold = |d: Decision| match d {
        Decision::Hold(why) => why,
        other => panic!("expected a hold, got {other:?}"),
    };
    let why = hold(decide(&plan(), &at(0, 100), &passed(), 500.0, &[]));
    assert_eq!(why, "the window has run 100s of 300s");
    let why = hold(decide(&plan(), &at(0, 300), &passed(), 199.0, &[]));
    assert_eq!(why, "199 of 200 candidate requests");
    assert_eq!(
        decide(&plan(), &at(0, 300), &passed(), 200.0, &[]),
        Decision::Advance(1)
    );
    assert_eq!(
        decide(&plan(), &at(1, 300), &passed(), 200.0, &[]),
        Decision::Advance(2)
    );
    assert_eq!(
        decide(&plan(), &at(2, 301), &passed(), 900.0, &[]),
        Decision::Promote
    );
    // A pending check holds and says what it waits for; a skipped one does not.
    let pending =
        vec![Check::new("agreement", verdicts::PENDING, None, 0.95).noted("no mirrored request")];
    let why = hold(decide(&plan(), &at(0, 800), &pending, 900.0, &[]));
    assert_eq!(why, "agreement pending: no mirrored request");
    let unnoted = vec![Check::new("agreement", verdicts::PENDING, None, 0.95)];
    let why = hold(decide(&plan(), &at(0, 800), &unnoted, 900.0, &[]));
    assert_eq!(why, "agreement pending: no data yet");
    let skipped = vec![Check::new("agreement", verdicts::SKIPPED, None, 0.95)];
    assert_eq!(
        decide(&plan(), &at(0, 300), &skipped, 200.0, &[]),
        Decision::Advance(1)
    );
    // An incomplete window never advances.
    let unread = ["stable-0 (HTTP 503)".to_string()];
    let why = hold(decide(&plan(), &at(0, 300), &passed(), 200.0, &unread));
    assert_eq!(why, "incomplete: /metrics unread from stable-0 (HTTP 503)");
    // Paused: holds even when the window is done, and past the deadline.
    let paused = Position {
        paused: true,
        ..at(1, 10_000)
    };
    let why = hold(decide(&plan(), &paused, &passed(), 1e6, &[]));
    assert_eq!(why, "paused");
    let paused_early = Position {
        paused: true,
        ..at(1, 10)
    };
    let why = hold(decide(&plan(), &paused_early, &passed(), 1e6, &[]));
    assert_eq!(why, "paused; the window has run 10s of 300s");
}

#[test]
fn a_failed_check_rolls_back_at_once_even_on_an_incomplete_window() {
    let failed = vec![Check::new("errorRate", verdicts::FAILED, Some(0.2), 0.01)];
    let unread = ["a (timeout)".to_string()];
    assert_eq!(
        decide(&plan(), &at(0, 1), &failed, 1.0, &unread),
        Decision::RollBack {
            reason: outcomes::CHECK_FAILED,
            message: "check failed: errorRate 0.2000 (at most 0.0100)".into()
        }
    );
}

#[test]
fn a_step_that_does_not_conclude_rolls_back_at_its_deadline() {
    let position = Position {
        entered: 899,
        ..at(1, 600)
    };
    assert!(matches!(
        decide(&plan(), &position, &passed(), 120.0, &[]),
        Decision::Hold(_)
    ));
    let position = Position {
        entered: 900,
        ..position
    };
    assert_eq!(
        decide(&plan(), &position, &passed(), 120.0, &[]),
        Decision::RollBack {
            reason: outcomes::DEADLINE_EXCEEDED,
            message: "step 2 of 3 (50%) did not conclude within 15m: 120 of 200 candidate \
                      requests"
                .into()
        }
    );
    // The wait before a window opens has the same deadline.
    let waiting = vec!["front door f-0 reports traffic generation 3, not 4".to_string()];
    assert_eq!(
        wait(&plan(), &position, waiting.clone()),
        Decision::RollBack {
            reason: outcomes::DEADLINE_EXCEEDED,
            message: "step 2 of 3 (50%) did not conclude within 15m: front door f-0 reports \
                      traffic generation 3, not 4"
                .into()
        }
    );
    let early = Position {
        entered: 10,
        ..position
    };
    assert_eq!(
        wait(&plan(), &early, waiting.clone()),
        Decision::Hold(waiting[0].clone())
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("5m"), Some(300));
    assert_eq!(parse_duration("30s"), Some(30));
    assert_eq!(parse_duration("1h"), Some(3600));
    assert_eq!(parse_duration("90"), Some(90));
    assert_eq!(parse_duration("5 minutes"), None);
    assert_eq!(parse_duration(""), None);
    assert_eq!(parse_duration("99999999999999999999h"), None);
    assert_eq!(show_duration(900), "15m");
    assert_eq!(show_duration(7200), "2h");
    assert_eq!(show_duration(90), "90s");
    assert_eq!(show_duration(60), "1m");
    assert_eq!(show_duration(3660), "61m");
    assert_eq!(show_duration(30), "30s");
}

fn live(candidate: Result<(u64, u64), &str>, stable: (u64, u64)) -> Window {
    let feedback = |(samples, correct)| Feedback { samples, correct };
    Window {
        feedback: Some(LiveFeedback {
            candidate: candidate.map(feedback).map_err(str::to_string),
            stable: Ok(feedback(stable)),
            same_digest: false,
            min_samples: 100,
        }),
        ..good()
    }
}

fn live_thresholds() -> Thresholds {
    Thresholds {
        min_live_accuracy: Some(0.9),
        max_live_accuracy_drop: Some(0.02),
        ..thresholds()
    }
}

#[test]
fn live_checks_judge_only_once_the_feedback_suffices() {
    let t = live_thresholds();
    assert!(t.live() && !thresholds().live());
    let judged = |w: &Window| {
        let all = checks(&t, w, &scope());
        (
            find(&all, "liveAccuracy").clone(),
            find(&all, "liveAccuracyDrop").clone(),
        )
    };
    // Not asked for: not run.
    assert_eq!(
        checks(&thresholds(), &live(Ok((500, 0)), (500, 500)), &scope()).len(),
        4
    );

    // Below minFeedbackSamples, even every answer wrong is pending: never failed.
    let (accuracy, drop) = judged(&live(Ok((99, 0)), (1000, 940)));
    assert_eq!(
        (accuracy.status.as_str(), drop.status.as_str()),
        ("Pending", "Pending")
    );
    assert_eq!(
        accuracy.note.as_deref(),
        Some("99 of 100 feedback answers on the candidate's model")
    );
    assert_eq!(accuracy.measured, None);

    // Enough, and as good as stable: both pass.
    let (accuracy, drop) = judged(&live(Ok((200, 190)), (1000, 940)));
    assert_eq!(
        (accuracy.status.as_str(), drop.status.as_str()),
        ("Passed", "Passed")
    );
    assert_eq!(accuracy.measured, Some(0.95));
    assert!((drop.measured.expect("drop") + 0.01).abs() < 1e-12);

    // Half wrong on 200 answers: far beyond chance for a model at 0.9 (or at 0.92).
    let (accuracy, drop) = judged(&live(Ok((200, 100)), (1000, 940)));
    assert_eq!(
        (accuracy.status.as_str(), drop.status.as_str()),
        ("Failed", "Failed")
    );
    assert_eq!(accuracy.describe(), "liveAccuracy 0.5000 (at least 0.9000)");
    assert_eq!(drop.describe(), "liveAccuracyDrop 0.4400 (at most 0.0200)");

    // Just below the threshold: 22 wrong of 200 where 20 are expected — not evidence.
    let (accuracy, drop) = judged(&live(Ok((200, 178)), (1000, 940)));
    assert_eq!(
        (accuracy.status.as_str(), drop.status.as_str()),
        ("Pending", "Pending")
    );
    assert!(
        accuracy
            .note
            .as_deref()
            .is_some_and(|n| n.contains("22 of 200 answers were wrong")),
        "{accuracy:?}"
    );

    // The stable model without enough feedback: the drop waits, the minimum does not.
    let (accuracy, drop) = judged(&live(Ok((200, 190)), (40, 40)));
    assert_eq!(accuracy.status, "Passed");
    assert_eq!(
        (drop.status.as_str(), drop.note.as_deref()),
        (
            "Pending",
            Some("40 of 100 feedback answers on the stable model")
        )
    );

    // The store unread: pending with why.
    let (accuracy, _) = judged(&live(
        Err("pipeline photos: no front door of it is ready"),
        (1000, 940),
    ));
    assert_eq!(
        (accuracy.status.as_str(), accuracy.note.as_deref()),
        (
            "Pending",
            Some("pipeline photos: no front door of it is ready")
        )
    );

    // The same model file: feedback cannot tell the revisions apart.
    let mut same = live(Ok((500, 500)), (500, 500));
    if let Some(f) = same.feedback.as_mut() {
        f.same_digest = true;
    }
    let (accuracy, drop) = judged(&same);
    assert_eq!(
        (accuracy.status.as_str(), drop.status.as_str()),
        ("Skipped", "Skipped")
    );

    // Not read yet (no feedback in the window): pending.
    let (accuracy, _) = judged(&good());
    assert_eq!(accuracy.status, "Pending");
}

#[test]
fn a_pending_live_check_holds_the_step_and_a_failed_one_rolls_back() {
    let t = live_thresholds();
    let waiting = checks(&t, &live(Ok((10, 10)), (1000, 940)), &scope());
    match decide(&plan(), &at(0, 600), &waiting, 1000.0, &[]) {
        Decision::Hold(why) => assert!(
            why.contains("liveAccuracy pending: 10 of 100 feedback answers"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    let failed = checks(&t, &live(Ok((200, 100)), (1000, 940)), &scope());
    assert!(matches!(
        decide(&plan(), &at(0, 600), &failed, 1000.0, &[]),
        Decision::RollBack { .. }
    ));
}
