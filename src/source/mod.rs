//! Where ECG comes from. Today: recording files ([`file`]); the live gateway adds BLE,
//! replay and synthetic sources behind one push-based seam.

pub mod file;
