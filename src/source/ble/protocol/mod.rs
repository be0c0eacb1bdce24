//! Byte-level protocol of the Polar H10 over BLE: the PMD (Polar Measurement Data) control point
//! and ECG data frames, the standard Heart Rate Measurement (0x2A37), and the mapping of the
//! sensor's clock onto the gateway clock.
//!
//! This module owns *bytes and time*, nothing else: no btleplug, no I/O, no clock reads, so every
//! decoder is a pure function tested against golden vectors, every truncation and random input.
//! The encoders of sensor-side messages exist only for those tests (`cfg(test)`): the BLE
//! simulator (`tests/ble_sim`) speaks the wire format independently, so a shared
//! misunderstanding cannot hide. The live BLE source writes the request bytes, feeds
//! indications and notifications to the parsers and turns a [`PmdFrame`] plus the
//! [`FrameTiming`] from [`PolarClock`] into a `source::Block`: `t0_ns = t0_unix_ns`, `fs_hz`,
//! `samples_uv = frame.samples_f32()`, `gap_before`.
//!
//! Facts come from `shared/REFERENCE.md` ("Polar H10 — PMD over BLE", "Heart Rate Measurement");
//! where it is silent the Polar BLE SDK's behaviour is followed and said so where it matters.
//! No decoder panics on any input: bad bytes become a [`ProtocolError`] saying what was received
//! and what was expected.

use std::fmt;

/// A 16-bit SIG UUID over the Bluetooth base UUID `0000xxxx-0000-1000-8000-00805F9B34FB`
/// (`u128`, ready for `Uuid::from_u128`).
pub const fn sig_uuid(short: u16) -> u128 {
    ((short as u128) << 96) | 0x0000_0000_0000_1000_8000_0080_5F9B_34FB
}

/// PMD service `FB005C80-02E7-F387-1CAD-8ACD2D8DF0C8`.
pub const PMD_SERVICE_UUID: u128 = 0xFB00_5C80_02E7_F387_1CAD_8ACD_2D8D_F0C8;
/// PMD control point `FB005C81-…` (read, write, indicate).
pub const PMD_CONTROL_POINT_UUID: u128 = 0xFB00_5C81_02E7_F387_1CAD_8ACD_2D8D_F0C8;
/// PMD data `FB005C82-…` (notify).
pub const PMD_DATA_UUID: u128 = 0xFB00_5C82_02E7_F387_1CAD_8ACD_2D8D_F0C8;
pub const HEART_RATE_SERVICE_UUID: u128 = sig_uuid(0x180D);
/// Heart Rate Measurement: the fallback when old firmware has no PMD service.
pub const HEART_RATE_MEASUREMENT_UUID: u128 = sig_uuid(0x2A37);
pub const BATTERY_LEVEL_UUID: u128 = sig_uuid(0x2A19);

pub const MEASUREMENT_ECG: u8 = 0;
/// Named only (bit 2 of the feature read); this gateway decodes ECG.
pub const MEASUREMENT_ACC: u8 = 2;

pub const OP_GET_SETTINGS: u8 = 0x01;
pub const OP_START: u8 = 0x02;
pub const OP_STOP: u8 = 0x03;
/// First byte of every control-point response indication.
pub const CP_RESPONSE: u8 = 0xF0;
/// First byte of the feature bitmap returned by a *read* of the control point.
pub const CP_FEATURES: u8 = 0x0F;

/// Setting types of the settings TLV (`type, count, count × value LE`).
pub const SETTING_SAMPLE_RATE: u8 = 0;
pub const SETTING_RESOLUTION: u8 = 1;
pub const SETTING_RANGE: u8 = 2;
pub const SETTING_RANGE_MILLIUNIT: u8 = 3;
pub const SETTING_CHANNELS: u8 = 4;
/// Values are IEEE-754 `f32` bit patterns.
pub const SETTING_FACTOR: u8 = 5;
pub const SETTING_SECURITY: u8 = 6;

/// H10 ECG request: 130 Hz, 14 bits.
pub const ECG_SAMPLE_RATE: u16 = 130;
pub const ECG_RESOLUTION_BITS: u16 = 14;
/// Nominal ECG rate; the real one is 128–131 Hz and is estimated by [`PolarClock`].
pub const ECG_NOMINAL_FS_HZ: f64 = 130.0;
/// Sensor epoch 2000-01-01T00:00:00Z in Unix ns — for logs only: absolute sensor time is not
/// trusted (it resets to 2019-01-01 when the strap shuts down), see [`PolarClock`].
pub const POLAR_EPOCH_UNIX_NS: i64 = 946_684_800_000_000_000;

