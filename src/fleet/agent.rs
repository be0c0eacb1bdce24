//! The gateway's fleet agent: takes a release from the fleet repository when the channel's
//! rollout plan lets it, and only if every check passes.
//!
//! ```text
//! plan (retained, affectgate/fleet/<channel>/plan)
//!   └─ my wave started? not halted? policy / maintenance window allow?
//!        └─ downloading   TUF from the pinned root (signatures, thresholds, expiry, no
//!        │                metadata rollback, no mix-and-match, every file's length and sha256)
//!        └─ checks        release.json: this channel, a version above the installed one,
//!        │                a minimum gateway version this build meets
//!        └─ self_test     the serving backend loads it; golden windows reproduce their
//!        │                outputs within 1e-4, nothing NaN
//!        └─ promote       registry add + promote: the registry watcher loads it and the
//!        │                scorer swaps between two batches (no window dropped or scored twice)
//!        └─ health        the first `health_windows` windows scored by it, none failed
//!             ├─ succeeded
//!             └─ rolled_back (registry rollback: the previous model serves again)
//! ```
//!
//! Every step is reported retained on `affectgate/<gw>/fleet` ([`GatewayStatus`]) and in the
//! log; Home Assistant's update entity follows on `affectgate/<gw>/update`. A refusal or a
//! failure is final for that release (a new release is a new name), so a bad release is not
//! retried in a loop; a transient problem (the repository unreachable) is retried.
//!
//! State that must survive a restart — what is installed (name and version, for downgrade
//! refusals) and each release's outcome — is `<models_dir>/fleet/state.json` (atomic
//! writes); TUF's last-seen metadata is `<models_dir>/fleet/tuf/`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{FleetConfig, Policy};
use super::plan::{GatewayStatus, RolloutPlan};
use super::release::{Golden, ReleaseManifest, MANIFEST};
use super::{client, FleetError};
use crate::infer::{Backend, Model};
use crate::mqtt::MqttLink;
use crate::retrain::registry::{Entry, ModelStatus, Registry, Serving};
use crate::time::{now_ns, rfc3339_s};

/// This build's version (`min_gateway` is compared with it).
pub const GATEWAY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What reaches the agent from MQTT.
#[derive(Debug)]
pub enum FleetInput {
    /// A (retained) plan on the channel's plan topic.
    Plan(Vec<u8>),
    /// `cmd/update`: install what the plan offers (manual policy).
    Install,
}

/// Windows scored per model version, and failures (an inference error or a non-finite
/// output): the scorer records, the agent's health window reads.
#[derive(Debug, Default)]
pub struct Health {
    by_model: Mutex<HashMap<String, (u64, u64)>>,
}

impl Health {
    /// Add `ok` windows scored and `failed` windows failed by `model`.
    pub fn record(&self, model: &str, ok: u64, failed: u64) {
        let mut m = self.by_model.lock().expect("health lock");
        // The version string is allocated once per model, not once per call.
        match m.get_mut(model) {
            Some(e) => {
                e.0 += ok;
                e.1 += failed;
            }
            None => {
                m.insert(model.to_string(), (ok, failed));
            }
        }
    }
    /// (scored, failed) for `model`.
    pub fn get(&self, model: &str) -> (u64, u64) {
        *self
            .by_model
            .lock()
            .expect("health lock")
            .get(model)
            .unwrap_or(&(0, 0))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    installed: Option<Installed>,
    /// Final outcome per release name (succeeded, failed, rolled_back, refused).
    #[serde(default)]
    outcomes: BTreeMap<String, GatewayStatus>,
    /// A release promoted whose health window had not ended (a restart interrupted it).
    #[serde(default)]
    pending: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Installed {
    name: String,
    version: u64,
    #[serde(default)]
    summary: String,
}

/// Why an install stopped.
enum Stop {
    /// Final for this release: (state, reason).
    Final(&'static str, String),
    /// Try again later (the repository was unreachable).
    Transient(String),
}

/// The agent. Built by the gateway, run as one task.
pub struct Agent {
    pub cfg: FleetConfig,
    pub gateway: String,
    /// `<models_dir>/fleet`.
    pub dir: PathBuf,
    pub registry: Registry,
    pub backend: Backend,
    pub link: Arc<MqttLink>,
    pub serving: watch::Receiver<Serving>,
    pub health: Arc<Health>,
    /// The window store: how many self-reports the wearers gave (personalisation).
    pub store: Arc<crate::store::Store>,
    /// Requests a retraining round (None: retraining is disabled).
    pub retrain: Option<mpsc::Sender<()>>,
}

/// How often a plan is looked at again (wave start, maintenance window, retries).
const TICK: Duration = Duration::from_secs(2);
/// Wait before retrying after a transient failure.
const RETRY: Duration = Duration::from_secs(30);
/// Longest wait for the registry watcher to swap a promoted model in.
const SWAP_TIMEOUT: Duration = Duration::from_secs(120);

impl Agent {
    /// Check what the agent needs before the gateway starts (the pinned root is readable).
    pub fn check(cfg: &FleetConfig) -> Result<(), FleetError> {
        std::fs::metadata(&cfg.root)
            .map(|_| ())
            .map_err(|e| FleetError::io(&cfg.root, e))
    }

    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<FleetInput>, stop: CancellationToken) {
        let mut st = Runner {
            state: load_state(&self.dir),
            agent: self,
            plan: None,
            confirmed: None,
            last: None,
            retry_at: None,
            summary: None,
        };
        st.recover_interrupted().await;
        st.report_idle();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                input = rx.recv() => match input {
                    None => return,
                    Some(FleetInput::Plan(bytes)) => st.on_plan(&bytes),
                    Some(FleetInput::Install) => st.on_install(),
                },
                _ = tick.tick() => {}
            }
            st.evaluate(&stop).await;
        }
    }
}

