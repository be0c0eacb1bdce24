//! Polar PMD and generic GATT ECG notifications. The input is a sequence of notifications,
//! each `<len u8><bytes>`; every one goes through the PMD data-frame parser (and, when it is
//! an ECG frame, through the sensor clock that times it), the control-point response,
//! settings and features parsers, and the generic-GATT sample decoder in all four formats.
#![no_main]
use affectgate::source::ble::protocol::{
    decode_samples, parse_cp_response, parse_features, parse_pmd_frame, parse_settings,
    PolarClock, SampleFormat,
};
use libfuzzer_sys::fuzz_target;

/// Arrival time of the first notification, ns since the Unix epoch.
const RX0_NS: i64 = 1_796_083_200_000_000_000;

fuzz_target!(|data: &[u8]| {
    let mut clock = PolarClock::new(130.0);
    let mut rest = data;
    let mut rx = RX0_NS;
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (msg, tail) = tail.split_at(n);
        rest = tail;
        // ~73 samples at 130 Hz apart, plus jitter from the message's length byte.
        rx += 560_000_000 + i64::from(len) * 1_000_000;
        if let Ok(frame) = parse_pmd_frame(msg) {
            let t = clock.frame(frame.sensor_ts_ns, frame.samples_uv.len(), rx);
            assert!(t.fs_hz.is_finite() && t.fs_hz > 0.0, "clock rate {}", t.fs_hz);
            let _ = frame.samples_f32();
        }
        if let Ok(r) = parse_cp_response(msg) {
            let _ = r.settings();
            let _ = r.into_result();
        }
        if let Ok(s) = parse_settings(msg) {
            let _ = (s.sample_rates(), s.resolutions());
        }
        let _ = parse_features(msg);
        for f in [
            SampleFormat::I16le,
            SampleFormat::I16be,
            SampleFormat::I24le,
            SampleFormat::I24be,
        ] {
            out.clear();
            let _ = decode_samples(msg, f, 1.0, &mut out);
        }
    }
});