/// Data frame header: measurement type, u64 LE timestamp, frame type.
pub const PMD_FRAME_HEADER_LEN: usize = 10;
/// Frame-type bit 7: compressed (delta-coded) frame; bits 0–6 are the type.
pub const FRAME_TYPE_COMPRESSED: u8 = 0x80;
/// Uncompressed ECG frame type 0: 3-byte little-endian signed µV samples.
pub const ECG_FRAME_TYPE_0: u8 = 0;
/// Range of a 24-bit signed sample.
pub const SAMPLE_MIN: i32 = -0x80_0000;
pub const SAMPLE_MAX: i32 = 0x7F_FFFF;

pub(super) fn measurement_name(t: u8) -> &'static str {
    match t & 0x3F {
        0 => "ECG",
        1 => "PPG",
        2 => "ACC",
        3 => "PPI",
        _ => "not ECG",
    }
}

pub(super) fn u16_le(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// Why bytes from the sensor could not be decoded (or a command was refused).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{what}: {len} bytes received, at least {need} expected")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{what}: first byte 0x{got:02X}, expected 0x{expected:02X}")]
    UnexpectedLeadByte {
        what: &'static str,
        got: u8,
        expected: u8,
    },
    #[error("PMD frame: {len} sample bytes is not a multiple of 3 (frame type 0 carries 3-byte samples)")]
    RaggedSamples { len: usize },
    #[error("PMD frame: measurement type {measurement_type} ({}) is not decoded, only ECG (0) is", measurement_name(*.measurement_type))]
    UnsupportedMeasurement { measurement_type: u8 },
    #[error("PMD frame: frame type byte 0x{frame_type:02X} is not supported: {reason}")]
    UnsupportedFrame {
        frame_type: u8,
        reason: &'static str,
    },
    #[error("PMD settings: setting type {setting_type} declares {count} values of {size} bytes but only {available} bytes follow")]
    SettingTruncated {
        setting_type: u8,
        count: u8,
        size: usize,
        available: usize,
    },
    #[error(
        "heart rate measurement: {len} RR bytes is not a multiple of 2 (RR intervals are u16 LE)"
    )]
    RaggedRr { len: usize },
    #[error("generic ECG notification: {len} bytes is not a whole number of {format} samples")]
    RaggedGeneric { len: usize, format: SampleFormat },
    #[error("PMD control point: opcode {op_code} on measurement type {measurement_type} failed: {status}")]
    CommandFailed {
        op_code: u8,
        measurement_type: u8,
        status: CpStatus,
    },
}

/// `data` holds at least `need` bytes and starts with `lead` (when given).
pub(super) fn check_head(
    data: &[u8],
    what: &'static str,
    need: usize,
    lead: Option<u8>,
) -> Result<(), ProtocolError> {
    if data.len() < need {
        return Err(ProtocolError::Truncated {
            what,
            len: data.len(),
            need,
        });
    }
    match lead {
        Some(expected) if data[0] != expected => Err(ProtocolError::UnexpectedLeadByte {
            what,
            got: data[0],
            expected,
        }),
        _ => Ok(()),
    }
}

// ---- Control-point requests. There is no "request features" command: the feature bitmap is a
// GATT *read* of the control point (see `parse_features`), not something written to it.

/// `01 <type>` (ECG: `01 00`).
pub fn get_settings(measurement: u8) -> [u8; 2] {
    [OP_GET_SETTINGS, measurement]
}

/// `02 00` + the settings TLV `00 01 <rate u16 LE> 01 01 <resolution u16 LE>`;
/// `start_ecg(130, 14)` = `02 00 00 01 82 00 01 01 0E 00`.
pub fn start_ecg(sample_rate: u16, resolution: u16) -> Vec<u8> {
    let rate = (SETTING_SAMPLE_RATE, vec![u32::from(sample_rate)]);
    let res = (SETTING_RESOLUTION, vec![u32::from(resolution)]);
    let settings = PmdSettings {
        entries: vec![rate, res],
        unknown_setting: None,
    };
    [vec![OP_START, MEASUREMENT_ECG], encode_settings(&settings)].concat()
}

