//! The window store on a real sled database in a temporary directory.

use std::fs;
use std::path::Path;

use affectgate::dsp::{Window, WINDOW_FS, WINDOW_LEN};
use affectgate::store::{
    decode_record, encode_record, open_or_quarantine, salvage, window_key, Retention,
    SalvageOptions, Store, StoreError, StoredWindow,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const S: i64 = 1_000_000_000;
/// One sample period at 256 Hz, exactly 3 906 250 ns.
const DT: i64 = 3_906_250;

fn unlimited() -> Retention {
    Retention::KEEP_ALL
}

/// A plain window record: `n` samples of a deterministic ECG-like signal.
fn rec(sensor: &str, start_ns: i64, n: usize) -> StoredWindow {
    let samples = (0..n)
        .map(|i| {
            let t = (start_ns / DT + i as i64) as f32 / WINDOW_FS as f32;
            1200.0 * (t * 7.3).sin() + 300.0 * (t * 41.0).cos()
        })
        .collect();
    StoredWindow {
        sensor: sensor.into(),
        window: Window {
            start_ns,
            fs_hz: WINDOW_FS,
            samples,
            index: (start_ns / S) as u64,
        },
        quality: 0,
        hr_bpm: None,
        rmssd_ms: None,
        sdnn_ms: None,
        scores: vec![],
        model: None,
        labels: vec![],
    }
}

/// Every field equal, samples within the documented quantisation bound.
fn assert_close(got: &StoredWindow, want: &StoredWindow) {
    let scale = affectgate::model::quant::scale(&want.window.samples);
    assert_eq!(got.window.samples.len(), want.window.samples.len());
    for (i, (g, w)) in got
        .window
        .samples
        .iter()
        .zip(&want.window.samples)
        .enumerate()
    {
        let bound = scale * 0.5 + w.abs() * f32::EPSILON;
        assert!(
            (g - w).abs() <= bound,
            "sample {i}: {g} vs {w}, bound {bound}"
        );
    }
    let strip = |r: &StoredWindow| {
        let mut r = r.clone();
        r.window.samples.clear();
        r
    };
    assert_eq!(strip(got), strip(want));
}

/// [`assert_close`], except that `got` may be the version from before the labels were set
/// (a salvage whose only intact copy predates the relabelling); returns whether it is.
fn assert_close_or_unlabelled(got: &StoredWindow, want: &StoredWindow) -> bool {
    if got.labels.is_empty() && !want.labels.is_empty() {
        let mut older = want.clone();
        older.labels.clear();
        assert_close(got, &older);
        true
    } else {
        assert_close(got, want);
        false
    }
}

fn starts(store: &Store, sensor: &str) -> Vec<i64> {
    store
        .range(sensor, i64::MIN, i64::MAX)
        .map(|r| r.unwrap().window.start_ns)
        .collect()
}

/// Logical bytes of one `rec(sensor, _, n)` window, measured through the store itself.
fn bytes_per_window(sensor: &str, n: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    store.put(&rec(sensor, 0, n)).unwrap();
    store.stats().unwrap().encoded_bytes
}

#[test]
fn record_round_trips_with_bounded_quantisation_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    let mut r = rec("polar-h10_1", 1_700_000_000 * S, WINDOW_LEN);
    r.window.samples[17] = -4999.5; // the largest magnitude sets the scale
    r.quality = 0b101;
    r.hr_bpm = Some(72.5);
    r.rmssd_ms = None;
    r.sdnn_ms = Some(41.25);
    r.scores = vec![("arousal".into(), 0.8), ("valence".into(), -0.25)];
    r.model = Some("ssl-ecg-2024.05+ft3".into());
    r.labels = vec![("stress".into(), 3.0)];
    store.put(&r).unwrap();
    let got = store
        .get("polar-h10_1", r.window.start_ns)
        .unwrap()
        .expect("stored");
    assert_close(&got, &r);
    // The bound is small in µV: max|x| = 4999.5 µV gives a step of ~0.153 µV.
    let scale = affectgate::model::quant::scale(&r.window.samples);
    assert!(scale <= 4999.5 / 32767.0 * (1.0 + 1e-6), "scale {scale}");
    assert_eq!(
        store.get("polar-h10_1", r.window.start_ns + 1).unwrap(),
        None
    );
    // Layout: magic, format, length (9 bytes), the key (1 + 1 + 8 for sensor "s"), 30 header
    // bytes, 2 per sample, 4 CRC for a bare window.
    assert_eq!(
        encode_record(&rec("s", 0, WINDOW_LEN)).unwrap().len(),
        9 + 10 + 30 + 2 * WINDOW_LEN + 4
    );
    // An all-zero window decodes to exact zeros.
    let zero = StoredWindow {
        window: Window {
            samples: vec![0.0; 8],
            ..r.window.clone()
        },
        ..r
    };
    let bytes = encode_record(&zero).unwrap();
    assert_eq!(
        decode_record(&zero.sensor, zero.window.start_ns, &bytes).unwrap(),
        zero
    );
}

