//! The source seam and the per-sensor pipeline: replay and synthetic sources deliver exactly
//! the samples they should, with correct timestamps and gap flags, under backpressure; the
//! pipeline never lets a window span a gap or a corrupt block.

use std::time::Duration;

use affectgate::dsp::quality::QualityConfig;
use affectgate::dsp::PreprocessConfig;
use affectgate::gateway::sensor::SensorPipeline;
use affectgate::source::file::read_recording;
use affectgate::source::live::{ReplaySource, SyntheticSource};
use affectgate::source::synthetic::SyntheticConfig;
use affectgate::source::{Block, Source, SourceEvent, SOURCE_QUEUE};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn replay(path: std::path::PathBuf, looped: bool) -> Box<dyn Source> {
    Box::new(ReplaySource {
        sensor: "r".into(),
        path,
        signal: None,
        realtime: false,
        looped,
        start_ns: None,
    })
}

#[tokio::test]
async fn replay_delivers_every_sample_once_then_end() {
    let Some(d) = crate::util::shared_data() else {
        return;
    };
    let file = d.join("polar-h10/polar_h10_ecg.csv");
    let rec = read_recording(&file, None).unwrap();
    let (tx, mut rx) = mpsc::channel(SOURCE_QUEUE);
    let task = tokio::spawn(replay(file, false).run(tx, CancellationToken::new()));
    let mut samples: Vec<f32> = Vec::new();
    let mut gaps = 0;
    let mut ended = false;
    let mut t_prev: Option<(i64, usize)> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::Block(b) => {
                if b.gap_before {
                    gaps += 1;
                }
                if let (Some((t, n)), false) = (t_prev, b.gap_before) {
                    // Consecutive blocks: the file's own clock advances by ≈ n periods.
                    let dt = (b.t0_ns - t) as f64 / 1e9;
                    assert!(
                        (dt - n as f64 / rec.fs_hz).abs() < 3.0 / rec.fs_hz,
                        "dt {dt}"
                    );
                }
                t_prev = Some((b.t0_ns, b.samples_uv.len()));
                samples.extend_from_slice(&b.samples_uv);
            }
            SourceEvent::End => ended = true,
            _ => {}
        }
    }
    task.await.unwrap().unwrap();
    assert!(ended);
    assert_eq!(
        samples, rec.samples_uv,
        "every sample exactly once, in order"
    );
    // Gap flags: the first block, plus every jump > 3 periods in the file's own timestamps.
    let ts = rec.timestamps_ns.as_ref().unwrap();
    let jumps = ts
        .windows(2)
        .filter(|w| (w[1] - w[0]) as f64 > 3e9 / rec.fs_hz || w[1] < w[0])
        .count();
    assert_eq!(gaps, 1 + jumps);
}

#[tokio::test]
async fn looping_replay_flags_the_restart_as_a_gap_and_continues_the_clock() {
    let Some(d) = crate::util::shared_data() else {
        return;
    };
    let file = d.join("mitbih/100.hea");
    let rec = read_recording(&file, None).unwrap();
    let n = rec.samples_uv.len();
    let (tx, mut rx) = mpsc::channel(SOURCE_QUEUE);
    let stop = CancellationToken::new();
    let task = tokio::spawn(replay(file, true).run(tx, stop.clone()));
    let mut seen = 0usize;
    let mut first_t0 = None;
    let mut loop_block = None;
    while let Some(ev) = rx.recv().await {
        if let SourceEvent::Block(b) = ev {
            if first_t0.is_none() {
                first_t0 = Some(b.t0_ns);
                assert!(b.gap_before);
            } else if seen == n {
                loop_block = Some(b.clone());
                stop.cancel();
                break;
            } else {
                assert!(!b.gap_before, "unexpected gap at sample {seen}");
            }
            seen += b.samples_uv.len();
            assert!(seen <= n || loop_block.is_some());
        }
    }
    drop(rx);
    let _ = task.await.unwrap();
    let b = loop_block.expect("second pass started");
    assert!(b.gap_before, "loop restart must be a gap");
    assert_eq!(b.samples_uv[..10], rec.samples_uv[..10]);
    let expect = first_t0.unwrap() + (n as f64 * 1e9 / rec.fs_hz).round() as i64;
    assert!((b.t0_ns - expect).abs() <= 1, "{} vs {expect}", b.t0_ns);
}

