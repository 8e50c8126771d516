#!/usr/bin/env python3
"""The twenty-ninth review: the examples, framed_client and ringframe-client
against hostile peers (ringframe-example-proxy, ringframe-client app).

Each fake peer is a Python thread on a loopback port. Every wait is bounded.

Usage: e2e_review29.py PROXY CLIENT
"""
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from e2e_util import check, fake_server, fd_count, finish, json_frame, read_frame, start_server, stop, wait_for

proxy_bin, client_bin = sys.argv[1], sys.argv[2]


def reset(s):
    """Closes `s` with an RST (SO_LINGER 0) instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def recv_until_eof(s, seconds=5.0):
    """True once the peer's FIN has come (False if it has not within `seconds`)."""
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except OSError:
        return False


# F1: a side of the proxy that half-closes (its FIN is forwarded) and then
#     resets. Nothing reads or writes its socket any more (its direction is
#     done, the other one waits for the far peer), so the proxy never noticed
#     the reset: while the far peer stayed quiet it kept both connections
#     open, its descriptors and the far peer's connection held for good, for
#     a peer that had gone. The header comment promises that a side that
#     fails ends everything. Both sides, since the pumps are the same code.
def half_close_then_reset(side):
    accepted = []
    target = fake_server(lambda c: accepted.append(c))  # quiet: reads nothing, sends nothing
    px, port = start_server(proxy_bin, "-q", "127.0.0.1", "0", "127.0.0.1", target.port)
    try:
        base = fd_count(px.pid)
        c = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
        check(wait_for(lambda: accepted), f"F1 {side}: the proxy connected to the target")
        t = accepted[0]
        # The side that goes: its FIN reaches the other peer through the proxy.
        going, staying = (c, t) if side == "client" else (t, c)
        going.shutdown(socket.SHUT_WR)
        check(recv_until_eof(staying), f"F1 {side}: its half-close is forwarded")
        reset(going)
        closed = wait_for(lambda: fd_count(px.pid) == base, 5.0)
        check(closed, f"F1 {side}: a half-closed {side} that resets ends both connections "
                      f"(proxy descriptors {fd_count(px.pid)}, {base} before)")
        staying.close()
    finally:
        out, err = stop(px)
        target.close()
    check(px.returncode == 0, f"F1 {side}: the proxy stops cleanly (rc {px.returncode}, {err.strip()[-200:]!r})")


half_close_then_reset("client")
half_close_then_reset("target")


# F2: an app server whose text/json reply is JSON but not an object (an
#     array, a string, a number). ringframe-client printed "Got result: None"
#     and exited 0, which --help keeps for "every reply arrived and was
#     right"; the tutorial's client fails on it (content.get on a list). It
#     is not an app reply (docs/protocol.md, section 3): exit 1, saying why.
def answering(reply):
    def serve(c):
        try:
            while read_frame(c) is not None:
                c.sendall(reply)
        except OSError:
            pass
        c.close()
    return serve


for content in ([1, 2], "Follow the white rabbit.", 5, None):
    srv = fake_server(answering(json_frame(content)))
    try:
        for quiet in ([], ["-q"]):
            r = subprocess.run([client_bin, *quiet, "-t", "5", "app", "127.0.0.1", srv.port, "search", "morpheus"],
                               capture_output=True, text=True, timeout=30)
            check(r.returncode == 1 and "not a JSON object" in r.stderr,
                  f"F2: a reply {content!r} {' '.join(quiet)} exits 1 saying why "
                  f"(rc {r.returncode}, {r.stdout.strip()[-80:]!r}, {r.stderr.strip()!r})")
    finally:
        srv.close()

# Still right: an object without "result" is what the tutorial prints as None.
srv = fake_server(answering(json_frame({})))
try:
    r = subprocess.run([client_bin, "-t", "5", "app", "127.0.0.1", srv.port, "search", "morpheus"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0 and "Got result: None" in r.stdout, f"F2: a reply {{}} is still taken (rc {r.returncode})")
finally:
    srv.close()

finish()
