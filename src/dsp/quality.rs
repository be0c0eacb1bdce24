//! Signal-quality gate: decides whether a window is worth scoring.
//!
//! A model fed a lead-off flat line, a saturated amplifier or motion noise still returns a
//! number; publishing it would make a home automation react to garbage. So every window gets
//! [`Quality`] flags, and the gateway stores flagged windows (they are evidence of how the
//! strap is worn) but neither scores nor z-score-accumulates them.
//!
//! Checks, each a bit in [`Quality::flags`]:
//! * **flat** — standard deviation of the filtered window below `flat_std_uv` (lead off,
//!   strap dry): there is no ECG to score.
//! * **clipping** — more than `max_clipped_frac` of the *raw* samples sit in runs of ≥ 3
//!   identical values at the block's extreme (an ADC at its rail). It must be measured before
//!   filtering: the high-pass turns a clipped plateau into a slope. [`ClipTracker`] counts it
//!   per input block and attributes it to windows by time overlap.
//! * **noisy** — the detected R-peaks do not stand out: their median magnitude is below
//!   `min_qrs_prominence` × the median |x| of the window. Measured on real data: clean ECG
//!   8.2–18 (Polar H10, EEGMAT, MIT-BIH), white noise and the EEGMAT recordings without ECG
//!   2.6–3.4; default threshold 5.
//! * **implausible R-R** — fewer than `min_beats` R-peaks in the window, or more than
//!   `max_bad_rr_frac` of the R-R intervals outside 300–2000 ms or more than 60 % away from
//!   the window's median R-R (a missed beat doubles an interval, a T wave taken for an R
//!   wave splits one). Arrhythmia is *not* garbage: premature ventricular beats with their
//!   compensatory pause (±30–55 %, the Polar recording in ../shared/data has trigeminy for
//!   minutes) pass.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::rpeak::{RR_MAX_MS, RR_MIN_MS};
use super::DspError;

/// Gate thresholds (TOML section `[quality]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Below this standard deviation (µV) a filtered window is "flat". Default 10.
    pub flat_std_uv: f32,
    /// Above this fraction of clipped raw samples a window is "clipping". Default 0.01.
    pub max_clipped_frac: f32,
    /// Fewer R-peaks than this in a window → "implausible R-R" (default 4: < 24 bpm).
    pub min_beats: usize,
    /// Above this fraction of implausible R-R intervals → "implausible R-R". Default 0.3.
    pub max_bad_rr_frac: f32,
    /// Median R-peak magnitude / median |x| below this → "noisy". Default 5.
    pub min_qrs_prominence: f32,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            flat_std_uv: 10.0,
            max_clipped_frac: 0.01,
            min_beats: 4,
            max_bad_rr_frac: 0.3,
            min_qrs_prominence: 5.0,
        }
    }
}

