//! Streaming IIR filter chain: high-pass (baseline wander) → low-pass (EMG / HF noise) →
//! optional mains notch, all as biquads (crate `biquad`, Direct Form II Transposed, f64 state).
//!
//! # Design choices
//! * **f64 coefficients and state.** A 0.8 Hz high-pass at 1000 Hz puts its poles at
//!   r ≈ 0.9965; in f32 the DF2T state loses ~3 significant digits to the large DC/low-frequency
//!   terms. f64 costs nothing measurable at ECG rates (≤ 3 biquads × 1000 samples/s).
//! * **High-pass is 2nd order** (one Butterworth section, Q = 1/√2, −3 dB at `highpass_hz`).
//!   Attenuation: −36 dB at 0.1 Hz, −24 dB at 0.2 Hz, −17 dB at 0.3 Hz (re 0.8 Hz cutoff).
//!   A 4th-order cascade would double those numbers but also double the phase distortion of the
//!   slow ECG components (ST segment, T wave) that a causal filter introduces and lengthen the
//!   start-up ringing; the paper's windows are z-scored per person and the network sees 10 s,
//!   so residual respiration-band wander at −17 dB is acceptable. (Two identical Q = 1/√2
//!   sections would be a Linkwitz–Riley, −6 dB at the cutoff, not a Butterworth.)
//! * **Low-pass** 2nd-order Butterworth at `lowpass_hz` (default 40 Hz).
//! * **Notch** RBJ notch at `notch_hz` with quality `notch_q` (default 50 Hz, Q 30, i.e. a
//!   −3 dB bandwidth of ≈ 1.7 Hz; settles in ≈ 0.2 s).
//!
//! # Start-up transient
//! An ECG with a DC offset of a few mV makes a high-pass ring for several seconds if the
//! state starts at zero. By default the chain is *auto-primed*: on the first sample after
//! construction or [`FilterChain::reset`], every section's state is set to the steady state for
//! a constant input equal to that sample ([`FilterChain::prime`]), so a DC offset causes no
//! transient at all. What remains (the first sample is not exactly the baseline, e.g. when it
//! lands inside a QRS) decays with the high-pass time constant (≈ 0.3 s at 0.8 Hz); the
//! windower additionally discards `warmup_s` (default 2 s) after every start/gap.
//!
//! Non-finite input samples (NaN/∞ from a corrupt packet) are replaced by the last finite input
//! so that they cannot poison the recursive state forever.

use biquad::{Biquad, Coefficients, DirectForm2Transposed, Type};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DspError;

/// Filter settings (TOML section `[dsp.filter]`).
///
/// `lowpass_hz` / `notch_hz` can be switched off in TOML with `false` (TOML has no null), e.g.
/// `notch_hz = false`; in JSON `null` also works.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// High-pass cutoff (−3 dB), Hz. Default 0.8 (paper).
    pub highpass_hz: f32,
    /// Low-pass cutoff (−3 dB), Hz, or `None` for no low-pass. Default `Some(40.0)`.
    #[serde(serialize_with = "ser_opt_hz", deserialize_with = "de_opt_hz")]
    pub lowpass_hz: Option<f32>,
    /// Mains notch centre, Hz (50 or 60), or `None`. Default `Some(50.0)`.
    #[serde(serialize_with = "ser_opt_hz", deserialize_with = "de_opt_hz")]
    pub notch_hz: Option<f32>,
    /// Notch quality factor (centre / −3 dB bandwidth). Default 30.
    pub notch_q: f32,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            highpass_hz: 0.8,
            lowpass_hz: Some(40.0),
            notch_hz: Some(50.0),
            notch_q: 30.0,
        }
    }
}

/// Key prefix used in validation messages (the config file section).
pub(crate) const FILTER_KEY: &str = "dsp.filter";

