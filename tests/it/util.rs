//! The one shared module of the integration tests: where things are (the repository, the
//! real ECG in `../shared/data`), a real Mosquitto broker per test on a free port, and an MQTT
//! subscriber that records everything it receives.
//!
//! Missing prerequisites skip a test with a `SKIP:` line, unless the matching switch is set
//! (as `.ci/run` does), which turns the skip into a failure:
//! `AFFECTGATE_REQUIRE_DATA=1` (shared data), `AFFECTGATE_REQUIRE_MOSQUITTO=1` (broker).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use affectgate::config::{Config, SensorConfig, SourceConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped `plugin.toml` as a test gateway: id `gw`, the broker on 127.0.0.1:`port`, the
/// store at `store`, the sensors of the file (replace them with [`replay_sensor`]s or BLE
/// sensors). Relative paths (the shipped model) are resolved against the repository.
pub fn gateway_config(gw: &str, port: u16, store: &Path) -> Config {
    let mut cfg = Config::load(&repo().join("plugin.toml")).unwrap();
    cfg.gateway.id = gw.into();
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = port;
    cfg.store.path = store.to_path_buf();
    cfg
}

/// A sensor replaying `file` as fast as the pipeline takes it.
pub fn replay_sensor(id: &str, file: &Path, looped: bool) -> SensorConfig {
    SensorConfig {
        id: id.into(),
        source: SourceConfig::Replay {
            path: file.to_path_buf(),
            signal: None,
            realtime: false,
            looped,
        },
    }
}

/// A prerequisite of a test is missing: fail when `require_var=1` (as `.ci/run` sets), else
/// print a `SKIP:` line (the caller then returns).
pub fn missing(what: &str, require_var: &str) {
    if std::env::var(require_var).as_deref() == Ok("1") {
        panic!("{what}, but {require_var}=1: install it (see .ci/run)");
    }
    eprintln!("SKIP: {what} (set {require_var}=1 to make this a failure)");
}

/// The shared real-data folder: `$AFFECTGATE_DATA` if set, else `../shared/data` beside the
/// repository. `None` (after a `SKIP:` line) when it is absent — a panic instead when
/// `AFFECTGATE_REQUIRE_DATA=1`, so CI cannot pass by skipping.
pub fn shared_data() -> Option<PathBuf> {
    let p = std::env::var_os("AFFECTGATE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    if p.join("eegmat").is_dir() {
        return Some(p);
    }
    if std::env::var("AFFECTGATE_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!(
            "shared data not found at {} but AFFECTGATE_REQUIRE_DATA=1: put ../shared/data \
             beside the repository or set AFFECTGATE_DATA",
            p.display()
        );
    }
    eprintln!(
        "SKIP: shared data not found at {} (set AFFECTGATE_DATA)",
        p.display()
    );
    None
}

/// Path of the mosquitto binary, or `None` (the test then skips — unless
/// `AFFECTGATE_REQUIRE_MOSQUITTO=1`, as set by `.ci/run`, where a missing broker fails).
pub fn mosquitto_bin() -> Option<PathBuf> {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var("AFFECTGATE_REQUIRE_MOSQUITTO").as_deref() == Ok("1") {
        panic!(
            "mosquitto not found but AFFECTGATE_REQUIRE_MOSQUITTO=1 (apt-get install mosquitto)"
        );
    }
    eprintln!("SKIP: mosquitto not installed (apt-get install mosquitto)");
    None
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto process on 127.0.0.1:<free port>, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Option<Mosquitto> {
        let bin = mosquitto_bin()?;
        Some(Self::start_on(&bin, free_port()))
    }

    pub fn start_on(bin: &Path, port: u16) -> Mosquitto {
        Self::start_with(bin, port, None)
    }

    /// A broker that keeps retained messages and persistent sessions across restarts in
    /// `dir` (saved when it is stopped with SIGTERM).
    pub fn start_persistent(bin: &Path, port: u16, dir: &Path) -> Mosquitto {
        Self::start_with(bin, port, Some(dir))
    }

    /// A broker with extra `mosquitto.conf` lines for its listener (auth, TLS).
    pub fn start_conf(bin: &Path, port: u16, extra: &str) -> Mosquitto {
        Self::start_full(bin, port, None, extra)
    }

    fn start_with(bin: &Path, port: u16, persist: Option<&Path>) -> Mosquitto {
        Self::start_full(bin, port, persist, "allow_anonymous true\n")
    }

    fn start_full(bin: &Path, port: u16, persist: Option<&Path>, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        if let Some(d) = persist {
            // Mosquitto started as root drops to the `mosquitto` user: let it write there.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777));
        }
        let persistence = match persist {
            Some(d) => format!("persistence true\npersistence_location {}/\n", d.display()),
            None => "persistence false\n".to_string(),
        };
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\n{extra}{persistence}max_queued_messages 1000000\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Mosquitto {
    /// Graceful stop (SIGTERM: a persistent broker saves its database).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

/// Subscribes to `filters` and records every message (in a background task).
pub struct Recorder {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(port: u16, filters: &[&str]) -> Recorder {
        let mut opts = MqttOptions::new(
            format!("rec-{}-{}", std::process::id(), rand_suffix()),
            "127.0.0.1",
            port,
        );
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(opts, 64);
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        }
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m2 = msgs.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let mut acks = 0;
        let n = filters.len();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == n {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => m2.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("subscriptions acknowledged")
            .unwrap();
        Recorder { msgs, client, task }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Wait until `pred(messages)` holds or `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Msg]) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if pred(&self.msgs.lock().unwrap()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pred(&self.msgs.lock().unwrap())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A tmpfs mount for the duration of a test (unmounted on drop).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (after a `SKIP:` line) where this user may not mount; a failure instead with
    /// `AFFECTGATE_REQUIRE_TMPFS=1` (set by `.ci/run` when it runs as root).
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing(
                &format!("cannot mount a tmpfs at {} (needs root)", at.display()),
                "AFFECTGATE_REQUIRE_TMPFS",
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    pub fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
