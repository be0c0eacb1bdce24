//! The four role keys of a repository: `<keys>/{root,targets,snapshot,timestamp}.pk8`,
//! Ed25519 PKCS#8 (what `tough`'s `LocalKeySource` reads), created 0600 in a 0700 folder.
//! An existing key is never overwritten.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use tough::key_source::{KeySource, LocalKeySource};

use crate::FleetError;

/// The roles, in the order they are created.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// Path of one role's key.
pub fn key_path(keys_dir: &Path, role: &str) -> PathBuf {
    keys_dir.join(format!("{role}.pk8"))
}

/// Create the four keys. Refuses when any already exists (a repository's keys are replaced
/// by rotation, never by accident).
pub fn generate(keys_dir: &Path) -> Result<(), FleetError> {
    for role in ROLES {
        let p = key_path(keys_dir, role);
        if p.exists() {
            return Err(FleetError::Invalid(format!(
                "{}: a key already exists; keys are never overwritten (rotate instead, or use another --keys folder)",
                p.display()
            )));
        }
    }
    std::fs::create_dir_all(keys_dir).map_err(|e| FleetError::io(keys_dir, e))?;
    set_mode(keys_dir, 0o700)?;
    let rng = SystemRandom::new();
    for role in ROLES {
        let p = key_path(keys_dir, role);
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| FleetError::Invalid("generating an Ed25519 key failed".into()))?;
        write_private(&p, doc.as_ref())?;
    }
    Ok(())
}

/// Create one role's key (rotation); refuses to overwrite.
pub fn generate_one(keys_dir: &Path, role: &str) -> Result<(), FleetError> {
    let p = key_path(keys_dir, role);
    if p.exists() {
        return Err(FleetError::Invalid(format!(
            "{}: a key already exists",
            p.display()
        )));
    }
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| FleetError::Invalid("generating an Ed25519 key failed".into()))?;
    write_private(&p, doc.as_ref())
}

/// One role's key as `tough` signs with it.
pub fn source(keys_dir: &Path, role: &str) -> Result<Box<dyn KeySource>, FleetError> {
    let path = key_path(keys_dir, role);
    if !path.is_file() {
        return Err(FleetError::Invalid(format!(
            "{}: no {role} key (create keys with `affectgate-fleet init`)",
            path.display()
        )));
    }
    Ok(Box::new(LocalKeySource { path }))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).map_err(|e| FleetError::io(path, e))?;
    f.write_all(bytes).map_err(|e| FleetError::io(path, e))?;
    f.sync_all().map_err(|e| FleetError::io(path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), FleetError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| FleetError::io(path, e))?;
    }
    Ok(())
}
