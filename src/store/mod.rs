//! The window store: every scored (or merely filtered) 10 s [`Window`] the gateway sees, with
//! its quality flags, HR/HRV, scores and, later, the user's self-reported labels.
//!
//! It exists so that the gateway can (a) fine-tune on its own user's data — labels arrive
//! minutes or hours after the window, so windows must outlive the live pipeline — and
//! (b) export recordings for offline work (`affectgate store export`). It owns one sled
//! database directory (`store.path`) and nothing else; no other module touches sled.
//!
//! ## Key layout (one sled tree, the default one)
//! ```text
//! w/ <sensor> 0x00 <start_ns: be u64, sign bit flipped>  -> encoded StoredWindow (below)
//! t/ <start_ns: be u64, sign bit flipped> <sensor>       -> empty   (time index)
//! m/bytes                                                -> u64 LE  (logical bytes, see below)
//! ```
//! * Flipping the sign bit makes byte order equal time order, negative times included, so
//!   "windows of sensor X in [a, b)" is one range scan. Sensor ids are `[a-zA-Z0-9_-]+`
//!   (checked on every call), so they contain no 0x00: sensor `a` never sees `ab`'s keys.
//! * The `t/` index orders windows by start time *across* sensors, which is what retention
//!   needs: the oldest window is always the first `t/` key.
//! * `m/bytes` is the sum over windows of (window key + index key + value) lengths. It is
//!   written in the same [`sled::Batch`] as the window it accounts for, so it is exactly as
//!   durable as the data and stats need no full scan after a restart. If it is missing or
//!   malformed it is recomputed from the keys at open.
//!
//! ## Value encoding (format 2, little-endian, hand-written; see [`encode_record`])
//! ```text
//! magic A6 'A' 'G' 'W' | u8 format=2 | u32 rest (bytes after this field, CRC included)
//! u8 sensor_len | sensor | i64 start_ns                      (the key, inside the value)
//! u8 quality | u8 flags (bit0 hr, bit1 rmssd, bit2 sdnn, bit3 model)
//! u64 window.index | f64 fs_hz | f32 hr_bpm? | f32 rmssd_ms? | f32 sdnn_ms?   (present ones)
//! [u16 len, utf8 model]?  | u16 n_scores, n × (u8 len, utf8 name, f32 value)
//! u16 n_labels, n × (u8 len, utf8 name, f32 value)
//! u32 n_samples | f32 scale | n × i16 sample | u32 CRC-32 (IEEE)
//! ```
//! Samples are quantised to i16 with one scale per window, `scale = max|x| / 32767` (rounded
//! up to the next f32, 1 for an all-zero window): a 2560-sample window takes 5155 bytes
//! instead of 10 KB as f32. The error of every sample is at most `scale / 2` (plus the f32
//! rounding of the decoded value, ≤ 2⁻²⁴·|x|): for ECG peaking at 5 mV that is ≈ 0.08 µV,
//! far below the noise floor of any chest strap. Everything else round-trips exactly.
//! The CRC covers the sensor id and start time from the key, then the value: a torn or
//! garbage value, or a value under the wrong key, reads as [`StoreError::Corrupt`] naming
//! that one window instead of returning wrong ECG; no other window is affected.
//!
//! Why the key is repeated inside the value, with a magic and a length: sled stores values
//! verbatim in its files but prefix-compresses keys, so a database sled can no longer open
//! still holds every window's bytes, but not their keys. A self-describing value can be found
//! by scanning the raw files ([`salvage`]), checked by its CRC and put back under its key.
//! Format 1 (`u8 1`, then the same fields from `quality` on, key not repeated) is still read.
//!
//! ## Durability
//! sled 0.34 has reports of databases that no longer open after an abrupt power loss or
//! SIGKILL (sled issues #1533, #1527, #1166). So: each window, its index entry and the byte
//! counter go in one atomic batch (after recovery a window is all there or absent); sled's
//! background flusher (every 500 ms) bounds what a crash loses, and [`Store::flush`] lets
//! the gateway flush at points it chooses (periodically, at shutdown); dropping a [`Store`]
//! flushes too. The page cache is capped at 64 MiB (sled's default of 1 GiB is too much for
//! a gateway).
//!
//! sled's own flush is not a durability point: its log writes end in `sync_file_range`, which
//! makes no file size or other metadata durable, and its blob files (`blobs/<lsn>`, large
//! nodes) are never fsynced at all; only its background thread fsyncs the log file, every
//! 500 ms. [`Store::flush`] therefore fsyncs what sled wrote itself: new blob files, the
//! `blobs/` folder, the log file. Only after that does the gateway announce a window.
//!
//! ## Damage
//! A store is *damaged* when sled refuses to open it (or panics trying), when a marker says a
//! running gateway found it damaged ([`Store::mark_damaged`]), or when sled opens it but holds
//! less than was durable: each [`Store::put`] bumps a counter (`m/seq`) in its batch, and
//! [`Store::flush`] writes the counter it made durable into `affectgate.durable`, outside
//! sled. sled's recovery stops at the first bad record in its log and silently drops
//! everything after it; a counter behind the witness is that case. [`Store::open`] reports
//! all three as [`StoreError::Damaged`]; [`open_or_quarantine`] (what the gateway uses) then
//! renames the folder to `<name>.damaged-<UTC time>` — kept, never deleted — and starts an
//! empty store in its place, and [`salvage`] recovers every window whose bytes are intact.
//!
//! ## Retention
//! Oldest windows (by start time, across sensors) go while the counter exceeds `max_bytes`:
//! checked after every [`Store::put`] (one comparison unless something must go). Age needs
//! a clock, so it is applied by [`Store::enforce_retention`]`(now_ns)`, which the gateway
//! calls on its flush timer; opening a store (e.g. for `store stats`) never deletes anything.
//!
//! ## Concurrency
//! One process per store: besides sled's own lock, [`Store::open`] takes an exclusive lock
//! on `<path>/affectgate.lock` and reports a second opener as [`StoreError::Locked`].
//! Within the process a `Store` is `Send + Sync`; writers are serialised by a mutex that
//! also holds the byte counter (read-modify-write of the counter must not race), readers
//! are lock-free.

pub mod config;
pub mod outbox;
pub mod salvage;

