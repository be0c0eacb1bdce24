//! The learning core end to end: burn forward ≡ exported ONNX under `ort` (≤ 1e-4 on real
//! windows), pretext training learns, and the CLI (`pretrain` → `finetune` → `eval`/`infer`)
//! writes models and cards that load, with errors that name the file at fault.

use std::path::{Path, PathBuf};
use std::process::Command;

use affectgate::dsp::PreprocessConfig;
use affectgate::infer::{find_onnxruntime_dylib, Backend, Model};
use affectgate::learn::dataset::{labelled_from_manifest, Dataset};
use affectgate::learn::model::{Net, EMOTION_HIDDEN, PRETEXT_HIDDEN};
use affectgate::learn::train::{embed, predict, pretext_eval, pretrain, TrainConfig};
use affectgate::model::onnx::{export_onnx, import_onnx};
use affectgate::model::WINDOW_LEN;

use crate::util::shared_data as data_dir;

/// A manifest of the first `n` EEGMAT subjects (rest + task), written to a temp folder.
fn small_manifest(dir: &Path, n: usize) -> PathBuf {
    let data = data_dir().unwrap();
    let mut csv = String::from("file,subject,arousal\n");
    for s in 0..n {
        for (cond, y) in [("rest", 0), ("task", 1)] {
            let f = data.join(format!("eegmat/Subject{s:02}_{cond}.edf"));
            csv.push_str(&format!("{},Subject{s:02},{y}\n", f.display()));
        }
    }
    let p = dir.join("manifest.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

fn windows(d: &Dataset, n: usize) -> Vec<Vec<f32>> {
    d.windows
        .iter()
        .take(n)
        .map(|w| w.samples.clone())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn run_tract(bytes: &[u8], ws: &[Vec<f32>], feats: &[f32]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut m = Model::load_bytes(bytes, &Backend::Tract).unwrap();
    let flat: Vec<f32> = ws.iter().flatten().copied().collect();
    let s = m.run_with(&flat, feats, ws.len()).unwrap();
    (s.values, s.embedding.expect("model exports its embedding"))
}

#[test]
fn burn_forward_and_exported_onnx_agree_on_real_windows() {
    let Some(_) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ds = labelled_from_manifest(&small_manifest(tmp.path(), 1), &PreprocessConfig::default())
        .unwrap();
    let ws = windows(&ds, 6);
    assert_eq!(ws[0].len(), WINDOW_LEN);

    // A seeded fresh emotion network and, if present, the shipped default model.
    let device = burn::tensor::Device::flex();
    device.seed(11);
    let fresh = Net::new(1, &EMOTION_HIDDEN, &device).to_weights(&["arousal".to_string()]);
    let mut cases = vec![("fresh", fresh)];
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/affectgate-arousal-v2.onnx");
    let (w, _) = import_onnx(&std::fs::read(&shipped).unwrap()).unwrap();
    assert_eq!(
        w.features,
        affectgate::model::WEARER_FEATURES,
        "the shipped model is fused"
    );
    cases.push(("shipped", w));
    for (name, w) in cases {
        let bytes = export_onnx(&w, &[], "test").unwrap();
        // Features spanning calm to stressed (the burn side has no fused heads: a fused
        // network's heads are checked against the plain-Rust reference instead).
        let f = w.features.len();
        let feats: Vec<f32> = (0..ws.len() * f)
            .map(|i| (i as f32 * 0.7).sin() * 3.0)
            .collect();
        let (ort_scores, ort_emb) = run_tract(&bytes, &ws, &feats);
        let burn_emb = embed(&w, &ws);
        let burn_scores: Vec<Vec<f32>> = if f == 0 {
            predict(&w, &ws)
        } else {
            (0..ws.len())
                .map(|i| {
                    affectgate::model::weights::reference_heads(
                        &w,
                        &burn_emb[i],
                        &feats[i * f..(i + 1) * f],
                    )
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
                })
                .collect()
        };
        let mut worst = 0.0f32;
        for i in 0..ws.len() {
            worst = worst.max(max_abs_diff(&ort_scores[i], &burn_scores[i]));
            worst = worst.max(max_abs_diff(&ort_emb[i], &burn_emb[i]));
        }
        eprintln!("{name}: max |burn − ort(tract)| = {worst:.2e}");
        assert!(worst <= 1e-4, "{name}: burn and ONNX disagree by {worst}");
        // and the scores are real probabilities that differ between windows
        assert!(ort_scores.iter().all(|r| (0.0..=1.0).contains(&r[0])));
    }
}

#[test]
fn pretext_training_lowers_the_pretext_loss() {
    let Some(_) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ds = labelled_from_manifest(&small_manifest(tmp.path(), 2), &PreprocessConfig::default())
        .unwrap();
    let ws = windows(&ds, 24);
    let device = burn::tensor::Device::flex();
    device.seed(3);
    let names: Vec<String> = affectgate::learn::model::PRETEXT_TASKS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let init = Net::new(7, &PRETEXT_HIDDEN, &device).to_weights(&names);
    let (before, _) = pretext_eval(&init, &ws, 5);
    let cfg = TrainConfig {
        epochs: 2,
        batch: 16,
        lr: 1e-3,
        seed: 3,
        max_steps_per_epoch: Some(6),
        progress: false,
    };
    let (trained, hist) = pretrain(&ws, &[], &cfg, Some(&init));
    let (after, acc) = pretext_eval(&trained, &ws, 5);
    eprintln!("pretext loss {before:.4} → {after:.4}; history {hist:?}");
    assert_eq!(hist.len(), 2);
    assert_eq!(acc.len(), 7);
    assert!(after < before, "loss did not go down: {before} → {after}");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_affectgate"))
}

#[test]
fn cli_pretrain_finetune_eval_infer() {
    let Some(data) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let manifest = small_manifest(tmp.path(), 4);
    let pretext = tmp.path().join("pretext.onnx");
    let out = bin()
        .args([
            "pretrain",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--val-frac",
            "0",
            "--out",
        ])
        .arg(&pretext)
        .arg(data.join("eegmat/Subject00_rest.edf"))
        .arg(data.join("mitbih/100.hea"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = tmp.path().join("m.onnx");
    let out = bin()
        .args([
            "finetune",
            "--epochs",
            "2",
            "--eval-folds",
            "2",
            "--encoder",
        ])
        .arg(&pretext)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the card binds to the model bytes and tells what the model saw
    let card = affectgate::model::card::ModelCard::load_for_model(&model).unwrap();
    assert_eq!(card.heads.len(), 1);
    assert_eq!(card.heads[0].name, "arousal");
    assert_eq!(card.training.finetune_subjects.len(), 4);
    assert_eq!(card.training.pretext_data.len(), 2);
    assert_eq!(card.evaluation.len(), 1);
    assert!(card.evaluation[0].protocol.contains("leave-subjects-out"));
    // the encoder really is the pretrained one (frozen)
    let (pw, _) = import_onnx(&std::fs::read(&pretext).unwrap()).unwrap();
    let (mw, _) = import_onnx(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(pw.convs[3].weight, mw.convs[3].weight);
    assert_eq!(mw.heads[0].layers.len(), 3);
    assert_eq!(mw.heads[0].layers[0].out_dim, 512);

    let out = bin()
        .args(["eval", "--json", "--model"])
        .arg(&model)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = &v["heads"]["arousal"];
    // 4 subjects × (18 rest + 6 task) windows; Subject02's rest recording holds no ECG, so
    // the quality gate keeps its 18 windows (and a few noisy ones) out of every number.
    assert_eq!(v["windows"], 96);
    let good = v["windows_good"].as_u64().unwrap();
    assert!((60..=78).contains(&good), "{good} windows pass the gate");
    assert_eq!(h["n"].as_u64().unwrap(), good);
    for k in ["balanced_accuracy", "accuracy", "f1", "auc"] {
        let x = h[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    let c = &h["confusion"];
    let total: u64 = ["tp", "tn", "fp", "fn_"]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, good);
    // Beside the model, the heart-rate baselines on the same windows: absolute HR on all of
    // them; wearer-relative ones on subjects with a baseline (Subject02 has 6 good windows).
    let b = &h["baselines"];
    assert_eq!(b["hr"]["n"].as_u64().unwrap(), good);
    for k in ["hr_relative", "hr_hrv_relative"] {
        let n = b[k]["n"].as_u64().unwrap();
        assert!(n < good && n >= good - 10, "{k}: n = {n}");
        let x = b[k]["balanced_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    // Per subject: the three subjects who keep both classes after the gate (Subject02 keeps
    // only its task windows), for the model and every baseline.
    for scorer in ["model", "hr", "hr_relative", "hr_hrv_relative"] {
        let m = h["per_subject"][scorer].as_object().unwrap();
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(names, ["Subject00", "Subject01", "Subject03"], "{scorer}");
        assert!(m
            .values()
            .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
    }

    // infer, with both backends in separate processes (one ort backend per process)
    let rec = data.join("eegmat/Subject01_task.edf");
    let scores = |backend: &str| -> Option<Vec<f64>> {
        let out = bin()
            .args(["infer", "--json", "--backend", backend, "--model"])
            .arg(&model)
            .arg(&rec)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("{backend}: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(
            v.as_array()
                .unwrap()
                .iter()
                .map(|w| w["scores"]["arousal"].as_f64().unwrap())
                .collect(),
        )
    };
    let tract = scores("tract").expect("tract backend always works");
    assert_eq!(tract.len(), 6, "62 s task recording → 6 windows");
    if find_onnxruntime_dylib().is_some() {
        let ort = scores("onnxruntime").expect("ONNX Runtime found but failed");
        let worst = tract
            .iter()
            .zip(&ort)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("max |tract − onnxruntime| = {worst:.2e}");
        assert!(worst <= 1e-4);
    } else {
        crate::util::missing(
            "onnxruntime comparison: no libonnxruntime found",
            "AFFECTGATE_REQUIRE_ONNXRUNTIME",
        );
    }
}

/// `pretrain` applies the quality gate; `finetune --fused` writes a two-input model whose card
/// documents the features and holds a leave-one-subject-out evaluation beside the heart-rate
/// baselines; `eval` feeds it each subject's wearer-relative features and reports the arms on
/// its embedding; `infer` has no score where no wearer baseline exists.
#[test]
fn cli_fused_model_end_to_end() {
    let Some(data) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let manifest = small_manifest(tmp.path(), 5);
    let pretext = tmp.path().join("pretext.onnx");
    let out = bin()
        .args([
            "pretrain",
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--val-frac",
            "0",
            "--out",
        ])
        .arg(&pretext)
        .arg(data.join("eegmat/Subject02_rest.edf"))
        .arg(data.join("eegmat/Subject02_task.edf"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Subject02's rest recording holds no ECG: its 18 windows fail the gate; of the 6 task
    // windows at least 5 pass.
    let line = err
        .lines()
        .find(|l| l.starts_with("quality gate:"))
        .unwrap_or_else(|| panic!("{err}"));
    let n: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        line.ends_with("of 24 windows pass and are used") && (5..=6).contains(&n),
        "{line}"
    );

    let model = tmp.path().join("fused.onnx");
    let out = bin()
        .args(["finetune", "--fused", "--encoder"])
        .arg(&pretext)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w, _) = import_onnx(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(w.features, affectgate::model::WEARER_FEATURES);
    assert_eq!(w.heads[0].layers.len(), 1);
    assert_eq!(w.heads[0].layers[0].in_dim, 128 + 3);
    let card = affectgate::model::card::ModelCard::load_for_model(&model).unwrap();
    let names: Vec<&str> = card.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, affectgate::model::WEARER_FEATURES);
    let e = &card.evaluation[0];
    assert!(
        e.protocol.starts_with("leave-one-subject-out (5 subjects)"),
        "{}",
        e.protocol
    );
    let keys: Vec<&str> = e.baselines.keys().map(String::as_str).collect();
    assert_eq!(keys, ["hr", "hr_hrv_relative", "hr_relative"]);
    assert!((0.0..=1.0).contains(&e.auc.unwrap()));

    let out = bin()
        .args(["eval", "--json", "--model"])
        .arg(&model)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = &v["heads"]["arousal"];
    // A fused model scores exactly the windows that have a wearer baseline.
    assert_eq!(h["n"], h["baselines"]["hr_relative"]["n"]);
    let arms: Vec<&str> = h["arms"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(arms, ["fused", "fused_relative", "ssl", "ssl_relative"]);

    // One 62 s recording is 6 windows: too few for a wearer baseline, so no score.
    let out = bin()
        .args(["infer", "--json", "--model"])
        .arg(&model)
        .arg(data.join("eegmat/Subject01_task.edf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["scores"]["arousal"].is_null()), "{v}");
}

#[test]
fn broken_model_and_manifest_errors_name_the_file() {
    let Some(_) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let manifest = small_manifest(tmp.path(), 1);
    let bad = tmp.path().join("broken.onnx");
    std::fs::write(&bad, b"\x08\x07garbage that is not a model").unwrap();
    let out = bin()
        .args(["eval", "--model"])
        .arg(&bad)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.onnx"), "{err}");

    let bad_manifest = tmp.path().join("bad.csv");
    std::fs::write(&bad_manifest, "file,subject,arousal\nmissing.edf,S1,1\n").unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/affectgate-arousal-v2.onnx");
    if shipped.exists() {
        let out = bin()
            .args(["eval", "--model"])
            .arg(&shipped)
            .arg("--manifest")
            .arg(&bad_manifest)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("missing.edf") && err.contains("bad.csv"),
            "{err}"
        );
    }
    let out = bin()
        .args([
            "eval",
            "--backend",
            "cuda",
            "--model",
            "x.onnx",
            "--manifest",
            "y.csv",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend cuda"));
}

/// The shipped fused model reads the wearer-relative physiology the way its card says:
/// the same ECG window scores higher when the wearer's heart rate is up and HRV down
/// relative to their baseline, and an un-calibrated wearer (features 0) sits in between.
#[test]
fn shipped_model_scores_rise_with_heart_rate_relative_to_the_wearer() {
    let Some(_) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ds = labelled_from_manifest(&small_manifest(tmp.path(), 1), &PreprocessConfig::default())
        .unwrap();
    let ws = windows(&ds, 4);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/affectgate-arousal-v2.onnx");
    let mut m = Model::load(&shipped, &Backend::Tract).unwrap();
    assert_eq!(m.feature_names(), affectgate::model::WEARER_FEATURES);
    let flat: Vec<f32> = ws.iter().flatten().copied().collect();
    let run = |m: &mut Model, f: [f32; 3]| -> Vec<f32> {
        let feats: Vec<f32> = (0..ws.len()).flat_map(|_| f).collect();
        m.run_with(&flat, &feats, ws.len())
            .unwrap()
            .head("arousal")
            .unwrap()
    };
    let calm = run(&mut m, [-1.0, 1.0, 1.0]);
    let usual = run(&mut m, [0.0, 0.0, 0.0]);
    let stressed = run(&mut m, [3.0, -1.0, -1.0]);
    for i in 0..ws.len() {
        assert!(
            calm[i] < usual[i] && usual[i] < stressed[i],
            "window {i}: calm {} usual {} stressed {}",
            calm[i],
            usual[i],
            stressed[i]
        );
    }
    assert!(stressed.iter().all(|&v| v > 0.5), "{stressed:?}");
    assert!(calm.iter().all(|&v| v < 0.5), "{calm:?}");
    // Without the features the model refuses, naming them.
    let e = m.run(&flat, ws.len()).unwrap_err().to_string();
    assert!(e.contains("hr_relative"), "{e}");
}
