//! Checks of a model file before a session is built: the ONNX outline against what the
//! gateway feeds and reads (one float32 `[N, 1, 2560]` input, `[N, 1]` heads, an optional
//! embedding), and a tract dry run that turns tract's panics on malformed graphs into errors.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{InferError, EMBEDDING_NAME, INPUT_NAME, WINDOW_LEN};
use crate::model::onnx::{inspect, OnnxError, FEATURES_META};
use crate::model::FEATURES_NAME;

/// What the pre-check learns from the model bytes.
pub(super) struct Checked {
    pub heads: Vec<String>,
    pub embedding_dim: Option<Option<usize>>,
    pub fixed_batch: Option<usize>,
    /// Names of a fused model's `features` input columns (empty: ECG only).
    pub features: Vec<String>,
    pub metadata: Vec<(String, String)>,
    pub producer: String,
}

fn fmt_dims(d: &[Option<i64>]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| x.map_or("?".into(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

pub(super) fn check_model(bytes: &[u8], file: &str) -> Result<Checked, InferError> {
    let bad = |reason: String| InferError::InvalidModel {
        file: file.to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    let m = inspect(bytes).map_err(|e| match e {
        OnnxError::Decode(d) if d.starts_with("protobuf") => bad(format!(
            "not ONNX protobuf ({d}); the file may be truncated or not a model"
        )),
        OnnxError::Decode(_) => bad("no graph (not an ONNX model?)".into()),
        other => bad(other.to_string()),
    })?;
    if m.nodes == 0 || m.ir_version <= 0 {
        return Err(bad(format!(
            "empty graph or no IR version (ir_version {}): not an ONNX model?",
            m.ir_version
        )));
    }
    const FLOAT: i32 = 1; // ONNX TensorProto.DataType.FLOAT
    let names_ok = |n: &str| !n.is_empty() && !n.contains('\0');
    if let Some((name, i)) = &m.non_finite {
        return Err(bad(format!(
            "weight {name} holds a non-finite value (NaN or ±inf) at index {i}: the weights are damaged; restore the model file"
        )));
    }
    let inputs = &m.inputs;
    let input_names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let Some(ecg) = inputs.iter().find(|i| i.name == INPUT_NAME) else {
        return Err(bad(format!(
            "no input named `{INPUT_NAME}` (inputs: {input_names:?})"
        )));
    };
    let features_input = inputs.iter().find(|i| i.name == FEATURES_NAME);
    if inputs.len() != 1 + usize::from(features_input.is_some()) {
        return Err(bad(format!(
            "expected the input `{INPUT_NAME}` (and optionally `{FEATURES_NAME}`), found {input_names:?}"
        )));
    }
    // A fused model: `features [N, F]` with F named in the metadata, in order.
    let features: Vec<String> = match features_input {
        None => Vec::new(),
        Some(fi) => {
            let names: Vec<String> = m
                .meta(FEATURES_META)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let width = fi
                .dims
                .as_ref()
                .filter(|d| d.len() == 2)
                .and_then(|d| d[1])
                .map(|v| v as usize);
            if fi.elem_type != Some(FLOAT) || width.is_none() || names.len() != width.unwrap_or(0) {
                return Err(bad(format!(
                    "input `{FEATURES_NAME}` must be float32 [N, F] with its F column names in \
                     the metadata key `{FEATURES_META}` (found shape {}, names {names:?})",
                    fi.dims.as_deref().map_or("none".into(), fmt_dims)
                )));
            }
            names
        }
    };
    let expected = format!("float32 [N, 1, {WINDOW_LEN}]");
    let elem = ecg.elem_type.ok_or_else(|| {
        bad(format!(
            "input `{INPUT_NAME}` is not a tensor (expected {expected})"
        ))
    })?;
    let dims = ecg.dims.clone();
    if elem != FLOAT {
        return Err(bad(format!(
            "input `{INPUT_NAME}` has element type {elem}, expected {expected}"
        )));
    }
    let dims = dims.ok_or_else(|| {
        bad(format!(
            "input `{INPUT_NAME}` has no shape (expected {expected})"
        ))
    })?;
    if dims.len() != 3
        || dims[1] != Some(1)
        || dims[2] != Some(WINDOW_LEN as i64)
        || dims[0].is_some_and(|b| b < 1)
    {
        return Err(bad(format!(
            "input `{INPUT_NAME}` has shape {}, expected {expected}",
            fmt_dims(&dims)
        )));
    }
    let fixed_batch = dims[0].map(|b| b as usize);

    let mut heads = Vec::new();
    let mut embedding_dim = None;
    for o in &m.outputs {
        if !names_ok(&o.name) {
            return Err(bad(format!(
                "output name {:?} is empty or contains NUL",
                o.name
            )));
        }
        if let Some(elem) = o.elem_type {
            if elem != FLOAT {
                return Err(bad(format!(
                    "output `{}` has element type {elem}, expected float32",
                    o.name
                )));
            }
        }
        let odims = o.dims.clone();
        if o.name == EMBEDDING_NAME {
            embedding_dim = Some(
                odims
                    .as_ref()
                    .and_then(|d| d.get(1).copied().flatten())
                    .map(|v| v as usize),
            );
            continue;
        }
        if let Some(d) = &odims {
            if d.len() != 2 || d[1].is_some_and(|v| v != 1) {
                return Err(bad(format!(
                    "head output `{}` has shape {}, expected [N, 1]",
                    o.name,
                    fmt_dims(d)
                )));
            }
        }
        heads.push(o.name.clone());
    }
    if heads.is_empty() {
        return Err(bad("no head outputs (only `embedding` or nothing)".into()));
    }
    Ok(Checked {
        metadata: m.metadata,
        heads,
        embedding_dim,
        fixed_batch,
        features,
        producer: format!("{} {}", m.producer_name, m.producer_version)
            .trim()
            .to_string(),
    })
}

/// Build and run the model once with tract directly, inside `catch_unwind`.
///
/// `ort-tract` calls tract from `extern "system"` functions, where a panic cannot unwind and
/// aborts the process; tract panics on some malformed graphs (e.g. a pool whose attributes
/// were damaged). Doing the same work here first turns those into errors. It costs one
/// parse/optimise and one forward pass of `batch` zero windows at load time.
pub(super) fn tract_preflight(bytes: &[u8], batch: usize, features: usize) -> Result<(), String> {
    use tract_onnx::prelude::*;
    let result = catch_unwind(AssertUnwindSafe(|| -> TractResult<()> {
        let model = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
        let plan = model.into_optimized()?.into_runnable()?;
        let x = Tensor::zero::<f32>(&[batch, 1, WINDOW_LEN])?;
        if features == 0 {
            plan.run(tvec!(x.into_tvalue()))?;
        } else {
            let f = Tensor::zero::<f32>(&[batch, features])?;
            plan.run(tvec!(x.into_tvalue(), f.into_tvalue()))?;
        }
        Ok(())
    }));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(format!(
                "tract panicked on this graph ({what}); the model is malformed"
            ))
        }
    }
}
