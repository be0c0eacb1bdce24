//! Ingest: one task per sensor runs its source and DSP pipeline, describes each finished
//! window against its wearer's baseline and hands it to the scorer; heart-rate-only sensors
//! publish their summaries directly.
//!
//! The wearer baseline lives here, before the scorer, because a fused model reads the
//! wearer-relative features as an input: the scorer must know them when it runs the model.
//!
//! [`wait_sensors`] watches the sensors end. A source returns an error only when it can never
//! deliver again (a recording that cannot be read, no Bluetooth adapter; a strap out of range
//! is retried inside the source for ever), and a DSP task only when the signal cannot be
//! processed at all, so a sensor that ends with an error has failed for good: that is said
//! when it happens, on the log and the error topic, not only in the report at exit. When
//! every configured sensor has failed, nothing can produce data any more: the run ends
//! (shut down in order like any other end) and the caller exits non-zero.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use super::scorer;
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

// One argument per collaborator, as in `control::input_task`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn sensor_task(
    mut pipe: SensorPipeline,
    mut rx: mpsc::Receiver<SourceEvent>,
    tx: mpsc::Sender<ProcessedWindow>,
    link: Arc<MqttLink>,
    hr: HrPublisher,
    mut wearer: WearerState,
    announcer: Option<Arc<Announcer>>,
    stop: CancellationToken,
) -> SensorReport {
    let avail = link.topics().availability(pipe.sensor());
    let live = Live::new(&link, pipe.sensor());
    let ctx = Ctx {
        link: &link,
        avail: &avail,
        live: &live,
        hr: &hr,
        announcer: announcer.as_deref(),
    };
    let rep = sensor_loop(&mut pipe, &mut rx, &tx, &ctx, &mut wearer, &stop).await;
    link.retain(avail, b"offline".to_vec());
    live.set(&link, false);
    rep
}

/// What a sensor loop publishes through: the link, the strap's availability and `live`
/// topics, heart-rate summaries, and (discovery on) the device re-announcement.
pub(super) struct Ctx<'a> {
    link: &'a MqttLink,
    avail: &'a str,
    live: &'a Live,
    hr: &'a HrPublisher,
    announcer: Option<&'a Announcer>,
}

/// The strap's retained `live` topic: `offline` from the start of a run (and at every
/// disconnect) until a window of the current connection has been handed to the scorer (or a
/// heart-rate summary queued), then `online`. Home Assistant's per-window entities are
/// available only while it is `online`, so after a restart or a reconnect they show
/// "unavailable", not the last value of the previous run or connection as if it were
/// current. (The window is stored and announced a few milliseconds after it is handed over.)
pub(super) struct Live {
    topic: String,
    on: std::sync::atomic::AtomicBool,
}

impl Live {
    fn new(link: &MqttLink, sensor: &str) -> Self {
        let live = Live {
            topic: link.topics().live(sensor),
            on: std::sync::atomic::AtomicBool::new(true),
        };
        live.set(link, false);
        live
    }

    fn set(&self, link: &MqttLink, on: bool) {
        if self.on.swap(on, std::sync::atomic::Ordering::Relaxed) != on {
            let p: &[u8] = if on { b"online" } else { b"offline" };
            link.retain(self.topic.clone(), p.to_vec());
        }
    }
}

/// How long after a stop a sensor task keeps handing windows it has cut to the scorer.
/// A gateway that keeps up hands over its last window in milliseconds. One far behind its
/// sensors holds windows in every sensor task (a paced source that was held back catches up
/// in one block of many seconds): 10 000 synthetic sensors held 25 000 at the stop, and
/// storing them all took 110 s. What is not handed over by then is dropped — never stored,
/// never announced — and counted ([`SensorReport::dropped_at_stop`], logged once).
/// With the scorer's own grace ([`scorer::SHUTDOWN_SCORING`]) and the MQTT close (≤ 7 s),
/// this keeps a stop within systemd's patience whatever the load.
pub(super) const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_secs(8);

