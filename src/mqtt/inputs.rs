//! Inbound MQTT messages: the only bytes the gateway accepts from the home network.
//!
//! The gateway subscribes to [`subscriptions`]:
//!
//! * `affectgate/<gateway>/<sensor>/label` — a self-report ("how did you feel?") that becomes a
//!   label on the stored windows it covers, later used to personalise the model
//!   ([`LabelReport`]);
//! * `affectgate/<gateway>/cmd/<name>` — `retrain`, `reload` (the config) or `flush_outbox`
//!   ([`Command`]), with an empty payload or `{}`.
//!
//! This module owns turning `(topic, payload)` into an [`Input`] — and nothing else: it is a
//! pure validation layer, no I/O, no clock (the caller passes `now_ns`), no access to the
//! store. Everything that arrives here is untrusted: anyone on the broker can publish
//! anything. So the checks are deliberately schema-like and strict — a closed set of fields,
//! typed values, explicit ranges, bounded sizes — and every failure is an [`InputError`] that
//! names the topic, the field and what would have been accepted, ready to be published on
//! `affectgate/<gateway>/error` ([`InputError::to_json`]) and logged. Nothing in here panics
//! on any input (a property test below throws thousands of random payloads at it), and
//! nothing half-valid gets through: a label that is accepted has values in `0..=1`, a
//! non-empty time span of at most 24 h that does not end more than 60 s in the future.
//!
//! Accepted label payloads (a JSON object, at most [`MAX_PAYLOAD_BYTES`]):
//!
//! ```text
//! {"arousal": 7, "valence": 3, "scale": "1-9",
//!  "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:05:00Z"}
//! {"arousal": 7, "scale": "1-9", "last_minutes": 5}
//! {"arousal": 0.8}                      // scale "0-1", last_minutes 1
//! ```
//!
//! Label names are [`LABEL_NAMES`]; values are normalised to `0..=1` as
//! `(v - lo) / (hi - lo)` for the scale `"lo-hi"`.

use std::fmt;

use serde_json::{Map, Value};

/// Largest accepted payload. A self-report is ~150 bytes; the cap keeps a hostile or broken
/// publisher from making us parse (and echo in errors) megabytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Label names a self-report may carry (the model's heads), in report order.
pub const LABEL_NAMES: [&str; 3] = ["arousal", "valence", "dominance"];
/// Command names under `affectgate/<gateway>/cmd/`.
pub const COMMAND_NAMES: [&str; 6] = [
    "retrain",
    "reload",
    "flush_outbox",
    "rollback",
    "promote",
    "auto_retrain",
];
/// Every field a label payload may have.
pub const LABEL_FIELDS: [&str; 7] = [
    "arousal",
    "valence",
    "dominance",
    "scale",
    "from",
    "to",
    "last_minutes",
];
/// Scale used when the payload has no `"scale"`.
pub const DEFAULT_SCALE: (f64, f64) = (0.0, 1.0);
/// Window length when the payload gives neither `from`/`to` nor `last_minutes`: "now" means
/// the last minute — long enough to cover the window(s) of the last 10 s whatever their
/// length and the publish latency, short enough not to smear the label over a different state.
pub const DEFAULT_LAST_MINUTES: f64 = 1.0;
/// Upper bound of `last_minutes` (24 h), the same as the longest `from`/`to` span.
pub const MAX_LAST_MINUTES: f64 = 1440.0;
/// How far `to` may lie in the future: absorbs clock skew between the reporter and the
/// gateway, but a report about a time that has not happened yet is a mistake.
pub const MAX_FUTURE_NS: i64 = 60 * NS_PER_S;
/// Longest span a report may cover: nobody can say how they felt for longer in one number,
/// and it bounds how many stored windows one message can relabel.
pub const MAX_SPAN_NS: i64 = 24 * 3600 * NS_PER_S;

const NS_PER_S: i64 = 1_000_000_000;
const LABEL_EXAMPLE: &str = r#"expected a JSON object such as {"arousal": 7, "scale": "1-9"}"#;
const COMMAND_EXAMPLE: &str = "expected an empty payload or {}";
const TIME_FORMAT: &str = "an RFC 3339 timestamp such as \"2026-11-25T10:00:00Z\" \
     (UTC \"Z\", an offset such as \"+01:00\", or no zone, read as UTC)";

/// One validated inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A self-report for `sensor` (one of the configured sensors).
    Label {
        sensor: String,
        label: LabelReport,
    },
    Command(Command),
    /// `promote` with `{"id": "<registry id>"}`: serve that registered model (what
    /// `affectgate model promote <id>` does).
    Promote {
        id: String,
    },
    /// `auto_retrain` with `{"enabled": true|false}`: resume or pause the scheduled
    /// retraining rounds (Home Assistant's "Automatic retraining" switch).
    AutoRetrain {
        enabled: bool,
    },
}

/// Commands on `affectgate/<gateway>/cmd/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `retrain`: personalise the model with the labels collected so far.
    Retrain,
    /// `reload`: re-read the configuration.
    Reload,
    /// `flush_outbox`: publish what the outbox holds now.
    FlushOutbox,
    /// `rollback`: serve the model that served before the current one (what
    /// `affectgate model rollback` does).
    Rollback,
    /// `update`: install the release the fleet's rollout plan offers now (`[fleet] policy =
    /// "manual"`; Home Assistant's update entity sends it).
    Update,
}

impl Command {
    /// The topic name of the command (`"flush_outbox"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Command::Retrain => "retrain",
            Command::Reload => "reload",
            Command::FlushOutbox => "flush_outbox",
            Command::Rollback => "rollback",
            Command::Update => "update",
        }
    }

    fn from_name(name: &str) -> Option<Command> {
        match name {
            "retrain" => Some(Command::Retrain),
            "reload" => Some(Command::Reload),
            "flush_outbox" => Some(Command::FlushOutbox),
            "rollback" => Some(Command::Rollback),
            "update" => Some(Command::Update),
            _ => None,
        }
    }
}

/// A validated self-report.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelReport {
    /// `(name, value)` normalised to `0..=1`, in [`LABEL_NAMES`] order, at least one.
    pub values: Vec<(String, f32)>,
    /// The same values as sent, on `scale` (kept so the store can show what the person said).
    pub raw: Vec<(String, f64)>,
    /// `(lo, hi)` of the scale the values were given on, `lo < hi`.
    pub scale: (f64, f64),
    /// Start of the reported span, ns since the Unix epoch.
    pub from_ns: i64,
    /// End of the reported span, ns since the Unix epoch; `from_ns < to_ns`,
    /// `to_ns - from_ns <= MAX_SPAN_NS`, `to_ns <= now + MAX_FUTURE_NS`.
    pub to_ns: i64,
}

