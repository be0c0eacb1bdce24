//! Tests for the recorded-ECG file readers (EDF/EDF+, WFDB, CSV) and the dataset
//! manifest parser.
//!
//! Real-data tests read the shared data through `util::shared_data`. Synthetic tests write small files into temporary directories.

use std::fs;
use std::path::{Path, PathBuf};

use affectgate::learn::manifest::{read_manifest, ManifestError};
use affectgate::source::file::{
    is_beat, list_signals, read_recording, read_recording_with_stats, read_wfdb_annotations,
    ReadError,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

use crate::util::shared_data as data_dir;

/// The shared data folder, or skip the test with a message.
macro_rules! data_or_skip {
    () => {
        match data_dir() {
            Some(d) => d,
            None => {
                return;
            }
        }
    };
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// Assert `result` is an error whose message names `file` (by file name).
#[track_caller]
fn assert_err_names<T: std::fmt::Debug>(result: Result<T, ReadError>, file: &Path) -> String {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    match result {
        Ok(v) => panic!("expected an error for {name}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&name), "error does not name {name}: {msg}");
            msg
        }
    }
}

/// Deterministic xorshift PRNG for the fuzz-style tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

// --- synthetic EDF writer ---------------------------------------------------

struct EdfSig {
    label: &'static str,
    unit: &'static str,
    pmin: &'static str,
    pmax: &'static str,
    dmin: &'static str,
    dmax: &'static str,
    spr: usize,
}

fn field(s: &str, width: usize) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.resize(width, b' ');
    b
}

/// Build an EDF file. `records[k][s]` is the raw bytes of signal `s` in record `k`
/// (exactly `2 * spr` bytes).
fn build_edf(
    sigs: &[EdfSig],
    declared_records: &str,
    duration: &str,
    reserved: &str,
    date_time: (&str, &str),
    records: &[Vec<Vec<u8>>],
) -> Vec<u8> {
    let ns = sigs.len();
    let mut out = Vec::new();
    out.extend(field("0", 8));
    out.extend(field("X X X X", 80));
    out.extend(field("Startdate X X X X", 80));
    out.extend(field(date_time.0, 8));
    out.extend(field(date_time.1, 8));
    out.extend(field(&(256 * (ns + 1)).to_string(), 8));
    out.extend(field(reserved, 44));
    out.extend(field(declared_records, 8));
    out.extend(field(duration, 8));
    out.extend(field(&ns.to_string(), 4));
    for s in sigs {
        out.extend(field(s.label, 16));
    }
    for _ in sigs {
        out.extend(field("AgAgCl electrode", 80));
    }
    for s in sigs {
        out.extend(field(s.unit, 8));
    }
    for s in sigs {
        out.extend(field(s.pmin, 8));
    }
    for s in sigs {
        out.extend(field(s.pmax, 8));
    }
    for s in sigs {
        out.extend(field(s.dmin, 8));
    }
    for s in sigs {
        out.extend(field(s.dmax, 8));
    }
    for _ in sigs {
        out.extend(field("HP:0.5Hz", 80));
    }
    for s in sigs {
        out.extend(field(&s.spr.to_string(), 8));
    }
    for _ in sigs {
        out.extend(field("", 32));
    }
    assert_eq!(out.len(), 256 * (ns + 1));
    for rec in records {
        for (s, block) in sigs.iter().zip(rec) {
            assert_eq!(block.len(), 2 * s.spr);
            out.extend(block);
        }
    }
    out
}

fn i16_bytes(v: &[i16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An EDF+ annotation block holding just the record's time-keeping TAL.
fn tal(onset: &str, spr: usize) -> Vec<u8> {
    let mut b = format!("+{onset}\x14\x14\0").into_bytes();
    b.resize(2 * spr, 0);
    b
}

fn ecg_sig(spr: usize) -> EdfSig {
    // Digital -1000..1000 maps to -1000..1000 uV: gain 1 uV/adu.
    EdfSig {
        label: "ECG chest",
        unit: "uV",
        pmin: "-1000",
        pmax: "1000",
        dmin: "-1000",
        dmax: "1000",
        spr,
    }
}

fn resp_sig(spr: usize) -> EdfSig {
    // Digital -32768..32767 maps to -3.2768..3.2767 mV: 0.1 uV/adu.
    EdfSig {
        label: "Resp belt",
        unit: "mV",
        pmin: "-3.2768",
        pmax: "3.2767",
        dmin: "-32768",
        dmax: "32767",
        spr,
    }
}

fn annot_sig(spr: usize) -> EdfSig {
    EdfSig {
        label: "EDF Annotations",
        unit: "",
        pmin: "-1",
        pmax: "1",
        dmin: "-32768",
        dmax: "32767",
        spr,
    }
}

// --- synthetic WFDB writer --------------------------------------------------

fn pack_212(samples: &[i32]) -> Vec<u8> {
    let mut out = Vec::new();
    for pair in samples.chunks(2) {
        let a = (pair[0] & 0xFFF) as u32;
        match pair.get(1) {
            Some(&b) => {
                let b = (b & 0xFFF) as u32;
                out.push((a & 0xFF) as u8);
                out.push(((a >> 8) | ((b >> 8) << 4)) as u8);
                out.push((b & 0xFF) as u8);
            }
            None => {
                out.push((a & 0xFF) as u8);
                out.push((a >> 8) as u8);
            }
        }
    }
    out
}

fn checksum(v: &[i32]) -> i16 {
    v.iter().fold(0i16, |acc, &x| acc.wrapping_add(x as i16))
}

// ---------------------------------------------------------------------------
// EDF: real data
// ---------------------------------------------------------------------------

#[test]
fn eegmat_subject00_rest_edf() {
    let data = data_or_skip!();
    let path = data.join("eegmat/Subject00_rest.edf");
    let rec = read_recording(&path, None).unwrap();
    assert_eq!(rec.signal_label, "ECG ECG");
    assert_eq!(rec.fs_hz, 500.0);
    assert_eq!(rec.samples_uv.len(), 91_000);
    assert_eq!(rec.path, path);
    assert!(rec.timestamps_ns.is_none() && rec.side.is_none());
    // Start 01.01.11 00.00.00 → 2011-01-01T00:00:00Z.
    assert_eq!(rec.start_unix_ns, Some(1_293_840_000_000_000_000));
    assert!((rec.duration_s() - 182.0).abs() < 1e-9);

    // The header's physical range is -0.20503..0.654943 mV, so every value lies in
    // -205.03..654.943 µV; the signal must actually vary (a real ECG).
    let (min, max) = rec
        .samples_uv
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(min >= -205.04 && max <= 654.95, "range {min}..{max}");
    let (mean, std) = mean_std(&rec.samples_uv);
    eprintln!("Subject00_rest: min {min:.2} max {max:.2} mean {mean:.2} std {std:.2} µV");
    assert!(std > 5.0 && std < 300.0, "std {std}");

    // Independent decode of the first sample straight from the bytes.
    let bytes = fs::read(&path).unwrap();
    let d0 = f64::from(i16::from_le_bytes([bytes[512], bytes[513]]));
    let gain = (0.654943 - -0.20503) / 65535.0;
    let expected = (-0.20503 + (d0 + 32768.0) * gain) * 1000.0;
    assert!((f64::from(rec.samples_uv[0]) - expected).abs() < 1e-3);

    // Picking by label (case-insensitive substring) finds the same signal.
    let by_label = read_recording(&path, Some("ecg")).unwrap();
    assert_eq!(by_label.samples_uv, rec.samples_uv);

    let sigs = list_signals(&path).unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].label, "ECG ECG");
    assert_eq!(sigs[0].unit, "mV");
    assert_eq!(sigs[0].fs_hz, 500.0);
    assert_eq!(sigs[0].n_samples, 91_000);
}

#[test]
fn eegmat_every_file_matches_labels_csv() {
    let data = data_or_skip!();
    let manifest = read_manifest(&data.join("eegmat/labels.csv")).unwrap();
    // labels.csv carries the expected sample count per file: cross-check reader.
    let text = fs::read_to_string(data.join("eegmat/labels.csv")).unwrap();
    let mut total = 0usize;
    for (entry, row) in manifest.entries.iter().zip(text.lines().skip(1)) {
        let cols: Vec<&str> = row.trim().split(',').collect();
        let expected: usize = cols[5].parse().unwrap();
        let rec = read_recording(&entry.file, entry.signal.as_deref()).unwrap();
        assert_eq!(rec.samples_uv.len(), expected, "{}", entry.file.display());
        assert_eq!(rec.fs_hz, 500.0);
        assert!(rec.samples_uv.iter().all(|v| v.is_finite()));
        total += rec.samples_uv.len();
    }
    assert_eq!(manifest.entries.len(), 48);
    eprintln!("EEGMAT: 48 files, {total} samples in all");
}

// ---------------------------------------------------------------------------
// EDF: synthetic
// ---------------------------------------------------------------------------

#[test]
fn edf_two_signals_with_different_samples_per_record() {
    let dir = tempdir();
    let path = dir.path().join("two.edf");
    let sigs = [ecg_sig(5), resp_sig(2), annot_sig(8)];
    let records: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|k| {
            let ecg: Vec<i16> = (0..5).map(|i| (k * 100 + i * 10) as i16 - 50).collect();
            let resp: Vec<i16> = vec![1000 * (k as i16 + 1), -1000 * (k as i16 + 1)];
            vec![
                i16_bytes(&ecg),
                i16_bytes(&resp),
                tal(&format!("{}.25", k), 8),
            ]
        })
        .collect();
    fs::write(
        &path,
        build_edf(&sigs, "3", "1", "EDF+C", ("31.12.99", "23.59.59"), &records),
    )
    .unwrap();

    let rec = read_recording(&path, None).unwrap();
    assert_eq!(rec.signal_label, "ECG chest");
    assert_eq!(rec.fs_hz, 5.0);
    let expected: Vec<f32> = (0..3)
        .flat_map(|k| (0..5).map(move |i| (k * 100 + i * 10 - 50) as f32))
        .collect();
    assert_eq!(rec.samples_uv, expected);
    // 1999-12-31T23:59:59Z plus the EDF+ first-record onset of 0.25 s.
    assert_eq!(
        rec.start_unix_ns,
        Some(946_684_799_000_000_000 + 250_000_000)
    );

    let resp = read_recording(&path, Some("RESP")).unwrap();
    assert_eq!(resp.signal_label, "Resp belt");
    assert_eq!(resp.fs_hz, 2.0);
    assert_eq!(resp.samples_uv.len(), 6);
    // 1000 adu × 0.1 µV/adu (mV converted to µV) = 100 µV.
    let want = [100.0, -100.0, 200.0, -200.0, 300.0, -300.0];
    for (got, want) in resp.samples_uv.iter().zip(want) {
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }

    let sigs = list_signals(&path).unwrap();
    let labels: Vec<&str> = sigs.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        ["ECG chest", "Resp belt"],
        "annotation signal is skipped"
    );
    assert_eq!((sigs[0].n_samples, sigs[1].n_samples), (15, 6));

    let err = assert_err_names(read_recording(&path, Some("EDF Annotations")), &path);
    assert!(err.contains("ECG chest"), "lists available signals: {err}");
}

