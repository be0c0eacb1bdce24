#!/bin/sh
# Install the amd64 package in a clean Debian bookworm root (debootstrap, chroot) and check it
# the way a user would meet it: the files where they belong, the conffile, the unit verified
# by systemd-analyze, `affectgate doctor`, and the unit's command line running against a real
# broker with the packaged config (its strap swapped for a synthetic one: no Bluetooth here).
#
#   sudo scripts/deb_check.sh [path/to/affectgate_*.deb]
#
# Needs root (chroot), debootstrap and network access to deb.debian.org. The root is kept in
# /var/tmp/affectgate-root for the next run (delete it to start clean).
set -eu
cd "$(dirname "$0")/.."
ROOT=${AFFECTGATE_DEB_ROOT:-/var/tmp/affectgate-root}
deb=${1:-$(ls -t target/debian/affectgate_*_amd64.deb 2>/dev/null | head -1)}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "no package: run scripts/deb.sh first" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    debootstrap --variant=minbase bookworm "$ROOT" http://deb.debian.org/debian
fi
cleanup() {
    for m in proc sys dev; do umount -l "$ROOT/$m" 2>/dev/null || true; done
    [ -n "${BROKER:-}" ] && kill "$BROKER" 2>/dev/null || true
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# debootstrap writes no /etc/hosts; every installed system has one.
grep -qs localhost "$ROOT/etc/hosts" || printf "127.0.0.1 localhost\n::1 localhost\n" >> "$ROOT/etc/hosts"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

# Remove an earlier install (not its conffile) so the package installs fresh.
in_root dpkg --purge affectgate >/dev/null 2>&1 || true
cp "$deb" "$ROOT/tmp/affectgate.deb"
in_root apt-get update -q
in_root apt-get install -y -q systemd mosquitto-clients
in_root apt-get install -y -q /tmp/affectgate.deb
fail=0
check() { if eval "$2"; then echo "ok    $1"; else echo "FAIL  $1"; fail=1; fi; }
check "binary /usr/bin/affectgate runs" "in_root affectgate --version >/dev/null"
check "conffile /etc/affectgate/affectgate.toml" "in_root dpkg-query -W -f='\${Conffiles}' affectgate | grep -q /etc/affectgate/affectgate.toml"
check "models in /usr/share/affectgate/models" "[ -f $ROOT/usr/share/affectgate/models/affectgate-arousal-v2.onnx ] && [ -f $ROOT/usr/share/affectgate/models/affectgate-arousal-v2.card.toml ]"
check "unit installed, not enabled" "[ -f $ROOT/lib/systemd/system/affectgate.service ] && ! [ -e $ROOT/etc/systemd/system/multi-user.target.wants/affectgate.service ]"
check "systemd-analyze verify" "in_root systemd-analyze verify /lib/systemd/system/affectgate.service"
check "the unit's ExecStartPre (config check)" "in_root affectgate config check /etc/affectgate/affectgate.toml"

# The unit's command line, as its user would run it: a state directory of its own, the
# packaged config with the broker on a test port and a synthetic strap.
PORT=${AFFECTGATE_DEB_PORT:-18883}
mosquitto -p "$PORT" >/dev/null 2>&1 & BROKER=$!
sleep 1
mkdir -p "$ROOT/var/lib/affectgate"
# What StateDirectory= does for the DynamicUser: the state belongs to the service user.
chown -R 65534:65534 "$ROOT/var/lib/affectgate"
sed -e "s/^port = 1883/port = $PORT/" \
    -e 's/^source = { kind = "ble", profile = "polar_pmd", name = "Polar H10 \*" }/source = { kind = "synthetic", hr_bpm = 70, hrv_sdnn_ms = 50, seed = 1 }/' \
    "$ROOT/etc/affectgate/affectgate.toml" > "$ROOT/tmp/test.toml"
echo "--- affectgate doctor (the strap is synthetic here):"
in_root affectgate doctor --config /tmp/test.toml || fail=1
mosquitto_sub -p "$PORT" -t 'affectgate/+/chest/state' -C 2 -W 60 > /tmp/affectgate-deb-states.txt &
SUB=$!
in_root setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'cd /var/lib/affectgate && exec affectgate run --config /tmp/test.toml' \
    > /tmp/affectgate-deb-run.log 2>&1 &
RUN=$!
wait $SUB || true
kill -TERM $RUN 2>/dev/null || true
wait $RUN || true
check "the unit's command line published state messages" "[ \$(wc -l < /tmp/affectgate-deb-states.txt) -ge 2 ]"
head -c 300 /tmp/affectgate-deb-states.txt; echo
exit $fail
