//! Recorded-ECG file readers: EDF/EDF+, WFDB (MIT format) and CSV.
//!
//! This module owns everything needed to turn an ECG file on disk into one
//! calibrated signal in microvolts: format detection, header parsing, digital →
//! physical conversion, unit normalisation, signal selection and error reporting.
//! Training, evaluation and file replay all read recordings through
//! [`read_recording`], so a file that trains a model is decoded exactly the same
//! way when it is later replayed through the gateway or used to score it.
//!
//! Design rules shared by the three readers:
//! - Never panic on any input. Every size read from a file is validated against
//!   the real file length with checked arithmetic *before* anything is allocated,
//!   so a corrupt header cannot make us allocate gigabytes or overflow.
//! - Every error names the file it is about (see [`ReadError`]) and says what is
//!   wrong and, where there is something to do, what to do.
//! - Only the chosen signal is materialised; other signals in the file are
//!   skipped while streaming (EDF, WFDB) so multi-channel files stay cheap.
//!
//! The submodules are self-contained (std + `thiserror` + `csv`) and refer to
//! this module only through `super::`, so the tree can be mounted anywhere.

pub mod csv;
pub mod edf;
pub mod wfdb;

pub use self::wfdb::{is_beat, read_wfdb_annotations, Annotation};

use std::fmt;
use std::path::{Path, PathBuf};

/// One calibrated ECG signal read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The path the recording was read from (as given by the caller).
    pub path: PathBuf,
    /// Label of the chosen signal, e.g. `"ECG ECG"`, `"MLII"`, `"ecg_uv"`.
    pub signal_label: String,
    /// Nominal sample rate of the chosen signal. For CSV it is estimated from
    /// the timestamps as `(n − 1) / (t_last − t_first)` (Polar H10: ≈130.16 Hz).
    pub fs_hz: f64,
    /// Physical values converted to microvolts.
    pub samples_uv: Vec<f32>,
    /// Start time (Unix epoch, ns) if the file states it: EDF start date/time
    /// (plus the EDF+ sub-second offset), WFDB base time + base date, CSV first
    /// `time_ns`.
    pub start_unix_ns: Option<i64>,
    /// Per-sample times when the file has them (CSV), else `None`. For CSV files
    /// with a `time`/`time_s`/`t` column in seconds these are relative to the
    /// file's time zero, not to the Unix epoch.
    pub timestamps_ns: Option<Vec<i64>>,
    /// Sensor-reported side channels (Polar CSV `hr_bpm`, `rr_ms`), if present.
    pub side: Option<SideChannels>,
}

impl Recording {
    /// Duration in seconds implied by the sample count and the nominal rate.
    pub fn duration_s(&self) -> f64 {
        if self.fs_hz > 0.0 {
            self.samples_uv.len() as f64 / self.fs_hz
        } else {
            0.0
        }
    }
}

/// Sparse side channels reported by a sensor alongside the ECG.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideChannels {
    /// Sensor heart rate, `(time_ns, bpm)`; only rows where the cell is non-empty.
    pub hr_bpm: Vec<(i64, f32)>,
    /// Sensor RR intervals, `(time_ns, ms)`; only rows where the cell is non-empty.
    pub rr_ms: Vec<(i64, f32)>,
}

/// Description of one signal in a file, as returned by [`list_signals`].
#[derive(Debug, Clone, PartialEq)]
pub struct SignalInfo {
    pub label: String,
    pub fs_hz: f64,
    /// Physical unit as written in the file (e.g. `"mV"`, `"uV"`).
    pub unit: String,
    pub n_samples: u64,
}

/// Counters collected while reading, for callers that want to report data quality.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// WFDB samples carrying the "invalid" sentinel (−32768 in format 16, −2048 in
    /// format 212). Each was replaced by the previous valid value (a leading run by
    /// the first valid value).
    pub invalid_samples: u64,
}

/// File formats understood by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Edf,
    Wfdb,
    Csv,
}

impl Format {
    /// Format implied by the file extension (case-insensitive): `.edf`/`.rec` → EDF,
    /// `.hea`/`.dat` → WFDB, `.csv` → CSV.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "edf" | "rec" => Some(Format::Edf),
            "hea" | "dat" => Some(Format::Wfdb),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Edf => "EDF",
            Format::Wfdb => "WFDB",
            Format::Csv => "CSV",
        })
    }
}

