#!/usr/bin/env python3
"""End to end: ringframe-client tries every address of a HOST name.

A name with an IPv6 and an IPv4 address, while the server listens on one
family only: the client must connect to the address that answers (RFC 8305,
ringframe::connect over all of them), in whichever order the name lists
them. It used to take the first address alone and fail with "Connection
refused" when that one was the family nobody listened on.

The name comes from a hosts file of the test's own, read through
nss_wrapper (Debian's libnss-wrapper, LD_PRELOAD; the machine's /etc/hosts
is not touched). Every server is on loopback and every wait is bounded.
Each port's other family is held by a socket bound and not listening, so
that a connect there is refused (no other test's server can take it). Where
::1 cannot be bound (IPv6 off) the test is skipped (exit 77).

Usage: e2e_client_addresses.py SERVER CLIENT NSS_WRAPPER_LIB
"""
import os
import socket
import sys
import tempfile

from e2e_util import check, finish, run_bounded, start_server, stop

server_bin, client_bin, nss_wrapper = sys.argv[1:4]

def start(ip, mode):
    """ringframe-server in `mode` on ip, port 0; (process, PORT)."""
    return start_server(server_bin, "-q", "--threads", "1", "-m", mode, ip, "0")


def client(hosts_lines, *args):
    """ringframe-client ARGS with the name 'twoaddrs' resolving as hosts_lines say."""
    with tempfile.NamedTemporaryFile("w", suffix=".hosts", delete=False) as f:
        f.write("".join(f"{line}\n" for line in hosts_lines))
        hosts = f.name
    env = dict(os.environ, LD_PRELOAD=nss_wrapper, NSS_WRAPPER_HOSTS=hosts)
    try:
        return run_bounded([client_bin, "-t", "5", *args], seconds=20, env=env)
    finally:
        os.unlink(hosts)


V6_FIRST = ["::1 twoaddrs", "127.0.0.1 twoaddrs"]
V4_FIRST = ["127.0.0.1 twoaddrs", "::1 twoaddrs"]


def hold(family, ip, port):
    """A socket bound to ip:port and not listening: connects there are refused."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((ip, int(port)))
    return s


try:
    hold(socket.AF_INET6, "::1", 0).close()
except OSError as e:
    print(f"SKIP: ::1 cannot be bound here ({e}): no IPv6 loopback to test with")
    sys.exit(77)

servers, held = [], []
try:
    # The hosts file is read: the name resolves, to the address listed (a
    # check that nss_wrapper is in effect, or every later check would be moot).
    v4, port4 = start("127.0.0.1", "echo")
    servers.append(v4)
    held.append(hold(socket.AF_INET6, "::1", port4))
    rc, out, err = client(["127.0.0.1 onlyv4"], "echo", "onlyv4", port4, "hello")
    check(rc == 0 and "Received b'hello'" in out, f"a name from the test's hosts file resolves: rc={rc} {err.strip()!r}")

    # The server on 127.0.0.1 only; the name lists ::1 first.
    rc, out, err = client(V6_FIRST, "echo", "twoaddrs", port4, "both families")
    check(rc == 0 and "Received b'both families'" in out,
          f"echo: ::1 refused, 127.0.0.1 answers: rc={rc} {err.strip()!r}")
    rc, out, err = client(V6_FIRST, "-q", "multiconn", "twoaddrs", port4, "3")
    check(rc == 0 and "3 of 3 connections echoed every byte" in out,
          f"multiconn: every connection reaches 127.0.0.1: rc={rc} {out.strip()[-80:]!r} {err.strip()!r}")

    # The app server on ::1 only; the name lists 127.0.0.1 first.
    v6, port6 = start("::1", "app")
    servers.append(v6)
    held.append(hold(socket.AF_INET, "127.0.0.1", port6))
    rc, out, err = client(V4_FIRST, "app", "twoaddrs", port6, "search", "morpheus")
    check(rc == 0 and "Got result: Follow the white rabbit." in out,
          f"app: 127.0.0.1 refused, ::1 answers: rc={rc} {err.strip()!r}")
    # What is printed after the connect names the address that answered.
    check(f"Closing connection to ('::1', {port6}, 0, 0)" in out, f"app names the address it reached: {out[-200:]!r}")

    # Nobody on either (both families held, not listening): every address is
    # named, by each command.
    none = hold(socket.AF_INET, "127.0.0.1", 0)
    held.append(none)
    port_none = str(none.getsockname()[1])
    held.append(hold(socket.AF_INET6, "::1", port_none))
    for args in (("echo", "twoaddrs", port_none, "x"), ("multiconn", "twoaddrs", port_none, "1"),
                 ("app", "twoaddrs", port_none, "search", "x")):
        rc, out, err = client(V6_FIRST, *args)
        check(rc == 1 and f"[::1]:{port_none}" in err and f"127.0.0.1:{port_none}" in err and "refused" in err,
              f"{args[0]}: no address answers: exit 1, both named: rc={rc} {err.strip()!r}")
finally:
    for p in servers:
        stop(p)
    for h in held:
        h.close()
finish()
