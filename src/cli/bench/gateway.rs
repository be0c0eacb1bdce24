//! Gateway benchmarks behind `affectgate bench dsp|sensors|latency` (numbers in
//! BENCHMARKS.md). They run the production code paths: the same `Preprocessor`, gate and
//! R-peak detector, the same `GatewayBuilder` with synthetic sources, a real broker and a real
//! subscriber. No timing threshold lives in any test; these only measure and print.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use affectgate::config::{Config, SensorConfig, SourceConfig};
use affectgate::dsp::quality::QualityConfig;
use affectgate::dsp::PreprocessConfig;
use affectgate::gateway::sensor::{ProcessedWindow, SensorPipeline};
use affectgate::gateway::{GatewayBuilder, Observed};
use affectgate::infer::{Backend, Model};
use affectgate::mqtt::broker::EmbeddedBroker;
use affectgate::source::file::read_recording;
use affectgate::source::live::SyntheticSource;
use affectgate::source::synthetic::SyntheticConfig;
use affectgate::source::Block;
use affectgate::sys::{cpu_seconds, peak_rss_mib, rss_mib};

/// `bench dsp`: one thread pushes a recording through the live per-sensor pipeline in 1 s
/// blocks (filters, resampler, windower, R-peaks, HRV, quality gate, z-score).
pub fn dsp(file: &Path, repeats: usize) -> Result<()> {
    let rec = read_recording(file, None)
        .with_context(|| format!("reading {} (pass --file)", file.display()))?;
    let fs = rec.fs_hz;
    let block = fs.round() as usize;
    let mut out: Vec<ProcessedWindow> = Vec::new();
    let mut windows = 0usize;
    let t0 = Instant::now();
    for _ in 0..repeats.max(1) {
        let mut p = SensorPipeline::new(
            "bench",
            PreprocessConfig::default(),
            QualityConfig::default(),
        );
        let mut t = 0i64;
        for chunk in rec.samples_uv.chunks(block) {
            let b = Block {
                t0_ns: t,
                fs_hz: fs,
                samples_uv: chunk.to_vec(),
                gap_before: false,
            };
            t += (chunk.len() as f64 * 1e9 / fs) as i64;
            p.push(&b, &mut out).context("dsp")?;
            windows += out.len();
            out.clear();
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let samples = (rec.samples_uv.len() * repeats.max(1)) as f64;

    // Filters + resampler + windower only (what bench/peers/dsp_scipy.py does).
    let t1 = Instant::now();
    let mut raw_windows = Vec::new();
    for _ in 0..repeats.max(1) {
        let mut p = affectgate::dsp::Preprocessor::new(fs, PreprocessConfig::default())?;
        let mut t = 0i64;
        for chunk in rec.samples_uv.chunks(block) {
            p.push(t, chunk, &mut raw_windows);
            t += (chunk.len() as f64 * 1e9 / fs) as i64;
            raw_windows.clear();
        }
    }
    let el_pre = t1.elapsed().as_secs_f64();

    // Memory per sensor: 256 synthetic generators + pipelines, 15 s of signal each.
    let rss0 = rss_mib().unwrap_or(f64::NAN);
    let mut sensors = Vec::new();
    for i in 0..256u64 {
        let mut g = affectgate::source::synthetic::SyntheticEcg::new(SyntheticConfig {
            seed: i + 1,
            ..Default::default()
        })?;
        let mut p = SensorPipeline::new("m", PreprocessConfig::default(), QualityConfig::default());
        let mut buf = vec![0f32; (15.0 * g.fs_hz()) as usize];
        g.fill(&mut buf);
        let b = Block {
            t0_ns: 0,
            fs_hz: g.fs_hz(),
            samples_uv: buf,
            gap_before: false,
        };
        p.push(&b, &mut out)?;
        out.clear();
        sensors.push((g, p));
    }
    let rss1 = rss_mib().unwrap_or(f64::NAN);
    let per_sensor_kib = (rss1 - rss0) * 1024.0 / 256.0;
    drop(sensors);
    let r = serde_json::json!({
        "bench": "dsp",
        "file": file.display().to_string(),
        "fs_hz": fs,
        "samples": samples,
        "windows": windows,
        "seconds": el,
        "samples_per_s": samples / el,
        "realtime_factor_per_core": samples / el / fs,
        "preprocess_samples_per_s": samples / el_pre,
        "rss_per_sensor_kib": per_sensor_kib,
    });
    println!("{r}");
    Ok(())
}

/// Result of `bench sensors` / `bench latency`.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub bench: &'static str,
    pub sensors: usize,
    pub seconds: f64,
    /// Windows published / windows expected from the run time.
    pub windows: usize,
    pub expected_windows: usize,
    /// Wall clock at publish − end of the window's last sample (includes the resampler's
    /// hold-back and the window wait), ms.
    pub lag_ms_p50: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
    /// Window complete (DSP) → state message received by a subscriber through the broker, ms.
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Of which: window complete → handed to the MQTT client (scoring, store, flush), ms.
    pub gateway_ms_p50: f64,
    pub gateway_ms_p99: f64,
    /// Of which: handed to the MQTT client → received by the subscriber, ms.
    pub mqtt_ms_p50: f64,
    pub mqtt_ms_p99: f64,
    /// Process CPU time / wall time (1.0 = one core busy).
    pub cpu_cores_used: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
    pub dropped: u64,
    pub broker: String,
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Run a full gateway with `n` real-time synthetic 130.16 Hz sensors for `seconds`, with a
/// subscriber on the same broker, and measure lag, latency, CPU and memory.
pub async fn sensors(n: usize, seconds: f64, mqtt: Option<&str>) -> Result<LoadReport> {
    let mut cfg = Config::parse(
        affectgate::config::DEFAULT_CONFIG,
        Path::new("plugin.toml (built-in)"),
    )?;
    let broker = match mqtt {
        Some(hp) => {
            let (h, p) = hp.rsplit_once(':').context("--mqtt must be host:port")?;
            cfg.mqtt.host = h.to_string();
            cfg.mqtt.port = p.parse().context("--mqtt port")?;
            hp.to_string()
        }
        None => {
            let b = EmbeddedBroker::start(0)?;
            cfg.mqtt.host = b.addr.ip().to_string();
            cfg.mqtt.port = b.addr.port();
            format!("embedded rumqttd {}", b.addr)
        }
    };
    cfg.gateway.id = format!("bench{}", std::process::id());
    cfg.sensors = (0..n)
        .map(|i| SensorConfig {
            id: format!("s{i}"),
            source: SourceConfig::Synthetic {
                ecg: SyntheticConfig {
                    hr_bpm: 55.0 + (i % 10) as f64 * 6.0,
                    noise_uv: 10.0,
                    seed: i as u64 + 1,
                    ..Default::default()
                },
            },
        })
        .collect();
    let store = tempfile_dir()?;
    cfg.store.path = store.clone();
    let model = Model::load_bytes(affectgate::gateway::DEFAULT_MODEL, &Backend::Tract)?;
    let version = "bench".to_string();

    // Subscriber: receive time per (sensor, window).
    let (mut sub_rx, sub) = affectgate::mqtt::subscribe_states(
        &cfg.mqtt,
        None,
        &cfg.gateway.id,
        &format!("bench-sub-{}", std::process::id()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (obs_tx, mut obs_rx) = mpsc::unbounded_channel::<Observed>();
    let cpu0 = cpu_seconds().unwrap_or(0.0);
    let wall0 = Instant::now();
    // Real straps are not in phase: stagger the sensors over one window period, so windows
    // complete spread out as they would in a home, not all in the same millisecond.
    let mut builder = GatewayBuilder::new(cfg.clone());
    for (i, s) in cfg.sensors.iter().enumerate() {
        if let SourceConfig::Synthetic { ecg } = &s.source {
            let delay = Duration::from_secs_f64(10.0 * i as f64 / n as f64);
            builder = builder.source(Box::new(
                SyntheticSource::new(&s.id, ecg.clone()).with_delay(delay),
            ));
        }
    }
    let report = builder
        .model(model, version)
        .observer(obs_tx)
        .run(tokio::time::sleep(Duration::from_secs_f64(seconds)))
        .await?;
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().unwrap_or(0.0) - cpu0;
    let rss = rss_mib().unwrap_or(f64::NAN);
    let hwm = peak_rss_mib().unwrap_or(f64::NAN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.abort();
    let _ = std::fs::remove_dir_all(&store);

    let mut received: HashMap<(String, u64), Instant> = HashMap::new();
    while let Ok((m, t)) = sub_rx.try_recv() {
        if let Ok(m) = m {
            received.entry((m.sensor, m.window)).or_insert(t.into_std());
        }
    }
    let mut lag = Vec::new();
    let mut lat = Vec::new();
    let mut gw = Vec::new();
    let mut mq = Vec::new();
    let mut windows = 0;
    while let Ok(o) = obs_rx.try_recv() {
        windows += 1;
        let end_ns = o.state.window_start_ms * 1_000_000 + 10_000_000_000;
        let published_wall = affectgate::time::now_ns() - o.published.elapsed().as_nanos() as i64;
        lag.push((published_wall - end_ns) as f64 / 1e6);
        gw.push(o.published.duration_since(o.completed).as_secs_f64() * 1e3);
        if let Some(t) = received.get(&(o.state.sensor.clone(), o.state.window)) {
            lat.push(t.duration_since(o.completed).as_secs_f64() * 1e3);
            mq.push(t.saturating_duration_since(o.published).as_secs_f64() * 1e3);
        }
    }
    // First window after the start delay + 2 s warm-up + 10 s (+ resampler hold-back), then
    // one every 10 s.
    let expected: usize = (0..n)
        .map(|i| {
            let t = seconds - 10.0 * i as f64 / n as f64 - 12.3;
            if t < 0.0 {
                0
            } else {
                (t / 10.0).floor() as usize + 1
            }
        })
        .sum();
    Ok(LoadReport {
        bench: "sensors",
        sensors: n,
        seconds: wall,
        windows,
        expected_windows: expected,
        lag_ms_p50: percentile(&mut lag, 0.5),
        lag_ms_p99: percentile(&mut lag, 0.99),
        lag_ms_max: lag.iter().cloned().fold(f64::NAN, f64::max),
        latency_ms_p50: percentile(&mut lat, 0.5),
        latency_ms_p99: percentile(&mut lat, 0.99),
        latency_ms_max: lat.iter().cloned().fold(f64::NAN, f64::max),
        gateway_ms_p50: percentile(&mut gw, 0.5),
        gateway_ms_p99: percentile(&mut gw, 0.99),
        mqtt_ms_p50: percentile(&mut mq, 0.5),
        mqtt_ms_p99: percentile(&mut mq, 0.99),
        cpu_cores_used: cpu / wall,
        peak_rss_mib: hwm,
        rss_mib: rss,
        dropped: report.mqtt.dropped,
        broker,
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "affectgate-bench-{}-{}",
        std::process::id(),
        affectgate::time::now_ns()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
