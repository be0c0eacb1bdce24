//! The one configuration of the gateway: `plugin.toml` holds the plugin manifest (`[plugin]`)
//! and the default configuration (every other section). Loaded once, validated as a whole at
//! start, so a typo fails before any sensor connects: unknown keys and wrong types are rejected
//! by serde (`deny_unknown_fields`, with the line and key), impossible values (a notch above a
//! sensor's Nyquist frequency, a duplicate sensor id, a port of 0) by [`Config::validate`] with the
//! full key path and what is allowed.
//!
//! Each component keeps its own config struct where it lives (`dsp::PreprocessConfig`,
//! `source::synthetic::SyntheticConfig`, `infer::Backend`); this module only assembles them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dsp::quality::QualityConfig;
use crate::dsp::PreprocessConfig;
use crate::infer::Backend;
use crate::source::ble::BleConfig;
use crate::source::synthetic::SyntheticConfig;

/// Version of the configuration schema this build reads (`plugin.config_schema`).
pub const CONFIG_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A component's own validation failed; `message` names its field and value.
    #[error("config {path}: {key}: {message}")]
    Component {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config {path}: {key} = {value}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub plugin: PluginManifest,
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub sensors: Vec<SensorConfig>,
    #[serde(default)]
    pub dsp: PreprocessConfig,
    /// Signal-quality gate (`[quality]`, optional).
    #[serde(default)]
    pub quality: QualityConfig,
    pub model: ModelConfig,
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    pub retrain: RetrainConfig,
}

/// The plugin manifest: what a hub needs to know to run and wire the plugin.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginManifest {
    pub name: String,
    pub version: String,
    /// Command the hub runs (`{config}` is replaced by this file's path).
    pub entry: String,
    pub config_schema: u32,
    /// MQTT topic patterns published / subscribed (`{gateway}`, `{sensor}` placeholders).
    pub publishes: Vec<String>,
    pub subscribes: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway id used in MQTT topics: `[a-zA-Z0-9_-]`.
    pub id: String,
}

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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX model with its `.card.toml` beside it.
    pub path: PathBuf,
    #[serde(default)]
    pub backend: Backend,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Retention: oldest windows are dropped beyond this many bytes…
    pub max_bytes: u64,
    /// …or this age.
    pub max_age_days: f64,
}

/// Broker connection (`[mqtt]`). `Debug` never prints the password.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host; empty = `affectgate demo` starts an embedded broker.
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    pub keep_alive_s: u64,
    pub discovery_prefix: String,
    /// Publish Home Assistant discovery (default true).
    #[serde(default = "yes")]
    pub discovery: bool,
    /// Undelivered state messages kept in the outbox; beyond it the oldest are dropped
    /// (default 100 000 ≈ 3 days of 3 sensors).
    #[serde(default = "default_outbox_max")]
    pub outbox_max: u64,
    /// TLS to the broker (`[mqtt.tls]`); absent = plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTls>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive_s", &self.keep_alive_s)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("discovery", &self.discovery)
            .field("outbox_max", &self.outbox_max)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS files (PEM). Relative paths are resolved against the config file's directory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Client certificate and key, for brokers that require one (both or neither).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn default_outbox_max() -> u64 {
    100_000
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    pub enabled: bool,
    /// Hours between rounds (from the end of the last one).
    pub interval_h: f64,
    /// Good windows stored since the last round before a scheduled round starts.
    pub min_new_windows: usize,
    /// Only start rounds inside this daily UTC window, `"HH:MM-HH:MM"` (may wrap midnight).
    #[serde(default)]
    pub daily_window: Option<String>,
    /// The gateway's model registry (retrained models, which one serves, the previous one);
    /// relative to the config file. Default `models-local`.
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    /// Training threads (default 1: on a 4-core Pi three stay for scoring and I/O).
    #[serde(default = "one_usize")]
    pub max_threads: usize,
    /// Stop the round when the process's resident memory exceeds this (default 1536 MiB).
    #[serde(default = "default_max_memory_mb")]
    pub max_memory_mb: u64,
    /// Nice value of the training threads (default 10; 0–19).
    #[serde(default = "default_nice")]
    pub nice: i32,
    /// Wall-clock budget of a round, minutes (default 120).
    #[serde(default = "default_budget_min")]
    pub budget_min: f64,
    /// Pretext epochs per round (default 2).
    #[serde(default = "default_pretext_epochs")]
    pub pretext_epochs: usize,
    /// Cap on pretext steps per epoch (default: none).
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// Most recent good windows a round trains on (default 3000 ≈ 8 h of one strap).
    #[serde(default = "default_max_windows")]
    pub max_windows: usize,
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("models-local")
}
fn one_usize() -> usize {
    1
}
fn default_max_memory_mb() -> u64 {
    1536
}
fn default_nice() -> i32 {
    10
}
fn default_budget_min() -> f64 {
    120.0
}
fn default_pretext_epochs() -> usize {
    2
}
fn default_max_windows() -> usize {
    3000
}

