//! WFDB (PhysioNet / MIT) reader: `.hea` header + `.dat` signal file(s), and MIT
//! format annotation files (`.atr` and friends).
//!
//! Supported: single-segment records, signal formats 16 and 212, several signals
//! per file, several signal files per record, multi-frequency records ("samples
//! per frame" > 1, where a signal's rate is the frame rate × its spf), byte
//! offsets (`+offset`), comment lines anywhere, and any mix of LF/CR/CRLF line
//! endings (PhysioNet's own `100.hea` mixes them).
//!
//! Not supported (reported as errors, never guessed at): multi-segment records,
//! other sample formats (8, 80, 310, 311, FLAC, ...). Skew (`:skew`) is parsed but
//! not applied; it only shifts signals by a few samples relative to each other and
//! we only ever return one signal.
//!
//! Header checksums are verified for every signal stored in the same file as the
//! chosen one: a mismatch means the data is corrupt or belongs to another header,
//! and feeding such data to training silently would be worse than failing.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{
    civil_to_unix_ns, select_signal, unit_to_uv, AutoFallback, Format, ReadError, ReadStats,
    Recording, SignalInfo,
};

/// WFDB's default ADC gain (adu per physical unit) when the header gives 0 or none.
const DEFAULT_GAIN: f64 = 200.0;
/// WFDB's default frame rate when the record line gives none.
const DEFAULT_FS: f64 = 250.0;

/// One signal line of a header.
#[derive(Debug, Clone)]
struct SignalSpec {
    file_name: String,
    format: u32,
    samples_per_frame: u64,
    byte_offset: u64,
    gain: f64,
    baseline: i64,
    units: String,
    checksum: Option<i64>,
    description: String,
}

#[derive(Debug, Clone)]
struct Header {
    hea_path: PathBuf,
    frame_fs: f64,
    /// Frames per signal as declared; `None` when absent or 0 (derive from file size).
    n_frames: Option<u64>,
    start_unix_ns: Option<i64>,
    signals: Vec<SignalSpec>,
}

impl Header {
    fn dat_path(&self, spec: &SignalSpec) -> PathBuf {
        let dir = self.hea_path.parent().unwrap_or_else(|| Path::new(""));
        dir.join(&spec.file_name)
    }

    fn labels(&self) -> Vec<String> {
        self.signals.iter().map(|s| s.description.clone()).collect()
    }
}

/// Layout of the samples stored in one signal file.
struct FileGroup {
    dat_path: PathBuf,
    format: u32,
    byte_offset: u64,
    /// Indices into `Header::signals`, in storage order.
    members: Vec<usize>,
    /// Samples per frame of each member.
    spf: Vec<u64>,
    frame_len: u64,
}

