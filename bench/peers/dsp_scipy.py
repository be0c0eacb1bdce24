#!/usr/bin/env python3
"""DSP peer for `affectgate bench dsp`: the same chain in SciPy, streamed in 1 s blocks.

High-pass 0.8 Hz and low-pass 40 Hz (2nd-order Butterworth biquads, like biquad's
Q = 1/sqrt(2) sections), 50 Hz notch (Q 30), each with carried state (`sosfilt` + `zi`);
then resampling to 256 Hz with a polyphase FIR (`resample_poly`, per block with the ratio
rounded to 256/130 for 130.16 Hz input — the rational approximation favours SciPy: it skips
the fractional-rate bookkeeping affectgate's sinc resampler does) and 10 s windows.
R-peaks/HRV/quality gate are not included here: compare with affectgate's
`preprocess_samples_per_s`, which also excludes them.

Prints one JSON line.
"""
import argparse, csv, json, time
import numpy as np
from scipy import signal


def load_polar(path):
    t, x = [], []
    with open(path) as f:
        r = csv.DictReader(f)
        for row in r:
            t.append(int(row["time_ns"]))
            x.append(float(row["ecg_uv"]))
    t = np.asarray(t, dtype=np.int64)
    fs = (len(t) - 1) / ((t[-1] - t[0]) / 1e9)
    return np.asarray(x, dtype=np.float32), fs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="../shared/data/polar-h10/polar_h10_ecg.csv")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    x, fs = load_polar(a.file)
    sos = np.vstack([
        signal.butter(2, 0.8, "highpass", fs=fs, output="sos"),
        signal.butter(2, 40.0, "lowpass", fs=fs, output="sos"),
        signal.tf2sos(*signal.iirnotch(50.0, 30.0, fs=fs)),
    ]).astype(np.float32)
    up, down = 256, int(round(fs))
    block = int(round(fs))
    t0 = time.perf_counter()
    windows = 0
    for _ in range(a.repeats):
        zi = np.zeros((sos.shape[0], 2), dtype=np.float32)
        buf = np.zeros(0, dtype=np.float32)
        for i in range(0, len(x), block):
            y, zi = signal.sosfilt(sos, x[i:i + block], zi=zi)
            r = signal.resample_poly(y, up, down).astype(np.float32)
            buf = np.concatenate([buf, r])
            while len(buf) >= 2560:
                w = buf[:2560]
                windows += 1
                buf = buf[2560:]
    el = time.perf_counter() - t0
    n = len(x) * a.repeats
    print(json.dumps({
        "bench": "dsp", "peer": f"scipy {__import__('scipy').__version__} sosfilt+resample_poly",
        "samples": n, "windows": windows, "seconds": el, "samples_per_s": n / el,
    }))


if __name__ == "__main__":
    main()
