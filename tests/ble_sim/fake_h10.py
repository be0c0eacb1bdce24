#!/usr/bin/env python3
"""Fake Polar H10 (and friends) BLE peripheral for the BlueZoo BlueZ mock.

Runs as a GATT server + LE advertiser on one BlueZoo adapter (default hci1),
so that a central on another BlueZoo adapter (hci0, e.g. the gateway via
btleplug) can discover it, connect, subscribe and receive ECG frames replayed
from a recorded CSV.

Only depends on `sdbus` (BlueZoo itself is the separate `org.bluez` process).
Machine-readable events: one JSON object per line on stdout.
Human-readable logs: stderr.

See README.md in this directory for the full description.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import json
import logging
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import sdbus
from sdbus import (DbusInterfaceCommonAsync, DbusObjectManagerInterfaceAsync,
                   DbusPropertyConstFlag, DbusPropertyEmitsChangeFlag, DbusUnprivilegedFlag,
                   dbus_method_async, dbus_property_async)

log = logging.getLogger("fake_h10")

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

POLAR_EPOCH_NS = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z in Unix ns


def uuid16(v: int) -> str:
    return f"0000{v:04x}-0000-1000-8000-00805f9b34fb"


PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CP = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"
HR_SERVICE = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
BATTERY_SERVICE = uuid16(0x180F)
BATTERY_LEVEL = uuid16(0x2A19)
DIS_SERVICE = uuid16(0x180A)
DIS_MANUFACTURER = uuid16(0x2A29)
DIS_MODEL = uuid16(0x2A24)
DIS_FIRMWARE = uuid16(0x2A26)
CCCD = uuid16(0x2902)

APPEARANCE_HEART_RATE_SENSOR = 0x0340

# PMD control point
PMD_FEATURES = bytes([0x0F, 0x05, 0x00])  # read value: ECG (bit0) + ACC (bit2)
PMD_OP_GET_SETTINGS = 0x01
PMD_OP_START = 0x02
PMD_OP_STOP = 0x03
PMD_TYPE_ECG = 0x00
PMD_TYPE_ACC = 0x02
# PMD response status codes (Polar BLE SDK numbering)
ST_SUCCESS = 0
ST_INVALID_OP_CODE = 1
ST_INVALID_MEASUREMENT_TYPE = 2
ST_NOT_SUPPORTED = 3
ST_INVALID_PARAMETER = 5
ST_ALREADY_IN_STATE = 6
ECG_SETTINGS_TLV = bytes([0x00, 0x01, 0x82, 0x00, 0x01, 0x01, 0x0E, 0x00])
ECG_SAMPLE_RATE = 130
ECG_RESOLUTION = 14
ECG_SAMPLES_PER_FRAME = 73

GENERIC_FORMATS = {
    # name: (struct format char per sample or None for 24-bit, byte order, bytes)
    "i16le": 2, "i16be": 2, "i24le": 3, "i24be": 3,
}

APP_ROOT = "/com/affectgate/fakeh10"
ADV_PATH = "/com/affectgate/fakeh10adv/adv0"


# --------------------------------------------------------------------------------------
# Events on stdout
# --------------------------------------------------------------------------------------

def emit(event: str, **kw: Any) -> None:
    obj = {"event": event, **kw, "t": round(time.time(), 3)}
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------
# BlueZ D-Bus errors (raised back to the remote caller)
# --------------------------------------------------------------------------------------

class BluezFailed(sdbus.DbusFailedError):
    dbus_error_name = "org.bluez.Error.Failed"


class BluezNotSupported(sdbus.DbusFailedError):
    dbus_error_name = "org.bluez.Error.NotSupported"


class BluezNotPermitted(sdbus.DbusFailedError):
    dbus_error_name = "org.bluez.Error.NotPermitted"


class BluezInvalidOffset(sdbus.DbusFailedError):
    dbus_error_name = "org.bluez.Error.InvalidOffset"


# --------------------------------------------------------------------------------------
# Local (exported) objects: GATT application + advertisement
# --------------------------------------------------------------------------------------

class GattService(DbusInterfaceCommonAsync, interface_name="org.bluez.GattService1"):

    def __init__(self, uuid: str, primary: bool = True):
        super().__init__()
        self._uuid = uuid
        self._primary = primary

    @dbus_property_async("s", flags=DbusPropertyConstFlag)
    def UUID(self) -> str:
        return self._uuid

    @dbus_property_async("b", flags=DbusPropertyConstFlag)
    def Primary(self) -> bool:
        return self._primary


class GattCharacteristic(DbusInterfaceCommonAsync,
                         interface_name="org.bluez.GattCharacteristic1"):
    """A GATT characteristic of the local application.

    Deliberately does NOT expose WriteAcquired/NotifyAcquired/MTU/Handle:
    BlueZoo then uses the plain D-Bus paths (WriteValue, StartNotify +
    PropertiesChanged(Value) + Confirm) and assigns handles itself.
    """

    def __init__(self, uuid: str, service_path: str, flags: list[str], value: bytes = b"",
                 name: str = "",
                 on_read: Optional[Callable[[], bytes]] = None,
                 on_write: Optional[Callable[[bytes, dict], Awaitable[None]]] = None,
                 on_notify: Optional[Callable[[bool], None]] = None):
        super().__init__()
        self._uuid = uuid
        self._service_path = service_path
        self._flags = list(flags)
        self._value = bytes(value)
        self._notifying = False
        self.name = name or uuid
        self.on_read = on_read
        self.on_write = on_write
        self.on_notify = on_notify
        self.confirms = 0
        self.sent = 0

    # -- methods --------------------------------------------------------------------

    @dbus_method_async(input_signature="a{sv}", result_signature="ay",
                       flags=DbusUnprivilegedFlag)
    async def ReadValue(self, options: dict[str, tuple[str, Any]]) -> bytes:
        if "read" not in self._flags:
            raise BluezNotPermitted("Read not permitted")
        data = self.on_read() if self.on_read else self._value
        offset = int(options.get("offset", ("q", 0))[1])
        if offset > len(data):
            raise BluezInvalidOffset("Invalid offset")
        log.debug("read %s -> %s", self.name, data.hex())
        return bytes(data[offset:])

    @dbus_method_async(input_signature="aya{sv}", result_signature="",
                       flags=DbusUnprivilegedFlag)
    async def WriteValue(self, value: bytes, options: dict[str, tuple[str, Any]]) -> None:
        wtype = options.get("type", ("s", ""))[1]
        value = bytes(value)
        if "write" not in self._flags and "write-without-response" not in self._flags:
            emit("write_rejected", uuid=self._uuid, hex=value.hex(), type=wtype,
                 error="NotPermitted")
            raise BluezNotPermitted("Write not permitted")
        # Mirror what real BlueZ (central side) enforces: a write-without-response
        # ("command") is only possible if the characteristic has that property.
        if wtype == "command" and "write-without-response" not in self._flags:
            emit("write_rejected", uuid=self._uuid, hex=value.hex(), type=wtype,
                 error="NotSupported")
            raise BluezNotSupported("Write without response not supported")
        if self.on_write:
            await self.on_write(value, options)
        else:
            self._value = value

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def StartNotify(self) -> None:
        if "notify" not in self._flags and "indicate" not in self._flags:
            raise BluezNotSupported("Notify not supported")
        if self._notifying:
            return
        await self.Notifying.set_async(True)
        emit("notify", uuid=self._uuid, name=self.name, enabled=True)
        if self.on_notify:
            self.on_notify(True)

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def StopNotify(self) -> None:
        if not self._notifying:
            return
        await self.Notifying.set_async(False)
        emit("notify", uuid=self._uuid, name=self.name, enabled=False)
        if self.on_notify:
            self.on_notify(False)

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def Confirm(self) -> None:
        # BlueZoo calls this after forwarding every Value change to the central
        # (for notifications as well as indications).
        self.confirms += 1

    # -- properties -----------------------------------------------------------------

    @dbus_property_async("s", flags=DbusPropertyConstFlag)
    def UUID(self) -> str:
        return self._uuid

    @dbus_property_async("o", flags=DbusPropertyConstFlag)
    def Service(self) -> str:
        return self._service_path

    @dbus_property_async("as", flags=DbusPropertyConstFlag)
    def Flags(self) -> list[str]:
        return self._flags

    @dbus_property_async("ay", flags=DbusPropertyEmitsChangeFlag)
    def Value(self) -> bytes:
        return self._value

    @Value.setter_private
    def _set_value(self, value: bytes) -> None:
        self._value = value

    @dbus_property_async("b", flags=DbusPropertyEmitsChangeFlag)
    def Notifying(self) -> bool:
        return self._notifying

    @Notifying.setter_private
    def _set_notifying(self, value: bool) -> None:
        self._notifying = value

    # -- helpers --------------------------------------------------------------------

    @property
    def notifying(self) -> bool:
        return self._notifying

    async def send(self, data: bytes) -> bool:
        """Notify/indicate `data` if a client subscribed; returns True if sent."""
        if not self._notifying:
            self._value = bytes(data)
            return False
        await self.Value.set_async(bytes(data))
        self.sent += 1
        return True

    async def reset_notifying(self) -> None:
        if self._notifying:
            await self.Notifying.set_async(False)
            emit("notify", uuid=self._uuid, name=self.name, enabled=False, reason="reset")
            if self.on_notify:
                self.on_notify(False)


class GattDescriptor(DbusInterfaceCommonAsync, interface_name="org.bluez.GattDescriptor1"):
    """Read-only Client Characteristic Configuration descriptor mirror.

    Subscriptions must go through StartNotify (that is what BlueZ clients do);
    the descriptor only reports the current state.
    """

    def __init__(self, uuid: str, char_path: str, char: GattCharacteristic):
        super().__init__()
        self._uuid = uuid
        self._char_path = char_path
        self._char = char

    def _current(self) -> bytes:
        if not self._char.notifying:
            return b"\x00\x00"
        return b"\x02\x00" if "indicate" in self._char._flags else b"\x01\x00"

    @dbus_method_async(input_signature="a{sv}", result_signature="ay",
                       flags=DbusUnprivilegedFlag)
    async def ReadValue(self, options: dict[str, tuple[str, Any]]) -> bytes:
        return self._current()

    @dbus_method_async(input_signature="aya{sv}", result_signature="",
                       flags=DbusUnprivilegedFlag)
    async def WriteValue(self, value: bytes, options: dict[str, tuple[str, Any]]) -> None:
        raise BluezNotPermitted("Use StartNotify/StopNotify")

    @dbus_property_async("s", flags=DbusPropertyConstFlag)
    def UUID(self) -> str:
        return self._uuid

    @dbus_property_async("o", flags=DbusPropertyConstFlag)
    def Characteristic(self) -> str:
        return self._char_path

    @dbus_property_async("as", flags=DbusPropertyConstFlag)
    def Flags(self) -> list[str]:
        return ["read"]

    @dbus_property_async("ay", flags=DbusPropertyEmitsChangeFlag)
    def Value(self) -> bytes:
        return self._current()


class LEAdvertisement(DbusInterfaceCommonAsync, interface_name="org.bluez.LEAdvertisement1"):

    def __init__(self, local_name: str, service_uuids: list[str], appearance: Optional[int]):
        super().__init__()
        self._name = local_name
        self._uuids = service_uuids
        self._appearance = appearance
        self.released = False

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def Release(self) -> None:
        self.released = True
        log.warning("advertisement released by BlueZ")

    @dbus_property_async("s", flags=DbusPropertyConstFlag)
    def Type(self) -> str:
        return "peripheral"

    @dbus_property_async("as", flags=DbusPropertyConstFlag)
    def ServiceUUIDs(self) -> list[str]:
        return self._uuids

    @dbus_property_async("s", flags=DbusPropertyConstFlag)
    def LocalName(self) -> str:
        return self._name

    @dbus_property_async("q", flags=DbusPropertyConstFlag)
    def Appearance(self) -> int:
        return self._appearance if self._appearance is not None else 0

    # BlueZoo: an advertisement's Discoverable overrides the adapter's
    # Discoverable property for LE scans (so the adapter itself can stay
    # non-discoverable, see README "quirks").
    @dbus_property_async("b", flags=DbusPropertyConstFlag)
    def Discoverable(self) -> bool:
        return True


# --------------------------------------------------------------------------------------
# Proxies for org.bluez (BlueZoo) objects
# --------------------------------------------------------------------------------------

class Adapter1(DbusInterfaceCommonAsync, interface_name="org.bluez.Adapter1"):

    @dbus_property_async("s")
    def Address(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s")
    def Alias(self) -> str:
        raise NotImplementedError

    @Alias.setter
    def _alias(self, v: str) -> None:
        raise NotImplementedError

    @dbus_property_async("b")
    def Powered(self) -> bool:
        raise NotImplementedError

    @Powered.setter
    def _powered(self, v: bool) -> None:
        raise NotImplementedError


class BluezooPatches1(DbusInterfaceCommonAsync, interface_name="com.affectgate.BluezooPatches1"):

    @dbus_property_async("as")
    def Patches(self) -> list[str]:
        raise NotImplementedError


class Device1(DbusInterfaceCommonAsync, interface_name="org.bluez.Device1"):

    @dbus_property_async("b")
    def Connected(self) -> bool:
        raise NotImplementedError

    @dbus_method_async()
    async def Disconnect(self) -> None:
        raise NotImplementedError


class GattManager1(DbusInterfaceCommonAsync, interface_name="org.bluez.GattManager1"):

    @dbus_method_async(input_signature="oa{sv}")
    async def RegisterApplication(self, application: str,
                                  options: dict[str, tuple[str, Any]]) -> None:
        raise NotImplementedError

    @dbus_method_async(input_signature="o")
    async def UnregisterApplication(self, application: str) -> None:
        raise NotImplementedError


class LEAdvertisingManager1(DbusInterfaceCommonAsync,
                            interface_name="org.bluez.LEAdvertisingManager1"):

    @dbus_method_async(input_signature="oa{sv}")
    async def RegisterAdvertisement(self, advertisement: str,
                                    options: dict[str, tuple[str, Any]]) -> None:
        raise NotImplementedError

    @dbus_method_async(input_signature="o")
    async def UnregisterAdvertisement(self, advertisement: str) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------

class Recording:
    """The CSV: one row per ECG sample; hr_bpm/rr_ms filled on report rows.

    HR reports: a row with hr_bpm starts a report (one per second on the H10);
    directly following rows carrying only rr_ms add further RR intervals to it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.t: list[int] = []
        self.uv: list[int] = []
        self.hr_rows: list[int] = []                      # row index of each report
        self.hr_reports: list[tuple[int, list[int]]] = []  # (hr_bpm, [rr_ms...])
        with open(path, newline="") as f:
            rd = csv.DictReader(f)
            last_hr = None
            for i, row in enumerate(rd):
                self.t.append(int(row["time_ns"]))
                self.uv.append(int(float(row["ecg_uv"])))
                hr_s = (row.get("hr_bpm") or "").strip()
                rr_s = (row.get("rr_ms") or "").strip()
                if hr_s:
                    last_hr = int(float(hr_s))
                    self.hr_rows.append(i)
                    self.hr_reports.append((last_hr, [int(float(rr_s))] if rr_s else []))
                elif rr_s:
                    if self.hr_rows and i - self.hr_rows[-1] <= 3:
                        self.hr_reports[-1][1].append(int(float(rr_s)))
                    elif last_hr is not None:
                        self.hr_rows.append(i)
                        self.hr_reports.append((last_hr, [int(float(rr_s))]))
        self.n = len(self.t)
        if self.n < 2:
            raise SystemExit(f"{path}: need at least 2 rows")
        self.sample_rate = (self.n - 1) * 1e9 / (self.t[-1] - self.t[0])

    def row_at_or_after(self, t_ns: float, lo: int = 0) -> int:
        return bisect.bisect_left(self.t, t_ns, lo)


