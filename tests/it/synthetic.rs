//! Synthetic ECG source: timing against the R-peak detector, HRV, determinism, run-time profile
//! changes, artefacts, config validation and cost.

use affectgate::dsp;
use affectgate::source::synthetic::{SyntheticConfig, SyntheticEcg, SyntheticError};

fn generate(cfg: &SyntheticConfig, seconds: f64) -> (Vec<f32>, Vec<f64>) {
    let mut g = SyntheticEcg::new(cfg.clone()).unwrap();
    let n = (seconds * cfg.fs_hz).round() as usize;
    let mut x = vec![0f32; n];
    g.fill(&mut x);
    (x, g.beat_times_s().to_vec())
}

fn rr_ms(beats: &[f64]) -> Vec<f64> {
    beats.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64;
    (m, var.sqrt())
}

/// Sensitivity of `detected` (s) against `truth` (s) with tolerance `tol` s, and the mean |error|.
fn match_beats(truth: &[f64], detected: &[f64], tol: f64) -> (f64, f64) {
    let mut hits = 0usize;
    let mut err = 0.0;
    for &t in truth {
        let best = detected
            .iter()
            .map(|&d| (d - t).abs())
            .fold(f64::INFINITY, f64::min);
        if best <= tol {
            hits += 1;
            err += best;
        }
    }
    (hits as f64 / truth.len() as f64, err / hits.max(1) as f64)
}

#[test]
fn detector_finds_ground_truth_beats_and_rate() {
    for fs in [130.16, 500.0] {
        for hr in [60.0, 75.0, 120.0] {
            let cfg = SyntheticConfig {
                fs_hz: fs,
                hr_bpm: hr,
                seed: 7,
                ..Default::default()
            };
            let (x, truth) = generate(&cfg, 60.0);
            let peaks = dsp::detect_rpeaks(&x, fs);
            let det_s: Vec<f64> = peaks.iter().map(|&p| p as f64 / fs).collect();
            let stats = dsp::hrv(&peaks, fs).unwrap();
            // Ground truth away from the edges (detector filters need ~1 s at each end).
            let inner: Vec<f64> = truth
                .iter()
                .copied()
                .filter(|&t| t > 1.0 && t < 59.0)
                .collect();
            let (sens, mean_err) = match_beats(&inner, &det_s, 0.050);
            let (m_rr, _) = mean_sd(&rr_ms(&truth));
            println!(
                "fs {fs} hr {hr}: truth beats {} (HR {:.2}), detected {} HR {:.2}, \
                 sensitivity {:.3}, mean |err| {:.1} ms",
                truth.len(),
                60000.0 / m_rr,
                peaks.len(),
                stats.hr_bpm,
                sens,
                mean_err * 1000.0
            );
            assert!(
                (stats.hr_bpm - hr).abs() < 2.0,
                "fs {fs} hr {hr}: {}",
                stats.hr_bpm
            );
            assert!(sens >= 0.98, "fs {fs} hr {hr}: sensitivity {sens}");
            // No extra beats either.
            assert!(
                peaks.len() <= truth.len() + 1,
                "{} > {}",
                peaks.len(),
                truth.len()
            );
        }
    }
}

#[test]
fn r_peak_amplitude_matches_config() {
    for hr in [50.0, 70.0, 120.0] {
        let cfg = SyntheticConfig {
            fs_hz: 500.0,
            hr_bpm: hr,
            amplitude_uv: 1200.0,
            ..Default::default()
        };
        let (x, _) = generate(&cfg, 20.0);
        let max = x[1000..].iter().copied().fold(f32::MIN, f32::max) as f64;
        println!("hr {hr}: R peak max {max:.0} µV");
        assert!((max - 1200.0).abs() < 0.15 * 1200.0, "hr {hr}: {max}");
    }
}

