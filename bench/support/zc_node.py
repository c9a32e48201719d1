"""A python-zeroconf presence node for bench/presence: publishes one _presence._tcp instance and
browses, resolving every instance it sees. Prints "all <unix time>" once it has resolved N-1
others, then keeps running (publishing and browsing) until killed.

Usage: zc_node.py NAME ADDRESS N
"""
import signal
import socket
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

TYPE = "_presence._tcp.local."
name, address, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
me = f"{name}._presence._tcp.local."
info = ServiceInfo(
    TYPE,
    me,
    addresses=[socket.inet_aton(address)],
    port=5298,
    properties={"txtvers": "1", "nick": name.split("@")[0], "status": "avail", "port.p2pj": "5298"},
    server=f"{name.split('@')[0]}-zc.local.",
)
seen, resolved = set(), set()


class Listener(ServiceListener):
    def add_service(self, zc, type_, n_):
        seen.add(n_)

    def update_service(self, zc, type_, n_):
        seen.add(n_)

    def remove_service(self, zc, type_, n_):
        seen.discard(n_)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ServiceBrowser(zc, TYPE, Listener())
zc.register_service(info)
done = False
while True:
    for s in list(seen - resolved):
        if s != me and zc.get_service_info(TYPE, s, timeout=1000) is not None:
            resolved.add(s)
    if not done and len(resolved - {me}) >= n - 1:
        print(f"all {time.time():.3f}", flush=True)
        done = True
    time.sleep(0.1)
