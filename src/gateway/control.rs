//! Control: Home Assistant discovery, and the inputs the gateway accepts over MQTT (labels,
//! commands) applied to the store, the scheduler and the run.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

/// Retained Home Assistant discovery for every configured sensor, and removal (empty
/// retained configs) for sensors announced by an earlier run but no longer configured. The
/// announced set is kept in the store so removal survives restarts.
pub(super) fn announce_discovery(
    cfg: &Config,
    store: &Arc<Store>,
    link: &MqttLink,
    sensors: &[String],
    heads: &[String],
) {
    let prefix = &cfg.mqtt.discovery_prefix;
    let gw = &cfg.gateway.id;
    let before: Vec<String> = store
        .meta_get("ha_announced")
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default();
    for old in before.iter().filter(|s| !sensors.contains(s)) {
        tracing::info!(sensor = %old, "sensor no longer configured: removing its Home Assistant entities");
        for (t, p) in discovery::removal_messages(prefix, gw, old, heads)
            .into_iter()
            .chain(discovery::legacy_removal_messages(prefix, gw, old, heads))
        {
            link.retain(t, p.into_bytes());
        }
        link.retain(link.topics().availability(old), Vec::new());
        link.retain(link.topics().live(old), Vec::new());
    }
    // The gateway device first: the straps point at it with `via_device`.
    let gateway = discovery::GatewayDiscoveryInput {
        prefix,
        gateway: gw,
        sw_version: env!("CARGO_PKG_VERSION"),
        retrain_enabled: cfg.retrain.enabled,
        fleet_enabled: cfg.fleet.enabled,
    };
    for (t, p) in discovery::gateway_discovery_messages(&gateway) {
        link.retain(t, p.into_bytes());
    }
    let announcer = Announcer::new(cfg, heads, store.clone());
    for s in sensors {
        // Old configs first: HA must delete them before the new ones claim their entity ids.
        for (t, p) in discovery::moved_to_gateway_messages(prefix, gw, s)
            .into_iter()
            .chain(discovery::legacy_removal_messages(prefix, gw, s, heads))
        {
            link.retain(t, p.into_bytes());
        }
        announcer.announce(link, s, &announcer.saved_strap(s));
    }
    if let Err(e) = store.meta_put(
        "ha_announced",
        &serde_json::to_vec(sensors).expect("ids serialise"),
    ) {
        tracing::error!("remembering announced sensors failed: {e}");
    }
}

/// Builds one strap's discovery configs: at start (with what the strap said about itself
/// in an earlier run, kept in the store) and again when a BLE strap identifies itself
/// differently ([`Announcer::identified`]).
pub(super) struct Announcer {
    prefix: String,
    gateway: String,
    heads: Vec<String>,
    window_period_s: f64,
    /// Where what a strap said about itself is kept (meta `strap_info/<sensor>`).
    store: Arc<Store>,
}

impl Announcer {
    pub(super) fn new(cfg: &Config, heads: &[String], store: Arc<Store>) -> Self {
        Announcer {
            prefix: cfg.mqtt.discovery_prefix.clone(),
            gateway: cfg.gateway.id.clone(),
            heads: heads.to_vec(),
            window_period_s: cfg.dsp.hop as f64 / crate::dsp::WINDOW_FS,
            store,
        }
    }

    fn meta_key(sensor: &str) -> String {
        format!("strap_info/{sensor}")
    }

