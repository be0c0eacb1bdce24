//! MQTT: the gateway's only output to the home network.
//!
//! * [`Topics`] — every topic the plugin uses, built in one place from the gateway id
//!   (ids are validated `[a-zA-Z0-9_-]` by the config, so they cannot inject `/`, `+` or `#`).
//! * [`StateMessage`] — the JSON published per window on `affectgate/<gateway>/<sensor>/state`.
//! * [`MqttLink`] — a rumqttc client plus its event-loop task: announces `online` (retained,
//!   QoS 1) on every (re)connect, registers `offline` as the retained last will, reconnects
//!   with back-off, counts publishes and acknowledgements so [`MqttLink::close`] can wait until
//!   the broker has everything before saying `offline` and disconnecting.
//! * [`broker`] — an embedded rumqttd broker, used by `affectgate demo` only.
//!
//! Publishing never stalls ingest for long: when rumqttc's request queue (256 messages) is
//! full, [`MqttLink::publish`] drops the message at once if the broker is down, or after
//! waiting [`PUBLISH_WAIT`] for room if it is merely slow, and counts it (the window itself is
//! already in the store). Delivery across broker outages is the outbox's job (home-automation
//! issue).

pub mod broker;
pub mod discovery;
pub mod inputs;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MqttConfig;

/// How long a publish may wait for room in the client's queue before it is dropped.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// Topic names of one gateway.
#[derive(Debug, Clone)]
pub struct Topics {
    gateway: String,
}

impl Topics {
    pub fn new(gateway: &str) -> Self {
        Self {
            gateway: gateway.to_string(),
        }
    }
    /// `affectgate/<gateway>/status`: `online` / `offline`, retained (last will).
    pub fn status(&self) -> String {
        format!("affectgate/{}/status", self.gateway)
    }
    /// `affectgate/<gateway>/<sensor>/state`: [`StateMessage`] per window, QoS 1.
    pub fn state(&self, sensor: &str) -> String {
        format!("affectgate/{}/{}/state", self.gateway, sensor)
    }
    /// Wildcard for all sensors' state.
    pub fn state_all(&self) -> String {
        format!("affectgate/{}/+/state", self.gateway)
    }
    /// `affectgate/<gateway>/error`: problems a subscriber should see.
    pub fn error(&self) -> String {
        format!("affectgate/{}/error", self.gateway)
    }
}

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
    /// `"good"` or the failed checks joined with `+` (`"flat"`, `"clipping"`, `"implausible_rr"`).
    pub quality: String,
    /// Model version that scored this window (`<file stem>@<sha256 prefix>`).
    pub model: String,
}

/// Format ns since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(t_ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(t_ns.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Publish / acknowledgement counters of one link.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// QoS 1 publishes handed to the client (queued).
    pub requested: AtomicU64,
    /// QoS 1 publishes written to the socket.
    pub sent: AtomicU64,
    /// PUBACKs received.
    pub acked: AtomicU64,
    /// Messages dropped because the client queue stayed full.
    pub dropped: AtomicU64,
    /// Successful (re)connections.
    pub connects: AtomicU64,
}

/// A connected (or connecting) MQTT client with its event loop running in a task.
pub struct MqttLink {
    client: AsyncClient,
    topics: Topics,
    counters: Arc<LinkCounters>,
    connected: watch::Receiver<bool>,
    closing: Arc<AtomicBool>,
    task: JoinHandle<()>,
    broker: String,
}