#[test]
fn sdnn_follows_config_and_is_ordered() {
    for seed in [1u64, 2, 3] {
        let mut sd = [0.0; 2];
        for (j, target) in [20.0, 80.0].into_iter().enumerate() {
            let cfg = SyntheticConfig {
                hr_bpm: 70.0,
                hrv_sdnn_ms: target,
                seed,
                ..Default::default()
            };
            let (_, beats) = generate(&cfg, 300.0);
            let (m, s) = mean_sd(&rr_ms(&beats[1..]));
            println!("seed {seed}: SDNN target {target} → measured {s:.1} ms (mean RR {m:.0})");
            assert!(
                (s - target).abs() <= 0.3 * target,
                "seed {seed} target {target}: {s}"
            );
            sd[j] = s;
        }
        assert!(sd[1] > 2.5 * sd[0], "{sd:?}");
    }
    // SDNN 0: perfectly regular.
    let cfg = SyntheticConfig {
        hrv_sdnn_ms: 0.0,
        ..Default::default()
    };
    let (_, beats) = generate(&cfg, 30.0);
    let (m, s) = mean_sd(&rr_ms(&beats));
    assert!((m - 60000.0 / 70.0).abs() < 1e-6 && s < 1e-6, "{m} {s}");
}

#[test]
fn deterministic_and_block_size_independent() {
    let cfg = SyntheticConfig {
        noise_uv: 20.0,
        baseline_uv: 100.0,
        motion_per_min: 10.0,
        motion_uv: 500.0,
        seed: 42,
        ..Default::default()
    };
    let (one, beats_one) = generate(&cfg, 30.0);
    let (again, _) = generate(&cfg, 30.0);
    assert_eq!(one, again);
    for bs in [1usize, 73, 1000] {
        let mut g = SyntheticEcg::new(cfg.clone()).unwrap();
        let mut out = Vec::with_capacity(one.len());
        let mut buf = vec![0f32; bs];
        while out.len() < one.len() {
            let m = bs.min(one.len() - out.len());
            g.fill(&mut buf[..m]);
            out.extend_from_slice(&buf[..m]);
        }
        let same = out
            .iter()
            .zip(&one)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "block size {bs}");
        assert_eq!(g.beat_times_s(), &beats_one[..]);
    }
    let (other, _) = generate(&SyntheticConfig { seed: 43, ..cfg }, 30.0);
    assert_ne!(one, other);
}

#[test]
fn set_heart_rate_changes_rate_without_jump() {
    let fs = 256.0;
    let cfg = SyntheticConfig {
        fs_hz: fs,
        hr_bpm: 60.0,
        hrv_sdnn_ms: 30.0,
        seed: 5,
        ..Default::default()
    };
    let mut g = SyntheticEcg::new(cfg).unwrap();
    let n = (30.0 * fs) as usize;
    let mut a = vec![0f32; n];
    g.fill(&mut a);
    let beats_before = g.beat_times_s().len();
    g.set_heart_rate(120.0);
    g.set_hrv(10.0);
    let mut b = vec![0f32; n];
    g.fill(&mut b);

    let max_step = |x: &[f32]| {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0f32, f32::max)
    };
    // Steepest QRS slope of steady beats at the old and at the new rate (faster beats have
    // narrower, steeper QRS complexes).
    let normal = max_step(&a[256..n - 512]).max(max_step(&b[512..]));
    let lo = n - 512;
    let mut around: Vec<f32> = a[lo..].to_vec();
    around.extend_from_slice(&b[..512]);
    let at_switch = max_step(&around);
    let boundary_step = (b[0] - a[n - 1]).abs();

    let beats = g.beat_times_s();
    let before: Vec<f64> = beats[..beats_before]
        .iter()
        .copied()
        .filter(|&t| t > 2.0)
        .collect();
    let after: Vec<f64> = beats.iter().copied().filter(|&t| t > 35.0).collect();
    let hr_before = 60000.0 / mean_sd(&rr_ms(&before)).0;
    let (rr_after, sd_after) = mean_sd(&rr_ms(&after));
    let hr_after = 60000.0 / rr_after;
    // Detector agrees on the new rate.
    let peaks = dsp::detect_rpeaks(&b[(5.0 * fs) as usize..], fs);
    let det = dsp::hrv(&peaks, fs).unwrap();
    println!(
        "HR before {hr_before:.2}, after {hr_after:.2} (detector {:.2}), SDNN after {sd_after:.1} ms; \
         max |Δ| normal {normal:.1} µV/sample, around switch {at_switch:.1}, at block edge {boundary_step:.1}",
        det.hr_bpm
    );
    assert!((hr_before - 60.0).abs() < 2.0, "{hr_before}");
    assert!((hr_after - 120.0).abs() < 2.0, "{hr_after}");
    assert!((det.hr_bpm - 120.0).abs() < 2.0, "{}", det.hr_bpm);
    assert!(at_switch <= normal * 1.05, "{at_switch} vs {normal}");
    assert!(boundary_step <= normal, "{boundary_step}");
    assert_eq!(g.heart_rate(), 120.0);
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// Amplitude of the component at `f` Hz (single-bin DFT).
fn tone_amplitude(x: &[f32], fs: f64, f: f64) -> f64 {
    let (mut re, mut im) = (0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let ph = 2.0 * std::f64::consts::PI * f * i as f64 / fs;
        re += v as f64 * ph.cos();
        im += v as f64 * ph.sin();
    }
    2.0 * (re * re + im * im).sqrt() / x.len() as f64
}

