//! The repository as a gateway sees it: a release made with the operator's functions is read
//! back through TUF byte for byte; tampering, a wrong pinned root, expired metadata and a
//! rollback to older metadata are each refused with a reason, and nothing is returned.

use std::path::{Path, PathBuf};

use affectgate_fleet::repo::{self, Expiry};
use affectgate_fleet::{client, FleetError};
use tough::ExpirationEnforcement::Safe;

fn model_files() -> Vec<PathBuf> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    vec![
        models.join("affectgate-arousal-v2.onnx"),
        models.join("affectgate-arousal-v2.card.toml"),
    ]
}

/// The model files plus a `release.json` (version `version`) and a `golden.json`, written
/// under `dir/<name>-files/`.
fn release_files(dir: &Path, name: &str, version: u64) -> Vec<PathBuf> {
    let d = dir.join(format!("{name}-files"));
    std::fs::create_dir_all(&d).unwrap();
    let manifest = serde_json::json!({
        "name": name, "version": version, "min_gateway": "0.1.0", "channel": "stable",
        "summary": "test", "model": "affectgate-arousal-v2.onnx",
        "card": "affectgate-arousal-v2.card.toml", "golden": "golden.json",
    });
    std::fs::write(d.join("release.json"), manifest.to_string()).unwrap();
    std::fs::write(d.join("golden.json"), r#"{"features":[],"windows":[]}"#).unwrap();
    let mut f = model_files();
    f.push(d.join("release.json"));
    f.push(d.join("golden.json"));
    f
}

async fn released(dir: &Path) -> (PathBuf, PathBuf) {
    let (r, k) = (dir.join("repo"), dir.join("keys"));
    repo::init(&r, &k, Expiry::default()).await.unwrap();
    repo::release(
        &r,
        &k,
        "arousal-v2",
        &release_files(dir, "arousal-v2", 2),
        Expiry::default(),
    )
    .await
    .unwrap();
    (r, k)
}

/// A new repository whose timestamp expired yesterday.
async fn expired(dir: &Path) -> (PathBuf, PathBuf) {
    let (r, k) = (dir.join("repo"), dir.join("keys"));
    let stale = Expiry {
        timestamp_days: -1,
        ..Expiry::default()
    };
    repo::init(&r, &k, stale).await.unwrap();
    (r, k)
}

fn err_text(e: FleetError) -> String {
    // The whole chain: tough puts the specific reason in its sources.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(x) = src {
        s.push_str(" / ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[tokio::test]
async fn a_release_reads_back_byte_for_byte_through_tuf() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _k) = released(dir.path()).await;
    let repo = client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .unwrap();
    assert_eq!(repo.targets().signed.version.get(), 2);
    for f in model_files() {
        let name = format!("arousal-v2/{}", f.file_name().unwrap().to_str().unwrap());
        let got = client::read_target(&repo, &name).await.unwrap();
        assert_eq!(got, std::fs::read(&f).unwrap(), "{name}");
    }
    let missing = client::read_target(&repo, "arousal-v9/model.onnx")
        .await
        .unwrap_err();
    assert!(err_text(missing).contains("not in the signed targets"));
    // Releases are immutable.
    let again = repo::release(
        &r,
        &dir.path().join("keys"),
        "arousal-v2",
        &release_files(dir.path(), "arousal-v2", 2),
        Expiry::default(),
    )
    .await
    .unwrap_err();
    assert!(err_text(again).contains("already exists"));
}

#[tokio::test]
async fn a_tampered_artifact_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _k) = released(dir.path()).await;
    // Flip one byte in the stored ONNX file (whatever its content-addressed name).
    flip_stored_onnx_byte(&r, 1000, 0x01);
    let repo = client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .unwrap();
    let e = client::read_target(&repo, "arousal-v2/affectgate-arousal-v2.onnx")
        .await
        .unwrap_err();
    let t = err_text(e);
    assert!(
        t.contains("arousal-v2/affectgate-arousal-v2.onnx") && t.to_lowercase().contains("hash"),
        "{t}"
    );
}

#[tokio::test]
async fn a_repository_signed_by_other_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _k) = released(&dir.path().join("a")).await;
    let (other, _) = released(&dir.path().join("b")).await;
    // Gateways pin repository a's root; someone serves repository b at the same place.
    let e = client::load(&repo::root_path(&r), &other, None, Safe)
        .await
        .unwrap_err();
    let t = err_text(e);
    assert!(
        t.contains("pinned root") && t.to_lowercase().contains("signature"),
        "{t}"
    );
}

