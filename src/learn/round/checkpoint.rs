//! Round checkpoints: the pretext network after each epoch, so a gateway can be restarted
//! or asked to stop between epochs and resume where it was.

use super::*;
use crate::fs::atomic_write;

/// The pretext network after `epoch` completed epochs of a round.
///
/// Saved as an ONNX file of the seven-head pretext network (so a checkpoint is also a valid
/// `finetune --encoder` input) with metadata `affectgate.kind = retrain-checkpoint`,
/// `affectgate.checkpoint.epoch` and `affectgate.checkpoint.sha256` (SHA-256 of the weights,
/// so a damaged file is an error rather than a silently different network).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub epoch: usize,
    pub pretext: NetworkWeights,
}

const CKPT_KIND: &str = "retrain-checkpoint";

pub(super) fn weights_digest(w: &NetworkWeights) -> String {
    let mut h = sha2::Sha256::new();
    for c in &w.convs {
        for v in c.weight.iter().chain(&c.bias) {
            h.update(v.to_le_bytes());
        }
    }
    for head in &w.heads {
        h.update(head.name.as_bytes());
        h.update([0]);
        for l in &head.layers {
            for v in l.weight.iter().chain(&l.bias) {
                h.update(v.to_le_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

pub(super) fn check_pretext(w: &NetworkWeights, what: &str) -> Result<(), String> {
    let names = w.head_names();
    if names != PRETEXT_TASKS {
        return Err(format!(
            "{what} has heads {names:?}, expected the seven pretext heads {PRETEXT_TASKS:?}"
        ));
    }
    check_encoder(w, what)
}

pub(super) fn check_encoder(w: &NetworkWeights, what: &str) -> Result<(), String> {
    w.validate().map_err(|e| format!("{what}: {e}"))?;
    let shapes: Vec<(usize, usize, usize)> = w
        .convs
        .iter()
        .map(|c| (c.in_ch, c.out_ch, c.kernel))
        .collect();
    if shapes != PAPER_CONVS {
        return Err(format!(
            "{what}: encoder convolutions {shapes:?} are not the paper's {PAPER_CONVS:?}"
        ));
    }
    Ok(())
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), RetrainError> {
        let meta = vec![
            ("affectgate.kind".to_string(), CKPT_KIND.to_string()),
            (
                "affectgate.checkpoint.epoch".to_string(),
                self.epoch.to_string(),
            ),
            (
                "affectgate.checkpoint.sha256".to_string(),
                weights_digest(&self.pretext),
            ),
        ];
        let bytes = export_onnx(&self.pretext, &meta, env!("CARGO_PKG_VERSION"))
            .map_err(|e| RetrainError::Invalid(format!("checkpoint: {e}")))?;
        Ok(atomic_write(path, &bytes)?)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, RetrainError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let corrupt = |reason: String| RetrainError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (pretext, meta) =
            import_onnx(&bytes).map_err(|e| corrupt(format!("not a readable checkpoint: {e}")))?;
        let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("affectgate.kind") != Some(CKPT_KIND) {
            return Err(corrupt(format!(
                "not a retraining checkpoint (affectgate.kind = {:?})",
                get("affectgate.kind")
            )));
        }
        let epoch = get("affectgate.checkpoint.epoch")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| corrupt("missing or invalid affectgate.checkpoint.epoch".into()))?;
        let digest = weights_digest(&pretext);
        match get("affectgate.checkpoint.sha256") {
            Some(d) if d == digest => {}
            Some(d) => {
                return Err(corrupt(format!(
                    "weights checksum mismatch (stored {d}, computed {digest}): the file is damaged"
                )))
            }
            None => return Err(corrupt("missing affectgate.checkpoint.sha256".into())),
        }
        check_pretext(&pretext, "checkpoint").map_err(corrupt)?;
        Ok(Checkpoint { epoch, pretext })
    }
}
