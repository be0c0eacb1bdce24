//! Every MQTT topic of the gateway, spelled once. Publishers, subscribers, Home Assistant
//! discovery and the input parser all ask [`Topics`], so a topic cannot drift between the
//! message and the entity that reads it.
//!
//! ```text
//! affectgate/<gw>/status                 online/offline, retained (last will)
//! affectgate/<gw>/<sensor>/state         StateMessage per fresh window, QoS 1
//! affectgate/<gw>/<sensor>/history       StateMessage per late window (published more than
//!                                        3 window periods after its end), QoS 1
//! affectgate/<gw>/<sensor>/availability  online/offline (strap connected), retained
//! affectgate/<gw>/<sensor>/live          online once this connection scored a window, retained
//! affectgate/<gw>/<sensor>/label         self-reports (subscribed)
//! affectgate/<gw>/cmd/<name>             commands (subscribed)
//! affectgate/<gw>/retrain                retraining status, retained
//! affectgate/<gw>/store                  window store health, retained
//! affectgate/<gw>/error                  problems a subscriber should see
//! <discovery prefix>/status              Home Assistant's birth message (subscribed)
//! ```

/// `<prefix>/status`: Home Assistant publishes `online` there when it (re)starts.
pub fn ha_status(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// The topics of one gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// `affectgate/<gateway>/<sensor>/state`: `StateMessage` per window, QoS 1.
    pub fn state(&self, sensor: &str) -> String {
        format!("affectgate/{}/{}/state", self.gateway, sensor)
    }
    /// `affectgate/<gateway>/<sensor>/history`: the `StateMessage` of a window published
    /// late (see `mqtt` module docs: late windows), QoS 1. Same payload as `state`.
    pub fn history(&self, sensor: &str) -> String {
        format!("affectgate/{}/{}/history", self.gateway, sensor)
    }
    /// `affectgate/<gateway>/<sensor>/live`: `online` once a window of the strap's current
    /// connection has been scored in this run, `offline` at start, on disconnect and at stop;
    /// retained. Home Assistant's per-window entities are available only while it is
    /// `online`, so a restart never shows the previous run's last value as current.
    pub fn live(&self, sensor: &str) -> String {
        format!("affectgate/{}/{}/live", self.gateway, sensor)
    }
    /// Wildcard for all sensors' state.
    pub fn state_all(&self) -> String {
        format!("affectgate/{}/+/state", self.gateway)
    }
    /// `affectgate/<gateway>/error`: problems a subscriber should see.
    pub fn error(&self) -> String {
        format!("affectgate/{}/error", self.gateway)
    }
    /// `affectgate/<gateway>/<sensor>/availability`: `online` while the strap delivers ECG,
    /// `offline` when it is disconnected; retained.
    pub fn availability(&self, sensor: &str) -> String {
        format!("affectgate/{}/{}/availability", self.gateway, sensor)
    }
    /// `affectgate/<gateway>/retrain`: retraining status (its `finished` key feeds the "Last
    /// retrain" entity), retained.
    pub fn retrain(&self) -> String {
        format!("affectgate/{}/retrain", self.gateway)
    }
    /// `affectgate/<gateway>/model`: the serving model (`version`, `id`, `heads`, `since`),
    /// retained; feeds the gateway device's "Model version" entity.
    pub fn model(&self) -> String {
        format!("affectgate/{}/model", self.gateway)
    }
    /// `affectgate/<gateway>/store`: the window store's health (`problem`, `state`,
    /// `detail`), retained; feeds the "Store problem" entity.
    pub fn store(&self) -> String {
        format!("affectgate/{}/store", self.gateway)
    }
    /// `affectgate/<gateway>/fleet`: the fleet agent's install status (`fleet::plan::
    /// GatewayStatus`), retained; what `affectgate-fleet status` reads.
    pub fn fleet(&self) -> String {
        crate::fleet::plan::status_topic(&self.gateway)
    }
    /// `affectgate/<gateway>/update`: Home Assistant's update entity state (installed and
    /// latest release, summary, progress), retained.
    pub fn update(&self) -> String {
        format!("affectgate/{}/update", self.gateway)
    }
    /// `affectgate/<gateway>/<sensor>/label`: self-reports for one sensor's wearer.
    pub fn label(&self, sensor: &str) -> String {
        format!("affectgate/{}/{}/label", self.gateway, sensor)
    }
    /// `affectgate/<gateway>/cmd/<name>`.
    pub fn command(&self, name: &str) -> String {
        format!("affectgate/{}/cmd/{}", self.gateway, name)
    }
    /// The filters the gateway subscribes to: every sensor's label and every command.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![self.label("+"), self.command("+")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_spelled_once() {
        let t = Topics::new("gw1");
        assert_eq!(t.status(), "affectgate/gw1/status");
        assert_eq!(t.state("chest"), "affectgate/gw1/chest/state");
        assert_eq!(t.availability("chest"), "affectgate/gw1/chest/availability");
        assert_eq!(t.history("chest"), "affectgate/gw1/chest/history");
        assert_eq!(t.live("chest"), "affectgate/gw1/chest/live");
        assert_eq!(t.retrain(), "affectgate/gw1/retrain");
        assert_eq!(t.store(), "affectgate/gw1/store");
        assert_eq!(
            t.subscriptions(),
            vec!["affectgate/gw1/+/label", "affectgate/gw1/cmd/+"]
        );
        assert_eq!(ha_status("homeassistant"), "homeassistant/status");
    }
}
