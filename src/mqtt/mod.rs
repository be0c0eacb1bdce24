//! MQTT: the gateway's only output to the home network.
//!
//! * [`Topics`] — every topic the plugin uses, built in one place from the gateway id
//!   (ids are validated `[a-zA-Z0-9_-]` by the config, so they cannot inject `/`, `+` or `#`).
//! * [`StateMessage`] — the JSON published per window on `affectgate/<gateway>/<sensor>/state`.
//! * [`MqttLink`] — the connection task. State messages never go to it directly: the gateway
//!   writes them to the sled [`Outbox`] (flushed with the window) and wakes the link, which
//!   publishes the outbox oldest first (QoS 1) and deletes each entry only on its PUBACK. So a
//!   broker outage of hours, or a gateway restart in the middle of one, delivers everything
//!   afterwards, in order (at least once: a message whose PUBACK was lost is sent again).
//!   Retained messages (gateway `online`/`offline` with the last will, per-strap availability,
//!   Home Assistant discovery) are remembered and re-sent on every (re)connect and when Home
//!   Assistant announces itself (`<prefix>/status` = `online`), with the last state per topic.
//! * [`broker`] — an embedded rumqttd broker, used by `affectgate demo` only.
//! * [`discovery`] (Home Assistant payloads) and [`inputs`] (validation of label and command
//!   payloads).
//!
//! Why a fresh rumqttc client per connection: rumqttc re-sends its own unacknowledged publishes
//! after a reconnect, which would make "which PUBACK belongs to which outbox entry"
//! ambiguous. With a new event loop per connection, the n-th QoS 1 publish written is the n-th
//! one requested, packet ids map to outbox entries exactly, and the outbox alone decides what
//! is re-sent.
//!
//! Late windows: a window whose state is published more than [`LinkOptions::late_after`]
//! (Home Assistant's `expire_after`, three window periods) after its end — the backlog of a
//! broker outage, or what an earlier run left in the outbox — goes to
//! `affectgate/<gw>/<sensor>/history` instead of `…/state`, with the same payload. Home
//! Assistant's entities read `state` only, so hours of stored-up windows arriving in one burst
//! never show as the current reading or fire "now" triggers; a consumer that wants every
//! window subscribes to both (`affectgate/<gw>/+/+` and filter, or the two topics). The
//! decision is made when the message is sent, not when it is stored: a window is late because
//! it is *delivered* late. Whether it went to one topic or the other, it is delivered once
//! (at least once) and in order.
//!
//! [`client_options`] (host, credentials, TLS) is shared by the link and by
//! [`subscribe_states`], the read side used by `affectgate demo` and the benchmarks.

pub mod broker;
pub mod config;
pub mod discovery;
pub mod inputs;
pub mod topics;

pub use topics::Topics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, VecDeque};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::store::outbox::Outbox;
use crate::time::Backoff;
use config::{MqttConfig, MqttTls};

/// Outbox messages in flight (written, not yet acknowledged) per connection.
pub const MAX_INFLIGHT: usize = 100;

/// Per-window state, published as JSON on [`Topics::state`].
///
/// Every model head appears as a top-level key (`"arousal": 0.42`) so Home Assistant value
/// templates stay trivial; it is `null` when the window failed the quality gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMessage {
    /// End of the window, RFC 3339 UTC (millisecond precision).
    pub time: String,
    /// Start of the window, ms since the Unix epoch.
    pub window_start_ms: i64,
    /// Window sequence number for this sensor since the gateway started.
    pub window: u64,
    pub sensor: String,
    /// Model head scores in `[0, 1]`; `null` when not scored.
    #[serde(flatten)]
    pub scores: BTreeMap<String, Option<f32>>,
    pub hr_bpm: Option<f32>,
    pub rmssd_ms: Option<f32>,
    pub sdnn_ms: Option<f32>,
    /// Share (0–1) of the window's RR intervals corrected or dropped as ectopic beats or
    /// detection artefacts before RMSSD/SDNN were computed on normal-to-normal intervals.
    #[serde(default)]
    pub rr_corrected: Option<f32>,
    /// True until the sensor has a wearer baseline (`[baseline] min_windows` good windows
    /// within `horizon_days`); the relative values below are `null` meanwhile.
    #[serde(default)]
    pub calibrating: bool,
    /// Heart rate, RMSSD and SDNN relative to the wearer's baseline: (value − the wearer's
    /// median) / the wearer's spread (1.4826 × MAD). `+2` = clearly above their usual.
    #[serde(default)]
    pub hr_relative: Option<f32>,
    #[serde(default)]
    pub rmssd_relative: Option<f32>,
    #[serde(default)]
    pub sdnn_relative: Option<f32>,
    /// `"good"` or the failed checks joined with `+` (`"flat"`, `"clipping"`, `"implausible_rr"`).
    pub quality: String,
    /// Model version that scored this window (`<file stem>@<sha256 prefix>`).
    pub model: String,
}