/// Why an inbound message was rejected. Every variant carries the topic; [`InputError::field`]
/// is the payload field at fault (`None` when the problem is not field-specific); the message
/// says what is allowed.
///
/// `Display` is `"<topic>: <message>"` (for logs); [`InputError::to_json`] is the payload for
/// the error topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// `<sensor>` in `.../<sensor>/label` is not a configured sensor.
    UnknownSensor {
        topic: String,
        sensor: String,
        known: Vec<String>,
    },
    /// `<name>` in `.../cmd/<name>` is not a command.
    UnknownCommand {
        topic: String,
        command: String,
    },
    /// Payload longer than [`MAX_PAYLOAD_BYTES`].
    TooLarge {
        topic: String,
        len: usize,
    },
    NotUtf8 {
        topic: String,
    },
    /// `expected` describes the accepted payloads of this topic.
    NotJson {
        topic: String,
        detail: String,
        expected: &'static str,
    },
    /// Valid JSON, but not an object (`found` is "array", "string", …).
    NotObject {
        topic: String,
        found: &'static str,
        expected: &'static str,
    },
    /// A field outside the topic's closed set (`allowed` empty for commands).
    UnknownField {
        topic: String,
        field: String,
        allowed: &'static [&'static str],
    },
    /// A known field with a bad value (or a missing / conflicting companion field).
    BadValue {
        topic: String,
        field: String,
        message: String,
    },
    /// A label payload without any of [`LABEL_NAMES`].
    NoLabel {
        topic: String,
    },
    /// A retained copy of a command or self-report: inputs act once, when published; a
    /// retained one would act again at every reconnect and restart.
    Retained {
        topic: String,
    },
    /// A zero-length command payload: that is how a retained message is deleted, so it runs
    /// nothing.
    EmptyCommand {
        topic: String,
    },
}

impl InputError {
    /// The topic the rejected message came on.
    pub fn topic(&self) -> &str {
        match self {
            InputError::UnknownSensor { topic, .. }
            | InputError::UnknownCommand { topic, .. }
            | InputError::TooLarge { topic, .. }
            | InputError::NotUtf8 { topic }
            | InputError::NotJson { topic, .. }
            | InputError::NotObject { topic, .. }
            | InputError::UnknownField { topic, .. }
            | InputError::BadValue { topic, .. }
            | InputError::NoLabel { topic }
            | InputError::Retained { topic }
            | InputError::EmptyCommand { topic } => topic,
        }
    }

    /// The payload field at fault, if the problem is field-specific.
    pub fn field(&self) -> Option<&str> {
        match self {
            InputError::UnknownField { field, .. } | InputError::BadValue { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }

    /// What is wrong and what is allowed, without the topic.
    pub fn message(&self) -> String {
        match self {
            InputError::UnknownSensor { sensor, known, .. } => {
                if known.is_empty() {
                    format!("unknown sensor {sensor:?}; no sensors are configured")
                } else {
                    format!(
                        "unknown sensor {sensor:?}; known sensors: {}",
                        known.join(", ")
                    )
                }
            }
            InputError::UnknownCommand { command, .. } => format!(
                "unknown command {command:?}; valid commands: {}",
                COMMAND_NAMES.join(", ")
            ),
            InputError::TooLarge { len, .. } => {
                format!("payload is {len} bytes; at most {MAX_PAYLOAD_BYTES} bytes are allowed")
            }
            InputError::NotUtf8 { .. } => {
                "payload is not UTF-8 text; expected JSON or an empty payload".to_string()
            }
            InputError::NotJson {
                detail, expected, ..
            } => format!("payload is not valid JSON ({detail}); {expected}"),
            InputError::NotObject {
                found, expected, ..
            } => format!("payload is a JSON {found}, not an object; {expected}"),
            InputError::UnknownField { field, allowed, .. } => {
                if allowed.is_empty() {
                    format!("unknown field {field:?}; commands take no fields: send an empty payload or {{}}")
                } else {
                    format!(
                        "unknown field {field:?}; allowed fields: {}",
                        allowed.join(", ")
                    )
                }
            }
            InputError::BadValue { field, message, .. } => format!("{field:?} {message}"),
            InputError::NoLabel { .. } => format!(
                "no label value; give at least one of {} (a number on the scale)",
                LABEL_NAMES.join(", ")
            ),
            InputError::Retained { topic } => format!(
                "retained message ignored: commands and self-reports act once, when published, and a retained copy would act again at every reconnect and restart; publish without the retain flag, and delete this one with an empty retained message (mosquitto_pub -r -n -t '{topic}')"
            ),
            InputError::EmptyCommand { .. } => "empty payload ignored: a zero-length message is how a retained one is deleted, so it runs nothing; send {} to run the command".to_string(),
        }
    }

    /// Payload for `affectgate/<gateway>/error`:
    /// `{"topic": "...", "field": "..." | null, "error": "<message>"}`.
    pub fn to_json(&self) -> String {
        error_json(Some(self.topic()), self.field(), &self.message())
    }
}

/// The one payload of `affectgate/<gateway>/error`, for rejected inputs and for every other
/// problem the gateway reports there: `{"topic": …|null, "field": …|null, "error": "…"}`.
/// Written by hand rather than with `json!` so the keys keep this order (serde_json's map
/// sorts them); each value is still escaped by serde_json.
pub fn error_json(topic: Option<&str>, field: Option<&str>, error: &str) -> String {
    let enc = |s: &str| Value::String(s.to_string()).to_string();
    format!(
        r#"{{"topic":{},"field":{},"error":{}}}"#,
        topic.map_or_else(|| "null".to_string(), enc),
        field.map_or_else(|| "null".to_string(), enc),
        enc(error)
    )
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.topic(), self.message())
    }
}

/// [`parse_input`] for one delivery from the broker: a retained delivery of one of our
/// command or label topics is refused before anything else ([`InputError::Retained`]).
pub fn parse_delivery(
    gateway: &str,
    topic: &str,
    payload: &[u8],
    retained: bool,
    now_ns: i64,
    known_sensors: &[String],
) -> Result<Option<Input>, InputError> {
    if retained && route(gateway, topic).is_some() {
        return Err(InputError::Retained {
            topic: topic.to_string(),
        });
    }
    parse_input(gateway, topic, payload, now_ns, known_sensors)
}

/// Parse and validate one inbound message.
///
/// * `Ok(None)`: the topic is not one of ours (another gateway, our own `state`/`error`/
///   `status` publishes, other levels) — the caller ignores it, the payload is not looked at.
/// * `Ok(Some(_))`: a valid label or command.
/// * `Err(_)`: our topic with a bad sensor/command name or a bad payload.
///
/// `now_ns` (ns since the Unix epoch) anchors `last_minutes` and the future check;
/// `known_sensors` are the configured sensor ids.
pub fn parse_input(
    gateway: &str,
    topic: &str,
    payload: &[u8],
    now_ns: i64,
    known_sensors: &[String],
) -> Result<Option<Input>, InputError> {
    let Some(route) = route(gateway, topic) else {
        return Ok(None);
    };
    // The size check comes before anything reads the payload.
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(InputError::TooLarge {
            topic: topic.to_string(),
            len: payload.len(),
        });
    }
    match route {
        Route::Command("promote") => parse_promote(topic, payload).map(Some),
        Route::Command("auto_retrain") => parse_auto_retrain(topic, payload).map(Some),
        Route::Command(name) => {
            let command = Command::from_name(name).ok_or_else(|| InputError::UnknownCommand {
                topic: topic.to_string(),
                command: name.to_string(),
            })?;
            check_command_payload(topic, payload)?;
            Ok(Some(Input::Command(command)))
        }
        Route::Label(sensor) => {
            if !known_sensors.iter().any(|s| s == sensor) {
                return Err(InputError::UnknownSensor {
                    topic: topic.to_string(),
                    sensor: sensor.to_string(),
                    known: known_sensors.to_vec(),
                });
            }
            let label = parse_label(topic, payload, now_ns)?;
            Ok(Some(Input::Label {
                sensor: sensor.to_string(),
                label,
            }))
        }
    }
}

