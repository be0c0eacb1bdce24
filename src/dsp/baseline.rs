//! The wearer's baseline: where this person's heart rate and HRV usually sit, so a window can
//! be described *relative to the wearer* ("12 bpm above their usual") instead of in absolute
//! units that differ more between people than between calm and stress.
//!
//! Robust by construction: the median and the median absolute deviation (MAD, scaled by
//! 1.4826 to match a standard deviation for normal data) of the wearer's good windows, so a
//! few stressful or artefact-laden windows do not move it. The gateway keeps one per sensor
//! over a recent horizon; training and evaluation compute it per subject from that subject's
//! windows without looking at labels, so offline numbers mean what the gateway will do.

use super::rpeak::median;

/// Window features the baseline tracks, in this order.
pub const BASELINE_FEATURES: [&str; 3] = ["hr_bpm", "rmssd_ms", "sdnn_ms"];

/// Good windows needed before a baseline exists (5 minutes of ECG); until then a sensor is
/// `calibrating`.
pub const MIN_BASELINE_WINDOWS: usize = 30;

/// Smallest spread used per feature (bpm, ms, ms): a wearer whose heart rate never moved in
/// the horizon must not turn a 1 bpm change into 10 standard deviations.
const MIN_SCALE: [f64; 3] = [2.0, 3.0, 3.0];

/// A wearer's baseline of [`BASELINE_FEATURES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WearerBaseline {
    pub median: [f64; 3],
    /// 1.4826 × MAD, floored per feature.
    pub scale: [f64; 3],
    /// Windows it was computed from.
    pub n: usize,
}

impl WearerBaseline {
    /// The baseline of these windows' features (non-finite rows are skipped); `None` with
    /// fewer than [`MIN_BASELINE_WINDOWS`] usable rows.
    pub fn from_features(rows: &[[f64; 3]]) -> Option<WearerBaseline> {
        Self::from_features_min(rows, MIN_BASELINE_WINDOWS)
    }

    /// As [`from_features`](Self::from_features) with another minimum (offline evaluation on
    /// corpora that hold only a few minutes per person).
    pub fn from_features_min(rows: &[[f64; 3]], min_windows: usize) -> Option<WearerBaseline> {
        let ok: Vec<&[f64; 3]> = rows
            .iter()
            .filter(|r| r.iter().all(|v| v.is_finite()))
            .collect();
        if ok.len() < min_windows.max(3) {
            return None;
        }
        let mut median_ = [0.0; 3];
        let mut scale = [0.0; 3];
        for j in 0..3 {
            let mut col: Vec<f64> = ok.iter().map(|r| r[j]).collect();
            let m = median(&mut col).expect("at least 3 rows");
            let mut dev: Vec<f64> = col.iter().map(|v| (v - m).abs()).collect();
            median_[j] = m;
            scale[j] = (1.4826 * median(&mut dev).expect("at least 3 rows")).max(MIN_SCALE[j]);
        }
        Some(WearerBaseline {
            median: median_,
            scale,
            n: ok.len(),
        })
    }

    /// `x` in units of the wearer's spread from the wearer's median (a robust z-score).
    pub fn relative(&self, x: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|j| (x[j] - self.median[j]) / self.scale[j])
    }
}

/// The wearer baseline's settings (`[baseline]`, optional).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// How far back the baseline looks (days of good windows; default 7).
    pub horizon_days: f64,
    /// Good windows before a sensor has a baseline (default 30 = 5 minutes); until then its
    /// state messages say `"calibrating": true`.
    pub min_windows: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            horizon_days: 7.0,
            min_windows: MIN_BASELINE_WINDOWS,
        }
    }
}

impl BaselineConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.horizon_days.is_finite() && self.horizon_days > 0.0) {
            return Err(format!("horizon_days = {}: must be > 0", self.horizon_days));
        }
        if self.min_windows < 3 {
            return Err(format!("min_windows = {}: must be ≥ 3", self.min_windows));
        }
        Ok(())
    }
}

/// Recompute the baseline after this many new windows (5 minutes of one sensor).
pub const RECOMPUTE_EVERY: usize = 30;
/// Most rows kept: beyond it every other one of the older half is dropped, so a week of
/// windows (60 480) is summarised by an even sample of it and the persisted form stays small
/// (8192 × 20 bytes).
const MAX_ROWS: usize = 8192;

/// One sensor's baseline over a sliding horizon: the features of its good windows, oldest
/// first, and the baseline computed from them (refreshed every [`RECOMPUTE_EVERY`] windows, or
/// at once while there is none). The gateway fills it at start from the window store, so it
/// survives restarts.
#[derive(Debug, Clone)]
pub struct BaselineTracker {
    cfg: BaselineConfig,
    rows: std::collections::VecDeque<(i64, [f64; 3])>,
    current: Option<WearerBaseline>,
    since_update: usize,
}

impl BaselineTracker {
    pub fn new(cfg: BaselineConfig) -> Self {
        BaselineTracker {
            cfg,
            rows: Default::default(),
            current: None,
            since_update: 0,
        }
    }

