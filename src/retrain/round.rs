//! One retraining round as the gateway runs it, around the learning core's
//! [`run_round`](crate::learn::retrain::run_round):
//!
//! 1. **data** — the store's good-quality windows (most recent first, up to `max_windows`),
//!    z-scored per sensor (one sensor = one wearer), and the self-reported labels on them;
//! 2. **model** — the serving model (registry `current`, else the shipped one), the previous
//!    round's pretext network if there is one, and the shipped model's replay pack
//!    (`<model>.replay.bin`: a sample of its pretraining windows and its heads' labelled set);
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

use super::registry::{Entry, Registry, SHIPPED};
use crate::infer::{Backend, Model};
use crate::learn::card::ModelCard;
use crate::learn::dataset::zscore_person;
use crate::learn::onnx::{export_onnx, import_onnx, NetworkWeights};
use crate::learn::retrain::{
    run_round, Checkpoint, Decision, GateMetrics, Progress, ReplayPack, RetrainError, RoundConfig,
    RoundData,
};
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

/// What a finished round reports (also the retained MQTT status's payload core).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundReport {
    pub id: String,
    pub parent: String,
    pub promoted: bool,
    pub decision: String,
    pub reason: String,
    pub windows: usize,
    pub labelled: usize,
    pub epochs_run: usize,
    pub resumed_from_epoch: Option<usize>,
    pub before: GateMetrics,
    pub after: GateMetrics,
    pub parity_max_abs: f32,
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
}

fn work_dir(registry: &Registry) -> PathBuf {
    registry.dir().join("work")
}

#[derive(Serialize, Deserialize)]
struct WorkState {
    id: String,
    parent: String,
}

