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
//! * Shutdown ([`GatewayBuilder::run`]'s `shutdown` future, or every sensor ending — finite
//!   sources done, or sensors failed for good, which [`RunReport::all_sensors_failed`] tells):
//!   cancel the sources → each sensor task drains its queue and exits → the scorer drains and
//!   exits → the sink stores and publishes the last windows → sled is flushed → `offline` is
//!   published (retained) once the broker acknowledged everything → disconnect.

mod control;
mod health;
mod ingest;
mod scorer;
pub mod sensor;
mod serving;
mod sink;

pub use control::label_windows;
use control::{announce_discovery, input_task, Announcer};
pub use health::{StoreState, StoreStatus};
use ingest::{sensor_task, wait_sensors, HrPublisher, RunningSensor, WearerState};
use scorer::{load_registered, scorer_loop, watch_registry};
use sink::sink_task;
pub use sink::state_message;

/// The shipped model, compiled in for the demo (2.6 MB).
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../models/affectgate-arousal-v2.onnx");
/// Where the shipped model lives in the repository (and in the default config).
pub const DEFAULT_MODEL_PATH: &str = "models/affectgate-arousal-v2.onnx";

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::sensor::{ProcessedWindow, SensorPipeline};
use crate::config::Config;
use crate::dsp::WINDOW_LEN;
use crate::fleet::agent::{Agent, FleetInput, Health};
use crate::infer::{Backend, InferError, Model};
use crate::mqtt::discovery::{self, DiscoveryInput};
use crate::mqtt::inputs::{self, Command, Input};
use crate::mqtt::{rfc3339_ms, LinkOptions, LinkReport, MqttLink, StateMessage, TlsFiles};
use crate::retrain::registry::{Registry, SHIPPED};
use crate::retrain::scheduler::Scheduler;
use crate::retrain::RetrainStatus;
use crate::source::live::from_config;
use crate::source::{Source, SourceError, SourceEvent, StrapInfo, SOURCE_QUEUE};
use crate::store::{Store, StoreError, StoredWindow};
use crate::time::now_ns;

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
    /// Windows cut but dropped at a stop, not stored: the drain budget ran out (a gateway
    /// far behind its sensors, see `ingest::DRAIN_BUDGET`).
    pub dropped_at_stop: u64,
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
    /// The window store was failing (full disk) or found damaged when the run ended:
    /// windows were lost, and the caller should end non-zero.
    pub store_problem: Option<String>,
}

/// Builds and runs a gateway from a [`Config`] (see the module docs).
pub struct GatewayBuilder {
    config: Config,
    model: Option<(Model, String)>,
    sources: Vec<Box<dyn Source>>,
    observer: Option<mpsc::UnboundedSender<Observed>>,
    retrain_worker: Option<PathBuf>,
}

