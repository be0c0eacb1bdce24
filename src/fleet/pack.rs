//! Packing a model into a release folder (`affectgate model release`): the model and its card,
//! its pretext network and replay pack when they sit beside it, golden self-test windows
//! computed here with tract, and `release.json`. The folder is what `affectgate-fleet release`
//! signs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::release::{Golden, GoldenWindow, ReleaseManifest, MANIFEST};
use super::FleetError;
use crate::infer::{Backend, Model};
use crate::model::card::ModelCard;
use crate::model::replay::ReplayPack;

/// Golden windows per release: enough to cover the wearer-feature range, small on the wire
/// (8 × 2560 floats ≈ 180 kB of JSON).
pub const GOLDEN_WINDOWS: usize = 8;

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackSpec {
    pub model: PathBuf,
    pub name: String,
    pub version: u64,
    pub channel: String,
    pub min_gateway: String,
    pub summary: String,
}

/// Write the release folder `out` (which must not exist). Returns its manifest.
pub fn pack_release(spec: &PackSpec, out: &Path) -> Result<ReleaseManifest, FleetError> {
    if out.exists() {
        return Err(FleetError::Invalid(format!(
            "{}: already exists (a release is packed into a new folder)",
            out.display()
        )));
    }
    let invalid = |e: String| FleetError::Invalid(e);
    ModelCard::load_for_model(&spec.model).map_err(|e| invalid(e.to_string()))?;
    let mut model =
        Model::load(&spec.model, &Backend::Tract).map_err(|e| invalid(e.to_string()))?;
    let golden = golden_for(&mut model).map_err(invalid)?;
    let stem = spec
        .model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let beside = |suffix: &str| spec.model.with_file_name(format!("{stem}{suffix}"));
    let pretext = beside(".pretext.onnx");
    let replay = ReplayPack::path_for(&spec.model);
    let m = ReleaseManifest {
        name: spec.name.clone(),
        version: spec.version,
        min_gateway: spec.min_gateway.clone(),
        channel: spec.channel.clone(),
        summary: spec.summary.clone(),
        model: "model.onnx".into(),
        card: "model.card.toml".into(),
        golden: "golden.json".into(),
        pretext: pretext.exists().then(|| "pretext.onnx".into()),
        replay: replay.exists().then(|| "replay.bin".into()),
        rollback_of: None,
    };
    let mut files = vec![
        m.model.clone(),
        m.card.clone(),
        m.golden.clone(),
        MANIFEST.to_string(),
    ];
    files.extend(m.pretext.iter().cloned());
    files.extend(m.replay.iter().cloned());
    m.validate(&files).map_err(invalid)?;
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| FleetError::io(&tmp, e))?;
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, tmp.join(to))
            .map(|_| ())
            .map_err(|e| FleetError::io(from, e))
    };
    copy(&spec.model, &m.model)?;
    copy(&ModelCard::path_for(&spec.model), &m.card)?;
    if let Some(p) = &m.pretext {
        copy(&pretext, p)?;
    }
    if let Some(r) = &m.replay {
        copy(&replay, r)?;
    }
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(tmp.join(name), bytes).map_err(|e| FleetError::io(&tmp.join(name), e))
    };
    write(
        &m.golden,
        serde_json::to_vec(&golden).expect("golden serialises"),
    )?;
    write(
        MANIFEST,
        serde_json::to_vec_pretty(&m).expect("manifest serialises"),
    )?;
    std::fs::rename(&tmp, out).map_err(|e| FleetError::io(out, e))?;
    Ok(m)
}

/// The outputs (head → value) `model` gives each (samples, features) input, one at a time.
pub fn run_golden<'a>(
    model: &mut Model,
    inputs: impl IntoIterator<Item = (&'a [f32], &'a [f32])>,
) -> Result<Vec<BTreeMap<String, f32>>, String> {
    let heads = model.head_names().to_vec();
    inputs
        .into_iter()
        .map(|(samples, feats)| {
            let s = model
                .run_with(samples, feats, 1)
                .map_err(|e| e.to_string())?;
            Ok(heads
                .iter()
                .cloned()
                .zip(s.values[0].iter().copied())
                .collect())
        })
        .collect()
}

/// Golden windows for `model`: deterministic inputs and the outputs `model` gives them.
pub fn golden_for(model: &mut Model) -> Result<Golden, String> {
    let features = model.feature_names().to_vec();
    let inputs = Golden::inputs(GOLDEN_WINDOWS, &features, 0x601d);
    let outputs = run_golden(
        model,
        inputs.iter().map(|(s, f)| (s.as_slice(), f.as_slice())),
    )?;
    let mut windows = Vec::new();
    for ((samples, feats), expected) in inputs.into_iter().zip(outputs) {
        if let Some((h, v)) = expected.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!(
                "the model outputs {h} = {v} on a golden window; not releasable"
            ));
        }
        windows.push(GoldenWindow {
            samples,
            features: feats,
            expected,
        });
    }
    Ok(Golden { features, windows })
}