#[test]
fn put_rejects_bad_sensor_ids_and_non_finite_samples() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    for bad in ["", "a b", "a/b", "ü", "a\0b"] {
        let err = store.put(&rec(bad, 0, 4)).unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidSensor { sensor } if sensor == bad),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let mut r = rec("s", 5 * S, 4);
    r.window.samples[2] = f32::NAN;
    let err = store.put(&r).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidRecord { ref key, .. } if key == "s/5000000000"),
        "{err}"
    );
    assert_eq!(store.stats().unwrap().windows, 0);
}

#[test]
fn range_is_half_open_time_ordered_and_prefix_safe() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    // Out of order, negative times included; "ab" and "a-" share the prefix "a".
    for t in [30, -20, 0, 10, -5, 40, 20] {
        store.put(&rec("a", t * S, 16)).unwrap();
    }
    for t in [-10, 0, 15, 25] {
        store.put(&rec("ab", t * S, 16)).unwrap();
        store.put(&rec("a-", t * S, 16)).unwrap();
    }
    let got: Vec<i64> = store
        .range("a", -20 * S, 30 * S)
        .map(|r| r.unwrap().window.start_ns)
        .collect();
    assert_eq!(got, [-20, -5, 0, 10, 20].map(|t| t * S));
    let got: Vec<i64> = store
        .range("a", -19 * S, 41 * S)
        .map(|r| r.unwrap().window.start_ns)
        .collect();
    assert_eq!(got, [-5, 0, 10, 20, 30, 40].map(|t| t * S));
    assert_eq!(starts(&store, "ab"), [-10, 0, 15, 25].map(|t| t * S));
    assert!(store.range("a", 10 * S, 10 * S).next().is_none());
    assert!(store.range("a", 20 * S, 10 * S).next().is_none());
    assert!(store.range("abc", i64::MIN, i64::MAX).next().is_none());
    assert_eq!(store.sensors().unwrap(), ["a", "a-", "ab"]);
    let err = store.range("a/b", 0, 1).next().unwrap().unwrap_err();
    assert!(matches!(err, StoreError::InvalidSensor { .. }));
}

#[test]
fn unlabelled_since_skips_labelled_windows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    for t in 0..6 {
        store.put(&rec("s", t * 10 * S, 32)).unwrap();
    }
    store.put(&rec("t", 25 * S, 32)).unwrap();
    let labels = vec![("valence".to_string(), 2.0f32)];
    assert!(store.set_labels("s", 20 * S, &labels).unwrap());
    assert!(store.set_labels("s", 40 * S, &labels).unwrap());
    assert!(
        !store.set_labels("s", 41 * S, &labels).unwrap(),
        "no such window"
    );
    assert_eq!(store.get("s", 20 * S).unwrap().unwrap().labels, labels);
    let got: Vec<i64> = store
        .unlabelled_since("s", 10 * S)
        .map(|r| r.unwrap().window.start_ns)
        .collect();
    assert_eq!(got, [10, 30, 50].map(|t| t * S));
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.sensors[0].labelled, stats.sensors[0].windows),
        (2, 6)
    );
    // Clearing labels makes the window unlabelled again.
    assert!(store.set_labels("s", 20 * S, &[]).unwrap());
    assert_eq!(store.unlabelled_since("s", 0).count(), 5);
}

#[test]
fn replacing_a_window_keeps_the_byte_counter_exact() {
    let per = bytes_per_window("s", 64);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    store.put(&rec("s", 0, 64)).unwrap();
    let mut scored = rec("s", 0, 64);
    scored.scores = vec![("arousal".into(), 0.5)];
    store.put(&scored).unwrap();
    store.put(&rec("s", 0, 64)).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.windows, stats.encoded_bytes), (1, per));
}

#[test]
fn retention_by_bytes_drops_the_oldest_across_sensors() {
    let per = bytes_per_window("s1", 256);
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_bytes: 4 * per + per / 2,
        max_age_ns: i64::MAX,
    };
    let store = Store::open(dir.path(), retention).unwrap();
    for k in 0..10 {
        let sensor = if k % 2 == 0 { "s1" } else { "s2" };
        store.put(&rec(sensor, k * 10 * S, 256)).unwrap();
        let stats = store.stats().unwrap();
        assert!(
            stats.encoded_bytes <= retention.max_bytes,
            "after put {k}: {stats}"
        );
    }
    assert_eq!(starts(&store, "s1"), [60 * S, 80 * S]);
    assert_eq!(starts(&store, "s2"), [70 * S, 90 * S]);
    // A window older than everything kept is itself the first to go.
    store.put(&rec("s2", -10 * S, 256)).unwrap();
    assert_eq!(starts(&store, "s2"), [70 * S, 90 * S]);
    let stats = store.stats().unwrap();
    assert_eq!((stats.windows, stats.encoded_bytes), (4, 4 * per));
    assert_eq!(
        store.enforce_retention(0).unwrap(),
        Default::default(),
        "nothing more to drop"
    );
}

