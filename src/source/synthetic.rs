//! Synthetic ECG source: a streaming, seeded, physiologically plausible ECG generator.
//!
//! **What it owns and why.** Demos and load tests of the gateway need ECG without a chest strap
//! (hundreds of simulated sensors on one machine), and the R-peak detector needs ground truth.
//! [`SyntheticEcg`] produces µV samples at any output rate, block by block, and records the true
//! R-peak times it emitted ([`SyntheticEcg::beat_times_s`]).
//!
//! ## Model
//! The ECGSYN dynamical model of McSharry, Clifford, Tarassenko & Smith (IEEE TBME 2003):
//!
//! ```text
//! ẋ = α x − ω y          α = 1 − √(x² + y²),  θ = atan2(y, x)
//! ẏ = α y + ω x          ω = 2π / RR  (RR of the current beat)
//! ż = − Σᵢ aᵢ Δθᵢ exp(−Δθᵢ² / 2bᵢ²) − z      Δθᵢ = (θ − θᵢ) mod 2π ∈ [−π, π)
//! ```
//!
//! with P, Q, R, S, T events at θᵢ = [−70, −15, 0, 15, 100]°, aᵢ = [1.2, −5, 30, −7.5, 0.75],
//! bᵢ = [0.25, 0.1, 0.1, 0.1, 0.4], and ECGSYN's rate scaling (f = √(HR/60)):
//! bᵢ ← bᵢ·f, θ ← θ·[√f, f, 1, f, √f]. The baseline term z₀ of the paper is 0 here (baseline
//! wander is a separate, optional artefact). The three ODEs are integrated with fixed-step RK4
//! at `k · fs` where `k = ceil(512 / fs)` (≥ 512 Hz internal rate, e.g. 520.64 Hz for 130.16 Hz,
//! 1000 Hz for 500 Hz), so every output sample is an exact integrator state: no interpolation,
//! and the output does not depend on block sizes. z is scaled to µV so that the R peak is
//! ≈ `amplitude_uv` (the scale is calibrated once on a clean 60 bpm beat; the model's R height
//! is nearly rate independent because bᵢ² ∝ HR ∝ ω).
//!
//! **Beat timing.** The R peak is the crossing of θ = 0. At each crossing the next RR interval
//! is drawn and ω is set to 2π/RR, so the ground-truth R-to-R interval equals the drawn RR
//! exactly (θ advances at constant speed between crossings). The P-QRS-T morphology (θᵢ, bᵢ) is
//! updated at the beat boundary θ = ±π, where all waves are quiescent.
//!
//! ## RR-interval (HRV) model
//! ECGSYN's bimodal spectrum, made streaming: RR(t) = 60/HR + SDNN · s(t) with
//! s(t) = Σₖ Aₖ sin(2π fₖ t + φₖ), 16 components per band whose frequencies are drawn from the
//! ECGSYN Gaussians (LF: 0.1 Hz, σ 0.01 Hz; HF: 0.25 Hz, σ 0.01 Hz), with random phases and
//! power split LF/HF = `lf_hf_ratio`, normalised so that Var s = 1 (a random-frequency spectral
//! representation; its expected spectrum is the ECGSYN one). s is sampled at R-peak times.
//! ECGSYN normalises a finite tachogram to the exact SDNN; a stream cannot, so the SDNN of a
//! short segment scatters around the configured value (narrow-band process: use ≥ 5 min).
//! RR is clamped to 0.2–3 s.
//!
//! ## Artefacts (each off when its amplitude is 0)
//! Each has its own RNG stream derived from `seed`, so the clean ECG is identical with and
//! without artefacts (residual = artefact exactly):
//! - white Gaussian noise, `noise_uv` µV RMS;
//! - baseline wander: sinusoid of amplitude `baseline_uv` (peak) at `baseline_hz`, random phase
//!   (respiration-like);
//! - motion artefacts: Poisson bursts, `motion_per_min` per minute on average, each 0.3–1.5 s,
//!   a Hann-windowed sinusoid at 0.5–8 Hz with peak amplitude 0.5–1 × `motion_uv`.
//!
//! ## Run-time profile changes
//! [`SyntheticEcg::set_heart_rate`] and [`SyntheticEcg::set_hrv`] (e.g. an "arousal" profile:
//! higher HR, lower HRV) take effect at the next R peak (RR) and beat boundary (morphology).
//! The state (x, y, z) is continuous, so the signal has no jump at the switch.
//!
//! Module paths use no `crate::`, so the file also compiles in a stand-alone scratch crate.

