//! The network as plain arrays: the paper's encoder geometry, the weights that cross module
//! borders (training → ONNX → serving → retraining), their validation and a plain-Rust
//! reference forward pass.
//!
//! No framework types here: burn tensors stay inside `learn`, ort sessions inside `infer`, and
//! what moves between them is a [`NetworkWeights`]. The reference forward (naive loops, f64
//! accumulation) is the ground truth that both the exported ONNX graph and the training
//! framework are tested against.

use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::WINDOW_LEN;
use super::{EMBEDDING_NAME, FEATURES_NAME, INPUT_NAME};

/// LeakyReLU negative slope (TensorFlow's `leaky_relu` default, as in the authors' code).
pub const LEAKY_SLOPE: f32 = 0.2;
/// Max-pool kernel and stride.
pub const POOL_KERNEL: usize = 8;
pub const POOL_STRIDE: usize = 2;
/// (in, out, kernel) of the paper's six convolutions.
pub const PAPER_CONVS: [(usize, usize, usize); 6] = [
    (1, 32, 32),
    (32, 32, 32),
    (32, 64, 16),
    (64, 64, 16),
    (64, 128, 8),
    (128, 128, 8),
];

/// One 1-D convolution, stride 1, TensorFlow `'same'` padding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv1dWeights {
    pub out_ch: usize,
    pub in_ch: usize,
    pub kernel: usize,
    /// `[out][in][k]`, row-major.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// One dense layer: `y = W x + b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseWeights {
    pub in_dim: usize,
    pub out_dim: usize,
    /// `[out][in]`, row-major.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// One output head: hidden layers each followed by LeakyReLU(0.2); the last layer has
/// `out_dim == 1` and is followed by a sigmoid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadWeights {
    pub name: String,
    pub layers: Vec<DenseWeights>,
}

/// The whole network: the convolutional encoder and any number of heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkWeights {
    /// Six for the paper's encoder (any even number ≥ 2 is accepted: a max pool follows every
    /// second convolution except the last pair).
    pub convs: Vec<Conv1dWeights>,
    pub heads: Vec<HeadWeights>,
    /// Names of the window features fed beside the ECG (graph input [`FEATURES_NAME`],
    /// `[N, features.len()]`), in order; every head then reads the embedding followed by
    /// these. Empty for the paper's ECG-only network (and every v1 model).
    #[serde(default)]
    pub features: Vec<String>,
}

/// Weights that do not form a network this crate can run (the message says which layer).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct WeightsError(pub String);

/// TensorFlow `'same'` padding for stride 1: `(left, right)` with `left = (k−1)/2`.
pub fn same_padding(kernel: usize) -> (usize, usize) {
    let total = kernel.saturating_sub(1);
    let left = total / 2;
    (left, total - left)
}

/// Length after a max pool without padding.
pub fn pool_len(len: usize) -> usize {
    if len < POOL_KERNEL {
        0
    } else {
        (len - POOL_KERNEL) / POOL_STRIDE + 1
    }
}

/// Whether a max pool follows convolution `i` (0-based) of `n`.
pub fn pool_after(i: usize, n: usize) -> bool {
    i % 2 == 1 && i + 1 < n
}

impl NetworkWeights {
    /// Width of the embedding (output channels of the last convolution).
    pub fn embedding_dim(&self) -> usize {
        self.convs.last().map(|c| c.out_ch).unwrap_or(0)
    }

    /// Width of every head's input: the embedding, then the [`features`](Self::features).
    pub fn head_input_dim(&self) -> usize {
        self.embedding_dim() + self.features.len()
    }

    pub fn head_names(&self) -> Vec<String> {
        self.heads.iter().map(|h| h.name.clone()).collect()
    }

