#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Checks the public API of uvs; prints TAP.

    check_api.py --header include/uvs.h --library build/libuvs.so.0.1.0 \
                 --version 0.1.0

1. Every UVS_EXTERN declaration in the header is immediately preceded by a
   /** ... */ doc comment (only white space, and no blank line, between).
2. Every dynamic symbol the shared library defines (nm -D --defined-only)
   starts with uvs_, apart from the linker symbols in LINKER_SYMBOLS, and the
   exported uvs_ symbols are exactly the UVS_EXTERN names of the header.
3. UVS_VERSION_MAJOR, _MINOR and _PATCH in the header equal --version.

Python 3 standard library only. nm comes from binutils; set NM to use
another one (a cross nm, llvm-nm). Exits 1 when any check fails.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

# Symbols a GNU or LLVM linker may define in any shared library, which carry
# no uvs meaning and are ignored by check 2. Nothing else is: a symbol not
# listed here that does not start with uvs_ fails the check.
LINKER_SYMBOLS = frozenset(
    [
        "_init",  # DT_INIT function (crti.o)
        "_fini",  # DT_FINI function (crti.o)
        "__bss_start",  # start of .bss (GNU ld)
        "__bss_start__",  # the same, other spellings (GNU ld, ARM)
        "_bss_end__",
        "__bss_end__",
        "_edata",  # end of initialized data (GNU ld)
        "_end",  # end of .bss (GNU ld)
        "__end__",
        "end",  # old unprefixed spellings (GNU ld)
        "edata",
        "etext",
        "_etext",
        "__etext",
    ]
)

# Symbols that instrumentation adds to a library built for checking, not
# for use: GCC's ASan ODR indicators (one per exported object, named after
# it) and libgcov's state (--coverage), which also leaks mangle_path.
INSTRUMENTATION_PREFIXES = ("__odr_asan.", "__odr_asan_gen_", "__gcov_")
GCOV_EXTRA_SYMBOLS = frozenset(["mangle_path"])  # only beside __gcov_ ones

# nm symbol types that name a function or an object the library defines:
# text, data, bss, read-only, small data, weak, GNU ifunc ('i') and GNU
# unique ('u'); lower case is local, which nm -D rarely shows, taken too.
DEFINED_TYPES = frozenset("TtDdBbRrGgSsWwVviu")
# Ignored by type: 'A' absolute symbols are symbol-version names (VERS_1.0)
# and linker constants, not functions or objects. Undefined symbols ('U',
# 'w', 'v' without an address) never reach us: nm runs with --defined-only.
ABSOLUTE_TYPES = frozenset("A")


class Tap:
    def __init__(self, count):
        self.count = count
        self.n = 0
        self.failed = 0
        print("1..%d" % count, flush=True)

    def result(self, ok, name, diagnostics=()):
        self.n += 1
        if not ok:
            self.failed += 1
        print("%s %d - %s" % ("ok" if ok else "not ok", self.n, name))
        for line in diagnostics:
            print("# " + line)
        sys.stdout.flush()


def mask_c(text):
    """Returns (masked, comments): `text` with comments, string and character
    literals and preprocessor lines blanked out (newlines and offsets kept),
    and the [start, end) spans of the comments."""
    out = list(text)
    comments = []
    i, n = 0, len(text)
    line_start = True  # only white space since the last newline

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            comments.append((i, j))
            blank(i, j)
            i = j
            continue
        if c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            comments.append((i, j))
            blank(i, j)
            i = j
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            blank(i, j)
            i = j
            line_start = False
            continue
        if c == "#" and line_start:
            # A directive, with its backslash continuations; a comment inside
            # it is still recorded as a comment.
            j = i
            while j < n and text[j] != "\n":
                if text.startswith("/*", j):
                    k = text.find("*/", j + 2)
                    k = n if k < 0 else k + 2
                    comments.append((j, k))
                    j = k
                    continue
                if text[j] == "\\" and text.startswith("\n", j + 1):
                    j += 2
                    continue
                j += 1
            blank(i, j)
            i = j
            continue
        if c == "\n":
            line_start = True
        elif not c.isspace():
            line_start = False
        i += 1
    return "".join(out), comments


def declared_name(decl):
    """The name a declaration declares: the identifier before the parameter
    list for a function (skipping `(*` of a function-pointer return type),
    else the last identifier (an object). Returns (name, is_function)."""
    decl = re.sub(r"__attribute__\s*\(\(.*?\)\)", " ", decl, flags=re.S)
    m = re.search(r"\b([A-Za-z_]\w*)\s*\((?!\s*\*)", decl)
    if m:
        return m.group(1), True
    decl = re.sub(r"\[.*?\]|=.*$", " ", decl, flags=re.S)
    names = re.findall(r"\b[A-Za-z_]\w*\b", decl)
    return (names[-1] if names else None), False


def header_externs(text):
    """Returns [(name, is_function, line, doc_problem or None)] for every
    UVS_EXTERN declaration of the header, in order."""
    masked, comments = mask_c(text)
    ends = {end: (start, end) for start, end in comments}
    result = []
    for m in re.finditer(r"\bUVS_EXTERN\b", masked):
        pos = m.start()
        line = text.count("\n", 0, pos) + 1
        # The declaration runs to the first ';' or '{' at paren depth 0.
        depth, j = 0, m.end()
        while j < len(masked):
            ch = masked[j]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch in ";{" and depth == 0:
                break
            j += 1
        name, is_function = declared_name(masked[m.end() : j])
        # The doc comment: the one that ends where the white space before
        # UVS_EXTERN begins.
        k = pos
        while k > 0 and text[k - 1] in " \t\r\n":
            k -= 1
        gap = text[k:pos]
        span = ends.get(k)
        problem = None
        if span is None:
            problem = "no comment right before it"
        elif not text.startswith("/**", span[0]) or text.startswith(
            "/**/", span[0]
        ):
            problem = "the comment before it is not a /** ... */ doc comment"
        elif not text[span[0] + 3 : span[1] - 2].strip(" \t\r\n*"):
            problem = "its doc comment is empty"
        elif gap.count("\n") > 1:
            problem = "a blank line separates it from its doc comment"
        result.append((name, is_function, line, problem))
    return result


