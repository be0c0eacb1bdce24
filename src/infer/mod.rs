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
//! `tests/onnx_infer.rs` (`bench_backends`) measures both backends on the full-size emotion
//! network. ONNX Runtime uses its default intra-op thread pool (one thread per core) with
//! spinning off; tract runs single-threaded (`tract-linalg`'s `multithread-mm` feature is not
//! enabled).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

/// Samples per window: the one window type of the project.
pub use crate::dsp::WINDOW_LEN;
/// Name of the optional embedding output (not a head).
pub use crate::learn::onnx::EMBEDDING_NAME;
/// Name of the model input.
pub use crate::learn::onnx::INPUT_NAME;
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

// ─────────────────────── process-wide backend state ───────────────────────

struct Active {
    kind: BackendKind,
    env: Environment,
    /// The ONNX Runtime library in use.
    dylib: Option<PathBuf>,
}

static ACTIVE: Mutex<Option<Active>> = Mutex::new(None);

/// The backend this process has committed to, if any (see the module docs).
pub fn active_backend() -> Option<BackendKind> {
    ACTIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|a| a.kind)
}

/// The ONNX Runtime library this process loaded, if it uses ONNX Runtime.
pub fn active_dylib() -> Option<PathBuf> {
    ACTIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|a| a.dylib.clone())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The environment for `backend`, initialising `ort` on first use.
fn environment(backend: &Backend) -> Result<Environment, InferError> {
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let requested = backend.kind();
    if let Some(a) = active.as_ref() {
        if a.kind == requested {
            if let (Backend::OnnxRuntime { dylib: Some(want) }, Some(have)) = (backend, &a.dylib) {
                if !same_file(want, have) {
                    return Err(InferError::BackendConflict {
                        active: format!("onnxruntime backend (library {})", have.display()),
                        requested: format!("ONNX Runtime from {}", want.display()),
                    });
                }
            }
            return Ok(a.env.clone());
        }
    }
    // Resolve the library before looking at conflicts: a missing library is the first thing
    // to fix, and resolving has no process-wide effect.
    let dylib = match backend {
        Backend::Tract => None,
        Backend::OnnxRuntime { dylib } => Some(resolve_dylib(dylib.as_deref())?),
    };
    if let Some(a) = active.as_ref() {
        return Err(InferError::BackendConflict {
            active: a.kind.to_string(),
            requested: match requested {
                BackendKind::Tract => "tract".into(),
                BackendKind::OnnxRuntime => "ONNX Runtime".into(),
            },
        });
    }
    match &dylib {
        None => {
            if !ort::set_api(ort_tract::api()) && !api_is_tract() {
                return Err(InferError::BackendConflict {
                    active: "ONNX Runtime API (set outside affectgate::infer)".into(),
                    requested: "tract".into(),
                });
            }
        }
        Some(path) => {
            let api = load_onnxruntime_api(path)?;
            if !ort::set_api(api) && api_is_tract() {
                return Err(InferError::BackendConflict {
                    active: "tract API (set outside affectgate::infer)".into(),
                    requested: "ONNX Runtime".into(),
                });
            }
        }
    }
    let env = catch_unwind(|| {
        ort::init()
            .with_name("affectgate")
            .with_telemetry(false)
            .build()
    })
    .map_err(|_| "panicked".to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    let env = match env {
        Ok(env) => env,
        Err(reason) => {
            return Err(InferError::Session {
                file: "<environment>".into(),
                backend: requested,
                reason: format!("cannot create the ort environment: {reason}"),
            })
        }
    };
    *active = Some(Active {
        kind: requested,
        env: env.clone(),
        dylib,
    });
    Ok(env)
}

/// Whether the API already installed in `ort` is tract's (only called once one is set).
fn api_is_tract() -> bool {
    catch_unwind(ort::info)
        .map(|s| s.contains("ort-tract"))
        .unwrap_or(false)
}

fn resolve_dylib(explicit: Option<&Path>) -> Result<PathBuf, InferError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(InferError::DylibNotFound {
                detail: format!("the configured library {} does not exist", p.display()),
            })
        };
    }
    if let Some(v) = std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(InferError::DylibNotFound {
                detail: format!("{ORT_DYLIB_ENV}={} does not exist", p.display()),
            })
        };
    }
    find_onnxruntime_dylib().ok_or_else(|| InferError::DylibNotFound {
        detail:
            "searched the python `onnxruntime` wheel (python3/python), the executable's directory, \
                 LD_LIBRARY_PATH and the usual lib directories"
                .into(),
    })
}

