//! The two live sources that need no hardware, both behind [`super::Source`], and the
//! config → source mapping ([`from_config`]) that also builds BLE sources ([`super::ble`]):
//!
//! * [`SyntheticSource`] — ECGSYN ([`super::synthetic`]) paced in real time, 250 ms blocks.
//!   Block times come from the sample count (`start + n / fs`), not from the wall clock at
//!   send time, so a busy scheduler delays blocks but never distorts their timestamps; the lag
//!   between the wall clock and the last sample is what the load benchmark reports.
//! * [`ReplaySource`] — any recording the learning core reads (EDF, WFDB, CSV incl. the Polar
//!   logger layout), paced in real time (250 ms blocks) or as fast as the pipeline accepts
//!   (1 s blocks, backpressure from the bounded channel), optionally looping. The recording
//!   is re-anchored to the gateway clock at start; gaps in a CSV's own timestamps and every
//!   loop restart are flagged as gaps so no window spans them.
//!
//! Replay memory: a recording is held whole while it plays (the Polar file: 78 000 samples,
//! 0.9 MiB as samples and timestamps). Sensors replaying the same file share one copy
//! ([`shared_recording`]), and files are read one at a time: a CSV's parse holds its text and
//! columns at several times the size of the result, and 64 sensors used to parse 64 copies at
//! once on 64 blocking threads (≈ 500 MiB RSS during start).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::time::now_ns;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ble::BleSource;
use super::config::{SensorConfig, SourceConfig};
use super::file::{read_recording, ReadError, Recording};
use super::synthetic::{SyntheticConfig, SyntheticEcg};
use super::{Block, Source, SourceError, SourceEvent, SourceFuture};

/// Build the source a sensor's config describes (paths as given: `Config::load` has resolved
/// relative ones against the config file's directory).
pub fn from_config(sensor: &SensorConfig) -> Box<dyn Source> {
    match &sensor.source {
        SourceConfig::Synthetic { ecg } => Box::new(SyntheticSource::new(&sensor.id, ecg.clone())),
        SourceConfig::Replay {
            path,
            signal,
            realtime,
            looped,
        } => Box::new(ReplaySource {
            sensor: sensor.id.clone(),
            path: path.clone(),
            signal: signal.clone(),
            realtime: *realtime,
            looped: *looped,
            start_ns: None,
        }),
        SourceConfig::Ble { ble } => Box::new(BleSource::new(&sensor.id, ble.clone())),
    }
}

/// Send or report that the pipeline is gone.
async fn send(
    out: &mpsc::Sender<SourceEvent>,
    ev: SourceEvent,
    sensor: &str,
) -> Result<(), SourceError> {
    out.send(ev).await.map_err(|_| SourceError::Closed {
        sensor: sensor.to_string(),
    })
}

/// Real-time block length.
const REALTIME_BLOCK: Duration = Duration::from_millis(250);

/// ECGSYN in real time.
pub struct SyntheticSource {
    sensor: String,
    cfg: SyntheticConfig,
    /// Start time override (tests, benchmarks); default: wall clock at start.
    start_ns: Option<i64>,
    /// Wait this long before the first sample (load tests: real straps are not in phase).
    delay: Duration,
}

impl SyntheticSource {
    pub fn new(sensor: &str, cfg: SyntheticConfig) -> Self {
        Self {
            sensor: sensor.to_string(),
            cfg,
            start_ns: None,
            delay: Duration::ZERO,
        }
    }

    /// Start producing after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Time the first sample as `t0_ns` instead of the wall clock at start.
    pub fn with_start_ns(mut self, t0_ns: i64) -> Self {
        self.start_ns = Some(t0_ns);
        self
    }
}

impl Source for SyntheticSource {
    fn sensor_id(&self) -> &str {
        &self.sensor
    }