    /// Check every shape; the first problem found is reported.
    pub fn validate(&self) -> Result<(), WeightsError> {
        let bad = |m: String| Err(WeightsError(m));
        if self.convs.len() < 2 || !self.convs.len().is_multiple_of(2) {
            return bad(format!(
                "expected an even number (≥ 2) of convolutions, got {}",
                self.convs.len()
            ));
        }
        let mut ch = 1usize;
        let mut len = WINDOW_LEN;
        for (i, c) in self.convs.iter().enumerate() {
            let n = i + 1;
            if c.in_ch != ch {
                return bad(format!(
                    "conv{n}: in_ch {} but the previous layer gives {ch}",
                    c.in_ch
                ));
            }
            if c.out_ch == 0 || c.kernel == 0 {
                return bad(format!("conv{n}: zero out_ch or kernel"));
            }
            if c.weight.len() != c.out_ch * c.in_ch * c.kernel {
                return bad(format!(
                    "conv{n}: weight has {} values, expected out×in×k = {}×{}×{} = {}",
                    c.weight.len(),
                    c.out_ch,
                    c.in_ch,
                    c.kernel,
                    c.out_ch * c.in_ch * c.kernel
                ));
            }
            if c.bias.len() != c.out_ch {
                return bad(format!(
                    "conv{n}: bias has {} values, expected {}",
                    c.bias.len(),
                    c.out_ch
                ));
            }
            if let Some(j) = c.weight.iter().chain(&c.bias).position(|v| !v.is_finite()) {
                return bad(format!("conv{n}: non-finite value at index {j}"));
            }
            ch = c.out_ch;
            if pool_after(i, self.convs.len()) {
                len = pool_len(len);
                if len == 0 {
                    return bad(format!("conv{n}: sequence too short to pool"));
                }
            }
        }
        if self.heads.is_empty() {
            return bad("no heads".into());
        }
        let reserved = [INPUT_NAME, EMBEDDING_NAME, FEATURES_NAME];
        for (fi, f) in self.features.iter().enumerate() {
            if f.is_empty() || f.contains([',', '\0']) || self.features[..fi].contains(f) {
                return bad(format!(
                    "feature {fi}: name {f:?} is empty, contains `,` or NUL, or appears twice"
                ));
            }
        }
        for (hi, h) in self.heads.iter().enumerate() {
            if h.name.is_empty() || h.name.contains('\0') || h.name.starts_with("ag.") {
                return bad(format!(
                    "head {hi}: name {:?} is empty, contains NUL or starts with the reserved `ag.`",
                    h.name
                ));
            }
            if reserved.contains(&h.name.as_str()) {
                return bad(format!("head {hi}: name {:?} is reserved", h.name));
            }
            if self.heads[..hi].iter().any(|o| o.name == h.name) {
                return bad(format!("head name {:?} appears twice", h.name));
            }
            if h.layers.is_empty() {
                return bad(format!("head {:?}: no layers", h.name));
            }
            let mut dim = ch + self.features.len();
            for (li, l) in h.layers.iter().enumerate() {
                if l.in_dim != dim {
                    return bad(format!(
                        "head {:?} layer {li}: in_dim {} but the previous layer gives {dim}",
                        h.name, l.in_dim
                    ));
                }
                if l.out_dim == 0 {
                    return bad(format!("head {:?} layer {li}: out_dim 0", h.name));
                }
                if l.weight.len() != l.in_dim * l.out_dim || l.bias.len() != l.out_dim {
                    return bad(format!(
                        "head {:?} layer {li}: weight {} / bias {} values, expected {} / {}",
                        h.name,
                        l.weight.len(),
                        l.bias.len(),
                        l.in_dim * l.out_dim,
                        l.out_dim
                    ));
                }
                if let Some(j) = l.weight.iter().chain(&l.bias).position(|v| !v.is_finite()) {
                    return bad(format!(
                        "head {:?} layer {li}: non-finite value at index {j}",
                        h.name
                    ));
                }
                dim = l.out_dim;
            }
            if dim != 1 {
                return bad(format!(
                    "head {:?}: last layer has out_dim {dim}, expected 1",
                    h.name
                ));
            }
        }
        Ok(())
    }

