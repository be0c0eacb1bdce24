//! On-gateway retraining, built on the learning core:
//!
//! * [`registry`] — the models this gateway can serve, which serves, which served before,
//!   every candidate with the gate's verdict (atomic on disk);
//! * [`round`] — one round: stored windows + the shipped replay pack → SSL pretext training
//!   (checkpointed) → heads re-fitted with self-reports → metric gate and serving gate →
//!   registry;
//! * [`worker`] — the round's own process (hard memory limit, nice, kill on shutdown) and
//!   its line protocol back to the gateway;
//! * [`scheduler`] — when rounds run (interval, daily window, minimum new windows,
//!   `cmd/retrain`), with how many threads, at which priority, within which budget, and what
//!   `affectgate/<gw>/retrain` says about it.

pub mod config;
pub mod registry;
pub mod round;
pub mod scheduler;
pub mod status;
pub mod worker;

pub use status::{RetrainState, RetrainStatus};