struct Runner {
    agent: Agent,
    state: Persisted,
    plan: Option<RolloutPlan>,
    /// Release confirmed by `cmd/update` (manual policy).
    confirmed: Option<String>,
    last: Option<(String, Option<String>, Option<String>)>,
    retry_at: Option<std::time::Instant>,
    /// Summary of the plan's release once its manifest was read.
    summary: Option<String>,
}

impl Runner {
    fn installed_name(&self) -> Option<String> {
        self.state.installed.as_ref().map(|i| i.name.clone())
    }

    fn on_plan(&mut self, bytes: &[u8]) {
        let topic = super::plan::plan_topic(&self.agent.cfg.channel);
        if bytes.is_empty() {
            tracing::info!(topic, "rollout plan deleted");
            self.plan = None;
            self.report_idle();
            return;
        }
        match serde_json::from_slice::<RolloutPlan>(bytes)
            .map_err(|e| e.to_string())
            .and_then(|p| p.validate().map(|()| p))
        {
            Ok(p) if p.channel != self.agent.cfg.channel => {
                self.error(
                    &topic,
                    &format!(
                        "plan for channel {:?} on this channel's topic; ignored",
                        p.channel
                    ),
                );
            }
            Ok(p) => {
                if self.plan.as_ref().map(|q| &q.release) != Some(&p.release) {
                    self.summary = None;
                    tracing::info!(release = %p.release, wave = p.wave_of(&self.agent.gateway), halted = ?p.halted, "rollout plan received");
                }
                self.plan = Some(p);
            }
            Err(e) => self.error(&topic, &format!("not a rollout plan: {e}")),
        }
    }

    fn on_install(&mut self) {
        match &self.plan {
            Some(p) if self.agent.cfg.policy == Policy::Manual => {
                tracing::info!(release = %p.release, "install requested");
                self.confirmed = Some(p.release.clone());
            }
            Some(_) => tracing::info!("install requested; policy is auto, the plan's wave decides"),
            None => self.error(
                &self.agent.link.topics().command("update"),
                "no rollout plan for this gateway's channel: nothing to install",
            ),
        }
    }

    fn error(&self, topic: &str, msg: &str) {
        tracing::warn!(topic, "{msg}");
        let m = crate::mqtt::inputs::error_json(Some(topic), None, msg);
        self.agent
            .link
            .send(self.agent.link.topics().error(), m.into_bytes());
    }

