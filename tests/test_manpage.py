#!/usr/bin/env python3
"""The installed man page says what `BINARY --help` says: every option (long
and short) and every word of --help appears in the page, and the page
renders without warnings where man(1) is installed.

Usage: test_manpage.py BINARY MANPAGE
"""
import re
import shutil
import subprocess
import sys


def roff_to_text(roff):
    """The page's words: comments and macro names dropped, font changes and
    escapes undone."""
    lines = []
    for line in roff.splitlines():
        if line.startswith('.\\"'):
            continue
        if line.startswith('.'):
            # .SH NAME, .TP, .TQ, .br, .PP, .TH ...: keep any arguments.
            line = line.split(' ', 1)[1] if ' ' in line else ''
        line = re.sub(r'\\f[BIRP]', '', line)
        line = line.replace('\\-', '-').replace('\\&', '').replace('\\e', '\\')
        lines.append(line)
    return '\n'.join(lines)


def main():
    binary, manpage = sys.argv[1:3]
    help_text = subprocess.run([binary, '--help'], check=True, capture_output=True, text=True,
                               timeout=30).stdout
    with open(manpage, encoding='utf-8') as f:
        page = roff_to_text(f.read())

    failures = []
    options = set(re.findall(r'(?<![\w-])(--[a-z][\w-]*|-[A-Za-z])\b', help_text))
    if len(options) < 6:
        failures.append('found only %d options in --help: %s' % (len(options), sorted(options)))
    page_options = set(re.findall(r'(?<![\w-])(--[a-z][\w-]*|-[A-Za-z])\b', page))
    for opt in sorted(options - page_options):
        failures.append('option %s is in --help but not in the man page' % opt)
    # Every word, so a changed description shows too (words only: the page
    # reflows the text and its headings differ).
    page_words = set(page.split())
    for word in sorted(set(help_text.split()) - page_words - {'Usage:', 'Options:', 'Commands:'}):
        # 'Exit status: ...' becomes the EXIT STATUS heading.
        if word.rstrip(':').upper() not in page_words:
            failures.append('word %r of --help is not in the man page' % word)

    if shutil.which('man'):
        p = subprocess.run(['man', '--warnings', '-E', 'UTF-8', '-l', manpage], capture_output=True, text=True,
                           timeout=60, env={'MANWIDTH': '80', 'PATH': '/usr/bin:/bin', 'LC_ALL': 'C.UTF-8'})
        if p.returncode != 0 or p.stderr.strip():
            failures.append('man reports: %s' % p.stderr.strip())

    for f in failures:
        print('FAIL:', f)
    if failures:
        sys.exit(1)
    print('%s: %d options and every word of --help are in %s' % (binary, len(options), manpage))


if __name__ == '__main__':
    main()
