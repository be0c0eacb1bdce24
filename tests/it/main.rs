//! The integration tests, one binary (one link of burn, tract and the gateway instead of one
//! per file). Each module tests one component from the outside, with real files, a real
//! Mosquitto broker and the simulated BlueZ where they apply; `util` holds what they share.
//!
//! Run a subset by module path: `cargo test --release --test it mqtt_security::`.

mod util;

mod ble;
mod config;
mod doctor;
mod dsp;
mod fleet;
mod gateway;
mod gradients;
mod home_automation;
mod learning;
mod limits;
mod mqtt_security;
mod onnx_infer;
mod powerloss;
mod quality;
mod readers;
mod retrain;
mod retrain_core;
mod sources;
mod store;
mod synthetic;
