"""An Avahi D-Bus client used the way telepathy-salut used it: one ServiceBrowser for
_presence._tcp and one ServiceResolver kept open per peer found. Prints "all <unix time>" once
N-1 peers are resolved, then keeps its resolvers open until killed.

Runs with Debian's /usr/bin/python3 (python3-dbus, python3-gi); the bus comes from
DBUS_SYSTEM_BUS_ADDRESS. Usage: avahi_client.py OWN_NAME N
"""
import sys
import time

import dbus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

own, n = sys.argv[1], int(sys.argv[2])
DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
# Avahi may still be starting: wait for its name on the bus.
for _ in range(100):
    if bus.name_has_owner("org.freedesktop.Avahi"):
        break
    time.sleep(0.1)
server = dbus.Interface(bus.get_object("org.freedesktop.Avahi", "/"), "org.freedesktop.Avahi.Server")
IF_UNSPEC, PROTO_INET = -1, 0
resolvers, resolved = {}, set()
done = [False]


def on_resolved(*args):
    name = str(args[2])
    if name != own:
        resolved.add(name)
    if not done[0] and len(resolved) >= n - 1:
        print(f"all {time.time():.3f}", flush=True)
        done[0] = True


def on_new(interface, protocol, name, stype, domain, flags):
    key = (int(interface), int(protocol), str(name))
    if key in resolvers:
        return
    path = server.ServiceResolverNew(interface, protocol, name, stype, domain, PROTO_INET, dbus.UInt32(0))
    r = bus.get_object("org.freedesktop.Avahi", path)
    r.connect_to_signal("Found", on_resolved, dbus_interface="org.freedesktop.Avahi.ServiceResolver")
    resolvers[key] = r  # kept open, as Salut did: this is what costs traffic


browser_path = server.ServiceBrowserNew(IF_UNSPEC, PROTO_INET, "_presence._tcp", "local", dbus.UInt32(0))
browser = bus.get_object("org.freedesktop.Avahi", browser_path)
browser.connect_to_signal("ItemNew", on_new, dbus_interface="org.freedesktop.Avahi.ServiceBrowser")
GLib.MainLoop().run()