#[tokio::test]
async fn replay_waits_for_a_slow_consumer_instead_of_queueing() {
    let Some(d) = crate::util::shared_data() else {
        return;
    };
    let file = d.join("mitbih/100.hea");
    let (tx, mut rx) = mpsc::channel(SOURCE_QUEUE);
    let task = tokio::spawn(replay(file, false).run(tx, CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 30 min of signal, but only the bounded queue's worth has been produced.
    assert_eq!(rx.len(), SOURCE_QUEUE);
    assert!(!task.is_finished());
    let mut blocks = 0;
    while let Some(ev) = rx.recv().await {
        if matches!(ev, SourceEvent::Block(_)) {
            blocks += 1;
        }
    }
    assert_eq!(blocks, (650_000f64 / 360.0).ceil() as usize);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn synthetic_source_paces_in_real_time_with_contiguous_timestamps() {
    let cfg = SyntheticConfig::default();
    let fs = cfg.fs_hz;
    let src = SyntheticSource::new("s", cfg).with_start_ns(1_000_000_000);
    let (tx, mut rx) = mpsc::channel(SOURCE_QUEUE);
    let stop = CancellationToken::new();
    let task = tokio::spawn(Box::new(src).run(tx, stop.clone()));
    let t0 = std::time::Instant::now();
    let mut blocks: Vec<Block> = Vec::new();
    while t0.elapsed() < Duration::from_millis(1600) {
        if let Ok(Some(SourceEvent::Block(b))) =
            tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        {
            blocks.push(b);
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let total: usize = blocks.iter().map(|b| b.samples_uv.len()).sum();
    // Real time: never more than one block (250 ms) ahead of the wall clock. (A loaded
    // machine can only make it produce less, so there is no lower bound on the count.)
    let el = t0.elapsed().as_secs_f64();
    assert!(total as f64 <= (el + 0.3) * fs, "{total} samples in {el} s");
    assert!(blocks.len() >= 2, "{} blocks", blocks.len());
    let mut n = 0usize;
    for (k, b) in blocks.iter().enumerate() {
        assert_eq!(b.gap_before, k == 0);
        let expect = 1_000_000_000 + (n as f64 * 1e9 / fs).round() as i64;
        assert_eq!(b.t0_ns, expect);
        n += b.samples_uv.len();
    }
}

fn synthetic_block(
    ecg: &mut affectgate::source::synthetic::SyntheticEcg,
    t0: i64,
    secs: f64,
) -> Block {
    let fs = ecg.fs_hz();
    let mut buf = vec![0f32; (secs * fs).round() as usize];
    ecg.fill(&mut buf);
    Block {
        t0_ns: t0,
        fs_hz: fs,
        samples_uv: buf,
        gap_before: false,
    }
}

#[test]
fn pipeline_never_spans_a_gap_or_a_corrupt_block() {
    let mut ecg =
        affectgate::source::synthetic::SyntheticEcg::new(SyntheticConfig::default()).unwrap();
    let mut p = SensorPipeline::new("s", PreprocessConfig::default(), QualityConfig::default());
    let mut out = Vec::new();
    // 15 s, then a 5 s hole, then 15 s: warm-up 2 s + one 10 s window per segment.
    p.push(&synthetic_block(&mut ecg, 0, 15.0), &mut out)
        .unwrap();
    let mut b = synthetic_block(&mut ecg, 20_000_000_000, 15.0);
    b.gap_before = true;
    p.push(&b, &mut out).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out[0].window.end_ns() <= 15_000_000_000);
    assert!(out[1].window.start_ns >= 22_000_000_000 - 5_000_000);
    assert_eq!(out[0].window.index, 0);
    assert_eq!(out[1].window.index, 1);

    // A NaN block is dropped and acts as a gap: nothing non-finite reaches a window, and the
    // windows after it restart warm-up.
    out.clear();
    let mut bad = synthetic_block(&mut ecg, 35_000_000_000, 1.0);
    bad.samples_uv[50] = f32::NAN;
    p.push(&bad, &mut out).unwrap();
    assert_eq!(p.dropped_blocks(), 1);
    p.push(&synthetic_block(&mut ecg, 36_000_000_000, 13.0), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].window.start_ns >= 38_000_000_000 - 5_000_000);
    assert!(out[0].window.samples.iter().all(|x| x.is_finite()));
    assert!(out[0].quality.is_good(), "{:?}", out[0].quality);
    let z = out[0]
        .normalized
        .as_ref()
        .expect("good window is normalised");
    let mean: f32 = z.iter().sum::<f32>() / z.len() as f32;
    assert!(mean.abs() < 0.05, "{mean}");
    let hr = out[0].hrv.unwrap().hr_bpm;
    assert!((hr - 70.0).abs() < 5.0, "{hr}");
}