pub use config::StoreConfig;
pub use salvage::{salvage, SalvageOptions, SalvageReport};

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::dsp::Window;
use crate::model::quant;

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
/// First bytes of every format-2 value: what [`salvage`] looks for in sled's raw files.
const MAGIC: [u8; 4] = [0xA6, b'A', b'G', b'W'];
/// Largest encoded window (a 10 s window is ~5 KB): bounds the raw scan's look-ahead.
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 20;
const SEQ_KEY: &[u8] = b"m/seq";
/// Outside sled: the `m/seq` that the last successful [`Store::flush`] made durable.
const WITNESS_FILE: &str = "affectgate.durable";
const WITNESS_MAGIC: &[u8; 4] = b"AGD2";
/// `AGD2 | u64 seq | u64 length of sled's log | u32 CRC` (little-endian).
const WITNESS_LEN: usize = 24;
/// Outside sled: written when a running gateway finds the store damaged; holds the reason.
const DAMAGED_MARKER: &str = "affectgate.damaged";
/// Written when a store closed cleanly (flushed on drop); removed at open.
const CLEAN_MARKER: &str = "affectgate.clean";
/// A copy of sled's log taken before sled opens a store that did not close cleanly: sled's
/// recovery rewrites the log from the first record it cannot read, which after a power cut
/// has destroyed windows that were durable (1 cut in 200 in the power-loss campaign). The
/// copy is what the salvage reads if the open then turns out damaged; removed when the open
/// is verified. (Not `affectgate.*`: the salvage scans it like sled's own files.)
const PRE_OPEN_COPY: &str = "db.before-open";
const W_PREFIX: &[u8] = b"w/";
const T_PREFIX: &[u8] = b"t/";
const BYTES_KEY: &[u8] = b"m/bytes";
const LOCK_FILE: &str = "affectgate.lock";
const CACHE_BYTES: u64 = 64 << 20;
/// Consecutive windows whose start differs from the previous end by at most this much are
/// contiguous (export); it absorbs the per-block clock correction of the windower.
const CONTIGUITY_TOLERANCE_NS: i64 = 2_000_000;
/// Windows removed per retention batch.
const RETENTION_BATCH: usize = 256;
const FLAG_HR: u8 = 1;
const FLAG_RMSSD: u8 = 2;
const FLAG_SDNN: u8 = 4;
const FLAG_MODEL: u8 = 8;

/// How much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Oldest windows (across sensors) are dropped while the logical size exceeds this.
    pub max_bytes: u64,
    /// Windows starting before `now - max_age_ns` are dropped by [`Store::enforce_retention`].
    pub max_age_ns: i64,
}

impl Retention {
    /// Keep everything (inspection and benchmarks must never delete anything).
    pub const KEEP_ALL: Retention = Retention {
        max_bytes: u64::MAX,
        max_age_ns: i64::MAX,
    };
}

/// One stored window and everything known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    pub sensor: String,
    pub window: Window,
    /// Quality bit flags, 0 = good (defined by the DSP; stored opaque).
    pub quality: u8,
    pub hr_bpm: Option<f32>,
    pub rmssd_ms: Option<f32>,
    pub sdnn_ms: Option<f32>,
    /// (head name, value); empty when not scored.
    pub scores: Vec<(String, f32)>,
    /// Version of the model that produced `scores`.
    pub model: Option<String>,
    /// Self-reported labels (name, value); empty = unlabelled.
    pub labels: Vec<(String, f32)>,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub dropped_by_age: u64,
    pub dropped_by_bytes: u64,
    /// Logical bytes freed (as counted in [`StoreStats::encoded_bytes`]).
    pub bytes_freed: u64,
}

/// Per-sensor statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SensorStats {
    pub sensor: String,
    /// Windows stored, corrupt ones included.
    pub windows: u64,
    pub labelled: u64,
    /// Windows with `quality != 0`.
    pub flagged: u64,
    /// Windows with scores.
    pub scored: u64,
    /// Windows that fail to decode.
    pub corrupt: u64,
    pub first_start_ns: i64,
    pub last_start_ns: i64,
}

/// Store statistics; `Display` renders the table of `affectgate store stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub path: PathBuf,
    /// Sorted by sensor id.
    pub sensors: Vec<SensorStats>,
    pub windows: u64,
    /// The persistent logical-bytes counter (keys + values).
    pub encoded_bytes: u64,
    pub max_bytes: u64,
    /// What sled occupies on disk (log-structured: larger than `encoded_bytes`).
    pub size_on_disk: u64,
}

/// One CSV file written by [`Store::export_csv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSegment {
    pub path: PathBuf,
    pub n_samples: usize,
    pub start_ns: i64,
    pub n_windows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {} is in use by another affectgate process (a running gateway?); stop it \
         first or use another store.path",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "store {} is damaged ({reason}); this can happen after an abrupt power loss. \
         `affectgate run` moves it aside, starts an empty store and salvages it by itself; \
         by hand: move the folder aside and run `affectgate store salvage <moved folder>`",
        path.display()
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("store {}: {source}", path.display())]
    Db { path: PathBuf, source: sled::Error },
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "stored window {key} is corrupt: {reason} (other windows are unaffected; this one \
         is removed by retention in due course)"
    )]
    Corrupt { key: String, reason: String },
    #[error("invalid sensor id {sensor:?}: use only letters, digits, '_' and '-'")]
    InvalidSensor { sensor: String },
    #[error("window {key} cannot be stored: {reason}")]
    InvalidRecord { key: String, reason: String },
    #[error(
        "{} already exists; export never overwrites: move it away or export to another directory",
        path.display()
    )]
    Exists { path: PathBuf },
}

fn db_err(path: &Path, source: sled::Error) -> StoreError {
    let path = path.to_path_buf();
    match source {
        // sled's own file lock (held e.g. by a tool that opened the directory directly).
        sled::Error::Io(ref e) if e.to_string().contains("could not acquire lock") => {
            StoreError::Locked { path }
        }
        // What damage looks like through sled: a bad checksum, an inconsistency it calls its
        // own bug, a configuration record it cannot read ("unsupported", e.g. garbage in
        // `conf`), or a file shorter than its records say.
        sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_) => StoreError::Damaged {
            path,
            reason: source.to_string(),
        },
        sled::Error::Io(ref e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) =>
        {
            StoreError::Damaged {
                path,
                reason: source.to_string(),
            }
        }
        _ => StoreError::Db { path, source },
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

/// Sensor ids are `[a-zA-Z0-9_-]+`: they name MQTT topics, files and key prefixes.
fn validate_sensor(sensor: &str) -> Result<(), StoreError> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    match !sensor.is_empty() && sensor.bytes().all(valid) {
        true => Ok(()),
        false => Err(StoreError::InvalidSensor {
            sensor: sensor.into(),
        }),
    }
}

