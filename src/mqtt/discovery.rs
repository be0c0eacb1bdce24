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
//! One HA *device* per strap (identifiers `affectgate_<gateway>_<sensor>`), with one entity
//! per model head (`arousal`, `valence`, …), heart rate, RMSSD, signal quality, strap
//! connected, model version, last retrain and store problem. Each entity has its own config at
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
//! - **`availability` = gateway status AND strap availability, `availability_mode: "all"`.**
//!   A score is only trustworthy while both the gateway process (`affectgate/<gateway>/status`,
//!   backed by the MQTT last will) and the strap (`affectgate/<gateway>/<sensor>/availability`)
//!   are up; with `"any"` or `"latest"` a dead gateway would leave the strap's last word
//!   `online` standing and HA would show frozen numbers as current.
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
//! - **`default_entity_id`, not `object_id`.** HA 2025.10 deprecated `object_id` in discovery
//!   payloads and 2026.4 ignores it; `default_entity_id` (`sensor.affectgate_gw_calm_arousal`)
//!   is the replacement. Older HA drops the unknown key and derives the entity id from the
//!   device and entity names, which is harmless. Entity ids only allow `[a-z0-9_]`, so the
//!   object id is lowercased and `-` becomes `_` there (the `unique_id` keeps the original).
//! - **No `via_device`.** The gateway itself is not announced as a device; HA would create an
//!   empty, nameless device for a `via_device` that points nowhere.
//! - **Ids.** Gateway and sensor ids are validated `[a-zA-Z0-9_-]+` by the config, so they are
//!   used as they are; anything else (a model head name) is mapped into that alphabet for
//!   topics and ids. Because `_` may occur inside ids, `affectgate_<gateway>_<sensor>_<what>`
//!   is unique per gateway only as long as no sensor id is another sensor id plus `_<what>`.
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
/// `device.model` of every strap device.
pub const DEVICE_MODEL: &str = "ECG emotion gateway";
/// Per-window entities expire after this many window periods without a message.
pub const EXPIRE_AFTER_WINDOWS: f64 = 3.0;

pub use super::topics::ha_status as ha_status_topic;

/// Is a message on [`ha_status_topic`] HA's birth message (re-publish discovery)?
pub fn is_ha_online(payload: &[u8]) -> bool {
    payload.trim_ascii() == PAYLOAD_ONLINE.as_bytes()
}

