//! The long-running gateway: wires sources → DSP → scorer → store + MQTT, and shuts down
//! without losing what it already measured.
//!
//! ```text
//!  Source task ──(bounded, per sensor)──► sensor task: SensorPipeline (DSP, gate, HRV, z-score)
//!      × N sensors                              │
//!                                   (bounded, shared) ProcessedWindow
//!                                               ▼
//!                        scorer thread: batches windows across sensors → Model (ort)
//!                                               │ ScoredWindow (bounded)
//!                                               ▼
//!                        sink task: store.put (sled) → MQTT state (QoS 1)
//! ```
//!
//! * Every channel is bounded, so a stalled stage pushes back to the sources instead of
//!   growing memory. The scorer owns the model on a dedicated OS thread: inference is the one
//!   CPU-heavy step (milliseconds per window) and must not block the async workers that keep
//!   BLE and MQTT alive.
//! * A window is stored **before** it is published: the store is the record, MQTT a view.
//! * Shutdown ([`GatewayBuilder::run`]'s `shutdown` future, or all finite sources ending):
//!   cancel the sources → each sensor task drains its queue and exits → the scorer drains and
//!   exits → the sink stores and publishes the last windows → sled is flushed → `offline` is
//!   published (retained) once the broker acknowledged everything → disconnect.

pub mod bench;
pub mod sensor;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::sensor::{BeatSummary, HrSummary, ProcessedWindow, SensorPipeline};
use crate::config::Config;
use crate::dsp::WINDOW_LEN;
use crate::infer::{Backend, InferError, Model};
use crate::mqtt::discovery::{self, DiscoveryInput};
use crate::mqtt::inputs::{self, Command, Input};
use crate::mqtt::{rfc3339_ms, LinkOptions, LinkReport, MqttLink, StateMessage, TlsFiles};
use crate::retrain::registry::{Registry, SHIPPED};
use crate::retrain::scheduler::Scheduler;
use crate::source::live::{from_config, now_ns};
use crate::source::{Source, SourceError, SourceEvent, SOURCE_QUEUE};
use crate::store::{Retention, Store, StoreError, StoredWindow};

/// Largest inference batch (windows from all sensors that are ready at the same time).
pub const MAX_BATCH: usize = 32;
/// Capacity of the shared window queues (scorer input and sink input).
const WINDOW_QUEUE: usize = 64;
/// How long shutdown waits for the broker to acknowledge outstanding messages.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("model {path}: {source}")]
    Model { path: PathBuf, source: InferError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("mqtt.host is empty: set the broker address in the config (only `affectgate demo` starts its own broker)")]
    NoBroker,
    #[error("no sensors configured: add a [[sensors]] table to the config")]
    NoSensors,
    #[error(transparent)]
    Tls(#[from] crate::mqtt::TlsFileError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// A window after scoring, on its way to the store and MQTT.
#[derive(Debug, Clone)]
pub struct ScoredWindow {
    pub w: ProcessedWindow,
    /// (head, score); empty when the window was not scored.
    pub scores: Vec<(String, f32)>,
    /// Version of the model that scored it (`<stem>@<sha8>`): models can be swapped while
    /// the gateway runs, so the version travels with each window.
    pub model: Arc<str>,
}

/// What the gateway tells an observer after each publish (latency measurements, tests).
#[derive(Debug, Clone)]
pub struct Observed {
    pub state: StateMessage,
    /// When the window completed in the DSP stage.
    pub completed: Instant,
    /// When the state message was queued in the outbox (stored and flushed with the window).
    pub published: Instant,
}

/// Per-sensor counters of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SensorReport {
    pub windows: u64,
    pub scored: u64,
    pub flagged: u64,
    /// Heart-rate-only summaries published (sensors without ECG).
    pub hr_summaries: u64,
    /// The source's error, if it stopped with one.
    pub error: Option<String>,
}

/// Summary of one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub sensors: BTreeMap<String, SensorReport>,
    /// State messages queued in the outbox during this run (delivery: `mqtt`).
    pub published: u64,
    pub mqtt: LinkReport,
    pub model: String,
    /// The run ended because `cmd/reload` asked for it: the caller should reload the config.
    pub reload_requested: bool,
}