impl QualityConfig {
    /// Range checks; errors name the key (`quality.flat_std_uv`, …).
    pub fn validate(&self) -> Result<(), DspError> {
        let bad = |key: &str, value: String, reason: &str| DspError::InvalidConfig {
            key: format!("quality.{key}"),
            value,
            reason: reason.into(),
        };
        if !(self.flat_std_uv.is_finite() && self.flat_std_uv >= 0.0) {
            return Err(bad(
                "flat_std_uv",
                self.flat_std_uv.to_string(),
                "must be ≥ 0 µV",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_clipped_frac) {
            return Err(bad(
                "max_clipped_frac",
                self.max_clipped_frac.to_string(),
                "must be within 0..=1",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_bad_rr_frac) {
            return Err(bad(
                "max_bad_rr_frac",
                self.max_bad_rr_frac.to_string(),
                "must be within 0..=1",
            ));
        }
        if !(self.min_qrs_prominence.is_finite() && self.min_qrs_prominence >= 0.0) {
            return Err(bad(
                "min_qrs_prominence",
                self.min_qrs_prominence.to_string(),
                "must be ≥ 0",
            ));
        }
        if self.min_beats > 40 {
            return Err(bad(
                "min_beats",
                self.min_beats.to_string(),
                "must be ≤ 40 (a 10 s window cannot hold more plausible beats)",
            ));
        }
        Ok(())
    }
}

/// Result of the gate. `flags == 0` means good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quality {
    pub flags: u8,
}

impl Quality {
    pub const FLAT: u8 = 1;
    pub const CLIPPING: u8 = 2;
    pub const IMPLAUSIBLE_RR: u8 = 4;
    pub const NOISY: u8 = 8;
    /// Names of the flags, in bit order (used in MQTT payloads and `store stats`).
    pub const NAMES: [(u8, &'static str); 4] = [
        (Self::FLAT, "flat"),
        (Self::CLIPPING, "clipping"),
        (Self::IMPLAUSIBLE_RR, "implausible_rr"),
        (Self::NOISY, "noisy"),
    ];

    pub fn good() -> Self {
        Self { flags: 0 }
    }

    pub fn is_good(&self) -> bool {
        self.flags == 0
    }

    /// Flag names set, e.g. `["flat"]`.
    pub fn names(&self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(b, _)| self.flags & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }

    /// `"good"` or the flags joined with `+`.
    pub fn label(&self) -> String {
        if self.is_good() {
            "good".into()
        } else {
            self.names().join("+")
        }
    }
}

/// Assess one filtered window (`samples` at `fs` Hz) given its R-peak positions and the
/// fraction of clipped raw samples ([`ClipTracker::fraction`]).
pub fn assess(
    samples: &[f32],
    fs: f64,
    peaks: &[usize],
    clipped_frac: f32,
    cfg: &QualityConfig,
) -> Quality {
    let mut flags = 0u8;
    let std = super::normalize::mean_std(samples)
        .map(|(_, s)| s)
        .unwrap_or(0.0);
    if std < cfg.flat_std_uv as f64 {
        flags |= Quality::FLAT;
    }
    if clipped_frac > cfg.max_clipped_frac {
        flags |= Quality::CLIPPING;
    }
    if flags & Quality::FLAT == 0 {
        if !rr_plausible(peaks, fs, cfg) {
            flags |= Quality::IMPLAUSIBLE_RR;
        }
        if qrs_prominence(samples, peaks) < cfg.min_qrs_prominence {
            flags |= Quality::NOISY;
        }
    }
    Quality { flags }
}

/// Median |x| at the peaks / median |x| of the window (0 without peaks).
pub fn qrs_prominence(samples: &[f32], peaks: &[usize]) -> f32 {
    let mut at: Vec<f32> = peaks
        .iter()
        .filter_map(|&i| samples.get(i))
        .map(|x| x.abs())
        .collect();
    if at.is_empty() || samples.is_empty() {
        return 0.0;
    }
    let mut all: Vec<f32> = samples.iter().map(|x| x.abs()).collect();
    let m_all = *all
        .select_nth_unstable_by(samples.len() / 2, f32::total_cmp)
        .1;
    let k = at.len() / 2;
    let m_at = *at.select_nth_unstable_by(k, f32::total_cmp).1;
    if m_all > 0.0 {
        m_at / m_all
    } else {
        f32::INFINITY
    }
}

fn rr_plausible(peaks: &[usize], fs: f64, cfg: &QualityConfig) -> bool {
    if peaks.len() < cfg.min_beats.max(2) {
        return false;
    }
    let rr: Vec<f64> = peaks
        .windows(2)
        .map(|w| (w[1] as f64 - w[0] as f64) * 1000.0 / fs)
        .collect();
    let mut sorted = rr.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let bad = rr
        .iter()
        .filter(|&&r| !(RR_MIN_MS..=RR_MAX_MS).contains(&r) || (r - median).abs() > 0.6 * median)
        .count();
    (bad as f32) <= cfg.max_bad_rr_frac * rr.len() as f32
}

/// Counts clipped raw samples per input block and answers "what fraction of the raw samples
/// between t1 and t2 were clipped" for a window (see module docs).
#[derive(Debug, Default, Clone)]
pub struct ClipTracker {
    /// (t_first_ns, t_end_ns, clipped, total) per block, oldest first.
    blocks: VecDeque<(i64, i64, u32, u32)>,
}

/// Minimum run of identical raw values counted as clipping.
const CLIP_RUN: usize = 3;

impl ClipTracker {
    /// Record a raw block starting at `t0_ns` at `fs` Hz.
    pub fn push(&mut self, t0_ns: i64, fs: f64, raw: &[f32]) {
        if raw.is_empty() {
            return;
        }
        let t_end = t0_ns + (raw.len() as f64 * 1e9 / fs).round() as i64;
        self.blocks
            .push_back((t0_ns, t_end, count_clipped(raw) as u32, raw.len() as u32));
        // Keep ~1 minute of history: windows are 10 s and emitted < 1 s after their end.
        while let Some(&(_, e, _, _)) = self.blocks.front() {
            if t_end - e > 60_000_000_000 {
                self.blocks.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forget history (after a gap).
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// Fraction of clipped raw samples overlapping `[start_ns, end_ns)`, each block weighted
    /// by its overlap. 0 when nothing is known.
    pub fn fraction(&self, start_ns: i64, end_ns: i64) -> f32 {
        let (mut clipped, mut total) = (0.0f64, 0.0f64);
        for &(b0, b1, c, n) in &self.blocks {
            let ov = (b1.min(end_ns) - b0.max(start_ns)) as f64;
            if ov <= 0.0 || b1 <= b0 {
                continue;
            }
            let w = ov / (b1 - b0) as f64;
            clipped += w * c as f64;
            total += w * n as f64;
        }
        if total > 0.0 {
            (clipped / total) as f32
        } else {
            0.0
        }
    }
}

/// Samples in runs of ≥ [`CLIP_RUN`] identical non-zero values at ≥ 98 % of the block's
/// largest magnitude.
pub fn count_clipped(raw: &[f32]) -> usize {
    let peak = raw.iter().fold(0f32, |m, &x| m.max(x.abs()));
    if peak == 0.0 {
        return 0;
    }
    let level = 0.98 * peak;
    let mut count = 0;
    let mut i = 0;
    while i < raw.len() {
        let mut j = i + 1;
        while j < raw.len() && raw[j] == raw[i] {
            j += 1;
        }
        if j - i >= CLIP_RUN && raw[i].abs() >= level {
            count += j - i;
        }
        i = j;
    }
    count
}
