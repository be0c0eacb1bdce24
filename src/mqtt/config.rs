//! The broker connection's configuration (`[mqtt]`, `[mqtt.tls]`) and its checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::invalid::{is_topic_id, Invalid};

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

fn yes() -> bool {
    true
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.port == 0 {
            return Err(Invalid::new("port", 0, "must be 1..=65535"));
        }
        // MQTT carries keep-alive as 16 bits; below 5 s the client would quietly use 5.
        if !(5..=65535).contains(&self.keep_alive_s) {
            return Err(Invalid::new(
                "keep_alive_s",
                self.keep_alive_s,
                "must be 5..=65535 seconds",
            ));
        }
        if let Some(t) = &self.tls {
            if t.client_cert.is_some() != t.client_key.is_some() {
                return Err(Invalid {
                    key: "tls.client_cert / mqtt.tls.client_key".into(),
                    value: format!("{:?} / {:?}", t.client_cert, t.client_key),
                    reason: "give both the client certificate and its key, or neither".into(),
                });
            }
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(Invalid {
                key: "username / mqtt.password".into(),
                value: "only one of them set".into(),
                reason: "give both, or neither for anonymous access".into(),
            });
        }
        if self.outbox_max == 0 {
            return Err(Invalid::new("outbox_max", 0, "must be ≥ 1 message"));
        }
        if !is_topic_id(&self.discovery_prefix) {
            return Err(Invalid::new(
                "discovery_prefix",
                format!("{:?}", self.discovery_prefix),
                "use letters, digits, '_' and '-' only",
            ));
        }
        Ok(())
    }
}