/// Builds and runs a gateway from a [`Config`] (see the module docs).
pub struct GatewayBuilder {
    config: Config,
    base_dir: PathBuf,
    model: Option<(Model, String)>,
    sources: Vec<Box<dyn Source>>,
    observer: Option<mpsc::UnboundedSender<Observed>>,
    retrain_worker: Option<PathBuf>,
}

impl GatewayBuilder {
    /// `base_dir` resolves relative paths of the config (model, store, replay files): the
    /// directory of the config file.
    pub fn new(config: Config, base_dir: &Path) -> Self {
        Self {
            config,
            base_dir: base_dir.to_path_buf(),
            model: None,
            sources: Vec::new(),
            observer: None,
            retrain_worker: None,
        }
    }

    /// The `affectgate` executable that runs retraining rounds (`retrain-worker`). Default:
    /// the running executable — which is right for the `affectgate` binary; a program that
    /// embeds the gateway (tests) points it at the built binary.
    pub fn retrain_worker(mut self, exe: &Path) -> Self {
        self.retrain_worker = Some(exe.to_path_buf());
        self
    }

    /// Serve this already-loaded model (named `version`) instead of loading `model.path`.
    pub fn model(mut self, model: Model, version: String) -> Self {
        self.model = Some((model, version));
        self
    }

    /// Add a source not described by the config (BLE, tests). When any is added, the
    /// config's `[[sensors]]` are not started.
    pub fn source(mut self, source: Box<dyn Source>) -> Self {
        self.sources.push(source);
        self
    }

    /// Receive an [`Observed`] after every state publish.
    pub fn observer(mut self, tx: mpsc::UnboundedSender<Observed>) -> Self {
        self.observer = Some(tx);
        self
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Run until `shutdown` resolves or every source has ended, then shut down gracefully.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunReport, GatewayError> {
        let cfg = self.config.clone();
        if cfg.mqtt.host.is_empty() {
            return Err(GatewayError::NoBroker);
        }
        let sources: Vec<Box<dyn Source>> = if self.sources.is_empty() {
            cfg.sensors
                .iter()
                .map(|s| from_config(s, &self.base_dir))
                .collect()
        } else {
            std::mem::take(&mut self.sources)
        };
        if sources.is_empty() {
            return Err(GatewayError::NoSensors);
        }

        // Model first: a broken model file must fail the start, before anything connects.
        // A model promoted by on-gateway retraining (the registry's `current`) serves instead
        // of the shipped one; if its file cannot be loaded the shipped model serves and the
        // error is logged (the registry is left as it is for `affectgate model`).
        let registry = Registry::open(&self.resolve(&cfg.retrain.models_dir));
        let promoted = match self.model.is_none() {
            true => load_registered(&registry, &cfg.model.backend).await,
            false => None,
        };
        let serving_id = promoted
            .as_ref()
            .map(|(_, _, id)| id.clone())
            .unwrap_or_else(|| SHIPPED.to_string());
        let (model, version) = match self.model.take().or(promoted.map(|(m, v, _)| (m, v))) {
            Some(m) => m,
            None => {
                let path = self.resolve(&cfg.model.path);
                let backend = cfg.model.backend.clone();
                let p = path.clone();
                let model = tokio::task::spawn_blocking(move || Model::load(&p, &backend))
                    .await
                    .map_err(|e| GatewayError::Task(e.to_string()))?
                    .map_err(|source| GatewayError::Model {
                        path: path.clone(),
                        source,
                    })?;
                let version = model_version(&path, model.sha256());
                (model, version)
            }
        };
        tracing::info!(model = %version, heads = ?model.head_names(), backend = ?model.backend(), "model loaded");

        // TLS files are read before the store opens: a wrong path fails the start cleanly.
        let tls = match &cfg.mqtt.tls {
            Some(t) => Some(TlsFiles::load(t, &self.base_dir)?),
            None => None,
        };

        let store_path = self.resolve(&cfg.store.path);
        let retention = Retention {
            max_bytes: cfg.store.max_bytes,
            max_age_ns: (cfg.store.max_age_days * 86_400e9) as i64,
        };
        let store = {
            let p = store_path.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || Store::open(&p, retention))
                    .await
                    .map_err(|e| GatewayError::Task(e.to_string()))??,
            )
        };
        tracing::info!(store = %store_path.display(), "store opened");

