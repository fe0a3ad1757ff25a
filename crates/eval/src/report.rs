//! The evaluation report: built from the labelled set and the model's ranked answers;
//! serialised as JSON (`accuracy`, `top5_accuracy`, `macro`, `weighted`, `per_class`,
//! `confusion`, …) and printed as a table.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::metrics::{
    ClassMetrics, Confusion, Prf, accuracy, in_top_k, macro_average, weighted_average,
};

/// One image's answer: the class indices ranked best first (at least the top 5).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub path: PathBuf,
    pub truth: usize,
    /// `Ok(ranked)` or why the image could not be classified.
    pub ranked: Result<Vec<usize>, String>,
}

/// The confusion matrix over the classes in the truth or the predictions (`labels[i]` names
/// row and column `i`; rows are the truth).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfusionReport {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

/// An image the model could not classify (unreadable, not an image, too large…); it is
/// left out of every figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

/// One image's prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionRow {
    pub path: String,
    pub truth: String,
    pub top1: String,
    pub correct: bool,
}

/// An image whose top-1 differs between the model and the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Changed {
    pub path: String,
    pub truth: String,
    pub model: String,
    pub baseline: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub model: String,
    pub dataset: String,
    /// Images in the set.
    pub images: u64,
    /// Images classified (the denominator of every figure).
    pub evaluated: u64,
    pub accuracy: f64,
    pub top5_accuracy: f64,
    #[serde(rename = "macro")]
    pub macro_avg: Prf,
    pub weighted: Prf,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: ConfusionReport,
    pub failed: Vec<Failure>,
    pub predictions: Vec<PredictionRow>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// With `--baseline`: the baseline's report and the images whose top-1 changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Box<Report>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<Changed>>,
}

fn label(labels: &[String], i: usize) -> String {
    labels
        .get(i)
        .cloned()
        .unwrap_or_else(|| format!("class_{i}"))
}

impl Report {
    /// Scores `answers` (one per image of the set).
    pub fn build(
        model: &str,
        dataset: &str,
        labels: &[String],
        answers: &[Answer],
        seconds: f64,
    ) -> Report {
        let mut confusion = Confusion::new(labels.len());
        let mut top5 = 0u64;
        let mut failed = Vec::new();
        let mut predictions = Vec::new();
        for a in answers {
            match &a.ranked {
                Ok(ranked) => {
                    let top1 = ranked.first().copied().unwrap_or(usize::MAX);
                    confusion.add(a.truth, top1);
                    if in_top_k(ranked, a.truth, 5) {
                        top5 += 1;
                    }
                    predictions.push(PredictionRow {
                        path: a.path.display().to_string(),
                        truth: label(labels, a.truth),
                        top1: label(labels, top1),
                        correct: top1 == a.truth,
                    });
                }
                Err(e) => failed.push(Failure {
                    path: a.path.display().to_string(),
                    error: e.clone(),
                }),
            }
        }
        let evaluated = confusion.total();
        let per_class = confusion.per_class(labels);
        let shown: Vec<usize> = (0..confusion.classes())
            .filter(|&c| {
                let (tp, fp, fn_) = confusion.counts_for(c);
                tp + fp + fn_ > 0
            })
            .collect();
        let matrix = shown
            .iter()
            .map(|&t| shown.iter().map(|&p| confusion.get(t, p)).collect())
            .collect();
        Report {
            model: model.to_string(),
            dataset: dataset.to_string(),
            images: answers.len() as u64,
            evaluated,
            accuracy: confusion.accuracy(),
            top5_accuracy: accuracy(top5, evaluated),
            macro_avg: macro_average(&per_class),
            weighted: weighted_average(&per_class),
            per_class,
            confusion: ConfusionReport {
                labels: shown.iter().map(|&c| label(labels, c)).collect(),
                matrix,
            },
            failed,
            predictions,
            seconds,
            images_per_second: if seconds > 0.0 {
                answers.len() as f64 / seconds
            } else {
                0.0
            },
            baseline: None,
            changed: None,
        }
    }

