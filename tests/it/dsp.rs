//! Tests of the DSP stage (`dsp::*`): filters, resampling, windowing, normalisation,
//! R-peak detection (MIT-BIH record 100, Polar H10 recording) and the composed pre-processor.
//!
//! Tests that need real data read it through `util::shared_data` (skip or, with
//! `AFFECTGATE_REQUIRE_DATA=1`, fail when it is absent).

use affectgate::dsp::{
    self, detect_rpeaks, hrv, mean_std, nn_intervals, windows_from_recording, zscore_in_place,
    zscore_self, DspError, FilterChain, FilterConfig, PreprocessConfig, Preprocessor, Resampler,
    RunningStats, SubjectStats, Window, Windower, WINDOW_FS, WINDOW_LEN,
};
use std::f64::consts::PI;

// ---------------------------------------------------------------------------------------------
// helpers

/// xorshift64* — deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }
    /// Block sizes mixing 0, 1, small and large.
    fn block(&mut self) -> usize {
        match self.below(6) {
            0 => 0,
            1 => 1,
            2 => self.below(8),
            3 => self.below(100),
            _ => self.below(1000),
        }
    }
}

fn sine(fs: f64, f: f64, secs: f64, amp: f64) -> Vec<f32> {
    let n = (fs * secs).round() as usize;
    (0..n)
        .map(|i| (amp * (2.0 * PI * f * i as f64 / fs).sin()) as f32)
        .collect()
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Gain in dB of `chain` for a sine at `f`, measured on the last `measure_s` seconds.
fn measured_gain_db(fs: f64, cfg: &FilterConfig, f: f64, secs: f64, measure_s: f64) -> f64 {
    let mut chain = FilterChain::new(fs, cfg).unwrap();
    let mut x = sine(fs, f, secs, 1000.0);
    let rin = rms(&x[x.len() - (measure_s * fs) as usize..]);
    chain.process(&mut x);
    let rout = rms(&x[x.len() - (measure_s * fs) as usize..]);
    20.0 * (rout / rin).log10()
}

/// Synthetic ECG-like signal: Gaussian QRS (R), small T wave, baseline wander, noise.
/// Returns (signal in µV, true R positions).
fn synth_ecg(fs: f64, secs: f64, hr_bpm: f64, polarity: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let n = (fs * secs) as usize;
    let mut rng = Rng(seed);
    let mut x = vec![0f32; n];
    let mut beats = Vec::new();
    let mut t = 0.4;
    while t < secs - 0.4 {
        beats.push((t * fs).round() as usize);
        let rr = 60.0 / hr_bpm * (1.0 + 0.05 * (rng.uniform() - 0.5));
        t += rr;
    }
    for &b in &beats {
        let tb = b as f64 / fs;
        let a = ((tb - 0.5) * fs).max(0.0) as usize;
        let e = (((tb + 0.6) * fs) as usize).min(n);
        for (i, v) in x.iter_mut().enumerate().take(e).skip(a) {
            let dt = i as f64 / fs - tb;
            let qrs = 1200.0 * (-(dt / 0.012).powi(2)).exp()
                - 250.0 * (-((dt + 0.03) / 0.01).powi(2)).exp()
                - 300.0 * (-((dt - 0.03) / 0.01).powi(2)).exp();
            let tw = 250.0 * (-((dt - 0.25) / 0.05).powi(2)).exp();
            *v += (qrs + tw) as f32;
        }
    }
    for (i, v) in x.iter_mut().enumerate() {
        let ti = i as f64 / fs;
        *v = polarity * *v + (300.0 * (2.0 * PI * 0.25 * ti).sin() + 15.0 * rng.gauss()) as f32;
    }
    (x, beats)
}

use crate::util::shared_data as data_dir;

/// Greedy one-to-one matching of detections to reference beats within `tol` samples.
/// Returns (true positives, false negatives, false positives).
fn match_beats(reference: &[usize], detected: &[usize], tol: usize) -> (usize, usize, usize) {
    let mut used = vec![false; detected.len()];
    let mut tp = 0;
    let mut j0 = 0;
    for &r in reference {
        while j0 < detected.len() && detected[j0] + tol < r {
            j0 += 1;
        }
        let mut best: Option<usize> = None;
        let mut j = j0;
        while j < detected.len() && detected[j] <= r + tol {
            if !used[j] && best.is_none_or(|b| detected[j].abs_diff(r) < detected[b].abs_diff(r)) {
                best = Some(j);
            }
            j += 1;
        }
        if let Some(b) = best {
            used[b] = true;
            tp += 1;
        }
    }
    (tp, reference.len() - tp, detected.len() - tp)
}

fn feed_random_blocks(p: &mut Preprocessor, x: &[f32], fs: f64, t0: i64, seed: u64) -> Vec<Window> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut i = 0;
    while i < x.len() {
        let k = rng.block().min(x.len() - i);
        let t = t0 + (i as f64 * 1e9 / fs).round() as i64;
        p.push(t, &x[i..i + k], &mut out);
        i += k;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// filter

#[test]
fn filter_frequency_response_measured_on_sines() {
    for &fs in &[130.16, 250.0, 360.0, 500.0, 1000.0] {
        let cfg = FilterConfig::default();
        let chain = FilterChain::new(fs, &cfg).unwrap();
        // 0.1 Hz: 60 s, measured over the last 20 s (2 periods).
        let g01 = measured_gain_db(fs, &cfg, 0.1, 60.0, 20.0);
        let g10 = measured_gain_db(fs, &cfg, 10.0, 10.0, 5.0);
        let g50 = measured_gain_db(fs, &cfg, 50.0, 10.0, 5.0);
        let g20 = measured_gain_db(fs, &cfg, 20.0, 10.0, 5.0);
        eprintln!(
            "fs {fs}: 0.1 Hz {g01:.1} dB (design {:.1}), 10 Hz {g10:.2} dB, 20 Hz {g20:.2} dB, 50 Hz {g50:.1} dB (design {:.1})",
            chain.response_db(0.1),
            chain.response_db(50.0)
        );
        assert!(
            g01 < -20.0,
            "0.1 Hz must be attenuated > 20 dB, got {g01:.1} dB at fs {fs}"
        );
        assert!(
            g10.abs() < 1.0,
            "10 Hz must pass within 1 dB, got {g10:.2} dB at fs {fs}"
        );
        assert!(
            g20.abs() < 1.0,
            "20 Hz must pass within 1 dB, got {g20:.2} dB at fs {fs}"
        );
        assert!(
            g50 < -30.0,
            "50 Hz notch must attenuate > 30 dB, got {g50:.1} dB at fs {fs}"
        );
        // The measured response matches the designed one at pass-band frequencies.
        assert!((g10 - chain.response_db(10.0)).abs() < 0.05);
    }
    // 60 Hz mains.
    let cfg60 = FilterConfig {
        notch_hz: Some(60.0),
        ..FilterConfig::default()
    };
    let g60 = measured_gain_db(500.0, &cfg60, 60.0, 10.0, 5.0);
    assert!(g60 < -30.0, "60 Hz notch: {g60:.1} dB");
    // Low-pass: 100 Hz at fs 500 attenuated by ≥ 15 dB (2nd order at 40 Hz → −16 dB).
    let g100 = measured_gain_db(500.0, &FilterConfig::default(), 100.0, 10.0, 5.0);
    assert!(g100 < -15.0, "100 Hz: {g100:.1} dB");
}

#[test]
fn filter_streaming_is_bit_identical_to_one_block() {
    let fs = 130.16;
    let (x, _) = synth_ecg(fs, 60.0, 70.0, 1.0, 7);
    let mut one = x.clone();
    FilterChain::new(fs, &FilterConfig::default())
        .unwrap()
        .process(&mut one);
    let mut chain = FilterChain::new(fs, &FilterConfig::default()).unwrap();
    let mut rng = Rng(99);
    let mut streamed = x.clone();
    let mut i = 0;
    while i < streamed.len() {
        let k = rng.block().min(streamed.len() - i);
        chain.process(&mut streamed[i..i + k]);
        i += k;
    }
    assert_eq!(one, streamed);
}

#[test]
fn filter_priming_removes_dc_step_transient() {
    let fs = 500.0;
    // 5 mV DC offset + 10 Hz, 100 µV.
    let x: Vec<f32> = sine(fs, 10.0, 5.0, 100.0)
        .iter()
        .map(|v| v + 5000.0)
        .collect();
    let mut primed = x.clone();
    FilterChain::new(fs, &FilterConfig::default())
        .unwrap()
        .process(&mut primed);
    let mut cold = x.clone();
    let mut c = FilterChain::new(fs, &FilterConfig::default()).unwrap();
    c.set_auto_prime(false);
    c.process(&mut cold);
    let max_primed = primed[..250].iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_cold = cold[..250].iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("first 0.5 s peak: primed {max_primed:.0} µV, cold start {max_cold:.0} µV");
    assert!(
        max_primed < 150.0,
        "primed start must not ring: {max_primed}"
    );
    assert!(max_cold > 2000.0, "cold start rings (sanity): {max_cold}");
    // reset() re-primes on the next sample.
    c.reset();
    c.set_auto_prime(true);
    let mut again = x.clone();
    c.process(&mut again);
    assert_eq!(again, primed);
}

#[test]
fn filter_survives_nan_and_empty() {
    let mut c = FilterChain::new(250.0, &FilterConfig::default()).unwrap();
    c.process(&mut []);
    let mut x = vec![1.0, f32::NAN, 2.0, f32::INFINITY, 3.0];
    c.process(&mut x);
    assert!(x.iter().all(|v| v.is_finite()));
    let mut y = sine(250.0, 10.0, 2.0, 100.0);
    c.process(&mut y);
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_filter_configs_are_rejected_naming_the_key() {
    let msg = |r: Result<(), DspError>| r.unwrap_err().to_string();
    let cfg = FilterConfig {
        notch_hz: Some(60.0),
        lowpass_hz: Some(20.0),
        ..Default::default()
    };
    let m = msg(cfg.validate(65.0));
    assert!(
        m.contains("dsp.filter.notch_hz") && m.contains("Nyquist") && m.contains("32.5"),
        "{m}"
    );
    let m = msg(FilterConfig::default().validate(65.0));
    assert!(
        m.contains("dsp.filter.lowpass_hz") && m.contains("Nyquist"),
        "{m}"
    );
    let m = msg(FilterConfig {
        highpass_hz: 0.0,
        ..Default::default()
    }
    .validate(250.0));
    assert!(m.contains("dsp.filter.highpass_hz"), "{m}");
    let m = msg(FilterConfig {
        highpass_hz: -1.0,
        ..Default::default()
    }
    .validate(250.0));
    assert!(m.contains("dsp.filter.highpass_hz"), "{m}");
    let m = msg(FilterConfig {
        highpass_hz: f32::NAN,
        ..Default::default()
    }
    .validate(250.0));
    assert!(m.contains("dsp.filter.highpass_hz"), "{m}");
    let m = msg(FilterConfig {
        lowpass_hz: Some(0.5),
        ..Default::default()
    }
    .validate(250.0));
    assert!(
        m.contains("dsp.filter.lowpass_hz") && m.contains("highpass"),
        "{m}"
    );
    let m = msg(FilterConfig {
        notch_q: 0.0,
        ..Default::default()
    }
    .validate(250.0));
    assert!(m.contains("dsp.filter.notch_q"), "{m}");
    let m = msg(FilterConfig {
        notch_hz: Some(0.0),
        ..Default::default()
    }
    .validate(250.0));
    assert!(m.contains("dsp.filter.notch_hz"), "{m}");
    assert!(matches!(
        FilterConfig::default().validate(0.0),
        Err(DspError::InvalidRate(_))
    ));
    assert!(matches!(
        FilterConfig::default().validate(f64::NAN),
        Err(DspError::InvalidRate(_))
    ));
    // Switching the offending stages off makes a 65 Hz stream acceptable.
    let low = FilterConfig {
        lowpass_hz: None,
        notch_hz: None,
        ..Default::default()
    };
    low.validate(65.0).unwrap();
    assert!(FilterChain::new(65.0, &FilterConfig::default()).is_err());
    // Polar H10 at its real rate is fine with the defaults (Nyquist 65.08 Hz > 50 Hz).
    FilterConfig::default().validate(130.16).unwrap();
}

#[test]
fn preprocess_config_serde_and_validation() {
    let d = PreprocessConfig::default();
    assert_eq!(d.hop, 2560);
    assert_eq!(d.warmup_s, 2.0);
    assert_eq!(d.filter.highpass_hz, 0.8);
    assert_eq!(d.filter.lowpass_hz, Some(40.0));
    assert_eq!(d.filter.notch_hz, Some(50.0));
    // Partial TOML fills defaults; `false` switches a stage off.
    let c: PreprocessConfig =
        toml::from_str("warmup_s = 3.0\n[filter]\nnotch_hz = 60\nlowpass_hz = false\n").unwrap();
    assert_eq!(c.warmup_s, 3.0);
    assert_eq!(c.filter.notch_hz, Some(60.0));
    assert_eq!(c.filter.lowpass_hz, None);
    assert_eq!(c.hop, 2560);
    // Round trip through TOML keeps `None`.
    let s = toml::to_string(&c).unwrap();
    let back: PreprocessConfig = toml::from_str(&s).unwrap();
    assert_eq!(back, c, "{s}");
    // Omitted keys keep their defaults, also next to a disabled stage.
    let c: PreprocessConfig = toml::from_str("[filter]\nnotch_hz = \"off\"\n").unwrap();
    assert_eq!(c.filter.notch_hz, None);
    assert_eq!(c.filter.lowpass_hz, Some(40.0));
    assert_eq!(c.filter.notch_q, 30.0);
    // JSON null also disables.
    let j: FilterConfig = serde_json::from_str(r#"{"notch_hz": null}"#).unwrap();
    assert_eq!(j.notch_hz, None);
    // Unknown keys are rejected and named.
    let e = toml::from_str::<PreprocessConfig>("hopp = 10\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("hopp"), "{e}");
    let e = toml::from_str::<PreprocessConfig>("[filter]\nnotch = 50\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("notch"), "{e}");
    let e = toml::from_str::<PreprocessConfig>("[filter]\nnotch_hz = true\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("false"), "{e}");
    // Value validation names the key.
    let e = PreprocessConfig {
        hop: 0,
        ..d.clone()
    }
    .validate(250.0)
    .unwrap_err()
    .to_string();
    assert!(e.contains("dsp.hop"), "{e}");
    let e = PreprocessConfig {
        warmup_s: -1.0,
        ..d.clone()
    }
    .validate(250.0)
    .unwrap_err()
    .to_string();
    assert!(e.contains("dsp.warmup_s"), "{e}");
    let e = Preprocessor::new(65.0, d.clone()).unwrap_err().to_string();
    assert!(e.contains("dsp.filter.lowpass_hz"), "{e}");
    let e = Preprocessor::new(20_000.0, d.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fs_in"), "{e}");
    assert!(Preprocessor::new(-1.0, d.clone()).is_err());
}

// ---------------------------------------------------------------------------------------------
// resampler

#[test]
fn resampler_output_length_matches_rate_ratio() {
    for &fs in &[130.16, 130.0, 250.0, 256.0, 360.0, 500.0, 1000.0] {
        let n_in = (fs * 600.0) as usize; // 10 min
        let x = sine(fs, 7.0, 600.0, 100.0);
        let mut r = Resampler::new(fs).unwrap();
        let mut out = Vec::new();
        let mut rng = Rng(5);
        let mut i = 0;
        while i < n_in {
            let k = rng.block().min(n_in - i);
            r.process(&x[i..i + k], &mut out);
            i += k;
        }
        let ideal = n_in as f64 * WINDOW_FS / fs;
        let live = out.len();
        r.flush(&mut out);
        eprintln!(
            "fs {fs}: n_in {n_in}, ideal {ideal:.2}, live {live} (latency {:.3} s), after flush {}",
            Resampler::new(fs).unwrap().latency_s(),
            out.len()
        );
        assert_eq!(out.len() as u64, ideal.ceil() as u64, "fs {fs}");
        let held_back = ideal - live as f64;
        assert!(
            held_back >= -1.0
                && held_back <= Resampler::new(fs).unwrap().latency_s() * WINDOW_FS + 1.0,
            "fs {fs}: live output {live} vs ideal {ideal}"
        );
    }
}

#[test]
fn resampler_preserves_sine_frequency_amplitude_and_timing() {
    for &fs in &[130.16, 250.0, 360.0, 500.0, 1000.0] {
        for &f in &[1.0, 10.0, 25.0, 40.0] {
            let secs = 20.0;
            let x = sine(fs, f, secs, 1000.0);
            let mut r = Resampler::new(fs).unwrap();
            let off = r.time_offset_s();
            assert!((0.0..1.0 / WINDOW_FS).contains(&off), "offset {off}");
            let mut y = Vec::new();
            r.process(&x, &mut y);
            r.flush(&mut y);
            // Compare with the ideal sine at the documented output times, away from the edges.
            let a = (2.0 * WINDOW_FS) as usize;
            let b = y.len() - (2.0 * WINDOW_FS) as usize;
            let mut err2 = 0.0;
            let mut sig2 = 0.0;
            // Frequency by least squares projection onto sin/cos at f and at f ± 0.05 Hz.
            for (j, &v) in y.iter().enumerate().take(b).skip(a) {
                let t = j as f64 / WINDOW_FS + off;
                let ideal = 1000.0 * (2.0 * PI * f * t).sin();
                err2 += (v as f64 - ideal).powi(2);
                sig2 += ideal * ideal;
            }
            let rel = (err2 / sig2).sqrt();
            if f >= 25.0 || fs < 200.0 {
                eprintln!("resample fs {fs} → 256, {f} Hz: relative RMS error vs ideal timed sine {rel:.4}");
            }
            // Sinc band edge: at 40 Hz from 130.16 Hz (cut-off ≈ 51 Hz) slightly attenuated.
            let tol = if f >= 40.0 { 0.03 } else { 0.02 };
            assert!(rel < tol, "fs {fs} f {f}: relative error {rel:.4}");
            // Zero-crossing frequency estimate.
            let mut zc = Vec::new();
            for j in a..b - 1 {
                if y[j] <= 0.0 && y[j + 1] > 0.0 {
                    zc.push(j as f64 + y[j] as f64 / (y[j] as f64 - y[j + 1] as f64));
                }
            }
            let f_est = (zc.len() - 1) as f64 * WINDOW_FS / (zc[zc.len() - 1] - zc[0]);
            assert!((f_est - f).abs() < 1e-3 * f, "fs {fs}: f {f} → {f_est}");
        }
    }
}

#[test]
fn resampler_streaming_is_bit_identical_and_handles_tiny_blocks() {
    for &fs in &[130.16, 500.0, 256.0] {
        let (x, _) = synth_ecg(fs, 30.0, 75.0, 1.0, 3);
        let mut one = Vec::new();
        let mut r = Resampler::new(fs).unwrap();
        r.process(&x, &mut one);
        r.flush(&mut one);
        for seed in [1, 2] {
            let mut r = Resampler::new(fs).unwrap();
            let mut out = Vec::new();
            let mut rng = Rng(seed);
            let mut i = 0;
            while i < x.len() {
                let k = rng.block().min(x.len() - i);
                r.process(&x[i..i + k], &mut out);
                i += k;
            }
            r.flush(&mut out);
            assert_eq!(one, out, "fs {fs}");
        }
        // Single-sample blocks.
        let mut r = Resampler::new(fs).unwrap();
        let mut out = Vec::new();
        for v in &x {
            r.process(std::slice::from_ref(v), &mut out);
        }
        r.flush(&mut out);
        assert_eq!(one, out);
        // After flush the resampler is reset and reusable.
        let mut again = Vec::new();
        r.process(&x, &mut again);
        r.flush(&mut again);
        assert_eq!(one, again);
    }
    // Empty input / flush without input.
    let mut r = Resampler::new(130.16).unwrap();
    let mut out = Vec::new();
    r.process(&[], &mut out);
    r.flush(&mut out);
    assert!(out.is_empty());
    // A stream shorter than one chunk still comes out with the right length.
    r.process(&[1.0, 2.0, 3.0], &mut out);
    r.flush(&mut out);
    assert_eq!(out.len(), (3.0f64 * 256.0 / 130.16).ceil() as usize);
    // Pass-through at 256 Hz.
    let mut p = Resampler::new(256.0).unwrap();
    assert!(p.is_passthrough());
    let mut o = Vec::new();
    p.process(&[1.0, 2.0], &mut o);
    assert_eq!(o, vec![1.0, 2.0]);
}

#[test]
fn poly_resampler_option_is_aligned_too() {
    use dsp::ResamplerKind;
    for &fs in &[130.16, 500.0] {
        let x = sine(fs, 5.0, 20.0, 1000.0);
        let mut r = Resampler::with_rates(fs, WINDOW_FS, ResamplerKind::Poly).unwrap();
        let off = r.time_offset_s();
        let mut y = Vec::new();
        for c in x.chunks(13) {
            r.process(c, &mut y);
        }
        r.flush(&mut y);
        assert_eq!(y.len(), (x.len() as f64 * WINDOW_FS / fs).ceil() as usize);
        let (mut e2, mut s2) = (0.0, 0.0);
        for (j, &v) in y.iter().enumerate().take(y.len() - 512).skip(512) {
            let ideal = 1000.0 * (2.0 * PI * 5.0 * (j as f64 / WINDOW_FS + off)).sin();
            e2 += (v as f64 - ideal).powi(2);
            s2 += ideal * ideal;
        }
        assert!((e2 / s2).sqrt() < 0.01, "fs {fs}: {}", (e2 / s2).sqrt());
    }
}

// ---------------------------------------------------------------------------------------------
// windower / pre-processor

#[test]
fn window_counts_182s_at_500hz() {
    // 182 s at 500 Hz → 46 592 samples at 256 Hz; minus 2 s warm-up (512) = 46 080 = 18 × 2560.
    let fs = 500.0;
    let (x, _) = synth_ecg(fs, 182.0, 70.0, 1.0, 11);
    assert_eq!(x.len(), 91_000);
    let cfg = PreprocessConfig::default();
    let start = 1_700_000_000_000_000_000i64;
    let w = windows_from_recording(fs, &x, start, &cfg).unwrap();
    assert_eq!(
        w.len(),
        18,
        "offline (with finish) gets the last, exactly complete window"
    );
    let off_ns = (Resampler::new(fs).unwrap().time_offset_s() * 1e9).round() as i64;
    for (k, win) in w.iter().enumerate() {
        assert_eq!(win.samples.len(), WINDOW_LEN);
        assert_eq!(win.fs_hz, 256.0);
        assert_eq!(win.index, k as u64);
        let expect = start + 2_000_000_000 + k as i64 * 10_000_000_000 + off_ns;
        assert!(
            (win.start_ns - expect).abs() <= 1,
            "window {k}: {} vs {expect}",
            win.start_ns
        );
        assert!(win.samples.iter().all(|v| v.is_finite()));
    }
    // Live, without finish(): the resampler still holds the last ~0.1 s → 17 windows.
    let mut p = Preprocessor::new(fs, cfg.clone()).unwrap();
    let live = feed_random_blocks(&mut p, &x, fs, start, 4);
    assert_eq!(live.len(), 17);
    let mut tail = Vec::new();
    p.finish(&mut tail);
    assert_eq!(tail.len(), 1);
    // General formula for other rates / lengths / hops.
    for &(fs, secs, hop, warm) in &[
        (130.16, 600.0, 2560usize, 2.0f32),
        (250.0, 95.5, 2560, 0.0),
        (360.0, 300.0, 1280, 2.0),
        (1000.0, 61.0, 3000, 5.0),
    ] {
        let n = (fs * secs) as usize;
        let x = sine(fs, 5.0, secs, 500.0);
        assert_eq!(x.len(), n);
        let cfg = PreprocessConfig {
            hop,
            warmup_s: warm,
            ..Default::default()
        };
        let w = windows_from_recording(fs, &x, 0, &cfg).unwrap();
        let n256 = (n as f64 * 256.0 / fs).ceil() as usize;
        let usable = n256.saturating_sub(cfg.warmup_samples());
        let expect = if usable < WINDOW_LEN {
            0
        } else {
            (usable - WINDOW_LEN) / hop + 1
        };
        assert_eq!(w.len(), expect, "fs {fs} secs {secs} hop {hop}");
        for pair in w.windows(2) {
            let dt = pair[1].start_ns - pair[0].start_ns;
            assert!((dt - (hop as f64 * 1e9 / 256.0) as i64).abs() <= 1);
        }
    }
}

#[test]
fn preprocessor_streaming_equals_one_shot() {
    for &fs in &[130.16, 360.0, 500.0] {
        let (x, _) = synth_ecg(fs, 75.0, 80.0, 1.0, 21);
        let start = 1_714_920_600_000_000_000i64;
        for cfg in [
            PreprocessConfig::default(),
            PreprocessConfig {
                hop: 1000,
                warmup_s: 0.5,
                ..Default::default()
            },
        ] {
            let one = windows_from_recording(fs, &x, start, &cfg).unwrap();
            assert!(!one.is_empty());
            let mut p = Preprocessor::new(fs, cfg.clone()).unwrap();
            let mut streamed = feed_random_blocks(&mut p, &x, fs, start, 77);
            p.finish(&mut streamed);
            assert_eq!(one.len(), streamed.len(), "fs {fs}");
            for (a, b) in one.iter().zip(&streamed) {
                assert_eq!(a.index, b.index);
                assert_eq!(a.samples, b.samples, "bit-identical samples, fs {fs}");
                assert!(
                    (a.start_ns - b.start_ns).abs() <= 1,
                    "{} vs {}",
                    a.start_ns,
                    b.start_ns
                );
            }
        }
    }
}

#[test]
fn gaps_never_inside_a_window() {
    let fs = 130.16;
    let (x, _) = synth_ecg(fs, 60.0, 70.0, 1.0, 5);
    let cfg = PreprocessConfig::default();
    let mut p = Preprocessor::new(fs, cfg).unwrap();
    let t0 = 1_000_000_000_000i64;
    // Segment A: 0–25 s, gap of 7 s, segment B: 32–60 s.
    let cut = (25.0 * fs) as usize;
    let resume = (32.0 * fs) as usize;
    let mut out = feed_random_blocks(&mut p, &x[..cut], fs, t0, 1);
    let gap_start = t0 + (cut as f64 * 1e9 / fs) as i64;
    let gap_end = t0 + (resume as f64 * 1e9 / fs) as i64;
    p.gap();
    let t_b = t0 + (resume as f64 * 1e9 / fs).round() as i64;
    out.extend(feed_random_blocks(&mut p, &x[resume..], fs, t_b, 2));
    p.finish(&mut out);
    // A: 25 s − 2 s warm-up = 23 s → 2 windows; B: 28 s − 2 s → 2 windows.
    assert_eq!(out.len(), 4);
    for w in &out {
        let overlaps = w.start_ns < gap_end && w.end_ns() > gap_start;
        assert!(
            !overlaps,
            "window {} [{}, {}) spans the gap",
            w.index,
            w.start_ns,
            w.end_ns()
        );
    }
    assert!(
        out[2].start_ns >= t_b + 2_000_000_000,
        "warm-up restarts after a gap"
    );
    let idx: Vec<u64> = out.iter().map(|w| w.index).collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
}

#[test]
fn windower_alignment_timestamps_hops_and_gap() {
    // Blocks with a clock 0.1 % fast: window starts follow the block timestamps.
    let mut w = Windower::new(100, 100);
    let mut out = Vec::new();
    let dt_ns = 1e9 / 256.0 * 1.001;
    for b in 0..10 {
        let t0 = (b as f64 * 37.0 * dt_ns).round() as i64;
        w.push(t0, &[b as f32; 37], &mut out);
    }
    assert_eq!(out.len(), 3);
    for (k, win) in out.iter().enumerate() {
        let p = k * 100;
        let blk = p / 37;
        let expect = (blk as f64 * 37.0 * dt_ns).round() as i64
            + ((p - blk * 37) as f64 * 1e9 / 256.0).round() as i64;
        assert!(
            (win.start_ns - expect).abs() <= 1,
            "{k}: {} vs {expect}",
            win.start_ns
        );
        assert_eq!(win.samples[0], blk as f32);
    }
    assert_eq!(w.pending(), 70);
    // Gap drops the partial window.
    w.gap();
    assert_eq!(w.pending(), 0);
    out.clear();
    w.push(5_000_000_000, &[1.0; 150], &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].start_ns, 5_000_000_000);
    assert_eq!(out[0].index, 3);
    // Overlap: hop 25, len 100, 300 samples → (300 − 100)/25 + 1 = 9 windows.
    let mut w = Windower::new(100, 25);
    let mut out = Vec::new();
    let ramp: Vec<f32> = (0..300).map(|i| i as f32).collect();
    for c in ramp.chunks(7) {
        let t0 = (c[0] as f64 * 1e9 / 256.0).round() as i64;
        w.push(t0, c, &mut out);
    }
    assert_eq!(out.len(), 9);
    for (k, win) in out.iter().enumerate() {
        assert_eq!(win.samples[0], (k * 25) as f32);
        assert_eq!(win.samples[99], (k * 25 + 99) as f32);
    }
    // hop > len skips samples between windows; warm-up skips the start.
    let mut w = Windower::new(10, 15).with_warmup(5);
    let mut out = Vec::new();
    w.push(0, &ramp[..60], &mut out);
    let firsts: Vec<f32> = out.iter().map(|w| w.samples[0]).collect();
    assert_eq!(firsts, vec![5.0, 20.0, 35.0, 50.0]);
    // Empty pushes do nothing.
    w.push(123, &[], &mut out);
    assert!(Windower::try_new(0, 10).is_err());
    assert!(Windower::try_new(10, 0).is_err());
}

#[test]
fn empty_and_tiny_inputs_never_panic() {
    let cfg = PreprocessConfig::default();
    assert!(windows_from_recording(250.0, &[], 0, &cfg)
        .unwrap()
        .is_empty());
    assert!(windows_from_recording(250.0, &[1.0], 0, &cfg)
        .unwrap()
        .is_empty());
    let mut p = Preprocessor::new(130.16, cfg).unwrap();
    let mut out = Vec::new();
    p.push(0, &[], &mut out);
    p.finish(&mut out);
    p.gap();
    p.finish(&mut out);
    assert!(out.is_empty());
    assert!(detect_rpeaks(&[], 256.0).is_empty());
    assert!(detect_rpeaks(&[0.0; 10], 256.0).is_empty());
    assert!(detect_rpeaks(&[0.0; 5000], 256.0).is_empty());
    assert!(detect_rpeaks(&[1.0; 5000], 0.0).is_empty());
    assert!(hrv(&[], 256.0).is_none());
    assert!(hrv(&[10, 300], 256.0).is_none());
    assert!(mean_std(&[]).is_none());
    let mut e: [f32; 0] = [];
    assert!(zscore_self(&mut e).is_err());
    assert!(RunningStats::default().normalize(&mut e).is_err());
}

// ---------------------------------------------------------------------------------------------
// normalisation

#[test]
fn zscore_and_subject_stats() {
    let mut rng = Rng(8);
    let mut x: Vec<f32> = (0..WINDOW_LEN)
        .map(|_| (50.0 + 200.0 * rng.gauss()) as f32)
        .collect();
    let (m, s) = zscore_self(&mut x).unwrap();
    assert!((m - 50.0).abs() < 15.0 && (s - 200.0).abs() < 10.0);
    let (m2, s2) = mean_std(&x).unwrap();
    assert!(m2.abs() < 1e-5, "mean {m2}");
    assert!((s2 - 1.0).abs() < 1e-5, "std {s2}");

    // Flat line → error, data untouched.
    let mut flat = vec![123.0f32; 100];
    let e = zscore_self(&mut flat).unwrap_err();
    assert!(matches!(e, DspError::FlatSignal { .. }), "{e}");
    assert_eq!(flat[0], 123.0);
    assert!(zscore_in_place(&mut flat, 0.0, 0.0).is_err());
    assert!(zscore_in_place(&mut flat, 0.0, 1e-9).is_err());
    assert!(zscore_in_place(&mut flat, 0.0, f32::NAN).is_err());

    // SubjectStats over windows == stats of the concatenation; merge is order independent.
    let wins: Vec<Window> = (0..7)
        .map(|k| Window {
            start_ns: 0,
            fs_hz: 256.0,
            samples: (0..WINDOW_LEN)
                .map(|_| (k as f64 * 30.0 + 100.0 * rng.gauss()) as f32)
                .collect(),
            index: k,
        })
        .collect();
    let all: Vec<f32> = wins
        .iter()
        .flat_map(|w| w.samples.iter().copied())
        .collect();
    let (ma, sa) = mean_std(&all).unwrap();
    let st = SubjectStats::from_windows(&wins);
    assert_eq!(st.count(), all.len() as u64);
    assert!((st.mean() - ma).abs() < 1e-9 && (st.std() - sa).abs() < 1e-9);
    let mut a = SubjectStats::from_windows(&wins[..3]);
    a.merge(&SubjectStats::from_windows(&wins[3..]));
    assert!((a.mean() - ma).abs() < 1e-9 && (a.std() - sa).abs() < 1e-9);
    let mut normed = all.clone();
    st.normalize(&mut normed).unwrap();
    let (mn, sn) = mean_std(&normed).unwrap();
    assert!(mn.abs() < 1e-5 && (sn - 1.0).abs() < 1e-5);
    assert!(SubjectStats::new().normalize(&mut normed).is_err());
    // Other item types: slices and Vecs of samples.
    let refs: Vec<&[f32]> = wins.iter().map(|w| w.samples.as_slice()).collect();
    let st2 = SubjectStats::from_windows(&refs);
    assert_eq!(st2, st);
    let owned: Vec<Vec<f32>> = wins.iter().map(|w| w.samples.clone()).collect();
    assert_eq!(SubjectStats::from_windows(&owned), st);
    // apply(): infallible; same as normalize() normally, centring only for a flat subject.
    let mut a1 = wins[0].samples.clone();
    let mut a2 = a1.clone();
    st.apply(&mut a1);
    st.normalize(&mut a2).unwrap();
    assert_eq!(a1, a2);
    let flat_st = SubjectStats::from_windows([&[5.0f32; 10][..]]);
    assert!(flat_st.is_flat() && !st.is_flat());
    let mut f = vec![5.0f32; 10];
    flat_st.apply(&mut f);
    assert!(f.iter().all(|v| *v == 0.0));
}

#[test]
fn running_stats_warm_up_forgetting_and_flat_guard() {
    let mut rng = Rng(3);
    let mut rs = RunningStats::default(); // 30-window horizon, 3 windows minimum
    let win = |std: f64, rng: &mut Rng| -> Vec<f32> {
        (0..WINDOW_LEN)
            .map(|_| (std * rng.gauss()) as f32)
            .collect()
    };
    // First two windows: own stats → exactly z-scored.
    for k in 0..2 {
        let mut w = win(100.0, &mut rng);
        let used = rs.normalize(&mut w).unwrap();
        assert!(!used.running, "window {k}");
        let (m, s) = mean_std(&w).unwrap();
        assert!(m.abs() < 1e-5 && (s - 1.0).abs() < 1e-5);
    }
    let used = rs.normalize(&mut win(100.0, &mut rng)).unwrap();
    assert!(used.running && (used.std - 100.0).abs() < 3.0, "{used:?}");
    // Flat window rejected and not counted.
    let n = rs.n_windows();
    let mut flat = vec![0.0f32; WINDOW_LEN];
    assert!(matches!(
        rs.normalize(&mut flat),
        Err(DspError::FlatSignal { .. })
    ));
    assert_eq!(rs.n_windows(), n);
    // Amplitude doubles: after ~5 min (30 windows) the estimate has mostly followed.
    for _ in 0..30 {
        rs.update(&win(200.0, &mut rng)).unwrap();
    }
    let (_, s) = rs.current().unwrap();
    eprintln!("running std after 30 windows at 200 (was 100): {s:.1}");
    assert!(s > 170.0 && s < 200.0, "{s}");
    for _ in 0..200 {
        rs.update(&win(200.0, &mut rng)).unwrap();
    }
    let (_, s) = rs.current().unwrap();
    assert!((s - 200.0).abs() < 3.0, "{s}");
    let mut w = win(200.0, &mut rng);
    rs.normalize(&mut w).unwrap();
    let (_, s) = mean_std(&w).unwrap();
    assert!((s - 1.0).abs() < 0.05);
    rs.reset();
    assert!(rs.current().is_none());
}

// ---------------------------------------------------------------------------------------------
// R peaks / HRV

#[test]
fn rpeaks_on_synthetic_ecg_both_polarities() {
    for &fs in &[256.0, 130.16, 360.0] {
        for &pol in &[1.0f32, -1.0] {
            let (x, truth) = synth_ecg(fs, 60.0, 72.0, pol, 17);
            let det = detect_rpeaks(&x, fs);
            let (tp, fn_, fp) = match_beats(&truth, &det, (0.05 * fs) as usize);
            assert_eq!(
                (fn_, fp),
                (0, 0),
                "fs {fs} pol {pol}: tp {tp} fn {fn_} fp {fp}"
            );
            // Refinement lands on the R extremum (±1 sample).
            let max_err = truth
                .iter()
                .zip(&det)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(
                max_err <= 1,
                "fs {fs}: max position error {max_err} samples"
            );
        }
    }
}

#[test]
fn hrv_from_known_rr() {
    let fs = 1000.0;
    // RR: 800, 820, 780, 800 ms, then an artefact 100 ms, then 810.
    let peaks = [0usize, 800, 1620, 2400, 3200, 3300, 4110];
    let h = hrv(&peaks, fs).unwrap();
    // Accepted: 800, 820, 780, 800, 810 (100 rejected); pairs: (800,820),(820,780),(780,800).
    let mean = (800.0 + 820.0 + 780.0 + 800.0 + 810.0) / 5.0;
    assert!((h.hr_bpm - 60_000.0 / mean).abs() < 1e-9);
    let rmssd = ((400.0 + 1600.0 + 400.0) / 3.0f64).sqrt();
    assert!((h.rmssd_ms - rmssd).abs() < 1e-9, "{}", h.rmssd_ms);
    let var = [800.0, 820.0, 780.0, 800.0, 810.0]
        .iter()
        .map(|v: &f64| (v - mean).powi(2))
        .sum::<f64>()
        / 4.0;
    assert!((h.sdnn_ms - var.sqrt()).abs() < 1e-9);
    assert_eq!(h.n_beats, 7);
}

/// MIT-BIH format 212 reader (test-only): returns both signals as mV.
fn read_212(path: &std::path::Path, gain: f64, baseline: f64) -> (Vec<f32>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    let mut s0 = Vec::with_capacity(b.len() / 3);
    let mut s1 = Vec::with_capacity(b.len() / 3);
    let sx = |v: i32| if v & 0x800 != 0 { v - 0x1000 } else { v };
    for c in b.chunks_exact(3) {
        let a = c[0] as i32 | ((c[1] as i32 & 0x0F) << 8);
        let d = c[2] as i32 | ((c[1] as i32 & 0xF0) << 4);
        s0.push(((sx(a) as f64 - baseline) / gain) as f32);
        s1.push(((sx(d) as f64 - baseline) / gain) as f32);
    }
    (s0, s1)
}

/// MIT annotation reader (test-only): sample positions of beat annotations.
fn read_atr_beats(path: &std::path::Path) -> Vec<usize> {
    read_atr(path).into_iter().map(|(t, _)| t).collect()
}

/// MIT annotation reader (test-only): (sample, MIT beat code) of every beat annotation
/// (1 = N normal, 5 = V premature ventricular, 8 = A atrial premature, …).
fn read_atr(path: &std::path::Path) -> Vec<(usize, u16)> {
    let b = std::fs::read(path).unwrap();
    let is_beat = |c: u16| matches!(c, 1..=13 | 16 | 25 | 30 | 34..=38);
    let mut t: i64 = 0;
    let mut i = 0;
    let mut beats = Vec::new();
    while i + 1 < b.len() {
        let w = u16::from_le_bytes([b[i], b[i + 1]]);
        i += 2;
        let code = w >> 10;
        let val = (w & 0x3FF) as i64;
        match code {
            0 if val == 0 => break,
            59 => {
                // SKIP: next 4 bytes are a PDP-11 long (high 16-bit word first).
                if i + 4 > b.len() {
                    break;
                }
                let hi = u16::from_le_bytes([b[i], b[i + 1]]) as u32;
                let lo = u16::from_le_bytes([b[i + 2], b[i + 3]]) as u32;
                t += ((hi << 16) | lo) as i32 as i64;
                i += 4;
            }
            60..=62 => {}
            63 => i += (val as usize + 1) & !1,
            _ => {
                t += val;
                if is_beat(code) {
                    beats.push((t as usize, code));
                }
            }
        }
    }
    beats
}

#[test]
fn mitbih_100_sensitivity_and_ppv() {
    let Some(dir) = data_dir() else {
        return;
    };
    let (dat, atr) = (dir.join("mitbih/100.dat"), dir.join("mitbih/100.atr"));
    if !dat.is_file() || !atr.is_file() {
        crate::util::missing(
            &format!("mitbih_100_sensitivity_and_ppv: {} missing", dat.display()),
            "AFFECTGATE_REQUIRE_DATA",
        );
        return;
    }
    let fs = 360.0;
    let (mlii, v5) = read_212(&dat, 200.0, 1024.0);
    assert_eq!(mlii.len(), 650_000);
    let reference = read_atr_beats(&atr);
    assert!(reference.len() > 2200, "{} beats", reference.len());
    let tol = (0.150 * fs) as usize;
    let t = std::time::Instant::now();
    let det = detect_rpeaks(&mlii, fs);
    let dt = t.elapsed();
    let (tp, fn_, fp) = match_beats(&reference, &det, tol);
    let se = tp as f64 / (tp + fn_) as f64;
    let ppv = tp as f64 / (tp + fp) as f64;
    eprintln!(
        "MIT-BIH 100 MLII: reference {} beats, detected {}, TP {tp}, FN {fn_}, FP {fp}, Se {:.2} %, PPV {:.2} % ({dt:?})",
        reference.len(), det.len(), se * 100.0, ppv * 100.0
    );
    // Inverted lead gives the same detections (polarity robustness).
    let inv: Vec<f32> = mlii.iter().map(|v| -v).collect();
    let det_inv = detect_rpeaks(&inv, fs);
    let (tp_i, fn_i, fp_i) = match_beats(&reference, &det_inv, tol);
    eprintln!("MIT-BIH 100 MLII inverted: TP {tp_i}, FN {fn_i}, FP {fp_i}");
    // Through the full pipeline (filter → 256 Hz → windows): detections per window.
    let windows = windows_from_recording(
        fs,
        &mlii,
        0,
        &PreprocessConfig {
            warmup_s: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut det_w = Vec::new();
    for w in &windows {
        let base = w.start_ns as f64 * 1e-9 * fs;
        det_w.extend(
            detect_rpeaks(&w.samples, 256.0)
                .iter()
                .map(|&p| (base + p as f64 * fs / 256.0).round() as usize),
        );
    }
    let covered_end = windows
        .last()
        .map(|w| (w.end_ns() as f64 * 1e-9 * fs) as usize)
        .unwrap_or(0);
    let ref_w: Vec<usize> = reference
        .iter()
        .copied()
        .filter(|&r| r < covered_end)
        .collect();
    let (tp_w, fn_w, fp_w) = match_beats(&ref_w, &det_w, tol);
    eprintln!(
        "MIT-BIH 100 via Preprocessor, per 10 s window at 256 Hz: reference {}, TP {tp_w}, FN {fn_w}, FP {fp_w}, Se {:.2} %, PPV {:.2} %",
        ref_w.len(), tp_w as f64 / ref_w.len() as f64 * 100.0, tp_w as f64 / (tp_w + fp_w) as f64 * 100.0
    );
    let det_v5 = detect_rpeaks(&v5, fs);
    let (tp5, fn5, fp5) = match_beats(&reference, &det_v5, tol);
    eprintln!("MIT-BIH 100 V5: TP {tp5}, FN {fn5}, FP {fp5}");
    assert!(se >= 0.99 && ppv >= 0.99, "Se {se:.4} PPV {ppv:.4}");
    assert!(tp_i as f64 / reference.len() as f64 >= 0.99 && fp_i <= fp + 10);
    assert!(tp_w as f64 / ref_w.len() as f64 >= 0.99 && tp_w as f64 / (tp_w + fp_w) as f64 >= 0.99);
}

struct Polar {
    t: Vec<i64>,
    x: Vec<f32>,
    /// (time, device HR)
    hr: Vec<(i64, f64)>,
    /// (notification time, device RR interval ms)
    rr: Vec<(i64, f64)>,
}

fn read_polar(path: &std::path::Path) -> Polar {
    let text = std::fs::read_to_string(path).unwrap();
    let mut p = Polar {
        t: Vec::new(),
        x: Vec::new(),
        hr: Vec::new(),
        rr: Vec::new(),
    };
    for line in text.lines().skip(1) {
        let mut f = line.trim_end().split(',');
        let ti: i64 = f.next().unwrap().parse().unwrap();
        let v: f32 = f.next().unwrap().parse().unwrap();
        if let Some(h) = f.next().filter(|s| !s.is_empty()) {
            p.hr.push((ti, h.parse::<f64>().unwrap()));
        }
        if let Some(r) = f.next().filter(|s| !s.is_empty()) {
            p.rr.push((ti, r.parse::<f64>().unwrap()));
        }
        p.t.push(ti);
        p.x.push(v);
    }
    p
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[test]
fn polar_h10_hr_vs_device() {
    let Some(dir) = data_dir() else {
        return;
    };
    let path = dir.join("polar-h10/polar_h10_ecg.csv");
    if !path.is_file() {
        crate::util::missing(
            &format!("polar_h10_hr_vs_device: {} missing", path.display()),
            "AFFECTGATE_REQUIRE_DATA",
        );
        return;
    }
    let pol = read_polar(&path);
    let (t, x, dev_hr) = (&pol.t, &pol.x, &pol.hr);
    let fs = (t.len() - 1) as f64 / ((t[t.len() - 1] - t[0]) as f64 * 1e-9);
    eprintln!(
        "Polar H10: {} samples, fs {fs:.4} Hz, {} device HR values",
        x.len(),
        dev_hr.len()
    );
    // Live path: blocks of 73 samples (one PMD notification) with the sensor timestamps.
    let mut p = Preprocessor::new(fs, PreprocessConfig::default()).unwrap();
    let mut windows = Vec::new();
    let t_start = std::time::Instant::now();
    for (k, c) in x.chunks(73).enumerate() {
        p.push(t[k * 73], c, &mut windows);
    }
    p.finish(&mut windows);
    let el = t_start.elapsed();
    eprintln!(
        "Polar H10: {} windows, pipeline time {el:?} for {:.0} s of ECG",
        windows.len(),
        x.len() as f64 / fs
    );
    assert_eq!(windows.len(), 59);
    // Window times agree with the sensor clock.
    assert!((windows[0].start_ns - (t[0] + 2_000_000_000)).abs() < 10_000_000);

    let mut diffs_med = Vec::new();
    let mut diffs_mean = Vec::new();
    let mut rows = Vec::new();
    for w in &windows {
        let peaks = detect_rpeaks(&w.samples, WINDOW_FS);
        let mut inst: Vec<f64> = peaks
            .windows(2)
            .map(|p| (p[1] - p[0]) as f64 / WINDOW_FS * 1000.0)
            .filter(|rr| (300.0..=2000.0).contains(rr))
            .map(|rr| 60_000.0 / rr)
            .collect();
        let mut dev: Vec<f64> = dev_hr
            .iter()
            .filter(|(ti, _)| *ti >= w.start_ns && *ti < w.end_ns())
            .map(|&(_, h)| h)
            .collect();
        if inst.len() < 3 || dev.is_empty() {
            continue;
        }
        let ours_med = median(&mut inst);
        let ours_mean = hrv(&peaks, WINDOW_FS).map(|h| h.hr_bpm).unwrap_or(f64::NAN);
        let theirs = median(&mut dev);
        diffs_med.push((ours_med - theirs).abs());
        diffs_mean.push((ours_mean - theirs).abs());
        rows.push(format!(
            "{}:{:.0}/{:.0}/{:.0}",
            w.index, ours_med, ours_mean, theirs
        ));
    }
    let mad_med = diffs_med.iter().sum::<f64>() / diffs_med.len() as f64;
    let mad_mean = diffs_mean.iter().sum::<f64>() / diffs_mean.len() as f64;
    eprintln!(
        "per window index:median-inst-HR/mean-HR/device-HR: {}",
        rows.join(" ")
    );
    eprintln!(
        "Polar H10: {} windows compared; MAD median-instantaneous-HR vs device {mad_med:.2} bpm; MAD mean-RR HR vs device {mad_mean:.2} bpm",
        diffs_med.len()
    );
    // Whole-record detection at the native rate vs device RR count.
    let det = detect_rpeaks(x, fs);
    let dur_min = x.len() as f64 / fs / 60.0;
    let dev_mean = dev_hr.iter().map(|h| h.1).sum::<f64>() / dev_hr.len() as f64;
    eprintln!(
        "Polar H10 native {fs:.2} Hz: {} beats in {dur_min:.2} min = {:.1} bpm; device mean HR {dev_mean:.1} bpm",
        det.len(), det.len() as f64 / dur_min
    );
    // Inverted lead: same beat count (polarity robustness on real data with PVCs).
    let inv: Vec<f32> = x.iter().map(|v| -v).collect();
    let det_inv = detect_rpeaks(&inv, fs);
    let (tp_i, fn_i, fp_i) = match_beats(&det, &det_inv, (0.15 * fs) as usize);
    eprintln!(
        "Polar H10 inverted vs upright detections: matched {tp_i}, missing {fn_i}, extra {fp_i}"
    );
    assert!(fn_i + fp_i <= 8, "inverted: missing {fn_i} extra {fp_i}");
    // Per window: our mean-RR HR vs the HR from the device's own RR intervals reported in
    // the same window (notification times lag the beats by < 1 s).
    let mut d_dev = Vec::new();
    for w in &windows {
        let rr_in: Vec<f64> = pol
            .rr
            .iter()
            .filter(|(ti, _)| *ti >= w.start_ns && *ti < w.end_ns())
            .map(|r| r.1)
            .collect();
        let peaks = detect_rpeaks(&w.samples, WINDOW_FS);
        let (Some(h), true) = (hrv(&peaks, WINDOW_FS), rr_in.len() >= 3) else {
            continue;
        };
        let dev_hr_w = 60_000.0 / (rr_in.iter().sum::<f64>() / rr_in.len() as f64);
        d_dev.push((h.hr_bpm - dev_hr_w).abs());
    }
    let mad_dev = d_dev.iter().sum::<f64>() / d_dev.len() as f64;
    eprintln!(
        "Polar H10 per window: MAD of our mean-RR HR vs HR from the device's RR intervals {mad_dev:.2} bpm ({} windows)",
        d_dev.len()
    );
    assert!(diffs_med.len() >= 50);
    assert!(mad_mean < 5.0, "MAD {mad_mean:.2} bpm");
    assert!(mad_dev < 5.0, "{mad_dev}");
}

#[test]
fn throughput_many_sensors() {
    // One hour of 130.16 Hz ECG through the live path in notification-size blocks.
    let fs = 130.16;
    let (x, _) = synth_ecg(fs, 3600.0, 70.0, 1.0, 1);
    let mut p = Preprocessor::new(fs, PreprocessConfig::default()).unwrap();
    let mut out = Vec::new();
    let t = std::time::Instant::now();
    for (k, c) in x.chunks(73).enumerate() {
        p.push((k as f64 * 73.0 / fs * 1e9) as i64, c, &mut out);
    }
    let el = t.elapsed().as_secs_f64();
    let t2 = std::time::Instant::now();
    let mut beats = 0;
    for w in &out {
        beats += detect_rpeaks(&w.samples, WINDOW_FS).len();
    }
    let el2 = t2.elapsed().as_secs_f64();
    eprintln!(
        "throughput: 1 h @130 Hz preprocessed in {:.1} ms ({:.0}x real time); R-peaks for {} windows in {:.1} ms ({} beats)",
        el * 1e3, 3600.0 / el, out.len(), el2 * 1e3, beats
    );
    assert!(out.len() >= 358);
}

#[test]
fn reexports_are_reachable() {
    fn is_send<T: Send>() {}
    is_send::<Preprocessor>();
    is_send::<Resampler>();
    is_send::<Window>();
    let _ = dsp::filter::FilterChain::new(250.0, &FilterConfig::default()).unwrap();
    let _ = dsp::resample::ResamplerKind::Poly;
    let _ = dsp::window::WINDOW_LEN;
    let _ = dsp::normalize::MIN_STD;
    let _ = dsp::rpeak::RR_MIN_MS;
}

/// RMSSD (ms) over adjacent intervals of `rr` that pass `keep` (the rule before NN correction
/// passed the plausible range only).
fn rmssd_where(rr: &[f64], keep: impl Fn(usize) -> bool) -> Option<f64> {
    let d: Vec<f64> = (1..rr.len())
        .filter(|&i| keep(i) && keep(i - 1))
        .map(|i| rr[i] - rr[i - 1])
        .collect();
    (!d.is_empty()).then(|| (d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64).sqrt())
}

/// Ectopic-beat correction against MIT-BIH record 100's annotations (33 atrial premature
/// beats and 1 ventricular among ≈ 2270): (1) on the annotated beats, which intervals the
/// rule flags; (2) per 10 s window of detected peaks, RMSSD before and after correction
/// against the reference RMSSD of the annotated normal-to-normal intervals.
#[test]
fn nn_correction_on_mitbih_100_annotations() {
    let Some(dir) = data_dir() else {
        return;
    };
    let fs = 360.0;
    let beats = read_atr(&dir.join("mitbih/100.atr"));
    let rr: Vec<f64> = beats
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) as f64 * 1000.0 / fs)
        .collect();
    // Interval i ends at beat i+1; it is ectopic-related if either end is not normal.
    let abnormal: Vec<bool> = beats
        .windows(2)
        .map(|w| w[0].1 != 1 || w[1].1 != 1)
        .collect();
    let nn = nn_intervals(&rr);
    let flagged = &nn.flagged;
    let n_abn = abnormal.iter().filter(|&&a| a).count();
    let hit = (0..rr.len()).filter(|&i| abnormal[i] && flagged[i]).count();
    let n_norm = rr.len() - n_abn;
    let false_flags = (0..rr.len())
        .filter(|&i| !abnormal[i] && flagged[i])
        .count();
    eprintln!(
        "MIT-BIH 100 annotations: {} intervals, {n_abn} touch a non-normal beat, {hit} of them flagged ({:.1} %); {false_flags} of {n_norm} normal intervals flagged ({:.2} %)",
        rr.len(),
        100.0 * hit as f64 / n_abn as f64,
        100.0 * false_flags as f64 / n_norm as f64
    );
    assert!(hit as f64 >= 0.8 * n_abn as f64, "{hit} of {n_abn}");
    assert!((false_flags as f64) < 0.01 * n_norm as f64, "{false_flags}");

    // Per 10 s window of *detected* peaks (what the gateway sees).
    let (mlii, _) = read_212(&dir.join("mitbih/100.dat"), 200.0, 1024.0);
    let win = (10.0 * fs) as usize;
    let (mut err_old, mut err_new, mut n_ect) = (0.0, 0.0, 0usize);
    for (k, chunk) in mlii.chunks_exact(win).enumerate() {
        let (a, b) = (k * win, (k + 1) * win);
        let in_win: Vec<&(usize, u16)> = beats.iter().filter(|(t, _)| (a..b).contains(t)).collect();
        if !in_win.iter().any(|(_, c)| *c != 1) {
            continue;
        }
        let ref_rr: Vec<f64> = in_win
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) as f64 * 1000.0 / fs)
            .collect();
        let normal_iv = |i: usize| in_win[i].1 == 1 && in_win[i + 1].1 == 1;
        let Some(reference) = rmssd_where(&ref_rr, normal_iv) else {
            continue;
        };
        let peaks = detect_rpeaks(chunk, fs);
        let det_rr: Vec<f64> = peaks
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 * 1000.0 / fs)
            .collect();
        let old = rmssd_where(&det_rr, |i| (300.0..=2000.0).contains(&det_rr[i])).unwrap();
        let new = hrv(&peaks, fs).unwrap().rmssd_ms;
        err_old += (old - reference).abs();
        err_new += (new - reference).abs();
        n_ect += 1;
    }
    let (mae_old, mae_new) = (err_old / n_ect as f64, err_new / n_ect as f64);
    eprintln!(
        "MIT-BIH 100, {n_ect} windows with a non-normal beat: RMSSD mean |error| vs annotated NN {mae_old:.1} ms uncorrected, {mae_new:.1} ms corrected"
    );
    assert!(mae_new < 0.5 * mae_old, "{mae_new} vs {mae_old}");
}

/// The Polar H10 wearer has trigeminy: uncorrected RMSSD read hundreds of ms (Home Assistant
/// showed 447 ms). Per-window RMSSD after correction is a plausible resting value.
#[test]
fn nn_correction_on_the_polar_recording() {
    let Some(dir) = data_dir() else {
        return;
    };
    let pol = read_polar(&dir.join("polar-h10/polar_h10_ecg.csv"));
    let fs = (pol.t.len() - 1) as f64 / ((pol.t[pol.t.len() - 1] - pol.t[0]) as f64 * 1e-9);
    let mut p = Preprocessor::new(fs, PreprocessConfig::default()).unwrap();
    let mut windows = Vec::new();
    for (k, c) in pol.x.chunks(73).enumerate() {
        p.push(pol.t[k * 73], c, &mut windows);
    }
    p.finish(&mut windows);
    let (mut old, mut new, mut share) = (Vec::new(), Vec::new(), Vec::new());
    for w in &windows {
        let peaks = detect_rpeaks(&w.samples, WINDOW_FS);
        let rr: Vec<f64> = peaks
            .windows(2)
            .map(|q| (q[1] - q[0]) as f64 * 1000.0 / WINDOW_FS)
            .collect();
        if let (Some(o), Some(h)) = (
            rmssd_where(&rr, |i| (300.0..=2000.0).contains(&rr[i])),
            hrv(&peaks, WINDOW_FS),
        ) {
            old.push(o);
            new.push(h.rmssd_ms);
            share.push(h.corrected_share);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mo, mn, ms) = (med(&mut old), med(&mut new), med(&mut share));
    let max_new = new.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "Polar H10, {} windows: median RMSSD {mo:.0} ms uncorrected, {mn:.0} ms corrected (max {max_new:.0}); median share of corrected intervals {:.0} %",
        new.len(),
        ms * 100.0
    );
    assert!(
        mo > 150.0,
        "the recording's ectopy should show uncorrected: {mo}"
    );
    assert!(mn < 100.0, "corrected median RMSSD {mn}");
    assert!(ms > 0.2, "trigeminy: a large share is corrected ({ms})");
}
