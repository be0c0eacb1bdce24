//! Training loops on CPU with burn (autodiff over the `flex` backend):
//! - [`pretrain`]: self-supervised signal-transformation recognition (7 heads);
//! - [`train_heads`]: emotion heads on a *frozen* encoder. Because the encoder is frozen and
//!   dropout lives only in the heads, the encoder's embeddings are computed once
//!   ([`embed`]) and the heads train on 128-d vectors — mathematically the same as running
//!   the frozen encoder every step, and ~100× cheaper, which is what makes on-gateway
//!   re-fitting affordable on a Raspberry Pi;
//! - [`train_supervised`]: the same network trained end to end from scratch (the paper's
//!   fully supervised baseline).
//!
//! All randomness (initialisation, shuffling, transformations, dropout) flows from the
//! config's seed.

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::metrics::Confusion;
use super::model::{
    batch_tensor, matrix, rows_of, weighted_bce, Net, PRETEXT_HIDDEN, PRETEXT_LOSS_WEIGHTS,
    PRETEXT_TASKS,
};
use super::transforms::Transform;
use crate::model::weights::{HeadWeights, NetworkWeights};

/// Settings shared by every loop.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Stop an epoch after this many steps (tests and smoke runs).
    pub max_steps_per_epoch: Option<usize>,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch: 32,
            lr: 1e-3,
            seed: 7,
            max_steps_per_epoch: None,
            progress: false,
        }
    }
}

/// One epoch of pretext training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainEpoch {
    pub epoch: usize,
    pub train_loss: f32,
    pub val_loss: Option<f32>,
    /// Balanced accuracy of each head (original, noise, …) on held-out windows, if any.
    pub val_task_balanced_accuracy: Vec<f32>,
    pub seconds: f32,
}

