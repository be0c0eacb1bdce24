//! Tests of a retraining round: pack format, checkpoints, gate, a whole round on real ECG.

use super::*;
use std::collections::BTreeSet;

use crate::learn::dataset::{zscore_person, Dataset, TrainWindow};
use crate::source::synthetic::{SyntheticConfig, SyntheticEcg};

/// `n` z-scored 10 s windows of synthetic ECG at `hr` bpm.
fn ecg(n: usize, hr: f64, seed: u64) -> Vec<Vec<f32>> {
    let mut g = SyntheticEcg::new(SyntheticConfig {
        fs_hz: 256.0,
        hr_bpm: hr,
        noise_uv: 20.0,
        seed,
        ..Default::default()
    })
    .unwrap();
    let mut out: Vec<Vec<f32>> = (0..n)
        .map(|_| {
            let mut w = vec![0.0f32; WINDOW_LEN];
            g.fill(&mut w);
            w
        })
        .collect();
    zscore_person(out.iter_mut());
    out
}

/// `subjects` people, each with one rest (0) and one task (1) window and one pretext window.
fn pack(subjects: usize) -> ReplayPack {
    let mut labelled = Vec::new();
    let mut pretext = Vec::new();
    let mut pretext_subjects = Vec::new();
    for s in 0..subjects {
        let name = format!("S{s:02}");
        let rest = ecg(1, 60.0, 10 + s as u64).remove(0);
        let task = ecg(1, 110.0, 50 + s as u64).remove(0);
        labelled.push(PackWindow {
            window: rest,
            labels: vec![Some(0.0)],
            subject: name.clone(),
        });
        labelled.push(PackWindow {
            window: task,
            labels: vec![Some(1.0)],
            subject: name.clone(),
        });
        pretext.push(ecg(1, 75.0, 90 + s as u64).remove(0));
        pretext_subjects.push(name);
    }
    ReplayPack {
        head_names: vec!["arousal".into()],
        pretext,
        pretext_subjects,
        labelled,
        created: "2026-11-25T00:00:00Z".into(),
    }
}

/// burn's flex backend draws initialisation and dropout from one process-wide generator
/// (`Device::seed` reseeds it), so rounds running in parallel test threads would perturb
/// each other's draws. The round tests take this lock (only this module trains in the
/// library's unit tests).
static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn burn_lock() -> std::sync::MutexGuard<'static, ()> {
    BURN_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn current() -> NetworkWeights {
    NetworkWeights::seeded(&[("arousal", &[16, 16])], 3)
}

fn tiny_cfg(epochs: usize) -> RoundConfig {
    RoundConfig {
        pretext_epochs: epochs,
        max_steps_per_epoch: Some(1),
        batch: 4,
        head_epochs: 1,
        holdout_subjects: 1,
        ..Default::default()
    }
}

fn data() -> RoundData {
    let mut unlabelled = ecg(4, 70.0, 200);
    let mut labelled = ecg(3, 65.0, 201);
    labelled.extend(ecg(2, 120.0, 202));
    unlabelled.extend(labelled.iter().cloned());
    RoundData {
        unlabelled,
        user_labelled: labelled
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, vec![Some(if i < 3 { 0.0 } else { 1.0 })]))
            .collect(),
    }
}

