"""Publish one legacy XEP-0174 instance of _presence._tcp with python-zeroconf, until killed.

Usage: zc_publish.py INSTANCE ADDRESS
"""
import signal
import socket
import sys
import time

from zeroconf import IPVersion, ServiceInfo, Zeroconf

instance, address = sys.argv[1], sys.argv[2]
zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
info = ServiceInfo(
    "_presence._tcp.local.",
    f"{instance}._presence._tcp.local.",
    addresses=[socket.inet_aton(address)],
    port=5298,
    properties={"txtvers": "1", "nick": instance.split("@")[0], "status": "away", "port.p2pj": "5298"},
    server="pyzc-host.local.",
)
zc.register_service(info)
print("registered", flush=True)
signal.signal(signal.SIGTERM, lambda *_: (zc.unregister_service(info), zc.close(), sys.exit(0)))
while True:
    time.sleep(1)