use std::f64::consts::PI;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal, StandardNormal};
use serde::{Deserialize, Serialize};

/// Errors of the synthetic source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyntheticError {
    /// A configuration value is out of range; `key` is the config key (e.g. `hr_bpm`).
    #[error("{key} = {value} {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
}

/// Settings of one synthetic sensor.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Output sampling rate, Hz (default 130.16, a Polar H10). 25–10000.
    pub fs_hz: f64,
    /// Mean heart rate, bpm (default 70). 25–220.
    pub hr_bpm: f64,
    /// HRV as SDNN of the RR intervals, ms (default 50). 0–300.
    pub hrv_sdnn_ms: f64,
    /// LF (0.1 Hz) / HF (0.25 Hz) power ratio of the RR process (default 0.5). 0–100.
    pub lf_hf_ratio: f64,
    /// R-peak amplitude, µV (default 1200). > 0 and ≤ 100000.
    pub amplitude_uv: f64,
    /// White noise, µV RMS (default 0 = off).
    pub noise_uv: f64,
    /// Baseline wander amplitude (peak), µV (default 0 = off).
    pub baseline_uv: f64,
    /// Baseline wander frequency, Hz (default 0.25). 0.01–2.
    pub baseline_hz: f64,
    /// Motion-artefact bursts per minute on average (default 0 = off). 0–120.
    pub motion_per_min: f64,
    /// Motion-artefact peak amplitude, µV (default 0 = off).
    pub motion_uv: f64,
    /// Seed of all random streams (RR process, noise, baseline phase, motion).
    pub seed: u64,
    /// Scripted stress episodes (default 0 = none): one starts every `episode_every_s`
    /// seconds, the first at `episode_start_s`, and lasts `episode_s`; during it the heart
    /// rate is `hr_bpm + episode_hr_bpm` and the SDNN `hrv_sdnn_ms × episode_hrv_factor`.
    pub episode_every_s: f64,
    pub episode_start_s: f64,
    pub episode_s: f64,
    pub episode_hr_bpm: f64,
    pub episode_hrv_factor: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            fs_hz: 130.16,
            hr_bpm: 70.0,
            hrv_sdnn_ms: 50.0,
            lf_hf_ratio: 0.5,
            amplitude_uv: 1200.0,
            noise_uv: 0.0,
            baseline_uv: 0.0,
            baseline_hz: 0.25,
            motion_per_min: 0.0,
            motion_uv: 0.0,
            seed: 0,
            episode_every_s: 0.0,
            episode_start_s: 0.0,
            episode_s: 0.0,
            episode_hr_bpm: 0.0,
            episode_hrv_factor: 1.0,
        }
    }
}

/// Valid ranges (inclusive), shared by `validate` and the run-time setters.
const HR_RANGE: (f64, f64) = (25.0, 220.0);
const SDNN_RANGE: (f64, f64) = (0.0, 300.0);

fn check(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), SyntheticError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(SyntheticError::InvalidConfig {
            key: key.to_string(),
            value: v.to_string(),
            reason: format!("must be within {lo}..={hi}"),
        })
    }
}

