//! Command-line interface: parsing (clap) and the commands, each a thin composition of the
//! library modules. Errors are `anyhow` with context that names the file and says what to do.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

pub mod gateway;
pub mod model;

use crate::dsp::PreprocessConfig;
use crate::infer::{Backend, Model};
use crate::learn::card::{
    self, Evaluation, HeadCard, InputSpec, ModelCard, Preprocessing, Training,
};
use crate::learn::dataset::{self, Dataset};
use crate::learn::experiment::{self, ExperimentConfig};
use crate::learn::metrics::{Confusion, HeadReport};
use crate::learn::model::{EMOTION_HIDDEN, INPUT_LEN, PRETEXT_TASKS};
use crate::learn::onnx::import_onnx;
use crate::learn::onnx::{export_onnx, NetworkWeights};
use crate::learn::plots;
use crate::learn::train::{self, TrainConfig};

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
        #[arg(long, default_value = "models/affectgate-arousal-v1.onnx")]
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
    #[command(flatten)]
    pub train: TrainArgs,
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
        Command::Model(a) => model::model(a),
        Command::Pretrain(a) => pretrain(a),
        Command::Finetune(a) => finetune(a),
        Command::Eval(a) => eval(a),
        Command::Infer(a) => infer(a),
        Command::Experiment(a) => run_experiment(a),
        Command::Personalise(a) => run_personalise(a),
        Command::RetrainWorker { spec } => {
            let spec: crate::retrain::worker::WorkerSpec =
                serde_json::from_str(&spec).context("retrain-worker --spec: not a worker spec")?;
            std::process::exit(crate::retrain::worker::worker_main(&spec));
        }
        Command::Bench(a) => bench(a),
        Command::Config {
            what: ConfigWhat::Check { file },
        } => {
            let cfg = crate::config::Config::load(&file)?;
            println!(
                "{}: ok (gateway {}, {} sensors, model {})",
                file.display(),
                cfg.gateway.id,
                cfg.sensors.len(),
                cfg.model.path.display()
            );
            Ok(())
        }
    }
}

fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // civil-from-days (Howard Hinnant), to avoid a date crate for one string
    let z = (secs / 86400) as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn write_onnx(path: &Path, w: &NetworkWeights, meta: &[(String, String)]) -> Result<Vec<u8>> {
    let bytes = export_onnx(w, meta, env!("CARGO_PKG_VERSION"))
        .with_context(|| format!("exporting {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // write-then-rename: a crash never leaves a half-written model under the final name
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes)
}

fn read_weights(path: &Path) -> Result<(NetworkWeights, Vec<(String, String)>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    import_onnx(&bytes).with_context(|| format!("{} is not an affectgate network", path.display()))
}

fn pretrain(a: PretrainArgs) -> Result<()> {
    let pre = PreprocessConfig::default();
    let data = dataset::unlabelled_from_paths(&a.data, &pre)?;
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
    let cfg = a.train.config(10);
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

fn finetune(a: FinetuneArgs) -> Result<()> {
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
    let cfg = a.train.config(60);
    eprintln!(
        "embedding {} windows with the frozen encoder…",
        data.windows.len()
    );
    let emb = train::embed(&enc, &data.samples());
    let labels = label_matrix(&data, &head_idx);

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
    };
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
    let bytes = write_onnx(&a.out, &w, &meta)?;
    let name = a
        .out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let card = ModelCard {
        name: name.clone(),
        version: a.version.clone(),
        created: today(),
        onnx: a.out.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_string(),
        sha256: card::sha256_hex(&bytes),
        description: "Sarkar & Etemad (ICASSP 2020) self-supervised ECG encoder (signal-transformation recognition), frozen, with dense emotion heads. Output: one sigmoid score per head per 10 s window.".into(),
        input: InputSpec {
            name: crate::learn::onnx::INPUT_NAME.into(),
            shape: vec![-1, 1, INPUT_LEN as i64],
            dtype: "float32".into(),
            sample_rate_hz: crate::dsp::WINDOW_FS,
            window_s: INPUT_LEN as f64 / crate::dsp::WINDOW_FS,
            normalisation: "z-score per person (training: per subject over all their windows; gateway: per sensor, running)".into(),
        },
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
            finetune_data: a.manifest.display().to_string(),
            finetune_subjects: subjects.clone(),
            finetune_windows: data.windows.len(),
            finetune_epochs: cfg.epochs,
            encoder_frozen: true,
            seed: cfg.seed,
            framework: "burn 0.22.1 (flex CPU backend, autodiff)".into(),
        },
        evaluation,
        limitations: vec![
            "EEGMAT's label is rest vs mental arithmetic: a cognitive-stress proxy for arousal, not a self-reported emotion.".into(),
            "24 young adults in one lab; not validated on other populations, on movement, or on chest-strap (Polar) ECG.".into(),
            "No valence head: no real valence labels were available, so none is shipped.".into(),
        ],
    };
    let card_path = ModelCard::path_for(&a.out);
    card.save(&card_path)?;
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir)?;
        plots::lines(
            &dir.join("finetune_loss.svg"),
            "Emotion heads: training loss",
            "class-balanced BCE",
            &[("train".into(), losses)],
        )?;
    }
    eprintln!(
        "emotion model written to {} (card {})",
        a.out.display(),
        card_path.display()
    );
    Ok(())
}

