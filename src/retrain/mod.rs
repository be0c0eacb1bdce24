//! On-gateway retraining: the model registry the gateway serves from (promotion, rollback,
//! rejected candidates) and — built on the learning core — the retraining rounds that feed it.

pub mod registry;
