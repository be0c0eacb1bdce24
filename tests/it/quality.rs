//! The quality gate on constructed and real signals: clean ECG passes, flat lines, clipped
//! amplifiers and noise are flagged; on real recordings the gate agrees with what is known
//! about them (MIT-BIH 100 is clean; three EEGMAT recordings carry no ECG).

use affectgate::dsp::quality::{assess, count_clipped, ClipTracker, Quality, QualityConfig};
use affectgate::dsp::{detect_rpeaks, windows_from_recording, PreprocessConfig, WINDOW_FS};
use affectgate::source::file::read_recording;
use affectgate::source::synthetic::{SyntheticConfig, SyntheticEcg};

fn gate(raw: &[f32], fs: f64) -> Vec<Quality> {
    let cfg = QualityConfig::default();
    let windows = windows_from_recording(fs, raw, 0, &PreprocessConfig::default()).unwrap();
    let mut clip = ClipTracker::default();
    // Blocks of 1 s, as the live sources deliver them.
    let blk = fs.round() as usize;
    for (k, c) in raw.chunks(blk).enumerate() {
        clip.push((k as f64 * blk as f64 * 1e9 / fs) as i64, fs, c);
    }
    windows
        .iter()
        .map(|w| {
            let peaks = detect_rpeaks(&w.samples, WINDOW_FS);
            let f = clip.fraction(w.start_ns, w.end_ns());
            assess(&w.samples, WINDOW_FS, &peaks, f, &cfg)
        })
        .collect()
}

fn synthetic(secs: f64, cfg: SyntheticConfig) -> (Vec<f32>, f64) {
    let mut e = SyntheticEcg::new(cfg).unwrap();
    let mut x = vec![0f32; (secs * e.fs_hz()) as usize];
    e.fill(&mut x);
    (x, e.fs_hz())
}

fn summary(q: &[Quality]) -> String {
    let mut m = std::collections::BTreeMap::new();
    for x in q {
        *m.entry(x.label()).or_insert(0) += 1;
    }
    format!("{m:?}")
}

#[test]
fn clean_synthetic_ecg_passes_at_several_heart_rates() {
    // (HRV shrinks as heart rate rises; 50 ms SDNN at 170 bpm would put R-R below 300 ms.)
    for (hr, sdnn) in [(45.0, 70.0), (70.0, 50.0), (120.0, 25.0), (170.0, 10.0)] {
        let (x, fs) = synthetic(
            65.0,
            SyntheticConfig {
                hr_bpm: hr,
                hrv_sdnn_ms: sdnn,
                noise_uv: 15.0,
                seed: 3,
                ..Default::default()
            },
        );
        let q = gate(&x, fs);
        assert_eq!(q.len(), 6);
        assert!(q.iter().all(|q| q.is_good()), "hr {hr}: {}", summary(&q));
    }
}

#[test]
fn flat_line_is_flagged_flat() {
    let fs = 130.16;
    let x: Vec<f32> = (0..(fs * 40.0) as usize)
        .map(|i| ((i * 7919) % 5) as f32 - 2.0)
        .collect();
    let q = gate(&x, fs);
    assert!(!q.is_empty());
    assert!(
        q.iter().all(|q| q.flags & Quality::FLAT != 0),
        "{}",
        summary(&q)
    );
    assert!(q.iter().all(|q| q.label().contains("flat")));
}

#[test]
fn clipped_amplifier_is_flagged_clipping() {
    let (mut x, fs) = synthetic(
        42.0,
        SyntheticConfig {
            seed: 5,
            ..Default::default()
        },
    );
    // An ADC whose range ends at 40 % of the R-wave: R peaks become plateaus.
    let rail = 0.4 * x.iter().fold(0f32, |m, v| m.max(v.abs()));
    for v in &mut x {
        *v = v.clamp(-rail, rail);
    }
    assert!(count_clipped(&x) > x.len() / 100);
    let q = gate(&x, fs);
    assert!(
        q.iter().all(|q| q.flags & Quality::CLIPPING != 0),
        "{}",
        summary(&q)
    );
    // The same signal unclipped is good.
    let (y, _) = synthetic(
        42.0,
        SyntheticConfig {
            seed: 5,
            ..Default::default()
        },
    );
    assert_eq!(count_clipped(&y), 0);
    assert!(gate(&y, fs).iter().all(|q| q.is_good()));
}

#[test]
fn white_noise_is_flagged_noisy() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(9);
    let fs = 250.0;
    let x: Vec<f32> = (0..(fs * 65.0) as usize)
        .map(|_| rng.random_range(-300.0f32..300.0))
        .collect();
    let q = gate(&x, fs);
    assert_eq!(q.len(), 6);
    assert!(
        q.iter().all(|q| q.flags & Quality::NOISY != 0),
        "{}",
        summary(&q)
    );
}

#[test]
fn real_recordings_gate_as_expected() {
    let Some(d) = crate::util::shared_data() else {
        return;
    };
    let mit = read_recording(&d.join("mitbih/100.hea"), Some("MLII")).unwrap();
    let q = gate(&mit.samples_uv, mit.fs_hz);
    let good = q.iter().filter(|q| q.is_good()).count();
    eprintln!("mitbih 100: {}", summary(&q));
    assert!(good * 100 >= q.len() * 95, "MIT-BIH 100: {}", summary(&q));

    let polar = read_recording(&d.join("polar-h10/polar_h10_ecg.csv"), None).unwrap();
    let q = gate(&polar.samples_uv, polar.fs_hz);
    eprintln!("polar: {}", summary(&q));

    // Premature beats are arrhythmia, not garbage: the Polar recording must pass.
    let good = q.iter().filter(|q| q.is_good()).count();
    assert!(good * 10 >= q.len() * 9, "Polar: {}", summary(&q));

    for (f, expect_good) in [
        ("Subject00_rest.edf", true),
        ("Subject01_rest.edf", true),
        ("Subject00_task.edf", true),
        ("Subject02_rest.edf", false),
        ("Subject13_rest.edf", false),
        ("Subject20_task.edf", false),
    ] {
        let r = read_recording(&d.join("eegmat").join(f), Some("ECG ECG")).unwrap();
        let q = gate(&r.samples_uv, r.fs_hz);
        let good = q.iter().filter(|q| q.is_good()).count();
        eprintln!("{f}: {}", summary(&q));
        if expect_good {
            assert!(good * 10 >= q.len() * 8, "{f}: {}", summary(&q));
        } else {
            assert!(good * 10 <= q.len() * 2, "{f}: {}", summary(&q));
        }
    }
}

/// Home Assistant's signal-quality enum entity offers a fixed set of states: every check the
/// gate can fail must be one of them, or HA would refuse the state.
#[test]
fn home_assistant_quality_options_cover_every_check() {
    let options = affectgate::mqtt::discovery::QUALITY_OPTIONS;
    assert!(options.contains(&"good"));
    for (_, name) in Quality::NAMES {
        assert!(
            options.contains(&name),
            "{name} missing from the enum's options"
        );
    }
    for hr_only in ["hr_only", "no_contact"] {
        assert!(options.contains(&hr_only));
    }
}
