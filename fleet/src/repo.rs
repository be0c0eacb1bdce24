//! The operator's side of a TUF repository: `<repo>/metadata/` (root, targets, snapshot,
//! timestamp; consistent snapshots, so every version stays addressable) and `<repo>/targets/`
//! (release files, content-addressed by sha256). Serve `<repo>` from any static HTTP server or
//! object store, or copy it for an air-gapped install.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::{PathExists, SignedRepository, SignedRole};
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::TargetName;

use crate::keys::{self, ROLES};
use crate::release::{ReleaseManifest, MANIFEST};
use crate::FleetError;

/// How long each role's metadata stays valid. The timestamp is short on purpose (a frozen
/// mirror is noticed within a day); `affectgate-fleet refresh` re-signs it, from cron.
/// Snapshot and targets are renewed by every release and by `renew` (monthly, from cron
/// where their keys live); the snapshot lasts as long as the targets.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub root_days: i64,
    pub targets_days: i64,
    pub snapshot_days: i64,
    pub timestamp_days: i64,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            root_days: 365,
            targets_days: 90,
            snapshot_days: 90,
            timestamp_days: 1,
        }
    }
}

fn days_from_now(days: i64) -> Result<jiff::Timestamp, FleetError> {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * days))
        .map_err(|e| FleetError::Invalid(format!("expiry {days} days: {e}")))
}

pub use affectgate::fleet::client::{metadata_dir, root_path, targets_dir};

fn role_type(role: &str) -> RoleType {
    match role {
        "root" => RoleType::Root,
        "targets" => RoleType::Targets,
        "snapshot" => RoleType::Snapshot,
        _ => RoleType::Timestamp,
    }
}

async fn all_keys(keys_dir: &Path) -> Result<Vec<Box<dyn KeySource>>, FleetError> {
    ROLES.iter().map(|r| keys::source(keys_dir, r)).collect()
}

/// The keys a release needs: targets, snapshot and timestamp. Never the root key, which the
/// operator keeps offline (the signed root.json is carried over as it is).
async fn release_keys(keys_dir: &Path) -> Result<Vec<Box<dyn KeySource>>, FleetError> {
    ROLES
        .iter()
        .filter(|r| **r != "root")
        .map(|r| keys::source(keys_dir, r))
        .collect()
}

/// Create the keys (refusing to overwrite any) and a repository at `repo` whose metadata is
/// signed and valid: root v1, an empty targets v1, snapshot and timestamp v1.
pub async fn init(repo: &Path, keys_dir: &Path, expiry: Expiry) -> Result<(), FleetError> {
    if root_path(repo).exists() {
        return Err(FleetError::Invalid(format!(
            "{}: a repository already exists here",
            root_path(repo).display()
        )));
    }
    keys::generate(keys_dir)?;
    let mut root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: days_from_now(expiry.root_days)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for role in ROLES {
        let sign = keys::source(keys_dir, role)?.as_sign().await.map_err(|e| {
            FleetError::Invalid(format!("{}: {e}", keys::key_path(keys_dir, role).display()))
        })?;
        let key = sign.tuf_key();
        let id = key
            .key_id()
            .map_err(|e| FleetError::Invalid(format!("{role} key id: {e}")))?;
        root.keys.insert(id.clone(), key);
        root.roles.insert(
            role_type(role),
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
    }
    let rng = SystemRandom::new();
    let root_key = [keys::source(keys_dir, "root")?];
    let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &root_key, &rng)
        .await
        .map_err(|e| FleetError::tuf("signing root.json", e))?;
    let meta = metadata_dir(repo);
    std::fs::create_dir_all(&meta).map_err(|e| FleetError::io(&meta, e))?;
    std::fs::create_dir_all(targets_dir(repo))
        .map_err(|e| FleetError::io(&targets_dir(repo), e))?;
    write_atomic(&meta.join("1.root.json"), signed.buffer())?;
    write_atomic(&root_path(repo), signed.buffer())?;

    let mut editor = RepositoryEditor::new(root_path(repo))
        .await
        .map_err(|e| FleetError::tuf("reading the new root.json", e))?;
    editor
        .targets_version(NonZeroU64::MIN)
        .map_err(|e| FleetError::tuf("targets", e))?
        .targets_expires(days_from_now(expiry.targets_days)?)
        .map_err(|e| FleetError::tuf("targets", e))?
        .snapshot_version(NonZeroU64::MIN)
        .snapshot_expires(days_from_now(expiry.snapshot_days)?)
        .timestamp_version(NonZeroU64::MIN)
        .timestamp_expires(days_from_now(expiry.timestamp_days)?);
    let signed = editor
        .sign(&all_keys(keys_dir).await?)
        .await
        .map_err(|e| FleetError::tuf("signing the first metadata", e))?;
    signed
        .write(&meta)
        .await
        .map_err(|e| FleetError::tuf(format!("writing {}", meta.display()), e))
}

