#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the seed corpus of the fuzz targets (test/fuzz/corpus/<target>/).

    python3 test/fuzz/corpus.py [FOLDER]

FOLDER defaults to corpus/ next to this script. Each seed is a small input
with a purpose, named after it; the binary layouts are the ones described
at the top of fuzz_reqio.c and fuzz_buf.c. Existing files are overwritten,
others left alone.
"""

import os
import struct
import sys


# ---- fuzz_addr: text, or a 0 byte and the bytes of a uvs_address_t ----

def addr_seeds():
    seeds = {
        "tcp-v4": "tcp://127.0.0.1:8080",
        "udp-v4-any-port0": "udp://0.0.0.0:0",
        "tcp-scheme-upper": "TCP://10.1.2.3:1",
        "tcp-v6-loopback": "tcp://[::1]:9000",
        "tcp-v6-scope-name": "tcp://[fe80::1%lo]:80",
        "udp-v6-scope-index": "udp://[fe80::abcd%1]:53",
        "tcp-v6-scope-unknown": "tcp://[fe80::1%nosuchif0]:1",
        "tcp-v6-v4mapped": "tcp://[::ffff:10.0.0.1]:443",
        "tcp-localhost": "tcp://localhost:65535",
        "tcp-name": "tcp://example.com:80",
        "udp-name-trailing-dot": "udp://svc_a.internal.:5353",
        "unix-path": "unix:/tmp/uvs.sock",
        "unixgram-at-file": "unixgram:./@not-abstract",
        "unix-abstract": "unix:@uvs-abstract",
        "unix-path-longest": "unix:/" + "a" * 106,
        "unix-path-too-long": "unix:/" + "a" * 107,
        "unixgram-abstract-longest": "unixgram:@" + "b" * 107,
        "unix-abstract-too-long": "unix:@" + "b" * 108,
        "bad-unix-empty": "unixgram:",
        "bad-unix-at-only": "unix:@",
        "bad-port-too-big": "tcp://1.2.3.4:65536",
        "bad-port-sign": "udp://1.2.3.4:+80",
        "bad-port-missing": "tcp://1.2.3.4:",
        "bad-no-port": "tcp://1.2.3.4",
        "bad-port-six-digits": "tcp://1.2.3.4:000080",
        "bad-v6-no-brackets": "tcp://::1:80",
        "bad-v6-junk-after": "tcp://[::1]x:80",
        "bad-inet-aton-short": "tcp://127.1:80",
        "bad-inet-aton-hex": "tcp://0x7f000001:80",
        "bad-scheme": "http://1.2.3.4:80",
        "bad-empty-host": "udp://:80",
        "bad-long-host": "tcp://" + "x" * 600 + ":1",
        "bad-long-unix": "unix:" + "p" * 600,
    }
    out = {name: text.encode() for name, text in seeds.items()}
    out["bad-empty"] = b""
    out["bad-nul-inside"] = b"tcp://1.2.3.4:8\x000"

    # A uvs_address_t: 0 byte; transport; 16-bit len; family choice (0
    # AF_INET, 1 AF_INET6, 2 AF_UNIX); the sockaddr after its family.
    def raw(transport, length, family, rest):
        return bytes([0, transport]) + struct.pack("<H", length) + \
            bytes([family]) + rest
    port80 = struct.pack(">H", 80)
    out["raw-tcp-v4"] = raw(1, 16, 0, port80 + bytes([192, 0, 2, 7]))
    out["raw-udp-v6-scope"] = raw(
        2, 28, 1, port80 + b"\0" * 4 + bytes([0xfe, 0x80] + [0] * 13 + [1]) +
        struct.pack("<I", 1))
    out["raw-tcp-v6-scope-none"] = raw(
        1, 28, 1, port80 + b"\0" * 4 + b"\0" * 15 + b"\1" +
        struct.pack("<I", 4000000000))
    out["raw-unix-unnamed"] = raw(3, 0, 2, b"")
    out["raw-unix-path-no-nul"] = raw(3, 2 + 108, 2, b"q" * 108)
    out["raw-unix-at-file"] = raw(3, 2 + 3, 2, b"@x\0")
    out["raw-unixgram-abstract-nul"] = raw(4, 2 + 4, 2, b"\0a\0b")
    out["raw-unix-abstract-empty"] = raw(3, 3, 2, b"\0")
    out["raw-bad-transport"] = raw(5, 16, 0, port80 + bytes([1, 2, 3, 4]))
    return out


# ---- fuzz_reqio: see the layout in fuzz_reqio.c ----

READS = {"line": 0, "exact": 1, "recv": 2, "misuse": 3}


def reqio(read_buffer_size, chunks, reads, stream):
    out = bytes([read_buffer_size - 1, len(chunks)])
    out += bytes(c - 1 for c in chunks)
    out += bytes([len(reads)])
    for kind, size in reads:
        if kind == "line":
            size -= 2  # sizes 2.. are encoded from 0
        out += bytes([READS[kind]]) + struct.pack("<H", size)
    return out + stream


def pattern(n):
    return bytes((i * 37 + 11) % 251 for i in range(n))


def reqio_seeds():
    lines = b"".join(b"%d:%s\n" % (i, b"w" * (i * 7 % 90))
                     for i in range(90))[:4000]
    return {
        "empty": b"",
        "lines-split": reqio(64, [3, 5, 2, 7], [("line", 64)] * 4,
                             b"hello\nworld\nfoo\nbar"),
        "line-too-long": reqio(16, [16], [("line", 8)] * 3 + [("line", 100)],
                               b"x" * 40 + b"\nnext\n"),
        "eof-mid-line": reqio(8, [4, 1], [("line", 64)] * 3,
                              b"full\npartial"),
        "line-at-cap-at-eof": reqio(3, [], [("line", 4), ("line", 4)], b"abc"),
        "line-at-cap-newline": reqio(4, [2], [("line", 5)] * 3,
                                     b"abcd\nef\n"),
        "read-exact-short": reqio(7, [1, 2, 3, 50],
                                  [("exact", 30), ("exact", 100),
                                   ("exact", 5)], pattern(100)),
        "recv-mix": reqio(5, [5, 1], [("recv", 7), ("line", 3),
                                      ("recv", 100), ("exact", 2)],
                          b"GET / HTTP/1.0\r\nHost: x\r\n\r\nbody"),
        "one-byte-buffer": reqio(1, [], [("line", 10), ("exact", 3)],
                                 b"ab\ncd\n"),
        "binary-nul-crlf": reqio(32, [9, 200],
                                 [("line", 32), ("line", 2), ("line", 32)],
                                 b"\0\r\n\0\0\n\r\r\n\xff\xfe\n"),
        "misuse": reqio(8, [], [("misuse", k) for k in range(7)] +
                        [("line", 8)] + [("misuse", 0)], b"one\ntwo\n"),
        "zero-sizes": reqio(8, [3], [("recv", 0), ("exact", 0), ("line", 2)],
                            b"\n\nz"),
        "many-lines": reqio(64, [200, 13], [("line", 100), ("line", 2),
                                            ("exact", 1000), ("recv", 4000)],
                            lines),
    }


# ---- fuzz_buf: see the layout in fuzz_buf.c ----

def step(kind, size, literal=b""):
    return bytes([kind]) + struct.pack("<H", size) + literal


def generated(n, every):
    """An append of n generated bytes, a '\\n' about every `every` bytes."""
    return step(7 * (every - 1), n - 1)


def buf_seeds():
    APPEND_FAILING, LITERAL, READ, LINE, TAKE, CLEAR = 6, 1, 2, 3, 4, 5
    return {
        "empty": b"",
        "literal-lines": step(LITERAL, 6, b"ab\ncd\n") + step(LINE, 3) +
        step(LINE, 10) + step(LINE, 10),
        "across-chunks": generated(4000, 16) + generated(3000, 30) +
        step(LINE, 5000) * 3 + step(READ, 100) + step(LINE, 8999),
        "big-append-failing": generated(9000, 1) + step(APPEND_FAILING, 9) +
        step(APPEND_FAILING, 5000) + step(READ, 9000) + step(TAKE, 0),
        "small-appends": b"".join(step(LITERAL, 1, bytes([c]))
                                  for c in b"line one\nline two\n") +
        step(LINE, 4) + step(LINE, 100) + step(READ, 3),
        "take-clear": step(LITERAL, 3, b"xyz") + step(TAKE, 0) +
        step(LITERAL, 2, b"\n\n") + step(CLEAR, 0) + step(READ, 5) +
        step(LINE, 5),
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    for target, seeds in (("fuzz_addr", addr_seeds()),
                          ("fuzz_reqio", reqio_seeds()),
                          ("fuzz_buf", buf_seeds())):
        folder = os.path.join(root, target)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        print("%s: %d seeds" % (folder, len(seeds)))


if __name__ == "__main__":
    main()
