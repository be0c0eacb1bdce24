//! Model cards: the TOML sidecar shipped next to every ONNX model
//! (`models/<name>.onnx` + `models/<name>.card.toml`).
//!
//! The card is the model's contract with the gateway (input spec, sample rate,
//! preprocessing, which heads exist and what a score means) and its honesty record (what data
//! it saw, how it was evaluated, by subject). `sha256` binds the card to the exact ONNX bytes;
//! loading a card whose hash does not match its model is an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub name: String,
    pub version: String,
    pub created: String,
    /// File name of the ONNX model, relative to the card.
    pub onnx: String,
    /// sha256 of the ONNX file (hex).
    pub sha256: String,
    pub description: String,
    pub input: InputSpec,
    pub preprocessing: Preprocessing,
    pub heads: Vec<HeadCard>,
    pub training: Training,
    #[serde(default)]
    pub evaluation: Vec<Evaluation>,
    #[serde(default)]
    pub limitations: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub sample_rate_hz: f64,
    pub window_s: f64,
    pub normalisation: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    pub highpass_hz: f32,
    pub lowpass_hz: Option<f32>,
    pub notch_hz: Option<f32>,
    pub resampler: String,
    pub warmup_s: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadCard {
    /// ONNX output name.
    pub name: String,
    pub meaning: String,
    /// What a score near 1 means.
    pub positive: String,
    /// What a score near 0 means.
    pub negative: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Unlabelled recordings the encoder was trained on during self-supervised pretraining.
    pub pretext_data: Vec<String>,
    /// Recordings held out from pretraining to measure pretext accuracy (never trained on).
    #[serde(default)]
    pub pretext_holdout: Vec<String>,
    pub pretext_windows: usize,
    pub pretext_epochs: usize,
    /// Final pretext balanced accuracy per transformation on held-out windows.
    #[serde(default)]
    pub pretext_val_balanced_accuracy: std::collections::BTreeMap<String, f32>,
    /// Labelled data the heads saw (manifest and subjects).
    pub finetune_data: String,
    pub finetune_subjects: Vec<String>,
    pub finetune_windows: usize,
    pub finetune_epochs: usize,
    pub encoder_frozen: bool,
    pub seed: u64,
    pub framework: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub head: String,
    /// e.g. "leave-subjects-out, 6 folds of 4 subjects, EEGMAT".
    pub protocol: String,
    pub balanced_accuracy: f64,
    pub accuracy: f64,
    pub f1: f64,
    pub n_windows: usize,
    pub n_subjects: usize,
}

impl ModelCard {
    /// Path of the card that belongs to `model` (`x.onnx` → `x.card.toml`).
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("card.toml")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model card {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid model card {}", path.display()))
    }

    /// Load the card beside `model` and check that it describes these exact bytes.
    pub fn load_for_model(model: &Path) -> Result<Self> {
        let card_path = Self::path_for(model);
        let card = Self::load(&card_path)?;
        let bytes = std::fs::read(model)
            .with_context(|| format!("cannot read model {}", model.display()))?;
        let sha = sha256_hex(&bytes);
        if sha != card.sha256 {
            bail!(
                "model card {} does not match {}: sha256 {} in the card, {} on disk \
                 (the model was replaced or damaged; re-export it or restore the shipped file)",
                card_path.display(),
                model.display(),
                card.sha256,
                sha
            );
        }
        Ok(card)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("serialising model card")?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

pub use super::onnx::sha256_hex;
