//! Stored-window codec: `decode_record` on arbitrary bytes under the key (`h10`, start); a
//! record that decodes must encode again and that encoding must decode (what a re-write of
//! a window, e.g. adding a label, does).
#![no_main]
use affectgate::store::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

/// The key the seeds were encoded under (see `src/seed.rs`).
const SENSOR: &str = "h10";
const START_NS: i64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    match decode_record(SENSOR, START_NS, data) {
        Ok(rec) => {
            if let Ok(bytes) = encode_record(&rec) {
                if let Err(e) = decode_record(SENSOR, START_NS, &bytes) {
                    panic!("a re-encoded record does not decode: {e}");
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("{SENSOR}/{START_NS}")), "key not named: {msg}");
        }
    }
});
