#!/usr/bin/env python3
"""End to end with io_uring refused: ringframe-server and ringframe-client run
under ringframe-seccomp-run (a seccomp filter that makes io_uring_setup,
io_uring_enter and io_uring_register fail with EPERM, as Docker's default
profile does) and must fall back to epoll, say so once per process, and work
as they do on io_uring: echo, multiconn, app interop with the tutorial's Python
client and server both ways, frame-echo, and a clean drain on SIGTERM. With
--backend io_uring the server must refuse to start and name seccomp.

Usage: e2e_seccomp.py LAUNCHER SERVER CLIENT TUTORIAL_CLIENT.py TUTORIAL_SERVER.py
Loopback only; every wait is bounded.
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

launcher, server_bin, client_bin = (os.path.abspath(a) for a in sys.argv[1:4])
tutorial = {os.path.basename(a): os.path.abspath(a) for a in sys.argv[4:]}
tutorial_client, tutorial_server = tutorial["tutorial_client.py"], tutorial["tutorial_server.py"]
sys.path.insert(0, os.path.dirname(tutorial_client))
from test_interop import CASES  # noqa: E402  (every request kind of docs/protocol.md section 3)

FALLBACK = "falling back to epoll"
HOST = "127.0.0.1"
env = dict(os.environ, PYTHONIOENCODING="utf-8")
# The fallback itself is under test: not a backend chosen by the environment
# (meson test --setup epoll sets RINGFRAME_BACKEND for the other suites).
env.pop("RINGFRAME_BACKEND", None)
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def tail(text, n=400):
    return text.strip()[-n:]


class Proc:
    """A process whose stdout and stderr are read line by line as they come."""

    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                  errors="replace", env=env)
        self.out, self.err = [], []
        self.cv = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                        for s, l in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.readers:
            t.start()

    def _read(self, stream, lines):
        for line in stream:
            with self.cv:
                lines.append(line)
                self.cv.notify_all()
        with self.cv:
            lines.append(None)  # end of stream
            self.cv.notify_all()

    def wait_stdout(self, pattern, timeout):
        """The first match of pattern in a stdout line, or None at EOF or after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self.cv:
            seen = 0
            while True:
                while seen < len(self.out):
                    line = self.out[seen]
                    seen += 1
                    if line is None:
                        return None
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)

    def finish(self, timeout):
        """Wait for the exit (kill after timeout seconds) and the streams' end; the exit status, None if killed."""
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            rc = None
        for t in self.readers:
            t.join(timeout=5)
        return rc

    def stdout(self):
        with self.cv:
            return "".join(l for l in self.out if l)

    def stderr(self):
        with self.cv:
            return "".join(l for l in self.err if l)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.finish(5)


def check_fallback_line(name, text, exactly_once=True):
    """The process said once that it falls back to epoll, and why."""
    lines = [l for l in text.splitlines() if FALLBACK in l]
    if exactly_once:
        ok = check(len(lines) == 1, f"{name}: logs '{FALLBACK}' exactly once (found {len(lines)}: {lines[:3]!r})")
    else:
        ok = check(len(lines) <= 1, f"{name}: logs '{FALLBACK}' at most once (found {len(lines)}: {lines[:3]!r})")
    if ok and lines:
        check(re.search(r"seccomp|EPERM|not permitted", lines[0], re.IGNORECASE) is not None,
              f"{name}: the fallback line names its cause (seccomp / EPERM): {lines[0].strip()!r}")


def start_server(name, *args):
    """ringframe-server under the launcher on 127.0.0.1, port 0: (Proc, port) or (Proc, None) if it did not start."""
    srv = Proc([launcher, server_bin, *args, HOST, "0"])
    m = srv.wait_stdout(r"^Listening on \('127\.0\.0\.1', (\d+)\)", timeout=10)
    if m is None:
        rc = srv.finish(2)  # None: still running without a Listening line, killed
        check(False, f"{name}: seccomped server starts (exit {rc}): stdout {tail(srv.stdout())!r} "
                     f"stderr {tail(srv.stderr())!r}")
        check_fallback_line(name + " server", srv.stdout() + srv.stderr())
        return srv, None
    check(True, f"{name}: seccomped server starts: {m.group(0)!r}")
    return srv, int(m.group(1))


def stop_server(name, srv, expect=()):
    """SIGTERM: a drain, exit 0, the summary and counters, and the fallback line once."""
    srv.p.send_signal(signal.SIGTERM)
    rc = srv.finish(15)
    out, err = srv.stdout(), srv.stderr()
    m = re.search(r"ringframe-server: stopped by SIGTERM: served (\d+) connections", out)
    check(rc == 0 and m is not None and "ringframe-server: counters" in out,
          f"{name}: SIGTERM: exit {rc}, summary {m.group(0) if m else None!r} (stderr {tail(err, 300)!r})")
    for want in expect:
        check(want in out, f"{name}: the summary says {want!r}: {tail(out, 300)!r}")
    check_fallback_line(name + " server", out + err)
    return out


