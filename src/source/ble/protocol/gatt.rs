//! Generic GATT ECG (DIY boards): bare samples, format from the config.

use std::fmt;

use super::*;

/// Sample encoding of a generic GATT ECG characteristic: signed integers, 16 or 24 bits, either
/// byte order, packed back to back with no header (config `format = "i16le"` …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    I16le,
    I16be,
    I24le,
    I24be,
}

impl SampleFormat {
    /// Bytes per sample.
    pub fn width(self) -> usize {
        match self {
            Self::I16le | Self::I16be => 2,
            Self::I24le | Self::I24be => 3,
        }
    }

    /// Largest representable value (smallest is `-max - 1`).
    pub fn max(self) -> i32 {
        if self.width() == 2 {
            i16::MAX as i32
        } else {
            SAMPLE_MAX
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::I16le => "i16le",
            Self::I16be => "i16be",
            Self::I24le => "i24le",
            Self::I24be => "i24be",
        })
    }
}

/// Decode one generic notification into µV (`raw × scale_uv`), appended to `out`. A length
/// that is not a whole number of samples is an error (a torn packet is dropped whole: its
/// sample boundaries are unknown).
pub fn decode_samples(
    data: &[u8],
    format: SampleFormat,
    scale_uv: f32,
    out: &mut Vec<f32>,
) -> Result<usize, ProtocolError> {
    let w = format.width();
    if !data.len().is_multiple_of(w) {
        return Err(ProtocolError::RaggedGeneric {
            len: data.len(),
            format,
        });
    }
    out.reserve(data.len() / w);
    for b in data.chunks_exact(w) {
        let raw = match format {
            SampleFormat::I16le => i16::from_le_bytes([b[0], b[1]]) as i32,
            SampleFormat::I16be => i16::from_be_bytes([b[0], b[1]]) as i32,
            SampleFormat::I24le => i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8,
            SampleFormat::I24be => i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8,
        };
        out.push(raw as f32 * scale_uv);
    }
    Ok(data.len() / w)
}

/// Encode raw sample values (simulator, tests); values outside the format's range saturate.
#[cfg(test)]
pub fn encode_samples(raw: &[i32], format: SampleFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * format.width());
    for &v in raw {
        let v = v.clamp(-format.max() - 1, format.max());
        match format {
            SampleFormat::I16le => out.extend_from_slice(&(v as i16).to_le_bytes()),
            SampleFormat::I16be => out.extend_from_slice(&(v as i16).to_be_bytes()),
            SampleFormat::I24le => out.extend_from_slice(&v.to_le_bytes()[..3]),
            SampleFormat::I24be => out.extend_from_slice(&v.to_be_bytes()[1..]),
        }
    }
    out
}
