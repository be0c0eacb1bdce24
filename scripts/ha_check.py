#!/usr/bin/env python3
"""Run a real Home Assistant Core (from PyPI) against Mosquitto and affectgate, then check
what Home Assistant made of the discovery: devices, entity ids, states, and no MQTT warning
in its log. Not part of CI (it installs Home Assistant, ~1 GB, and runs ~2 minutes).

usage: scripts/ha-check.sh            (builds affectgate, then runs this)
env:   HA_VENV        Home Assistant's venv (default target/ha-venv; created with python3.13)
       AFFECTGATE_BIN the gateway binary (default target/release/affectgate)
       AFFECTGATE_DATA the shared data folder (default ../shared/data)
       RUN_S          how long the gateway runs before Home Assistant is stopped (default 60)

What it checks, through the registries and the restored states Home Assistant writes when it
stops (.storage/core.device_registry, core.entity_registry, core.restore_state) and its log:
the gateway device and the strap device linked to it with via_device; every entity under
the id the README documents (Home Assistant before 2025.10 derives ids from the device and
entity names; this is the proof that they match default_entity_id); states that make sense
(a numeric arousal, an enum quality among its options, the gateway online); a refused
command answered in "Last input error"; no WARNING or ERROR line in Home Assistant's log
(but two about C libraries this machine lacks). And the unique-id migration: a strap whose
id contains `_` ("chest_2") is first announced the way earlier releases did (legacy unique
id and topic) with one state; after the gateway has run, its entity has the same entity id
and the new unique id, no "_2" duplicate exists, and the recorder database holds the old
state and new ones under that one entity id (history continues).
"""
import sqlite3
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HA_VERSION = "2025.4.4"  # the newest Home Assistant that runs on Python 3.13.0
GW = "hacheck"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def find_python313():
    for c in [shutil.which("python3.13"), "/root/.pyenv/versions/3.13.0/bin/python3.13"]:
        if c and os.path.exists(c):
            return c
    sys.exit("python3.13 not found: Home Assistant 2025.4 needs it (pyenv install 3.13.0)")


def ha_venv():
    venv = os.environ.get("HA_VENV", os.path.join(REPO, "target", "ha-venv"))
    hass = os.path.join(venv, "bin", "hass")
    if not os.path.exists(hass):
        print(f"installing Home Assistant {HA_VERSION} into {venv} …", flush=True)
        subprocess.run([find_python313(), "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q",
                        f"homeassistant=={HA_VERSION}", "paho-mqtt==2.1.0"], check=True)
    else:
        # The MQTT integration's requirement, so Home Assistant need not install it at start.
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "paho-mqtt==2.1.0"],
                       check=True)
    return hass


def storage(path, key, data, minor=1):
    with open(path, "w") as f:
        json.dump({"version": 1, "minor_version": minor, "key": key, "data": data}, f)


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.5)
    sys.exit(f"FAIL: timed out after {timeout} s waiting for {what}")


