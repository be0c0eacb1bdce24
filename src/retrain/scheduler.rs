//! When the gateway retrains, and how it keeps a round from disturbing live scoring.
//!
//! * **When**: every `interval_h` hours (counted from the last finished round, kept in the
//!   store), optionally only inside a daily UTC window (`daily_window = "02:00-05:00"`), and
//!   only once `min_new_windows` good windows arrived since the last round; `cmd/retrain` over
//!   MQTT starts one at once (still needing ≥ 10 stored windows). `cmd/auto_retrain` with
//!   `{"enabled": false}` pauses the scheduled rounds (kept in the status, so across
//!   restarts) until `{"enabled": true}`; a requested round still runs while paused. A round interrupted by a
//!   shutdown or a power cut resumes from its checkpoint at the next start.
//! * **How gently**: the gateway only *stages* the round (copies the store's windows into
//!   `<models_dir>/work/input.bin`); training, gate and registration run in a separate worker
//!   process (see [`super::worker`]) with `max_threads` threads, the `nice` level and a hard
//!   memory limit of `max_memory_mb` (`RLIMIT_DATA`), so the scorer thread and the async
//!   runtime keep their cores and an out-of-memory kills the round, never the gateway. The
//!   round stops itself at an epoch boundary once the wall-clock budget (`budget_min`) is
//!   spent (and is killed a minute later if it has not); a shutdown kills it (it resumes from
//!   its checkpoint). Any error (full disk, corrupt pack, not enough data, out of memory) ends
//!   the round with a logged and published reason; the gateway and its serving model are
//!   untouched.
//! * **What it tells**: `affectgate/<gw>/retrain` (retained JSON, [`RetrainStatus`]): state,
//!   stage, progress, timestamps, before/after metrics, decision and reason, sent to the
//!   gateway, which publishes it. Home Assistant's
//!   "Last retrain" entity reads `finished`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{parse_window, RetrainConfig};
use super::registry::Registry;
use super::round;
use super::status::{RetrainState, RetrainStatus};
use super::worker::{self, WorkerError, WorkerLimits, WorkerSpec};
use crate::infer::Backend;
use crate::learn::round::RoundConfig;
use crate::store::Store;
use crate::time::now_ns;
use crate::time::rfc3339_ms;

/// Store meta key of the last status (so a restart re-publishes it and knows when the last
/// round finished).
const META_STATUS: &str = "retrain_status";
/// A manual round still needs this many stored good windows.
const MANUAL_MIN_WINDOWS: usize = 10;
/// Re-check interval while waiting for enough new windows.
const RECHECK: Duration = Duration::from_secs(600);

/// Everything the scheduler needs from the gateway.
pub struct Scheduler {
    pub cfg: RetrainConfig,
    pub store: Arc<Store>,
    pub registry: Registry,
    pub shipped: std::path::PathBuf,
    pub backend: Backend,
    /// Every status change, for the gateway to publish (retained) on `<gw>/retrain`.
    pub status: mpsc::UnboundedSender<RetrainStatus>,
    /// The `affectgate` executable that runs rounds (`retrain-worker`): the running one,
    /// or in tests the built binary.
    pub worker_exe: std::path::PathBuf,
    /// Scheduled rounds paused: set from the last status when [`Scheduler::run`] starts and
    /// by its `pause` channel (construct with `Default::default()`).
    pub paused: AtomicBool,
}

/// Earliest time ≥ `from_ns` inside the daily window (which may wrap midnight).
pub fn next_in_window(from_ns: i64, window: Option<(u32, u32)>) -> i64 {
    let Some((a, b)) = window else {
        return from_ns;
    };
    const MIN: i64 = 60_000_000_000;
    let day = 1440 * MIN;
    let minute = (from_ns.rem_euclid(day) / MIN) as u32;
    let inside = if a < b {
        (a..b).contains(&minute)
    } else {
        minute >= a || minute < b
    };
    if inside {
        return from_ns;
    }
    let midnight = from_ns - from_ns.rem_euclid(day);
    let start = midnight + a as i64 * MIN;
    if start > from_ns {
        start
    } else {
        start + day
    }
}

impl Scheduler {
    fn publish(&self, st: &RetrainStatus) {
        let st = &RetrainStatus {
            paused: self.paused.load(Ordering::Relaxed),
            ..st.clone()
        };
        let bytes = serde_json::to_vec(st).expect("status serialises");
        let _ = self.status.send(st.clone());
        if st.state != RetrainState::Running {
            if let Err(e) = self.store.meta_put(META_STATUS, &bytes) {
                tracing::warn!("saving the retraining status: {e}");
            }
        }
    }

