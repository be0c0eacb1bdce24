//! On-gateway retraining: the model registry and the serving model's hot swap.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::shared_data;
use crate::util::Tmpfs;
use affectgate::config::{Config, SensorConfig, SourceConfig};
use affectgate::gateway::{GatewayBuilder, Observed};
use affectgate::model::onnx::export_onnx;
use affectgate::model::NetworkWeights;
use affectgate::retrain::registry::{Entry, ModelStatus, Registry};

use crate::util::repo;

/// A valid model card for `onnx` stored as a registry entry's `model.onnx` (every model load
/// checks the card beside the model against its bytes).
fn card_for(id: &str, onnx: &[u8]) -> String {
    affectgate::model::card::ModelCard {
        name: id.into(),
        onnx: "model.onnx".into(),
        sha256: affectgate::model::sha256_hex(onnx),
        ..affectgate::model::card::ModelCard::load(
            &crate::util::repo().join("models/affectgate-arousal-v2.card.toml"),
        )
        .unwrap()
    }
    .to_toml()
}

fn entry(id: &str) -> Entry {
    Entry {
        id: id.into(),
        created: "2026-11-25T00:00:00Z".into(),
        parent: "shipped".into(),
        status: ModelStatus::Candidate,
        reason: String::new(),
        metrics: serde_json::json!({}),
        sha256: String::new(),
    }
}

/// Looping replay, retraining on (tiny rounds: 1 epoch × 2 steps, ≤ 200 windows) but only
/// when asked over `cmd/retrain`.
fn on_demand_tiny_rounds(cfg: &mut Config) {
    if let SourceConfig::Replay { looped, .. } = &mut cfg.sensors[0].source {
        *looped = true;
    }
    cfg.retrain.enabled = true;
    cfg.retrain.interval_h = 1000.0;
    cfg.retrain.min_new_windows = 1_000_000;
    cfg.retrain.pretext_epochs = 1;
    cfg.retrain.max_steps_per_epoch = Some(2);
    cfg.retrain.max_windows = 200;
}

type GatewayTask = tokio::task::JoinHandle<
    Result<affectgate::gateway::RunReport, affectgate::gateway::GatewayError>,
>;

/// The gateway in this process (rounds in the built binary's worker), observed, until the
/// sender is used.
fn spawn_gateway(
    cfg: Config,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Observed>,
    tokio::sync::oneshot::Sender<()>,
    GatewayTask,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Observed>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(
        GatewayBuilder::new(cfg)
            .observer(tx)
            .retrain_worker(Path::new(env!("CARGO_BIN_EXE_affectgate")))
            .run(async move {
                let _ = stop_rx.await;
            }),
    );
    (rx, stop_tx, gw)
}

/// The common start of the retraining tests: shared data and a Mosquitto broker (`None` —
/// the caller skips — when either is missing), a config for gateway `id` on that broker, and
/// the Polar recording played once into the store (59 windows) by a first run.
struct Recorded {
    broker: crate::util::Mosquitto,
    dir: tempfile::TempDir,
    cfg: Config,
    run1: affectgate::gateway::RunReport,
}

async fn recorded(id: &str) -> Option<Recorded> {
    let data = shared_data()?;
    let broker = crate::util::Mosquitto::start()?;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &data.join("polar-h10/polar_h10_ecg.csv"));
    cfg.gateway.id = id.into();
    cfg.mqtt.port = broker.port;
    if let SourceConfig::Replay { looped, .. } = &mut cfg.sensors[0].source {
        *looped = false;
    }
    let run1 = GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    Some(Recorded {
        broker,
        dir,
        cfg,
        run1,
    })
}

fn config(dir: &Path, replay: &Path) -> Config {
    // No broker (port 9): the state messages wait in the outbox; the observer sees every one.
    let mut cfg = crate::util::gateway_config("gwswap", 9, &dir.join("store"));
    cfg.mqtt.discovery = false;
    cfg.retrain.models_dir = dir.join("models-local");
    cfg.sensors = vec![crate::util::replay_sensor("polar", replay, true)];
    cfg
}

