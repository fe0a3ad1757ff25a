use super::*;

#[test]
fn policy_flushes_when_full_alone_or_late() {
    let t0 = Instant::now();
    let d = Duration::from_millis(5);
    assert_eq!(decide(8, 8, t0, t0, d, 3), Decision::Flush);
    assert_eq!(
        decide(1, 8, t0, t0, d, 0),
        Decision::Flush,
        "nobody else coming"
    );
    assert_eq!(
        decide(1, 8, t0, t0 + d, d, 3),
        Decision::Flush,
        "deadline reached"
    );
    assert_eq!(decide(1, 8, t0, t0, d, 2), Decision::WaitUntil(t0 + d));
    assert_eq!(decide(1, 8, t0, t0, Duration::ZERO, 2), Decision::Flush);
}

/// Output row i = [sum of input row i, batch size it ran in].
struct SumRunner {
    row_len: usize,
    delay: Duration,
}

impl BatchRunner for SumRunner {
    fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        std::thread::sleep(self.delay);
        Ok(input
            .chunks_exact(self.row_len)
            .flat_map(|r| [r.iter().sum::<f32>(), rows as f32])
            .collect())
    }
}

fn batcher(cfg: BatchConfig, delay: Duration) -> Batcher {
    Batcher::start(
        vec![SumRunner { row_len: 4, delay }],
        None,
        cfg,
        4,
        InferenceMetrics::unregistered(),
    )
    .expect("start")
}

#[tokio::test]
async fn a_fixed_shape_runs_full_batches_and_hands_back_only_real_rows() {
    assert_eq!(run_rows(3, 8, true), 8);
    assert_eq!(run_rows(3, 8, false), 3);
    let b = batcher(
        BatchConfig {
            max_batch_size: 4,
            max_request_rows: 4,
            max_delay: Duration::ZERO,
            queue_capacity: 8,
            fixed_shape: true,
        },
        Duration::ZERO,
    );
    let out = b
        .infer(vec![1.0, 2.0, 3.0, 4.0], 1)
        .await
        .expect("inference");
    assert_eq!(out, vec![10.0, 4.0], "its own row, run in a batch of 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_request_gets_its_own_rows_and_batches_form_under_load() {
    let b = batcher(
        BatchConfig {
            max_batch_size: 4,
            max_request_rows: 4,
            max_delay: Duration::from_millis(20),
            queue_capacity: 64,
            fixed_shape: false,
        },
        Duration::from_millis(10),
    );
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let rows = 1 + (i as usize % 2);
            let input: Vec<f32> = (0..rows * 4).map(|k| (i * 100 + k as u32) as f32).collect();
            let out = b.infer(input.clone(), rows).await.expect("inference");
            (input, rows, out)
        }));
    }
    let mut largest = 0.0f32;
    for t in tasks {
        let (input, rows, out) = t.await.expect("join");
        assert_eq!(out.len(), rows * 2);
        for (r, chunk) in input.chunks_exact(4).enumerate() {
            assert_eq!(
                out[r * 2],
                chunk.iter().sum::<f32>(),
                "request got someone else's row"
            );
            assert!(out[r * 2 + 1] <= 4.0);
            largest = largest.max(out[r * 2 + 1]);
        }
    }
    assert!(largest > 1.0, "32 concurrent requests never shared a batch");
}

