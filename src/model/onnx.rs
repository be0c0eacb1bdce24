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
//! A *fused* network ([`NetworkWeights::features`] not empty) has a second input
//! `features [N,F]`; its heads read `Concat(embedding, features)` (`[N,128+F]`) instead of the
//! embedding, and the feature names are written to the metadata key [`FEATURES_META`].
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
use tract_onnx::pb;

use super::weights::*;
use super::{EMBEDDING_NAME, FEATURES_NAME, INPUT_NAME, WINDOW_LEN};

/// Name of the dynamic batch dimension in the exported graph.
pub const BATCH_DIM: &str = "batch";
/// ONNX IR version written.
pub const IR_VERSION: i64 = 7;
/// Default-domain opset written.
pub const OPSET: i64 = 13;
/// Metadata key holding a fused network's feature names, comma-separated, in input order.
pub const FEATURES_META: &str = "affectgate.features";
/// `producer_name` written into every model.
pub const PRODUCER_NAME: &str = "affectgate";
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("invalid network weights: {0}")]
    InvalidWeights(#[from] WeightsError),
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    #[error("not a readable ONNX model: {0}")]
    Decode(String),
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

    // A fused network's heads read the embedding followed by the features.
    let head_input = if w.features.is_empty() {
        EMBEDDING_NAME.to_string()
    } else {
        let n = "ag.head_input".to_string();
        nodes.push(node(
            "Concat",
            &n,
            &[EMBEDDING_NAME, FEATURES_NAME],
            &n,
            vec![attr_int("axis", 1)],
        ));
        n
    };
    let mut outputs = Vec::new();
    for (hi, h) in w.heads.iter().enumerate() {
        let mut cur = head_input.clone();
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
    let mut inputs = vec![value_info(INPUT_NAME, &[None, Some(1), Some(WINDOW_LEN)])];
    let mut meta = meta.to_vec();
    meta.retain(|(k, _)| k != FEATURES_META);
    if !w.features.is_empty() {
        let _ = write!(doc, "; features: {}", w.features.join(" "));
        inputs.push(value_info(FEATURES_NAME, &[None, Some(w.features.len())]));
        meta.push((FEATURES_META.to_string(), w.features.join(",")));
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
            input: inputs,
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

/// One graph input or output as declared in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type (`1` = float32); `None` if it is not a tensor.
    pub elem_type: Option<i32>,
    /// Dimensions (`None` = symbolic or unknown); `None` if no shape is declared.
    pub dims: Option<Vec<Option<i64>>>,
}

/// What [`inspect`] reads back from ONNX bytes: the one reader of ONNX files' outline, for
/// `model show`, the serving checks in `infer` and release tooling.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub ir_version: i64,
    /// Default-domain opset.
    pub opset: Option<i64>,
    pub producer_name: String,
    pub producer_version: String,
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Number of graph nodes.
    pub nodes: usize,
    pub metadata: Vec<(String, String)>,
    /// The first float32 initializer holding a NaN or ±inf, and the index of that value: a
    /// model whose weights are damaged this way may still run and serve constant scores.
    pub non_finite: Option<(String, usize)>,
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
            .filter(|o| o.name != EMBEDDING_NAME)
            .map(|o| o.name.clone())
            .collect()
    }
}

fn tensor_info(vi: &pb::ValueInfoProto) -> TensorInfo {
    let (elem_type, dims) = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => (
            Some(t.elem_type),
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            }),
        ),
        None => (None, None),
    };
    TensorInfo {
        name: vi.name.clone(),
        elem_type,
        dims,
    }
}

