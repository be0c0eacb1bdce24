//! ONNX export of the paper's network from plain weight arrays, plus the plain-Rust reference
//! forward pass that the exported graph (and the training framework) is checked against.
//!
//! No protoc and no ONNX tooling: the graph is assembled from the prost types that
//! `tract_onnx::pb` already ships and encoded with `prost`.
//!
//! # The graph
//! ```text
//! ecg [N,1,2560] ─ Conv(1→32,k32) ─ LeakyRelu(0.2) ─ Conv(32→32,k32) ─ LeakyRelu ─ MaxPool(8,2)
//!   ─ Conv(32→64,k16) ─ LeakyRelu ─ Conv(64→64,k16) ─ LeakyRelu ─ MaxPool(8,2)
//!   ─ Conv(64→128,k8) ─ LeakyRelu ─ Conv(128→128,k8) ─ LeakyRelu ─ ReduceMax(time) = embedding [N,128]
//! embedding ─ Gemm ─ LeakyRelu ─ … ─ Gemm(…→1) ─ Sigmoid = <head name> [N,1]   (one chain per head)
//! ```
//! Convolutions use TensorFlow `'same'` padding for stride 1 (total `k−1`, the smaller half on
//! the left: k=32 pads 15 left and 16 right), as the authors' TensorFlow code does. Max pools
//! have no padding (2560 → 1277 → 635). A max pool follows every second convolution except
//! the last pair. Dropout is training-only and absent. The graph outputs are the heads, in the
//! order of [`NetworkWeights::heads`], followed by [`EMBEDDING_NAME`].
//!
//! ONNX IR version 7 with the default-domain opset 13: read by tract 0.23 and by every ONNX
//! Runtime since 1.6.
//!
//! The same code exports the seven-head pretext network (it is only a different head list).

use std::collections::HashMap;
use std::fmt::Write as _;

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tract_onnx::pb;

/// Name of the graph input: float32 `[N, 1, 2560]`, `N` dynamic (dimension parameter `batch`).
pub const INPUT_NAME: &str = "ecg";
/// Name of the extra graph output holding the encoder embedding `[N, 128]`.
pub const EMBEDDING_NAME: &str = "embedding";
/// Name of the dynamic batch dimension in the exported graph.
pub const BATCH_DIM: &str = "batch";
/// Samples per window (10 s at 256 Hz): the one window type of the project.
pub use crate::dsp::WINDOW_LEN;
/// LeakyReLU negative slope (TensorFlow's `leaky_relu` default, as in the authors' code).
pub const LEAKY_SLOPE: f32 = 0.2;
/// Max-pool kernel and stride.
pub const POOL_KERNEL: usize = 8;
pub const POOL_STRIDE: usize = 2;
/// ONNX IR version written.
pub const IR_VERSION: i64 = 7;
/// Default-domain opset written.
pub const OPSET: i64 = 13;
/// `producer_name` written into every model.
pub const PRODUCER_NAME: &str = "affectgate";
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
}

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("invalid network weights: {0}")]
    InvalidWeights(String),
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    #[error("not a readable ONNX model: {0}")]
    Decode(String),
}

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

/// Lowercase hex SHA-256 of `bytes` (model cards, release manifests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

impl NetworkWeights {
    /// Width of the embedding (output channels of the last convolution).
    pub fn embedding_dim(&self) -> usize {
        self.convs.last().map(|c| c.out_ch).unwrap_or(0)
    }

    pub fn head_names(&self) -> Vec<String> {
        self.heads.iter().map(|h| h.name.clone()).collect()
    }

    /// Check every shape; the first problem found is reported.
    pub fn validate(&self) -> Result<(), OnnxError> {
        let bad = |m: String| Err(OnnxError::InvalidWeights(m));
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
        let reserved = [INPUT_NAME, EMBEDDING_NAME];
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
            let mut dim = ch;
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
    /// benchmarks: no `rand` dependency, the same numbers on every platform.
    pub fn seeded(heads: &[(&str, &[usize])], seed: u64) -> NetworkWeights {
        let mut rng = SplitMix64(seed ^ 0x6166_6665_6374_6761);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let a = (6.0 / fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * a) as f32)
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
        NetworkWeights { convs, heads }
    }
}

