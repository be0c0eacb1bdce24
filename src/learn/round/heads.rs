//! Emotion heads on a frozen encoder, fitted the same way for the candidate and the serving
//! side of a round (so `before` is not inflated by labels the shipped heads saw).

use super::*;

/// The labelled windows a round's head stage trains on: the pack's labelled windows outside
/// the gate subjects (once each) and the wearer's self-reports outside the hold-out
/// (repeated `round(user_weight)` times), labels in the current model's head order.
pub(super) struct HeadSet {
    pack_col: Vec<Option<usize>>,
    head_names: Vec<String>,
    windows: Vec<Vec<f32>>,
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
            labels: Vec::new(),
            reps: Vec::new(),
            n_pack: sp.pack_train.len(),
            n_user: sp.user_train.len(),
        };
        let user_reps = (cfg.user_weight.round() as usize).max(1);
        for &i in &sp.pack_train {
            set.windows.push(pack.labelled[i].window.clone());
            set.labels.push(set.pack_labels(&pack.labelled[i]));
            set.reps.push(1);
        }
        for (win, l) in &data.user_labelled[sp.user_train.clone()] {
            set.windows.push(win.clone());
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
    let set = HeadSet::new(data, pack, &sp, &current.head_names(), cfg);
    Ok(NetworkWeights {
        convs: encoder.convs.clone(),
        heads: set.fit(encoder, current, cfg)?,
        features: current.features.clone(),
    })
}
