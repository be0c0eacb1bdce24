//! Per-sensor processing between a source and the scorer: raw blocks → filtered 256 Hz
//! windows (the shared [`Preprocessor`]) → quality gate, R-peaks, HR/HRV → running z-score.
//!
//! Sensors without ECG (Heart Rate service) go through [`BeatSummary`] instead: their RR
//! intervals become one HR/HRV summary per window period, published but never scored or stored.
//!
//! One [`SensorPipeline`] per sensor, driven by that sensor's task. Everything here is cheap
//! (a 130 Hz sensor costs well under 1 % of a core, see BENCHMARKS.md), so it runs inline in
//! the async task rather than on a blocking thread.

use std::sync::Arc;
use std::time::Instant;

use crate::dsp::quality::{assess, ClipTracker, Quality, QualityConfig};
use crate::dsp::rpeak::hrv_from_rr;
use crate::dsp::{
    detect_rpeaks, hrv, DspError, HrvStats, PreprocessConfig, Preprocessor, RunningStats, Window,
    WINDOW_FS,
};
use crate::source::{Beats, Block};

/// A window ready for scoring.
#[derive(Debug, Clone)]
pub struct ProcessedWindow {
    pub sensor: Arc<str>,
    /// Filtered µV (what the store keeps).
    pub window: Window,
    /// Z-scored samples for the model; `None` when the quality gate failed.
    pub normalized: Option<Vec<f32>>,
    pub quality: Quality,
    pub hrv: Option<HrvStats>,
    /// The wearer's baseline this window is described against (set by the ingest task, which
    /// keeps one per sensor; `None`: still calibrating).
    pub baseline: Option<crate::dsp::WearerBaseline>,
    /// When the window completed (for latency measurements).
    pub completed: Instant,
}

/// Running z-score horizon: 5 minutes of windows; the window's own statistics are used until
/// 3 good windows have been seen.
const ZSCORE_HORIZON_S: f64 = 300.0;
const ZSCORE_MIN_WINDOWS: u32 = 3;

/// Relative change of a source's sampling rate that rebuilds the filters (a BLE sensor's
/// estimated rate wobbles by < 0.1 %; the block timestamps absorb that).
const FS_REBUILD_REL: f64 = 1e-3;

/// DSP state of one sensor.
#[derive(Debug)]
pub struct SensorPipeline {
    sensor: Arc<str>,
    cfg: PreprocessConfig,
    quality: QualityConfig,
    pre: Option<Preprocessor>,
    clip: ClipTracker,
    stats: RunningStats,
    scratch: Vec<Window>,
    /// Windows emitted so far (a sensor's window `index` keeps counting across gaps).
    next_index: u64,
    dropped_blocks: u64,
}

impl SensorPipeline {
    pub fn new(sensor: &str, cfg: PreprocessConfig, quality: QualityConfig) -> Self {
        Self {
            sensor: Arc::from(sensor),
            cfg,
            quality,
            pre: None,
            clip: ClipTracker::default(),
            stats: RunningStats::for_durations(10.0, ZSCORE_HORIZON_S, ZSCORE_MIN_WINDOWS),
            scratch: Vec::new(),
            next_index: 0,
            dropped_blocks: 0,
        }
    }

    /// Blocks dropped because they held non-finite samples.
    pub fn dropped_blocks(&self) -> u64 {
        self.dropped_blocks
    }

    pub fn sensor(&self) -> &Arc<str> {
        &self.sensor
    }

