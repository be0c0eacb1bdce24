#!/usr/bin/env python3
"""Independent BLE central (bleak over BlueZ D-Bus) that exercises fake_h10.py.

Scans on --adapter (default hci0), finds the device by name, connects and, per
profile, checks what a real gateway would rely on. Prints a JSON summary as the
last stdout line; exit status 0 iff every check passed.

  pmd:     indications on the PMD control point + notifications on PMD data
           (+ heart rate) first, read CP features, get settings, start ECG
           (retrying on timeout), count frames/samples, check the
           last-sample timestamps advance by n/fs, compare samples against the
           csv, survive a link drop (reconnect, re-subscribe, start again).
  hr:      heart-rate notifications only; checks flags/HR/RR against the csv.
  generic: raw sample notifications; decodes --generic-format and checks the
           samples are a contiguous run of the csv.

Uses DBUS_SYSTEM_BUS_ADDRESS like any BlueZ client.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import json
import logging
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any, Optional

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice

log = logging.getLogger("check_client")

POLAR_EPOCH_NS = 946_684_800 * 1_000_000_000
PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CP = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"
HR_SERVICE = "0000180d-0000-1000-8000-00805f9b34fb"
HR_MEAS = "00002a37-0000-1000-8000-00805f9b34fb"
BATTERY = "00002a19-0000-1000-8000-00805f9b34fb"
START_ECG = bytes.fromhex("02000001820001010e00")
GET_SETTINGS = bytes.fromhex("0100")
STOP_ECG = bytes.fromhex("0300")


class Failures(list):
    def check(self, cond: bool, msg: str) -> bool:
        if not cond:
            self.append(msg)
            log.error("CHECK FAILED: %s", msg)
        return cond


def load_csv(path: Path):
    t, uv, hr = [], [], []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            t.append(int(row["time_ns"]))
            uv.append(int(float(row["ecg_uv"])))
            h, r = (row["hr_bpm"] or "").strip(), (row["rr_ms"] or "").strip()
            if h:
                hr.append([int(float(h)), [int(float(r))] if r else []])
            elif r and hr:
                hr[-1][1].append(int(float(r)))
    return t, uv, hr


def decode_hr(data: bytes) -> tuple[int, int, list[float]]:
    flags = data[0]
    i = 1
    if flags & 0x01:
        hr = struct.unpack_from("<H", data, i)[0]
        i += 2
    else:
        hr = data[i]
        i += 1
    if flags & 0x08:
        i += 2
    rr = []
    if flags & 0x10:
        while i + 1 < len(data):
            rr.append(struct.unpack_from("<H", data, i)[0] * 1000 / 1024)
            i += 2
    return flags, hr, rr


def decode_ecg(data: bytes) -> tuple[int, list[int]]:
    assert data[0] == 0x00 and data[9] == 0x00, data[:10].hex()
    ts = struct.unpack_from("<Q", data, 1)[0]
    body = data[10:]
    assert len(body) % 3 == 0, len(body)
    samples = [int.from_bytes(body[k:k + 3], "little", signed=True)
               for k in range(0, len(body), 3)]
    return ts, samples


def decode_generic(data: bytes, fmt: str) -> list[int]:
    n = 2 if fmt.startswith("i16") else 3
    order = "little" if fmt.endswith("le") else "big"
    assert len(data) % n == 0, len(data)
    return [int.from_bytes(data[k:k + n], order, signed=True) for k in range(0, len(data), n)]


async def scan(name: str, adapter: str, timeout: float) -> tuple[BLEDevice, Any]:
    found: dict[str, Any] = {}
    ev = asyncio.Event()

    def cb(dev: BLEDevice, adv) -> None:
        if (adv.local_name or dev.name) == name:
            found["dev"], found["adv"] = dev, adv
            ev.set()

    t0 = time.monotonic()
    async with BleakScanner(cb, bluez={"adapter": adapter}):
        await asyncio.wait_for(ev.wait(), timeout)
    log.info("found %s (%s) after %.2f s: uuids=%s rssi=%s", name, found["dev"].address,
             time.monotonic() - t0, found["adv"].service_uuids, found["adv"].rssi)
    return found["dev"], found["adv"]


class Session:
    """One connected period."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, int, list[int]]] = []  # (wall, ts, samples)
        self.generic: list[int] = []
        self.generic_notifications = 0
        self.hr: list[tuple[int, int, list[float]]] = []
        self.t_connect = 0.0
        self.t_first = None
        self.t_last = None
        self.t_disconnect = None