fn bar(len: u64, show: bool, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Build the 7 × N pretext samples of one epoch: every window once per class, shuffled.
fn pretext_plan(n: usize, rng: &mut SmallRng) -> Vec<(usize, Transform)> {
    let mut plan: Vec<(usize, Transform)> = (0..n)
        .flat_map(|i| Transform::ALL.iter().map(move |&t| (i, t)))
        .collect();
    plan.shuffle(rng);
    plan
}

fn pretext_batch(
    windows: &[Vec<f32>],
    items: &[(usize, Transform)],
    rng: &mut SmallRng,
    device: &Device,
) -> (Tensor<3>, Tensor<2>) {
    let mut bufs: Vec<Vec<f32>> = Vec::with_capacity(items.len());
    let mut targets = vec![0.0f32; items.len() * 7];
    for (row, &(i, t)) in items.iter().enumerate() {
        let mut out = Vec::with_capacity(windows[i].len());
        t.apply(&windows[i], &mut out, rng);
        bufs.push(out);
        targets[row * 7 + t.index()] = 1.0;
    }
    let refs: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
    (
        batch_tensor(&refs, device),
        Tensor::from_data(TensorData::new(targets, [items.len(), 7]), device),
    )
}

/// Self-supervised pretext training. `init` continues from existing weights (on-gateway
/// adaptation); otherwise a fresh 7-head network is initialised from the seed.
/// Returns the trained pretext network and the per-epoch history.
pub fn pretrain(
    train: &[Vec<f32>],
    val: &[Vec<f32>],
    cfg: &TrainConfig,
    init: Option<&NetworkWeights>,
) -> (NetworkWeights, Vec<PretrainEpoch>) {
    let device = Device::flex().autodiff();
    device.seed(cfg.seed);
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let names: Vec<String> = PRETEXT_TASKS.iter().map(|s| s.to_string()).collect();
    let mut net = match init {
        Some(w) => Net::from_weights(w, &device),
        None => Net::new(7, &PRETEXT_HIDDEN, &device),
    };
    let mut optim = AdamConfig::new().init();
    let mut history = Vec::new();
    for epoch in 0..cfg.epochs {
        let t0 = std::time::Instant::now();
        let plan = pretext_plan(train.len(), &mut rng);
        let mut steps = plan.len() / cfg.batch.max(1);
        if let Some(m) = cfg.max_steps_per_epoch {
            steps = steps.min(m);
        }
        let pb = bar(steps as u64, cfg.progress, &format!("epoch {}", epoch + 1));
        let mut loss_sum = 0.0f64;
        for s in 0..steps {
            let items = &plan[s * cfg.batch..(s + 1) * cfg.batch];
            let (x, y) = pretext_batch(train, items, &mut rng, &device);
            let loss = weighted_bce(net.forward(x), y, &PRETEXT_LOSS_WEIGHTS, None);
            let l = scalar(loss.clone());
            loss_sum += l as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(cfg.lr, net, grads);
            pb.inc(1);
            pb.set_message(format!("loss {:.4}", loss_sum / (s + 1) as f64));
        }
        pb.finish_and_clear();
        let weights = net.to_weights(&names);
        let (val_loss, val_acc) = if val.is_empty() {
            (None, Vec::new())
        } else {
            let (l, acc) = pretext_eval(&weights, val, cfg.seed ^ 0x5eed);
            (Some(l), acc)
        };
        let e = PretrainEpoch {
            epoch: epoch + 1,
            train_loss: (loss_sum / steps.max(1) as f64) as f32,
            val_loss,
            val_task_balanced_accuracy: val_acc,
            seconds: t0.elapsed().as_secs_f32(),
        };
        tracing::info!(
            epoch = e.epoch,
            train_loss = e.train_loss,
            val_loss = ?e.val_loss,
            val_acc = ?e.val_task_balanced_accuracy,
            seconds = e.seconds,
            "pretext epoch"
        );
        history.push(e);
    }
    (net.to_weights(&names), history)
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")[0]
}

/// Pretext loss and per-head balanced accuracy on held-out windows (each window in all seven
/// versions, transformations drawn from `seed`, no dropout).
/// Per pretext head, the area under the ROC curve of its logits over every window × every
/// transformation (threshold-free). Each binary head sees its transformation in 1 of 7 items,
/// so a head that ranks well can still never cross 0.5 and score balanced accuracy exactly
/// 0.5 in [`pretext_eval`]; the AUC tells "learnt nothing" from "learnt, but below threshold".
pub fn pretext_auc(w: &NetworkWeights, windows: &[Vec<f32>], seed: u64) -> Vec<f64> {
    let device = Device::flex();
    let net = Net::from_weights(w, &device);
    let mut rng = SmallRng::seed_from_u64(seed);
    let items: Vec<(usize, Transform)> = (0..windows.len())
        .flat_map(|i| Transform::ALL.iter().map(move |&t| (i, t)))
        .collect();
    let mut scores: Vec<Vec<f64>> = vec![Vec::new(); 7];
    let mut truth: Vec<Vec<bool>> = vec![Vec::new(); 7];
    for chunk in items.chunks(64) {
        let (x, _) = pretext_batch(windows, chunk, &mut rng, &device);
        for (row, &(_, t)) in rows_of(net.forward(x)).iter().zip(chunk) {
            for h in 0..7 {
                scores[h].push(f64::from(row[h]));
                truth[h].push(t.index() == h);
            }
        }
    }
    (0..7)
        .map(|h| crate::learn::metrics::auc(&scores[h], &truth[h]).unwrap_or(f64::NAN))
        .collect()
}

pub fn pretext_eval(w: &NetworkWeights, windows: &[Vec<f32>], seed: u64) -> (f32, Vec<f32>) {
    let device = Device::flex();
    let net = Net::from_weights(w, &device);
    let mut rng = SmallRng::seed_from_u64(seed);
    let items: Vec<(usize, Transform)> = (0..windows.len())
        .flat_map(|i| Transform::ALL.iter().map(move |&t| (i, t)))
        .collect();
    let mut conf = vec![Confusion::default(); 7];
    let mut loss_sum = 0.0f64;
    let mut n = 0usize;
    for chunk in items.chunks(64) {
        let (x, y) = pretext_batch(windows, chunk, &mut rng, &device);
        let logits = net.forward(x);
        loss_sum += scalar(weighted_bce(logits.clone(), y, &PRETEXT_LOSS_WEIGHTS, None)) as f64
            * chunk.len() as f64;
        n += chunk.len();
        for (row, &(_, t)) in rows_of(logits).iter().zip(chunk) {
            for (h, c) in conf.iter_mut().enumerate() {
                // logit ≥ 0 ⇔ sigmoid ≥ 0.5
                c.record(row[h] >= 0.0, t.index() == h);
            }
        }
    }
    (
        (loss_sum / n.max(1) as f64) as f32,
        conf.iter().map(|c| c.balanced_accuracy() as f32).collect(),
    )
}

/// Encoder embeddings (`[128]` per window) with the given conv weights, batched, no autodiff.
pub fn embed(w: &NetworkWeights, windows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let net = Net::from_weights(
        &NetworkWeights {
            convs: w.convs.clone(),
            heads: Vec::new(),
            features: Vec::new(),
        },
        &device,
    );
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(64) {
        let refs: Vec<&[f32]> = chunk.iter().map(|w| w.as_slice()).collect();
        out.extend(rows_of(net.encoder.forward(batch_tensor(&refs, &device))));
    }
    out
}

/// Sigmoid scores of every head for each window (burn forward, no dropout).
pub fn predict(w: &NetworkWeights, windows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let net = Net::from_weights(w, &device);
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(64) {
        let refs: Vec<&[f32]> = chunk.iter().map(|w| w.as_slice()).collect();
        let logits = net.forward(batch_tensor(&refs, &device));
        out.extend(rows_of(burn::tensor::activation::sigmoid(logits)));
    }
    out
}

/// [`predict`] for any network: a fused one's heads (see [`NetworkWeights::features`]) read
/// `features[i]` (its values in the network's order) beside window `i`'s embedding — burn
/// computes the embedding, the plain-Rust reference the one-layer fused heads.
pub fn predict_with(
    w: &NetworkWeights,
    windows: &[Vec<f32>],
    features: &[Vec<f32>],
) -> Vec<Vec<f32>> {
    if w.features.is_empty() {
        return predict(w, windows);
    }
    embed(w, windows)
        .iter()
        .zip(features)
        .map(|(e, f)| {
            crate::model::weights::reference_heads(w, e, f)
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        })
        .collect()
}

/// Sigmoid scores of heads applied to precomputed embeddings.
pub fn predict_heads(heads: &[HeadWeights], emb: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let net = Net::from_weights(
        &NetworkWeights {
            convs: Vec::new(),
            heads: heads.to_vec(),
            features: Vec::new(),
        },
        &device,
    );
    let refs: Vec<&[f32]> = emb.iter().map(|e| e.as_slice()).collect();
    if refs.is_empty() {
        return Vec::new();
    }
    rows_of(burn::tensor::activation::sigmoid(
        net.forward_heads(matrix(&refs, &device)),
    ))
}

/// Per-sample weights that give each class of each head the same total weight
/// (EEGMAT has ~3× more rest than task windows). Missing labels weigh 0.
fn balance_weights(labels: &[Vec<Option<f32>>], n_heads: usize) -> Vec<f32> {
    let n = labels.len();
    let mut w = vec![0.0f32; n * n_heads];
    for h in 0..n_heads {
        let pos = labels
            .iter()
            .filter(|l| l[h].is_some_and(|v| v >= 0.5))
            .count();
        let neg = labels
            .iter()
            .filter(|l| l[h].is_some_and(|v| v < 0.5))
            .count();
        let total = (pos + neg) as f32;
        for (i, l) in labels.iter().enumerate() {
            w[i * n_heads + h] = match l[h] {
                Some(v) if v >= 0.5 => total / (2.0 * pos as f32),
                Some(_) => total / (2.0 * neg as f32),
                None => 0.0,
            };
        }
    }
    w
}

fn targets(labels: &[Vec<Option<f32>>], idx: &[usize], n_heads: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(idx.len() * n_heads);
    for &i in idx {
        for l in labels[i].iter().take(n_heads) {
            t.push(l.map(|v| if v >= 0.5 { 1.0 } else { 0.0 }).unwrap_or(0.0));
        }
    }
    t
}

fn gather_weights(w: &[f32], idx: &[usize], n_heads: usize) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| w[i * n_heads..(i + 1) * n_heads].iter().copied())
        .collect()
}

