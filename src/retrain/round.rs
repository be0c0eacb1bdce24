//! One retraining round as the gateway runs it, around the learning core's
//! [`run_round`](crate::learn::round::run_round):
//!
//! 1. **data** — the store's good-quality windows (most recent first, up to `max_windows`),
//!    z-scored per sensor (one sensor = one wearer), and the self-reported labels on them;
//! 2. **model** — the serving model (registry `current`, else the shipped one), the previous
//!    round's pretext network if there is one, and the replay pack of the base it descends from
//!    (`<model>.replay.bin` of the shipped model, or `replay.bin` of the fleet release the
//!    serving model came from: a sample of its pretraining windows and its heads' labelled
//!    set, see [`replay_for`]);
//! 3. **train** — with a checkpoint after every pretext epoch in `<models_dir>/work/`; a round
//!    that finds a checkpoint for the same parent model resumes from it (power cut, shutdown);
//! 4. **gate** — the learning core's metric gate (not worse on held-out labelled windows and on
//!    the pretext task), then the serving gate: the exported ONNX must load in the serving
//!    backend and agree with the training framework's forward pass (max |Δ| ≤ 1e-4);
//! 5. **register** — the candidate is stored in the registry as `candidate` or `rejected` (with
//!    the reason), and promoted when it passed; the gateway's registry watcher swaps it in.
//!
//! Everything here is blocking and CPU-heavy: the scheduler runs it on its own thread pool
//! with a lowered priority (see [`super::scheduler`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::registry::{Entry, ModelStatus, Registry, SHIPPED};
use crate::fs::atomic_write;
use crate::infer::{Backend, Model};
use crate::learn::dataset::zscore_person;
use crate::learn::round::{
    run_round, Checkpoint, Decision, GateMetrics, Progress, RetrainError, RoundConfig, RoundData,
};
use crate::model::card::ModelCard;
use crate::model::onnx::{export_onnx, import_onnx};
use crate::model::replay::{PackWindow, ReplayPack};
use crate::model::NetworkWeights;
use crate::store::Store;

/// Largest |ONNX − training forward| accepted by the serving gate.
pub const PARITY_TOL: f32 = 1e-4;

/// What a round needs from the gateway.
pub struct RoundContext<'a> {
    pub store: &'a Store,
    pub registry: &'a Registry,
    /// The shipped model (`model.path`), whose replay pack every round uses.
    pub shipped: PathBuf,
    pub backend: Backend,
    pub round: RoundConfig,
    /// At most this many (most recent, good-quality) stored windows.
    pub max_windows: usize,
}

/// The round's verdict after both gates (metrics, then serving). Serialised lower-case
/// (`"promote"`, `"reject"`) in the retained status and the registry's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Promote,
    Reject,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Promote => "promote",
            Verdict::Reject => "reject",
        })
    }
}

/// What a finished round reports (also the retained MQTT status's payload core).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundReport {
    pub id: String,
    pub parent: String,
    pub promoted: bool,
    pub decision: Verdict,
    pub reason: String,
    pub windows: usize,
    pub labelled: usize,
    pub epochs_run: usize,
    pub resumed_from_epoch: Option<usize>,
    pub before: GateMetrics,
    pub after: GateMetrics,
    pub parity_max_abs: f32,
    /// Peak resident memory of the process that ran the round (MiB; the worker process on
    /// a gateway), for sizing `max_memory_mb`.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    pub seconds: f64,
}

