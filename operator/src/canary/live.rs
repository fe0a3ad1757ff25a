//! The checks on live feedback (docs/rollouts.md, "Live accuracy"): the candidate's model
//! judged on what the users said its answers were — `liveAccuracy` against
//! `minLiveAccuracy`, `liveAccuracyDrop` against `maxLiveAccuracyDrop` — by the sample rule
//! of the other checks, and only once the candidate has `minFeedbackSamples` answers:
//! below that a check is pending, never failed (nor passed).

use super::{Check, Sample, Thresholds, Window, verdicts};

/// Feedback counted for one model digest: answers scored and those that were right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feedback {
    pub samples: u64,
    pub correct: u64,
}

impl Feedback {
    /// Right ÷ scored (the seed's accuracy); `None` without feedback.
    pub fn accuracy(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.correct as f64 / self.samples as f64)
    }

    /// Adds another store's feedback on the same digest.
    pub fn add(&mut self, other: Feedback) {
        self.samples += other.samples;
        self.correct += other.correct;
    }

    fn wrong(&self) -> u64 {
        self.samples - self.correct.min(self.samples)
    }
}

/// What the stores said of the two revisions' models (counted per digest, over
/// `spec.monitoring.qualityWindow`), or why it is not known.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveFeedback {
    pub candidate: Result<Feedback, String>,
    pub stable: Result<Feedback, String>,
    /// The candidate serves the stable revision's model file: feedback, counted per digest,
    /// cannot tell the two apart.
    pub same_digest: bool,
    /// `spec.monitoring.minFeedbackSamples`.
    pub min_samples: u64,
}

/// The live checks `t` asks for, over `w`'s feedback.
pub(super) fn checks(t: &Thresholds, w: &Window) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(min) = t.min_live_accuracy {
        out.push(live_accuracy(min, w.feedback.as_ref()));
    }
    if let Some(max) = t.max_live_accuracy_drop {
        out.push(live_accuracy_drop(max, w.feedback.as_ref()));
    }
    out
}

/// The candidate's feedback once it suffices; the check as it stands otherwise.
fn sufficient<'a>(
    check: &Check,
    feedback: Option<&'a LiveFeedback>,
) -> Result<(&'a LiveFeedback, Feedback), Check> {
    let pending = |note: String| {
        Check::new(&check.name, verdicts::PENDING, None, check.threshold).noted(note)
    };
    let Some(live) = feedback else {
        return Err(pending("the stores have not been read yet".into()));
    };
    if live.same_digest {
        return Err(
            Check::new(&check.name, verdicts::SKIPPED, None, check.threshold).noted(
                "the candidate serves the stable revision's model file: feedback, counted per \
             model digest, cannot tell the two apart",
            ),
        );
    }
    let candidate = live.candidate.as_ref().map_err(|e| pending(e.clone()))?;
    if candidate.samples < live.min_samples {
        return Err(Check {
            measured: None,
            ..pending(format!(
                "{} of {} feedback answers on the candidate's model",
                candidate.samples, live.min_samples
            ))
        });
    }
    Ok((live, *candidate))
}

fn live_accuracy(min: f64, feedback: Option<&LiveFeedback>) -> Check {
    let check = Check::new("liveAccuracy", verdicts::PENDING, None, min);
    let (_, candidate) = match sufficient(&check, feedback) {
        Ok(found) => found,
        Err(waiting) => return waiting,
    };
    let accuracy = candidate.accuracy().unwrap_or(0.0);
    let (k, n) = (candidate.wrong(), candidate.samples);
    let sample = Sample {
        bad: k,
        n,
        rate: 1.0 - min,
        meets: accuracy >= min,
        min: 0,
    };
    Check {
        measured: Some(accuracy),
        ..check
    }
    .by_sample(sample, || {
        format!("{k} of {n} answers were wrong: below the threshold, not yet beyond chance")
    })
}

fn live_accuracy_drop(max: f64, feedback: Option<&LiveFeedback>) -> Check {
    let check = Check::new("liveAccuracyDrop", verdicts::PENDING, None, max);
    let (live, candidate) = match sufficient(&check, feedback) {
        Ok(found) => found,
        Err(waiting) => return waiting,
    };
    let stable = match &live.stable {
        Ok(s) if s.samples >= live.min_samples => *s,
        Ok(s) => {
            return check.noted(format!(
                "{} of {} feedback answers on the stable model",
                s.samples, live.min_samples
            ));
        }
        Err(e) => return check.noted(e.clone()),
    };
    let (c, s) = (
        candidate.accuracy().unwrap_or(0.0),
        stable.accuracy().unwrap_or(0.0),
    );
    let drop = s - c;
    // The stable figure is taken as it is: the candidate is tested against the accuracy
    // `s - max`, as `liveAccuracy` against its minimum.
    let floor = (s - max).clamp(0.0, 1.0);
    let (k, n) = (candidate.wrong(), candidate.samples);
    let sample = Sample {
        bad: k,
        n,
        rate: 1.0 - floor,
        meets: drop <= max,
        min: 0,
    };
    Check {
        measured: Some(drop),
        ..check
    }
    .by_sample(sample, || {
        format!(
            "{k} of {n} answers were wrong (stable {s:.4} on {} answers): beyond the \
             drop allowed, not yet beyond chance",
            stable.samples
        )
    })
}