impl SyntheticConfig {
    /// Check every value; the error names the key, e.g. `hr_bpm = 400 must be within 25..=220`.
    pub fn validate(&self) -> Result<(), SyntheticError> {
        check("fs_hz", self.fs_hz, 25.0, 10_000.0)?;
        check("hr_bpm", self.hr_bpm, HR_RANGE.0, HR_RANGE.1)?;
        check("hrv_sdnn_ms", self.hrv_sdnn_ms, SDNN_RANGE.0, SDNN_RANGE.1)?;
        check("lf_hf_ratio", self.lf_hf_ratio, 0.0, 100.0)?;
        check("amplitude_uv", self.amplitude_uv, 0.0, 100_000.0)?;
        if self.amplitude_uv <= 0.0 {
            return Err(SyntheticError::InvalidConfig {
                key: "amplitude_uv".into(),
                value: self.amplitude_uv.to_string(),
                reason: "must be > 0".into(),
            });
        }
        check("noise_uv", self.noise_uv, 0.0, 100_000.0)?;
        check("baseline_uv", self.baseline_uv, 0.0, 100_000.0)?;
        check("baseline_hz", self.baseline_hz, 0.01, 2.0)?;
        check("motion_per_min", self.motion_per_min, 0.0, 120.0)?;
        check("motion_uv", self.motion_uv, 0.0, 100_000.0)?;
        check("episode_every_s", self.episode_every_s, 0.0, 1e7)?;
        check("episode_start_s", self.episode_start_s, 0.0, 1e7)?;
        check("episode_s", self.episode_s, 0.0, 1e7)?;
        check("episode_hr_bpm", self.episode_hr_bpm, -100.0, 150.0)?;
        check("episode_hrv_factor", self.episode_hrv_factor, 0.0, 10.0)?;
        if self.episode_every_s > 0.0 && self.episode_s >= self.episode_every_s {
            return Err(SyntheticError::InvalidConfig {
                key: "episode_s".into(),
                value: self.episode_s.to_string(),
                reason: format!(
                    "must be shorter than episode_every_s = {}",
                    self.episode_every_s
                ),
            });
        }
        Ok(())
    }

    /// Whether second `t_s` of the signal lies inside a scripted episode.
    pub fn in_episode(&self, t_s: f64) -> bool {
        if self.episode_every_s <= 0.0 || t_s < self.episode_start_s {
            return false;
        }
        (t_s - self.episode_start_s).rem_euclid(self.episode_every_s) < self.episode_s
    }
}

// ---------------------------------------------------------------------------------------------
// ECGSYN core
// ---------------------------------------------------------------------------------------------

const THETA_DEG: [f64; 5] = [-70.0, -15.0, 0.0, 15.0, 100.0];
const A_I: [f64; 5] = [1.2, -5.0, 30.0, -7.5, 0.75];
const B_I: [f64; 5] = [0.25, 0.1, 0.1, 0.1, 0.4];
/// Gaussian terms farther than this many widths from θ are skipped (exp(−18) ≈ 1.5e-8).
const CUTOFF_SIGMAS: f64 = 6.0;

#[inline]
fn wrap_pi(a: f64) -> f64 {
    // Inputs are within (−3π, 3π); two conditional shifts suffice.
    let mut a = a;
    if a >= PI {
        a -= 2.0 * PI;
    } else if a < -PI {
        a += 2.0 * PI;
    }
    if a >= PI {
        a -= 2.0 * PI;
    } else if a < -PI {
        a += 2.0 * PI;
    }
    a
}

/// Events of one integrator step.
#[derive(Default)]
struct StepEvents {
    /// θ wrapped through ±π: a new beat starts (morphology may change).
    boundary: bool,
    /// θ crossed 0 (R peak) at this fraction of the step (0..1].
    r_peak: Option<f64>,
}

