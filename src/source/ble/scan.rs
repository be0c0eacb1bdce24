//! `affectgate scan`: which BLE devices are in range and which of them this gateway can read.
//!
//! Profiles are told from the *advertised* service UUIDs and name (no connection is made, so
//! scanning never disturbs a strap another gateway or phone is using): an H10 advertises the
//! Heart Rate service and its name "Polar H10 <id>"; whether it also lists the PMD UUID is not
//! guaranteed, so the name counts (old firmware without PMD then falls back to heart rate when
//! connected). A generic ECG board is recognised only when a configured `gatt_ecg` sensor
//! names its service.

use std::time::Duration;

use btleplug::api::{Central, Peripheral as _, ScanFilter};
use uuid::Uuid;

use super::protocol::{HEART_RATE_SERVICE_UUID, PMD_SERVICE_UUID};
use super::session::open_adapter;
use super::{parse_uuid, BleConfig, BleError, BleProfile};

/// One device seen during a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedDevice {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    /// Profiles this gateway can read from it, by advertised services.
    pub profiles: Vec<&'static str>,
    /// Configured sensors whose address / name pattern matches it.
    pub matches: Vec<String>,
}

/// Profiles offered by a device advertising `services` under `name` (generic services from the
/// config). An H10 need not put the 128-bit PMD UUID in its advertisement (there is little room
/// next to the Heart Rate UUID and the name), so the name "Polar H10 …" counts too.
pub fn profiles_of(name: Option<&str>, services: &[Uuid], generic: &[Uuid]) -> Vec<&'static str> {
    let mut out = Vec::new();
    if services.contains(&Uuid::from_u128(PMD_SERVICE_UUID))
        || name.is_some_and(|n| n.starts_with("Polar H10"))
    {
        out.push(BleProfile::PolarPmd.name());
    }
    if services.contains(&Uuid::from_u128(HEART_RATE_SERVICE_UUID)) {
        out.push(BleProfile::HeartRate.name());
    }
    if services.iter().any(|s| generic.contains(s)) {
        out.push(BleProfile::GattEcg.name());
    }
    out
}

/// Scan for `seconds` on `adapter` (default: the first). `sensors` (id, config) are the
/// configured BLE sensors, to mark matches and recognise generic services.
pub async fn scan(
    adapter: Option<&str>,
    seconds: f64,
    sensors: &[(String, BleConfig)],
    progress: impl Fn(f64),
) -> Result<Vec<ScannedDevice>, BleError> {
    let a = open_adapter(adapter).await?;
    a.start_scan(ScanFilter::default()).await?;
    let total = Duration::from_secs_f64(seconds.max(0.0));
    let start = tokio::time::Instant::now();
    while start.elapsed() < total {
        progress(start.elapsed().as_secs_f64() / total.as_secs_f64());
        tokio::time::sleep(Duration::from_millis(100).min(total)).await;
    }
    progress(1.0);
    let generic: Vec<Uuid> = sensors
        .iter()
        .filter_map(|(_, c)| c.gatt.as_ref())
        .filter_map(|g| parse_uuid(&g.service_uuid).ok())
        .collect();
    let mut out = Vec::new();
    for p in a.peripherals().await? {
        let props = p.properties().await?.unwrap_or_default();
        let name = props
            .local_name
            .clone()
            .or(props.advertisement_name.clone());
        let address = p.address().to_string();
        out.push(ScannedDevice {
            profiles: profiles_of(name.as_deref(), &props.services, &generic),
            matches: sensors
                .iter()
                .filter(|(_, c)| c.matches(&address, name.as_deref()))
                .map(|(id, _)| id.clone())
                .collect(),
            address,
            name,
            rssi: props.rssi,
        });
    }
    let _ = a.stop_scan().await;
    // Strongest first; devices without RSSI (cached, not heard now) last.
    out.sort_by_key(|d| {
        (
            d.rssi.is_none(),
            std::cmp::Reverse(d.rssi),
            d.address.clone(),
        )
    });
    Ok(out)
}