/// `dlopen` the library (validating its version through `ort::init_from`) and return the
/// `OrtApi` table for `ort`'s API version.
fn load_onnxruntime_api(path: &Path) -> Result<ort::sys::OrtApi, InferError> {
    let err = |reason: String| InferError::DylibLoad {
        path: path.to_path_buf(),
        reason,
    };
    // Loads into ort's own handle and checks the version (≥ 1.MINOR_VERSION).
    match catch_unwind(|| ort::init_from(path).map(|_| ())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(err(e.to_string())),
        Err(_) => return Err(err("loading panicked".into())),
    }
    let base = dl::api_base(path).map_err(err)?;
    // SAFETY: `base` is the library's `OrtApiBase`; `GetApi` returns either null or a pointer to
    // a static `OrtApi` at least as long as the version requested, valid while the library is
    // loaded (never unloaded: `dl::api_base` leaks its handle).
    let api = unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) };
    if api.is_null() {
        return Err(err(format!(
            "the library does not provide ONNX Runtime API version {}",
            ort::sys::ORT_API_VERSION
        )));
    }
    Ok(unsafe { (*api).clone() })
}

#[cfg(unix)]
mod dl {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::path::Path;

    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *const c_char;
    }
    const RTLD_NOW: c_int = 2;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    const RTLD_LOCAL: c_int = 4;
    #[cfg(not(any(target_os = "macos", target_os = "ios")))]
    const RTLD_LOCAL: c_int = 0;

    fn last_error() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated thread-local string.
        let e = unsafe { dlerror() };
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        }
    }

    /// `OrtGetApiBase()` of the library at `path` (already loaded by `ort::init_from`, so this
    /// only takes another reference; the handle is kept for the life of the process).
    pub fn api_base(path: &Path) -> Result<*const ort::sys::OrtApiBase, String> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "path contains NUL".to_string())?;
        // SAFETY: plain libc calls with valid C strings.
        unsafe {
            let h = dlopen(c.as_ptr(), RTLD_NOW | RTLD_LOCAL);
            if h.is_null() {
                return Err(last_error());
            }
            let sym = dlsym(h, c"OrtGetApiBase".as_ptr());
            if sym.is_null() {
                return Err("the library does not export OrtGetApiBase: not ONNX Runtime".into());
            }
            let get: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase =
                std::mem::transmute(sym);
            let base = get();
            if base.is_null() {
                return Err("OrtGetApiBase returned null".into());
            }
            Ok(base)
        }
    }
}

#[cfg(not(unix))]
mod dl {
    pub fn api_base(_: &std::path::Path) -> Result<*const ort::sys::OrtApiBase, String> {
        Err("loading ONNX Runtime is only implemented on Unix; use the tract backend".into())
    }
}

// ─────────────────────────────── library search ───────────────────────────────

#[cfg(target_os = "macos")]
const LIB_PREFIX: &str = "libonnxruntime";
#[cfg(target_os = "macos")]
fn lib_matches(name: &str) -> bool {
    name.starts_with("libonnxruntime.") && name.ends_with(".dylib")
}
#[cfg(windows)]
const LIB_PREFIX: &str = "onnxruntime";
#[cfg(windows)]
fn lib_matches(name: &str) -> bool {
    name.eq_ignore_ascii_case("onnxruntime.dll")
}
#[cfg(not(any(target_os = "macos", windows)))]
const LIB_PREFIX: &str = "libonnxruntime";
#[cfg(not(any(target_os = "macos", windows)))]
fn lib_matches(name: &str) -> bool {
    name == "libonnxruntime.so" || name.starts_with("libonnxruntime.so.")
}