pub use crate::time::rfc3339_ms;

/// Publish / acknowledgement counters of one link.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// QoS 1 publishes written to the socket (all connections).
    pub sent: AtomicU64,
    /// PUBACKs received.
    pub acked: AtomicU64,
    /// Outbox entries acknowledged (and deleted).
    pub delivered: AtomicU64,
    /// Successful (re)connections.
    pub connects: AtomicU64,
}

/// What the link reports when closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkReport {
    pub sent: u64,
    pub acked: u64,
    /// Outbox entries delivered (acknowledged) during this run.
    pub delivered: u64,
    /// Undelivered messages left in the outbox (delivered after the next start).
    pub pending: u64,
    /// Messages dropped because the outbox was full.
    pub dropped: u64,
    pub connects: u64,
    /// Everything was acknowledged before disconnecting.
    pub all_acked: bool,
}

enum Ctl {
    Retained {
        topic: String,
        payload: Vec<u8>,
    },
    Transient {
        topic: String,
        payload: Vec<u8>,
    },
    Close {
        timeout: Duration,
        done: oneshot::Sender<LinkReport>,
    },
}

/// Inbound commands and self-reports waiting to be applied; beyond this a message is dropped
/// and answered on the error topic.
pub const INPUT_QUEUE: usize = 256;

/// Largest inbound MQTT packet the client reads; a bigger one closes the connection (the
/// client cannot skip it), which the link then backs off from and reports.
pub const MAX_INCOMING_PACKET: usize = 256 * 1024;

/// rumqttc options for `cfg` (host, port, keep-alive, credentials, TLS): the one place that
/// turns `[mqtt]` into a connection, for the gateway's link and for subscribers alike.
pub fn client_options(cfg: &MqttConfig, tls: Option<&TlsFiles>, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)));
    o.set_max_packet_size(MAX_INCOMING_PACKET, 256 * 1024);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        o.set_credentials(u.clone(), p.clone());
    }
    if let Some(t) = tls {
        // rumqttc builds its rustls config with the process-wide crypto provider. Two are
        // compiled in (ring, which this crate picks; aws-lc-rs, which `tough` switches on for
        // the fleet's signatures), and with two rustls refuses to guess: name ring, once.
        // Err only means a provider is already installed.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: t.ca.clone(),
            alpn: None,
            client_auth: t.client.clone(),
        }));
    }
    o
}

/// Parsed state messages (or `topic: reason`) with their receive time.
pub type StateFeed = mpsc::UnboundedReceiver<(Result<StateMessage, String>, tokio::time::Instant)>;

