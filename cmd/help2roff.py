#!/usr/bin/env python3
"""Render a program's --help output as a man page (roff, man macros).

Why the man pages are generated from --help, at build time, from the built
binary: --help is the one source. A hand-written page (or a second copy of
the option table in any other format) drifts the first time an option is
added, and the binaries' --help is what users see and what the e2e tests
exercise. Debian's help2man does the same job, but it is one more build
dependency and its output needs post-editing for this layout; the --help
texts here follow a fixed shape, so a small renderer is enough:

  Usage: NAME ...                  -> SYNOPSIS
  Heading:                         -> a section (OPTIONS, COMMANDS, ...) of
    LEFT COLUMN     description       tagged paragraphs; a left column that
                    continuation      repeats the previous item's first word
                                      (another form of the same command) is
                                      an extra tag of that item
  Label: text...                   -> a section named by the label
                                      (e.g. EXIT STATUS)
  any other paragraph              -> DESCRIPTION

tests/test_manpage.py checks that every option and every word of --help
appears in the page.

Usage: help2roff.py --output FILE --name-line TEXT [--see-also PAGE]... BINARY
"""

import argparse
import os
import re
import subprocess
import sys
import time


def escape(text):
    """Roff-escape running text: backslashes, hyphens (so options can be
    copied from the page), and a leading control character."""
    text = text.replace('\\', '\\e').replace('-', '\\-')
    if text.startswith(('.', "'")):
        text = '\\&' + text
    return text


def style_words(text, bold_first=False):
    """A synopsis or an item's tag: options (-x, --long) bold, PLACEHOLDERS
    italic; with bold_first the first word (a command's name) bold too."""
    out = []
    for i, tok in enumerate(re.split(r'(\s+|[\[\],|/:]|\.\.\.)', text)):
        if not tok:
            continue
        if re.fullmatch(r'-{1,2}[A-Za-z0-9][\w-]*', tok) or (bold_first and not out and not tok.isspace()):
            out.append('\\fB' + escape(tok) + '\\fR')
        elif re.fullmatch(r'[A-Z][A-Z0-9_]*', tok):
            out.append('\\fI' + escape(tok) + '\\fR')
        else:
            out.append(escape(tok))
    return ''.join(out)


def paragraphs(text):
    block = []
    for line in text.splitlines():
        if line.strip():
            block.append(line.rstrip())
        elif block:
            yield block
            block = []
    if block:
        yield block


LIST_HEADING = re.compile(r'^([A-Z][A-Za-z ]*):$')
LABELLED = re.compile(r'^([A-Z][a-z]+(?: [a-z]+){0,2}): (.*)$')
SPLIT = re.compile(r'^( *)(\S.*?)(?: {2,}(\S.*))?$')
SPEC = re.compile(r'-{1,2}[A-Za-z0-9][\w-]*(?:,? -{1,2}[A-Za-z0-9][\w-]*)*(?: [A-Z][A-Z0-9_]*)?')


def parse_list(lines):
    """Items of a two-column list: [(tags, [description lines])]."""
    # The description column: where the right-hand text of most lines starts.
    cols = {}
    for line in lines:
        m = SPLIT.match(line)
        if m.group(3):
            col = len(line) - len(m.group(3))
            cols[col] = cols.get(col, 0) + 1
    desc_col = max(cols, key=cols.get) if cols else 1 << 30
    items = []
    for line in lines:
        m = SPLIT.match(line)
        indent, left, right = len(m.group(1)), m.group(2), m.group(3)
        if right is None and len(line) > desc_col and line[desc_col - 1] == ' ':
            # A tag that fills its column leaves one space before the
            # description ("--drain-timeout SECS on SIGINT/..."): split at the
            # column when what is left of it is a whole tag (options and
            # PLACEHOLDERS) and what is right of it does not go on with one.
            tag, rest = line[:desc_col].strip(), line[desc_col:]
            if SPEC.fullmatch(tag) and not re.match(r'[A-Z][A-Z0-9_]*(\s|$)', rest):
                left, right = tag, rest
        if indent >= desc_col - 1:
            # A continuation of the description (the whole line is text).
            if not items:
                raise SystemExit('help2roff: description line before any item: ' + line)
            items[-1][1].append(line.strip())
            continue
        first = left.split()[0]
        if items and not left.startswith('-') and items[-1][0][0].split()[0] == first:
            items[-1][0].append(left)
        else:
            items.append(([left], []))
        if right:
            items[-1][1].append(right)
    return items


