//! Home Assistant MQTT discovery: the retained config messages that make every strap show up
//! in Home Assistant (HA) as one device with its entities, and the empty messages that remove
//! them again.
//!
//! This module owns *what* is announced (topics and JSON payloads); it does no I/O. The caller
//! publishes each `(topic, payload)` **retained, QoS 1**: retained because HA forgets
//! non-retained discovery configs on restart, QoS 1 like every other publish of the gateway.
//! It publishes them on every (re)connect and again whenever HA says `online` on
//! [`ha_status_topic`] (HA's birth message, not retained), followed by the gateway and strap
//! availability and the current state, so a restarted HA is complete again at once.
//!
//! # Layout
//!
//! One HA *device* for the gateway (identifier `affectgate/<gateway>`): online, model
//! version, retraining state, last retrain, store problem, last input error, and buttons for
//! the commands (retrain, reload, rollback, flush outbox); configs at
//! `<prefix>/<component>/affectgate_<gateway>/<what>/config` ([`gateway_discovery_messages`]).
//! One device per strap (identifier `affectgate_<gateway>_<sensor>`, `via_device` the
//! gateway), with one entity per model head (`arousal`, `valence`, …), heart rate, heart rate
//! vs usual, RMSSD, signal quality, calibrating and strap connected; configs at
//! `<prefix>/<component>/affectgate_<gateway>_<sensor>_<what>/config`.
//!
//! # Decisions
//!
//! - **Per-entity configs, not the device-based message.** Newer HA also accepts one
//!   `<prefix>/device/<id>/config` carrying all components, but older HA releases ignore it,
//!   and per-entity topics let one entity (a head the new model no longer has, see
//!   [`head_removal_messages`]) be removed on its own with an empty retained payload. The
//!   price is repeating the device block in every config, which HA requires anyway (it warns
//!   when a shared device block lacks `name`).
//! - **Full key names** (`state_topic`, `unique_id`, `device`, …), never the abbreviations
//!   (`stat_t`, `uniq_id`, `dev`): the payloads are a few hundred bytes, published rarely, and
//!   must be readable in `mosquitto_sub` output and in tests.
//! - **`availability` = gateway status AND the strap's `live` topic, `availability_mode:
//!   "all"`.** A score is only trustworthy while both the gateway process
//!   (`affectgate/<gateway>/status`, backed by the MQTT last will) and the strap are up; with
//!   `"any"` or `"latest"` a dead gateway would leave the strap's last word `online` standing
//!   and HA would show frozen numbers as current. The strap part is
//!   `affectgate/<gateway>/<sensor>/live`, not the connection topic: it turns `online` only
//!   when the current connection has produced a window in this run, so after a gateway restart
//!   (even one shorter than `expire_after`) or a strap reconnect HA shows "unavailable" until
//!   the first new window, never the previous value as if it were current.
//! - **The "strap connected" binary sensor depends on the gateway status only.** Its state
//!   *is* the strap availability topic; if that topic were also in its availability list it
//!   would turn `unavailable` exactly when it should say "disconnected".
//! - **`expire_after` = round(3 × window period)** (30 s for 10 s windows) on the per-window
//!   entities (scores, heart rate, RMSSD, quality): one late or lost window (a brief BLE
//!   dropout, a broker hiccup) must not blank the value, but three missing windows in a row
//!   mean the number is stale even if nobody said `offline` (e.g. a stalled pipeline), and HA
//!   then shows it as unavailable rather than as a current reading. Diagnostic entities
//!   (model version, last retrain) change rarely and carry no expiry; the connectivity sensor
//!   is driven by the retained availability topic, so it needs none either.
//! - **`state_class: measurement` only on numeric entities** (scores, heart rate, RMSSD): HA
//!   keeps long-term statistics for them. Quality and model version are text and must not have
//!   a state class (HA would reject their non-numeric states).
//! - **One entity id on every HA version.** HA 2025.10 deprecated `object_id` (it warns for
//!   every entity that sends it) and 2026.4 ignores it; `default_entity_id` replaces it, but
//!   HA before 2025.10 ignores that and derives the id from "<device name> <entity name>".
//!   So the device names are `affectgate <gateway> <sensor>` / `affectgate <gateway>` and
//!   `default_entity_id` is exactly what the older rule derives ([`entity_id`]): both give
//!   `sensor.affectgate_gw_calm_arousal`. No `object_id` is sent.
//! - **Gateway-wide facts on the gateway device**, not copied onto every strap (where they
//!   went unavailable with the strap). Its identifier `affectgate/<gateway>` holds a `/`,
//!   which no strap identifier can, so the two never collide; its configs use the gateway as
//!   the topic's node id, a level deeper than every strap config. The strap copies that
//!   earlier versions announced are deleted with empty configs ([`moved_to_gateway_messages`]).
//! - **Ids.** Gateway and sensor ids are validated `[a-zA-Z0-9_-]+` by the config, so they are
//!   used as they are; anything else (a model head name) is mapped into that alphabet for
//!   topics and ids. The first releases named a strap's entities
//!   `affectgate_<gateway>_<sensor>_<what>` (topic object id and unique id) — ambiguous once
//!   an id contains `_` (gateway `a_b` + sensor `c` = gateway `a` + sensor `b_c`). Straps whose
//!   ids have no `_` keep exactly those ids (nothing to migrate, the common case); the others
//!   get unique id `affectgate/<gateway>/<sensor>/<what>`, device `affectgate/<gateway>/<sensor>`
//!   and topic `<prefix>/<component>/affectgate_<gateway>/strap-<escaped sensor>_<what>/config`
//!   ([`legacy_ids`]), and their old configs are deleted first ([`legacy_removal_messages`])
//!   so HA re-creates them under the same entity ids and their history continues.
//! - **This module names no `crate::` items**, so it builds and tests on its own; the topic
//!   [`Topics`] spells the same
//!   layout as `mqtt::Topics`, and [`state_keys_used`] lists the `StateMessage` keys the
//!   value templates read, for a crate-level test against a serialized `StateMessage`.

use serde_json::{json, Map, Value};

use super::topics::Topics;

/// Default discovery prefix of Home Assistant.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";
/// HA's birth/will topic is `<prefix>/<HA_STATUS_TOPIC_SUFFIX>`.
pub const HA_STATUS_TOPIC_SUFFIX: &str = "status";
/// Payload of every availability topic (gateway, strap, HA's own) when up.
pub const PAYLOAD_ONLINE: &str = "online";
/// Payload of every availability topic when down.
pub const PAYLOAD_OFFLINE: &str = "offline";
/// `device.manufacturer` of every strap device.
pub const MANUFACTURER: &str = "affectgate";
/// `device.model` of the gateway device.
pub const DEVICE_MODEL: &str = "ECG emotion gateway";
/// `device.model` of every strap device.
pub const STRAP_MODEL: &str = "ECG chest strap";
/// Per-window entities expire after this many window periods without a message.
pub const EXPIRE_AFTER_WINDOWS: f64 = 3.0;

pub use super::topics::ha_status as ha_status_topic;

/// Is a message on [`ha_status_topic`] HA's birth message (re-publish discovery)?
pub fn is_ha_online(payload: &[u8]) -> bool {
    payload.trim_ascii() == PAYLOAD_ONLINE.as_bytes()
}

/// Can this strap keep the ids of the first releases (`affectgate_<gateway>_<sensor>…`)?
/// Only when neither id contains `_`: then the parts of `affectgate_<gateway>_<sensor>_<what>`
/// can be told apart (the gateway ends at the second `_`, the sensor at the third) and no
/// other gateway/sensor pair gives the same string. With a `_` inside, gateway `a_b` with
/// sensor `c` and gateway `a` with sensor `b_c` both gave `affectgate_a_b_c_…`: one topic,
/// one unique id, one device for two straps.
pub fn legacy_ids(gateway: &str, sensor: &str) -> bool {
    !gateway.contains('_') && !sensor.contains('_')
}

/// The HA device identifier of one strap: `affectgate_<gateway>_<sensor>` where that is
/// unambiguous ([`legacy_ids`]; existing devices keep their identity, area and name), else
/// `affectgate/<gateway>/<sensor>` (`/` cannot occur in an id, so the parts are unambiguous).
pub fn device_identifier(gateway: &str, sensor: &str) -> String {
    if legacy_ids(gateway, sensor) {
        legacy_device_identifier(gateway, sensor)
    } else {
        format!("affectgate/{gateway}/{sensor}")
    }
}