/// Subscribe to every sensor's state of `gateway` and deliver each parsed message with its
/// receive time. Re-subscribes after every reconnect (a clean session forgets
/// subscriptions). Messages that do not parse are reported as `Err(topic: reason)`.
pub fn subscribe_states(
    cfg: &MqttConfig,
    tls: Option<&TlsFiles>,
    gateway: &str,
    client_id: &str,
) -> (StateFeed, JoinHandle<()>) {
    let (client, mut ev) = AsyncClient::new(client_options(cfg, tls, client_id), 64);
    let filter = Topics::new(gateway).state_all();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = tokio::time::Instant::now();
                    let m = serde_json::from_slice::<StateMessage>(&p.payload)
                        .map_err(|e| format!("{}: unreadable state message: {e}", p.topic));
                    if tx.send((m, now)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (rx, task)
}

/// Connect once to the broker of `cfg` (with its credentials and TLS) and disconnect: `Ok`
/// on CONNACK, else (what went wrong, what to check) — for `affectgate doctor`.
pub async fn probe(
    cfg: &MqttConfig,
    tls: Option<&TlsFiles>,
    client_id: &str,
    timeout: Duration,
) -> Result<(), (String, String)> {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    let (client, mut ev) = AsyncClient::new(client_options(cfg, tls, client_id), 4);
    let res = tokio::time::timeout(timeout, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    let at = format!("{}:{}", cfg.host, cfg.port);
    let hostport = "check mqtt.host/mqtt.port".to_string();
    match res {
        Ok(Ok(())) => Ok(()),
        Err(_) => Err((
            format!("no answer from {at} within {} s", timeout.as_secs()),
            format!("{hostport} and the firewall"),
        )),
        Ok(Err(E::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized))) => Err((
            format!("{at} refused the credentials"),
            "check mqtt.username/mqtt.password".into(),
        )),
        Ok(Err(E::ConnectionRefused(code))) => {
            Err((format!("{at} refused the connection: {code:?}"), hostport))
        }
        Ok(Err(E::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err((
            format!("nothing listens on {at}"),
            format!("is the broker running (`systemctl status mosquitto`)? {hostport}"),
        )),
        Ok(Err(E::Tls(e))) => Err((
            format!("TLS with {at} failed: {e}"),
            "check [mqtt.tls] ca_file (the CA that signed the broker's certificate) and client_cert/client_key".into(),
        )),
        Ok(Err(e)) => Err((format!("{at}: {e}"), hostport)),
    }
}

/// Settings of a link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub mqtt: MqttConfig,
    pub gateway: String,
    pub client_id: String,
    /// Topic filters to subscribe to on every connect; messages arrive on
    /// [`MqttLink::take_incoming`].
    pub subscribe: Vec<String>,
    /// Home Assistant's status topic: `online` there re-publishes retained + last states.
    pub ha_status: Option<String>,
    /// TLS material (PEM bytes), read from `[mqtt.tls]` at start.
    pub tls: Option<TlsFiles>,
    /// A state message sent more than this after its window's end goes to the sensor's
    /// `history` topic instead of `state` (see the module docs). `None`: never.
    pub late_after: Option<Duration>,
}

/// The topic an outbox message is sent on: its own, or — for a window's state sent more than
/// `late_after` after the window's end (`time`) — the sensor's `history` topic. A payload
/// without a readable `time` keeps its topic.
pub fn delivery_topic(
    topic: &str,
    payload: &[u8],
    now_ns: i64,
    late_after: Duration,
) -> Option<String> {
    #[derive(Deserialize)]
    struct Time<'a> {
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let base = topic.strip_suffix("/state")?;
    let t: Time = serde_json::from_slice(payload).ok()?;
    let end_ns = crate::time::parse_rfc3339(&t.time).ok()?;
    let late = now_ns.saturating_sub(end_ns) > late_after.as_nanos().min(i64::MAX as u128) as i64;
    late.then(|| format!("{base}/history"))
}

/// PEM contents for a TLS connection.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    /// (certificate, key)
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsFiles")
            .field("ca_bytes", &self.ca.len())
            .field("client_auth", &self.client.is_some())
            .finish()
    }
}

/// Errors reading `[mqtt.tls]` files.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {path}: {source} (check the path; PEM files are expected)")]
pub struct TlsFileError {
    pub key: &'static str,
    pub path: std::path::PathBuf,
    pub source: std::io::Error,
}

impl TlsFiles {
    /// Read the PEM files of `tls` (paths as given: [`crate::config::Config::load`] has
    /// resolved relative ones).
    pub fn load(tls: &MqttTls) -> Result<TlsFiles, TlsFileError> {
        let read = |key: &'static str, p: &std::path::Path| {
            let path = p.to_path_buf();
            std::fs::read(&path).map_err(|source| TlsFileError { key, path, source })
        };
        let ca = read("mqtt.tls.ca_file", &tls.ca_file)?;
        let client = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((
                read("mqtt.tls.client_cert", c)?,
                read("mqtt.tls.client_key", k)?,
            )),
            _ => None,
        };
        Ok(TlsFiles { ca, client })
    }
}

/// One message received on the subscribed filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The broker delivered its retained copy (at subscribe time), not a live publish.
    pub retained: bool,
}

/// Messages received on the subscribed filters.
pub type Incoming = mpsc::Receiver<Delivery>;