/// Add `files` as targets `<release>/<file name>`, bump targets/snapshot/timestamp versions,
/// re-sign and write; the files are copied into `<repo>/targets`. Returns the target names.
pub async fn release(
    repo: &Path,
    keys_dir: &Path,
    release: &str,
    files: &[PathBuf],
    expiry: Expiry,
) -> Result<Vec<String>, FleetError> {
    let ok = !release.is_empty()
        && release.len() <= 64
        && release
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(FleetError::Invalid(format!(
            "release name {release:?}: 1–64 characters of [a-zA-Z0-9._-]"
        )));
    }
    let current = own(repo).await?;
    let next = next_versions(&current);
    if current
        .targets()
        .signed
        .targets
        .keys()
        .any(|n| n.raw().starts_with(&format!("{release}/")))
    {
        return Err(FleetError::Invalid(format!(
            "release {release:?} already exists in {}: releases are immutable, publish a new name",
            repo.display()
        )));
    }
    check_manifest(&current, release, files).await?;
    // Stage the files under their target names so `copy_targets` finds them.
    let stage = tempdir_in(repo)?;
    let mut names = Vec::new();
    let mut staged = Vec::new();
    let mut editor = RepositoryEditor::from_repo(root_path(repo), current)
        .await
        .map_err(|e| FleetError::tuf("opening the repository for editing", e))?;
    for f in files {
        let base = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FleetError::Invalid(format!("{}: not a file name", f.display())))?;
        let name = format!("{release}/{base}");
        let dst = stage.join(&name);
        std::fs::create_dir_all(dst.parent().unwrap()).map_err(|e| FleetError::io(&dst, e))?;
        std::fs::copy(f, &dst).map_err(|e| FleetError::io(f, e))?;
        let target = Target::from_path(&dst)
            .await
            .map_err(|e| FleetError::Invalid(format!("hashing {}: {e}", f.display())))?;
        let tn = TargetName::new(name.clone()).map_err(|e| FleetError::tuf(name.clone(), e))?;
        editor
            .add_target(tn.clone(), target)
            .map_err(|e| FleetError::tuf(name.clone(), e))?;
        staged.push((dst, tn));
        names.push(name);
    }
    let signed = bump_and_sign(editor, next, keys_dir, expiry, "signing the release").await?;
    // Targets first, then metadata: a gateway never sees metadata naming a missing file.
    let out = targets_dir(repo);
    for (dst, tn) in &staged {
        signed
            .copy_target(dst, &out, PathExists::Fail, Some(tn))
            .await
            .map_err(|e| FleetError::tuf(format!("copying {}", tn.raw()), e))?;
    }
    let meta = metadata_dir(repo);
    signed
        .write(&meta)
        .await
        .map_err(|e| FleetError::tuf(format!("writing {}", meta.display()), e))?;
    let _ = std::fs::remove_dir_all(&stage);
    Ok(names)
}

