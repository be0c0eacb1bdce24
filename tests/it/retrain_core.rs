//! On-gateway retraining through the library API on real ECG (EEGMAT) and the shipped model:
//! a replay pack built from a manifest survives its file, and one tiny round (1 step) runs
//! from the shipped weights to a gated candidate with the same heads, checkpointing to disk;
//! the shipped pretext network matches the shipped encoder; the personalisation study runs
//! end to end on a small subset and resumes from its results file.
//! Real data through `util::shared_data`.

use std::path::{Path, PathBuf};

use affectgate::dsp::PreprocessConfig;
use affectgate::learn::dataset::{labelled_from_manifest, unlabelled_from_paths};
use affectgate::learn::round::{
    build_pack, decide, gate_subjects, run_round, Checkpoint, Progress, RoundConfig, RoundData,
};
use affectgate::model::onnx::import_onnx;
use affectgate::model::replay::ReplayPack;
use affectgate::model::WINDOW_LEN;

use crate::util::shared_data as data_dir;

/// Manifest of EEGMAT subjects `subjects` (rest + task) in `dir`.
fn manifest(data: &Path, dir: &Path, name: &str, subjects: &[usize]) -> PathBuf {
    let mut csv = String::from("file,subject,arousal\n");
    for s in subjects {
        for (cond, y) in [("rest", 0), ("task", 1)] {
            let f = data.join(format!("eegmat/Subject{s:02}_{cond}.edf"));
            csv.push_str(&format!("{},Subject{s:02},{y}\n", f.display()));
        }
    }
    let p = dir.join(name);
    std::fs::write(&p, csv).unwrap();
    p
}

fn pack_of(data: &Path, dir: &Path, subjects: &[usize], max_pretext: usize) -> ReplayPack {
    let pre = PreprocessConfig::default();
    let labelled =
        labelled_from_manifest(&manifest(data, dir, "pack.csv", subjects), &pre).unwrap();
    let files: Vec<PathBuf> = labelled.windows.iter().map(|w| w.file.clone()).collect();
    let mut files_dedup = files.clone();
    files_dedup.dedup();
    let unlabelled = unlabelled_from_paths(&files_dedup, &pre).unwrap();
    build_pack(&labelled, &unlabelled, max_pretext, 7)
}

#[test]
fn replay_pack_from_eegmat_round_trips() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pack = pack_of(&data, dir.path(), &[0, 1, 2], 12);
    assert_eq!(pack.head_names, vec!["arousal".to_string()]);
    assert_eq!(pack.pretext.len(), 12);
    // Pretext windows carry the manifest's subjects (not file paths), 4 per subject.
    for s in ["Subject00", "Subject01", "Subject02"] {
        assert_eq!(pack.pretext_subjects.iter().filter(|x| *x == s).count(), 4);
    }
    let path = ReplayPack::path_for(&dir.path().join("m.onnx"));
    assert!(path.ends_with("m.replay.bin"));
    pack.save(&path).unwrap();
    let n_windows = pack.pretext.len() + pack.labelled.len();
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(
        size < n_windows * (2 * WINDOW_LEN + 16) + 4096,
        "{size} bytes"
    );
    let back = ReplayPack::load(&path).unwrap();
    assert_eq!(back.labelled_subjects(), pack.labelled_subjects());
    for (a, b) in pack.labelled.iter().zip(&back.labelled) {
        assert_eq!((&a.subject, &a.labels), (&b.subject, &b.labels));
        let max = a.window.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a
            .window
            .iter()
            .zip(&b.window)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= max / 32767.0 * 0.5 * 1.001 + 1e-7,
            "{err} vs max {max}"
        );
    }
}