#[test]
fn edf_unknown_record_count_is_derived_from_size() {
    let dir = tempdir();
    let path = dir.path().join("open.edf");
    let sigs = [ecg_sig(4)];
    let records: Vec<Vec<Vec<u8>>> = (0..7).map(|k| vec![i16_bytes(&[k; 4])]).collect();
    let bytes = build_edf(&sigs, "-1", "0.5", "", ("01.01.11", "00.00.00"), &records);
    fs::write(&path, &bytes).unwrap();
    let rec = read_recording(&path, None).unwrap();
    assert_eq!(rec.samples_uv.len(), 28);
    assert_eq!(rec.fs_hz, 8.0);
    assert_eq!(rec.samples_uv[27], 6.0);

    // A trailing partial record is damage, not data.
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn edf_truncated_and_padded_files() {
    let dir = tempdir();
    let path = dir.path().join("short.edf");
    let records: Vec<Vec<Vec<u8>>> = (0..4).map(|_| vec![i16_bytes(&[1; 4])]).collect();
    let bytes = build_edf(
        &[ecg_sig(4)],
        "4",
        "1",
        "",
        ("01.01.11", "00.00.00"),
        &records,
    );
    // Exactly three whole records while the header says four: still an error.
    fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(
        msg.contains(&format!("{} bytes", bytes.len())),
        "expected size: {msg}"
    );
    assert!(
        msg.contains(&format!("has {}", bytes.len() - 8)),
        "actual size: {msg}"
    );
    // Extra bytes after the declared records are ignored.
    let mut padded = bytes.clone();
    padded.extend([0xAA; 5]);
    fs::write(&path, &padded).unwrap();
    assert_eq!(read_recording(&path, None).unwrap().samples_uv.len(), 16);
}

#[test]
fn edf_plus_discontinuous_gap_is_an_error() {
    let dir = tempdir();
    let path = dir.path().join("gappy.edf");
    let sigs = [ecg_sig(2), annot_sig(6)];
    let rec = |onset: &str| vec![i16_bytes(&[1, 2]), tal(onset, 6)];
    let contiguous = [rec("0"), rec("1"), rec("2")];
    fs::write(
        &path,
        build_edf(
            &sigs,
            "3",
            "1",
            "EDF+D",
            ("01.01.11", "00.00.00"),
            &contiguous,
        ),
    )
    .unwrap();
    assert_eq!(read_recording(&path, None).unwrap().samples_uv.len(), 6);

    let gappy = [rec("0"), rec("1"), rec("5")];
    fs::write(
        &path,
        build_edf(&sigs, "3", "1", "EDF+D", ("01.01.11", "00.00.00"), &gappy),
    )
    .unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("record 2") && msg.contains("gap"), "{msg}");
}

