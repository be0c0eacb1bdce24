//! Shared by the file-based targets: one scratch directory per fuzzer process, on tmpfs when
//! there is one (the readers take paths, so every input is written to a file first).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The scratch directory of this process (created on first use, removed by the OS's tmp
/// cleaning; a fuzzer exits through libFuzzer's `exit`, which runs no destructors).
#[allow(dead_code)]
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("affectgate-fuzz-")
            .tempdir_in(base)
            .expect("scratch directory for fuzz inputs")
            .keep()
    })
}

/// Write `bytes` to `name` in the scratch directory and return its path.
#[allow(dead_code)]
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("write fuzz input");
    p
}

/// A read error must name the file it is about (the scratch directory is in every path).
#[allow(dead_code)]
pub fn assert_names_file(err: &dyn std::fmt::Display) {
    let msg = err.to_string();
    let dir = scratch().display().to_string();
    assert!(msg.contains(&dir), "error does not name the file: {msg}");
}

/// What every reader promises a caller: a positive finite rate and finite samples.
#[allow(dead_code)]
pub fn assert_recording(rec: &affectgate::source::file::Recording) {
    assert!(
        rec.fs_hz.is_finite() && rec.fs_hz > 0.0,
        "sample rate {} from {}",
        rec.fs_hz,
        rec.path.display()
    );
    assert!(
        rec.samples_uv.iter().all(|x| x.is_finite()),
        "non-finite sample from {}",
        rec.path.display()
    );
    if let Some(ts) = &rec.timestamps_ns {
        assert_eq!(ts.len(), rec.samples_uv.len(), "timestamps vs samples");
    }
}