#[test]
fn artefacts_add_on_top_of_identical_clean_ecg() {
    let fs = 130.16;
    let clean_cfg = SyntheticConfig {
        seed: 11,
        ..Default::default()
    };
    let (clean, beats_clean) = generate(&clean_cfg, 120.0);

    // White noise.
    let (noisy, beats_noisy) = generate(
        &SyntheticConfig {
            noise_uv: 50.0,
            ..clean_cfg.clone()
        },
        120.0,
    );
    assert_eq!(beats_clean, beats_noisy);
    let resid: Vec<f64> = noisy
        .iter()
        .zip(&clean)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let r = rms(&resid);
    println!("noise 50 µV → residual RMS {r:.2} µV");
    assert!((r - 50.0).abs() < 0.2 * 50.0, "{r}");
    // Detector still works at 50 µV noise.
    let peaks = dsp::detect_rpeaks(&noisy, fs);
    let det: Vec<f64> = peaks.iter().map(|&p| p as f64 / fs).collect();
    let inner: Vec<f64> = beats_clean
        .iter()
        .copied()
        .filter(|&t| t > 1.0 && t < 119.0)
        .collect();
    let (sens, _) = match_beats(&inner, &det, 0.05);
    println!("noise 50 µV: detector sensitivity {sens:.3}");
    assert!(sens >= 0.98);

    // Baseline wander: 300 µV at 0.3 Hz.
    let (wander, _) = generate(
        &SyntheticConfig {
            baseline_uv: 300.0,
            baseline_hz: 0.3,
            ..clean_cfg.clone()
        },
        120.0,
    );
    let a_wander = tone_amplitude(&wander, fs, 0.3);
    let a_clean = tone_amplitude(&clean, fs, 0.3);
    println!("0.3 Hz amplitude: clean {a_clean:.1} µV, with wander {a_wander:.1} µV");
    assert!(
        (a_wander - 300.0).abs() < 30.0 && a_clean < 30.0,
        "{a_wander} {a_clean}"
    );

    // Motion bursts: 6 per minute for 10 min → ~60 bursts (Poisson; 4σ ≈ ±31).
    let mcfg = SyntheticConfig {
        motion_per_min: 6.0,
        motion_uv: 800.0,
        ..clean_cfg.clone()
    };
    let (clean10, _) = generate(&clean_cfg, 600.0);
    let (moving, _) = generate(&mcfg, 600.0);
    let resid: Vec<f32> = moving.iter().zip(&clean10).map(|(a, b)| a - b).collect();
    let mut bursts = 0;
    let mut active = false;
    let mut quiet = 0;
    for v in &resid {
        if *v != 0.0 {
            if !active {
                bursts += 1;
                active = true;
            }
            quiet = 0;
        } else {
            quiet += 1;
            if quiet > 3 {
                active = false;
            }
        }
    }
    let peak = resid.iter().fold(0f32, |m, v| m.max(v.abs()));
    let frac = resid.iter().filter(|v| **v != 0.0).count() as f64 / resid.len() as f64;
    println!(
        "motion: {bursts} bursts in 10 min, peak {peak:.0} µV, {:.1} % of samples",
        100.0 * frac
    );
    assert!((30..=90).contains(&bursts), "{bursts}");
    assert!(peak <= 800.0 && peak > 300.0, "{peak}");
}

