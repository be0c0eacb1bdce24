//! Signed model releases for fleets of gateways: what the gateway and the operator's tool
//! (the `affectgate-fleet` crate in `fleet/`) must agree on, and the gateway's side of it.
//!
//! * [`plan`] — rollout plans (canaries, waves by a hash of the gateway id, failure threshold)
//!   and gateway statuses as retained MQTT messages. One definition, used by both sides, so a
//!   gateway computes exactly the wave the operator's tool planned for it.
//! * [`release`] — what a release is: its manifest (`release.json`: name, version, minimum
//!   gateway version, channel, summary, files) and golden self-test windows with the outputs
//!   they must reproduce.
//! * [`client`] (feature `tuf`) — everything read from a repository goes through TUF from a
//!   pinned `root.json`; [`transport`] fetches files and HTTP(S) URLs (resuming cut downloads).
//! * [`pack`] (feature `gateway`) — a model into a release folder, golden windows computed.
//! * [`config`], [`agent`] (feature `gateway`) — `[fleet]` and the gateway's agent: on a plan,
//!   at its wave, download → verify → self-test → promote through the registry's hot swap →
//!   health window → succeeded, or roll back automatically, reporting each step retained.
//!
//! The operator's side (keys, signing, `init`/`release`/`rollout`/`halt`) lives in the fleet
//! crate, which builds on this module and on [`crate::model`] only.

pub mod plan;
pub mod release;

#[cfg(feature = "tuf")]
pub mod client;
#[cfg(feature = "tuf")]
pub mod transport;

#[cfg(feature = "gateway")]
pub mod agent;
#[cfg(feature = "gateway")]
pub mod config;
#[cfg(feature = "gateway")]
pub mod pack;

/// Errors of fleet operations, each naming the file, directory, URL or target it is about.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[cfg(feature = "tuf")]
    #[error("{what}: {source}")]
    Tuf {
        what: String,
        // Boxed: tough's error is large, and every fallible call here returns this type.
        source: Box<tough::error::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl FleetError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        FleetError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    #[cfg(feature = "tuf")]
    pub fn tuf(what: impl Into<String>, source: tough::error::Error) -> Self {
        FleetError::Tuf {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// Worth trying again later: the repository could not be reached or a file not read.
    /// Not when the bytes arrived and were wrong — tough reports a target whose sha256 or
    /// length does not match as a transport error around the mismatch, so the whole chain
    /// is looked at.
    #[cfg(feature = "tuf")]
    pub fn is_transient(&self) -> bool {
        use tough::error::Error as T;
        match self {
            FleetError::Io { .. } => true,
            FleetError::Invalid(_) => false,
            FleetError::Tuf { source, .. } => {
                if !matches!(**source, T::Transport { .. }) {
                    return false;
                }
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
                while let Some(e) = cur {
                    if let Some(t) = e.downcast_ref::<T>() {
                        if matches!(t, T::HashMismatch { .. } | T::MaxSizeExceeded { .. }) {
                            return false;
                        }
                    }
                    let text = e.to_string();
                    if text.contains("Hash mismatch") || text.contains("exceeded") {
                        return false;
                    }
                    cur = e.source();
                }
                true
            }
        }
    }
}
