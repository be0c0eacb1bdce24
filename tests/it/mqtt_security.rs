//! Broker security against a real Mosquitto: username/password, TLS with a private CA and a
//! client certificate; wrong credentials never connect, and no secret reaches the logs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{shared_data, Mosquitto};
use affectgate::config::{Config, MqttTls};
use affectgate::gateway::GatewayBuilder;

fn config(port: u16, dir: &Path, gw: &str) -> Option<Config> {
    let file = shared_data()?.join("polar-h10/polar_h10_ecg.csv");
    let mut cfg = crate::util::gateway_config(gw, port, &dir.join(format!("store-{gw}")));
    cfg.mqtt.discovery = false;
    cfg.sensors = vec![crate::util::replay_sensor("polar", &file, false)];
    Some(cfg)
}

fn open_perms(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Mosquitto started as root reads its files as the `mosquitto` user.
    let mode = if p.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_broker_accepts_only_the_right_credentials() {
    let Some(bin) = crate::util::mosquitto_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    open_perms(dir.path());
    let pw = dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["gateway", "s3cret-Pa55"])
        .status()
        .unwrap();
    assert!(st.success());
    open_perms(&pw);
    let port = crate::util::free_port();
    let _b = Mosquitto::start_conf(
        &bin,
        port,
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    );
    let Some(mut cfg) = config(port, dir.path(), "auth") else {
        return;
    };
    cfg.mqtt.username = Some("gateway".into());
    cfg.mqtt.password = Some("s3cret-Pa55".into());
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "Debug must redact the password"
    );

    // The read side (`mqtt::subscribe_states`, used by the demo) uses the same credentials.
    let (mut states, sub) = affectgate::mqtt::subscribe_states(&cfg.mqtt, None, "auth", "sub-auth");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    assert!(
        r.mqtt.all_acked && r.mqtt.delivered == r.published,
        "{:?}",
        r.mqtt
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = 0u64;
    while let Ok((m, _)) = states.try_recv() {
        assert_eq!(m.expect("valid state JSON").sensor, "polar");
        got += 1;
    }
    assert_eq!(got, r.published);
    sub.abort();

    // Wrong password, as the real binary with debug logging: nothing delivered, the
    // messages stay in the outbox, and the password appears nowhere in the output.
    cfg.mqtt.password = Some("wrong-Pa55-xyz".into());
    cfg.gateway.id = "auth2".into();
    cfg.store.path = dir.path().join("store-auth2");
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, toml::to_string(&cfg).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .env("RUST_LOG", "debug")
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains("wrong-Pa55-xyz"),
        "password leaked into the output"
    );
    assert!(all.contains("0 delivered"), "{all}");
    let store =
        affectgate::store::Store::open(&cfg.store.path, affectgate::store::Retention::KEEP_ALL)
            .unwrap();
    assert_eq!(store.outbox(1000).unwrap().len() as u64, r.published);
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)");
    assert!(st.success(), "openssl {args:?}");
}

/// CA, server certificate for 127.0.0.1, and a client certificate, all in `dir`.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=affectgate-test-ca",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
    for f in std::fs::read_dir(dir).unwrap() {
        open_perms(&f.unwrap().path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate_delivers_and_a_wrong_ca_does_not() {
    let Some(bin) = crate::util::mosquitto_bin() else {
        return;
    };
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("AFFECTGATE_REQUIRE_MOSQUITTO").is_err(),
            "openssl missing in CI"
        );
        eprintln!("SKIP: openssl not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    open_perms(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    open_perms(&pki);
    make_pki(&pki);
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    open_perms(&other);
    make_pki(&other);

    let port = crate::util::free_port();
    let _b = Mosquitto::start_conf(
        &bin,
        port,
        &format!(
            "allow_anonymous true\ncafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\nrequire_certificate true\n",
            p = pki.display()
        ),
    );
    // Delivery is checked through the broker's acknowledgements (QoS 1 PUBACK per message).
    let Some(mut cfg) = config(port, dir.path(), "tls") else {
        return;
    };
    cfg.mqtt.tls = Some(MqttTls {
        ca_file: pki.join("ca.pem"),
        client_cert: Some(pki.join("client.pem")),
        client_key: Some(pki.join("client.key")),
    });
    let r = GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    assert!(r.published > 50);
    assert!(r.mqtt.all_acked, "{:?}", r.mqtt);
    assert_eq!(r.mqtt.delivered, r.published, "{:?}", r.mqtt);

    // A CA that did not sign the broker's certificate: no connection, nothing delivered.
    cfg.gateway.id = "tls2".into();
    cfg.store.path = dir.path().join("store-tls2");
    cfg.mqtt.tls = Some(MqttTls {
        ca_file: other.join("ca.pem"),
        client_cert: Some(other.join("client.pem")),
        client_key: Some(other.join("client.key")),
    });
    let r = GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    assert_eq!(r.mqtt.connects, 0, "{:?}", r.mqtt);
    assert_eq!(r.mqtt.pending, r.published);

    // A missing TLS file fails the start naming the key and the file.
    cfg.mqtt.tls = Some(MqttTls {
        ca_file: dir.path().join("nope.pem"),
        client_cert: None,
        client_key: None,
    });
    cfg.store.path = dir.path().join("store-tls3");
    let err = GatewayBuilder::new(cfg)
        .run(std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mqtt.tls.ca_file") && err.contains("nope.pem"),
        "{err}"
    );
    assert!(!dir.path().join("store-tls3").exists());
}