#[test]
fn one_tiny_round_from_the_shipped_model() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/affectgate-arousal-v2.onnx");
    let (current, _) = import_onnx(&std::fs::read(&model).unwrap()).unwrap();
    let pack = pack_of(&data, dir.path(), &[0, 1, 2], 6);
    // The wearer: Subject03, a few windows of rest then of the task, oldest first.
    let wearer = labelled_from_manifest(
        &manifest(&data, dir.path(), "wearer.csv", &[3]),
        &PreprocessConfig::default(),
    )
    .unwrap();
    let rest: Vec<_> = wearer
        .windows
        .iter()
        .filter(|w| w.labels[0] == Some(0.0))
        .take(4)
        .collect();
    let task: Vec<_> = wearer
        .windows
        .iter()
        .filter(|w| w.labels[0] == Some(1.0))
        .take(4)
        .collect();
    let ordered: Vec<_> = rest.into_iter().chain(task).collect();
    let round = RoundData {
        unlabelled: ordered.iter().map(|w| w.samples.clone()).collect(),
        user_labelled: ordered
            .iter()
            .step_by(2)
            .map(|w| (w.samples.clone(), w.labels.clone()))
            .collect(),
    };
    let cfg = RoundConfig {
        pretext_epochs: 1,
        max_steps_per_epoch: Some(1),
        batch: 4,
        head_epochs: 1,
        holdout_subjects: 1,
        ..Default::default()
    };
    let ck_path = dir.path().join("round.ckpt.onnx");
    let mut events = Vec::new();
    let out = run_round(
        &current,
        None,
        None,
        &round,
        &pack,
        &cfg,
        &mut |c| c.save(&ck_path),
        &mut |p| events.push(p),
        &|| None,
    )
    .unwrap();
    assert_eq!(out.candidate.head_names(), current.head_names());
    out.candidate.validate().unwrap();
    assert_eq!(out.epochs_run, 1);
    let ck = Checkpoint::load(&ck_path).unwrap();
    assert_eq!((ck.epoch, &ck.pretext), (1, &out.pretext));
    assert!(matches!(
        events[0],
        Progress::Pretext {
            epoch: 1,
            of: 1,
            ..
        }
    ));
    // Gate: the one held-out pack subject's windows that pass the quality gate + the latest
    // self-report.
    let gate = gate_subjects(&pack, 1);
    let n_gate = pack
        .labelled
        .iter()
        .filter(|w| gate.contains(&w.subject))
        .filter(|w| affectgate::learn::baseline::window_physio(&w.window).good)
        .count();
    assert_eq!(out.before.n_labelled, n_gate + 1);
    assert_eq!(out.decision, decide(&out.before, &out.after));
    eprintln!(
        "before {:?}\nafter {:?}\ndecision {:?}",
        out.before, out.after, out.decision
    );
}

/// The shipped pretext network is the one the shipped encoder came from: same convolutions,
/// seven pretext heads — so a first round measures the pretext task before and after.
#[test]
fn the_shipped_pretext_network_matches_the_shipped_encoder() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let read = |f: &str| import_onnx(&std::fs::read(dir.join(f)).unwrap()).unwrap().0;
    let model = read("affectgate-arousal-v2.onnx");
    let pretext = read("affectgate-arousal-v2.pretext.onnx");
    assert_eq!(pretext.convs, model.convs);
    assert_eq!(pretext.heads.len(), 7);
    assert_eq!(model.head_names(), vec!["arousal".to_string()]);
}

