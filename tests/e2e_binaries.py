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

server_bin, client_bin = sys.argv[1], sys.argv[2]
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(*args, timeout=60):
    return subprocess.run([client_bin, *args], capture_output=True, text=True, timeout=timeout)


srv = subprocess.Popen([server_bin, "-q", "--threads", "1", "127.0.0.1", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    line = srv.stdout.readline()
    m = re.match(r"Listening on \('127\.0\.0\.1', (\d+)\)", line)
    check(m is not None, f"server announces its address: {line.strip()!r}")
    port = m.group(1)

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
    if srv.poll() is None:
        srv.kill()

# Several threads: one ring and one SO_REUSEPORT listener each.
mt = subprocess.Popen([server_bin, "-q", "--threads", "2", "127.0.0.1", "0"], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
try:
    port = re.match(r"Listening on \('127\.0\.0\.1', (\d+)\)", mt.stdout.readline()).group(1)
    check("2 threads" in mt.stdout.readline(), "--threads 2 says so")
    r = run("-q", "multiconn", "127.0.0.1", port, "400")
    check(r.returncode == 0, f"multiconn 400 against 2 threads: {r.stdout.strip()!r}")
    mt.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    mt.send_signal(signal.SIGTERM)
    out, err = mt.communicate(timeout=15)
    per_thread = [int(x) for x in re.findall(r"counters \(thread \d\): accepted=(\d+)", out)]
    check(len(per_thread) == 2 and sum(per_thread) == 400 and min(per_thread) > 0,
          f"both threads served connections: {per_thread}")
    check(mt.returncode == 0 and "served 400 connections" in out, f"2 threads: summary adds up, exit {mt.returncode}")
finally:
    if mt.poll() is None:
        mt.kill()

# SIGTERM with requests in flight (app mode): every request the server took
# in is answered, in order, with whole frames; then it closes and exits 0.
app = subprocess.Popen([server_bin, "-q", "--mode", "app", "127.0.0.1", "0"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
try:
    port = int(re.match(r"Listening on \('127\.0\.0\.1', (\d+)\)", app.stdout.readline()).group(1))
    content = b'{"action": "search", "value": "ring"}'
    header = json.dumps({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8",
                         "content-length": len(content)}).encode()
    frame = struct.pack(">H", len(header)) + header + content
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(frame * 2000)
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
    if app.poll() is None:
        app.kill()

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
            if us.poll() is None:
                us.kill()

print(f"{checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