/// The next targets, snapshot and timestamp versions of `current`.
fn next_versions(current: &tough::Repository) -> (u64, u64, u64) {
    (
        current.targets().signed.version.get() + 1,
        current.snapshot().signed.version.get() + 1,
        current.timestamp().signed.version.get() + 1,
    )
}

/// Give targets, snapshot and timestamp the `next` versions and fresh expiries, and sign them
/// with the release keys (never the root key).
async fn bump_and_sign(
    mut editor: RepositoryEditor,
    next: (u64, u64, u64),
    keys_dir: &Path,
    expiry: Expiry,
    what: &str,
) -> Result<SignedRepository, FleetError> {
    let v = |n: u64| NonZeroU64::new(n).expect("versions start at 1");
    editor
        .targets_version(v(next.0))
        .map_err(|e| FleetError::tuf("targets", e))?
        .targets_expires(days_from_now(expiry.targets_days)?)
        .map_err(|e| FleetError::tuf("targets", e))?
        .snapshot_version(v(next.1))
        .snapshot_expires(days_from_now(expiry.snapshot_days)?)
        .timestamp_version(v(next.2))
        .timestamp_expires(days_from_now(expiry.timestamp_days)?);
    editor
        .sign(&release_keys(keys_dir).await?)
        .await
        .map_err(|e| FleetError::tuf(what, e))
}

/// Renew targets, snapshot and timestamp (new versions, new expiries, the same targets), so a
/// repository without a release for a while stays valid: run it monthly from cron where the
/// targets and snapshot keys live. Returns the new targets version.
pub async fn renew(repo: &Path, keys_dir: &Path, expiry: Expiry) -> Result<u64, FleetError> {
    let current = own(repo).await?;
    let next = next_versions(&current);
    let editor = RepositoryEditor::from_repo(root_path(repo), current)
        .await
        .map_err(|e| FleetError::tuf("opening the repository for editing", e))?;
    let signed = bump_and_sign(
        editor,
        next,
        keys_dir,
        expiry,
        "signing the renewed metadata",
    )
    .await?;
    let meta = metadata_dir(repo);
    signed
        .write(&meta)
        .await
        .map_err(|e| FleetError::tuf(format!("writing {}", meta.display()), e))?;
    Ok(next.0)
}

/// Re-sign the timestamp (new version, new expiry; it still names the same snapshot), for
/// cron: gateways refuse a repository whose timestamp has expired, so a mirror that stops
/// being updated (a freeze attack) is noticed within `timestamp_days`. Needs only the
/// timestamp key: the root, targets and snapshot keys can stay offline.
pub async fn refresh(repo: &Path, keys_dir: &Path, expiry: Expiry) -> Result<u64, FleetError> {
    let current = own(repo).await?;
    let mut timestamp = current.timestamp().signed.clone();
    let version = timestamp.version.get() + 1;
    timestamp.version = NonZeroU64::new(version).unwrap();
    timestamp.expires = days_from_now(expiry.timestamp_days)?;
    let root = KeyHolder::Root(current.root().signed.clone());
    let signed = SignedRole::new(
        timestamp,
        &root,
        &[keys::source(keys_dir, "timestamp")?],
        &SystemRandom::new(),
    )
    .await
    .map_err(|e| FleetError::tuf("signing the timestamp", e))?;
    write_atomic(&metadata_dir(repo).join("timestamp.json"), signed.buffer())?;
    Ok(version)
}

