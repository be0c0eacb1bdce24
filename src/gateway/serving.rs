//! What serves, as subscribers see it: the retained `affectgate/<gw>/model` message (the
//! gateway device's "Model version" entity in Home Assistant), and the retained retraining
//! status `affectgate/<gw>/retrain` kept true when the model changes outside a round.
//!
//! Why here and not in the scheduler: the serving model changes for reasons the scheduler
//! does not see (`affectgate model rollback`, `cmd/rollback`, `cmd/promote`), all of which
//! reach the gateway through the registry watcher. A retained "promoted r0001" left standing
//! after r0001 was rolled back would tell Home Assistant the wrong thing for ever.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::mqtt::MqttLink;
use crate::retrain::status::{RetrainState, RetrainStatus};
use crate::time::{now_ns, rfc3339_ms};

pub use crate::retrain::registry::Serving;

/// The retained message on `affectgate/<gw>/model`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMessage {
    /// Model version as in every state message (`model` key).
    pub version: String,
    /// Registry id: `shipped`, or a retraining round's candidate (`r0002`).
    pub id: String,
    /// The heads the model scores (top-level keys of the state message).
    pub heads: Vec<String>,
    /// Since when it serves (RFC 3339, UTC; the gateway's start for the first model).
    pub since: String,
}

/// Publishes the model message for every change of `serving`, and forwards the scheduler's
/// retraining statuses (when retraining runs), correcting a standing `promoted` once the
/// promoted model no longer serves. Ends when both inputs are closed.
pub(super) async fn publish_serving(
    link: Arc<MqttLink>,
    mut serving: watch::Receiver<Serving>,
    mut retrain: Option<mpsc::UnboundedReceiver<RetrainStatus>>,
) {
    let model_topic = link.topics().model();
    let retrain_topic = link.topics().retrain();
    let publish_model = |s: &Serving| {
        let msg = ModelMessage {
            version: s.version.clone(),
            id: s.id.clone(),
            heads: s.heads.clone(),
            since: rfc3339_ms(now_ns()),
        };
        link.retain(
            model_topic.clone(),
            serde_json::to_vec(&msg).expect("model message serialises"),
        );
    };
    publish_model(&serving.borrow_and_update());
    let mut last: Option<RetrainStatus> = None;
    let mut serving_open = true;
    loop {
        tokio::select! {
            changed = serving.changed(), if serving_open => {
                if changed.is_err() {
                    serving_open = false;
                    if retrain.is_none() { return; }
                    continue;
                }
                let now = serving.borrow_and_update().clone();
                publish_model(&now);
                if let Some(st) = last.as_mut().and_then(|st| rolled_back(st, &now.id)) {
                    link.retain(retrain_topic.clone(), serde_json::to_vec(&st).expect("status serialises"));
                    last = Some(st);
                }
            }
            st = async { retrain.as_mut().expect("guarded").recv().await }, if retrain.is_some() => {
                match st {
                    Some(st) => {
                        link.retain(retrain_topic.clone(), serde_json::to_vec(&st).expect("status serialises"));
                        last = Some(st);
                    }
                    None => {
                        retrain = None;
                        if !serving_open { return; }
                    }
                }
            }
        }
    }
}

/// The status to publish when `serving` replaced the model a round promoted: `rolled_back`,
/// naming what serves now. `None` when `st` is not a standing promotion of another model.
fn rolled_back(st: &RetrainStatus, serving: &str) -> Option<RetrainStatus> {
    if st.state != RetrainState::Promoted || st.model.as_deref() == Some(serving) {
        return None;
    }
    let mut out = st.clone();
    out.state = RetrainState::RolledBack;
    out.reason = Some(format!(
        "{} was promoted by the last round and no longer serves: {serving} serves now (rolled back or another model promoted)",
        st.model.as_deref().unwrap_or("the candidate")
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standing_promotion_of_another_model_becomes_rolled_back() {
        let st = RetrainStatus {
            state: RetrainState::Promoted,
            model: Some("r0001".into()),
            finished: Some("2026-12-01T10:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(rolled_back(&st, "r0001"), None);
        let back = rolled_back(&st, "shipped").unwrap();
        assert_eq!(back.state, RetrainState::RolledBack);
        assert_eq!(back.finished, st.finished, "the round's own time stays");
        assert!(back
            .reason
            .as_deref()
            .unwrap()
            .contains("shipped serves now"));
        let rejected = RetrainStatus {
            state: RetrainState::Rejected,
            model: Some("r0002".into()),
            ..Default::default()
        };
        assert_eq!(rolled_back(&rejected, "shipped"), None);
        let v = serde_json::to_value(&back).unwrap();
        assert_eq!(v["state"], "rolled_back");
    }
}