    fn run(
        self: Box<Self>,
        out: mpsc::Sender<SourceEvent>,
        stop: CancellationToken,
    ) -> SourceFuture {
        Box::pin(async move {
            let sensor = self.sensor;
            let mut ecg = SyntheticEcg::new(self.cfg).map_err(|e| SourceError::Failed {
                sensor: sensor.clone(),
                message: e.to_string(),
            })?;
            let fs = ecg.fs_hz();
            if !self.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.delay) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
            let t_start = self.start_ns.unwrap_or_else(now_ns);
            let clock0 = Instant::now();
            send(&out, SourceEvent::Connected, &sensor).await?;
            let mut n_sent: u64 = 0;
            let mut gap = true;
            loop {
                // Samples due by the next tick.
                let due_t = clock0.elapsed() + REALTIME_BLOCK;
                let due_n = (due_t.as_secs_f64() * fs).floor() as u64;
                if due_n > n_sent {
                    let mut buf = vec![0f32; (due_n - n_sent) as usize];
                    ecg.fill(&mut buf);
                    let t0 = t_start + (n_sent as f64 * 1e9 / fs).round() as i64;
                    n_sent = due_n;
                    let block = Block {
                        t0_ns: t0,
                        fs_hz: fs,
                        samples_uv: buf,
                        gap_before: std::mem::take(&mut gap),
                    };
                    tokio::select! {
                        r = send(&out, SourceEvent::Block(block), &sensor) => r?,
                        _ = stop.cancelled() => return Ok(()),
                    }
                }
                // Sleep until the samples just sent are "in the past".
                let wake = clock0 + Duration::from_secs_f64(n_sent as f64 / fs);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
        })
    }
}

/// Recordings being replayed, by (path, signal); an entry lives as long as a sensor plays it.
type Playing = Vec<((PathBuf, Option<String>), Weak<Recording>)>;
static PLAYING: Mutex<Playing> = Mutex::new(Vec::new());
/// One recording is read at a time (see the module docs).
static READING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The recording at `path` (`signal`), read once however many sensors replay it.
pub async fn shared_recording(
    path: &Path,
    signal: Option<&str>,
) -> Result<Arc<Recording>, ReadError> {
    let key = (path.to_path_buf(), signal.map(str::to_string));
    let find = || {
        let mut playing = PLAYING.lock().unwrap_or_else(|e| e.into_inner());
        playing.retain(|(_, w)| w.strong_count() > 0);
        playing
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
    };
    if let Some(rec) = find() {
        return Ok(rec);
    }
    let _one_at_a_time = READING.acquire().await.expect("never closed");
    // Another sensor may have read it while this one waited.
    if let Some(rec) = find() {
        return Ok(rec);
    }
    let (p, sig) = key.clone();
    let rec = tokio::task::spawn_blocking(move || read_recording(&p, sig.as_deref()))
        .await
        .unwrap_or_else(|e| {
            Err(ReadError::Io {
                path: key.0.clone(),
                source: std::io::Error::other(format!("reader task failed: {e}")),
            })
        })?;
    let rec = Arc::new(rec);
    PLAYING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key, Arc::downgrade(&rec)));
    Ok(rec)
}

/// A recording file replayed as a live sensor.
pub struct ReplaySource {
    pub sensor: String,
    pub path: PathBuf,
    pub signal: Option<String>,
    pub realtime: bool,
    pub looped: bool,
    /// Time the first sample as this (ns since the Unix epoch) instead of the wall clock at
    /// start: tests that need windows from the past (late delivery).
    pub start_ns: Option<i64>,
}

/// Largest jump between consecutive CSV timestamps still counted as continuous, in sample
/// periods (the Polar H10 jitters by a fraction of a period).
const GAP_PERIODS: f64 = 3.0;

impl Source for ReplaySource {
    fn sensor_id(&self) -> &str {
        &self.sensor
    }