class Checker:

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.fail = Failures()
        self.sessions: list[Session] = []
        self.cp_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.csv_t, self.csv_uv, self.csv_hr = load_csv(args.csv)
        self.summary: dict[str, Any] = {"profile": args.profile}

    # -- callbacks ---------------------------------------------------------------------
    def on_disconnect(self, _client: BleakClient) -> None:
        log.info("disconnected")
        if self.sessions:
            self.sessions[-1].t_disconnect = time.monotonic()
        self.disconnected.set()

    def on_cp(self, _c, data: bytearray) -> None:
        log.info("cp indication %s", bytes(data).hex())
        self.cp_queue.put_nowait(bytes(data))

    def on_data(self, _c, data: bytearray) -> None:
        s = self.sessions[-1]
        now = time.monotonic()
        if s.t_first is None:
            s.t_first = now
        s.t_last = now
        ts, samples = decode_ecg(bytes(data))
        s.frames.append((now, ts, samples))

    def on_hr(self, _c, data: bytearray) -> None:
        s = self.sessions[-1]
        if s.t_first is None and self.args.profile == "hr":
            s.t_first = time.monotonic()
        if self.args.profile == "hr":
            s.t_last = time.monotonic()
        s.hr.append(decode_hr(bytes(data)))

    def on_generic(self, _c, data: bytearray) -> None:
        s = self.sessions[-1]
        if s.t_first is None:
            s.t_first = time.monotonic()
        s.t_last = time.monotonic()
        s.generic.extend(decode_generic(bytes(data), self.args.generic_format))
        s.generic_notifications += 1

    # -- helpers -----------------------------------------------------------------------
    async def cp_command(self, client: BleakClient, cmd: bytes, timeout: float) -> Optional[bytes]:
        while not self.cp_queue.empty():
            self.cp_queue.get_nowait()
        await client.write_gatt_char(PMD_CP, cmd, response=True)
        try:
            while True:
                resp = await asyncio.wait_for(self.cp_queue.get(), timeout)
                if len(resp) >= 2 and resp[0] == 0xF0 and resp[1] == cmd[0]:
                    return resp
        except asyncio.TimeoutError:
            return None

    def recorded_s(self) -> float:
        ts = [f[1] for s in self.sessions for f in s.frames]
        if self.args.profile == "generic":
            return sum(len(s.generic) for s in self.sessions) / 130.16
        if self.args.profile == "hr":
            return float(sum(len(s.hr) for s in self.sessions))
        return (ts[-1] - ts[0]) / 1e9 if len(ts) > 1 else 0.0

    async def connect(self, first: bool) -> BleakClient:
        a = self.args
        if first or a.rescan:
            dev, adv = await scan(a.name, a.adapter, a.scan_timeout)
            self.device = dev
        else:
            dev = self.device  # reconnect to the known device, like most gateways do
        if first:
            self.summary["scan"] = {"address": dev.address, "name": adv.local_name,
                                    "service_uuids": sorted(adv.service_uuids),
                                    "rssi": adv.rssi}
        self.disconnected.clear()
        client = BleakClient(dev, disconnected_callback=self.on_disconnect,
                             bluez={"adapter": a.adapter})
        t0 = time.monotonic()
        await client.connect(timeout=a.connect_timeout)
        log.info("connected in %.2f s", time.monotonic() - t0)
        s = Session()
        s.t_connect = time.monotonic()
        self.sessions.append(s)
        uuids = {str(c.uuid) for svc in client.services for c in svc.characteristics}
        svcs = sorted(str(svc.uuid) for svc in client.services)
        log.info("services: %s", svcs)
        if first:
            self.summary["services"] = svcs
        # duplicate services would mean stale GATT objects from a previous link
        self.fail.check(len(svcs) == len(set(svcs)), f"duplicate services exported: {svcs}")
        if a.profile == "pmd":
            self.fail.check({PMD_CP, PMD_DATA, HR_MEAS} <= uuids, f"missing chars: {uuids}")
        elif a.profile == "hr":
            self.fail.check(HR_MEAS in uuids and PMD_CP not in uuids, f"chars: {uuids}")
        else:
            self.fail.check(a.generic_char in uuids, f"chars: {uuids}")
        return client

    # -- profiles ----------------------------------------------------------------------
    async def start_ecg(self, client: BleakClient) -> bool:
        a = self.args
        for attempt in range(1, a.start_retries + 2):
            t0 = time.monotonic()
            resp = await self.cp_command(client, START_ECG, a.start_timeout)
            if resp is None:
                log.warning("start attempt %d: no response in %.1f s", attempt, a.start_timeout)
                self.summary.setdefault("start_timeouts", 0)
                self.summary["start_timeouts"] += 1
                continue
            log.info("start attempt %d: %s after %.2f s", attempt, resp.hex(),
                     time.monotonic() - t0)
            self.summary.setdefault("start_responses", []).append(
                {"hex": resp.hex(), "after_s": round(time.monotonic() - t0, 3)})
            if resp[3] in (0, 6):
                return True
            self.fail.check(False, f"start failed: {resp.hex()}")
            return False
        self.fail.check(False, "start: no response after retries")
        return False

    async def run_pmd_session(self, client: BleakClient, first: bool) -> None:
        a = self.args
        # Subscribe FIRST (as the Polar SDK does), then talk to the control point.
        await client.start_notify(PMD_CP, self.on_cp)
        await client.start_notify(PMD_DATA, self.on_data)
        if a.with_hr:
            await client.start_notify(HR_MEAS, self.on_hr)
        feat = bytes(await client.read_gatt_char(PMD_CP))
        self.fail.check(feat == bytes.fromhex("0f0500"), f"cp read {feat.hex()}")
        if first:
            self.summary["cp_read"] = feat.hex()
            resp = await self.cp_command(client, GET_SETTINGS, 5)
            self.summary["get_settings"] = resp.hex() if resp else None
            self.fail.check(resp == bytes.fromhex("f001000000000182000101" + "0e00"),
                            f"get settings response {resp.hex() if resp else None}")
            # an error path: unknown op code
            bad = await self.cp_command(client, bytes.fromhex("0900"), 5)
            self.fail.check(bad is not None and bad[3] == 1, f"bad op response {bad}")
            self.summary["bad_op_response"] = bad.hex() if bad else None
            # write-without-response must be refused (CP has no such property)
            try:
                await client.write_gatt_char(PMD_CP, GET_SETTINGS, response=False)
                self.summary["write_without_response"] = "accepted"
            except Exception as e:  # noqa: BLE001
                self.summary["write_without_response"] = f"rejected: {type(e).__name__}: {e}"
        if not await self.start_ecg(client):
            return
        if first:
            again = await self.cp_command(client, START_ECG, 5)
            self.summary["second_start_response"] = again.hex() if again else None
            self.fail.check(again is not None and again[3] == 6, f"second start {again}")

    async def stream_until_done(self, client: BleakClient) -> str:
        """Wait until recording target reached, link lost, or data stops."""
        a = self.args
        last_count, last_change = -1, time.monotonic()
        while True:
            if self.disconnected.is_set():
                return "disconnected"
            if self.recorded_s() >= a.recording_s:
                return "target"
            s = self.sessions[-1]
            count = len(s.frames) + len(s.generic) + len(s.hr)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > a.idle_timeout:
                return "idle"
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        a = self.args
        t_start = time.monotonic()
        first = True
        reconnects = 0
        while True:
            client = await self.connect(first)
            if a.profile == "pmd":
                await self.run_pmd_session(client, first)
                why = await self.stream_until_done(client)
            elif a.profile == "hr":
                await client.start_notify(HR_MEAS, self.on_hr)
                bat = bytes(await client.read_gatt_char(BATTERY))
                self.summary["battery"] = bat[0] if bat else None
                why = await self.stream_until_done(client)
            else:
                await client.start_notify(a.generic_char, self.on_generic)
                why = await self.stream_until_done(client)
            first = False
            log.info("session %d ended: %s", len(self.sessions), why)
            if why == "disconnected":
                reconnects += 1
                if reconnects > a.max_reconnects:
                    self.fail.check(False, "too many disconnects")
                    break
                await asyncio.sleep(a.reconnect_delay)
                continue
            # finished normally
            if a.profile == "pmd":
                resp = await self.cp_command(client, STOP_ECG, 5)
                self.summary["stop_response"] = resp.hex() if resp else None
                self.fail.check(resp == bytes.fromhex("f003000000"), f"stop response {resp}")
            await client.disconnect()
            break
        self.summary["wall_s"] = round(time.monotonic() - t_start, 3)
        self.summary["reconnects"] = reconnects
        self.analyse()

    # -- analysis ----------------------------------------------------------------------
    def analyse(self) -> None:
        a, S = self.args, self.summary
        if a.expect_drop:
            self.fail.check(S["reconnects"] >= 1, "expected a link drop")
        if a.profile == "pmd":
            self.analyse_pmd()
        elif a.profile == "hr":
            self.analyse_hr()
        else:
            self.analyse_generic()

    def _rate(self, s: Session, n: int) -> Optional[float]:
        # n items arrived between the first and the last arrival: n-1 intervals
        if s.t_first is None or s.t_last is None or n < 2:
            return None
        return round((n - 1) / max(s.t_last - s.t_first, 1e-6), 2)

    def analyse_pmd(self) -> None:
        S, fail = self.summary, self.fail
        all_frames = [f for s in self.sessions for f in s.frames]
        fail.check(len(all_frames) > 10, "too few frames")
        if not all_frames:
            return
        # sample period from the data itself
        per = [(f2[1] - f1[1]) / len(f2[2]) for s in self.sessions
               for f1, f2 in zip(s.frames, s.frames[1:])]
        period = statistics.median(per) if per else 1e9 / 130
        S["sample_rate_hz_from_timestamps"] = round(1e9 / period, 3)
        sessions = []
        for s in self.sessions:
            bad = dup = 0
            for f1, f2 in zip(s.frames, s.frames[1:]):
                dt = f2[1] - f1[1]
                if dt == 0:
                    dup += 1
                elif abs(dt - len(f2[2]) * period) > 0.002e9:   # 2 ms
                    bad += 1
            n = sum(len(f[2]) for f in s.frames)
            sessions.append({"frames": len(s.frames), "samples": n,
                             "samples_per_frame": sorted({len(f[2]) for f in s.frames}),
                             "duplicate_frames": dup, "timestamp_anomalies": bad,
                             "frames_per_wall_s": self._rate(s, len(s.frames)),
                             "recording_s": round((s.frames[-1][1] - s.frames[0][1]) / 1e9
                                                  + len(s.frames[0][2]) * period / 1e9, 3)
                             if s.frames else 0,
                             "hr_notifications": len(s.hr)})
            fail.check(dup == 0, f"{dup} duplicate frames")
            fail.check(bad == 0, f"{bad} timestamp anomalies")
        S["sessions"] = sessions
        # gaps between sessions
        gaps = []
        for s1, s2 in zip(self.sessions, self.sessions[1:]):
            if s1.frames and s2.frames:
                gap = (s2.frames[0][1] - s1.frames[-1][1]) / 1e9
                lost = round(gap * 1e9 / period) - len(s2.frames[0][2])
                gaps.append({"timestamp_gap_s": round(gap, 4), "lost_samples": lost,
                             "reconnect_wall_s": round(s2.t_first - s1.t_disconnect, 3)
                             if s1.t_disconnect and s2.t_first else None})
        S["gaps"] = gaps
        # compare against the csv
        mism = missing = 0
        for _, ts, samples in all_frames:
            row = bisect.bisect_left(self.csv_t, ts + POLAR_EPOCH_NS)
            if row >= len(self.csv_t) or self.csv_t[row] != ts + POLAR_EPOCH_NS:
                missing += 1
                continue
            if self.csv_uv[row - len(samples) + 1:row + 1] != samples:
                mism += 1
        S["csv_compare"] = {"frames_checked": len(all_frames), "timestamp_not_in_csv": missing,
                            "sample_mismatch": mism}
        fail.check(missing == 0 and mism == 0, "frames differ from csv")
        if self.args.with_hr:
            self.analyse_hr(key="hr")

    def analyse_hr(self, key: str = "hr_sessions") -> None:
        S, fail = self.summary, self.fail
        reports = [h for s in self.sessions for h in s.hr]
        fail.check(len(reports) > 0, "no HR notifications")
        flags = sorted({r[0] for r in reports})
        # find our sequence in the csv's HR reports (compare HR + rounded RR)
        csv_seq = [(h, [round(x * 1024 / 1000) * 1000 / 1024 for x in rr])
                   for h, rr in self.csv_hr]
        got = [(r[1], r[2]) for r in reports]
        match = 0
        if got:
            # locate first report
            start = next((i for i in range(len(csv_seq))
                          if csv_seq[i][0] == got[0][0] and
                          all(abs(x - y) < 1e-6 for x, y in zip(csv_seq[i][1], got[0][1]))
                          and len(csv_seq[i][1]) == len(got[0][1])), None)
            if start is not None:
                j = start
                for g in got:
                    # allow skipped reports (link drop)
                    while j < len(csv_seq) and not (
                            csv_seq[j][0] == g[0] and len(csv_seq[j][1]) == len(g[1]) and
                            all(abs(x - y) < 1e-6 for x, y in zip(csv_seq[j][1], g[1]))):
                        j += 1
                    if j < len(csv_seq):
                        match += 1
                        j += 1
        S[key] = {"notifications": len(reports), "flags": [f"0x{f:02x}" for f in flags],
                  "hr_values": sorted({r[1] for r in reports})[:10],
                  "rr_intervals": sum(len(r[2]) for r in reports),
                  "matched_csv_reports": match,
                  "per_session": [len(s.hr) for s in self.sessions],
                  "notifications_per_wall_s": [self._rate(s, len(s.hr)) for s in self.sessions]}
        fail.check(set(flags) <= {0x06, 0x16}, f"unexpected HR flags {flags}")
        fail.check(match == len(reports), f"HR reports not in csv order: {match}/{len(reports)}")

    def analyse_generic(self) -> None:
        S, fail, a = self.summary, self.fail, self.args
        n_bytes = 2 if a.generic_format.startswith("i16") else 3
        lo, hi = -(1 << (8 * n_bytes - 1)), (1 << (8 * n_bytes - 1)) - 1
        expect = [max(lo, min(hi, round(v / a.generic_scale_uv))) for v in self.csv_uv]
        sessions = []
        for s in self.sessions:
            got = s.generic
            ok = False
            start = None
            if len(got) >= 50:
                probe = got[:50]
                for i in range(len(expect) - 50):
                    if expect[i:i + 50] == probe:
                        start = i
                        break
                ok = start is not None and expect[start:start + len(got)] == got
            sessions.append({"notifications": s.generic_notifications, "samples": len(got),
                             "csv_start_row": start, "matches_csv": ok,
                             "notifications_per_wall_s": self._rate(s, s.generic_notifications),
                             "samples_per_notification": (len(got) / s.generic_notifications
                                                          if s.generic_notifications else 0)})
            fail.check(ok, "generic samples are not a contiguous csv run")
        S["sessions"] = sessions


