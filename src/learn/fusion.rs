//! Fusing the self-supervised encoder with the wearer-relative physiology.
//!
//! The question this module answers, measured leave-one-subject-out exactly like the
//! baselines in [`super::baseline`]: does the encoder's embedding add anything to heart rate
//! and HRV expressed relative to the wearer? Arms:
//!
//! - `ssl`: the paper's frozen-encoder arm with a linear head on the embedding;
//! - `ssl_relative`: the embedding relative to the wearer (per dimension, robust z-score over
//!   the wearer's good windows, no labels), as the physiology is;
//! - `fused`: the embedding plus wearer-relative HR/RMSSD/SDNN, the embedding's coefficients
//!   penalised far harder than the physiology's (regularised fusion) — the shipped design;
//! - `fused_relative`: the same with the wearer-relative embedding.

use super::baseline::{
    loso_probabilities_l2, wearer_relative, window_physio, Logistic, WindowPhysio,
    OFFLINE_MIN_BASELINE_WINDOWS,
};
use crate::dsp::rpeak::median;
use crate::model::weights::{DenseWeights, HeadWeights};

/// Per window, its row relative to its subject (per column, (x − median) / (1.4826 MAD),
/// over that subject's rows where `good`); `None` for windows not `good` and subjects with
/// fewer than [`OFFLINE_MIN_BASELINE_WINDOWS`] good windows.
pub fn subject_relative(
    subjects: &[String],
    good: &[bool],
    rows: &[Vec<f64>],
) -> Vec<Option<Vec<f64>>> {
    let mut by: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, s) in subjects.iter().enumerate() {
        if good[i] {
            by.entry(s).or_default().push(i);
        }
    }
    let mut out = vec![None; rows.len()];
    for idx in by.values() {
        if idx.len() < OFFLINE_MIN_BASELINE_WINDOWS {
            continue;
        }
        let d = rows[idx[0]].len();
        let mut centre = vec![0.0; d];
        let mut scale = vec![1.0; d];
        for j in 0..d {
            let mut col: Vec<f64> = idx.iter().map(|&i| rows[i][j]).collect();
            let m = median(&mut col).unwrap_or(0.0);
            let mut dev: Vec<f64> = col.iter().map(|v| (v - m).abs()).collect();
            centre[j] = m;
            scale[j] = (1.4826 * median(&mut dev).unwrap_or(0.0)).max(1e-6);
        }
        for &i in idx {
            out[i] = Some(
                (0..d)
                    .map(|j| (rows[i][j] - centre[j]) / scale[j])
                    .collect(),
            );
        }
    }
    out
}

/// L2 penalty on each standardised embedding coefficient of a fused head, per training row:
/// strong, because 128 correlated embedding dimensions fitted on ~500 windows of 20 people
/// learn the people, not the state. Chosen for robustness, not tuned to one number: on EEGMAT
/// leave-one-subject-out the fused head's balanced accuracy stays within 0.92–0.93 for every
/// value from 0.3 to 3 (docs/RESULTS.md §7), and 1 sits in the middle of that plateau.
pub const EMBEDDING_L2_PER_ROW: f64 = 1.0;
/// L2 penalty on each standardised wearer-relative feature (weak: 3 features).
pub const FEATURE_L2: f64 = 1e-3;

/// The gateway's view of each window: its physiology (quality gate, HR/RMSSD/SDNN on NN
/// intervals) and its features relative to its subject's baseline, computed from that
/// subject's good windows without labels (`None`: bad window, or a subject with too few good
/// windows for a baseline).
pub fn wearer_features(
    windows: &[Vec<f32>],
    subjects: &[String],
) -> (Vec<WindowPhysio>, Vec<Option<[f64; 3]>>) {
    let phys: Vec<WindowPhysio> = windows.iter().map(|w| window_physio(w)).collect();
    let rel = wearer_relative(subjects, &phys);
    (phys, rel)
}

/// A fused head: one logistic layer (sigmoid) on the embedding followed by the
/// wearer-relative features, class-balanced, with the penalties above. Rows are
/// `(embedding, features, label)`.
pub fn fit_fused_head(name: &str, rows: &[(&[f32], [f64; 3], bool)]) -> HeadWeights {
    let x: Vec<Vec<f64>> = rows
        .iter()
        .map(|(e, f, _)| {
            e.iter()
                .map(|&v| f64::from(v))
                .chain(f.iter().copied())
                .collect()
        })
        .collect();
    let y: Vec<bool> = rows.iter().map(|r| r.2).collect();
    let d = rows.first().map_or(0, |r| r.0.len());
    let lam = EMBEDDING_L2_PER_ROW * rows.len() as f64;
    let l2: Vec<f64> = std::iter::repeat_n(lam, d)
        .chain(std::iter::repeat_n(FEATURE_L2, 3))
        .collect();
    let (w, b) = Logistic::fit_l2(&x, &y, &l2).to_dense();
    HeadWeights {
        name: name.to_string(),
        layers: vec![DenseWeights {
            in_dim: w.len(),
            out_dim: 1,
            weight: w.iter().map(|&v| v as f32).collect(),
            bias: vec![b as f32],
        }],
    }
}

