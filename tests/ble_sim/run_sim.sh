#!/usr/bin/env bash
# Manual/dev runner: private D-Bus daemon + BlueZoo (hci0 = central, hci1 =
# peripheral) + fake_h10.py with all arguments passed through.
#
#   tests/ble_sim/run_sim.sh --speed 10 --drop-after-s 60
#
# stdout: fake_h10.py's JSON event lines.  stderr: logs and the
#   export DBUS_SYSTEM_BUS_ADDRESS=...
# line to paste into the shell that runs the gateway / btleplug.
# Ctrl-C (or SIGTERM) stops the simulator, BlueZoo and the bus.
#
# Environment:
#   AFFECTGATE_BLE_VENV     venv with requirements.txt (default /opt/affectgate-ble)
#   BLE_SIM_CENTRAL_ADDR    hci0 address (default 00:11:22:33:44:55)
#   BLE_SIM_PERIPHERAL_ADDR hci1 address (default 00:AA:BB:CC:DD:EE)
#   BLE_SIM_SCAN_INTERVAL   BlueZoo scan interval in s (default 1; BlueZoo's own default is 10)
#   BLE_SIM_PLAIN_BLUEZOO=1 run the unpatched `bluezoo` (reconnects will fail, see README)
#   BLE_SIM_ENV_FILE        if set, the export line is also written to this file
#   BLE_SIM_LOG_DIR         keep bluezoo.log here (default: a temp dir removed on exit)
set -euo pipefail

VENV="${AFFECTGATE_BLE_VENV:-/opt/affectgate-ble}"
PY="$VENV/bin/python"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CENTRAL_ADDR="${BLE_SIM_CENTRAL_ADDR:-00:11:22:33:44:55}"
PERIPH_ADDR="${BLE_SIM_PERIPHERAL_ADDR:-00:AA:BB:CC:DD:EE}"
SCAN_INTERVAL="${BLE_SIM_SCAN_INTERVAL:-1}"

if [[ ! -x "$PY" ]]; then
    echo "run_sim.sh: no python in $VENV (set AFFECTGATE_BLE_VENV or pip install -r $HERE/requirements.txt)" >&2
    exit 2
fi
command -v dbus-daemon >/dev/null || { echo "run_sim.sh: dbus-daemon not installed" >&2; exit 2; }

WORK="$(mktemp -d -t ble_sim.XXXXXX)"
LOG_DIR="${BLE_SIM_LOG_DIR:-$WORK}"
mkdir -p "$LOG_DIR"
DBUS_PID="" BLUEZOO_PID="" SIM_PID=""

cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "$SIM_PID" "$BLUEZOO_PID" "$DBUS_PID"; do
        [[ -n "$pid" ]] || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
STOPPING=0
on_signal() {
    # Stop the simulator first so that it can unregister cleanly; its exit
    # status (0 on a clean SIGTERM/SIGINT shutdown) becomes ours.
    STOPPING=1
    [[ -n "$SIM_PID" ]] && kill -TERM "$SIM_PID" 2>/dev/null || true
    [[ -n "$SIM_PID" ]] || exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

# Private bus (a session-type bus that we use as the "system" bus).
dbus-daemon --session --nofork --nopidfile --print-address=3 3>"$WORK/address" 2>"$LOG_DIR/dbus-daemon.log" &
DBUS_PID=$!
for _ in $(seq 100); do [[ -s "$WORK/address" ]] && break; sleep 0.05; done
ADDR="$(head -n1 "$WORK/address")"
[[ -n "$ADDR" ]] || { echo "run_sim.sh: dbus-daemon did not start" >&2; exit 1; }
export DBUS_SYSTEM_BUS_ADDRESS="$ADDR"

if [[ "${BLE_SIM_PLAIN_BLUEZOO:-0}" == 1 ]]; then
    BLUEZOO=("$VENV/bin/bluezoo")
else
    BLUEZOO=("$PY" "$HERE/bluezoo_fixed.py")
fi
"${BLUEZOO[@]}" --auto-enable --scan-interval "$SCAN_INTERVAL" \
    -a "$CENTRAL_ADDR" -a "$PERIPH_ADDR" >"$LOG_DIR/bluezoo.log" 2>&1 &
BLUEZOO_PID=$!

echo "export DBUS_SYSTEM_BUS_ADDRESS='$ADDR'" >&2
if [[ -n "${BLE_SIM_ENV_FILE:-}" ]]; then
    echo "export DBUS_SYSTEM_BUS_ADDRESS='$ADDR'" >"$BLE_SIM_ENV_FILE"
fi
echo "run_sim.sh: bluezoo log: $LOG_DIR/bluezoo.log (central hci0=$CENTRAL_ADDR, peripheral hci1=$PERIPH_ADDR)" >&2

# fake_h10.py waits for org.bluez/hci1 itself (--wait-bluez-s).
"$PY" "$HERE/fake_h10.py" --bus "$ADDR" "$@" &
SIM_PID=$!
set +e
while :; do
    wait "$SIM_PID"
    RC=$?
    # `wait` returns early (status > 128) when a trapped signal arrives; keep
    # waiting until the simulator itself has exited.
    kill -0 "$SIM_PID" 2>/dev/null || break
done
set -e
SIM_PID=""
exit "$RC"
