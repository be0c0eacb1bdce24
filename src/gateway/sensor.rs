//! Per-sensor processing between a source and the scorer: raw blocks → filtered 256 Hz
//! windows (the shared [`Preprocessor`]) → quality gate, R-peaks, HR/HRV → running z-score.
//!
//! One [`SensorPipeline`] per sensor, driven by that sensor's task. Everything here is cheap
//! (a 130 Hz sensor costs well under 1 % of a core, see BENCHMARKS.md), so it runs inline in
//! the async task rather than on a blocking thread.

use std::sync::Arc;
use std::time::Instant;

use crate::dsp::quality::{assess, ClipTracker, Quality, QualityConfig};
use crate::dsp::{
    detect_rpeaks, hrv, DspError, HrvStats, PreprocessConfig, Preprocessor, RunningStats, Window,
    WINDOW_FS,
};
use crate::source::Block;

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
                completed,
            });
        }
    }
}