/// The identifier the first releases gave every strap device.
fn legacy_device_identifier(gateway: &str, sensor: &str) -> String {
    id_segment(&format!("affectgate_{gateway}_{sensor}"))
}

/// `sensor` in the topic alphabet, reversibly: `-` → `--`, `_` → `-_`, so the first `_` not
/// preceded by an escaping `-` ends it.
fn escape_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 4);
    for c in id.chars() {
        if c == '-' || c == '_' {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// `expire_after` in whole seconds for a window period: round(3 × period), at least 1.
/// `None` (no expiry) for a period that is not a positive finite number.
pub fn expire_after_s(window_period_s: f64) -> Option<u64> {
    if !(window_period_s.is_finite() && window_period_s > 0.0) {
        return None;
    }
    Some(((EXPIRE_AFTER_WINDOWS * window_period_s).round() as u64).max(1))
}

/// The top-level keys of the per-window state JSON (`StateMessage`) that the value templates
/// read: the heads, then `hr_bpm`, `hr_relative`, `rmssd_ms`, `quality`, `calibrating`.
pub fn state_keys_used(heads: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = unique_heads(heads).into_iter().map(String::from).collect();
    keys.extend(
        [
            "hr_bpm",
            "hr_relative",
            "rmssd_ms",
            "quality",
            "calibrating",
        ]
        .iter()
        .map(|k| k.to_string()),
    );
    keys
}

/// What the discovery configs of one strap are built from.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryInput<'a> {
    /// Discovery prefix, `mqtt.discovery_prefix` (normally `homeassistant`).
    pub prefix: &'a str,
    pub gateway: &'a str,
    pub sensor: &'a str,
    /// Model heads, each a top-level key of the state JSON (`["arousal"]`).
    pub heads: &'a [String],
    /// Seconds between two windows of this strap (10.0).
    pub window_period_s: f64,
    /// Gateway version, the origin's `sw_version` (and the gateway device's).
    pub sw_version: &'a str,
    /// What the strap said about itself over BLE (nothing for replays and synthetic ECG).
    pub strap: StrapDevice<'a>,
}

/// What a strap says about itself (BLE advertised name, Device Information strings), for its
/// device block. Every field is optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrapDevice<'a> {
    pub name: Option<&'a str>,
    pub manufacturer: Option<&'a str>,
    pub model: Option<&'a str>,
    pub firmware: Option<&'a str>,
}

/// The retained discovery configs of one strap: `(topic, JSON payload)`, heads first (in the
/// order given, duplicates dropped), then heart rate, RMSSD, quality, connected, model
/// version, last retrain.
pub fn discovery_messages(inp: &DiscoveryInput) -> Vec<(String, String)> {
    entities(inp.heads)
        .iter()
        .map(|e| {
            let topic = e.config_topic(inp.prefix, inp.gateway, inp.sensor);
            (topic, e.payload(inp).to_string())
        })
        .collect()
}

/// The config topics [`discovery_messages`] publishes for this strap, in the same order.
pub fn discovery_topics(
    prefix: &str,
    gateway: &str,
    sensor: &str,
    heads: &[String],
) -> Vec<String> {
    entities(heads)
        .iter()
        .map(|e| e.config_topic(prefix, gateway, sensor))
        .collect()
}

/// Empty retained payloads on every topic of [`discovery_topics`]: HA deletes the entities
/// (and the device once it has none left). For a sensor that left the config.
pub fn removal_messages(
    prefix: &str,
    gateway: &str,
    sensor: &str,
    heads: &[String],
) -> Vec<(String, String)> {
    discovery_topics(prefix, gateway, sensor, heads)
        .into_iter()
        .map(|t| (t, String::new()))
        .collect()
}

/// The migration of a strap whose ids contain `_` ([`legacy_ids`] is false): empty retained
/// configs on the topics the first releases used for it, published *before* its new configs.
/// Home Assistant deletes the old entities, then creates the new ones (new unique ids) under
/// the same entity ids (`default_entity_id`, and the same device and entity names for HA
/// before 2025.10), so the recorded history and long-term statistics, which HA keys by
/// entity id, continue. Nothing for a strap that keeps its ids.
pub fn legacy_removal_messages(
    prefix: &str,
    gateway: &str,
    sensor: &str,
    heads: &[String],
) -> Vec<(String, String)> {
    if legacy_ids(gateway, sensor) {
        return Vec::new();
    }
    entities(heads)
        .iter()
        .map(|e| {
            (
                e.legacy_config_topic(prefix, gateway, sensor),
                String::new(),
            )
        })
        .collect()
}

/// Empty retained payloads for the entities of `removed_heads` only: for a model update that
/// drops a head (the other entities of the strap stay).
pub fn head_removal_messages(
    prefix: &str,
    gateway: &str,
    sensor: &str,
    removed_heads: &[String],
) -> Vec<(String, String)> {
    unique_heads(removed_heads)
        .into_iter()
        .map(|h| {
            let topic = Entity::head(h).config_topic(prefix, gateway, sensor);
            (topic, String::new())
        })
        .collect()
}

/// What the gateway device's configs are built from.
#[derive(Debug, Clone, Copy)]
pub struct GatewayDiscoveryInput<'a> {
    /// Discovery prefix, `mqtt.discovery_prefix`.
    pub prefix: &'a str,
    pub gateway: &'a str,
    /// Gateway version, the device's and origin's `sw_version`.
    pub sw_version: &'a str,
    /// `retrain.enabled`: the retraining entities and the retrain button exist only then.
    pub retrain_enabled: bool,
    /// `fleet.enabled`: the model's update entity exists only then.
    pub fleet_enabled: bool,
}

/// Which gateway entities exist: always, only with on-gateway retraining, only with fleet
/// updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Always,
    Retrain,
    Fleet,
}

/// The gateway device's entities: `(component, what, when)`. Config topics are
/// `<prefix>/<component>/affectgate_<gateway>/<what>/config` (node id = the gateway), a
/// level deeper than every strap topic, so the two can never collide.
const GATEWAY_ENTITIES: [(&str, &str, Needs); 12] = [
    ("binary_sensor", "online", Needs::Always),
    ("sensor", "model_version", Needs::Always),
    ("sensor", "retraining", Needs::Retrain),
    ("sensor", "last_retrain", Needs::Retrain),
    ("switch", "auto_retrain", Needs::Retrain),
    ("binary_sensor", "store_problem", Needs::Always),
    ("sensor", "last_input_error", Needs::Always),
    ("button", "retrain", Needs::Retrain),
    ("button", "reload", Needs::Always),
    ("button", "rollback", Needs::Always),
    ("button", "flush_outbox", Needs::Always),
    ("update", "model_update", Needs::Fleet),
];

/// Strap entities of earlier versions that now live on the gateway device.
const MOVED_TO_GATEWAY: [(&str, &str); 3] = [
    ("sensor", "model_version"),
    ("sensor", "last_retrain"),
    ("binary_sensor", "store_problem"),
];

fn gateway_config_topic(prefix: &str, gateway: &str, component: &str, what: &str) -> String {
    format!(
        "{prefix}/{component}/{}/{what}/config",
        id_segment(&format!("affectgate_{gateway}"))
    )
}

/// The retained discovery configs of the gateway device, and empty retained configs for its
/// retraining entities when retraining is off (so turning it off removes them). Published
/// before the straps' configs, which point at this device with `via_device`.
pub fn gateway_discovery_messages(inp: &GatewayDiscoveryInput) -> Vec<(String, String)> {
    GATEWAY_ENTITIES
        .iter()
        .map(|&(component, what, needs)| {
            let topic = gateway_config_topic(inp.prefix, inp.gateway, component, what);
            let off = match needs {
                Needs::Always => false,
                Needs::Retrain => !inp.retrain_enabled,
                Needs::Fleet => !inp.fleet_enabled,
            };
            if off {
                (topic, String::new())
            } else {
                (topic, gateway_payload(inp, component, what).to_string())
            }
        })
        .collect()
}

/// Empty retained configs for the strap entities that moved to the gateway device (model
/// version, last retrain, store problem): Home Assistant removes the old copies, and the
/// history of these gateway-wide values continues on the gateway device.
pub fn moved_to_gateway_messages(
    prefix: &str,
    gateway: &str,
    sensor: &str,
) -> Vec<(String, String)> {
    MOVED_TO_GATEWAY
        .iter()
        .map(|(component, what)| {
            (
                // Earlier releases only knew the first id scheme.
                format!(
                    "{prefix}/{component}/{}_{what}/config",
                    legacy_device_identifier(gateway, sensor)
                ),
                String::new(),
            )
        })
        .collect()
}

