//! `affectgate doctor` against real components: a working setup passes every check; a missing
//! broker, wrong credentials, a missing model, an unwritable store and an unreachable fleet
//! repository each fail with their fix, and the exit status says so. (The Bluetooth checks
//! run against the simulated BlueZ in `ble.rs`.)

use std::path::Path;
use std::process::Command;

use affectgate::config::{Config, FleetConfig};

use crate::util::Mosquitto;

fn doctor(cfg: &Config, dir: &Path) -> (i32, String) {
    let path = dir.join("doctor.toml");
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["doctor", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn doctor_passes_a_working_setup_and_names_each_failure_with_its_fix() {
    let Some(bin) = crate::util::mosquitto_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = crate::util::free_port();
    let _broker = Mosquitto::start_on(&bin, port);
    let cfg = crate::util::gateway_config("doc", port, &d.join("store"));
    let (code, out) = doctor(&cfg, d);
    assert_eq!(code, 0, "{out}");
    for line in [
        "ok    config:",
        "ok    clock:",
        "ok    store:",
        "ok    model: affectgate-arousal-v2@",
        &format!("ok    broker: connected to 127.0.0.1:{port}"),
        "skip  bluetooth: no BLE sensor configured",
        "skip  fleet:",
        "all checks passed",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }

    // Everything wrong at once: each check says what and how to fix it.
    let mut bad = cfg.clone();
    bad.mqtt.port = crate::util::free_port();
    bad.model.path = d.join("missing.onnx");
    std::fs::write(d.join("a-file"), b"").unwrap();
    bad.store.path = d.join("a-file/store");
    bad.fleet = FleetConfig {
        enabled: true,
        repository: d.join("no-repo").display().to_string(),
        root: d.join("root.json"),
        ..FleetConfig::default()
    };
    std::fs::write(d.join("root.json"), b"{}").unwrap();
    let (code, out) = doctor(&bad, d);
    assert_eq!(code, 1, "{out}");
    let fail = |out: &str, name: &str, what: &str, fix: &str| {
        let at = out
            .find(&format!("FAIL  {name}: "))
            .unwrap_or_else(|| panic!("FAIL {name} in:\n{out}"));
        let block: String = out[at..].lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(block.contains(what), "{name}: {what:?} in {block}");
        let fix_line = block.lines().nth(1).unwrap_or_default();
        assert!(
            fix_line.trim_start().starts_with("fix: ") && fix_line.contains(fix),
            "{name}: fix {fix:?} in {block}"
        );
    };
    fail(
        &out,
        "broker",
        &format!("nothing listens on 127.0.0.1:{}", bad.mqtt.port),
        "is the broker running",
    );
    fail(
        &out,
        "model",
        "missing.onnx",
        "reinstall the package's model",
    );
    fail(
        &out,
        "store",
        "a-file/store",
        "writable by the gateway's user",
    );
    fail(&out, "fleet", "no-repo", "check fleet.repository");
    assert!(out.contains("error: 4 check(s) failed"), "{out}");

    // Wrong credentials on a password-protected broker.
    use std::os::unix::fs::PermissionsExt;
    let pw = d.join("passwd");
    assert!(Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["gateway", "right-Pa55"])
        .status()
        .unwrap()
        .success());
    for p in [d, pw.as_path()] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let auth_port = crate::util::free_port();
    let _auth = Mosquitto::start_conf(
        &bin,
        auth_port,
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    );
    let mut creds = cfg.clone();
    creds.mqtt.port = auth_port;
    creds.mqtt.username = Some("gateway".into());
    creds.mqtt.password = Some("wrong".into());
    let (code, out) = doctor(&creds, d);
    assert_eq!(code, 1, "{out}");
    fail(
        &out,
        "broker",
        &format!("127.0.0.1:{auth_port} refused the credentials"),
        "check mqtt.username/mqtt.password",
    );
    creds.mqtt.password = Some("right-Pa55".into());
    let (code, out) = doctor(&creds, d);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("with credentials"), "{out}");
}