def default_csv() -> Path:
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get("AFFECTGATE_H10_CSV"):
        candidates.append(Path(os.environ["AFFECTGATE_H10_CSV"]))
    candidates += [
        here.parent.parent.parent / "shared/data/polar-h10/polar_h10_ecg.csv",
        here.parent.parent / "shared/data/polar-h10/polar_h10_ecg.csv",
        Path("/work/shared/data/polar-h10/polar_h10_ecg.csv"),
    ]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


# --------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------

def encode_ecg_frame(t_last_ns: int, samples: list[int]) -> bytes:
    ts = t_last_ns - POLAR_EPOCH_NS
    out = bytearray([PMD_TYPE_ECG])
    out += struct.pack("<Q", ts & 0xFFFF_FFFF_FFFF_FFFF)
    out.append(0x00)  # frame type 0 (raw, 3-byte samples)
    for v in samples:
        v = max(-(1 << 23), min((1 << 23) - 1, v))
        out += (v & 0xFFFFFF).to_bytes(3, "little")
    return bytes(out)


def encode_hr(hr: int, rr_ms: list[int]) -> bytes:
    flags = 0x06  # sensor contact supported + detected
    body = bytearray()
    if hr > 255:
        flags |= 0x01
        body += struct.pack("<H", hr)
    else:
        body.append(hr)
    if rr_ms:
        flags |= 0x10
        for rr in rr_ms:
            body += struct.pack("<H", max(0, min(0xFFFF, round(rr * 1024 / 1000))))
    return bytes([flags]) + bytes(body)


