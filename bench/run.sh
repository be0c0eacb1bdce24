#!/usr/bin/env bash
# Runs every benchmark side by side in one session and appends one JSON object per line to
# bench/results/<date>.jsonl. BENCHMARKS.md quotes these numbers.
#   bench/run.sh [MODEL.onnx]
# Needs: a release build, and the peers' virtualenv (bench/peers/README.md) at $PEERS_PY
# (default /opt/affectgate-peers/bin/python). Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/affectgate-arousal-v1.onnx}"
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
echo "results appended to $out" >&2
