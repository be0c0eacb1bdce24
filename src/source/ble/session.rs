//! The btleplug side of a BLE sensor: adapter, scan, connect, subscribe, start, stream —
//! and the reconnect loop around it (see the parent module for the behaviour).
//!
//! Every await on the radio has a timeout: BlueZ calls can hang for tens of seconds when a
//! strap walks out of range, and a hung session must turn into a reconnect, not a stuck sensor.

use std::time::Duration;

use btleplug::api::{
    Central, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter,
    ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use futures_util::stream::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::protocol::{
    self, CpResponse, PolarClock, ECG_NOMINAL_FS_HZ, ECG_RESOLUTION_BITS, ECG_SAMPLE_RATE,
    MEASUREMENT_ECG, OP_GET_SETTINGS, OP_START,
};
use super::{parse_uuid, BleConfig, BleError, BleProfile, GattEcgConfig};
use crate::source::{Beats, Block, SourceError, SourceEvent, StrapInfo};
use crate::time::now_ns;
use crate::time::Backoff;

/// Control-point answers other than "start" (get settings, stop) come within this.
const CP_TIMEOUT: Duration = Duration::from_secs(5);
/// Best-effort teardown (stop command, unsubscribe, disconnect) per step.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the scan looks at the devices BlueZ has seen.
const SCAN_POLL: Duration = Duration::from_millis(250);
/// PMD frames held back (at most) until the sensor's rate is estimated, see [`Feed::warm`].
const WARM_MAX_FRAMES: usize = 64;
/// Generic GATT ECG: re-anchor (with a gap) when the sample-count clock and the receive clock
/// disagree by more than this.
const GENERIC_REANCHOR_NS: i64 = 1_000_000_000;
/// Consecutive sessions that could not even open the adapter (BlueZ unreachable, no adapter,
/// the configured `adapter` absent) before the sensor gives up for good. A strap out of range,
/// a failed connect or a silent link are retried for ever: the strap comes back. A missing
/// adapter or bluetoothd is a fault of the machine or the config that retrying does not
/// mend — but for a short while it can be a boot race (bluetoothd starting after the gateway,
/// a USB dongle enumerating), so it is retried this often first: with the default back-off
/// (1 s doubling, ±50 %) that is 15–47 s. A sensor that gave up is reported as failed (log,
/// error topic); when every sensor has failed the gateway stops non-zero (see `gateway`).
pub(super) const SETUP_ATTEMPTS: u32 = 6;

type Notes = std::pin::Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;
type Events = std::pin::Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Ble(#[from] BleError),
    #[error("{0}")]
    Failed(String),
    /// The gateway is gone.
    #[error("pipeline closed")]
    Closed,
}

impl From<btleplug::Error> for SessionError {
    fn from(e: btleplug::Error) -> Self {
        Self::Ble(BleError::Btle(e))
    }
}

fn failed(msg: impl Into<String>) -> SessionError {
    SessionError::Failed(msg.into())
}

async fn within<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, btleplug::Error>>,
) -> Result<T, SessionError> {
    match timeout(d, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(failed(format!("{what}: no answer within {d:?}"))),
    }
}

/// State that outlives one connection.
struct Feed {
    sensor: String,
    out: mpsc::Sender<SourceEvent>,
    /// Sensor clock mapping; the rate estimate survives reconnects (same crystal).
    clock: PolarClock,
    /// The next block must carry `gap_before` (a block was dropped, or a reconnect).
    gap: bool,
    /// The gateway has been told `Connected` and not yet `Disconnected`.
    announced: bool,
    /// Blocks dropped because the gateway's queue was full (this run).
    dropped_blocks: u64,
    /// Frames that could not be decoded (this run), for rate-limited logging.
    bad_frames: u64,
    /// This session delivered data (resets the back-off).
    delivered: bool,
    /// PMD frames of the first ~2 s after the first connect, held until the clock has
    /// estimated the strap's true rate (≈130.1 Hz, not 130): handing them over at the nominal
    /// rate would make the gateway rebuild its filters 2 s later (a 0.1 % rate change) and lose
    /// the first window's worth of signal. The estimate survives reconnects, so later
    /// connects pass frames straight through.
    warm: Vec<Block>,
    /// Sensor timestamp of the last PMD frame: a frame repeating it is a duplicate delivery
    /// (a re-subscription racing the old one) and is skipped, not treated as a gap.
    last_ts: Option<u64>,
    duplicates: u64,
}

