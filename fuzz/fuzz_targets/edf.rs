//! EDF/EDF+ reader: `read` (auto ECG pick and an explicit label) and `list_signals` on the
//! input written to `x.edf`.
#![no_main]
use affectgate::source::file::edf;
use libfuzzer_sys::fuzz_target;

#[path = "../src/common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::file("x.edf", data);
    match edf::read(&path, None) {
        Ok(rec) => common::assert_recording(&rec),
        Err(e) => common::assert_names_file(&e),
    }
    match edf::read(&path, Some("ecg")) {
        Ok(rec) => common::assert_recording(&rec),
        Err(e) => common::assert_names_file(&e),
    }
    if let Err(e) = edf::list_signals(&path) {
        common::assert_names_file(&e);
    }
});
