"""Tiny UDP tool for lab checks. Usage:
  udp.py recv BIND_ADDRESS PORT SECONDS [GROUP]   prints the number of datagrams received
  udp.py send SRC_ADDRESS DST PORT COUNT          sends COUNT datagrams (DST may be a group)
"""
import socket
import struct
import sys
import time

mode = sys.argv[1]
if mode == "recv":
    addr, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    if len(sys.argv) > 5:
        mreq = struct.pack("4s4s", socket.inet_aton(sys.argv[5]), socket.inet_aton(addr))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.settimeout(0.1)
    print("ready", flush=True)
    n, end = 0, time.time() + seconds
    while time.time() < end:
        try:
            s.recv(2048)
            n += 1
        except socket.timeout:
            pass
    print(n, flush=True)
else:
    src, dst, port, count = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
    s.bind((src, 0))
    for _ in range(count):
        s.sendto(b"x", (dst, port))
        time.sleep(0.01)