fn flip(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unflip(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

/// The sled key of a window (`w/` + sensor + 0x00 + flipped big-endian start).
#[doc(hidden)]
pub fn window_key(sensor: &str, start_ns: i64) -> Vec<u8> {
    [W_PREFIX, sensor.as_bytes(), &[0], &flip(start_ns)].concat()
}

fn time_key(start_ns: i64, sensor: &str) -> Vec<u8> {
    [T_PREFIX, &flip(start_ns), sensor.as_bytes()].concat()
}

fn parse_window_key(k: &[u8]) -> Option<(&str, i64)> {
    let rest = k.strip_prefix(W_PREFIX)?;
    let split = rest.len().checked_sub(9)?;
    (rest[split] == 0).then_some(())?;
    Some((
        std::str::from_utf8(&rest[..split]).ok()?,
        unflip(&rest[split + 1..]),
    ))
}

fn parse_time_key(k: &[u8]) -> Option<(i64, &str)> {
    let rest = k.strip_prefix(T_PREFIX)?;
    (rest.len() > 8).then_some(())?;
    Some((unflip(&rest[..8]), std::str::from_utf8(&rest[8..]).ok()?))
}

/// Logical bytes one window occupies: its key, its index key and its value.
fn footprint(sensor_len: usize, value_len: usize) -> u64 {
    (W_PREFIX.len() + 9 + T_PREFIX.len() + 8 + 2 * sensor_len + value_len) as u64
}

/// An open store. See the module docs.
pub struct Store {
    // Field order matters: sled is dropped (and releases its lock) before ours.
    db: sled::Db,
    path: PathBuf,
    retention: Retention,
    /// Serialises writers; holds the counters as last written.
    counters: Mutex<Counters>,
    /// sled's log file, fsynced by [`Store::flush`].
    log_file: File,
    /// `affectgate.durable`, rewritten in place by [`Store::flush`].
    witness: Mutex<File>,
    /// The `m/seq` the witness holds.
    witnessed: AtomicU64,
    /// Highest blob file (by its LSN name) fsynced so far.
    blobs_synced: Mutex<Option<u64>>,
    _lock: File,
}

/// What the writers keep in step with the database.
struct Counters {
    /// `m/bytes`.
    bytes: u64,
    /// `m/seq`: puts so far.
    seq: u64,
}

/// A damaged store moved aside by [`open_or_quarantine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the damaged store now is (kept, never deleted).
    pub moved_to: PathBuf,
    /// Why it was found damaged.
    pub reason: String,
}

/// Opens the store at `path`; if it is damaged (see the module docs), renames it to
/// `<name>.damaged-<UTC time>` beside it and opens a new, empty store at `path`. A gateway
/// on an SD card must not stay down for a person to move a folder: it keeps running, says what
/// happened, and the damaged copy is there for [`salvage`].
pub fn open_or_quarantine(
    path: &Path,
    retention: Retention,
) -> Result<(Store, Option<Quarantined>), StoreError> {
    match Store::open(path, retention) {
        Err(StoreError::Damaged { reason, .. }) => {
            let name = path
                .file_name()
                .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
            let stamp = crate::time::utc_seconds(crate::time::now_ns())
                .replace([':', '-'], "")
                .replace(' ', "T");
            let mut moved_to = path.with_file_name(format!("{name}.damaged-{stamp}"));
            for n in 2.. {
                if !moved_to.exists() {
                    break;
                }
                moved_to = path.with_file_name(format!("{name}.damaged-{stamp}-{n}"));
            }
            fs::rename(path, &moved_to).map_err(|e| StoreError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(
                    e.kind(),
                    format!(
                        "the store is damaged ({reason}) and could not be moved aside to {}: {e}",
                        moved_to.display()
                    ),
                ),
            })?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if let Ok(d) = File::open(parent) {
                    let _ = d.sync_all();
                }
            }
            tracing::error!(store = %path.display(), moved_to = %moved_to.display(), "the store is damaged ({reason}): moved aside, starting an empty store");
            let store = Store::open(path, retention)?;
            Ok((store, Some(Quarantined { moved_to, reason })))
        }
        other => other.map(|s| (s, None)),
    }
}

/// What [`Store::flush`] last made durable: the put counter and the length of sled's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Witness {
    seq: u64,
    log_len: u64,
}

fn read_witness(f: &mut File) -> Option<Witness> {
    use std::io::{Read, Seek};
    let mut b = [0u8; WITNESS_LEN];
    f.seek(io::SeekFrom::Start(0)).ok()?;
    f.read_exact(&mut b).ok()?;
    let crc = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
    (&b[..4] == WITNESS_MAGIC && crc32fast::hash(&b[..20]) == crc).then(|| Witness {
        seq: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
        log_len: u64::from_le_bytes(b[12..20].try_into().expect("8 bytes")),
    })
}

