//! The six signal transformations of the pretext task, with the parameters of the authors'
//! code: Gaussian noise at 15 dB SNR, scaling ×1.1, negation, time reversal, permutation of
//! 20 segments, and time-warping of 9 pieces stretched/squeezed by 1.05 then cropped back.
//!
//! They are pure functions of (window, rng): the trainer redraws them every epoch from a
//! seeded RNG, so a run is reproducible and no transformed copy is ever stored.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// Signal-to-noise ratio of the added Gaussian noise, dB.
pub const NOISE_SNR_DB: f32 = 15.0;
/// Amplitude scaling factor.
pub const SCALE_FACTOR: f32 = 1.1;
/// Segments shuffled by the permutation transform.
pub const PERMUTE_PIECES: usize = 20;
/// Pieces of the time-warp transform and their stretch factor.
pub const WARP_PIECES: usize = 9;
pub const WARP_FACTOR: f32 = 1.05;

/// One of the seven pretext classes; index = head index in [`super::model::PRETEXT_TASKS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    Original = 0,
    Noise = 1,
    Scale = 2,
    Negate = 3,
    Flip = 4,
    Permute = 5,
    TimeWarp = 6,
}

impl Transform {
    pub const ALL: [Transform; 7] = [
        Transform::Original,
        Transform::Noise,
        Transform::Scale,
        Transform::Negate,
        Transform::Flip,
        Transform::Permute,
        Transform::TimeWarp,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Apply to `x`, writing into `out` (same length).
    pub fn apply<R: Rng + ?Sized>(self, x: &[f32], out: &mut Vec<f32>, rng: &mut R) {
        out.clear();
        match self {
            Transform::Original => out.extend_from_slice(x),
            Transform::Noise => add_noise(x, NOISE_SNR_DB, out, rng),
            Transform::Scale => out.extend(x.iter().map(|v| v * SCALE_FACTOR)),
            Transform::Negate => out.extend(x.iter().map(|v| -v)),
            Transform::Flip => out.extend(x.iter().rev()),
            Transform::Permute => permute(x, PERMUTE_PIECES, out, rng),
            Transform::TimeWarp => time_warp(x, WARP_PIECES, WARP_FACTOR, out, rng),
        }
    }
}

/// Add white Gaussian noise whose power is the signal power minus `snr_db`.
pub fn add_noise<R: Rng + ?Sized>(x: &[f32], snr_db: f32, out: &mut Vec<f32>, rng: &mut R) {
    let n = x.len().max(1) as f64;
    let power = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / n;
    let noise_power = power / 10f64.powf(snr_db as f64 / 10.0);
    let sd = noise_power.sqrt();
    if sd > 0.0 && sd.is_finite() {
        let normal = Normal::new(0.0, sd).expect("finite positive sd");
        out.extend(x.iter().map(|v| (*v as f64 + normal.sample(rng)) as f32));
    } else {
        out.extend_from_slice(x);
    }
}

/// Boundaries splitting `len` into `pieces` nearly equal parts (like `numpy.array_split`).
fn split_points(len: usize, pieces: usize) -> Vec<(usize, usize)> {
    let base = len / pieces;
    let extra = len % pieces;
    let mut out = Vec::with_capacity(pieces);
    let mut start = 0;
    for i in 0..pieces {
        let l = base + usize::from(i < extra);
        out.push((start, start + l));
        start += l;
    }
    out
}

/// Cut into `pieces` segments and concatenate them in a random order (never the identity).
pub fn permute<R: Rng + ?Sized>(x: &[f32], pieces: usize, out: &mut Vec<f32>, rng: &mut R) {
    let segs = split_points(x.len(), pieces);
    let mut order: Vec<usize> = (0..segs.len()).collect();
    while order.len() > 1 && order.iter().enumerate().all(|(i, &o)| i == o) {
        order.shuffle(rng);
    }
    for &i in &order {
        let (a, b) = segs[i];
        out.extend_from_slice(&x[a..b]);
    }
}

/// Resample `seg` to `new_len` samples by linear interpolation.
fn stretch(seg: &[f32], new_len: usize, out: &mut Vec<f32>) {
    if seg.is_empty() || new_len == 0 {
        return;
    }
    if seg.len() == 1 || new_len == 1 {
        out.extend(std::iter::repeat_n(seg[0], new_len));
        return;
    }
    let scale = (seg.len() - 1) as f64 / (new_len - 1) as f64;
    for j in 0..new_len {
        let p = j as f64 * scale;
        let i = p.floor() as usize;
        let f = (p - i as f64) as f32;
        let a = seg[i];
        let b = seg[(i + 1).min(seg.len() - 1)];
        out.push(a + (b - a) * f);
    }
}

/// Split into `pieces`; a random half (rounded up) is stretched by `factor`, the rest
/// squeezed by `1/factor`; concatenated and cropped (or edge-padded) back to the input length.
pub fn time_warp<R: Rng + ?Sized>(
    x: &[f32],
    pieces: usize,
    factor: f32,
    out: &mut Vec<f32>,
    rng: &mut R,
) {
    let segs = split_points(x.len(), pieces);
    let mut stretched: Vec<bool> = (0..segs.len())
        .map(|i| i < segs.len().div_ceil(2))
        .collect();
    stretched.shuffle(rng);
    let mut tmp = Vec::with_capacity(x.len() + x.len() / 10);
    for (&(a, b), &s) in segs.iter().zip(&stretched) {
        let f = if s { factor } else { 1.0 / factor };
        let new_len = (((b - a) as f32) * f).round() as usize;
        stretch(&x[a..b], new_len, &mut tmp);
    }
    let n = x.len();
    if tmp.len() >= n {
        out.extend_from_slice(&tmp[..n]);
    } else {
        let last = tmp.last().copied().unwrap_or(0.0);
        out.extend_from_slice(&tmp);
        out.extend(std::iter::repeat_n(last, n - tmp.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn sig() -> Vec<f32> {
        (0..2560)
            .map(|i| ((i as f32) * 0.05).sin() + 0.3 * ((i as f32) * 0.31).cos())
            .collect()
    }

    #[test]
    fn noise_has_requested_snr() {
        let x = sig();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        add_noise(&x, 15.0, &mut out, &mut rng);
        let ps: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
        let pn: f64 = x
            .iter()
            .zip(&out)
            .map(|(a, b)| ((b - a) as f64).powi(2))
            .sum();
        let snr = 10.0 * (ps / pn).log10();
        assert!((snr - 15.0).abs() < 0.5, "snr {snr}");
    }

    #[test]
    fn simple_transforms_are_exact() {
        let x = sig();
        let mut rng = SmallRng::seed_from_u64(2);
        let mut out = Vec::new();
        Transform::Scale.apply(&x, &mut out, &mut rng);
        assert_eq!(out[100], x[100] * 1.1);
        Transform::Negate.apply(&x, &mut out, &mut rng);
        assert_eq!(out[7], -x[7]);
        Transform::Flip.apply(&x, &mut out, &mut rng);
        assert_eq!(out[0], x[2559]);
        assert_eq!(out[2559], x[0]);
    }

    #[test]
    fn permutation_keeps_samples_and_moves_segments() {
        let x: Vec<f32> = (0..2560).map(|i| i as f32).collect();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut out = Vec::new();
        permute(&x, 20, &mut out, &mut rng);
        assert_eq!(out.len(), 2560);
        let mut sorted = out.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(sorted, x);
        assert_ne!(out, x);
        // 128-sample segments stay contiguous
        let jumps = out.windows(2).filter(|w| w[1] != w[0] + 1.0).count();
        assert!((1..=19).contains(&jumps), "jumps {jumps}");
    }

    #[test]
    fn time_warp_keeps_length_and_changes_timing() {
        let x = sig();
        let mut rng = SmallRng::seed_from_u64(4);
        let mut out = Vec::new();
        time_warp(&x, 9, 1.05, &mut out, &mut rng);
        assert_eq!(out.len(), 2560);
        assert_eq!(out[0], x[0]);
        let diff: f32 = x.iter().zip(&out).map(|(a, b)| (a - b).abs()).sum::<f32>() / 2560.0;
        assert!(diff > 0.01, "warp changed the signal ({diff})");
        let (mn, mx) = out
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        assert!(mn >= -1.31 && mx <= 1.31, "interpolation stays in range");
    }

    #[test]
    fn same_seed_same_output() {
        let x = sig();
        let mut a = Vec::new();
        let mut b = Vec::new();
        for t in Transform::ALL {
            t.apply(&x, &mut a, &mut SmallRng::seed_from_u64(9));
            t.apply(&x, &mut b, &mut SmallRng::seed_from_u64(9));
            assert_eq!(a, b, "{t:?}");
            assert_eq!(a.len(), 2560);
        }
    }
}
