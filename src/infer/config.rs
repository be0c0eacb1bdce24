//! The model the gateway serves (`[model]`): the ONNX file (its card beside it) and the
//! inference back-end.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Backend;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX model with its `.card.toml` beside it.
    pub path: PathBuf,
    #[serde(default)]
    pub backend: Backend,
}