#[tokio::test]
async fn a_full_queue_is_rejected_not_buffered() {
    let b = batcher(
        BatchConfig {
            max_batch_size: 1,
            max_request_rows: 1,
            max_delay: Duration::ZERO,
            queue_capacity: 2,
            fixed_shape: false,
        },
        Duration::from_millis(200),
    );
    let mut pending = Vec::new();
    for _ in 0..6 {
        let b = b.clone();
        pending.push(tokio::spawn(async move { b.infer(vec![1.0; 4], 1).await }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut full = 0;
    for p in pending {
        if let Err(InferError::QueueFull { capacity: 2 }) = p.await.expect("join") {
            full += 1;
        }
    }
    assert!(
        full >= 2,
        "expected rejections once 1 running + 2 queued, got {full}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_run_batches_side_by_side() {
    // Each run takes 100 ms; batches of one. Four requests on one instance take 400 ms,
    // on two instances 200 ms.
    let runner = || SumRunner {
        row_len: 4,
        delay: Duration::from_millis(100),
    };
    let cfg = one_row_batches();
    let b = Batcher::start(
        vec![runner(), runner()],
        None,
        cfg,
        4,
        InferenceMetrics::unregistered(),
    )
    .expect("start");
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.infer(vec![i as f32; 4], 1).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.expect("join").expect("inference");
        assert_eq!(
            out,
            vec![4.0 * i as f32, 1.0],
            "request {i} got another's row"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(380),
        "4 runs of 100 ms on two instances took {took:?}: they did not run side by side"
    );
}

#[tokio::test]
async fn a_request_larger_than_the_batch_size_runs_as_a_batch_of_its_own() {
    let b = batcher(
        BatchConfig {
            max_batch_size: 1,
            max_request_rows: 4,
            max_delay: Duration::ZERO,
            queue_capacity: 8,
            fixed_shape: false,
        },
        Duration::ZERO,
    );
    let out = b.infer(vec![1.0; 12], 3).await.expect("3 rows");
    assert_eq!(out, vec![4.0, 3.0, 4.0, 3.0, 4.0, 3.0]);
    let err = b.infer(vec![0.0; 20], 5).await.expect_err("5 rows");
    assert_eq!(err, InferError::TooManyRows { rows: 5, max: 4 });
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let b = batcher(BatchConfig::default(), Duration::ZERO);
    let err = b.infer(vec![0.0; 4 * 9], 9).await.expect_err("too many");
    assert_eq!(err, InferError::TooManyRows { rows: 9, max: 8 });
}

#[test]
fn the_lone_runner_takes_a_batch_only_when_nothing_else_runs() {
    assert!(to_lone(0, true, 0));
    assert!(
        !to_lone(1, true, 0),
        "an instance is running: the cores are not free"
    );
    assert!(!to_lone(0, false, 0), "the lone runner is busy");
    assert!(
        !to_lone(0, true, 1),
        "another request is on its way: not alone"
    );
}

/// Output row i = [sum of input row i, which runner ran it]: 1 for the instances, 2 for
/// the lone runner.
struct Marked {
    mark: f32,
    delay: Duration,
}

impl BatchRunner for Marked {
    fn run(&mut self, input: &[f32], _rows: usize) -> Result<Vec<f32>, String> {
        std::thread::sleep(self.delay);
        Ok(input
            .chunks_exact(4)
            .flat_map(|r| [r.iter().sum::<f32>(), self.mark])
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_request_runs_on_the_lone_runner_and_load_on_the_instances() {
    let runner = |mark| Marked {
        mark,
        delay: Duration::from_millis(100),
    };
    let cfg = one_row_batches();
    let b = Batcher::start(
        vec![runner(1.0), runner(1.0)],
        Some(runner(2.0)),
        cfg,
        4,
        InferenceMetrics::unregistered(),
    )
    .expect("start");
    // One request at a time: each goes to the lone runner.
    for i in 0..3 {
        let out = b.infer(vec![i as f32; 4], 1).await.expect("inference");
        assert_eq!(out, vec![4.0 * i as f32, 2.0], "request {i}");
    }
    assert_eq!(b.lone_batches(), 3);
    // Three at once: not alone, so the instances take them (the lone runner only when it
    // formed before the others were queued), and all three run side by side.
    let started = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.infer(vec![i as f32; 4], 1).await })
        })
        .collect();
    let mut marks = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.expect("join").expect("inference");
        assert_eq!(out[0], 4.0 * i as f32, "request {i} got another's row");
        marks.push(out[1]);
    }
    assert!(
        marks.iter().filter(|&&m| m == 1.0).count() >= 2,
        "the instances took the load: {marks:?}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(280),
        "3 runs of 100 ms on three runners took {took:?}: they did not run side by side"
    );
}

#[test]
fn a_plain_thread_can_wait_for_its_rows() {
    let b = batcher(BatchConfig::default(), Duration::ZERO);
    let wait = b
        .submit_incoming_blocking(None, vec![1.0; 4], 1)
        .expect("queued");
    let out = wait().expect("inference");
    assert_eq!(out, vec![4.0, 1.0]);
}

/// Batches of one request, flushed at once.
fn one_row_batches() -> BatchConfig {
    BatchConfig {
        max_batch_size: 1,
        max_request_rows: 1,
        max_delay: Duration::ZERO,
        queue_capacity: 8,
        fixed_shape: false,
    }
}

#[test]
fn a_request_decoded_alone_reaches_the_lone_runner_even_at_batches_of_one() {
    // Batches of one flush the moment a job is taken: the request's "on its way" mark
    // must already be gone then, or it would count as a second request and the lone
    // runner would never see a lone one.
    let runner = |mark| Marked {
        mark,
        delay: Duration::from_millis(5),
    };
    let b = Batcher::start(
        vec![runner(1.0), runner(1.0)],
        Some(runner(2.0)),
        one_row_batches(),
        4,
        InferenceMetrics::unregistered(),
    )
    .expect("start");
    for i in 0..20 {
        let incoming = b.incoming();
        let wait = b
            .submit_incoming_blocking(Some(incoming), vec![i as f32; 4], 1)
            .expect("queued");
        let out = wait().expect("inference");
        assert_eq!(out, vec![4.0 * i as f32, 2.0], "request {i}");
    }
    assert_eq!(b.lone_batches(), 20);
}

/// Images queued undecoded: each is decoded on the worker that runs it, in the batch it
/// joins; one that fails to decode gets its own error and the rest of its batch runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecoded_images_are_decoded_by_the_worker_and_a_bad_one_fails_alone() {
    let b = batcher(
        BatchConfig {
            max_batch_size: 4,
            max_request_rows: 4,
            max_delay: Duration::from_millis(50),
            queue_capacity: 8,
            fixed_shape: false,
        },
        Duration::from_millis(30),
    );
    // Keep the worker busy so that the next three queue and form one batch.
    let busy = b.submit(vec![0.0; 4], 1).expect("queued");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let decoded_on = Arc::new(Mutex::new(Vec::new()));
    let decode = |value: f32, bad: bool| -> Decode {
        let decoded_on = decoded_on.clone();
        Box::new(move || {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            decoded_on.lock().expect("lock").push(thread);
            if bad {
                Err(PreprocessError::Decode("not an image".into()))
            } else {
                Ok(vec![value; 4])
            }
        })
    };
    let good = b.submit_encoded(decode(1.0, false)).expect("queued");
    let bad = b.submit_encoded(decode(0.0, true)).expect("queued");
    let also = b.submit_encoded(decode(2.0, false)).expect("queued");
    let (busy, good, bad, also) = tokio::join!(busy, good, bad, also);
    assert_eq!(busy.expect("busy"), vec![0.0, 1.0]);
    assert_eq!(
        good.expect("good"),
        vec![4.0, 2.0],
        "its row, in a batch of the two good ones"
    );
    assert_eq!(also.expect("also"), vec![8.0, 2.0]);
    assert_eq!(
        bad,
        Err(InferError::Image(PreprocessError::Decode(
            "not an image".into()
        )))
    );
    let threads = decoded_on.lock().expect("lock").clone();
    assert_eq!(threads.len(), 3);
    assert!(
        threads.iter().all(|t| t == "sightline-batcher-0"),
        "decoded where the model runs: {threads:?}"
    );
}

/// A decode that gives a row of the wrong length, or panics, fails that request only; the
/// worker goes on serving.
#[tokio::test]
async fn a_decode_that_panics_or_gives_the_wrong_length_fails_that_request_only() {
    let b = batcher(
        BatchConfig {
            max_delay: Duration::ZERO,
            ..BatchConfig::default()
        },
        Duration::ZERO,
    );
    let short = b
        .submit_encoded(Box::new(|| Ok(vec![1.0; 3])))
        .expect("queued")
        .await;
    assert!(matches!(short, Err(InferError::Failed(_))), "{short:?}");
    let panics = b
        .submit_encoded(Box::new(|| panic!("a decoder bug")))
        .expect("queued")
        .await;
    assert!(matches!(panics, Err(InferError::Image(_))), "{panics:?}");
    let fine = b
        .submit_encoded(Box::new(|| Ok(vec![1.0; 4])))
        .expect("queued")
        .await;
    assert_eq!(fine, Ok(vec![4.0, 1.0]));
}

/// A caller that went away while its image was queued undecoded costs no decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_caller_went_away_is_not_decoded() {
    let b = batcher(
        BatchConfig {
            max_delay: Duration::ZERO,
            ..BatchConfig::default()
        },
        Duration::from_millis(50),
    );
    let busy = b.submit(vec![0.0; 4], 1).expect("queued");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let decoded = Arc::new(AtomicUsize::new(0));
    let counted = decoded.clone();
    let gone = b
        .submit_encoded(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(vec![1.0; 4])
        }))
        .expect("queued");
    drop(gone);
    busy.await.expect("busy");
    let after = b
        .submit_encoded(Box::new(|| Ok(vec![2.0; 4])))
        .expect("queued")
        .await;
    assert_eq!(after, Ok(vec![8.0, 1.0]), "the worker goes on");
    assert_eq!(decoded.load(Ordering::SeqCst), 0, "decoded for no one");
}
