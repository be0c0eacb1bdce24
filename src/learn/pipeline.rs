//! The offline training pipelines behind `affectgate pretrain` and `affectgate finetune`:
//! data → pretext network (ONNX with its provenance in metadata) → frozen-encoder emotion
//! heads → ONNX model + model card with a subject-independent evaluation.
//!
//! The command line only parses arguments into a [`PretrainJob`] / [`FinetuneJob`] and calls
//! these; everything that decides what a model is lives here, next to the training loops.
//! Offline pipelines return `anyhow` errors with the file or argument at fault as context.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::baseline::{self as hr_baseline, WindowPhysio};
use super::dataset::{self, Dataset};
use super::experiment;
use super::fusion;
use super::metrics::Confusion;
use super::metrics::HeadReport;
use super::model::{EMOTION_HIDDEN, PRETEXT_TASKS};
use super::plots;
use super::train::{self, TrainConfig};
use crate::dsp::PreprocessConfig;
use crate::model::card::{
    Evaluation, FeatureCard, HeadCard, InputSpec, ModelCard, Preprocessing, Training,
};
use crate::model::onnx::{export_onnx, import_onnx};
use crate::model::weights::HeadWeights;
use crate::model::{NetworkWeights, WEARER_FEATURES, WINDOW_LEN};

/// What `pretrain` does: which recordings, how much is held out, where it starts and ends.
#[derive(Clone, Debug)]
pub struct PretrainJob {
    /// Recordings or folders of recordings (EDF, WFDB .hea, CSV). Labels are not used.
    pub data: Vec<PathBuf>,
    /// Output: the pretext network as ONNX (7 heads + embedding).
    pub out: PathBuf,
    /// Fraction of recordings held out to monitor pretext accuracy (by recording).
    pub val_frac: f64,
    /// Continue from an existing pretext or emotion model instead of a fresh network.
    pub init: Option<PathBuf>,
    /// Folder for loss and accuracy plots (SVG) and the history (JSON).
    pub plots: Option<PathBuf>,
    pub train: TrainConfig,
}

/// What `finetune` does: the frozen encoder, the labelled data, the heads and the card.
#[derive(Clone, Debug)]
pub struct FinetuneJob {
    /// Pretrained encoder (the ONNX written by [`pretrain`]).
    pub encoder: PathBuf,
    /// Labelled manifest CSV (file, subject, one column per label).
    pub manifest: PathBuf,
    /// Output emotion model (ONNX); its card is written beside it as `<name>.card.toml`.
    pub out: PathBuf,
    /// Label columns to train heads for (empty: every label column of the manifest).
    pub heads: Vec<String>,
    /// Subject-disjoint folds for the evaluation recorded in the model card (0 = none).
    pub eval_folds: usize,
    /// Model version written to the card.
    pub version: String,
    pub plots: Option<PathBuf>,
    /// Fused heads: one logistic layer on the embedding and the wearer-relative HR/HRV
    /// (see [`crate::learn::fusion`]), instead of the paper's dense heads on the embedding.
    pub fused: bool,
    pub train: TrainConfig,
}