/// Read one signal of a WFDB record (`path` is the `.hea` or the `.dat`).
pub fn read(path: &Path, signal: Option<&str>) -> Result<(Recording, ReadStats), ReadError> {
    let header = parse_header(&header_path(path)?)?;
    let chosen = select_signal(path, &header.labels(), signal, AutoFallback::First)?;
    let spec = &header.signals[chosen];
    let to_uv = unit_to_uv(&spec.units).ok_or_else(|| ReadError::UnknownUnit {
        path: header.hea_path.clone(),
        signal: spec.description.clone(),
        unit: spec.units.clone(),
    })?;

    let group = file_group(&header, chosen)?;
    let pos_in_group = group.members.iter().position(|&m| m == chosen).unwrap_or(0);
    let mut file = File::open(&group.dat_path).map_err(|e| ReadError::io(&group.dat_path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| ReadError::io(&group.dat_path, e))?
        .len();
    let n_frames = frames_in_file(&header, &group, file_len)?;
    if n_frames == 0 {
        return Err(ReadError::invalid(
            &group.dat_path,
            "record contains no samples",
        ));
    }
    let total = n_frames * group.frame_len; // checked in frames_in_file
    let n_out = usize::try_from(n_frames * group.spf[pos_in_group])
        .map_err(|_| ReadError::invalid(&group.dat_path, "sample count does not fit in memory"))?;

    file.seek(SeekFrom::Start(group.byte_offset))
        .map_err(|e| ReadError::io(&group.dat_path, e))?;
    let mut reader = BufReader::new(file);

    let invalid_sentinel: i32 = if group.format == 16 { -32768 } else { -2048 };
    // f64 arithmetic: the header's baseline is untrusted and may be any i64.
    let (gain, baseline) = (spec.gain, spec.baseline as f64);
    let mut samples: Vec<f32> = Vec::with_capacity(n_out);
    let mut stats = ReadStats::default();
    let mut last_valid: Option<f32> = None;
    let mut leading_invalid = 0usize;
    let mut sums = vec![0i64; group.members.len()];
    let mut member = 0usize;
    let mut left_in_member = group.spf[0];

    decode_samples(&mut reader, group.format, total, |d| {
        sums[member] = sums[member].wrapping_add(i64::from(d));
        if member == pos_in_group {
            if d == invalid_sentinel {
                stats.invalid_samples += 1;
                match last_valid {
                    Some(v) => samples.push(v),
                    None => {
                        samples.push(0.0);
                        leading_invalid += 1;
                    }
                }
            } else {
                let v = ((f64::from(d) - baseline) / gain * to_uv) as f32;
                if last_valid.is_none() && leading_invalid > 0 {
                    samples[..leading_invalid].fill(v);
                }
                last_valid = Some(v);
                samples.push(v);
            }
        }
        left_in_member -= 1;
        if left_in_member == 0 {
            member = (member + 1) % group.spf.len();
            left_in_member = group.spf[member];
        }
    })
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ReadError::Truncated {
            path: group.dat_path.clone(),
            expected: bytes_for(group.format, total)
                .map_or(u64::MAX, |b| b.saturating_add(group.byte_offset)),
            actual: file_len,
        },
        _ => ReadError::io(&group.dat_path, e),
    })?;

    if last_valid.is_none() {
        return Err(ReadError::invalid(
            &group.dat_path,
            format!(
                "signal {:?} holds only invalid samples ({} of {})",
                spec.description, stats.invalid_samples, n_out
            ),
        ));
    }
    // Checksums only describe the full declared length.
    if header.n_frames.is_some() {
        for (k, &m) in group.members.iter().enumerate() {
            let s = &header.signals[m];
            if let Some(expected) = s.checksum {
                let actual = i64::from(sums[k] as i16);
                if expected.rem_euclid(65536) != actual.rem_euclid(65536) {
                    return Err(ReadError::Checksum {
                        path: group.dat_path.clone(),
                        signal: s.description.clone(),
                        expected,
                        actual,
                    });
                }
            }
        }
    }

    let recording = Recording {
        path: path.to_path_buf(),
        signal_label: spec.description.clone(),
        fs_hz: header.frame_fs * spec.samples_per_frame as f64,
        samples_uv: samples,
        start_unix_ns: header.start_unix_ns,
        timestamps_ns: None,
        side: None,
    };
    Ok((recording, stats))
}

/// List the signals of a WFDB record (`path` is the `.hea` or the `.dat`).
pub fn list_signals(path: &Path) -> Result<Vec<SignalInfo>, ReadError> {
    let header = parse_header(&header_path(path)?)?;
    let mut out = Vec::with_capacity(header.signals.len());
    for (i, s) in header.signals.iter().enumerate() {
        let n_frames = match header.n_frames {
            Some(n) => n,
            None => {
                let group = file_group(&header, i)?;
                let len = std::fs::metadata(&group.dat_path)
                    .map_err(|e| ReadError::io(&group.dat_path, e))?
                    .len();
                frames_in_file(&header, &group, len)?
            }
        };
        out.push(SignalInfo {
            label: s.description.clone(),
            fs_hz: header.frame_fs * s.samples_per_frame as f64,
            unit: s.units.clone(),
            n_samples: n_frames.saturating_mul(s.samples_per_frame),
        });
    }
    Ok(out)
}

/// Given a `.hea` return it; given a `.dat` (or other signal file) find the `.hea`
/// with the same stem beside it.
fn header_path(path: &Path) -> Result<PathBuf, ReadError> {
    let is_hea = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("hea"));
    if is_hea {
        return Ok(path.to_path_buf());
    }
    for ext in ["hea", "HEA"] {
        let candidate = path.with_extension(ext);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ReadError::invalid(
        path,
        format!(
            "WFDB signal file without its header: expected {} beside it (a .dat cannot be \
             decoded without the .hea that describes it)",
            path.with_extension("hea").display()
        ),
    ))
}

