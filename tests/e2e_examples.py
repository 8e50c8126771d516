#!/usr/bin/env python3
"""End to end: the examples' command lines as a user meets them.

uppercase-server: [IP PORT], --help, bad arguments (one line, exit 2), and
its "on" line in a file while it runs. ringframe-kvstore --help names every
op that examples/kvstore/kv_store.hpp serves. ringframe-example-chat and
-proxy: a host that does not resolve is bad usage (exit 2).

Everything is on loopback and every wait is bounded: a binary that should
have refused its arguments but started (or hung) instead is killed and
reported.

Usage: e2e_examples.py UPPERCASE KVSTORE KV_STORE_HPP CHAT PROXY
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile

from e2e_util import check, finish, frame, kill_if_running, recv_exactly, run_bounded, stop, wait_for

uppercase_bin, kvstore_bin, kv_store_hpp, chat_bin, proxy_bin = sys.argv[1:6]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect(port, seconds=5.0):
    """A connection to 127.0.0.1:port once something listens there, or None."""
    conn = []

    def attempt():
        try:
            conn.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            return True
        except OSError:
            return False

    wait_for(attempt, seconds)
    return conn[0] if conn else None


# uppercase-server: it ignored every argument (listening on 127.0.0.1:65433
# whatever was given), and its stdout was block-buffered, so with stdout in
# a file its "on" line never got there before SIGTERM ended it.
rc, out, err = run_bounded([uppercase_bin, "--help"])
check(rc == 0 and out.startswith("usage: uppercase-server [IP PORT]") and err == "",
      f"uppercase-server --help: usage on stdout, exit 0 (rc {rc}, {out!r}, {err!r})")
for args, says in [(["127.0.0.1"], "expected IP PORT or no arguments, got 1"),
                   (["127.0.0.1", "1", "2"], "expected IP PORT or no arguments, got 3"),
                   (["127.0.0.1", "http"], "bad port 'http'"),
                   (["127.0.0.1", "65536"], "bad port '65536'"),
                   (["localhost", "0"], "bad IP 'localhost'"),
                   (["--version"], "unknown option '--version'")]:
    rc, out, err = run_bounded([uppercase_bin, *args])
    check(rc == 2 and says in err and len(err.strip().splitlines()) == 1 and out == "",
          f"uppercase-server {args}: one line naming the problem, exit 2 (rc {rc}, {err.strip()!r})")

with tempfile.TemporaryDirectory() as tmp:
    out_path = os.path.join(tmp, "stdout")
    p = None
    reply = None
    try:
        for _ in range(3):  # the free port may be taken before the server binds it
            port = free_port()
            with open(out_path, "w") as out_file:
                p = subprocess.Popen([uppercase_bin, "127.0.0.1", str(port)], stdout=out_file,
                                     stderr=subprocess.PIPE, text=True)
            c = connect(port)
            if c is not None or p.poll() is None:
                break
            stop(p)
        want_line = f"uppercase-server on 127.0.0.1:{port}\n"
        if c is not None:
            with c:
                # A raw stream server: every byte of the frame comes back, a
                # to z in upper case (bytes.upper(), as toupper in the C
                # locale; the length prefix too, were it a letter).
                request = frame(b'{"action": "search", "value": "morpheus"}')
                c.sendall(request)
                reply = recv_exactly(c, len(request))
            check(reply == request.upper() and b'"MORPHEUS"' in reply,
                  f"uppercase-server 127.0.0.1 {port}: the framed request comes back in upper case ({reply!r})")
        else:
            check(False, f"uppercase-server 127.0.0.1 {port}: nothing listens there")

        def says_on():
            with open(out_path) as f:
                return f.read() == want_line

        check(wait_for(says_on, 5), f"uppercase-server: {want_line.strip()!r} is in its stdout file while it runs")
        stop(p)
        check(p.returncode == -signal.SIGTERM and says_on(),
              f"uppercase-server: SIGTERM ends it, the file still holds its line (rc {p.returncode})")
    finally:
        kill_if_running(p)

# ringframe-kvstore --help said "ops put, get, del": "count" was left out.
with open(kv_store_hpp) as f:
    ops = sorted(set(re.findall(r'\bop [!=]= "(\w+)"', f.read())))
rc, out, err = run_bounded([kvstore_bin, "--help"])
ops_line = next((line for line in out.splitlines() if "ops " in line), "")
missing = [op for op in ops if not re.search(rf"\b{op}\b", ops_line)]
check(rc == 0 and len(ops) >= 4 and not missing,
      f"ringframe-kvstore --help names every op of kv_store.hpp {ops} (missing {missing}: {ops_line!r})")

# chat and proxy exited 1 on a host that does not resolve, as for a failure
# at run time; ringframe-server and ringframe-client (and now fanout) take
# it for bad usage, exit 2. "bad host!" is refused by the resolver without
# a query.
for name, argv, says in [("chat", [chat_bin, "bad host!", "0"], "cannot resolve host 'bad host!'"),
                         ("proxy", [proxy_bin, "bad host!", "0", "127.0.0.1", "1"],
                          "cannot resolve listen host 'bad host!'"),
                         ("proxy", [proxy_bin, "127.0.0.1", "0", "bad host!", "1"],
                          "cannot resolve target host 'bad host!'")]:
    rc, out, err = run_bounded(argv)
    check(rc == 2 and says in err and "Usage: ringframe-example-" + name in err and out == "",
          f"{name} {argv[1:]}: the host is named, usage, exit 2 (rc {rc}, {err.strip()[:120]!r})")

finish()
