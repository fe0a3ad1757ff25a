//! A model's sessions as the warm-up chose them: the candidate layouts and batch sizes
//! (layout_tuning.rs) tried under load (load_shape.rs), the best kept, the rest dropped,
//! and a lone session beside narrow instances (batching.rs). What was tried, what won and
//! how long it took is [`LayoutTuning`], served in `/readyz` and the metrics.

use std::time::Instant;

use serde::Serialize;

use crate::batch_tuning::{self, BatchSize, Measured, Tuning};
use crate::decode_trial::{self, DecodeAt, DecodeTrial};
use crate::engine::{Engine, EngineConfig, LoadError, ModelInfo};
use crate::layout_tuning::{self, Fixed, Layout, Trial};
use crate::load_shape::{self, Load, Sessions, Shared, with_layout};
use crate::lone_trial::{self, LoneTrial};

/// How the layout was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutMode {
    /// Tried under load at warm-up.
    Auto,
    /// The flags', or one session as wide as the cores when the trial is off
    /// (`--tune-budget-seconds 0`) or the model runs on a GPU.
    Fixed,
}

/// The layout served, and the trial it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayoutTuning {
    pub mode: LayoutMode,
    /// Instances, threads each, spinning.
    #[serde(flatten)]
    pub layout: Layout,
    /// Intra-op threads of the lone session (taking a batch only when nothing else
    /// runs), when one stands beside the instances.
    pub lone_threads: Option<usize>,
    /// Whether the lone session's threads spin between operators.
    pub lone_spinning: Option<bool>,
    /// The lone session's own trial (lone_trial.rs): each candidate's median for a
    /// request alone; empty when there was one candidate or none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lone_trials: Vec<LoneTrial>,
    /// Where a request's image is decoded (decode_trial.rs).
    pub decode: DecodeAt,
    /// The decode trial's figures: empty when the layout does not try it, or the flag
    /// pins it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decode_trials: Vec<DecodeTrial>,
    /// Every candidate's images per second under load (empty unless `auto`).
    pub trials: Vec<Trial>,
    pub rounds: usize,
    /// How long the trial took, and the budget it had.
    pub seconds: f64,
    pub budget_seconds: f64,
}

impl LayoutTuning {
    /// One line for a terminal: the sessions, the batch size and how they were chosen.
    pub fn summary(&self, max_batch_size: usize) -> String {
        let on_off = |spinning: bool| if spinning { "spinning" } else { "sleeping" };
        let mut text = format!(
            "{} instance(s) × {} thread(s), {}, batches of up to {max_batch_size}",
            self.layout.instances,
            self.layout.threads,
            on_off(self.layout.spinning)
        );
        if self.decode == DecodeAt::Worker {
            text.push_str(", each image decoded by the instance that runs it");
        }
        if let (Some(threads), Some(spinning)) = (self.lone_threads, self.lone_spinning) {
            text.push_str(&format!(
                "; lone session {threads} thread(s), {}",
                on_off(spinning)
            ));
        }
        text.push_str(&match self.mode {
            LayoutMode::Auto => format!(
                " (warm-up trial: {} candidates, {} round(s), {:.1} s)",
                self.trials.len(),
                self.rounds,
                self.seconds
            ),
            LayoutMode::Fixed => " (fixed)".to_string(),
        });
        text
    }

    pub fn fixed(layout: Layout, decode: DecodeAt) -> LayoutTuning {
        LayoutTuning {
            mode: LayoutMode::Fixed,
            layout,
            lone_threads: None,
            lone_spinning: None,
            lone_trials: Vec::new(),
            decode,
            decode_trials: Vec::new(),
            trials: Vec::new(),
            rounds: 0,
            seconds: 0.0,
            budget_seconds: 0.0,
        }
    }
}

/// The sessions to serve with.
pub struct Tuned {
    pub engines: Vec<Shared>,
    pub lone: Option<Shared>,
    pub info: ModelInfo,
    pub row_len: usize,
    pub layout: LayoutTuning,
}

/// What the trial needs beyond the model's own configuration.
pub struct TrialSetup {
    pub cores: usize,
    pub fixed: Fixed,
    /// What the trial feeds, and its budget.
    pub load: Load,
}

