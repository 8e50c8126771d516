#!/usr/bin/env python3
"""End to end: ringframe-server --log-format json and --log-level.

Every line the server prints in json mode is parsed with the json module;
peers and reasons carrying awkward bytes (quotes, backslashes, control
characters, U+2028, a UTF-8 sequence cut in half, bytes that are not UTF-8)
must still give valid JSON that says what happened. Text stays the default.
"""
import datetime
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

server_bin = sys.argv[1]
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def finish(srv):
    """Its remaining stdout and its stderr. Not communicate(): that reads the
    pipe itself and loses what readline() already buffered."""
    out = srv.stdout.read()
    err = srv.stderr.read()
    srv.wait(timeout=20)
    return out, err


def frame(header: dict, content: bytes) -> bytes:
    hdr = json.dumps(header, ensure_ascii=False).encode()
    return struct.pack(">H", len(hdr)) + hdr + content


def read_all(s):
    out = b""
    while True:
        try:
            c = s.recv(65536)
        except ConnectionResetError:
            break
        if not c:
            break
        out += c
    return out


KEYS = {"ts", "level", "thread", "event", "peer", "reason", "msg"}


def parse_json_lines(lines, what):
    records = []
    bad = []
    for raw in lines:
        try:
            obj = json.loads(raw.decode("utf-8"))  # strict UTF-8: the output must be valid UTF-8
            ok = isinstance(obj, dict) and set(obj) == KEYS and raw.endswith(b"}\n") and raw.count(b"\n") == 1
            datetime.datetime.strptime(obj["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            ok = ok and obj["level"] in ("error", "warn", "info", "debug")
            ok = ok and (obj["thread"] == "main" or obj["thread"].isdigit())
        except Exception as e:  # noqa: BLE001 - any failure is the check's
            ok = False
            print("  ", repr(raw), e)
        if ok:
            records.append(obj)
        else:
            bad.append(raw)
    check(lines and not bad, f"{what}: all {len(lines)} lines are one JSON object each with {sorted(KEYS)} ({bad[:2]})")
    return records


# 1. TCP, app mode, json, debug: connection, malformed input, metrics request, drain events.
awkward = 'x"\\\x01\u2028' + "é" * 20  # the reason quotes it, cut at 40 bytes: in the middle of an é


def tcp_traffic(first):
    port = int(json.loads(first)["msg"].split(", ")[1].rstrip(")"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame({"byteorder": "little", "content-type": "text/json", "content-encoding": awkward,
                         "content-length": 2}, b"{}"))
        s.shutdown(socket.SHUT_WR)
        read_all(s)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x00\x00")
        read_all(s)
    # The metrics port: from the line that announced it.
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as s:
        s.sendall(b"GET /missing HTTP/1.1\r\n\r\n")
        read_all(s)


metrics_port = None


def start_1():
    srv = subprocess.Popen([server_bin, "--mode", "app", "--threads", "2", "--log-format", "json", "--log-level", "debug",
                            "--metrics", "127.0.0.1:0", "127.0.0.1", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [srv.stdout.readline(), srv.stdout.readline()]
    return srv, lines


srv, lines = start_1()
try:
    head = [json.loads(l) for l in lines]
    check(head[0]["event"] == "listening" and head[0]["thread"] == "main", f"first line: listening ({head[0]})")
    check(head[1]["event"] == "metrics_listening", f"second line: metrics_listening ({head[1]})")
    metrics_port = int(re.search(r":(\d+)/metrics", head[1]["msg"]).group(1))
    tcp_traffic(lines[0])
    time.sleep(0.3)
finally:
    srv.terminate()
    out, err = finish(srv)
check(srv.returncode == 0, f"json server exits 0 (stderr {err[-200:]!r})")
lines += out.splitlines(keepends=True)
recs = parse_json_lines(lines, "json, debug")
events = [r["event"] for r in recs]
for ev in ("listening", "metrics_listening", "backend", "connected", "closed", "malformed", "metrics_request", "drain",
           "stopped", "counters"):
    check(ev in events, f"event {ev} logged ({events})")
conn = [r for r in recs if r["event"] == "connected"]
check(conn and all(re.fullmatch(r"127\.0\.0\.1:\d+", r["peer"]) and r["thread"] in ("0", "1") and r["level"] == "info"
                   for r in conn), f"connected: peer host:port, thread 0 or 1, info ({conn[:1]})")
check(all(r["msg"].startswith("Connected by ('127.0.0.1', ") for r in conn), "msg keeps the text line")
mal = [r for r in recs if r["event"] == "malformed"]
check(len(mal) == 2 and all(r["level"] == "warn" for r in mal), f"two malformed, warn ({len(mal)})")
enc = [r for r in mal if "content-encoding" in r["reason"]]
# The decoder quotes the first 40 bytes of the value, which ends inside an é.
want = 'content-encoding "' + awkward.encode()[:40].decode("utf-8", "replace") + '" is not supported for text/json (use utf-8)'
check(enc and enc[0]["reason"] == want,
      f"the peer's bytes in the reason survive escaping, the cut é becomes U+FFFD ({enc and enc[0]['reason']!r})")
check(any(r["reason"] == "header length is 0: a frame must carry a JSON header" for r in mal), "header length 0 reason")
raw_line = next(l for l in lines if b"content-encoding" in l and b"malformed" in l)
check(b"\\u2028" in raw_line and b"\\u0001" in raw_line and b'x\\"\\\\' in raw_line,
      f"U+2028, control bytes, quotes and backslashes escaped in the raw line ({raw_line[:160]!r})")
mreq = [r for r in recs if r["event"] == "metrics_request"]
check(mreq and mreq[0]["level"] == "debug" and mreq[0]["reason"].startswith("404") and mreq[0]["thread"] == "main",
      f"the metrics request: debug, 404, on the main thread ({mreq[:1]})")

# 2. --log-level warn: the connection events go, the malformed ones stay; text format.
srv = subprocess.Popen([server_bin, "--mode", "app", "--threads", "1", "--log-level", "warn", "127.0.0.1", "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    first = srv.stdout.readline()
    port = int(re.match(r"Listening on \('127\.0\.0\.1', (\d+)\)", first).group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x00\x00")
        read_all(s)
    time.sleep(0.3)
    srv.send_signal(signal.SIGUSR1)  # asked for: printed whatever the level (it was not)
    time.sleep(0.3)
finally:
    srv.terminate()
    out, err = finish(srv)
check(out.count("ringframe-server: counters: accepted=") == 2,
      f"--log-level warn: SIGUSR1 and the shutdown print the counters ({out.count('counters: accepted=')} lines)")
check("Connected by" not in out and "Closing connection" not in out, "--log-level warn: no connection lines")
check(re.search(r"^Malformed message from \('127\.0\.0\.1', \d+\): header length is 0", out, re.M) is not None,
      "--log-level warn: the malformed line, as text")
check("ringframe-server: stopped by SIGTERM" in out, "the summary is printed whatever the level")

# 3. A Unix-domain peer whose abstract name holds awkward bytes, json.
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "s")
    srv = subprocess.Popen([server_bin, "--mode", "app", "--threads", "1", "--log-format", "json", f"unix:{path}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = [srv.stdout.readline()]
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.bind(b"\0peer\"\\\n\xff\xfe")
        c.connect(path)
        c.sendall(b"\x00\x00")
        read_all(c)
        c.close()
        time.sleep(0.3)
    finally:
        srv.terminate()
        out, err = finish(srv)
    lines += out.splitlines(keepends=True)
    recs = parse_json_lines(lines, "json, a Unix peer with awkward bytes")
    conn = [r for r in recs if r["event"] in ("connected", "malformed")]
    check(len(conn) == 2 and all(r["peer"].startswith('unix:@peer"\\\n') and "\ufffd" in r["peer"] for r in conn),
          f"the peer's name escaped, its non-UTF-8 bytes as U+FFFD ({[r['peer'] for r in conn]})")

# 4. Text is the default and unchanged.
srv = subprocess.Popen([server_bin, "--threads", "1", "127.0.0.1", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
try:
    first = srv.stdout.readline()
    first += srv.stdout.readline()  # the backend's line, before a connection's can come
    port = int(re.match(r"Listening on \('127\.0\.0\.1', (\d+)\)", first).group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"hi")
        s.recv(10)
    time.sleep(0.3)
finally:
    srv.terminate()
    out, err = finish(srv)
text = (first + out).splitlines()
check(not any(l.startswith("{") for l in text), "text by default: no JSON")
check(re.match(r"^(io_uring: \S+; 1 thread|epoll: 1 thread)$", text[1]) is not None, f"backend line unchanged: {text[1]!r}")
check(re.match(r"^Connected by \('127\.0\.0\.1', \d+\)$", text[2]) is not None, f"connected line unchanged: {text[2]!r}")
check(re.match(r"^Closing connection to \('127\.0\.0\.1', \d+\)$", text[3]) is not None, f"closing line unchanged: {text[3]!r}")
check(text[4] == "ringframe-server: SIGTERM: draining 0 connections (at most 10.0 s; again to stop now)", f"drain line: {text[4]!r}")

for bad in (("--log-format", "xml"), ("--log-level", "loud")):
    r = subprocess.run([server_bin, *bad, "127.0.0.1", "0"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and bad[0] in r.stderr, f"{' '.join(bad)} refused: {r.stderr.strip()!r}")

print(f"{checks - len(failures)} of {checks} checks passed")
sys.exit(1 if failures else 0)
