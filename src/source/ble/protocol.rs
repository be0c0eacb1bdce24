//! Byte-level protocol of the Polar H10 over BLE: the PMD (Polar Measurement Data) control point
//! and ECG data frames, the standard Heart Rate Measurement (0x2A37), and the mapping of the
//! sensor's clock onto the gateway clock.
//!
//! This module owns *bytes and time*, nothing else: no btleplug, no I/O, no clock reads, so every
//! decoder is a pure function tested against golden vectors, every truncation and random input,
//! and the BLE simulator builds its notifications with the encoders here (one definition of the
//! wire format for both directions). The live BLE source writes the request bytes, feeds
//! indications and notifications to the parsers and turns a [`PmdFrame`] plus the
//! [`FrameTiming`] from [`PolarClock`] into a `source::Block`: `t0_ns = t0_unix_ns`, `fs_hz`,
//! `samples_uv = frame.samples_f32()`, `gap_before`.
//!
//! Facts come from `shared/REFERENCE.md` ("Polar H10 — PMD over BLE", "Heart Rate Measurement");
//! where it is silent the Polar BLE SDK's behaviour is followed and said so where it matters.
//! No decoder panics on any input: bad bytes become a [`ProtocolError`] saying what was received
//! and what was expected.

use std::collections::VecDeque;
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

fn measurement_name(t: u8) -> &'static str {
    match t & 0x3F {
        0 => "ECG",
        1 => "PPG",
        2 => "ACC",
        3 => "PPI",
        _ => "not ECG",
    }
}

fn u16_le(b: &[u8]) -> u16 {
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
fn check_head(
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

// ---- Generic GATT ECG (DIY boards): bare samples, format from the config.

/// Sample encoding of a generic GATT ECG characteristic: signed integers, 16 or 24 bits, either
/// byte order, packed back to back with no header (config `format = "i16le"` …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    I16le,
    I16be,
    I24le,
    I24be,
}

impl SampleFormat {
    /// Bytes per sample.
    pub fn width(self) -> usize {
        match self {
            Self::I16le | Self::I16be => 2,
            Self::I24le | Self::I24be => 3,
        }
    }

    /// Largest representable value (smallest is `-max - 1`).
    pub fn max(self) -> i32 {
        if self.width() == 2 {
            i16::MAX as i32
        } else {
            SAMPLE_MAX
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::I16le => "i16le",
            Self::I16be => "i16be",
            Self::I24le => "i24le",
            Self::I24be => "i24be",
        })
    }
}

/// Decode one generic notification into µV (`raw × scale_uv`), appended to `out`. A length
/// that is not a whole number of samples is an error (a torn packet is dropped whole: its
/// sample boundaries are unknown).
pub fn decode_samples(
    data: &[u8],
    format: SampleFormat,
    scale_uv: f32,
    out: &mut Vec<f32>,
) -> Result<usize, ProtocolError> {
    let w = format.width();
    if !data.len().is_multiple_of(w) {
        return Err(ProtocolError::RaggedGeneric {
            len: data.len(),
            format,
        });
    }
    out.reserve(data.len() / w);
    for b in data.chunks_exact(w) {
        let raw = match format {
            SampleFormat::I16le => i16::from_le_bytes([b[0], b[1]]) as i32,
            SampleFormat::I16be => i16::from_be_bytes([b[0], b[1]]) as i32,
            SampleFormat::I24le => i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8,
            SampleFormat::I24be => i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8,
        };
        out.push(raw as f32 * scale_uv);
    }
    Ok(data.len() / w)
}

/// Encode raw sample values (simulator, tests); values outside the format's range saturate.
pub fn encode_samples(raw: &[i32], format: SampleFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * format.width());
    for &v in raw {
        let v = v.clamp(-format.max() - 1, format.max());
        match format {
            SampleFormat::I16le => out.extend_from_slice(&(v as i16).to_le_bytes()),
            SampleFormat::I16be => out.extend_from_slice(&(v as i16).to_be_bytes()),
            SampleFormat::I24le => out.extend_from_slice(&v.to_le_bytes()[..3]),
            SampleFormat::I24be => out.extend_from_slice(&v.to_be_bytes()[1..]),
        }
    }
    out
}

// ---- Sensor clock → gateway clock.

