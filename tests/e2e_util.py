"""Scaffolding shared by the end-to-end test scripts (e2e_binaries.py,
e2e_fanout.py, e2e_review11.py, e2e_review11_load.py, e2e_load_options.py, e2e_review29.py, and
e2e_proxy_chat.py for fd_count and wait_for).

A script imports it by name: Python puts the directory of the script it runs
first on sys.path, wherever meson runs it from.

- check(cond, what) prints one "ok"/"FAIL" line per check and counts it;
  finish() prints the tally and exits 1 if any failed.
- start_server() runs a server on 127.0.0.1 port 0 and reads its
  "Listening on ('127.0.0.1', PORT)" line; stop(), wait_or_kill() and
  kill_if_running() end it.
- frame(), json_frame(), recv_exactly(), read_frame(): the wire format
  (a 2-byte big-endian header length, a JSON header, the content).
- fd_count(pid): the descriptors a process has open; wait_for(pred,
  seconds): poll until pred() holds.
- fake_server: a listener on a loopback port whose connections a handler
  serves, each on a thread of its own.
"""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

failures = []
checks = 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(pred, seconds=5.0):
    """Polls pred() until it holds or `seconds` have passed; its last answer."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def check(cond, what):
    global checks
    checks += 1
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def finish():
    print(f"{checks - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


LISTENING = re.compile(r"Listening on \('127\.0\.0\.1', (\d+)\)")
# start_server's: a server on 127.0.0.1 or on ::1 (its caller chose which).
LISTENING_LOOPBACK = re.compile(r"Listening on \((?:'127\.0\.0\.1', (\d+)|'::1', (\d+), 0, 0)\)")


def listening_port(line):
    """The PORT of a "Listening on ('127.0.0.1', PORT)" line (a string); an
    error if the line is not one."""
    m = LISTENING.match(line)
    if not m:
        raise RuntimeError(f"not a 'Listening on' line: {line!r}")
    return m.group(1)


def start_server(server_bin, *args, **popen_args):
    """Runs `server_bin *args` (which must print its "Listening on" line
    first, on 127.0.0.1 or ::1) with stdout and stderr piped as text;
    returns (process, PORT)."""
    p = subprocess.Popen([server_bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         **popen_args)
    line = p.stdout.readline()
    m = LISTENING_LOOPBACK.match(line)
    if not m:
        p.kill()
        _, err = p.communicate()
        raise SystemExit(f"{server_bin} {' '.join(args)} did not start: {line!r} {err[-300:]!r}")
    return p, m.group(1) or m.group(2)


def wait_or_kill(p, timeout=15):
    """Waits for `p` to exit, killing it after `timeout` seconds; returns
    (stdout, stderr). The caller checks p.returncode (-9 when it had to be
    killed)."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()


def stop(p, sig=signal.SIGTERM, timeout=15):
    """Sends `sig` to `p` (if it still runs), then wait_or_kill(p, timeout)."""
    if p.poll() is None:
        p.send_signal(sig)
    return wait_or_kill(p, timeout)


def run_bounded(argv, seconds=5.0, env=None):
    """(returncode, stdout, stderr) of argv; returncode None if it was still
    running after `seconds` (it is killed then)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=seconds)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, out, err


def kill_if_running(p):
    if p is not None and p.poll() is None:
        p.kill()


def frame(content: bytes, content_type="text/json", encoding="utf-8"):
    header = json.dumps({"byteorder": "little", "content-type": content_type, "content-encoding": encoding,
                         "content-length": len(content)}).encode()
    return struct.pack(">H", len(header)) + header + content


def json_frame(obj):
    return frame(json.dumps(obj).encode())


def recv_exactly(c, n):
    """n bytes from socket c, or None if the peer closed first."""
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(c):
    """One frame from socket c: (header bytes, content bytes), or None if
    the peer closed first."""
    prefix = recv_exactly(c, 2)
    if prefix is None:
        return None
    header = recv_exactly(c, struct.unpack(">H", prefix)[0])
    if header is None:
        return None
    content = recv_exactly(c, json.loads(header)["content-length"])
    if content is None:
        return None
    return header, content


class fake_server:
    """A listener on a loopback port (self.port, a string). Each connection
    it accepts is passed to handle(c) on a thread of its own; close() closes
    the listener and every connection (one that handle() left open too)."""

    def __init__(self, handle):
        self.handle = handle
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
            threading.Thread(target=self.handle, args=(c,), daemon=True).start()

    def close(self):
        self.ls.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
