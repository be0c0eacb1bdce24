//! The simplest methods that could work, evaluated exactly like the model: every evaluation
//! shows what the model adds over heart rate.
//!
//! - `hr`: the window's heart rate (absolute, bpm);
//! - `hr_relative`: heart rate relative to the wearer's own baseline ([`WearerBaseline`],
//!   computed per subject from all of that subject's good windows *without labels*, as the
//!   gateway computes it from the wearer's history);
//! - `hr_hrv_relative`: heart rate, RMSSD and SDNN relative to the wearer's baseline.
//!
//! Each is a class-balanced logistic regression fitted leave-one-subject-out (the subject
//! scored is never in the fit), so its numbers are subject-independent. Windows that fail the
//! gateway's quality gate (no ECG, noise, implausible R-R) are left out of every evaluation, as
//! the gateway does not score them: the EEGMAT recordings without ECG must not count.

use crate::dsp::quality::{assess, QualityConfig};
use crate::dsp::{detect_rpeaks, hrv, WearerBaseline, WINDOW_FS};

/// What the physiology of one window says, computed the gateway's way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowPhysio {
    /// HR (bpm), RMSSD (ms), SDNN (ms) on NN intervals; `None` without enough beats.
    pub features: Option<[f64; 3]>,
    /// Passes the quality gate (the flatness check is left out: training windows are
    /// z-scored, so their amplitude says nothing).
    pub good: bool,
}

/// [`WindowPhysio`] of one 10 s window at 256 Hz.
pub fn window_physio(samples: &[f32]) -> WindowPhysio {
    let peaks = detect_rpeaks(samples, WINDOW_FS);
    let cfg = QualityConfig {
        flat_std_uv: 0.0,
        ..QualityConfig::default()
    };
    let q = assess(samples, WINDOW_FS, &peaks, 0.0, &cfg);
    let features = hrv(&peaks, WINDOW_FS).map(|h| [h.hr_bpm, h.rmssd_ms, h.sdnn_ms]);
    WindowPhysio {
        features,
        good: q.is_good() && features.is_some(),
    }
}

/// Good windows a subject needs for an offline baseline. Lower than the gateway's
/// [`crate::dsp::MIN_BASELINE_WINDOWS`] (5 minutes) because EEGMAT holds only 4 minutes per
/// person (24 windows, fewer after the quality gate).
pub const OFFLINE_MIN_BASELINE_WINDOWS: usize = 10;

/// Per window, its features relative to its subject's baseline (`None` for bad windows and
/// for subjects with fewer than [`OFFLINE_MIN_BASELINE_WINDOWS`] good windows).
pub fn wearer_relative(subjects: &[String], phys: &[WindowPhysio]) -> Vec<Option<[f64; 3]>> {
    let mut by_subject: std::collections::BTreeMap<&str, Vec<[f64; 3]>> = Default::default();
    for (s, p) in subjects.iter().zip(phys) {
        if let (true, Some(f)) = (p.good, p.features) {
            by_subject.entry(s).or_default().push(f);
        }
    }
    let baselines: std::collections::BTreeMap<&str, Option<WearerBaseline>> = by_subject
        .iter()
        .map(|(s, rows)| {
            (
                *s,
                WearerBaseline::from_features_min(rows, OFFLINE_MIN_BASELINE_WINDOWS),
            )
        })
        .collect();
    subjects
        .iter()
        .zip(phys)
        .map(|(s, p)| {
            let b = baselines.get(s.as_str()).copied().flatten()?;
            p.good.then_some(())?;
            Some(b.relative(p.features?))
        })
        .collect()
}

/// A class-balanced logistic regression on standardised features (the baselines' model).
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    mean: Vec<f64>,
    sd: Vec<f64>,
    w: Vec<f64>,
    b: f64,
}

impl Logistic {
    /// Fit by Newton's method (a few iterations suffice for ≤ 3 features), L2 1e-3.
    pub fn fit(x: &[Vec<f64>], y: &[bool]) -> Logistic {
        Self::fit_l2(x, y, &[])
    }

