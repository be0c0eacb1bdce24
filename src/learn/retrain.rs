//! On-gateway retraining: one *round* of adapting a shipped model to its wearer, and the
//! files that make a round possible away from the original dataset.
//!
//! What this module owns, and why:
//! - [`ReplayPack`] (`<model stem>.replay.bin`): what a shipped model carries so the gateway
//!   can retrain without the original dataset — a sample of the pretext (unlabelled) windows
//!   and every labelled window with its labels and subject. Replaying them stops a round
//!   from forgetting what the model knew (catastrophic forgetting) and gives the gate
//!   people the wearer is not. Compact: i16 per sample with one f32 scale per window (the
//!   store's encoding, error ≤ scale/2), CRC-32 over the file, written atomically.
//! - [`run_round`]: split hold-outs → continue the self-supervised pretext training on the
//!   wearer's windows mixed with replayed pack windows, one epoch at a time with a
//!   [`Checkpoint`] after each (a gateway can be restarted or asked to stop between epochs)
//!   → retrain the emotion heads on the new, frozen encoder (pack subjects + the wearer's
//!   self-reports, weighted up) → evaluate the serving side and the candidate on the same
//!   held-out windows → [`decide`]. "The serving side" is the current model on the wearer's
//!   held-out self-reports, but on the held-out pack subjects — whose labels the shipped
//!   heads were trained on — the current encoder with heads fitted by the same procedure as
//!   the candidate's, so `before` is not inflated by labels it saw.
//! - [`decide`]: the promotion gate. A candidate replaces the current model only if it is
//!   shown to be no worse on windows neither of them trained on: every head's held-out
//!   balanced accuracy must not drop (no tolerance), nor (when both exist) the mean pretext
//!   accuracy on the wearer's held-out windows. No held-out labelled windows → no promotion.
//!
//! Hold-outs are chosen so that no person is on both sides: whole pack subjects are held
//! out (the same ones every round — their choice depends only on the subject names, so a
//! candidate promoted in one round never trained on the next round's gate subjects), their
//! pretext windows are excluded from the replay too, and the wearer's *latest* windows and
//! self-reports are held out (time order: the gate asks "does it work on what comes next").
//!
//! What this module does not do: read the store, schedule rounds, write the promoted ONNX
//! and its card, or talk MQTT. Those belong to the gateway; it calls [`run_round`] with
//! plain windows and persists the returned weights.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::dataset::Dataset;
use super::metrics::Confusion;
use super::model::{Net, INPUT_LEN, PAPER_CONVS, PRETEXT_HIDDEN, PRETEXT_TASKS};
use super::onnx::{export_onnx, import_onnx, HeadWeights, NetworkWeights};
use super::train::{
    embed, predict, predict_heads, pretext_eval, pretrain, train_heads, TrainConfig,
};

/// Everything that can go wrong in a round or with its files. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// `should_stop` asked to stop (between epochs); the last checkpoint is intact.
    #[error("retraining stopped: {0}")]
    Stopped(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("not enough data to retrain: {0}")]
    NotEnoughData(String),
    /// Inputs that cannot be right whatever the data (wrong window length, label columns
    /// that do not match the heads, a pretext network without the seven pretext heads…).
    #[error("invalid retraining input: {0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RetrainError + '_ {
    move |source| RetrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// then (best effort) fsync the folder. A crash leaves either the old file or the new one.
/// (Also used for the gateway's round files and the study's results: one way to write.)
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), RetrainError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ───────────────────────────────── CRC-32 ─────────────────────────────────

/// CRC-32 (IEEE, as zlib/PNG), the same polynomial as the window store.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// SplitMix64 finaliser: independent seeds for the streams of a round.
fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ───────────────────────────────── replay pack ─────────────────────────────────

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

fn quantise(out: &mut Vec<u8>, w: &[f32]) {
    let scale = crate::store::quantisation_scale(w);
    out.extend_from_slice(&scale.to_le_bytes());
    for &x in w {
        let q = (f64::from(x) / f64::from(scale))
            .round()
            .clamp(-32767.0, 32767.0) as i16;
        out.extend_from_slice(&q.to_le_bytes());
    }
}