/// The ONNX Runtime library in `dir`: the highest-versioned `libonnxruntime.so*`.
fn lib_in_dir(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(lib_matches))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let version = |p: &PathBuf| -> Vec<u64> {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.trim_start_matches(LIB_PREFIX)
            .split('.')
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    found.sort_by_key(version);
    found.pop()
}

fn python_wheel_dir() -> Option<PathBuf> {
    // find_spec locates the package without importing it (importing pulls in numpy).
    const SCRIPT: &str = "import importlib.util,os\n\
        s=importlib.util.find_spec('onnxruntime')\n\
        print(os.path.dirname(s.origin) if s and s.origin else '')";
    for py in ["python3", "python"] {
        let Ok(out) = Command::new(py)
            .args(["-c", SCRIPT])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !dir.is_empty() {
            return Some(PathBuf::from(dir));
        }
    }
    None
}

/// Locate the ONNX Runtime shared library: `ORT_DYLIB_PATH` (if it names an existing file),
/// then the `onnxruntime` Python wheel (`python3 -c …`, `<package>/capi/libonnxruntime.so.*`),
/// then the executable's directory (and its `lib/`), `LD_LIBRARY_PATH`, and the usual system
/// and `/opt/onnxruntime/lib` directories.
pub fn find_onnxruntime_dylib() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(lib) = python_wheel_dir().and_then(|d| lib_in_dir(&d.join("capi"))) {
        return Some(lib);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("lib"));
        dirs.push(exe_dir);
    }
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&ld));
    }
    let arch = std::env::consts::ARCH;
    for d in [
        "/usr/local/lib".to_string(),
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib".to_string(),
        "/usr/lib64".to_string(),
        "/opt/onnxruntime/lib".to_string(),
        "/opt/homebrew/lib".to_string(),
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.iter().find_map(|d| lib_in_dir(d))
}

// ─────────────────────────────── model checks ───────────────────────────────

/// What the pre-check learns from the model bytes.
struct Checked {
    heads: Vec<String>,
    embedding_dim: Option<Option<usize>>,
    fixed_batch: Option<usize>,
    metadata: Vec<(String, String)>,
    producer: String,
}

fn tensor_dims(vi: &pb::ValueInfoProto) -> Option<(i32, Option<Vec<Option<i64>>>)> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some((
            t.elem_type,
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            }),
        )),
    }
}