    /// Publish a status (retained) when it differs from the last one.
    fn report(&mut self, state: &str, target: Option<String>, reason: Option<String>) {
        let key = (state.to_string(), target.clone(), reason.clone());
        if self.last.as_ref() == Some(&key) {
            return;
        }
        self.last = Some(key);
        let status = GatewayStatus {
            gateway: self.agent.gateway.clone(),
            serving: self.installed_name(),
            target: target.clone(),
            state: state.to_string(),
            reason: reason.clone(),
            at_s: (now_ns() / 1_000_000_000) as u64,
        };
        match (state, &reason) {
            ("refused" | "failed" | "rolled_back", Some(r)) => {
                tracing::warn!(state, release = ?target, "fleet: {r}")
            }
            (_, Some(r)) => tracing::info!(state, release = ?target, "fleet: {r}"),
            _ => tracing::info!(state, release = ?target, "fleet"),
        }
        let link = &self.agent.link;
        link.retain(
            link.topics().fleet(),
            serde_json::to_vec(&status).expect("status serialises"),
        );
        self.publish_update(state);
    }

    /// Home Assistant's update entity.
    fn publish_update(&self, state: &str) {
        let installed = self.installed_name().unwrap_or_else(|| "shipped".into());
        let latest = match &self.plan {
            Some(p) if p.halted.is_none() && !self.finished_badly(&p.release) => p.release.clone(),
            _ => installed.clone(),
        };
        let in_progress = matches!(state, "downloading" | "self_test" | "health");
        let pct = match state {
            "downloading" => Some(10),
            "self_test" => Some(60),
            "health" => Some(90),
            _ => None,
        };
        let summary = self
            .summary
            .clone()
            .or_else(|| self.state.installed.as_ref().map(|i| i.summary.clone()))
            .unwrap_or_default();
        let mut msg = serde_json::json!({
            "installed_version": installed,
            "latest_version": latest,
            "title": "affectgate model",
            "release_summary": summary.chars().take(255).collect::<String>(),
            "in_progress": in_progress,
        });
        if let Some(p) = pct {
            msg["update_percentage"] = p.into();
        }
        let link = &self.agent.link;
        link.retain(link.topics().update(), msg.to_string().into_bytes());
    }

    fn finished_badly(&self, release: &str) -> bool {
        self.state
            .outcomes
            .get(release)
            .is_some_and(|s| s.state != "succeeded")
    }

    fn report_idle(&mut self) {
        if let Some(p) = &self.plan {
            if let Some(done) = self.state.outcomes.get(&p.release).cloned() {
                self.report(&done.state, done.target, done.reason);
                return;
            }
        }
        self.report("idle", None, None);
    }

    /// A promoted release whose health window a restart cut: it never proved itself, so the
    /// previous model serves again and the release counts as failed.
    async fn recover_interrupted(&mut self) {
        let Some(name) = self.state.pending.take() else {
            return;
        };
        let r = self.agent.registry.clone();
        let serving = tokio::task::spawn_blocking(move || r.serving())
            .await
            .ok()
            .and_then(|r| r.ok());
        if let Some((Some(cur), _)) = serving {
            if cur == name {
                let r = self.agent.registry.clone();
                let _ = tokio::task::spawn_blocking(move || r.rollback()).await;
            }
        }
        self.finish(
            &name,
            "rolled_back",
            "a restart interrupted the health window; the previous model serves".into(),
        );
    }

    fn finish(&mut self, release: &str, state: &'static str, reason: String) {
        let status = GatewayStatus {
            gateway: self.agent.gateway.clone(),
            serving: self.installed_name(),
            target: Some(release.to_string()),
            state: state.into(),
            reason: Some(reason.clone()),
            at_s: (now_ns() / 1_000_000_000) as u64,
        };
        self.state.outcomes.insert(release.to_string(), status);
        self.state.pending = None;
        save_state(&self.agent.dir, &self.state);
        self.report(state, Some(release.to_string()), Some(reason));
    }