    /// As [`fit`](Self::fit) with an L2 penalty per standardised feature (`l2[j]`; features
    /// past the slice's end get 1e-3). The loss is the class-weighted *sum* over rows, so a
    /// penalty of `λ` weighs like `λ` rows' worth of evidence.
    pub fn fit_l2(x: &[Vec<f64>], y: &[bool], l2: &[f64]) -> Logistic {
        let d = x.first().map_or(0, Vec::len);
        let n = x.len().max(1) as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let sd: Vec<f64> = (0..d)
            .map(|j| {
                (x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n)
                    .sqrt()
                    .max(1e-9)
            })
            .collect();
        let z: Vec<Vec<f64>> = x
            .iter()
            .map(|r| (0..d).map(|j| (r[j] - mean[j]) / sd[j]).collect())
            .collect();
        let n_pos = y.iter().filter(|&&v| v).count().max(1) as f64;
        let n_neg = y.iter().filter(|&&v| !v).count().max(1) as f64;
        let weight = |v: bool| {
            if v {
                n / (2.0 * n_pos)
            } else {
                n / (2.0 * n_neg)
            }
        };
        // Parameters θ = (w, b); Newton steps on the weighted log-loss.
        let k = d + 1;
        let mut theta = vec![0.0; k];
        for _ in 0..25 {
            let mut grad = vec![0.0; k];
            let mut hess = vec![vec![0.0; k]; k];
            for (zi, &yi) in z.iter().zip(y) {
                let xi: Vec<f64> = zi.iter().copied().chain([1.0]).collect();
                let t: f64 = xi.iter().zip(&theta).map(|(a, b)| a * b).sum();
                let p = 1.0 / (1.0 + (-t).exp());
                let wgt = weight(yi);
                for a in 0..k {
                    grad[a] += wgt * (p - f64::from(u8::from(yi))) * xi[a];
                    for c in 0..k {
                        hess[a][c] += wgt * p * (1.0 - p) * xi[a] * xi[c];
                    }
                }
            }
            for a in 0..d {
                let lam = l2.get(a).copied().unwrap_or(1e-3);
                grad[a] += lam * theta[a];
                hess[a][a] += lam;
            }
            let step = solve(hess, grad);
            let mut moved = 0.0f64;
            for a in 0..k {
                theta[a] -= step[a];
                moved = moved.max(step[a].abs());
            }
            if moved < 1e-8 {
                break;
            }
        }
        Logistic {
            mean,
            sd,
            b: theta[d],
            w: theta[..d].to_vec(),
        }
    }

    /// The fitted model as one dense layer on the *raw* features (standardisation folded in):
    /// `(weights, bias)` with `p = sigmoid(weights · x + bias)`.
    pub fn to_dense(&self) -> (Vec<f64>, f64) {
        let w: Vec<f64> = self.w.iter().zip(&self.sd).map(|(w, sd)| w / sd).collect();
        let b = self.b - w.iter().zip(&self.mean).map(|(w, m)| w * m).sum::<f64>();
        (w, b)
    }

    /// Probability of the positive class.
    pub fn predict(&self, x: &[f64]) -> f64 {
        let t: f64 = x
            .iter()
            .enumerate()
            .map(|(j, v)| self.w[j] * (v - self.mean[j]) / self.sd[j])
            .sum::<f64>()
            + self.b;
        1.0 / (1.0 + (-t).exp())
    }
}