    /// Attaches `baseline` (the same set through another model) and lists the images whose
    /// top-1 changed.
    pub fn with_baseline(mut self, baseline: Report) -> Report {
        let changed = self
            .predictions
            .iter()
            .filter_map(|p| {
                let b = baseline.predictions.iter().find(|b| b.path == p.path)?;
                (b.top1 != p.top1).then(|| Changed {
                    path: p.path.clone(),
                    truth: p.truth.clone(),
                    model: p.top1.clone(),
                    baseline: b.top1.clone(),
                })
            })
            .collect();
        self.changed = Some(changed);
        self.baseline = Some(Box::new(baseline));
        self
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "model    {}", self.model);
        let _ = writeln!(
            out,
            "dataset  {} ({} images, {} evaluated, {} failed, {:.1} img/s)",
            self.dataset,
            self.images,
            self.evaluated,
            self.failed.len(),
            self.images_per_second
        );
        let _ = writeln!(out);
        let width = self
            .per_class
            .iter()
            .map(|c| c.label.chars().count())
            .chain([16])
            .max()
            .unwrap_or(16)
            .min(40);
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}",
            "class", "precision", "recall", "f1", "support"
        );
        for c in &self.per_class {
            let name: String = c.label.chars().take(width).collect();
            let _ = writeln!(
                out,
                "{name:<width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7}",
                c.precision, c.recall, c.f1, c.support
            );
        }
        let _ = writeln!(out);
        for (name, avg) in [
            ("macro avg", self.macro_avg),
            ("weighted avg", self.weighted),
        ] {
            let _ = writeln!(
                out,
                "{name:<width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7}",
                avg.precision, avg.recall, avg.f1, self.evaluated
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "accuracy (top-1)  {:.4}", self.accuracy);
        let _ = writeln!(out, "top-5 accuracy    {:.4}", self.top5_accuracy);
        for f in &self.failed {
            let _ = writeln!(out, "failed: {}: {}", f.path, f.error);
        }
        if let (Some(b), Some(changed)) = (&self.baseline, &self.changed) {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<16}  {:>12}  {:>12}  {:>9}",
                "", "model", "baseline", "change"
            );
            let rows = [
                ("accuracy", self.accuracy, b.accuracy),
                ("top-5 accuracy", self.top5_accuracy, b.top5_accuracy),
                (
                    "macro precision",
                    self.macro_avg.precision,
                    b.macro_avg.precision,
                ),
                ("macro recall", self.macro_avg.recall, b.macro_avg.recall),
                ("macro f1", self.macro_avg.f1, b.macro_avg.f1),
                ("weighted f1", self.weighted.f1, b.weighted.f1),
            ];
            for (name, m, base) in rows {
                let _ = writeln!(
                    out,
                    "{name:<16}  {m:>12.4}  {base:>12.4}  {:>+9.4}",
                    m - base
                );
            }
            let _ = writeln!(out, "(model: {}, baseline: {})", self.model, b.model);
            let _ = writeln!(out);
            let _ = writeln!(out, "top-1 changed on {} image(s):", changed.len());
            for c in changed {
                let _ = writeln!(
                    out,
                    "  {}  truth {:?}: baseline {:?} → model {:?}",
                    c.path, c.truth, c.baseline, c.model
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["red", "green", "blue", "unused"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn answer(path: &str, truth: usize, ranked: &[usize]) -> Answer {
        Answer {
            path: PathBuf::from(path),
            truth,
            ranked: Ok(ranked.to_vec()),
        }
    }

    #[test]
    fn the_report_has_the_issue_keys_and_hand_computed_figures() {
        let answers = vec![
            answer("a", 0, &[0, 1, 2]),
            answer("b", 0, &[1, 0, 2]),
            answer("c", 1, &[1, 0, 2]),
            answer("d", 2, &[0, 1, 3]),
            Answer {
                path: "e".into(),
                truth: 2,
                ranked: Err("not an image".into()),
            },
        ];
        let r = Report::build("m", "d", &labels(), &answers, 2.0);
        assert_eq!(r.images, 5);
        assert_eq!(r.evaluated, 4);
        assert_eq!(r.accuracy, 0.5);
        assert_eq!(r.top5_accuracy, 0.75);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.confusion.labels, vec!["red", "green", "blue"]);
        assert_eq!(
            r.confusion.matrix,
            vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]
        );
        // red: tp 1 fp 1 fn 1 → .5/.5/.5; green: tp 1 fp 1 fn 0 → .5/1/(2/3); blue: 0.
        assert_eq!(r.per_class[0].f1, 0.5);
        assert!((r.macro_avg.f1 - (0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let json = serde_json::to_value(&r).expect("json");
        for key in [
            "accuracy",
            "top5_accuracy",
            "macro",
            "weighted",
            "per_class",
            "confusion",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        for key in ["precision", "recall", "f1"] {
            assert!(json["macro"].get(key).is_some() && json["weighted"].get(key).is_some());
        }
        assert_eq!(json["per_class"][0]["fn"], 1);
        assert!(json.get("baseline").is_none());
        let table = r.table();
        assert!(table.contains("accuracy (top-1)  0.5000"), "{table}");
        assert!(table.contains("macro avg"), "{table}");
    }

    #[test]
    fn a_baseline_lists_the_images_whose_top1_changed() {
        let model = Report::build(
            "new",
            "d",
            &labels(),
            &[answer("a", 0, &[0]), answer("b", 1, &[1])],
            1.0,
        );
        let base = Report::build(
            "old",
            "d",
            &labels(),
            &[answer("a", 0, &[2]), answer("b", 1, &[1])],
            1.0,
        );
        let r = model.with_baseline(base);
        let changed = r.changed.as_ref().expect("changed");
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].path, "a");
        assert_eq!(changed[0].baseline, "blue");
        assert_eq!(changed[0].model, "red");
        let table = r.table();
        assert!(table.contains("top-1 changed on 1 image(s)"), "{table}");
        assert!(table.contains("+0.5000"), "{table}");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["baseline"]["accuracy"], 0.5);
    }
}
