//! Files, in one place: the one way this crate replaces a file.
//!
//! Model cards, the model registry, round state, replay packs and study results are all
//! written with [`atomic_write`], so a crash or a full disk leaves either the old file or the
//! new one — never half of either.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A file operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct FsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, write, fsync,
/// rename over `path`, then (best effort) fsync the folder so the rename itself is durable.
/// On any error the temporary file is removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // tempfile decorates its errors with the temporary's path; keep the OS error alone.
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| FsError {
            path: p,
            source: e
                .raw_os_error()
                .map(std::io::Error::from_raw_os_error)
                .unwrap_or(e),
        }
    };
    // The mode a plain `File::create` gives (0666 less the umask), not tempfile's private
    // 0600: models, cards and packs are read by other users (a packaged service, a shell).
    #[cfg(unix)]
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".affectgate-").suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(mode);
    let mut tmp = builder.tempfile_in(&dir).map_err(err(path))?;
    // Errors name the file being replaced (what the user knows), not the temporary.
    tmp.as_file_mut().write_all(bytes).map_err(err(path))?;
    tmp.as_file().sync_all().map_err(err(path))?;
    tmp.persist(path).map_err(|e| FsError {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_mode_a_plain_create_gives() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let ours = dir.path().join("model.onnx");
        atomic_write(&ours, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ours), mode(&plain));
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card.toml");
        atomic_write(&p, b"first version, longer").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("card.toml")]);
    }

    #[test]
    fn error_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("x.json");
        let e = atomic_write(&missing, b"x").unwrap_err();
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        // Renaming onto a directory fails: the directory (the "old file") stays as it was.
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"kept").unwrap();
        let e = atomic_write(&target, b"new").unwrap_err();
        assert!(e.to_string().contains("taken"), "{e}");
        assert!(
            !e.to_string().contains(".affectgate-"),
            "names the temporary: {e}"
        );
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"kept");
        // …and the temporary file is gone: only `taken` is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
