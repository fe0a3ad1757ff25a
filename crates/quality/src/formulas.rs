//! The seed's metrics as pure functions (section 4.2 of the seed):
//!
//! - accuracy  = correct / total
//! - precision = TP / (TP + FP)
//! - recall    = TP / (TP + FN)
//! - F1        = 2 · P · R / (P + R)
//!
//! **Divide-by-zero cases** are defined as `0.0`, never NaN (scikit-learn's
//! `zero_division=0`): accuracy of an empty set, precision of a class never predicted
//! (TP + FP = 0), recall of a class absent from the set (TP + FN = 0), and F1 when
//! P + R = 0.
//!
//! Multi-class figures are one-vs-rest per class, read off a confusion matrix whose rows are
//! the true classes and whose columns are the predicted ones. The macro average is the
//! unweighted mean over the classes that occur in the truth or in the predictions (classes
//! neither seen nor predicted are left out, else a 1000-class model scored on ten classes
//! would average in 990 zeros); the weighted average weighs each class by its support (how
//! many images truly belong to it). Macro F1 is the mean of the per-class F1 values, not the
//! F1 of the macro precision and recall.

use serde::Serialize;

/// `correct / total`; `0.0` when `total` is zero.
pub fn accuracy(correct: u64, total: u64) -> f64 {
    ratio(correct, total)
}

/// `TP / (TP + FP)`; `0.0` when nothing was predicted as the class.
pub fn precision(tp: u64, fp: u64) -> f64 {
    ratio(tp, tp + fp)
}

/// `TP / (TP + FN)`; `0.0` when the class has no true examples.
pub fn recall(tp: u64, fn_: u64) -> f64 {
    ratio(tp, tp + fn_)
}

/// `2PR / (P + R)`; `0.0` when `P + R` is zero.
pub fn f1(precision: f64, recall: f64) -> f64 {
    let sum = precision + recall;
    if sum == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / sum
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Precision, recall and F1 together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    /// From one class's counts.
    pub fn from_counts(tp: u64, fp: u64, fn_: u64) -> Prf {
        let p = precision(tp, fp);
        let r = recall(tp, fn_);
        Prf {
            precision: p,
            recall: r,
            f1: f1(p, r),
        }
    }
}