/// The signals stored in the same file as `chosen`, with their frame layout.
fn file_group(header: &Header, chosen: usize) -> Result<FileGroup, ReadError> {
    let spec = &header.signals[chosen];
    let hea = &header.hea_path;
    if spec.file_name == "-" {
        return Err(ReadError::unsupported(
            hea,
            "signals read from standard input (\"-\")",
        ));
    }
    // The signal file must sit beside its header: a name with a path in it (`../x`,
    // `/etc/…`) would let a downloaded record read any file the gateway can.
    if spec.file_name.contains(['/', '\\']) || spec.file_name == ".." || spec.file_name == "." {
        return Err(ReadError::header(
            hea,
            Format::Wfdb,
            format!(
                "signal file {:?} is not a plain file name; WFDB signal files must sit in the header's folder",
                spec.file_name
            ),
        ));
    }
    if spec.format != 16 && spec.format != 212 {
        return Err(ReadError::unsupported(
            hea,
            format!(
                "signal {:?} uses WFDB format {}; only formats 16 and 212 are supported \
                 (convert the record, e.g. with `xform -F 16`)",
                spec.description, spec.format
            ),
        ));
    }
    let members: Vec<usize> = (0..header.signals.len())
        .filter(|&i| header.signals[i].file_name == spec.file_name)
        .collect();
    let mut spf = Vec::with_capacity(members.len());
    let mut frame_len: u64 = 0;
    for &m in &members {
        let s = &header.signals[m];
        if s.format != spec.format || s.byte_offset != spec.byte_offset {
            return Err(ReadError::header(
                hea,
                Format::Wfdb,
                format!(
                    "signals in {} disagree on format or byte offset ({}+{} vs {}+{})",
                    spec.file_name, s.format, s.byte_offset, spec.format, spec.byte_offset
                ),
            ));
        }
        spf.push(s.samples_per_frame);
        frame_len = frame_len
            .checked_add(s.samples_per_frame)
            .ok_or_else(|| ReadError::header(hea, Format::Wfdb, "samples per frame overflow"))?;
    }
    Ok(FileGroup {
        dat_path: header.dat_path(spec),
        format: spec.format,
        byte_offset: spec.byte_offset,
        members,
        spf,
        frame_len,
    })
}

/// Bytes needed to store `samples` samples in `format` (212 packs 2 samples in 3
/// bytes; a final odd sample takes 2 bytes).
fn bytes_for(format: u32, samples: u64) -> Option<u64> {
    match format {
        16 => samples.checked_mul(2),
        _ => (samples / 2).checked_mul(3)?.checked_add((samples % 2) * 2),
    }
}

/// Number of frames to read from a signal file: the declared count (checked
/// against the file length) or, if undeclared, as many whole frames as the file
/// holds.
fn frames_in_file(header: &Header, group: &FileGroup, file_len: u64) -> Result<u64, ReadError> {
    let truncated = |expected: u64| ReadError::Truncated {
        path: group.dat_path.clone(),
        expected,
        actual: file_len,
    };
    if file_len < group.byte_offset {
        return Err(truncated(group.byte_offset));
    }
    let available = file_len - group.byte_offset;
    match header.n_frames {
        Some(n) => {
            let needed = n
                .checked_mul(group.frame_len)
                .and_then(|t| bytes_for(group.format, t))
                .and_then(|b| b.checked_add(group.byte_offset))
                .ok_or_else(|| {
                    ReadError::header(
                        &header.hea_path,
                        Format::Wfdb,
                        format!("{n} samples per signal is absurd"),
                    )
                })?;
            if needed > file_len {
                return Err(truncated(needed));
            }
            Ok(n)
        }
        None => {
            let samples = match group.format {
                16 => available / 2,
                _ => available / 3 * 2 + u64::from(available % 3 == 2),
            };
            Ok(samples / group.frame_len)
        }
    }
}