/// Supervised loop shared by the head-only and the end-to-end trainers: class-balanced BCE,
/// Adam, shuffled mini-batches; `input` builds the batch tensor of the given rows.
fn fit<I>(
    mut net: Net,
    n: usize,
    labels: &[Vec<Option<f32>>],
    cfg: &TrainConfig,
    what: &str,
    device: &Device,
    input: I,
) -> (Net, Vec<f32>)
where
    I: Fn(&Net, &[usize]) -> Tensor<2>,
{
    let n_heads = net.heads.len();
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut optim = AdamConfig::new().init();
    let sw = balance_weights(labels, n_heads);
    let hw = vec![1.0f32; n_heads];
    let mut idx: Vec<usize> = (0..n).collect();
    let mut losses = Vec::new();
    let pb = bar(cfg.epochs as u64, cfg.progress, what);
    for _ in 0..cfg.epochs {
        idx.shuffle(&mut rng);
        let mut sum = 0.0;
        let mut steps = 0;
        for chunk in idx.chunks(cfg.batch.max(1)) {
            if cfg.max_steps_per_epoch.is_some_and(|m| steps >= m) {
                break;
            }
            let y = Tensor::from_data(
                TensorData::new(targets(labels, chunk, n_heads), [chunk.len(), n_heads]),
                device,
            );
            let w = Tensor::from_data(
                TensorData::new(gather_weights(&sw, chunk, n_heads), [chunk.len(), n_heads]),
                device,
            );
            let loss = weighted_bce(input(&net, chunk), y, &hw, Some(w));
            sum += scalar(loss.clone());
            steps += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(cfg.lr, net, grads);
        }
        losses.push(sum / steps.max(1) as f32);
        pb.inc(1);
    }
    pb.finish_and_clear();
    (net, losses)
}

