#!/usr/bin/env python3
"""End to end: the built ringframe-server (echo) and ringframe-client, as a user runs them."""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from e2e_util import (LISTENING, check, finish, frame, json_frame, kill_if_running, listening_port, read_frame,
                      start_server)

server_bin, client_bin = sys.argv[1], sys.argv[2]


def run(*args, timeout=60):
    return subprocess.run([client_bin, *args], capture_output=True, text=True, timeout=timeout)


srv = subprocess.Popen([server_bin, "-q", "--threads", "1", "127.0.0.1", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    line = srv.stdout.readline()
    check(LISTENING.match(line) is not None, f"server announces its address: {line.strip()!r}")
    port = listening_port(line)

    r = run("echo", "127.0.0.1", port)
    check(r.returncode == 0 and r.stdout == "Received b'Hello, world'\n", f"echo client: {r.stdout!r}")

    r = run("multiconn", "127.0.0.1", port, "200")
    lines = r.stdout.splitlines()
    check(r.returncode == 0, f"multiconn 200 exits 0 (stderr {r.stderr[-300:]!r})")
    check(lines[-1] == "multiconn: 200 of 200 connections echoed every byte", f"summary: {lines[-1]!r}")
    check("Starting connection 1 to ('127.0.0.1', %s)" % port in lines, "tutorial-style 'Starting connection' line")
    check("Sending b'Message 1 from client.' to connection 1" in lines, "tutorial-style 'Sending' line")
    check(sum(1 for l in lines if l.startswith("Closing connection ")) == 200, "200 'Closing connection' lines")

    # A client killed mid-transfer and a reset connection leave the server serving.
    victim = subprocess.Popen([client_bin, "-q", "multiconn", "127.0.0.1", port, "300"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.05)
    victim.kill()
    victim.wait()
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(b"x" * 100000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    r = run("-q", "multiconn", "127.0.0.1", port, "200")
    check(r.returncode == 0, "server keeps serving after a killed client and a reset")

    r = run("echo", "127.0.0.1", port, "it's \x01 done")
    check(r.stdout == "Received b\"it's \\x01 done\"\n", f"bytes printed as Python does: {r.stdout!r}")

    # Errors a user makes.
    r = run("echo", "127.0.0.1", "1")
    check(r.returncode == 1 and "Connection refused" in r.stderr, f"connection refused: {r.stderr.strip()!r}")
    r = run("echo", "127.0.0.1", "99999")
    check(r.returncode == 2 and "bad port '99999'" in r.stderr, f"bad port: {r.stderr.strip()!r}")
    r2 = subprocess.run([server_bin, "127.0.0.1", port], capture_output=True, text=True, timeout=10)
    check(r2.returncode == 1 and "Address already in use" in r2.stderr, f"address in use: {r2.stderr.strip()!r}")
    for huge in ("18446744073709551615", "99999999999999999999999", "1073741825"):
        r2 = subprocess.run([server_bin, "--mode", "frame-echo", "--max-content", huge, "127.0.0.1", "0"],
                            capture_output=True, text=True, timeout=10)
        check(r2.returncode == 2 and "0 to 1073741824 bytes" in r2.stderr, f"--max-content {huge} refused: {r2.stderr.strip()!r}")
    r2 = subprocess.run([server_bin, "--help"], capture_output=True, text=True, timeout=10)
    check(r2.returncode == 0 and "Usage: ringframe-server" in r2.stdout, "server --help")
    r = run("--help")
    check(r.returncode == 0 and "Usage: ringframe-client" in r.stdout, "client --help")
    r = run("--version")
    check(r.returncode == 0 and r.stdout.startswith("ringframe-client "), "client --version")
    r = run("nonsense")
    check(r.returncode == 2 and "unknown command" in r.stderr, "unknown command")

    srv.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    srv.send_signal(signal.SIGTERM)
    out, err = srv.communicate(timeout=10)
    check(out.count("ringframe-server: counters: accepted=") == 2, "SIGUSR1 and shutdown print the counters")
    check(srv.returncode == 0, f"SIGTERM exits 0 (rc {srv.returncode}, stderr {err[-300:]!r})")
    check(re.search(r"stopped by SIGTERM: served \d+ connections", out) is not None, f"summary line: {out.strip()[-200:]!r}")
finally:
    kill_if_running(srv)

# Several threads: one ring each, sharing one listener.
mt, port = start_server(server_bin, "-q", "--threads", "2", "127.0.0.1", "0")
try:
    check("2 threads" in mt.stdout.readline(), "--threads 2 says so")
    r = run("-q", "multiconn", "127.0.0.1", port, "400")
    check(r.returncode == 0, f"multiconn 400 against 2 threads: {r.stdout.strip()!r}")
    # Defect 12: a second server on a taken port used to start silently (every
    # listener set SO_REUSEPORT) and take half the connections. Now it is an
    # error whatever its threads or mode, and --reuse-port alone cannot join a
    # server that did not opt in.
    for extra in ([], ["--threads", "2", "--mode", "app"], ["--threads", "2", "--reuse-port"]):
        try:
            r2 = subprocess.run([server_bin, *extra, "127.0.0.1", port], capture_output=True, text=True, timeout=5)
            rc, err = r2.returncode, r2.stderr.strip()
        except subprocess.TimeoutExpired:  # it started (and was killed): the old behaviour
            rc, err = None, "still serving after 5 s"
        check(rc == 1 and err == f"ringframe-server: cannot listen on 127.0.0.1:{port}: Address already in use",
              f"second server {extra} on a taken port: rc {rc}, {err!r}")
    mt.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    mt.send_signal(signal.SIGTERM)
    out, err = mt.communicate(timeout=15)
    per_thread = [int(x) for x in re.findall(r"counters \(thread \d\): accepted=(\d+)", out)]
    check(len(per_thread) == 2 and sum(per_thread) == 400 and min(per_thread) > 0,
          f"both threads served connections: {per_thread}")
    check(mt.returncode == 0 and "served 400 connections" in out, f"2 threads: summary adds up, exit {mt.returncode}")
finally:
    kill_if_running(mt)

# --reuse-port on both servers: they share the port, as asked.
rp1, port = start_server(server_bin, "-q", "--threads", "2", "--reuse-port", "127.0.0.1", "0")
rp2 = None
try:
    check("one SO_REUSEPORT listener each" in rp1.stdout.readline(), "--reuse-port says so")
    rp2 = subprocess.Popen([server_bin, "-q", "--threads", "2", "--reuse-port", "127.0.0.1", port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = rp2.stdout.readline()
    check(line.strip() == f"Listening on ('127.0.0.1', {port})", f"a second --reuse-port server joins: {line.strip()!r}")
    r = run("-q", "multiconn", "127.0.0.1", port, "200")
    check(r.returncode == 0, f"multiconn 200 against two --reuse-port servers: {r.stdout.strip()!r}")
    served = []
    for p in (rp1, rp2):
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=15)
        m = re.search(r"served (\d+) connections", out)
        served.append(int(m.group(1)) if m and p.returncode == 0 else -1)
    check(sum(served) == 200 and min(served) > 0, f"both --reuse-port servers served and exited 0: {served}")
finally:
    for p in (rp1, rp2):
        kill_if_running(p)

# Defect 2: with --threads 2, once one thread had finished draining (its
# executor destroyed) while the other still drained a client that pipelines
# 64 KiB frames and never reads, SIGUSR1 or a second SIGINT sent a task to the
# dead executor (SEGV in executor::ring_fd() under ASan). Now the finished
# shard idles until every shard is done and answers for its counters.
asan_env = dict(os.environ, ASAN_OPTIONS="detect_stack_use_after_return=1:" + os.environ.get("ASAN_OPTIONS", ""))
d2, port = start_server(server_bin, "-q", "--threads", "2", "--mode", "frame-echo", "--drain-timeout", "60",
                        "127.0.0.1", "0", env=asan_env)
hog = None
try:
    d2.stdout.readline()
    big = frame(b"x" * 65536, "binary/x", "binary")
    hog = socket.create_connection(("127.0.0.1", int(port)))
    hog.settimeout(0.5)
    try:
        for _ in range(256):  # until the server stops reading: its replies are stuck
            hog.sendall(big)
    except socket.timeout:
        pass
    d2.send_signal(signal.SIGINT)
    drains = sorted(d2.stdout.readline().strip() for _ in range(2))
    check(re.fullmatch(r"ringframe-server: SIGINT: draining 0 connections on thread \d \(at most 60\.0 s; again to stop now\)",
                       drains[0]) is not None and "draining 1 connections on thread" in drains[1],
          f"one thread drains the hog, the other has nothing to drain: {drains!r}")
    time.sleep(0.5)  # the idle thread finishes its drain meanwhile (nothing to wait on)
    d2.send_signal(signal.SIGUSR1)
    counters = sorted(d2.stdout.readline().strip()[:38] for _ in range(2))
    check(counters == ["ringframe-server: counters (thread 0):", "ringframe-server: counters (thread 1):"],
          f"SIGUSR1 after one thread finished: both threads report: {counters!r}")
    d2.send_signal(signal.SIGINT)
    out, err = d2.communicate(timeout=20)
    check(d2.returncode == 0 and "SIGINT again: stopping now" in out and "served 1 connections" in out
          and "Sanitizer" not in err,
          f"second SIGINT while one thread drains: exit {d2.returncode}, {out.strip().splitlines()[-2:]!r} {err[-600:]!r}")
finally:
    if hog:
        hog.close()
    kill_if_running(d2)

# Defect 11: a Unix-domain socket with several threads (one listener, shared),
# a stale socket file replaced, a live one or a non-socket refused, and the
# file removed on exit.
def unix_search(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        c.sendall(json_frame({"action": "search", "value": "morpheus"}))
        _, content = read_frame(c)
        return json.loads(content)


with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "app.sock")
    for attempt in ("default threads", "after a crash"):
        us = subprocess.Popen([server_bin, "-q", "--mode", "app", "unix:" + path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        try:
            line = us.stdout.readline()
            check(line.strip() == f"Listening on {path!r}", f"unix app server ({attempt}) starts: {line.strip()!r} {us.stderr.readline() if not line else ''!r}")
            if not line:
                continue
            us.stdout.readline()
            replies = [unix_search(path) for _ in range(20)]
            check(all(r == {"result": "Follow the white rabbit. \U0001f430"} for r in replies),
                  f"unix app server ({attempt}) answers 20 connections")
            if attempt == "default threads":
                r2 = subprocess.run([server_bin, "--threads", "2", "unix:" + path], capture_output=True, text=True, timeout=10)
                check(r2.returncode == 1 and r2.stderr.strip() ==
                      f"ringframe-server: cannot listen on unix:{path}: Address already in use",
                      f"a second server on a live unix path: rc {r2.returncode}, {r2.stderr.strip()!r}")
                check(unix_search(path) == {"result": "Follow the white rabbit. \U0001f430"},
                      "the first unix server still serves (its file was left alone)")
                us.kill()  # no cleanup: the stale file stays for the next attempt
                us.wait()
                check(os.path.exists(path), "a killed server leaves its socket file behind")
                # The kernel tears a dead process's rings down (and with them the
                # listener their accepts hold) a few ms after it exits: wait for that.
                for _ in range(500):
                    try:
                        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                            probe.connect(path)
                        time.sleep(0.01)
                    except ConnectionRefusedError:
                        break
            else:
                us.send_signal(signal.SIGTERM)
                out, err = us.communicate(timeout=15)
                check(us.returncode == 0 and "served 20 connections" in out, f"unix server exits 0: {out.strip()[-120:]!r}")
                check(not os.path.exists(path), "the socket file is removed on exit")
        finally:
            kill_if_running(us)
    notes = os.path.join(tmp, "notes.txt")
    with open(notes, "w") as f:
        f.write("keep me\n")
    r2 = subprocess.run([server_bin, "--threads", "2", "unix:" + notes], capture_output=True, text=True, timeout=10)
    check(r2.returncode == 1 and f"cannot listen on unix:{notes}: File exists" in r2.stderr,
          f"a unix path that is not a socket: rc {r2.returncode}, {r2.stderr.strip()!r}")
    check(open(notes).read() == "keep me\n", "the file that is not a socket is left alone")

# SIGTERM with requests in flight (app mode): every request the server took
# in is answered, in order, with whole frames; then it closes and exits 0.
app, port = start_server(server_bin, "-q", "--mode", "app", "127.0.0.1", "0")
try:
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(frame(b'{"action": "search", "value": "ring"}') * 2000)
    first = s.recv(1)  # the server is answering
    app.send_signal(signal.SIGTERM)
    data = first
    s.settimeout(10)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    replies, pos, whole = 0, 0, True
    while pos < len(data):
        if len(data) - pos < 2:
            whole = False
            break
        hl = struct.unpack(">H", data[pos:pos + 2])[0]
        h = json.loads(data[pos + 2:pos + 2 + hl])
        end = pos + 2 + hl + h["content-length"]
        if end > len(data):
            whole = False
            break
        if json.loads(data[pos + 2 + hl:end]) != {"result": "In the caves beneath the Misty Mountains. \U0001f48d"}:
            whole = False
        replies += 1
        pos = end
    check(whole and replies >= 1, f"drain: {replies} replies, all whole and right, then a clean close")
    out, err = app.communicate(timeout=15)
    check(app.returncode == 0 and "SIGTERM: draining 1 connections" in out,
          f"drain: exit {app.returncode}, {out.strip().splitlines()[-3:]!r}")
    check(f"messages_out={replies}" in out, f"drain: the server counted {replies} replies sent")
finally:
    kill_if_running(app)

# A Unix-domain socket has no port: the client takes unix:/path with no PORT
# argument (issue 10, defect 13). One server thread per listener here.
with tempfile.TemporaryDirectory() as tmp:
    for mode in ("app", "echo"):
        path = os.path.join(tmp, mode + ".sock")
        us = subprocess.Popen([server_bin, "-q", "--threads", "1", "--mode", mode, "unix:" + path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = us.stdout.readline()
            check(line.strip() == f"Listening on {path!r}", f"unix {mode} server announces its path: {line.strip()!r}")
            if mode == "app":
                r = run("app", "unix:" + path, "search", "morpheus")
                check(r.returncode == 0 and r.stdout.splitlines() == [
                    f"Starting connection to {path!r}",
                    "Sending b'\\x00`{\"byteorder\":\"%s\",\"content-type\":\"text/json\",\"content-encoding\":\"utf-8\","
                    "\"content-length\":41}{\"action\": \"search\", \"value\": \"morpheus\"}' to %r" % (sys.byteorder, path),
                    f"Received response {{'result': 'Follow the white rabbit. \U0001f430'}} from {path!r}",
                    "Got result: Follow the white rabbit. \U0001f430",
                    f"Closing connection to {path!r}"],
                      f"app over unix:PATH, no PORT: rc {r.returncode}, {r.stdout!r} {r.stderr.strip()!r}")
                r = run("app", "unix:" + path, "find", "morpheus")
                check(r.returncode == 0 and "Got response: b'First 10 bytes of request: findmorphe'" in r.stdout,
                      f"binary app request over unix:PATH: {r.stdout.splitlines()[-2:]!r}")
                r = run("-q", "--repeat", "50", "--pipeline", "4", "app", "unix:" + path, "search", "ring")
                check(r.returncode == 0 and r.stdout.startswith("app: 50 responses, all alike"),
                      f"pipelined app over unix:PATH: {r.stdout.strip()!r}")
                r = run("app", "unix:" + path, "65432", "search", "morpheus")
                check(r.returncode == 2 and "usage: app unix:/PATH ACTION VALUE (a unix: HOST has no PORT)" in r.stderr,
                      f"a PORT after unix:PATH is a usage error: {r.stderr.strip()!r}")
            else:
                r = run("echo", "unix:" + path)
                check(r.returncode == 0 and r.stdout == "Received b'Hello, world'\n", f"echo over unix:PATH: {r.stdout!r}")
                r = run("echo", "unix:" + path, "65432")
                check(r.returncode == 0 and r.stdout == "Received b'65432'\n", f"echo unix:PATH TEXT: {r.stdout!r}")
                r = run("-q", "multiconn", "unix:" + path, "20")
                check(r.returncode == 0 and r.stdout == "multiconn: 20 of 20 connections echoed every byte\n",
                      f"multiconn over unix:PATH: {r.stdout!r}")
            us.send_signal(signal.SIGTERM)
            out, err = us.communicate(timeout=15)
            check(us.returncode == 0, f"unix {mode} server exits 0 (rc {us.returncode}, stderr {err[-300:]!r})")
        finally:
            kill_if_running(us)

finish()
