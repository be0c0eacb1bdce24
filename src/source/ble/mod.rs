//! BLE ingest (Polar H10 PMD ECG, the Heart Rate service, generic GATT ECG).
//!
//! So far only [`protocol`] exists: the byte-level encoders and decoders (PMD control point,
//! settings, ECG frames, 0x2A37 heart rate) and the sensor-clock mapping, pure code with golden
//! vectors and round-trip tests. The btleplug source that uses them and the simulated-BlueZ
//! end-to-end test are the BLE issue's remaining work.

pub mod protocol;