def client(*args, timeout=30):
    """ringframe-client under the launcher."""
    try:
        return subprocess.run([launcher, client_bin, *args], capture_output=True, text=True, encoding="utf-8",
                              errors="replace", env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, None, str(e.stdout or ""), f"timed out after {timeout} s")


def check_client(name, r, want_lines=(), want_prefix=None, rc=0):
    lines = r.stdout.splitlines()
    ok = r.returncode == rc and all(w in lines for w in want_lines)
    if want_prefix is not None:
        ok = ok and any(l.startswith(want_prefix) for l in lines)
    check(ok, f"{name}: exit {r.returncode}, stdout {lines[-3:]!r}, stderr {tail(r.stderr)!r}")
    check_fallback_line(name + " (client)", r.stdout + r.stderr, exactly_once=False)


# ---- 0. The launcher itself -------------------------------------------------

r = subprocess.run([launcher, "--help"], capture_output=True, text=True, timeout=10)
check(r.returncode == 0 and r.stdout.startswith("Usage: ringframe-seccomp-run"), "launcher --help")
r = subprocess.run([launcher], capture_output=True, text=True, timeout=10)
check(r.returncode == 2 and "no PROGRAM given" in r.stderr, f"launcher without PROGRAM: {r.returncode} {r.stderr.strip()!r}")
r = subprocess.run([launcher, "--bogus"], capture_output=True, text=True, timeout=10)
check(r.returncode == 2 and "unknown option '--bogus'" in r.stderr, f"launcher --bogus: {r.stderr.strip()!r}")
r = subprocess.run([launcher, "/nonexistent/ringframe-nothing"], capture_output=True, text=True, timeout=10)
check(r.returncode == 127 and "cannot run '/nonexistent/ringframe-nothing': No such file or directory" in r.stderr,
      f"launcher with a missing PROGRAM: {r.returncode} {r.stderr.strip()!r}")

# The filter, syscall by syscall: io_uring_setup(1, NULL) is EFAULT when
# allowed, EPERM when refused; io_uring_enter/register on fd -1 are EBADF or
# EINVAL when allowed. 424 (pidfd_send_signal) and 428 (open_tree), the
# neighbours, must behave the same with and without the filter. A thread and
# a child process inherit it.
PROBE = r'''
import ctypes, json, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def errno_of(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
if sys.argv[1:] == ["leaf"]:
    print(errno_of(425, 1, 0))
    sys.exit(0)
res = {"setup": errno_of(425, 1, 0), "enter": errno_of(426, -1, 0, 0, 0, 0, 0),
       "register": errno_of(427, -1, 0, 0, 0), "424": errno_of(424, -1, 0, 0, 0), "428": errno_of(428, -1, 0, 0)}
t = threading.Thread(target=lambda: res.update(thread=errno_of(425, 1, 0)))
t.start()
t.join()
res["child"] = int(subprocess.run([sys.executable, "-c", sys.argv[1], "leaf"], capture_output=True, text=True).stdout)
res["status"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(res))
'''
EPERM = 1
try:
    plain = json.loads(subprocess.run([sys.executable, "-c", PROBE, PROBE], capture_output=True, text=True,
                                      timeout=30).stdout)
    filtered = json.loads(subprocess.run([launcher, sys.executable, "-c", PROBE, PROBE], capture_output=True,
                                         text=True, timeout=30).stdout)
except (ValueError, subprocess.TimeoutExpired) as e:
    plain, filtered = {}, {}
    check(False, f"syscall probe ran: {e}")
if filtered:
    if plain.get("setup") == EPERM:
        print(f"note: io_uring_setup is refused here even without the launcher ({plain})")
    check(all(filtered.get(k) == EPERM for k in ("setup", "enter", "register")),
          f"under the launcher io_uring_setup/enter/register fail with EPERM: {filtered} (unfiltered: {plain})")
    check(filtered.get("thread") == EPERM and filtered.get("child") == EPERM,
          f"a thread and a child process inherit the filter: thread {filtered.get('thread')}, child {filtered.get('child')}")
    check(filtered.get("424") == plain.get("424") and filtered.get("428") == plain.get("428"),
          f"syscalls 424 and 428 are left alone: errno {filtered.get('424')}, {filtered.get('428')} "
          f"(unfiltered {plain.get('424')}, {plain.get('428')})")
    check(filtered.get("status") == "2" and plain.get("status") != "2",
          f"/proc/self/status Seccomp: {filtered.get('status')} under the launcher, {plain.get('status')} without")