/// `03 <type>` (ECG: `03 00`).
pub fn stop(measurement: u8) -> [u8; 2] {
    [OP_STOP, measurement]
}

// ---- Control-point responses.

/// Status byte of a control-point response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpStatus {
    Success,
    InvalidOpCode,
    InvalidMeasurementType,
    NotSupported,
    InvalidLength,
    InvalidParameter,
    /// Normal after a reconnect: the stream still runs. [`CpStatus::is_ok`] is true.
    AlreadyInState,
    InvalidResolution,
    InvalidSampleRate,
    InvalidRange,
    InvalidMtu,
    InvalidNumberOfChannels,
    InvalidState,
    DeviceInCharger,
    /// A code REFERENCE.md does not list: a failure.
    Unknown(u8),
}

/// Codes 0–13 in order, with their names.
const STATUS_TABLE: [(CpStatus, &str); 14] = [
    (CpStatus::Success, "success"),
    (CpStatus::InvalidOpCode, "invalid op code"),
    (CpStatus::InvalidMeasurementType, "invalid measurement type"),
    (CpStatus::NotSupported, "not supported"),
    (CpStatus::InvalidLength, "invalid length"),
    (CpStatus::InvalidParameter, "invalid parameter"),
    (CpStatus::AlreadyInState, "already in state"),
    (CpStatus::InvalidResolution, "invalid resolution"),
    (CpStatus::InvalidSampleRate, "invalid sample rate"),
    (CpStatus::InvalidRange, "invalid range"),
    (CpStatus::InvalidMtu, "invalid MTU"),
    (
        CpStatus::InvalidNumberOfChannels,
        "invalid number of channels",
    ),
    (CpStatus::InvalidState, "invalid state"),
    (CpStatus::DeviceInCharger, "device in charger"),
];

impl CpStatus {
    pub fn from_code(code: u8) -> Self {
        let entry = STATUS_TABLE.get(code as usize);
        entry.map_or(CpStatus::Unknown(code), |e| e.0)
    }

    pub fn code(self) -> u8 {
        match self {
            CpStatus::Unknown(c) => c,
            s => STATUS_TABLE.iter().position(|e| e.0 == s).unwrap_or(0) as u8,
        }
    }

    /// Success, or already-in-state (a reconnect found the stream still running).
    pub fn is_ok(self) -> bool {
        matches!(self, CpStatus::Success | CpStatus::AlreadyInState)
    }
}

impl fmt::Display for CpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entry = STATUS_TABLE.get(self.code() as usize);
        let name = entry.map_or("unknown status", |e| e.1);
        write!(f, "{name} ({})", self.code())
    }
}

/// A control-point response `F0 <op> <type> <status> [<more> <parameters…>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpResponse {
    pub op_code: u8,
    /// Measurement type echoed.
    pub measurement_type: u8,
    pub status: CpStatus,
    /// More response packets follow (multi-packet parameters).
    pub more: bool,
    /// Parameters (a settings TLV for get-settings); empty unless the status is `Success`.
    pub parameters: Vec<u8>,
}

impl CpResponse {
    /// Success or already-in-state.
    pub fn is_ok(&self) -> bool {
        self.status.is_ok()
    }

    /// `Ok(self)` when [`is_ok`](Self::is_ok), else [`ProtocolError::CommandFailed`].
    pub fn into_result(self) -> Result<Self, ProtocolError> {
        if self.is_ok() {
            return Ok(self);
        }
        let (op_code, measurement_type, status) =
            (self.op_code, self.measurement_type, self.status);
        Err(ProtocolError::CommandFailed {
            op_code,
            measurement_type,
            status,
        })
    }

    /// The parameters as a settings TLV (the answer to [`get_settings`]).
    pub fn settings(&self) -> Result<PmdSettings, ProtocolError> {
        parse_settings(&self.parameters)
    }
}

/// Parse a control-point response indication.
///
/// REFERENCE.md gives `F0 <op> <type> <status> …`; the byte after the status is the Polar SDK's
/// "more" flag and parameters follow it. As in the SDK, both are read only for `Success`: after
/// an error the tail has no defined meaning and is dropped.
pub fn parse_cp_response(data: &[u8]) -> Result<CpResponse, ProtocolError> {
    let what = "PMD control-point response (F0, op, type, status)";
    check_head(data, what, 4, Some(CP_RESPONSE))?;
    let status = CpStatus::from_code(data[3]);
    let success = status == CpStatus::Success;
    Ok(CpResponse {
        op_code: data[1],
        measurement_type: data[2],
        status,
        more: success && data.get(4).is_some_and(|&m| m != 0),
        parameters: if success {
            data.get(5..).unwrap_or_default().to_vec()
        } else {
            vec![]
        },
    })
}

