//! The scorer thread: batches windows across sensors through the serving model, and swaps
//! in a model the registry promotes between two batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::sensor::ProcessedWindow;
use super::*;

/// The registry's current model, loaded, with its version and id; `None` when the shipped
/// model serves (nothing promoted) or the promoted one cannot be loaded (logged).
pub(super) async fn load_registered(
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

pub(super) async fn watch_registry(
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
        if let Err(e) = crate::model::check_feature_names(model.feature_names()) {
            tracing::error!(model = %want, "not swapping in the registry's model: {e}");
            serving = want;
            continue;
        }
        tracing::info!(model = %want, version = %version, "registry changed: swapping the serving model");
        if swap.send((model, version)).is_err() {
            return;
        }
        serving = want;
    }
}

/// A window's [`WEARER_FEATURES`](crate::model::WEARER_FEATURES) for a fused model: its HR,
/// RMSSD and SDNN relative to the wearer's baseline, or 0 ("at the wearer's usual") while the
/// wearer is still calibrating (the state message says so).
pub(super) fn wearer_features(w: &ProcessedWindow) -> [f32; 3] {
    match (&w.baseline, w.hrv) {
        (Some(b), Some(h)) => b
            .relative([h.hr_bpm, h.rmssd_ms, h.sdnn_ms])
            .map(|v| v as f32),
        _ => [0.0; 3],
    }
}

/// The scorer thread. New models arrive on `swap` already loaded; one is taken only between
/// batches, so a window is scored entirely by one model and none is dropped by a swap.
pub(super) fn scorer_loop(
    mut model: Model,
    mut version: Arc<str>,
    mut rx: mpsc::Receiver<ProcessedWindow>,
    tx: mpsc::Sender<ScoredWindow>,
    swap: std::sync::mpsc::Receiver<(Model, String)>,
) {
    let mut heads: Vec<String> = model.head_names().to_vec();
    let mut batch: Vec<ProcessedWindow> = Vec::with_capacity(MAX_BATCH);
    let mut input: Vec<f32> = Vec::with_capacity(MAX_BATCH * WINDOW_LEN);
    let mut features: Vec<f32> = Vec::new();
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
        features.clear();
        let f = model.feature_names().len();
        let mut idx = Vec::new();
        for (i, w) in batch.iter().enumerate() {
            if let Some(x) = &w.normalized {
                input.extend_from_slice(x);
                if f > 0 {
                    features.extend(wearer_features(w));
                }
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
            let fchunk = &features[done * f..(done + n) * f];
            match model.run_with(chunk, fchunk, n) {
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