/// Promote a different model while the gateway scores a fast replay, then roll back: every
/// window is scored and published exactly once (indices contiguous), each by one whole model,
/// and the version in the state messages follows the registry: shipped → r0001 → shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_and_rollback_swap_the_serving_model_without_dropping_a_window() {
    let Some(data) = shared_data() else {
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
        .add(entry("r0001"), &onnx, &card_for("r0001", &onnx))
        .unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Observed>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(GatewayBuilder::new(cfg).observer(tx).run(async move {
        let _ = stop_rx.await;
    }));
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
            3 if last.starts_with("affectgate-arousal-v2@") => {
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
        vec!["affectgate-arousal-v2", "r0001", "affectgate-arousal-v2"],
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
    let report = GatewayBuilder::new(cfg)
        .observer(tx)
        .run(std::future::pending())
        .await
        .unwrap();
    assert!(
        report.model.starts_with("affectgate-arousal-v2@"),
        "{}",
        report.model
    );
    let first = rx.recv().await.unwrap();
    assert!(first.state.model.starts_with("affectgate-arousal-v2@"));
    assert_eq!(report.sensors["polar"].windows, 59);
}

/// The whole loop in a running gateway: windows stream in (fast looping replay), a
/// self-report labels some, `cmd/retrain` starts a (tiny) round; the retained status goes
/// running → promoted/rejected with before/after metrics; the registry records the verdict;
/// state messages keep flowing while the round trains; a promoted model then scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_retrain_runs_a_round_in_the_running_gateway() {
    let pack = repo().join("models/affectgate-arousal-v2.replay.bin");
    assert!(
        pack.exists(),
        "the shipped model's replay pack is missing: {}",
        pack.display()
    );
    // Run 1: the recording once (59 windows), then self-reports on all of them, written the
    // way the label input writes them (the MQTT path is tested in home_automation.rs; a fast
    // replay's windows lie in the future, beyond what a self-report may name).
    let Some(Recorded {
        broker,
        dir: _dir,
        mut cfg,
        run1: r1,
    }) = recorded("gwrt").await
    else {
        return;
    };
    assert_eq!(r1.sensors["polar"].windows, 59);
    let good_run1 = r1.sensors["polar"].scored;
    {
        let store =
            affectgate::store::Store::open(&cfg.store.path, affectgate::store::Retention::KEEP_ALL)
                .unwrap();
        let starts: Vec<i64> = store
            .range("polar", i64::MIN, i64::MAX)
            .map(|w| w.unwrap().window.start_ns)
            .collect();
        for (k, t) in starts.iter().enumerate() {
            let v = if k % 2 == 0 { 0.2 } else { 0.8 };
            assert!(store
                .set_labels("polar", *t, &[("arousal".into(), v)])
                .unwrap());
        }
        store.flush().unwrap();
    }
    // Run 2: looping, with retraining enabled (a tiny round) and asked for over MQTT.
    on_demand_tiny_rounds(&mut cfg);
    let registry = Registry::open(&cfg.retrain.models_dir);
    let rec = crate::util::Recorder::start(broker.port, &["affectgate/gwrt/#"]).await;
    let (mut rx, stop_tx, gw) = spawn_gateway(cfg);
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let publish = |topic: &str, payload: &str| {
        let c = rec.client.clone();
        let (t, p) = (topic.to_string(), payload.to_string());
        async move {
            c.publish(t, rumqttc::QoS::AtLeastOnce, false, p)
                .await
                .unwrap()
        }
    };
    publish("affectgate/gwrt/cmd/retrain", "{}").await;
    let status = |m: &[crate::util::Msg]| -> Vec<serde_json::Value> {
        m.iter()
            .filter(|m| m.topic == "affectgate/gwrt/retrain")
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect()
    };
    let t_request = Instant::now();
    let done = rec
        .wait_for(Duration::from_secs(300), |m| {
            status(m).iter().any(|s| {
                s["state"] == "promoted" || s["state"] == "rejected" || s["state"] == "failed"
            })
        })
        .await;
    // After the verdict: a promoted model must be swapped in (the registry watcher polls
    // every 2 s); a rejected one must never serve.
    let promoted = status(&rec.messages())
        .iter()
        .any(|s| s["state"] == "promoted");
    let mut after = Vec::new();
    let t_after = Instant::now();
    while t_after.elapsed() < Duration::from_secs(60) {
        let o = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let swapped = o.state.model.starts_with("r0001@");
        after.push(o);
        if (promoted && swapped) || (!promoted && after.len() >= 30) {
            break;
        }
    }
    let _ = stop_tx.send(());
    gw.await.unwrap().unwrap();
    let states = status(&rec.messages());
    assert!(
        done,
        "no verdict after {:?}: {states:?}",
        t_request.elapsed()
    );
    let last = states.last().unwrap();
    eprintln!(
        "retrain status: {}",
        serde_json::to_string_pretty(last).unwrap()
    );
    assert!(states.iter().any(|s| s["state"] == "running"), "{states:?}");
    assert_ne!(last["state"], "failed", "{last}");
    let report = &last["report"];
    assert_eq!(report["id"], "r0001");
    assert!(report["windows"].as_u64().unwrap() + report["labelled"].as_u64().unwrap() <= 200);
    // Every good (gathered) window of run 1 carries a self-report.
    assert_eq!(
        report["labelled"].as_u64().unwrap(),
        good_run1,
        "the self-reported windows: {report}"
    );
    assert!(report["before"]["heads"][0][1].is_number(), "{report}");
    // Measured in the worker process, which is not the test process.
    let peak = report["peak_rss_mib"]
        .as_f64()
        .expect("worker's peak memory");
    assert!(peak > 10.0 && peak < 1536.0, "{peak} MiB");
    // The shipped pretext network (models/<model>.pretext.onnx) gives the first round a
    // pretext "before" too.
    assert!(report["before"]["pretext_accuracy"].is_number(), "{report}");
    assert!(report["after"]["pretext_accuracy"].is_number(), "{report}");
    assert!(last["finished"].as_str().unwrap().ends_with('Z'));
    // Scores kept flowing while the round trained: windows published between the first
    // `running` status and the verdict, with their window-complete → queued latency.
    let msgs = rec.messages();
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        msgs.iter()
            .filter(|m| m.topic == "affectgate/gwrt/retrain")
            .find(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).is_ok_and(|v| pred(&v))
            })
            .map(|m| m.at)
            .unwrap()
    };
    let t_run = at(&|v| v["state"] == "running");
    let t_done = at(&|v| v["state"] == "promoted" || v["state"] == "rejected");
    let during: Vec<f64> = seen
        .iter()
        .chain(&after)
        .filter(|o| o.published > t_run && o.published < t_done)
        .map(|o| (o.published - o.completed).as_secs_f64() * 1e3)
        .collect();
    eprintln!(
        "round took {:.1} s; {} windows published meanwhile, max window→queue latency {:.1} ms",
        (t_done - t_run).as_secs_f64(),
        during.len(),
        during.iter().cloned().fold(0.0, f64::max)
    );
    assert!(
        !during.is_empty(),
        "state messages kept flowing during the round"
    );
    let entry = registry.get("r0001").unwrap();
    if last["state"] == "promoted" {
        assert_eq!(entry.status, ModelStatus::Serving);
        assert!(
            after.last().unwrap().state.model.starts_with("r0001@"),
            "never swapped in"
        );
    } else {
        assert_eq!(entry.status, ModelStatus::Rejected);
        assert!(!entry.reason.is_empty());
        assert!(after
            .iter()
            .all(|o| o.state.model.starts_with("affectgate-arousal-v2@")));
    }
    assert!(registry.model_path("r0001").exists());
}