/// Train one dense head per label column on frozen-encoder embeddings (or any fixed feature
/// vectors: with `hidden = []` a head is logistic regression).
/// `labels[i][h]` is window i's label for head h (None = unlabelled for that head).
pub fn train_heads(
    emb: &[Vec<f32>],
    labels: &[Vec<Option<f32>>],
    head_names: &[String],
    hidden: &[usize],
    cfg: &TrainConfig,
) -> (Vec<HeadWeights>, Vec<f32>) {
    let device = Device::flex().autodiff();
    device.seed(cfg.seed);
    let input_dim = emb.first().map(|e| e.len()).unwrap_or(0);
    let net = Net::heads_only(head_names.len(), input_dim, hidden, &device);
    let (net, losses) = fit(
        net,
        emb.len(),
        labels,
        cfg,
        "heads",
        &device,
        |net, rows| {
            let rows: Vec<&[f32]> = rows.iter().map(|&i| emb[i].as_slice()).collect();
            net.forward_heads(matrix(&rows, &device))
        },
    );
    (net.to_weights(head_names).heads, losses)
}

/// The fully supervised baseline: encoder and heads trained together from a fresh seed.
pub fn train_supervised(
    windows: &[Vec<f32>],
    labels: &[Vec<Option<f32>>],
    head_names: &[String],
    hidden: &[usize],
    cfg: &TrainConfig,
) -> (NetworkWeights, Vec<f32>) {
    let device = Device::flex().autodiff();
    device.seed(cfg.seed);
    let net = Net::new(head_names.len(), hidden, &device);
    let (net, losses) = fit(
        net,
        windows.len(),
        labels,
        cfg,
        "supervised",
        &device,
        |net, rows| {
            let rows: Vec<&[f32]> = rows.iter().map(|&i| windows[i].as_slice()).collect();
            net.forward(batch_tensor(&rows, &device))
        },
    );
    (net.to_weights(head_names), losses)
}
