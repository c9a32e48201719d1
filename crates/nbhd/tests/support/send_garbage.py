"""Send hostile mDNS datagrams to the group and to one address: truncated, oversized, looping
compression and random garbage. Usage: send_garbage.py SRC_ADDRESS DST_ADDRESS
"""
import random
import socket
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.bind((src, 0))

header = struct.pack(">HHHHHH", 0, 0x8400, 0, 1, 0, 0)
packets = {
    # a response header promising an answer, cut after the header
    "truncated": header + b"\x05hello",
    # larger than RFC 6762 allows (9000 bytes)
    "oversized": header + b"\x00" * 9500,
    # an answer whose name is a compression pointer to itself
    "looping": header + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x0a\x00\x04\x01\x02\x03\x04",
    "garbage": random.Random(7).randbytes(300),
}
for name, p in packets.items():
    for target in ("224.0.0.251", dst):
        s.sendto(p, (target, 5353))
print("sent", len(packets) * 2, flush=True)