/// A gap is flagged when the timestamp step differs from what the sample count explains by more
/// than this many sample periods…
const GAP_TOLERANCE_PERIODS: f64 = 1.5;
/// …plus this relative rate uncertainty per sample of the frame: wide (3 %) while the rate is
/// still nominal (the real rate is 128–131 Hz: long frames would false-alarm, and every false
/// gap restarts the estimate), tight once estimated.
const RATE_TOL_NOMINAL: f64 = 0.03;
const RATE_TOL_ESTIMATED: f64 = 0.002;
/// The rate is estimated over at most this much sensor time (and this many frames)…
const SPAN_MAX_NS: u64 = 120_000_000_000;
const SPAN_MAX_FRAMES: usize = 4096;
/// …and not before the span covers this much (nominal rate until then).
const SPAN_MIN_NS: u64 = 2_000_000_000;
/// Estimates further than this from nominal are implausible and ignored.
const FS_PLAUSIBLE_REL: f64 = 0.1;
/// On a gap, re-anchor when sensor and gateway clocks disagree by more than this.
const REANCHOR_NS: i128 = 2_000_000_000;

/// Timing of one frame on the gateway clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameTiming {
    /// Unix ns (gateway clock) of the frame's FIRST sample.
    pub t0_unix_ns: i64,
    /// Estimated from sensor timestamps; nominal until the span is long enough.
    pub fs_hz: f64,
    /// Samples are missing before this frame: first frame after connect, dropped frames,
    /// timestamps inconsistent with the sample count or going backwards.
    pub gap_before: bool,
    /// Receive time minus the mapped time of the last sample: BLE latency plus drift between the
    /// two clocks since the anchor (for logs and watchdogs).
    pub lag_ns: i64,
}

/// Maps sensor timestamps (ns since 2000-01-01, last sample of a frame) to Unix ns on the gateway
/// clock and estimates the true sampling rate.
///
/// * Absolute sensor time is never used (it resets when the strap shuts down). The first frame
///   after [`new`](Self::new)/[`reset`](Self::reset) anchors: its last sample is taken to be at
///   its receive time. After that, times come from the sensor clock alone, so consecutive frames
///   are contiguous — receive times jitter by tens of ms and would smear the signal.
/// * Rate = samples between the last samples of the oldest and newest frame of a sliding span
///   (≤ 120 s) / their timestamp difference; nominal until the span covers 2 s. It moves slowly,
///   far below the gateway's 0.1 % preprocessor-rebuild threshold.
/// * A gap restarts the span but keeps the estimate (same strap, same crystal). The mapping is
///   kept across a short dropout (the sensor clock is the better reference) and re-anchored when
///   the timestamp went backwards or the clocks disagree by more than 2 s — which also corrects
///   slow drift at the first gap after hours of streaming.
#[derive(Debug, Clone)]
pub struct PolarClock {
    nominal_fs_hz: f64,
    fs_hz: f64,
    estimated: bool,
    /// Unix ns = sensor ns + offset.
    offset_ns: i128,
    prev_ts: Option<u64>,
    next_index: u64,
    /// (sensor ts of a frame's last sample, running index of that sample).
    span: VecDeque<(u64, u64)>,
}

impl PolarClock {
    /// A clock for a stream of nominal rate `nominal_fs_hz` (ECG: [`ECG_NOMINAL_FS_HZ`]).
    pub fn new(nominal_fs_hz: f64) -> Self {
        Self {
            nominal_fs_hz,
            fs_hz: nominal_fs_hz,
            estimated: false,
            offset_ns: 0,
            prev_ts: None,
            next_index: 0,
            span: VecDeque::new(),
        }
    }

    /// After a reconnect: the next frame re-anchors and carries `gap_before`; the rate estimate
    /// is kept.
    pub fn reset(&mut self) {
        self.prev_ts = None;
        self.span.clear();
    }

    /// Current rate estimate.
    pub fn fs_hz(&self) -> f64 {
        self.fs_hz
    }

    /// The rate comes from timestamps (else it is still the nominal rate). Kept across
    /// [`reset`](Self::reset).
    pub fn is_estimated(&self) -> bool {
        self.estimated
    }

    /// Time one frame from its timestamp (= its last sample), sample count and gateway receive
    /// time. A frame without samples changes nothing (its timestamp belongs to no sample): it
    /// gets `t0 = rx`, no gap.
    pub fn frame(
        &mut self,
        last_sample_sensor_ns: u64,
        n_samples: usize,
        rx_unix_ns: i64,
    ) -> FrameTiming {
        let (ts, rx, n) = (
            i128::from(last_sample_sensor_ns),
            i128::from(rx_unix_ns),
            n_samples,
        );
        if n == 0 {
            return self.timing(rx, false, 0);
        }
        let gap_before = match self.prev_ts {
            None => {
                self.offset_ns = rx - ts;
                true
            }
            Some(prev) => {
                let period = 1e9 / self.fs_hz;
                let delta = (ts - i128::from(prev)) as f64;
                let rel = if self.estimated {
                    RATE_TOL_ESTIMATED
                } else {
                    RATE_TOL_NOMINAL
                };
                let n = n as f64;
                let tol = (GAP_TOLERANCE_PERIODS + n * rel) * period;
                let gap = delta <= 0.0 || (delta - n * period).abs() > tol;
                if gap && (delta <= 0.0 || (rx - ts - self.offset_ns).abs() > REANCHOR_NS) {
                    self.offset_ns = rx - ts;
                }
                gap
            }
        };
        self.update_rate(last_sample_sensor_ns, n as u64, gap_before);
        let last_unix = ts + self.offset_ns;
        let back = ((n - 1) as f64 * 1e9 / self.fs_hz).round() as i128;
        self.timing(last_unix - back, gap_before, rx - last_unix)
    }

