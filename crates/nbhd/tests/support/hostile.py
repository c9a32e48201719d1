"""A hostile XEP-0174 peer. Usage: hostile.py HOST PORT CASE
CASE: malformed | endless | bomb | unproven. Prints "stream-error" if the daemon answered with a
stream error, then "closed" once it closed the connection."""
import socket
import sys

host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
header = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='evil@lab' to='bob@lab' version='1.0'>")
s = socket.create_connection((host, port), timeout=10)
try:
    if case == "malformed":
        s.sendall(header + b"<message><body>x</message>")
    elif case == "endless":
        s.sendall(header + b"<message><body>")
        chunk = b"x" * 65536
        for _ in range(40):  # 2.5 MiB, more than the 1 MiB limit
            s.sendall(chunk)
    elif case == "bomb":
        s.sendall(b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
                  b"<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>" + header + b"&lol2;")
    elif case == "unproven":
        s.sendall(header + b"<message type='chat' id='x1' from='alice@lab'><body>trust me</body></message>")
except (BrokenPipeError, ConnectionResetError):
    pass
data = b""
try:
    while True:
        part = s.recv(4096)
        if not part:
            break
        data += part
except (ConnectionResetError, socket.timeout):
    pass
if b"stream:error" in data:
    print("stream-error", flush=True)
print("closed", flush=True)
