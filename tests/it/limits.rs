//! The gateway at the edges of its configuration, through the real binary and a real
//! Mosquitto: sensors that all fail for good, more sensors than one gateway serves, and the
//! memory a run may hold per sensor.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use affectgate::config::{Config, SensorConfig, SourceConfig};
use affectgate::source::ble::BleConfig;

use crate::util::{gateway_config, replay_sensor, Mosquitto, Recorder};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_affectgate")
}

fn write_config(cfg: &Config, path: &Path) {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
}

/// Wait for `child` to exit; after `limit` it is killed and the test fails with `what`.
/// (A generous limit that only detects a hang, not a measure of speed.)
fn wait_or_kill(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match done.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let out = done.recv().ok().and_then(|o| o.ok());
            panic!(
                "{what} (killed after {limit:?})\n{}",
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
    }
}

fn ble_sensor(id: &str, ble: &str) -> SensorConfig {
    SensorConfig {
        id: id.into(),
        source: SourceConfig::Ble {
            ble: toml::from_str::<BleConfig>(ble).expect("ble config"),
        },
    }
}

/// Every configured sensor fails for good: a recording that does not exist and a strap on a
/// machine without BlueZ. Before, the BLE sensor retried for ever and the gateway stayed up
/// doing nothing (`online`, no data, exit only by a signal). Now each failure is said on the
/// error topic when it happens, then that nothing can produce data; the gateway stops in
/// order (store flushed, `offline` published) and exits 1 naming both sensors, why, and what
/// to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_sensors_all_failed_stops_non_zero_saying_what_to_fix() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut cfg = gateway_config("gwf", broker.port, &store);
    cfg.mqtt.discovery = false;
    let recording = dir.path().join("no-such-recording.csv");
    cfg.sensors = vec![
        replay_sensor("gone", &recording, false),
        ble_sensor(
            "strap",
            "profile = \"polar_pmd\"\naddress = \"A0:9E:1A:12:34:56\"\nbackoff_initial_s = 0.1\nbackoff_max_s = 0.2",
        ),
    ];
    let cfg_path = dir.path().join("gw.toml");
    write_config(&cfg, &cfg_path);
    let rx = Recorder::start(broker.port, &["affectgate/gwf/#"]).await;

    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(
        child,
        Duration::from_secs(120),
        "the gateway kept running with every sensor failed",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "every configured sensor failed",
        "gone: sensor gone:",
        "no-such-recording.csv",
        "strap: sensor strap:",
        "cannot reach BlueZ",
        "gave up",
        "Fix what each line names",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }

    // Said on the error topic: each sensor, then that nothing can produce data.
    assert!(
        rx.wait_for(Duration::from_secs(10), |m| m.iter().any(|m| m.topic
            == "affectgate/gwf/status"
            && m.payload == b"offline"))
            .await,
        "no `offline` status"
    );
    let errors: Vec<String> = rx
        .on("affectgate/gwf/error")
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            v["error"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("sensor gone:") && e.contains("no-such-recording.csv")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("sensor strap:") && e.contains("cannot reach BlueZ")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("every configured sensor has failed (2)")),
        "{errors:#?}"
    );
    // `offline` is the last word on the status topic, after the errors.
    let status = rx.on("affectgate/gwf/status");
    assert_eq!(status.last().unwrap().payload, b"offline");
    // The store was closed in order: it opens again.
    affectgate::store::Store::open(&store, affectgate::store::Retention::KEEP_ALL)
        .expect("store reopens");
}