    fn timing(&self, t0_unix_ns: i128, gap_before: bool, lag_ns: i128) -> FrameTiming {
        let clamp = |v: i128| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        FrameTiming {
            t0_unix_ns: clamp(t0_unix_ns),
            fs_hz: self.fs_hz,
            gap_before,
            lag_ns: clamp(lag_ns),
        }
    }

    fn update_rate(&mut self, ts: u64, n: u64, gap: bool) {
        if gap {
            self.span.clear();
            self.next_index = 0;
        }
        self.prev_ts = Some(ts);
        self.next_index += n;
        self.span.push_back((ts, self.next_index - 1));
        while self.span.len() > 2
            && (ts - self.span[0].0 > SPAN_MAX_NS || self.span.len() > SPAN_MAX_FRAMES)
        {
            self.span.pop_front();
        }
        // Timestamps strictly increase within a span (anything else is a gap that cleared it).
        let (t_old, i_old) = self.span[0];
        if ts - t_old >= SPAN_MIN_NS {
            let est = (self.next_index - 1 - i_old) as f64 * 1e9 / (ts - t_old) as f64;
            if (est / self.nominal_fs_hz - 1.0).abs() <= FS_PLAUSIBLE_REL {
                self.fs_hz = est;
                self.estimated = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic xorshift64 (no rand crate).
    struct Xs(u64);
    impl Xs {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// 0..=max_len random bytes.
        fn bytes(&mut self, max_len: u64) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let byte = |h| u8::from_str_radix(h, 16).unwrap();
        s.split_whitespace().map(byte).collect()
    }

    /// The error message of a failed decode.
    fn err<T: fmt::Debug>(r: Result<T, ProtocolError>) -> String {
        r.unwrap_err().to_string()
    }

    /// Every decoder on `b`: must not panic.
    fn decode_all(b: &[u8]) {
        let _ = parse_cp_response(b).map(|r| r.settings());
        let _ = (parse_features(b), parse_settings(b));
        let _ = (parse_pmd_frame(b), parse_heart_rate(b));
    }

    #[test]
    fn uuids_and_requests_match_reference() {
        assert_eq!(PMD_SERVICE_UUID >> 96, 0xFB00_5C80);
        assert_eq!(PMD_CONTROL_POINT_UUID, PMD_SERVICE_UUID + (1 << 96));
        assert_eq!(PMD_DATA_UUID, PMD_SERVICE_UUID + (2 << 96));
        let hrm = 0x2A37_0000_1000_8000_0080_5F9B_34FB;
        assert_eq!(HEART_RATE_MEASUREMENT_UUID, hrm);
        assert_eq!(HEART_RATE_SERVICE_UUID >> 96, 0x180D);
        assert_eq!(BATTERY_LEVEL_UUID >> 96, 0x2A19);
        assert_eq!(get_settings(MEASUREMENT_ECG), [0x01, 0x00]);
        let start = start_ecg(ECG_SAMPLE_RATE, ECG_RESOLUTION_BITS);
        assert_eq!(start.to_vec(), hex("02 00 00 01 82 00 01 01 0E 00"));
        assert_eq!(stop(MEASUREMENT_ECG), [0x03, 0x00]);
    }

    /// (bytes, status, is_ok); none carries parameters or "more".
    const GOLDEN_CP: [(&str, CpStatus, bool); 8] = [
        ("F0 02 00 00 00", CpStatus::Success, true),
        ("F0 02 00 00", CpStatus::Success, true),
        ("F0 02 00 06", CpStatus::AlreadyInState, true),
        ("F0 02 00 08", CpStatus::InvalidSampleRate, false),
        ("F0 01 05 02", CpStatus::InvalidMeasurementType, false),
        ("F0 02 00 0D 00 01", CpStatus::DeviceInCharger, false),
        ("F0 03 00 0C", CpStatus::InvalidState, false),
        ("F0 02 00 2A", CpStatus::Unknown(42), false),
    ];
    /// H10 answer to `01 00`: sample rate 130, resolution 14.
    const SETTINGS_ECG: &str = "F0 01 00 00 00 00 01 82 00 01 01 0E 00";
    /// Rates 25 50 100 200 | resolution 16 | ranges 2 4 8 | milliunit range 100000 | channels 3
    /// | factor 1.0f32.
    const SETTINGS_ACC: &str = "00 04 19 00 32 00 64 00 C8 00 01 01 10 00 02 03 02 00 04 00 08 00 \
                                03 01 A0 86 01 00 04 01 03 05 01 00 00 80 3F";

    #[test]
    fn golden_cp_responses() {
        for (bytes, status, ok) in GOLDEN_CP.map(|g| (hex(g.0), g.1, g.2)) {
            let r = parse_cp_response(&bytes).unwrap();
            assert_eq!((r.op_code, r.measurement_type), (bytes[1], bytes[2]));
            assert_eq!((r.status, r.is_ok(), r.more), (status, ok, false));
            assert!(r.parameters.is_empty());
            assert_eq!(r.into_result().is_ok(), ok);
        }
        let e = err(parse_cp_response(&hex("F0 02 00 08"))
            .unwrap()
            .into_result());
        let msg = "PMD control point: opcode 2 on measurement type 0 failed: ";
        assert_eq!(e, format!("{msg}invalid sample rate (8)"));
        for code in 0..=255u8 {
            assert_eq!(CpStatus::from_code(code).code(), code);
            assert_eq!(CpStatus::from_code(code).is_ok(), code == 0 || code == 6);
        }
        assert_eq!(
            CpStatus::from_code(13).to_string(),
            "device in charger (13)"
        );
        assert_eq!(CpStatus::Unknown(99).to_string(), "unknown status (99)");
        let r = parse_cp_response(&hex(SETTINGS_ECG)).unwrap();
        assert_eq!((r.op_code, r.status, r.more), (1, CpStatus::Success, false));
        let s = r.settings().unwrap();
        assert_eq!((s.sample_rates(), s.resolutions()), (vec![130], vec![14]));
        assert_eq!(encode_settings_response(0, &s), hex(SETTINGS_ECG));
        let more = parse_cp_response(&hex("F0 01 00 00 01 00 01 82 00"));
        assert_eq!(more.unwrap().parameters, hex("00 01 82 00"));
        let e = err(parse_cp_response(&hex("0F 05 00 00")));
        let msg = "PMD control-point response (F0, op, type, status): first byte 0x0F";
        assert_eq!(e, format!("{msg}, expected 0xF0"));
    }

    #[test]
    fn golden_settings_and_features() {
        let s = parse_settings(&hex(SETTINGS_ACC)).unwrap();
        assert_eq!(s.sample_rates(), vec![25, 50, 100, 200]);
        assert_eq!(s.resolutions(), vec![16]);
        assert_eq!(s.values(SETTING_RANGE), vec![2, 4, 8]);
        assert_eq!(s.values(SETTING_RANGE_MILLIUNIT), vec![100_000]);
        assert_eq!(s.values(SETTING_CHANNELS), vec![3]);
        assert_eq!(s.values(SETTING_FACTOR), vec![1.0f32.to_bits()]);
        assert_eq!(s.unknown_setting, None);
        assert_eq!(encode_settings(&s), hex(SETTINGS_ACC));
        let u = parse_settings(&hex("00 01 82 00 42 07 FF 01 01 0E 00")).unwrap();
        assert_eq!((u.sample_rates(), u.resolutions()), (vec![130], vec![]));
        assert_eq!(u.unknown_setting, Some(0x42));
        let security = format!("06 01 {} 00 01 82 00", "AA ".repeat(16));
        let sec = parse_settings(&hex(&security)).unwrap();
        assert_eq!(sec.entries, vec![(SETTING_SAMPLE_RATE, vec![130])]);
        let e = err(parse_settings(&hex("00 02 82 00 7D")));
        let msg = "PMD settings: setting type 0 declares 2 values of 2 bytes";
        assert_eq!(e, format!("{msg} but only 3 bytes follow"));
        let e = err(parse_settings(&hex("00 01 82 00 01")));
        let msg = "PMD setting header (type, count): 1 bytes received";
        assert_eq!(e, format!("{msg}, at least 2 expected"));
        let f = parse_features(&hex("0F 05 00")).unwrap();
        assert!(f.supports(MEASUREMENT_ECG) && f.supports(MEASUREMENT_ACC));
        assert!(!f.supports(1) && !f.supports(3) && !f.supports(200));
        assert_eq!(parse_features(&hex("0F 00 02")).unwrap().bitmask, 0x200);
        assert_eq!(encode_features(f), hex("0F 05 00"));
        let e = err(parse_features(&hex("F0 05")));
        assert_eq!(
            e,
            "PMD feature read (0F, bitmask): first byte 0xF0, expected 0x0F"
        );
    }

    /// ts 0x0102030405060708; samples -1, -8388608 (0x800000), 8388607 (0x7FFFFF), 1000, -1000, 0.
    const ECG_FRAME: &str =
        "00 08 07 06 05 04 03 02 01 00 FF FF FF 00 00 80 FF FF 7F E8 03 00 18 FC FF 00 00 00";

    #[test]
    fn golden_ecg_frames() {
        let f = parse_pmd_frame(&hex(ECG_FRAME)).unwrap();
        assert_eq!((f.measurement_type, f.frame_type), (0, 0));
        assert_eq!(f.sensor_ts_ns, 0x0102_0304_0506_0708);
        let uv = [-1, -8_388_608, 8_388_607, 1000, -1000, 0];
        assert_eq!(f.samples_uv, uv);
        assert_eq!(f.samples_f32(), uv.map(|s| s as f32));
        assert_eq!(encode_pmd_ecg_frame(f.sensor_ts_ns, &uv), hex(ECG_FRAME));
        let saturated = encode_pmd_ecg_frame(0, &[9_000_000, -9_000_000]);
        assert_eq!(saturated[10..], hex("FF FF 7F 00 00 80"));
        let empty = parse_pmd_frame(&[0; 10]).unwrap();
        assert!(empty.samples_uv.is_empty());
        let frame =
            |tail: &str| parse_pmd_frame(&hex(&format!("00 08 07 06 05 04 03 02 01 {tail}")));
        let e = err(frame("00 01 02 03 04 05 06 07")); // frame type 0, 7 sample bytes
        let msg = "PMD frame: 7 sample bytes is not a multiple of 3";
        assert_eq!(e, format!("{msg} (frame type 0 carries 3-byte samples)"));
        let msg = "PMD frame: frame type byte 0x80 is not supported: compressed (delta-coded)";
        assert!(err(frame("80 01 02 03")).starts_with(msg));
        assert!(err(frame("80")).starts_with(msg));
        let msg = "PMD frame: frame type byte 0x01 is not supported: unknown ECG frame type";
        assert!(err(frame("01 01 02 03")).starts_with(msg));
        let e = err(parse_pmd_frame(&hex("02 08 07 06 05 04 03 02 01 01")));
        assert_eq!(
            e,
            "PMD frame: measurement type 2 (ACC) is not decoded, only ECG (0) is"
        );
        let e = err(parse_pmd_frame(&hex("00 08 07 06 05 04 03 02 01")));
        let msg = "PMD frame header (type, u64 timestamp, frame type): 9 bytes received";
        assert_eq!(e, format!("{msg}, at least 10 expected"));
    }

    /// (bytes, bpm, contact, energy kJ, RR raw in 1/1024 s).
    type GoldenHr = (Vec<u8>, u16, Option<bool>, Option<u16>, Vec<u16>);

    #[rustfmt::skip]
    fn golden_hr() -> Vec<GoldenHr> {
        let mut v: Vec<GoldenHr> = vec![
            (hex("00 48"),                   72,  None,        None,         vec![]),
            (hex("06 48"),                   72,  Some(true),  None,         vec![]),
            (hex("04 FF"),                   255, Some(false), None,         vec![]),
            (hex("01 2C 01"),                300, None,        None,         vec![]),
            (hex("10 3C 00 04"),             60,  None,        None,         vec![1024]),
            (hex("18 3C 34 12 00 04 00 02"), 60,  None,        Some(0x1234), vec![1024, 512]),
            (hex("1F 2C 01 FF FF 01 00"),    300, Some(true),  Some(65535),  vec![1]),
            (hex("08 3C 00 00 77"),          60,  None,        Some(0),      vec![]),
        ];
        for k in 0..=9u16 {
            // 16-bit HR 0x0102 = 258, contact supported but lost, k RR values 0x0300 + i.
            let rr: Vec<u16> = (0..k).map(|i| 0x0300 + i).collect();
            let bytes = [hex("15 02 01"), rr.iter().flat_map(|r| r.to_le_bytes()).collect()];
            v.push((bytes.concat(), 258, Some(false), None, rr));
        }
        v
    }

    #[test]
    fn golden_heart_rate() {
        for (bytes, bpm, contact, energy, rr) in golden_hr() {
            let h = parse_heart_rate(&bytes).unwrap();
            let rr_ms: Vec<f32> = rr.iter().map(|&r| r as f32 * 1000.0 / 1024.0).collect();
            assert_eq!(
                h,
                HeartRate {
                    bpm,
                    contact,
                    energy_kj: energy,
                    rr_ms
                }
            );
        }
        let h = parse_heart_rate(&hex("10 3C 00 04 00 02")).unwrap();
        assert_eq!(h.rr_ms, vec![1000.0, 500.0]);
        let e = parse_heart_rate(&hex("10 3C 00 04 00"));
        assert_eq!(e, Err(ProtocolError::RaggedRr { len: 3 }));
        let msg = "heart rate measurement (flags, HR, energy as flagged): 4 bytes received";
        let e = err(parse_heart_rate(&hex("09 3C 00 34")));
        assert_eq!(e, format!("{msg}, at least 5 expected"));
        assert!(parse_heart_rate(&[]).is_err() && parse_heart_rate(&[0x01, 0x2C]).is_err());
        let rr_ms = vec![1000.0];
        let h = HeartRate {
            bpm: 72,
            contact: Some(true),
            energy_kj: None,
            rr_ms,
        };
        assert_eq!(encode_heart_rate(&h, false), hex("16 48 00 04"));
        assert_eq!(encode_heart_rate(&h, true), hex("17 48 00 00 04"));
    }

    #[test]
    fn every_truncation_of_every_golden_vector_is_handled() {
        let mut goldens: Vec<Vec<u8>> = GOLDEN_CP.iter().map(|g| hex(g.0)).collect();
        goldens.extend(golden_hr().into_iter().map(|g| g.0));
        goldens.extend([SETTINGS_ECG, SETTINGS_ACC, ECG_FRAME, "0F 05 00"].map(hex));
        for g in &goldens {
            for p in (0..g.len()).map(|len| &g[..len]) {
                decode_all(p);
                let n = p.len();
                assert_eq!(parse_cp_response(p).is_ok(), n >= 4 && p[0] == 0xF0);
                let frame_ok = n >= 10 && p[0] == 0 && p[9] == 0 && (n - 10) % 3 == 0;
                assert_eq!(parse_pmd_frame(p).is_ok(), frame_ok);
                assert_eq!(parse_features(p).is_ok(), n >= 2 && p[0] == 0x0F);
                if let Ok(h) = parse_heart_rate(p) {
                    assert!(h.rr_ms.len() * 2 < n);
                }
            }
        }
        let acc = hex(SETTINGS_ACC);
        for len in 0..acc.len() {
            let boundary = [0, 10, 14, 22, 28, 31].contains(&len);
            assert_eq!(parse_settings(&acc[..len]).is_ok(), boundary, "len {len}");
        }
        let hr = hex("1F 2C 01 FF FF 01 00");
        for len in [0, 1, 2, 3, 4, 6] {
            assert!(parse_heart_rate(&hr[..len]).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = Xs(0x9E37_79B9_7F4A_7C15);
        for i in 0..8000 {
            let mut b = x.bytes(48);
            match (i % 4, b.len()) {
                (1, 1..) => b[0] = CP_RESPONSE, // reach the settings TLV of a response
                (2, 10..) => (b[0], b[9]) = (0, 0), // reach the ECG sample payload
                (3, 1..) => b[0] &= 0x1F,       // valid-looking HR flags / setting types
                _ => {}
            }
            decode_all(&b);
        }
    }

    #[test]
    fn ecg_frame_round_trip() {
        let mut x = Xs(7);
        for _ in 0..3000 {
            let n = x.below(80);
            let samples: Vec<i32> = (0..n)
                .map(|_| x.below(1 << 24) as i32 + SAMPLE_MIN)
                .collect();
            let ts = x.next();
            let bytes = encode_pmd_ecg_frame(ts, &samples);
            assert_eq!(bytes.len() as u64, 10 + 3 * n);
            let f = parse_pmd_frame(&bytes).unwrap();
            assert_eq!((f.sensor_ts_ns, f.samples_uv), (ts, samples));
        }
    }

    #[test]
    fn heart_rate_round_trip() {
        let mut x = Xs(11);
        for _ in 0..3000 {
            let sixteen = x.below(2) == 0;
            let bpm = x.below(if sixteen { 65536 } else { 256 }) as u16;
            let contact = [None, Some(false), Some(true)][x.below(3) as usize];
            let energy_kj = (x.below(2) == 0).then(|| x.below(65536) as u16);
            let rr = (0..x.below(10)).map(|_| x.below(65536) as f32 * 1000.0 / 1024.0);
            let h = HeartRate {
                bpm,
                contact,
                energy_kj,
                rr_ms: rr.collect(),
            };
            let bytes = encode_heart_rate(&h, sixteen);
            assert_eq!(bytes[0] & 1 == 1, sixteen);
            assert_eq!(parse_heart_rate(&bytes).unwrap(), h);
        }
    }

    #[test]
    fn control_point_and_settings_round_trip() {
        let mut x = Xs(13);
        for _ in 0..3000 {
            let status = CpStatus::from_code([0, 0, 6, x.below(20) as u8][x.below(4) as usize]);
            let ok = status == CpStatus::Success;
            let (op_code, measurement_type) = (x.below(4) as u8, x.below(16) as u8);
            let (more, parameters) = (ok && x.below(2) == 0, if ok { x.bytes(20) } else { vec![] });
            let r = CpResponse {
                op_code,
                measurement_type,
                status,
                more,
                parameters,
            };
            assert_eq!(parse_cp_response(&encode_cp_response(&r)).unwrap(), r);

            let mut s = PmdSettings::default();
            for _ in 0..x.below(5) {
                let ty = x.below(6) as u8; // every known type except security
                let bits = 8 * setting_size(ty).unwrap() as u32;
                let vals = (0..x.below(5)).map(|_| (x.next() as u32) >> (32 - bits));
                s.entries.push((ty, vals.collect()));
            }
            s.unknown_setting = (x.below(4) == 0).then(|| 7 + x.below(249) as u8);
            let resp = parse_cp_response(&encode_settings_response(0, &s)).unwrap();
            assert_eq!(resp.settings().unwrap(), s);
        }
        let entries = vec![(SETTING_SAMPLE_RATE, (0..600).collect())];
        let many = parse_settings(&encode_settings(&PmdSettings {
            entries,
            unknown_setting: None,
        }));
        assert_eq!(many.unwrap().sample_rates(), (0..600).collect::<Vec<u16>>());
    }

    /// A sensor at `fs` Hz sending `n`-sample frames with ±100 µs timestamp jitter, received
    /// 20–80 ms later. Returns (sensor ts of the last sample, rx Unix ns) of frame `k`.
    fn sim(fs: f64, n: u64, k: u64, x: &mut Xs) -> (u64, i64) {
        let t_last_ns = (((k + 1) * n - 1) as f64 / fs * 1e9) as i64;
        let ts = 600_000_000_000_000_000 + t_last_ns + x.below(200_001) as i64 - 100_000;
        let rx = 1_700_000_000_000_000_000 + t_last_ns + 20_000_000 + x.below(60_000_000) as i64;
        (ts as u64, rx)
    }

    #[test]
    fn clock_estimates_rate_and_keeps_frames_contiguous() {
        let (mut x, mut c) = (Xs(17), PolarClock::new(ECG_NOMINAL_FS_HZ));
        let mut prev: Option<FrameTiming> = None;
        for k in 0..(65.0 * 130.16 / 73.0) as u64 {
            let (ts, rx) = sim(130.16, 73, k, &mut x);
            let t = c.frame(ts, 73, rx);
            assert_eq!(t.gap_before, k == 0, "frame {k}");
            if let Some(p) = prev {
                let step_err = (t.t0_unix_ns - p.t0_unix_ns) as f64 - 73.0 * 1e9 / t.fs_hz;
                assert!(step_err.abs() < 1e6, "{k}: {t:?} after {p:?}");
            }
            assert!(t.lag_ns.abs() < 100_000_000, "{t:?}");
            prev = Some(t);
        }
        assert!((c.fs_hz() - 130.16).abs() < 0.01, "fs {}", c.fs_hz());
    }

    #[test]
    fn clock_flags_dropped_frames_backwards_time_and_reconnects() {
        let (mut x, mut c) = (Xs(19), PolarClock::new(ECG_NOMINAL_FS_HZ));
        let mut t = vec![];
        for k in (0..200u64).filter(|&k| k != 120) {
            let (ts, rx) = sim(130.16, 73, k, &mut x);
            t.push((k, c.frame(ts, 73, rx)));
        }
        let gaps: Vec<u64> = t.iter().filter(|t| t.1.gap_before).map(|t| t.0).collect();
        assert_eq!(gaps, vec![0, 121]);
        // Short dropout: mapping kept, the new frame starts two frames after the previous one.
        let step = t[120].1.t0_unix_ns - t[119].1.t0_unix_ns;
        assert!((step as f64 - 146.0 * 1e9 / 130.16).abs() < 1e6, "{step}");
        // Backwards: gap, re-anchored on the receive time.
        let (fs, (ts, rx)) = (c.fs_hz(), sim(130.16, 73, 150, &mut x));
        let t = c.frame(ts, 73, rx + 5_000_000_000);
        assert!(t.gap_before && t.lag_ns == 0);
        let back = (72.0 * 1e9 / fs).round() as i64;
        assert_eq!(t.t0_unix_ns, rx + 5_000_000_000 - back);
        assert!(c.frame(ts, 73, rx).gap_before, "same timestamp again");
        // Sensor clock jumps a day forward while the gateway moved 0.6 s: gap and re-anchor.
        let t = c.frame(ts + 86_400_000_000_000, 73, rx + 600_000_000);
        assert!(t.gap_before && t.lag_ns == 0);
        // Reconnect: re-anchor and gap, the rate estimate is kept.
        c.reset();
        let t = c.frame(5, 73, 42_000_000_000);
        assert!(t.gap_before && t.lag_ns == 0 && t.fs_hz == fs && fs != ECG_NOMINAL_FS_HZ);
        // An empty frame changes nothing.
        assert_eq!(c.frame(9_999_999_999, 0, 7).t0_unix_ns, 7);
        let next = c.frame(5 + (73e9 / fs) as u64, 73, 42_600_000_000);
        assert!(!next.gap_before);
    }

    #[test]
    fn clock_tolerates_off_nominal_rates_and_long_frames() {
        for (fs, n) in [(128.0, 160), (131.0, 160), (130.1, 73), (128.5, 1)] {
            let (mut x, mut c) = (Xs(23), PolarClock::new(ECG_NOMINAL_FS_HZ));
            let frames = (90.0 * fs / n as f64) as u64;
            let gaps = (0..frames).filter(|&k| {
                let (ts, rx) = sim(fs, n, k, &mut x);
                c.frame(ts, n as usize, rx).gap_before
            });
            assert_eq!(gaps.count(), 1, "fs {fs} n {n}");
            let est = c.fs_hz();
            assert!((est - fs).abs() < 0.01, "fs {fs}: estimated {est}");
        }
        let (mut x, mut c) = (Xs(29), PolarClock::new(ECG_NOMINAL_FS_HZ));
        for _ in 0..3000 {
            let _ = c.frame(x.next(), x.below(300) as usize, x.next() as i64); // garbage: no panic
        }
    }

    #[test]
    fn golden_generic_samples() {
        let mut out = Vec::new();
        // -2, 258 in every layout.
        let cases = [
            (SampleFormat::I16le, "FE FF 02 01"),
            (SampleFormat::I16be, "FF FE 01 02"),
            (SampleFormat::I24le, "FE FF FF 02 01 00"),
            (SampleFormat::I24be, "FF FF FE 00 01 02"),
        ];
        for (fmt, bytes) in cases {
            out.clear();
            assert_eq!(decode_samples(&hex(bytes), fmt, 0.5, &mut out), Ok(2));
            assert_eq!(out, vec![-1.0, 129.0], "{fmt}");
            assert_eq!(encode_samples(&[-2, 258], fmt), hex(bytes));
        }
        // Extremes and saturation.
        assert_eq!(
            encode_samples(&[1 << 20], SampleFormat::I16le),
            hex("FF 7F")
        );
        assert_eq!(
            encode_samples(&[-(1 << 30)], SampleFormat::I24be),
            hex("80 00 00")
        );
        out.clear();
        decode_samples(&hex("00 00 80"), SampleFormat::I24le, 1.0, &mut out).unwrap();
        assert_eq!(out, vec![SAMPLE_MIN as f32]);
        // A torn packet is an error naming the format; nothing is appended.
        out.clear();
        assert_eq!(
            err(decode_samples(
                &hex("01 02 03 04 05"),
                SampleFormat::I24le,
                1.0,
                &mut out
            )),
            "generic ECG notification: 5 bytes is not a whole number of i24le samples"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn generic_samples_round_trip() {
        let mut x = Xs(23);
        let formats = [
            SampleFormat::I16le,
            SampleFormat::I16be,
            SampleFormat::I24le,
            SampleFormat::I24be,
        ];
        let mut out = Vec::new();
        for i in 0..4000 {
            let fmt = formats[i % 4];
            let span = 2 * (fmt.max() as u64 + 1);
            let raw: Vec<i32> = (0..x.below(60))
                .map(|_| (x.below(span) as i64 - (fmt.max() as i64 + 1)) as i32)
                .collect();
            let bytes = encode_samples(&raw, fmt);
            out.clear();
            assert_eq!(decode_samples(&bytes, fmt, 1.0, &mut out), Ok(raw.len()));
            let back: Vec<i32> = out.iter().map(|&v| v as i32).collect();
            assert_eq!(back, raw, "{fmt}");
            // Random bytes: a whole number of samples decodes, anything else is an error.
            let junk = x.bytes(40);
            out.clear();
            assert_eq!(
                decode_samples(&junk, fmt, 1.0, &mut out).is_ok(),
                junk.len().is_multiple_of(fmt.width())
            );
        }
    }
}
