//! ONNX export (`model::onnx`) against the plain-Rust reference forward, through both inference
//! backends (`infer`).
//!
//! `ort` uses one backend per process (see `affectgate::infer`), so this test binary runs tract
//! in its own process and every ONNX Runtime check in a child process: the test re-invokes this
//! binary with `AFFECTGATE_TEST_CHILD=<test name>` and `--exact onnx_infer::<test name>`. ONNX Runtime tests
//! are skipped (with a message) only when no `libonnxruntime` can be found
//! (`pip install onnxruntime`, or set `ORT_DYLIB_PATH`).
//!
//! Timings: `cargo test --release --test onnx_infer -- --ignored --nocapture bench_backends`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use affectgate::infer::{find_onnxruntime_dylib, Backend, InferError, Model, Scores};
use affectgate::model::onnx::{self, export_onnx};
use affectgate::model::weights::reference_forward;
use affectgate::model::{NetworkWeights, INPUT_NAME, WINDOW_LEN};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tract_onnx::pb;

const CHILD_ENV: &str = "AFFECTGATE_TEST_CHILD";
const RESULT_ENV: &str = "AFFECTGATE_TEST_RESULT";
const TOL: f32 = 1e-4;

// ───────────────────────────── fixtures ─────────────────────────────

/// The full-size emotion network: paper encoder + arousal/valence heads (512, 512), random
/// (seeded) weights.
fn emotion_weights() -> NetworkWeights {
    NetworkWeights::seeded(&[("arousal", &[512, 512]), ("valence", &[512, 512])], 42)
}

/// Seven pretext heads (Dense128 → Dense128 → 1), weights drawn with `rand`.
fn pretext_weights() -> NetworkWeights {
    let names = affectgate::learn::model::PRETEXT_TASKS;
    let mut w = NetworkWeights::seeded(&names.map(|n| (n, &[128usize, 128][..])), 7);
    let mut rng = StdRng::seed_from_u64(7);
    for h in &mut w.heads {
        for l in &mut h.layers {
            let a = (6.0 / l.in_dim as f32).sqrt();
            l.weight
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-a..a));
            l.bias
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-0.1..0.1));
        }
    }
    w
}

fn meta() -> Vec<(String, String)> {
    vec![
        ("affectgate.task".into(), "emotion".into()),
        ("affectgate.model_version".into(), "2026.11.1".into()),
        ("affectgate.heads".into(), "arousal,valence".into()),
    ]
}

fn zscore(x: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(1e-12);
    x.iter_mut()
        .for_each(|v| *v = ((*v as f64 - mean) / sd) as f32);
}

