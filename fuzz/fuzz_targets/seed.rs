//! Not a fuzz target: the seed generator. It is built as one so that `cargo fuzz build`
//! compiles it with the targets (one build of the dependencies, not two). Running it writes
//! the seed corpora to `fuzz/corpus/<target>/seed-*` and exits before any fuzzing:
//!
//!     cargo fuzz run -O -a -s none seed
//!
//! Seeds come from the real recordings in `../shared/data` (or `$AFFECTGATE_DATA`): the
//! first data records of EEGMAT EDF files, the MIT-BIH 100 header with the start of its
//! `.dat` and `.atr`, heads of the Polar H10 CSV; PMD frames and 0x2A37 measurements built
//! from the Polar samples and its own HR/RR; stored windows encoded by the library from
//! EEGMAT samples; and the repo's model cards, `plugin.toml` and the TOML configs in the docs.
#![no_main]
use std::fs;
use std::path::{Path, PathBuf};

use affectgate::dsp::Window;
use affectgate::source::file::edf;
use affectgate::store::{encode_record, StoredWindow};
use libfuzzer_sys::fuzz_target;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn data_dir() -> PathBuf {
    std::env::var_os("AFFECTGATE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST).join("../../shared/data"))
}

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        self.count += 1;
    }
}

fn ascii_field(b: &[u8]) -> usize {
    String::from_utf8_lossy(b).trim().parse().unwrap_or(0)
}

/// The EDF header plus the first `k` data records, with the record count set to `k`.
fn edf_head(file: &[u8], k: usize) -> Option<Vec<u8>> {
    let header_bytes = ascii_field(file.get(184..192)?);
    let ns = ascii_field(file.get(252..256)?);
    let spr_at = 256 + ns * 216;
    let samples: usize = (0..ns)
        .map(|i| ascii_field(&file[spr_at + 8 * i..spr_at + 8 * i + 8]))
        .sum();
    let end = header_bytes + k * 2 * samples;
    let mut out = file.get(..end)?.to_vec();
    out[236..244].copy_from_slice(format!("{k:<8}").as_bytes());
    Some(out)
}