fn witness_bytes(w: Witness) -> [u8; WITNESS_LEN] {
    let mut b = [0u8; WITNESS_LEN];
    b[..4].copy_from_slice(WITNESS_MAGIC);
    b[4..12].copy_from_slice(&w.seq.to_le_bytes());
    b[12..20].copy_from_slice(&w.log_len.to_le_bytes());
    let crc = crc32fast::hash(&b[..20]);
    b[20..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn read_u64(db: &sled::Db, key: &[u8], path: &Path) -> Result<Option<u64>, StoreError> {
    let v = db.get(key).map_err(|e| db_err(path, e))?;
    Ok(v.as_deref()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes))
}

impl Store {
    /// Opens (creating if needed) the store at `path`. A damaged store (see the module docs)
    /// is [`StoreError::Damaged`]; [`open_or_quarantine`] handles that case.
    pub fn open(path: &Path, retention: Retention) -> Result<Store, StoreError> {
        fs::create_dir_all(path).map_err(io_err(path))?;
        // Health data: the store's folder is private to the gateway's user (0700), whatever
        // the umask made of it (sled's files inside are then out of other users' reach).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = fs::Permissions::from_mode(0o700);
            if let Err(e) = fs::set_permissions(path, private) {
                tracing::warn!(store = %path.display(), "cannot make the store private (0700): {e}");
            }
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path: path.into() }),
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let damaged = |reason: String| StoreError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        if let Ok(reason) = fs::read_to_string(path.join(DAMAGED_MARKER)) {
            return Err(damaged(format!(
                "found damaged while running: {}",
                reason.trim()
            )));
        }
        let witness_path = path.join(WITNESS_FILE);
        let mut witness = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&witness_path)
            .map_err(io_err(&witness_path))?;
        let durable = read_witness(&mut witness);
        // Checked before sled sees the folder: sled's recovery rewrites its log from the first
        // bad record on, destroying what the salvage could still have read.
        let log_len = fs::metadata(path.join("db")).map_or(0, |m| m.len());
        if let Some(w) = durable.filter(|w| log_len < w.log_len) {
            return Err(damaged(format!(
                "its log is {log_len} bytes but was {} bytes when last made durable: it was cut short",
                w.log_len
            )));
        }
        // After an unclean stop (crash, kill, power cut) keep sled's log as it is now, before
        // sled's recovery touches it (see PRE_OPEN_COPY). A clean close skips the copy.
        let clean = path.join(CLEAN_MARKER);
        let copy = path.join(PRE_OPEN_COPY);
        let was_clean = fs::remove_file(&clean).is_ok();
        if was_clean {
            // The marker's removal must be durable before anything is written: a marker
            // that came back after a power cut would skip the copy next time.
            File::open(path)
                .and_then(|d| d.sync_all())
                .map_err(io_err(path))?;
        }
        if !was_clean && log_len > 0 {
            let taken =
                fs::copy(path.join("db"), &copy).and_then(|_| File::open(&copy)?.sync_all());
            if let Err(e) = taken {
                let _ = fs::remove_file(&copy);
                tracing::warn!(store = %path.display(), "could not keep a copy of the log before opening it ({e}); a damaged open could then be salvaged only partly");
            }
        }
        // sled panics on some damage instead of returning an error (unwraps in its recovery).
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()
        });
        let db = match opened {
            Ok(r) => r.map_err(|e| db_err(path, e))?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                return Err(damaged(format!(
                    "the database engine failed opening it: {what}"
                )));
            }
        };
        // Reading the ends touches the first and last leaves; a lazily detected bad page
        // shows here rather than at the first write.
        for probe in [db.first(), db.last()] {
            if let Err(e) = probe {
                return Err(damaged(e.to_string()));
            }
        }
        let seq = read_u64(&db, SEQ_KEY, path)?.unwrap_or(0);
        if let Some(w) = durable.filter(|w| w.seq > seq) {
            return Err(damaged(format!(
                "it holds {seq} window writes but {} had been made durable: the database \
                 engine dropped the rest while recovering",
                w.seq
            )));
        }
        let total = match read_u64(&db, BYTES_KEY, path)? {
            Some(b) => b,
            // Missing (new store) or malformed: recount from the keys (values are not decoded).
            None => {
                let mut total = 0;
                for kv in db.scan_prefix(W_PREFIX) {
                    let (k, v) = kv.map_err(|e| db_err(path, e))?;
                    total += footprint(k.len().saturating_sub(W_PREFIX.len() + 9), v.len());
                }
                db.insert(BYTES_KEY, &total.to_le_bytes())
                    .map_err(|e| db_err(path, e))?;
                total
            }
        };
        let log_path = path.join("db");
        let log_file = File::open(&log_path).map_err(io_err(&log_path))?;
        // Verified: the pre-open copy is not needed.
        let _ = fs::remove_file(&copy);
        // The witness (and sled's files) must survive as directory entries too, and so must
        // the store's own entry in its parent: a store created since the parent's last fsync
        // vanishes whole at a power cut (seen in the power-loss test before this).
        File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(io_err(path))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // A parent the gateway may not read (an admin-made folder) only costs durability.
            if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
                tracing::warn!(folder = %parent.display(), "cannot fsync the store's parent folder: {e}");
            }
        }
        Ok(Store {
            db,
            path: path.to_path_buf(),
            retention,
            counters: Mutex::new(Counters { bytes: total, seq }),
            log_file,
            witness: Mutex::new(witness),
            witnessed: AtomicU64::new(durable.map_or(0, |w| w.seq)),
            blobs_synced: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Records that this store is damaged (a running gateway met sled corruption): the next
    /// [`Store::open`] reports [`StoreError::Damaged`] with `reason`, so the gateway's next
    /// start moves it aside and salvages it.
    pub fn mark_damaged(&self, reason: &str) -> Result<(), StoreError> {
        let p = self.path.join(DAMAGED_MARKER);
        crate::fs::atomic_write(&p, reason.as_bytes()).map_err(|e| StoreError::Io {
            path: e.path,
            source: e.source,
        })
    }

    /// The folder this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: sled::Error) -> StoreError {
        db_err(&self.path, e)
    }

    fn writer(&self) -> MutexGuard<'_, Counters> {
        // The counters are only updated after their batch applied, so a poisoned value is valid.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A small named value kept with the store (e.g. which sensors Home Assistant knows).
    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = [b"m/x/".as_slice(), name.as_bytes()].concat();
        Ok(self
            .db
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// Set a named value (see [`Store::meta_get`]).
    pub fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = [b"m/x/".as_slice(), name.as_bytes()].concat();
        self.db
            .insert(key, value)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The MQTT outbox living in this database (see [`outbox`]), holding at most `cap`
    /// messages.
    pub fn outbox(&self, cap: u64) -> Result<outbox::Outbox, StoreError> {
        outbox::Outbox::open(&self.db, &self.path, cap)
    }

    /// Raw access to the sled tree, for tests that simulate corruption.
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.db
    }

    /// Stores `rec`, replacing any window of the same sensor and start time, then drops the
    /// oldest windows (across sensors) while the store exceeds `max_bytes`.
    ///
    /// Age retention needs a clock and is *not* applied here: windows replayed from a file
    /// carry the recording's time base, and only the caller knows which "now" applies. The
    /// gateway calls [`Store::enforce_retention`] on its flush timer. Byte retention is cheap
    /// per put: one counter comparison, and each window is removed once (amortised O(1)).
    pub fn put(&self, rec: &StoredWindow) -> Result<(), StoreError> {
        validate_sensor(&rec.sensor)?;
        let value = encode_record(rec)?;
        self.put_value(&rec.sensor, rec.window.start_ns, value)
    }

    /// [`Store::put`] of an already encoded (and checked) value: the salvage puts windows
    /// back bit for bit instead of quantising decoded samples a second time.
    fn put_value(&self, sensor: &str, start: i64, value: Vec<u8>) -> Result<(), StoreError> {
        let wkey = window_key(sensor, start);
        let mut c = self.writer();
        let old = self.db.get(&wkey).map_err(|e| self.err(e))?;
        let new_total = c
            .bytes
            .saturating_sub(old.map_or(0, |v| footprint(sensor.len(), v.len())))
            + footprint(sensor.len(), value.len());
        let mut batch = sled::Batch::default();
        batch.insert(wkey, value);
        batch.insert(time_key(start, sensor), &[][..]);
        batch.insert(BYTES_KEY, &new_total.to_le_bytes());
        batch.insert(SEQ_KEY, &(c.seq + 1).to_le_bytes());
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        c.bytes = new_total;
        c.seq += 1;
        if new_total > self.retention.max_bytes {
            self.drop_oldest(&mut c.bytes, None)?;
        }
        Ok(())
    }

    /// Drops every window starting before `now_ns - max_age_ns`, then the oldest windows while
    /// the store exceeds `max_bytes`. Cheap when there is nothing to drop (one key lookup).
    pub fn enforce_retention(&self, now_ns: i64) -> Result<RetentionReport, StoreError> {
        let cutoff = now_ns.saturating_sub(self.retention.max_age_ns);
        let mut c = self.writer();
        self.drop_oldest(&mut c.bytes, Some(cutoff))
    }

    /// Removes windows in start-time order (the `t/` index) while they are older than
    /// `age_cutoff` or the store is over `max_bytes`, in batches that keep the counter exact.
    fn drop_oldest(
        &self,
        total: &mut u64,
        age_cutoff: Option<i64>,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        loop {
            let mut batch = sled::Batch::default();
            let (mut n, mut running) = (0, *total);
            for kv in self.db.scan_prefix(T_PREFIX).take(RETENTION_BATCH) {
                let (tkey, _) = kv.map_err(|e| self.err(e))?;
                // Keys we wrote always parse; anything else under `t/` is skipped.
                let Some((start, sensor)) = parse_time_key(&tkey) else {
                    continue;
                };
                let by_age = age_cutoff.is_some_and(|c| start < c);
                if !by_age && running <= self.retention.max_bytes {
                    break;
                }
                let wkey = window_key(sensor, start);
                let freed = match self.db.get(&wkey).map_err(|e| self.err(e))? {
                    Some(v) => footprint(sensor.len(), v.len()),
                    None => 0,
                };
                running = running.saturating_sub(freed);
                report.bytes_freed += freed;
                if by_age {
                    report.dropped_by_age += 1;
                } else {
                    report.dropped_by_bytes += 1;
                }
                batch.remove(wkey);
                batch.remove(&*tkey);
                n += 1;
            }
            if n == 0 {
                return Ok(report);
            }
            batch.insert(BYTES_KEY, &running.to_le_bytes());
            self.db.apply_batch(batch).map_err(|e| self.err(e))?;
            *total = running;
        }
    }

    /// The window of `sensor` starting at `start_ns`, if stored.
    pub fn get(&self, sensor: &str, start_ns: i64) -> Result<Option<StoredWindow>, StoreError> {
        validate_sensor(sensor)?;
        match self
            .db
            .get(window_key(sensor, start_ns))
            .map_err(|e| self.err(e))?
        {
            Some(v) => decode_record(sensor, start_ns, &v).map(Some),
            None => Ok(None),
        }
    }

    fn scan(&self, sensor: &str, since: i64, until: Bound<i64>, unlabelled_only: bool) -> Windows {
        let iter = validate_sensor(sensor).map(|()| {
            let lo = Bound::Included(window_key(sensor, since));
            match until {
                Bound::Excluded(u) if u <= since => None,
                Bound::Excluded(u) => {
                    Some(self.db.range((lo, Bound::Excluded(window_key(sensor, u)))))
                }
                _ => Some(
                    self.db
                        .range((lo, Bound::Included(window_key(sensor, i64::MAX)))),
                ),
            }
        });
        let (iter, error) = match iter {
            Ok(it) => (it, None),
            Err(e) => (None, Some(e)),
        };
        Windows {
            iter,
            error,
            path: self.path.clone(),
            unlabelled_only,
        }
    }

    /// Windows of `sensor` with `since_ns <= start_ns < until_ns`, in time order.
    pub fn range(&self, sensor: &str, since_ns: i64, until_ns: i64) -> Windows {
        self.scan(sensor, since_ns, Bound::Excluded(until_ns), false)
    }

    /// Windows of `sensor` starting at or after `since_ns` that have no labels, in time order.
    pub fn unlabelled_since(&self, sensor: &str, since_ns: i64) -> Windows {
        self.scan(sensor, since_ns, Bound::Unbounded, true)
    }

    /// Replaces the labels of one window; returns whether the window existed.
    pub fn set_labels(
        &self,
        sensor: &str,
        start_ns: i64,
        labels: &[(String, f32)],
    ) -> Result<bool, StoreError> {
        validate_sensor(sensor)?;
        let wkey = window_key(sensor, start_ns);
        let mut c = self.writer();
        let Some(old) = self.db.get(&wkey).map_err(|e| self.err(e))? else {
            return Ok(false);
        };
        let mut rec = decode_record(sensor, start_ns, &old)?;
        rec.labels = labels.to_vec();
        let value = reencode(&rec, &old)?;
        let new_total = c.bytes.saturating_sub(footprint(sensor.len(), old.len()))
            + footprint(sensor.len(), value.len());
        let mut batch = sled::Batch::default();
        batch.insert(wkey, value);
        batch.insert(BYTES_KEY, &new_total.to_le_bytes());
        batch.insert(SEQ_KEY, &(c.seq + 1).to_le_bytes());
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        c.bytes = new_total;
        c.seq += 1;
        if new_total > self.retention.max_bytes {
            self.drop_oldest(&mut c.bytes, None)?;
        }
        Ok(true)
    }

    /// Sensor ids with at least one window, sorted. One seek per sensor.
    pub fn sensors(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut from = W_PREFIX.to_vec();
        while let Some(kv) = self.db.range(from..).next() {
            let (k, _) = kv.map_err(|e| self.err(e))?;
            let Some((sensor, _)) = parse_window_key(&k) else {
                break;
            };
            // 0x01 sorts after every `sensor 0x00 …` key and before any longer id.
            from = [W_PREFIX, sensor.as_bytes(), &[1]].concat();
            out.push(sensor.to_string());
        }
        Ok(out)
    }

    /// Statistics (decodes every window once; the byte total comes from the counter).
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut sensors: Vec<SensorStats> = Vec::new();
        for kv in self.db.scan_prefix(W_PREFIX) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let Some((sensor, start)) = parse_window_key(&k) else {
                continue;
            };
            if sensors.last().is_none_or(|s| s.sensor != sensor) {
                let (sensor, first_start_ns) = (sensor.to_string(), start);
                sensors.push(SensorStats {
                    sensor,
                    first_start_ns,
                    ..Default::default()
                });
            }
            let s = sensors.last_mut().expect("pushed above");
            s.windows += 1;
            s.last_start_ns = start;
            match decode_record(sensor, start, &v) {
                Ok(r) => {
                    s.labelled += u64::from(!r.labels.is_empty());
                    s.flagged += u64::from(r.quality != 0);
                    s.scored += u64::from(!r.scores.is_empty());
                }
                Err(_) => s.corrupt += 1,
            }
        }
        Ok(StoreStats {
            path: self.path.clone(),
            windows: sensors.iter().map(|s| s.windows).sum(),
            sensors,
            encoded_bytes: self.writer().bytes,
            max_bytes: self.retention.max_bytes,
            size_on_disk: self.db.size_on_disk().map_err(|e| self.err(e))?,
        })
    }

    /// Makes every write so far durable (see "Durability" in the module docs): sled's flush,
    /// then fsync of new blob files, the `blobs/` folder and the log file, then the witness.
    /// Returns the bytes sled wrote.
    pub fn flush(&self) -> Result<usize, StoreError> {
        // Writes that completed before this point are covered by the flush below.
        let seq = self.writer().seq;
        let n = self.db.flush().map_err(|e| self.err(e))?;
        self.sync_blobs()?;
        self.log_file
            .sync_all()
            .map_err(io_err(&self.path.join("db")))?;
        if seq > self.witnessed.load(Ordering::Acquire) {
            use std::os::unix::fs::FileExt;
            let log_len = self
                .log_file
                .metadata()
                .map_err(io_err(&self.path.join("db")))?
                .len();
            let w = self.witness.lock().unwrap_or_else(|p| p.into_inner());
            let wp = self.path.join(WITNESS_FILE);
            // 24 bytes at offset 0 with their own CRC: a torn write reads as "no witness".
            w.write_all_at(&witness_bytes(Witness { seq, log_len }), 0)
                .map_err(io_err(&wp))?;
            w.sync_data().map_err(io_err(&wp))?;
            self.witnessed.fetch_max(seq, Ordering::AcqRel);
        }
        Ok(n)
    }

    /// fsyncs blob files sled created since the last call (their names are increasing LSNs),
    /// then the folder that holds them.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let dir = self.path.join("blobs");
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = *synced;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if synced.is_some_and(|s| lsn <= s) {
                continue;
            }
            match File::open(entry.path()) {
                Ok(f) => f.sync_all().map_err(io_err(&entry.path()))?,
                // Collected by sled meanwhile: nothing to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path())(e)),
            }
            newest = newest.max(Some(lsn));
        }
        if newest != *synced {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
            *synced = newest;
        }
        Ok(())
    }

    /// Writes the windows of `sensor` in `[since_ns, until_ns)` as CSV (`time_ns,ecg_uv`),
    /// one file `<sensor>_<start_ns>.csv` per contiguous run, into `out_dir` (created).
    ///
    /// A window continues the run if it starts within ±2 ms of the previous window's end;
    /// if it starts earlier (overlapping windows, hop < len) only its samples after the
    /// previous end are written, so no sample appears twice; a later start, or another
    /// sampling rate, starts a new file. Row `i` of a window is at
    /// `start_ns + round(i·1e9/fs)` with the window's own `start_ns`, so the windower's
    /// clock corrections are kept. Existing files are never overwritten: all file names are
    /// checked before anything is written (and files are created with `create_new`). A
    /// corrupt window fails the export with its key: export around it.
    pub fn export_csv(
        &self,
        sensor: &str,
        since_ns: i64,
        until_ns: i64,
        out_dir: &Path,
    ) -> Result<Vec<ExportedSegment>, StoreError> {
        let file_of = |start: i64| out_dir.join(format!("{sensor}_{start}.csv"));
        let mut prev = None;
        for rec in self.range(sensor, since_ns, until_ns) {
            let w = rec?.window;
            let path = file_of(w.start_ns);
            if export_step(prev, &w).is_none() && path.exists() {
                return Err(StoreError::Exists { path });
            }
            prev = Some((end_ns(&w), w.fs_hz));
        }
        fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;

        let mut segments = Vec::new();
        let mut open: Option<(BufWriter<File>, ExportedSegment)> = None;
        let mut prev = None;
        for rec in self.range(sensor, since_ns, until_ns) {
            let w = rec?.window;
            let skip = match export_step(prev, &w) {
                Some(skip) => skip,
                None => {
                    if let Some(done) = open.take() {
                        segments.push(finish_segment(done)?);
                    }
                    let path = file_of(w.start_ns);
                    let file = OpenOptions::new().write(true).create_new(true).open(&path);
                    let file = file.map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => StoreError::Exists { path: path.clone() },
                        _ => io_err(&path)(e),
                    })?;
                    let mut out = BufWriter::new(file);
                    writeln!(out, "time_ns,ecg_uv").map_err(io_err(&path))?;
                    let seg = ExportedSegment {
                        path,
                        n_samples: 0,
                        start_ns: w.start_ns,
                        n_windows: 0,
                    };
                    open = Some((out, seg));
                    0
                }
            };
            let (out, seg) = open.as_mut().expect("opened above");
            let dt = 1e9 / w.fs_hz;
            for (i, x) in w.samples.iter().enumerate().skip(skip) {
                let t = w.start_ns.saturating_add((i as f64 * dt).round() as i64);
                writeln!(out, "{t},{x}").map_err(io_err(&seg.path))?;
            }
            seg.n_samples += w.samples.len().saturating_sub(skip);
            seg.n_windows += 1;
            prev = Some((end_ns(&w), w.fs_hz));
        }
        if let Some(done) = open {
            segments.push(finish_segment(done)?);
        }
        Ok(segments)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, retention) = (&self.path, &self.retention);
        f.debug_struct("Store")
            .field("path", path)
            .field("retention", retention)
            .finish()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Errors cannot be reported here; callers that care call `flush` themselves. A
        // store whose last flush succeeded closed cleanly: the next open need not keep a
        // copy of the log first.
        if self.flush().is_ok() {
            let _ = File::create(self.path.join(CLEAN_MARKER)).and_then(|f| f.sync_all());
        }
    }
}

