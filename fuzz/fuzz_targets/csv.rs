//! CSV reader (Polar logger export and `time,ecg` files) on the input written to `x.csv`.
#![no_main]
use affectgate::source::file::csv;
use libfuzzer_sys::fuzz_target;

#[path = "../src/common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::file("x.csv", data);
    match csv::read(&path, None) {
        Ok(rec) => common::assert_recording(&rec),
        Err(e) => common::assert_names_file(&e),
    }
});