/// The arms, in report order.
pub const ARMS: [&str; 4] = ["ssl", "ssl_relative", "fused", "fused_relative"];

/// Leave-one-subject-out probabilities of the [`ARMS`] on the same windows as the baselines:
///
/// - `ssl`: logistic on the frozen embedding (the paper's frozen-encoder arm, linear head);
/// - `ssl_relative`: logistic on the embedding relative to the wearer ([`subject_relative`]);
/// - `fused`: the shipped design — logistic on the embedding plus wearer-relative HR, RMSSD,
///   SDNN ([`fit_fused_head`]'s penalties);
/// - `fused_relative`: the same with the wearer-relative embedding.
///
/// `embedding_l2_per_row` scales the embedding penalty ([`EMBEDDING_L2_PER_ROW`] ships).
pub fn fusion_probabilities(
    subjects: &[String],
    good: &[bool],
    physio_relative: &[Option<[f64; 3]>],
    embeddings: &[Vec<f64>],
    labels: &[Option<bool>],
    embedding_l2_per_row: f64,
) -> Vec<(&'static str, Vec<Option<f64>>)> {
    let n_lab = labels.iter().filter(|l| l.is_some()).count() as f64;
    let d = embeddings.first().map_or(0, Vec::len);
    let lam = embedding_l2_per_row * n_lab;
    let emb: Vec<Option<Vec<f64>>> = embeddings
        .iter()
        .zip(good)
        .map(|(e, &g)| g.then(|| e.clone()))
        .collect();
    let emb_rel = subject_relative(subjects, good, embeddings);
    let with_physio = |e: &[Option<Vec<f64>>]| -> Vec<Option<Vec<f64>>> {
        physio_relative
            .iter()
            .zip(e)
            .map(|(p, e)| {
                let (p, e) = (p.as_ref()?, e.as_ref()?);
                Some(e.iter().copied().chain(p.iter().copied()).collect())
            })
            .collect()
    };
    let l2_emb = vec![lam; d];
    let l2_fused: Vec<f64> = std::iter::repeat_n(lam, d)
        .chain(std::iter::repeat_n(FEATURE_L2, 3))
        .collect();
    vec![
        (
            "ssl",
            loso_probabilities_l2(&emb, labels, subjects, &l2_emb),
        ),
        (
            "ssl_relative",
            loso_probabilities_l2(&emb_rel, labels, subjects, &l2_emb),
        ),
        (
            "fused",
            loso_probabilities_l2(&with_physio(&emb), labels, subjects, &l2_fused),
        ),
        (
            "fused_relative",
            loso_probabilities_l2(&with_physio(&emb_rel), labels, subjects, &l2_fused),
        ),
    ]
}

/// The first `k` principal directions of `rows` (power iteration with deflation on the
/// covariance; rows are centred on their mean first). Returns (mean, directions).
// Index loops over a symmetric matrix read as the algorithm; iterators would not.
#[allow(clippy::needless_range_loop)]
pub fn pca(rows: &[&[f64]], k: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let d = rows.first().map_or(0, |r| r.len());
    let n = rows.len().max(1) as f64;
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let mut cov = vec![vec![0.0; d]; d];
    for r in rows {
        for a in 0..d {
            let da = r[a] - mean[a];
            for b in a..d {
                cov[a][b] += da * (r[b] - mean[b]) / n;
            }
        }
    }
    for a in 0..d {
        for b in 0..a {
            cov[a][b] = cov[b][a];
        }
    }
    let mut dirs = Vec::new();
    for c in 0..k.min(d) {
        let mut v: Vec<f64> = (0..d)
            .map(|j| 1.0 + ((j * 7 + c * 13) % 5) as f64)
            .collect();
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..d)
                .map(|a| (0..d).map(|b| cov[a][b] * v[b]).sum())
                .collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
            w.iter_mut().for_each(|x| *x /= norm);
            v = w;
        }
        let lam: f64 = (0..d)
            .map(|a| v[a] * (0..d).map(|b| cov[a][b] * v[b]).sum::<f64>())
            .sum();
        for a in 0..d {
            for b in 0..d {
                cov[a][b] -= lam * v[a] * v[b];
            }
        }
        dirs.push(v);
    }
    (mean, dirs)
}