#[tokio::test]
async fn expired_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _keys) = expired(dir.path()).await;
    let e = client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .unwrap_err();
    let t = err_text(e);
    assert!(
        t.to_lowercase().contains("expired") && t.contains("timestamp"),
        "{t}"
    );
}

/// `refresh` (cron) brings an expired repository back with only the timestamp key online.
#[tokio::test]
async fn refresh_resigns_an_expired_timestamp_with_the_online_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let (r, k) = expired(dir.path()).await;
    assert!(client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .is_err());
    // Every key but the timestamp's goes offline.
    let offline = dir.path().join("offline");
    std::fs::create_dir_all(&offline).unwrap();
    for role in ["root", "targets", "snapshot"] {
        std::fs::rename(
            affectgate_fleet::keys::key_path(&k, role),
            affectgate_fleet::keys::key_path(&offline, role),
        )
        .unwrap();
    }
    assert_eq!(repo::refresh(&r, &k, Expiry::default()).await.unwrap(), 2);
    let repo = client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .unwrap();
    assert_eq!(repo.timestamp().signed.version.get(), 2);
    assert!(repo.timestamp().signed.expires > jiff::Timestamp::now());
}

#[tokio::test]
async fn older_metadata_after_newer_is_a_rollback_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, k) = (dir.path().join("repo"), dir.path().join("keys"));
    repo::init(&r, &k, Expiry::default()).await.unwrap();
    let old_timestamp = std::fs::read(repo::metadata_dir(&r).join("timestamp.json")).unwrap();
    repo::release(
        &r,
        &k,
        "arousal-v2",
        &release_files(dir.path(), "arousal-v2", 2),
        Expiry::default(),
    )
    .await
    .unwrap();
    // A gateway sees version 2 (its datastore remembers it) …
    let store = dir.path().join("gateway-datastore");
    std::fs::create_dir_all(&store).unwrap();
    client::load(&repo::root_path(&r), &r, Some(&store), Safe)
        .await
        .unwrap();
    // … then a mirror serves the older, validly signed timestamp again.
    std::fs::write(repo::metadata_dir(&r).join("timestamp.json"), old_timestamp).unwrap();
    let e = client::load(&repo::root_path(&r), &r, Some(&store), Safe)
        .await
        .unwrap_err();
    let t = err_text(e);
    assert!(
        t.to_lowercase().contains("version") && t.contains("timestamp"),
        "{t}"
    );
}

/// Flip bits in the released ONNX file as stored in the repository (whatever its
/// content-addressed name): what a compromised mirror or a bad disk would serve.
fn flip_stored_onnx_byte(repo_dir: &Path, at: usize, mask: u8) {
    let stored = walk(&repo::targets_dir(repo_dir))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "onnx"))
        .expect("a stored ONNX target");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[at] ^= mask;
    std::fs::write(&stored, &bytes).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Over a real HTTP server (Python's `http.server`, serving the repository folder as any
/// static server would): the release reads back byte for byte; a tampered file is refused.
#[tokio::test]
async fn a_release_over_http_reads_back_and_tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _k) = released(dir.path()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&r)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 (for http.server)");
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "http.server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (m, t) = client::urls_for_base(&format!("http://127.0.0.1:{port}")).unwrap();
    let root = repo::root_path(&r);
    let repo_http = client::load_urls(&root, m.clone(), t.clone(), None, Safe)
        .await
        .unwrap();
    let onnx = &model_files()[0];
    let got = client::read_target(&repo_http, "arousal-v2/affectgate-arousal-v2.onnx")
        .await
        .unwrap();
    assert_eq!(got, std::fs::read(onnx).unwrap());
    flip_stored_onnx_byte(&r, 5000, 0x80);
    let repo_http = client::load_urls(&root, m, t, None, Safe).await.unwrap();
    let e = client::read_target(&repo_http, "arousal-v2/affectgate-arousal-v2.onnx")
        .await
        .unwrap_err();
    let text = err_text(e);
    server.kill().ok();
    server.wait().ok();
    assert!(
        text.contains("Hash mismatch") && text.contains("http://127.0.0.1"),
        "{text}"
    );
}