fn gateway_payload(inp: &GatewayDiscoveryInput, component: &str, what: &str) -> Value {
    let t = Topics::new(inp.gateway);
    let device_name = gateway_device_name(inp.gateway);
    let name = match what {
        "online" => "Online",
        "model_version" => "Model version",
        "retraining" => "Retraining",
        "last_retrain" => "Last retrain",
        "store_problem" => "Store problem",
        "last_input_error" => "Last input error",
        "auto_retrain" => "Automatic retraining",
        "retrain" => "Retrain now",
        "reload" => "Reload configuration",
        "rollback" => "Roll back model",
        "flush_outbox" => "Flush outbox",
        "model_update" => "Model update",
        other => other,
    };
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert(
        "default_entity_id".into(),
        json!(entity_id(component, &device_name, name)),
    );
    m.insert(
        "unique_id".into(),
        json!(format!("{}/{what}", gateway_device_identifier(inp.gateway))),
    );
    m.insert(
        "device".into(),
        json!({
            "identifiers": [gateway_device_identifier(inp.gateway)],
            "name": device_name,
            "manufacturer": MANUFACTURER,
            "model": DEVICE_MODEL,
            "sw_version": inp.sw_version,
        }),
    );
    m.insert(
        "origin".into(),
        json!({ "name": MANUFACTURER, "sw_version": inp.sw_version }),
    );
    m.insert("qos".into(), json!(1));
    // Everything but the connectivity sensor is unavailable while the gateway is down; the
    // connectivity sensor *is* the gateway status, so it must stay available to say "off".
    if what != "online" {
        m.insert(
            "availability".into(),
            json!([{
                "topic": t.status(),
                "payload_available": PAYLOAD_ONLINE,
                "payload_not_available": PAYLOAD_OFFLINE,
            }]),
        );
    }
    let mut set = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    match what {
        "online" => {
            set("state_topic", json!(t.status()));
            set("device_class", json!("connectivity"));
            set("payload_on", json!(PAYLOAD_ONLINE));
            set("payload_off", json!(PAYLOAD_OFFLINE));
        }
        "model_version" => {
            set("state_topic", json!(t.model()));
            set("value_template", json!("{{ value_json.version }}"));
            set("json_attributes_topic", json!(t.model()));
            set("icon", json!("mdi:tag-outline"));
            set("entity_category", json!("diagnostic"));
        }
        "retraining" => {
            // A fixed set of states: an enum sensor (HA offers them in automations).
            set("state_topic", json!(t.retrain()));
            set("value_template", json!("{{ value_json.state }}"));
            set("json_attributes_topic", json!(t.retrain()));
            set("device_class", json!("enum"));
            set("options", json!(crate_retrain_states()));
            set("icon", json!("mdi:school-outline"));
        }
        "last_retrain" => {
            // `default(None)`: HA's MQTT sensor turns the rendered "None" into an unknown
            // state, so a retrain message without `finished` (still running, never ran)
            // neither errors nor shows a bogus time.
            set("state_topic", json!(t.retrain()));
            set(
                "value_template",
                json!("{{ value_json.finished | default(None) }}"),
            );
            set("device_class", json!("timestamp"));
            set("entity_category", json!("diagnostic"));
            set("icon", json!("mdi:school-outline"));
        }
        "store_problem" => {
            // The retained store topic says whether a person should look (a full disk, a
            // damaged store moved aside); its other keys become the entity's attributes.
            set("state_topic", json!(t.store()));
            set("json_attributes_topic", json!(t.store()));
            set(
                "value_template",
                json!("{{ 'ON' if value_json.problem else 'OFF' }}"),
            );
            set("device_class", json!("problem"));
            set("entity_category", json!("diagnostic"));
        }
        "last_input_error" => {
            // The answer to a self-report or command that was refused (a dashboard button
            // gets its answer here). HA states hold at most 255 characters.
            set("state_topic", json!(t.error()));
            set("value_template", json!("{{ value_json.error[:250] }}"));
            set("json_attributes_topic", json!(t.error()));
            set("icon", json!("mdi:message-alert-outline"));
            set("entity_category", json!("diagnostic"));
        }
        "auto_retrain" => {
            // A switch over the scheduled rounds: its state is the retained retraining
            // status (`paused`), a flip sends `{"enabled": …}` (never retained) and the
            // scheduler answers with a new status, so HA shows what the gateway does, not
            // what was asked (no `optimistic`).
            set("state_topic", json!(t.retrain()));
            set(
                "value_template",
                json!("{{ 'OFF' if value_json.paused | default(false) else 'ON' }}"),
            );
            set("command_topic", json!(t.command("auto_retrain")));
            set("payload_on", json!(r#"{"enabled": true}"#));
            set("payload_off", json!(r#"{"enabled": false}"#));
            set("state_on", json!("ON"));
            set("state_off", json!("OFF"));
            set("retain", json!(false));
            set("icon", json!("mdi:calendar-sync"));
            set("entity_category", json!("config"));
        }
        "model_update" => {
            // Home Assistant's update entity: the retained JSON on `affectgate/<gw>/update`
            // (installed_version = the fleet release serving, latest_version = the one the
            // channel's plan offers, release_summary, in_progress, update_percentage).
            // Install sends `{}` to cmd/update: with `[fleet] policy = "manual"` that starts
            // the install once the gateway's wave has begun.
            set("state_topic", json!(t.update()));
            set("command_topic", json!(t.command("update")));
            set("payload_install", json!("{}"));
            set("retain", json!(false));
            set("entity_category", json!("config"));
        }
        command => {
            // Buttons: one press = one non-retained `{}` on the command topic (the gateway
            // refuses retained commands).
            set("command_topic", json!(t.command(command)));
            set("payload_press", json!("{}"));
            set("retain", json!(false));
            let (icon, category) = match command {
                "retrain" => ("mdi:school", None),
                "reload" => ("mdi:reload", Some("config")),
                "rollback" => ("mdi:undo-variant", Some("config")),
                _ => ("mdi:send-clock-outline", Some("diagnostic")),
            };
            set("icon", json!(icon));
            if let Some(c) = category {
                set("entity_category", json!(c));
            }
        }
    }
    Value::Object(m)
}

/// The retraining states, as serialised on `affectgate/<gw>/retrain` (a crate-level test
/// checks this list against `RetrainState::ALL`; this module names no `crate::` items).
fn crate_retrain_states() -> [&'static str; 8] {
    [
        "idle",
        "waiting",
        "running",
        "promoted",
        "rejected",
        "failed",
        "stopped",
        "rolled_back",
    ]
}

/// The retraining states the "Retraining" enum entity offers.
pub fn retrain_state_options() -> Vec<&'static str> {
    crate_retrain_states().to_vec()
}

/// The kinds of entity a strap device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Head,
    HeartRate,
    HeartRateRelative,
    Rmssd,
    Quality,
    Calibrating,
    Connected,
}

/// One entity: its kind, the `<what>` of its ids, and the head it shows (heads only).
#[derive(Debug, Clone)]
struct Entity<'h> {
    kind: Kind,
    what: String,
    head: Option<&'h str>,
}

/// Heads in order of first appearance, duplicates (which would collide in HA) dropped.
fn unique_heads(heads: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(heads.len());
    for h in heads {
        if !out.contains(&h.as_str()) {
            out.push(h);
        }
    }
    out
}

fn entities(heads: &[String]) -> Vec<Entity<'_>> {
    let mut out: Vec<Entity> = unique_heads(heads).into_iter().map(Entity::head).collect();
    for (kind, what) in [
        (Kind::HeartRate, "heart_rate"),
        (Kind::HeartRateRelative, "heart_rate_relative"),
        (Kind::Rmssd, "rmssd"),
        (Kind::Quality, "quality"),
        (Kind::Calibrating, "calibrating"),
        (Kind::Connected, "connected"),
    ] {
        out.push(Entity {
            kind,
            what: what.to_string(),
            head: None,
        });
    }
    out
}

impl<'h> Entity<'h> {
    fn head(head: &'h str) -> Self {
        Entity {
            kind: Kind::Head,
            what: id_segment(head),
            head: Some(head),
        }
    }