def parse_args() -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="Polar H10 1A2B3C4D")
    p.add_argument("--adapter", default="hci0")
    p.add_argument("--profile", choices=("pmd", "hr", "generic"), default="pmd")
    p.add_argument("--csv", type=Path, default=None)
    p.add_argument("--recording-s", type=float, default=60.0,
                   help="stop after this much recording time was received")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="stop when no data arrived for this many wall seconds")
    p.add_argument("--expect-drop", action="store_true")
    p.add_argument("--with-hr", action="store_true", help="pmd: also subscribe to 0x2A37")
    p.add_argument("--start-timeout", type=float, default=5.0)
    p.add_argument("--start-retries", type=int, default=3)
    p.add_argument("--scan-timeout", type=float, default=20.0)
    p.add_argument("--connect-timeout", type=float, default=20.0)
    p.add_argument("--rescan", action="store_true",
                   help="scan again before each reconnect (default: reuse the known device)")
    p.add_argument("--reconnect-delay", type=float, default=0.5)
    p.add_argument("--max-reconnects", type=int, default=3)
    p.add_argument("--generic-char", default="6e400003-b5a3-f393-e0a9-e50e24dcca9e")
    p.add_argument("--generic-format", default="i16le",
                   choices=("i16le", "i16be", "i24le", "i24be"))
    p.add_argument("--generic-scale-uv", type=float, default=1.0)
    a = p.parse_args()
    if a.csv is None:
        sys.path.insert(0, str(here))
        sys.dont_write_bytecode = True  # no __pycache__ in the source tree
        from fake_h10 import default_csv  # noqa: E402
        a.csv = default_csv()
    return a


async def amain() -> int:
    args = parse_args()
    chk = Checker(args)
    try:
        await asyncio.wait_for(chk.run(), args.recording_s * 10 + 120)
    except Exception as e:  # noqa: BLE001
        log.exception("check client crashed")
        chk.fail.append(f"exception: {type(e).__name__}: {e}")
    chk.summary["failures"] = list(chk.fail)
    chk.summary["ok"] = not chk.fail
    print(json.dumps(chk.summary), flush=True)
    return 0 if not chk.fail else 1


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s check_client %(levelname)s %(message)s")
    sys.exit(asyncio.run(amain()))