        let outbox = store.outbox(cfg.mqtt.outbox_max)?;
        if !outbox.is_empty() {
            tracing::info!(
                pending = outbox.len(),
                "undelivered state messages from an earlier run will be sent first"
            );
        }
        let link = Arc::new(MqttLink::start(
            LinkOptions {
                tls,
                mqtt: cfg.mqtt.clone(),
                gateway: cfg.gateway.id.clone(),
                client_id: format!("affectgate-{}", cfg.gateway.id),
                subscribe: inputs::subscriptions(&cfg.gateway.id),
                ha_status: cfg
                    .mqtt
                    .discovery
                    .then(|| discovery::ha_status_topic(&cfg.mqtt.discovery_prefix)),
            },
            outbox.clone(),
        ));
        let sensor_ids: Vec<String> = sources.iter().map(|s| s.sensor_id().to_string()).collect();
        if cfg.mqtt.discovery {
            announce_discovery(&cfg, &store, &link, &sensor_ids, model.head_names());
        }
        if !link.wait_connected(Duration::from_secs(5)).await {
            tracing::warn!(
                "MQTT broker {}:{} not reachable yet; windows are stored and scoring continues while it retries",
                cfg.mqtt.host,
                cfg.mqtt.port
            );
        }

        let stop = CancellationToken::new();
        let (win_tx, win_rx) = mpsc::channel::<ProcessedWindow>(WINDOW_QUEUE);
        let (scored_tx, scored_rx) = mpsc::channel::<ScoredWindow>(WINDOW_QUEUE);

        // Sensors: one source task + one DSP task each.
        let hr_pub = HrPublisher {
            outbox: outbox.clone(),
            heads: model.head_names().to_vec(),
            period_ns: (WINDOW_LEN as f64 / crate::dsp::WINDOW_FS * 1e9) as i64,
        };
        let mut sensor_tasks = Vec::new();
        for src in sources {
            let id = src.sensor_id().to_string();
            let (tx, rx) = mpsc::channel::<SourceEvent>(SOURCE_QUEUE);
            let src_task = tokio::spawn(src.run(tx, stop.child_token()));
            let pipe = SensorPipeline::new(&id, cfg.dsp.clone(), cfg.quality.clone());
            let dsp_task = tokio::spawn(sensor_task(
                pipe,
                rx,
                win_tx.clone(),
                link.clone(),
                hr_pub.clone(),
            ));
            sensor_tasks.push((id, src_task, dsp_task));
        }
        drop(win_tx);

        // Scorer thread.
        let heads: Vec<String> = model.head_names().to_vec();
        let (swap_tx, swap_rx) = std::sync::mpsc::channel::<(Model, String)>();
        let scorer_version: Arc<str> = Arc::from(version.as_str());
        let scorer = std::thread::Builder::new()
            .name("affectgate-scorer".into())
            .spawn(move || scorer_loop(model, scorer_version, win_rx, scored_tx, swap_rx))
            .map_err(|e| GatewayError::Task(e.to_string()))?;
        // Registry watcher: a promotion or rollback (by a retraining round or `affectgate
        // model`) is loaded here, completely, and only then handed to the scorer.
        let watcher = tokio::spawn(watch_registry(
            registry.clone(),
            cfg.model.backend.clone(),
            self.resolve(&cfg.model.path),
            serving_id,
            swap_tx,
        ));