impl Feed {
    async fn event(&mut self, ev: SourceEvent) -> Result<(), SessionError> {
        self.out.send(ev).await.map_err(|_| SessionError::Closed)
    }

    async fn connected(&mut self) -> Result<(), SessionError> {
        if !self.announced {
            self.announced = true;
            self.event(SourceEvent::Connected).await?;
        }
        Ok(())
    }

    /// Hand a block to the gateway without waiting (see the module docs on dropping).
    fn block(&mut self, mut b: Block) -> Result<(), SessionError> {
        b.gap_before |= self.gap;
        match self.out.try_send(SourceEvent::Block(b)) {
            Ok(()) => {
                self.gap = false;
                self.delivered = true;
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.gap = true;
                self.dropped_blocks += 1;
                if self.dropped_blocks.is_power_of_two() {
                    tracing::warn!(sensor = %self.sensor, dropped = self.dropped_blocks, "gateway queue full: ECG block dropped (the next block starts after a gap)");
                }
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(SessionError::Closed),
        }
    }

    fn beats(&mut self, b: Beats) -> Result<(), SessionError> {
        match self.out.try_send(SourceEvent::Beats(b)) {
            Ok(()) => {
                self.delivered = true;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(SessionError::Closed),
        }
    }

    fn bad_frame(&mut self, e: &protocol::ProtocolError) {
        self.bad_frames += 1;
        if self.bad_frames.is_power_of_two() {
            tracing::warn!(sensor = %self.sensor, skipped = self.bad_frames, "skipping a notification: {e}");
        }
    }
}

/// The source task: sessions until stopped, with back-off in between.
pub(super) async fn run(
    sensor: String,
    cfg: BleConfig,
    out: mpsc::Sender<SourceEvent>,
    stop: CancellationToken,
) -> Result<(), SourceError> {
    let mut st = Feed {
        sensor: sensor.clone(),
        out,
        clock: PolarClock::new(ECG_NOMINAL_FS_HZ),
        gap: true,
        announced: false,
        dropped_blocks: 0,
        bad_frames: 0,
        delivered: false,
        warm: Vec::new(),
        last_ts: None,
        duplicates: 0,
    };
    let mut backoff = Backoff::new(
        Duration::from_secs_f64(cfg.backoff_initial_s),
        Duration::from_secs_f64(cfg.backoff_max_s),
    );
    let mut attempt = 0u64;
    // Sessions in a row that failed before reaching the adapter (see SETUP_ATTEMPTS).
    let mut setup_failures = 0u32;
    let mut failing_since = Instant::now();
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        attempt += 1;
        st.delivered = false;
        st.gap = true;
        st.warm.clear();
        st.last_ts = None;
        st.clock.reset();
        let res = session(&cfg, &mut st, &stop).await;
        let reason = match res {
            Ok(()) => return Ok(()),
            Err(SessionError::Closed) => return Err(SourceError::Closed { sensor }),
            Err(SessionError::Ble(e)) if e.is_setup() => {
                if setup_failures == 0 {
                    failing_since = Instant::now();
                }
                setup_failures += 1;
                if setup_failures >= SETUP_ATTEMPTS {
                    return Err(SourceError::Failed {
                        sensor,
                        message: format!(
                            "BLE {}: {e} Still so after {setup_failures} attempts over {:.0} s: gave up, nothing can be received without it. Fix that and start the gateway again.",
                            cfg.target(),
                            failing_since.elapsed().as_secs_f64()
                        ),
                    });
                }
                e.to_string()
            }
            Err(e) => {
                setup_failures = 0;
                e.to_string()
            }
        };
        if st.announced {
            st.announced = false;
            if st
                .event(SourceEvent::Disconnected {
                    reason: reason.clone(),
                })
                .await
                .is_err()
            {
                return Err(SourceError::Closed { sensor });
            }
        }
        if st.delivered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        if attempt == 1 || st.delivered {
            tracing::warn!(sensor = %sensor, "BLE {}: {reason}; reconnecting in {:.1} s", cfg.target(), delay.as_secs_f64());
        } else {
            tracing::info!(sensor = %sensor, attempt, "BLE {}: {reason}; retrying in {:.1} s", cfg.target(), delay.as_secs_f64());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// Open the adapter named `wanted` (`hci0`), or the first one.
pub(super) async fn open_adapter(wanted: Option<&str>) -> Result<Adapter, BleError> {
    let manager = Manager::new()
        .await
        .map_err(|e| BleError::NoBluez(e.to_string()))?;
    let adapters = manager
        .adapters()
        .await
        .map_err(|e| BleError::NoBluez(e.to_string()))?;
    let Some(wanted) = wanted else {
        return adapters.into_iter().next().ok_or(BleError::NoAdapter);
    };
    let mut names = Vec::new();
    for a in adapters {
        // BlueZ: "hci0 (usb:v1D6Bp0246d0540)".
        let info = a.adapter_info().await.unwrap_or_default();
        let name = info.split_whitespace().next().unwrap_or("").to_string();
        if name == wanted {
            return Ok(a);
        }
        names.push(name);
    }
    if names.is_empty() {
        return Err(BleError::NoAdapter);
    }
    Err(BleError::AdapterNotFound {
        wanted: wanted.to_string(),
        available: names.join(", "),
    })
}

/// Scan until a device matches the config (or the timeout).
async fn find(
    adapter: &Adapter,
    cfg: &BleConfig,
    deadline: Instant,
    stop: &CancellationToken,
) -> Result<Option<Peripheral>, SessionError> {
    // A device BlueZ already knows (e.g. bonded and connected) needs no scan.
    if let Some(p) = matching(adapter, cfg).await? {
        return Ok(Some(p));
    }
    adapter.start_scan(ScanFilter::default()).await?;
    let found = loop {
        if let Some(p) = matching(adapter, cfg).await? {
            break Some(p);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_POLL) => {}
            _ = stop.cancelled() => break None,
        }
    };
    let _ = timeout(TEARDOWN_TIMEOUT, adapter.stop_scan()).await;
    Ok(found)
}

async fn matching(adapter: &Adapter, cfg: &BleConfig) -> Result<Option<Peripheral>, SessionError> {
    for p in adapter.peripherals().await? {
        let props = p.properties().await.ok().flatten();
        let name = props
            .as_ref()
            .and_then(|p| p.local_name.clone().or(p.advertisement_name.clone()));
        if cfg.matches(&p.address().to_string(), name.as_deref()) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn characteristic(p: &Peripheral, uuid: Uuid) -> Option<Characteristic> {
    p.characteristics().into_iter().find(|c| c.uuid == uuid)
}

/// What a connected device will be read with.
enum Plan {
    Pmd {
        cp: Characteristic,
        data: Characteristic,
    },
    HeartRate(Characteristic),
    Generic(Characteristic, GattEcgConfig),
}

fn plan(p: &Peripheral, cfg: &BleConfig, sensor: &str) -> Result<Plan, SessionError> {
    let hr = characteristic(p, Uuid::from_u128(protocol::HEART_RATE_MEASUREMENT_UUID));
    let have: Vec<String> = p.services().iter().map(|s| s.uuid.to_string()).collect();
    match cfg.profile {
        BleProfile::PolarPmd => {
            let cp = characteristic(p, Uuid::from_u128(protocol::PMD_CONTROL_POINT_UUID));
            let data = characteristic(p, Uuid::from_u128(protocol::PMD_DATA_UUID));
            match (cp, data, hr) {
                (Some(cp), Some(data), _) => Ok(Plan::Pmd { cp, data }),
                (_, _, Some(hr)) => {
                    tracing::warn!(sensor, "no PMD service (old H10 firmware or not a Polar strap): falling back to the Heart Rate service — heart rate and HRV only, no ECG windows");
                    Ok(Plan::HeartRate(hr))
                }
                _ => Err(failed(format!(
                    "device has neither the Polar PMD service nor the Heart Rate service (services: {})",
                    have.join(", ")
                ))),
            }
        }
        BleProfile::HeartRate => hr.map(Plan::HeartRate).ok_or_else(|| {
            failed(format!(
                "device has no Heart Rate Measurement characteristic 0x2A37 (services: {})",
                have.join(", ")
            ))
        }),
        BleProfile::GattEcg => {
            let g = cfg
                .gatt
                .clone()
                .expect("validated: gatt_ecg has a gatt table");
            let svc = parse_uuid(&g.service_uuid).map_err(failed)?;
            let chr = parse_uuid(&g.characteristic_uuid).map_err(failed)?;
            p.characteristics()
                .into_iter()
                .find(|c| c.uuid == chr && c.service_uuid == svc)
                .map(|c| Plan::Generic(c, g))
                .ok_or_else(|| {
                    failed(format!(
                        "device has no characteristic {chr} in service {svc} (services: {})",
                        have.join(", ")
                    ))
                })
        }
    }
}

/// One connection: find, connect, stream until an error, the watchdog or `stop`.
async fn session(
    cfg: &BleConfig,
    st: &mut Feed,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let connect_timeout = Duration::from_secs_f64(cfg.connect_timeout_s);
    let deadline = Instant::now() + connect_timeout;
    let adapter = open_adapter(cfg.adapter.as_deref()).await?;
    let events = adapter.events().await?;
    let Some(p) = find(&adapter, cfg, deadline, stop).await? else {
        if stop.is_cancelled() {
            return Ok(());
        }
        return Err(failed(format!(
            "no device with {} seen within {:.0} s (is it worn and not connected to a phone? `affectgate scan` lists what is in range)",
            cfg.target(),
            cfg.connect_timeout_s
        )));
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    if !p.is_connected().await.unwrap_or(false) {
        within(left, "connect", p.connect()).await?;
    }
    let res = connected(cfg, st, stop, &p, events).await;
    // Teardown, best effort: the link may already be gone.
    let _ = timeout(TEARDOWN_TIMEOUT, p.disconnect()).await;
    res
}

async fn connected(
    cfg: &BleConfig,
    st: &mut Feed,
    stop: &CancellationToken,
    p: &Peripheral,
    events: Events,
) -> Result<(), SessionError> {
    within(
        Duration::from_secs_f64(cfg.connect_timeout_s),
        "service discovery",
        p.discover_services(),
    )
    .await?;
    let plan = plan(p, cfg, &st.sensor)?;
    let info = identify(p).await;
    tracing::debug!(sensor = %st.sensor, ?info, "strap identified");
    st.event(SourceEvent::Identified(info)).await?;
    // The notification stream is taken before subscribing so nothing is missed.
    let notes = p.notifications().await?;
    let mut link = Link {
        p,
        notes,
        events,
        watchdog: Duration::from_secs_f64(cfg.watchdog_s),
        pending: Vec::new(),
    };
    tracing::info!(sensor = %st.sensor, address = %p.address(), profile = cfg.profile.name(), "BLE connected");
    match plan {
        Plan::Pmd { cp, data } => pmd(cfg, st, stop, &mut link, &cp, &data).await,
        Plan::HeartRate(hr) => heart_rate(st, stop, &mut link, &hr).await,
        Plan::Generic(c, g) => generic(st, stop, &mut link, &c, &g).await,
    }
}

/// The strap's advertised name and Device Information strings (manufacturer, model,
/// firmware). Best effort: a strap without the service, or a read that fails or takes more
/// than [`DIS_READ_TIMEOUT`], leaves that field `None` and the session goes on.
async fn identify(p: &Peripheral) -> StrapInfo {
    let props = p.properties().await.ok().flatten();
    let name = props.and_then(|p| p.local_name.or(p.advertisement_name));
    let read = |uuid: Uuid| async move {
        let c = characteristic(p, uuid)?;
        let bytes = timeout(DIS_READ_TIMEOUT, p.read(&c)).await.ok()?.ok()?;
        dis_string(&bytes)
    };
    StrapInfo {
        name: name.and_then(|n| dis_string(n.as_bytes())),
        manufacturer: read(DIS_MANUFACTURER).await,
        model: read(DIS_MODEL).await,
        firmware: read(DIS_FIRMWARE).await,
    }
}

/// Longest wait for one Device Information read.
const DIS_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Device Information service (0x180A) characteristics.
const DIS_MANUFACTURER: Uuid = Uuid::from_u128(super::protocol::sig_uuid(0x2A29));
const DIS_MODEL: Uuid = Uuid::from_u128(super::protocol::sig_uuid(0x2A24));
const DIS_FIRMWARE: Uuid = Uuid::from_u128(super::protocol::sig_uuid(0x2A26));

/// A Device Information string as the strap sent it: UTF-8 (lossy), trailing NULs and
/// surrounding whitespace dropped, control characters removed, at most 64 characters; `None`
/// when nothing is left. (These strings end up in Home Assistant's device registry.)
pub(super) fn dis_string(bytes: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(bytes);
    let s: String = s
        .trim_end_matches('\0')
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// A connected peripheral's notifications and the adapter's events.
struct Link<'a> {
    p: &'a Peripheral,
    notes: Notes,
    events: Events,
    watchdog: Duration,
    /// Data notifications that arrived while waiting for a control-point answer.
    pending: Vec<ValueNotification>,
}

impl Link<'_> {
    /// Next notification; errors on the watchdog, a disconnect or the end of the stream.
    /// `None` when `stop` was cancelled.
    async fn next(
        &mut self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<ValueNotification>, SessionError> {
        if !self.pending.is_empty() {
            return Ok(Some(self.pending.remove(0)));
        }
        match timeout(wait, self.next_raw(stop)).await {
            Ok(r) => r,
            Err(_) => Err(failed(format!(
                "watchdog: no notification for {:.1} s",
                wait.as_secs_f64()
            ))),
        }
    }

    /// Next value notified on `uuid` (others are skipped) under the watchdog; `None` when
    /// `stop` was cancelled.
    async fn next_of(
        &mut self,
        uuid: Uuid,
        stop: &CancellationToken,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        loop {
            match self.next(self.watchdog, stop).await? {
                None => return Ok(None),
                Some(n) if n.uuid == uuid => return Ok(Some(n.value)),
                Some(_) => {} // e.g. a late control-point indication
            }
        }
    }

    /// Wait for the control-point answer to `op`; data notifications are kept for later.
    async fn answer(
        &mut self,
        cp: &Characteristic,
        op: u8,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<CpResponse>, SessionError> {
        let deadline = Instant::now() + wait;
        let mut kept = Vec::new();
        let res = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match timeout(left, self.next_raw(stop)).await {
                Err(_) => break Ok(None),
                Ok(Err(e)) => break Err(e),
                Ok(Ok(None)) => break Ok(None),
                Ok(Ok(Some(n))) => n,
            };
            if n.uuid != cp.uuid {
                kept.push(n);
                continue;
            }
            match protocol::parse_cp_response(&n.value) {
                Ok(r) if r.op_code == op => break Ok(Some(r)),
                Ok(r) => tracing::debug!(
                    op = r.op_code,
                    "control-point answer to another request ignored"
                ),
                Err(e) => tracing::warn!("control point: {e}"),
            }
        };
        self.pending.extend(kept);
        res
    }

    /// The next notification or link event, no watchdog, no pending queue (`StreamExt::next`
    /// is cancel-safe, so a timeout around this loses nothing).
    async fn next_raw(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<Option<ValueNotification>, SessionError> {
        let id = self.p.id();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                n = self.notes.next() => return n.map(Some).ok_or_else(|| failed("notification stream ended (link lost)")),
                ev = self.events.next() => match ev {
                    Some(CentralEvent::DeviceDisconnected(d)) if d == id => return Err(failed("link lost (device disconnected)")),
                    Some(_) => {}
                    None => return Err(failed("BlueZ event stream ended")),
                },
            }
        }
    }
}

async fn pmd(
    cfg: &BleConfig,
    st: &mut Feed,
    stop: &CancellationToken,
    link: &mut Link<'_>,
    cp: &Characteristic,
    data: &Characteristic,
) -> Result<(), SessionError> {
    let p = link.p;
    // Indications on the control point and notifications on data FIRST: an H10 answers
    // nothing before both are enabled.
    within(
        CP_TIMEOUT,
        "enable control-point indications",
        p.subscribe(cp),
    )
    .await?;
    within(CP_TIMEOUT, "enable data notifications", p.subscribe(data)).await?;
    let features = within(CP_TIMEOUT, "read the control point", p.read(cp)).await?;
    match protocol::parse_features(&features) {
        Ok(f) if !f.supports(MEASUREMENT_ECG) => {
            return Err(failed(format!(
                "strap offers no ECG measurement (features {:02X?})",
                features
            )))
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(sensor = %st.sensor, "feature read: {e}; trying ECG anyway"),
    }
    let write = |bytes: Vec<u8>| async move {
        within(
            CP_TIMEOUT,
            "write the control point",
            p.write(cp, &bytes, WriteType::WithResponse),
        )
        .await
    };
    write(protocol::get_settings(MEASUREMENT_ECG).to_vec()).await?;
    match link.answer(cp, OP_GET_SETTINGS, CP_TIMEOUT, stop).await? {
        Some(r) => match r.settings() {
            Ok(s) => {
                let (rates, res) = (s.sample_rates(), s.resolutions());
                tracing::debug!(sensor = %st.sensor, ?rates, ?res, "ECG settings");
                if !rates.contains(&ECG_SAMPLE_RATE) {
                    tracing::warn!(sensor = %st.sensor, ?rates, "strap does not list 130 Hz ECG; starting it anyway");
                }
            }
            Err(e) => tracing::warn!(sensor = %st.sensor, "ECG settings: {e}"),
        },
        None if stop.is_cancelled() => return Ok(()),
        None => {
            tracing::warn!(sensor = %st.sensor, "no answer to 'get ECG settings'; starting anyway")
        }
    }
    let start_timeout = Duration::from_secs_f64(cfg.start_timeout_s);
    let mut started = false;
    for attempt in 1..=cfg.start_attempts {
        write(protocol::start_ecg(ECG_SAMPLE_RATE, ECG_RESOLUTION_BITS)).await?;
        match link.answer(cp, OP_START, start_timeout, stop).await? {
            Some(r) if r.is_ok() => {
                tracing::info!(sensor = %st.sensor, status = %r.status, attempt, "ECG started");
                started = true;
                break;
            }
            Some(r) => {
                return Err(failed(format!(
                    "strap refused to start ECG: {}",
                    r.into_result().unwrap_err()
                )))
            }
            None if stop.is_cancelled() => return Ok(()),
            None => {
                tracing::warn!(sensor = %st.sensor, attempt, of = cfg.start_attempts, "no answer to 'start ECG' within {:.0} s", cfg.start_timeout_s)
            }
        }
    }
    if !started {
        return Err(failed(format!(
            "ECG did not start after {} attempts of {:.0} s",
            cfg.start_attempts, cfg.start_timeout_s
        )));
    }
    st.connected().await?;
    let res: Result<(), SessionError> = async {
        while let Some(value) = link.next_of(data.uuid, stop).await? {
        let rx = now_ns();
        match protocol::parse_pmd_frame(&value) {
            Ok(f) if f.samples_uv.is_empty() => {}
            Ok(f) if st.last_ts == Some(f.sensor_ts_ns) => {
                st.duplicates += 1;
                if st.duplicates.is_power_of_two() {
                    tracing::debug!(sensor = %st.sensor, duplicates = st.duplicates, "duplicate PMD frame skipped");
                }
            }
            Ok(f) => {
                st.last_ts = Some(f.sensor_ts_ns);
                let t = st.clock.frame(f.sensor_ts_ns, f.samples_uv.len(), rx);
                let b = Block {
                    t0_ns: t.t0_unix_ns,
                    fs_hz: t.fs_hz,
                    samples_uv: f.samples_f32(),
                    gap_before: t.gap_before,
                };
                if !st.clock.is_estimated() && st.warm.len() < WARM_MAX_FRAMES {
                    st.warm.push(b);
                    continue;
                }
                for mut w in std::mem::take(&mut st.warm) {
                    w.fs_hz = t.fs_hz;
                    st.block(w)?;
                }
                st.block(b)?;
            }
            Err(e) => st.bad_frame(&e),
        }
        }
        Ok(())
    }
    .await;
    if res.is_ok() {
        // Shutdown: stop the stream so the strap stops radioing, then unsubscribe.
        let _ = timeout(
            TEARDOWN_TIMEOUT,
            p.write(
                cp,
                &protocol::stop(MEASUREMENT_ECG),
                WriteType::WithResponse,
            ),
        )
        .await;
        let _ = timeout(TEARDOWN_TIMEOUT, p.unsubscribe(data)).await;
        let _ = timeout(TEARDOWN_TIMEOUT, p.unsubscribe(cp)).await;
        tracing::info!(sensor = %st.sensor, "ECG stopped");
    }
    res
}

async fn heart_rate(
    st: &mut Feed,
    stop: &CancellationToken,
    link: &mut Link<'_>,
    hr: &Characteristic,
) -> Result<(), SessionError> {
    within(
        CP_TIMEOUT,
        "enable heart rate notifications",
        link.p.subscribe(hr),
    )
    .await?;
    st.connected().await?;
    let res: Result<(), SessionError> = async {
        while let Some(value) = link.next_of(hr.uuid, stop).await? {
            match protocol::parse_heart_rate(&value) {
                Ok(m) => st.beats(Beats {
                    t_ns: now_ns(),
                    hr_bpm: (m.bpm > 0).then_some(f32::from(m.bpm)),
                    rr_ms: m.rr_ms.clone(),
                    contact: m.contact,
                })?,
                Err(e) => st.bad_frame(&e),
            }
        }
        Ok(())
    }
    .await;
    if res.is_ok() {
        let _ = timeout(TEARDOWN_TIMEOUT, link.p.unsubscribe(hr)).await;
    }
    res
}

/// Sample-count clock of a generic sensor (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct CountClock {
    fs_hz: f64,
    /// Time of the next sample, Unix ns.
    next_ns: Option<f64>,
}

impl CountClock {
    pub(crate) fn new(fs_hz: f64) -> Self {
        Self {
            fs_hz,
            next_ns: None,
        }
    }

    /// (t0 of this packet, gap before it) for `n` samples received at `rx_ns` (the last
    /// sample is taken to be just received).
    pub(crate) fn packet(&mut self, n: usize, rx_ns: i64) -> (i64, bool) {
        let dur = n as f64 * 1e9 / self.fs_hz;
        let anchored = rx_ns as f64 - dur + 1e9 / self.fs_hz;
        let (t0, gap) = match self.next_ns {
            Some(next)
                if (next + dur - 1e9 / self.fs_hz - rx_ns as f64).abs()
                    <= GENERIC_REANCHOR_NS as f64 =>
            {
                (next, false)
            }
            _ => (anchored, true),
        };
        self.next_ns = Some(t0 + dur);
        (t0.round() as i64, gap)
    }
}

async fn generic(
    st: &mut Feed,
    stop: &CancellationToken,
    link: &mut Link<'_>,
    c: &Characteristic,
    g: &GattEcgConfig,
) -> Result<(), SessionError> {
    within(CP_TIMEOUT, "enable ECG notifications", link.p.subscribe(c)).await?;
    st.connected().await?;
    let mut clock = CountClock::new(g.fs_hz);
    let res: Result<(), SessionError> = async {
        while let Some(value) = link.next_of(c.uuid, stop).await? {
            let rx = now_ns();
            let mut samples = Vec::new();
            match protocol::decode_samples(&value, g.format, g.scale_uv, &mut samples) {
                Ok(0) => {}
                Ok(k) => {
                    let (t0, gap) = clock.packet(k, rx);
                    st.block(Block {
                        t0_ns: t0,
                        fs_hz: g.fs_hz,
                        samples_uv: samples,
                        gap_before: gap,
                    })?;
                }
                Err(e) => st.bad_frame(&e),
            }
        }
        Ok(())
    }
    .await;
    if res.is_ok() {
        let _ = timeout(TEARDOWN_TIMEOUT, link.p.unsubscribe(c)).await;
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_information_strings_are_cleaned() {
        assert_eq!(dis_string(b"H10\0\0").as_deref(), Some("H10"));
        assert_eq!(
            dis_string(b"  Polar Electro Oy \n").as_deref(),
            Some("Polar Electro Oy")
        );
        assert_eq!(dis_string(b"3.0\x1b[2J.35").as_deref(), Some("3.0[2J.35"));
        assert_eq!(
            dis_string(b"\xff\xfeX").as_deref(),
            Some("\u{fffd}\u{fffd}X")
        );
        assert_eq!(dis_string(b"\0\0"), None);
        assert_eq!(dis_string(b""), None);
        assert_eq!(dis_string(&[b'a'; 300]).map(|s| s.len()), Some(64));
    }

    #[test]
    fn count_clock_is_contiguous_and_reanchors_on_disagreement() {
        let mut c = CountClock::new(250.0);
        // 20 samples per packet = 80 ms; jittery receive times stay contiguous.
        let (t0, gap) = c.packet(20, 1_000_000_000);
        assert!(gap);
        assert_eq!(t0, 1_000_000_000 - 76_000_000);
        let mut expect = t0 + 80_000_000;
        for (k, jitter) in [30i64, -20, 45, 0, -40].iter().enumerate() {
            let rx = 1_000_000_000 + (k as i64 + 1) * 80_000_000 + jitter * 1_000_000;
            let (t, gap) = c.packet(20, rx);
            assert_eq!((t, gap), (expect, false));
            expect += 80_000_000;
        }
        // 3 s of silence (lost packets): re-anchored at the receive time, flagged.
        let rx = 1_000_000_000 + 6 * 80_000_000 + 3_000_000_000;
        let (t, gap) = c.packet(20, rx);
        assert!(gap);
        assert_eq!(t, rx - 76_000_000);
    }
}