enum Route<'a> {
    Label(&'a str),
    Command(&'a str),
}

/// Which of our two topic shapes `topic` is, if any. Exactly four levels, as the two
/// subscriptions match. `cmd` in the sensor position is the command namespace, so
/// `affectgate/<gw>/cmd/label` is the (unknown) command "label", never a label for a sensor
/// called "cmd" — the two subscriptions overlap only there, and a command namespace that a
/// sensor id could shadow would be worse.
fn route<'a>(gateway: &str, topic: &'a str) -> Option<Route<'a>> {
    let mut levels = topic.split('/');
    if levels.next()? != "affectgate" || levels.next()? != gateway {
        return None;
    }
    let (a, b) = (levels.next()?, levels.next()?);
    if levels.next().is_some() {
        return None;
    }
    if a == "cmd" {
        Some(Route::Command(b))
    } else if b == "label" {
        Some(Route::Label(a))
    } else {
        None
    }
}

const PROMOTE_EXAMPLE: &str =
    r#"expected a JSON object such as {"id": "r0002"} (ids: `affectgate model list`)"#;
const AUTO_RETRAIN_EXAMPLE: &str = r#"expected {"enabled": true} or {"enabled": false}"#;

/// The one argument of a command that takes exactly one (`promote`'s `id`, `auto_retrain`'s
/// `enabled`): the payload must be a JSON object with no other field. `None` when the field
/// is absent (each command says what it needs).
fn command_argument(
    topic: &str,
    payload: &[u8],
    field: &'static [&'static str; 1],
    example: &'static str,
) -> Result<Option<Value>, InputError> {
    if payload.is_empty() {
        return Err(InputError::EmptyCommand {
            topic: topic.to_string(),
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| InputError::NotUtf8 {
        topic: topic.to_string(),
    })?;
    let mut obj = json_object(topic, text, example)?;
    if let Some(other) = obj.keys().find(|k| k.as_str() != field[0]) {
        return Err(InputError::UnknownField {
            topic: topic.to_string(),
            field: other.clone(),
            allowed: field,
        });
    }
    Ok(obj.remove(field[0]))
}

/// `cmd/promote`: exactly `{"id": "<registry id>"}`, the id in the registry's alphabet.
fn parse_promote(topic: &str, payload: &[u8]) -> Result<Input, InputError> {
    let bad = |message: &str| InputError::BadValue {
        topic: topic.to_string(),
        field: "id".to_string(),
        message: message.to_string(),
    };
    let id = match command_argument(topic, payload, &["id"], PROMOTE_EXAMPLE)? {
        None => {
            return Err(bad(
                "is missing; send {\"id\": \"r0002\"} (ids: `affectgate model list`)",
            ))
        }
        Some(Value::String(id)) => id,
        Some(_) => return Err(bad("must be a string such as \"r0002\"")),
    };
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(bad("must be 1–64 characters of [a-zA-Z0-9_-], a registry id such as \"r0002\" or \"shipped\""));
    }
    Ok(Input::Promote { id })
}

/// `cmd/auto_retrain`: exactly `{"enabled": true}` or `{"enabled": false}`.
fn parse_auto_retrain(topic: &str, payload: &[u8]) -> Result<Input, InputError> {
    let bad = |message: String| InputError::BadValue {
        topic: topic.to_string(),
        field: "enabled".to_string(),
        message,
    };
    match command_argument(topic, payload, &["enabled"], AUTO_RETRAIN_EXAMPLE)? {
        Some(Value::Bool(enabled)) => Ok(Input::AutoRetrain { enabled }),
        Some(_) => Err(bad("must be true or false".to_string())),
        None => Err(bad(format!("is missing; {AUTO_RETRAIN_EXAMPLE}"))),
    }
}

/// Commands carry no arguments. A whitespace-only payload (`echo | mosquitto_pub -l` sends a
/// newline) and `{}` are accepted; a zero-length one is not a command (deleting a retained
/// message delivers exactly that, and must not run it); anything else is rejected rather than
/// ignored, so a typo'd argument is not silently dropped. (A Home Assistant MQTT button must
/// therefore set `payload_press: "{}"`; its default `"PRESS"` is rejected as not JSON.)
fn check_command_payload(topic: &str, payload: &[u8]) -> Result<(), InputError> {
    if payload.is_empty() {
        return Err(InputError::EmptyCommand {
            topic: topic.to_string(),
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| InputError::NotUtf8 {
        topic: topic.to_string(),
    })?;
    if text.trim().is_empty() {
        return Ok(());
    }
    let obj = json_object(topic, text, COMMAND_EXAMPLE)?;
    if let Some(field) = obj.keys().next() {
        return Err(InputError::UnknownField {
            topic: topic.to_string(),
            field: field.clone(),
            allowed: &[],
        });
    }
    Ok(())
}

/// Parse `text` as a JSON object. (serde_json keeps the last of duplicate keys; that is the
/// only leniency left, and it cannot smuggle in an unvalidated value.)
fn json_object(
    topic: &str,
    text: &str,
    expected: &'static str,
) -> Result<Map<String, Value>, InputError> {
    let value: Value = serde_json::from_str(text).map_err(|e| InputError::NotJson {
        topic: topic.to_string(),
        detail: e.to_string(),
        expected,
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(InputError::NotObject {
            topic: topic.to_string(),
            found: json_type(&other),
            expected,
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value's type with an article, for "got ..." messages.
fn described(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bad(topic: &str, field: &str, message: impl Into<String>) -> InputError {
    InputError::BadValue {
        topic: topic.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

fn parse_label(topic: &str, payload: &[u8], now_ns: i64) -> Result<LabelReport, InputError> {
    let text = std::str::from_utf8(payload).map_err(|_| InputError::NotUtf8 {
        topic: topic.to_string(),
    })?;
    let obj = json_object(topic, text, LABEL_EXAMPLE)?;
    // Closed set of fields: a misspelt label ("arousl") must not be dropped silently, or the
    // person believes they labelled something they did not.
    if let Some(field) = obj.keys().find(|k| !LABEL_FIELDS.contains(&k.as_str())) {
        return Err(InputError::UnknownField {
            topic: topic.to_string(),
            field: field.clone(),
            allowed: &LABEL_FIELDS,
        });
    }

    let (scale, scale_given) = match obj.get("scale") {
        None => (DEFAULT_SCALE, false),
        Some(Value::String(s)) => (check_scale(topic, s)?, true),
        Some(other) => {
            return Err(bad(
                topic,
                "scale",
                format!(
                    "must be a string \"lo-hi\" such as \"1-9\", got {}",
                    described(other)
                ),
            ))
        }
    };

    let mut values = Vec::new();
    let mut raw = Vec::new();
    for name in LABEL_NAMES {
        if let Some(v) = obj.get(name) {
            let x = number(topic, name, v)?;
            values.push((
                name.to_string(),
                normalise(topic, name, x, scale, scale_given)?,
            ));
            raw.push((name.to_string(), x));
        }
    }
    if values.is_empty() {
        return Err(InputError::NoLabel {
            topic: topic.to_string(),
        });
    }

    let (from_ns, to_ns) = time_span(topic, &obj, now_ns)?;
    Ok(LabelReport {
        values,
        raw,
        scale,
        from_ns,
        to_ns,
    })
}

/// A JSON number, finite. Strings are not coerced (`"7"`): a template that produces a string
/// where a number belongs is more likely producing the wrong thing altogether.
fn number(topic: &str, field: &str, v: &Value) -> Result<f64, InputError> {
    let x = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            return Err(bad(
                topic,
                field,
                format!("must be a JSON number, got the string {s:?} (write 7, not \"7\")"),
            ))
        }
        other => {
            return Err(bad(
                topic,
                field,
                format!("must be a JSON number, got {}", described(other)),
            ))
        }
    };
    match x {
        Some(x) => check_finite(topic, field, x),
        None => Err(bad(topic, field, "must be a finite number")),
    }
}

/// serde_json already refuses `NaN`/`Infinity` and overflowing literals such as `1e999`; this
/// check keeps the guarantee local instead of relying on that.
fn check_finite(topic: &str, field: &str, x: f64) -> Result<f64, InputError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(bad(
            topic,
            field,
            format!("must be a finite number, got {x}"),
        ))
    }
}

/// `(x - lo) / (hi - lo)` for `x` within `[lo, hi]` (inclusive).
fn normalise(
    topic: &str,
    field: &str,
    x: f64,
    (lo, hi): (f64, f64),
    scale_given: bool,
) -> Result<f32, InputError> {
    if !(lo..=hi).contains(&x) {
        // The commonest mistake is `{"arousal": 7}` meant on 1-9: say where the scale came from.
        let hint = if scale_given {
            String::new()
        } else {
            " (the default scale; add \"scale\": \"1-9\" or similar for other ranges)".to_string()
        };
        return Err(bad(
            topic,
            field,
            format!("must be within the scale {lo}-{hi}{hint}, got {x}"),
        ));
    }
    // Rounding cannot leave [0, 1] here (subtraction and division are monotonic), the clamp
    // only makes the invariant independent of that argument.
    Ok((((x - lo) / (hi - lo)) as f32).clamp(0.0, 1.0))
}

fn check_scale(topic: &str, s: &str) -> Result<(f64, f64), InputError> {
    const ALLOWED: &str = "must be \"lo-hi\" with finite numbers lo < hi, \
         such as \"0-1\" (the default), \"1-9\", \"1-5\" or \"0-10\"";
    match parse_scale(s) {
        Some((lo, hi)) if lo >= hi => Err(bad(
            topic,
            "scale",
            format!("{ALLOWED}; got {s:?} (lo {lo} is not below hi {hi})"),
        )),
        // Both finite but hi - lo overflows: normalising would divide by infinity.
        Some((lo, hi)) if !(hi - lo).is_finite() => Err(bad(
            topic,
            "scale",
            format!("{ALLOWED}; got {s:?} (hi - lo is too large to compute)"),
        )),
        Some(scale) => Ok(scale),
        None => Err(bad(topic, "scale", format!("{ALLOWED}; got {s:?}"))),
    }
}

/// Split `"lo-hi"` at the first `-` that leaves a number on both sides, so negative bounds and
/// exponents work (`"-5-5"`, `"1e-3-1"`); `None` when no split does. Returns finite numbers.
fn parse_scale(s: &str) -> Option<(f64, f64)> {
    let s = s.trim();
    s.match_indices('-')
        .filter(|&(i, _)| i > 0)
        .find_map(|(i, _)| {
            let lo = s[..i].trim().parse::<f64>().ok()?;
            let hi = s[i + 1..].trim().parse::<f64>().ok()?;
            (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
        })
}

/// The reported span: `from`+`to`, or `last_minutes` (default [`DEFAULT_LAST_MINUTES`])
/// ending at `now_ns`. Mixing the two forms is an error rather than a precedence rule: the
/// sender meant one of them and we cannot tell which.
fn time_span(topic: &str, obj: &Map<String, Value>, now_ns: i64) -> Result<(i64, i64), InputError> {
    let (from, to, last) = (obj.get("from"), obj.get("to"), obj.get("last_minutes"));
    if last.is_some() && (from.is_some() || to.is_some()) {
        return Err(bad(
            topic,
            "last_minutes",
            "cannot be combined with \"from\"/\"to\"; give either \"from\" and \"to\" \
             or \"last_minutes\"",
        ));
    }
    match (from, to) {
        (None, None) => {
            let minutes = match last {
                Some(v) => number(topic, "last_minutes", v)?,
                None => DEFAULT_LAST_MINUTES,
            };
            if !(minutes > 0.0 && minutes <= MAX_LAST_MINUTES) {
                return Err(bad(
                    topic,
                    "last_minutes",
                    format!(
                        "must be a number of minutes in (0, {MAX_LAST_MINUTES}], got {minutes}"
                    ),
                ));
            }
            // At least 1 ns so that from < to holds for any positive input.
            let span = ((minutes * 60.0 * NS_PER_S as f64).round() as i64).max(1);
            Ok((now_ns.saturating_sub(span), now_ns))
        }
        (Some(_), None) => Err(bad(
            topic,
            "to",
            "is missing: \"from\" needs \"to\" (or use \"last_minutes\" for a span ending now)",
        )),
        (None, Some(_)) => Err(bad(
            topic,
            "from",
            "is missing: \"to\" needs \"from\" (or use \"last_minutes\" for a span ending now)",
        )),
        (Some(f), Some(t)) => {
            let from_ns = timestamp(topic, "from", f)?;
            let to_ns = timestamp(topic, "to", t)?;
            if from_ns >= to_ns {
                return Err(bad(topic, "from", "must be before \"to\""));
            }
            if to_ns > now_ns.saturating_add(MAX_FUTURE_NS) {
                return Err(bad(
                    topic,
                    "to",
                    format!(
                        "is {:.0} s in the future; at most {} s ahead of the gateway's clock is allowed",
                        (to_ns as f64 - now_ns as f64) / NS_PER_S as f64,
                        MAX_FUTURE_NS / NS_PER_S
                    ),
                ));
            }
            // to_ns > from_ns, both i64: the difference fits in u64.
            let span = to_ns.abs_diff(from_ns);
            if span > MAX_SPAN_NS as u64 {
                return Err(bad(
                    topic,
                    "from",
                    format!(
                        "is {:.1} h before \"to\"; a report may span at most 24 h",
                        span as f64 / 3600e9
                    ),
                ));
            }
            Ok((from_ns, to_ns))
        }
    }
}

fn timestamp(topic: &str, field: &str, v: &Value) -> Result<i64, InputError> {
    match v {
        Value::String(s) => parse_timestamp(s).map_err(|why| {
            bad(
                topic,
                field,
                format!("must be {TIME_FORMAT}; got {s:?}: {why}"),
            )
        }),
        other => Err(bad(
            topic,
            field,
            format!("must be {TIME_FORMAT}; got {}", described(other)),
        )),
    }
}

use crate::time::parse_rfc3339 as parse_timestamp;

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = "gw1";
    /// 2026-11-25T10:05:00Z
    const NOW: i64 = 1_795_601_100 * NS_PER_S;
    /// 2026-11-25T10:00:00Z
    const T10_00: i64 = 1_795_600_800 * NS_PER_S;
    const MIN: i64 = 60 * NS_PER_S;

    fn sensors() -> Vec<String> {
        vec!["chest".to_string(), "wrist".to_string()]
    }

    fn label_topic() -> String {
        format!("affectgate/{GW}/chest/label")
    }

    fn parse(topic: &str, payload: &str) -> Result<Option<Input>, InputError> {
        parse_input(GW, topic, payload.as_bytes(), NOW, &sensors())
    }

    fn label(payload: &str) -> LabelReport {
        match parse(&label_topic(), payload) {
            Ok(Some(Input::Label { sensor, label })) => {
                assert_eq!(sensor, "chest");
                label
            }
            other => panic!("{payload}: expected a label, got {other:?}"),
        }
    }

    /// The error for a label payload; checks it names the topic and `field`, and that the
    /// message contains every `needles` entry.
    fn label_err(payload: &str, field: Option<&str>, needles: &[&str]) -> InputError {
        let e = parse(&label_topic(), payload).expect_err(payload);
        check_err(&e, &label_topic(), field, needles);
        e
    }

    fn check_err(e: &InputError, topic: &str, field: Option<&str>, needles: &[&str]) {
        assert_eq!(e.topic(), topic, "{e}");
        assert_eq!(e.field(), field, "{e}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("{topic}: ")), "{text}");
        if let Some(f) = field {
            assert!(text.contains(f), "{text} should name {f}");
        }
        for n in needles {
            assert!(text.contains(n), "{text:?} should contain {n:?}");
        }
        let json: Value = serde_json::from_str(&e.to_json()).expect("to_json is JSON");
        assert_eq!(json["topic"], topic);
        assert_eq!(json["field"], field.map_or(Value::Null, Value::from));
        assert_eq!(json["error"], e.message());
    }

    fn values(l: &LabelReport) -> Vec<(&str, f32)> {
        l.values.iter().map(|(n, v)| (n.as_str(), *v)).collect()
    }

    // ---- topics ----

    #[test]
    fn foreign_topics_are_ignored_whatever_the_payload() {
        for topic in [
            "affectgate/gw2/chest/label",
            "affectgate/gw2/cmd/retrain",
            "affectgate/gw/chest/label",
            "affectgate/gw1x/chest/label",
            "other/gw1/chest/label",
            "affectgate/gw1/chest/state",
            "affectgate/gw1/error",
            "affectgate/gw1/status",
            "affectgate/gw1/cmd",
            "affectgate/gw1/chest/label/extra",
            "affectgate/gw1/cmd/retrain/extra",
            "affectgate/gw1",
            "",
        ] {
            for payload in [&b"\xff\xfe garbage"[..], &[b'x'; 10_000][..], b""] {
                assert_eq!(
                    parse_input(GW, topic, payload, NOW, &sensors()),
                    Ok(None),
                    "{topic}"
                );
            }
        }
    }

    #[test]
    fn unknown_sensor_lists_known_ones() {
        let topic = "affectgate/gw1/ankle/label";
        let e = parse(topic, r#"{"arousal": 0.5}"#).unwrap_err();
        check_err(
            &e,
            topic,
            None,
            &["\"ankle\"", "known sensors: chest, wrist"],
        );
        let e = parse_input(GW, topic, b"{}", NOW, &[]).unwrap_err();
        check_err(&e, topic, None, &["no sensors are configured"]);
        let e = parse("affectgate/gw1//label", "{}").unwrap_err();
        check_err(&e, "affectgate/gw1//label", None, &["unknown sensor \"\""]);
    }

    // ---- commands ----

    #[test]
    fn commands_with_empty_and_empty_object_payloads() {
        for (name, cmd) in [
            ("retrain", Command::Retrain),
            ("reload", Command::Reload),
            ("flush_outbox", Command::FlushOutbox),
            ("rollback", Command::Rollback),
        ] {
            assert_eq!(cmd.name(), name);
            let topic = format!("affectgate/gw1/cmd/{name}");
            for payload in ["{}", " { } ", "\n", "\r\n\t "] {
                assert_eq!(
                    parse(&topic, payload),
                    Ok(Some(Input::Command(cmd))),
                    "{payload:?}"
                );
            }
            // Deleting a retained command delivers a zero-length payload: it runs nothing.
            let e = parse(&topic, "").unwrap_err();
            assert_eq!(
                e,
                InputError::EmptyCommand {
                    topic: topic.clone()
                }
            );
            assert!(e.message().contains("send {} to run"), "{}", e.message());
        }
    }

    #[test]
    fn retained_commands_and_labels_are_refused_others_ignored() {
        let now = 1_764_000_000_000_000_000;
        for topic in ["affectgate/gw1/cmd/reload", "affectgate/gw1/s1/label"] {
            let e = parse_delivery("gw1", topic, b"{}", true, now, &["s1".into()]).unwrap_err();
            assert_eq!(
                e,
                InputError::Retained {
                    topic: topic.into()
                }
            );
            assert!(
                e.to_json().contains("mosquitto_pub -r -n -t"),
                "{}",
                e.to_json()
            );
        }
        // The same command published live runs; other gateways' retained topics are not ours.
        assert_eq!(
            parse_delivery("gw1", "affectgate/gw1/cmd/reload", b"{}", false, now, &[]),
            Ok(Some(Input::Command(Command::Reload)))
        );
        assert_eq!(
            parse_delivery("gw1", "affectgate/gw2/cmd/reload", b"{}", true, now, &[]),
            Ok(None)
        );
    }

    #[test]
    fn unknown_command_lists_valid_ones() {
        for name in ["restart", "Retrain", "", "label"] {
            let topic = format!("affectgate/gw1/cmd/{name}");
            let e = parse(&topic, "").unwrap_err();
            check_err(
                &e,
                &topic,
                None,
                &[
                    &format!("{name:?}"),
                    "valid commands: retrain, reload, flush_outbox",
                ],
            );
        }
    }

    #[test]
    fn promote_takes_a_registry_id() {
        let topic = "affectgate/gw1/cmd/promote";
        assert_eq!(
            parse(topic, r#"{"id": "r0002"}"#),
            Ok(Some(Input::Promote { id: "r0002".into() }))
        );
        let e = parse(topic, "{}").unwrap_err();
        check_err(&e, topic, Some("id"), &["missing", "r0002"]);
        let e = parse(topic, r#"{"id": 2}"#).unwrap_err();
        check_err(&e, topic, Some("id"), &["string"]);
        let e = parse(topic, r#"{"id": "../x"}"#).unwrap_err();
        check_err(&e, topic, Some("id"), &["[a-zA-Z0-9_-]"]);
        let e = parse(topic, r#"{"id": "r1", "force": true}"#).unwrap_err();
        check_err(&e, topic, Some("force"), &[]);
        assert!(matches!(
            parse(topic, ""),
            Err(InputError::EmptyCommand { .. })
        ));
    }

    #[test]
    fn auto_retrain_takes_enabled() {
        let topic = "affectgate/gw1/cmd/auto_retrain";
        assert_eq!(
            parse(topic, r#"{"enabled": false}"#),
            Ok(Some(Input::AutoRetrain { enabled: false }))
        );
        assert_eq!(
            parse(topic, r#"{"enabled":true}"#),
            Ok(Some(Input::AutoRetrain { enabled: true }))
        );
        let e = parse(topic, "{}").unwrap_err();
        check_err(
            &e,
            topic,
            Some("enabled"),
            &["missing", r#"{"enabled": true}"#],
        );
        let e = parse(topic, r#"{"enabled": "ON"}"#).unwrap_err();
        check_err(&e, topic, Some("enabled"), &["true or false"]);
        let e = parse(topic, r#"{"enabled": true, "x": 1}"#).unwrap_err();
        check_err(&e, topic, Some("x"), &[]);
        let e = parse(topic, "ON").unwrap_err();
        check_err(&e, topic, None, &["not valid JSON"]);
        assert!(matches!(
            parse(topic, ""),
            Err(InputError::EmptyCommand { .. })
        ));
    }

    #[test]
    fn command_payload_errors() {
        let topic = "affectgate/gw1/cmd/retrain";
        let e = parse(topic, r#"{"force": true}"#).unwrap_err();
        check_err(&e, topic, Some("force"), &["commands take no fields", "{}"]);
        let e = parse(topic, "PRESS").unwrap_err();
        check_err(&e, topic, None, &["not valid JSON", "empty payload or {}"]);
        let e = parse(topic, "[]").unwrap_err();
        check_err(
            &e,
            topic,
            None,
            &["JSON array, not an object", "empty payload or {}"],
        );
        let e = parse(topic, "null").unwrap_err();
        check_err(&e, topic, None, &["JSON null"]);
        let e = parse_input(GW, topic, b"\xc3\x28", NOW, &sensors()).unwrap_err();
        check_err(&e, topic, None, &["not UTF-8"]);
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let e = parse_input(GW, topic, &big, NOW, &sensors()).unwrap_err();
        check_err(&e, topic, None, &["4097 bytes", "at most 4096"]);
    }

    // ---- valid labels ----

    #[test]
    fn full_report_with_from_to() {
        let l = label(
            r#"{"arousal": 7, "valence": 3, "scale": "1-9",
                "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:05:00Z"}"#,
        );
        assert_eq!(values(&l), vec![("arousal", 0.75), ("valence", 0.25)]);
        assert_eq!(
            l.raw,
            vec![("arousal".to_string(), 7.0), ("valence".to_string(), 3.0)]
        );
        assert_eq!(l.scale, (1.0, 9.0));
        assert_eq!((l.from_ns, l.to_ns), (T10_00, T10_00 + 5 * MIN));
    }

    #[test]
    fn last_minutes_ends_now() {
        let l = label(r#"{"arousal": 7, "scale": "1-9", "last_minutes": 5}"#);
        assert_eq!(values(&l), vec![("arousal", 0.75)]);
        assert_eq!((l.from_ns, l.to_ns), (NOW - 5 * MIN, NOW));
        let l = label(r#"{"arousal": 1, "last_minutes": 0.5}"#);
        assert_eq!((l.from_ns, l.to_ns), (NOW - 30 * NS_PER_S, NOW));
        let l = label(r#"{"arousal": 1, "last_minutes": 1440}"#);
        assert_eq!(l.to_ns - l.from_ns, MAX_SPAN_NS);
        let l = label(r#"{"arousal": 1, "last_minutes": 1e-15}"#);
        assert_eq!((l.from_ns, l.to_ns), (NOW - 1, NOW));
    }

    #[test]
    fn defaults_are_scale_0_1_and_last_minute() {
        let l = label(r#"{"arousal": 0.8}"#);
        assert_eq!(values(&l), vec![("arousal", 0.8)]);
        assert_eq!(l.raw, vec![("arousal".to_string(), 0.8)]);
        assert_eq!(l.scale, (0.0, 1.0));
        assert_eq!((l.from_ns, l.to_ns), (NOW - MIN, NOW));
    }

    #[test]
    fn all_three_labels_in_fixed_order_with_bounds_inclusive() {
        let l = label(r#"{"dominance": 5, "valence": 1, "arousal": 3, "scale": "1-5"}"#);
        assert_eq!(
            values(&l),
            vec![("arousal", 0.5), ("valence", 0.0), ("dominance", 1.0)]
        );
    }

    #[test]
    fn scales_with_any_numbers() {
        for (scale, v, want) in [
            ("0-1", 0.25, 0.25),
            ("1-9", 9.0, 1.0),
            ("1-5", 2.0, 0.25),
            ("0-10", 7.5, 0.75),
            ("-5-5", 0.0, 0.5),
            ("-1--0.5", -0.75, 0.5),
            (" 0.5 - 1.5 ", 1.0, 0.5),
            ("1e-3-1.001", 0.501, 0.5),
            ("0-100", 100.0, 1.0),
        ] {
            let l = label(&format!(r#"{{"arousal": {v}, "scale": "{scale}"}}"#));
            assert_eq!(values(&l), vec![("arousal", want)], "{scale}");
        }
    }

    #[test]
    fn timestamp_forms() {
        let at = |from: &str| {
            label(&format!(
                r#"{{"arousal": 0, "from": "{from}", "to": "2026-11-25T10:05:00Z"}}"#
            ))
            .from_ns
        };
        assert_eq!(at("2026-11-25T10:00:00Z"), T10_00);
        assert_eq!(at("2026-11-25 10:00:00"), T10_00);
        assert_eq!(at("2026-11-25T10:00:00z"), T10_00);
        assert_eq!(at("2026-11-25T10:00:00+00:00"), T10_00);
        assert_eq!(at("2026-11-25T11:00:00+01:00"), T10_00);
        assert_eq!(at("2026-11-25T11:00:00.000+01:00"), T10_00);
        assert_eq!(at("2026-11-25T05:30:00-04:30"), T10_00);
        assert_eq!(at("2026-11-25T10:00:00.5Z"), T10_00 + NS_PER_S / 2);
        assert_eq!(at("2026-11-25T10:00:00.123456789Z"), T10_00 + 123_456_789);
    }

    #[test]
    fn to_slightly_in_future_and_exactly_24h_are_accepted() {
        let l = label(
            r#"{"arousal": 0, "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:06:00Z"}"#,
        );
        assert_eq!(l.to_ns, NOW + 60 * NS_PER_S);
        let l = label(
            r#"{"arousal": 0, "from": "2026-11-24T10:00:00Z", "to": "2026-11-25T10:00:00Z"}"#,
        );
        assert_eq!(l.to_ns - l.from_ns, MAX_SPAN_NS);
    }

    #[test]
    fn payload_of_exactly_max_size_is_accepted() {
        let mut p = r#"{"arousal": 0.5}"#.to_string();
        p.push_str(&" ".repeat(MAX_PAYLOAD_BYTES - p.len()));
        assert_eq!(p.len(), MAX_PAYLOAD_BYTES);
        label(&p);
    }

    // ---- label errors ----

    #[test]
    fn too_large_payload() {
        let mut p = r#"{"arousal": 0.5}"#.to_string();
        p.push_str(&" ".repeat(MAX_PAYLOAD_BYTES + 1 - p.len()));
        label_err(&p, None, &["4097 bytes", "at most 4096 bytes"]);
    }

    #[test]
    fn not_utf8_not_json_not_object() {
        let e =
            parse_input(GW, &label_topic(), b"{\"arousal\": \xff}", NOW, &sensors()).unwrap_err();
        check_err(&e, &label_topic(), None, &["not UTF-8"]);
        for p in [
            "",
            "arousal=7",
            "{\"arousal\": 7",
            "{'arousal': 7}",
            "{\"arousal\": NaN}",
        ] {
            label_err(
                p,
                None,
                &["not valid JSON", r#"{"arousal": 7, "scale": "1-9"}"#],
            );
        }
        // Overflowing literals are refused by the JSON parser, not turned into infinity.
        label_err(r#"{"arousal": 1e999}"#, None, &["not valid JSON"]);
        for (p, kind) in [
            ("[1]", "array"),
            ("7", "number"),
            ("\"x\"", "string"),
            ("null", "null"),
            ("true", "boolean"),
        ] {
            label_err(p, None, &[&format!("JSON {kind}, not an object")]);
        }
    }

    #[test]
    fn unknown_field_is_named_and_allowed_ones_listed() {
        for field in ["arousl", "Arousal", "stress", "sensor", ""] {
            label_err(
                &format!(r#"{{"arousal": 0.5, "{field}": 1}}"#),
                Some(field),
                &[
                    &format!("unknown field {field:?}"),
                    "allowed fields: arousal, valence, dominance, scale, from, to, last_minutes",
                ],
            );
        }
    }

    #[test]
    fn value_not_a_number() {
        label_err(
            r#"{"arousal": "7"}"#,
            Some("arousal"),
            &["JSON number", "not \"7\""],
        );
        for (v, kind) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("[7]", "an array"),
            ("{}", "an object"),
        ] {
            label_err(
                &format!(r#"{{"valence": {v}}}"#),
                Some("valence"),
                &[&format!("must be a JSON number, got {kind}")],
            );
        }
    }

    #[test]
    fn value_not_finite() {
        // Unreachable through serde_json (see not_utf8_not_json_not_object); checked directly.
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = check_finite("t", "arousal", x).unwrap_err();
            check_err(&e, "t", Some("arousal"), &["must be a finite number"]);
        }
    }

    #[test]
    fn value_outside_scale() {
        label_err(
            r#"{"arousal": 7}"#,
            Some("arousal"),
            &[
                "within the scale 0-1",
                "default scale",
                "\"scale\": \"1-9\"",
                "got 7",
            ],
        );
        let e = label_err(
            r#"{"arousal": 5, "dominance": 0, "scale": "1-9"}"#,
            Some("dominance"),
            &["within the scale 1-9, got 0"],
        );
        assert!(!e.to_string().contains("default"), "{e}");
        label_err(
            r#"{"valence": 10, "scale": "1-9"}"#,
            Some("valence"),
            &["1-9, got 10"],
        );
        label_err(
            r#"{"valence": -0.01}"#,
            Some("valence"),
            &["0-1", "got -0.01"],
        );
    }

    #[test]
    fn bad_scales() {
        let allowed = ["lo-hi", "lo < hi", "\"0-1\"", "\"1-9\"", "\"0-10\""];
        for s in [
            "9-1", "5-5", "abc", "1-", "-9", "1..9", "1 to 9", "", "inf-1", "NaN-1", "1-2-3",
        ] {
            let mut needles = allowed.to_vec();
            let got = format!("got {s:?}");
            needles.push(&got);
            label_err(
                &format!(r#"{{"arousal": 1, "scale": "{s}"}}"#),
                Some("scale"),
                &needles,
            );
        }
        label_err(
            r#"{"arousal": 1, "scale": "9-1"}"#,
            Some("scale"),
            &["lo 9 is not below hi 1"],
        );
        label_err(
            r#"{"arousal": 0, "scale": "-1e308-1e308"}"#,
            Some("scale"),
            &["finite numbers", "too large"],
        );
        label_err(
            r#"{"arousal": 1, "scale": 9}"#,
            Some("scale"),
            &["string \"lo-hi\"", "got a number"],
        );
        label_err(
            r#"{"arousal": 1, "scale": [1, 9]}"#,
            Some("scale"),
            &["got an array"],
        );
    }

    #[test]
    fn bad_timestamps() {
        for ts in [
            "yesterday",
            "2026-11-25",
            "2026-11-25T10:00",
            "2026-13-25T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-11-25T25:00:00Z",
            "2026-11-25t10:00:00Z",
            "2026-11-25T10:00:00ZZ",
            "2026-11-25T10:00:00Zxyz",
            "2026-11-25T10:00:00.Z",
            "2026-11-25T10:00:00.5x+01:00",
            "2026-11-25T10:00:00+24:00",
            "2026-11-25T10:00:00+0100",
            "1969-12-31T23:59:59Z",
            "2300-01-01T00:00:00Z",
            "2026-11-25T10:00:00Ž",
            "1764064800",
        ] {
            label_err(
                &format!(r#"{{"arousal": 0, "from": "{ts}", "to": "2026-11-25T10:05:00Z"}}"#),
                Some("from"),
                &["RFC 3339", "2026-11-25T10:00:00Z"],
            );
        }
        label_err(
            r#"{"arousal": 0, "from": "2026-11-25T10:00:00Z", "to": 1764064800}"#,
            Some("to"),
            &["RFC 3339", "got a number"],
        );
    }

    #[test]
    fn from_not_before_to() {
        for (f, t) in [
            ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00Z"),
            ("2026-11-25T10:05:00Z", "2026-11-25T10:00:00Z"),
        ] {
            label_err(
                &format!(r#"{{"arousal": 0, "from": "{f}", "to": "{t}"}}"#),
                Some("from"),
                &["must be before \"to\""],
            );
        }
    }

    #[test]
    fn to_too_far_in_future() {
        label_err(
            r#"{"arousal": 0, "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:06:01Z"}"#,
            Some("to"),
            &["61 s in the future", "at most 60 s"],
        );
    }

    #[test]
    fn span_longer_than_24h() {
        label_err(
            r#"{"arousal": 0, "from": "2026-11-24T09:59:59Z", "to": "2026-11-25T10:00:00Z"}"#,
            Some("from"),
            &["at most 24 h"],
        );
    }

    #[test]
    fn from_and_to_must_come_together() {
        label_err(
            r#"{"arousal": 0, "from": "2026-11-25T10:00:00Z"}"#,
            Some("to"),
            &["is missing", "last_minutes"],
        );
        label_err(
            r#"{"arousal": 0, "to": "2026-11-25T10:00:00Z"}"#,
            Some("from"),
            &["is missing", "last_minutes"],
        );
    }

    #[test]
    fn from_to_and_last_minutes_together() {
        for extra in [
            r#""from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:05:00Z""#,
            r#""from": "2026-11-25T10:00:00Z""#,
            r#""to": "2026-11-25T10:05:00Z""#,
        ] {
            label_err(
                &format!(r#"{{"arousal": 0, "last_minutes": 5, {extra}}}"#),
                Some("last_minutes"),
                &[
                    "cannot be combined",
                    "either \"from\" and \"to\" or \"last_minutes\"",
                ],
            );
        }
    }

    #[test]
    fn last_minutes_out_of_range() {
        for m in ["0", "-1", "1440.001", "1e9", "-0"] {
            label_err(
                &format!(r#"{{"arousal": 0, "last_minutes": {m}}}"#),
                Some("last_minutes"),
                &["(0, 1440]"],
            );
        }
        label_err(
            r#"{"arousal": 0, "last_minutes": "5"}"#,
            Some("last_minutes"),
            &["JSON number"],
        );
    }

    #[test]
    fn no_label_value() {
        for p in ["{}", r#"{"scale": "1-9"}"#, r#"{"last_minutes": 5}"#] {
            label_err(p, None, &["no label value", "arousal, valence, dominance"]);
        }
    }

    #[test]
    fn error_json_shape_and_escaping() {
        let e = InputError::BadValue {
            topic: "affectgate/gw1/\"x\"/label".into(),
            field: "arousal".into(),
            message: "must be \\ \"ok\"".into(),
        };
        let j = e.to_json();
        assert!(
            j.starts_with(r#"{"topic":"affectgate/gw1/\"x\"/label","field":"arousal","error":"#),
            "{j}"
        );
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["error"], "\"arousal\" must be \\ \"ok\"");
        let e = InputError::NoLabel { topic: "t".into() };
        assert!(e.to_json().contains(r#""field":null"#));
    }

    // ---- property-style: no input panics, accepted labels keep the invariants ----

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Parse anything; checks the invariants of what is accepted and the shape of errors.
    /// Returns whether a label was accepted.
    fn check_any(topic: &str, payload: &[u8]) -> bool {
        match parse_input(GW, topic, payload, NOW, &sensors()) {
            Ok(Some(Input::Label { label: l, .. })) => {
                assert!(!l.values.is_empty() && l.values.len() == l.raw.len());
                assert!(l.values.iter().all(|(_, v)| (0.0..=1.0).contains(v)));
                assert!(l.scale.0 < l.scale.1);
                assert!(l.from_ns < l.to_ns && l.to_ns <= NOW + MAX_FUTURE_NS);
                assert!(l.to_ns - l.from_ns <= MAX_SPAN_NS);
                true
            }
            Ok(_) => false,
            Err(e) => {
                assert_eq!(e.topic(), topic);
                let _: Value = serde_json::from_str(&e.to_json()).expect("error JSON");
                false
            }
        }
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let topics = [
            label_topic(),
            "affectgate/gw1/cmd/retrain".to_string(),
            "affectgate/gw1/nope/label".to_string(),
        ];
        // Raw bytes.
        for i in 0..4000 {
            let len = rng.below(96);
            let p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check_any(&topics[i % topics.len()], &p);
        }
        // JSON-ish token soup, to get past the parser into the field checks.
        let tokens = [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"arousal\"",
            "\"valence\"",
            "\"dominance\"",
            "\"scale\"",
            "\"from\"",
            "\"to\"",
            "\"last_minutes\"",
            "\"1-9\"",
            "\"-5-5\"",
            "\"9-1\"",
            "\"2026-11-25T10:00:00Z\"",
            "\"2026-11-25T10:05:00+01:00\"",
            "\"2026-11-25T10:00:00.5-23:59\"",
            "\"1970-01-01T00:00:00+01:00\"",
            "0",
            "1",
            "7",
            "-3",
            "0.5",
            "1e308",
            "-1e308",
            "1e-320",
            "1440",
            "null",
            "true",
            "\"\"",
            "\"x\"",
        ];
        let mut accepted = 0;
        for _ in 0..6000 {
            let mut p = String::from("{");
            for _ in 0..rng.below(12) {
                p.push_str(tokens[rng.below(tokens.len())]);
            }
            if rng.below(2) == 0 {
                p.push('}');
            }
            accepted += usize::from(check_any(&topics[0], p.as_bytes()));
        }
        // Mutations of valid payloads.
        let valid = [
            r#"{"arousal": 7, "valence": 3, "scale": "1-9", "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:05:00Z"}"#,
            r#"{"arousal": 7, "scale": "1-9", "last_minutes": 5}"#,
            r#"{"arousal": 0.8}"#,
        ];
        for _ in 0..6000 {
            let mut p = valid[rng.below(valid.len())].as_bytes().to_vec();
            for _ in 0..rng.below(4) {
                let at = rng.below(p.len());
                match rng.below(4) {
                    0 => p[at] = rng.next() as u8,
                    // Digit for digit: keeps the shape, moves values and times around.
                    1 if p[at].is_ascii_digit() => p[at] = b'0' + rng.below(10) as u8,
                    2 => p.insert(at, b"0123456789-.:+eEZT \"{}"[rng.below(22)]),
                    _ => {
                        p.remove(at);
                    }
                }
            }
            accepted += usize::from(check_any(&topics[0], &p));
        }
        // The generators must reach the accepting path too, or the invariants go unchecked.
        assert!(
            accepted > 1000,
            "only {accepted} random payloads were accepted"
        );
        // Scale and timestamp parsers on their own.
        let alphabet = b"0123456789-+.eEinfaNZTz: ";
        for _ in 0..4000 {
            let len = rng.below(32);
            let s: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())] as char)
                .collect();
            let _ = parse_scale(&s);
            let _ = parse_timestamp(&s);
            let mut ts = "2026-11-25T10:00:00".to_string();
            ts.push_str(&s);
            let _ = parse_timestamp(&ts);
        }
    }
}