#[test]
fn edf_unit_and_signal_errors() {
    let dir = tempdir();
    let path = dir.path().join("odd.edf");
    let mut temp = ecg_sig(2);
    temp.label = "Temp skin";
    temp.unit = "degC";
    let records = vec![vec![i16_bytes(&[1, 2])]];
    fs::write(
        &path,
        build_edf(&[temp], "1", "1", "", ("01.01.11", "00.00.00"), &records),
    )
    .unwrap();

    // No label mentions ECG: auto mode must not silently pick another signal.
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("Temp skin") && msg.contains("ECG"), "{msg}");
    // Asking for it explicitly reaches the unit check, which names the unit.
    let msg = assert_err_names(read_recording(&path, Some("temp")), &path);
    assert!(msg.contains("degC"), "{msg}");
    // Listing does not need calibration or units.
    assert_eq!(list_signals(&path).unwrap()[0].unit, "degC");

    // Uncalibratable signal: digital min == max.
    let mut flat = ecg_sig(2);
    flat.dmax = "-1000";
    fs::write(
        &path,
        build_edf(&[flat], "1", "1", "", ("01.01.11", "00.00.00"), &records),
    )
    .unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("digital"), "{msg}");

    // Volts convert by 1e6; an unparsable date just leaves the start unknown.
    let mut volts = ecg_sig(2);
    volts.unit = "V";
    volts.pmin = "-1";
    volts.pmax = "1";
    fs::write(
        &path,
        build_edf(&[volts], "1", "1", "", ("??.??.??", "00.00.00"), &records),
    )
    .unwrap();
    let rec = read_recording(&path, None).unwrap();
    assert!((rec.samples_uv[0] - 1000.0).abs() < 1e-3);
    assert_eq!(rec.start_unix_ns, None);
}

// ---------------------------------------------------------------------------
// WFDB: real data
// ---------------------------------------------------------------------------

#[test]
fn mitbih_100_signals() {
    let data = data_or_skip!();
    let hea = data.join("mitbih/100.hea");
    let sigs = list_signals(&hea).unwrap();
    assert_eq!(sigs.len(), 2);
    assert_eq!(
        (sigs[0].label.as_str(), sigs[1].label.as_str()),
        ("MLII", "V5")
    );
    for s in &sigs {
        assert_eq!(s.fs_hz, 360.0);
        assert_eq!(s.n_samples, 650_000);
        assert_eq!(s.unit, "mV");
    }
}

#[test]
fn mitbih_100_samples() {
    let data = data_or_skip!();
    let hea = data.join("mitbih/100.hea");
    let (rec, stats) = read_recording_with_stats(&hea, None).unwrap();
    assert_eq!(rec.signal_label, "MLII", "no label says ECG: first signal");
    assert_eq!(rec.fs_hz, 360.0);
    assert_eq!(rec.samples_uv.len(), 650_000);
    assert_eq!(stats.invalid_samples, 0);
    assert_eq!(rec.start_unix_ns, None);
    // First MLII digital value is 995 (header initval): (995 − 1024) / 200 mV.
    assert!(
        (rec.samples_uv[0] - -145.0).abs() < 1e-3,
        "{}",
        rec.samples_uv[0]
    );

    // Independent decode of the first frames straight from the 212 bytes.
    let dat = fs::read(data.join("mitbih/100.dat")).unwrap();
    for f in 0..100 {
        let (b0, b1) = (i32::from(dat[3 * f]), i32::from(dat[3 * f + 1]));
        let raw = b0 | ((b1 & 0x0F) << 8);
        let d = (raw << 20) >> 20;
        let uv = (d - 1024) as f32 / 200.0 * 1000.0;
        assert!((rec.samples_uv[f] - uv).abs() < 1e-3, "frame {f}");
    }
    let (mean, std) = mean_std(&rec.samples_uv);
    eprintln!("MIT-BIH 100 MLII: mean {mean:.1} µV, std {std:.1} µV");
    assert!(std > 50.0 && std < 1000.0);

    // Given the .dat, the reader finds the .hea beside it.
    let via_dat = read_recording(&data.join("mitbih/100.dat"), None).unwrap();
    assert_eq!(via_dat.samples_uv, rec.samples_uv);

    let v5 = read_recording(&hea, Some("v5")).unwrap();
    assert_eq!(v5.signal_label, "V5");
    assert!(
        (v5.samples_uv[0] - -65.0).abs() < 1e-3,
        "(1011 − 1024) / 200 mV"
    );
}