/// Key rotation: a gateway that pinned root v1 follows the chain to root v2 (signed by the old
/// key and the new), and keeps working after releases signed since. A "v2 root" whose old-key
/// signature comes from a key v1 does not list is refused.
#[tokio::test]
async fn root_rotation_is_followed_from_the_pinned_root_and_a_forged_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, k) = released(dir.path()).await;
    let pinned = dir.path().join("pinned-root.json");
    std::fs::copy(repo::root_path(&r), &pinned).unwrap();
    assert_eq!(
        repo::rotate_root(&r, &k, Expiry::default()).await.unwrap(),
        2
    );
    assert!(k.join("root-v1.pk8").exists(), "the old root key is kept");
    let loaded = client::load(&pinned, &r, None, Safe).await.unwrap();
    assert_eq!(loaded.root().signed.version.get(), 2);
    repo::release(
        &r,
        &k,
        "arousal-v3",
        &release_files(dir.path(), "arousal-v3", 3),
        Expiry::default(),
    )
    .await
    .unwrap();
    let loaded = client::load(&pinned, &r, None, Safe).await.unwrap();
    assert!(
        client::read_target(&loaded, "arousal-v3/affectgate-arousal-v2.onnx")
            .await
            .is_ok()
    );

    // Forged: a "v2 root" carrying only the new key's signature (what someone who never had
    // the old root key could produce).
    let (f, fk) = released(&dir.path().join("forged")).await;
    let pinned_f = dir.path().join("pinned-forged.json");
    std::fs::copy(repo::root_path(&f), &pinned_f).unwrap();
    let v1: serde_json::Value = serde_json::from_slice(&std::fs::read(&pinned_f).unwrap()).unwrap();
    let old_id = v1["signed"]["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap()
        .to_string();
    repo::rotate_root(&f, &fk, Expiry::default()).await.unwrap();
    let v2_path = repo::metadata_dir(&f).join("2.root.json");
    let mut v2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&v2_path).unwrap()).unwrap();
    let sigs = v2["signatures"].as_array_mut().unwrap();
    assert_eq!(sigs.len(), 2, "signed by the old and the new root key");
    sigs.retain(|s| s["keyid"] != old_id.as_str());
    assert_eq!(sigs.len(), 1);
    let forged = serde_json::to_vec_pretty(&v2).unwrap();
    std::fs::write(&v2_path, &forged).unwrap();
    std::fs::write(repo::root_path(&f), &forged).unwrap();
    let e = client::load(&pinned_f, &f, None, Safe).await.unwrap_err();
    let t = err_text(e);
    assert!(
        t.to_lowercase().contains("root") && t.to_lowercase().contains("signature"),
        "{t}"
    );
}

/// `fetch_release` leaves either the whole verified release or nothing: with one tampered
/// file, no output folder and no partial files are left behind.
#[tokio::test]
async fn a_release_is_fetched_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _k) = released(dir.path()).await;
    let loaded = client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .unwrap();
    let out = dir.path().join("staged/arousal-v2");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let files = client::fetch_release(&loaded, "arousal-v2", &out)
        .await
        .unwrap();
    assert_eq!(
        files,
        [
            "affectgate-arousal-v2.card.toml",
            "affectgate-arousal-v2.onnx",
            "golden.json",
            "release.json"
        ]
    );
    for f in model_files() {
        let got = std::fs::read(out.join(f.file_name().unwrap())).unwrap();
        assert_eq!(got, std::fs::read(&f).unwrap());
    }
    let e = client::fetch_release(&loaded, "arousal-v9", &dir.path().join("staged/x"))
        .await
        .unwrap_err();
    assert!(err_text(e).contains("no such release"));
    // Tamper with the ONNX file (the card, fetched first, is fine): nothing is left.
    flip_stored_onnx_byte(&r, 200, 0x10);
    let out2 = dir.path().join("staged/again");
    let e = client::fetch_release(&loaded, "arousal-v2", &out2)
        .await
        .unwrap_err();
    assert!(err_text(e).contains("Hash mismatch"));
    assert!(!out2.exists());
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("arousal-v2")],
        "no partial folder left"
    );
}