#[test]
fn retention_by_age_drops_windows_older_than_max_age() {
    let per = bytes_per_window("s1", 64);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        Retention {
            max_bytes: u64::MAX,
            max_age_ns: 60 * S,
        },
    )
    .unwrap();
    for k in 0..=10 {
        store
            .put(&rec(if k < 5 { "s1" } else { "s2" }, k * 10 * S, 64))
            .unwrap();
    }
    assert_eq!(
        store.stats().unwrap().windows,
        11,
        "put does not apply age retention"
    );
    // now = 125 s: windows starting before 65 s go.
    let report = store.enforce_retention(125 * S).unwrap();
    assert_eq!(
        (
            report.dropped_by_age,
            report.dropped_by_bytes,
            report.bytes_freed
        ),
        (7, 0, 7 * per)
    );
    assert!(starts(&store, "s1").is_empty());
    assert_eq!(starts(&store, "s2"), [70, 80, 90, 100].map(|t| t * S));
    assert_eq!(store.stats().unwrap().encoded_bytes, 4 * per);
    assert_eq!(
        store.enforce_retention(125 * S).unwrap(),
        Default::default()
    );
    assert_eq!(store.sensors().unwrap(), ["s2"]);
}

#[test]
fn reopening_keeps_records_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (stats, records) = {
        let store = Store::open(dir.path(), unlimited()).unwrap();
        for k in 0..5 {
            let mut r = rec(if k % 2 == 0 { "x" } else { "y" }, k * 10 * S, 300);
            r.quality = (k % 3) as u8;
            r.scores = if k > 1 {
                vec![("arousal".into(), k as f32)]
            } else {
                vec![]
            };
            store.put(&r).unwrap();
        }
        store.set_labels("x", 20 * S, &[("v".into(), 1.0)]).unwrap();
        assert!(store.flush().is_ok());
        let records: Vec<_> = ["x", "y"]
            .iter()
            .flat_map(|s| {
                store
                    .range(s, i64::MIN, i64::MAX)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect();
        (store.stats().unwrap(), records)
    };
    let same = |store: &Store| {
        let again = store.stats().unwrap();
        assert_eq!(again.sensors, stats.sensors);
        assert_eq!(
            (again.windows, again.encoded_bytes),
            (stats.windows, stats.encoded_bytes)
        );
        let got: Vec<_> = ["x", "y"]
            .iter()
            .flat_map(|s| {
                store
                    .range(s, i64::MIN, i64::MAX)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, records);
    };
    let store = Store::open(dir.path(), unlimited()).unwrap();
    same(&store);
    let x = &stats.sensors[0];
    assert_eq!((x.windows, x.labelled, x.flagged, x.scored), (3, 1, 2, 2));
    assert_eq!((x.first_start_ns, x.last_start_ns), (0, 40 * S));
    // A lost byte counter is recomputed from the keys at open.
    store.raw_tree().remove("m/bytes").unwrap();
    drop(store);
    same(&Store::open(dir.path(), unlimited()).unwrap());
}

#[test]
fn second_open_of_the_same_path_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let first = Store::open(&path, unlimited()).unwrap();
    let err = Store::open(&path, unlimited()).expect_err("second open must fail");
    assert!(
        matches!(&err, StoreError::Locked { path: p } if p == &path),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("in use"),
        "{msg}"
    );
    drop(first);
    Store::open(&path, unlimited()).expect("free again once the first store is dropped");
}

#[test]
fn a_corrupt_value_is_reported_by_key_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        Retention {
            max_bytes: u64::MAX,
            max_age_ns: 100 * S,
        },
    )
    .unwrap();
    let records: Vec<_> = [0, 10, 20, 30]
        .iter()
        .map(|&t| rec("s1", t * S, 128))
        .collect();
    for r in &records {
        store.put(r).unwrap();
    }
    store.put(&rec("s2", 10 * S, 128)).unwrap();
    store
        .raw_tree()
        .insert(
            window_key("s1", 10 * S),
            &b"\x01garbage that is not a window"[..],
        )
        .unwrap();
    // A single flipped bit in the samples of another window is caught by the checksum.
    let key = window_key("s1", 30 * S);
    let mut bytes = store.raw_tree().get(&key).unwrap().unwrap().to_vec();
    bytes[100] ^= 0x04;
    store.raw_tree().insert(key, bytes).unwrap();

    for (t, key) in [(10, "s1/10000000000"), (30, "s1/30000000000")] {
        let err = store.get("s1", t * S).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { key: k, .. } if k == key),
            "{err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
    let scanned: Vec<_> = store.range("s1", i64::MIN, i64::MAX).collect();
    assert_eq!(scanned.len(), 4);
    assert!(scanned[1].is_err() && scanned[3].is_err());
    assert_close(scanned[0].as_ref().unwrap(), &records[0]);
    assert_close(scanned[2].as_ref().unwrap(), &records[2]);
    assert_close(
        &store.get("s2", 10 * S).unwrap().unwrap(),
        &rec("s2", 10 * S, 128),
    );
    let stats = store.stats().unwrap();
    assert_eq!((stats.sensors[0].windows, stats.sensors[0].corrupt), (4, 2));
    assert!(stats.to_string().contains("corrupt"), "{stats}");
    // The store keeps working: new writes, and retention removes corrupt windows too.
    store.put(&rec("s1", 40 * S, 128)).unwrap();
    // max_age 100 s at now = 125 s: s1 at 0, 10 (corrupt), 20 and s2 at 10 go.
    let report = store.enforce_retention(125 * S).unwrap();
    assert_eq!(report.dropped_by_age, 4);
    assert!(store.get("s1", 10 * S).unwrap().is_none());
    let left: Vec<_> = store.range("s1", i64::MIN, i64::MAX).collect();
    assert_eq!(left.len(), 2);
    assert!(left[0].is_err());
    assert_eq!(left[1].as_ref().unwrap().window.start_ns, 40 * S);
}