    /// What the strap said in an earlier run (nothing for replays and synthetic ECG).
    fn saved_strap(&self, sensor: &str) -> StrapInfo {
        self.store
            .meta_get(&Self::meta_key(sensor))
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn announce(&self, link: &MqttLink, sensor: &str, info: &StrapInfo) {
        let inp = DiscoveryInput {
            prefix: &self.prefix,
            gateway: &self.gateway,
            sensor,
            heads: &self.heads,
            window_period_s: self.window_period_s,
            sw_version: env!("CARGO_PKG_VERSION"),
            strap: discovery::StrapDevice {
                name: info.name.as_deref(),
                manufacturer: info.manufacturer.as_deref(),
                model: info.model.as_deref(),
                firmware: info.firmware.as_deref(),
            },
        };
        for (t, p) in discovery::discovery_messages(&inp) {
            link.retain(t, p.into_bytes());
        }
    }

    /// A strap identified itself: when that differs from what the store knows, remember it
    /// and re-announce the strap's device (HA updates make, model and firmware in place).
    pub(super) fn identified(&self, link: &MqttLink, sensor: &str, info: &StrapInfo) {
        if self.saved_strap(sensor) == *info {
            return;
        }
        tracing::info!(
            sensor,
            ?info,
            "strap identified: updating its Home Assistant device"
        );
        let bytes = serde_json::to_vec(info).expect("strap info serialises");
        if let Err(e) = self.store.meta_put(&Self::meta_key(sensor), &bytes) {
            tracing::warn!(
                sensor,
                "remembering the strap's device information failed: {e}"
            );
        }
        self.announce(link, sensor, info);
    }
}

/// Labels and commands from MQTT, validated by [`inputs::parse_input`]. A bad payload is
/// answered on `affectgate/<gateway>/error` and logged with its topic and field; nothing
/// from the network can stop the gateway or touch stored samples.
// One argument per collaborator, each used by exactly one kind of input; a struct would
// only rename them.
#[allow(clippy::too_many_arguments)]
pub(super) async fn input_task(
    mut rx: crate::mqtt::Incoming,
    gateway: String,
    sensors: Vec<String>,
    store: Arc<Store>,
    link: Arc<MqttLink>,
    reload: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
    retrain: Option<mpsc::Sender<()>>,
    auto_retrain: Option<mpsc::UnboundedSender<bool>>,
    registry: Registry,
    fleet: Option<(String, mpsc::UnboundedSender<FleetInput>)>,
) {
    while let Some(d) = rx.recv().await {
        let (topic, payload) = (d.topic, d.payload);
        // The channel's rollout plan is retained on purpose (a gateway that starts or
        // reconnects learns the current plan): it is not a command, and goes to the agent.
        if let Some((plan_topic, tx)) = &fleet {
            if &topic == plan_topic {
                let _ = tx.send(FleetInput::Plan(payload.to_vec()));
                continue;
            }
        }
        match inputs::parse_delivery(&gateway, &topic, &payload, d.retained, now_ns(), &sensors) {
            Ok(None) => {}
            Ok(Some(Input::Label { sensor, label })) => {
                let store = store.clone();
                let res =
                    tokio::task::spawn_blocking(move || label_windows(&store, &sensor, &label))
                        .await;
                match res {
                    Ok(Ok(n)) => tracing::info!(topic, windows = n, "self-report stored as labels"),
                    Ok(Err(e)) => tracing::error!(topic, "storing labels failed: {e}"),
                    Err(e) => tracing::error!(topic, "storing labels failed: {e}"),
                }
            }
            Ok(Some(Input::Command(Command::FlushOutbox))) => {
                tracing::info!("command: flush outbox");
                let _ = store.flush();
                link.wake();
            }
            Ok(Some(Input::Command(Command::Reload))) => {
                tracing::info!("command: reload configuration");
                reload.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
            }
            // Model changes only edit the registry, exactly as `affectgate model` does: the
            // registry watcher loads the model completely and swaps it in (no window dropped
            // or scored twice), and `affectgate/<gw>/model` then says what serves.
            Ok(Some(Input::Command(Command::Update))) => match &fleet {
                Some((_, tx)) => {
                    let _ = tx.send(FleetInput::Install);
                }
                None => {
                    let error = "fleet updates are disabled (fleet.enabled = false in the config); nothing to install";
                    let msg = inputs::error_json(Some(&topic), None, error);
                    link.send(link.topics().error(), msg.into_bytes());
                    tracing::warn!(topic, "{error}");
                }
            },
            Ok(Some(Input::Command(Command::Rollback))) => {
                let r = registry.clone();
                let res = tokio::task::spawn_blocking(move || r.rollback()).await;
                model_change_result(&link, &topic, res.map_err(|e| e.to_string()), "rolled back");
            }
            Ok(Some(Input::Promote { id })) => {
                let r = registry.clone();
                let want = id.clone();
                let res =
                    tokio::task::spawn_blocking(move || r.promote(&want).map(|()| want)).await;
                model_change_result(&link, &topic, res.map_err(|e| e.to_string()), "promoted");
            }
            Ok(Some(Input::AutoRetrain { enabled })) => match &auto_retrain {
                // The scheduler pauses or resumes and says so on `affectgate/<gw>/retrain`.
                Some(tx) if tx.send(!enabled).is_ok() => {
                    tracing::info!(topic, enabled, "automatic retraining switched");
                }
                _ => {
                    let error = "on-gateway retraining is disabled (retrain.enabled = false in the config); nothing to switch";
                    let msg = inputs::error_json(Some(&topic), None, error);
                    link.send(link.topics().error(), msg.into_bytes());
                    tracing::warn!(topic, "{error}");
                }
            },
            Ok(Some(Input::Command(Command::Retrain))) => {
                let error = match &retrain {
                    None => Some("on-gateway retraining is disabled (retrain.enabled = false in the config); nothing was started"),
                    Some(tx) => match tx.try_send(()) {
                        Ok(()) => None,
                        Err(_) => Some("a retraining round is already requested or running; see affectgate/<gateway>/retrain"),
                    },
                };
                match error {
                    None => tracing::info!(topic, "retraining round requested"),
                    Some(error) => {
                        let msg = inputs::error_json(Some(&topic), None, error);
                        link.send(link.topics().error(), msg.into_bytes());
                        tracing::warn!(topic, "{error}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    topic = e.topic(),
                    field = e.field(),
                    "rejected MQTT input: {}",
                    e.message()
                );
                link.send(link.topics().error(), e.to_json().into_bytes());
            }
        }
    }
}

/// Logs a registry change asked over MQTT, or answers its refusal (unknown id, a rejected
/// candidate, nothing to roll back to) on the error topic.
fn model_change_result(
    link: &MqttLink,
    topic: &str,
    res: Result<Result<String, crate::retrain::registry::RegistryError>, String>,
    what: &str,
) {
    match res {
        Ok(Ok(id)) => {
            tracing::info!(topic, model = %id, "{what}: {id} serves from the next window on")
        }
        Ok(Err(e)) => {
            let error = e.to_string();
            tracing::warn!(topic, "{error}");
            let msg = inputs::error_json(Some(topic), None, &error);
            link.send(link.topics().error(), msg.into_bytes());
        }
        Err(e) => tracing::error!(topic, "registry task failed: {e}"),
    }
}

/// Put a self-report's labels on every stored window of `sensor` overlapping its time span
/// (labels of other names on those windows are kept). Returns the number of windows labelled.
pub fn label_windows(
    store: &Store,
    sensor: &str,
    label: &inputs::LabelReport,
) -> Result<usize, crate::store::StoreError> {
    let win_ns = (crate::dsp::WINDOW_LEN as f64 / crate::dsp::WINDOW_FS * 1e9) as i64;
    let mut n = 0;
    let hits: Vec<_> = store
        .range(sensor, label.from_ns.saturating_sub(win_ns), label.to_ns)
        .filter_map(|r| r.ok())
        .filter(|w| w.window.end_ns() > label.from_ns)
        .collect();
    for w in hits {
        let mut labels = w.labels.clone();
        for (k, v) in &label.values {
            labels.retain(|(n, _)| n != k);
            labels.push((k.clone(), *v));
        }
        if store.set_labels(sensor, w.window.start_ns, &labels)? {
            n += 1;
        }
    }
    Ok(n)
}