    fn last(&self) -> RetrainStatus {
        self.store
            .meta_get(META_STATUS)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| RetrainStatus {
                state: RetrainState::Idle,
                ..Default::default()
            })
    }

    /// Good windows stored after `since_ns`.
    fn new_windows(&self, since_ns: i64) -> usize {
        let Ok(sensors) = self.store.sensors() else {
            return 0;
        };
        sensors
            .iter()
            .map(|s| {
                self.store
                    .range(s, since_ns.saturating_add(1), i64::MAX)
                    .filter(|w| w.as_ref().is_ok_and(|w| w.quality == 0))
                    .count()
            })
            .sum()
    }

    /// The scheduler task: runs until `stop`. `trigger` starts a round now; `pause` pauses
    /// (`true`) or resumes (`false`) the scheduled rounds.
    pub async fn run(
        self,
        mut trigger: mpsc::Receiver<()>,
        mut pause: mpsc::UnboundedReceiver<bool>,
        stop: CancellationToken,
    ) {
        let window = self
            .cfg
            .daily_window
            .as_deref()
            .and_then(|w| parse_window(w).ok());
        let last = self.last();
        self.paused.store(last.paused, Ordering::Relaxed);
        self.publish(&last);
        let mut pause_open = true;
        // An interrupted round (checkpoint on disk) resumes right away.
        // An interrupted round (checkpoint on disk) resumes right away; `forced` also carries
        // a `cmd/retrain` that arrived while waiting for new windows.
        let mut forced = self.registry.dir().join("work/round.json").exists();
        loop {
            let last = self.last();
            let last_ns = last.finished_ns.unwrap_or(0);
            let manual = if forced {
                forced = false;
                true
            } else {
                let due_ns = if last_ns == 0 {
                    now_ns()
                } else {
                    last_ns + (self.cfg.interval_h * 3600e9) as i64
                };
                let due_ns = next_in_window(due_ns.max(now_ns()), window);
                let wait = Duration::from_nanos((due_ns - now_ns()).max(0) as u64);
                let paused = self.paused.load(Ordering::Relaxed);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    t = trigger.recv() => match t { Some(()) => true, None => return },
                    p = pause.recv(), if pause_open => {
                        pause_open = self.set_paused(p);
                        continue;
                    }
                    _ = tokio::time::sleep(wait), if !paused => false,
                }
            };
            let fresh = self.new_windows(last_ns);
            let need = if manual {
                MANUAL_MIN_WINDOWS
            } else {
                self.cfg.min_new_windows
            };
            if fresh < need {
                tracing::info!(fresh, need, "retraining waits for more good windows");
                self.publish(&RetrainStatus {
                    state: RetrainState::Waiting,
                    reason: Some(format!(
                        "{fresh} new good windows since the last round, {need} needed"
                    )),
                    ..last.clone()
                });
                if manual {
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    t = trigger.recv() => match t { Some(()) => forced = true, None => return },
                    p = pause.recv(), if pause_open => pause_open = self.set_paused(p),
                    _ = tokio::time::sleep(RECHECK) => {}
                }
                continue;
            }
            if !self.round(&stop, last).await {
                return;
            }
        }
    }

    /// Pause (`Some(true)`) or resume (`Some(false)`) the scheduled rounds and say so on the
    /// status; `None` (the gateway dropped its sender) changes nothing. False once the
    /// channel is closed.
    fn set_paused(&self, p: Option<bool>) -> bool {
        let Some(p) = p else { return false };
        if self.paused.swap(p, Ordering::Relaxed) != p {
            tracing::info!(
                paused = p,
                "scheduled retraining {}",
                if p { "paused" } else { "resumed" }
            );
        }
        let last = self.last();
        // Re-publish the current status (a round in progress publishes its own next).
        self.publish(&last);
        true
    }

    /// One round on its own thread; returns false when the gateway is stopping.
    async fn round(&self, stop: &CancellationToken, last: RetrainStatus) -> bool {
        let started = rfc3339_ms(now_ns());
        let mut st = RetrainStatus {
            state: RetrainState::Running,
            stage: Some("starting".into()),
            progress: Some(0.0),
            started: Some(started.clone()),
            finished: last.finished.clone(),
            finished_ns: last.finished_ns,
            ..Default::default()
        };
        self.publish(&st);
        tracing::info!("retraining round starting");
        // 1. Stage (needs the store, so it runs here, off the async threads).
        let staged = {
            let (store, registry, shipped, max) = (
                self.store.clone(),
                self.registry.clone(),
                self.shipped.clone(),
                self.cfg.max_windows,
            );
            tokio::task::spawn_blocking(move || round::stage(&store, &registry, &shipped, max))
                .await
        };
        let result: Result<round::RoundReport, (bool, String)> = match staged {
            Err(e) => Err((false, format!("staging the round panicked: {e}"))),
            Ok(Err(e)) => Err((false, format!("staging the round: {e}"))),
            Ok(Ok(staged)) => {
                tracing::info!(round = %staged.id, parent = %staged.parent, windows = staged.windows, labelled = staged.labelled, "round staged; starting the worker process");
                // 2. Train, gate and register in the worker process.
                let spec = WorkerSpec {
                    models_dir: self.registry.dir().to_path_buf(),
                    shipped: self.shipped.clone(),
                    backend: self.backend.clone(),
                    round: RoundConfig {
                        pretext_epochs: self.cfg.pretext_epochs,
                        max_steps_per_epoch: self.cfg.max_steps_per_epoch,
                        seed: now_ns() as u64,
                        ..RoundConfig::default()
                    },
                    threads: self.cfg.max_threads.max(1),
                    budget_s: self.cfg.budget_min * 60.0,
                };
                let limits = WorkerLimits {
                    nice: self.cfg.nice,
                    max_memory_mb: self.cfg.max_memory_mb,
                };
                let mut last_pub = Instant::now();
                let res = worker::supervise(
                    &self.worker_exe,
                    &spec,
                    &limits,
                    |stage, frac| {
                        tracing::info!(stage, progress = frac, "retraining");
                        st.stage = Some(stage);
                        st.progress = Some(frac);
                        if last_pub.elapsed() > Duration::from_secs(1) {
                            self.publish(&st);
                            last_pub = Instant::now();
                        }
                    },
                    stop,
                )
                .await;
                match res {
                    Ok(r) => Ok(r),
                    Err(WorkerError::Stopped) => Err((true, WorkerError::Stopped.to_string())),
                    Err(WorkerError::Crashed(m)) => {
                        // A crashed round (out of memory) would crash again on the same
                        // staged input: drop it, the next round stages afresh.
                        let _ = std::fs::remove_dir_all(self.registry.dir().join("work"));
                        Err((false, m))
                    }
                    Err(e) => Err((false, e.to_string())),
                }
            }
        };
        let now = now_ns();
        st.stage = None;
        match result {
            Ok(report) => {
                st.state = if report.promoted {
                    RetrainState::Promoted
                } else {
                    RetrainState::Rejected
                };
                st.progress = Some(1.0);
                st.finished = Some(rfc3339_ms(now));
                st.finished_ns = Some(now);
                st.model = Some(report.id.clone());
                st.reason = (!report.reason.is_empty()).then(|| report.reason.clone());
                st.report = serde_json::to_value(&report).ok();
                tracing::info!(model = %report.id, decision = %report.decision, reason = %report.reason, seconds = report.seconds, "retraining round finished");
            }
            Err((shutdown, reason)) => {
                // Stopped for a shutdown: not a round (it resumes at the next start). Stopped
                // by the budget or the memory limit, or failed: counts as a round for the
                // schedule, so a round that cannot fit does not restart in a tight loop.
                st.state = if shutdown {
                    RetrainState::Stopped
                } else {
                    RetrainState::Failed
                };
                if !shutdown {
                    st.finished = Some(rfc3339_ms(now));
                    st.finished_ns = Some(now);
                    tracing::error!("retraining round ended without a model: {reason}");
                } else {
                    tracing::info!(
                        "retraining round interrupted by shutdown; it resumes at the next start"
                    );
                }
                st.reason = Some(reason);
            }
        }
        self.publish(&st);
        !stop.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_window_parsing_and_next_time() {
        assert_eq!(parse_window("02:00-05:30"), Ok((120, 330)));
        assert_eq!(parse_window("23:00-01:00"), Ok((1380, 60)));
        assert!(parse_window("2-5").is_err());
        assert!(parse_window("25:00-01:00").is_err());
        assert!(parse_window("01:00-01:00").is_err());
        const MIN: i64 = 60_000_000_000;
        let day0 = 20_000 * 1440 * MIN; // some midnight UTC
        let w = Some((120, 330));
        assert_eq!(next_in_window(day0 + 150 * MIN, w), day0 + 150 * MIN);
        assert_eq!(next_in_window(day0 + 60 * MIN, w), day0 + 120 * MIN);
        assert_eq!(
            next_in_window(day0 + 400 * MIN, w),
            day0 + 1440 * MIN + 120 * MIN
        );
        let wrap = Some((1380, 60));
        assert_eq!(next_in_window(day0 + 30 * MIN, wrap), day0 + 30 * MIN);
        assert_eq!(next_in_window(day0 + 600 * MIN, wrap), day0 + 1380 * MIN);
        assert_eq!(next_in_window(day0 + 5, None), day0 + 5);
    }
}