/// A config with more sensors than one gateway serves is refused before anything starts,
/// naming the key, the limit and what to do. (10 000 sensors used to start: 70 000
/// discovery messages, 2 GiB RSS, and SIGTERM not honoured for more than four minutes.)
#[test]
fn ten_thousand_sensors_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = gateway_config("gwmany", 1883, &dir.path().join("store"));
    let file = dir.path().join("r.csv");
    cfg.sensors = (0..10_000)
        .map(|i| replay_sensor(&format!("s{i}"), &file, false))
        .collect();
    let cfg_path = dir.path().join("gw.toml");
    write_config(&cfg, &cfg_path);
    for cmd in [&["config", "check"][..], &["run", "--config"][..]] {
        let out = Command::new(bin())
            .args(cmd)
            .arg(&cfg_path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains("sensors = [10000 tables]")
                && err.contains(&format!(
                    "at most {} sensors per gateway",
                    affectgate::config::MAX_SENSORS
                ))
                && err.contains("run more gateways"),
            "{cmd:?}: {err}"
        );
        assert!(!dir.path().join("store").exists(), "nothing started");
    }
    // The limit itself is accepted.
    cfg.sensors.truncate(affectgate::config::MAX_SENSORS);
    write_config(&cfg, &cfg_path);
    Config::load(&cfg_path).expect("MAX_SENSORS sensors are a valid config");
}

/// SIGTERM with the most sensors a config may hold, all replaying as fast as the gateway
/// takes them, so the scorer is saturated and a window waits in front of it for almost every
/// sensor, with 7 × MAX_SENSORS discovery messages announced: the gateway exits 0, its last
/// word on the status topic is `offline` (it used to queue behind the announcements and miss
/// its deadline), and every window it announced is in the store. The limit only detects a
/// hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_most_sensors_stops_cleanly() {
    let Some(data) = crate::util::shared_data() else {
        return;
    };
    let file = data.join("polar-h10/polar_h10_ecg.csv");
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut cfg = gateway_config("gwmax", broker.port, &store_dir);
    assert!(cfg.mqtt.discovery, "the shipped config announces discovery");
    let n = affectgate::config::MAX_SENSORS;
    cfg.sensors = (0..n)
        .map(|i| replay_sensor(&format!("s{i}"), &file, true))
        .collect();
    let cfg_path = dir.path().join("gw.toml");
    write_config(&cfg, &cfg_path);
    let rx = Recorder::start(broker.port, &["affectgate/gwmax/#"]).await;

    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let states = |m: &[crate::util::Msg]| {
        m.iter()
            .filter(|m| m.topic.starts_with("affectgate/gwmax/") && m.topic.ends_with("/state"))
            .count()
    };
    let running = rx
        .wait_for(Duration::from_secs(180), |m| states(m) >= 2 * n)
        .await;
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = wait_or_kill(
        child,
        Duration::from_secs(180),
        "the gateway did not stop after SIGTERM",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(running, "fewer than {} states before SIGTERM\n{err}", 2 * n);
    assert!(out.status.success(), "exit {:?}\n{err}", out.status);
    assert!(
        rx.wait_for(Duration::from_secs(10), |m| m
            .iter()
            .rfind(|m| m.topic == "affectgate/gwmax/status")
            .is_some_and(|m| m.payload == b"offline"))
            .await,
        "`offline` is not the last status\n{err}"
    );
    // Stored before announced, also for windows passed on unscored during the stop.
    let store =
        affectgate::store::Store::open(&store_dir, affectgate::store::Retention::KEEP_ALL).unwrap();
    let mut missing = Vec::new();
    for m in rx.messages() {
        if !(m.topic.starts_with("affectgate/gwmax/") && m.topic.ends_with("/state")) {
            continue;
        }
        let s: affectgate::mqtt::StateMessage = serde_json::from_slice(&m.payload).unwrap();
        let start_ns = s.window_start_ms * 1_000_000;
        let found = store
            .range(&s.sensor, start_ns - 1_000_000, start_ns + 1_000_000)
            .filter_map(|r| r.ok())
            .any(|w| w.window.start_ns.div_euclid(1_000_000) == s.window_start_ms);
        if !found {
            missing.push((s.sensor, s.window));
        }
    }
    assert!(missing.is_empty(), "announced but not stored: {missing:?}");
}
