#!/usr/bin/env python3
"""End to end: ringframe-example-proxy and ringframe-example-chat.

Proxy: the tutorial's Python app client through it against ringframe-server
--mode app; ringframe-client multiconn through it against --mode echo; a
target that resets one connection mid-stream (that client is closed, the
others go on, and the proxy's descriptors come back to where they were); a
side that resets while the other is silent and the path is full.
Chat: three clients and the order of broadcasts; bad input answered with an
error; a client that stops reading is disconnected while the others keep
receiving. Every wait is bounded.

Usage: e2e_proxy_chat.py PROXY CHAT SERVER CLIENT TUTORIAL_CLIENT
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

from e2e_util import fd_count, wait_for

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def start(cmd, pattern=r"Listening on \('127\.0\.0\.1', (\d+)\)"):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
    line = p.stdout.readline()
    m = re.search(pattern, line)
    if not m:
        p.kill()
        raise SystemExit(f"{cmd[0]} did not start: {line!r} {p.stdout.read()[-500:]!r}")
    return p, int(m.group(1))


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return -1, out
    return p.returncode, out


# ---- the framed protocol (docs/protocol.md) ----

def frame(content, content_type="text/json", encoding="utf-8"):
    if isinstance(content, str):
        content = content.encode("utf-8")
    hdr = json.dumps({"byteorder": sys.byteorder, "content-type": content_type, "content-encoding": encoding,
                      "content-length": len(content)}).encode("utf-8")
    return struct.pack(">H", len(hdr)) + hdr + content


def say(text):
    return frame(json.dumps({"action": "say", "value": text}, ensure_ascii=False))


class FramedClient:
    def __init__(self, port, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("peer closed")
            self.buf += data

    def recv(self):
        """The next message's JSON content."""
        self._need(2)
        hlen = struct.unpack(">H", self.buf[:2])[0]
        self._need(2 + hlen)
        hdr = json.loads(self.buf[2:2 + hlen])
        end = 2 + hlen + hdr["content-length"]
        self._need(end)
        content = self.buf[2 + hlen:end]
        self.buf = self.buf[end:]
        return json.loads(content.decode("utf-8"))

    def close(self):
        self.sock.close()


# ---- proxy ----