/// Inverse of [`parse_cp_response`]: 4 header bytes, then for `Success` "more" and parameters.
#[cfg(test)]
pub fn encode_cp_response(r: &CpResponse) -> Vec<u8> {
    let mut out = vec![CP_RESPONSE, r.op_code, r.measurement_type, r.status.code()];
    if r.status == CpStatus::Success {
        out.push(u8::from(r.more));
        out.extend_from_slice(&r.parameters);
    }
    out
}

/// Settings of a measurement: the available ones (get-settings answer) or a selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PmdSettings {
    /// `(setting type, values)` in wire order. Factor values are `f32` bit patterns; security
    /// values (16 bytes, unused for ECG) are skipped.
    pub entries: Vec<(u8, Vec<u32>)>,
    /// Parsing stopped at this setting type: the TLV carries no length, so nothing after an
    /// unknown type can be read. What came before it is kept (sample rate and resolution come
    /// first) instead of failing the whole answer.
    pub unknown_setting: Option<u8>,
}

impl PmdSettings {
    /// All values of `setting_type`, in wire order.
    pub fn values(&self, setting_type: u8) -> Vec<u32> {
        let of_type = self.entries.iter().filter(|e| e.0 == setting_type);
        of_type.flat_map(|e| e.1.iter().copied()).collect()
    }

    pub fn sample_rates(&self) -> Vec<u16> {
        self.values(SETTING_SAMPLE_RATE)
            .into_iter()
            .map(|v| v as u16)
            .collect()
    }

    pub fn resolutions(&self) -> Vec<u16> {
        self.values(SETTING_RESOLUTION)
            .into_iter()
            .map(|v| v as u16)
            .collect()
    }
}

/// Value size of a setting type (Polar SDK `PmdSetting` sizes; REFERENCE.md confirms 2 bytes for
/// sample rate and resolution).
fn setting_size(setting_type: u8) -> Option<usize> {
    match setting_type {
        SETTING_SAMPLE_RATE | SETTING_RESOLUTION | SETTING_RANGE => Some(2),
        SETTING_RANGE_MILLIUNIT | SETTING_FACTOR => Some(4),
        SETTING_CHANNELS => Some(1),
        SETTING_SECURITY => Some(16),
        _ => None,
    }
}

/// Parse a settings TLV: repeated `type u8, count u8, count × value (LE)`.
pub fn parse_settings(params: &[u8]) -> Result<PmdSettings, ProtocolError> {
    let mut s = PmdSettings::default();
    let mut i = 0;
    while let Some(&setting_type) = params.get(i) {
        let Some(size) = setting_size(setting_type) else {
            s.unknown_setting = Some(setting_type);
            break;
        };
        check_head(&params[i..], "PMD setting header (type, count)", 2, None)?;
        let (count, start) = (params[i + 1], i + 2);
        i = start + count as usize * size;
        let Some(body) = params.get(start..i) else {
            let available = params.len() - start;
            return Err(ProtocolError::SettingTruncated {
                setting_type,
                count,
                size,
                available,
            });
        };
        if setting_type != SETTING_SECURITY {
            let le = |v: &[u8]| v.iter().rev().fold(0, |acc, &b| (acc << 8) | u32::from(b));
            let values = body.chunks_exact(size).map(le).collect();
            s.entries.push((setting_type, values));
        }
    }
    Ok(s)
}