#[test]
fn pack_round_trip() {
    let mut p = pack(3);
    p.head_names.push("valence".into());
    for (i, w) in p.labelled.iter_mut().enumerate() {
        w.labels.push((i % 2 == 0).then_some(0.25));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.replay.bin");
    p.save(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(
        size < 6 * WINDOW_LEN * 2 + 3 * WINDOW_LEN * 2 + 2000,
        "{size} bytes"
    );
    let q = ReplayPack::load(&path).unwrap();
    assert_eq!(q.head_names, p.head_names);
    assert_eq!(q.pretext_subjects, p.pretext_subjects);
    assert_eq!(q.created, p.created);
    assert_eq!(q.labelled.len(), p.labelled.len());
    let close = |a: &[f32], b: &[f32]| {
        let scale = crate::model::quant::scale(a);
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= scale / 2.0 + 1e-6 * x.abs())
    };
    for (a, b) in p.pretext.iter().zip(&q.pretext) {
        assert!(close(a, b));
    }
    for (a, b) in p.labelled.iter().zip(&q.labelled) {
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.subject, b.subject);
        assert!(close(&a.window, &b.window));
    }
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn corrupt_packs_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.replay.bin");
    pack(2).save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let err_of = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let e = ReplayPack::load(&path).unwrap_err();
        assert!(matches!(e, PackError::Corrupt { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("m.replay.bin"), "{msg}");
        msg
    };
    let msg = err_of(&good[..good.len() - 100]);
    assert!(
        msg.contains(&format!("truncated at byte {}", good.len() - 100)),
        "{msg}"
    );
    let msg = err_of(&good[..10]);
    assert!(msg.contains("truncated at byte 10"), "{msg}");
    let mut flipped = good.clone();
    let k = good.len() - 777;
    flipped[k] ^= 0x40;
    assert!(err_of(&flipped).contains("checksum mismatch"));
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(err_of(&magic).contains("bad magic"));
    // A consistent file (valid CRC) whose windows are not 2560 samples long.
    let mut wrong = good.clone();
    let key = b"\"window_len\":2560";
    let at = wrong.windows(key.len()).position(|w| w == key).unwrap() + key.len() - 4;
    wrong[at..at + 4].copy_from_slice(b"2561");
    let n = wrong.len();
    let crc = crc32fast::hash(&wrong[..n - 4]);
    wrong[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(err_of(&wrong).contains("window length 2561 ≠ 2560"));
    // A missing file is an Io error naming it.
    let e = ReplayPack::load(&dir.path().join("absent.replay.bin")).unwrap_err();
    assert!(matches!(e, PackError::Fs(_)) && e.to_string().contains("absent.replay.bin"));
}

#[test]
fn pack_build_samples_across_subjects() {
    let mk = |subject: &str, file: &str, n: usize, labels: Vec<Option<f32>>| -> Vec<TrainWindow> {
        ecg(n, 70.0, file.len() as u64)
            .into_iter()
            .map(|samples| TrainWindow {
                subject: subject.into(),
                file: PathBuf::from(file),
                offset_s: 0.0,
                samples,
                labels: labels.clone(),
            })
            .collect()
    };
    let labelled = Dataset {
        label_names: vec!["arousal".into()],
        windows: [
            mk("A", "/x/A_rest.edf", 1, vec![Some(0.0)]),
            mk("B", "/x/B_rest.edf", 1, vec![Some(1.0)]),
        ]
        .concat(),
    };
    let unlabelled = Dataset {
        label_names: vec![],
        windows: [
            mk("/x/A_rest.edf", "/x/A_rest.edf", 5, vec![]),
            mk("/x/B_rest.edf", "/x/B_rest.edf", 1, vec![]),
            mk("/y/other.csv", "/y/other.csv", 3, vec![]),
        ]
        .concat(),
    };
    let p = build_pack(&labelled, &unlabelled, 5, 1);
    assert_eq!(p.labelled.len(), 2);
    assert_eq!(p.head_names, vec!["arousal".to_string()]);
    assert_eq!(p.pretext.len(), 5);
    let count = |s: &str| p.pretext_subjects.iter().filter(|x| *x == s).count();
    // Round-robin: B's only window and two of each of the others; files map to subjects.
    assert_eq!((count("A"), count("B"), count("/y/other.csv")), (2, 1, 2));
}

#[test]
fn checkpoint_round_trip_and_damage() {
    let _burn = burn_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("round.ckpt.onnx");
    let ck = Checkpoint {
        epoch: 3,
        pretext: fresh_pretext(&current(), 5),
    };
    ck.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), ck);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    std::fs::write(&path, &bytes[..n / 2]).unwrap();
    let e = Checkpoint::load(&path).unwrap_err();
    assert!(
        matches!(e, RetrainError::Corrupt { .. }) && e.to_string().contains("round.ckpt.onnx"),
        "{e}"
    );
    // A flipped bit inside the weights keeps the protobuf readable: the digest catches it.
    bytes[n / 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let e = Checkpoint::load(&path).unwrap_err();
    assert!(e.to_string().contains("round.ckpt.onnx"), "{e}");
}

#[test]
fn holdout_never_splits_a_person() {
    let p = pack(6);
    for k in [0, 1, 4, 6, 10] {
        let cfg = RoundConfig {
            holdout_subjects: k,
            ..Default::default()
        };
        let sp = split(&RoundData::default(), &p, &cfg);
        assert_eq!(sp.gate_subjects.len(), k.min(5));
        let side = |idx: &[usize]| -> BTreeSet<String> {
            idx.iter().map(|&i| p.labelled[i].subject.clone()).collect()
        };
        let (tr, ho) = (side(&sp.pack_train), side(&sp.pack_holdout));
        assert!(tr.is_disjoint(&ho), "{tr:?} vs {ho:?}");
        assert_eq!(ho, sp.gate_subjects.iter().cloned().collect());
        assert_eq!(tr.len() + ho.len(), 6);
        for &i in &sp.replay_pool {
            assert!(!ho.contains(&p.pretext_subjects[i]));
        }
        assert_eq!(sp.replay_pool.len(), 6 - ho.len());
    }
    // Stable: the same gate subjects whatever the seed.
    let a = gate_subjects(&p, 2);
    assert_eq!(a, gate_subjects(&p, 2));
    // Latest windows are held out, and never all of them.
    assert_eq!(latest_split(10, 0.2), (0..8, 8..10));
    assert_eq!(latest_split(1, 0.5), (0..1, 1..1));
    assert_eq!(latest_split(0, 0.2), (0..0, 0..0));
}

fn gm(heads: &[(&str, f64)], pretext: Option<f32>) -> GateMetrics {
    GateMetrics {
        heads: heads.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        n_labelled: 40,
        pretext_loss: pretext.map(|_| 0.3),
        pretext_accuracy: pretext,
        n_unlabelled: 20,
    }
}

#[test]
fn gate_decisions() {
    let before = gm(&[("arousal", 0.70), ("valence", 0.60)], Some(0.8));
    assert_eq!(decide(&before, &before), Decision::Promote);
    let better = gm(&[("arousal", 0.72), ("valence", 0.60)], Some(0.81));
    assert_eq!(decide(&before, &better), Decision::Promote);
    let Decision::Reject { reason } = decide(
        &before,
        &gm(&[("arousal", 0.75), ("valence", 0.55)], Some(0.9)),
    ) else {
        panic!("a drop must reject")
    };
    assert!(
        reason.contains("valence") && reason.contains("0.6000") && reason.contains("0.5500"),
        "{reason}"
    );
    // No tolerance: a tiny drop rejects and the numbers shown differ.
    let Decision::Reject { reason } = decide(
        &before,
        &gm(&[("arousal", 0.6999999), ("valence", 0.6)], Some(0.8)),
    ) else {
        panic!()
    };
    assert!(
        reason.contains("arousal") && reason.contains("0.7000000") && reason.contains("0.6999999"),
        "{reason}"
    );
    let Decision::Reject { reason } = decide(
        &before,
        &gm(&[("arousal", 0.7), ("valence", 0.6)], Some(0.79)),
    ) else {
        panic!()
    };
    assert!(
        reason.contains("pretext accuracy")
            && reason.contains("0.8000")
            && reason.contains("0.7900"),
        "{reason}"
    );
    // Pretext is compared only when both sides have it.
    assert_eq!(
        decide(
            &gm(&[("arousal", 0.7)], None),
            &gm(&[("arousal", 0.7)], Some(0.1))
        ),
        Decision::Promote
    );
    let mut none = gm(&[("arousal", f64::NAN)], None);
    none.n_labelled = 0;
    assert_eq!(
        decide(&none, &none),
        Decision::Reject {
            reason: NO_HELDOUT.into()
        }
    );
    let nan = gm(&[("arousal", f64::NAN)], None);
    assert!(
        matches!(decide(&nan, &nan), Decision::Reject { reason } if reason.contains("arousal"))
    );
}

#[test]
fn round_runs_checkpoints_and_resumes() {
    let _burn = burn_lock();
    let (cur, p, d) = (current(), pack(3), data());
    let cfg = tiny_cfg(2);
    let mut cks: Vec<Checkpoint> = Vec::new();
    let mut events = Vec::new();
    let out = run_round(
        &cur,
        None,
        None,
        &d,
        &p,
        &cfg,
        &mut |c| {
            cks.push(c.clone());
            Ok(())
        },
        &mut |e| events.push(e),
        &|| None,
    )
    .unwrap();
    assert_eq!(out.candidate.head_names(), cur.head_names());
    assert_eq!(hidden_of(&out.candidate.heads[0]), vec![16, 16]);
    out.candidate.validate().unwrap();
    assert_eq!(out.pretext.convs, out.candidate.convs);
    assert_ne!(out.candidate.convs, cur.convs, "the encoder was trained");
    assert_eq!(out.epochs_run, 2);
    assert_eq!(cks.iter().map(|c| c.epoch).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(cks[1].pretext, out.pretext);
    assert!(matches!(
        events[0],
        Progress::Pretext {
            epoch: 1,
            of: 2,
            ..
        }
    ));
    assert!(matches!(
        events[1],
        Progress::Pretext {
            epoch: 2,
            of: 2,
            ..
        }
    ));
    assert_eq!(&events[2..], &[Progress::Heads, Progress::Evaluating]);
    // Gate: 1 pack subject (2 windows) + the latest self-report are held out.
    assert_eq!(out.before.n_labelled, 3);
    assert_eq!(out.after.n_unlabelled, 2);
    assert!(out.before.pretext_accuracy.is_none() && out.after.pretext_accuracy.is_some());
    assert_eq!(out.decision, decide(&out.before, &out.after));

    // Resume from the first checkpoint: only the second epoch runs, with the same result.
    let mut cks2 = Vec::new();
    let out2 = run_round(
        &cur,
        None,
        Some(cks[0].clone()),
        &d,
        &p,
        &cfg,
        &mut |c| {
            cks2.push(c.epoch);
            Ok(())
        },
        &mut |_| {},
        &|| None,
    )
    .unwrap();
    assert_eq!(out2.epochs_run, 1);
    assert_eq!(cks2, vec![2]);
    assert!(
        out2.pretext == out.pretext,
        "resuming must train exactly like not stopping"
    );
}

#[test]
fn round_stops_between_epochs() {
    let _burn = burn_lock();
    let (cur, p, d) = (current(), pack(3), data());
    let n_ck = std::cell::Cell::new(0);
    let e = run_round(
        &cur,
        None,
        None,
        &d,
        &p,
        &tiny_cfg(3),
        &mut |_| {
            n_ck.set(n_ck.get() + 1);
            Ok(())
        },
        &mut |_| {},
        &|| (n_ck.get() >= 1).then(|| "shutdown".to_string()),
    );
    match e {
        Err(RetrainError::Stopped(r)) => assert_eq!(r, "shutdown"),
        other => panic!("expected Stopped, got {:?}", other.map(|o| o.decision)),
    }
    assert_eq!(n_ck.get(), 1);
}

#[test]
fn bad_inputs_are_reported() {
    let _burn = burn_lock();
    let (cur, p, mut d) = (current(), pack(2), data());
    d.unlabelled[0].truncate(100);
    let e = run_round(
        &cur,
        None,
        None,
        &d,
        &p,
        &tiny_cfg(1),
        &mut |_| Ok(()),
        &mut |_| {},
        &|| None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("wearer window 0: 100 samples"),
        "{e}"
    );
    let e = run_round(
        &cur,
        Some(&cur),
        None,
        &data(),
        &p,
        &tiny_cfg(1),
        &mut |_| Ok(()),
        &mut |_| {},
        &|| None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("pretext_init has heads"), "{e}");
    let e = run_round(
        &cur,
        None,
        None,
        &RoundData::default(),
        &p,
        &tiny_cfg(1),
        &mut |_| Ok(()),
        &mut |_| {},
        &|| None,
    )
    .unwrap_err();
    assert!(matches!(e, RetrainError::NotEnoughData(_)), "{e}");
}