/// `n` synthetic z-scored windows: sines of several frequencies plus noise, and an ECG-like
/// train of narrow pulses.
fn windows(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * WINDOW_LEN);
    for k in 0..n {
        let f1 = 0.5 + 2.0 * rng.random::<f32>();
        let f2 = 5.0 + 20.0 * rng.random::<f32>();
        let hr = 0.9 + 0.8 * rng.random::<f32>();
        let mut w: Vec<f32> = (0..WINDOW_LEN)
            .map(|i| {
                let t = i as f32 / 256.0;
                let beat = (t * hr).fract();
                let qrs = (-((beat - 0.3) / 0.012).powi(2)).exp() * 3.0;
                (2.0 * std::f32::consts::PI * f1 * t).sin()
                    + 0.4 * (2.0 * std::f32::consts::PI * f2 * t + k as f32).sin()
                    + if k % 2 == 0 { qrs } else { 0.0 }
                    + 0.3 * (rng.random::<f32>() - 0.5)
            })
            .collect();
        zscore(&mut w);
        out.extend(w);
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Assert scores agree with `reference_forward` (heads ≤ 1e-4; embedding ≤ 1e-4 relative to
/// max(1, |value|)). Returns the worst head difference.
fn assert_matches_reference(w: &NetworkWeights, batch: &[f32], s: &Scores, what: &str) -> f32 {
    let n = batch.len() / WINDOW_LEN;
    assert_eq!(s.values.len(), n, "{what}: windows");
    assert_eq!(s.heads, w.head_names(), "{what}: head order");
    let mut worst = 0.0f32;
    for i in 0..n {
        let (emb, heads) = reference_forward(w, &batch[i * WINDOW_LEN..(i + 1) * WINDOW_LEN]);
        let want: Vec<f32> = heads.iter().map(|(_, v)| *v).collect();
        let d = max_abs_diff(&s.values[i], &want);
        worst = worst.max(d);
        assert!(
            d <= TOL,
            "{what}: window {i}: heads {:?} vs reference {want:?} (diff {d:e})",
            s.values[i]
        );
        let got = &s.embedding.as_ref().expect("embedding output")[i];
        for (j, (a, b)) in got.iter().zip(&emb).enumerate() {
            assert!(
                (a - b).abs() <= TOL * b.abs().max(1.0),
                "{what}: window {i} embedding[{j}]: {a} vs {b}"
            );
        }
    }
    worst
}

fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

/// Run test `name` of this binary in a child process with `env`; panics (with its output) if it fails.
fn run_child(name: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    // Inside the one test binary a test's full name carries its module path.
    let full = format!(
        "{}::{name}",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut cmd = Command::new(exe);
    cmd.args([
        full.as_str(),
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(CHILD_ENV, name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child test process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child process for {name} failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "child process ran no test:\n{text}"
    );
    text
}

fn ort_dylib_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_onnxruntime_dylib();
    if found.is_none() {
        crate::util::missing(
            &format!("{test}: no ONNX Runtime library found (pip install onnxruntime, or set ORT_DYLIB_PATH)"),
            "AFFECTGATE_REQUIRE_ONNXRUNTIME",
        );
    }
    found
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "affectgate-onnx-infer-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn scores_to_text(s: &Scores) -> String {
    let mut t = String::new();
    for (i, v) in s.values.iter().enumerate() {
        let emb = &s.embedding.as_ref().unwrap()[i];
        let nums: Vec<String> = v.iter().chain(emb).map(|x| format!("{x:e}")).collect();
        t.push_str(&nums.join(" "));
        t.push('\n');
    }
    t
}

fn text_to_rows(t: &str) -> Vec<Vec<f32>> {
    t.lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect()
}

// ───────────────────────────── shared checks ─────────────────────────────

/// Everything checked under one backend: reference agreement (emotion and pretext networks),
/// batch vs singles, names and metadata, bad inputs. Returns the emotion scores.
fn check_backend(backend: &Backend) -> Scores {
    let w = emotion_weights();
    let bytes = export_onnx(&w, &meta(), "0.1.0").unwrap();
    let mut m = Model::load_bytes(&bytes, backend).unwrap();
    assert_eq!(m.backend(), backend.kind());
    assert_eq!(m.head_names(), ["arousal", "valence"]);
    assert!(m.has_embedding());
    assert_eq!(m.metadata(), meta().as_slice());
    assert_eq!(m.meta("affectgate.task"), Some("emotion"));
    assert_eq!(m.producer(), "affectgate 0.1.0");
    assert_eq!(m.sha256(), affectgate::model::sha256_hex(&bytes));

    // Three windows as one batch against the reference.
    let batch = windows(3, 1);
    let s = m.run(&batch, 3).unwrap();
    let worst = assert_matches_reference(&w, &batch, &s, &format!("{backend} batch 3"));
    eprintln!("{backend}: emotion network, worst |head − reference| = {worst:e}");
    assert!(s.values.iter().flatten().all(|p| (0.0..=1.0).contains(p)));

    // A batch of 5 equals 5 single runs.
    let five = windows(5, 2);
    let all = m.run(&five, 5).unwrap();
    assert_matches_reference(
        &w,
        &five[..WINDOW_LEN],
        &Scores {
            heads: all.heads.clone(),
            values: all.values[..1].to_vec(),
            embedding: all.embedding.as_ref().map(|e| e[..1].to_vec()),
        },
        &format!("{backend} batch 5, first"),
    );
    for i in 0..5 {
        let one = m
            .run(&five[i * WINDOW_LEN..(i + 1) * WINDOW_LEN], 1)
            .unwrap();
        let d = max_abs_diff(&one.values[0], &all.values[i]);
        assert!(
            d <= 1e-5,
            "{backend}: window {i}: single {:?} vs in batch {:?}",
            one.values[0],
            all.values[i]
        );
        let de = max_abs_diff(
            &one.embedding.as_ref().unwrap()[0],
            &all.embedding.as_ref().unwrap()[i],
        );
        assert!(
            de <= 1e-4,
            "{backend}: window {i}: embedding differs by {de}"
        );
    }
    assert_eq!(all.head("valence").unwrap().len(), 5);

    // Bad inputs are errors naming the model, not panics.
    let e = m.run(&batch[..100], 1).unwrap_err();
    assert!(
        matches!(e, InferError::Input { .. }) && e.to_string().contains("<in-memory model>"),
        "{e}"
    );
    let mut nan = windows(1, 3);
    nan[77] = f32::NAN;
    assert!(matches!(m.run(&nan, 1), Err(InferError::Input { .. })));
    let empty = m.run(&[], 0).unwrap();
    assert!(empty.values.is_empty());

    // The seven-head pretext network, same code path.
    let pw = pretext_weights();
    let mut pm = Model::load_bytes(&export_onnx(&pw, &[], "0.1.0").unwrap(), backend).unwrap();
    assert_eq!(pm.head_names(), pw.head_names().as_slice());
    let pb2 = windows(2, 4);
    let ps = pm.run(&pb2, 2).unwrap();
    assert_matches_reference(&pw, &pb2, &ps, &format!("{backend} pretext"));
    s
}

/// Bad model files: every error names the file, nothing panics.
fn check_bad_files(backend: &Backend, dir: &Path) {
    let w = NetworkWeights::seeded(&[("arousal", &[16])], 5);
    let good = export_onnx(&w, &[], "t").unwrap();
    let model = pb::ModelProto::decode(&good[..]).unwrap();
    let mutate = |f: &dyn Fn(&mut pb::GraphProto)| {
        let mut m = model.clone();
        f(m.graph.as_mut().unwrap());
        m.encode_to_vec()
    };
    let set_dims = |g: &mut pb::GraphProto, d: i64| {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            g.input[0].r#type.as_mut().unwrap().value.as_mut()
        {
            t.shape.as_mut().unwrap().dim[2].value =
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(d));
        }
    };
    let mut rng = StdRng::seed_from_u64(9);
    let random: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.onnx",
            good[..good.len() / 2].to_vec(),
            "truncated",
        ),
        ("random.onnx", random, ""),
        ("empty.onnx", Vec::new(), "empty"),
        ("text.onnx", b"# not a model\nhello\n".to_vec(), ""),
        (
            "renamed-input.onnx",
            mutate(&|g| g.input[0].name = "x".into()),
            "no input named `ecg`",
        ),
        (
            "short-input.onnx",
            mutate(&|g| set_dims(g, 1280)),
            "[?, 1, 1280]",
        ),
        (
            "extra-input.onnx",
            mutate(&|g| {
                let mut extra = g.input[0].clone();
                extra.name = "extra".into();
                g.input.push(extra)
            }),
            "expected the input `ecg` (and optionally `features`)",
        ),
        (
            "no-heads.onnx",
            mutate(&|g| g.output.retain(|o| o.name == "embedding")),
            "no head outputs",
        ),
        // Valid everything but a NaN weight: it used to load and serve 0.000 quietly; the
        // load-time probe refuses it.
        (
            "nan-weight.onnx",
            mutate(&|g| {
                let t = g
                    .initializer
                    .iter_mut()
                    .find(|t| t.name == "ag.conv1.W")
                    .unwrap();
                t.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "the weights are damaged",
        ),
        // Valid protobuf and interface, broken graph: only the backend can tell.
        (
            "broken-graph.onnx",
            mutate(&|g| g.initializer.retain(|t| t.name != "ag.conv3.W")),
            "",
        ),
        // tract panics on this one; through ort-tract's `extern` functions that would abort the
        // process, so the tract backend must catch it first.
        (
            "pool-without-input.onnx",
            mutate(&|g| {
                g.node
                    .iter_mut()
                    .find(|n| n.name == "ag.pool2")
                    .unwrap()
                    .input
                    .clear()
            }),
            "",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = match Model::load(&path, backend) {
            Ok(_) => panic!("{backend}: {name} loaded"),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "{backend}: {name}: error does not name the file: {msg}"
        );
        assert!(
            msg.contains(needle),
            "{backend}: {name}: expected {needle:?} in: {msg}"
        );
        if name == "broken-graph.onnx" || name == "pool-without-input.onnx" {
            assert!(matches!(e, InferError::Session { .. }), "{backend}: {msg}");
        } else {
            assert!(
                matches!(e, InferError::InvalidModel { .. }),
                "{backend}: {name}: {msg}"
            );
        }
        eprintln!("{backend}: {name}: {msg}");
    }
    // A model beside its card must be the bytes the card describes: 50 flipped weight bytes
    // keep a loadable model with wrong scores, and are refused by the card's sha256.
    let carded = dir.join("carded.onnx");
    let mut flipped = good.clone();
    for i in 0..50 {
        let at = flipped.len() / 2 + i * 997;
        flipped[at] ^= 0x5a;
    }
    std::fs::write(&carded, &flipped).unwrap();
    let card = affectgate::model::card::ModelCard {
        sha256: affectgate::model::sha256_hex(&good),
        onnx: "carded.onnx".into(),
        ..affectgate::model::card::ModelCard::load(
            &crate::util::repo().join("models/affectgate-arousal-v2.card.toml"),
        )
        .unwrap()
    };
    card.save(&affectgate::model::card::ModelCard::path_for(&carded))
        .unwrap();
    let e = Model::load(&carded, backend).unwrap_err().to_string();
    assert!(
        e.contains("carded.onnx") && e.contains("sha256"),
        "{backend}: {e}"
    );
    std::fs::write(&carded, &good).unwrap();
    Model::load(&carded, backend).expect("the carded model with its own bytes loads");

    let missing = dir.join("missing.onnx");
    let e = Model::load(&missing, backend).unwrap_err();
    assert!(
        matches!(e, InferError::Io { .. }) && e.to_string().contains("missing.onnx"),
        "{e}"
    );
    // The good file still loads.
    let path = dir.join("good.onnx");
    std::fs::write(&path, &good).unwrap();
    let m = Model::load(&path, backend).unwrap();
    assert_eq!(m.source(), path.display().to_string());
    let _ = std::fs::remove_dir_all(dir);
}

// ───────────────────────────── tests ─────────────────────────────

#[test]
fn exported_model_reads_back_with_prost() {
    let w = emotion_weights();
    let bytes = export_onnx(&w, &meta(), "0.1.0").unwrap();
    let m = pb::ModelProto::decode(&bytes[..]).unwrap();
    assert_eq!(m.producer_name, "affectgate");
    assert_eq!(m.producer_version, "0.1.0");
    let props: Vec<(String, String)> = m
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(props, meta());
    let g = m.graph.unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, INPUT_NAME);
    let outs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["arousal", "valence", "embedding"]);
    let info = onnx::inspect(&bytes).unwrap();
    assert_eq!(info.head_names(), ["arousal", "valence"]);
    assert_eq!(info.meta("affectgate.model_version"), Some("2026.11.1"));
    // ~0.3 M encoder + 2 × (128·512 + 512·512 + 512) head parameters, f32.
    assert!(
        bytes.len() > 4 * 900_000 && bytes.len() < 4 * 1_100_000,
        "{} bytes",
        bytes.len()
    );
}

#[test]
fn tract_matches_reference() {
    check_backend(&Backend::Tract);
}

#[test]
fn tract_bad_model_files_error_with_file_name() {
    check_bad_files(&Backend::Tract, &scratch_dir("bad-tract"));
}

#[test]
fn onnxruntime_matches_reference_and_tract() {
    const NAME: &str = "onnxruntime_matches_reference_and_tract";
    if is_child(NAME) {
        // Child process: ONNX Runtime only.
        let dir = scratch_dir("ort-child");
        // A file that is not a library: a clear error, and the process is not locked by it.
        let fake = dir.join("libonnxruntime.so.1.99.0");
        std::fs::write(&fake, b"not a library").unwrap();
        let e = Model::load_bytes(
            &export_onnx(&emotion_weights(), &[], "x").unwrap(),
            &Backend::OnnxRuntime {
                dylib: Some(fake.clone()),
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, InferError::DylibLoad { .. })
                && e.to_string().contains(&fake.display().to_string()),
            "{e}"
        );
        assert_eq!(affectgate::infer::active_backend(), None);

        let s = check_backend(&Backend::onnxruntime());
        assert!(affectgate::infer::active_dylib().is_some());
        check_bad_files(&Backend::onnxruntime(), &dir);
        // The other backend is refused in this process.
        let e = Model::load_bytes(
            &export_onnx(&emotion_weights(), &[], "x").unwrap(),
            &Backend::Tract,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, InferError::BackendConflict { .. }), "{msg}");
        assert!(
            msg.contains("already uses the onnxruntime backend")
                && msg.contains("separate process"),
            "{msg}"
        );
        std::fs::write(std::env::var(RESULT_ENV).unwrap(), scores_to_text(&s)).unwrap();
        return;
    }
    let Some(dylib) = ort_dylib_or_skip(NAME) else {
        return;
    };
    let result = scratch_dir("ort-parent").join("scores.txt");
    run_child(
        NAME,
        &[
            ("ORT_DYLIB_PATH", dylib.to_str().unwrap()),
            (RESULT_ENV, result.to_str().unwrap()),
        ],
    );
    // Same windows under tract in this process: the two backends agree with each other.
    let w = emotion_weights();
    let mut m =
        Model::load_bytes(&export_onnx(&w, &meta(), "0.1.0").unwrap(), &Backend::Tract).unwrap();
    let tract = m.run(&windows(3, 1), 3).unwrap();
    let ort_rows = text_to_rows(&std::fs::read_to_string(&result).unwrap());
    let _ = std::fs::remove_dir_all(result.parent().unwrap());
    let tract_rows = text_to_rows(&scores_to_text(&tract));
    assert_eq!(ort_rows.len(), 3);
    for (i, (a, b)) in ort_rows.iter().zip(&tract_rows).enumerate() {
        let d = max_abs_diff(&a[..2], &b[..2]);
        assert!(
            d <= TOL,
            "window {i}: onnxruntime {:?} vs tract {:?}",
            &a[..2],
            &b[..2]
        );
        for (x, y) in a[2..].iter().zip(&b[2..]) {
            assert!(
                (x - y).abs() <= TOL * y.abs().max(1.0),
                "window {i}: embedding {x} vs {y}"
            );
        }
    }
}

#[test]
fn tract_process_refuses_onnxruntime() {
    let mut m = Model::load_bytes(
        &export_onnx(&emotion_weights(), &[], "x").unwrap(),
        &Backend::Tract,
    )
    .unwrap();
    // Any existing file will do: the conflict is found before the library is opened.
    let lib = find_onnxruntime_dylib().unwrap_or_else(|| std::env::current_exe().unwrap());
    let e = Model::load_bytes(
        &export_onnx(&emotion_weights(), &[], "x").unwrap(),
        &Backend::OnnxRuntime { dylib: Some(lib) },
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, InferError::BackendConflict { .. }), "{msg}");
    assert!(
        msg.contains("this process already uses the tract backend")
            && msg.contains("run ONNX Runtime in a separate process"),
        "{msg}"
    );
    // The tract model still works.
    assert_eq!(m.run(&windows(1, 8), 1).unwrap().values.len(), 1);
}

