//! Which inference back-end this process uses, and finding and loading ONNX Runtime.
//!
//! `ort` holds one API table per process, so the first model loaded commits the process to
//! tract or to one ONNX Runtime library; a later request for the other is a clear
//! [`InferError::BackendConflict`], never a silent switch.

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ort::environment::Environment;

use super::{Backend, BackendKind, InferError, ORT_DYLIB_ENV};

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
pub(super) fn environment(backend: &Backend) -> Result<Environment, InferError> {
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

pub(super) fn resolve_dylib(explicit: Option<&Path>) -> Result<PathBuf, InferError> {
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

mod dl {
    use std::path::Path;

    /// `OrtGetApiBase()` of the library at `path` (already loaded by `ort::init_from`, so this
    /// only takes another reference; the handle is kept for the life of the process).
    pub fn api_base(path: &Path) -> Result<*const ort::sys::OrtApiBase, String> {
        // SAFETY: loading ONNX Runtime runs its initialisers, which are sound to run (ort has
        // loaded the same file already); the handle is leaked so the returned table outlives
        // every session.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
        let get = unsafe {
            lib.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase\0")
        }
        .map_err(|_| "the library does not export OrtGetApiBase: not ONNX Runtime".to_string())?;
        // SAFETY: calling the library's own exported function with no arguments.
        let base = unsafe { get() };
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        Ok(base)
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
pub(super) fn lib_in_dir(dir: &Path) -> Option<PathBuf> {
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
