//! The personalisation experiment: what one on-gateway retraining round does for a person the
//! model has never met, for every EEGMAT subject in turn (leave-one-subject-out).
//!
//! For each subject S (the "wearer"):
//! 1. **The model S's gateway would ship with** never saw S: its self-supervised encoder is
//!    pretrained on the other subjects' ECG (plus any extra unlabelled recordings), its emotion
//!    head is trained on the other 23 subjects' labels, and its replay pack is built from
//!    those same people. Encoders are pretrained once per *encoder fold* (`folds` groups of
//!    subjects, default 6 × 4) to fit the compute budget, so an encoder has also not seen three
//!    other people; the head and the pack are per subject (all 23 others).
//! 2. **The gateway streams S's rest and then task recording**: every window of S, in time
//!    order, is a stored unlabelled window. `reports_per_class` windows of each condition,
//!    evenly spaced through the recording, are S's self-reports.
//! 3. **One retraining round** — [`run_round`], the function the gateway's scheduler calls,
//!    with the gateway's [`RoundConfig`] — adapts the encoder on S's windows (+ replay) and
//!    re-fits the head on the pack + S's self-reports; its gate decides promote / reject.
//! 4. **Scored on S's windows that were not self-reports** (the labels never touched any
//!    training; the signals did, unlabelled, exactly as on a gateway): the shipped model
//!    (`base`), the round's candidate (`round`), what the gateway then serves (`served`:
//!    candidate if promoted, else base), and three ablations with the round's own head fitting
//!    (which trains on the pack minus the gate's 4 held-out subjects) — `refit` (serving
//!    encoder, head re-fitted without self-reports), `reports_only` (serving encoder, with
//!    them) and `ssl_only` (adapted encoder, without them) — to tell the contributions apart:
//!    base → refit is the smaller head training set, refit → reports_only the self-reports,
//!    reports_only → round the encoder adaptation.
//!
//! Results are appended per subject to a JSON-lines file as they finish, so a long run can be
//! stopped and resumed (`resume`), and fold encoders are cached as ONNX files.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, TrainWindow};
use super::experiment::subject_folds;
use super::fusion;
use super::metrics::Confusion;
use super::model::EMOTION_HIDDEN;
use super::round::{
    build_pack, refit_heads, run_round, Decision, GateMetrics, RoundConfig, RoundData,
};
use super::train::{embed, predict_with, pretrain, train_heads, TrainConfig};
use crate::fs::atomic_write;
use crate::model::onnx::{export_onnx, import_onnx};
use crate::model::replay::ReplayPack;
use crate::model::NetworkWeights;
use crate::model::WEARER_FEATURES;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersonaliseConfig {
    /// Label column evaluated (EEGMAT: "arousal").
    pub head: String,
    /// Encoder folds (groups of subjects left out of one pretrained encoder).
    pub folds: usize,
    /// Pretraining of each fold's encoder (from scratch).
    pub pretext: TrainConfig,
    /// Training of the shipped head of each subject's base model.
    pub heads: TrainConfig,
    /// Pretext windows in each subject's replay pack (the shipped pack has 300).
    pub pack_pretext: usize,
    /// Self-reports per condition (rest, task).
    pub reports_per_class: usize,
    /// The retraining round (the gateway's settings).
    pub round: RoundConfig,
    /// Base models with a fused head (embedding + wearer-relative HR/HRV, as the shipped v2)
    /// instead of the paper's dense head; windows that fail the quality gate are neither
    /// trained on nor evaluated.
    pub fused: bool,
}

/// One model's numbers on a subject's evaluation windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: String,
    pub confusion: Confusion,
    pub balanced_accuracy: f64,
    /// Threshold-free: probability that a random task window scores above a random rest
    /// window (ties count ½). NaN when the subject has only one class.
    pub auc: f64,
    pub mean_score_rest: f64,
    pub mean_score_task: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubjectResult {
    pub subject: String,
    pub fold: usize,
    /// S's windows streamed to the gateway (rest, task).
    pub windows_rest: usize,
    pub windows_task: usize,
    /// Self-reports: (window index in stream order, label).
    pub self_reports: Vec<(usize, f32)>,
    pub eval_windows: usize,
    pub arms: Vec<ArmResult>,
    /// The round's gate.
    pub decision: String,
    pub gate_before: GateMetrics,
    pub gate_after: GateMetrics,
    pub seconds: f64,
}

