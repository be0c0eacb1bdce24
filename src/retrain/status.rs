//! What `affectgate/<gw>/retrain` says (retained JSON): the scheduler's state, the running
//! round's stage and progress, and the last round's outcome. The scheduler produces it; the
//! gateway publishes it (so retraining knows nothing of MQTT).

use serde::{Deserialize, Serialize};

/// Where retraining is. Serialised lower-case (`"running"`), as Home Assistant templates
/// and the README document it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrainState {
    /// No round has run yet.
    #[default]
    Idle,
    /// Waiting for the interval, the daily window or enough new windows.
    Waiting,
    Running,
    /// The last round's candidate now serves.
    Promoted,
    /// The last round's candidate failed the gate; the serving model is unchanged.
    Rejected,
    /// The last round ended with an error (named in `reason`).
    Failed,
    /// The last round was stopped by a shutdown (it resumes from its checkpoint).
    Stopped,
    /// The last round promoted its candidate, which no longer serves (rolled back, or another
    /// model promoted by hand); `reason` names what serves.
    #[serde(rename = "rolled_back")]
    RolledBack,
}

impl RetrainState {
    /// Every state as serialised, in declaration order (Home Assistant's enum options).
    pub const ALL: [&'static str; 8] = [
        "idle",
        "waiting",
        "running",
        "promoted",
        "rejected",
        "failed",
        "stopped",
        "rolled_back",
    ];
}

/// The retained retraining status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RetrainStatus {
    pub state: RetrainState,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub progress: Option<f32>,
    #[serde(default)]
    pub started: Option<String>,
    /// End of the last round (RFC 3339); what Home Assistant shows as "Last retrain".
    #[serde(default)]
    pub finished: Option<String>,
    #[serde(default)]
    pub finished_ns: Option<i64>,
    /// Candidate id of the round.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The round's report (windows, metrics before/after, decision, parity, seconds).
    #[serde(default)]
    pub report: Option<serde_json::Value>,
    /// Scheduled rounds are paused (`cmd/auto_retrain` `{"enabled": false}`, Home
    /// Assistant's "Automatic retraining" switch); `cmd/retrain` still starts one. Kept across
    /// restarts with the rest of the status.
    #[serde(default)]
    pub paused: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialise_as_documented() {
        let st = RetrainStatus {
            state: RetrainState::Promoted,
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["state"], "promoted");
        let back: RetrainStatus = serde_json::from_str(r#"{"state":"stopped"}"#).unwrap();
        assert_eq!(back.state, RetrainState::Stopped);
        assert!(serde_json::from_str::<RetrainStatus>(r#"{"state":"bogus"}"#).is_err());
        assert_eq!(
            crate::mqtt::discovery::retrain_state_options(),
            RetrainState::ALL
        );
        for name in RetrainState::ALL {
            let st: RetrainStatus =
                serde_json::from_str(&format!(r#"{{"state":"{name}"}}"#)).unwrap();
            assert_eq!(serde_json::to_value(&st).unwrap()["state"], name);
        }
    }
}
