//! Sensor configuration (`[[sensors]]`): an id and where its ECG comes from. Owned here,
//! beside the sources it builds ([`super::live::from_config`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ble::BleConfig;
use super::synthetic::SyntheticConfig;
use crate::invalid::Invalid;

/// One sensor: an id (used in topics and the store) and where its ECG comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub id: String,
    pub source: SourceConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Generated ECG (ECGSYN); the table's other keys are `SyntheticConfig`.
    Synthetic {
        #[serde(flatten)]
        ecg: SyntheticConfig,
    },
    /// A recording the learning core reads (EDF, WFDB, CSV).
    Replay {
        path: PathBuf,
        #[serde(default)]
        signal: Option<String>,
        /// Pace samples at their real rate (true) or as fast as possible.
        #[serde(default = "yes")]
        realtime: bool,
        #[serde(default, rename = "loop")]
        looped: bool,
    },
    /// A BLE sensor (Polar H10, Heart Rate service, generic GATT ECG); the table's other keys
    /// are `BleConfig`.
    Ble {
        #[serde(flatten)]
        ble: BleConfig,
    },
}

fn yes() -> bool {
    true
}

impl SensorConfig {
    /// The sensor's rate in Hz, when its configuration fixes it (synthetic, BLE ECG).
    pub fn fs_hz(&self) -> Option<f64> {
        match &self.source {
            SourceConfig::Synthetic { ecg } => Some(ecg.fs_hz),
            SourceConfig::Ble { ble } => ble.ecg_fs_hz(),
            SourceConfig::Replay { .. } => None,
        }
    }

    /// The source's own checks (keys relative to the sensor's table).
    pub fn validate(&self) -> Result<(), Invalid> {
        match &self.source {
            SourceConfig::Ble { ble } => {
                ble.validate().map_err(|e| Invalid::component("source", e))
            }
            SourceConfig::Synthetic { ecg } => ecg
                .validate()
                .map_err(|e| Invalid::component("source", e.to_string())),
            SourceConfig::Replay { .. } => Ok(()),
        }
    }
}