impl MqttLink {
    /// Start connecting to the broker of `cfg` as `client_id`. Returns immediately; the event
    /// loop connects in the background (see [`MqttLink::wait_connected`]).
    pub fn start(cfg: &MqttConfig, gateway: &str, client_id: &str) -> MqttLink {
        let topics = Topics::new(gateway);
        let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)));
        opts.set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            opts.set_credentials(u.clone(), p.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let mut net = rumqttc::NetworkOptions::new();
        // Small JSON messages: Nagle's algorithm would add up to 40 ms per publish.
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let counters = Arc::new(LinkCounters::default());
        let closing = Arc::new(AtomicBool::new(false));
        let (conn_tx, connected) = watch::channel(false);
        let broker = format!("{}:{}", cfg.host, cfg.port);
        let task = tokio::spawn(event_loop(
            eventloop,
            client.clone(),
            topics.status(),
            counters.clone(),
            closing.clone(),
            conn_tx,
            broker.clone(),
        ));
        MqttLink {
            client,
            topics,
            counters,
            connected,
            closing,
            task,
            broker,
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    /// The underlying client (to subscribe, e.g. in the demo).
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Wait until the first CONNACK, or `timeout`. Returns whether connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Publish with QoS 1 (see the module docs on why this never waits long). Returns false
    /// when the message had to be dropped.
    pub async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        match self
            .client
            .try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload.clone())
        {
            Ok(()) => {
                self.counters.requested.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) if !*self.connected.borrow() => {
                // Broker down and the queue full: waiting would only stall the pipeline.
                self.drop_message(&topic);
                false
            }
            Err(_) => {
                let r = tokio::time::timeout(
                    PUBLISH_WAIT,
                    self.client
                        .publish(topic.clone(), QoS::AtLeastOnce, retain, payload),
                )
                .await;
                if matches!(r, Ok(Ok(()))) {
                    self.counters.requested.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                self.drop_message(&topic);
                false
            }
        }
    }

    fn drop_message(&self, topic: &str) {
        let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // One line per 100 drops: a long outage must not flood the log.
        if n == 1 || n.is_multiple_of(100) {
            tracing::warn!(
                topic,
                dropped_total = n,
                "MQTT queue full (broker {} slow or unreachable): message dropped; the window is kept in the store",
                self.broker
            );
        }
    }

    /// Graceful close: publish `offline` (retained), wait up to `timeout` for the broker to
    /// acknowledge every publish, disconnect, and stop the event loop.
    pub async fn close(self, timeout: Duration) -> LinkReport {
        let _ = self
            .publish(self.topics.status(), b"offline".to_vec(), true)
            .await;
        // Wait until every queued publish (states, `online`s, this `offline`) is acknowledged.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut all_acked = false;
        while tokio::time::Instant::now() < deadline {
            let requested = self.counters.requested.load(Ordering::Relaxed);
            let acked = self.counters.acked.load(Ordering::Relaxed);
            if acked >= requested {
                all_acked = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        LinkReport {
            sent: self.counters.sent.load(Ordering::Relaxed),
            acked: self.counters.acked.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            all_acked,
        }
    }
}

/// What [`MqttLink::close`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkReport {
    pub sent: u64,
    pub acked: u64,
    pub dropped: u64,
    /// Every publish was acknowledged before disconnecting.
    pub all_acked: bool,
}

async fn event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    status_topic: String,
    counters: Arc<LinkCounters>,
    closing: Arc<AtomicBool>,
    connected: watch::Sender<bool>,
    broker: String,
) {
    let mut backoff = Duration::from_millis(250);
    let mut reported_down = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(250);
                counters.connects.fetch_add(1, Ordering::Relaxed);
                if reported_down {
                    tracing::info!(broker, "MQTT reconnected");
                } else {
                    tracing::info!(broker, "MQTT connected");
                }
                reported_down = false;
                // Announce ourselves on every connect: the broker may have published our
                // last will while we were away.
                match client.try_publish(status_topic.clone(), QoS::AtLeastOnce, true, "online") {
                    Ok(()) => {
                        counters.requested.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tracing::warn!("could not queue the `online` status message"),
                }
                let _ = connected.send(true);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                if closing.load(Ordering::SeqCst) {
                    // Let rumqttc write the DISCONNECT packet, then stop.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if closing.load(Ordering::SeqCst) {
                    return;
                }
                let _ = connected.send(false);
                if !reported_down {
                    tracing::warn!(
                        broker,
                        error = %e,
                        "MQTT connection failed; retrying with back-off (is the broker running? check mqtt.host / mqtt.port)"
                    );
                    reported_down = true;
                } else {
                    tracing::debug!(broker, error = %e, "MQTT still down");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
