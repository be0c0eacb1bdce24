//! Dataset manifests: a CSV listing recordings, their subjects and labels.
//!
//! ```text
//! file,subject,condition,arousal,fs_hz,samples
//! Subject00_rest.edf,Subject00,rest,0,500.0,91000
//! ```
//!
//! Required columns: `file` (resolved relative to the manifest's folder) and
//! `subject` (needed to split train/test by person). Optional known columns:
//! `start_s`/`end_s` (a time window inside the file), `signal` (label of the signal
//! to read), `condition`, `note`/`notes`, and the informational `fs_hz`/`samples`.
//! Every other column whose non-empty cells are all numbers is a *label* column;
//! a column with any non-numeric cell (e.g. a free-text `group`) is not.
//!
//! This module only parses and resolves paths; it does not open the recordings
//! (the caller reads them with the file readers), so it stays independent of them.
//! It does check that every referenced file exists, so a typo is reported with
//! the manifest line instead of failing hours into a training run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Columns with a fixed meaning; never label columns.
const KNOWN_COLUMNS: [&str; 10] = [
    "file",
    "subject",
    "start_s",
    "end_s",
    "condition",
    "fs_hz",
    "samples",
    "signal",
    "note",
    "notes",
];

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Path of the manifest file itself.
    pub path: PathBuf,
    /// Label columns in file order (original spelling, trimmed).
    pub label_names: Vec<String>,
    pub entries: Vec<ManifestEntry>,
}

/// One row of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    /// Recording path, resolved relative to the manifest's folder.
    pub file: PathBuf,
    pub subject: String,
    /// `(label name, value)` in `label_names` order; empty cells are absent.
    pub labels: Vec<(String, f32)>,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    /// 1-based line of this row in the manifest (the header is line 1).
    pub line: usize,
    /// Signal label to read from the file (`signal` column), if given.
    pub signal: Option<String>,
    /// Free-text condition (`condition` column), if given.
    pub condition: Option<String>,
}

impl ManifestEntry {
    /// Value of label `name`, if this row has one.
    pub fn label(&self, name: &str) -> Option<f32> {
        self.labels.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

impl Manifest {
    /// Distinct subjects in order of first appearance.
    pub fn subjects(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .map(|e| e.subject.as_str())
            .filter(|s| seen.insert(*s))
            .collect()
    }
}

/// Why a manifest could not be used. Every message names the manifest and, where
/// it applies, the line and column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("{}: cannot read manifest: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: line {line}: {detail}", .path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        detail: String,
    },

    #[error(
        "{}: manifest has no {column:?} column; columns found: [{}]; required: file, subject",
        .path.display(),
        .found.join(", ")
    )]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        found: Vec<String>,
    },

    #[error(
        "{}: column {column:?} appears more than once in the header (names are \
         case-insensitive); rename or remove one",
        .path.display()
    )]
    DuplicateColumn { path: PathBuf, column: String },

    #[error("{}: line {line}, column {column:?}: {detail}", .path.display())]
    BadCell {
        path: PathBuf,
        line: u64,
        column: String,
        detail: String,
    },

    #[error(
        "{}: line {line}: start_s ({start}) must be before end_s ({end})",
        .path.display()
    )]
    BadWindow {
        path: PathBuf,
        line: u64,
        start: f64,
        end: f64,
    },

    #[error(
        "{}: line {line}: referenced file {} does not exist (paths are relative to the \
         manifest's folder)",
        .path.display(),
        .file.display()
    )]
    MissingFile {
        path: PathBuf,
        line: u64,
        file: PathBuf,
    },

    #[error("{}: manifest has a header but no entries", .path.display())]
    Empty { path: PathBuf },
}

