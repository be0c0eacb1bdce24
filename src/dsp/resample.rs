//! Streaming sample-rate conversion to 256 Hz (or any rate) with `rubato` 5.
//!
//! # Choice of resampler
//! `rubato::Async` with **sinc interpolation** (`sinc_len` 64, Blackman-Harris² window,
//! oversampling 128, linear interpolation between the oversampled sinc tables), fixed *input*
//! chunk. Reasons:
//! * Input rates are arbitrary and non-integer (Polar H10 ≈ 130.16 Hz), so the synchronous FFT
//!   resampler (integer rates only) does not fit; `Async` takes any `f64` ratio.
//! * Downsampling 500/1000 Hz recordings needs an anti-aliasing filter: mains harmonics at
//!   250 Hz would fold to 6 Hz at fs_out = 256 Hz. The polynomial mode has no anti-aliasing,
//!   the sinc mode does (cut-off ≈ 0.8 × the lower Nyquist, ≈ 101 Hz for 500 → 256 Hz,
//!   ≈ 51 Hz for 130 → 256 Hz — above the 40 Hz ECG low-pass).
//! * Cost is irrelevant at these rates: ≈ 2 × 64 multiply-adds per *output* sample, i.e.
//!   ≈ 33 k MAC/s per sensor at 256 Hz; tables are 64 × 128 f32 = 32 KiB per stream.
//!   [`ResamplerKind::Poly`] (septic polynomial, no anti-aliasing, ~4 samples delay) is
//!   available for callers that want minimum latency and know their input is band-limited.
//!
//! # Streaming
//! Input is cut into fixed chunks of `chunk` samples (≈ 50 ms of input, ≥ 4) counted from the
//! start of the stream, independent of how the caller splits its blocks; blocks of any size
//! (including 0 and 1 sample) therefore give bit-identical output to one large block.
//!
//! # Delay and alignment
//! The sinc filter delays by `D = N·ratio/2 − 1` output samples (`N` = interpolator length).
//! The wrapper drops the first `ceil(D)` output samples, so output sample `j` corresponds to
//! input time `j / fs_out + time_offset_s()` after the first input sample, where
//! `0 ≤ time_offset_s() < 1 / fs_out` (reported exactly; [`super::Preprocessor`] adds it to the
//! window timestamps). **Latency** (live): up to `chunk − 1` input samples of buffering plus the
//! filter's look-ahead `N/2 + 2` input samples: ≈ 0.31 s at 130 Hz, ≈ 0.12 s at 500 Hz
//! ([`Resampler::latency_s`]; measured by the length test).
//! [`Resampler::flush`] pads the end with zeros and emits exactly
//! `ceil(n_in · fs_out / fs_in)` samples in total for the stream.
//!
//! If `fs_in == fs_out` the samples pass through untouched (no delay).

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{
    Async, FixedAsync, Indexing, PolynomialDegree, Resampler as _, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

use super::{DspError, WINDOW_FS};

/// Interpolation used by [`Resampler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResamplerKind {
    /// Windowed-sinc (anti-aliased), `sinc_len` 64. Default.
    #[default]
    Sinc,
    /// Septic polynomial, no anti-aliasing; tiny delay. Only for band-limited input.
    Poly,
}

const SINC_LEN: usize = 64;
const SINC_OVERSAMPLING: usize = 128;

/// Lowest / highest accepted input rate relative to the output rate.
const MIN_RATIO: f64 = 1.0 / 32.0;
const MAX_RATIO: f64 = 8.0;

/// Streaming resampler from `fs_in` to `fs_out` (default 256 Hz) for one mono stream.
pub struct Resampler {
    fs_in: f64,
    fs_out: f64,
    kind: ResamplerKind,
    inner: Option<Async<f32>>,
    chunk: usize,
    /// Input samples waiting for a full chunk.
    pending: Vec<f32>,
    /// Output scratch of `output_frames_max` frames.
    scratch: Vec<f32>,
    /// Output samples still to drop at the start of the stream (filter delay).
    trim_left: usize,
    trim: usize,
    offset_s: f64,
    n_in: u64,
    n_out: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("fs_in", &self.fs_in)
            .field("fs_out", &self.fs_out)
            .field("kind", &self.kind)
            .field("passthrough", &self.inner.is_none())
            .field("chunk", &self.chunk)
            .field("n_in", &self.n_in)
            .field("n_out", &self.n_out)
            .finish()
    }
}