/// Stream `total` samples of `format` from `reader`, calling `sink` with each
/// digital value (sign-extended) in storage order.
fn decode_samples(
    reader: &mut impl Read,
    format: u32,
    total: u64,
    mut sink: impl FnMut(i32),
) -> std::io::Result<()> {
    const CHUNK_SAMPLES: u64 = 1 << 15; // even, so 212 pairs never straddle chunks
    let mut buf = vec![0u8; (CHUNK_SAMPLES as usize / 2) * 4];
    let mut remaining = total;
    while remaining > 0 {
        let n = remaining.min(CHUNK_SAMPLES);
        let nbytes = bytes_for(format, n).unwrap_or(0) as usize; // n ≤ CHUNK_SAMPLES
        let chunk = &mut buf[..nbytes];
        reader.read_exact(chunk)?;
        if format == 16 {
            for b in chunk.chunks_exact(2) {
                sink(i32::from(i16::from_le_bytes([b[0], b[1]])));
            }
        } else {
            let mut triples = chunk.chunks_exact(3);
            for b in &mut triples {
                let (b0, b1, b2) = (i32::from(b[0]), i32::from(b[1]), i32::from(b[2]));
                sink(sign_extend_12(b0 | ((b1 & 0x0F) << 8)));
                sink(sign_extend_12(b2 | ((b1 & 0xF0) << 4)));
            }
            if let [b0, b1] = triples.remainder() {
                sink(sign_extend_12(
                    i32::from(*b0) | ((i32::from(*b1) & 0x0F) << 8),
                ));
            }
        }
        remaining -= n;
    }
    Ok(())
}

fn sign_extend_12(v: i32) -> i32 {
    (v << 20) >> 20
}

// ---------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------

fn parse_header(hea_path: &Path) -> Result<Header, ReadError> {
    let bytes = std::fs::read(hea_path).map_err(|e| ReadError::io(hea_path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let bad = |detail: String| ReadError::header(hea_path, Format::Wfdb, detail);

    // Lines may end in LF, CR or CRLF (even mixed); comments start with '#'.
    let mut lines = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));

    let record_line = lines
        .next()
        .ok_or_else(|| bad("no record line (the file is empty or only comments)".into()))?;
    let tokens: Vec<&str> = record_line.split_whitespace().collect();
    let name = tokens[0];
    if name.contains('/') {
        return Err(ReadError::unsupported(
            hea_path,
            format!("multi-segment record {name:?}; read its segments' headers instead"),
        ));
    }
    let n_sig: u64 = tokens
        .get(1)
        .ok_or_else(|| bad(format!("record line {record_line:?} has no signal count")))?
        .parse()
        .map_err(|_| bad(format!("signal count {:?} is not an integer", tokens[1])))?;
    if n_sig == 0 {
        return Err(bad("record declares 0 signals".into()));
    }
    let frame_fs = match tokens.get(2) {
        None => DEFAULT_FS,
        Some(t) => {
            // fs[/counterfreq[(basecounter)]]
            let fs_text = t.split('/').next().unwrap_or(t);
            fs_text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| bad(format!("sampling frequency {t:?} is not a positive number")))?
        }
    };
    let n_frames = match tokens.get(3) {
        None => None,
        Some(t) => {
            let n: u64 = t
                .parse()
                .map_err(|_| bad(format!("number of samples {t:?} is not an integer")))?;
            (n > 0).then_some(n)
        }
    };
    let start_unix_ns = match (tokens.get(4), tokens.get(5)) {
        (Some(time), Some(date)) => parse_base_datetime(time, date),
        _ => None,
    };

    let mut signals = Vec::new();
    for i in 0..n_sig {
        let line = lines.next().ok_or_else(|| {
            bad(format!(
                "record declares {n_sig} signals but only {i} signal lines follow"
            ))
        })?;
        signals.push(parse_signal_line(line, i).map_err(bad)?);
    }

    Ok(Header {
        hea_path: hea_path.to_path_buf(),
        frame_fs,
        n_frames,
        start_unix_ns,
        signals,
    })
}