def encode_generic(samples_uv: list[int], fmt: str, scale_uv: float) -> bytes:
    nbytes = GENERIC_FORMATS[fmt]
    order = "little" if fmt.endswith("le") else "big"
    lo, hi = -(1 << (8 * nbytes - 1)), (1 << (8 * nbytes - 1)) - 1
    out = bytearray()
    for uv in samples_uv:
        v = max(lo, min(hi, round(uv / scale_uv)))
        out += v.to_bytes(nbytes, order, signed=True)
    return bytes(out)


# --------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------

class FakeSensor:

    def __init__(self, args: argparse.Namespace, rec: Recording):
        self.args = args
        self.rec = rec
        self.profile: str = args.profile
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.exit_code = 0

        # recording cursor: next csv row to be played
        self.pos = rec.row_at_or_after(rec.t[0] + args.start_s * 1e9)
        self.hr_next = bisect.bisect_left(rec.hr_rows, self.pos)
        self.first_start_row: Optional[int] = None
        self.limit_row = rec.n
        self.dropped = False
        self.stalled = False
        self.stall_done = False
        self.stalled_frames = 0
        self.ended = False

        # primary stream (ECG for pmd, raw samples for generic, HR for hr)
        self.streaming = False
        self.session_frames = 0
        self.session_samples = 0
        self.total_frames = 0
        self.total_samples = 0
        self.hr_sent = 0
        self.pending_start: Optional[asyncio.Task] = None
        self.ignored_starts = 0

        self.player: Optional[asyncio.Task] = None
        self.anchor_epoch = 0
        self.session_delivered = 0
        self.total_delivered = 0
        self.wake = asyncio.Event()
        self.bg: set[asyncio.Task] = set()
        self.slots: list[Any] = []
        self.watched_devices: dict[str, Any] = {}
        self.connected_peers: set[str] = set()

        self.frame_len = (ECG_SAMPLES_PER_FRAME if self.profile == "pmd"
                          else args.generic_samples if self.profile == "generic" else 0)

        self.chars: list[GattCharacteristic] = []
        self.hr_char: Optional[GattCharacteristic] = None
        self.cp_char: Optional[GattCharacteristic] = None
        self.data_char: Optional[GattCharacteristic] = None
        self.generic_char: Optional[GattCharacteristic] = None

        self.adapter_path = f"/org/bluez/{args.adapter}"
        self.address = ""
        self.app_registered = False
        self.adv_registered = False

    # -- small helpers ----------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.bg.add(task)

        def done(t: asyncio.Task) -> None:
            self.bg.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", exc_info=t.exception())
        task.add_done_callback(done)
        return task

    def rec_s(self, row: int) -> float:
        """Recording seconds of `row` since the first stream start."""
        base = self.first_start_row if self.first_start_row is not None else self.pos
        return (self.rec.t[min(row, self.rec.n - 1)] - self.rec.t[base]) / 1e9

    # -- GATT application ----------------------------------------------------------------

    def build_app(self) -> list[tuple[str, DbusInterfaceCommonAsync]]:
        objs: list[tuple[str, DbusInterfaceCommonAsync]] = []
        si = 0

        def service(uuid: str) -> str:
            nonlocal si
            path = f"{APP_ROOT}/service{si}"
            si += 1
            objs.append((path, GattService(uuid)))
            return path

        def char(spath: str, idx: int, uuid: str, flags: list[str], **kw) -> GattCharacteristic:
            cpath = f"{spath}/char{idx}"
            c = GattCharacteristic(uuid, spath, flags, **kw)
            objs.append((cpath, c))
            if "notify" in flags or "indicate" in flags:
                objs.append((f"{cpath}/desc0", GattDescriptor(CCCD, cpath, c)))
            self.chars.append(c)
            return c

        if self.profile in ("pmd", "hr"):
            s = service(HR_SERVICE)
            self.hr_char = char(s, 0, HR_MEASUREMENT, ["notify"], name="hr_measurement",
                                on_notify=self.on_hr_notify)
            char(s, 1, BODY_SENSOR_LOCATION, ["read"], value=b"\x01", name="body_location")
            s = service(BATTERY_SERVICE)
            char(s, 0, BATTERY_LEVEL, ["read", "notify"], value=bytes([self.args.battery]),
                 name="battery")
            s = service(DIS_SERVICE)
            char(s, 0, DIS_MANUFACTURER, ["read"], value=b"Polar Electro Oy", name="manufacturer")
            char(s, 1, DIS_MODEL, ["read"], value=b"H10", name="model")
            char(s, 2, DIS_FIRMWARE, ["read"], value=b"3.0.35", name="firmware")
        if self.profile == "pmd":
            s = service(PMD_SERVICE)
            self.cp_char = char(s, 0, PMD_CP, ["read", "write", "indicate"], value=PMD_FEATURES,
                                name="pmd_cp", on_read=lambda: PMD_FEATURES,
                                on_write=self.on_cp_write)
            self.data_char = char(s, 1, PMD_DATA, ["notify"], name="pmd_data",
                                  on_notify=self.on_pmd_data_notify)
        if self.profile == "generic":
            s = service(self.args.generic_service.lower())
            self.generic_char = char(s, 0, self.args.generic_char.lower(), ["notify"],
                                     name="generic_data", on_notify=self.on_generic_notify)
        return objs

    def adv_uuids(self) -> list[str]:
        if self.args.adv_uuids is not None:
            return [uuid16(int(u, 16)) if len(u) <= 4 else u.lower()
                    for u in self.args.adv_uuids.split(",") if u]
        if self.profile == "pmd":
            return [HR_SERVICE, PMD_SERVICE]
        if self.profile == "hr":
            return [HR_SERVICE]
        return [self.args.generic_service.lower()]

    # -- startup / shutdown --------------------------------------------------------------

    async def wait_for_adapter(self) -> Adapter1:
        adapter = Adapter1.new_proxy("org.bluez", self.adapter_path)
        deadline = self.loop.time() + self.args.wait_bluez_s
        while True:
            try:
                self.address = await adapter.Address.get_async()
                return adapter
            except Exception as e:  # noqa: BLE001 - bluez not up yet
                if self.loop.time() > deadline:
                    raise SystemExit(f"adapter {self.adapter_path} not available on the bus: {e}")
                await asyncio.sleep(0.2)

    async def start(self) -> None:
        adapter = await self.wait_for_adapter()
        log.info("using %s (%s)", self.adapter_path, self.address)

        # Watch the org.bluez owner: if BlueZoo goes away, we go away.
        bus = sdbus.get_default_bus()
        self.slots.append(await bus.match_signal_async(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
            "NameOwnerChanged", self._on_name_owner_changed))

        await adapter.Alias.set_async(self.args.name)
        if not await adapter.Powered.get_async():
            await adapter.Powered.set_async(True)

        # Watch devices appearing on our adapter (= centrals connecting to us).
        self.slots.append(await bus.match_signal_async(
            "org.bluez", "/", "org.freedesktop.DBus.ObjectManager", "InterfacesAdded",
            self._on_interfaces_added))
        self.slots.append(await bus.match_signal_async(
            "org.bluez", "/", "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved",
            self._on_interfaces_removed))
        om = DbusObjectManagerInterfaceAsync.new_proxy("org.bluez", "/")
        for path, ifaces in (await om.get_managed_objects()).items():
            if "org.bluez.Device1" in ifaces:
                await self._watch_device(path, ifaces["org.bluez.Device1"])

        # GATT application.
        self.om = DbusObjectManagerInterfaceAsync()
        self.om.export_to_dbus(APP_ROOT)
        self.app_handles = []
        for path, obj in self.build_app():
            self.app_handles.append(self.om.export_with_manager(path, obj))
        self.gatt_mgr = GattManager1.new_proxy("org.bluez", self.adapter_path)
        await self.gatt_mgr.RegisterApplication(APP_ROOT, {})
        self.app_registered = True

        # Advertisement.
        self.adv = LEAdvertisement(self.args.name, self.adv_uuids(),
                                   None if self.args.appearance < 0 else self.args.appearance)
        self.adv.export_to_dbus(ADV_PATH)
        self.adv_mgr = LEAdvertisingManager1.new_proxy("org.bluez", self.adapter_path)
        await self.adv_mgr.RegisterAdvertisement(ADV_PATH, {})
        self.adv_registered = True

        self.bluezoo_patches = await self._bluezoo_patches()
        if "reconnect" not in self.bluezoo_patches:
            msg = ("org.bluez is plain BlueZoo: a central cannot reconnect after a "
                   "disconnect (EEXIST on Connect); run tests/ble_sim/bluezoo_fixed.py instead")
            log.warning("%s", msg)
            emit("warning", message=msg)

        emit("ready", address=self.address, name=self.args.name, adapter=self.args.adapter,
             profile=self.profile, speed=self.args.speed, csv=str(self.rec.path),
             csv_rows=self.rec.n, csv_row=self.pos, sample_rate_hz=round(self.rec.sample_rate, 3),
             service_uuids=self.adv_uuids(), bluezoo_patches=self.bluezoo_patches)

    async def _bluezoo_patches(self) -> list[str]:
        try:
            proxy = BluezooPatches1.new_proxy("org.bluez", "/org/bluezoo/affectgate")
            return list(await asyncio.wait_for(proxy.Patches.get_async(), 2.0))
        except Exception:  # noqa: BLE001 - plain BlueZoo
            return []

    async def shutdown(self) -> None:
        if self.streaming:
            self._stop_primary("shutdown")
        if self.pending_start:
            self.pending_start.cancel()
        if self.player:
            self.player.cancel()
        # Like switching the sensor off: the central sees the link go down.
        if self.connected_peers:
            try:
                await asyncio.wait_for(self._disconnect_centrals(), 2.0)
            except Exception as e:  # noqa: BLE001
                log.warning("disconnect on shutdown failed: %s", e)
        for coro, what in ((self._unregister_adv, "advertisement"),
                           (self._unregister_app, "application")):
            try:
                await asyncio.wait_for(coro(), 2.0)
            except Exception as e:  # noqa: BLE001
                log.warning("unregister %s failed: %s", what, e)
        emit("exit", frames=self.total_frames, samples=self.total_samples,
             hr_notifications=self.hr_sent, code=self.exit_code)

    async def _unregister_adv(self) -> None:
        if self.adv_registered:
            self.adv_registered = False
            await self.adv_mgr.UnregisterAdvertisement(ADV_PATH)

    async def _unregister_app(self) -> None:
        if self.app_registered:
            self.app_registered = False
            await self.gatt_mgr.UnregisterApplication(APP_ROOT)

    def _on_name_owner_changed(self, msg) -> None:
        name, old, new = msg.get_contents()
        if name == "org.bluez" and old and not new:
            log.error("org.bluez left the bus; exiting")
            emit("error", message="org.bluez left the bus")
            self.app_registered = self.adv_registered = False
            self.exit_code = 3
            self.stop_event.set()

    # -- connection tracking ---------------------------------------------------------------

    def _on_interfaces_added(self, msg) -> None:
        path, ifaces = msg.get_contents()
        if "org.bluez.Device1" in ifaces:
            self.spawn(self._watch_device(path, ifaces["org.bluez.Device1"]))

    def _on_interfaces_removed(self, msg) -> None:
        path, ifaces = msg.get_contents()
        if "org.bluez.Device1" in ifaces and path in self.watched_devices:
            slot = self.watched_devices.pop(path)
            slot.close()
            if path in self.connected_peers:
                self._on_device_connected(path, False)

    async def _watch_device(self, path: str, props: dict[str, tuple[str, Any]]) -> None:
        # Only devices on OUR adapter represent remote centrals.
        if not path.startswith(self.adapter_path + "/dev_") or path in self.watched_devices:
            return
        bus = sdbus.get_default_bus()

        def on_changed(msg, path=path) -> None:
            iface, changed, _inval = msg.get_contents()
            if iface == "org.bluez.Device1" and "Connected" in changed:
                self._on_device_connected(path, bool(changed["Connected"][1]))

        self.watched_devices[path] = await bus.match_signal_async(
            "org.bluez", path, "org.freedesktop.DBus.Properties", "PropertiesChanged",
            on_changed)
        # The device may have connected between InterfacesAdded and our match
        # being installed: read the current state now that no change can be missed.
        try:
            connected = await Device1.new_proxy("org.bluez", path).Connected.get_async()
        except Exception:  # noqa: BLE001 - removed meanwhile
            connected = bool(props.get("Connected", ("b", False))[1])
        self._on_device_connected(path, bool(connected))

    def _on_device_connected(self, path: str, connected: bool) -> None:
        peer = path.rsplit("dev_", 1)[-1].replace("_", ":")
        if connected and path not in self.connected_peers:
            self.connected_peers.add(path)
            log.info("central %s connected", peer)
            emit("connected", peer=peer)
        elif not connected and path in self.connected_peers:
            self.connected_peers.discard(path)
            log.info("central %s disconnected", peer)
            emit("disconnected", peer=peer)
            if not self.connected_peers:
                self._stop_all("disconnected")
                self.spawn(self._on_link_lost("disconnected"))

    def _stop_all(self, reason: str) -> None:
        if self.pending_start:
            self.pending_start.cancel()
            self.pending_start = None
            emit("start_cancelled", reason=reason)
        if self.streaming:
            self._stop_primary(reason)

    async def _on_link_lost(self, reason: str) -> None:
        """What the real sensor does when the link goes away: stop everything and
        forget the subscriptions (plain BlueZoo never calls StopNotify for us)."""
        if self.stalled:
            self.stalled = False
            emit("stall_end", csv_row=self.pos, lost_frames=self.stalled_frames)
        self._stop_all(reason)
        for c in self.chars:
            await c.reset_notifying()
        self.wake.set()

    # -- PMD control point -----------------------------------------------------------------

    async def cp_respond(self, op: int, mtype: int, status: int, params: bytes = b"") -> None:
        resp = bytes([0xF0, op, mtype, status, 0x00]) + params
        assert self.cp_char is not None
        delivered = await self.cp_char.send(resp)
        emit("cp_response", hex=resp.hex(), status=status, delivered=delivered)
        if not delivered:
            log.warning("control point response %s not delivered: indications not enabled",
                        resp.hex())

    async def on_cp_write(self, value: bytes, options: dict) -> None:
        wtype = options.get("type", ("s", ""))[1]
        emit("cp_write", hex=value.hex(), type=wtype)
        log.info("cp write %s (type=%s)", value.hex(), wtype or "default")
        # Respond after the write call has returned, as a real device would.
        self.spawn(self._handle_cp(value))

    async def _handle_cp(self, value: bytes) -> None:
        await asyncio.sleep(0)
        if not value:
            await self.cp_respond(0x00, 0x00, ST_INVALID_OP_CODE)
            return
        op = value[0]
        mtype = value[1] if len(value) > 1 else 0x00
        if op == PMD_OP_GET_SETTINGS:
            if len(value) < 2:
                await self.cp_respond(op, mtype, ST_INVALID_PARAMETER)
            elif mtype == PMD_TYPE_ECG:
                await self.cp_respond(op, mtype, ST_SUCCESS, ECG_SETTINGS_TLV)
            elif mtype == PMD_TYPE_ACC:
                await self.cp_respond(op, mtype, ST_NOT_SUPPORTED)
            else:
                await self.cp_respond(op, mtype, ST_INVALID_MEASUREMENT_TYPE)
        elif op == PMD_OP_START:
            await self._handle_start(value)
        elif op == PMD_OP_STOP:
            if len(value) < 2:
                await self.cp_respond(op, mtype, ST_INVALID_PARAMETER)
            elif mtype == PMD_TYPE_ACC:
                await self.cp_respond(op, mtype, ST_NOT_SUPPORTED)
            elif mtype != PMD_TYPE_ECG:
                await self.cp_respond(op, mtype, ST_INVALID_MEASUREMENT_TYPE)
            else:
                if self.pending_start:
                    self.pending_start.cancel()
                    self.pending_start = None
                    emit("start_cancelled", reason="stop_command")
                if self.streaming:
                    self._stop_primary("stop_command")
                await self.cp_respond(op, mtype, ST_SUCCESS)
        else:
            await self.cp_respond(op, mtype, ST_INVALID_OP_CODE)

    @staticmethod
    def _parse_settings(tlv: bytes) -> Optional[dict[int, int]]:
        out: dict[int, int] = {}
        i = 0
        while i < len(tlv):
            if i + 2 > len(tlv):
                return None
            stype, count = tlv[i], tlv[i + 1]
            i += 2
            if count != 1 or i + 2 > len(tlv):
                return None
            out[stype] = tlv[i] | (tlv[i + 1] << 8)
            i += 2
        return out

    async def _handle_start(self, value: bytes) -> None:
        op = PMD_OP_START
        if self.ignored_starts < self.args.ignore_first_starts:
            self.ignored_starts += 1
            emit("cp_ignored", hex=value.hex(), ignored=self.ignored_starts,
                 of=self.args.ignore_first_starts)
            log.info("ignoring start command %d/%d", self.ignored_starts,
                     self.args.ignore_first_starts)
            return
        if len(value) < 2:
            await self.cp_respond(op, 0, ST_INVALID_PARAMETER)
            return
        mtype = value[1]
        if mtype == PMD_TYPE_ACC:
            await self.cp_respond(op, mtype, ST_NOT_SUPPORTED)
            return
        if mtype != PMD_TYPE_ECG:
            await self.cp_respond(op, mtype, ST_INVALID_MEASUREMENT_TYPE)
            return
        settings = self._parse_settings(value[2:])
        if (settings is None or settings.get(0) != ECG_SAMPLE_RATE
                or settings.get(1) != ECG_RESOLUTION
                or set(settings) - {0, 1}):
            await self.cp_respond(op, mtype, ST_INVALID_PARAMETER)
            return
        if self.streaming or self.pending_start is not None:
            await self.cp_respond(op, mtype, ST_ALREADY_IN_STATE)
            return
        self.pending_start = self.spawn(self._delayed_start())

    async def _delayed_start(self) -> None:
        try:
            if self.args.start_delay_s > 0:
                emit("start_delayed", seconds=self.args.start_delay_s)
                await asyncio.sleep(self.args.start_delay_s)
            await self.cp_respond(PMD_OP_START, PMD_TYPE_ECG, ST_SUCCESS)
            self._start_primary()
        finally:
            if self.pending_start is asyncio.current_task():
                self.pending_start = None

    # -- notification enable/disable callbacks -------------------------------------------

    def on_hr_notify(self, enabled: bool) -> None:
        if self.profile == "hr":
            if enabled:
                self._start_primary()
            elif self.streaming:
                self._stop_primary("notify_disabled")
        self._kick()

    def on_pmd_data_notify(self, enabled: bool) -> None:
        # A real H10 keeps "streaming" into the void if the data notifications are
        # disabled; we do the same (frames are counted as not delivered).
        pass

    def on_generic_notify(self, enabled: bool) -> None:
        if enabled:
            self._start_primary()
        elif self.streaming:
            self._stop_primary("notify_disabled")

    # -- primary stream ----------------------------------------------------------------------

    def _start_primary(self) -> None:
        if self.streaming:
            return
        if self.ended:
            log.warning("stream start requested after end of recording: nothing to stream")
            emit("stream_start", csv_row=self.pos, stream=self._stream_name(), ended=True)
            return
        self.streaming = True
        self.anchor_epoch += 1
        self.session_frames = self.session_samples = self.session_delivered = 0
        if self.first_start_row is None:
            self.first_start_row = self.pos
            if self.args.max_s is not None:
                self.limit_row = min(self.rec.n, self.rec.row_at_or_after(
                    self.rec.t[self.pos] + self.args.max_s * 1e9, self.pos))
        emit("stream_start", csv_row=self.pos, stream=self._stream_name(),
             sensor_time_ns=self.rec.t[min(self.pos, self.rec.n - 1)] - POLAR_EPOCH_NS)
        log.info("stream start at csv row %d", self.pos)
        self._kick()

    def _stop_primary(self, reason: str) -> None:
        if not self.streaming:
            return
        self.streaming = False
        emit("stream_stop", reason=reason, stream=self._stream_name(), csv_row=self.pos,
             frames=self.session_frames, samples=self.session_samples,
             delivered_frames=self.session_delivered,
             total_frames=self.total_frames, total_samples=self.total_samples)
        log.info("stream stop (%s) at csv row %d: %d frames / %d samples", reason, self.pos,
                 self.session_frames, self.session_samples)
        self.wake.set()

    def _stream_name(self) -> str:
        return {"pmd": "ecg", "generic": "generic", "hr": "hr"}[self.profile]

    def _hr_active(self) -> bool:
        return self.hr_char is not None and self.hr_char.notifying

    def _hr_drives(self) -> bool:
        """Whether HR notifications alone keep the recording running: always for the hr
        profile; for pmd only with --hr-without-ecg (by default the recording pauses while
        ECG is stopped, so that ECG resumes exactly where it stopped)."""
        return self._hr_active() and (self.profile == "hr" or self.args.hr_without_ecg)

    def _active(self) -> bool:
        return not self.ended and (self.streaming or self._hr_drives())

    def _kick(self) -> None:
        self.wake.set()
        if self._active() and (self.player is None or self.player.done()):
            self.player = self.spawn(self._play())

    # -- playback ------------------------------------------------------------------------------

    async def _send_hr_upto(self, row: int) -> None:
        """Send (or, if nobody listens, consume) HR reports whose row < `row`."""
        while self.hr_next < len(self.rec.hr_rows) and self.rec.hr_rows[self.hr_next] < row:
            hr, rr = self.rec.hr_reports[self.hr_next]
            self.hr_next += 1
            if self.hr_char is not None and self.hr_char.notifying:
                await self.hr_char.send(encode_hr(hr, rr))
                self.hr_sent += 1
                if self.profile == "hr" and self.streaming:
                    self.session_delivered += 1
                    self.total_delivered += 1
                    self.session_frames += 1
                    self.session_samples += len(rr)
                    self.total_frames += 1
                    self.total_samples += len(rr)

    async def _finish(self, reason: str) -> None:
        self.ended = True
        if self.streaming:
            self._stop_primary(reason)
        emit("end", reason=reason, csv_row=self.pos, frames=self.total_frames,
             samples=self.total_samples, delivered_frames=self.total_delivered,
             hr_notifications=self.hr_sent)
        log.info("end of recording (%s)", reason)

    async def _play(self) -> None:
        rec, speed = self.rec, self.args.speed
        epoch = -1
        log.debug("player start at row %d", self.pos)
        while self._active():
            self.wake.clear()
            if epoch != self.anchor_epoch:
                # (re)started: the recording's timeline is anchored to the wall clock now
                epoch = self.anchor_epoch
                anchor_wall = self.loop.time()
                anchor_rec = rec.t[min(self.pos, rec.n - 1)]
            target = anchor_rec + (self.loop.time() - anchor_wall) * speed * 1e9
            if self.streaming and self.profile in ("pmd", "generic"):
                last = self.pos + self.frame_len - 1
                if last >= self.limit_row:
                    await self._finish("end_of_data" if self.limit_row >= rec.n else "max_s")
                    break
                if rec.t[last] <= target:
                    await self._send_frame(self.pos, last)
                    self.pos = last + 1
                    await self._send_hr_upto(self.pos)
                    if self._stall_due():
                        self.stalled = self.stall_done = True
                        emit("stall", csv_row=self.pos,
                             recording_s=round(self.rec_s(self.pos - 1), 3))
                        log.info("stall: frames stop reaching the central at row %d", self.pos)
                    if self._drop_due():
                        await self._drop()
                    continue
                due = rec.t[last]
            else:
                # No frame stream: advance the cursor by time (HR reports only).
                new = min(bisect.bisect_right(rec.t, target, self.pos), self.limit_row)
                await self._send_hr_upto(new)
                self.pos = new
                if self.pos >= self.limit_row:
                    await self._finish("end_of_data" if self.limit_row >= rec.n else "max_s")
                    break
                if self.profile == "hr" and self.streaming and self._drop_due():
                    await self._drop()
                    continue
                nxt = (rec.hr_rows[self.hr_next] if self.hr_next < len(rec.hr_rows)
                       else self.limit_row - 1)
                due = rec.t[max(min(nxt, self.limit_row - 1), self.pos)]
            delay = anchor_wall + (due - anchor_rec) / 1e9 / speed - self.loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        log.debug("player idle at row %d", self.pos)

    async def _send_frame(self, first: int, last: int) -> None:
        samples = self.rec.uv[first:last + 1]
        if self.stalled:
            # Produced but never delivered (see --stall-after-s).
            self.stalled_frames += 1
            return
        if self.profile == "pmd":
            assert self.data_char is not None
            sent = await self.data_char.send(encode_ecg_frame(self.rec.t[last], samples))
        else:
            assert self.generic_char is not None
            sent = await self.generic_char.send(
                encode_generic(samples, self.args.generic_format, self.args.generic_scale_uv))
        if sent:
            self.session_delivered += 1
            self.total_delivered += 1
        self.session_frames += 1
        self.session_samples += len(samples)
        self.total_frames += 1
        self.total_samples += len(samples)

    def _stall_due(self) -> bool:
        if self.stall_done or self.args.stall_after_s is None or self.first_start_row is None:
            return False
        return self.rec_s(self.pos - 1) >= self.args.stall_after_s

    def _drop_due(self) -> bool:
        if self.dropped or self.args.drop_after_s is None or self.first_start_row is None:
            return False
        return self.rec_s(self.pos - 1) >= self.args.drop_after_s

    async def _drop(self) -> None:
        self.dropped = True
        rec = self.rec
        drop_row = self.pos
        self._stop_primary("drop")
        resume = min(rec.row_at_or_after(rec.t[min(drop_row, rec.n - 1)]
                                         + self.args.drop_gap_s * 1e9, drop_row), rec.n)
        # HR reports inside the gap are lost too.
        self.hr_next = bisect.bisect_left(rec.hr_rows, resume)
        self.pos = resume
        gap_ns = (rec.t[min(resume, rec.n - 1)] - rec.t[max(drop_row - 1, 0)])
        emit("drop", csv_row=drop_row, skipped_samples=resume - drop_row, resume_row=resume,
             gap_s=round(gap_ns / 1e9, 6), recording_s=round(self.rec_s(drop_row - 1), 3))
        log.info("link drop: skipping rows %d..%d", drop_row, resume - 1)
        await self._on_link_lost("drop")
        await self._disconnect_centrals()

    async def _disconnect_centrals(self) -> None:
        """Drop the link the way a central would observe it: Device1.Disconnect on the
        central adapter's view of *this* adapter (found via the ObjectManager)."""
        om = DbusObjectManagerInterfaceAsync.new_proxy("org.bluez", "/")
        objs = await om.get_managed_objects()
        found = 0
        for path, ifaces in objs.items():
            dev = ifaces.get("org.bluez.Device1")
            if not dev or path.startswith(self.adapter_path + "/"):
                continue
            if dev.get("Address", ("s", ""))[1].upper() != self.address.upper():
                continue
            if not dev.get("Connected", ("b", False))[1]:
                continue
            found += 1
            log.info("disconnecting %s", path)
            try:
                await Device1.new_proxy("org.bluez", path).Disconnect()
            except Exception as e:  # noqa: BLE001
                log.error("Disconnect on %s failed: %s", path, e)
        if not found:
            log.warning("drop: no connected central found to disconnect")


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Fake Polar H10 BLE peripheral for the BlueZoo BlueZ mock",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bus", default=os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"),
                   help="D-Bus address of the bus BlueZoo serves org.bluez on "
                        "(default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus)")
    p.add_argument("--adapter", default="hci1", help="BlueZoo adapter to act as peripheral on")
    p.add_argument("--name", default="Polar H10 1A2B3C4D", help="advertised device name")
    p.add_argument("--profile", choices=("pmd", "hr", "generic"), default="pmd")
    p.add_argument("--csv", type=Path, default=None,
                   help="recording to replay (default: $AFFECTGATE_H10_CSV or "
                        "shared/data/polar-h10/polar_h10_ecg.csv)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor")
    p.add_argument("--start-s", type=float, default=0.0,
                   help="start replay this many recording seconds into the csv")
    p.add_argument("--max-s", type=float, default=None,
                   help="stop streaming after this many recording seconds since the first start")
    p.add_argument("--start-delay-s", type=float, default=0.0,
                   help="delay the PMD start response and first frame (wall seconds)")
    p.add_argument("--ignore-first-starts", type=int, default=0,
                   help="silently ignore the first K PMD start commands")
    p.add_argument("--hr-without-ecg", action="store_true",
                   help="pmd: keep sending HR notifications (and running the recording) while "
                        "ECG is stopped, like a real H10; by default the recording pauses "
                        "between ECG streams so ECG resumes exactly where it stopped")
    p.add_argument("--drop-after-s", type=float, default=None,
                   help="drop the link once after this many recording seconds since the first "
                        "start")
    p.add_argument("--stall-after-s", type=float, default=None,
                   help="once, after this many seconds of recording streamed, keep the link "
                        "and the stream up but deliver no more notifications (a silently "
                        "failed subscription) until the central drops the link; the frames "
                        "produced meanwhile are lost")
    p.add_argument("--drop-gap-s", type=float, default=5.0,
                   help="recording seconds lost at the drop")
    p.add_argument("--generic-service", default="6e400001-b5a3-f393-e0a9-e50e24dcca9e")
    p.add_argument("--generic-char", default="6e400003-b5a3-f393-e0a9-e50e24dcca9e")
    p.add_argument("--generic-format", choices=sorted(GENERIC_FORMATS), default="i16le")
    p.add_argument("--generic-scale-uv", type=float, default=1.0,
                   help="µV per LSB of the generic stream")
    p.add_argument("--generic-samples", type=int, default=20, help="samples per notification")
    p.add_argument("--adv-uuids", default=None,
                   help="comma-separated service UUIDs to advertise instead of the profile's "
                        "default (e.g. '180d' to mimic a real H10, which does not advertise "
                        "the PMD service); '' advertises none")
    p.add_argument("--appearance", type=lambda s: int(s, 0), default=APPEARANCE_HEART_RATE_SENSOR,
                   help="advertised GAP appearance (-1: none)")
    p.add_argument("--battery", type=int, default=87, help="battery level %% (0x2A19)")
    p.add_argument("--wait-bluez-s", type=float, default=15.0,
                   help="how long to wait for org.bluez and the adapter to appear")
    p.add_argument("-v", "--verbose", action="count", default=0)
    a = p.parse_args(argv)
    if a.speed <= 0:
        p.error("--speed must be > 0")
    if a.generic_samples < 1:
        p.error("--generic-samples must be >= 1")
    if a.generic_scale_uv == 0:
        p.error("--generic-scale-uv must be non-zero")
    if not 0 <= a.battery <= 100:
        p.error("--battery must be 0..100")
    if a.csv is None:
        a.csv = default_csv()
    return a


async def amain(args: argparse.Namespace) -> int:
    if args.bus == "session":
        bus = sdbus.sd_bus_open_user()
    else:
        if args.bus and args.bus != "system":
            # sd-bus reads the system bus address from the environment
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = args.bus
        bus = sdbus.sd_bus_open_system()
    sdbus.set_default_bus(bus)

    rec = Recording(args.csv)
    log.info("loaded %s: %d rows, %.3f Hz, %.1f s, %d HR reports", rec.path, rec.n,
             rec.sample_rate, (rec.t[-1] - rec.t[0]) / 1e9, len(rec.hr_rows))

    sim = FakeSensor(args, rec)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.stop_event.set)
    try:
        await sim.start()
    except SystemExit as e:
        emit("error", message=str(e))
        log.error("%s", e)
        return 2
    except sdbus.SdBusBaseError as e:
        emit("error", message=f"D-Bus error during setup: {e!r}")
        log.error("D-Bus error during setup: %r", e)
        return 2
    await sim.stop_event.wait()
    log.info("shutting down")
    await sim.shutdown()
    return sim.exit_code


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s fake_h10 %(levelname)s %(message)s")
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
