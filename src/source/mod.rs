//! Where ECG comes from: recording files ([`file`]: EDF, WFDB, CSV) and a synthetic generator
//! ([`synthetic`]: the ECGSYN model, for demos and load tests without hardware, with ground-truth
//! beat times). The live gateway adds BLE and file-replay sources behind one push-based seam.

pub mod file;
pub mod synthetic;
