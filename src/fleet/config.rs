//! `[fleet]`: whether this gateway takes model releases from a fleet repository, from where,
//! trusting which root, and when it may install them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

/// How a gateway installs a release its wave allows.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Install as soon as the wave (and the maintenance window) allows.
    #[default]
    Auto,
    /// Wait for "install" on `affectgate/<gw>/cmd/update` (Home Assistant's update entity).
    Manual,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The TUF repository: `https://…` (any static server or object store) or a folder.
    #[serde(default)]
    pub repository: String,
    /// The pinned `root.json` the gateway trusts first (relative to the config file). Later
    /// roots are followed only when signed by the previous root's keys.
    #[serde(default)]
    pub root: PathBuf,
    /// Rollout channel (`affectgate/fleet/<channel>/plan`).
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default)]
    pub policy: Policy,
    /// Only install inside this daily UTC window, `"HH:MM-HH:MM"` (may wrap midnight).
    #[serde(default)]
    pub maintenance_window: Option<String>,
    /// Windows the new model must score without an error before the install counts as
    /// succeeded (default 6 = one minute of one strap).
    #[serde(default = "default_health_windows")]
    pub health_windows: u64,
    /// Longest wait for those windows, seconds (default 1800). A model that scored some
    /// windows and none failed counts as healthy then; none scored: the install stays.
    #[serde(default = "default_health_timeout_s")]
    pub health_timeout_s: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            enabled: false,
            repository: String::new(),
            root: PathBuf::new(),
            channel: default_channel(),
            policy: Policy::Auto,
            maintenance_window: None,
            health_windows: default_health_windows(),
            health_timeout_s: default_health_timeout_s(),
        }
    }
}

fn default_channel() -> String {
    "stable".into()
}
fn default_health_windows() -> u64 {
    6
}
fn default_health_timeout_s() -> u64 {
    1800
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !crate::invalid::is_topic_id(&self.channel) {
            return Err(Invalid::new(
                "channel",
                format!("{:?}", self.channel),
                "letters, digits, '-' and '_' only",
            ));
        }
        if let Some(w) = &self.maintenance_window {
            crate::retrain::config::parse_window(w)
                .map_err(|e| Invalid::new("maintenance_window", format!("{w:?}"), e))?;
        }
        if !self.enabled {
            return Ok(());
        }
        if self.repository.is_empty() {
            return Err(Invalid::new(
                "repository",
                "\"\"",
                "the repository URL (https://…) or folder is required when enabled",
            ));
        }
        if self.root.as_os_str().is_empty() {
            return Err(Invalid::new(
                "root",
                "\"\"",
                "the pinned root.json is required when enabled (copy metadata/root.json from the repository once, out of band)",
            ));
        }
        if self.health_windows == 0 {
            return Err(Invalid::new("health_windows", 0, "at least 1"));
        }
        Ok(())
    }
}
