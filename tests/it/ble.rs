//! BLE end to end with no radio: the real btleplug code path against a simulated BlueZ.
//!
//! Each test starts its own private D-Bus daemon, BlueZoo (a BlueZ mock from PyPI, launched
//! through `tests/ble_sim/bluezoo_fixed.py` which fixes its reconnect handling: adapters
//! `hci0` for the gateway and `hci1` for the strap) and `tests/ble_sim/fake_h10.py`, which
//! advertises a Polar H10, answers the PMD control point like one and notifies ECG frames built
//! from the real recording in ../shared/data/polar-h10. The gateway binary runs as a child with
//! `DBUS_SYSTEM_BUS_ADDRESS` pointing at that bus, publishing to a real Mosquitto.
//!
//! Skipped when the simulator's venv is missing, unless `AFFECTGATE_REQUIRE_BLE_SIM=1` (set by
//! `.ci/run`, which installs it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{shared_data, Mosquitto, Recorder};
use affectgate::config::{Config, SensorConfig, SourceConfig};
use affectgate::dsp::windows_from_recording;
use affectgate::mqtt::StateMessage;
use affectgate::source::ble::BleConfig;
use affectgate::source::file::read_recording;
use affectgate::store::{Retention, Store};
use serde_json::Value;

use crate::util::repo;

fn venv() -> Option<PathBuf> {
    let v = std::env::var_os("AFFECTGATE_BLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/affectgate-ble"));
    let ok = v.join("bin/bluezoo").exists()
        && Command::new("dbus-daemon")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
    if ok {
        return Some(v);
    }
    if std::env::var("AFFECTGATE_REQUIRE_BLE_SIM").as_deref() == Ok("1") {
        panic!("BLE simulator missing ({}/bin/bluezoo or dbus-daemon) but AFFECTGATE_REQUIRE_BLE_SIM=1: run .ci/run or see tests/ble_sim/README.md", v.display());
    }
    eprintln!("SKIP: BLE simulator not installed (see tests/ble_sim/README.md)");
    None
}

fn polar_csv() -> Option<PathBuf> {
    let p = shared_data()?.join("polar-h10/polar_h10_ecg.csv");
    p.exists().then_some(p)
}

const STRAP: &str = "00:AA:BB:CC:DD:EE";
/// A second strap's adapter (`hci2`), for the several-straps test.
const STRAP_B: &str = "00:12:34:56:78:9A";

/// What every simulated-strap test starts from: the simulator's venv, the real Polar
/// recording (and its path as the simulator's `--csv` argument) and a broker. `None` (the test
/// skips, or fails under the REQUIRE switches) when any is missing.
struct Rig {
    venv: PathBuf,
    csv: PathBuf,
    csv_s: String,
    broker: Mosquitto,
}

fn rig() -> Option<Rig> {
    let (venv, csv) = (venv()?, polar_csv()?);
    let broker = Mosquitto::start()?;
    let csv_s = csv.to_string_lossy().into_owned();
    Some(Rig {
        venv,
        csv,
        csv_s,
        broker,
    })
}

/// Private bus + BlueZoo + fake strap; everything killed on drop.
struct Sim {
    bus: String,
    procs: Vec<Child>,
    events: Arc<Mutex<Vec<Value>>>,
    venv: PathBuf,
}

impl Sim {
    fn start(venv: &Path, fake_args: &[&str]) -> Sim {
        Self::start_powered(venv, fake_args, true)
    }

    /// `powered = false`: BlueZoo without `--auto-enable`, its adapters stay powered off.
    fn start_powered(venv: &Path, fake_args: &[&str], powered: bool) -> Sim {
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let mut line = String::new();
        BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bus = line.trim().to_string();
        assert!(bus.starts_with("unix:"), "dbus address {bus:?}");
        // BlueZoo with the simulator's fixes (clean reconnects, RSSI updates; see
        // tests/ble_sim/README.md), scanning every second instead of every 10 s.
        let bluezoo = Command::new(venv.join("bin/python"))
            .arg(repo().join("tests/ble_sim/bluezoo_fixed.py"))
            .args(if powered {
                &["--auto-enable"][..]
            } else {
                &[][..]
            })
            .args(["--scan-interval", "1"])
            .args(["-a", "00:11:22:33:44:55", "-a", STRAP, "-a", STRAP_B])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bluezoo");
        let mut sim = Sim {
            bus,
            procs: vec![daemon, bluezoo],
            events: Arc::new(Mutex::new(Vec::new())),
            venv: venv.to_path_buf(),
        };
        if !fake_args.is_empty() {
            sim.fake(fake_args);
        }
        sim
    }

