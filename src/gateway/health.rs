//! The window store's health, as subscribers see it: one retained JSON message on
//! `affectgate/<gw>/store` (the "Store problem" entity in Home Assistant reads `problem`).
//!
//! Why a retained topic and not only the error topic: an error message is seen by whoever is
//! subscribed at that moment; a full disk or a damaged store is a *condition* that a dashboard
//! opened an hour later must still show, and whose end it must see.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::store::{salvage, Quarantined, SalvageOptions, Store};

use crate::mqtt::MqttLink;
use crate::time::{now_ns, rfc3339_ms};

/// What the store is going through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Windows are stored and announced.
    Ok,
    /// Writes fail (a full disk, most likely): windows are neither stored nor announced
    /// until they succeed again.
    WriteFailing,
    /// The running gateway met damage in the store: it stops; its next start moves the
    /// store aside and salvages it.
    Damaged,
    /// This start found the store damaged, moved it aside, started an empty one and is
    /// salvaging (or has salvaged) the damaged copy into it.
    Recovered,
}

/// The retained message on `affectgate/<gw>/store`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    /// Whether a person should look (drives Home Assistant's problem sensor).
    pub problem: bool,
    pub state: StoreState,
    /// What happened and what to do, in words.
    pub detail: String,
    /// When this status was published (RFC 3339, UTC).
    pub time: String,
    /// The damaged copy, kept for inspection ([`StoreState::Recovered`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// Windows salvaged from the damaged copy, once the salvage finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salvaged: Option<u64>,
}

impl StoreStatus {
    pub fn new(state: StoreState, detail: impl Into<String>) -> Self {
        StoreStatus {
            problem: state != StoreState::Ok,
            state,
            detail: detail.into(),
            time: rfc3339_ms(now_ns()),
            moved_to: None,
            salvaged: None,
        }
    }

    /// Publish (retained) on the store topic.
    pub fn publish(&self, link: &MqttLink) {
        let bytes = serde_json::to_vec(self).expect("store status serialises");
        link.retain(link.topics().store(), bytes);
    }
}

/// Store meta key: a damaged copy whose salvage has not finished (resumed at the next start).
const SALVAGE_PENDING: &str = "salvage_pending";

/// The background salvage of a damaged copy into the live store, if one runs.
pub(super) struct Salvager {
    cancel: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Salvager {
    /// Stops a salvage still running (it resumes at the next start) and waits for it.
    pub(super) async fn stop(self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// Publishes the store's health at start and, when this start moved a damaged store aside
/// (or an earlier start's salvage did not finish), salvages the damaged copy into the live
/// store in the background: windows are scored and stored meanwhile. Salvaged windows are
/// not announced again (they were announced when they were first stored, or never were).
pub(super) fn announce_store(
    link: &Arc<MqttLink>,
    store: &Arc<Store>,
    quarantined: Option<Quarantined>,
) -> Salvager {
    let cancel = Arc::new(AtomicBool::new(false));
    let pending = match &quarantined {
        Some(q) => {
            let _ = store.meta_put(SALVAGE_PENDING, q.moved_to.to_string_lossy().as_bytes());
            Some((q.moved_to.clone(), q.reason.clone()))
        }
        None => store
            .meta_get(SALVAGE_PENDING)
            .ok()
            .flatten()
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(String::from_utf8_lossy(&v).into_owned()))
            .filter(|p| p.is_dir())
            .map(|p| (p, "an earlier salvage did not finish".to_string())),
    };
    let Some((moved_to, reason)) = pending else {
        StoreStatus::new(StoreState::Ok, "windows are stored and announced").publish(link);
        return Salvager { cancel, task: None };
    };
    let detail = format!(
        "the window store was damaged ({reason}); it was moved to {} (kept) and an empty store \
         started; salvaging its windows",
        moved_to.display()
    );
    let err = crate::mqtt::inputs::error_json(None, None, &detail);
    link.send(link.topics().error(), err.into_bytes());
    let mut status = StoreStatus::new(StoreState::Recovered, detail);
    status.moved_to = Some(moved_to.to_string_lossy().into_owned());
    status.publish(link);
    let (link, store, stop) = (link.clone(), store.clone(), cancel.clone());
    let task = tokio::task::spawn_blocking(move || {
        let mut keep_going = |_done: u64, _total: u64| !stop.load(Ordering::SeqCst);
        let options = SalvageOptions::default();
        match salvage(&moved_to, &store, &options, &mut keep_going) {
            Ok(r) if r.interrupted => {
                tracing::info!("salvage interrupted by shutdown; it resumes at the next start");
            }
            Ok(r) => {
                let _ = store.meta_put(SALVAGE_PENDING, b"");
                let _ = store.flush();
                tracing::warn!(from = %moved_to.display(), "store salvaged: {r}");
                let mut status = StoreStatus::new(
                    StoreState::Recovered,
                    format!(
                        "the window store was damaged ({reason}) and moved to {}; {} windows \
                         salvaged from it ({r}). Delete that folder once you no longer need it",
                        moved_to.display(),
                        r.recovered
                    ),
                );
                status.moved_to = Some(moved_to.to_string_lossy().into_owned());
                status.salvaged = Some(r.recovered);
                status.publish(&link);
            }
            Err(e) => {
                tracing::error!(from = %moved_to.display(), "salvage failed: {e}");
                let err = crate::mqtt::inputs::error_json(
                    None,
                    None,
                    &format!(
                        "salvaging {} failed: {e}; run `affectgate store salvage` by hand",
                        moved_to.display()
                    ),
                );
                link.send(link.topics().error(), err.into_bytes());
            }
        }
    });
    Salvager {
        cancel,
        task: Some(task),
    }
}