fn read_rows(path: &Path) -> Vec<(i64, f32)> {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("time_ns,ecg_uv"));
    lines
        .map(|l| {
            let (t, v) = l.split_once(',').unwrap();
            (t.parse().unwrap(), v.parse().unwrap())
        })
        .collect()
}

const T0: i64 = 1000 * S;

#[test]
fn export_writes_one_file_per_contiguous_run_without_repeating_samples() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), unlimited()).unwrap();
    // Sensor "c": back-to-back 1 s windows (the third 1 ms late: within tolerance), a gap,
    // then one more window; a window before `since` and one at `until` are not exported.
    let c_starts = [
        T0 - S,
        T0,
        T0 + S,
        T0 + 2 * S + 1_000_000,
        T0 + 5 * S,
        T0 + 10 * S,
    ];
    for &t in &c_starts {
        store.put(&rec("c", t, 256)).unwrap();
    }
    // Sensor "o": 1 s windows every 0.5 s (hop = len / 2).
    for k in 0..4 {
        store.put(&rec("o", T0 + k * 128 * DT, 256)).unwrap();
    }
    let out = dir.path().join("export");
    let segs = store.export_csv("c", T0, T0 + 10 * S, &out).unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].path, out.join(format!("c_{T0}.csv")));
    assert_eq!(
        (segs[0].start_ns, segs[0].n_windows, segs[0].n_samples),
        (T0, 3, 768)
    );
    assert_eq!(segs[1].path, out.join(format!("c_{}.csv", T0 + 5 * S)));
    assert_eq!(
        (segs[1].start_ns, segs[1].n_windows, segs[1].n_samples),
        (T0 + 5 * S, 1, 256)
    );
    for (seg, window_starts) in [(&segs[0], &c_starts[1..4]), (&segs[1], &c_starts[4..5])] {
        let rows = read_rows(&seg.path);
        let mut want = Vec::new();
        for &t in window_starts {
            let w = store.get("c", t).unwrap().unwrap().window;
            want.extend(
                w.samples
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (t + i as i64 * DT, x)),
            );
        }
        assert_eq!(rows, want, "{}", seg.path.display());
    }

    let segs = store.export_csv("o", i64::MIN, i64::MAX, &out).unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].n_windows, segs[0].n_samples), (4, 256 + 3 * 128));
    let rows = read_rows(&segs[0].path);
    assert_eq!(rows.len(), 640);
    let decoded: Vec<Vec<f32>> = (0..4)
        .map(|k| {
            store
                .get("o", T0 + k * 128 * DT)
                .unwrap()
                .unwrap()
                .window
                .samples
        })
        .collect();
    for (j, &(t, x)) in rows.iter().enumerate() {
        assert_eq!(
            t,
            T0 + j as i64 * DT,
            "row {j}: every sample once, on the 256 Hz grid"
        );
        let (k, i) = if j < 256 {
            (0, j)
        } else {
            ((j - 256) / 128 + 1, 128 + (j - 256) % 128)
        };
        assert_eq!(x, decoded[k][i], "row {j} comes from window {k} sample {i}");
    }
    // What the project's CSV reader estimates: (n - 1) / (t_last - t_first).
    let fs = (rows.len() - 1) as f64 / ((rows[639].0 - rows[0].0) as f64 / 1e9);
    assert_eq!(fs, WINDOW_FS);
}

#[test]
fn export_refuses_to_overwrite_and_writes_nothing_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), unlimited()).unwrap();
    for t in [T0, T0 + S, T0 + 5 * S] {
        store.put(&rec("c", t, 256)).unwrap();
    }
    let out = dir.path().join("a");
    let segs = store.export_csv("c", i64::MIN, i64::MAX, &out).unwrap();
    let before = fs::read(&segs[0].path).unwrap();
    let err = store.export_csv("c", i64::MIN, i64::MAX, &out).unwrap_err();
    assert!(
        matches!(&err, StoreError::Exists { path } if *path == segs[0].path),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("c_{T0}.csv")), "{err}");
    assert_eq!(fs::read(&segs[0].path).unwrap(), before);

    // Only the second file's name is taken: the first is not written either.
    let out = dir.path().join("b");
    fs::create_dir_all(&out).unwrap();
    let taken = out.join(format!("c_{}.csv", T0 + 5 * S));
    fs::write(&taken, "keep").unwrap();
    let err = store.export_csv("c", i64::MIN, i64::MAX, &out).unwrap_err();
    assert!(
        matches!(&err, StoreError::Exists { path } if *path == taken),
        "{err}"
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
    assert_eq!(fs::read_to_string(&taken).unwrap(), "keep");
}

#[test]
fn store_and_iterators_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<affectgate::store::Windows>();
}

