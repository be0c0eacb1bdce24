//! The paper's comparison, subject-independent: self-supervised encoder (frozen) + dense heads
//! vs the same network trained fully supervised from scratch vs a heart-rate-only baseline,
//! each at several fractions of the labelled training windows.
//!
//! Protocol (what a gateway meeting a new person faces): subjects are dealt into `folds`
//! groups; for each fold the test subjects' windows are never seen in training — not even
//! unlabelled by the self-supervised stage, whose data are the training subjects' windows
//! plus any extra unlabelled recordings. Fractions subsample the training windows, stratified
//! by class, with the same draw for all three methods. Confusions are pooled over folds and
//! per-fold balanced accuracies are reported as mean ± sd.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::metrics::Confusion;
use super::model::{EMOTION_HIDDEN, PRETEXT_TASKS};
use super::train::{
    embed, predict, predict_heads, pretrain, train_heads, train_supervised, TrainConfig,
};
use crate::dsp::rpeak::{detect_rpeaks, hrv};
use crate::dsp::WINDOW_FS;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentConfig {
    pub folds: usize,
    pub fractions: Vec<f64>,
    pub pretext: TrainConfig,
    pub heads: TrainConfig,
    pub supervised: TrainConfig,
    pub baseline: TrainConfig,
    /// Label column evaluated (e.g. "arousal").
    pub head: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub method: String,
    pub fraction: f64,
    pub pooled: Confusion,
    pub balanced_accuracy: f64,
    pub accuracy: f64,
    pub f1: f64,
    pub fold_balanced_accuracy: Vec<f64>,
    pub train_windows_per_fold: Vec<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub config: ExperimentConfig,
    pub subjects: usize,
    pub windows: usize,
    pub unlabelled_extra_windows: usize,
    pub folds: Vec<Vec<String>>,
    /// Pretext balanced accuracy per task on the held-out fold's windows (never trained on).
    pub pretext_test_balanced_accuracy: Vec<Vec<f32>>,
    pub cells: Vec<Cell>,
    pub seconds: f64,
}

/// Deal sorted subjects round-robin into `k` folds.
pub fn subject_folds(subjects: &[String], k: usize) -> Vec<Vec<String>> {
    let k = k.max(1);
    let mut folds = vec![Vec::new(); k];
    for (i, s) in subjects.iter().enumerate() {
        folds[i % k].push(s.clone());
    }
    folds
}

/// Stratified subsample: `frac` of each class (at least one per class), seeded.
pub fn stratified_subsample(labels: &[bool], frac: f64, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for class in [false, true] {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if idx.is_empty() {
            continue;
        }
        idx.shuffle(&mut rng);
        let k = ((idx.len() as f64 * frac).round() as usize).clamp(1, idx.len());
        out.extend_from_slice(&idx[..k]);
    }
    out.sort_unstable();
    out
}

/// Heart rate, RMSSD and SDNN of a window (zeros when no beats are found).
pub fn hr_features(window: &[f32]) -> Vec<f32> {
    let peaks = detect_rpeaks(window, WINDOW_FS);
    match hrv(&peaks, WINDOW_FS) {
        Some(h) => vec![h.hr_bpm as f32, h.rmssd_ms as f32, h.sdnn_ms as f32],
        None => vec![0.0, 0.0, 0.0],
    }
}

