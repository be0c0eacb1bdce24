//! Command-line interface: parsing (clap) and the commands, each a thin composition of the
//! library modules. Errors are `anyhow` with context that names the file and says what to do.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

mod bench;
mod doctor;
pub mod gateway;
pub mod model;

use affectgate::dsp::PreprocessConfig;
use affectgate::infer::{Backend, Model};
use affectgate::learn::baseline;
use affectgate::learn::dataset::{self, Dataset};
use affectgate::learn::experiment::{self, ExperimentConfig};
use affectgate::learn::metrics::HeadReport;
use affectgate::learn::pipeline::{self, FinetuneJob, PretrainJob};
use affectgate::learn::plots;
use affectgate::learn::train::{self, TrainConfig};
use affectgate::model::WINDOW_LEN;

#[derive(Parser, Debug)]
#[command(
    name = "affectgate",
    version,
    about = "ECG → emotion scores on the edge (Sarkar & Etemad self-supervised method)"
)]
pub struct Cli {
    /// Worker threads for training and inference (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway with a config until SIGINT/SIGTERM (or until finite sources end).
    Run(gateway::RunArgs),
    /// One-command demo: embedded MQTT broker, three synthetic sensors, scores printed live.
    Demo(gateway::DemoArgs),
    /// Inspect or export the window store.
    Store(gateway::StoreArgs),
    /// The gateway's model registry: list, show, promote, rollback.
    Model(model::ModelArgs),
    /// List nearby BLE devices: name, address, RSSI and the profiles this gateway can read.
    Scan(gateway::ScanArgs),
    /// Check what the gateway needs (BlueZ and the adapter, the broker, the model, ONNX
    /// Runtime, the store, the clock, the fleet repository); each failure with its fix.
    Doctor(doctor::DoctorArgs),
    /// Self-supervised pretraining (signal-transformation recognition) on unlabelled ECG.
    Pretrain(PretrainArgs),
    /// Train emotion heads on a frozen pretrained encoder from a labelled manifest.
    Finetune(FinetuneArgs),
    /// Evaluate a model on a labelled manifest (balanced accuracy, accuracy, macro-F1).
    Eval(EvalArgs),
    /// Score every 10 s window of a recording.
    Infer(InferArgs),
    /// The paper's comparison, subject-independent: SSL vs supervised vs heart-rate baseline.
    Experiment(ExperimentArgs),
    /// Leave-one-subject-out personalisation: what one on-gateway retraining round (with a
    /// handful of self-reports) does for a person the model never saw.
    Personalise(PersonaliseArgs),
    /// Internal: run a staged retraining round (the gateway starts this; see retrain::worker).
    #[command(hide = true)]
    RetrainWorker {
        /// The round's spec (JSON).
        #[arg(long)]
        spec: String,
    },
    /// Measure training-step and inference speed (prints one JSON object).
    Bench(BenchArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        what: ConfigWhat,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigWhat {
    /// Parse and validate a config file (plugin.toml); exit 1 with the key at fault.
    Check { file: PathBuf },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Pretext training step (batch 32, Adam) and burn forward pass, on random windows.
    Train {
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Inference ms/window through ort with the chosen backend, batch 1 and batch 32.
    Infer {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// One retraining round on a store of N synthetic windows: wall time and peak memory.
    Retrain {
        #[arg(long, default_value = "models/affectgate-arousal-v2.onnx")]
        model: PathBuf,
        #[arg(long, default_value_t = 1000)]
        windows: usize,
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Cap pretext steps per epoch (default: full epochs).
        #[arg(long)]
        max_steps: Option<usize>,
        #[arg(long, default_value_t = 1)]
        retrain_threads: usize,
    },
    #[command(flatten)]
    Gateway(gateway::GatewayBench),
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Passes over the training data.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Cap the optimiser steps per epoch (smoke runs).
    #[arg(long)]
    pub max_steps: Option<usize>,
}

impl TrainArgs {
    fn config(&self, default_epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs.unwrap_or(default_epochs),
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            max_steps_per_epoch: self.max_steps,
            progress: true,
        }
    }
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Recordings or folders of recordings (EDF, WFDB .hea, CSV). Labels are not used.
    #[arg(required = true)]
    pub data: Vec<PathBuf>,
    /// Output: the pretext network as ONNX (7 heads + embedding), input to `finetune`.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Fraction of recordings held out to monitor pretext accuracy (by recording).
    #[arg(long, default_value_t = 0.15)]
    pub val_frac: f64,
    /// Continue from an existing pretext or emotion model (ONNX) instead of a fresh network.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Folder for loss and accuracy plots (SVG) and the history (JSON).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    #[command(flatten)]
    pub train: TrainArgs,
}

impl PretrainArgs {
    fn job(self) -> PretrainJob {
        PretrainJob {
            train: self.train.config(10),
            data: self.data,
            out: self.out,
            val_frac: self.val_frac,
            init: self.init,
            plots: self.plots,
        }
    }
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// Pretrained encoder (the ONNX written by `pretrain`).
    #[arg(long)]
    pub encoder: PathBuf,
    /// Labelled manifest CSV (file, subject, one column per label).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output emotion model (ONNX); its card is written beside it as <name>.card.toml.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Label columns to train heads for (default: every label column of the manifest).
    #[arg(long = "head")]
    pub heads: Vec<String>,
    /// Subject-disjoint folds for the evaluation recorded in the model card (0 = none).
    #[arg(long, default_value_t = 6)]
    pub eval_folds: usize,
    /// Model version written to the card.
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Fused heads: one logistic layer on the embedding and the wearer-relative heart rate
    /// and HRV (a second model input `features`; evaluated leave-one-subject-out beside the
    /// heart-rate baselines). The shipped model is fused.
    #[arg(long)]
    pub fused: bool,
    #[command(flatten)]
    pub train: TrainArgs,
}

impl FinetuneArgs {
    fn job(self) -> FinetuneJob {
        FinetuneJob {
            train: self.train.config(60),
            encoder: self.encoder,
            manifest: self.manifest,
            out: self.out,
            heads: self.heads,
            eval_folds: self.eval_folds,
            version: self.version,
            plots: self.plots,
            fused: self.fused,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Inference backend: `tract` (pure Rust, default) or `onnxruntime` (native library).
    #[arg(long, default_value = "tract")]
    pub backend: String,
    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH, then the onnxruntime Python wheel).
    #[arg(long)]
    pub ort_dylib: Option<PathBuf>,
}

impl BackendArgs {
    pub fn backend(&self) -> Result<Backend> {
        match self.backend.as_str() {
            "tract" => Ok(Backend::Tract),
            "onnxruntime" | "ort" => Ok(Backend::OnnxRuntime {
                dylib: self.ort_dylib.clone(),
            }),
            other => bail!("--backend {other}: unknown backend (use `tract` or `onnxruntime`)"),
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub manifest: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write a confusion-matrix SVG per head into this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Args, Debug)]
pub struct InferArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Recording (EDF, WFDB .hea, CSV).
    pub file: PathBuf,
    /// Signal label to use in multi-signal files (default: the first ECG signal).
    #[arg(long)]
    pub signal: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// The data of the EEGMAT studies (`experiment`, `personalise`).
#[derive(Args, Debug)]
pub struct StudyDataArgs {
    /// Labelled manifest (CSV: file, subject, label columns).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Extra unlabelled recordings (other people), for self-supervised pretraining only.
    #[arg(long)]
    pub unlabelled: Vec<PathBuf>,
    /// The label column evaluated.
    #[arg(long, default_value = "arousal")]
    pub head: String,
}

impl StudyDataArgs {
    /// (labelled dataset, extra unlabelled dataset), preprocessed like the gateway.
    fn load(&self) -> Result<(Dataset, Dataset)> {
        let pre = PreprocessConfig::default();
        let data = dataset::labelled_from_manifest(&self.manifest, &pre)?;
        let extra = if self.unlabelled.is_empty() {
            Dataset::default()
        } else {
            dataset::unlabelled_from_paths(&self.unlabelled, &pre)?
        };
        Ok((data, extra))
    }
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub data: StudyDataArgs,
    #[arg(long, default_value_t = 4)]
    pub folds: usize,
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,0.25,1.0")]
    pub fractions: Vec<f64>,
    #[arg(long, default_value_t = 6)]
    pub pretext_epochs: usize,
    #[arg(long, default_value_t = 60)]
    pub head_epochs: usize,
    #[arg(long, default_value_t = 15)]
    pub supervised_epochs: usize,
    /// Cap optimiser steps per epoch (smoke runs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write the full report (JSON) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PersonaliseArgs {
    #[command(flatten)]
    pub data: StudyDataArgs,
    /// Encoder folds: each fold's encoder is pretrained without that fold's subjects.
    #[arg(long, default_value_t = 6)]
    pub folds: usize,
    /// Fused base models (embedding + wearer-relative HR/HRV, as the shipped v2) instead of
    /// the paper's dense head; only windows that pass the quality gate are evaluated.
    #[arg(long)]
    pub fused: bool,
    /// Pretraining epochs of each fold's encoder (from scratch, Adam 1e-3).
    #[arg(long, default_value_t = 2)]
    pub pretext_epochs: usize,
    /// Epochs of each subject's base head (as the shipped model's: 60).
    #[arg(long, default_value_t = 60)]
    pub head_epochs: usize,
    /// Self-reports per condition (rest, task).
    #[arg(long, default_value_t = 2)]
    pub reports_per_class: usize,
    /// Pretext epochs of the retraining round (the gateway's default: 2).
    #[arg(long, default_value_t = 2)]
    pub round_epochs: usize,
    /// Learning rate of the round's pretext stage (the gateway's default: 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    pub round_lr: f64,
    /// Only these subjects (repeatable; default all).
    #[arg(long)]
    pub subject: Vec<String>,
    /// Cap optimiser steps per epoch of every pretext training (smoke runs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Per-subject results, one JSON line each, appended as they finish; subjects already
    /// in the file are skipped (resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Where fold encoders are cached (default: <out>.encoders/).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring the thread pool")?;
    }
    match cli.command {
        Command::Run(a) => gateway::run(a),
        Command::Demo(a) => gateway::demo(a),
        Command::Store(a) => gateway::store(a),
        Command::Scan(a) => gateway::scan(a),
        Command::Doctor(a) => doctor::doctor(a),
        Command::Model(a) => model::model(a),
        Command::Pretrain(a) => pipeline::pretrain(&a.job()),
        Command::Finetune(a) => pipeline::finetune(&a.job()),
        Command::Eval(a) => eval(a),
        Command::Infer(a) => infer(a),
        Command::Experiment(a) => run_experiment(a),
        Command::Personalise(a) => run_personalise(a),
        Command::RetrainWorker { spec } => {
            let spec: affectgate::retrain::worker::WorkerSpec =
                serde_json::from_str(&spec).context("retrain-worker --spec: not a worker spec")?;
            std::process::exit(affectgate::retrain::worker::worker_main(&spec));
        }
        Command::Bench(a) => bench(a),
        Command::Config {
            what: ConfigWhat::Check { file },
        } => {
            // Everything `run` checks before it connects: the file, the model (it loads, matches
            // its card and gives finite scores), the TLS files and the store location.
            let cfg = affectgate::config::Config::load(&file)?;
            let model = Model::load(&cfg.model.path, &cfg.model.backend)
                .with_context(|| format!("{}: model.path", file.display()))?;
            if let Some(t) = &cfg.mqtt.tls {
                affectgate::mqtt::TlsFiles::load(t)
                    .with_context(|| format!("{}: mqtt.tls", file.display()))?;
            }
            let store = &cfg.store.path;
            if store.exists() && !store.is_dir() {
                bail!(
                    "{}: store.path {} is a file; give a directory (it is created if missing)",
                    file.display(),
                    store.display()
                );
            }
            println!(
                "{}: ok (gateway {}, {} sensors, model {} loads with {} heads, store {})",
                file.display(),
                cfg.gateway.id,
                cfg.sensors.len(),
                cfg.model.path.display(),
                model.head_names().len(),
                store.display()
            );
            Ok(())
        }
    }
}

/// Score windows through the serving path (ort), in batches.
/// Scores of every window. A fused model reads each window's wearer-relative features
/// (`features[i]`); windows without them (no wearer baseline, or a window the quality gate
/// fails) are not scored by a fused model (`None`), as a model that needs the wearer's
/// baseline has nothing honest to say about them.
fn score(
    model: &mut Model,
    windows: &[Vec<f32>],
    features: &[Option<[f64; 3]>],
) -> Result<Vec<Option<Vec<f32>>>> {
    let fused = !model.feature_names().is_empty();
    affectgate::model::check_feature_names(model.feature_names())
        .map_err(|e| anyhow::anyhow!("{}: {e}", model.source()))?;
    let idx: Vec<usize> = (0..windows.len())
        .filter(|&i| !fused || features[i].is_some())
        .collect();
    let mut out = vec![None; windows.len()];
    for chunk in idx.chunks(32) {
        let mut flat = Vec::with_capacity(chunk.len() * WINDOW_LEN);
        let mut feats = Vec::new();
        for &i in chunk {
            flat.extend_from_slice(&windows[i]);
            if fused {
                feats.extend(features[i].iter().flatten().map(|&v| v as f32));
            }
        }
        let s = model.run_with(&flat, &feats, chunk.len())?;
        for (&i, v) in chunk.iter().zip(s.values) {
            out[i] = Some(v);
        }
    }
    Ok(out)
}

/// The model's embedding of every window (`None` if it has no `embedding` output).
fn embed_all(model: &mut Model, windows: &[Vec<f32>]) -> Result<Option<Vec<Vec<f64>>>> {
    if !model.has_embedding() {
        return Ok(None);
    }
    let f = model.feature_names().len();
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(32) {
        let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
        // The embedding does not depend on the features: zeros will do.
        let s = model.run_with(&flat, &vec![0.0; f * chunk.len()], chunk.len())?;
        let e = s
            .embedding
            .context("the model declared an embedding but returned none")?;
        out.extend(
            e.into_iter()
                .map(|r| r.into_iter().map(f64::from).collect::<Vec<_>>()),
        );
    }
    Ok(Some(out))
}

#[derive(Serialize)]
struct EvalJson {
    model: String,
    manifest: String,
    backend: String,
    subjects: usize,
    /// Windows cut from the manifest's recordings.
    windows: usize,
    /// Windows that pass the quality gate: the only ones evaluated (the gateway scores no
    /// others).
    windows_good: usize,
    heads: std::collections::BTreeMap<String, EvalHead>,
}

/// The model's numbers for one head, and beside them the baselines' on the same windows.
#[derive(Serialize)]
struct EvalHead {
    #[serde(flatten)]
    model: HeadReport,
    /// Leave-one-subject-out heart-rate baselines (see `learn::baseline`).
    baselines: std::collections::BTreeMap<String, HeadReport>,
    /// Leave-one-subject-out arms on the model's frozen embedding (see `learn::fusion`):
    /// `ssl`, `ssl_relative`, `fused`, `fused_relative`. Empty if the model has no embedding.
    arms: std::collections::BTreeMap<String, HeadReport>,
    /// Balanced accuracy per subject (subjects with both classes), per scorer (`model`, each
    /// baseline and each arm).
    per_subject: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

fn eval(a: EvalArgs) -> Result<()> {
    let backend = a.backend.backend()?;
    let mut model = Model::load(&a.model, &backend)?;
    let data = dataset::labelled_from_manifest(&a.manifest, &PreprocessConfig::default())?;
    let heads = model.head_names().to_vec();
    let subjects: Vec<String> = data.windows.iter().map(|w| w.subject.clone()).collect();
    let (phys, rel) = affectgate::learn::fusion::wearer_features(&data.samples(), &subjects);
    let scores = score(&mut model, &data.samples(), &rel)?;
    let good_windows: Vec<bool> = phys.iter().map(|p| p.good).collect();
    let embeddings = embed_all(&mut model, &data.samples())?;
    let good = phys.iter().filter(|p| p.good).count();
    let mut report = std::collections::BTreeMap::new();
    for (hi, h) in heads.iter().enumerate() {
        let Some(li) = data.label_names.iter().position(|n| n == h) else {
            continue;
        };
        // Labels of the windows the gateway would score (bad windows count as unlabelled).
        let labels: Vec<Option<bool>> = data
            .windows
            .iter()
            .zip(&phys)
            .map(|(w, p)| {
                if p.good {
                    w.labels[li].map(|v| v >= 0.5)
                } else {
                    None
                }
            })
            .collect();
        let pairs = |probs: &[Option<f64>]| -> (Vec<f64>, Vec<bool>) {
            probs
                .iter()
                .zip(&labels)
                .filter_map(|(p, y)| Some(((*p)?, (*y)?)))
                .unzip()
        };
        let model_probs: Vec<Option<f64>> = scores
            .iter()
            .map(|r| r.as_ref().map(|r| f64::from(r[hi])))
            .collect();
        let (s, y) = pairs(&model_probs);
        let Some(model_report) = HeadReport::from_scores(&s, &y) else {
            continue;
        };
        if let Some(dir) = &a.plots {
            std::fs::create_dir_all(dir)?;
            plots::confusion(
                &dir.join(format!("confusion_{h}.svg")),
                &format!("{h}: confusion"),
                &model_report.confusion,
                "0",
                "1",
            )?;
        }
        let mut baselines = std::collections::BTreeMap::new();
        let mut per_subject = std::collections::BTreeMap::new();
        per_subject.insert(
            "model".to_string(),
            baseline::per_subject_balanced_accuracy(&model_probs, &labels, &subjects),
        );
        for (name, probs) in baseline::baseline_probabilities(&subjects, &phys, &labels) {
            let (s, y) = pairs(&probs);
            if let Some(r) = HeadReport::from_scores(&s, &y) {
                baselines.insert(name.to_string(), r);
                per_subject.insert(
                    name.to_string(),
                    baseline::per_subject_balanced_accuracy(&probs, &labels, &subjects),
                );
            }
        }
        let mut arms = std::collections::BTreeMap::new();
        if let Some(emb) = &embeddings {
            for (name, probs) in affectgate::learn::fusion::fusion_probabilities(
                &subjects,
                &good_windows,
                &rel,
                emb,
                &labels,
                affectgate::learn::fusion::EMBEDDING_L2_PER_ROW,
            ) {
                let (s, y) = pairs(&probs);
                if let Some(r) = HeadReport::from_scores(&s, &y) {
                    arms.insert(name.to_string(), r);
                    per_subject.insert(
                        name.to_string(),
                        baseline::per_subject_balanced_accuracy(&probs, &labels, &subjects),
                    );
                }
            }
        }
        report.insert(
            h.clone(),
            EvalHead {
                model: model_report,
                baselines,
                arms,
                per_subject,
            },
        );
    }
    if report.is_empty() {
        bail!(
            "none of the model's heads {:?} is a label column of {} ({:?}) with windows that pass the quality gate",
            heads,
            a.manifest.display(),
            data.label_names
        );
    }
    let out = EvalJson {
        model: a.model.display().to_string(),
        manifest: a.manifest.display().to_string(),
        backend: a.backend.backend.clone(),
        subjects: data.subjects().len(),
        windows: data.windows.len(),
        windows_good: good,
        heads: report,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "model {} on {} ({} windows, {} pass the quality gate, {} subjects, backend {})",
            out.model, out.manifest, out.windows, out.windows_good, out.subjects, out.backend
        );
        println!(
            "{:<10} {:<26} {:>17} {:>6} {:>9} {:>9} {:>6}  per subject: mean ± sd (subjects)",
            "head", "scorer", "balanced_accuracy", "auc", "accuracy", "macro_f1", "n",
        );
        let fmt_auc = |r: &HeadReport| r.auc.map_or("-".into(), |v| format!("{v:.3}"));
        for (h, e) in &out.heads {
            let rows = std::iter::once(("model", "model".to_string(), &e.model))
                .chain(
                    e.baselines
                        .iter()
                        .map(|(n, r)| (n.as_str(), format!("baseline {n}"), r)),
                )
                .chain(
                    e.arms
                        .iter()
                        .map(|(n, r)| (n.as_str(), format!("loso {n}"), r)),
                );
            for (key, name, r) in rows {
                let subj = e.per_subject.get(key).map_or("-".to_string(), |v| {
                    let (m, sd) = baseline::mean_sd(v);
                    format!("{m:.3} ± {sd:.3} ({})", v.len())
                });
                println!(
                    "{:<10} {:<26} {:>17.3} {:>6} {:>9.3} {:>9.3} {:>6}  {}",
                    h,
                    name,
                    r.balanced_accuracy,
                    fmt_auc(r),
                    r.accuracy,
                    r.f1,
                    r.n,
                    subj
                );
            }
        }
        eprintln!("note: baselines and `loso` arms (logistic heads on this model's frozen embedding, see learn::fusion) are leave-one-subject-out; the model's numbers are training-set numbers if its heads were trained on these subjects (see the model card for its subject-independent evaluation)");
    }
    Ok(())
}

#[derive(Serialize)]
struct InferWindow {
    index: usize,
    start_s: f64,
    /// `null` where a fused model has no wearer baseline or the window fails the quality gate.
    scores: std::collections::BTreeMap<String, Option<f32>>,
}

fn infer(a: InferArgs) -> Result<()> {
    let backend = a.backend.backend()?;
    let mut model = Model::load(&a.model, &backend)?;
    let pre = PreprocessConfig::default();
    let rec = affectgate::source::file::read_recording(&a.file, a.signal.as_deref())?;
    let windows = affectgate::dsp::windows_from_recording(rec.fs_hz, &rec.samples_uv, 0, &pre)
        .with_context(|| format!("preprocessing {}", a.file.display()))?;
    if windows.is_empty() {
        bail!(
            "{}: shorter than one 10 s window after the {} s filter warm-up",
            a.file.display(),
            pre.warmup_s
        );
    }
    let mut samples: Vec<Vec<f32>> = windows.iter().map(|w| w.samples.clone()).collect();
    dataset::zscore_person(samples.iter_mut());
    // The recording is one wearer: a fused model's baseline comes from its good windows.
    let one_wearer = vec![a.file.display().to_string(); samples.len()];
    let (_, rel) = affectgate::learn::fusion::wearer_features(&samples, &one_wearer);
    let scores = score(&mut model, &samples, &rel)?;
    let heads = model.head_names().to_vec();
    let rows: Vec<InferWindow> = windows
        .iter()
        .zip(&scores)
        .enumerate()
        .map(|(i, (w, s))| InferWindow {
            index: i,
            start_s: w.start_ns as f64 * 1e-9,
            scores: heads
                .iter()
                .enumerate()
                .map(|(h, name)| (name.clone(), s.as_ref().map(|s| s[h])))
                .collect(),
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        print!("{:>6} {:>9}", "window", "start_s");
        for h in &heads {
            print!(" {h:>9}");
        }
        println!();
        for r in &rows {
            print!("{:>6} {:>9.1}", r.index, r.start_s);
            for h in &heads {
                match r.scores[h] {
                    Some(v) => print!(" {v:>9.3}"),
                    None => print!(" {:>9}", "-"),
                }
            }
            println!();
        }
    }
    Ok(())
}

/// Training settings of the EEGMAT studies: the defaults (batch 32, Adam 1e-3) with the
/// study's epochs, seed and step cap.
fn study_training(
    epochs: usize,
    seed: u64,
    max_steps: Option<usize>,
    progress: bool,
) -> TrainConfig {
    TrainConfig {
        epochs,
        seed,
        max_steps_per_epoch: max_steps,
        progress,
        ..TrainConfig::default()
    }
}

fn run_experiment(a: ExperimentArgs) -> Result<()> {
    let (data, extra) = a.data.load()?;
    let extra = extra.samples();
    let tc = |epochs, seed| study_training(epochs, seed, a.max_steps, true);
    let cfg = ExperimentConfig {
        folds: a.folds,
        fractions: a.fractions.clone(),
        pretext: tc(a.pretext_epochs, a.seed),
        heads: tc(a.head_epochs, a.seed + 1),
        supervised: tc(a.supervised_epochs, a.seed + 2),
        baseline: tc(a.head_epochs, a.seed + 3),
        head: a.data.head.clone(),
    };
    let report = experiment::run(&data, &extra, &cfg, |m| eprintln!("{m}"))?;
    println!("{}", experiment::markdown(&report));
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn run_personalise(a: PersonaliseArgs) -> Result<()> {
    use affectgate::learn::personalise::{self, PersonaliseConfig};
    use affectgate::learn::round::RoundConfig;
    let (data, extra) = a.data.load()?;
    let tc = |epochs, seed| study_training(epochs, seed, a.max_steps, false);
    let cfg = PersonaliseConfig {
        head: a.data.head.clone(),
        folds: a.folds,
        pretext: tc(a.pretext_epochs, a.seed),
        heads: TrainConfig {
            max_steps_per_epoch: None,
            ..tc(a.head_epochs, a.seed + 1)
        },
        pack_pretext: 300,
        reports_per_class: a.reports_per_class,
        round: RoundConfig {
            pretext_epochs: a.round_epochs,
            lr: a.round_lr,
            max_steps_per_epoch: a.max_steps,
            seed: a.seed,
            ..RoundConfig::default()
        },
        fused: a.fused,
    };
    let cache = a
        .cache
        .clone()
        .unwrap_or_else(|| personalise::default_cache(&a.out));
    eprintln!(
        "personalisation, leave-one-subject-out: {} windows of {} subjects, {} extra unlabelled windows; results → {}",
        data.windows.len(),
        data.subjects().len(),
        extra.windows.len(),
        a.out.display()
    );
    let t0 = std::time::Instant::now();
    let results = personalise::run(&data, &extra, &cfg, &a.subject, &a.out, Some(&cache), |m| {
        eprintln!("[{:>6.0} s] {m}", t0.elapsed().as_secs_f64())
    })?;
    println!("{}", personalise::markdown(&results));
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

use affectgate::sys::cpu_model;

fn synthetic_windows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..WINDOW_LEN)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        })
        .collect()
}

fn bench(a: BenchArgs) -> Result<()> {
    use std::time::Instant;
    let threads = rayon::current_num_threads();
    match a.what {
        BenchWhat::Gateway(b) => return gateway::bench(b),
        BenchWhat::Retrain {
            model,
            windows,
            epochs,
            max_steps,
            retrain_threads,
        } => {
            let v = bench::retrain::run(&model, windows, epochs, max_steps, retrain_threads)?;
            println!("{v}");
            return Ok(());
        }
        BenchWhat::Train { steps, batch } => {
            let windows = synthetic_windows(batch * 2, 1);
            let cfg = TrainConfig {
                epochs: 1,
                batch,
                lr: 1e-3,
                seed: 1,
                max_steps_per_epoch: Some(1),
                progress: false,
            };
            // One step per call measures the whole step, data transformations included.
            let (mut w, _) = train::pretrain(&windows, &[], &cfg, None);
            let mut times = Vec::new();
            for _ in 0..steps + 2 {
                let t = Instant::now();
                let (nw, _) = train::pretrain(&windows, &[], &cfg, Some(&w));
                times.push(t.elapsed().as_secs_f64());
                w = nw;
            }
            let times = times[2..].to_vec(); // warm-up
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let med = median(times.clone());
            let fwd1: Vec<f64> = (0..20)
                .map(|_| {
                    let t = Instant::now();
                    let _ = train::predict(&w, &windows[..1]);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let out = serde_json::json!({
                "framework": "burn 0.22.1 flex (autodiff)",
                "train_step_s": {"median": med, "mean": mean, "n": times.len(), "batch": batch},
                "windows_per_s": batch as f64 / med,
                "forward_b1_ms": median(fwd1),
                "threads": threads,
                "cpu": cpu_model(),
            });
            println!("{out}");
        }
        BenchWhat::Infer {
            model,
            runs,
            backend,
        } => {
            let b = backend.backend()?;
            let mut m = Model::load(&model, &b)?;
            let windows = synthetic_windows(32, 2);
            let mut res = serde_json::Map::new();
            for bs in [1usize, 32] {
                let mut flat = Vec::new();
                for w in &windows[..bs] {
                    flat.extend_from_slice(w);
                }
                // A fused model's features: zeros, as for a calibrating wearer.
                let feats = vec![0.0f32; bs * m.feature_names().len()];
                for _ in 0..3 {
                    m.run_with(&flat, &feats, bs)?;
                }
                let times: Vec<f64> = (0..runs)
                    .map(|_| {
                        let t = Instant::now();
                        let _ = m.run_with(&flat, &feats, bs);
                        t.elapsed().as_secs_f64() * 1e3 / bs as f64
                    })
                    .collect();
                res.insert(
                    format!("b{bs}_ms_per_window"),
                    serde_json::json!(median(times)),
                );
            }
            let out = serde_json::json!({
                "backend": backend.backend,
                "model": model.display().to_string(),
                "runs": runs,
                "results": res,
                "threads_rayon": threads,
                "cpu": cpu_model(),
            });
            println!("{out}");
        }
    }
    Ok(())
}
