//! On-gateway retraining: the model registry and the serving model's hot swap.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use affectgate::config::{Config, SensorConfig, SourceConfig};
use affectgate::gateway::{GatewayBuilder, Observed};
use affectgate::learn::onnx::{export_onnx, NetworkWeights};
use affectgate::retrain::registry::{Entry, Registry};
use common::shared_data;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn entry(id: &str) -> Entry {
    Entry {
        id: id.into(),
        created: "2026-11-25T00:00:00Z".into(),
        parent: "shipped".into(),
        status: "candidate".into(),
        reason: String::new(),
        metrics: serde_json::json!({}),
        sha256: String::new(),
    }
}

fn config(dir: &Path, replay: &Path) -> Config {
    let mut cfg = Config::load(&repo().join("plugin.toml")).unwrap();
    cfg.gateway.id = "gwswap".into();
    // No broker: the state messages wait in the outbox; the observer sees every one.
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = 9;
    cfg.mqtt.discovery = false;
    cfg.store.path = dir.join("store");
    cfg.model.path = repo().join("models/affectgate-arousal-v1.onnx");
    cfg.retrain.models_dir = dir.join("models-local");
    cfg.sensors = vec![SensorConfig {
        id: "polar".into(),
        source: SourceConfig::Replay {
            path: replay.to_path_buf(),
            signal: None,
            realtime: false,
            looped: true,
        },
    }];
    cfg
}

/// Promote a different model while the gateway scores a fast replay, then roll back: every
/// window is scored and published exactly once (indices contiguous), each by one whole model,
/// and the version in the state messages follows the registry: shipped → r0001 → shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_and_rollback_swap_the_serving_model_without_dropping_a_window() {
    let Some(data) = shared_data() else {
        eprintln!("SKIP: ../shared/data missing");
        return;
    };
    let replay = data.join("polar-h10/polar_h10_ecg.csv");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &replay);
    let registry = Registry::open(&cfg.retrain.models_dir);
    // A genuinely different network with the same head.
    let w = NetworkWeights::seeded(&[("arousal", &[512, 512])], 99);
    let onnx = export_onnx(&w, &[], "test").unwrap();
    registry
        .add(entry("r0001"), &onnx, "name = \"r0001\"\n")
        .unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Observed>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(
        GatewayBuilder::new(cfg, &repo())
            .observer(tx)
            .run(async move {
                let _ = stop_rx.await;
            }),
    );
    let mut seen: Vec<Observed> = Vec::new();
    let mut phase = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        let Ok(Some(o)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else {
            break;
        };
        seen.push(o);
        let last = &seen.last().unwrap().state.model;
        match phase {
            0 if seen.len() >= 20 => {
                registry.promote("r0001").unwrap();
                phase = 1;
            }
            1 if last.starts_with("r0001@") => phase = 2,
            2 if seen
                .iter()
                .filter(|o| o.state.model.starts_with("r0001@"))
                .count()
                >= 20 =>
            {
                assert_eq!(registry.rollback().unwrap(), "shipped");
                phase = 3;
            }
            3 if last.starts_with("affectgate-arousal-v1@") => {
                phase = 4;
            }
            4 if seen
                .iter()
                .rev()
                .take_while(|o| o.state.model.starts_with("affectgate"))
                .count()
                >= 10 =>
            {
                break
            }
            _ => {}
        }
    }
    let _ = stop_tx.send(());
    let report = gw.await.unwrap().unwrap();
    while let Ok(o) = rx.try_recv() {
        seen.push(o);
    }
    assert_eq!(phase, 4, "swap sequence incomplete at phase {phase}");
    let idx: Vec<u64> = seen.iter().map(|o| o.state.window).collect();
    assert_eq!(
        idx,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "no window dropped or repeated"
    );
    assert_eq!(report.sensors["polar"].windows, seen.len() as u64);
    // The model sequence has exactly two changes: shipped → r0001 → shipped.
    let mut runs: Vec<String> = Vec::new();
    for o in &seen {
        let stem = o.state.model.split('@').next().unwrap_or("").to_string();
        let stem = if o.state.model.is_empty() {
            "unscored".into()
        } else {
            stem
        };
        if runs.last() != Some(&stem) {
            runs.push(stem);
        }
    }
    assert_eq!(
        runs,
        vec!["affectgate-arousal-v1", "r0001", "affectgate-arousal-v1"],
        "{runs:?}"
    );
    // Different networks give different scores on the same kind of windows.
    let mean = |stem: &str| {
        let v: Vec<f32> = seen
            .iter()
            .filter(|o| o.state.model.starts_with(stem))
            .filter_map(|o| o.state.scores.get("arousal").copied().flatten())
            .collect();
        v.iter().sum::<f32>() / v.len() as f32
    };
    assert!((mean("r0001") - mean("affectgate")).abs() > 1e-3);
}

/// A promoted model whose file is broken does not stop the gateway: the shipped model serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_promoted_model_falls_back_to_the_shipped_one() {
    let Some(data) = shared_data() else {
        return;
    };
    let replay = data.join("polar-h10/polar_h10_ecg.csv");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &replay);
    if let SourceConfig::Replay { looped, .. } = &mut cfg.sensors[0].source {
        *looped = false;
    }
    let registry = Registry::open(&cfg.retrain.models_dir);
    registry
        .add(entry("r0001"), b"not an onnx model", "")
        .unwrap();
    registry.promote("r0001").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Observed>();
    let report = GatewayBuilder::new(cfg, &repo())
        .observer(tx)
        .run(std::future::pending())
        .await
        .unwrap();
    assert!(
        report.model.starts_with("affectgate-arousal-v1@"),
        "{}",
        report.model
    );
    let first = rx.recv().await.unwrap();
    assert!(first.state.model.starts_with("affectgate-arousal-v1@"));
    assert_eq!(report.sensors["polar"].windows, 59);
}
