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

/// Heart rate and time-domain HRV of one segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HrvStats {
    /// 60000 / mean of the accepted RR intervals.
    pub hr_bpm: f64,
    /// Root mean square of successive differences of accepted, adjacent RR intervals.
    pub rmssd_ms: f64,
    /// Sample standard deviation of the accepted RR intervals.
    pub sdnn_ms: f64,
    /// Number of detected beats (peaks) in the segment.
    pub n_beats: usize,
}

/// RR intervals outside this range (ms) are rejected as artefacts / missed beats.
pub const RR_MIN_MS: f64 = 300.0;
/// See [`RR_MIN_MS`].
pub const RR_MAX_MS: f64 = 2000.0;

/// HR / RMSSD / SDNN from peak positions (samples at rate `fs`). RR intervals outside
/// 300–2000 ms are rejected; RMSSD uses only pairs of adjacent accepted intervals.
/// `None` with fewer than 2 accepted intervals or no adjacent accepted pair.
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
    let ok = |rr: f64| (RR_MIN_MS..=RR_MAX_MS).contains(&rr);
    let mut n_ok = 0usize;
    let mut sum = 0.0;
    let mut sum_sq_diff = 0.0;
    let mut n_diff = 0usize;
    let mut prev: Option<f64> = None;
    for &rr in rr_ms {
        if ok(rr) {
            n_ok += 1;
            sum += rr;
            if let Some(p) = prev {
                sum_sq_diff += (rr - p) * (rr - p);
                n_diff += 1;
            }
            prev = Some(rr);
        } else {
            prev = None;
        }
    }
    if n_ok < 2 || n_diff == 0 {
        return None;
    }
    let mean = sum / n_ok as f64;
    let ss: f64 = rr_ms
        .iter()
        .filter(|&&rr| ok(rr))
        .map(|rr| (rr - mean) * (rr - mean))
        .sum();
    Some(HrvStats {
        hr_bpm: 60_000.0 / mean,
        rmssd_ms: (sum_sq_diff / n_diff as f64).sqrt(),
        sdnn_ms: (ss / (n_ok - 1) as f64).sqrt(),
        n_beats: rr_ms.len() + 1,
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
