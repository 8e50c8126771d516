#!/usr/bin/env python3
"""The thirty-third review: ringframe-server and ringframe-client as a new
user meets them (bad option values, unix:/path listeners).

Every wait is bounded: a binary that should have refused its arguments but
started (or hung) instead is killed and reported.

Usage: e2e_review33.py SERVER CLIENT KVSTORE
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

from e2e_util import check, fake_server, finish, run_bounded, start_server, stop

server_bin, client_bin, kvstore_bin = sys.argv[1], sys.argv[2], sys.argv[3]


# F1: values that parse but do not mean what was typed. strtoul/strtoull
#     skip leading blanks and then take "-1" as the largest value (only a
#     '-' in the first byte was refused), an overflow of
#     --zero-copy-threshold was clamped silently (no ERANGE check), and a
#     positive number of seconds below a nanosecond was truncated to 0,
#     which --idle-timeout and --message-timeout take as "never". The server
#     started with each; every one must be a usage error (exit 2).
bad_server_args = [
    ("--max-connections", " -1"),
    ("--receive-budget", " -1"),
    ("--gather-threshold", " -1"),
    ("--zero-copy-threshold", " -1"),
    ("--zero-copy-threshold", "99999999999999999999"),
    ("--max-content", " -1"),
    ("--read-size", " -1"),
    ("--threads", " -1"),
    ("--idle-timeout", "1e-10"),
    ("--message-timeout", "1e-10"),
    ("--drain-timeout", "1e-10"),
]
for opt, value in bad_server_args:
    rc, out, err = run_bounded([server_bin, "-q", "--threads", "1", opt, value, "127.0.0.1", "0"]
                               if opt != "--threads" else [server_bin, "-q", opt, value, "127.0.0.1", "0"])
    check(rc == 2 and f"bad {opt} '{value}'" in err and "Listening" not in out,
          f"F1 server {opt} {value!r}: a usage error (rc {rc}, {err.strip()[:120]!r})")

# New-user audit (session 33): numbers with a sign or a leading blank, in
#     hexadecimal, or "inf", were still taken by the options that did not go
#     through parse_whole, and a refused value did not say what was expected.
more_bad_server_args = [
    ("--max-content", " 5", "expected 0 to 1073741824 bytes"),
    ("--max-content", "+5", "expected 0 to 1073741824 bytes"),
    ("--threads", " 2", "expected 1 to 1024"),
    ("--threads", "+1", "expected 1 to 1024"),
    ("--read-size", " 2048", "expected 1024 to 16777216 bytes"),
    ("--read-size", "+2048", "expected 1024 to 16777216 bytes"),
    ("--message-timeout", "0x10", "expected seconds"),
    ("--idle-timeout", "inf", "expected seconds"),
    ("--drain-timeout", " 1", "expected seconds"),
    ("--drain-timeout", "-1", "expected seconds"),
]
for opt, value, expected in more_bad_server_args:
    rc, out, err = run_bounded([server_bin, "-q", "--threads", "1", opt, value, "127.0.0.1", "0"]
                               if opt != "--threads" else [server_bin, "-q", opt, value, "127.0.0.1", "0"])
    check(rc == 2 and f"bad {opt} '{value}' ({expected}" in err and "Listening" not in out,
          f"audit server {opt} {value!r}: a usage error that says what is expected (rc {rc}, {err.strip()[:120]!r})")
for args, expected in [(["--repeat", "+3", "echo", "127.0.0.1", "9", "x"], "bad --repeat '+3' (expected 1 to 100000000)"),
                       (["--pipeline", " 4", "echo", "127.0.0.1", "9", "x"], "bad --pipeline ' 4' (expected 1 to 100000000)"),
                       (["--timeout", "0x5", "echo", "127.0.0.1", "9", "x"], "bad --timeout '0x5' (expected seconds"),
                       (["multiconn", "127.0.0.1", "9", "+3"], "bad NUM_CONNS '+3' (expected 1 to 1000000)")]:
    rc, out, err = run_bounded([client_bin, *args])
    check(rc == 2 and expected in err, f"audit client {args}: a usage error (rc {rc}, {err.strip()[:120]!r})")

for metrics in ("[::1]", "[::1", "unix:/tmp/ringframe-metrics.sock"):
    rc, out, err = run_bounded([server_bin, "-q", "--threads", "1", "--metrics", metrics, "127.0.0.1", "0"])
    check(rc == 2 and f"bad --metrics '{metrics}' (expected HOST:PORT" in err,
          f"audit server --metrics {metrics!r}: what is expected, not a bad port (rc {rc}, {err.strip()[:120]!r})")
rc, out, err = run_bounded([server_bin, "127.0.0.1:7000"])
check(rc == 2 and "HOST and PORT are two arguments: '127.0.0.1' '7000'" in err,
      f"audit server HOST:PORT as one argument: the hint (rc {rc}, {err.strip()[:160]!r})")

# Good values still start (the fix refuses no value that was fine).
for opt, value in [("--max-connections", "5"), ("--zero-copy-threshold", "4096"), ("--idle-timeout", "0"),
                   ("--idle-timeout", "0.5"), ("--message-timeout", "1e-9"), ("--receive-budget", "0"),
                   ("--drain-timeout", ".5"), ("--idle-timeout", "1.5e1"), ("--max-content", "0")]:
    p, port = start_server(server_bin, "-q", "--threads", "1", "--mode", "frame-echo", opt, value, "127.0.0.1", "0")
    stop(p)
    check(p.returncode == 0, f"F1 server {opt} {value!r} starts and stops cleanly (rc {p.returncode})")


# F2: ringframe-client --timeout below a nanosecond was truncated to 0, which
#     the library takes as "no deadline": against a server that never
#     answers, the client waited for ever (--help: "give up on any one
#     network operation after this long").
silent = fake_server(lambda c: None)  # accepts, reads nothing, never answers
try:
    for cmd in (["echo", "127.0.0.1", silent.port], ["app", "127.0.0.1", silent.port, "search", "x"]):
        rc, out, err = run_bounded([client_bin, "--timeout", "1e-10", *cmd], 10.0)
        check(rc == 2 and "bad --timeout '1e-10'" in err, f"F2 client --timeout 1e-10 {cmd[0]}: rc {rc}, {err.strip()[:120]!r}")
    # A real timeout still gives up (and says so).
    rc, out, err = run_bounded([client_bin, "--timeout", "0.3", "echo", "127.0.0.1", silent.port], 10.0)
    check(rc == 1 and "timed out" in err, f"F2 client --timeout 0.3 against a silent server: rc {rc}, {err.strip()!r}")
finally:
    silent.close()


# F3: "unix:" (no path) was refused as "File name too long".
rc, out, err = run_bounded([server_bin, "unix:"])
check(rc == 2 and "too long" not in err and "empty" in err, f"F3 server unix: (no path): rc {rc}, {err.strip()!r}")
rc, out, err = run_bounded([client_bin, "echo", "unix:"])
check(rc == 2 and "too long" not in err and "empty" in err, f"F3 client echo unix: (no path): rc {rc}, {err.strip()!r}")
long_path = "/tmp/" + "x" * 120
rc, out, err = run_bounded([server_bin, "unix:" + long_path])
check(rc == 2 and "too long" in err and not os.path.exists(long_path), f"a path over 107 bytes: rc {rc}, {err.strip()!r}")


# F4: ringframe-client permuted its arguments, so an ARG after COMMAND that
#     starts with '-' was taken as an option: `echo HOST PORT -hello`
#     printed --help and exited 0 without sending anything (a script that
#     passes its text through thought it had been echoed), and `app ... search
#     -1` was "unknown option '-1'". --help says OPTIONS come before COMMAND.
def echo_back(c):
    try:
        while True:
            b = c.recv(4096)
            if not b:
                return
            c.sendall(b)
    except OSError:
        return


echo_peer = fake_server(echo_back)
try:
    for text in ("-hello", "-1", "--help"):
        rc, out, err = run_bounded([client_bin, "echo", "127.0.0.1", echo_peer.port, text], 10.0)
        check(rc == 0 and out == f"Received b'{text}'\n", f"F4 client echo TEXT {text!r} is sent: rc {rc}, {out[:80]!r} {err.strip()[:80]!r}")
    rc, out, err = run_bounded([client_bin, "-q", "--timeout", "5", "echo", "127.0.0.1", echo_peer.port, "x"], 10.0)
    check(rc == 0 and out == "Received b'x'\n", f"F4 options before COMMAND still work: rc {rc}, {out!r}")
finally:
    echo_peer.close()


# F5: an option given without its value was reported as unknown
#     ("unknown option '--threads'"), which sends a user to --help looking for
#     an option that is there.
for binary, opt in ((server_bin, "--threads"), (server_bin, "-t"), (server_bin, "--idle-timeout"),
                    (client_bin, "--timeout"), (client_bin, "-n")):
    rc, out, err = run_bounded([binary, opt])
    check(rc == 2 and f"option '{opt}' needs a value" in err and "unknown" not in err,
          f"F5 {os.path.basename(binary)} {opt} with no value: rc {rc}, {err.strip()[:100]!r}")
rc, out, err = run_bounded([server_bin, "--no-such-option"])
check(rc == 2 and "unknown option '--no-such-option'" in err, f"an unknown option is still one: {err.strip()[:100]!r}")


# F6: ringframe-kvstore let the executor's setup_error escape main: a bad
#     RINGFRAME_BACKEND, or io_uring refused where it was asked for, ended in
#     std::terminate (SIGABRT, a core dump) instead of one line and exit 1 as
#     ringframe-server and the other examples say it.
env = dict(os.environ, RINGFRAME_BACKEND="bogus")
p = subprocess.Popen([kvstore_bin, "127.0.0.1", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
try:
    out, err = p.communicate(timeout=10)
except subprocess.TimeoutExpired:
    p.kill()
    out, err = p.communicate()
check(p.returncode == 1 and err.startswith("ringframe-kvstore: ") and "RINGFRAME_BACKEND='bogus'" in err
      and "terminate" not in err, f"F6 kvstore with a setup error: rc {p.returncode}, {err.strip()[:160]!r}")
# Its usage and listen errors were already one line (kept as regressions).
rc, out, err = run_bounded([kvstore_bin, "127.0.0.1", "65536"])
check(rc == 2 and "usage: ringframe-kvstore" in err, f"kvstore bad port: rc {rc}, {err.strip()!r}")
# --help is asked for: usage on stdout, exit 0 (it was the usage error, exit
# 2, since "--help" is no IP). Extra arguments and options are bad usage
# (they were ignored, and the store started).
rc, out, err = run_bounded([kvstore_bin, "--help"])
check(rc == 0 and out.startswith("usage: ringframe-kvstore") and err == "", f"kvstore --help: rc {rc}, {err.strip()!r}")
for argv, says in ((["127.0.0.1", "0", "extra"], "at most IP and PORT"), (["-q"], "unknown option '-q'"),
                   (["not-an-ip", "0"], "bad IP 'not-an-ip'"), (["127.0.0.1", "65536"], "bad port '65536'")):
    rc, out, err = run_bounded([kvstore_bin] + argv)
    check(rc == 2 and says in err and "usage: ringframe-kvstore" in err, f"kvstore {argv}: rc {rc}, {err.strip()!r}")
holder = socket.socket()
holder.bind(("127.0.0.1", 0))
holder.listen(1)
rc, out, err = run_bounded([kvstore_bin, "127.0.0.1", str(holder.getsockname()[1])])
holder.close()
check(rc == 1 and "cannot listen" in err, f"kvstore port in use: rc {rc}, {err.strip()!r}")


# What is already sound (kept as regressions): a unix: path that is not a
# stale socket is never removed, a stale one is, and the file is removed on
# exit only while it is still the server's.
with tempfile.TemporaryDirectory() as d:
    def refuses(path, what):
        rc, out, err = run_bounded([server_bin, "-q", "--threads", "1", "unix:" + path])
        check(rc == 1 and "cannot listen" in err, f"{what}: refused (rc {rc}, {err.strip()!r})")

    regular = os.path.join(d, "regular")
    with open(regular, "w") as f:
        f.write("data")
    refuses(regular, "a regular file")
    check(open(regular).read() == "data", "a regular file is left alone")

    directory = os.path.join(d, "dir")
    os.mkdir(directory)
    refuses(directory, "a directory")
    check(os.path.isdir(directory), "a directory is left alone")

    stale = os.path.join(d, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # a socket file nobody listens on
    link = os.path.join(d, "link")
    os.symlink(stale, link)
    refuses(link, "a symlink to a stale socket")
    check(os.path.islink(link) and os.path.exists(stale), "the symlink and its target are left alone")
    dangling = os.path.join(d, "dangling")
    os.symlink(os.path.join(d, "nothing"), dangling)
    refuses(dangling, "a dangling symlink")
    check(os.path.islink(dangling), "a dangling symlink is left alone")

    live_path = os.path.join(d, "live.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(live_path)
    live.listen(4)
    refuses(live_path, "a live socket of another server")
    ino = os.stat(live_path).st_ino
    check(os.path.exists(live_path) and os.stat(live_path).st_ino == ino, "the live socket is left alone")
    live.close()

    us = subprocess.Popen([server_bin, "-q", "--threads", "1", "unix:" + stale], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    line = us.stdout.readline()
    check("Listening on" in line, f"a stale socket is replaced: {line.strip()!r}")
    # Another file takes the name while the server runs: not removed on exit.
    os.unlink(stale)
    with open(stale, "w") as f:
        f.write("someone else's")
    stop(us)
    check(us.returncode == 0 and os.path.exists(stale) and open(stale).read() == "someone else's",
          f"a file that is no longer the server's survives its exit (rc {us.returncode})")
    os.unlink(stale)
    us = subprocess.Popen([server_bin, "-q", "--threads", "1", "unix:" + stale], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    us.stdout.readline()
    stop(us)
    check(us.returncode == 0 and not os.path.exists(stale), "its own socket file is removed on exit")

# F7: `ringframe-server unix:/path PORT` ignored PORT (a mistake, such as a
#     forgotten "unix:" meaning, went unnoticed), where the client refuses it.
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "s")
    rc, out, err = run_bounded([server_bin, "unix:" + path, "8080"])
    check(rc == 2 and "takes no PORT" in err and not os.path.exists(path),
          f"F7: ringframe-server unix:/path PORT is a usage error (rc {rc}, None: it ran; {err.strip()!r})")

finish()