impl SubjectResult {
    pub fn arm(&self, name: &str) -> Option<&ArmResult> {
        self.arms.iter().find(|a| a.arm == name)
    }
}

pub const ARMS: [&str; 6] = [
    "base",
    "refit",
    "reports_only",
    "ssl_only",
    "round",
    "served",
];

/// One left-out subject's setting: their base model and replay pack, their stream with the
/// self-reports, and the windows they are scored on.
struct Wearer {
    base: NetworkWeights,
    pack: ReplayPack,
    data_round: RoundData,
    /// Label per stream window (None: unlabelled in the manifest).
    labels: Vec<Option<f32>>,
    rest: Vec<usize>,
    task: Vec<usize>,
    /// Stream indices of the self-reports, in time order.
    reports: Vec<usize>,
    /// Evaluated windows (every labelled window but the self-reports) and their truth.
    ex: Vec<Vec<f32>>,
    /// Their wearer-relative features (fused models; zeros without a baseline).
    ef: Vec<Vec<f32>>,
    ey: Vec<bool>,
}

impl Wearer {
    fn new(
        s: &str,
        one_head: &Dataset,
        pretext_net: &NetworkWeights,
        pack_unl: &Dataset,
        cfg: &PersonaliseConfig,
        names: &[String],
    ) -> Wearer {
        let others = subset(one_head, |w| w.subject != s);
        let mine = subset(one_head, |w| w.subject == s);
        // The base model: this fold's encoder + a head on the other 23 subjects.
        let base = if cfg.fused {
            fused_base(&others, pretext_net, &names[0])
        } else {
            let (ox, oy): (Vec<Vec<f32>>, Vec<Vec<Option<f32>>>) = others
                .windows
                .iter()
                .filter(|w| w.labels[0].is_some())
                .map(|w| (w.samples.clone(), w.labels.clone()))
                .unzip();
            let mut hcfg = cfg.heads.clone();
            hcfg.progress = false;
            let (heads, _) =
                train_heads(&embed(pretext_net, &ox), &oy, names, &EMOTION_HIDDEN, &hcfg);
            NetworkWeights {
                convs: pretext_net.convs.clone(),
                heads,
                features: Vec::new(),
            }
        };
        // The wearer's physiology relative to their own baseline (all of S's good windows,
        // no labels — what S's gateway learns from the stream).
        let mine_subjects: Vec<String> = mine.windows.iter().map(|w| w.subject.clone()).collect();
        let (mine_phys, mine_rel) = fusion::wearer_features(&mine.samples(), &mine_subjects);
        let pack = build_pack(
            &others,
            &subset(pack_unl, |w| w.subject != s),
            cfg.pack_pretext,
            cfg.round.seed,
        );
        // The stream: rest then task (manifest order), time order within each.
        let labels: Vec<Option<f32>> = mine.windows.iter().map(|w| w.labels[0]).collect();
        let is = |want: bool| -> Vec<usize> {
            (0..labels.len())
                .filter(|&i| labels[i].map(|v| v >= 0.5) == Some(want))
                .collect()
        };
        let (rest, task) = (is(false), is(true));
        let mut reports: Vec<usize> = evenly(rest.len(), cfg.reports_per_class)
            .into_iter()
            .map(|j| rest[j])
            .chain(
                evenly(task.len(), cfg.reports_per_class)
                    .into_iter()
                    .map(|j| task[j]),
            )
            .collect();
        reports.sort_unstable();
        let data_round = RoundData {
            unlabelled: mine.samples(),
            user_labelled: reports
                .iter()
                .map(|&i| (mine.windows[i].samples.clone(), vec![labels[i]]))
                .collect(),
        };
        // A fused study evaluates only what the gateway scores: windows that pass the gate.
        let eval: Vec<usize> = (0..labels.len())
            .filter(|i| !reports.contains(i) && labels[*i].is_some())
            .filter(|&i| !cfg.fused || mine_phys[i].good)
            .collect();
        Wearer {
            base,
            pack,
            ef: eval
                .iter()
                .map(|&i| {
                    mine_rel[i]
                        .unwrap_or([0.0; 3])
                        .iter()
                        .map(|&v| v as f32)
                        .collect()
                })
                .collect(),
            ex: eval
                .iter()
                .map(|&i| mine.windows[i].samples.clone())
                .collect(),
            ey: eval
                .iter()
                .map(|&i| labels[i].is_some_and(|v| v >= 0.5))
                .collect(),
            data_round,
            labels,
            rest,
            task,
            reports,
        }
    }

