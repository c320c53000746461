#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Memcheck on the demos' whole life, stdlib only.

Usage: test_valgrind.py /path/to/valgrind /path/to/uvs-echo /path/to/uvs-chat

Each case runs a demo under valgrind's memcheck, where every leak but a
"still reachable" one is an error: start, serve a few clients, print the
counters (SIGUSR1), then SIGTERM with two clients open, one of which ends
during the drain while the other is closed at its deadline; the demo must
exit 0, and valgrind must report no error: its exit status is not 99
(--error-exitcode) and its log reads "ERROR SUMMARY: 0 errors". uvs-echo
runs in event, thread, sync and fork mode, uvs-chat in event and thread
mode. In fork mode the children are checked too: valgrind follows a fork,
and each process writes a log of its own; a child _exits holding the
parent's heap, which memcheck counts as still reachable, not as an error.
Prints TAP and exits 1 when a case fails.
"""

import os
import shutil
import signal
import socket
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import demo_server  # noqa: E402 (the folder of this script)
from demo_server import check, listening_regex, TIMEOUT  # noqa: E402

VALGRIND = ECHO = CHAT = None
TCP = "tcp://127.0.0.1:0"
START = 60.0  # seconds for the listening line under valgrind
DRAIN = 2     # uvs-echo's --drain in these cases


class Server(demo_server.DemoServer):
    """A demo under valgrind, logging to a private directory."""

    def __init__(self, exe, *args):
        self.logdir = tempfile.mkdtemp(prefix="uvs-vg-")
        argv = [VALGRIND, "--error-exitcode=99", "--leak-check=full",
                "--show-leak-kinds=definite,indirect,possible",
                "--errors-for-leak-kinds=definite,indirect,possible",
                "--log-file=" + os.path.join(self.logdir, "%p.log"),
                exe, "--listen", TCP] + list(args)
        super().__init__(argv, listening_regex(TCP), start_timeout=START)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        shutil.rmtree(self.logdir, ignore_errors=True)
        return False

    def finish(self, t0, least, processes=1):
        """The demo exits 0 within a while after the signal at `t0` (not
        before `least` seconds), and valgrind reports nothing for it nor
        for its children (at least `processes` logs in all)."""
        status, _ = self.wait(60.0)
        took = time.monotonic() - t0
        logs = {}
        for name in sorted(os.listdir(self.logdir)):
            with open(os.path.join(self.logdir, name), "rb") as f:
                logs[name] = f.read()
        own = logs.get("%d.log" % self.pid, b"")
        tail = own[-3000:].decode(errors="replace")
        check(status is not None, "still running 60 s after SIGTERM")
        check(status != 99, "valgrind found errors:\n" + tail)
        check(status == 0, "exit %r; stderr %r; valgrind:\n%s"
              % (status, self.read_stderr()[-2000:], tail))
        check(len(logs) >= processes and own, "%d valgrind logs (%s), want "
              "%d with the server's" % (len(logs), sorted(logs), processes))
        for name, log in logs.items():
            check(b"ERROR SUMMARY: 0 errors" in log, "%s: no clean error "
                  "summary:\n%s" % (name, log[-3000:].decode(errors="replace")))
        check(took >= least, "exited %.2f s after SIGTERM, before the "
              "drain's end" % took)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        check(chunk != b"", "EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def recv_until_eof(s):
    buf = b""
    while True:
        try:
            chunk = s.recv(1 << 16)
        except ConnectionResetError:
            return buf
        if chunk == b"":
            return buf
        buf += chunk


def case_echo(mode):
    args = ["--drain", str(DRAIN)] + ([] if mode == "event" else
                                      ["--mode", mode])
    with Server(ECHO, *args) as srv:
        for i in range(3):
            s = connect(srv.port)
            try:
                data = bytes(range(256)) * (64 * (i + 1))
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                check(recv_until_eof(s) == data, "client %d's echo" % i)
            finally:
                s.close()
        st = srv.stats(timeout=30.0)
        check(st["accepted"] == 3, "stats %r" % st)
        leaving = connect(srv.port)
        # Sync mode serves one client at a time: the one left open at the
        # deadline is the only one there.
        staying = None if mode == "sync" else connect(srv.port)
        try:
            for s in (leaving, staying):
                if s is not None:
                    s.sendall(b"open")
                    check(recv_exact(s, 4) == b"open", "echo before SIGTERM")
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            time.sleep(0.5)
            for s in (leaving, staying):
                if s is not None:
                    s.sendall(b"drain")
                    check(recv_exact(s, 5) == b"drain", "echo in the drain")
            leaving.shutdown(socket.SHUT_WR)
            check(recv_until_eof(leaving) == b"", "EOF in the drain")
            if staying is not None:
                check(recv_until_eof(staying) == b"", "EOF at the deadline")
            # Fork mode: a child per client, five in all.
            srv.finish(t0, DRAIN - 0.5 if staying is not None else 0,
                       6 if mode == "fork" else 1)
        finally:
            leaving.close()
            if staying is not None:
                staying.close()


def read_line(s, buf):
    """(line, rest) from socket `s` with `buf` read already."""
    while b"\n" not in buf:
        chunk = s.recv(4096)
        check(chunk != b"", "EOF while waiting for a line (have %r)" % buf)
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line + b"\n", rest


def case_chat(mode):
    with Server(CHAT, "--mode", mode) as srv:
        a = connect(srv.port)
        b = connect(srv.port)
        try:
            line, abuf = read_line(a, b"")
            check(line == b"* welcome guest1\n", "a: %r" % line)
            line, bbuf = read_line(b, b"")
            check(line == b"* welcome guest2\n", "b: %r" % line)
            line, abuf = read_line(a, abuf)
            check(line == b"* guest2 joined\n", "a: %r" % line)
            a.sendall(b"/nick alice\nhello\n")
            for want in (b"* guest1 is now alice\n", b"alice: hello\n"):
                line, bbuf = read_line(b, bbuf)
                check(line == want, "b: %r, want %r" % (line, want))
            st = srv.stats(timeout=30.0)
            check(st["accepted"] == 2 and st["active"] == 2, "stats %r" % st)
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            time.sleep(0.5)
            b.sendall(b"/quit\n")
            rest = recv_until_eof(b)
            check(rest == b"* bye\n", "b at /quit: %r" % rest)
            # a is closed at the 5 s deadline.
            check(b"* guest2 left\n" in abuf + recv_until_eof(a),
                  "a did not hear of b leaving")
            srv.finish(t0, 4.5)
        finally:
            a.close()
            b.close()


CASES = [("uvs-echo [%s]" % m, (lambda m: lambda: case_echo(m))(m))
         for m in ("event", "thread", "sync", "fork")]
CASES += [("uvs-chat [%s]" % m, (lambda m: lambda: case_chat(m))(m))
          for m in ("event", "thread")]


def main():
    global VALGRIND, ECHO, CHAT
    if len(sys.argv) != 4:
        sys.stderr.write("usage: test_valgrind.py VALGRIND UVS-ECHO "
                         "UVS-CHAT\n")
        return 2
    VALGRIND, ECHO, CHAT = (os.path.abspath(a) for a in sys.argv[1:])
    # TEST_VALGRIND_ONLY: run the cases whose name holds this substring.
    return demo_server.run_cases(CASES, os.environ.get("TEST_VALGRIND_ONLY"))


if __name__ == "__main__":
    sys.exit(main())
