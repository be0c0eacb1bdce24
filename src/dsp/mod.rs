//! Signal processing: raw ECG blocks (µV, any rate) → filtered 256 Hz 10 s [`Window`]s,
//! plus normalisation and R-peak / HRV helpers.
//!
//! ```text
//! samples µV @ fs_in ─► FilterChain (HP 0.8 Hz, LP 40 Hz, notch 50/60 Hz; at fs_in)
//!                    ─► Resampler (rubato sinc, fs_in → 256 Hz)
//!                    ─► Windower (2560 samples, hop 2560, first warmup_s discarded)
//!                    ─► Window { start_ns, fs_hz: 256, samples (filtered µV), index }
//! then, per consumer:  normalize::{SubjectStats (training), RunningStats (gateway)}
//!                      rpeak::{detect_rpeaks, hrv, nn_intervals}
//!                      baseline::WearerBaseline (the wearer's usual HR / HRV)
//! ```
//!
//! The **same code** runs offline (training: [`windows_from_recording`]) and live (gateway:
//! [`Preprocessor::push`] block by block). Every stage carries its state across blocks, so
//! splitting a recording into blocks of any size (0, 1, … samples) yields the same windows as
//! one block: bit-identical samples, identical `index`, and `start_ns` equal to within 1 ns of
//! rounding, provided the block timestamps are consistent with `fs_in` (the live path
//! re-anchors time at every block, see [`Preprocessor`]).
//!
//! Windows are **not** normalised: z-scoring needs per-person statistics that differ between
//! training ([`SubjectStats`]) and the gateway ([`RunningStats`]).
//!
//! Module paths use only `super::`/`self::` so the files compile both inside `affectgate` and
//! in a stand-alone scratch crate.

pub mod baseline;
pub mod filter;
pub mod normalize;
pub mod quality;
pub mod resample;
pub mod rpeak;
pub mod window;

pub use self::baseline::{BaselineConfig, BaselineTracker, WearerBaseline, MIN_BASELINE_WINDOWS};
pub use self::filter::{FilterChain, FilterConfig};
pub use self::normalize::{
    mean_std, zscore_in_place, zscore_self, NormUsed, RunningStats, SubjectStats, MIN_STD,
};
pub use self::resample::{Resampler, ResamplerKind};
pub use self::rpeak::{detect_rpeaks, hrv, nn_intervals, HrvStats, NnIntervals};
pub use self::window::{Window, Windower, WINDOW_FS, WINDOW_LEN};

use serde::{Deserialize, Serialize};

/// Errors of the DSP stage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DspError {
    /// A configuration value is out of range; `key` is the config key (e.g. `dsp.filter.notch_hz`).
    #[error("{key} = {value} {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
    /// A sampling rate that is not finite and > 0.
    #[error("sampling rate {0} Hz must be finite and > 0")]
    InvalidRate(f64),
    /// Standard deviation ≈ 0 (flat line / lead off): cannot z-score.
    #[error("flat signal: std {std} is below {min} (lead off or saturated?)")]
    FlatSignal { std: f64, min: f64 },
    /// rubato refused the configuration.
    #[error("resampler: {0}")]
    Resampler(String),
}

/// Pre-processing settings (TOML section `[dsp]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Filter chain (`[dsp.filter]`).
    pub filter: FilterConfig,
    /// Samples between window starts at 256 Hz (2560 = no overlap).
    pub hop: usize,
    /// Seconds discarded after start and after every gap (filter transient). Default 2.0.
    pub warmup_s: f32,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            filter: FilterConfig::default(),
            hop: WINDOW_LEN,
            warmup_s: 2.0,
        }
    }
}

impl PreprocessConfig {
    /// Validate for an input stream at `fs_in` Hz. Messages name the key (`dsp.hop`,
    /// `dsp.warmup_s`, `dsp.filter.lowpass_hz`, …).
    pub fn validate(&self, fs_in: f64) -> Result<(), DspError> {
        if !(fs_in.is_finite() && fs_in > 0.0) {
            return Err(DspError::InvalidRate(fs_in));
        }
        self.filter.validate(fs_in)?;
        if self.hop == 0 {
            return Err(DspError::InvalidConfig {
                key: "dsp.hop".into(),
                value: "0".into(),
                reason: "must be > 0 samples".into(),
            });
        }
        if !self.warmup_s.is_finite() || self.warmup_s < 0.0 || self.warmup_s > 3600.0 {
            return Err(DspError::InvalidConfig {
                key: "dsp.warmup_s".into(),
                value: self.warmup_s.to_string(),
                reason: "must be between 0 and 3600 s".into(),
            });
        }
        Ok(())
    }

    /// Warm-up in 256 Hz samples.
    pub fn warmup_samples(&self) -> usize {
        (self.warmup_s as f64 * WINDOW_FS).round() as usize
    }
}