pub fn write_onnx(path: &Path, w: &NetworkWeights, meta: &[(String, String)]) -> Result<Vec<u8>> {
    let bytes = export_onnx(w, meta, env!("CARGO_PKG_VERSION"))
        .with_context(|| format!("exporting {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A crash never leaves a half-written model under the final name.
    crate::fs::atomic_write(path, &bytes)?;
    Ok(bytes)
}

pub fn read_weights(path: &Path) -> Result<(NetworkWeights, Vec<(String, String)>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    import_onnx(&bytes).with_context(|| format!("{} is not an affectgate network", path.display()))
}

pub fn pretrain(a: &PretrainJob) -> Result<()> {
    let pre = PreprocessConfig::default();
    let mut data = dataset::unlabelled_from_paths(&a.data, &pre)?;
    // The gateway's quality gate: windows without ECG (e.g. EEGMAT recordings whose ECG lead
    // was off) teach the encoder nothing about ECG — the gateway never stores them either.
    let before = data.windows.len();
    data.windows
        .retain(|w| hr_baseline::window_physio(&w.samples).good);
    eprintln!(
        "quality gate: {} of {before} windows pass and are used",
        data.windows.len()
    );
    // Hold out whole recordings (every k-th), so validation windows come from recordings the
    // network never trained on.
    let groups = data.subjects();
    let k = if a.val_frac > 0.0 {
        (1.0 / a.val_frac).round().max(2.0) as usize
    } else {
        0
    };
    let val_groups: Vec<String> = if k > 0 && groups.len() >= 2 {
        groups
            .iter()
            .enumerate()
            .filter(|(i, _)| i % k == k / 2)
            .map(|(_, g)| g.clone())
            .collect()
    } else {
        Vec::new()
    };
    let (val, train) = data.split_by_subject(&val_groups);
    eprintln!(
        "pretext data: {} windows from {} recordings for training, {} windows from {} held-out recordings",
        train.windows.len(),
        groups.len() - val_groups.len(),
        val.windows.len(),
        val_groups.len()
    );
    let init = match &a.init {
        Some(p) => {
            let (mut w, _) = read_weights(p)?;
            if w.heads.len() != 7 {
                // An emotion model: keep its encoder, start fresh pretext heads.
                let device = burn::tensor::Device::flex();
                let fresh =
                    crate::learn::model::Net::new(7, &crate::learn::model::PRETEXT_HIDDEN, &device);
                let names: Vec<String> = PRETEXT_TASKS.iter().map(|s| s.to_string()).collect();
                w.heads = fresh.to_weights(&names).heads;
            }
            Some(w)
        }
        None => None,
    };
    let cfg = a.train.clone();
    let (w, hist) = train::pretrain(&train.samples(), &val.samples(), &cfg, init.as_ref());
    let files_of = |d: &Dataset| -> Vec<String> {
        let mut f: Vec<String> = d
            .windows
            .iter()
            .map(|w| w.file.display().to_string())
            .collect();
        f.sort();
        f.dedup();
        f
    };
    let last_acc = hist
        .last()
        .map(|e| e.val_task_balanced_accuracy.clone())
        .unwrap_or_default();
    // Threshold-free as well: each pretext head sees its transformation in 1 of 7 windows, so
    // a head that ranks well can stay below 0.5 and show balanced accuracy exactly 0.5.
    let val_auc: Vec<f64> = if val.windows.is_empty() {
        Vec::new()
    } else {
        train::pretext_auc(&w, &val.samples(), cfg.seed ^ 0x5eed)
    };
    if !val_auc.is_empty() {
        eprintln!(
            "held-out pretext AUC: {}",
            PRETEXT_TASKS
                .iter()
                .zip(&val_auc)
                .map(|(t, a)| format!("{t} {a:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let meta = vec![
        ("affectgate.kind".to_string(), "pretext".to_string()),
        (
            "affectgate.pretext_data".to_string(),
            serde_json::to_string(&files_of(&train))?,
        ),
        (
            "affectgate.pretext_holdout".to_string(),
            serde_json::to_string(&files_of(&val))?,
        ),
        (
            "affectgate.pretext_windows".to_string(),
            train.windows.len().to_string(),
        ),
        (
            "affectgate.pretext_epochs".to_string(),
            cfg.epochs.to_string(),
        ),
        (
            "affectgate.pretext_val_balanced_accuracy".to_string(),
            serde_json::to_string(&last_acc)?,
        ),
        (
            "affectgate.pretext_val_auc".to_string(),
            serde_json::to_string(&val_auc)?,
        ),
        ("affectgate.seed".to_string(), cfg.seed.to_string()),
    ];
    write_onnx(&a.out, &w, &meta)?;
    for e in &hist {
        eprintln!(
            "epoch {:>3}: train loss {:.4}  val loss {}  val balanced accuracy {}",
            e.epoch,
            e.train_loss,
            e.val_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
            PRETEXT_TASKS
                .iter()
                .zip(&e.val_task_balanced_accuracy)
                .map(|(t, v)| format!("{t} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir)?;
        let mut loss = vec![(
            "train".to_string(),
            hist.iter().map(|e| e.train_loss).collect(),
        )];
        if hist.iter().all(|e| e.val_loss.is_some()) && !hist.is_empty() {
            loss.push((
                "held-out".to_string(),
                hist.iter()
                    .map(|e| e.val_loss.unwrap_or(f32::NAN))
                    .collect(),
            ));
        }
        plots::lines(
            &dir.join("pretext_loss.svg"),
            "Pretext loss",
            "weighted BCE",
            &loss,
        )?;
        if hist.iter().all(|e| e.val_task_balanced_accuracy.len() == 7) && !hist.is_empty() {
            let acc: Vec<(String, Vec<f32>)> = PRETEXT_TASKS
                .iter()
                .enumerate()
                .map(|(t, name)| {
                    (
                        name.to_string(),
                        hist.iter()
                            .map(|e| e.val_task_balanced_accuracy[t])
                            .collect(),
                    )
                })
                .collect();
            plots::lines(
                &dir.join("pretext_accuracy.svg"),
                "Pretext balanced accuracy (held-out recordings)",
                "balanced accuracy",
                &acc,
            )?;
        }
        std::fs::write(
            dir.join("pretext_history.json"),
            serde_json::to_string_pretty(&hist)?,
        )?;
        eprintln!("plots written to {}", dir.display());
    }
    eprintln!("pretext network written to {}", a.out.display());
    Ok(())
}

fn label_matrix(d: &Dataset, heads: &[usize]) -> Vec<Vec<Option<f32>>> {
    d.windows
        .iter()
        .map(|w| heads.iter().map(|&h| w.labels[h]).collect())
        .collect()
}

pub fn finetune(a: &FinetuneJob) -> Result<()> {
    let pre = PreprocessConfig::default();
    let (enc, enc_meta) = read_weights(&a.encoder)?;
    let data = dataset::labelled_from_manifest(&a.manifest, &pre)?;
    let head_names: Vec<String> = if a.heads.is_empty() {
        data.label_names.clone()
    } else {
        a.heads.clone()
    };
    let head_idx: Vec<usize> = head_names
        .iter()
        .map(|h| {
            data.label_names
                .iter()
                .position(|n| n == h)
                .with_context(|| {
                    format!(
                        "--head {h}: not a label column of {} (it has {:?})",
                        a.manifest.display(),
                        data.label_names
                    )
                })
        })
        .collect::<Result<_>>()?;
    let cfg = a.train.clone();
    eprintln!(
        "embedding {} windows with the frozen encoder…",
        data.windows.len()
    );
    let emb = train::embed(&enc, &data.samples());
    let mut labels = label_matrix(&data, &head_idx);
    // The gateway's quality gate decides what the heads learn from: the EEGMAT recordings
    // without ECG (and noisy windows) must not teach a model that noise means rest.
    let window_subjects: Vec<String> = data.windows.iter().map(|w| w.subject.clone()).collect();
    let (phys, rel) = fusion::wearer_features(&data.samples(), &window_subjects);
    for (row, p) in labels.iter_mut().zip(&phys) {
        if !p.good {
            row.iter_mut().for_each(|l| *l = None);
        }
    }
    let n_good = phys.iter().filter(|p| p.good).count();
    eprintln!(
        "quality gate: {n_good} of {} windows pass and are trained on",
        data.windows.len()
    );
    if a.fused {
        return finetune_fused(
            a,
            FusedInputs {
                enc: &enc,
                enc_meta: &enc_meta,
                data: &data,
                head_names: &head_names,
                emb: &emb,
                labels: &labels,
                phys: &phys,
                rel: &rel,
            },
        );
    }

    // Evaluation for the card: subject-disjoint folds of the same head training.
    let subjects = data.subjects();
    let mut evaluation = Vec::new();
    if a.eval_folds >= 2 && subjects.len() >= a.eval_folds {
        let folds = experiment::subject_folds(&subjects, a.eval_folds);
        let mut conf = vec![Confusion::default(); head_names.len()];
        for (fi, test) in folds.iter().enumerate() {
            let tr: Vec<usize> = (0..data.windows.len())
                .filter(|&i| !test.contains(&data.windows[i].subject))
                .collect();
            let te: Vec<usize> = (0..data.windows.len())
                .filter(|&i| test.contains(&data.windows[i].subject))
                .collect();
            let e: Vec<Vec<f32>> = tr.iter().map(|&i| emb[i].clone()).collect();
            let l: Vec<Vec<Option<f32>>> = tr.iter().map(|&i| labels[i].clone()).collect();
            let mut c = cfg.clone();
            c.progress = false;
            let (heads, _) = train::train_heads(&e, &l, &head_names, &EMOTION_HIDDEN, &c);
            let te_emb: Vec<Vec<f32>> = te.iter().map(|&i| emb[i].clone()).collect();
            let scores = train::predict_heads(&heads, &te_emb);
            for (h, cf) in conf.iter_mut().enumerate() {
                let (s, y): (Vec<f32>, Vec<bool>) = te
                    .iter()
                    .zip(&scores)
                    .filter_map(|(&i, row)| labels[i][h].map(|v| (row[h], v >= 0.5)))
                    .unzip();
                cf.add(&Confusion::from_scores(&s, &y, 0.5));
            }
            eprintln!("card evaluation fold {}/{} done", fi + 1, folds.len());
        }
        for (h, c) in conf.iter().enumerate() {
            if let Some(dir) = &a.plots {
                std::fs::create_dir_all(dir)?;
                plots::confusion(
                    &dir.join(format!("confusion_{}_by_subject.svg", head_names[h])),
                    &format!(
                        "{}: leave-subjects-out ({} folds)",
                        head_names[h],
                        folds.len()
                    ),
                    c,
                    "0",
                    "1",
                )?;
            }
            evaluation.push(Evaluation {
                head: head_names[h].clone(),
                protocol: format!(
                    "leave-subjects-out, {} folds ({} subjects), pooled confusion; heads retrained per fold on the other subjects; the encoder is the shipped self-supervised one, which saw every recording's ECG without labels",
                    folds.len(),
                    subjects.len()
                ),
                balanced_accuracy: c.balanced_accuracy(),
                accuracy: c.accuracy(),
                f1: c.macro_f1(),
                n_windows: c.n(),
                n_subjects: subjects.len(),
                auc: None,
                baselines: Default::default(),
            });
            eprintln!(
                "{}: subject-independent balanced accuracy {:.3}, accuracy {:.3}, macro-F1 {:.3} (n={})",
                head_names[h], c.balanced_accuracy(), c.accuracy(), c.macro_f1(), c.n()
            );
        }
    }

    let (heads, losses) = train::train_heads(&emb, &labels, &head_names, &EMOTION_HIDDEN, &cfg);
    let w = NetworkWeights {
        convs: enc.convs.clone(),
        heads,
        features: Vec::new(),
    };
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir)?;
        plots::lines(
            &dir.join("finetune_loss.svg"),
            "Emotion heads: training loss",
            "class-balanced BCE",
            &[("train".into(), losses)],
        )?;
    }
    write_model_and_card(
        a,
        &w,
        &enc_meta,
        CardFacts {
            subjects: &subjects,
            n_windows: n_good,
            epochs: cfg.epochs,
            seed: cfg.seed,
            description: "Sarkar & Etemad (ICASSP 2020) self-supervised ECG encoder (signal-transformation recognition), frozen, with dense emotion heads. Output: one sigmoid score per head per 10 s window.",
            evaluation,
            features: Vec::new(),
            limitations: vec![
                "EEGMAT's label is rest vs mental arithmetic: a cognitive-stress proxy for arousal, not a self-reported emotion.".into(),
                "24 young adults in one lab; not validated on other populations, on movement, or on chest-strap (Polar) ECG.".into(),
                "No valence head: no real valence labels were available, so none is shipped.".into(),
            ],
        },
    )
}

/// What [`finetune_fused`] works on (all computed once by [`finetune`]).
struct FusedInputs<'a> {
    enc: &'a NetworkWeights,
    enc_meta: &'a [(String, String)],
    data: &'a Dataset,
    head_names: &'a [String],
    emb: &'a [Vec<f32>],
    /// Per window and head; `None` for unlabelled windows and windows the quality gate fails.
    labels: &'a [Vec<Option<f32>>],
    phys: &'a [WindowPhysio],
    rel: &'a [Option<[f64; 3]>],
}

/// The meaning of each wearer-relative feature, for the card.
fn feature_cards() -> Vec<FeatureCard> {
    let how = "relative to the wearer's baseline: (value − median) / max(1.4826 × MAD, floor) over the wearer's good windows (gateway: per sensor over `[baseline] horizon_days`, after `min_windows`; training: per subject over all that subject's good windows, no labels); 0 while the wearer is still calibrating";
    WEARER_FEATURES
        .iter()
        .map(|&f| FeatureCard {
            name: f.into(),
            meaning: match f {
                "hr_relative" => format!("heart rate of the window (bpm, from all plausible R-R intervals; floor 2 bpm) {how}"),
                "rmssd_relative" => format!("RMSSD of the window's NN intervals (ms, ectopic/missed/extra beats corrected; floor 3 ms) {how}"),
                _ => format!("SDNN of the window's NN intervals (ms; floor 3 ms) {how}"),
            },
        })
        .collect()
}

/// `sigmoid(w · [embedding, features] + b)` of a one-layer fused head.
fn fused_score(h: &HeadWeights, emb: &[f32], feat: &[f64; 3]) -> f64 {
    let l = &h.layers[0];
    let t: f64 = emb
        .iter()
        .map(|&v| f64::from(v))
        .chain(feat.iter().copied())
        .zip(&l.weight)
        .map(|(x, w)| x * f64::from(*w))
        .sum::<f64>()
        + f64::from(l.bias[0]);
    1.0 / (1.0 + (-t).exp())
}

/// `finetune --fused`: one logistic head per label on the frozen embedding plus the
/// wearer-relative HR/RMSSD/SDNN; the card's evaluation is leave-one-subject-out beside the
/// heart-rate baselines on the same windows.
fn finetune_fused(a: &FinetuneJob, f: FusedInputs<'_>) -> Result<()> {
    let subjects: Vec<String> = f.data.windows.iter().map(|w| w.subject.clone()).collect();
    let names = f.data.subjects();
    let rows_of = |h: usize, keep: &dyn Fn(usize) -> bool| -> Vec<(&[f32], [f64; 3], bool)> {
        (0..subjects.len())
            .filter(|&i| keep(i))
            .filter_map(|i| Some((f.emb[i].as_slice(), f.rel[i]?, f.labels[i][h]? >= 0.5)))
            .collect()
    };
    let mut heads = Vec::new();
    let mut evaluation = Vec::new();
    for (h, name) in f.head_names.iter().enumerate() {
        // Leave-one-subject-out: each subject scored by a head fitted on the others.
        let mut probs: Vec<Option<f64>> = vec![None; subjects.len()];
        for s in &names {
            let rows = rows_of(h, &|i| &subjects[i] != s);
            if !(rows.iter().any(|r| r.2) && rows.iter().any(|r| !r.2)) {
                continue;
            }
            let head = fusion::fit_fused_head(name, &rows);
            for i in 0..subjects.len() {
                if &subjects[i] == s && f.labels[i][h].is_some() {
                    probs[i] = f.rel[i].map(|r| fused_score(&head, &f.emb[i], &r));
                }
            }
        }
        let labels: Vec<Option<bool>> = f.labels.iter().map(|l| l[h].map(|v| v >= 0.5)).collect();
        let pooled = |p: &[Option<f64>]| {
            let (s, y): (Vec<f64>, Vec<bool>) = p
                .iter()
                .zip(&labels)
                .filter_map(|(p, y)| Some(((*p)?, (*y)?)))
                .unzip();
            HeadReport::from_scores(&s, &y)
        };
        let Some(r) = pooled(&probs) else {
            anyhow::bail!("head {name}: no labelled windows with a wearer baseline to fit on");
        };
        let baselines = hr_baseline::baseline_probabilities(&subjects, f.phys, &labels)
            .into_iter()
            .filter_map(|(n, p)| Some((n.to_string(), pooled(&p)?.balanced_accuracy)))
            .collect::<std::collections::BTreeMap<_, _>>();
        let per_subject = hr_baseline::per_subject_balanced_accuracy(&probs, &labels, &subjects);
        let (m, sd) = hr_baseline::mean_sd(&per_subject);
        eprintln!(
            "{name}: leave-one-subject-out balanced accuracy {:.3} (AUC {:.3}, per subject {m:.3} ± {sd:.3}); baselines on the same windows: {baselines:?}",
            r.balanced_accuracy,
            r.auc.unwrap_or(f64::NAN)
        );
        evaluation.push(Evaluation {
            head: name.clone(),
            protocol: format!(
                "leave-one-subject-out ({} subjects), pooled confusion over the held-out windows that pass the quality gate and have a wearer baseline; the head is refitted per fold on the other subjects, each subject's baseline comes from its own unlabelled windows; the encoder is the shipped self-supervised one, which saw every recording's ECG without labels; per-subject balanced accuracy {m:.3} ± {sd:.3}",
                names.len()
            ),
            balanced_accuracy: r.balanced_accuracy,
            accuracy: r.accuracy,
            f1: r.f1,
            n_windows: r.n,
            n_subjects: names.len(),
            auc: r.auc,
            baselines,
        });
        heads.push(fusion::fit_fused_head(name, &rows_of(h, &|_| true)));
    }
    let w = NetworkWeights {
        convs: f.enc.convs.clone(),
        heads,
        features: WEARER_FEATURES.iter().map(|s| s.to_string()).collect(),
    };
    let n_used = (0..subjects.len())
        .filter(|&i| f.rel[i].is_some() && f.labels[i].iter().any(Option::is_some))
        .count();
    write_model_and_card(
        a,
        &w,
        f.enc_meta,
        CardFacts {
            subjects: &names,
            n_windows: n_used,
            epochs: 0,
            seed: a.train.seed,
            description: "Fused arousal model: Sarkar & Etemad (ICASSP 2020) self-supervised ECG encoder (frozen) and the window's heart rate and HRV relative to the wearer's own baseline, combined by one class-balanced logistic layer (L2: 1 row's worth per embedding coefficient, 1e-3 per feature). Inputs: `ecg` [N,1,2560] and `features` [N,3] (see [[features]]). Output: one sigmoid score per head per 10 s window.",
            evaluation,
            features: feature_cards(),
            limitations: vec![
                "EEGMAT's label is rest vs mental arithmetic: a cognitive-stress proxy for arousal, not a self-reported emotion.".into(),
                "24 young adults in one lab; not validated on other populations, on movement, or on chest-strap (Polar) ECG.".into(),
                "The score needs the wearer's baseline: until the gateway has `[baseline] min_windows` good windows of a wearer (5 minutes by default) the features are 0 and the state says `calibrating`.".into(),
                "On EEGMAT the encoder's embedding adds nothing measurable over wearer-relative heart rate and HRV (docs/RESULTS.md §7): the score is carried by the wearer-relative physiology.".into(),
                "No valence head: no real valence labels were available, so none is shipped.".into(),
            ],
        },
    )
}

/// What the card says beyond the weights and the job.
struct CardFacts<'a> {
    subjects: &'a [String],
    n_windows: usize,
    epochs: usize,
    seed: u64,
    description: &'a str,
    evaluation: Vec<Evaluation>,
    features: Vec<FeatureCard>,
    limitations: Vec<String>,
}

/// Write the ONNX model and its card (the same for every kind of head).
fn write_model_and_card(
    a: &FinetuneJob,
    w: &NetworkWeights,
    enc_meta: &[(String, String)],
    facts: CardFacts<'_>,
) -> Result<()> {
    let pre = PreprocessConfig::default();
    let head_names = w.head_names();
    let get = |k: &str| {
        enc_meta
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let meta = vec![
        ("affectgate.kind".to_string(), "emotion".to_string()),
        (
            "affectgate.heads".to_string(),
            serde_json::to_string(&head_names)?,
        ),
        ("affectgate.version".to_string(), a.version.clone()),
    ];
    let bytes = write_onnx(&a.out, w, &meta)?;
    let name = a
        .out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let card = ModelCard {
        name: name.clone(),
        version: a.version.clone(),
        created: crate::time::today(),
        onnx: a.out.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_string(),
        sha256: crate::model::sha256_hex(&bytes),
        description: facts.description.into(),
        input: InputSpec {
            name: crate::model::INPUT_NAME.into(),
            shape: vec![-1, 1, WINDOW_LEN as i64],
            dtype: "float32".into(),
            sample_rate_hz: crate::dsp::WINDOW_FS,
            window_s: WINDOW_LEN as f64 / crate::dsp::WINDOW_FS,
            normalisation: "z-score per person (training: per subject over all their windows; gateway: per sensor, running)".into(),
        },
        features: facts.features,
        preprocessing: Preprocessing {
            highpass_hz: pre.filter.highpass_hz,
            lowpass_hz: pre.filter.lowpass_hz,
            notch_hz: pre.filter.notch_hz,
            resampler: "affectgate dsp::Resampler to 256 Hz".into(),
            warmup_s: pre.warmup_s,
        },
        heads: head_names.iter().map(|h| head_card(h)).collect(),
        training: Training {
            pretext_data: get("affectgate.pretext_data").and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
            pretext_holdout: get("affectgate.pretext_holdout").and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
            pretext_windows: get("affectgate.pretext_windows").and_then(|s| s.parse().ok()).unwrap_or(0),
            pretext_epochs: get("affectgate.pretext_epochs").and_then(|s| s.parse().ok()).unwrap_or(0),
            pretext_val_balanced_accuracy: get("affectgate.pretext_val_balanced_accuracy")
                .and_then(|s| serde_json::from_str::<Vec<f32>>(&s).ok())
                .map(|v| PRETEXT_TASKS.iter().map(|t| t.to_string()).zip(v).collect())
                .unwrap_or_default(),
            pretext_val_auc: get("affectgate.pretext_val_auc")
                .and_then(|s| serde_json::from_str::<Vec<f64>>(&s).ok())
                .map(|v| PRETEXT_TASKS.iter().map(|t| t.to_string()).zip(v).collect())
                .unwrap_or_default(),
            finetune_data: a.manifest.display().to_string(),
            finetune_subjects: facts.subjects.to_vec(),
            finetune_windows: facts.n_windows,
            finetune_epochs: facts.epochs,
            encoder_frozen: true,
            seed: facts.seed,
            framework: "burn 0.22.1 (flex CPU backend, autodiff)".into(),
        },
        evaluation: facts.evaluation,
        limitations: facts.limitations,
    };
    let card_path = ModelCard::path_for(&a.out);
    card.save(&card_path)?;
    eprintln!(
        "emotion model written to {} (card {})",
        a.out.display(),
        card_path.display()
    );
    Ok(())
}

pub fn head_card(h: &str) -> HeadCard {
    match h {
        "arousal" => HeadCard {
            name: h.into(),
            meaning: "arousal (cognitive-stress proxy): probability that the 10 s window comes from the mental-arithmetic condition rather than rest".into(),
            positive: "high arousal (mental arithmetic task)".into(),
            negative: "low arousal (rest)".into(),
        },
        "valence" => HeadCard {
            name: h.into(),
            meaning: "valence: probability of positive valence".into(),
            positive: "positive valence".into(),
            negative: "negative valence".into(),
        },
        other => HeadCard {
            name: other.into(),
            meaning: format!("probability that label `{other}` ≥ 0.5"),
            positive: format!("{other} = 1"),
            negative: format!("{other} = 0"),
        },
    }
}
