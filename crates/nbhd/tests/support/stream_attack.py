"""A host on the link with no key tries to speak as bob on alice's stream, speaking raw bytes
(no code of ours): issue 15's first attack, and the plainer ones beside it.

1. reflection: connect to alice claiming bob's key, take her nonce, connect to bob claiming
   alice's key with her nonce, hand bob's proof to alice, then chat "as bob" (this is what the
   stream proof of the earlier protocol, which signed only "their nonce, their key, my key",
   let through);
2. in clear: a stream header from bob's instance, then a chat stanza, no authentication;
3. splice: connect to alice as bob and to bob as alice, and pour each one's bytes into the
   other (a man in the middle with no key of its own).

Each attempt sends a chat carrying the marker given, asking for a receipt. What alice's daemon
stored is the test's to check; this prints what each side answered.

Usage: stream_attack.py ALICE_ADDR ALICE_PORT ALICE_INSTANCE ALICE_KEY BOB_ADDR BOB_PORT BOB_INSTANCE BOB_KEY MARKER
"""
import re
import socket
import sys
import time

(alice_addr, alice_port, alice_inst, alice_key,
 bob_addr, bob_port, bob_inst, bob_key, marker) = sys.argv[1:10]
alice_port, bob_port = int(alice_port), int(bob_port)

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' from='{}' to='{}' version='1.0'>")


def chat(n):
    return (f"<message type='chat' id='forged-{n}' from='{bob_inst}' to='{alice_inst}'>"
            f"<body>{marker} {n}</body><request xmlns='urn:xmpp:receipts'/></message>").encode()


def connect(addr, port):
    s = socket.create_connection((addr, port), timeout=5)
    s.settimeout(0.3)
    return s


def read_for(sock, seconds):
    data, end = b"", time.time() + seconds
    while time.time() < end:
        try:
            part = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not part:
            break
        data += part
    return data


def show(what, data):
    print(f"{what}: {data[:400]!r}", flush=True)


def reflection():
    to_alice = connect(alice_addr, alice_port)
    to_alice.sendall((HEADER.format(bob_inst, alice_inst) +
                      f"<auth xmlns='urn:nbhd:auth:0' key='{bob_key}' nonce='AAAAAAAAAAAAAAAAAAAAAA'>"
                      "</auth>").encode())
    got = read_for(to_alice, 1.5)
    show("reflection: alice answered", got)
    m = re.search(rb"<auth[^>]*nonce='([^']+)'", got)
    if not m:
        print("reflection: no nonce from alice: stopped at step 1", flush=True)
        return
    nonce = m.group(1).decode()
    to_bob = connect(bob_addr, bob_port)
    to_bob.sendall((HEADER.format(alice_inst, bob_inst) +
                    f"<auth xmlns='urn:nbhd:auth:0' key='{alice_key}' nonce='{nonce}'></auth>").encode())
    got_bob = read_for(to_bob, 1.5)
    show("reflection: bob answered", got_bob)
    p = re.search(rb"<proof[^>]*>(</proof>)?", got_bob)
    if not p:
        print("reflection: no proof from bob: stopped at step 2", flush=True)
        return
    to_alice.sendall(p.group(0) + chat(1))
    show("reflection: alice after the proof and the chat", read_for(to_alice, 2))


def in_clear():
    s = connect(alice_addr, alice_port)
    s.sendall(HEADER.format(bob_inst, alice_inst).encode() + chat(2))
    show("in clear: alice answered", read_for(s, 2))


def splice():
    a = connect(alice_addr, alice_port)
    b = connect(bob_addr, bob_port)
    a.sendall(HEADER.format(bob_inst, alice_inst).encode())
    b.sendall(HEADER.format(alice_inst, bob_inst).encode())
    end = time.time() + 3
    while time.time() < end:
        for src, dst, name in ((a, b, "alice->bob"), (b, a, "bob->alice")):
            got = read_for(src, 0.2)
            if got:
                show(f"splice: {name}", got)
                try:
                    dst.sendall(got)
                except OSError:
                    pass
    try:
        a.sendall(chat(3))
    except OSError:
        pass
    show("splice: alice after the chat", read_for(a, 1))


for attempt in (reflection, in_clear, splice):
    try:
        attempt()
    except OSError as e:
        print(f"{attempt.__name__}: {e}", flush=True)
print("done", flush=True)
