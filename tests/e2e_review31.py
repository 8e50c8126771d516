#!/usr/bin/env python3
"""The thirty-first review: the binaries as a new user meets them
(ringframe-server, ringframe-client, ringframe-kvstore, ringframe-example-chat).
Its option-parsing findings (timeouts under 1 ns, an overflowing
--zero-copy-threshold, an option without its value) are checked in
e2e_review33.py, which review33 found too and which fixed them the same way
for both reviews.

Every peer is on loopback; every wait is bounded (a process that does not end
in time is killed and the check fails).

Usage: e2e_review31.py SERVER CLIENT KVSTORE CHAT UPPERCASE
"""
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time

from e2e_util import (check, fake_server, finish, frame, json_frame, kill_if_running, read_frame, start_server, stop,
                      wait_or_kill)

server_bin, client_bin, kvstore_bin, chat_bin, uppercase_bin = sys.argv[1:6]


def run(args, timeout):
    """Runs a binary to its end, killing it after `timeout` seconds:
    (returncode, stdout, stderr); the returncode is -9 when it was killed."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = wait_or_kill(p, timeout)
    return p.returncode, out, err


def closed_by_peer(c, seconds):
    """True once the peer has closed `c` (EOF or reset) within `seconds`."""
    c.settimeout(seconds)
    try:
        while c.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except OSError:
        return False


# F2: `ringframe-client app -n N -p D` with D deep: every request was queued
#     at once, and framed_client reads replies only once what it has queued
#     is sent. The server stops reading a peer whose replies pile up (its
#     backpressure), so past the buffers of the two ends neither side moved
#     until the write timeout: "after 0 of 200000 responses: cannot send:
#     Connection timed out", exit 1, for a server that was fine. (framed_client
#     now reads while it sends: tests/test_framed_client.cpp has that case.)
srv, port = start_server(server_bin, "-q", "--threads", "1", "--mode", "app", "127.0.0.1", "0")
try:
    rc, out, err = run([client_bin, "-q", "-t", "3", "-n", "200000", "-p", "200000", "app", "127.0.0.1", port,
                        "search", "ring"], 120)
    check(rc == 0 and "200000 responses, all alike" in out,
          f"F2: ringframe-client -n 200000 -p 200000 gets every reply (rc {rc}, {out.strip()[-120:]!r}, "
          f"{err.strip()[-200:]!r})")
finally:
    stop(srv)


# F3: the examples' text log (server_options::log, printed as it comes)
#     carried a peer's bytes raw: a malformed frame's reason quotes its
#     content-encoding, so a newline there started a log line of the peer's
#     making (ringframe-server escapes them since review28; the examples,
#     and any user of server_options::log, did not).
def forge(port):
    c = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
    c.sendall(frame(b"{}", encoding="x\nFORGED: all is well"))
    got = read_frame(c)
    c.close()
    return got


for name, args in (("ringframe-kvstore", [kvstore_bin, "127.0.0.1", "0"]),
                   ("ringframe-example-chat", [chat_bin, "127.0.0.1", "0"])):
    p, port = start_server(*args)
    try:
        got = forge(port)
        time.sleep(0.2)
    finally:
        out, err = stop(p, timeout=10)
    lines = out.splitlines()
    check(got is not None and b"error" in got[1], f"F3: {name} answers the bad encoding with an error ({got!r})")
    check(any("content-encoding" in line for line in lines), f"F3: {name} logs the malformed frame ({out[-300:]!r})")
    check(not any(line.startswith("FORGED") for line in lines),
          f"F3: {name}: a peer's newline does not start a log line ({out[-300:]!r})")


# F4: ringframe-kvstore's log went to a block-buffered stdout: run under a
#     pipe (systemd, `| tee`), no "Connected by" line showed until 4 KiB had
#     piled up or the process ended (and a kill lost them).
p, port = start_server(kvstore_bin, "127.0.0.1", "0")
try:
    lines = queue.Queue()

    def pump():
        for line in p.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    c = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
    c.sendall(json_frame({"op": "count"}))
    reply = read_frame(c)
    try:
        line = lines.get(timeout=3)
    except queue.Empty:
        line = None
    check(reply is not None and line is not None and line.startswith("Connected by"),
          f"F4: ringframe-kvstore's 'Connected by' line is out while it runs ({line!r})")
    c.close()
finally:
    kill_if_running(p)
    p.wait()


# F7: examples/uppercase_server.cpp, the README's first program, ended in
#     std::terminate (SIGABRT, a core dump) when the executor could not be
#     made (a bad RINGFRAME_BACKEND, io_uring refused where it was asked
#     for), and exited 1 without a word when its port was taken.
p = subprocess.run([uppercase_bin], env=dict(os.environ, RINGFRAME_BACKEND="bogus"), capture_output=True, text=True,
                   timeout=10)
check(p.returncode == 1 and "RINGFRAME_BACKEND" in p.stderr and len(p.stderr.strip().splitlines()) == 1,
      f"F7: uppercase-server with a bad RINGFRAME_BACKEND says why in one line, exit 1 "
      f"(rc {p.returncode}, {p.stderr.strip()[-300:]!r})")
holder = socket.socket()
try:
    holder.bind(("127.0.0.1", 65433))
    holder.listen()
except OSError:
    pass  # taken by someone else: taken all the same
try:
    p = subprocess.run([uppercase_bin], capture_output=True, text=True, timeout=10)
    check(p.returncode == 1 and "cannot listen on 127.0.0.1:65433" in p.stderr,
          f"F7: uppercase-server on a taken port says so, exit 1 (rc {p.returncode}, {p.stderr.strip()!r})")
finally:
    holder.close()

finish()