    fn component(&self) -> &'static str {
        match self.kind {
            Kind::Connected | Kind::Calibrating => "binary_sensor",
            _ => "sensor",
        }
    }

    /// The `unique_id`: `affectgate_<gateway>_<sensor>_<what>` where [`legacy_ids`] allows
    /// (unchanged since the first release, so nothing moves), else
    /// `affectgate/<gateway>/<sensor>/<what>`.
    fn unique_id(&self, gateway: &str, sensor: &str) -> String {
        if legacy_ids(gateway, sensor) {
            self.legacy_object_id(gateway, sensor)
        } else {
            format!("affectgate/{gateway}/{sensor}/{}", self.what)
        }
    }

    /// The object id the first releases used for topic and unique id.
    fn legacy_object_id(&self, gateway: &str, sensor: &str) -> String {
        format!(
            "{}_{}",
            legacy_device_identifier(gateway, sensor),
            self.what
        )
    }

    /// `<prefix>/<component>/affectgate_<gateway>_<sensor>_<what>/config` where
    /// [`legacy_ids`] allows, else `<prefix>/<component>/affectgate_<gateway>/strap-<sensor,
    /// escaped>_<what>/config`: the gateway as node id (as for the gateway device's own
    /// entities, whose fixed names never start with `strap-`) and the escaped sensor id
    /// ([`escape_id`]), so no two straps of any gateways share a topic.
    fn config_topic(&self, prefix: &str, gateway: &str, sensor: &str) -> String {
        if legacy_ids(gateway, sensor) {
            self.legacy_config_topic(prefix, gateway, sensor)
        } else {
            format!(
                "{prefix}/{}/{}/strap-{}_{}/config",
                self.component(),
                id_segment(&format!("affectgate_{gateway}")),
                escape_id(sensor),
                self.what
            )
        }
    }

    fn legacy_config_topic(&self, prefix: &str, gateway: &str, sensor: &str) -> String {
        format!(
            "{prefix}/{}/{}/config",
            self.component(),
            self.legacy_object_id(gateway, sensor)
        )
    }

    /// The entity's name; Home Assistant shows "<device name> <entity name>" and derives
    /// the entity id from the two (see [`entity_id`]).
    fn name(&self) -> String {
        match self.kind {
            Kind::Head => display_name(self.head.unwrap_or(self.what.as_str())),
            Kind::HeartRate => "Heart rate".into(),
            Kind::HeartRateRelative => "Heart rate vs usual".into(),
            Kind::Rmssd => "HRV RMSSD".into(),
            Kind::Quality => "Signal quality".into(),
            Kind::Calibrating => "Calibrating".into(),
            Kind::Connected => "Strap connected".into(),
        }
    }

    /// A value read once per window (expires after three missed windows).
    fn per_window(&self) -> bool {
        matches!(
            self.kind,
            Kind::Head
                | Kind::HeartRate
                | Kind::HeartRateRelative
                | Kind::Rmssd
                | Kind::Quality
                | Kind::Calibrating
        )
    }

    fn payload(&self, inp: &DiscoveryInput) -> Value {
        let oid = self.unique_id(inp.gateway, inp.sensor);
        let state = Topics::new(inp.gateway).state(inp.sensor);
        let mut m = Map::new();
        m.insert(
            "default_entity_id".into(),
            json!(entity_id(
                self.component(),
                &strap_device_name(inp.gateway, inp.sensor),
                &self.name()
            )),
        );
        m.insert("unique_id".into(), json!(oid));
        m.insert("device".into(), device_block(inp));
        m.insert(
            "origin".into(),
            json!({ "name": MANUFACTURER, "sw_version": inp.sw_version }),
        );
        // HA subscribes with this QoS; the gateway publishes everything at QoS 1.
        m.insert("qos".into(), json!(1));

        let gateway_up = json!({
            "topic": Topics::new(inp.gateway).status(),
            "payload_available": PAYLOAD_ONLINE,
            "payload_not_available": PAYLOAD_OFFLINE,
        });
        if self.kind == Kind::Connected {
            // Its state is the strap availability: it must stay available when the strap
            // is offline, so only the gateway decides.
            m.insert("availability".into(), json!([gateway_up]));
        } else {
            // A value read per window is current only once this run's connection has scored
            // a window (`live`); anything else follows the strap's connection.
            let t = Topics::new(inp.gateway);
            let strap = if self.per_window() {
                t.live(inp.sensor)
            } else {
                t.availability(inp.sensor)
            };
            let strap_up = json!({
                "topic": strap,
                "payload_available": PAYLOAD_ONLINE,
                "payload_not_available": PAYLOAD_OFFLINE,
            });
            m.insert("availability".into(), json!([gateway_up, strap_up]));
            m.insert("availability_mode".into(), json!("all"));
        }
        if self.per_window() {
            if let Some(s) = expire_after_s(inp.window_period_s) {
                m.insert("expire_after".into(), json!(s));
            }
        }

        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        match self.kind {
            Kind::Head => {
                let head = self.head.unwrap_or(self.what.as_str());
                set("name", json!(self.name()));
                set("state_topic", json!(state));
                set("value_template", json!(value_template(head)));
                set("state_class", json!("measurement"));
                // Scores are unitless in [0, 1]: no unit_of_measurement.
                set("suggested_display_precision", json!(2));
                set("icon", json!(head_icon(head)));
                // The window's own time beside the score: HA records a message at its
                // arrival, so windows delivered late (after a broker outage) would otherwise
                // look current; `time` says when the window really was.
                set("json_attributes_topic", json!(state));
                set(
                    "json_attributes_template",
                    json!(WINDOW_ATTRIBUTES_TEMPLATE),
                );
            }
            Kind::HeartRate => {
                set("name", json!(self.name()));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("hr_bpm")));
                set("unit_of_measurement", json!("bpm"));
                set("state_class", json!("measurement"));
                set("suggested_display_precision", json!(0));
                set("icon", json!("mdi:heart-pulse"));
            }
            Kind::HeartRateRelative => {
                // The window's heart rate relative to the wearer's baseline, in units of the
                // wearer's usual spread: the strongest simple arousal signal (RESULTS §6).
                // Unknown while calibrating (the state message has `null`).
                set("name", json!(self.name()));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("hr_relative")));
                set("state_class", json!("measurement"));
                set("suggested_display_precision", json!(1));
                set("icon", json!("mdi:heart-plus-outline"));
            }
            Kind::Rmssd => {
                // No device_class "duration": HA would offer unit conversion to s/min/h,
                // which makes no sense for an HRV index.
                set("name", json!(self.name()));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("rmssd_ms")));
                set("unit_of_measurement", json!("ms"));
                set("state_class", json!("measurement"));
                set("suggested_display_precision", json!(0));
                set("icon", json!("mdi:pulse"));
            }
            Kind::Quality => {
                // An enum of fixed options (HA offers them in automations and keeps no
                // statistics): the first failed check, or "good"; the whole label
                // ("flat+clipping") is the `flags` attribute.
                set("name", json!(self.name()));
                set("state_topic", json!(state));
                set(
                    "value_template",
                    json!(format!("{{{{ {}.split('+')[0] }}}}", value_ref("quality"))),
                );
                set("device_class", json!("enum"));
                set("options", json!(QUALITY_OPTIONS));
                set("json_attributes_topic", json!(state));
                set(
                    "json_attributes_template",
                    json!(format!(
                        "{{{{ {{'flags': {}}} | tojson }}}}",
                        value_ref("quality")
                    )),
                );
                set("icon", json!("mdi:signal"));
            }
            Kind::Calibrating => {
                // On until the gateway has learnt the wearer's baseline: scores and
                // `Heart rate vs usual` mean little before that.
                set("name", json!(self.name()));
                set("state_topic", json!(state));
                set(
                    "value_template",
                    json!("{{ 'ON' if value_json.calibrating else 'OFF' }}"),
                );
                set("icon", json!("mdi:tune-variant"));
                set("entity_category", json!("diagnostic"));
            }
            Kind::Connected => {
                set("name", json!(self.name()));
                set(
                    "state_topic",
                    json!(Topics::new(inp.gateway).availability(inp.sensor)),
                );
                set("device_class", json!("connectivity"));
                set("payload_on", json!(PAYLOAD_ONLINE));
                set("payload_off", json!(PAYLOAD_OFFLINE));
                // A primary entity: whether the strap is worn and connected is what a
                // dashboard shows first (diagnostic entities are hidden from the default one).
            }
        }
        Value::Object(m)
    }
}

