//! Emotion heads on a frozen encoder, fitted the same way for the candidate and the serving
//! side of a round (so `before` is not inflated by labels the shipped heads saw).
//!
//! A fused model's heads (see [`crate::learn::fusion`]) also read each window's
//! wearer-relative HR/RMSSD/SDNN: a pack window against its pack subject's baseline (from all
//! of that subject's pack windows, no labels), a self-report against the wearer's baseline
//! (from the round's unlabelled windows of the wearer). Windows the quality gate fails, or
//! without a baseline, train no fused head.

use super::*;
use crate::dsp::WearerBaseline;
use crate::learn::baseline::{wearer_relative, window_physio, OFFLINE_MIN_BASELINE_WINDOWS};
use crate::learn::fusion::fit_fused_head;
use crate::learn::train::predict_with;

/// Which pack labelled windows pass the gateway's quality gate (the others — e.g. EEGMAT
/// recordings without ECG — neither train nor gate a head), and for fused models the
/// wearer-relative features of every pack labelled window and every self-report (`None`
/// where there is no baseline or the window fails the quality gate; empty for ECG-only
/// models).
#[derive(Clone, Debug, Default)]
pub(super) struct RoundFeatures {
    pub(super) pack_good: Vec<bool>,
    pub(super) pack: Vec<Option<[f64; 3]>>,
    pub(super) user: Vec<Option<[f64; 3]>>,
}

impl RoundFeatures {
    pub(super) fn new(data: &RoundData, pack: &ReplayPack, current: &NetworkWeights) -> Self {
        let phys: Vec<_> = pack
            .labelled
            .iter()
            .map(|w| window_physio(&w.window))
            .collect();
        let pack_good = phys.iter().map(|p| p.good).collect();
        if current.features.is_empty() {
            return RoundFeatures {
                pack_good,
                ..Default::default()
            };
        }
        let subjects: Vec<String> = pack.labelled.iter().map(|w| w.subject.clone()).collect();
        let pack_rel = wearer_relative(&subjects, &phys);
        let wearer_rows: Vec<[f64; 3]> = data
            .unlabelled
            .iter()
            .map(|w| window_physio(w))
            .filter(|p| p.good)
            .filter_map(|p| p.features)
            .collect();
        let wearer = WearerBaseline::from_features_min(&wearer_rows, OFFLINE_MIN_BASELINE_WINDOWS);
        let user = data
            .user_labelled
            .iter()
            .map(|(w, _)| {
                let p = window_physio(w);
                Some(wearer.as_ref()?.relative(p.good.then_some(p.features?)?))
            })
            .collect();
        RoundFeatures {
            pack_good,
            pack: pack_rel,
            user,
        }
    }
}

/// Head scores of `windows` under `encoder` + `heads` (a fused network's heads read
/// `features[i]`, zeros where `None`, as the gateway feeds a calibrating wearer).
pub(super) fn score_heads(
    encoder: &NetworkWeights,
    heads: &[HeadWeights],
    features: &[String],
    windows: &[Vec<f32>],
    window_features: &[Option<[f64; 3]>],
) -> Vec<Vec<f32>> {
    let w = NetworkWeights {
        convs: encoder.convs.clone(),
        heads: heads.to_vec(),
        features: features.to_vec(),
    };
    let f: Vec<Vec<f32>> = window_features
        .iter()
        .map(|f| f.unwrap_or([0.0; 3]).iter().map(|&v| v as f32).collect())
        .collect();
    predict_with(&w, windows, &f)
}

/// The labelled windows a round's head stage trains on: the pack's labelled windows outside
/// the gate subjects (once each) and the wearer's self-reports outside the hold-out
/// (repeated `round(user_weight)` times), labels in the current model's head order.
pub(super) struct HeadSet {
    pack_col: Vec<Option<usize>>,
    head_names: Vec<String>,
    windows: Vec<Vec<f32>>,
    /// Wearer-relative features per window (fused models only; else all `None`).
    features: Vec<Option<[f64; 3]>>,
    labels: Vec<Vec<Option<f32>>>,
    reps: Vec<usize>,
    n_pack: usize,
    n_user: usize,
}

