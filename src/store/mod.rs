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
//! ## Value encoding (format 1, little-endian, hand-written; see [`encode_record`])
//! ```text
//! u8 format=1 | u8 quality | u8 flags (bit0 hr, bit1 rmssd, bit2 sdnn, bit3 model)
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
//! ## Durability
//! sled 0.34 has reports of databases that no longer open after an abrupt power loss or
//! SIGKILL (sled issues #1533, #1527, #1166). So: each window, its index entry and the byte
//! counter go in one atomic batch (after recovery a window is all there or absent); sled's
//! background flusher (every 500 ms) bounds what a crash loses, and [`Store::flush`] lets
//! the gateway flush at points it chooses (periodically, at shutdown); dropping a [`Store`]
//! flushes too. A database sled cannot open is reported as [`StoreError::Damaged`] with
//! what to do, rather than as a bare sled error. The page cache is capped at 64 MiB (sled's
//! default of 1 GiB is too much for a gateway).
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

pub use config::StoreConfig;

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::dsp::Window;
use crate::model::quant;

const FORMAT_V1: u8 = 1;
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
        "store {} is damaged and cannot be opened ({source}); this can happen after an abrupt \
         power loss: move the directory aside (an empty store is then created) or restore a backup",
        path.display()
    )]
    Damaged { path: PathBuf, source: sled::Error },
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
        sled::Error::Corruption { .. } => StoreError::Damaged { path, source },
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
    /// Serialises writers; holds the value of `m/bytes` as last written.
    total: Mutex<u64>,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
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
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| db_err(path, e))?;
        let stored = db.get(BYTES_KEY).map_err(|e| db_err(path, e))?;
        let total = match stored.as_deref().map(<[u8; 8]>::try_from) {
            Some(Ok(b)) => u64::from_le_bytes(b),
            // Missing (new store) or malformed: recount from the keys (values are not decoded).
            _ => {
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
        Ok(Store {
            db,
            path: path.to_path_buf(),
            retention,
            total: Mutex::new(total),
            _lock: lock,
        })
    }

    fn err(&self, e: sled::Error) -> StoreError {
        db_err(&self.path, e)
    }

    fn writer(&self) -> MutexGuard<'_, u64> {
        // The counter is only updated after its batch applied, so a poisoned value is valid.
        self.total.lock().unwrap_or_else(|p| p.into_inner())
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
        let (sensor, start) = (rec.sensor.as_str(), rec.window.start_ns);
        let wkey = window_key(sensor, start);
        let mut total = self.writer();
        let old = self.db.get(&wkey).map_err(|e| self.err(e))?;
        let new_total = total.saturating_sub(old.map_or(0, |v| footprint(sensor.len(), v.len())))
            + footprint(sensor.len(), value.len());
        let mut batch = sled::Batch::default();
        batch.insert(wkey, value);
        batch.insert(time_key(start, sensor), &[][..]);
        batch.insert(BYTES_KEY, &new_total.to_le_bytes());
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        *total = new_total;
        if new_total > self.retention.max_bytes {
            self.drop_oldest(&mut total, None)?;
        }
        Ok(())
    }

    /// Drops every window starting before `now_ns - max_age_ns`, then the oldest windows while
    /// the store exceeds `max_bytes`. Cheap when there is nothing to drop (one key lookup).
    pub fn enforce_retention(&self, now_ns: i64) -> Result<RetentionReport, StoreError> {
        let cutoff = now_ns.saturating_sub(self.retention.max_age_ns);
        let mut total = self.writer();
        self.drop_oldest(&mut total, Some(cutoff))
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
        let mut total = self.writer();
        let Some(old) = self.db.get(&wkey).map_err(|e| self.err(e))? else {
            return Ok(false);
        };
        let mut rec = decode_record(sensor, start_ns, &old)?;
        rec.labels = labels.to_vec();
        let value = encode_record(&rec)?;
        let new_total = total.saturating_sub(footprint(sensor.len(), old.len()))
            + footprint(sensor.len(), value.len());
        let mut batch = sled::Batch::default();
        batch.insert(wkey, value);
        batch.insert(BYTES_KEY, &new_total.to_le_bytes());
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        *total = new_total;
        if new_total > self.retention.max_bytes {
            self.drop_oldest(&mut total, None)?;
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
            encoded_bytes: *self.writer(),
            max_bytes: self.retention.max_bytes,
            size_on_disk: self.db.size_on_disk().map_err(|e| self.err(e))?,
        })
    }

    /// Flushes sled's dirty pages to disk; returns the bytes written.
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.db.flush().map_err(|e| self.err(e))
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
        // Errors cannot be reported here; callers that care call `flush` themselves.
        let _ = self.db.flush();
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

/// Encodes a record (format 1, layout in the module docs). Fails on non-finite samples or
/// sampling rate, and on names or counts too long for their length fields.
pub fn encode_record(rec: &StoredWindow) -> Result<Vec<u8>, StoreError> {
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
    let n = u32::try_from(w.samples.len()).map_err(|_| bad("too many samples".into()))?;
    let mut out = Vec::with_capacity(64 + 2 * w.samples.len());
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
    out.extend_from_slice(&[FORMAT_V1, rec.quality, flags]);
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
    quant::encode(&mut out, &w.samples);
    let crc = checksum(&rec.sensor, w.start_ns, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

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
        None => return Err("empty value".into()),
        Some(&FORMAT_V1) => {}
        Some(f) => {
            return Err(format!(
                "unknown format byte {f} (written by a newer affectgate?)"
            ))
        }
    }
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
    let mut r = Reader(&body[1..]);
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
        sensor: sensor.to_string(),
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
