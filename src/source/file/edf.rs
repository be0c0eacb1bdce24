//! EDF and EDF+ reader (16-bit European Data Format).
//!
//! Layout: a 256-byte fixed header, then 256 bytes per signal stored field-major
//! (all labels, then all transducers, ...), then `n_records` data records. Each
//! record holds, per signal in header order, `samples_per_record` little-endian
//! `i16` values, so signals may have different rates within one file.
//!
//! EDF+ adds "EDF Annotations" signals (text, not samples); they are never offered
//! as signals, but their first time-keeping annotation is used for the sub-second
//! start offset and, for discontinuous (EDF+D) files, to check that records are in
//! fact contiguous: a recording with gaps cannot be returned as one sample vector,
//! so gaps are an error rather than silently concatenated data.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{
    civil_to_unix_ns, header_text, select_signal, unit_to_uv, AutoFallback, Format, ReadError,
    Recording, SignalInfo,
};

const FIXED_HEADER_BYTES: u64 = 256;
const SIGNAL_HEADER_BYTES: u64 = 256;
const ANNOTATION_LABEL: &str = "EDF Annotations";

/// One signal's header fields. Calibration fields are kept as text and only parsed
/// for the signal actually read, so one badly described unused channel does not
/// make the whole file unreadable.
#[derive(Debug, Clone)]
struct SignalHeader {
    label: String,
    unit: String,
    phys_min: String,
    phys_max: String,
    dig_min: String,
    dig_max: String,
    samples_per_record: u64,
    /// Byte offset of this signal's block inside a data record.
    offset_in_record: u64,
    is_annotation: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdfKind {
    Edf,
    EdfPlusContinuous,
    EdfPlusDiscontinuous,
}

#[derive(Debug, Clone)]
struct Header {
    kind: EdfKind,
    n_records: u64,
    record_duration_s: f64,
    header_bytes: u64,
    record_bytes: u64,
    start_unix_ns: Option<i64>,
    signals: Vec<SignalHeader>,
}

impl Header {
    fn data_signal_indices(&self) -> Vec<usize> {
        (0..self.signals.len())
            .filter(|&i| !self.signals[i].is_annotation)
            .collect()
    }

    fn fs_hz(&self, s: &SignalHeader) -> f64 {
        s.samples_per_record as f64 / self.record_duration_s
    }
}

/// Read one signal of an EDF/EDF+ file, converted to µV.
pub fn read(path: &Path, signal: Option<&str>) -> Result<Recording, ReadError> {
    let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ReadError::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let header = parse_header(path, &mut reader, file_len)?;

    let data_idx = header.data_signal_indices();
    let labels: Vec<String> = data_idx
        .iter()
        .map(|&i| header.signals[i].label.clone())
        .collect();
    if labels.is_empty() {
        return Err(ReadError::invalid(
            path,
            "file holds only EDF+ annotation signals, no sampled signal",
        ));
    }
    let chosen = data_idx[select_signal(path, &labels, signal, AutoFallback::Error)?];
    let sig = &header.signals[chosen];

    // Calibration: physical = phys_min + (digital - dig_min) * gain.
    let num = |field: &str, name: &str| -> Result<f64, ReadError> {
        parse_f64(field).ok_or_else(|| {
            ReadError::header(
                path,
                Format::Edf,
                format!("signal {:?}: {name} {field:?} is not a number", sig.label),
            )
        })
    };
    let (pmin, pmax) = (
        num(&sig.phys_min, "physical minimum")?,
        num(&sig.phys_max, "physical maximum")?,
    );
    let (dmin, dmax) = (
        num(&sig.dig_min, "digital minimum")?,
        num(&sig.dig_max, "digital maximum")?,
    );
    if dmax <= dmin || pmax == pmin {
        return Err(ReadError::header(
            path,
            Format::Edf,
            format!(
                "signal {:?}: cannot calibrate: digital range {dmin}..{dmax}, physical range \
                 {pmin}..{pmax} (digital max must exceed min, physical range must be non-empty)",
                sig.label
            ),
        ));
    }
    let gain = (pmax - pmin) / (dmax - dmin);
    let to_uv = unit_to_uv(&sig.unit).ok_or_else(|| ReadError::UnknownUnit {
        path: path.to_path_buf(),
        signal: sig.label.clone(),
        unit: sig.unit.clone(),
    })?;
    if sig.samples_per_record == 0 {
        return Err(ReadError::invalid(
            path,
            format!("signal {:?} has 0 samples per record", sig.label),
        ));
    }

    // The header was validated against the file length, so this product is bounded
    // by the file size and the allocation below is safe.
    let n_samples = header
        .n_records
        .checked_mul(sig.samples_per_record)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ReadError::invalid(path, "sample count does not fit in memory"))?;
    if n_samples == 0 {
        return Err(ReadError::invalid(path, "file contains no data records"));
    }
    let mut samples = Vec::with_capacity(n_samples);

