#!/usr/bin/env python3
"""End to end: ringframe-server --metrics, scraped during load.

Usage: e2e_metrics.py SERVER_BIN PROMTOOL

PROMTOOL is the path of `promtool` (Debian package prometheus), or "" when
meson found none (-Dpromtool=auto): every scrape is then checked by this
test's own parser only, and says so. CI configures with -Dpromtool=enabled,
so there a missing promtool fails the build before any test runs, and a
PROMTOOL that cannot be run fails this test.

Runs on whichever backend RINGFRAME_BACKEND names (meson test --setup epoll).
"""
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

server_bin, promtool = sys.argv[1], sys.argv[2]
backend_env = os.environ.get("RINGFRAME_BACKEND", "")
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


def frame(content: bytes) -> bytes:
    hdr = json.dumps({"byteorder": "little", "content-type": "binary/custom-client-binary-type",
                      "content-encoding": "binary", "content-length": len(content)}).encode()
    return struct.pack(">H", len(hdr)) + hdr + content


def recv_exactly(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def echo_round(s, count, size=100):
    """`count` pipelined messages, and their echoes read back whole."""
    msgs = b"".join(frame(bytes([i % 251]) * size) for i in range(count))
    s.sendall(msgs)
    return recv_exactly(s, len(msgs)) == msgs


def start_server(*args):
    srv = subprocess.Popen([server_bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data_port = metrics_port = None
    for _ in range(5):
        line = srv.stdout.readline()
        m = re.match(r"Listening on \('127\.0\.0\.1', (\d+)\)", line)
        if m:
            data_port = int(m.group(1))
        m = re.match(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics$", line.strip())
        if m:
            metrics_port = int(m.group(1))
        if data_port and metrics_port:
            break
    return srv, data_port, metrics_port


def http(port, request: bytes, timeout=10):
    """Send `request`, return (status, headers, body), or None if closed without a reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread: a reset
                break
            if not chunk:
                break
            data += chunk
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return status, headers, body


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse(text):
    """{(name, frozenset(labels)): value}; fails a check for any line out of format."""
    samples = {}
    typed = {}
    helped = set()
    ok = True
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            typed[name] = kind
            continue
        m = LINE.match(line)
        if not m:
            ok = False
            print("  bad line:", repr(line))
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        if family not in typed or family not in helped:
            ok = False
            print("  no HELP/TYPE before:", repr(line))
        if typed.get(family) == "counter" and not name.endswith("_total"):
            ok = False
            print("  counter not named _total:", name)
        lab = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        samples[(name, lab)] = float(value)
    return ok, samples


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def per_thread(samples, name, **labels):
    out = {}
    want = set(labels.items())
    for (n, lab), v in samples.items():
        if n == name and want <= set(lab):
            out[dict(lab)["thread"]] = out.get(dict(lab)["thread"], 0) + v
    return out


def scrape(port, what):
    r = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    check(r is not None and r[0] == 200, f"{what}: GET /metrics answers 200")
    if r is None:
        return {}
    status, headers, body = r
    check(headers.get("content-type") == "text/plain; version=0.0.4; charset=utf-8", f"{what}: content type 0.0.4")
    check(int(headers.get("content-length", -1)) == len(body), f"{what}: content-length matches the body")
    text = body.decode()
    ok, samples = parse(text)
    check(ok, f"{what}: every line is in the exposition format, after its HELP and TYPE")
    if promtool:
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        check(p.returncode == 0, f"{what}: promtool check metrics passes ({(p.stdout + p.stderr).strip()[:300]!r})")
    return samples


if not promtool:
    print("note: promtool not configured (meson -Dpromtool=auto found none): the format is checked by this "
          "test's parser only; CI configures -Dpromtool=enabled")

srv, port, mport = start_server("--mode", "frame-echo", "--threads", "2", "--metrics", "127.0.0.1:0", "127.0.0.1", "0")
load_stop = threading.Event()
load_errors = []
try:
    check(port is not None and mport is not None, f"server prints both addresses (data {port}, metrics {mport})")

    # Clients held open across the scrapes.
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    check(all(echo_round(s, 20) for s in held), "5 held clients: 20 pipelined echoes each")

    # Load on other connections meanwhile, until the end.
    def load():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                while not load_stop.is_set():
                    if not echo_round(s, 8, 1000):
                        load_errors.append("echo mismatch")
        except Exception as e:  # noqa: BLE001 - reported as a check below
            load_errors.append(repr(e))

    loaders = [threading.Thread(target=load) for _ in range(2)]
    for t in loaders:
        t.start()
    time.sleep(0.3)

    s1 = scrape(mport, "scrape 1")
    info = [dict(lab)["backend"] for (n, lab), v in s1.items() if n == "ringframe_backend_info" and v == 1]
    check(len(info) == 1 and info[0] in ("io_uring", "epoll") and (not backend_env or backend_env in ("auto", info[0])),
          f"ringframe_backend_info names the backend: {info} (RINGFRAME_BACKEND={backend_env!r})")
    check(total(s1, "ringframe_threads") == 2, "ringframe_threads 2")
    check(total(s1, "ringframe_connections_open") == 7, f"open connections: 7 (5 held + 2 loading): {total(s1, 'ringframe_connections_open')}")
    check(total(s1, "ringframe_connections_accepted_total") == 7, "accepted: 7")
    check(set(per_thread(s1, "ringframe_connections_open")) == {"0", "1"}, "series for thread 0 and thread 1")
    check(total(s1, "ringframe_messages_received_total", mode="frame-echo") >= 100,
          f"messages received by open connections are counted live: {total(s1, 'ringframe_messages_received_total')}")
    for t, n in per_thread(s1, "ringframe_messages_sent_total").items():
        h = per_thread(s1, "ringframe_message_handling_seconds_count").get(t)
        inf = per_thread(s1, "ringframe_message_handling_seconds_bucket", le="+Inf").get(t)
        check(h == n and inf == n, f"thread {t}: one handling-time observation per message sent ({h}, {inf}, {n})")

    # More traffic, then the counters must have grown.
    check(all(echo_round(s, 30) for s in held), "5 held clients: 30 more echoes each")
    s2 = scrape(mport, "scrape 2")
    for name in ("ringframe_messages_received_total", "ringframe_messages_sent_total", "ringframe_received_bytes_total",
                 "ringframe_sent_bytes_total", "ringframe_message_handling_seconds_count", "ringframe_completions_total"):
        check(total(s2, name) > total(s1, name), f"{name} grew: {total(s1, name)} -> {total(s2, name)}")
    grew = total(s2, "ringframe_messages_received_total") - total(s1, "ringframe_messages_received_total")
    check(grew >= 150, f"at least the held clients' 150 messages between the scrapes: {grew}")
    check(total(s2, "ringframe_connections_open") == 7, "still 7 open")

    # Closing two held clients: open goes down, closed up.
    for s in held[:2]:
        s.close()
    time.sleep(0.3)
    s3 = scrape(mport, "scrape 3")
    check(total(s3, "ringframe_connections_open") == 5, f"2 closed: 5 open ({total(s3, 'ringframe_connections_open')})")
    check(total(s3, "ringframe_connections_closed_total") == 2, "closed: 2")

    # Malformed input, counted by reason.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as bad:
        bad.sendall(b"\x00\x00")
        reply = b""
        while True:
            c = bad.recv(4096)
            if not c:
                break
            reply += c
    check(b"header length is 0" in reply, "a zero header length is answered with an error")
    s4 = scrape(mport, "scrape 4")
    check(total(s4, "ringframe_malformed_messages_total", reason="header_length_zero") == 1,
          "ringframe_malformed_messages_total{reason=header_length_zero} 1")

    # The strict responder.
    r = http(mport, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    check(r is not None and r[0] == 404, f"GET /nope: 404 ({r and r[0]})")
    r = http(mport, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    check(r is not None and r[0] == 405 and r[1].get("allow") == "GET", f"POST /metrics: 405, Allow: GET ({r and r[:2]})")
    r = http(mport, b"DELETE /other HTTP/1.1\r\n\r\n")
    check(r is not None and r[0] == 404, "DELETE /other: 404 (an unknown path first)")
    r = http(mport, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
    check(r is not None and r[0] == 200, "GET /metrics?x=1 HTTP/1.0: 200")
    r = http(mport, b"garbage\r\n\r\n")
    check(r is not None and r[0] == 400, "a bad request line: 400")
    r = http(mport, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    check(r is None, "headers over 8 KiB: closed without a reply")

    # A slow request is closed at its deadline (5 s), and does not hold up
    # scrapes or the data path meanwhile.
    slow = socket.create_connection(("127.0.0.1", mport), timeout=15)
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")
    t0 = time.monotonic()
    check(http(mport, b"GET /metrics HTTP/1.1\r\n\r\n") is not None, "a scrape is answered while a slow one waits")
    check(all(echo_round(s, 10) for s in held[2:]), "the data path is served while a slow scrape waits")
    try:
        got = slow.recv(4096)
    except OSError:
        got = b"(reset)"
    waited = time.monotonic() - t0
    check(got == b"" and 3.5 < waited < 12, f"the slow request is closed without a reply after ~5 s ({got!r}, {waited:.1f} s)")
    slow.close()

    load_stop.set()
    for t in loaders:
        t.join(30)
    check(not load_errors, f"the load ran without errors during the scrapes: {load_errors}")
    for s in held[2:]:
        s.close()
finally:
    load_stop.set()
    srv.terminate()
    out, err = finish(srv)  # a server that hangs: meson's timeout fails the test
    if failures or srv.returncode != 0:  # the first thing to read when a check failed (or raised)
        report = err.find("WARNING: ThreadSanitizer")  # a sanitizer's report whole, else the tail
        print(f"--- the server's stderr (exit status {srv.returncode}):\n" + (err[report:] if report >= 0 else err[-6000:]),
              flush=True)
check(srv.returncode == 0, f"server exits 0 on SIGTERM (exit status {srv.returncode})")
check("Connected by ('127.0.0.1'," in out, "text logs unchanged beside the metrics")

# Timeouts by kind, on a server with short ones.
srv, port, mport = start_server("--mode", "frame-echo", "--threads", "1", "--idle-timeout", "0.3",
                                "--message-timeout", "0.3", "--metrics", "127.0.0.1:0", "127.0.0.1", "0")
try:
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial.sendall(frame(b"x" * 100)[:20])
    time.sleep(1.8)  # 0.3 s, then up to 1 s of lingering close (the peers never close)
    s = scrape(mport, "timeouts")
    check(total(s, "ringframe_timeouts_total", kind="idle") == 1, "ringframe_timeouts_total{kind=idle} 1")
    check(total(s, "ringframe_timeouts_total", kind="message") == 1, "ringframe_timeouts_total{kind=message} 1")
    check(total(s, "ringframe_timeouts_total", kind="write") == 0, "ringframe_timeouts_total{kind=write} 0")
    check(total(s, "ringframe_connections_open") == 0, "both closed")
    idle.close()
    partial.close()
finally:
    srv.terminate()
    out, err = finish(srv)
check(srv.returncode == 0, "second server exits 0")

# Bad --metrics values are refused with a clear error.
for bad in ("nocolon", "127.0.0.1:99999", "unix:/tmp/x:1"):
    r = subprocess.run([server_bin, "--metrics", bad, "127.0.0.1", "0"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "--metrics" in r.stderr, f"--metrics {bad} refused: {r.stderr.strip()!r}")

# A metrics port in use: an error at start, naming it.
with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    r = subprocess.run([server_bin, "--metrics", f"127.0.0.1:{busy}", "127.0.0.1", "0"], capture_output=True, text=True,
                       timeout=10)
    check(r.returncode == 1 and f"for metrics, 127.0.0.1:{busy}): Address already in use" in r.stderr,
          f"metrics port in use: {r.stderr.strip()!r}")

print(f"{checks - len(failures)} of {checks} checks passed")
sys.exit(1 if failures else 0)