/// Inverse of [`parse_settings`]. Entries longer than 255 values are split into several entries
/// of the same type; entries of unknown or security type are not written; an `unknown_setting`
/// is written as its bare type byte at the end.
pub fn encode_settings(s: &PmdSettings) -> Vec<u8> {
    let mut out = Vec::new();
    for (ty, values) in &s.entries {
        let Some(size) = setting_size(*ty).filter(|&size| size <= 4) else {
            continue;
        };
        // An empty entry is still written (count 0), so encode → parse is the identity.
        let empty = values.is_empty().then_some(&values[..]);
        for chunk in values.chunks(255).chain(empty) {
            out.extend([*ty, chunk.len() as u8]);
            for v in chunk {
                out.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
    }
    out.extend(s.unknown_setting);
    out
}

/// A successful get-settings response carrying `settings` (simulator, tests).
#[cfg(test)]
pub fn encode_settings_response(measurement: u8, settings: &PmdSettings) -> Vec<u8> {
    let mut out = vec![CP_RESPONSE, OP_GET_SETTINGS, measurement, 0, 0];
    out.extend(encode_settings(settings));
    out
}

/// Feature bitmap from a read of the control point: bit *n* set = measurement type *n* available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmdFeatures {
    pub bitmask: u64,
}

impl PmdFeatures {
    pub fn supports(self, measurement: u8) -> bool {
        measurement < 64 && self.bitmask & (1 << measurement) != 0
    }
}

/// Parse the control-point read `0F <bitmask…>` (bit 0 ECG, bit 2 ACC; an H10 answers
/// `0F 05 …`). Bitmask bytes past the eighth are ignored.
pub fn parse_features(data: &[u8]) -> Result<PmdFeatures, ProtocolError> {
    check_head(data, "PMD feature read (0F, bitmask)", 2, Some(CP_FEATURES))?;
    let bytes = data[1..].iter().take(8).enumerate();
    let bitmask = bytes.fold(0u64, |m, (k, &b)| m | (u64::from(b) << (8 * k)));
    Ok(PmdFeatures { bitmask })
}

/// A feature read `0F` + 2 bitmask bytes (simulator, tests).
#[cfg(test)]
pub fn encode_features(f: PmdFeatures) -> Vec<u8> {
    vec![CP_FEATURES, f.bitmask as u8, (f.bitmask >> 8) as u8]
}

// ---- Data frames.

/// A decoded PMD ECG data notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmdFrame {
    /// Byte 0 with the recording-type bits 6–7 masked off, as the Polar SDK does.
    pub measurement_type: u8,
    /// Sensor time of the LAST sample: ns since 2000-01-01 on the sensor clock.
    pub sensor_ts_ns: u64,
    /// The frame-type byte as received.
    pub frame_type: u8,
    pub samples_uv: Vec<i32>,
}

impl PmdFrame {
    /// Samples as `f32` µV for `source::Block` (24-bit values are exact in `f32`).
    pub fn samples_f32(&self) -> Vec<f32> {
        self.samples_uv.iter().map(|&s| s as f32).collect()
    }
}

/// Parse a PMD data notification. Only ECG frame type 0 is decoded (what an H10 sends); other
/// measurement types and compressed or unknown frame types are errors the caller may skip.
/// A frame without samples is well-formed and decodes to an empty list.
pub fn parse_pmd_frame(data: &[u8]) -> Result<PmdFrame, ProtocolError> {
    let what = "PMD frame header (type, u64 timestamp, frame type)";
    check_head(data, what, PMD_FRAME_HEADER_LEN, None)?;
    if data[0] & 0x3F != MEASUREMENT_ECG {
        return Err(ProtocolError::UnsupportedMeasurement {
            measurement_type: data[0],
        });
    }
    let frame_type = data[9];
    let reason = if frame_type & FRAME_TYPE_COMPRESSED != 0 {
        "compressed (delta-coded) frame, bit 7 set; only uncompressed frame type 0 is decoded"
    } else if frame_type != ECG_FRAME_TYPE_0 {
        "unknown ECG frame type; only frame type 0 (3-byte little-endian µV samples) is decoded"
    } else {
        ""
    };
    if !reason.is_empty() {
        return Err(ProtocolError::UnsupportedFrame { frame_type, reason });
    }
    let payload = &data[PMD_FRAME_HEADER_LEN..];
    if !payload.len().is_multiple_of(3) {
        return Err(ProtocolError::RaggedSamples { len: payload.len() });
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&data[1..9]);
    // Put the 3 bytes in the top of an i32, then shift back: arithmetic shift sign-extends.
    let sample = |b: &[u8]| i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
    Ok(PmdFrame {
        measurement_type: data[0] & 0x3F,
        sensor_ts_ns: u64::from_le_bytes(ts),
        frame_type,
        samples_uv: payload.chunks_exact(3).map(sample).collect(),
    })
}

