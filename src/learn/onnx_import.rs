//! Reading an affectgate network back out of its own ONNX file (the inverse of
//! [`super::onnx::export_onnx`]): the pretext model written by `pretrain` is the encoder that
//! `finetune` starts from, and a shipped model is where on-gateway retraining starts. One file
//! format for checkpoints and serving, so what was evaluated is what is retrained.

use std::collections::HashMap;

use prost::Message;
use tract_onnx::pb;

use super::onnx::{
    Conv1dWeights, DenseWeights, HeadWeights, NetworkWeights, OnnxError, EMBEDDING_NAME,
};

fn floats(t: &pb::TensorProto) -> Result<Vec<f32>, OnnxError> {
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if t.raw_data.len() % 4 != 0 {
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
    let m =
        pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(format!("protobuf: {e}")))?;
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Decode("no graph".into()))?;
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