/// Why a round ended without a verdict.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("{0}")]
    Retrain(#[from] RetrainError),
    #[error("{0}")]
    Registry(#[from] super::registry::RegistryError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    #[error(transparent)]
    Fs(#[from] crate::fs::FsError),
    #[error(transparent)]
    Pack(#[from] crate::model::replay::PackError),
    /// The staged round no longer fits the serving model; it is discarded.
    #[error("staged round discarded: {0}")]
    Stale(String),
}

fn work_dir(registry: &Registry) -> PathBuf {
    registry.dir().join("work")
}

/// Load the serving network's weights: (id, weights, pretext weights of its round if any).
fn serving_weights(
    registry: &Registry,
    shipped: &Path,
) -> Result<(String, NetworkWeights, Option<NetworkWeights>), RoundError> {
    let (current, _) = registry.serving()?;
    let (id, path) = match current {
        Some(id) => {
            let p = registry.model_path(&id);
            (id, p)
        }
        None => (SHIPPED.to_string(), shipped.to_path_buf()),
    };
    let read = |p: &Path, what: &'static str| {
        std::fs::read(p).map_err(|e| RoundError::File {
            what,
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    };
    let bytes = read(&path, "serving model")?;
    let (w, _) = import_onnx(&bytes).map_err(|e| RoundError::File {
        what: "serving model",
        path: path.clone(),
        message: e.to_string(),
    })?;
    // The pretext network the serving encoder came from: a round's `pretext.onnx` beside its
    // model, or for the shipped model `<model>.pretext.onnx` — used only if its convolutions
    // are exactly the serving encoder's.
    let pretext_path = if id == SHIPPED {
        path.with_extension("pretext.onnx")
    } else {
        path.with_file_name("pretext.onnx")
    };
    let pretext = if pretext_path.exists() {
        let b = read(&pretext_path, "pretext network")?;
        Some(
            import_onnx(&b)
                .map_err(|e| RoundError::File {
                    what: "pretext network",
                    path: pretext_path.clone(),
                    message: e.to_string(),
                })?
                .0,
        )
    } else {
        None
    };
    let pretext = match pretext {
        Some(p) if p.convs != w.convs => {
            tracing::warn!(
                "{}: its encoder is not the serving model's; ignored (the round starts with fresh pretext heads)",
                pretext_path.display()
            );
            None
        }
        p => p,
    };
    Ok((id, w, pretext))
}

/// The store's good windows (newest `max` of them), z-scored per sensor, with their labels
/// mapped onto `heads` (oldest first).
pub fn gather(store: &Store, heads: &[String], max: usize) -> Result<RoundData, RoundError> {
    // (window start, sensor, samples, labels per head)
    type Gathered = (i64, String, Vec<f32>, Vec<Option<f32>>);
    let mut per_sensor: Vec<Gathered> = Vec::new();
    for sensor in store.sensors()? {
        // Oldest first; only the newest `max` of each sensor are kept in memory (a store can
        // hold far more windows than fit in RAM).
        let mut ws = std::collections::VecDeque::with_capacity(max.min(4096) + 1);
        for w in store.range(&sensor, i64::MIN, i64::MAX) {
            let Ok(w) = w else { continue }; // corrupt records are reported by `store stats`
            if w.quality != 0 {
                continue;
            }
            let labels: Vec<Option<f32>> = heads
                .iter()
                .map(|h| w.labels.iter().find(|(n, _)| n == h).map(|(_, v)| *v))
                .collect();
            ws.push_back((w.window.start_ns, sensor.clone(), w.window.samples, labels));
            if ws.len() > max {
                ws.pop_front();
            }
        }
        per_sensor.extend(ws);
    }
    per_sensor.sort_by_key(|w| w.0);
    let skip = per_sensor.len().saturating_sub(max);
    let mut kept: Vec<_> = per_sensor.into_iter().skip(skip).collect();
    // z-score per sensor over the kept windows (the training-time normalisation).
    let mut sensors: Vec<String> = kept.iter().map(|w| w.1.clone()).collect();
    sensors.sort();
    sensors.dedup();
    for s in &sensors {
        zscore_person(kept.iter_mut().filter(|w| &w.1 == s).map(|w| &mut w.2));
    }
    let mut data = RoundData {
        unlabelled: Vec::new(),
        user_labelled: Vec::new(),
    };
    for (_, _, x, labels) in kept {
        if labels.iter().any(Option::is_some) {
            data.user_labelled.push((x, labels));
        } else {
            data.unlabelled.push(x);
        }
    }
    Ok(data)
}

/// The replay pack of the serving model's base: the nearest model in its lineage (itself,
/// then its parents) whose registry folder holds a `replay.bin` — a fleet release installs
/// one — else the shipped model's `<model>.replay.bin`. So rounds after a fleet update
/// rehearse the new base's pretraining windows and labelled set, not the shipped one's.
pub fn replay_for(registry: &Registry, shipped: &Path) -> PathBuf {
    let mut id = registry.serving().ok().and_then(|(c, _)| c);
    let mut hops = 0;
    while let Some(cur) = id {
        let p = registry.model_path(&cur).with_file_name("replay.bin");
        if p.exists() {
            return p;
        }
        hops += 1;
        id = match registry.get(&cur) {
            Ok(e) if e.parent != SHIPPED && hops < 64 => Some(e.parent),
            _ => None,
        };
    }
    ReplayPack::path_for(shipped)
}

/// A staged round: its data are in `<models_dir>/work/input.bin`, its identity in
/// `work/round.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Staged {
    pub id: String,
    /// The serving model the round starts from.
    pub parent: String,
    /// Unlabelled and self-reported windows in the input.
    pub windows: usize,
    pub labelled: usize,
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RoundError {
    let path = path.to_path_buf();
    move |e: std::io::Error| RoundError::File {
        what,
        path,
        message: e.to_string(),
    }
}

/// The round's data as a file: the replay-pack codec (CRC, atomic, the store's i16
/// quantisation), the wearer's windows as its "pretext" windows and the self-reports as its
/// labelled windows.
fn input_pack(data: &RoundData, heads: &[String]) -> ReplayPack {
    ReplayPack {
        head_names: heads.to_vec(),
        pretext: data.unlabelled.clone(),
        pretext_subjects: vec!["wearer".into(); data.unlabelled.len()],
        labelled: data
            .user_labelled
            .iter()
            .map(|(w, l)| PackWindow {
                window: w.clone(),
                labels: l.clone(),
                subject: "wearer".into(),
            })
            .collect(),
        created: crate::time::rfc3339_ms(crate::time::now_ns()),
    }
}

/// Stage a round (the part that needs the store, so it runs in the gateway process): keep a
/// staged round of the same serving model as it is (it resumes with exactly the data it
/// started with), else gather the store's windows into `work/input.bin` and name the round.
/// `round.json` is written last, so a round is staged only once its input is complete.
pub fn stage(
    store: &Store,
    registry: &Registry,
    shipped: &Path,
    max_windows: usize,
) -> Result<Staged, RoundError> {
    let (parent, current, _) = serving_weights(registry, shipped)?;
    let work = work_dir(registry);
    let state_path = work.join("round.json");
    let input_path = work.join("input.bin");
    if let Some(st) = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Staged>(&b).ok())
    {
        if st.parent == parent && ReplayPack::load(&input_path).is_ok() {
            return Ok(st);
        }
        tracing::info!(round = %st.id, "discarding a staged round of another serving model (or with a damaged input)");
    }
    let _ = std::fs::remove_dir_all(&work);
    let heads = current.head_names();
    let data = gather(store, &heads, max_windows)?;
    let (windows, labelled) = (data.unlabelled.len(), data.user_labelled.len());
    if windows + labelled < 10 {
        return Err(RoundError::NotEnoughData(format!(
            "{} good windows stored; a round needs at least 10",
            windows + labelled
        )));
    }
    std::fs::create_dir_all(&work).map_err(file_err("work directory", &work))?;
    input_pack(&data, &heads).save(&input_path)?;
    let st = Staged {
        id: registry.next_id()?,
        parent,
        windows,
        labelled,
    };
    atomic_write(&state_path, &serde_json::to_vec(&st).expect("serialises"))?;
    Ok(st)
}

/// Stage and run one round in this process (see the module docs). `progress` gets
/// (stage, fraction). The gateway runs [`run_staged`] in a worker process instead.
pub fn run(
    ctx: &RoundContext,
    progress: &mut dyn FnMut(&str, f32),
    should_stop: &dyn Fn() -> Option<String>,
) -> Result<RoundReport, RoundError> {
    progress("loading", 0.0);
    stage(ctx.store, ctx.registry, &ctx.shipped, ctx.max_windows)?;
    run_staged(
        ctx.registry,
        &ctx.shipped,
        &ctx.backend,
        &ctx.round,
        progress,
        should_stop,
    )
}

/// Run the staged round to a verdict: needs no store, so it can run in its own process.
pub fn run_staged(
    registry: &Registry,
    shipped: &Path,
    backend: &Backend,
    round: &RoundConfig,
    progress: &mut dyn FnMut(&str, f32),
    should_stop: &dyn Fn() -> Option<String>,
) -> Result<RoundReport, RoundError> {
    let t0 = std::time::Instant::now();
    progress("loading", 0.02);
    let work = work_dir(registry);
    let state_path = work.join("round.json");
    let st: Staged = std::fs::read(&state_path)
        .map_err(file_err("round state", &state_path))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| RoundError::File {
                what: "round state",
                path: state_path.clone(),
                message: e.to_string(),
            })
        })?;
    let (parent, current, pretext_init) = serving_weights(registry, shipped)?;
    if parent != st.parent {
        let _ = std::fs::remove_dir_all(&work);
        return Err(RoundError::Stale(format!(
            "the serving model changed from {} to {parent} since round {} was staged",
            st.parent, st.id
        )));
    }
    let heads = current.head_names();
    let input = ReplayPack::load(&work.join("input.bin"))?;
    if input.head_names != heads {
        let _ = std::fs::remove_dir_all(&work);
        return Err(RoundError::Stale(format!(
            "staged input has heads {:?}, the serving model {heads:?}",
            input.head_names
        )));
    }
    let data = RoundData {
        unlabelled: input.pretext,
        user_labelled: input
            .labelled
            .into_iter()
            .map(|w| (w.window, w.labels))
            .collect(),
    };
    let pack = ReplayPack::load(&replay_for(registry, shipped))?;
    let (windows, labelled) = (data.unlabelled.len(), data.user_labelled.len());
    let id = st.id.clone();
    let ckpt_path = work.join("checkpoint.bin");
    let resume = if ckpt_path.exists() {
        match Checkpoint::load(&ckpt_path) {
            Ok(c) => {
                tracing::info!(round = %id, epoch = c.epoch, "resuming an interrupted retraining round");
                Some(c)
            }
            Err(e) => {
                tracing::warn!("checkpoint unusable, restarting the round: {e}");
                None
            }
        }
    } else {
        None
    };
    let resumed_from_epoch = resume.as_ref().map(|c| c.epoch);
    let epochs = round.pretext_epochs.max(1) as f32;
    let mut on_ckpt = |c: &Checkpoint| c.save(&ckpt_path);
    let mut on_progress = |p: Progress| match p {
        Progress::Pretext { epoch, of, loss } => progress(
            &format!("pretext epoch {epoch}/{of} (loss {loss:.4})"),
            0.1 + 0.7 * epoch as f32 / epochs,
        ),
        Progress::Heads => progress("fitting heads", 0.85),
        Progress::Evaluating => progress("evaluating", 0.9),
    };
    let outcome = run_round(
        &current,
        pretext_init.as_ref(),
        resume,
        &data,
        &pack,
        round,
        &mut on_ckpt,
        &mut on_progress,
        should_stop,
    )?;

    // Serving gate: the exported network must load in the serving backend and agree with
    // the training framework's forward pass.
    progress("serving gate", 0.95);
    let meta = vec![
        ("affectgate.round".to_string(), id.clone()),
        ("affectgate.parent".to_string(), parent.clone()),
    ];
    let onnx = export_onnx(&outcome.candidate, &meta, env!("CARGO_PKG_VERSION")).map_err(|e| {
        RoundError::File {
            what: "candidate export",
            path: work.clone(),
            message: e.to_string(),
        }
    })?;
    let probe: Vec<Vec<f32>> = data.unlabelled.iter().rev().take(8).cloned().collect();
    let (mut decision, mut reason) = match &outcome.decision {
        Decision::Promote => (Verdict::Promote, String::new()),
        Decision::Reject { reason } => (Verdict::Reject, reason.clone()),
    };
    let mut parity_max_abs = f32::NAN;
    match Model::load_bytes(&onnx, backend) {
        Err(e) => {
            decision = Verdict::Reject;
            reason = format!("does not load in the serving backend: {e}");
        }
        Ok(mut m) if !probe.is_empty() => {
            let flat: Vec<f32> = probe.iter().flatten().copied().collect();
            // A fused model is probed with features spanning calm to stressed.
            let nf = outcome.candidate.features.len();
            let feats: Vec<Vec<f32>> = (0..probe.len())
                .map(|i| {
                    (0..nf)
                        .map(|j| ((i * nf + j) as f32 * 0.7).sin() * 3.0)
                        .collect()
                })
                .collect();
            let served = m.run_with(&flat, &feats.concat(), probe.len());
            let trained = crate::learn::train::predict_with(&outcome.candidate, &probe, &feats);
            match served {
                Ok(s) => {
                    parity_max_abs = s
                        .values
                        .iter()
                        .flatten()
                        .zip(trained.iter().flatten())
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    if parity_max_abs.is_nan() || parity_max_abs > PARITY_TOL {
                        decision = Verdict::Reject;
                        reason = format!("serving backend disagrees with the training forward pass: max |Δ| {parity_max_abs:.2e} > {PARITY_TOL:.0e}");
                    }
                }
                Err(e) => {
                    decision = Verdict::Reject;
                    reason = format!("inference in the serving backend failed: {e}");
                }
            }
        }
        Ok(_) => {}
    }
    let promoted = decision == Verdict::Promote;

    // Register (files first, then the index), then promote.
    let report = RoundReport {
        id: id.clone(),
        parent: parent.clone(),
        promoted,
        decision,
        reason: reason.clone(),
        windows,
        labelled,
        epochs_run: outcome.epochs_run,
        resumed_from_epoch,
        before: outcome.before.clone(),
        after: outcome.after.clone(),
        parity_max_abs,
        peak_rss_mib: None,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let card = card_for(shipped, &id, &parent, &onnx, &report);
    let entry = Entry {
        id: id.clone(),
        created: crate::time::rfc3339_ms(crate::time::now_ns()),
        parent: parent.clone(),
        status: if promoted {
            ModelStatus::Candidate
        } else {
            ModelStatus::Rejected
        },
        reason: reason.clone(),
        metrics: serde_json::to_value(&report).expect("report serialises"),
        sha256: String::new(),
    };
    registry.add(entry, &onnx, &card)?;
    if let Ok(p) = export_onnx(&outcome.pretext, &[], env!("CARGO_PKG_VERSION")) {
        let path = registry.model_path(&id).with_file_name("pretext.onnx");
        if let Err(e) = std::fs::write(&path, p) {
            tracing::warn!("saving the pretext network {}: {e}", path.display());
        }
    }
    if promoted {
        registry.promote(&id)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    progress("done", 1.0);
    Ok(report)
}

/// The candidate's model card: the shipped card's contract (input, preprocessing, heads) with
/// this round's provenance and held-out results.
fn card_for(shipped: &Path, id: &str, parent: &str, onnx: &[u8], r: &RoundReport) -> String {
    let mut card = match ModelCard::load_for_model(shipped) {
        Ok(c) => c,
        Err(_) => return format!("name = {id:?}\n# shipped card unavailable\n"),
    };
    card.name = format!("{}-{id}", card.name);
    card.version = format!("{}+{id}", card.version);
    card.created = crate::time::rfc3339_ms(crate::time::now_ns());
    card.onnx = "model.onnx".into();
    card.sha256 = crate::model::sha256_hex(onnx);
    card.description = format!(
        "On-gateway retraining round {id} from {parent}: pretext (signal-transformation) training continued on {} of this gateway's stored windows plus replayed shipped pretraining windows; heads re-fitted on the shipped labelled set plus {} self-reported windows (weighted). {}",
        r.windows + r.labelled,
        r.labelled,
        card.description
    );
    card.limitations.push(format!(
        "Gate results are on small held-out sets of this gateway's own windows and held-out shipped subjects: before {:?}, after {:?}.",
        r.before.heads, r.after.heads
    ));
    toml::to_string(&card).unwrap_or_default()
}
