//! The benchmarks behind `affectgate bench`: gateway throughput and latency
//! ([`gateway`]) and one retraining round's time and memory ([`retrain`]). They live with the
//! command line, not in the library: they compose the library the way a user would.

pub mod gateway;
pub mod retrain;