/// Encode an ECG frame type 0 (simulator, tests). Samples outside the 24-bit range saturate, as
/// an ADC would, instead of wrapping.
#[cfg(test)]
pub fn encode_pmd_ecg_frame(sensor_ts_ns: u64, samples_uv: &[i32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PMD_FRAME_HEADER_LEN + 3 * samples_uv.len());
    out.push(MEASUREMENT_ECG);
    out.extend_from_slice(&sensor_ts_ns.to_le_bytes());
    out.push(ECG_FRAME_TYPE_0);
    for &s in samples_uv {
        out.extend_from_slice(&s.clamp(SAMPLE_MIN, SAMPLE_MAX).to_le_bytes()[..3]);
    }
    out
}

// ---- Heart Rate Measurement 0x2A37.

/// A decoded Heart Rate Measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartRate {
    pub bpm: u16,
    /// `None` when the sensor does not support contact detection (flag bit 2 clear).
    pub contact: Option<bool>,
    /// Energy expended in kJ, when present.
    pub energy_kj: Option<u16>,
    /// RR intervals in ms (wire unit 1/1024 s; every value is exact in `f32`).
    pub rr_ms: Vec<f32>,
}

const HR_U16: u8 = 0x01;
const HR_CONTACT: u8 = 0x02;
const HR_CONTACT_SUPPORTED: u8 = 0x04;
const HR_ENERGY: u8 = 0x08;
const HR_RR: u8 = 0x10;
/// One RR unit (1/1024 s) in ms.
const RR_MS: f32 = 1000.0 / 1024.0;

/// Parse a Heart Rate Measurement: flags, u8/u16 HR, energy (if flagged), RR intervals (if
/// flagged) to the end. Bytes after HR/energy when no RR is flagged are ignored (no field is
/// defined there); an odd number of RR bytes is an error.
pub fn parse_heart_rate(data: &[u8]) -> Result<HeartRate, ProtocolError> {
    check_head(data, "heart rate measurement (flags)", 1, None)?;
    let flags = data[0];
    let hr_len = if flags & HR_U16 != 0 { 2 } else { 1 };
    let energy_len = if flags & HR_ENERGY != 0 { 2 } else { 0 };
    let need = 1 + hr_len + energy_len;
    let what = "heart rate measurement (flags, HR, energy as flagged)";
    check_head(data, what, need, None)?;
    let rest = &data[need..];
    if flags & HR_RR != 0 && !rest.len().is_multiple_of(2) {
        return Err(ProtocolError::RaggedRr { len: rest.len() });
    }
    let rr = rest.chunks_exact(2).filter(|_| flags & HR_RR != 0);
    Ok(HeartRate {
        bpm: u16::from_le_bytes([data[1], if hr_len == 2 { data[2] } else { 0 }]),
        contact: (flags & HR_CONTACT_SUPPORTED != 0).then_some(flags & HR_CONTACT != 0),
        energy_kj: (energy_len == 2).then(|| u16_le(&data[1 + hr_len..])),
        rr_ms: rr.map(|b| f32::from(u16_le(b)) * RR_MS).collect(),
    })
}

/// Encode a Heart Rate Measurement (simulator, tests). A bpm above 255 is always sent as u16; RR
/// values are rounded to 1/1024 s and saturate at 0..=65535.
#[cfg(test)]
pub fn encode_heart_rate(hr: &HeartRate, sixteen_bit: bool) -> Vec<u8> {
    let sixteen = sixteen_bit || hr.bpm > 255;
    let contact = match hr.contact {
        Some(true) => HR_CONTACT_SUPPORTED | HR_CONTACT,
        Some(false) => HR_CONTACT_SUPPORTED,
        None => 0,
    };
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let energy = flag(hr.energy_kj.is_some(), HR_ENERGY);
    let mut out =
        vec![flag(sixteen, HR_U16) | contact | energy | flag(!hr.rr_ms.is_empty(), HR_RR)];
    out.extend_from_slice(&hr.bpm.to_le_bytes()[..if sixteen { 2 } else { 1 }]);
    out.extend(hr.energy_kj.iter().flat_map(|e| e.to_le_bytes()));
    for &ms in &hr.rr_ms {
        let raw = (f64::from(ms) * 1.024).round().clamp(0.0, 65535.0) as u16;
        out.extend_from_slice(&raw.to_le_bytes());
    }
    out
}

mod clock;
mod gatt;
#[cfg(test)]
mod tests;

pub use clock::*;
pub use gatt::*;