impl GatewayBuilder {
    /// Paths in `config` are used as given: [`Config::load`] resolves relative ones against
    /// the config file's directory (a config built in code uses [`Config::resolve_paths`]).
    pub fn new(config: Config) -> Self {
        Self {
            config,
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
            cfg.sensors.iter().map(from_config).collect()
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
        let registry = Registry::open(&cfg.retrain.models_dir.clone());
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
                let path = cfg.model.path.clone();
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
        if let Err(reason) = crate::model::check_feature_names(model.feature_names()) {
            return Err(GatewayError::Task(format!("model {version}: {reason}")));
        }
        tracing::info!(model = %version, heads = ?model.head_names(), features = ?model.feature_names(), backend = ?model.backend(), "model loaded");

        // The fleet's pinned root likewise: without it no release could ever be verified.
        if cfg.fleet.enabled {
            Agent::check(&cfg.fleet).map_err(|e| {
                GatewayError::Task(format!("fleet.root: {e} (copy the repository's metadata/root.json there once, out of band)"))
            })?;
        }
        // TLS files are read before the store opens: a wrong path fails the start cleanly.
        let tls = match &cfg.mqtt.tls {
            Some(t) => Some(TlsFiles::load(t)?),
            None => None,
        };

        // A damaged store is moved aside (kept) and replaced by an empty one: a gateway must
        // not stay down until a person moves a folder. Its windows are salvaged below.
        let store_path = cfg.store.path.clone();
        let retention = cfg.store.retention();
        let (store, quarantined) = {
            let p = store_path.clone();
            let (store, q) = tokio::task::spawn_blocking(move || {
                crate::store::open_or_quarantine(&p, retention)
            })
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))??;
            (Arc::new(store), q)
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
                subscribe: {
                    let mut s = crate::mqtt::Topics::new(&cfg.gateway.id).subscriptions();
                    if cfg.fleet.enabled {
                        s.push(crate::fleet::plan::plan_topic(&cfg.fleet.channel));
                    }
                    s
                },
                ha_status: cfg
                    .mqtt
                    .discovery
                    .then(|| discovery::ha_status_topic(&cfg.mqtt.discovery_prefix)),
                // Late = after Home Assistant's `expire_after` (3 window periods): a state
                // that old would already have expired there.
                late_after: discovery::expire_after_s(cfg.dsp.hop as f64 / crate::dsp::WINDOW_FS)
                    .map(Duration::from_secs),
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
        // After the first connection attempt: the error topic is not queued while offline.
        let salvager = health::announce_store(&link, &store, quarantined);

        let stop = CancellationToken::new();
        let (win_tx, win_rx) = mpsc::channel::<ProcessedWindow>(WINDOW_QUEUE);
        let (scored_tx, scored_rx) = mpsc::channel::<ScoredWindow>(WINDOW_QUEUE);

        // Sensors: one source task + one DSP task each.
        let hr_pub = HrPublisher {
            outbox: outbox.clone(),
            heads: model.head_names().to_vec(),
            period_ns: (WINDOW_LEN as f64 / crate::dsp::WINDOW_FS * 1e9) as i64,
        };
        // Re-announces a strap's device when it identifies itself (discovery on only).
        let announcer = cfg
            .mqtt
            .discovery
            .then(|| Arc::new(Announcer::new(&cfg, model.head_names(), store.clone())));
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
                WearerState::restore(store.clone(), &id, cfg.baseline.clone()),
                announcer.clone(),
                stop.clone(),
            ));
            sensor_tasks.push(RunningSensor {
                id,
                source: src_task,
                dsp: dsp_task,
            });
        }
        drop(win_tx);

        // Scorer thread.
        let heads: Vec<String> = model.head_names().to_vec();
        let (swap_tx, swap_rx) = std::sync::mpsc::channel::<(Model, String)>();
        let scorer_version: Arc<str> = Arc::from(version.as_str());
        // Windows scored per model version: the fleet agent's health window reads it.
        let health = Arc::new(Health::default());
        let scorer = std::thread::Builder::new()
            .name("affectgate-scorer".into())
            .spawn({
                let stop = stop.clone();
                let health = health.clone();
                move || {
                    scorer_loop(
                        model,
                        scorer_version,
                        win_rx,
                        scored_tx,
                        swap_rx,
                        health,
                        stop,
                    )
                }
            })
            .map_err(|e| GatewayError::Task(e.to_string()))?;
        // Registry watcher: a promotion or rollback (by a retraining round or `affectgate
        // model`) is loaded here, completely, and only then handed to the scorer.
        let (serving_tx, serving_rx) = tokio::sync::watch::channel(serving::Serving {
            id: serving_id.clone(),
            version: version.clone(),
            heads: heads.clone(),
        });
        let fleet_serving = serving_rx.clone();
        let watcher = tokio::spawn(watch_registry(
            registry.clone(),
            cfg.model.backend.clone(),
            cfg.model.path.clone(),
            serving_id,
            swap_tx,
            serving_tx,
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
        let (pause_tx, pause_rx) = mpsc::unbounded_channel::<bool>();
        // The scheduler reports; the gateway publishes (retained) what it reports, and what
        // serves (see `serving`).
        let (status_tx, status_rx) = mpsc::unbounded_channel::<RetrainStatus>();
        let serving_task = tokio::spawn(serving::publish_serving(
            link.clone(),
            serving_rx,
            cfg.retrain.enabled.then_some(status_rx),
        ));
        let retrain_task = cfg.retrain.enabled.then(|| {
            tokio::spawn(
                Scheduler {
                    cfg: cfg.retrain.clone(),
                    store: store.clone(),
                    registry: registry.clone(),
                    shipped: cfg.model.path.clone(),
                    backend: cfg.model.backend.clone(),
                    status: status_tx,
                    worker_exe,
                    paused: Default::default(),
                }
                .run(retrain_rx, pause_rx, stop.clone()),
            )
        });
        let retrain_tx = cfg.retrain.enabled.then_some(retrain_tx);
        let pause_tx = cfg.retrain.enabled.then_some(pause_tx);

        // Fleet releases (see `fleet::agent`).
        let (fleet_tx, fleet_rx) = mpsc::unbounded_channel::<FleetInput>();
        let fleet_task = cfg.fleet.enabled.then(|| {
            tokio::spawn(
                Agent {
                    cfg: cfg.fleet.clone(),
                    gateway: cfg.gateway.id.clone(),
                    dir: cfg.retrain.models_dir.join("fleet"),
                    registry: registry.clone(),
                    backend: cfg.model.backend.clone(),
                    link: link.clone(),
                    serving: fleet_serving,
                    health: health.clone(),
                    store: store.clone(),
                    retrain: retrain_tx.clone(),
                }
                .run(fleet_rx, stop.clone()),
            )
        });
        let fleet_in = cfg
            .fleet
            .enabled
            .then(|| (crate::fleet::plan::plan_topic(&cfg.fleet.channel), fleet_tx));
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
                pause_tx.clone(),
                registry.clone(),
                fleet_in,
            ))
        });

        // Sink task.
        let sink = tokio::spawn(sink_task(
            scored_rx,
            store.clone(),
            stop.clone(),
            outbox,
            link.clone(),
            heads,
            self.observer.take(),
        ));

        // Wait for a shutdown request or for every sensor to end on its own (finished, or
        // failed for good: see `ingest::wait_sensors`).
        let all_done = wait_sensors(sensor_tasks, &link);
        tokio::pin!(all_done);
        tokio::pin!(shutdown);
        let mut reports = tokio::select! {
            r = &mut all_done => r,
            _ = &mut shutdown => {
                tracing::info!("shutting down: stopping sources, draining windows");
                stop.cancel();
                all_done.await
            }
            // `stop` is cancelled from inside by `cmd/reload` or by a failing store (the sink).
            _ = stop.cancelled() => {
                if reload.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("reloading: stopping sources, draining windows");
                } else {
                    tracing::error!("the window store is failing: stopping sources");
                }
                all_done.await
            }
        };
        if let Some(t) = input_task {
            t.abort();
        }
        watcher.abort();
        if let Some(t) = fleet_task {
            t.abort();
        }
        if let Some(t) = retrain_task {
            // The scheduler stops a running round at once (it resumes from its checkpoint at
            // the next start) and returns.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Its last status ("stopped") is handed to the link before the link closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), serving_task).await;
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
        salvager.stop().await;
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
            store_problem: published.store_problem,
        })
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
