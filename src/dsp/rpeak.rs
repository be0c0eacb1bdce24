//! R-peak detection (Pan–Tompkins style) and heart rate / HRV from the peaks.
//!
//! Works on a whole slice (a 10 s window or a full recording), not sample by sample, so the
//! filters are run forward and backward (zero phase) and peak positions need no delay
//! correction. Steps:
//! 1. band-pass 5–15 Hz (2nd-order Butterworth HP + LP, each run forward-backward);
//! 2. 5-point derivative, squaring, centred moving-window integration (150 ms);
//! 3. candidates = local maxima of the integrated signal that are the largest within ±100 ms;
//! 4. adaptive thresholds (`SPKI`, `NPKI`, `THR1 = NPKI + ¼(SPKI − NPKI)`, `THR2 = ½·THR1`),
//!    learnt from the first 2 s; 200 ms refractory (a larger candidate inside the refractory
//!    period replaces the previous one); T-wave rejection between 200 and 360 ms (max slope below
//!    half of the previous QRS's); search-back with `THR2` when no beat was found for
//!    1.66 × the mean of the last 8 RR intervals;
//! 5. each detection is refined to the sample of maximum |signal| within ±50 ms in the input
//!    signal after zero-phase baseline removal (0.5 Hz high-pass). Using |·| makes the position
//!    independent of lead polarity (the squared derivative already is).
//!
//! Allocates a few `Vec`s of the input length per call (fine per window / recording; not
//! intended to be called per sample).

use biquad::{Biquad, Coefficients, DirectForm2Transposed, Type};

/// Heart rate and time-domain HRV of one segment, on normal-to-normal (NN) intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HrvStats {
    /// 60000 / mean of the plausible (300–2000 ms) RR intervals: every beat counts.
    pub hr_bpm: f64,
    /// Root mean square of successive differences of adjacent NN intervals.
    pub rmssd_ms: f64,
    /// Sample standard deviation of the NN intervals.
    pub sdnn_ms: f64,
    /// Number of detected beats (peaks) in the segment.
    pub n_beats: usize,
    /// Share of RR intervals that were not normal-to-normal (corrected or dropped, see
    /// [`nn_intervals`]): 0 for a clean sinus rhythm, ≈ 2/3 in trigeminy.
    pub corrected_share: f64,
}

/// RR intervals outside this range (ms) are rejected as artefacts / missed beats.
pub const RR_MIN_MS: f64 = 300.0;
/// See [`RR_MIN_MS`].
pub const RR_MAX_MS: f64 = 2000.0;
/// An RR interval further than this (relative) from the local median is not normal-to-normal.
pub const NN_TOLERANCE: f64 = 0.2;
/// The local median is taken over this many intervals on each side.
const NN_HALF_WINDOW: usize = 5;

/// NN intervals made from RR intervals, with what had to be corrected.
#[derive(Debug, Clone, PartialEq)]
pub struct NnIntervals {
    /// NN intervals (ms) in time order; `None` marks a break where an artefact was dropped
    /// (successive differences never span it).
    pub nn: Vec<Option<f64>>,
    /// RR intervals in.
    pub n_rr: usize,
    /// RR intervals replaced by a correction (ectopic beat, missed or extra detection).
    pub n_corrected: usize,
    /// RR intervals dropped (implausible, or abnormal with no correction that fits).
    pub n_dropped: usize,
    /// Per input interval: true if it was corrected or dropped (not normal-to-normal).
    pub flagged: Vec<bool>,
}

/// Median (sorts `v`); `None` when empty. Shared with [`super::baseline`].
pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// Mean of the middle 60 % (20 % cut at each end): robust to the odd outlier like a median, but
/// not flipping between the two values of an alternating rhythm as a median of an odd count does.
fn trimmed_mean(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let cut = v.len() / 5;
    let mid = &v[cut..v.len() - cut];
    Some(mid.iter().sum::<f64>() / mid.len() as f64)
}

