//! Fleet releases end to end.
//!
//! * The fleet crate (`fleet/`, a workspace of its own: see the root Cargo.toml) is built and
//!   tested by its own cargo, in `<target>/fleet`, so `cargo test --release` covers it too;
//!   each of its tests is checked by name so a filter or an empty run cannot pass silently.
//! * Five `affectgate run` processes (real ECG replayed in real time, a window a second), a
//!   real Mosquitto, a static HTTP server that cuts every release download half-way
//!   (`tests/fleet_http.py`), releases packed by `affectgate model release` and signed by the
//!   `affectgate-fleet` binary: canary → waves → all, an offline gateway catching up, a
//!   failing canary halting the rollout, a fleet-wide rollback, refusals at every gateway,
//!   and a root key rotation.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use affectgate::config::{FleetConfig, SensorConfig, SourceConfig};
use affectgate::fleet::plan::{GatewayStatus, RolloutPlan};
use affectgate::mqtt::StateMessage;

use crate::util::{Msg, Recorder};

fn fleet_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::util::repo().join("target"))
        .join("fleet")
}

/// The `affectgate-fleet` binary, built once per test process (cargo's own lock orders this
/// build and the crate's test run below).
fn fleet_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("nice")
            .args(["-n", "19"])
            .arg(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-j",
                "1",
                "--bin",
                "affectgate-fleet",
                "--manifest-path",
            ])
            .arg(crate::util::repo().join("fleet/Cargo.toml"))
            .env("CARGO_TARGET_DIR", fleet_target())
            .output()
            .expect("running cargo");
        assert!(
            out.status.success(),
            "building affectgate-fleet failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fleet_target().join("release/affectgate-fleet")
    })
    .clone()
}

