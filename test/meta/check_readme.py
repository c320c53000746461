#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The README tells the truth about code that is built and tested:
its echo server is demos/tiny/main.c verbatim, and its test command is the
one .ci/run runs."""
import argparse
import re
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme", required=True)
    ap.add_argument("--tiny", required=True)
    ap.add_argument("--ci", required=True)
    args = ap.parse_args()
    readme = open(args.readme, encoding="utf-8").read()
    tiny = open(args.tiny, encoding="utf-8").read()
    ci = open(args.ci, encoding="utf-8").read()
    print("1..2")
    failed = 0

    blocks = re.findall(r"```c\n(.*?)```\n", readme, re.S)
    body = tiny[tiny.index("#include"):]
    if any(b == body for b in blocks):
        print("ok 1 - README's echo server is demos/tiny/main.c")
    else:
        failed += 1
        print("not ok 1 - README's echo server is demos/tiny/main.c")
        print("# copy demos/tiny/main.c (after its header comment) into the README")

    commands = [line for line in readme.splitlines()
                if "apt-get install" in line and "meson test" in line]
    marker = ci.split("README-TEST-COMMAND", 1)
    ci_line = marker[1].splitlines()[1].strip() if len(marker) == 2 else ""
    if len(commands) == 1 and commands[0].strip() == ci_line:
        print("ok 2 - .ci/run runs the README's test command")
    else:
        failed += 1
        print("not ok 2 - .ci/run runs the README's test command")
        print("# README: %r" % commands)
        print("# .ci/run: %r" % ci_line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
