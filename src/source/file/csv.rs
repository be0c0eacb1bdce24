//! CSV reader for timestamped single-lead ECG.
//!
//! Two layouts are accepted (column names are case-insensitive, order is free):
//! - generic: a time column in seconds (`time`, `time_s` or `t`) and an ECG column
//!   (`ecg` or `ecg_uv` in µV, `ecg_mv` in mV);
//! - the Polar H10 phone-logger export: `time_ns` (Unix epoch, ns), `ecg_uv`, and
//!   the sensor's own sparse `hr_bpm` / `rr_ms` (mostly empty cells), which are
//!   returned as [`SideChannels`].
//!
//! The sample rate is estimated from the timestamps as `(n − 1) / (t_last −
//! t_first)`: the Polar H10 clock runs at ≈130.16 Hz, not the nominal 130 Hz, and
//! using the nominal rate would drift by ~0.7 s over ten minutes.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::{select_signal, AutoFallback, ReadError, Recording, SideChannels, SignalInfo};

const TIME_NS_NAMES: [&str; 1] = ["time_ns"];
const TIME_S_NAMES: [&str; 3] = ["time", "time_s", "t"];
const ECG_NAMES: [&str; 3] = ["ecg", "ecg_uv", "ecg_mv"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeUnit {
    /// Integer nanoseconds since the Unix epoch.
    EpochNs,
    /// Seconds (float) since an arbitrary zero.
    Seconds,
}

/// Read the ECG column of a CSV file, in µV.
pub fn read(path: &Path, signal: Option<&str>) -> Result<Recording, ReadError> {
    read_with_unit(path, signal).map(|(rec, _)| rec)
}

/// The ECG column [`read`] would pick, described as a signal.
pub fn list_signals(path: &Path) -> Result<Vec<SignalInfo>, ReadError> {
    let (rec, unit) = read_with_unit(path, None)?;
    Ok(vec![SignalInfo {
        label: rec.signal_label,
        fs_hz: rec.fs_hz,
        unit: unit.to_string(),
        n_samples: rec.samples_uv.len() as u64,
    }])
}

/// Unit implied by an ECG column name, and its factor to µV.
fn column_unit(lower_name: &str) -> (&'static str, f64) {
    if lower_name.ends_with("_mv") {
        ("mV", 1000.0)
    } else {
        ("uV", 1.0)
    }
}

fn read_with_unit(
    path: &Path,
    signal: Option<&str>,
) -> Result<(Recording, &'static str), ReadError> {
    let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(::csv::Trim::All)
        .comment(Some(b'#'))
        .flexible(false)
        .from_reader(BufReader::new(file));

    let names: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    if names.iter().all(String::is_empty) {
        return Err(ReadError::invalid(
            path,
            "empty file: expected a header row such as `time_ns,ecg_uv` or `time,ecg`",
        ));
    }
    let lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    let find = |accepted: &[&str]| lower.iter().position(|n| accepted.contains(&n.as_str()));

    let (time_col, time_unit) = match (find(&TIME_NS_NAMES), find(&TIME_S_NAMES)) {
        (Some(c), _) => (c, TimeUnit::EpochNs),
        (None, Some(c)) => (c, TimeUnit::Seconds),
        (None, None) => {
            return Err(ReadError::MissingColumn {
                path: path.to_path_buf(),
                what: "time",
                found: names.clone(),
                accepted: TIME_NS_NAMES.iter().chain(&TIME_S_NAMES).copied().collect(),
            })
        }
    };
    let ecg_col = match signal {
        Some(_) => {
            // Any column but the time column can be asked for by name.
            let candidates: Vec<usize> = (0..names.len()).filter(|&c| c != time_col).collect();
            let labels: Vec<String> = candidates.iter().map(|&c| names[c].clone()).collect();
            candidates[select_signal(path, &labels, signal, AutoFallback::Error)?]
        }
        None => find(&ECG_NAMES).ok_or_else(|| ReadError::MissingColumn {
            path: path.to_path_buf(),
            what: "ECG",
            found: names.clone(),
            accepted: ECG_NAMES.to_vec(),
        })?,
    };
    let (unit, to_uv) = column_unit(&lower[ecg_col]);
    let hr_col = lower.iter().position(|n| n == "hr_bpm");
    let rr_col = lower.iter().position(|n| n == "rr_ms");

    let mut samples: Vec<f32> = Vec::new();
    let mut times: Vec<i64> = Vec::new();
    let mut side = SideChannels::default();
    let mut record = ::csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, e)),
        }
        let byte = record.position().map_or(0, |p| p.byte());
        let cell = |c: usize| record.get(c).unwrap_or("");
        // Line numbers are only computed on the error path (see `line_at`).
        let bad = |c: usize, detail: String| ReadError::BadValue {
            path: path.to_path_buf(),
            line: line_at(path, byte),
            column: names[c].clone(),
            detail,
        };

        let t_text = cell(time_col);
        let t = match time_unit {
            TimeUnit::EpochNs => t_text.parse::<i64>().map_err(|_| {
                bad(
                    time_col,
                    format!("{t_text:?} is not an integer nanosecond timestamp"),
                )
            })?,
            TimeUnit::Seconds => parse_number(t_text)
                .map(|s| s * 1e9)
                .filter(|ns| ns.abs() < 9.0e18)
                .map(|ns| ns.round() as i64)
                .ok_or_else(|| bad(time_col, format!("{t_text:?} is not a time in seconds")))?,
        };
        if let Some(&prev) = times.last() {
            if t < prev {
                return Err(bad(
                    time_col,
                    format!("time goes backwards ({t_text} is earlier than the previous row)"),
                ));
            }
        }
        let e_text = cell(ecg_col);
        let v = parse_number(e_text)
            .ok_or_else(|| bad(ecg_col, format!("{e_text:?} is not a number")))?;
        // Finite as f64 is not enough: 1e65 mV overflows the f32 µV sample to infinity.
        let uv = (v * to_uv) as f32;
        if !uv.is_finite() {
            return Err(bad(
                ecg_col,
                format!("{e_text:?} is far outside any ECG range (not representable in µV)"),
            ));
        }
        samples.push(uv);
        times.push(t);

        for (col, out) in [(hr_col, &mut side.hr_bpm), (rr_col, &mut side.rr_ms)] {
            if let Some(c) = col {
                let text = cell(c);
                if !text.is_empty() {
                    let v = parse_number(text)
                        .map(|v| v as f32)
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| bad(c, format!("{text:?} is not a number in range")))?;
                    out.push((t, v));
                }
            }
        }
    }

    let n = samples.len();
    let (first, last) = match (times.first(), times.last()) {
        (Some(&f), Some(&l)) if n >= 2 => (f, l),
        _ => {
            return Err(ReadError::invalid(
                path,
                format!("only {n} data rows; at least 2 are needed to estimate the sample rate"),
            ))
        }
    };
    let span_ns = i128::from(last) - i128::from(first);
    if span_ns <= 0 {
        return Err(ReadError::invalid(
            path,
            "all timestamps are equal, so the sample rate cannot be estimated",
        ));
    }
    let fs_hz = (n - 1) as f64 / (span_ns as f64 / 1e9);

    let recording = Recording {
        path: path.to_path_buf(),
        signal_label: names[ecg_col].clone(),
        fs_hz,
        samples_uv: samples,
        start_unix_ns: (time_unit == TimeUnit::EpochNs).then_some(first),
        timestamps_ns: Some(times),
        side: (hr_col.is_some() || rr_col.is_some()).then_some(side),
    };
    Ok((recording, unit))
}