fn end_ns(w: &Window) -> i64 {
    w.start_ns.saturating_add(w.duration_ns())
}

/// `None`: `w` starts a new file; `Some(k)`: it continues the run, skipping its first `k`
/// samples (those overlapping the previous window). `prev` = (end_ns, fs) of the last window.
fn export_step(prev: Option<(i64, f64)>, w: &Window) -> Option<usize> {
    let (prev_end, fs) = prev?;
    if w.fs_hz.to_bits() != fs.to_bits() {
        return None;
    }
    let gap = w.start_ns.saturating_sub(prev_end);
    if gap.abs() <= CONTIGUITY_TOLERANCE_NS {
        Some(0)
    } else if gap < 0 {
        Some((gap.unsigned_abs() as f64 * w.fs_hz / 1e9).round() as usize)
    } else {
        None
    }
}

fn finish_segment(
    (mut out, seg): (BufWriter<File>, ExportedSegment),
) -> Result<ExportedSegment, StoreError> {
    out.flush().map_err(io_err(&seg.path))?;
    Ok(seg)
}

/// Iterator over stored windows in time order (see [`Store::range`]). An invalid sensor id
/// is reported as its only item; a corrupt window as an `Err` item, after which iteration
/// continues with the next window.
pub struct Windows {
    iter: Option<sled::Iter>,
    error: Option<StoreError>,
    path: PathBuf,
    unlabelled_only: bool,
}