/// Gaussian elimination with partial pivoting.
// Index loops read as the textbook algorithm; iterator chains over two rows would not.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let k = b.len();
    for c in 0..k {
        let p = (c..k)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        let d = if a[c][c].abs() < 1e-12 {
            1e-12
        } else {
            a[c][c]
        };
        for r in c + 1..k {
            let f = a[r][c] / d;
            for cc in c..k {
                a[r][cc] -= f * a[c][cc];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; k];
    for c in (0..k).rev() {
        let s: f64 = (c + 1..k).map(|j| a[c][j] * x[j]).sum();
        let d = if a[c][c].abs() < 1e-12 {
            1e-12
        } else {
            a[c][c]
        };
        x[c] = (b[c] - s) / d;
    }
    x
}

/// Leave-one-subject-out probabilities of a logistic regression on `x`: each subject is
/// scored by a model fitted on the others' labelled rows. `None` where `x` or the label is
/// missing (or no other subject has both classes).
pub fn loso_probabilities(
    x: &[Option<Vec<f64>>],
    y: &[Option<bool>],
    subjects: &[String],
) -> Vec<Option<f64>> {
    loso_probabilities_l2(x, y, subjects, &[])
}

/// As [`loso_probabilities`] with per-feature L2 penalties (see [`Logistic::fit_l2`]).
pub fn loso_probabilities_l2(
    x: &[Option<Vec<f64>>],
    y: &[Option<bool>],
    subjects: &[String],
    l2: &[f64],
) -> Vec<Option<f64>> {
    let mut out = vec![None; x.len()];
    let mut names: Vec<&String> = subjects.iter().collect();
    names.sort();
    names.dedup();
    for s in names {
        let (mut tx, mut ty) = (Vec::new(), Vec::new());
        for i in 0..x.len() {
            if &subjects[i] != s {
                if let (Some(xi), Some(yi)) = (&x[i], y[i]) {
                    tx.push(xi.clone());
                    ty.push(yi);
                }
            }
        }
        if !(ty.iter().any(|&v| v) && ty.iter().any(|&v| !v)) {
            continue;
        }
        let m = Logistic::fit_l2(&tx, &ty, l2);
        for i in 0..x.len() {
            if &subjects[i] == s {
                out[i] = x[i].as_ref().map(|xi| m.predict(xi));
            }
        }
    }
    out
}

/// The baselines' names, in report order.
pub const BASELINES: [&str; 3] = ["hr", "hr_relative", "hr_hrv_relative"];

/// Leave-one-subject-out probabilities of every baseline in [`BASELINES`] for one label
/// column (`labels[i]`: the window's label, `None` = unlabelled).
pub fn baseline_probabilities(
    subjects: &[String],
    phys: &[WindowPhysio],
    labels: &[Option<bool>],
) -> Vec<(&'static str, Vec<Option<f64>>)> {
    let rel = wearer_relative(subjects, phys);
    let hr: Vec<Option<Vec<f64>>> = phys
        .iter()
        .map(|p| {
            if p.good {
                p.features.map(|f| vec![f[0]])
            } else {
                None
            }
        })
        .collect();
    let hr_rel: Vec<Option<Vec<f64>>> = rel.iter().map(|r| r.map(|f| vec![f[0]])).collect();
    let all_rel: Vec<Option<Vec<f64>>> = rel.iter().map(|r| r.map(|f| f.to_vec())).collect();
    vec![
        ("hr", loso_probabilities(&hr, labels, subjects)),
        ("hr_relative", loso_probabilities(&hr_rel, labels, subjects)),
        (
            "hr_hrv_relative",
            loso_probabilities(&all_rel, labels, subjects),
        ),
    ]
}

/// Balanced accuracy (threshold 0.5) per subject that has both classes among its scored,
/// labelled windows: how a scorer does for each person, not only pooled.
pub fn per_subject_balanced_accuracy(
    probs: &[Option<f64>],
    labels: &[Option<bool>],
    subjects: &[String],
) -> std::collections::BTreeMap<String, f64> {
    let mut by: std::collections::BTreeMap<&str, crate::learn::metrics::Confusion> =
        Default::default();
    for ((p, y), s) in probs.iter().zip(labels).zip(subjects) {
        if let (Some(p), Some(y)) = (p, y) {
            by.entry(s).or_default().record(*p >= 0.5, *y);
        }
    }
    by.into_iter()
        .filter(|(_, c)| c.tp + c.fn_ > 0 && c.tn + c.fp > 0)
        .map(|(s, c)| (s.to_string(), c.balanced_accuracy()))
        .collect()
}

/// Mean and sample standard deviation of per-subject values.
pub fn mean_sd(v: &std::collections::BTreeMap<String, f64>) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.values().sum::<f64>() / n;
    let var = v.values().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_separates_a_threshold_and_loso_never_sees_the_subject() {
        let x: Vec<Vec<f64>> = (0..40).map(|i| vec![i as f64]).collect();
        let y: Vec<bool> = (0..40).map(|i| i >= 20).collect();
        let m = Logistic::fit(&x, &y);
        assert!(m.predict(&[5.0]) < 0.2 && m.predict(&[35.0]) > 0.8);
        assert!((m.predict(&[19.5]) - 0.5).abs() < 0.1);
        // Two subjects with opposite relations: LOSO must score each with the other's model,
        // so both come out wrong — a fit that saw its own subject would be right.
        let subjects: Vec<String> = (0..40).map(|i| format!("s{}", i % 2)).collect();
        let xo: Vec<Option<Vec<f64>>> = (0..40)
            .map(|i| {
                Some(vec![if i % 2 == 0 {
                    i as f64 - 19.5
                } else {
                    19.5 - i as f64
                }])
            })
            .collect();
        let yo: Vec<Option<bool>> = (0..40).map(|i| Some(i >= 20)).collect();
        let p = loso_probabilities(&xo, &yo, &subjects);
        let right = (0..40)
            .filter(|&i| (p[i].unwrap() >= 0.5) == (i >= 20))
            .count();
        assert!(
            right < 8,
            "{right} of 40 right: the held-out subject leaked into its fit"
        );
    }
}