def main():
    hass = ha_venv()
    version = subprocess.run([hass, "--version"], capture_output=True, text=True).stdout.strip()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    gw_bin = os.environ.get("AFFECTGATE_BIN", os.path.join(target, "release", "affectgate"))
    data = os.environ.get("AFFECTGATE_DATA", os.path.join(REPO, "..", "shared", "data"))
    polar = os.path.join(data, "polar-h10", "polar_h10_ecg.csv")
    run_s = int(os.environ.get("RUN_S", "60"))
    d = tempfile.mkdtemp(prefix="affectgate-ha-")
    procs = []
    try:
        port = free_port()
        with open(os.path.join(d, "mosquitto.conf"), "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs.append(subprocess.Popen([mosq, "-c", os.path.join(d, "mosquitto.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cfg = os.path.join(d, "ha")
        os.makedirs(os.path.join(cfg, ".storage"))
        with open(os.path.join(cfg, "configuration.yaml"), "w") as f:
            f.write("homeassistant:\n  name: affectgate check\n  latitude: 0\n  longitude: 0\n"
                    "  elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  country: DE\n"
                    "  currency: EUR\nlogger:\n  default: info\nrecorder:\n  commit_interval: 1\n")
        # The MQTT integration as the UI would have set it up (a config entry; Home
        # Assistant migrates this older storage format itself).
        storage(os.path.join(cfg, ".storage", "core.config_entries"), "core.config_entries", {
            "entries": [{
                "entry_id": "01JAFFECTGATECHECK0000000000", "version": 1, "minor_version": 2,
                "domain": "mqtt", "title": "127.0.0.1", "source": "user",
                "data": {"broker": "127.0.0.1", "port": port, "discovery": True},
                "options": {},
            }]})
        log = os.path.join(cfg, "home-assistant.log")
        ha = subprocess.Popen([hass, "-c", cfg, "--log-file", log],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ha)
        read_log = lambda: open(log).read() if os.path.exists(log) else ""
        wait_for(lambda: "MQTT client initialized" in read_log(), 300,
                 "Home Assistant's MQTT connection")
        time.sleep(3)
        # What an earlier release announced for strap "chest_2" (its arousal entity), with
        # one state 0.5, recorded before the migration.
        pub = lambda topic, payload, retain=True: subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-q", "1"] + (["-r"] if retain else []) +
            ["-t", topic, "-m", payload], check=True)
        pub(f"homeassistant/sensor/affectgate_{GW}_chest_2_arousal/config", json.dumps({
            "default_entity_id": f"sensor.affectgate_{GW}_chest_2_arousal",
            "unique_id": f"affectgate_{GW}_chest_2_arousal", "name": "Arousal",
            "state_topic": f"affectgate/{GW}/chest_2/state",
            "value_template": "{{ value_json.arousal }}", "state_class": "measurement",
            "device": {"identifiers": [f"affectgate_{GW}_chest_2"], "name": f"affectgate {GW} chest_2",
                       "manufacturer": "affectgate", "model": "ECG chest strap"}}))
        time.sleep(2)
        pub(f"affectgate/{GW}/chest_2/state", json.dumps({"arousal": 0.5}), retain=False)
        time.sleep(3)
        # The gateway: the shipped config, retraining on (its entities too), no round due.
        text = open(os.path.join(REPO, "plugin.toml")).read()
        text = text.replace('id = "affectgate"', f'id = "{GW}"', 1)
        text = text.replace('host = ""', 'host = "127.0.0.1"').replace("port = 1883", f"port = {port}")
        text = text.replace('path = "affectgate-store"', f'path = "{d}/store"')
        text = text.replace('path = "models/', f'path = "{REPO}/models/')
        text = text.replace('models_dir = "models-local"', f'models_dir = "{d}/models-local"')
        text = text.replace("[retrain]\nenabled = false", "[retrain]\nenabled = true")
        text = text.replace("min_new_windows = 1000", "min_new_windows = 1000000")
        # Fleet updates on (the update entity), with a plan whose wave starts tomorrow: the
        # gateway waits, nothing is downloaded (the repository is never contacted), and Home
        # Assistant shows an update available.
        root = os.path.join(d, "fleet-root.json")
        with open(root, "w") as f:
            f.write("{}")
        text = text.replace("[fleet]\nenabled = false", "[fleet]\nenabled = true\n"
                            f'repository = "http://127.0.0.1:9/repo"\nroot = "{root}"')
        plan = {"channel": "stable", "release": "arousal-v3", "canaries": [], "waves": [100],
                "wave_delay_s": 0, "max_failures": 1, "started_s": int(time.time()) + 86400}
        pub("affectgate/fleet/stable/plan", json.dumps(plan), retain=True)
        # The shipped [[sensors]] tables (header, id, source) give way to one replayed strap.
        lines, skip = [], False
        for line in text.splitlines():
            if line.startswith("[[sensors]]"):
                skip = True
            elif not (skip and (line.startswith("id =") or line.startswith("source ="))):
                skip = skip and not line.startswith("source =")
                lines.append(line)
            elif line.startswith("source ="):
                skip = False
        text = "\n".join(lines) + "".join(
            '\n[[sensors]]\nid = "%s"\nsource = { kind = "replay", path = "%s", realtime = true, '
            'loop = true }\n' % (sid, polar) for sid in ["polar", "chest_2"])
        with open(os.path.join(d, "gw.toml"), "w") as f:
            f.write(text)
        gw = subprocess.Popen([gw_bin, "run", "--config", os.path.join(d, "gw.toml")],
                              stdout=open(os.path.join(d, "gw.out"), "w"),
                              stderr=open(os.path.join(d, "gw.err"), "w"))
        procs.append(gw)
        time.sleep(run_s / 2)
        # A refused command: its answer must reach "Last input error".
        subprocess.run(["mosquitto_pub", "-p", str(port), "-q", "1", "-t",
                        f"affectgate/{GW}/cmd/promote", "-m", '{"id": "r0404"}'], check=True)
        time.sleep(run_s / 2)
        ha.send_signal(signal.SIGTERM)
        ha.wait(timeout=120)
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=60)

        def load(name):
            with open(os.path.join(cfg, ".storage", name)) as f:
                return json.load(f)["data"]
        devices = load("core.device_registry")["devices"]
        entities = load("core.entity_registry")["entities"]
        states = {s["state"]["entity_id"]: s["state"] for s in load("core.restore_state")}
        failures = []

        def check(ok, what):
            print(("ok   " if ok else "FAIL ") + what)
            if not ok:
                failures.append(what)

        by_ident = {tuple(i) : dev for dev in devices for i in dev["identifiers"]}
        gwdev = by_ident.get(("mqtt", f"affectgate/{GW}"))
        strap = by_ident.get(("mqtt", f"affectgate_{GW}_polar"))
        check(gwdev is not None and gwdev["name"] == f"affectgate {GW}" and bool(gwdev["sw_version"]),
              f"gateway device 'affectgate {GW}' with its software version")
        check(strap is not None and gwdev is not None and strap["via_device_id"] == gwdev["id"],
              "strap device linked to the gateway device (via_device)")
        ids = {e["entity_id"] for e in entities if e["platform"] == "mqtt"}
        expected = {f"sensor.affectgate_{GW}_polar_{w}" for w in
                    ["arousal", "heart_rate", "heart_rate_vs_usual", "hrv_rmssd", "signal_quality"]}
        expected |= {f"binary_sensor.affectgate_{GW}_polar_{w}" for w in ["calibrating", "strap_connected"]}
        expected |= {f"binary_sensor.affectgate_{GW}_{w}" for w in ["online", "store_problem"]}
        expected |= {f"sensor.affectgate_{GW}_{w}" for w in
                     ["model_version", "retraining", "last_retrain", "last_input_error"]}
        expected |= {f"button.affectgate_{GW}_{w}" for w in
                     ["retrain_now", "reload_configuration", "roll_back_model", "flush_outbox"]}
        expected |= {f"switch.affectgate_{GW}_automatic_retraining"}
        expected |= {f"update.affectgate_{GW}_model_update"}
        expected |= {e.replace("_polar_", "_chest_2_") for e in expected if "_polar_" in e}
        check(ids == expected, f"entity ids as documented ({len(expected)}); "
              f"missing {sorted(expected - ids)}, unexpected {sorted(ids - expected)}")
        # The migrated strap: same entity id, new unique id, its device linked, history kept.
        migrated = f"sensor.affectgate_{GW}_chest_2_arousal"
        uid = {e["entity_id"]: e["unique_id"] for e in entities if e["platform"] == "mqtt"}
        check(uid.get(migrated) == f"affectgate/{GW}/chest_2/arousal",
              f"migrated entity keeps its id with the new unique id ({uid.get(migrated)})")
        c2 = by_ident.get(("mqtt", f"affectgate/{GW}/chest_2"))
        check(c2 is not None and gwdev is not None and c2["via_device_id"] == gwdev["id"],
              "the migrated strap's device linked to the gateway device")
        db = sqlite3.connect(os.path.join(cfg, "home-assistant_v2.db"))
        hist = [r[0] for r in db.execute(
            "SELECT s.state FROM states s JOIN states_meta m ON s.metadata_id = m.metadata_id "
            "WHERE m.entity_id = ? ORDER BY s.last_updated_ts", (migrated,))]
        db.close()
        hist = [h for h in hist if h is not None]
        numeric = [h for h in hist if h.replace(".", "", 1).isdigit()]
        check("0.5" in hist and len([h for h in numeric if h != "0.5"]) > 0,
              f"history continues under {migrated}: the old 0.5, then {len(numeric) - 1} new scores")
        st = lambda e: states.get(e, {}).get("state")
        a = st(f"sensor.affectgate_{GW}_polar_arousal")
        try:
            check(0.0 <= float(a) <= 1.0, f"arousal is a score in [0, 1] ({a})")
        except (TypeError, ValueError):
            check(False, f"arousal is a score in [0, 1] ({a})")
        q = st(f"sensor.affectgate_{GW}_polar_signal_quality")
        check(q in ["good", "flat", "clipping", "implausible_rr", "noisy"], f"signal quality is an enum option ({q})")
        check(st(f"binary_sensor.affectgate_{GW}_online") == "on", "gateway online")
        check(st(f"binary_sensor.affectgate_{GW}_polar_strap_connected") == "on", "strap connected")
        mv = st(f"sensor.affectgate_{GW}_model_version")
        check(bool(mv) and mv.startswith("affectgate-arousal"), f"model version ({mv})")
        check(st(f"sensor.affectgate_{GW}_retraining") in ["idle", "waiting"],
              f"retraining state ({st(f'sensor.affectgate_{GW}_retraining')})")
        # The update entity's last recorded state and attributes (the recorder keeps them).
        db = sqlite3.connect(os.path.join(cfg, "home-assistant_v2.db"))
        row = db.execute(
            "SELECT s.state, a.shared_attrs FROM states s "
            "JOIN states_meta m ON s.metadata_id = m.metadata_id "
            "LEFT JOIN state_attributes a ON s.attributes_id = a.attributes_id "
            "WHERE m.entity_id = ? AND s.state NOT IN ('unavailable', 'unknown') "
            "ORDER BY s.last_updated_ts DESC LIMIT 1",
            (f"update.affectgate_{GW}_model_update",)).fetchone()
        db.close()
        ust, ua = (row[0], json.loads(row[1] or "{}")) if row else (None, {})
        check(ust == "on" and ua.get("installed_version") == "shipped"
              and ua.get("latest_version") == "arousal-v3",
              f"update entity: arousal-v3 available over shipped ({ust}, "
              f"{ua.get('installed_version')} -> {ua.get('latest_version')})")
        le = st(f"sensor.affectgate_{GW}_last_input_error") or ""
        check("r0404" in le, f"the refused promote answered in Last input error ({le[:80]!r})")
        # Every WARNING/ERROR line, except two about this machine's missing C libraries.
        unrelated = ("[aiohttp_fast_zlib]", "[homeassistant.components.camera.img_util]")
        bad = [l for l in read_log().splitlines()
               if (" WARNING " in l or " ERROR " in l) and not any(u in l for u in unrelated)]
        for l in bad:
            print("     " + l[:300])
        check(not bad, f"no warning or error in Home Assistant's log ({len(bad)})")
        print(f"Home Assistant {version}: {len(failures)} failed of the checks above")
        return 1 if failures else 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.environ.get("KEEP"):
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
