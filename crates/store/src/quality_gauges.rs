//! The live quality as Prometheus gauges (`sightline_quality_*`), bounded: per window, at
//! most [`MAX_DIGESTS`] model digests (those with the most answers), and per digest the
//! `top` classes with the most answers (true or predicted: `tp + fp + fn`) plus one
//! `class="other"` series pooling the rest (their summed counts, scored by the same
//! formulas: a micro-average). A class truly named `other` is always pooled there, so the
//! series never means two things. A label set that drops out of a read (a digest with no
//! answers left in the window, a class that left the top) is removed, so the number of
//! series stays what the bounds allow.
//!
//! The figures are read from the database on a timer by whoever owns the store (the store
//! role), never per scrape: `sightline_quality_read_timestamp_seconds{window}` says when
//! the figures shown were read, `sightline_quality_refresh_failures_total{window}` counts
//! the reads that failed (the figures of the last good read stay, with its time), and
//! [`QualityGauges::expire`] removes a window's figures once they are too old to show.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sightline_quality::{Prf, Quality, Window};
use sightline_telemetry::F64Gauge;

use crate::live::ModelQuality;

/// Most model digests shown per window.
pub const MAX_DIGESTS: usize = 20;
/// The class label of the series pooling the classes outside the top.
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DigestLabels {
    pub model: String,
    pub sha256: String,
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub model: String,
    pub sha256: String,
    pub window: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub window: String,
}

/// One class's series: its figures and the answers truly of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassFigures {
    pub class: String,
    pub prf: Prf,
    pub support: u64,
}

/// The `top` classes of `quality` with the most answers (`tp + fp + fn`, ties by label),
/// then `other` pooling the rest (only when there is a rest).
pub fn bounded_classes(quality: &Quality, top: usize) -> Vec<ClassFigures> {
    let mut ranked: Vec<_> = quality.per_class.iter().collect();
    ranked.sort_by(|a, b| {
        (b.tp + b.fp + b.fn_)
            .cmp(&(a.tp + a.fp + a.fn_))
            .then_with(|| a.label.cmp(&b.label))
    });
    let mut shown = Vec::new();
    let (mut tp, mut fp, mut fn_, mut support, mut pooled) = (0, 0, 0, 0, 0usize);
    for class in ranked {
        if shown.len() < top && class.label != OTHER {
            shown.push(ClassFigures {
                class: class.label.clone(),
                prf: Prf {
                    precision: class.precision,
                    recall: class.recall,
                    f1: class.f1,
                },
                support: class.support,
            });
        } else {
            (tp, fp, fn_, support) = (
                tp + class.tp,
                fp + class.fp,
                fn_ + class.fn_,
                support + class.support,
            );
            pooled += 1;
        }
    }
    if pooled > 0 {
        shown.push(ClassFigures {
            class: OTHER.to_string(),
            prf: Prf::from_counts(tp, fp, fn_),
            support,
        });
    }
    shown
}

/// The label sets one window shows now.
#[derive(Default)]
struct Shown {
    digests: HashSet<DigestLabels>,
    classes: HashSet<ClassLabels>,
}

/// The `sightline_quality_*` families.
#[derive(Clone)]
pub struct QualityGauges {
    accuracy: Family<DigestLabels, F64Gauge>,
    samples: Family<DigestLabels, Gauge>,
    precision: Family<ClassLabels, F64Gauge>,
    recall: Family<ClassLabels, F64Gauge>,
    f1: Family<ClassLabels, F64Gauge>,
    support: Family<ClassLabels, Gauge>,
    read_at: Family<WindowLabels, F64Gauge>,
    failures: Family<WindowLabels, Counter>,
    shown: Arc<Mutex<[Shown; 3]>>,
}

fn slot(window: Window) -> usize {
    match window {
        Window::Hour => 0,
        Window::Day => 1,
        Window::Week => 2,
    }
}

impl QualityGauges {
    fn families() -> QualityGauges {
        QualityGauges {
            accuracy: Family::default(),
            samples: Family::default(),
            precision: Family::default(),
            recall: Family::default(),
            f1: Family::default(),
            support: Family::default(),
            read_at: Family::default(),
            failures: Family::default(),
            shown: Arc::default(),
        }
    }

