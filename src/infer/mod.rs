//! Emotion scores from an ONNX model through `ort`, with two backends chosen at run time:
//!
//! - [`Backend::Tract`]: pure Rust (`ort-tract`), no native library, works on a fresh machine.
//! - [`Backend::OnnxRuntime`]: Microsoft ONNX Runtime loaded with `dlopen` (the fast path),
//!   from `ORT_DYLIB_PATH`, the `onnxruntime` Python wheel, or a common library directory
//!   (see [`find_onnxruntime_dylib`]). Needs ONNX Runtime ≥ 1.24 (`ort`'s `api-24`).
//!
//! # One backend per process
//! `ort` keeps the C API table it calls through in a process-global `OnceLock`
//! (`ort::set_api`; `ort::api()` reads it on every call: sessions, tensors, runs), and it
//! allows one `Environment` per process (`EnvironmentBuilder::build` fails once one was
//! built, even after it is dropped). Neither can be replaced. A session made under one API
//! therefore cannot live next to a session of the other: **the first backend a process uses
//! wins for the life of the process.** With the `alternative-backend` feature `ort` never
//! fills the table itself, even under `load-dynamic` (`ort::init_from` only `dlopen`s the
//! library), so this module resolves `OrtGetApiBase` in the loaded library and hands the
//! table to `ort::set_api`.
//!
//! [`Model::load`] records the process's backend on first use. A later request for the other
//! backend returns [`InferError::BackendConflict`] ("this process already uses the tract
//! backend; run ONNX Runtime in a separate process") instead of silently running the first
//! one. Anything that must compare the backends (tests, benchmarks) runs one of them in a
//! child process. A failed attempt (library missing, not loadable, too old) does not lock
//! the process: a later attempt, or the other backend, can still be chosen.
//!
//! # Inputs and outputs
//! Input `ecg`: float32 `[N, 1, 2560]`, z-scored 10 s windows at 256 Hz. Outputs: one
//! `[N, 1]` sigmoid per head (e.g. `arousal`, `valence`), plus optionally `embedding`
//! `[N, D]`. Model files are checked before a backend sees them, so a truncated or foreign
//! file, a missing `ecg` input or a wrong input shape is an [`InferError`] naming the file,
//! never a panic.
//!
//! # Malformed graphs under tract
//! tract panics on some malformed graphs (found by mutating exported models: e.g. a `MaxPool`
//! node without input indexes an empty list). `ort-tract` calls tract from `extern "system"`
//! functions, where a panic cannot unwind and aborts the whole process. For the tract
//! backend, [`Model::load`] therefore first builds and runs the model once with tract directly
//! under `catch_unwind` (a few tens of ms at load); what fails there is an
//! [`InferError::Session`]. ONNX Runtime reports such graphs as errors by itself.
//!
//! # Speed
//! `tests/it/onnx_infer.rs` (`bench_backends`) measures both backends on the full-size emotion
//! network. ONNX Runtime uses its default intra-op thread pool (one thread per core) with
//! spinning off; tract runs single-threaded (`tract-linalg`'s `multithread-mm` feature is not
//! enabled).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

/// Samples per window: the one window type of the project.
mod backend;
mod check;
pub mod config;

use backend::environment;
pub use backend::{active_backend, active_dylib, find_onnxruntime_dylib};
use check::{check_model, tract_preflight};

/// Name of the optional embedding output (not a head).
pub use crate::model::EMBEDDING_NAME;
/// Name of a fused model's second input.
pub use crate::model::FEATURES_NAME;
/// Name of the model input.
pub use crate::model::INPUT_NAME;
use crate::model::WINDOW_LEN;
/// Environment variable naming the ONNX Runtime library (as `ort` itself uses it).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

// ─────────────────────────────── backends ───────────────────────────────

/// Which `ort` backend runs the model. In a config: `"tract"` or `"onnxruntime"` (also
/// `"ort"`), or a table `{ kind = "onnxruntime", dylib = "/path/libonnxruntime.so" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// Pure-Rust tract through `ort-tract`.
    #[default]
    Tract,
    /// ONNX Runtime from a shared library; `None`: [`find_onnxruntime_dylib`].
    OnnxRuntime { dylib: Option<PathBuf> },
}

/// A backend without its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Tract,
    OnnxRuntime,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Tract => "tract",
            BackendKind::OnnxRuntime => "onnxruntime",
        })
    }
}

