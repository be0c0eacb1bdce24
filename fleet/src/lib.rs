//! Signed model releases for fleets of gateways.
//!
//! # Layout
//!
//! * [`keys`] — the four TUF role keys (root, targets, snapshot, timestamp), Ed25519 in
//!   PKCS#8 files readable by the operator only.
//! * [`repo`] — the operator's side: `init` writes a signed TUF repository (root v1 and empty
//!   targets/snapshot/timestamp), `release` adds a model's files as targets and re-signs.
//! * [`plan`] — rollout plans (canaries, waves, failure threshold) and gateway statuses, as
//!   retained MQTT messages.
//! * [`client`] — the gateway's side: load the repository through TUF from a pinned
//!   `root.json` (signatures and thresholds, expiry, version rollback, snapshot consistency,
//!   hashes and lengths) and read one target, or refuse with the reason.
//!
//! # Decisions
//!
//! * **No signature scheme of our own.** Everything that is signed or verified goes through
//!   `tough` (Bottlerocket's updater uses it the same way); this crate only decides the
//!   layout (which files form a release) and the expiries.
//! * **Ed25519 keys**: small, fast to verify on a Raspberry Pi, and what `tough` reads from a
//!   PKCS#8 file directly (`LocalKeySource`). Threshold 1 per role here; the root key is meant
//!   to stay offline (see docs/FLEET.md).
//! * **Depends on the model-format layer only** (files and their names), never on the
//!   gateway: a release is bytes plus a name.

pub mod keys;
pub mod mqtt;
pub mod repo;
pub mod rollout;

/// Shared with the gateway (one definition of plans, statuses, releases and the TUF client).
pub use affectgate::fleet::{client, plan, release, FleetError};