def run_nm(library):
    """Returns ({name: type} of the defined dynamic symbols, error or None)."""
    nm = os.environ.get("NM") or "nm"
    if shutil.which(nm) is None:
        return None, (
            "%s not found on PATH: install binutils "
            "(apt-get install binutils) or set NM" % nm
        )
    if not os.path.isfile(library):
        return None, "library %s does not exist" % library
    proc = subprocess.run(
        [nm, "-D", "--defined-only", library],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    if proc.returncode != 0:
        return None, "%s -D --defined-only %s failed (%d): %s" % (
            nm,
            library,
            proc.returncode,
            proc.stderr.strip(),
        )
    symbols = {}
    for raw in proc.stdout.splitlines():
        fields = raw.split()
        # "ADDRESS TYPE NAME" (an absolute symbol may have no address).
        if len(fields) == 3:
            kind, name = fields[1], fields[2]
        elif len(fields) == 2 and len(fields[0]) == 1:
            kind, name = fields
        else:
            continue
        # Versioned symbols print as name@VERSION or name@@VERSION.
        name = name.split("@", 1)[0]
        symbols[name] = kind
    return symbols, None


def check_docs(tap, header, externs):
    diags = []
    for name, _is_function, line, problem in externs:
        if problem:
            diags.append("%s:%d: %s: %s" % (header, line, name, problem))
        elif name is None:
            diags.append("%s:%d: cannot tell what it declares" % (header, line))
    if not externs:
        diags.append("%s declares nothing with UVS_EXTERN" % header)
    tap.result(
        not diags,
        "every UVS_EXTERN declaration (%d) has a /** */ doc comment" % len(externs),
        diags,
    )


def check_exports(tap, header, library, externs):
    symbols, error = run_nm(library)
    if error:
        tap.result(False, "exported symbols (nm failed)", [error])
        return
    diags = []
    exported = set()
    ignored = []
    gcov = any(name.startswith("__gcov_") for name in symbols)
    for name, kind in sorted(symbols.items()):
        if (
            kind in ABSOLUTE_TYPES
            or name in LINKER_SYMBOLS
            or name.startswith(INSTRUMENTATION_PREFIXES)
            or (gcov and name in GCOV_EXTRA_SYMBOLS)
        ):
            ignored.append("%s (%s)" % (name, kind))
            continue
        if kind not in DEFINED_TYPES:
            continue
        if name.startswith("uvs_"):
            exported.add(name)
        else:
            diags.append("exported without the uvs_ prefix: %s (%s)" % (name, kind))
    declared = {name for name, _f, _l, _p in externs if name}
    for name in sorted(declared):
        if not name.startswith("uvs_"):
            diags.append("declared in %s without the uvs_ prefix: %s" % (header, name))
    for name in sorted(declared - exported):
        diags.append("declared UVS_EXTERN but not exported: %s" % name)
    for name in sorted(exported - declared):
        diags.append(
            "exported but not declared UVS_EXTERN in %s: %s (%s)"
            % (header, name, symbols[name])
        )
    if not exported:
        diags.append("%s exports no uvs_ symbol" % library)
    notes = []
    if ignored:
        notes.append("ignored (linker or instrumentation): " + ", ".join(ignored))
    tap.result(
        not diags,
        "the library exports exactly the %d UVS_EXTERN names, all uvs_"
        % len(declared),
        diags + notes,
    )


def check_version(tap, text, version):
    diags = []
    want = version.split(".")
    if len(want) != 3 or not all(part.isdigit() for part in want):
        diags.append("--version %r is not MAJOR.MINOR.PATCH" % version)
        want = None
    found = []
    for i, part in enumerate(("MAJOR", "MINOR", "PATCH")):
        m = re.search(
            r"^[ \t]*#[ \t]*define[ \t]+UVS_VERSION_%s[ \t]+\(?[ \t]*(\d+)[uU]?[ \t]*\)?"
            r"[ \t]*(?:/[*/].*)?$" % part,
            text,
            re.M,
        )
        if not m:
            diags.append("no numeric #define UVS_VERSION_%s in the header" % part)
            continue
        found.append(int(m.group(1)))
        if want is not None and int(m.group(1)) != int(want[i]):
            diags.append(
                "UVS_VERSION_%s is %s, the project version %s says %s"
                % (part, m.group(1), version, want[i])
            )
    shown = ".".join(str(v) for v in found) if len(found) == 3 else "?"
    tap.result(
        not diags,
        "header version %s equals project version %s" % (shown, version),
        diags,
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--header", required=True)
    parser.add_argument("--library", required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args(argv)

    tap = Tap(3)
    try:
        with open(args.header, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        for what in ("doc comments", "exported symbols", "version macros"):
            tap.result(False, what, ["cannot read %s: %s" % (args.header, e)])
        return 1

    externs = header_externs(text)
    check_docs(tap, args.header, externs)
    check_exports(tap, args.header, args.library, externs)
    check_version(tap, text, args.version)
    return 1 if tap.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