    /// The families, registered in `registry` (the process's `sightline` sub-registry).
    /// They hold no series until [`QualityGauges::show`] (the store role's refresh).
    pub fn register(registry: &mut Registry) -> QualityGauges {
        let m = Self::families();
        registry.register(
            "quality_accuracy",
            "Live top-1 accuracy from users' feedback over the window, per model digest (sample size: sightline_quality_samples)",
            m.accuracy.clone(),
        );
        registry.register(
            "quality_samples",
            "Answers scored by users' feedback over the window, per model digest (the accuracy's denominator)",
            m.samples.clone(),
        );
        let class = |m: &mut Registry,
                     name: &str,
                     what: &str,
                     family: Family<ClassLabels, F64Gauge>| {
            m.register(
                name,
                format!("Live {what} of a class from users' feedback over the window, for the classes with most answers plus class=\"other\" pooling the rest"),
                family,
            );
        };
        class(
            registry,
            "quality_class_precision",
            "precision",
            m.precision.clone(),
        );
        class(registry, "quality_class_recall", "recall", m.recall.clone());
        class(registry, "quality_class_f1", "F1", m.f1.clone());
        registry.register(
            "quality_class_support",
            "Answers truly of a class (by users' feedback) over the window: the recall's sample size",
            m.support.clone(),
        );
        registry.register(
            "quality_read_timestamp_seconds",
            "When the live quality figures shown were read from the database (Unix time)",
            m.read_at.clone(),
        );
        registry.register(
            "quality_refresh_failures",
            "Reads of the live quality from the database that failed (the last good figures stay, with their read time)",
            m.failures.clone(),
        );
        m
    }

    /// Families that belong to no registry (tests).
    pub fn unregistered() -> QualityGauges {
        Self::families()
    }

    /// Zero failure counts for `windows`, so a failure ratio has data before the first one.
    pub fn start(&self, windows: &[Window]) {
        for window in windows {
            self.failures
                .get_or_create(&window_labels(*window))
                .inc_by(0);
        }
    }

    /// Shows `read` (every model digest's figures over `window`, read at `read_at_ms`),
    /// `top` classes per digest, and removes the label sets it no longer has.
    pub fn show(&self, window: Window, read: &[ModelQuality], read_at_ms: i64, top: usize) {
        let mut digests: Vec<&ModelQuality> =
            read.iter().filter(|d| d.quality.samples > 0).collect();
        digests.sort_by_key(|d| std::cmp::Reverse(d.quality.samples));
        digests.truncate(MAX_DIGESTS);
        let mut now = Shown::default();
        for digest in digests {
            let labels = DigestLabels {
                model: digest.model.clone(),
                sha256: digest.model_sha256.clone(),
                window: window.as_str().to_string(),
            };
            self.accuracy
                .get_or_create(&labels)
                .set(digest.quality.accuracy);
            self.samples
                .get_or_create(&labels)
                .set(i64::try_from(digest.quality.samples).unwrap_or(i64::MAX));
            for class in bounded_classes(&digest.quality, top) {
                let labels = ClassLabels {
                    model: labels.model.clone(),
                    sha256: labels.sha256.clone(),
                    window: labels.window.clone(),
                    class: class.class,
                };
                self.precision
                    .get_or_create(&labels)
                    .set(class.prf.precision);
                self.recall.get_or_create(&labels).set(class.prf.recall);
                self.f1.get_or_create(&labels).set(class.prf.f1);
                self.support
                    .get_or_create(&labels)
                    .set(i64::try_from(class.support).unwrap_or(i64::MAX));
                now.classes.insert(labels);
            }
            now.digests.insert(labels);
        }
        self.read_at
            .get_or_create(&window_labels(window))
            .set(read_at_ms as f64 / 1000.0);
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::mem::replace(&mut shown[slot(window)], now);
        self.remove(&before, Some(&shown[slot(window)]));
    }

    /// Counts a read of `window` that failed.
    pub fn failed(&self, window: Window) {
        self.failures.get_or_create(&window_labels(window)).inc();
    }

    /// Removes every figure of `window` (they are too old to show), its read time too.
    pub fn expire(&self, window: Window) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::mem::take(&mut shown[slot(window)]);
        self.remove(&before, None);
        self.read_at.remove(&window_labels(window));
    }

    /// Removes the label sets of `before` that `keep` does not have.
    fn remove(&self, before: &Shown, keep: Option<&Shown>) {
        for labels in &before.digests {
            if !keep.is_some_and(|k| k.digests.contains(labels)) {
                self.accuracy.remove(labels);
                self.samples.remove(labels);
            }
        }
        for labels in &before.classes {
            if !keep.is_some_and(|k| k.classes.contains(labels)) {
                self.precision.remove(labels);
                self.recall.remove(labels);
                self.f1.remove(labels);
                self.support.remove(labels);
            }
        }
    }
}

fn window_labels(window: Window) -> WindowLabels {
    WindowLabels {
        window: window.as_str().to_string(),
    }
}

#[cfg(test)]
#[path = "quality_gauges_tests.rs"]
mod tests;
