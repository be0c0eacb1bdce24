//! BLE ingest: Polar H10 ECG over PMD, the standard Heart Rate service, and generic GATT ECG
//! boards, through btleplug (BlueZ over D-Bus on Linux).
//!
//! * [`protocol`] owns bytes and time (pure code: decoders, encoders, the sensor clock).
//! * [`BleConfig`] is one `[[sensors]]` source table (`kind = "ble"`): which device (address or
//!   name pattern), which profile, and the robustness knobs below.
//! * [`BleSource`] is the [`Source`] the gateway runs per sensor. Its loop is *connect → stream
//!   → on any failure back off and reconnect*, forever, until the gateway stops it:
//!   - a session scans for the device, connects, discovers services, **subscribes first**
//!     (PMD control-point indications and data notifications; nothing comes back otherwise),
//!     reads the feature bitmap, asks for the ECG settings and starts ECG at 130 Hz / 14 bit;
//!     "already in state" counts as started (the stream survives a short link loss on the
//!     strap's side);
//!   - the start is retried `start_attempts` times with `start_timeout_s` each (an H10 can take
//!     20–30 s to answer); a **watchdog** ends the session when no frame arrived for
//!     `watchdog_s` (after abrupt link loss BlueZ can re-subscribe silently without data); a
//!     disconnect event ends it at once;
//!   - between sessions: exponential back-off with jitter ([`crate::time::Backoff`]), reset after a session
//!     that delivered data;
//!   - every block after a (re)connect, a watchdog expiry, a dropped frame (timestamp jump) or
//!     a block the gateway could not take in time carries `gap_before`, so no window ever
//!     spans missing samples; `Connected` / `Disconnected` drive the per-strap availability
//!     topic;
//!   - on shutdown the ECG stream is stopped (`03 00`), notifications disabled and the link
//!     closed, so the strap stops radioing.
//! * Heart Rate service (profile `heart_rate`, or `polar_pmd` on a strap without PMD — old H10
//!   firmware): HR and RR intervals become [`SourceEvent::Beats`]; the gateway publishes HR/HRV
//!   from them but no ECG windows (there is no ECG).
//! * Generic GATT ECG (profile `gatt_ecg`): bare samples in a configured format at a configured
//!   rate; timestamps come from the sample count, anchored at the first notification and
//!   re-anchored (with a gap) when the receive clock disagrees by more than a second.
//!
//! Why blocks are *dropped* (and flagged) rather than awaited when the gateway's queue is full:
//! BLE notifications cannot be paused; waiting would stall btleplug's notification stream and
//! lose the link's data anyway, without a gap flag.
//!
//! The test seam is D-Bus itself: btleplug honours `DBUS_SYSTEM_BUS_ADDRESS`, and the
//! end-to-end tests point it at a private bus where BlueZoo (a BlueZ mock) and
//! `tests/ble_sim/fake_h10.py` play the adapter and the strap. The code under test is exactly
//! the code that talks to a real BlueZ.

pub mod protocol;
pub mod scan;
mod session;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::protocol::SampleFormat;
use super::{Source, SourceEvent, SourceFuture};

/// Which GATT profile a sensor is read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BleProfile {
    /// Polar PMD ECG (H10); falls back to the Heart Rate service when the strap has no PMD.
    PolarPmd,
    /// Heart Rate service 0x180D / 0x2A37 only: HR and RR intervals, no ECG windows.
    HeartRate,
    /// A DIY board streaming bare samples (see [`GattEcgConfig`]).
    GattEcg,
}

impl BleProfile {
    pub fn name(self) -> &'static str {
        match self {
            Self::PolarPmd => "polar_pmd",
            Self::HeartRate => "heart_rate",
            Self::GattEcg => "gatt_ecg",
        }
    }
}

