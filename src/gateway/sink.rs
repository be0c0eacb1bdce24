//! The sink: stores each scored window and its outbox entry, flushes once per group, then
//! lets the MQTT link publish (stored before announced).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::health::{StoreState, StoreStatus};
use super::*;

pub(super) struct SinkReport {
    pub(super) published: u64,
    /// Why the store was failing when the sink ended (the run then ends non-zero).
    pub(super) store_problem: Option<String>,
    /// sensor → (scored, flagged)
    pub(super) per_sensor: BTreeMap<String, (u64, u64)>,
}

/// The MQTT state message of a scored window (described against its sensor's wearer
/// baseline, if it has one yet; `None`: calibrating).
pub fn state_message(sw: &ScoredWindow, heads: &[String]) -> StateMessage {
    let w = &sw.w;
    let baseline = w.baseline.as_ref();
    let mut scores: BTreeMap<String, Option<f32>> =
        heads.iter().map(|h| (h.clone(), None)).collect();
    for (h, v) in &sw.scores {
        scores.insert(h.clone(), Some(*v));
    }
    let relative = match (baseline, w.hrv, w.quality.is_good()) {
        (Some(b), Some(h), true) => Some(b.relative([h.hr_bpm, h.rmssd_ms, h.sdnn_ms])),
        _ => None,
    };
    // A window that failed the quality gate publishes no HR/HRV (`null`): Home Assistant
    // keeps long-term statistics of these entities, and an artefact's 190 bpm would stay in
    // them for good. The store keeps the values, flagged, for whoever wants to look.
    let hrv = w.hrv.filter(|_| w.quality.is_good());
    StateMessage {
        time: rfc3339_ms(w.window.end_ns()),
        window_start_ms: w.window.start_ns.div_euclid(1_000_000),
        window: w.window.index,
        sensor: w.sensor.to_string(),
        scores,
        hr_bpm: hrv.map(|h| h.hr_bpm as f32),
        rmssd_ms: hrv.map(|h| h.rmssd_ms as f32),
        sdnn_ms: hrv.map(|h| h.sdnn_ms as f32),
        rr_corrected: hrv.map(|h| h.corrected_share as f32),
        calibrating: baseline.is_none(),
        hr_relative: relative.map(|r| r[0] as f32),
        rmssd_relative: relative.map(|r| r[1] as f32),
        sdnn_relative: relative.map(|r| r[2] as f32),
        quality: w.quality.label(),
        model: sw.model.to_string(),
    }
}

pub(super) async fn sink_task(
    mut rx: mpsc::Receiver<ScoredWindow>,
    store: Arc<Store>,
    stop: CancellationToken,
    outbox: crate::store::outbox::Outbox,
    link: Arc<MqttLink>,
    heads: Vec<String>,
    observer: Option<mpsc::UnboundedSender<Observed>>,
) -> SinkReport {
    let mut rep = SinkReport {
        published: 0,
        store_problem: None,
        per_sensor: BTreeMap::new(),
    };
    let mut group: Vec<ScoredWindow> = Vec::new();
    // A write or flush failure (a full disk) is said once (see below).
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut last_seq = 0u64;
        let mut write_failed: Option<StoreError> = None;
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
            let msg = state_message(sw, &heads);
            // Stored before announced: a window that could not be stored is not announced.
            if let Err(e) = store.put(&rec) {
                tracing::error!(sensor = %rec.sensor, "storing window {} failed (not announced): {e}", rec.window.index);
                write_failed = Some(e);
            } else {
                let payload = serde_json::to_vec(&msg).expect("state message serialises");
                match outbox.push(&link.topics().state(&msg.sensor), &payload) {
                    Ok(seq) => {
                        rep.published += 1;
                        last_seq = seq;
                    }
                    Err(e) => {
                        tracing::error!(sensor = %msg.sensor, "queueing the state message failed: {e}");
                        write_failed = Some(e);
                    }
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
                // Only now may the link publish this group's messages.
                Ok(Ok(_)) => outbox.mark_durable(last_seq),
                Ok(Err(e)) => {
                    tracing::error!("flushing the store failed (this group is not announced until a later flush succeeds): {e}");
                    write_failed = Some(e);
                }
                Err(e) => tracing::error!("flushing the store failed: {e}"),
            }
        }
        // A store that fails a write stops the gateway: sled keeps the first I/O error of
        // its write path and fails every later operation with it, so waiting for space to
        // return in this process is futile. The run ends non-zero, a service manager restarts
        // it, and the restarted gateway stores and announces again once there is room. Damage
        // (sled reports corruption) additionally marks the store, so the next start moves it
        // aside and salvages it. Either is said once, on the error topic and (retained) on
        // the store topic.
        match (write_failed, failing) {
            (Some(e), false) => {
                failing = true;
                let (state, detail) = match &e {
                    StoreError::Damaged { reason, .. } => {
                        if let Err(m) = store.mark_damaged(reason) {
                            tracing::error!("could not mark the store as damaged: {m}");
                        }
                        (StoreState::Damaged, format!(
                            "the window store is damaged ({reason}): the gateway stops; its next \
                             start moves the store aside, starts an empty one and salvages the windows"
                        ))
                    }
                    _ => (StoreState::WriteFailing, format!(
                        "the window store cannot be written ({e}): windows are neither stored nor \
                         announced (is the disk full?); the gateway stops, and once restarted \
                         (e.g. by its service manager) stores and announces again when there is room"
                    )),
                };
                tracing::error!("{detail}");
                let msg = crate::mqtt::inputs::error_json(None, None, &detail);
                link.send(link.topics().error(), msg.into_bytes());
                StoreStatus::new(state, detail.clone()).publish(&link);
                rep.store_problem = Some(detail);
                stop.cancel();
            }
            (None, true) if rep.store_problem.is_some() => {
                // A group stored after the failure: nothing was sticky after all.
                failing = false;
                tracing::info!("the window store can be written again");
                StoreStatus::new(StoreState::Ok, "windows are stored and announced").publish(&link);
                rep.store_problem = None;
            }
            _ => {}
        }
        link.wake();
    }
    rep
}
