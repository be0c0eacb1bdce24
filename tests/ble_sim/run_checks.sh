#!/usr/bin/env bash
# End-to-end self-check of the simulator with an independent BLE client
# (check_client.py, bleak).  Each scenario gets its own private D-Bus daemon +
# BlueZoo + fake_h10.py (via run_sim.sh), all torn down afterwards.
#
#   AFFECTGATE_BLE_VENV=/opt/affectgate-ble tests/ble_sim/run_checks.sh [scenario...]
#
# Needs requirements-dev.txt (bleak) in the venv.  Scenario summaries (JSON),
# simulator events and logs go to $BLE_SIM_CHECK_OUT (default: a temp dir,
# printed).  Last line: "N passed, N failed".
set -uo pipefail

VENV="${AFFECTGATE_BLE_VENV:-/opt/affectgate-ble}"
PY="$VENV/bin/python"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${BLE_SIM_CHECK_OUT:-$(mktemp -d -t ble_sim_checks.XXXXXX)}"
mkdir -p "$OUT"

declare -A SIM_ARGS CLIENT_ARGS
ORDER=(pmd_drop pmd_start_retry hr_drop generic_i16le generic_i24be_drop)
SIM_ARGS[pmd_drop]="--speed 20 --drop-after-s 40 --drop-gap-s 5"
CLIENT_ARGS[pmd_drop]="--recording-s 120 --with-hr --expect-drop"
SIM_ARGS[pmd_start_retry]="--speed 20 --start-delay-s 2 --ignore-first-starts 1 --max-s 30"
CLIENT_ARGS[pmd_start_retry]="--recording-s 100 --idle-timeout 3 --start-timeout 3"
SIM_ARGS[hr_drop]="--profile hr --speed 20 --drop-after-s 30"
CLIENT_ARGS[hr_drop]="--profile hr --recording-s 60 --expect-drop --rescan"
SIM_ARGS[generic_i16le]="--profile generic --name DIY-ECG --speed 20"
CLIENT_ARGS[generic_i16le]="--profile generic --name DIY-ECG --recording-s 60"
SIM_ARGS[generic_i24be_drop]="--profile generic --name DIY-ECG --generic-format i24be --generic-scale-uv 0.5 --generic-samples 30 --speed 20 --drop-after-s 20"
CLIENT_ARGS[generic_i24be_drop]="--profile generic --name DIY-ECG --generic-format i24be --generic-scale-uv 0.5 --recording-s 60 --expect-drop"

if [[ $# -gt 0 ]]; then ORDER=("$@"); fi

passed=0 failed=0
for name in "${ORDER[@]}"; do
    if [[ -z "${SIM_ARGS[$name]+x}" ]]; then
        echo "unknown scenario $name (known: ${!SIM_ARGS[*]})" >&2; failed=$((failed + 1)); continue
    fi
    dir="$OUT/$name"; mkdir -p "$dir"
    rm -f "$dir/env"
    # shellcheck disable=SC2086
    BLE_SIM_ENV_FILE="$dir/env" BLE_SIM_LOG_DIR="$dir" \
        "$HERE/run_sim.sh" ${SIM_ARGS[$name]} >"$dir/sim_events.jsonl" 2>"$dir/sim.log" &
    sim=$!
    ok=0
    for _ in $(seq 300); do
        grep -q '"event": "ready"' "$dir/sim_events.jsonl" 2>/dev/null && { ok=1; break; }
        kill -0 "$sim" 2>/dev/null || break
        sleep 0.1
    done
    rc=1
    if [[ $ok == 1 ]]; then
        # shellcheck disable=SC1091
        source "$dir/env"
        # shellcheck disable=SC2086
        timeout 300 "$PY" "$HERE/check_client.py" ${CLIENT_ARGS[$name]} \
            >"$dir/summary.json" 2>"$dir/client.log"
        rc=$?
    else
        echo "simulator did not become ready" >"$dir/client.log"
    fi
    kill -TERM "$sim" 2>/dev/null
    wait "$sim"
    sim_rc=$?
    if [[ $rc == 0 && $sim_rc == 0 ]]; then
        passed=$((passed + 1)); echo "PASS $name"
    else
        failed=$((failed + 1)); echo "FAIL $name (client rc=$rc, simulator rc=$sim_rc; see $dir)"
    fi
    tail -n1 "$dir/summary.json" 2>/dev/null | cut -c1-2000
done
echo "outputs: $OUT" >&2
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
