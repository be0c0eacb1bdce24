//! Z-score normalisation ("z-score per person", as in the paper).
//!
//! * Training: [`SubjectStats`] — exact mean/std over all windows of one subject (Welford /
//!   Chan merge in f64), then [`SubjectStats::normalize`] every window of that subject.
//! * Gateway: [`RunningStats`] — per-sensor estimate that forgets: an exponentially weighted
//!   average over *windows* of each window's mean and mean square, with a time constant of
//!   `horizon_windows` windows (default 30 = 5 min of 10 s windows). Weights are
//!   bias-corrected (divided by their sum), so the estimate is unbiased from the first window.
//!   Until `min_windows` windows have been seen (default 3) the window is normalised with its
//!   **own** mean/std instead.
//! * Flat lines: a std below [`MIN_STD`] (lead off, saturated ADC, all-zero packets) gives
//!   [`DspError::FlatSignal`] instead of a division by ~0; such windows are not added to the
//!   running estimate.

use serde::{Deserialize, Serialize};

use super::DspError;

/// Smallest standard deviation accepted for normalisation, in signal units (µV for the
/// pipeline): anything below is a flat line. ECG has a std of tens to hundreds of µV.
pub const MIN_STD: f64 = 1e-3;

/// Mean and population std of `x` in f64 (`None` for an empty slice).
pub fn mean_std(x: &[f32]) -> Option<(f64, f64)> {
    if x.is_empty() {
        return None;
    }
    let (m, m2) = moments(x);
    Some((m, (m2 / x.len() as f64).max(0.0).sqrt()))
}

/// (mean, sum of squared deviations) — two-pass, exact enough in f64.
fn moments(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let m2 = x
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>();
    (mean, m2)
}

fn check_std(std: f64) -> Result<(), DspError> {
    if std.is_finite() && std >= MIN_STD {
        Ok(())
    } else {
        Err(DspError::FlatSignal { std, min: MIN_STD })
    }
}

/// `x ← (x − mean) / std` in place. Errors (leaving `x` untouched) if `std` is below
/// [`MIN_STD`] or not finite, or if `mean` is not finite.
pub fn zscore_in_place(x: &mut [f32], mean: f32, std: f32) -> Result<(), DspError> {
    check_std(std as f64)?;
    if !mean.is_finite() {
        return Err(DspError::FlatSignal {
            std: f64::NAN,
            min: MIN_STD,
        });
    }
    let inv = 1.0 / std;
    for v in x.iter_mut() {
        *v = (*v - mean) * inv;
    }
    Ok(())
}

/// Normalise `x` with its own mean/std.
pub fn zscore_self(x: &mut [f32]) -> Result<(f64, f64), DspError> {
    let (m, s) = mean_std(x).ok_or(DspError::FlatSignal {
        std: 0.0,
        min: MIN_STD,
    })?;
    zscore_in_place(x, m as f32, s as f32)?;
    Ok((m, s))
}

/// Exact batch mean/std over all samples of one subject (training).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectStats {
    n: u64,
    mean: f64,
    /// Sum of squared deviations from `mean`.
    m2: f64,
}

impl SubjectStats {
    /// Empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stats over a set of windows: anything iterable whose items view as `&[f32]`
    /// (`&[Window]`, `&Vec<Window>`, `&[&[f32]]`, `&Vec<Vec<f32>>`, …).
    pub fn from_windows<I>(windows: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[f32]>,
    {
        let mut s = Self::new();
        for w in windows {
            s.add(w.as_ref());
        }
        s
    }

    /// Add samples (e.g. one window).
    pub fn add(&mut self, x: &[f32]) {
        if x.is_empty() {
            return;
        }
        let (mb, m2b) = moments(x);
        self.merge(&SubjectStats {
            n: x.len() as u64,
            mean: mb,
            m2: m2b,
        });
    }

    /// Merge another accumulator (Chan et al. parallel update).
    pub fn merge(&mut self, o: &SubjectStats) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let (na, nb) = (self.n as f64, o.n as f64);
        let n = na + nb;
        let d = o.mean - self.mean;
        self.mean += d * nb / n;
        self.m2 += o.m2 + d * d * na * nb / n;
        self.n += o.n;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population standard deviation (0 when empty).
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).max(0.0).sqrt()
        }
    }

    /// Z-score `x` with this subject's mean/std (error if the subject's std is ~0).
    pub fn normalize(&self, x: &mut [f32]) -> Result<(), DspError> {
        zscore_in_place(x, self.mean as f32, self.std() as f32)
    }

    /// Infallible variant of [`normalize`](Self::normalize) for batch pipelines: z-scores
    /// `x`; if the subject's std is below [`MIN_STD`] (flat recording) it only subtracts the
    /// mean (so the window becomes ~0 instead of exploding). Check [`Self::is_flat`] to drop
    /// such subjects instead.
    pub fn apply(&self, x: &mut [f32]) {
        if self.normalize(x).is_err() {
            let m = if self.mean.is_finite() {
                self.mean as f32
            } else {
                0.0
            };
            for v in x.iter_mut() {
                *v -= m;
            }
        }
    }

    /// True when the std is below [`MIN_STD`] (or nothing was added).
    pub fn is_flat(&self) -> bool {
        check_std(self.std()).is_err()
    }
}

