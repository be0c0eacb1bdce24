//! On-gateway retraining's configuration (`[retrain]`): when rounds run and within which
//! limits, with its checks (the daily window's syntax included).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

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

/// Parse `"HH:MM-HH:MM"` (UTC) into minutes of the day.
pub fn parse_window(s: &str) -> Result<(u32, u32), String> {
    let hm = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected \"HH:MM-HH:MM\" (UTC)"))?;
    match (hm(a), hm(b)) {
        (Some(a), Some(b)) if a != b => Ok((a, b)),
        _ => Err(format!(
            "{s:?}: expected \"HH:MM-HH:MM\" (UTC), start ≠ end"
        )),
    }
}

impl RetrainConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(w) = &self.daily_window {
            parse_window(w).map_err(|e| Invalid::new("daily_window", format!("{w:?}"), e))?;
        }
        for (key, ok, why) in [
            (
                "max_threads",
                (1..=256).contains(&self.max_threads),
                "must be 1..=256",
            ),
            ("nice", (0..=19).contains(&self.nice), "must be 0..=19"),
            (
                "max_memory_mb",
                self.max_memory_mb >= 64,
                "must be ≥ 64 MiB",
            ),
            (
                "budget_min",
                self.budget_min.is_finite() && self.budget_min > 0.0,
                "must be > 0 minutes",
            ),
            (
                "pretext_epochs",
                (1..=1000).contains(&self.pretext_epochs),
                "must be 1..=1000",
            ),
            ("max_windows", self.max_windows >= 10, "must be ≥ 10"),
        ] {
            if !ok {
                return Err(Invalid::new(key, "(as given)", why));
            }
        }
        if self.enabled && (self.interval_h.is_nan() || self.interval_h <= 0.0) {
            return Err(Invalid::new(
                "interval_h",
                self.interval_h,
                "must be > 0 when retraining is enabled",
            ));
        }
        Ok(())
    }
}
