//! The gateway's model registry: which models it can serve, which one serves now, which one
//! served before (for `affectgate model rollback`), and every retraining candidate with the
//! gate's verdict — on disk, so a power cut never leaves the gateway without a model.
//!
//! ```text
//! <dir>/registry.json          {"current": "r0002", "previous": "r0001", "models": [...]}
//! <dir>/<id>/model.onnx        the network (serving format)
//! <dir>/<id>/model.card.toml   its model card
//! ```
//!
//! * The shipped model (the config's `model.path`) is the implicit id `shipped`: it is never
//!   copied or deleted, and serves whenever `current` is empty.
//! * A model directory is written completely under a temporary name and renamed into place;
//!   `registry.json` is written to a temporary file, fsynced and renamed. Either rename is
//!   atomic, so after a crash the registry names only models whose files are complete, and
//!   the previous `registry.json` stays valid until the new one replaces it.
//! * The registry only records decisions; swapping the serving session is the gateway's job
//!   (it re-reads the registry and loads `current` before swapping, see `gateway`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Id of the shipped model (the config's `model.path`).
pub const SHIPPED: &str = "shipped";

/// The model serving now, as the gateway's registry watcher last swapped it in: registry id
/// (`shipped` for the shipped model), version (`<id>@<sha256 prefix>`, the `model` key of
/// every state message) and heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub id: String,
    pub version: String,
    pub heads: Vec<String>,
}

/// Where a model stands. Serialised lower-case in `registry.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelStatus {
    /// Passed the gate, not serving (promote it by hand, or it was replaced).
    Candidate,
    Serving,
    /// Served before the current one: what `rollback` returns to.
    Previous,
    /// Failed the gate: can never be promoted.
    Rejected,
    /// Rolled back; stays on disk.
    Retired,
}

impl std::fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ModelStatus::Candidate => "candidate",
            ModelStatus::Serving => "serving",
            ModelStatus::Previous => "previous",
            ModelStatus::Rejected => "rejected",
            ModelStatus::Retired => "retired",
        })
    }
}

/// What the registry knows about one model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    /// RFC 3339.
    pub created: String,
    /// Model it was retrained from.
    pub parent: String,
    pub status: ModelStatus,
    /// Why it was rejected (gate), or how it was promoted.
    #[serde(default)]
    pub reason: String,
    /// Gate metrics and round facts, free-form JSON (what `model show` prints).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// sha256 of model.onnx.
    pub sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Index {
    current: Option<String>,
    previous: Option<String>,
    models: Vec<Entry>,
}

/// Errors name the registry file or model involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model registry {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model registry {path} is corrupt ({reason}); move it away to start over from the shipped model")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no model {id:?} in the registry (known: {known})")]
    Unknown { id: String, known: String },
    #[error("model {id:?} was rejected by the promotion gate ({reason}); it cannot serve")]
    Rejected { id: String, reason: String },
    #[error("nothing to roll back to: no previous model is recorded")]
    NoPrevious,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The registry in `dir` (created on first write).
#[derive(Clone, Debug)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn open(dir: &Path) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("registry.json")
    }

    fn read(&self) -> Result<Index, RegistryError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn write(&self, idx: &Index) -> Result<(), RegistryError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let bytes = serde_json::to_vec_pretty(idx).expect("index serialises");
        write_synced(&self.index_path(), &bytes)
    }

    /// Every model, oldest first.
    pub fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        Ok(self.read()?.models)
    }

    /// (current, previous) ids; `None` = the shipped model.
    pub fn serving(&self) -> Result<(Option<String>, Option<String>), RegistryError> {
        let idx = self.read()?;
        Ok((idx.current, idx.previous))
    }

    pub fn get(&self, id: &str) -> Result<Entry, RegistryError> {
        let idx = self.read()?;
        find(&idx, id).cloned()
    }

    /// Path of a registered model's ONNX file.
    pub fn model_path(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("model.onnx")
    }

    /// Next free round id (`r0001`, `r0002`, …).
    pub fn next_id(&self) -> Result<String, RegistryError> {
        let n = self
            .read()?
            .models
            .iter()
            .filter_map(|m| m.id.strip_prefix('r').and_then(|n| n.parse::<u32>().ok()))
            .max()
            .unwrap_or(0);
        Ok(format!("r{:04}", n + 1))
    }

    /// Store a model produced by a round (files first, then the index entry). `status` is
    /// `candidate` or `rejected`.
    pub fn add(
        &self,
        mut entry: Entry,
        onnx: &[u8],
        card_toml: &str,
    ) -> Result<Entry, RegistryError> {
        let final_dir = self.dir.join(&entry.id);
        let tmp = self.dir.join(format!("{}.tmp", entry.id));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        write_synced(&tmp.join("model.onnx"), onnx)?;
        write_synced(&tmp.join("model.card.toml"), card_toml.as_bytes())?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        sync_dir(&self.dir);
        entry.sha256 = crate::model::sha256_hex(onnx);
        let mut idx = self.read()?;
        idx.models.retain(|m| m.id != entry.id);
        idx.models.push(entry.clone());
        self.write(&idx)?;
        Ok(entry)
    }

    /// Make `id` serve (`shipped` for the shipped model); the one serving before becomes
    /// `previous`. Rejected models cannot be promoted.
    pub fn promote(&self, id: &str) -> Result<(), RegistryError> {
        let mut idx = self.read()?;
        if id != SHIPPED {
            let e = find(&idx, id)?;
            if e.status == ModelStatus::Rejected {
                return Err(RegistryError::Rejected {
                    id: id.into(),
                    reason: e.reason.clone(),
                });
            }
        }
        let new = (id != SHIPPED).then(|| id.to_string());
        if new == idx.current {
            return Ok(());
        }
        idx.previous = idx.current.take().or_else(|| Some(SHIPPED.into()));
        idx.current = new;
        restatus(&mut idx);
        self.write(&idx)
    }

    /// Serve the previous model again; the current one is retired (it stays on disk).
    pub fn rollback(&self) -> Result<String, RegistryError> {
        let mut idx = self.read()?;
        let prev = idx.previous.take().ok_or(RegistryError::NoPrevious)?;
        let retired = idx.current.take();
        idx.current = (prev != SHIPPED).then(|| prev.clone());
        restatus(&mut idx);
        if let Some(r) = retired {
            if let Some(e) = idx.models.iter_mut().find(|m| m.id == r) {
                e.status = ModelStatus::Retired;
                e.reason = "rolled back".into();
            }
        }
        self.write(&idx)?;
        Ok(prev)
    }
}