def render_description(lines):
    """Description lines joined into one paragraph, except that a line
    starting 'word: ' (a sub-item such as a --mode value) starts a new line."""
    out = []
    for i, line in enumerate(lines):
        if i and re.match(r'^[a-z][\w-]*: ', line):
            out.append('.br')
        out.append(escape(line))
    return out


def render(help_text, name, name_line, version, see_also, date):
    synopsis, description, sections = [], [], []
    for block in paragraphs(help_text):
        head = block[0]
        if head.startswith('Usage: '):
            synopsis.extend(l[len('Usage: '):] if l.startswith('Usage: ') else l.strip() for l in block)
            continue
        m = LIST_HEADING.match(head)
        if m:
            sections.append((m.group(1).upper(), 'list', parse_list(block[1:])))
            continue
        m = LABELLED.match(head)
        if m:
            sections.append((m.group(1).upper(), 'text', [m.group(2)] + [l.strip() for l in block[1:]]))
            continue
        description.append([l.strip() for l in block])
    if not synopsis:
        raise SystemExit('help2roff: no "Usage:" line in the --help output of ' + name)

    out = ['.\\" Generated by cmd/help2roff.py from `%s --help`: edit that, not this.' % name,
           '.TH %s 1 "%s" "ringframe %s" "User Commands"' % (escape(name.upper()), date, escape(version)),
           '.SH NAME', '%s \\- %s' % (escape(name), escape(name_line)),
           '.SH SYNOPSIS']
    for i, line in enumerate(synopsis):
        if i:
            out.append('.br')
        out.append(style_words(line, bold_first=True))
    if description:
        out.append('.SH DESCRIPTION')
        for i, para in enumerate(description):
            if i:
                out.append('.PP')
            out.extend(escape(l) for l in para)
    for title, kind, body in sections:
        out.append('.SH ' + escape(title))
        if kind == 'text':
            out.extend(escape(l) for l in body)
            continue
        for tags, desc in body:
            out.append('.TP')
            for j, tag in enumerate(tags):
                if j:
                    out.append('.TQ')
                out.append(style_words(tag, bold_first=not tag.startswith('-')))
            out.extend(render_description(desc))
    if see_also:
        out.append('.SH SEE ALSO')
        out.append(',\n'.join(re.sub(r'^(.*)\((\w+)\)$', r'\\fB\1\\fR(\2)', escape(s)) for s in see_also))
    return '\n'.join(out) + '\n'


def main():
    ap = argparse.ArgumentParser(description='Render BINARY --help as a man page.')
    ap.add_argument('binary')
    ap.add_argument('--output', required=True)
    ap.add_argument('--name-line', required=True, help='the NAME section: what the program is, in a few words')
    ap.add_argument('--see-also', action='append', default=[])
    args = ap.parse_args()

    name = os.path.basename(args.binary)
    env = dict(os.environ, LC_ALL='C')
    # A bad exit or a missing version line fails the build instead of
    # installing an empty page.
    help_text = subprocess.run([args.binary, '--help'], check=True, capture_output=True, text=True, env=env).stdout
    version_line = subprocess.run([args.binary, '--version'], check=True, capture_output=True, text=True, env=env).stdout
    m = re.fullmatch(re.escape(name) + r' (\S+)\n', version_line)
    if not m:
        sys.exit('help2roff: unexpected --version output from %s: %r' % (name, version_line))
    # Reproducible builds: the date comes from SOURCE_DATE_EPOCH when set.
    epoch = int(os.environ.get('SOURCE_DATE_EPOCH', time.time()))
    date = time.strftime('%Y-%m-%d', time.gmtime(epoch))
    page = render(help_text, name, args.name_line, m.group(1), args.see_also, date)
    tmp = args.output + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(page)
    os.replace(tmp, args.output)


if __name__ == '__main__':
    main()