/// Normal-to-normal intervals from RR intervals (ms): a documented simplification of the
/// Lipponen & Tarvainen (2019) correction that Kubios and NeuroKit2 use.
///
/// Each interval is compared with the 20 %-trimmed mean `m` of the plausible intervals within
/// ±[`NN_HALF_WINDOW`] of it (the whole series' median when fewer than 3). (A premature beat
/// and its compensatory pause sum to two normal intervals, so they barely move `m`.)
/// - within ±[`NN_TOLERANCE`] of `m`: normal, kept;
/// - short, and with the next interval summing to ≈ 2·m: an **ectopic beat** (premature beat
///   plus compensatory pause) — the beat is moved to the middle, giving two intervals of half
///   the sum (the interpolation Kubios applies);
/// - short, and with the next interval summing to ≈ m: an **extra detection** — merged;
/// - long and ≈ k·m (k ≥ 2): **missed detection(s)** — split into k equal intervals;
/// - anything else, or outside 300–2000 ms: **dropped**, and successive differences do not
///   span the gap.
pub fn nn_intervals(rr_ms: &[f64]) -> NnIntervals {
    let plausible = |rr: f64| (RR_MIN_MS..=RR_MAX_MS).contains(&rr);
    let mut all: Vec<f64> = rr_ms.iter().copied().filter(|&r| plausible(r)).collect();
    let global = median(&mut all);
    let local = |i: usize| -> Option<f64> {
        let lo = i.saturating_sub(NN_HALF_WINDOW);
        let hi = (i + NN_HALF_WINDOW + 1).min(rr_ms.len());
        let mut w: Vec<f64> = rr_ms[lo..hi]
            .iter()
            .copied()
            .filter(|&r| plausible(r))
            .collect();
        if w.len() >= 3 {
            trimmed_mean(&mut w)
        } else {
            global
        }
    };
    let near = |x: f64, target: f64| (x / target - 1.0).abs() <= NN_TOLERANCE;
    let mut out = NnIntervals {
        nn: Vec::with_capacity(rr_ms.len()),
        n_rr: rr_ms.len(),
        n_corrected: 0,
        n_dropped: 0,
        flagged: vec![true; rr_ms.len()],
    };
    let mut i = 0;
    while i < rr_ms.len() {
        let rr = rr_ms[i];
        let (Some(m), true) = (local(i), plausible(rr)) else {
            out.nn.push(None);
            out.n_dropped += 1;
            i += 1;
            continue;
        };
        if near(rr, m) {
            out.nn.push(Some(rr));
            out.flagged[i] = false;
            i += 1;
            continue;
        }
        let next = rr_ms.get(i + 1).copied().filter(|&r| plausible(r));
        if rr < m {
            if let Some(nx) = next {
                if near(rr + nx, 2.0 * m) {
                    let half = 0.5 * (rr + nx);
                    out.nn.extend([Some(half), Some(half)]);
                    out.n_corrected += 2;
                    i += 2;
                    continue;
                }
                if near(rr + nx, m) {
                    out.nn.push(Some(rr + nx));
                    out.n_corrected += 2;
                    i += 2;
                    continue;
                }
            }
        } else {
            let k = (rr / m).round();
            if k >= 2.0 && near(rr / k, m) {
                for _ in 0..k as usize {
                    out.nn.push(Some(rr / k));
                }
                out.n_corrected += 1;
                i += 1;
                continue;
            }
        }
        out.nn.push(None);
        out.n_dropped += 1;
        i += 1;
    }
    out
}

/// HR / RMSSD / SDNN from peak positions (samples at rate `fs`), on NN intervals
/// ([`nn_intervals`]). `None` with fewer than 2 NN intervals or no adjacent NN pair.
pub fn hrv(peaks: &[usize], fs: f64) -> Option<HrvStats> {
    if !(fs.is_finite() && fs > 0.0) || peaks.len() < 3 {
        return None;
    }
    let rr: Vec<f64> = peaks
        .windows(2)
        .map(|w| (w[1] as f64 - w[0] as f64) * 1000.0 / fs)
        .collect();
    hrv_from_rr(&rr)
}