/// Read and validate a manifest (see the module docs for the format).
pub fn read_manifest(path: &Path) -> Result<Manifest, ManifestError> {
    // Manifests are small; holding the bytes lets us count lines ourselves.
    let bytes = std::fs::read(path).map_err(|e| ManifestError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut lines = LineCounter::new(&bytes);
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(::csv::Trim::All)
        .flexible(false)
        .from_reader(bytes.as_slice());
    let csv_err = |e: ::csv::Error| csv_error(path, &bytes, e);

    let names: Vec<String> = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    let lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    let mut seen = HashSet::new();
    for (name, low) in names.iter().zip(&lower) {
        if !seen.insert(low.as_str()) {
            return Err(ManifestError::DuplicateColumn {
                path: path.to_path_buf(),
                column: name.clone(),
            });
        }
    }
    let col = |name: &str| lower.iter().position(|n| n == name);
    let missing = |column: &'static str| ManifestError::MissingColumn {
        path: path.to_path_buf(),
        column,
        found: names.clone(),
    };
    let file_col = col("file").ok_or_else(|| missing("file"))?;
    let subject_col = col("subject").ok_or_else(|| missing("subject"))?;
    let (start_col, end_col) = (col("start_s"), col("end_s"));
    let (signal_col, condition_col) = (col("signal"), col("condition"));

    // Read every row first: whether a column holds labels depends on all its cells.
    let mut rows: Vec<(u64, ::csv::StringRecord)> = Vec::new();
    for result in reader.records() {
        let record = result.map_err(csv_err)?;
        let line = lines.line_of(record.position().map_or(0, |p| p.byte()));
        rows.push((line, record));
    }
    if rows.is_empty() {
        return Err(ManifestError::Empty {
            path: path.to_path_buf(),
        });
    }

    let label_cols: Vec<usize> = (0..names.len())
        .filter(|&c| !names[c].is_empty() && !KNOWN_COLUMNS.contains(&lower[c].as_str()))
        .filter(|&c| {
            rows.iter().all(|(_, r)| {
                let v = r.get(c).unwrap_or("");
                v.is_empty() || parse_label(v).is_some()
            })
        })
        .collect();
    let label_names: Vec<String> = label_cols.iter().map(|&c| names[c].clone()).collect();

    let base = path.parent().unwrap_or_else(|| Path::new(""));
    let mut entries = Vec::with_capacity(rows.len());
    for (line, record) in &rows {
        let line = *line;
        let cell = |c: usize| record.get(c).unwrap_or("");
        let bad = |c: usize, detail: String| ManifestError::BadCell {
            path: path.to_path_buf(),
            line,
            column: names[c].clone(),
            detail,
        };
        let optional_text =
            |c: Option<usize>| c.map(cell).filter(|s| !s.is_empty()).map(str::to_string);
        let time = |c: Option<usize>| -> Result<Option<f64>, ManifestError> {
            match c.map(|c| (c, cell(c))) {
                None | Some((_, "")) => Ok(None),
                Some((c, text)) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .map(Some)
                    .ok_or_else(|| {
                        bad(
                            c,
                            format!("{text:?} is not a non-negative number of seconds"),
                        )
                    }),
            }
        };

        let file_text = cell(file_col);
        if file_text.is_empty() {
            return Err(bad(file_col, "empty file name".into()));
        }
        let subject = cell(subject_col);
        if subject.is_empty() {
            return Err(bad(
                subject_col,
                "empty subject (needed to split train/test by person)".into(),
            ));
        }
        let (start_s, end_s) = (time(start_col)?, time(end_col)?);
        if let (Some(start), Some(end)) = (start_s, end_s) {
            if start >= end {
                return Err(ManifestError::BadWindow {
                    path: path.to_path_buf(),
                    line,
                    start,
                    end,
                });
            }
        }
        let labels: Vec<(String, f32)> = label_cols
            .iter()
            .zip(&label_names)
            .filter_map(|(&c, name)| parse_label(cell(c)).map(|v| (name.clone(), v)))
            .collect();

        let file = base.join(file_text);
        if !file.is_file() {
            return Err(ManifestError::MissingFile {
                path: path.to_path_buf(),
                line,
                file,
            });
        }
        entries.push(ManifestEntry {
            file,
            subject: subject.to_string(),
            labels,
            start_s,
            end_s,
            line: usize::try_from(line).unwrap_or(usize::MAX),
            signal: optional_text(signal_col),
            condition: optional_text(condition_col),
        });
    }

    Ok(Manifest {
        path: path.to_path_buf(),
        label_names,
        entries,
    })
}

/// A label value: a finite number ("nan" does not count as numeric).
fn parse_label(text: &str) -> Option<f32> {
    text.parse::<f32>().ok().filter(|v| v.is_finite())
}

fn csv_error(path: &Path, bytes: &[u8], err: ::csv::Error) -> ManifestError {
    let line = LineCounter::new(bytes).line_of(err.position().map_or(0, |p| p.byte()));
    match err.into_kind() {
        ::csv::ErrorKind::Io(e) => ManifestError::Io {
            path: path.to_path_buf(),
            source: e,
        },
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => ManifestError::Csv {
            path: path.to_path_buf(),
            line,
            detail: format!("row has {len} fields but the header has {expected_len}"),
        },
        ::csv::ErrorKind::Utf8 { .. } => ManifestError::Csv {
            path: path.to_path_buf(),
            line,
            detail: "not valid UTF-8 text".into(),
        },
        other => ManifestError::Csv {
            path: path.to_path_buf(),
            line,
            detail: format!("{other:?}"),
        },
    }
}

/// Maps the csv parser's record byte offsets (ascending) to 1-based line numbers.
///
/// The csv crate's own line counter is off by one for CRLF files (EEGMAT's
/// `labels.csv` is CRLF) and stays at 1 for CR-only files, so lines are counted
/// here: LF, CRLF and a lone CR each end a line, and blank lines the parser skips
/// before a record are counted too.
struct LineCounter<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCounter {
            bytes,
            pos: 0,
            line: 1,
        }
    }

    fn line_of(&mut self, byte: u64) -> u64 {
        let target = usize::try_from(byte).unwrap_or(usize::MAX);
        while let Some(&b) = self.bytes.get(self.pos) {
            if self.pos >= target && b != b'\n' && b != b'\r' {
                break;
            }
            let crlf = b == b'\r' && self.bytes.get(self.pos + 1) == Some(&b'\n');
            if (b == b'\n' || b == b'\r') && !crlf {
                self.line += 1;
            }
            self.pos += 1;
        }
        self.line
    }
}