/// FilterChain → Resampler → Windower for one sensor stream.
///
/// Timing: the block timestamps passed to [`push`](Preprocessor::push) are the times of each
/// block's first input sample. A resampled sample is timed from the most recent block anchor:
/// `t(j) = t0_last + (j / 256 + offset − i_last / fs_in)` seconds, where `i_last` is the input
/// index of the last block's first sample. So a sensor whose real rate differs slightly from
/// `fs_in` (Polar H10: 130.16 vs nominal 130 Hz) is re-synchronised at every block. Window
/// `start_ns` values are exact for one-block (offline) use:
/// `start + warmup_s + k·hop/256 s + Resampler::time_offset_s()` (offset < 4 ms).
///
/// Latency (live): the resampler holds back ≈ 0.1–0.3 s of signal
/// ([`Resampler::latency_s`]); a window is emitted when its last sample leaves the resampler.
#[derive(Debug)]
pub struct Preprocessor {
    fs_in: f64,
    cfg: PreprocessConfig,
    filter: FilterChain,
    resampler: Resampler,
    windower: Windower,
    scratch_in: Vec<f32>,
    scratch_out: Vec<f32>,
    /// Input samples since start/gap.
    n_in: u64,
    /// Resampled samples since start/gap.
    n_out: u64,
    /// (input index, t0) of the most recent non-empty block.
    anchor: Option<(u64, i64)>,
}

impl Preprocessor {
    /// Build the chain for an input rate `fs_in` (Hz); validates `cfg`.
    pub fn new(fs_in: f64, cfg: PreprocessConfig) -> Result<Self, DspError> {
        cfg.validate(fs_in)?;
        let filter = FilterChain::new(fs_in, &cfg.filter)?;
        let resampler = Resampler::new(fs_in)?;
        let windower = Windower::try_new(WINDOW_LEN, cfg.hop)?.with_warmup(cfg.warmup_samples());
        Ok(Self {
            fs_in,
            cfg,
            filter,
            resampler,
            windower,
            scratch_in: Vec::new(),
            scratch_out: Vec::new(),
            n_in: 0,
            n_out: 0,
            anchor: None,
        })
    }

    /// Input rate.
    pub fn fs_in(&self) -> f64 {
        self.fs_in
    }

    /// Configuration in use.
    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    /// Live latency of the resampler stage in seconds.
    pub fn latency_s(&self) -> f64 {
        self.resampler.latency_s()
    }

    /// Feed one block of raw samples (µV) whose first sample was taken at `t0_ns`; complete
    /// windows are appended to `out`. Empty blocks are ignored. No allocation in steady state
    /// apart from the emitted windows.
    pub fn push(&mut self, t0_ns: i64, samples_uv: &[f32], out: &mut Vec<Window>) {
        if samples_uv.is_empty() {
            return;
        }
        self.anchor = Some((self.n_in, t0_ns));
        self.n_in += samples_uv.len() as u64;

        self.scratch_in.clear();
        self.scratch_in.extend_from_slice(samples_uv);
        self.filter.process(&mut self.scratch_in);

        self.scratch_out.clear();
        self.resampler
            .process(&self.scratch_in, &mut self.scratch_out);
        self.emit(out);
    }

    /// Missing samples (sensor dropout, reconnect): discard the partial window and everything
    /// still inside the filter/resampler, restart warm-up and time alignment with the next
    /// block. No window ever spans a gap.
    pub fn gap(&mut self) {
        self.filter.reset();
        self.resampler.reset();
        self.windower.gap();
        self.n_in = 0;
        self.n_out = 0;
        self.anchor = None;
    }

    /// End of stream: flush the resampler tail (so offline processing loses no samples),
    /// emit any window that completes, discard the partial one, and reset as after a gap.
    pub fn finish(&mut self, out: &mut Vec<Window>) {
        self.scratch_out.clear();
        self.resampler.flush(&mut self.scratch_out);
        self.emit(out);
        self.gap();
    }

    fn emit(&mut self, out: &mut Vec<Window>) {
        if self.scratch_out.is_empty() {
            return;
        }
        let Some((i_anchor, t_anchor)) = self.anchor else {
            return;
        };
        let t_rel_s = self.n_out as f64 / WINDOW_FS + self.resampler.time_offset_s()
            - i_anchor as f64 / self.fs_in;
        let t_first = t_anchor + (t_rel_s * 1e9).round() as i64;
        self.windower.push(t_first, &self.scratch_out, out);
        self.n_out += self.scratch_out.len() as u64;
    }
}

/// Offline helper (training): one whole recording → its windows, with exactly the live code
/// path (one `push` + `finish`). `start_ns` is the time of `samples_uv[0]`.
pub fn windows_from_recording(
    fs_in: f64,
    samples_uv: &[f32],
    start_ns: i64,
    cfg: &PreprocessConfig,
) -> Result<Vec<Window>, DspError> {
    let mut p = Preprocessor::new(fs_in, cfg.clone())?;
    let mut out = Vec::new();
    p.push(start_ns, samples_uv, &mut out);
    p.finish(&mut out);
    Ok(out)
}
