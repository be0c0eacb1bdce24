//! # affectgate
//!
//! An edge-gateway plugin that turns ECG from BLE chest straps into emotion scores for home
//! automation, and keeps improving on the gateway with the self-supervised method of Sarkar &
//! Etemad ("Self-supervised learning for ECG-based emotion recognition", ICASSP 2020).
//!
//! ## Layout
//!
//! Folders are the architecture. Layers from the bottom; an arrow only ever points down
//! (no module imports one above it):
//!
//! ```text
//! time, fs, rng, sys, invalid   one helper of each kind: clock and RFC 3339, atomic file
//!   │                           writes, seeded randomness, /proc readers, the shape of a
//!   │                           rejected config value.
//! dsp/      biquad high-pass/low-pass/notch → resample to 256 Hz → 10 s `Window`s → z-score,
//!   │       R-peaks and HR/HRV, quality gate, the wearer baseline. Streaming, so training
//!   │       and the live gateway run the *same* code.
//! model/    the model format: weights as plain arrays and the reference forward, ONNX
//!   │       export/import/inspect, model card, replay pack, i16 quantisation. No burn, ort,
//!   │       sled or tokio: the fleet crate builds on this layer alone.
//! source/   where ECG comes from, behind one seam (`source::Source`); `source::file` reads
//!   │       EDF/EDF+, WFDB and CSV; `source::live` runs synthetic (ECGSYN) and replay
//!   │       sensors; `source::ble` reads Polar H10 ECG (PMD), the Heart Rate service and
//!   │       generic GATT ECG boards through btleplug. Owns `[[sensors]]` (`source::config`).
//! learn/    the paper's method in burn: transformations, networks, training loops, metrics,
//! infer/    heart-rate baselines and the fused heads (`learn::fusion`: embedding + wearer-
//!   │       relative HR/HRV), the `pretrain`/`finetune` pipelines, experiments, one retraining round
//! store/    (`learn::round`). infer: ONNX inference through `ort` (tract or ONNX Runtime).
//!   │       store: sled windows, retention, export, the MQTT outbox.
//! mqtt/     the broker link (outbox delivery, availability, last will, TLS), every topic
//! retrain/  (`mqtt::topics`), Home Assistant discovery, inputs; retrain: the scheduler, the
//!   │       worker process, the model registry. Retraining reports its status on a channel;
//!   │       the gateway publishes it.
//! fleet/    signed model releases: rollout plans and statuses, the release format (always, so
//!   │       the operator's `fleet/` crate shares them), the TUF client and its HTTP transport
//!   │       (`tuf`), release packing and the gateway's agent: wave → download → checks →
//!   │       self-test → registry promote → health window → succeeded or rolled back.
//! config    the one configuration: assembles each component's own config struct and checks,
//!   │       resolves relative paths once.
//! gateway/  the long-running process: ingest (per-sensor tasks) → scorer thread → sink
//!           (store, then publish) → control (discovery, labels, commands) → shutdown.
//! ```
//!
//! The command line (`src/main.rs`, `mod cli`) is the only user of all of it and is not part of
//! the library: `run`, `demo`, `store`, `scan`, `model`, `pretrain`, `finetune`, `eval`,
//! `infer`, `experiment`, `personalise`, `bench` (and the internal `retrain-worker`).
//!
//! Cargo features follow the layers: none = `dsp` + `model` (+ helpers, and the fleet's plans
//! and release format); `onnx` adds ONNX read/write; `tuf` the fleet's TUF client; `infer`,
//! `source`, `learn`, `gateway` add those modules; `cli` (default) builds the binary.
//!
//! ## Decisions worth knowing
//! - **One window type** ([`dsp::Window`], 2560 samples at 256 Hz) and one preprocessing path
//!   ([`dsp::Preprocessor`]) for offline training and live scoring: a model can only be as
//!   good on the gateway as the match between what it was trained on and what it is fed.
//! - **Training in burn, serving in ort.** burn (autodiff over the pure-Rust `flex` backend) is
//!   the fastest correct Rust trainer measured on these machines; ONNX is the exchange format,
//!   so serving never depends on the training framework, and a test proves both agree.
//! - **Weights cross module borders as plain arrays** ([`model::NetworkWeights`]), never
//!   as framework types.
//! - **Backpressure, not buffering.** Every queue between gateway stages is bounded; a stalled
//!   stage slows its producers. MQTT never pushes back on ingest: state messages wait in the
//!   sled outbox (bounded, oldest dropped and counted) while the broker is away.
//! - **Stored before announced.** The sink writes a group of windows and their outbox entries
//!   to sled and flushes once before the link publishes, so nothing a subscriber has seen can
//!   be lost by a crash, and nothing queued is lost to a broker outage or a restart.
//! - **A round is a process.** Rust aborts on allocation failure and the kernel's OOM killer
//!   picks processes: training, the one bursty allocator, runs in `affectgate retrain-worker`
//!   under a hard memory limit so it can fail alone (see [`retrain::worker`]).
//! - **Errors**: the gateway path (model, source, dsp, store, mqtt, retrain, config) returns
//!   typed errors (`thiserror`) naming the file, key or field at fault; the offline training
//!   pipelines and studies in `learn` return `anyhow` errors with the same context; the CLI adds
//!   what to do.

// Always: the bottom layers (no heavy dependency).
pub mod dsp;
pub mod fs;
pub mod invalid;
pub mod model;
pub mod rng;
pub mod sys;
pub mod time;

#[cfg(feature = "source")]
pub mod source;

#[cfg(feature = "infer")]
pub mod infer;
#[cfg(feature = "learn")]
pub mod learn;
#[cfg(feature = "gateway")]
pub mod store;

#[cfg(feature = "gateway")]
pub mod mqtt;
#[cfg(feature = "gateway")]
pub mod retrain;

// Plans, statuses and the release format always (the fleet crate builds on them); the TUF
// client with `tuf`, the gateway's agent with `gateway`.
pub mod fleet;

#[cfg(feature = "gateway")]
pub mod config;
#[cfg(feature = "gateway")]
pub mod gateway;