fn standardise(train: &mut [Vec<f32>], test: &mut [Vec<f32>]) {
    let d = train.first().map(|r| r.len()).unwrap_or(0);
    for j in 0..d {
        let n = train.len() as f64;
        let mean = train.iter().map(|r| r[j] as f64).sum::<f64>() / n;
        let var = train
            .iter()
            .map(|r| (r[j] as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let sd = var.sqrt().max(1e-6);
        for r in train.iter_mut().chain(test.iter_mut()) {
            r[j] = ((r[j] as f64 - mean) / sd) as f32;
        }
    }
}

/// Run the whole comparison. `extra_unlabelled` are windows of recordings outside the
/// manifest (other people), used only by the self-supervised stage.
pub fn run(
    data: &Dataset,
    extra_unlabelled: &[Vec<f32>],
    cfg: &ExperimentConfig,
    mut log: impl FnMut(&str),
) -> Result<ExperimentReport> {
    let t0 = std::time::Instant::now();
    let h = data.label_index(&cfg.head)?;
    let subjects = data.subjects();
    if subjects.len() < cfg.folds || cfg.folds < 2 {
        bail!(
            "{} subjects cannot make {} subject-disjoint folds (need ≥ 2 folds and ≥ 1 subject per fold)",
            subjects.len(),
            cfg.folds
        );
    }
    let folds = subject_folds(&subjects, cfg.folds);
    let methods = ["ssl_frozen", "supervised", "hr_baseline"];
    // (method, fraction) → pooled confusion, per-fold balanced accuracy, training windows
    type Pooled = (Confusion, Vec<f64>, Vec<usize>);
    let mut pooled: BTreeMap<(usize, usize), Pooled> = BTreeMap::new();
    let mut pretext_acc = Vec::new();
    let names = vec![cfg.head.clone()];
    for (fi, test_subjects) in folds.iter().enumerate() {
        let (test, train) = data.split_by_subject(test_subjects);
        let keep = |d: &Dataset| -> (Vec<Vec<f32>>, Vec<bool>) {
            d.windows
                .iter()
                .filter_map(|w| w.labels[h].map(|v| (w.samples.clone(), v >= 0.5)))
                .unzip()
        };
        let (train_x, train_y) = keep(&train);
        let (test_x, test_y) = keep(&test);
        log(&format!(
            "fold {}/{}: test subjects {:?}: {} train / {} test windows",
            fi + 1,
            folds.len(),
            test_subjects,
            train_x.len(),
            test_x.len()
        ));
        // 1. self-supervised encoder on everything but the test subjects
        let mut unl: Vec<Vec<f32>> = train.samples();
        unl.extend_from_slice(extra_unlabelled);
        let mut pcfg = cfg.pretext.clone();
        pcfg.seed = cfg.pretext.seed + fi as u64;
        let (pw, hist) = pretrain(&unl, &[], &pcfg, None);
        let (_, acc) = super::train::pretext_eval(&pw, &test_x, 99 + fi as u64);
        log(&format!(
            "fold {}: pretext loss {:.4} → {:.4}; held-out task balanced accuracy {:?}",
            fi + 1,
            hist.first().map(|e| e.train_loss).unwrap_or(f32::NAN),
            hist.last().map(|e| e.train_loss).unwrap_or(f32::NAN),
            PRETEXT_TASKS
                .iter()
                .zip(&acc)
                .map(|(t, a)| format!("{t} {a:.3}"))
                .collect::<Vec<_>>()
        ));
        pretext_acc.push(acc);
        let train_emb = embed(&pw, &train_x);
        let test_emb = embed(&pw, &test_x);
        let mut train_hr: Vec<Vec<f32>> = train_x.iter().map(|w| hr_features(w)).collect();
        let mut test_hr: Vec<Vec<f32>> = test_x.iter().map(|w| hr_features(w)).collect();
        standardise(&mut train_hr, &mut test_hr);

        for (pi, &frac) in cfg.fractions.iter().enumerate() {
            let idx = stratified_subsample(&train_y, frac, 1000 + fi as u64 * 31 + pi as u64);
            let lab: Vec<Vec<Option<f32>>> = idx
                .iter()
                .map(|&i| vec![Some(if train_y[i] { 1.0 } else { 0.0 })])
                .collect();
            for (mi, method) in methods.iter().enumerate() {
                let scores: Vec<f32> = match *method {
                    "ssl_frozen" => {
                        let e: Vec<Vec<f32>> = idx.iter().map(|&i| train_emb[i].clone()).collect();
                        let (heads, _) = train_heads(&e, &lab, &names, &EMOTION_HIDDEN, &cfg.heads);
                        predict_heads(&heads, &test_emb)
                            .iter()
                            .map(|r| r[0])
                            .collect()
                    }
                    "supervised" => {
                        let x: Vec<Vec<f32>> = idx.iter().map(|&i| train_x[i].clone()).collect();
                        // Same number of optimiser steps whatever the fraction, so small
                        // fractions are not also under-trained.
                        let mut scfg = cfg.supervised.clone();
                        let full_steps = (train_x.len() / scfg.batch).max(1) * scfg.epochs;
                        let per_epoch = x.len().div_ceil(scfg.batch).max(1);
                        scfg.epochs = (full_steps / per_epoch).clamp(scfg.epochs, 50 * scfg.epochs);
                        let (w, _) = train_supervised(&x, &lab, &names, &EMOTION_HIDDEN, &scfg);
                        predict(&w, &test_x).iter().map(|r| r[0]).collect()
                    }
                    _ => {
                        let f: Vec<Vec<f32>> = idx.iter().map(|&i| train_hr[i].clone()).collect();
                        let (heads, _) = train_heads(&f, &lab, &names, &[], &cfg.baseline);
                        predict_heads(&heads, &test_hr)
                            .iter()
                            .map(|r| r[0])
                            .collect()
                    }
                };
                let c = Confusion::from_scores(&scores, &test_y, 0.5);
                log(&format!(
                    "fold {} fraction {:>5.2} {:<12} balanced accuracy {:.3} (n={}, trained on {})",
                    fi + 1,
                    frac,
                    method,
                    c.balanced_accuracy(),
                    c.n(),
                    idx.len()
                ));
                let e = pooled.entry((mi, pi)).or_default();
                e.0.add(&c);
                e.1.push(c.balanced_accuracy());
                e.2.push(idx.len());
            }
        }
    }
    let cells = pooled
        .into_iter()
        .map(|((mi, pi), (c, folds_ba, n))| Cell {
            method: methods[mi].to_string(),
            fraction: cfg.fractions[pi],
            balanced_accuracy: c.balanced_accuracy(),
            accuracy: c.accuracy(),
            f1: c.macro_f1(),
            pooled: c,
            fold_balanced_accuracy: folds_ba,
            train_windows_per_fold: n,
        })
        .collect();
    Ok(ExperimentReport {
        config: cfg.clone(),
        subjects: subjects.len(),
        windows: data.windows.len(),
        unlabelled_extra_windows: extra_unlabelled.len(),
        folds,
        pretext_test_balanced_accuracy: pretext_acc,
        cells,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Markdown table of a report (used for docs/RESULTS.md).
pub fn markdown(r: &ExperimentReport) -> String {
    let mut s = String::new();
    s.push_str("| labelled training windows | SSL + frozen encoder | fully supervised | heart-rate only |\n");
    s.push_str("|---|---|---|---|\n");
    for &frac in &r.config.fractions {
        let cell = |m: &str| {
            r.cells
                .iter()
                .find(|c| c.method == m && c.fraction == frac)
                .map(|c| {
                    let n = c.fold_balanced_accuracy.len() as f64;
                    let mean = c.fold_balanced_accuracy.iter().sum::<f64>() / n;
                    let sd = (c
                        .fold_balanced_accuracy
                        .iter()
                        .map(|v| (v - mean).powi(2))
                        .sum::<f64>()
                        / n)
                        .sqrt();
                    format!(
                        "{:.3} (folds {:.3} ± {:.3}; F1 {:.3})",
                        c.balanced_accuracy, mean, sd, c.f1
                    )
                })
                .unwrap_or_default()
        };
        let nwin = r
            .cells
            .iter()
            .find(|c| c.fraction == frac)
            .map(|c| {
                c.train_windows_per_fold.iter().sum::<usize>()
                    / c.train_windows_per_fold.len().max(1)
            })
            .unwrap_or(0);
        s.push_str(&format!(
            "| {:.0} % (≈{} per fold) | {} | {} | {} |\n",
            frac * 100.0,
            nwin,
            cell("ssl_frozen"),
            cell("supervised"),
            cell("hr_baseline")
        ));
    }
    s
}
