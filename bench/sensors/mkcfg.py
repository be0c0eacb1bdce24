#!/usr/bin/env python3
"""Write DIR/gw.toml: the shipped plugin.toml with N sensors of one KIND, broker 127.0.0.1:PORT,
the store in DIR (docs/RELIABILITY.md section 6).

usage: mkcfg.py KIND N PORT DIR [realtime]
KIND: synthetic | replay-polar | replay-edf | ble (addresses, nothing there) | missing (replay of absent files)
"""
import os
import sys

kind, n, port, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), os.path.abspath(sys.argv[4])
realtime = len(sys.argv) > 5 and sys.argv[5] == "realtime"
repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
data = os.environ.get("AFFECTGATE_DATA", os.path.join(repo, "..", "shared", "data"))
lines, skip = [], False
for line in open(os.path.join(repo, "plugin.toml")).read().splitlines():
    # drop the shipped [[sensors]] tables (header, id, source)
    if line.startswith("[[sensors]]"):
        skip = True
        continue
    if skip and line.startswith("id ="):
        continue
    if skip and line.startswith("source ="):
        skip = False
        continue
    lines.append(line)
t = "\n".join(lines)
t = t.replace('id = "affectgate"', 'id = "gwm"', 1)
t = t.replace('host = ""', 'host = "127.0.0.1"').replace("port = 1883", f"port = {port}")
t = t.replace('path = "affectgate-store"', f'path = "{d}/store"')
t = t.replace('path = "models/', f'path = "{repo}/models/')
t = t.replace('models_dir = "models-local"', f'models_dir = "{d}/models-local"')
polar = os.path.join(data, "polar-h10", "polar_h10_ecg.csv")
rt = "true" if realtime else "false"
sensors = []
for i in range(n):
    if kind == "synthetic":
        src = f'{{ kind = "synthetic", hr_bpm = {60 + i % 40}, seed = {i + 1} }}'
    elif kind == "replay-polar":
        src = f'{{ kind = "replay", path = "{polar}", realtime = {rt}, loop = true }}'
    elif kind == "replay-edf":
        f = os.path.join(data, "eegmat", f"Subject{i % 36:02d}_rest.edf")
        src = f'{{ kind = "replay", path = "{f}", realtime = {rt}, loop = true }}'
    elif kind == "ble":
        a = ":".join(f"{(i >> (8 * k)) & 0xFF:02X}" for k in range(5, -1, -1))
        src = f'{{ kind = "ble", profile = "polar_pmd", address = "{a}" }}'
    elif kind == "missing":
        src = f'{{ kind = "replay", path = "{d}/nope-{i}.csv" }}'
    else:
        sys.exit(f"unknown kind {kind}")
    sensors.append(f'[[sensors]]\nid = "s{i}"\nsource = {src}\n')
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, "gw.toml"), "w") as f:
    f.write(t + "\n" + "\n".join(sensors))
