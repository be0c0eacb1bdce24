//! The window store's configuration (`[store]`): where it lives and what retention keeps.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Retention;
use crate::invalid::Invalid;

/// Largest accepted `max_age_days`.
pub const MAX_AGE_DAYS_LIMIT: f64 = 36_500.0;

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
        // Beyond a century the nanosecond horizon stops meaning anything (and near 106 751
        // days it overflows): such a value is a typo, not a policy.
        if self.max_age_days > MAX_AGE_DAYS_LIMIT {
            return Err(Invalid::new(
                "max_age_days",
                self.max_age_days,
                format!("must be at most {MAX_AGE_DAYS_LIMIT} (100 years); to keep windows for ever, give a large max_bytes and 36500"),
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
