//! The wearer's baseline: where this person's heart rate and HRV usually sit, so a window can
//! be described *relative to the wearer* ("12 bpm above their usual") instead of in absolute
//! units that differ more between people than between calm and stress.
//!
//! Robust by construction: the median and the median absolute deviation (MAD, scaled by
//! 1.4826 to match a standard deviation for normal data) of the wearer's good windows, so a
//! few stressful or artefact-laden windows do not move it. The gateway keeps one per sensor
//! over a recent horizon; training and evaluation compute it per subject from that subject's
//! windows without looking at labels, so offline numbers mean what the gateway will do.

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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
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
            let m = median(&mut col);
            let mut dev: Vec<f64> = col.iter().map(|v| (v - m).abs()).collect();
            median_[j] = m;
            scale[j] = (1.4826 * median(&mut dev)).max(MIN_SCALE[j]);
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
}