/// Service and sample format of a generic GATT ECG sensor (`gatt = { … }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GattEcgConfig {
    /// Service UUID (full 128-bit, or 4 hex digits for a SIG UUID).
    pub service_uuid: String,
    /// Notify characteristic carrying the samples.
    pub characteristic_uuid: String,
    /// `i16le`, `i16be`, `i24le` or `i24be`.
    pub format: SampleFormat,
    /// µV per ADC count (default 1).
    #[serde(default = "one")]
    pub scale_uv: f32,
    /// Sampling rate, Hz.
    pub fs_hz: f64,
}

fn one() -> f32 {
    1.0
}

/// One BLE sensor (`source = { kind = "ble", … }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BleConfig {
    pub profile: BleProfile,
    /// Device address `AA:BB:CC:DD:EE:FF` (exactly one of `address` and `name`).
    #[serde(default)]
    pub address: Option<String>,
    /// Advertised name or a glob pattern (`"Polar H10 *"`; `*`, `?`, `[…]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Adapter to use (`hci0`); default: the first one BlueZ lists.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Finding the device (scan) + connecting + discovering its services, seconds (default 30).
    #[serde(default = "d_connect")]
    pub connect_timeout_s: f64,
    /// Wait for the answer to "start ECG", per attempt (default 35: an H10 can take 20–30 s).
    #[serde(default = "d_start")]
    pub start_timeout_s: f64,
    /// Start attempts per connection before reconnecting (default 3).
    #[serde(default = "d_attempts")]
    pub start_attempts: u32,
    /// No notification for this long → reconnect (default 5 s; an H10 sends ECG every 0.56 s,
    /// heart rate every 1 s).
    #[serde(default = "d_watchdog")]
    pub watchdog_s: f64,
    /// Back-off before the first reconnect, seconds (default 1); doubles per failure…
    #[serde(default = "d_backoff")]
    pub backoff_initial_s: f64,
    /// …up to this (default 60), with ±50 % jitter.
    #[serde(default = "d_backoff_max")]
    pub backoff_max_s: f64,
    /// Required for `profile = "gatt_ecg"`, rejected otherwise.
    #[serde(default)]
    pub gatt: Option<GattEcgConfig>,
}

fn d_connect() -> f64 {
    30.0
}
fn d_start() -> f64 {
    35.0
}
fn d_attempts() -> u32 {
    3
}
fn d_watchdog() -> f64 {
    5.0
}
fn d_backoff() -> f64 {
    1.0
}
fn d_backoff_max() -> f64 {
    60.0
}

/// Parse a config UUID: full 128-bit form, or 4 hex digits of a SIG 16-bit UUID.
pub fn parse_uuid(s: &str) -> Result<Uuid, String> {
    let t = s.trim();
    if t.len() == 4 {
        if let Ok(short) = u16::from_str_radix(t, 16) {
            return Ok(Uuid::from_u128(protocol::sig_uuid(short)));
        }
    }
    Uuid::parse_str(t).map_err(|e| {
        format!("{s:?} is not a UUID ({e}); use the 128-bit form (6e400001-b5a3-f393-e0a9-e50e24dcca9e) or 4 hex digits of a SIG UUID (180d)")
    })
}