/// Replace the root key: a new root key (`root.pk8`; the old one is kept as
/// `root-v<N>.pk8`), root metadata version N+1 listing it, signed by the old root key (so
/// gateways that trust version N accept it: TUF's chain of roots) and by the new one. The
/// other roles keep their keys. Returns the new root version.
pub async fn rotate_root(repo: &Path, keys_dir: &Path, expiry: Expiry) -> Result<u64, FleetError> {
    let current = own(repo).await?;
    let old_root = current.root().signed.clone();
    let old_v = old_root.version.get();
    let old_key_path = keys::key_path(keys_dir, "root");
    let kept = keys_dir.join(format!("root-v{old_v}.pk8"));
    if kept.exists() {
        return Err(FleetError::Invalid(format!(
            "{}: already exists; was a rotation interrupted? Move it back to root.pk8 after checking which key root.json lists",
            kept.display()
        )));
    }
    std::fs::rename(&old_key_path, &kept).map_err(|e| FleetError::io(&old_key_path, e))?;
    keys::generate_one(keys_dir, "root")?;
    let new_sign = keys::source(keys_dir, "root")?
        .as_sign()
        .await
        .map_err(|e| {
            FleetError::Invalid(format!(
                "{}: {e}",
                keys::key_path(keys_dir, "root").display()
            ))
        })?;
    let new_key = new_sign.tuf_key();
    let new_id = new_key
        .key_id()
        .map_err(|e| FleetError::Invalid(format!("root key id: {e}")))?;
    let mut root = old_root.clone();
    root.version = NonZeroU64::new(old_v + 1).unwrap();
    root.expires = days_from_now(expiry.root_days)?;
    if let Some(old) = root.roles.get(&RoleType::Root).map(|r| r.keyids.clone()) {
        for id in old {
            root.keys.remove(&id);
        }
    }
    root.keys.insert(new_id.clone(), new_key);
    root.roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids: vec![new_id],
            threshold: NonZeroU64::MIN,
            _extra: HashMap::new(),
        },
    );
    let rng = SystemRandom::new();
    let by_old = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(old_root),
        &[
            Box::new(tough::key_source::LocalKeySource { path: kept.clone() })
                as Box<dyn KeySource>,
        ],
        &rng,
    )
    .await
    .map_err(|e| FleetError::tuf("signing the new root with the old key", e))?;
    let by_new = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root),
        &[keys::source(keys_dir, "root")?],
        &rng,
    )
    .await
    .map_err(|e| FleetError::tuf("signing the new root with the new key", e))?;
    let mut signed = by_new.signed().clone();
    signed
        .signatures
        .extend(by_old.signed().signatures.iter().cloned());
    let bytes = signed_json(&signed)?;
    let meta = metadata_dir(repo);
    write_atomic(&meta.join(format!("{}.root.json", old_v + 1)), &bytes)?;
    write_atomic(&root_path(repo), &bytes)?;
    Ok(old_v + 1)
}

/// A signed role as a metadata file (signatures cover the canonical form of `signed`; the
/// file itself may be pretty-printed).
fn signed_json<T: serde::Serialize>(signed: &T) -> Result<Vec<u8>, FleetError> {
    let mut buf = serde_json::to_vec_pretty(signed)
        .map_err(|e| FleetError::Invalid(format!("serialising root.json: {e}")))?;
    buf.push(b'\n');
    Ok(buf)
}

/// The repository as its operator edits it: verified against its own root, but without the
/// expiry check (a release or a refresh is how expired metadata is renewed).
async fn own(repo: &Path) -> Result<tough::Repository, FleetError> {
    crate::client::load(
        &root_path(repo),
        repo,
        None,
        tough::ExpirationEnforcement::Unsafe,
    )
    .await
}

/// Every release manifest (`<name>/release.json`) in `repo`, read through TUF.
pub async fn manifests(repo: &Path) -> Result<Vec<ReleaseManifest>, FleetError> {
    let r = own(repo).await?;
    manifests_of(&r).await
}