    // The first annotation signal carries the time-keeping annotation of each record.
    let annotation = header.signals.iter().find(|s| s.is_annotation);
    let max_fs = data_idx
        .iter()
        .map(|&i| header.fs_hz(&header.signals[i]))
        .fold(0.0_f64, f64::max);
    let mut first_onset: Option<f64> = None;

    let record_len = usize::try_from(header.record_bytes)
        .map_err(|_| ReadError::invalid(path, "data record too large"))?;
    let mut record = vec![0u8; record_len];
    let start = usize::try_from(sig.offset_in_record).unwrap_or(usize::MAX);
    let end = start.saturating_add(n_bytes_of(sig.samples_per_record));
    for k in 0..header.n_records {
        reader.read_exact(&mut record).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // The length was checked up front; the file shrank while we read it.
                ReadError::Truncated {
                    path: path.to_path_buf(),
                    expected: header.header_bytes + header.n_records * header.record_bytes,
                    actual: header.header_bytes + k * header.record_bytes,
                }
            } else {
                ReadError::io(path, e)
            }
        })?;
        let block = record
            .get(start..end)
            .ok_or_else(|| ReadError::invalid(path, "signal block outside data record"))?;
        samples.extend(block.chunks_exact(2).map(|b| {
            let d = f64::from(i16::from_le_bytes([b[0], b[1]]));
            ((pmin + (d - dmin) * gain) * to_uv) as f32
        }));

        if let (Some(ann), EdfKind::EdfPlusContinuous | EdfKind::EdfPlusDiscontinuous) =
            (annotation, header.kind)
        {
            let a_start = usize::try_from(ann.offset_in_record).unwrap_or(usize::MAX);
            let a_end = a_start.saturating_add(n_bytes_of(ann.samples_per_record));
            let onset = record.get(a_start..a_end).and_then(record_onset);
            match (first_onset, onset) {
                (None, Some(t)) if k == 0 => first_onset = Some(t),
                (Some(t0), Some(t)) if header.kind == EdfKind::EdfPlusDiscontinuous => {
                    let expected = t0 + k as f64 * header.record_duration_s;
                    let tolerance = if max_fs > 0.0 { 0.5 / max_fs } else { 1e-6 };
                    if (t - expected).abs() > tolerance {
                        return Err(ReadError::unsupported(
                            path,
                            format!(
                                "EDF+D data record {k} starts at {t} s but a contiguous \
                                 recording would start it at {expected} s; recordings with \
                                 gaps cannot be read as one signal (split the file at the gap)"
                            ),
                        ));
                    }
                }
                (_, None) if header.kind == EdfKind::EdfPlusDiscontinuous => {
                    return Err(ReadError::invalid(
                        path,
                        format!(
                            "EDF+D data record {k} has no time-keeping annotation, so gaps \
                             cannot be detected"
                        ),
                    ));
                }
                _ => {}
            }
        }
    }

    // EDF+ states the sub-second part of the start time as the first record's onset.
    let start_unix_ns = match (header.start_unix_ns, first_onset) {
        (Some(t), Some(onset)) if onset.is_finite() && onset.abs() < 1e9 => {
            t.checked_add((onset * 1e9).round() as i64)
        }
        (t, _) => t,
    };

    Ok(Recording {
        path: path.to_path_buf(),
        signal_label: sig.label.clone(),
        fs_hz: header.fs_hz(sig),
        samples_uv: samples,
        start_unix_ns,
        timestamps_ns: None,
        side: None,
    })
}

/// List the sampled (non-annotation) signals of an EDF/EDF+ file.
pub fn list_signals(path: &Path) -> Result<Vec<SignalInfo>, ReadError> {
    let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ReadError::io(path, e))?.len();
    let header = parse_header(path, &mut BufReader::new(file), file_len)?;
    Ok(header
        .signals
        .iter()
        .filter(|s| !s.is_annotation)
        .map(|s| SignalInfo {
            label: s.label.clone(),
            fs_hz: header.fs_hz(s),
            unit: s.unit.clone(),
            n_samples: header.n_records.saturating_mul(s.samples_per_record),
        })
        .collect())
}

fn n_bytes_of(samples: u64) -> usize {
    usize::try_from(samples.saturating_mul(2)).unwrap_or(usize::MAX)
}