impl Backend {
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Tract => BackendKind::Tract,
            Backend::OnnxRuntime { .. } => BackendKind::OnnxRuntime,
        }
    }

    /// ONNX Runtime, library found at load time.
    pub fn onnxruntime() -> Backend {
        Backend::OnnxRuntime { dylib: None }
    }

    fn from_name(s: &str, dylib: Option<PathBuf>) -> Result<Backend, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tract" => {
                if dylib.is_some() {
                    Err("`dylib` only applies to the onnxruntime backend".into())
                } else {
                    Ok(Backend::Tract)
                }
            }
            "onnxruntime" | "onnx-runtime" | "onnx_runtime" | "ort" => {
                Ok(Backend::OnnxRuntime { dylib })
            }
            other => Err(format!(
                "unknown inference backend {other:?}: expected \"tract\" or \"onnxruntime\""
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Tract => f.write_str("tract"),
            Backend::OnnxRuntime { dylib: None } => f.write_str("onnxruntime"),
            Backend::OnnxRuntime { dylib: Some(p) } => write!(f, "onnxruntime ({})", p.display()),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        Backend::from_name(s, None)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BackendRepr {
    Name(String),
    Table {
        #[serde(alias = "backend", alias = "name")]
        kind: String,
        #[serde(default)]
        dylib: Option<PathBuf>,
    },
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
        match BackendRepr::deserialize(d)? {
            BackendRepr::Name(s) => Backend::from_name(&s, None),
            BackendRepr::Table { kind, dylib } => Backend::from_name(&kind, dylib),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Backend::Tract => s.serialize_str("tract"),
            Backend::OnnxRuntime { dylib: None } => s.serialize_str("onnxruntime"),
            Backend::OnnxRuntime { dylib: Some(p) } => {
                let mut st = s.serialize_struct("Backend", 2)?;
                st.serialize_field("kind", "onnxruntime")?;
                st.serialize_field("dylib", p)?;
                st.end()
            }
        }
    }
}

// ─────────────────────────────── errors ───────────────────────────────

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("cannot read model file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not a usable affectgate ECG model: {reason}")]
    InvalidModel { file: String, reason: String },
    #[error("{file}: the {backend} backend cannot load the model: {reason}")]
    Session {
        file: String,
        backend: BackendKind,
        reason: String,
    },
    #[error(
        "ONNX Runtime library not found: {detail}. Set {ORT_DYLIB_ENV} to libonnxruntime.so, set `dylib` in the \
         config, or `pip install onnxruntime` (ONNX Runtime ≥ 1.24); or use the pure-Rust \"tract\" backend, which \
         needs no library"
    )]
    DylibNotFound { detail: String },
    #[error("cannot load ONNX Runtime from {}: {reason}", path.display())]
    DylibLoad { path: PathBuf, reason: String },
    #[error(
        "this process already uses the {active} backend; {requested} cannot be used in the same process \
         (ort selects one API per process): run {requested} in a separate process"
    )]
    BackendConflict { active: String, requested: String },
    #[error("{file}: bad input: {reason}")]
    Input { file: String, reason: String },
    #[error("{file}: inference failed on the {backend} backend: {reason}")]
    Run {
        file: String,
        backend: BackendKind,
        reason: String,
    },
}

// ─────────────────────────────── model ───────────────────────────────

/// Scores for a batch of windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Head names, in model output order.
    pub heads: Vec<String>,
    /// `values[window][head]`, sigmoid outputs in `[0, 1]`.
    pub values: Vec<Vec<f32>>,
    /// `embedding[window]` when the model exports `embedding`.
    pub embedding: Option<Vec<Vec<f32>>>,
}

impl Scores {
    /// One head's value for every window.
    pub fn head(&self, name: &str) -> Option<Vec<f32>> {
        let i = self.heads.iter().position(|h| h == name)?;
        Some(self.values.iter().map(|v| v[i]).collect())
    }
}

/// Per-window head values and (optionally) embeddings of one chunk.
type ChunkOut = (Vec<Vec<f32>>, Option<Vec<Vec<f32>>>);