impl Resampler {
    /// Sinc resampler from `fs_in` to [`WINDOW_FS`] (256 Hz).
    pub fn new(fs_in: f64) -> Result<Self, DspError> {
        Self::with_rates(fs_in, WINDOW_FS, ResamplerKind::Sinc)
    }

    /// Resampler between arbitrary rates. `fs_out / fs_in` must lie in `[1/32, 8]`.
    pub fn with_rates(fs_in: f64, fs_out: f64, kind: ResamplerKind) -> Result<Self, DspError> {
        if !(fs_in.is_finite() && fs_in > 0.0) {
            return Err(DspError::InvalidRate(fs_in));
        }
        if !(fs_out.is_finite() && fs_out > 0.0) {
            return Err(DspError::InvalidRate(fs_out));
        }
        let ratio = fs_out / fs_in;
        if !(MIN_RATIO..=MAX_RATIO).contains(&ratio) {
            return Err(DspError::InvalidConfig {
                key: "fs_in".into(),
                value: format!("{fs_in}"),
                reason: format!(
                    "is outside the supported range {:.1}..={:.1} Hz for output {fs_out} Hz",
                    fs_out / MAX_RATIO,
                    fs_out / MIN_RATIO
                ),
            });
        }
        let passthrough = (fs_in - fs_out).abs() <= 1e-9 * fs_out;
        let chunk = ((fs_in * 0.05).round() as usize).max(4);
        let mut me = Self {
            fs_in,
            fs_out,
            kind,
            inner: None,
            chunk,
            pending: Vec::with_capacity(chunk),
            scratch: Vec::new(),
            trim_left: 0,
            trim: 0,
            offset_s: 0.0,
            n_in: 0,
            n_out: 0,
        };
        if passthrough {
            return Ok(me);
        }
        let inner = match kind {
            ResamplerKind::Sinc => {
                let params =
                    SincInterpolationParameters::new(SINC_LEN, WindowFunction::BlackmanHarris2)
                        .oversampling_factor(SINC_OVERSAMPLING)
                        .interpolation(SincInterpolationType::Linear);
                Async::<f32>::new_sinc(ratio, 1.0, &params, chunk, 1, FixedAsync::Input)
            }
            ResamplerKind::Poly => Async::<f32>::new_poly(
                ratio,
                1.0,
                PolynomialDegree::Septic,
                chunk,
                1,
                FixedAsync::Input,
            ),
        }
        .map_err(|e| DspError::Resampler(e.to_string()))?;
        let n_points = match kind {
            ResamplerKind::Sinc => SINC_LEN,
            ResamplerKind::Poly => 8,
        } as f64;
        // Delay of rubato's Async in output samples (verified by the alignment test):
        // input position of raw output k is k/ratio - (N/2 - 1/ratio).
        let delay_out = n_points * ratio / 2.0 - 1.0;
        let trim = delay_out.ceil().max(0.0);
        me.trim = trim as usize;
        me.trim_left = me.trim;
        me.offset_s = (trim - delay_out) / ratio / fs_in;
        me.scratch = vec![0.0; inner.output_frames_max()];
        me.inner = Some(inner);
        Ok(me)
    }

    /// Input rate, Hz.
    pub fn fs_in(&self) -> f64 {
        self.fs_in
    }

    /// Output rate, Hz.
    pub fn fs_out(&self) -> f64 {
        self.fs_out
    }

    /// `fs_out / fs_in`.
    pub fn ratio(&self) -> f64 {
        self.fs_out / self.fs_in
    }

    /// True when `fs_in == fs_out` (samples are copied through).
    pub fn is_passthrough(&self) -> bool {
        self.inner.is_none()
    }

    /// Output sample `j` of a stream sits at `j / fs_out + time_offset_s()` seconds after the
    /// stream's first input sample (`0 ≤ offset < 1 / fs_out`).
    pub fn time_offset_s(&self) -> f64 {
        self.offset_s
    }

