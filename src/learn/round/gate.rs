//! The promotion gate: a candidate replaces the current model only if it is shown to be no
//! worse on windows neither of them trained on — every head's held-out balanced accuracy must
//! not drop (no tolerance), nor (when both exist) the mean pretext accuracy on the wearer's
//! held-out windows. No held-out labelled windows → no promotion.

use serde::{Deserialize, Serialize};

/// One model's numbers on a round's held-out windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateMetrics {
    /// Balanced accuracy per head (in head order) on the held-out labelled windows (held-out
    /// pack subjects + the wearer's latest self-reports). NaN if a head has no held-out label.
    pub heads: Vec<(String, f64)>,
    /// Held-out windows with at least one label.
    pub n_labelled: usize,
    /// Pretext loss on the wearer's held-out unlabelled windows (None: no pretext network
    /// to measure, or no such windows).
    pub pretext_loss: Option<f32>,
    /// Mean over the seven pretext tasks of the balanced accuracy on the same windows.
    pub pretext_accuracy: Option<f32>,
    pub n_unlabelled: usize,
}

/// The gate's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Promote,
    Reject { reason: String },
}

/// Message of the rejection when nothing labelled was held out.
pub const NO_HELDOUT: &str = "no held-out labelled windows: cannot show the candidate is not worse";

/// Two numbers with just enough decimals to tell them apart (4 to 9).
fn two(b: f64, a: f64) -> (String, String) {
    for d in 4..=9 {
        let (x, y) = (format!("{b:.d$}"), format!("{a:.d$}"));
        if x != y || d == 9 {
            return (x, y);
        }
    }
    unreachable!()
}

/// The promotion gate: Promote iff every head's held-out balanced accuracy is at least the
/// current model's (no tolerance) and, when both pretext accuracies exist, the candidate's
/// pretext accuracy is at least the current pretext network's. Otherwise Reject with a
/// reason naming the head or metric and both numbers.
pub fn decide(before: &GateMetrics, after: &GateMetrics) -> Decision {
    let reject = |reason: String| Decision::Reject { reason };
    if before.n_labelled == 0 || after.n_labelled == 0 {
        return reject(NO_HELDOUT.into());
    }
    for (name, b) in &before.heads {
        let Some(&(_, a)) = after.heads.iter().find(|(n, _)| n == name) else {
            return reject(format!("head {name}: missing from the candidate"));
        };
        if b.is_nan() || a.is_nan() {
            return reject(format!(
                "head {name}: no held-out labelled windows for this head (balanced accuracy \
                 before {b}, after {a}): cannot show the candidate is not worse"
            ));
        }
        if a < *b {
            let (bs, as_) = two(*b, a);
            return reject(format!(
                "head {name}: held-out balanced accuracy fell from {bs} to {as_} \
                 ({} held-out labelled windows)",
                after.n_labelled
            ));
        }
    }
    if let (Some(b), Some(a)) = (before.pretext_accuracy, after.pretext_accuracy) {
        // NaN on either side is "not shown to be no worse" too.
        if a.partial_cmp(&b).is_none_or(|o| o.is_lt()) {
            let (bs, as_) = two(b as f64, a as f64);
            return reject(format!(
                "pretext accuracy (mean per-task balanced accuracy on {} held-out wearer \
                 windows) fell from {bs} to {as_}",
                after.n_unlabelled
            ));
        }
    }
    Decision::Promote
}