/// `file format[xspf][:skew][+offset] adcgain[(baseline)][/units] adcres adczero
/// initval checksum blocksize description` — everything after `format` optional.
fn parse_signal_line(line: &str, index: u64) -> Result<SignalSpec, String> {
    let (tokens, rest) = split_tokens(line, 8);
    let ctx = |what: &str, v: &str| format!("signal {index}: {what} {v:?} is invalid");
    let file_name = tokens[0].to_string();
    let fmt_field = tokens
        .get(1)
        .ok_or_else(|| format!("signal {index}: line {line:?} has no format field"))?;
    let (format, samples_per_frame, byte_offset) =
        parse_format_field(fmt_field).ok_or_else(|| ctx("format field", fmt_field))?;

    let (mut gain, baseline, units) = match tokens.get(2) {
        Some(g) => parse_gain_field(g).ok_or_else(|| ctx("ADC gain field", g))?,
        None => (0.0, None, None),
    };
    if gain == 0.0 {
        gain = DEFAULT_GAIN;
    }
    let adc_zero: i64 = match tokens.get(4) {
        Some(z) => z.parse().map_err(|_| ctx("ADC zero", z))?,
        None => 0,
    };
    let checksum: Option<i64> = match tokens.get(6) {
        Some(c) => Some(c.parse().map_err(|_| ctx("checksum", c))?),
        None => None,
    };
    let description = if rest.is_empty() {
        format!("signal {index}")
    } else {
        rest.to_string()
    };
    Ok(SignalSpec {
        file_name,
        format,
        samples_per_frame,
        byte_offset,
        gain,
        baseline: baseline.unwrap_or(adc_zero),
        units: units.unwrap_or_else(|| "mV".to_string()),
        checksum,
        description,
    })
}

/// First `n` whitespace-separated tokens and the (trimmed) rest of the line.
fn split_tokens(line: &str, n: usize) -> (Vec<&str>, &str) {
    let mut tokens = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    while tokens.len() < n && !rest.is_empty() {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        tokens.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (tokens, rest.trim_end())
}

/// `format[xspf][:skew][+offset]` → (format, spf, byte offset).
fn parse_format_field(field: &str) -> Option<(u32, u64, u64)> {
    let digits_end = field
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(field.len());
    let format: u32 = field[..digits_end].parse().ok()?;
    let mut spf: u64 = 1;
    let mut offset: u64 = 0;
    let mut rest = &field[digits_end..];
    while let Some(tag) = rest.chars().next() {
        let body = &rest[tag.len_utf8()..];
        let end = body
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(body.len());
        let value: u64 = body[..end].parse().ok()?;
        match tag {
            'x' => spf = value,
            ':' => {} // skew: not applied (see module docs)
            '+' => offset = value,
            _ => return None,
        }
        rest = &body[end..];
    }
    (spf > 0).then_some((format, spf, offset))
}

/// `gain[(baseline)][/units]` → (gain, baseline, units).
fn parse_gain_field(field: &str) -> Option<(f64, Option<i64>, Option<String>)> {
    let (head, units) = match field.split_once('/') {
        Some((h, u)) if !u.is_empty() => (h, Some(u.to_string())),
        Some((h, _)) => (h, None),
        None => (field, None),
    };
    let (gain_text, baseline) = match head.split_once('(') {
        Some((g, b)) => (g, Some(b.strip_suffix(')')?.parse::<i64>().ok()?)),
        None => (head, None),
    };
    let gain = gain_text.parse::<f64>().ok().filter(|g| g.is_finite())?;
    Some((gain, baseline, units))
}

/// WFDB base time `hh:mm:ss[.fff]` (or `mm:ss`) and base date `dd/mm/yyyy`.
fn parse_base_datetime(time: &str, date: &str) -> Option<i64> {
    let parts: Vec<&str> = time.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m, s] => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?, *s),
        [m, s] => (0, m.parse::<u32>().ok()?, *s),
        _ => return None,
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: u32 = whole.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32)
    };
    let d: Vec<&str> = date.split('/').collect();
    let [dd, mm, yyyy] = d.as_slice() else {
        return None;
    };
    civil_to_unix_ns(
        yyyy.parse().ok()?,
        mm.parse().ok()?,
        dd.parse().ok()?,
        h,
        m,
        sec,
        nanos,
    )
}

// ---------------------------------------------------------------------------
// Annotations (MIT format)
// ---------------------------------------------------------------------------