/// State and parameters of the three ODEs.
#[derive(Clone, Debug)]
struct Core {
    x: f64,
    y: f64,
    z: f64,
    /// atan2(y, x) of the current state (cached for the first RK4 stage).
    theta: f64,
    omega: f64,
    th: [f64; 5],
    b: [f64; 5],
    /// 1 / (2 bᵢ²).
    inv2b2: [f64; 5],
    /// CUTOFF_SIGMAS · bᵢ.
    cut: [f64; 5],
}

impl Core {
    fn new(hr_bpm: f64, rr_s: f64) -> Self {
        let mut c = Core {
            x: -1.0,
            y: 0.0,
            z: 0.0,
            theta: PI,
            omega: 2.0 * PI / rr_s,
            th: [0.0; 5],
            b: [0.0; 5],
            inv2b2: [0.0; 5],
            cut: [0.0; 5],
        };
        c.set_morphology(hr_bpm);
        c
    }

    /// ECGSYN rate scaling of the wave widths and positions.
    fn set_morphology(&mut self, hr_bpm: f64) {
        let f = (hr_bpm / 60.0).sqrt();
        let f2 = f.sqrt();
        let scale = [f2, f, 1.0, f, f2];
        for i in 0..5 {
            self.th[i] = THETA_DEG[i].to_radians() * scale[i];
            self.b[i] = B_I[i] * f;
            self.inv2b2[i] = 1.0 / (2.0 * self.b[i] * self.b[i]);
            self.cut[i] = CUTOFF_SIGMAS * self.b[i];
        }
    }

    #[inline]
    fn deriv(&self, x: f64, y: f64, z: f64, theta: f64) -> (f64, f64, f64) {
        let alpha = 1.0 - (x * x + y * y).sqrt();
        let dx = alpha * x - self.omega * y;
        let dy = alpha * y + self.omega * x;
        let mut forcing = 0.0;
        for (i, a) in A_I.iter().enumerate() {
            let d = wrap_pi(theta - self.th[i]);
            if d.abs() < self.cut[i] {
                forcing += a * d * (-d * d * self.inv2b2[i]).exp();
            }
        }
        (dx, dy, -forcing - z)
    }

    /// One RK4 step of length `h`.
    #[inline]
    fn step(&mut self, h: f64) -> StepEvents {
        let (x, y, z, t0) = (self.x, self.y, self.z, self.theta);
        let (k1x, k1y, k1z) = self.deriv(x, y, z, t0);
        let (x2, y2, z2) = (x + 0.5 * h * k1x, y + 0.5 * h * k1y, z + 0.5 * h * k1z);
        let (k2x, k2y, k2z) = self.deriv(x2, y2, z2, y2.atan2(x2));
        let (x3, y3, z3) = (x + 0.5 * h * k2x, y + 0.5 * h * k2y, z + 0.5 * h * k2z);
        let (k3x, k3y, k3z) = self.deriv(x3, y3, z3, y3.atan2(x3));
        let (x4, y4, z4) = (x + h * k3x, y + h * k3y, z + h * k3z);
        let (k4x, k4y, k4z) = self.deriv(x4, y4, z4, y4.atan2(x4));
        self.x = x + h / 6.0 * (k1x + 2.0 * k2x + 2.0 * k3x + k4x);
        self.y = y + h / 6.0 * (k1y + 2.0 * k2y + 2.0 * k3y + k4y);
        self.z = z + h / 6.0 * (k1z + 2.0 * k2z + 2.0 * k3z + k4z);
        let t1 = self.y.atan2(self.x);
        self.theta = t1;
        let mut ev = StepEvents::default();
        if t0 > 0.0 && t1 < 0.0 && t0 - t1 > PI {
            ev.boundary = true;
        } else if t0 < 0.0 && t1 >= 0.0 && t1 - t0 < PI {
            ev.r_peak = Some(-t0 / (t1 - t0));
        }
        ev
    }
}