fn find<'a>(idx: &'a Index, id: &str) -> Result<&'a Entry, RegistryError> {
    idx.models
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| RegistryError::Unknown {
            id: id.into(),
            known: std::iter::once(SHIPPED.to_string())
                .chain(idx.models.iter().map(|m| m.id.clone()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Statuses follow `current` / `previous`; rejected and retired models keep theirs.
fn restatus(idx: &mut Index) {
    for m in &mut idx.models {
        if Some(&m.id) == idx.current.as_ref() {
            m.status = ModelStatus::Serving;
        } else if Some(&m.id) == idx.previous.as_ref() {
            m.status = ModelStatus::Previous;
        } else if matches!(m.status, ModelStatus::Serving | ModelStatus::Previous) {
            m.status = ModelStatus::Candidate;
        }
    }
}

/// [`crate::fs::atomic_write`], with the registry's error.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    crate::fs::atomic_write(path, bytes).map_err(|e| RegistryError::Io {
        path: e.path,
        source: e.source,
    })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, status: ModelStatus) -> Entry {
        Entry {
            id: id.into(),
            created: "2026-11-25T00:00:00Z".into(),
            parent: SHIPPED.into(),
            status,
            reason: String::new(),
            metrics: serde_json::json!({}),
            sha256: String::new(),
        }
    }

    #[test]
    fn promote_rollback_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("models"));
        assert_eq!(r.serving().unwrap(), (None, None));
        assert_eq!(r.next_id().unwrap(), "r0001");
        let e = r
            .add(entry("r0001", ModelStatus::Candidate), b"onnx-1", "card")
            .unwrap();
        assert_eq!(e.sha256.len(), 64);
        assert_eq!(std::fs::read(r.model_path("r0001")).unwrap(), b"onnx-1");
        r.add(entry("r0002", ModelStatus::Rejected), b"onnx-2", "card")
            .unwrap();
        assert_eq!(r.next_id().unwrap(), "r0003");

        r.promote("r0001").unwrap();
        assert_eq!(
            r.serving().unwrap(),
            (Some("r0001".into()), Some(SHIPPED.into()))
        );
        assert_eq!(r.get("r0001").unwrap().status, ModelStatus::Serving);
        let err = r.promote("r0002").unwrap_err().to_string();
        assert!(err.contains("rejected by the promotion gate"), "{err}");
        let err = r.promote("r0009").unwrap_err().to_string();
        assert!(err.contains("known: shipped, r0001, r0002"), "{err}");

        assert_eq!(r.rollback().unwrap(), SHIPPED);
        assert_eq!(r.serving().unwrap(), (None, None));
        assert_eq!(r.get("r0001").unwrap().status, ModelStatus::Retired);
        assert!(matches!(r.rollback(), Err(RegistryError::NoPrevious)));

        // A leftover temporary directory from a crash is not a model, and a corrupt index
        // is reported with its path.
        std::fs::create_dir_all(r.dir().join("r0003.tmp")).unwrap();
        assert_eq!(r.list().unwrap().len(), 2);
        std::fs::write(r.dir().join("registry.json"), b"{not json").unwrap();
        let err = r.list().unwrap_err().to_string();
        assert!(err.contains("registry.json is corrupt"), "{err}");
    }
}
