//! Binary classification metrics reported by `eval`, the experiments and the model cards:
//! balanced accuracy (the headline number: EEGMAT has ~3× more rest than task windows),
//! accuracy, macro-F1 and the confusion matrix, all at a 0.5 threshold on the sigmoid score.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub tn: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Confusion {
    pub fn from_scores(scores: &[f32], labels: &[bool], threshold: f32) -> Self {
        let mut c = Confusion::default();
        for (&s, &y) in scores.iter().zip(labels) {
            c.record(s >= threshold, y);
        }
        c
    }

    /// Count one prediction.
    pub fn record(&mut self, predicted: bool, truth: bool) {
        match (predicted, truth) {
            (true, true) => self.tp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    pub fn n(&self) -> usize {
        self.tp + self.tn + self.fp + self.fn_
    }

    pub fn add(&mut self, o: &Confusion) {
        self.tp += o.tp;
        self.tn += o.tn;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.n())
    }

    /// Mean of sensitivity and specificity; a class absent from the labels is left out.
    pub fn balanced_accuracy(&self) -> f64 {
        let pos = self.tp + self.fn_;
        let neg = self.tn + self.fp;
        match (pos > 0, neg > 0) {
            (true, true) => 0.5 * (ratio(self.tp, pos) + ratio(self.tn, neg)),
            (true, false) => ratio(self.tp, pos),
            (false, true) => ratio(self.tn, neg),
            _ => f64::NAN,
        }
    }

    /// Macro-F1: the mean of the F1 of the positive and of the negative class.
    pub fn macro_f1(&self) -> f64 {
        let f1 = |tp: usize, fp: usize, fn_: usize| {
            if 2 * tp + fp + fn_ == 0 {
                0.0
            } else {
                2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
            }
        };
        0.5 * (f1(self.tp, self.fp, self.fn_) + f1(self.tn, self.fn_, self.fp))
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// The JSON shape `eval --json` prints per head.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadReport {
    pub balanced_accuracy: f64,
    pub accuracy: f64,
    pub f1: f64,
    pub n: usize,
    /// Area under the ROC curve of the scores (threshold-free ranking quality).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    pub confusion: Confusion,
}

impl From<Confusion> for HeadReport {
    fn from(c: Confusion) -> Self {
        HeadReport {
            balanced_accuracy: c.balanced_accuracy(),
            accuracy: c.accuracy(),
            f1: c.macro_f1(),
            n: c.n(),
            auc: None,
            confusion: c,
        }
    }
}

impl HeadReport {
    /// Confusion at 0.5 and AUC of `(score, label)` pairs; `None` without any pair.
    pub fn from_scores(scores: &[f64], labels: &[bool]) -> Option<HeadReport> {
        if scores.is_empty() {
            return None;
        }
        let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
        let mut r = HeadReport::from(Confusion::from_scores(&s32, labels, 0.5));
        r.auc = auc(scores, labels);
        Some(r)
    }
}

/// Area under the ROC curve (Mann–Whitney U / (n₊·n₋), ties count half); `None` unless both
/// classes are present.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut rank = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            rank[idx[k]] = r;
        }
        i = j + 1;
    }
    let n_pos = labels.iter().filter(|&&y| y).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let r_pos: f64 = (0..labels.len())
        .filter(|&i| labels[i])
        .map(|i| rank[i])
        .sum();
    let u = r_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // 8 positives (6 right), 2 negatives (1 right)
        let scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.51, 0.2, 0.1, 0.3, 0.9];
        let labels = [true, true, true, true, true, true, true, true, false, false];
        let c = Confusion::from_scores(&scores, &labels, 0.5);
        assert_eq!(
            c,
            Confusion {
                tp: 6,
                tn: 1,
                fp: 1,
                fn_: 2
            }
        );
        assert!((c.accuracy() - 0.7).abs() < 1e-12);
        assert!((c.balanced_accuracy() - (0.75 + 0.5) / 2.0).abs() < 1e-12);
        let f1_pos = 12.0 / 15.0;
        let f1_neg = 2.0 / 5.0;
        assert!((c.macro_f1() - (f1_pos + f1_neg) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn auc_known_values() {
        assert_eq!(
            auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        // One inversion out of 2×2 pairs.
        assert_eq!(
            auc(&[0.1, 0.6, 0.5, 0.9], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn constant_predictor_has_chance_balanced_accuracy() {
        let labels: Vec<bool> = (0..100).map(|i| i % 4 == 0).collect();
        let c = Confusion::from_scores(&[0.0; 100], &labels, 0.5);
        assert!((c.accuracy() - 0.75).abs() < 1e-12);
        assert!((c.balanced_accuracy() - 0.5).abs() < 1e-12);
    }
}