    /// The same stream without self-reports.
    fn no_reports(&self) -> RoundData {
        RoundData {
            unlabelled: self.data_round.unlabelled.clone(),
            user_labelled: Vec::new(),
        }
    }

    /// Arousal scores of `m` on the evaluated windows (a fused `m` reads their features).
    fn score(&self, m: &NetworkWeights) -> Vec<f32> {
        predict_with(m, &self.ex, &self.ef)
            .into_iter()
            .map(|r| r[0])
            .collect()
    }
}

/// A fused base model: `encoder` + one fused head fitted on `others`' good, labelled windows
/// with each subject's wearer-relative features (as `finetune --fused`).
fn fused_base(others: &Dataset, encoder: &NetworkWeights, head: &str) -> NetworkWeights {
    let subjects: Vec<String> = others.windows.iter().map(|w| w.subject.clone()).collect();
    let samples = others.samples();
    let (_, rel) = fusion::wearer_features(&samples, &subjects);
    let emb = embed(encoder, &samples);
    let rows: Vec<(&[f32], [f64; 3], bool)> = (0..samples.len())
        .filter_map(|i| {
            Some((
                emb[i].as_slice(),
                rel[i]?,
                others.windows[i].labels[0]? >= 0.5,
            ))
        })
        .collect();
    NetworkWeights {
        convs: encoder.convs.clone(),
        heads: vec![fusion::fit_fused_head(head, &rows)],
        features: WEARER_FEATURES.iter().map(|s| s.to_string()).collect(),
    }
}

/// AUC of `f32` scores ([`crate::learn::metrics::auc`]); NaN unless both classes are present
/// (the study's results files write it as a number).
pub fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    let s: Vec<f64> = scores.iter().map(|&v| f64::from(v)).collect();
    crate::learn::metrics::auc(&s, labels).unwrap_or(f64::NAN)
}

fn arm(name: &str, scores: &[f32], labels: &[bool]) -> ArmResult {
    let mean = |want: bool| {
        let v: Vec<f64> = scores
            .iter()
            .zip(labels)
            .filter(|(_, &y)| y == want)
            .map(|(&s, _)| s as f64)
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let confusion = Confusion::from_scores(scores, labels, 0.5);
    ArmResult {
        arm: name.to_string(),
        balanced_accuracy: confusion.balanced_accuracy(),
        confusion,
        auc: auc(scores, labels),
        mean_score_rest: mean(false),
        mean_score_task: mean(true),
    }
}

/// `k` indices spread evenly over `0..n` (the middle of `k` equal slices).
fn evenly(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|j| ((2 * j + 1) * n) / (2 * k)).collect()
}

fn subset(data: &Dataset, keep: impl Fn(&TrainWindow) -> bool) -> Dataset {
    Dataset {
        label_names: data.label_names.clone(),
        windows: data.windows.iter().filter(|w| keep(w)).cloned().collect(),
    }
}

