#!/usr/bin/env bash
# Runs every benchmark side by side in one session and appends one JSON object per line to
# bench/results/<date>.jsonl. BENCHMARKS.md quotes these numbers.
#   bench/run.sh [MODEL.onnx]
# Needs: a release build, and the peers' virtualenv (bench/peers/README.md) at $PEERS_PY
# (default /opt/affectgate-peers/bin/python). Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/affectgate-arousal-v2.onnx}"
py="${PEERS_PY:-/opt/affectgate-peers/bin/python}"
bin=target/release/affectgate
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d).jsonl"
cargo build --release -q
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$($py -c 'import glob,os,onnxruntime as o;print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__),"capi","libonnxruntime.so*")))[0])')}"
run() { echo "# $*" >&2; "$@" | tee -a "$out"; }
run $bin bench train --steps 20
run "$py" bench/peers/tf_pretext.py --steps 20
run $bin --threads 1 bench infer --model "$model" --backend tract
run $bin --threads 2 bench infer --model "$model" --backend tract
run $bin bench infer --model "$model" --backend onnxruntime
run "$py" bench/peers/ort_infer.py "$model"

# ── gateway (issue 4): DSP throughput vs SciPy, sensors per core, window → MQTT latency.
# Mosquitto on core 1, the gateway on core 0.
gw_out="bench/results/$(date -u +%Y-%m-%d)-gateway.jsonl"
mq_dir="$(mktemp -d)"; printf 'listener 18830 127.0.0.1\nallow_anonymous true\npersistence false\n' > "$mq_dir/m.conf"
taskset -c 1 mosquitto -c "$mq_dir/m.conf" & mq_pid=$!
trap 'kill $mq_pid 2>/dev/null || true' EXIT
sleep 1
gw() { echo "# $*" >&2; "$@" | tee -a "$gw_out"; }
gw taskset -c 0 $bin bench dsp
gw taskset -c 0 "$py" bench/peers/dsp_scipy.py --repeats 5
gw taskset -c 0 $bin bench sensors --counts 128,256,512,768,1024 --seconds 45 --mqtt 127.0.0.1:18830
gw $bin bench latency --sensors 32 --seconds 125 --mqtt 127.0.0.1:18830
gw $bin bench latency --sensors 32 --seconds 125
echo "results appended to $out and $gw_out" >&2