fn is_address(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl BleConfig {
    /// Field checks serde cannot express; the message names the field and value.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.address, &self.name) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(
                    "give exactly one of `address` (\"AA:BB:CC:DD:EE:FF\") and `name` (a pattern such as \"Polar H10 *\"); `affectgate scan` lists both".into(),
                )
            }
            (Some(a), None) if !is_address(a) => {
                return Err(format!(
                    "address = {a:?}: expected six hex pairs like \"A0:9E:1A:12:34:56\""
                ))
            }
            (None, Some(n)) => {
                if n.is_empty() {
                    return Err("name = \"\": give the advertised name or a pattern".into());
                }
                glob::Pattern::new(n)
                    .map_err(|e| format!("name = {n:?}: not a valid pattern: {e}"))?;
            }
            _ => {}
        }
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(())
            } else {
                Err(format!("{key} = {v}: must be > 0 and ≤ 86400 seconds"))
            }
        };
        positive("connect_timeout_s", self.connect_timeout_s)?;
        positive("start_timeout_s", self.start_timeout_s)?;
        positive("watchdog_s", self.watchdog_s)?;
        positive("backoff_initial_s", self.backoff_initial_s)?;
        positive("backoff_max_s", self.backoff_max_s)?;
        if self.backoff_initial_s > self.backoff_max_s {
            return Err(format!(
                "backoff_initial_s = {} is above backoff_max_s = {}",
                self.backoff_initial_s, self.backoff_max_s
            ));
        }
        if !(1..=100).contains(&self.start_attempts) {
            return Err(format!(
                "start_attempts = {}: must be 1..=100",
                self.start_attempts
            ));
        }
        if let Some(a) = &self.adapter {
            if a.is_empty() {
                return Err("adapter = \"\": name an adapter such as \"hci0\", or leave it out for the first one".into());
            }
        }
        match (self.profile, &self.gatt) {
            (BleProfile::GattEcg, None) => Err(
                "profile = \"gatt_ecg\" needs a `gatt = { service_uuid, characteristic_uuid, format, fs_hz }` table".into(),
            ),
            (BleProfile::GattEcg, Some(g)) => {
                parse_uuid(&g.service_uuid).map_err(|e| format!("gatt.service_uuid = {e}"))?;
                parse_uuid(&g.characteristic_uuid)
                    .map_err(|e| format!("gatt.characteristic_uuid = {e}"))?;
                if !(g.fs_hz.is_finite() && (25.0..=10_000.0).contains(&g.fs_hz)) {
                    return Err(format!("gatt.fs_hz = {}: must be 25..=10000 Hz", g.fs_hz));
                }
                if !(g.scale_uv.is_finite() && g.scale_uv != 0.0) {
                    return Err(format!(
                        "gatt.scale_uv = {}: must be a finite, non-zero µV per count",
                        g.scale_uv
                    ));
                }
                Ok(())
            }
            (p, Some(_)) => Err(format!(
                "`gatt` is only used with profile = \"gatt_ecg\", not {:?}",
                p.name()
            )),
            _ => Ok(()),
        }
    }

    /// Sampling rate of the ECG this sensor delivers (`None`: no ECG, heart rate only).
    pub fn ecg_fs_hz(&self) -> Option<f64> {
        match self.profile {
            BleProfile::PolarPmd => Some(protocol::ECG_NOMINAL_FS_HZ),
            BleProfile::HeartRate => None,
            BleProfile::GattEcg => self.gatt.as_ref().map(|g| g.fs_hz),
        }
    }

    /// Does an advertised device match this sensor?
    pub fn matches(&self, address: &str, name: Option<&str>) -> bool {
        if let Some(a) = &self.address {
            return a.eq_ignore_ascii_case(address);
        }
        match (&self.name, name) {
            (Some(p), Some(n)) => glob::Pattern::new(p).is_ok_and(|p| p.matches(n)),
            _ => false,
        }
    }

    /// How the sensor is looked for, for messages (`address A0:…` / `name "Polar H10 *"`).
    pub fn target(&self) -> String {
        match (&self.address, &self.name) {
            (Some(a), _) => format!("address {a}"),
            (_, Some(n)) => format!("name {n:?}"),
            _ => "nothing".into(),
        }
    }
}

/// A BLE sensor as a gateway [`Source`].
pub struct BleSource {
    sensor: String,
    cfg: BleConfig,
}

impl BleSource {
    pub fn new(sensor: &str, cfg: BleConfig) -> Self {
        Self {
            sensor: sensor.to_string(),
            cfg,
        }
    }
}

impl Source for BleSource {
    fn sensor_id(&self) -> &str {
        &self.sensor
    }

    fn run(
        self: Box<Self>,
        out: mpsc::Sender<SourceEvent>,
        stop: CancellationToken,
    ) -> SourceFuture {
        Box::pin(session::run(self.sensor, self.cfg, out, stop))
    }
}

