//! Gateway config: `Config::parse` (TOML + cross-field validation) and `resolve_paths`.
#![no_main]
use std::path::Path;

use affectgate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/affectgate/fuzz.toml");
    match Config::parse(text, path) {
        Ok(mut cfg) => cfg.resolve_paths(Path::new("/etc/affectgate")),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("fuzz.toml"), "error does not name the file: {msg}");
        }
    }
});
