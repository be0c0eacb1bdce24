//! The fleet crate (`fleet/`, a workspace of its own: see the root Cargo.toml) is built and
//! tested by its own cargo, in `<target>/fleet`, so `cargo test --release` covers it too.
//! This test passes only when every fleet test ran and passed; each one's name is checked so
//! a filter or an empty run cannot pass silently.

use std::process::Command;

#[test]
fn the_fleet_crate_builds_and_its_tests_pass() {
    let repo = crate::util::repo();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
        .join("fleet");
    // At the lowest priority and one job: the other integration tests run beside it, and
    // some of them (broker restarts) are sensitive to a machine saturated by a build.
    let out = Command::new("nice")
        .args(["-n", "19"])
        .arg(env!("CARGO"))
        .args(["test", "--release", "-j", "1", "--manifest-path"])
        .arg(repo.join("fleet/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("running cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fleet tests failed:\n{text}");
    for name in [
        "a_release_reads_back_byte_for_byte_through_tuf",
        "a_tampered_artifact_is_refused",
        "a_repository_signed_by_other_keys_is_refused",
        "expired_metadata_is_refused",
        "older_metadata_after_newer_is_a_rollback_and_refused",
        "a_release_over_http_reads_back_and_tampering_is_refused",
        "refresh_resigns_an_expired_timestamp_with_the_online_keys_only",
        "root_rotation_is_followed_from_the_pinned_root_and_a_forged_one_refused",
        "a_release_is_fetched_whole_or_not_at_all",
        "failures_at_the_threshold_halt_the_retained_plan",
        "waves_are_stable_and_spread_as_planned",
        "failures_at_the_threshold_halt_and_a_halted_plan_installs_nowhere",
    ] {
        assert!(
            text.contains(&format!("{name} ... ok")),
            "{name} did not pass:\n{text}"
        );
    }
}
