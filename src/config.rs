//! The one configuration of the gateway: `plugin.toml` holds the plugin manifest (`[plugin]`)
//! and the default configuration (every other section). Loaded once, validated as a whole at
//! start, so a typo fails before any sensor connects: unknown keys and wrong types are rejected
//! by serde (`deny_unknown_fields`, with the line and key), impossible values (a notch above a
//! sensor's Nyquist frequency, a duplicate sensor id, a port of 0) by [`Config::validate`] with the
//! full key path and what is allowed.
//!
//! Each component owns its config struct and its checks where it lives (vector's rule):
//! `source::config`, `dsp::PreprocessConfig`, `infer::config`, `store::config`,
//! `mqtt::config`, `retrain::config`. This module only assembles them, checks what spans
//! sections (sensor ids, the filters at each sensor's rate), prefixes each component's key
//! with its section, and resolves relative paths against the file's directory once, in
//! [`Config::load`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dsp::quality::QualityConfig;
use crate::dsp::BaselineConfig;
use crate::dsp::PreprocessConfig;
pub use crate::fleet::config::FleetConfig;
pub use crate::infer::config::ModelConfig;
pub use crate::invalid::{is_topic_id, Invalid};
pub use crate::mqtt::config::{MqttConfig, MqttTls};
pub use crate::retrain::config::RetrainConfig;
pub use crate::source::config::{SensorConfig, SourceConfig};
pub use crate::store::config::StoreConfig;

/// The default configuration (`plugin.toml`), compiled in so `affectgate demo` needs no files.
pub const DEFAULT_CONFIG: &str = include_str!("../plugin.toml");

/// Version of the configuration schema this build reads (`plugin.config_schema`).
pub const CONFIG_SCHEMA: u32 = 1;

/// Most `[[sensors]]` one gateway accepts. Far above what one gateway can serve, far below
/// what breaks it: one desktop core scores ≈ 500 real-time straps (BENCHMARKS.md; a
/// Raspberry Pi core roughly a third of that) and a Pi's Bluetooth adapter holds 7–10
/// connections, while every sensor costs a source and a DSP task, up to a few hundred KiB of
/// queued signal and windows, and seven retained discovery messages. A config of 10 000
/// sensors (a generated one, a paste gone wrong) started, announced 70 000 discovery
/// messages and could not be stopped within systemd's time; it is refused here instead,
/// naming the key. More straps: more gateways, each with its own `gateway.id`.
pub const MAX_SENSORS: usize = 256;

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
    /// The wearer baseline (`[baseline]`, optional).
    #[serde(default)]
    pub baseline: BaselineConfig,
    pub model: ModelConfig,
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    pub retrain: RetrainConfig,
    /// Model releases from a fleet repository (`[fleet]`, optional, off by default).
    #[serde(default)]
    pub fleet: FleetConfig,
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

impl Config {
    /// Read, parse and validate a config file, and resolve its relative paths against the
    /// file's directory (the one place this happens: every component then gets usable paths).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        cfg.resolve_paths(&dir);
        Ok(cfg)
    }

    /// Make every relative path of the config (model, store, registry, replay recordings,
    /// TLS files) relative to `dir` instead of the working directory.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.model.path);
        fix(&mut self.store.path);
        fix(&mut self.retrain.models_dir);
        if !self.fleet.root.as_os_str().is_empty() {
            fix(&mut self.fleet.root);
        }
        let repo = &self.fleet.repository;
        if !repo.is_empty() && !repo.contains("://") && Path::new(repo).is_relative() {
            self.fleet.repository = dir.join(repo).display().to_string();
        }
        for s in &mut self.sensors {
            if let SourceConfig::Replay { path, .. } = &mut s.source {
                fix(path);
            }
        }
        if let Some(t) = &mut self.mqtt.tls {
            fix(&mut t.ca_file);
            for p in [&mut t.client_cert, &mut t.client_key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
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
        if self.sensors.len() > MAX_SENSORS {
            return Err(bad(
                "sensors".into(),
                format!("[{} tables]", self.sensors.len()),
                format!(
                    "at most {MAX_SENSORS} sensors per gateway (one gateway scores ≈ 500 straps per desktop core, a Raspberry Pi's Bluetooth adapter holds 7–10); run more gateways, each with its own gateway.id, and split the sensors between them"
                ),
            ));
        }
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
            s.validate()
                .map_err(|e| in_section(path, &format!("{key}."), e))?;
            // The filters run at the sensor's own rate: each cutoff must be below its Nyquist.
            if let Some(fs) = s.fs_hz() {
                self.dsp.validate(fs).map_err(|e| ConfigError::Component {
                    path: path.to_path_buf(),
                    key: format!("dsp (for sensor {:?} at {fs} Hz)", s.id),
                    message: e.to_string(),
                })?;
            }
        }
        self.quality
            .validate()
            .map_err(|e| in_section(path, "", Invalid::component("quality", e)))?;
        self.baseline
            .validate()
            .map_err(|e| in_section(path, "", Invalid::component("baseline", e)))?;
        self.mqtt
            .validate()
            .map_err(|e| in_section(path, "mqtt.", e))?;
        self.store
            .validate()
            .map_err(|e| in_section(path, "store.", e))?;
        self.retrain
            .validate()
            .map_err(|e| in_section(path, "retrain.", e))?;
        self.fleet
            .validate()
            .map_err(|e| in_section(path, "fleet.", e))?;
        Ok(())
    }
}

/// A component's [`Invalid`] as a config error naming the full key (`mqtt.port`).
fn in_section(path: &Path, prefix: &str, e: Invalid) -> ConfigError {
    if e.value.is_empty() {
        ConfigError::Component {
            path: path.to_path_buf(),
            key: format!("{prefix}{}", e.key),
            message: e.reason,
        }
    } else {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("{prefix}{}", e.key),
            value: e.value,
            reason: e.reason,
        }
    }
}
