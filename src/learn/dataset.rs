//! Turns recordings into training windows with exactly the gateway's preprocessing
//! (`dsp::Preprocessor`: biquad filters → 256 Hz → 10 s windows), then z-scores them per
//! subject (the gateway does it per sensor, running).
//!
//! Two entry points: [`labelled_from_manifest`] (a CSV manifest naming files, subjects and
//! label columns) and [`unlabelled_from_paths`] (files or folders of recordings, for
//! self-supervised pretraining — no labels needed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::dsp::{self, PreprocessConfig};
use crate::learn::manifest::read_manifest;
use crate::source::file::read_recording;

/// One preprocessed, z-scored 10 s window.
#[derive(Clone, Debug)]
pub struct TrainWindow {
    pub subject: String,
    pub file: PathBuf,
    /// Offset of the window start from the recording start, seconds.
    pub offset_s: f64,
    pub samples: Vec<f32>,
    /// One entry per label column of the dataset (None = not labelled).
    pub labels: Vec<Option<f32>>,
}

#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub label_names: Vec<String>,
    pub windows: Vec<TrainWindow>,
}

impl Dataset {
    pub fn subjects(&self) -> Vec<String> {
        let mut s: Vec<String> = self.windows.iter().map(|w| w.subject.clone()).collect();
        s.sort();
        s.dedup();
        s
    }

    pub fn samples(&self) -> Vec<Vec<f32>> {
        self.windows.iter().map(|w| w.samples.clone()).collect()
    }

    /// Position of label column `name`, or an error naming the columns there are.
    pub fn label_index(&self, name: &str) -> Result<usize> {
        match self.label_names.iter().position(|n| n == name) {
            Some(h) => Ok(h),
            None => bail!(
                "label column '{name}' not in the manifest (it has: {:?})",
                self.label_names
            ),
        }
    }

    pub fn labels(&self) -> Vec<Vec<Option<f32>>> {
        self.windows.iter().map(|w| w.labels.clone()).collect()
    }

    /// Windows whose subject is (or is not) in `subjects`.
    pub fn split_by_subject(&self, subjects: &[String]) -> (Dataset, Dataset) {
        let (a, b): (Vec<_>, Vec<_>) = self
            .windows
            .iter()
            .cloned()
            .partition(|w| subjects.contains(&w.subject));
        (
            Dataset {
                label_names: self.label_names.clone(),
                windows: a,
            },
            Dataset {
                label_names: self.label_names.clone(),
                windows: b,
            },
        )
    }
}

/// Filtered, resampled, *not yet normalised* windows of one recording (optionally a segment).
fn recording_windows(
    path: &Path,
    signal: Option<&str>,
    segment: (Option<f64>, Option<f64>),
    pre: &PreprocessConfig,
) -> Result<Vec<(f64, Vec<f32>)>> {
    let rec = read_recording(path, signal)?;
    let fs = rec.fs_hz;
    let n = rec.samples_uv.len();
    let a = segment
        .0
        .map(|s| ((s * fs).round() as usize).min(n))
        .unwrap_or(0);
    let b = segment
        .1
        .map(|s| ((s * fs).round() as usize).min(n))
        .unwrap_or(n);
    if a >= b {
        bail!(
            "{}: segment {:?}..{:?} s is empty (recording is {:.1} s long)",
            path.display(),
            segment.0,
            segment.1,
            n as f64 / fs
        );
    }
    let windows = dsp::windows_from_recording(fs, &rec.samples_uv[a..b], 0, pre)
        .with_context(|| format!("preprocessing {}", path.display()))?;
    let base = a as f64 / fs;
    Ok(windows
        .into_iter()
        .map(|w| (base + w.start_ns as f64 * 1e-9, w.samples))
        .collect())
}

/// z-score the windows of one person with their pooled mean and standard deviation — the
/// training-time normalisation (the gateway's running per-sensor z-score approximates it).
/// Used per subject here and for a whole recording by `affectgate infer`.
pub fn zscore_person<'a>(windows: impl IntoIterator<Item = &'a mut Vec<f32>>) {
    let mut windows: Vec<&mut Vec<f32>> = windows.into_iter().collect();
    let stats = {
        let refs: Vec<&[f32]> = windows.iter().map(|w| w.as_slice()).collect();
        dsp::normalize::SubjectStats::from_windows(&refs)
    };
    for w in windows.iter_mut() {
        stats.apply(w);
    }
}

fn normalise_per_subject(windows: Vec<TrainWindow>) -> Vec<TrainWindow> {
    let mut by: BTreeMap<String, Vec<TrainWindow>> = BTreeMap::new();
    for w in windows {
        by.entry(w.subject.clone()).or_default().push(w);
    }
    let mut out = Vec::new();
    for (_, mut ws) in by {
        zscore_person(ws.iter_mut().map(|w| &mut w.samples));
        out.extend(ws);
    }
    out
}

/// Labelled windows from a manifest CSV (see `learn::manifest`).
pub fn labelled_from_manifest(manifest: &Path, pre: &PreprocessConfig) -> Result<Dataset> {
    let m = read_manifest(manifest)?;
    let mut windows = Vec::new();
    for e in &m.entries {
        let labels: Vec<Option<f32>> = m
            .label_names
            .iter()
            .map(|name| e.labels.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
            .collect();
        let ws = recording_windows(&e.file, e.signal.as_deref(), (e.start_s, e.end_s), pre)
            .with_context(|| format!("{} line {}", manifest.display(), e.line))?;
        for (offset_s, samples) in ws {
            windows.push(TrainWindow {
                subject: e.subject.clone(),
                file: e.file.clone(),
                offset_s,
                samples,
                labels: labels.clone(),
            });
        }
    }
    if windows.is_empty() {
        bail!(
            "{}: no 10 s windows could be cut from the listed recordings",
            manifest.display()
        );
    }
    Ok(Dataset {
        label_names: m.label_names.clone(),
        windows: normalise_per_subject(windows),
    })
}

/// Recording files under `paths` (files are taken as they are; folders are searched
/// recursively for .edf, .hea and .csv, skipping manifests such as labels.csv).
pub fn find_recordings(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_recording(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

fn is_recording(p: &Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("edf") | Some("hea") => true,
        Some("csv") => {
            // Manifests and metadata tables are CSV too: a recording has an ECG column.
            let head = std::fs::read_to_string(p)
                .map(|s| s.lines().next().unwrap_or("").to_ascii_lowercase())
                .unwrap_or_default();
            head.split(',').any(|c| c.trim().starts_with("ecg"))
        }
        _ => false,
    }
}

/// Unlabelled windows from recording files/folders; each file is its own normalisation group.
pub fn unlabelled_from_paths(paths: &[PathBuf], pre: &PreprocessConfig) -> Result<Dataset> {
    let files = find_recordings(paths)?;
    if files.is_empty() {
        bail!("no recordings (.edf, .hea, .csv with an ECG column) found in {paths:?}");
    }
    let mut windows = Vec::new();
    for f in files {
        let subject = f.to_string_lossy().to_string();
        for (offset_s, samples) in recording_windows(&f, None, (None, None), pre)? {
            windows.push(TrainWindow {
                subject: subject.clone(),
                file: f.clone(),
                offset_s,
                samples,
                labels: Vec::new(),
            });
        }
    }
    Ok(Dataset {
        label_names: Vec::new(),
        windows: normalise_per_subject(windows),
    })
}
