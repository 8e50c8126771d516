#!/usr/bin/env python3
"""Review 11: ringframe-client (and ringframe-server's options) against peers that misbehave.

Each fake server is a Python thread on a loopback port: it answers framed
requests with what the test tells it to, or accepts and never answers.
"""
import json
import socket
import struct
import subprocess
import sys
import threading
import time

server_bin, client_bin = sys.argv[1], sys.argv[2]
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(*args, timeout=30):
    return subprocess.run([client_bin, *args], capture_output=True, text=True, timeout=timeout)


def frame(obj):
    content = json.dumps(obj).encode()
    header = json.dumps({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8",
                         "content-length": len(content)}).encode()
    return struct.pack(">H", len(header)) + header + content


def read_frame(c):
    data = b""
    while len(data) < 2:
        chunk = c.recv(2 - len(data))
        if not chunk:
            return None
        data += chunk
    hl = struct.unpack(">H", data)[0]
    data = b""
    while len(data) < hl:
        chunk = c.recv(hl - len(data))
        if not chunk:
            return None
        data += chunk
    n = json.loads(data)["content-length"]
    body = b""
    while len(body) < n:
        chunk = c.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return body


class fake_server:
    """Answers each framed request with reply(i) (bytes, or None: close)."""

    def __init__(self, reply):
        self.reply = reply
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = str(self.ls.getsockname()[1])
        self.conns = []
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        i = 0
        try:
            while self.reply is not None:
                if read_frame(c) is None:
                    break
                r = self.reply(i)
                i += 1
                if r is None:
                    break
                c.sendall(r)
        except OSError:
            pass
        if self.reply is not None:
            c.close()

    def close(self):
        self.ls.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


# 1. An app server that answers with {"error": ...}: not "every reply was
#    right" (--help: exit 1), with -q as without it.
err = fake_server(lambda i: frame({"error": "no such action"}))
try:
    r = run("app", "127.0.0.1", err.port, "search", "morpheus")
    check(r.returncode == 1 and "the server answered with an error" in r.stderr,
          f"app: an error reply exits 1 (rc {r.returncode}, {r.stderr.strip()!r})")
    r = run("-q", "app", "127.0.0.1", err.port, "search", "morpheus")
    check(r.returncode == 1, f"app -q: an error reply exits 1 (rc {r.returncode}, {r.stdout.strip()!r})")
    r = run("-q", "--repeat", "20", "--pipeline", "4", "app", "127.0.0.1", err.port, "search", "morpheus")
    check(r.returncode == 1, f"app -q --repeat 20 --pipeline 4: error replies exit 1 (rc {r.returncode}, {r.stdout.strip()!r})")
finally:
    err.close()

# 2. A server that answers the first two requests and then closes: the
#    pipelined client says so and exits 1, in bounded time.
good = frame({"result": "Follow the white rabbit."})
early = fake_server(lambda i: good if i < 2 else None)
try:
    t0 = time.monotonic()
    r = run("-q", "-t", "5", "--repeat", "50", "--pipeline", "8", "app", "127.0.0.1", early.port, "search", "morpheus")
    took = time.monotonic() - t0
    check(r.returncode == 1 and "after 2 of 50 responses" in r.stderr and took < 5,
          f"app --pipeline against a server that closes early: rc {r.returncode} in {took:.1f} s, {r.stderr.strip()!r}")
finally:
    early.close()

# 3. A server that accepts and never answers: multiconn and app give up
#    after --timeout and exit 1.
mute = fake_server(None)
try:
    t0 = time.monotonic()
    r = run("-q", "-t", "1", "multiconn", "127.0.0.1", mute.port, "5")
    took = time.monotonic() - t0
    check(r.returncode == 1 and "0 of 5 connections" in r.stdout and took < 10,
          f"multiconn against a mute server: rc {r.returncode} in {took:.1f} s, {r.stdout.strip()!r}")
    t0 = time.monotonic()
    r = run("-q", "-t", "1", "--repeat", "5", "--pipeline", "2", "app", "127.0.0.1", mute.port, "search", "x")
    took = time.monotonic() - t0
    check(r.returncode == 1 and took < 10, f"app against a mute server: rc {r.returncode} in {took:.1f} s, {r.stderr.strip()!r}")
finally:
    mute.close()

# 4. ringframe-server's numeric options: a negative or out-of-range count is
#    bad usage (exit 2), as --threads and the byte options already treat it.
for opt, val in (("--max-connections", "-1"), ("--max-connections", "99999999999999999999999"),
                 ("--threads", "-1"), ("--zero-copy-threshold", "-1")):
    try:
        p = subprocess.run([server_bin, "-q", opt, val, "127.0.0.1", "0"], capture_output=True, text=True, timeout=3)
        rc, err_text = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err_text = None, "(it started serving)"
    check(rc == 2 and f"bad {opt}" in err_text, f"ringframe-server {opt} {val}: rc {rc}, {err_text.strip()[:120]!r}")

print(f"{checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
