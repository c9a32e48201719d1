"""Browse _presence._tcp with python-zeroconf and print every resolved instance as a JSON line.

Usage: zc_browse.py SECONDS ADDRESS
A peer nobody here wrote, to check that nbhd answers as RFC 6762/6763 peers expect.
"""
import json
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

TYPE = "_presence._tcp.local."
seconds, address = float(sys.argv[1]), sys.argv[2]
zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
seen = {}


class Listener(ServiceListener):
    def add_service(self, zc, type_, name):
        seen[name] = None

    def update_service(self, zc, type_, name):
        seen[name] = None

    def remove_service(self, zc, type_, name):
        seen.pop(name, None)


ServiceBrowser(zc, TYPE, Listener())
deadline = time.time() + seconds
printed = set()
while time.time() < deadline:
    for name in list(seen):
        if name in printed:
            continue
        info = zc.get_service_info(TYPE, name, timeout=1500)
        if info is None:
            continue
        props = {k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()}
        print(json.dumps({
            "name": name,
            "server": info.server,
            "port": info.port,
            "addresses": info.parsed_addresses(),
            "txt": props,
        }), flush=True)
        printed.add(name)
    time.sleep(0.2)
zc.close()
