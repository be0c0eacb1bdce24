//! Golden vectors, truncations and random input for every decoder; encoders round-trip.

use super::*;

/// Seeded random input for the fuzz-style tests (the crate's one generator).
struct Xs(rand::rngs::StdRng);
fn xs(seed: u64) -> Xs {
    Xs(crate::rng::seeded(seed))
}
impl Xs {
    fn next(&mut self) -> u64 {
        rand::Rng::random(&mut self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n)
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
    let frame = |tail: &str| parse_pmd_frame(&hex(&format!("00 08 07 06 05 04 03 02 01 {tail}")));
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
    let mut x = xs(0x9E37_79B9_7F4A_7C15);
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
    let mut x = xs(7);
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
    let mut x = xs(11);
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
    let mut x = xs(13);
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
    let (mut x, mut c) = (xs(17), PolarClock::new(ECG_NOMINAL_FS_HZ));
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
    let (mut x, mut c) = (xs(19), PolarClock::new(ECG_NOMINAL_FS_HZ));
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
        let (mut x, mut c) = (xs(23), PolarClock::new(ECG_NOMINAL_FS_HZ));
        let frames = (90.0 * fs / n as f64) as u64;
        let gaps = (0..frames).filter(|&k| {
            let (ts, rx) = sim(fs, n, k, &mut x);
            c.frame(ts, n as usize, rx).gap_before
        });
        assert_eq!(gaps.count(), 1, "fs {fs} n {n}");
        let est = c.fs_hz();
        assert!((est - fs).abs() < 0.01, "fs {fs}: estimated {est}");
    }
    let (mut x, mut c) = (xs(29), PolarClock::new(ECG_NOMINAL_FS_HZ));
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
    let mut x = xs(23);
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
