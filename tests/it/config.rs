//! plugin.toml: the shipped file is valid, and bad configs fail at load with the key at fault.

use std::path::Path;

use affectgate::config::{Config, ConfigError, SourceConfig};

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin.toml")).unwrap()
}

fn err(text: &str) -> String {
    Config::parse(text, Path::new("test.toml"))
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn shipped_plugin_toml_is_valid() {
    let cfg = Config::parse(&shipped(), Path::new("plugin.toml")).unwrap();
    assert_eq!(cfg.plugin.name, "affectgate");
    assert_eq!(cfg.plugin.config_schema, 1);
    assert_eq!(cfg.sensors.len(), 3);
    let hr: Vec<f64> = cfg
        .sensors
        .iter()
        .map(|s| match &s.source {
            SourceConfig::Synthetic { ecg } => ecg.hr_bpm,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(hr, vec![62.0, 75.0, 80.0]);
    assert_eq!(cfg.dsp.filter.notch_hz, Some(50.0));
    assert!(cfg
        .plugin
        .publishes
        .contains(&"affectgate/{gateway}/{sensor}/state".to_string()));
    assert_eq!(
        cfg.model.path,
        Path::new("models/affectgate-arousal-v2.onnx")
    );
}

#[test]
fn unknown_key_is_rejected_with_its_name_and_line() {
    let text = shipped().replace("keep_alive_s = 30", "keep_alive_s = 30\nkeepalive = 5");
    let e = err(&text);
    assert!(e.contains("test.toml") && e.contains("keepalive"), "{e}");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn wrong_type_is_rejected() {
    let e = err(&shipped().replace("port = 1883", "port = \"1883\""));
    assert!(e.contains("port") || e.contains("1883"), "{e}");
    let e = err(&shipped().replace("port = 1883", "port = 70000"));
    assert!(e.contains("70000") || e.contains("port"), "{e}");
}

#[test]
fn notch_above_a_sensors_nyquist_is_rejected() {
    // a 100 Hz synthetic sensor has Nyquist 50 Hz: a 60 Hz notch cannot work there
    let text = shipped()
        .replace("notch_hz = 50.0", "notch_hz = 60.0")
        .replace(
            "hr_bpm = 62, hrv_sdnn_ms = 70, seed = 1",
            "hr_bpm = 62, fs_hz = 100, seed = 1",
        );
    let e = err(&text);
    assert!(
        e.contains("notch_hz") && e.contains("calm") && e.contains("100"),
        "{e}"
    );
}

#[test]
fn ids_must_be_topic_safe_and_unique() {
    let e = err(&shipped().replace("id = \"steady\"", "id = \"st eady/#\""));
    assert!(e.contains("sensors[1].id"), "{e}");
    let e = err(&shipped().replace("id = \"steady\"", "id = \"calm\""));
    assert!(e.contains("sensors[1].id") && e.contains("already"), "{e}");
    let e = err(&shipped().replace("id = \"affectgate\"", "id = \"\""));
    assert!(e.contains("gateway.id"), "{e}");
}

#[test]
fn impossible_values_name_the_key() {
    let e = err(&shipped().replace("hr_bpm = 80", "hr_bpm = 400"));
    assert!(
        e.contains("sensors[2].source") && e.contains("hr_bpm"),
        "{e}"
    );
    let e = err(&shipped().replace("config_schema = 1", "config_schema = 9"));
    assert!(e.contains("plugin.config_schema"), "{e}");
    let e = err(&shipped().replace("max_age_days = 90", "max_age_days = 0"));
    assert!(e.contains("store.max_age_days"), "{e}");
    let e = err(&shipped().replace("backend = \"tract\"", "backend = \"cuda\""));
    assert!(e.contains("cuda") || e.contains("backend"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    match Config::load(Path::new("/nonexistent/plugin.toml")) {
        Err(ConfigError::Io { path, .. }) => assert!(path.ends_with("plugin.toml")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cli_config_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["config", "check"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (gateway affectgate, 3 sensors"));
}

/// `config check` checks what `run` checks before connecting; it used to say "ok" for each
/// of these.
#[test]
fn cli_config_check_catches_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = repo.join("models/affectgate-arousal-v2.onnx");
    let base = shipped().replace(
        "path = \"models/affectgate-arousal-v2.onnx\"",
        &format!("path = {:?}", model.display().to_string()),
    );
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing model",
            base.replace(&model.display().to_string(), "/nonexistent/m.onnx"),
            "m.onnx",
        ),
        (
            "directory as model",
            base.replace(
                &model.display().to_string(),
                &dir.path().display().to_string(),
            ),
            "model.path",
        ),
        (
            "missing TLS CA",
            base.replace(
                "# [mqtt.tls]",
                "[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n#",
            ),
            "ca.pem",
        ),
        (
            "store path is a file",
            base.replace(
                "path = \"affectgate-store\"",
                &format!("path = {:?}", a_file.display().to_string()),
            ),
            "is a file",
        ),
        (
            "keep-alive 0",
            base.replace("keep_alive_s = 30", "keep_alive_s = 0"),
            "mqtt.keep_alive_s",
        ),
        (
            "keep-alive 70000",
            base.replace("keep_alive_s = 30", "keep_alive_s = 70000"),
            "mqtt.keep_alive_s",
        ),
        (
            "absurd max age",
            base.replace("max_age_days = 90", "max_age_days = 1e9"),
            "store.max_age_days",
        ),
    ];
    for (what, text, needle) in cases {
        assert_ne!(text, base, "{what}: the replacement did not apply");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_affectgate"))
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: said ok");
        assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    }
}

#[test]
fn ble_sensors_parse_and_bad_ones_name_the_key() {
    let ble = |src: &str| {
        shipped().replace(
            "source = { kind = \"synthetic\", hr_bpm = 62, hrv_sdnn_ms = 70, seed = 1 }",
            &format!("source = {{ kind = \"ble\", {src} }}"),
        )
    };
    let cfg = Config::parse(
        &ble("profile = \"polar_pmd\", name = \"Polar H10 *\", watchdog_s = 8"),
        Path::new("test.toml"),
    )
    .unwrap();
    match &cfg.sensors[0].source {
        SourceConfig::Ble { ble } => {
            assert_eq!(ble.watchdog_s, 8.0);
            assert_eq!(ble.start_timeout_s, 35.0);
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = err(&ble("profile = \"polar_pmd\", address = \"A0:9E:1A\""));
    assert!(
        e.contains("sensors[0].source") && e.contains("six hex pairs"),
        "{e}"
    );
    let e = err(&ble("profile = \"polar_pmd\", name = \"x\", watchdog = 3"));
    assert!(e.contains("watchdog"), "{e}");
    let e = err(&ble("profile = \"pmd\", name = \"x\""));
    assert!(e.contains("pmd") && e.contains("polar_pmd"), "{e}");
    // A generic board's rate is checked against the filters: notch 50 Hz needs fs > 100 Hz.
    let e = err(&ble("profile = \"gatt_ecg\", name = \"x\", gatt = { service_uuid = \"180d\", characteristic_uuid = \"2a37\", format = \"i16le\", fs_hz = 90 }"));
    assert!(e.contains("at 90 Hz"), "{e}");
}

/// The Debian package's config (`packaging/affectgate.toml`) is the shipped `plugin.toml` with
/// only what an installed gateway needs changed: one Polar H10 by name, the broker on
/// localhost, the installed model, the state directory. Everything else (preprocessing,
/// retention, retraining, fleet defaults) is identical, so the two cannot drift apart.
#[test]
fn the_packaged_config_is_the_shipped_one_with_installed_paths() {
    let read = |p: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(crate::util::repo().join(p)).unwrap()).unwrap()
    };
    let (mut shipped, mut packaged) = (read("plugin.toml"), read("packaging/affectgate.toml"));
    let get = |t: &toml::Table, path: &str| -> toml::Value {
        let mut v = toml::Value::Table(t.clone());
        for k in path.split('.') {
            v = v[k].clone();
        }
        v
    };
    for (key, want) in [
        (
            "model.path",
            "/usr/share/affectgate/models/affectgate-arousal-v2.onnx",
        ),
        ("store.path", "/var/lib/affectgate/store"),
        ("mqtt.host", "localhost"),
        ("retrain.models_dir", "/var/lib/affectgate/models-local"),
    ] {
        assert_eq!(get(&packaged, key).as_str(), Some(want), "{key}");
    }
    let sensors = packaged["sensors"].as_array().unwrap();
    assert_eq!(sensors.len(), 1);
    assert_eq!(sensors[0]["source"]["kind"].as_str(), Some("ble"));
    assert_eq!(sensors[0]["source"]["name"].as_str(), Some("Polar H10 *"));
    for t in [&mut shipped, &mut packaged] {
        t.remove("sensors");
        t["model"].as_table_mut().unwrap().remove("path");
        t["store"].as_table_mut().unwrap().remove("path");
        t["mqtt"].as_table_mut().unwrap().remove("host");
        t["retrain"].as_table_mut().unwrap().remove("models_dir");
    }
    assert_eq!(shipped, packaged, "everything else as shipped");
    // And it is a valid configuration (paths aside, which only exist once installed).
    let text =
        std::fs::read_to_string(crate::util::repo().join("packaging/affectgate.toml")).unwrap();
    affectgate::config::Config::parse(&text, std::path::Path::new("affectgate.toml")).unwrap();
}

/// `systemctl reload` sends SIGHUP: a configuration that does not validate is refused and the
/// gateway keeps running the old one; a valid one replaces it (here: another sensor id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_configuration_and_refuses_a_broken_one() {
    let Some(mq) = crate::util::Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::util::gateway_config("gwhup", mq.port, &dir.path().join("store"));
    cfg.mqtt.discovery = false;
    cfg.dsp.hop = 256;
    cfg.sensors.truncate(1);
    cfg.sensors[0].id = "first".into();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let rec = crate::util::Recorder::start(mq.port, &["affectgate/gwhup/+/state"]).await;
    let log = dir.path().join("gw.log");
    let mut gw = std::process::Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let hup = |pid: u32| unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    };
    let on = |m: &[crate::util::Msg], sensor: &str| {
        m.iter()
            .filter(|x| x.topic == format!("affectgate/gwhup/{sensor}/state"))
            .count()
    };
    assert!(
        rec.wait_for(std::time::Duration::from_secs(60), |m| on(m, "first") > 0)
            .await
    );
    // A broken file: refused, the gateway keeps publishing for "first".
    std::fs::write(&path, "[gateway\nid = ").unwrap();
    hup(gw.id());
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let before = on(&rec.messages(), "first");
    assert!(
        rec.wait_for(std::time::Duration::from_secs(30), |m| on(m, "first")
            > before + 1)
            .await,
        "still scoring after a refused reload"
    );
    assert!(gw.try_wait().unwrap().is_none(), "still running");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("SIGHUP: not reloading, the gateway keeps its running configuration"),
        "{text}"
    );
    // A valid file with another sensor: reloaded.
    cfg.sensors[0].id = "second".into();
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    hup(gw.id());
    assert!(
        rec.wait_for(std::time::Duration::from_secs(60), |m| on(m, "second") > 0)
            .await,
        "the reloaded sensor publishes"
    );
    unsafe {
        libc::kill(gw.id() as libc::pid_t, libc::SIGTERM);
    }
    assert_eq!(gw.wait().unwrap().code(), Some(0));
}
