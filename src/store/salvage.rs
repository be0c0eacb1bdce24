//! Salvage: every window that can still be read from a damaged store, put into a good one.
//!
//! A damaged store is one sled can no longer open, or one it opens but that lost data (see
//! "Damage" in the [store docs](super)). sled writes values verbatim into its files (its log
//! `db`, large nodes in `blobs/<lsn>`, snapshots), so the bytes of every window are usually
//! still there — often several times, as sled rewrites whole nodes. Format-2 values carry
//! their own key, a magic, a length and a CRC ([`super::encode_record`]), so the salvage is a
//! read-only scan of the raw files for the magic: each copy that decodes and passes its CRC
//! is a window exactly as it was written; a copy that fails is counted as damaged and skipped.
//!
//! Of several intact copies of one window the one with the most labels wins (labels are the
//! only field that changes after a window is written, and only by being added); on a tie the
//! one found last. Windows already in the target store are left alone (the live store wins).
//! A copy of a window that retention had deleted may come back; the target's retention then
//! applies as usual.
//!
//! Format-1 values (written before the key went into the value) cannot be found this way.
//! With [`SalvageOptions::with_engine`], salvage also lets sled open a *copy* of the damaged
//! folder (never the folder itself: sled's recovery truncates its log) and takes every window
//! it can still read; the gateway's automatic salvage does not, as sled can panic or misbehave
//! on damaged files and the gateway must keep running.
//!
//! The scan reads each file in 4 MiB blocks with a look-ahead of [`MAX_RECORD_BYTES`], so
//! memory stays bounded on a 1 GiB Raspberry Pi whatever the store's size; the candidates are
//! remembered by position (a few dozen bytes each) and decoded again when imported.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{decode_record, decode_v2, io_err, Store, StoreError, StoredWindow, MAGIC};
use super::{parse_window_key, Retention, MAX_RECORD_BYTES, W_PREFIX};

const BLOCK: usize = 4 << 20;

/// What a salvage found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalvageReport {
    /// Files read and their total size.
    pub files: usize,
    pub bytes_scanned: u64,
    /// Intact copies of windows found in the raw files (many windows have several).
    pub copies: u64,
    /// Places that looked like a window but failed to decode or to pass the CRC.
    pub damaged_copies: u64,
    /// Distinct windows found (raw scan and engine together).
    pub windows_found: u64,
    /// Windows found only by letting the database engine open a copy (format 1).
    pub found_by_engine: u64,
    /// Windows put into the target store.
    pub recovered: u64,
    /// Windows the target store already held (left as they were).
    pub already_present: u64,
    /// What went wrong along the way without stopping the salvage (unreadable files, the
    /// engine refusing the copy, ...).
    pub notes: Vec<String>,
    /// `progress` asked to stop before the salvage finished (what was imported stays).
    pub interrupted: bool,
}

impl std::fmt::Display for SalvageReport {
    /// One line: what was read, found and recovered.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} read; {} windows found ({} intact copies, {} damaged copies skipped",
            self.files,
            super::fmt_bytes(self.bytes_scanned),
            self.windows_found,
            self.copies,
            self.damaged_copies
        )?;
        if self.found_by_engine > 0 {
            write!(
                f,
                ", {} only through the database engine",
                self.found_by_engine
            )?;
        }
        write!(
            f,
            "); {} recovered, {} already there",
            self.recovered, self.already_present
        )
    }
}

/// How to salvage.
#[derive(Debug, Clone, Default)]
pub struct SalvageOptions {
    /// Also open a copy of the damaged folder with the database engine (see the module docs).
    pub with_engine: bool,
}

impl SalvageOptions {
    pub fn with_engine(mut self, yes: bool) -> Self {
        self.with_engine = yes;
        self
    }
}

/// One intact copy found by the raw scan: where it is and how good it is.
#[derive(Debug, Clone)]
struct Copy {
    file: usize,
    offset: u64,
    len: usize,
    labels: usize,
}

