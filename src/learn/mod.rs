//! The learning core: Sarkar & Etemad's self-supervised ECG representation learning.
//!
//! - [`transforms`]: the six signal transformations (pretext task), seeded;
//! - [`model`]: the signal-transformation recognition network and the emotion network (burn);
//! - [`train`]: pretext training, frozen-encoder head training, fully supervised baseline;
//! - [`dataset`]: recordings + manifest → preprocessed, per-subject z-scored windows;
//! - [`manifest`]: the labelled-dataset manifest (CSV);
//! - [`metrics`]: balanced accuracy, accuracy, macro-F1, confusion;
//! - [`onnx`]: ONNX export and import of the network, plus a plain-Rust reference forward;
//! - [`retrain`]: on-gateway retraining rounds (replay pack, checkpoints, promotion gate);
//! - [`personalise`]: leave-one-subject-out evidence of what a retraining round does for a
//!   new person;
//! - [`card`]: model cards; [`plots`]: SVG plots; [`experiment`]: the paper's comparison,
//!   subject-independent.

pub mod card;
pub mod dataset;
pub mod experiment;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod personalise;
pub mod plots;
pub mod retrain;
pub mod train;
pub mod transforms;
