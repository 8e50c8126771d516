#!/usr/bin/env python3
"""The version is meson's project version everywhere: the numeric and string
macros of <ringframe/version.hpp>, and `--version` (and -V) of both binaries.

Usage: test_version.py PROJECT_VERSION VERSION_MACROS_EXE SERVER CLIENT
"""
import os
import subprocess
import sys


def run(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        sys.exit('%s exited %d: %s' % (' '.join(cmd), p.returncode, p.stderr))
    return p.stdout


def main():
    expected, macros, server, client = sys.argv[1:5]
    failures = []
    got = run(macros)
    if got != '%s\n%s\n' % (expected, expected):
        failures.append('<ringframe/version.hpp> says %r, meson says %r' % (got, expected))
    for binary in (server, client):
        name = os.path.basename(binary)
        for flag in ('--version', '-V'):
            got = run(binary, flag)
            if got != '%s %s\n' % (name, expected):
                failures.append('%s %s printed %r, expected %r' % (name, flag, got, '%s %s\n' % (name, expected)))
    for f in failures:
        print('FAIL:', f)
    if failures:
        sys.exit(1)
    print('version %s agrees in the header and both binaries' % expected)


if __name__ == '__main__':
    main()