/// Power cut during a round: SIGKILL the gateway after the round's first checkpoint. The
/// serving model is untouched (nothing promoted, registry intact), and the next start resumes
/// the round from its checkpoint instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_killed_mid_way_resumes_from_its_checkpoint() {
    // Windows to train on (run 1 ends with the file).
    let Some(Recorded {
        broker,
        dir,
        mut cfg,
        ..
    }) = recorded("gwkill").await
    else {
        return;
    };
    // Runs 2 and 3: a real-time synthetic strap keeps the gateway alive; a round starts at
    // once (min_new_windows = 1) with 4 short pretext epochs.
    cfg.sensors = vec![SensorConfig {
        id: "polar".into(),
        source: SourceConfig::Synthetic {
            ecg: Default::default(),
        },
    }];
    cfg.retrain.enabled = true;
    cfg.retrain.min_new_windows = 1;
    cfg.retrain.pretext_epochs = 4;
    cfg.retrain.max_steps_per_epoch = Some(3);
    cfg.retrain.max_windows = 200;
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let registry = Registry::open(&cfg.retrain.models_dir);
    let work = cfg.retrain.models_dir.join("work");
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_affectgate"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn,affectgate=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut gw = spawn();
    let t0 = Instant::now();
    while !work.join("checkpoint.bin").exists() && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        work.join("checkpoint.bin").exists(),
        "no checkpoint written"
    );
    gw.kill().unwrap(); // SIGKILL: no shutdown path runs
    gw.wait().unwrap();
    assert_eq!(
        registry.serving().unwrap(),
        (None, None),
        "serving model untouched"
    );
    assert!(
        registry.list().unwrap().is_empty(),
        "nothing registered mid-round"
    );
    assert!(work.join("round.json").exists());

    let rec = crate::util::Recorder::start(broker.port, &["affectgate/gwkill/retrain"]).await;
    let mut gw = spawn();
    let verdict = |m: &[crate::util::Msg]| {
        m.iter()
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
            .find(|v| {
                v["state"] == "promoted" || v["state"] == "rejected" || v["state"] == "failed"
            })
    };
    let done = rec
        .wait_for(Duration::from_secs(300), |m| verdict(m).is_some())
        .await;
    unsafe { libc::kill(gw.id() as libc::pid_t, libc::SIGTERM) };
    gw.wait().unwrap();
    assert!(done, "no verdict after the restart");
    let v = verdict(&rec.messages()).unwrap();
    assert_ne!(v["state"], "failed", "{v}");
    let r = &v["report"];
    let resumed = r["resumed_from_epoch"]
        .as_u64()
        .expect("resumed from a checkpoint");
    assert!(resumed >= 1, "{r}");
    assert_eq!(
        r["epochs_run"].as_u64().unwrap(),
        4 - resumed,
        "only the remaining epochs: {r}"
    );
    assert_eq!(r["id"], "r0001");
    assert!(
        !work.exists(),
        "the work directory is cleared after the round"
    );
}

