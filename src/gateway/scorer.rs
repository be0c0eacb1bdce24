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
    announce: tokio::sync::watch::Sender<super::serving::Serving>,
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
        let now = super::serving::Serving {
            id: want.clone(),
            version: version.clone(),
            heads: model.head_names().to_vec(),
        };
        if swap.send((model, version)).is_err() {
            return;
        }
        // Announced once handed to the scorer (it serves from the next window on).
        let _ = announce.send(now);
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

/// How long the scorer keeps scoring once the run is stopping. Shutdown drains every window
/// already cut through the scorer, the sink and the store, so nothing measured is lost; but a
/// gateway far beyond what its scorer keeps up with (10 000 configured sensors: a window
/// pending in front of the scorer for almost every one) had minutes of inference to drain
/// and ignored SIGTERM for over four minutes (docs/RELIABILITY.md §6). After this grace the
/// rest pass through unscored: stored and announced like any window (HR/HRV, quality),
/// their scores `null`, counted and logged. A gateway that keeps up drains in milliseconds
/// and never gets here.
pub const SHUTDOWN_SCORING: Duration = Duration::from_secs(2);

/// Most windows one inference call takes. Both backends lower each 1-D convolution to a
/// matrix product over an im2col copy of its input — 10.5 MB per window at the second layer
/// (32 channels × 32 taps × 2560 samples × 4 B) — so a call of 32 windows (a full batch, which
/// a busy gateway makes all the time) allocated ≈ 335 MB of scratch at once: 64 replayed
/// sensors swung the gateway between 370 and 850 MiB RSS (docs/RELIABILITY.md §6). Calls of
/// 32 buy tract nothing (13.8 ms per window at 1, 15.0 at 32, BENCHMARKS.md) and ONNX Runtime
/// some (5.9 → 4.1 ms); 4 keep the scratch near 42 MB. The scorer still *takes* up to
/// [`MAX_BATCH`] windows at a time; only the calls are smaller.
pub const INFER_CHUNK: usize = 4;

/// Windows in the next inference call when `left` are waiting: the largest power of two not
/// above `left` or [`INFER_CHUNK`].
pub(super) fn infer_chunk(left: usize) -> usize {
    let pow2 = 1usize << (usize::BITS - 1 - left.max(1).leading_zeros());
    pow2.min(INFER_CHUNK)
}

/// The scorer thread. New models arrive on `swap` already loaded; one is taken only between
/// batches, so a window is scored entirely by one model and none is dropped by a swap.
pub(super) fn scorer_loop(
    mut model: Model,
    mut version: Arc<str>,
    mut rx: mpsc::Receiver<ProcessedWindow>,
    tx: mpsc::Sender<ScoredWindow>,
    swap: std::sync::mpsc::Receiver<(Model, String)>,
    health: Arc<crate::fleet::agent::Health>,
    stop: CancellationToken,
) {
    // When the scorer first saw the run stopping, and what it passed on unscored since
    // (see SHUTDOWN_SCORING).
    let mut stopping: Option<std::time::Instant> = None;
    let mut unscored = 0u64;
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
        if stop.is_cancelled() {
            let since = *stopping.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= SHUTDOWN_SCORING {
                unscored += batch.len() as u64;
                for w in batch.drain(..) {
                    let sw = ScoredWindow {
                        w,
                        scores: Vec::new(),
                        model: version.clone(),
                    };
                    if tx.blocking_send(sw).is_err() {
                        return;
                    }
                }
                continue;
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
        // Run in power-of-two chunks of at most INFER_CHUNK windows (27 = 4+4+…+2+1): tract
        // plans and caches per input shape, so arbitrary sizes would keep up to 32 plans
        // alive; this keeps at most 3, with no padding wasted.
        let mut done = 0usize;
        while done < idx.len() {
            let n = infer_chunk(idx.len() - done);
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
            // Health by model version (the fleet agent's health window): a window counts as
            // failed when inference failed or gave a non-finite output. One lock per chunk.
            let ok = (0..n)
                .filter(|k| {
                    let s = &scores[idx[done + k]];
                    !s.is_empty() && s.iter().all(|(_, v)| v.is_finite())
                })
                .count() as u64;
            health.record(&version, ok, n as u64 - ok);
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
    if unscored > 0 {
        tracing::warn!(
            unscored,
            "shutdown: windows still waiting {} s after the stop were stored and announced without scores (this gateway has more sensors than its scorer keeps up with)",
            SHUTDOWN_SCORING.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call is a power of two of at most INFER_CHUNK windows and all windows are
    /// scored: the scratch one call allocates is bounded, whatever the batch.
    #[test]
    fn inference_calls_are_bounded_powers_of_two() {
        let mut shapes = std::collections::BTreeSet::new();
        for total in 1..=MAX_BATCH {
            let (mut done, mut calls) = (0, 0);
            while done < total {
                let n = infer_chunk(total - done);
                assert!(n.is_power_of_two() && n <= INFER_CHUNK, "{total}: {n}");
                shapes.insert(n);
                done += n;
                calls += 1;
            }
            assert_eq!(done, total);
            assert!(
                calls <= total.div_ceil(INFER_CHUNK) + 2,
                "{total}: {calls} calls"
            );
        }
        assert_eq!(shapes.len(), INFER_CHUNK.trailing_zeros() as usize + 1);
    }
}
