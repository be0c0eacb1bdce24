//! The gateway end to end against a real Mosquitto (one broker per test, free port):
//! replay a real recording → exact number of state messages, valid JSON, plausible heart
//! rate; restart mid-run → nothing announced is lost from the store; graceful shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{gateway_config, replay_sensor, shared_data, Mosquitto, Recorder};
use affectgate::config::Config;
use affectgate::dsp::windows_from_recording;
use affectgate::gateway::GatewayBuilder;
use affectgate::mqtt::StateMessage;
use affectgate::source::file::read_recording;
use affectgate::store::{Retention, Store};

use crate::util::repo;

/// The shipped plugin.toml with a replay sensor, a broker port and a store path.
fn config_for(port: u16, store: &Path, replay: &Path, looped: bool, gateway: &str) -> Config {
    let mut cfg = gateway_config(gateway, port, store);
    cfg.sensors = vec![replay_sensor("polar", replay, looped)];
    cfg
}

fn polar_file() -> Option<PathBuf> {
    let p = shared_data()?.join("polar-h10/polar_h10_ecg.csv");
    p.exists().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_polar_recording_publishes_one_valid_state_per_window() {
    let Some(file) = polar_file() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let cfg = config_for(broker.port, &store_dir, &file, false, "gw1");

    // The exact number of windows the offline path cuts from this file.
    let rec = read_recording(&file, None).unwrap();
    let expected = windows_from_recording(rec.fs_hz, &rec.samples_uv, 0, &cfg.dsp)
        .unwrap()
        .len();
    assert!(expected > 50, "{expected}");

    let rx = Recorder::start(broker.port, &["affectgate/gw1/#"]).await;
    let report = GatewayBuilder::new(cfg)
        .run(std::future::pending())
        .await
        .expect("gateway run");
    assert!(report.mqtt.all_acked, "{:?}", report.mqtt);
    assert_eq!(report.sensors["polar"].windows as usize, expected);
    assert_eq!(report.published as usize, expected);

    assert!(
        rx.wait_for(Duration::from_secs(10), |m| {
            m.iter()
                .filter(|m| m.topic == "affectgate/gw1/polar/state")
                .count()
                >= expected
        })
        .await
    );
    let states: Vec<StateMessage> = rx
        .on("affectgate/gw1/polar/state")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("valid state JSON"))
        .collect();
    assert_eq!(states.len(), expected, "exactly one message per window");
    // Window numbers 0..expected, each once, in order.
    let idx: Vec<u64> = states.iter().map(|s| s.window).collect();
    assert_eq!(idx, (0..expected as u64).collect::<Vec<_>>());

    // Device heart rate (the strap's own hr_bpm column) for a plausibility check.
    let side = rec.side.as_ref().expect("Polar CSV has hr_bpm");
    let mut dev: Vec<f32> = side.hr_bpm.iter().map(|(_, v)| *v).collect();
    dev.sort_by(f32::total_cmp);
    let dev_median = dev[dev.len() / 2];

    let mut good_hr = Vec::new();
    let mut flagged = 0;
    for s in &states {
        assert_eq!(s.sensor, "polar");
        assert!(s.model.starts_with("affectgate-arousal-v2@"), "{}", s.model);
        assert!(s.scores.contains_key("arousal"));
        if s.quality == "good" {
            let a = s.scores["arousal"].expect("good windows are scored");
            assert!((0.0..=1.0).contains(&a), "{a}");
            let hr = s.hr_bpm.expect("good windows have HR");
            assert!((35.0..=200.0).contains(&hr), "implausible HR {hr}");
            good_hr.push(hr);
        } else {
            assert_eq!(s.scores["arousal"], None, "flagged windows are not scored");
            // …and publish no HR/HRV (it would enter Home Assistant's long-term statistics).
            assert_eq!(
                (s.hr_bpm, s.rmssd_ms, s.sdnn_ms),
                (None, None, None),
                "{}",
                s.quality
            );
            flagged += 1;
        }
    }
    assert!(
        good_hr.len() * 10 >= states.len() * 7,
        "{} of {} good",
        good_hr.len(),
        states.len()
    );
    eprintln!("{flagged} flagged windows of {}", states.len());
    // The wearer baseline: calibrating until 30 good windows were seen, then every good
    // window carries its values relative to this wearer; the RR correction share is there.
    let first_relative = states
        .iter()
        .position(|s| !s.calibrating)
        .expect("a baseline after 30 good windows");
    let good_before = states[..first_relative]
        .iter()
        .filter(|s| s.quality == "good")
        .count();
    assert_eq!(
        good_before, 29,
        "the 30th good window is the first with a baseline"
    );
    for s in &states[first_relative..] {
        assert!(!s.calibrating);
        if s.quality == "good" {
            let r = s.hr_relative.expect("relative HR once calibrated");
            assert!(r.abs() < 10.0, "{r}");
            assert!(s.rr_corrected.is_some());
        }
    }
    assert!(states[..first_relative]
        .iter()
        .all(|s| s.hr_relative.is_none()));
    good_hr.sort_by(f32::total_cmp);
    let med = good_hr[good_hr.len() / 2];
    assert!(
        (med - dev_median).abs() < 8.0,
        "median HR {med} vs the strap's own {dev_median}"
    );

    // Availability: online on connect, offline (retained) at shutdown.
    let status = rx.on("affectgate/gw1/status");
    assert_eq!(
        status.first().map(|m| m.payload.as_slice()),
        Some(&b"online"[..])
    );
    assert_eq!(
        status.last().map(|m| m.payload.as_slice()),
        Some(&b"offline"[..])
    );

    // Everything is in the store, with the same scores that were published.
    let store = Store::open(&store_dir, Retention::KEEP_ALL).unwrap();
    let stored: Vec<_> = store
        .range("polar", i64::MIN, i64::MAX)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(stored.len(), expected);
    for (rec, s) in stored.iter().zip(&states) {
        assert_eq!(rec.window.index, s.window);
        let a = rec
            .scores
            .iter()
            .find(|(h, _)| h == "arousal")
            .map(|(_, v)| *v);
        assert_eq!(a, s.scores["arousal"]);
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_affectgate")
}

fn write_config(cfg: &Config, path: &Path) {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
}

/// Kill the gateway (SIGKILL) mid-run, restart it on the same store, stop it with SIGTERM:
/// every window announced over MQTT before the kill is in the store, the second run exits 0,
/// says `offline`, and adds exactly the windows it announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_keeps_every_announced_window() {
    let Some(data) = shared_data() else {
        return;
    };
    let file = data.join("eegmat/Subject00_rest.edf");
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let cfg = config_for(broker.port, &store_dir, &file, true, "gw2");
    let cfg_path = dir.path().join("gw.toml");
    write_config(&cfg, &cfg_path);
    let rx = Recorder::start(broker.port, &["affectgate/gw2/#"]).await;
    let state_topic = "affectgate/gw2/polar/state";

    // Run 1: until ≥ 15 windows were announced, then SIGKILL.
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ok = rx
        .wait_for(Duration::from_secs(120), |m| {
            m.iter().filter(|m| m.topic == state_topic).count() >= 15
        })
        .await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(ok, "run 1 announced < 15 windows");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let announced1: Vec<StateMessage> = rx
        .on(state_topic)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    // The broker published our last will.
    assert!(
        rx.wait_for(Duration::from_secs(5), |m| m.iter().any(|m| m.topic
            == "affectgate/gw2/status"
            && m.payload == b"offline"))
            .await,
        "no last-will `offline` after SIGKILL"
    );

    let count1 = {
        let store =
            Store::open(&store_dir, Retention::KEEP_ALL).expect("store reopens after SIGKILL");
        let recs: Vec<_> = store.range("polar", i64::MIN, i64::MAX).collect();
        assert!(
            recs.iter().all(|r| r.is_ok()),
            "undecodable record after SIGKILL"
        );
        let recs: Vec<_> = recs.into_iter().map(|r| r.unwrap()).collect();
        for s in &announced1 {
            assert!(
                recs.iter()
                    .any(|r| r.window.start_ns / 1_000_000 == s.window_start_ms),
                "announced window {} missing from the store",
                s.window
            );
        }
        recs.len()
    };
    assert!(count1 >= announced1.len());

    // Run 2 on the same store: SIGTERM after 10 more windows → exit 0.
    let before = rx.on(state_topic).len();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ok = rx
        .wait_for(Duration::from_secs(120), |m| {
            m.iter().filter(|m| m.topic == state_topic).count() >= before + 10
        })
        .await;
    unsafe_sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(ok, "run 2 announced < 10 windows");
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = rx.on("affectgate/gw2/status");
    assert_eq!(status.last().unwrap().payload, b"offline");
    // After a clean stop every stored window has been announced (run 1's undelivered outbox
    // entries were sent by run 2), and nothing was announced that is not stored.
    let announced: std::collections::BTreeSet<i64> = rx
        .on(state_topic)
        .iter()
        .map(|m| {
            serde_json::from_slice::<StateMessage>(&m.payload)
                .unwrap()
                .window_start_ms
        })
        .collect();
    let store = Store::open(&store_dir, Retention::KEEP_ALL).unwrap();
    let stored: std::collections::BTreeSet<i64> = store
        .range("polar", i64::MIN, i64::MAX)
        .map(|r| {
            r.expect("every record decodes")
                .window
                .start_ns
                .div_euclid(1_000_000)
        })
        .collect();
    assert!(stored.len() >= count1 + 10, "{} stored", stored.len());
    assert_eq!(stored, announced, "stored windows = announced windows");
    assert_eq!(store.outbox(100_000).unwrap().len(), 0, "outbox drained");
}