/// Is `s` a valid MQTT/HA id (`[a-zA-Z0-9_-]+`)?
pub fn is_topic_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Cross-field checks serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: String, value: String, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            reason,
        };
        if self.plugin.config_schema != CONFIG_SCHEMA {
            return Err(bad(
                "plugin.config_schema".into(),
                self.plugin.config_schema.to_string(),
                format!("this affectgate reads schema {CONFIG_SCHEMA}"),
            ));
        }
        if !is_topic_id(&self.gateway.id) {
            return Err(bad(
                "gateway.id".into(),
                format!("{:?}", self.gateway.id),
                "use letters, digits, '_' and '-' only (it is part of MQTT topics)".into(),
            ));
        }
        let component = |key: String, message: String| ConfigError::Component {
            path: path.to_path_buf(),
            key,
            message,
        };
        let mut seen = HashSet::new();
        for (i, s) in self.sensors.iter().enumerate() {
            let key = format!("sensors[{i}]");
            if !is_topic_id(&s.id) {
                return Err(bad(
                    format!("{key}.id"),
                    format!("{:?}", s.id),
                    "use letters, digits, '_' and '-' only (it is part of MQTT topics)".into(),
                ));
            }
            if s.id == "cmd" {
                return Err(bad(
                    format!("{key}.id"),
                    "\"cmd\"".into(),
                    "is reserved (affectgate/<gateway>/cmd/… carries commands)".into(),
                ));
            }
            if !seen.insert(s.id.as_str()) {
                return Err(bad(
                    format!("{key}.id"),
                    format!("{:?}", s.id),
                    "another sensor already has this id".into(),
                ));
            }
            if let SourceConfig::Ble { ble } = &s.source {
                ble.validate()
                    .map_err(|e| component(format!("{key}.source"), e))?;
                if let Some(fs) = ble.ecg_fs_hz() {
                    self.dsp.validate(fs).map_err(|e| {
                        component(
                            format!("dsp (for sensor {:?} at {fs} Hz)", s.id),
                            e.to_string(),
                        )
                    })?;
                }
            }
            if let SourceConfig::Synthetic { ecg } = &s.source {
                ecg.validate()
                    .map_err(|e| component(format!("{key}.source"), e.to_string()))?;
                // The filters run at the sensor's own rate: each cutoff must be below its Nyquist.
                self.dsp.validate(ecg.fs_hz).map_err(|e| {
                    component(
                        format!("dsp (for sensor {:?} at {} Hz)", s.id, ecg.fs_hz),
                        e.to_string(),
                    )
                })?;
            }
        }
        self.quality
            .validate()
            .map_err(|e| component("quality".into(), e.to_string()))?;
        if self.mqtt.port == 0 {
            return Err(bad(
                "mqtt.port".into(),
                "0".into(),
                "must be 1..=65535".into(),
            ));
        }
        if let Some(t) = &self.mqtt.tls {
            if t.client_cert.is_some() != t.client_key.is_some() {
                return Err(bad(
                    "mqtt.tls.client_cert / mqtt.tls.client_key".into(),
                    format!("{:?} / {:?}", t.client_cert, t.client_key),
                    "give both the client certificate and its key, or neither".into(),
                ));
            }
        }
        if self.mqtt.username.is_some() != self.mqtt.password.is_some() {
            return Err(bad(
                "mqtt.username / mqtt.password".into(),
                "only one of them set".into(),
                "give both, or neither for anonymous access".into(),
            ));
        }
        if self.mqtt.outbox_max == 0 {
            return Err(bad(
                "mqtt.outbox_max".into(),
                "0".into(),
                "must be ≥ 1 message".into(),
            ));
        }
        if !is_topic_id(&self.mqtt.discovery_prefix) {
            return Err(bad(
                "mqtt.discovery_prefix".into(),
                format!("{:?}", self.mqtt.discovery_prefix),
                "use letters, digits, '_' and '-' only".into(),
            ));
        }
        if self.store.max_age_days.is_nan() || self.store.max_age_days <= 0.0 {
            return Err(bad(
                "store.max_age_days".into(),
                self.store.max_age_days.to_string(),
                "must be > 0".into(),
            ));
        }
        if let Some(w) = &self.retrain.daily_window {
            crate::retrain::scheduler::parse_window(w)
                .map_err(|e| bad("retrain.daily_window".into(), format!("{w:?}"), e))?;
        }
        for (key, ok, why) in [
            (
                "retrain.max_threads",
                (1..=256).contains(&self.retrain.max_threads),
                "must be 1..=256",
            ),
            (
                "retrain.nice",
                (0..=19).contains(&self.retrain.nice),
                "must be 0..=19",
            ),
            (
                "retrain.max_memory_mb",
                self.retrain.max_memory_mb >= 64,
                "must be ≥ 64 MiB",
            ),
            (
                "retrain.budget_min",
                self.retrain.budget_min.is_finite() && self.retrain.budget_min > 0.0,
                "must be > 0 minutes",
            ),
            (
                "retrain.pretext_epochs",
                (1..=1000).contains(&self.retrain.pretext_epochs),
                "must be 1..=1000",
            ),
            (
                "retrain.max_windows",
                self.retrain.max_windows >= 10,
                "must be ≥ 10",
            ),
        ] {
            if !ok {
                return Err(bad(key.into(), "(as given)".into(), why.into()));
            }
        }
        if self.retrain.enabled
            && (self.retrain.interval_h.is_nan() || self.retrain.interval_h <= 0.0)
        {
            return Err(bad(
                "retrain.interval_h".into(),
                self.retrain.interval_h.to_string(),
                "must be > 0 when retraining is enabled".into(),
            ));
        }
        Ok(())
    }
}
