//! # affectgate
//!
//! An edge-gateway plugin that turns ECG from BLE chest straps into emotion scores for home
//! automation, and keeps improving on the gateway with the self-supervised method of Sarkar &
//! Etemad ("Self-supervised learning for ECG-based emotion recognition", ICASSP 2020).
//!
//! ## Layout
//!
//! The modules follow the data flow:
//!
//! ```text
//! source/  where ECG comes from. `source::file` reads EDF/EDF+, WFDB and CSV recordings
//!   │      (one reader for training, evaluation and file replay); `source::synthetic`
//!   │      generates ECG (ECGSYN model) for demos and load tests, with true beat times.
//! dsp/     biquad high-pass/low-pass/notch → resample to 256 Hz → 10 s `Window`s →
//!   │      z-score, plus R-peak detection and HR/HRV. Streaming with state carried across
//!   │      blocks, so training and the live gateway run the *same* code.
//!   ├──► infer/  ONNX inference through `ort` with two back-ends chosen at run time:
//!   │            pure-Rust tract (default, no native library) or ONNX Runtime (dlopen).
//!   └──► learn/  the paper's method: six signal transformations, the signal-transformation
//!                recognition network and the emotion network in burn, training loops,
//!                metrics, experiments, ONNX export and model cards.
//! ```
//!
//! [`config`] assembles the one configuration (`plugin.toml`: manifest + defaults) from the
//! components' own config structs and validates it as a whole.
//!
//! The binary (`src/main.rs`, commands in [`cli`]) is a thin layer over these modules:
//! `pretrain`, `finetune`, `eval`, `infer`, `experiment`, `bench`.
//!
//! ## Decisions worth knowing
//! - **One window type** ([`dsp::Window`], 2560 samples at 256 Hz) and one preprocessing path
//!   ([`dsp::Preprocessor`]) for offline training and live scoring: a model can only be as
//!   good on the gateway as the match between what it was trained on and what it is fed.
//! - **Training in burn, serving in ort.** burn (autodiff over the pure-Rust `flex` backend) is
//!   the fastest correct Rust trainer measured on these machines; ONNX is the exchange format,
//!   so serving never depends on the training framework, and a test proves both agree.
//! - **Weights cross module borders as plain arrays** ([`learn::onnx::NetworkWeights`]), never
//!   as framework types.
//! - **Errors**: library modules return typed errors (`thiserror`) naming the file, key or
//!   field at fault; the CLI wraps them with `anyhow` context and tells the user what to do.

pub mod cli;
pub mod config;
pub mod dsp;
pub mod gateway;
pub mod infer;
pub mod learn;
pub mod mqtt;
pub mod source;
pub mod store;