/// The pretrained encoder of fold `fi` (pretext network, seven heads), from `cache` if it is
/// there, else trained and written there.
fn fold_encoder(
    fi: usize,
    unlabelled: &[Vec<f32>],
    cfg: &PersonaliseConfig,
    cache: Option<&Path>,
    log: &mut dyn FnMut(&str),
) -> Result<NetworkWeights> {
    let file = cache.map(|d| {
        d.join(format!(
            "fold{}-of{}-e{}-s{}.pretext.onnx",
            fi + 1,
            cfg.folds,
            cfg.pretext.epochs,
            cfg.pretext.seed
        ))
    });
    if let Some(f) = file.as_ref().filter(|f| f.exists()) {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let (w, _) = import_onnx(&bytes).with_context(|| format!("{}", f.display()))?;
        log(&format!("fold {}: encoder from {}", fi + 1, f.display()));
        return Ok(w);
    }
    let mut pcfg = cfg.pretext.clone();
    pcfg.seed = cfg.pretext.seed + fi as u64;
    let t0 = std::time::Instant::now();
    let (w, hist) = pretrain(unlabelled, &[], &pcfg, None);
    log(&format!(
        "fold {}: encoder pretrained on {} windows, {} epochs, loss {:.4} → {:.4}, {:.0} s",
        fi + 1,
        unlabelled.len(),
        pcfg.epochs,
        hist.first().map(|e| e.train_loss).unwrap_or(f32::NAN),
        hist.last().map(|e| e.train_loss).unwrap_or(f32::NAN),
        t0.elapsed().as_secs_f64()
    ));
    if let Some(f) = &file {
        if let Some(d) = f.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let bytes = export_onnx(&w, &[], env!("CARGO_PKG_VERSION"))?;
        std::fs::write(f, bytes).with_context(|| format!("writing {}", f.display()))?;
    }
    Ok(w)
}

/// Subjects already in a results file (for resuming). Lines that do not parse are an error
/// naming the file and line: a half-written file is not silently overwritten.
pub fn read_results(path: &Path) -> Result<Vec<SubjectResult>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a subject result", path.display(), i + 1))
        })
        .collect()
}

