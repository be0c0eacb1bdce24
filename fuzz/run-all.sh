#!/bin/sh
# Run every fuzz target, one after the other, on one core, for SECONDS each (default 900),
# from binaries already built by `cargo fuzz build -O -a -s none` (so a change to the tree
# during the run does not trigger a rebuild). Logs go to $LOGS (default /tmp/fuzz-logs).
#   fuzz/run-all.sh [SECONDS] [TARGET...]
set -u
cd "$(dirname "$0")"
secs=${1:-900}
[ $# -gt 0 ] && shift
targets=${*:-"wfdb edf csv store_codec mqtt_input config_toml model_card pmd_frame heart_rate"}
bin=target/x86_64-unknown-linux-gnu/release
logs=${LOGS:-/tmp/fuzz-logs}
mkdir -p "$logs"
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "$(date -u +%FT%TZ) start $t ${secs}s" >> "$logs/summary.txt"
    nice -n 19 "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "corpus/$t" \
        > "$logs/$t.log" 2>&1
    echo "$(date -u +%FT%TZ) end $t rc=$? corpus=$(ls "corpus/$t" | wc -l)" >> "$logs/summary.txt"
done