/// One annotation from an MIT-format annotation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Sample number (in frames of the record) the annotation refers to.
    pub sample: u64,
    /// WFDB annotation code (`ecgcodes.h`), e.g. 1 = NORMAL, 5 = PVC.
    pub code: u8,
    /// Standard one-character mnemonic for `code` (`' '` if it has none).
    pub symbol: char,
    pub subtype: i8,
    /// Signal number the annotation is attached to (sticky, as in WFDB).
    pub chan: u8,
    /// Annotator number field (sticky, as in WFDB).
    pub num: i8,
    /// Auxiliary text, e.g. `"(N"` for a rhythm change.
    pub aux: Option<String>,
}

impl Annotation {
    pub fn is_beat(&self) -> bool {
        is_beat(self.code)
    }
}

/// Mnemonic of each code 0–49 as WFDB prints it (`annstr`); codes without a
/// one-character mnemonic (0, 15, 17, 42–49) map to `' '`.
const SYMBOLS: [char; 50] = [
    ' ', 'N', 'L', 'R', 'a', 'V', 'F', 'J', 'A', 'S', // 0-9
    'E', 'j', '/', 'Q', '~', ' ', '|', ' ', 's', 'T', // 10-19
    '*', 'D', '"', '=', 'p', 'B', '^', 't', '+', 'u', // 20-29
    '?', '!', '[', ']', 'e', 'n', '@', 'x', 'f', '(', // 30-39
    ')', 'r', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', // 40-49
];

/// Standard WFDB mnemonic for an annotation code.
pub fn symbol(code: u8) -> char {
    SYMBOLS.get(usize::from(code)).copied().unwrap_or(' ')
}

/// True if `code` marks a QRS complex (WFDB's `isqrs` table): N L R a V F J A S E
/// j / Q, B (25), ? (30), ! (31), e (34), n (35), f (38), r (41).
pub fn is_beat(code: u8) -> bool {
    matches!(code, 1..=13 | 25 | 30 | 31 | 34 | 35 | 38 | 41)
}

const SKIP: u16 = 59;
const NUM: u16 = 60;
const SUB: u16 = 61;
const CHN: u16 = 62;
const AUX: u16 = 63;