/// The HA device identifier of one strap: `affectgate_<gateway>_<sensor>`.
pub fn device_identifier(gateway: &str, sensor: &str) -> String {
    id_segment(&format!("affectgate_{gateway}_{sensor}"))
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
/// read: the heads, then `hr_bpm`, `rmssd_ms`, `quality`, `model`.
pub fn state_keys_used(heads: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = unique_heads(heads).into_iter().map(String::from).collect();
    keys.extend(
        ["hr_bpm", "rmssd_ms", "quality", "model"]
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
    /// Gateway version, shown as the device's and origin's `sw_version`.
    pub sw_version: &'a str,
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
    ModelVersion,
    LastRetrain,
    StoreProblem,
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
        (Kind::ModelVersion, "model_version"),
        (Kind::LastRetrain, "last_retrain"),
        (Kind::StoreProblem, "store_problem"),
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
            Kind::Connected | Kind::Calibrating | Kind::StoreProblem => "binary_sensor",
            _ => "sensor",
        }
    }

    /// `affectgate_<gateway>_<sensor>_<what>`: the `unique_id` and the object id of the topic.
    fn object_id(&self, gateway: &str, sensor: &str) -> String {
        format!("{}_{}", device_identifier(gateway, sensor), self.what)
    }

    fn config_topic(&self, prefix: &str, gateway: &str, sensor: &str) -> String {
        format!(
            "{prefix}/{}/{}/config",
            self.component(),
            self.object_id(gateway, sensor)
        )
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
        let oid = self.object_id(inp.gateway, inp.sensor);
        let state = Topics::new(inp.gateway).state(inp.sensor);
        let mut m = Map::new();
        m.insert(
            "default_entity_id".into(),
            json!(format!(
                "{}.{}",
                self.component(),
                oid.to_ascii_lowercase().replace('-', "_")
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
            let strap_up = json!({
                "topic": Topics::new(inp.gateway).availability(inp.sensor),
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
                set("name", json!(display_name(head)));
                set("state_topic", json!(state));
                set("value_template", json!(value_template(head)));
                set("state_class", json!("measurement"));
                // Scores are unitless in [0, 1]: no unit_of_measurement.
                set("suggested_display_precision", json!(2));
                set("icon", json!(head_icon(head)));
            }
            Kind::HeartRate => {
                set("name", json!("Heart rate"));
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
                set("name", json!("Heart rate vs usual"));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("hr_relative")));
                set("state_class", json!("measurement"));
                set("suggested_display_precision", json!(1));
                set("icon", json!("mdi:heart-plus-outline"));
            }
            Kind::Rmssd => {
                // No device_class "duration": HA would offer unit conversion to s/min/h,
                // which makes no sense for an HRV index.
                set("name", json!("HRV RMSSD"));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("rmssd_ms")));
                set("unit_of_measurement", json!("ms"));
                set("state_class", json!("measurement"));
                set("suggested_display_precision", json!(0));
                set("icon", json!("mdi:pulse"));
            }
            Kind::Quality => {
                // Text ("good", "flat+clipping", ...): no state_class, no unit.
                set("name", json!("Signal quality"));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("quality")));
                set("icon", json!("mdi:signal"));
            }
            Kind::Calibrating => {
                // On until the gateway has learnt the wearer's baseline: scores and
                // `Heart rate vs usual` mean little before that.
                set("name", json!("Calibrating"));
                set("state_topic", json!(state));
                set(
                    "value_template",
                    json!("{{ 'ON' if value_json.calibrating else 'OFF' }}"),
                );
                set("icon", json!("mdi:tune-variant"));
                set("entity_category", json!("diagnostic"));
            }
            Kind::Connected => {
                set("name", json!("Strap connected"));
                set(
                    "state_topic",
                    json!(Topics::new(inp.gateway).availability(inp.sensor)),
                );
                set("device_class", json!("connectivity"));
                set("payload_on", json!(PAYLOAD_ONLINE));
                set("payload_off", json!(PAYLOAD_OFFLINE));
                set("entity_category", json!("diagnostic"));
            }
            Kind::ModelVersion => {
                set("name", json!("Model version"));
                set("state_topic", json!(state));
                set("value_template", json!(value_template("model")));
                set("entity_category", json!("diagnostic"));
                set("icon", json!("mdi:tag-outline"));
            }
            Kind::LastRetrain => {
                // `default(None)`: HA's MQTT sensor turns the rendered "None" into an unknown
                // state, so a retrain message without `finished` (still running, never ran)
                // neither errors nor shows a bogus time.
                set("name", json!("Last retrain"));
                set("state_topic", json!(Topics::new(inp.gateway).retrain()));
                set(
                    "value_template",
                    json!("{{ value_json.finished | default(None) }}"),
                );
                set("device_class", json!("timestamp"));
                set("entity_category", json!("diagnostic"));
                set("icon", json!("mdi:school-outline"));
            }
            Kind::StoreProblem => {
                // The retained store topic says whether a person should look (a full disk, a
                // damaged store moved aside); its other keys become the entity's attributes.
                let topic = Topics::new(inp.gateway).store();
                set("name", json!("Store problem"));
                set("state_topic", json!(topic));
                set("json_attributes_topic", json!(topic));
                set(
                    "value_template",
                    json!("{{ 'ON' if value_json.problem else 'OFF' }}"),
                );
                set("device_class", json!("problem"));
                set("entity_category", json!("diagnostic"));
            }
        }
        Value::Object(m)
    }
}