#[test]
fn validate_names_the_key() {
    let bad = |f: fn(&mut SyntheticConfig)| {
        let mut c = SyntheticConfig::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert_eq!(
        bad(|c| c.hr_bpm = 400.0),
        "hr_bpm = 400 must be within 25..=220"
    );
    assert!(bad(|c| c.fs_hz = 0.0).starts_with("fs_hz = 0 "));
    assert!(bad(|c| c.hrv_sdnn_ms = -1.0).starts_with("hrv_sdnn_ms = -1 "));
    assert!(bad(|c| c.noise_uv = f64::NAN).starts_with("noise_uv = NaN "));
    assert_eq!(
        bad(|c| c.amplitude_uv = 0.0),
        "amplitude_uv = 0 must be > 0"
    );
    assert!(bad(|c| c.baseline_hz = 5.0).starts_with("baseline_hz = 5 "));
    assert!(bad(|c| c.motion_per_min = 1000.0).starts_with("motion_per_min = 1000 "));
    assert!(bad(|c| c.lf_hf_ratio = f64::INFINITY).starts_with("lf_hf_ratio = inf "));
    assert!(matches!(
        SyntheticEcg::new(SyntheticConfig { hr_bpm: 10.0, ..Default::default() }),
        Err(SyntheticError::InvalidConfig { ref key, .. }) if key == "hr_bpm"
    ));
    assert!(SyntheticConfig::default().validate().is_ok());

    // Setters clamp instead of failing.
    let mut g = SyntheticEcg::new(SyntheticConfig::default()).unwrap();
    g.set_heart_rate(1000.0);
    g.set_hrv(f64::NAN);
    assert_eq!((g.heart_rate(), g.hrv_sdnn_ms()), (220.0, 50.0));
}

#[test]
fn serde_defaults_and_unknown_keys() {
    let c: SyntheticConfig = serde_json::from_str(r#"{"hr_bpm": 90, "seed": 3}"#).unwrap();
    assert_eq!(c.hr_bpm, 90.0);
    assert_eq!(c.fs_hz, 130.16);
    assert_eq!(c.seed, 3);
    let e = serde_json::from_str::<SyntheticConfig>(r#"{"hr": 90}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `hr`"), "{e}");
    let back: SyntheticConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn generation_cost() {
    for fs in [130.16, 256.0, 500.0] {
        let cfg = SyntheticConfig {
            fs_hz: fs,
            noise_uv: 10.0,
            baseline_uv: 50.0,
            motion_per_min: 2.0,
            motion_uv: 300.0,
            ..Default::default()
        };
        let mut g = SyntheticEcg::new(cfg).unwrap();
        let mut buf = vec![0f32; fs.round() as usize];
        g.fill(&mut buf); // warm-up
        let secs = 600;
        let t0 = std::time::Instant::now();
        for _ in 0..secs {
            g.fill(&mut buf);
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / secs as f64;
        println!(
            "fs {fs}: {us:.1} µs per second of ECG (internal rate {} Hz)",
            g.internal_rate_hz()
        );
        // Printed, never asserted: timings belong in benchmarks, not tests.
        assert_eq!(buf.len(), fs.round() as usize);
    }
}

#[test]
#[ignore = "exploration: SDNN scatter over seeds"]
fn sdnn_scatter_over_seeds() {
    let mut ratios = Vec::new();
    for seed in 0..40u64 {
        let cfg = SyntheticConfig {
            hrv_sdnn_ms: 50.0,
            seed,
            ..Default::default()
        };
        let (_, beats) = generate(&cfg, 300.0);
        ratios.push(mean_sd(&rr_ms(&beats[1..])).1 / 50.0);
    }
    let (m, s) = mean_sd(&ratios);
    let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
    let hi = ratios.iter().copied().fold(f64::MIN, f64::max);
    let within = ratios.iter().filter(|r| (**r - 1.0).abs() <= 0.3).count();
    println!("300 s SDNN / target over 40 seeds: mean {m:.3} sd {s:.3} min {lo:.3} max {hi:.3}, within ±30 %: {within}/40");
}

/// Sinus rhythm with ordinary HRV is normal-to-normal: the NN correction must leave the demo's
/// synthetic wearers (SDNN 18–70 ms) essentially untouched, through the whole DSP path.
#[test]
fn nn_correction_leaves_synthetic_sinus_rhythm_alone() {
    for (hr, sdnn, seed) in [(62.0, 70.0, 1), (75.0, 45.0, 2), (98.0, 18.0, 3)] {
        let cfg = SyntheticConfig {
            hr_bpm: hr,
            hrv_sdnn_ms: sdnn,
            seed,
            ..SyntheticConfig::default()
        };
        let (_, beats) = generate(&cfg, 600.0);
        let rr = rr_ms(&beats);
        let nn = dsp::nn_intervals(&rr);
        let share = (nn.n_corrected + nn.n_dropped) as f64 / nn.n_rr as f64;
        eprintln!(
            "synthetic {hr} bpm / SDNN {sdnn} ms: {:.1} % of RR corrected",
            share * 100.0
        );
        assert!(share < 0.02, "{hr} bpm: {share}");
    }
}

/// Scripted episodes: inside them the generator's heart rate is raised and its HRV lowered as
/// configured, outside them it is the wearer's usual; the script is deterministic.
#[test]
fn scripted_episodes_raise_heart_rate_then_recover() {
    let cfg = SyntheticConfig {
        hr_bpm: 70.0,
        hrv_sdnn_ms: 40.0,
        episode_every_s: 300.0,
        episode_start_s: 120.0,
        episode_s: 120.0,
        episode_hr_bpm: 30.0,
        episode_hrv_factor: 0.4,
        seed: 9,
        ..SyntheticConfig::default()
    };
    cfg.validate().unwrap();
    assert!(!cfg.in_episode(119.0) && cfg.in_episode(121.0) && !cfg.in_episode(241.0));
    assert!(cfg.in_episode(421.0), "the second episode, 300 s later");
    let (_, beats) = generate(&cfg, 600.0);
    // Mean HR of the beats in [a, b) seconds, skipping 20 s of transition at the start.
    let hr_in = |a: f64, b: f64| {
        let rr: Vec<f64> = beats
            .windows(2)
            .filter(|w| w[0] >= a + 20.0 && w[1] < b)
            .map(|w| w[1] - w[0])
            .collect();
        60.0 / (rr.iter().sum::<f64>() / rr.len() as f64)
    };
    let (before, during, after) = (hr_in(0.0, 120.0), hr_in(120.0, 240.0), hr_in(240.0, 420.0));
    eprintln!("episodes: HR {before:.1} before, {during:.1} during, {after:.1} after");
    assert!((before - 70.0).abs() < 3.0, "{before}");
    assert!((during - 100.0).abs() < 4.0, "{during}");
    assert!((after - 70.0).abs() < 3.0, "{after}");
    let mut bad = cfg.clone();
    bad.episode_s = 400.0;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("episode_s"), "{e}");
}