/// Tries every candidate layout and batch size under load and keeps the best. `base` is
/// the model's configuration (its threads, spinning and batch size are the trial's to
/// set, except where `trial.fixed` or a fixed batch size pins them).
pub fn tune(
    env: &ort::environment::Environment,
    base: &EngineConfig,
    trial: TrialSetup,
) -> Result<Tuned, LoadError> {
    let started = Instant::now();
    let layouts = layout_tuning::layouts(trial.cores, trial.fixed);
    let first = *layouts
        .first()
        .ok_or_else(|| LoadError::Warmup("no layout to try".into()))?;
    // The first session validates the model and says whether its batch is fixed.
    let probe_size = match base.batch_size {
        BatchSize::Fixed(n) => BatchSize::Fixed(n),
        BatchSize::Auto { .. } => BatchSize::Auto { limit: 1 },
    };
    let probe = Engine::load(env, &with_layout(base, first, probe_size))?;
    let (mut info, row_len) = (probe.info().clone(), probe.row_len());
    let sizes = match (info.batching.mode, base.batch_size) {
        (batch_tuning::Mode::Model, _) => vec![info.batching.max_batch_size],
        (_, BatchSize::Fixed(n)) => vec![n],
        (_, BatchSize::Auto { limit }) => batch_tuning::candidates(limit),
    };
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let mut loaded = Vec::new();
    let mut probe = Some(probe);
    for layout in layouts {
        let mut sessions = Vec::new();
        if layout == first
            && let Some(engine) = probe.take()
        {
            sessions.push(Shared::new(engine));
        }
        let more = layout.instances.saturating_sub(sessions.len());
        if more > 0 {
            let rest = Layout {
                instances: more,
                ..layout
            };
            sessions.extend(Sessions::load(env, base, rest, largest)?.engines);
        }
        loaded.push(Sessions {
            layout,
            engines: sessions,
        });
    }
    let candidates: Vec<(&Sessions, usize)> = loaded
        .iter()
        .flat_map(|s| sizes.iter().map(move |&rows| (s, rows)))
        .collect();
    let might_try_decode = trial.fixed.decode.is_none()
        && loaded
            .iter()
            .any(|s| decode_trial::worth_trying(s.layout, trial.cores));
    let layout_load = Load {
        budget: if might_try_decode {
            trial.load.budget.saturating_sub(decode_trial::reserve())
        } else {
            trial.load.budget
        },
        ..trial.load.clone()
    };
    let (trials, rounds) = load_shape::run(&candidates, row_len, &layout_load)?;
    let chosen = layout_tuning::choose(&trials)
        .ok_or_else(|| LoadError::Warmup("the warm-up trial measured nothing".into()))?;
    let (decode, decode_trials) = match trial.fixed.decode {
        Some(at) => (at, Vec::new()),
        None if decode_trial::worth_trying(chosen.layout, trial.cores) => {
            let sessions = loaded
                .iter()
                .find(|s| s.layout == chosen.layout)
                .ok_or_else(|| LoadError::Warmup("the chosen layout has no sessions".into()))?;
            let figures = decode_trial::run(sessions, chosen.rows, row_len, &trial.load)?;
            (
                decode_trial::choose(&figures).unwrap_or(DecodeAt::Pool),
                figures,
            )
        }
        None => (DecodeAt::Pool, Vec::new()),
    };
    info.batching = batching_of(&info.batching, base.batch_size, &trials, chosen);
    let lone = if layout_tuning::wants_lone(chosen.layout, trial.cores) {
        Some(lone_session(env, base, &loaded, &trial, largest)?)
    } else {
        None
    };
    let engines = loaded
        .iter()
        .position(|s| s.layout == chosen.layout)
        .map(|i| loaded.swap_remove(i).engines)
        .unwrap_or_default();
    let (lone, lone_spinning, lone_trials) = match lone {
        Some((session, spinning, trials)) => (Some(session), Some(spinning), trials),
        None => (None, None, Vec::new()),
    };
    let layout = LayoutTuning {
        mode: LayoutMode::Auto,
        layout: chosen.layout,
        lone_threads: lone.as_ref().map(|_| trial.cores.max(1)),
        lone_spinning,
        lone_trials,
        decode,
        decode_trials,
        trials,
        rounds,
        seconds: started.elapsed().as_secs_f64(),
        budget_seconds: trial.load.budget.as_secs_f64(),
    };
    info.load_seconds += started.elapsed().as_secs_f64();
    Ok(Tuned {
        engines,
        lone,
        info,
        row_len,
        layout,
    })
}