impl Iterator for Windows {
    type Item = Result<StoredWindow, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        loop {
            let (k, v) = match self.iter.as_mut()?.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(db_err(&self.path, e))),
            };
            let rec = match parse_window_key(&k) {
                Some((sensor, start)) => decode_record(sensor, start, &v),
                None => Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "malformed key".into(),
                }),
            };
            match rec {
                Ok(r) if self.unlabelled_only && !r.labels.is_empty() => continue,
                other => return Some(other),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

fn checksum(sensor: &str, start_ns: i64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in [sensor.as_bytes(), &[0], &start_ns.to_le_bytes(), body] {
        h.update(part);
    }
    h.finalize()
}

/// Encodes a record (format 2, layout in the module docs). Fails on non-finite samples or
/// sampling rate, on names or counts too long for their length fields, and on records over
/// [`MAX_RECORD_BYTES`].
pub fn encode_record(rec: &StoredWindow) -> Result<Vec<u8>, StoreError> {
    encode_with(rec, None)
}

/// [`encode_record`], with the quantised samples (`f32 scale | n × i16`) given as they are:
/// a relabelled window keeps its stored samples bit for bit (quantising the decoded samples
/// again could move some by a little more than the documented half step).
fn encode_with(rec: &StoredWindow, quantised: Option<&[u8]>) -> Result<Vec<u8>, StoreError> {
    let w = &rec.window;
    let bad = |reason: String| StoreError::InvalidRecord {
        key: format!("{}/{}", rec.sensor, w.start_ns),
        reason,
    };
    if !(w.fs_hz.is_finite() && w.fs_hz > 0.0) {
        return Err(bad(format!("sampling rate {} Hz", w.fs_hz)));
    }
    if let Some(i) = w.samples.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!("sample {i} is {}", w.samples[i])));
    }
    let sensor_len = u8::try_from(rec.sensor.len())
        .map_err(|_| bad("sensor id longer than 255 bytes".into()))?;
    let n = u32::try_from(w.samples.len()).map_err(|_| bad("too many samples".into()))?;
    let mut out = Vec::with_capacity(64 + rec.sensor.len() + 2 * w.samples.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_V2);
    out.extend_from_slice(&[0; 4]); // `rest`, filled in below
    out.push(sensor_len);
    out.extend_from_slice(rec.sensor.as_bytes());
    out.extend_from_slice(&w.start_ns.to_le_bytes());
    let extras = [
        (FLAG_HR, rec.hr_bpm),
        (FLAG_RMSSD, rec.rmssd_ms),
        (FLAG_SDNN, rec.sdnn_ms),
    ];
    let mut flags = extras
        .iter()
        .filter(|(_, v)| v.is_some())
        .fold(0, |f, (bit, _)| f | bit);
    if rec.model.is_some() {
        flags |= FLAG_MODEL;
    }
    out.extend_from_slice(&[rec.quality, flags]);
    out.extend_from_slice(&w.index.to_le_bytes());
    out.extend_from_slice(&w.fs_hz.to_le_bytes());
    for v in extras.iter().filter_map(|(_, v)| *v) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(model) = &rec.model {
        let len = u16::try_from(model.len())
            .map_err(|_| bad("model version longer than 65535 bytes".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(model.as_bytes());
    }
    for (what, pairs) in [("scores", &rec.scores), ("labels", &rec.labels)] {
        let count =
            u16::try_from(pairs.len()).map_err(|_| bad(format!("more than 65535 {what}")))?;
        out.extend_from_slice(&count.to_le_bytes());
        for (name, v) in pairs {
            let len = u8::try_from(name.len())
                .map_err(|_| bad(format!("{what} name {name:?} longer than 255 bytes")))?;
            out.push(len);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&n.to_le_bytes());
    match quantised {
        Some(q) if q.len() == 4 + 2 * w.samples.len() => out.extend_from_slice(q),
        _ => quant::encode(&mut out, &w.samples),
    }
    if out.len() + 4 > MAX_RECORD_BYTES {
        return Err(bad(format!(
            "{} bytes encoded, more than the {MAX_RECORD_BYTES} a stored window may take",
            out.len() + 4
        )));
    }
    let rest = u32::try_from(out.len() + 4 - V2_PREFIX).expect("bounded above");
    out[MAGIC.len() + 1..V2_PREFIX].copy_from_slice(&rest.to_le_bytes());
    let crc = checksum(&rec.sensor, w.start_ns, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// `rec` (decoded from the valid value `old`, then changed) encoded in the current format
/// with `old`'s quantised samples as they are (they sit just before the CRC in every format).
fn reencode(rec: &StoredWindow, old: &[u8]) -> Result<Vec<u8>, StoreError> {
    let quantised_len = 4 + 2 * rec.window.samples.len();
    let quantised = old
        .len()
        .checked_sub(4 + quantised_len)
        .map(|from| &old[from..old.len() - 4]);
    encode_with(rec, quantised)
}

/// Magic, format byte and `rest`: the bytes before the length `rest` counts.
const V2_PREFIX: usize = 4 + 1 + 4;

/// Bounds-checked little-endian reader; every failure is a reason string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated in {what}"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn str(&mut self, n: usize, what: &str) -> Result<String, String> {
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn pairs(&mut self, what: &str) -> Result<Vec<(String, f32)>, String> {
        let count = u16::from_le_bytes(self.array(what)?);
        let mut out = Vec::with_capacity(usize::from(count).min(self.0.len() / 5));
        for _ in 0..count {
            let len = self.array::<1>(what)?[0];
            let name = self.str(usize::from(len), what)?;
            out.push((name, f32::from_le_bytes(self.array(what)?)));
        }
        Ok(out)
    }
}

/// Decodes a value stored under the key (`sensor`, `start_ns`). Any malformed input —
/// random bytes, truncation, a flipped bit — gives [`StoreError::Corrupt`], never a panic.
pub fn decode_record(
    sensor: &str,
    start_ns: i64,
    bytes: &[u8],
) -> Result<StoredWindow, StoreError> {
    decode_inner(sensor, start_ns, bytes).map_err(|reason| StoreError::Corrupt {
        key: format!("{sensor}/{start_ns}"),
        reason,
    })
}

fn decode_inner(sensor: &str, start_ns: i64, bytes: &[u8]) -> Result<StoredWindow, String> {
    match bytes.first() {
        None => Err("empty value".into()),
        Some(&FORMAT_V1) => decode_v1(sensor, start_ns, bytes),
        Some(&m) if m == MAGIC[0] => {
            let (rec, used) = decode_v2(bytes)?;
            if used != bytes.len() {
                return Err(format!("{} bytes after the record", bytes.len() - used));
            }
            if rec.sensor != sensor || rec.window.start_ns != start_ns {
                return Err(format!(
                    "the value belongs to window {}/{} (stored under the wrong key)",
                    rec.sensor, rec.window.start_ns
                ));
            }
            Ok(rec)
        }
        Some(f) => Err(format!(
            "unknown format byte {f} (written by a newer affectgate?)"
        )),
    }
}

/// Decodes a format-2 record at the start of `bytes` (which may go on past it, as in a raw
/// file): the record and the bytes it took. Every failure is a reason, never a panic.
pub(crate) fn decode_v2(bytes: &[u8]) -> Result<(StoredWindow, usize), String> {
    let mut r = Reader(bytes);
    if r.array::<4>("magic")? != MAGIC {
        return Err("no record magic".into());
    }
    match r.array::<1>("format")?[0] {
        FORMAT_V2 => {}
        f => {
            return Err(format!(
                "unknown format byte {f} (written by a newer affectgate?)"
            ))
        }
    }
    let rest = u32::from_le_bytes(r.array("length")?) as usize;
    if !(4..=MAX_RECORD_BYTES).contains(&rest) {
        return Err(format!("implausible record length {rest}"));
    }
    let used = V2_PREFIX + rest;
    let record = bytes
        .get(..used)
        .ok_or_else(|| format!("truncated: {used} bytes declared, {} present", bytes.len()))?;
    let (body, crc) = record.split_at(used - 4);
    let mut r = Reader(&body[V2_PREFIX..]);
    let len = r.array::<1>("sensor")?[0];
    let sensor = r.str(usize::from(len), "sensor")?;
    validate_sensor(&sensor).map_err(|e| e.to_string())?;
    let start_ns = i64::from_le_bytes(r.array("start")?);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = checksum(&sensor, start_ns, body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    Ok((decode_fields(sensor, start_ns, r)?, used))
}

fn decode_v1(sensor: &str, start_ns: i64, bytes: &[u8]) -> Result<StoredWindow, String> {
    let Some(body_len) = bytes.len().checked_sub(4).filter(|&l| l > 0) else {
        return Err("truncated: no checksum".into());
    };
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = checksum(sensor, start_ns, body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    decode_fields(sensor.to_string(), start_ns, Reader(&body[1..]))
}

/// The fields from `quality` to the last sample (both formats), which must end `r`.
fn decode_fields(sensor: String, start_ns: i64, mut r: Reader) -> Result<StoredWindow, String> {
    let [quality, flags] = r.array("header")?;
    if flags & !(FLAG_HR | FLAG_RMSSD | FLAG_SDNN | FLAG_MODEL) != 0 {
        return Err(format!("unknown flag bits {flags:#04x}"));
    }
    let index = u64::from_le_bytes(r.array("index")?);
    let fs_hz = f64::from_le_bytes(r.array("sampling rate")?);
    if !(fs_hz.is_finite() && fs_hz > 0.0) {
        return Err(format!("invalid sampling rate {fs_hz}"));
    }
    let mut opt = |bit: u8, what: &str| -> Result<Option<f32>, String> {
        (flags & bit != 0)
            .then(|| Ok(f32::from_le_bytes(r.array(what)?)))
            .transpose()
    };
    let (hr_bpm, rmssd_ms, sdnn_ms) = (
        opt(FLAG_HR, "hr")?,
        opt(FLAG_RMSSD, "rmssd")?,
        opt(FLAG_SDNN, "sdnn")?,
    );
    let model = if flags & FLAG_MODEL != 0 {
        let len = u16::from_le_bytes(r.array("model")?);
        Some(r.str(usize::from(len), "model")?)
    } else {
        None
    };
    let scores = r.pairs("scores")?;
    let labels = r.pairs("labels")?;
    let n = u32::from_le_bytes(r.array("sample count")?) as usize;
    let scale = f32::from_le_bytes(r.array("scale")?);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!("invalid scale {scale}"));
    }
    if r.0.len() != n.saturating_mul(2) {
        return Err(format!(
            "{n} samples declared but {} bytes of samples present",
            r.0.len()
        ));
    }
    let samples = quant::decode(scale, r.0);
    Ok(StoredWindow {
        sensor,
        window: Window {
            start_ns,
            fs_hz,
            samples,
            index,
        },
        quality,
        hr_bpm,
        rmssd_ms,
        sdnn_ms,
        scores,
        model,
        labels,
    })
}

// ---------------------------------------------------------------------------------------
// Display

use crate::time::utc_seconds as fmt_utc;

fn fmt_bytes(b: u64) -> String {
    match b {
        u64::MAX => "none".into(),
        0..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

impl fmt::Display for StoreStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "store {}: {} windows, {} encoded (limit {}), {} on disk",
            self.path.display(),
            self.windows,
            fmt_bytes(self.encoded_bytes),
            fmt_bytes(self.max_bytes),
            fmt_bytes(self.size_on_disk)
        )?;
        if self.sensors.is_empty() {
            return writeln!(f, "(no windows stored)");
        }
        let head = [
            "sensor", "windows", "labelled", "flagged", "scored", "corrupt",
        ];
        let mut rows = vec![head.map(String::from).to_vec()];
        rows[0].extend(["first (UTC)".into(), "last (UTC)".into()]);
        for s in &self.sensors {
            let counts = [s.windows, s.labelled, s.flagged, s.scored, s.corrupt];
            let mut row = vec![s.sensor.clone()];
            row.extend(counts.map(|n| n.to_string()));
            row.extend([fmt_utc(s.first_start_ns), fmt_utc(s.last_start_ns)]);
            rows.push(row);
        }
        let wid = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
        for r in &rows {
            let (s, first, last) = (&r[0], &r[6], &r[7]);
            let [w, l, fl, sc, co] = [&r[1], &r[2], &r[3], &r[4], &r[5]];
            writeln!(
                f,
                "{s:<wid$}  {w:>8}  {l:>8}  {fl:>8}  {sc:>8}  {co:>7}  {first:<19}  {last}"
            )?;
        }
        let corrupt: u64 = self.sensors.iter().map(|s| s.corrupt).sum();
        if corrupt > 0 {
            writeln!(
                f,
                "{corrupt} corrupt window(s): they read as errors and age out by retention"
            )?;
        }
        Ok(())
    }
}