async fn manifests_of(r: &tough::Repository) -> Result<Vec<ReleaseManifest>, FleetError> {
    let mut out = Vec::new();
    let names: Vec<String> = r
        .targets()
        .signed
        .targets
        .keys()
        .map(|n| n.raw().to_string())
        .filter(|n| n.ends_with(&format!("/{MANIFEST}")))
        .collect();
    for n in names {
        let bytes = crate::client::read_target(r, &n).await?;
        let m: ReleaseManifest = serde_json::from_slice(&bytes)
            .map_err(|e| FleetError::Invalid(format!("target {n}: {e}")))?;
        out.push(m);
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// A release must carry a valid `release.json` naming it, with a version above every earlier
/// release of its channel (gateways refuse anything else; better to refuse it here first).
async fn check_manifest(
    current: &tough::Repository,
    release: &str,
    files: &[PathBuf],
) -> Result<ReleaseManifest, FleetError> {
    let base = |f: &PathBuf| {
        f.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    };
    let names: Vec<String> = files.iter().map(base).collect();
    let Some(mf) = files.iter().find(|f| base(f) == MANIFEST) else {
        return Err(FleetError::Invalid(format!(
            "release {release:?}: no {MANIFEST} among the files (make the release folder with `affectgate fleet pack`)"
        )));
    };
    let text = std::fs::read(mf).map_err(|e| FleetError::io(mf, e))?;
    let m: ReleaseManifest = serde_json::from_slice(&text)
        .map_err(|e| FleetError::Invalid(format!("{}: {e}", mf.display())))?;
    m.validate(&names)
        .map_err(|e| FleetError::Invalid(format!("{}: {e}", mf.display())))?;
    if m.name != release {
        return Err(FleetError::Invalid(format!(
            "{}: name {:?}, but the release is called {release:?}",
            mf.display(),
            m.name
        )));
    }
    if let Some(top) = manifests_of(current)
        .await?
        .into_iter()
        .filter(|o| o.channel == m.channel)
        .max_by_key(|o| o.version)
    {
        if m.version <= top.version {
            return Err(FleetError::Invalid(format!(
                "{}: version {} is not above {} (version {}) on channel {:?}; gateways would refuse it as a downgrade",
                mf.display(),
                m.version,
                top.name,
                top.version,
                m.channel
            )));
        }
    }
    Ok(m)
}

/// Fleet-wide rollback: publish release `to`'s files again as a new release `name` with the
/// next version of its channel (`rollback_of = to`). Gateways install it like any release;
/// TUF still never goes back, and no gateway ever accepts a lower version.
pub async fn rollback(
    repo: &Path,
    keys_dir: &Path,
    to: &str,
    name: &str,
    expiry: Expiry,
) -> Result<ReleaseManifest, FleetError> {
    let r = own(repo).await?;
    let all = manifests_of(&r).await?;
    let old = all.iter().find(|m| m.name == to).cloned().ok_or_else(|| {
        FleetError::Invalid(format!(
            "--to {to:?}: no such release (releases: {})",
            all.iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let top = all
        .iter()
        .filter(|m| m.channel == old.channel)
        .map(|m| m.version)
        .max()
        .unwrap_or(old.version);
    // Not `tempdir_in`: `release` below uses (and empties) that one.
    let stage = repo.join(format!(".rollback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| FleetError::io(&stage, e))?;
    let prefix = format!("{to}/");
    let mut files = Vec::new();
    let names = crate::client::release_targets(&r, to);
    let mut m = old.clone();
    m.name = name.to_string();
    m.version = top + 1;
    m.rollback_of = Some(to.to_string());
    m.summary = format!("Rollback to {to}: {}", old.summary);
    for n in names {
        let file = &n[prefix.len()..];
        let path = stage.join(file);
        let bytes = if file == MANIFEST {
            serde_json::to_vec_pretty(&m).expect("manifest serialises")
        } else {
            crate::client::read_target(&r, &n).await?
        };
        std::fs::write(&path, bytes).map_err(|e| FleetError::io(&path, e))?;
        files.push(path);
    }
    drop(r);
    let res = release(repo, keys_dir, name, &files, expiry).await;
    let _ = std::fs::remove_dir_all(&stage);
    res.map(|_| m)
}

fn tempdir_in(repo: &Path) -> Result<PathBuf, FleetError> {
    let p = repo.join(format!(".stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).map_err(|e| FleetError::io(&p, e))?;
    Ok(p)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| FleetError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FleetError::io(path, e))
}