/// The lone session, its spinning, and the lone trial that chose it: a session with a
/// thread per core, spinning or not as [`lone_trial`] measured (unless the flags pin
/// spinning). The trial's own sessions of that layout are reused; missing ones are loaded.
fn lone_session(
    env: &ort::environment::Environment,
    base: &EngineConfig,
    loaded: &[Sessions],
    trial: &TrialSetup,
    largest: usize,
) -> Result<(Shared, bool, Vec<LoneTrial>), LoadError> {
    let spinnings = match trial.fixed.spinning {
        Some(spinning) => vec![spinning],
        None => vec![false, true],
    };
    let mut candidates: Vec<(bool, Shared)> = Vec::new();
    for spinning in spinnings {
        let layout = Layout {
            spinning,
            ..Layout::wide(trial.cores)
        };
        // The trial's sleeping session of this layout serves as it is. A spinning one is
        // loaded anew, to spin between operators and sleep the moment a run ends: a lone
        // request gets the spin's speed without a core kept busy after it, which the
        // instances would pay for when the load comes back.
        let session = match loaded
            .iter()
            .find(|s| s.layout == layout && !spinning)
            .and_then(|s| s.engines.first())
        {
            Some(session) => session.clone(),
            None => {
                let cfg = EngineConfig {
                    stop_spinning_after_run: spinning,
                    ..base.clone()
                };
                Sessions::load(env, &cfg, layout, largest)?
                    .engines
                    .remove(0)
            }
        };
        candidates.push((spinning, session));
    }
    if let [(spinning, session)] = candidates.as_slice() {
        return Ok((session.clone(), *spinning, Vec::new()));
    }
    let trials = lone_trial::run(&candidates, &trial.load)?;
    let chosen = lone_trial::choose(&trials)
        .ok_or_else(|| LoadError::Warmup("the lone trial measured nothing".into()))?;
    let session = candidates
        .into_iter()
        .find(|(spinning, _)| *spinning == chosen.spinning)
        .map(|(_, session)| session)
        .ok_or_else(|| LoadError::Warmup("the lone trial chose no session".into()))?;
    Ok((session, chosen.spinning, trials))
}

/// The batch size's own account: the chosen layout's figure at every size when `auto`
/// tried them; otherwise what the first session decided (a fixed size, or the model's).
fn batching_of(probe: &Tuning, wanted: BatchSize, trials: &[Trial], chosen: Trial) -> Tuning {
    match (probe.mode, wanted) {
        (batch_tuning::Mode::Model, _) | (_, BatchSize::Fixed(_)) => probe.clone(),
        (_, BatchSize::Auto { limit }) => {
            let measured: Vec<Measured> = trials
                .iter()
                .filter(|t| t.layout == chosen.layout)
                .map(|t| Measured {
                    rows: t.rows,
                    images_per_second: t.images_per_second,
                })
                .collect();
            Tuning {
                max_batch_size: chosen.rows,
                ..Tuning::auto(limit, measured)
            }
        }
    }
}

/// The sessions of one layout, no trial: the flags' (or one session as wide as the cores),
/// the batch size as the first session decided it (measured alone for `auto`), images
/// decoded at `decode` (the flag's, or the pool).
pub fn fixed(
    env: &ort::environment::Environment,
    base: &EngineConfig,
    layout: Layout,
    decode: DecodeAt,
) -> Result<Tuned, LoadError> {
    let cfg = with_layout(base, layout, base.batch_size);
    let first = Engine::load(env, &cfg)?;
    let (info, row_len) = (first.info().clone(), first.row_len());
    // More instances: the same model, each its own session, at the size the first chose.
    let same_size = EngineConfig {
        batch_size: BatchSize::Fixed(info.batching.max_batch_size),
        ..cfg
    };
    let mut engines = vec![first];
    for _ in 1..layout.instances.max(1) {
        engines.push(Engine::load(env, &same_size)?);
    }
    Ok(Tuned {
        engines: engines.into_iter().map(Shared::new).collect(),
        lone: None,
        info,
        row_len,
        layout: LayoutTuning::fixed(layout, decode),
    })
}