/// Why a file could not be read. Every variant's message starts with the path of
/// the file at fault (for WFDB that may be the `.hea`, `.dat` or `.atr` file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("{}: cannot read file: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{}: unknown file type; expected .edf/.rec (EDF), .hea/.dat (WFDB) or .csv \
         (rename the file or convert it)",
        .path.display()
    )]
    UnknownFormat { path: PathBuf },

    #[error("{}: invalid {format} header: {detail}", .path.display())]
    Header {
        path: PathBuf,
        format: Format,
        detail: String,
    },

    #[error(
        "{}: file is truncated or its header is wrong: the header implies {expected} bytes \
         but the file has {actual}",
        .path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{}: signal {signal:?} has unsupported physical unit {unit:?}; supported units are \
         nV, uV/µV, mV and V",
        .path.display()
    )]
    UnknownUnit {
        path: PathBuf,
        signal: String,
        unit: String,
    },

    #[error(
        "{}: no signal matches {wanted:?}; signals in this file: [{}]",
        .path.display(),
        .available.join(", ")
    )]
    SignalNotFound {
        path: PathBuf,
        wanted: String,
        available: Vec<String>,
    },

    #[error(
        "{}: no ECG signal found (looked for a label containing \"ECG\" or \"EKG\"); signals \
         in this file: [{}]; pass the label of the signal to read",
        .path.display(),
        .available.join(", ")
    )]
    NoEcgSignal {
        path: PathBuf,
        available: Vec<String>,
    },

    #[error(
        "{}: no {what} column; columns found: [{}]; accepted names (case-insensitive): [{}]",
        .path.display(),
        .found.join(", "),
        .accepted.join(", ")
    )]
    MissingColumn {
        path: PathBuf,
        what: &'static str,
        found: Vec<String>,
        accepted: Vec<&'static str>,
    },

    #[error("{}: line {line}, column {column:?}: {detail}", .path.display())]
    BadValue {
        path: PathBuf,
        line: u64,
        column: String,
        detail: String,
    },

    #[error(
        "{}: checksum mismatch for signal {signal:?}: header says {expected}, data gives \
         {actual}; the data file is corrupt or does not belong to this header",
        .path.display()
    )]
    Checksum {
        path: PathBuf,
        signal: String,
        expected: i64,
        actual: i64,
    },

    #[error("{}: not supported: {detail}", .path.display())]
    Unsupported { path: PathBuf, detail: String },

    #[error("{}: {detail}", .path.display())]
    Invalid { path: PathBuf, detail: String },
}

