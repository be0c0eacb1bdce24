//! The replay pack (`<model stem>.replay.bin`): what a shipped model carries so a gateway can
//! retrain without the original dataset — a sample of the pretext (unlabelled) windows and
//! every labelled window with its labels and subject. Replaying them stops a round from
//! forgetting what the model knew (catastrophic forgetting) and gives the promotion gate
//! people the wearer is not. Compact: i16 per sample with one f32 scale per window
//! ([`super::quant`], error ≤ scale/2), CRC-32 over the file, written atomically.
//!
//! Part of the model format (a release ships model, card and pack together); building a pack
//! from a dataset is training work (`learn::round::build_pack`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{quant, WINDOW_LEN};
use crate::fs::{atomic_write, FsError};

/// A replay pack that cannot be written or read; names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid replay pack: {0}")]
    Invalid(String),
}

/// One labelled window of a [`ReplayPack`]: z-scored samples, one label per pack head
/// (None = not labelled for that head) and the person it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct PackWindow {
    pub window: Vec<f32>,
    pub labels: Vec<Option<f32>>,
    pub subject: String,
}

/// What a shipped model carries so the gateway can retrain without the original dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayPack {
    /// Label columns of [`PackWindow::labels`], in order.
    pub head_names: Vec<String>,
    /// Unlabelled windows replayed during pretext training.
    pub pretext: Vec<Vec<f32>>,
    /// The person each `pretext` window comes from (same length as `pretext`): lets a round
    /// keep the pretext windows of its gate subjects out of training.
    pub pretext_subjects: Vec<String>,
    /// Every labelled window of the model's head training.
    pub labelled: Vec<PackWindow>,
    /// RFC 3339 time the pack was built.
    pub created: String,
}

/// File magic of a replay pack.
pub const PACK_MAGIC: &[u8; 8] = b"AGREPLAY";
/// Format version written (and the only one read).
pub const PACK_VERSION: u32 = 1;
/// Bytes before the JSON header: magic, u32 version, u64 total length, u32 header length.
const PACK_PRELUDE: usize = 8 + 4 + 8 + 4;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackHeader {
    window_len: usize,
    head_names: Vec<String>,
    /// Subject table; records refer to it by u16 index.
    subjects: Vec<String>,
    n_pretext: usize,
    n_labelled: usize,
    created: String,
}

impl ReplayPack {
    /// Distinct subjects of the labelled windows, sorted.
    pub fn labelled_subjects(&self) -> Vec<String> {
        let s: BTreeSet<&str> = self.labelled.iter().map(|w| w.subject.as_str()).collect();
        s.into_iter().map(str::to_string).collect()
    }