# ---- 1. Echo ----------------------------------------------------------------

srv, port = start_server("echo", "--mode", "echo", "--threads", "1")
try:
    if port:
        r = client("echo", HOST, str(port))
        check_client("echo client", r, ["Received b'Hello, world'"])
        r = client("echo", HOST, str(port), "it's \x01 done")
        check_client("echo client, own text", r, ["Received b\"it's \\x01 done\""])
        stop_server("echo", srv, ["served 2 connections (0 rejected)"])
finally:
    srv.kill()

# ---- 2. Multiconn, two threads (two executors: still one fallback line) ------

srv, port = start_server("multiconn", "-q", "--mode", "echo", "--threads", "2")
try:
    if port:
        r = client("multiconn", HOST, str(port), "200")
        check_client("multiconn 200", r, ["multiconn: 200 of 200 connections echoed every byte"])
        check(sum(1 for l in r.stdout.splitlines() if l.startswith("Closing connection ")) == 200,
              "multiconn: 200 'Closing connection' lines")
        srv.p.send_signal(signal.SIGUSR1)  # per-thread counters: both executors answer
        deadline = time.monotonic() + 5
        while len(re.findall(r"counters \(thread \d\): accepted=", srv.stdout())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        per_thread = [int(n) for n in re.findall(r"counters \(thread \d\): accepted=(\d+)", srv.stdout())]
        check(len(per_thread) == 2 and sum(per_thread) == 200, f"multiconn: SIGUSR1: both threads report, {per_thread}")
        stop_server("multiconn", srv, ["served 200 connections (0 rejected)"])
finally:
    srv.kill()

# ---- 3. App interop, both directions (as tests/interop/test_interop.py) -----

srv, port = start_server("app <- tutorial client", "-q", "--mode", "app", "--threads", "1")
try:
    if port:
        for (action, value), want in CASES:
            try:
                r = subprocess.run([sys.executable, tutorial_client, HOST, str(port), action, value], capture_output=True,
                                   text=True, encoding="utf-8", env=env, timeout=30)
                got, rc, err = (r.stdout.splitlines()[-1] if r.stdout else ""), r.returncode, r.stderr
            except subprocess.TimeoutExpired:
                got, rc, err = "", None, "timed out"
            check(rc == 0 and got == want,
                  f"python client -> seccomped ringframe-server: {action} {value!r}: {got!r} {tail(err, 200)!r}")
        stop_server("app <- tutorial client", srv, [f"{len(CASES)} messages in, {len(CASES)} out, 0 malformed"])
finally:
    srv.kill()

py = Proc([sys.executable, "-u", tutorial_server, HOST, "0"])
try:
    m = py.wait_stdout(r"Listening on \('127\.0\.0\.1', (\d+)\)", timeout=10)
    if check(m is not None, f"tutorial server starts: {tail(py.stdout() + py.stderr(), 200)!r}"):
        port = m.group(1)
        for (action, value), want in CASES:
            r = client("app", HOST, port, action, value)
            check_client(f"seccomped ringframe-client -> python server: {action} {value!r}", r, [want])
        # The tutorial server closes after one response: a second request fails, saying so.
        r = client("--repeat", "2", "app", HOST, port, "search", "ring")
        check(r.returncode == 1 and "after 1 of 2 responses: the server closed the connection" in r.stderr,
              f"seccomped --repeat 2 against a one-shot server fails clearly: {tail(r.stderr, 300)!r}")
finally:
    py.kill()

# ---- 4. Frame-echo ----------------------------------------------------------


def frame(content, content_type="binary/x", **extra):
    header = json.dumps({"byteorder": "little", "content-type": content_type, "content-encoding": "binary",
                         "content-length": len(content), **extra}, ensure_ascii=False).encode()
    return struct.pack(">H", len(header)) + header + content


srv, port = start_server("frame-echo", "-q", "--mode", "frame-echo", "--threads", "1")
try:
    if port:
        r = client("app", HOST, str(port), "foo", "barbazquux")
        check_client("ringframe-client app against frame-echo", r, ["Got response: b'foobarbazquux'"])
        r = client("-q", "--repeat", "50", "--pipeline", "4", "app", HOST, str(port), "search", "ring")
        check_client("ringframe-client --repeat 50 --pipeline 4 against frame-echo", r,
                     want_prefix="app: 50 responses, all alike")
        # A Python framed client: frames of many sizes pipelined on one
        # connection come back byte for byte.
        frames = [frame(bytes((i * 7 + n) & 0xFF for i in range(n))) for n in (0, 1, 100, 4096, 65536, 1 << 20)]
        frames.append(frame("h\u00e9llo \U0001f436".encode(), "text/plain", **{"x-extra": "\U0001f436"}))
        sent = b"".join(frames * 3)
        got = b""
        try:
            with socket.create_connection((HOST, port), timeout=10) as s:
                sender = threading.Thread(target=s.sendall, args=(sent,), daemon=True)
                sender.start()
                while len(got) < len(sent):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk
                sender.join(10)
            why = ""
        except OSError as e:
            why = f" ({e})"
        check(got == sent, f"python framed client: {len(frames) * 3} frames, {len(sent)} bytes, "
                           f"echoed byte for byte ({len(got)} bytes back{why})")
        n = 1 + 50 + len(frames) * 3
        stop_server("frame-echo", srv, [f"{n} messages in, {n} out, 0 malformed"])
finally:
    srv.kill()

# ---- 5. A clean drain on SIGTERM with requests in flight (app mode) ---------

srv, port = start_server("drain", "-q", "--mode", "app", "--threads", "1")
try:
    if port:
        content = b'{"action": "search", "value": "ring"}'
        header = json.dumps({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8",
                             "content-length": len(content)}).encode()
        data = b""
        try:
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall((struct.pack(">H", len(header)) + header + content) * 2000)
                data = s.recv(1)  # the server is answering
                srv.p.send_signal(signal.SIGTERM)
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            why = ""
        except OSError as e:
            why = f" ({e})"
        replies, pos, whole = 0, 0, True
        while pos < len(data):
            if len(data) - pos < 2:
                whole = False
                break
            hl = struct.unpack(">H", data[pos:pos + 2])[0]
            end = pos + 2 + hl + json.loads(data[pos + 2:pos + 2 + hl])["content-length"]
            if end > len(data) or json.loads(data[pos + 2 + hl:end]) != {
                    "result": "In the caves beneath the Misty Mountains. \U0001f48d"}:
                whole = False
                break
            replies += 1
            pos = end
        check(whole and replies >= 1, f"drain: {replies} replies, all whole and right, then a clean close{why}")
        rc = srv.finish(15)
        out, err = srv.stdout(), srv.stderr()
        check(rc == 0 and "SIGTERM: draining 1 connections" in out and "stopped by SIGTERM: served 1 connections" in out,
              f"drain: exit {rc}, {out.strip().splitlines()[-3:]!r} (stderr {tail(err, 300)!r})")
        check(f"messages_out={replies}" in out, f"drain: the server counted the {replies} replies it sent")
        check_fallback_line("drain server", out + err)
finally:
    srv.kill()

# ---- 6. --backend io_uring: no fallback, a clear refusal --------------------

try:
    r = subprocess.run([launcher, server_bin, "--backend", "io_uring", HOST, "0"], capture_output=True, text=True,
                       timeout=10)
    rc, out, err = r.returncode, r.stdout, r.stderr
except subprocess.TimeoutExpired as e:
    rc, out, err = None, str(e.stdout or ""), "still running after 10 s (it started: killed)"
check(rc not in (0, None) and "seccomp" in err and "Listening on" not in out,
      f"--backend io_uring under seccomp refuses to start, naming seccomp: exit {rc}, stderr {tail(err)!r}")
check(FALLBACK not in out + err, "--backend io_uring does not fall back")

# ---- 7. --log-format json: the fallback is a record of the log -------------
# (it was a text line on stderr beside the JSON ones: "every line" JSON was not)

try:
    r = subprocess.run([launcher, server_bin, "--log-format", "json", "--threads", "1", "--drain-timeout", "0.1",
                        HOST, "0"], capture_output=True, text=True, timeout=3, env=env)
    out, err = r.stdout, r.stderr
except subprocess.TimeoutExpired as e:  # it serves until killed: what it printed so far
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
records = []
for line in out.splitlines():
    try:
        records.append(json.loads(line))
    except ValueError:
        records.append(None)
check(records and None not in records, f"--log-format json under seccomp: every stdout line is JSON ({tail(out, 300)!r})")
fallback = [x for x in records if x and x.get("event") == "backend_fallback"]
check(len(fallback) == 1 and fallback[0]["level"] == "warn" and FALLBACK in fallback[0]["msg"]
      and "seccomp" in fallback[0]["reason"], f"--log-format json: one backend_fallback record ({fallback!r:.300})")
check(FALLBACK not in err, f"--log-format json: no text fallback line on stderr ({tail(err, 300)!r})")

print(f"{checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