/// A full disk, then an out-of-memory, each end the round with a clear published reason —
/// never the gateway: states keep flowing (no window lost or repeated), the serving model
/// stays, nothing is registered, and the gateway still shuts down cleanly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_or_out_of_memory_ends_the_round_not_the_gateway() {
    let Some(Recorded {
        broker,
        dir: _dir,
        mut cfg,
        ..
    }) = recorded("gwfull").await
    else {
        return;
    };
    // The models directory on a 64 KiB file system: the round's input (≈ 0.3 MB) cannot fit.
    let Some(fs) = Tmpfs::mount(&cfg.retrain.models_dir, "64k") else {
        return;
    };
    on_demand_tiny_rounds(&mut cfg);
    cfg.retrain.max_memory_mb = 48;
    let registry = Registry::open(&cfg.retrain.models_dir);
    let work = registry.dir().join("work");
    let rec = crate::util::Recorder::start(broker.port, &["affectgate/gwfull/retrain"]).await;
    let (mut rx, stop_tx, gw) = spawn_gateway(cfg);
    let mut seen = Vec::new();
    let failed = |m: &[crate::util::Msg]| -> Vec<serde_json::Value> {
        m.iter()
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
            .filter(|v| v["state"] == "failed")
            .collect()
    };
    // Ask for a round and wait for the n-th failed status, collecting states meanwhile.
    for n in 1..=2 {
        while seen.len() < 5 * n {
            seen.push(
                tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        if n == 2 {
            fs.resize("64m"); // room on disk now, but 48 MiB of memory
        }
        rec.client
            .publish(
                "affectgate/gwfull/cmd/retrain",
                rumqttc::QoS::AtLeastOnce,
                false,
                "{}",
            )
            .await
            .unwrap();
        assert!(
            rec.wait_for(Duration::from_secs(120), |m| failed(m).len() >= n)
                .await,
            "no failed status #{n}: {:?}",
            rec.messages()
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).to_string())
                .collect::<Vec<_>>()
        );
    }
    let statuses = failed(&rec.messages());
    // 1. Full disk: staging the round cannot write its input.
    let reason = statuses[0]["reason"].as_str().unwrap();
    eprintln!("full disk: {reason}");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(reason.contains("input.bin"), "names the file: {reason}");
    assert!(statuses[0]["finished"].as_str().is_some());
    // 2. Out of memory in the worker process.
    let reason = statuses[1]["reason"].as_str().unwrap();
    eprintln!("out of memory: {reason}");
    assert!(reason.starts_with("out of memory"), "{reason}");
    assert!(reason.contains("max_memory_mb = 48"), "{reason}");
    assert!(
        !work.exists(),
        "a crashed round's staged input is dropped (it would crash again)"
    );

    // The gateway never stopped scoring, nothing was registered, the shipped model serves.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        seen.push(
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let _ = stop_tx.send(());
    let report = gw.await.unwrap().unwrap();
    while let Ok(o) = rx.try_recv() {
        seen.push(o);
    }
    let idx: Vec<u64> = seen.iter().map(|o| o.state.window).collect();
    assert_eq!(
        idx,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "no window dropped or repeated"
    );
    assert_eq!(report.sensors["polar"].windows, seen.len() as u64);
    assert!(seen
        .iter()
        .all(|o| o.state.model.is_empty() || o.state.model.starts_with("affectgate-arousal-v2@")));
    assert!(registry.list().unwrap().is_empty());
    assert_eq!(registry.serving().unwrap(), (None, None));
}

