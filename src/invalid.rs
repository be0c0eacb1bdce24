//! The one shape of a rejected configuration value, shared by every component's `validate`
//! so that `config` can name the full key (`mqtt.port = 0: must be 1..=65535`) without the
//! components knowing where their section sits in the file.

use std::fmt::Display;

/// A value a component rejects: its key relative to the component's section, the value as
/// given, and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: &str, value: impl Display, reason: impl Display) -> Self {
        Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    /// A component's own message (it already names its field and value).
    pub fn component(key: &str, message: impl Display) -> Self {
        Invalid {
            key: key.to_string(),
            value: String::new(),
            reason: message.to_string(),
        }
    }
}

/// Is `s` a valid MQTT/Home Assistant id (`[a-zA-Z0-9_-]+`)?
pub fn is_topic_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
