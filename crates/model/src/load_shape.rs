//! The warm-up's trial: every candidate layout and batch size (layout_tuning.rs) runs the
//! real batcher over real sessions while decoding threads feed it, as it will serve under
//! load — not the session alone, which hides what decoding takes from the cores and what a
//! thread wake-up costs when the other core is busy.
//!
//! The photo decoded is [`sample_photo`], a 640×480 JPEG made here (a cluster model has no
//! bundled photo). The candidates take turns, round after round, so that a change in the
//! machine's load hits them alike; each one's figure is the mean of its rounds. After each
//! round the slower half of the candidates still running drops out ([`faster_half`]), so
//! the contenders get more rounds — more samples against a machine whose speed moves by a
//! tenth from second to second — in the same budget. A round starts only when it fits in
//! what is left of the budget, as long as the last one took scaled to the candidates left
//! (at least one round, at most [`MAX_ROUNDS`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::batch_tuning::BatchSize;
use crate::batching::{BatchConfig, BatchRunner, Batcher};
use crate::decode_at::DecodeAt;
use crate::engine::{Engine, EngineConfig, LoadError};
use crate::layout_tuning::{Layout, Trial};
use crate::metrics::InferenceMetrics;
use crate::preprocess::{DecodeLimits, preprocess};

/// Rounds, at most (the first over every candidate, then over the faster half of the
/// last round's).
pub const MAX_ROUNDS: usize = 6;
/// Candidates left running in every round once the halving reaches them.
pub const FINALISTS: usize = 2;
/// One candidate's timed window: at least this long, and at least [`MIN_IMAGES`].
pub const MIN_WINDOW: Duration = Duration::from_millis(400);
const MIN_IMAGES: usize = 40;

/// An engine that several batchers take turns with (one at a time: each trial's batcher
/// ends before the next starts, and the served one keeps it).
#[derive(Clone)]
pub struct Shared(pub Arc<Mutex<Engine>>);

impl Shared {
    pub fn new(engine: Engine) -> Shared {
        Shared(Arc::new(Mutex::new(engine)))
    }
}

impl BatchRunner for Shared {
    fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run(input, rows)
    }
}

/// A layout's sessions, loaded once for all its trials.
pub struct Sessions {
    pub layout: Layout,
    pub engines: Vec<Shared>,
}

impl Sessions {
    /// `layout.instances` sessions of `base`'s model with the layout's threads and
    /// spinning, warmed up at batches of `largest` rows.
    pub fn load(
        env: &ort::environment::Environment,
        base: &EngineConfig,
        layout: Layout,
        largest: usize,
    ) -> Result<Sessions, LoadError> {
        let cfg = with_layout(base, layout, BatchSize::Fixed(largest));
        let engines = (0..layout.instances)
            .map(|_| Engine::load(env, &cfg).map(Shared::new))
            .collect::<Result<_, _>>()?;
        Ok(Sessions { layout, engines })
    }
}

/// `base` with `layout`'s threads and spinning, batching up to `batch_size`.
pub fn with_layout(base: &EngineConfig, layout: Layout, batch_size: BatchSize) -> EngineConfig {
    EngineConfig {
        intra_threads: layout.threads,
        intra_op_spinning: layout.spinning,
        batch_size,
        ..base.clone()
    }
}

/// What the trial feeds and how long it may take.
#[derive(Clone)]
pub struct Load {
    pub photo: Vec<u8>,
    pub limits: DecodeLimits,
    pub preprocess: crate::model_config::Preprocess,
    /// Threads decoding and submitting, each one request at a time.
    pub feeders: usize,
    pub max_delay: Duration,
    pub budget: Duration,
}

/// Runs every `(sessions, rows)` pair in turns; one [`Trial`] per pair, and the rounds run.
pub fn run(
    candidates: &[(&Sessions, usize)],
    row_len: usize,
    load: &Load,
) -> Result<(Vec<Trial>, usize), LoadError> {
    let started = Instant::now();
    let mut per_candidate: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    let mut rounds = 0;
    let mut active: Vec<usize> = (0..candidates.len()).collect();
    let mut next_round = Duration::ZERO;
    while rounds == 0 || (rounds < MAX_ROUNDS && started.elapsed() + next_round <= load.budget) {
        let round = Instant::now();
        for &i in &active {
            let (sessions, rows) = candidates[i];
            per_candidate[i].push(images_per_second(
                sessions,
                rows,
                row_len,
                load,
                DecodeAt::Pool,
            )?);
        }
        let took = round.elapsed();
        rounds += 1;
        let ran = active.len();
        active = faster_half(&per_candidate, &active);
        next_round = took.mul_f64(active.len() as f64 / ran.max(1) as f64);
    }
    let trials = candidates
        .iter()
        .zip(per_candidate)
        .map(|((sessions, rows), figures)| Trial {
            layout: sessions.layout,
            rows: *rows,
            images_per_second: mean(&figures),
        })
        .collect();
    Ok((trials, rounds))
}

/// The faster half of the candidates `active` (by the mean of each one's figures so far;
/// at least [`FINALISTS`], all of them when fewer), in their order. A candidate that drops
/// out keeps its figure, and the choice is made over every candidate's figure
/// (`layout_tuning::choose`): one that dropped out wins only if it measured faster than
/// every finalist's mean.
pub fn faster_half(figures: &[Vec<f64>], active: &[usize]) -> Vec<usize> {
    let keep = active.len().div_ceil(2).max(FINALISTS).min(active.len());
    let mut ranked = active.to_vec();
    ranked.sort_by(|&a, &b| mean(&figures[b]).total_cmp(&mean(&figures[a])));
    ranked.truncate(keep);
    ranked.sort_unstable();
    ranked
}