/// Run the experiment for `subjects` (all when empty), appending one JSON line per subject
/// to `results`. Subjects already in `results` are skipped.
pub fn run(
    data: &Dataset,
    extra: &Dataset,
    cfg: &PersonaliseConfig,
    only: &[String],
    results: &Path,
    cache: Option<&Path>,
    mut log: impl FnMut(&str),
) -> Result<Vec<SubjectResult>> {
    let h = data.label_index(&cfg.head)?;
    let subjects = data.subjects();
    if cfg.folds < 2 || subjects.len() < cfg.folds {
        bail!(
            "{} subjects cannot make {} encoder folds",
            subjects.len(),
            cfg.folds
        );
    }
    for s in only {
        if !subjects.contains(s) {
            bail!("--subject {s}: not in the manifest (it has {subjects:?})");
        }
    }
    let mut done = read_results(results)?;
    let mut filled = false;
    let folds = subject_folds(&subjects, cfg.folds);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results)
        .with_context(|| format!("opening {}", results.display()))?;
    let names = vec![cfg.head.clone()];
    // Only this head's label, so the pack and the models have exactly one head.
    let one_head = Dataset {
        label_names: names.clone(),
        windows: data
            .windows
            .iter()
            .map(|w| TrainWindow {
                labels: vec![w.labels[h]],
                ..w.clone()
            })
            .collect(),
    };
    for (fi, fold) in folds.iter().enumerate() {
        let todo: Vec<&String> = fold
            .iter()
            .filter(|s| only.is_empty() || only.contains(s))
            .filter(|s| !done.iter().any(|r| &r.subject == *s))
            .collect();
        let stale = done.iter().any(|r| {
            fold.contains(&r.subject)
                && r.arm("refit").is_none()
                && (only.is_empty() || only.contains(&r.subject))
        });
        if todo.is_empty() && !stale {
            continue;
        }
        let train = subset(&one_head, |w| !fold.contains(&w.subject));
        let mut unl = train.samples();
        unl.extend(extra.samples());
        let pretext_net = fold_encoder(fi, &unl, cfg, cache, &mut log)?;
        // The pack's unlabelled side: the fold's training windows + the extra recordings.
        let mut pack_unl = train.clone();
        pack_unl.windows.extend(extra.windows.iter().cloned());

        // Results from before the `refit` arm existed get it added (cheap: heads only).
        for r in done.iter_mut().filter(|r| fold.contains(&r.subject)) {
            if r.arm("refit").is_some() || !(only.is_empty() || only.contains(&r.subject)) {
                continue;
            }
            let w = Wearer::new(&r.subject, &one_head, &pretext_net, &pack_unl, cfg, &names);
            let refit = refit_heads(&w.base, &w.base, &w.no_reports(), &w.pack, &cfg.round)?;
            let a = arm("refit", &w.score(&refit), &w.ey);
            log(&format!(
                "{}: added arm refit (balanced accuracy {:.3})",
                r.subject, a.balanced_accuracy
            ));
            r.arms.insert(1, a);
            filled = true;
        }
        for s in todo {
            let t0 = std::time::Instant::now();
            let w = Wearer::new(s, &one_head, &pretext_net, &pack_unl, cfg, &names);
            let (base, pack, data_round) = (&w.base, &w.pack, &w.data_round);
            let outcome = run_round(
                base,
                Some(&pretext_net),
                None,
                data_round,
                pack,
                &cfg.round,
                &mut |_| Ok(()),
                &mut |_| {},
                &|| None,
            )?;
            let adapted = NetworkWeights {
                convs: outcome.pretext.convs.clone(),
                heads: Vec::new(),
                features: base.features.clone(),
            };
            let refit = refit_heads(base, base, &w.no_reports(), pack, &cfg.round)?;
            let reports_only = refit_heads(base, base, data_round, pack, &cfg.round)?;
            let ssl_only = refit_heads(&adapted, base, &w.no_reports(), pack, &cfg.round)?;
            let base_scores: Vec<f32> = w.score(base);
            let round_scores = w.score(&outcome.candidate);
            let promoted = outcome.decision == Decision::Promote;
            let ey = &w.ey;
            let arms = vec![
                arm("base", &base_scores, ey),
                arm("refit", &w.score(&refit), ey),
                arm("reports_only", &w.score(&reports_only), ey),
                arm("ssl_only", &w.score(&ssl_only), ey),
                arm("round", &round_scores, ey),
                arm(
                    "served",
                    if promoted {
                        &round_scores
                    } else {
                        &base_scores
                    },
                    ey,
                ),
            ];
            let (rest, task, reports) = (&w.rest, &w.task, &w.reports);
            let r = SubjectResult {
                subject: s.clone(),
                fold: fi + 1,
                windows_rest: rest.len(),
                windows_task: task.len(),
                self_reports: reports
                    .iter()
                    .map(|&i| (i, w.labels[i].unwrap_or(f32::NAN)))
                    .collect(),
                eval_windows: w.ex.len(),
                arms,
                decision: match &outcome.decision {
                    Decision::Promote => "promote".into(),
                    Decision::Reject { reason } => format!("reject: {reason}"),
                },
                gate_before: outcome.before.clone(),
                gate_after: outcome.after.clone(),
                seconds: t0.elapsed().as_secs_f64(),
            };
            log(&format!(
                "{s} (fold {}): {} rest + {} task windows, {} self-reports, {} evaluated; balanced accuracy {}; {}; {:.0} s",
                fi + 1,
                r.windows_rest,
                r.windows_task,
                r.self_reports.len(),
                r.eval_windows,
                r.arms
                    .iter()
                    .map(|a| format!("{} {:.3}", a.arm, a.balanced_accuracy))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.decision,
                r.seconds
            ));
            writeln!(out, "{}", serde_json::to_string(&r)?)
                .and_then(|_| out.flush())
                .with_context(|| format!("writing {}", results.display()))?;
            done.push(r);
        }
    }
    if filled {
        // Rewrite the file with the added arms (atomically: a crash keeps the old one).
        let mut text = String::new();
        for r in &done {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        atomic_write(results, text.as_bytes())?;
    }
    done.sort_by(|a, b| a.subject.cmp(&b.subject));
    Ok(done)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    (m, sd)
}

/// Two-sided exact sign test: P(at least this lopsided | no effect), ties dropped.
pub fn sign_test(better: usize, worse: usize) -> f64 {
    let n = better + worse;
    if n == 0 {
        return 1.0;
    }
    let k = better.min(worse);
    let mut c = 1.0f64; // C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            c = c * (n - i + 1) as f64 / i as f64;
        }
        tail += c;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// The summary table (markdown) and per-subject table.
