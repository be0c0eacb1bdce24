#!/usr/bin/env python3
"""Python onnxruntime peer benchmark for affectgate's ONNX emotion model.

    python ort_infer.py MODEL.onnx [--runs 50] [--warmup 5] [--batches 1,32] [--threads 1,2]

Feeds random N(0,1) float32 windows to the input (default name "ecg", shape
[N,1,2560]) and times session.run() on the CPU execution provider for every
(intra_op_num_threads, batch) pair: warm-up runs, then median/mean over --runs
runs. Reports milliseconds per window (= per-run time / batch). One session per
thread count, inter_op_num_threads=1, sequential execution, all graph
optimisations on (the ONNX Runtime defaults otherwise). Prints ONE JSON object
on stdout.
"""
import argparse
import glob
import hashlib
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def int_list(s):
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--runs", type=int, default=50, help="timed runs per (threads, batch) (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs per (threads, batch) (default 5)")
    p.add_argument("--batches", type=int_list, default=[1, 32], help="comma list (default 1,32)")
    p.add_argument("--threads", type=int_list, default=[1, 2], help="comma list of intra_op_num_threads (default 1,2)")
    p.add_argument("--input-name", default="ecg", help='input to feed (default "ecg")')
    p.add_argument("--window", type=int, default=2560, help="samples per window when the model's length is dynamic")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def input_shape(meta, batch, window):
    """[N,1,2560] by default; take fixed non-batch dims from the model when it declares them."""
    dims = list(meta.shape)
    if len(dims) != 3:
        return [batch, 1, window] if not dims else [batch] + [d if isinstance(d, int) else 1 for d in dims[1:]]
    c = dims[1] if isinstance(dims[1], int) else 1
    n = dims[2] if isinstance(dims[2], int) else window
    return [batch, c, n]


def main():
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    with open(args.model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    dylib = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))

    results, flat, model_io = [], {}, None
    load0 = loadavg()
    for threads in args.threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(args.model, sess_options=so, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in sess.get_inputs()}
        if args.input_name not in inputs:
            sys.exit(f"model has no input {args.input_name!r}; inputs: {list(inputs)}")
        meta = inputs[args.input_name]
        if model_io is None:
            model_io = {
                "inputs": [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type}
                           for i in sess.get_inputs()],
                "outputs": [{"name": o.name, "shape": [d if isinstance(d, int) else str(d) for d in o.shape], "type": o.type}
                            for o in sess.get_outputs()],
            }
        others = [n for n in inputs if n != args.input_name]
        # A fused affectgate model also reads `features [N, F]` (wearer-relative HR/HRV): fed
        # zeros, as the gateway does for a calibrating wearer.
        if [n for n in others if n != "features"]:
            sys.exit(f"model has extra inputs {others}; only `features` is supported besides {args.input_name!r}")
        for batch in args.batches:
            shape = input_shape(meta, batch, args.window)
            x = rng.standard_normal(shape).astype(np.float32)
            feed = {args.input_name: x}
            if "features" in inputs:
                f = inputs["features"].shape[1]
                feed["features"] = np.zeros([batch, f if isinstance(f, int) else 3], dtype=np.float32)
            entry = {"threads": threads, "batch": batch, "input_shape": shape}
            try:
                for _ in range(args.warmup):
                    sess.run(None, feed)
                ts = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    ts.append(time.perf_counter() - t0)
            except Exception as e:  # e.g. a model exported with a fixed batch of 1
                entry["error"] = str(e).splitlines()[0][:300]
                results.append(entry)
                continue
            med = statistics.median(ts) * 1e3
            entry.update({
                "median_ms_per_window": med / batch,
                "mean_ms_per_window": statistics.mean(ts) * 1e3 / batch,
                "min_ms_per_window": min(ts) * 1e3 / batch,
                "median_ms_per_run": med,
                "n": len(ts),
                "warmup": args.warmup,
            })
            results.append(entry)
            flat[f"b{batch}_t{threads}_ms_per_window"] = med / batch

    out = {
        "framework": "onnxruntime-python",
        "version": ort.__version__,
        "model": os.path.abspath(args.model),
        "model_sha256": sha,
        **(model_io or {}),
        "provider": "CPUExecutionProvider",
        "session": {"inter_op_num_threads": 1, "execution_mode": "sequential", "graph_optimization_level": "ORT_ENABLE_ALL"},
        "median_ms_per_window": flat,
        "results": results,
        "libonnxruntime": dylib,
        "cpu": cpu_model(),
        "os_cpus": os.cpu_count(),
        "loadavg_before_after": [load0, loadavg()],
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