/// The device block, repeated in every config of the strap (HA wants `name` in each).
fn device_block(inp: &DiscoveryInput) -> Value {
    json!({
        "identifiers": [device_identifier(inp.gateway, inp.sensor)],
        "name": format!("ECG strap {} ({})", inp.sensor, inp.gateway),
        "manufacturer": MANUFACTURER,
        "model": DEVICE_MODEL,
        "sw_version": inp.sw_version,
    })
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
    use std::collections::{BTreeMap, HashSet};

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
            rest.split([' ', '|']).next().unwrap().to_string()
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
        assert_eq!(msgs.len(), 2 + 9);
        for (topic, m) in &msgs {
            let parts: Vec<&str> = topic.split('/').collect();
            assert_eq!(parts.len(), 4, "{topic}");
            assert_eq!(parts[0], "homeassistant");
            assert!(["sensor", "binary_sensor"].contains(&parts[1]), "{topic}");
            assert!(is_id(parts[2]), "object id of {topic}");
            assert_eq!(parts[3], "config");
            assert_eq!(m["unique_id"], parts[2]);
            assert_eq!(m["default_entity_id"], format!("{}.{}", parts[1], parts[2]));
            assert!(
                !m.contains_key("object_id"),
                "object_id is deprecated in HA"
            );
        }
        assert!(msgs.contains_key("homeassistant/sensor/affectgate_gw_calm_arousal/config"));
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
        assert_eq!(seen.len(), 22);
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
                assert_eq!(d["name"], format!("ECG strap {sensor} (gw)"));
                assert_eq!(d["manufacturer"], "affectgate");
                assert_eq!(d["model"], "ECG emotion gateway");
                assert_eq!(d["sw_version"], "0.1.0");
                assert!(d.get("via_device").is_none());
                assert_eq!(m["origin"]["name"], "affectgate");
                assert_eq!(m["origin"]["sw_version"], "0.1.0");
                assert_eq!(m["qos"], 1);
                assert!(!m["name"].as_str().unwrap().is_empty());
            }
        }
    }

    #[test]
    fn state_topics_and_templates_read_existing_state_keys() {
        let h = heads(&["arousal", "valence"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        let state = sample_state(&h);
        let keys = state.as_object().unwrap();
        for what in [
            "arousal",
            "valence",
            "heart_rate",
            "rmssd",
            "quality",
            "model_version",
        ] {
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
        assert_eq!(
            entity(&msgs, "calm", "quality")["value_template"],
            "{{ value_json.quality }}"
        );
        assert_eq!(
            entity(&msgs, "calm", "model_version")["value_template"],
            "{{ value_json.model }}"
        );
        assert_eq!(
            state_keys_used(&h),
            heads(&["arousal", "valence", "hr_bpm", "rmssd_ms", "quality", "model"])
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
        for what in ["quality", "connected", "model_version", "last_retrain"] {
            let m = entity(&msgs, "calm", what);
            assert!(!m.contains_key("state_class"), "{what} must not be numeric");
        }
        let a = entity(&msgs, "calm", "arousal");
        assert!(!a.contains_key("unit_of_measurement"));
        assert_eq!(a["suggested_display_precision"], 2);
        assert_eq!(a["name"], "Arousal");
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
        for what in ["connected", "model_version", "last_retrain"] {
            assert!(
                !entity(&msgs, "calm", what).contains_key("expire_after"),
                "{what}"
            );
        }
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
            "topic": "affectgate/gw/calm/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
        });
        for what in [
            "arousal",
            "heart_rate",
            "rmssd",
            "quality",
            "model_version",
            "last_retrain",
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
    fn diagnostic_entities() {
        let h = heads(&["arousal"]);
        let msgs = parsed(&input("homeassistant", "calm", &h));
        let mv = entity(&msgs, "calm", "model_version");
        assert_eq!(mv["entity_category"], "diagnostic");
        let sp = entity(&msgs, "calm", "store_problem");
        assert_eq!(sp["entity_category"], "diagnostic");
        assert_eq!(sp["device_class"], "problem");
        assert_eq!(sp["state_topic"], "affectgate/gw/store");
        assert_eq!(sp["json_attributes_topic"], "affectgate/gw/store");
        let lr = entity(&msgs, "calm", "last_retrain");
        assert_eq!(lr["entity_category"], "diagnostic");
        assert_eq!(lr["device_class"], "timestamp");
        assert_eq!(lr["state_topic"], "affectgate/gw/retrain");
        assert_eq!(
            lr["value_template"],
            "{{ value_json.finished | default(None) }}"
        );
        assert_eq!(
            template_key(lr["value_template"].as_str().unwrap()),
            "finished"
        );
        assert_eq!(
            entity(&msgs, "calm", "connected")["entity_category"],
            "diagnostic"
        );
        for what in ["arousal", "heart_rate", "rmssd", "quality"] {
            assert!(
                !entity(&msgs, "calm", what).contains_key("entity_category"),
                "{what}"
            );
        }
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
        assert_eq!(parsed(&input("homeassistant", "calm", &one)).len(), 11);
        let none: Vec<String> = Vec::new();
        assert_eq!(parsed(&input("homeassistant", "calm", &none)).len(), 9);
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
        assert_eq!(msgs.len(), 4 + 9, "duplicate head dropped");
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
}