    /// Feed a block; completed windows are appended to `out`.
    ///
    /// A block with a non-finite sample (a decoder bug, a corrupt file) is dropped and
    /// treated as a gap: one NaN would otherwise poison the IIR filter state for good.
    /// Returns the number of blocks dropped so far via [`SensorPipeline::dropped_blocks`].
    pub fn push(&mut self, block: &Block, out: &mut Vec<ProcessedWindow>) -> Result<(), DspError> {
        if !(block.fs_hz.is_finite() && block.fs_hz > 0.0) {
            return Err(DspError::InvalidRate(block.fs_hz));
        }
        if block.samples_uv.iter().any(|x| !x.is_finite()) {
            self.dropped_blocks += 1;
            tracing::warn!(
                sensor = %self.sensor,
                "block of {} samples contains NaN/inf: dropped, treated as a gap",
                block.samples_uv.len()
            );
            self.gap();
            return Ok(());
        }
        let rebuild = match &self.pre {
            None => true,
            Some(p) => ((p.fs_in() - block.fs_hz) / p.fs_in()).abs() > FS_REBUILD_REL,
        };
        if rebuild {
            self.pre = Some(Preprocessor::new(block.fs_hz, self.cfg.clone())?);
            self.clip.clear();
        } else if block.gap_before {
            self.gap();
        }
        self.clip.push(block.t0_ns, block.fs_hz, &block.samples_uv);
        let pre = self.pre.as_mut().expect("preprocessor built above");
        self.scratch.clear();
        pre.push(block.t0_ns, &block.samples_uv, &mut self.scratch);
        self.finish_windows(out);
        Ok(())
    }

    /// Samples are missing: no window spans this point.
    pub fn gap(&mut self) {
        if let Some(p) = self.pre.as_mut() {
            p.gap();
        }
        self.clip.clear();
    }

    /// End of a finite stream: flush the resampler so no complete window is lost.
    pub fn finish(&mut self, out: &mut Vec<ProcessedWindow>) {
        if let Some(p) = self.pre.as_mut() {
            self.scratch.clear();
            p.finish(&mut self.scratch);
            self.finish_windows(out);
        }
    }

    fn finish_windows(&mut self, out: &mut Vec<ProcessedWindow>) {
        for mut window in self.scratch.drain(..) {
            let completed = Instant::now();
            window.index = self.next_index;
            self.next_index += 1;
            let clipped = self.clip.fraction(window.start_ns, window.end_ns());
            let peaks = detect_rpeaks(&window.samples, WINDOW_FS);
            let mut quality = assess(&window.samples, WINDOW_FS, &peaks, clipped, &self.quality);
            let hrv = hrv(&peaks, WINDOW_FS);
            let normalized = if quality.is_good() {
                let mut x = window.samples.clone();
                // The gate's flat threshold is far above the z-score's minimum std; should the
                // z-score still refuse, the window is flagged flat rather than scored.
                match self.stats.normalize(&mut x) {
                    Ok(_) => Some(x),
                    Err(_) => {
                        quality.flags |= Quality::FLAT;
                        None
                    }
                }
            } else {
                None
            };
            out.push(ProcessedWindow {
                sensor: self.sensor.clone(),
                window,
                normalized,
                quality,
                hrv,
                baseline: None,
                completed,
            });
        }
    }
}

/// HR/HRV of one period of a heart-rate-only sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct HrSummary {
    pub index: u64,
    pub start_ns: i64,
    pub end_ns: i64,
    /// From the RR intervals (same rules as for ECG windows); `None` with too few beats.
    pub hrv: Option<HrvStats>,
    /// From the RR intervals when there are enough, else the mean of the sensor's own values.
    pub hr_bpm: Option<f32>,
    /// `"hr_only"`, or `"no_contact"` when the sensor reported lost skin contact for most of
    /// the period.
    pub quality: &'static str,
}

/// Collects heart-rate reports into consecutive periods of `period_ns` (the window length, so
/// HR-only straps publish at the same cadence as ECG straps). A period is emitted when the
/// first report after it arrives; a report gap longer than a period starts a fresh period.
#[derive(Debug, Clone)]
pub struct BeatSummary {
    period_ns: i64,
    start_ns: Option<i64>,
    rr: Vec<f64>,
    hr: Vec<f32>,
    reports: u32,
    no_contact: u32,
    next_index: u64,
}

impl BeatSummary {
    pub fn new(period_ns: i64) -> Self {
        Self {
            period_ns: period_ns.max(1),
            start_ns: None,
            rr: Vec::new(),
            hr: Vec::new(),
            reports: 0,
            no_contact: 0,
            next_index: 0,
        }
    }