    /// Worst-case live latency in seconds: chunk buffering + filter look-ahead.
    pub fn latency_s(&self) -> f64 {
        if self.inner.is_none() {
            return 0.0;
        }
        let n_points = match self.kind {
            ResamplerKind::Sinc => SINC_LEN,
            ResamplerKind::Poly => 8,
        } as f64;
        // rubato emits output k once input index ≈ k/ratio + N/2 + 2 is available
        // (interpolator look-ahead), plus up to `chunk − 1` samples waiting for a full chunk.
        ((self.chunk - 1) as f64 + n_points / 2.0 + 2.0 + 1.0 / self.ratio()) / self.fs_in
    }

    /// Input samples consumed / output samples produced since the last reset.
    pub fn counts(&self) -> (u64, u64) {
        (self.n_in, self.n_out)
    }

    /// Resample `input` (any length) and **append** the output to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.n_in += input.len() as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            self.n_out += input.len() as u64;
            return;
        }
        let mut rest = input;
        // Top up a partially filled chunk first.
        if !self.pending.is_empty() {
            let take = (self.chunk - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.chunk {
                let pending = std::mem::take(&mut self.pending);
                self.run_chunk(&pending, None, out);
                self.pending = pending;
                self.pending.clear();
            }
        }
        // Whole chunks straight from the caller's slice (no copy).
        while rest.len() >= self.chunk {
            let (head, tail) = rest.split_at(self.chunk);
            self.run_chunk(head, None, out);
            rest = tail;
        }
        self.pending.extend_from_slice(rest);
    }

    /// End of stream: push the buffered input and the filter tail through (zero padded) and
    /// append exactly the samples still owed, so that the stream totals
    /// `ceil(n_in · fs_out / fs_in)` output samples. Then [`reset`](Self::reset)s.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        if self.inner.is_some() && self.n_in > 0 {
            let expected = (self.n_in as f64 * self.ratio()).ceil() as u64;
            let pending = std::mem::take(&mut self.pending);
            let mut first = true;
            let mut guard = 0;
            while self.n_out < expected && guard < 10_000 {
                let partial = if first { pending.len() } else { 0 };
                first = false;
                let owed = (expected - self.n_out) as usize;
                self.run_chunk(&pending, Some((partial, owed)), out);
                guard += 1;
            }
            self.pending = pending;
        }
        self.reset();
    }

    /// Drop all buffered samples and state (after a gap, or to start a new stream).
    pub fn reset(&mut self) {
        if let Some(r) = self.inner.as_mut() {
            r.reset();
        }
        self.pending.clear();
        self.trim_left = self.trim;
        self.n_in = 0;
        self.n_out = 0;
    }

    /// Run one rubato chunk. `partial = Some((valid_len, max_out))` for the zero-padded
    /// flush chunks (at most `max_out` samples are appended).
    fn run_chunk(&mut self, data: &[f32], partial: Option<(usize, usize)>, out: &mut Vec<f32>) {
        let Some(r) = self.inner.as_mut() else {
            return;
        };
        // A zero-length slice is wrapped as one zero frame; only happens with partial_len = 0.
        let zero = [0.0f32; 1];
        let data = if data.is_empty() { &zero[..] } else { data };
        let input = match SequentialSlice::new(data, 1, data.len()) {
            Ok(a) => a,
            Err(_) => return,
        };
        let out_frames = self.scratch.len();
        let mut output = match SequentialSlice::new_mut(&mut self.scratch[..], 1, out_frames) {
            Ok(a) => a,
            Err(_) => return,
        };
        let indexing = partial.map(|(valid, _)| Indexing::new().partial_len(valid));
        let produced = match r.process_into_buffer(&input, &mut output, indexing.as_ref()) {
            Ok((_, n)) => n,
            // Cannot happen with the sizes used here; drop the chunk rather than panic.
            Err(_) => 0,
        };
        let mut produced = &self.scratch[..produced];
        if self.trim_left > 0 {
            let k = self.trim_left.min(produced.len());
            produced = &produced[k..];
            self.trim_left -= k;
        }
        if let Some((_, owed)) = partial {
            produced = &produced[..produced.len().min(owed)];
        }
        out.extend_from_slice(produced);
        self.n_out += produced.len() as u64;
    }
}