/// A staged round belongs to the model that served when it was staged: if another model is
/// promoted in between, running it is refused (naming both) and its files are dropped, so the
/// next round stages afresh instead of training the wrong parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_round_of_a_replaced_model_is_discarded() {
    use affectgate::retrain::round::{self, RoundError};
    let Some(Recorded { dir: _dir, cfg, .. }) = recorded("gwstale").await else {
        return;
    };
    let store =
        affectgate::store::Store::open(&cfg.store.path, affectgate::store::Retention::KEEP_ALL)
            .unwrap();
    let registry = Registry::open(&cfg.retrain.models_dir);
    let shipped = &cfg.model.path;
    let staged = round::stage(&store, &registry, shipped, 200).unwrap();
    assert_eq!(
        (staged.id.as_str(), staged.parent.as_str()),
        ("r0001", "shipped")
    );
    assert!(staged.windows + staged.labelled >= 50, "{staged:?}");
    // Staging again keeps the staged round (same parent): it resumes with the same input.
    let again = round::stage(&store, &registry, shipped, 200).unwrap();
    assert_eq!(again.id, "r0001");
    let w = NetworkWeights::seeded(&[("arousal", &[512, 512])], 5);
    let onnx = export_onnx(&w, &[], "test").unwrap();
    registry
        .add(entry("r0002"), &onnx, &card_for("r0002", &onnx))
        .unwrap();
    registry.promote("r0002").unwrap();
    let err = round::run_staged(
        &registry,
        shipped,
        &Default::default(),
        &Default::default(),
        &mut |_, _| {},
        &|| None,
    )
    .unwrap_err();
    assert!(matches!(err, RoundError::Stale(_)), "{err}");
    assert!(err.to_string().contains("from shipped to r0002"), "{err}");
    assert!(!registry.dir().join("work").exists());
}