/// z of the R peak of a clean 60 bpm beat (calibrates µV scaling).
fn calibrate_r_height() -> f64 {
    let mut c = Core::new(60.0, 1.0);
    let h = 1.0 / 1024.0;
    let mut zmax = f64::MIN;
    // Two beats; the second one is free of the start-up transient.
    for i in 0..2048 {
        c.step(h);
        if i >= 1024 {
            zmax = zmax.max(c.z);
        }
    }
    zmax
}

// ---------------------------------------------------------------------------------------------
// RR process
// ---------------------------------------------------------------------------------------------

const RR_COMPONENTS_PER_BAND: usize = 16;
const LF_HZ: f64 = 0.1;
const HF_HZ: f64 = 0.25;
const BAND_SD_HZ: f64 = 0.01;
const RR_MIN_S: f64 = 0.2;
const RR_MAX_S: f64 = 3.0;

/// Unit-variance random-phase sum of sinusoids with ECGSYN's LF/HF spectrum.
#[derive(Clone, Debug)]
struct RrProcess {
    w: Vec<f64>,
    amp: Vec<f64>,
    phase: Vec<f64>,
}

impl RrProcess {
    fn new(lf_hf: f64, rng: &mut SmallRng) -> Self {
        let n = RR_COMPONENTS_PER_BAND;
        let p_lf = lf_hf / (1.0 + lf_hf);
        let p_hf = 1.0 / (1.0 + lf_hf);
        let mut w = Vec::with_capacity(2 * n);
        let mut amp = Vec::with_capacity(2 * n);
        let mut phase = Vec::with_capacity(2 * n);
        for (fc, p) in [(LF_HZ, p_lf), (HF_HZ, p_hf)] {
            let dist = Normal::new(fc, BAND_SD_HZ).expect("valid normal");
            for _ in 0..n {
                let f: f64 = dist.sample(rng).max(0.005);
                w.push(2.0 * PI * f);
                amp.push((2.0 * p / n as f64).sqrt());
                phase.push(rng.random::<f64>() * 2.0 * PI);
            }
        }
        Self { w, amp, phase }
    }