#[test]
fn stats_table_lists_every_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), unlimited()).unwrap();
    assert!(store.stats().unwrap().to_string().contains("no windows"));
    store.put(&rec("chest-strap_1", 0, 16)).unwrap();
    store.put(&rec("b", 86_400 * S, 16)).unwrap();
    let text = store.stats().unwrap().to_string();
    assert!(text.contains("2 windows"), "{text}");
    assert!(
        text.contains("chest-strap_1") && text.contains("1970-01-01 00:00:00"),
        "{text}"
    );
    assert!(text.contains("1970-01-02 00:00:00"), "{text}");
    println!("{text}");
}

// ---------------------------------------------------------------------------------------
// Encoding properties

/// Independent bitwise CRC-32 (IEEE), to build values with a valid checksum.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `body` followed by the checksum the store expects under key (`sensor`, `start_ns`).
fn with_crc(sensor: &str, start_ns: i64, body: &[u8]) -> Vec<u8> {
    let crc = crc32(&[sensor.as_bytes(), &[0], &start_ns.to_le_bytes(), body]);
    [body, &crc.to_le_bytes()].concat()
}

#[test]
fn checksum_is_crc32_of_key_and_body() {
    assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    let r = rec("s", -7, 10);
    let bytes = encode_record(&r).unwrap();
    assert_eq!(with_crc("s", -7, &bytes[..bytes.len() - 4]), bytes);
    // The same value under another key does not verify.
    assert!(matches!(
        decode_record("s", -6, &bytes),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        decode_record("t", -7, &bytes),
        Err(StoreError::Corrupt { .. })
    ));
}

/// Seeded random input for the property tests (128 cases each, reproducible).
fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Up to `max` random printable characters (any Unicode scalar except controls).
fn text(r: &mut StdRng, max: usize) -> String {
    let n = r.random_range(0..=max);
    (0..n)
        .map(|_| loop {
            let c: char = r.random();
            if !c.is_control() {
                break c;
            }
        })
        .collect()
}

/// A random record: any sensor name, times, rates (incl. the window rate), amplitudes from
/// silence to 10⁶ µV, optional HR/HRV, named scores and labels.
fn arb_record(r: &mut StdRng) -> StoredWindow {
    const ID: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    let sensor: String = (0..r.random_range(1..=16))
        .map(|_| ID[r.random_range(0..ID.len())] as char)
        .collect();
    let fs_hz = if r.random_bool(0.5) {
        WINDOW_FS
    } else {
        r.random_range(0.5..5000.0)
    };
    let amp = match r.random_range(0..3) {
        0 => 0.0f32,
        1 => 5000.0,
        _ => r.random_range(1e-3f32..1e6),
    };
    let samples = (0..r.random_range(0..3000))
        .map(|_| r.random_range(-1.0f32..=1.0) * amp)
        .collect();
    let pairs = |r: &mut StdRng| -> Vec<(String, f32)> {
        (0..r.random_range(0..4))
            .map(|_| (text(r, 24), r.random_range(-100f32..100.0)))
            .collect()
    };
    let scores = pairs(r);
    let labels = pairs(r);
    let opt = |r: &mut StdRng, lo: f32, hi: f32| r.random_bool(0.5).then(|| r.random_range(lo..hi));
    StoredWindow {
        sensor,
        window: Window {
            start_ns: r.random(),
            fs_hz,
            samples,
            index: r.random(),
        },
        quality: r.random(),
        hr_bpm: opt(r, 20.0, 250.0),
        rmssd_ms: opt(r, 0.0, 500.0),
        sdnn_ms: opt(r, 0.0, 500.0),
        scores,
        model: r.random_bool(0.5).then(|| text(r, 40)),
        labels,
    }
}

const CASES: u64 = 128;

#[test]
fn encode_decode_round_trips_within_half_a_step() {
    let mut r = rng(1);
    for _ in 0..CASES {
        let rec = arb_record(&mut r);
        let bytes = encode_record(&rec).unwrap();
        let got = decode_record(&rec.sensor, rec.window.start_ns, &bytes).unwrap();
        assert_close(&got, &rec);
        let max = rec.window.samples.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = affectgate::model::quant::scale(&rec.window.samples);
        if max > 0.0 {
            assert!(f64::from(scale) <= f64::from(max) / 32767.0 * (1.0 + 1e-6));
        }
    }
}

#[test]
fn truncations_and_bit_flips_are_corrupt() {
    let mut r = rng(2);
    for _ in 0..CASES {
        let rec = arb_record(&mut r);
        let bytes = encode_record(&rec).unwrap();
        let (sensor, start) = (rec.sensor.as_str(), rec.window.start_ns);
        let n = r.random_range(0..bytes.len());
        let truncated = decode_record(sensor, start, &bytes[..n]);
        assert!(
            matches!(truncated, Err(StoreError::Corrupt { .. })),
            "cut at {n}"
        );
        let mut flipped = bytes.clone();
        let b = r.random_range(0..bytes.len() * 8);
        flipped[b / 8] ^= 1 << (b % 8);
        let flip_caught = matches!(
            decode_record(sensor, start, &flipped),
            Err(StoreError::Corrupt { .. })
        );
        assert!(flip_caught, "bit {b} flipped");
        // Truncations with a valid checksum reach the parser, which must still refuse them.
        if n < bytes.len() - 4 {
            let refixed = with_crc(sensor, start, &bytes[..n]);
            assert!(
                decode_record(sensor, start, &refixed).is_err(),
                "body cut at {n}"
            );
        }
    }
}

