//! Ingest: one task per sensor runs its source and DSP pipeline, describes each finished
//! window against its wearer's baseline and hands it to the scorer; heart-rate-only sensors
//! publish their summaries directly.
//!
//! The wearer baseline lives here, before the scorer, because a fused model reads the
//! wearer-relative features as an input: the scorer must know them when it runs the model.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::sensor::{BeatSummary, HrSummary, ProcessedWindow, SensorPipeline};
use super::*;
use crate::dsp::{BaselineConfig, BaselineTracker};

/// Where heart-rate-only summaries go (they bypass the scorer: there is nothing to score).
#[derive(Clone)]
pub(super) struct HrPublisher {
    pub(super) outbox: crate::store::outbox::Outbox,
    pub(super) heads: Vec<String>,
    pub(super) period_ns: i64,
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
            rr_corrected: s.hrv.map(|h| h.corrected_share as f32),
            // Heart-rate-only straps have no ECG windows to build a baseline from.
            calibrating: false,
            hr_relative: None,
            rmssd_relative: None,
            sdnn_relative: None,
            quality: s.quality.to_string(),
            model: "none".into(),
        };
        let payload = serde_json::to_vec(&msg).expect("state message serialises");
        // Made durable before it may be published, like every state message.
        match self
            .outbox
            .push(&link.topics().state(sensor), &payload)
            .and_then(|_| self.outbox.flush())
        {
            Ok(()) => link.wake(),
            Err(e) => tracing::error!(sensor, "queueing the heart-rate message failed: {e}"),
        }
    }
}

/// One sensor's wearer baseline, restored from the store's meta (so a restart does not start
/// calibrating again) and saved back whenever it is recomputed.
pub(super) struct WearerState {
    tracker: BaselineTracker,
    store: Arc<Store>,
    key: String,
}

impl WearerState {
    pub(super) fn restore(store: Arc<Store>, sensor: &str, cfg: BaselineConfig) -> Self {
        let key = format!("baseline/{sensor}");
        let saved = match store.meta_get(&key) {
            Ok(v) => v.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(
                    sensor,
                    "reading the wearer baseline failed ({e}); calibrating again"
                );
                Vec::new()
            }
        };
        WearerState {
            tracker: BaselineTracker::from_bytes(cfg, &saved),
            store,
            key,
        }
    }

    /// Add a good window's physiology and set the window's baseline.
    fn describe(&mut self, w: &mut ProcessedWindow) {
        if let (Some(h), true) = (w.hrv, w.quality.is_good()) {
            self.tracker
                .push(w.window.start_ns, [h.hr_bpm, h.rmssd_ms, h.sdnn_ms]);
            if self.tracker.just_updated() {
                if let Err(e) = self.store.meta_put(&self.key, &self.tracker.to_bytes()) {
                    tracing::warn!(sensor = %w.sensor, "saving the wearer baseline failed: {e}");
                }
            }
        }
        w.baseline = self.tracker.baseline().copied();
    }
}

pub(super) async fn sensor_task(
    mut pipe: SensorPipeline,
    mut rx: mpsc::Receiver<SourceEvent>,
    tx: mpsc::Sender<ProcessedWindow>,
    link: Arc<MqttLink>,
    hr: HrPublisher,
    mut wearer: WearerState,
) -> SensorReport {
    let avail = link.topics().availability(pipe.sensor());
    let rep = sensor_loop(&mut pipe, &mut rx, &tx, &link, &avail, &hr, &mut wearer).await;
    link.retain(avail, b"offline".to_vec());
    rep
}

pub(super) async fn sensor_loop(
    pipe: &mut SensorPipeline,
    rx: &mut mpsc::Receiver<SourceEvent>,
    tx: &mpsc::Sender<ProcessedWindow>,
    link: &MqttLink,
    avail: &str,
    hr: &HrPublisher,
    wearer: &mut WearerState,
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
        for mut w in out.drain(..) {
            wearer.describe(&mut w);
            rep.windows += 1;
            if tx.send(w).await.is_err() {
                return rep;
            }
        }
    }
    rep
}
