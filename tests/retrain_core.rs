//! On-gateway retraining through the library API on real ECG (EEGMAT) and the shipped model:
//! a replay pack built from a manifest survives its file, and one tiny round (1 step) runs
//! from the shipped weights to a gated candidate with the same heads, checkpointing to disk.
//! Skips when `../shared/data` (or `$AFFECTGATE_SHARED_DATA`) is absent.

use std::path::{Path, PathBuf};

use affectgate::dsp::PreprocessConfig;
use affectgate::learn::dataset::{labelled_from_manifest, unlabelled_from_paths};
use affectgate::learn::model::INPUT_LEN;
use affectgate::learn::onnx::import_onnx;
use affectgate::learn::retrain::{
    decide, gate_subjects, run_round, Checkpoint, Progress, ReplayPack, RoundConfig, RoundData,
};

fn data_dir() -> Option<PathBuf> {
    let d = std::env::var_os("AFFECTGATE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if d.join("eegmat/labels.csv").exists() {
        Some(d)
    } else {
        eprintln!("SKIP: ../shared/data not found (set AFFECTGATE_SHARED_DATA to its path)");
        None
    }
}

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
    ReplayPack::build(&labelled, &unlabelled, max_pretext, 7)
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
        size < n_windows * (2 * INPUT_LEN + 16) + 4096,
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
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/affectgate-arousal-v1.onnx");
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
    // Gate: the one held-out pack subject's windows + the latest self-report.
    let gate = gate_subjects(&pack, 1);
    let n_gate = pack
        .labelled
        .iter()
        .filter(|w| gate.contains(&w.subject))
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
    let read = |f: &str| {
        affectgate::learn::onnx::import_onnx(&std::fs::read(dir.join(f)).unwrap())
            .unwrap()
            .0
    };
    let model = read("affectgate-arousal-v1.onnx");
    let pretext = read("affectgate-arousal-v1.pretext.onnx");
    assert_eq!(pretext.convs, model.convs);
    assert_eq!(pretext.heads.len(), 7);
    assert_eq!(model.head_names(), vec!["arousal".to_string()]);
}