impl ReadError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::Io { path, .. }
            | ReadError::UnknownFormat { path }
            | ReadError::Header { path, .. }
            | ReadError::Truncated { path, .. }
            | ReadError::UnknownUnit { path, .. }
            | ReadError::SignalNotFound { path, .. }
            | ReadError::NoEcgSignal { path, .. }
            | ReadError::MissingColumn { path, .. }
            | ReadError::BadValue { path, .. }
            | ReadError::Checksum { path, .. }
            | ReadError::Unsupported { path, .. }
            | ReadError::Invalid { path, .. } => path,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn header(path: &Path, format: Format, detail: impl Into<String>) -> Self {
        ReadError::Header {
            path: path.to_path_buf(),
            format,
            detail: detail.into(),
        }
    }

    fn invalid(path: &Path, detail: impl Into<String>) -> Self {
        ReadError::Invalid {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    fn unsupported(path: &Path, detail: impl Into<String>) -> Self {
        ReadError::Unsupported {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// Detect the format of `path` from its extension.
pub fn detect_format(path: &Path) -> Result<Format, ReadError> {
    Format::from_path(path).ok_or_else(|| ReadError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

/// Read one ECG signal from an EDF/EDF+, WFDB or CSV file, in microvolts.
///
/// The format is chosen by extension (`.edf`/`.rec` → EDF, `.hea`/`.dat` → WFDB,
/// where a `.dat` is read through the `.hea` beside it, `.csv` → CSV).
///
/// `signal` picks a signal by label: an exact case-insensitive match wins,
/// otherwise the first label containing it (case-insensitive). `None` picks
/// automatically: the first label containing "ECG" or "EKG"; for WFDB the first
/// signal if none does (MIT-BIH leads are named e.g. "MLII"); for CSV the column
/// named `ecg`, `ecg_uv` or `ecg_mv`.
pub fn read_recording(path: &Path, signal: Option<&str>) -> Result<Recording, ReadError> {
    read_recording_with_stats(path, signal).map(|(rec, _)| rec)
}

/// [`read_recording`] plus data-quality counters.
pub fn read_recording_with_stats(
    path: &Path,
    signal: Option<&str>,
) -> Result<(Recording, ReadStats), ReadError> {
    match detect_format(path)? {
        Format::Edf => self::edf::read(path, signal).map(|r| (r, ReadStats::default())),
        Format::Wfdb => self::wfdb::read(path, signal),
        Format::Csv => self::csv::read(path, signal).map(|r| (r, ReadStats::default())),
    }
}

/// List the signals a file holds (label, rate, unit, sample count) without
/// decoding sample data where the format allows (EDF, WFDB). For CSV the file is
/// parsed, since its rate and length are only known from the rows; the entry
/// listed is the ECG column [`read_recording`] would pick.
pub fn list_signals(path: &Path) -> Result<Vec<SignalInfo>, ReadError> {
    match detect_format(path)? {
        Format::Edf => self::edf::list_signals(path),
        Format::Wfdb => self::wfdb::list_signals(path),
        Format::Csv => self::csv::list_signals(path),
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the readers.
// ---------------------------------------------------------------------------

/// How a reader falls back when the caller did not name a signal and no label
/// mentions ECG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AutoFallback {
    /// Error (EDF: a file of EEG channels must not silently yield an EEG channel).
    Error,
    /// Take the first signal (WFDB: ECG databases name leads, e.g. "MLII").
    First,
}

/// Pick a signal index from `labels` (see [`read_recording`] for the rules).
fn select_signal(
    path: &Path,
    labels: &[String],
    wanted: Option<&str>,
    fallback: AutoFallback,
) -> Result<usize, ReadError> {
    match wanted {
        Some(w) => {
            let w_lower = w.trim().to_lowercase();
            labels
                .iter()
                .position(|l| l.trim().to_lowercase() == w_lower)
                .or_else(|| {
                    labels
                        .iter()
                        .position(|l| l.to_lowercase().contains(&w_lower))
                })
                .ok_or_else(|| ReadError::SignalNotFound {
                    path: path.to_path_buf(),
                    wanted: w.to_string(),
                    available: labels.to_vec(),
                })
        }
        None => {
            let auto = labels.iter().position(|l| {
                let u = l.to_uppercase();
                u.contains("ECG") || u.contains("EKG")
            });
            match (auto, fallback) {
                (Some(i), _) => Ok(i),
                (None, AutoFallback::First) if !labels.is_empty() => Ok(0),
                _ => Err(ReadError::NoEcgSignal {
                    path: path.to_path_buf(),
                    available: labels.to_vec(),
                }),
            }
        }
    }
}

/// Factor that converts a value in `unit` to microvolts, or `None` if the unit is
/// not a voltage we know. Matching is case-insensitive on the prefix because
/// files in the wild write "mv"/"UV"; "MV" is read as millivolts since megavolts
/// cannot occur in ECG.
fn unit_to_uv(unit: &str) -> Option<f64> {
    let u = unit.trim();
    // µ may arrive as U+00B5 (micro sign) or U+03BC (Greek mu).
    let u = u.replace(['\u{b5}', '\u{3bc}'], "u").to_ascii_lowercase();
    match u.as_str() {
        "nv" => Some(1e-3),
        "uv" => Some(1.0),
        "mv" => Some(1e3),
        "v" => Some(1e6),
        _ => None,
    }
}

use crate::time::civil_to_unix_ns;

/// Decode a fixed-width header text field: UTF-8 if valid, else Latin-1 (EDF
/// writers use the 0xB5 byte for "µ"), with surrounding spaces and NULs removed.
fn header_text(bytes: &[u8]) -> String {
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::days_from_civil;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(
            civil_to_unix_ns(2011, 1, 1, 0, 0, 0, 0),
            Some(1_293_840_000 * 1_000_000_000)
        );
        assert_eq!(
            civil_to_unix_ns(1999, 12, 31, 23, 59, 59, 0),
            Some(946_684_799 * 1_000_000_000)
        );
        assert_eq!(
            civil_to_unix_ns(2024, 2, 29, 12, 0, 0, 0),
            Some(1_709_208_000 * 1_000_000_000)
        );
        assert_eq!(civil_to_unix_ns(2023, 2, 29, 0, 0, 0, 0), None);
        assert_eq!(civil_to_unix_ns(2023, 13, 1, 0, 0, 0, 0), None);
        assert_eq!(civil_to_unix_ns(2023, 1, 1, 24, 0, 0, 0), None);
    }

    #[test]
    fn units() {
        assert_eq!(unit_to_uv("uV"), Some(1.0));
        assert_eq!(unit_to_uv("µV"), Some(1.0));
        assert_eq!(unit_to_uv(" mV "), Some(1000.0));
        assert_eq!(unit_to_uv("V"), Some(1e6));
        assert_eq!(unit_to_uv("degC"), None);
        assert_eq!(unit_to_uv(""), None);
    }

    #[test]
    fn selection() {
        let p = Path::new("x.edf");
        let labels: Vec<String> = ["EEG Fp1", "ECG2", "ECG"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            select_signal(p, &labels, None, AutoFallback::Error).unwrap(),
            1
        );
        assert_eq!(
            select_signal(p, &labels, Some("ecg"), AutoFallback::Error).unwrap(),
            2
        );
        assert_eq!(
            select_signal(p, &labels, Some("fp1"), AutoFallback::Error).unwrap(),
            0
        );
        assert!(select_signal(p, &labels, Some("emg"), AutoFallback::Error).is_err());
        let leads: Vec<String> = ["MLII", "V5"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            select_signal(p, &leads, None, AutoFallback::First).unwrap(),
            0
        );
        let err = select_signal(p, &leads, None, AutoFallback::Error).unwrap_err();
        assert!(err.to_string().contains("x.edf") && err.to_string().contains("MLII"));
    }
}