    /// Add a report; returns the summary of the period it closed, if any.
    pub fn push(&mut self, b: &Beats) -> Option<HrSummary> {
        let mut done = None;
        match self.start_ns {
            Some(start) if b.t_ns >= start + self.period_ns => {
                done = self.close(start);
                // Contiguous reports continue the grid; after a silence the grid restarts.
                self.start_ns = Some(if b.t_ns < start + 2 * self.period_ns {
                    start + self.period_ns
                } else {
                    b.t_ns
                });
            }
            Some(_) => {}
            None => self.start_ns = Some(b.t_ns),
        }
        self.reports += 1;
        if b.contact == Some(false) {
            self.no_contact += 1;
        }
        self.rr.extend(b.rr_ms.iter().map(|&r| f64::from(r)));
        self.hr.extend(b.hr_bpm);
        done
    }

    /// The link dropped: RR intervals across it would be wrong; drop the open period.
    pub fn gap(&mut self) {
        self.start_ns = None;
        self.clear();
    }

    fn clear(&mut self) {
        self.rr.clear();
        self.hr.clear();
        self.reports = 0;
        self.no_contact = 0;
    }

    fn close(&mut self, start: i64) -> Option<HrSummary> {
        if self.reports == 0 {
            return None;
        }
        let hrv = hrv_from_rr(&self.rr);
        let hr_bpm = hrv.map(|h| h.hr_bpm as f32).or_else(|| {
            (!self.hr.is_empty()).then(|| self.hr.iter().sum::<f32>() / self.hr.len() as f32)
        });
        let quality = if 2 * self.no_contact > self.reports {
            "no_contact"
        } else {
            "hr_only"
        };
        let s = HrSummary {
            index: self.next_index,
            start_ns: start,
            end_ns: start + self.period_ns,
            hrv,
            hr_bpm,
            quality,
        };
        self.next_index += 1;
        self.clear();
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(t_s: f64, hr: f32, rr: &[f32], contact: bool) -> Beats {
        Beats {
            t_ns: (t_s * 1e9) as i64,
            hr_bpm: Some(hr),
            rr_ms: rr.to_vec(),
            contact: Some(contact),
        }
    }

    #[test]
    fn beat_summary_periods_hrv_and_contact() {
        let mut b = BeatSummary::new(10_000_000_000);
        let mut out = Vec::new();
        // 25 s of reports at 1 Hz, RR alternating 800/1000 ms (mean 900 → 66.7 bpm).
        for k in 0..25 {
            let rr = if k % 2 == 0 { [800.0] } else { [1000.0] };
            out.extend(b.push(&beat(100.0 + k as f64, 70.0, &rr, k < 20)));
        }
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].index, out[1].index), (0, 1));
        assert_eq!(out[0].start_ns, 100_000_000_000);
        assert_eq!(out[1].start_ns, 110_000_000_000);
        let h = out[0].hrv.unwrap();
        assert!((h.hr_bpm - 60_000.0 / 900.0).abs() < 1e-9);
        assert!((h.rmssd_ms - 200.0).abs() < 1e-9);
        assert_eq!(out[0].hr_bpm, Some((60_000.0 / 900.0) as f32));
        assert_eq!(out[0].quality, "hr_only");
        // Reports without RR: HR falls back to the sensor's own values.
        let mut b2 = BeatSummary::new(10_000_000_000);
        let mut o2 = Vec::new();
        for k in 0..12 {
            o2.extend(b2.push(&beat(k as f64, 60.0 + k as f32, &[], false)));
        }
        assert_eq!(o2.len(), 1);
        assert_eq!(o2[0].hrv, None);
        assert_eq!(o2[0].hr_bpm, Some(64.5));
        assert_eq!(o2[0].quality, "no_contact");
        // A gap drops the open period; a long silence restarts the grid.
        b2.gap();
        assert_eq!(b2.push(&beat(100.0, 60.0, &[1000.0], true)), None);
        let s = b2.push(&beat(140.0, 60.0, &[1000.0], true)).unwrap();
        assert_eq!((s.start_ns, s.hrv), (100_000_000_000, None));
        let s = b2.push(&beat(150.5, 60.0, &[], true)).unwrap();
        assert_eq!(s.start_ns, 140_000_000_000);
    }
}
