//! The gateway's side: everything read from a repository goes through TUF, starting from a
//! pinned `root.json`. `tough` checks signatures against the role thresholds, expiry (unless
//! told otherwise, which only the operator's own editing does), that no metadata version goes
//! back from what `datastore` last saw, that snapshot and timestamp agree (no mix-and-match),
//! and a target's length and sha256 while it is read. Anything else is refused with the reason.

use std::path::Path;

use futures_util::TryStreamExt;
use tough::{ExpirationEnforcement, Repository, RepositoryLoader, TargetName};
use url::Url;

use crate::repo::{metadata_dir, targets_dir};
use crate::FleetError;

/// The base URLs of a repository folder (`file://…/metadata/`, `file://…/targets/`).
pub fn urls_for_dir(repo: &Path) -> Result<(Url, Url), FleetError> {
    let abs = std::fs::canonicalize(repo).map_err(|e| FleetError::io(repo, e))?;
    let u = |p: &Path| {
        Url::from_directory_path(p)
            .map_err(|()| FleetError::Invalid(format!("{}: not an absolute path", p.display())))
    };
    Ok((u(&metadata_dir(&abs))?, u(&targets_dir(&abs))?))
}

/// The base URLs below a repository URL (`http://host/repo` → `…/repo/metadata/`,
/// `…/repo/targets/`).
pub fn urls_for_base(base: &str) -> Result<(Url, Url), FleetError> {
    let mut b = base.to_string();
    if !b.ends_with('/') {
        b.push('/');
    }
    let base = Url::parse(&b).map_err(|e| FleetError::Invalid(format!("{base}: {e}")))?;
    let j = |p: &str| {
        base.join(p)
            .map_err(|e| FleetError::Invalid(format!("{base}{p}: {e}")))
    };
    Ok((j("metadata/")?, j("targets/")?))
}

/// Load and verify the repository in folder `repo` from the pinned `root`. `datastore` keeps
/// the last verified metadata between calls (rollback protection); `None` uses a fresh one.
pub async fn load(
    root: &Path,
    repo: &Path,
    datastore: Option<&Path>,
    expiry: ExpirationEnforcement,
) -> Result<Repository, FleetError> {
    let (meta, targets) = urls_for_dir(repo)?;
    load_urls(root, meta, targets, datastore, expiry).await
}

/// As [`load`], from base URLs: `file://` (a folder, an air-gapped copy) or `http(s)://` (any
/// static server or object store; `tough`'s HTTP transport retries with back-off and resumes
/// an interrupted download with a `Range` request where the server supports it).
pub async fn load_urls(
    root: &Path,
    metadata: Url,
    targets: Url,
    datastore: Option<&Path>,
    expiry: ExpirationEnforcement,
) -> Result<Repository, FleetError> {
    let root_bytes = std::fs::read(root).map_err(|e| FleetError::io(root, e))?;
    let mut loader = RepositoryLoader::new(&root_bytes, metadata.clone(), targets)
        .expiration_enforcement(expiry);
    if let Some(d) = datastore {
        loader = loader.datastore(d);
    }
    loader.load().await.map_err(|e| {
        FleetError::tuf(
            format!("repository {metadata} (pinned root {})", root.display()),
            e,
        )
    })
}

/// The bytes of target `name`, verified (length and sha256 against signed metadata).
pub async fn read_target(repo: &Repository, name: &str) -> Result<Vec<u8>, FleetError> {
    let tn = TargetName::new(name).map_err(|e| FleetError::tuf(name, e))?;
    let stream = repo
        .read_target(&tn)
        .await
        .map_err(|e| FleetError::tuf(format!("target {name}"), e))?
        .ok_or_else(|| FleetError::Invalid(format!("target {name}: not in the signed targets")))?;
    let chunks: Vec<bytes::Bytes> = stream
        .try_collect()
        .await
        .map_err(|e| FleetError::tuf(format!("target {name}"), e))?;
    Ok(chunks.concat())
}
