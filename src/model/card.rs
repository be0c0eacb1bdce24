//! Model cards: the TOML sidecar shipped next to every ONNX model
//! (`models/<name>.onnx` + `models/<name>.card.toml`).
//!
//! The card is the model's contract with the gateway (input spec, sample rate,
//! preprocessing, which heads exist and what a score means) and its honesty record (what data
//! it saw, how it was evaluated, by subject). `sha256` binds the card to the exact ONNX bytes;
//! loading a card whose hash does not match its model is an error.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sha256_hex;
use crate::fs::{atomic_write, FsError};

/// A model card that cannot be read, parsed, written or does not match its model.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("cannot read model card {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model card {}: {source}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("model card {}: {reason}", .path.display())]
    Mismatch { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] FsError),
}

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
    /// A fused model's second input (`features [N, F]`), column by column, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureCard>,
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

/// One column of a fused model's `features` input.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureCard {
    pub name: String,
    /// Exactly how the value is computed.
    pub meaning: String,
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
    /// Final pretext AUC per transformation on held-out windows (threshold-free: a head that
    /// ranks well can still show balanced accuracy 0.5, see docs/RESULTS.md §8).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pretext_val_auc: std::collections::BTreeMap<String, f64>,
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
    /// Area under the ROC curve of the pooled held-out scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// Balanced accuracy of the simplest baselines on the same windows with the same
    /// protocol (`hr`, `hr_relative`, `hr_hrv_relative`): what the model adds over them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub baselines: std::collections::BTreeMap<String, f64>,
}

impl ModelCard {
    /// Path of the card that belongs to `model` (`x.onnx` → `x.card.toml`).
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("card.toml")
    }

    pub fn load(path: &Path) -> Result<Self, CardError> {
        let text = std::fs::read_to_string(path).map_err(|source| CardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| CardError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Load the card beside `model` and check that it describes these exact bytes.
    pub fn load_for_model(model: &Path) -> Result<Self, CardError> {
        let card_path = Self::path_for(model);
        let card = Self::load(&card_path)?;
        let bytes = std::fs::read(model).map_err(|source| CardError::Read {
            path: model.to_path_buf(),
            source,
        })?;
        card.check(&card_path, model, &bytes)?;
        Ok(card)
    }

    /// Check that this card (read from `card_path`) describes `model_bytes` of `model`.
    pub fn check(
        &self,
        card_path: &Path,
        model: &Path,
        model_bytes: &[u8],
    ) -> Result<(), CardError> {
        let sha = sha256_hex(model_bytes);
        if sha != self.sha256 {
            return Err(CardError::Mismatch {
                path: card_path.to_path_buf(),
                reason: format!(
                    "does not match {}: sha256 {} in the card, {} on disk (the model was \
                     replaced or damaged; re-export it or restore the shipped file)",
                    model.display(),
                    self.sha256,
                    sha
                ),
            });
        }
        Ok(())
    }

    /// The card as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a model card always serialises")
    }

    /// Write the card atomically (a crash leaves the old card or the new one).
    pub fn save(&self, path: &Path) -> Result<(), CardError> {
        Ok(atomic_write(path, self.to_toml().as_bytes())?)
    }
}