#[test]
fn mitbih_100_annotations() {
    let data = data_or_skip!();
    let anns = read_wfdb_annotations(&data.join("mitbih/100.atr")).unwrap();
    let beats: Vec<_> = anns.iter().filter(|a| is_beat(a.code)).collect();
    let count = |s: char| beats.iter().filter(|a| a.symbol == s).count();
    let (n, a, v) = (count('N'), count('A'), count('V'));
    eprintln!(
        "MIT-BIH 100.atr: {} annotations, {} beats (N {n}, A {a}, V {v})",
        anns.len(),
        beats.len()
    );
    // PhysioNet's reference counts for record 100.
    assert_eq!((n, a, v), (2239, 33, 1));
    assert_eq!(beats.len(), 2273);
    // The first annotation is the rhythm label "(N" at sample 18.
    assert_eq!(anns[0].symbol, '+');
    assert_eq!(anns[0].aux.as_deref(), Some("(N"));
    assert_eq!(anns[0].sample, 18);
    assert!(anns.windows(2).all(|w| w[0].sample <= w[1].sample));
    assert!(anns.last().unwrap().sample < 650_000);
}

// ---------------------------------------------------------------------------
// WFDB: synthetic
// ---------------------------------------------------------------------------

#[test]
fn wfdb_format16_with_two_samples_per_frame() {
    let dir = tempdir();
    // Frame = [ecg, ecg, resp]; 4 frames at 100 Hz → ECG 200 Hz, resp 100 Hz.
    let ecg: Vec<i32> = vec![10, 20, -32768, 40, 50, 60, 70, 80];
    let resp: Vec<i32> = vec![1, 2, 3, 4];
    let mut bytes = Vec::new();
    for f in 0..4 {
        for v in [ecg[2 * f], ecg[2 * f + 1], resp[f]] {
            bytes.extend((v as i16).to_le_bytes());
        }
    }
    fs::write(dir.path().join("rec.dat"), &bytes).unwrap();
    let hea = dir.path().join("rec.hea");
    fs::write(
        &hea,
        format!(
            "# synthetic record\nrec 2 100 4 12:30:15 01/02/2003\n\
             rec.dat 16x2 1000(10)/uV 16 0 10 {} 0 ECG lead I\n\
             # a comment between signal lines\r\n\
             rec.dat 16 0 16 0 1 {} 0 Resp\n",
            checksum(&ecg),
            checksum(&resp)
        ),
    )
    .unwrap();

    let (rec, stats) = read_recording_with_stats(&hea, None).unwrap();
    assert_eq!(rec.signal_label, "ECG lead I");
    assert_eq!(rec.fs_hz, 200.0);
    // (d − baseline 10) / gain 1000 in µV; the invalid −32768 repeats the previous value.
    let want: Vec<f32> = [0, 10, 10, 30, 40, 50, 60, 70]
        .iter()
        .map(|&v| v as f32 / 1000.0)
        .collect();
    assert_eq!(rec.samples_uv, want);
    assert_eq!(stats.invalid_samples, 1);
    // 2003-02-01T12:30:15Z.
    assert_eq!(rec.start_unix_ns, Some(1_044_102_615_000_000_000));

    // Gain 0 → WFDB default 200 adu/mV; baseline = ADC zero (0); units default mV.
    let resp_rec = read_recording(&dir.path().join("rec.dat"), Some("resp")).unwrap();
    assert_eq!(resp_rec.fs_hz, 100.0);
    assert_eq!(resp_rec.samples_uv, vec![5.0, 10.0, 15.0, 20.0]);

    let sigs = list_signals(&hea).unwrap();
    assert_eq!((sigs[0].n_samples, sigs[1].n_samples), (8, 4));
    assert_eq!((sigs[0].unit.as_str(), sigs[1].unit.as_str()), ("uV", "mV"));
}

#[test]
fn wfdb_leading_invalid_samples_take_the_first_valid_value() {
    let dir = tempdir();
    let v: Vec<i32> = vec![-2048, -2048, 400, -2048, 600];
    fs::write(dir.path().join("inv.dat"), pack_212(&v)).unwrap();
    let hea = dir.path().join("inv.hea");
    let text = format!(
        "inv 1 128 5\ninv.dat 212 200(-9223372036854775808)/mV 12 0 0 {} 0 ECG\n",
        checksum(&v)
    );
    fs::write(&hea, text).unwrap();
    // An absurd baseline must not overflow; the values are just huge.
    let (rec, stats) = read_recording_with_stats(&hea, None).unwrap();
    assert_eq!(stats.invalid_samples, 3);
    assert!(rec.samples_uv.iter().all(|x| x.is_finite() && *x > 1e15));

    let text = format!(
        "inv 1 128 5\ninv.dat 212 200/mV 12 0 0 {} 0 ECG\n",
        checksum(&v)
    );
    fs::write(&hea, text).unwrap();
    let rec = read_recording(&hea, None).unwrap();
    assert_eq!(rec.samples_uv, vec![2000.0, 2000.0, 2000.0, 2000.0, 3000.0]);

    // Nothing valid at all is an error.
    let all_bad = vec![-2048; 4];
    fs::write(dir.path().join("inv.dat"), pack_212(&all_bad)).unwrap();
    fs::write(&hea, "inv 1 128 4\ninv.dat 212 200 12 0 0 0 0 ECG\n").unwrap();
    let msg = assert_err_names(read_recording(&hea, None), &dir.path().join("inv.dat"));
    assert!(msg.contains("invalid"), "{msg}");
}

#[test]
fn wfdb_format212_with_odd_frame_and_derived_length() {
    let dir = tempdir();
    // Three signals in one 212 file: a frame of 3 samples straddles byte triples.
    let frames: Vec<[i32; 3]> = vec![[1, -1, 2047], [-2047, 100, -100], [5, 6, 7]];
    let flat: Vec<i32> = frames.iter().flatten().copied().collect();
    fs::write(dir.path().join("r.dat"), pack_212(&flat)).unwrap();
    let hea = dir.path().join("r.hea");
    // No sample count on the record line: derived from the file size.
    fs::write(
        &hea,
        "r 3 250\nr.dat 212 100 12 0 1 0 0 a\nr.dat 212 100 12 0 -1 0 0 b\nr.dat 212 100 12 0 2047 0 0 ECG c\n",
    )
    .unwrap();
    let rec = read_recording(&hea, None).unwrap();
    assert_eq!(rec.signal_label, "ECG c");
    assert_eq!(rec.fs_hz, 250.0);
    assert_eq!(rec.samples_uv, vec![20470.0, -1000.0, 70.0]);
    let b = read_recording(&hea, Some("b")).unwrap();
    assert_eq!(b.samples_uv, vec![-10.0, 1000.0, 60.0]);
}