    /// Start the fake strap on `hci1` and wait for its `ready` event.
    fn fake(&mut self, args: &[&str]) {
        self.fake_on("hci1", args)
    }

    /// Start a fake strap on `adapter`; its events carry `"adapter"`.
    fn fake_on(&mut self, adapter: &str, args: &[&str]) {
        let mut fake = Command::new(self.venv.join("bin/python"))
            .arg(repo().join("tests/ble_sim/fake_h10.py"))
            .args(["--adapter", adapter])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fake_h10.py");
        let out = fake.stdout.take().unwrap();
        let events = self.events.clone();
        let tag = adapter.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = serde_json::from_str::<Value>(&line) {
                    v["adapter"] = Value::String(tag.clone());
                    events.lock().unwrap().push(v);
                }
            }
        });
        self.procs.push(fake);
        assert!(
            self.wait(Duration::from_secs(30), |e| e
                .iter()
                .any(|v| v["event"] == "ready" && v["adapter"] == adapter)),
            "fake strap not ready: {:?}",
            self.events()
        );
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Events of the strap on `hci1`.
    fn named(&self, name: &str) -> Vec<Value> {
        self.named_on("hci1", name)
    }

    fn named_on(&self, adapter: &str, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["event"] == name && v["adapter"] == adapter)
            .collect()
    }

    fn wait(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if pred(&self.events.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            unsafe {
                libc::kill(p.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for p in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The shipped plugin.toml with one BLE sensor, a broker and a store.
fn ble_config(port: u16, dir: &Path, gw: &str, sensor: &str, ble: &str) -> PathBuf {
    ble_config_multi(port, dir, gw, &[(sensor, ble)])
}

fn ble_config_multi(port: u16, dir: &Path, gw: &str, sensors: &[(&str, &str)]) -> PathBuf {
    let mut cfg = crate::util::gateway_config(gw, port, &dir.join("store"));
    cfg.mqtt.discovery = false;
    cfg.sensors = sensors
        .iter()
        .map(|(id, ble)| SensorConfig {
            id: id.to_string(),
            source: SourceConfig::Ble {
                ble: toml::from_str::<BleConfig>(ble).expect("ble config"),
            },
        })
        .collect();
    let path = dir.join("gw.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    Config::load(&path).expect("written config validates");
    path
}

/// `affectgate run` as a child on the simulated bus; stderr goes to `log`.
fn gateway(sim: &Sim, config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["run", "--config"])
        .arg(config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &sim.bus)
        .env("RUST_LOG", "warn,affectgate=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("affectgate run")
}

/// SIGTERM and wait (graceful shutdown); returns stdout.
fn stop(child: Child) -> (i32, String) {
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn states(rec: &Recorder, topic: &str) -> Vec<StateMessage> {
    rec.on(topic)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("state JSON"))
        .collect()
}

fn row(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as usize
}

/// Mean of a sparse column of the recording (the strap's own hr_bpm or rr_ms) over [t0, t1), ns.
fn device_hr(times: &[i64], hr: &[Option<f64>], t0: i64, t1: i64) -> Option<f64> {
    let v: Vec<f64> = times
        .iter()
        .zip(hr)
        .filter(|(t, _)| (t0..t1).contains(*t))
        .filter_map(|(_, h)| *h)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Correlation of `a[i + lag]` with `b[i]` over the overlap.
fn shifted_correlation(a: &[f32], b: &[f32], lag: i32) -> f64 {
    assert_eq!(a.len(), b.len());
    let l = lag.unsigned_abs() as usize;
    if lag >= 0 {
        correlation(&a[l..], &b[..b.len() - l])
    } else {
        correlation(&a[..a.len() - l], &b[l..])
    }
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| x as f64).sum::<f64>() / n,
        b.iter().map(|&x| x as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

/// time_ns, hr_bpm and rr_ms columns of the recording.
type Columns = (Vec<i64>, Vec<Option<f64>>, Vec<Option<f64>>);
fn device_columns(csv: &Path) -> Columns {
    let mut r = csv::Reader::from_path(csv).unwrap();
    let (mut t, mut h, mut rr) = (Vec::new(), Vec::new(), Vec::new());
    for rec in r.records() {
        let rec = rec.unwrap();
        t.push(rec[0].parse::<i64>().unwrap());
        h.push(rec[2].parse::<f64>().ok());
        rr.push(rec[3].parse::<f64>().ok().filter(|&v| v > 0.0));
    }
    (t, h, rr)
}

#[test]
fn scan_lists_the_simulated_h10_with_its_profiles() {
    let (Some(venv), Some(csv)) = (venv(), polar_csv()) else {
        return;
    };
    let csv = csv.to_string_lossy().into_owned();
    let sim = Sim::start(&venv, &["--csv", &csv]);
    let out = Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["scan", "--seconds", "3", "--adapter", "hci0"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &sim.bus)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(STRAP))
        .unwrap_or_else(|| panic!("strap not listed:\n{stdout}"));
    assert!(line.contains("Polar H10 1A2B3C4D"), "{line}");
    assert!(line.contains("polar_pmd, heart_rate"), "{line}");
    assert!(
        stdout.contains("with a profile affectgate reads"),
        "{stdout}"
    );

    // A missing adapter is an error naming what exists, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["scan", "--seconds", "1", "--adapter", "hci9"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &sim.bus)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("adapter \"hci9\" not found (available:"),
        "{stderr}"
    );
    assert!(stderr.contains("hci0"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The end-to-end test: the simulated H10 streams the real recording (20× real time);
/// the gateway must publish exactly the windows the recording yields, with the strap's heart
/// rate, survive a link drop mid-stream (reconnect, re-subscribe, restart ECG) and never
/// stitch a window across the lost samples. The first start command is ignored by the strap,
/// so the start timeout and retry are exercised too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h10_over_simulated_bluez_end_to_end_with_a_link_drop() {
    let Some(Rig {
        venv,
        csv,
        csv_s,
        broker,
    }) = rig()
    else {
        return;
    };
    let sim = Sim::start(
        &venv,
        &[
            "--csv",
            &csv_s,
            "--speed",
            "20",
            "--drop-after-s",
            "250",
            "--drop-gap-s",
            "7",
            "--ignore-first-starts",
            "1",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config(
        broker.port,
        dir.path(),
        "gwble",
        "chest",
        "profile = \"polar_pmd\"\nname = \"Polar H10 *\"\nadapter = \"hci0\"\nstart_timeout_s = 3\nwatchdog_s = 4\nbackoff_initial_s = 0.5\nbackoff_max_s = 2",
    );
    let rec = Recorder::start(broker.port, &["affectgate/gwble/#"]).await;
    let log = dir.path().join("gateway.log");
    let gw = gateway(&sim, &config, &log);

    // The whole recording (≈ 10 min) at 20× ≈ 30 s, plus connect, retry and reconnect.
    let ended = wait_event(&sim, "end", Duration::from_secs(150)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, stdout) = stop(gw);
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(
        ended,
        "strap never reached the end: {:?}\n{logtext}",
        sim.events()
    );
    assert_eq!(code, 0, "{stdout}\n{logtext}");

    // The strap saw: 2 connects, subscriptions before commands, a retried start, a restart.
    let writes: Vec<String> = sim
        .named("cp_write")
        .iter()
        .map(|v| v["hex"].as_str().unwrap().to_string())
        .collect();
    let starts = writes.iter().filter(|h| h.starts_with("0200")).count();
    assert!(
        starts >= 3,
        "1 ignored + 1 answered + 1 after the drop: {writes:?}"
    );
    assert_eq!(writes[0], "0100", "get settings first: {writes:?}");
    assert_eq!(sim.named("drop").len(), 1);
    assert!(
        logtext.contains("no answer to 'start ECG' within 3 s"),
        "{logtext}"
    );
    assert!(logtext.contains("ECG started"), "{logtext}");

    // Expected windows: the recording's samples the strap actually sent, in the two
    // contiguous runs around the drop, cut by the offline path.
    let drop_ev = &sim.named("drop")[0];
    let end = &sim.named("end")[0];
    let (drop_row, resume_row, end_row) = (
        row(drop_ev, "csv_row"),
        row(drop_ev, "resume_row"),
        row(end, "csv_row"),
    );
    let recording = read_recording(&csv, None).unwrap();
    let cfg = Config::load(&config).unwrap();
    let seg1 = windows_from_recording(
        recording.fs_hz,
        &recording.samples_uv[..drop_row],
        0,
        &cfg.dsp,
    )
    .unwrap();
    let seg2 = windows_from_recording(
        recording.fs_hz,
        &recording.samples_uv[resume_row..end_row],
        0,
        &cfg.dsp,
    )
    .unwrap();
    let msgs = states(&rec, "affectgate/gwble/chest/state");
    eprintln!(
        "BLE e2e: {} state messages; offline {} + {} windows (rows 0..{drop_row}, {resume_row}..{end_row})",
        msgs.len(),
        seg1.len(),
        seg2.len()
    );
    assert_eq!(msgs.len(), seg1.len() + seg2.len(), "{stdout}\n{logtext}");
    let idx: Vec<u64> = msgs.iter().map(|m| m.window).collect();
    assert_eq!(idx, (0..msgs.len() as u64).collect::<Vec<_>>());

    // No stitched window: within each run windows are exactly one hop apart; the one
    // discontinuity is the drop, and the first window after it starts only after the
    // samples lost in the drop (7 s of recording ≥ 0.35 s of wall time at 20×) plus warm-up.
    let hop_ms = (cfg.dsp.hop as f64 / 256.0 * 1000.0).round() as i64;
    let steps: Vec<i64> = msgs
        .windows(2)
        .map(|w| w[1].window_start_ms - w[0].window_start_ms)
        .collect();
    let jumps: Vec<(usize, i64)> = steps
        .iter()
        .enumerate()
        .filter(|(_, &d)| (d - hop_ms).abs() > 2)
        .map(|(i, &d)| (i, d))
        .collect();
    assert_eq!(
        jumps.len(),
        1,
        "exactly one discontinuity (the drop): {jumps:?}"
    );
    assert_eq!(
        jumps[0].0 + 1,
        seg1.len(),
        "the discontinuity is where the drop was"
    );
    // (Its size is not asserted: at 20× the first connect's clock anchor runs ahead of the wall
    // clock, and the reconnect re-anchors to it — in real time the jump is the lost time.)

    // The stored windows hold the same signal as the offline windows, one for one: a window
    // stitched across the drop would correlate poorly with every offline window.
    let store = Store::open(&cfg.store.path, Retention::KEEP_ALL).unwrap();
    let mut stored: Vec<_> = store
        .range("chest", i64::MIN, i64::MAX)
        .map(|w| w.expect("stored window reads"))
        .collect();
    stored.sort_by_key(|w| w.window.index);
    assert_eq!(stored.len(), msgs.len());
    // The live path estimates the strap's rate from its timestamps, the offline path from
    // the file's: window boundaries may differ by a few samples, so the best alignment within
    // ±16 samples (±62 ms) counts; the rest of the difference is resampler phase and i16
    // storage. A window stitched across the drop (7 s missing) would not reach 0.95.
    let (mut lags, mut worst) = (Vec::new(), 1.0f64);
    for (k, (got, want)) in stored
        .iter()
        .zip(seg1.iter().chain(seg2.iter()))
        .enumerate()
    {
        let (lag, r) = (-16i32..=16)
            .map(|l| {
                (
                    l,
                    shifted_correlation(&got.window.samples, &want.samples, l),
                )
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(
            r > 0.95,
            "window {k}: best correlation with the offline window {r:.4} at lag {lag}"
        );
        lags.push(lag);
        worst = worst.min(r);
    }
    eprintln!("BLE e2e: window alignment vs offline: worst correlation {worst:.4}, lags (256 Hz samples) {lags:?}");
    drop(store);

    // Heart rate: every window agrees with the offline pipeline on the same samples within
    // 2 bpm, and with the strap's own values over the window (below).
    let (times, dev_hr, dev_rr) = device_columns(&csv);
    let offline: Vec<_> = seg1.iter().chain(seg2.iter()).collect();
    let (mut dev_err, mut rr_err) = (Vec::new(), Vec::new());
    for (k, (m, w)) in msgs.iter().zip(&offline).enumerate() {
        let off = affectgate::dsp::hrv(&affectgate::dsp::detect_rpeaks(&w.samples, 256.0), 256.0)
            .map(|h| h.hr_bpm);
        match (m.hr_bpm, off) {
            (Some(a), Some(b)) => assert!(
                (a as f64 - b).abs() <= 2.0,
                "window {k}: BLE {a} vs offline {b}"
            ),
            // A window that failed the quality gate publishes no HR (the store keeps it).
            (None, _) if m.quality != "good" => {}
            (a, b) => assert_eq!(a.is_some(), b.is_some(), "window {k}: {a:?} vs {b:?}"),
        }
        // Offline window times are relative to its segment start; map to recording time.
        let base = if k < seg1.len() {
            times[0]
        } else {
            times[resume_row]
        };
        let (t0, t1) = (base + w.start_ns, base + w.end_ns());
        if let (Some(a), Some(d)) = (m.hr_bpm, device_hr(&times, &dev_hr, t0, t1)) {
            dev_err.push((a as f64 - d).abs());
        }
        if let (Some(a), Some(d)) = (
            m.hr_bpm,
            device_hr(&times, &dev_rr, t0, t1).map(|rr| 60_000.0 / rr),
        ) {
            rr_err.push((a as f64 - d).abs());
        }
    }
    rr_err.sort_by(f64::total_cmp);
    eprintln!(
        "BLE e2e: |HR - 60000/mean(strap's own RR)| per window: median {:.2} bpm, max {:.2} bpm over {} windows",
        rr_err[rr_err.len() / 2],
        rr_err.last().unwrap(),
        rr_err.len()
    );
    dev_err.sort_by(f64::total_cmp);
    let median = dev_err[dev_err.len() / 2];
    eprintln!(
        "BLE e2e: |HR - strap's own HR| per window: median {median:.2} bpm, max {:.2} bpm over {} windows",
        dev_err.last().unwrap(),
        dev_err.len()
    );
    assert!(dev_err.len() + 3 >= msgs.len(), "{}", dev_err.len());
    assert!(rr_err.len() + 3 >= msgs.len(), "{}", rr_err.len());
    // Against the strap's own beat-to-beat RR over the same 10 s: within 2 bpm (median; the
    // wearer's ventricular trigeminy makes single windows differ by more). The strap's
    // displayed hr_bpm is a running average that lags the beats, so it is held to 3 bpm —
    // measured 2.06 when this test was written.
    let rr_median = rr_err[rr_err.len() / 2];
    assert!(rr_median <= 2.0, "median vs RR-derived HR {rr_median}");
    assert!(median <= 3.0, "median vs displayed HR {median}");

    // Availability: online → offline at the drop → online again → offline at shutdown.
    let avail: Vec<String> = rec
        .on("affectgate/gwble/chest/availability")
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        avail,
        vec!["online", "offline", "online", "offline"],
        "{logtext}"
    );
    // The ECG stream was stopped on shutdown (03 00) after the last start.
    assert_eq!(
        writes.last().map(String::as_str),
        Some("0300"),
        "{writes:?}"
    );
    assert!(
        logtext.contains("link lost") || logtext.contains("watchdog"),
        "{logtext}"
    );
}

/// Wait until the strap emitted `event` or `timeout` passed.
async fn wait_event(sim: &Sim, event: &str, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if !sim.named(event).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Old H10 firmware: no PMD service. A `polar_pmd` sensor falls back to the Heart Rate
/// service and publishes HR/HRV summaries (no scores, no stored windows) whose heart rate
/// matches the strap's own RR intervals over the same stretch of the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strap_without_pmd_falls_back_to_heart_rate_summaries() {
    let (Some(venv), Some(csv)) = (venv(), polar_csv()) else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let speed = 5.0;
    let csv_s = csv.to_string_lossy().into_owned();
    let sim = Sim::start(
        &venv,
        &[
            "--csv",
            &csv_s,
            "--profile",
            "hr",
            "--speed",
            &speed.to_string(),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config(
        broker.port,
        dir.path(),
        "gwhr",
        "oldstrap",
        "profile = \"polar_pmd\"\naddress = \"00:aa:bb:cc:dd:ee\"\nadapter = \"hci0\"",
    );
    // With Home Assistant discovery: the strap device must describe the strap as it reports
    // itself over BLE (Device Information service).
    let mut with_ha = Config::load(&config).unwrap();
    with_ha.mqtt.discovery = true;
    std::fs::write(&config, toml::to_string(&with_ha).unwrap()).unwrap();
    let rec = Recorder::start(broker.port, &["affectgate/gwhr/#", "homeassistant/#"]).await;
    let log = dir.path().join("gateway.log");
    let gw = gateway(&sim, &config, &log);
    let topic = "affectgate/gwhr/oldstrap/state";
    let got3 = rec
        .wait_for(Duration::from_secs(60), |m| {
            m.iter().filter(|m| m.topic == topic).count() >= 3
        })
        .await;
    let (code, stdout) = stop(gw);
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(got3, "{stdout}\n{logtext}");
    assert_eq!(code, 0, "{logtext}");
    assert!(
        logtext.contains("falling back to the Heart Rate service"),
        "{logtext}"
    );
    assert!(stdout.contains("heart-rate summaries"), "{stdout}");
    let device = rec
        .on("homeassistant/sensor/affectgate_gwhr_oldstrap_heart_rate/config")
        .iter()
        .filter(|m| !m.payload.is_empty())
        .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["device"].clone())
        .next_back()
        .expect("the strap's heart-rate entity announced");
    assert_eq!(device["manufacturer"], "Polar Electro Oy", "{device}");
    assert_eq!(device["model"], "H10", "{device}");
    assert_eq!(device["sw_version"], "3.0.35", "{device}");
    assert_eq!(
        device["name"], "affectgate gwhr oldstrap",
        "the name keeps the entity ids"
    );

    let msgs = states(&rec, topic);
    // Each summary covers 10 s of gateway time = 10 × speed s of the recording, from the
    // first report on. Expected HR: 60000 / mean of the strap's RR intervals in that span.
    let (times, _, rr) = device_columns(&csv);
    let first_rr = rr.iter().position(Option::is_some).unwrap();
    let span = (10.0 * speed * 1e9) as i64;
    for m in &msgs {
        assert_eq!(m.quality, "hr_only", "{m:?}");
        assert_eq!(m.model, "none");
        assert_eq!(m.scores.get("arousal"), Some(&None), "never scored: {m:?}");
        assert!(m.rmssd_ms.is_some() && m.sdnn_ms.is_some(), "{m:?}");
        let t0 = times[first_rr] + m.window as i64 * span;
        let want = 60_000.0 / device_hr(&times, &rr, t0, t0 + span).unwrap();
        let got = m.hr_bpm.unwrap() as f64;
        eprintln!(
            "HR-only summary {}: {got:.1} bpm, strap RR {want:.1} bpm",
            m.window
        );
        assert!(
            (got - want).abs() <= 2.0,
            "summary {}: {got} vs {want}",
            m.window
        );
    }
    // No ECG, so nothing was windowed or stored.
    let cfg = Config::load(&config).unwrap();
    let store = Store::open(&cfg.store.path, Retention::KEEP_ALL).unwrap();
    assert_eq!(store.range("oldstrap", i64::MIN, i64::MAX).count(), 0);
}

/// A DIY board: bare big-endian 24-bit samples at 0.5 µV per count, rate from the config.
/// The stored windows carry the recording's signal at the right amplitude.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_gatt_ecg_board_is_decoded_with_the_configured_format() {
    let Some(Rig {
        venv,
        csv,
        csv_s,
        broker,
    }) = rig()
    else {
        return;
    };
    let sim = Sim::start(
        &venv,
        &[
            "--csv",
            &csv_s,
            "--profile",
            "generic",
            "--name",
            "DIY-ECG 01",
            "--generic-format",
            "i24be",
            "--generic-scale-uv",
            "0.5",
        ],
    );
    let recording = read_recording(&csv, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config(
        broker.port,
        dir.path(),
        "gwdiy",
        "diy",
        &format!(
            "profile = \"gatt_ecg\"\nname = \"DIY-ECG*\"\nadapter = \"hci0\"\n[gatt]\nservice_uuid = \"6e400001-b5a3-f393-e0a9-e50e24dcca9e\"\ncharacteristic_uuid = \"6e400003-b5a3-f393-e0a9-e50e24dcca9e\"\nformat = \"i24be\"\nscale_uv = 0.5\nfs_hz = {}",
            recording.fs_hz
        ),
    );
    let rec = Recorder::start(broker.port, &["affectgate/gwdiy/#"]).await;
    let log = dir.path().join("gateway.log");
    let gw = gateway(&sim, &config, &log);
    let topic = "affectgate/gwdiy/diy/state";
    // Real time: warm-up 2 s + two 10 s windows.
    let got = rec
        .wait_for(Duration::from_secs(60), |m| {
            m.iter().filter(|m| m.topic == topic).count() >= 2
        })
        .await;
    let (code, _) = stop(gw);
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(got, "{logtext}");
    assert_eq!(code, 0, "{logtext}");
    let start_row = row(&sim.named("stream_start")[0], "csv_row");
    let cfg = Config::load(&config).unwrap();
    let offline = windows_from_recording(
        recording.fs_hz,
        &recording.samples_uv[start_row..],
        0,
        &cfg.dsp,
    )
    .unwrap();
    let store = Store::open(&cfg.store.path, Retention::KEEP_ALL).unwrap();
    let mut stored: Vec<_> = store
        .range("diy", i64::MIN, i64::MAX)
        .map(|w| w.unwrap())
        .collect();
    stored.sort_by_key(|w| w.window.index);
    assert!(stored.len() >= 2, "{}", stored.len());
    let std = |x: &[f32]| {
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        (x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    };
    for (k, (got, want)) in stored.iter().zip(&offline).enumerate() {
        let r = (-16i32..=16)
            .map(|l| shifted_correlation(&got.window.samples, &want.samples, l))
            .fold(f64::MIN, f64::max);
        let ratio = std(&got.window.samples) / std(&want.samples);
        eprintln!("generic window {k}: correlation {r:.4}, amplitude ratio {ratio:.4}");
        assert!(r > 0.95, "window {k}: {r}");
        assert!(
            (ratio - 1.0).abs() < 0.02,
            "window {k}: amplitude ratio {ratio}"
        );
    }
}

/// After abrupt link loss BlueZ can re-subscribe without data ever arriving: the strap here
/// stops delivering notifications while the link stays up. The gateway's watchdog must notice,
/// drop the link, reconnect, re-subscribe and restart ECG — and the windows on both sides are
/// exactly the recording's, none spanning the silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_reconnects_a_silent_link() {
    let Some(Rig {
        venv,
        csv,
        csv_s,
        broker,
    }) = rig()
    else {
        return;
    };
    let sim = Sim::start(
        &venv,
        &[
            "--csv",
            &csv_s,
            "--speed",
            "20",
            "--stall-after-s",
            "120",
            "--max-s",
            "400",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config(
        broker.port,
        dir.path(),
        "gwwd",
        "chest",
        "profile = \"polar_pmd\"\nname = \"Polar H10 *\"\nadapter = \"hci0\"\nwatchdog_s = 2\nbackoff_initial_s = 0.5\nbackoff_max_s = 2",
    );
    let rec = Recorder::start(broker.port, &["affectgate/gwwd/#"]).await;
    let log = dir.path().join("gateway.log");
    let gw = gateway(&sim, &config, &log);
    let ended = wait_event(&sim, "end", Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, stdout) = stop(gw);
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(ended, "{:?}\n{logtext}", sim.events());
    assert_eq!(code, 0, "{stdout}\n{logtext}");
    assert!(
        logtext.contains("watchdog: no notification for 2.0 s"),
        "{logtext}"
    );

    let stall = &sim.named("stall")[0];
    let stall_end = &sim.named("stall_end")[0];
    let starts = sim.named("stream_start");
    assert_eq!(starts.len(), 2, "{starts:?}");
    let (stall_row, resume_row, end_row) = (
        row(stall, "csv_row"),
        row(&starts[1], "csv_row"),
        row(&sim.named("end")[0], "csv_row"),
    );
    assert!(row(stall_end, "lost_frames") > 0);
    let recording = read_recording(&csv, None).unwrap();
    let cfg = Config::load(&config).unwrap();
    let w = |a: usize, b: usize| {
        windows_from_recording(recording.fs_hz, &recording.samples_uv[a..b], 0, &cfg.dsp)
            .unwrap()
            .len()
    };
    let expected = w(0, stall_row) + w(resume_row, end_row);
    let msgs = states(&rec, "affectgate/gwwd/chest/state");
    eprintln!(
        "watchdog: {} windows (expected {expected}); silent from row {stall_row}, resumed at {resume_row}",
        msgs.len()
    );
    assert_eq!(msgs.len(), expected, "{logtext}");
    let avail: Vec<String> = rec
        .on("affectgate/gwwd/chest/availability")
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(avail, vec!["online", "offline", "online", "offline"]);
}

/// No BlueZ on the bus, or a wrong adapter: `scan` fails with what to do; `run` logs the
/// error naming the adapter, retries for a while (a boot race: bluetoothd or a USB adapter
/// coming up after the gateway), then gives the sensor up; with no other sensor it stops by
/// itself, in order (`offline`), exiting 1 with what to fix. (It used to retry for ever,
/// up and doing nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bluez_or_adapter_is_a_clear_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["scan", "--seconds", "1"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach BlueZ over D-Bus"), "{stderr}");
    assert!(stderr.contains("Is bluetoothd running"), "{stderr}");

    let Some(venv) = venv() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let sim = Sim::start(&venv, &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config(
        broker.port,
        dir.path(),
        "gwna",
        "chest",
        "profile = \"polar_pmd\"\nname = \"Polar H10 *\"\nadapter = \"hci9\"\nbackoff_initial_s = 0.2\nbackoff_max_s = 0.5",
    );
    let rec = Recorder::start(broker.port, &["affectgate/gwna/#"]).await;
    let log = dir.path().join("gateway.log");
    let mut gw = gateway(&sim, &config, &log);
    // The gateway itself is up (status online) while the sensor keeps failing…
    assert!(
        rec.wait_for(Duration::from_secs(20), |m| m.iter().any(|m| m.topic
            == "affectgate/gwna/status"
            && m.payload == b"online"))
            .await
    );
    // …until it gives the sensor up and, with nothing left to run, stops by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = gw.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = gw.kill();
            panic!("the gateway kept running with its only sensor's adapter missing (killed)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{logtext}");
    assert!(
        logtext.contains("adapter \"hci9\" not found (available: hci"),
        "{logtext}"
    );
    assert!(
        logtext.matches("not found").count() >= 2,
        "retried: {logtext}"
    );
    assert!(logtext.contains("gave up"), "{logtext}");
    assert!(
        logtext.contains("every configured sensor failed"),
        "{logtext}"
    );
    assert!(!logtext.contains("panicked"), "{logtext}");
    assert!(rec.on("affectgate/gwna/chest/state").is_empty());
    assert!(
        rec.wait_for(Duration::from_secs(10), |m| m
            .iter()
            .rfind(|m| m.topic == "affectgate/gwna/status")
            .is_some_and(|m| m.payload == b"offline"))
            .await,
        "no `offline` status"
    );
}

/// Two straps at once, each in its own task: an H10 streaming ECG (by address) and a
/// heart-rate-only strap (by name pattern). Each publishes on its own topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_straps_at_once() {
    let Some(Rig {
        venv,
        csv,
        csv_s,
        broker,
    }) = rig()
    else {
        return;
    };
    let mut sim = Sim::start(&venv, &["--csv", &csv_s, "--speed", "20", "--max-s", "200"]);
    sim.fake_on(
        "hci2",
        &[
            "--csv",
            &csv_s,
            "--profile",
            "hr",
            "--speed",
            "5",
            "--name",
            "Polar H10 99887766",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config_multi(
        broker.port,
        dir.path(),
        "gw2",
        &[
            (
                "ecg",
                "profile = \"polar_pmd\"\naddress = \"00:AA:BB:CC:DD:EE\"\nadapter = \"hci0\"",
            ),
            (
                "hr",
                "profile = \"heart_rate\"\nname = \"Polar H10 9988*\"\nadapter = \"hci0\"",
            ),
        ],
    );
    let rec = Recorder::start(broker.port, &["affectgate/gw2/#"]).await;
    let log = dir.path().join("gateway.log");
    let gw = gateway(&sim, &config, &log);
    let ended = wait_event(&sim, "end", Duration::from_secs(90)).await;
    let hr_topic = "affectgate/gw2/hr/state";
    let got_hr = rec
        .wait_for(Duration::from_secs(30), |m| {
            m.iter().filter(|m| m.topic == hr_topic).count() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, _) = stop(gw);
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(ended && got_hr, "{logtext}");
    assert_eq!(code, 0, "{logtext}");
    let end_row = row(&sim.named("end")[0], "csv_row");
    let recording = read_recording(&csv, None).unwrap();
    let cfg = Config::load(&config).unwrap();
    let expected = windows_from_recording(
        recording.fs_hz,
        &recording.samples_uv[..end_row],
        0,
        &cfg.dsp,
    )
    .unwrap()
    .len();
    let ecg = states(&rec, "affectgate/gw2/ecg/state");
    assert_eq!(ecg.len(), expected, "{logtext}");
    assert!(ecg
        .iter()
        .all(|m| m.sensor == "ecg" && m.quality != "hr_only"));
    let hr = states(&rec, hr_topic);
    assert!(
        hr.iter()
            .all(|m| m.sensor == "hr" && m.quality == "hr_only"),
        "{hr:?}"
    );
    for sensor in ["ecg", "hr"] {
        let a = rec.on(&format!("affectgate/gw2/{sensor}/availability"));
        assert_eq!(
            a.first().map(|m| m.payload.as_slice()),
            Some(&b"online"[..]),
            "{sensor}"
        );
    }
    // Both straps connected through the same adapter, each from its own task.
    assert!(sim.named_on("hci2", "connected").len() + sim.named_on("hci2", "notify").len() > 0);
}

/// `affectgate doctor` reads the adapter from BlueZ: powered passes, powered off fails with
/// the command that powers it, no BlueZ fails saying so — each with exit status 1 on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_that_bluez_and_the_adapter_are_ready() {
    let Some(venv) = venv() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = ble_config(
        broker.port,
        dir.path(),
        "gwdoc",
        "chest",
        &format!("profile = \"polar_pmd\"\naddress = \"{STRAP}\"\nadapter = \"hci0\""),
    );
    // BlueZoo registers on the bus a moment after it starts: ask until it is there.
    let doctor = |bus: &str| {
        let t0 = Instant::now();
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_affectgate"))
                .args(["doctor", "--config"])
                .arg(&config)
                .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !text.contains("org.bluez is not on the system bus")
                || bus.contains("nonexistent")
                || t0.elapsed() > Duration::from_secs(20)
            {
                return (out.status.code(), text);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let (code, out) = doctor("unix:path=/nonexistent/bus");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  bluetooth: cannot reach BlueZ over D-Bus"),
        "{out}"
    );
    assert!(out.contains("fix: start BlueZ"), "{out}");
    {
        let off = Sim::start_powered(&venv, &[], false);
        let (code, out) = doctor(&off.bus);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("FAIL  bluetooth: adapter hci0 (00:11:22:33:44:55) is powered off"),
            "{out}"
        );
        assert!(
            out.contains("fix: `bluetoothctl power on` (for hci0)"),
            "{out}"
        );
    }
    let on = Sim::start(&venv, &[]);
    let (code, out) = doctor(&on.bus);
    assert!(
        out.contains("ok    bluetooth: hci0 (00:11:22:33:44:55) powered"),
        "{out}"
    );
    assert_eq!(code, Some(0), "{out}");
}