fn fmt_dims(d: &[Option<i64>]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| x.map_or("?".into(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn check_model(bytes: &[u8], file: &str) -> Result<Checked, InferError> {
    let bad = |reason: String| InferError::InvalidModel {
        file: file.to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    let m = pb::ModelProto::decode(bytes).map_err(|e| {
        bad(format!(
            "not ONNX protobuf ({e}); the file may be truncated or not a model"
        ))
    })?;
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| bad("no graph (not an ONNX model?)".into()))?;
    if g.node.is_empty() || m.ir_version <= 0 {
        return Err(bad(format!(
            "empty graph or no IR version (ir_version {}): not an ONNX model?",
            m.ir_version
        )));
    }
    let float = pb::tensor_proto::DataType::Float as i32;
    let names_ok = |n: &str| !n.is_empty() && !n.contains('\0');
    let inputs: Vec<&pb::ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
        .collect();
    let input_names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let Some(ecg) = inputs.iter().find(|i| i.name == INPUT_NAME) else {
        return Err(bad(format!(
            "no input named `{INPUT_NAME}` (inputs: {input_names:?})"
        )));
    };
    if inputs.len() != 1 {
        return Err(bad(format!(
            "expected the single input `{INPUT_NAME}`, found {input_names:?}"
        )));
    }
    let expected = format!("float32 [N, 1, {WINDOW_LEN}]");
    let (elem, dims) = tensor_dims(ecg).ok_or_else(|| {
        bad(format!(
            "input `{INPUT_NAME}` is not a tensor (expected {expected})"
        ))
    })?;
    if elem != float {
        return Err(bad(format!(
            "input `{INPUT_NAME}` has element type {elem}, expected {expected}"
        )));
    }
    let dims = dims.ok_or_else(|| {
        bad(format!(
            "input `{INPUT_NAME}` has no shape (expected {expected})"
        ))
    })?;
    if dims.len() != 3
        || dims[1] != Some(1)
        || dims[2] != Some(WINDOW_LEN as i64)
        || dims[0].is_some_and(|b| b < 1)
    {
        return Err(bad(format!(
            "input `{INPUT_NAME}` has shape {}, expected {expected}",
            fmt_dims(&dims)
        )));
    }
    let fixed_batch = dims[0].map(|b| b as usize);

    let mut heads = Vec::new();
    let mut embedding_dim = None;
    for o in &g.output {
        if !names_ok(&o.name) {
            return Err(bad(format!(
                "output name {:?} is empty or contains NUL",
                o.name
            )));
        }
        let info = tensor_dims(o);
        if let Some((elem, _)) = &info {
            if *elem != float {
                return Err(bad(format!(
                    "output `{}` has element type {elem}, expected float32",
                    o.name
                )));
            }
        }
        let odims = info.and_then(|(_, d)| d);
        if o.name == EMBEDDING_NAME {
            embedding_dim = Some(
                odims
                    .as_ref()
                    .and_then(|d| d.get(1).copied().flatten())
                    .map(|v| v as usize),
            );
            continue;
        }
        if let Some(d) = &odims {
            if d.len() != 2 || d[1].is_some_and(|v| v != 1) {
                return Err(bad(format!(
                    "head output `{}` has shape {}, expected [N, 1]",
                    o.name,
                    fmt_dims(d)
                )));
            }
        }
        heads.push(o.name.clone());
    }
    if heads.is_empty() {
        return Err(bad("no head outputs (only `embedding` or nothing)".into()));
    }
    Ok(Checked {
        heads,
        embedding_dim,
        fixed_batch,
        metadata: m
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
        producer: format!("{} {}", m.producer_name, m.producer_version)
            .trim()
            .to_string(),
    })
}

/// Build and run the model once with tract directly, inside `catch_unwind`.
///
/// `ort-tract` calls tract from `extern "system"` functions, where a panic cannot unwind and
/// aborts the process; tract panics on some malformed graphs (e.g. a pool whose attributes
/// were damaged). Doing the same work here first turns those into errors. It costs one
/// parse/optimise and one forward pass of `batch` zero windows at load time.
fn tract_preflight(bytes: &[u8], batch: usize) -> Result<(), String> {
    use tract_onnx::prelude::*;
    let result = catch_unwind(AssertUnwindSafe(|| -> TractResult<()> {
        let model = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
        let plan = model.into_optimized()?.into_runnable()?;
        let x = Tensor::zero::<f32>(&[batch, 1, WINDOW_LEN])?;
        plan.run(tvec!(x.into_tvalue()))?;
        Ok(())
    }));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(format!(
                "tract panicked on this graph ({what}); the model is malformed"
            ))
        }
    }
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
    /// Load an ONNX file. Errors name the file.
    pub fn load(path: &Path, backend: &Backend) -> Result<Model, InferError> {
        let bytes = std::fs::read(path).map_err(|source| InferError::Io {
            path: path.to_path_buf(),
            source,
        })?;
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
            tract_preflight(bytes, checked.fixed_batch.unwrap_or(2)).map_err(session_err)?;
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
        Ok(Model {
            session,
            backend: kind,
            source: name.to_string(),
            heads: checked.heads,
            embedding: checked.embedding_dim,
            fixed_batch: checked.fixed_batch,
            metadata: checked.metadata,
            producer: checked.producer,
            sha256: crate::learn::onnx::sha256_hex(bytes),
        })
    }

    /// Output names except `embedding`, in model order.
    pub fn head_names(&self) -> &[String] {
        &self.heads
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
    pub fn run(&mut self, batch: &[f32], n: usize) -> Result<Scores, InferError> {
        let input_err = |reason: String| InferError::Input {
            file: self.source.clone(),
            reason,
        };
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
        for part in batch.chunks(chunk * WINDOW_LEN) {
            self.run_chunk(part, part.len() / WINDOW_LEN, &mut scores)?;
        }
        Ok(scores)
    }

    fn run_chunk(&mut self, part: &[f32], m: usize, scores: &mut Scores) -> Result<(), InferError> {
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
            let outputs = session
                .run(ort::inputs![INPUT_NAME => input])
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