/// A finite decimal number ("nan"/"inf" are rejected: they are never valid ECG).
fn parse_number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn csv_error(path: &Path, err: ::csv::Error) -> ReadError {
    let byte = err.position().map_or(0, |p| p.byte());
    match err.into_kind() {
        ::csv::ErrorKind::Io(e) => ReadError::io(path, e),
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => ReadError::invalid(
            path,
            format!(
                "line {}: row has {len} fields but the header has {expected_len} \
                 (truncated or malformed row)",
                line_at(path, byte)
            ),
        ),
        ::csv::ErrorKind::Utf8 { .. } => ReadError::invalid(
            path,
            format!(
                "line {}: not valid UTF-8 text (is this really a CSV file?)",
                line_at(path, byte)
            ),
        ),
        other => ReadError::invalid(path, format!("CSV error: {other:?}")),
    }
}

/// 1-based line of the record the csv parser reports at byte offset `byte`.
///
/// The csv crate's own line counter is off by one for CRLF files (and stays at 1
/// for CR-only files), so lines are recounted here, and only when an error is
/// reported: LF, CRLF and a lone CR each end a line, and blank lines before the
/// record (which the parser skips) are counted too. Returns 0 if the file cannot
/// be re-read.
fn line_at(path: &Path, byte: u64) -> u64 {
    use std::io::Read;
    let Ok(file) = File::open(path) else {
        return 0;
    };
    let mut line = 1;
    let mut prev_cr = false;
    for (i, b) in BufReader::new(file).bytes().enumerate() {
        let Ok(b) = b else { return 0 };
        if i as u64 >= byte && b != b'\n' && b != b'\r' {
            break;
        }
        match b {
            b'\r' => line += 1,
            b'\n' if !prev_cr => line += 1,
            _ => {}
        }
        prev_cr = b == b'\r';
    }
    line
}