/// Parse and validate the header against the real file length.
fn parse_header(path: &Path, reader: &mut impl Read, file_len: u64) -> Result<Header, ReadError> {
    let bad = |detail: String| ReadError::header(path, Format::Edf, detail);
    if file_len < FIXED_HEADER_BYTES {
        return Err(ReadError::Truncated {
            path: path.to_path_buf(),
            expected: FIXED_HEADER_BYTES,
            actual: file_len,
        });
    }
    let mut fixed = [0u8; FIXED_HEADER_BYTES as usize];
    reader
        .read_exact(&mut fixed)
        .map_err(|e| ReadError::io(path, e))?;

    if fixed[0] == 0xFF {
        return Err(ReadError::unsupported(
            path,
            "24-bit BDF files are not supported; only 16-bit EDF/EDF+",
        ));
    }
    let version = header_text(&fixed[0..8]);
    if version != "0" {
        return Err(bad(format!(
            "version field is {version:?}, expected \"0\" (is this really an EDF file?)"
        )));
    }

    let n_signals: u64 = parse_field(&fixed[252..256]).ok_or_else(|| {
        bad(format!(
            "number of signals {:?} is not an integer",
            header_text(&fixed[252..256])
        ))
    })?;
    if n_signals == 0 {
        return Err(bad("header declares 0 signals".into()));
    }
    let header_bytes = n_signals
        .checked_mul(SIGNAL_HEADER_BYTES)
        .and_then(|b| b.checked_add(FIXED_HEADER_BYTES))
        .ok_or_else(|| bad(format!("number of signals {n_signals} is absurd")))?;
    let declared_header_bytes: u64 = parse_field(&fixed[184..192]).ok_or_else(|| {
        bad(format!(
            "header size field {:?} is not an integer",
            header_text(&fixed[184..192])
        ))
    })?;
    if declared_header_bytes != header_bytes {
        return Err(bad(format!(
            "header size field says {declared_header_bytes} bytes but {n_signals} signal(s) \
             need {header_bytes}"
        )));
    }
    if file_len < header_bytes {
        return Err(ReadError::Truncated {
            path: path.to_path_buf(),
            expected: header_bytes,
            actual: file_len,
        });
    }

    let record_duration_s = parse_f64(&header_text(&fixed[244..252]))
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(|| {
            bad(format!(
                "data record duration {:?} is not a positive number of seconds",
                header_text(&fixed[244..252])
            ))
        })?;
    let reserved = header_text(&fixed[192..236]);
    let kind = if reserved.starts_with("EDF+D") {
        EdfKind::EdfPlusDiscontinuous
    } else if reserved.starts_with("EDF+C") {
        EdfKind::EdfPlusContinuous
    } else {
        EdfKind::Edf
    };

    // Signal headers: bounded by the file length checked above.
    let ns = usize::try_from(n_signals).map_err(|_| bad("too many signals".into()))?;
    let mut sh = vec![0u8; ns * SIGNAL_HEADER_BYTES as usize];
    reader
        .read_exact(&mut sh)
        .map_err(|e| ReadError::io(path, e))?;
    // Field-major layout: (width of each field) in order.
    const WIDTHS: [usize; 10] = [16, 80, 8, 8, 8, 8, 8, 80, 8, 32];
    let mut field_start = [0usize; 10];
    let mut acc = 0;
    for (i, w) in WIDTHS.iter().enumerate() {
        field_start[i] = acc;
        acc += w * ns;
    }
    let field = |f: usize, i: usize| -> &[u8] {
        let s = field_start[f] + i * WIDTHS[f];
        &sh[s..s + WIDTHS[f]]
    };

    let mut signals = Vec::with_capacity(ns);
    let mut offset: u64 = 0;
    for i in 0..ns {
        let label = header_text(field(0, i));
        let spr_text = header_text(field(8, i));
        let samples_per_record: u64 = parse_field(field(8, i)).ok_or_else(|| {
            bad(format!(
                "signal {i} ({label:?}): samples per record {spr_text:?} is not an integer"
            ))
        })?;
        let block = samples_per_record.checked_mul(2).ok_or_else(|| {
            bad(format!(
                "signal {i} ({label:?}): samples per record is absurd"
            ))
        })?;
        signals.push(SignalHeader {
            is_annotation: label == ANNOTATION_LABEL,
            unit: header_text(field(2, i)),
            phys_min: header_text(field(3, i)),
            phys_max: header_text(field(4, i)),
            dig_min: header_text(field(5, i)),
            dig_max: header_text(field(6, i)),
            samples_per_record,
            offset_in_record: offset,
            label,
        });
        offset = offset
            .checked_add(block)
            .ok_or_else(|| bad("data record size overflows".into()))?;
    }
    let record_bytes = offset;
    if record_bytes == 0 {
        return Err(bad("every signal has 0 samples per record".into()));
    }

    let data_bytes = file_len - header_bytes;
    let records_text = header_text(&fixed[236..244]);
    let declared_records: i64 = records_text.parse().map_err(|_| {
        bad(format!(
            "number of data records {records_text:?} is not an integer"
        ))
    })?;
    let n_records = match declared_records {
        // -1 means "unknown" (recording still in progress): derive from the size, but
        // only whole records; a partial trailing record means the file is damaged.
        -1 => {
            if !data_bytes.is_multiple_of(record_bytes) {
                return Err(ReadError::Truncated {
                    path: path.to_path_buf(),
                    expected: header_bytes + (data_bytes / record_bytes + 1) * record_bytes,
                    actual: file_len,
                });
            }
            data_bytes / record_bytes
        }
        n if n < 0 => return Err(bad(format!("number of data records is {n}"))),
        n => n as u64,
    };
    let expected = n_records
        .checked_mul(record_bytes)
        .and_then(|b| b.checked_add(header_bytes))
        .ok_or_else(|| {
            bad(format!(
                "{n_records} data records of {record_bytes} bytes overflow"
            ))
        })?;
    // Bytes beyond the declared records are ignored (some writers pad files);
    // fewer bytes than declared is an error.
    if file_len < expected {
        return Err(ReadError::Truncated {
            path: path.to_path_buf(),
            expected,
            actual: file_len,
        });
    }

    Ok(Header {
        kind,
        n_records,
        record_duration_s,
        header_bytes,
        record_bytes,
        start_unix_ns: parse_start(&fixed[168..176], &fixed[176..184]),
        signals,
    })
}