/// Errors of the BLE layer that reach the user (`scan`, logs).
#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("cannot reach BlueZ over D-Bus: {0}. Is bluetoothd running (`systemctl status bluetooth`) and may this user use it (group `bluetooth`)? Tests set DBUS_SYSTEM_BUS_ADDRESS to a simulated BlueZ.")]
    NoBluez(String),
    #[error("no Bluetooth adapter found. Check `bluetoothctl list` / `rfkill list`; on a Raspberry Pi enable the radio with `rfkill unblock bluetooth`.")]
    NoAdapter,
    #[error("adapter {wanted:?} not found (available: {available}); fix `adapter` of this sensor or leave it out for the first one.")]
    AdapterNotFound { wanted: String, available: String },
    #[error("Bluetooth: {0}")]
    Btle(#[from] btleplug::Error),
}

impl BleError {
    /// The machine cannot do BLE at all (no BlueZ, no adapter, not the configured one), as
    /// opposed to this strap not answering: retrying does not mend it for long (see
    /// `session::SETUP_ATTEMPTS`).
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            Self::NoBluez(_) | Self::NoAdapter | Self::AdapterNotFound { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_src: &str) -> Result<BleConfig, String> {
        let c: BleConfig = toml::from_str(toml_src).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn config_defaults_and_checks() {
        let c = cfg("profile = \"polar_pmd\"\nname = \"Polar H10 *\"").unwrap();
        assert_eq!(
            (
                c.connect_timeout_s,
                c.start_timeout_s,
                c.start_attempts,
                c.watchdog_s
            ),
            (30.0, 35.0, 3, 5.0)
        );
        assert_eq!(c.ecg_fs_hz(), Some(130.0));
        assert!(c.matches("A0:9E:1A:00:00:01", Some("Polar H10 1A2B3C4D")));
        assert!(!c.matches("A0:9E:1A:00:00:01", Some("Polar OH1 1A2B3C4D")));
        assert!(!c.matches("A0:9E:1A:00:00:01", None));
        let a = cfg("profile = \"heart_rate\"\naddress = \"a0:9e:1a:12:34:56\"").unwrap();
        assert!(a.matches("A0:9E:1A:12:34:56", None));
        assert_eq!(a.ecg_fs_hz(), None);

        let err = |s: &str| cfg(s).unwrap_err();
        assert!(err("profile = \"polar_pmd\"").contains("exactly one of `address`"));
        assert!(err("profile = \"polar_pmd\"\naddress = \"A0:9E\"").contains("six hex pairs"));
        assert!(err("profile = \"polar_pmd\"\nname = \"[x\"").contains("not a valid pattern"));
        assert!(
            err("profile = \"polar_pmd\"\nname = \"x\"\nwatchdog_s = 0").contains("watchdog_s = 0")
        );
        assert!(
            err("profile = \"polar_pmd\"\nname = \"x\"\nstart_attempts = 0")
                .contains("start_attempts")
        );
        assert!(err("profile = \"gatt_ecg\"\nname = \"x\"").contains("needs a `gatt"));
        assert!(err("profile = \"polar\"\nname = \"x\"").contains("unknown variant"));
        assert!(
            err("profile = \"polar_pmd\"\nname = \"x\"\nwatchdog = 3").contains("unknown field")
        );
        let g = "profile = \"gatt_ecg\"\nname = \"ECG*\"\n[gatt]\nservice_uuid = \"6e400001-b5a3-f393-e0a9-e50e24dcca9e\"\ncharacteristic_uuid = \"2a37\"\nformat = \"i24be\"\nfs_hz = 250";
        let gc = cfg(g).unwrap();
        assert_eq!(gc.ecg_fs_hz(), Some(250.0));
        assert_eq!(
            parse_uuid("2a37").unwrap(),
            Uuid::from_u128(protocol::HEART_RATE_MEASUREMENT_UUID)
        );
        assert!(err(&g.replace("i24be", "i12")).contains("unknown variant"));
        assert!(err(&g.replace("2a37", "zz")).contains("gatt.characteristic_uuid"));
        assert!(err(&g.replace("250", "5")).contains("gatt.fs_hz = 5"));
        assert!(err(&g.replace("gatt_ecg", "polar_pmd")).contains("only used with"));
    }
}