        // Inputs (labels, commands) from MQTT.
        let reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // On-gateway retraining (scheduler task; rounds run in a low-priority worker process).
        let worker_exe = self
            .retrain_worker
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("affectgate"));
        let (retrain_tx, retrain_rx) = mpsc::channel::<()>(1);
        let retrain_task = cfg.retrain.enabled.then(|| {
            tokio::spawn(
                Scheduler {
                    cfg: cfg.retrain.clone(),
                    store: store.clone(),
                    registry: registry.clone(),
                    shipped: self.resolve(&cfg.model.path),
                    backend: cfg.model.backend.clone(),
                    link: link.clone(),
                    worker_exe,
                }
                .run(retrain_rx, stop.clone()),
            )
        });
        let retrain_tx = cfg.retrain.enabled.then_some(retrain_tx);

        let input_task = link.take_incoming().map(|rx| {
            tokio::spawn(input_task(
                rx,
                cfg.gateway.id.clone(),
                sensor_ids.clone(),
                store.clone(),
                link.clone(),
                reload.clone(),
                stop.clone(),
                retrain_tx.clone(),
            ))
        });

        // Sink task.
        let sink = tokio::spawn(sink_task(
            scored_rx,
            store.clone(),
            outbox,
            link.clone(),
            heads,
            self.observer.take(),
        ));

        // Wait for a shutdown request or for every sensor to end on its own.
        let mut reports: BTreeMap<String, SensorReport> = BTreeMap::new();
        let all_done = async {
            let mut out = Vec::new();
            for (id, src_task, dsp_task) in sensor_tasks.drain(..) {
                let src_res = src_task.await;
                let dsp_res = dsp_task.await;
                out.push((id, src_res, dsp_res));
            }
            out
        };
        tokio::pin!(all_done);
        tokio::pin!(shutdown);
        let finished = tokio::select! {
            r = &mut all_done => r,
            _ = &mut shutdown => {
                tracing::info!("shutting down: stopping sources, draining windows");
                stop.cancel();
                all_done.await
            }
            _ = stop.cancelled() => {
                tracing::info!("reloading: stopping sources, draining windows");
                all_done.await
            }
        };
        if let Some(t) = input_task {
            t.abort();
        }
        watcher.abort();
        if let Some(t) = retrain_task {
            // The scheduler stops a running round at once (it resumes from its checkpoint at
            // the next start) and returns.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for (id, src_res, dsp_res) in finished {
            let mut rep = dsp_res.unwrap_or_else(|e| SensorReport {
                error: Some(format!("sensor task panicked: {e}")),
                ..Default::default()
            });
            match src_res {
                Ok(Ok(())) | Ok(Err(SourceError::Closed { .. })) => {}
                Ok(Err(e)) => {
                    tracing::error!("{e}");
                    rep.error = Some(e.to_string());
                }
                Err(e) => rep.error = Some(format!("source task panicked: {e}")),
            }
            reports.insert(id, rep);
        }
        // The sensor tasks dropped their window senders: the scorer drains and ends, then
        // the sink drains and ends.
        let _ = tokio::task::spawn_blocking(move || scorer.join()).await;
        let published = sink.await.map_err(|e| GatewayError::Task(e.to_string()))?;
        for (sensor, counts) in &published.per_sensor {
            if let Some(r) = reports.get_mut(sensor) {
                r.scored = counts.0;
                r.flagged = counts.1;
            }
        }
        // The sink flushed its windows; this flush covers labels written by the input task.
        {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("flushing the store failed: {e}"),
                Err(e) => tracing::error!("flushing the store failed: {e}"),
            }
        }
        // `close` takes `&self`: an aborted input task may still hold a clone for a moment.
        let mqtt = link.close(CLOSE_TIMEOUT).await;
        if !mqtt.all_acked {
            tracing::warn!(
                pending = mqtt.pending,
                "broker did not acknowledge everything before shutdown; the undelivered state messages stay in the outbox for the next start"
            );
        }
        drop(store);
        Ok(RunReport {
            sensors: reports,
            published: published.published,
            mqtt,
            model: version,
            reload_requested: reload.load(std::sync::atomic::Ordering::SeqCst),
        })
    }
}

/// The registry's current model, loaded, with its version and id; `None` when the shipped
/// model serves (nothing promoted) or the promoted one cannot be loaded (logged).
async fn load_registered(
    registry: &Registry,
    backend: &Backend,
) -> Option<(Model, String, String)> {
    let id = match registry.serving() {
        Ok((Some(id), _)) => id,
        Ok((None, _)) => return None,
        Err(e) => {
            tracing::error!("{e}; serving the shipped model");
            return None;
        }
    };
    let path = registry.model_path(&id);
    let (p, b) = (path.clone(), backend.clone());
    match tokio::task::spawn_blocking(move || Model::load(&p, &b)).await {
        Ok(Ok(m)) => {
            let version = model_version(Path::new(&format!("{id}.onnx")), m.sha256());
            Some((m, version, id))
        }
        Ok(Err(e)) => {
            tracing::error!(model = %id, "promoted model {} cannot be loaded ({e}); serving the shipped model", path.display());
            None
        }
        Err(e) => {
            tracing::error!("loading {}: {e}", path.display());
            None
        }
    }
}

