#!/usr/bin/env python3
"""BlueZoo 1.0.2 launcher with the fixes the BLE simulator tests need.

Drop-in replacement for the `bluezoo` console script (same arguments):

    python tests/ble_sim/bluezoo_fixed.py --auto-enable --scan-interval 1 \
        -a 00:11:22:33:44:55 -a 00:AA:BB:CC:DD:EE

Plain BlueZoo 1.0.2 cannot reconnect a device: `Device.disconnect()` only
flips `Connected`, it leaves the GATT link objects (serviceXXXX/charYYYY/...)
exported under the central's Device1 path, so the next `Device1.Connect()`
tries to export them again and fails with
`sd_bus_add_object_vtable ... returned error number: 17` (EEXIST).  It also
keeps forwarding notifications of the dead link, never tells the GATT server
that the subscription ended, leaves `ServicesResolved` true, and only
updates the peer side when the *central* side disconnects.

The patches below (monkey-patched, BlueZoo itself is untouched) make the
mock behave like BlueZ for a non-bonded LE link:

  reconnect        On disconnect (from either side): Connected=false and
                   ServicesResolved=false on both views, every GATT link
                   object is unexported (InterfacesRemoved), notification
                   forwarding stops and the GATT server gets StopNotify for
                   each subscription that was active (as BlueZ clears the CCC
                   of a non-bonded device).  Connect() drops stale links
                   first and is a no-op if already connected.
  rssi             Every scan pass that sees an advertising device updates
                   its RSSI (-52..-68 dBm, PropertiesChanged), like BlueZ does
                   per received advertisement, so scanners (btleplug
                   DeviceUpdated, bleak detection callbacks) see devices they
                   already know.  Plain BlueZoo reports RSSI 0 once.
  discovery-restart
                   StartDiscovery while already discovering replaces the scan
                   task instead of leaking one that StopDiscovery can't stop.

The patched daemon exports /org/bluezoo/affectgate with the property
com.affectgate.BluezooPatches1.Patches (as) so that fake_h10.py can tell.
"""

from __future__ import annotations

import asyncio
import logging
import random

import sdbus

from bluezoo import adapter as bz_adapter
from bluezoo import bluezoo as bz_main
from bluezoo import device as bz_device
from bluezoo import events as bz_events
from bluezoo.gatt import GattCharacteristicClientLink

log = logging.getLogger("bluezoo.fixes")

PATCHES = ["reconnect", "rssi", "discovery-restart"]

Device = bz_device.Device
Adapter = bz_adapter.Adapter


def _counterpart(dev: Device):
    """The other side's view of this link (hci1's device for hci0's and vice versa)."""
    try:
        path = (f"{dev.peer_adapter.get_object_path()}/"
                f"dev_{dev.adapter.address.replace(':', '_')}")
        return dev.peer_adapter.devices.get(path)
    except AttributeError:
        return None


async def _drop_links(dev: Device) -> None:
    if not dev.services:
        return
    mock = dev.peer_adapter.mock
    for link in list(dev.services.values()):
        if isinstance(link, GattCharacteristicClientLink):
            # StartNotify replaces the empty events.Subscription() wrapper with a
            # pyventus EventSubscriber; anything else means "subscribed".
            sub = link.client_props_changed_subscription
            active = not isinstance(sub, bz_events.Subscription) or sub.subscriber is not None
            link.client_props_changed_subscription = bz_events.Subscription()
            if active:
                sub.unsubscribe()
                # BlueZ clears the CCC of a non-bonded peer on disconnect and
                # calls StopNotify on the server's characteristic.
                try:
                    await asyncio.wait_for(link.client.StopNotify(), 2.0)
                except Exception as e:  # noqa: BLE001
                    log.debug("StopNotify on %s failed: %s", link, e)
            for attr in ("f_read", "f_write"):
                f = getattr(link, attr, None)
                if f is not None:
                    try:
                        asyncio.get_running_loop().remove_reader(f)
                    except Exception:  # noqa: BLE001
                        pass
                    f.close()
                    setattr(link, attr, None)
    # children before parents (descriptors, characteristics, services)
    for path in sorted(dev.services, key=len, reverse=True):
        link = dev.services.pop(path)
        try:
            mock.remove_object(link)
        except KeyError:
            pass
    log.info("Removed GATT link objects of %s", dev)


_orig_connect = Device.connect


async def _connect(self: Device, uuid=None) -> None:
    if self.connected and self.services_resolved and self.services:
        log.info("%s already connected", self)
        return
    await _drop_links(self)
    await _orig_connect(self, uuid)


async def _disconnect(self: Device, uuid=None) -> None:
    self.connecting_task.cancel()
    log.info("Disconnecting %s", self)
    views = []
    for d in (self, _counterpart(self), self.peer):
        if d is not None and all(d is not v for v in views):
            views.append(d)
    for d in views:
        if d.connected:
            await d.Connected.set_async(False)
    for d in views:
        await _drop_links(d)
    for d in views:
        if d.services_resolved:
            await d.ServicesResolved.set_async(False)


_orig_add_device = Adapter.add_device


async def _add_device(self: Adapter, device: Device) -> None:
    from_scan = device.is_le or device.is_br_edr
    if not from_scan:
        return await _orig_add_device(self, device)
    rssi = random.randint(-68, -52)
    device.rssi = rssi
    path = f"{self.get_object_path()}/dev_{device.address.replace(':', '_')}"
    existing = self.devices.get(path)
    await _orig_add_device(self, device)
    if existing is not None:
        existing.rssi = rssi
        existing.properties_changed.emit(("org.bluez.Device1", {"RSSI": ("n", rssi)}, []))


_orig_create_discovering_task = bz_main.BluezMockService.create_discovering_task


def _create_discovering_task(self, id: int):
    # Plain BlueZoo starts an additional scan task on every StartDiscovery call
    # and StopDiscovery cancels only the newest one, so a central that starts
    # scanning twice keeps "scanning" forever.
    self.adapters[id].discovering_task.cancel()
    return _orig_create_discovering_task(self, id)


class BluezooPatches(sdbus.DbusInterfaceCommonAsync,
                     interface_name="com.affectgate.BluezooPatches1"):

    @sdbus.dbus_property_async("as")
    def Patches(self) -> list[str]:
        return PATCHES


_orig_startup = bz_main.startup


async def _startup(*args, **kwargs):
    await _orig_startup(*args, **kwargs)
    marker = BluezooPatches()
    marker.export_to_dbus("/org/bluezoo/affectgate")
    _startup.marker = marker  # keep alive
    log.info("BlueZoo patches active: %s", ", ".join(PATCHES))


def apply() -> None:
    Device.connect = _connect
    Device.disconnect = _disconnect
    Adapter.add_device = _add_device
    bz_main.BluezMockService.create_discovering_task = _create_discovering_task
    bz_main.startup = _startup


if __name__ == "__main__":
    apply()
    bz_main.main()