    async fn evaluate(&mut self, stop: &CancellationToken) {
        let Some(p) = self.plan.clone() else {
            return;
        };
        let me = self.agent.gateway.clone();
        let target = Some(p.release.clone());
        if self.installed_name().as_deref() == Some(p.release.as_str()) {
            return self.report_idle();
        }
        // A refusal or failure is final for that release. A release that succeeded once and
        // was replaced since (re-announced by an old plan) goes through the checks again,
        // which refuse it as a downgrade.
        if self.finished_badly(&p.release) {
            return self.report_idle();
        }
        if let Some(why) = &p.halted {
            return self.report("waiting", target, Some(format!("rollout halted: {why}")));
        }
        let now_s = (now_ns() / 1_000_000_000) as u64;
        if !p.may_install(&me, now_s) {
            let at = p.start_of(&me);
            let why = format!(
                "wave {} starts at {} (in {} s)",
                p.wave_of(&me),
                rfc3339_s(at as i64 * 1_000_000_000),
                at.saturating_sub(now_s)
            );
            return self.report("waiting", target, Some(why));
        }
        if self.agent.cfg.policy == Policy::Manual && self.confirmed.as_ref() != target.as_ref() {
            return self.report(
                "waiting",
                target,
                Some("policy manual: install from Home Assistant's update entity (or publish {} to cmd/update)".into()),
            );
        }
        if let Some(w) = &self.agent.cfg.maintenance_window {
            let win = crate::retrain::config::parse_window(w).ok();
            let now = now_ns();
            let next = crate::retrain::scheduler::next_in_window(now, win);
            if next > now {
                let why = format!(
                    "outside the maintenance window {w} (UTC); next start {}",
                    rfc3339_s(next)
                );
                return self.report("waiting", target, Some(why));
            }
        }
        if self.retry_at.is_some_and(|t| std::time::Instant::now() < t) {
            return;
        }
        match self.install(&p, stop).await {
            Ok(reason) => {
                self.retry_at = None;
                self.finish(&p.release, "succeeded", reason);
            }
            Err(Stop::Final(state, reason)) => {
                self.retry_at = None;
                self.finish(&p.release, state, reason);
            }
            Err(Stop::Transient(reason)) => {
                self.retry_at = Some(std::time::Instant::now() + RETRY);
                self.report(
                    "waiting",
                    target,
                    Some(format!("{reason}; retrying in {} s", RETRY.as_secs())),
                );
            }
        }
    }

    async fn install(&mut self, p: &RolloutPlan, stop: &CancellationToken) -> Result<String, Stop> {
        let name = p.release.clone();
        let target = Some(name.clone());
        if !super::release::is_release_name(&name) {
            return Err(Stop::Final(
                "refused",
                format!("release name {name:?} is not a plain folder name"),
            ));
        }
        self.report("downloading", target.clone(), None);
        let dir = self.agent.dir.join("releases").join(&name);
        let files = self.download(&name, &dir).await?;
        let manifest = self.check_manifest(&name, &dir, &files)?;
        self.summary = Some(manifest.summary.clone());
        self.report("self_test", target.clone(), None);
        self.self_test(&dir, &manifest).await?;
        let version = self.promote(&name, &dir, &manifest).await?;
        self.report(
            "health",
            target.clone(),
            Some(format!(
                "{version} serves; waiting for {} windows",
                self.agent.cfg.health_windows
            )),
        );
        let verdict = self.health_window(&version, stop).await;
        match verdict {
            Ok(why) => {
                let why = format!("{why}{}", self.personalise().await);
                self.state.installed = Some(Installed {
                    name: name.clone(),
                    version: manifest.version,
                    summary: manifest.summary.clone(),
                });
                save_state(&self.agent.dir, &self.state);
                Ok(why)
            }
            Err(why) => {
                let r = self.agent.registry.clone();
                let back = tokio::task::spawn_blocking(move || r.rollback()).await;
                let back = match back {
                    Ok(Ok(prev)) => format!("{prev} serves again"),
                    Ok(Err(e)) => format!("rolling back failed too: {e}"),
                    Err(e) => format!("rolling back failed too: {e}"),
                };
                Err(Stop::Final("rolled_back", format!("{why}; {back}")))
            }
        }
    }

