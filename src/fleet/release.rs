//! What a release is, for the operator's tool that signs it and the gateway that installs it.
//!
//! A release is a folder of plain files, published in the TUF repository as targets
//! `<name>/<file>` (signed together: one targets version names them all):
//!
//! ```text
//! release.json      ReleaseManifest: name, version, min gateway version, channel, summary
//! model.onnx        the serving network            model.card.toml  its model card
//! golden.json       self-test windows and the outputs the model must reproduce (≤ 1e-4)
//! pretext.onnx      the pretext network (optional; what on-gateway retraining starts from)
//! replay.bin        the replay pack (optional; rehearsal data for retraining rounds)
//! ```
//!
//! * **`version` is a number that only grows** (per channel). A gateway refuses a release
//!   whose version is not above the one it serves: TUF stops an attacker from replaying old
//!   *metadata*, this stops an operator's plan (or a compromised broker) from re-announcing an
//!   old *release*. Going back is a new release with a higher version (`affectgate-fleet
//!   rollback`), never a downgrade.
//! * **Golden windows** are inputs chosen at packing time with the outputs the packing
//!   machine's tract backend gave. A gateway's backend (tract or ONNX Runtime, x86_64 or
//!   aarch64) must reproduce them within [`GOLDEN_TOLERANCE`]: a model that loads but computes
//!   something else (a wrong opset, a kernel bug, a corrupted-but-signed file) never serves.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest's file name inside a release.
pub const MANIFEST: &str = "release.json";
/// Largest difference between a golden window's expected and computed output.
pub const GOLDEN_TOLERANCE: f32 = 1e-4;

/// `release.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// The release's folder in the repository (`arousal-v3`): letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Grows with every release of the channel; gateways never install a lower or equal one.
    pub version: u64,
    /// Oldest gateway (`affectgate --version`) that may install it.
    pub min_gateway: String,
    pub channel: String,
    /// One line for people (Home Assistant's update entity shows it).
    #[serde(default)]
    pub summary: String,
    /// File names inside the release.
    pub model: String,
    pub card: String,
    pub golden: String,
    #[serde(default)]
    pub pretext: Option<String>,
    #[serde(default)]
    pub replay: Option<String>,
    /// Set by a fleet-wide rollback: the release whose files this one re-publishes.
    #[serde(default)]
    pub rollback_of: Option<String>,
}