#[test]
fn random_bytes_are_errors_not_panics() {
    let mut r = rng(3);
    for _ in 0..CASES {
        let bytes: Vec<u8> = (0..r.random_range(0..400)).map(|_| r.random()).collect();
        assert!(decode_record("s", 0, &bytes).is_err() || bytes.len() > 4);
        // With format byte 1 and a valid checksum the parser sees arbitrary structure.
        let body = [&[1u8][..], &bytes].concat();
        let _ = decode_record("s", 0, &with_crc("s", 0, &body));
    }
}

#[test]
fn mutated_valid_encodings_are_errors_not_panics() {
    let mut r = rng(4);
    for _ in 0..CASES {
        let rec = arb_record(&mut r);
        let bytes = encode_record(&rec).unwrap();
        let mut body = bytes[..bytes.len() - 4].to_vec();
        for _ in 0..r.random_range(1..4) {
            let i = r.random_range(0..body.len().min(64)); // the header and name/length fields
            body[i] = r.random();
        }
        let _ = decode_record(
            &rec.sensor,
            rec.window.start_ns,
            &with_crc(&rec.sensor, rec.window.start_ns, &body),
        );
    }
}

#[test]
fn outbox_is_a_bounded_persistent_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let keep = Retention::KEEP_ALL;
    {
        let s = Store::open(dir.path(), keep).unwrap();
        let o = s.outbox(3).unwrap();
        for i in 0..5u8 {
            o.push(&format!("t/{i}"), &[i; 4]).unwrap();
        }
        // Cap 3: the two oldest were dropped and counted.
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped(), 2);
        let all = o.after(0, 10).unwrap();
        let topics: Vec<_> = all.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["t/2", "t/3", "t/4"]);
        assert_eq!(all[0].payload, vec![2u8; 4]);
        // `after` pages by sequence number; `remove` acknowledges one.
        let page = o.after(all[0].seq, 1).unwrap();
        assert_eq!(page[0].topic, "t/3");
        o.remove(all[1].seq).unwrap();
        s.flush().unwrap();
    }
    // Survives a restart, order kept, new entries continue the sequence.
    let s = Store::open(dir.path(), keep).unwrap();
    let o = s.outbox(3).unwrap();
    let left: Vec<_> = o.after(0, 10).unwrap();
    assert_eq!(
        left.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        ["t/2", "t/4"]
    );
    let seq = o.push("t/5", b"x").unwrap();
    assert!(seq > left[1].seq);
}

/// The store holds health data: its folder is private to the gateway's user (it was 0755,
/// its files 0644), also when the folder already existed with open permissions.
#[cfg(unix)]
#[test]
fn store_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [&fresh, &existing] {
        drop(Store::open(p, unlimited()).unwrap());
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", p.display());
    }
}

/// `n` windows of two sensors, some labelled after they were stored (so the files hold copies
/// without and with labels), as a gateway run leaves them. Returns what was written last.
fn fill(path: &Path, n: i64) -> Vec<StoredWindow> {
    let store = Store::open(path, unlimited()).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let sensor = if i % 3 == 0 { "chest-b" } else { "chest_a" };
        let mut r = rec(sensor, i * 10 * S, WINDOW_LEN);
        r.hr_bpm = Some(60.0 + i as f32);
        r.scores = vec![("arousal".into(), (i as f32 / n as f32).min(1.0))];
        r.model = Some("affectgate-arousal-v2@51da56af".into());
        store.put(&r).unwrap();
        if i % 7 == 0 {
            r.labels = vec![("arousal".into(), 1.0)];
            assert!(store
                .set_labels(sensor, r.window.start_ns, &r.labels)
                .unwrap());
        }
        out.push(r);
    }
    store.flush().unwrap();
    out
}

/// Every window of `store`, by (sensor, start).
fn all_windows(store: &Store) -> std::collections::BTreeMap<(String, i64), StoredWindow> {
    let mut out = std::collections::BTreeMap::new();
    for sensor in store.sensors().unwrap() {
        for w in store.range(&sensor, i64::MIN, i64::MAX) {
            let w = w.unwrap();
            out.insert((w.sensor.clone(), w.window.start_ns), w);
        }
    }
    out
}

/// Files of a folder, recursively, with their bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), fs::read(&p).unwrap());
        }
    }
    out
}

fn no_progress() -> impl FnMut(u64, u64) -> bool {
    |_, _| true
}