    fn run(
        self: Box<Self>,
        out: mpsc::Sender<SourceEvent>,
        stop: CancellationToken,
    ) -> SourceFuture {
        Box::pin(async move {
            let me = *self;
            let sensor = me.sensor.clone();
            // Cancellable: a shutdown must not wait for files still queued for reading.
            let rec = tokio::select! {
                r = shared_recording(&me.path, me.signal.as_deref()) => r,
                _ = stop.cancelled() => return Ok(()),
            }
            .map_err(|e| SourceError::Failed {
                sensor: sensor.clone(),
                message: format!("{e}; check this sensor's `path` and the file"),
            })?;
            let fs = rec.fs_hz;
            let n = rec.samples_uv.len();
            if n == 0 {
                return Err(SourceError::Failed {
                    sensor: sensor.clone(),
                    message: format!("{} has no samples", me.path.display()),
                });
            }
            // Segment boundaries: indices where the file's own clock jumps.
            let mut seg_starts = vec![0usize];
            if let Some(ts) = &rec.timestamps_ns {
                let max_dt = GAP_PERIODS * 1e9 / fs;
                for i in 1..ts.len() {
                    let dt = (ts[i] - ts[i - 1]) as f64;
                    if !(0.0..=max_dt).contains(&dt) {
                        seg_starts.push(i);
                    }
                }
            }
            let rel_ns = |i: usize| -> i64 {
                match &rec.timestamps_ns {
                    Some(ts) => ts[i] - ts[0],
                    None => (i as f64 * 1e9 / fs).round() as i64,
                }
            };
            let block_len = if me.realtime {
                ((fs * REALTIME_BLOCK.as_secs_f64()).round() as usize).max(1)
            } else {
                (fs.round() as usize).max(1)
            };
            send(&out, SourceEvent::Connected, &me.sensor).await?;
            let mut anchor = me.start_ns.unwrap_or_else(now_ns);
            let clock0 = Instant::now();
            let mut played_ns: i64 = 0; // recording time already played in earlier loops
            loop {
                let mut i = 0usize;
                let mut next_seg = 1usize;
                let mut gap = true;
                while i < n {
                    let seg_end = seg_starts.get(next_seg).copied().unwrap_or(n);
                    let end = (i + block_len).min(seg_end);
                    let t0 = anchor + rel_ns(i);
                    let block = Block {
                        t0_ns: t0,
                        fs_hz: fs,
                        samples_uv: rec.samples_uv[i..end].to_vec(),
                        gap_before: std::mem::take(&mut gap),
                    };
                    if me.realtime {
                        // Deliver a block when its last sample is in the past.
                        let due = played_ns + rel_ns(end - 1);
                        let wake = clock0 + Duration::from_nanos(due.max(0) as u64);
                        tokio::select! {
                            _ = tokio::time::sleep_until(wake) => {}
                            _ = stop.cancelled() => return Ok(()),
                        }
                    }
                    tokio::select! {
                        r = send(&out, SourceEvent::Block(block), &me.sensor) => r?,
                        _ = stop.cancelled() => return Ok(()),
                    }
                    i = end;
                    if i == seg_end && i < n {
                        next_seg += 1;
                        gap = true;
                    }
                }
                if !me.looped {
                    send(&out, SourceEvent::End, &me.sensor).await?;
                    return Ok(());
                }
                // Loop: continue the clock after the last sample, flagged as a gap.
                let span = rel_ns(n - 1) + (1e9 / fs).round() as i64;
                anchor += span;
                played_ns += span;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sensors replaying one file hold one copy of it, for as long as one of them plays it.
    #[tokio::test]
    async fn sensors_replaying_one_file_share_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut text = String::from("time_ns,ecg_uv\n");
        for i in 0..500i64 {
            text.push_str(&format!(
                "{},{}\n",
                1_700_000_000_000_000_000 + i * 7_812_500,
                i % 50
            ));
        }
        std::fs::write(&path, text).unwrap();
        let copies: Vec<Arc<Recording>> =
            futures_util::future::join_all((0..16).map(|_| shared_recording(&path, None)))
                .await
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
        assert!(copies.iter().all(|c| Arc::ptr_eq(c, &copies[0])));
        assert_eq!(Arc::strong_count(&copies[0]), 16);
        let weak = Arc::downgrade(&copies[0]);
        drop(copies);
        assert!(weak.upgrade().is_none(), "freed when no sensor plays it");
        let missing = shared_recording(&dir.path().join("nope.csv"), None).await;
        assert!(missing.is_err());
    }
}
