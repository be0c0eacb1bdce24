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
//! source/  where ECG comes from, behind one seam (`source::Source`: an async task pushing
//!   │      blocks of timestamped µV samples with gap flags into a bounded queue).
//!   │      `source::file` reads EDF/EDF+, WFDB and CSV recordings (one reader for training,
//!   │      evaluation and replay); `source::live` runs synthetic (ECGSYN) and replay sensors;
//!   │      `source::ble` reads Polar H10 ECG (PMD), the Heart Rate service and generic GATT
//!   │      ECG boards through btleplug, reconnecting forever with back-off and a watchdog.
//! dsp/     biquad high-pass/low-pass/notch → resample to 256 Hz → 10 s `Window`s →
//!   │      z-score, R-peaks and HR/HRV, quality gate. Streaming with state carried across
//!   │      blocks, so training and the live gateway run the *same* code.
//! gateway/ the long-running process: per-sensor DSP tasks → one scorer thread batching
//!   │      windows across sensors → sink (store, then publish) → graceful shutdown.
//!   ├──► store/  sled: every window (compact i16 encoding, quality, HR/HRV, scores, labels),
//!   │            range scans by sensor and time, retention by bytes and age, CSV export,
//!   │            and the MQTT outbox (state messages deleted only on PUBACK).
//!   ├──► mqtt/   the connection task (outbox delivery, retained availability, last will,
//!   │            TLS), Home Assistant discovery, validation of label/command inputs, the
//!   │            embedded rumqttd broker of `affectgate demo`.
//!   ├──► infer/  ONNX inference through `ort` with two back-ends chosen at run time:
//!   │            pure-Rust tract (default, no native library) or ONNX Runtime (dlopen).
//!   ├──► learn/  the paper's method: six signal transformations, the signal-transformation
//!   │            recognition network and the emotion network in burn, training loops,
//!   │            metrics, experiments, ONNX export and model cards; a retraining round
//!   │            (replay pack, checkpoints, promotion gate) and the personalisation study.
//!   └──► retrain/ on-gateway retraining: the scheduler stages a round from the store and
//!                runs it in a worker process (memory-limited, niced), the model registry
//!                records every candidate, and the scorer hot-swaps a promoted one.
//! ```
//!
//! [`config`] assembles the one configuration (`plugin.toml`: manifest + defaults) from the
//! components' own config structs and validates it as a whole.
//!
//! The binary (`src/main.rs`, commands in [`cli`]) is a thin layer over these modules:
//! `run`, `demo`, `store`, `scan`, `model`, `pretrain`, `finetune`, `eval`, `infer`,
//! `experiment`, `personalise`, `bench` (and the internal `retrain-worker`).
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
//! - **Errors**: library modules return typed errors (`thiserror`) naming the file, key or
//!   field at fault; the CLI wraps them with `anyhow` context and tells the user what to do.

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

#[cfg(feature = "gateway")]
pub mod config;
#[cfg(feature = "gateway")]
pub mod gateway;
