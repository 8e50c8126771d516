#!/usr/bin/env python3
"""Interop, both directions: the built ringframe-server (--mode app) against
the tutorial-style Python client, and the built ringframe-client against the
tutorial-style Python server, for every request kind of docs/protocol.md section 3."""
import os
import re
import signal
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
env = dict(os.environ, PYTHONIOENCODING="utf-8")
failures = []

CASES = [
    (("search", "morpheus"), "Got result: Follow the white rabbit. \U0001f430"),
    (("search", "ring"), "Got result: In the caves beneath the Misty Mountains. \U0001f48d"),
    (("search", "\U0001f436"), "Got result: \U0001f43e Playing ball! \U0001f3d0"),
    (("search", "neo"), 'Got result: No match for "neo".'),
    (("search", 'quote"d \\ back'), 'Got result: No match for "quote"d \\ back".'),
    (("foo", "barbazquux"), "Got response: b'First 10 bytes of request: foobarbazq'"),
    (("x", "\U0001f436\U0001f436\U0001f436"), "Got response: b'First 10 bytes of request: x\\xf0\\x9f\\x90\\xb6\\xf0\\x9f\\x90\\xb6\\xf0'"),
]


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def start(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", env=env)
    line = p.stdout.readline()
    m = re.search(r"Listening on \('127\.0\.0\.1', (\d+)\)", line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return p, m.group(1)


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=30)


def main(server_bin, client_bin):
    # 1. ringframe-server <- tutorial client
    srv, port = start([server_bin, "--mode", "app", "-q", "127.0.0.1", "0"])
    try:
        for (action, value), want in CASES:
            r = run([sys.executable, os.path.join(here, "tutorial_client.py"), "127.0.0.1", port, action, value])
            got = r.stdout.splitlines()[-1] if r.stdout else ""
            check(r.returncode == 0 and got == want, f"python client -> ringframe-server: {action} {value!r}: {got!r} {r.stderr[-200:]!r}")
    finally:
        srv.send_signal(signal.SIGTERM)
        out, _ = srv.communicate(timeout=10)
    check(srv.returncode == 0 and "0 malformed" in out, f"ringframe-server exits cleanly: {out.strip()[-160:]!r}")

    # 2. ringframe-client -> tutorial server
    py, port = start([sys.executable, "-u", os.path.join(here, "tutorial_server.py"), "127.0.0.1", "0"])
    try:
        for (action, value), want in CASES:
            r = run([client_bin, "app", "127.0.0.1", port, action, value])
            lines = r.stdout.splitlines()
            check(r.returncode == 0 and want in lines, f"ringframe-client -> python server: {action} {value!r}: {lines[-2:]!r} {r.stderr[-200:]!r}")
        # The tutorial server closes after one response: a second request on the
        # same connection must fail cleanly, saying so.
        r = run([client_bin, "--repeat", "2", "app", "127.0.0.1", port, "search", "ring"])
        check(r.returncode == 1 and "after 1 of 2 responses: the server closed the connection" in r.stderr,
              f"repeat against a one-shot server fails clearly: {r.stderr.strip()!r}")
    finally:
        py.kill()
        py.wait()

    print(f"{len(CASES) * 2 + 2 - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


# e2e_seccomp.py imports CASES from here: run only as a script.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