    /// Deterministic He-uniform initialisation of the paper's encoder plus the given heads
    /// (`(name, hidden widths)`), biases small and non-zero. For tests, fixtures and
    /// benchmarks: the same numbers for the same seed (see [`crate::rng`]).
    pub fn seeded(heads: &[(&str, &[usize])], seed: u64) -> NetworkWeights {
        let mut rng = crate::rng::seeded(seed ^ 0x6166_6665_6374_6761);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let a = (6.0 / fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * a) as f32)
                .collect()
        };
        let convs = PAPER_CONVS
            .iter()
            .map(|&(i, o, k)| Conv1dWeights {
                out_ch: o,
                in_ch: i,
                kernel: k,
                weight: uniform(o * i * k, i * k),
                bias: uniform(o, 100 * i * k),
            })
            .collect::<Vec<_>>();
        let emb = PAPER_CONVS[5].1;
        let heads = heads
            .iter()
            .map(|(name, hidden)| {
                let mut dims = vec![emb];
                dims.extend_from_slice(hidden);
                dims.push(1);
                HeadWeights {
                    name: name.to_string(),
                    layers: dims
                        .windows(2)
                        .map(|d| DenseWeights {
                            in_dim: d[0],
                            out_dim: d[1],
                            weight: uniform(d[0] * d[1], d[0]),
                            bias: uniform(d[1], 100 * d[0]),
                        })
                        .collect(),
                }
            })
            .collect();
        NetworkWeights {
            convs,
            heads,
            features: Vec::new(),
        }
    }
}

// ───────────────────────────── reference forward ─────────────────────────────

fn leaky(v: f64) -> f64 {
    if v >= 0.0 {
        v
    } else {
        LEAKY_SLOPE as f64 * v
    }
}

/// `x`: `[in_ch][len]` → `[out_ch][len]` ('same' padding, stride 1), LeakyReLU applied.
fn ref_conv(c: &Conv1dWeights, x: &[f64], len: usize) -> Vec<f64> {
    let (left, _) = same_padding(c.kernel);
    let k = c.kernel;
    // Zero-padded copy of every input channel: padded[i][left + t] = x[i][t].
    let plen = len + k - 1;
    let mut padded = vec![0.0f64; c.in_ch * plen];
    for i in 0..c.in_ch {
        padded[i * plen + left..i * plen + left + len].copy_from_slice(&x[i * len..(i + 1) * len]);
    }
    let mut out = vec![0.0f64; c.out_ch * len];
    for o in 0..c.out_ch {
        let acc = &mut out[o * len..(o + 1) * len];
        acc.fill(c.bias[o] as f64);
        for i in 0..c.in_ch {
            let w = &c.weight[(o * c.in_ch + i) * k..(o * c.in_ch + i + 1) * k];
            let p = &padded[i * plen..(i + 1) * plen];
            for (t, a) in acc.iter_mut().enumerate() {
                let win = &p[t..t + k];
                let mut s = 0.0f64;
                for j in 0..k {
                    s += w[j] as f64 * win[j];
                }
                *a += s;
            }
        }
        for a in acc.iter_mut() {
            *a = leaky(*a);
        }
    }
    out
}

fn ref_pool(x: &[f64], ch: usize, len: usize) -> (Vec<f64>, usize) {
    let olen = pool_len(len);
    let mut out = vec![0.0f64; ch * olen];
    for c in 0..ch {
        for t in 0..olen {
            let s = &x[c * len + t * POOL_STRIDE..c * len + t * POOL_STRIDE + POOL_KERNEL];
            out[c * olen + t] = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        }
    }
    (out, olen)
}

/// Embedding (+ features) → head outputs, in f64, for one window.
fn ref_heads(w: &NetworkWeights, emb: &[f64], features: &[f32]) -> Vec<(String, f32)> {
    assert_eq!(
        features.len(),
        w.features.len(),
        "the network reads {} features",
        w.features.len()
    );
    w.heads
        .iter()
        .map(|h| {
            let mut v = emb.to_vec();
            v.extend(features.iter().map(|&f| f as f64));
            for (li, l) in h.layers.iter().enumerate() {
                let mut y: Vec<f64> = (0..l.out_dim)
                    .map(|o| {
                        let row = &l.weight[o * l.in_dim..(o + 1) * l.in_dim];
                        l.bias[o] as f64
                            + row.iter().zip(&v).map(|(a, b)| *a as f64 * b).sum::<f64>()
                    })
                    .collect();
                if li + 1 < h.layers.len() {
                    y.iter_mut().for_each(|a| *a = leaky(*a));
                }
                v = y;
            }
            (h.name.clone(), (1.0 / (1.0 + (-v[0]).exp())) as f32)
        })
        .collect()
}

