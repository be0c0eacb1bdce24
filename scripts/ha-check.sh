#!/bin/sh
# A real Home Assistant Core against Mosquitto and affectgate; see scripts/ha_check.py.
# Not in CI. Needs mosquitto (and mosquitto_pub), python3.13, network to PyPI the first time.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin affectgate
exec python3 scripts/ha_check.py "$@"
