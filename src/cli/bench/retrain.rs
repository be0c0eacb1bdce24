//! `affectgate bench retrain`: one retraining round's wall time and peak memory for a store
//! of N windows (synthetic ECGSYN windows from 4 simulated wearers), on the round the
//! scheduler would run (defaults of `RoundConfig`, the shipped model and its replay pack).

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use affectgate::infer::Backend;
use affectgate::learn::round::RoundConfig;
use affectgate::retrain::registry::Registry;
use affectgate::retrain::round::{self, RoundContext};
use affectgate::source::synthetic::{SyntheticConfig, SyntheticEcg};
use affectgate::store::{Retention, Store, StoredWindow};

/// Run the benchmark; returns one JSON object.
pub fn run(
    model: &Path,
    windows: usize,
    epochs: usize,
    max_steps: Option<usize>,
    threads: usize,
) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("affectgate-bench-retrain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let res = bench_in(&dir, model, windows, epochs, max_steps, threads);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn bench_in(
    dir: &Path,
    model: &Path,
    windows: usize,
    epochs: usize,
    max_steps: Option<usize>,
    threads: usize,
) -> anyhow::Result<serde_json::Value> {
    let store = Store::open(&dir.join("store"), Retention::KEEP_ALL)?;
    let t_fill = Instant::now();
    let per = windows.div_ceil(4);
    for s in 0..4u64 {
        let mut g = SyntheticEcg::new(SyntheticConfig {
            fs_hz: affectgate::dsp::WINDOW_FS,
            hr_bpm: 60.0 + 12.0 * s as f64,
            noise_uv: 15.0,
            seed: s + 1,
            ..Default::default()
        })?;
        for k in 0..per.min(windows - (s as usize) * per) {
            let mut x = vec![0.0f32; affectgate::dsp::WINDOW_LEN];
            g.fill(&mut x);
            store.put(&StoredWindow {
                sensor: format!("wearer{s}"),
                window: affectgate::dsp::Window {
                    start_ns: 1_700_000_000_000_000_000 + k as i64 * 10_000_000_000,
                    fs_hz: affectgate::dsp::WINDOW_FS,
                    samples: x,
                    index: k as u64,
                },
                quality: 0,
                hr_bpm: None,
                rmssd_ms: None,
                sdnn_ms: None,
                scores: Vec::new(),
                model: None,
                labels: Vec::new(),
            })?;
        }
    }
    store.flush()?;
    let fill_s = t_fill.elapsed().as_secs_f64();
    let rss_before = affectgate::sys::peak_rss_mib();
    let registry = Registry::open(&dir.join("models"));
    let ctx = RoundContext {
        store: &store,
        registry: &registry,
        shipped: model.to_path_buf(),
        backend: Backend::default(),
        round: RoundConfig {
            pretext_epochs: epochs,
            max_steps_per_epoch: max_steps,
            ..RoundConfig::default()
        },
        max_windows: windows,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let mut stages: Vec<(String, f64)> = Vec::new();
    let t0 = Instant::now();
    let report = pool.install(|| {
        round::run(
            &ctx,
            &mut |stage, _| stages.push((stage.to_string(), t0.elapsed().as_secs_f64())),
            &|| None,
        )
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "retrain",
        "windows": windows,
        "pretext_epochs": epochs,
        "max_steps_per_epoch": max_steps,
        "threads": threads,
        "seconds": seconds,
        "seconds_per_1000_windows": seconds * 1000.0 / windows as f64,
        "stages": stages,
        "peak_rss_mib_before_round": rss_before,
        "peak_rss_mib": affectgate::sys::peak_rss_mib(),
        "store_fill_s": fill_s,
        "decision": report.decision,
        "reason": report.reason,
        "before": report.before,
        "after": report.after,
    }))
}