/// How often the gateway looks for promotions and rollbacks in the registry.
const REGISTRY_POLL: Duration = Duration::from_secs(2);

async fn watch_registry(
    registry: Registry,
    backend: Backend,
    shipped: PathBuf,
    mut serving: String,
    swap: std::sync::mpsc::Sender<(Model, String)>,
) {
    loop {
        tokio::time::sleep(REGISTRY_POLL).await;
        let want = match registry.serving() {
            Ok((cur, _)) => cur.unwrap_or_else(|| SHIPPED.to_string()),
            Err(e) => {
                tracing::warn!("{e}");
                continue;
            }
        };
        if want == serving {
            continue;
        }
        let loaded = if want == SHIPPED {
            None
        } else {
            load_registered(&registry, &backend).await
        };
        let (model, version) = match loaded {
            Some((m, v, id)) if id == want => (m, v),
            Some(_) => continue, // changed again meanwhile: next round
            None if want != SHIPPED => {
                serving = want; // logged by load_registered; do not retry every poll
                continue;
            }
            None => {
                let (p, b) = (shipped.clone(), backend.clone());
                match tokio::task::spawn_blocking(move || Model::load(&p, &b)).await {
                    Ok(Ok(m)) => {
                        let v = model_version(&shipped, m.sha256());
                        (m, v)
                    }
                    Ok(Err(e)) => {
                        tracing::error!("shipped model {}: {e}", shipped.display());
                        serving = want;
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        tracing::info!(model = %want, version = %version, "registry changed: swapping the serving model");
        if swap.send((model, version)).is_err() {
            return;
        }
        serving = want;
    }
}

/// `<file stem>@<first 8 hex of sha256>`.
pub fn model_version(path: &Path, sha256: &str) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    format!("{stem}@{}", &sha256[..sha256.len().min(8)])
}

/// Where heart-rate-only summaries go (they bypass the scorer: there is nothing to score).
#[derive(Clone)]
struct HrPublisher {
    outbox: crate::store::outbox::Outbox,
    heads: Vec<String>,
    period_ns: i64,
}

impl HrPublisher {
    fn publish(&self, link: &MqttLink, sensor: &str, s: &HrSummary) {
        let msg = StateMessage {
            time: rfc3339_ms(s.end_ns),
            window_start_ms: s.start_ns.div_euclid(1_000_000),
            window: s.index,
            sensor: sensor.to_string(),
            scores: self.heads.iter().map(|h| (h.clone(), None)).collect(),
            hr_bpm: s.hr_bpm,
            rmssd_ms: s.hrv.map(|h| h.rmssd_ms as f32),
            sdnn_ms: s.hrv.map(|h| h.sdnn_ms as f32),
            quality: s.quality.to_string(),
            model: "none".into(),
        };
        let payload = serde_json::to_vec(&msg).expect("state message serialises");
        match self.outbox.push(&link.topics().state(sensor), &payload) {
            Ok(_) => link.wake(),
            Err(e) => tracing::error!(sensor, "queueing the heart-rate message failed: {e}"),
        }
    }
}

async fn sensor_task(
    mut pipe: SensorPipeline,
    mut rx: mpsc::Receiver<SourceEvent>,
    tx: mpsc::Sender<ProcessedWindow>,
    link: Arc<MqttLink>,
    hr: HrPublisher,
) -> SensorReport {
    let avail = link.topics().availability(pipe.sensor());
    let rep = sensor_loop(&mut pipe, &mut rx, &tx, &link, &avail, &hr).await;
    link.retain(avail, b"offline".to_vec());
    rep
}

async fn sensor_loop(
    pipe: &mut SensorPipeline,
    rx: &mut mpsc::Receiver<SourceEvent>,
    tx: &mpsc::Sender<ProcessedWindow>,
    link: &MqttLink,
    avail: &str,
    hr: &HrPublisher,
) -> SensorReport {
    let mut rep = SensorReport::default();
    let mut out = Vec::new();
    let mut beats = BeatSummary::new(hr.period_ns);
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::Beats(b) => {
                if let Some(s) = beats.push(&b) {
                    rep.hr_summaries += 1;
                    hr.publish(link, pipe.sensor(), &s);
                }
            }
            SourceEvent::Block(b) => {
                if let Err(e) = pipe.push(&b, &mut out) {
                    // A configuration that does not fit this sensor's rate (e.g. a notch
                    // above Nyquist of a replayed file): every block would fail the same way.
                    let msg = format!(
                        "sensor {}: dsp cannot process {} Hz input: {e}",
                        pipe.sensor(),
                        b.fs_hz
                    );
                    tracing::error!("{msg}");
                    rep.error = Some(msg);
                    return rep;
                }
            }
            SourceEvent::Connected => {
                tracing::info!(sensor = %pipe.sensor(), "sensor connected");
                link.retain(avail.to_string(), b"online".to_vec());
            }
            SourceEvent::Disconnected { reason } => {
                tracing::warn!(sensor = %pipe.sensor(), reason, "sensor disconnected");
                link.retain(avail.to_string(), b"offline".to_vec());
                pipe.gap();
                beats.gap();
            }
            SourceEvent::End => pipe.finish(&mut out),
        }
        for w in out.drain(..) {
            rep.windows += 1;
            if tx.send(w).await.is_err() {
                return rep;
            }
        }
    }
    rep
}

/// The scorer thread. New models arrive on `swap` already loaded; one is taken only between
/// batches, so a window is scored entirely by one model and none is dropped by a swap.
fn scorer_loop(
    mut model: Model,
    mut version: Arc<str>,
    mut rx: mpsc::Receiver<ProcessedWindow>,
    tx: mpsc::Sender<ScoredWindow>,
    swap: std::sync::mpsc::Receiver<(Model, String)>,
) {
    let mut heads: Vec<String> = model.head_names().to_vec();
    let mut batch: Vec<ProcessedWindow> = Vec::with_capacity(MAX_BATCH);
    let mut input: Vec<f32> = Vec::with_capacity(MAX_BATCH * WINDOW_LEN);
    while let Some(first) = rx.blocking_recv() {
        while let Ok((m, v)) = swap.try_recv() {
            tracing::info!(from = %version, to = %v, "serving model swapped");
            model = m;
            version = Arc::from(v.as_str());
            heads = model.head_names().to_vec();
        }
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        input.clear();
        let mut idx = Vec::new();
        for (i, w) in batch.iter().enumerate() {
            if let Some(x) = &w.normalized {
                input.extend_from_slice(x);
                idx.push(i);
            }
        }
        let mut scores: Vec<Vec<(String, f32)>> = vec![Vec::new(); batch.len()];
        // Run in power-of-two chunks (27 = 16 + 8 + 2 + 1): tract plans and caches per
        // input shape, so arbitrary batch sizes would keep up to 32 plans alive; this keeps
        // at most 6, with no padding wasted.
        let mut done = 0usize;
        while done < idx.len() {
            let left = idx.len() - done;
            let n = 1usize << (usize::BITS - 1 - left.leading_zeros());
            let chunk = &input[done * WINDOW_LEN..(done + n) * WINDOW_LEN];
            match model.run(chunk, n) {
                Ok(s) => {
                    for k in 0..n {
                        scores[idx[done + k]] = heads
                            .iter()
                            .cloned()
                            .zip(s.values[k].iter().copied())
                            .collect();
                    }
                }
                Err(e) => tracing::error!("inference failed for {n} windows: {e}"),
            }
            done += n;
        }
        for (w, s) in batch.drain(..).zip(scores) {
            let sw = ScoredWindow {
                w,
                scores: s,
                model: version.clone(),
            };
            if tx.blocking_send(sw).is_err() {
                return;
            }
        }
    }
}

struct SinkReport {
    published: u64,
    /// sensor → (scored, flagged)
    per_sensor: BTreeMap<String, (u64, u64)>,
}

/// Build the MQTT state message of a scored window.
pub fn state_message(sw: &ScoredWindow, heads: &[String]) -> StateMessage {
    let w = &sw.w;
    let mut scores: BTreeMap<String, Option<f32>> =
        heads.iter().map(|h| (h.clone(), None)).collect();
    for (h, v) in &sw.scores {
        scores.insert(h.clone(), Some(*v));
    }
    StateMessage {
        time: rfc3339_ms(w.window.end_ns()),
        window_start_ms: w.window.start_ns.div_euclid(1_000_000),
        window: w.window.index,
        sensor: w.sensor.to_string(),
        scores,
        hr_bpm: w.hrv.map(|h| h.hr_bpm as f32),
        rmssd_ms: w.hrv.map(|h| h.rmssd_ms as f32),
        sdnn_ms: w.hrv.map(|h| h.sdnn_ms as f32),
        quality: w.quality.label(),
        model: sw.model.to_string(),
    }
}

async fn sink_task(
    mut rx: mpsc::Receiver<ScoredWindow>,
    store: Arc<Store>,
    outbox: crate::store::outbox::Outbox,
    link: Arc<MqttLink>,
    heads: Vec<String>,
    observer: Option<mpsc::UnboundedSender<Observed>>,
) -> SinkReport {
    let mut rep = SinkReport {
        published: 0,
        per_sensor: BTreeMap::new(),
    };
    let mut group: Vec<ScoredWindow> = Vec::new();
    while let Some(first) = rx.recv().await {
        // Group commit: store every window that is ready and queue its state message in the
        // outbox, flush sled once, then let the MQTT link publish. A window whose state
        // message left the gateway is therefore on disk, and a state message is never lost
        // to a broker outage or a restart (the link deletes it only on PUBACK) — at one fsync
        // per group instead of one per window.
        group.push(first);
        while let Ok(sw) = rx.try_recv() {
            group.push(sw);
        }
        let now = now_ns();
        for sw in &group {
            let counts = rep.per_sensor.entry(sw.w.sensor.to_string()).or_default();
            if sw.scores.is_empty() {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
            let rec = StoredWindow {
                sensor: sw.w.sensor.to_string(),
                window: sw.w.window.clone(),
                quality: sw.w.quality.flags,
                hr_bpm: sw.w.hrv.map(|h| h.hr_bpm as f32),
                rmssd_ms: sw.w.hrv.map(|h| h.rmssd_ms as f32),
                sdnn_ms: sw.w.hrv.map(|h| h.sdnn_ms as f32),
                scores: sw.scores.clone(),
                model: (!sw.scores.is_empty()).then(|| sw.model.to_string()),
                labels: Vec::new(),
            };
            if let Err(e) = store.put(&rec) {
                tracing::error!(sensor = %rec.sensor, "storing window {} failed: {e}", rec.window.index);
            }
            let msg = state_message(sw, &heads);
            let payload = serde_json::to_vec(&msg).expect("state message serialises");
            match outbox.push(&link.topics().state(&msg.sensor), &payload) {
                Ok(_) => rep.published += 1,
                Err(e) => {
                    tracing::error!(sensor = %msg.sensor, "queueing the state message failed: {e}")
                }
            }
            if let Some(obs) = &observer {
                let _ = obs.send(Observed {
                    state: msg,
                    completed: sw.w.completed,
                    published: Instant::now(),
                });
            }
        }
        group.clear();
        match store.enforce_retention(now) {
            Ok(r) if r.dropped_by_age + r.dropped_by_bytes > 0 => tracing::info!(
                by_age = r.dropped_by_age,
                by_bytes = r.dropped_by_bytes,
                bytes_freed = r.bytes_freed,
                "store retention dropped the oldest windows"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("store retention failed: {e}"),
        }
        {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("flushing the store failed: {e}"),
                Err(e) => tracing::error!("flushing the store failed: {e}"),
            }
        }
        link.wake();
    }
    rep
}

/// Retained Home Assistant discovery for every configured sensor, and removal (empty
/// retained configs) for sensors announced by an earlier run but no longer configured. The
/// announced set is kept in the store so removal survives restarts.
fn announce_discovery(
    cfg: &Config,
    store: &Store,
    link: &MqttLink,
    sensors: &[String],
    heads: &[String],
) {
    let prefix = &cfg.mqtt.discovery_prefix;
    let gw = &cfg.gateway.id;
    let before: Vec<String> = store
        .meta_get("ha_announced")
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default();
    for old in before.iter().filter(|s| !sensors.contains(s)) {
        tracing::info!(sensor = %old, "sensor no longer configured: removing its Home Assistant entities");
        for (t, p) in discovery::removal_messages(prefix, gw, old, heads) {
            link.retain(t, p.into_bytes());
        }
        link.retain(link.topics().availability(old), Vec::new());
    }
    let window_period_s = cfg.dsp.hop as f64 / crate::dsp::WINDOW_FS;
    for s in sensors {
        let inp = DiscoveryInput {
            prefix,
            gateway: gw,
            sensor: s,
            heads,
            window_period_s,
            sw_version: env!("CARGO_PKG_VERSION"),
        };
        for (t, p) in discovery::discovery_messages(&inp) {
            link.retain(t, p.into_bytes());
        }
    }
    if let Err(e) = store.meta_put(
        "ha_announced",
        &serde_json::to_vec(sensors).expect("ids serialise"),
    ) {
        tracing::error!("remembering announced sensors failed: {e}");
    }
}

/// Labels and commands from MQTT, validated by [`inputs::parse_input`]. A bad payload is
/// answered on `affectgate/<gateway>/error` and logged with its topic and field; nothing
/// from the network can stop the gateway or touch stored samples.
// One argument per collaborator, each used by exactly one kind of input; a struct would
// only rename them.
#[allow(clippy::too_many_arguments)]
async fn input_task(
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    gateway: String,
    sensors: Vec<String>,
    store: Arc<Store>,
    link: Arc<MqttLink>,
    reload: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
    retrain: Option<mpsc::Sender<()>>,
) {
    while let Some((topic, payload)) = rx.recv().await {
        match inputs::parse_input(&gateway, &topic, &payload, now_ns(), &sensors) {
            Ok(None) => {}
            Ok(Some(Input::Label { sensor, label })) => {
                let store = store.clone();
                let res =
                    tokio::task::spawn_blocking(move || label_windows(&store, &sensor, &label))
                        .await;
                match res {
                    Ok(Ok(n)) => tracing::info!(topic, windows = n, "self-report stored as labels"),
                    Ok(Err(e)) => tracing::error!(topic, "storing labels failed: {e}"),
                    Err(e) => tracing::error!(topic, "storing labels failed: {e}"),
                }
            }
            Ok(Some(Input::Command(Command::FlushOutbox))) => {
                tracing::info!("command: flush outbox");
                let _ = store.flush();
                link.wake();
            }
            Ok(Some(Input::Command(Command::Reload))) => {
                tracing::info!("command: reload configuration");
                reload.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
            }
            Ok(Some(Input::Command(Command::Retrain))) => {
                let error = match &retrain {
                    None => Some("on-gateway retraining is disabled (retrain.enabled = false in the config); nothing was started"),
                    Some(tx) => match tx.try_send(()) {
                        Ok(()) => None,
                        Err(_) => Some("a retraining round is already requested or running; see affectgate/<gateway>/retrain"),
                    },
                };
                match error {
                    None => tracing::info!(topic, "retraining round requested"),
                    Some(error) => {
                        let msg =
                            serde_json::json!({"topic": topic, "field": null, "error": error});
                        link.send(link.topics().error(), msg.to_string().into_bytes());
                        tracing::warn!(topic, "{error}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    topic = e.topic(),
                    field = e.field(),
                    "rejected MQTT input: {}",
                    e.message()
                );
                link.send(link.topics().error(), e.to_json().into_bytes());
            }
        }
    }
}

/// Put a self-report's labels on every stored window of `sensor` overlapping its time span
/// (labels of other names on those windows are kept). Returns the number of windows labelled.
pub fn label_windows(
    store: &Store,
    sensor: &str,
    label: &inputs::LabelReport,
) -> Result<usize, crate::store::StoreError> {
    let win_ns = (crate::dsp::WINDOW_LEN as f64 / crate::dsp::WINDOW_FS * 1e9) as i64;
    let mut n = 0;
    let hits: Vec<_> = store
        .range(sensor, label.from_ns.saturating_sub(win_ns), label.to_ns)
        .filter_map(|r| r.ok())
        .filter(|w| w.window.end_ns() > label.from_ns)
        .collect();
    for w in hits {
        let mut labels = w.labels.clone();
        for (k, v) in &label.values {
            labels.retain(|(n, _)| n != k);
            labels.push((k.clone(), *v));
        }
        if store.set_labels(sensor, w.window.start_ns, &labels)? {
            n += 1;
        }
    }
    Ok(n)
}