/// The device block, repeated in every config of the strap (HA wants `name` in each). The
/// strap hangs off its gateway's device (`via_device`), which carries the software facts.
/// The strap device: what the strap said about itself when it has (manufacturer, model,
/// firmware as `sw_version`; the advertised name as the model when there is no model
/// string), else the generic [`MANUFACTURER`] / [`STRAP_MODEL`]. The device *name* is always
/// `affectgate <gateway> <sensor>`: entity ids derive from it.
fn device_block(inp: &DiscoveryInput) -> Value {
    let s = &inp.strap;
    let mut d = json!({
        "identifiers": [device_identifier(inp.gateway, inp.sensor)],
        "name": strap_device_name(inp.gateway, inp.sensor),
        "manufacturer": s.manufacturer.unwrap_or(MANUFACTURER),
        "model": s.model.or(s.name).unwrap_or(STRAP_MODEL),
        "via_device": gateway_device_identifier(inp.gateway),
    });
    if let Some(fw) = s.firmware {
        d["sw_version"] = json!(fw);
    }
    d
}

/// A strap device's name: `affectgate <gateway> <sensor>`. Chosen so that the entity id Home
/// Assistant derives from it (before 2025.10, which ignores `default_entity_id`) is the
/// same as the `default_entity_id` newer releases use: one documented id on every version.
pub fn strap_device_name(gateway: &str, sensor: &str) -> String {
    format!("affectgate {gateway} {sensor}")
}

/// The gateway device's name: `affectgate <gateway>` (see [`strap_device_name`]).
pub fn gateway_device_name(gateway: &str) -> String {
    format!("affectgate {gateway}")
}

/// The gateway device's identifier: `affectgate/<gateway>`. The `/` cannot occur in a strap
/// device's identifier (ids are `[a-zA-Z0-9_-]`), so the two never collide.
pub fn gateway_device_identifier(gateway: &str) -> String {
    format!("affectgate/{gateway}")
}

/// The entity id Home Assistant gives an entity named `entity` on device `device`:
/// `<component>.<slug of "device entity">` — what HA before 2025.10 derives (its `slugify`:
/// lower case, every run of other characters one `_`, none at the ends) and what
/// `default_entity_id` asks for on newer releases.
pub fn entity_id(component: &str, device: &str, entity: &str) -> String {
    let mut slug = String::new();
    for c in format!("{device} {entity}").chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('_') {
            slug.push('_');
        }
    }
    while slug.ends_with('_') {
        slug.pop();
    }
    if slug.is_empty() {
        slug.push_str("unknown");
    }
    format!("{component}.{slug}")
}

/// Map `s` into the topic/id alphabet `[a-zA-Z0-9_-]` (other characters become `_`).
fn id_segment(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "_".to_string()
    } else {
        out
    }
}

/// Attributes of every score entity, read from the state message: the window's end time,
/// its number, SDNN and the share of corrected RR intervals.
pub const WINDOW_ATTRIBUTES_TEMPLATE: &str = "{{ {'time': value_json.time, 'window': value_json.window, 'sdnn_ms': value_json.sdnn_ms, 'rr_corrected': value_json.rr_corrected} | tojson }}";

/// The states of the signal-quality enum entity: `good`, each quality check's name (the
/// first failed one is shown), and the two states of heart-rate-only straps. A crate-level
/// test checks it against the quality gate's names.
pub const QUALITY_OPTIONS: [&str; 7] = [
    "good",
    "flat",
    "clipping",
    "implausible_rr",
    "noisy",
    "hr_only",
    "no_contact",
];

/// `value_json.<key>` (or `value_json['<key>']`), as [`value_template`] reads `key`.
fn value_ref(key: &str) -> String {
    let t = value_template(key);
    t.trim_start_matches("{{ ")
        .trim_end_matches(" }}")
        .to_string()
}

/// `{{ value_json.<key> }}`, or `{{ value_json['<key>'] }}` when the dot form would not read
/// the key: not an identifier, or the name of a dict method (`value_json.items` is the method
/// in Jinja, not the key).
fn value_template(key: &str) -> String {
    const DICT_ATTRS: [&str; 11] = [
        "clear",
        "copy",
        "fromkeys",
        "get",
        "items",
        "keys",
        "pop",
        "popitem",
        "setdefault",
        "update",
        "values",
    ];
    let mut chars = key.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier && !DICT_ATTRS.contains(&key) {
        format!("{{{{ value_json.{key} }}}}")
    } else {
        let quoted = key.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{{{{ value_json['{quoted}'] }}}}")
    }
}