    /// Personalisation across a base update: the wearers' self-reports stay in the store, and
    /// a retraining round on the new base (the serving model now) re-fits its heads on them
    /// together with the release's own labelled set, gated like every round. Returns what
    /// happened, for the status.
    async fn personalise(&self) -> String {
        let store = self.agent.store.clone();
        let labelled = tokio::task::spawn_blocking(move || store.stats())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|s| s.sensors.iter().map(|x| x.labelled).sum::<u64>())
            .unwrap_or(0);
        if labelled == 0 {
            return String::new();
        }
        match &self.agent.retrain {
            Some(tx) => match tx.try_send(()) {
                Ok(()) => format!("; {labelled} self-reported windows: a retraining round re-fits the heads on the new base (affectgate/<gw>/retrain)"),
                Err(_) => format!("; {labelled} self-reported windows: a retraining round is already requested or running and will start from the new base"),
            },
            None => format!("; {labelled} self-reported windows kept, but retraining is disabled (retrain.enabled = false): the release's heads serve unpersonalised"),
        }
    }

    async fn download(&self, name: &str, dir: &Path) -> Result<Vec<String>, Stop> {
        let cfg = &self.agent.cfg;
        let (meta, targets) =
            client::urls_for(&cfg.repository).map_err(|e| Stop::Final("refused", e.to_string()))?;
        let datastore = self.agent.dir.join("tuf");
        std::fs::create_dir_all(&datastore)
            .map_err(|e| Stop::Transient(format!("{}: {e}", datastore.display())))?;
        let classify = |e: FleetError| match e.is_transient() {
            true => Stop::Transient(format!("repository unreachable: {e}")),
            false => Stop::Final("refused", e.to_string()),
        };
        let repo = client::load_urls(
            &cfg.root,
            meta,
            targets,
            Some(&datastore),
            tough::ExpirationEnforcement::Safe,
        )
        .await
        .map_err(classify)?;
        if dir.exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Stop::Transient(format!("{}: {e}", parent.display())))?;
        }
        client::fetch_release(&repo, name, dir)
            .await
            .map_err(classify)
    }

    fn check_manifest(
        &self,
        name: &str,
        dir: &Path,
        files: &[String],
    ) -> Result<ReleaseManifest, Stop> {
        let refuse = |why: String| Stop::Final("refused", why);
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path)
            .map_err(|e| refuse(format!("release {name}: no {MANIFEST} ({e})")))?;
        let m: ReleaseManifest = serde_json::from_slice(&text)
            .map_err(|e| refuse(format!("release {name}: {MANIFEST}: {e}")))?;
        m.validate(files)
            .map_err(|e| refuse(format!("release {name}: {e}")))?;
        if m.name != name {
            return Err(refuse(format!(
                "release {name}: its {MANIFEST} says name {:?}",
                m.name
            )));
        }
        if m.channel != self.agent.cfg.channel {
            return Err(refuse(format!(
                "release {name} is for channel {:?}; this gateway follows {:?}",
                m.channel, self.agent.cfg.channel
            )));
        }
        if let Some(i) = &self.state.installed {
            if m.version <= i.version {
                return Err(refuse(format!(
                    "downgrade refused: release {name} has version {}, not above the installed {} (version {}); go back with a new, higher release (affectgate-fleet rollback)",
                    m.version, i.name, i.version
                )));
            }
        }
        if let Some(why) = m.too_new_for(GATEWAY_VERSION) {
            return Err(refuse(why));
        }
        Ok(m)
    }

    async fn self_test(&self, dir: &Path, m: &ReleaseManifest) -> Result<(), Stop> {
        let model_path = dir.join(&m.model);
        let card_path = crate::model::card::ModelCard::path_for(&model_path);
        if card_path != dir.join(&m.card) {
            return Err(Stop::Final(
                "refused",
                format!(
                    "release {}: the card must be named {} beside {}",
                    m.name,
                    card_path.display(),
                    m.model
                ),
            ));
        }
        let golden_path = dir.join(&m.golden);
        let backend = self.agent.backend.clone();
        let name = m.name.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let golden: Golden = serde_json::from_slice(
                &std::fs::read(&golden_path)
                    .map_err(|e| format!("{}: {e}", golden_path.display()))?,
            )
            .map_err(|e| format!("{}: {e}", golden_path.display()))?;
            let mut model = Model::load(&model_path, &backend).map_err(|e| e.to_string())?;
            crate::model::check_feature_names(model.feature_names())?;
            if model.feature_names() != golden.features.as_slice() {
                return Err(format!(
                    "golden windows have features {:?}, the model reads {:?}",
                    golden.features,
                    model.feature_names()
                ));
            }
            let got = super::pack::run_golden(
                &mut model,
                golden
                    .windows
                    .iter()
                    .map(|w| (w.samples.as_slice(), w.features.as_slice())),
            )?;
            golden.check(&got)
        })
        .await
        .map_err(|e| Stop::Final("failed", format!("self-test: {e}")))?;
        res.map_err(|e| Stop::Final("failed", format!("self-test of {name}: {e}")))
    }

    /// Register and promote; wait until the scorer serves it. Returns its model version.
    async fn promote(
        &mut self,
        name: &str,
        dir: &Path,
        m: &ReleaseManifest,
    ) -> Result<String, Stop> {
        let onnx =
            std::fs::read(dir.join(&m.model)).map_err(|e| Stop::Final("failed", e.to_string()))?;
        let card = std::fs::read_to_string(dir.join(&m.card))
            .map_err(|e| Stop::Final("failed", e.to_string()))?;
        let parent = self.agent.serving.borrow().id.clone();
        let entry = Entry {
            id: name.to_string(),
            created: rfc3339_s(now_ns()),
            parent,
            status: ModelStatus::Candidate,
            reason: format!("fleet release {} (version {})", m.name, m.version),
            metrics: serde_json::to_value(m).unwrap_or_default(),
            sha256: String::new(),
        };
        let r = self.agent.registry.clone();
        let id = name.to_string();
        self.state.pending = Some(id.clone());
        save_state(&self.agent.dir, &self.state);
        // The release's pretext network and replay pack go beside its model: retraining
        // rounds on this base continue from them (`retrain::round`).
        let extras: Vec<(PathBuf, &'static str)> =
            [(&m.pretext, "pretext.onnx"), (&m.replay, "replay.bin")]
                .into_iter()
                .filter_map(|(f, to)| f.as_ref().map(|f| (dir.join(f), to)))
                .collect();
        let res = tokio::task::spawn_blocking(move || {
            r.add(entry, &onnx, &card)?;
            let folder = r.model_path(&id).with_file_name("");
            for (from, to) in extras {
                let dst = folder.join(to);
                std::fs::copy(&from, &dst).map_err(|e| {
                    crate::retrain::registry::RegistryError::Io {
                        path: dst.clone(),
                        source: e,
                    }
                })?;
            }
            r.promote(&id)
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Stop::Final("failed", format!("registry: {e}"))),
            Err(e) => return Err(Stop::Final("failed", format!("registry: {e}"))),
        }
        let mut serving = self.agent.serving.clone();
        let waited = tokio::time::timeout(SWAP_TIMEOUT, async {
            loop {
                {
                    let s = serving.borrow_and_update();
                    if s.id == name {
                        return Some(s.version.clone());
                    }
                }
                if serving.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match waited {
            Ok(Some(v)) => Ok(v),
            _ => Err(Stop::Final(
                "rolled_back",
                format!(
                    "{name} did not start serving within {} s (see the log for the load error)",
                    SWAP_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    async fn health_window(
        &self,
        version: &str,
        stop: &CancellationToken,
    ) -> Result<String, String> {
        let n = self.agent.cfg.health_windows;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.agent.cfg.health_timeout_s);
        loop {
            let (ok, bad) = self.agent.health.get(version);
            if bad > 0 {
                return Err(format!(
                    "health window: {bad} of {} windows failed to score under {version}",
                    ok + bad
                ));
            }
            if ok >= n {
                return Ok(format!("{version} scored {ok} windows without a failure"));
            }
            if self.agent.serving.borrow().version != version {
                return Err(format!(
                    "{version} stopped serving during its health window"
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return match ok {
                    0 => Err(format!(
                        "health window: no window scored under {version} within {} s",
                        self.agent.cfg.health_timeout_s
                    )),
                    _ => Ok(format!(
                        "{version} scored {ok} of {n} windows in {} s, none failed",
                        self.agent.cfg.health_timeout_s
                    )),
                };
            }
            tokio::select! {
                _ = stop.cancelled() => return Err("the gateway stopped during the health window".into()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn load_state(dir: &Path) -> Persisted {
    let p = state_path(dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(
                "{}: {e}; starting with no fleet state (the file is kept as .bad)",
                p.display()
            );
            let _ = std::fs::rename(&p, p.with_extension("json.bad"));
            Persisted::default()
        }),
        Err(_) => Persisted::default(),
    }
}

fn save_state(dir: &Path, st: &Persisted) {
    let p = state_path(dir);
    let bytes = serde_json::to_vec_pretty(st).expect("state serialises");
    if let Err(e) = std::fs::create_dir_all(dir)
        .and_then(|()| crate::fs::atomic_write(&p, &bytes).map_err(std::io::Error::other))
    {
        tracing::error!("{}: {e}", p.display());
    }
}