/// Which statistics [`RunningStats::normalize`] used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormUsed {
    pub mean: f64,
    pub std: f64,
    /// True when the running estimate was used, false when the window's own stats were.
    pub running: bool,
}

/// Forgetting per-sensor mean/std for the gateway (see module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    horizon_windows: f64,
    min_windows: u32,
    /// Bias-correction weight sum: w ← λ·w + 1.
    w_sum: f64,
    mean: f64,
    /// Weighted mean of x².
    sq: f64,
    n_windows: u64,
}

impl Default for RunningStats {
    /// 30-window horizon (5 min of 10 s windows), 3 windows before the estimate is used.
    fn default() -> Self {
        Self::new(30.0, 3)
    }
}

impl RunningStats {
    /// `horizon_windows`: time constant of the forgetting, in windows (≥ 1);
    /// `min_windows`: windows needed before the running estimate replaces per-window stats.
    pub fn new(horizon_windows: f64, min_windows: u32) -> Self {
        let h = if horizon_windows.is_finite() {
            horizon_windows.max(1.0)
        } else {
            30.0
        };
        Self {
            horizon_windows: h,
            min_windows,
            w_sum: 0.0,
            mean: 0.0,
            sq: 0.0,
            n_windows: 0,
        }
    }

    /// Horizon given as durations, e.g. `(10.0, 300.0)` → 30 windows.
    pub fn for_durations(window_s: f64, horizon_s: f64, min_windows: u32) -> Self {
        Self::new(horizon_s / window_s, min_windows)
    }

    /// Windows accepted so far.
    pub fn n_windows(&self) -> u64 {
        self.n_windows
    }

    /// Forget everything (new wearer / sensor re-attached).
    pub fn reset(&mut self) {
        *self = Self::new(self.horizon_windows, self.min_windows);
    }

    /// Add one window. Flat windows are rejected (error) and not added.
    pub fn update(&mut self, x: &[f32]) -> Result<(f64, f64), DspError> {
        let (m, s) = mean_std(x).ok_or(DspError::FlatSignal {
            std: 0.0,
            min: MIN_STD,
        })?;
        check_std(s)?;
        let lambda = 1.0 - 1.0 / self.horizon_windows;
        self.w_sum = lambda * self.w_sum + 1.0;
        let a = 1.0 / self.w_sum;
        self.mean += a * (m - self.mean);
        self.sq += a * ((s * s + m * m) - self.sq);
        self.n_windows += 1;
        Ok((m, s))
    }

    /// Current (mean, std), once at least `min_windows` windows were added.
    pub fn current(&self) -> Option<(f64, f64)> {
        if self.n_windows == 0 || self.n_windows < self.min_windows as u64 {
            return None;
        }
        let var = (self.sq - self.mean * self.mean).max(0.0);
        Some((self.mean, var.sqrt()))
    }

    /// Update with `x`, then z-score it with the running estimate (or, before
    /// `min_windows`, with its own stats). Flat windows → error, `x` untouched.
    pub fn normalize(&mut self, x: &mut [f32]) -> Result<NormUsed, DspError> {
        let (m_own, s_own) = self.update(x)?;
        let (mean, std, running) = match self.current() {
            Some((m, s)) if s >= MIN_STD => (m, s, true),
            _ => (m_own, s_own, false),
        };
        zscore_in_place(x, mean as f32, std as f32)?;
        Ok(NormUsed { mean, std, running })
    }
}