fn seeds(out: &mut Out) {
    let data = data_dir();
    let eegmat = data.join("eegmat");
    let mitbih = data.join("mitbih");
    let polar = data.join("polar-h10/polar_h10_ecg.csv");

    // EDF: header + 1, 2 and 4 records of a few subjects; one file as-is but truncated.
    for name in ["Subject00_rest", "Subject01_task", "Subject07_rest"] {
        let Ok(file) = fs::read(eegmat.join(format!("{name}.edf"))) else {
            eprintln!("skipping {name}.edf: not found under {}", eegmat.display());
            continue;
        };
        for k in [1, 2, 4] {
            if let Some(b) = edf_head(&file, k) {
                out.put("edf", &format!("{name}-{k}rec.edf"), &b);
            }
        }
        out.put("edf", &format!("{name}-header.edf"), &file[..file.len().min(512)]);
    }

    // WFDB: `<header> NUL <.dat bytes>` (see fuzz_targets/wfdb.rs).
    if let (Ok(hea), Ok(dat), Ok(atr)) = (
        fs::read_to_string(mitbih.join("100.hea")),
        fs::read(mitbih.join("100.dat")),
        fs::read(mitbih.join("100.atr")),
    ) {
        for frames in [64usize, 512] {
            // Format 212, two signals: 3 bytes per frame. Header with the true sample count
            // (the .dat is short) and with the count that matches.
            let dat = &dat[..3 * frames];
            let fitted = hea.replacen("650000", &frames.to_string(), 1);
            for (tag, h) in [("full", &hea), ("fitted", &fitted)] {
                let mut b = h.as_bytes().to_vec();
                b.push(0);
                b.extend_from_slice(dat);
                out.put("wfdb", &format!("100-{tag}-{frames}f"), &b);
            }
        }
        let mut b = hea.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&atr[..atr.len().min(1024)]);
        out.put("wfdb", "100-atr", &b);
    } else {
        eprintln!("skipping WFDB seeds: no 100.hea/.dat/.atr under {}", mitbih.display());
    }

    // CSV heads, and the same rows as `time,ecg_mv` (seconds, mV).
    let mut polar_rows: Vec<(i64, i32, Option<u16>, Option<u16>)> = Vec::new();
    if let Ok(text) = fs::read_to_string(&polar) {
        let lines: Vec<&str> = text.lines().collect();
        for n in [20usize, 300] {
            let head = lines[..n.min(lines.len())].join("\n") + "\n";
            out.put("csv", &format!("polar-{n}"), head.as_bytes());
        }
        let head_crlf = lines[..40.min(lines.len())].join("\r\n") + "\r\n";
        out.put("csv", "polar-crlf", head_crlf.as_bytes());
        for line in &lines[1..] {
            let f: Vec<&str> = line.trim_end().split(',').collect();
            if f.len() < 4 {
                continue;
            }
            let (Ok(t), Ok(v)) = (f[0].parse::<i64>(), f[1].parse::<i32>()) else {
                continue;
            };
            polar_rows.push((t, v, f[2].parse().ok(), f[3].parse().ok()));
        }
        if let Some(&(t0, ..)) = polar_rows.first() {
            let mut s = String::from("# seconds, millivolts\ntime,ecg_mv\n");
            for &(t, v, ..) in polar_rows.iter().take(200) {
                s += &format!("{:.6},{:.3}\n", (t - t0) as f64 * 1e-9, f64::from(v) / 1000.0);
            }
            out.put("csv", "polar-time-mv", s.as_bytes());
        }
    } else {
        eprintln!("skipping CSV/PMD/HR seeds: {} not found", polar.display());
    }

    // PMD: ECG frame type 0 with 73 Polar samples each, as `<len u8><frame>` sequences
    // (see fuzz_targets/pmd_frame.rs); plus control-point, settings and feature replies.
    let frame = |rows: &[(i64, i32, Option<u16>, Option<u16>)]| {
        let mut f = vec![0u8];
        // Sensor time of the last sample (the H10's own epoch; the offset is arbitrary).
        let ts = (rows.last().unwrap().0 - 946_684_800_000_000_000) as u64;
        f.extend_from_slice(&ts.to_le_bytes());
        f.push(0);
        for r in rows {
            f.extend_from_slice(&r.1.to_le_bytes()[..3]);
        }
        f
    };
    let mut seq = Vec::new();
    for (i, chunk) in polar_rows.chunks(73).take(6).enumerate() {
        let f = frame(chunk);
        if i == 0 {
            let mut one = vec![f.len() as u8];
            one.extend_from_slice(&f);
            out.put("pmd_frame", "ecg-1frame", &one);
        }
        seq.push(f.len() as u8);
        seq.extend_from_slice(&f);
    }
    if !seq.is_empty() {
        out.put("pmd_frame", "ecg-6frames", &seq);
    }
    // Get-settings reply of an H10 (130 Hz, 14 bit), start reply, error reply, features.
    let settings_reply: &[u8] = &[0xF0, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x82, 0x00, 0x01, 0x01, 0x0E, 0x00];
    let replies: [&[u8]; 4] = [
        settings_reply,
        &[0xF0, 0x02, 0x00, 0x00, 0x00],
        &[0xF0, 0x02, 0x00, 0x06],
        &[0x0F, 0x05, 0x00],
    ];
    let mut control = Vec::new();
    for m in replies {
        control.push(m.len() as u8);
        control.extend_from_slice(m);
    }
    out.put("pmd_frame", "control", &control);
    let mut generic = vec![146u8];
    for r in polar_rows.iter().take(73) {
        generic.extend_from_slice(&(r.1 as i16).to_le_bytes());
    }
    out.put("pmd_frame", "gatt-i16le", &generic);

    // 0x2A37 from the Polar's own HR/RR: u8 HR with RR, u16 HR, energy, contact variants.
    let hr_rows: Vec<_> = polar_rows.iter().filter(|r| r.2.is_some()).take(8).collect();
    for (i, r) in hr_rows.iter().enumerate() {
        let hr = r.2.unwrap();
        let rr = r.3.map(|ms| ((f64::from(ms) * 1.024).round() as u16).to_le_bytes());
        let flags = [0x16u8, 0x17, 0x1E, 0x06][i % 4];
        let mut b = vec![flags];
        if flags & 0x01 != 0 {
            b.extend_from_slice(&hr.to_le_bytes());
        } else {
            b.push(hr as u8);
        }
        if flags & 0x08 != 0 {
            b.extend_from_slice(&12u16.to_le_bytes());
        }
        if flags & 0x10 != 0 {
            b.extend(rr.unwrap_or([0, 4]));
        }
        out.put("heart_rate", &format!("polar-{i}"), &b);
    }

    // Stored windows: EEGMAT samples encoded by the library, bare and with everything set.
    let start_ns = 1_700_000_000_000_000_000i64;
    if let Ok(rec) = edf::read(&eegmat.join("Subject00_rest.edf"), None) {
        let samples: Vec<f32> = rec.samples_uv.iter().copied().take(affectgate::dsp::WINDOW_LEN).collect();
        let window = Window { start_ns, fs_hz: affectgate::dsp::WINDOW_FS, samples, index: 7 };
        let bare = StoredWindow {
            sensor: "h10".into(),
            window,
            quality: 0,
            hr_bpm: None,
            rmssd_ms: None,
            sdnn_ms: None,
            scores: vec![],
            model: None,
            labels: vec![],
        };
        let full = StoredWindow {
            quality: 0x05,
            hr_bpm: Some(72.5),
            rmssd_ms: Some(41.0),
            sdnn_ms: Some(55.25),
            scores: vec![("arousal".into(), 0.62)],
            model: Some("affectgate-arousal-v2".into()),
            labels: vec![("arousal".into(), 0.75), ("valence".into(), 0.25)],
            ..bare.clone()
        };
        for (tag, w) in [("bare", &bare), ("full", &full)] {
            match encode_record(w) {
                Ok(b) => out.put("store_codec", tag, &b),
                Err(e) => eprintln!("cannot encode the {tag} stored-window seed: {e}"),
            }
        }
    } else {
        eprintln!("skipping stored-window seeds: no Subject00_rest.edf");
    }

    // Model cards and configs from the repository.
    let repo = Path::new(MANIFEST).join("..");
    if let Ok(dir) = fs::read_dir(repo.join("models")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".card.toml") {
                out.put("model_card", &name, &fs::read(e.path()).unwrap());
            }
        }
    }
    if let Ok(b) = fs::read(repo.join("plugin.toml")) {
        out.put("config_toml", "plugin.toml", &b);
    }
    // ```toml blocks of the docs that are whole configs (they have a [gateway] table).
    let mut docs = vec![repo.join("README.md")];
    if let Ok(dir) = fs::read_dir(repo.join("docs")) {
        docs.extend(dir.flatten().map(|e| e.path()));
    }
    for doc in docs {
        let Ok(text) = fs::read_to_string(&doc) else { continue };
        let stem = doc.file_stem().unwrap().to_string_lossy().into_owned();
        for (i, block) in text.split("```toml").skip(1).enumerate() {
            let body = block.split("```").next().unwrap_or("");
            if body.contains("[gateway]") || body.contains("[[sensors]]") {
                out.put("config_toml", &format!("{stem}-{i}.toml"), body.as_bytes());
            }
        }
    }

    // MQTT: byte 0 picks retain + topic (fuzz_targets/mqtt_input.rs), the rest is the payload.
    let labels: [&[u8]; 6] = [
        br#"{"arousal": 7, "valence": 3, "scale": "1-9", "from": "2026-11-30T23:50:00Z", "to": "2026-11-30T23:55:00Z"}"#,
        br#"{"arousal": 7, "scale": "1-9", "last_minutes": 5}"#,
        br#"{"arousal": 0.8}"#,
        br#"{"dominance": -2, "scale": "-5-5", "last_minutes": 30.5}"#,
        br#"{"valence": 0.1, "arousal": 1e0, "from": 1796083000, "to": "2026-12-01T00:00:30+01:00"}"#,
        br#"{"arousal": "high"}"#,
    ];
    for (i, p) in labels.iter().enumerate() {
        out.put("mqtt_input", &format!("label-{i}"), &[&[1u8][..], *p].concat());
    }
    out.put("mqtt_input", "label-retained", &[&[0x81u8][..], labels[2]].concat());
    let commands: [&[u8]; 4] = [b"{}", b" \n", b"", b"PRESS"];
    for (i, p) in commands.iter().enumerate() {
        out.put("mqtt_input", &format!("cmd-{i}"), &[&[2u8 + (i % 3) as u8][..], *p].concat());
    }
    out.put("mqtt_input", "own-topic", b"\x00affectgate/gw1/bench_1/label\x00{\"valence\": 2, \"scale\": \"0-4\"}");
}

/// Write the seeds and end the process before libFuzzer starts fuzzing.
fn seed_and_exit() {
    let root = std::env::var_os("AFFECTGATE_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST).join("corpus"));
    let mut out = Out { root: root.clone(), count: 0 };
    seeds(&mut out);
    eprintln!("wrote {} seeds under {}", out.count, root.display());
    std::process::exit(0);
}

fuzz_target!(init: seed_and_exit(), |_data: &[u8]| {});