/// A loaded model: an `ort` session plus what was read from the file.
pub struct Model {
    session: Session,
    backend: BackendKind,
    source: String,
    heads: Vec<String>,
    embedding: Option<Option<usize>>,
    fixed_batch: Option<usize>,
    features: Vec<String>,
    metadata: Vec<(String, String)>,
    producer: String,
    sha256: String,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("source", &self.source)
            .field("backend", &self.backend)
            .field("heads", &self.heads)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Load an ONNX file. Errors name the file. If a model card sits beside it
    /// (`<name>.card.toml`), the file must be the exact bytes the card describes (sha256): a
    /// damaged or swapped model is refused instead of serving quietly wrong scores.
    pub fn load(path: &Path, backend: &Backend) -> Result<Model, InferError> {
        let bytes = std::fs::read(path).map_err(|source| InferError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let card_path = crate::model::card::ModelCard::path_for(path);
        if card_path.exists() {
            let invalid = |e: crate::model::card::CardError| InferError::InvalidModel {
                file: path.display().to_string(),
                reason: e.to_string(),
            };
            crate::model::card::ModelCard::load(&card_path)
                .map_err(invalid)?
                .check(&card_path, path, &bytes)
                .map_err(invalid)?;
        }
        Self::load_bytes_named(&bytes, &path.display().to_string(), backend)
    }

    /// Load ONNX bytes (errors say `<in-memory model>`).
    pub fn load_bytes(bytes: &[u8], backend: &Backend) -> Result<Model, InferError> {
        Self::load_bytes_named(bytes, "<in-memory model>", backend)
    }

    /// Load ONNX bytes; `name` (a path, a registry id) appears in errors.
    pub fn load_bytes_named(
        bytes: &[u8],
        name: &str,
        backend: &Backend,
    ) -> Result<Model, InferError> {
        let checked = check_model(bytes, name)?;
        let env = environment(backend)?;
        let kind = backend.kind();
        let session_err = |reason: String| InferError::Session {
            file: name.to_string(),
            backend: kind,
            reason,
        };
        if kind == BackendKind::Tract {
            tract_preflight(
                bytes,
                checked.fixed_batch.unwrap_or(2),
                checked.features.len(),
            )
            .map_err(session_err)?;
        }
        let built = catch_unwind(AssertUnwindSafe(|| -> Result<Session, String> {
            let b = Session::builder(&env).map_err(|e| e.to_string())?;
            let mut b = b
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| e.to_string())?;
            if kind == BackendKind::OnnxRuntime {
                // No busy-waiting worker threads: a gateway shares its few cores with BLE, MQTT
                // and retraining, and spinning threads lose badly under contention (measured:
                // 2 threads, loaded machine, 8.7 ms/window without spinning vs 15 ms with).
                b = b.with_intra_op_spinning(false).map_err(|e| e.to_string())?;
                b = b.with_inter_op_spinning(false).map_err(|e| e.to_string())?;
            }
            b.commit_from_memory(bytes).map_err(|e| e.to_string())
        }));
        let session = match built {
            Ok(Ok(s)) => s,
            Ok(Err(reason)) => return Err(session_err(reason)),
            Err(_) => {
                return Err(session_err(
                    "the backend panicked while building the session".into(),
                ))
            }
        };
        // The backend must agree with what the file declares.
        let outs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if let Some(h) = checked.heads.iter().find(|h| !outs.contains(&h.as_str())) {
            return Err(session_err(format!(
                "the session has no output `{h}` (outputs: {outs:?})"
            )));
        }
        if !session.inputs().iter().any(|i| i.name() == INPUT_NAME) {
            return Err(session_err(format!(
                "the session has no input `{INPUT_NAME}`"
            )));
        }
        let mut model = Model {
            session,
            backend: kind,
            source: name.to_string(),
            heads: checked.heads,
            embedding: checked.embedding_dim,
            fixed_batch: checked.fixed_batch,
            features: checked.features,
            metadata: checked.metadata,
            producer: checked.producer,
            sha256: crate::model::sha256_hex(bytes),
        };
        model.probe()?;
        Ok(model)
    }