    /// Path of the pack that belongs to `model` (`x.onnx` → `x.replay.bin`).
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("replay.bin")
    }

    /// The file bytes (layout in [`ReplayPack::save`]).
    pub fn encode(&self) -> Result<Vec<u8>, PackError> {
        let bad = |m: String| Err(PackError::Invalid(m));
        let h = self.head_names.len();
        if self.pretext_subjects.len() != self.pretext.len() {
            return bad(format!(
                "{} pretext windows but {} pretext subjects",
                self.pretext.len(),
                self.pretext_subjects.len()
            ));
        }
        let mut subjects: Vec<String> = Vec::new();
        let mut index: HashMap<&str, u16> = HashMap::new();
        let all = self
            .pretext_subjects
            .iter()
            .chain(self.labelled.iter().map(|w| &w.subject));
        for s in all {
            if !index.contains_key(s.as_str()) {
                let i = u16::try_from(subjects.len())
                    .map_err(|_| PackError::Invalid("more than 65536 subjects".into()))?;
                index.insert(s.as_str(), i);
                subjects.push(s.clone());
            }
        }
        let windows = self
            .pretext
            .iter()
            .map(|w| ("pretext", w))
            .chain(self.labelled.iter().map(|w| ("labelled", &w.window)));
        for (i, (what, w)) in windows.enumerate() {
            if w.len() != WINDOW_LEN {
                return bad(format!(
                    "{what} window {i}: {} samples, expected {WINDOW_LEN}",
                    w.len()
                ));
            }
            if let Some(j) = w.iter().position(|x| !x.is_finite()) {
                return bad(format!("{what} window {i}: sample {j} is {}", w[j]));
            }
        }
        for (i, w) in self.labelled.iter().enumerate() {
            if w.labels.len() != h {
                return bad(format!(
                    "labelled window {i}: {} labels for {h} heads",
                    w.labels.len()
                ));
            }
            if w.labels.iter().flatten().any(|v| !v.is_finite()) {
                return bad(format!("labelled window {i}: non-finite label"));
            }
        }
        let header = serde_json::to_vec(&PackHeader {
            window_len: WINDOW_LEN,
            head_names: self.head_names.clone(),
            subjects,
            n_pretext: self.pretext.len(),
            n_labelled: self.labelled.len(),
            created: self.created.clone(),
        })
        .map_err(|e| PackError::Invalid(format!("header: {e}")))?;
        let rec_p = 2 + 4 + 2 * WINDOW_LEN;
        let rec_l = 2 + 4 * h + 4 + 2 * WINDOW_LEN;
        let total = PACK_PRELUDE
            + header.len()
            + self.pretext.len() * rec_p
            + self.labelled.len() * rec_l
            + 4;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(PACK_MAGIC);
        out.extend_from_slice(&PACK_VERSION.to_le_bytes());
        out.extend_from_slice(&(total as u64).to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for (w, s) in self.pretext.iter().zip(&self.pretext_subjects) {
            out.extend_from_slice(&index[s.as_str()].to_le_bytes());
            quant::encode(&mut out, w);
        }
        for w in &self.labelled {
            out.extend_from_slice(&index[w.subject.as_str()].to_le_bytes());
            for l in &w.labels {
                out.extend_from_slice(&l.unwrap_or(f32::NAN).to_le_bytes());
            }
            quant::encode(&mut out, &w.window);
        }
        out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// Write the pack atomically (temporary file + rename). Layout, little-endian:
    /// ```text
    /// "AGREPLAY" | u32 version=1 | u64 file length | u32 n | n bytes JSON header
    ///   (window_len, head_names, subjects, n_pretext, n_labelled, created)
    /// n_pretext  × (u16 subject | f32 scale | 2560 × i16)
    /// n_labelled × (u16 subject | n_heads × f32 label, NaN = none | f32 scale | 2560 × i16)
    /// u32 CRC-32 (IEEE) of everything before it
    /// ```
    /// A sample decodes as `i16 × scale`; `scale = max|x| / 32767` rounded up, so the error
    /// is at most `scale / 2` (≈ 1.5·10⁻⁴ for a z-scored window peaking at 10).
    pub fn save(&self, path: &Path) -> Result<(), PackError> {
        Ok(atomic_write(path, &self.encode()?)?)
    }

    /// Read a pack; every error names the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<ReplayPack, PackError> {
        let bytes = std::fs::read(path).map_err(|source| FsError {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(&bytes).map_err(|reason| PackError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parse pack bytes; the error is a reason (without the file name).
    pub fn decode(bytes: &[u8]) -> Result<ReplayPack, String> {
        let n = bytes.len();
        let magic_len = n.min(PACK_MAGIC.len());
        if bytes[..magic_len] != PACK_MAGIC[..magic_len] {
            return Err("bad magic: not an affectgate replay pack".into());
        }
        if n < PACK_PRELUDE {
            return Err(format!(
                "truncated at byte {n}: the fixed header alone is {PACK_PRELUDE} bytes"
            ));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != PACK_VERSION {
            return Err(format!(
                "unsupported replay pack version {version} (this affectgate reads version {PACK_VERSION})"
            ));
        }
        let total = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        if (n as u64) < total {
            return Err(format!(
                "truncated at byte {n}: the pack is {total} bytes long"
            ));
        }
        if (n as u64) > total {
            return Err(format!(
                "{} unexpected bytes after the end of the pack ({total} bytes)",
                n as u64 - total
            ));
        }
        let (body, crc) = bytes.split_at(n - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged"
            ));
        }
        let hlen = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")) as usize;
        let hend = PACK_PRELUDE
            .checked_add(hlen)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| format!("header length {hlen} runs past the end of the file"))?;
        let header: PackHeader = serde_json::from_slice(&bytes[PACK_PRELUDE..hend])
            .map_err(|e| format!("header is not valid: {e}"))?;
        if header.window_len != WINDOW_LEN {
            return Err(format!(
                "window length {} ≠ {WINDOW_LEN} (10 s at 256 Hz): not a pack for this model",
                header.window_len
            ));
        }
        let h = header.head_names.len();
        let rec_p = 2 + 4 + 2 * WINDOW_LEN;
        let rec_l = 2 + 4 * h + 4 + 2 * WINDOW_LEN;
        let expected = header
            .n_pretext
            .checked_mul(rec_p)
            .and_then(|a| header.n_labelled.checked_mul(rec_l).map(|b| (a, b)))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|r| r.checked_add(hend + 4));
        if expected != Some(n) {
            return Err(format!(
                "header announces {} pretext and {} labelled windows, which do not fit in {n} bytes",
                header.n_pretext, header.n_labelled
            ));
        }
        let mut pos = hend;
        let subject =
            |pos: &mut usize| -> Result<String, String> {
                let i = u16::from_le_bytes([bytes[*pos], bytes[*pos + 1]]) as usize;
                *pos += 2;
                header.subjects.get(i).cloned().ok_or_else(|| {
                    format!("subject index {i} at byte {} is out of range", *pos - 2)
                })
            };
        let samples = |pos: &mut usize| -> Result<Vec<f32>, String> {
            let at = *pos;
            let scale = f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("invalid window scale {scale} at byte {at}"));
            }
            let s = &bytes[at + 4..at + 4 + 2 * WINDOW_LEN];
            *pos = at + 4 + 2 * WINDOW_LEN;
            Ok(quant::decode(scale, s))
        };
        let mut pretext = Vec::with_capacity(header.n_pretext);
        let mut pretext_subjects = Vec::with_capacity(header.n_pretext);
        for _ in 0..header.n_pretext {
            pretext_subjects.push(subject(&mut pos)?);
            pretext.push(samples(&mut pos)?);
        }
        let mut labelled = Vec::with_capacity(header.n_labelled);
        for _ in 0..header.n_labelled {
            let subject = subject(&mut pos)?;
            let labels = (0..h)
                .map(|k| {
                    let at = pos + 4 * k;
                    let v = f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                    (!v.is_nan()).then_some(v)
                })
                .collect();
            pos += 4 * h;
            labelled.push(PackWindow {
                window: samples(&mut pos)?,
                labels,
                subject,
            });
        }
        Ok(ReplayPack {
            head_names: header.head_names,
            pretext,
            pretext_subjects,
            labelled,
            created: header.created,
        })
    }
}