pub fn markdown(results: &[SubjectResult]) -> String {
    let mut s = String::new();
    s.push_str("| model | pooled balanced accuracy | per-subject balanced accuracy, mean ± sd | per-subject AUC, mean ± sd | better / same / worse than base (sign test p) |\n|---|---|---|---|---|\n");
    for name in ARMS {
        let mut pooled = Confusion::default();
        let mut ba = Vec::new();
        let mut au = Vec::new();
        let (mut better, mut same, mut worse) = (0, 0, 0);
        for r in results {
            let (Some(a), Some(b)) = (r.arm(name), r.arm("base")) else {
                continue;
            };
            pooled.add(&a.confusion);
            ba.push(a.balanced_accuracy);
            au.push(a.auc);
            let d = a.balanced_accuracy - b.balanced_accuracy;
            if d > 1e-9 {
                better += 1
            } else if d < -1e-9 {
                worse += 1
            } else {
                same += 1
            }
        }
        let (m, sd) = mean_sd(&ba);
        let (am, asd) = mean_sd(&au);
        let cmp = if name == "base" {
            "—".to_string()
        } else {
            format!(
                "{better} / {same} / {worse} (p = {:.3})",
                sign_test(better, worse)
            )
        };
        s.push_str(&format!(
            "| {name} | {:.3} | {m:.3} ± {sd:.3} | {am:.3} ± {asd:.3} | {cmp} |\n",
            pooled.balanced_accuracy()
        ));
    }
    // Did the gate pick right for the wearer? (candidate vs base on the wearer's windows)
    let (mut p_up, mut p_down, mut p_same, mut r_up, mut r_down, mut r_same) = (0, 0, 0, 0, 0, 0);
    for r in results {
        let (Some(a), Some(b)) = (r.arm("round"), r.arm("base")) else {
            continue;
        };
        let d = a.balanced_accuracy - b.balanced_accuracy;
        let (up, down, same) = if r.decision == "promote" {
            (&mut p_up, &mut p_down, &mut p_same)
        } else {
            (&mut r_up, &mut r_down, &mut r_same)
        };
        if d > 1e-9 {
            *up += 1
        } else if d < -1e-9 {
            *down += 1
        } else {
            *same += 1
        }
    }
    s.push_str(&format!(
        "\nGate: {} of {} rounds promoted. For the wearer (candidate vs base on their evaluated \
         windows), the promoted candidates were better for {p_up}, worse for {p_down}, equal for \
         {p_same}; the rejected ones would have been better for {r_up}, worse for {r_down}, equal \
         for {r_same}.\n\n",
        p_up + p_down + p_same,
        results.len()
    ));
    s.push_str("| subject | rest / task windows | evaluated | base | refit | reports_only | ssl_only | round | gate |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let b = |n: &str| {
            r.arm(n)
                .map(|a| format!("{:.3}", a.balanced_accuracy))
                .unwrap_or_default()
        };
        let gate = if r.decision == "promote" {
            "promote".to_string()
        } else {
            "reject".to_string()
        };
        s.push_str(&format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {gate} |\n",
            r.subject,
            r.windows_rest,
            r.windows_task,
            r.eval_windows,
            b("base"),
            b("refit"),
            b("reports_only"),
            b("ssl_only"),
            b("round"),
        ));
    }
    s
}

/// Where a run keeps its fold encoders when the user gives no cache directory.
pub fn default_cache(results: &Path) -> PathBuf {
    results.with_extension("encoders")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_ties() {
        assert_eq!(auc(&[0.9, 0.1], &[true, false]), 1.0);
        assert_eq!(auc(&[0.1, 0.9], &[true, false]), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.2], &[true, false, false]), 0.75);
        assert!(auc(&[0.5], &[true]).is_nan());
    }

    #[test]
    fn sign_test_exact() {
        // 9 better, 1 worse of 10: 2 * (1 + 10) / 1024.
        assert!((sign_test(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn evenly_spreads_reports() {
        assert_eq!(evenly(18, 2), vec![4, 13]);
        assert_eq!(evenly(6, 2), vec![1, 4]);
        assert_eq!(evenly(1, 2), vec![0]);
        assert!(evenly(0, 2).is_empty());
    }
}