/// A candidate's figure: the mean of its rounds (0 for none).
fn mean(figures: &[f64]) -> f64 {
    figures.iter().sum::<f64>() / figures.len().max(1) as f64
}

/// A submitted request's answer, waited for.
type Wait = Box<dyn FnOnce() -> Result<Vec<f32>, crate::batching::InferError>>;

/// Images per second of one candidate: its batcher over its sessions, fed by
/// `load.feeders` threads that each submit the photo and wait for its answer — decoded
/// first (`pool`), or undecoded for the worker to decode (`worker`).
pub fn images_per_second(
    sessions: &Sessions,
    rows: usize,
    row_len: usize,
    load: &Load,
    decode: DecodeAt,
) -> Result<f64, LoadError> {
    let cfg = BatchConfig {
        max_batch_size: rows,
        max_request_rows: rows,
        max_delay: load.max_delay,
        queue_capacity: load.feeders.max(1) * 2,
        fixed_shape: false,
    };
    let batcher = Batcher::start(
        sessions.engines.clone(),
        None,
        cfg,
        row_len,
        InferenceMetrics::unregistered(),
    )
    .map_err(|e| LoadError::Warmup(format!("cannot start a trial's inference thread: {e}")))?;
    let photo: Arc<[u8]> = load.photo.as_slice().into();
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let figure = std::thread::scope(|scope| {
        for _ in 0..load.feeders.max(1) {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let answer = match decode {
                        DecodeAt::Pool => {
                            let incoming = batcher.incoming();
                            preprocess(&photo, &load.limits, &load.preprocess)
                                .map_err(|e| e.to_string())
                                .and_then(|input| {
                                    batcher
                                        .submit_incoming_blocking(Some(incoming), input, 1)
                                        .map(|wait| Box::new(wait) as Wait)
                                        .map_err(|e| e.to_string())
                                })
                        }
                        DecodeAt::Worker => {
                            let (photo, limits) = (photo.clone(), load.limits);
                            let p = load.preprocess.clone();
                            batcher
                                .submit_encoded_blocking(Box::new(move || {
                                    preprocess(&photo, &limits, &p)
                                }))
                                .map(|wait| Box::new(wait) as Wait)
                                .map_err(|e| e.to_string())
                        }
                    };
                    match answer.and_then(|wait| wait().map_err(|e| e.to_string())) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(message) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        // Untimed: each session's first batches at this size.
        let warm = sessions.engines.len() * rows * 2;
        while done.load(Ordering::SeqCst) < warm && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (t0, n0) = (Instant::now(), done.load(Ordering::SeqCst));
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let (elapsed, n) = (t0.elapsed(), done.load(Ordering::SeqCst) - n0);
            if stop.load(Ordering::SeqCst) || (elapsed >= MIN_WINDOW && n >= MIN_IMAGES) {
                stop.store(true, Ordering::SeqCst);
                break n as f64 / elapsed.as_secs_f64();
            }
        }
    });
    if let Some(message) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(LoadError::Warmup(format!(
            "the warm-up trial failed: {message}"
        )));
    }
    Ok(figure)
}

/// A 640×480 JPEG (quality 85) of smooth colour fields with fine detail over them: about
/// what a phone photo scaled for the web costs to decode, made the same way every time.
pub fn sample_photo() -> Vec<u8> {
    let (w, h) = (640u32, 480u32);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let pixels = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed % 48) as u32;
        let channel = |a: u32, b: u32| ((a * 255 / w + b * 255 / h) / 2 + noise).min(255) as u8;
        image::Rgb([channel(x, y), channel(w - x, y), channel(x, h - y)])
    });
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    // Encoding an in-memory image into a Vec cannot fail for want of space; a failure
    // leaves an empty photo, which the trial reports as a decode error.
    let _ = pixels.write_with_encoder(encoder);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_keeps_the_faster_half_down_to_the_finalists() {
        let figures = |means: &[f64]| -> Vec<Vec<f64>> { means.iter().map(|m| vec![*m]).collect() };
        let twelve = figures(&[
            150.0, 160.0, 140.0, 180.0, 175.0, 120.0, 130.0, 165.0, 110.0, 170.0, 100.0, 90.0,
        ]);
        let all: Vec<usize> = (0..12).collect();
        assert_eq!(faster_half(&twelve, &all), [0, 1, 3, 4, 7, 9]);
        assert_eq!(faster_half(&twelve, &[0, 1, 3, 4, 7, 9]), [3, 4, 9]);
        assert_eq!(faster_half(&twelve, &[3, 4, 9]), [3, 4]);
        assert_eq!(faster_half(&twelve, &[3, 4]), [3, 4], "the finalists stay");
        assert_eq!(faster_half(&twelve, &[5]), [5]);
        // By the mean of every round so far, not the last round alone.
        let noisy = vec![vec![200.0, 140.0], vec![150.0, 160.0], vec![100.0, 200.0]];
        assert_eq!(faster_half(&noisy, &[0, 1, 2]), [0, 1]);
    }

    #[test]
    fn the_sample_photo_is_a_jpeg_of_640_by_480() {
        let photo = sample_photo();
        assert!(
            photo.len() > 20_000,
            "{} bytes: too smooth to cost a decode",
            photo.len()
        );
        let decoded = image::load_from_memory(&photo).expect("decodes");
        assert_eq!((decoded.width(), decoded.height()), (640, 480));
        assert_eq!(photo, sample_photo(), "the same every time");
    }
}