#[test]
fn wfdb_errors_name_the_file_at_fault() {
    let dir = tempdir();
    let dat = dir.path().join("x.dat");
    fs::write(&dat, i16_bytes(&[1, 2, 3, 4])).unwrap();

    // A .dat alone cannot be decoded.
    let msg = assert_err_names(read_recording(&dat, None), &dat);
    assert!(msg.contains("x.hea"), "{msg}");

    let hea = dir.path().join("x.hea");
    let cases: [(&str, &str); 9] = [
        ("x 1 100 4\nx.dat 16 200 16 0 1 -999 0 ECG\n", "checksum"),
        ("x 1 100 4\nx.dat 311 200 16 0 1 0 0 ECG\n", "311"),
        (
            "x 2 100 4\nx.dat 16 200 16 0 1 0 0 ECG\n",
            "only 1 signal line",
        ),
        (
            "x 1 100 4\nx.dat 16 200/furlong 16 0 1 0 0 ECG\n",
            "furlong",
        ),
        (
            "x 1 100 99999999999999\nx.dat 16 200 16 0 1 0 0 ECG\n",
            "truncated",
        ),
        (
            "x 1 100 4\nx.dat 16x99999999999 200 16 0 1 0 0 ECG\n",
            "truncated",
        ),
        (
            "x 1 100 99999999999\nx.dat 16x99999999999 200 16 0 1 0 0 ECG\n",
            "absurd",
        ),
        (
            "x 1 abc 4\nx.dat 16 200 16 0 1 0 0 ECG\n",
            "sampling frequency",
        ),
        ("x/2 1 100 4\n", "multi-segment"),
    ];
    for (text, needle) in cases {
        fs::write(&hea, text).unwrap();
        let err = read_recording(&hea, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(needle), "{text:?} → {msg}");
        // The file at fault is named: the .dat for data problems, else the .hea.
        assert!(msg.contains("x.hea") || msg.contains("x.dat"), "{msg}");
    }
}

#[test]
fn wfdb_annotations_synthetic() {
    let dir = tempdir();
    let path = dir.path().join("s.atr");
    let word = |code: u16, data: u16| ((code << 10) | data).to_le_bytes();
    let mut b = Vec::new();
    b.extend(word(1, 10)); // N at 10
    b.extend(word(61, 2)); //   SUB 2
    b.extend(word(62, 1)); //   CHN 1 (sticky)
    b.extend(word(59, 0)); // SKIP 100000 (32-bit, high word first)
    b.extend(((100_000u32 >> 16) as u16).to_le_bytes());
    b.extend(((100_000u32 & 0xFFFF) as u16).to_le_bytes()); // then the low word
    b.extend(word(5, 5)); // V at 10 + 100000 + 5
    b.extend(word(63, 3)); //   AUX "(VT" + pad byte
    b.extend(b"(VT\0");
    b.extend(word(60, 3)); //   NUM 3
    b.extend(word(28, 1)); // + at 100016
    b.extend([0, 0]); // EOF
    fs::write(&path, &b).unwrap();

    let anns = read_wfdb_annotations(&path).unwrap();
    assert_eq!(anns.len(), 3);
    assert_eq!(
        (
            anns[0].sample,
            anns[0].symbol,
            anns[0].subtype,
            anns[0].chan
        ),
        (10, 'N', 2, 1)
    );
    assert_eq!(
        (anns[1].sample, anns[1].symbol, anns[1].code),
        (100_015, 'V', 5)
    );
    assert_eq!(anns[1].aux.as_deref(), Some("(VT"));
    assert_eq!((anns[1].chan, anns[1].num, anns[1].subtype), (1, 3, 0));
    assert_eq!(
        (anns[2].sample, anns[2].symbol, anns[2].num),
        (100_016, '+', 3)
    );
    assert!(anns[0].is_beat() && anns[1].is_beat() && !anns[2].is_beat());

    // Without the end-of-file word the file is reported as truncated.
    fs::write(&path, &b[..b.len() - 2]).unwrap();
    let msg = assert_err_names(read_wfdb_annotations(&path), &path);
    assert!(msg.contains("end-of-file"), "{msg}");
}

// ---------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------

#[test]
fn polar_h10_csv() {
    let data = data_or_skip!();
    let path = data.join("polar-h10/polar_h10_ecg.csv");
    let rec = read_recording(&path, None).unwrap();
    let side = rec.side.as_ref().expect("Polar CSV has side channels");
    eprintln!(
        "Polar H10: {} samples, fs {:.4} Hz, {} HR values, {} RR values",
        rec.samples_uv.len(),
        rec.fs_hz,
        side.hr_bpm.len(),
        side.rr_ms.len()
    );
    assert_eq!(rec.signal_label, "ecg_uv");
    assert_eq!(rec.samples_uv.len(), 78_096);
    assert!(rec.fs_hz > 130.0 && rec.fs_hz < 130.3, "fs {}", rec.fs_hz);
    assert!((rec.fs_hz - 130.1608).abs() < 1e-3);
    assert_eq!(rec.start_unix_ns, Some(1_714_920_600_006_020_096));
    let ts = rec.timestamps_ns.as_ref().unwrap();
    assert_eq!(ts.len(), 78_096);
    assert_eq!(*ts.last().unwrap(), 1_714_921_199_994_830_080);
    assert_eq!(rec.samples_uv[..3], [-98.0, -84.0, -72.0]);
    let (min, max) = rec
        .samples_uv
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert_eq!((min, max), (-1173.0, 1744.0));

    assert_eq!(side.hr_bpm.len(), 600);
    assert_eq!(side.rr_ms.len(), 798);
    assert_eq!(side.hr_bpm[0], (1_714_920_600_436_237_312, 90.0));
    assert_eq!(side.rr_ms[0], (1_714_920_600_436_237_312, 421.0));
    assert!(side
        .hr_bpm
        .iter()
        .all(|&(_, v)| (30.0..=220.0).contains(&v)));
    assert!(side
        .rr_ms
        .iter()
        .all(|&(_, v)| (200.0..=2000.0).contains(&v)));

    let sigs = list_signals(&path).unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(
        (
            sigs[0].label.as_str(),
            sigs[0].unit.as_str(),
            sigs[0].n_samples
        ),
        ("ecg_uv", "uV", 78_096)
    );
}

