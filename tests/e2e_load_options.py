#!/usr/bin/env python3
"""ringframe-load's options as a user meets them.

1. --server-pid naming no running process: the run reported "server CPU:
   0.00 s, 0 ns per message" (idle: "server RSS -1 KiB -> -1 KiB") and exit
   0. It is a usage error now (exit 2, naming the PID); a server that exits
   during the run is an error (exit 1, no JSON line).
2. -t with -m: -m was used, silently, though the usage reads [-t T | -m M].
3. Port 70000: "bad address 127.0.0.1 70000: Invalid argument".
4. README.md's ringframe-load usage lines are --help's, and every option of
   --help is in them (the README had no --app, -q or idle's [-s S]).

Usage: e2e_load_options.py RINGFRAME_SERVER RINGFRAME_LOAD README.md
"""
import os
import re
import select
import subprocess
import sys
import time

from e2e_util import check, finish, kill_if_running, start_server, stop

server_bin, load_bin, readme = sys.argv[1:4]


def load(*args, timeout=30):
    return subprocess.run([load_bin, *args], capture_output=True, text=True, timeout=timeout)


def gone_pid():
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    return str(p.pid)


srv, port = start_server(server_bin, "-q", "--threads", "1", "--mode", "frame-echo", "127.0.0.1", "0")
try:
    # 1. A PID that is gone before the run.
    pid = gone_pid()
    r = load("-m", "2000", "--server-pid", pid, "127.0.0.1", port)
    check(r.returncode == 2 and f"--server-pid {pid}" in r.stderr and "no such process" in r.stderr
          and "server_cpu_ns_per_msg" not in r.stdout,
          f"load --server-pid {pid} (gone): rc {r.returncode}, {r.stderr.strip()!r}, {r.stdout.strip()[-80:]!r}")
    r = load("idle", "-c", "10", "--server-pid", pid, "127.0.0.1", port)
    check(r.returncode == 2 and f"--server-pid {pid}" in r.stderr and "no such process" in r.stderr
          and "rss" not in r.stdout,
          f"idle --server-pid {pid} (gone): rc {r.returncode}, {r.stderr.strip()!r}, {r.stdout.strip()[-80:]!r}")

    # A zombie (exited, not reaped) has no memory left to measure.
    z = subprocess.Popen(["sleep", "60"])
    try:
        z.kill()
        # Exited, but not reaped: os.waitid with WNOWAIT leaves it a zombie.
        os.waitid(os.P_PID, z.pid, os.WEXITED | os.WNOWAIT)
        r = load("idle", "-c", "10", "--server-pid", str(z.pid), "127.0.0.1", port)
        check(r.returncode == 2 and f"--server-pid {z.pid}" in r.stderr and "exited" in r.stderr,
              f"idle --server-pid {z.pid} (a zombie): rc {r.returncode}, {r.stderr.strip()!r}, "
              f"{r.stdout.strip()[-80:]!r}")
    finally:
        z.wait(timeout=10)

    # A "server" that exits during the run (after the first progress line).
    victim = subprocess.Popen(["sleep", "60"])
    lp = None
    try:
        lp = subprocess.Popen([load_bin, "-c", "2", "-d", "1", "-t", "3", "--server-pid", str(victim.pid),
                               "127.0.0.1", port], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = b""
        deadline = time.monotonic() + 20
        while b" s: " not in err and time.monotonic() < deadline:
            ready, _, _ = select.select([lp.stderr], [], [], 0.5)
            if ready:
                chunk = os.read(lp.stderr.fileno(), 4096)
                if not chunk:
                    break
                err += chunk
        victim.kill()
        victim.wait(timeout=10)
        out, rest = lp.communicate(timeout=30)
        err = (err + rest).decode(errors="replace")
        out = out.decode(errors="replace")
        check(lp.returncode == 1 and f"server process {victim.pid}" in err and "exited during the run" in err
              and "server_cpu_ns_per_msg" not in out,
              f"load: the --server-pid process exits during the run: rc {lp.returncode}, {err.strip()[-160:]!r}, "
              f"{out.strip()[-80:]!r}")
    finally:
        kill_if_running(victim)
        kill_if_running(lp)
        victim.wait(timeout=10)
        if lp is not None:
            lp.communicate(timeout=10)

    # A live --server-pid still works.
    r = load("-q", "-c", "2", "-m", "200", "--server-pid", str(srv.pid), "127.0.0.1", port)
    check(r.returncode == 0 and re.search(r'"server_cpu_ns_per_msg":\d+\}', r.stdout) is not None,
          f"load --server-pid (the server): rc {r.returncode}, {r.stdout.strip()[-80:]!r}, {r.stderr.strip()!r}")

    # 2. -t with -m.
    r = load("-t", "1", "-m", "100", "127.0.0.1", port)
    check(r.returncode == 2 and "-t" in r.stderr and "-m" in r.stderr and "not both" in r.stderr
          and r.stdout == "",
          f"-t 1 -m 100: rc {r.returncode}, {r.stderr.strip()!r}, {r.stdout.strip()[-80:]!r}")
    r = load("-q", "-c", "1", "-m", "10", "127.0.0.1", port)
    check(r.returncode == 0 and '"messages":10,' in r.stdout, f"-m alone: rc {r.returncode}, {r.stdout.strip()[-80:]!r}")
finally:
    stop(srv)

# 3. Ports out of range (no server needed: the arguments are refused first).
for bad in ("70000", "65536", "0", "http"):
    r = load("-m", "10", "127.0.0.1", bad)
    check(r.returncode == 2 and f"bad port '{bad}'" in r.stderr and "1 to 65535" in r.stderr,
          f"port {bad}: rc {r.returncode}, {r.stderr.strip()!r}")
r = load("idle", "-c", "1", "--server-pid", str(os.getpid()), "127.0.0.1", "70000")
check(r.returncode == 2 and "bad port '70000'" in r.stderr, f"idle port 70000: rc {r.returncode}, {r.stderr.strip()!r}")

# 4. The README's usage lines are --help's.
help_text = load("--help").stdout
usage = [line.split(":", 1)[1].strip() if line.startswith("Usage:") else line.strip()
         for line in help_text.split("\n\n", 1)[0].splitlines()]
with open(readme, encoding="utf-8") as f:
    readme_lines = [line.strip() for line in f]
check(len(usage) == 2 and all(u.startswith("ringframe-load ") for u in usage), f"--help's usage lines: {usage!r}")
for u in usage:
    check(u in readme_lines, f"README.md has --help's usage line {u!r}")
readme_usage = [line for line in readme_lines if line.startswith("ringframe-load ")]
check(readme_usage == usage, f"README.md's ringframe-load usage lines are --help's: {readme_usage!r}")
synopsis = " ".join(usage)
shown = 0
# An option is in the synopsis by its short form if it has one, else its long one.
for line in help_text.split("\n\n", 1)[1].splitlines():
    m = re.match(r" {2}(?:(-[A-Za-z]), | {4})(--[a-z][\w-]*)", line)
    if not m or m.group(2) == "--help":
        continue
    short, long_ = m.group(1), m.group(2)
    check(re.search(r"(?<![\w-])" + re.escape(short or long_) + r"\b", synopsis) is not None,
          f"the usage lines show {short or long_}")
    shown += 1
check(shown >= 9, f"found {shown} options in --help")

finish()