/// Hand a window to the scorer: `Ok(true)` when handed over, `Ok(false)` when the stop's
/// drain budget ran out first, `Err` when the scorer is gone.
async fn hand_over(
    tx: &mpsc::Sender<ProcessedWindow>,
    w: ProcessedWindow,
    stop: &CancellationToken,
    stopping: &mut Option<tokio::time::Instant>,
) -> Result<bool, ()> {
    loop {
        let deadline = stopping.map(|t| t + DRAIN_BUDGET);
        tokio::select! {
            permit = tx.reserve() => {
                return match permit {
                    Ok(p) => {
                        p.send(w);
                        Ok(true)
                    }
                    Err(_) => Err(()),
                };
            }
            _ = stop.cancelled(), if stopping.is_none() => {
                *stopping = Some(tokio::time::Instant::now());
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                return Ok(false);
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// A stopping run drains what its sources had queued (the last seconds of signal may
/// complete a window), but not for longer than the scorer scores after a stop
/// ([`scorer::SHUTDOWN_SCORING`]); queued events after that are left unprocessed. Windows
/// already cut are handed over for [`DRAIN_BUDGET`].
pub(super) async fn sensor_loop(
    pipe: &mut SensorPipeline,
    rx: &mut mpsc::Receiver<SourceEvent>,
    tx: &mpsc::Sender<ProcessedWindow>,
    ctx: &Ctx<'_>,
    wearer: &mut WearerState,
    stop: &CancellationToken,
) -> SensorReport {
    let (link, avail, live, hr) = (ctx.link, ctx.avail, ctx.live, ctx.hr);
    let mut rep = SensorReport::default();
    let mut out = Vec::new();
    let mut beats = BeatSummary::new(hr.period_ns);
    let mut stopping: Option<tokio::time::Instant> = None;
    let mut dropped = 0u64;
    while let Some(ev) = rx.recv().await {
        if stop.is_cancelled() {
            let since = *stopping.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= scorer::SHUTDOWN_SCORING {
                dropped += 1;
                continue;
            }
        }
        match ev {
            SourceEvent::Beats(b) => {
                if let Some(s) = beats.push(&b) {
                    rep.hr_summaries += 1;
                    hr.publish(link, pipe.sensor(), &s);
                    live.set(link, true);
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
            SourceEvent::Identified(info) => {
                if let Some(announcer) = ctx.announcer {
                    announcer.identified(link, pipe.sensor(), &info);
                }
            }
            SourceEvent::Connected => {
                tracing::info!(sensor = %pipe.sensor(), "sensor connected");
                link.retain(avail.to_string(), b"online".to_vec());
            }
            SourceEvent::Disconnected { reason } => {
                tracing::warn!(sensor = %pipe.sensor(), reason, "sensor disconnected");
                link.retain(avail.to_string(), b"offline".to_vec());
                live.set(link, false);
                pipe.gap();
                beats.gap();
            }
            SourceEvent::End => pipe.finish(&mut out),
        }
        for mut w in out.drain(..) {
            wearer.describe(&mut w);
            rep.windows += 1;
            match hand_over(tx, w, stop, &mut stopping).await {
                Ok(true) => live.set(link, true),
                Ok(false) => rep.dropped_at_stop += 1,
                Err(()) => return rep,
            }
        }
    }
    if dropped > 0 {
        tracing::debug!(sensor = %pipe.sensor(), dropped, "shutdown: queued source events left unprocessed");
    }
    rep
}

/// A running sensor: its source task and its DSP task.
pub(super) struct RunningSensor {
    pub(super) id: String,
    pub(super) source: JoinHandle<Result<(), SourceError>>,
    pub(super) dsp: JoinHandle<SensorReport>,
}

/// What a sensor's two tasks ended with, as one report.
fn sensor_report(
    src: Result<Result<(), SourceError>, JoinError>,
    dsp: Result<SensorReport, JoinError>,
) -> SensorReport {
    let mut rep = dsp.unwrap_or_else(|e| SensorReport {
        error: Some(format!("sensor task panicked: {e}")),
        ..Default::default()
    });
    match src {
        Ok(Ok(())) | Ok(Err(SourceError::Closed { .. })) => {}
        Ok(Err(e)) => rep.error = Some(e.to_string()),
        Err(e) => rep.error = Some(format!("source task panicked: {e}")),
    }
    rep
}

/// Wait until every sensor has ended, in whatever order they do (all at once: a shutdown of
/// thousands of sensors must not join them one after the other), and return their reports.
/// A failure is said when it happens (see the module docs); so is the end of the last
/// working sensor when all have failed.
pub(super) async fn wait_sensors(
    sensors: Vec<RunningSensor>,
    link: &MqttLink,
) -> BTreeMap<String, SensorReport> {
    let total = sensors.len();
    let mut running: FuturesUnordered<_> = sensors
        .into_iter()
        .map(|s| async move {
            // The source ends first (its queue closes), then the DSP task drains it.
            let src = s.source.await;
            let dsp = s.dsp.await;
            (s.id, sensor_report(src, dsp))
        })
        .collect();
    let mut reports = BTreeMap::new();
    let mut failed = 0usize;
    while let Some((id, rep)) = running.next().await {
        if let Some(e) = &rep.error {
            failed += 1;
            let left = total - reports.len() - 1;
            tracing::error!(sensor = %id, "sensor failed and stopped: {e}");
            let msg = match left {
                0 => format!("{e}. This sensor has stopped."),
                n => format!("{e}. This sensor has stopped; {n} other(s) still run."),
            };
            link.send(
                link.topics().error(),
                inputs::error_json(None, None, &msg).into_bytes(),
            );
        }
        reports.insert(id, rep);
    }
    let dropped: u64 = reports
        .values()
        .map(|r: &SensorReport| r.dropped_at_stop)
        .sum();
    if dropped > 0 {
        tracing::warn!(
            windows = dropped,
            "shutdown: windows cut but not handed over within {} s of the stop were dropped, not stored (this gateway has more sensors than it keeps up with)",
            DRAIN_BUDGET.as_secs()
        );
    }
    if total > 0 && failed == total {
        let msg = all_failed_message(&reports);
        tracing::error!("{msg}");
        link.send(
            link.topics().error(),
            inputs::error_json(None, None, &msg).into_bytes(),
        );
    }
    reports
}

impl RunReport {
    /// `sensor: error` of every sensor that failed.
    pub fn failures(&self) -> Vec<String> {
        self.sensors
            .iter()
            .filter_map(|(id, r)| r.error.as_ref().map(|e| format!("{id}: {e}")))
            .collect()
    }

    /// Every configured sensor failed for good: nothing could produce data, the run ended
    /// by itself, and restarting the same configuration would fail the same way.
    pub fn all_sensors_failed(&self) -> bool {
        !self.sensors.is_empty() && self.sensors.values().all(|r| r.error.is_some())
    }
}

/// What the gateway says when every configured sensor has failed.
fn all_failed_message(reports: &BTreeMap<String, SensorReport>) -> String {
    let list: Vec<String> = reports
        .iter()
        .filter_map(|(id, r)| r.error.as_ref().map(|e| format!("{id}: {e}")))
        .collect();
    format!(
        "every configured sensor has failed ({}), so nothing can produce data: the gateway stops. Fix what each error names (a recording's path, the Bluetooth adapter, the sensor's settings) and start it again. {}",
        list.len(),
        list.join(" | ")
    )
}
