#!/bin/sh
# One table row per target from run-all.sh's logs: seconds, executions, exec/s, corpus files
# at the end, crash/timeout/oom artifacts.  fuzz/stats.sh [LOGS]
cd "$(dirname "$0")"
logs=${1:-${LOGS:-/tmp/fuzz-logs}}
echo "| target | seconds run | executions | exec/s | corpus at end (files) | crashes |"
echo "|---|---|---|---|---|---|"
for f in "$logs"/*.log; do
    t=$(basename "$f" .log)
    runs=$(sed -n 's/^stat::number_of_executed_units: //p' "$f" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$f" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$f" | tail -1)
    corpus=$(ls "corpus/$t" 2>/dev/null | wc -l)
    crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
    echo "| \`$t\` | ${secs:-?} | ${runs:-?} | ${eps:-?} | $corpus | $crashes |"
done
