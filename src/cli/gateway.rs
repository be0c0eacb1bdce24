//! Gateway commands: `run`, `demo`, `store stats|export`, and the gateway benchmarks
//! (`bench dsp|sensors|latency`). Each is a thin composition of [`affectgate::gateway`],
//! [`affectgate::store`] and [`affectgate::mqtt`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use affectgate::config::Config;
use affectgate::gateway::{model_version, GatewayBuilder, RunReport};
use affectgate::infer::{Backend, Model};
use affectgate::mqtt::broker::EmbeddedBroker;
use affectgate::mqtt::{subscribe_states, StateMessage, TlsFiles};
use affectgate::store::{Retention, Store};

use affectgate::config::DEFAULT_CONFIG;
use affectgate::gateway::{DEFAULT_MODEL, DEFAULT_MODEL_PATH};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Configuration file (plugin.toml layout). Relative paths inside it are resolved
    /// against its directory.
    #[arg(long, short)]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// How long to listen for advertisements.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Adapter (`hci0`); default: the first one BlueZ lists.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Mark devices matching this config's BLE sensors (and recognise their generic
    /// services).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Use this configuration instead of the built-in default (plugin.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Keep the window store here (default: a temporary directory removed at exit).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub what: StoreWhat,
}

#[derive(Args, Debug, Clone)]
pub struct StoreLocation {
    /// Store directory (default: `store.path` of --config).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Configuration whose `store.path` to use.
    #[arg(long, short, default_value = "plugin.toml")]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum StoreWhat {
    /// Windows per sensor, labelled / flagged / scored counts, time span, bytes.
    Stats {
        #[command(flatten)]
        at: StoreLocation,
    },
    /// Write a sensor's stored windows as CSV recordings (`time_ns,ecg_uv`, 256 Hz, one file
    /// per contiguous run) that `pretrain`, `infer` and replay read.
    Export {
        #[command(flatten)]
        at: StoreLocation,
        #[arg(long)]
        sensor: String,
        /// Start: RFC 3339 time (`2026-11-25T10:00:00Z`) or a duration ago (`2h`, `30min`).
        #[arg(long)]
        since: Option<String>,
        /// End (exclusive), same formats as --since.
        #[arg(long)]
        until: Option<String>,
        /// Output directory (created; existing files are never overwritten).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Recover every readable window of a damaged store (e.g. one the gateway moved aside as
    /// `<store>.damaged-<time>`) into a good one. The damaged folder is only read.
    Salvage {
        /// The damaged store folder.
        damaged: PathBuf,
        /// Where the windows go (created if missing; default: `store.path` of --config). It
        /// must not be in use: stop the gateway first.
        #[command(flatten)]
        into: StoreLocation,
        /// Do not let the database engine open a copy of the damaged folder (which finds
        /// windows written before format 2, but needs room for the copy).
        #[arg(long)]
        raw_only: bool,
    },
}

/// Run a config until SIGINT/SIGTERM (or until every finite source ends).
pub fn run(a: RunArgs) -> Result<()> {
    let rt = runtime()?;
    // One signal listener for the whole process, not one per run: a SIGTERM that arrives
    // while a reload is between two runs must still stop the gateway (a listener created
    // per run would miss it, and tokio's handler has replaced the default disposition).
    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            shutdown_signal().await;
            shutdown.cancel();
        });
    }
    // SIGHUP (`systemctl reload`): re-read the configuration, but only stop the running
    // pipeline for one that validates — a typo must not take a working gateway down.
    let hup = std::sync::Arc::new(tokio::sync::Notify::new());
    {
        let (hup, path) = (hup.clone(), a.config.clone());
        rt.spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while sig.recv().await.is_some() {
                match Config::load(&path) {
                    Ok(_) => hup.notify_one(),
                    Err(e) => tracing::error!(
                        "SIGHUP: not reloading, the gateway keeps its running configuration: {e}"
                    ),
                }
            }
        });
    }
    let report = loop {
        let cfg = Config::load(&a.config)?;
        let stop = shutdown.clone();
        let reload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (hup2, reload2) = (hup.clone(), reload.clone());
        let report = rt.block_on(GatewayBuilder::new(cfg).run(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = hup2.notified() => reload2.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        }))?;
        let hangup = reload.load(std::sync::atomic::Ordering::SeqCst);
        if !(report.reload_requested || hangup) || shutdown.is_cancelled() {
            break report;
        }
        print_report(&report);
        // `cmd/reload` (a config that no longer validates stops the gateway with its error)
        // or SIGHUP (checked before the running pipeline was stopped).
        tracing::info!(config = %a.config.display(), "reloading the configuration");
    };
    print_report(&report);
    if let Some(problem) = &report.store_problem {
        bail!("stopped with the window store failing: {problem}");
    }
    let failed = report.failures();
    if report.all_sensors_failed() {
        bail!(
            "every configured sensor failed, so nothing could produce data ({}):\n  {}\nFix what each line names in {} (a recording's path, the Bluetooth adapter, the sensor's settings) and start the gateway again",
            failed.len(),
            failed.join("\n  "),
            a.config.display()
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} sensor(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// `affectgate scan`.
pub fn scan(a: ScanArgs) -> Result<()> {
    use affectgate::config::SourceConfig;
    use affectgate::source::ble::scan;
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= 3600.0) {
        bail!("--seconds {}: give 0 < seconds ≤ 3600", a.seconds);
    }
    let sensors: Vec<(String, affectgate::source::ble::BleConfig)> = match &a.config {
        Some(path) => Config::load(path)?
            .sensors
            .into_iter()
            .filter_map(|s| match s.source {
                SourceConfig::Ble { ble } => Some((s.id, ble)),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let bar = indicatif::ProgressBar::new(100).with_style(
        indicatif::ProgressStyle::with_template("scanning {bar:30} {elapsed}")
            .expect("static template"),
    );
    let rt = runtime()?;
    let devices = rt.block_on(scan::scan(a.adapter.as_deref(), a.seconds, &sensors, |f| {
        bar.set_position((f * 100.0) as u64)
    }));
    bar.finish_and_clear();
    let devices = devices?;
    print!("{}", scan::render(&devices));
    let readable = devices.iter().filter(|d| !d.profiles.is_empty()).count();
    println!(
        "{} device(s), {readable} with a profile affectgate reads{}",
        devices.len(),
        if readable > 0 {
            ". Add one to the config: [[sensors]] id = \"chest\", source = { kind = \"ble\", profile = \"polar_pmd\", address = \"<ADDRESS>\" }"
        } else {
            ""
        }
    );
    Ok(())
}

/// The one-command demo (see README): embedded broker, three synthetic sensors, a subscriber
/// printing scores.
pub fn demo(a: DemoArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("current directory")?;
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => {
            let mut c = Config::parse(DEFAULT_CONFIG, Path::new("plugin.toml (built-in)"))?;
            c.resolve_paths(&cwd);
            c
        }
    };
    let temp_store = a.store.is_none();
    let store_dir = match &a.store {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("affectgate-demo-{}", std::process::id())),
    };
    cfg.store.path = store_dir.clone();
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let broker_note = if cfg.mqtt.host.is_empty() {
            let b = EmbeddedBroker::start(cfg.mqtt.port)?;
            cfg.mqtt.host = b.addr.ip().to_string();
            cfg.mqtt.port = b.addr.port();
            "embedded MQTT broker"
        } else {
            "MQTT broker"
        };
        // The model: the configured file if it exists, else the compiled-in default.
        let model_path = cfg.model.path.clone();
        let backend = cfg.model.backend.clone();
        let (model, version) =
            if model_path.exists() || cfg.model.path != cwd.join(DEFAULT_MODEL_PATH) {
                let m = Model::load(&model_path, &backend)
                    .with_context(|| format!("loading model {}", model_path.display()))?;
                let v = model_version(&model_path, m.sha256());
                (m, v)
            } else {
                let m = Model::load_bytes(DEFAULT_MODEL, &backend)
                    .context("loading the built-in model")?;
                let v = model_version(Path::new(DEFAULT_MODEL_PATH), m.sha256());
                (m, v)
            };
        println!(
            "affectgate demo: {broker_note} on {}:{}, {} synthetic sensors, model {version} ({})",
            cfg.mqtt.host,
            cfg.mqtt.port,
            cfg.sensors.len(),
            backend_name(&backend),
        );
        println!(
            "  watch from another shell: mosquitto_sub -h {} -p {} -t 'affectgate/#' -v",
            cfg.mqtt.host, cfg.mqtt.port
        );
        println!(
            "  first scores ≈13 s after start (10 s window + 2 s filter warm-up). Ctrl-C stops."
        );
        let printer = tokio::spawn(print_states(cfg.clone()));
        let seconds = a.seconds;
        let stop = async move {
            match seconds {
                Some(s) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs_f64(s)) => {}
                        _ = shutdown_signal() => {}
                    }
                }
                None => shutdown_signal().await,
            }
        };
        let report = GatewayBuilder::new(cfg)
            .model(model, version)
            .run(stop)
            .await;
        // Give the printer a moment to show the last messages.
        tokio::time::sleep(Duration::from_millis(300)).await;
        printer.abort();
        report.map_err(anyhow::Error::from)
    });
    if temp_store {
        let _ = std::fs::remove_dir_all(&store_dir);
    }
    let report = result?;
    print_report(&report);
    if !temp_store {
        println!("store kept at {}", store_dir.display());
    }
    Ok(())
}

