#!/usr/bin/env python3
"""Review 11: ringframe-client (and ringframe-server's options) against peers that misbehave.

Each fake server is a Python thread on a loopback port: it answers framed
requests with what the test tells it to, or accepts and never answers.
"""
import subprocess
import sys
import time

from e2e_util import check, fake_server, finish, json_frame, read_frame

server_bin, client_bin = sys.argv[1], sys.argv[2]


def run(*args, timeout=30):
    return subprocess.run([client_bin, *args], capture_output=True, text=True, timeout=timeout)


def answering(reply):
    """A fake_server handler: answers each framed request with reply(i)
    (bytes, or None: close)."""
    def serve(c):
        i = 0
        try:
            while read_frame(c) is not None:
                r = reply(i)
                i += 1
                if r is None:
                    break
                c.sendall(r)
        except OSError:
            pass
        c.close()
    return serve


def mute(c):
    """A fake_server handler: accepts and never answers (close() closes)."""


# 1. An app server that answers with {"error": ...}: not "every reply was
#    right" (--help: exit 1), with -q as without it.
err = fake_server(answering(lambda i: json_frame({"error": "no such action"})))
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
good = json_frame({"result": "Follow the white rabbit."})
early = fake_server(answering(lambda i: good if i < 2 else None))
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
silent = fake_server(mute)
try:
    t0 = time.monotonic()
    r = run("-q", "-t", "1", "multiconn", "127.0.0.1", silent.port, "5")
    took = time.monotonic() - t0
    check(r.returncode == 1 and "0 of 5 connections" in r.stdout and took < 10,
          f"multiconn against a mute server: rc {r.returncode} in {took:.1f} s, {r.stdout.strip()!r}")
    t0 = time.monotonic()
    r = run("-q", "-t", "1", "--repeat", "5", "--pipeline", "2", "app", "127.0.0.1", silent.port, "search", "x")
    took = time.monotonic() - t0
    check(r.returncode == 1 and took < 10, f"app against a mute server: rc {r.returncode} in {took:.1f} s, {r.stderr.strip()!r}")
finally:
    silent.close()

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

finish()