/// `"stress_level"` → `"Stress level"`.
fn display_name(head: &str) -> String {
    let spaced = head.replace(['_', '-'], " ");
    let mut c = spaced.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn head_icon(head: &str) -> &'static str {
    match head {
        "arousal" => "mdi:lightning-bolt",
        "valence" => "mdi:emoticon-outline",
        _ => "mdi:brain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    fn heads(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    fn input<'a>(prefix: &'a str, sensor: &'a str, heads: &'a [String]) -> DiscoveryInput<'a> {
        DiscoveryInput {
            prefix,
            gateway: "gw",
            sensor,
            heads,
            window_period_s: 10.0,
            sw_version: "0.1.0",
            strap: StrapDevice::default(),
        }
    }

    /// Messages parsed: topic → JSON object. Fails on any payload that is not a JSON object.
    fn parsed(inp: &DiscoveryInput) -> BTreeMap<String, Map<String, Value>> {
        let msgs = discovery_messages(inp);
        let mut out = BTreeMap::new();
        for (topic, payload) in msgs {
            let v: Value = serde_json::from_str(&payload)
                .unwrap_or_else(|e| panic!("{topic}: payload is not JSON ({e}): {payload}"));
            let obj = v.as_object().expect("payload is a JSON object").clone();
            assert!(
                out.insert(topic.clone(), obj).is_none(),
                "duplicate {topic}"
            );
        }
        out
    }

    /// The config of the entity `<what>` of sensor `sensor` (gateway "gw").
    fn entity<'m>(
        msgs: &'m BTreeMap<String, Map<String, Value>>,
        sensor: &str,
        what: &str,
    ) -> &'m Map<String, Value> {
        let uid = format!("affectgate_gw_{sensor}_{what}");
        msgs.values()
            .find(|m| m["unique_id"] == uid.as_str())
            .unwrap_or_else(|| panic!("no entity {uid}"))
    }

    /// A state message as `mqtt::StateMessage` serializes it (heads flattened to top level).
    fn sample_state(heads: &[String]) -> Value {
        let mut m = json!({
            "time": "2025-01-01T00:00:10.000Z",
            "window_start_ms": 1_735_689_600_000i64,
            "window": 1,
            "sensor": "calm",
            "hr_bpm": 62.0,
            "rmssd_ms": 48.0,
            "sdnn_ms": 70.0,
            "quality": "good",
            "model": "affectgate-arousal-v2@0123abcd",
        });
        for h in heads {
            m[h.as_str()] = json!(0.42);
        }
        m
    }

    /// The key a `{{ value_json.k }}` / `{{ value_json['k'] ... }}` template reads.
    fn template_key(t: &str) -> String {
        let inner = t
            .strip_prefix("{{ value_json")
            .and_then(|s| s.strip_suffix(" }}"))
            .unwrap_or_else(|| panic!("unexpected template {t}"));
        if let Some(rest) = inner.strip_prefix("['") {
            rest[..rest.find("']").expect("closing quote")].to_string()
        } else {
            let rest = inner.strip_prefix('.').expect("dot access");
            rest.split([' ', '|', '.']).next().unwrap().to_string()
        }
    }

    fn is_id(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    const PER_WINDOW: [&str; 5] = [
        "heart_rate",
        "heart_rate_relative",
        "rmssd",
        "quality",
        "calibrating",
    ];
    const NUMERIC: [&str; 3] = ["heart_rate", "heart_rate_relative", "rmssd"];

    #[test]
    fn topic_layout_and_object_ids() {
        let h = heads(&["arousal", "valence"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        assert_eq!(msgs.len(), 2 + 6);
        for (topic, m) in &msgs {
            let parts: Vec<&str> = topic.split('/').collect();
            assert_eq!(parts.len(), 4, "{topic}");
            assert_eq!(parts[0], "homeassistant");
            assert!(["sensor", "binary_sensor"].contains(&parts[1]), "{topic}");
            assert!(is_id(parts[2]), "object id of {topic}");
            assert_eq!(parts[3], "config");
            assert_eq!(m["unique_id"], parts[2]);
            // The id HA before 2025.10 derives from the names, and asked for by newer HA.
            assert_eq!(
                m["default_entity_id"],
                entity_id(parts[1], "affectgate gw calm", m["name"].as_str().unwrap())
            );
            assert!(
                !m.contains_key("object_id"),
                "object_id is deprecated in HA"
            );
        }
        assert!(msgs.contains_key("homeassistant/sensor/affectgate_gw_calm_arousal/config"));
        let ids: std::collections::BTreeSet<&str> = msgs
            .values()
            .map(|m| m["default_entity_id"].as_str().unwrap())
            .collect();
        let expected: std::collections::BTreeSet<&str> = [
            "sensor.affectgate_gw_calm_arousal",
            "sensor.affectgate_gw_calm_heart_rate",
            "sensor.affectgate_gw_calm_heart_rate_vs_usual",
            "sensor.affectgate_gw_calm_hrv_rmssd",
            "sensor.affectgate_gw_calm_signal_quality",
            "binary_sensor.affectgate_gw_calm_calibrating",
            "binary_sensor.affectgate_gw_calm_strap_connected",
            "sensor.affectgate_gw_calm_valence",
        ]
        .into_iter()
        .collect();
        assert_eq!(ids, expected);
        assert!(
            msgs.contains_key("homeassistant/binary_sensor/affectgate_gw_calm_connected/config")
        );
        assert_eq!(
            discovery_topics("homeassistant", "gw", "calm", &h),
            discovery_messages(&input("homeassistant", "calm", &h))
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn unique_ids_unique_across_two_sensors() {
        let h = heads(&["arousal", "valence"]);
        let mut seen = HashSet::new();
        let mut topics = HashSet::new();
        for sensor in ["calm", "stressed"] {
            for (topic, m) in parsed(&input("homeassistant", sensor, &h)) {
                let uid = m["unique_id"].as_str().unwrap().to_string();
                assert!(
                    uid.starts_with(&format!("affectgate_gw_{sensor}_")),
                    "{uid}"
                );
                assert!(seen.insert(uid.clone()), "duplicate unique_id {uid}");
                assert!(topics.insert(topic.clone()), "duplicate topic {topic}");
            }
        }
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn device_block_per_strap() {
        let h = heads(&["arousal"]);
        for sensor in ["calm", "stressed"] {
            let msgs = parsed(&input("homeassistant", sensor, &h));
            let first = &msgs.values().next().unwrap()["device"];
            for m in msgs.values() {
                let d = &m["device"];
                assert_eq!(d, first, "one device per strap");
                assert_eq!(d["identifiers"], json!([format!("affectgate_gw_{sensor}")]));
                assert_eq!(d["name"], format!("affectgate gw {sensor}"));
                assert_eq!(d["manufacturer"], "affectgate");
                assert_eq!(d["model"], "ECG chest strap");
                // The software is the gateway device's; the strap hangs off it.
                assert!(d.get("sw_version").is_none());
                assert_eq!(d["via_device"], "affectgate/gw");
                assert_eq!(m["origin"]["name"], "affectgate");
                assert_eq!(m["origin"]["sw_version"], "0.1.0");
                assert_eq!(m["qos"], 1);
                assert!(!m["name"].as_str().unwrap().is_empty());
            }
        }
        // A strap that said what it is (BLE Device Information): its own make, model and
        // firmware; the name (and so every entity id) does not change.
        let mut inp = input("homeassistant", "chest", &h);
        inp.strap = StrapDevice {
            name: Some("Polar H10 1A2B3C4D"),
            manufacturer: Some("Polar Electro Oy"),
            model: Some("H10"),
            firmware: Some("3.0.35"),
        };
        let msgs = parsed(&inp);
        for m in msgs.values() {
            let d = &m["device"];
            assert_eq!(d["manufacturer"], "Polar Electro Oy");
            assert_eq!(d["model"], "H10");
            assert_eq!(d["sw_version"], "3.0.35");
            assert_eq!(d["name"], "affectgate gw chest");
        }
        // Only an advertised name: that is the model.
        inp.strap = StrapDevice {
            name: Some("Polar H10 1A2B3C4D"),
            ..Default::default()
        };
        let d = parsed(&inp).values().next().unwrap()["device"].clone();
        assert_eq!(d["model"], "Polar H10 1A2B3C4D");
        assert_eq!(d["manufacturer"], "affectgate");
    }

    #[test]
    fn state_topics_and_templates_read_existing_state_keys() {
        let h = heads(&["arousal", "valence"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        let state = sample_state(&h);
        let keys = state.as_object().unwrap();
        for what in ["arousal", "valence", "heart_rate", "rmssd", "quality"] {
            let m = entity(&msgs, "calm", what);
            assert_eq!(m["state_topic"], "affectgate/gw/calm/state", "{what}");
            let key = template_key(m["value_template"].as_str().unwrap());
            assert!(keys.contains_key(&key), "{what} reads missing key {key}");
            assert!(
                state_keys_used(&h).contains(&key),
                "{key} not in state_keys_used"
            );
        }
        assert_eq!(
            entity(&msgs, "calm", "arousal")["value_template"],
            "{{ value_json.arousal }}"
        );
        assert_eq!(
            entity(&msgs, "calm", "heart_rate")["value_template"],
            "{{ value_json.hr_bpm }}"
        );
        assert_eq!(
            entity(&msgs, "calm", "rmssd")["value_template"],
            "{{ value_json.rmssd_ms }}"
        );
        let q = entity(&msgs, "calm", "quality");
        assert_eq!(
            q["value_template"],
            "{{ value_json.quality.split('+')[0] }}"
        );
        assert_eq!(q["device_class"], "enum");
        assert_eq!(q["options"], json!(QUALITY_OPTIONS));
        assert_eq!(
            q["json_attributes_template"],
            "{{ {'flags': value_json.quality} | tojson }}"
        );
        assert_eq!(
            state_keys_used(&h),
            heads(&[
                "arousal",
                "valence",
                "hr_bpm",
                "hr_relative",
                "rmssd_ms",
                "quality",
                "calibrating"
            ])
        );
    }

    #[test]
    fn state_class_only_on_numeric_per_window_entities() {
        let h = heads(&["arousal", "valence"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        for what in ["arousal", "valence"].iter().chain(NUMERIC.iter()) {
            let m = entity(&msgs, "calm", what);
            assert_eq!(m["state_class"], "measurement", "{what}");
        }
        for what in ["quality", "connected"] {
            let m = entity(&msgs, "calm", what);
            assert!(!m.contains_key("state_class"), "{what} must not be numeric");
        }
        let a = entity(&msgs, "calm", "arousal");
        assert!(!a.contains_key("unit_of_measurement"));
        assert_eq!(a["suggested_display_precision"], 2);
        assert_eq!(a["name"], "Arousal");
        assert_eq!(a["json_attributes_topic"], "affectgate/gw/calm/state");
        assert_eq!(a["json_attributes_template"], WINDOW_ATTRIBUTES_TEMPLATE);
        assert!(a["icon"].as_str().unwrap().starts_with("mdi:"));
        let hr = entity(&msgs, "calm", "heart_rate");
        assert_eq!(hr["unit_of_measurement"], "bpm");
        assert_eq!(hr["icon"], "mdi:heart-pulse");
        assert_eq!(entity(&msgs, "calm", "rmssd")["unit_of_measurement"], "ms");
        assert!(!entity(&msgs, "calm", "quality").contains_key("unit_of_measurement"));
    }

    #[test]
    fn expire_after_three_windows_on_per_window_entities_only() {
        let h = heads(&["arousal"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        for what in ["arousal"].iter().chain(PER_WINDOW.iter()) {
            assert_eq!(entity(&msgs, "calm", what)["expire_after"], 30, "{what}");
        }
        assert!(!entity(&msgs, "calm", "connected").contains_key("expire_after"));
        assert_eq!(expire_after_s(10.0), Some(30));
        assert_eq!(expire_after_s(2.5), Some(8)); // 7.5 rounds half away from zero
        assert_eq!(expire_after_s(0.1), Some(1));
        assert_eq!(expire_after_s(0.0), None);
        assert_eq!(expire_after_s(f64::NAN), None);
        assert_eq!(expire_after_s(f64::INFINITY), None);
        let mut bad = input("homeassistant", "calm", &h);
        bad.window_period_s = f64::NAN;
        let bad = parsed(&bad);
        assert!(!entity(&bad, "calm", "arousal").contains_key("expire_after"));
    }

    #[test]
    fn availability_gateway_and_strap_all() {
        let h = heads(&["arousal"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        let gateway = json!({
            "topic": "affectgate/gw/status",
            "payload_available": "online",
            "payload_not_available": "offline",
        });
        let strap = json!({
            "topic": "affectgate/gw/calm/live",
            "payload_available": "online",
            "payload_not_available": "offline",
        });
        for what in [
            "arousal",
            "heart_rate",
            "heart_rate_relative",
            "rmssd",
            "quality",
            "calibrating",
        ] {
            let m = entity(&msgs, "calm", what);
            assert_eq!(m["availability"], json!([gateway, strap]), "{what}");
            assert_eq!(m["availability_mode"], "all", "{what}");
            assert!(
                !m.contains_key("availability_topic"),
                "{what}: list form only"
            );
        }
        let c = entity(&msgs, "calm", "connected");
        assert_eq!(c["availability"], json!([gateway]));
        assert_eq!(c["state_topic"], "affectgate/gw/calm/availability");
        assert_eq!(c["device_class"], "connectivity");
        assert_eq!(c["payload_on"], "online");
        assert_eq!(c["payload_off"], "offline");
        assert!(!c.contains_key("value_template"));
    }

    #[test]
    fn strap_entities_are_primary_but_calibrating() {
        let h = heads(&["arousal"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        // Strap connected is shown on the default dashboard (it was diagnostic, hidden).
        for what in ["arousal", "heart_rate", "rmssd", "quality", "connected"] {
            assert!(
                !entity(&msgs, "calm", what).contains_key("entity_category"),
                "{what}"
            );
        }
        assert_eq!(
            entity(&msgs, "calm", "calibrating")["entity_category"],
            "diagnostic"
        );
        for what in ["model_version", "last_retrain", "store_problem"] {
            assert!(
                !msgs.keys().any(|t| t.ends_with(&format!("_{what}/config"))),
                "{what} is the gateway's, not the strap's"
            );
        }
        // …and their old strap copies are deleted.
        let moved = moved_to_gateway_messages("homeassistant", "gw", "calm");
        assert_eq!(
            moved,
            vec![
                (
                    "homeassistant/sensor/affectgate_gw_calm_model_version/config".to_string(),
                    String::new()
                ),
                (
                    "homeassistant/sensor/affectgate_gw_calm_last_retrain/config".to_string(),
                    String::new()
                ),
                (
                    "homeassistant/binary_sensor/affectgate_gw_calm_store_problem/config"
                        .to_string(),
                    String::new()
                ),
            ]
        );
    }

    fn gateway(retrain_enabled: bool) -> BTreeMap<String, Map<String, Value>> {
        let inp = GatewayDiscoveryInput {
            prefix: "homeassistant",
            gateway: "gw",
            sw_version: "0.1.0",
            retrain_enabled,
            fleet_enabled: retrain_enabled,
        };
        gateway_discovery_messages(&inp)
            .into_iter()
            .map(|(t, p)| {
                let m = if p.is_empty() {
                    Map::new()
                } else {
                    serde_json::from_str::<Value>(&p)
                        .unwrap()
                        .as_object()
                        .unwrap()
                        .clone()
                };
                (t, m)
            })
            .collect()
    }

    #[test]
    fn gateway_device_carries_the_software_and_the_controls() {
        let msgs = gateway(true);
        assert_eq!(msgs.len(), 12);
        let g =
            |c: &str, w: &str| msgs[&format!("homeassistant/{c}/affectgate_gw/{w}/config")].clone();
        for (topic, m) in &msgs {
            let parts: Vec<&str> = topic.split('/').collect();
            assert_eq!(parts.len(), 5, "{topic}: node id level");
            assert_eq!(m["device"]["identifiers"], json!(["affectgate/gw"]));
            assert_eq!(m["device"]["name"], "affectgate gw");
            assert_eq!(m["device"]["sw_version"], "0.1.0");
            assert_eq!(m["device"]["model"], "ECG emotion gateway");
            assert_eq!(m["unique_id"], format!("affectgate/gw/{}", parts[3]));
            assert_eq!(
                m["default_entity_id"],
                entity_id(parts[1], "affectgate gw", m["name"].as_str().unwrap())
            );
            if parts[3] != "online" {
                assert_eq!(
                    m["availability"][0]["topic"], "affectgate/gw/status",
                    "{topic}"
                );
            }
        }
        let online = g("binary_sensor", "online");
        assert_eq!(online["state_topic"], "affectgate/gw/status");
        assert_eq!(online["device_class"], "connectivity");
        assert!(
            !online.contains_key("availability"),
            "says offline, never unavailable"
        );
        assert_eq!(
            online["default_entity_id"],
            "binary_sensor.affectgate_gw_online"
        );
        let mv = g("sensor", "model_version");
        assert_eq!(mv["state_topic"], "affectgate/gw/model");
        assert_eq!(mv["value_template"], "{{ value_json.version }}");
        let rt = g("sensor", "retraining");
        assert_eq!(rt["device_class"], "enum");
        assert_eq!(rt["options"], json!(retrain_state_options()));
        assert_eq!(rt["json_attributes_topic"], "affectgate/gw/retrain");
        let lr = g("sensor", "last_retrain");
        assert_eq!(lr["device_class"], "timestamp");
        assert_eq!(
            lr["value_template"],
            "{{ value_json.finished | default(None) }}"
        );
        let sp = g("binary_sensor", "store_problem");
        assert_eq!(sp["device_class"], "problem");
        assert_eq!(sp["state_topic"], "affectgate/gw/store");
        let le = g("sensor", "last_input_error");
        assert_eq!(le["state_topic"], "affectgate/gw/error");
        for (what, entity) in [
            ("retrain", "button.affectgate_gw_retrain_now"),
            ("reload", "button.affectgate_gw_reload_configuration"),
            ("rollback", "button.affectgate_gw_roll_back_model"),
            ("flush_outbox", "button.affectgate_gw_flush_outbox"),
        ] {
            let b = g("button", what);
            assert_eq!(b["command_topic"], format!("affectgate/gw/cmd/{what}"));
            assert_eq!(b["payload_press"], "{}");
            assert_eq!(b["retain"], false, "a retained command is refused");
            assert_eq!(b["default_entity_id"], entity);
        }
        // The switch over scheduled rounds: state from the retained status, never optimistic.
        let sw = g("switch", "auto_retrain");
        assert_eq!(
            sw["default_entity_id"],
            "switch.affectgate_gw_automatic_retraining"
        );
        assert_eq!(sw["state_topic"], "affectgate/gw/retrain");
        assert_eq!(sw["command_topic"], "affectgate/gw/cmd/auto_retrain");
        assert_eq!(sw["payload_on"], r#"{"enabled": true}"#);
        assert_eq!(sw["payload_off"], r#"{"enabled": false}"#);
        assert_eq!(sw["retain"], false);
        assert!(!sw.contains_key("optimistic"));
        // The fleet's update entity: JSON state, install = `{}` on cmd/update.
        let up = g("update", "model_update");
        assert_eq!(up["default_entity_id"], "update.affectgate_gw_model_update");
        assert_eq!(up["state_topic"], "affectgate/gw/update");
        assert_eq!(up["command_topic"], "affectgate/gw/cmd/update");
        assert_eq!(up["payload_install"], "{}");
        assert_eq!(up["retain"], false);
        // Retraining (and here the fleet) off: its entities are deleted (empty retained configs), the rest stay.
        let off = gateway(false);
        let empty: Vec<&String> = off
            .iter()
            .filter(|(_, m)| m.is_empty())
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            empty,
            [
                "homeassistant/button/affectgate_gw/retrain/config",
                "homeassistant/sensor/affectgate_gw/last_retrain/config",
                "homeassistant/sensor/affectgate_gw/retraining/config",
                "homeassistant/switch/affectgate_gw/auto_retrain/config",
                "homeassistant/update/affectgate_gw/model_update/config",
            ]
        );
    }

    #[test]
    fn entity_ids_follow_home_assistants_slug_rule() {
        assert_eq!(
            entity_id("sensor", "affectgate gw calm", "Arousal"),
            "sensor.affectgate_gw_calm_arousal"
        );
        assert_eq!(
            entity_id("sensor", "affectgate Home-1 Chest_2", "HRV RMSSD"),
            "sensor.affectgate_home_1_chest_2_hrv_rmssd"
        );
        assert_eq!(
            entity_id("sensor", "affectgate gw a__b", "Heart rate vs usual"),
            "sensor.affectgate_gw_a_b_heart_rate_vs_usual"
        );
        assert_eq!(entity_id("sensor", "", "?"), "sensor.unknown");
    }

    #[test]
    fn valence_only_when_a_head() {
        let one = heads(&["arousal"]);
        let two = heads(&["arousal", "valence"]);
        let has_valence = |h: &[String]| {
            discovery_messages(&input("homeassistant", "calm", h))
                .iter()
                .any(|(t, p)| t.contains("valence") || p.contains("valence"))
        };
        assert!(!has_valence(&one));
        assert!(has_valence(&two));
        assert_eq!(parsed(&input("homeassistant", "calm", &one)).len(), 7);
        let none: Vec<String> = Vec::new();
        assert_eq!(parsed(&input("homeassistant", "calm", &none)).len(), 6);
    }

    #[test]
    fn removal_covers_the_same_topics_with_empty_payloads() {
        let h = heads(&["arousal", "valence"]);
        let disc: Vec<String> = discovery_messages(&input("homeassistant", "calm", &h))
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let rem = removal_messages("homeassistant", "gw", "calm", &h);
        assert_eq!(rem.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(), disc);
        assert!(rem.iter().all(|(_, p)| p.is_empty()));

        let dropped = head_removal_messages("homeassistant", "gw", "calm", &heads(&["valence"]));
        assert_eq!(
            dropped,
            vec![(
                "homeassistant/sensor/affectgate_gw_calm_valence/config".to_string(),
                String::new()
            )]
        );
        assert!(disc.contains(&dropped[0].0));
    }

    #[test]
    fn custom_prefix_honoured() {
        let h = heads(&["arousal"]);
        let msgs = discovery_messages(&input("ha-test_2", "calm", &h));
        assert!(msgs.iter().all(|(t, _)| t.starts_with("ha-test_2/")));
        assert!(removal_messages("ha-test_2", "gw", "calm", &h)
            .iter()
            .all(|(t, _)| t.starts_with("ha-test_2/")));
        // State and availability topics do not depend on the discovery prefix.
        let m = parsed(&input("ha-test_2", "calm", &h));
        assert_eq!(
            entity(&m, "calm", "arousal")["state_topic"],
            "affectgate/gw/calm/state"
        );
        assert_eq!(ha_status_topic("ha-test_2"), "ha-test_2/status");
        assert_eq!(
            ha_status_topic(DEFAULT_DISCOVERY_PREFIX),
            "homeassistant/status"
        );
    }

    #[test]
    fn ha_birth_message() {
        assert!(is_ha_online(b"online"));
        assert!(is_ha_online(b"online\n"));
        assert!(!is_ha_online(b"offline"));
        assert!(!is_ha_online(b""));
    }

    #[test]
    fn full_key_names_only() {
        let h = heads(&["arousal"]);
        for (_, p) in discovery_messages(&input("homeassistant", "calm", &h)) {
            for abbr in [
                "\"stat_t\"",
                "\"uniq_id\"",
                "\"dev\"",
                "\"avty\"",
                "\"val_tpl\"",
                "\"o\"",
            ] {
                assert!(!p.contains(abbr), "abbreviated key {abbr} in {p}");
            }
        }
    }

    #[test]
    fn awkward_head_names_stay_valid() {
        let h = heads(&["stress-level", "items", "calm score", "arousal", "arousal"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        assert_eq!(msgs.len(), 4 + 6, "duplicate head dropped");
        for topic in msgs.keys() {
            assert!(is_id(topic.split('/').nth(2).unwrap()), "{topic}");
        }
        let state = sample_state(&h);
        for (what, key, template) in [
            (
                "stress-level",
                "stress-level",
                "{{ value_json['stress-level'] }}",
            ),
            ("items", "items", "{{ value_json['items'] }}"),
            ("calm_score", "calm score", "{{ value_json['calm score'] }}"),
        ] {
            let m = entity(&msgs, "calm", what);
            assert_eq!(m["value_template"], template);
            assert_eq!(template_key(template), key);
            assert!(state.get(key).is_some());
        }
        assert_eq!(
            entity(&msgs, "calm", "stress-level")["default_entity_id"],
            "sensor.affectgate_gw_calm_stress_level"
        );
        assert_eq!(
            entity(&msgs, "calm", "stress-level")["name"],
            "Stress level"
        );
        assert_eq!(value_template("it's"), "{{ value_json['it\\'s'] }}");
    }

    #[test]
    fn mixed_case_and_dash_ids_give_valid_entity_ids() {
        let h = heads(&["arousal"]);
        let mut inp = input("homeassistant", "Polar-H10", &h);
        inp.gateway = "Living-Room";
        let msgs = parsed(&inp);
        let m = msgs
            .values()
            .find(|m| m["unique_id"] == "affectgate_Living-Room_Polar-H10_arousal")
            .expect("unique_id keeps the configured ids");
        assert_eq!(
            m["default_entity_id"],
            "sensor.affectgate_living_room_polar_h10_arousal"
        );
        assert_eq!(m["state_topic"], "affectgate/Living-Room/Polar-H10/state");
    }

    /// Gateway `a_b` + sensor `c` and gateway `a` + sensor `b_c` used to share every topic,
    /// unique id and device. Now nothing is shared, both keep the same entity ids as before,
    /// and the old configs are deleted before the new ones; straps without `_` keep their
    /// ids exactly.
    #[test]
    fn ids_with_underscores_are_unambiguous_and_migrate() {
        let h = heads(&["arousal"]);
        let build = |gateway: &'static str, sensor: &'static str| {
            let mut inp = input("homeassistant", sensor, &h);
            inp.gateway = gateway;
            (
                parsed(&inp),
                legacy_removal_messages("homeassistant", gateway, sensor, &h),
            )
        };
        let (one, one_rm) = build("a_b", "c");
        let (two, two_rm) = build("a", "b_c");
        let uids = |m: &BTreeMap<String, Map<String, Value>>| {
            m.values()
                .map(|v| v["unique_id"].as_str().unwrap().to_string())
                .collect::<BTreeSet<_>>()
        };
        let devs = |m: &BTreeMap<String, Map<String, Value>>| {
            m.values()
                .map(|v| v["device"]["identifiers"][0].as_str().unwrap().to_string())
                .collect::<BTreeSet<_>>()
        };
        assert!(one.keys().all(|t| !two.contains_key(t)), "shared topics");
        assert!(uids(&one).is_disjoint(&uids(&two)), "shared unique ids");
        assert!(devs(&one).is_disjoint(&devs(&two)), "shared devices");
        assert!(uids(&one).contains("affectgate/a_b/c/arousal"));
        assert!(one.contains_key("homeassistant/sensor/affectgate_a_b/strap-c_arousal/config"));
        assert!(two.contains_key("homeassistant/sensor/affectgate_a/strap-b-_c_arousal/config"));
        assert_eq!(devs(&two), BTreeSet::from(["affectgate/a/b_c".to_string()]));
        // The entity ids are what they were (HA's slug of device and entity name).
        let a = one
            .values()
            .find(|v| v["unique_id"] == "affectgate/a_b/c/arousal")
            .unwrap();
        assert_eq!(a["default_entity_id"], "sensor.affectgate_a_b_c_arousal");
        // The migration: every old topic emptied, the same number as there are entities.
        assert_eq!(one_rm.len(), one.len());
        assert!(one_rm.iter().all(|(_, p)| p.is_empty()));
        assert!(one_rm
            .iter()
            .any(|(t, _)| t == "homeassistant/sensor/affectgate_a_b_c_arousal/config"));
        assert!(two_rm
            .iter()
            .any(|(t, _)| t == "homeassistant/binary_sensor/affectgate_a_b_c_connected/config"));
        // No new topic is an old one (which would be deleted right after being written).
        assert!(one_rm.iter().all(|(t, _)| !one.contains_key(t)));
        // Without `_`: the first release's ids, and nothing to migrate.
        let (plain, plain_rm) = build("gw", "calm");
        assert!(plain_rm.is_empty());
        assert!(plain.contains_key("homeassistant/sensor/affectgate_gw_calm_arousal/config"));
        assert!(uids(&plain).contains("affectgate_gw_calm_arousal"));
        assert_eq!(
            devs(&plain),
            BTreeSet::from(["affectgate_gw_calm".to_string()])
        );
        // Escaping is reversible: distinct sensors never share a topic within one gateway.
        for (x, y) in [
            ("a-", "a_"),
            ("a-_", "a_-"),
            ("x_heart", "x"),
            ("a--b", "a-_b"),
        ] {
            assert_ne!(escape_id(x), escape_id(y), "{x} {y}");
        }
        let t1: BTreeSet<String> =
            discovery_topics("homeassistant", "g_w", "x_heart", &heads(&["rate"]))
                .into_iter()
                .collect();
        let t2: BTreeSet<String> =
            discovery_topics("homeassistant", "g_w", "x", &heads(&["heart_rate"]))
                .into_iter()
                .collect();
        assert!(t1.is_disjoint(&t2));
    }
}