impl ReplayPack {
    /// Build a pack: every window of `labelled` (with its labels and subject) and up to
    /// `max_pretext` windows of `unlabelled`, drawn round-robin across subjects (each
    /// subject's windows shuffled with `seed`) so that no one person dominates the replay.
    ///
    /// An unlabelled window whose file is also a file of `labelled` gets that labelled
    /// subject (`unlabelled_from_paths` names subjects by file path), so the gate can keep a
    /// held-out person's pretext windows out of training.
    pub fn build(labelled: &Dataset, unlabelled: &Dataset, max_pretext: usize, seed: u64) -> Self {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let by_file: HashMap<PathBuf, String> = labelled
            .windows
            .iter()
            .map(|w| (canon(&w.file), w.subject.clone()))
            .collect();
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, w) in unlabelled.windows.iter().enumerate() {
            let subject = by_file
                .get(&canon(&w.file))
                .cloned()
                .unwrap_or_else(|| w.subject.clone());
            groups.entry(subject).or_default().push(i);
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut queues: Vec<(String, std::vec::IntoIter<usize>)> = groups
            .into_iter()
            .map(|(s, mut v)| {
                v.shuffle(&mut rng);
                (s, v.into_iter())
            })
            .collect();
        let mut pretext = Vec::new();
        let mut pretext_subjects = Vec::new();
        'outer: loop {
            let mut any = false;
            for (s, q) in queues.iter_mut() {
                if pretext.len() >= max_pretext {
                    break 'outer;
                }
                if let Some(i) = q.next() {
                    pretext.push(unlabelled.windows[i].samples.clone());
                    pretext_subjects.push(s.clone());
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        ReplayPack {
            head_names: labelled.label_names.clone(),
            pretext,
            pretext_subjects,
            labelled: labelled
                .windows
                .iter()
                .map(|w| PackWindow {
                    window: w.samples.clone(),
                    labels: w.labels.clone(),
                    subject: w.subject.clone(),
                })
                .collect(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

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
    pub fn encode(&self) -> Result<Vec<u8>, RetrainError> {
        let bad = |m: String| Err(RetrainError::Invalid(format!("replay pack: {m}")));
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
                let i = u16::try_from(subjects.len()).map_err(|_| {
                    RetrainError::Invalid("replay pack: more than 65536 subjects".into())
                })?;
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
            if w.len() != INPUT_LEN {
                return bad(format!(
                    "{what} window {i}: {} samples, expected {INPUT_LEN}",
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
            window_len: INPUT_LEN,
            head_names: self.head_names.clone(),
            subjects,
            n_pretext: self.pretext.len(),
            n_labelled: self.labelled.len(),
            created: self.created.clone(),
        })
        .map_err(|e| RetrainError::Invalid(format!("replay pack header: {e}")))?;
        let rec_p = 2 + 4 + 2 * INPUT_LEN;
        let rec_l = 2 + 4 * h + 4 + 2 * INPUT_LEN;
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
            quantise(&mut out, w);
        }
        for w in &self.labelled {
            out.extend_from_slice(&index[w.subject.as_str()].to_le_bytes());
            for l in &w.labels {
                out.extend_from_slice(&l.unwrap_or(f32::NAN).to_le_bytes());
            }
            quantise(&mut out, &w.window);
        }
        out.extend_from_slice(&crc32(&out).to_le_bytes());
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
    pub fn save(&self, path: &Path) -> Result<(), RetrainError> {
        atomic_write(path, &self.encode()?)
    }

    /// Read a pack; every error names the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<ReplayPack, RetrainError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Self::decode(&bytes).map_err(|reason| RetrainError::Corrupt {
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
        let computed = crc32(body);
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
        if header.window_len != INPUT_LEN {
            return Err(format!(
                "window length {} ≠ {INPUT_LEN} (10 s at 256 Hz): not a pack for this model",
                header.window_len
            ));
        }
        let h = header.head_names.len();
        let rec_p = 2 + 4 + 2 * INPUT_LEN;
        let rec_l = 2 + 4 * h + 4 + 2 * INPUT_LEN;
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
            let s = &bytes[at + 4..at + 4 + 2 * INPUT_LEN];
            *pos = at + 4 + 2 * INPUT_LEN;
            Ok(s.chunks_exact(2)
                .map(|c| (f64::from(i16::from_le_bytes([c[0], c[1]])) * f64::from(scale)) as f32)
                .collect())
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

// ───────────────────────────────── checkpoint ─────────────────────────────────

/// The pretext network after `epoch` completed epochs of a round.
///
/// Saved as an ONNX file of the seven-head pretext network (so a checkpoint is also a valid
/// `finetune --encoder` input) with metadata `affectgate.kind = retrain-checkpoint`,
/// `affectgate.checkpoint.epoch` and `affectgate.checkpoint.sha256` (SHA-256 of the weights,
/// so a damaged file is an error rather than a silently different network).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub epoch: usize,
    pub pretext: NetworkWeights,
}

const CKPT_KIND: &str = "retrain-checkpoint";

fn weights_digest(w: &NetworkWeights) -> String {
    let mut h = sha2::Sha256::new();
    for c in &w.convs {
        for v in c.weight.iter().chain(&c.bias) {
            h.update(v.to_le_bytes());
        }
    }
    for head in &w.heads {
        h.update(head.name.as_bytes());
        h.update([0]);
        for l in &head.layers {
            for v in l.weight.iter().chain(&l.bias) {
                h.update(v.to_le_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

fn check_pretext(w: &NetworkWeights, what: &str) -> Result<(), String> {
    let names = w.head_names();
    if names != PRETEXT_TASKS {
        return Err(format!(
            "{what} has heads {names:?}, expected the seven pretext heads {PRETEXT_TASKS:?}"
        ));
    }
    check_encoder(w, what)
}

fn check_encoder(w: &NetworkWeights, what: &str) -> Result<(), String> {
    w.validate().map_err(|e| format!("{what}: {e}"))?;
    let shapes: Vec<(usize, usize, usize)> = w
        .convs
        .iter()
        .map(|c| (c.in_ch, c.out_ch, c.kernel))
        .collect();
    if shapes != PAPER_CONVS {
        return Err(format!(
            "{what}: encoder convolutions {shapes:?} are not the paper's {PAPER_CONVS:?}"
        ));
    }
    Ok(())
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), RetrainError> {
        let meta = vec![
            ("affectgate.kind".to_string(), CKPT_KIND.to_string()),
            (
                "affectgate.checkpoint.epoch".to_string(),
                self.epoch.to_string(),
            ),
            (
                "affectgate.checkpoint.sha256".to_string(),
                weights_digest(&self.pretext),
            ),
        ];
        let bytes = export_onnx(&self.pretext, &meta, env!("CARGO_PKG_VERSION"))
            .map_err(|e| RetrainError::Invalid(format!("checkpoint: {e}")))?;
        atomic_write(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, RetrainError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let corrupt = |reason: String| RetrainError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (pretext, meta) =
            import_onnx(&bytes).map_err(|e| corrupt(format!("not a readable checkpoint: {e}")))?;
        let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("affectgate.kind") != Some(CKPT_KIND) {
            return Err(corrupt(format!(
                "not a retraining checkpoint (affectgate.kind = {:?})",
                get("affectgate.kind")
            )));
        }
        let epoch = get("affectgate.checkpoint.epoch")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| corrupt("missing or invalid affectgate.checkpoint.epoch".into()))?;
        let digest = weights_digest(&pretext);
        match get("affectgate.checkpoint.sha256") {
            Some(d) if d == digest => {}
            Some(d) => {
                return Err(corrupt(format!(
                    "weights checksum mismatch (stored {d}, computed {digest}): the file is damaged"
                )))
            }
            None => return Err(corrupt("missing affectgate.checkpoint.sha256".into())),
        }
        check_pretext(&pretext, "checkpoint").map_err(corrupt)?;
        Ok(Checkpoint { epoch, pretext })
    }
}

// ───────────────────────────────── the round ─────────────────────────────────

/// Settings of one retraining round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundConfig {
    /// Pretext epochs over the wearer's windows (+ replay).
    pub pretext_epochs: usize,
    /// Cap on optimiser steps per *pretext* epoch (smoke runs, a time budget). Head
    /// training is not capped: it runs on 128-d embeddings and is cheap.
    pub max_steps_per_epoch: Option<usize>,
    /// Mini-batch size of both stages.
    pub batch: usize,
    /// Pretext fine-tuning learning rate (Adam), default 1e-4: small, to adapt rather than
    /// relearn.
    pub lr: f64,
    /// Pack pretext windows mixed in per wearer window, default 0.5 (resampled every epoch).
    pub replay_ratio: f32,
    pub head_epochs: usize,
    pub head_lr: f64,
    /// A self-report counts this many times in head training (default 5). Implemented by
    /// repeating the wearer's labelled embeddings `round(user_weight)` times (`train_heads`
    /// has no sample weights), so it must be ≥ 0.5.
    pub user_weight: f32,
    /// Latest fraction of the wearer's windows (unlabelled and self-reported, each list on
    /// its own) held out for the gate, default 0.2. In [0, 1).
    pub holdout_frac: f32,
    /// Whole pack subjects held out for the gate, default 4 (at most all but one).
    pub holdout_subjects: usize,
    pub seed: u64,
}

impl Default for RoundConfig {
    fn default() -> Self {
        Self {
            pretext_epochs: 2,
            max_steps_per_epoch: None,
            batch: 32,
            lr: 1e-4,
            replay_ratio: 0.5,
            head_epochs: 60,
            head_lr: 1e-3,
            user_weight: 5.0,
            holdout_frac: 0.2,
            holdout_subjects: 4,
            seed: 7,
        }
    }
}

/// The wearer's windows for a round, oldest first, z-scored like the pack's (2560 samples).
/// `user_labelled` labels are in the order of the current model's heads (None = no report
/// for that head). A self-reported window may also appear in `unlabelled`: the pretext
/// stage only ever sees its signal, never its label.
#[derive(Clone, Debug, Default)]
pub struct RoundData {
    pub unlabelled: Vec<Vec<f32>>,
    pub user_labelled: Vec<(Vec<f32>, Vec<Option<f32>>)>,
}

/// What [`run_round`] reports while it works.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Pretext epoch `epoch` (1-based) of `of` finished with mean training loss `loss`.
    Pretext { epoch: usize, of: usize, loss: f32 },
    /// Embedding the labelled windows and training the emotion heads.
    Heads,
    /// Scoring the current model and the candidate on the held-out windows.
    Evaluating,
}

/// One model's numbers on a round's held-out windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateMetrics {
    /// Balanced accuracy per head (in head order) on the held-out labelled windows (held-out
    /// pack subjects + the wearer's latest self-reports). NaN if a head has no held-out label.
    pub heads: Vec<(String, f64)>,
    /// Held-out windows with at least one label.
    pub n_labelled: usize,
    /// Pretext loss on the wearer's held-out unlabelled windows (None: no pretext network
    /// to measure, or no such windows).
    pub pretext_loss: Option<f32>,
    /// Mean over the seven pretext tasks of the balanced accuracy on the same windows.
    pub pretext_accuracy: Option<f32>,
    pub n_unlabelled: usize,
}

/// The gate's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Promote,
    Reject { reason: String },
}

/// The result of a round that ran to the end (promoted or not).
#[derive(Clone, Debug)]
pub struct RoundOutcome {
    /// New encoder + newly trained heads with the current model's names, order and widths.
    pub candidate: NetworkWeights,
    /// The pretext network after the round (the `pretext_init` of the next round).
    pub pretext: NetworkWeights,
    pub before: GateMetrics,
    pub after: GateMetrics,
    pub decision: Decision,
    /// Pretext epochs run by this call (a resumed round runs only the remaining ones).
    pub epochs_run: usize,
}

/// Message of the rejection when nothing labelled was held out.
pub const NO_HELDOUT: &str = "no held-out labelled windows: cannot show the candidate is not worse";

/// Two numbers with just enough decimals to tell them apart (4 to 9).
fn two(b: f64, a: f64) -> (String, String) {
    for d in 4..=9 {
        let (x, y) = (format!("{b:.d$}"), format!("{a:.d$}"));
        if x != y || d == 9 {
            return (x, y);
        }
    }
    unreachable!()
}

/// The promotion gate: Promote iff every head's held-out balanced accuracy is at least the
/// current model's (no tolerance) and, when both pretext accuracies exist, the candidate's
/// pretext accuracy is at least the current pretext network's. Otherwise Reject with a
/// reason naming the head or metric and both numbers.
pub fn decide(before: &GateMetrics, after: &GateMetrics) -> Decision {
    let reject = |reason: String| Decision::Reject { reason };
    if before.n_labelled == 0 || after.n_labelled == 0 {
        return reject(NO_HELDOUT.into());
    }
    for (name, b) in &before.heads {
        let Some(&(_, a)) = after.heads.iter().find(|(n, _)| n == name) else {
            return reject(format!("head {name}: missing from the candidate"));
        };
        if b.is_nan() || a.is_nan() {
            return reject(format!(
                "head {name}: no held-out labelled windows for this head (balanced accuracy \
                 before {b}, after {a}): cannot show the candidate is not worse"
            ));
        }
        if a < *b {
            let (bs, as_) = two(*b, a);
            return reject(format!(
                "head {name}: held-out balanced accuracy fell from {bs} to {as_} \
                 ({} held-out labelled windows)",
                after.n_labelled
            ));
        }
    }
    if let (Some(b), Some(a)) = (before.pretext_accuracy, after.pretext_accuracy) {
        // NaN on either side is "not shown to be no worse" too.
        if a.partial_cmp(&b).is_none_or(|o| o.is_lt()) {
            let (bs, as_) = two(b as f64, a as f64);
            return reject(format!(
                "pretext accuracy (mean per-task balanced accuracy on {} held-out wearer \
                 windows) fell from {bs} to {as_}",
                after.n_unlabelled
            ));
        }
    }
    Decision::Promote
}

/// `(train, held out)` index ranges of a time-ordered list: the latest `round(frac · n)`
/// items are held out, but never all of them (at least one stays for training).
fn latest_split(n: usize, frac: f32) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let k = ((frac as f64 * n as f64).round() as usize).min(n.saturating_sub(1));
    (0..n - k, n - k..n)
}

/// The pack subjects a round holds out for its gate: `k` of them (at most all but one),
/// chosen by the SHA-256 of their names — the same subjects in every round and on every
/// gateway, whatever the seed, so a model promoted by one round never trained on the next
/// round's gate subjects.
pub fn gate_subjects(pack: &ReplayPack, k: usize) -> Vec<String> {
    let mut s = pack.labelled_subjects();
    let k = k.min(s.len().saturating_sub(1));
    s.sort_by_cached_key(|name| sha2::Sha256::digest(name.as_bytes()));
    let mut out: Vec<String> = s.into_iter().take(k).collect();
    out.sort();
    out
}

/// Which windows a round trains on and which it holds out.
#[derive(Clone, Debug, PartialEq)]
struct Split {
    wearer_train: std::ops::Range<usize>,
    wearer_holdout: std::ops::Range<usize>,
    user_train: std::ops::Range<usize>,
    user_holdout: std::ops::Range<usize>,
    gate_subjects: Vec<String>,
    /// Pack labelled windows for head training (subjects not held out).
    pack_train: Vec<usize>,
    /// Pack labelled windows of the gate subjects.
    pack_holdout: Vec<usize>,
    /// Pack pretext windows that may be replayed (subjects not held out).
    replay_pool: Vec<usize>,
}

fn split(data: &RoundData, pack: &ReplayPack, cfg: &RoundConfig) -> Split {
    let (wearer_train, wearer_holdout) = latest_split(data.unlabelled.len(), cfg.holdout_frac);
    let (user_train, user_holdout) = latest_split(data.user_labelled.len(), cfg.holdout_frac);
    let gate = gate_subjects(pack, cfg.holdout_subjects);
    let held = |s: &String| gate.binary_search(s).is_ok();
    let (pack_holdout, pack_train): (Vec<usize>, Vec<usize>) =
        (0..pack.labelled.len()).partition(|&i| held(&pack.labelled[i].subject));
    let replay_pool = (0..pack.pretext.len())
        .filter(|&i| !pack.pretext_subjects.get(i).is_some_and(held))
        .collect();
    Split {
        wearer_train,
        wearer_holdout,
        user_train,
        user_holdout,
        gate_subjects: gate,
        pack_train,
        pack_holdout,
        replay_pool,
    }
}

/// Hidden widths of a head (every layer but the last, which is the 1-wide logit).
fn hidden_of(h: &HeadWeights) -> Vec<usize> {
    h.layers[..h.layers.len().saturating_sub(1)]
        .iter()
        .map(|l| l.out_dim)
        .collect()
}

/// A fresh seven-head pretext network on top of `encoder`'s convolutions (burn's default
/// initialisation of the heads, seeded).
fn fresh_pretext(encoder: &NetworkWeights, seed: u64) -> NetworkWeights {
    let device = burn::tensor::Device::flex();
    device.seed(seed);
    let names: Vec<String> = PRETEXT_TASKS.iter().map(|s| s.to_string()).collect();
    let mut w = Net::new(7, &PRETEXT_HIDDEN, &device).to_weights(&names);
    w.convs = encoder.convs.clone();
    w
}

/// Balanced accuracy per head of `scores` against `labels` (rows in the same order).
fn head_accuracy(
    names: &[String],
    scores: &[Vec<f32>],
    labels: &[Vec<Option<f32>>],
) -> Vec<(String, f64)> {
    names
        .iter()
        .enumerate()
        .map(|(h, name)| {
            let mut c = Confusion::default();
            for (s, l) in scores.iter().zip(labels) {
                if let Some(v) = l[h] {
                    c.record(s[h] >= 0.5, v >= 0.5);
                }
            }
            (name.clone(), c.balanced_accuracy())
        })
        .collect()
}

fn pretext_metrics(
    w: Option<&NetworkWeights>,
    windows: &[Vec<f32>],
    seed: u64,
) -> (Option<f32>, Option<f32>) {
    match w {
        Some(w) if !windows.is_empty() => {
            let (loss, acc) = pretext_eval(w, windows, seed);
            let mean = acc.iter().sum::<f32>() / acc.len().max(1) as f32;
            (Some(loss), Some(mean))
        }
        _ => (None, None),
    }
}

fn validate_inputs(
    current: &NetworkWeights,
    pretext_init: Option<&NetworkWeights>,
    resume: Option<&Checkpoint>,
    data: &RoundData,
    pack: &ReplayPack,
    cfg: &RoundConfig,
) -> Result<(), RetrainError> {
    let bad = |m: String| Err(RetrainError::Invalid(m));
    check_encoder(current, "current model").map_err(RetrainError::Invalid)?;
    if let Some(w) = pretext_init {
        check_pretext(w, "pretext_init").map_err(RetrainError::Invalid)?;
    }
    if let Some(c) = resume {
        check_pretext(&c.pretext, "resume checkpoint").map_err(RetrainError::Invalid)?;
    }
    let n_heads = current.heads.len();
    for (i, w) in data.unlabelled.iter().enumerate() {
        if w.len() != INPUT_LEN {
            return bad(format!(
                "wearer window {i}: {} samples, expected {INPUT_LEN}",
                w.len()
            ));
        }
    }
    for (i, (w, l)) in data.user_labelled.iter().enumerate() {
        if w.len() != INPUT_LEN {
            return bad(format!(
                "self-reported window {i}: {} samples, expected {INPUT_LEN}",
                w.len()
            ));
        }
        if l.len() != n_heads {
            return bad(format!(
                "self-reported window {i}: {} labels, but the model has {n_heads} heads {:?}",
                l.len(),
                current.head_names()
            ));
        }
    }
    if pack.pretext_subjects.len() != pack.pretext.len() {
        return bad("replay pack: pretext windows and pretext subjects differ in number".into());
    }
    for w in pack.labelled.iter() {
        if w.window.len() != INPUT_LEN || w.labels.len() != pack.head_names.len() {
            return bad(
                "replay pack: a labelled window has the wrong length or label count".into(),
            );
        }
    }
    if pack.pretext.iter().any(|w| w.len() != INPUT_LEN) {
        return bad("replay pack: a pretext window has the wrong length".into());
    }
    if cfg.pretext_epochs == 0 {
        return bad("pretext_epochs must be ≥ 1".into());
    }
    if cfg.batch == 0 {
        return bad("batch must be ≥ 1".into());
    }
    if !(cfg.holdout_frac >= 0.0 && cfg.holdout_frac < 1.0) {
        return bad(format!(
            "holdout_frac {} must be in [0, 1)",
            cfg.holdout_frac
        ));
    }
    if !(cfg.replay_ratio.is_finite() && cfg.replay_ratio >= 0.0) {
        return bad(format!("replay_ratio {} must be ≥ 0", cfg.replay_ratio));
    }
    if !(cfg.user_weight.is_finite() && cfg.user_weight >= 0.5) {
        return bad(format!(
            "user_weight {} must be ≥ 0.5 (self-reports are repeated round(user_weight) times)",
            cfg.user_weight
        ));
    }
    Ok(())
}

/// The labelled windows a round's head stage trains on: the pack's labelled windows outside
/// the gate subjects (once each) and the wearer's self-reports outside the hold-out
/// (repeated `round(user_weight)` times), labels in the current model's head order.
struct HeadSet {
    pack_col: Vec<Option<usize>>,
    head_names: Vec<String>,
    windows: Vec<Vec<f32>>,
    labels: Vec<Vec<Option<f32>>>,
    reps: Vec<usize>,
    n_pack: usize,
    n_user: usize,
}

impl HeadSet {
    fn new(
        data: &RoundData,
        pack: &ReplayPack,
        sp: &Split,
        head_names: &[String],
        cfg: &RoundConfig,
    ) -> Self {
        let pack_col = head_names
            .iter()
            .map(|h| pack.head_names.iter().position(|p| p == h))
            .collect();
        let mut set = HeadSet {
            pack_col,
            head_names: head_names.to_vec(),
            windows: Vec::new(),
            labels: Vec::new(),
            reps: Vec::new(),
            n_pack: sp.pack_train.len(),
            n_user: sp.user_train.len(),
        };
        let user_reps = (cfg.user_weight.round() as usize).max(1);
        for &i in &sp.pack_train {
            set.windows.push(pack.labelled[i].window.clone());
            set.labels.push(set.pack_labels(&pack.labelled[i]));
            set.reps.push(1);
        }
        for (win, l) in &data.user_labelled[sp.user_train.clone()] {
            set.windows.push(win.clone());
            set.labels.push(l.clone());
            set.reps.push(user_reps);
        }
        set
    }

    /// A pack window's labels in the current model's head order.
    fn pack_labels(&self, pw: &PackWindow) -> Vec<Option<f32>> {
        self.pack_col
            .iter()
            .map(|c| c.and_then(|c| pw.labels[c]))
            .collect()
    }

    /// Fresh heads (the widths of `current`'s) on `encoder`'s frozen embeddings.
    fn fit(
        &self,
        encoder: &NetworkWeights,
        current: &NetworkWeights,
        cfg: &RoundConfig,
    ) -> Result<Vec<HeadWeights>, RetrainError> {
        let emb = embed(encoder, &self.windows);
        let mut heads = Vec::with_capacity(self.head_names.len());
        for (h, name) in self.head_names.iter().enumerate() {
            let mut e = Vec::new();
            let mut l = Vec::new();
            for ((x, labels), &reps) in emb.iter().zip(&self.labels).zip(&self.reps) {
                if let Some(v) = labels[h] {
                    for _ in 0..reps {
                        e.push(x.clone());
                        l.push(vec![Some(v)]);
                    }
                }
            }
            if e.is_empty() {
                return Err(RetrainError::NotEnoughData(format!(
                    "head {name}: no labelled training windows (pack windows outside the gate \
                     subjects: {}, the wearer's self-reports outside the hold-out: {})",
                    self.n_pack, self.n_user
                )));
            }
            let tcfg = TrainConfig {
                epochs: cfg.head_epochs,
                batch: cfg.batch,
                lr: cfg.head_lr,
                seed: mix(cfg.seed, 2000 + h as u64),
                max_steps_per_epoch: None,
                progress: false,
            };
            let (mut hw, _) = train_heads(
                &e,
                &l,
                std::slice::from_ref(name),
                &hidden_of(&current.heads[h]),
                &tcfg,
            );
            heads.push(hw.remove(0));
        }
        Ok(heads)
    }
}

/// A round's head stage on its own: heads fitted on `encoder` exactly as [`run_round`] fits
/// the candidate's (same windows, hold-outs, weights and seeds), returned as a complete
/// model. Used by the personalisation experiment to separate what the encoder adaptation
/// and what the self-reports contribute.
pub fn refit_heads(
    encoder: &NetworkWeights,
    current: &NetworkWeights,
    data: &RoundData,
    pack: &ReplayPack,
    cfg: &RoundConfig,
) -> Result<NetworkWeights, RetrainError> {
    let sp = split(data, pack, cfg);
    let set = HeadSet::new(data, pack, &sp, &current.head_names(), cfg);
    Ok(NetworkWeights {
        convs: encoder.convs.clone(),
        heads: set.fit(encoder, current, cfg)?,
    })
}

/// One retraining round (see the module docs for the steps).
///
/// - `current`: the serving model (encoder + emotion heads); it is what `before` measures.
/// - `pretext_init`: the pretext network the current encoder came from, if kept (the
///   previous round's [`RoundOutcome::pretext`]); without it the current encoder gets seven
///   fresh pretext heads and `before` has no pretext metrics.
/// - `resume`: a checkpoint of *this* round (same data, pack and config): training continues
///   after its epoch; if it already covers every pretext epoch, only heads and gate run.
/// - `on_checkpoint` runs after every pretext epoch (persist it; an error aborts the round);
///   `should_stop` is asked before every epoch and before the head stage.
///
/// Every pretext epoch is one call of [`pretrain`] (`epochs = 1`, `init` = the previous
/// epoch's weights) with a seed derived from `cfg.seed` and the epoch number, so a resumed
/// round trains exactly as an uninterrupted one (Adam's moments restart each epoch in both).
#[allow(clippy::too_many_arguments)]
pub fn run_round(
    current: &NetworkWeights,
    pretext_init: Option<&NetworkWeights>,
    resume: Option<Checkpoint>,
    data: &RoundData,
    pack: &ReplayPack,
    cfg: &RoundConfig,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<(), RetrainError>,
    on_progress: &mut dyn FnMut(Progress),
    should_stop: &dyn Fn() -> Option<String>,
) -> Result<RoundOutcome, RetrainError> {
    validate_inputs(current, pretext_init, resume.as_ref(), data, pack, cfg)?;
    let sp = split(data, pack, cfg);
    let head_names = current.head_names();
    if sp.wearer_train.is_empty() {
        return Err(RetrainError::NotEnoughData(format!(
            "no wearer windows to adapt on ({} unlabelled windows, {} of them held out)",
            data.unlabelled.len(),
            sp.wearer_holdout.len()
        )));
    }

    // ── stage 1: pretext training, one epoch at a time ──
    let wearer: Vec<Vec<f32>> = data.unlabelled[sp.wearer_train.clone()].to_vec();
    let n_replay = ((cfg.replay_ratio as f64 * wearer.len() as f64).round() as usize)
        .min(sp.replay_pool.len());
    let (mut w, start) = match resume {
        Some(c) => (c.pretext, c.epoch.min(cfg.pretext_epochs)),
        None => (
            pretext_init
                .cloned()
                .unwrap_or_else(|| fresh_pretext(current, mix(cfg.seed, 1))),
            0,
        ),
    };
    let mut epochs_run = 0;
    for epoch in start..cfg.pretext_epochs {
        if let Some(reason) = should_stop() {
            return Err(RetrainError::Stopped(reason));
        }
        let mut rng = SmallRng::seed_from_u64(mix(cfg.seed, 1000 + 2 * epoch as u64));
        let mut train = wearer.clone();
        train.extend(
            sp.replay_pool
                .choose_multiple(&mut rng, n_replay)
                .map(|&i| pack.pretext[i].clone()),
        );
        let tcfg = TrainConfig {
            epochs: 1,
            batch: cfg.batch,
            lr: cfg.lr,
            seed: mix(cfg.seed, 1001 + 2 * epoch as u64),
            max_steps_per_epoch: cfg.max_steps_per_epoch,
            progress: false,
        };
        let (next, history) = pretrain(&train, &[], &tcfg, Some(&w));
        w = next;
        epochs_run += 1;
        let ck = Checkpoint {
            epoch: epoch + 1,
            pretext: w.clone(),
        };
        on_checkpoint(&ck)?;
        on_progress(Progress::Pretext {
            epoch: epoch + 1,
            of: cfg.pretext_epochs,
            loss: history.first().map(|e| e.train_loss).unwrap_or(f32::NAN),
        });
    }
    if let Some(reason) = should_stop() {
        return Err(RetrainError::Stopped(reason));
    }

    // ── stage 2: emotion heads on the new, frozen encoder ──
    on_progress(Progress::Heads);
    let set = HeadSet::new(data, pack, &sp, &head_names, cfg);
    // The same head fitting (same windows, weights and seeds) for any encoder: the new one
    // (the candidate) and the serving one (the gate's honest baseline, below).
    let fit_heads = |encoder: &NetworkWeights| set.fit(encoder, current, cfg);
    let heads = fit_heads(&w)?;
    let candidate = NetworkWeights {
        convs: w.convs.clone(),
        heads,
    };

    // ── stage 3: the gate ──
    on_progress(Progress::Evaluating);
    let mut gate_windows: Vec<Vec<f32>> = Vec::new();
    let mut gate_labels: Vec<Vec<Option<f32>>> = Vec::new();
    for &i in &sp.pack_holdout {
        gate_windows.push(pack.labelled[i].window.clone());
        gate_labels.push(set.pack_labels(&pack.labelled[i]));
    }
    for (win, l) in &data.user_labelled[sp.user_holdout.clone()] {
        gate_windows.push(win.clone());
        gate_labels.push(l.clone());
    }
    // Only windows with at least one label count (and are worth scoring).
    let keep: Vec<usize> = (0..gate_windows.len())
        .filter(|&i| gate_labels[i].iter().any(Option::is_some))
        .collect();
    let gate_windows: Vec<Vec<f32>> = keep.iter().map(|&i| gate_windows[i].clone()).collect();
    let gate_labels: Vec<Vec<Option<f32>>> = keep.iter().map(|&i| gate_labels[i].clone()).collect();
    // `before` must be what the serving side is worth on data it never saw. On the wearer's
    // held-out self-reports that is the serving model itself. The held-out pack subjects'
    // labels, however, were in the shipped heads' training set, which would inflate `before`
    // (measured: 0.87 vs 0.74 for the same encoder with heads fitted without them), so there
    // the baseline is the serving encoder with heads fitted by exactly the same procedure as
    // the candidate's (same windows, weights and seeds) — the comparison isolates what the
    // round's encoder adaptation changed.
    let n_pack_gate = keep.iter().filter(|&&i| i < sp.pack_holdout.len()).count();
    let (scores_before, scores_after) = if gate_windows.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let baseline = NetworkWeights {
            convs: current.convs.clone(),
            heads: fit_heads(current)?,
        };
        let mut before = predict_heads(
            &baseline.heads,
            &embed(&baseline, &gate_windows[..n_pack_gate]),
        );
        before.extend(predict(current, &gate_windows[n_pack_gate..]));
        (
            before,
            predict_heads(&candidate.heads, &embed(&candidate, &gate_windows)),
        )
    };
    let holdout_unl = &data.unlabelled[sp.wearer_holdout.clone()];
    let eval_seed = mix(cfg.seed, 3000);
    let (bl, ba) = pretext_metrics(pretext_init, holdout_unl, eval_seed);
    let (al, aa) = pretext_metrics(Some(&w), holdout_unl, eval_seed);
    let before = GateMetrics {
        heads: head_accuracy(&head_names, &scores_before, &gate_labels),
        n_labelled: gate_windows.len(),
        pretext_loss: bl,
        pretext_accuracy: ba,
        n_unlabelled: holdout_unl.len(),
    };
    let after = GateMetrics {
        heads: head_accuracy(&head_names, &scores_after, &gate_labels),
        n_labelled: gate_windows.len(),
        pretext_loss: al,
        pretext_accuracy: aa,
        n_unlabelled: holdout_unl.len(),
    };
    let decision = decide(&before, &after);
    tracing::info!(
        ?before,
        ?after,
        ?decision,
        epochs_run,
        "retraining round finished"
    );
    Ok(RoundOutcome {
        candidate,
        pretext: w,
        before,
        after,
        decision,
        epochs_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::dataset::{zscore_person, TrainWindow};
    use crate::source::synthetic::{SyntheticConfig, SyntheticEcg};

    /// `n` z-scored 10 s windows of synthetic ECG at `hr` bpm.
    fn ecg(n: usize, hr: f64, seed: u64) -> Vec<Vec<f32>> {
        let mut g = SyntheticEcg::new(SyntheticConfig {
            fs_hz: 256.0,
            hr_bpm: hr,
            noise_uv: 20.0,
            seed,
            ..Default::default()
        })
        .unwrap();
        let mut out: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                let mut w = vec![0.0f32; INPUT_LEN];
                g.fill(&mut w);
                w
            })
            .collect();
        zscore_person(out.iter_mut());
        out
    }

    /// `subjects` people, each with one rest (0) and one task (1) window and one pretext window.
    fn pack(subjects: usize) -> ReplayPack {
        let mut labelled = Vec::new();
        let mut pretext = Vec::new();
        let mut pretext_subjects = Vec::new();
        for s in 0..subjects {
            let name = format!("S{s:02}");
            let rest = ecg(1, 60.0, 10 + s as u64).remove(0);
            let task = ecg(1, 110.0, 50 + s as u64).remove(0);
            labelled.push(PackWindow {
                window: rest,
                labels: vec![Some(0.0)],
                subject: name.clone(),
            });
            labelled.push(PackWindow {
                window: task,
                labels: vec![Some(1.0)],
                subject: name.clone(),
            });
            pretext.push(ecg(1, 75.0, 90 + s as u64).remove(0));
            pretext_subjects.push(name);
        }
        ReplayPack {
            head_names: vec!["arousal".into()],
            pretext,
            pretext_subjects,
            labelled,
            created: "2026-11-25T00:00:00Z".into(),
        }
    }

    /// burn's flex backend draws initialisation and dropout from one process-wide generator
    /// (`Device::seed` reseeds it), so rounds running in parallel test threads would perturb
    /// each other's draws. The round tests take this lock (only this module trains in the
    /// library's unit tests).
    static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn burn_lock() -> std::sync::MutexGuard<'static, ()> {
        BURN_RNG.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current() -> NetworkWeights {
        NetworkWeights::seeded(&[("arousal", &[16, 16])], 3)
    }

    fn tiny_cfg(epochs: usize) -> RoundConfig {
        RoundConfig {
            pretext_epochs: epochs,
            max_steps_per_epoch: Some(1),
            batch: 4,
            head_epochs: 1,
            holdout_subjects: 1,
            ..Default::default()
        }
    }

    fn data() -> RoundData {
        let mut unlabelled = ecg(4, 70.0, 200);
        let mut labelled = ecg(3, 65.0, 201);
        labelled.extend(ecg(2, 120.0, 202));
        unlabelled.extend(labelled.iter().cloned());
        RoundData {
            unlabelled,
            user_labelled: labelled
                .into_iter()
                .enumerate()
                .map(|(i, w)| (w, vec![Some(if i < 3 { 0.0 } else { 1.0 })]))
                .collect(),
        }
    }

    #[test]
    fn pack_round_trip() {
        let mut p = pack(3);
        p.head_names.push("valence".into());
        for (i, w) in p.labelled.iter_mut().enumerate() {
            w.labels.push((i % 2 == 0).then_some(0.25));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.replay.bin");
        p.save(&path).unwrap();
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(
            size < 6 * INPUT_LEN * 2 + 3 * INPUT_LEN * 2 + 2000,
            "{size} bytes"
        );
        let q = ReplayPack::load(&path).unwrap();
        assert_eq!(q.head_names, p.head_names);
        assert_eq!(q.pretext_subjects, p.pretext_subjects);
        assert_eq!(q.created, p.created);
        assert_eq!(q.labelled.len(), p.labelled.len());
        let close = |a: &[f32], b: &[f32]| {
            let scale = crate::store::quantisation_scale(a);
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= scale / 2.0 + 1e-6 * x.abs())
        };
        for (a, b) in p.pretext.iter().zip(&q.pretext) {
            assert!(close(a, b));
        }
        for (a, b) in p.labelled.iter().zip(&q.labelled) {
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.subject, b.subject);
            assert!(close(&a.window, &b.window));
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_packs_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.replay.bin");
        pack(2).save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let err_of = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let e = ReplayPack::load(&path).unwrap_err();
            assert!(matches!(e, RetrainError::Corrupt { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("m.replay.bin"), "{msg}");
            msg
        };
        let msg = err_of(&good[..good.len() - 100]);
        assert!(
            msg.contains(&format!("truncated at byte {}", good.len() - 100)),
            "{msg}"
        );
        let msg = err_of(&good[..10]);
        assert!(msg.contains("truncated at byte 10"), "{msg}");
        let mut flipped = good.clone();
        let k = good.len() - 777;
        flipped[k] ^= 0x40;
        assert!(err_of(&flipped).contains("checksum mismatch"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(err_of(&magic).contains("bad magic"));
        // A consistent file (valid CRC) whose windows are not 2560 samples long.
        let mut wrong = good.clone();
        let key = b"\"window_len\":2560";
        let at = wrong.windows(key.len()).position(|w| w == key).unwrap() + key.len() - 4;
        wrong[at..at + 4].copy_from_slice(b"2561");
        let n = wrong.len();
        let crc = crc32(&wrong[..n - 4]);
        wrong[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(err_of(&wrong).contains("window length 2561 ≠ 2560"));
        // A missing file is an Io error naming it.
        let e = ReplayPack::load(&dir.path().join("absent.replay.bin")).unwrap_err();
        assert!(
            matches!(e, RetrainError::Io { .. }) && e.to_string().contains("absent.replay.bin")
        );
    }

    #[test]
    fn pack_build_samples_across_subjects() {
        let mk =
            |subject: &str, file: &str, n: usize, labels: Vec<Option<f32>>| -> Vec<TrainWindow> {
                ecg(n, 70.0, file.len() as u64)
                    .into_iter()
                    .map(|samples| TrainWindow {
                        subject: subject.into(),
                        file: PathBuf::from(file),
                        offset_s: 0.0,
                        samples,
                        labels: labels.clone(),
                    })
                    .collect()
            };
        let labelled = Dataset {
            label_names: vec!["arousal".into()],
            windows: [
                mk("A", "/x/A_rest.edf", 1, vec![Some(0.0)]),
                mk("B", "/x/B_rest.edf", 1, vec![Some(1.0)]),
            ]
            .concat(),
        };
        let unlabelled = Dataset {
            label_names: vec![],
            windows: [
                mk("/x/A_rest.edf", "/x/A_rest.edf", 5, vec![]),
                mk("/x/B_rest.edf", "/x/B_rest.edf", 1, vec![]),
                mk("/y/other.csv", "/y/other.csv", 3, vec![]),
            ]
            .concat(),
        };
        let p = ReplayPack::build(&labelled, &unlabelled, 5, 1);
        assert_eq!(p.labelled.len(), 2);
        assert_eq!(p.head_names, vec!["arousal".to_string()]);
        assert_eq!(p.pretext.len(), 5);
        let count = |s: &str| p.pretext_subjects.iter().filter(|x| *x == s).count();
        // Round-robin: B's only window and two of each of the others; files map to subjects.
        assert_eq!((count("A"), count("B"), count("/y/other.csv")), (2, 1, 2));
    }

    #[test]
    fn checkpoint_round_trip_and_damage() {
        let _burn = burn_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round.ckpt.onnx");
        let ck = Checkpoint {
            epoch: 3,
            pretext: fresh_pretext(&current(), 5),
        };
        ck.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), ck);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        std::fs::write(&path, &bytes[..n / 2]).unwrap();
        let e = Checkpoint::load(&path).unwrap_err();
        assert!(
            matches!(e, RetrainError::Corrupt { .. }) && e.to_string().contains("round.ckpt.onnx"),
            "{e}"
        );
        // A flipped bit inside the weights keeps the protobuf readable: the digest catches it.
        bytes[n / 2] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path).unwrap_err();
        assert!(e.to_string().contains("round.ckpt.onnx"), "{e}");
    }

    #[test]
    fn holdout_never_splits_a_person() {
        let p = pack(6);
        for k in [0, 1, 4, 6, 10] {
            let cfg = RoundConfig {
                holdout_subjects: k,
                ..Default::default()
            };
            let sp = split(&RoundData::default(), &p, &cfg);
            assert_eq!(sp.gate_subjects.len(), k.min(5));
            let side = |idx: &[usize]| -> BTreeSet<String> {
                idx.iter().map(|&i| p.labelled[i].subject.clone()).collect()
            };
            let (tr, ho) = (side(&sp.pack_train), side(&sp.pack_holdout));
            assert!(tr.is_disjoint(&ho), "{tr:?} vs {ho:?}");
            assert_eq!(ho, sp.gate_subjects.iter().cloned().collect());
            assert_eq!(tr.len() + ho.len(), 6);
            for &i in &sp.replay_pool {
                assert!(!ho.contains(&p.pretext_subjects[i]));
            }
            assert_eq!(sp.replay_pool.len(), 6 - ho.len());
        }
        // Stable: the same gate subjects whatever the seed.
        let a = gate_subjects(&p, 2);
        assert_eq!(a, gate_subjects(&p, 2));
        // Latest windows are held out, and never all of them.
        assert_eq!(latest_split(10, 0.2), (0..8, 8..10));
        assert_eq!(latest_split(1, 0.5), (0..1, 1..1));
        assert_eq!(latest_split(0, 0.2), (0..0, 0..0));
    }

    fn gm(heads: &[(&str, f64)], pretext: Option<f32>) -> GateMetrics {
        GateMetrics {
            heads: heads.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            n_labelled: 40,
            pretext_loss: pretext.map(|_| 0.3),
            pretext_accuracy: pretext,
            n_unlabelled: 20,
        }
    }

    #[test]
    fn gate_decisions() {
        let before = gm(&[("arousal", 0.70), ("valence", 0.60)], Some(0.8));
        assert_eq!(decide(&before, &before), Decision::Promote);
        let better = gm(&[("arousal", 0.72), ("valence", 0.60)], Some(0.81));
        assert_eq!(decide(&before, &better), Decision::Promote);
        let Decision::Reject { reason } = decide(
            &before,
            &gm(&[("arousal", 0.75), ("valence", 0.55)], Some(0.9)),
        ) else {
            panic!("a drop must reject")
        };
        assert!(
            reason.contains("valence") && reason.contains("0.6000") && reason.contains("0.5500"),
            "{reason}"
        );
        // No tolerance: a tiny drop rejects and the numbers shown differ.
        let Decision::Reject { reason } = decide(
            &before,
            &gm(&[("arousal", 0.6999999), ("valence", 0.6)], Some(0.8)),
        ) else {
            panic!()
        };
        assert!(
            reason.contains("arousal")
                && reason.contains("0.7000000")
                && reason.contains("0.6999999"),
            "{reason}"
        );
        let Decision::Reject { reason } = decide(
            &before,
            &gm(&[("arousal", 0.7), ("valence", 0.6)], Some(0.79)),
        ) else {
            panic!()
        };
        assert!(
            reason.contains("pretext accuracy")
                && reason.contains("0.8000")
                && reason.contains("0.7900"),
            "{reason}"
        );
        // Pretext is compared only when both sides have it.
        assert_eq!(
            decide(
                &gm(&[("arousal", 0.7)], None),
                &gm(&[("arousal", 0.7)], Some(0.1))
            ),
            Decision::Promote
        );
        let mut none = gm(&[("arousal", f64::NAN)], None);
        none.n_labelled = 0;
        assert_eq!(
            decide(&none, &none),
            Decision::Reject {
                reason: NO_HELDOUT.into()
            }
        );
        let nan = gm(&[("arousal", f64::NAN)], None);
        assert!(
            matches!(decide(&nan, &nan), Decision::Reject { reason } if reason.contains("arousal"))
        );
    }

    #[test]
    fn round_runs_checkpoints_and_resumes() {
        let _burn = burn_lock();
        let (cur, p, d) = (current(), pack(3), data());
        let cfg = tiny_cfg(2);
        let mut cks: Vec<Checkpoint> = Vec::new();
        let mut events = Vec::new();
        let out = run_round(
            &cur,
            None,
            None,
            &d,
            &p,
            &cfg,
            &mut |c| {
                cks.push(c.clone());
                Ok(())
            },
            &mut |e| events.push(e),
            &|| None,
        )
        .unwrap();
        assert_eq!(out.candidate.head_names(), cur.head_names());
        assert_eq!(hidden_of(&out.candidate.heads[0]), vec![16, 16]);
        out.candidate.validate().unwrap();
        assert_eq!(out.pretext.convs, out.candidate.convs);
        assert_ne!(out.candidate.convs, cur.convs, "the encoder was trained");
        assert_eq!(out.epochs_run, 2);
        assert_eq!(cks.iter().map(|c| c.epoch).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(cks[1].pretext, out.pretext);
        assert!(matches!(
            events[0],
            Progress::Pretext {
                epoch: 1,
                of: 2,
                ..
            }
        ));
        assert!(matches!(
            events[1],
            Progress::Pretext {
                epoch: 2,
                of: 2,
                ..
            }
        ));
        assert_eq!(&events[2..], &[Progress::Heads, Progress::Evaluating]);
        // Gate: 1 pack subject (2 windows) + the latest self-report are held out.
        assert_eq!(out.before.n_labelled, 3);
        assert_eq!(out.after.n_unlabelled, 2);
        assert!(out.before.pretext_accuracy.is_none() && out.after.pretext_accuracy.is_some());
        assert_eq!(out.decision, decide(&out.before, &out.after));

        // Resume from the first checkpoint: only the second epoch runs, with the same result.
        let mut cks2 = Vec::new();
        let out2 = run_round(
            &cur,
            None,
            Some(cks[0].clone()),
            &d,
            &p,
            &cfg,
            &mut |c| {
                cks2.push(c.epoch);
                Ok(())
            },
            &mut |_| {},
            &|| None,
        )
        .unwrap();
        assert_eq!(out2.epochs_run, 1);
        assert_eq!(cks2, vec![2]);
        assert!(
            out2.pretext == out.pretext,
            "resuming must train exactly like not stopping"
        );
    }

    #[test]
    fn round_stops_between_epochs() {
        let _burn = burn_lock();
        let (cur, p, d) = (current(), pack(3), data());
        let n_ck = std::cell::Cell::new(0);
        let e = run_round(
            &cur,
            None,
            None,
            &d,
            &p,
            &tiny_cfg(3),
            &mut |_| {
                n_ck.set(n_ck.get() + 1);
                Ok(())
            },
            &mut |_| {},
            &|| (n_ck.get() >= 1).then(|| "shutdown".to_string()),
        );
        match e {
            Err(RetrainError::Stopped(r)) => assert_eq!(r, "shutdown"),
            other => panic!("expected Stopped, got {:?}", other.map(|o| o.decision)),
        }
        assert_eq!(n_ck.get(), 1);
    }

    #[test]
    fn bad_inputs_are_reported() {
        let _burn = burn_lock();
        let (cur, p, mut d) = (current(), pack(2), data());
        d.unlabelled[0].truncate(100);
        let e = run_round(
            &cur,
            None,
            None,
            &d,
            &p,
            &tiny_cfg(1),
            &mut |_| Ok(()),
            &mut |_| {},
            &|| None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("wearer window 0: 100 samples"),
            "{e}"
        );
        let e = run_round(
            &cur,
            Some(&cur),
            None,
            &data(),
            &p,
            &tiny_cfg(1),
            &mut |_| Ok(()),
            &mut |_| {},
            &|| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("pretext_init has heads"), "{e}");
        let e = run_round(
            &cur,
            None,
            None,
            &RoundData::default(),
            &p,
            &tiny_cfg(1),
            &mut |_| Ok(()),
            &mut |_| {},
            &|| None,
        )
        .unwrap_err();
        assert!(matches!(e, RetrainError::NotEnoughData(_)), "{e}");
    }
}