/// Values carry their key, so the raw files of a store are enough to get every window back,
/// labels included (the copy with the labels wins over the older copy without).
#[test]
fn salvage_recovers_every_window_from_the_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("old"), dir.path().join("new"));
    let written = fill(&src, 120);
    let before = snapshot(&src);
    let into = Store::open(&dst, unlimited()).unwrap();
    let report = salvage(&src, &into, &SalvageOptions::default(), &mut no_progress()).unwrap();
    assert_eq!(report.windows_found, 120, "{report:?}");
    assert_eq!(report.recovered, 120, "{report:?}");
    assert_eq!(report.found_by_engine, 0);
    assert!(report.copies >= 120, "{report:?}");
    let got = all_windows(&into);
    assert_eq!(got.len(), 120);
    for w in &written {
        let g = &got[&(w.sensor.clone(), w.window.start_ns)];
        assert_close(g, w);
        assert_eq!(
            g.labels, w.labels,
            "labels of {}/{}",
            w.sensor, w.window.start_ns
        );
    }
    // The damaged folder is only read.
    assert_eq!(snapshot(&src), before);
    // A second salvage into the same store finds everything already there.
    let again = salvage(&src, &into, &SalvageOptions::default(), &mut no_progress()).unwrap();
    assert_eq!((again.recovered, again.already_present), (0, 120));
}

/// sled's recovery stops at the first bad record of its log and drops everything after it,
/// so a store could open holding fewer windows than were made durable (61 of 118 after ten
/// flipped bytes). The witness written at each flush catches that: the store is damaged.
#[test]
fn a_store_that_lost_durable_writes_is_damaged_not_silently_short() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 20);
    // Pretend 30 writes had been made durable: the witness is ahead of the database.
    let witness = |seq: u64, log_len: u64| {
        let mut w = [0u8; 24];
        w[..4].copy_from_slice(b"AGD2");
        w[4..12].copy_from_slice(&seq.to_le_bytes());
        w[12..20].copy_from_slice(&log_len.to_le_bytes());
        let crc = crc32(&[&w[..20]]);
        w[20..].copy_from_slice(&crc.to_le_bytes());
        w
    };
    let log_len = fs::metadata(dir.path().join("db")).unwrap().len();
    let mut w = witness(30, log_len);
    fs::write(dir.path().join("affectgate.durable"), w).unwrap();
    let err = Store::open(dir.path(), unlimited()).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("23 window writes but 30"), "{msg}");
    assert!(msg.contains("store salvage"), "{msg}");
    // A log shorter than it was when last made durable is refused before sled touches it.
    let now_len = fs::metadata(dir.path().join("db")).unwrap().len();
    fs::write(
        dir.path().join("affectgate.durable"),
        witness(23, now_len + 1),
    )
    .unwrap();
    let before = fs::read(dir.path().join("db")).unwrap();
    let err = Store::open(dir.path(), unlimited())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut short"), "{err}");
    assert_eq!(fs::read(dir.path().join("db")).unwrap(), before);
    // A torn witness (bad CRC) is no witness: the store opens.
    w[5] ^= 1;
    fs::write(dir.path().join("affectgate.durable"), w).unwrap();
    assert_eq!(
        all_windows(&Store::open(dir.path(), unlimited()).unwrap()).len(),
        20
    );
}

/// A store a running gateway found damaged is marked, and the next open says so.
#[test]
fn a_store_marked_damaged_is_damaged_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    let s = Store::open(dir.path(), unlimited()).unwrap();
    s.mark_damaged("sled: corrupted page 12").unwrap();
    drop(s);
    let err = Store::open(dir.path(), unlimited()).unwrap_err();
    assert!(err.to_string().contains("corrupted page 12"), "{err}");
}

