#!/usr/bin/env python3
"""Resource budget of the gateway on a Raspberry-Pi-class profile (BENCHMARKS.md).

The gateway runs pinned to one core (cpuset) under a 512 MiB memory limit (cgroup v1 or v2),
with N real-time sensors (synthetic ECG, one window per sensor every 10 s), scoring with the
chosen backend and publishing to a local Mosquitto. Prints one JSON line: start-up time (to
the model loaded, to the first state message), RSS steady (median after the first 30 s) and
peak, CPU % of the one core, whether the limit killed it, the stripped binary size.

    sudo python3 scripts/pi_budget.py --bin target/release/affectgate --backend tract
    sudo python3 scripts/pi_budget.py --backend onnxruntime --ort-dylib /path/libonnxruntime.so

Needs root for the cgroup; without it the run is pinned with taskset only and says so.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cgroup(name, mem_bytes):
    """Create a cgroup limited to CPU 0 and mem_bytes; return (procs files, description)."""
    v1m, v1c = "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpuset"
    try:
        if os.path.isdir(v1m) and os.path.isdir(v1c):
            m, c = os.path.join(v1m, name), os.path.join(v1c, name)
            os.makedirs(m, exist_ok=True)
            os.makedirs(c, exist_ok=True)
            open(os.path.join(m, "memory.limit_in_bytes"), "w").write(str(mem_bytes))
            open(os.path.join(c, "cpuset.cpus"), "w").write("0")
            open(os.path.join(c, "cpuset.mems"), "w").write("0")
            return [os.path.join(m, "cgroup.procs"), os.path.join(c, "cgroup.procs")], \
                "cgroup v1: cpuset 0, memory.limit_in_bytes %d MiB" % (mem_bytes >> 20)
        g = os.path.join("/sys/fs/cgroup", name)
        os.makedirs(g, exist_ok=True)
        open(os.path.join(g, "memory.max"), "w").write(str(mem_bytes))
        open(os.path.join(g, "cpuset.cpus"), "w").write("0")
        return [os.path.join(g, "cgroup.procs")], "cgroup v2: cpuset 0, memory.max %d MiB" % (mem_bytes >> 20)
    except OSError as e:
        return [], "no cgroup (%s): taskset -c 0 only, no memory limit" % e


def config(d, port, sensors, backend, ort):
    text = open(os.path.join(REPO, "plugin.toml")).read()
    a, b = text.index("# Three synthetic sensors"), text.index("# Preprocessing, identical")
    sens = "".join(
        '[[sensors]]\nid = "s%d"\nsource = { kind = "synthetic", hr_bpm = %d, hrv_sdnn_ms = %d, seed = %d }\n\n'
        % (i, 60 + 3 * i, 30 + 5 * i, i + 1) for i in range(sensors))
    text = text[:a] + sens + text[b:]
    text = text.replace('host = ""', 'host = "127.0.0.1"').replace("port = 1883", "port = %d" % port)
    text = text.replace('path = "affectgate-store"', 'path = "%s/store"' % d)
    text = text.replace('path = "models/', 'path = "%s/models/' % REPO)
    text = text.replace('models_dir = "models-local"', 'models_dir = "%s/models-local"' % d)
    if backend == "onnxruntime":
        dylib = ', dylib = "%s"' % ort if ort else ""
        text = re.sub(r'^backend = "tract".*$', 'backend = { kind = "onnxruntime"%s }' % dylib, text, flags=re.M)
    path = os.path.join(d, "pi.toml")
    open(path, "w").write(text)
    return path


def proc_stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


def status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release/affectgate"))
    ap.add_argument("--backend", default="tract", choices=["tract", "onnxruntime"])
    ap.add_argument("--ort-dylib", default=None)
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--memory-mb", type=int, default=512)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pi-budget-")
    port = free_port()
    broker = subprocess.Popen(["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    first = os.path.join(d, "first.txt")
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-t", "affectgate/+/+/state", "-C", "1"],
                           stdout=open(first, "w"))
    cfg = config(d, port, a.sensors, a.backend, a.ort_dylib)
    procs, how = cgroup("affectgate-pi-%d" % os.getpid(), a.memory_mb << 20)
    log = os.path.join(d, "gw.log")
    t0 = time.monotonic()

    def enter():
        for p in procs:
            with open(p, "w") as f:
                f.write(str(os.getpid()))

    cmd = [a.bin, "run", "--config", cfg]
    if not procs:
        cmd = ["taskset", "-c", "0"] + cmd
    gw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                          env=dict(os.environ, RUST_LOG="info"), preexec_fn=enter if procs else None)
    loaded = first_state = None
    samples = []
    last_cpu, last_t = 0.0, t0
    while time.monotonic() - t0 < a.seconds and gw.poll() is None:
        time.sleep(1.0)
        now = time.monotonic()
        if loaded is None and "model loaded" in open(log).read():
            loaded = now - t0
        if first_state is None and sub.poll() is not None:
            first_state = now - t0
        try:
            cpu = proc_stat(gw.pid)
            rss = status(gw.pid, "VmRSS:")
        except (OSError, ValueError):
            break
        samples.append((now - t0, rss, (cpu - last_cpu) / (now - last_t)))
        last_cpu, last_t = cpu, now
    peak = status(gw.pid, "VmHWM:") if gw.poll() is None else None
    killed = gw.poll() is not None
    if not killed:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=60)
    broker.kill()
    sub.kill()
    steady = [s for s in samples if s[0] >= 30]
    stripped = os.path.join(d, "affectgate.stripped")
    size = None
    if subprocess.run(["strip", "-o", stripped, a.bin], capture_output=True).returncode == 0:
        size = os.path.getsize(stripped)
    out = {
        "backend": a.backend, "sensors": a.sensors, "seconds": a.seconds, "limits": how,
        "startup_model_loaded_s": round(loaded, 2) if loaded else None,
        "first_state_message_s": round(first_state, 2) if first_state else None,
        "rss_steady_mib": round(statistics.median(s[1] for s in steady), 1) if steady else None,
        "rss_peak_mib": round(peak, 1) if peak else None,
        "cpu_percent_of_one_core": round(100 * statistics.mean(s[2] for s in steady), 1) if steady else None,
        "stopped_early": killed,
        "binary_stripped_mb": round(size / 1e6, 1) if size else None,
    }
    print(json.dumps(out))
    for p in procs:
        try:
            os.rmdir(os.path.dirname(p))
        except OSError:
            pass
    return 1 if killed else 0


if __name__ == "__main__":
    sys.exit(main())