/// Plain-Rust forward pass of one window of [`WINDOW_LEN`] samples (naive loops, f64
/// accumulation): the ground truth for the ONNX graph and for the training framework.
/// Returns the embedding and `(head name, sigmoid output)` per head.
///
/// Panics if the weights do not [`validate`](NetworkWeights::validate) or `x` is not one window.
pub fn reference_forward(w: &NetworkWeights, x: &[f32]) -> (Vec<f32>, Vec<(String, f32)>) {
    reference_forward_with(w, x, &vec![0.0; w.features.len()])
}

/// [`reference_forward`] of a network with [`features`](NetworkWeights::features): `features`
/// holds this window's values, in the network's order.
pub fn reference_forward_with(
    w: &NetworkWeights,
    x: &[f32],
    features: &[f32],
) -> (Vec<f32>, Vec<(String, f32)>) {
    if let Err(e) = w.validate() {
        panic!("reference_forward: {e}");
    }
    assert_eq!(
        x.len(),
        WINDOW_LEN,
        "reference_forward takes one window of {WINDOW_LEN} samples"
    );
    let mut len = WINDOW_LEN;
    let mut h: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (i, c) in w.convs.iter().enumerate() {
        h = ref_conv(c, &h, len);
        if pool_after(i, w.convs.len()) {
            let (p, l) = ref_pool(&h, c.out_ch, len);
            h = p;
            len = l;
        }
    }
    let ch = w.embedding_dim();
    let emb: Vec<f64> = (0..ch)
        .map(|c| {
            h[c * len..(c + 1) * len]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let heads = ref_heads(w, &emb, features);
    (emb.iter().map(|&v| v as f32).collect(), heads)
}

/// Heads only, from a given embedding (e.g. to check frozen-encoder fine-tuning).
/// `features` as in [`reference_forward_with`] (empty for an ECG-only network).
pub fn reference_heads(
    w: &NetworkWeights,
    embedding: &[f32],
    features: &[f32],
) -> Vec<(String, f32)> {
    let emb: Vec<f64> = embedding.iter().map(|&v| v as f64).collect();
    ref_heads(w, &emb, features)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_heads() -> Vec<(&'static str, &'static [usize])> {
        vec![("arousal", &[16usize][..]), ("valence", &[8, 4][..])]
    }

    #[test]
    fn reference_forward_hand_checked_pieces() {
        // Single 'same' conv against a hand computation.
        let c = Conv1dWeights {
            out_ch: 1,
            in_ch: 1,
            kernel: 4,
            weight: vec![1.0, 2.0, 3.0, 4.0],
            bias: vec![0.5],
        };
        // k=4 → pad 1 left, 2 right: y[t] = Σ_j w[j]·x[t−1+j] + b.
        let x = [1.0f64, -2.0, 3.0, 0.5, -1.0];
        let y = ref_conv(&c, &x, 5);
        let xp = |i: isize| {
            if (0..5).contains(&i) {
                x[i as usize]
            } else {
                0.0
            }
        };
        for t in 0..5isize {
            let s: f64 = (0..4)
                .map(|j| c.weight[j] as f64 * xp(t - 1 + j as isize))
                .sum::<f64>()
                + 0.5;
            assert!((y[t as usize] - leaky(s)).abs() < 1e-12, "t={t}");
        }
        let (p, l) = ref_pool(&[1.0, 5.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0], 1, 10);
        assert_eq!(l, 2);
        assert_eq!(p, vec![5.0, 9.0]);
        // Whole network: outputs are probabilities, embedding has 128 entries, deterministic.
        let w = NetworkWeights::seeded(&tiny_heads(), 3);
        let x: Vec<f32> = (0..WINDOW_LEN).map(|i| (i as f32 * 0.05).sin()).collect();
        let (e, h) = reference_forward(&w, &x);
        assert_eq!(e.len(), 128);
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|(_, p)| *p > 0.0 && *p < 1.0));
        assert_eq!(reference_heads(&w, &e, &[]).len(), 2);
        for ((n1, a), (n2, b)) in reference_heads(&w, &e, &[]).iter().zip(&h) {
            assert_eq!(n1, n2);
            assert!((a - b).abs() < 1e-6);
        }
    }
}