/// Read an MIT-format annotation file (e.g. `100.atr`).
///
/// Each annotation is a 16-bit little-endian word: the top 6 bits are the code,
/// the low 10 bits the time since the previous annotation. Pseudo-codes modify
/// it: SKIP (59, followed by a 32-bit interval stored high word first) for longer
/// gaps, and NUM/SUB/CHN/AUX (60–63) which apply to the annotation before them.
/// A zero word ends the file; a file that ends without it is reported as
/// truncated.
pub fn read_wfdb_annotations(path: &Path) -> Result<Vec<Annotation>, ReadError> {
    let bytes = std::fs::read(path).map_err(|e| ReadError::io(path, e))?;
    let truncated = |at: usize| {
        ReadError::invalid(
            path,
            format!(
                "annotation file ends at byte {at} of {} without its end-of-file marker \
                 (the file is truncated or not an MIT annotation file)",
                bytes.len()
            ),
        )
    };
    let word_at = |i: usize| -> Option<u16> {
        Some(u16::from_le_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]))
    };

    let mut out: Vec<Annotation> = Vec::new();
    let mut time: i64 = 0;
    let (mut chan, mut num) = (0u8, 0i8);
    let mut i = 0usize;
    loop {
        let word = word_at(i).ok_or_else(|| truncated(i))?;
        i += 2;
        if word == 0 {
            break;
        }
        let (code, data) = (word >> 10, word & 0x3FF);
        match code {
            SKIP => {
                let hi = word_at(i).ok_or_else(|| truncated(i))?;
                let lo = word_at(i + 2).ok_or_else(|| truncated(i + 2))?;
                i += 4;
                let interval = ((u32::from(hi) << 16) | u32::from(lo)) as i32;
                time = time
                    .checked_add(i64::from(interval))
                    .ok_or_else(|| ReadError::invalid(path, "annotation time overflows"))?;
            }
            NUM => {
                num = data as u8 as i8;
                if let Some(last) = out.last_mut() {
                    last.num = num;
                }
            }
            SUB => {
                if let Some(last) = out.last_mut() {
                    last.subtype = data as u8 as i8;
                }
            }
            CHN => {
                chan = data as u8;
                if let Some(last) = out.last_mut() {
                    last.chan = chan;
                }
            }
            AUX => {
                let len = usize::from(data & 0xFF);
                let padded = (len + 1) & !1;
                let text = bytes
                    .get(i..i + len)
                    .ok_or_else(|| truncated(bytes.len()))?;
                if bytes.len() < i + padded {
                    return Err(truncated(bytes.len()));
                }
                i += padded;
                let text = String::from_utf8_lossy(text)
                    .trim_end_matches('\0')
                    .to_string();
                if let Some(last) = out.last_mut() {
                    last.aux = Some(text);
                }
            }
            _ => {
                time = time
                    .checked_add(i64::from(data))
                    .ok_or_else(|| ReadError::invalid(path, "annotation time overflows"))?;
                let sample = u64::try_from(time).map_err(|_| {
                    ReadError::invalid(
                        path,
                        format!("annotation {} has negative time {time}", out.len()),
                    )
                })?;
                let code = code as u8; // < 59 here
                out.push(Annotation {
                    sample,
                    code,
                    symbol: symbol(code),
                    subtype: 0,
                    chan,
                    num,
                    aux: None,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fields() {
        assert_eq!(parse_format_field("212"), Some((212, 1, 0)));
        assert_eq!(parse_format_field("16x2"), Some((16, 2, 0)));
        assert_eq!(parse_format_field("16x4:2+512"), Some((16, 4, 512)));
        assert_eq!(parse_format_field("16x0"), None);
        assert_eq!(parse_format_field("x2"), None);
        assert_eq!(parse_format_field("16y"), None);
        assert_eq!(parse_format_field("16é2"), None);
        assert_eq!(parse_format_field("16xé"), None);
    }

    #[test]
    fn gain_fields() {
        assert_eq!(parse_gain_field("200"), Some((200.0, None, None)));
        assert_eq!(
            parse_gain_field("200(1024)/uV"),
            Some((200.0, Some(1024), Some("uV".into())))
        );
        assert_eq!(
            parse_gain_field("1000.5/mV"),
            Some((1000.5, None, Some("mV".into())))
        );
        assert_eq!(parse_gain_field("200(x)"), None);
        assert_eq!(parse_gain_field("abc"), None);
    }

    #[test]
    fn tokens_and_description() {
        let (t, rest) = split_tokens("100.dat 212 200 11 1024 995 -22131 0 MLII lead two", 8);
        assert_eq!(t.len(), 8);
        assert_eq!(rest, "MLII lead two");
        let (t, rest) = split_tokens("100.dat 212", 8);
        assert_eq!(t, vec!["100.dat", "212"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn base_datetime() {
        assert_eq!(
            parse_base_datetime("10:20:30.5", "01/02/2003"),
            Some((1_044_094_830 * 1_000_000_000) + 500_000_000)
        );
        assert_eq!(
            parse_base_datetime("10:20", "01/02/2003"),
            Some(1_044_058_220 * 1_000_000_000)
        );
        assert_eq!(parse_base_datetime("xx", "01/02/2003"), None);
    }

    #[test]
    fn packing_212() {
        // 995 and 1011 from MIT-BIH 100, and -1/-2048 edge cases.
        let mut got = Vec::new();
        decode_samples(
            &mut &[0xe3u8, 0x33, 0xf3, 0xff, 0x8f, 0x00][..],
            212,
            4,
            |v| got.push(v),
        )
        .unwrap();
        assert_eq!(got, vec![995, 1011, -1, -2048]);
        let mut got = Vec::new();
        decode_samples(&mut &[0xffu8, 0x07][..], 212, 1, |v| got.push(v)).unwrap();
        assert_eq!(got, vec![2047]);
    }

    #[test]
    fn beats() {
        assert!(is_beat(1) && is_beat(5) && is_beat(8) && is_beat(31));
        assert!(!is_beat(0) && !is_beat(28) && !is_beat(14) && !is_beat(37));
        assert_eq!(symbol(1), 'N');
        assert_eq!(symbol(8), 'A');
        assert_eq!(symbol(28), '+');
        assert_eq!(symbol(200), ' ');
    }
}
