#!/usr/bin/env python3
"""End to end: ringframe-example-fanout against three `ringframe-server --mode app`
instances: every answer, --first, a server that is down, one that never answers
(cancelled under --first), host names, and bad usage."""
import signal
import socket
import subprocess
import sys
import time

from e2e_util import check, finish, start_server, wait_or_kill

server_bin, fanout_bin = sys.argv[1], sys.argv[2]

MORPHEUS = '{"result": "Follow the white rabbit. 🐰"}'


def fanout(*args, timeout=30):
    return subprocess.run([fanout_bin, *args], capture_output=True, text=True, timeout=timeout)


def app_server():
    p, port = start_server(server_bin, "-q", "--threads", "1", "--mode", "app", "127.0.0.1", "0")
    return p, "127.0.0.1:" + port


def refused_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound, never listened on, released: connecting is refused
    return f"127.0.0.1:{port}"


servers = []
silent = socket.socket()  # accepts (the kernel does) but never answers
try:
    for _ in range(3):
        servers.append(app_server())
    eps = [ep for _, ep in servers]
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent_ep = "127.0.0.1:%d" % silent.getsockname()[1]
    down = refused_endpoint()

    r = fanout(*eps, "--", "search", "morpheus")
    lines = r.stdout.splitlines()
    check(r.returncode == 0 and lines == [f"{ep}: {MORPHEUS}" for ep in eps],
          f"every server's answer, in the order given: rc {r.returncode} {lines!r} {r.stderr!r}")

    r = fanout("--first", *eps, "--", "search", "morpheus")
    lines = r.stdout.splitlines()
    check(r.returncode == 0 and len(lines) == 1 and lines[0] in [f"{ep}: {MORPHEUS}" for ep in eps],
          f"--first prints one answer: rc {r.returncode} {lines!r} {r.stderr!r}")

    r = fanout(eps[0], down, eps[2], "--", "search", "ring")
    lines = r.stdout.splitlines()
    check(r.returncode == 1 and len(lines) == 2 and lines[0].startswith(eps[0] + ": ") and
          lines[1].startswith(eps[2] + ": ") and f"{down}: cannot connect: Connection refused" in r.stderr,
          f"one server down: the others answer, the down one is named, exit 1: rc {r.returncode} {lines!r} {r.stderr!r}")

    r = fanout("--first", down, eps[1], "--", "search", "ring")
    check(r.returncode == 0 and r.stdout.startswith(eps[1] + ": "),
          f"--first: a server that is down does not win: rc {r.returncode} {r.stdout!r} {r.stderr!r}")

    r = fanout("--first", down, refused_endpoint(), "--", "search", "ring")
    check(r.returncode == 1 and r.stdout == "" and r.stderr.count("cannot connect") == 2,
          f"--first with every server down: exit 1, each named: rc {r.returncode} {r.stderr!r}")

    # The silent server would hold the call for the whole 5 s timeout; under
    # --first the live server's answer wins and the silent call is cancelled.
    t0 = time.monotonic()
    r = fanout("--first", "--timeout", "5", silent_ep, eps[2], "--", "search", "morpheus")
    took = time.monotonic() - t0
    check(r.returncode == 0 and r.stdout == f"{eps[2]}: {MORPHEUS}\n" and took < 3,
          f"--first cancels a server that does not answer: rc {r.returncode} {r.stdout!r} in {took:.2f} s")

    t0 = time.monotonic()
    r = fanout("--timeout", "0.5", silent_ep, eps[0], "--", "search", "morpheus")
    took = time.monotonic() - t0
    check(r.returncode == 1 and r.stdout == f"{eps[0]}: {MORPHEUS}\n" and
          f"{silent_ep}: no answer: Connection timed out" in r.stderr and took < 4,
          f"a server that does not answer times out: rc {r.returncode} {r.stdout!r} {r.stderr!r} in {took:.2f} s")

    port0 = eps[0].split(":")[1]
    r = fanout("localhost:" + port0, eps[1], "--", "frob", "x")
    check(r.returncode == 0 and r.stdout.splitlines() ==
          [f'localhost:{port0}: {{"result": "Error: invalid action \\"frob\\"."}}',
           f'{eps[1]}: {{"result": "Error: invalid action \\"frob\\"."}}'],
          f"a host name, and the server's own error answer: rc {r.returncode} {r.stdout!r} {r.stderr!r}")

    for args, want in [((eps[0], "search", "x"), "missing '-- ACTION VALUE'"),
                       ((eps[0], "--", "search"), "expected exactly ACTION VALUE"),
                       (("--", "search", "x"), "no servers given"),
                       (("127.0.0.1:http", "--", "search", "x"), "bad port in '127.0.0.1:http'"),
                       (("127.0.0.1", "--", "search", "x"), "'127.0.0.1' is not HOST:PORT"),
                       (("--bogus", eps[0], "--", "a", "b"), "unknown option '--bogus'"),
                       (("--timeout", "0", eps[0], "--", "a", "b"), "bad --timeout '0'"),
                       # The options are read before the '--' is looked for:
                       # a bad one is named, not taken for a missing '--'.
                       (("--timeout",), "--timeout needs SECONDS"),
                       ((eps[0], "--timeout"), "--timeout needs SECONDS"),
                       (("--version",), "unknown option '--version'"),
                       (("--version", eps[0], "search", "x"), "unknown option '--version'")]:
        r = fanout(*args)
        check(r.returncode == 2 and want in r.stderr and "--help" in r.stderr,
              f"bad usage {args!r}: rc {r.returncode} {r.stderr.strip()!r}")
    # A HOST that names nothing is bad usage (exit 2, as ringframe-client
    # has it), not a server that did not answer (exit 1). "bad host!" is
    # refused by the resolver without a query.
    r = fanout("bad host!:1", eps[0], "--", "search", "morpheus")
    check(r.returncode == 2 and r.stdout == f"{eps[0]}: {MORPHEUS}\n" and
          "bad host!:1: cannot resolve host 'bad host!'" in r.stderr and "--help" in r.stderr,
          f"a host that does not resolve is named, the others answer, exit 2: rc {r.returncode} {r.stdout!r} {r.stderr!r}")
    r = fanout("--first", "bad host!:1", down, "--", "search", "morpheus")
    check(r.returncode == 2 and r.stdout == "" and "cannot resolve host 'bad host!'" in r.stderr and
          f"{down}: cannot connect" in r.stderr,
          f"--first, no answer and a host that does not resolve: exit 2: rc {r.returncode} {r.stderr!r}")

    r = fanout("--help")
    check(r.returncode == 0 and r.stdout.startswith("Usage: ringframe-example-fanout"), "--help")
    # After the '--' it is VALUE, sent as any other (the help was printed).
    r = fanout(eps[0], "--", "search", "--help")
    check(r.returncode == 0 and r.stdout == f'{eps[0]}: {{"result": "No match for \\"--help\\"."}}\n',
          f"'--help' after '--' is the VALUE: rc {r.returncode} {r.stdout!r} {r.stderr!r}")
finally:
    silent.close()
    for p, _ in servers:
        p.send_signal(signal.SIGTERM)
    for p, ep in servers:
        wait_or_kill(p)
        check(p.returncode == 0, f"server {ep} exits 0 after SIGTERM")

finish()
