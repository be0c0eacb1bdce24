#!/bin/bash
# Run `affectgate run` with N sensors of one kind for SECONDS, sample its RSS every second,
# SIGTERM it and report exit code, stop time, states received and whether `offline` came
# (docs/RELIABILITY.md section 6). Needs mosquitto and python3 with paho-mqtt.
#
# usage: run.sh BIN KIND N SECONDS TAG [realtime]     (results in ${OUT:-/tmp/affectgate-sensors}/TAG)
# env:   STOPWAIT (s, default 120) before a stop counts as hung and is killed;
#        DBUS_ADDR for the gateway's D-Bus (e.g. unix:path=/nonexistent/bus: no BlueZ)
set -u
BIN=$1 KIND=$2 N=$3 SECS=$4 TAG=$5 RT=${6:-}
HERE=$(cd "$(dirname "$0")" && pwd)
D=${OUT:-/tmp/affectgate-sensors}/$TAG
rm -rf "$D"; mkdir -p "$D"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf "listener $PORT 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n" > "$D/mosq.conf"
/usr/sbin/mosquitto -c "$D/mosq.conf" > "$D/mosq.log" 2>&1 & MP=$!
sleep 0.5
python3 "$HERE/mkcfg.py" "$KIND" "$N" "$PORT" "$D" $RT
python3 "$HERE/sub.py" "$PORT" "$D/sub.log" & SP=$!
DBUS_SYSTEM_BUS_ADDRESS=${DBUS_ADDR:-${DBUS_SYSTEM_BUS_ADDRESS:-}} "$BIN" run --config "$D/gw.toml" > "$D/out.log" 2> "$D/err.log" & GP=$!
( echo "t_s rss_kib hwm_kib threads"; t0=$(date +%s.%N)
  while [ -e /proc/$GP/status ]; do
    r=$(awk '/VmRSS/{r=$2}/VmHWM/{h=$2}/Threads/{t=$2}END{if (r) print r, h, t}' /proc/$GP/status 2>/dev/null)
    [ -n "$r" ] && echo "$(echo "$(date +%s.%N) - $t0" | bc) $r"
    sleep 1
  done ) > "$D/rss.txt" & RP=$!
sleep "$SECS"
T0=$(date +%s.%N); kill -TERM $GP
alive() { [ -e /proc/$GP ] && [ "$(awk '/State/{print $2}' /proc/$GP/status 2>/dev/null)" != Z ]; }
for _ in $(seq 1 $((5 * ${STOPWAIT:-120}))); do alive || break; sleep 0.2; done
if alive; then echo "STILL RUNNING ${STOPWAIT:-120}+ s after SIGTERM: killed"; kill -KILL $GP; fi
wait $GP; RC=$?; T1=$(date +%s.%N)
sleep 1; kill $SP $MP 2>/dev/null; wait $RP 2>/dev/null
echo "tag=$TAG kind=$KIND n=$N rc=$RC stop_s=$(echo "$T1 - $T0" | bc) states=$(grep -c '/state ' "$D/sub.log") offline_last=$(grep 'gwm/status ' "$D/sub.log" | tail -1 | grep -c offline)"
python3 - "$D/rss.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
rows = [(float(t), int(r) / 1024, int(h) / 1024) for t, r, h, *_ in rows]
s = sorted(r for t, r, _ in rows if 20 <= t <= 60) or sorted(r for _, r, _ in rows)
print(f"steady(20-60 s) median {s[len(s)//2]:.0f} MiB ({s[0]:.0f}-{s[-1]:.0f}), peak VmHWM {max(h for *_, h in rows):.0f} MiB")
PY