impl ReleaseManifest {
    /// The manifest's own checks, and that every file it names is among `files`.
    pub fn validate(&self, files: &[String]) -> Result<(), String> {
        if !is_release_name(&self.name) {
            return Err(format!(
                "{MANIFEST}: name {:?}: letters, digits, '-', '_' and '.' only, not starting with '.'",
                self.name
            ));
        }
        if self.version == 0 {
            return Err(format!("{MANIFEST}: version: at least 1"));
        }
        parse_version(&self.min_gateway)
            .map_err(|e| format!("{MANIFEST}: min_gateway {:?}: {e}", self.min_gateway))?;
        if !crate::invalid::is_topic_id(&self.channel) {
            return Err(format!(
                "{MANIFEST}: channel {:?}: letters, digits, '-' and '_' only",
                self.channel
            ));
        }
        let named = [&self.model, &self.card, &self.golden]
            .into_iter()
            .chain(self.pretext.iter())
            .chain(self.replay.iter());
        for f in named {
            if !files.iter().any(|x| x == f) {
                return Err(format!(
                    "{MANIFEST}: names {f:?}, which is not in the release ({})",
                    files.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Why a gateway of version `ours` may not install this release, if it may not.
    pub fn too_new_for(&self, ours: &str) -> Option<String> {
        match (parse_version(&self.min_gateway), parse_version(ours)) {
            (Ok(min), Ok(o)) if o.cmp(&min) == Ordering::Less => Some(format!(
                "release {} needs gateway {} or newer; this gateway is {ours}",
                self.name, self.min_gateway
            )),
            (Err(e), _) => Some(format!("min_gateway {:?}: {e}", self.min_gateway)),
            _ => None,
        }
    }
}

/// A release folder name: `[A-Za-z0-9._-]+`, not starting with `.`.
pub fn is_release_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `1.2.3` → `[1, 2, 3]` (a pre-release suffix after `-` is ignored).
pub fn parse_version(s: &str) -> Result<Vec<u64>, String> {
    let core = s.split('-').next().unwrap_or(s);
    let parts: Result<Vec<u64>, _> = core.split('.').map(|p| p.parse::<u64>()).collect();
    match parts {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => Err("not a version like 0.1.0".into()),
    }
}

/// Self-test windows: inputs and the outputs the model must reproduce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Golden {
    /// The feature columns of a fused model, in order (empty: ECG only).
    pub features: Vec<String>,
    pub windows: Vec<GoldenWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenWindow {
    /// 2560 z-scored samples.
    pub samples: Vec<f32>,
    /// One value per feature column.
    pub features: Vec<f32>,
    /// Head name → output.
    pub expected: BTreeMap<String, f32>,
}

impl Golden {
    /// Deterministic inputs (`n` windows): R-peak-like pulses at 60–100 bpm plus noise,
    /// z-scored, and features drawn around 0 — plausible for the model, the same everywhere.
    pub fn inputs(n: usize, features: &[String], seed: u64) -> Vec<(Vec<f32>, Vec<f32>)> {
        use rand::Rng;
        let mut rng = crate::rng::seeded(seed);
        let len = crate::dsp::WINDOW_LEN;
        let fs = crate::dsp::WINDOW_FS;
        (0..n)
            .map(|i| {
                let bpm = 60.0 + 40.0 * i as f64 / n.max(1) as f64;
                let period = 60.0 / bpm;
                let mut x: Vec<f64> = (0..len)
                    .map(|k| {
                        let t = k as f64 / fs;
                        let ph = (t % period) / period - 0.3;
                        (-(ph * ph) / 0.0004).exp() + 0.05 * rng.random::<f64>()
                    })
                    .collect();
                let mean = x.iter().sum::<f64>() / len as f64;
                let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len as f64)
                    .sqrt()
                    .max(1e-9);
                x.iter_mut().for_each(|v| *v = (*v - mean) / sd);
                let f = features
                    .iter()
                    .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                    .collect();
                (x.into_iter().map(|v| v as f32).collect(), f)
            })
            .collect()
    }

    /// Compare computed outputs (per window, head → value) with the expected ones.
    pub fn check(&self, got: &[BTreeMap<String, f32>]) -> Result<(), String> {
        if got.len() != self.windows.len() {
            return Err(format!(
                "{} outputs for {} golden windows",
                got.len(),
                self.windows.len()
            ));
        }
        for (i, (w, g)) in self.windows.iter().zip(got).enumerate() {
            for (head, want) in &w.expected {
                let v = *g
                    .get(head)
                    .ok_or_else(|| format!("golden window {i}: the model has no head {head:?}"))?;
                if !v.is_finite() {
                    return Err(format!("golden window {i}: {head} = {v} (not finite)"));
                }
                if (v - want).abs() > GOLDEN_TOLERANCE {
                    return Err(format!(
                        "golden window {i}: {head} = {v}, expected {want} (|Δ| {:.2e} > {GOLDEN_TOLERANCE:e})",
                        (v - want).abs()
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> ReleaseManifest {
        ReleaseManifest {
            name: "arousal-v3".into(),
            version: 3,
            min_gateway: "0.1.0".into(),
            channel: "stable".into(),
            summary: String::new(),
            model: "model.onnx".into(),
            card: "model.card.toml".into(),
            golden: "golden.json".into(),
            pretext: None,
            replay: None,
            rollback_of: None,
        }
    }

    #[test]
    fn manifests_are_checked_and_gateway_versions_compared() {
        let files: Vec<String> = ["model.onnx", "model.card.toml", "golden.json", MANIFEST]
            .map(String::from)
            .to_vec();
        let mut m = manifest();
        assert_eq!(m.validate(&files), Ok(()));
        m.pretext = Some("pretext.onnx".into());
        assert!(m.validate(&files).unwrap_err().contains("\"pretext.onnx\""));
        m.pretext = None;
        m.name = "../x".into();
        assert!(m.validate(&files).unwrap_err().contains("name"));
        m.name = "arousal-v3".into();
        assert_eq!(m.too_new_for("0.1.0"), None);
        assert_eq!(m.too_new_for("0.10.0"), None);
        m.min_gateway = "0.2.0".into();
        let why = m.too_new_for("0.1.9").unwrap();
        assert!(why.contains("needs gateway 0.2.0 or newer; this gateway is 0.1.9"));
        assert_eq!(
            m.too_new_for("0.2.0-rc.1"),
            None,
            "pre-release suffix ignored"
        );
    }

    #[test]
    fn golden_outputs_must_match_within_the_tolerance() {
        let feats = vec!["hr_rel".to_string()];
        let inputs = Golden::inputs(3, &feats, 7);
        assert_eq!(inputs, Golden::inputs(3, &feats, 7), "deterministic");
        let (x, f) = &inputs[0];
        assert_eq!((x.len(), f.len()), (crate::dsp::WINDOW_LEN, 1));
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        assert!(mean.abs() < 1e-4, "z-scored: mean {mean}");
        let exp = |v: f32| BTreeMap::from([("arousal".to_string(), v)]);
        let g = Golden {
            features: feats,
            windows: inputs
                .into_iter()
                .map(|(samples, features)| GoldenWindow {
                    samples,
                    features,
                    expected: exp(0.5),
                })
                .collect(),
        };
        assert_eq!(g.check(&[exp(0.50005), exp(0.5), exp(0.49995)]), Ok(()));
        let e = g.check(&[exp(0.5), exp(0.5003), exp(0.5)]).unwrap_err();
        assert!(e.starts_with("golden window 1: arousal = 0.5003"), "{e}");
        let e = g.check(&[exp(0.5), exp(f32::NAN), exp(0.5)]).unwrap_err();
        assert!(e.contains("not finite"), "{e}");
        assert!(g
            .check(&[exp(0.5)])
            .unwrap_err()
            .contains("1 outputs for 3"));
    }
}