struct SplitMix64(u64);
impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
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

/// Embedding → head outputs, in f64, for one window.
fn ref_heads(w: &NetworkWeights, emb: &[f64]) -> Vec<(String, f32)> {
    w.heads
        .iter()
        .map(|h| {
            let mut v = emb.to_vec();
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
    let heads = ref_heads(w, &emb);
    (emb.iter().map(|&v| v as f32).collect(), heads)
}

/// Heads only, from a given embedding (e.g. to check frozen-encoder fine-tuning).
pub fn reference_heads(w: &NetworkWeights, embedding: &[f32]) -> Vec<(String, f32)> {
    let emb: Vec<f64> = embedding.iter().map(|&v| v as f64).collect();
    ref_heads(w, &emb)
}

// ───────────────────────────────── export ─────────────────────────────────

fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// A float tensor value info; `None` dims are the dynamic batch.
fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => Value::DimValue(*v as i64),
                                None => Value::DimParam(BATCH_DIM.into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Build the ONNX graph as a prost [`pb::ModelProto`] (see the module docs for its layout).
pub fn build_model(
    w: &NetworkWeights,
    meta: &[(String, String)],
    producer_version: &str,
) -> Result<pb::ModelProto, OnnxError> {
    w.validate()?;
    for (i, (k, v)) in meta.iter().enumerate() {
        if k.is_empty() {
            return Err(OnnxError::InvalidMetadata(format!(
                "entry {i} has an empty key"
            )));
        }
        if meta[..i].iter().any(|(k2, _)| k2 == k) {
            // ONNX Runtime refuses models with duplicate metadata keys.
            return Err(OnnxError::InvalidMetadata(format!(
                "key {k:?} appears twice"
            )));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(OnnxError::InvalidMetadata(format!(
                "key {k:?}: NUL character"
            )));
        }
    }

    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = INPUT_NAME.to_string();
    for (i, c) in w.convs.iter().enumerate() {
        let n = i + 1;
        let (wn, bn, yn, an) = (
            format!("ag.conv{n}.W"),
            format!("ag.conv{n}.B"),
            format!("ag.conv{n}"),
            format!("ag.conv{n}.act"),
        );
        inits.push(f32_tensor(&wn, &[c.out_ch, c.in_ch, c.kernel], &c.weight));
        inits.push(f32_tensor(&bn, &[c.out_ch], &c.bias));
        let (l, r) = same_padding(c.kernel);
        nodes.push(node(
            "Conv",
            &yn,
            &[&cur, &wn, &bn],
            &yn,
            vec![
                attr_ints("kernel_shape", &[c.kernel as i64]),
                attr_ints("pads", &[l as i64, r as i64]),
                attr_ints("strides", &[1]),
                attr_ints("dilations", &[1]),
                attr_int("group", 1),
            ],
        ));
        nodes.push(node(
            "LeakyRelu",
            &an,
            &[&yn],
            &an,
            vec![attr_float("alpha", LEAKY_SLOPE)],
        ));
        cur = an;
        if pool_after(i, w.convs.len()) {
            let pn = format!("ag.pool{}", n / 2);
            nodes.push(node(
                "MaxPool",
                &pn,
                &[&cur],
                &pn,
                vec![
                    attr_ints("kernel_shape", &[POOL_KERNEL as i64]),
                    attr_ints("strides", &[POOL_STRIDE as i64]),
                    attr_ints("pads", &[0, 0]),
                ],
            ));
            cur = pn;
        }
    }
    // Global max over time: ReduceMax keeps `axes` as an attribute up to opset 17.
    nodes.push(node(
        "ReduceMax",
        EMBEDDING_NAME,
        &[&cur],
        EMBEDDING_NAME,
        vec![attr_ints("axes", &[2]), attr_int("keepdims", 0)],
    ));

    let mut outputs = Vec::new();
    for (hi, h) in w.heads.iter().enumerate() {
        let mut cur = EMBEDDING_NAME.to_string();
        for (li, l) in h.layers.iter().enumerate() {
            let p = format!("ag.head{hi}.dense{li}");
            let (wn, bn) = (format!("{p}.W"), format!("{p}.B"));
            inits.push(f32_tensor(&wn, &[l.out_dim, l.in_dim], &l.weight));
            inits.push(f32_tensor(&bn, &[l.out_dim], &l.bias));
            nodes.push(node(
                "Gemm",
                &p,
                &[&cur, &wn, &bn],
                &p,
                vec![
                    attr_float("alpha", 1.0),
                    attr_float("beta", 1.0),
                    attr_int("transA", 0),
                    attr_int("transB", 1),
                ],
            ));
            if li + 1 < h.layers.len() {
                let an = format!("{p}.act");
                nodes.push(node(
                    "LeakyRelu",
                    &an,
                    &[&p],
                    &an,
                    vec![attr_float("alpha", LEAKY_SLOPE)],
                ));
                cur = an;
            } else {
                nodes.push(node(
                    "Sigmoid",
                    &format!("{p}.sigmoid"),
                    &[&p],
                    &h.name,
                    vec![],
                ));
            }
        }
        outputs.push(value_info(&h.name, &[None, Some(1)]));
    }
    outputs.push(value_info(EMBEDDING_NAME, &[None, Some(w.embedding_dim())]));

    let mut doc = String::from("affectgate ECG network: ");
    let _ = write!(doc, "{} convolutions, heads:", w.convs.len());
    for h in &w.heads {
        let _ = write!(doc, " {}", h.name);
    }

    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: PRODUCER_NAME.into(),
        producer_version: producer_version.into(),
        domain: "org.affectgate".into(),
        model_version: 1,
        doc_string: doc,
        graph: Some(pb::GraphProto {
            name: "affectgate".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info(INPUT_NAME, &[None, Some(1), Some(WINDOW_LEN)])],
            output: outputs,
            ..Default::default()
        }),
        metadata_props: meta
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    })
}