/// HR / RMSSD / SDNN from consecutive RR intervals in ms — the same rules as [`hrv`], for
/// sensors that report RR intervals themselves (the Heart Rate service, 0x2A37). `n_beats` is
/// `rr.len() + 1`.
pub fn hrv_from_rr(rr_ms: &[f64]) -> Option<HrvStats> {
    let nn = nn_intervals(rr_ms);
    let values: Vec<f64> = nn.nn.iter().flatten().copied().collect();
    let diffs: Vec<f64> = nn
        .nn
        .windows(2)
        .filter_map(|w| Some(w[1]? - w[0]?))
        .collect();
    if values.len() < 2 || diffs.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    // Heart rate counts every beat, ectopic ones included (they are real beats): the mean of
    // all plausible RR intervals. Only the variability indices need NN intervals.
    let plausible: Vec<f64> = rr_ms
        .iter()
        .copied()
        .filter(|r| (RR_MIN_MS..=RR_MAX_MS).contains(r))
        .collect();
    let mean_rr = plausible.iter().sum::<f64>() / plausible.len().max(1) as f64;
    Some(HrvStats {
        hr_bpm: 60_000.0 / mean_rr,
        rmssd_ms: (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt(),
        sdnn_ms: (ss / (values.len() - 1) as f64).sqrt(),
        n_beats: rr_ms.len() + 1,
        corrected_share: if nn.n_rr == 0 {
            0.0
        } else {
            (nn.n_corrected + nn.n_dropped) as f64 / nn.n_rr as f64
        },
    })
}

/// Zero-phase (forward-backward) biquad, primed with the edge values to avoid edge transients.
fn filtfilt(x: &mut [f64], kind: Type<f64>, fs: f64, f0: f64) {
    if x.is_empty() {
        return;
    }
    let Ok(c) = Coefficients::<f64>::from_normalized_params(
        kind,
        f0 / (fs / 2.0),
        std::f64::consts::FRAC_1_SQRT_2,
    ) else {
        return;
    };
    let dc = (c.b0 + c.b1 + c.b2) / (1.0 + c.a1 + c.a2);
    let prime = |f: &mut DirectForm2Transposed<f64>, x0: f64| {
        let y = dc * x0;
        f.s2 = c.b2 * x0 - c.a2 * y;
        f.s1 = c.b1 * x0 - c.a1 * y + f.s2;
    };
    let mut f = DirectForm2Transposed::<f64>::new(c);
    prime(&mut f, x[0]);
    for v in x.iter_mut() {
        *v = f.run(*v);
    }
    let mut f = DirectForm2Transposed::<f64>::new(c);
    prime(&mut f, x[x.len() - 1]);
    for v in x.iter_mut().rev() {
        *v = f.run(*v);
    }
}

/// Detect R peaks in `samples` (any units, any polarity) sampled at `fs` Hz. Returns sample
/// indices in increasing order. Empty for empty/short input (< 0.5 s) or `fs` < 30 Hz.
pub fn detect_rpeaks(samples: &[f32], fs: f64) -> Vec<usize> {
    let n = samples.len();
    if !(fs.is_finite() && fs >= 30.0) || (n as f64) < 0.5 * fs {
        return Vec::new();
    }
    // Sanitise non-finite samples (hold the last finite value).
    let mut raw: Vec<f64> = Vec::with_capacity(n);
    let mut last = samples
        .iter()
        .copied()
        .find(|v| v.is_finite())
        .unwrap_or(0.0) as f64;
    for &v in samples {
        if v.is_finite() {
            last = v as f64;
        }
        raw.push(last);
    }

    // 1. Band-pass 5–15 Hz, zero phase.
    let mut bp = raw.clone();
    filtfilt(&mut bp, Type::HighPass, fs, 5.0);
    filtfilt(&mut bp, Type::LowPass, fs, 15.0f64.min(0.4 * fs));

    // 2. Derivative (5-point, centred), squaring, centred moving-window integration.
    let mut deriv = vec![0.0f64; n];
    for i in 2..n.saturating_sub(2) {
        deriv[i] = (2.0 * bp[i + 1] + bp[i + 2] - bp[i - 2] - 2.0 * bp[i - 1]) * fs / 8.0;
    }
    let win = ((0.150 * fs).round() as usize).max(1);
    let half = win / 2;
    let mut prefix = vec![0.0f64; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + deriv[i] * deriv[i];
    }
    let mwi: Vec<f64> = (0..n)
        .map(|i| {
            let a = i.saturating_sub(half);
            let b = (i + win - half).min(n);
            (prefix[b] - prefix[a]) / win as f64
        })
        .collect();
    drop(prefix);

    // 3. Candidates: local maxima that dominate ±100 ms.
    let nb = ((0.100 * fs).round() as usize).max(1);
    let mut cands: Vec<usize> = Vec::new();
    for i in 1..n.saturating_sub(1) {
        let v = mwi[i];
        if !(v > mwi[i - 1] && v >= mwi[i + 1]) || v <= 0.0 {
            continue;
        }
        let a = i.saturating_sub(nb);
        let b = (i + nb + 1).min(n);
        // Strictly larger before i, or larger-or-equal after i, disqualifies (plateaus keep the first).
        let dominated = mwi[a..i].iter().any(|&u| u > v) || mwi[i + 1..b].iter().any(|&u| u > v);
        if !dominated {
            cands.push(i);
        }
    }
    if cands.is_empty() {
        return Vec::new();
    }

    let slope_half = ((0.075 * fs).round() as usize).max(1);
    let slope_at = |i: usize| -> f64 {
        let a = i.saturating_sub(slope_half);
        let b = (i + slope_half + 1).min(n);
        deriv[a..b].iter().fold(0.0f64, |m, &d| m.max(d.abs()))
    };

    // 4. Adaptive thresholds.
    let learn = ((2.0 * fs) as usize).min(n);
    let max_learn = mwi[..learn].iter().cloned().fold(0.0, f64::max);
    let mean_learn = mwi[..learn].iter().sum::<f64>() / learn.max(1) as f64;
    let mut spki = 0.25 * max_learn;
    let mut npki = 0.5 * mean_learn;
    let mut thr1 = npki + 0.25 * (spki - npki);

    let refractory = (0.200 * fs).round() as usize;
    let twave = (0.360 * fs).round() as usize;
    let mut qrs: Vec<usize> = Vec::new();
    let mut qrs_slope: Vec<f64> = Vec::new();
    let mut rr: Vec<f64> = Vec::new(); // last ≤ 8 RR intervals, samples
    let mut noise_buf: Vec<usize> = Vec::new(); // noise candidates since the last QRS

    let rr_avg = |rr: &Vec<f64>| -> f64 {
        if rr.is_empty() {
            fs
        } else {
            rr.iter().sum::<f64>() / rr.len() as f64
        }
    };
    let push_rr = |rr: &mut Vec<f64>, v: f64| {
        if rr.len() == 8 {
            rr.remove(0);
        }
        rr.push(v);
    };

    // Accept candidate `i` as a QRS (caller updates SPKI).
    macro_rules! accept {
        ($i:expr) => {{
            let i = $i;
            if let Some(&l) = qrs.last() {
                push_rr(&mut rr, (i - l) as f64);
            }
            qrs.push(i);
            qrs_slope.push(slope_at(i));
            noise_buf.clear();
        }};
    }

    let mut ci = 0usize;
    loop {
        let (pos, val) = if ci < cands.len() {
            (cands[ci], mwi[cands[ci]])
        } else {
            (n, f64::NAN) // end of signal: only the search-back runs
        };

        // Search-back: no beat for 1.66 × RR average → best noise candidate above THR2.
        loop {
            let last = qrs.last().copied();
            let since = pos - last.unwrap_or(0);
            if (since as f64) <= 1.66 * rr_avg(&rr) {
                break;
            }
            let thr2 = 0.5 * thr1;
            let mut best: Option<usize> = None;
            for &j in &noise_buf {
                if j >= pos {
                    continue;
                }
                if let Some(l) = last {
                    if j < l + refractory {
                        continue;
                    }
                    if j < l + twave && slope_at(j) < 0.5 * qrs_slope[qrs_slope.len() - 1] {
                        continue;
                    }
                }
                if mwi[j] > thr2 && best.is_none_or(|b| mwi[j] > mwi[b]) {
                    best = Some(j);
                }
            }
            match best {
                Some(j) => {
                    spki = 0.25 * mwi[j] + 0.75 * spki;
                    thr1 = npki + 0.25 * (spki - npki);
                    let keep: Vec<usize> = noise_buf.iter().copied().filter(|&k| k > j).collect();
                    accept!(j);
                    noise_buf = keep;
                }
                None => break,
            }
        }
        if ci >= cands.len() {
            break;
        }
        ci += 1;

        if let Some(&l) = qrs.last() {
            if pos - l < refractory {
                // Inside the refractory period: a larger candidate replaces the previous QRS.
                if val > mwi[l] {
                    qrs.pop();
                    qrs_slope.pop();
                    let prev = qrs.last().copied();
                    if prev.is_some() {
                        rr.pop();
                    }
                    accept!(pos);
                }
                continue;
            }
        }
        let mut is_qrs = val > thr1;
        if is_qrs {
            if let Some(&l) = qrs.last() {
                if pos - l < twave && slope_at(pos) < 0.5 * qrs_slope[qrs_slope.len() - 1] {
                    is_qrs = false; // T wave
                }
            }
        }
        if is_qrs {
            spki = 0.125 * val + 0.875 * spki;
            accept!(pos);
        } else {
            npki = 0.125 * val + 0.875 * npki;
            noise_buf.push(pos);
        }
        thr1 = npki + 0.25 * (spki - npki);
    }

    // 5. Refine to max |x − baseline| within ±50 ms.
    let mut base = raw;
    filtfilt(&mut base, Type::HighPass, fs, 0.5);
    let r = ((0.050 * fs).round() as usize).max(1);
    let mut peaks: Vec<usize> = Vec::with_capacity(qrs.len());
    for &q in &qrs {
        let a = q.saturating_sub(r);
        let b = (q + r + 1).min(n);
        let mut best = q.min(n - 1);
        let mut best_v = -1.0;
        for (k, &v) in base[a..b].iter().enumerate() {
            if v.abs() > best_v {
                best_v = v.abs();
                best = a + k;
            }
        }
        match peaks.last_mut() {
            // Two detections refined onto (nearly) the same beat: keep the larger.
            Some(p) if best < *p + refractory => {
                if best > *p && base[best].abs() > base[*p].abs() {
                    *p = best;
                }
            }
            _ => peaks.push(best),
        }
    }
    peaks
}

#[cfg(test)]
mod nn_tests {
    use super::*;

    #[test]
    fn clean_rhythm_is_untouched() {
        let rr = [800.0, 820.0, 790.0, 810.0, 805.0, 795.0];
        let nn = nn_intervals(&rr);
        assert_eq!(nn.nn, rr.iter().map(|&r| Some(r)).collect::<Vec<_>>());
        assert_eq!((nn.n_corrected, nn.n_dropped), (0, 0));
        assert_eq!(hrv_from_rr(&rr).unwrap().corrected_share, 0.0);
    }

    /// Trigeminy (every third beat premature, then a compensatory pause) as in the Polar
    /// recording's wearer: uncorrected, the short/long alternation inflates RMSSD several-fold.
    #[test]
    fn trigeminy_is_corrected_to_the_sinus_rhythm() {
        let mut rr = Vec::new();
        for k in 0..10 {
            let base = 1000.0 + 10.0 * (k % 2) as f64;
            rr.extend([base, 600.0, 1400.0]);
        }
        let h = hrv_from_rr(&rr).unwrap();
        assert!(h.rmssd_ms < 20.0, "corrected RMSSD {}", h.rmssd_ms);
        assert!((h.hr_bpm - 60.0).abs() < 1.0, "{}", h.hr_bpm);
        assert!(
            (h.corrected_share - 2.0 / 3.0).abs() < 0.05,
            "{}",
            h.corrected_share
        );
        // What the old rule (plausible range only) reported on the same intervals.
        let raw: f64 = (rr.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum::<f64>()
            / (rr.len() - 1) as f64)
            .sqrt();
        assert!(raw > 500.0, "{raw}");
    }

    /// A strongly alternating rhythm (800/1000 ms) is not ectopy: a median reference would
    /// flip between the two values with the window's parity and flag every other interval.
    #[test]
    fn alternating_rhythm_is_kept() {
        let rr: Vec<f64> = (0..30)
            .map(|k| if k % 2 == 0 { 800.0 } else { 1000.0 })
            .collect();
        let nn = nn_intervals(&rr);
        assert_eq!((nn.n_corrected, nn.n_dropped), (0, 0));
    }

    #[test]
    fn missed_and_extra_detections_and_artefacts() {
        // A missed beat (1600 = 2 × 800) is split; an extra detection (300 + 500) is merged;
        // 250 ms is implausible and dropped, breaking the successive differences.
        let rr = [
            800.0, 810.0, 1600.0, 790.0, 300.0, 500.0, 800.0, 250.0, 805.0, 800.0,
        ];
        let nn = nn_intervals(&rr);
        assert_eq!(
            nn.nn,
            vec![
                Some(800.0),
                Some(810.0),
                Some(800.0),
                Some(800.0),
                Some(790.0),
                Some(800.0),
                Some(800.0),
                None,
                Some(805.0),
                Some(800.0)
            ]
        );
        assert_eq!((nn.n_rr, nn.n_corrected, nn.n_dropped), (10, 3, 1));
    }
}
