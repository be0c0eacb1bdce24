//! The sensor's clock mapped onto the gateway clock: rate estimation, gap detection.

use std::collections::VecDeque;

/// A gap is flagged when the timestamp step differs from what the sample count explains by more
/// than this many sample periods…
const GAP_TOLERANCE_PERIODS: f64 = 1.5;
/// …plus this relative rate uncertainty per sample of the frame: wide (3 %) while the rate is
/// still nominal (the real rate is 128–131 Hz: long frames would false-alarm, and every false
/// gap restarts the estimate), tight once estimated.
const RATE_TOL_NOMINAL: f64 = 0.03;
const RATE_TOL_ESTIMATED: f64 = 0.002;
/// The rate is estimated over at most this much sensor time (and this many frames)…
const SPAN_MAX_NS: u64 = 120_000_000_000;
const SPAN_MAX_FRAMES: usize = 4096;
/// …and not before the span covers this much (nominal rate until then).
const SPAN_MIN_NS: u64 = 2_000_000_000;
/// Estimates further than this from nominal are implausible and ignored.
const FS_PLAUSIBLE_REL: f64 = 0.1;
/// On a gap, re-anchor when sensor and gateway clocks disagree by more than this.
const REANCHOR_NS: i128 = 2_000_000_000;

/// Timing of one frame on the gateway clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameTiming {
    /// Unix ns (gateway clock) of the frame's FIRST sample.
    pub t0_unix_ns: i64,
    /// Estimated from sensor timestamps; nominal until the span is long enough.
    pub fs_hz: f64,
    /// Samples are missing before this frame: first frame after connect, dropped frames,
    /// timestamps inconsistent with the sample count or going backwards.
    pub gap_before: bool,
    /// Receive time minus the mapped time of the last sample: BLE latency plus drift between the
    /// two clocks since the anchor (for logs and watchdogs).
    pub lag_ns: i64,
}

/// Maps sensor timestamps (ns since 2000-01-01, last sample of a frame) to Unix ns on the gateway
/// clock and estimates the true sampling rate.
///
/// * Absolute sensor time is never used (it resets when the strap shuts down). The first frame
///   after [`new`](Self::new)/[`reset`](Self::reset) anchors: its last sample is taken to be at
///   its receive time. After that, times come from the sensor clock alone, so consecutive frames
///   are contiguous — receive times jitter by tens of ms and would smear the signal.
/// * Rate = samples between the last samples of the oldest and newest frame of a sliding span
///   (≤ 120 s) / their timestamp difference; nominal until the span covers 2 s. It moves slowly,
///   far below the gateway's 0.1 % preprocessor-rebuild threshold.
/// * A gap restarts the span but keeps the estimate (same strap, same crystal). The mapping is
///   kept across a short dropout (the sensor clock is the better reference) and re-anchored when
///   the timestamp went backwards or the clocks disagree by more than 2 s — which also corrects
///   slow drift at the first gap after hours of streaming.
#[derive(Debug, Clone)]
pub struct PolarClock {
    nominal_fs_hz: f64,
    fs_hz: f64,
    estimated: bool,
    /// Unix ns = sensor ns + offset.
    offset_ns: i128,
    prev_ts: Option<u64>,
    next_index: u64,
    /// (sensor ts of a frame's last sample, running index of that sample).
    span: VecDeque<(u64, u64)>,
}

impl PolarClock {
    /// A clock for a stream of nominal rate `nominal_fs_hz` (ECG: [`ECG_NOMINAL_FS_HZ`]).
    pub fn new(nominal_fs_hz: f64) -> Self {
        Self {
            nominal_fs_hz,
            fs_hz: nominal_fs_hz,
            estimated: false,
            offset_ns: 0,
            prev_ts: None,
            next_index: 0,
            span: VecDeque::new(),
        }
    }

    /// After a reconnect: the next frame re-anchors and carries `gap_before`; the rate estimate
    /// is kept.
    pub fn reset(&mut self) {
        self.prev_ts = None;
        self.span.clear();
    }

    /// Current rate estimate.
    pub fn fs_hz(&self) -> f64 {
        self.fs_hz
    }

    /// The rate comes from timestamps (else it is still the nominal rate). Kept across
    /// [`reset`](Self::reset).
    pub fn is_estimated(&self) -> bool {
        self.estimated
    }

    /// Time one frame from its timestamp (= its last sample), sample count and gateway receive
    /// time. A frame without samples changes nothing (its timestamp belongs to no sample): it
    /// gets `t0 = rx`, no gap.
    pub fn frame(
        &mut self,
        last_sample_sensor_ns: u64,
        n_samples: usize,
        rx_unix_ns: i64,
    ) -> FrameTiming {
        let (ts, rx, n) = (
            i128::from(last_sample_sensor_ns),
            i128::from(rx_unix_ns),
            n_samples,
        );
        if n == 0 {
            return self.timing(rx, false, 0);
        }
        let gap_before = match self.prev_ts {
            None => {
                self.offset_ns = rx - ts;
                true
            }
            Some(prev) => {
                let period = 1e9 / self.fs_hz;
                let delta = (ts - i128::from(prev)) as f64;
                let rel = if self.estimated {
                    RATE_TOL_ESTIMATED
                } else {
                    RATE_TOL_NOMINAL
                };
                let n = n as f64;
                let tol = (GAP_TOLERANCE_PERIODS + n * rel) * period;
                let gap = delta <= 0.0 || (delta - n * period).abs() > tol;
                if gap && (delta <= 0.0 || (rx - ts - self.offset_ns).abs() > REANCHOR_NS) {
                    self.offset_ns = rx - ts;
                }
                gap
            }
        };
        self.update_rate(last_sample_sensor_ns, n as u64, gap_before);
        let last_unix = ts + self.offset_ns;
        let back = ((n - 1) as f64 * 1e9 / self.fs_hz).round() as i128;
        self.timing(last_unix - back, gap_before, rx - last_unix)
    }

    fn timing(&self, t0_unix_ns: i128, gap_before: bool, lag_ns: i128) -> FrameTiming {
        let clamp = |v: i128| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        FrameTiming {
            t0_unix_ns: clamp(t0_unix_ns),
            fs_hz: self.fs_hz,
            gap_before,
            lag_ns: clamp(lag_ns),
        }
    }

    fn update_rate(&mut self, ts: u64, n: u64, gap: bool) {
        if gap {
            self.span.clear();
            self.next_index = 0;
        }
        self.prev_ts = Some(ts);
        self.next_index += n;
        self.span.push_back((ts, self.next_index - 1));
        while self.span.len() > 2
            && (ts - self.span[0].0 > SPAN_MAX_NS || self.span.len() > SPAN_MAX_FRAMES)
        {
            self.span.pop_front();
        }
        // Timestamps strictly increase within a span (anything else is a gap that cleared it).
        let (t_old, i_old) = self.span[0];
        if ts - t_old >= SPAN_MIN_NS {
            let est = (self.next_index - 1 - i_old) as f64 * 1e9 / (ts - t_old) as f64;
            if (est / self.nominal_fs_hz - 1.0).abs() <= FS_PLAUSIBLE_REL {
                self.fs_hz = est;
                self.estimated = true;
            }
        }
    }
}
