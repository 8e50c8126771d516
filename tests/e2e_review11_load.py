#!/usr/bin/env python3
"""Review 11: ringframe-load, the load generator whose figures the benchmarks report.

1. A depth x size larger than the sockets' buffers: a correct server (echo,
   frame-echo) must pass. The client used to send its whole window before
   reading a reply; the server, whose replies were not taken, stopped reading
   (backpressure), and the run ended after 10 s with "send: Connection timed
   out" and 0 messages.
2. A server that sends a stray byte after the last reply, or more replies
   than requests, must be an error: every reply byte is checked, extra ones
   too. The stray byte passed (exit 0); the extra reply was counted as a
   message and the run waited 10 s for a reply to a request never sent.
"""
import struct
import subprocess
import sys
import time

from e2e_util import check, fake_server, finish, read_frame, start_server, stop

server_bin, load_bin = sys.argv[1], sys.argv[2]


def load(*args, timeout=60):
    t0 = time.monotonic()
    r = subprocess.run([load_bin, *args], capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


for mode in ("frame-echo", "echo"):
    srv, port = start_server(server_bin, "-q", "--threads", "1", "--mode", mode, "127.0.0.1", "0")
    try:
        r, took = load("-c", "2", "-d", "16", "-s", "1048576", "-m", "64", "127.0.0.1", port)
        check(r.returncode == 0 and '"messages":64,' in r.stdout and '"errors":0,' in r.stdout,
              f"{mode}: 2 connections x depth 16 x 1 MiB, 64 messages: rc {r.returncode} in {took:.1f} s, "
              f"{r.stdout.strip()[-250:]!r}")
        r, took = load("-c", "4", "-d", "16", "-s", "64", "-m", "2000", "127.0.0.1", port)
        check(r.returncode == 0 and '"messages":2000,' in r.stdout,
              f"{mode}: small messages still pass: rc {r.returncode}, {r.stdout.strip()[-200:]!r}")
    finally:
        stop(srv)
    check(srv.returncode == 0, f"{mode}: the server exits 0 after SIGTERM (rc {srv.returncode})")


def echoing(extra):
    """A fake_server handler: echoes each framed request, then sends
    `extra(i, frame)` after the i-th reply."""
    def serve(c):
        i = 0
        with c:
            while True:
                f = read_frame(c)
                if f is None:
                    return
                header, content = f
                echo = struct.pack(">H", len(header)) + header + content
                try:
                    c.sendall(echo + extra(i, echo))
                except OSError:
                    return
                i += 1
    return serve


stray = fake_server(echoing(lambda i, f: b"X"))
dup = fake_server(echoing(lambda i, f: f))
try:
    r, took = load("-q", "-c", "1", "-d", "1", "-m", "1", "127.0.0.1", stray.port, timeout=30)
    check(r.returncode == 1 and '"errors":1,' in r.stdout,
          f"a stray byte after the last reply is an error: rc {r.returncode}, {r.stdout.strip()[-160:]!r}")
    # -s 0: no room for a sequence number, every reply alike (as with --app).
    r, took = load("-c", "1", "-d", "1", "-s", "0", "-m", "1", "127.0.0.1", dup.port, timeout=30)
    check(r.returncode == 1 and took < 9 and '"messages":2,' not in r.stdout,
          f"-s 0: two replies to one request are an error, at once, not 2 messages: rc {r.returncode} in {took:.1f} s, "
          f"{r.stdout.strip()[-220:]!r}")
finally:
    stray.close()
    dup.close()

finish()
