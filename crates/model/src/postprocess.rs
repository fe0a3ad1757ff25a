//! Model output row → ranked `{label, probability}` list.

pub use sightline_api::Prediction;

/// Numerically stable softmax (subtracts the maximum first).
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// True when `row` already is a probability distribution: every value in `[0, 1]` and the
/// sum within `1e-3` of one. Used at warm-up to tell models ending in Softmax from logits.
pub fn is_distribution(row: &[f32]) -> bool {
    !row.is_empty()
        && row.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v))
        && (row.iter().sum::<f32>() - 1.0).abs() < 1e-3
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let by_value_desc = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by_value_desc);
        idx.truncate(k);
    }
    idx.sort_by(by_value_desc);
    idx
}

/// The top-1 class of one output row and its probability (softmax applied unless
/// `probabilities`); `None` for an empty row. Ties keep the lower index, as [`top_k`] does.
pub fn top1(row: &[f32], probabilities: bool) -> Option<(usize, f32)> {
    let best = *top_k_indices(row, 1).first()?;
    let probability = if probabilities {
        row[best]
    } else {
        // softmax(row)[best] = 1 / Σ exp(row[j] − row[best])
        1.0 / row.iter().map(|v| (v - row[best]).exp()).sum::<f32>()
    };
    Some((best, probability))
}

/// Top-`k` predictions of one output row; `probabilities` says whether `row` is already
/// normalised (otherwise softmax is applied).
pub fn top_k(row: &[f32], probabilities: bool, labels: &[String], k: usize) -> Vec<Prediction> {
    let probs = if probabilities {
        row.to_vec()
    } else {
        softmax(row)
    };
    top_k_indices(&probs, k)
        .into_iter()
        .map(|i| Prediction {
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}")),
            probability: probs[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top1_agrees_with_top_k_for_logits_and_probabilities() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        for (row, probabilities) in [
            (vec![1.0, 3.0, 2.0], false),
            (vec![1000.0, -5.0, 999.0], false),
            (vec![0.2, 0.5, 0.3], true),
            (vec![0.4, 0.4, 0.2], true),
        ] {
            let (class, p) = top1(&row, probabilities).expect("a class");
            let first = &top_k(&row, probabilities, &labels, 1)[0];
            assert_eq!(labels[class], first.label);
            assert!((p - first.probability).abs() < 1e-6, "{p} vs {first:?}");
        }
        assert_eq!(top1(&[], true), None);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        assert!(is_distribution(&softmax(&[0.1, 3.0, -2.0, 7.5])));
    }

    #[test]
    fn distributions_are_told_from_logits() {
        assert!(is_distribution(&[0.2, 0.3, 0.5]));
        assert!(!is_distribution(&[0.2, 0.3, 0.6]));
        assert!(!is_distribution(&[1.5, -0.5]));
        assert!(!is_distribution(&[f32::NAN, 1.0]));
        assert!(!is_distribution(&[]));
    }

    #[test]
    fn top_k_orders_and_clamps() {
        let v = [0.1, 0.7, 0.05, 0.7, 0.15];
        assert_eq!(top_k_indices(&v, 3), vec![1, 3, 4]);
        assert_eq!(top_k_indices(&v, 99).len(), 5);
        assert!(top_k_indices(&v, 0).is_empty());
        let labels: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let top = top_k(&v, true, &labels, 2);
        assert_eq!(
            top[0],
            Prediction {
                label: "b".into(),
                probability: 0.7
            }
        );
        assert_eq!(top[1].label, "d");
    }

    #[test]
    fn logits_get_softmax() {
        let labels: Vec<String> = vec!["x".into(), "y".into()];
        let top = top_k(&[0.0, 0.0], false, &labels, 2);
        assert!((top[0].probability - 0.5).abs() < 1e-6);
    }
}
