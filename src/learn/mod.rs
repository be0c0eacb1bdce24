//! The learning core: Sarkar & Etemad's self-supervised ECG representation learning.
//!
//! - [`transforms`]: the six signal transformations (pretext task), seeded;
//! - [`model`]: the signal-transformation recognition network and the emotion network (burn);
//! - [`train`]: pretext training, frozen-encoder head training, fully supervised baseline;
//! - [`baseline`]: heart-rate baselines (absolute and wearer-relative) evaluated like the model;
//! - [`fusion`]: the fused heads (frozen embedding + wearer-relative HR/HRV) and the
//!   leave-one-subject-out arms that measure what the encoder adds;
//! - [`dataset`]: recordings + manifest → preprocessed, per-subject z-scored windows;
//! - [`manifest`]: the labelled-dataset manifest (CSV);
//! - [`metrics`]: balanced accuracy, accuracy, macro-F1, confusion;
//! - [`round`]: one on-gateway retraining round (pretext training with replay, checkpoints,
//!   heads, promotion gate);
//! - [`pipeline`]: the `pretrain` and `finetune` pipelines (data → ONNX model + card);
//! - [`personalise`]: leave-one-subject-out evidence of what a retraining round does for a
//!   new person;
//! - [`plots`]: SVG plots; [`experiment`]: the paper's comparison,
//!   subject-independent.

pub mod baseline;
pub mod dataset;
pub mod experiment;
pub mod fusion;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod personalise;
pub mod pipeline;
pub mod plots;
pub mod round;
pub mod train;
pub mod transforms;