def proxy_tests(proxy, server, client, tutorial):
    app, app_port = start([server, "--mode", "app", "-q", "--threads", "1", "127.0.0.1", "0"])
    echo, echo_port = start([server, "--mode", "echo", "-q", "--threads", "1", "127.0.0.1", "0"])
    try:
        # 1. The tutorial's app client through the proxy.
        px, px_port = start([proxy, "127.0.0.1", "0", "127.0.0.1", str(app_port)])
        for (action, value), want in [(("search", "morpheus"), "Got result: Follow the white rabbit. \U0001f430"),
                                      (("search", "\U0001f436"), "Got result: \U0001f43e Playing ball! \U0001f3d0"),
                                      (("foo", "barbazquux"), "Got response: b'First 10 bytes of request: foobarbazq'")]:
            r = subprocess.run([sys.executable, tutorial, "127.0.0.1", str(px_port), action, value],
                               capture_output=True, text=True, encoding="utf-8", timeout=30)
            got = r.stdout.splitlines()[-1] if r.stdout else ""
            check(r.returncode == 0 and got == want, f"proxy: tutorial client {action} {value!r}: {got!r} {r.stderr[-200:]!r}")
        rc, out = stop(px)
        check(rc == 0 and "Stopped: 3 connections proxied" in out, f"proxy stops cleanly on SIGTERM: {out.strip()[-200:]!r}")

        # 2. ringframe-client multiconn through the proxy.
        px, px_port = start([proxy, "-q", "127.0.0.1", "0", "127.0.0.1", str(echo_port)])
        base = fd_count(px.pid)
        r = subprocess.run([client, "multiconn", "127.0.0.1", str(px_port), "50"], capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and "50 of 50 connections echoed every byte" in r.stdout,
              f"proxy: multiconn 50 through it: {r.stdout.strip()[-120:]!r} {r.stderr[-200:]!r}")
        check(wait_for(lambda: fd_count(px.pid) == base), f"proxy: descriptors back to {base} after multiconn ({fd_count(px.pid)})")
        rc, out = stop(px)
        check(rc == 0, f"proxy (quiet) stops cleanly: {out[-200:]!r}")
    finally:
        stop(app)
        stop(echo)

    # 3. A target that resets one connection mid-stream.
    resetting_target(proxy)

    # 4. Usage errors and an unreachable target.
    r = subprocess.run([proxy, "--help"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 0 and "LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT" in r.stdout, "proxy --help")
    r = subprocess.run([proxy, "127.0.0.1", "0"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "expected LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT" in r.stderr, f"proxy: missing arguments: {r.stderr[:120]!r}")
    r = subprocess.run([proxy, "127.0.0.1", "0", "127.0.0.1", "99999"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "bad target port '99999'" in r.stderr, f"proxy: bad port: {r.stderr[:120]!r}")
    r = subprocess.run([proxy, "--bogus", "a", "b", "c", "d"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "unknown option '--bogus'" in r.stderr, f"proxy: unknown option: {r.stderr[:120]!r}")
    # A port nobody listens on: the client is closed, the proxy says why and goes on.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    px, px_port = start([proxy, "127.0.0.1", "0", "127.0.0.1", str(dead_port)])
    c = socket.create_connection(("127.0.0.1", px_port), timeout=10)
    try:
        data = c.recv(16)
    except ConnectionResetError:
        data = b""
    c.close()
    check(data == b"", "proxy: a client of an unreachable target is closed")
    rc, out = stop(px)
    check(rc == 0 and "cannot connect to the target: Connection refused" in out, f"proxy: says the target refused: {out.strip()[-200:]!r}")


def resetting_target(proxy):
    """A target that echoes, except that a connection sending b'RESET' is reset (RST)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    target_port = lsock.getsockname()[1]
    done = threading.Event()

    def serve(conn):
        with conn:
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    if b"RESET" in data:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return  # close with linger 0: RST
                    conn.sendall(data)
            except OSError:
                return

    def accept_loop():
        lsock.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    px, px_port = start([proxy, "127.0.0.1", "0", "127.0.0.1", str(target_port)])
    try:
        base = fd_count(px.pid)
        a = socket.create_connection(("127.0.0.1", px_port), timeout=10)
        b = socket.create_connection(("127.0.0.1", px_port), timeout=10)
        for s, msg in ((a, b"hello from a"), (b, b"hello from b")):
            s.sendall(msg)
            check(s.recv(100) == msg, f"proxy: echo through it before the reset ({msg!r})")
        a.sendall(b"RESET")
        try:
            data = a.recv(100)
        except ConnectionResetError:
            data = b""
        check(data == b"", "proxy: the client whose target connection was reset is closed")
        a.close()
        b.sendall(b"still here")
        check(b.recv(100) == b"still here", "proxy: another client goes on after the reset")
        c = socket.create_connection(("127.0.0.1", px_port), timeout=10)
        c.sendall(b"new one")
        check(c.recv(100) == b"new one", "proxy: a new client is served after the reset")
        # Half-close: c's FIN reaches the target, whose FIN comes back.
        c.shutdown(socket.SHUT_WR)
        check(c.recv(100) == b"", "proxy: a half-close is forwarded and the other direction ends")
        c.close()
        b.close()
        check(wait_for(lambda: fd_count(px.pid) == base), f"proxy: descriptors back to {base} after the reset ({fd_count(px.pid)})")
        check(px.poll() is None, "proxy: still running")
    finally:
        rc, out = stop(px)
        done.set()
        lsock.close()
    check(rc == 0 and "target side failed: Connection reset by peer" in out, f"proxy: logs the reset: {out.strip()[-300:]!r}")


def reset_under_backpressure(proxy):
    """A side that resets while its pump is blocked sending to a peer that
    never reads, and that peer stays silent: no operation waits on the reset
    socket, yet the proxy must close both connections (review 51: it held
    them for as long as the silent peer lasted). Both directions."""
    for resetter in ("client", "target"):
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        px, px_port = start([proxy, "127.0.0.1", "0", "127.0.0.1", str(lsock.getsockname()[1])])
        try:
            base = fd_count(px.pid)
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", px_port))
            lsock.settimeout(10)
            t, _ = lsock.accept()
            t.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sender, silent = (c, t) if resetter == "client" else (t, c)
            sender.setblocking(False)
            idle, deadline = 0, time.monotonic() + 20
            while idle < 10 and time.monotonic() < deadline:  # until the whole path is full
                try:
                    sender.send(b"x" * 65536)
                    idle = 0
                except BlockingIOError:
                    idle += 1
                    time.sleep(0.05)
            check(fd_count(px.pid) == base + 2, f"proxy ({resetter} resets under backpressure): both connections open while the path is full")
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sender.close()  # RST
            closed = wait_for(lambda: fd_count(px.pid) == base, seconds=5.0)
            check(closed, f"proxy ({resetter} resets under backpressure): both connections closed within 5 s ({fd_count(px.pid)} descriptors, {base} before)")
            silent.close()
        finally:
            rc, out = stop(px)
            lsock.close()
        check(rc == 0 and f"{resetter} side failed: Connection reset by peer" in out,
              f"proxy ({resetter} resets under backpressure): logs which side reset: {out.strip()[-200:]!r}")


# ---- chat ----

def chat_tests(chat):
    ch, port = start([chat, "--queue", "8", "127.0.0.1", "0"])
    out_lines = []
    try:
        a, b, c = FramedClient(port), FramedClient(port), FramedClient(port)
        time.sleep(0.1)  # all three in the room (accepted) before anyone speaks
        for i in range(5):
            a.send(say(f"a{i}"))
        for i in range(5):
            check(a.recv() == {"result": "said to 2 others"}, f"chat: a's say {i} acknowledged")
        for name, cl in (("b", b), ("c", c)):
            got = [cl.recv() for _ in range(5)]
            check([g["said"] for g in got] == [f"a{i}" for i in range(5)], f"chat: {name} gets a's messages in order: {got}")
            check(all(re.fullmatch(r"\('127\.0\.0\.1', \d+\)", g["from"]) for g in got), f"chat: 'from' names the peer: {got[0]}")
        b.send(say("from b \U0001f436"))
        check(b.recv() == {"result": "said to 2 others"}, "chat: b acknowledged")
        check(a.recv()["said"] == "from b \U0001f436" and c.recv()["said"] == "from b \U0001f436", "chat: a and c get b's message")

        # Bad input: an error reply each, and the connection goes on.
        cases = [
            (frame(b"hi", "binary/custom", "binary"), "expected text/json"),
            (frame("[1, 2]"), "must be a JSON object"),
            (frame(json.dumps({"action": "shout", "value": "x"})), "unknown action"),
            (frame(json.dumps({"action": "say", "value": 3})), "\"value\" must be a string"),
        ]
        for data, want in cases:
            a.send(data)
            r = a.recv()
            check("error" in r and want in r["error"], f"chat: bad input answered: {r}")
        a.send(say("after errors"))
        check(a.recv() == {"result": "said to 2 others"}, "chat: still served after bad input")
        check(b.recv()["said"] == "after errors" and c.recv()["said"] == "after errors", "chat: others got it")
        # A malformed frame: the library's answer.
        a.send(struct.pack(">H", 5) + b"nope!")
        r = a.recv()
        check("error" in r, f"chat: a malformed header is answered with an error: {r}")
        a.close()

        # A client that stops reading is disconnected; the others keep receiving.
        slow = FramedClient(port, rcvbuf=4096)
        d = FramedClient(port)
        time.sleep(0.1)
        n, big = 300, "x" * 60000  # under --max-message (64 KiB by default)
        received = []
        counts = [0, 0]  # per reading client

        def reader(cl, count, k):
            try:
                for _ in range(count):
                    received.append(cl.recv()["said"])
                    counts[k] += 1
            except Exception as e:  # recorded as a failure below
                received.append(f"error: {e!r}")
                counts[k] = n

        readers = [threading.Thread(target=reader, args=(cl, n, k)) for k, cl in enumerate((c, d))]
        for t in readers:
            t.start()
        acks = []

        def ack_reader():
            try:
                for _ in range(n):
                    acks.append(b.recv())
            except Exception as e:
                acks.append({"error": repr(e)})

        at = threading.Thread(target=ack_reader)
        at.start()
        t0 = time.monotonic()
        for i in range(n):
            # The readers are never more than 4 messages behind (their queues
            # hold 8): only the client that stopped reading can fill its queue,
            # however slow this machine is.
            wait_for(lambda: min(counts) >= i - 4, 30)
            b.send(say(f"{i}:{big}"))
        at.join(60)
        for t in readers:
            t.join(60)
        elapsed = time.monotonic() - t0
        check(len(acks) == n and all("result" in x for x in acks), f"chat: the sender got all {n} acks ({len(acks)})")
        check(received.count(f"{n - 1}:{big}") == 2 and len(received) == 2 * n and not any(r.startswith("error") for r in received),
              f"chat: the two reading clients got all {n} messages ({len(received)})")
        # Bounded by far less than the 30 s write timeout a blocked broadcast would wait out.
        check(elapsed < 20, f"chat: the slow reader did not slow the others ({elapsed:.1f} s)")
        # The slow one: its connection ends (whatever it had buffered, then EOF or a reset).
        slow.sock.settimeout(10)
        ended = False
        try:
            while True:
                data = slow.sock.recv(1 << 20)
                if not data:
                    ended = True
                    break
        except (ConnectionResetError, BrokenPipeError):
            ended = True
        except socket.timeout:
            ended = False
        check(ended, "chat: the client that stopped reading was disconnected")
        # A later message goes to the readers only (acks name the count).
        b.send(say("last"))
        check(b.recv() == {"result": "said to 2 others"}, "chat: the disconnected client is out of the room")
        for cl in (b, c, d, slow):
            cl.close()
    finally:
        rc, out = stop(ch)
    check(rc == 0 and "Stopped:" in out and "1 disconnected for not reading" in out, f"chat: stops cleanly: {out.strip()[-200:]!r}")
    check(re.search(r"Disconnecting \('127\.0\.0\.1', \d+\): its queue of 8 messages is full", out) is not None,
          "chat: logs the disconnection")

    r = subprocess.run([chat, "--help"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 0 and "HOST PORT" in r.stdout, "chat --help")
    r = subprocess.run([chat, "--queue", "0", "127.0.0.1", "0"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "bad --queue '0'" in r.stderr, f"chat: bad --queue: {r.stderr[:120]!r}")
    r = subprocess.run([chat, "127.0.0.1"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "expected HOST PORT" in r.stderr, f"chat: missing port: {r.stderr[:120]!r}")


def chat_max_message(chat):
    """--max-message: a say over it is answered with an error naming the
    limit and its connection closed; the others go on (review 51: says up
    to 16 MiB let each client that did not read hold a 16 MiB copy)."""
    r = subprocess.run([chat, "--max-message", "0", "127.0.0.1", "0"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "bad --max-message '0'" in r.stderr, f"chat: bad --max-message: {r.stderr[:120]!r}")
    ch, port = start([chat, "--max-message", "1000", "127.0.0.1", "0"])
    try:
        a, b = FramedClient(port), FramedClient(port)
        time.sleep(0.1)
        a.send(say("y" * 900))  # content under 1000 bytes
        check(a.recv() == {"result": "said to 1 other"}, "chat --max-message 1000: a say under it is acknowledged")
        check(b.recv()["said"] == "y" * 900, "chat --max-message 1000: and broadcast")
        a.send(say("x" * 2000))
        reply = a.recv()
        check("exceeds the limit of 1000 bytes" in reply.get("error", ""), f"chat --max-message 1000: a larger say is refused: {reply}")
        try:
            a.recv()
            closed = False
        except (EOFError, ConnectionResetError):
            closed = True
        check(closed, "chat --max-message 1000: and its connection closed")
        b.send(say("still here"))
        check(b.recv() == {"result": "said to 0 others"}, "chat --max-message 1000: the others go on")
        a.close()
        b.close()
    finally:
        rc, out = stop(ch)
    check(rc == 0, f"chat --max-message: stops cleanly: {out.strip()[-200:]!r}")


def main(proxy, chat, server, client, tutorial):
    proxy_tests(proxy, server, client, tutorial)
    reset_under_backpressure(proxy)
    chat_tests(chat)
    chat_max_message(chat)
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