#[test]
fn missing_onnxruntime_library_is_a_clear_error() {
    const NAME: &str = "missing_onnxruntime_library_is_a_clear_error";
    let bytes = export_onnx(&NetworkWeights::seeded(&[("arousal", &[8])], 1), &[], "x").unwrap();
    if is_child(NAME) {
        // ORT_DYLIB_PATH points nowhere.
        let e = Model::load_bytes(&bytes, &Backend::onnxruntime()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, InferError::DylibNotFound { .. }), "{msg}");
        assert!(
            msg.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so")
                && msg.contains("pip install onnxruntime"),
            "{msg}"
        );
        assert_eq!(
            affectgate::infer::active_backend(),
            None,
            "a failed load must not lock the process"
        );
        // The pure-Rust backend still works in this process.
        Model::load_bytes(&bytes, &Backend::Tract).unwrap();
        return;
    }
    let missing = PathBuf::from("/nonexistent/dir/libonnxruntime.so.1.24.0");
    let e = Model::load_bytes(
        &bytes,
        &Backend::OnnxRuntime {
            dylib: Some(missing),
        },
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, InferError::DylibNotFound { .. }), "{msg}");
    assert!(msg.starts_with("ONNX Runtime library not found"), "{msg}");
    assert!(
        msg.contains("/nonexistent/dir/libonnxruntime.so.1.24.0")
            && msg.contains("ORT_DYLIB_PATH")
            && msg.contains("pip install onnxruntime"),
        "{msg}"
    );
    run_child(
        NAME,
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
}

