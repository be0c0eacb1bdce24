//! The window store's configuration (`[store]`): where it lives and what retention keeps.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Retention;
use crate::invalid::Invalid;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Retention: oldest windows are dropped beyond this many bytes…
    pub max_bytes: u64,
    /// …or this age.
    pub max_age_days: f64,
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_age_days.is_nan() || self.max_age_days <= 0.0 {
            return Err(Invalid::new(
                "max_age_days",
                self.max_age_days,
                "must be > 0",
            ));
        }
        Ok(())
    }

    /// The retention policy these settings describe.
    pub fn retention(&self) -> Retention {
        Retention {
            max_bytes: self.max_bytes,
            max_age_ns: (self.max_age_days * 86_400e9) as i64,
        }
    }
}