/// Decode ONNX bytes and summarise them (metadata, inputs, outputs) without building a session.
pub fn inspect(bytes: &[u8]) -> Result<ModelInfo, OnnxError> {
    let m = decode(bytes)?;
    let g = graph(&m)?;
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
            .map(tensor_info)
            .collect(),
        outputs: g.output.iter().map(tensor_info).collect(),
        nodes: g.node.len(),
        metadata: m
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
        non_finite: g
            .initializer
            .iter()
            .filter(|t| t.data_type == 1) // FLOAT
            .find_map(|t| {
                let v = floats(t).ok()?;
                Some((t.name.clone(), v.iter().position(|x| !x.is_finite())?))
            }),
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

/// Weights and metadata of an ONNX file written by [`export_onnx`].
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
    let meta: Vec<(String, String)> = m
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let features: Vec<String> = meta
        .iter()
        .find(|(k, _)| k == FEATURES_META)
        .map(|(_, v)| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let has_input = g.input.iter().any(|i| i.name == FEATURES_NAME);
    if has_input == features.is_empty() {
        return Err(OnnxError::Decode(format!(
            "the graph {} a `{FEATURES_NAME}` input but its metadata {} `{FEATURES_META}`",
            if has_input { "has" } else { "has no" },
            if features.is_empty() { "lacks" } else { "has" },
        )));
    }
    let w = NetworkWeights {
        convs,
        heads,
        features,
    };
    w.validate()?;
    // The features are metadata of the weights, not of the caller: hand back the rest.
    let meta = meta
        .into_iter()
        .filter(|(k, _)| k != FEATURES_META)
        .collect();
    Ok((w, meta))
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
            vec![TensorInfo {
                name: INPUT_NAME.to_string(),
                elem_type: Some(1),
                dims: Some(vec![None, Some(1), Some(2560)]),
            }]
        );
        let outs: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outs, vec!["arousal", "valence", "embedding"]);
        assert_eq!(info.outputs[2].dims, Some(vec![None, Some(128)]));
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
        assert_eq!(crate::model::sha256_hex(&bytes).len(), 64);
    }

    #[test]
    fn a_fused_network_has_a_features_input_and_round_trips() {
        let mut w = NetworkWeights::seeded(&[("arousal", &[][..])], 3);
        w.features = vec!["hr_relative".into(), "sdnn_relative".into()];
        w.heads[0].layers[0] = DenseWeights {
            in_dim: 130,
            out_dim: 1,
            weight: (0..130).map(|i| i as f32 * 1e-3).collect(),
            bias: vec![0.25],
        };
        let meta = vec![("task".to_string(), "emotion".to_string())];
        let bytes = export_onnx(&w, &meta, "0.2.0").unwrap();
        let info = inspect(&bytes).unwrap();
        let inputs: Vec<(&str, Option<Vec<Option<i64>>>)> = info
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.dims.clone()))
            .collect();
        assert_eq!(
            inputs,
            vec![
                (INPUT_NAME, Some(vec![None, Some(1), Some(2560)])),
                (FEATURES_NAME, Some(vec![None, Some(2)])),
            ]
        );
        assert_eq!(info.meta(FEATURES_META), Some("hr_relative,sdnn_relative"));
        assert_eq!(info.head_names(), vec!["arousal"]);
        let (back, back_meta) = import_onnx(&bytes).unwrap();
        assert_eq!(back, w);
        assert_eq!(
            back_meta, meta,
            "the features key is the weights', not the caller's"
        );
        // A head whose width ignores the features is refused before anything is written.
        let mut bad = w.clone();
        bad.features.push("rmssd_relative".into());
        let e = export_onnx(&bad, &meta, "0.2.0").unwrap_err().to_string();
        assert!(
            e.contains("in_dim 130 but the previous layer gives 131"),
            "{e}"
        );
    }

    #[test]
    fn invalid_weights_and_metadata_are_rejected() {
        let good = NetworkWeights::seeded(&tiny_heads(), 2);
        let mut w = good.clone();
        w.convs[2].weight.pop();
        assert!(
            matches!(export_onnx(&w, &[], "x"), Err(OnnxError::InvalidWeights(m)) if m.0.contains("conv3"))
        );
        let mut w = good.clone();
        w.heads[1].name = "arousal".into();
        assert!(
            matches!(export_onnx(&w, &[], "x"), Err(OnnxError::InvalidWeights(m)) if m.0.contains("twice"))
        );
        let mut w = good.clone();
        w.heads[0].name = EMBEDDING_NAME.into();
        assert!(export_onnx(&w, &[], "x").is_err());
        let mut w = good.clone();
        w.heads[0].layers.pop();
        assert!(
            matches!(export_onnx(&w, &[], "x"), Err(OnnxError::InvalidWeights(m)) if m.0.contains("out_dim"))
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
}
