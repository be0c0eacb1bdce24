//! Heart Rate Measurement (GATT 0x2A37): `parse_heart_rate`.
#![no_main]
use affectgate::source::ble::protocol::parse_heart_rate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_heart_rate(data) {
        Ok(hr) => {
            assert!(hr.rr_ms.iter().all(|r| r.is_finite() && *r >= 0.0));
            let _ = format!("{hr:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