/// Files of a sled folder, in the order copies should be preferred on a tie (later wins):
/// the log, then snapshots, then blobs by increasing LSN. Our own files are skipped.
fn files_of(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut top = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_file() && !name.starts_with("affectgate.") {
            top.push((u8::from(name != "db"), name, p));
        }
    }
    top.sort();
    let mut files: Vec<PathBuf> = top.into_iter().map(|(_, _, p)| p).collect();
    let blobs = dir.join("blobs");
    if blobs.is_dir() {
        let mut b: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let e = e.map_err(io_err(&blobs))?;
            let lsn = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            b.push((lsn, e.path()));
        }
        b.sort();
        files.extend(b.into_iter().map(|(_, p)| p));
    }
    Ok(files)
}

/// Scans one file for format-2 records; calls `found` for each intact one.
fn scan_file(
    path: &Path,
    report: &mut SalvageReport,
    progress: &mut dyn FnMut(u64) -> bool,
    found: &mut dyn FnMut(StoredWindow, u64, usize),
) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + MAX_RECORD_BYTES);
    let mut base = 0u64; // file offset of buf[0]
    let mut eof = false;
    while !eof {
        let before = buf.len();
        buf.resize(before + BLOCK, 0);
        let mut got = 0;
        while before + got < buf.len() {
            match f.read(&mut buf[before + got..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(before + got);
        report.bytes_scanned += got as u64;
        if !progress(got as u64) {
            report.interrupted = true;
            return Ok(());
        }
        // Positions below `limit` have their whole look-ahead in `buf` (or the file ends).
        let limit = if eof {
            buf.len()
        } else {
            buf.len().saturating_sub(MAX_RECORD_BYTES)
        };
        let mut i = 0;
        while i < limit {
            let Some(at) = buf[i..]
                .windows(MAGIC.len())
                .take(limit - i)
                .position(|w| w == MAGIC)
            else {
                i = limit;
                break;
            };
            let p = i + at;
            match decode_v2(&buf[p..]) {
                Ok((rec, used)) => {
                    report.copies += 1;
                    found(rec, base + p as u64, used);
                    i = p + used;
                }
                Err(_) => {
                    report.damaged_copies += 1;
                    i = p + 1;
                }
            }
        }
        let keep_from = i.min(buf.len());
        buf.drain(..keep_from);
        base += keep_from as u64;
    }
    Ok(())
}

/// Recovers every readable window of the damaged store folder `from` into `into` (see the
/// module docs). `progress(done, total)` is called with bytes scanned as the scan goes on
/// and after every imported window; when it returns `false` the salvage stops early
/// ([`SalvageReport::interrupted`]). The folder `from` is only read, never changed.
pub fn salvage(
    from: &Path,
    into: &Store,
    options: &SalvageOptions,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<SalvageReport, StoreError> {
    let mut report = SalvageReport::default();
    let files = files_of(from)?;
    let total: u64 = files
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    report.files = files.len();
    let mut best: HashMap<(String, i64), Copy> = HashMap::new();
    let mut done = 0u64;
    for (idx, path) in files.iter().enumerate() {
        if report.interrupted {
            return Ok(report);
        }
        let mut prog = |n: u64| {
            done += n;
            progress(done, total)
        };
        let mut found = |rec: StoredWindow, offset: u64, len: usize| {
            let copy = Copy {
                file: idx,
                offset,
                len,
                labels: rec.labels.len(),
            };
            let key = (rec.sensor, rec.window.start_ns);
            match best.get(&key) {
                Some(b) if b.labels > copy.labels => {}
                _ => {
                    best.insert(key, copy);
                }
            }
        };
        if let Err(e) = scan_file(path, &mut report, &mut prog, &mut found) {
            report.notes.push(format!(
                "{} could not be read to the end: {e}",
                path.display()
            ));
        }
    }

    let mut engine: Vec<(StoredWindow, Vec<u8>)> = Vec::new();
    if options.with_engine {
        match engine_windows(from) {
            Ok((windows, note)) => {
                engine = windows
                    .into_iter()
                    .filter(|(w, _)| !best.contains_key(&(w.sensor.clone(), w.window.start_ns)))
                    .collect();
                report.notes.extend(note);
            }
            Err(e) => report.notes.push(e),
        }
    }
    report.found_by_engine = engine.len() as u64;
    report.windows_found = best.len() as u64 + report.found_by_engine;

    // Import in time order per sensor, so retention (if it applies) drops the oldest.
    let mut keys: Vec<((String, i64), Copy)> = best.into_iter().collect();
    keys.sort_by(|a, b| (a.0 .1, &a.0 .0).cmp(&(b.0 .1, &b.0 .0)));
    let mut handles: Vec<Option<File>> = (0..files.len()).map(|_| None).collect();
    // Put back bit for bit (a format-1 value gets the current format, its samples as stored).
    let put =
        |rec: StoredWindow, value: Vec<u8>, report: &mut SalvageReport| -> Result<(), StoreError> {
            if into.get(&rec.sensor, rec.window.start_ns)?.is_some() {
                report.already_present += 1;
            } else {
                let value = match value.first() {
                    Some(&super::FORMAT_V1) => super::reencode(&rec, &value)?,
                    _ => value,
                };
                into.put_value(&rec.sensor, rec.window.start_ns, value)?;
                report.recovered += 1;
            }
            Ok(())
        };
    for ((sensor, start), c) in keys {
        if !progress(done, total) {
            report.interrupted = true;
            into.flush()?;
            return Ok(report);
        }
        let path = &files[c.file];
        if handles[c.file].is_none() {
            handles[c.file] = Some(File::open(path).map_err(io_err(path))?);
        }
        let f = handles[c.file].as_ref().expect("opened above");
        let mut bytes = vec![0u8; c.len];
        f.read_exact_at(&mut bytes, c.offset)
            .map_err(io_err(path))?;
        match decode_record(&sensor, start, &bytes) {
            Ok(rec) => put(rec, bytes, &mut report)?,
            // The file changed under us (it should not: nothing writes a quarantined store).
            Err(e) => report.notes.push(e.to_string()),
        }
    }
    for (rec, value) in engine {
        put(rec, value, &mut report)?;
    }
    into.flush()?;
    Ok(report)
}

/// Lets the database engine open a copy of `from` and reads every window it can.
/// Windows the engine still reads (each with its stored bytes), and a note when it failed.
type EngineWindows = (Vec<(StoredWindow, Vec<u8>)>, Option<String>);

fn engine_windows(from: &Path) -> Result<EngineWindows, String> {
    let copy = tempfile::Builder::new()
        .prefix(".affectgate-salvage-")
        .tempdir_in(from.parent().unwrap_or(Path::new(".")))
        .map_err(|e| format!("no room for a copy to open with the database engine: {e}"))?;
    copy_dir(from, copy.path())
        .map_err(|e| format!("copying the store to open it with the database engine: {e}"))?;
    let _ = fs::remove_file(copy.path().join(super::DAMAGED_MARKER));
    let _ = fs::remove_file(copy.path().join(super::WITNESS_FILE));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Store::open(copy.path(), Retention::KEEP_ALL)
    }));
    let store = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(format!(
                "the database engine cannot open a copy either: {e}"
            ))
        }
        Err(_) => return Err("the database engine panicked opening a copy".into()),
    };
    let mut out = Vec::new();
    let mut note = None;
    for kv in store.db.scan_prefix(W_PREFIX) {
        match kv {
            Ok((k, v)) => {
                if let Some((sensor, start)) = parse_window_key(&k) {
                    if let Ok(rec) = decode_record(sensor, start, &v) {
                        out.push((rec, v.to_vec()));
                    }
                }
            }
            Err(e) => {
                note = Some(format!("the database engine stopped reading the copy: {e}"));
                break;
            }
        }
    }
    Ok((out, note))
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if e.file_name() != super::LOCK_FILE {
            fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}