#[test]
fn generic_csv_layouts() {
    let dir = tempdir();
    let path = dir.path().join("g.csv");

    fs::write(&path, "Time,ECG\n0.0,10\n0.004,20\n0.008,-30\n").unwrap();
    let rec = read_recording(&path, None).unwrap();
    assert_eq!(rec.signal_label, "ECG");
    assert!((rec.fs_hz - 250.0).abs() < 1e-9);
    assert_eq!(rec.samples_uv, vec![10.0, 20.0, -30.0]);
    assert_eq!(rec.start_unix_ns, None, "seconds are not an epoch");
    assert_eq!(rec.timestamps_ns, Some(vec![0, 4_000_000, 8_000_000]));
    assert!(rec.side.is_none());

    fs::write(&path, "ecg_mv,t\r\n0.5,1.0\r\n-0.25,1.5\r\n").unwrap();
    let rec = read_recording(&path, None).unwrap();
    assert_eq!(rec.samples_uv, vec![500.0, -250.0]);
    assert!((rec.fs_hz - 2.0).abs() < 1e-12);
    assert_eq!(list_signals(&path).unwrap()[0].unit, "mV");

    fs::write(&path, "time_s,ecg_uv,resp\n0,1,7\n1,2,8\n").unwrap();
    let rec = read_recording(&path, Some("resp")).unwrap();
    assert_eq!(rec.samples_uv, vec![7.0, 8.0]);
}