fn cfg_err(field: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> DspError {
    DspError::InvalidConfig {
        key: format!("{FILTER_KEY}.{field}"),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl FilterConfig {
    /// Check the cutoffs against the sampling rate `fs` (Hz).
    ///
    /// Every cutoff must be finite, > 0 and below Nyquist (`fs / 2`); the high-pass must be
    /// below the low-pass; `notch_q` must be finite and > 0. The error message names the key,
    /// e.g. `dsp.filter.notch_hz = 60 must be below Nyquist (32.5 Hz for fs 65 Hz)`.
    /// A rate so low that the low-pass or notch cannot exist is an error: the caller decides
    /// whether to switch that stage off.
    pub fn validate(&self, fs: f64) -> Result<(), DspError> {
        if !(fs.is_finite() && fs > 0.0) {
            return Err(DspError::InvalidRate(fs));
        }
        let nyq = fs / 2.0;
        let check = |field: &str, hz: f32| -> Result<(), DspError> {
            if !hz.is_finite() || hz <= 0.0 {
                return Err(cfg_err(field, hz, "must be a finite frequency > 0 Hz"));
            }
            if hz as f64 >= nyq {
                return Err(cfg_err(
                    field,
                    hz,
                    format!("must be below Nyquist ({nyq} Hz for fs {fs} Hz)"),
                ));
            }
            Ok(())
        };
        check("highpass_hz", self.highpass_hz)?;
        if let Some(lp) = self.lowpass_hz {
            check("lowpass_hz", lp)?;
            if lp <= self.highpass_hz {
                return Err(cfg_err(
                    "lowpass_hz",
                    lp,
                    format!("must be above highpass_hz ({} Hz)", self.highpass_hz),
                ));
            }
        }
        if let Some(n) = self.notch_hz {
            check("notch_hz", n)?;
        }
        if !self.notch_q.is_finite() || self.notch_q <= 0.0 {
            return Err(cfg_err("notch_q", self.notch_q, "must be finite and > 0"));
        }
        Ok(())
    }
}

fn ser_opt_hz<S: Serializer>(v: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => s.serialize_f32(*x),
        // TOML cannot express null; `false` round-trips through our deserializer.
        None => s.serialize_bool(false),
    }
}

fn de_opt_hz<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Bool(bool),
        Str(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Num(x)) => Ok(Some(x as f32)),
        Some(Raw::Bool(false)) => Ok(None),
        Some(Raw::Bool(true)) => Err(serde::de::Error::custom(
            "expected a frequency in Hz, or false/\"off\" to disable (true is ambiguous)",
        )),
        Some(Raw::Str(s)) if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") => {
            Ok(None)
        }
        Some(Raw::Str(s)) => Err(serde::de::Error::custom(format!(
            "expected a frequency in Hz, or false/\"off\" to disable, got \"{s}\""
        ))),
    }
}

/// One biquad stage plus its DC gain (for priming).
#[derive(Debug, Clone, Copy)]
struct Stage {
    f: DirectForm2Transposed<f64>,
    c: Coefficients<f64>,
    dc_gain: f64,
}

impl Stage {
    fn new(kind: Type<f64>, fs: f64, f0: f64, q: f64) -> Result<Self, DspError> {
        let c =
            Coefficients::<f64>::from_normalized_params(kind, f0 / (fs / 2.0), q).map_err(|e| {
                DspError::InvalidConfig {
                    key: FILTER_KEY.to_string(),
                    value: format!("{f0} Hz"),
                    reason: format!("biquad design failed: {e:?}"),
                }
            })?;
        let dc_gain = (c.b0 + c.b1 + c.b2) / (1.0 + c.a1 + c.a2);
        Ok(Self {
            f: DirectForm2Transposed::<f64>::new(c),
            c,
            dc_gain,
        })
    }

    /// DF2T steady state for a constant input `x`: returns the (constant) output.
    fn prime(&mut self, x: f64) -> f64 {
        let y = self.dc_gain * x;
        let c = &self.c;
        self.f.s2 = c.b2 * x - c.a2 * y;
        self.f.s1 = c.b1 * x - c.a1 * y + self.f.s2;
        y
    }