/// Damage of every kind seen in the field, applied to a store of 118 windows: the store either
/// opens holding every window (damage where nothing lived), or it is moved aside untouched and
/// salvage puts back every window it can read — never a store that opens short, never a store
/// that stays unopenable, and never a wrong window.
#[test]
fn damaged_stores_are_moved_aside_and_salvaged_never_silently_short() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let written = fill(&pristine, 118);
    let originals: std::collections::BTreeMap<_, _> = written
        .iter()
        .map(|w| ((w.sensor.clone(), w.window.start_ns), w.clone()))
        .collect();
    let db_len = fs::metadata(pristine.join("db")).unwrap().len() as usize;
    type Damage = Box<dyn Fn(&Path)>;
    let flip = |seed: u64, n: usize, from: f64, to: f64| -> Damage {
        Box::new(move |p: &Path| {
            let f = p.join("db");
            let mut b = fs::read(&f).unwrap();
            let mut r = StdRng::seed_from_u64(seed);
            let (lo, hi) = (
                (b.len() as f64 * from) as usize,
                (b.len() as f64 * to) as usize,
            );
            for _ in 0..n {
                let i = r.random_range(lo..hi.max(lo + 1));
                b[i] ^= 1 << r.random_range(0..8);
            }
            fs::write(&f, b).unwrap();
        })
    };
    let mut variants: Vec<(String, Damage)> = Vec::new();
    for seed in 0..5 {
        variants.push((
            format!("1 flipped bit, seed {seed}"),
            flip(seed, 1, 0.0, 1.0),
        ));
        variants.push((
            format!("10 flipped bits in the first quarter, seed {seed}"),
            flip(100 + seed, 10, 0.0, 0.25),
        ));
    }
    variants.push((
        "zeros over the first 4 KiB".into(),
        Box::new(|p: &Path| {
            let f = p.join("db");
            let mut b = fs::read(&f).unwrap();
            b[..4096].fill(0);
            fs::write(&f, b).unwrap();
        }),
    ));
    variants.push((
        "db cut to half".into(),
        Box::new(move |p: &Path| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(p.join("db"))
                .unwrap();
            f.set_len(db_len as u64 / 2).unwrap();
        }),
    ));
    variants.push((
        "conf replaced by garbage".into(),
        Box::new(|p: &Path| {
            fs::write(p.join("conf"), b"\xff\xfe garbage").unwrap();
        }),
    ));
    variants.push((
        "snapshot files removed".into(),
        Box::new(|p: &Path| {
            for e in fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                if e.file_name().to_string_lossy().starts_with("snap.") {
                    fs::remove_file(e.path()).unwrap();
                }
            }
        }),
    ));
    let mut table = Vec::new();
    let mut after_clean: std::collections::BTreeMap<usize, u64> = Default::default();
    // Each damage after a clean close, and after an unclean stop (crash, power cut: no clean
    // marker), where the store keeps sled's log as it was before sled's recovery rewrote it.
    for (unclean, (i, (what, damage))) in [false, true]
        .into_iter()
        .flat_map(|u| variants.iter().enumerate().map(move |v| (u, v)))
    {
        let what = format!(
            "{what}{}",
            if unclean {
                ", after an unclean stop"
            } else {
                ""
            }
        );
        let what = what.as_str();
        let path = dir.path().join(format!("v{i}-{unclean}"));
        copy_dir(&pristine, &path);
        if unclean {
            fs::remove_file(path.join("affectgate.clean")).expect("a closed store is marked clean");
        }
        damage(&path);
        let damaged = snapshot(&path);
        let (store, quarantined) = open_or_quarantine(&path, unlimited()).unwrap_or_else(|e| {
            panic!("{what}: the store neither opened nor was moved aside: {e}")
        });
        let outcome = match quarantined {
            None => {
                let got = all_windows(&store);
                assert_eq!(
                    got.len(),
                    118,
                    "{what}: opened holding {} of 118 windows",
                    got.len()
                );
                for (k, g) in &got {
                    assert_close(g, &originals[k]);
                }
                assert!(
                    !path.join("db.before-open").exists(),
                    "{what}: the copy outlived a verified open"
                );
                "opened, all 118 windows".to_string()
            }
            Some(q) => {
                assert_eq!(
                    all_windows(&store).len(),
                    0,
                    "{what}: the new store is empty"
                );
                // Kept as sled's failed open left it: its recovery rewrites part of the log
                // before it gives up, so the copy is not byte for byte the damaged store.
                let kept = snapshot(&q.moved_to);
                assert!(
                    kept.keys().any(|p| p.ends_with("db")),
                    "{what}: the log is kept"
                );
                let rewritten = damaged
                    .iter()
                    .filter(|(p, b)| {
                        kept.get(&q.moved_to.join(p.strip_prefix(&path).unwrap())) != Some(*b)
                    })
                    .filter(|(p, _)| {
                        !p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("affectgate.")
                    })
                    .count();
                let r = salvage(
                    &q.moved_to,
                    &store,
                    &SalvageOptions::default(),
                    &mut no_progress(),
                )
                .unwrap();
                let got = all_windows(&store);
                let mut unlabelled = 0;
                for (k, g) in &got {
                    unlabelled += usize::from(assert_close_or_unlabelled(g, &originals[k]));
                }
                assert_eq!(got.len() as u64, r.recovered);
                let copy = q.moved_to.join("db.before-open");
                if unclean && what.contains("flipped") {
                    // The log as it was before sled opened it, byte for byte.
                    assert_eq!(
                        fs::read(&copy).ok().as_ref(),
                        damaged.get(&path.join("db")),
                        "{what}: pre-open copy"
                    );
                    assert!(
                        r.recovered >= after_clean[&i],
                        "{what}: the copy can only add windows"
                    );
                } else if !unclean {
                    assert!(!copy.exists(), "{what}: a clean close needs no copy");
                    after_clean.insert(i, r.recovered);
                }
                format!(
                    "moved aside ({}; {rewritten} file(s) rewritten by the failed open), {} of 118 \
                     salvaged ({unlabelled} as before their label)",
                    q.reason, r.recovered
                )
            }
        };
        table.push(format!("{what}: {outcome}"));
    }
    eprintln!("{}", table.join("\n"));
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            fs::copy(e.path(), t).unwrap();
        }
    }
}

/// `affectgate store salvage DAMAGED --store NEW`: every window back, the damaged folder
/// untouched, a one-line report; and a clear refusal when the two are the same folder.
#[test]
fn cli_store_salvage_recovers_into_another_store() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    fill(&old, 40);
    fs::write(old.join("conf"), b"garbage").unwrap();
    let before = snapshot(&old);
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_affectgate"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "store".as_ref(),
        "salvage".as_ref(),
        old.as_os_str(),
        "--store".as_ref(),
        new.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("40 windows found") && stdout.contains("40 recovered"),
        "{stdout}"
    );
    assert_eq!(snapshot(&old), before);
    assert_eq!(
        all_windows(&Store::open(&new, unlimited()).unwrap()).len(),
        40
    );
    let out = run(&[
        "store".as_ref(),
        "salvage".as_ref(),
        old.as_os_str(),
        "--store".as_ref(),
        old.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("both the damaged store and the target"),
        "{stderr}"
    );
}