fn backend_name(b: &Backend) -> &'static str {
    match b {
        Backend::Tract => "tract",
        Backend::OnnxRuntime { .. } => "onnxruntime",
    }
}

/// Print one line per state message (same broker settings, credentials and TLS as the
/// gateway).
async fn print_states(cfg: Config) -> Result<()> {
    let tls = match &cfg.mqtt.tls {
        Some(t) => Some(TlsFiles::load(t)?),
        None => None,
    };
    let (mut rx, _task) = subscribe_states(
        &cfg.mqtt,
        tls.as_ref(),
        &cfg.gateway.id,
        &format!("affectgate-demo-viewer-{}", std::process::id()),
    );
    while let Some((m, _)) = rx.recv().await {
        match m {
            Ok(m) => println!("{}", format_state(&m)),
            Err(e) => println!("{e}"),
        }
    }
    Ok(())
}

/// One human-readable line for a state message.
pub fn format_state(m: &StateMessage) -> String {
    let time = m.time.get(11..19).unwrap_or(&m.time);
    let scores: Vec<String> = m
        .scores
        .iter()
        .map(|(h, v)| match v {
            Some(v) => format!("{h} {v:.2}"),
            None => format!("{h}  -  "),
        })
        .collect();
    let num = |v: Option<f32>, w: usize| match v {
        Some(v) => format!("{v:>w$.0}"),
        None => format!("{:>w$}", "-"),
    };
    // How far this window's heart rate is from the wearer's usual (robust z), once known.
    let usual = match (m.calibrating, m.hr_relative) {
        (true, _) => "calibrating".to_string(),
        (false, Some(r)) => format!("vs usual {r:+.1}"),
        (false, None) => "vs usual   - ".to_string(),
    };
    format!(
        "{time}  {:<10} {}   HR {} bpm ({usual})  RMSSD {} ms  quality {}",
        m.sensor,
        scores.join("  "),
        num(m.hr_bpm, 4),
        num(m.rmssd_ms, 4),
        m.quality
    )
}

