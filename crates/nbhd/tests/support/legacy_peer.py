"""A legacy XEP-0174 client (as Pidgin's Bonjour plugin is): publishes _presence._tcp with
python-zeroconf, accepts one plain stream and prints the body it gets ("got ..."), then opens a
stream of its own to an nbhd instance and sends a chat message ("sent").

Usage: legacy_peer.py INSTANCE ADDRESS NBHD_INSTANCE
"""
import re
import socket
import sys
import time

from zeroconf import IPVersion, ServiceInfo, Zeroconf

instance, address, target = sys.argv[1], sys.argv[2], sys.argv[3]
TYPE = "_presence._tcp.local."
HEADER = ("<?xml version='1.0' encoding='UTF-8' ?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' from='{}' to='{}' version='1.0'>")

listener = socket.socket()
listener.bind((address, 0))
listener.listen(4)
port = listener.getsockname()[1]
zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
zc.register_service(ServiceInfo(
    TYPE, f"{instance}.{TYPE}", addresses=[socket.inet_aton(address)], port=port,
    properties={"txtvers": "1", "nick": instance.split("@")[0], "status": "avail", "port.p2pj": str(port)},
    server="legacy-host.local."))
print("registered", port, flush=True)


def read_until(sock, pattern, limit=10.0):
    data, end = b"", time.time() + limit
    sock.settimeout(0.5)
    while time.time() < end:
        try:
            part = sock.recv(4096)
        except socket.timeout:
            continue
        if not part:
            break
        data += part
        m = re.search(pattern, data, re.S)
        if m:
            return m
    return None


conn, _ = listener.accept()
if read_until(conn, rb"<stream:stream[^>]*>"):
    conn.sendall(HEADER.format(instance, "").encode())
m = read_until(conn, rb"<body>(.*?)</body>")
print("got", m.group(1).decode() if m else None, flush=True)
conn.close()

info = zc.get_service_info(TYPE, f"{target}.{TYPE}", timeout=5000)
s = socket.create_connection((info.parsed_addresses()[0], info.port), timeout=10)
s.sendall(HEADER.format(instance, target).encode())
read_until(s, rb"<stream:stream[^>]*>")
s.sendall(b"<message type='chat' id='leg1' to='" + target.encode() + b"'><body>hello from legacy</body></message>")
print("sent", flush=True)
time.sleep(3)