#[test]
fn the_fleet_crate_builds_and_its_tests_pass() {
    let repo = crate::util::repo();
    let target = fleet_target();
    // At the lowest priority and one job: the other integration tests run beside it, and
    // some of them (broker restarts) are sensitive to a machine saturated by a build.
    let out = Command::new("nice")
        .args(["-n", "19"])
        .arg(env!("CARGO"))
        .args(["test", "--release", "-j", "1", "--manifest-path"])
        .arg(repo.join("fleet/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("running cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fleet tests failed:\n{text}");
    for name in [
        "a_release_reads_back_byte_for_byte_through_tuf",
        "a_tampered_artifact_is_refused",
        "a_repository_signed_by_other_keys_is_refused",
        "expired_metadata_is_refused",
        "older_metadata_after_newer_is_a_rollback_and_refused",
        "a_release_over_http_reads_back_and_tampering_is_refused",
        "refresh_resigns_an_expired_timestamp_with_the_online_keys_only",
        "root_rotation_is_followed_from_the_pinned_root_and_a_forged_one_refused",
        "a_release_is_fetched_whole_or_not_at_all",
        "a_release_needs_a_manifest_with_a_higher_version_and_rollback_republishes",
        "renew_extends_targets_and_snapshot_without_a_release_or_the_root_key",
        "failures_at_the_threshold_halt_the_retained_plan",
    ] {
        assert!(
            text.contains(&format!("{name} ... ok")),
            "{name} did not pass:\n{text}"
        );
    }
}

/// Run a command; its stdout, or a panic with both streams.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawning");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn fleet(args: &[&str]) -> String {
    ok(Command::new(fleet_bin()).args(args))
}

/// The static HTTP server over the repository, killed on drop.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(root: &Path, log: &Path) -> Server {
        let mut child = Command::new("python3")
            .arg(crate::util::repo().join("tests/fleet_http.py"))
            .arg(root)
            .arg("--log")
            .arg(log)
            .arg("--cut")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 tests/fleet_http.py");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().expect("server port");
        Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `affectgate run` process.
struct Gateway {
    id: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    fn new(id: &str, dir: &Path, port: u16, repo_url: &str, root: &Path, ecg: &Path) -> Gateway {
        let dir = dir.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = crate::util::gateway_config(id, port, &dir.join("store"));
        cfg.sensors = vec![SensorConfig {
            id: "chest".into(),
            source: SourceConfig::Replay {
                path: ecg.to_path_buf(),
                signal: None,
                realtime: true,
                looped: true,
            },
        }];
        // A window a second, so health windows fill quickly.
        cfg.dsp.hop = 256;
        cfg.retrain.enabled = false;
        cfg.retrain.models_dir = dir.join("models-local");
        cfg.fleet = FleetConfig {
            enabled: true,
            repository: repo_url.into(),
            root: root.to_path_buf(),
            health_windows: 3,
            health_timeout_s: 60,
            ..FleetConfig::default()
        };
        let config = dir.join("gw.toml");
        std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
        affectgate::config::Config::load(&config).expect("written config validates");
        Gateway {
            id: id.into(),
            config,
            log: dir.join("gw.log"),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_affectgate"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "warn,affectgate=info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("affectgate run"),
        );
    }

    /// SIGTERM and wait; the exit code.
    fn stop(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return 0;
        };
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        c.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every status `gw` reported, in order.
fn statuses(msgs: &[Msg], gw: &str) -> Vec<GatewayStatus> {
    let topic = format!("affectgate/{gw}/fleet");
    msgs.iter()
        .filter(|m| m.topic == topic && !m.payload.is_empty())
        .map(|m| serde_json::from_slice(&m.payload).expect("status JSON"))
        .collect()
}

fn last_status(msgs: &[Msg], gw: &str) -> Option<GatewayStatus> {
    statuses(msgs, gw).pop()
}

/// Has every gateway in `gws` reported `state` for `release`?
fn all_in(msgs: &[Msg], gws: &[&str], release: &str, state: &str) -> bool {
    gws.iter().all(|g| {
        last_status(msgs, g)
            .is_some_and(|s| s.target.as_deref() == Some(release) && s.state == state)
    })
}

fn states(msgs: &[Msg], gw: &str) -> Vec<StateMessage> {
    let topic = format!("affectgate/{gw}/chest/state");
    msgs.iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_slice(&m.payload).expect("state JSON"))
        .collect()
}

fn describe(rec: &Recorder, gws: &[&str]) -> String {
    let msgs = rec.messages();
    gws.iter()
        .map(|g| format!("{g}: {:?}", last_status(&msgs, g)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_roll_out_to_five_gateway_processes_and_every_refusal_holds() {
    let Some(data) = crate::util::shared_data() else {
        return;
    };
    let Some(mq) = crate::util::Mosquitto::start() else {
        return;
    };
    let ecg = data.join("polar-h10/polar_h10_ecg.csv");
    let broker = format!("127.0.0.1:{}", mq.port);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (repo, keys) = (t.join("repo"), t.join("keys"));
    let s = |p: &Path| p.display().to_string();
    fleet(&["init", "--repo", &s(&repo), "--keys", &s(&keys)]);
    // Pinned once, out of band, as an installer would.
    let pinned = t.join("pinned-root.json");
    std::fs::copy(repo.join("metadata/root.json"), &pinned).unwrap();
    let model = crate::util::repo().join("models/affectgate-arousal-v2.onnx");
    let pack = |name: &str, version: u64, extra: &[&str]| -> PathBuf {
        let out = t.join("packs").join(name);
        let v = version.to_string();
        let mut args = vec!["model", "release", "--name", name, "--version", &v];
        args.extend_from_slice(extra);
        ok(Command::new(env!("CARGO_BIN_EXE_affectgate"))
            .args(&args)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out));
        out
    };
    let publish = |dir: &Path| {
        fleet(&[
            "release",
            "--repo",
            &s(&repo),
            "--keys",
            &s(&keys),
            "--from",
            &s(dir),
        ]);
    };
    let rollout = |release: &str, canary: &str, waves: &str, delay: &str| {
        let mut a = vec!["rollout", "--broker", &broker, "--release", release];
        a.extend_from_slice(&[
            "--waves",
            waves,
            "--wave-delay",
            delay,
            "--max-failures",
            "1",
        ]);
        if !canary.is_empty() {
            a.extend_from_slice(&["--canary", canary]);
        }
        fleet(&a);
    };
    publish(&pack("arousal-v3", 3, &["--summary", "Better arousal"]));
    let server = Server::start(&repo, &t.join("http.log"));

    let rec = Recorder::start(
        mq.port,
        &[
            "affectgate/+/fleet",
            "affectgate/+/update",
            "affectgate/+/chest/state",
            "affectgate/fleet/#",
            "homeassistant/update/#",
        ],
    )
    .await;
    let ids = ["g1", "g2", "g3", "g4", "g5"];
    let mut gws: Vec<Gateway> = ids
        .iter()
        .map(|id| Gateway::new(id, t, mq.port, &server.url, &pinned, &ecg))
        .collect();
    // g5 is offline during the first rollout.
    for g in &mut gws[..4] {
        g.start();
    }
    let first4 = &ids[..4];
    assert!(
        rec.wait_for(Duration::from_secs(90), |m| first4.iter().all(|g| {
            last_status(m, g).is_some_and(|s| s.state == "idle") && !states(m, g).is_empty()
        }))
        .await,
        "gateways idle and scoring:\n{}",
        describe(&rec, first4)
    );

    // 1. Canary g1, then waves of 50 % and 100 %, 6 s apart.
    rollout("arousal-v3", "g1", "50,100", "6");
    assert!(
        rec.wait_for(Duration::from_secs(180), |m| all_in(
            m,
            first4,
            "arousal-v3",
            "succeeded"
        ))
        .await,
        "rollout of arousal-v3:\n{}",
        describe(&rec, first4)
    );
    let msgs = rec.messages();
    let plan: RolloutPlan = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "affectgate/fleet/stable/plan")
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .unwrap();
    let started = |g: &str| {
        statuses(&msgs, g)
            .into_iter()
            .find(|s| s.state == "downloading")
            .unwrap()
            .at_s
    };
    let canary_done = statuses(&msgs, "g1")
        .into_iter()
        .find(|s| s.state == "succeeded")
        .unwrap()
        .at_s;
    for g in &ids[1..4] {
        let wave = plan.wave_of(g) as u64;
        assert!(wave >= 1, "{g} is not a canary");
        assert!(
            started(g) >= plan.started_s + 6 * wave,
            "{g} (wave {wave}) started at {} before its wave ({} + {})",
            started(g),
            plan.started_s,
            6 * wave
        );
        assert!(
            statuses(&msgs, g)
                .iter()
                .any(|s| s.state == "waiting" && s.reason.as_deref().unwrap_or("").contains("wave")),
            "{g} said it waited for its wave"
        );
        assert!(started(g) >= canary_done.min(plan.started_s + 6), "{g}");
    }
    // State messages kept flowing through the swap: windows in order, none twice, scored by
    // the shipped model first and by the release after.
    for g in first4 {
        let st = states(&msgs, g);
        assert!(
            st.windows(2)
                .all(|w| w[1].window_start_ms > w[0].window_start_ms),
            "{g}: windows out of order or repeated"
        );
        assert!(
            st.first()
                .unwrap()
                .model
                .starts_with("affectgate-arousal-v2@"),
            "{g}"
        );
        assert!(st.last().unwrap().model.starts_with("arousal-v3@"), "{g}");
    }
    // Every download was cut half-way by the server, and resumed.
    let log = server.log();
    let cuts = log
        .lines()
        .filter(|l| l.starts_with("cut targets/"))
        .count();
    let resumed = log
        .lines()
        .filter(|l| l.starts_with("206 targets/"))
        .count();
    assert!(
        cuts >= 4 && resumed >= cuts,
        "cuts {cuts}, resumed {resumed}:\n{log}"
    );
    // Home Assistant's update entity: announced, and says what is installed.
    assert!(msgs
        .iter()
        .any(|m| m.topic == "homeassistant/update/affectgate_g2/model_update/config"));
    let up: serde_json::Value = serde_json::from_slice(
        &msgs
            .iter()
            .rev()
            .find(|m| m.topic == "affectgate/g2/update")
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(up["installed_version"], "arousal-v3");
    assert_eq!(up["latest_version"], "arousal-v3");
    assert_eq!(up["release_summary"], "Better arousal");
    assert_eq!(up["in_progress"], false);
    let table = fleet(&["status", "--broker", &broker]);
    assert!(table.contains("arousal-v3 — running"), "{table}");

    // 2. g5 was offline; it starts after the rollout and catches up (its wave has passed).
    gws[4].start();
    assert!(
        rec.wait_for(Duration::from_secs(90), |m| all_in(
            m,
            &["g5"],
            "arousal-v3",
            "succeeded"
        ))
        .await,
        "g5 catching up:\n{}",
        describe(&rec, &["g5"])
    );

    // 3. A release whose self-test fails (golden outputs altered after packing, then
    //    signed): the canary refuses to serve it, the operator's status halts the rollout,
    //    and no gateway of the later wave installs it.
    let bad = pack("arousal-v4", 4, &[]);
    let gp = bad.join("golden.json");
    let mut golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&gp).unwrap()).unwrap();
    let e = &mut golden["windows"][0]["expected"]["arousal"];
    *e = serde_json::json!(e.as_f64().unwrap() + 0.01);
    std::fs::write(&gp, golden.to_string()).unwrap();
    publish(&bad);
    let v4_started = now_s();
    rollout("arousal-v4", "g1", "100", "12");
    assert!(
        rec.wait_for(Duration::from_secs(60), |m| all_in(
            m,
            &["g1"],
            "arousal-v4",
            "failed"
        ))
        .await,
        "canary self-test:\n{}",
        describe(&rec, &["g1"])
    );
    let why = last_status(&rec.messages(), "g1").unwrap().reason.unwrap();
    assert!(
        why.contains("self-test of arousal-v4: golden window 0: arousal"),
        "{why}"
    );
    let table = fleet(&["status", "--broker", &broker]);
    assert!(
        table.contains("HALTED: 1 of max 1 installs failed: g1"),
        "{table}"
    );
    // Past the start of wave 1 (12 s), with a margin for a gateway's 2 s plan check.
    while now_s() < v4_started + 16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let msgs = rec.messages();
    for g in &ids[1..] {
        assert!(
            !statuses(&msgs, g)
                .iter()
                .any(|s| s.target.as_deref() == Some("arousal-v4") && s.state != "waiting"),
            "{g} started installing a halted release"
        );
        let last = last_status(&msgs, g).unwrap();
        assert!(
            last.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("rollout halted"),
            "{g}: {last:?}"
        );
    }
    for g in ids {
        let st = states(&msgs, g);
        assert!(
            st.last().unwrap().model.starts_with("arousal-v3@"),
            "{g} still serves v3"
        );
    }

    // 4. Fleet-wide rollback: arousal-v3's files again as arousal-v5 (a higher version), to
    //    every gateway at once.
    fleet(&[
        "rollback",
        "--repo",
        &s(&repo),
        "--keys",
        &s(&keys),
        "--to",
        "arousal-v3",
        "--name",
        "arousal-v5",
        "--broker",
        &broker,
    ]);
    assert!(
        rec.wait_for(Duration::from_secs(120), |m| all_in(
            m,
            &ids,
            "arousal-v5",
            "succeeded"
        ))
        .await,
        "rollback:\n{}",
        describe(&rec, &ids)
    );
    let msgs = rec.messages();
    let v3_sha = states(&msgs, "g1")
        .into_iter()
        .find(|s| s.model.starts_with("arousal-v3@"))
        .unwrap()
        .model[11..]
        .to_string();
    for g in ids {
        assert_eq!(
            states(&msgs, g).last().unwrap().model,
            format!("arousal-v5@{v3_sha}"),
            "{g} serves arousal-v3's exact model again"
        );
    }

    // 5. Refusals, each at every gateway, the serving model untouched.
    let refused = |release: &str| {
        let release = release.to_string();
        move |m: &[Msg]| {
            ids.iter().all(|g| {
                last_status(m, g)
                    .is_some_and(|s| s.target.as_deref() == Some(&release) && s.state == "refused")
            })
        }
    };
    // a) An old release re-announced: a downgrade.
    rollout("arousal-v3", "", "100", "0");
    assert!(
        rec.wait_for(Duration::from_secs(60), refused("arousal-v3"))
            .await,
        "{}",
        describe(&rec, &ids)
    );
    // b) A release for a newer gateway.
    publish(&pack("arousal-v6", 6, &["--min-gateway", "99.0.0"]));
    rollout("arousal-v6", "", "100", "0");
    assert!(
        rec.wait_for(Duration::from_secs(60), refused("arousal-v6"))
            .await,
        "{}",
        describe(&rec, &ids)
    );
    // c) A tampered artifact (one byte of the model on the server).
    publish(&pack("arousal-v7", 7, &[]));
    let target = walk(&repo.join("targets"))
        .into_iter()
        .find(|p| {
            p.display().to_string().contains("arousal-v7")
                && p.display().to_string().ends_with("model.onnx")
        })
        .expect("arousal-v7's model on the server");
    let mut bytes = std::fs::read(&target).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    rollout("arousal-v7", "", "100", "0");
    assert!(
        rec.wait_for(Duration::from_secs(60), refused("arousal-v7"))
            .await,
        "{}",
        describe(&rec, &ids)
    );
    assert_refused(
        &rec.messages(),
        &ids,
        &[
        ("arousal-v3", "downgrade refused: release arousal-v3 has version 3, not above the installed arousal-v5 (version 5)"),
        ("arousal-v6", "needs gateway 99.0.0 or newer"),
        ("arousal-v7", "arousal-v7/model.onnx"),
        ],
        "arousal-v5@",
    );

    // d) A release that is not in the signed targets (announced, never signed).
    rollout("arousal-v99", "", "100", "0");
    assert!(
        rec.wait_for(Duration::from_secs(60), refused("arousal-v99"))
            .await,
        "{}",
        describe(&rec, &ids)
    );
    // e) A repository signed by other keys served at the same address (a compromised or
    //    mistaken mirror), with a release of its own.
    let (other, other_keys) = (t.join("other-repo"), t.join("other-keys"));
    fleet(&["init", "--repo", &s(&other), "--keys", &s(&other_keys)]);
    let foreign = pack("arousal-v9", 9, &[]);
    fleet(&[
        "release",
        "--repo",
        &s(&other),
        "--keys",
        &s(&other_keys),
        "--from",
        &s(&foreign),
    ]);
    let real = t.join("real-repo");
    std::fs::rename(&repo, &real).unwrap();
    std::fs::rename(&other, &repo).unwrap();
    rollout("arousal-v9", "", "100", "0");
    let foreign_refused = rec
        .wait_for(Duration::from_secs(60), refused("arousal-v9"))
        .await;
    std::fs::rename(&repo, &other).unwrap();
    std::fs::rename(&real, &repo).unwrap();
    assert!(foreign_refused, "{}", describe(&rec, &ids));
    assert_refused(
        &rec.messages(),
        &ids,
        &[
            (
                "arousal-v99",
                "release \"arousal-v99\": no such release in the signed targets",
            ),
            ("arousal-v9", "Signature threshold of 1 not met"),
        ],
        "arousal-v5@",
    );

    // 6. The root key is rotated; the gateways, pinned to root v1, follow the chain and
    //    install a release signed since.
    fleet(&["rotate-root", "--repo", &s(&repo), "--keys", &s(&keys)]);
    publish(&pack("arousal-v8", 8, &[]));
    rollout("arousal-v8", "", "100", "0");
    assert!(
        rec.wait_for(Duration::from_secs(120), |m| all_in(
            m,
            &ids,
            "arousal-v8",
            "succeeded"
        ))
        .await,
        "after the root rotation:\n{}",
        describe(&rec, &ids)
    );
    for g in &mut gws {
        assert_eq!(g.stop(), 0, "{} stopped cleanly", g.id);
    }
}

/// Every gateway's last status for each `(release, reason)` says it was refused with that
/// reason, and every gateway still serves a model whose version starts with `serving`.
fn assert_refused(msgs: &[Msg], gws: &[&str], cases: &[(&str, &str)], serving: &str) {
    for (release, want) in cases {
        for g in gws {
            let st = statuses(msgs, g)
                .into_iter()
                .rfind(|s| s.target.as_deref() == Some(*release))
                .unwrap();
            assert_eq!(st.state, "refused", "{g} {release}: {st:?}");
            let why = st.reason.unwrap_or_default();
            assert!(why.contains(want), "{g} {release}: {why}");
        }
    }
    for g in gws {
        let last = states(msgs, g).pop().unwrap().model;
        assert!(last.starts_with(serving), "{g} serves {last}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Personalisation survives a base update: a gateway whose store holds the wearer's
/// self-reports installs a release (here from a repository folder, as an air-gapped install
/// would) and then runs a retraining round *on the new base* — the release's model, its
/// pretext network and its replay pack — that re-fits the heads on those self-reports and is
/// gated like every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_update_re_fits_the_heads_on_the_new_base_with_the_wearers_self_reports() {
    let Some(data) = crate::util::shared_data() else {
        return;
    };
    let Some(mq) = crate::util::Mosquitto::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let s = |p: &Path| p.display().to_string();
    let (repo, keys) = (t.join("repo"), t.join("keys"));
    fleet(&["init", "--repo", &s(&repo), "--keys", &s(&keys)]);
    let pinned = t.join("pinned-root.json");
    std::fs::copy(repo.join("metadata/root.json"), &pinned).unwrap();
    let pack = t.join("arousal-v3");
    ok(Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args([
            "model",
            "release",
            "--name",
            "arousal-v3",
            "--version",
            "3",
            "--model",
        ])
        .arg(crate::util::repo().join("models/affectgate-arousal-v2.onnx"))
        .arg("--out")
        .arg(&pack));
    fleet(&[
        "release",
        "--repo",
        &s(&repo),
        "--keys",
        &s(&keys),
        "--from",
        &s(&pack),
    ]);

    // Run 1: the recording once into the store, then a self-report on every window.
    let mut cfg = crate::util::gateway_config("gwp", mq.port, &t.join("store"));
    cfg.mqtt.discovery = false;
    cfg.retrain.enabled = false;
    cfg.retrain.models_dir = t.join("models-local");
    cfg.sensors = vec![crate::util::replay_sensor(
        "polar",
        &data.join("polar-h10/polar_h10_ecg.csv"),
        false,
    )];
    affectgate::gateway::GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    let labelled = {
        let store =
            affectgate::store::Store::open(&cfg.store.path, affectgate::store::Retention::KEEP_ALL)
                .unwrap();
        let starts: Vec<i64> = store
            .range("polar", i64::MIN, i64::MAX)
            .map(|w| w.unwrap().window.start_ns)
            .collect();
        for (k, t) in starts.iter().enumerate() {
            let v = if k % 2 == 0 { 0.2 } else { 0.8 };
            store
                .set_labels("polar", *t, &[("arousal".into(), v)])
                .unwrap();
        }
        store.flush().unwrap();
        starts.len() as u64
    };

    // Run 2: looping, fleet on (the repository folder), retraining on but only on request
    // (tiny rounds).
    if let SourceConfig::Replay { looped, .. } = &mut cfg.sensors[0].source {
        *looped = true;
    }
    cfg.retrain.enabled = true;
    cfg.retrain.interval_h = 1000.0;
    cfg.retrain.min_new_windows = 1_000_000;
    cfg.retrain.pretext_epochs = 1;
    cfg.retrain.max_steps_per_epoch = Some(2);
    cfg.retrain.max_windows = 200;
    cfg.fleet = FleetConfig {
        enabled: true,
        repository: s(&repo),
        root: pinned.clone(),
        health_windows: 3,
        health_timeout_s: 60,
        ..FleetConfig::default()
    };
    let rec = Recorder::start(mq.port, &["affectgate/gwp/fleet", "affectgate/gwp/retrain"]).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(
        affectgate::gateway::GatewayBuilder::new(cfg.clone())
            .retrain_worker(Path::new(env!("CARGO_BIN_EXE_affectgate")))
            .run(async move {
                let _ = stop_rx.await;
            }),
    );
    fleet(&[
        "rollout",
        "--broker",
        &format!("127.0.0.1:{}", mq.port),
        "--release",
        "arousal-v3",
        "--waves",
        "100",
        "--wave-delay",
        "0",
    ]);
    let verdict = |m: &[Msg]| {
        m.iter()
            .filter(|m| m.topic == "affectgate/gwp/retrain")
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
            .find(|s| {
                ["promoted", "rejected", "failed"].contains(&s["state"].as_str().unwrap_or(""))
            })
    };
    let done = rec
        .wait_for(Duration::from_secs(300), |m| verdict(m).is_some())
        .await;
    let _ = stop_tx.send(());
    gw.await.unwrap().unwrap();
    let msgs = rec.messages();
    let st = last_status(&msgs, "gwp").unwrap();
    assert_eq!(st.state, "succeeded", "{st:?}");
    let why = st.reason.unwrap();
    assert!(
        why.contains(&format!(
            "{labelled} self-reported windows: a retraining round re-fits the heads on the new base"
        )),
        "{why}"
    );
    assert!(done, "no retraining verdict");
    let v = verdict(&msgs).unwrap();
    assert_ne!(v["state"], "failed", "{v}");
    let report = &v["report"];
    assert_eq!(report["id"], "r0001", "{report}");
    assert!(report["labelled"].as_u64().unwrap() > 0, "{report}");
    // The round started from the release (the new base), with its pretext network and
    // replay pack beside it in the registry.
    let registry = affectgate::retrain::registry::Registry::open(&cfg.retrain.models_dir);
    assert_eq!(registry.get("r0001").unwrap().parent, "arousal-v3");
    let base = cfg.retrain.models_dir.join("arousal-v3");
    for f in ["model.onnx", "pretext.onnx", "replay.bin"] {
        assert!(base.join(f).exists(), "{f} beside the release's model");
    }
    assert!(report["before"]["pretext_accuracy"].is_number(), "{report}");
}
