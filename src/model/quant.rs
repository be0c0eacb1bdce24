//! i16 quantisation of sample windows, shared by the window store and replay packs: one scale
//! per window, `scale = max|x| / 32767` rounded up, so a window takes 5 KB instead of 10 KB
//! and every sample comes back within `scale / 2`.

/// The per-window quantisation step: `max|x| / 32767` rounded up to an f32 (so no sample
/// exceeds ±32767 steps), or 1 for an all-zero window. Decoding error ≤ `scale / 2`.
pub fn scale(samples: &[f32]) -> f32 {
    let max = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return 1.0;
    }
    let mut scale = (f64::from(max) / 32767.0) as f32;
    if f64::from(scale) * 32767.0 < f64::from(max) {
        scale = scale.next_up();
    }
    scale
}

/// Append `f32 scale` then `n × i16` (little-endian) for `samples`.
pub fn encode(out: &mut Vec<u8>, samples: &[f32]) {
    let scale = scale(samples);
    out.extend_from_slice(&scale.to_le_bytes());
    for &x in samples {
        let q = (f64::from(x) / f64::from(scale))
            .round()
            .clamp(-32767.0, 32767.0) as i16;
        out.extend_from_slice(&q.to_le_bytes());
    }
}

/// The samples of `n × i16` little-endian bytes at step `scale`.
pub fn decode(scale: f32, bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| (f64::from(i16::from_le_bytes([c[0], c[1]])) * f64::from(scale)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..2560).map(|i| (i as f32 * 0.37).sin() * 3.5).collect();
        let mut b = Vec::new();
        encode(&mut b, &x);
        assert_eq!(b.len(), 4 + 2 * x.len());
        let s = f32::from_le_bytes(b[..4].try_into().unwrap());
        let y = decode(s, &b[4..]);
        for (a, c) in x.iter().zip(&y) {
            assert!((a - c).abs() <= s / 2.0 + 1e-6, "{a} {c}");
        }
        assert_eq!(scale(&[0.0; 4]), 1.0);
    }
}