/// The scan as a table (what `affectgate scan` prints).
pub fn render(devices: &[ScannedDevice]) -> String {
    let mut s = format!(
        "{:<17}  {:>5}  {:<24}  {:<28}  {}\n",
        "ADDRESS", "RSSI", "NAME", "PROFILES", "CONFIGURED AS"
    );
    for d in devices {
        let rssi = d.rssi.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let profiles = if d.profiles.is_empty() {
            "-".to_string()
        } else {
            d.profiles.join(", ")
        };
        let matches = if d.matches.is_empty() {
            "-".to_string()
        } else {
            d.matches.join(", ")
        };
        s.push_str(&format!(
            "{:<17}  {:>5}  {:<24}  {:<28}  {}\n",
            d.address,
            rssi,
            d.name.as_deref().unwrap_or("(no name)"),
            profiles,
            matches
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_advertised_services() {
        let pmd = Uuid::from_u128(PMD_SERVICE_UUID);
        let hr = Uuid::from_u128(HEART_RATE_SERVICE_UUID);
        let diy = parse_uuid("6e400001-b5a3-f393-e0a9-e50e24dcca9e").unwrap();
        assert_eq!(
            profiles_of(None, &[hr, pmd], &[]),
            vec!["polar_pmd", "heart_rate"]
        );
        assert_eq!(profiles_of(None, &[hr], &[]), vec!["heart_rate"]);
        assert_eq!(
            profiles_of(Some("Polar H10 1A2B3C4D"), &[hr], &[]),
            vec!["polar_pmd", "heart_rate"]
        );
        assert_eq!(
            profiles_of(Some("Polar OH1 1A"), &[hr], &[]),
            vec!["heart_rate"]
        );
        assert_eq!(profiles_of(None, &[diy], &[]), Vec::<&str>::new());
        assert_eq!(profiles_of(None, &[diy], &[diy]), vec!["gatt_ecg"]);
        let table = render(&[ScannedDevice {
            address: "00:AA:BB:CC:DD:EE".into(),
            name: Some("Polar H10 1A2B3C4D".into()),
            rssi: Some(-58),
            profiles: vec!["polar_pmd", "heart_rate"],
            matches: vec!["chest".into()],
        }]);
        let row = table.lines().nth(1).unwrap();
        assert!(
            row.starts_with("00:AA:BB:CC:DD:EE    -58  Polar H10 1A2B3C4D"),
            "{row}"
        );
        assert!(row.contains("  polar_pmd, heart_rate  "), "{row}");
        assert!(row.ends_with("  chest"), "{row}");
    }
}

/// One Bluetooth adapter as BlueZ reports it (`org.bluez.Adapter1`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterState {
    /// `hci0`.
    pub name: String,
    pub address: String,
    pub powered: bool,
}

/// Every adapter BlueZ knows, read from its object manager on the system bus (or
/// `DBUS_SYSTEM_BUS_ADDRESS`). Blocking; errors say whether the bus, BlueZ or the permission
/// is missing.
pub fn adapters() -> Result<Vec<AdapterState>, BleError> {
    use dbus::arg::{PropMap, RefArg};
    use dbus::blocking::stdintf::org_freedesktop_dbus::ObjectManager;
    let conn = dbus::blocking::Connection::new_system()
        .map_err(|e| BleError::NoBluez(format!("the system D-Bus: {e}")))?;
    let proxy = conn.with_proxy("org.bluez", "/", Duration::from_secs(5));
    let objects = proxy.get_managed_objects().map_err(|e| {
        BleError::NoBluez(match e.name() {
            Some("org.freedesktop.DBus.Error.AccessDenied") => {
                format!("permission denied ({e}); run as a user in group `bluetooth`")
            }
            Some("org.freedesktop.DBus.Error.ServiceUnknown") => {
                "org.bluez is not on the system bus (bluetoothd is not running)".into()
            }
            _ => e.to_string(),
        })
    })?;
    let mut out = Vec::new();
    for (path, ifaces) in objects {
        let Some(props): Option<&PropMap> = ifaces.get("org.bluez.Adapter1") else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        let address = props
            .get("Address")
            .and_then(|v| v.0.as_str())
            .unwrap_or_default()
            .to_string();
        let powered = props
            .get("Powered")
            .and_then(|v| v.0.as_u64())
            .is_some_and(|p| p != 0);
        out.push(AdapterState {
            name,
            address,
            powered,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Bluetooth radios the kernel has switched off (`/sys/class/rfkill`): (name, hard) for each
/// blocked one — hard means a hardware switch, soft `rfkill unblock bluetooth`.
pub fn rfkill_blocked() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/rfkill") else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        if read("type").trim() != "bluetooth" {
            continue;
        }
        let (soft, hard) = (read("soft").trim() == "1", read("hard").trim() == "1");
        if soft || hard {
            out.push((read("name").trim().to_string(), hard));
        }
    }
    out
}