/// Serialise the network as ONNX `ModelProto` bytes. `meta` becomes `metadata_props`
/// (keys must be unique and non-empty); `producer_version` is written as is.
pub fn export_onnx(
    w: &NetworkWeights,
    meta: &[(String, String)],
    producer_version: &str,
) -> Result<Vec<u8>, OnnxError> {
    Ok(build_model(w, meta, producer_version)?.encode_to_vec())
}

// ───────────────────────────────── reading back ─────────────────────────────────

/// What [`inspect`] reads back from ONNX bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub ir_version: i64,
    /// Default-domain opset.
    pub opset: Option<i64>,
    pub producer_name: String,
    pub producer_version: String,
    /// Graph inputs (initializers excluded) with their dims; `None` = symbolic/unknown.
    pub inputs: Vec<(String, Vec<Option<i64>>)>,
    pub outputs: Vec<String>,
    pub metadata: Vec<(String, String)>,
}

impl ModelInfo {
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Outputs except [`EMBEDDING_NAME`].
    pub fn head_names(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|o| *o != EMBEDDING_NAME)
            .cloned()
            .collect()
    }
}

/// Decode ONNX bytes and summarise them (metadata, inputs, outputs) without building a session.
pub fn inspect(bytes: &[u8]) -> Result<ModelInfo, OnnxError> {
    let m = decode(bytes)?;
    let g = graph(&m)?;
    let dims = |vi: &pb::ValueInfoProto| -> Vec<Option<i64>> {
        match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        }
    };
    Ok(ModelInfo {
        ir_version: m.ir_version,
        opset: m
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version),
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        inputs: g
            .input
            .iter()
            .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
            .map(|i| (i.name.clone(), dims(i)))
            .collect(),
        outputs: g.output.iter().map(|o| o.name.clone()).collect(),
        metadata: m
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
    })
}