fn unsafe_sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn broken_model_file_fails_start_naming_the_file_and_keeps_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.onnx");
    std::fs::write(&model, b"this is not an onnx model").unwrap();
    let store_dir = dir.path().join("store");
    let mut cfg = Config::load(&repo().join("plugin.toml")).unwrap();
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = 1;
    cfg.model.path = model.clone();
    cfg.store.path = store_dir.clone();
    let cfg_path = dir.path().join("gw.toml");
    write_config(&cfg, &cfg_path);
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.onnx"), "{err}");
    assert!(
        !store_dir.exists(),
        "nothing is created before the model loads"
    );
}

#[test]
fn run_rejects_unknown_key_and_notch_above_nyquist() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo().join("plugin.toml")).unwrap();
    let bad = base.replace("warmup_s = 2.0", "warmup_s = 2.0\nwarmup_sec = 3");
    let p = dir.path().join("a.toml");
    std::fs::write(&p, bad).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warmup_sec") && err.contains("a.toml"),
        "{err}"
    );

    let bad = base.replace("hr_bpm = 62,", "hr_bpm = 62, fs_hz = 90,");
    std::fs::write(&p, bad).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notch_hz") && err.contains("calm"), "{err}");
}

/// The README's first command: scores from all three synthetic sensors within 30 s of start,
/// then Ctrl-C (SIGINT) stops it cleanly with exit 0.
#[test]
fn demo_prints_scores_for_three_sensors_within_30_s_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .arg("demo")
        .current_dir(dir.path()) // no repo files: everything the demo needs is built in
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Duration)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send((line, t0.elapsed()));
        }
    });
    let mut first: std::collections::BTreeMap<&str, Duration> = Default::default();
    let mut lines = Vec::new();
    while first.len() < 3 && t0.elapsed() < Duration::from_secs(60) {
        let Ok((line, at)) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        for s in ["calm", "steady", "stressed"] {
            if line.contains(&format!(" {s} ")) && line.contains("arousal") && line.contains("HR") {
                first.entry(s).or_insert(at);
                assert!(line.contains("quality"), "{line}");
            }
        }
        lines.push(line);
    }
    unsafe_sigint(child.id());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter().map(|(l, _)| l));
    let all = lines.join("\n");
    assert_eq!(first.len(), 3, "not every sensor printed a score:\n{all}");
    for (s, at) in &first {
        assert!(
            *at < Duration::from_secs(30),
            "{s}: first score after {at:?}"
        );
    }
    assert!(status.success(), "exit {status:?}\n{all}");
    assert!(all.contains("stopped cleanly"), "{all}");
}