// ───────────────────────────── timings ─────────────────────────────

fn time_backend(backend: &Backend) -> String {
    let bytes = export_onnx(&emotion_weights(), &meta(), "bench").unwrap();
    let t0 = Instant::now();
    let mut m = Model::load_bytes(&bytes, backend).unwrap();
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut line = format!("{backend}: load {load_ms:.0} ms");
    for (b, reps) in [(1usize, 30usize), (32, 4)] {
        let x = windows(b, 11);
        m.run(&x, b).unwrap(); // warm-up (tract plans the graph on first run)
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(m.run(&x, b).unwrap());
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / (reps * b) as f64;
        line.push_str(&format!(", batch {b}: {ms:.2} ms/window"));
    }
    line
}

#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture bench_backends"]
fn bench_backends() {
    const NAME: &str = "bench_backends";
    if is_child(NAME) {
        println!("TIMING {}", time_backend(&Backend::onnxruntime()));
        return;
    }
    println!("TIMING {}", time_backend(&Backend::Tract));
    if let Some(dylib) = ort_dylib_or_skip(NAME) {
        let out = run_child(NAME, &[("ORT_DYLIB_PATH", dylib.to_str().unwrap())]);
        for l in out
            .lines()
            .filter_map(|l| l.find("TIMING").map(|i| &l[i..]))
        {
            println!("{l}");
        }
    }
}