    /// One forward pass on a reference window (a 1.2 Hz sine, features 0) at load time: a
    /// model whose weights are damaged (NaN, overflow) is refused here, naming the file,
    /// rather than serving NaN or constant scores.
    fn probe(&mut self) -> Result<(), InferError> {
        let n = self.fixed_batch.unwrap_or(1);
        let window: Vec<f32> = (0..WINDOW_LEN)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 1.2 / 256.0).sin())
            .collect();
        let batch: Vec<f32> = (0..n).flat_map(|_| window.iter().copied()).collect();
        let feats = vec![0.0; n * self.features.len()];
        let s = self.run_with(&batch, &feats, n)?;
        let bad = |what: &str, v: f32| {
            InferError::InvalidModel {
            file: self.source.clone(),
            reason: format!(
                "{what} is {v} on a reference window (finite scores in [0, 1] expected): the weights are damaged; restore the model file"
            ),
        }
        };
        for (h, v) in self.heads.iter().zip(&s.values[0]) {
            if !(v.is_finite() && (0.0..=1.0).contains(v)) {
                return Err(bad(&format!("head `{h}`"), *v));
            }
        }
        if let Some(e) = s
            .embedding
            .as_ref()
            .and_then(|e| e[0].iter().find(|v| !v.is_finite()))
        {
            return Err(bad("the embedding", *e));
        }
        Ok(())
    }

    /// Output names except `embedding`, in model order.
    pub fn head_names(&self) -> &[String] {
        &self.heads
    }

    /// The columns of a fused model's `features` input, in order (empty: the model reads the
    /// ECG alone). See [`crate::model::WEARER_FEATURES`].
    pub fn feature_names(&self) -> &[String] {
        &self.features
    }

    /// Whether the model exports the `embedding` output.
    pub fn has_embedding(&self) -> bool {
        self.embedding.is_some()
    }

    /// `metadata_props` of the model file.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `producer_name producer_version` of the file.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The file path (or name) the model came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Hex SHA-256 of the model bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Score `n` windows: `batch` holds `n × 2560` z-scored samples, window after window.
    /// For a fused model (see [`feature_names`](Self::feature_names)) use
    /// [`run_with`](Self::run_with).
    pub fn run(&mut self, batch: &[f32], n: usize) -> Result<Scores, InferError> {
        self.run_with(batch, &[], n)
    }

    /// As [`run`](Self::run), with `features` holding `n × F` values (window after window, in
    /// the order of [`feature_names`](Self::feature_names)); empty for an ECG-only model.
    pub fn run_with(
        &mut self,
        batch: &[f32],
        features: &[f32],
        n: usize,
    ) -> Result<Scores, InferError> {
        let input_err = |reason: String| InferError::Input {
            file: self.source.clone(),
            reason,
        };
        let f = self.features.len();
        if features.len() != n * f {
            return Err(input_err(format!(
                "{} feature values for {n} windows; the model reads {f} per window ({:?})",
                features.len(),
                self.features
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(input_err(format!(
                "window {} has a non-finite feature `{}`",
                i / f.max(1),
                self.features[i % f.max(1)]
            )));
        }
        if batch.len() != n * WINDOW_LEN {
            return Err(input_err(format!(
                "{} samples for {n} windows; expected n × {WINDOW_LEN} = {}",
                batch.len(),
                n * WINDOW_LEN
            )));
        }
        if let Some(i) = batch.iter().position(|v| !v.is_finite()) {
            return Err(input_err(format!(
                "window {} has a non-finite sample at {}",
                i / WINDOW_LEN,
                i % WINDOW_LEN
            )));
        }
        let chunk = match self.fixed_batch {
            None => n.max(1),
            Some(b) if n.is_multiple_of(b) => b,
            Some(b) => {
                return Err(input_err(format!(
                    "the model has a fixed batch of {b}; {n} windows is not a multiple"
                )))
            }
        };
        let mut scores = Scores {
            heads: self.heads.clone(),
            values: Vec::with_capacity(n),
            embedding: self.embedding.map(|_| Vec::with_capacity(n)),
        };
        for (k, part) in batch.chunks(chunk * WINDOW_LEN).enumerate() {
            let m = part.len() / WINDOW_LEN;
            let fpart = &features[k * chunk * f..(k * chunk + m) * f];
            self.run_chunk(part, fpart, m, &mut scores)?;
        }
        Ok(scores)
    }

    fn run_chunk(
        &mut self,
        part: &[f32],
        fpart: &[f32],
        m: usize,
        scores: &mut Scores,
    ) -> Result<(), InferError> {
        let f = self.features.len();
        let (file, backend) = (self.source.clone(), self.backend);
        let run_err = |reason: String| InferError::Run {
            file: file.clone(),
            backend,
            reason,
        };
        let heads = &self.heads;
        let want_embedding = self.embedding.is_some();
        let session = &mut self.session;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<ChunkOut, String> {
            let input = TensorRef::from_array_view(([m, 1, WINDOW_LEN], part))
                .map_err(|e| e.to_string())?;
            let outputs = if f == 0 {
                session.run(ort::inputs![INPUT_NAME => input])
            } else {
                let feats =
                    TensorRef::from_array_view(([m, f], fpart)).map_err(|e| e.to_string())?;
                session.run(ort::inputs![INPUT_NAME => input, FEATURES_NAME => feats])
            }
            .map_err(|e| e.to_string())?;
            let mut values = vec![Vec::with_capacity(heads.len()); m];
            for h in heads {
                let v = outputs
                    .get(h.as_str())
                    .ok_or_else(|| format!("no output `{h}`"))?;
                let (shape, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| format!("output `{h}`: {e}"))?;
                if data.len() != m {
                    return Err(format!(
                        "output `{h}` has shape {:?}, expected [{m}, 1]",
                        &shape[..]
                    ));
                }
                for (row, x) in values.iter_mut().zip(data) {
                    row.push(*x);
                }
            }
            let embedding = if want_embedding {
                let v = outputs
                    .get(EMBEDDING_NAME)
                    .ok_or_else(|| format!("no output `{EMBEDDING_NAME}`"))?;
                let (shape, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| format!("output `{EMBEDDING_NAME}`: {e}"))?;
                if shape.len() != 2 || shape[0] as usize != m || data.len() != m * shape[1] as usize
                {
                    return Err(format!(
                        "output `{EMBEDDING_NAME}` has shape {:?}, expected [{m}, D]",
                        &shape[..]
                    ));
                }
                Some(
                    data.chunks(shape[1] as usize)
                        .map(<[f32]>::to_vec)
                        .collect(),
                )
            } else {
                None
            };
            Ok((values, embedding))
        }));
        match result {
            Ok(Ok((values, embedding))) => {
                scores.values.extend(values);
                if let (Some(all), Some(e)) = (scores.embedding.as_mut(), embedding) {
                    all.extend(e);
                }
                Ok(())
            }
            Ok(Err(reason)) => Err(run_err(reason)),
            Err(_) => Err(run_err("the backend panicked".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backend::{lib_in_dir, resolve_dylib};
    use super::*;

    #[test]
    fn backend_parses_from_config() {
        assert_eq!("tract".parse::<Backend>().unwrap(), Backend::Tract);
        assert_eq!(
            "ONNXRuntime".parse::<Backend>().unwrap(),
            Backend::onnxruntime()
        );
        assert!("cuda"
            .parse::<Backend>()
            .unwrap_err()
            .contains("expected \"tract\" or \"onnxruntime\""));
        let b: Backend = serde_json::from_str("\"onnxruntime\"").unwrap();
        assert_eq!(b, Backend::OnnxRuntime { dylib: None });
        let b: Backend =
            serde_json::from_str(r#"{"kind":"onnxruntime","dylib":"/x/libonnxruntime.so"}"#)
                .unwrap();
        assert_eq!(
            b,
            Backend::OnnxRuntime {
                dylib: Some("/x/libonnxruntime.so".into())
            }
        );
        #[derive(Deserialize)]
        struct Cfg {
            backend: Backend,
        }
        let c: Cfg = toml::from_str("backend = \"tract\"").unwrap();
        assert_eq!(c.backend, Backend::Tract);
        let c: Cfg = toml::from_str("[backend]\nkind = \"ort\"\ndylib = \"/opt/lib.so\"").unwrap();
        assert_eq!(
            c.backend,
            Backend::OnnxRuntime {
                dylib: Some("/opt/lib.so".into())
            }
        );
        assert!(serde_json::from_str::<Backend>("\"tensorflow\"").is_err());
        assert!(serde_json::from_str::<Backend>(r#"{"kind":"tract","dylib":"/x"}"#).is_err());
        for b in [
            Backend::Tract,
            Backend::onnxruntime(),
            Backend::OnnxRuntime {
                dylib: Some("/a/b.so".into()),
            },
        ] {
            let s = serde_json::to_string(&b).unwrap();
            assert_eq!(serde_json::from_str::<Backend>(&s).unwrap(), b, "{s}");
        }
    }

    #[test]
    fn model_can_move_to_a_worker_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Model>();
        assert_send::<InferError>();
    }

    #[test]
    fn check_model_rejects_foreign_bytes() {
        let e = check_model(b"", "m.onnx").err().unwrap().to_string();
        assert!(e.contains("m.onnx") && e.contains("empty"), "{e}");
        let e = check_model(b"hello, this is not a model", "m.onnx")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("m.onnx"), "{e}");
    }

    #[test]
    fn library_search_picks_highest_version() {
        let dir = std::env::temp_dir().join(format!("affectgate-libsearch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.24.1",
            "libonnxruntime_providers_shared.so",
            "other.so",
        ] {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        #[cfg(all(unix, not(target_os = "macos")))]
        assert_eq!(
            lib_in_dir(&dir).unwrap().file_name().unwrap(),
            "libonnxruntime.so.1.24.1"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_configured_library_is_a_clear_error() {
        let b = Backend::OnnxRuntime {
            dylib: Some("/nonexistent/libonnxruntime.so.1.99".into()),
        };
        let e = resolve_dylib(match &b {
            Backend::OnnxRuntime { dylib } => dylib.as_deref(),
            _ => None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/nonexistent/libonnxruntime.so.1.99")
                && e.contains("ORT_DYLIB_PATH")
                && e.contains("pip install onnxruntime"),
            "{e}"
        );
    }
}
