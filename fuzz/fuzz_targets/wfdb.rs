//! WFDB reader. The input is `<header text> NUL <signal bytes>`: the header goes to `100.hea`,
//! the rest to `100.dat` (what the seeds' signal lines name) and to `100.atr`, which the
//! annotation reader gets.
#![no_main]
use affectgate::source::file::{read_wfdb_annotations, wfdb};
use libfuzzer_sys::fuzz_target;

#[path = "../src/common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (hea, dat) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let hea_path = common::file("100.hea", hea);
    let dat_path = common::file("100.dat", dat);
    let atr_path = common::file("100.atr", dat);
    match wfdb::read(&hea_path, None) {
        Ok((rec, _stats)) => common::assert_recording(&rec),
        Err(e) => common::assert_names_file(&e),
    }
    // A `.dat` path is read through the `.hea` beside it.
    match wfdb::read(&dat_path, Some("v5")) {
        Ok((rec, _stats)) => common::assert_recording(&rec),
        Err(e) => common::assert_names_file(&e),
    }
    if let Err(e) = wfdb::list_signals(&hea_path) {
        common::assert_names_file(&e);
    }
    if let Err(e) = read_wfdb_annotations(&atr_path) {
        common::assert_names_file(&e);
    }
});