/// The personalisation study on a 4-subject EEGMAT subset with tiny training: the left-out
/// subject gets 2 rest + 2 task self-reports and is scored on its other windows by all six
/// arms; "served" is the candidate exactly when the gate promoted it; a second call resumes
/// from the results file instead of recomputing.
#[test]
fn personalisation_study_one_subject_and_resume() {
    use affectgate::learn::personalise::{self, PersonaliseConfig};
    use affectgate::learn::train::TrainConfig;
    let Some(data) = data_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pre = PreprocessConfig::default();
    let ds =
        labelled_from_manifest(&manifest(&data, dir.path(), "m.csv", &[0, 1, 3, 4]), &pre).unwrap();
    let tiny = |epochs: usize| TrainConfig {
        epochs,
        batch: 32,
        lr: 1e-3,
        seed: 7,
        max_steps_per_epoch: Some(1),
        progress: false,
    };
    let cfg = PersonaliseConfig {
        head: "arousal".into(),
        folds: 2,
        pretext: tiny(1),
        heads: tiny(2),
        pack_pretext: 20,
        reports_per_class: 2,
        round: RoundConfig {
            pretext_epochs: 1,
            max_steps_per_epoch: Some(1),
            head_epochs: 2,
            holdout_subjects: 1,
            ..RoundConfig::default()
        },
        fused: false,
    };
    let results = dir.path().join("r.jsonl");
    let cache = dir.path().join("enc");
    let only = vec!["Subject03".to_string()];
    // One call of the study; returns its results and what it logged.
    let study = || {
        let mut log = Vec::new();
        let r = personalise::run(
            &ds,
            &Default::default(),
            &cfg,
            &only,
            &results,
            Some(&cache),
            |m| log.push(m.to_string()),
        );
        (r, log)
    };
    let (r, _) = study();
    let r = r.unwrap();
    assert_eq!(r.len(), 1);
    let s = &r[0];
    assert_eq!(s.subject, "Subject03");
    let n = ds
        .windows
        .iter()
        .filter(|w| w.subject == "Subject03")
        .count();
    assert_eq!(s.windows_rest + s.windows_task, n);
    assert_eq!(
        s.eval_windows,
        n - 4,
        "every window but the 4 self-reports is scored"
    );
    let labels: Vec<f32> = s.self_reports.iter().map(|r| r.1).collect();
    assert_eq!(
        labels,
        vec![0.0, 0.0, 1.0, 1.0],
        "2 rest then 2 task, in time order"
    );
    let names: Vec<&str> = s.arms.iter().map(|a| a.arm.as_str()).collect();
    assert_eq!(names, personalise::ARMS.to_vec());
    for a in &s.arms {
        assert_eq!(a.confusion.n(), s.eval_windows, "{}", a.arm);
        assert!((0.0..=1.0).contains(&a.auc), "{}: auc {}", a.arm, a.auc);
    }
    let served = s.arm("served").unwrap().confusion;
    let expect = if s.decision == "promote" {
        "round"
    } else {
        "base"
    };
    assert_eq!(served, s.arm(expect).unwrap().confusion, "{}", s.decision);
    assert!(
        std::fs::read_dir(&cache).unwrap().count() == 1,
        "fold encoder cached"
    );
    // Resume: the subject is in the file, nothing is trained again.
    let (again, log2) = study();
    let again = again.unwrap();
    assert!(log2.is_empty(), "{log2:?}");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].arms[0].confusion, s.arms[0].confusion);
    assert_eq!(
        std::fs::read_to_string(&results).unwrap().lines().count(),
        1
    );
    assert!(personalise::markdown(&again).contains("| Subject03 | "));
    // A damaged results file is an error naming it, not silently overwritten.
    std::fs::write(&results, "{not json\n").unwrap();
    let e = study().0.unwrap_err();
    assert!(format!("{e:#}").contains("r.jsonl line 1"), "{e:#}");

    // The fused study (base models like the shipped v2): same arms, and only windows that
    // pass the quality gate are scored.
    let fused_cfg = PersonaliseConfig {
        fused: true,
        ..cfg.clone()
    };
    let good = ds
        .windows
        .iter()
        .filter(|w| w.subject == "Subject03")
        .filter(|w| affectgate::learn::baseline::window_physio(&w.samples).good)
        .count();
    let r = personalise::run(
        &ds,
        &Default::default(),
        &fused_cfg,
        &only,
        &dir.path().join("fused.jsonl"),
        Some(&cache),
        |_| {},
    )
    .unwrap();
    let s = &r[0];
    assert!(
        s.eval_windows <= good && s.eval_windows + 4 >= good,
        "{} evaluated of {good} good windows",
        s.eval_windows
    );
    let names: Vec<&str> = s.arms.iter().map(|a| a.arm.as_str()).collect();
    assert_eq!(names, personalise::ARMS.to_vec());
    for a in &s.arms {
        assert_eq!(a.confusion.n(), s.eval_windows, "{}", a.arm);
    }
}
