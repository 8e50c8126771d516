#!/usr/bin/env python3
"""The complete programs the docs show (a ```cpp block with `int main`),
copied out so that meson builds them, and checked when they run.

  doc_snippets.py extract OUTDIR NAME=FILE...   write OUTDIR/NAME.cpp from FILE's one complete program
  doc_snippets.py check BINARY...               each fails cleanly where it cannot run
"""
import os
import re
import socket
import subprocess
import sys


def extract(outdir, pairs):
    for pair in pairs:
        name, path = pair.split("=", 1)
        with open(path, encoding="utf-8") as f:
            blocks = re.findall(r"```cpp\n(.*?)```", f.read(), re.S)
        programs = [b for b in blocks if "int main" in b]
        if len(programs) != 1:
            sys.exit(f"{path}: {len(programs)} complete programs (```cpp blocks with int main), "
                     "tests/meson.build expects 1: update the list there")
        with open(os.path.join(outdir, name + ".cpp"), "w", encoding="utf-8") as f:
            f.write(f"// Copied from {os.path.basename(path)} by tests/doc_snippets.py: edit it there.\n")
            f.write(programs[0])


failures = []


def check(ok, what):
    print(("ok: " if ok else "FAIL: ") + what)
    if not ok:
        failures.append(what)


def run(binary, env):
    try:
        return subprocess.run([binary], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None


def check_binaries(binaries):
    env = dict(os.environ)
    for binary in binaries:
        name = os.path.basename(binary)
        # No executor can be made: one line, exit 1 (not std::terminate's SIGABRT).
        env["RINGFRAME_BACKEND"] = "bogus"
        r = run(binary, env)
        check(r is not None and r.returncode == 1 and "RINGFRAME_BACKEND" in r.stderr
              and "terminate" not in r.stderr,
              f"{name} with RINGFRAME_BACKEND=bogus: {r and (r.returncode, r.stderr)!r}")
        # Its port taken (by this test, or by anything else already): it says so, exit 1.
        env.pop("RINGFRAME_BACKEND")
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            holder.bind(("127.0.0.1", 65432))
            holder.listen(1)
        except OSError:
            pass  # taken already: the same case for the program
        r = run(binary, env)
        holder.close()
        check(r is not None and r.returncode == 1 and "cannot listen on 127.0.0.1:65432" in r.stderr,
              f"{name} with its port taken: {r and (r.returncode, r.stderr)!r}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "check":
        check_binaries(sys.argv[2:])
        sys.exit(1 if failures else 0)
    else:
        sys.exit(__doc__)
