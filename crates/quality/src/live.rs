//! Live quality: the figures of [`crate::formulas`] from counted (predicted, true) label
//! pairs, as a database returns them (`GROUP BY top_label, true_label`), over a sliding
//! [`Window`].
//!
//! The classes are the labels seen, predicted or true (the live side does not know the
//! model's label list); each class's counts, and so its precision, recall and F1, are the
//! very numbers an offline evaluation of the same images computes. Only the order of the
//! classes differs (here by label, there by the model's class index), which can move the
//! last bit of a macro or weighted average (a sum in another order), never a per-class
//! figure or the accuracy.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::formulas::{ClassMetrics, Confusion, Prf, macro_average, weighted_average};

/// How many answers had this (predicted, true) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// The model's top-1 label.
    pub predicted: String,
    /// The label the caller said is true.
    pub truth: String,
    pub count: u64,
}

/// The seed's figures over a set of answers, each beside its sample size: `samples` for
/// the accuracy; per class, `tp + fp` (answers predicting it) for its precision and
/// `support` (answers truly of it) for its recall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Answers scored (the accuracy's denominator).
    pub samples: u64,
    /// Answers whose top-1 was the true label.
    pub correct: u64,
    pub accuracy: f64,
    #[serde(rename = "macro")]
    pub macro_avg: Prf,
    pub weighted: Prf,
    /// One entry per label seen (predicted or true), by label.
    pub per_class: Vec<ClassMetrics>,
    /// Every pair seen, the diagonal (right answers) included: most frequent first.
    pub confusion: Vec<Pair>,
}

impl Quality {
    /// The figures of `pairs` (a pair given twice counts twice; zero counts are skipped).
    pub fn from_pairs(pairs: impl IntoIterator<Item = Pair>) -> Quality {
        let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
        for pair in pairs.into_iter().filter(|p| p.count > 0) {
            *counted.entry((pair.predicted, pair.truth)).or_default() += pair.count;
        }
        let labels: Vec<String> = counted
            .keys()
            .flat_map(|(p, t)| [p.clone(), t.clone()])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index: BTreeMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let mut matrix = Confusion::new(labels.len());
        for ((predicted, truth), n) in &counted {
            matrix.add_count(index[truth.as_str()], index[predicted.as_str()], *n);
        }
        let per_class = matrix.per_class(&labels);
        let mut confusion: Vec<Pair> = counted
            .into_iter()
            .map(|((predicted, truth), count)| Pair {
                predicted,
                truth,
                count,
            })
            .collect();
        // Stable: equal counts keep the (predicted, truth) order of the map.
        confusion.sort_by_key(|p| std::cmp::Reverse(p.count));
        Quality {
            samples: matrix.total(),
            correct: matrix.correct(),
            accuracy: matrix.accuracy(),
            macro_avg: macro_average(&per_class),
            weighted: weighted_average(&per_class),
            per_class,
            confusion,
        }
    }
}

/// A sliding window of live quality, ending now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    #[serde(rename = "1h")]
    Hour,
    #[default]
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Week];

    /// `1h`, `24h` or `7d`.
    pub fn parse(text: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }

    /// Its length in milliseconds.
    pub fn millis(self) -> i64 {
        const HOUR: i64 = 3_600_000;
        match self {
            Window::Hour => HOUR,
            Window::Day => 24 * HOUR,
            Window::Week => 7 * 24 * HOUR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(predicted: &str, truth: &str, count: u64) -> Pair {
        Pair {
            predicted: predicted.into(),
            truth: truth.into(),
            count,
        }
    }

    /// The seed's three-class example (section 4.3) as counted pairs gives the figures the
    /// confusion matrix gives, number for number.
    #[test]
    fn pairs_give_the_figures_of_the_same_confusion_matrix() {
        let rows = vec![vec![180, 20, 0], vec![20, 400, 80], vec![0, 80, 220]];
        let names = ["bird", "cat", "dog"];
        let matrix = Confusion::from_rows(rows.clone()).expect("square");
        let labels: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut pairs = Vec::new();
        for (t, row) in rows.iter().enumerate() {
            for (p, n) in row.iter().enumerate() {
                pairs.push(pair(names[p], names[t], *n));
            }
        }
        let live = Quality::from_pairs(pairs);
        assert_eq!(live.samples, 1000);
        assert_eq!(live.correct, 800);
        assert_eq!(live.accuracy, matrix.accuracy());
        assert_eq!(live.per_class, matrix.per_class(&labels));
        assert_eq!(live.macro_avg, macro_average(&live.per_class));
        assert_eq!(live.confusion[0], pair("cat", "cat", 400));
        assert_eq!(live.confusion.len(), 7, "zero counts are not pairs seen");
    }

    #[test]
    fn labels_only_predicted_or_only_true_are_classes_too() {
        let live = Quality::from_pairs([pair("cat", "dog", 2), pair("cat", "cat", 1)]);
        assert_eq!(live.samples, 3);
        let cat = &live.per_class[0];
        assert_eq!(
            (cat.label.as_str(), cat.tp, cat.fp, cat.fn_),
            ("cat", 1, 2, 0)
        );
        assert_eq!(cat.precision, 1.0 / 3.0);
        let dog = &live.per_class[1];
        assert_eq!((dog.label.as_str(), dog.support), ("dog", 2));
        assert_eq!((dog.precision, dog.recall, dog.f1), (0.0, 0.0, 0.0));
        // The same pair in two rows (two digests merged, say) adds up.
        let twice = Quality::from_pairs([pair("a", "b", 1), pair("a", "b", 2)]);
        assert_eq!(twice.confusion, vec![pair("a", "b", 3)]);
    }

    #[test]
    fn nothing_scored_is_zeros_with_a_sample_size_of_zero() {
        let empty = Quality::from_pairs(Vec::new());
        assert_eq!((empty.samples, empty.accuracy), (0, 0.0));
        assert!(empty.per_class.is_empty() && empty.confusion.is_empty());
        let json = serde_json::to_value(&empty).expect("serialise");
        assert_eq!(json["macro"]["f1"], 0.0);
    }

    #[test]
    fn windows_parse_and_measure() {
        for w in Window::ALL {
            assert_eq!(Window::parse(w.as_str()), Some(w));
        }
        assert_eq!(Window::default(), Window::Day);
        assert_eq!(Window::Week.millis(), 604_800_000);
        for bad in ["", "1d", "24H", "7 d", "-1h"] {
            assert_eq!(Window::parse(bad), None, "{bad}");
        }
    }
}