#[test]
fn csv_errors_name_line_and_column() {
    let dir = tempdir();
    let path = dir.path().join("bad.csv");

    fs::write(&path, "time_ns,ecg_uv\n1000,5\n2000,abc\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(
        msg.contains("line 3") && msg.contains("ecg_uv") && msg.contains("abc"),
        "{msg}"
    );

    fs::write(&path, "time_ns,ecg_uv\n1000,5\n2x00,6\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("line 3") && msg.contains("time_ns"), "{msg}");

    fs::write(&path, "time,ecg\n0,1\n1,NaN\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("line 3"), "{msg}");

    // Found by the `csv` fuzz target: a finite number whose µV value overflows the f32 sample
    // to infinity was accepted and reached the filters as -inf.
    let huge = format!("-{}0.137", "9".repeat(64));
    fs::write(
        &path,
        format!("time,ecg_mv\n0.0,-0.098\n0.0077,{huge}\n0.0154,-0.07\n"),
    )
    .unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(
        msg.contains("line 3") && msg.contains("ecg_mv") && msg.contains("ECG range"),
        "{msg}"
    );
    fs::write(&path, "time_ns,ecg_uv,hr_bpm\n1000,5,1e39\n2000,6,60\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("line 2") && msg.contains("hr_bpm"), "{msg}");

    fs::write(&path, "time_ns,voltage,hr_bpm\n1,2,\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    for needle in ["voltage", "hr_bpm", "ecg_uv", "ecg_mv"] {
        assert!(msg.contains(needle), "missing {needle}: {msg}");
    }

    fs::write(&path, "stamp,ecg\n1,2\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("time") && msg.contains("stamp"), "{msg}");

    fs::write(&path, "time_ns,ecg_uv\n1000,5\n900,6\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("backwards") && msg.contains("line 3"), "{msg}");

    fs::write(&path, "time_ns,ecg_uv\n1000,5\n").unwrap();
    assert_err_names(read_recording(&path, None), &path);

    fs::write(&path, "time_ns,ecg_uv,hr_bpm\n1000,5,\n2000,6,fast\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("line 3") && msg.contains("hr_bpm"), "{msg}");

    fs::write(&path, "time_ns,ecg_uv\n1000,5\n2000\n").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains("line 3"), "{msg}");

    fs::write(&path, "").unwrap();
    assert_err_names(read_recording(&path, None), &path);
}

#[test]
fn csv_line_numbers_for_any_line_ending() {
    // The csv crate miscounts lines for CRLF/CR files; errors must not.
    let dir = tempdir();
    for (eol, name) in [("\n", "lf.csv"), ("\r\n", "crlf.csv"), ("\r", "cr.csv")] {
        let path = dir.path().join(name);
        let text = [
            "time_ns,ecg_uv",
            "1000,5",
            "",
            "2000,6",
            "3000,bad",
            "4000,7",
        ]
        .join(eol);
        fs::write(&path, text).unwrap();
        let msg = assert_err_names(read_recording(&path, None), &path);
        assert!(msg.contains("line 5,"), "{name}: {msg}");
    }
}

#[test]
fn unknown_extension_and_missing_file() {
    let dir = tempdir();
    let path = dir.path().join("signal.mat");
    fs::write(&path, "x").unwrap();
    let msg = assert_err_names(read_recording(&path, None), &path);
    assert!(msg.contains(".edf") && msg.contains(".csv"), "{msg}");
    let missing = dir.path().join("nope.edf");
    assert_err_names(read_recording(&missing, None), &missing);
    assert_err_names(list_signals(&missing), &missing);
}

// ---------------------------------------------------------------------------
// Fuzz-style robustness: damaged real files must give an error, never a panic
// ---------------------------------------------------------------------------

/// Copy `src` into `dir` under the same name, keeping only the first `len` bytes.
fn write_truncated(src: &Path, dir: &Path, len: usize) -> PathBuf {
    let bytes = fs::read(src).unwrap();
    let dst = dir.join(src.file_name().unwrap());
    fs::write(&dst, &bytes[..len.min(bytes.len())]).unwrap();
    dst
}

#[test]
fn truncated_real_files_are_errors() {
    let data = data_or_skip!();
    let dir = tempdir();

    // EDF: every cut (header, signal header, mid-record, whole records) fails.
    let edf = data.join("eegmat/Subject00_task.edf");
    let len = fs::metadata(&edf).unwrap().len() as usize;
    for cut in [
        0,
        1,
        100,
        255,
        256,
        300,
        511,
        512,
        513,
        1512,
        len / 2,
        len - 2,
        len - 1,
    ] {
        let p = write_truncated(&edf, dir.path(), cut);
        assert_err_names(read_recording(&p, None), &p);
        if cut < 512 {
            assert_err_names(list_signals(&p), &p);
        }
    }

    // WFDB .dat: the header declares 650000 frames.
    let hea_src = data.join("mitbih/100.hea");
    fs::copy(&hea_src, dir.path().join("100.hea")).unwrap();
    let dat = data.join("mitbih/100.dat");
    let len = fs::metadata(&dat).unwrap().len() as usize;
    for cut in [0, 1, 2, 3, 1000, len / 2, len - 3, len - 1] {
        let p = write_truncated(&dat, dir.path(), cut);
        let msg = assert_err_names(read_recording(&dir.path().join("100.hea"), None), &p);
        assert!(msg.contains("truncated"), "{msg}");
    }
    fs::copy(&dat, dir.path().join("100.dat")).unwrap();

    // WFDB .hea: cuts before the end of the first signal line's checksum.
    let hea_text = fs::read_to_string(&hea_src).unwrap();
    let first_sig_end = hea_text.find("-22131").unwrap() + 4;
    for cut in [0, 5, 22, 23, 30, 40, first_sig_end] {
        let p = write_truncated(&hea_src, dir.path(), cut);
        assert_err_names(read_recording(&p, None), &p);
    }
    // Cuts in the second signal line must not panic (some leave a valid header).
    for cut in first_sig_end..hea_text.len() {
        let p = write_truncated(&hea_src, dir.path(), cut);
        let _ = read_recording(&p, Some("v5"));
    }

    // Annotations: any cut loses the end-of-file marker.
    let atr = data.join("mitbih/100.atr");
    let len = fs::metadata(&atr).unwrap().len() as usize;
    for cut in [0, 1, 2, 3, 4, 5, 100, 101, len / 2, len - 2, len - 1] {
        let p = write_truncated(&atr, dir.path(), cut);
        assert_err_names(read_wfdb_annotations(&p), &p);
    }

    // CSV: cuts inside the header or mid-row (row with too few fields) fail.
    let csv = data.join("polar-h10/polar_h10_ecg.csv");
    let text = fs::read_to_string(&csv).unwrap();
    let mut cuts = vec![0, 5, 12];
    for frac in [0.1, 0.5, 0.9] {
        let line_start = text[..(text.len() as f64 * frac) as usize]
            .rfind('\n')
            .unwrap()
            + 1;
        cuts.push(line_start + 3); // inside time_ns: 1 field
        cuts.push(line_start + 21); // inside ecg_uv: 2 fields
    }
    for cut in cuts {
        let p = write_truncated(&csv, dir.path(), cut);
        assert_err_names(read_recording(&p, None), &p);
    }
}

#[test]
fn corrupted_edf_headers_are_errors() {
    let data = data_or_skip!();
    let dir = tempdir();
    let src = fs::read(data.join("eegmat/Subject00_task.edf")).unwrap();
    let path = dir.path().join("corrupt.edf");
    // (offset, replacement) — each makes the header unusable.
    let edits: [(usize, &[u8]); 12] = [
        (0, b"1       "),         // version
        (0, b"\xffBIOSEMI"),      // BDF
        (184, b"abc     "),       // header bytes
        (184, b"768     "),       // header bytes disagrees with signal count
        (236, b"x1      "),       // record count
        (236, b"99999999"),       // huge record count
        (236, b"-5      "),       // negative record count
        (244, b"0       "),       // record duration
        (252, b"9999"),           // huge signal count
        (252, b"0   "),           // zero signals
        (256 + 216, b"99999999"), // huge samples per record
        (256 + 216, b"5x0     "), // unparsable samples per record
    ];
    for (offset, bytes) in edits {
        let mut b = src.clone();
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
        fs::write(&path, &b).unwrap();
        let msg = assert_err_names(read_recording(&path, None), &path);
        eprintln!("{offset}: {msg}");
    }
    // Calibration fields of the only signal (digital min/max, physical min).
    for (offset, bytes) in [
        (256 + 120, &b"32767   "[..]),
        (256 + 104, b"zero    "),
        (256 + 96, b"furlong "),
    ] {
        let mut b = src.clone();
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
        fs::write(&path, &b).unwrap();
        assert_err_names(read_recording(&path, None), &path);
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let data = data_or_skip!();
    let dir = tempdir();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let edf = fs::read(data.join("eegmat/Subject00_task.edf")).unwrap();
    let hea = fs::read(data.join("mitbih/100.hea")).unwrap();
    let dat = fs::read(data.join("mitbih/100.dat")).unwrap();
    let atr = fs::read(data.join("mitbih/100.atr")).unwrap();
    fs::write(dir.path().join("100.dat"), &dat).unwrap();

    let edf_path = dir.path().join("flip.edf");
    let hea_path = dir.path().join("100.hea");
    let atr_path = dir.path().join("100.atr");
    let mut errors = 0;
    for _ in 0..300 {
        let mut b = edf.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(512); // header region
            b[i] = rng.next() as u8;
        }
        fs::write(&edf_path, &b).unwrap();
        if let Err(e) = read_recording(&edf_path, None) {
            errors += 1;
            assert!(e.to_string().contains("flip.edf"), "{e}");
        }
        let _ = list_signals(&edf_path);

        let mut h = hea.clone();
        let i = rng.below(h.len());
        h[i] = b"0123456789 /x+:()#\n-"[rng.below(20)];
        fs::write(&hea_path, &h).unwrap();
        let _ = read_recording(&hea_path, None);
        let _ = list_signals(&hea_path);

        let mut a = atr.clone();
        for _ in 0..1 + rng.below(8) {
            let i = rng.below(a.len());
            a[i] = rng.next() as u8;
        }
        fs::write(&atr_path, &a).unwrap();
        let _ = read_wfdb_annotations(&atr_path);
    }
    eprintln!("random EDF header flips: {errors}/300 rejected, the rest still decodable");

    // Pure noise under every extension.
    for ext in ["edf", "hea", "dat", "csv", "atr"] {
        for size in [0, 1, 7, 256, 600, 5000] {
            let p = dir.path().join(format!("noise.{ext}"));
            let bytes: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            fs::write(&p, &bytes).unwrap();
            if ext == "atr" {
                let _ = read_wfdb_annotations(&p);
            } else {
                let _ = read_recording(&p, None);
                let _ = list_signals(&p);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------

#[test]
fn eegmat_manifest() {
    let data = data_or_skip!();
    let path = data.join("eegmat/labels.csv");
    let m = read_manifest(&path).unwrap();
    assert_eq!(m.path, path);
    assert_eq!(
        m.label_names,
        ["arousal"],
        "condition is text, fs_hz/samples are known columns"
    );
    assert_eq!(m.entries.len(), 48);
    let e = &m.entries[0];
    assert_eq!(e.file, data.join("eegmat/Subject00_rest.edf"));
    assert_eq!(e.subject, "Subject00");
    assert_eq!(e.labels, vec![("arousal".to_string(), 0.0)]);
    assert_eq!(e.condition.as_deref(), Some("rest"));
    assert_eq!(
        (e.line, e.start_s, e.end_s, e.signal.as_deref()),
        (2, None, None, None)
    );
    assert_eq!(m.entries[1].label("arousal"), Some(1.0));
    assert_eq!(m.subjects().len(), 24);
    let task = m
        .entries
        .iter()
        .filter(|e| e.label("arousal") == Some(1.0))
        .count();
    assert_eq!(task, 24);
}

#[test]
fn manifest_columns_labels_and_paths() {
    let dir = tempdir();
    fs::create_dir(dir.path().join("rec")).unwrap();
    for f in ["a.edf", "b.csv"] {
        fs::write(dir.path().join("rec").join(f), "x").unwrap();
    }
    let path = dir.path().join("m.csv");
    fs::write(
        &path,
        "\u{feff}File,Subject,start_s,end_s,Valence,arousal,group,signal,notes\n\
         rec/a.edf,S1,0,60,0.5,1,control,ECG,first\n\
         rec/b.csv,S2,,,,-1,case,,\n\
         rec/a.edf,S1,60,120.5,-0.25,,control,,\n",
    )
    .unwrap();
    let m = read_manifest(&path).unwrap();
    assert_eq!(
        m.label_names,
        ["Valence", "arousal"],
        "group is text → not a label"
    );
    assert_eq!(m.entries.len(), 3);
    let e = &m.entries;
    assert_eq!(e[0].file, dir.path().join("rec/a.edf"));
    assert_eq!(
        e[0].labels,
        vec![("Valence".to_string(), 0.5), ("arousal".to_string(), 1.0)]
    );
    assert_eq!((e[0].start_s, e[0].end_s), (Some(0.0), Some(60.0)));
    assert_eq!(e[0].signal.as_deref(), Some("ECG"));
    assert_eq!(
        e[1].labels,
        vec![("arousal".to_string(), -1.0)],
        "empty cell → absent"
    );
    assert_eq!((e[1].start_s, e[1].signal.as_deref()), (None, None));
    assert_eq!(e[2].labels, vec![("Valence".to_string(), -0.25)]);
    assert_eq!((e[2].line, e[2].end_s), (4, Some(120.5)));
    assert_eq!(m.subjects(), ["S1", "S2"]);
}

#[test]
fn manifest_line_numbers_for_any_line_ending() {
    let dir = tempdir();
    fs::write(dir.path().join("a.edf"), "x").unwrap();
    for (eol, name) in [("\n", "lf.csv"), ("\r\n", "crlf.csv"), ("\r", "cr.csv")] {
        let path = dir.path().join(name);
        let rows = ["file,subject", "a.edf,S1", "", "a.edf,S2"];
        fs::write(&path, rows.join(eol)).unwrap();
        let m = read_manifest(&path).unwrap();
        let lines: Vec<usize> = m.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4], "{name}");
        fs::write(&path, [&rows[..], &["gone.edf,S3"]].concat().join(eol)).unwrap();
        let msg = read_manifest(&path).unwrap_err().to_string();
        assert!(
            msg.contains("line 5") && msg.contains("gone.edf"),
            "{name}: {msg}"
        );
    }
}

#[test]
fn manifest_errors_name_path_line_and_column() {
    let dir = tempdir();
    fs::write(dir.path().join("a.edf"), "x").unwrap();
    let path = dir.path().join("bad_manifest.csv");
    let cases: [(&str, &[&str]); 9] = [
        ("subject,arousal\nS1,1\n", &["\"file\"", "subject, arousal"]),
        ("file,arousal\na.edf,1\n", &["\"subject\""]),
        (
            "file,subject,File\na.edf,S1,x\n",
            &["\"File\"", "more than once"],
        ),
        (
            "file,subject,start_s,end_s\na.edf,S1,10,5\n",
            &["line 2", "start_s", "end_s"],
        ),
        (
            "file,subject,start_s,end_s\na.edf,S1,0,5\na.edf,S1,zero,5\n",
            &["line 3", "\"start_s\"", "zero"],
        ),
        (
            "file,subject\na.edf,S1\nmissing.edf,S2\n",
            &["line 3", "missing.edf"],
        ),
        ("file,subject\na.edf,\n", &["line 2", "\"subject\""]),
        ("file,subject\na.edf,S1,extra\n", &["line 2", "3 fields"]),
        ("file,subject\n", &["no entries"]),
    ];
    for (text, needles) in cases {
        fs::write(&path, text).unwrap();
        let err: ManifestError = read_manifest(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad_manifest.csv"), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "{text:?}: missing {n:?} in {msg}");
        }
    }
    let missing = dir.path().join("nope.csv");
    assert!(read_manifest(&missing)
        .unwrap_err()
        .to_string()
        .contains("nope.csv"));
}

/// A header whose signal file is a path (`../secret.dat`, an absolute path) is refused: a
/// downloaded record must not make the gateway read files outside the record's folder. (It
/// used to read them.)
#[test]
fn wfdb_signal_file_must_sit_beside_its_header() {
    let dir = tempdir();
    let inner = dir.path().join("rec");
    fs::create_dir(&inner).unwrap();
    fs::write(dir.path().join("secret.dat"), i16_bytes(&[1, 2, 3, 4])).unwrap();
    let outside = dir.path().join("secret.dat").display().to_string();
    for name in ["../secret.dat", outside.as_str()] {
        let hea = inner.join("x.hea");
        fs::write(&hea, format!("x 1 250 4\n{name} 16 200 16 0 0 0 0 ECG\n")).unwrap();
        let msg = assert_err_names(read_recording(&hea, None), &hea);
        assert!(msg.contains("not a plain file name"), "{name}: {msg}");
    }
}