    /// Add the features of a good window that started at `t_ns` (windows arrive in time
    /// order; older ones than the horizon are forgotten).
    pub fn push(&mut self, t_ns: i64, features: [f64; 3]) {
        if !features.iter().all(|v| v.is_finite()) {
            return;
        }
        self.rows.push_back((t_ns, features));
        if self.rows.len() > MAX_ROWS {
            let half = self.rows.len() / 2;
            let mut k = 0;
            self.rows.retain(|_| {
                k += 1;
                k > half || k % 2 == 0
            });
        }
        let horizon_ns = (self.cfg.horizon_days * 86_400e9) as i64;
        while self
            .rows
            .front()
            .is_some_and(|(t, _)| *t < t_ns.saturating_sub(horizon_ns))
        {
            self.rows.pop_front();
        }
        self.since_update += 1;
        if self.current.is_none() || self.since_update >= RECOMPUTE_EVERY {
            let rows: Vec<[f64; 3]> = self.rows.iter().map(|(_, f)| *f).collect();
            self.current = WearerBaseline::from_features_min(&rows, self.cfg.min_windows);
            self.since_update = 0;
        }
    }

    /// The rows as bytes (`i64` start ns + 3 × `f32`, little-endian), for the store's meta.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rows.len() * 20);
        for (t, f) in &self.rows {
            out.extend_from_slice(&t.to_le_bytes());
            for v in f {
                out.extend_from_slice(&(*v as f32).to_le_bytes());
            }
        }
        out
    }

    /// A tracker holding the rows of [`to_bytes`](Self::to_bytes) (a torn or foreign value
    /// yields the rows that parse; the rest is ignored, never an error: a baseline rebuilds).
    pub fn from_bytes(cfg: BaselineConfig, bytes: &[u8]) -> Self {
        let mut t = BaselineTracker::new(cfg);
        for c in bytes.chunks_exact(20) {
            let ts = i64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let f: [f64; 3] = std::array::from_fn(|j| {
                f64::from(f32::from_le_bytes(
                    c[8 + 4 * j..12 + 4 * j].try_into().expect("4 bytes"),
                ))
            });
            t.rows.push_back((ts, f));
        }
        let rows: Vec<[f64; 3]> = t.rows.iter().map(|(_, f)| *f).collect();
        t.current = WearerBaseline::from_features_min(&rows, t.cfg.min_windows);
        t
    }

    /// Whether a recompute just happened (the moment to persist).
    pub fn just_updated(&self) -> bool {
        self.since_update == 0
    }

    /// The baseline, once enough good windows were seen.
    pub fn baseline(&self) -> Option<&WearerBaseline> {
        self.current.as_ref()
    }

    /// Good windows inside the horizon.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_to_a_minority_of_outliers_and_needs_enough_windows() {
        let mut rows: Vec<[f64; 3]> = (0..40)
            .map(|i| [70.0 + (i % 5) as f64, 40.0 + (i % 3) as f64, 50.0])
            .collect();
        assert!(WearerBaseline::from_features(&rows[..29]).is_none());
        rows.extend([[180.0, 500.0, 400.0]; 5]);
        rows.push([f64::NAN, 1.0, 1.0]);
        let b = WearerBaseline::from_features(&rows).unwrap();
        assert_eq!(b.n, 45);
        assert_eq!(b.median[0], 72.0);
        assert!((b.scale[0] - 1.4826 * 1.0).abs() < 1e-9 || b.scale[0] == 2.0);
        assert_eq!(b.scale[2], 3.0, "a constant feature gets the floor");
        let r = b.relative([82.0, 41.0, 50.0]);
        assert!((r[0] - 10.0 / b.scale[0]).abs() < 1e-12);
    }

    #[test]
    fn tracker_calibrates_then_forgets_beyond_the_horizon() {
        let cfg = BaselineConfig {
            horizon_days: 1.0 / 24.0, // one hour
            min_windows: 30,
        };
        let mut t = BaselineTracker::new(cfg);
        let ten_s = 10_000_000_000i64;
        for i in 0..29 {
            t.push(i * ten_s, [60.0, 50.0, 50.0]);
        }
        assert!(t.baseline().is_none(), "calibrating below min_windows");
        t.push(29 * ten_s, [60.0, 50.0, 50.0]);
        assert_eq!(t.baseline().unwrap().median[0], 60.0);
        // Two hours later at 90 bpm: the old hour is forgotten, the baseline follows.
        for i in 0..400 {
            t.push(7200 * 1_000_000_000 + i * ten_s, [90.0, 30.0, 30.0]);
        }
        assert!(t.len() <= 361, "{}", t.len());
        assert_eq!(t.baseline().unwrap().median[0], 90.0);
        // What the store keeps survives a restart.
        let back = BaselineTracker::from_bytes(cfg_copy(), &t.to_bytes());
        assert_eq!(back.len(), t.len());
        assert_eq!(
            back.baseline().unwrap().median,
            t.baseline().unwrap().median
        );
        assert_eq!(BaselineTracker::from_bytes(cfg_copy(), b"torn").len(), 0);
    }

    fn cfg_copy() -> BaselineConfig {
        BaselineConfig {
            horizon_days: 1.0 / 24.0,
            min_windows: 30,
        }
    }
}