/// `release` refuses files without a manifest, a manifest naming another release, and a
/// version not above the channel's latest; `rollback` re-publishes an earlier release's exact
/// files under a new name with the next version.
#[tokio::test]
async fn a_release_needs_a_manifest_with_a_higher_version_and_rollback_republishes() {
    let dir = tempfile::tempdir().unwrap();
    let (r, k) = released(dir.path()).await;
    let e = repo::release(&r, &k, "raw", &model_files(), Expiry::default())
        .await
        .unwrap_err();
    assert!(err_text(e).contains("no release.json"));
    let e = repo::release(
        &r,
        &k,
        "other",
        &release_files(dir.path(), "arousal-v9", 9),
        Expiry::default(),
    )
    .await
    .unwrap_err();
    assert!(err_text(e).contains("name \"arousal-v9\", but the release is called \"other\""));
    let e = repo::release(
        &r,
        &k,
        "arousal-v1",
        &release_files(dir.path(), "arousal-v1", 1),
        Expiry::default(),
    )
    .await
    .unwrap_err();
    let text = err_text(e);
    assert!(
        text.contains("version 1 is not above arousal-v2 (version 2)"),
        "{text}"
    );
    // The root key is offline (as docs/FLEET.md says to keep it): releases and rollbacks
    // need only the targets, snapshot and timestamp keys.
    std::fs::rename(k.join("root.pk8"), dir.path().join("root-offline.pk8")).unwrap();
    repo::release(
        &r,
        &k,
        "arousal-v3",
        &release_files(dir.path(), "arousal-v3", 3),
        Expiry::default(),
    )
    .await
    .unwrap();
    let m = repo::rollback(&r, &k, "arousal-v2", "arousal-v4", Expiry::default())
        .await
        .unwrap();
    assert_eq!((m.name.as_str(), m.version), ("arousal-v4", 4));
    assert_eq!(m.rollback_of.as_deref(), Some("arousal-v2"));
    let loaded = client::load(&repo::root_path(&r), &r, None, Safe)
        .await
        .unwrap();
    for f in model_files() {
        let file = f.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            client::read_target(&loaded, &format!("arousal-v4/{file}"))
                .await
                .unwrap(),
            client::read_target(&loaded, &format!("arousal-v2/{file}"))
                .await
                .unwrap(),
            "{file}"
        );
    }
    let versions: Vec<u64> = repo::manifests(&r)
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [2, 3, 4]);
    let e = repo::rollback(&r, &k, "arousal-v9", "x", Expiry::default())
        .await
        .unwrap_err();
    assert!(err_text(e).contains("no such release (releases: arousal-v2, arousal-v3, arousal-v4)"));
}

/// `renew` re-signs targets, snapshot and timestamp with new versions and expiries and the
/// same targets, without the root key: a repository close to its 90-day expiry is valid for
/// another 90 days, and a gateway that saw the old versions accepts the new ones.
#[tokio::test]
async fn renew_extends_targets_and_snapshot_without_a_release_or_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let (r, k) = (dir.path().join("repo"), dir.path().join("keys"));
    let short = Expiry {
        targets_days: 1,
        snapshot_days: 1,
        ..Expiry::default()
    };
    repo::init(&r, &k, short).await.unwrap();
    repo::release(
        &r,
        &k,
        "arousal-v2",
        &release_files(dir.path(), "arousal-v2", 2),
        short,
    )
    .await
    .unwrap();
    let store = dir.path().join("datastore");
    let before = client::load(&repo::root_path(&r), &r, Some(&store), Safe)
        .await
        .unwrap();
    let (old_t, old_exp) = (
        before.targets().signed.version.get(),
        before.targets().signed.expires,
    );
    std::fs::rename(k.join("root.pk8"), dir.path().join("root-offline.pk8")).unwrap();
    assert_eq!(
        repo::renew(&r, &k, Expiry::default()).await.unwrap(),
        old_t + 1
    );
    let after = client::load(&repo::root_path(&r), &r, Some(&store), Safe)
        .await
        .unwrap();
    assert_eq!(after.targets().signed.version.get(), old_t + 1);
    assert!(after.targets().signed.expires > old_exp + jiff::SignedDuration::from_hours(24 * 80));
    assert!(after.snapshot().signed.expires > old_exp + jiff::SignedDuration::from_hours(24 * 80));
    assert_eq!(
        client::read_target(&after, "arousal-v2/affectgate-arousal-v2.onnx")
            .await
            .unwrap(),
        std::fs::read(&model_files()[0]).unwrap()
    );
}