/// The connection task's handle (see the module docs).
pub struct MqttLink {
    ctl: mpsc::UnboundedSender<Ctl>,
    wake: Arc<Notify>,
    topics: Topics,
    counters: Arc<LinkCounters>,
    connected: watch::Receiver<bool>,
    incoming: std::sync::Mutex<Option<Incoming>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl MqttLink {
    /// Start the connection task. Returns at once; it connects (and reconnects) in the
    /// background and publishes the outbox whenever connected.
    pub fn start(opts: LinkOptions, outbox: Outbox) -> MqttLink {
        let topics = Topics::new(&opts.gateway);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let counters = Arc::new(LinkCounters::default());
        let (conn_tx, connected) = watch::channel(false);
        let (in_tx, in_rx) = mpsc::channel(INPUT_QUEUE);
        let task = tokio::spawn(
            Pump {
                opts,
                outbox,
                topics: topics.clone(),
                counters: counters.clone(),
                conn_tx,
                in_tx,
                wake: wake.clone(),
                retained: RetainedSet::default(),
                last_state: HashMap::new(),
            }
            .run(ctl_rx),
        );
        MqttLink {
            ctl: ctl_tx,
            wake,
            topics,
            counters,
            connected,
            incoming: std::sync::Mutex::new(Some(in_rx)),
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    /// Messages received on the subscribed filters (once).
    pub fn take_incoming(&self) -> Option<Incoming> {
        self.incoming.lock().ok()?.take()
    }

    /// Wait until connected, or `timeout`. Returns whether connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// New outbox entries are waiting.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A retained message, remembered and re-sent on every connect (availability, discovery).
    /// An empty payload deletes the retained message at the broker and is then forgotten.
    pub fn retain(&self, topic: String, payload: Vec<u8>) {
        let _ = self.ctl.send(Ctl::Retained { topic, payload });
    }

    /// A one-off message (errors, replies), sent if connected, else dropped.
    pub fn send(&self, topic: String, payload: Vec<u8>) {
        let _ = self.ctl.send(Ctl::Transient { topic, payload });
    }

    /// Graceful close: deliver the outbox (up to `timeout`), then publish `offline`
    /// (retained), disconnect and stop. Undelivered messages stay in the outbox.
    pub async fn close(&self, timeout: Duration) -> LinkReport {
        let (tx, rx) = oneshot::channel();
        let _ = self.ctl.send(Ctl::Close { timeout, done: tx });
        let rep = rx.await.unwrap_or_default();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        rep
    }
}

struct Pump {
    opts: LinkOptions,
    outbox: Outbox,
    topics: Topics,
    counters: Arc<LinkCounters>,
    conn_tx: watch::Sender<bool>,
    in_tx: mpsc::Sender<Delivery>,
    wake: Arc<Notify>,
    /// Retained messages in first-publication order (status first).
    retained: RetainedSet,
    /// Last state payload per topic, re-sent when Home Assistant restarts.
    last_state: HashMap<String, Vec<u8>>,
}

/// The retained messages the link (re-)announces, in first-publication order, with an index
/// by topic: a gateway with hundreds of straps holds thousands (seven discovery configs and
/// an availability per strap), and every availability change looks its topic up — a linear
/// search made that quadratic (10 000 sensors: 80 000 topics, a shutdown's 10 000 `offline`s
/// scanned them all, seconds of CPU in the one task that also has to say `offline`).
#[derive(Default)]
struct RetainedSet {
    order: Vec<(String, Vec<u8>)>,
    index: HashMap<String, usize>,
}

impl RetainedSet {
    fn set(&mut self, topic: String, payload: Vec<u8>) {
        match self.index.get(&topic) {
            Some(&i) => self.order[i].1 = payload,
            None => {
                self.index.insert(topic.clone(), self.order.len());
                self.order.push((topic, payload));
            }
        }
    }

    fn remove(&mut self, topic: &str) {
        if self.index.remove(topic).is_some() {
            self.order.retain(|(t, _)| t != topic);
            self.reindex();
        }
    }

    /// Forget deletions (empty payloads) once they were requested.
    fn drop_deletions(&mut self) {
        let before = self.order.len();
        self.order.retain(|(_, p)| !p.is_empty());
        if self.order.len() != before {
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .order
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.clone(), i))
            .collect();
    }

    fn iter(&self) -> impl Iterator<Item = &(String, Vec<u8>)> {
        self.order.iter()
    }
}

/// A QoS 1 request waiting for room in rumqttc's request queue.
struct Pending {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// Per-connection bookkeeping: QoS 1 requests in order → packet ids → outbox entries.
#[derive(Default)]
struct Conn {
    connected: bool,
    /// Tags of requested QoS 1 publishes not yet written (`Some(seq)` for outbox entries).
    fifo: VecDeque<Option<u64>>,
    /// Written, not yet acknowledged: packet id → tag.
    inflight: HashMap<u16, Option<u64>>,
    /// Highest outbox sequence number requested on this connection.
    cursor: u64,
    /// Announcements that did not fit into the request queue yet (hundreds of straps × 7
    /// discovery configs at connect): sent before any further outbox entry.
    backlog: VecDeque<Pending>,
}

enum Closing {
    No,
    /// Delivering the outbox until the deadline.
    Draining(tokio::time::Instant, oneshot::Sender<LinkReport>),
    /// `offline` requested; waiting for its acknowledgement.
    Offline(tokio::time::Instant, oneshot::Sender<LinkReport>),
}

impl Pump {
    fn mqtt_options(&self) -> MqttOptions {
        let mut o = client_options(
            &self.opts.mqtt,
            self.opts.tls.as_ref(),
            &self.opts.client_id,
        );
        o.set_last_will(LastWill::new(
            self.topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        o.set_inflight(MAX_INFLIGHT as u16 + 20);
        o
    }

    fn set_retained(&mut self, topic: String, payload: Vec<u8>) {
        self.retained.set(topic, payload);
    }

    /// Request a non-outbox QoS 1 publish; kept in the backlog when rumqttc's queue is full
    /// (never dropped while the connection lasts).
    fn request(
        &self,
        client: &AsyncClient,
        c: &mut Conn,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) {
        if c.backlog.is_empty()
            && client
                .try_publish(topic, QoS::AtLeastOnce, retain, payload.clone())
                .is_ok()
        {
            c.fifo.push_back(None);
            return;
        }
        c.backlog.push_back(Pending {
            topic: topic.to_string(),
            payload,
            retain,
        });
    }

    /// Move backlog entries into rumqttc's queue while there is room. True when empty.
    fn drain_backlog(&self, client: &AsyncClient, c: &mut Conn) -> bool {
        while let Some(p) = c.backlog.pop_front() {
            match client.try_publish(
                p.topic.clone(),
                QoS::AtLeastOnce,
                p.retain,
                p.payload.clone(),
            ) {
                Ok(()) => c.fifo.push_back(None),
                Err(_) => {
                    c.backlog.push_front(p);
                    return false;
                }
            }
        }
        true
    }

    fn announce(&mut self, client: &AsyncClient, c: &mut Conn, with_states: bool) {
        for (t, p) in self.retained.iter() {
            self.request(client, c, t, p.clone(), true);
        }
        // Deletions (empty retained payloads) only need to reach the broker once.
        self.retained.drop_deletions();
        if with_states {
            let now = crate::time::now_ns();
            for (t, p) in &self.last_state {
                // A state that has become late since is history already, not news.
                let late = self
                    .opts
                    .late_after
                    .is_some_and(|d| delivery_topic(t, p, now, d).is_some());
                if !late {
                    self.request(client, c, t, p.clone(), false);
                }
            }
        }
    }

    fn feed(&mut self, client: &AsyncClient, c: &mut Conn) {
        if !c.connected || !self.drain_backlog(client, c) {
            return;
        }
        let busy = c.fifo.len() + c.inflight.len();
        if busy >= MAX_INFLIGHT {
            return;
        }
        match self.outbox.durable_after(c.cursor, MAX_INFLIGHT - busy) {
            Ok(msgs) => {
                let now = crate::time::now_ns();
                for m in msgs {
                    let late = self
                        .opts
                        .late_after
                        .and_then(|d| delivery_topic(&m.topic, &m.payload, now, d));
                    let topic = late.as_deref().unwrap_or(&m.topic);
                    if client
                        .try_publish(topic, QoS::AtLeastOnce, false, m.payload.clone())
                        .is_err()
                    {
                        break;
                    }
                    c.fifo.push_back(Some(m.seq));
                    c.cursor = m.seq;
                    if late.is_none() {
                        // Only current states are re-sent when Home Assistant restarts.
                        self.last_state.insert(m.topic, m.payload);
                    }
                }
            }
            Err(e) => tracing::error!("reading the MQTT outbox failed: {e}"),
        }
    }

    fn report(&self, all_acked: bool) -> LinkReport {
        LinkReport {
            sent: self.counters.sent.load(Ordering::Relaxed),
            acked: self.counters.acked.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            pending: self.outbox.len() as u64,
            dropped: self.outbox.dropped(),
            connects: self.counters.connects.load(Ordering::Relaxed),
            all_acked,
        }
    }

    async fn run(mut self, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
        self.retained.set(self.topics.status(), b"online".to_vec());
        let broker = format!("{}:{}", self.opts.mqtt.host, self.opts.mqtt.port);
        // The one reconnect back-off: 250 ms doubling to 30 s, jitter ±20 % (not the BLE ±50 %:
        // after a broker restart the link should be back within a few hundred ms).
        let mut backoff =
            Backoff::new(Duration::from_millis(250), Duration::from_secs(30)).with_jitter(0.2);
        let mut reported_down = false;
        let mut closing = Closing::No;
        // Set when a connection was dropped because of what the broker sent us (e.g. a message
        // over the packet limit): said on the error topic once the next connection is up.
        let mut poisoned: Option<String> = None;
        loop {
            let mut acked_connect = false;
            let (client, mut el) = AsyncClient::new(self.mqtt_options(), 4 * MAX_INFLIGHT);
            let mut net = rumqttc::NetworkOptions::new();
            // Small JSON messages: Nagle's algorithm would add up to 40 ms per publish.
            net.set_tcp_nodelay(true);
            el.set_network_options(net);
            // rumqttc's `poll` is not cancel-safe while connecting, so it runs in its own task
            // and never sits in a `select!` that could drop it.
            let (ev_tx, mut ev_rx) = mpsc::channel(64);
            let el_task = tokio::spawn(async move {
                loop {
                    let ev = el.poll().await;
                    let end = ev.is_err();
                    if ev_tx.send(ev).await.is_err() || end {
                        return;
                    }
                }
            });
            let mut c = Conn::default();
            let failed = loop {
                // Shutdown progress.
                let now = tokio::time::Instant::now();
                closing = match closing {
                    Closing::Draining(deadline, done) => {
                        let drained =
                            self.outbox.is_empty() && c.fifo.is_empty() && c.inflight.is_empty();
                        if (drained && c.connected) || now >= deadline {
                            if c.connected {
                                // Announcements still waiting for rumqttc's queue go: each is
                                // remembered and announced again on the next connect, and
                                // `offline` must not queue behind them (with thousands of
                                // straps it missed its deadline, and a clean disconnect does
                                // not fire the last will: the broker kept `online`).
                                c.backlog.retain(|p| !p.retain);
                                self.set_retained(self.topics.status(), b"offline".to_vec());
                                self.request(
                                    &client,
                                    &mut c,
                                    &self.topics.status(),
                                    b"offline".to_vec(),
                                    true,
                                );
                                Closing::Offline(now + Duration::from_secs(2), done)
                            } else {
                                let _ = done.send(self.report(false));
                                return;
                            }
                        } else {
                            Closing::Draining(deadline, done)
                        }
                    }
                    Closing::Offline(deadline, done) => {
                        if (c.fifo.is_empty() && c.inflight.is_empty() && c.backlog.is_empty())
                            || now >= deadline
                        {
                            let all = self.outbox.is_empty()
                                && c.fifo.is_empty()
                                && c.inflight.is_empty();
                            let _ = client.try_disconnect();
                            let _ = tokio::time::timeout(Duration::from_millis(300), el_task).await;
                            let _ = done.send(self.report(all));
                            return;
                        }
                        Closing::Offline(deadline, done)
                    }
                    Closing::No => Closing::No,
                };
                if matches!(closing, Closing::No | Closing::Draining(..)) {
                    self.feed(&client, &mut c);
                } else {
                    self.drain_backlog(&client, &mut c);
                }
                tokio::select! {
                    ev = ev_rx.recv() => match ev.unwrap_or(Err(rumqttc::ConnectionError::RequestsDone)) {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            c.connected = true;
                            // The back-off is reset when this connection ends for an ordinary
                            // reason (below), not here: a connection that the broker's first
                            // message kills (a retained message over the packet limit) must
                            // not be retried 3× a second for ever.
                            acked_connect = true;
                            if let Some(why) = poisoned.take() {
                                let msg = inputs::error_json(None, None, &why);
                                self.request(&client, &mut c, &self.topics.error(), msg.into_bytes(), false);
                            }
                            self.counters.connects.fetch_add(1, Ordering::Relaxed);
                            if reported_down {
                                tracing::info!(broker, pending = self.outbox.len(), "MQTT reconnected");
                            } else {
                                tracing::info!(broker, pending = self.outbox.len(), "MQTT connected");
                            }
                            reported_down = false;
                            for f in self.opts.subscribe.iter().chain(self.opts.ha_status.iter()) {
                                let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                            }
                            // Retained announcements first (HA needs discovery before states).
                            self.announce(&client, &mut c, false);
                            let _ = self.conn_tx.send(true);
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                            self.counters.sent.fetch_add(1, Ordering::Relaxed);
                            let tag = c.fifo.pop_front().flatten();
                            c.inflight.insert(pkid, tag);
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(tag) = c.inflight.remove(&ack.pkid) {
                                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                                if let Some(seq) = tag {
                                    match self.outbox.remove(seq) {
                                        Ok(()) => { self.counters.delivered.fetch_add(1, Ordering::Relaxed); }
                                        Err(e) => tracing::error!("outbox: {e}"),
                                    }
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if self.opts.ha_status.as_deref() == Some(p.topic.as_str()) {
                                if discovery::is_ha_online(&p.payload) {
                                    tracing::info!("Home Assistant came online: re-publishing discovery, availability and last states");
                                    self.announce(&client, &mut c, true);
                                }
                            } else if self
                                .in_tx
                                .try_send(Delivery {
                                    topic: p.topic.clone(),
                                    payload: p.payload.to_vec(),
                                    retained: p.retain,
                                })
                                .is_err()
                            {
                                // Answered like any rejected input, so a sender (a dashboard
                                // button, a script) learns to send it again.
                                tracing::warn!(topic = %p.topic, "input queue full: message dropped and answered on the error topic");
                                let msg = inputs::error_json(Some(&p.topic), None, &format!("input queue full ({INPUT_QUEUE} messages waiting): this message was dropped, nothing was applied; send it again"));
                                self.request(&client, &mut c, &self.topics.error(), msg.into_bytes(), false);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => break Some(e),
                    },
                    _ = self.wake.notified() => {}
                    msg = ctl.recv() => match msg {
                        Some(Ctl::Retained { topic, payload }) => {
                            if c.connected {
                                self.request(&client, &mut c, &topic, payload.clone(), true);
                                if payload.is_empty() {
                                    self.retained.remove(&topic);
                                } else {
                                    self.set_retained(topic, payload);
                                }
                            } else {
                                // Kept (deletions too) until the next connect announces it.
                                self.set_retained(topic, payload);
                            }
                        }
                        Some(Ctl::Transient { topic, payload }) => {
                            if c.connected {
                                self.request(&client, &mut c, &topic, payload, false);
                            }
                        }
                        Some(Ctl::Close { timeout, done }) => {
                            closing = Closing::Draining(tokio::time::Instant::now() + timeout, done);
                        }
                        None => {
                            closing = match closing {
                                Closing::No => return,
                                other => other,
                            };
                        }
                    },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            };
            // Connection lost (or never made).
            el_task.abort();
            let _ = self.conn_tx.send(false);
            match &failed {
                // The broker sent something this client cannot take: the same thing will come
                // again on the next connection, so keep backing off and say why.
                Some(rumqttc::ConnectionError::MqttState(
                    e @ rumqttc::StateError::Deserialization(_),
                )) => {
                    tracing::error!(broker, "MQTT connection closed by an inbound message this gateway cannot accept ({e}); backing off");
                    poisoned = Some(format!(
                        "an inbound message closed the MQTT connection ({e}); inbound messages are limited to {} KiB (commands and self-reports to {} bytes). If it is retained on one of this gateway's topics, delete it: mosquitto_pub -r -n -t <topic>",
                        MAX_INCOMING_PACKET / 1024,
                        crate::mqtt::inputs::MAX_PAYLOAD_BYTES
                    ));
                }
                _ if acked_connect => backoff.reset(),
                _ => {}
            }
            if let Some(e) = failed {
                if !reported_down {
                    tracing::warn!(
                        broker,
                        error = %e,
                        pending = self.outbox.len(),
                        "MQTT connection lost or refused; retrying with back-off, state messages wait in the outbox (is the broker running? check mqtt.host / mqtt.port)"
                    );
                    reported_down = true;
                }
            }
            if let Closing::Draining(deadline, _) | Closing::Offline(deadline, _) = &closing {
                if tokio::time::Instant::now() >= *deadline {
                    if let Closing::Draining(_, done) | Closing::Offline(_, done) = closing {
                        let _ = done.send(self.report(false));
                    }
                    return;
                }
            }
            // Back-off with jitter, still answering control messages.
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    msg = ctl.recv() => match msg {
                        Some(Ctl::Retained { topic, payload }) => self.set_retained(topic, payload),
                        Some(Ctl::Transient { .. }) => {}
                        Some(Ctl::Close { timeout, done }) => {
                            closing = Closing::Draining(tokio::time::Instant::now() + timeout, done);
                            break;
                        }
                        None => return,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(time: &str) -> Vec<u8> {
        format!(r#"{{"time":"{time}","window":3,"sensor":"h10","arousal":0.5}}"#).into_bytes()
    }

    /// A window's state goes to `history` only when it is sent more than `late_after` after
    /// the window's end; everything else keeps its topic.
    #[test]
    fn late_states_go_to_the_history_topic() {
        let end = crate::time::parse_rfc3339("2026-12-04T10:00:00.000Z").unwrap();
        let late_after = Duration::from_secs(30);
        let t = "affectgate/gw/h10/state";
        let p = state("2026-12-04T10:00:00.000Z");
        let s = 1_000_000_000i64;
        assert_eq!(
            delivery_topic(t, &p, end + 30 * s, late_after),
            None,
            "30 s: still current"
        );
        assert_eq!(
            delivery_topic(t, &p, end + 31 * s, late_after).as_deref(),
            Some("affectgate/gw/h10/history")
        );
        assert_eq!(
            delivery_topic(t, &p, end + 7_200 * s, late_after).as_deref(),
            Some("affectgate/gw/h10/history"),
            "a backlog from a two-hour outage"
        );
        // Fast replays run ahead of the wall clock: never late.
        assert_eq!(delivery_topic(t, &p, end - 3_600 * s, late_after), None);
        // Not a state topic, or no readable time: the message keeps its topic.
        assert_eq!(
            delivery_topic("affectgate/gw/h10/hr", &p, end + 3_600 * s, late_after),
            None
        );
        assert_eq!(delivery_topic(t, b"{}", end + 3_600 * s, late_after), None);
        assert_eq!(
            delivery_topic(t, &state("yesterday"), end + 3_600 * s, late_after),
            None
        );
        assert_eq!(
            delivery_topic(t, b"\xff", end + 3_600 * s, late_after),
            None
        );
    }

    /// Home Assistant's switch sends exactly what the command parser accepts.
    #[test]
    fn the_retraining_switch_speaks_the_command_parser() {
        let msgs = discovery::gateway_discovery_messages(&discovery::GatewayDiscoveryInput {
            prefix: "homeassistant",
            gateway: "gw",
            sw_version: "0",
            retrain_enabled: true,
            fleet_enabled: true,
        });
        let (_, p) = msgs
            .iter()
            .find(|(t, _)| t == "homeassistant/switch/affectgate_gw/auto_retrain/config")
            .expect("the switch");
        let sw: serde_json::Value = serde_json::from_str(p).unwrap();
        for (key, enabled) in [("payload_on", true), ("payload_off", false)] {
            let topic = sw["command_topic"].as_str().unwrap();
            let payload = sw[key].as_str().unwrap().as_bytes();
            assert_eq!(
                inputs::parse_delivery("gw", topic, payload, false, 0, &[]),
                Ok(Some(inputs::Input::AutoRetrain { enabled })),
                "{key}"
            );
        }
        // Its state template reads the status the scheduler publishes.
        let st = crate::retrain::status::RetrainStatus {
            paused: true,
            ..Default::default()
        };
        assert_eq!(serde_json::to_value(&st).unwrap()["paused"], true);
        assert!(sw["value_template"]
            .as_str()
            .unwrap()
            .contains("value_json.paused"));
    }
}
