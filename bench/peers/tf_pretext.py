#!/usr/bin/env python3
"""TensorFlow/Keras peer benchmark for affectgate's SSL pretext network.

Builds the signal-transformation recognition network of Sarkar & Etemad
("Self-supervised ECG representation learning for emotion recognition") exactly
as described in /work/shared/DESIGN.md "Signal conventions", then times

  * one Adam training step (batch --batch, default 32) inside a tf.function,
    3 warm-up steps, then median/mean over --steps steps (default 20);
  * forward passes (inference, training=False) at batch 1 and batch 32.

Inputs are random N(0,1) windows and random 0/1 targets: the numbers measure
compute, not learning. Prints ONE JSON object on stdout; everything else
(TensorFlow logging, tf2onnx chatter) goes to stderr.

Optional: --export-onnx PATH writes the *emotion* variant of the network
(same conv encoder, two heads "arousal"/"valence", each Dense512+LReLU ->
Dense512+LReLU -> Dense1 sigmoid) as ONNX with input "ecg" float32
[N,1,2560] (channels-first, like the Rust side), via tf2onnx. Weights are
random; the file is for timing/interop tests (see ort_infer.py).
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

# Quiet TF's C++ logging unless the caller asked for it; must precede the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WINDOW = 2560
HEADS = ["original", "noise", "scale", "negate", "flip", "permute", "time_warp"]
LOSS_WEIGHTS = [0.195, 0.195, 0.195, 0.0125, 0.0125, 0.195, 0.195]
WARMUP_STEPS = 3


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


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed training steps after 3 warm-up steps (default 20)")
    p.add_argument("--batch", type=int, default=32, help="training batch size (default 32)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads; inter-op is fixed at 1 (default 2)")
    p.add_argument("--forward-runs", type=int, default=50, help="timed forward passes per batch size (default 50)")
    p.add_argument("--jit", action="store_true", help="compile the train step with XLA (jit_compile=True); off by default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-onnx", metavar="PATH", help="also write the emotion variant as ONNX (input 'ecg' [N,1,2560])")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset for --export-onnx (default 17)")
    return p.parse_args()


def lrelu(keras):
    # Keras 3 calls the slope `negative_slope`, Keras 2 `alpha`.
    try:
        return keras.layers.LeakyReLU(negative_slope=0.2)
    except TypeError:
        return keras.layers.LeakyReLU(alpha=0.2)


def encoder(keras, x):
    """Conv encoder shared by the pretext and the emotion networks: [B,2560,1] -> [B,128]."""
    L = keras.layers
    for filters, kernel, pool in ((32, 32, True), (64, 16, True), (128, 8, False)):
        for _ in range(2):
            x = L.Conv1D(filters, kernel, padding="same")(x)
            x = lrelu(keras)(x)
        if pool:
            x = L.MaxPooling1D(pool_size=8, strides=2, padding="valid")(x)
    return L.GlobalMaxPooling1D()(x)


def pretext_model(keras):
    L = keras.layers
    inp = keras.Input(shape=(WINDOW, 1), name="ecg")
    z = encoder(keras, inp)
    outs = []
    for name in HEADS:
        h = L.Dense(128)(z)
        h = lrelu(keras)(h)
        h = L.Dropout(0.6)(h)
        h = L.Dense(128)(h)
        h = lrelu(keras)(h)
        h = L.Dropout(0.6)(h)
        outs.append(L.Dense(1, activation="sigmoid", name=name)(h))
    return keras.Model(inp, outs, name="sarkar_etemad_pretext")


def emotion_model(keras, heads=("arousal", "valence"), units=512):
    """Frozen-encoder emotion network; input is channels-first [N,1,2560] to match the Rust model."""
    L = keras.layers
    inp = keras.Input(shape=(1, WINDOW), name="ecg")
    x = L.Permute((2, 1))(inp)  # [N,1,2560] -> [N,2560,1]
    z = encoder(keras, x)
    outs = []
    for name in heads:
        h = L.Dense(units)(z)
        h = lrelu(keras)(h)
        h = L.Dense(units)(h)
        h = lrelu(keras)(h)
        outs.append(L.Dense(1, activation="sigmoid", name=name)(h))
    return keras.Model(inp, outs, name="sarkar_etemad_emotion")


def conv_stack_flops_per_window():
    """Multiply-adds x2 of the conv encoder for one window (dense heads are negligible)."""
    flops, length, cin = 0, WINDOW, 1
    for cout, k, pool in ((32, 32, True), (64, 16, True), (128, 8, False)):
        for _ in range(2):
            flops += 2 * length * cout * k * cin
            cin = cout
        if pool:
            length = (length - 8) // 2 + 1
    return flops


def timed(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def export_onnx(tf, keras, path, opset):
    import tf2onnx
    import onnx

    model = emotion_model(keras)
    spec = (tf.TensorSpec([None, 1, WINDOW], tf.float32, name="ecg"),)

    @tf.function(input_signature=spec)
    def infer(ecg):
        a, v = model(ecg, training=False)
        return {"arousal": a, "valence": v}

    proto, _ = tf2onnx.convert.from_function(infer, input_signature=spec, opset=opset)
    # Give the graph stable names: input "ecg", outputs "arousal"/"valence".
    rename = {}
    for out in proto.graph.output:
        for want in ("arousal", "valence"):
            if want in out.name and out.name != want:
                rename[out.name] = want
    for node in proto.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.input[:] = [rename.get(i, i) for i in node.input]
    for out in proto.graph.output:
        out.name = rename.get(out.name, out.name)
    for inp in proto.graph.input:
        if inp.name.startswith("ecg"):
            old = inp.name
            inp.name = "ecg"
            for node in proto.graph.node:
                node.input[:] = ["ecg" if i == old else i for i in node.input]
    proto.producer_name = "affectgate bench/peers/tf_pretext.py"
    onnx.checker.check_model(proto)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(proto, path)

    # Keras reference output for a fixed input, so the ONNX file can be cross-checked.
    import numpy as np
    x = np.random.default_rng(1).standard_normal((2, 1, WINDOW)).astype("float32")
    ref = infer(tf.constant(x))
    max_abs = None
    try:
        import onnxruntime as ort
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"ecg": x})))
        max_abs = max(float(np.max(np.abs(got[k] - ref[k].numpy()))) for k in ("arousal", "valence"))
    except Exception as e:  # onnxruntime absent or mismatch in names: still report the export
        print(f"onnx cross-check skipped: {e!r}", file=sys.stderr)
    return {
        "path": os.path.abspath(path),
        "opset": opset,
        "tf2onnx": tf2onnx.__version__,
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
        "params": int(model.count_params()),
        "max_abs_diff_vs_keras": max_abs,
    }


def main():
    args = parse_args()
    real_stdout = sys.stdout
    # Anything libraries print goes to stderr; stdout carries only the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args)
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()


def run(args):
    load0 = loadavg()
    import numpy as np
    import tensorflow as tf

    # Threading must be configured before TF executes anything.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras = tf.keras
    keras.utils.set_random_seed(args.seed)

    model = pretext_model(keras)
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    bce = keras.losses.BinaryCrossentropy()
    optimizer.build(model.trainable_variables)

    rng = np.random.default_rng(args.seed)
    B = args.batch
    x = tf.constant(rng.standard_normal((B, WINDOW, 1)).astype("float32"))
    ys = [tf.constant(rng.integers(0, 2, size=(B, 1)).astype("float32")) for _ in HEADS]

    @tf.function(jit_compile=args.jit)
    def train_step(x, ys):
        with tf.GradientTape() as tape:
            preds = model(x, training=True)
            loss = tf.add_n([w * bce(y, p) for w, y, p in zip(LOSS_WEIGHTS, ys, preds)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def forward(x):
        return model(x, training=False)

    def step():
        train_step(x, ys).numpy()  # .numpy() forces completion

    for _ in range(WARMUP_STEPS):
        step()
    train_times = timed(step, args.steps)
    train_med = statistics.median(train_times)

    fwd = {}
    for b in (1, 32):
        xb = tf.constant(rng.standard_normal((b, WINDOW, 1)).astype("float32"))

        def f(xb=xb):
            [p.numpy() for p in forward(xb)]

        for _ in range(5):
            f()
        ts = timed(f, args.forward_runs)
        fwd[b] = {"median_ms": statistics.median(ts) * 1e3, "mean_ms": statistics.mean(ts) * 1e3, "n": len(ts)}

    fwd_flops = conv_stack_flops_per_window()
    result = {
        "framework": "tensorflow",
        "version": tf.__version__,
        "keras": keras.__version__,
        "train_step_b32_s": {"median": train_med, "mean": statistics.mean(train_times), "n": len(train_times),
                             "min": min(train_times), "max": max(train_times), "batch": B,
                             "warmup": WARMUP_STEPS, "jit_compile": bool(args.jit)},
        "windows_per_s": B / train_med,
        "forward_b1_ms": fwd[1]["median_ms"],
        "forward_b32_ms_per_window": fwd[32]["median_ms"] / 32,
        "forward": {"b1": fwd[1], "b32": fwd[32]},
        "threads": {
            "requested": args.threads,
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "os_cpus": os.cpu_count(),
        },
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 builds)"),
        "params": int(model.count_params()),
        "conv_gflop_per_window_forward": fwd_flops / 1e9,
        # Training ~ 3x forward (forward + input grads + weight grads).
        "train_gflop_per_s_est": 3 * fwd_flops * B / train_med / 1e9,
        "cpu": cpu_model(),
        # 1/5/15-min load averages before and after timing: > threads means other work shared the cores.
        "loadavg_before_after": [load0, loadavg()],
        "python": platform.python_version(),
    }
    if args.export_onnx:
        result["onnx_export"] = export_onnx(tf, keras, args.export_onnx, args.opset)
    return result


if __name__ == "__main__":
    main()
