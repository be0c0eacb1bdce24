//! The gateway's side: everything read from a repository goes through TUF, starting from a
//! pinned `root.json`. `tough` checks signatures against the role thresholds, expiry (unless
//! told otherwise, which only the operator's own editing does), that no metadata version goes
//! back from what `datastore` last saw, that snapshot and timestamp agree (no mix-and-match),
//! and a target's length and sha256 while it is read. Anything else is refused with the reason.

use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use tough::{ExpirationEnforcement, Repository, RepositoryLoader, TargetName};
use url::Url;

use super::transport::Fetcher;
use super::FleetError;

/// `<repo>/metadata`.
pub fn metadata_dir(repo: &Path) -> PathBuf {
    repo.join("metadata")
}
/// `<repo>/targets`.
pub fn targets_dir(repo: &Path) -> PathBuf {
    repo.join("targets")
}
/// The repository's current root, the file gateways pin (`[fleet] root`).
pub fn root_path(repo: &Path) -> PathBuf {
    metadata_dir(repo).join("root.json")
}

/// The metadata and targets base URLs of `repository`: an `http(s)://` URL, or a folder.
pub fn urls_for(repository: &str) -> Result<(Url, Url), FleetError> {
    if repository.starts_with("http://") || repository.starts_with("https://") {
        urls_for_base(repository)
    } else {
        urls_for_dir(Path::new(
            repository.strip_prefix("file://").unwrap_or(repository),
        ))
    }
}

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
/// static server or object store; [`Fetcher`] resumes an interrupted download with a `Range`
/// request).
pub async fn load_urls(
    root: &Path,
    metadata: Url,
    targets: Url,
    datastore: Option<&Path>,
    expiry: ExpirationEnforcement,
) -> Result<Repository, FleetError> {
    let root_bytes = std::fs::read(root).map_err(|e| FleetError::io(root, e))?;
    let mut loader = RepositoryLoader::new(&root_bytes, metadata.clone(), targets)
        .transport(Fetcher::default())
        .expiration_enforcement(expiry);
    if let Some(d) = datastore {
        std::fs::create_dir_all(d).map_err(|e| FleetError::io(d, e))?;
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

/// The signed target names of `release` (`<release>/<file>`), sorted.
pub fn release_targets(repo: &Repository, release: &str) -> Vec<String> {
    let prefix = format!("{release}/");
    let mut names: Vec<String> = repo
        .targets()
        .signed
        .targets
        .keys()
        .map(|n| n.raw().to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Download and verify every target of release `release` (`<release>/<file>`) into `out`
/// (which must not exist yet): each file is read through TUF (length and sha256 checked),
/// written into a sibling temporary folder, fsynced, and the folder renamed to `out` only when
/// all are complete. So `out` either holds the whole verified release or does not exist — a
/// cut, a tampered file or a full disk never leaves a partial release to install. Returns the
/// file names written.
pub async fn fetch_release(
    repo: &Repository,
    release: &str,
    out: &Path,
) -> Result<Vec<String>, FleetError> {
    if out.exists() {
        return Err(FleetError::Invalid(format!(
            "{}: already exists (a release is fetched into a new folder)",
            out.display()
        )));
    }
    let prefix = format!("{release}/");
    let names = release_targets(repo, release);
    if names.is_empty() {
        return Err(FleetError::Invalid(format!(
            "release {release:?}: no such release in the signed targets"
        )));
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        out.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| FleetError::io(&tmp, e))?;
    let result = async {
        let mut files = Vec::new();
        for name in &names {
            let bytes = read_target(repo, name).await?;
            let file = &name[prefix.len()..];
            if file.contains('/') || file.is_empty() || file.starts_with('.') {
                return Err(FleetError::Invalid(format!(
                    "target {name}: not a plain file name"
                )));
            }
            let path = tmp.join(file);
            write_synced(&path, &bytes)?;
            files.push(file.to_string());
        }
        Ok(files)
    }
    .await;
    match result {
        Ok(files) => {
            std::fs::rename(&tmp, out).map_err(|e| FleetError::io(out, e))?;
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
            Ok(files)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| FleetError::io(path, e))?;
    f.write_all(bytes).map_err(|e| FleetError::io(path, e))?;
    f.sync_all().map_err(|e| FleetError::io(path, e))
}
