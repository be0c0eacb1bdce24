//! The sink: stores each scored window and its outbox entry, flushes once per group, then
//! lets the MQTT link publish (stored before announced).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::*;

pub(super) struct SinkReport {
    pub(super) published: u64,
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
    StateMessage {
        time: rfc3339_ms(w.window.end_ns()),
        window_start_ms: w.window.start_ns.div_euclid(1_000_000),
        window: w.window.index,
        sensor: w.sensor.to_string(),
        scores,
        hr_bpm: w.hrv.map(|h| h.hr_bpm as f32),
        rmssd_ms: w.hrv.map(|h| h.rmssd_ms as f32),
        sdnn_ms: w.hrv.map(|h| h.sdnn_ms as f32),
        rr_corrected: w.hrv.map(|h| h.corrected_share as f32),
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
    // A write or flush failure (a full disk) is said once on the error topic per streak.
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut last_seq = 0u64;
        let mut write_failed: Option<String> = None;
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
                write_failed = Some(e.to_string());
            } else {
                let payload = serde_json::to_vec(&msg).expect("state message serialises");
                match outbox.push(&link.topics().state(&msg.sensor), &payload) {
                    Ok(seq) => {
                        rep.published += 1;
                        last_seq = seq;
                    }
                    Err(e) => {
                        tracing::error!(sensor = %msg.sensor, "queueing the state message failed: {e}");
                        write_failed = Some(e.to_string());
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
                    write_failed = Some(e.to_string());
                }
                Err(e) => tracing::error!("flushing the store failed: {e}"),
            }
        }
        match (write_failed, failing) {
            (Some(e), false) => {
                failing = true;
                let msg = crate::mqtt::inputs::error_json(None, None, &format!(
                    "the window store cannot be written ({e}): windows are neither stored nor announced until it can (is the disk full?)"
                ));
                link.send(link.topics().error(), msg.into_bytes());
            }
            (None, true) => {
                failing = false;
                tracing::info!("the window store can be written again");
            }
            _ => {}
        }
        link.wake();
    }
    rep
}