    /// |H(e^{jω})| at frequency `f` for sampling rate `fs`.
    fn magnitude(&self, f: f64, fs: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f / fs;
        let (c1, s1) = (w.cos(), -w.sin());
        let (c2, s2) = ((2.0 * w).cos(), -(2.0 * w).sin());
        let c = &self.c;
        let num_re = c.b0 + c.b1 * c1 + c.b2 * c2;
        let num_im = c.b1 * s1 + c.b2 * s2;
        let den_re = 1.0 + c.a1 * c1 + c.a2 * c2;
        let den_im = c.a1 * s1 + c.a2 * s2;
        ((num_re * num_re + num_im * num_im) / (den_re * den_re + den_im * den_im)).sqrt()
    }
}

/// Streaming HP → LP → notch chain at one sampling rate. State is carried across
/// [`process`](FilterChain::process) calls, so feeding a signal in blocks of any size gives
/// bit-identical output to one big block.
#[derive(Debug, Clone)]
pub struct FilterChain {
    stages: Vec<Stage>,
    fs: f64,
    cfg: FilterConfig,
    auto_prime: bool,
    primed: bool,
    last_in: f64,
}

impl FilterChain {
    /// Design the chain for sampling rate `fs` (validates `cfg` first).
    pub fn new(fs: f64, cfg: &FilterConfig) -> Result<Self, DspError> {
        cfg.validate(fs)?;
        let q_bw = std::f64::consts::FRAC_1_SQRT_2;
        let mut stages = Vec::with_capacity(3);
        stages.push(Stage::new(
            Type::HighPass,
            fs,
            cfg.highpass_hz as f64,
            q_bw,
        )?);
        if let Some(lp) = cfg.lowpass_hz {
            stages.push(Stage::new(Type::LowPass, fs, lp as f64, q_bw)?);
        }
        if let Some(n) = cfg.notch_hz {
            stages.push(Stage::new(Type::Notch, fs, n as f64, cfg.notch_q as f64)?);
        }
        Ok(Self {
            stages,
            fs,
            cfg: *cfg,
            auto_prime: true,
            primed: false,
            last_in: 0.0,
        })
    }

    /// Sampling rate the chain was designed for.
    pub fn fs(&self) -> f64 {
        self.fs
    }

    /// The configuration the chain was built from.
    pub fn config(&self) -> &FilterConfig {
        &self.cfg
    }

    /// Enable/disable priming to the first sample's steady state after `new`/`reset`
    /// (default on). With it off the state starts at zero (classic filter start-up).
    pub fn set_auto_prime(&mut self, on: bool) {
        self.auto_prime = on;
    }

    /// Set every stage to the steady state for a constant input `x0` (DC offset removed
    /// without ringing). Called automatically on the first sample when auto-prime is on.
    pub fn prime(&mut self, x0: f32) {
        let mut x = x0 as f64;
        for s in &mut self.stages {
            x = s.prime(x);
        }
        self.last_in = x0 as f64;
        self.primed = true;
    }

    /// Forget all state (use after a gap). The next sample re-primes if auto-prime is on.
    pub fn reset(&mut self) {
        for s in &mut self.stages {
            s.f.reset_state();
        }
        self.primed = false;
        self.last_in = 0.0;
    }

    /// Filter `x` in place (any length, including 0).
    pub fn process(&mut self, x: &mut [f32]) {
        if x.is_empty() {
            return;
        }
        if !self.primed {
            if self.auto_prime {
                if let Some(first) = x.iter().copied().find(|v| v.is_finite()) {
                    self.prime(first);
                }
            }
            self.primed = true;
        }
        for v in x.iter_mut() {
            let mut s = *v as f64;
            if !s.is_finite() {
                s = self.last_in;
            } else {
                self.last_in = s;
            }
            for st in &mut self.stages {
                s = st.f.run(s);
            }
            *v = s as f32;
        }
    }

    /// Designed magnitude response of the whole chain at `f` Hz, in dB.
    pub fn response_db(&self, f: f64) -> f64 {
        let m: f64 = self
            .stages
            .iter()
            .map(|s| s.magnitude(f, self.fs))
            .product();
        20.0 * m.max(1e-300).log10()
    }
}
