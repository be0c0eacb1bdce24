//! Where ECG comes from, and the one seam every live source plugs into.
//!
//! * [`file`] reads EDF/EDF+, WFDB and CSV recordings (one reader for training, evaluation and
//!   replay); [`synthetic`] generates ECG with the ECGSYN model (demos and load tests without
//!   hardware, with ground-truth beat times).
//! * The live gateway runs each sensor as a [`Source`]: an async task that **pushes**
//!   [`SourceEvent`]s — blocks of timestamped µV samples with a gap flag — into a *bounded*
//!   channel. A slow consumer therefore slows the producer down (backpressure: the replay
//!   source simply reads more slowly, a BLE source would drop and flag a gap) instead of
//!   growing an unbounded queue on a 1 GB Raspberry Pi.
//! * [`live`] holds the two sources this crate ships without hardware: `synthetic` and `replay`.
//!   BLE sources implement the same trait.
//!
//! Why a boxed-future trait rather than an enum of source kinds: tests and the BLE issue need to
//! drive the gateway with sources this module does not know about (a simulated BlueZ, a test
//! double that injects malformed input). The future is boxed once per sensor at start — nothing
//! is boxed per block.

pub mod ble;
pub mod config;
pub mod file;
pub mod live;
pub mod synthetic;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One block of raw samples from a sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Time of `samples_uv[0]`, ns since the Unix epoch on the gateway clock.
    pub t0_ns: i64,
    /// Sampling rate of the block (nominal or estimated from the sensor's timestamps).
    pub fs_hz: f64,
    /// Samples in µV.
    pub samples_uv: Vec<f32>,
    /// Samples are missing between the previous block and this one (dropout, reconnect, a
    /// replay loop restarting): no window may span this boundary.
    pub gap_before: bool,
}

/// Heart beats reported by a sensor that has no ECG (the Heart Rate service, 0x2A37).
#[derive(Debug, Clone, PartialEq)]
pub struct Beats {
    /// When the report arrived, ns since the Unix epoch (gateway clock).
    pub t_ns: i64,
    /// The sensor's own heart rate; `None` when it reported 0.
    pub hr_bpm: Option<f32>,
    /// RR intervals since the previous report, ms (0–9 per report).
    pub rr_ms: Vec<f32>,
    /// Skin contact, when the sensor detects it.
    pub contact: Option<bool>,
}

/// What a strap says about itself: the name it advertises and its Device Information
/// service (0x180A) strings. Each is `None` when the strap does not provide it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StrapInfo {
    /// Advertised local name (`"Polar H10 1A2B3C4D"`).
    #[serde(default)]
    pub name: Option<String>,
    /// Manufacturer Name String, 0x2A29 (`"Polar Electro Oy"`).
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Model Number String, 0x2A24 (`"H10"`).
    #[serde(default)]
    pub model: Option<String>,
    /// Firmware Revision String, 0x2A26 (`"3.0.35"`).
    #[serde(default)]
    pub firmware: Option<String>,
}

/// What a source reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The strap's name and device information, read once per connection (BLE only).
    Identified(StrapInfo),
    /// Samples.
    Block(Block),
    /// Heart rate and RR intervals without ECG (published as HR/HRV, never windowed).
    Beats(Beats),
    /// The sensor is delivering (after start or a reconnect).
    Connected,
    /// The link dropped; the next block will carry `gap_before`.
    Disconnected { reason: String },
    /// A finite stream (replay without loop) reached its end: flush what is complete.
    End,
}

/// Errors that stop a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("sensor {sensor}: {message}")]
    Failed { sensor: String, message: String },
    /// The consumer is gone (gateway shutting down); not an error for the user.
    #[error("sensor {sensor}: pipeline closed")]
    Closed { sensor: String },
}

/// Boxed future of a running source (boxed once per sensor, see the module docs).
pub type SourceFuture = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// A live sensor. `run` pushes events into `out` until the stream ends, `stop` is cancelled,
/// or `out` is closed; it must return promptly after `stop` is cancelled.
pub trait Source: Send + 'static {
    /// Sensor id (topic-safe), for logs and errors.
    fn sensor_id(&self) -> &str;
    /// Start producing.
    fn run(
        self: Box<Self>,
        out: mpsc::Sender<SourceEvent>,
        stop: CancellationToken,
    ) -> SourceFuture;
}

/// Capacity of each sensor's event channel. A block is ≤ 1 s of samples, so this bounds the
/// queued signal per sensor to a few seconds.
pub const SOURCE_QUEUE: usize = 8;
