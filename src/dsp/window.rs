//! Cutting the 256 Hz stream into fixed-length windows — the project's one window type.
//!
//! A [`Windower`] receives resampled samples in blocks, each with the timestamp of its first
//! sample, and emits every complete window of `len` samples, advancing by `hop` (default
//! `hop == len`, no overlap; `hop > len` leaves gaps between windows, `hop < len` overlaps).
//!
//! * **Timestamps.** A window's `start_ns` is computed from the block that delivered the
//!   window's first sample: `t0 of that block + offset_in_block / fs`. So clock drift between a
//!   sensor and the nominal rate is corrected at every block rather than accumulated.
//! * **Warm-up.** After construction and after every [`Windower::gap`] the first `warmup`
//!   samples are discarded (filter start-up transient).
//! * **Gaps.** [`Windower::gap`] discards the partial window and restarts alignment, so a window
//!   never spans missing samples.
//! * **Index.** `Window::index` counts the windows emitted by this windower (it keeps counting
//!   across gaps, so it is unique per stream).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::DspError;

/// Sampling rate of every [`Window`], Hz.
pub const WINDOW_FS: f64 = 256.0;
/// Samples per window: 10 s at 256 Hz.
pub const WINDOW_LEN: usize = 2560;

/// One window of filtered ECG at 256 Hz.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Time of `samples[0]`, ns since the Unix epoch (or the recording's own time base).
    pub start_ns: i64,
    /// Sampling rate of `samples` (always [`WINDOW_FS`] from this module).
    pub fs_hz: f64,
    /// `WINDOW_LEN` samples, filtered, in µV, **not** normalised unless stated by the producer.
    pub samples: Vec<f32>,
    /// Sequence number of the window within its stream.
    pub index: u64,
}

impl AsRef<[f32]> for Window {
    fn as_ref(&self) -> &[f32] {
        &self.samples
    }
}

impl Window {
    /// Duration covered by the samples, ns.
    pub fn duration_ns(&self) -> i64 {
        (self.samples.len() as f64 * 1e9 / self.fs_hz).round() as i64
    }

    /// Time just after the last sample (`start_ns + duration_ns`).
    pub fn end_ns(&self) -> i64 {
        self.start_ns + self.duration_ns()
    }
}

/// Streaming window cutter (see module docs).
#[derive(Debug, Clone)]
pub struct Windower {
    len: usize,
    hop: usize,
    fs: f64,
    warmup: usize,
    warmup_left: usize,
    skip_left: usize,
    buf: Vec<f32>,
    /// (stream position of a block's first sample, its timestamp), oldest first.
    anchors: VecDeque<(u64, i64)>,
    /// Stream position (samples since start/gap) of the next incoming sample.
    pos: u64,
    next_index: u64,
}

impl Windower {
    /// Windows of `len` samples every `hop` samples at [`WINDOW_FS`], no warm-up.
    ///
    /// # Panics
    /// If `len == 0` or `hop == 0` (programming error; configs are validated by
    /// [`super::PreprocessConfig::validate`]). Use [`Windower::try_new`] to get an error instead.
    pub fn new(len: usize, hop: usize) -> Self {
        Self::try_new(len, hop).expect("Windower::new: len and hop must be > 0")
    }

    /// Like [`Windower::new`] but returns an error for `len == 0` or `hop == 0`.
    pub fn try_new(len: usize, hop: usize) -> Result<Self, DspError> {
        if len == 0 {
            return Err(DspError::InvalidConfig {
                key: "window len".into(),
                value: "0".into(),
                reason: "must be > 0".into(),
            });
        }
        if hop == 0 {
            return Err(DspError::InvalidConfig {
                key: "dsp.hop".into(),
                value: "0".into(),
                reason: "must be > 0".into(),
            });
        }
        Ok(Self {
            len,
            hop,
            fs: WINDOW_FS,
            warmup: 0,
            warmup_left: 0,
            skip_left: 0,
            buf: Vec::with_capacity(len),
            anchors: VecDeque::with_capacity(64),
            pos: 0,
            next_index: 0,
        })
    }

    /// Discard the first `samples` samples after start and after every gap.
    pub fn with_warmup(mut self, samples: usize) -> Self {
        self.warmup = samples;
        self.warmup_left = samples;
        self
    }

    /// Window length in samples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a windower has `len > 0`); present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Hop in samples.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Warm-up in samples.
    pub fn warmup(&self) -> usize {
        self.warmup
    }

    /// Samples buffered towards the next window.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Index the next emitted window will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Feed a block whose first sample was taken at `t0_ns`; complete windows are appended
    /// to `out`.
    pub fn push(&mut self, t0_ns: i64, samples: &[f32], out: &mut Vec<Window>) {
        if samples.is_empty() {
            return;
        }
        self.anchors.push_back((self.pos, t0_ns));
        let mut s = samples;
        // `cursor` = stream position of s[0].
        let mut cursor = self.pos;
        self.pos += samples.len() as u64;

        if self.warmup_left > 0 {
            let k = self.warmup_left.min(s.len());
            s = &s[k..];
            cursor += k as u64;
            self.warmup_left -= k;
        }
        while !s.is_empty() {
            if self.skip_left > 0 {
                let k = self.skip_left.min(s.len());
                s = &s[k..];
                cursor += k as u64;
                self.skip_left -= k;
                continue;
            }
            let take = (self.len - self.buf.len()).min(s.len());
            self.buf.extend_from_slice(&s[..take]);
            s = &s[take..];
            cursor += take as u64;
            if self.buf.len() == self.len {
                let start_pos = cursor - self.len as u64;
                let start_ns = self.time_of(start_pos);
                out.push(Window {
                    start_ns,
                    fs_hz: self.fs,
                    samples: self.buf.clone(),
                    index: self.next_index,
                });
                self.next_index += 1;
                if self.hop >= self.len {
                    self.buf.clear();
                    self.skip_left = self.hop - self.len;
                } else {
                    self.buf.drain(..self.hop);
                }
            }
        }
    }

    /// Missing samples: drop the partial window, forget the time anchors and restart
    /// alignment (and warm-up) with the next block.
    pub fn gap(&mut self) {
        self.buf.clear();
        self.anchors.clear();
        self.pos = 0;
        self.skip_left = 0;
        self.warmup_left = self.warmup;
    }

    /// Timestamp of stream position `p` from the latest block anchor at or before `p`.
    fn time_of(&mut self, p: u64) -> i64 {
        while self.anchors.len() >= 2 && self.anchors[1].0 <= p {
            self.anchors.pop_front();
        }
        match self.anchors.front() {
            Some(&(apos, t)) => {
                let dt = (p as f64 - apos as f64) * 1e9 / self.fs;
                t + dt.round() as i64
            }
            None => 0,
        }
    }
}