/// Home Assistant's "Automatic retraining" switch (`cmd/auto_retrain`): paused, a due round
/// does not start — not in this run, not after a restart — and the retained status says
/// `paused`; resumed, the due round starts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automatic_retraining_switch_pauses_due_rounds_across_restarts() {
    let Some(Recorded {
        broker,
        dir: _dir,
        mut cfg,
        run1,
    }) = recorded("gwauto").await
    else {
        return;
    };
    assert!(run1.sensors["polar"].scored >= 10);
    let rec = crate::util::Recorder::start(broker.port, &["affectgate/gwauto/#"]).await;
    // From the recorded messages (`wait_for` hands them over; it holds the recorder's lock).
    let statuses = |m: &[crate::util::Msg]| -> Vec<serde_json::Value> {
        m.iter()
            .filter(|m| m.topic == "affectgate/gwauto/retrain")
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect()
    };
    let publish = |payload: &'static str| {
        let c = rec.client.clone();
        async move {
            c.publish(
                "affectgate/gwauto/cmd/auto_retrain",
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap()
        }
    };
    // Run A: nothing due (on-demand config); switch automatic retraining off.
    on_demand_tiny_rounds(&mut cfg);
    let (_rx, stop_tx, gw) = spawn_gateway(cfg.clone());
    assert!(
        rec.wait_for(Duration::from_secs(30), |m| m
            .iter()
            .any(|m| m.topic == "affectgate/gwauto/retrain"))
            .await
    );
    assert_eq!(statuses(&rec.messages()).last().unwrap()["paused"], false);
    publish(r#"{"enabled": false}"#).await;
    assert!(
        rec.wait_for(Duration::from_secs(10), |m| statuses(m)
            .last()
            .is_some_and(|s| s["paused"] == true))
            .await,
        "{:?}",
        statuses(&rec.messages())
    );
    let _ = stop_tx.send(());
    gw.await.unwrap().unwrap();

    // Run B: a round is due at once (no round yet, 59 windows ≥ 10) — but paused.
    cfg.retrain.interval_h = 0.01;
    cfg.retrain.min_new_windows = 10;
    let before = rec.messages().len();
    let (_rx, stop_tx, gw) = spawn_gateway(cfg.clone());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let run_b: Vec<serde_json::Value> = rec.messages()[before..]
        .iter()
        .filter(|m| m.topic == "affectgate/gwauto/retrain")
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect();
    assert!(!run_b.is_empty(), "the status is re-published at start");
    assert!(
        run_b
            .iter()
            .all(|s| s["paused"] == true && s["state"] != "running"),
        "{run_b:?}"
    );
    // Resume: the due round starts.
    publish(r#"{"enabled": true}"#).await;
    let started = rec
        .wait_for(Duration::from_secs(30), |m| {
            m[before..].iter().any(|m| {
                m.topic == "affectgate/gwauto/retrain"
                    && serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .is_ok_and(|s| s["state"] == "running" && s["paused"] == false)
            })
        })
        .await;
    let _ = stop_tx.send(());
    gw.await.unwrap().unwrap();
    assert!(started, "{:?}", statuses(&rec.messages()));
}