    fn at(&self, t: f64) -> f64 {
        let mut s = 0.0;
        for k in 0..self.w.len() {
            s += self.amp[k] * (self.w[k] * t + self.phase[k]).sin();
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Ground-truth R-peak times kept: between `BEAT_HISTORY` and `2 · BEAT_HISTORY` most recent.
pub const BEAT_HISTORY: usize = 1000;

#[derive(Clone, Debug)]
struct Burst {
    t0: f64,
    dur: f64,
    w: f64,
    phase: f64,
    amp: f64,
}

/// Streaming ECGSYN generator with artefacts; see the module docs.
#[derive(Clone, Debug)]
pub struct SyntheticEcg {
    cfg: SyntheticConfig,
    /// Internal steps per output sample.
    k: u32,
    /// Internal step, s.
    h: f64,
    /// Output samples emitted.
    n_out: u64,
    /// Internal steps taken.
    n_step: u64,
    core: Core,
    /// Current (target) HR and SDNN; applied at the next R peak / beat boundary.
    hr_bpm: f64,
    sdnn_s: f64,
    rr: RrProcess,
    scale: f64,
    noise_rng: SmallRng,
    baseline_w: f64,
    baseline_phase: f64,
    motion_rng: SmallRng,
    motion_next_s: f64,
    burst: Option<Burst>,
    beats: Vec<f64>,
    beats_total: u64,
}

impl SyntheticEcg {
    /// Validate `cfg` and set up the generator at t = 0 (start of a beat; first R peak at
    /// ≈ RR/2).
    pub fn new(cfg: SyntheticConfig) -> Result<Self, SyntheticError> {
        cfg.validate()?;
        let k = (512.0 / cfg.fs_hz).ceil().max(1.0) as u32;
        let h = 1.0 / (k as f64 * cfg.fs_hz);
        let mut rr_rng = SmallRng::seed_from_u64(crate::rng::stream(cfg.seed, 1));
        let rr = RrProcess::new(cfg.lf_hf_ratio, &mut rr_rng);
        let hr_bpm = cfg.hr_bpm;
        let sdnn_s = cfg.hrv_sdnn_ms / 1000.0;
        let rr0 = (60.0 / hr_bpm + sdnn_s * rr.at(0.0)).clamp(RR_MIN_S, RR_MAX_S);
        let core = Core::new(hr_bpm, rr0);
        let scale = cfg.amplitude_uv / calibrate_r_height();
        let noise_rng = SmallRng::seed_from_u64(crate::rng::stream(cfg.seed, 2));
        let mut base_rng = SmallRng::seed_from_u64(crate::rng::stream(cfg.seed, 3));
        let baseline_phase = base_rng.random::<f64>() * 2.0 * PI;
        let mut motion_rng = SmallRng::seed_from_u64(crate::rng::stream(cfg.seed, 4));
        let motion_next_s = if cfg.motion_per_min > 0.0 && cfg.motion_uv > 0.0 {
            Exp::new(cfg.motion_per_min / 60.0)
                .expect("rate > 0")
                .sample(&mut motion_rng)
        } else {
            f64::INFINITY
        };
        Ok(Self {
            baseline_w: 2.0 * PI * cfg.baseline_hz,
            k,
            h,
            n_out: 0,
            n_step: 0,
            core,
            hr_bpm,
            sdnn_s,
            rr,
            scale,
            noise_rng,
            baseline_phase,
            motion_rng,
            motion_next_s,
            burst: None,
            beats: Vec::with_capacity(2 * BEAT_HISTORY),
            beats_total: 0,
            cfg,
        })
    }

    /// The configuration this generator was built with (setters do not change it).
    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    /// Output sampling rate, Hz.
    pub fn fs_hz(&self) -> f64 {
        self.cfg.fs_hz
    }

    /// Internal RK4 rate, Hz (`k · fs`, ≥ 512 Hz).
    pub fn internal_rate_hz(&self) -> f64 {
        self.k as f64 * self.cfg.fs_hz
    }

    /// Time of the next sample `fill` will write, s.
    pub fn time_s(&self) -> f64 {
        self.n_out as f64 / self.cfg.fs_hz
    }

    /// Current heart-rate target, bpm.
    pub fn heart_rate(&self) -> f64 {
        self.hr_bpm
    }

    /// Current SDNN target, ms.
    pub fn hrv_sdnn_ms(&self) -> f64 {
        self.sdnn_s * 1000.0
    }

    /// Change the mean heart rate (clamped to 25–220 bpm; non-finite values are ignored).
    /// Takes effect at the next R peak (RR) and beat boundary (wave widths); the signal stays
    /// continuous.
    pub fn set_heart_rate(&mut self, bpm: f64) {
        if bpm.is_finite() {
            self.hr_bpm = bpm.clamp(HR_RANGE.0, HR_RANGE.1);
        }
    }

    /// Change the HRV (SDNN, ms; clamped to 0–300, non-finite ignored). Takes effect at the next
    /// R peak.
    pub fn set_hrv(&mut self, sdnn_ms: f64) {
        if sdnn_ms.is_finite() {
            self.sdnn_s = sdnn_ms.clamp(SDNN_RANGE.0, SDNN_RANGE.1) / 1000.0;
        }
    }

    /// Ground-truth R-peak times (s since the first sample, increasing) of the beats emitted so
    /// far: the most recent ones, at least [`BEAT_HISTORY`] when that many exist. A peak is
    /// "emitted" once the first sample at or after it has been written.
    pub fn beat_times_s(&self) -> &[f64] {
        &self.beats
    }

    /// Number of R peaks emitted since the start (not bounded).
    pub fn beats_total(&self) -> u64 {
        self.beats_total
    }

    /// Write the next `out.len()` samples (µV). Any block size; the output is bit-identical to
    /// one long call.
    pub fn fill(&mut self, out: &mut [f32]) {
        let scripted = self.cfg.episode_every_s > 0.0;
        for o in out.iter_mut() {
            if scripted
                && self
                    .n_out
                    .is_multiple_of((self.cfg.fs_hz.round() as u64).max(1))
            {
                // Once a second: follow the episode script (applied at the next beat).
                let t = self.n_out as f64 / self.cfg.fs_hz;
                let (hr, sdnn) = if self.cfg.in_episode(t) {
                    (
                        self.cfg.hr_bpm + self.cfg.episode_hr_bpm,
                        self.cfg.hrv_sdnn_ms * self.cfg.episode_hrv_factor,
                    )
                } else {
                    (self.cfg.hr_bpm, self.cfg.hrv_sdnn_ms)
                };
                self.set_heart_rate(hr);
                self.set_hrv(sdnn);
            }
            *o = self.next_sample() as f32;
        }
    }

    fn next_sample(&mut self) -> f64 {
        // Sample n is the state at t = n / fs: advance from sample n − 1 first, so every
        // recorded R peak lies at or before the sample being written.
        if self.n_out > 0 {
            self.advance();
        }
        let t = self.n_out as f64 / self.cfg.fs_hz;
        let mut v = self.core.z * self.scale;
        if self.cfg.noise_uv > 0.0 {
            let g: f64 = StandardNormal.sample(&mut self.noise_rng);
            v += self.cfg.noise_uv * g;
        }
        if self.cfg.baseline_uv > 0.0 {
            v += self.cfg.baseline_uv * (self.baseline_w * t + self.baseline_phase).sin();
        }
        if self.motion_next_s.is_finite() {
            v += self.motion(t);
        }
        self.n_out += 1;
        v
    }

    /// `k` RK4 steps: one output sample period.
    fn advance(&mut self) {
        for _ in 0..self.k {
            let t_step = self.n_step as f64 * self.h;
            let ev = self.core.step(self.h);
            self.n_step += 1;
            if ev.boundary {
                self.core.set_morphology(self.hr_bpm);
            }
            if let Some(frac) = ev.r_peak {
                let tr = t_step + frac * self.h;
                self.push_beat(tr);
                let rr =
                    (60.0 / self.hr_bpm + self.sdnn_s * self.rr.at(tr)).clamp(RR_MIN_S, RR_MAX_S);
                self.core.omega = 2.0 * PI / rr;
            }
        }
    }

    fn push_beat(&mut self, t: f64) {
        if self.beats.len() >= 2 * BEAT_HISTORY {
            self.beats.drain(..BEAT_HISTORY);
        }
        self.beats.push(t);
        self.beats_total += 1;
    }

    fn motion(&mut self, t: f64) -> f64 {
        if self.burst.is_none() && t >= self.motion_next_s {
            let r = &mut self.motion_rng;
            self.burst = Some(Burst {
                t0: self.motion_next_s,
                dur: r.random_range(0.3..1.5),
                w: 2.0 * PI * r.random_range(0.5..8.0),
                phase: r.random::<f64>() * 2.0 * PI,
                amp: self.cfg.motion_uv * r.random_range(0.5..1.0),
            });
        }
        let Some(b) = &self.burst else { return 0.0 };
        let tau = t - b.t0;
        let u = tau / b.dur;
        if u >= 1.0 {
            let end = b.t0 + b.dur;
            self.burst = None;
            let gap: f64 = Exp::new(self.cfg.motion_per_min / 60.0)
                .expect("rate > 0")
                .sample(&mut self.motion_rng);
            self.motion_next_s = end + gap;
            // A new burst may already be due at t.
            return if t >= self.motion_next_s {
                self.motion(t)
            } else {
                0.0
            };
        }
        let win = 0.5 * (1.0 - (2.0 * PI * u).cos());
        b.amp * win * (b.w * tau + b.phase).sin()
    }
}