fn unsafe_sigint(pid: u32) {
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// `run` with `backend = "onnxruntime"` (a child process: one ort backend per process) on the
/// same replay gives the same number of windows and the same scores as tract, to 1e-4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_backend_serves_the_same_scores_as_tract() {
    let Some(file) = polar_file() else { return };
    let Some(dylib) = affectgate::infer::find_onnxruntime_dylib() else {
        crate::util::missing(
            "libonnxruntime not found (set ORT_DYLIB_PATH)",
            "AFFECTGATE_REQUIRE_ONNXRUNTIME",
        );
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rx = Recorder::start(broker.port, &["affectgate/+/polar/state"]).await;
    let mut scores: Vec<Vec<Option<f32>>> = Vec::new();
    for (gw, backend) in [
        ("tract", affectgate::infer::Backend::Tract),
        (
            "ort",
            affectgate::infer::Backend::OnnxRuntime {
                dylib: Some(dylib.clone()),
            },
        ),
    ] {
        let mut cfg = config_for(broker.port, &dir.path().join(gw), &file, false, gw);
        cfg.model.backend = backend;
        let p = dir.path().join(format!("{gw}.toml"));
        write_config(&cfg, &p);
        let out = Command::new(bin())
            .args(["run", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let topic = format!("affectgate/{gw}/polar/state");
        rx.wait_for(Duration::from_secs(10), |m| {
            m.iter().filter(|m| m.topic == topic).count() > 50
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        scores.push(
            rx.on(&topic)
                .iter()
                .map(|m| {
                    serde_json::from_slice::<StateMessage>(&m.payload)
                        .unwrap()
                        .scores["arousal"]
                })
                .collect(),
        );
    }
    assert!(scores[0].len() > 50);
    assert_eq!(scores[0].len(), scores[1].len());
    for (a, b) in scores[0].iter().zip(&scores[1]) {
        match (a, b) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-4, "{a} vs {b}"),
            (None, None) => {}
            _ => panic!("scored by one backend only: {a:?} vs {b:?}"),
        }
    }
}

/// The wearer baseline is kept in the store: after a restart on the same store the sensor is
/// not calibrating again; the first window of the second run already carries relative values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wearer_baseline_survives_a_restart() {
    let Some(file) = polar_file() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let rx = Recorder::start(broker.port, &["affectgate/gwbase/#"]).await;
    for _ in 0..2 {
        let cfg = config_for(broker.port, &store_dir, &file, false, "gwbase");
        let report = GatewayBuilder::new(cfg)
            .run(std::future::pending())
            .await
            .expect("gateway run");
        assert!(report.mqtt.all_acked, "{:?}", report.mqtt);
    }
    assert!(
        rx.wait_for(Duration::from_secs(10), |m| {
            m.iter()
                .filter(|m| m.topic == "affectgate/gwbase/polar/state")
                .count()
                >= 2 * 59
        })
        .await
    );
    let states: Vec<StateMessage> = rx
        .on("affectgate/gwbase/polar/state")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let (first, second) = states.split_at(states.len() / 2);
    assert!(first[0].calibrating, "a new sensor starts calibrating");
    assert!(
        second.iter().all(|s| !s.calibrating),
        "after a restart the stored baseline is used"
    );
    let g = second.iter().find(|s| s.quality == "good").unwrap();
    assert!(g.hr_relative.is_some());
}

/// Commands act once. A retained `cmd/reload` left on the broker used to make every
/// (re)connect reload again — 258 reloads in 30 s, no state published — and a SIGTERM during
/// one of those reloads was lost. Now the retained copy is refused on the error topic, the
/// gateway publishes states, and SIGTERM stops it even while live reloads keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_reload_is_refused_and_sigterm_stops_a_reloading_gateway() {
    let Some(file) = polar_file() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(broker.port, &dir.path().join("store"), &file, true, "gw9");
    let cfg_path = dir.path().join("gw.toml");
    write_config(&cfg, &cfg_path);
    let rx = Recorder::start(broker.port, &["affectgate/gw9/#"]).await;
    let cmd = "affectgate/gw9/cmd/reload";
    rx.client
        .publish(cmd, rumqttc::QoS::AtLeastOnce, true, "{}")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let refused = rx
        .wait_for(Duration::from_secs(60), |m| {
            m.iter().any(|m| {
                m.topic == "affectgate/gw9/error"
                    && String::from_utf8_lossy(&m.payload).contains("retained message ignored")
            }) && m
                .iter()
                .filter(|m| m.topic == "affectgate/gw9/polar/state")
                .count()
                >= 5
        })
        .await;
    // Live reloads every 50 ms; SIGTERM lands in the middle of them.
    for i in 0..40 {
        rx.client
            .publish(cmd, rumqttc::QoS::AtLeastOnce, false, "{}")
            .await
            .unwrap();
        if i == 20 {
            unsafe_sigterm(child.id());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = done.recv_timeout(Duration::from_secs(30)) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("the gateway did not stop within 30 s of SIGTERM (killed)");
    };
    let out = out.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused,
        "no refusal of the retained command and no states\n{err}"
    );
    assert!(out.status.success(), "exit {:?}\n{err}", out.status);
}

/// Stored before announced, on a full disk. The store sits on a 2 MiB tmpfs that the replay
/// fills: every state message the broker received is for a window that is in the store once
/// space returns (32 windows were published but never stored before the fix). The gateway
/// says on the error topic and on the retained store topic that the store cannot be written,
/// and stops with the problem in its report (sled keeps the first write error for good, so
/// it could not recover in-process; it used to log thousands of errors and exit "cleanly").
/// Started again once there is room, it stores and announces again and the store topic says
/// the problem is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_announces_a_window_it_did_not_store() {
    let Some(file) = polar_file() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let Some(fs) = crate::util::Tmpfs::mount(&store_dir, "2m") else {
        return;
    };
    let mut cfg = config_for(broker.port, &store_dir, &file, true, "gwfull");
    cfg.mqtt.discovery = false;
    let rx = Recorder::start(broker.port, &["affectgate/gwfull/#"]).await;
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        GatewayBuilder::new(cfg.clone()).run(std::future::pending::<()>()),
    )
    .await
    .expect("the gateway stops by itself once the store cannot be written")
    .unwrap();
    let problem = report
        .store_problem
        .clone()
        .expect("the report names the store problem");
    assert!(problem.contains("cannot be written"), "{problem}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let announced: Vec<StateMessage> = rx
        .on("affectgate/gwfull/polar/state")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert!(!announced.is_empty());
    let status = |rx: &Recorder| -> Vec<serde_json::Value> {
        rx.on("affectgate/gwfull/store")
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    };
    let st = status(&rx);
    assert_eq!(
        st.first().map(|v| v["state"].clone()),
        Some("ok".into()),
        "{st:?}"
    );
    let last = st.last().unwrap();
    assert_eq!(
        (last["state"].as_str(), last["problem"].as_bool()),
        (Some("write_failing"), Some(true)),
        "{st:?}"
    );
    // Space returns: the store opens and holds every announced window.
    fs.resize("64m");
    let store = Store::open(&store_dir, Retention::KEEP_ALL).expect("store reopens");
    let stored: std::collections::BTreeSet<i64> = store
        .range("polar", i64::MIN, i64::MAX)
        .filter_map(|r| r.ok())
        .map(|r| r.window.start_ns / 1_000_000)
        .collect();
    drop(store);
    let missing: Vec<u64> = announced
        .iter()
        .filter(|s| !stored.contains(&s.window_start_ms))
        .map(|s| s.window)
        .collect();
    eprintln!(
        "{} windows announced, {} stored, announced but not stored: {missing:?}",
        announced.len(),
        stored.len()
    );
    assert!(missing.is_empty(), "announced but not stored: {missing:?}");
    assert!(
        stored.len() < 1000,
        "a 2 MiB store holding {} windows never filled",
        stored.len()
    );
    let errors = rx.on("affectgate/gwfull/error");
    assert!(
        errors
            .iter()
            .any(|m| String::from_utf8_lossy(&m.payload).contains("cannot be written")),
        "the full disk was not said on the error topic: {errors:?}"
    );
    // Restarted with room, it stores and announces again, and says the problem is over.
    let before = announced.len();
    let report = GatewayBuilder::new(cfg)
        .run(async {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(60)
                && rx.on("affectgate/gwfull/polar/state").len() < before + 5
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap();
    assert_eq!(report.store_problem, None);
    assert!(rx.on("affectgate/gwfull/polar/state").len() >= before + 5);
    let st = status(&rx);
    assert_eq!(
        st.last()
            .map(|v| (v["state"].clone(), v["problem"].clone())),
        Some(("ok".into(), false.into())),
        "{st:?}"
    );
}

/// A damaged store no longer keeps the gateway down (it refused to start until a person moved
/// the folder): the gateway moves it aside (kept, byte for byte), starts an empty store,
/// scores and announces as usual, says so on the error topic and the retained store topic,
/// and salvages the damaged copy's windows into the new store in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_moved_aside_and_salvaged_while_the_gateway_runs() {
    let Some(file) = polar_file() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut cfg = config_for(broker.port, &store_dir, &file, false, "gwdmg");
    cfg.mqtt.discovery = false;
    GatewayBuilder::new(cfg.clone())
        .run(std::future::pending::<()>())
        .await
        .unwrap();
    let first: Vec<affectgate::store::StoredWindow> = {
        let s = Store::open(&store_dir, Retention::KEEP_ALL).unwrap();
        s.range("polar", i64::MIN, i64::MAX)
            .map(|w| w.unwrap())
            .collect()
    };
    assert!(first.len() > 50, "{}", first.len());
    // sled refuses a store whose configuration record is garbage.
    std::fs::write(store_dir.join("conf"), b"\xff\xfe not sled's configuration").unwrap();
    assert!(matches!(
        Store::open(&store_dir, Retention::KEEP_ALL),
        Err(affectgate::store::StoreError::Damaged { .. })
    ));

    let rx = Recorder::start(broker.port, &["affectgate/gwdmg/#"]).await;
    cfg.sensors = vec![replay_sensor("polar2", &file, true)];
    let report = GatewayBuilder::new(cfg)
        .run(async {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(90)
                && !rx.on("affectgate/gwdmg/store").iter().any(|m| {
                    serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .is_ok_and(|v| v.get("salvaged").is_some())
                })
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap();
    assert_eq!(report.store_problem, None);
    assert!(
        !rx.on("affectgate/gwdmg/polar2/state").is_empty(),
        "nothing announced"
    );
    let status: Vec<serde_json::Value> = rx
        .on("affectgate/gwdmg/store")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let last = status.last().expect("a store status");
    assert_eq!(last["state"], "recovered", "{status:?}");
    assert_eq!(last["problem"], true);
    assert_eq!(
        last["salvaged"].as_u64(),
        Some(first.len() as u64),
        "{status:?}"
    );
    let moved = std::path::PathBuf::from(last["moved_to"].as_str().unwrap());
    assert!(moved
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("store.damaged-"));
    assert_eq!(
        std::fs::read(moved.join("conf")).unwrap(),
        b"\xff\xfe not sled's configuration"
    );
    let errors = rx.on("affectgate/gwdmg/error");
    assert!(
        errors
            .iter()
            .any(|m| String::from_utf8_lossy(&m.payload).contains("moved to")),
        "{errors:?}"
    );
    // The new store holds the salvaged windows, exactly, beside this run's.
    let s = Store::open(&store_dir, Retention::KEEP_ALL).unwrap();
    let salvaged: Vec<_> = s
        .range("polar", i64::MIN, i64::MAX)
        .map(|w| w.unwrap())
        .collect();
    assert_eq!(salvaged.len(), first.len());
    for (a, b) in salvaged.iter().zip(&first) {
        let strip = |w: &affectgate::store::StoredWindow| {
            let mut w = w.clone();
            w.window.samples.clear();
            w
        };
        assert_eq!(strip(a), strip(b));
        assert_eq!(
            a.window.samples, b.window.samples,
            "samples of window {}",
            a.window.index
        );
    }
    assert!(s.range("polar2", i64::MIN, i64::MAX).count() > 0);
}