fn print_report(r: &RunReport) {
    match &r.store_problem {
        None => println!("stopped cleanly. model {}", r.model),
        Some(_) => println!("stopped, with the window store failing. model {}", r.model),
    }
    for (id, s) in &r.sensors {
        println!(
            "  {id:<12} windows {:>5}  scored {:>5}  flagged {:>5}{}{}",
            s.windows,
            s.scored,
            s.flagged,
            if s.hr_summaries > 0 {
                format!("  heart-rate summaries {}", s.hr_summaries)
            } else {
                String::new()
            },
            s.error
                .as_ref()
                .map(|e| format!("  ERROR: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "  MQTT: {} state messages queued, {} delivered (acknowledged), {} left in the outbox, {} dropped{}",
        r.published,
        r.mqtt.delivered,
        r.mqtt.pending,
        r.mqtt.dropped,
        if r.mqtt.all_acked {
            ""
        } else {
            " (broker did not acknowledge everything)"
        }
    );
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `affectgate store …`
pub fn store(a: StoreArgs) -> Result<()> {
    match a.what {
        StoreWhat::Stats { at } => {
            let s = open_store(&at)?;
            print!("{}", s.stats()?);
            Ok(())
        }
        StoreWhat::Export {
            at,
            sensor,
            since,
            until,
            out,
        } => {
            let s = open_store(&at)?;
            let since_ns = since
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or(i64::MIN);
            let until_ns = until
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or(i64::MAX);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let segs = s.export_csv(&sensor, since_ns, until_ns, &out)?;
            if segs.is_empty() {
                bail!("no stored windows of sensor {sensor:?} in that time range (see `affectgate store stats`)");
            }
            for seg in &segs {
                println!(
                    "{}  {} windows, {} samples",
                    seg.path.display(),
                    seg.n_windows,
                    seg.n_samples
                );
            }
            Ok(())
        }
        StoreWhat::Salvage {
            damaged,
            into,
            raw_only,
        } => salvage(&damaged, &into, raw_only),
    }
}

fn salvage(damaged: &Path, into: &StoreLocation, raw_only: bool) -> Result<()> {
    if !damaged.is_dir() {
        bail!("{} is not a store folder", damaged.display());
    }
    let path = store_path(into)?;
    if path.canonicalize().ok() == damaged.canonicalize().ok() {
        bail!(
            "{} is both the damaged store and the target: move the damaged folder aside first \
             (`affectgate run` does that by itself)",
            damaged.display()
        );
    }
    let retention = match &into.store {
        Some(_) => Retention::KEEP_ALL,
        None => Config::load(&into.config)?.store.retention(),
    };
    let target = Store::open(&path, retention)?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "scanning {bytes}/{total_bytes} [{wide_bar}] {eta}",
        )
        .expect("valid template"),
    );
    let options = affectgate::store::SalvageOptions::default().with_engine(!raw_only);
    let report = affectgate::store::salvage(damaged, &target, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        true
    })?;
    bar.finish_and_clear();
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    println!(
        "salvaged {} into {}: {report}",
        damaged.display(),
        path.display()
    );
    Ok(())
}

fn store_path(at: &StoreLocation) -> Result<PathBuf> {
    Ok(match &at.store {
        Some(p) => p.clone(),
        None => {
            let cfg = Config::load(&at.config).with_context(|| {
                "finding the store: pass --store DIR or --config FILE".to_string()
            })?;
            cfg.store.path
        }
    })
}

fn open_store(at: &StoreLocation) -> Result<Store> {
    let path = store_path(at)?;
    if !path.exists() {
        bail!(
            "store {} does not exist (has the gateway run with this config?)",
            path.display()
        );
    }
    // Inspection must never delete anything: retention is not applied from here.
    Ok(Store::open(&path, Retention::KEEP_ALL)?)
}

/// RFC 3339 time or "<duration> ago" → ns since the Unix epoch.
pub fn parse_time(s: &str) -> Result<i64> {
    affectgate::time::parse_time_or_ago(s, affectgate::time::now_ns()).map_err(anyhow::Error::msg)
}

// ───────────────────────────── benchmarks ─────────────────────────────

#[derive(Subcommand, Debug)]
pub enum GatewayBench {
    /// DSP throughput on one thread: filter + resample + windows + R-peaks + quality gate.
    Dsp {
        /// Recording to push through (default: the Polar H10 file in ../shared/data).
        #[arg(long, default_value = "../shared/data/polar-h10/polar_h10_ecg.csv")]
        file: PathBuf,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
    /// How many simulated 130 Hz sensors one core sustains in real time (run under
    /// `taskset -c 0`): full gateway, synthetic sources, embedded or given broker.
    Sensors {
        /// Sensor counts to try.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
        counts: Vec<usize>,
        /// Seconds per count (≥ 30: the first window needs 12 s).
        #[arg(long, default_value_t = 45.0)]
        seconds: f64,
        /// Broker `host:port` (default: embedded rumqttd).
        #[arg(long)]
        mqtt: Option<String>,
    },
    /// Window-complete → MQTT receive latency through a broker (p50/p99).
    Latency {
        #[arg(long, default_value_t = 3)]
        sensors: usize,
        #[arg(long, default_value_t = 65.0)]
        seconds: f64,
        #[arg(long)]
        mqtt: Option<String>,
    },
}

pub fn bench(b: GatewayBench) -> Result<()> {
    match b {
        GatewayBench::Dsp { file, repeats } => super::bench::gateway::dsp(&file, repeats),
        GatewayBench::Sensors {
            counts,
            seconds,
            mqtt,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            for n in counts {
                let r = rt.block_on(super::bench::gateway::sensors(n, seconds, mqtt.as_deref()))?;
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        GatewayBench::Latency {
            sensors,
            seconds,
            mqtt,
        } => {
            let rt = runtime()?;
            let r = rt.block_on(super::bench::gateway::sensors(
                sensors,
                seconds,
                mqtt.as_deref(),
            ))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