impl HeadSet {
    pub(super) fn new(
        data: &RoundData,
        pack: &ReplayPack,
        sp: &Split,
        head_names: &[String],
        feats: &RoundFeatures,
        cfg: &RoundConfig,
    ) -> Self {
        let pack_col = head_names
            .iter()
            .map(|h| pack.head_names.iter().position(|p| p == h))
            .collect();
        let mut set = HeadSet {
            pack_col,
            head_names: head_names.to_vec(),
            windows: Vec::new(),
            features: Vec::new(),
            labels: Vec::new(),
            reps: Vec::new(),
            n_pack: sp.pack_train.len(),
            n_user: sp.user_train.len(),
        };
        let user_reps = (cfg.user_weight.round() as usize).max(1);
        for &i in sp.pack_train.iter().filter(|&&i| feats.pack_good[i]) {
            set.windows.push(pack.labelled[i].window.clone());
            set.features.push(feats.pack.get(i).copied().flatten());
            set.labels.push(set.pack_labels(&pack.labelled[i]));
            set.reps.push(1);
        }
        for (j, (win, l)) in data.user_labelled[sp.user_train.clone()].iter().enumerate() {
            set.windows.push(win.clone());
            set.features
                .push(feats.user.get(sp.user_train.start + j).copied().flatten());
            set.labels.push(l.clone());
            set.reps.push(user_reps);
        }
        set
    }

    /// A pack window's labels in the current model's head order.
    pub(super) fn pack_labels(&self, pw: &PackWindow) -> Vec<Option<f32>> {
        self.pack_col
            .iter()
            .map(|c| c.and_then(|c| pw.labels[c]))
            .collect()
    }

    /// Fresh heads (the widths of `current`'s) on `encoder`'s frozen embeddings.
    pub(super) fn fit(
        &self,
        encoder: &NetworkWeights,
        current: &NetworkWeights,
        cfg: &RoundConfig,
    ) -> Result<Vec<HeadWeights>, RetrainError> {
        let emb = embed(encoder, &self.windows);
        let mut heads = Vec::with_capacity(self.head_names.len());
        if !current.features.is_empty() {
            for (h, name) in self.head_names.iter().enumerate() {
                let mut rows: Vec<(&[f32], [f64; 3], bool)> = Vec::new();
                for (((x, labels), f), &reps) in emb
                    .iter()
                    .zip(&self.labels)
                    .zip(&self.features)
                    .zip(&self.reps)
                {
                    if let (Some(v), Some(f)) = (labels[h], f) {
                        for _ in 0..reps {
                            rows.push((x.as_slice(), *f, v >= 0.5));
                        }
                    }
                }
                if !(rows.iter().any(|r| r.2) && rows.iter().any(|r| !r.2)) {
                    return Err(RetrainError::NotEnoughData(format!(
                        "head {name}: the fused head needs labelled windows of both classes with a wearer baseline ({} rows)",
                        rows.len()
                    )));
                }
                heads.push(fit_fused_head(name, &rows));
            }
            return Ok(heads);
        }
        for (h, name) in self.head_names.iter().enumerate() {
            let mut e = Vec::new();
            let mut l = Vec::new();
            for ((x, labels), &reps) in emb.iter().zip(&self.labels).zip(&self.reps) {
                if let Some(v) = labels[h] {
                    for _ in 0..reps {
                        e.push(x.clone());
                        l.push(vec![Some(v)]);
                    }
                }
            }
            if e.is_empty() {
                return Err(RetrainError::NotEnoughData(format!(
                    "head {name}: no labelled training windows (pack windows outside the gate \
                     subjects: {}, the wearer's self-reports outside the hold-out: {})",
                    self.n_pack, self.n_user
                )));
            }
            let tcfg = TrainConfig {
                epochs: cfg.head_epochs,
                batch: cfg.batch,
                lr: cfg.head_lr,
                seed: mix(cfg.seed, 2000 + h as u64),
                max_steps_per_epoch: None,
                progress: false,
            };
            let (mut hw, _) = train_heads(
                &e,
                &l,
                std::slice::from_ref(name),
                &hidden_of(&current.heads[h]),
                &tcfg,
            );
            heads.push(hw.remove(0));
        }
        Ok(heads)
    }
}

/// A round's head stage on its own: heads fitted on `encoder` exactly as [`run_round`] fits
/// the candidate's (same windows, hold-outs, weights and seeds), returned as a complete
/// model. Used by the personalisation experiment to separate what the encoder adaptation
/// and what the self-reports contribute.
pub fn refit_heads(
    encoder: &NetworkWeights,
    current: &NetworkWeights,
    data: &RoundData,
    pack: &ReplayPack,
    cfg: &RoundConfig,
) -> Result<NetworkWeights, RetrainError> {
    let sp = split(data, pack, cfg);
    let feats = RoundFeatures::new(data, pack, current);
    let set = HeadSet::new(data, pack, &sp, &current.head_names(), &feats, cfg);
    Ok(NetworkWeights {
        convs: encoder.convs.clone(),
        heads: set.fit(encoder, current, cfg)?,
        features: current.features.clone(),
    })
}