/// Load the serving network's weights: (id, weights, pretext weights of its round if any).
fn serving_weights(
    ctx: &RoundContext,
) -> Result<(String, NetworkWeights, Option<NetworkWeights>), RoundError> {
    let (current, _) = ctx.registry.serving()?;
    let (id, path) = match current {
        Some(id) => {
            let p = ctx.registry.model_path(&id);
            (id, p)
        }
        None => (SHIPPED.to_string(), ctx.shipped.clone()),
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
    let pretext_path = path.with_file_name("pretext.onnx");
    let pretext = if id != SHIPPED && pretext_path.exists() {
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

/// Run one round to a verdict (see the module docs). `progress` gets (stage, fraction).
pub fn run(
    ctx: &RoundContext,
    progress: &mut dyn FnMut(&str, f32),
    should_stop: &dyn Fn() -> Option<String>,
) -> Result<RoundReport, RoundError> {
    let t0 = std::time::Instant::now();
    progress("loading", 0.0);
    let (parent, current, pretext_init) = serving_weights(ctx)?;
    let heads = current.head_names();
    let pack_file = ReplayPack::path_for(&ctx.shipped);
    let pack = ReplayPack::load(&pack_file)?;
    let data = gather(ctx.store, &heads, ctx.max_windows)?;
    let (windows, labelled) = (data.unlabelled.len(), data.user_labelled.len());
    if windows + labelled < 10 {
        return Err(RoundError::NotEnoughData(format!(
            "{} good windows stored; a round needs at least 10",
            windows + labelled
        )));
    }

    // Resume a checkpoint of an interrupted round on the same parent; anything else is stale.
    let work = work_dir(ctx.registry);
    let state_path = work.join("round.json");
    let ckpt_path = work.join("checkpoint.bin");
    let mut resume = None;
    let id = match std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<WorkState>(&b).ok())
    {
        Some(st) if st.parent == parent => {
            match Checkpoint::load(&ckpt_path) {
                Ok(c) => {
                    tracing::info!(round = %st.id, epoch = c.epoch, "resuming an interrupted retraining round");
                    resume = Some(c);
                }
                Err(e) => tracing::warn!("checkpoint unusable, restarting the round: {e}"),
            }
            st.id
        }
        _ => {
            let _ = std::fs::remove_dir_all(&work);
            ctx.registry.next_id()?
        }
    };
    let file_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| RoundError::File {
            what,
            path,
            message: e.to_string(),
        }
    };
    std::fs::create_dir_all(&work).map_err(file_err("work directory", &work))?;
    let st = serde_json::to_vec(&WorkState {
        id: id.clone(),
        parent: parent.clone(),
    })
    .expect("serialises");
    std::fs::write(&state_path, st).map_err(file_err("round state", &state_path))?;
    let resumed_from_epoch = resume.as_ref().map(|c| c.epoch);

    let epochs = ctx.round.pretext_epochs.max(1) as f32;
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
        &ctx.round,
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
        Decision::Promote => ("promote".to_string(), String::new()),
        Decision::Reject { reason } => ("reject".to_string(), reason.clone()),
    };
    let mut parity_max_abs = f32::NAN;
    match Model::load_bytes(&onnx, &ctx.backend) {
        Err(e) => {
            decision = "reject".into();
            reason = format!("does not load in the serving backend: {e}");
        }
        Ok(mut m) if !probe.is_empty() => {
            let flat: Vec<f32> = probe.iter().flatten().copied().collect();
            let served = m.run(&flat, probe.len());
            let trained = crate::learn::train::predict(&outcome.candidate, &probe);
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
                        decision = "reject".into();
                        reason = format!("serving backend disagrees with the training forward pass: max |Δ| {parity_max_abs:.2e} > {PARITY_TOL:.0e}");
                    }
                }
                Err(e) => {
                    decision = "reject".into();
                    reason = format!("inference in the serving backend failed: {e}");
                }
            }
        }
        Ok(_) => {}
    }
    let promoted = decision == "promote";

    // Register (files first, then the index), then promote.
    let report = RoundReport {
        id: id.clone(),
        parent: parent.clone(),
        promoted,
        decision: decision.clone(),
        reason: reason.clone(),
        windows,
        labelled,
        epochs_run: outcome.epochs_run,
        resumed_from_epoch,
        before: outcome.before.clone(),
        after: outcome.after.clone(),
        parity_max_abs,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let card = card_for(ctx, &id, &parent, &onnx, &report);
    let entry = Entry {
        id: id.clone(),
        created: crate::mqtt::rfc3339_ms(crate::source::live::now_ns()),
        parent: parent.clone(),
        status: if promoted { "candidate" } else { "rejected" }.into(),
        reason: reason.clone(),
        metrics: serde_json::to_value(&report).expect("report serialises"),
        sha256: String::new(),
    };
    ctx.registry.add(entry, &onnx, &card)?;
    if let Ok(p) = export_onnx(&outcome.pretext, &[], env!("CARGO_PKG_VERSION")) {
        let path = ctx.registry.model_path(&id).with_file_name("pretext.onnx");
        if let Err(e) = std::fs::write(&path, p) {
            tracing::warn!("saving the pretext network {}: {e}", path.display());
        }
    }
    if promoted {
        ctx.registry.promote(&id)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    progress("done", 1.0);
    Ok(report)
}

/// The candidate's model card: the shipped card's contract (input, preprocessing, heads) with
/// this round's provenance and held-out results.
fn card_for(ctx: &RoundContext, id: &str, parent: &str, onnx: &[u8], r: &RoundReport) -> String {
    let mut card = match ModelCard::load_for_model(&ctx.shipped) {
        Ok(c) => c,
        Err(_) => return format!("name = {id:?}\n# shipped card unavailable\n"),
    };
    card.name = format!("{}-{id}", card.name);
    card.version = format!("{}+{id}", card.version);
    card.created = crate::mqtt::rfc3339_ms(crate::source::live::now_ns());
    card.onnx = "model.onnx".into();
    card.sha256 = crate::learn::onnx::sha256_hex(onnx);
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
