"""An outsider's attack on an activity it was not invited to, from what it captured.

  forge_activity.py CAPTURE PORT SRC_ADDRESS COUNT

Reads a pcap file (tcpdump -w, Ethernet), takes the data frames sent to multicast PORT (an
activity's posts), and sends to their group, from SRC_ADDRESS: COUNT of them replayed
unchanged, and COUNT forged (one byte of the sealed body flipped, a different one each time).
Prints one JSON line: {"captured": N, "group": G, "replayed": {SENDER: n, ...}, "forged": n},
SENDER the frame's sender key as a peer id (base64url).
"""
import base64
import json
import socket
import struct
import sys

path, port, src, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# The frame's plaintext header (crates/nbhd-proto/src/activity/wire.rs): magic, version, kind,
# reserved, activity id, sender key, nonce.
HEADER_LEN, KIND_DATA, SENDER = 80, 1, slice(24, 56)

data = open(path, "rb").read()
magic = struct.unpack("<I", data[:4])[0]
endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
linktype = struct.unpack(endian + "I", data[20:24])[0]
if linktype != 1:
    sys.exit(f"only Ethernet captures, not link type {linktype}")
frames, group, off = [], None, 24
while off + 16 <= len(data):
    incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
    pkt = data[off + 16:off + 16 + incl]
    off += 16 + incl
    if len(pkt) < 14 + 20 + 8 or pkt[12:14] != b"\x08\x00":
        continue
    ip = pkt[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17:
        continue
    dst = socket.inet_ntoa(ip[16:20])
    udp = ip[ihl:]
    dport = struct.unpack(">H", udp[2:4])[0]
    frame = bytes(udp[8:])
    if dport == port and dst.startswith("239.") and frame[:4] == b"NBHA" and frame[5] == KIND_DATA:
        group = dst
        frames.append(frame)
if not frames:
    sys.exit(f"no activity data frame to a group's port {port} in {path}")

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
replayed = {}
for i in range(count):
    f = frames[i % len(frames)]
    s.sendto(f, (group, port))
    sender = base64.urlsafe_b64encode(f[SENDER]).decode().rstrip("=")
    replayed[sender] = replayed.get(sender, 0) + 1
forged = 0
for i in range(count):
    f = bytearray(frames[i % len(frames)])
    if len(f) <= HEADER_LEN:
        continue
    f[HEADER_LEN + (i % (len(f) - HEADER_LEN))] ^= 0x01
    s.sendto(bytes(f), (group, port))
    forged += 1
print(json.dumps({"captured": len(frames), "group": group, "replayed": replayed, "forged": forged}))