fn decode(bytes: &[u8]) -> Result<pb::ModelProto, OnnxError> {
    pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(format!("protobuf: {e}")))
}

fn graph(m: &pb::ModelProto) -> Result<&pb::GraphProto, OnnxError> {
    m.graph
        .as_ref()
        .ok_or_else(|| OnnxError::Decode("no graph".into()))
}

// Reading an affectgate network back out of its own ONNX file (the inverse of
// `export_onnx`): the pretext model written by `pretrain` is the encoder that `finetune` starts
// from, and a shipped model is where on-gateway retraining starts. One file format for
// checkpoints and serving, so what was evaluated is what is retrained.

fn floats(t: &pb::TensorProto) -> Result<Vec<f32>, OnnxError> {
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return Err(OnnxError::Decode(format!(
            "initializer {}: raw data is {} bytes, not a whole number of float32",
            t.name,
            t.raw_data.len()
        )));
    }
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Weights and metadata of an ONNX file written by [`super::onnx::export_onnx`].
pub fn import_onnx(bytes: &[u8]) -> Result<(NetworkWeights, Vec<(String, String)>), OnnxError> {
    let m = decode(bytes)?;
    let g = graph(&m)?;
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>), OnnxError> {
        let t = inits.get(name).ok_or_else(|| {
            OnnxError::Decode(format!(
                "initializer {name} missing: not an affectgate network (or from an incompatible version)"
            ))
        })?;
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let v = floats(t)?;
        if v.len() != dims.iter().product::<usize>() {
            return Err(OnnxError::Decode(format!(
                "initializer {name}: {} values for shape {dims:?}",
                v.len()
            )));
        }
        Ok((dims, v))
    };
    let mut convs = Vec::new();
    for n in 1.. {
        let wn = format!("ag.conv{n}.W");
        if !inits.contains_key(wn.as_str()) {
            break;
        }
        let (d, weight) = get(&wn)?;
        let (_, bias) = get(&format!("ag.conv{n}.B"))?;
        if d.len() != 3 {
            return Err(OnnxError::Decode(format!(
                "{wn}: expected 3 dims, got {d:?}"
            )));
        }
        convs.push(Conv1dWeights {
            out_ch: d[0],
            in_ch: d[1],
            kernel: d[2],
            weight,
            bias,
        });
    }
    if convs.len() != 6 {
        return Err(OnnxError::Decode(format!(
            "expected the paper's 6 convolutions, found {}",
            convs.len()
        )));
    }
    let head_names: Vec<String> = g
        .output
        .iter()
        .map(|o| o.name.clone())
        .filter(|n| n != EMBEDDING_NAME)
        .collect();
    let mut heads = Vec::new();
    for (hi, name) in head_names.iter().enumerate() {
        let mut layers = Vec::new();
        for li in 0.. {
            let p = format!("ag.head{hi}.dense{li}");
            if !inits.contains_key(format!("{p}.W").as_str()) {
                break;
            }
            let (d, weight) = get(&format!("{p}.W"))?;
            let (_, bias) = get(&format!("{p}.B"))?;
            if d.len() != 2 {
                return Err(OnnxError::Decode(format!(
                    "{p}.W: expected 2 dims, got {d:?}"
                )));
            }
            layers.push(DenseWeights {
                in_dim: d[1],
                out_dim: d[0],
                weight,
                bias,
            });
        }
        if layers.is_empty() {
            return Err(OnnxError::Decode(format!("head {name}: no dense layers")));
        }
        heads.push(HeadWeights {
            name: name.clone(),
            layers,
        });
    }
    let meta = m
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    Ok((NetworkWeights { convs, heads }, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_heads() -> Vec<(&'static str, &'static [usize])> {
        vec![("arousal", &[16usize][..]), ("valence", &[8, 4][..])]
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(32), (15, 16));
        assert_eq!(same_padding(16), (7, 8));
        assert_eq!(same_padding(8), (3, 4));
        assert_eq!(same_padding(3), (1, 1));
        assert_eq!(same_padding(1), (0, 0));
        assert_eq!(pool_len(2560), 1277);
        assert_eq!(pool_len(1277), 635);
    }

    #[test]
    fn export_round_trips_through_prost() {
        let w = NetworkWeights::seeded(&tiny_heads(), 1);
        let meta = vec![
            ("model_version".to_string(), "7".to_string()),
            ("task".to_string(), "emotion".to_string()),
        ];
        let bytes = export_onnx(&w, &meta, "0.1.0").unwrap();
        let info = inspect(&bytes).unwrap();
        assert_eq!(info.ir_version, IR_VERSION);
        assert_eq!(info.opset, Some(OPSET));
        assert_eq!(info.producer_name, PRODUCER_NAME);
        assert_eq!(info.producer_version, "0.1.0");
        assert_eq!(
            info.inputs,
            vec![(INPUT_NAME.to_string(), vec![None, Some(1), Some(2560)])]
        );
        assert_eq!(info.outputs, vec!["arousal", "valence", "embedding"]);
        assert_eq!(info.head_names(), vec!["arousal", "valence"]);
        assert_eq!(info.metadata, meta);
        assert_eq!(info.meta("task"), Some("emotion"));
        // Weights are stored exactly.
        let m = pb::ModelProto::decode(&bytes[..]).unwrap();
        let g = m.graph.unwrap();
        let w1 = g
            .initializer
            .iter()
            .find(|t| t.name == "ag.conv1.W")
            .unwrap();
        assert_eq!(w1.dims, vec![32, 1, 32]);
        let back: Vec<f32> = w1
            .raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, w.convs[0].weight);
        let conv1 = g.node.iter().find(|n| n.name == "ag.conv1").unwrap();
        let pads = conv1.attribute.iter().find(|a| a.name == "pads").unwrap();
        assert_eq!(pads.ints, vec![15, 16]);
        // Deterministic bytes.
        assert_eq!(bytes, export_onnx(&w, &meta, "0.1.0").unwrap());
        assert_eq!(sha256_hex(&bytes).len(), 64);
    }

    #[test]
    fn invalid_weights_and_metadata_are_rejected() {
        let good = NetworkWeights::seeded(&tiny_heads(), 2);
        let mut w = good.clone();
        w.convs[2].weight.pop();
        assert!(
            matches!(export_onnx(&w, &[], "x"), Err(OnnxError::InvalidWeights(m)) if m.contains("conv3"))
        );
        let mut w = good.clone();
        w.heads[1].name = "arousal".into();
        assert!(
            matches!(export_onnx(&w, &[], "x"), Err(OnnxError::InvalidWeights(m)) if m.contains("twice"))
        );
        let mut w = good.clone();
        w.heads[0].name = EMBEDDING_NAME.into();
        assert!(export_onnx(&w, &[], "x").is_err());
        let mut w = good.clone();
        w.heads[0].layers.pop();
        assert!(
            matches!(export_onnx(&w, &[], "x"), Err(OnnxError::InvalidWeights(m)) if m.contains("out_dim"))
        );
        let mut w = good.clone();
        w.convs[0].bias[3] = f32::NAN;
        assert!(export_onnx(&w, &[], "x").is_err());
        let mut w = good.clone();
        w.convs.pop();
        assert!(export_onnx(&w, &[], "x").is_err());
        let dup = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        assert!(matches!(
            export_onnx(&good, &dup, "x"),
            Err(OnnxError::InvalidMetadata(_))
        ));
        assert!(matches!(
            inspect(b"\xff\xff\xff garbage"),
            Err(OnnxError::Decode(_))
        ));
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
        assert_eq!(reference_heads(&w, &e).len(), 2);
        for ((n1, a), (n2, b)) in reference_heads(&w, &e).iter().zip(&h) {
            assert_eq!(n1, n2);
            assert!((a - b).abs() < 1e-6);
        }
    }
}
