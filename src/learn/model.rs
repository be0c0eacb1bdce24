//! The paper's network (Sarkar & Etemad, ICASSP 2020) in burn: one convolutional encoder and
//! any number of dense sigmoid heads.
//!
//! The same [`Net`] type serves both stages of the method:
//! - **pretext**: seven heads (original + six transformations), each Dense128 → Dense128 → 1,
//!   trained with the weighted binary cross-entropy of [`PRETEXT_LOSS_WEIGHTS`];
//! - **emotion**: the pretrained encoder, frozen, plus one Dense512 → Dense512 → 1 head per
//!   emotion dimension (arousal, later valence).
//!
//! Heads return *logits*; the sigmoid lives in the loss (numerically stable BCE-with-logits)
//! and in the exported ONNX graph. Weights move in and out of burn only through
//! [`NetworkWeights`] — the plain-array form the ONNX writer, the reference forward pass and
//! checkpoints share — so no burn type leaks into inference or storage.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::pool::{MaxPool1d, MaxPool1dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig1d};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::weights::{Conv1dWeights, DenseWeights, HeadWeights, NetworkWeights};
use crate::model::WINDOW_LEN;

/// LeakyReLU negative slope used by the authors (`tf.nn.leaky_relu` default).
pub const LEAKY_SLOPE: f64 = crate::model::weights::LEAKY_SLOPE as f64;
/// Dropout in the dense heads, as in the paper.
pub const DROPOUT: f64 = 0.6;
/// Pretext heads, in the order of the authors' code.
pub const PRETEXT_TASKS: [&str; 7] = [
    "original",
    "noise",
    "scale",
    "negate",
    "flip",
    "permute",
    "time_warp",
];
/// Loss weight per pretext head (negation and time reversal are easy tasks and weigh little).
pub const PRETEXT_LOSS_WEIGHTS: [f32; 7] = [0.195, 0.195, 0.195, 0.0125, 0.0125, 0.195, 0.195];
/// Hidden widths of a pretext head.
pub const PRETEXT_HIDDEN: [usize; 2] = [128, 128];
/// Hidden widths of an emotion head.
pub const EMOTION_HIDDEN: [usize; 2] = [512, 512];
/// Encoder output width.
pub const EMBEDDING_DIM: usize = 128;

pub use crate::model::weights::{same_padding, PAPER_CONVS};

/// Conv encoder: [Conv32,k32]×2 → MaxPool(8,2) → [Conv64,k16]×2 → MaxPool(8,2) →
/// [Conv128,k8]×2 → global max over time.
#[derive(Module, Debug)]
pub struct Encoder {
    convs: Vec<Conv1d>,
    pool: MaxPool1d,
}

impl Encoder {
    pub fn new(device: &Device) -> Self {
        let convs = PAPER_CONVS
            .iter()
            .map(|&(i, o, k)| {
                let (l, r) = same_padding(k);
                Conv1dConfig::new(i, o, k)
                    .with_padding(PaddingConfig1d::Explicit(l, r))
                    .init(device)
            })
            .collect();
        let pool = MaxPool1dConfig::new(8).with_stride(2).init();
        Self { convs, pool }
    }

    /// `[N, 1, 2560]` → `[N, 128]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let mut x = x;
        for (i, conv) in self.convs.iter().enumerate() {
            x = leaky_relu(conv.forward(x), LEAKY_SLOPE);
            if i == 1 || i == 3 {
                x = self.pool.forward(x);
            }
        }
        let [n, c, _] = x.dims();
        x.max_dim(2).reshape([n, c])
    }
}

/// Dense head: hidden layers with LeakyReLU + dropout, then one logit.
#[derive(Module, Debug)]
pub struct Head {
    layers: Vec<Linear>,
    dropout: Dropout,
}

impl Head {
    pub fn new(input: usize, hidden: &[usize], device: &Device) -> Self {
        let mut layers = Vec::new();
        let mut d = input;
        for &h in hidden {
            layers.push(LinearConfig::new(d, h).init(device));
            d = h;
        }
        layers.push(LinearConfig::new(d, 1).init(device));
        Self {
            layers,
            dropout: DropoutConfig::new(DROPOUT).init(),
        }
    }

    /// `[N, D]` → logits `[N, 1]`. Dropout is active only on autodiff devices (training).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.dropout.forward(leaky_relu(x, LEAKY_SLOPE));
            }
        }
        x
    }
}

/// Encoder + heads. Logits `[N, heads]`.
#[derive(Module, Debug)]
pub struct Net {
    pub encoder: Encoder,
    pub heads: Vec<Head>,
}

impl Net {
    /// Fresh network with `n_heads` heads of the given hidden widths.
    pub fn new(n_heads: usize, hidden: &[usize], device: &Device) -> Self {
        Self {
            encoder: Encoder::new(device),
            heads: (0..n_heads)
                .map(|_| Head::new(EMBEDDING_DIM, hidden, device))
                .collect(),
        }
    }