/// One class's one-vs-rest counts and figures.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Images whose true class this is (TP + FN).
    pub support: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Square confusion matrix: `counts[truth][predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    counts: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion {
            counts: vec![vec![0; classes]; classes],
        }
    }

    /// From a full matrix (rows = truth). `None` when it is not square.
    pub fn from_rows(counts: Vec<Vec<u64>>) -> Option<Confusion> {
        let n = counts.len();
        counts
            .iter()
            .all(|row| row.len() == n)
            .then_some(Confusion { counts })
    }

    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Counts one image; out-of-range indices are ignored (and so never panic).
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.add_count(truth, predicted, 1);
    }

    /// Counts `n` images at once (a database's `COUNT(*)`); out-of-range indices are
    /// ignored.
    pub fn add_count(&mut self, truth: usize, predicted: usize, n: u64) {
        let classes = self.counts.len();
        if truth < classes && predicted < classes {
            self.counts[truth][predicted] += n;
        }
    }

    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        self.counts
            .get(truth)
            .and_then(|r| r.get(predicted))
            .copied()
            .unwrap_or(0)
    }

    pub fn rows(&self) -> &[Vec<u64>] {
        &self.counts
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// The diagonal: images whose top-1 was right.
    pub fn correct(&self) -> u64 {
        (0..self.classes()).map(|i| self.counts[i][i]).sum()
    }

    pub fn accuracy(&self) -> f64 {
        accuracy(self.correct(), self.total())
    }

    /// `(tp, fp, fn)` of class `c`, one-vs-rest.
    pub fn counts_for(&self, c: usize) -> (u64, u64, u64) {
        let tp = self.get(c, c);
        let predicted: u64 = (0..self.classes()).map(|t| self.get(t, c)).sum();
        let actual: u64 = self.counts.get(c).map(|r| r.iter().sum()).unwrap_or(0);
        (tp, predicted - tp, actual - tp)
    }

    /// Per-class figures for every class that occurs in the truth or the predictions.
    pub fn per_class(&self, labels: &[String]) -> Vec<ClassMetrics> {
        (0..self.classes())
            .filter_map(|c| {
                let (tp, fp, fn_) = self.counts_for(c);
                if tp + fp + fn_ == 0 {
                    return None;
                }
                let prf = Prf::from_counts(tp, fp, fn_);
                Some(ClassMetrics {
                    label: labels
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| format!("class_{c}")),
                    tp,
                    fp,
                    fn_,
                    support: tp + fn_,
                    precision: prf.precision,
                    recall: prf.recall,
                    f1: prf.f1,
                })
            })
            .collect()
    }
}

/// Unweighted mean over `classes`; zeros when there are none.
pub fn macro_average(classes: &[ClassMetrics]) -> Prf {
    let n = classes.len() as f64;
    if classes.is_empty() {
        return Prf {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    Prf {
        precision: classes.iter().map(|c| c.precision).sum::<f64>() / n,
        recall: classes.iter().map(|c| c.recall).sum::<f64>() / n,
        f1: classes.iter().map(|c| c.f1).sum::<f64>() / n,
    }
}

/// Mean weighted by support; zeros when the total support is zero.
pub fn weighted_average(classes: &[ClassMetrics]) -> Prf {
    let total: u64 = classes.iter().map(|c| c.support).sum();
    if total == 0 {
        return Prf {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    let w = |f: fn(&ClassMetrics) -> f64| {
        classes.iter().map(|c| f(c) * c.support as f64).sum::<f64>() / total as f64
    };
    Prf {
        precision: w(|c| c.precision),
        recall: w(|c| c.recall),
        f1: w(|c| c.f1),
    }
}

/// True when `truth` is among the first `k` of `ranked`.
pub fn in_top_k(ranked: &[usize], truth: usize, k: usize) -> bool {
    ranked.iter().take(k).any(|&c| c == truth)
}

/// Top-`k` accuracy of ranked predictions against the truth; `0.0` for an empty set.
pub fn top_k_accuracy(ranked: &[Vec<usize>], truth: &[usize], k: usize) -> f64 {
    let hits = ranked
        .iter()
        .zip(truth)
        .filter(|(r, t)| in_top_k(r, **t, k))
        .count() as u64;
    accuracy(hits, truth.len().min(ranked.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Section 4.3 of the seed, number for number.
    #[test]
    fn the_seeds_worked_example() {
        assert!(close(accuracy(800, 1000), 0.8));
        // 200 predicted positive, 180 of them truly positive; 20 positives missed.
        let p = precision(180, 200 - 180);
        let r = recall(180, 20);
        assert!(close(p, 0.9) && close(r, 0.9));
        assert!(close(f1(p, r), 0.9));
        let prf = Prf::from_counts(180, 20, 20);
        assert!(close(prf.f1, 0.9));
    }

    /// The same example as a three-class confusion matrix of 1000 images: class 0 is the
    /// seed's positive class.
    #[test]
    fn the_seeds_example_as_a_confusion_matrix() {
        let m = Confusion::from_rows(vec![vec![180, 20, 0], vec![20, 400, 80], vec![0, 80, 220]])
            .expect("square");
        assert_eq!(m.total(), 1000);
        assert_eq!(m.correct(), 800);
        assert!(close(m.accuracy(), 0.8));
        assert_eq!(m.counts_for(0), (180, 20, 20));
        let per = m.per_class(&labels(&["cat", "dog", "bird"]));
        assert_eq!(per[0].label, "cat");
        assert!(close(per[0].precision, 0.9) && close(per[0].recall, 0.9));
        assert!(close(per[0].f1, 0.9));
        // dog: tp 400, fp 20 + 80 = 100, fn 100 → 0.8 / 0.8 / 0.8
        assert!(close(per[1].precision, 0.8) && close(per[1].recall, 0.8));
        // bird: tp 220, fp 80, fn 80 → 220/300
        assert!(close(per[2].precision, 220.0 / 300.0));
        let mac = macro_average(&per);
        assert!(close(mac.precision, (0.9 + 0.8 + 220.0 / 300.0) / 3.0));
        let w = weighted_average(&per);
        // Supports 200, 500, 300.
        let expected = (0.9 * 200.0 + 0.8 * 500.0 + (220.0 / 300.0) * 300.0) / 1000.0;
        assert!(close(w.recall, expected));
        // Weighted recall is always the accuracy.
        assert!(close(w.recall, m.accuracy()));
    }

    /// A small hand-computed case where precision and recall differ.
    #[test]
    fn a_hand_computed_two_class_case() {
        // truth a: predicted a 3, b 1; truth b: predicted a 2, b 4.
        let mut m = Confusion::new(2);
        for (t, p, n) in [(0, 0, 3), (0, 1, 1), (1, 0, 2), (1, 1, 4)] {
            for _ in 0..n {
                m.add(t, p);
            }
        }
        assert!(close(m.accuracy(), 0.7));
        let per = m.per_class(&labels(&["a", "b"]));
        // a: P = 3/5, R = 3/4, F1 = 2·0.6·0.75/1.35 = 2/3
        assert!(close(per[0].precision, 0.6));
        assert!(close(per[0].recall, 0.75));
        assert!(close(per[0].f1, 2.0 / 3.0));
        // b: P = 4/5, R = 4/6
        assert!(close(per[1].precision, 0.8));
        assert!(close(per[1].recall, 4.0 / 6.0));
        let f1_b = 2.0 * 0.8 * (4.0 / 6.0) / (0.8 + 4.0 / 6.0);
        assert!(close(per[1].f1, f1_b));
        assert!(close(macro_average(&per).f1, (2.0 / 3.0 + f1_b) / 2.0));
        assert!(close(
            weighted_average(&per).f1,
            (2.0 / 3.0 * 4.0 + f1_b * 6.0) / 10.0
        ));
    }

    #[test]
    fn divide_by_zero_cases_are_zero_not_nan() {
        assert_eq!(accuracy(0, 0), 0.0);
        assert_eq!(precision(0, 0), 0.0, "never predicted");
        assert_eq!(recall(0, 0), 0.0, "never present");
        assert_eq!(f1(0.0, 0.0), 0.0);
        assert_eq!(Prf::from_counts(0, 3, 2).f1, 0.0);
        let empty = Confusion::new(3);
        assert_eq!(empty.accuracy(), 0.0);
        assert!(empty.per_class(&[]).is_empty());
        assert_eq!(macro_average(&[]).f1, 0.0);
        assert_eq!(weighted_average(&[]).precision, 0.0);
        assert_eq!(top_k_accuracy(&[], &[], 5), 0.0);
    }

    #[test]
    fn classes_neither_present_nor_predicted_are_left_out_of_averages() {
        let mut m = Confusion::new(1000);
        m.add(1, 1);
        m.add(2, 1);
        let per = m.per_class(&[]);
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].label, "class_1");
        // class 1: P 1/2 R 1; class 2: P 0 (never predicted) R 0.
        assert!(close(macro_average(&per).precision, 0.25));
        assert!(close(macro_average(&per).recall, 0.5));
        m.add(5000, 1); // out of range: ignored
        assert_eq!(m.total(), 2);
        assert!(Confusion::from_rows(vec![vec![1, 2], vec![3]]).is_none());
    }

    #[test]
    fn top_k_accuracy_counts_hits_in_the_first_k() {
        let ranked = vec![vec![3, 1, 2], vec![0, 2, 1], vec![2, 0, 1]];
        let truth = [3, 1, 1];
        assert!(close(top_k_accuracy(&ranked, &truth, 1), 1.0 / 3.0));
        assert!(close(top_k_accuracy(&ranked, &truth, 2), 1.0 / 3.0));
        assert!(close(top_k_accuracy(&ranked, &truth, 3), 1.0));
        assert!(in_top_k(&[4, 5], 5, 5));
    }
}
