//! The model format: what a model *is*, independent of how it is trained or served.
//!
//! - [`weights`]: the network as plain arrays ([`NetworkWeights`]), the paper's geometry and
//!   the reference forward pass;
//! - [`onnx`]: ONNX export and import of those weights (prost types, no protoc, no ONNX
//!   tooling) and [`onnx::inspect`] for any ONNX file;
//! - [`card`]: the model card shipped beside every model;
//! - [`replay`]: the replay pack shipped beside a model so gateways can retrain without the
//!   original dataset;
//! - [`quant`]: the i16 sample quantisation shared by the window store and replay packs.
//!
//! This layer sits above `dsp` and below `learn`, `infer` and `store`, and needs none of burn,
//! ort, sled or tokio: the `fleet` crate builds, signs and checks model releases with it alone
//! (`default-features = false`).

pub mod card;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod quant;
pub mod replay;
pub mod weights;

pub use weights::{NetworkWeights, WeightsError};

/// Samples per window (10 s at 256 Hz): the one window type of the project.
pub use crate::dsp::WINDOW_LEN;

/// Name of the graph input: float32 `[N, 1, 2560]`, `N` dynamic (dimension parameter `batch`).
pub const INPUT_NAME: &str = "ecg";
/// Name of the second graph input of a fused model: float32 `[N, F]`, the window's features
/// named by the model's `affectgate.features` metadata (see [`WEARER_FEATURES`]).
pub const FEATURES_NAME: &str = "features";
/// The features a fused model reads, in this order: the window's heart rate, RMSSD and SDNN
/// (on NN intervals) relative to the wearer's baseline — (value − wearer's median) /
/// (1.4826 × MAD), see `dsp::WearerBaseline`. While a wearer is still calibrating (no
/// baseline yet) the gateway feeds 0, "at the wearer's usual", and says `calibrating`.
pub const WEARER_FEATURES: [&str; 3] = ["hr_relative", "rmssd_relative", "sdnn_relative"];

/// Whether this version can feed a model reading `features`: none (ECG only) or exactly the
/// [`WEARER_FEATURES`]. The error says what the model wants.
pub fn check_feature_names(features: &[String]) -> Result<(), String> {
    if features.is_empty() || features == WEARER_FEATURES {
        Ok(())
    } else {
        Err(format!(
            "the model reads the features {features:?}; this version computes {WEARER_FEATURES:?} (a model from a newer version?)"
        ))
    }
}
/// Name of the extra graph output holding the encoder embedding `[N, 128]`.
pub const EMBEDDING_NAME: &str = "embedding";
/// Lowercase hex SHA-256 of `bytes` (model cards, release manifests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}