    /// Heads over an input of width `input_dim` with a placeholder encoder (for models that
    /// only ever see precomputed features: frozen-encoder heads, the heart-rate baseline).
    pub fn heads_only(n_heads: usize, input_dim: usize, hidden: &[usize], device: &Device) -> Self {
        Self {
            encoder: Encoder::new(device),
            heads: (0..n_heads)
                .map(|_| Head::new(input_dim, hidden, device))
                .collect(),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let emb = self.encoder.forward(x);
        self.forward_heads(emb)
    }

    /// Heads only, on precomputed embeddings `[N, 128]` (frozen-encoder fine-tuning).
    pub fn forward_heads(&self, emb: Tensor<2>) -> Tensor<2> {
        let outs: Vec<Tensor<2>> = self.heads.iter().map(|h| h.forward(emb.clone())).collect();
        Tensor::cat(outs, 1)
    }

    /// Plain-array copy of the weights (burn `Linear` stores `[in, out]`; we store `[out, in]`).
    pub fn to_weights(&self, head_names: &[String]) -> NetworkWeights {
        assert_eq!(head_names.len(), self.heads.len(), "one name per head");
        let convs = self
            .encoder
            .convs
            .iter()
            .map(|c| {
                let [o, i, k] = c.weight.val().dims();
                Conv1dWeights {
                    out_ch: o,
                    in_ch: i,
                    kernel: k,
                    weight: to_vec(c.weight.val()),
                    bias: c
                        .bias
                        .as_ref()
                        .map(|b| to_vec(b.val()))
                        .unwrap_or(vec![0.0; o]),
                }
            })
            .collect();
        let heads = self
            .heads
            .iter()
            .zip(head_names)
            .map(|(h, name)| HeadWeights {
                name: name.clone(),
                layers: h.layers.iter().map(dense_weights).collect(),
            })
            .collect();
        NetworkWeights {
            convs,
            heads,
            features: Vec::new(),
        }
    }

    /// Build a network from plain weights (any head widths).
    pub fn from_weights(w: &NetworkWeights, device: &Device) -> Self {
        let mut net = Self {
            encoder: Encoder::new(device),
            heads: Vec::new(),
        };
        net.encoder = net.encoder.with_weights(&w.convs, device);
        net.heads = w
            .heads
            .iter()
            .map(|h| Head::from_weights(h, device))
            .collect();
        net
    }
}

impl Encoder {
    /// Replace the convolution weights (shapes must match [`PAPER_CONVS`]); an empty slice
    /// keeps the fresh initialisation (heads-only use).
    pub fn with_weights(mut self, convs: &[Conv1dWeights], device: &Device) -> Self {
        if convs.is_empty() {
            return self;
        }
        assert_eq!(convs.len(), self.convs.len(), "six convolutions");
        for (c, w) in self.convs.iter_mut().zip(convs) {
            c.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(w.weight.clone(), [w.out_ch, w.in_ch, w.kernel]),
                device,
            ));
            c.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(w.bias.clone(), [w.out_ch]),
                device,
            )));
        }
        self
    }
}

impl Head {
    fn from_weights(h: &HeadWeights, device: &Device) -> Self {
        let layers = h
            .layers
            .iter()
            .map(|d| {
                let mut lin = LinearConfig::new(d.in_dim, d.out_dim).init(device);
                // [out][in] → burn's [in, out]
                let mut t = vec![0.0f32; d.in_dim * d.out_dim];
                for o in 0..d.out_dim {
                    for i in 0..d.in_dim {
                        t[i * d.out_dim + o] = d.weight[o * d.in_dim + i];
                    }
                }
                lin.weight = Param::from_tensor(Tensor::from_data(
                    TensorData::new(t, [d.in_dim, d.out_dim]),
                    device,
                ));
                lin.bias = Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(d.bias.clone(), [d.out_dim]),
                    device,
                )));
                lin
            })
            .collect();
        Self {
            layers,
            dropout: DropoutConfig::new(DROPOUT).init(),
        }
    }
}

fn dense_weights(l: &Linear) -> DenseWeights {
    let [i, o] = l.weight.val().dims();
    let w = to_vec(l.weight.val());
    let mut t = vec![0.0f32; i * o];
    for a in 0..i {
        for b in 0..o {
            t[b * i + a] = w[a * o + b];
        }
    }
    DenseWeights {
        in_dim: i,
        out_dim: o,
        weight: t,
        bias: l
            .bias
            .as_ref()
            .map(|b| to_vec(b.val()))
            .unwrap_or(vec![0.0; o]),
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float tensor")
}

/// Weighted binary cross-entropy on logits: Σ_h w_h · mean_n BCE(z_nh, y_nh).
/// Stable form: max(z,0) − z·y + log(1 + e^(−|z|)). `sample_weight` (`[N, H]`) lets the
/// emotion heads balance classes.
pub fn weighted_bce(
    logits: Tensor<2>,
    targets: Tensor<2>,
    head_weights: &[f32],
    sample_weight: Option<Tensor<2>>,
) -> Tensor<1> {
    let [n, h] = logits.dims();
    let device = logits.device();
    let per =
        logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    let per = match sample_weight {
        Some(w) => per * w,
        None => per,
    };
    // Same dtype as the logits (f32 in training, f64 in the gradient tests).
    let hw = Tensor::<2>::from_data(
        TensorData::new(head_weights.to_vec(), [1, h]),
        (&device, per.dtype()),
    );
    (per * hw).sum().div_scalar(n as f64).reshape([1])
}

/// Batch a slice of windows into `[N, 1, 2560]`.
pub fn batch_tensor(windows: &[&[f32]], device: &Device) -> Tensor<3> {
    let n = windows.len();
    let mut flat = Vec::with_capacity(n * WINDOW_LEN);
    for w in windows {
        flat.extend_from_slice(w);
    }
    Tensor::from_data(TensorData::new(flat, [n, 1, WINDOW_LEN]), device)
}

/// Matrix `[N, D]` from rows.
pub fn matrix(rows: &[&[f32]], device: &Device) -> Tensor<2> {
    let n = rows.len();
    let d = rows.first().map(|r| r.len()).unwrap_or(0);
    let mut flat = Vec::with_capacity(n * d);
    for r in rows {
        flat.extend_from_slice(r);
    }
    Tensor::from_data(TensorData::new(flat, [n, d]), device)
}

/// Row-major values of a 2-D tensor.
pub fn rows_of(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let v = to_vec(t);
    v.chunks(d.max(1)).map(|c| c.to_vec()).collect()
}