fn head_card(h: &str) -> HeadCard {
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

/// Score windows through the serving path (ort), in batches.
fn score(model: &mut Model, windows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(32) {
        let mut flat = Vec::with_capacity(chunk.len() * INPUT_LEN);
        for w in chunk {
            flat.extend_from_slice(w);
        }
        let s = model.run(&flat, chunk.len())?;
        out.extend(s.values);
    }
    Ok(out)
}

#[derive(Serialize)]
struct EvalJson {
    model: String,
    manifest: String,
    backend: String,
    subjects: usize,
    windows: usize,
    heads: std::collections::BTreeMap<String, HeadReport>,
}

fn eval(a: EvalArgs) -> Result<()> {
    let backend = a.backend.backend()?;
    let mut model = Model::load(&a.model, &backend)?;
    let data = dataset::labelled_from_manifest(&a.manifest, &PreprocessConfig::default())?;
    let scores = score(&mut model, &data.samples())?;
    let heads = model.head_names().to_vec();
    let mut report = std::collections::BTreeMap::new();
    for (hi, h) in heads.iter().enumerate() {
        let Some(li) = data.label_names.iter().position(|n| n == h) else {
            continue;
        };
        let (s, y): (Vec<f32>, Vec<bool>) = data
            .windows
            .iter()
            .zip(&scores)
            .filter_map(|(w, row)| w.labels[li].map(|v| (row[hi], v >= 0.5)))
            .unzip();
        let c = Confusion::from_scores(&s, &y, 0.5);
        if let Some(dir) = &a.plots {
            std::fs::create_dir_all(dir)?;
            plots::confusion(
                &dir.join(format!("confusion_{h}.svg")),
                &format!("{h}: confusion"),
                &c,
                "0",
                "1",
            )?;
        }
        report.insert(h.clone(), HeadReport::from(c));
    }
    if report.is_empty() {
        bail!(
            "none of the model's heads {:?} is a label column of {} ({:?})",
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
        heads: report,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "model {} on {} ({} windows, {} subjects, backend {})",
            out.model, out.manifest, out.windows, out.subjects, out.backend
        );
        println!(
            "{:<10} {:>17} {:>9} {:>9} {:>6}",
            "head", "balanced_accuracy", "accuracy", "macro_f1", "n"
        );
        for (h, r) in &out.heads {
            println!(
                "{:<10} {:>17.3} {:>9.3} {:>9.3} {:>6}",
                h, r.balanced_accuracy, r.accuracy, r.f1, r.n
            );
        }
        eprintln!("note: if this model's heads were trained on these subjects, these are training-set numbers; see the model card for the subject-independent evaluation");
    }
    Ok(())
}

#[derive(Serialize)]
struct InferWindow {
    index: usize,
    start_s: f64,
    scores: std::collections::BTreeMap<String, f32>,
}

fn infer(a: InferArgs) -> Result<()> {
    let backend = a.backend.backend()?;
    let mut model = Model::load(&a.model, &backend)?;
    let pre = PreprocessConfig::default();
    let rec = crate::source::file::read_recording(&a.file, a.signal.as_deref())?;
    let windows = crate::dsp::windows_from_recording(rec.fs_hz, &rec.samples_uv, 0, &pre)
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
    let scores = score(&mut model, &samples)?;
    let heads = model.head_names().to_vec();
    let rows: Vec<InferWindow> = windows
        .iter()
        .zip(&scores)
        .enumerate()
        .map(|(i, (w, s))| InferWindow {
            index: i,
            start_s: w.start_ns as f64 * 1e-9,
            scores: heads.iter().cloned().zip(s.iter().copied()).collect(),
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
                print!(" {:>9.3}", r.scores[h]);
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
    use crate::learn::personalise::{self, PersonaliseConfig};
    use crate::learn::retrain::RoundConfig;
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

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn synthetic_windows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..INPUT_LEN)
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
            let v =
                crate::retrain::bench::run(&model, windows, epochs, max_steps, retrain_threads)?;
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
                for _ in 0..3 {
                    m.run(&flat, bs)?;
                }
                let times: Vec<f64> = (0..runs)
                    .map(|_| {
                        let t = Instant::now();
                        let _ = m.run(&flat, bs);
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