/// Start date `dd.mm.yy` + time `hh.mm.ss` → Unix ns. Years 85–99 are 19xx, the
/// rest 20xx (EDF's clipping-date convention). A malformed date gives `None`
/// rather than an error: the samples are still valid without a wall-clock start.
fn parse_start(date: &[u8], time: &[u8]) -> Option<i64> {
    let two = |b: &[u8], i: usize| -> Option<u32> {
        let (hi, lo) = (*b.get(i)?, *b.get(i + 1)?);
        if hi.is_ascii_digit() && lo.is_ascii_digit() {
            Some(u32::from(hi - b'0') * 10 + u32::from(lo - b'0'))
        } else {
            None
        }
    };
    let (dd, mm, yy) = (two(date, 0)?, two(date, 3)?, two(date, 6)?);
    let (h, m, s) = (two(time, 0)?, two(time, 3)?, two(time, 6)?);
    let year = if yy >= 85 { 1900 + yy } else { 2000 + yy };
    civil_to_unix_ns(i64::from(year), mm, dd, h, m, s, 0)
}

/// Onset (seconds) of the time-keeping TAL that starts an EDF+ annotation block:
/// `+<onset>` terminated by 0x14 (or 0x15 when a duration follows).
fn record_onset(block: &[u8]) -> Option<f64> {
    let end = block.iter().position(|&b| b == 0x14 || b == 0x15)?;
    let text = std::str::from_utf8(&block[..end]).ok()?;
    if !(text.starts_with('+') || text.starts_with('-')) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Integer header field (ASCII, space padded).
fn parse_field<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    header_text(bytes).parse().ok()
}

fn parse_f64(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_dates() {
        assert_eq!(
            parse_start(b"01.01.11", b"00.00.00"),
            Some(1_293_840_000_000_000_000)
        );
        assert_eq!(
            parse_start(b"31.12.99", b"23.59.59"),
            Some(946_684_799_000_000_000)
        );
        assert_eq!(
            parse_start(b"31.12.84", b"00.00.00"),
            Some(3_629_059_200_000_000_000)
        );
        assert_eq!(parse_start(b"xx.01.11", b"00.00.00"), None);
        assert_eq!(parse_start(b"30.02.11", b"00.00.00"), None);
    }

    #[test]
    fn onsets() {
        assert_eq!(record_onset(b"+0\x14\x14\0\0"), Some(0.0));
        assert_eq!(record_onset(b"+12.5\x14\x14\0"), Some(12.5));
        assert_eq!(record_onset(b"\0\0\0"), None);
        assert_eq!(record_onset(b"12\x14"), None);
    }
}
